//! Returns every batch unchanged: the round-trip probe for every data type.
use weir_sdk::{Error, Output, RecordBatch, Transform};

struct Identity;

impl Transform for Identity {
    fn transform(batch: RecordBatch) -> Result<Output, Error> {
        Ok(batch.into())
    }
}

weir_sdk::export_transform!(Identity);
