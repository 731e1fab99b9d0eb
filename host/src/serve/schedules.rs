//! The scheduled pipelines of a service: loading each `[[schedules]]`
//! entry (a tenant's confined to what the tenant may use), one thread per
//! schedule driving it on the system clock ([`super::cron`]), and
//! backfills started through the API, which never overlap the schedule's
//! own runs.
//!
//! **What a tenant's scheduled pipeline may use.** Everything it names
//! must be inside the tenant's directory (as for its served pipelines);
//! its extract plugin may be granted outbound HTTP only to hosts the
//! operator lists in the tenant's `http_allow_hosts`; and it may not reach
//! PostgreSQL, NATS, a lineage endpoint or a webhook, which would connect
//! with the service's network and credentials. The implicit tenant
//! (top-level `[[schedules]]`, the operator's own) may use everything
//! `weir run` may.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Result;
use serde::Serialize;

use crate::backfill::{BackfillOptions, BackfillSummary};
use crate::config::{
    ConfigError, ConfigErrors, PipelineConfig, SinkFormat, SourceFormat, WriteMode,
};

use super::confine::{Outputs, outside_paths};
use super::cron::{Schedule, ScheduleConfig, Stop, SystemClock};

/// What the schedules of one tenant may use. It is checked when the
/// service loads and again on the text each run reads (each partition of
/// a backfill too): the pipeline file may change between runs.
#[derive(Debug, Clone)]
pub struct Confinement {
    /// The tenant's directory, which every path must be inside.
    pub dir: PathBuf,
    /// The hosts its extract plugins may be granted.
    pub http_allow_hosts: Vec<String>,
    /// Its secrets (name → source, `file:` paths absolute), given to each
    /// run's config; its pipeline files may not declare their own.
    pub secrets: BTreeMap<String, String>,
}

/// A backfill started through the API, and how it went.
#[derive(Debug, Clone, Serialize)]
pub struct BackfillJob {
    /// The first partition.
    pub from: String,
    /// The last partition, included.
    pub to: String,
    /// `running`, `done` (every partition ran; some may have failed, see
    /// `failed`) or `error` (it could not start, see `error`).
    pub state: &'static str,
    /// Partitions whose run failed, when done.
    pub failed: usize,
    /// What it did, when done.
    pub summary: Option<BackfillSummary>,
    /// Why it could not run.
    pub error: Option<String>,
}

/// Why a backfill did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Another backfill of the schedule is running.
    #[error("a backfill of this schedule is running; wait for it to end")]
    Running,
    /// The pipeline is not partitioned or the range is malformed.
    #[error("{0}")]
    Invalid(String),
}

/// A schedule of a service: its [`Schedule`], its pipeline file, and its
/// latest API-started backfill.
pub struct Scheduled {
    /// The tenant it belongs to.
    pub tenant: String,
    /// The schedule.
    pub schedule: Schedule,
    /// Its pipeline file (resolved against the service file or the
    /// tenant's directory).
    pub file: PathBuf,
    /// Held by each run of the schedule and by each backfill, so that they
    /// never write the same outputs at once.
    run_lock: Mutex<()>,
    backfill: Mutex<Option<BackfillJob>>,
    /// The thread of the latest API-started backfill, joined at shutdown.
    backfill_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    confinement: Option<Confinement>,
    /// Set when the service stops: no new run or partition starts.
    stop: Arc<Stop>,
}

impl std::fmt::Debug for Scheduled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduled")
            .field("name", &self.schedule.name)
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

/// A schedule's state for the API (`GET …/schedules`).
#[derive(Debug, Clone, Serialize)]
pub struct ScheduledStatus {
    /// The schedule's own state.
    #[serde(flatten)]
    pub schedule: super::cron::ScheduleStatus,
    /// The latest backfill started through the API.
    pub backfill: Option<BackfillJob>,
}

impl Scheduled {
    /// Its state.
    pub fn status(&self) -> ScheduledStatus {
        ScheduledStatus {
            schedule: self.schedule.status(),
            backfill: self.backfill.lock().expect("backfill").clone(),
        }
    }

