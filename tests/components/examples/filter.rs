//! Keeps rows whose `int64` column `column` (config, default `value`) is
//! greater than `gt` (config, default 0): the benchmark's numeric filter,
//! on contract 0.2.0. It reads only `column` and returns only a row mask;
//! every other column stays on the host.
use weir_sdk::{Error, Output, RecordBatch, Splice, Transform};

struct Filter;

fn column() -> Result<String, Error> {
    let config: weir_sdk::serde_json::Value = weir_sdk::config()?;
    Ok(config["column"].as_str().unwrap_or("value").to_string())
}

impl Transform for Filter {
    fn reads() -> Result<Option<Vec<String>>, Error> {
        Ok(Some(vec![column()?]))
    }

    fn transform(batch: RecordBatch) -> Result<Output, Error> {
        let config: weir_sdk::serde_json::Value = weir_sdk::config()?;
        let gt = config["gt"].as_i64().unwrap_or(0);
        let keep = weir_test_components::greater_than(&batch, &column()?, gt)?;
        Ok(Splice::new().keep(&keep).into())
    }
}

weir_sdk::export_transform!(Filter);
