//! The PostgreSQL sink (`format = "postgres"`): loads each epoch of a
//! checkpointed `weir run` into a table with binary `COPY`, exactly once.
//!
//! **Writing.** Rows are encoded column by column into PostgreSQL's binary
//! `COPY` form ([`crate::postgres::binary`]) as they arrive. Each batch's
//! tuples go two ways: to a thread ([`Streamer`]) that holds the epoch's
//! transaction open and streams them to the server with `COPY … FROM
//! STDIN`, so the server stores rows while weir reads and encodes the next
//! ones; and to a spool file in the epoch's directory, so that the epoch
//! can be sent again (after a lost connection, or to find the rows the
//! database refuses) without holding it in memory.
//!
//! **Committing an epoch** ([`EpochSink::prepare_epoch`]), in one
//! transaction (the streamed one; if it failed, a new one from the spool):
//! if `_weir_checkpoints` already records this run's epoch (a replay
//! after a crash that came after the commit), nothing is loaded; else the
//! rows are copied into the table (`append`), into a
//! temporary table merged with `INSERT … ON CONFLICT (key) DO UPDATE`
//! (`upsert`; the last row of a key in an epoch wins), or into a shadow
//! table (`replace`); the epoch, its row count, the source position after
//! it and the rows the database refused are recorded in
//! `_weir_checkpoints`; then `COMMIT`. The rows and the record commit
//! together or not at all, so after any crash the table holds each epoch
//! once. Rows the database refuses (SQLSTATE class 22, a data exception,
//! or 23, a constraint violation) are found by bisection under savepoints
//! and go to the quarantine with the database's message; the rest of the
//! epoch loads.
//!
//! The transaction commits before weir's own checkpoint file records the
//! epoch. A crash between the two leaves the database one epoch ahead:
//! at recovery, [`EpochSink::committed_beyond`] reports that epoch and
//! the source position after it, the coordinator ends the replayed epoch
//! at exactly that position, and the sink finds it recorded and skips it.
//!
//! **Publishing**: `append` and `upsert` rows are visible epoch by epoch;
//! `replace` swaps the shadow table's rows in at the end of the run, in one
//! transaction (`TRUNCATE` and `INSERT`, or, with `partition_by`, `DELETE`
//! of the partitions the run wrote and `INSERT`), recorded as epoch 0 of
//! the run so a publish a crash interrupted is not done twice.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use arrow::datatypes::{Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use postgres::types::Type;

use super::{EpochContext, EpochSink, OutputFile, Prepared, RecordSink, SinkRejected};
use crate::config::{SinkConfig, WriteMode};
use crate::position::Position;
use crate::postgres::binary::{self, Kind};
use crate::postgres::{AttemptError, Retry, TableName, Target, quote_ident};
use crate::reason::Reason;

/// The table that records committed epochs, in the target table's schema.
pub const CHECKPOINT_TABLE: &str = "_weir_checkpoints";

/// Bytes of spooled `COPY` data sent per message.
const CHUNK_BYTES: usize = 256 * 1024;

/// The file an epoch's directory holds for a load: the table, the epoch
/// and its rows, as a receipt (the rows are in the database).
const RECEIPT: &str = "loaded.json";

/// Name of the plugin column of quarantine rows the database refused.
pub const PLUGIN: &str = "weir:postgres";

/// A PostgreSQL sink; see the module documentation.
pub struct PostgresSink {
    target: Target,
    table: TableName,
    mode: WriteMode,
    key: Vec<String>,
    partition_by: Vec<String>,
    create: bool,
    retry: Retry,
    run_id: String,
    client: Option<postgres::Client>,
    /// The output schema, as loaded (after [`binary::normalize`]), once
    /// checked against the table.
    schema: Option<SchemaRef>,
    epoch_dir: Option<PathBuf>,
    spool: Option<Spool>,
    encoded: Vec<u8>,
    /// The epoch's `COPY` streaming to the server as rows arrive.
    streamer: Option<Streamer>,
}

/// An epoch's load: `(rows loaded, (row, the database's message) for
/// each row refused)`.
type Loaded = (u64, Vec<(usize, String)>);

/// The SQL of one epoch's load, the same for the streamed and the
/// spooled path.
#[derive(Debug, Clone)]
struct LoadPlan {
    /// Statements before the `COPY` (the shadow or staging table).
    setup: Vec<String>,
    /// `COPY … FROM STDIN (FORMAT binary)`.
    copy: String,
    /// `upsert`'s `INSERT … ON CONFLICT` from the staging table.
    merge: Option<String>,
    /// The qualified `_weir_checkpoints`.
    checkpoints: String,
    record_key: String,
    run_id: String,
}

impl LoadPlan {
    /// `(rows, rejected)` when `_weir_checkpoints` records `epoch`.
    ///
    /// An epoch recorded at another source position than `position` (the
    /// replay's) is an error, never skipped: skipping it would lose or
    /// repeat the rows in between.
    fn recorded(
        &self,
        txn: &mut postgres::Transaction<'_>,
        epoch: i64,
        position: &str,
    ) -> std::result::Result<Option<Loaded>, AttemptError> {
        let row = txn
            .query_opt(
                &format!(
                    "SELECT rows, rejected::text, position = $4::text::jsonb, position::text FROM {} WHERE run_id = $1 AND target = $2 AND epoch = $3",
                    self.checkpoints
                ),
                &[&self.run_id, &self.record_key, &epoch, &position],
            )
            .map_err(|e| AttemptError::from_pg(e, "reading the checkpoint table"))?;
        let Some(row) = row else { return Ok(None) };
        let same: bool = row.get(2);
        if !same {
            let recorded: String = row.get(3);
            return Err(AttemptError::Fatal(anyhow::anyhow!(
                "epoch {epoch} was loaded before the crash ending at source position {recorded}, but its replay ends at {position}: the input changed since; the rows already loaded are kept, and this run cannot resume exactly (with --restart it starts over)"
            )));
        }
        let loaded: i64 = row.get(0);
        let rejected: String = row.get(1);
        let rejected: Vec<(usize, String)> =
            serde_json::from_str(&rejected).map_err(|e| AttemptError::Fatal(e.into()))?;
        tracing::info!(
            epoch,
            "epoch already loaded before a crash; not loading it again"
        );
        Ok(Some((loaded as u64, rejected)))
    }

