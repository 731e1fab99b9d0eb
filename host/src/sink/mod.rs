//! Sinks: write record batches as Parquet (optionally Hive-partitioned),
//! JSON Lines or CSV, atomically.
//!
//! Nothing is written at the final path until [`Sink::commit`]: files go
//! to a staging path beside it (`.NAME.weir-RUNID.tmp`) and are renamed into
//! place at the end, so an interrupted run never leaves output that looks
//! complete. [`Sink::abort`] (or dropping the sink) removes the staging path.
//! With `mode = "overwrite"` the old output stays intact until the rename.
//!
//! `weir serve` appends instead ([`Sink::create_part`]): the sink path is a
//! directory and every committed batch adds its own files to it,
//! `[PARTITION/]part-PARTID.EXT`, each renamed into place from a hidden
//! staging file in the directory (`.weir-PARTID-N.tmp`), so readers of
//! `*.parquet` never see a partial file. The staging files sit side by
//! side rather than in a staging tree of partition directories: a
//! micro-batch then creates no directory and removes none (on ext4,
//! creating inodes while many were just freed costs more than writing a
//! small part's rows).

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use arrow::array::{Array, ArrayRef, UInt32Array};
use arrow::datatypes::{Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use arrow::row::{RowConverter, SortField};
use arrow::util::display::{ArrayFormatter, FormatOptions};

use crate::config::{SinkConfig, SinkFormat, WriteMode};

pub mod concat;
pub mod csv;
pub mod jsonl;
pub mod nats;
pub mod parquet;
pub mod postgres;
pub mod text;

/// File name of an unpartitioned sink's part inside an epoch's directory
/// (the extension is the format's).
const EPOCH_PART_STEM: &str = "part";

/// Directory name Hive uses for a null partition value.
pub const NULL_PARTITION: &str = "__HIVE_DEFAULT_PARTITION__";

/// One file the sink committed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OutputFile {
    /// Final path of the file.
    pub path: PathBuf,
    /// Rows written to it.
    pub rows: u64,
}

/// The epoch a connector is asked to prepare ([`EpochSink::prepare_epoch`]).
#[derive(Debug, Clone)]
pub struct EpochContext {
    /// The epoch's number (1, 2, …).
    pub epoch: u64,
    /// The source position after the epoch's last item.
    pub position: crate::position::Position,
}

/// What preparing an epoch produced.
#[derive(Debug, Default)]
pub struct Prepared {
    /// The epoch's parts (paths relative to the epoch's directory) with
    /// their rows.
    pub parts: Vec<OutputFile>,
    /// Rows the destination refused (a database's constraint), for the
    /// quarantine.
    pub rejected: Vec<SinkRejected>,
}

/// Rows a sink's destination refused, with why: they go to the quarantine.
#[derive(Debug)]
pub struct SinkRejected {
    /// The rows (rows × the output schema).
    pub rows: RecordBatch,
    /// One reason per row.
    pub reasons: crate::reason::Reasons,
    /// The destination, for the quarantine's `source_file` column.
    pub source: String,
}

/// A sink connector under the checkpoint protocol of `weir run`
/// ([`crate::checkpoint::run`]), the two-phase commit contract: the rows of
/// an epoch go under a directory the coordinator owns
/// ([`EpochSink::begin_epoch`]); phase one, [`EpochSink::prepare_epoch`],
/// makes them durable but invisible and names the parts for the
/// checkpoint; the coordinator commits by renaming that directory (an
/// idempotent step it repeats at recovery); at the end,
/// [`EpochSink::publish`] makes every committed epoch's parts the output.
/// Implemented by [`Sink`] (Parquet, JSON Lines, CSV files), the
/// PostgreSQL sink ([`postgres::PostgresSink`], which commits each epoch
/// in the database during phase one and records it there) and the
/// quarantine; a new sink connector implements it in one new file.
pub trait EpochSink {
    /// The connector's name in the checkpoint and its directory under
    /// each epoch: `sink`, `quarantine`.
    fn connector(&self) -> &'static str;

    /// Starts an epoch: rows written from now on go under `dir`.
    ///
    /// # Errors
    /// When the connector cannot start writing there.
    fn begin_epoch(&mut self, dir: &Path) -> Result<()>;

    /// Phase one: finishes the epoch's files under its directory and
    /// fsyncs them; returns them (paths relative to the directory) with
    /// their rows, and any rows the destination refused.
    ///
    /// # Errors
    /// An I/O error.
    fn prepare_epoch(&mut self, epoch: &EpochContext) -> Result<Prepared>;

    /// Files the current epoch has written so far. Each one costs, when
    /// the epoch ends, a footer, an fsync and a small row group, and at
    /// publish a concatenation; an epoch of the default length is
    /// lengthened in proportion ([`crate::checkpoint::EpochSettings`]).
    /// Default 1.
    fn epoch_files(&self) -> usize {
        1
    }

    /// After a crash: the first epoch after `epoch` (the checkpoint's)
    /// that this connector already committed on its own side (a database
    /// that committed before the checkpoint file was written), with the
    /// source position it ended at, so that the replay ends that epoch at
    /// the same place. `None` for connectors that commit only by the
    /// coordinator's rename (files).
    ///
    /// # Errors
    /// The connector's own record cannot be read.
    fn committed_beyond(
        &mut self,
        _run_id: &str,
        _epoch: u64,
    ) -> Result<Option<(u64, crate::position::Position)>> {
        Ok(None)
    }

    /// Takes rows another connector's destination refused, into this
    /// epoch; `false` when this connector does not hold rejected rows
    /// (only the quarantine does).
    ///
    /// # Errors
    /// An I/O error.
    fn accept_rejected(&mut self, _rejected: &SinkRejected) -> Result<bool> {
        Ok(false)
    }

