//! Running one record batch through a pipeline's chain of stages.
//!
//! A [`Worker`] owns one plugin instance per stage (created lazily, replaced
//! after a failure or when the stage's plugin was reloaded) and turns a
//! source batch into a [`BatchResult`]: the rows that passed every stage and
//! the groups of rows each stage quarantined, with their reasons. Both
//! `weir run` ([`crate::pipeline`]) and `weir serve` ([`crate::serve`]) use it.
//!
//! **Containment.** A failed call does not doom its batch: the worker
//! splits the batch in halves and calls again until the failing rows are
//! isolated (`StageRunner::isolate`, bounded by the stage's
//! `bisect_max_calls`), and only those are quarantined. Each stage's
//! [`crate::plugin::CircuitBreaker`] rests a plugin that fails batch after
//! batch: its batches are quarantined as `circuit_open` without a call.
//!
//! **Row origins.** `weir serve` merges the records of several requests into
//! one batch and must tell each request what became of *its* records. The
//! worker therefore tracks, when asked ([`Origins`]), the input row every
//! current row comes from: exactly through validate stages (the host does
//! the splitting), and through a transform that returns as many rows as it
//! received (row *i* is taken to derive from input row *i*, as the WIT
//! contract says). A transform that changes the row count of a batch that
//! mixes several requests is called once more per request, so that rows
//! never lose their request; within one request, which row is which is
//! then no longer known, so such rows are attributed to their request's
//! first input row.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Result, anyhow, bail};
use arrow::array::BooleanArray;
use arrow::record_batch::RecordBatch;

use crate::columnar;
use crate::config::OnError;
use crate::lent::Lendable;
use crate::plugin::{
    Admission, Limits, Plugin, PluginError, PluginInstance, PluginKind, PluginSlot, PluginVersion,
    Verdict, VerdictMessage,
};
use crate::quarantine::{Reason, Reasons};
use crate::report::StageReport;
use crate::source::SourceItem;
use crate::splice::{self, Kept, Transformed};

/// The tenant label of work outside `weir serve`'s tenants (`weir run`),
/// and the implicit tenant of a service file's top-level `[[pipelines]]`.
pub const DEFAULT_TENANT: &str = "default";

/// One stage, ready to run: its plugin compiled and its config serialised.
pub struct Stage {
    /// Unique stage name.
    pub name: Arc<str>,
    /// Plugin kind (checked against the component's world).
    pub kind: PluginKind,
    /// The plugin reference as written in the pipeline file.
    pub reference: String,
    /// The stage's plugin; a reload swaps the version it serves.
    pub slot: Arc<PluginSlot>,
    /// The JSON the plugin's `config` import returns (reference tables
    /// included under `tables`).
    pub config_json: Arc<str>,
    /// Limits on each call.
    pub limits: Limits,
    /// What a failed call does to the run.
    pub on_error: OnError,
    /// Extra calls a failed batch may spend isolating its poison rows
    /// ([`crate::config::StageConfig::bisect_max_calls`]).
    pub bisect_max_calls: u32,
    /// What the plugin may reach (host paths resolved).
    pub grants: crate::plugin::Grants,
    /// The stage's keyed state, when its plugin imports
    /// `weir:plugin/state` (decided when the pipeline starts, kept across
    /// reloads). A stateful stage sees batches one at a time, in order.
    pub state: Option<Arc<crate::state::stage::StageState>>,
}

impl std::fmt::Debug for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stage")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("plugin", &self.reference)
            .finish_non_exhaustive()
    }
}

impl Stage {
    /// The plugin version serving now.
    pub fn plugin(&self) -> Arc<Plugin> {
        self.slot.current().plugin.clone()
    }

    pub(crate) fn reason(
        &self,
        version: &PluginVersion,
        error_kind: &str,
        rule: Option<Arc<str>>,
        message: String,
    ) -> Reason {
        Reason {
            stage: self.name.clone(),
            plugin: Arc::from(version.plugin.name()),
            plugin_sha256: Arc::from(version.plugin.sha256()),
            error_kind: Arc::from(error_kind),
            rule,
            message: message.into(),
        }
    }
}

/// Where each row of a batch came from, for batches that merge several
/// requests (`weir serve`).
#[derive(Debug, Clone)]
pub struct Origins {
    /// For each current row, its row number in the merged input batch (or,
    /// after a transform changed the row count, its request's first row).
    pub rows: Vec<u32>,
    /// First input row of each request, ascending; request `i` owns input
    /// rows `starts[i]..starts[i + 1]`.
    pub starts: Arc<[u32]>,
}

