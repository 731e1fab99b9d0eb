//! # `derive`: new columns computed from existing ones
//!
//! A transformer plugin. Each entry of `columns` adds (or replaces) one
//! `utf8` column, computed row by row, in order, so a later entry may read
//! an earlier one's output.
//!
//! ## `kind = "bucket"`: a number into labelled ranges
//! `breaks` are ascending upper bounds and `labels` has one more entry than
//! `breaks`: a value `v` gets `labels[i]` for the first `i` with
//! `v <= breaks[i]` (or `v < breaks[i]` with `closed = "left"`), else the
//! last label. `when_null` is an ordered list of `{ column, label }`: the
//! first listed column that is null on the row decides the label, before the
//! number is looked at. A null `source` not covered by `when_null` gives
//! null.
//!
//! ## `kind = "lookup"`: map values through a table
//! `table` names a reference table given to the stage (`[stages.tables]` in
//! the pipeline file, loaded by the host); `key` and `value` name its
//! columns. Alternatively `map` gives the pairs inline. A value with no
//! entry gets `default` (null when absent).
//!
//! ```toml
//! [[stages.config.columns]]
//! name = "delay_class"
//! kind = "bucket"
//! source = "arr_delay"
//! breaks = [0, 60]
//! labels = ["on_time", "late", "very_late"]
//! when_null = [{ column = "dep_time", label = "cancelled" }, { column = "arr_delay", label = "diverted" }]
//!
//! [[stages.config.columns]]
//! name = "carrier_name"
//! kind = "lookup"
//! source = "carrier"
//! table = "airlines"
//! key = "carrier"
//! value = "name"
//! ```
//!
//! Errors: `invalid-config` for a malformed entry (label count, unknown
//! table...), `invalid-input` for a missing or non-numeric source column.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde::Deserialize;
use serde_json::Value;
use weir_sdk::{Column, ColumnValues, Error, Field, Output, RecordBatch, Splice, Transform};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    columns: Vec<DeriveConfig>,
    /// Reference tables injected by the host: name → rows as JSON objects.
    #[serde(default)]
    tables: HashMap<String, Vec<serde_json::Map<String, Value>>>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
enum DeriveConfig {
    Bucket(Bucket),
    Lookup {
        name: String,
        source: String,
        table: Option<String>,
        key: Option<String>,
        value: Option<String>,
        map: Option<HashMap<String, String>>,
        default: Option<String>,
    },
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Closed {
    /// Bounds are inclusive upper bounds: `(prev, break]`.
    #[default]
    Right,
    /// Bounds are exclusive upper bounds: `[prev, break)`.
    Left,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct NullLabel {
    column: String,
    label: String,
}

/// `kind = "bucket"`, as written and as run (see the module docs).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Bucket {
    name: String,
    source: String,
    breaks: Vec<f64>,
    labels: Vec<String>,
    #[serde(default)]
    closed: Closed,
    #[serde(default)]
    when_null: Vec<NullLabel>,
}

impl Bucket {
    /// Checks the label count and the order of the breaks.
    fn validated(self) -> Result<Bucket, Error> {
        let name = &self.name;
        if self.labels.len() != self.breaks.len() + 1 {
            return Err(Error::InvalidConfig(format!(
                "column `{name}`: {} breaks need {} labels, got {}",
                self.breaks.len(),
                self.breaks.len() + 1,
                self.labels.len()
            )));
        }
        if self.breaks.windows(2).any(|w| w[0] >= w[1]) {
            return Err(Error::InvalidConfig(format!(
                "column `{name}`: breaks must be strictly ascending"
            )));
        }
        Ok(self)
    }
}

/// A derivation ready to run.
enum Derive {
    Bucket(Bucket),
    Lookup {
        name: String,
        source: String,
        map: HashMap<String, String>,
        default: Option<String>,
    },
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

fn compile(config: Config) -> Result<Vec<Derive>, Error> {
    let mut tables = config.tables;
    config
        .columns
        .into_iter()
        .map(|entry| match entry {
            DeriveConfig::Bucket(bucket) => Ok(Derive::Bucket(bucket.validated()?)),
            DeriveConfig::Lookup {
                name,
                source,
                table,
                key,
                value,
                map,
                default,
            } => {
                let map = match (map, table) {
                    (Some(map), None) => map,
                    (None, Some(table)) => {
                        let rows = tables.remove(&table).ok_or_else(|| {
                            Error::InvalidConfig(format!(
                                "column `{name}`: no reference table `{table}` (give it in the stage's `tables`)"
                            ))
                        })?;
                        let (key, value) = key.zip(value).ok_or_else(|| {
                            Error::InvalidConfig(format!("column `{name}`: a table lookup needs `key` and `value`"))
                        })?;
                        rows.iter()
                            .filter_map(|row| Some((text(row.get(&key)?)?, text(row.get(&value)?)?)))
                            .collect()
                    }
                    _ => {
                        return Err(Error::InvalidConfig(format!(
                            "column `{name}`: a lookup needs exactly one of `table` or `map`"
                        )));
                    }
                };
                Ok(Derive::Lookup {
                    name,
                    source,
                    map,
                    default,
                })
            }
        })
        .collect()
}

/// Label for `v` among `breaks` (ascending) — see the module docs.
fn bucket_label<'a>(v: f64, breaks: &[f64], labels: &'a [String], closed: Closed) -> &'a str {
    let i = breaks
        .iter()
        .position(|&b| match closed {
            Closed::Right => v <= b,
            Closed::Left => v < b,
        })
        .unwrap_or(breaks.len());
    &labels[i]
}

