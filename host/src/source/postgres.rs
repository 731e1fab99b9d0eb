//! The PostgreSQL source (`format = "postgres"`): a table or a query, read
//! with one binary `COPY (SELECT …) TO STDOUT` streamed into record
//! batches, and optionally **incremental** by a cursor column.
//!
//! **Bounded memory.** The server streams the result (it does not build
//! it first, except for the sort an incremental read asks for, which it
//! spills to disk); a reader thread decodes rows straight into Arrow
//! builders and hands at most two batches ahead to the pipeline. One
//! `COPY` is one round trip and a compact binary stream, which is why it
//! is used rather than `DECLARE CURSOR` + `FETCH` (a round trip per batch
//! and a row-by-row result format).
//!
//! **Types.** Columns of the seven mapped types
//! ([`crate::postgres::binary`]) are read as they are (`integer` and
//! `smallint` widen to `int64`, `real` to `float64`); any other column
//! (`numeric`, `uuid`, `json`, arrays, …) is read as its text form
//! (`::text`), never dropped.
//!
//! **Incremental reads** (`incremental_by = "COLUMN"`, an integer, date or
//! timestamp column): rows are read in that column's order, only those
//! whose value is greater than the high-water mark. A batch never ends
//! between two rows with the same cursor value (it grows past
//! `batch_size` instead), so the position after every batch is one value,
//! the high-water mark: a resumed run continues after it, and when a run
//! publishes, the mark is kept in `.SINK.weir-cursor.json` beside the sink
//! so the next run reads only rows added or updated since (delete that
//! file to read everything again). Without `incremental_by` the position
//! is the number of batches read, and a resume re-runs the query and skips
//! them: exact only if the query is ordered (by a unique key) and the rows
//! it reads did not change meanwhile.
//!
//! **Lost connections** are retried within `retry_budget_s` (default 60):
//! the query is sent again from the last position handed out.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use arrow::datatypes::{Field, Schema, SchemaRef};

use super::{Position, SourceBatch, SourceItem};
use crate::config::SourceConfig;
use crate::postgres::binary::{self, Decoder, Kind};
use crate::postgres::{AttemptError, Retry, TableName, Target, quote_ident};

/// Batches decoded ahead of the pipeline.
const READ_AHEAD: usize = 2;

/// An opened PostgreSQL source: where, what, and the schema it reads.
#[derive(Debug, Clone)]
pub struct PostgresSource {
    target: Target,
    /// The query rows come from (`SELECT * FROM table` for a table).
    query: String,
    /// What the report and errors call it (table or `query`).
    label: String,
    schema: SchemaRef,
    /// The SELECT list: each column as read (with `::text` casts).
    select: String,
    /// The cursor column's index and kind.
    cursor: Option<(usize, String, Kind)>,
    /// The high-water mark the last published run left (fresh runs start
    /// after it).
    stored_cursor: Option<i64>,
    batch_size: usize,
    retry: Retry,
}

/// The high-water mark kept between runs.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct StoredCursor {
    /// The source it belongs to (connection target and table or query).
    source: String,
    /// The cursor column.
    column: String,
    /// Its last value read (integer, or days / microseconds since 1970).
    value: i64,
}

