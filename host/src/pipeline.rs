//! The pipeline engine: source → stages → sink, with a quarantine.
//!
//! [`Pipeline::load`] turns a pipeline file into a runnable [`Pipeline`]
//! (every problem reported at once); [`Pipeline::run`] streams it:
//!
//! ```text
//!  reader thread ──batches──▶ N worker threads ──results──▶ writer (caller's thread)
//!  (source files)            (each owns one instance       (re-orders by batch number,
//!                             per stage, runs the chain)     writes sink + quarantine)
//! ```
//!
//! At most [`IN_FLIGHT_PER_WORKER`] × N batches are between the reader and
//! the writer at any time, so memory stays bounded whatever the input size.
//! Output rows keep the input order. A plugin failure costs one batch (its
//! rows are quarantined, the instance replaced) unless the stage says
//! `on_error = "fail"`; any fatal error aborts the run and commits nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use anyhow::{Context, Result, anyhow};

use crate::checkpoint::{
    self,
    run::{Coordinator, EpochSettings, HashedInputs, Identity, Phase, RunState},
};
use crate::columnar;
use crate::config::{
    ConfigErrors, MAX_REFERENCE_TABLE_BYTES, PipelineConfig, Problems, Purpose, StageConfig,
    expand_paths,
};
use crate::history::History;
use crate::operator::OperatorChain;
use crate::plugin::{Plugin, PluginKind, PluginSlot, PluginWatcher};
use crate::quarantine::Quarantine;
use crate::report::{InputFile, QuarantineReport, RecordCounts, RunReport, StageReport};
use crate::sink::{EpochSink, RecordSink};
use crate::source::{Extractor, Position, Source, SourceConnector, SourceItem};
use crate::stages::{BatchResult, Worker};

/// Batches in flight per worker between the reader and the writer.
pub const IN_FLIGHT_PER_WORKER: usize = 4;

pub use crate::stages::Stage;

/// A validated pipeline with its plugins loaded.
#[derive(Debug)]
pub struct Pipeline {
    /// Name from `[pipeline] name`, else the file stem.
    pub name: String,
    /// The pipeline file.
    pub file: PathBuf,
    base_dir: PathBuf,
    config: PipelineConfig,
    extractor: Option<Extractor>,
    stages: Vec<Arc<Stage>>,
    /// The sink's schema as the load-time probe found it (the source's,
    /// through every stage, plus the lineage column); `None` when a stage
    /// or the source could not be probed.
    output_schema: Option<arrow::datatypes::SchemaRef>,
    /// The source schema the probe inferred, taken by the first run (which
    /// reuses it if the file is unchanged) so that a `weir run` infers once.
    probed_source: std::sync::Mutex<Option<crate::source::Inferred>>,
    /// The input files being hashed for the checkpoint's identity, on a
    /// thread started by the load, joined by the first run.
    hashing_inputs: std::sync::Mutex<Option<std::thread::JoinHandle<HashedInputs>>>,
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// How to run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Draw a progress line on stderr (only when it is a terminal).
    pub progress: bool,
    /// Discard the checkpoint of an interrupted run and start over
    /// (`weir run --restart`), instead of resuming it.
    pub restart: bool,
    /// What started the run, as recorded in the history. Default `run`.
    pub trigger: crate::history::Trigger,
}

/// Calls each stage once on an empty batch of the schema it will receive
/// (the source's, as transformed by the stages before it), so that a
/// plugin that rejects its config (`invalid-config`: a misspelled key, a
/// bad rule) or the schema (`invalid-input`: a rule on a column the source
/// does not have) fails the load with the stage's key, instead of
/// quarantining every row of the run.
///
/// Probing stops quietly where the schema stops being known: a source
/// whose schema cannot be read yet (its files are absent), or a stage that
/// fails the probe any other way (a trap, a timeout), which the run will
/// contain as usual.
///
/// `source` is the pipeline's source as [`open_for_probe`] opened it.
/// Returns the schema the last stage outputs, when every stage could be
/// probed, and the source schema it inferred, if it did.
///
/// # Errors
/// One problem per stage that returned `invalid-config` or `invalid-input`.
fn probe_stages(
    file: &Path,
    source: Option<Source>,
    stages: &[Arc<Stage>],
) -> Result<Probed, ConfigErrors> {
    let Some(source) = source else {
        return Ok(Probed::default());
    };
    let inferred = source.inferred().cloned();
    let Some(mut schema) = source.schema() else {
        return Ok(Probed::default());
    };
    let mut probed = true;
    let mut problems = Problems::new(file);
    for (i, stage) in stages.iter().enumerate() {
        let version = stage.slot.current();
        let empty = arrow::record_batch::RecordBatch::new_empty(schema.clone());
        let Ok(wit) = columnar::to_wit(&empty) else {
            probed = false;
            break;
        };
        stage.slot.set_probe_batch(wit.clone());
        let outcome = version
            .plugin
            .instantiate_with(
                &stage.name,
                stage.config_json.clone(),
                stage.limits,
                &stage.grants,
                None,
                None,
            )
            .and_then(|mut instance| {
                if version.plugin.uses_state() {
                    instance.attach_state(Arc::new(crate::state::stage::StageState::scratch()));
                }
                // Sent as a real batch would be: only the columns it reads.
                let sent = crate::splice::project(&empty, instance.reads());
                let lent =
                    crate::lent::Lendable::new(&sent).expect("a subset of a batch that converted");
                match stage.kind {
                    PluginKind::Transform => instance
                        .transform_with(&empty, &lent.lend())
                        .and_then(|(out, _)| {
                            Ok(Some(crate::splice::apply(&empty, out)?.batch.schema()))
                        }),
                    _ => instance.validate_with(&empty, &lent.lend()).map(|_| None),
                }
            });
        match outcome {
            Ok(Some(output)) => schema = output,
            Ok(None) => {}
            Err(crate::plugin::PluginError::Returned { kind, message })
                if kind == "invalid-config" || kind == "invalid-input" =>
            {
                if kind == "invalid-config" {
                    problems.add(
                        format!("stages[{i}].config"),
                        format!("stage `{}`: {message}", stage.name),
                    );
                } else {
                    let columns: Vec<String> = schema
                        .fields()
                        .iter()
                        .map(|f| format!("{} {}", f.name(), f.data_type()))
                        .collect();
                    problems.add(
                        format!("stages[{i}]"),
                        format!(
                            "stage `{}` refuses the columns it would receive ({}): {kind}: {message}",
                            stage.name,
                            columns.join(", ")
                        ),
                    );
                }
                // A validate stage passes its input on, so later stages can
                // still be probed.
                probed = false;
                if stage.kind == PluginKind::Transform {
                    break;
                }
            }
            // Any other failure (a trap, a timeout, an `internal` error such
            // as a file it cannot read yet) is the run's to contain.
            Err(error) => {
                tracing::warn!(stage = %stage.name, %error, "the stage failed its load-time probe on an empty batch; later stages are not probed");
                probed = false;
                break;
            }
        }
    }
    problems.finish()?;
    Ok(Probed {
        output: probed.then_some(schema),
        inferred,
    })
}

