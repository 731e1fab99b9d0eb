//! The checkpoint protocol for `weir run`: a run killed at any point and
//! started again with the same command resumes where its last checkpoint
//! left it, and publishes exactly the output of an uninterrupted run.
//!
//! State lives in the **checkpoint directory** beside the sink's path
//! (`.NAME.weir-checkpoint/` for a sink at `NAME`):
//!
//! ```text
//! checkpoint.json            the last checkpoint (write_atomic; checksummed)
//! epoch-000001/sink/…        committed parts of epoch 1 (as the sink lays them out)
//! epoch-000001/quarantine.jsonl
//! epoch-000002/sink.prepared/…   parts of epoch 2, prepared, not yet committed
//! ```
//!
//! Each epoch's output goes to `epoch-N/sink.prepared/` and
//! `epoch-N/quarantine.prepared.EXT`; when the epoch ends (after
//! [`EpochSettings::every_batches`] batches or [`EpochSettings::interval`],
//! whichever comes first) the files are fsynced (prepare), the checkpoint
//! is rewritten naming epoch N, the source position after it and every
//! part so far, and the two prepared names are renamed to `sink/` and
//! `quarantine.EXT` (commit). Nothing is visible at the sink's path until
//! the run ends: then the checkpoint says `publishing`, the epochs' parts
//! are concatenated into the final files ([`crate::sink::Sink::publish`]),
//! moved into place, and the checkpoint directory is removed.
//!
//! Recovery ([`RunState::begin`]) reads `checkpoint.json`, finishes the
//! commit of every recorded epoch (renaming what is still `prepared`),
//! removes epochs past the checkpoint (prepared but never recorded: rolled
//! back, their input is read again), and resumes the source from the
//! recorded position: the file index and the number of batches already
//! read from it (batches are cut the same way on every read of unchanged
//! input, which the recorded SHA-256 of every input file guarantees).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::config::{QuarantineFormat, SinkConfig};
use crate::quarantine::Quarantine;
use crate::sink::{OutputFile, Sink};

/// Version of the checkpoint file's layout; a checkpoint of another
/// version is refused with instructions, never guessed at.
pub const FORMAT: u32 = 1;

pub use crate::config::{CHECKPOINT_FILE, DEFAULT_EPOCH_BATCHES, DEFAULT_EPOCH_INTERVAL_MS};

/// When an epoch ends.
#[derive(Debug, Clone, Copy)]
pub struct EpochSettings {
    /// Batches per epoch (default [`DEFAULT_EPOCH_BATCHES`]).
    pub every_batches: usize,
    /// Longest epoch (default [`DEFAULT_EPOCH_INTERVAL_MS`]).
    pub interval: Duration,
}

/// What must be unchanged for a checkpoint to be resumed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The weir version that wrote it.
    pub weir_version: String,
    /// The pipeline file, as given.
    pub pipeline_file: PathBuf,
    /// SHA-256 of the pipeline file's bytes.
    pub pipeline_sha256: String,
    /// `(stage name, plugin SHA-256)` in stage order.
    pub stages: Vec<(String, String)>,
    /// Every input file in reading order.
    pub inputs: Vec<InputIdentity>,
}

/// One input file of a checkpointed run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputIdentity {
    /// Its path.
    pub path: PathBuf,
    /// Its size, in bytes.
    pub bytes: u64,
    /// SHA-256 of its contents.
    pub sha256: String,
}

impl Identity {
    /// Hashes the pipeline file and every input file (`inputs`).
    ///
    /// # Errors
    /// A file that cannot be read.
    pub fn compute(
        pipeline_file: &Path,
        stages: Vec<(String, String)>,
        inputs: &[PathBuf],
    ) -> Result<Identity> {
        Ok(Identity {
            weir_version: env!("CARGO_PKG_VERSION").to_string(),
            pipeline_file: pipeline_file.to_path_buf(),
            pipeline_sha256: super::sha256_file(pipeline_file)?,
            stages,
            inputs: inputs
                .iter()
                .map(|path| {
                    Ok(InputIdentity {
                        path: path.clone(),
                        bytes: path.metadata()?.len(),
                        sha256: super::sha256_file(path)?,
                    })
                })
                .collect::<Result<_>>()?,
        })
    }

