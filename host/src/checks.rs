//! Data checks: the silent failures (stale input, missing rows, a dropped
//! column, a quarantine spike, a column gone null) caught where the data
//! flows, after a run has processed its input and before it publishes.
//!
//! A run's [`Observation`] (rows read, written and quarantined, the
//! source's schema, null counts per output column, the age of its newest
//! input file) is judged by [`evaluate`] against the `[checks]` settings
//! and the observations of earlier successful runs from the run history.
//! Each check gives a [`CheckResult`]: `ok`, `warn` or `fail`. A `fail`
//! of a check whose `on_fail = "fail"` fails the run (nothing published,
//! the quarantine still committed); otherwise the run publishes and the
//! result is only an alert. Every result is in the run report and the
//! history; the ones that are not `ok` are logged and POSTed to the
//! webhook ([`crate::alert`]).
//!
//! Learned expectations (volume, quarantine rate) follow the usual
//! anomaly rule of data-observability tools: a value is anomalous when it
//! is more than `z` standard deviations from the mean of the last
//! `window` runs *and* differs from that mean by more than a minimum
//! (relative for volume, absolute for a rate), so that a very steady
//! history does not alert on noise. With `seasonality = "day_of_week"`
//! only runs on the same weekday (of the partition, or of the start) are
//! compared. Fewer than `min_runs` earlier runs: no verdict yet.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `[checks]` in the pipeline file. Without it, only the schema check
/// runs (it warns on a removed or retyped column and fails nothing).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChecksSettings {
    /// Alert target: each run with a result that is not `ok` POSTs one
    /// JSON alert here ([`crate::alert`]). Default: none (the log only).
    pub webhook: Option<String>,
    /// Retries of a webhook POST that failed (connection, timeout, 5xx).
    /// Default 3, with 200 ms · 2ⁿ between attempts.
    pub webhook_retries: u32,
    /// Longest wait for one webhook POST, in milliseconds. Default 2000.
    pub webhook_timeout_ms: u64,
    /// Input freshness.
    pub freshness: Option<FreshnessCheck>,
    /// Rows read per run.
    pub volume: Option<VolumeCheck>,
    /// Columns added, removed or retyped since the last successful run.
    pub schema: SchemaCheck,
    /// Fraction of the rows read that were quarantined.
    pub quarantine: Option<QuarantineCheck>,
    /// Fraction of null values per output column.
    pub nulls: Option<NullsCheck>,
}

impl Default for ChecksSettings {
    fn default() -> Self {
        ChecksSettings {
            webhook: None,
            webhook_retries: 3,
            webhook_timeout_ms: 2000,
            freshness: None,
            volume: None,
            schema: SchemaCheck::default(),
            quarantine: None,
            nulls: None,
        }
    }
}

impl ChecksSettings {
    /// How many earlier observations the checks may need.
    pub fn history_needed(&self) -> usize {
        let window = |w: usize, seasonal: bool| if seasonal { w * 7 } else { w };
        let volume = self
            .volume
            .as_ref()
            .map_or(0, |v| window(v.window, v.seasonality.is_some()));
        let quarantine = self
            .quarantine
            .as_ref()
            .map_or(0, |q| window(q.window, q.seasonality.is_some()));
        volume.max(quarantine).max(1)
    }
}

/// What a failing check does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFail {
    /// Alert; the run publishes (default).
    #[default]
    Warn,
    /// Alert and fail the run: nothing is published.
    Fail,
}

/// `[checks.freshness]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FreshnessCheck {
    /// Longest age of the newest input file (its modification time), e.g.
    /// `"26h"` (humantime).
    #[serde(with = "humantime_serde_compat")]
    pub max_age: std::time::Duration,
    /// What a stale input does. Default `warn`.
    #[serde(default)]
    pub on_fail: OnFail,
}