/// Opens the source of a pipeline without an extract plugin for
/// [`probe_stages`], which needs its schema: for a file source, read from
/// the first Parquet file or inferred from the first `infer_rows` records.
/// `None` for a database source, whose schema is read when the run starts,
/// not when the file is loaded (an unreachable server would stall `weir
/// check`), and for a source that cannot be opened yet (its files are
/// absent): the run reports that.
fn open_for_probe(config: &PipelineConfig, base_dir: &Path) -> Option<Source> {
    if config.source.extract.is_some()
        || config.source.format == crate::config::SourceFormat::Postgres
    {
        return None;
    }
    Source::open(&config.source, base_dir, 1, None).ok()
}

/// Starts hashing the input files of a checkpointed `weir run` on a
/// thread ([`HashedInputs`]), so that the run's identity does not read them
/// on its serial start; `None` for a service's pipeline, a database source,
/// a run without checkpoints, or files that do not exist yet.
fn hash_inputs_ahead(
    config: &PipelineConfig,
    base_dir: &Path,
    purpose: Purpose,
) -> Option<std::thread::JoinHandle<HashedInputs>> {
    if purpose != Purpose::Run
        || !config.pipeline.checkpoint
        || config.source.format == crate::config::SourceFormat::Postgres
    {
        return None;
    }
    let files = expand_paths(base_dir, &config.source.path).ok()?;
    std::thread::Builder::new()
        .name("weir-input-hash".into())
        .spawn(move || HashedInputs::hash(&files))
        .ok()
}

/// Loads the extract plugin and the stages' plugins of `config`, with
/// their configs as JSON (secrets filled in, reference tables read), each
/// problem added to `problems` under its key.
fn load_plugins(
    config: &PipelineConfig,
    base_dir: &Path,
    secrets: &crate::secrets::Secrets,
    problems: &mut Problems,
) -> (Option<Extractor>, Vec<Arc<Stage>>) {
    let extractor = config.source.extract.as_ref().and_then(|extract| {
        let plugin = Plugin::load(&extract.plugin, Some(PluginKind::Extract), base_dir)
            .map_err(|e| problems.add("source.extract.plugin", format!("{e:#}")))
            .ok()?;
        let config_json = serde_json::to_value(&extract.config)
            .map_err(|e| e.to_string())
            .and_then(|mut json| secrets.fill_json(&mut json).map(|()| json.to_string()))
            .map_err(|e| problems.add("source.extract.config", e))
            .ok()?;
        let grants = extract.capabilities.resolved(base_dir);
        grants
            .check_granted(plugin.name(), plugin.imports())
            .map_err(|e| problems.add("source.extract.capabilities", format!("{e:#}")))
            .ok()?;
        let http = match grants.http.clone() {
            Some(grant) => Some(
                crate::plugin::HttpAccess::with_secrets(grant, plugin.name(), secrets)
                    .map_err(|e| {
                        problems.add("source.extract.capabilities.http.headers", format!("{e:#}"))
                    })
                    .ok()?,
            ),
            None => None,
        };
        let stateful = plugin.uses_state();
        Some(Extractor {
            plugin: Arc::new(plugin),
            config_json: Arc::from(config_json),
            limits: extract.limits(),
            content_type: extract.content_type.clone(),
            max_file_bytes: extract.max_file_bytes,
            state: stateful.then(|| {
                Arc::new(crate::state::stage::StageState::new(
                    crate::source::EXTRACT_STATE,
                    extract
                        .max_state_bytes
                        .unwrap_or(crate::state::stage::DEFAULT_MAX_STATE_BYTES),
                ))
            }),
            grants,
            http,
        })
    });
    let mut stages = Vec::new();
    for (i, stage) in config.stages.iter().enumerate() {
        let plugin = Plugin::load(&stage.plugin, Some(stage.kind), base_dir)
            .map_err(|e| problems.add(format!("stages[{i}].plugin"), format!("{e:#}")));
        let json = config_json(stage, base_dir, secrets)
            .map_err(|e| problems.add(format!("stages[{i}].tables"), format!("{e:#}")));
        if let (Ok(plugin), Ok(json)) = (plugin, json) {
            let config_json: Arc<str> = Arc::from(json);
            let stateful = plugin.uses_state();
            if stateful && config.sink.format == crate::config::SinkFormat::Nats {
                problems.add(
                    format!("stages[{i}].plugin"),
                    format!(
                        "the plugin keeps keyed state (it imports weir:plugin/state): {}",
                        crate::config::STATEFUL_NATS_SINK
                    ),
                );
                continue;
            }
            stages.push(Arc::new(Stage {
                name: Arc::from(stage.name.as_str()),
                kind: stage.kind,
                reference: stage.plugin.clone(),
                slot: Arc::new(
                    PluginSlot::new(plugin, &stage.name, config_json.clone(), stage.limits())
                        .with_breaker(stage.breaker)
                        .with_grants(stage.capabilities.resolved(base_dir)),
                ),
                config_json,
                limits: stage.limits(),
                on_error: stage.on_error,
                bisect_max_calls: stage
                    .bisect_max_calls
                    .unwrap_or(crate::config::DEFAULT_BISECT_MAX_CALLS),
                grants: stage.capabilities.resolved(base_dir),
                state: stateful.then(|| {
                    Arc::new(crate::state::stage::StageState::new(
                        &stage.name,
                        stage
                            .max_state_bytes
                            .unwrap_or(crate::state::stage::DEFAULT_MAX_STATE_BYTES),
                    ))
                }),
            }));
        }
    }
    (extractor, stages)
}