/// The value at `row` as lookup-key text, or `None` when null.
fn key_text(column: &Column, row: usize) -> Option<String> {
    match &column.values {
        ColumnValues::Utf8(_) => column.as_utf8()?.get(row).map(str::to_string),
        ColumnValues::Int64(_) => column.as_int64()?.get(row).map(|v| v.to_string()),
        _ => column.numeric(row).map(|v| v.to_string()),
    }
}

impl Derive {
    /// The column it writes.
    fn name(&self) -> &String {
        match self {
            Derive::Bucket(b) => &b.name,
            Derive::Lookup { name, .. } => name,
        }
    }

    fn apply(&self, batch: RecordBatch) -> Result<RecordBatch, Error> {
        let rows = 0..batch.len();
        let (name, column) = match self {
            Derive::Bucket(Bucket {
                name,
                source,
                breaks,
                labels,
                closed,
                when_null,
            }) => {
                let numbers = batch.column(source)?;
                let numeric = matches!(
                    numbers.values,
                    ColumnValues::Int64(_)
                        | ColumnValues::Float64(_)
                        | ColumnValues::Date32(_)
                        | ColumnValues::Timestamp(_)
                );
                if !numeric {
                    return Err(Error::InvalidInput(format!(
                        "column `{name}`: source `{source}` is not numeric"
                    )));
                }
                let null_columns = when_null
                    .iter()
                    .map(|n| Ok((batch.column(&n.column)?, n.label.as_str())))
                    .collect::<Result<Vec<_>, Error>>()?;
                let column = Column::from_utf8(rows.map(|r| {
                    if let Some((_, label)) = null_columns.iter().find(|(c, _)| c.is_null(r)) {
                        return Some(*label);
                    }
                    numbers
                        .numeric(r)
                        .map(|v| bucket_label(v, breaks, labels, *closed))
                }));
                (name, column)
            }
            Derive::Lookup {
                name,
                source,
                map,
                default,
            } => {
                let keys = batch.column(source)?;
                let found = |key: Option<&str>| {
                    key.and_then(|k| map.get(k).map(String::as_str))
                        .or(default.as_deref())
                };
                let column = match keys.as_utf8() {
                    // Text keys are looked up in place, without a copy per row.
                    Some(text) => Column::from_utf8(rows.map(|r| found(text.get(r)))),
                    None => Column::from_utf8(rows.map(|r| found(key_text(keys, r).as_deref()))),
                };
                (name, column)
            }
        };
        let field = Field {
            name: name.clone(),
            data_type: weir_sdk::DataType::Utf8,
            nullable: true,
        };
        batch.with_column(field, column)
    }
}