    /// What differs between the recorded identity (`self`) and `now`, one
    /// phrase each.
    fn differences(&self, now: &Identity) -> Vec<String> {
        let mut out = Vec::new();
        if self.weir_version != now.weir_version {
            out.push(format!(
                "it was written by weir {}, this is weir {}",
                self.weir_version, now.weir_version
            ));
        }
        if self.pipeline_sha256 != now.pipeline_sha256 {
            out.push(format!(
                "the pipeline file {} changed since",
                now.pipeline_file.display()
            ));
        }
        if self.stages != now.stages {
            let changed: Vec<String> = now
                .stages
                .iter()
                .filter(|stage| !self.stages.contains(stage))
                .map(|(name, _)| format!("`{name}`"))
                .collect();
            out.push(format!(
                "the stages' plugins changed ({})",
                if changed.is_empty() {
                    "stages removed".to_string()
                } else {
                    changed.join(", ")
                }
            ));
        }
        for (then, now_input) in self.inputs.iter().zip(&now.inputs) {
            if then != now_input {
                out.push(format!(
                    "input file {} changed under its recorded position (was {} bytes, sha256 {}; now {} bytes, sha256 {})",
                    now_input.path.display(),
                    then.bytes,
                    &then.sha256[..12.min(then.sha256.len())],
                    now_input.bytes,
                    &now_input.sha256[..12.min(now_input.sha256.len())]
                ));
            }
        }
        if self.inputs.len() != now.inputs.len()
            || self
                .inputs
                .iter()
                .zip(&now.inputs)
                .any(|(a, b)| a.path != b.path)
        {
            out.push(format!(
                "the source's files changed: {} recorded, {} now",
                self.inputs.len(),
                now.inputs.len()
            ));
        }
        out
    }
}

/// Where the source stands: the next item comes from file `file` (an index
/// into the source's files) after its first `items` items (batches or
/// rejected-record groups), which held `records` records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// Index of the file being read.
    pub file: usize,
    /// Items of that file already consumed.
    pub items: u64,
    /// Records of that file already consumed.
    pub records: u64,
}

/// One committed epoch's parts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpochRecord {
    /// The epoch number (1, 2, …).
    pub epoch: u64,
    /// The sink's parts, relative to `epoch-N/sink/`, with their rows.
    pub sink: Vec<PartRecord>,
    /// Rows in `epoch-N/quarantine.EXT`.
    pub quarantine_rows: u64,
}

/// One file an epoch prepared.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartRecord {
    /// Path relative to the epoch's sink directory.
    pub path: PathBuf,
    /// Rows in it.
    pub rows: u64,
}

/// Where a checkpointed run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Reading and committing epochs.
    Running,
    /// Every epoch committed; moving the output into place.
    Publishing,
    /// The output is in place; the checkpoint directory is being removed.
    Published,
}

/// Record totals at a checkpoint.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Totals {
    /// Records read.
    pub read: u64,
    /// Records written to the sink.
    pub written: u64,
    /// Records quarantined.
    pub quarantined: u64,
}

/// The contents of `checkpoint.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Checkpoint {
    /// [`FORMAT`].
    pub format: u32,
    /// What must be unchanged to resume.
    pub identity: Identity,
    /// The run's id, kept across resumes (it is in every quarantine row).
    pub run_id: String,
    /// When the run first started, RFC 3339.
    pub started_at: String,
    /// The last recorded epoch (0: none yet).
    pub epoch: u64,
    /// Running or publishing.
    pub phase: Phase,
    /// The source position after `epoch`.
    pub position: Position,
    /// Totals after `epoch`.
    pub totals: Totals,
    /// Every recorded epoch, in order.
    pub epochs: Vec<EpochRecord>,
    /// When this checkpoint was written, RFC 3339.
    pub written_at: String,
}

/// How a checkpointed run began.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Recovery {
    /// The epoch resumed after (`None`: a fresh run).
    pub resumed_after_epoch: Option<u64>,
    /// Where the source resumed.
    pub position: Position,
    /// Epochs whose commit recovery finished.
    pub commits_finished: u64,
    /// Epochs prepared past the checkpoint, removed (their input is read
    /// again).
    pub epochs_rolled_back: u64,
    /// Time spent recovering, in milliseconds.
    pub recovery_ms: u64,
}