    /// Publishes the run from `epochs` (each committed epoch's directory
    /// and the parts [`EpochSink::prepare_epoch`] returned, in order),
    /// leaving the parts in place. With `replace_own_output` the output may
    /// already be this run's (a publish a crash interrupted). Returns the
    /// published files.
    ///
    /// # Errors
    /// A missing part or an I/O error.
    fn publish(
        self: Box<Self>,
        epochs: &[(PathBuf, Vec<OutputFile>)],
        replace_own_output: bool,
    ) -> Result<Vec<OutputFile>>;
}

/// What the pipeline writes output rows to: a [`Sink`] of files or a
/// [`postgres::PostgresSink`], chosen by `[sink] format` ([`open`]).
pub trait RecordSink: EpochSink + Send {
    /// Writes `batch` (rows × the output schema).
    ///
    /// # Errors
    /// A batch whose columns differ from the first batch's, or an I/O or
    /// database error.
    fn write(&mut self, batch: &RecordBatch) -> Result<()>;

    /// Tells the sink the output schema before any row arrives (a file
    /// sink then commits a readable empty output for a run without rows;
    /// a table sink checks or creates its table before anything is
    /// written).
    ///
    /// # Errors
    /// The destination cannot take rows of `schema` (a table sink: a
    /// missing table, a column of another type).
    fn expect_schema(&mut self, schema: SchemaRef) -> Result<()>;

    /// The output's path or address, for messages and reports (never
    /// with a password).
    fn describe(&self) -> String;

    /// Commits a run that is not checkpointed: finishes and moves the
    /// output into place.
    ///
    /// # Errors
    /// An I/O error, or a sink that loads only under the checkpoint
    /// protocol.
    fn commit(self: Box<Self>) -> Result<Vec<OutputFile>>;
}

/// Opens the sink `config` names: files ([`Sink::create`], or
/// [`Sink::for_publish`] with `for_publish`) or a PostgreSQL table.
///
/// # Errors
/// As [`Sink::create`], or a PostgreSQL connection string or table name
/// that does not parse.
pub fn open(
    config: &SinkConfig,
    base_dir: &Path,
    run_id: &str,
    for_publish: bool,
) -> Result<Box<dyn RecordSink>> {
    Ok(match (config.format, for_publish) {
        (SinkFormat::Postgres, _) => Box::new(postgres::PostgresSink::new(config, run_id)?),
        (SinkFormat::Nats, _) => bail!("a NATS sink publishes from weir serve, not from weir run"),
        (_, false) => Box::new(Sink::create(config, base_dir, run_id)?),
        (_, true) => Box::new(Sink::for_publish(config, base_dir, run_id)),
    })
}

impl RecordSink for Sink {
    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        Sink::write(self, batch)
    }

    fn expect_schema(&mut self, schema: SchemaRef) -> Result<()> {
        Sink::expect_schema(self, schema);
        Ok(())
    }

    fn describe(&self) -> String {
        self.final_path.display().to_string()
    }

    fn commit(self: Box<Self>) -> Result<Vec<OutputFile>> {
        Sink::commit(*self)
    }
}

impl EpochSink for Sink {
    fn connector(&self) -> &'static str {
        "sink"
    }

    fn begin_epoch(&mut self, dir: &Path) -> Result<()> {
        self.epoch_dir = Some(dir.to_path_buf());
        Ok(())
    }

    fn prepare_epoch(&mut self, _epoch: &EpochContext) -> Result<Prepared> {
        Ok(Prepared {
            parts: self.prepare_epoch_files()?,
            rejected: Vec::new(),
        })
    }

    fn epoch_files(&self) -> usize {
        self.files.len() + self.closed.len()
    }

    fn publish(
        self: Box<Self>,
        epochs: &[(PathBuf, Vec<OutputFile>)],
        replace_own_output: bool,
    ) -> Result<Vec<OutputFile>> {
        self.publish_epochs(epochs, replace_own_output)
    }
}

/// One output file being written in one format: what each file format of
/// the sink implements (`parquet.rs`, `jsonl.rs`, `csv.rs`); a new format
/// is one new file and a line in [`create_writer`].
pub trait FormatWriter: Send {
    /// Appends `batch` (rows × the file's schema).
    ///
    /// # Errors
    /// An I/O or encoding error.
    fn write(&mut self, batch: &RecordBatch) -> Result<()>;

    /// Bytes of rows buffered in memory, not yet encoded into the file (a
    /// Parquet row group in progress); 0 for formats that stream.
    fn buffered_bytes(&self) -> usize {
        0
    }

    /// Encodes what is buffered into the file now (a Parquet writer closes
    /// its row group early).
    ///
    /// # Errors
    /// An I/O or encoding error.
    fn flush_buffered(&mut self) -> Result<()> {
        Ok(())
    }

    /// From now on each batch given to [`FormatWriter::write`] is kept as
    /// it is and encoded whole at the next flush or the finish (a Parquet
    /// row group of its own, its columns encoded on two threads): `weir
    /// serve` writes a micro-batch's part in one call, then finishes all
    /// its files at once and waits for them. Formats that stream ignore
    /// it.
    fn write_each_batch_whole(&mut self) {}

    /// Writes what is buffered and the format's trailer (a Parquet footer)
    /// and flushes; the caller fsyncs.
    ///
    /// # Errors
    /// An I/O or encoding error.
    fn finish(self: Box<Self>) -> Result<()>;
}

/// Creates `path` (and its directories) and starts a `format` file of
/// `schema` rows in it.
///
/// # Errors
/// The file cannot be created, or a schema the format cannot hold.
pub fn create_writer(
    format: SinkFormat,
    path: &Path,
    schema: SchemaRef,
    compression: &str,
) -> Result<Box<dyn FormatWriter>> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    Ok(match format {
        SinkFormat::Parquet => Box::new(parquet::ParquetWriter::new(file, schema, compression)?),
        SinkFormat::Jsonl => Box::new(jsonl::JsonlWriter::new(file)),
        SinkFormat::Csv => Box::new(csv::CsvWriter::new(file)),
        SinkFormat::Postgres => bail!("a PostgreSQL table is not a file"),
        SinkFormat::Nats => bail!("a NATS subject is not a file"),
    })
}

