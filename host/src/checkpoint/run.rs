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
//! epoch-000001/quarantine/part.parquet      (a Parquet quarantine's part)
//! epoch-000001/quarantine/part.jsonl.range  (the bytes of quarantine.jsonl it appended)
//! quarantine.jsonl           a JSON Lines quarantine, appended epoch by epoch
//! epoch-000002/sink.prepared/…   parts of epoch 2, prepared, not yet committed
//! ```
//!
//! Each connector ([`EpochSink`]: the sink, the quarantine) writes an
//! epoch's output under `epoch-N/CONNECTOR.prepared/`; when the epoch ends
//! (after [`EpochSettings::every_batches`] batches or
//! [`EpochSettings::interval`], whichever comes first) the files are
//! fsynced (prepare), the checkpoint is rewritten naming epoch N, the
//! source position after it and every part so far, and each prepared
//! directory is renamed to `epoch-N/CONNECTOR/` (commit). Nothing is
//! visible at the sink's path until the run ends: then the checkpoint says
//! `publishing`, each connector publishes the epochs' parts
//! ([`EpochSink::publish`]: the file sinks concatenate them into the final
//! files and move those into place), the checkpoint says `published`, and
//! the checkpoint directory is removed.
//!
//! Recovery ([`RunState::begin`]) reads `checkpoint.json`, finishes the
//! commit of every recorded epoch (renaming what is still `prepared`),
//! removes epochs past the checkpoint (prepared but never recorded: rolled
//! back, their input is read again), and resumes the source from the
//! recorded position: the file index and the number of batches already
//! read from it (batches are cut the same way on every read of unchanged
//! input, which the recorded SHA-256 of every input file guarantees).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::config::SinkConfig;
use crate::sink::{EpochContext, EpochSink, OutputFile};

/// Version of the checkpoint file's layout; a checkpoint of another
/// version is refused with instructions, never guessed at. Format 2
/// fingerprints input files with XXH3-128 (`xxh3`) where 1 had SHA-256.
pub const FORMAT: u32 = 2;

pub use crate::config::{CHECKPOINT_FILE, DEFAULT_EPOCH_BATCHES, DEFAULT_EPOCH_INTERVAL_MS};

/// When an epoch ends.
#[derive(Debug, Clone, Copy)]
pub struct EpochSettings {
    /// Batches per epoch (default [`DEFAULT_EPOCH_BATCHES`]).
    pub every_batches: usize,
    /// Whether `every_batches` counts per file the epoch writes: true when
    /// the pipeline leaves `checkpoint_every_batches` at its default.
    /// Each file costs a footer, an fsync and a small row group when the
    /// epoch ends and a concatenation at publish, so an epoch writing 97
    /// partition files runs 97 × 64 batches (or [`EpochSettings::interval`])
    /// to keep that cost the same share of its work as one file's
    /// ([`EpochSink::epoch_files`]; the connector writing most files
    /// counts).
    pub per_file: bool,
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
    /// XXH3-128 of its contents, hex ([`crate::durable::xxh3_file`]).
    pub xxh3: String,
}

/// Input files hashed ahead of a run, each with the stamp (size,
/// modification time, inode) it had while it was read: [`Identity::compute`]
/// takes an entry whose file still has that stamp instead of reading the
/// file again. `weir run` hashes its inputs on a thread while the pipeline
/// loads (`Pipeline::build_for`), off the run's serial start: flights'
/// 31 MB are about 5 ms of reading and hashing.
#[derive(Debug, Default)]
pub struct HashedInputs(std::collections::HashMap<PathBuf, (String, crate::durable::FileStamp)>);

impl HashedInputs {
    /// Hashes each of `inputs` that can be read and keeps the same stamp
    /// before and after; the others are left to [`Identity::compute`],
    /// which reports them.
    pub fn hash(inputs: &[PathBuf]) -> HashedInputs {
        HashedInputs(
            inputs
                .iter()
                .filter_map(|path| {
                    let before = crate::durable::FileStamp::of(path)?;
                    let xxh3 = super::xxh3_file(path).ok()?;
                    let after = crate::durable::FileStamp::of(path)?;
                    (before == after).then(|| (path.clone(), (xxh3, after)))
                })
                .collect(),
        )
    }