    /// After the `COPY`: the merge, the record, `COMMIT`. Returns the rows
    /// loaded (`copied` for a plain load).
    ///
    /// With `bisect`, an `upsert` merge the table refuses rows of (SQLSTATE
    /// class 22 or 23) is halved under savepoints until each refused row is
    /// alone; those join `rejected` (as spool rows) and the rest merge.
    /// Without it, such a merge fails (the streamed path then falls back to
    /// the spooled one, which bisects).
    fn complete(
        &self,
        mut txn: postgres::Transaction<'_>,
        epoch: i64,
        position: &str,
        copied: i64,
        rejected: &mut Vec<(usize, String)>,
        bisect: bool,
    ) -> std::result::Result<u64, AttemptError> {
        let pg =
            |context: &'static str| move |e: postgres::Error| AttemptError::from_pg(e, context);
        let mut loaded = copied;
        if let Some(merge) = &self.merge {
            if bisect {
                let (lo, hi): (Option<i64>, Option<i64>) = {
                    let row = txn
                        .query_one(
                            "SELECT min(_weir_row), max(_weir_row) FROM _weir_upsert",
                            &[],
                        )
                        .map_err(pg("reading the upsert staging table"))?;
                    (row.get(0), row.get(1))
                };
                let mut refused = Vec::new();
                loaded = match (lo, hi) {
                    (Some(lo), Some(hi)) => {
                        merge_rows(&mut txn, merge, lo, hi, &mut refused)? as i64
                    }
                    _ => 0,
                };
                if !refused.is_empty() {
                    // `_weir_row` counts staged rows in spool order (with
                    // gaps where a refused COPY used values): its rank among
                    // the staged rows is the spool row's among those the
                    // COPY kept.
                    let copy_refused: std::collections::BTreeSet<usize> =
                        rejected.iter().map(|(row, _)| *row).collect();
                    let kept: Vec<usize> = (0..copied as usize + copy_refused.len())
                        .filter(|row| !copy_refused.contains(row))
                        .collect();
                    for (weir_row, message) in refused {
                        let rank: i64 = txn
                            .query_one(
                                "SELECT count(*) FROM _weir_upsert WHERE _weir_row <= $1",
                                &[&weir_row],
                            )
                            .map_err(pg("reading the upsert staging table"))?
                            .get(0);
                        let row = kept.get(rank as usize - 1).copied().ok_or_else(|| {
                            AttemptError::Fatal(anyhow::anyhow!(
                                "a refused staged row out of range"
                            ))
                        })?;
                        rejected.push((row, message));
                    }
                    rejected.sort_by_key(|(row, _)| *row);
                }
            } else {
                loaded = txn
                    .execute(merge.as_str(), &[&1i64, &i64::MAX])
                    .map_err(pg("merging the upsert"))? as i64;
            }
        }
        let rejected_json =
            serde_json::to_string(&*rejected).map_err(|e| AttemptError::Fatal(e.into()))?;
        txn.execute(
            &format!(
                "INSERT INTO {} (run_id, target, epoch, position, rows, rejected) VALUES ($1, $2, $3, $4::text::jsonb, $5, $6::text::jsonb)",
                self.checkpoints
            ),
            &[&self.run_id, &self.record_key, &epoch, &position, &loaded, &rejected_json],
        )
        .map_err(pg("recording the epoch"))?;
        crate::crash::point("before-pg-commit");
        txn.commit().map_err(pg("COMMIT"))?;
        crate::crash::point("after-pg-commit");
        Ok(loaded as u64)
    }
}

/// What the streaming thread is sent.
enum ToStreamer {
    /// Encoded tuples.
    Rows(Vec<u8>),
    /// The end of the epoch: its number, position (JSON) and rows.
    Finish(i64, String, i64),
}

/// How a streamed epoch ended: `(rows loaded, rows refused)`, or why it
/// did not (the spooled path then loads the epoch).
type Streamed = std::result::Result<Loaded, String>;

/// A thread holding one epoch's transaction open, copying tuples to the
/// server as the pipeline writes them, so the server works while weir
/// reads and encodes the next batches. The spool keeps every tuple, so
/// any failure here (a lost connection, a row the database refuses) falls
/// back to loading the epoch from the spool.
struct Streamer {
    tx: crossbeam_channel::Sender<ToStreamer>,
    done: crossbeam_channel::Receiver<Streamed>,
}

impl Streamer {
    fn start(target: Target, plan: LoadPlan) -> Streamer {
        let (tx, rx) = crossbeam_channel::bounded::<ToStreamer>(4);
        let (done_tx, done) = crossbeam_channel::bounded(1);
        std::thread::Builder::new()
            .name("weir-pg-copy".into())
            .spawn(move || {
                let mut finished = false;
                let outcome = stream_epoch(&target, &plan, &rx, &mut finished);
                // After a failure, drain what the pipeline still sends,
                // until the end of the epoch.
                if !finished {
                    for message in rx.iter() {
                        if let ToStreamer::Finish(..) = message {
                            break;
                        }
                    }
                }
                let _ = done_tx.send(outcome);
            })
            .expect("spawning the COPY thread");
        Streamer { tx, done }
    }

