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

pub mod ack;
pub mod api;
pub mod arrivals;
pub mod auth;
pub mod background;
pub mod body;
pub mod config;
pub mod confine;
pub mod connections;
pub mod cron;
pub mod dashboard;
pub mod delivery;
pub mod drop_dir;
pub mod files;
pub mod http;
pub mod ingest;
pub mod ledger;
pub mod live;
pub mod metrics;
pub mod quarantine_log;
pub mod quota;
pub mod scheduler;
pub mod schedules;
pub mod served_history;
pub mod session;
pub mod stateful;
pub mod stream;
pub mod tenant;

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

use self::auth::TokenStore;
use self::config::{DEFAULT_TENANT, HostedPipeline, Quotas, ServiceConfig};
use self::live::LivePipeline;
use self::tenant::Tenant;

/// A loaded service: its pipelines, ready to run.
pub struct Service {
    /// The parsed service file.
    pub config: ServiceConfig,
    /// The service file.
    pub file: PathBuf,
    base_dir: PathBuf,
    state_dir: PathBuf,
    tenants: BTreeMap<String, Arc<Tenant>>,
    tokens: TokenStore,
    sessions: session::Sessions,
    started: Instant,
    ready: AtomicBool,
    draining: AtomicBool,
    buffers: body::BufferBudget,
    /// Set at shutdown: the schedules and their backfills start nothing
    /// new.
    stop_schedules: Arc<cron::Stop>,
    /// The HTTP connections open and inside a request.
    connections: Arc<connections::Connections>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("file", &self.file)
            .field("tenants", &self.tenants.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Service {
    /// Reads the service file at `file` and loads every tenant, pipeline
    /// and plugin.
    ///
    /// # Errors
    /// Every problem in the service file and the pipeline files, each with
    /// its file and key ([`ConfigErrors`]): among them a tenant's pipeline
    /// reaching outside the tenant's directory (a plugin, a reference table,
    /// the source sample, the sink or the quarantine). Also a pipeline that
    /// cannot be served (no fixed schema, an `extract` source, a sink path
    /// that is a file), or an unreadable token state file.
    pub fn load(file: &Path) -> Result<Service> {
        let config = ServiceConfig::from_file(file)?;
        let base_dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
        let state_dir = base_dir.join(&config.service.state_dir);
        files::create_private_dir_all(&state_dir)?;
        let mut errors = Vec::new();
        let mut tenants = BTreeMap::new();
        let scheduler = scheduler::FairScheduler::new(config.service.running_batches());
        let stop_schedules = Arc::new(cron::Stop::default());
        let connections = Arc::new(connections::Connections::default());
        if !config.pipelines.is_empty() || !config.schedules.is_empty() {
            // The implicit tenant keeps the state layout of a single-tenant
            // service: STATE_DIR/PIPELINE.
            let scheduled = schedules::load(
                file,
                DEFAULT_TENANT,
                "schedules",
                &base_dir,
                &config.schedules,
                None,
                &state_dir,
                &stop_schedules,
                &mut errors,
            );
            let tenant = load_tenant(
                file,
                DEFAULT_TENANT,
                "pipelines",
                &base_dir,
                false,
                &config.pipelines,
                tenant::Quota::new(
                    DEFAULT_TENANT,
                    Quotas::unlimited(config.service.max_body_bytes),
                    scheduler.clone(),
                ),
                &state_dir,
                &connections,
                &mut errors,
            )?
            .with_schedules(scheduled);
            tenants.insert(DEFAULT_TENANT.to_string(), Arc::new(tenant));
        }
        for (t, tenant) in config.tenants.iter().enumerate() {
            let dir = base_dir.join(&tenant.dir);
            let tenant_state = state_dir.join("tenants").join(&tenant.name);
            let scheduled = schedules::load(
                file,
                &tenant.name,
                &format!("tenants[{t}].schedules"),
                &dir,
                &tenant.schedules,
                Some(schedules::Confinement {
                    dir: dir.clone(),
                    http_allow_hosts: tenant.http_allow_hosts.clone(),
                    // `file:` paths are relative to the service file; the
                    // pipelines that use them are elsewhere.
                    secrets: tenant
                        .secrets
                        .iter()
                        .map(|(name, source)| {
                            let source = match source.strip_prefix("file:") {
                                Some(path) => {
                                    format!("file:{}", base_dir.join(path).display())
                                }
                                None => source.clone(),
                            };
                            (name.clone(), source)
                        })
                        .collect(),
                }),
                &tenant_state,
                &stop_schedules,
                &mut errors,
            );
            let loaded = load_tenant(
                file,
                &tenant.name,
                &format!("tenants[{t}].pipelines"),
                &dir,
                true,
                &tenant.pipelines,
                tenant::Quota::new(&tenant.name, tenant.quotas, scheduler.clone()),
                &tenant_state,
                &connections,
                &mut errors,
            )?
            .with_schedules(scheduled);
            tenants.insert(tenant.name.clone(), Arc::new(loaded));
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(errors).into());
        }
        let tokens = TokenStore::load(&config, &state_dir)?;
        let buffers = body::BufferBudget::new(config.service.max_buffered_bytes);
        Ok(Service {
            config,
            file: file.to_path_buf(),
            base_dir,
            state_dir,
            tenants,
            tokens,
            sessions: session::Sessions::default(),
            started: Instant::now(),
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            buffers,
            stop_schedules,
            connections,
        })
    }

    /// The service's budget of request-body bytes in memory
    /// ([`config::ServiceSettings::max_buffered_bytes`]).
    pub fn buffers(&self) -> &body::BufferBudget {
        &self.buffers
    }

    /// The tenants by name (`default` holds the top-level `[[pipelines]]`).
    pub fn tenants(&self) -> &BTreeMap<String, Arc<Tenant>> {
        &self.tenants
    }

    /// One tenant.
    pub fn tenant(&self, name: &str) -> Option<&Arc<Tenant>> {
        self.tenants.get(name)
    }

    /// Pipeline `name` of tenant `tenant`.
    pub fn pipeline(&self, tenant: &str, name: &str) -> Option<&Arc<LivePipeline>> {
        self.tenants.get(tenant)?.pipeline(name)
    }

    /// Every hosted pipeline of every tenant.
    pub fn all_pipelines(&self) -> impl Iterator<Item = &Arc<LivePipeline>> {
        self.tenants.values().flat_map(|t| t.pipelines().values())
    }

    /// The API tokens.
    pub fn tokens(&self) -> &TokenStore {
        &self.tokens
    }

    /// The dashboard's browser sessions.
    pub fn sessions(&self) -> &session::Sessions {
        &self.sessions
    }

    /// Where the service keeps its state (checkpoints, replays, tokens).
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
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
        for live in self.all_pipelines() {
            batchers.push(live.start());
            if let Some(watcher) = live.pipeline().watch_plugins(debounce)? {
                watchers.push(watcher);
            }
            if live.stream_settings().is_some() {
                let live = live.clone();
                let stop = stop_rx.clone();
                drop_dirs.spawn(async move {
                    if let Err(error) = stream::run(live.clone(), stop).await {
                        tracing::error!(pipeline = %live.name, error = format!("{error:#}"), "the stream consumer stopped");
                    }
                });
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
        let schedule_threads =
            schedules::start(self.tenants.values().flat_map(|t| t.schedules().values()))?;
        // Writes each served pipeline's ended history interval and checks
        // its freshness, every second until the service stops.
        let history_thread = {
            let this = self.clone();
            std::thread::Builder::new()
                .name("weir-history".into())
                .spawn(move || {
                    while !this.stop_schedules.wait(Duration::from_secs(1)) {
                        for live in this.all_pipelines() {
                            live.history().tick();
                        }
                    }
                })?
        };
        self.ready.store(true, Ordering::Release);
        let address = listener.local_addr()?;
        tracing::info!(%address, tenants = self.tenants.len(), pipelines = self.all_pipelines().count(), auth = self.tokens.enabled(), "weir serve is listening");

        let router = api::router(self.clone());
        let this = self.clone();
        let server = http::serve(
            listener,
            router,
            &self.config.service,
            self.connections.clone(),
            stop_rx.clone(),
        );
        let trigger = async move {
            shutdown.await;
            tracing::info!("shutting down: no new records; flushing what was accepted");
            this.draining.store(true, Ordering::Release);
            for live in this.all_pipelines() {
                live.close();
            }
            this.stop_schedules.set();
            let _ = stop_tx.send(true);
        };
        let timeout = Duration::from_millis(self.config.service.shutdown_timeout_ms);
        let drain = async {
            server.await.context("serving HTTP")?;
            while drop_dirs.join_next().await.is_some() {}
            for batcher in batchers {
                batcher.await.context("a batcher panicked")?;
            }
            // A scheduled run (or backfill partition) in progress ends
            // before its thread does.
            let this = self.clone();
            tokio::task::spawn_blocking(move || {
                if history_thread.join().is_err() {
                    tracing::error!("the history thread panicked");
                }
                // The micro-batches have all committed: the last interval.
                for live in this.all_pipelines() {
                    live.history().flush();
                }
                for thread in schedule_threads {
                    if thread.join().is_err() {
                        tracing::error!("a schedule's thread panicked");
                    }
                }
                for scheduled in this.tenants.values().flat_map(|t| t.schedules().values()) {
                    scheduled.join_backfill();
                }
            })
            .await
            .context("joining the schedules")?;
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
    // The service file's `listen` is checked at load; an override here too.
    if !service.tokens.enabled()
        && let Ok(socket) = address.parse::<std::net::SocketAddr>()
        && !socket.ip().is_loopback()
    {
        anyhow::bail!(
            "--listen {address} is reachable from other machines but {} configures no API token; set service.operator_token_sha256 and tenant tokens (`weir token`), or listen on 127.0.0.1",
            file.display()
        );
    }
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
            "weir serve: {} pipeline(s) of {} tenant(s) on http://{} (Ctrl-C to stop)",
            service.all_pipelines().count(),
            service.tenants.len(),
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

/// Loads the pipelines of one tenant (`dir`: the tenant's directory, which
/// its pipelines must stay inside when `confined`); problems go to `errors`
/// with keys under `key`.
#[allow(clippy::too_many_arguments)]
fn load_tenant(
    file: &Path,
    name: &str,
    key: &str,
    dir: &Path,
    confined: bool,
    hosted_pipelines: &[HostedPipeline],
    quota: tenant::Quota,
    state_dir: &Path,
    connections: &Arc<connections::Connections>,
    errors: &mut Vec<ConfigError>,
) -> Result<Tenant> {
    let quota = Arc::new(quota);
    let mut pipelines = BTreeMap::new();
    for (i, hosted) in hosted_pipelines.iter().enumerate() {
        let path = dir.join(&hosted.file);
        let loaded = crate::config::PipelineConfig::from_file(&path).and_then(|config| {
            // Refused before anything is resolved: a tenant's file must
            // not make weir read an environment variable or a file.
            if confined && !config.secrets.is_empty() {
                return Err(ConfigError::whole(
                    &path,
                    "secrets",
                    "a tenant's pipeline may not declare secrets; the operator gives a tenant's scheduled pipelines theirs in the service file (`secrets` of its [[tenants]] table)",
                ));
            }
            if confined && config.checks.webhook.is_some() {
                return Err(ConfigError::whole(
                    &path,
                    "checks.webhook",
                    "a tenant's pipeline may not post alerts to a URL: that would connect with the service's network; its check results are in its history, the log and the metrics",
                ));
            }
            Pipeline::build_for(config, &path, crate::config::Purpose::Serve)
        });
        let pipeline = match loaded {
            Ok(pipeline) => pipeline,
            Err(ConfigErrors(found)) => {
                errors.extend(found);
                continue;
            }
        };
        if pipelines.contains_key(&pipeline.name) {
            errors.push(ConfigError {
                file: file.to_path_buf(),
                key: format!("{key}[{i}].file"),
                message: format!(
                    "a second pipeline named `{}` in tenant `{name}`; names must be unique (set [pipeline] name)",
                    pipeline.name
                ),
            });
            continue;
        }
        let mut hosted = hosted.clone();
        hosted.drop_dir = hosted.drop_dir.map(|d| dir.join(d));
        hosted.sink_path = hosted.sink_path.map(|d| dir.join(d));
        hosted.quarantine_path = hosted.quarantine_path.map(|d| dir.join(d));
        if confined {
            let outputs = confine::Outputs {
                sink: hosted.sink_path.is_none(),
                quarantine: hosted.quarantine_path.is_none(),
                run_state: false,
            };
            let outside = confine::outside_paths(pipeline.config(), &pipeline.file, outputs, dir);
            if !outside.is_empty() {
                errors.extend(outside.into_iter().map(|(what, path)| ConfigError {
                    file: pipeline.file.clone(),
                    key: what,
                    message: format!(
                        "{} is outside tenant `{name}`'s dir {}; a tenant's pipelines may only use files inside it",
                        path.display(),
                        dir.display()
                    ),
                }));
                continue;
            }
        }
        let live = LivePipeline::new(pipeline, hosted, state_dir, quota.clone())
            .map(|live| live.with_connections(connections.clone()))
            .with_context(|| format!("serving {}", path.display()))?;
        pipelines.insert(live.name.clone(), Arc::new(live));
    }
    Ok(Tenant::new(dir.to_path_buf(), quota, pipelines))
}
