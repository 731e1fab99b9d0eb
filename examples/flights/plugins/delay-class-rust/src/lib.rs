//! The flights example's delay-class stage in Rust (the same transform is
//! in `../delay-class-python` and `../delay-class-js`).
//!
//! Adds the utf8 column `column`: the label of the first `when_null` entry
//! whose column is null on the row; else, for a non-null numeric `source`
//! value `v`, `labels[i]` for the first `i` with `v <= breaks[i]`, or the
//! last label; else null.

use serde::Deserialize;
use weir_sdk::{Column, Error, Field, Output, RecordBatch, Splice, Transform};

#[derive(Deserialize)]
struct Config {
    column: String,
    source: String,
    breaks: Vec<f64>,
    labels: Vec<String>,
    #[serde(default)]
    when_null: Vec<WhenNull>,
}

#[derive(Deserialize)]
struct WhenNull {
    column: String,
    label: String,
}

struct DelayClass;

impl Transform for DelayClass {
    /// Only `source` and the `when_null` columns cross into the plugin.
    fn reads() -> Result<Option<Vec<String>>, Error> {
        let config: Config = weir_sdk::config()?;
        let guards = config.when_null.into_iter().map(|g| g.column);
        Ok(Some(std::iter::once(config.source).chain(guards).collect()))
    }

    /// Only the new column crosses back.
    fn transform(batch: RecordBatch) -> Result<Output, Error> {
        let config: Config = weir_sdk::config()?;
        if config.labels.len() != config.breaks.len() + 1 {
            return Err(Error::InvalidConfig(
                "labels: needs one more entry than breaks".into(),
            ));
        }
        let source = batch.column(&config.source)?;
        let guards = config
            .when_null
            .iter()
            .map(|g| Ok((batch.column(&g.column)?, g.label.as_str())))
            .collect::<Result<Vec<_>, Error>>()?;
        let labels = (0..batch.len()).map(|row| {
            if let Some((_, label)) = guards.iter().find(|(column, _)| column.is_null(row)) {
                return Some(*label);
            }
            let value = source.numeric(row)?;
            let bucket = config.breaks.iter().position(|&b| value <= b);
            Some(config.labels[bucket.unwrap_or(config.breaks.len())].as_str())
        });
        let column = Column::from_utf8(labels.collect::<Vec<_>>());
        let field = Field {
            name: config.column.clone(),
            data_type: weir_sdk::DataType::Utf8,
            nullable: true,
        };
        Ok(Splice::new().set(field, column).into())
    }
}

weir_sdk::export_transform!(DelayClass);
