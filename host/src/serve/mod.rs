//! `weir serve`: the long-running form of weir.
//!
//! A [`Service`] hosts the pipelines of a service file
//! ([`config::ServiceConfig`]): each becomes a [`live::LivePipeline`] that
//! takes records over HTTP ([`api`]) and from a drop directory
//! ([`drop_dir`]), micro-batches them and commits each batch to its sink
//! and quarantine before acknowledging. Plugin files are watched and
//! hot-reloaded ([`crate::plugin::PluginWatcher`]); the admin API steers
//! and observes everything; `/metrics` speaks Prometheus ([`metrics`]).
//!
//! Shutdown (SIGTERM, Ctrl-C, or the future given to [`Service::run`])
//! stops taking connections and records, waits for in-flight requests,
//! flushes every queued record and closes the sinks: whatever was
//! acknowledged is on disk.

pub mod api;
pub mod background;
pub mod config;
pub mod drop_dir;
pub mod ingest;
pub mod live;
pub mod metrics;
pub mod quarantine_log;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::config::{ConfigError, ConfigErrors};
use crate::pipeline::{Pipeline, Stage};
use crate::plugin::PluginWatcher;

use self::config::ServiceConfig;
use self::live::LivePipeline;

/// A loaded service: its pipelines, ready to run.
pub struct Service {
    /// The parsed service file.
    pub config: ServiceConfig,
    /// The service file.
    pub file: PathBuf,
    base_dir: PathBuf,
    pipelines: BTreeMap<String, Arc<LivePipeline>>,
    started: Instant,
    ready: AtomicBool,
    draining: AtomicBool,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("file", &self.file)
            .field("pipelines", &self.pipelines.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Service {
    /// Reads the service file at `file` and loads every pipeline and plugin.
    ///
    /// # Errors
    /// Every problem in the service file and the pipeline files, each with
    /// its file and key ([`ConfigErrors`]), or a pipeline that cannot be
    /// served (no fixed schema, an `extract` source, a sink path that is a
    /// file).
    pub fn load(file: &Path) -> Result<Service> {
        let config = ServiceConfig::from_file(file)?;
        let base_dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
        let state_dir = base_dir.join(&config.service.state_dir);
        let mut errors = Vec::new();
        let mut pipelines = BTreeMap::new();
        for (i, hosted) in config.pipelines.iter().enumerate() {
            let path = base_dir.join(&hosted.file);
            match Pipeline::load_for(&path, crate::config::Purpose::Serve) {
                Ok(pipeline) => {
                    if pipelines.contains_key(&pipeline.name) {
                        errors.push(ConfigError {
                            file: file.to_path_buf(),
                            key: format!("pipelines[{i}].file"),
                            message: format!(
                                "a second pipeline named `{}`; names must be unique (set [pipeline] name)",
                                pipeline.name
                            ),
                        });
                        continue;
                    }
                    let mut hosted = hosted.clone();
                    hosted.drop_dir = hosted.drop_dir.map(|d| base_dir.join(d));
                    hosted.sink_path = hosted.sink_path.map(|d| base_dir.join(d));
                    hosted.quarantine_path = hosted.quarantine_path.map(|d| base_dir.join(d));
                    let live = LivePipeline::new(pipeline, hosted, &state_dir)
                        .with_context(|| format!("serving {}", path.display()))?;
                    pipelines.insert(live.name.clone(), Arc::new(live));
                }
                Err(ConfigErrors(found)) => errors.extend(found),
            }
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(errors).into());
        }
        Ok(Service {
            config,
            file: file.to_path_buf(),
            base_dir,
            pipelines,
            started: Instant::now(),
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
        })
    }

    /// The hosted pipelines by name.
    pub fn pipelines(&self) -> &BTreeMap<String, Arc<LivePipeline>> {
        &self.pipelines
    }

    /// One hosted pipeline.
    pub fn pipeline(&self, name: &str) -> Option<&Arc<LivePipeline>> {
        self.pipelines.get(name)
    }

    /// The file a stage's plugin is loaded from; `None` for built-ins.
    pub fn plugin_file(&self, live: &LivePipeline, stage: &Stage) -> Option<PathBuf> {
        (!stage.reference.starts_with("builtin:")).then(|| live.base_dir().join(&stage.reference))
    }

    /// Time since the service was loaded.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Whether every pipeline is taking records.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.draining.load(Ordering::Acquire)
    }

