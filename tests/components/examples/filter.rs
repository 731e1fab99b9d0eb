//! Keeps rows whose `int64` column `column` (config, default `value`) is
//! greater than `gt` (config, default 0): the benchmark's numeric filter.
use weir_sdk::{Error, RecordBatch, Transform};

struct Filter;

impl Transform for Filter {
    fn transform(batch: RecordBatch) -> Result<RecordBatch, Error> {
        let config: weir_sdk::serde_json::Value = weir_sdk::config()?;
        let column = config["column"].as_str().unwrap_or("value");
        let gt = config["gt"].as_i64().unwrap_or(0);
        weir_test_components::filter_greater_than(&batch, column, gt)
    }
}

weir_sdk::export_transform!(Filter);
