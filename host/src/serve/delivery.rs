//! Exactly-once delivery for a served pipeline: the checkpoint protocol
//! ([`crate::checkpoint`]) with one epoch per micro-batch, idempotency
//! keys for HTTP ingest, and dropped files recorded with their output.
//!
//! Each micro-batch is **prepared** (its sink and quarantine files written
//! to staging names and fsynced), **recorded** (one framed record appended
//! to `STATE_DIR/PIPELINE/delivery.log` and fsynced, naming every staged
//! file with its final name and, for each piece of a submission it holds,
//! the submission's key, the piece's index and its acknowledgement),
//! **committed** (each staged file renamed to its final name) and only
//! then **acknowledged** (the HTTP client answered, the dropped file
//! recorded as done).
//!
//! **Recovery** ([`Delivery::open`], at start): every recorded file still
//! under its staging name is renamed into place (the commit a crash
//! interrupted), every other staging file is removed (never recorded:
//! rolled back, its submission was never acknowledged and will be retried),
//! and the keys of the last [`DEFAULT_KEY_WINDOW`] are loaded.
//!
//! **Idempotency keys** (the `Idempotency-Key` header of the IETF httpapi
//! draft): a submission is cut into pieces the same way every time it is
//! sent, and each committed piece is recorded under the key. A request
//! repeating a key whose pieces are all committed is answered with the
//! recorded acknowledgement and writes nothing; one whose pieces are
//! partly committed (a crash between two micro-batches) submits only the
//! missing pieces. A key already being processed is refused (409), a key
//! reused for another body too (422). Keys are remembered for the window
//! (`[service] idempotency_window`, default 24 h), then forgotten when the
//! log is compacted.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::ack::Ack;
use crate::checkpoint::log::Log;

/// File name of the delivery log in a pipeline's state directory.
pub const LOG_FILE: &str = "delivery.log";

/// How long an idempotency key is remembered by default
/// ([`super::config::DEFAULT_IDEMPOTENCY_WINDOW_S`]).
pub const DEFAULT_KEY_WINDOW: Duration =
    Duration::from_secs(super::config::DEFAULT_IDEMPOTENCY_WINDOW_S);

/// Log size past which it is compacted (records older than the window
/// dropped), in bytes: 64 MiB.
pub const COMPACT_BYTES: u64 = 64 << 20;

/// Longest idempotency key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 255;

/// Where a submission comes from, for exactly-once: its key and the
/// SHA-256 of its body.
#[derive(Debug, Clone)]
pub struct Origin {
    /// `http:KEY` for an `Idempotency-Key`, `file:NAME:SHA256` for a
    /// dropped file.
    pub key: String,
    /// SHA-256 of the body, hex.
    pub body_sha256: String,
}

/// One piece of a submission held by a micro-batch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PieceRecord {
    /// The submission's key.
    pub key: String,
    /// SHA-256 of the submission's body.
    pub body_sha256: String,
    /// The piece's index in its submission.
    pub index: u32,
    /// Pieces in the submission.
    pub count: u32,
    /// The piece's acknowledgement.
    pub ack: Ack,
}

/// One staged file and its final name.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StagedFile {
    /// Where it was prepared.
    pub staged: PathBuf,
    /// Where the commit puts it.
    pub path: PathBuf,
}

/// One record of the delivery log: a prepared micro-batch.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    /// The micro-batch's part id.
    part: String,
    /// When it was recorded, seconds since the Unix epoch.
    at: u64,
    /// Its files.
    files: Vec<StagedFile>,
    /// The keyed pieces it holds.
    pieces: Vec<PieceRecord>,
}

/// What is known of a key.
#[derive(Debug, Clone)]
struct KeyState {
    body_sha256: String,
    count: u32,
    pieces: BTreeMap<u32, Ack>,
    at: u64,
}

/// What a submission with an origin must do.
#[derive(Debug)]
pub enum Admission {
    /// Every piece is committed: answer with this acknowledgement.
    Done(Ack),
    /// Submit the pieces whose index is not in `committed` (which holds
    /// the acknowledgements of those that are), then release the key.
    Submit {
        /// Acknowledgements of the pieces already committed.
        committed: BTreeMap<u32, Ack>,
        /// The key, held until the submission ends.
        guard: KeyGuard,
    },
}