impl Origins {
    /// Origins of a fresh merged batch of `rows` rows whose requests start
    /// at `starts`.
    pub fn new(rows: usize, starts: Arc<[u32]>) -> Origins {
        Origins {
            rows: (0..rows as u32).collect(),
            starts,
        }
    }

    /// Which request input row `row` belongs to.
    pub fn request_of(&self, row: u32) -> usize {
        self.starts.partition_point(|&start| start <= row) - 1
    }

    pub(crate) fn take(&self, keep: &BooleanArray) -> Origins {
        Origins {
            rows: self
                .rows
                .iter()
                .zip(keep.values().iter())
                .filter_map(|(&row, kept)| kept.then_some(row))
                .collect(),
            starts: self.starts.clone(),
        }
    }

    /// The origins of the rows at `indices` (a splice's selection), in
    /// that order.
    fn pick(&self, indices: &[u32]) -> Origins {
        Origins {
            rows: indices.iter().map(|&i| self.rows[i as usize]).collect(),
            starts: self.starts.clone(),
        }
    }

    fn slice(&self, range: std::ops::Range<usize>) -> Origins {
        Origins {
            rows: self.rows[range].to_vec(),
            starts: self.starts.clone(),
        }
    }

    /// Ranges of current rows that belong to one request each, in order.
    fn request_runs(&self) -> Vec<std::ops::Range<usize>> {
        let mut runs = Vec::new();
        let mut start = 0;
        for i in 1..=self.rows.len() {
            if i == self.rows.len()
                || self.request_of(self.rows[i]) != self.request_of(self.rows[start])
            {
                runs.push(start..i);
                start = i;
            }
        }
        runs
    }
}

/// Rows a stage rejected, each with its reason.
#[derive(Debug)]
pub struct Quarantined {
    /// The rows as the stage received them.
    pub rows: RecordBatch,
    /// One reason per row.
    pub reasons: Reasons,
    /// Their origins, when tracked.
    pub origins: Option<Origins>,
}

/// What a worker made of one source batch.
#[derive(Debug)]
pub struct BatchResult {
    /// The batch's sequence number, for re-ordering.
    pub seq: u64,
    /// The file (or request) it was read from.
    pub file: Arc<str>,
    /// Rows read.
    pub rows_read: u64,
    /// Rows that passed every stage.
    pub output: Option<RecordBatch>,
    /// Origins of `output`'s rows, when tracked.
    pub output_origins: Option<Origins>,
    /// Rejected rows, group by group.
    pub quarantined: Vec<Quarantined>,
    /// `stage=sha256` of the plugin version each stage ran (the snapshot
    /// taken when the batch started), in stage order; empty for rejected
    /// input.
    pub plugin_versions: Vec<String>,
    /// The extract plugin's state writes carried by this batch
    /// ([`crate::source::SourceBatch::state`]).
    pub source_state: Option<crate::state::Changes>,
}

impl BatchResult {
    pub(crate) fn empty(seq: u64, file: Arc<str>, rows_read: u64) -> BatchResult {
        BatchResult {
            seq,
            file,
            rows_read,
            output: None,
            output_origins: None,
            quarantined: Vec::new(),
            plugin_versions: Vec::new(),
            source_state: None,
        }
    }
}

enum StageOutput {
    Transformed(Transformed),
    Verdicts(Vec<Verdict>),
}

/// One stage's instance inside one worker.
struct StageRunner {
    stage: Arc<Stage>,
    /// The live instance and the version it was created from.
    instance: Option<(PluginInstance, Arc<PluginVersion>)>,
    report: StageReport,
}

impl StageRunner {
    /// Calls `version` of the plugin on `batch`; on any error the instance
    /// is dropped so the next batch gets a fresh one.
    fn call(
        &mut self,
        scope: &Scope,
        version: &Arc<PluginVersion>,
        batch: &RecordBatch,
    ) -> Result<StageOutput, CallFailure> {
        let span = tracing::debug_span!("plugin_call", stage = %self.stage.name, plugin = version.plugin.name(), sha256 = &version.plugin.sha256()[..12], rows = batch.num_rows());
        let _entered = span.enter();
        let result = self.try_call(scope, version, batch);
        let result = match result {
            Err(CallFailure::Plugin(error)) => Err(error),
            Err(fatal) => return Err(fatal),
            Ok(output) => Ok(output),
        };
        if let Err(error) = &result {
            self.instance = None;
            *self
                .report
                .errors
                .entry(error.kind().to_string())
                .or_default() += 1;
            metrics::counter!(
                "weir_plugin_errors_total",
                &scope.labels_with(&self.stage.name, "kind", error.kind())
            )
            .increment(1);
            tracing::warn!(stage = %self.stage.name, plugin = version.plugin.name(), kind = error.kind(), %error, rows = batch.num_rows(), "plugin call failed");
        }
        result.map_err(CallFailure::Plugin)
    }