/// Memory the sink's open writers may buffer in total, in bytes (64 MiB):
/// Parquet writers keep their row group in memory until it is closed, so
/// a partitioned sink with many open partitions would otherwise hold up to
/// 1M rows (Parquet's default row group) per partition, and its memory
/// would grow with the input.
pub const BUFFER_BUDGET_BYTES: usize = 64 << 20;

/// Smallest row group budget of one writer, in bytes (1 MiB): below that,
/// row groups get too small for readers to skip or compress well.
pub const MIN_ROW_GROUP_BYTES: usize = 1 << 20;

/// The buffered bytes after which a writer closes its row group, when
/// `open` writers share `total` bytes: an even share, at least
/// [`MIN_ROW_GROUP_BYTES`] (or `total` when that is smaller). Parquet's own
/// 1M-row limit still applies.
fn row_group_budget(total: usize, open: usize) -> usize {
    (total / open.max(1)).max(MIN_ROW_GROUP_BYTES.min(total))
}

/// Threads [`in_parallel`] uses at most: file finishing and fsync are
/// mostly waits on the disk, so more than the cores help, up to a point.
pub const IO_THREADS: usize = 8;

/// Applies `work` to every item on up to [`IO_THREADS`] threads and returns
/// the results in the items' order.
///
/// # Errors
/// The first error `work` returned (the other items still ran).
fn in_parallel<T: Send, R: Send>(
    items: Vec<T>,
    work: impl Fn(T) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    if items.len() <= 1 {
        return items.into_iter().map(work).collect();
    }
    let count = items.len();
    let queue = std::sync::Mutex::new(items.into_iter().enumerate());
    let results = std::sync::Mutex::new(Vec::with_capacity(count));
    std::thread::scope(|scope| {
        for _ in 0..IO_THREADS.min(count) {
            scope.spawn(|| {
                loop {
                    let next = queue.lock().expect("no panic while held").next();
                    let Some((i, item)) = next else { break };
                    let result = work(item);
                    results
                        .lock()
                        .expect("no panic while held")
                        .push((i, result));
                }
            });
        }
    });
    let mut results = results.into_inner().expect("no panic while held");
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, r)| r).collect()
}

/// Files a sink keeps open at once: half the process's soft limit on
/// open file descriptors (`RLIMIT_NOFILE`), at least 64; 512 when the limit
/// cannot be read.
///
/// A partitioned sink opens one file per partition it writes, each with a
/// descriptor and its encoder's buffers (about 170 KB for a Parquet writer
/// of a few columns), so a run over more partitions than the descriptor
/// limit would otherwise fail. Past the cap, the file written least
/// recently is finished and the partition's next rows go to a further file
/// in the same directory (`part-RUN-1.parquet`, ...). That is slow when
/// every batch touches every partition (each batch then reopens files), so
/// the cap sits well above what typical partitionings need, and raising
/// the descriptor limit (`ulimit -n`) raises it.
pub fn max_open_files() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given and nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 512;
    }
    usize::try_from(limit.rlim_cur / 2)
        .unwrap_or(usize::MAX)
        .max(64)
}

struct OpenFile {
    writer: Box<dyn FormatWriter>,
    relative: PathBuf,
    /// Where the writer writes until the file is moved into place.
    staged: PathBuf,
    rows: u64,
    /// The sink's write counter at this file's last write (least recently
    /// written files are closed first; see [`max_open_files`]).
    last_write: u64,
}

/// The writer of a file closed before the sink's end (see
/// [`max_open_files`]): already finished, so finishing again does nothing.
struct Finished;

impl FormatWriter for Finished {
    fn write(&mut self, _batch: &RecordBatch) -> Result<()> {
        bail!("the file was finished; its partition's rows go to a further file")
    }

    fn finish(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}

/// An open sink. Batches written to it may arrive with any nullability;
/// their column names and types must match the first batch's.
pub struct Sink {
    format: SinkFormat,
    compression: String,
    partition_by: Vec<String>,
    mode: WriteMode,
    final_path: PathBuf,
    staging: PathBuf,
    run_id: String,
    schema: Option<SchemaRef>,
    /// The output schema known before any row ([`Sink::expect_schema`]),
    /// for a run that writes no row.
    expected: Option<SchemaRef>,
    files: HashMap<String, OpenFile>,
    /// Files finished early to stay under [`max_open_files`]; they join
    /// the open ones wherever those are finished.
    closed: Vec<OpenFile>,
    /// Per partition key: files opened for it so far in this epoch (or
    /// run), which numbers its further files.
    opened: HashMap<String, u32>,
    /// Writes so far, for [`OpenFile::last_write`].
    writes: u64,
    /// Files kept open at most; [`max_open_files`].
    max_open: usize,
    committed: bool,
    /// Appending parts to a directory (`weir serve`) instead of replacing
    /// the output.
    parts: bool,
    /// Under the checkpoint protocol (`weir run`): the prepared directory
    /// of the current epoch, where files go until [`Sink::prepare_epoch`].
    epoch_dir: Option<PathBuf>,
    /// Bytes the open writers may buffer in total; [`BUFFER_BUDGET_BYTES`].
    buffer_budget: usize,
    /// Appending parts: every staging file opened so far, removed if the
    /// part is dropped uncommitted.
    staged_parts: Vec<PathBuf>,
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{suffix}"))
}

impl Sink {
    /// Prepares a sink writing to `config.path` (relative to `base_dir`).
    ///
    /// # Errors
    /// When the output exists and `mode` is `error_if_exists`.
    pub fn create(config: &SinkConfig, base_dir: &Path, run_id: &str) -> Result<Sink> {
        let final_path = base_dir.join(&config.path);
        if config.write_mode() == WriteMode::ErrorIfExists && final_path.exists() {
            bail!(
                "{} exists; remove it or set mode = \"overwrite\"",
                final_path.display()
            );
        }
        let staging = sibling(&final_path, &format!("weir-{run_id}.tmp"));
        Ok(Sink::new(config, final_path, staging, run_id, false))
    }