/// What [`probe_stages`] found.
#[derive(Default)]
struct Probed {
    /// The last stage's output schema, when every stage could be probed.
    output: Option<arrow::datatypes::SchemaRef>,
    /// The source schema inferred on the way.
    inferred: Option<crate::source::Inferred>,
}

fn config_json(
    stage: &StageConfig,
    base_dir: &Path,
    secrets: &crate::secrets::Secrets,
) -> Result<String> {
    let mut json =
        serde_json::to_value(&stage.config).context("converting the config table to JSON")?;
    secrets.fill_json(&mut json).map_err(anyhow::Error::msg)?;
    if !stage.tables.is_empty() {
        let mut tables = serde_json::Map::new();
        for (name, path) in &stage.tables {
            let file = &expand_paths(base_dir, path).map_err(anyhow::Error::msg)?[0];
            tables.insert(
                name.clone(),
                crate::source::read_reference_table(file, MAX_REFERENCE_TABLE_BYTES)?,
            );
        }
        json.as_object_mut()
            .expect("a TOML table is an object")
            .insert("tables".into(), tables.into());
    }
    Ok(json.to_string())
}

impl Pipeline {
    /// Reads, validates and builds the pipeline in `file`.
    ///
    /// # Errors
    /// Every problem in the file and its plugins, each with file and key.
    pub fn load(file: &Path) -> Result<Pipeline, ConfigErrors> {
        Pipeline::load_for(file, Purpose::Run)
    }

    /// [`Pipeline::load`] for `purpose`: under [`Purpose::Serve`] the source
    /// files need not exist when the schema is declared.
    ///
    /// # Errors
    /// As [`Pipeline::load`].
    pub fn load_for(file: &Path, purpose: Purpose) -> Result<Pipeline, ConfigErrors> {
        let config = PipelineConfig::from_file(file)?;
        Pipeline::build_for(config, file, purpose)
    }

    /// Validates `config` (read from `file`) and loads its plugins.
    ///
    /// # Errors
    /// Every problem found, config and plugins alike, each with file and key.
    pub fn build(config: PipelineConfig, file: &Path) -> Result<Pipeline, ConfigErrors> {
        Pipeline::build_for(config, file, Purpose::Run)
    }

