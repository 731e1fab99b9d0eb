//! On `action = "huge"`: returns a text column of `{"mib": N}` MiB (stage
//! config; default 64).
use weir_sdk::{Column, DataType, Error, Field, Output, RecordBatch, Transform};

#[derive(serde::Deserialize)]
struct Config {
    mib: Option<usize>,
}

struct Huge;

impl Transform for Huge {
    fn transform(batch: RecordBatch) -> Result<Output, Error> {
        if weir_test_components::triggered(&batch, "huge").is_some() {
            let config: Config = weir_sdk::host::config().unwrap_or(Config { mib: None });
            let bytes = config.mib.unwrap_or(64) << 20;
            let block = "x".repeat(bytes / batch.len().max(1));
            let column = Column::from_utf8((0..batch.len()).map(|_| Some(block.as_str())));
            let field = Field {
                name: "padding".into(),
                data_type: DataType::Utf8,
                nullable: false,
            };
            return Ok(batch.with_column(field, column)?.into());
        }
        Ok(batch.into())
    }
}

weir_sdk::export_transform!(Huge);
