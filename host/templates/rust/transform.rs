//! `{{name}}`: a weir transform. Upper-cases the utf8 columns named in the
//! stage's config, e.g. `config = { columns = ["origin"] }`.

use weir_sdk::{Column, Error, Output, RecordBatch, Splice, Transform};

struct Plugin;

/// The column names from the stage's config.
fn columns() -> Result<Vec<String>, Error> {
    let config: weir_sdk::serde_json::Value = weir_sdk::config()?;
    let columns = config["columns"].as_array().cloned().unwrap_or_default();
    Ok(columns.iter().filter_map(|c| c.as_str().map(String::from)).collect())
}

impl Transform for Plugin {
    /// Only these columns are sent to the plugin; the others stay on the host.
    fn reads() -> Result<Option<Vec<String>>, Error> {
        Ok(Some(columns()?))
    }

    /// Returns only the replaced columns: the host splices them in.
    fn transform(batch: RecordBatch) -> Result<Output, Error> {
        let mut splice = Splice::new();
        for name in columns()? {
            let values = batch.utf8(&name)?;
            let upper = Column::from_utf8(values.iter().map(|v| v.map(str::to_uppercase)));
            splice = splice.replace(&batch, &name, upper)?;
        }
        Ok(splice.into())
    }
}

weir_sdk::export_transform!(Plugin);