    /// [`Sink::create`] without the `mode` check, for publishing a
    /// checkpointed run whose interrupted publish may have put this run's
    /// own output in place already.
    pub fn for_publish(config: &SinkConfig, base_dir: &Path, run_id: &str) -> Sink {
        let final_path = base_dir.join(&config.path);
        let staging = sibling(&final_path, &format!("weir-{run_id}.tmp"));
        Sink::new(config, final_path, staging, run_id, false)
    }

    fn new(
        config: &SinkConfig,
        final_path: PathBuf,
        staging: PathBuf,
        run_id: &str,
        parts: bool,
    ) -> Sink {
        Sink {
            format: config.format,
            compression: config.compression.clone(),
            partition_by: config.partition_by.clone(),
            mode: config.write_mode(),
            final_path,
            staging,
            run_id: run_id.to_string(),
            schema: None,
            expected: None,
            files: HashMap::new(),
            closed: Vec::new(),
            opened: HashMap::new(),
            writes: 0,
            max_open: max_open_files(),
            committed: false,
            parts,
            epoch_dir: None,
            buffer_budget: BUFFER_BUDGET_BYTES,
            staged_parts: Vec::new(),
        }
    }

    /// Prepares one part of an appending sink: `config.path` (relative to
    /// `base_dir`) is a directory, and [`Sink::commit`] adds this part's
    /// files to it (`[PARTITION/]part-PART_ID.EXT`) without touching others.
    /// `mode` does not apply.
    ///
    /// # Errors
    /// When `config.path` exists and is not a directory.
    pub fn create_part(config: &SinkConfig, base_dir: &Path, part_id: &str) -> Result<Sink> {
        let final_path = base_dir.join(&config.path);
        if final_path.exists() && !final_path.is_dir() {
            bail!(
                "{} is a file, but weir serve appends one file per batch to a directory there; move it away",
                final_path.display()
            );
        }
        // Each file is staged on its own beside the part's others
        // (`write_to`); this path is never created.
        let staging = final_path.join(format!(".weir-{part_id}.tmp"));
        Ok(Sink::new(config, final_path, staging, part_id, true))
    }

    /// The path the output will have once committed.
    pub fn path(&self) -> &Path {
        &self.final_path
    }

    fn partitioned(&self) -> bool {
        !self.partition_by.is_empty()
    }

    /// The writer schema: the first batch's, all nullable, partition columns
    /// removed.
    fn writer_schema(&mut self, batch: &RecordBatch) -> Result<SchemaRef> {
        if let Some(schema) = &self.schema {
            return Ok(schema.clone());
        }
        for column in &self.partition_by {
            if batch.schema().index_of(column).is_err() {
                bail!(
                    "partition column `{column}` is not in the output (columns: {})",
                    crate::columnar::column_names(&batch.schema())
                );
            }
        }
        let schema = self.file_schema(&batch.schema());
        self.schema = Some(schema.clone());
        Ok(schema)
    }

    /// The schema files get for output rows of `schema`: all nullable,
    /// partition columns removed.
    fn file_schema(&self, schema: &Schema) -> SchemaRef {
        let fields: Vec<Field> = schema
            .fields()
            .iter()
            .filter(|f| !self.partition_by.contains(f.name()))
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect();
        Arc::new(Schema::new(fields))
    }

    /// Tells the sink the output schema (rows × `schema`, as the stages
    /// make it) before any row arrives, so that a run writing no row still
    /// commits a file readers accept: a Parquet file with those columns, a
    /// CSV file with its header line.
    pub fn expect_schema(&mut self, schema: SchemaRef) {
        self.expected = Some(schema);
    }

    /// Writes `batch` (rows × the output schema).
    ///
    /// # Errors
    /// A batch whose columns differ from the first batch's, or an I/O error.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let schema = self.writer_schema(batch)?;
        if !self.partitioned() {
            let data = conform(batch, &schema, &[])?;
            return self.write_to(String::new(), &data);
        }
        for (key, rows) in partition_rows(batch, &self.partition_by)? {
            // Input ordered by its partition key (flights by month) gives
            // batches of one partition, or of a few runs: those are sliced,
            // not copied row by row.
            // A group is never empty; its row numbers ascend.
            let first = rows[0] as usize;
            let rows = match rows[rows.len() - 1] as usize - first + 1 == rows.len() {
                true => batch.slice(first, rows.len()),
                false => arrow::compute::take_record_batch(batch, &UInt32Array::from(rows))?,
            };
            let data = conform(&rows, &schema, &self.partition_by)?;
            self.write_to(key, &data)?;
        }
        Ok(())
    }