/// How an expectation is learned from history (the `window`,
/// `min_runs`, `z` and `seasonality` keys of a learned check).
#[derive(Debug, Clone, Copy)]
struct Learn {
    window: usize,
    min_runs: usize,
    z: f64,
    seasonality: Option<Seasonality>,
}

fn default_window() -> usize {
    14
}
fn default_min_runs() -> usize {
    5
}
fn default_z() -> f64 {
    3.0
}

/// Seasonal comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Seasonality {
    /// The same weekday (Monday with Mondays).
    DayOfWeek,
}

/// `[checks.volume]`: rows read per run, within fixed bounds and/or as
/// learned from history.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeCheck {
    /// Fewest rows expected.
    pub min_rows: Option<u64>,
    /// Most rows expected.
    pub max_rows: Option<u64>,
    /// Learn the expected range from history. Default true.
    #[serde(default = "yes")]
    pub learned: bool,
    /// Earlier successful runs compared with. Default 14.
    #[serde(default = "default_window")]
    pub window: usize,
    /// Fewer earlier runs than this: no verdict. Default 5.
    #[serde(default = "default_min_runs")]
    pub min_runs: usize,
    /// Standard deviations from the mean that make a value anomalous.
    /// Default 3.0.
    #[serde(default = "default_z")]
    pub z: f64,
    /// `day_of_week`: compare only with runs of the same weekday.
    pub seasonality: Option<Seasonality>,
    /// Smallest relative change from the mean that can alert. Default 0.2
    /// (20%).
    #[serde(default = "default_min_change")]
    pub min_change: f64,
    /// What an unexpected volume does. Default `warn`.
    #[serde(default)]
    pub on_fail: OnFail,
}

/// `[checks.schema]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchemaCheck {
    /// Compare the source's schema with the last successful run's.
    /// Default true. An added column is a `warn`; a removed or retyped
    /// one a `fail`.
    pub enabled: bool,
    /// What a removed or retyped column does. Default `warn`.
    pub on_fail: OnFail,
}

impl Default for SchemaCheck {
    fn default() -> Self {
        SchemaCheck {
            enabled: true,
            on_fail: OnFail::Warn,
        }
    }
}

/// `[checks.quarantine]`: the fraction of rows read that were
/// quarantined, over a fixed limit and/or anomalous.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuarantineCheck {
    /// Highest fraction (0.0–1.0).
    pub max_fraction: Option<f64>,
    /// Also alert on an anomalous rise learned from history. Default true.
    #[serde(default = "yes")]
    pub learned: bool,
    /// Earlier successful runs compared with. Default 14.
    #[serde(default = "default_window")]
    pub window: usize,
    /// Fewer earlier runs than this: no verdict. Default 5.
    #[serde(default = "default_min_runs")]
    pub min_runs: usize,
    /// Standard deviations from the mean that make a value anomalous.
    /// Default 3.0.
    #[serde(default = "default_z")]
    pub z: f64,
    /// `day_of_week`: compare only with runs of the same weekday.
    pub seasonality: Option<Seasonality>,
    /// Smallest rise above the mean (in fraction points) that can alert.
    /// Default 0.01 (one percentage point).
    #[serde(default = "default_min_rise")]
    pub min_rise: f64,
    /// What a high quarantine rate does. Default `warn`.
    #[serde(default)]
    pub on_fail: OnFail,
}

/// `[checks.nulls]`: the fraction of nulls per output column.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NullsCheck {
    /// Highest fraction for every column (0.0–1.0). Default 1.0 (none).
    #[serde(default = "one")]
    pub max_fraction: f64,
    /// Per-column limits, overriding `max_fraction`.
    #[serde(default)]
    pub columns: BTreeMap<String, f64>,
    /// What a column over its limit does. Default `warn`.
    #[serde(default)]
    pub on_fail: OnFail,
}

impl VolumeCheck {
    fn learn(&self) -> Learn {
        Learn {
            window: self.window,
            min_runs: self.min_runs,
            z: self.z,
            seasonality: self.seasonality,
        }
    }
}

