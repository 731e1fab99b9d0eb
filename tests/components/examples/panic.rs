//! On `action = "trap"`: panics, which aborts the component (a trap).
use weir_sdk::{Error, RecordBatch, Transform};

struct Panic;

impl Transform for Panic {
    fn transform(batch: RecordBatch) -> Result<RecordBatch, Error> {
        if let Some(row) = weir_test_components::triggered(&batch, "trap") {
            panic!("poison row {row}");
        }
        Ok(batch)
    }
}

weir_sdk::export_transform!(Panic);