/// Why a keyed submission was refused.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The same key is being processed right now.
    #[error(
        "a request with Idempotency-Key `{0}` is still being processed; retry once it has been answered"
    )]
    InFlight(String),
    /// The key was used for another body.
    #[error(
        "Idempotency-Key `{0}` was already used for a different body; use a new key for new records"
    )]
    Reused(String),
    /// The body now cuts into another number of pieces (the pipeline's
    /// batch size changed since).
    #[error(
        "Idempotency-Key `{0}` was recorded with {1} pieces but its body now makes {2} (the pipeline's batch size changed); send it under a new key"
    )]
    Pieces(String, u32, u32),
    /// The pipeline runs without the checkpoint protocol.
    #[error(
        "pipeline `{0}` has `checkpoint = false`, so it cannot honour an Idempotency-Key; send without one (at-least-once) or enable checkpoints"
    )]
    Disabled(String),
}

/// Holds a key as in flight; releases it when dropped.
#[derive(Debug)]
pub struct KeyGuard {
    key: String,
    in_flight: std::sync::Arc<Mutex<HashSet<String>>>,
}

impl Drop for KeyGuard {
    fn drop(&mut self) {
        self.in_flight
            .lock()
            .expect("in-flight lock")
            .remove(&self.key);
    }
}

/// Counts for the admin API and metrics.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DeliveryStatus {
    /// The last micro-batch committed under the protocol (its part id).
    pub last_epoch: Option<String>,
    /// When it was recorded, RFC 3339.
    pub last_commit_at: Option<String>,
    /// Micro-batches committed since the service started.
    pub epochs_committed: u64,
    /// Idempotency keys (and dropped files) remembered.
    pub keys: usize,
    /// Records in the delivery log.
    pub log_records: usize,
    /// Size of the delivery log, in bytes.
    pub log_bytes: u64,
    /// At start: recorded files whose commit recovery finished.
    pub recovered_commits: u64,
    /// At start: staging files removed (prepared, never recorded).
    pub rolled_back_files: u64,
    /// Longest prepare-to-commit time since start, in milliseconds.
    pub max_commit_ms: u64,
}

/// The delivery state of one served pipeline.
#[derive(Debug)]
pub struct Delivery {
    log: Mutex<Log>,
    keys: Mutex<HashMap<String, KeyState>>,
    in_flight: std::sync::Arc<Mutex<HashSet<String>>>,
    window: Duration,
    status: Mutex<DeliveryStatus>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Renames `staged` to `path` unless it is already there; returns whether
/// it renamed. A file under neither name was committed and then moved
/// away by a consumer of the output, which is theirs to do.
fn commit_file(file: &StagedFile) -> Result<bool> {
    if !file.staged.exists() {
        return Ok(false);
    }
    if let Some(parent) = file.path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::rename(&file.staged, &file.path).with_context(|| {
        format!(
            "moving {} to {}",
            file.staged.display(),
            file.path.display()
        )
    })?;
    Ok(true)
}

/// Removes the staging files under `dir` (hidden `.weir-*.tmp` entries and
/// `.NAME.weir-*.tmp` quarantine files), returning how many.
fn remove_staging(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && name.contains(".weir-") && name.ends_with(".tmp") {
            let path = entry.path();
            let gone = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            if gone.is_ok() {
                removed += 1;
            }
        }
    }
    removed
}

impl Delivery {
    /// Opens the delivery log in `state_dir` and recovers: finishes the
    /// commits a crash interrupted, removes the staging files of
    /// micro-batches never recorded (in `sink_dir` and `quarantine_dir`)
    /// unless `keep_staging` (a stream pipeline, whose epochs are recorded
    /// in the shared ledger: [`Delivery::recover_claimed`] decides), and
    /// loads the keys of the last `window`.
    ///
    /// # Errors
    /// A damaged log (not a torn last record, which is ignored), or a
    /// commit that cannot be finished.
    pub fn open(
        state_dir: &Path,
        sink_dir: &Path,
        quarantine_dir: &Path,
        window: Duration,
        keep_staging: bool,
    ) -> Result<Delivery> {
        let opened = Log::open(&state_dir.join(LOG_FILE))?;
        let mut log = opened.log;
        let now = unix_now();
        let mut keys: HashMap<String, KeyState> = HashMap::new();
        let mut status = DeliveryStatus::default();
        let mut kept = Vec::new();
        for bytes in &opened.records {
            let record: Record = serde_json::from_slice(bytes).with_context(|| {
                format!(
                    "{}: a record is not valid",
                    state_dir.join(LOG_FILE).display()
                )
            })?;
            for file in &record.files {
                if commit_file(file)? {
                    status.recovered_commits += 1;
                }
            }
            if now.saturating_sub(record.at) > window.as_secs() {
                continue;
            }
            for piece in &record.pieces {
                let state = keys.entry(piece.key.clone()).or_insert_with(|| KeyState {
                    body_sha256: piece.body_sha256.clone(),
                    count: piece.count,
                    pieces: BTreeMap::new(),
                    at: record.at,
                });
                state.pieces.insert(piece.index, piece.ack.clone());
            }
            status.last_epoch = Some(record.part.clone());
            kept.push(bytes.as_slice());
        }
        if !keep_staging {
            status.rolled_back_files = remove_staging(sink_dir) + remove_staging(quarantine_dir);
        }
        if status.recovered_commits > 0 || status.rolled_back_files > 0 || opened.torn_bytes > 0 {
            metrics::counter!("weir_recoveries_total").increment(1);
            tracing::warn!(
                log = %state_dir.join(LOG_FILE).display(),
                recovered_commits = status.recovered_commits,
                rolled_back_files = status.rolled_back_files,
                torn_bytes = opened.torn_bytes,
                "recovered from an unclean stop: interrupted commits finished, unrecorded micro-batches rolled back"
            );
        }
        if kept.len() < opened.records.len() {
            log.rewrite(kept.iter().copied())?;
        }
        for dir in [sink_dir, quarantine_dir] {
            crate::durable::fsync_dir(dir)?;
        }
        status.keys = keys.len();
        status.log_records = log.records();
        status.log_bytes = log.bytes();
        Ok(Delivery {
            log: Mutex::new(log),
            keys: Mutex::new(keys),
            in_flight: Default::default(),
            window,
            status: Mutex::new(status),
        })
    }

