//! `latest`: keeps the latest row per key of a table input (files that
//! change over time: a nightly export, a directory of update files) and
//! joins it onto every input row with that key: enrichment from a
//! changing table, the stream–table join of Kafka Streams' `KTable` or
//! Flink's temporal join, with the table read from files.
//!
//! **Table.** The table's files (`table.path`, a glob) are looked for
//! before the first batch and then at most every `refresh`. A file is read
//! when it is new or changed (its size or modification time differ from
//! the version applied), whole, in sorted path order; each of its rows
//! replaces the kept row of its key (with `order_by`, only when its order
//! value is at least the kept one's). Which file versions were applied is
//! part of the state, so a resumed run or a restarted service does not
//! apply them twice, and a changed file is applied again.
//!
//! **Join.** A row gets the kept row of its key (the key columns, compared
//! after casting the table's to the input's types; a null key matches
//! nothing): the joined columns are appended, optionally prefixed. A row
//! whose key has no table row gets nulls, is dropped, or goes to the
//! quarantine as `no_match` (`missing`).
//!
//! **State** (namespace: the operator's name), changes committed with the
//! output like every operator's:
//! - `r` + key (the key columns in Arrow's row format, of the input's
//!   types) → the order value's length (u32, little-endian), the order
//!   value and the joined columns, both in Arrow's row format (byte order
//!   is value order for the order value);
//! - `f` + a table file's path (relative to the pipeline file) →
//!   `SIZE:MTIME_NS` of the version applied;
//! - `s` → the key types and joined columns the rows were encoded with: a
//!   store written for another table schema is refused, not misread.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use arrow::array::{Array, ArrayRef, BooleanArray, new_null_array};
use arrow::compute::{CastOptions, cast_with_options};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use arrow::row::{Row, RowConverter, SortField};

use super::config::{Missing, OperatorConfig};
use super::{Operator, Rejected, Step, describe_key, reason};
use crate::columnar::column_names;
use crate::config::{SourceConfig, expand_paths, table_source};
use crate::source::Source;
use crate::state::Changes;
use crate::state::keyed::Keyed;

/// Key prefix of a kept table row.
const ROW: u8 = b'r';
/// Key prefix of an applied table file's version.
const FILE: u8 = b'f';
/// Key of the encoding record.
const ENCODING: &[u8] = b"s";

/// Rows per batch when reading table files.
const TABLE_BATCH_ROWS: usize = 8192;

/// The table config of a checked `latest` operator.
fn table_config(config: &OperatorConfig) -> Result<SourceConfig> {
    let table = config
        .table
        .as_ref()
        .with_context(|| format!("operator `{}` has no table", config.name))?;
    table_source(table).map_err(|e| anyhow::anyhow!("operator `{}`: table: {e}", config.name))
}

/// The table's schema: declared in `table.schema`, or read from its first
/// file.
///
/// # Errors
/// No table file and no declared schema, or a first file that cannot be
/// read.
pub fn table_schema(config: &OperatorConfig) -> Result<SchemaRef> {
    let table = table_config(config)?;
    let source = Source::open(&table, &config.base_dir, 1, None)
        .with_context(|| format!("operator `{}`: opening its table", config.name))?;
    source
        .schema()
        .with_context(|| format!("operator `{}`: the table has no schema", config.name))
}

/// The joined columns (of the table's types, not prefixed): `columns`, or
/// every table column but the key.
///
/// # Errors
/// A key, `columns` or `order_by` column the table lacks.
fn joined_fields(config: &OperatorConfig, table: &Schema) -> Result<Vec<Field>> {
    let column = |name: &str, what: &str| {
        table.field_with_name(name).cloned().map_err(|_| {
            anyhow::anyhow!(
                "operator `{}`: {what} column `{name}` is not in its table (columns: {})",
                config.name,
                column_names(table)
            )
        })
    };
    for name in &config.key {
        column(name, "key")?;
    }
    if let Some(name) = &config.order_by {
        column(name, "order_by")?;
    }
    let fields = match config.columns.is_empty() {
        true => table
            .fields()
            .iter()
            .filter(|f| !config.key.contains(f.name()))
            .map(|f| f.as_ref().clone())
            .collect(),
        false => config
            .columns
            .iter()
            .map(|name| column(name, "joined"))
            .collect::<Result<Vec<_>>>()?,
    };
    Ok(fields.into_iter().map(|f| f.with_nullable(true)).collect())
}