impl PostgresSource {
    /// Connects, finds the schema of the table or query of `config`, and
    /// reads the stored high-water mark from `cursor_file`.
    ///
    /// # Errors
    /// The server cannot be reached within the retry budget, the table or
    /// query does not exist or parse (the server's message), or the
    /// cursor column is missing or of another type.
    pub fn open(
        config: &SourceConfig,
        batch_size: usize,
        cursor_file: Option<&Path>,
    ) -> Result<PostgresSource> {
        let target = Target::new(config.connection.as_deref())?;
        let (query, label) = match (&config.table, &config.query) {
            (Some(table), None) => {
                let table = TableName::parse(table)?;
                (format!("SELECT * FROM {}", table.sql()), table.to_string())
            }
            (None, Some(query)) => (
                query.trim().trim_end_matches(';').to_string(),
                "query".to_string(),
            ),
            _ => bail!("a postgres source reads either `table` or `query`"),
        };
        let retry = Retry {
            budget: Duration::from_secs(config.retry_budget_s),
        };
        let columns = retry.run(&target, "finding the source's columns", || {
            let mut client = target
                .connect()
                .map_err(|e| AttemptError::from_pg(e, "connecting"))?;
            let statement = client
                .prepare(&query)
                .map_err(|e| AttemptError::from_pg(e, &format!("reading {label}")))?;
            Ok(statement
                .columns()
                .iter()
                .map(|c| (c.name().to_string(), c.type_().clone()))
                .collect::<Vec<_>>())
        })?;
        let mut fields = Vec::new();
        let mut select = Vec::new();
        for (name, pg) in &columns {
            match Kind::of_pg(pg) {
                Some(kind) => {
                    fields.push(Field::new(name, kind.arrow_type(), true));
                    select.push(format!("q.{}", quote_ident(name)));
                }
                None => {
                    fields.push(Field::new(name, arrow::datatypes::DataType::Utf8, true));
                    select.push(format!("q.{0}::text AS {0}", quote_ident(name)));
                }
            }
        }
        let schema = Arc::new(Schema::new(fields));
        let cursor = match &config.incremental_by {
            None => None,
            Some(column) => {
                let index = columns
                    .iter()
                    .position(|(name, _)| name == column)
                    .with_context(|| {
                        format!(
                            "incremental_by: `{column}` is not a column of {label} (columns: {})",
                            columns
                                .iter()
                                .map(|c| c.0.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    })?;
                let kind = Kind::of_pg(&columns[index].1)
                    .filter(|k| matches!(k, Kind::Int | Kind::Date | Kind::Timestamp(_)))
                    .with_context(|| {
                        format!(
                            "incremental_by: `{column}` is `{}`; a cursor column must be an integer, date or timestamp",
                            columns[index].1
                        )
                    })?;
                Some((index, column.clone(), kind))
            }
        };
        let described = format!("{}/{label}", target.describe());
        let stored_cursor = match (&cursor, cursor_file) {
            (Some((_, column, _)), Some(file)) => read_cursor(file, &described, column)?,
            _ => None,
        };
        Ok(PostgresSource {
            target,
            query,
            label: described,
            schema,
            select: select.join(", "),
            cursor,
            stored_cursor,
            batch_size,
            retry,
        })
    }

    /// The schema every batch has (all columns nullable).
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// `postgresql://USER@HOST:PORT/DB/TABLE` (or `…/query`), never with
    /// a password.
    pub fn describe(&self) -> &str {
        &self.label
    }

    /// The SQL literal of cursor value `value`.
    fn literal(kind: &Kind, value: i64) -> String {
        match kind {
            Kind::Date => format!("(DATE '1970-01-01' + {value})"),
            Kind::Timestamp(None) => {
                format!("(TIMESTAMP '1970-01-01 00:00:00' + {value} * INTERVAL '1 microsecond')")
            }
            Kind::Timestamp(Some(_)) => format!(
                "(TIMESTAMPTZ '1970-01-01 00:00:00+00' + {value} * INTERVAL '1 microsecond')"
            ),
            _ => value.to_string(),
        }
    }

    /// The `COPY` that reads the rows after `after` (a high-water mark) up
    /// to `limit` (inclusive).
    fn copy_sql(&self, after: Option<i64>, limit: Option<i64>) -> String {
        // The newline ends a `--` comment the query may end with.
        let mut sql = format!("SELECT {} FROM ({}\n) AS q", self.select, self.query);
        if let Some((_, column, kind)) = &self.cursor {
            let column = quote_ident(column);
            sql.push_str(&format!(" WHERE q.{column} IS NOT NULL"));
            if let Some(value) = after {
                sql.push_str(&format!(" AND q.{column} > {}", Self::literal(kind, value)));
            }
            if let Some(value) = limit {
                sql.push_str(&format!(
                    " AND q.{column} <= {}",
                    Self::literal(kind, value)
                ));
            }
            sql.push_str(&format!(" ORDER BY q.{column}"));
        }
        format!("COPY ({sql}) TO STDOUT (FORMAT binary)")
    }

    /// The cursor column's greatest value now (as an `i64`, see
    /// [`binary::ordinal`]); `None` when it has none.
    fn cursor_max(
        &self,
        client: &mut postgres::Client,
    ) -> std::result::Result<Option<i64>, AttemptError> {
        let Some((_, column, kind)) = &self.cursor else {
            return Ok(None);
        };
        let column = quote_ident(column);
        let value = match kind {
            Kind::Date => format!("(max(q.{column}) - DATE '1970-01-01')::bigint"),
            Kind::Timestamp(None) => {
                format!("(extract(epoch FROM max(q.{column})) * 1000000)::bigint")
            }
            Kind::Timestamp(Some(_)) => {
                format!("(extract(epoch FROM max(q.{column})) * 1000000)::bigint")
            }
            _ => format!("max(q.{column})::bigint"),
        };
        let row = client
            .query_one(&format!("SELECT {value} FROM ({}\n) AS q", self.query), &[])
            .map_err(|e| AttemptError::from_pg(e, "reading the cursor column's greatest value"))?;
        Ok(row.get(0))
    }

    /// Batches from `start` on, each with the position after it; read by
    /// a thread of its own, at most [`READ_AHEAD`] batches ahead.
    pub fn read_from(
        &self,
        start: Position,
    ) -> Box<dyn Iterator<Item = Result<(SourceItem, Position)>> + Send> {
        let (tx, rx) = crossbeam_channel::bounded(READ_AHEAD);
        let this = self.clone();
        std::thread::Builder::new()
            .name("weir-pg-source".into())
            .spawn(move || {
                let mut position = Position {
                    cursor: start.cursor.or(this.stored_cursor),
                    ..start
                };
                let result =
                    this.retry
                        .run(&this.target, &format!("reading {}", this.label), || {
                            this.stream(&mut position, &tx)
                        });
                if let Err(e) = result {
                    let _ = tx.send(Err(e));
                }
            })
            .expect("spawning the source's reader thread");
        Box::new(rx.into_iter())
    }

    /// One attempt: runs the `COPY` from `position` and sends batches
    /// until the end (or until the pipeline stops listening).
    fn stream(
        &self,
        position: &mut Position,
        tx: &crossbeam_channel::Sender<Result<(SourceItem, Position)>>,
    ) -> std::result::Result<(), AttemptError> {
        let mut client = self
            .target
            .connect()
            .map_err(|e| AttemptError::from_pg(e, "connecting"))?;
        let incremental = self.cursor.clone();
        if incremental.is_some() && position.cursor_limit.is_none() {
            // Fixed when the run starts (and kept in the checkpoint), so a
            // resumed run reads the rows the crashed one did; later rows
            // are the next run's.
            match self.cursor_max(&mut client)? {
                Some(limit) => position.cursor_limit = Some(limit),
                None => return Ok(()),
            }
        }
        let sql = self.copy_sql(
            position.cursor.filter(|_| incremental.is_some()),
            position.cursor_limit,
        );
        let reader = client
            .copy_out(sql.as_str())
            .map_err(|e| AttemptError::from_pg(e, "COPY … TO STDOUT"))?;
        let mut decoder = Decoder::new(reader, self.schema.clone()).map_err(AttemptError::Fatal)?;
        // Without a cursor, every attempt re-runs the query and skips the
        // batches handed out before (the resumed run's and its own).
        let mut to_skip = if incremental.is_some() {
            0
        } else {
            position.items
        };
        let mut last: Option<i64> = None;
        let source: Arc<str> = Arc::from(self.label.as_str());
        let send = |decoder: &mut Decoder<_>,
                    position: &mut Position,
                    last: Option<i64>,
                    to_skip: &mut u64|
         -> std::result::Result<bool, AttemptError> {
            let batch = decoder.finish_batch().map_err(AttemptError::Fatal)?;
            if *to_skip > 0 {
                *to_skip -= 1;
                return Ok(true);
            }
            position.items += 1;
            position.records += batch.num_rows() as u64;
            if last.is_some() {
                position.cursor = last;
            }
            let item = SourceItem::Batch(SourceBatch {
                batch,
                file: source.clone(),
                state: None,
            });
            Ok(tx.send(Ok((item, *position))).is_ok())
        };
        loop {
            let more = decoder.read_row().map_err(|e| read_error(e, &self.label))?;
            if !more {
                break;
            }
            let value = match &incremental {
                Some((index, _, kind)) => match decoder.field(*index) {
                    Some(bytes) => Some(binary::ordinal(kind, bytes).map_err(AttemptError::Fatal)?),
                    None => None,
                },
                None => None,
            };
            // A batch ends at `batch_size` rows, but never between two rows
            // of one cursor value.
            if decoder.rows() >= self.batch_size
                && (incremental.is_none() || value != last)
                && !send(&mut decoder, position, last, &mut to_skip)?
            {
                return Ok(());
            }
            decoder.append_row().map_err(AttemptError::Fatal)?;
            if value.is_some() {
                last = value;
            }
        }
        if decoder.rows() > 0 {
            send(&mut decoder, position, last, &mut to_skip)?;
        }
        Ok(())
    }
}

/// A read error: a lost connection mid-`COPY` is worth retrying.
fn read_error(error: anyhow::Error, label: &str) -> AttemptError {
    let transient = error.chain().any(|cause| {
        cause
            .downcast_ref::<postgres::Error>()
            .is_some_and(crate::postgres::is_transient)
            || cause.downcast_ref::<std::io::Error>().is_some()
    });
    let error = error.context(format!("reading {label}"));
    if transient {
        AttemptError::Transient(error)
    } else {
        AttemptError::Fatal(error)
    }
}

/// The high-water mark file of a run whose sink's checkpoint directory is
/// `checkpoint_dir`: `.NAME.weir-cursor.json` beside it.
pub fn cursor_file(checkpoint_dir: &Path) -> PathBuf {
    let name = checkpoint_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name.strip_suffix(".weir-checkpoint").unwrap_or(&name);
    checkpoint_dir.with_file_name(format!("{stem}.weir-cursor.json"))
}

fn read_cursor(file: &Path, source: &str, column: &str) -> Result<Option<i64>> {
    let Some(bytes) = crate::durable::read_verified(file)? else {
        return Ok(None);
    };
    let stored: StoredCursor = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not a weir cursor file", file.display()))?;
    if stored.column != column || stored.source != source {
        tracing::warn!(
            "{} holds the high-water mark of {} by `{}`, not of {source} by `{column}`: reading everything",
            file.display(),
            stored.source,
            stored.column
        );
        return Ok(None);
    }
    Ok(Some(stored.value))
}

impl PostgresSource {
    /// Keeps `position`'s high-water mark in `file` for the next run
    /// (called when the run's output is published).
    ///
    /// # Errors
    /// An I/O error.
    pub fn store_cursor(&self, file: &Path, position: &Position) -> Result<()> {
        let (Some((_, column, _)), Some(value)) = (&self.cursor, position.cursor) else {
            return Ok(());
        };
        let stored = StoredCursor {
            source: self.label.clone(),
            column: column.clone(),
            value,
        };
        crate::durable::write_atomic(file, &serde_json::to_vec_pretty(&stored)?)
    }
}
