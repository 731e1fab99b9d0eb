//! On `action = "huge"`: returns a 64 MiB text column.
use weir_sdk::{Column, DataType, Error, Field, RecordBatch, Transform};

struct Huge;

impl Transform for Huge {
    fn transform(batch: RecordBatch) -> Result<RecordBatch, Error> {
        if weir_test_components::triggered(&batch, "huge").is_some() {
            let block = "x".repeat((64 << 20) / batch.len().max(1));
            let column = Column::from_utf8((0..batch.len()).map(|_| Some(block.as_str())));
            let field = Field {
                name: "padding".into(),
                data_type: DataType::Utf8,
                nullable: false,
            };
            return batch.with_column(field, column);
        }
        Ok(batch)
    }
}

weir_sdk::export_transform!(Huge);
