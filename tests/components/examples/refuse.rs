//! On `action = "error"`: returns a WIT `invalid-input` error on purpose.
use weir_sdk::{Error, Output, RecordBatch, Transform};

struct Refuse;

impl Transform for Refuse {
    fn transform(batch: RecordBatch) -> Result<Output, Error> {
        if let Some(row) = weir_test_components::triggered(&batch, "error") {
            return Err(Error::InvalidInput(format!("row {row} asked for an error")));
        }
        Ok(batch.into())
    }
}

weir_sdk::export_transform!(Refuse);
