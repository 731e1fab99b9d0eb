//! On `action = "trap"`: panics, which aborts the component (a trap).
use weir_sdk::{Error, Output, RecordBatch, Transform};

struct Panic;

impl Transform for Panic {
    fn transform(batch: RecordBatch) -> Result<Output, Error> {
        if let Some(row) = weir_test_components::triggered(&batch, "trap") {
            panic!("poison row {row}");
        }
        Ok(batch.into())
    }
}

weir_sdk::export_transform!(Panic);