/// The state of a checkpointed run: its directory and last checkpoint.
#[derive(Debug)]
pub struct RunState {
    dir: PathBuf,
    checkpoint: Checkpoint,
    /// How the run began.
    pub recovery: Recovery,
}

/// The checkpoint directory of a sink ([`SinkConfig::checkpoint_dir`]).
pub fn dir_for(sink: &SinkConfig, base_dir: &Path) -> PathBuf {
    sink.checkpoint_dir(base_dir)
}

fn epoch_name(epoch: u64) -> String {
    format!("epoch-{epoch:06}")
}

fn quarantine_ext(format: QuarantineFormat) -> &'static str {
    match format {
        QuarantineFormat::Jsonl => "jsonl",
        QuarantineFormat::Parquet => "parquet",
    }
}

fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// Renames `from` to `to` unless `to` already exists (an idempotent commit
/// step). Returns whether it renamed.
///
/// # Errors
/// Neither exists (the outcome cannot be known), or an I/O error.
fn commit_rename(from: &Path, to: &Path) -> Result<bool> {
    if to.exists() {
        return Ok(false);
    }
    if !from.exists() {
        bail!(
            "neither {} nor {} exists: a recorded part is gone",
            from.display(),
            to.display()
        );
    }
    std::fs::rename(from, to)
        .with_context(|| format!("renaming {} to {}", from.display(), to.display()))?;
    Ok(true)
}

