//! The quarantine (dead-letter) sink: every rejected row, with why.
//!
//! Rows rejected at any stage share one schema, whatever the stage's input
//! looked like ([`schema`]): reason columns plus the original row as a JSON
//! object. In JSON Lines `record` is a nested object; in Parquet it is JSON
//! text (written without min/max statistics). Like [`crate::sink::Sink`],
//! the file appears only on commit; it is encoded and written on a thread
//! of its own.
//!
//! `encode` makes the rows (messages, records as JSON, JSON Lines lines),
//! `runs` writes a Parquet quarantine's reason columns from their runs of
//! equal values, `file` writes the rows on the file's thread, `epochs`
//! takes the quarantine through the checkpoint protocol.
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

mod encode;
mod epochs;
mod file;
mod runs;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use arrow::array::StringArray;
use arrow::record_batch::RecordBatch;

use crate::config::{QuarantineConfig, QuarantineFormat, WriteMode};

use encode::{JsonRecords, stored_messages};
use epochs::{Appended, OpenEpoch};
use file::{JsonlRows, Output, ParquetRows};
use runs::ReasonRuns;

pub use crate::reason::{Reason, Reasons};
pub use encode::{MAX_REPEATED_MESSAGE_BYTES, rows_as_json, schema};
pub use file::ROW_GROUP_BYTES;

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
    /// [`crate::sink::EpochSink::begin_epoch`].
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

    /// Final path of the quarantine file.
    pub fn path(&self) -> &Path {
        &self.final_path
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Writes `rows`, whose row `i` was rejected for reason `i` of
    /// `reasons`, read from `source_file`. The records become JSON here; a
    /// JSON Lines quarantine takes `reasons` to its file's thread, which
    /// assembles the lines there.
    ///
    /// # Errors
    /// An I/O error, or `reasons.len() != rows.num_rows()`.
    pub fn write(&mut self, rows: &RecordBatch, reasons: Reasons, source_file: &str) -> Result<()> {
        anyhow::ensure!(
            reasons.len() == rows.num_rows(),
            "one reason per quarantined row"
        );
        if reasons.is_empty() {
            return Ok(());
        }
        let written = reasons.len() as u64;
        let redact = crate::secrets::any_known();
        let mut records = JsonRecords::encode(rows)?;
        if redact {
            // A plugin may echo a secret into a record.
            records = records.redacted()?;
        }
        let (run_id, output) = (
            &self.run_id,
            self.writer.as_mut().expect("open until commit"),
        );
        match output {
            Output::Jsonl(thread) => thread.send(JsonlRows {
                reasons,
                records,
                run_id: run_id.clone(),
                source_file: Arc::from(source_file),
                redact,
            })?,
            Output::Parquet(thread) => {
                let messages = stored_messages(&reasons, redact);
                thread.send(ParquetRows {
                    reasons: ReasonRuns::of(&reasons, run_id, &Arc::from(source_file)),
                    messages: Arc::new(StringArray::from_iter_values(
                        messages.iter().map(|m| &**m),
                    )),
                    records: Arc::new(records.into_column()?),
                })?;
            }
        }
        self.rows += written;
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
    use std::fs::File;

    use arrow::array::{Array, ArrayRef, AsArray, Float64Array, Int64Array};

    /// A validation reason of `builtin:check` at `stage`.
    pub(super) fn reason(stage: &Arc<str>, rule: Option<&str>, message: &str) -> Reason {
        Reason {
            stage: stage.clone(),
            plugin: Arc::from("builtin:check"),
            plugin_sha256: Arc::from("ab".repeat(32)),
            error_kind: "validation".into(),
            rule: rule.map(Arc::from),
            message: message.into(),
        }
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
        let reasons = [
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
                .write(&rows, reasons.iter().cloned().collect(), "in \"dir\"/a.csv")
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

    /// The reason columns a Parquet quarantine writes from runs read back
    /// row by row as given, in each shape of their pages: long runs (RLE),
    /// rows alternating between rules and a null rule (bit-packed values
    /// and definition levels), 300 distinct stages (9-bit indices), a batch
    /// whose rules are all null, all four batches joined into one row
    /// group. (A chunk whose every row is null is
    /// `runs::tests::column_chunks_read_back_as_their_runs`'.)
    #[test]
    fn parquet_reason_runs_read_back_row_by_row() {
        let check: Arc<str> = Arc::from("check");
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("rule_a"), Arc::from("rule_b"));
        let mut batches: Vec<Vec<Reason>> = Vec::new();
        batches.push(vec![reason(&check, Some("same"), "m"); 20_000]);
        batches.push(
            (0..5_000)
                .map(|i| {
                    let mut r = reason(&check, None, "m");
                    r.rule = [Some(a.clone()), Some(b.clone()), None][i % 3].clone();
                    r
                })
                .collect(),
        );
        batches.push(
            (0..300)
                .map(|i| reason(&Arc::from(format!("stage-{i}")), Some("x"), "m"))
                .collect(),
        );
        batches.push(vec![reason(&check, None, "m"); 1_000]);
        let expected: Vec<[Option<String>; 3]> = batches
            .iter()
            .flatten()
            .map(|r| {
                [
                    Some(r.stage.to_string()),
                    r.rule.as_deref().map(str::to_string),
                    Some(r.plugin.to_string()),
                ]
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let config = QuarantineConfig {
            format: QuarantineFormat::Parquet,
            path: "q.parquet".into(),
        };
        let mut quarantine = Quarantine::create(&config, dir.path(), "run-7").unwrap();
        for (i, reasons) in batches.iter().enumerate() {
            let rows = RecordBatch::try_from_iter([(
                "n",
                Arc::new(Int64Array::from_iter_values(0..reasons.len() as i64)) as ArrayRef,
            )])
            .unwrap();
            quarantine
                .write(
                    &rows,
                    reasons.iter().cloned().collect(),
                    &format!("file-{}.csv", i % 2),
                )
                .unwrap();
        }
        let path = quarantine.commit().unwrap();
        let reader = ::parquet::arrow::arrow_reader::ParquetRecordBatchReader::try_new(
            File::open(&path).unwrap(),
            4096,
        )
        .unwrap();
        let mut row = 0;
        let mut file_of_row = Vec::new();
        for (i, reasons) in batches.iter().enumerate() {
            file_of_row.extend(std::iter::repeat_n(
                format!("file-{}.csv", i % 2),
                reasons.len(),
            ));
        }
        for batch in reader {
            let batch = batch.unwrap();
            let text = |name: &str| {
                batch
                    .column_by_name(name)
                    .unwrap()
                    .as_string::<i32>()
                    .clone()
            };
            let (run_id, file, stage, rule, plugin, sha) = (
                text("run_id"),
                text("source_file"),
                text("stage"),
                text("rule"),
                text("plugin"),
                text("plugin_sha256"),
            );
            for i in 0..batch.num_rows() {
                assert_eq!(run_id.value(i), "run-7");
                assert_eq!(file.value(i), file_of_row[row], "row {row}");
                assert_eq!(sha.value(i), "ab".repeat(32));
                assert_eq!(text("error_kind").value(i), "validation");
                let got = [
                    Some(stage.value(i).to_string()),
                    rule.is_valid(i).then(|| rule.value(i).to_string()),
                    Some(plugin.value(i).to_string()),
                ];
                assert_eq!(got, expected[row], "row {row}");
                row += 1;
            }
        }
        assert_eq!(row, expected.len());
    }
}