    /// [`Pipeline::build`] for `purpose`.
    ///
    /// # Errors
    /// As [`Pipeline::build`].
    pub fn build_for(
        config: PipelineConfig,
        file: &Path,
        purpose: Purpose,
    ) -> Result<Pipeline, ConfigErrors> {
        let base_dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut config = config;
        for operator in &mut config.operators {
            operator.base_dir = base_dir.clone();
        }
        let mut problems = Problems::new(file);
        config.check_for(&mut problems, &base_dir, purpose);
        let secrets =
            crate::secrets::Secrets::resolve(&config.secrets, &base_dir).unwrap_or_else(|errors| {
                for error in errors {
                    problems.add(format!("secrets.{}", error.name), error.message);
                }
                crate::secrets::Secrets::default()
            });
        let hashing_inputs = hash_inputs_ahead(&config, &base_dir, purpose);
        // Opening the source (for a CSV file: arrow's schema inference
        // over `infer_rows` records, then a sample of its text columns for
        // dates) and loading the plugins are independent and each about
        // half of a load (`weir check` on flights: 35 ms on one core), so
        // the plugins load on a thread beside the source's opening. (The
        // other way round, the opening's short-lived sample batches were
        // freed into that thread's malloc arena: 7 MB more peak RSS.)
        let ((extractor, stages), source) = std::thread::scope(|scope| {
            let loading = scope.spawn(|| load_plugins(&config, &base_dir, &secrets, &mut problems));
            let source = open_for_probe(&config, &base_dir);
            let loaded = loading
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            (loaded, source)
        });
        problems.finish()?;
        let probed = match extractor {
            None => probe_stages(file, source, &stages)?,
            Some(_) => Probed::default(),
        };
        let output_schema = probed
            .output
            .map(|schema| match &config.sink.lineage_column {
                Some(column) => {
                    let mut fields: Vec<_> = schema.fields().iter().cloned().collect();
                    fields.push(Arc::new(arrow::datatypes::Field::new(
                        column,
                        arrow::datatypes::DataType::Utf8,
                        true,
                    )));
                    Arc::new(arrow::datatypes::Schema::new(fields))
                }
                None => schema,
            });
        let name = config.pipeline.name.clone().unwrap_or_else(|| {
            file.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "pipeline".into())
        });
        Ok(Pipeline {
            name,
            file: file.to_path_buf(),
            base_dir,
            config,
            extractor,
            stages,
            output_schema,
            probed_source: std::sync::Mutex::new(probed.inferred),
            hashing_inputs: std::sync::Mutex::new(hashing_inputs),
        })
    }

    /// The source schema the load-time probe inferred, for the first open
    /// of the source to reuse ([`Source::open_with_cursor`]'s `reuse`);
    /// `None` once taken, or when nothing was inferred. One use only: a
    /// long-lived pipeline infers again on its later runs rather than keep
    /// a schema its files may have outgrown.
    pub fn take_probed_source(&self) -> Option<crate::source::Inferred> {
        self.probed_source
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }

    /// The stages, in order.
    pub fn stages(&self) -> &[Arc<Stage>] {
        &self.stages
    }

    /// Starts reloading the stages whose plugin is a file when that file
    /// changes (`weir run --watch`); built-ins never change. Batches started
    /// before a swap finish on the old version.
    ///
    /// # Errors
    /// When a plugin's directory cannot be watched.
    pub fn watch_plugins(&self, debounce: std::time::Duration) -> Result<Option<PluginWatcher>> {
        let files: Vec<_> = self
            .stages
            .iter()
            .filter(|s| !s.reference.starts_with("builtin:"))
            .map(|s| (self.base_dir.join(&s.reference), s.slot.clone()))
            .collect();
        if files.is_empty() {
            return Ok(None);
        }
        Ok(Some(PluginWatcher::start(files, debounce)?))
    }

    /// The extract plugin of an `extract` source.
    pub fn extractor(&self) -> Option<&Extractor> {
        self.extractor.as_ref()
    }

    /// The parsed pipeline file.
    pub fn config(&self) -> &PipelineConfig {
        &self.config
    }

    /// The keyed state of the stages whose plugins keep some, and of the
    /// extract plugin when it keeps some.
    pub fn stage_states(&self) -> Vec<Arc<crate::state::stage::StageState>> {
        self.stages
            .iter()
            .filter_map(|s| s.state.clone())
            .chain(self.extractor.as_ref().and_then(|e| e.state.clone()))
            .collect()
    }

    /// Whether a stage keeps keyed state.
    fn has_stateful_stage(&self) -> bool {
        self.stages.iter().any(|s| s.state.is_some())
    }

    /// Worker threads running the stages: `[pipeline] workers`, or one per
    /// core; one when a stage keeps keyed state, which must see batches one
    /// at a time in input order.
    fn workers(&self) -> usize {
        if self.has_stateful_stage() {
            return 1;
        }
        match self.config.pipeline.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    /// Runs the pipeline to completion and commits its outputs.
    ///
    /// With `[pipeline] checkpoint` (the default) the run is cut into
    /// epochs and checkpointed ([`crate::checkpoint::run`]): a run killed
    /// at any point resumes, when started again, after its last committed
    /// epoch, and publishes exactly the output of an uninterrupted run.
    ///
    /// # Errors
    /// A source that cannot be read, a sink that cannot be written, a
    /// stage with `on_error = "fail"` whose plugin failed, or a checkpoint
    /// that cannot be resumed. Nothing is committed then: earlier outputs
    /// stay as they were.
    ///
    /// Every run is recorded in the pipeline's run history
    /// ([`crate::history`]) unless `[history] enabled = false`; a history
    /// that cannot be opened or written is logged and the run goes on.
    pub fn run(&self, options: &RunOptions) -> Result<RunReport> {
        let settings = &self.config.history;
        let history = settings
            .enabled
            .then(|| {
                let path = self.config.history_file(&self.file);
                History::open(&path)
                    .inspect_err(|e| tracing::warn!("run history not recorded: {e:#}"))
                    .ok()
            })
            .flatten();
        let lineage = self
            .config
            .lineage
            .enabled()
            .then(|| {
                crate::lineage::Emitter::start(&self.config.lineage, &self.base_dir)
                    .inspect_err(|e| tracing::warn!("no lineage events: {e:#}"))
                    .ok()
            })
            .flatten();
        let datasets = lineage.as_ref().map(|_| self.lineage_datasets());
        let checks = &self.config.checks;
        let previous = history
            .as_ref()
            .and_then(|h| {
                h.observations(checks.history_needed())
                    .inspect_err(|e| tracing::warn!("data checks: no history to learn from: {e:#}"))
                    .ok()
            })
            .unwrap_or_default();
        let gate = crate::checks::Gate::new(checks, previous);
        let kind = crate::history::RunKind {
            kind: options.trigger.as_str(),
            partition: self.config.partition_key.as_ref().map(|k| k.value.as_str()),
        };
        let started = Instant::now();
        let begun = std::cell::RefCell::new(None);
        let on_begun = |run_id: &str, started_at: &str, discarded: Option<&str>| {
            *begun.borrow_mut() = Some((run_id.to_string(), started_at.to_string()));
            if let Some(discarded) = discarded {
                let why = format!("its checkpoint was discarded by run {run_id} (--restart)");
                if let Some(history) = &history
                    && let Err(e) = history.aborted(discarded, &why)
                {
                    tracing::warn!("run history: {e:#}");
                }
                if let (Some(emitter), Some(datasets)) = (&lineage, &datasets) {
                    emitter.emit(crate::lineage::abort(
                        emitter.namespace(),
                        &self.name,
                        discarded,
                        &now_rfc3339(),
                        &why,
                        datasets,
                    ));
                }
            }
            if let Some(history) = &history
                && let Err(e) = history.begin(run_id, &self.name, kind, started_at)
            {
                tracing::warn!("run history: {e:#}");
            }
            if let (Some(emitter), Some(datasets)) = (&lineage, &datasets) {
                emitter.emit(crate::lineage::start(
                    emitter.namespace(),
                    &self.name,
                    run_id,
                    &now_rfc3339(),
                    datasets,
                ));
            }
        };
        let mut result = self.run_attempt(options, &gate, &on_begun);
        // Failed before it had a run id (the source could not be opened):
        // recorded under a new one.
        let (run_id, started_at) = begun.into_inner().unwrap_or_else(|| {
            (
                uuid::Uuid::new_v4().to_string(),
                humantime::format_rfc3339_seconds(SystemTime::now() - started.elapsed())
                    .to_string(),
            )
        });
        if let (Some(emitter), Some(datasets)) = (lineage, &datasets) {
            let event = match &result {
                Ok(report) => {
                    crate::lineage::complete(emitter.namespace(), report, &now_rfc3339(), datasets)
                }
                Err(error) => crate::lineage::fail(
                    emitter.namespace(),
                    &self.name,
                    &run_id,
                    &now_rfc3339(),
                    &format!("{error:#}"),
                    datasets,
                ),
            };
            emitter.emit(event);
            let counts = emitter.finish();
            if let Ok(report) = &mut result {
                report.lineage = Some(counts);
            }
        }
        if let Some(history) = &history {
            let recorded = match &result {
                Ok(report) => history.succeeded(kind, report),
                Err(error) => history.failed(
                    &run_id,
                    &self.name,
                    kind,
                    &started_at,
                    started.elapsed().as_millis() as u64,
                    &format!("{error:#}"),
                ),
            };
            if let Err(e) = recorded.and_then(|()| {
                history
                    .prune(settings.keep_runs, settings.keep_days)
                    .map(drop)
            }) {
                tracing::warn!("run history: {e:#}");
            }
        }
        if let Some((observation, results)) = gate.into_judged() {
            // Recorded by `weir serve`'s Prometheus recorder for scheduled
            // runs; nothing listens under `weir run`.
            let tenant = self
                .config
                .tenant
                .as_deref()
                .unwrap_or(crate::stages::DEFAULT_TENANT);
            for result in &results {
                crate::checks::count(tenant, &self.name, result);
            }
            if let Some(history) = &history
                && let Err(e) = history.record_checks(&run_id, &observation, &results)
            {
                tracing::warn!("run history: {e:#}");
            }
            if let Some(alert) =
                crate::alert::Alert::from_results(&self.name, &run_id, kind.partition, &results)
                && let Err(e) = crate::alert::raise(checks, &alert)
            {
                tracing::warn!("data checks: {e:#}");
            }
        }
        result
    }

    /// The source, sink and quarantine as OpenLineage datasets.
    fn lineage_datasets(&self) -> crate::lineage::Datasets {
        use crate::config::{SinkFormat, SourceFormat};
        let absolute = |path: &str| {
            let joined = self.base_dir.join(path);
            std::path::absolute(&joined)
                .unwrap_or(joined)
                .display()
                .to_string()
        };
        let source = &self.config.source;
        let source_dataset = match source.format {
            SourceFormat::Postgres => (
                "postgres".to_string(),
                source.table.clone().unwrap_or_else(|| "query".into()),
            ),
            SourceFormat::Nats => ("nats".to_string(), source.path.clone()),
            _ => ("file".to_string(), absolute(&source.path)),
        };
        let source_schema = match source.format {
            SourceFormat::Postgres | SourceFormat::Nats => None,
            _ => Source::open(source, &self.base_dir, 1, None)
                .ok()
                .and_then(|s| s.schema()),
        };
        let sink = &self.config.sink;
        let sink_dataset = match sink.format {
            SinkFormat::Postgres => (
                "postgres".to_string(),
                sink.table.clone().unwrap_or_default(),
            ),
            _ => ("file".to_string(), absolute(&sink.path)),
        };
        crate::lineage::Datasets {
            source: source_dataset,
            source_schema,
            sink: sink_dataset,
            sink_schema: self.output_schema.clone(),
            quarantine: ("file".to_string(), absolute(&self.config.quarantine.path)),
        }
    }

    /// [`Self::run`] without the history; `begun` is told the run's id and
    /// start time as soon as they are known, and the interrupted run that
    /// `--restart` discarded, if any.
    fn run_attempt(
        &self,
        options: &RunOptions,
        gate: &crate::checks::Gate<'_>,
        begun: &dyn Fn(&str, &str, Option<&str>),
    ) -> Result<RunReport> {
        let started = Instant::now();
        let mut started_at = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        let mut run_id = uuid::Uuid::new_v4().to_string();
        let settings = &self.config.pipeline;
        let checkpoint_dir = checkpoint::run::dir_for(&self.config.sink, &self.base_dir);
        let cursor_file = crate::source::postgres::cursor_file(&checkpoint_dir);
        let probed = self.take_probed_source();
        let source = Source::open_with_cursor(
            &self.config.source,
            &self.base_dir,
            settings.batch_size,
            self.extractor.clone(),
            settings.checkpoint.then_some(cursor_file.as_path()),
            probed.as_ref(),
        )
        .with_context(|| match source_database(&self.config.source) {
            Some(what) => format!("opening source {what}"),
            None => format!("opening source {}", self.config.source.path),
        })?;
        if let Some(schema) = source.schema() {
            columnar::wit_schema(&schema)
                .map_err(|e| anyhow!("the source cannot be passed to plugins: {e}"))?;
        }
        let mut discarded_run = None;
        let mut coordinator = match settings.checkpoint {
            false => None,
            true => {
                let ahead = self
                    .hashing_inputs
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .take()
                    .and_then(|hashing| hashing.join().ok());
                let identity = Identity::compute(
                    &self.file,
                    self.stages
                        .iter()
                        .map(|s| (s.name.to_string(), s.plugin().sha256().to_string()))
                        .collect(),
                    source.files(),
                    ahead.as_ref(),
                )?;
                let state = RunState::begin(
                    &checkpoint_dir,
                    identity,
                    options.restart,
                    &run_id,
                    &started_at,
                )?;
                run_id = state.run_id().to_string();
                started_at = state.started_at().to_string();
                discarded_run = state.recovery.discarded_run.clone();
                let mut coordinator = Coordinator::new(
                    state,
                    EpochSettings {
                        every_batches: settings
                            .checkpoint_every_batches
                            .unwrap_or(crate::config::DEFAULT_EPOCH_BATCHES),
                        per_file: settings.checkpoint_every_batches.is_none(),
                        interval: std::time::Duration::from_millis(settings.checkpoint_interval_ms),
                    },
                );
                if let Some(database) = source.database() {
                    // The high-water mark moves on only with published output.
                    let database = database.clone();
                    coordinator.on_published(move |position| {
                        database.store_cursor(&cursor_file, &position)
                    });
                }
                Some(coordinator)
            }
        };
        begun(&run_id, &started_at, discarded_run.as_deref());
        let mut operators = self.open_operators(&run_id, coordinator.as_ref())?;
        let outcome = self.run_with(
            options,
            &source,
            Begun {
                run_id: &run_id,
                started_at: &started_at,
                started,
            },
            &mut coordinator,
            &mut operators,
            gate,
        );
        if let Err(error) = &outcome
            && let Some(coordinator) = coordinator
        {
            let loaded = coordinator.state().checkpoint().epoch;
            // The database may also have committed the epoch after the
            // checkpoint's, before the failure (a server that cannot be
            // asked either had nothing committed in the common case: the
            // failure is then the connection itself).
            let committed_beyond = || {
                crate::sink::postgres::PostgresSink::new(&self.config.sink, &run_id)
                    .and_then(|mut sink| {
                        crate::sink::EpochSink::committed_beyond(&mut sink, &run_id, loaded)
                    })
                    .is_ok_and(|beyond| beyond.is_some())
            };
            if self.config.sink.format == crate::config::SinkFormat::Postgres
                && (loaded > 0 || committed_beyond())
            {
                // Those epochs are in the table: starting afresh would load
                // them again. The next start resumes after them.
                return Err(anyhow!(
                    "{error:#}\n{loaded} epoch(s) are already loaded into the table; the checkpoint at {} is kept so that running the same command again resumes after them (with --restart the run starts over, and an append would load those rows twice)",
                    coordinator.state().dir().display()
                ));
            }
            coordinator.abandon();
        }
        outcome
    }

    fn run_with(
        &self,
        options: &RunOptions,
        source: &Source,
        begun: Begun<'_>,
        coordinator: &mut Option<Coordinator>,
        operators: &mut Option<OperatorChain>,
        gate: &crate::checks::Gate<'_>,
    ) -> Result<RunReport> {
        let Begun {
            run_id,
            started_at,
            started,
        } = begun;
        let settings = &self.config.pipeline;
        if let Some(done) =
            coordinator.take_if(|c| c.state().checkpoint().phase == Phase::Published)
        {
            return Ok(self.already_published(source, run_id, started_at, started, done));
        }
        let publishing = coordinator
            .as_ref()
            .is_some_and(|c| c.state().checkpoint().phase == Phase::Publishing);
        let (mut sink, mut quarantine) = match coordinator {
            None => (
                crate::sink::open(&self.config.sink, &self.base_dir, run_id, false)?,
                Quarantine::create(&self.config.quarantine, &self.base_dir, run_id)?,
            ),
            Some(coordinator) => {
                let mut quarantine =
                    Quarantine::for_epochs(&self.config.quarantine, &self.base_dir, run_id);
                let state = coordinator.state();
                quarantine.append_across_epochs(
                    state.dir(),
                    &state.committed_parts(quarantine.connector()),
                )?;
                (
                    crate::sink::open(&self.config.sink, &self.base_dir, run_id, publishing)?,
                    quarantine,
                )
            }
        };
        // A table sink checks (or creates) its table before any row.
        // (What the sink receives is what the operators emit.)
        if let Some(schema) = &self.output_schema {
            let schema = crate::operator::output_schema(&self.config.operators, schema.clone())?;
            sink.expect_schema(schema)?;
        }
        let mut counts = RecordCounts::default();
        let mut nulls = crate::checks::NullCounts::default();
        let mut resumed_filtered = 0;
        let mut start = Position::default();
        if let Some(coordinator) = coordinator.as_mut() {
            let base = coordinator.resumed_totals();
            counts.read = base.read;
            counts.written = base.written;
            counts.quarantined = base.quarantined;
            // An aggregate may write fewer (or more) rows than it read.
            resumed_filtered = base.read.saturating_sub(base.written + base.quarantined);
            start = coordinator.state().checkpoint().position;
            if !publishing {
                let mut connectors = connectors(&mut *sink, &mut quarantine, operators.as_mut());
                coordinator.align(&mut connectors)?;
                coordinator.begin_epoch(&mut connectors)?;
            }
        }
        let workers = self.workers();
        // A stateful stage's changes are taken per epoch by the writer, so
        // the stage must not run ahead of it: one batch in flight.
        let window = match self.has_stateful_stage() {
            true => 1,
            false => workers * IN_FLIGHT_PER_WORKER,
        };

        let (batch_tx, batch_rx) = crossbeam_channel::bounded::<(u64, SourceItem)>(window);
        let (result_tx, result_rx) = crossbeam_channel::bounded::<Result<BatchResult>>(window);
        let (permit_tx, permit_rx) = crossbeam_channel::bounded::<()>(window);
        // The source's position after each item, in reading order (at most
        // `window` ahead of the writer, as the items are).
        let (positions_tx, positions_rx) = crossbeam_channel::unbounded::<Position>();
        for _ in 0..window {
            permit_tx
                .send(())
                .expect("channel has room for every permit");
        }
        let progress = Progress::new(options.progress);

        let worker_reports = std::thread::scope(|scope| -> Result<Vec<Vec<StageReport>>> {
            if publishing {
                return Ok(Vec::new());
            }
            let reader_results = result_tx.clone();
            let batches = source.read_from(start);
            scope.spawn(move || {
                for (seq, batch) in (0u64..).zip(batches) {
                    crate::crash::point("mid-read");
                    if permit_rx.recv().is_err() {
                        return;
                    }
                    let sent = match batch {
                        // The position goes first: the writer takes it when
                        // it writes this item's result.
                        Ok((batch, position)) => {
                            positions_tx.send(position).is_ok()
                                && batch_tx.send((seq, batch)).is_ok()
                        }
                        Err(e) => {
                            let _ = reader_results.send(Err(e));
                            false
                        }
                    };
                    if !sent {
                        return;
                    }
                }
            });
            let handles: Vec<_> = (0..workers)
                .map(|_| {
                    let batch_rx = batch_rx.clone();
                    let result_tx = result_tx.clone();
                    let mut worker = Worker::new(
                        crate::stages::Scope::new(crate::stages::DEFAULT_TENANT, &self.name),
                        &self.stages,
                        self.config.sink.lineage_column.clone(),
                    );
                    scope.spawn(move || {
                        for (seq, batch) in batch_rx {
                            let result = worker.process(seq, batch);
                            let fatal = result.is_err();
                            if result_tx.send(result).is_err() || fatal {
                                break;
                            }
                        }
                        worker.take_reports()
                    })
                })
                .collect();
            drop((batch_rx, result_tx));

            let outcome = write_results(
                &result_rx,
                &permit_tx,
                Output {
                    sink: &mut *sink,
                    quarantine: &mut quarantine,
                    operators: operators.as_mut(),
                    coordinator: coordinator.as_mut(),
                    positions: &positions_rx,
                    nulls: &mut nulls,
                },
                &mut counts,
                &progress,
            );
            // Unblock the reader and workers whatever happened, then join them.
            drop((result_rx, permit_tx));
            let reports: Vec<Vec<StageReport>> = handles
                .into_iter()
                .map(|h| h.join().expect("worker panicked"))
                .collect();
            outcome.map(|()| reports)
        })?;
        progress.finish();

        let mut stages: Vec<StageReport> = self
            .stages
            .iter()
            .map(|s| StageReport {
                name: s.name.to_string(),
                kind: Some(s.kind),
                plugin: s.reference.clone(),
                plugin_sha256: s.plugin().sha256().to_string(),
                ..StageReport::default()
            })
            .collect();
        for worker in &worker_reports {
            for (total, part) in stages.iter_mut().zip(worker) {
                total.merge(part);
            }
        }
        counts.filtered = stages.iter().map(|s| s.filtered).sum::<u64>() + resumed_filtered;
        counts.unknown_fields = source.unknown_fields();
        let mut report = RunReport {
            run_id: run_id.to_string(),
            pipeline: self.name.clone(),
            pipeline_file: self.file.clone(),
            started_at: started_at.to_string(),
            duration_ms: started.elapsed().as_millis() as u64,
            records: counts,
            stages,
            inputs: input_files(source),
            outputs: Vec::new(),
            quarantine: QuarantineReport {
                path: quarantine.path().to_path_buf(),
                rows: counts.quarantined,
            },
            source_http: self
                .extractor
                .as_ref()
                .and_then(|e| e.http.as_ref())
                .map(|http| http.counts()),
            checkpoint: None,
            operators: operators
                .as_ref()
                .map(OperatorChain::reports)
                .unwrap_or_default(),
            lineage: None,
            partition: self.config.partition_key.as_ref().map(|k| k.value.clone()),
            checks: Vec::new(),
        };
        let over_limit = settings.max_quarantine_fraction.and_then(|max| {
            let fraction = counts.quarantined as f64 / counts.read.max(1) as f64;
            (fraction > max).then_some((max, fraction))
        });
        report.checks = gate.judge(self.observe(source, &counts, nulls, &report.inputs));
        let failing: Vec<&crate::checks::CheckResult> =
            report.checks.iter().filter(|r| r.fails_run).collect();
        let publish = over_limit.is_none() && failing.is_empty();
        let totals = totals(&counts);
        let quarantine_path = match (coordinator.take(), publish) {
            (Some(coordinator), publish) => {
                let quarantine_path = quarantine.path().to_path_buf();
                let mut connectors: Vec<(Box<dyn EpochSink>, bool)> = vec![
                    (sink as Box<dyn EpochSink>, publish),
                    (Box::new(quarantine), true),
                ];
                // The state moves on only with the output it produced.
                if let Some(chain) = operators.take() {
                    connectors.push((Box::new(chain), publish));
                }
                let (mut published, account) = coordinator.publish(totals, connectors)?;
                report.outputs = published.swap_remove(0);
                // Rows the database refused were counted as written.
                report.records.written -= account.rejected_by_sink;
                report.records.quarantined += account.rejected_by_sink;
                report.quarantine.rows += account.rejected_by_sink;
                report.checkpoint = Some(account);
                quarantine_path
            }
            (None, false) => quarantine.commit()?,
            (None, true) => {
                report.outputs = sink.commit()?;
                if let Some(chain) = operators.as_mut() {
                    chain.commit_unrecorded(&format!("run:{run_id}"))?;
                }
                quarantine.commit()?
            }
        };
        report.quarantine.path = quarantine_path;
        if let Some((max, fraction)) = over_limit {
            let why = report.main_quarantine_reason().unwrap_or_default();
            anyhow::bail!(
                "{} of {} records ({:.1}%) were quarantined, over max_quarantine_fraction = {max}: {why}. The output was not committed; the quarantine is at {}",
                counts.quarantined,
                counts.read,
                fraction * 100.0,
                report.quarantine.path.display()
            );
        }
        if !failing.is_empty() {
            let why: Vec<String> = failing
                .iter()
                .map(|r| format!("{}: {}", r.check, r.message))
                .collect();
            anyhow::bail!(
                "data checks failed ({}). The output was not committed; the quarantine is at {}",
                why.join("; "),
                report.quarantine.path.display()
            );
        }
        report.duration_ms = started.elapsed().as_millis() as u64;
        Ok(report)
    }

    /// What this run looked like, for the data checks.
    fn observe(
        &self,
        source: &Source,
        counts: &RecordCounts,
        nulls: crate::checks::NullCounts,
        inputs: &[crate::report::InputFile],
    ) -> crate::checks::Observation {
        use chrono::Datelike;
        let weekday = match &self.config.partition_key {
            Some(key) => key.start.weekday(),
            None => chrono::DateTime::<chrono::Utc>::from(SystemTime::now()).weekday(),
        };
        let newest = inputs
            .iter()
            .filter_map(|f| f.path.metadata().and_then(|m| m.modified()).ok())
            .max();
        crate::checks::Observation {
            weekday: weekday.num_days_from_monday() as u8,
            read: counts.read,
            written: counts.written,
            quarantined: counts.quarantined,
            schema: source
                .schema()
                .map(|schema| {
                    schema
                        .fields()
                        .iter()
                        .map(|f| (f.name().clone(), f.data_type().to_string()))
                        .collect()
                })
                .unwrap_or_default(),
            nulls: nulls.into_map(),
            newest_input_age_s: newest.map(|t| {
                SystemTime::now()
                    .duration_since(t)
                    .unwrap_or_default()
                    .as_secs()
            }),
        }
    }
}