    /// Admits a submission of `count` pieces from `origin`.
    ///
    /// # Errors
    /// [`KeyError`]: the key is in flight, or was used for another body or
    /// another cut.
    pub fn admit(&self, origin: &Origin, count: u32) -> Result<Admission, KeyError> {
        let mut in_flight = self.in_flight.lock().expect("in-flight lock");
        if in_flight.contains(&origin.key) {
            return Err(KeyError::InFlight(origin.key.clone()));
        }
        let committed = match self.keys.lock().expect("keys lock").get(&origin.key) {
            None => BTreeMap::new(),
            Some(state) if state.body_sha256 != origin.body_sha256 => {
                return Err(KeyError::Reused(origin.key.clone()));
            }
            Some(state) if state.count != count => {
                return Err(KeyError::Pieces(origin.key.clone(), state.count, count));
            }
            Some(state) if state.pieces.len() as u32 == state.count => {
                let mut ack = Ack::default();
                for piece in state.pieces.values() {
                    ack.merge(piece.clone());
                }
                metrics::counter!("weir_idempotent_replays_total").increment(1);
                return Ok(Admission::Done(ack.finish()));
            }
            Some(state) => state.pieces.clone(),
        };
        in_flight.insert(origin.key.clone());
        Ok(Admission::Submit {
            committed,
            guard: KeyGuard {
                key: origin.key.clone(),
                in_flight: self.in_flight.clone(),
            },
        })
    }

    /// Records a prepared micro-batch (`part`, its staged `files`, the
    /// keyed `pieces` it holds) durably, then commits its files. When this
    /// returns, the micro-batch is in the output exactly once and its
    /// submitters may be acknowledged.
    ///
    /// # Errors
    /// The record could not be written (nothing is then committed, and
    /// the caller must not acknowledge), or a rename failed after it was
    /// (the next start finishes it).
    pub fn record_and_commit(
        &self,
        part: &str,
        files: Vec<StagedFile>,
        pieces: Vec<PieceRecord>,
        prepared: Instant,
    ) -> Result<()> {
        let record = Record {
            part: part.to_string(),
            at: unix_now(),
            files,
            pieces,
        };
        let bytes = serde_json::to_vec(&record)?;
        {
            let mut log = self.log.lock().expect("log lock");
            log.append(&bytes)?;
            let mut status = self.status.lock().expect("status lock");
            status.log_records = log.records();
            status.log_bytes = log.bytes();
            if log.bytes() > COMPACT_BYTES {
                drop(status);
                self.compact(&mut log)?;
            }
        }
        {
            let mut keys = self.keys.lock().expect("keys lock");
            for piece in record.pieces {
                keys.entry(piece.key.clone())
                    .or_insert_with(|| KeyState {
                        body_sha256: piece.body_sha256.clone(),
                        count: piece.count,
                        pieces: BTreeMap::new(),
                        at: record.at,
                    })
                    .pieces
                    .insert(piece.index, piece.ack);
            }
            self.status.lock().expect("status lock").keys = keys.len();
        }
        for (i, file) in record.files.iter().enumerate() {
            if i > 0 {
                crate::crash::point("mid-commit-rename");
            }
            commit_file(file)?;
        }
        remove_part_staging(&record.files);
        let spent = prepared.elapsed();
        metrics::counter!("weir_epochs_committed_total").increment(1);
        metrics::histogram!("weir_commit_seconds").record(spent.as_secs_f64());
        let mut status = self.status.lock().expect("status lock");
        status.epochs_committed += 1;
        status.last_epoch = Some(record.part);
        status.last_commit_at =
            Some(humantime::format_rfc3339_millis(SystemTime::now()).to_string());
        status.max_commit_ms = status.max_commit_ms.max(spent.as_millis() as u64);
        Ok(())
    }

