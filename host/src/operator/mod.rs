//! Built-in stateful operators: `dedupe`, `aggregate` and `latest`.
//!
//! A pipeline's `[[operators]]` run after its plugin stages, on the rows
//! that passed them, **in input order and one batch at a time** (the
//! plugin stages run in parallel; state must see rows in order to be
//! deterministic, so a resumed run rebuilds exactly the state an
//! uninterrupted one had). They are host-native (Arrow kernels, no
//! boundary to cross): state is the host's, and these operators are where
//! a pipeline's rows are most numerous.
//!
//! An [`OperatorChain`] holds the operators and their working state. Its
//! changes become durable through the checkpoint protocol: at each epoch
//! the chain is one more connector (`state`, [`crate::sink::EpochSink`])
//! whose prepared file is the epoch's [`crate::state::Delta`]; at publish
//! (or, in `weir serve`, at each part's commit) the deltas are applied to
//! the pipeline's [`crate::state::StateStore`] under a marker, once.

pub mod aggregate;
pub mod config;
pub mod dedupe;
pub mod latest;
pub mod report;
pub mod time;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use arrow::array::BooleanArray;
use arrow::record_batch::RecordBatch;

use crate::reason::{Reason, Reasons};
use crate::sink::{EpochContext, EpochSink, OutputFile, Prepared};
use crate::stages::{Origins, Quarantined};
use crate::state::stage::StageState;
use crate::state::{Changes, Delta, StateBudget, StateStore};

pub use config::{OperatorConfig, OperatorKind};
pub use report::OperatorReport;

/// The schema the last of `configs` emits for input rows of `input` (the
/// stages' output schema): dedupe passes its input's, aggregate makes its
/// own ([`aggregate::output_schema`]), latest appends the table's joined
/// columns ([`latest::output_schema`]).
///
/// # Errors
/// A column an operator names is missing or of the wrong type.
pub fn output_schema(
    configs: &[OperatorConfig],
    input: arrow::datatypes::SchemaRef,
) -> Result<arrow::datatypes::SchemaRef> {
    let mut schema = input;
    for config in configs {
        schema = match config.kind {
            OperatorKind::Dedupe => {
                for name in config.key.iter().chain(&config.event_time) {
                    if schema.field_with_name(name).is_err() {
                        anyhow::bail!(
                            "operator `{}`: column `{name}` is not in its input (columns: {})",
                            config.name,
                            crate::columnar::column_names(&schema)
                        );
                    }
                }
                schema
            }
            OperatorKind::Aggregate => aggregate::output_schema(config, &schema)?,
            OperatorKind::Latest => latest::output_schema(config, &schema)?,
        };
    }
    Ok(schema)
}

/// The quarantine's `plugin` for rows an operator rejected.
const PLUGIN_LABEL: &str = "operator";

/// Rows an operator rejected.
#[derive(Debug)]
pub struct Rejected {
    /// The rows as the operator received them.
    pub rows: RecordBatch,
    /// One reason per row.
    pub reasons: Reasons,
    /// Each row's position in the operator's input batch.
    pub positions: Vec<u32>,
}

impl Rejected {
    /// The rows at `rows` of `batch`, each with its reason.
    ///
    /// # Errors
    /// A row out of range.
    pub fn take(batch: &RecordBatch, rows: &[usize], reasons: Reasons) -> Result<Rejected> {
        let positions: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        let indices = arrow::array::UInt32Array::from(positions.clone());
        Ok(Rejected {
            rows: arrow::compute::take_record_batch(batch, &indices)?,
            reasons,
            positions,
        })
    }

    /// The rows at `rows` of `batch`, whose event-time `column` is null or
    /// out of range, rejected by `operator` as `missing_event_time`.
    ///
    /// # Errors
    /// A row out of range.
    pub fn missing_event_time(
        operator: &str,
        column: &str,
        batch: &RecordBatch,
        rows: &[usize],
    ) -> Result<Rejected> {
        let message = format!(
            "the event-time column `{column}` is null or out of range (beyond ±31,000 years)"
        );
        let reasons = Reasons::same(reason(operator, "missing_event_time", message), rows.len());
        Rejected::take(batch, rows, reasons)
    }
}

