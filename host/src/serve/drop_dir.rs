//! The drop directory: files that appear in a watched folder are ingested
//! once each.
//!
//! A file is picked up when the watcher reports it (debounced, so a file
//! still being written is read once it has been quiet for
//! [`SETTLE_TIME`]) and on a rescan every [`RESCAN_INTERVAL`], which also
//! finds files dropped while the service was down. Hidden files (`.name`)
//! and names ending in `.tmp` or `.part` are ignored: write elsewhere or
//! under such a name, then rename into place.
//!
//! **Checkpoint.** Each file's outcome is appended to
//! `STATE_DIR/PIPELINE/processed.jsonl` (name, SHA-256, counts) and synced
//! once its records are committed; a file whose name and content are
//! already recorded is skipped, so a restart never ingests it twice. The
//! checkpoint is written after the commit: a crash between the two (a few
//! milliseconds) ingests that one file again on restart (at-least-once).
//! A file that cannot be decoded at all is recorded with its error and not
//! retried until its content changes.
//!
//! **Crash loops.** Before a file is processed, an attempt is appended to
//! `STATE_DIR/PIPELINE/attempts.jsonl` (synced). An attempt that neither
//! reached the checkpoint nor was given back (a paused pipeline, a
//! shutdown) means the process died while handling that file. After
//! [`MAX_ATTEMPTS`] such attempts the file is not read again: it is moved
//! to `DROP_DIR/.failed/` and recorded in the checkpoint with the reason,
//! so one poisonous file cannot take the service down at every restart.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use notify::RecursiveMode;
use notify_debouncer_full::{DebounceEventResult, new_debouncer};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use super::ingest::BodyFormat;
use super::live::{LivePipeline, SubmitError};

/// How long a file must be quiet before it is read.
pub const SETTLE_TIME: Duration = Duration::from_millis(250);
/// How often the whole directory is rescanned.
pub const RESCAN_INTERVAL: Duration = Duration::from_secs(2);

const CHECKPOINT_FILE: &str = "processed.jsonl";
const ATTEMPTS_FILE: &str = "attempts.jsonl";

/// Unfinished attempts (the process died while handling the file) after
/// which a dropped file is set aside instead of read again.
pub const MAX_ATTEMPTS: u32 = 3;

/// Where set-aside files go, under the drop directory (hidden, so it is
/// never scanned).
pub const FAILED_DIR: &str = ".failed";

/// One line of the attempts log: a file's processing started, or was
/// given back unfinished without a crash.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Attempt {
    file: String,
    sha256: String,
    /// `true` when the attempt was given back (not counted).
    #[serde(default)]
    released: bool,
}

/// The attempts log of a pipeline's drop directory: how many times each
/// file (name, SHA-256) was started and never finished.
struct Attempts {
    path: PathBuf,
    unfinished: HashMap<(String, String), u32>,
}

impl Attempts {
    /// Reads the log, forgets files already in `done`, and rewrites it
    /// with only what is still unfinished.
    fn load(state_dir: &Path, done: &HashSet<(String, String)>) -> Result<Attempts> {
        let path = state_dir.join(ATTEMPTS_FILE);
        let mut unfinished: HashMap<(String, String), u32> = HashMap::new();
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                // A torn last line (a crash mid-append) is ignored.
                for attempt in text
                    .lines()
                    .filter_map(|l| serde_json::from_str::<Attempt>(l).ok())
                {
                    let count = unfinished
                        .entry((attempt.file, attempt.sha256))
                        .or_default();
                    if attempt.released {
                        *count = count.saturating_sub(1);
                    } else {
                        *count += 1;
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(anyhow::anyhow!("reading {}: {e}", path.display())),
        }
        unfinished.retain(|key, count| *count > 0 && !done.contains(key));
        let mut text = Vec::new();
        for ((file, sha256), count) in &unfinished {
            for _ in 0..*count {
                let attempt = Attempt {
                    file: file.clone(),
                    sha256: sha256.clone(),
                    released: false,
                };
                serde_json::to_writer(&mut text, &attempt)?;
                text.push(b'\n');
            }
        }
        let staging = state_dir.join(format!("{ATTEMPTS_FILE}.tmp"));
        super::files::write_private(&staging, &text)?;
        std::fs::rename(&staging, &path)
            .with_context(|| format!("replacing {}", path.display()))?;
        Ok(Attempts { path, unfinished })
    }

    /// Unfinished attempts of `key` so far.
    fn count(&self, key: &(String, String)) -> u32 {
        self.unfinished.get(key).copied().unwrap_or(0)
    }

    /// Appends an attempt (synced before the file is read); `released`
    /// gives one back.
    fn append(&mut self, key: &(String, String), released: bool) -> Result<()> {
        let attempt = Attempt {
            file: key.0.clone(),
            sha256: key.1.clone(),
            released,
        };
        let mut line = serde_json::to_vec(&attempt)?;
        line.push(b'\n');
        let mut file = super::files::append_private(&self.path)?;
        file.write_all(&line)?;
        file.sync_data()?;
        let count = self.unfinished.entry(key.clone()).or_default();
        *count = if released {
            count.saturating_sub(1)
        } else {
            *count + 1
        };
        Ok(())
    }
}

/// One line of the checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessedFile {
    /// File name within the drop directory.
    pub file: String,
    /// SHA-256 of its content.
    pub sha256: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Records received, written and quarantined.
    pub received: u64,
    /// Records written to the sink.
    pub written: u64,
    /// Records quarantined.
    pub quarantined: u64,
    /// When it was committed, RFC 3339 UTC.
    pub at: String,
    /// Why it could not be ingested at all, if so.
    pub error: Option<String>,
}

