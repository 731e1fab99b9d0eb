//! Sources: read CSV, JSON Lines or Parquet files as a stream of record
//! batches of at most `batch_size` rows, never loading a whole file.
//!
//! The schema is fixed before the first batch: declared in the pipeline file,
//! read from the first Parquet file, or inferred from the first
//! `infer_rows` rows of the first CSV / JSON Lines file. Every file of a
//! glob must fit that schema.

mod csv;
mod dates;
mod extract;
mod json_check;
mod jsonl;
mod parquet;
pub mod postgres;
mod recovery;

use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use anyhow::{Context, Result, bail};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;

use crate::config::{SourceConfig, SourceFormat, expand_paths};
use crate::quarantine::{Reason, Reasons};

pub use crate::config::parse_data_type;

pub use self::extract::{EXTRACT_STATE, Extractor};
use self::recovery::{Decoded, Decoding};

/// The `plugin` name quarantine rows carry when weir's own reader rejected
/// a record (there is no plugin hash: `plugin_sha256` is empty).
pub const NATIVE_READER: &str = "weir:reader";

pub use crate::position::Position;

/// A source connector under the checkpoint protocol: it reads items from
/// a position and says, with each item, the position after it, so that a
/// run can resume exactly where its last committed epoch ended
/// ([`crate::checkpoint::run`]). Reading from the same position of
/// unchanged input yields the same items. Implemented by [`Source`] (the
/// CSV, JSON Lines, JSON, Parquet and extract file sources); a new source
/// connector implements it in one new file.
pub trait SourceConnector {
    /// Items from `start` on (`Position::default()`: the beginning), each
    /// with the position after it. An error names the file; reading stops
    /// after it.
    fn read_from(
        &self,
        start: Position,
    ) -> Box<dyn Iterator<Item = Result<(SourceItem, Position)>> + Send>;
}

impl SourceConnector for Source {
    fn read_from(
        &self,
        start: Position,
    ) -> Box<dyn Iterator<Item = Result<(SourceItem, Position)>> + Send> {
        if let Some(database) = &self.postgres {
            return database.read_from(start);
        }
        let index: std::collections::HashMap<Arc<str>, usize> = self
            .files
            .iter()
            .enumerate()
            .map(|(i, path)| (Arc::from(path.display().to_string()), i))
            .collect();
        let mut position = start;
        Box::new(self.items_from(start.file, start.items).map(move |item| {
            let item = item?;
            let (file, rows) = match &item {
                SourceItem::Batch(batch) => (&batch.file, batch.batch.num_rows()),
                SourceItem::Rejected { file, rows, .. } => (file, rows.num_rows()),
            };
            let file = index.get(file).copied().unwrap_or(position.file);
            if file != position.file {
                position = Position {
                    file,
                    items: 0,
                    records: 0,
                    cursor: None,
                    cursor_limit: None,
                };
            }
            position.items += 1;
            position.records += rows as u64;
            Ok((item, position))
        }))
    }
}

/// What a source yields: a batch, or a file that could not be read into
/// batches (extract sources only), as a one-row batch for the quarantine.
#[derive(Debug)]
pub enum SourceItem {
    /// Rows read.
    Batch(SourceBatch),
    /// Input that could not be read into rows: CSV records that do not
    /// parse (`rows`: `source_file`, `record_number`, `text`), or a file an
    /// extract plugin rejected (`rows`: `source_file`, `bytes`).
    Rejected {
        /// The file.
        file: Arc<str>,
        /// One row per rejected record or file.
        rows: RecordBatch,
        /// Why each row was rejected.
        reasons: Reasons,
    },
}

/// One batch read from a source, with where it came from.
#[derive(Debug, Clone)]
pub struct SourceBatch {
    /// The rows: at most `batch_size` × the source schema.
    pub batch: RecordBatch,
    /// The file it was read from.
    pub file: Arc<str>,
    /// On the last batch of a file an extract plugin read: the plugin's
    /// keyed-state writes for that file (its cursor), to be committed with
    /// the epoch that holds this batch.
    pub state: Option<crate::state::Changes>,
}