    /// Whether shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// The service file's directory.
    pub fn base_dir(&self) -> &Path {
        &self.base_dir
    }

    /// Serves on `listener` until `shutdown` completes, then drains: stops
    /// accepting connections and records, waits for in-flight requests and
    /// batches (at most `shutdown_timeout_ms`), and returns.
    ///
    /// # Errors
    /// A plugin or drop directory that cannot be watched, an I/O error of
    /// the listener, or a drain that did not finish in time.
    pub async fn run(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        // Install the recorder before the first record so nothing is missed.
        let _ = metrics::handle();
        let debounce = Duration::from_millis(self.config.service.reload_debounce_ms);
        let mut batchers = Vec::new();
        let mut watchers: Vec<PluginWatcher> = Vec::new();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut drop_dirs = tokio::task::JoinSet::new();
        for live in self.pipelines.values() {
            batchers.push(live.start());
            if let Some(watcher) = live.pipeline().watch_plugins(debounce)? {
                watchers.push(watcher);
            }
            if let Some(dir) = live.hosted().drop_dir.clone() {
                let live = live.clone();
                let stop = stop_rx.clone();
                drop_dirs.spawn(async move {
                    if let Err(error) = drop_dir::run(live.clone(), dir, stop).await {
                        tracing::error!(pipeline = %live.name, error = format!("{error:#}"), "the drop directory stopped");
                    }
                });
            }
        }
        self.ready.store(true, Ordering::Release);
        let address = listener.local_addr()?;
        tracing::info!(%address, pipelines = self.pipelines.len(), "weir serve is listening");

        let router = api::router(self.clone());
        let this = self.clone();
        let mut stop_signal = stop_rx.clone();
        let server = axum::serve(listener, router).with_graceful_shutdown(async move {
            let _ = stop_signal.wait_for(|stop| *stop).await;
        });
        let trigger = async move {
            shutdown.await;
            tracing::info!("shutting down: no new records; flushing what was accepted");
            this.draining.store(true, Ordering::Release);
            for live in this.pipelines.values() {
                live.close();
            }
            let _ = stop_tx.send(true);
        };
        let timeout = Duration::from_millis(self.config.service.shutdown_timeout_ms);
        let drain = async {
            server.await.context("serving HTTP")?;
            while drop_dirs.join_next().await.is_some() {}
            for batcher in batchers {
                batcher.await.context("a batcher panicked")?;
            }
            anyhow::Ok(())
        };
        tokio::pin!(drain);
        tokio::select! {
            result = &mut drain => return result,
            () = trigger => {}
        }
        match tokio::time::timeout(timeout, drain).await {
            Ok(result) => {
                drop(watchers);
                tracing::info!("shut down cleanly");
                result
            }
            Err(_) => anyhow::bail!(
                "shutdown did not finish within {} ms; records still queued were not acknowledged",
                timeout.as_millis()
            ),
        }
    }
}

/// Loads the service file at `file`, binds its `listen` address and serves
/// until SIGTERM or Ctrl-C (what `weir serve` runs).
///
/// # Errors
/// As [`Service::load`] and [`Service::run`], or an address in use.
pub fn serve_until_signal(file: &Path, listen: Option<String>) -> Result<()> {
    let service = Service::load(file)?;
    let address = listen.unwrap_or_else(|| service.config.service.listen.clone());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("weir-serve")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&address)
            .await
            .with_context(|| format!("listening on {address}"))?;
        eprintln!(
            "weir serve: {} pipeline(s) on http://{} (Ctrl-C to stop)",
            service.pipelines.len(),
            listener.local_addr()?
        );
        Arc::new(service).run(listener, shutdown_signal()).await
    })
}

/// Completes on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
