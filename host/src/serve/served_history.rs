//! The run history of a served pipeline, and its freshness.
//!
//! A served pipeline never ends, so its history is cut in intervals
//! (`[history] interval`, default one minute, aligned on the clock): each
//! interval in which micro-batches (or stream epochs) committed or failed
//! becomes one row of kind `serve` in `history.sqlite` in the pipeline's
//! state directory, with the records received, written, quarantined and
//! filtered, the micro-batches committed and failed, the plugin versions
//! that ran and the last error. The current interval is written when it
//! ends (by the service's history thread, at most a second late) and at
//! shutdown; it is never written per micro-batch, which would put a
//! database write on the ingest path. `GET …/pipelines/{name}/runs` reads
//! it. Each written interval is judged by the pipeline's `[checks]`
//! (volume, quarantine rate) against the earlier intervals, as `weir run`
//! judges a run against earlier runs; results are in the row, in
//! `weir_check_results_total` and, when not `ok`, sent to the log and the
//! webhook.
//!
//! **Freshness.** With `[checks.freshness] max_age`, a served pipeline
//! that receives no record for longer than `max_age` (counted from its
//! last record, or from the service's start) raises a `freshness` alert
//! once (log, webhook, `weir_check_results_total`), and again only after
//! records have arrived and stopped again.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use anyhow::Result;
use chrono::Datelike;
use serde::Serialize;

use crate::checks::{CheckResult, ChecksSettings, Status};
use crate::config::HistorySettings;
use crate::history::History;

/// What one committed micro-batch adds to its interval.
#[derive(Debug, Clone, Copy)]
pub struct Committed<'a> {
    /// Requests (or stream messages' epochs) it merged.
    pub submissions: usize,
    /// Records received, written, filtered, quarantined.
    pub received: u64,
    /// See `received`.
    pub written: u64,
    /// See `received`.
    pub filtered: u64,
    /// See `received`.
    pub quarantined: u64,
    /// Files it added.
    pub outputs: usize,
    /// From its first record's arrival to its commit, in milliseconds.
    pub latency_ms: f64,
    /// `stage=sha256` of the version each stage ran.
    pub plugin_versions: &'a [String],
}

/// One interval's counts, as recorded (the row's `report`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct IntervalSummary {
    /// The tenant.
    pub tenant: String,
    /// Micro-batches committed.
    pub batches: u64,
    /// Micro-batches that failed (none of their records written).
    pub failed_batches: u64,
    /// Requests (or stream messages' epochs) merged into them.
    pub submissions: u64,
    /// Records received by the committed micro-batches.
    pub received: u64,
    /// Records written.
    pub written: u64,
    /// Records filtered.
    pub filtered: u64,
    /// Records quarantined.
    pub quarantined: u64,
    /// Files added to the sink and quarantine.
    pub outputs: u64,
    /// Longest latency of a micro-batch, from its first record's arrival
    /// to its commit, in milliseconds.
    pub max_latency_ms: f64,
    /// `stage=sha256` of every plugin version that ran.
    pub plugin_versions: BTreeSet<String>,
    /// The last failure.
    pub last_error: Option<String>,
}

/// The interval being counted.
#[derive(Debug)]
struct Window {
    start: SystemTime,
    summary: IntervalSummary,
}

struct State {
    window: Option<Window>,
    /// Windows that ended, waiting for the history thread to write them.
    ended: Vec<Window>,
    /// When the last record arrived (or the service started).
    last_data: SystemTime,
    /// Whether the current silence has been alerted.
    stale_alerted: bool,
}

/// A served pipeline's history and freshness watch.
pub struct ServedHistory {
    pipeline: String,
    tenant: String,
    file: PathBuf,
    interval: Duration,
    settings: HistorySettings,
    checks: ChecksSettings,
    state: Mutex<State>,
    /// The database, opened at the first write; its own lock, so that
    /// counting never waits for a write.
    writer: Mutex<Option<History>>,
    /// Whether an alert is being sent (its webhook may take its retries):
    /// one at a time per pipeline, off the history thread.
    sending: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Makes the interval ids of this process unique: a restart inside an
    /// interval records its own row, not over the earlier one.
    instance: String,
}

impl std::fmt::Debug for ServedHistory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServedHistory")
            .field("pipeline", &self.pipeline)
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

