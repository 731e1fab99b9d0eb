//! The run report: what a run read, wrote and rejected, per stage, with
//! lineage (input files, output files, each plugin's content hash).
//! `weir run --report FILE` writes it as JSON.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use crate::plugin::PluginKind;
use crate::sink::OutputFile;

/// Counts and lineage for one finished run.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// Random UUID identifying the run; also in every quarantine row.
    pub run_id: String,
    /// The pipeline's name.
    pub pipeline: String,
    /// The pipeline file.
    pub pipeline_file: PathBuf,
    /// When the run started, RFC 3339 UTC.
    pub started_at: String,
    /// Wall-clock duration, in milliseconds.
    pub duration_ms: u64,
    /// Whole-run totals.
    pub records: RecordCounts,
    /// One entry per stage, in pipeline order.
    pub stages: Vec<StageReport>,
    /// Input files, in the order read.
    pub inputs: Vec<InputFile>,
    /// Committed output files.
    pub outputs: Vec<OutputFile>,
    /// The committed quarantine file and its row count.
    pub quarantine: QuarantineReport,
    /// The extract plugin's outbound HTTP requests, when its source grants
    /// HTTP (`[source.extract.capabilities.http]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_http: Option<crate::plugin::HttpCounts>,
    /// The checkpoint protocol's account: epochs, the last position,
    /// whether the run resumed; `None` with `checkpoint = false`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<crate::checkpoint::run::CheckpointReport>,
    /// One entry per `[[operators]]` entry, in order, with its state's
    /// size at the end of the run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub operators: Vec<crate::operator::report::OperatorReport>,
    /// What became of the run's OpenLineage events (`[lineage]`); `None`
    /// without lineage.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lineage: Option<LineageCounts>,
    /// The partition the run processed (`${partition}`), for a
    /// partitioned pipeline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
    /// The data checks' results ([`crate::checks`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<crate::checks::CheckResult>,
}

impl RunReport {
    /// Why most quarantined records were quarantined, in a phrase: the
    /// stage that quarantined the most and its most frequent failed-call
    /// kind, or the source's reader when it rejected the most (records
    /// that did not parse). `None` when nothing was quarantined.
    pub fn main_quarantine_reason(&self) -> Option<String> {
        let by_stages: u64 = self.stages.iter().map(|s| s.quarantined).sum();
        let by_reader = self.records.quarantined.saturating_sub(by_stages);
        let top = self.stages.iter().max_by_key(|s| s.quarantined);
        match top {
            Some(stage) if stage.quarantined > 0 && stage.quarantined >= by_reader => {
                let kind = stage
                    .errors
                    .iter()
                    .max_by_key(|(_, n)| **n)
                    .map(|(kind, n)| format!("; failed calls: {n} × {kind}"))
                    .unwrap_or_else(|| "; rows failed its validation rules".into());
                Some(format!(
                    "stage `{}` ({}) quarantined {} record(s){kind}",
                    stage.name, stage.plugin, stage.quarantined
                ))
            }
            _ if by_reader > 0 => Some(format!(
                "the source reader rejected {by_reader} record(s) that do not parse as the source schema"
            )),
            _ => None,
        }
    }
}

impl RunReport {
    /// The warning `weir run` prints when the run wrote no row, with its
    /// main reason; `None` when it wrote rows.
    pub fn nothing_written_warning(&self) -> Option<String> {
        let records = &self.records;
        if records.written > 0 {
            return None;
        }
        let why = match self.main_quarantine_reason() {
            _ if records.read == 0 => "the input has no records".to_string(),
            Some(reason) => format!("every record was quarantined or filtered: {reason}"),
            None => "every record was filtered by a transform".to_string(),
        };
        Some(format!(
            "nothing was written: {why}. Set [pipeline] max_quarantine_fraction to make such a run fail"
        ))
    }
}

/// Whole-run record totals. `read == written + quarantined + filtered`.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct RecordCounts {
    /// Rows read from the source.
    pub read: u64,
    /// Rows written to the sink.
    pub written: u64,
    /// Rows sent to the quarantine.
    pub quarantined: u64,
    /// Rows a transform left out on purpose.
    pub filtered: u64,
    /// JSON record fields that were not columns of the source schema
    /// (dropped, or quarantined with their record, per the source's
    /// `unknown_fields`); not rows.
    pub unknown_fields: u64,
}