    fn write_to(&mut self, key: String, data: &RecordBatch) -> Result<()> {
        if !self.files.contains_key(&key) {
            if self.files.len() >= self.max_open {
                self.close_least_recent()?;
            }
            let opened = self.opened.entry(key.clone()).or_default();
            let further = std::mem::replace(opened, *opened + 1);
            let relative = if self.partitioned() {
                let name = if further == 0 {
                    format!("part-{}.parquet", self.run_id)
                } else {
                    format!("part-{}-{further}.parquet", self.run_id)
                };
                Path::new(&key).join(name)
            } else if self.parts {
                PathBuf::from(format!("part-{}.{}", self.run_id, self.format.extension()))
            } else if self.epoch_dir.is_some() {
                PathBuf::from(format!("{EPOCH_PART_STEM}.{}", self.format.extension()))
            } else {
                PathBuf::new()
            };
            let path = if let Some(dir) = &self.epoch_dir {
                dir.join(&relative)
            } else if self.parts {
                let path = self.final_path.join(format!(
                    ".weir-{}-{}.tmp",
                    self.run_id,
                    self.staged_parts.len()
                ));
                self.staged_parts.push(path.clone());
                path
            } else if self.partitioned() {
                self.staging.join(&relative)
            } else {
                self.staging.clone()
            };
            let schema = self.schema.clone().expect("set by writer_schema");
            let mut writer = create_writer(self.format, &path, schema, &self.compression)?;
            if self.parts {
                writer.write_each_batch_whole();
            }
            self.files.insert(
                key.clone(),
                OpenFile {
                    writer,
                    relative,
                    staged: path,
                    rows: 0,
                    last_write: 0,
                },
            );
        }
        let budget = row_group_budget(self.buffer_budget, self.files.len());
        self.writes += 1;
        let file = self.files.get_mut(&key).expect("inserted above");
        file.last_write = self.writes;
        file.writer.write(data)?;
        file.rows += data.num_rows() as u64;
        if file.writer.buffered_bytes() > budget {
            file.writer.flush_buffered()?;
        }
        Ok(())
    }

    /// Finishes the open file written least recently (see
    /// [`max_open_files`]).
    fn close_least_recent(&mut self) -> Result<()> {
        let Some(key) = self
            .files
            .iter()
            .min_by_key(|(_, file)| file.last_write)
            .map(|(key, _)| key.clone())
        else {
            return Ok(());
        };
        let mut file = self.files.remove(&key).expect("found above");
        std::mem::replace(&mut file.writer, Box::new(Finished)).finish()?;
        self.closed.push(file);
        Ok(())
    }

    /// Every file of the sink, open or finished early, leaving none; the
    /// caller finishes them.
    fn take_files(&mut self) -> Vec<OpenFile> {
        self.opened.clear();
        let mut files: Vec<OpenFile> = self.files.drain().map(|(_, file)| file).collect();
        files.append(&mut self.closed);
        files
    }

    /// Prepares the current epoch (phase one of the commit): finishes every
    /// file written since [`Sink::begin_epoch`] and fsyncs it and its
    /// directories. Returns the files, paths relative to the epoch's
    /// directory (`[PARTITION/]part-RUNID.parquet`, or `part.EXT` when
    /// unpartitioned), with their rows; none when the epoch wrote no row.
    ///
    /// # Errors
    /// An I/O error.
    fn prepare_epoch_files(&mut self) -> Result<Vec<OutputFile>> {
        let dir = self
            .epoch_dir
            .clone()
            .context("prepare_epoch without begin_epoch")?;
        // Finishing a file (its last row group and footer) and fsyncing
        // it are independent per file; a partitioned sink has one per
        // partition, so they run side by side (fsyncs wait on the disk,
        // not the CPU).
        let files = self.take_files();
        let mut parts = in_parallel(files, |file| {
            file.writer.finish()?;
            crate::durable::fsync_file(&file.staged)?;
            Ok(OutputFile {
                path: file.relative,
                rows: file.rows,
            })
        })?;
        let dirs: std::collections::BTreeSet<PathBuf> = parts
            .iter()
            .filter_map(|part| dir.join(&part.path).parent().map(Path::to_path_buf))
            .collect();
        in_parallel(dirs.into_iter().collect(), |synced| {
            crate::durable::fsync_dir(&synced)
        })?;
        parts.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(parts)
    }

    /// Publishes a checkpointed run: concatenates, file by file, the parts
    /// of every committed epoch (`epochs`: each epoch's directory and the
    /// parts [`Sink::prepare_epoch`] returned, in epoch order) into the
    /// staging path and moves it into place as [`Sink::commit`] does.
    /// With `replace_own_output` the final path may already hold this
    /// run's output (a publish that a crash interrupted), whatever `mode`.
    /// The epoch parts are left in place.
    ///
    /// # Errors
    /// A missing or unreadable part, or an I/O error.
    fn publish_epochs(
        mut self: Box<Self>,
        epochs: &[(PathBuf, Vec<OutputFile>)],
        replace_own_output: bool,
    ) -> Result<Vec<OutputFile>> {
        if replace_own_output {
            self.mode = WriteMode::Overwrite;
        }
        let _ = remove_path(&self.staging);
        let mut by_file: std::collections::BTreeMap<&Path, (Vec<PathBuf>, u64)> =
            std::collections::BTreeMap::new();
        for (dir, parts) in epochs {
            for part in parts {
                let entry = by_file.entry(part.path.as_path()).or_default();
                entry.0.push(dir.join(&part.path));
                entry.1 += part.rows;
            }
        }
        if by_file.is_empty() {
            drop(self.take_files());
            return self.commit();
        }
        // One concatenation per output file (per partition), side by side.
        let (partitioned, format) = (self.partitioned(), self.format);
        let (staging, final_path) = (self.staging.as_path(), self.final_path.as_path());
        let mut outputs = in_parallel(
            by_file.into_iter().collect(),
            |(relative, (parts, rows))| {
                let (staged, path) = if partitioned {
                    (staging.join(relative), final_path.join(relative))
                } else {
                    (staging.to_path_buf(), final_path.to_path_buf())
                };
                concat::concat(format, &parts, &staged)?;
                Ok(OutputFile { path, rows })
            },
        )?;
        if let Some(parent) = self.staging.parent() {
            crate::durable::fsync_dir(parent)?;
        }
        crate::crash::point("mid-publish");
        replace(&self.staging, &self.final_path, self.mode, &self.run_id)?;
        if let Some(parent) = self.final_path.parent() {
            crate::durable::fsync_dir(parent)?;
        }
        self.committed = true;
        outputs.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(outputs)
    }

