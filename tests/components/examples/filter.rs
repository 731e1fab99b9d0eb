//! Keeps rows whose `int64` column `column` (config, default `value`) is
//! greater than `gt` (config, default 0): the benchmark's numeric filter,
//! on contract 0.2.0. It reads only `column` and returns only a row mask;
//! every other column stays on the host. The configuration is read and
//! parsed once per instance (it cannot change while the instance lives), as
//! native code would hold it; parsing it on every call cost two host calls
//! and two JSON parses per batch.
use std::sync::OnceLock;

use weir_sdk::{Error, Output, RecordBatch, Splice, Transform};

struct Filter;

/// The column and the threshold.
struct Settings {
    column: String,
    gt: i64,
}

static SETTINGS: OnceLock<Settings> = OnceLock::new();

fn settings() -> Result<&'static Settings, Error> {
    if let Some(settings) = SETTINGS.get() {
        return Ok(settings);
    }
    let config: weir_sdk::serde_json::Value = weir_sdk::config()?;
    Ok(SETTINGS.get_or_init(|| Settings {
        column: config["column"].as_str().unwrap_or("value").to_string(),
        gt: config["gt"].as_i64().unwrap_or(0),
    }))
}

impl Transform for Filter {
    fn reads() -> Result<Option<Vec<String>>, Error> {
        Ok(Some(vec![settings()?.column.clone()]))
    }

    fn transform(batch: RecordBatch) -> Result<Output, Error> {
        let settings = settings()?;
        let keep = weir_test_components::greater_than(&batch, &settings.column, settings.gt)?;
        Ok(Splice::new().keep(&keep).into())
    }
}

weir_sdk::export_transform!(Filter);