impl RunState {
    /// Opens the checkpoint directory `dir` for a run of `identity`:
    /// recovers and resumes the checkpoint there if any, else (or with
    /// `restart`) starts afresh with `run_id`, writing the first
    /// checkpoint (epoch 0).
    ///
    /// # Errors
    /// A checkpoint that fails its checksum, of another format, or of
    /// another identity (another pipeline file, changed plugins or input
    /// files), or a committed part that is gone: each names the directory
    /// and what to do, and nothing is changed.
    pub fn begin(
        dir: &Path,
        identity: Identity,
        restart: bool,
        run_id: &str,
        started_at: &str,
    ) -> Result<RunState> {
        let started = Instant::now();
        let file = dir.join(CHECKPOINT_FILE);
        if restart && dir.exists() {
            std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        let recorded = super::read_verified(&file).map_err(|e| {
            anyhow::anyhow!(
                "{e:#}. Remove {} (or run with --restart) to start this run over",
                dir.display()
            )
        })?;
        let Some(bytes) = recorded else {
            // No checkpoint: a fresh run. Anything here was prepared by a
            // run that crashed before its first checkpoint.
            if dir.exists() {
                std::fs::remove_dir_all(dir)
                    .with_context(|| format!("removing {}", dir.display()))?;
            }
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            let mut state = RunState {
                dir: dir.to_path_buf(),
                checkpoint: Checkpoint {
                    format: FORMAT,
                    identity,
                    run_id: run_id.to_string(),
                    started_at: started_at.to_string(),
                    epoch: 0,
                    phase: Phase::Running,
                    position: Position::default(),
                    totals: Totals::default(),
                    epochs: Vec::new(),
                    written_at: now(),
                },
                recovery: Recovery::default(),
            };
            state.write()?;
            if let Some(parent) = dir.parent() {
                super::fsync_dir(parent)?;
            }
            return Ok(state);
        };
        let restart_hint = format!(
            "Nothing was changed. To start the run over, discarding its checkpoint, run `weir run --restart {}`; to resume it, restore what changed",
            identity.pipeline_file.display()
        );
        let format = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v.get("format").and_then(|f| f.as_u64()));
        if format != Some(u64::from(FORMAT)) {
            bail!(
                "{} is a checkpoint of format {}, this weir reads format {FORMAT}. {restart_hint}",
                file.display(),
                format.map_or("unknown".to_string(), |f| f.to_string())
            );
        }
        let checkpoint: Checkpoint = serde_json::from_slice(&bytes)
            .with_context(|| format!("reading {}. {restart_hint}", file.display()))?;
        let differences = checkpoint.identity.differences(&identity);
        if !differences.is_empty() {
            bail!(
                "cannot resume the interrupted run recorded in {}: {}. {restart_hint}",
                file.display(),
                differences.join("; ")
            );
        }
        let mut recovery = Recovery {
            resumed_after_epoch: Some(checkpoint.epoch),
            position: checkpoint.position,
            ..Recovery::default()
        };
        let state = RunState {
            dir: dir.to_path_buf(),
            checkpoint,
            recovery: Recovery::default(),
        };
        if state.checkpoint.phase == Phase::Published {
            // Killed while removing the checkpoint of a published run: the
            // run only has to finish that.
            return Ok(RunState { recovery, ..state });
        }
        // Roll back epochs past the checkpoint; finish recorded commits.
        for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(epoch) = name
                .strip_prefix("epoch-")
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            if epoch > state.checkpoint.epoch {
                std::fs::remove_dir_all(entry.path())
                    .with_context(|| format!("removing {}", entry.path().display()))?;
                recovery.epochs_rolled_back += 1;
            }
        }
        for record in &state.checkpoint.epochs {
            let finished = state.commit_epoch(record.epoch).map_err(|e| {
                anyhow::anyhow!(
                    "{e:#}: the checkpoint directory {} was edited by hand, and the run cannot be finished from it. {restart_hint}",
                    dir.display()
                )
            })?;
            if finished {
                recovery.commits_finished += 1;
            }
            for part in &record.sink {
                let path = state.sink_dir(record.epoch).join(&part.path);
                if !path.is_file() {
                    bail!(
                        "{} is recorded in {} but is gone: the checkpoint directory was edited by hand. {restart_hint}",
                        path.display(),
                        file.display()
                    );
                }
            }
        }
        super::fsync_dir(dir)?;
        recovery.recovery_ms = started.elapsed().as_millis() as u64;
        tracing::info!(
            dir = %dir.display(),
            epoch = state.checkpoint.epoch,
            commits_finished = recovery.commits_finished,
            rolled_back = recovery.epochs_rolled_back,
            "resuming an interrupted run from its checkpoint"
        );
        Ok(RunState { recovery, ..state })
    }

    /// The run's id (the first start's, on resume).
    pub fn run_id(&self) -> &str {
        &self.checkpoint.run_id
    }

    /// When the run first started, RFC 3339.
    pub fn started_at(&self) -> &str {
        &self.checkpoint.started_at
    }

    /// The last checkpoint.
    pub fn checkpoint(&self) -> &Checkpoint {
        &self.checkpoint
    }

    /// The checkpoint directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn write(&mut self) -> Result<()> {
        self.checkpoint.written_at = now();
        let bytes = serde_json::to_vec_pretty(&self.checkpoint)?;
        super::write_atomic(&self.dir.join(CHECKPOINT_FILE), &bytes)
    }

    fn epoch_dir(&self, epoch: u64) -> PathBuf {
        self.dir.join(epoch_name(epoch))
    }

    fn sink_dir(&self, epoch: u64) -> PathBuf {
        self.epoch_dir(epoch).join("sink")
    }

    fn prepared_sink_dir(&self, epoch: u64) -> PathBuf {
        self.epoch_dir(epoch).join("sink.prepared")
    }

    fn quarantine_file(&self, epoch: u64, format: QuarantineFormat) -> PathBuf {
        self.epoch_dir(epoch)
            .join(format!("quarantine.{}", quarantine_ext(format)))
    }

    fn prepared_quarantine_file(&self, epoch: u64, format: QuarantineFormat) -> PathBuf {
        self.epoch_dir(epoch)
            .join(format!("quarantine.prepared.{}", quarantine_ext(format)))
    }

    /// Commits epoch `epoch`: renames its prepared sink directory and
    /// quarantine file to their committed names. Idempotent; returns
    /// whether anything was left to rename.
    fn commit_epoch(&self, epoch: u64) -> Result<bool> {
        let mut renamed = false;
        let dir = self.epoch_dir(epoch);
        if !dir.exists() {
            bail!("epoch directory {} is gone", dir.display());
        }
        let prepared = self.prepared_sink_dir(epoch);
        if prepared.exists() || !self.sink_dir(epoch).exists() {
            renamed |= commit_rename(&prepared, &self.sink_dir(epoch))?;
        }
        crate::crash::point("mid-commit-rename");
        for format in [QuarantineFormat::Jsonl, QuarantineFormat::Parquet] {
            let prepared = self.prepared_quarantine_file(epoch, format);
            if prepared.exists() {
                renamed |= commit_rename(&prepared, &self.quarantine_file(epoch, format))?;
            }
        }
        if renamed {
            super::fsync_dir(&dir)?;
        }
        Ok(renamed)
    }

    /// The parts of every committed epoch: each epoch's sink directory with
    /// its parts, and the quarantine files holding rows, in epoch order.
    fn committed_parts(
        &self,
        format: QuarantineFormat,
    ) -> (Vec<(PathBuf, Vec<OutputFile>)>, Vec<PathBuf>) {
        let sink = self
            .checkpoint
            .epochs
            .iter()
            .map(|record| {
                (
                    self.sink_dir(record.epoch),
                    record
                        .sink
                        .iter()
                        .map(|p| OutputFile {
                            path: p.path.clone(),
                            rows: p.rows,
                        })
                        .collect(),
                )
            })
            .collect();
        let quarantine = self
            .checkpoint
            .epochs
            .iter()
            .filter(|record| record.quarantine_rows > 0)
            .map(|record| self.quarantine_file(record.epoch, format))
            .collect();
        (sink, quarantine)
    }

    /// Removes the checkpoint directory of a published run: the epochs
    /// first, the checkpoint (which says `published`) last, so that a crash
    /// in between leaves a checkpoint the next start recognises.
    fn remove_published(self) {
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for entry in entries.flatten() {
                if entry.file_name() != CHECKPOINT_FILE {
                    let _ = std::fs::remove_dir_all(entry.path())
                        .or_else(|_| std::fs::remove_file(entry.path()));
                }
            }
        }
        if let Err(error) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), %error, "could not remove the checkpoint directory");
        }
    }

    /// Removes the checkpoint directory of a run that failed and
    /// committed nothing.
    pub fn remove(self) {
        // The checkpoint goes first: a crash while the rest is being
        // removed then leaves a directory without one, which the next
        // start clears as a fresh run's leftovers, instead of a checkpoint
        // whose epochs are half gone.
        let removed = std::fs::remove_file(self.dir.join(CHECKPOINT_FILE))
            .map_err(anyhow::Error::from)
            .and_then(|()| super::fsync_dir(&self.dir));
        if let Err(error) = removed {
            tracing::warn!(dir = %self.dir.display(), error = format!("{error:#}"), "could not remove the checkpoint");
        }
        if let Err(error) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), %error, "could not remove the checkpoint directory");
        }
    }
}