impl Pipeline {
    /// The operators of the pipeline with their state: loaded from the
    /// store, plus (when resuming a checkpointed run) the deltas of the
    /// epochs it committed. `None` without `[[operators]]`.
    ///
    /// # Errors
    /// The store cannot be opened (another run holds it) or read.
    fn open_operators(
        &self,
        run_id: &str,
        coordinator: Option<&Coordinator>,
    ) -> Result<Option<OperatorChain>> {
        let stage_states = self.stage_states();
        if self.config.operators.is_empty() && stage_states.is_empty() {
            return Ok(None);
        }
        let store = self.config.state_store(&self.base_dir);
        let mut chain = OperatorChain::open(&self.config.operators, &stage_states, &store, run_id)?;
        if let Some(coordinator) = coordinator {
            let state = coordinator.state();
            let marker = format!("run:{run_id}");
            if state.checkpoint().phase == Phase::Running && !chain.store().applied(&marker)? {
                chain.replay(&state.committed_parts("state"))?;
            }
        }
        Ok(Some(chain))
    }

    /// The report of a run that was killed after it was published: its
    /// output is in place; only its checkpoint was left to remove.
    fn already_published(
        &self,
        source: &Source,
        run_id: &str,
        started_at: &str,
        started: Instant,
        coordinator: Coordinator,
    ) -> RunReport {
        let totals = coordinator.resumed_totals();
        let records = RecordCounts {
            read: totals.read,
            written: totals.written,
            quarantined: totals.quarantined,
            filtered: totals.read - totals.written - totals.quarantined,
            unknown_fields: 0,
        };
        let account = coordinator.finish_published();
        tracing::info!(
            "the interrupted run had published its output already; its checkpoint is removed"
        );
        RunReport {
            run_id: run_id.to_string(),
            pipeline: self.name.clone(),
            pipeline_file: self.file.clone(),
            started_at: started_at.to_string(),
            duration_ms: started.elapsed().as_millis() as u64,
            records,
            stages: Vec::new(),
            inputs: input_files(source),
            outputs: Vec::new(),
            quarantine: QuarantineReport {
                path: self.base_dir.join(&self.config.quarantine.path),
                rows: totals.quarantined,
            },
            source_http: None,
            checkpoint: Some(account),
            operators: Vec::new(),
            lineage: None,
            partition: self.config.partition_key.as_ref().map(|k| k.value.clone()),
            checks: Vec::new(),
        }
    }
}