    /// Finishes every file and moves the output into place.
    ///
    /// # Errors
    /// An I/O error; the old output, if any, is then left as it was.
    pub fn commit(mut self) -> Result<Vec<OutputFile>> {
        if self.parts {
            return self.commit_parts();
        }
        let mut outputs = Vec::new();
        for file in self.take_files() {
            file.writer.finish()?;
            let path = if self.partitioned() {
                self.final_path.join(&file.relative)
            } else {
                self.final_path.clone()
            };
            outputs.push(OutputFile {
                path,
                rows: file.rows,
            });
        }
        if outputs.is_empty() {
            // No rows: still commit an empty output so downstream sees the run.
            if self.partitioned() {
                // No partition value, so no file: an empty directory.
                std::fs::create_dir_all(&self.staging)?;
            } else {
                let schema = match (&self.schema, &self.expected) {
                    (Some(schema), _) => schema.clone(),
                    (None, Some(expected)) => self.file_schema(expected),
                    (None, None) => Arc::new(Schema::empty()),
                };
                let mut writer = create_writer(
                    self.format,
                    &self.staging,
                    schema.clone(),
                    &self.compression,
                )?;
                // A CSV writer writes its header with the first batch.
                writer.write(&RecordBatch::new_empty(schema))?;
                writer.finish()?;
                outputs.push(OutputFile {
                    path: self.final_path.clone(),
                    rows: 0,
                });
            }
        }
        replace(&self.staging, &self.final_path, self.mode, &self.run_id)?;
        self.committed = true;
        outputs.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(outputs)
    }

    /// Prepares a part of an appending sink for the checkpoint protocol:
    /// finishes and fsyncs each file under its staging name and returns
    /// `(staged, final)` pairs, for the caller to record and then rename.
    ///
    /// # Errors
    /// An I/O error; the staged files are then removed.
    pub fn prepare_parts(mut self) -> Result<Vec<(PathBuf, PathBuf)>> {
        // As in an epoch: files finished and fsynced side by side.
        let final_path = self.final_path.clone();
        let mut files = in_parallel(self.take_files(), |file| {
            file.writer.finish()?;
            crate::durable::fsync_file(&file.staged)?;
            Ok((file.staged, final_path.join(&file.relative)))
        })?;
        let dirs: std::collections::BTreeSet<PathBuf> = files
            .iter()
            .filter_map(|(staged, _)| staged.parent().map(Path::to_path_buf))
            .collect();
        in_parallel(dirs.into_iter().collect(), |dir| {
            crate::durable::fsync_dir(&dir)
        })?;
        // The staging files now belong to the caller's commit.
        self.committed = true;
        files.sort();
        Ok(files)
    }

    /// Renames each staged file of a part into the directory; a part
    /// without rows adds nothing.
    fn commit_parts(mut self) -> Result<Vec<OutputFile>> {
        let mut outputs = Vec::new();
        for file in self.take_files() {
            file.writer.finish()?;
            let path = self.final_path.join(&file.relative);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
            std::fs::rename(&file.staged, &path)
                .with_context(|| format!("moving {} into place", file.staged.display()))?;
            outputs.push(OutputFile {
                path,
                rows: file.rows,
            });
        }
        self.committed = true;
        outputs.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(outputs)
    }

    /// Discards everything written so far.
    pub fn abort(self) {}
}

impl Drop for Sink {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        if self.parts {
            for staged in &self.staged_parts {
                let _ = std::fs::remove_file(staged);
            }
        } else {
            let _ = remove_path(&self.staging);
        }
    }
}

fn remove_path(path: &Path) -> std::io::Result<()> {
    if path.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    }
}

/// Moves `staging` to `final_path`. An existing output (allowed by `mode`)
/// is first renamed aside, then removed once the new one is in place.
pub fn replace(staging: &Path, final_path: &Path, mode: WriteMode, run_id: &str) -> Result<()> {
    // A replace that a crash interrupted left the previous output aside.
    let old = sibling(final_path, &format!("weir-{run_id}.old"));
    if final_path.exists() {
        let _ = remove_path(&old);
        if mode == WriteMode::ErrorIfExists {
            bail!(
                "{} appeared during the run; not overwriting it",
                final_path.display()
            );
        }
        std::fs::rename(final_path, &old)
            .with_context(|| format!("moving aside {}", final_path.display()))?;
        std::fs::rename(staging, final_path)
            .with_context(|| format!("moving {} into place", staging.display()))?;
        remove_path(&old).with_context(|| format!("removing the old output {}", old.display()))?;
    } else {
        if let Some(parent) = final_path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::rename(staging, final_path)
            .with_context(|| format!("moving {} into place", staging.display()))?;
        let _ = remove_path(&old);
    }
    Ok(())
}

/// `batch` without the `partition_by` columns, on `schema`.
fn conform(
    batch: &RecordBatch,
    schema: &SchemaRef,
    partition_by: &[String],
) -> Result<RecordBatch> {
    let columns: Vec<ArrayRef> = batch
        .schema()
        .fields()
        .iter()
        .zip(batch.columns())
        .filter(|(f, _)| !partition_by.contains(f.name()))
        .map(|(_, c)| c.clone())
        .collect();
    let names: Vec<&str> = batch
        .schema_ref()
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .filter(|n| !partition_by.iter().any(|p| p == n))
        .collect();
    let expected: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    if names != expected {
        bail!(
            "the output's columns changed between batches: first [{}], now [{}]",
            expected.join(", "),
            names.join(", ")
        );
    }
    RecordBatch::try_new(schema.clone(), columns)
        .context("the output's column types changed between batches")
}

