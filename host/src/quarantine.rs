//! The quarantine (dead-letter) sink: every rejected row, with why.
//!
//! Rows rejected at any stage share one schema, whatever the stage's input
//! looked like ([`schema`]): reason columns plus the original row as a JSON
//! object. In JSON Lines `record` is a nested object; in Parquet it is JSON
//! text (written without min/max statistics). Like [`crate::sink::Sink`],
//! the file appears only on commit; it is encoded and written on a thread
//! of its own.
//!
//! | column | type | meaning |
//! |---|---|---|
//! | `run_id` | utf8 | the run that rejected the row |
//! | `source_file` | utf8 | the input file the row came from |
//! | `stage` | utf8 | the stage that rejected it |
//! | `plugin` | utf8 | the stage's plugin (`builtin:check`, a path...) |
//! | `plugin_sha256` | utf8 | SHA-256 of the plugin component |
//! | `error_kind` | utf8 | `validation` or a [`PluginError::kind`](crate::plugin::PluginError::kind) |
//! | `rule` | utf8, nullable | validation: the failed rule ids, comma-separated |
//! | `message` | utf8 | validation: the messages, `; `-separated; else the error |
//! | `record` | utf8 (JSON) | the row as the stage received it, nulls explicit |

use std::borrow::Cow;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::SyncSender;
use std::thread::JoinHandle;

use anyhow::{Context, Result, anyhow, bail};
use arrow::array::{ArrayRef, StringArray, StringViewArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_writer::ArrowWriterOptions;
use parquet::basic::Compression;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use crate::config::{QuarantineConfig, QuarantineFormat, WriteMode};
use crate::durable::Writeback;
use crate::sink::OutputFile;

pub use crate::reason::Reason;

/// Longest message repeated on every row of a failed batch, in bytes. A
/// longer one (a trap with the plugin's stderr) is stored whole on the
/// first row that has it and cut on the others, which say where the whole
/// text is: a plugin's stderr is not copied into each of 8,192 rows.
pub const MAX_REPEATED_MESSAGE_BYTES: usize = 256;

/// The message stored for each of `reasons`' rows (see
/// [`MAX_REPEATED_MESSAGE_BYTES`]); borrowed unless it had to be cut.
fn stored_messages(reasons: &[Reason]) -> Vec<Cow<'_, str>> {
    let mut whole: Option<(&Arc<str>, usize)> = None;
    reasons
        .iter()
        .enumerate()
        .map(|(row, reason)| {
            let message = &*reason.message;
            if message.len() <= MAX_REPEATED_MESSAGE_BYTES {
                return Cow::Borrowed(message);
            }
            match whole {
                // The rows of one failed call share their message.
                Some((text, first)) if Arc::ptr_eq(text, &reason.message) || **text == *message => {
                    let cut = crate::plugin::head(message, MAX_REPEATED_MESSAGE_BYTES);
                    Cow::Owned(format!(
                        "{cut} [the whole message is on the quarantined row {} rows above, from the same failed call]",
                        row - first
                    ))
                }
                _ => {
                    whole = Some((&reason.message, row));
                    Cow::Borrowed(message)
                }
            }
        })
        .collect()
}

/// The quarantine's Arrow schema (see the module docs).
pub fn schema() -> SchemaRef {
    let utf8 = |name: &str, nullable| Field::new(name, DataType::Utf8, nullable);
    Arc::new(Schema::new(vec![
        utf8("run_id", false),
        utf8("source_file", false),
        utf8("stage", false),
        utf8("plugin", false),
        utf8("plugin_sha256", false),
        utf8("error_kind", false),
        utf8("rule", true),
        utf8("message", false),
        utf8("record", false),
    ]))
}

/// The schema of the batches a Parquet quarantine encodes: [`schema`],
/// with the reason columns that rows share (all but `message` and
/// `record`) as string views ([`shared_strings`]). The file does not
/// record it (`skip_arrow_metadata`): its columns read back as [`schema`]
/// says, plain strings.
fn parquet_batch_schema() -> SchemaRef {
    let plain = schema();
    Arc::new(Schema::new(
        plain
            .fields()
            .iter()
            .map(|field| match field.name().as_str() {
                "message" | "record" => field.as_ref().clone(),
                _ => field.as_ref().clone().with_data_type(DataType::Utf8View),
            })
            .collect::<Vec<_>>(),
    ))
}

/// A string column of `values` (`None`: null) in which consecutive rows
/// holding the same string (the same allocation: an `Arc<str>` the rows of
/// one stage or one failed call share, or one constant) store it once, as
/// Arrow string views pointing at one copy.
///
/// Rows × 1, any length. Built as plain strings, the reason columns copied
/// every shared string into every row (the plugin's SHA-256 alone is 64
/// bytes a row), about 225 bytes a row in all, for the Parquet encoder to
/// read and dictionary-encode back to one value.
///
/// # Errors
/// More than 4 GiB of distinct strings in one batch.
fn shared_strings<'a>(values: impl Iterator<Item = Option<&'a str>>) -> Result<StringViewArray> {
    let (low, _) = values.size_hint();
    let mut views = Vec::with_capacity(low);
    let mut nulls = arrow::array::NullBufferBuilder::new(low);
    let mut data = Vec::new();
    let mut last: Option<(*const u8, usize, u128)> = None;
    for value in values {
        let Some(value) = value else {
            views.push(0);
            nulls.append_null();
            continue;
        };
        nulls.append_non_null();
        let view = match last {
            Some((ptr, len, view)) if ptr == value.as_ptr() && len == value.len() => view,
            _ => {
                let offset = u32::try_from(data.len())
                    .context("a quarantine batch's distinct reason strings exceed 4 GiB")?;
                if value.len() > 12 {
                    data.extend_from_slice(value.as_bytes());
                }
                let view = arrow::array::builder::make_view(value.as_bytes(), 0, offset);
                last = Some((value.as_ptr(), value.len(), view));
                view
            }
        };
        views.push(view);
    }
    // SAFETY: every view was made by `make_view` from a `&str` (valid
    // UTF-8), inline or pointing at the copy of it just appended to
    // `data`, buffer 0; a null's view is zero. `try_new` would check the
    // UTF-8 of every row's string again, 3% of a half-rejected run.
    Ok(unsafe {
        StringViewArray::new_unchecked(
            views.into(),
            vec![arrow::buffer::Buffer::from_vec(data)].into(),
            nulls.finish(),
        )
    })
}

