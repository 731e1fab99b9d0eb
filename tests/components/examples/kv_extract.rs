//! An extractor: parses `key=value` lines into a (key utf8, value int64)
//! batch; a line without `=` or with a non-integer value is a parse error.
use weir_sdk::{Column, DataType, Error, Extract, Field, RecordBatch, SourceMetadata};

struct KeyValue;

impl Extract for KeyValue {
    fn extract(data: Vec<u8>, metadata: SourceMetadata) -> Result<Vec<RecordBatch>, Error> {
        let text = String::from_utf8(data)
            .map_err(|e| Error::Parse(format!("{}: {e}", metadata.source_name)))?;
        let mut keys = Vec::new();
        let mut values = Vec::new();
        for (n, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let (key, value) = line.split_once('=').ok_or_else(|| {
                Error::Parse(format!("{} line {}: no `=`", metadata.source_name, n + 1))
            })?;
            keys.push(Some(key.trim().to_string()));
            values.push(value.trim().parse::<i64>().ok());
        }
        let rows = keys.len() as u32;
        let batch = RecordBatch::try_new(
            vec![
                Field {
                    name: "key".into(),
                    data_type: DataType::Utf8,
                    nullable: false,
                },
                Field {
                    name: "value".into(),
                    data_type: DataType::Int64,
                    nullable: true,
                },
            ],
            vec![Column::from_utf8(keys), Column::from_int64(values)],
            rows,
        )?;
        Ok(vec![batch])
    }
}

weir_sdk::export_extract!(KeyValue);