/// An opened source: its files and schema.
#[derive(Debug, Clone)]
pub struct Source {
    config: SourceConfig,
    files: Vec<PathBuf>,
    schema: Option<SchemaRef>,
    batch_size: usize,
    extractor: Option<Extractor>,
    /// JSON record fields that were not columns, over every file read.
    unknown_fields: Arc<std::sync::atomic::AtomicU64>,
    /// Date and timestamp columns written in a format arrow does not read.
    dates: dates::DateFormats,
    /// `format = "postgres"`: the table or query read instead of files.
    postgres: Option<postgres::PostgresSource>,
    /// The schema inferred from the first file, when it was inferred.
    inferred: Option<Inferred>,
    /// `null_values` as one regex, compiled once: `weir serve` decodes
    /// every request body with it.
    null_regex: Option<regex::Regex>,
}

/// A schema inferred from a file (with its date formats), and the file's
/// size, modification time and inode when it was read, so that a later
/// open of the same unchanged file can skip inference: arrow's CSV
/// inference tries a set of regexes on every sampled value, about 30 ms
/// for the 10,000 default rows of flights' 19 columns, and a `weir run`
/// opens its source twice (the load-time probe, then the run).
#[derive(Debug, Clone)]
pub struct Inferred {
    file: PathBuf,
    stamp: crate::durable::FileStamp,
    schema: SchemaRef,
    dates: dates::DateFormats,
}

/// A request body or dropped file, decoded ([`Source::decode_bytes`]).
#[derive(Debug)]
pub struct DecodedBody {
    /// Its batches and rejected records.
    pub items: Vec<SourceItem>,
    /// JSON record fields that were not columns of the schema.
    pub unknown_fields: u64,
}

impl Source {
    /// Resolves the files of `config` (relative to `base_dir`) and fixes the
    /// schema. An `extract` source needs its `extractor`; its schema is
    /// whatever the plugin returns.
    ///
    /// # Errors
    /// No matching file, an unreadable first file, a schema that cannot be
    /// inferred, or an `extract` source without an extractor.
    pub fn open(
        config: &SourceConfig,
        base_dir: &Path,
        batch_size: usize,
        extractor: Option<Extractor>,
    ) -> Result<Source> {
        Source::open_with_cursor(config, base_dir, batch_size, extractor, None, None)
    }

    /// [`Source::open`] for a `weir run` whose incremental PostgreSQL
    /// source keeps its high-water mark in `cursor_file` between runs, and
    /// which takes the schema `reuse` inferred (another open's
    /// [`Source::inferred`]) when it is of the same first file, unchanged
    /// since (same size, modification time and inode), instead of
    /// inferring it again.
    ///
    /// # Errors
    /// As [`Source::open`]; for PostgreSQL, the server's refusal.
    pub fn open_with_cursor(
        config: &SourceConfig,
        base_dir: &Path,
        batch_size: usize,
        extractor: Option<Extractor>,
        cursor_file: Option<&Path>,
        reuse: Option<&Inferred>,
    ) -> Result<Source> {
        if config.format == SourceFormat::Postgres {
            let database = postgres::PostgresSource::open(config, batch_size, cursor_file)?;
            return Ok(Source {
                config: config.clone(),
                files: Vec::new(),
                schema: Some(database.schema()),
                batch_size,
                extractor: None,
                unknown_fields: Arc::default(),
                dates: dates::DateFormats::none(),
                postgres: Some(database),
                inferred: None,
                null_regex: None,
            });
        }
        // A declared schema needs no file (weir serve without a sample).
        let files = match expand_paths(base_dir, &config.path) {
            Err(_) if config.schema.is_some() => Vec::new(),
            files => files.map_err(anyhow::Error::msg)?,
        };
        if config.format == SourceFormat::Extract {
            let extractor = extractor.context("an extract source needs its plugin")?;
            return Ok(Source {
                config: config.clone(),
                files,
                schema: None,
                batch_size,
                extractor: Some(extractor),
                unknown_fields: Arc::default(),
                dates: dates::DateFormats::none(),
                postgres: None,
                inferred: None,
                null_regex: None,
            });
        }
        let mut formats = dates::DateFormats::none();
        let mut inferred = None;
        let schema = match &config.schema {
            Some(columns) => Arc::new(Schema::new(
                columns
                    .iter()
                    .map(|c| {
                        let data_type = parse_data_type(&c.data_type).with_context(|| {
                            format!("unknown type `{}` for column `{}`", c.data_type, c.name)
                        })?;
                        if let Some(format) = &c.format {
                            formats.add(&c.name, data_type.clone(), format);
                        }
                        Ok(Field::new(&c.name, data_type, c.nullable))
                    })
                    .collect::<Result<Vec<_>>>()?,
            )),
            None => {
                let stamp = crate::durable::FileStamp::of(&files[0]);
                let earlier = reuse.filter(|earlier| {
                    earlier.file == files[0] && Some(&earlier.stamp) == stamp.as_ref()
                });
                let (schema, dates) = match earlier {
                    Some(earlier) => (earlier.schema.clone(), earlier.dates.clone()),
                    None => infer_schema(config, &files[0])
                        .with_context(|| format!("reading the schema of {}", files[0].display()))?,
                };
                inferred = stamp.map(|stamp| Inferred {
                    file: files[0].clone(),
                    stamp,
                    schema: schema.clone(),
                    dates: dates.clone(),
                });
                formats = dates;
                schema
            }
        };
        Ok(Source {
            config: config.clone(),
            files,
            schema: Some(schema),
            batch_size,
            extractor: None,
            unknown_fields: Arc::default(),
            dates: formats,
            postgres: None,
            inferred,
            null_regex: null_regex(config)?,
        })
    }