impl QuarantineCheck {
    fn learn(&self) -> Learn {
        Learn {
            window: self.window,
            min_runs: self.min_runs,
            z: self.z,
            seasonality: self.seasonality,
        }
    }
}

fn yes() -> bool {
    true
}
fn one() -> f64 {
    1.0
}
fn default_min_change() -> f64 {
    0.2
}
fn default_min_rise() -> f64 {
    0.01
}

/// `humantime` durations (`"26h"`, `"90m"`) in serde, for every
/// duration key of the pipeline and service files.
pub(crate) mod humantime_serde_compat {
    use serde::Deserialize;

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<std::time::Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "`{text}` is not a duration like \"26h\" or \"90s\": {e}"
            ))
        })
    }
}

/// What one run looked like, as the checks see it; kept in the history so
/// that later runs can learn from it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Observation {
    /// Weekday of the data (the partition's start, else the run's start,
    /// UTC): 0 = Monday … 6 = Sunday.
    pub weekday: u8,
    /// Rows read from the source.
    pub read: u64,
    /// Rows written to the sink.
    pub written: u64,
    /// Rows quarantined.
    pub quarantined: u64,
    /// The source's columns as `(name, Arrow type)`, in order; empty when
    /// the source has no schema before reading.
    pub schema: Vec<(String, String)>,
    /// Nulls per output column, over the rows this process wrote.
    pub nulls: BTreeMap<String, u64>,
    /// Age of the newest input file at the end of the run, in seconds;
    /// none for a source without files.
    pub newest_input_age_s: Option<u64>,
}

/// The verdict of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// As expected.
    Ok,
    /// Unexpected; the run publishes.
    Warn,
    /// Failed its expectation.
    Fail,
}

impl Status {
    /// `ok`, `warn` or `fail`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckResult {
    /// `freshness`, `volume`, `schema`, `quarantine` or `nulls:COLUMN`.
    pub check: String,
    /// The verdict.
    pub status: Status,
    /// Whether this result fails the run (`fail` with `on_fail = "fail"`).
    pub fails_run: bool,
    /// What was seen and what was expected, in words.
    pub message: String,
    /// The measured value (rows, fraction, seconds), when there is one.
    pub observed: Option<f64>,
    /// The expected range `[low, high]`, when there is one.
    pub expected: Option<(f64, f64)>,
}

impl CheckResult {
    fn new(check: &str, status: Status, on_fail: OnFail, message: String) -> CheckResult {
        CheckResult {
            check: check.to_string(),
            status,
            fails_run: status == Status::Fail && on_fail == OnFail::Fail,
            message,
            observed: None,
            expected: None,
        }
    }

    fn measured(mut self, observed: f64, expected: Option<(f64, f64)>) -> CheckResult {
        self.observed = Some(observed);
        self.expected = expected;
        self
    }
}

/// The checks of one run: what they learn from, and (once the run has
/// been judged) what they saw and said.
pub struct Gate<'a> {
    settings: &'a ChecksSettings,
    previous: Vec<Observation>,
    judged: std::sync::Mutex<Option<(Observation, Vec<CheckResult>)>>,
}