/// Each row of `rows` as a JSON object with explicit nulls.
///
/// # Errors
/// A column arrow's JSON writer cannot encode.
pub fn rows_as_json(rows: &RecordBatch) -> Result<Vec<String>> {
    let records = JsonRecords::encode(rows)?;
    Ok((0..records.len())
        .map(|i| String::from_utf8_lossy(records.get(i)).into_owned())
        .collect())
}

/// The rows of a batch as JSON objects (explicit nulls), encoded one
/// after another by arrow's JSON encoder into one buffer, laid out as a
/// string column: object `i` is `text[offsets[i]..offsets[i + 1]]`. The
/// Parquet quarantine takes the buffer as its `record` column without a
/// copy; the JSON Lines one writes each object into its line.
struct JsonRecords {
    /// The objects, back to back.
    text: Vec<u8>,
    /// Where each object starts in `text`, plus `text.len()`.
    offsets: Vec<i32>,
}

impl JsonRecords {
    fn encode(rows: &RecordBatch) -> Result<JsonRecords> {
        let options = arrow::json::writer::EncoderOptions::default().with_explicit_nulls(true);
        let array = arrow::array::StructArray::from(rows.clone());
        let field = Arc::new(Field::new_struct(
            "record",
            rows.schema().fields().clone(),
            false,
        ));
        let mut encoder = arrow::json::writer::make_encoder(&field, &array, &options)?;
        let mut text = Vec::with_capacity(rows.num_rows() * 64);
        let mut offsets = Vec::with_capacity(rows.num_rows() + 1);
        offsets.push(0);
        for row in 0..rows.num_rows() {
            encoder.encode(row, &mut text);
            offsets.push(
                i32::try_from(text.len())
                    .context("a batch's quarantined records exceed 2 GiB of JSON")?,
            );
        }
        Ok(JsonRecords { text, offsets })
    }

    /// The records with every secret value redacted
    /// ([`crate::secrets::redact`]).
    fn redacted(self) -> Result<JsonRecords> {
        let mut text = Vec::with_capacity(self.text.len());
        let mut offsets = Vec::with_capacity(self.offsets.len());
        offsets.push(0);
        for i in 0..self.len() {
            let row = String::from_utf8_lossy(self.get(i));
            text.extend_from_slice(crate::secrets::redact(&row).as_bytes());
            offsets.push(
                i32::try_from(text.len())
                    .context("a batch's quarantined records exceed 2 GiB of JSON")?,
            );
        }
        Ok(JsonRecords { text, offsets })
    }

    fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    /// Row `i`'s object.
    fn get(&self, i: usize) -> &[u8] {
        &self.text[self.offsets[i] as usize..self.offsets[i + 1] as usize]
    }

    /// The objects as a string column, without copying them.
    ///
    /// # Errors
    /// Text that is not UTF-8 (arrow's JSON encoder writes UTF-8).
    fn into_column(self) -> Result<StringArray> {
        Ok(StringArray::try_new(
            arrow::buffer::OffsetBuffer::new(self.offsets.into()),
            arrow::buffer::Buffer::from_vec(self.text),
            None,
        )?)
    }
}

/// Bytes of rows a Parquet quarantine buffers before it closes a row
/// group (16 MiB): quarantined rows carry their whole record as JSON, so
/// Parquet's default of 1M rows per row group would hold hundreds of MB
/// on a bad day.
pub const ROW_GROUP_BYTES: usize = 16 << 20;

/// What a quarantine file's thread does with the chunks it is given:
/// JSON Lines text is appended, Parquet batches are encoded.
trait Encoder: Send + 'static {
    /// One piece of the file, built on the writer's thread.
    type Chunk: Send + 'static;

    fn write(&mut self, chunk: Self::Chunk) -> Result<()>;

    /// Writes what is buffered and the file's end (Parquet's footer).
    fn close(self) -> Result<()>;
}

/// A JSON Lines quarantine file: its bytes go to the kernel's writeback
/// as they accumulate, so the epoch's fsync has little left to wait for
/// (on a day with half of 3M rows rejected, six fsyncs of about 87 MB
/// each held the run's writer thread about 0.3 s).
type TextFile = BufWriter<Writeback>;

impl Encoder for TextFile {
    type Chunk = Vec<u8>;

    fn write(&mut self, text: Vec<u8>) -> Result<()> {
        Ok(self.write_all(&text)?)
    }

    fn close(mut self) -> Result<()> {
        Ok(self.flush()?)
    }
}

impl Encoder for ArrowWriter<Writeback> {
    type Chunk = RecordBatch;

