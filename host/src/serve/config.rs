//! The service file (TOML) of `weir serve`: where to listen, where to keep
//! state, and which pipeline files to host with their serve-mode settings.
//!
//! ```toml
//! [service]
//! listen = "127.0.0.1:7878"
//! state_dir = "weir-state"
//!
//! [[pipelines]]
//! file = "pipeline.toml"
//! linger_ms = 200
//! drop_dir = "incoming"
//! ```
//!
//! Paths are relative to the service file. The reference is
//! `docs/serve.md`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::config::{ConfigErrors, Problems, parse_toml, read_text};

/// A whole service file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Service-wide settings.
    #[serde(default)]
    pub service: ServiceSettings,
    /// The pipelines to host; at least one.
    pub pipelines: Vec<HostedPipeline>,
}

/// `[service]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceSettings {
    /// Address of the HTTP API. Default `127.0.0.1:7878` (loopback only: the
    /// API is unauthenticated, so exposing it is a deliberate choice).
    pub listen: String,
    /// Directory for the drop-directory checkpoints and quarantine-replay
    /// records. Default `weir-state`.
    pub state_dir: PathBuf,
    /// Largest request body accepted, in bytes; larger ones get
    /// `413 Payload Too Large`. Default 16,777,216 (16 MiB).
    pub max_body_bytes: usize,
    /// Quiet period after a plugin file changes before it is reloaded, in
    /// milliseconds. Default 200.
    pub reload_debounce_ms: u64,
    /// On SIGTERM / Ctrl-C, how long to wait for in-flight batches to be
    /// written before exiting anyway, in milliseconds. Default 30,000.
    pub shutdown_timeout_ms: u64,
}

impl Default for ServiceSettings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:7878".into(),
            state_dir: PathBuf::from("weir-state"),
            max_body_bytes: 16 * 1024 * 1024,
            reload_debounce_ms: 200,
            shutdown_timeout_ms: 30_000,
        }
    }
}

/// `[[pipelines]]`: one pipeline file and how it is fed in serve mode.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostedPipeline {
    /// The pipeline file (same format as for `weir run`).
    pub file: PathBuf,
    /// Micro-batching: a batch is cut once it holds this many rows. Default:
    /// the pipeline's `batch_size` (8192 unless set).
    pub max_batch_rows: Option<usize>,
    /// Micro-batching: a batch is cut at most this long after its first
    /// record arrived, in milliseconds, however few rows it holds. Default
    /// 200: a record waits at most 0.2 s for company.
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u64,
    /// A directory whose new files (`.csv`, `.jsonl`/`.ndjson`, `.json`)
    /// are ingested once each. Default: none.
    pub drop_dir: Option<PathBuf>,
    /// Directory the sink appends to, instead of the pipeline file's
    /// `[sink] path` (so that `weir run` and `weir serve` outputs of one
    /// pipeline file stay apart). Default: `[sink] path`.
    pub sink_path: Option<PathBuf>,
    /// Directory of quarantine parts, instead of `[quarantine] path`.
    pub quarantine_path: Option<PathBuf>,
}

fn default_linger_ms() -> u64 {
    200
}

impl HostedPipeline {
    /// The linger time.
    pub fn linger(&self) -> Duration {
        Duration::from_millis(self.linger_ms)
    }
}

impl ServiceConfig {
    /// Reads and checks the service file at `path`.
    ///
    /// # Errors
    /// Every problem found, each with file and key.
    pub fn from_file(path: &Path) -> Result<ServiceConfig, ConfigErrors> {
        let config: ServiceConfig = parse_toml(&read_text(path)?, path)?;
        let mut problems = Problems::new(path);
        config.check(&mut problems, path.parent().unwrap_or(Path::new("")));
        problems.finish()?;
        Ok(config)
    }

    fn check(&self, problems: &mut Problems, base_dir: &Path) {
        if self.service.listen.parse::<SocketAddr>().is_err() {
            problems.add(
                "service.listen",
                format!(
                    "`{}` is not an address like 127.0.0.1:7878",
                    self.service.listen
                ),
            );
        }
        if self.service.max_body_bytes == 0 {
            problems.add("service.max_body_bytes", "must be at least 1");
        }
        if self.pipelines.is_empty() {
            problems.add(
                "pipelines",
                "no pipeline to serve; add a [[pipelines]] table",
            );
        }
        for (i, hosted) in self.pipelines.iter().enumerate() {
            if !base_dir.join(&hosted.file).is_file() {
                problems.add(
                    format!("pipelines[{i}].file"),
                    format!("{} does not exist", base_dir.join(&hosted.file).display()),
                );
            }
            if hosted.max_batch_rows == Some(0) {
                problems.add(
                    format!("pipelines[{i}].max_batch_rows"),
                    "must be at least 1",
                );
            }
            if let Some(dir) = &hosted.drop_dir
                && !base_dir.join(dir).is_dir()
            {
                problems.add(
                    format!("pipelines[{i}].drop_dir"),
                    format!("{} is not a directory", base_dir.join(dir).display()),
                );
            }
        }
    }
}