/// A PostgreSQL source's table or query, as messages name it.
fn source_database(config: &crate::config::SourceConfig) -> Option<String> {
    (config.format == crate::config::SourceFormat::Postgres)
        .then(|| config.table.clone().unwrap_or_else(|| "query".to_string()))
}

/// The source's files with their sizes, for the report.
fn input_files(source: &Source) -> Vec<InputFile> {
    source
        .files()
        .iter()
        .map(|p| InputFile {
            path: p.clone(),
            bytes: p.metadata().map(|m| m.len()).unwrap_or(0),
        })
        .collect()
}

/// The checkpoint's totals of the run's writer-side counts.
/// Which run this is and when it began (the first start's, on resume).
struct Begun<'a> {
    run_id: &'a str,
    started_at: &'a str,
    started: Instant,
}

fn totals(counts: &RecordCounts) -> checkpoint::run::Totals {
    checkpoint::run::Totals {
        read: counts.read,
        written: counts.written,
        quarantined: counts.quarantined,
    }
}

/// Where written results go.
struct Output<'a> {
    sink: &'a mut dyn RecordSink,
    quarantine: &'a mut Quarantine,
    /// The stateful operators, run on each batch in input order.
    operators: Option<&'a mut OperatorChain>,
    /// Under the checkpoint protocol, the epochs' coordinator.
    coordinator: Option<&'a mut Coordinator>,
    /// The source's position after each item, in reading order.
    positions: &'a crossbeam_channel::Receiver<Position>,
    /// Nulls per column of what was written, for the data checks.
    nulls: &'a mut crate::checks::NullCounts,
}