    fn write(&mut self, batch: RecordBatch) -> Result<()> {
        ArrowWriter::write(self, &batch)?;
        if self.memory_size() > ROW_GROUP_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    fn close(self) -> Result<()> {
        ArrowWriter::close(self)?;
        Ok(())
    }
}

/// Chunks waiting for the file thread at most; a writer that gets ahead
/// waits, so memory stays bounded.
const QUEUED_CHUNKS: usize = 4;

/// An open quarantine file, encoded and written on a thread of its own,
/// which takes chunks of type `C`.
///
/// On a bad day the quarantine is a run's heaviest output (each rejected
/// row with its reason and its record as JSON). Encoded on the run's
/// writer thread, after the sink, it made that one thread the longest of
/// a run with half its rows rejected (the quarantine's Parquet encoding
/// was about 80% of that thread's time); on its own thread it overlaps
/// with the sink and the workers. On 2 cores, where such a run is bound
/// by all threads' CPU, the thread alone measured 0.97× the wall time; it
/// is the serial part that more cores would wait on. One thread per open
/// file: per epoch in `weir run`, per micro-batch with rejected rows in
/// `weir serve`.
struct FileThread<C> {
    chunks: Option<SyncSender<C>>,
    thread: Option<JoinHandle<Result<()>>>,
}

impl<C: Send + 'static> FileThread<C> {
    /// Starts the thread that hands every chunk to `encoder`, writing
    /// `path` (named in errors).
    fn start<E: Encoder<Chunk = C>>(mut encoder: E, path: &Path) -> Result<FileThread<C>> {
        let (chunks, received) = std::sync::mpsc::sync_channel::<C>(QUEUED_CHUNKS);
        let name = path.display().to_string();
        let thread = std::thread::Builder::new()
            .name("weir-quarantine".into())
            .spawn(move || -> Result<()> {
                let written = (|| -> Result<()> {
                    for chunk in received {
                        encoder.write(chunk)?;
                    }
                    encoder.close()
                })();
                written.with_context(|| format!("writing {name}"))
            })
            .context("starting the quarantine's file thread")?;
        Ok(FileThread {
            chunks: Some(chunks),
            thread: Some(thread),
        })
    }
}

impl<C> FileThread<C> {
    fn send(&mut self, chunk: C) -> Result<()> {
        let sent = self.chunks.as_ref().is_some_and(|c| c.send(chunk).is_ok());
        if !sent {
            // The thread stopped at an error: that error is the answer.
            self.finish()?;
            bail!("the quarantine's file thread has stopped");
        }
        Ok(())
    }

    /// Waits until every chunk is written and the file closed.
    ///
    /// # Errors
    /// The first error the file thread met.
    fn finish(&mut self) -> Result<()> {
        self.chunks = None;
        match self.thread.take() {
            Some(thread) => thread
                .join()
                .map_err(|_| anyhow!("the quarantine's file thread panicked"))?,
            None => Ok(()),
        }
    }
}

impl<C> Drop for FileThread<C> {
    fn drop(&mut self) {
        // Its error, if any, was the caller's to take with `finish`.
        let _ = self.finish();
    }
}

/// The open file of a quarantine, in its format.
enum Output {
    Jsonl(FileThread<Vec<u8>>),
    Parquet(FileThread<RecordBatch>),
}

impl Output {
    fn open(format: QuarantineFormat, path: &Path) -> Result<Output> {
        let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        Ok(match format {
            QuarantineFormat::Jsonl => Output::Jsonl(FileThread::start(
                BufWriter::new(Writeback::new(file)?),
                path,
            )?),
            QuarantineFormat::Parquet => {
                // The reason columns repeat within a failed call and are
                // dictionary-encoded; the record (and a message that names
                // the value) is unique per row, where building a dictionary
                // costs a hash and a compare per row for nothing. No
                // min/max statistics: they cost a byte comparison per value
                // of every column (about 5% of a run with half its rows
                // quarantined) and a quarantine is read whole, not pruned.
                // Snappy, as the sink's default: JSON compresses well.
                let mut properties = WriterProperties::builder()
                    .set_compression(Compression::SNAPPY)
                    .set_statistics_enabled(EnabledStatistics::None);
                for column in ["record", "message"] {
                    properties =
                        properties.set_column_dictionary_enabled(ColumnPath::from(column), false);
                }
                let writer = ArrowWriter::try_new_with_options(
                    Writeback::new(file)?,
                    parquet_batch_schema(),
                    ArrowWriterOptions::new()
                        .with_properties(properties.build())
                        .with_skip_arrow_metadata(true),
                )?;
                Output::Parquet(FileThread::start(writer, path)?)
            }
        })
    }

    /// Waits until the file is written and closed.
    ///
    /// # Errors
    /// The first error its thread met.
    fn finish(mut self) -> Result<()> {
        match &mut self {
            Output::Jsonl(thread) => thread.finish(),
            Output::Parquet(thread) => thread.finish(),
        }
    }
}

/// An open quarantine sink.
pub struct Quarantine {
    format: QuarantineFormat,
    final_path: PathBuf,
    staging: PathBuf,
    run_id: Arc<str>,
    writer: Option<Output>,
    rows: u64,
    committed: bool,
    /// Under the checkpoint protocol: the current epoch's directory, its
    /// file and the rows written before it.
    epoch: Option<OpenEpoch>,
    /// A JSON Lines quarantine under the checkpoint protocol: the one file
    /// its epochs append to ([`Quarantine::append_across_epochs`]).
    appended: Option<Appended>,
}

/// The epoch a checkpointed quarantine is writing.
struct OpenEpoch {
    /// The epoch's directory (`epoch-N/quarantine.prepared/`).
    dir: PathBuf,
    /// The file its rows go to: a part in `dir`, or the run's appended file.
    path: PathBuf,
    /// Rows written before the epoch began.
    rows_before: u64,
}