    /// The schema this open inferred from its first file, for a later
    /// [`Source::open_with_cursor`] of the same source to reuse; `None`
    /// when the schema was declared or is a database's or an extractor's.
    pub fn inferred(&self) -> Option<&Inferred> {
        self.inferred.as_ref()
    }

    /// JSON record fields that were not columns of the schema, in the
    /// files read so far (ignored or quarantined per `unknown_fields`).
    pub fn unknown_fields(&self) -> u64 {
        self.unknown_fields
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A PostgreSQL source's table or query.
    pub fn database(&self) -> Option<&postgres::PostgresSource> {
        self.postgres.as_ref()
    }

    /// The files to read, in order.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// The schema every batch has, known before reading for every format
    /// but `extract`.
    pub fn schema(&self) -> Option<SchemaRef> {
        self.schema.clone()
    }

    /// Total size of the files, in bytes (for progress).
    pub fn total_bytes(&self) -> u64 {
        self.files
            .iter()
            .filter_map(|f| f.metadata().ok())
            .map(|m| m.len())
            .sum()
    }

    /// Reads every file in turn, yielding batches of at most `batch_size`
    /// rows, and for `extract` sources the files the plugin rejected. An
    /// error names the file; reading stops after it.
    pub fn items(&self) -> Box<dyn Iterator<Item = Result<SourceItem>> + Send> {
        self.items_from(0, 0)
    }

    /// [`Source::items`] resumed at a checkpointed position: from file
    /// `first_file` (an index into [`Source::files`]) after its first
    /// `skip` items. Skipped items are decoded but not yielded; files
    /// before `first_file` are not opened.
    pub fn items_from(
        &self,
        first_file: usize,
        skip: u64,
    ) -> Box<dyn Iterator<Item = Result<SourceItem>> + Send> {
        if let Some(database) = &self.postgres {
            let start = Position {
                items: skip,
                ..Position::default()
            };
            return Box::new(database.read_from(start).map(|item| item.map(|(i, _)| i)));
        }
        match &self.extractor {
            Some(extractor) => Box::new(self.extracted(extractor.clone(), first_file, skip)),
            None => Box::new(self.decoded(first_file, skip).map(|item| {
                let (file, decoded) = item?;
                Ok(source_item(file, decoded))
            })),
        }
    }

    /// Reads every file of a native format in turn, yielding batches of at
    /// most `batch_size` rows. An error names the file; reading stops after it.
    pub fn batches(&self) -> impl Iterator<Item = Result<SourceBatch>> + Send + 'static {
        self.decoded(0, 0).map(|item| {
            let (file, decoded) = item?;
            match decoded {
                Decoded::Batch(batch) => Ok(SourceBatch {
                    batch,
                    file,
                    state: None,
                }),
                Decoded::Rejected { messages, .. } => {
                    bail!("reading {file}: {}", messages.join("; "))
                }
            }
        })
    }