impl<'a> Gate<'a> {
    /// A gate for `settings` learning from `previous` (successful runs,
    /// newest first).
    pub fn new(settings: &'a ChecksSettings, previous: Vec<Observation>) -> Gate<'a> {
        Gate {
            settings,
            previous,
            judged: std::sync::Mutex::new(None),
        }
    }

    /// Judges the run that looked like `now` ([`evaluate`]) and keeps both.
    pub fn judge(&self, now: Observation) -> Vec<CheckResult> {
        let results = evaluate(self.settings, &now, &self.previous);
        *self.judged.lock().expect("gate") = Some((now, results.clone()));
        results
    }

    /// What the run looked like and the results, if it got to be judged.
    pub fn into_judged(self) -> Option<(Observation, Vec<CheckResult>)> {
        self.judged.into_inner().expect("gate")
    }
}

/// Nulls per output column, summed over the batches written.
#[derive(Debug, Default)]
pub struct NullCounts(Vec<(String, u64)>);

impl NullCounts {
    /// Adds `batch`'s nulls (O(columns): Arrow keeps each array's count).
    pub fn add(&mut self, batch: &arrow::record_batch::RecordBatch) {
        if self.0.len() != batch.num_columns() {
            self.0 = batch
                .schema()
                .fields()
                .iter()
                .map(|f| (f.name().clone(), 0))
                .collect();
        }
        for ((_, nulls), column) in self.0.iter_mut().zip(batch.columns()) {
            *nulls += column.null_count() as u64;
        }
    }

    /// Column → nulls.
    pub fn into_map(self) -> BTreeMap<String, u64> {
        self.0.into_iter().collect()
    }
}

/// Counts `result` in `weir_check_results_total{tenant, pipeline, check,
/// status}` (Prometheus, when `weir serve`'s recorder is installed).
pub fn count(tenant: &str, pipeline: &str, result: &CheckResult) {
    metrics::counter!(
        "weir_check_results_total",
        "tenant" => tenant.to_string(),
        "pipeline" => pipeline.to_string(),
        "check" => result.check.clone(),
        "status" => result.status.as_str()
    )
    .increment(1);
}

/// The freshness result for data `age` old: `fail` past `check.max_age`,
/// failing the run when `on_fail = "fail"`. `weir run` gives the age of
/// its newest input file, `weir serve` the time since the pipeline's last
/// record; `message` says which.
pub fn freshness(check: &FreshnessCheck, age: std::time::Duration, message: String) -> CheckResult {
    let status = if age > check.max_age {
        Status::Fail
    } else {
        Status::Ok
    };
    CheckResult::new("freshness", status, check.on_fail, message)
        .measured(age.as_secs_f64(), Some((0.0, check.max_age.as_secs_f64())))
}

/// Judges `now` against `settings` and the `previous` observations of
/// successful runs, newest first. Returns one result per check that had
/// something to judge.
pub fn evaluate(
    settings: &ChecksSettings,
    now: &Observation,
    previous: &[Observation],
) -> Vec<CheckResult> {
    let mut results = Vec::new();
    if let (Some(check), Some(age)) = (&settings.freshness, now.newest_input_age_s) {
        let age = std::time::Duration::from_secs(age);
        results.push(freshness(
            check,
            age,
            format!(
                "the newest input file is {} old (limit {})",
                humantime::format_duration(age),
                humantime::format_duration(check.max_age)
            ),
        ));
    }
    if let Some(check) = &settings.volume {
        results.push(volume(check, now, previous));
    }
    if settings.schema.enabled
        && let Some(last) = previous.first()
        && !now.schema.is_empty()
        && !last.schema.is_empty()
    {
        results.push(schema(&settings.schema, now, last));
    }
    if let Some(check) = &settings.quarantine {
        results.push(quarantine(check, now, previous));
    }
    if let Some(check) = &settings.nulls
        && now.written > 0
    {
        for (column, nulls) in &now.nulls {
            let limit = check
                .columns
                .get(column)
                .copied()
                .unwrap_or(check.max_fraction);
            let fraction = *nulls as f64 / now.written as f64;
            let status = if fraction > limit {
                Status::Fail
            } else {
                Status::Ok
            };
            results.push(
                CheckResult::new(
                    &format!("nulls:{column}"),
                    status,
                    check.on_fail,
                    format!(
                        "{:.1}% of `{column}` is null (limit {:.1}%)",
                        fraction * 100.0,
                        limit * 100.0
                    ),
                )
                .measured(fraction, Some((0.0, limit))),
            );
        }
    }
    results
}

/// The earlier observations to learn from: the newest `window` (of the
/// same weekday with seasonality).
fn baseline<'a>(
    learn: &Learn,
    now: &Observation,
    previous: &'a [Observation],
) -> Vec<&'a Observation> {
    previous
        .iter()
        .filter(|p| learn.seasonality.is_none() || p.weekday == now.weekday)
        .take(learn.window)
        .collect()
}