    /// Drives the schedule on the system clock until the service stops,
    /// running its pipeline at each instant (never while a backfill of it
    /// runs). When the schedule cannot go on (its state file cannot be
    /// written, or it panicked), the reason is in its status.
    pub fn drive(&self) {
        let run = |firing: &super::cron::Firing| {
            let Some(_exclusive) = self.exclusive() else {
                anyhow::bail!("the service is stopping");
            };
            let started = std::time::Instant::now();
            let outcome = super::cron::run_pipeline(
                &self.file,
                &self.schedule.timetable,
                firing,
                &|config| self.vet(config),
            );
            let labels = [
                ("tenant", self.tenant.clone()),
                ("schedule", self.schedule.name.clone()),
            ];
            let status = if outcome.is_ok() {
                "succeeded"
            } else {
                "failed"
            };
            metrics::counter!(
                "weir_scheduled_runs_total",
                "tenant" => self.tenant.clone(),
                "schedule" => self.schedule.name.clone(),
                "status" => status
            )
            .increment(1);
            metrics::histogram!("weir_scheduled_run_seconds", &labels)
                .record(started.elapsed().as_secs_f64());
            outcome
        };
        let driven = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.schedule.drive(&SystemClock, &self.stop, &run)
        }));
        let why = match driven {
            Ok(Ok(())) => return,
            Ok(Err(error)) => format!("{error:#}"),
            Err(panic) => format!("panicked: {}", super::cron::panic_message(&*panic)),
        };
        tracing::error!(schedule = %self.schedule.name, "the schedule stopped: {why}");
        self.schedule.record_stopped(why);
    }

    /// Waits for the right to write the schedule's outputs (no run of it
    /// or backfill going); `None` when the service stops first.
    fn exclusive(&self) -> Option<std::sync::MutexGuard<'_, ()>> {
        loop {
            match self.run_lock.try_lock() {
                Ok(guard) => return Some(guard),
                Err(std::sync::TryLockError::Poisoned(p)) => return Some(p.into_inner()),
                Err(std::sync::TryLockError::WouldBlock) => {
                    if self.stop.wait(std::time::Duration::from_millis(100)) {
                        return None;
                    }
                }
            }
        }
    }

    /// Checks a run's pipeline config (what the file says now, for the
    /// partition being run): a file sink a second run would not fail on,
    /// and for a tenant its [`Confinement`], whose secrets it then gets.
    ///
    /// # Errors
    /// Every problem found.
    pub fn vet(&self, config: &mut PipelineConfig) -> Result<(), ConfigErrors> {
        check_config(
            &self.schedule.name,
            config,
            &self.file,
            self.confinement.as_ref(),
        )?;
        if let Some(confinement) = &self.confinement {
            config.secrets = confinement.secrets.clone();
        }
        config.tenant = Some(self.tenant.clone());
        Ok(())
    }

    /// The run history of the schedule's pipeline; for a tenant, only
    /// inside its directory.
    ///
    /// # Errors
    /// The pipeline file is unreadable or malformed, or names a history
    /// outside the tenant's directory.
    pub fn history_file(&self) -> Result<PathBuf> {
        let file = crate::config::history_file_for(&self.file)?;
        if let Some(confinement) = &self.confinement
            && !super::confine::is_inside(&confinement.dir, &file)
        {
            anyhow::bail!(
                "the run history {} is outside the tenant's dir",
                file.display()
            );
        }
        Ok(file)
    }

    /// The run history of the schedule's pipeline, opened; `None` before
    /// its first run.
    ///
    /// # Errors
    /// As [`Scheduled::history_file`], or an unreadable database.
    pub fn history(&self) -> Result<Option<crate::history::History>> {
        let file = self.history_file()?;
        if !file.exists() {
            return Ok(None);
        }
        crate::history::History::open(&file).map(Some)
    }

    /// Waits for the thread of the latest API-started backfill, which
    /// stops between partitions once the service stops.
    pub fn join_backfill(&self) {
        let thread = self.backfill_thread.lock().expect("backfill thread").take();
        if let Some(thread) = thread
            && thread.join().is_err()
        {
            tracing::error!(schedule = %self.schedule.name, "the backfill thread panicked");
        }
    }

    /// Starts a backfill of the schedule's pipeline on its own thread; it
    /// waits for a run of the schedule in progress and holds the next ones
    /// back until it ends. Its progress is in [`Scheduled::status`] and
    /// each partition's run in the pipeline's history.
    ///
    /// # Errors
    /// A backfill of this schedule is already running, the pipeline is not
    /// partitioned, or the range is malformed (checked before starting).
    pub fn start_backfill(
        self: &Arc<Self>,
        options: BackfillOptions,
    ) -> Result<BackfillJob, StartError> {
        let invalid = |e: ConfigErrors| StartError::Invalid(e.to_string());
        let text = crate::config::read_text(&self.file).map_err(invalid)?;
        if !crate::partition::uses_partition(&text) {
            return Err(StartError::Invalid(format!(
                "{} is not partitioned: a backfill runs one run per partition (see docs/backfill.md)",
                self.schedule.config.file.display()
            )));
        }
        let settings = crate::config::partition_settings_of(&text, &self.file).map_err(invalid)?;
        settings
            .range(&options.from, &options.to)
            .map_err(StartError::Invalid)?;
        let job = BackfillJob {
            from: options.from.clone(),
            to: options.to.clone(),
            state: "running",
            failed: 0,
            summary: None,
            error: None,
        };
        {
            let mut current = self.backfill.lock().expect("backfill");
            if current.as_ref().is_some_and(|job| job.state == "running") {
                return Err(StartError::Running);
            }
            *current = Some(job.clone());
        }
        let this = self.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("weir-backfill-{}", self.schedule.name))
            .spawn(move || {
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    let Some(_exclusive) = this.exclusive() else {
                        anyhow::bail!("the service stopped before the backfill could start");
                    };
                    let stop = || this.stop.is_set();
                    let hooks = crate::backfill::Hooks {
                        vet: &|config| this.vet(config),
                        stop: &stop,
                    };
                    crate::backfill::backfill_with(&this.file, &options, hooks)
                }))
                .unwrap_or_else(|panic| {
                    Err(anyhow::anyhow!(
                        "the backfill panicked: {}",
                        super::cron::panic_message(&*panic)
                    ))
                });
                this.end_backfill(outcome);
            });
        match spawned {
            Ok(thread) => {
                let previous = self
                    .backfill_thread
                    .lock()
                    .expect("backfill thread")
                    .replace(thread);
                // The previous one has ended (its job is not running).
                if let Some(previous) = previous {
                    let _ = previous.join();
                }
            }
            Err(error) => {
                let message = format!("starting the backfill: {error}");
                self.end_backfill(Err(anyhow::anyhow!(message.clone())));
                return Err(StartError::Invalid(message));
            }
        }
        Ok(job)
    }

    /// Records how the running backfill ended.
    fn end_backfill(&self, outcome: Result<BackfillSummary>) {
        let mut current = self.backfill.lock().expect("backfill");
        let Some(job) = current.as_mut() else {
            return;
        };
        match outcome {
            Ok(summary) => {
                job.state = "done";
                job.failed = summary.failed();
                job.summary = Some(summary);
            }
            Err(error) => {
                job.state = "error";
                job.error = Some(format!("{error:#}"));
            }
        }
        tracing::info!(
            schedule = %self.schedule.name,
            from = %job.from,
            to = %job.to,
            state = job.state,
            failed = job.failed,
            "backfill ended"
        );
    }
}