    /// Every file of a native format, decoded in turn, with its name.
    fn decoded(
        &self,
        first_file: usize,
        skip: u64,
    ) -> impl Iterator<Item = Result<(Arc<str>, Decoded)>> + Send + 'static {
        let this = self.clone();
        let files: Vec<PathBuf> = self.files.iter().skip(first_file).cloned().collect();
        files.into_iter().enumerate().flat_map(move |(i, path)| {
            let skip = if i == 0 { skip as usize } else { 0 };
            let file: Arc<str> = Arc::from(path.display().to_string());
            let decoded = match this
                .open_file(&path, file.clone())
                .with_context(|| format!("opening {file}"))
            {
                Ok(decoded) => decoded,
                Err(e) => Box::new(std::iter::once(Err(e))),
            };
            decoded.skip(skip).map(move |item| {
                item.with_context(|| format!("reading {file}"))
                    .map(|decoded| (file.clone(), decoded))
            })
        })
    }

    fn open_file(
        &self,
        path: &Path,
        name: Arc<str>,
    ) -> Result<Box<dyn Iterator<Item = Result<Decoded>> + Send>> {
        let file = File::open(path)?;
        match self.config.format {
            SourceFormat::Parquet => self.decode_parquet(file),
            format => self.decode_text(Box::new(file), format, name, self.unknown_fields.clone()),
        }
    }

    /// Decodes one request body or dropped file (`weir serve`) in `format`
    /// (CSV with the source's dialect, JSON Lines or Parquet) into items of
    /// the source schema: batches of at most `batch_size` rows, and records
    /// that do not parse as [`SourceItem::Rejected`].
    ///
    /// # Errors
    /// Input that cannot even be split into records (a CSV line with the
    /// wrong number of fields, a Parquet file of another schema), or an
    /// `extract` source.
    pub fn decode_bytes(
        &self,
        name: Arc<str>,
        format: SourceFormat,
        bytes: bytes::Bytes,
    ) -> Result<DecodedBody> {
        let unknown = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let decoded: Box<dyn Iterator<Item = Result<Decoded>> + Send> = match format {
            SourceFormat::Parquet => self.decode_parquet(bytes)?,
            SourceFormat::Csv | SourceFormat::Jsonl | SourceFormat::Json => self.decode_text(
                Box::new(std::io::Cursor::new(bytes)),
                format,
                name.clone(),
                unknown.clone(),
            )?,
            SourceFormat::Extract => bail!("extract sources take files, not records"),
            SourceFormat::Postgres => bail!("a postgres source reads a table, not records"),
            SourceFormat::Nats => bail!("decode a NATS message's payload as jsonl"),
        };
        let items = decoded
            .map(|item| Ok(source_item(name.clone(), item?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(DecodedBody {
            items,
            unknown_fields: unknown.load(std::sync::atomic::Ordering::Relaxed),
        })
    }

    fn decode_text(
        &self,
        reader: Box<dyn std::io::Read + Send>,
        format: SourceFormat,
        name: Arc<str>,
        unknown_count: Arc<std::sync::atomic::AtomicU64>,
    ) -> Result<Box<dyn Iterator<Item = Result<Decoded>> + Send>> {
        let schema = self
            .schema
            .clone()
            .context("only native formats are decoded by the host")?;
        let config = &self.config;
        Ok(match format {
            SourceFormat::Csv => {
                let dialect = csv::Dialect {
                    schema,
                    delimiter: config.delimiter.as_bytes()[0],
                    quote: config.quote.as_bytes()[0],
                    null_regex: self.null_regex.clone(),
                    missing_columns: config.missing_columns,
                    extra_columns: config.extra_columns,
                    dates: self.dates.clone(),
                };
                Box::new(Decoding::new(csv::CsvRecords::open(
                    reader,
                    name,
                    dialect,
                    config.header,
                    self.batch_size,
                )?))
            }
            SourceFormat::Jsonl | SourceFormat::Json => {
                // A JSON document becomes one element per line.
                let (reader, numbering): (Box<dyn std::io::Read + Send>, _) =
                    if format == SourceFormat::Json {
                        let mut reader = reader;
                        let mut bytes = Vec::new();
                        reader.read_to_end(&mut bytes)?;
                        let lines = jsonl::array_as_lines(&bytes)?;
                        (
                            Box::new(std::io::Cursor::new(lines)),
                            jsonl::Numbering::ArrayElements,
                        )
                    } else {
                        (reader, jsonl::Numbering::Lines)
                    };
                Box::new(Decoding::new(jsonl::JsonLines::open(
                    reader,
                    name,
                    schema,
                    self.batch_size,
                    jsonl::Options {
                        unknown_fields: config.unknown_fields,
                        unknown_count,
                        numbering,
                        dates: self.dates.clone(),
                    },
                )))
            }
            SourceFormat::Parquet
            | SourceFormat::Extract
            | SourceFormat::Postgres
            | SourceFormat::Nats => {
                unreachable!("not a text format")
            }
        })
    }
}

/// Runs `decode` and turns a panic into an error. The parquet crate
/// panics on some malformed files (negative column lengths, offsets out
/// of bounds, a division by zero: found by `weir-fuzz`); a malformed
/// Parquet body must cost its request, not a worker thread or the run.
fn without_panics<T>(decode: impl FnOnce() -> Result<T> + std::panic::UnwindSafe) -> Result<T> {
    match std::panic::catch_unwind(decode) {
        Ok(result) => result,
        Err(panic) => {
            let why = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("a panic");
            bail!("the Parquet data is malformed ({why})")
        }
    }
}

/// A decoded item of `file` as a source item; unparseable records get the
/// native reader's `parse` reason.
fn source_item(file: Arc<str>, decoded: Decoded) -> SourceItem {
    match decoded {
        Decoded::Batch(batch) => SourceItem::Batch(SourceBatch {
            batch,
            file,
            state: None,
        }),
        Decoded::Rejected { rows, messages } => SourceItem::Rejected {
            file,
            reasons: messages
                .into_iter()
                .map(|message| Reason {
                    stage: Arc::from("source"),
                    plugin: Arc::from(NATIVE_READER),
                    plugin_sha256: Arc::from(""),
                    error_kind: "parse".into(),
                    rule: None,
                    message: message.into(),
                })
                .collect(),
            rows,
        },
    }
}

/// A regex matching the empty cell and every `null_values` entry exactly.
fn null_regex(config: &SourceConfig) -> Result<Option<regex::Regex>> {
    if config.null_values.is_empty() {
        return Ok(None);
    }
    let alternatives: Vec<String> = config
        .null_values
        .iter()
        .map(|v| regex::escape(v))
        .collect();
    Ok(Some(regex::Regex::new(&format!(
        "^(|{})$",
        alternatives.join("|")
    ))?))
}

/// `schema` (inferred by arrow, whose field order is alphabetical) with
/// its fields in the order their keys first appear in the first `rows`
/// lines of `reader`, as a reader of the file expects.
fn in_written_order(schema: Schema, reader: impl std::io::BufRead, rows: usize) -> Result<Schema> {
    let mut order: Vec<String> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for line in reader.split(b'\n').take(rows) {
        for key in json_check::top_level_keys(&line?) {
            if seen.insert(key.clone()) {
                order.push(key);
            }
        }
        if seen.len() >= schema.fields().len() {
            break;
        }
    }
    let mut fields: Vec<_> = schema.fields().iter().cloned().collect();
    fields.sort_by_key(|f| {
        order
            .iter()
            .position(|k| k == f.name())
            .unwrap_or(usize::MAX)
    });
    Ok(Schema::new(fields))
}

/// Reads the schema of `path` from its first `infer_rows` records, with
/// the date formats of text columns whose every sampled value is a date or
/// timestamp in one of [`dates::CANDIDATE_DATE_FORMATS`] (as DuckDB's
/// sniffer does).
fn infer_schema(config: &SourceConfig, path: &Path) -> Result<(SchemaRef, dates::DateFormats)> {
    let mut file = File::open(path)?;
    let rows = config.infer_rows;
    let (schema, sample): (Schema, Sample) = match config.format {
        SourceFormat::Csv => {
            let mut format = arrow::csv::reader::Format::default()
                .with_header(config.header)
                .with_delimiter(config.delimiter.as_bytes()[0])
                .with_quote(config.quote.as_bytes()[0]);
            let nulls = null_regex(config)?;
            if let Some(regex) = &nulls {
                format = format.with_null_regex(regex.clone());
            }
            let schema = format
                .infer_schema(BufReader::new(&mut file), Some(rows))?
                .0;
            // Only text columns can turn out to be dates: the sample
            // decodes those alone (a third of flights' columns).
            let text = text_columns(&schema);
            if text.is_empty() {
                return Ok((Arc::new(schema), dates::DateFormats::none()));
            }
            file.rewind()?;
            let mut builder = arrow::csv::ReaderBuilder::new(Arc::new(schema.clone()))
                .with_format(format)
                .with_projection(text.clone())
                .with_batch_size(rows.clamp(1, 8192));
            if let Some(regex) = nulls {
                builder = builder.with_null_regex(regex);
            }
            let sample = sample_batches(builder.build(BufReader::new(&mut file))?, rows);
            (
                schema,
                Sample {
                    columns: text,
                    batches: sample,
                },
            )
        }
        SourceFormat::Jsonl => {
            let inferred =
                arrow::json::reader::infer_json_schema(BufReader::new(&mut file), Some(rows))?.0;
            file.rewind()?;
            let schema = in_written_order(inferred, BufReader::new(&mut file), rows)?;
            file.rewind()?;
            let reader = arrow::json::ReaderBuilder::new(Arc::new(schema.clone()))
                .with_batch_size(rows.clamp(1, 8192))
                .build(BufReader::new(&mut file))?;
            (schema, Sample::whole(sample_batches(reader, rows)))
        }
        SourceFormat::Json => {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut file, &mut bytes)?;
            let lines = jsonl::array_as_lines(&bytes)?;
            let inferred =
                arrow::json::reader::infer_json_schema(std::io::Cursor::new(&lines), Some(rows))?.0;
            let schema = in_written_order(inferred, std::io::Cursor::new(&lines), rows)?;
            let reader = arrow::json::ReaderBuilder::new(Arc::new(schema.clone()))
                .with_batch_size(rows.clamp(1, 8192))
                .build(std::io::Cursor::new(&lines))?;
            (schema, Sample::whole(sample_batches(reader, rows)))
        }
        SourceFormat::Parquet => {
            file.rewind()?;
            let schema = ParquetRecordBatchReaderBuilder::try_new(file)?
                .schema()
                .as_ref()
                .clone();
            (schema, Sample::whole(Vec::new()))
        }
        SourceFormat::Extract => unreachable!("extract sources have no schema before extraction"),
        SourceFormat::Postgres => unreachable!("a postgres source's schema is the server's"),
        SourceFormat::Nats => unreachable!("a NATS source's schema is declared"),
    };
    Ok(with_inferred_dates(schema, &sample))
}

/// Up to `rows` rows of `reader`, stopping at the first batch that does
/// not decode (the sample only guides inference).
fn sample_batches(
    reader: impl Iterator<Item = Result<RecordBatch, arrow::error::ArrowError>>,
    rows: usize,
) -> Vec<RecordBatch> {
    let mut sample = Vec::new();
    let mut taken = 0;
    for batch in reader {
        let Ok(batch) = batch else { break };
        taken += batch.num_rows();
        sample.push(batch);
        if taken >= rows {
            break;
        }
    }
    sample
}

/// The indices of `schema`'s text (`utf8`) columns.
fn text_columns(schema: &Schema) -> Vec<usize> {
    (0..schema.fields().len())
        .filter(|&i| schema.field(i).data_type() == &DataType::Utf8)
        .collect()
}

/// Sampled rows of a file: batches of the schema's `columns` (indices).
struct Sample {
    columns: Vec<usize>,
    batches: Vec<RecordBatch>,
}

impl Sample {
    /// Batches of every column.
    fn whole(batches: Vec<RecordBatch>) -> Sample {
        let columns = batches.first().map_or(0, RecordBatch::num_columns);
        Sample {
            columns: (0..columns).collect(),
            batches,
        }
    }
}

/// `schema` with each text column whose sampled values are all dates (or
/// timestamps) of one candidate format typed as such, and those formats.
fn with_inferred_dates(schema: Schema, sample: &Sample) -> (SchemaRef, dates::DateFormats) {
    let mut formats = dates::DateFormats::none();
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, field)| {
            if field.data_type() != &DataType::Utf8 || sample.batches.is_empty() {
                return field.as_ref().clone();
            }
            let Some(at) = sample.columns.iter().position(|&c| c == i) else {
                return field.as_ref().clone();
            };
            let columns: Vec<&dyn arrow::array::Array> = sample
                .batches
                .iter()
                .filter(|b| b.num_columns() > at)
                .map(|b| b.column(at).as_ref())
                .collect();
            let Ok(values) = arrow::compute::concat(&columns) else {
                return field.as_ref().clone();
            };
            let Some(text) = values.as_any().downcast_ref::<arrow::array::StringArray>() else {
                return field.as_ref().clone();
            };
            match dates::infer_format(text) {
                Some((data_type, format)) => {
                    formats.add(field.name(), data_type.clone(), format);
                    field.as_ref().clone().with_data_type(data_type)
                }
                None => field.as_ref().clone(),
            }
        })
        .collect();
    (Arc::new(Schema::new(fields)), formats)
}