/// The rows of `batch` grouped by partition, in order of first appearance:
/// each group's Hive-style directory (`a=1/b=x`, values percent-encoded
/// where they would break a path, nulls as [`NULL_PARTITION`]) and its row
/// indices in batch order.
///
/// The key columns are encoded once, column-wise, into arrow's row format
/// (`arrow::row`), and rows are grouped by those bytes; a directory name is
/// formatted once per group, not per row.
fn partition_rows(batch: &RecordBatch, partition_by: &[String]) -> Result<Vec<(String, Vec<u32>)>> {
    let columns: Vec<(&String, ArrayRef)> = partition_by
        .iter()
        .map(|name| {
            let column = batch
                .column_by_name(name)
                .expect("checked by writer_schema");
            (name, column.clone())
        })
        .collect();
    let converter = RowConverter::new(
        columns
            .iter()
            .map(|(_, c)| SortField::new(c.data_type().clone()))
            .collect(),
    )?;
    let keys = converter.convert_columns(
        &columns
            .iter()
            .map(|(_, c)| c.clone())
            .collect::<Vec<ArrayRef>>(),
    )?;
    let mut groups: Vec<(usize, Vec<u32>)> = Vec::new();
    // foldhash, seeded per process: the keys are user data.
    let mut index: HashMap<&[u8], usize, foldhash::quality::RandomState> = HashMap::default();
    for row in 0..batch.num_rows() {
        let slot = *index.entry(keys.row(row).data()).or_insert_with(|| {
            groups.push((row, Vec::new()));
            groups.len() - 1
        });
        groups[slot].1.push(row as u32);
    }
    let options = FormatOptions::default();
    let formatters = columns
        .iter()
        .map(|(_, column)| ArrayFormatter::try_new(column.as_ref(), &options))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(groups
        .into_iter()
        .map(|(first, rows)| {
            let key = columns
                .iter()
                .zip(&formatters)
                .map(|((name, column), formatter)| {
                    let value = if column.is_null(first) {
                        NULL_PARTITION.to_string()
                    } else {
                        escape(&formatter.value(first).to_string())
                    };
                    format!("{name}={value}")
                })
                .collect::<Vec<_>>()
                .join("/");
            (key, rows)
        })
        .collect())
}