/// What a checkpointed run did, for the run report.
#[derive(Debug, Clone, Serialize)]
pub struct CheckpointReport {
    /// The checkpoint directory (removed once the run is published).
    pub dir: PathBuf,
    /// Epochs committed over the whole run (resumes included).
    pub epochs: u64,
    /// The source position after the last epoch.
    pub position: Position,
    /// How the run began: fresh, or resumed after which epoch.
    pub recovery: Recovery,
    /// Time spent preparing, recording and committing epochs in this
    /// process, in milliseconds.
    pub commit_ms: u64,
    /// Longest time from an epoch's last batch to its commit, in ms.
    pub max_commit_lag_ms: u64,
}

/// Drives epochs during a run: tracks the source position as batches are
/// written, ends an epoch when it is due (prepare, checkpoint, commit,
/// acknowledge) and publishes at the end.
pub struct Coordinator {
    state: RunState,
    settings: EpochSettings,
    quarantine_format: QuarantineFormat,
    file_index: HashMap<Arc<str>, usize>,
    position: Position,
    epoch: u64,
    batches_in_epoch: usize,
    epoch_started: Instant,
    quarantine_rows_at_epoch_start: u64,
    commit_time: Duration,
    max_commit_lag: Duration,
    /// Called with each committed epoch and the source position after it,
    /// once the epoch's sink and quarantine parts are committed: where a
    /// source that must be told (a message queue) is acknowledged.
    acknowledge: Option<Box<dyn FnMut(u64, Position) + Send>>,
}

