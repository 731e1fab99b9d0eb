//! `{{name}}`: a weir extractor. Parses `key=value` lines into a batch of
//! two utf8 columns, `key` and `value`; blank lines and `#` comments are
//! skipped, and a line without `=` is a parse error naming its number.

use weir_sdk::{Column, DataType, Error, Extract, Field, RecordBatch, SourceMetadata};

struct Plugin;

impl Extract for Plugin {
    fn extract(data: Vec<u8>, metadata: SourceMetadata) -> Result<Vec<RecordBatch>, Error> {
        let text = std::str::from_utf8(&data)
            .map_err(|e| Error::Parse(format!("{}: not UTF-8: {e}", metadata.source_name)))?;
        let (mut keys, mut values) = (Vec::new(), Vec::new());
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = line.split_once('=').ok_or_else(|| {
                Error::Parse(format!("{} line {}: no `=`", metadata.source_name, number + 1))
            })?;
            keys.push(Some(key.trim().to_string()));
            values.push(Some(value.trim().to_string()));
        }
        let rows = keys.len() as u32;
        let field = |name: &str| Field {
            name: name.into(),
            data_type: DataType::Utf8,
            nullable: false,
        };
        let batch = RecordBatch::try_new(
            vec![field("key"), field("value")],
            vec![Column::from_utf8(keys), Column::from_utf8(values)],
            rows,
        )?;
        Ok(vec![batch])
    }
}

weir_sdk::export_extract!(Plugin);
