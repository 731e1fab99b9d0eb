//! An extractor with a cursor in keyed state: each file holds one integer
//! id per line; it emits (`id`) only the ids above the largest id of every
//! earlier file (its cursor, under the key `cursor`), and moves the cursor
//! to this file's largest id, so that a run over a file that grew emits
//! only what is new. A line `fail` makes it fail the file after moving the
//! cursor (which must then not move).
use weir_sdk::{Column, DataType, Error, Extract, Field, RecordBatch, SourceMetadata};

struct Cursor;

impl Extract for Cursor {
    fn extract(data: Vec<u8>, metadata: SourceMetadata) -> Result<Vec<RecordBatch>, Error> {
        let text = String::from_utf8(data)
            .map_err(|e| Error::Parse(format!("{}: {e}", metadata.source_name)))?;
        let cursor: i64 = weir_sdk::state::get_json("cursor")?.unwrap_or(i64::MIN);
        let mut ids = Vec::new();
        let mut fail = false;
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if line == "fail" {
                fail = true;
                continue;
            }
            let id: i64 = line
                .parse()
                .map_err(|e| Error::Parse(format!("{}: {line:?}: {e}", metadata.source_name)))?;
            if id > cursor {
                ids.push(id);
            }
        }
        if let Some(&last) = ids.iter().max() {
            weir_sdk::state::put_json("cursor", &last)?;
        }
        if fail {
            return Err(Error::Parse(format!(
                "{}: asked to fail",
                metadata.source_name
            )));
        }
        let rows = ids.len() as u32;
        let batch = RecordBatch::try_new(
            vec![Field {
                name: "id".into(),
                data_type: DataType::Int64,
                nullable: false,
            }],
            vec![Column::from_int64(ids.into_iter().map(Some))],
            rows,
        )?;
        Ok(vec![batch])
    }
}

weir_sdk::export_extract!(Cursor);