/// Receives worker results, puts them back in input order and writes them.
fn write_results(
    results: &crossbeam_channel::Receiver<Result<BatchResult>>,
    permits: &crossbeam_channel::Sender<()>,
    mut out: Output<'_>,
    counts: &mut RecordCounts,
    progress: &Progress,
) -> Result<()> {
    let mut pending: BTreeMap<u64, BatchResult> = BTreeMap::new();
    let mut next = 0u64;
    for result in results {
        let result = result?;
        pending.insert(result.seq, result);
        while let Some(mut result) = pending.remove(&next) {
            counts.read += result.rows_read;
            // An extract plugin's state moves on with the batch ending its
            // file, in this batch's epoch.
            if let Some(changes) = result.source_state.take() {
                out.operators
                    .as_deref_mut()
                    .context("an extract plugin's state without a state store")?
                    .note_source_state(changes);
            }
            if let Some(chain) = out.operators.as_deref_mut() {
                // `take` the output only when there are operators to give it to.
                if let Some(output) = result.output.take() {
                    let stepped = chain.process(output, None)?;
                    result.output = stepped.output;
                    result.quarantined.extend(stepped.quarantined);
                }
                // Every written batch's changes are final, the stateful
                // stages' too when the batch left no rows for the
                // operators (a later rollback must not undo them).
                chain.accept();
            }
            write_result(&mut out, &mut result, counts)?;
            // Sent before the item was: there is one per result.
            let position = out
                .positions
                .recv()
                .context("the source's position of a written batch is missing")?;
            if let Some(coordinator) = out.coordinator.as_deref_mut() {
                coordinator.after_item(
                    position,
                    totals(counts),
                    &mut connectors(
                        &mut *out.sink,
                        &mut *out.quarantine,
                        out.operators.as_deref_mut(),
                    ),
                )?;
            }
            progress.update(counts);
            next += 1;
            let _ = permits.send(());
        }
    }
    // The input ended: windows still open close now, into the last epoch.
    if let Some(chain) = out.operators.as_deref_mut() {
        let closed = chain.finish()?;
        chain.accept();
        let mut result = BatchResult {
            output: closed.output,
            quarantined: closed.quarantined,
            ..BatchResult::empty(next, Arc::from("(end of input)"), 0)
        };
        write_result(&mut out, &mut result, counts)?;
        if let Some(coordinator) = out.coordinator.as_deref_mut() {
            coordinator.note_output();
        }
    }
    Ok(())
}