/// Reads a whole reference table (format from the extension: `.csv`,
/// `.jsonl`/`.ndjson`, `.parquet`) into JSON row objects; CSV cells `NA`
/// and empty are null.
///
/// # Errors
/// An unknown extension, an unreadable file, or more than `max_bytes` of JSON.
pub fn read_reference_table(path: &Path, max_bytes: usize) -> Result<serde_json::Value> {
    let format = SourceFormat::from_extension(path).with_context(|| {
        format!(
            "{}: unknown table format (use .csv, .jsonl or .parquet)",
            path.display()
        )
    })?;
    let config = SourceConfig {
        null_values: vec!["NA".into()],
        infer_rows: 100_000,
        ..SourceConfig::file(format, path)
    };
    let source = Source::open(&config, Path::new(""), 8192, None)?;
    let mut writer = arrow::json::ArrayWriter::new(Vec::new());
    for batch in source.batches() {
        writer.write(&batch?.batch)?;
        if writer.get_ref().len() > max_bytes {
            bail!(
                "{} is larger than {max_bytes} bytes as JSON",
                path.display()
            );
        }
    }
    writer.finish()?;
    let bytes = writer.into_inner();
    if bytes.is_empty() {
        return Ok(serde_json::Value::Array(Vec::new()));
    }
    Ok(serde_json::from_slice(&bytes)?)
}