impl Coordinator {
    /// Calls `hook` with each epoch and the source position after it once
    /// the epoch is committed, never before (the acknowledgement step of
    /// the protocol; a file source needs none).
    pub fn on_acknowledge(&mut self, hook: impl FnMut(u64, Position) + Send + 'static) {
        self.acknowledge = Some(Box::new(hook));
    }

    /// A coordinator continuing `state`, for a source reading `files` (in
    /// order) and a quarantine of `quarantine_format`.
    pub fn new(
        state: RunState,
        settings: EpochSettings,
        files: &[PathBuf],
        quarantine_format: QuarantineFormat,
    ) -> Coordinator {
        let file_index = files
            .iter()
            .enumerate()
            .map(|(i, path)| (Arc::from(path.display().to_string()), i))
            .collect();
        Coordinator {
            position: state.checkpoint.position,
            epoch: state.checkpoint.epoch,
            state,
            settings,
            quarantine_format,
            file_index,
            batches_in_epoch: 0,
            epoch_started: Instant::now(),
            quarantine_rows_at_epoch_start: 0,
            commit_time: Duration::ZERO,
            max_commit_lag: Duration::ZERO,
            acknowledge: None,
        }
    }

    /// The state it drives.
    pub fn state(&self) -> &RunState {
        &self.state
    }

    /// Totals recorded by the checkpoint the run resumed from (zero for a
    /// fresh run).
    pub fn resumed_totals(&self) -> Totals {
        self.state.checkpoint.totals
    }

    /// Opens the next epoch: the sink and the quarantine write under its
    /// prepared names from now on.
    ///
    /// # Errors
    /// The epoch's directory or quarantine file cannot be created.
    pub fn begin_epoch(&mut self, sink: &mut Sink, quarantine: &mut Quarantine) -> Result<()> {
        let epoch = self.epoch + 1;
        let dir = self.state.epoch_dir(epoch);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        sink.begin_epoch(self.state.prepared_sink_dir(epoch));
        quarantine.begin_epoch(
            &self
                .state
                .prepared_quarantine_file(epoch, self.quarantine_format),
        )?;
        self.batches_in_epoch = 0;
        self.epoch_started = Instant::now();
        self.quarantine_rows_at_epoch_start = quarantine.rows();
        Ok(())
    }

    /// Notes that the next item, read from `file`, was written (`totals`
    /// are the run's totals after it), and ends the epoch if it is due.
    ///
    /// # Errors
    /// Ending the epoch failed (see [`Coordinator::end_epoch`]).
    pub fn after_item(
        &mut self,
        file: &Arc<str>,
        records: u64,
        totals: Totals,
        sink: &mut Sink,
        quarantine: &mut Quarantine,
    ) -> Result<()> {
        let index = self
            .file_index
            .get(file)
            .copied()
            .unwrap_or(self.position.file);
        if index != self.position.file {
            self.position = Position {
                file: index,
                items: 0,
                records: 0,
            };
        }
        self.position.items += 1;
        self.position.records += records;
        self.batches_in_epoch += 1;
        if self.batches_in_epoch >= self.settings.every_batches
            || self.epoch_started.elapsed() >= self.settings.interval
        {
            self.end_epoch(totals, sink, quarantine)?;
            self.begin_epoch(sink, quarantine)?;
        }
        Ok(())
    }

