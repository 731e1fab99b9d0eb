//! Cron schedules: the timetable, catch-up, concurrency and retries of
//! one schedule. [`super::schedules`] loads the service file's
//! `[[schedules]]` and drives each on its own thread.
//!
//! `weir serve` runs batch pipelines (`weir run`'s kind:
//! files, PostgreSQL, extract plugins with outbound HTTP) at the instants
//! of a cron pattern in a time zone.
//!
//! ```toml
//! [[schedules]]
//! file = "nightly.toml"         # a pipeline file, partitioned or not
//! cron = "0 2 * * *"            # 5 fields (or 6, seconds first)
//! timezone = "Europe/Paris"     # IANA name; default UTC
//! catch_up = "latest"           # after downtime: none | latest | all
//! concurrency = "skip"          # fires during a run: skip | queue
//! retries = 2                   # a failed run is tried again…
//! retry_backoff = "1m"          # …after 1m, 2m, 4m…
//! ```
//!
//! Instants come from `croner` in the schedule's time zone, so a daily
//! 02:30 in `Europe/Paris` fires at 02:30 local time all year; on the
//! spring-forward day, when 02:30 does not exist, it fires at the first
//! instant after the gap (03:00); on the fall-back day it fires once.
//!
//! **Partitions.** A partitioned pipeline ([`crate::partition`]) run by a
//! schedule processes the last whole partition period before the instant
//! it fires, in the schedule's time zone (a daily run at 02:00 on the 6th
//! processes the 5th), in `overwrite` mode: a retried or repeated run
//! replaces its partition.
//!
//! **State.** The last instant handled (run, given up after its retries, or
//! skipped) is kept in `STATE_DIR/schedules/NAME.json`, written after the
//! run ends, so a service killed mid-run runs that instant again when it
//! restarts (the run resumes from its checkpoint). A schedule seen for the
//! first time starts from now: nothing before it counts as missed.
//!
//! **Catch-up** (after downtime, instants missed while the service was
//! down): `latest` (default) runs only the newest missed instant, `all`
//! runs every missed one (the newest `max_catch_up`, oldest first), `none`
//! runs none. **Concurrency** (instants that come while a run of the same
//! schedule is still going): `skip` (default) drops them, `queue` runs
//! them one after another. Runs of one schedule never overlap: they would
//! write the same outputs.
//!
//! Every run (each retry too) is recorded in the pipeline's run history
//! with kind `scheduled`. Time is read through a [`Clock`], so tests drive
//! a schedule through a daylight-saving change and a downtime in
//! milliseconds.

use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use chrono::{DateTime, NaiveDateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::partition::Every;

/// One `[[schedules]]` entry of the service file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Name in logs, the API and the state file. Default: the pipeline
    /// file's stem.
    pub name: Option<String>,
    /// The pipeline file, relative to the service file.
    pub file: PathBuf,
    /// Cron pattern: 5 fields (minute hour day-of-month month day-of-week)
    /// or 6 (seconds first); `@daily`-style nicknames too.
    pub cron: String,
    /// IANA time zone the pattern is read in. Default `UTC`.
    #[serde(default = "default_timezone")]
    pub timezone: String,
    /// What to run of the instants missed while the service was down.
    #[serde(default)]
    pub catch_up: CatchUp,
    /// With `catch_up = "all"`: the most missed instants run (the newest).
    /// Default 100.
    #[serde(default = "default_max_catch_up")]
    pub max_catch_up: usize,
    /// What to do with instants that come while a run is going.
    #[serde(default)]
    pub concurrency: Concurrency,
    /// Further attempts of a failed run. Default 2.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Wait before the first retry, doubled before each next one
    /// (humantime, e.g. `"30s"`). Default `"1m"`.
    #[serde(
        default = "default_backoff",
        with = "crate::checks::humantime_serde_compat"
    )]
    pub retry_backoff: Duration,
}

impl ScheduleConfig {
    /// `name`, or else the pipeline file's stem.
    pub fn name_or_stem(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            self.file
                .file_stem()
                .map(|stem| stem.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
    }
}

fn default_timezone() -> String {
    "UTC".into()
}
fn default_max_catch_up() -> usize {
    100
}
fn default_retries() -> u32 {
    2
}
fn default_backoff() -> Duration {
    Duration::from_secs(60)
}

/// Instants missed while the service was down.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CatchUp {
    /// Run none of them.
    None,
    /// Run the newest one (default).
    #[default]
    Latest,
    /// Run every one (up to `max_catch_up`, the newest), oldest first.
    All,
}