impl ProcessedFile {
    /// The entry of file `(name, sha256)` of `bytes` bytes before anything
    /// is known of it: no counts, no time, no error.
    fn unfinished((file, sha256): &(String, String), bytes: u64) -> ProcessedFile {
        ProcessedFile {
            file: file.clone(),
            sha256: sha256.clone(),
            bytes,
            received: 0,
            written: 0,
            quarantined: 0,
            at: String::new(),
            error: None,
        }
    }
}

/// Reads the checkpoint of a pipeline's drop directory.
///
/// # Errors
/// An unreadable or corrupt checkpoint file.
pub fn read_checkpoint(state_dir: &Path) -> Result<Vec<ProcessedFile>> {
    let path = state_dir.join(CHECKPOINT_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .enumerate()
            .map(|(i, l)| {
                serde_json::from_str(l)
                    .with_context(|| format!("{}: line {} is corrupt", path.display(), i + 1))
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(anyhow::anyhow!("reading {}: {e}", path.display())),
    }
}

fn append_checkpoint(state_dir: &Path, entry: &ProcessedFile) -> Result<()> {
    let path = state_dir.join(CHECKPOINT_FILE);
    let mut file = super::files::append_private(&path)?;
    let mut line = serde_json::to_vec(entry)?;
    line.push(b'\n');
    file.write_all(&line)?;
    file.sync_data()?;
    Ok(())
}

fn candidate(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    path.is_file()
        && !name.starts_with('.')
        && !name.ends_with(".tmp")
        && !name.ends_with(".part")
        && BodyFormat::from_path(path).is_some()
}

/// Watches `dir` for `live` until `shutdown` turns true.
///
/// # Errors
/// When the directory cannot be watched or the checkpoint cannot be read.
pub async fn run(
    live: Arc<LivePipeline>,
    dir: PathBuf,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let state_dir = live.state_dir().to_path_buf();
    let mut done: HashSet<(String, String)> = read_checkpoint(&state_dir)?
        .into_iter()
        .map(|p| (p.file, p.sha256))
        .collect();
    let mut attempts = Attempts::load(&state_dir, &done)?;
    let (events_tx, mut events) = mpsc::unbounded_channel::<()>();
    let mut debouncer = new_debouncer(SETTLE_TIME, None, move |result: DebounceEventResult| {
        if result.is_ok_and(|events| !events.is_empty()) {
            let _ = events_tx.send(());
        }
    })
    .context("starting the drop-directory watcher")?;
    debouncer
        .watch(&dir, RecursiveMode::NonRecursive)
        .with_context(|| format!("watching {}", dir.display()))?;
    let mut rescan = tokio::time::interval(RESCAN_INTERVAL);
    tracing::info!(pipeline = %live.name, dir = %dir.display(), "watching the drop directory");
    loop {
        tokio::select! {
            _ = shutdown.changed() => return Ok(()),
            _ = rescan.tick() => {}
            Some(()) = events.recv() => {}
        }
        if *shutdown.borrow() {
            return Ok(());
        }
        if let Err(error) = scan(&live, &dir, &state_dir, &mut done, &mut attempts).await {
            tracing::warn!(pipeline = %live.name, dir = %dir.display(), error = format!("{error:#}"), "drop directory scan failed");
        }
    }
}

/// Ingests every new file in `dir`, oldest name first.
async fn scan(
    live: &Arc<LivePipeline>,
    dir: &Path,
    state_dir: &Path,
    done: &mut HashSet<(String, String)>,
    attempts: &mut Attempts,
) -> Result<()> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| candidate(p))
        .collect();
    files.sort();
    for path in files {
        if live.state() != super::live::PipelineState::Running {
            return Ok(());
        }
        let name = path
            .file_name()
            .expect("candidates have names")
            .to_string_lossy()
            .into_owned();
        let bytes = match tokio::fs::read(&path).await {
            Ok(bytes) => bytes,
            // Renamed or removed since the listing.
            Err(_) => continue,
        };
        let sha256 = crate::plugin::sha256_hex(&bytes);
        let key = (name.clone(), sha256.clone());
        if done.contains(&key) {
            continue;
        }
        let size = bytes.len() as u64;
        let tried = attempts.count(&key);
        // A file partly committed before the crashes is finished, not set
        // aside: setting it aside would leave part of it written.
        let progressed = live
            .delivery()
            .committed_pieces(&format!("file:{name}:{sha256}"))
            > 0;
        if tried >= MAX_ATTEMPTS && !progressed {
            let entry = set_aside(&path, dir, &key, size, tried)?;
            tracing::error!(pipeline = %live.name, file = %path.display(), error = entry.error.as_deref().unwrap_or_default(), "a dropped file was set aside");
            append_checkpoint(state_dir, &entry)?;
            done.insert(key);
            continue;
        }
        attempts.append(&key, false)?;
        let format = BodyFormat::from_path(&path).expect("candidates have a known format");
        let source_live = live.clone();
        let label: Arc<str> = Arc::from(path.display().to_string());
        let decoded = tokio::task::spawn_blocking(move || {
            format.decode(source_live.source(), label, bytes.into())
        })
        .await?;
        let mut entry = ProcessedFile::unfinished(&key, size);
        match decoded {
            Err(error) => {
                tracing::error!(pipeline = %live.name, file = %path.display(), error = format!("{error:#}"), "a dropped file cannot be decoded; it is recorded and skipped");
                entry.error = Some(format!("{error:#}"));
            }
            Ok(decoded) => match live
                .submit_from(
                    decoded.items,
                    Some(super::delivery::Origin {
                        key: format!("file:{name}:{sha256}"),
                        body_sha256: sha256.clone(),
                    }),
                    None,
                )
                .await
                .map(|submitted| submitted.ack)
            {
                Ok(ack) => {
                    tracing::info!(pipeline = %live.name, file = %path.display(), received = ack.received, written = ack.written, quarantined = ack.quarantined, "ingested a dropped file");
                    entry.received = ack.received;
                    entry.written = ack.written;
                    entry.quarantined = ack.quarantined;
                }
                // Not taken: try again on a later scan (or after a restart).
                Err(SubmitError::Paused(_) | SubmitError::ShuttingDown(_)) => {
                    attempts.append(&key, true)?;
                    return Ok(());
                }
                Err(SubmitError::Key(error)) => {
                    tracing::error!(pipeline = %live.name, file = %path.display(), %error, "a dropped file was refused");
                    entry.error = Some(error.to_string());
                }
                Err(error @ SubmitError::Stream(_)) => {
                    entry.error = Some(error.to_string());
                }
                Err(SubmitError::Failed(error)) => {
                    tracing::error!(pipeline = %live.name, file = %path.display(), %error, "a dropped file could not be written; it is recorded and skipped");
                    entry.error = Some(error);
                }
            },
        }
        entry.at = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        append_checkpoint(state_dir, &entry)?;
        done.insert(key);
    }
    Ok(())
}

/// Moves `path` to `dir/.failed/` after `tried` unfinished attempts, and
/// returns its checkpoint entry.
fn set_aside(
    path: &Path,
    dir: &Path,
    (name, sha256): &(String, String),
    size: u64,
    tried: u32,
) -> Result<ProcessedFile> {
    let failed = dir.join(FAILED_DIR);
    super::files::create_private_dir_all(&failed)?;
    let target = failed.join(name);
    std::fs::rename(path, &target)
        .with_context(|| format!("moving {} to {}", path.display(), target.display()))?;
    Ok(ProcessedFile {
        at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        error: Some(format!(
            "set aside to {}: the service stopped {tried} times while processing it (a crash or a kill); \
             nothing of it was written. Inspect it, then move it back to retry",
            target.display()
        )),
        ..ProcessedFile::unfinished(&(name.clone(), sha256.clone()), size)
    })
}
