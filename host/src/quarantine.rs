//! The quarantine (dead-letter) sink: every rejected row, with why.
//!
//! Rows rejected at any stage share one schema, whatever the stage's input
//! looked like ([`schema`]): reason columns plus the original row as a JSON
//! object. In JSON Lines `record` is a nested object; in Parquet it is JSON
//! text. Like [`crate::sink::Sink`], the file appears only on commit.
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

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use arrow::array::{ArrayRef, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;

use crate::config::{QuarantineConfig, QuarantineFormat, WriteMode};
use crate::sink::OutputFile;

pub use crate::reason::Reason;

/// Longest message repeated on every row of a failed batch, in bytes. A
/// longer one (a trap with the plugin's stderr) is stored whole on the
/// first row that has it and cut on the others, which say where the whole
/// text is: a plugin's stderr is not copied into each of 8,192 rows.
pub const MAX_REPEATED_MESSAGE_BYTES: usize = 256;

/// The message stored for each of `reasons`' rows (see
/// [`MAX_REPEATED_MESSAGE_BYTES`]).
fn stored_messages(reasons: &[Reason]) -> Vec<String> {
    let mut whole: Option<(&str, usize)> = None;
    reasons
        .iter()
        .enumerate()
        .map(|(row, reason)| {
            let message = reason.message.as_str();
            if message.len() <= MAX_REPEATED_MESSAGE_BYTES {
                return message.to_string();
            }
            match whole {
                Some((text, first)) if text == message => {
                    let cut = crate::plugin::head(message, MAX_REPEATED_MESSAGE_BYTES);
                    format!(
                        "{cut} [the whole message is on the quarantined row {} rows above, from the same failed call]",
                        row - first
                    )
                }
                _ => {
                    whole = Some((message, row));
                    message.to_string()
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

/// Each row of `rows` as a JSON object with explicit nulls.
pub fn rows_as_json(rows: &RecordBatch) -> Result<Vec<String>> {
    let mut writer = arrow::json::WriterBuilder::new()
        .with_explicit_nulls(true)
        .build::<_, arrow::json::writer::LineDelimited>(Vec::new());
    writer.write(rows)?;
    writer.finish()?;
    let text = String::from_utf8(writer.into_inner())?;
    Ok(text.lines().map(str::to_string).collect())
}

enum Writer {
    Jsonl(BufWriter<File>),
    Parquet(Box<ArrowWriter<File>>),
}

fn open_writer(format: QuarantineFormat, path: &Path) -> Result<Writer> {
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    Ok(match format {
        QuarantineFormat::Jsonl => Writer::Jsonl(BufWriter::new(file)),
        QuarantineFormat::Parquet => {
            Writer::Parquet(Box::new(ArrowWriter::try_new(file, schema(), None)?))
        }
    })
}

fn close_writer(writer: Writer) -> Result<()> {
    match writer {
        Writer::Jsonl(mut out) => out.flush()?,
        Writer::Parquet(out) => {
            out.close()?;
        }
    }
    Ok(())
}

/// An open quarantine sink.
pub struct Quarantine {
    format: QuarantineFormat,
    final_path: PathBuf,
    staging: PathBuf,
    run_id: Arc<str>,
    writer: Option<Writer>,
    rows: u64,
    committed: bool,
    /// Under the checkpoint protocol: the current epoch's file and the
    /// rows written before it.
    epoch: Option<(PathBuf, u64)>,
}

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
        quarantine.writer = Some(open_writer(config.format, &quarantine.staging)?);
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
        }
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
            self.writer = Some(open_writer(self.format, &self.staging)?);
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
        let messages = stored_messages(reasons);
        let records = rows_as_json(rows)?;
        match self.writer.as_mut().expect("open until commit") {
            Writer::Jsonl(out) => {
                for ((reason, record), message) in reasons.iter().zip(&records).zip(&messages) {
                    let line = serde_json::json!({
                        "run_id": &*self.run_id,
                        "source_file": source_file,
                        "stage": &*reason.stage,
                        "plugin": &*reason.plugin,
                        "plugin_sha256": &*reason.plugin_sha256,
                        "error_kind": reason.error_kind,
                        "rule": reason.rule,
                        "message": message,
                        "record": serde_json::from_str::<serde_json::Value>(record)?,
                    });
                    serde_json::to_writer(&mut *out, &line)?;
                    out.write_all(b"\n")?;
                }
            }
            Writer::Parquet(out) => {
                let n = reasons.len();
                let column = |f: &dyn Fn(&Reason) -> Option<String>| -> ArrayRef {
                    Arc::new(StringArray::from(reasons.iter().map(f).collect::<Vec<_>>()))
                };
                let batch = RecordBatch::try_new(
                    schema(),
                    vec![
                        Arc::new(StringArray::from(vec![&*self.run_id; n])),
                        Arc::new(StringArray::from(vec![source_file; n])),
                        column(&|r| Some(r.stage.to_string())),
                        column(&|r| Some(r.plugin.to_string())),
                        column(&|r| Some(r.plugin_sha256.to_string())),
                        column(&|r| Some(r.error_kind.clone())),
                        column(&|r| r.rule.clone()),
                        Arc::new(StringArray::from(messages)),
                        Arc::new(StringArray::from(records)),
                    ],
                )?;
                out.write(&batch)?;
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
        close_writer(self.writer.take().expect("open until commit"))?;
        self.move_into_place()
    }

    /// Prepares the file for the checkpoint protocol: closes and fsyncs it
    /// under its staging name and returns `(staged, final)`, for the caller
    /// to record and then rename.
    ///
    /// # Errors
    /// An I/O error; the staged file is then removed.
    pub fn prepare(mut self) -> Result<(PathBuf, PathBuf)> {
        close_writer(self.writer.take().expect("open until commit"))?;
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
        let path = dir.join(epoch_part(self.format));
        self.writer = Some(open_writer(self.format, &path)?);
        self.epoch = Some((path, self.rows));
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
        let (path, rows_before) = self
            .epoch
            .take()
            .context("prepare_epoch without begin_epoch")?;
        close_writer(
            self.writer
                .take()
                .context("prepare_epoch without begin_epoch")?,
        )?;
        crate::durable::fsync_file(&path)?;
        Ok(crate::sink::Prepared {
            parts: vec![OutputFile {
                path: PathBuf::from(epoch_part(self.format)),
                rows: self.rows - rows_before,
            }],
            rejected: Vec::new(),
        })
    }

    fn publish(
        self: Box<Self>,
        epochs: &[(PathBuf, Vec<OutputFile>)],
        _replace_own_output: bool,
    ) -> Result<Vec<OutputFile>> {
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
