//! Adds a utf8 column `content`: the text of the file named by the stage
//! config's `file` (e.g. `/ref/table.txt`, in a granted read-only
//! directory). On `action = "write"`: tries to create a file beside it and
//! returns an `internal` error saying how that went.
use weir_sdk::{Column, DataType, Error, Field, Output, RecordBatch, Transform};

#[derive(serde::Deserialize)]
struct Config {
    file: String,
}

struct Reader;

impl Transform for Reader {
    fn transform(batch: RecordBatch) -> Result<Output, Error> {
        let config: Config = weir_sdk::config()?;
        if weir_test_components::triggered(&batch, "write").is_some() {
            let target = format!("{}.written", config.file);
            return Err(Error::Internal(match std::fs::write(&target, b"x") {
                Ok(()) => format!("wrote {target}"),
                Err(e) => format!("write failed: {e}"),
            }));
        }
        let text = std::fs::read_to_string(&config.file)
            .map_err(|e| Error::Internal(format!("cannot read {}: {e}", config.file)))?;
        let column = Column::from_utf8((0..batch.len()).map(|_| Some(text.as_str())));
        let field = Field {
            name: "content".into(),
            data_type: DataType::Utf8,
            nullable: true,
        };
        Ok(batch.with_column(field, column)?.into())
    }
}

weir_sdk::export_transform!(Reader);