/// Percent-encodes the characters Hive escapes in partition values.
/// A partition directory's value as the sink wrote it: `None` for
/// [`NULL_PARTITION`], else the value with its `%XX` escapes decoded
/// (the inverse of the sink's escaping; a malformed escape stays as it is).
pub fn unescape_partition(value: &str) -> Option<String> {
    if value == NULL_PARTITION {
        return None;
    }
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = value.get(i + 1..i + 3)
            && let Ok(byte) = u8::from_str_radix(hex, 16)
        {
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(String::from_utf8(out).unwrap_or_else(|_| value.to_string()))
}

fn escape(value: &str) -> String {
    value
        .chars()
        .map(|c| match c {
            '/' | '\\' | '=' | '%' | ':' | '#' | '?' | '*' | '"' | '\'' | '[' | ']' | '^' | '{'
            | '}' | '\n' | '\r' | '\t' => {
                format!("%{:02X}", c as u32)
            }
            c if c.is_control() => format!("%{:02X}", c as u32),
            c => c.to_string(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};

    #[test]
    fn partition_values_round_trip_through_their_escapes() {
        for value in ["2012/01/01", "a=b%c", "x:y#z", "plain", "é/ü"] {
            assert_eq!(unescape_partition(&escape(value)).as_deref(), Some(value));
        }
        assert_eq!(unescape_partition(NULL_PARTITION), None);
    }

    #[test]
    fn partition_values_are_escaped() {
        assert_eq!(escape("a/b=c"), "a%2Fb%3Dc");
        assert_eq!(escape("東京"), "東京");
    }

    #[test]
    fn partitioned_parquet_commits_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let config = SinkConfig {
            format: SinkFormat::Parquet,
            path: "out".into(),
            partition_by: vec!["m".into()],
            compression: "snappy".into(),
            mode: None,
            lineage_column: None,
            ..SinkConfig::default()
        };
        let batch = RecordBatch::try_from_iter([
            (
                "m",
                Arc::new(Int64Array::from(vec![Some(1), Some(2), None, Some(1)])) as ArrayRef,
            ),
            (
                "v",
                Arc::new(StringArray::from(vec!["a", "b", "c", "d"])) as ArrayRef,
            ),
        ])
        .unwrap();
        let mut sink = Sink::create(&config, dir.path(), "r1").unwrap();
        sink.write(&batch).unwrap();
        assert!(
            !dir.path().join("out").exists(),
            "nothing visible before commit"
        );
        let files = sink.commit().unwrap();
        let rows: Vec<(String, u64)> = files
            .iter()
            .map(|f| {
                (
                    f.path
                        .parent()
                        .unwrap()
                        .file_name()
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                    f.rows,
                )
            })
            .collect();
        assert_eq!(
            rows,
            vec![
                ("m=1".into(), 2),
                ("m=2".into(), 1),
                (format!("m={NULL_PARTITION}"), 1)
            ]
        );
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from("out")]);
    }

    /// The `k` value of a file under `k=VALUE/`.
    fn partition_key(path: &Path) -> i64 {
        let dir = path
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap();
        dir["k=".len()..].parse().unwrap()
    }

    /// The values of a Parquet file's first column, an int64 id.
    fn first_column_ids(path: &Path) -> Vec<i64> {
        let reader = ::parquet::arrow::arrow_reader::ParquetRecordBatchReader::try_new(
            std::fs::File::open(path).unwrap(),
            1024,
        )
        .unwrap();
        reader
            .flat_map(|batch| {
                let batch = batch.unwrap();
                let ids = batch
                    .column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap();
                ids.values().to_vec()
            })
            .collect()
    }

    /// Whether a batch's partition is one run of rows (sliced), a single
    /// row, or scattered (taken), each partition gets exactly its rows in
    /// order.
    #[test]
    fn runs_and_scattered_rows_reach_their_partitions_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let config = SinkConfig {
            format: SinkFormat::Parquet,
            path: "out".into(),
            partition_by: vec!["k".into()],
            compression: "snappy".into(),
            ..SinkConfig::default()
        };
        let mut sink = Sink::create(&config, dir.path(), "r1").unwrap();
        // (k, id): 1 scattered, 2 a run in the middle, 3 one row; then a
        // batch all of 4, and one starting mid-way through a sliced input.
        let batches: [&[(i64, i64)]; 3] = [
            &[(1, 0), (1, 1), (2, 2), (2, 3), (2, 4), (1, 5), (3, 6)],
            &[(4, 7), (4, 8), (4, 9)],
            &[(9, 99), (2, 10), (2, 11), (4, 12)],
        ];
        for (i, rows) in batches.iter().enumerate() {
            let batch = RecordBatch::try_from_iter([
                (
                    "id",
                    Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))) as ArrayRef,
                ),
                (
                    "k",
                    Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))) as ArrayRef,
                ),
            ])
            .unwrap();
            // The last batch is a slice, so its rows start at an offset.
            let batch = if i == 2 { batch.slice(1, 3) } else { batch };
            sink.write(&batch).unwrap();
        }
        let mut got: Vec<(i64, Vec<i64>)> = sink
            .commit()
            .unwrap()
            .iter()
            .map(|f| (partition_key(&f.path), first_column_ids(&f.path)))
            .collect();
        got.sort();
        assert_eq!(
            got,
            vec![
                (1, vec![0, 1, 5]),
                (2, vec![2, 3, 4, 10, 11]),
                (3, vec![6]),
                (4, vec![7, 8, 9, 12]),
            ]
        );
    }

    /// Each open partition writer closes its row group once it buffers its
    /// share of the sink's budget, so memory does not grow with the input;
    /// the rows still all arrive, in order.
    #[test]
    fn partition_writers_flush_row_groups_by_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let config = SinkConfig {
            format: SinkFormat::Parquet,
            path: "out".into(),
            partition_by: vec!["k".into()],
            compression: "none".into(),
            ..SinkConfig::default()
        };
        let mut sink = Sink::create(&config, dir.path(), "r3").unwrap();
        sink.buffer_budget = 32 << 10;
        let rows_per_batch = 8192_i64;
        for b in 0..10 {
            let ids: Vec<i64> = (0..rows_per_batch)
                .map(|i| b * rows_per_batch + i)
                .collect();
            let keys: Vec<i64> = ids.iter().map(|id| id % 3).collect();
            let batch = RecordBatch::try_from_iter([
                ("id", Arc::new(Int64Array::from(ids)) as ArrayRef),
                ("k", Arc::new(Int64Array::from(keys)) as ArrayRef),
            ])
            .unwrap();
            sink.write(&batch).unwrap();
        }
        let files = sink.commit().unwrap();
        assert_eq!(files.len(), 3);
        let mut total = 0;
        for file in &files {
            let reader = ::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
                std::fs::File::open(&file.path).unwrap(),
            )
            .unwrap();
            let groups = reader.metadata().num_row_groups();
            assert!(
                groups >= 5,
                "{}: {groups} row group(s); a writer over its byte budget must close its row group",
                file.path.display()
            );
            let key = partition_key(&file.path);
            let ids = first_column_ids(&file.path);
            let expected: Vec<i64> = (0..10 * rows_per_batch)
                .filter(|id| id % 3 == key)
                .collect();
            assert_eq!(ids, expected, "partition k={key}");
            total += ids.len();
        }
        assert_eq!(total, 10 * rows_per_batch as usize);
    }

    /// Past its cap on open files a sink finishes the file written least
    /// recently and continues the partition in a further file: every row
    /// arrives once, and no more files are open than the cap.
    #[test]
    fn a_sink_over_its_open_file_cap_continues_partitions_in_further_files() {
        let dir = tempfile::tempdir().unwrap();
        let config = SinkConfig {
            format: SinkFormat::Parquet,
            path: "out".into(),
            partition_by: vec!["k".into()],
            ..SinkConfig::default()
        };
        let mut sink = Sink::create(&config, dir.path(), "r4").unwrap();
        sink.max_open = 2;
        // Keys cycle 0, 1, 2 batch by batch, so with two files open each
        // new batch's key is the least recently written one's successor.
        for b in 0..9_i64 {
            let ids: Vec<i64> = (b * 10..b * 10 + 10).collect();
            let batch = RecordBatch::try_from_iter([
                ("id", Arc::new(Int64Array::from(ids)) as ArrayRef),
                ("k", Arc::new(Int64Array::from(vec![b % 3; 10])) as ArrayRef),
            ])
            .unwrap();
            sink.write(&batch).unwrap();
            assert!(sink.files.len() <= 2);
        }
        let files = sink.commit().unwrap();
        assert!(
            files.len() > 3,
            "{} files: partitions were continued",
            files.len()
        );
        let mut by_key: HashMap<i64, Vec<i64>> = HashMap::new();
        for file in &files {
            let key = partition_key(&file.path);
            by_key
                .entry(key)
                .or_default()
                .extend(first_column_ids(&file.path));
        }
        for key in 0..3_i64 {
            let mut ids = by_key.remove(&key).unwrap();
            ids.sort_unstable();
            let expected: Vec<i64> = (0..9_i64)
                .filter(|b| b % 3 == key)
                .flat_map(|b| b * 10..b * 10 + 10)
                .collect();
            assert_eq!(ids, expected, "partition k={key}");
        }
    }

    #[test]
    fn aborted_sink_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let config = SinkConfig {
            format: SinkFormat::Jsonl,
            path: "out.jsonl".into(),
            partition_by: vec![],
            compression: "snappy".into(),
            mode: None,
            lineage_column: None,
            ..SinkConfig::default()
        };
        let batch =
            RecordBatch::try_from_iter([("v", Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef)])
                .unwrap();
        let mut sink = Sink::create(&config, dir.path(), "r2").unwrap();
        sink.write(&batch).unwrap();
        sink.abort();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