    fn send(&self, rows: Vec<u8>) {
        // A failed stream drains; the spool has the rows.
        let _ = self.tx.send(ToStreamer::Rows(rows));
    }

    fn finish(self, epoch: i64, position: String, rows: i64) -> Streamed {
        let _ = self.tx.send(ToStreamer::Finish(epoch, position, rows));
        self.done
            .recv()
            .unwrap_or_else(|_| Err("the COPY thread ended".into()))
    }
}

/// Streams one epoch (see [`Streamer`]); sets `finished` once the
/// epoch's `Finish` is received.
fn stream_epoch(
    target: &Target,
    plan: &LoadPlan,
    rx: &crossbeam_channel::Receiver<ToStreamer>,
    finished: &mut bool,
) -> Streamed {
    let text = |e: postgres::Error| crate::postgres::message(&e);
    let mut client = target.connect().map_err(text)?;
    let mut txn = client.transaction().map_err(text)?;
    // Whether this epoch was loaded before a crash is known once its
    // number is, at `Finish`; the rows stream before then and are rolled
    // back if so.
    for statement in &plan.setup {
        txn.batch_execute(statement).map_err(text)?;
    }
    let mut head = Vec::with_capacity(19);
    binary::write_header(&mut head);
    let mut copy = txn.copy_in(plan.copy.as_str()).map_err(text)?;
    copy.write_all(&head).map_err(|e| e.to_string())?;
    let finish = loop {
        match rx.recv() {
            Ok(ToStreamer::Rows(rows)) => {
                copy.write_all(&rows).map_err(|e| e.to_string())?;
                crate::crash::point("mid-copy");
            }
            Ok(ToStreamer::Finish(epoch, position, rows)) => {
                *finished = true;
                break (epoch, position, rows);
            }
            Err(_) => {
                *finished = true;
                return Err("the pipeline stopped".into());
            }
        }
    };
    let mut tail = Vec::with_capacity(2);
    binary::write_trailer(&mut tail);
    copy.write_all(&tail).map_err(|e| e.to_string())?;
    let copied = copy.finish().map_err(text)? as i64;
    let (epoch, position, rows) = finish;
    if let Some(found) = plan
        .recorded(&mut txn, epoch, &position)
        .map_err(|e| format!("{e:?}"))?
    {
        // Loaded before a crash: this copy is rolled back.
        drop(txn);
        return Ok(found);
    }
    if copied != rows {
        return Err(format!("the server copied {copied} rows of {rows}"));
    }
    plan.complete(txn, epoch, &position, rows, &mut Vec::new(), false)
        .map(|loaded| (loaded, Vec::new()))
        .map_err(|e| format!("{e:?}"))
}

/// One epoch's encoded rows on disk: tuples only, no header or trailer.
struct Spool {
    path: PathBuf,
    file: BufWriter<File>,
    /// Byte offset of each row's tuple in the file.
    row_starts: Vec<u64>,
    bytes: u64,
}

impl PostgresSink {
    /// A sink for `config` (`format = "postgres"`); connects lazily.
    ///
    /// # Errors
    /// A connection string or table name that does not parse.
    pub fn new(config: &SinkConfig, run_id: &str) -> Result<PostgresSink> {
        let table = TableName::parse(config.table.as_deref().unwrap_or_default())?;
        Ok(PostgresSink {
            target: Target::new(config.connection.as_deref())?,
            table,
            mode: config.write_mode(),
            key: config.key.clone(),
            partition_by: config.partition_by.clone(),
            create: config.create,
            retry: Retry {
                budget: Duration::from_secs(config.retry_budget_s),
            },
            run_id: run_id.to_string(),
            client: None,
            schema: None,
            epoch_dir: None,
            spool: None,
            encoded: Vec::new(),
            streamer: None,
        })
    }

    /// `postgresql://USER@HOST:PORT/DB/TABLE`, as reports and errors show
    /// the output (never with a password).
    pub fn describe(&self) -> String {
        format!("{}/{}", self.target.describe(), self.table)
    }

    fn checkpoints(&self) -> String {
        self.table.sibling(CHECKPOINT_TABLE).sql()
    }

    /// The shadow table `replace` loads into: `_weir_replace_` and the
    /// run id's first 12 hex digits, beside the table.
    fn shadow(&self) -> TableName {
        let short: String = self.run_id.chars().filter(|c| *c != '-').take(12).collect();
        self.table.sibling(&format!("_weir_replace_{short}"))
    }

    /// The key `_weir_checkpoints` records this sink under.
    fn record_key(&self) -> String {
        self.table.to_string()
    }

    /// Runs `work` on a connection, reconnecting and retrying within the
    /// budget when the connection is lost.
    fn with_client<T>(
        &mut self,
        what: &str,
        mut work: impl FnMut(&mut postgres::Client) -> std::result::Result<T, AttemptError>,
    ) -> Result<T> {
        let retry = self.retry;
        let target = self.target.clone();
        let client = &mut self.client;
        retry.run(&target, what, || {
            if client.as_mut().is_none_or(|c| c.is_closed()) {
                *client = Some(
                    target
                        .connect()
                        .map_err(|e| AttemptError::from_pg(e, "connecting"))?,
                );
            }
            let result = work(client.as_mut().expect("connected above"));
            if let Err(AttemptError::Transient(_)) = &result {
                *client = None;
            }
            result
        })
    }