fn mean_and_deviation(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (mean, variance.sqrt())
}

fn volume(check: &VolumeCheck, now: &Observation, previous: &[Observation]) -> CheckResult {
    let learn = check.learn();
    let rows = now.read as f64;
    let low = check.min_rows.map_or(0.0, |v| v as f64);
    let high = check.max_rows.map_or(f64::INFINITY, |v| v as f64);
    if rows < low || rows > high {
        return CheckResult::new(
            "volume",
            Status::Fail,
            check.on_fail,
            format!("{} rows read, outside the set range {low}–{high}", now.read),
        )
        .measured(rows, Some((low, high)));
    }
    let base = baseline(&learn, now, previous);
    if !check.learned || base.len() < learn.min_runs.max(2) {
        return CheckResult::new(
            "volume",
            Status::Ok,
            check.on_fail,
            format!(
                "{} rows read ({} earlier runs to learn from, {} needed)",
                now.read,
                base.len(),
                learn.min_runs.max(2)
            ),
        )
        .measured(rows, None);
    }
    let values: Vec<f64> = base.iter().map(|p| p.read as f64).collect();
    let (mean, deviation) = mean_and_deviation(&values);
    let change = if mean > 0.0 {
        (rows - mean) / mean
    } else if rows > 0.0 {
        1.0
    } else {
        0.0
    };
    let z = if deviation > 0.0 {
        (rows - mean).abs() / deviation
    } else if rows == mean {
        0.0
    } else {
        f64::INFINITY
    };
    let anomalous = z > learn.z && change.abs() > check.min_change;
    let band = learn.z * deviation;
    let expected = (
        (mean - band.max(mean * check.min_change)).max(0.0),
        mean + band.max(mean * check.min_change),
    );
    CheckResult::new(
        "volume",
        if anomalous { Status::Fail } else { Status::Ok },
        check.on_fail,
        format!(
            "{} rows read; the last {} runs read {:.0} ± {:.0} (z = {:.1}, {:+.1}%)",
            now.read,
            values.len(),
            mean,
            deviation,
            z,
            change * 100.0
        ),
    )
    .measured(rows, Some(expected))
}

fn schema(check: &SchemaCheck, now: &Observation, last: &Observation) -> CheckResult {
    let before: BTreeMap<&str, &str> = last
        .schema
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .collect();
    let after: BTreeMap<&str, &str> = now
        .schema
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .collect();
    let mut changes = Vec::new();
    let mut status = Status::Ok;
    for (name, old) in &before {
        match after.get(name) {
            None => {
                changes.push(format!("`{name}` removed"));
                status = Status::Fail;
            }
            Some(new) if new != old => {
                changes.push(format!("`{name}` retyped from {old} to {new}"));
                status = Status::Fail;
            }
            Some(_) => {}
        }
    }
    for (name, new) in &after {
        if !before.contains_key(name) {
            changes.push(format!("`{name}` ({new}) added"));
            status = status.max(Status::Warn);
        }
    }
    let message = match changes.is_empty() {
        true => format!(
            "the source's {} columns are as in the last run",
            now.schema.len()
        ),
        false => format!(
            "the source's schema changed since the last run: {}",
            changes.join(", ")
        ),
    };
    CheckResult::new("schema", status, check.on_fail, message)
}

