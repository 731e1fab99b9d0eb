//! `{{name}}`: a weir transform. Upper-cases the utf8 columns named in the
//! stage's config, e.g. `config = { columns = ["origin"] }`.

use weir_sdk::{Column, Error, RecordBatch, Transform};

struct Plugin;

impl Transform for Plugin {
    fn transform(mut batch: RecordBatch) -> Result<RecordBatch, Error> {
        let config: weir_sdk::serde_json::Value = weir_sdk::config()?;
        let columns = config["columns"].as_array().cloned().unwrap_or_default();
        for name in columns.iter().filter_map(|c| c.as_str()) {
            let upper = {
                let values = batch.utf8(name)?;
                Column::from_utf8(values.iter().map(|v| v.map(str::to_uppercase)))
            };
            batch = batch.replace_column(name, upper)?;
        }
        Ok(batch)
    }
}

weir_sdk::export_transform!(Plugin);