/// Instants that come while a run of the schedule is going.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Concurrency {
    /// Drop them (default).
    #[default]
    Skip,
    /// Run them after, one after another, oldest first.
    Queue,
}

/// A cron pattern in a time zone.
#[derive(Debug, Clone)]
pub struct Timetable {
    cron: croner::Cron,
    zone: chrono_tz::Tz,
}

/// An instant at most this old when its schedule looks at it is on time,
/// not missed.
const ON_TIME: chrono::TimeDelta = chrono::TimeDelta::seconds(60);

impl Timetable {
    /// Parses `pattern` in time zone `zone`.
    ///
    /// # Errors
    /// A malformed pattern or an unknown time zone, in words.
    pub fn new(pattern: &str, zone: &str) -> Result<Timetable, String> {
        let cron: croner::Cron = pattern
            .parse()
            .map_err(|e| format!("`{pattern}` is not a cron pattern: {e}"))?;
        let zone: chrono_tz::Tz = zone.parse().map_err(|_| {
            format!("`{zone}` is not an IANA time zone (like \"UTC\" or \"Europe/Paris\")")
        })?;
        Ok(Timetable { cron, zone })
    }

    /// The first instant of the pattern strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&t.with_timezone(&self.zone), false)
            .ok()
            .map(|local| local.with_timezone(&Utc))
    }

    /// The instants in `(after, until]`, oldest first, at most `limit` (the
    /// newest).
    pub fn between(
        &self,
        after: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: usize,
    ) -> Vec<DateTime<Utc>> {
        let mut instants = std::collections::VecDeque::new();
        let mut at = after;
        while let Some(next) = self.next_after(at).filter(|n| *n <= until) {
            instants.push_back(next);
            if instants.len() > limit {
                instants.pop_front();
            }
            at = next;
        }
        instants.into()
    }

    /// The local time of `instant` in the schedule's zone.
    pub fn local(&self, instant: DateTime<Utc>) -> NaiveDateTime {
        instant.with_timezone(&self.zone).naive_local()
    }

    /// The start of the partition a run fired at `instant` processes: the
    /// last whole `every` period before it, in the schedule's zone.
    pub fn partition_start(&self, instant: DateTime<Utc>, every: Every) -> NaiveDateTime {
        every.previous(self.local(instant))
    }
}

/// Where time comes from: the system's, or a test's.
pub trait Clock: Send + Sync {
    /// Now.
    fn now(&self) -> DateTime<Utc>;
    /// Waits until `t` (or returns at once if it is past); false when
    /// `stop` was set meanwhile.
    fn wait_until(&self, t: DateTime<Utc>, stop: &Stop) -> bool;
}

/// The system's clock.
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        DateTime::<Utc>::from(std::time::SystemTime::now())
    }

    fn wait_until(&self, t: DateTime<Utc>, stop: &Stop) -> bool {
        loop {
            let left = (t - self.now()).to_std().unwrap_or_default();
            if left.is_zero() {
                return !stop.is_set();
            }
            // Wake at least once a minute: a system clock that jumps is
            // noticed.
            if stop.wait(left.min(Duration::from_secs(60))) {
                return false;
            }
        }
    }
}

/// A stop signal a schedule's waits watch.
#[derive(Debug, Default)]
pub struct Stop {
    set: Mutex<bool>,
    changed: Condvar,
}

impl Stop {
    /// Sets it: waits end, and the schedule stops after its current run.
    pub fn set(&self) {
        *self.set.lock().expect("stop") = true;
        self.changed.notify_all();
    }

    /// Whether it is set.
    pub fn is_set(&self) -> bool {
        *self.set.lock().expect("stop")
    }

    /// Waits at most `timeout`; true when it is (or gets) set.
    pub fn wait(&self, timeout: Duration) -> bool {
        let set = self.set.lock().expect("stop");
        let (set, _) = self
            .changed
            .wait_timeout_while(set, timeout, |set| !*set)
            .expect("stop");
        *set
    }
}

/// One firing of a schedule, as given to the function that runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Firing {
    /// The instant of the pattern it is for.
    pub instant: DateTime<Utc>,
    /// 0 for the first attempt, then 1, 2… for retries.
    pub attempt: u32,
}

