//! # `select`: keep, drop and rename columns
//!
//! A transformer plugin applying, in this order: `keep` (only these columns,
//! in this order; all when absent), `drop` (remove these), `rename`
//! (`{ old = "new" }`).
//!
//! ```toml
//! [[stages]]
//! name = "tidy"
//! kind = "transform"
//! plugin = "builtin:select"
//! config = { drop = ["time_hour"], rename = { dep_delay = "departure_delay_min" } }
//! ```
//!
//! Errors: `invalid-input` naming a missing column; `invalid-config` for
//! unknown keys.

use std::collections::BTreeMap;

use serde::Deserialize;
use weir_sdk::{Error, Output, RecordBatch, Splice, Transform};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    keep: Option<Vec<String>>,
    #[serde(default)]
    drop: Vec<String>,
    #[serde(default)]
    rename: BTreeMap<String, String>,
}

/// The `select` plugin.
pub struct Select;

impl Transform for Select {
    fn transform(batch: RecordBatch) -> Result<Output, Error> {
        let config: Config = weir_sdk::config()?;
        // Only dropping columns: nothing needs to cross back.
        if config.keep.is_none() && config.rename.is_empty() {
            if let Some(missing) = config.drop.iter().find(|c| batch.index_of(c).is_none()) {
                return Err(Error::InvalidInput(format!(
                    "select: cannot drop `{missing}`: no such column"
                )));
            }
            let splice = config
                .drop
                .iter()
                .fold(Splice::new(), |s, name| s.drop(name.clone()));
            return Ok(splice.into());
        }
        let mut batch = match &config.keep {
            Some(keep) => batch.select(keep)?,
            None => batch,
        };
        if let Some(missing) = config.drop.iter().find(|c| batch.index_of(c).is_none()) {
            return Err(Error::InvalidInput(format!(
                "select: cannot drop `{missing}`: no such column"
            )));
        }
        batch = batch.drop_columns(&config.drop);
        for (from, to) in &config.rename {
            batch = batch.rename_column(from, to)?;
        }
        Ok(batch.into())
    }
}

weir_sdk::export_transform!(Select);