/// Loads the schedules `configs` of `tenant` (`dir`: the directory their
/// files are relative to; `confinement`: for a tenant other than the
/// implicit one), keeping their state in `state_dir/schedules`; they stop
/// when `stop` is set. Problems go to `errors` with keys under `key` of
/// the service file `service_file`.
#[allow(clippy::too_many_arguments)]
pub fn load(
    service_file: &Path,
    tenant: &str,
    key: &str,
    dir: &Path,
    configs: &[ScheduleConfig],
    confinement: Option<Confinement>,
    state_dir: &Path,
    stop: &Arc<Stop>,
    errors: &mut Vec<ConfigError>,
) -> BTreeMap<String, Arc<Scheduled>> {
    let mut schedules = BTreeMap::new();
    for (i, config) in configs.iter().enumerate() {
        let name = config.name_or_stem();
        let file = dir.join(&config.file);
        let schedule = match Schedule::new(&name, config.clone(), &state_dir.join("schedules")) {
            Ok(schedule) => schedule,
            Err(message) => {
                errors.push(ConfigError {
                    file: service_file.to_path_buf(),
                    key: format!("{key}[{i}].cron"),
                    message,
                });
                continue;
            }
        };
        match check_pipeline(&schedule, &file, confinement.as_ref()) {
            Ok(()) => {}
            Err(ConfigErrors(found)) => {
                errors.extend(found);
                continue;
            }
        }
        schedules.insert(
            name,
            Arc::new(Scheduled {
                tenant: tenant.to_string(),
                schedule,
                file,
                run_lock: Mutex::new(()),
                backfill: Mutex::new(None),
                backfill_thread: Mutex::new(None),
                confinement: confinement.clone(),
                stop: stop.clone(),
            }),
        );
    }
    schedules
}