/// What a schedule is doing and did, for the API.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScheduleStatus {
    /// The schedule's name.
    pub name: String,
    /// The pipeline file.
    pub file: PathBuf,
    /// The pattern.
    pub cron: String,
    /// The time zone.
    pub timezone: String,
    /// The next instant, RFC 3339 UTC.
    pub next: Option<String>,
    /// The last instant handled.
    pub last: Option<String>,
    /// The instant being run, if a run is going.
    pub running: Option<String>,
    /// How the last handled instant ended: `succeeded`, `failed`.
    pub last_status: Option<String>,
    /// The last error, if the last instant failed.
    pub last_error: Option<String>,
    /// Runs (attempts) that succeeded since the service started.
    pub succeeded: u64,
    /// Attempts that failed since the service started.
    pub failed: u64,
    /// Instants skipped (overlap with `concurrency = "skip"`, or missed
    /// with `catch_up`) since the service started.
    pub skipped: u64,
    /// Why the schedule stopped for good (its state file could not be
    /// written, or its thread panicked); it fires no more until the
    /// service restarts.
    pub stopped: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct SavedState {
    /// RFC 3339.
    last: Option<String>,
}

/// A schedule ready to be driven.
pub struct Schedule {
    /// Its name.
    pub name: String,
    /// Its settings.
    pub config: ScheduleConfig,
    /// Its instants.
    pub timetable: Timetable,
    state_file: PathBuf,
    status: Mutex<ScheduleStatus>,
}

impl Schedule {
    /// A schedule keeping its state in `state_dir/NAME.json`.
    ///
    /// # Errors
    /// A malformed pattern or time zone.
    pub fn new(name: &str, config: ScheduleConfig, state_dir: &Path) -> Result<Schedule, String> {
        let timetable = Timetable::new(&config.cron, &config.timezone)?;
        let status = ScheduleStatus {
            name: name.to_string(),
            file: config.file.clone(),
            cron: config.cron.clone(),
            timezone: config.timezone.clone(),
            ..ScheduleStatus::default()
        };
        Ok(Schedule {
            name: name.to_string(),
            timetable,
            state_file: state_dir.join(format!("{name}.json")),
            config,
            status: Mutex::new(status),
        })
    }

    /// What it is doing and did.
    pub fn status(&self) -> ScheduleStatus {
        self.status.lock().expect("status").clone()
    }

    fn update(&self, change: impl FnOnce(&mut ScheduleStatus)) {
        change(&mut self.status.lock().expect("status"));
    }