/// The one file a checkpointed JSON Lines quarantine's epochs append to.
///
/// Concatenating per-epoch parts at publish copied every byte once more
/// and fsynced it all again: on a day with half of 3M rows rejected,
/// 522 MB, about 0.5 s of a 1.5 s run (`copy_file_range` 0.25 s, `fsync`
/// 0.27 s). Appended, the bytes are written and fsynced once, epoch by
/// epoch, and publishing is a hard link. Each epoch records the byte range
/// it appended ([`ByteRange`], a part of its own directory), so recovery
/// cuts whatever an epoch the checkpoint never recorded appended.
struct Appended {
    /// `quarantine.jsonl` in the checkpoint directory.
    path: PathBuf,
    /// Bytes the epochs so far committed: where the next epoch starts.
    committed: u64,
}

/// The byte range of the appended file one epoch wrote, recorded as that
/// epoch's part ([`RANGE_PART`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct ByteRange {
    /// First byte.
    start: u64,
    /// One past the last byte.
    end: u64,
}

/// File name of an epoch's [`ByteRange`] part.
const RANGE_PART: &str = "part.jsonl.range";

/// File name of the appended file in the checkpoint directory.
const APPENDED_FILE: &str = "quarantine.jsonl";

impl Quarantine {
    /// Prepares the quarantine at `config.path` (relative to `base_dir`).
    ///
    /// # Errors
    /// When the staging file cannot be created.
    pub fn create(config: &QuarantineConfig, base_dir: &Path, run_id: &str) -> Result<Quarantine> {
        let mut quarantine = Quarantine::for_epochs(config, base_dir, run_id);
        if let Some(parent) = quarantine.staging.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        quarantine.writer = Some(Output::open(config.format, &quarantine.staging)?);
        Ok(quarantine)
    }

    /// A quarantine for a checkpointed run: nothing is opened until
    /// [`Quarantine::begin_epoch`].
    pub fn for_epochs(config: &QuarantineConfig, base_dir: &Path, run_id: &str) -> Quarantine {
        let final_path = base_dir.join(&config.path);
        let name = final_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let staging = final_path.with_file_name(format!(".{name}.weir-{run_id}.tmp"));
        Quarantine {
            format: config.format,
            final_path,
            staging,
            run_id: Arc::from(run_id),
            writer: None,
            rows: 0,
            committed: false,
            epoch: None,
            appended: None,
        }
    }

    /// Makes a JSON Lines quarantine of a checkpointed run append every
    /// epoch to one file in `checkpoint_dir` instead of writing a part per
    /// epoch (see [`Appended`]); `committed` is the quarantine's parts of
    /// the epochs already committed ([`crate::checkpoint::run::RunState::committed_parts`]),
    /// empty for a fresh run. A Parquet quarantine, or a run resumed from
    /// per-epoch parts of an earlier weir, keeps writing parts.
    ///
    /// # Errors
    /// A committed range cannot be read, or the appended file holds fewer
    /// bytes than its committed epochs (it was truncated by hand).
    pub fn append_across_epochs(
        &mut self,
        checkpoint_dir: &Path,
        committed: &[(PathBuf, Vec<OutputFile>)],
    ) -> Result<()> {
        if self.format != QuarantineFormat::Jsonl {
            return Ok(());
        }
        let mut end = 0;
        for (dir, parts) in committed {
            for part in parts {
                if part.path != Path::new(RANGE_PART) {
                    return Ok(());
                }
                end = read_range(&dir.join(&part.path))?.end;
            }
        }
        let path = checkpoint_dir.join(APPENDED_FILE);
        let held = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if held < end {
            bail!(
                "{} holds {held} bytes but the quarantine's committed epochs wrote {end}: the checkpoint cannot be resumed (start again with --restart)",
                path.display()
            );
        }
        self.appended = Some(Appended {
            path,
            committed: end,
        });
        Ok(())
    }

    /// Publishes a checkpointed run: the epochs' files (`parts`, in epoch
    /// order) concatenated into the staging file and moved into place,
    /// replacing the previous run's. `rows` is the total they hold.
    ///
    /// # Errors
    /// A missing part or an I/O error.
    fn publish_parts(mut self, parts: &[PathBuf], rows: u64) -> Result<PathBuf> {
        self.writer = None;
        let _ = std::fs::remove_file(&self.staging);
        if let Some(parent) = self.staging.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        if parts.is_empty() {
            self.writer = Some(Output::open(self.format, &self.staging)?);
            return self.commit();
        }
        let format = match self.format {
            QuarantineFormat::Jsonl => crate::config::SinkFormat::Jsonl,
            QuarantineFormat::Parquet => crate::config::SinkFormat::Parquet,
        };
        crate::sink::concat::concat(format, parts, &self.staging)?;
        self.rows = rows;
        self.move_into_place()
    }