/// Reads the pipeline file of `schedule` (for the partition of now, when
/// partitioned) and checks it ([`check_config`]); each run checks again.
fn check_pipeline(
    schedule: &Schedule,
    file: &Path,
    confinement: Option<&Confinement>,
) -> Result<(), ConfigErrors> {
    let text = crate::config::read_text(file)?;
    let partitioned = crate::partition::uses_partition(&text);
    let config = if partitioned {
        let settings = crate::config::partition_settings_of(&text, file)?;
        let start = schedule
            .timetable
            .partition_start(chrono::Utc::now(), settings.every);
        let key = settings
            .key(start)
            .map_err(|message| ConfigError::whole(file, "partition", message))?;
        PipelineConfig::from_toml_for(&text, file, Some(&key))?
    } else {
        PipelineConfig::from_toml(&text, file)?
    };
    check_config(&schedule.name, &config, file, confinement)
}

/// What a run of schedule `schedule` needs of its pipeline's `config`
/// (read from `file`): a file sink that a second run would not fail on,
/// and, for a tenant, `confinement` (every path inside its directory, the
/// paths a `weir run` derives from them too; no PostgreSQL, NATS, lineage
/// URL or webhook; outbound HTTP only to the allowed hosts).
fn check_config(
    schedule: &str,
    config: &PipelineConfig,
    file: &Path,
    confinement: Option<&Confinement>,
) -> Result<(), ConfigErrors> {
    let partitioned = config.partition_key.is_some();
    let mut problems = Vec::new();
    let mut problem = |key: &str, message: String| {
        problems.push(ConfigError {
            file: file.to_path_buf(),
            key: key.to_string(),
            message,
        });
    };
    if !partitioned
        && !matches!(config.sink.format, SinkFormat::Postgres | SinkFormat::Nats)
        && config.sink.write_mode() == WriteMode::ErrorIfExists
    {
        problem(
            "sink.mode",
            format!(
                "schedule `{schedule}` runs this pipeline again and again, but its sink refuses to replace {} (the default mode); set mode = \"overwrite\", or partition the pipeline (docs/backfill.md)",
                config.sink.path
            ),
        );
    }
    if let Some(confinement) = confinement {
        let everything = Outputs {
            sink: true,
            quarantine: true,
            run_state: true,
        };
        for (key, path) in outside_paths(config, file, everything, &confinement.dir) {
            problem(
                &key,
                format!(
                    "{} is outside the tenant's dir {}; a tenant's pipelines may only use files inside it",
                    path.display(),
                    confinement.dir.display()
                ),
            );
        }
        if !config.secrets.is_empty() {
            problem(
                "secrets",
                "a tenant's pipeline may not declare secrets: it would make the service read its environment or files; the operator gives the tenant's secrets in the service file (`secrets` of its [[tenants]] table)".to_string(),
            );
        }
        let network = "would connect with the service's network and credentials, which a tenant's scheduled pipeline may not use";
        if config.source.format == SourceFormat::Postgres {
            problem("source.format", format!("reading PostgreSQL {network}"));
        }
        if matches!(config.sink.format, SinkFormat::Postgres | SinkFormat::Nats) {
            problem(
                "sink.format",
                format!("writing to PostgreSQL or NATS {network}"),
            );
        }
        if config.lineage.url.is_some() {
            problem(
                "lineage.url",
                format!("posting lineage events {network}; use `lineage.file`"),
            );
        }
        if config.checks.webhook.is_some() {
            problem(
                "checks.webhook",
                format!(
                    "posting alerts {network}; the check results are in the run history and the API"
                ),
            );
        }
        if let Some(http) = config
            .source
            .extract
            .as_ref()
            .and_then(|e| e.capabilities.http.as_ref())
        {
            for host in &http.allow_hosts {
                if !confinement.http_allow_hosts.contains(host) {
                    problem(
                        "source.extract.capabilities.http.allow_hosts",
                        format!(
                            "`{host}` is not among the hosts the operator allows this tenant (`http_allow_hosts` in the service file: {:?})",
                            confinement.http_allow_hosts
                        ),
                    );
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ConfigErrors(problems))
    }
}

/// Starts one thread per schedule of `schedules`, each driving it until
/// the service stops.
///
/// # Errors
/// A thread that cannot be started.
pub fn start<'a>(
    schedules: impl Iterator<Item = &'a Arc<Scheduled>>,
) -> Result<Vec<std::thread::JoinHandle<()>>> {
    schedules
        .map(|scheduled| {
            let scheduled = scheduled.clone();
            Ok(std::thread::Builder::new()
                .name(format!("weir-schedule-{}", scheduled.schedule.name))
                .spawn(move || scheduled.drive())?)
        })
        .collect()
}
