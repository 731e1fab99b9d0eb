//! A quarantine file being written: encoded and written on a thread of
//! its own, chunk by chunk, in its format.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::SyncSender;
use std::thread::JoinHandle;

use anyhow::{Context, Result, anyhow, bail};
use arrow::array::{Array, ArrayRef};
use arrow::datatypes::SchemaRef;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_writer::{
    ArrowColumnWriter, ArrowRowGroupWriterFactory, ArrowWriterOptions, compute_leaves,
};
use parquet::basic::Compression;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::writer::SerializedFileWriter;

use crate::config::QuarantineFormat;
use crate::durable::Writeback;

use super::Reasons;
use super::encode::{JsonRecords, stored_messages, write_jsonl};
use super::runs::{REASON_COLUMNS, ReasonRuns};
use super::schema;

/// Bytes of rows a Parquet quarantine buffers before it closes a row
/// group (16 MiB): quarantined rows carry their whole record as JSON, so
/// Parquet's default of 1M rows per row group would hold hundreds of MB
/// on a bad day.
pub const ROW_GROUP_BYTES: usize = 16 << 20;

/// Bytes of encoded values at which a Parquet quarantine closes a data
/// page (128 KiB; parquet-rs' default is 1 MiB). Each page's value buffer
/// grows by doubling and its Snappy output is allocated anew, so 1 MiB
/// pages went to fresh memory above glibc's `mmap` threshold, page by
/// page: a run with half its 3M rows quarantined took 106k page faults,
/// against 22k with 128 KiB pages, which stay in reused heap memory (0.89×
/// the wall time, 11 pairs; the file 0.6% larger, as Snappy works on 64
/// KiB blocks anyway). The sink keeps the default: its pages of numbers
/// measured no faster so.
const PAGE_BYTES: usize = 128 << 10;

/// What a quarantine file's thread does with the chunks it is given:
/// JSON Lines text is appended, Parquet batches are encoded.
pub(super) trait Encoder: Send + 'static {
    /// One piece of the file, built on the writer's thread.
    type Chunk: Send + 'static;

    fn write(&mut self, chunk: Self::Chunk) -> Result<()>;

    /// Writes what is buffered and the file's end (Parquet's footer).
    fn close(self) -> Result<()>;
}

/// A JSON Lines quarantine's rows on their way to the file: each row's
/// reason and its record as JSON. The lines are assembled on the file's
/// thread, which also drops the reasons: on the run's writer thread, the
/// longest of a run with half its 3M rows quarantined, assembling them
/// (and, before [`Reasons`] were column-wise, dropping six reference
/// counts a row) took about a sixth of its time, while the file thread
/// only wrote.
pub(super) struct JsonlRows {
    pub(super) reasons: Reasons,
    pub(super) records: JsonRecords,
    pub(super) run_id: Arc<str>,
    pub(super) source_file: Arc<str>,
    /// Whether secrets are known, whose values are cut from the messages
    /// ([`crate::secrets::redact`]; the records come redacted).
    pub(super) redact: bool,
}

/// A JSON Lines quarantine file: its bytes go to the kernel's writeback
/// as they accumulate, so the epoch's fsync has little left to wait for
/// (on a day with half of 3M rows rejected, six fsyncs of about 87 MB
/// each held the run's writer thread about 0.3 s).
struct TextFile {
    out: BufWriter<Writeback>,
    /// The last batch's lines, cleared for the next: a batch's lines are
    /// megabytes (8,192 rows of about 350 bytes), and a new buffer each
    /// time, above glibc's `mmap` threshold, had every page faulted in
    /// anew (about 40k page faults in a run with half its 3M rows
    /// quarantined).
    lines: Vec<u8>,
}

impl Encoder for TextFile {
    type Chunk = JsonlRows;

