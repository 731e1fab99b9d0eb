//! Hot-swappable plugins: a [`PluginSlot`] holds the version a stage runs
//! and replaces it atomically when a new one passes its checks.
//!
//! A batch takes a snapshot with [`PluginSlot::current`] when it starts and
//! uses that version until it ends, so no batch ever mixes versions while a
//! reload happens underneath. A candidate version is compiled (or loaded
//! from the artifact cache), checked against the stage's world and
//! instantiated once with the stage's config and limits, all on the caller's
//! thread (never a request path); only then is it swapped in. A broken,
//! wrong-world or trapping-at-start file is rejected, recorded
//! ([`PluginSlot::status`]) and the current version keeps serving.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use weir::plugin::{Limits, Plugin, PluginKind, PluginSlot};
//! let plugin = Plugin::load("builtin:select", Some(PluginKind::Transform), std::path::Path::new("."))?;
//! let slot = PluginSlot::new(plugin, "tidy", "{}".into(), Limits::default());
//! let before = slot.current();
//! let outcome = slot.reload(&std::fs::read("select-v2.wasm")?);
//! assert!(outcome.is_ok() || slot.current().plugin.sha256() == before.plugin.sha256());
//! # Ok(()) }
//! ```

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use serde::Serialize;

use super::breaker::{BreakerConfig, BreakerStatus, CircuitBreaker};
use super::{Limits, Plugin, PluginKind};
use crate::state::stage::StageState;

/// Previous versions a slot keeps for [`PluginSlot::rollback`].
pub const HISTORY_LEN: usize = 5;

/// One version of a plugin, ready to instantiate.
#[derive(Debug)]
pub struct PluginVersion {
    /// The compiled, checked plugin.
    pub plugin: Arc<Plugin>,
    /// When it started serving.
    pub loaded_at: SystemTime,
}

/// A candidate version that was not swapped in, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rejection {
    /// SHA-256 of the rejected bytes.
    pub sha256: String,
    /// When it was rejected, RFC 3339 UTC.
    pub at: String,
    /// What was wrong: not a component, wrong world, trapped at start...
    pub error: String,
}

/// What a slot serves and how it got there, for logs and the admin API.
#[derive(Debug, Clone, Serialize)]
pub struct SlotStatus {
    /// Plugin reference (file path or `builtin:NAME`).
    pub name: String,
    /// SHA-256 of the current version.
    pub current_sha256: String,
    /// When the current version started serving, RFC 3339 UTC.
    pub loaded_at: String,
    /// SHA-256 of the previous versions, newest first.
    pub history: Vec<String>,
    /// Successful swaps so far.
    pub reloads: u64,
    /// Rejected candidates so far.
    pub rejections: u64,
    /// The most recent rejection, if any.
    pub last_rejection: Option<Rejection>,
    /// Whether the plugin is healthy (its circuit breaker).
    pub health: BreakerStatus,
}

/// The outcome of a successful [`PluginSlot::reload`].
#[derive(Debug, Clone)]
pub struct Swap {
    /// The version now serving.
    pub version: Arc<PluginVersion>,
    /// Whether the bytes were already serving (nothing changed).
    pub unchanged: bool,
    /// Time from receiving the bytes to serving them, compile included.
    pub latency: std::time::Duration,
}

/// A stage's plugin, replaceable while batches run.
pub struct PluginSlot {
    name: String,
    kind: PluginKind,
    stage: String,
    config_json: Arc<str>,
    limits: Limits,
    current: ArcSwap<PluginVersion>,
    /// Serialises reloads and rollbacks; readers never take it.
    history: Mutex<VecDeque<Arc<PluginVersion>>>,
    last_rejection: Mutex<Option<Rejection>>,
    reloads: AtomicU64,
    rejections: AtomicU64,
    breaker: CircuitBreaker,
    grants: super::Grants,
    /// The compile-cache scope of reloads (a tenant's name under `weir
    /// serve`), set once.
    cache_scope: std::sync::OnceLock<String>,
    /// An empty batch of the schema the stage receives, when the pipeline
    /// could probe it at load: candidates are called once on it.
    probe_batch: std::sync::OnceLock<crate::bindings::types::RecordBatch>,
    /// Whether the stage has keyed state: its first version imports
    /// `weir:plugin/state`. A later version may drop it, not gain it.
    stateful: bool,
}

fn now_rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}

impl PluginSlot {
    /// A slot serving `plugin` for stage `stage`; candidates are smoke-tested
    /// with `config_json` and `limits`.
    pub fn new(plugin: Plugin, stage: &str, config_json: Arc<str>, limits: Limits) -> PluginSlot {
        PluginSlot {
            stateful: plugin.uses_state(),
            name: plugin.name().to_string(),
            kind: plugin.kind(),
            stage: stage.to_string(),
            config_json,
            limits,
            current: ArcSwap::from_pointee(PluginVersion {
                plugin: Arc::new(plugin),
                loaded_at: SystemTime::now(),
            }),
            history: Mutex::new(VecDeque::new()),
            last_rejection: Mutex::new(None),
            reloads: AtomicU64::new(0),
            rejections: AtomicU64::new(0),
            breaker: CircuitBreaker::new(BreakerConfig::default()),
            grants: super::Grants::default(),
            cache_scope: std::sync::OnceLock::new(),
            probe_batch: std::sync::OnceLock::new(),
        }
    }

    /// Has every reload candidate called once on `batch` (an empty batch
    /// of the schema the stage receives) in its smoke test: a version that
    /// answers `invalid-config` or `invalid-input` is rejected, as it
    /// would fail the load. The first call wins.
    pub fn set_probe_batch(&self, batch: crate::bindings::types::RecordBatch) {
        let _ = self.probe_batch.set(batch);
    }

