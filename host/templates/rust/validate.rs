//! `{{name}}`: a weir validator. Flags rows where a column named in the
//! stage's config is null, e.g. `config = { required = ["tailnum"] }`;
//! the rule is `required:COLUMN`.

use weir_sdk::{Error, RecordBatch, Validate, Verdict};

struct Plugin;

impl Validate for Plugin {
    fn validate(batch: RecordBatch) -> Result<Vec<Verdict>, Error> {
        let config: weir_sdk::serde_json::Value = weir_sdk::config()?;
        let required = config["required"].as_array().cloned().unwrap_or_default();
        let mut verdicts = Vec::new();
        for name in required.iter().filter_map(|c| c.as_str()) {
            let column = batch.column(name)?;
            for row in (0..batch.len()).filter(|&row| column.is_null(row)) {
                verdicts.push(Verdict {
                    row: row as u32,
                    rule: format!("required:{name}"),
                    message: format!("{name} is null"),
                });
            }
        }
        Ok(verdicts)
    }
}

weir_sdk::export_validate!(Plugin);