    /// Checks (or, with `create`, creates) the table for rows of `schema`,
    /// before anything is written: every output column must be a column
    /// of the table with the type weir writes it as, every table column
    /// the output lacks must be nullable or have a default, and `upsert`
    /// needs a unique index on exactly its key columns. Also creates
    /// `_weir_checkpoints`.
    fn check_table(&mut self, schema: &Schema) -> Result<()> {
        let kinds: Vec<(String, Kind)> = schema
            .fields()
            .iter()
            .map(|f| {
                Kind::of_arrow(f.data_type())
                    .with_context(|| format!("output column `{}`", f.name()))
                    .map(|k| (f.name().clone(), k))
            })
            .collect::<Result<_>>()?;
        for key in self.key.iter().chain(&self.partition_by) {
            if !kinds.iter().any(|(name, _)| name == key) {
                bail!(
                    "`{key}` (in key or partition_by) is not a column of the output (columns: {})",
                    kinds
                        .iter()
                        .map(|(n, _)| n.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
        let table = self.table.clone();
        let described = self.describe();
        let create = self.create;
        let mode = self.mode;
        let key = self.key.clone();
        let checkpoints = self.checkpoints();
        self.with_client("checking the table", |client| {
            let fatal = |e: postgres::Error| AttemptError::from_pg(e, "checking the table");
            let exists: Option<u32> = client
                .query_one("SELECT to_regclass($1)::oid", &[&table.sql()])
                .map_err(fatal)?
                .get(0);
            let Some(oid) = exists else {
                if !create {
                    return Err(AttemptError::Fatal(anyhow::anyhow!(
                        "table {table} does not exist in {described}; create it, or set create = true in [sink] for weir to create it from the output's schema"
                    )));
                }
                let mut columns: Vec<String> = kinds
                    .iter()
                    .map(|(name, kind)| format!("{} {}", quote_ident(name), kind.create_type()))
                    .collect();
                if mode == WriteMode::Upsert {
                    columns.push(format!(
                        "PRIMARY KEY ({})",
                        key.iter().map(|k| quote_ident(k)).collect::<Vec<_>>().join(", ")
                    ));
                }
                client
                    .batch_execute(&format!(
                        "CREATE TABLE IF NOT EXISTS {} ({})",
                        table.sql(),
                        columns.join(", ")
                    ))
                    .map_err(fatal)?;
                tracing::info!("created table {table} in {described}");
                return Ok(());
            };
            let rows = client
                .query(
                    "SELECT attname::text, atttypid, format_type(atttypid, atttypmod), attnotnull, atthasdef OR attidentity <> '' OR attgenerated <> '' \
                     FROM pg_attribute WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                    &[&oid],
                )
                .map_err(fatal)?;
            let table_columns: Vec<(String, u32, String, bool, bool)> = rows
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
                .collect();
            for (name, kind) in &kinds {
                let Some((_, type_oid, type_name, _, _)) =
                    table_columns.iter().find(|(column, ..)| column == name)
                else {
                    return Err(AttemptError::Fatal(anyhow::anyhow!(
                        "column `{name}` of the output is not a column of table {table} (its columns: {}); add it to the table or drop it from the output",
                        table_columns.iter().map(|c| c.0.as_str()).collect::<Vec<_>>().join(", ")
                    )));
                };
                let loads = Type::from_oid(*type_oid).is_some_and(|t| kind.loads_into(&t));
                if !loads {
                    return Err(AttemptError::Fatal(anyhow::anyhow!(
                        "column `{name}` of table {table} is `{type_name}`, but the output's `{name}` is {} and loads only into `{}`; change the column's type or cast the value in a stage",
                        kind.arrow_type(),
                        kind.create_type()
                    )));
                }
            }
            for (name, _, type_name, not_null, has_default) in &table_columns {
                if *not_null && !*has_default && !kinds.iter().any(|(column, _)| column == name) {
                    return Err(AttemptError::Fatal(anyhow::anyhow!(
                        "column `{name}` ({type_name}) of table {table} is NOT NULL without a default, and the output has no `{name}`"
                    )));
                }
            }
            if mode == WriteMode::Upsert {
                let mut sorted = key.clone();
                sorted.sort();
                let unique: bool = client
                    .query_one(
                        "SELECT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = $1 AND i.indisunique \
                         AND i.indpred IS NULL AND (SELECT array_agg(a.attname::text ORDER BY a.attname::text) \
                         FROM pg_attribute a WHERE a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)) = $2)",
                        &[&oid, &sorted],
                    )
                    .map_err(fatal)?
                    .get(0);
                if !unique {
                    return Err(AttemptError::Fatal(anyhow::anyhow!(
                        "mode = \"upsert\" needs a unique index or primary key on exactly ({}) in table {table}; none exists",
                        key.join(", ")
                    )));
                }
            }
            Ok(())
        })?;
        self.with_client("creating the checkpoint table", |client| {
            client
                .batch_execute(&format!(
                    "CREATE TABLE IF NOT EXISTS {checkpoints} (\
                     run_id text NOT NULL, target text NOT NULL, epoch bigint NOT NULL, \
                     position jsonb NOT NULL, rows bigint NOT NULL, rejected jsonb NOT NULL DEFAULT '[]', \
                     committed_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (run_id, target, epoch))"
                ))
                .map_err(|e| AttemptError::from_pg(e, "creating the checkpoint table"))?;
            Ok(())
        })
    }

    fn ensure_checked(&mut self, schema: SchemaRef) -> Result<()> {
        if self.schema.is_none() {
            self.check_table(&schema)
                .with_context(|| format!("sink {}", self.describe()))?;
            // All nullable: batches may differ in nullability, and refused
            // rows are decoded back with this schema.
            let fields: Vec<arrow::datatypes::Field> = schema
                .fields()
                .iter()
                .map(|f| f.as_ref().clone().with_nullable(true))
                .collect();
            self.schema = Some(Arc::new(Schema::new(fields)));
        }
        Ok(())
    }

    fn spool(&mut self) -> Result<&mut Spool> {
        if self.spool.is_none() {
            let dir = self
                .epoch_dir
                .clone()
                .context("the postgres sink writes only under the checkpoint protocol")?;
            let path = dir.join("copy.bin");
            let file =
                File::create(&path).with_context(|| format!("creating {}", path.display()))?;
            self.spool = Some(Spool {
                path,
                file: BufWriter::with_capacity(1 << 20, file),
                row_starts: Vec::new(),
                bytes: 0,
            });
        }
        Ok(self.spool.as_mut().expect("created above"))
    }

    /// The columns of the output, quoted, for SQL.
    fn column_list(&self) -> String {
        self.schema
            .as_ref()
            .map(|s| {
                s.fields()
                    .iter()
                    .map(|f| quote_ident(f.name()))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    }

    /// The SQL of this sink's epoch loads.
    fn plan(&self) -> LoadPlan {
        let columns = self.column_list();
        let table = self.table.sql();
        let (setup, copy_into, merge) = match self.mode {
            WriteMode::Upsert => (
                vec![format!(
                    "CREATE TEMP TABLE _weir_upsert ({}, _weir_row bigint GENERATED ALWAYS AS IDENTITY) ON COMMIT DROP",
                    self.staging_columns()
                )],
                "_weir_upsert".to_string(),
                Some(self.merge_sql()),
            ),
            WriteMode::Replace => {
                let shadow = self.shadow().sql();
                (
                    // The output's columns only, without the table's
                    // constraints, identities or generated columns: the
                    // table's own rules apply when the rows move in.
                    vec![format!(
                        "CREATE TABLE IF NOT EXISTS {shadow} ({})",
                        self.staging_columns()
                    )],
                    shadow,
                    None,
                )
            }
            _ => (Vec::new(), table, None),
        };
        LoadPlan {
            setup,
            copy: format!("COPY {copy_into} ({columns}) FROM STDIN (FORMAT binary)"),
            merge,
            checkpoints: self.checkpoints(),
            record_key: self.record_key(),
            run_id: self.run_id.clone(),
        }
    }

    /// Loads the epoch's spool in one transaction with its record (the
    /// path after a failed stream, and for rows the database refuses; see
    /// the module documentation). Returns the rows loaded and the rows
    /// refused.
    fn load_epoch(&mut self, epoch: &EpochContext, spool: Option<&Spool>) -> Result<Loaded> {
        let Some(spool) = spool else {
            return Ok((0, Vec::new()));
        };
        let rows = spool.row_starts.len();
        let mut reader = File::open(&spool.path)?;
        let position = serde_json::to_string(&epoch.position)?;
        let plan = self.plan();
        let number = epoch.epoch as i64;
        let what = format!("loading epoch {} into {}", epoch.epoch, self.table);
        self.with_client(&what, |client| {
            let mut txn = client
                .transaction()
                .map_err(|e| AttemptError::from_pg(e, "BEGIN"))?;
            if let Some(found) = plan.recorded(&mut txn, number, &position)? {
                // Committed before a crash: the replay loads nothing.
                return Ok(found);
            }
            for statement in &plan.setup {
                txn.batch_execute(statement)
                    .map_err(|e| AttemptError::from_pg(e, "preparing the load"))?;
            }
            let mut rejected = Vec::new();
            load_rows(
                &mut txn,
                &plan.copy,
                &mut reader,
                spool,
                0,
                rows,
                &mut rejected,
            )?;
            let copied = (rows - rejected.len()) as i64;
            let loaded = plan.complete(txn, number, &position, copied, &mut rejected, true)?;
            Ok((loaded, rejected))
        })
    }

    /// Column definitions of the upsert staging table: the output's
    /// columns with the types weir creates, all nullable.
    fn staging_columns(&self) -> String {
        self.schema
            .as_ref()
            .map(|s| {
                s.fields()
                    .iter()
                    .map(|f| {
                        format!(
                            "{} {}",
                            quote_ident(f.name()),
                            Kind::of_arrow(f.data_type())
                                .map(|k| k.create_type())
                                .unwrap_or("text")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    }

    /// `INSERT … SELECT DISTINCT ON (key) … ON CONFLICT (key) DO UPDATE`
    /// of the staged rows whose `_weir_row` is in `$1..=$2`: the last row
    /// of each key replaces the table's row.
    fn merge_sql(&self) -> String {
        let columns = self.column_list();
        let keys = self
            .key
            .iter()
            .map(|k| quote_ident(k))
            .collect::<Vec<_>>()
            .join(", ");
        let updates: Vec<String> = self
            .schema
            .as_ref()
            .map(|s| {
                s.fields()
                    .iter()
                    .filter(|f| !self.key.contains(f.name()))
                    .map(|f| format!("{0} = EXCLUDED.{0}", quote_ident(f.name())))
                    .collect()
            })
            .unwrap_or_default();
        let action = if updates.is_empty() {
            "DO NOTHING".to_string()
        } else {
            format!("DO UPDATE SET {}", updates.join(", "))
        };
        // Rows with a null key never conflict (a unique index lets nulls
        // repeat), so they are all inserted rather than collapsed.
        let not_null = self
            .key
            .iter()
            .map(|k| format!("{} IS NOT NULL", quote_ident(k)))
            .collect::<Vec<_>>()
            .join(" AND ");
        format!(
            "INSERT INTO {} ({columns}) (SELECT DISTINCT ON ({keys}) {columns} FROM _weir_upsert WHERE _weir_row BETWEEN $1 AND $2 AND {not_null} ORDER BY {keys}, _weir_row DESC) \
             UNION ALL (SELECT {columns} FROM _weir_upsert WHERE _weir_row BETWEEN $1 AND $2 AND NOT ({not_null})) ON CONFLICT ({keys}) {action}",
            self.table.sql()
        )
    }

    /// `replace`'s end of run: the shadow table's rows replace the
    /// table's (all of them, or the partitions the run wrote), in one
    /// transaction recorded as epoch 0.
    fn swap_in(&mut self) -> Result<()> {
        let checkpoints = self.checkpoints();
        let record_key = self.record_key();
        let run_id = self.run_id.clone();
        let table = self.table.sql();
        let shadow = self.shadow().sql();
        let partition_by = self.partition_by.clone();
        self.with_client("replacing the table's rows", |client| {
            let pg = |context: &'static str| move |e: postgres::Error| AttemptError::from_pg(e, context);
            let mut txn = client.transaction().map_err(pg("BEGIN"))?;
            let done = txn
                .query_opt(
                    &format!("SELECT 1 FROM {checkpoints} WHERE run_id = $1 AND target = $2 AND epoch = 0"),
                    &[&run_id, &record_key],
                )
                .map_err(pg("reading the checkpoint table"))?;
            if done.is_some() {
                return Ok(());
            }
            // No shadow table: the run wrote no row.
            let columns: Option<String> = txn
                .query_one(
                    "SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) FROM pg_attribute \
                     WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped",
                    &[&shadow],
                )
                .map_err(pg("reading the shadow table"))?
                .get(0);
            match (&columns, partition_by.is_empty()) {
                (_, true) => txn
                    .batch_execute(&format!("DELETE FROM {table}"))
                    .map_err(pg("emptying the table"))?,
                (Some(_), false) => {
                    let matches = partition_by
                        .iter()
                        .map(|p| format!("s.{0} IS NOT DISTINCT FROM t.{0}", quote_ident(p)))
                        .collect::<Vec<_>>()
                        .join(" AND ");
                    txn.batch_execute(&format!(
                        "DELETE FROM {table} t WHERE EXISTS (SELECT 1 FROM {shadow} s WHERE {matches})"
                    ))
                    .map_err(pg("deleting the partitions"))?
                }
                (None, false) => {}
            }
            if let Some(columns) = &columns {
                txn.batch_execute(&format!(
                    "INSERT INTO {table} ({columns}) SELECT {columns} FROM {shadow}; DROP TABLE {shadow}"
                ))
                .map_err(pg("moving the rows in"))?;
            }
            txn.execute(
                &format!("INSERT INTO {checkpoints} (run_id, target, epoch, position, rows) VALUES ($1, $2, 0, '{{}}', 0)"),
                &[&run_id, &record_key],
            )
            .map_err(pg("recording the publish"))?;
            crate::crash::point("before-pg-commit");
            txn.commit().map_err(pg("COMMIT"))?;
            Ok(())
        })
    }
}

/// Runs `attempt` over rows `lo..hi` under a savepoint (`what` names it
/// in errors); when the database refuses some of them (SQLSTATE class 22
/// or 23), halves the range until each refused row is alone, collecting
/// `(row, message)` in `refused` and running `attempt` on the rest.
/// Returns the sum of what the accepted attempts returned.
fn bisect(
    txn: &mut postgres::Transaction<'_>,
    what: &'static str,
    lo: usize,
    hi: usize,
    refused: &mut Vec<(usize, String)>,
    attempt: &mut impl FnMut(
        &mut postgres::Transaction<'_>,
        usize,
        usize,
    ) -> std::result::Result<u64, CopyError>,
) -> std::result::Result<u64, AttemptError> {
    if lo >= hi {
        return Ok(0);
    }
    let mut savepoint = txn
        .savepoint("weir_rows")
        .map_err(|e| AttemptError::from_pg(e, "SAVEPOINT"))?;
    match attempt(&mut savepoint, lo, hi) {
        Ok(done) => {
            savepoint
                .commit()
                .map_err(|e| AttemptError::from_pg(e, "RELEASE SAVEPOINT"))?;
            Ok(done)
        }
        Err(CopyError::Pg(e)) if crate::postgres::is_row_error(&e) => {
            drop(savepoint);
            if hi - lo == 1 {
                refused.push((lo, crate::postgres::message(&e)));
                return Ok(0);
            }
            let mid = lo + (hi - lo) / 2;
            Ok(bisect(txn, what, lo, mid, refused, attempt)?
                + bisect(txn, what, mid, hi, refused, attempt)?)
        }
        Err(CopyError::Pg(e)) => Err(AttemptError::from_pg(e, what)),
        Err(CopyError::Io(e)) => Err(AttemptError::Fatal(e)),
    }
}

/// Copies rows `lo..hi` of the spool with `copy`, bisecting refused rows
/// out ([`bisect`]) into `rejected`.
fn load_rows(
    txn: &mut postgres::Transaction<'_>,
    copy: &str,
    reader: &mut File,
    spool: &Spool,
    lo: usize,
    hi: usize,
    rejected: &mut Vec<(usize, String)>,
) -> std::result::Result<(), AttemptError> {
    bisect(txn, "COPY", lo, hi, rejected, &mut |txn, lo, hi| {
        copy_range(txn, copy, reader, spool, lo, hi).map(|()| 0)
    })?;
    Ok(())
}

/// Merges the staged rows whose `_weir_row` is in `lo..=hi` with `merge`,
/// bisecting refused rows out ([`bisect`]) into `refused` as
/// `(_weir_row, message)`. Returns the rows merged.
fn merge_rows(
    txn: &mut postgres::Transaction<'_>,
    merge: &str,
    lo: i64,
    hi: i64,
    refused: &mut Vec<(i64, String)>,
) -> std::result::Result<u64, AttemptError> {
    // `_weir_row` values as offsets from `lo`, half-open.
    let mut by_offset = Vec::new();
    let end = usize::try_from(hi - lo + 1).unwrap_or(0);
    let merged = bisect(
        txn,
        "merging the upsert",
        0,
        end,
        &mut by_offset,
        &mut |txn, a, b| {
            let (first, last) = (lo + a as i64, lo + b as i64 - 1);
            txn.execute(merge, &[&first, &last]).map_err(CopyError::Pg)
        },
    )?;
    refused.extend(
        by_offset
            .into_iter()
            .map(|(offset, m)| (lo + offset as i64, m)),
    );
    Ok(merged)
}

enum CopyError {
    Pg(postgres::Error),
    Io(anyhow::Error),
}

/// Sends rows `lo..hi` of the spool as one binary `COPY`.
fn copy_range(
    txn: &mut postgres::Transaction<'_>,
    copy: &str,
    reader: &mut File,
    spool: &Spool,
    lo: usize,
    hi: usize,
) -> std::result::Result<(), CopyError> {
    let start = spool.row_starts[lo];
    let end = spool.row_starts.get(hi).copied().unwrap_or(spool.bytes);
    let mut writer = txn.copy_in(copy).map_err(CopyError::Pg)?;
    let mut head = Vec::with_capacity(19);
    binary::write_header(&mut head);
    let unwrap_io = |e: std::io::Error| match e
        .into_inner()
        .map(|inner| inner.downcast::<postgres::Error>())
    {
        Some(Ok(pg)) => CopyError::Pg(*pg),
        Some(Err(other)) => CopyError::Io(anyhow::anyhow!("{other}")),
        None => CopyError::Io(anyhow::anyhow!("an I/O error while copying")),
    };
    writer.write_all(&head).map_err(unwrap_io)?;
    reader
        .seek(SeekFrom::Start(start))
        .map_err(|e| CopyError::Io(e.into()))?;
    let mut left = end - start;
    let mut chunk = vec![0u8; CHUNK_BYTES];
    while left > 0 {
        let n = (left as usize).min(CHUNK_BYTES);
        reader
            .read_exact(&mut chunk[..n])
            .map_err(|e| CopyError::Io(e.into()))?;
        writer.write_all(&chunk[..n]).map_err(unwrap_io)?;
        left -= n as u64;
        crate::crash::point("mid-copy");
    }
    let mut tail = Vec::with_capacity(2);
    binary::write_trailer(&mut tail);
    writer.write_all(&tail).map_err(unwrap_io)?;
    writer.finish().map_err(CopyError::Pg)?;
    Ok(())
}

impl EpochSink for PostgresSink {
    fn connector(&self) -> &'static str {
        "sink"
    }

    fn begin_epoch(&mut self, dir: &Path) -> Result<()> {
        self.epoch_dir = Some(dir.to_path_buf());
        self.spool = None;
        self.streamer = None;
        Ok(())
    }

    fn prepare_epoch(&mut self, epoch: &EpochContext) -> Result<Prepared> {
        let mut spool = self.spool.take();
        if let Some(spool) = spool.as_mut() {
            spool.file.flush()?;
        }
        let streamed = self.streamer.take().map(|streamer| {
            let rows = spool.as_ref().map_or(0, |s| s.row_starts.len()) as i64;
            let position = serde_json::to_string(&epoch.position).unwrap_or_default();
            streamer.finish(epoch.epoch as i64, position, rows)
        });
        let (loaded, rejected) = match streamed {
            Some(Ok(done)) => done,
            other => {
                if let Some(Err(why)) = other {
                    tracing::info!(
                        epoch = epoch.epoch,
                        "the streamed COPY did not complete ({why}); loading the epoch from its spool"
                    );
                }
                self.load_epoch(epoch, spool.as_ref())
                    .with_context(|| format!("sink {}", self.describe()))?
            }
        };
        let mut out = Prepared::default();
        if let (Some(spool), false) = (&spool, rejected.is_empty()) {
            out.rejected.push(self.rejected_rows(spool, &rejected)?);
        }
        if let Some(spool) = spool {
            drop(spool.file);
            let _ = std::fs::remove_file(&spool.path);
        }
        if loaded > 0 || !rejected.is_empty() {
            // The checkpoint's record of the load: a small file, so the
            // epoch's parts exist like a file sink's do.
            let dir = self
                .epoch_dir
                .clone()
                .context("prepare_epoch without begin_epoch")?;
            let receipt = serde_json::json!({
                "target": self.describe(),
                "epoch": epoch.epoch,
                "rows": loaded,
                "rejected": rejected.len(),
            });
            std::fs::write(dir.join(RECEIPT), serde_json::to_vec_pretty(&receipt)?)?;
            crate::durable::fsync_file(&dir.join(RECEIPT))?;
            out.parts.push(OutputFile {
                path: PathBuf::from(RECEIPT),
                rows: loaded,
            });
        }
        Ok(out)
    }

    fn committed_beyond(&mut self, run_id: &str, epoch: u64) -> Result<Option<(u64, Position)>> {
        let checkpoints = self.checkpoints();
        let record_key = self.record_key();
        let run_id = run_id.to_string();
        let after = epoch as i64;
        let found = self.with_client("reading the checkpoint table", |client| {
            let exists: Option<u32> = client
                .query_one("SELECT to_regclass($1)::oid", &[&checkpoints])
                .map_err(|e| AttemptError::from_pg(e, "reading the checkpoint table"))?
                .get(0);
            if exists.is_none() {
                return Ok(None);
            }
            let row = client
                .query_opt(
                    &format!("SELECT epoch, position::text FROM {checkpoints} WHERE run_id = $1 AND target = $2 AND epoch > $3 ORDER BY epoch LIMIT 1"),
                    &[&run_id, &record_key, &after],
                )
                .map_err(|e| AttemptError::from_pg(e, "reading the checkpoint table"))?;
            Ok(row.map(|r| (r.get::<_, i64>(0), r.get::<_, String>(1))))
        })?;
        match found {
            None => Ok(None),
            Some((epoch, position)) => Ok(Some((
                epoch as u64,
                serde_json::from_str(&position)
                    .context("a malformed position in _weir_checkpoints")?,
            ))),
        }
    }

    fn publish(
        mut self: Box<Self>,
        epochs: &[(PathBuf, Vec<OutputFile>)],
        _replace_own_output: bool,
    ) -> Result<Vec<OutputFile>> {
        if self.mode == WriteMode::Replace {
            self.swap_in()
                .with_context(|| format!("sink {}", self.describe()))?;
            crate::crash::point("mid-publish");
        }
        let rows = epochs
            .iter()
            .flat_map(|(_, parts)| parts.iter().map(|p| p.rows))
            .sum();
        Ok(vec![OutputFile {
            path: PathBuf::from(self.describe()),
            rows,
        }])
    }
}

impl PostgresSink {
    /// The rows the database refused, decoded back from the spool, with
    /// its message for each.
    fn rejected_rows(&self, spool: &Spool, rejected: &[(usize, String)]) -> Result<SinkRejected> {
        let schema = self.schema.clone().context("rows without a schema")?;
        let mut file = File::open(&spool.path)?;
        let mut tuples = Vec::new();
        for (row, _) in rejected {
            let start = spool.row_starts[*row];
            let end = spool
                .row_starts
                .get(row + 1)
                .copied()
                .unwrap_or(spool.bytes);
            let mut bytes = vec![0u8; (end - start) as usize];
            file.seek(SeekFrom::Start(start))?;
            file.read_exact(&mut bytes)?;
            tuples.extend_from_slice(&bytes);
        }
        let rows = binary::decode_tuples(&tuples, schema)?;
        let reasons = rejected
            .iter()
            .map(|(_, message)| Reason {
                stage: Arc::from("sink"),
                plugin: Arc::from(PLUGIN),
                plugin_sha256: Arc::from(""),
                error_kind: "database".into(),
                rule: None,
                message: message.as_str().into(),
            })
            .collect();
        Ok(SinkRejected {
            rows,
            reasons,
            source: self.describe(),
        })
    }
}

impl RecordSink for PostgresSink {
    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let batch = binary::normalize(batch)?;
        self.ensure_checked(batch.schema())?;
        let expected = self.schema.clone().expect("checked above");
        let shape = |schema: &Schema| -> Vec<(String, arrow::datatypes::DataType)> {
            schema
                .fields()
                .iter()
                .map(|f| (f.name().clone(), f.data_type().clone()))
                .collect()
        };
        if shape(&batch.schema()) != shape(&expected) {
            let names = |s: &Schema| {
                s.fields()
                    .iter()
                    .map(|f| format!("{} {}", f.name(), f.data_type()))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            bail!(
                "the output's columns changed between batches: first [{}], now [{}]",
                names(&expected),
                names(&batch.schema())
            );
        }
        let mut encoded = std::mem::take(&mut self.encoded);
        let mut starts = Vec::with_capacity(batch.num_rows());
        binary::encode(&batch, &mut encoded, &mut starts)?;
        let spool = self.spool()?;
        let base = spool.bytes;
        spool.row_starts.extend(starts.iter().map(|s| s + base));
        spool.file.write_all(&encoded)?;
        spool.bytes += encoded.len() as u64;
        if self.streamer.is_none() {
            self.streamer = Some(Streamer::start(self.target.clone(), self.plan()));
        }
        let streamer = self.streamer.as_ref().expect("started above");
        // The streamer takes the buffer; the next batch gets a new one.
        self.encoded = Vec::with_capacity(encoded.len());
        streamer.send(encoded);
        Ok(())
    }

    fn expect_schema(&mut self, schema: SchemaRef) -> Result<()> {
        let empty = RecordBatch::new_empty(schema);
        let normalized = binary::normalize(&empty)?;
        self.ensure_checked(normalized.schema())
    }

    fn describe(&self) -> String {
        PostgresSink::describe(self)
    }

    fn commit(self: Box<Self>) -> Result<Vec<OutputFile>> {
        bail!(
            "the postgres sink loads only under the checkpoint protocol ([pipeline] checkpoint = true)"
        )
    }
}