    fn load_last(&self) -> Result<Option<DateTime<Utc>>> {
        match std::fs::read(&self.state_file) {
            Ok(bytes) => serde_json::from_slice::<SavedState>(&bytes)
                .map_err(anyhow::Error::from)
                .and_then(|state| {
                    state
                        .last
                        .map(|text| Ok(DateTime::parse_from_rfc3339(&text)?.with_timezone(&Utc)))
                        .transpose()
                })
                .with_context(|| format!("reading {}", self.state_file.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", self.state_file.display())),
        }
    }

    fn save_last(&self, last: DateTime<Utc>) -> Result<()> {
        if let Some(dir) = self.state_file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let temporary = self.state_file.with_extension("json.tmp");
        std::fs::write(
            &temporary,
            serde_json::to_vec(&SavedState {
                last: Some(rfc3339(last)),
            })?,
        )?;
        std::fs::rename(&temporary, &self.state_file)
            .with_context(|| format!("writing {}", self.state_file.display()))?;
        self.update(|s| s.last = Some(rfc3339(last)));
        Ok(())
    }

    /// Runs the schedule until `stop` is set: waits for each instant and
    /// calls `run` for it (again for each retry), following the catch-up,
    /// concurrency and retry settings.
    ///
    /// # Errors
    /// The schedule's state file cannot be read or written.
    pub fn drive(
        &self,
        clock: &dyn Clock,
        stop: &Stop,
        run: &dyn Fn(&Firing) -> Result<()>,
    ) -> Result<()> {
        let started = clock.now();
        let mut last = match self.load_last()? {
            Some(last) => last,
            None => {
                // From now on, an instant not handled counts as missed.
                self.save_last(started)?;
                started
            }
        };
        // Instants missed while the service was down.
        let missed = self
            .timetable
            .between(last, started, self.config.max_catch_up.max(1));
        let (late, on_time): (Vec<_>, Vec<_>) =
            missed.into_iter().partition(|i| started - *i > ON_TIME);
        let mut due: Vec<DateTime<Utc>> = match self.config.catch_up {
            CatchUp::All => late.clone(),
            CatchUp::Latest => late.last().copied().into_iter().collect(),
            CatchUp::None => Vec::new(),
        };
        let skipped = late.len() - due.len();
        if skipped > 0 {
            tracing::info!(
                schedule = %self.name,
                "{skipped} instants missed while the service was down are skipped (catch_up = {:?})",
                self.config.catch_up
            );
            self.update(|s| s.skipped += skipped as u64);
        }
        due.extend(on_time);
        loop {
            for instant in due.drain(..) {
                if stop.is_set() {
                    return Ok(());
                }
                if !self.fire(instant, clock, stop, run) {
                    // Stopped mid-way: not handled, so it runs again
                    // when the service restarts.
                    return Ok(());
                }
                last = last.max(instant);
                self.save_last(last)?;
            }
            if stop.is_set() {
                return Ok(());
            }
            // Instants that came while those runs went.
            let now = clock.now();
            let overlapping = self.timetable.between(last, now, usize::MAX);
            match self.config.concurrency {
                Concurrency::Queue if !overlapping.is_empty() => {
                    due = overlapping;
                    continue;
                }
                _ if !overlapping.is_empty() => {
                    tracing::warn!(
                        schedule = %self.name,
                        "{} instants came while a run was going; skipped (concurrency = \"skip\")",
                        overlapping.len()
                    );
                    self.update(|s| s.skipped += overlapping.len() as u64);
                    last = *overlapping.last().expect("not empty");
                    self.save_last(last)?;
                }
                _ => {}
            }
            let Some(next) = self.timetable.next_after(last.max(now)) else {
                tracing::warn!(schedule = %self.name, "the pattern has no further instant");
                return Ok(());
            };
            self.update(|s| s.next = Some(rfc3339(next)));
            if !clock.wait_until(next, stop) {
                return Ok(());
            }
            due.push(next);
        }
    }

    /// Records that the schedule stopped for good, and why.
    pub fn record_stopped(&self, why: String) {
        self.update(|s| {
            s.running = None;
            s.next = None;
            s.stopped = Some(why);
        });
    }

    /// Runs `instant`, retrying with backoff; records the outcome. A run
    /// that panics is a failed attempt. False when `stop` was set before
    /// the instant was handled (an attempt failed as the service stopped,
    /// or a retry was due after): it is left for the next start.
    fn fire(
        &self,
        instant: DateTime<Utc>,
        clock: &dyn Clock,
        stop: &Stop,
        run: &dyn Fn(&Firing) -> Result<()>,
    ) -> bool {
        self.update(|s| s.running = Some(rfc3339(instant)));
        let mut attempt = 0;
        let outcome = loop {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                run(&Firing { instant, attempt })
            }))
            .unwrap_or_else(|panic| Err(anyhow!("the run panicked: {}", panic_message(&*panic))));
            match result {
                Ok(()) => {
                    self.update(|s| s.succeeded += 1);
                    break Ok(());
                }
                Err(error) => {
                    self.update(|s| s.failed += 1);
                    let error = format!("{error:#}");
                    if stop.is_set() {
                        tracing::warn!(
                            schedule = %self.name,
                            "the run for {} failed as the service stops; it runs again at the next start: {error}",
                            rfc3339(instant)
                        );
                        self.update(|s| s.running = None);
                        return false;
                    }
                    if attempt >= self.config.retries {
                        break Err(error);
                    }
                    let backoff = self.config.retry_backoff * 2u32.saturating_pow(attempt);
                    tracing::warn!(
                        schedule = %self.name,
                        "the run for {} failed (attempt {} of {}); again in {}: {error}",
                        rfc3339(instant),
                        attempt + 1,
                        self.config.retries + 1,
                        humantime::format_duration(backoff)
                    );
                    let at = clock.now()
                        + chrono::TimeDelta::from_std(backoff).unwrap_or(chrono::TimeDelta::MAX);
                    if !clock.wait_until(at, stop) {
                        self.update(|s| s.running = None);
                        return false;
                    }
                    attempt += 1;
                }
            }
        };
        if let Err(error) = &outcome {
            tracing::error!(
                schedule = %self.name,
                "the run for {} failed after {} attempts: {error}",
                rfc3339(instant),
                attempt + 1
            );
        }
        self.update(|s| {
            s.running = None;
            s.last_status = Some(
                if outcome.is_ok() {
                    "succeeded"
                } else {
                    "failed"
                }
                .into(),
            );
            s.last_error = outcome.err();
        });
        true
    }
}