/// The schema `latest` emits for input rows of `input`: the input's
/// columns, then the joined columns (nullable, prefixed).
///
/// # Errors
/// A key column missing from the input or the table, a joined column the
/// table lacks, or a joined column whose (prefixed) name the input has.
pub fn output_schema(config: &OperatorConfig, input: &Schema) -> Result<SchemaRef> {
    for name in &config.key {
        if input.field_with_name(name).is_err() {
            bail!(
                "operator `{}`: key column `{name}` is not in its input (columns: {})",
                config.name,
                column_names(input)
            );
        }
    }
    let table = table_schema(config)?;
    let prefix = config.prefix.as_deref().unwrap_or_default();
    let mut fields: Vec<Field> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
    for field in joined_fields(config, &table)? {
        let name = format!("{prefix}{}", field.name());
        if input.field_with_name(&name).is_ok() {
            bail!(
                "operator `{}`: the joined column `{name}` is also an input column; set `prefix` (e.g. prefix = \"{}_\") or leave it out of `columns`",
                config.name,
                config.name
            );
        }
        fields.push(field.with_name(name));
    }
    Ok(Arc::new(Schema::new(fields)))
}

/// The `latest` operator.
pub struct Latest {
    name: String,
    key: Vec<String>,
    table: SourceConfig,
    base_dir: PathBuf,
    table_schema: SchemaRef,
    /// The joined columns, not prefixed, nullable.
    joined: Vec<Field>,
    /// The output's schema for the input schema seen (set at the first
    /// batch).
    output: Option<SchemaRef>,
    prefix: String,
    order_by: Option<String>,
    missing: Missing,
    refresh: Duration,
    values: RowConverter,
    order: Option<RowConverter>,
    /// The key columns' converter, of the input's types (set at the first
    /// batch), and those types.
    keys: Option<(RowConverter, Vec<DataType>)>,
    rows: Keyed<Vec<u8>>,
    /// The joined columns of a missing row: all null.
    null_values: Vec<u8>,
    last_scan: Option<Instant>,
}

impl Latest {
    /// A latest operator from its (checked) config; opens its table to
    /// fix the table's schema.
    ///
    /// # Errors
    /// The table cannot be opened, or its columns cannot be encoded.
    pub fn new(config: &OperatorConfig) -> Result<Latest> {
        let table = table_config(config)?;
        let table_schema = table_schema(config)?;
        let joined = joined_fields(config, &table_schema)?;
        let values = RowConverter::new(
            joined
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect(),
        )
        .with_context(|| format!("operator `{}`: the joined columns", config.name))?;
        let order = match &config.order_by {
            Some(name) => Some(RowConverter::new(vec![SortField::new(
                table_schema.field_with_name(name)?.data_type().clone(),
            )])?),
            None => None,
        };
        let nulls: Vec<ArrayRef> = joined
            .iter()
            .map(|f| new_null_array(f.data_type(), 1))
            .collect();
        let null_values = values.convert_columns(&nulls)?.row(0).as_ref().to_vec();
        Ok(Latest {
            name: config.name.clone(),
            key: config.key.clone(),
            table,
            base_dir: config.base_dir.clone(),
            table_schema,
            joined,
            output: None,
            prefix: config.prefix.clone().unwrap_or_default(),
            order_by: config.order_by.clone(),
            missing: config.missing,
            refresh: Duration::from_millis(config.refresh_ms().max(0) as u64),
            values,
            order,
            keys: None,
            rows: Keyed::default(),
            null_values,
            last_scan: None,
        })
    }

    /// The key converter for `batch`'s key types, made at the first batch.
    fn key_columns(&mut self, batch: &RecordBatch) -> Result<Vec<ArrayRef>> {
        let mut columns = Vec::with_capacity(self.key.len());
        for name in &self.key {
            let Some(column) = batch.column_by_name(name) else {
                bail!(
                    "operator `{}`: key column `{name}` is not in the batch (columns: {})",
                    self.name,
                    column_names(&batch.schema())
                );
            };
            columns.push(column.clone());
        }
        if self.keys.is_none() {
            let types: Vec<DataType> = columns.iter().map(|c| c.data_type().clone()).collect();
            let converter =
                RowConverter::new(types.iter().map(|t| SortField::new(t.clone())).collect())?;
            self.keys = Some((converter, types));
        }
        Ok(columns)
    }

    /// What the kept rows are encoded with.
    fn encoding(&self) -> String {
        let (_, key_types) = self.keys.as_ref().expect("set at the first batch");
        let joined: Vec<String> = self
            .joined
            .iter()
            .map(|f| format!("{}:{}", f.name(), f.data_type()))
            .collect();
        let order = self
            .order_by
            .as_ref()
            .and_then(|name| self.table_schema.field_with_name(name).ok())
            .map(|f| f.data_type().to_string());
        format!("keys={key_types:?} joined={joined:?} order={order:?}")
    }