impl ServedHistory {
    /// The history of pipeline `pipeline` of `tenant` in `file`, cut in
    /// `settings.interval`; `checks` gives the freshness limit and the
    /// alert targets.
    pub fn new(
        pipeline: &str,
        tenant: &str,
        file: PathBuf,
        settings: HistorySettings,
        checks: ChecksSettings,
    ) -> ServedHistory {
        ServedHistory {
            pipeline: pipeline.to_string(),
            tenant: tenant.to_string(),
            file,
            interval: settings.interval.max(Duration::from_secs(1)),
            settings,
            checks,
            state: Mutex::new(State {
                window: None,
                ended: Vec::new(),
                last_data: SystemTime::now(),
                stale_alerted: false,
            }),
            writer: Mutex::new(None),
            sending: Default::default(),
            instance: uuid::Uuid::new_v4().simple().to_string()[..8].to_string(),
        }
    }

    /// Counts a committed micro-batch.
    pub fn committed(&self, report: Committed<'_>) {
        let now = SystemTime::now();
        let mut state = self.lock();
        self.roll(&mut state, now);
        state.last_data = now;
        state.stale_alerted = false;
        let summary = &mut self.window(&mut state, now).summary;
        summary.batches += 1;
        summary.submissions += report.submissions as u64;
        summary.received += report.received;
        summary.written += report.written;
        summary.filtered += report.filtered;
        summary.quarantined += report.quarantined;
        summary.outputs += report.outputs as u64;
        summary.max_latency_ms = summary.max_latency_ms.max(report.latency_ms);
        summary
            .plugin_versions
            .extend(report.plugin_versions.iter().cloned());
    }

    /// Counts a micro-batch that failed with `error`.
    pub fn failed(&self, error: &str) {
        let now = SystemTime::now();
        let mut state = self.lock();
        self.roll(&mut state, now);
        state.last_data = now;
        let summary = &mut self.window(&mut state, now).summary;
        summary.failed_batches += 1;
        summary.last_error = Some(crate::secrets::redact(error).into_owned());
    }

    /// Writes the intervals that have ended, judges them (volume,
    /// quarantine rate against earlier intervals) and checks freshness;
    /// the service's history thread calls it every second.
    pub fn tick(&self) {
        let now = SystemTime::now();
        let (ended, stale) = {
            let mut state = self.lock();
            self.roll(&mut state, now);
            (
                std::mem::take(&mut state.ended),
                self.stale(&mut state, now),
            )
        };
        let mut results: Vec<CheckResult> = stale.into_iter().collect();
        results.iter().for_each(|r| self.count(r));
        for window in ended {
            let end = window.start + self.interval;
            results.extend(self.write(&window, end));
        }
        self.alert(results);
    }

    /// Writes the intervals as they stand (at shutdown).
    pub fn flush(&self) {
        let windows: Vec<Window> = {
            let mut state = self.lock();
            let mut windows = std::mem::take(&mut state.ended);
            windows.extend(state.window.take());
            windows
        };
        let now = SystemTime::now();
        let mut results = Vec::new();
        for window in windows {
            let end = (window.start + self.interval).min(now);
            results.extend(self.write(&window, end));
        }
        self.alert(results);
    }

    /// The newest `limit` rows.
    ///
    /// # Errors
    /// The database cannot be read.
    pub fn list(&self, limit: usize) -> Result<Vec<crate::history::RunRecord>> {
        if !self.file.exists() {
            return Ok(Vec::new());
        }
        History::open(&self.file)?.list(limit)
    }