/// Counts for one stage.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StageReport {
    /// Stage name.
    pub name: String,
    /// Plugin kind.
    pub kind: Option<PluginKind>,
    /// Plugin reference.
    pub plugin: String,
    /// SHA-256 of the plugin version serving at the end of the run.
    pub plugin_sha256: String,
    /// SHA-256 of every version that processed batches, in order of first
    /// use (more than one when a plugin was reloaded during the run).
    pub plugin_versions: Vec<String>,
    /// Rows that reached this stage.
    pub records_in: u64,
    /// Rows it passed on.
    pub records_out: u64,
    /// Rows it quarantined (failed validation or a failed call).
    pub quarantined: u64,
    /// Rows a transform left out on purpose.
    pub filtered: u64,
    /// Plugin calls made.
    pub calls: u64,
    /// Failed calls by error kind.
    pub errors: BTreeMap<String, u64>,
    /// Fuel units consumed by all calls, failed ones included (a call
    /// stopped at its deadline burned fuel until then).
    pub fuel_consumed: u64,
    /// Time spent in plugin calls, failed ones included, in milliseconds,
    /// summed over workers (can exceed the run's wall-clock time).
    pub call_time_ms: f64,
    /// Largest linear memory any instance of this stage reached, in bytes.
    pub peak_memory_bytes: u64,
    /// Bytes of column buffers lowered into the plugin (values, offsets and
    /// validity of the columns it reads; contract 0.2.0 sends only those),
    /// summed over calls.
    pub bytes_sent: u64,
    /// Bytes of buffers lifted out of the plugin's successful calls (a whole
    /// batch, or a splice's selection and new columns; columns that pass
    /// through on the host count nothing), summed over calls.
    pub bytes_returned: u64,
    /// Instances created (one per worker, plus one after each failure).
    pub instances: u64,
    /// Extra calls spent splitting failed batches to isolate their poison
    /// rows (see `bisect_max_calls`).
    pub bisect_calls: u64,
    /// Batches quarantined without a call because the plugin was rested by
    /// its circuit breaker.
    pub rested_batches: u64,
    /// Distribution of call times (failed calls included), serialised as
    /// `{"p50_ms", "p99_ms", "max_ms"}`.
    pub call_times: CallTimes,
}

/// Buckets per doubling of [`CallTimes`]: a percentile is the upper bound
/// of its bucket, so it is at most 2^(1/4) − 1 ≈ 19% above the true value
/// (the log-linear bucketing of HdrHistogram, at a coarse precision).
pub const CALL_TIME_BUCKETS_PER_DOUBLING: u32 = 4;

/// Number of buckets: from 1 µs up to 2^32 µs (about 71 minutes); longer
/// calls count in the last one.
const CALL_TIME_BUCKETS: usize = 32 * CALL_TIME_BUCKETS_PER_DOUBLING as usize + 1;

/// A histogram of plugin call times: counts in log-spaced buckets of
/// microseconds, so that per-worker histograms merge by adding and a
/// percentile costs one pass over 129 counters. Recording is one
/// logarithm and one increment per call.
#[derive(Debug, Clone)]
pub struct CallTimes {
    counts: Box<[u64; CALL_TIME_BUCKETS]>,
    max_us: f64,
}

impl Default for CallTimes {
    fn default() -> Self {
        CallTimes {
            counts: Box::new([0; CALL_TIME_BUCKETS]),
            max_us: 0.0,
        }
    }
}

impl CallTimes {
    /// Counts one call of `duration`.
    pub fn record(&mut self, duration: std::time::Duration) {
        let us = duration.as_secs_f64() * 1e6;
        self.max_us = self.max_us.max(us);
        let bucket = if us <= 1.0 {
            0
        } else {
            ((us.log2() * f64::from(CALL_TIME_BUCKETS_PER_DOUBLING)).ceil() as usize)
                .min(CALL_TIME_BUCKETS - 1)
        };
        self.counts[bucket] += 1;
    }