    fn write(&mut self, rows: JsonlRows) -> Result<()> {
        let JsonlRows {
            reasons,
            records,
            run_id,
            source_file,
            redact,
        } = rows;
        let messages = stored_messages(&reasons, redact);
        // Each line is the record, the message, the reason's strings and
        // about 120 bytes of keys and quotes: sized from them, the buffer
        // grows at most once. (Estimated at 256 bytes a row besides the
        // record and message, it fell short by a few bytes a row and
        // doubled at the end of every batch, copying megabytes into fresh
        // pages.)
        let per_row = 128 + run_id.len() + source_file.len();
        let needed = records.text.len()
            + messages.iter().map(|m| per_row + m.len()).sum::<usize>()
            + reasons
                .causes()
                .map(|(c, rows)| {
                    rows as usize
                        * (c.stage.len()
                            + c.plugin.len()
                            + c.plugin_sha256.len()
                            + c.error_kind.len()
                            + c.rule.as_deref().map_or(4, str::len))
                })
                .sum::<usize>();
        self.lines.clear();
        if self.lines.capacity() < needed {
            // Replaced rather than grown, which would copy the old
            // capacity; room for a batch 1/8 larger.
            self.lines = Vec::with_capacity(needed + needed / 8);
        }
        write_jsonl(
            &mut self.lines,
            &run_id,
            &source_file,
            &reasons,
            &messages,
            &records,
        )?;
        Ok(self.out.write_all(&self.lines)?)
    }

    fn close(mut self) -> Result<()> {
        Ok(self.out.flush()?)
    }
}

/// A Parquet quarantine's rows on their way to the file: the reason
/// columns as runs ([`ReasonRuns`]), `message` and `record` as string
/// columns of as many rows.
pub(super) struct ParquetRows {
    pub(super) reasons: ReasonRuns,
    pub(super) messages: ArrayRef,
    pub(super) records: ArrayRef,
}

/// A Parquet quarantine file: `message` and `record` encoded by
/// parquet-rs' column writers as rows come, the reason columns written
/// from their runs when the row group closes ([`super::runs`]).
struct ParquetFile {
    /// [`schema`], whose `message` and `record` fields the column writers
    /// take.
    schema: SchemaRef,
    file: SerializedFileWriter<Writeback>,
    columns: ArrowRowGroupWriterFactory,
    row_groups: usize,
    open: Option<OpenRowGroup>,
}

/// The row group being written.
struct OpenRowGroup {
    reasons: ReasonRuns,
    message: ArrowColumnWriter,
    record: ArrowColumnWriter,
}

impl ParquetFile {
    fn new(file: File) -> Result<ParquetFile> {
        // The record (and a message that names the value) is unique per
        // row, where building a dictionary costs a hash and a compare per
        // row for nothing. No min/max statistics: they cost a byte
        // comparison per value of every column (about 5% of a run with
        // half its rows quarantined) and a quarantine is read whole, not
        // pruned. Snappy, as the sink's default: JSON compresses well.
        let properties = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_statistics_enabled(EnabledStatistics::None)
            .set_dictionary_enabled(false)
            .set_data_page_size_limit(PAGE_BYTES)
            .build();
        let schema = schema();
        let (file, columns) = ArrowWriter::try_new_with_options(
            Writeback::new(file)?,
            schema.clone(),
            ArrowWriterOptions::new()
                .with_properties(properties)
                .with_skip_arrow_metadata(true),
        )?
        .into_serialized_writer()?;
        Ok(ParquetFile {
            schema,
            file,
            columns,
            row_groups: 0,
            open: None,
        })
    }

    /// Writes the open row group: the reason columns from their runs, then
    /// `message` and `record` as encoded.
    fn flush(&mut self) -> Result<()> {
        let Some(open) = self.open.take() else {
            return Ok(());
        };
        let descriptors: Vec<_> = (0..REASON_COLUMNS)
            .map(|i| self.file.schema_descr().column(i))
            .collect();
        let message = open.message.close()?;
        let record = open.record.close()?;
        let mut row_group = self.file.next_row_group()?;
        for (i, descr) in descriptors.into_iter().enumerate() {
            let (bytes, close) = open.reasons.column_chunk(i, descr)?;
            row_group.append_column(&bytes, close)?;
        }
        message.append_to_row_group(&mut row_group)?;
        record.append_to_row_group(&mut row_group)?;
        row_group.close()?;
        self.row_groups += 1;
        Ok(())
    }
}