    /// Refuses state encoded for another schema; records the encoding in
    /// a new state.
    fn check_encoding(&mut self) -> Result<()> {
        let encoding = self.encoding();
        match self.rows.get(ENCODING) {
            Some(stored) if stored.as_slice() == encoding.as_bytes() => Ok(()),
            Some(stored) => bail!(
                "operator `{}`: its kept table rows were written for other columns or types (then: {}; now: {encoding}). Drop them with `weir state reset PIPELINE --operator {}` (weir run) or by removing the pipeline's operators store while weir serve is stopped; they are read again from the table",
                self.name,
                String::from_utf8_lossy(stored),
                self.name
            ),
            None => {
                self.rows.put(ENCODING, encoding.into_bytes());
                Ok(())
            }
        }
    }

    /// Applies the table files that are new or changed since they were
    /// last applied, in sorted path order.
    fn scan(&mut self) -> Result<()> {
        self.last_scan = Some(Instant::now());
        // No file yet (a declared schema): nothing to apply.
        let Ok(files) = expand_paths(&self.base_dir, &self.table.path) else {
            return Ok(());
        };
        for file in files {
            let metadata = std::fs::metadata(&file)
                .with_context(|| format!("operator `{}`: {}", self.name, file.display()))?;
            let modified = metadata
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            let version = format!("{}:{modified}", metadata.len());
            // Relative to the pipeline file: the same file whatever the
            // working directory.
            let name = file.strip_prefix(&self.base_dir).unwrap_or(&file);
            let mut key = vec![FILE];
            key.extend_from_slice(name.to_string_lossy().as_bytes());
            if self.rows.get(&key).map(Vec::as_slice) == Some(version.as_bytes()) {
                continue;
            }
            let rows = self.apply_file(&file).with_context(|| {
                format!("operator `{}`: table file {}", self.name, file.display())
            })?;
            tracing::info!(operator = %self.name, file = %file.display(), rows, "applied a table file");
            self.rows.put(&key, version.into_bytes());
        }
        Ok(())
    }

    /// Reads one table file and keeps its rows; returns how many it had.
    fn apply_file(&mut self, file: &std::path::Path) -> Result<u64> {
        // Without a declared schema, each file's types are inferred alone
        // and its columns cast to the table's ([`Latest::apply_batch`]).
        let mut config = self.table.clone();
        config.path = glob::Pattern::escape(&file.to_string_lossy());
        let source = Source::open(&config, &self.base_dir, TABLE_BATCH_ROWS, None)?;
        let mut rows = 0;
        for batch in source.batches() {
            let batch = batch?.batch;
            rows += batch.num_rows() as u64;
            self.apply_batch(&batch)?;
        }
        Ok(rows)
    }

    /// Keeps the rows of one table batch (the file's schema).
    fn apply_batch(&mut self, batch: &RecordBatch) -> Result<()> {
        let strict = CastOptions {
            safe: false,
            ..CastOptions::default()
        };
        let column = |name: &str, to: &DataType| -> Result<ArrayRef> {
            let Some(column) = batch.column_by_name(name) else {
                bail!(
                    "it has no column `{name}` (columns: {})",
                    column_names(&batch.schema())
                );
            };
            cast_with_options(column, to, &strict).with_context(|| {
                format!(
                    "its column `{name}` ({}) cannot be read as {to}",
                    column.data_type()
                )
            })
        };
        let (key_converter, key_types) = self.keys.as_ref().expect("set at the first batch");
        let key_columns: Vec<ArrayRef> = self
            .key
            .iter()
            .zip(key_types)
            .map(|(name, to)| column(name, to))
            .collect::<Result<_>>()?;
        let value_columns: Vec<ArrayRef> = self
            .joined
            .iter()
            .map(|f| column(f.name(), f.data_type()))
            .collect::<Result<_>>()?;
        let keys = key_converter.convert_columns(&key_columns)?;
        let values = self.values.convert_columns(&value_columns)?;
        let orders = match (&self.order, &self.order_by) {
            (Some(converter), Some(name)) => {
                let field = self.table_schema.field_with_name(name)?;
                Some(converter.convert_columns(&[column(name, field.data_type())?])?)
            }
            _ => None,
        };
        let mut key = Vec::new();
        for row in 0..batch.num_rows() {
            if key_columns.iter().any(|c| c.is_null(row)) {
                continue;
            }
            let order: &[u8] = orders.as_ref().map_or(&[], |o| o.row(row).data());
            key.clear();
            key.push(ROW);
            key.extend_from_slice(keys.row(row).as_ref());
            if let Some(kept) = self.rows.get(&key)
                && order < kept_order(kept)
            {
                continue;
            }
            let mut value = Vec::with_capacity(4 + order.len() + values.row(row).as_ref().len());
            value.extend_from_slice(&(order.len() as u32).to_le_bytes());
            value.extend_from_slice(order);
            value.extend_from_slice(values.row(row).as_ref());
            self.rows.put(&key, value);
        }
        Ok(())
    }
}