    /// Compiles the versions later reloaded into this slot in `scope`'s
    /// part of the compile cache (see [`super::cache`]); the first call
    /// wins.
    pub fn set_cache_scope(&self, scope: &str) {
        let _ = self.cache_scope.set(scope.to_string());
    }

    /// This slot with candidates smoke-tested under `grants` (the stage's
    /// capabilities).
    pub fn with_grants(mut self, grants: super::Grants) -> PluginSlot {
        self.grants = grants;
        self
    }

    /// This slot with its circuit breaker set to `config` (default:
    /// [`BreakerConfig::default`]).
    pub fn with_breaker(mut self, config: BreakerConfig) -> PluginSlot {
        self.breaker = CircuitBreaker::new(config);
        self
    }

    /// The stage's circuit breaker (closed again by every swap).
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }

    /// The version serving now. Hold it for a whole batch.
    pub fn current(&self) -> Arc<PluginVersion> {
        self.current.load_full()
    }

    /// Checks `bytes` as the next version and swaps it in.
    ///
    /// # Errors
    /// A [`Rejection`] (also recorded in [`PluginSlot::status`]) when the
    /// bytes are not a component, target another world, import what weir
    /// does not provide, or fail to instantiate; the current version keeps
    /// serving.
    pub fn reload(&self, bytes: &[u8]) -> Result<Swap, Rejection> {
        let started = Instant::now();
        let mut history = self.history.lock().expect("slot lock");
        let sha256 = super::sha256_hex(bytes);
        let current = self.current();
        if current.plugin.sha256() == sha256 {
            return Ok(Swap {
                version: current,
                unchanged: true,
                latency: started.elapsed(),
            });
        }
        let checked = Plugin::from_bytes_scoped(
            &self.name,
            bytes,
            Some(self.kind),
            self.cache_scope.get().map(String::as_str),
        )
        .map_err(|e| format!("{e:#}"))
        .and_then(|plugin| {
            if plugin.uses_state() && !self.stateful {
                return Err(
                    "this version keeps keyed state (it imports weir:plugin/state) but the stage was started with a version that does not, so it has no state to give it; restart the pipeline to load it"
                        .to_string(),
                );
            }
            let mut instance = plugin
                .instantiate_with(
                    &self.stage,
                    self.config_json.clone(),
                    self.limits,
                    &self.grants,
                    None,
                    None,
                )
                .map_err(|e| format!("smoke test failed: {e}"))?;
            if plugin.uses_state() {
                instance.attach_state(Arc::new(StageState::scratch()));
            }
            if let Some(probe) = self.probe_batch.get() {
                let outcome = match self.kind {
                    PluginKind::Transform => instance.transform(probe).map(|_| ()),
                    _ => instance.validate(probe).map(|_| ()),
                };
                // Only a refusal of the config or the schema rejects the
                // version; other failures are the run's to contain.
                if let Err(super::PluginError::Returned { kind, message }) = outcome
                    && (kind == "invalid-config" || kind == "invalid-input")
                {
                    return Err(format!(
                        "smoke test failed: on an empty batch of the stage's input the new version answers {kind}: {message}"
                    ));
                }
            }
            Ok(plugin)
        });
        let plugin = match checked {
            Ok(plugin) => plugin,
            Err(error) => {
                let rejection = Rejection {
                    sha256,
                    at: now_rfc3339(SystemTime::now()),
                    error,
                };
                self.rejections.fetch_add(1, Ordering::Relaxed);
                *self.last_rejection.lock().expect("slot lock") = Some(rejection.clone());
                tracing::warn!(plugin = %self.name, stage = %self.stage, sha256 = %rejection.sha256, error = %rejection.error, "rejected a new plugin version; the old one keeps serving");
                return Err(rejection);
            }
        };
        let version = Arc::new(PluginVersion {
            plugin: Arc::new(plugin),
            loaded_at: SystemTime::now(),
        });
        let previous = self.current.swap(version.clone());
        history.push_front(previous);
        history.truncate(HISTORY_LEN);
        self.reloads.fetch_add(1, Ordering::Relaxed);
        self.breaker.reset();
        tracing::info!(plugin = %self.name, stage = %self.stage, sha256 = version.plugin.sha256(), "swapped in a new plugin version");
        Ok(Swap {
            version,
            unchanged: false,
            latency: started.elapsed(),
        })
    }

    /// Serves the previous version again; the version rolled back from is
    /// discarded.
    ///
    /// # Errors
    /// When there is no previous version.
    pub fn rollback(&self) -> Result<Arc<PluginVersion>, String> {
        let mut history = self.history.lock().expect("slot lock");
        let previous = history
            .pop_front()
            .ok_or_else(|| format!("`{}` has no previous version", self.name))?;
        self.current.store(previous.clone());
        self.breaker.reset();
        tracing::info!(plugin = %self.name, stage = %self.stage, sha256 = previous.plugin.sha256(), "rolled back");
        Ok(previous)
    }

    /// The slot's current version, history and reload counters.
    pub fn status(&self) -> SlotStatus {
        let current = self.current();
        let history = self.history.lock().expect("slot lock");
        SlotStatus {
            name: self.name.clone(),
            current_sha256: current.plugin.sha256().to_string(),
            loaded_at: now_rfc3339(current.loaded_at),
            history: history
                .iter()
                .map(|v| v.plugin.sha256().to_string())
                .collect(),
            reloads: self.reloads.load(Ordering::Relaxed),
            rejections: self.rejections.load(Ordering::Relaxed),
            last_rejection: self.last_rejection.lock().expect("slot lock").clone(),
            health: self.breaker.status(),
        }
    }
}