    /// Ends the current epoch: prepare (the sink's and quarantine's files
    /// finished and fsynced), checkpoint (the epoch, the source position
    /// and every part recorded durably), commit (prepared names renamed
    /// to committed ones), then acknowledge the sources (nothing to do for
    /// files, whose position is the acknowledgement). An epoch that read
    /// nothing is dropped.
    ///
    /// # Errors
    /// An I/O error at any step; what is recorded stays recoverable.
    pub fn end_epoch(
        &mut self,
        totals: Totals,
        sink: &mut Sink,
        quarantine: &mut Quarantine,
    ) -> Result<()> {
        let started = Instant::now();
        let epoch = self.epoch + 1;
        let parts = sink.prepare_epoch()?;
        let quarantine_file = self
            .state
            .prepared_quarantine_file(epoch, self.quarantine_format);
        quarantine.prepare_epoch(&quarantine_file)?;
        if self.batches_in_epoch == 0 {
            std::fs::remove_dir_all(self.state.epoch_dir(epoch))?;
            return Ok(());
        }
        // An epoch whose rows were all quarantined or filtered has no sink
        // part: it still gets its (empty) directory before it is recorded,
        // so that every recorded epoch has one to commit.
        let prepared = self.state.prepared_sink_dir(epoch);
        std::fs::create_dir_all(&prepared)
            .with_context(|| format!("creating {}", prepared.display()))?;
        super::fsync_dir(&prepared)?;
        super::fsync_dir(&self.state.epoch_dir(epoch))?;
        crate::crash::point("after-part-fsync");
        let checkpoint = &mut self.state.checkpoint;
        checkpoint.epochs.push(EpochRecord {
            epoch,
            sink: parts
                .into_iter()
                .map(|p| PartRecord {
                    path: p.path,
                    rows: p.rows,
                })
                .collect(),
            quarantine_rows: quarantine.rows() - self.quarantine_rows_at_epoch_start,
        });
        checkpoint.epoch = epoch;
        checkpoint.position = self.position;
        checkpoint.totals = totals;
        self.state.write()?;
        self.state.commit_epoch(epoch)?;
        crate::crash::point("after-commit");
        // Acknowledge: a file source's position is in the checkpoint.
        if let Some(acknowledge) = self.acknowledge.as_mut() {
            acknowledge(epoch, self.position);
        }
        crate::crash::point("after-ack");
        self.epoch = epoch;
        let spent = started.elapsed();
        self.commit_time += spent;
        self.max_commit_lag = self.max_commit_lag.max(spent);
        tracing::debug!(epoch, ?spent, "epoch committed");
        Ok(())
    }

    /// Ends the last epoch and publishes the run: the checkpoint says
    /// `publishing`, every epoch's parts are concatenated into the sink's
    /// and the quarantine's final files and moved into place, and the
    /// checkpoint directory is removed. Returns the sink's files and the
    /// quarantine's path.
    ///
    /// # Errors
    /// An I/O error; the checkpoint then still says `publishing` and the
    /// next start finishes the publish.
    pub fn publish(
        mut self,
        totals: Totals,
        mut sink: Sink,
        mut quarantine: Quarantine,
        publish_sink: bool,
    ) -> Result<(Vec<OutputFile>, PathBuf, CheckpointReport)> {
        // A publish that a crash interrupted may have put this run's
        // output in place already: replacing it is then allowed.
        let resumed_publish = self.state.checkpoint.phase == Phase::Publishing;
        if !resumed_publish {
            self.end_epoch(totals, &mut sink, &mut quarantine)?;
            self.state.checkpoint.phase = Phase::Publishing;
            self.state.write()?;
        }
        let (sink_parts, quarantine_parts) = self.state.committed_parts(self.quarantine_format);
        let quarantine_rows = self
            .state
            .checkpoint
            .epochs
            .iter()
            .map(|r| r.quarantine_rows)
            .sum();
        let outputs = if publish_sink {
            sink.publish(&sink_parts, resumed_publish)?
        } else {
            drop(sink);
            Vec::new()
        };
        let quarantine_path = quarantine.publish(&quarantine_parts, quarantine_rows)?;
        crate::crash::point("after-publish");
        self.state.checkpoint.phase = Phase::Published;
        self.state.write()?;
        let report = CheckpointReport {
            dir: self.state.dir.clone(),
            epochs: self.state.checkpoint.epoch,
            position: self.state.checkpoint.position,
            recovery: self.state.recovery.clone(),
            commit_ms: self.commit_time.as_millis() as u64,
            max_commit_lag_ms: self.max_commit_lag.as_millis() as u64,
        };
        self.state.remove_published();
        Ok((outputs, quarantine_path, report))
    }

    /// Finishes a run killed after it was published (while its checkpoint
    /// was being removed): removes the rest and returns the account.
    pub fn finish_published(self) -> CheckpointReport {
        let report = CheckpointReport {
            dir: self.state.dir.clone(),
            epochs: self.state.checkpoint.epoch,
            position: self.state.checkpoint.position,
            recovery: self.state.recovery.clone(),
            commit_ms: 0,
            max_commit_lag_ms: 0,
        };
        self.state.remove_published();
        report
    }