    /// The identity of `path` as hashed, if it still has the stamp it had
    /// (a lookup: a glob may match thousands of files).
    fn unchanged(&self, path: &Path) -> Option<InputIdentity> {
        let (xxh3, stamp) = self.0.get(path)?;
        (crate::durable::FileStamp::of(path).as_ref() == Some(stamp)).then(|| InputIdentity {
            path: path.to_path_buf(),
            bytes: stamp.bytes(),
            xxh3: xxh3.clone(),
        })
    }
}

impl Identity {
    /// Hashes the pipeline file and every input file (`inputs`), taking
    /// from `ahead` the inputs it hashed that are unchanged since.
    ///
    /// # Errors
    /// A file that cannot be read.
    pub fn compute(
        pipeline_file: &Path,
        stages: Vec<(String, String)>,
        inputs: &[PathBuf],
        ahead: Option<&HashedInputs>,
    ) -> Result<Identity> {
        Ok(Identity {
            weir_version: env!("CARGO_PKG_VERSION").to_string(),
            pipeline_file: pipeline_file.to_path_buf(),
            pipeline_sha256: super::sha256_file(pipeline_file)?,
            stages,
            inputs: inputs
                .iter()
                .map(|path| match ahead.and_then(|ahead| ahead.unchanged(path)) {
                    Some(input) => Ok(input),
                    None => Ok(InputIdentity {
                        path: path.clone(),
                        bytes: path.metadata()?.len(),
                        xxh3: super::xxh3_file(path)?,
                    }),
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
                    "input file {} changed under its recorded position (was {} bytes, xxh3 {}; now {} bytes, xxh3 {})",
                    now_input.path.display(),
                    then.bytes,
                    &then.xxh3[..12.min(then.xxh3.len())],
                    now_input.bytes,
                    &now_input.xxh3[..12.min(now_input.xxh3.len())]
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

pub use crate::source::Position;

/// One committed epoch's parts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpochRecord {
    /// The epoch number (1, 2, …).
    pub epoch: u64,
    /// Each connector's parts (by [`EpochSink::connector`] name: `sink`,
    /// `quarantine`), relative to `epoch-N/CONNECTOR/`, with their rows.
    pub parts: BTreeMap<String, Vec<PartRecord>>,
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
    /// An epoch past the checkpoint that a connector had committed on its
    /// own side (a database sink, [`Coordinator::align`]): replayed to the
    /// same position, not loaded again.
    pub sink_committed_epoch: Option<u64>,
    /// The interrupted run whose checkpoint `restart` discarded: it never
    /// completes (recorded as `aborted`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub discarded_run: Option<String>,
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
        let mut discarded_run = None;
        if restart && dir.exists() {
            discarded_run = super::read_verified(&file)
                .ok()
                .flatten()
                .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
                .and_then(|checkpoint| checkpoint["run_id"].as_str().map(str::to_string));
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
                recovery: Recovery {
                    discarded_run,
                    ..Recovery::default()
                },
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
            let finished = state.commit_epoch(record).map_err(|e| {
                anyhow::anyhow!(
                    "{e:#}: the checkpoint directory {} was edited by hand, and the run cannot be finished from it. {restart_hint}",
                    dir.display()
                )
            })?;
            if finished {
                recovery.commits_finished += 1;
            }
            for (connector, parts) in &record.parts {
                for part in parts {
                    let path = state
                        .committed_dir(record.epoch, connector)
                        .join(&part.path);
                    if !path.is_file() {
                        bail!(
                            "{} is recorded in {} but is gone: the checkpoint directory was edited by hand. {restart_hint}",
                            path.display(),
                            file.display()
                        );
                    }
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

    /// Where `connector`'s parts of `epoch` are once committed.
    fn committed_dir(&self, epoch: u64, connector: &str) -> PathBuf {
        self.epoch_dir(epoch).join(connector)
    }

    /// Where `connector` writes `epoch` until it is committed.
    fn prepared_dir(&self, epoch: u64, connector: &str) -> PathBuf {
        self.epoch_dir(epoch).join(format!("{connector}.prepared"))
    }

    /// Commits a recorded epoch: renames each connector's prepared
    /// directory to its committed name. Idempotent; returns whether
    /// anything was left to rename.
    ///
    /// # Errors
    /// A connector's directory under neither name (the outcome cannot be
    /// known), or an I/O error.
    fn commit_epoch(&self, record: &EpochRecord) -> Result<bool> {
        let dir = self.epoch_dir(record.epoch);
        if !dir.exists() {
            bail!("epoch directory {} is gone", dir.display());
        }
        let mut renamed = false;
        for (i, connector) in record.parts.keys().enumerate() {
            if i > 0 {
                crate::crash::point("mid-commit-rename");
            }
            renamed |= commit_rename(
                &self.prepared_dir(record.epoch, connector),
                &self.committed_dir(record.epoch, connector),
            )?;
        }
        if renamed {
            super::fsync_dir(&dir)?;
        }
        Ok(renamed)
    }

    /// `connector`'s parts of every committed epoch, in epoch order: each
    /// epoch's committed directory and the parts in it.
    pub fn committed_parts(&self, connector: &str) -> Vec<(PathBuf, Vec<OutputFile>)> {
        self.checkpoint
            .epochs
            .iter()
            .map(|record| {
                (
                    self.committed_dir(record.epoch, connector),
                    record
                        .parts
                        .get(connector)
                        .into_iter()
                        .flatten()
                        .map(|p| OutputFile {
                            path: p.path.clone(),
                            rows: p.rows,
                        })
                        .collect(),
                )
            })
            .collect()
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
    /// Rows the sink's destination refused in this process (a database
    /// constraint), moved from written to quarantined.
    pub rejected_by_sink: u64,
}

/// Drives epochs during a run: tracks the source position as batches are
/// written, ends an epoch when it is due (prepare, checkpoint, commit,
/// acknowledge) and publishes at the end. The connectors (the sink and
/// the quarantine, any [`EpochSink`]) stay the caller's, which writes rows
/// to them; the coordinator is handed them, always in the same order, at
/// each step of the protocol.
pub struct Coordinator {
    state: RunState,
    settings: EpochSettings,
    position: Position,
    epoch: u64,
    batches_in_epoch: usize,
    epoch_started: Instant,
    commit_time: Duration,
    max_commit_lag: Duration,
    /// Called with each committed epoch and the source position after it,
    /// once every connector's parts of the epoch are committed: where a
    /// source that must be told (a message queue) is acknowledged.
    acknowledge: Option<Box<dyn FnMut(u64, Position) + Send>>,
    /// Where the next epoch must end: a connector committed it on its own
    /// side before a crash ([`Coordinator::align`]).
    boundary: Option<(u64, Position)>,
    /// Rows the sink's destination refused in this process.
    rejected_by_sink: u64,
    /// Called with the final position once every connector published,
    /// before the checkpoint says so ([`Coordinator::on_published`]).
    published: Option<Box<dyn FnOnce(Position) -> Result<()> + Send>>,
}

impl Coordinator {
    /// A coordinator continuing `state`.
    pub fn new(state: RunState, settings: EpochSettings) -> Coordinator {
        Coordinator {
            position: state.checkpoint.position,
            epoch: state.checkpoint.epoch,
            state,
            settings,
            batches_in_epoch: 0,
            epoch_started: Instant::now(),
            commit_time: Duration::ZERO,
            max_commit_lag: Duration::ZERO,
            acknowledge: None,
            boundary: None,
            rejected_by_sink: 0,
            published: None,
        }
    }

    /// Calls `hook` with the source position after the last epoch once
    /// every connector has published, before the checkpoint records the
    /// publish (a crash in between repeats it): where an incremental
    /// source keeps its high-water mark for the next run.
    pub fn on_published(&mut self, hook: impl FnOnce(Position) -> Result<()> + Send + 'static) {
        self.published = Some(Box::new(hook));
    }

    /// After a crash, asks each connector whether it committed an epoch
    /// past the checkpoint on its own side
    /// ([`EpochSink::committed_beyond`]: a database sink commits before
    /// the checkpoint file records the epoch); if one did, the replayed
    /// epoch will end exactly where that one ended, so the connector
    /// recognises it and loads nothing twice.
    ///
    /// # Errors
    /// A connector's record cannot be read, or is more than one epoch
    /// ahead (it cannot be: the checkpoint is written right after).
    pub fn align(&mut self, connectors: &mut [&mut dyn EpochSink]) -> Result<()> {
        for connector in connectors.iter_mut() {
            if let Some((epoch, position)) =
                connector.committed_beyond(&self.state.checkpoint.run_id, self.epoch)?
            {
                if epoch != self.epoch + 1 {
                    bail!(
                        "the {} committed epoch {epoch} but the checkpoint records only {}: the checkpoint directory {} does not belong to this output",
                        connector.connector(),
                        self.epoch,
                        self.state.dir.display()
                    );
                }
                tracing::info!(
                    epoch,
                    "the {} committed epoch {epoch} before the crash; it is replayed to the same position and not loaded again",
                    connector.connector()
                );
                self.boundary = Some((epoch, position));
                self.state.recovery.sink_committed_epoch = Some(epoch);
            }
        }
        Ok(())
    }

    /// Calls `hook` with each epoch and the source position after it once
    /// the epoch is committed, never before (the acknowledgement step of
    /// the protocol; a file source needs none).
    pub fn on_acknowledge(&mut self, hook: impl FnMut(u64, Position) + Send + 'static) {
        self.acknowledge = Some(Box::new(hook));
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

    /// Opens the next epoch: each connector writes under its prepared
    /// directory of the epoch (`epoch-N/CONNECTOR.prepared/`) from now on.
    ///
    /// # Errors
    /// A directory cannot be created, or a connector cannot start.
    pub fn begin_epoch(&mut self, connectors: &mut [&mut dyn EpochSink]) -> Result<()> {
        let epoch = self.epoch + 1;
        for connector in connectors.iter_mut() {
            let dir = self.state.prepared_dir(epoch, connector.connector());
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            connector.begin_epoch(&dir)?;
        }
        self.batches_in_epoch = 0;
        self.epoch_started = Instant::now();
        Ok(())
    }

    /// Notes that the next item was written (`position`: the source's
    /// position after it, as [`crate::source::SourceConnector::read_from`]
    /// gave it; `totals`: the run's totals after it), and ends the epoch
    /// if it is due.
    ///
    /// # Errors
    /// Ending the epoch failed (see [`Coordinator::end_epoch`]).
    pub fn after_item(
        &mut self,
        position: Position,
        totals: Totals,
        connectors: &mut [&mut dyn EpochSink],
    ) -> Result<()> {
        self.position = position;
        self.batches_in_epoch += 1;
        let due = match self.boundary {
            Some((_, end)) if end == position => {
                self.boundary = None;
                true
            }
            Some((epoch, end)) => {
                if (position.file, position.items) > (end.file, end.items) {
                    bail!(
                        "the replay of epoch {epoch} went past the position a connector recorded for it ({end:?}): the input changed since the crash"
                    );
                }
                false
            }
            None => {
                let files = if self.settings.per_file {
                    connectors
                        .iter()
                        .map(|c| c.epoch_files())
                        .max()
                        .unwrap_or(1)
                        .max(1)
                } else {
                    1
                };
                self.batches_in_epoch >= self.settings.every_batches.saturating_mul(files)
                    || self.epoch_started.elapsed() >= self.settings.interval
            }
        };
        if due {
            self.end_epoch(totals, connectors)?;
            self.begin_epoch(connectors)?;
        }
        Ok(())
    }

    /// Notes that rows were written outside any source item (stateful
    /// operators closing their windows when the input ends), so that the
    /// epoch holding them is committed even if no item was read in it.
    pub fn note_output(&mut self) {
        self.batches_in_epoch += 1;
    }

    /// Ends the current epoch: prepare (each connector finishes and
    /// fsyncs its files), checkpoint (the epoch, the source position and
    /// every part recorded durably), commit (prepared directories renamed
    /// to committed ones), then acknowledge the sources (nothing to do for
    /// files, whose position is the acknowledgement). An epoch that read
    /// nothing is dropped.
    ///
    /// # Errors
    /// An I/O error at any step; what is recorded stays recoverable.
    pub fn end_epoch(
        &mut self,
        totals: Totals,
        connectors: &mut [&mut dyn EpochSink],
    ) -> Result<()> {
        let started = Instant::now();
        let epoch = self.epoch + 1;
        let context = EpochContext {
            epoch,
            position: self.position,
        };
        let mut parts = BTreeMap::new();
        // Rows a destination refused go to a later connector that takes
        // them (the quarantine) before it prepares.
        let mut refused = Vec::new();
        let mut refused_rows = 0u64;
        for connector in connectors.iter_mut() {
            let mut kept = Vec::new();
            for rejected in refused.drain(..) {
                if !connector.accept_rejected(&rejected)? {
                    kept.push(rejected);
                }
            }
            refused = kept;
            let prepared = connector.prepare_epoch(&context)?;
            for rejected in prepared.rejected {
                refused_rows += rejected.rows.num_rows() as u64;
                refused.push(rejected);
            }
            let dir = self.state.prepared_dir(epoch, connector.connector());
            super::fsync_dir(&dir)?;
            parts.insert(
                connector.connector().to_string(),
                prepared
                    .parts
                    .into_iter()
                    .map(|p| PartRecord {
                        path: p.path,
                        rows: p.rows,
                    })
                    .collect(),
            );
        }
        if !refused.is_empty() {
            bail!("the sink's destination refused rows, and no connector after it takes them");
        }
        self.rejected_by_sink += refused_rows;
        let mut totals = totals;
        totals.written -= self.rejected_by_sink.min(totals.written);
        totals.quarantined += self.rejected_by_sink;
        if self.batches_in_epoch == 0 {
            std::fs::remove_dir_all(self.state.epoch_dir(epoch))?;
            return Ok(());
        }
        super::fsync_dir(&self.state.epoch_dir(epoch))?;
        crate::crash::point("after-part-fsync");
        let record = EpochRecord { epoch, parts };
        let checkpoint = &mut self.state.checkpoint;
        checkpoint.epochs.push(record.clone());
        checkpoint.epoch = epoch;
        checkpoint.position = self.position;
        checkpoint.totals = totals;
        self.state.write()?;
        self.state.commit_epoch(&record)?;
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
    /// `publishing`, each connector publishes every committed epoch's
    /// parts ([`EpochSink::publish`]; those with `false` beside them are
    /// dropped unpublished, as the sink of a run over
    /// `max_quarantine_fraction`), the checkpoint says `published`, and
    /// the checkpoint directory is removed. Returns each connector's
    /// published files, in order (none for one left unpublished).
    ///
    /// # Errors
    /// An I/O error; the checkpoint then still says `publishing` and the
    /// next start finishes the publish.
    pub fn publish(
        mut self,
        totals: Totals,
        mut connectors: Vec<(Box<dyn EpochSink + '_>, bool)>,
    ) -> Result<(Vec<Vec<OutputFile>>, CheckpointReport)> {
        // A publish that a crash interrupted may have put this run's
        // output in place already: replacing it is then allowed.
        let resumed_publish = self.state.checkpoint.phase == Phase::Publishing;
        if !resumed_publish {
            let mut open: Vec<&mut dyn EpochSink> = connectors
                .iter_mut()
                .map(|(connector, _)| &mut **connector as &mut dyn EpochSink)
                .collect();
            self.end_epoch(totals, &mut open)?;
            self.state.checkpoint.phase = Phase::Publishing;
            self.state.write()?;
        }
        let mut published = Vec::new();
        let everything_published = connectors.iter().all(|(_, publish)| *publish);
        for (connector, publish) in connectors {
            if publish {
                let parts = self.state.committed_parts(connector.connector());
                published.push(connector.publish(&parts, resumed_publish)?);
            } else {
                published.push(Vec::new());
            }
        }
        // Output held back (over max_quarantine_fraction) was not
        // delivered: the source must not move on past it.
        if let Some(hook) = self.published.take()
            && everything_published
        {
            hook(self.state.checkpoint.position)?;
        }
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
            rejected_by_sink: self.rejected_by_sink,
        };
        self.state.remove_published();
        Ok((published, report))
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
            rejected_by_sink: 0,
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
    use crate::config::{QuarantineConfig, QuarantineFormat, SinkFormat, WriteMode};
    use crate::quarantine::Quarantine;
    use crate::sink::Sink;
    use arrow::array::{ArrayRef, Int64Array};
    use arrow::record_batch::RecordBatch;
    use std::sync::Arc;

    /// A fresh run's checkpoint state under `dir` for a sink of
    /// `sink_config`, over a one-row input and an empty pipeline file
    /// written there; with the checkpoint directory.
    fn fresh_run(dir: &Path, sink_config: &SinkConfig) -> (PathBuf, RunState) {
        let input = dir.join("input.csv");
        std::fs::write(&input, "k\n1\n").unwrap();
        let pipeline_file = dir.join("pipeline.toml");
        std::fs::write(&pipeline_file, "").unwrap();
        let inputs = std::slice::from_ref(&input);
        let identity = Identity::compute(&pipeline_file, Vec::new(), inputs, None).unwrap();
        let state_dir = dir_for(sink_config, dir);
        let state = RunState::begin(&state_dir, identity, false, "run", "now").unwrap();
        (state_dir, state)
    }

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
            mode: Some(WriteMode::ErrorIfExists),
            lineage_column: None,
            ..SinkConfig::default()
        };
        let quarantine_config = QuarantineConfig {
            format: QuarantineFormat::Jsonl,
            path: "quarantine.jsonl".into(),
        };
        let (state_dir, state) = fresh_run(dir.path(), &sink_config);
        let mut coordinator = Coordinator::new(
            state,
            EpochSettings {
                every_batches: 2,
                per_file: false,
                interval: Duration::from_secs(3600),
            },
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
                epoch_dir.join("quarantine/part.jsonl").is_file(),
                "the quarantine is committed"
            );
            assert!(!epoch_dir.join("quarantine.prepared").exists());
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
        coordinator
            .begin_epoch(&mut [&mut sink, &mut quarantine])
            .unwrap();
        let batch = RecordBatch::try_from_iter([
            ("k", Arc::new(Int64Array::from(vec![1, 1])) as ArrayRef),
            ("v", Arc::new(Int64Array::from(vec![7, 8])) as ArrayRef),
        ])
        .unwrap();
        let mut totals = Totals::default();
        for item in 1..=4 {
            sink.write(&batch).unwrap();
            totals.read += 2;
            totals.written += 2;
            coordinator
                .after_item(
                    Position {
                        file: 0,
                        items: item,
                        records: 2 * item,
                        cursor: None,
                        cursor_limit: None,
                    },
                    totals,
                    &mut [&mut sink, &mut quarantine],
                )
                .unwrap();
        }
        assert_eq!(*acknowledged.lock().unwrap(), vec![1, 2]);
        let (published, report) = coordinator
            .publish(
                totals,
                vec![(Box::new(sink), true), (Box::new(quarantine), true)],
            )
            .unwrap();
        assert_eq!(published[0].iter().map(|o| o.rows).sum::<u64>(), 8);
        assert_eq!(published[1][0].rows, 0, "nothing quarantined");
        assert_eq!(report.epochs, 2);
        assert!(!state_dir.exists(), "the checkpoint directory is removed");
    }

    /// Epochs of the default length count their batches per file written:
    /// a sink writing 3 partition files ends its 2-batch epochs after 6
    /// batches; a length set in the pipeline is exact.
    /// An input hashed ahead is taken as it was hashed while its stamp
    /// holds, and read again once the file was rewritten (another size) or
    /// replaced (another inode, same size), so that the identity is always
    /// of the file the run reads.
    #[test]
    fn inputs_hashed_ahead_are_taken_only_while_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let pipeline_file = dir.path().join("pipeline.toml");
        std::fs::write(&pipeline_file, "").unwrap();
        let input = dir.path().join("input.csv");
        std::fs::write(&input, "k\n1\n").unwrap();
        let identity = |ahead: Option<&HashedInputs>| {
            Identity::compute(
                &pipeline_file,
                Vec::new(),
                std::slice::from_ref(&input),
                ahead,
            )
            .unwrap()
            .inputs
            .remove(0)
        };
        let hashed = HashedInputs::hash(std::slice::from_ref(&input));
        assert_eq!(hashed.0.len(), 1);
        assert_eq!(identity(Some(&hashed)), identity(None));
        // A marked entry shows whether it was taken or the file was read.
        let marked = |path: &Path| {
            let stamp = crate::durable::FileStamp::of(path).unwrap();
            let entry = ("hashed ahead".to_string(), stamp);
            HashedInputs([(path.to_path_buf(), entry)].into())
        };
        let ahead = marked(&input);
        assert_eq!(identity(Some(&ahead)).xxh3, "hashed ahead");
        std::fs::write(&input, "k\n1\n2\n").unwrap();
        let rewritten = identity(Some(&ahead));
        assert_eq!(rewritten, identity(None));
        assert_eq!(rewritten.bytes, 6);
        let ahead = marked(&input);
        let replacement = dir.path().join("replacement.csv");
        std::fs::write(&replacement, "k\n3\n4\n").unwrap();
        std::fs::rename(&replacement, &input).unwrap();
        let replaced = identity(Some(&ahead));
        assert_ne!(replaced.xxh3, "hashed ahead");
        assert_eq!(replaced, identity(None));
        assert_ne!(replaced.xxh3, rewritten.xxh3);
        // A file that is gone is left out, for the run to report.
        std::fs::remove_file(&input).unwrap();
        assert!(
            HashedInputs::hash(std::slice::from_ref(&input))
                .0
                .is_empty()
        );
    }

    #[test]
    fn a_default_epoch_is_as_many_times_longer_as_it_writes_files() {
        let epochs = |per_file: bool| {
            let dir = tempfile::tempdir().unwrap();
            let sink_config = SinkConfig {
                format: SinkFormat::Parquet,
                path: "out".into(),
                partition_by: vec!["k".into()],
                mode: Some(WriteMode::ErrorIfExists),
                ..SinkConfig::default()
            };
            let (_, state) = fresh_run(dir.path(), &sink_config);
            let mut coordinator = Coordinator::new(
                state,
                EpochSettings {
                    every_batches: 2,
                    per_file,
                    interval: Duration::from_secs(3600),
                },
            );
            let mut sink = Sink::create(&sink_config, dir.path(), "run").unwrap();
            coordinator.begin_epoch(&mut [&mut sink]).unwrap();
            let batch = RecordBatch::try_from_iter([
                ("k", Arc::new(Int64Array::from(vec![1, 2, 3])) as ArrayRef),
                ("v", Arc::new(Int64Array::from(vec![7, 8, 9])) as ArrayRef),
            ])
            .unwrap();
            let mut totals = Totals::default();
            for item in 1..=12 {
                sink.write(&batch).unwrap();
                totals.read += 3;
                totals.written += 3;
                let position = Position {
                    file: 0,
                    items: item,
                    records: 3 * item,
                    cursor: None,
                    cursor_limit: None,
                };
                coordinator
                    .after_item(position, totals, &mut [&mut sink])
                    .unwrap();
            }
            let (published, report) = coordinator
                .publish(totals, vec![(Box::new(sink), true)])
                .unwrap();
            assert_eq!(published[0].iter().map(|o| o.rows).sum::<u64>(), 36);
            report.epochs
        };
        assert_eq!(epochs(true), 2, "3 files: 6 batches per epoch");
        assert_eq!(epochs(false), 6, "set by the pipeline: 2 batches");
    }
}