    /// Sends the columns the stage reads, calls it, and splices its output
    /// back onto `batch`.
    fn try_call(
        &mut self,
        scope: &Scope,
        version: &Arc<PluginVersion>,
        batch: &RecordBatch,
    ) -> Result<StageOutput, CallFailure> {
        // An instance of another version (before or after a reload) is stale.
        if self
            .instance
            .as_ref()
            .is_some_and(|(_, v)| !Arc::ptr_eq(v, version))
        {
            self.instance = None;
        }
        if self.instance.is_none() {
            self.report.instances += 1;
            let sha256 = version.plugin.sha256();
            if !self.report.plugin_versions.iter().any(|v| v == sha256) {
                self.report.plugin_versions.push(sha256.to_string());
            }
            let stage = &self.stage;
            let instance = version
                .plugin
                .instantiate_with(
                    &stage.name,
                    stage.config_json.clone(),
                    stage.limits,
                    &stage.grants,
                    scope.memory.clone(),
                    None,
                )
                .map_err(CallFailure::Plugin)?;
            let mut instance = instance;
            if let Some(state) = &stage.state {
                instance.attach_state(state.clone());
            }
            self.instance = Some((instance, version.clone()));
        }
        let (instance, _) = self.instance.as_mut().expect("instantiated above");
        // Only the columns the stage reads cross the boundary.
        let sent = splice::project(batch, instance.reads());
        let lent = Lendable::new(&sent).map_err(|e| {
            CallFailure::Fatal(anyhow!(
                "stage `{}`: cannot pass the batch to the plugin: {e}",
                self.stage.name
            ))
        })?;
        let wit = lent.lend();
        self.report.calls += 1;
        let sent_bytes = wit.payload_bytes();
        self.report.bytes_sent += sent_bytes;
        let mut returned_bytes = 0;
        let output = match self.stage.kind {
            PluginKind::Transform => instance.transform_with(batch, &wit).and_then(|(out, _)| {
                returned_bytes = out.payload_bytes();
                Ok(StageOutput::Transformed(splice::apply(batch, out)?))
            }),
            PluginKind::Validate => instance
                .validate_with(batch, &wit)
                .map(|(verdicts, _)| StageOutput::Verdicts(verdicts)),
            PluginKind::Extract => unreachable!("extract stages are rejected by config validation"),
        };
        // The call's state writes count only with an output the stage keeps.
        if output.is_ok() {
            instance.commit_state();
        }
        // Failed calls count too: a call stopped at its deadline burned fuel.
        let stats = instance.last_call();
        self.report.fuel_consumed += stats.fuel;
        self.report.call_time_ms += stats.duration.as_secs_f64() * 1000.0;
        self.report.call_times.record(stats.duration);
        self.report.peak_memory_bytes = self.report.peak_memory_bytes.max(stats.peak_memory_bytes);
        let labels = [
            ("tenant", scope.tenant.to_string()),
            ("pipeline", scope.pipeline.to_string()),
            ("stage", self.stage.name.to_string()),
            ("plugin", self.stage.reference.clone()),
        ];
        metrics::histogram!("weir_plugin_call_duration_seconds", &labels)
            .record(stats.duration.as_secs_f64());
        metrics::counter!("weir_plugin_fuel_consumed_total", &labels).increment(stats.fuel);
        self.report.bytes_returned += returned_bytes;
        metrics::counter!("weir_plugin_bytes_sent_total", &labels).increment(sent_bytes);
        metrics::counter!("weir_plugin_bytes_returned_total", &labels).increment(returned_bytes);
        metrics::gauge!("weir_plugin_peak_memory_bytes", &labels)
            .set(self.report.peak_memory_bytes as f64);
        output.map_err(CallFailure::Plugin)
    }
}

/// Why a stage call produced no output.
enum CallFailure {
    /// The plugin failed; the rows are quarantined (or the run stops, with
    /// `on_error = "fail"`).
    Plugin(PluginError),
    /// The host could not even make the call; the run stops.
    Fatal(anyhow::Error),
}