    /// The row whose run id is `run_id` or starts with it (at least 4
    /// characters), with its report.
    ///
    /// # Errors
    /// The database cannot be read, or the prefix names several rows.
    pub fn show(&self, run_id: &str) -> Result<Option<crate::history::RunRecord>> {
        if !self.file.exists() {
            return Ok(None);
        }
        History::open(&self.file)?.show(run_id)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The window of `now`, started when missing.
    fn window<'a>(&self, state: &'a mut State, now: SystemTime) -> &'a mut Window {
        let start = align(now, self.interval);
        state.window.get_or_insert_with(|| Window {
            start,
            summary: IntervalSummary {
                tenant: self.tenant.clone(),
                ..IntervalSummary::default()
            },
        })
    }

    /// Closes the window if `now` is past its end; the history thread
    /// writes it.
    fn roll(&self, state: &mut State, now: SystemTime) {
        let due = state
            .window
            .as_ref()
            .is_some_and(|w| now >= w.start + self.interval);
        if due {
            let window = state.window.take().expect("due");
            state.ended.push(window);
        }
    }

    /// Writes `window` (ended at `end`) and judges it; returns the results
    /// that are not `ok`.
    fn write(&self, window: &Window, end: SystemTime) -> Vec<CheckResult> {
        if !self.settings.enabled {
            return Vec::new();
        }
        let mut writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let outcome = (|| -> Result<Vec<CheckResult>> {
            if writer.is_none() {
                *writer = Some(History::open(&self.file)?);
            }
            let history = writer.as_ref().expect("opened");
            let started_at = rfc3339(window.start);
            let run_id = format!(
                "serve-{}-{}",
                humantime::format_rfc3339_seconds(window.start)
                    .to_string()
                    .replace(['-', ':'], ""),
                self.instance
            );
            let summary = serde_json::to_string(&window.summary)?;
            let s = &window.summary;
            history.interval(&crate::history::Interval {
                run_id: &run_id,
                pipeline: &self.pipeline,
                started_at: &started_at,
                ended_at: &rfc3339(end),
                duration_ms: end
                    .duration_since(window.start)
                    .unwrap_or_default()
                    .as_millis() as u64,
                read: s.received,
                written: s.written,
                quarantined: s.quarantined,
                filtered: s.filtered,
                batches: s.batches,
                failed_batches: s.failed_batches,
                error: s.last_error.as_deref(),
                summary: &summary,
            })?;
            // Volume and quarantine rate, against the earlier intervals.
            let observation = crate::checks::Observation {
                weekday: chrono::DateTime::<chrono::Utc>::from(window.start)
                    .weekday()
                    .num_days_from_monday() as u8,
                read: s.received,
                written: s.written,
                quarantined: s.quarantined,
                ..crate::checks::Observation::default()
            };
            let previous = history.observations(self.checks.history_needed())?;
            let results = crate::checks::evaluate(&self.checks, &observation, &previous);
            history.record_checks(&run_id, &observation, &results)?;
            history.prune(self.settings.keep_runs, self.settings.keep_days)?;
            Ok(results)
        })();
        match outcome {
            Ok(results) => {
                for result in &results {
                    self.count(result);
                }
                results
                    .into_iter()
                    .filter(|r| r.status != Status::Ok)
                    .collect()
            }
            Err(error) => {
                tracing::warn!(pipeline = %self.pipeline, "run history: {error:#}");
                *writer = None;
                Vec::new()
            }
        }
    }

    /// The freshness result, once per silence longer than the limit.
    fn stale(&self, state: &mut State, now: SystemTime) -> Option<CheckResult> {
        let check = self.checks.freshness.as_ref()?;
        let silent = now.duration_since(state.last_data).unwrap_or_default();
        if state.stale_alerted || silent <= check.max_age {
            return None;
        }
        state.stale_alerted = true;
        let mut result = crate::checks::freshness(
            check,
            silent,
            format!(
                "no record received for {} (limit {})",
                humantime::format_duration(Duration::from_secs(silent.as_secs())),
                humantime::format_duration(check.max_age)
            ),
        );
        // A served pipeline has no run to fail.
        result.fails_run = false;
        Some(result)
    }

    fn count(&self, result: &CheckResult) {
        crate::checks::count(&self.tenant, &self.pipeline, result);
    }

    /// Sends `results` (not `ok`) to the log and the webhook on a thread of
    /// its own (the webhook may take its retries), at most one at a time
    /// per pipeline: results that come while one is being sent are logged
    /// only.
    fn alert(&self, results: Vec<CheckResult>) {
        if results.is_empty() {
            return;
        }
        let run_id = format!("serve-{}-{}", self.pipeline, self.instance);
        let Some(alert) =
            crate::alert::Alert::from_results(&self.pipeline, &run_id, None, &results)
        else {
            return;
        };
        use std::sync::atomic::Ordering;
        if self.sending.swap(true, Ordering::AcqRel) {
            let log_only = ChecksSettings {
                webhook: None,
                ..self.checks.clone()
            };
            let _ = crate::alert::raise(&log_only, &alert);
            tracing::warn!(pipeline = %self.pipeline, "an alert is still being sent; this one went to the log only");
            return;
        }
        let (checks, sending, pipeline) = (
            self.checks.clone(),
            self.sending.clone(),
            self.pipeline.clone(),
        );
        let spawned = std::thread::Builder::new()
            .name("weir-alert".into())
            .spawn(move || {
                if let Err(error) = crate::alert::raise(&checks, &alert) {
                    tracing::warn!(%pipeline, "data check alert: {error:#}");
                }
                sending.store(false, Ordering::Release);
            });
        if let Err(error) = spawned {
            tracing::warn!(pipeline = %self.pipeline, "data check alert not sent: {error}");
            self.sending.store(false, Ordering::Release);
        }
    }
}

/// `t` rounded down to a multiple of `interval` since the Unix epoch.
fn align(t: SystemTime, interval: Duration) -> SystemTime {
    let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let step = interval.as_millis().max(1);
    let floor = since.as_millis() / step * step;
    SystemTime::UNIX_EPOCH + Duration::from_millis(floor as u64)
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}