    /// Gives up the run after a fatal error: nothing is committed, and the
    /// checkpoint directory is removed so the next start runs afresh (as
    /// an uninterrupted run that failed would).
    pub fn abandon(self) {
        self.state.remove();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{QuarantineConfig, SinkFormat, WriteMode};
    use arrow::array::{ArrayRef, Int64Array};
    use arrow::record_batch::RecordBatch;

    /// No source is acknowledged before every sink of its epoch has
    /// committed: at each acknowledgement, the epoch's sink parts and
    /// quarantine file are under their committed names, none is still
    /// prepared, and the checkpoint already records the epoch.
    #[test]
    fn a_source_is_acknowledged_only_after_every_sink_of_its_epoch_committed() {
        let dir = tempfile::tempdir().unwrap();
        let sink_config = SinkConfig {
            format: SinkFormat::Parquet,
            path: "out".into(),
            partition_by: vec!["k".into()],
            compression: "snappy".into(),
            mode: WriteMode::ErrorIfExists,
            lineage_column: None,
        };
        let quarantine_config = QuarantineConfig {
            format: QuarantineFormat::Jsonl,
            path: "quarantine.jsonl".into(),
        };
        let input = dir.path().join("input.csv");
        std::fs::write(&input, "k\n1\n").unwrap();
        let pipeline_file = dir.path().join("pipeline.toml");
        std::fs::write(&pipeline_file, "").unwrap();
        let identity =
            Identity::compute(&pipeline_file, Vec::new(), std::slice::from_ref(&input)).unwrap();
        let state_dir = dir_for(&sink_config, dir.path());
        let state = RunState::begin(&state_dir, identity, false, "run", "now").unwrap();
        let mut coordinator = Coordinator::new(
            state,
            EpochSettings {
                every_batches: 2,
                interval: Duration::from_secs(3600),
            },
            std::slice::from_ref(&input),
            QuarantineFormat::Jsonl,
        );
        let acknowledged = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = acknowledged.clone();
        let checked_dir = state_dir.clone();
        coordinator.on_acknowledge(move |epoch, position| {
            let epoch_dir = checked_dir.join(epoch_name(epoch));
            assert!(
                epoch_dir.join("sink/k=1").is_dir(),
                "the sink part is committed"
            );
            assert!(
                !epoch_dir.join("sink.prepared").exists(),
                "nothing left prepared"
            );
            assert!(
                epoch_dir.join("quarantine.jsonl").is_file(),
                "the quarantine is committed"
            );
            assert!(!epoch_dir.join("quarantine.prepared.jsonl").exists());
            let recorded: Checkpoint = serde_json::from_slice(
                &crate::checkpoint::read_verified(&checked_dir.join(CHECKPOINT_FILE))
                    .unwrap()
                    .unwrap(),
            )
            .unwrap();
            assert_eq!(
                recorded.epoch, epoch,
                "the checkpoint records the epoch first"
            );
            assert_eq!(recorded.position, position);
            seen.lock().unwrap().push(epoch);
        });
        let mut sink = Sink::create(&sink_config, dir.path(), "run").unwrap();
        let mut quarantine = Quarantine::for_epochs(&quarantine_config, dir.path(), "run");
        coordinator.begin_epoch(&mut sink, &mut quarantine).unwrap();
        let file: Arc<str> = Arc::from(input.display().to_string());
        let batch = RecordBatch::try_from_iter([
            ("k", Arc::new(Int64Array::from(vec![1, 1])) as ArrayRef),
            ("v", Arc::new(Int64Array::from(vec![7, 8])) as ArrayRef),
        ])
        .unwrap();
        let mut totals = Totals::default();
        for _ in 0..4 {
            sink.write(&batch).unwrap();
            totals.read += 2;
            totals.written += 2;
            coordinator
                .after_item(&file, 2, totals, &mut sink, &mut quarantine)
                .unwrap();
        }
        assert_eq!(*acknowledged.lock().unwrap(), vec![1, 2]);
        let (outputs, _, report) = coordinator.publish(totals, sink, quarantine, true).unwrap();
        assert_eq!(outputs.iter().map(|o| o.rows).sum::<u64>(), 8);
        assert_eq!(report.epochs, 2);
        assert!(!state_dir.exists(), "the checkpoint directory is removed");
    }
}