/// Whose batches a worker runs: the labels of its metrics and logs.
#[derive(Debug, Clone)]
pub struct Scope {
    /// The tenant (`default` outside `weir serve`'s tenants).
    pub tenant: Arc<str>,
    /// The pipeline's name.
    pub pipeline: Arc<str>,
    /// The tenant's linear-memory quota, shared by all its instances.
    pub memory: Option<Arc<crate::plugin::MemoryPool>>,
    /// The tenant's fuel budget: a failed batch is split to find its poison
    /// rows only while the budget lasts.
    pub fuel: Option<Arc<dyn FuelBudget>>,
}

/// A tenant's fuel budget as the stages see it (`weir serve`'s
/// `fuel_per_second` quota).
pub trait FuelBudget: Send + Sync + std::fmt::Debug {
    /// Fuel units the tenant may still burn now, before this batch's
    /// calls are charged; negative when it is in debt.
    fn available(&self) -> f64;
}

impl Scope {
    /// The scope of `pipeline` of `tenant`.
    pub fn new(tenant: &str, pipeline: &str) -> Scope {
        Scope {
            tenant: Arc::from(tenant),
            pipeline: Arc::from(pipeline),
            memory: None,
            fuel: None,
        }
    }

    fn labels(&self, stage: &str) -> [(&'static str, String); 3] {
        [
            ("tenant", self.tenant.to_string()),
            ("pipeline", self.pipeline.to_string()),
            ("stage", stage.to_string()),
        ]
    }

    fn labels_with(
        &self,
        stage: &str,
        key: &'static str,
        value: &str,
    ) -> [(&'static str, String); 4] {
        let [tenant, pipeline, stage] = self.labels(stage);
        [tenant, pipeline, stage, (key, value.to_string())]
    }
}

/// A worker's state: one plugin instance per stage, and per-stage counts.
pub struct Worker {
    scope: Scope,
    runners: Vec<StageRunner>,
    /// `[sink] lineage_column`, when set.
    lineage_column: Option<String>,
}

impl Worker {
    /// A worker for `stages`, labelled `scope` in metrics and logs.
    pub fn new(scope: Scope, stages: &[Arc<Stage>], lineage_column: Option<String>) -> Self {
        Self {
            scope,
            lineage_column,
            runners: stages
                .iter()
                .map(|stage| StageRunner {
                    stage: stage.clone(),
                    instance: None,
                    report: StageReport::default(),
                })
                .collect(),
        }
    }

    /// The per-stage counts since the last call, in stage order; the worker's
    /// counts start again from zero.
    pub fn take_reports(&mut self) -> Vec<StageReport> {
        self.runners
            .iter_mut()
            .map(|r| std::mem::take(&mut r.report))
            .collect()
    }

    /// Runs one batch through every stage.
    ///
    /// # Errors
    /// Only fatal errors: a batch the host cannot convert, or a plugin
    /// failure in an `on_error = "fail"` stage.
    pub fn process(&mut self, seq: u64, item: SourceItem) -> Result<BatchResult> {
        self.process_tracked(seq, item, None)
    }

    /// [`Worker::process`], tracking where each row came from (`origins`
    /// describes the rows of `item`, which must be a batch).
    ///
    /// # Errors
    /// As [`Worker::process`].
    pub fn process_tracked(
        &mut self,
        seq: u64,
        item: SourceItem,
        mut origins: Option<Origins>,
    ) -> Result<BatchResult> {
        let source = match item {
            SourceItem::Batch(batch) => batch,
            // Rejected input (a CSV record that does not parse, a file the
            // extract plugin refused) counts as read and quarantined, so
            // read = written + quarantined + filtered.
            SourceItem::Rejected {
                file,
                rows,
                reasons,
            } => {
                let mut result = BatchResult::empty(seq, file, rows.num_rows() as u64);
                result.quarantined.push(Quarantined {
                    rows,
                    reasons,
                    origins,
                });
                return Ok(result);
            }
        };
        let span = tracing::debug_span!("batch", tenant = %self.scope.tenant, pipeline = %self.scope.pipeline, seq, rows = source.batch.num_rows(), file = %source.file);
        let _entered = span.enter();
        let mut result = BatchResult::empty(seq, source.file, source.batch.num_rows() as u64);
        result.source_state = source.state;
        let mut batch = source.batch;
        // Every stage's version is fixed when the batch starts, so a reload
        // during the batch never mixes versions within it.
        let versions: Vec<Arc<PluginVersion>> = self
            .runners
            .iter()
            .map(|r| r.stage.slot.current())
            .collect();
        result.plugin_versions = self
            .runners
            .iter()
            .zip(&versions)
            .map(|(r, v)| format!("{}={}", r.stage.name, v.plugin.sha256()))
            .collect();
        let scope = self.scope.clone();
        for (runner, version) in self.runners.iter_mut().zip(&versions) {
            let mut rows_in = batch.num_rows();
            runner.report.records_in += rows_in as u64;
            if rows_in == 0 {
                continue;
            }
            let stage = runner.stage.clone();
            // Stages that fail the run on error have nothing to rest.
            let guarded = stage.on_error != OnError::Fail;
            if guarded && let Admission::Rest(rest) = stage.slot.breaker().admit() {
                runner.report.quarantined += rows_in as u64;
                runner.report.rested_batches += 1;
                metrics::counter!(
                    "weir_plugin_rested_batches_total",
                    &scope.labels(&stage.name)
                )
                .increment(1);
                let status = stage.slot.breaker().status();
                let wait = if rest.is_zero() {
                    "one probe batch is testing it now".to_string()
                } else {
                    format!("it is not called for another {} ms", rest.as_millis())
                };
                let message = format!(
                    "the plugin is unhealthy (circuit open after {} batches in a row failed); {wait}. Replay these rows once it is fixed or reloaded",
                    status.consecutive_failures,
                );
                let reason = stage.reason(version, "circuit_open", None, message);
                result.quarantined.push(Quarantined {
                    rows: batch,
                    reasons: Reasons::same(reason, rows_in),
                    origins,
                });
                return Ok(result);
            }
            let output = match runner.call(&scope, version, &batch) {
                Ok(output) => {
                    if guarded {
                        stage.slot.breaker().record(true);
                    }
                    output
                }
                Err(CallFailure::Fatal(error)) => {
                    if guarded {
                        stage.slot.breaker().record(false);
                    }
                    return Err(error);
                }
                Err(CallFailure::Plugin(error)) => {
                    if !guarded {
                        return Err(fail_error(&stage, version, &error));
                    }
                    let isolated = runner.isolate(&scope, version, &batch, error);
                    let passed = isolated.as_ref().is_ok_and(|i| !i.passed.is_empty());
                    if stage.slot.breaker().record(passed) {
                        let status = stage.slot.breaker().status();
                        metrics::counter!(
                            "weir_plugin_circuit_trips_total",
                            &scope.labels(&stage.name)
                        )
                        .increment(1);
                        tracing::warn!(stage = %stage.name, plugin = version.plugin.name(), failures = status.consecutive_failures, retry_in_ms = status.retry_in_ms, "the plugin is unhealthy: circuit open, batches are quarantined without calling it until the backoff ends");
                    }
                    let isolated = isolated?;
                    for (range, error) in &isolated.failed {
                        let reason = stage.reason(version, error.kind(), None, error.to_string());
                        runner.report.quarantined += range.len() as u64;
                        result.quarantined.push(Quarantined {
                            rows: batch.slice(range.start, range.len()),
                            reasons: Reasons::same(reason, range.len()),
                            origins: origins.as_ref().map(|o| o.slice(range.clone())),
                        });
                    }
                    let Some(output) = isolated.combine(&stage)? else {
                        return Ok(result);
                    };
                    let keep = isolated.keep_mask(rows_in);
                    batch = arrow::compute::filter_record_batch(&batch, &keep)?;
                    if let Some(tracked) = &mut origins {
                        *tracked = tracked.take(&keep);
                    }
                    rows_in = batch.num_rows();
                    output
                }
            };
            match output {
                StageOutput::Transformed(Transformed { batch: out, rows }) => {
                    if let (Some(tracked), Some(rows)) = (&mut origins, &rows) {
                        // A splice says which input row each output row is.
                        *tracked = tracked.pick(&rows.indices());
                    } else if let Some(tracked) = &mut origins
                        && out.num_rows() != rows_in
                    {
                        let runs = tracked.request_runs();
                        if runs.len() > 1 {
                            // Call again request by request so that every
                            // row keeps its request (see the module docs).
                            let (out, out_origins, quarantined) = runner.per_request(
                                &scope,
                                version,
                                &batch,
                                tracked,
                                &runs,
                                &mut result,
                            )?;
                            runner.report.filtered +=
                                (rows_in - quarantined).saturating_sub(out.num_rows()) as u64;
                            batch = out;
                            *tracked = out_origins;
                            runner.report.records_out += batch.num_rows() as u64;
                            continue;
                        }
                        let first = tracked.starts[tracked.request_of(tracked.rows[0])];
                        tracked.rows = vec![first; out.num_rows()];
                    }
                    runner.report.filtered += rows_in.saturating_sub(out.num_rows()) as u64;
                    batch = out;
                }
                StageOutput::Verdicts(verdicts) => {
                    let split = split_by_verdicts(&batch, verdicts, &stage, version)?;
                    if let Some((rows, reasons, failed_mask)) = split.failed {
                        runner.report.quarantined += rows.num_rows() as u64;
                        result.quarantined.push(Quarantined {
                            rows,
                            reasons,
                            origins: origins.as_ref().map(|o| o.take(&failed_mask)),
                        });
                    }
                    if let Some(tracked) = &mut origins
                        && let Some(keep) = &split.keep
                    {
                        *tracked = tracked.take(keep);
                    }
                    batch = split.passed;
                }
            }
            runner.report.records_out += batch.num_rows() as u64;
        }
        if let Some(column) = &self.lineage_column {
            batch = with_lineage(batch, column, &result.plugin_versions)?;
        }
        result.output = Some(batch);
        result.output_origins = origins;
        Ok(result)
    }
}

fn fail_error(stage: &Stage, version: &PluginVersion, error: &PluginError) -> anyhow::Error {
    anyhow!(
        "stage `{}` (plugin {}, sha256 {}) failed and has on_error = \"fail\": {error}",
        stage.name,
        version.plugin.name(),
        version.plugin.sha256()
    )
}

impl StageRunner {
    /// Calls a transform once per request run of `batch`; a failing run is
    /// quarantined on its own (or fails the batch with `on_error = "fail"`).
    /// Returns the output, its origins and the number of rows quarantined.
    fn per_request(
        &mut self,
        scope: &Scope,
        version: &Arc<PluginVersion>,
        batch: &RecordBatch,
        origins: &Origins,
        runs: &[std::ops::Range<usize>],
        result: &mut BatchResult,
    ) -> Result<(RecordBatch, Origins, usize)> {
        metrics::counter!(
            "weir_transform_recalls_total",
            &scope.labels(&self.stage.name)
        )
        .increment(1);
        let stage = self.stage.clone();
        let mut outputs = Vec::new();
        let mut rows = Vec::new();
        let mut quarantined = 0;
        for run in runs {
            let slice = batch.slice(run.start, run.len());
            let slice_origins = Origins {
                rows: origins.rows[run.clone()].to_vec(),
                starts: origins.starts.clone(),
            };
            match self.call(scope, version, &slice) {
                Ok(StageOutput::Transformed(Transformed { batch: out, .. })) => {
                    let same = out.num_rows() == run.len();
                    let first = origins.starts[origins.request_of(origins.rows[run.start])];
                    rows.extend(if same {
                        slice_origins.rows
                    } else {
                        vec![first; out.num_rows()]
                    });
                    outputs.push(out);
                }
                Ok(StageOutput::Verdicts(_)) => unreachable!("only transforms are re-called"),
                Err(CallFailure::Fatal(error)) => return Err(error),
                Err(CallFailure::Plugin(error)) => {
                    if stage.on_error == OnError::Fail {
                        return Err(fail_error(&stage, version, &error));
                    }
                    self.report.quarantined += run.len() as u64;
                    quarantined += run.len();
                    let reason = stage.reason(version, error.kind(), None, error.to_string());
                    result.quarantined.push(Quarantined {
                        rows: slice,
                        reasons: Reasons::same(reason, run.len()),
                        origins: Some(slice_origins),
                    });
                }
            }
        }
        let batch = match outputs.first() {
            Some(first) => arrow::compute::concat_batches(&first.schema(), &outputs)
                .map_err(|e| anyhow!("stage `{}`: its outputs for the requests of one batch differ in schema: {e}", stage.name))?,
            None => RecordBatch::new_empty(batch.schema()),
        };
        Ok((
            batch,
            Origins {
                rows,
                starts: origins.starts.clone(),
            },
            quarantined,
        ))
    }
}

/// A failed batch after [`StageRunner::isolate`]: the row ranges whose
/// calls went through, with their outputs, and those that kept failing.
/// Together the ranges cover the batch exactly once; both lists are in row
/// order.
struct Isolated {
    passed: Vec<(std::ops::Range<usize>, StageOutput)>,
    failed: Vec<(std::ops::Range<usize>, PluginError)>,
}

impl Isolated {
    /// Which rows of the batch passed.
    fn keep_mask(&self, rows: usize) -> BooleanArray {
        let mut keep = vec![false; rows];
        for (range, _) in &self.passed {
            keep[range.clone()].fill(true);
        }
        BooleanArray::from(keep)
    }

    /// The passed ranges' outputs as one output for the passed rows (in
    /// order, as if the plugin had been called on them alone); `None` when
    /// no range passed.
    fn combine(&self, stage: &Stage) -> Result<Option<StageOutput>> {
        let Some((_, first)) = self.passed.first() else {
            return Ok(None);
        };
        Ok(Some(match first {
            StageOutput::Transformed(first) => {
                let parts: Vec<&Transformed> = self
                    .passed
                    .iter()
                    .map(|(_, output)| match output {
                        StageOutput::Transformed(out) => out,
                        StageOutput::Verdicts(_) => unreachable!("one stage has one kind"),
                    })
                    .collect();
                let batch = arrow::compute::concat_batches(
                    &first.batch.schema(),
                    parts.iter().map(|p| &p.batch),
                )
                .map_err(|e| {
                    anyhow!("stage `{}`: its outputs for the parts of a split batch differ in schema: {e}", stage.name)
                })?;
                // Renumber each part's rows into the batch of passed rows.
                let mut rows = Some(Vec::with_capacity(batch.num_rows()));
                let mut offset = 0u32;
                for ((range, _), part) in self.passed.iter().zip(&parts) {
                    match (&mut rows, &part.rows) {
                        (Some(all), Some(part)) => {
                            all.extend(part.indices().into_iter().map(|r| r + offset));
                        }
                        _ => rows = None,
                    }
                    offset += range.len() as u32;
                }
                StageOutput::Transformed(Transformed {
                    batch,
                    rows: rows.map(Kept::Indices),
                })
            }
            StageOutput::Verdicts(_) => {
                // Renumber each part's rows into the batch of passed rows.
                let mut verdicts = Vec::new();
                let mut offset = 0u32;
                for (range, output) in &self.passed {
                    let StageOutput::Verdicts(part) = output else {
                        unreachable!("one stage has one kind")
                    };
                    verdicts.extend(part.iter().map(|v| Verdict {
                        row: v.row + offset,
                        rule: v.rule.clone(),
                        message: v.message.clone(),
                    }));
                    offset += range.len() as u32;
                }
                StageOutput::Verdicts(verdicts)
            }
        }))
    }
}

impl StageRunner {
    /// Whether the tenant's fuel budget is spent, counting what this stage
    /// burned in the running batch (charged to the budget after it).
    fn out_of_fuel(&self, scope: &Scope) -> bool {
        scope
            .fuel
            .as_ref()
            .is_some_and(|fuel| fuel.available() - self.report.fuel_consumed as f64 <= 0.0)
    }

    /// Finds the rows of `batch` that make the plugin fail (`error` is the
    /// failure of the call on the whole batch): a failing range is split in
    /// halves and each half called again, until a range is a single row or
    /// the stage's `bisect_max_calls` (or the tenant's fuel budget) are
    /// spent. Plugins are taken to fail on rows, not on combinations; a
    /// failure that depends on the batch as a whole (its size, say) also
    /// ends up isolated, in the smallest ranges that still fail.
    ///
    /// # Errors
    /// Only when the host cannot make a call at all.
    fn isolate(
        &mut self,
        scope: &Scope,
        version: &Arc<PluginVersion>,
        batch: &RecordBatch,
        error: PluginError,
    ) -> Result<Isolated> {
        let mut budget = self.stage.bisect_max_calls;
        let mut passed = Vec::new();
        let mut failed = Vec::new();
        let mut failing = vec![(0..batch.num_rows(), error)];
        let mut out_of_fuel = false;
        while let Some((range, error)) = failing.pop() {
            // A start-up failure or a rejected config does not depend on
            // the rows: splitting would only repeat it.
            let splittable = !matches!(
                error,
                PluginError::Instantiate(_)
                    | PluginError::Returned {
                        kind: "invalid-config",
                        ..
                    }
            );
            if range.len() < 2 || budget < 2 || !splittable || out_of_fuel {
                failed.push((range, error));
                continue;
            }
            if self.out_of_fuel(scope) {
                tracing::info!(tenant = %scope.tenant, stage = %self.stage.name, "the tenant's fuel budget is spent: the rest of the failed batch is quarantined without splitting further");
                out_of_fuel = true;
                failed.push((range, error));
                continue;
            }
            budget -= 2;
            let middle = range.start + range.len() / 2;
            for half in [range.start..middle, middle..range.end] {
                self.report.bisect_calls += 1;
                match self.call(scope, version, &batch.slice(half.start, half.len())) {
                    Ok(output) => passed.push((half, output)),
                    Err(CallFailure::Plugin(error)) => failing.push((half, error)),
                    Err(CallFailure::Fatal(error)) => return Err(error),
                }
            }
        }
        passed.sort_by_key(|(range, _)| range.start);
        failed.sort_by_key(|(range, _)| range.start);
        let calls = self.stage.bisect_max_calls - budget;
        if calls > 0 {
            metrics::counter!(
                "weir_plugin_bisect_calls_total",
                &scope.labels(&self.stage.name)
            )
            .increment(u64::from(calls));
            tracing::info!(stage = %self.stage.name, calls, failed_rows = failed.iter().map(|(r, _)| r.len()).sum::<usize>(), rows = batch.num_rows(), "split a failed batch to isolate the rows that make the plugin fail");
        }
        Ok(Isolated { passed, failed })
    }
}

/// `batch` with a `column` naming, for every row, the plugin version each
/// stage ran: `stage=sha256;stage=sha256…` in stage order.
fn with_lineage(
    batch: RecordBatch,
    column: &str,
    plugin_versions: &[String],
) -> Result<RecordBatch> {
    if batch.schema().index_of(column).is_ok() {
        bail!(
            "sink.lineage_column `{column}` is already a column of the output; choose another name"
        );
    }
    let lineage = plugin_versions.join(";");
    Ok(columnar::with_constant_utf8(
        batch,
        &[(column, Some(&lineage))],
    )?)
}

/// A batch split by a validator's verdicts.
struct Split {
    /// Rows without a verdict.
    passed: RecordBatch,
    /// Which rows passed; `None` when all did.
    keep: Option<BooleanArray>,
    /// Rows with one or more verdicts, their joined rule ids and messages,
    /// and the mask selecting them.
    failed: Option<(RecordBatch, Reasons, BooleanArray)>,
}

fn split_by_verdicts(
    batch: &RecordBatch,
    verdicts: Vec<Verdict>,
    stage: &Stage,
    version: &PluginVersion,
) -> Result<Split> {
    if verdicts.is_empty() {
        return Ok(Split {
            passed: batch.clone(),
            keep: None,
            failed: None,
        });
    }
    // Each failing row's rule ids (`,`-joined, each once) and messages
    // (`; `-joined), in row order. Rows were checked to be in the batch when
    // the verdicts were lifted. A row with a single verdict (the common
    // case) keeps the verdict's own strings: no copy, no join, and the
    // rule shared by the rows one `reject` call failed.
    const PASSED: u32 = u32::MAX;
    let mut failure_of = vec![PASSED; batch.num_rows()];
    let mut failures: Vec<(u32, Arc<str>, VerdictMessage)> = Vec::new();
    // The messages of rows with several verdicts, joined as they come
    // (by slot in `failures`).
    let mut joined: HashMap<u32, String> = HashMap::new();
    for verdict in verdicts {
        let slot = &mut failure_of[verdict.row as usize];
        if *slot == PASSED {
            *slot = failures.len() as u32;
            failures.push((verdict.row, verdict.rule, verdict.message));
        } else {
            let (_, rules, messages) = &mut failures[*slot as usize];
            if !rules.split(',').any(|rule| rule == &*verdict.rule) {
                *rules = Arc::from(format!("{rules},{}", verdict.rule));
            }
            let text = joined
                .entry(*slot)
                .or_insert_with(|| String::from(&**messages));
            text.push_str("; ");
            text.push_str(&verdict.message);
        }
    }
    for (slot, text) in joined {
        failures[slot as usize].2 = VerdictMessage::Text(Arc::from(text));
    }
    failures.sort_unstable_by_key(|(row, _, _)| *row);
    // Bit-packed 64 rows at a time (an `Option<bool>` per row was about
    // 2% of a run with half its rows rejected).
    let keep = BooleanArray::new(
        arrow::buffer::BooleanBuffer::collect_bool(failure_of.len(), |row| {
            failure_of[row] == PASSED
        }),
        None,
    );
    let failed_mask = arrow::compute::not(&keep)?;
    let passed = arrow::compute::filter_record_batch(batch, &keep)?;
    let failed = arrow::compute::filter_record_batch(batch, &failed_mask)?;
    // Rows that one rule failed alone share its allocation, and so a run.
    let template = stage
        .reason(version, "validation", None, String::new())
        .cause();
    let mut reasons = Reasons::default();
    for (_, rules, message) in &failures {
        reasons.push(&template, Some(rules), message);
    }
    Ok(Split {
        passed,
        keep: Some(keep),
        failed: Some((failed, reasons, failed_mask)),
    })
}