    /// Publishes a checkpointed run whose epochs appended `ranges` (in
    /// epoch order) to `appended`: the file, cut to their end, is linked
    /// (or, across file systems, copied) to the staging name and moved into
    /// place. The appended file stays until the checkpoint directory is
    /// removed, so a publish a crash interrupted is done again the same way.
    ///
    /// # Errors
    /// Ranges that do not follow each other from byte 0, a file shorter
    /// than their end, or an I/O error.
    fn publish_appended(
        mut self,
        appended: &Path,
        ranges: &[ByteRange],
        rows: u64,
    ) -> Result<PathBuf> {
        let mut end = 0;
        for range in ranges {
            if range.start != end || range.end < range.start {
                bail!(
                    "the quarantine's epochs recorded byte ranges that do not follow each other ({}..{} after ..{end}) in {}",
                    range.start,
                    range.end,
                    appended.display()
                );
            }
            end = range.end;
        }
        let held = std::fs::metadata(appended)
            .with_context(|| format!("reading {}", appended.display()))?
            .len();
        if held < end {
            bail!(
                "{} holds {held} bytes but the quarantine's epochs wrote {end}",
                appended.display()
            );
        }
        if held > end {
            let file = std::fs::OpenOptions::new().write(true).open(appended)?;
            file.set_len(end)?;
            file.sync_all()?;
        }
        self.writer = None;
        let _ = std::fs::remove_file(&self.staging);
        if let Some(parent) = self.staging.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        if std::fs::hard_link(appended, &self.staging).is_err() {
            // Another file system: one copy, as the parts' concatenation.
            std::fs::copy(appended, &self.staging).with_context(|| {
                format!(
                    "copying {} to {}",
                    appended.display(),
                    self.staging.display()
                )
            })?;
            crate::durable::fsync_file(&self.staging)?;
        }
        self.rows = rows;
        self.move_into_place()
    }

    /// Final path of the quarantine file.
    pub fn path(&self) -> &Path {
        &self.final_path
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Writes `rows`, whose row `i` was rejected for `reasons[i]`, read from
    /// `source_file`.
    ///
    /// # Errors
    /// An I/O error, or `reasons.len() != rows.num_rows()`.
    pub fn write(
        &mut self,
        rows: &RecordBatch,
        reasons: &[Reason],
        source_file: &str,
    ) -> Result<()> {
        anyhow::ensure!(
            reasons.len() == rows.num_rows(),
            "one reason per quarantined row"
        );
        if reasons.is_empty() {
            return Ok(());
        }
        let mut messages = stored_messages(reasons);
        let mut records = JsonRecords::encode(rows)?;
        if crate::secrets::any_known() {
            // A plugin may echo a secret into its message or a record.
            for message in &mut messages {
                if let Cow::Owned(redacted) = crate::secrets::redact(message) {
                    *message = Cow::Owned(redacted);
                }
            }
            records = records.redacted()?;
        }
        let (run_id, output) = (
            &self.run_id,
            self.writer.as_mut().expect("open until commit"),
        );
        match output {
            Output::Jsonl(thread) => {
                // Each line is the record, the message and a head of about
                // 200 bytes (run id, file, stage, plugin, its SHA-256, kind,
                // rule and the keys): one allocation in the common case.
                let mut text = Vec::with_capacity(
                    records.text.len()
                        + messages.iter().map(|m| m.len()).sum::<usize>()
                        + 256 * reasons.len(),
                );
                write_jsonl(&mut text, run_id, source_file, reasons, &messages, &records)?;
                thread.send(text)?;
            }
            Output::Parquet(thread) => {
                let n = reasons.len();
                let shared = |f: &dyn Fn(&'_ Reason) -> Option<&'_ str>| -> Result<ArrayRef> {
                    Ok(Arc::new(shared_strings(reasons.iter().map(f))?))
                };
                let constant = |value: &str| -> Result<ArrayRef> {
                    Ok(Arc::new(shared_strings(std::iter::repeat_n(
                        Some(value),
                        n,
                    ))?))
                };
                thread.send(RecordBatch::try_new(
                    parquet_batch_schema(),
                    vec![
                        constant(run_id)?,
                        constant(source_file)?,
                        shared(&|r| Some(&r.stage))?,
                        shared(&|r| Some(&r.plugin))?,
                        shared(&|r| Some(&r.plugin_sha256))?,
                        shared(&|r| Some(&r.error_kind))?,
                        shared(&|r| r.rule.as_deref())?,
                        Arc::new(StringArray::from_iter_values(messages.iter().map(|m| &**m))),
                        Arc::new(records.into_column()?),
                    ],
                )?)?;
            }
        }
        self.rows += reasons.len() as u64;
        Ok(())
    }

    /// Closes the file and moves it into place, replacing the previous run's.
    ///
    /// # Errors
    /// An I/O error.
    pub fn commit(mut self) -> Result<PathBuf> {
        self.writer.take().expect("open until commit").finish()?;
        self.move_into_place()
    }

    /// Prepares the file for the checkpoint protocol: closes and fsyncs it
    /// under its staging name and returns `(staged, final)`, for the caller
    /// to record and then rename.
    ///
    /// # Errors
    /// An I/O error; the staged file is then removed.
    pub fn prepare(mut self) -> Result<(PathBuf, PathBuf)> {
        self.writer.take().expect("open until commit").finish()?;
        crate::durable::fsync_file(&self.staging)?;
        self.committed = true;
        Ok((self.staging.clone(), self.final_path.clone()))
    }

    /// Moves the finished staging file over the final path (replacing the
    /// previous run's).
    fn move_into_place(mut self) -> Result<PathBuf> {
        crate::sink::replace(
            &self.staging,
            &self.final_path,
            WriteMode::Overwrite,
            &self.run_id,
        )?;
        self.committed = true;
        Ok(self.final_path.clone())
    }

    /// The format it writes.
    pub fn format(&self) -> QuarantineFormat {
        self.format
    }
}

/// Writes one JSON Lines quarantine row per reason, field by field in the
/// schema's order, with the record embedded as the object arrow's JSON
/// writer produced (no parse and re-encode). The fields that rows of one
/// failed call share are encoded once per run of equal reasons.
fn write_jsonl(
    out: &mut impl Write,
    run_id: &str,
    source_file: &str,
    reasons: &[Reason],
    messages: &[Cow<'_, str>],
    records: &JsonRecords,
) -> Result<()> {
    let mut head = Vec::new();
    let mut head_of: Option<&Reason> = None;
    for (i, (reason, message)) in reasons.iter().zip(messages).enumerate() {
        let same = head_of.is_some_and(|h| {
            Arc::ptr_eq(&h.stage, &reason.stage)
                && Arc::ptr_eq(&h.plugin, &reason.plugin)
                && Arc::ptr_eq(&h.plugin_sha256, &reason.plugin_sha256)
                && h.error_kind == reason.error_kind
        });
        if !same {
            head.clear();
            head.extend_from_slice(b"{\"run_id\":");
            serde_json::to_writer(&mut head, run_id)?;
            head.extend_from_slice(b",\"source_file\":");
            serde_json::to_writer(&mut head, source_file)?;
            head.extend_from_slice(b",\"stage\":");
            serde_json::to_writer(&mut head, &*reason.stage)?;
            head.extend_from_slice(b",\"plugin\":");
            serde_json::to_writer(&mut head, &*reason.plugin)?;
            head.extend_from_slice(b",\"plugin_sha256\":");
            serde_json::to_writer(&mut head, &*reason.plugin_sha256)?;
            head.extend_from_slice(b",\"error_kind\":");
            serde_json::to_writer(&mut head, &*reason.error_kind)?;
            head_of = Some(reason);
        }
        out.write_all(&head)?;
        out.write_all(b",\"rule\":")?;
        serde_json::to_writer(&mut *out, &reason.rule.as_deref())?;
        out.write_all(b",\"message\":")?;
        serde_json::to_writer(&mut *out, &**message)?;
        out.write_all(b",\"record\":")?;
        out.write_all(records.get(i))?;
        out.write_all(b"}\n")?;
    }
    Ok(())
}

/// The [`ByteRange`] recorded at `path`.
///
/// # Errors
/// The file is missing or is not a range.
fn read_range(path: &Path) -> Result<ByteRange> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not a quarantine byte range", path.display()))
}

/// File name of the quarantine's part in an epoch's directory.
fn epoch_part(format: QuarantineFormat) -> &'static str {
    match format {
        QuarantineFormat::Jsonl => "part.jsonl",
        QuarantineFormat::Parquet => "part.parquet",
    }
}

impl crate::sink::EpochSink for Quarantine {
    fn connector(&self) -> &'static str {
        "quarantine"
    }

