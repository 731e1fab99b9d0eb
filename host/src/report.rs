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