impl Encoder for ParquetFile {
    type Chunk = ParquetRows;

    fn write(&mut self, rows: ParquetRows) -> Result<()> {
        anyhow::ensure!(
            rows.messages.len() as u64 == rows.reasons.rows()
                && rows.records.len() == rows.messages.len(),
            "quarantine rows: {} reasons, {} messages, {} records",
            rows.reasons.rows(),
            rows.messages.len(),
            rows.records.len()
        );
        let open = match &mut self.open {
            Some(open) => open,
            None => {
                let mut writers = self.columns.create_column_writers(self.row_groups)?;
                let record = writers
                    .pop()
                    .context("a quarantine schema without `record`")?;
                let message = writers
                    .pop()
                    .context("a quarantine schema without `message`")?;
                self.open.insert(OpenRowGroup {
                    reasons: ReasonRuns::default(),
                    message,
                    record,
                })
            }
        };
        for (writer, (field, column)) in [&mut open.message, &mut open.record].into_iter().zip([
            (self.schema.field(REASON_COLUMNS), &rows.messages),
            (self.schema.field(REASON_COLUMNS + 1), &rows.records),
        ]) {
            for leaf in compute_leaves(field, column)? {
                writer.write(&leaf)?;
            }
        }
        open.reasons.extend(rows.reasons);
        let max_rows = self
            .file
            .properties()
            .max_row_group_row_count()
            .unwrap_or(usize::MAX) as u64;
        if open.message.memory_size() + open.record.memory_size() > ROW_GROUP_BYTES
            || open.reasons.rows() >= max_rows
        {
            self.flush()?;
        }
        Ok(())
    }

    fn close(mut self) -> Result<()> {
        self.flush()?;
        self.file.close()?;
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
pub(super) struct FileThread<C> {
    chunks: Option<SyncSender<C>>,
    thread: Option<JoinHandle<Result<()>>>,
}

impl<C: Send + 'static> FileThread<C> {
    /// Starts the thread that hands every chunk to `encoder`, writing
    /// `path` (named in errors).
    pub(super) fn start<E: Encoder<Chunk = C>>(
        mut encoder: E,
        path: &Path,
    ) -> Result<FileThread<C>> {
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
    pub(super) fn send(&mut self, chunk: C) -> Result<()> {
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
    pub(super) fn finish(&mut self) -> Result<()> {
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
pub(super) enum Output {
    Jsonl(FileThread<JsonlRows>),
    Parquet(FileThread<ParquetRows>),
}

impl Output {
    pub(super) fn open(format: QuarantineFormat, path: &Path) -> Result<Output> {
        let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        Ok(match format {
            QuarantineFormat::Jsonl => Output::jsonl(file, path)?,
            QuarantineFormat::Parquet => {
                Output::Parquet(FileThread::start(ParquetFile::new(file)?, path)?)
            }
        })
    }

    /// A JSON Lines quarantine writing `file` (at `path`, named in
    /// errors) from where it stands.
    pub(super) fn jsonl(file: File, path: &Path) -> Result<Output> {
        let text = TextFile {
            out: BufWriter::new(Writeback::new(file)?),
            lines: Vec::new(),
        };
        Ok(Output::Jsonl(FileThread::start(text, path)?))
    }

    /// Waits until the file is written and closed.
    ///
    /// # Errors
    /// The first error its thread met.
    pub(super) fn finish(mut self) -> Result<()> {
        match &mut self {
            Output::Jsonl(thread) => thread.finish(),
            Output::Parquet(thread) => thread.finish(),
        }
    }
}