/// Writes one result's rows to the sink and the quarantine, which takes
/// the quarantined groups.
fn write_result(
    out: &mut Output<'_>,
    result: &mut BatchResult,
    counts: &mut RecordCounts,
) -> Result<()> {
    if let Some(output) = result.output.as_ref().filter(|b| b.num_rows() > 0) {
        out.sink
            .write(output)
            .with_context(|| format!("writing to {}", out.sink.describe()))?;
        counts.written += output.num_rows() as u64;
        out.nulls.add(output);
        crate::crash::point("mid-part-write");
    }
    for group in std::mem::take(&mut result.quarantined) {
        counts.quarantined += group.rows.num_rows() as u64;
        out.quarantine
            .write(&group.rows, group.reasons, &result.file)
            .with_context(|| format!("writing to {}", out.quarantine.path().display()))?;
    }
    Ok(())
}

/// The connectors of an epoch, in their fixed order: the sink, the
/// quarantine, then the operators' state (which must follow the output
/// it belongs to).
fn connectors<'a>(
    sink: &'a mut dyn RecordSink,
    quarantine: &'a mut Quarantine,
    operators: Option<&'a mut OperatorChain>,
) -> Vec<&'a mut dyn EpochSink> {
    let mut connectors: Vec<&mut dyn EpochSink> = vec![sink, quarantine];
    if let Some(chain) = operators {
        connectors.push(chain);
    }
    connectors
}

/// The progress line on stderr.
struct Progress {
    bar: indicatif::ProgressBar,
    started: Instant,
}

impl Progress {
    fn new(enabled: bool) -> Self {
        let bar = if enabled {
            indicatif::ProgressBar::new_spinner()
        } else {
            indicatif::ProgressBar::hidden()
        };
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
        Self {
            bar,
            started: Instant::now(),
        }
    }

    fn update(&self, counts: &RecordCounts) {
        let rate = counts.read as f64 / self.started.elapsed().as_secs_f64().max(1e-3);
        self.bar.set_message(format!(
            "{} read · {} written · {} quarantined · {:.0} records/s",
            counts.read, counts.written, counts.quarantined, rate
        ));
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
