//! Returns every batch unchanged: the round-trip probe for every data type.
use weir_sdk::{Error, RecordBatch, Transform};

struct Identity;

impl Transform for Identity {
    fn transform(batch: RecordBatch) -> Result<RecordBatch, Error> {
        Ok(batch)
    }
}

weir_sdk::export_transform!(Identity);