    /// Adds `other`'s counts into `self`.
    pub fn merge(&mut self, other: &CallTimes) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts.iter()) {
            *mine += theirs;
        }
        self.max_us = self.max_us.max(other.max_us);
    }

    /// Calls counted.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The call time at quantile `q` (0.0–1.0) in milliseconds: the upper
    /// bound of the bucket holding it, never more than the longest call;
    /// `None` before any call.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (bucket, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                let upper_us = 2f64.powf(bucket as f64 / f64::from(CALL_TIME_BUCKETS_PER_DOUBLING));
                return Some(upper_us.min(self.max_us) / 1000.0);
            }
        }
        Some(self.max_us / 1000.0)
    }
}

impl Serialize for CallTimes {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut out = serializer.serialize_struct("CallTimes", 3)?;
        out.serialize_field("p50_ms", &self.quantile_ms(0.5))?;
        out.serialize_field("p99_ms", &self.quantile_ms(0.99))?;
        out.serialize_field(
            "max_ms",
            &(self.count() > 0).then_some(self.max_us / 1000.0),
        )?;
        out.end()
    }
}

impl StageReport {
    /// Adds `other`'s counts into `self` (used to merge per-worker counts).
    pub fn merge(&mut self, other: &StageReport) {
        self.records_in += other.records_in;
        self.records_out += other.records_out;
        self.quarantined += other.quarantined;
        self.filtered += other.filtered;
        self.calls += other.calls;
        for (kind, n) in &other.errors {
            *self.errors.entry(kind.clone()).or_default() += n;
        }
        self.fuel_consumed += other.fuel_consumed;
        self.call_time_ms += other.call_time_ms;
        self.peak_memory_bytes = self.peak_memory_bytes.max(other.peak_memory_bytes);
        self.bytes_sent += other.bytes_sent;
        self.bytes_returned += other.bytes_returned;
        self.instances += other.instances;
        self.bisect_calls += other.bisect_calls;
        self.rested_batches += other.rested_batches;
        self.call_times.merge(&other.call_times);
        for version in &other.plugin_versions {
            if !self.plugin_versions.contains(version) {
                self.plugin_versions.push(version.clone());
            }
        }
    }
}

/// One input file.
#[derive(Debug, Clone, Serialize)]
pub struct InputFile {
    /// Its path.
    pub path: PathBuf,
    /// Its size, in bytes.
    pub bytes: u64,
}

/// The quarantine's lineage entry.
#[derive(Debug, Clone, Serialize)]
pub struct QuarantineReport {
    /// The committed file.
    pub path: PathBuf,
    /// Rows in it.
    pub rows: u64,
}

/// What became of a run's OpenLineage events ([`crate::lineage`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct LineageCounts {
    /// Events written or accepted by the endpoint.
    pub sent: u64,
    /// Events dropped: the queue was full, or still held when the run's
    /// `flush_ms` ran out.
    pub dropped: u64,
    /// Events the file or the endpoint refused (logged).
    pub failed: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn call_time_quantiles_come_within_a_bucket_of_the_truth_and_merge() {
        let mut fast = CallTimes::default();
        let mut slow = CallTimes::default();
        assert_eq!(fast.quantile_ms(0.99), None);
        // 990 calls of 1 ms and 10 of 100 ms: p50 ≈ 1 ms, p99 ≈ 1 ms,
        // p99.9 ≈ 100 ms.
        for _ in 0..990 {
            fast.record(Duration::from_millis(1));
        }
        for _ in 0..10 {
            slow.record(Duration::from_millis(100));
        }
        fast.merge(&slow);
        assert_eq!(fast.count(), 1000);
        let p50 = fast.quantile_ms(0.5).unwrap();
        assert!((1.0..=1.19).contains(&p50), "p50 {p50}");
        let p99 = fast.quantile_ms(0.99).unwrap();
        assert!((1.0..=1.19).contains(&p99), "p99 {p99}");
        let p999 = fast.quantile_ms(0.999).unwrap();
        assert!((99.0..=100.0).contains(&p999), "p99.9 {p999}");
        let json = serde_json::to_value(&fast).unwrap();
        assert_eq!(json["max_ms"], 100.0);
    }
}