fn quarantine(check: &QuarantineCheck, now: &Observation, previous: &[Observation]) -> CheckResult {
    let learn = check.learn();
    let fraction = |o: &Observation| o.quarantined as f64 / o.read.max(1) as f64;
    let rate = fraction(now);
    if let Some(max) = check.max_fraction
        && rate > max
    {
        return CheckResult::new(
            "quarantine",
            Status::Fail,
            check.on_fail,
            format!(
                "{:.2}% of the rows read were quarantined (limit {:.2}%)",
                rate * 100.0,
                max * 100.0
            ),
        )
        .measured(rate, Some((0.0, max)));
    }
    let base = baseline(&learn, now, previous);
    if check.learned && base.len() >= learn.min_runs.max(2) {
        let values: Vec<f64> = base.iter().map(|p| fraction(p)).collect();
        let (mean, deviation) = mean_and_deviation(&values);
        let rise = rate - mean;
        let z = if deviation > 0.0 {
            rise / deviation
        } else if rise > 0.0 {
            f64::INFINITY
        } else {
            0.0
        };
        if z > learn.z && rise > check.min_rise {
            return CheckResult::new(
                "quarantine",
                Status::Fail,
                check.on_fail,
                format!(
                    "{:.2}% of the rows read were quarantined; the last {} runs quarantined {:.2}% ± {:.2}% (z = {:.1})",
                    rate * 100.0,
                    values.len(),
                    mean * 100.0,
                    deviation * 100.0,
                    z
                ),
            )
            .measured(rate, Some((0.0, mean + (learn.z * deviation).max(check.min_rise))));
        }
    }
    CheckResult::new(
        "quarantine",
        Status::Ok,
        check.on_fail,
        format!("{:.2}% of the rows read were quarantined", rate * 100.0),
    )
    .measured(rate, check.max_fraction.map(|m| (0.0, m)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(read: u64, quarantined: u64) -> Observation {
        Observation {
            read,
            written: read - quarantined,
            quarantined,
            schema: vec![("a".into(), "Int64".into()), ("b".into(), "Utf8".into())],
            ..Observation::default()
        }
    }

    fn settings(text: &str) -> ChecksSettings {
        toml::from_str(text).unwrap()
    }

    fn status_of<'a>(results: &'a [CheckResult], check: &str) -> Option<&'a CheckResult> {
        results.iter().find(|r| r.check == check)
    }

    #[test]
    fn volume_learns_a_range_and_flags_half_the_rows() {
        let s = settings("[volume]\nmin_runs = 3\n");
        let history: Vec<_> = [1000, 1010, 990, 1005, 995].map(|r| seen(r, 0)).to_vec();
        let normal = evaluate(&s, &seen(1003, 0), &history);
        assert_eq!(status_of(&normal, "volume").unwrap().status, Status::Ok);
        let half = evaluate(&s, &seen(500, 0), &history);
        let volume = status_of(&half, "volume").unwrap();
        assert_eq!(volume.status, Status::Fail, "{}", volume.message);
        assert!(!volume.fails_run, "on_fail defaults to warn");
        // A steady history: a 5% dip is under min_change, so no alert.
        let steady: Vec<_> = [1000; 6].map(|r| seen(r, 0)).to_vec();
        let dip = evaluate(&s, &seen(950, 0), &steady);
        assert_eq!(status_of(&dip, "volume").unwrap().status, Status::Ok);
        // Too little history: no verdict.
        let early = evaluate(&s, &seen(5, 0), &history[..2]);
        assert_eq!(status_of(&early, "volume").unwrap().status, Status::Ok);
        // Fixed bounds with on_fail = "fail".
        let fixed = settings("[volume]\nmin_rows = 600\nlearned = false\non_fail = \"fail\"\n");
        let low = evaluate(&fixed, &seen(500, 0), &[]);
        assert!(status_of(&low, "volume").unwrap().fails_run);
    }

    #[test]
    fn day_of_week_seasonality_compares_like_with_like() {
        let s = settings("[volume]\nmin_runs = 2\nseasonality = \"day_of_week\"\n");
        // Weekdays read 1000, Sundays 100.
        let history: Vec<_> = (0..21u8)
            .map(|i| Observation {
                weekday: i % 7,
                ..seen(if i % 7 == 6 { 100 } else { 1000 }, 0)
            })
            .collect();
        let sunday = Observation {
            weekday: 6,
            ..seen(105, 0)
        };
        assert_eq!(
            status_of(&evaluate(&s, &sunday, &history), "volume")
                .unwrap()
                .status,
            Status::Ok
        );
        // Without it, the last 5 runs (weekdays) say a Sunday is anomalous.
        let plain = settings("[volume]\nmin_runs = 2\nwindow = 5\n");
        assert_eq!(
            status_of(&evaluate(&plain, &sunday, &history), "volume")
                .unwrap()
                .status,
            Status::Fail
        );
    }

    #[test]
    fn schema_changes_warn_on_additions_and_fail_on_removals() {
        let s = ChecksSettings::default();
        let last = seen(10, 0);
        let mut added = seen(10, 0);
        added.schema.push(("c".into(), "Float64".into()));
        assert_eq!(
            status_of(&evaluate(&s, &added, std::slice::from_ref(&last)), "schema")
                .unwrap()
                .status,
            Status::Warn
        );
        let mut removed = seen(10, 0);
        removed.schema.remove(1);
        let result = evaluate(&s, &removed, std::slice::from_ref(&last));
        let schema = status_of(&result, "schema").unwrap();
        assert_eq!(schema.status, Status::Fail);
        assert!(schema.message.contains("`b` removed"), "{}", schema.message);
        let mut retyped = seen(10, 0);
        retyped.schema[0].1 = "Utf8".into();
        assert!(
            status_of(
                &evaluate(&s, &retyped, std::slice::from_ref(&last)),
                "schema"
            )
            .unwrap()
            .message
            .contains("retyped from Int64 to Utf8")
        );
        assert_eq!(
            status_of(&evaluate(&s, &seen(10, 0), &[last]), "schema")
                .unwrap()
                .status,
            Status::Ok
        );
    }

    #[test]
    fn quarantine_spikes_and_null_columns_are_flagged() {
        let s = settings(
            "[quarantine]\nmin_runs = 3\n[nulls]\nmax_fraction = 0.5\ncolumns = { b = 0.1 }\n",
        );
        let history: Vec<_> = [10, 12, 9, 11].map(|q| seen(1000, q)).to_vec();
        let mut normal = seen(1000, 11);
        normal.nulls = BTreeMap::from([("a".into(), 400), ("b".into(), 50)]);
        let results = evaluate(&s, &normal, &history);
        assert!(
            results.iter().all(|r| r.status == Status::Ok),
            "{results:#?}"
        );
        let mut spike = seen(1000, 200);
        spike.nulls = BTreeMap::from([("a".into(), 0), ("b".into(), 500)]);
        let results = evaluate(&s, &spike, &history);
        let failing: Vec<&str> = results
            .iter()
            .filter(|r| r.status != Status::Ok)
            .map(|r| r.check.as_str())
            .collect();
        assert_eq!(failing, ["quarantine", "nulls:b"]);
    }

    #[test]
    fn stale_input_is_flagged() {
        let s = settings("[freshness]\nmax_age = \"26h\"\non_fail = \"fail\"\n");
        let fresh = Observation {
            newest_input_age_s: Some(3600),
            ..seen(1, 0)
        };
        let stale = Observation {
            newest_input_age_s: Some(30 * 3600),
            ..seen(1, 0)
        };
        assert_eq!(evaluate(&s, &fresh, &[])[0].status, Status::Ok);
        let result = &evaluate(&s, &stale, &[])[0];
        assert!(
            result.fails_run && result.message.contains("1day 6h"),
            "{}",
            result.message
        );
        assert!(toml::from_str::<ChecksSettings>("[freshness]\nmax_age = \"soon\"\n").is_err());
    }
}