    fn begin_epoch(&mut self, dir: &Path) -> Result<()> {
        let path = match &self.appended {
            Some(appended) => {
                // Cuts what an epoch that was never committed appended
                // (before a crash, or an epoch that failed to prepare).
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(&appended.path)
                    .with_context(|| format!("opening {}", appended.path.display()))?;
                file.set_len(appended.committed)
                    .with_context(|| format!("truncating {}", appended.path.display()))?;
                let mut file = file;
                std::io::Seek::seek(&mut file, std::io::SeekFrom::End(0))?;
                self.writer = Some(Output::Jsonl(FileThread::start(
                    BufWriter::new(Writeback::new(file)?),
                    &appended.path,
                )?));
                appended.path.clone()
            }
            None => {
                let path = dir.join(epoch_part(self.format));
                self.writer = Some(Output::open(self.format, &path)?);
                path
            }
        };
        self.epoch = Some(OpenEpoch {
            dir: dir.to_path_buf(),
            path,
            rows_before: self.rows,
        });
        Ok(())
    }

    fn accept_rejected(&mut self, rejected: &crate::sink::SinkRejected) -> Result<bool> {
        self.write(&rejected.rows, &rejected.reasons, &rejected.source)?;
        Ok(true)
    }

    fn prepare_epoch(
        &mut self,
        _epoch: &crate::sink::EpochContext,
    ) -> Result<crate::sink::Prepared> {
        let epoch = self
            .epoch
            .take()
            .context("prepare_epoch without begin_epoch")?;
        self.writer
            .take()
            .context("prepare_epoch without begin_epoch")?
            .finish()?;
        crate::durable::fsync_file(&epoch.path)?;
        let part = match &mut self.appended {
            Some(appended) => {
                let end = std::fs::metadata(&appended.path)
                    .with_context(|| format!("reading {}", appended.path.display()))?
                    .len();
                let range = ByteRange {
                    start: appended.committed,
                    end,
                };
                let range_path = epoch.dir.join(RANGE_PART);
                std::fs::write(&range_path, serde_json::to_vec(&range)?)
                    .with_context(|| format!("writing {}", range_path.display()))?;
                crate::durable::fsync_file(&range_path)?;
                // The next epoch begins only once this one is committed.
                appended.committed = end;
                RANGE_PART
            }
            None => epoch_part(self.format),
        };
        Ok(crate::sink::Prepared {
            parts: vec![OutputFile {
                path: PathBuf::from(part),
                rows: self.rows - epoch.rows_before,
            }],
            rejected: Vec::new(),
        })
    }

    fn publish(
        mut self: Box<Self>,
        epochs: &[(PathBuf, Vec<OutputFile>)],
        _replace_own_output: bool,
    ) -> Result<Vec<OutputFile>> {
        if let Some(appended) = self.appended.take() {
            let ranges = epochs
                .iter()
                .flat_map(|(dir, parts)| parts.iter().map(move |p| dir.join(&p.path)))
                .map(|path| read_range(&path))
                .collect::<Result<Vec<_>>>()?;
            let rows = epochs
                .iter()
                .flat_map(|(_, parts)| parts)
                .map(|p| p.rows)
                .sum();
            let path = self.publish_appended(&appended.path, &ranges, rows)?;
            return Ok(vec![OutputFile { path, rows }]);
        }
        // Epochs without rejected rows add nothing.
        let parts: Vec<PathBuf> = epochs
            .iter()
            .flat_map(|(dir, parts)| {
                parts
                    .iter()
                    .filter(|p| p.rows > 0)
                    .map(move |p| dir.join(&p.path))
            })
            .collect();
        let rows = epochs
            .iter()
            .flat_map(|(_, parts)| parts)
            .map(|p| p.rows)
            .sum();
        let path = self.publish_parts(&parts, rows)?;
        Ok(vec![OutputFile { path, rows }])
    }
}