/// Reads up to `limit` rows of a weir output for display: a Parquet, JSON
/// Lines or CSV file (by extension), or a directory of Parquet files, where
/// Hive-style `key=value` directories come back as `utf8` columns, their
/// values decoded as the sink encoded them (`__HIVE_DEFAULT_PARTITION__`
/// is null).
///
/// # Errors
/// An unreadable path or an unknown file extension.
pub fn read_output(path: &Path, limit: usize) -> Result<Vec<RecordBatch>> {
    Ok(read_output_files(path, limit)?
        .into_iter()
        .flat_map(|(_, batches)| batches)
        .collect())
}

/// [`read_output`] file by file: each file read with its batches, in
/// path order (files of different schemas may be mixed in a directory).
///
/// # Errors
/// As [`read_output`].
pub fn read_output_files(path: &Path, limit: usize) -> Result<Vec<(PathBuf, Vec<RecordBatch>)>> {
    let files: Vec<PathBuf> = if path.is_dir() {
        let pattern = path.join("**/*.parquet");
        let mut files: Vec<PathBuf> = glob::glob(&pattern.to_string_lossy())?
            .filter_map(Result::ok)
            .collect();
        files.sort();
        files
    } else {
        vec![path.to_path_buf()]
    };
    let mut read = Vec::new();
    let mut remaining = limit;
    for file in files {
        if remaining == 0 {
            break;
        }
        let mut batches = Vec::new();
        let format = SourceFormat::from_extension(&file).with_context(|| {
            format!(
                "{}: unknown format (expected .parquet, .jsonl or .csv)",
                file.display()
            )
        })?;
        let config = SourceConfig {
            infer_rows: 1000,
            ..SourceConfig::file(format, &file)
        };
        let partitions: Vec<(String, Option<String>)> = file
            .strip_prefix(path)
            .unwrap_or(&file)
            .parent()
            .into_iter()
            .flat_map(|p| p.components())
            .filter_map(|c| {
                c.as_os_str()
                    .to_str()?
                    .split_once('=')
                    .map(|(k, v)| (k.to_string(), crate::sink::unescape_partition(v)))
            })
            .collect();
        let partition_columns: Vec<(&str, Option<&str>)> = partitions
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_deref()))
            .collect();
        let source = Source::open(&config, Path::new(""), remaining.min(8192), None)?;
        for batch in source.batches() {
            let batch = batch?.batch;
            let batch = batch.slice(0, batch.num_rows().min(remaining));
            remaining -= batch.num_rows();
            batches.push(crate::columnar::with_constant_utf8(
                batch,
                &partition_columns,
            )?);
            if remaining == 0 {
                break;
            }
        }
        read.push((file, batches));
    }
    Ok(read)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csv(dir: &Path, text: &str) -> SourceConfig {
        let path = dir.join("input.csv");
        std::fs::write(&path, text).unwrap();
        SourceConfig::file(SourceFormat::Csv, &path)
    }

    fn types(source: &Source) -> Vec<DataType> {
        let schema = source.schema().unwrap();
        schema
            .fields()
            .iter()
            .map(|f| f.data_type().clone())
            .collect()
    }

    #[test]
    fn an_inferred_schema_is_reused_only_while_its_file_is_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let config = csv(dir.path(), "id,name\n1,a\n2,b\n");
        let first = Source::open(&config, Path::new(""), 8, None).unwrap();
        assert_eq!(types(&first), [DataType::Int64, DataType::Utf8]);

        // A marked copy tells a reused schema from one inferred again.
        let mut marked = first.inferred().unwrap().clone();
        marked.schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, true),
            Field::new("name", DataType::Utf8, true),
        ]));
        let again =
            Source::open_with_cursor(&config, Path::new(""), 8, None, None, Some(&marked)).unwrap();
        assert_eq!(types(&again), [DataType::Utf8, DataType::Utf8], "reused");

        // Rewritten in place: another size, so inferred anew.
        let config = csv(dir.path(), "id,name\n1.5,a\n2.5,b\n");
        let changed =
            Source::open_with_cursor(&config, Path::new(""), 8, None, None, Some(&marked)).unwrap();
        assert_eq!(types(&changed), [DataType::Float64, DataType::Utf8]);

        // Another file is never taken for the one read.
        let other = dir.path().join("other.csv");
        std::fs::write(&other, "id,name\n1.5,a\n2.5,b\n").unwrap();
        let config = SourceConfig::file(SourceFormat::Csv, &other);
        let elsewhere =
            Source::open_with_cursor(&config, Path::new(""), 8, None, None, Some(&marked)).unwrap();
        assert_eq!(types(&elsewhere), [DataType::Float64, DataType::Utf8]);
    }
}