    /// Recovery of a stream pipeline, once its ledger is read: renames into
    /// place the staged files of this worker's committed epochs (`claimed`)
    /// and removes every other staging file in `sink_dir` and
    /// `quarantine_dir` (epochs that never committed; their messages are
    /// redelivered). Returns (files renamed, files removed).
    ///
    /// # Errors
    /// A rename that fails.
    pub fn recover_claimed(
        &self,
        claimed: &[StagedFile],
        sink_dir: &Path,
        quarantine_dir: &Path,
    ) -> Result<(u64, u64)> {
        let mut renamed = 0;
        for file in claimed {
            if commit_file(file)? {
                renamed += 1;
            }
        }
        let removed = remove_staging(sink_dir) + remove_staging(quarantine_dir);
        for dir in [sink_dir, quarantine_dir] {
            crate::durable::fsync_dir(dir)?;
        }
        let mut status = self.status.lock().expect("status lock");
        status.recovered_commits += renamed;
        status.rolled_back_files += removed;
        if renamed > 0 || removed > 0 {
            metrics::counter!("weir_recoveries_total").increment(1);
            tracing::warn!(
                recovered_commits = renamed,
                rolled_back_files = removed,
                "recovered a stream pipeline from an unclean stop: committed epochs renamed into place, uncommitted ones rolled back"
            );
        }
        Ok((renamed, removed))
    }

    /// Commits a micro-batch's staged files without recording them, for a
    /// pipeline with `checkpoint = false` (at-least-once: a crash between
    /// two renames can leave part of a micro-batch, and a client retrying
    /// a lost answer writes again).
    ///
    /// # Errors
    /// A rename failed.
    pub fn commit_unrecorded(&self, files: Vec<StagedFile>) -> Result<()> {
        for file in &files {
            commit_file(file)?;
        }
        remove_part_staging(&files);
        Ok(())
    }

    /// Removes a micro-batch's staged files (and their staging
    /// directories) without committing them: an epoch another worker
    /// committed first.
    pub fn discard(&self, files: &[StagedFile]) {
        for file in files {
            let _ = std::fs::remove_file(&file.staged);
        }
        remove_part_staging(files);
    }

    /// Drops the records older than the window from the log.
    fn compact(&self, log: &mut Log) -> Result<()> {
        let cutoff = unix_now().saturating_sub(self.window.as_secs());
        let opened = Log::open(log.path())?;
        let kept: Vec<Vec<u8>> = opened
            .records
            .into_iter()
            .filter(|bytes| serde_json::from_slice::<Record>(bytes).is_ok_and(|r| r.at >= cutoff))
            .collect();
        log.rewrite(kept.iter().map(Vec::as_slice))?;
        self.keys
            .lock()
            .expect("keys lock")
            .retain(|_, state| state.at >= cutoff);
        Ok(())
    }

    /// Pieces of the submission keyed `key` already committed.
    pub fn committed_pieces(&self, key: &str) -> usize {
        self.keys
            .lock()
            .expect("keys lock")
            .get(key)
            .map_or(0, |state| state.pieces.len())
    }

    /// Counts for the admin API.
    pub fn status(&self) -> DeliveryStatus {
        self.status.lock().expect("status lock").clone()
    }
}

/// Removes the staging directories a committed part's files were renamed
/// out of (empty by now). Parts are staged as files beside their sink's
/// other files, so only a part recorded by an earlier version of weir,
/// which staged a part as a directory tree, has one.
fn remove_part_staging(files: &[StagedFile]) {
    for file in files {
        if let Some(dir) = file.staged.ancestors().skip(1).find(|dir| {
            dir.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(".weir-") && n.ends_with(".tmp"))
        }) {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Checks an `Idempotency-Key` value: 1 to [`MAX_KEY_BYTES`] visible ASCII
/// characters.
///
/// # Errors
/// A message for the 400 answer.
pub fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(format!(
            "Idempotency-Key must be 1 to {MAX_KEY_BYTES} characters"
        ));
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("Idempotency-Key must be visible ASCII characters (a UUID is typical)".into());
    }
    Ok(())
}
