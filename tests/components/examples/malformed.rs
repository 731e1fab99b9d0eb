//! On `action = "malformed"`: claims one more row than its columns hold.
use weir_sdk::{Error, Output, RecordBatch, Transform};

struct Malformed;

impl Transform for Malformed {
    fn transform(mut batch: RecordBatch) -> Result<Output, Error> {
        if weir_test_components::triggered(&batch, "malformed").is_some() {
            batch.num_rows += 1;
        }
        Ok(batch.into())
    }
}

weir_sdk::export_transform!(Malformed);