impl Drop for Quarantine {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.staging);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, Float64Array, Int64Array};

    fn reason(stage: &Arc<str>, rule: Option<&str>, message: &str) -> Reason {
        Reason {
            stage: stage.clone(),
            plugin: Arc::from("builtin:check"),
            plugin_sha256: Arc::from("ab".repeat(32)),
            error_kind: "validation".into(),
            rule: rule.map(Arc::from),
            message: message.into(),
        }
    }

    /// A shared-strings column reads back row by row as given: nulls,
    /// strings short enough to sit in their view, a long string shared by
    /// consecutive rows, and equal text in separate allocations.
    #[test]
    fn shared_strings_read_back_as_given() {
        let long: Arc<str> = Arc::from("f".repeat(64));
        let other_copy: Arc<str> = Arc::from("f".repeat(64));
        let short: Arc<str> = Arc::from("check");
        let rows: Vec<Option<&str>> = vec![
            Some(&long),
            Some(&long),
            None,
            Some(&short),
            Some(&other_copy),
            Some(&long),
            Some(""),
            None,
        ];
        let column = shared_strings(rows.iter().copied()).unwrap();
        assert_eq!(column.len(), rows.len());
        let read: Vec<Option<&str>> = column.iter().collect();
        assert_eq!(read, rows);
        assert_eq!(column.null_count(), 2);
        assert_eq!(
            column.data_buffers()[0].len(),
            3 * 64,
            "a run of one allocation is stored once"
        );
        let all_present = shared_strings(std::iter::repeat_n(Some(&*long), 5)).unwrap();
        assert!(all_present.nulls().is_none());
        assert_eq!(all_present.data_buffers()[0].len(), 64);
    }

    /// A checkpointed JSON Lines quarantine appends its epochs to one
    /// file: an epoch that was begun and written but never committed (a
    /// crash) is cut when the run resumes, and the published file holds
    /// each committed row once, in epoch order.
    #[test]
    fn appended_epochs_publish_once_and_cut_what_was_never_committed() {
        use crate::sink::{EpochContext, EpochSink};
        let dir = tempfile::tempdir().unwrap();
        let checkpoint_dir = dir.path().join("checkpoint");
        std::fs::create_dir_all(&checkpoint_dir).unwrap();
        let config = QuarantineConfig {
            format: QuarantineFormat::Jsonl,
            path: "q.jsonl".into(),
        };
        let rows = |ids: &[i64]| {
            RecordBatch::try_from_iter([(
                "id",
                Arc::new(Int64Array::from(ids.to_vec())) as ArrayRef,
            )])
            .unwrap()
        };
        let stage: Arc<str> = Arc::from("check");
        let reasons = |n: usize| vec![reason(&stage, Some("r"), "bad"); n];
        let context = |epoch| EpochContext {
            epoch,
            position: crate::position::Position::default(),
        };
        // What the coordinator does: prepare, then rename the prepared
        // directory to its committed name.
        let run_epoch = |quarantine: &mut Quarantine, epoch: u64, ids: &[i64]| {
            let prepared = checkpoint_dir.join(format!("epoch-{epoch}/quarantine.prepared"));
            std::fs::create_dir_all(&prepared).unwrap();
            quarantine.begin_epoch(&prepared).unwrap();
            quarantine
                .write(&rows(ids), &reasons(ids.len()), "in.csv")
                .unwrap();
            let parts = quarantine.prepare_epoch(&context(epoch)).unwrap().parts;
            let committed = checkpoint_dir.join(format!("epoch-{epoch}/quarantine"));
            std::fs::rename(&prepared, &committed).unwrap();
            (committed, parts)
        };

        let mut first = Quarantine::for_epochs(&config, dir.path(), "run");
        first.append_across_epochs(&checkpoint_dir, &[]).unwrap();
        let mut committed = vec![run_epoch(&mut first, 1, &[1, 2])];
        assert_eq!(committed[0].1[0].path, Path::new(RANGE_PART));
        // Epoch 2 appends rows, then the process dies before it prepares.
        let prepared = checkpoint_dir.join("epoch-2/quarantine.prepared");
        std::fs::create_dir_all(&prepared).unwrap();
        first.begin_epoch(&prepared).unwrap();
        first
            .write(&rows(&[3, 4, 5]), &reasons(3), "in.csv")
            .unwrap();
        first.writer.take().unwrap().finish().unwrap();
        std::mem::forget(first);
        std::fs::remove_dir_all(checkpoint_dir.join("epoch-2")).unwrap();

        let mut resumed = Quarantine::for_epochs(&config, dir.path(), "run");
        resumed
            .append_across_epochs(&checkpoint_dir, &committed)
            .unwrap();
        committed.push(run_epoch(&mut resumed, 2, &[3]));
        committed.push(run_epoch(&mut resumed, 3, &[]));
        committed.push(run_epoch(&mut resumed, 4, &[4, 5]));
        let published = Box::new(resumed).publish(&committed, false).unwrap();
        assert_eq!(published[0].rows, 5);
        let ids: Vec<i64> = std::fs::read_to_string(dir.path().join("q.jsonl"))
            .unwrap()
            .lines()
            .map(|line| {
                serde_json::from_str::<serde_json::Value>(line).unwrap()["record"]["id"]
                    .as_i64()
                    .unwrap()
            })
            .collect();
        assert_eq!(ids, [1, 2, 3, 4, 5]);

        // A publish done again (a crash after it) gives the same file.
        let again = Quarantine::for_epochs(&config, dir.path(), "run");
        let mut again = again;
        again
            .append_across_epochs(&checkpoint_dir, &committed)
            .unwrap();
        Box::new(again).publish(&committed, true).unwrap();
        let lines = std::fs::read_to_string(dir.path().join("q.jsonl")).unwrap();
        assert_eq!(lines.lines().count(), 5);
    }

    /// An appended file shorter than its committed epochs (cut by hand)
    /// refuses to resume rather than lose rows silently.
    #[test]
    fn an_appended_file_shorter_than_its_committed_epochs_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let committed_dir = dir.path().join("epoch-1/quarantine");
        std::fs::create_dir_all(&committed_dir).unwrap();
        std::fs::write(
            committed_dir.join(RANGE_PART),
            serde_json::to_vec(&ByteRange { start: 0, end: 100 }).unwrap(),
        )
        .unwrap();
        std::fs::write(dir.path().join(APPENDED_FILE), b"{}\n").unwrap();
        let config = QuarantineConfig {
            format: QuarantineFormat::Jsonl,
            path: "q.jsonl".into(),
        };
        let mut quarantine = Quarantine::for_epochs(&config, dir.path(), "run");
        let committed = vec![(
            committed_dir,
            vec![OutputFile {
                path: RANGE_PART.into(),
                rows: 3,
            }],
        )];
        let error = quarantine
            .append_across_epochs(dir.path(), &committed)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("holds 3 bytes") && error.contains("wrote 100"),
            "{error}"
        );
    }

    /// Both formats hold, per row, the reason fields and the record as
    /// given: text that needs escaping, nulls, a message cut after its
    /// first whole copy.
    #[test]
    fn both_formats_round_trip_reasons_and_records() {
        let rows = RecordBatch::try_from_iter([
            (
                "text",
                Arc::new(StringArray::from(vec![
                    Some("line\nbreak \"quoted\" \\ é"),
                    None,
                    Some("{\"not\": \"nested\"}"),
                ])) as ArrayRef,
            ),
            (
                "n",
                Arc::new(Int64Array::from(vec![Some(1), Some(-2), None])) as ArrayRef,
            ),
            (
                "x",
                Arc::new(Float64Array::from(vec![0.5, -1e300, 3.0])) as ArrayRef,
            ),
        ])
        .unwrap();
        let stage: Arc<str> = Arc::from("check");
        let long = "stderr ".repeat(100);
        let reasons = vec![
            reason(&stage, Some("a,b"), "first; second"),
            reason(&stage, None, &long),
            reason(&Arc::from("other"), Some("c"), &long),
        ];
        let expected_records: Vec<serde_json::Value> = rows_as_json(&rows)
            .unwrap()
            .iter()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(expected_records[1]["text"], serde_json::Value::Null);
        for format in [QuarantineFormat::Jsonl, QuarantineFormat::Parquet] {
            let dir = tempfile::tempdir().unwrap();
            let config = QuarantineConfig {
                format,
                path: "q".into(),
            };
            let mut quarantine = Quarantine::create(&config, dir.path(), "run-1").unwrap();
            quarantine
                .write(&rows, &reasons, "in \"dir\"/a.csv")
                .unwrap();
            let path = quarantine.commit().unwrap();
            let lines: Vec<serde_json::Value> = match format {
                QuarantineFormat::Jsonl => std::fs::read_to_string(&path)
                    .unwrap()
                    .lines()
                    .map(|l| serde_json::from_str(l).unwrap())
                    .collect(),
                QuarantineFormat::Parquet => {
                    let reader = ::parquet::arrow::arrow_reader::ParquetRecordBatchReader::try_new(
                        File::open(&path).unwrap(),
                        1024,
                    )
                    .unwrap();
                    let batches: Vec<RecordBatch> = reader.map(Result::unwrap).collect();
                    let mut lines: Vec<serde_json::Value> = rows_as_json(&batches[0])
                        .unwrap()
                        .iter()
                        .map(|l| serde_json::from_str(l).unwrap())
                        .collect();
                    for line in &mut lines {
                        let record = line["record"].as_str().unwrap().to_string();
                        line["record"] = serde_json::from_str(&record).unwrap();
                    }
                    lines
                }
            };
            assert_eq!(lines.len(), 3, "{format:?}");
            for (i, line) in lines.iter().enumerate() {
                assert_eq!(line["run_id"], "run-1");
                assert_eq!(line["source_file"], "in \"dir\"/a.csv");
                assert_eq!(line["stage"], &*reasons[i].stage);
                assert_eq!(line["plugin_sha256"], "ab".repeat(32));
                assert_eq!(line["error_kind"], "validation");
                assert_eq!(line["rule"], serde_json::json!(reasons[i].rule.as_deref()));
                assert_eq!(line["record"], expected_records[i], "{format:?} row {i}");
            }
            assert_eq!(lines[0]["message"], "first; second");
            assert_eq!(lines[1]["message"], long.as_str());
            let cut = lines[2]["message"].as_str().unwrap();
            assert!(
                cut.len() < long.len() && cut.contains("1 rows above"),
                "{cut}"
            );
        }
    }
}