/// `name=value, …` of the `key` columns of `batch`'s row `row`, for a
/// quarantine message.
fn describe_key(key: &[String], batch: &RecordBatch, row: usize) -> String {
    key.iter()
        .map(|name| {
            let value = batch
                .column_by_name(name)
                .and_then(|c| arrow::util::display::array_value_to_string(c, row).ok())
                .unwrap_or_default();
            format!("{name}={value}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// What one operator made of one batch.
#[derive(Debug, Default)]
pub struct Step {
    /// Rows passed on (`None`: none).
    pub output: Option<RecordBatch>,
    /// For an operator that only filters (dedupe), which input rows are in
    /// `output`, in order; `None` when the output's rows are new ones.
    pub kept: Option<BooleanArray>,
    /// Rows rejected, with their reasons.
    pub rejected: Vec<Rejected>,
    /// Rows left out on purpose (duplicates dropped).
    pub dropped: u64,
    /// Rows that arrived after their windows closed (also in `rejected`).
    pub late: u64,
}

/// A stateful operator over record batches.
pub trait Operator: Send {
    /// Applies stored changes (the store's entries, then committed deltas).
    ///
    /// # Errors
    /// A value that does not decode (a store written by another weir).
    fn restore(&mut self, changes: Changes) -> Result<()>;

    /// Takes the next batch, in input order.
    ///
    /// # Errors
    /// A missing or mistyped column: the run stops (it would fail on every
    /// batch).
    fn process(&mut self, batch: &RecordBatch) -> Result<Step>;

    /// The input ended (`weir run`): closes every open window and returns
    /// its rows.
    ///
    /// # Errors
    /// The output cannot be built.
    fn finish(&mut self) -> Result<Option<RecordBatch>>;

    /// The keys changed since the last call.
    fn take_changes(&mut self) -> Changes;

    /// Makes the last batches' changes permanent (they can no longer be
    /// rolled back).
    fn accept(&mut self);

    /// Undoes every change since the last [`Operator::accept`].
    fn rollback(&mut self);

    /// Keys and approximate bytes of its state.
    fn state_size(&self) -> (u64, u64);
}

/// What the operators made of one batch.
#[derive(Debug, Default)]
pub struct ChainOutput {
    /// Rows for the sink.
    pub output: Option<RecordBatch>,
    /// Rows rejected, group by group (with their origins when the input's
    /// were given and the rows still map to input rows).
    pub quarantined: Vec<Quarantined>,
    /// Where `output`'s rows come from, when the input's origins were
    /// given and every operator only filtered.
    pub output_origins: Option<Origins>,
    /// An operator whose state would have passed its quota: (its name,
    /// why). The whole batch is then undone and quarantined.
    over_quota: Option<(String, String)>,
}

struct Slot {
    operator: Box<dyn Operator>,
    quota: u64,
    report: OperatorReport,
}

/// A pipeline's operators, in order, and its plugin stages' keyed state
/// ([`StageState`]), with their state store: everything of the pipeline's
/// state that is committed with its output.
pub struct OperatorChain {
    slots: Vec<Slot>,
    /// The keyed state of the stateful plugin stages, changed by their
    /// calls (which run before the operators) and committed here.
    stages: Vec<Arc<StageState>>,
    /// The tenant's state budget (`weir serve`), and the bytes of this
    /// chain's state it counts.
    budget: Option<Arc<StateBudget>>,
    counted: u64,
    /// The extract plugin's state writes carried by the batches written
    /// since the last delta ([`OperatorChain::note_source_state`]).
    source_pending: Changes,
    store: StateStore,
    /// The epoch directory the next delta goes to (`weir run`).
    epoch_dir: Option<PathBuf>,
    /// The run whose deltas [`EpochSink::publish`] applies.
    run_id: String,
}

impl std::fmt::Debug for OperatorChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperatorChain")
            .field("operators", &self.slots.len())
            .field("store", &self.store)
            .finish()
    }
}

/// File name of an epoch's (or a part's) state delta.
pub const DELTA_FILE: &str = "delta.bin";

fn reason(operator: &str, kind: &str, message: String) -> Reason {
    Reason {
        stage: Arc::from(operator),
        plugin: Arc::from(PLUGIN_LABEL),
        plugin_sha256: Arc::from(concat!("weir-", env!("CARGO_PKG_VERSION"))),
        error_kind: Arc::from(kind),
        rule: None,
        message: message.into(),
    }
}

impl OperatorChain {
    /// The operators of `configs` (already checked) and the keyed state of
    /// `stages` (stateful plugin stages), loaded from the store at
    /// `store_path`.
    ///
    /// # Errors
    /// The store cannot be opened or holds state this weir cannot read.
    pub fn open(
        configs: &[OperatorConfig],
        stages: &[Arc<StageState>],
        store_path: &Path,
        run_id: &str,
    ) -> Result<OperatorChain> {
        let store = StateStore::open(store_path)?;
        for stage in stages {
            let stored = store.load(stage.namespace())?;
            stage.restore(stored.into_iter().map(|(k, v)| (k, Some(v))).collect())?;
        }
        let mut slots = Vec::new();
        for config in configs {
            let mut operator: Box<dyn Operator> = match config.kind {
                OperatorKind::Dedupe => Box::new(dedupe::Dedupe::new(config)?),
                OperatorKind::Aggregate => Box::new(aggregate::Aggregate::new(config)?),
                OperatorKind::Latest => Box::new(latest::Latest::new(config)?),
            };
            let stored = store.load(&config.name)?;
            let settings = config.state_settings();
            match store.settings(&config.name)? {
                Some(recorded) if recorded == settings => {}
                Some(recorded) if !stored.is_empty() => anyhow::bail!(
                    "operator `{}`: its settings changed since its state in {} was written (then: {recorded}; now: {settings}), and that state cannot be read under the new ones. Drop it with `weir state reset PIPELINE --operator {}` (weir run) or by removing that file while weir serve is stopped, or restore the old settings",
                    config.name,
                    store_path.display(),
                    config.name
                ),
                _ => store.set_settings(&config.name, &settings)?,
            }
            operator
                .restore(stored.into_iter().map(|(k, v)| (k, Some(v))).collect())
                .with_context(|| {
                    format!(
                        "operator `{}`: its state in {} cannot be read; `weir state reset` drops it",
                        config.name,
                        store_path.display()
                    )
                })?;
            operator.accept();
            let (keys, bytes) = operator.state_size();
            slots.push(Slot {
                operator,
                quota: config.state_quota(),
                report: OperatorReport {
                    name: config.name.clone(),
                    kind: Some(config.kind),
                    state_keys: keys,
                    state_bytes: bytes,
                    ..OperatorReport::default()
                },
            });
        }
        Ok(OperatorChain {
            slots,
            stages: stages.to_vec(),
            budget: None,
            counted: 0,
            source_pending: Changes::new(),
            store,
            epoch_dir: None,
            run_id: run_id.to_string(),
        })
    }

    /// The store.
    pub fn store(&self) -> &StateStore {
        &self.store
    }

    /// Replays committed deltas (`weir run` resuming: each committed
    /// epoch's `state` directory, in order) into the working state.
    ///
    /// # Errors
    /// A delta that cannot be read.
    pub fn replay(&mut self, epochs: &[(PathBuf, Vec<OutputFile>)]) -> Result<()> {
        for (dir, parts) in epochs {
            for part in parts {
                self.restore(Delta::read(&dir.join(&part.path))?)?;
            }
        }
        Ok(())
    }

    /// Applies `delta` to the working state (not as a change).
    ///
    /// # Errors
    /// A value that does not decode.
    pub fn restore(&mut self, mut delta: Delta) -> Result<()> {
        for slot in &mut self.slots {
            if let Some(changes) = delta.namespaces.remove(slot.report.name.as_str()) {
                slot.operator.restore(changes)?;
                slot.operator.accept();
            }
        }
        for stage in &self.stages {
            if let Some(changes) = delta.namespaces.remove(stage.namespace()) {
                stage.restore(changes)?;
            }
        }
        self.sync_budget();
        Ok(())
    }

    /// Runs `batch` (rows × the stages' output schema) through every
    /// operator in order; `origins` (`weir serve`) says which request each
    /// row belongs to.
    ///
    /// # Errors
    /// A column an operator needs is missing or of the wrong type.
    pub fn process(&mut self, batch: RecordBatch, origins: Option<Origins>) -> Result<ChainOutput> {
        let mut out = ChainOutput {
            output_origins: origins.clone(),
            ..ChainOutput::default()
        };
        out.output = self.run_from(0, batch.clone(), &mut out)?;
        self.sync_budget();
        if let Some((operator, message)) = out.over_quota.take() {
            // Every operator's changes of this batch are undone, so that
            // the quarantined rows can be sent again unchanged.
            self.rollback();
            let rows = batch.num_rows();
            return Ok(ChainOutput {
                quarantined: vec![Quarantined {
                    rows: batch,
                    reasons: Reasons::same(reason(&operator, "state_quota", message), rows),
                    origins,
                }],
                ..ChainOutput::default()
            });
        }
        Ok(out)
    }

    /// Runs `batch` through the operators from `start` on, adding their
    /// rejected rows to `out`; returns the last one's output.
    fn run_from(
        &mut self,
        start: usize,
        batch: RecordBatch,
        out: &mut ChainOutput,
    ) -> Result<Option<RecordBatch>> {
        let mut current = Some(batch);
        let budget = self.budget.clone();
        // What the budget does not count yet (the stages' writes in this
        // batch), plus what each operator adds below; only with a budget.
        let mut growth = match &budget {
            Some(_) => self.total_bytes() as i64 - self.counted as i64,
            None => 0,
        };
        for slot in &mut self.slots[start..] {
            let Some(batch) = current.take().filter(|b| b.num_rows() > 0) else {
                break;
            };
            let rows = batch.num_rows() as u64;
            slot.report.records_in += rows;
            let before = slot.operator.state_size().1;
            let step = slot.operator.process(&batch)?;
            let (keys, bytes) = slot.operator.state_size();
            growth += bytes as i64 - before as i64;
            if let Some(budget) = &budget
                && budget.would_pass(growth)
            {
                let message = format!(
                    "the tenant's keyed state (all its stages and operators) would grow to {} bytes, over its max_state_bytes = {} (raise it, or reset state it no longer needs)",
                    (budget.used() as i64 + growth).max(0),
                    budget.limit()
                );
                slot.report.quarantined += rows;
                out.over_quota = Some((slot.report.name.clone(), message));
                return Ok(None);
            }
            if bytes > slot.quota {
                let message = format!(
                    "the operator's state would grow to {bytes} bytes, over its max_state_bytes = {} (raise it, shorten within/ttl/window, or reset the state)",
                    slot.quota
                );
                slot.report.quarantined += rows;
                out.over_quota = Some((slot.report.name.clone(), message));
                return Ok(None);
            }
            slot.report.state_keys = keys;
            slot.report.state_bytes = bytes;
            slot.report.dropped += step.dropped;
            slot.report.late += step.late;
            for group in &step.rejected {
                slot.report.quarantined += group.rows.num_rows() as u64;
            }
            slot.report.records_out += step.output.as_ref().map_or(0, |b| b.num_rows() as u64);
            for rejected in step.rejected {
                let origins = out.output_origins.as_ref().map(|o| Origins {
                    rows: rejected
                        .positions
                        .iter()
                        .map(|&p| o.rows[p as usize])
                        .collect(),
                    starts: o.starts.clone(),
                });
                out.quarantined.push(Quarantined {
                    rows: rejected.rows,
                    reasons: rejected.reasons,
                    origins,
                });
            }
            out.output_origins = match (out.output_origins.take(), &step.kept) {
                (Some(origins), Some(kept)) => Some(origins.take(kept)),
                _ => None,
            };
            current = step.output;
        }
        Ok(current)
    }

    /// The input ended: closes every window, passing each operator's final
    /// rows through the operators after it.
    ///
    /// # Errors
    /// As [`OperatorChain::process`].
    pub fn finish(&mut self) -> Result<ChainOutput> {
        let mut out = ChainOutput::default();
        let mut outputs = Vec::new();
        // Closed windows' rows are new: they come from no request.
        for i in 0..self.slots.len() {
            let closed = self.slots[i].operator.finish()?;
            let Some(batch) = closed.filter(|b| b.num_rows() > 0) else {
                continue;
            };
            self.slots[i].report.records_out += batch.num_rows() as u64;
            if let Some(rows) = self.run_from(i + 1, batch, &mut out)? {
                outputs.push(rows);
            }
            if let Some((operator, message)) = out.over_quota.take() {
                self.rollback();
                anyhow::bail!(
                    "operator `{operator}`, taking the windows closed at the end of the input: {message}"
                );
            }
        }
        out.output = concat(outputs)?;
        self.sync_budget();
        Ok(out)
    }

    /// Makes every change so far permanent in the working state.
    pub fn accept(&mut self) {
        for slot in &mut self.slots {
            slot.operator.accept();
        }
        for stage in &self.stages {
            stage.lock().accept();
        }
    }

    /// Undoes the changes since [`OperatorChain::accept`] (a batch that
    /// failed after the operators ran).
    pub fn rollback(&mut self) {
        for slot in &mut self.slots {
            slot.operator.rollback();
        }
        for stage in &self.stages {
            stage.lock().rollback();
        }
        self.sync_budget();
    }

    /// Makes the state count against `budget` (a `weir serve` tenant's
    /// `max_state_bytes`), from its size now on.
    pub fn set_budget(&mut self, budget: Arc<StateBudget>) {
        for stage in &self.stages {
            stage.set_budget(budget.clone());
        }
        self.budget = Some(budget);
        self.counted = 0;
        self.sync_budget();
    }

    /// Bytes of every operator's and stage's state now.
    fn total_bytes(&self) -> u64 {
        let operators: u64 = self.slots.iter().map(|s| s.operator.state_size().1).sum();
        let stages: u64 = self.stages.iter().map(|s| s.size().1).sum();
        operators + stages
    }

    /// Brings the budget's count of this chain's state up to date.
    fn sync_budget(&mut self) {
        let Some(budget) = &self.budget else { return };
        let total = self.total_bytes();
        budget.add(total as i64 - self.counted as i64);
        self.counted = total;
        for stage in &self.stages {
            stage.set_counted(stage.size().1);
        }
    }

    /// The changes since the last call, of every operator.
    pub fn take_delta(&mut self) -> Delta {
        let mut delta = Delta::default();
        for slot in &mut self.slots {
            let changes = slot.operator.take_changes();
            if !changes.is_empty() {
                delta.namespaces.insert(slot.report.name.clone(), changes);
            }
        }
        for stage in &self.stages {
            let changes = stage.lock().take_changes();
            if !changes.is_empty() {
                delta
                    .namespaces
                    .insert(stage.namespace().to_string(), changes);
            }
        }
        if !self.source_pending.is_empty() {
            let pending = std::mem::take(&mut self.source_pending);
            delta
                .namespaces
                .entry(crate::source::EXTRACT_STATE.to_string())
                .or_default()
                .extend(pending);
        }
        delta
    }

    /// Adds an extract plugin's state writes, carried by a batch being
    /// written, to the next delta (a later write to a key wins).
    pub fn note_source_state(&mut self, changes: Changes) {
        self.source_pending.extend(changes);
    }

    /// Applies every change not yet applied directly to the store, under
    /// `marker` (`checkpoint = false`: no epochs).
    ///
    /// # Errors
    /// The store cannot be written.
    pub fn commit_unrecorded(&mut self, marker: &str) -> Result<()> {
        let delta = self.take_delta();
        self.store.apply(marker, &delta)?;
        Ok(())
    }

    /// Each operator's counts so far, then each stateful stage's state
    /// size (with no kind).
    pub fn reports(&self) -> Vec<OperatorReport> {
        let stages = self.stages.iter().map(|stage| {
            let (keys, bytes) = stage.size();
            OperatorReport {
                name: stage.namespace().to_string(),
                state_keys: keys,
                state_bytes: bytes,
                ..OperatorReport::default()
            }
        });
        self.slots
            .iter()
            .map(|s| s.report.clone())
            .chain(stages)
            .collect()
    }
}

impl Drop for OperatorChain {
    fn drop(&mut self) {
        // The state leaves memory with the chain (a pipeline removed or
        // replaced): the budget no longer counts it.
        if let Some(budget) = &self.budget {
            budget.add(-(self.counted as i64));
        }
    }
}

fn concat(batches: Vec<RecordBatch>) -> Result<Option<RecordBatch>> {
    match batches.len() {
        0 => Ok(None),
        1 => Ok(batches.into_iter().next()),
        _ => Ok(Some(arrow::compute::concat_batches(
            &batches[0].schema(),
            &batches,
        )?)),
    }
}

impl EpochSink for OperatorChain {
    fn connector(&self) -> &'static str {
        "state"
    }

    fn begin_epoch(&mut self, dir: &Path) -> Result<()> {
        self.epoch_dir = Some(dir.to_path_buf());
        Ok(())
    }

    fn prepare_epoch(&mut self, _epoch: &EpochContext) -> Result<Prepared> {
        let dir = self
            .epoch_dir
            .clone()
            .context("the state connector was not given an epoch directory")?;
        // Taken before accepting: changes made while taking them (expired
        // keys) are then accepted with the rest.
        let delta = self.take_delta();
        self.accept();
        delta.write(&dir.join(DELTA_FILE))?;
        Ok(Prepared {
            parts: vec![OutputFile {
                path: PathBuf::from(DELTA_FILE),
                rows: delta.len() as u64,
            }],
            rejected: Vec::new(),
        })
    }

    fn publish(
        self: Box<Self>,
        epochs: &[(PathBuf, Vec<OutputFile>)],
        _replace_own_output: bool,
    ) -> Result<Vec<OutputFile>> {
        let marker = format!("run:{}", self.run_id);
        if self.store.applied(&marker)? {
            return Ok(Vec::new());
        }
        // Epoch by epoch, in one transaction: a later change to a key wins.
        let deltas = epochs.iter().flat_map(|(dir, parts)| {
            parts
                .iter()
                .map(move |part| Delta::read(&dir.join(&part.path)))
        });
        self.store.apply_all(&marker, deltas)?;
        Ok(Vec::new())
    }
}