/// The order value of a kept row's value.
fn kept_order(value: &[u8]) -> &[u8] {
    let length = u32::from_le_bytes(value[..4].try_into().expect("4 bytes")) as usize;
    &value[4..4 + length]
}

/// The joined columns of a kept row's value.
fn kept_values(value: &[u8]) -> &[u8] {
    let length = u32::from_le_bytes(value[..4].try_into().expect("4 bytes")) as usize;
    &value[4 + length..]
}

impl Operator for Latest {
    fn restore(&mut self, changes: Changes) -> Result<()> {
        for (key, value) in &changes {
            if key.first() == Some(&ROW)
                && let Some(value) = value
                && (value.len() < 4 || kept_order(value).len() + 4 > value.len())
            {
                bail!("a kept row of {} bytes is truncated", value.len());
            }
        }
        self.rows.restore(changes)
    }

    fn process(&mut self, batch: &RecordBatch) -> Result<Step> {
        let key_columns = self.key_columns(batch)?;
        if self.output.is_none() {
            self.check_encoding()?;
            let mut fields: Vec<Field> = batch
                .schema()
                .fields()
                .iter()
                .map(|f| f.as_ref().clone())
                .collect();
            for field in &self.joined {
                fields.push(
                    field
                        .clone()
                        .with_name(format!("{}{}", self.prefix, field.name())),
                );
            }
            self.output = Some(Arc::new(Schema::new(fields)));
        }
        if self.last_scan.is_none_or(|at| at.elapsed() >= self.refresh) {
            self.scan()?;
        }
        let (converter, _) = self.keys.as_ref().expect("set above");
        let keys = converter.convert_columns(&key_columns)?;
        let parser = self.values.parser();
        let mut joined: Vec<Row<'_>> = Vec::with_capacity(batch.num_rows());
        let mut keep = Vec::with_capacity(batch.num_rows());
        let mut unmatched = Vec::new();
        let mut lookup = Vec::new();
        for row in 0..batch.num_rows() {
            let kept = match key_columns.iter().any(|c| c.is_null(row)) {
                true => None,
                false => {
                    lookup.clear();
                    lookup.push(ROW);
                    lookup.extend_from_slice(keys.row(row).as_ref());
                    self.rows.get(&lookup)
                }
            };
            match (kept, self.missing) {
                (Some(value), _) => joined.push(parser.parse(kept_values(value))),
                (None, Missing::Null) => joined.push(parser.parse(&self.null_values)),
                (None, _) => {
                    keep.resize(row, true);
                    keep.push(false);
                    unmatched.push(row);
                    continue;
                }
            }
        }
        let columns = self.values.convert_rows(joined)?;
        keep.resize(batch.num_rows(), true);
        let kept = BooleanArray::from(keep);
        let passed = match unmatched.is_empty() {
            true => batch.clone(),
            false => arrow::compute::filter_record_batch(batch, &kept)?,
        };
        let mut output = passed.columns().to_vec();
        output.extend(columns);
        let schema = self.output.clone().expect("set above");
        let output = RecordBatch::try_new(schema, output)
            .with_context(|| format!("operator `{}`: joining the table's columns", self.name))?;
        let mut step = Step {
            output: Some(output),
            kept: Some(kept),
            ..Step::default()
        };
        match self.missing {
            Missing::Null => {}
            Missing::Drop => step.dropped = unmatched.len() as u64,
            Missing::Quarantine if unmatched.is_empty() => {}
            Missing::Quarantine => {
                let reasons = unmatched
                    .iter()
                    .map(|&row| {
                        let message = format!(
                            "no row of the table has this key ({})",
                            describe_key(&self.key, batch, row)
                        );
                        reason(&self.name, "no_match", message)
                    })
                    .collect();
                step.rejected
                    .push(Rejected::take(batch, &unmatched, reasons)?);
            }
        }
        Ok(step)
    }

    fn finish(&mut self) -> Result<Option<RecordBatch>> {
        Ok(None)
    }

    fn take_changes(&mut self) -> Changes {
        self.rows.take_changes()
    }

    fn accept(&mut self) {
        self.rows.accept();
    }

    fn rollback(&mut self) {
        self.rows.rollback();
        // Table files applied in the undone batch are applied again.
        self.last_scan = None;
    }

    fn state_size(&self) -> (u64, u64) {
        (self.rows.len() as u64, self.rows.bytes() as u64)
    }
}