/// The message of a caught panic.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_string())
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Runs pipeline `file` for the firing `firing` of `timetable`, its config
/// checked by `vet` first: the
/// partition of the instant when the file is partitioned, recorded as a
/// `scheduled` run.
///
/// # Errors
/// The pipeline cannot be loaded or its run failed.
pub fn run_pipeline(
    file: &Path,
    timetable: &Timetable,
    firing: &Firing,
    vet: crate::backfill::Vet<'_>,
) -> Result<()> {
    let text = crate::config::read_text(file)?;
    let report = if crate::partition::uses_partition(&text) {
        let settings = crate::config::partition_settings_of(&text, file)?;
        let key = settings
            .key(timetable.partition_start(firing.instant, settings.every))
            .map_err(|e| anyhow!(e))?;
        crate::backfill::run_partition(file, &text, &key, crate::history::Trigger::Scheduled, vet)?
    } else {
        let mut config = crate::config::PipelineConfig::from_toml(&text, file)?;
        vet(&mut config)?;
        crate::pipeline::Pipeline::build(config, file)?.run(&crate::pipeline::RunOptions {
            progress: false,
            restart: false,
            trigger: crate::history::Trigger::Scheduled,
        })?
    };
    tracing::info!(
        pipeline = %report.pipeline,
        run_id = %report.run_id,
        partition = report.partition.as_deref().unwrap_or("-"),
        "scheduled run: {} read, {} written, {} quarantined",
        report.records.read,
        report.records.written,
        report.records.quarantined
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    /// A clock that jumps to the instant waited for; the schedule stops
    /// once asked to wait past `end`, or when a run ends after it.
    struct ManualClock {
        now: Mutex<DateTime<Utc>>,
        end: DateTime<Utc>,
    }

    impl ManualClock {
        fn new(now: &str, end: &str) -> ManualClock {
            ManualClock {
                now: Mutex::new(utc(now)),
                end: utc(end),
            }
        }

        fn advance(&self, by: chrono::TimeDelta) {
            *self.now.lock().unwrap() += by;
        }
    }

    impl Clock for ManualClock {
        fn now(&self) -> DateTime<Utc> {
            *self.now.lock().unwrap()
        }

        fn wait_until(&self, t: DateTime<Utc>, _stop: &Stop) -> bool {
            if t > self.end {
                return false;
            }
            let mut now = self.now.lock().unwrap();
            *now = (*now).max(t);
            true
        }
    }

    fn schedule(dir: &Path, extra: &str) -> Schedule {
        let config: ScheduleConfig = toml::from_str(&format!(
            "file = \"p.toml\"\ncron = \"30 2 * * *\"\ntimezone = \"Europe/Paris\"\nretry_backoff = \"10m\"\n{extra}"
        ))
        .unwrap();
        Schedule::new("nightly", config, dir).unwrap()
    }

    /// Drives `schedule` on `clock`; each run takes `takes` and fails when
    /// `fails` says so. Returns (instant, attempt, clock time) per call.
    fn drive(
        schedule: &Schedule,
        clock: &ManualClock,
        takes: chrono::TimeDelta,
        fails: impl Fn(&Firing) -> bool,
    ) -> Vec<(String, u32, String)> {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let stop = Stop::default();
        schedule
            .drive(clock, &stop, &|firing| {
                calls.lock().unwrap().push((
                    rfc3339(firing.instant),
                    firing.attempt,
                    rfc3339(clock.now()),
                ));
                clock.advance(takes);
                if clock.now() > clock.end {
                    stop.set();
                }
                match fails(firing) {
                    true => Err(anyhow!("boom")),
                    false => Ok(()),
                }
            })
            .unwrap();
        Arc::try_unwrap(calls).unwrap().into_inner().unwrap()
    }

    fn instants(calls: &[(String, u32, String)]) -> Vec<&str> {
        calls.iter().map(|c| c.0.as_str()).collect()
    }

    #[test]
    fn a_daily_schedule_fires_at_local_time_across_daylight_saving_changes() {
        let dir = tempfile::tempdir().unwrap();
        let nightly = schedule(dir.path(), "");
        // Spring forward in Paris on 2026-03-29: 02:30 does not exist, the
        // run goes at 03:00 CEST (01:00Z); CET before, CEST after.
        let clock = ManualClock::new("2026-03-27T00:00:00Z", "2026-03-31T00:00:00Z");
        let calls = drive(&nightly, &clock, chrono::TimeDelta::minutes(5), |_| false);
        assert_eq!(
            instants(&calls),
            [
                "2026-03-27T01:30:00Z",
                "2026-03-28T01:30:00Z",
                "2026-03-29T01:00:00Z",
                "2026-03-30T00:30:00Z"
            ]
        );
        // Each ran at its instant.
        assert!(calls.iter().all(|(instant, _, at)| instant == at));
        // Fall back on 2026-10-25: 02:30 happens twice; the run goes once.
        let dir = tempfile::tempdir().unwrap();
        let nightly = schedule(dir.path(), "");
        let clock = ManualClock::new("2026-10-24T00:00:00Z", "2026-10-27T00:00:00Z");
        let calls = drive(&nightly, &clock, chrono::TimeDelta::minutes(5), |_| false);
        let local_days: Vec<String> = calls
            .iter()
            .map(|c| {
                nightly
                    .timetable
                    .local(utc(&c.0))
                    .format("%d %H:%M")
                    .to_string()
            })
            .collect();
        assert_eq!(local_days, ["24 02:30", "25 02:30", "26 02:30"]);
        // An hourly pattern keeps one run per real hour through both changes.
        let hourly = Timetable::new("0 * * * *", "Europe/Paris").unwrap();
        for (from, until) in [
            ("2026-03-28T20:00:00Z", "2026-03-29T06:00:00Z"),
            ("2026-10-24T20:00:00Z", "2026-10-25T06:00:00Z"),
        ] {
            let fires = hourly.between(utc(from), utc(until), usize::MAX);
            assert_eq!(fires.len(), 10, "{fires:?}");
            assert!(
                fires
                    .windows(2)
                    .all(|w| w[1] - w[0] == chrono::TimeDelta::hours(1))
            );
        }
        // The partition of a run is the previous local day.
        let run = utc("2026-03-30T00:30:00Z");
        assert_eq!(
            nightly
                .timetable
                .partition_start(run, Every::Day)
                .to_string(),
            "2026-03-29 00:00:00"
        );
    }

    #[test]
    fn missed_instants_catch_up_as_configured_after_a_downtime() {
        for (policy, expected) in [
            ("latest", vec!["2026-01-09T01:30:00Z"]),
            (
                "all",
                vec![
                    "2026-01-07T01:30:00Z",
                    "2026-01-08T01:30:00Z",
                    "2026-01-09T01:30:00Z",
                ],
            ),
            ("none", vec![]),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let nightly = schedule(dir.path(), &format!("catch_up = \"{policy}\""));
            // The service ran until the 6th, 12:00…
            let clock = ManualClock::new("2026-01-05T12:00:00Z", "2026-01-06T12:00:00Z");
            let before = drive(&nightly, &clock, chrono::TimeDelta::minutes(5), |_| false);
            assert_eq!(instants(&before), ["2026-01-06T01:30:00Z"]);
            // …was down until the 9th, 09:00, then ran to the 10th, 12:00.
            let nightly = schedule(dir.path(), &format!("catch_up = \"{policy}\""));
            let clock = ManualClock::new("2026-01-09T09:00:00Z", "2026-01-10T12:00:00Z");
            let after = drive(&nightly, &clock, chrono::TimeDelta::minutes(5), |_| false);
            let mut want = expected.clone();
            want.push("2026-01-10T01:30:00Z");
            assert_eq!(instants(&after), want, "catch_up = {policy}");
            let caught_up = after.iter().take(expected.len());
            assert!(
                caught_up.clone().all(|c| c.2.starts_with("2026-01-09T09")),
                "missed runs go at start: {after:?}"
            );
        }
    }

    #[test]
    fn a_failing_run_retries_with_backoff_then_records_the_failure() {
        let dir = tempfile::tempdir().unwrap();
        let nightly = schedule(dir.path(), "retries = 2");
        let clock = ManualClock::new("2026-01-05T00:00:00Z", "2026-01-06T00:00:00Z");
        let calls = drive(&nightly, &clock, chrono::TimeDelta::minutes(1), |_| true);
        let attempts: Vec<(u32, &str)> = calls.iter().map(|c| (c.1, c.2.as_str())).collect();
        // 01:30, then 10 min after the first failure ended, then 20 min after.
        assert_eq!(
            attempts,
            [
                (0, "2026-01-05T01:30:00Z"),
                (1, "2026-01-05T01:41:00Z"),
                (2, "2026-01-05T02:02:00Z")
            ]
        );
        let status = nightly.status();
        assert_eq!(status.last_status.as_deref(), Some("failed"));
        assert_eq!((status.failed, status.succeeded), (3, 0));
        assert!(status.last_error.unwrap().contains("boom"));
        // The failed instant is handled: a restart does not run it again.
        let again = schedule(dir.path(), "retries = 2");
        let clock = ManualClock::new("2026-01-05T03:00:00Z", "2026-01-05T23:00:00Z");
        assert!(drive(&again, &clock, chrono::TimeDelta::minutes(1), |_| false).is_empty());
    }

    #[test]
    fn a_stop_during_retries_leaves_the_instant_to_the_next_start_and_a_panic_is_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        let nightly = schedule(dir.path(), "retries = 2");
        // The service stops during the backoff after the first failure.
        let clock = ManualClock::new("2026-01-05T00:00:00Z", "2026-01-05T01:35:00Z");
        let calls = drive(&nightly, &clock, chrono::TimeDelta::minutes(1), |_| {
            panic!("a bug in the run")
        });
        assert_eq!(calls.len(), 1);
        let status = nightly.status();
        assert_eq!((status.failed, status.succeeded), (1, 0));
        assert_eq!(status.last_status, None, "not handled");
        assert_eq!(status.running, None);
        // The next start runs it (as the newest missed instant).
        let again = schedule(dir.path(), "retries = 2");
        let clock = ManualClock::new("2026-01-05T03:00:00Z", "2026-01-05T23:00:00Z");
        let calls = drive(&again, &clock, chrono::TimeDelta::minutes(1), |_| false);
        assert_eq!(instants(&calls), ["2026-01-05T01:30:00Z"]);
        assert_eq!(again.status().last_status.as_deref(), Some("succeeded"));
    }

    #[test]
    fn a_panicking_run_is_a_failed_attempt_with_its_message() {
        let dir = tempfile::tempdir().unwrap();
        let nightly = schedule(dir.path(), "retries = 0");
        let clock = ManualClock::new("2026-01-05T00:00:00Z", "2026-01-05T12:00:00Z");
        let calls = drive(&nightly, &clock, chrono::TimeDelta::minutes(1), |_| {
            panic!("a bug in the run")
        });
        assert_eq!(calls.len(), 1);
        let status = nightly.status();
        assert_eq!(status.last_status.as_deref(), Some("failed"));
        let error = status.last_error.unwrap();
        assert!(error.contains("panicked: a bug in the run"), "{error}");
    }

    #[test]
    fn instants_during_a_long_run_are_skipped_or_queued() {
        let every_hour = "cron = \"0 * * * *\"\ntimezone = \"UTC\"";
        let dir = tempfile::tempdir().unwrap();
        let toml = format!("file = \"p.toml\"\n{every_hour}\n");
        let skip = Schedule::new("h", toml::from_str(&toml).unwrap(), dir.path()).unwrap();
        let clock = ManualClock::new("2026-01-05T00:30:00Z", "2026-01-05T05:30:00Z");
        // Each run takes 2.5 hours.
        let calls = drive(&skip, &clock, chrono::TimeDelta::minutes(150), |_| false);
        assert_eq!(
            instants(&calls),
            ["2026-01-05T01:00:00Z", "2026-01-05T04:00:00Z"]
        );
        assert_eq!(skip.status().skipped, 2);

        let dir = tempfile::tempdir().unwrap();
        let toml = format!("file = \"p.toml\"\n{every_hour}\nconcurrency = \"queue\"\n");
        let queue = Schedule::new("h", toml::from_str(&toml).unwrap(), dir.path()).unwrap();
        let clock = ManualClock::new("2026-01-05T00:30:00Z", "2026-01-05T08:00:00Z");
        let calls = drive(&queue, &clock, chrono::TimeDelta::minutes(150), |_| false);
        assert_eq!(
            instants(&calls),
            [
                "2026-01-05T01:00:00Z",
                "2026-01-05T02:00:00Z",
                "2026-01-05T03:00:00Z"
            ],
            "queued one after another, never overlapping"
        );
    }
}