fn derivations() -> Result<&'static [Derive], Error> {
    static DERIVE: OnceLock<Result<Vec<Derive>, Error>> = OnceLock::new();
    DERIVE
        .get_or_init(|| weir_sdk::config::<Config>().and_then(compile))
        .as_deref()
        .map_err(Clone::clone)
}

/// The `derive` plugin.
pub struct DerivePlugin;

impl Transform for DerivePlugin {
    /// The source and `when_null` columns cross into the plugin (not the
    /// ones an earlier entry derives); only the derived columns cross back.
    fn reads() -> Result<Option<Vec<String>>, Error> {
        let mut reads: Vec<String> = Vec::new();
        let mut derived: Vec<&str> = Vec::new();
        for derive in derivations()? {
            let (name, inputs): (&String, Vec<&String>) = match derive {
                Derive::Bucket(b) => (
                    &b.name,
                    std::iter::once(&b.source)
                        .chain(b.when_null.iter().map(|n| &n.column))
                        .collect(),
                ),
                Derive::Lookup { name, source, .. } => (name, vec![source]),
            };
            for input in inputs {
                if !derived.contains(&input.as_str()) && !reads.contains(input) {
                    reads.push(input.clone());
                }
            }
            derived.push(name);
        }
        Ok(Some(reads))
    }

    fn transform(mut batch: RecordBatch) -> Result<Output, Error> {
        let derivations = derivations()?;
        for derive in derivations {
            batch = derive.apply(batch)?;
        }
        // Each derived column once, in the order it was first derived.
        let mut splice = Splice::new();
        for derive in derivations {
            let name = derive.name();
            if splice.columns.iter().any(|c| c.field.name == *name) {
                continue;
            }
            let i = batch.index_of(name).expect("derived above");
            let column = std::mem::replace(&mut batch.columns[i], Column::from_int64([]));
            splice = splice.set(batch.schema.fields[i].clone(), column);
        }
        Ok(splice.into())
    }
}

weir_sdk::export_transform!(DerivePlugin);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_right_closed_by_default() {
        let labels: Vec<String> = ["on_time", "late", "very_late"].map(String::from).to_vec();
        let breaks = [0.0, 60.0];
        assert_eq!(
            bucket_label(-5.0, &breaks, &labels, Closed::Right),
            "on_time"
        );
        assert_eq!(
            bucket_label(0.0, &breaks, &labels, Closed::Right),
            "on_time"
        );
        assert_eq!(bucket_label(60.0, &breaks, &labels, Closed::Right), "late");
        assert_eq!(
            bucket_label(61.0, &breaks, &labels, Closed::Right),
            "very_late"
        );
        assert_eq!(bucket_label(0.0, &breaks, &labels, Closed::Left), "late");
    }

    #[test]
    fn label_count_is_checked() {
        let config: Config = serde_json::from_value(serde_json::json!({
            "columns": [{"kind": "bucket", "name": "c", "source": "x", "breaks": [1], "labels": ["a"]}]
        }))
        .unwrap();
        let Err(Error::InvalidConfig(message)) = compile(config) else {
            panic!()
        };
        assert!(message.contains("1 breaks need 2 labels"), "{message}");
    }

    #[test]
    fn lookup_reads_the_reference_table() {
        let config: Config = serde_json::from_value(serde_json::json!({
            "columns": [{"kind": "lookup", "name": "n", "source": "k", "table": "t", "key": "id", "value": "label"}],
            "tables": {"t": [{"id": "a", "label": "Alpha"}, {"id": 7, "label": "Seven"}]}
        }))
        .unwrap();
        let Derive::Lookup { map, .. } = &compile(config).unwrap()[0] else {
            panic!()
        };
        assert_eq!(map.get("a").map(String::as_str), Some("Alpha"));
        assert_eq!(map.get("7").map(String::as_str), Some("Seven"));
    }
}
