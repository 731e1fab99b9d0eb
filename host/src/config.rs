//! The pipeline file (TOML): what to read, which plugins to run in which
//! order under which limits, and where to write.
//!
//! [`PipelineConfig::from_file`] parses with `deny_unknown_fields`, so a typo
//! is an error, not a silently ignored key. [`PipelineConfig::validate`] then
//! checks everything that can be checked before running (files exist, values
//! in range, names unique...) and reports **every** problem at once, each as
//! `file: key: problem` ([`ConfigError`]). Loading the plugins themselves is
//! [`crate::pipeline::Pipeline::build`]'s job; it reports in the same form.
//!
//! The reference, with every key and default, is `docs/pipeline-file.md`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::engine::MAX_MEMORY_CEILING_BYTES;
use crate::plugin::{Limits, PluginKind};

/// A whole pipeline file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Run-wide settings.
    #[serde(default)]
    pub pipeline: PipelineSettings,
    /// Where records come from.
    pub source: SourceConfig,
    /// Plugins applied to every batch, in order.
    #[serde(default)]
    pub stages: Vec<StageConfig>,
    /// Built-in stateful operators (dedupe, aggregate) applied, in order,
    /// to the rows that passed every stage.
    #[serde(default)]
    pub operators: Vec<crate::operator::config::OperatorConfig>,
    /// Where records that pass every stage go.
    pub sink: SinkConfig,
    /// Where rejected records go, with their reasons.
    pub quarantine: QuarantineConfig,
    /// The run history (`[history]`): recorded by default.
    #[serde(default)]
    pub history: HistorySettings,
    /// OpenLineage events (`[lineage]`): none unless a file or URL is set.
    #[serde(default)]
    pub lineage: LineageSettings,
    /// How `${partition}` is cut and written (`[partition]`), for a
    /// partitioned pipeline ([`crate::partition`]).
    #[serde(default)]
    pub partition: crate::partition::PartitionSettings,
    /// Data checks and their alerts (`[checks]`, [`crate::checks`]).
    #[serde(default)]
    pub checks: crate::checks::ChecksSettings,
    /// `[secrets]`: name → `env:VARIABLE` or `file:PATH`, referred to as
    /// `${secret:NAME}` in plugin configs and outbound request headers
    /// ([`crate::secrets`]). Default: none.
    #[serde(default)]
    pub secrets: std::collections::BTreeMap<String, String>,
    /// The `weir serve` tenant a scheduled run belongs to (a label of its
    /// metrics); none outside `weir serve` (labelled `default`).
    #[serde(skip)]
    pub tenant: Option<String>,
    /// The partition this config was read for; none for a pipeline that
    /// uses no partition variable.
    #[serde(skip)]
    pub partition_key: Option<crate::partition::PartitionKey>,
}

/// Default batches per epoch (`checkpoint_every_batches`), for each file
/// the epoch writes: 64 batches of the default 8192 rows is about 0.5 M
/// rows, so that the per-epoch cost (a few fsyncs and renames, a Parquet
/// footer per file) stays under 1% of the epoch's work. That cost grows
/// with the files (one per partition), hence the per-file count: with 97
/// partitions, 64-batch epochs made an 8M-row run 1.4× slower than one
/// epoch (`bench/sinks.py`).
pub const DEFAULT_EPOCH_BATCHES: usize = 64;

/// Default longest epoch, in milliseconds (`checkpoint_interval_ms`):
/// 10 s, Arroyo's default checkpoint interval, so that a slow pipeline
/// still checkpoints regularly.
pub const DEFAULT_EPOCH_INTERVAL_MS: u64 = 10_000;

/// File name of a checkpointed run's checkpoint inside its directory
/// ([`SinkConfig::checkpoint_dir`]).
pub const CHECKPOINT_FILE: &str = "checkpoint.json";

/// `[pipeline]`: run-wide settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineSettings {
    /// Name shown in logs and the run report. Default: the file's stem.
    pub name: Option<String>,
    /// Rows per record batch read from the source. Default 8192: large enough
    /// that a plugin call's fixed cost (µs) is negligible, small enough that
    /// a quarantined batch is a small blast radius. Example: `batch_size = 65536`.
    pub batch_size: usize,
    /// Threads running plugin stages; 0 means one per CPU core. Default 0.
    pub workers: usize,
    /// Fail the run, committing no output, when more than this fraction
    /// (0.0–1.0) of the records read were quarantined; the quarantine is
    /// still committed so the reasons can be read. Unset by default: a run
    /// that quarantines everything succeeds, with a warning. Example:
    /// `max_quarantine_fraction = 0.01`.
    pub max_quarantine_fraction: Option<f64>,
    /// Checkpoint the run so that a run killed at any point resumes, when
    /// started again, where it stopped and publishes exactly the output of
    /// an uninterrupted run (`docs/delivery.md`). Default true.
    pub checkpoint: bool,
    /// Batches per epoch (between checkpoints). Default: 64 for each file
    /// the epoch writes (a sink partitioned into 97 files ends its epochs
    /// after 97 × 64 batches, or `checkpoint_interval_ms`); a value set
    /// here is exact, whatever the files.
    pub checkpoint_every_batches: Option<usize>,
    /// Longest epoch, in milliseconds. Default 10000.
    pub checkpoint_interval_ms: u64,
    /// Directory of the operators' state store (`state.redb`), relative
    /// to the pipeline file. Default (`weir run`): `.NAME.weir-state`
    /// beside the sink's path (`.TABLE.weir-state` for a table); `weir
    /// serve` keeps it in the pipeline's state directory.
    pub state_dir: Option<String>,
}

impl Default for PipelineSettings {
    fn default() -> Self {
        Self {
            name: None,
            batch_size: 8192,
            workers: 0,
            max_quarantine_fraction: None,
            checkpoint: true,
            checkpoint_every_batches: None,
            checkpoint_interval_ms: DEFAULT_EPOCH_INTERVAL_MS,
            state_dir: None,
        }
    }
}

/// File name of the run history database ([`crate::history`]) in the
/// pipeline's state directory.
pub const HISTORY_FILE: &str = "history.sqlite";

/// `[history]` in the pipeline file.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistorySettings {
    /// Record runs. Default true.
    pub enabled: bool,
    /// Runs kept, newest first. Default 1000.
    pub keep_runs: u64,
    /// Days a run is kept after it started. Default 90.
    pub keep_days: u64,
    /// `weir serve`: the length of the intervals a served pipeline's
    /// micro-batches are recorded in, one history row each (e.g. `"5m"`).
    /// Default one minute; at least one second.
    #[serde(with = "crate::checks::humantime_serde_compat")]
    pub interval: std::time::Duration,
}

impl Default for HistorySettings {
    fn default() -> Self {
        HistorySettings {
            enabled: true,
            keep_runs: 1000,
            keep_days: 90,
            interval: std::time::Duration::from_secs(60),
        }
    }
}

/// `[lineage]` in the pipeline file. Without `file` or `url` no event is
/// made.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LineageSettings {
    /// JSON Lines file the events are appended to, relative to the
    /// pipeline file.
    pub file: Option<String>,
    /// Endpoint base URL: events are POSTed to `{url}/api/v1/lineage`.
    pub url: Option<String>,
    /// The job's namespace. Default `weir`.
    pub namespace: String,
    /// Longest wait for one POST, in milliseconds. Default 2000.
    pub timeout_ms: u64,
    /// Events held for the sender; more are dropped and counted. Default 256.
    pub queue: usize,
    /// At the end of a run, longest wait for the queued events, in
    /// milliseconds. Default 2000.
    pub flush_ms: u64,
}

impl Default for LineageSettings {
    fn default() -> Self {
        LineageSettings {
            file: None,
            url: None,
            namespace: "weir".into(),
            timeout_ms: 2000,
            queue: 256,
            flush_ms: 2000,
        }
    }
}

impl LineageSettings {
    /// Whether any event is to be made.
    pub fn enabled(&self) -> bool {
        self.file.is_some() || self.url.is_some()
    }
}

/// Adds a problem for every value of `[checks]` out of range.
fn check_checks(checks: &crate::checks::ChecksSettings, problems: &mut Problems) {
    if let Some(url) = &checks.webhook
        && !(url.starts_with("http://") || url.starts_with("https://"))
    {
        problems.add(
            "checks.webhook",
            format!("`{url}` is not an http:// or https:// URL"),
        );
    }
    let mut fractions = Vec::new();
    if let Some(q) = &checks.quarantine {
        fractions.extend(
            q.max_fraction
                .map(|f| ("checks.quarantine.max_fraction".to_string(), f)),
        );
    }
    if let Some(n) = &checks.nulls {
        fractions.push(("checks.nulls.max_fraction".to_string(), n.max_fraction));
        for (column, f) in &n.columns {
            fractions.push((format!("checks.nulls.columns.{column}"), *f));
        }
    }
    for (key, fraction) in fractions {
        if !(0.0..=1.0).contains(&fraction) {
            problems.add(
                key,
                format!("{fraction} is not a fraction between 0.0 and 1.0"),
            );
        }
    }
    for (key, window, min_runs, z) in [
        checks
            .volume
            .as_ref()
            .map(|v| ("checks.volume", v.window, v.min_runs, v.z)),
        checks
            .quarantine
            .as_ref()
            .map(|q| ("checks.quarantine", q.window, q.min_runs, q.z)),
    ]
    .into_iter()
    .flatten()
    {
        if window < 2 || min_runs > window {
            problems.add(
                format!("{key}.window"),
                format!("window = {window} with min_runs = {min_runs}: a window needs at least 2 runs and at least min_runs"),
            );
        }
        if z.is_nan() || z <= 0.0 {
            problems.add(
                format!("{key}.z"),
                format!("{z} is not a positive number of standard deviations"),
            );
        }
    }
}

/// The history of a partitioned pipeline `file`:
/// `.STEM.weir-history/history.sqlite` beside it.
pub fn partitioned_history_file(file: &Path) -> PathBuf {
    let stem = file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    file.with_file_name(format!(".{stem}.weir-history"))
        .join(HISTORY_FILE)
}

/// File formats weir reads natively.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceFormat {
    /// Comma- (or `delimiter`-) separated values.
    Csv,
    /// One JSON object per line.
    Jsonl,
    /// A JSON document: an array of objects, or one object. Each file is
    /// read whole (use JSON Lines for files larger than memory).
    Json,
    /// Apache Parquet.
    Parquet,
    /// Any format: each file's bytes go to an extract plugin
    /// (`[source.extract]`), which returns record batches.
    Extract,
    /// A PostgreSQL table or query ([`crate::source::postgres`]).
    Postgres,
    /// A NATS JetStream durable consumer (`weir serve` only; settings in
    /// `[source.nats]`, see [`crate::nats::settings::SourceSettings`]).
    Nats,
}

impl SourceFormat {
    /// The native format a file's extension names: `.csv`, `.jsonl` /
    /// `.ndjson`, `.parquet`.
    pub fn from_extension(path: &Path) -> Option<SourceFormat> {
        match path.extension()?.to_str()? {
            "csv" => Some(SourceFormat::Csv),
            "jsonl" | "ndjson" => Some(SourceFormat::Jsonl),
            "json" => Some(SourceFormat::Json),
            "parquet" => Some(SourceFormat::Parquet),
            _ => None,
        }
    }
}

/// `[source.extract]`: the extract plugin that parses each source file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtractConfig {
    /// `builtin:NAME` or a path to a `.wasm` component of the `extractor`
    /// world, relative to the pipeline file.
    pub plugin: String,
    /// The table the plugin reads through `weir:plugin/host.config`.
    #[serde(default)]
    pub config: toml::Table,
    /// MIME type passed to the plugin with every file. Default empty.
    #[serde(default)]
    pub content_type: String,
    /// Largest file handed to the plugin, in bytes; a larger file is
    /// quarantined unread. Default 268,435,456 (256 MiB).
    #[serde(default = "default_max_file_bytes")]
    pub max_file_bytes: u64,
    /// See [`Limits::fuel_per_batch`] (here: per file).
    pub fuel_per_batch: Option<u64>,
    /// See [`Limits::timeout_ms`] (here: per file).
    pub timeout_ms: Option<u64>,
    /// See [`Limits::max_memory_bytes`].
    pub max_memory_bytes: Option<u64>,
    /// See [`Limits::max_output_bytes`] (here: all batches of one file).
    pub max_output_bytes: Option<u64>,
    /// Cap on the plugin's keyed state (`weir:plugin/state`: a cursor of
    /// what it pulled), in bytes of keys plus values. Default
    /// [`crate::state::stage::DEFAULT_MAX_STATE_BYTES`].
    pub max_state_bytes: Option<u64>,
    /// What the plugin may reach beyond each file's bytes and its config
    /// (default: nothing): read-only directories and outbound HTTP to an
    /// allowlist of hosts; see [`crate::plugin::Grants`].
    #[serde(default)]
    pub capabilities: crate::plugin::Grants,
}

fn default_max_file_bytes() -> u64 {
    256 * 1024 * 1024
}

impl ExtractConfig {
    /// The extractor's limits: its own values over [`Limits::default`].
    pub fn limits(&self) -> Limits {
        Limits::default().overridden(
            self.fuel_per_batch,
            self.timeout_ms,
            self.max_memory_bytes,
            self.max_output_bytes,
        )
    }
}

/// `[source]`: the input files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// `csv`, `jsonl` or `parquet`.
    pub format: SourceFormat,
    /// A file or a glob (`data/*.csv`), relative to the pipeline file.
    /// Files matching a glob are read in sorted order. Required by `weir
    /// run`; under `weir serve` it is only a sample to infer the schema
    /// from, and may be left out when `schema` is declared.
    #[serde(default)]
    pub path: String,
    /// CSV: whether the first line names the columns. Default true.
    #[serde(default = "yes")]
    pub header: bool,
    /// CSV: the field separator, one ASCII character. Default `,`.
    #[serde(default = "comma")]
    pub delimiter: String,
    /// CSV: the quote character, one ASCII character. Default `"`.
    #[serde(default = "double_quote")]
    pub quote: String,
    /// CSV: cell texts that mean null, matched exactly (an empty cell is
    /// always null). Example: `null_values = ["NA", "N/A"]`.
    #[serde(default)]
    pub null_values: Vec<String>,
    /// CSV and JSON Lines: rows read to infer the schema when `schema` is not
    /// given. Default 10,000.
    #[serde(default = "default_infer_rows")]
    pub infer_rows: usize,
    /// CSV and JSON Lines: the declared schema, in column order; when given,
    /// nothing is inferred. Example: `schema = [{ name = "year", type = "int64" }]`.
    pub schema: Option<Vec<ColumnSpec>>,
    /// `format = "extract"`: the plugin that turns each file into batches.
    pub extract: Option<ExtractConfig>,
    /// CSV with a header: what to do when a file's (or a request body's)
    /// header lacks a column of the source schema. Columns are always
    /// matched by header name, never by position. Default `error`.
    #[serde(default)]
    pub missing_columns: MissingColumns,
    /// CSV with a header: what to do with a header column the source
    /// schema does not have. Default `error`.
    #[serde(default)]
    pub extra_columns: ExtraColumns,
    /// JSON Lines and JSON: a record field that is not a column of the
    /// source schema. Always counted (`unknown_fields` in the run report
    /// and in `weir serve`'s answer); default `ignore`.
    #[serde(default)]
    pub unknown_fields: UnknownFields,
    /// PostgreSQL: a libpq connection string or `postgresql://` URL; what
    /// it leaves out comes from the `PG*` environment variables.
    pub connection: Option<String>,
    /// PostgreSQL: the table to read, `name` or `schema.name`.
    pub table: Option<String>,
    /// PostgreSQL: a query to read instead of a table.
    pub query: Option<String>,
    /// PostgreSQL: read incrementally by this integer, date or timestamp
    /// column: rows in its order, each run only those past the previous
    /// run's high-water mark. Default: read everything.
    pub incremental_by: Option<String>,
    /// PostgreSQL: how long to keep retrying a lost connection, in
    /// seconds. Default 60.
    #[serde(default = "default_retry_budget_s")]
    pub retry_budget_s: u64,
    /// `format = "nats"`: the stream and durable consumer to read.
    pub nats: Option<crate::nats::settings::SourceSettings>,
}

/// `unknown_fields`: a JSON record field that is not a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownFields {
    /// The field is dropped (and counted).
    #[default]
    Ignore,
    /// The record is quarantined, naming the field.
    Quarantine,
    /// The file (or request) is refused, naming the record and the field.
    Error,
}

/// `missing_columns`: a header without a column of the source schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MissingColumns {
    /// The file (or request) is refused, naming the missing columns.
    #[default]
    Error,
    /// The column is read as all nulls (it must be nullable).
    Null,
}

/// `extra_columns`: a header column the source schema does not have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExtraColumns {
    /// The file (or request) is refused, naming the unknown columns.
    #[default]
    Error,
    /// The column is skipped.
    Ignore,
}

impl SourceConfig {
    /// A source reading `path` as `format` with every other key at its
    /// documented default, as if written in a pipeline file.
    pub fn file(format: SourceFormat, path: &Path) -> SourceConfig {
        SourceConfig {
            format,
            path: path.display().to_string(),
            header: yes(),
            delimiter: comma(),
            quote: double_quote(),
            null_values: Vec::new(),
            infer_rows: default_infer_rows(),
            schema: None,
            extract: None,
            missing_columns: MissingColumns::default(),
            extra_columns: ExtraColumns::default(),
            unknown_fields: UnknownFields::default(),
            connection: None,
            table: None,
            query: None,
            incremental_by: None,
            retry_budget_s: default_retry_budget_s(),
            nats: None,
        }
    }
}

fn yes() -> bool {
    true
}
fn comma() -> String {
    ",".into()
}
fn double_quote() -> String {
    "\"".into()
}
fn default_infer_rows() -> usize {
    10_000
}

/// One declared column.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnSpec {
    /// Column name.
    pub name: String,
    /// One of `boolean`, `int64`, `float64`, `utf8`, `binary`, `date32`,
    /// `timestamp` (µs, no zone).
    #[serde(rename = "type")]
    pub data_type: String,
    /// Whether nulls are allowed. Default true.
    #[serde(default = "yes")]
    pub nullable: bool,
    /// `date32` and `timestamp` columns written in another form than ISO
    /// 8601: the chrono/strftime format of the values, e.g. `"%Y/%m/%d"`
    /// or `"%d.%m.%Y %H:%M"`. A value off the format is quarantined.
    /// Default: ISO 8601 (a declared schema), or a format inferred from
    /// the sample (an inferred one).
    pub format: Option<String>,
}

/// What a stage does when its plugin fails on a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Quarantine the batch's rows with the error and go on (default).
    #[default]
    Quarantine,
    /// Stop the run with the error; nothing is committed.
    Fail,
}

/// `[[stages]]`: one plugin applied to every batch.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageConfig {
    /// Unique name, used in logs, metrics, the report and the quarantine.
    pub name: String,
    /// `validate`, `transform` or `extract`; must match the plugin's world.
    pub kind: PluginKind,
    /// `builtin:NAME` or a path to a `.wasm` component, relative to the
    /// pipeline file.
    pub plugin: String,
    /// The table the plugin reads through `weir:plugin/host.config`, as JSON.
    #[serde(default)]
    pub config: toml::Table,
    /// Reference tables (name → CSV, JSON Lines or Parquet file, relative to
    /// the pipeline file) read by the host and handed to the plugin inside its
    /// config, under `tables.NAME`, as an array of row objects. At most
    /// [`MAX_REFERENCE_TABLE_BYTES`] of JSON in all.
    #[serde(default)]
    pub tables: BTreeMap<String, String>,
    /// `quarantine` (default) or `fail`.
    #[serde(default)]
    pub on_error: OnError,
    /// See [`Limits::fuel_per_batch`].
    pub fuel_per_batch: Option<u64>,
    /// See [`Limits::timeout_ms`].
    pub timeout_ms: Option<u64>,
    /// See [`Limits::max_memory_bytes`].
    pub max_memory_bytes: Option<u64>,
    /// See [`Limits::max_output_bytes`].
    pub max_output_bytes: Option<u64>,
    /// When a call fails, how many more calls may be spent splitting the
    /// batch in halves to find the rows that make it fail, so that only
    /// those are quarantined. Default [`DEFAULT_BISECT_MAX_CALLS`]; 0
    /// quarantines the whole batch at once.
    pub bisect_max_calls: Option<u32>,
    /// When the plugin counts as unhealthy and is rested; see
    /// [`crate::plugin::BreakerConfig`].
    #[serde(default)]
    pub breaker: crate::plugin::BreakerConfig,
    /// What the plugin may reach beyond its batch and config (default:
    /// nothing); see [`crate::plugin::Grants`].
    #[serde(default)]
    pub capabilities: crate::plugin::Grants,
    /// Cap on the stage's keyed state (`weir:plugin/state`), in bytes of
    /// keys plus values. Default
    /// [`crate::state::stage::DEFAULT_MAX_STATE_BYTES`] (256 MiB). Only
    /// used when the plugin imports the state interface.
    pub max_state_bytes: Option<u64>,
}

/// Default [`StageConfig::bisect_max_calls`]: 64 calls. Isolating one
/// poison row takes two calls per halving, 26 for a batch of 8192 rows, and
/// rows near each other share most of their halvings, so 64 isolates a few
/// poison rows per default-sized batch; beyond that the smallest ranges
/// still failing are quarantined whole. A failing batch thus costs at most
/// `1 + 64` calls; a plugin that loops on one row costs about one
/// `timeout_ms` per halving (13 for 8192 rows), so give slow plugins a
/// tight `timeout_ms`.
pub const DEFAULT_BISECT_MAX_CALLS: u32 = 64;

/// Largest reference-table payload one stage may receive, in bytes of JSON
/// (16 MiB): tables are copied into every instance's memory.
pub const MAX_REFERENCE_TABLE_BYTES: usize = 16 * 1024 * 1024;

impl StageConfig {
    /// The stage's limits: its own values over [`Limits::default`].
    pub fn limits(&self) -> Limits {
        Limits::default().overridden(
            self.fuel_per_batch,
            self.timeout_ms,
            self.max_memory_bytes,
            self.max_output_bytes,
        )
    }
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkFormat {
    /// Apache Parquet; may be partitioned (the default of a config built
    /// in code).
    #[default]
    Parquet,
    /// One JSON object per line.
    Jsonl,
    /// CSV with a header line.
    Csv,
    /// A PostgreSQL table, loaded with binary `COPY`
    /// ([`crate::sink::postgres`]).
    Postgres,
    /// NATS JetStream: one message per row (`weir serve` with a NATS
    /// source only; settings in `[sink.nats]`, see [`crate::sink::nats`]).
    Nats,
}

impl PipelineConfig {
    /// The state store of a `weir run` of this pipeline (see
    /// [`PipelineSettings::state_dir`]).
    pub fn state_store(&self, base_dir: &Path) -> PathBuf {
        let dir = match &self.pipeline.state_dir {
            Some(dir) => base_dir.join(dir),
            None => {
                let checkpoint = self.sink.checkpoint_dir(base_dir);
                let name = checkpoint
                    .file_name()
                    .map(|n| {
                        n.to_string_lossy()
                            .replace(".weir-checkpoint", ".weir-state")
                    })
                    .unwrap_or_else(|| ".weir-state".to_string());
                checkpoint.with_file_name(name)
            }
        };
        dir.join(crate::state::STORE_FILE)
    }

    /// The run history of this pipeline's runs: `history.sqlite` beside
    /// its state store ([`Self::state_store`]); for a partitioned pipeline,
    /// whose state differs per partition, one history for all partitions
    /// in `.STEM.weir-history/` beside the pipeline `file`.
    pub fn history_file(&self, file: &Path) -> PathBuf {
        let base_dir = file.parent().unwrap_or(Path::new(""));
        match self.partition_key {
            Some(_) => partitioned_history_file(file),
            None => self.state_store(base_dir).with_file_name(HISTORY_FILE),
        }
    }
}

impl SinkConfig {
    /// The checkpoint directory of a `weir run` writing this sink:
    /// `.NAME.weir-checkpoint` beside the sink's path (relative to
    /// `base_dir`), on the same filesystem so that publishing is a rename.
    /// A PostgreSQL sink has no path: its checkpoint directory is
    /// `.TABLE.weir-checkpoint` in `base_dir`.
    pub fn checkpoint_dir(&self, base_dir: &Path) -> PathBuf {
        if self.format == SinkFormat::Postgres {
            let table = self.table.as_deref().unwrap_or("postgres");
            return base_dir.join(format!(".{table}.weir-checkpoint"));
        }
        let path = base_dir.join(&self.path);
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        path.with_file_name(format!(".{name}.weir-checkpoint"))
    }
}

impl SinkFormat {
    /// The file extension (no dot): `parquet`, `jsonl` or `csv`.
    pub fn extension(self) -> &'static str {
        match self {
            SinkFormat::Parquet => "parquet",
            SinkFormat::Jsonl => "jsonl",
            SinkFormat::Csv => "csv",
            SinkFormat::Postgres => "bin",
            SinkFormat::Nats => "json",
        }
    }
}

/// What to do when the output already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WriteMode {
    /// Stop before running (default): nothing is overwritten by accident.
    #[default]
    ErrorIfExists,
    /// Replace the old output when the run commits; until then it is intact.
    Overwrite,
    /// PostgreSQL (default there): add the rows to the table.
    Append,
    /// PostgreSQL: insert rows whose `key` is new, update those whose key
    /// is in the table (the last row of a key in an epoch wins).
    Upsert,
    /// PostgreSQL: the run's rows replace the table's (or, with
    /// `partition_by`, the rows of the partitions the run wrote), in one
    /// transaction at the end of the run.
    Replace,
}

/// `[sink]`: where passing records are written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// `parquet`, `jsonl`, `csv` or `postgres`.
    pub format: SinkFormat,
    /// Output path, relative to the pipeline file: a file, or a directory
    /// when `partition_by` is set. Not used by `postgres`.
    #[serde(default)]
    pub path: String,
    /// Parquet: columns whose values name Hive-style subdirectories
    /// (`month=1/`); the columns are stored in the path, not in the files.
    /// PostgreSQL with `mode = "replace"`: the columns whose values the
    /// run replaces (only rows of those partitions are deleted).
    #[serde(default)]
    pub partition_by: Vec<String>,
    /// Parquet: `snappy` (default), `zstd` or `none`.
    #[serde(default = "default_compression")]
    pub compression: String,
    /// Files: `error_if_exists` (default) or `overwrite`. PostgreSQL:
    /// `append` (default), `upsert` or `replace`.
    #[serde(default)]
    pub mode: Option<WriteMode>,
    /// Name of a `utf8` column added to every output row naming the plugin
    /// version each stage ran, as `stage=sha256;stage=sha256…`. Default:
    /// none. Example: `lineage_column = "_weir_lineage"`.
    pub lineage_column: Option<String>,
    /// PostgreSQL: a libpq connection string (`host=… port=… user=…
    /// dbname=…`) or `postgresql://` URL; what it leaves out comes from
    /// the `PG*` environment variables. Prefer `PGPASSWORD` (or a
    /// `.pgpass`-free secret in the environment) to a password here.
    pub connection: Option<String>,
    /// PostgreSQL: the table, `name` or `schema.name`, matched exactly.
    pub table: Option<String>,
    /// PostgreSQL `upsert`: the key columns (a unique index or primary
    /// key on exactly these must exist, or be created with `create`).
    #[serde(default)]
    pub key: Vec<String>,
    /// PostgreSQL: create the table from the output's schema when it does
    /// not exist (types: docs/postgres.md). Default false.
    #[serde(default)]
    pub create: bool,
    /// PostgreSQL: how long to keep retrying a lost connection before the
    /// run fails, in seconds. Default 60.
    #[serde(default = "default_retry_budget_s")]
    pub retry_budget_s: u64,
    /// `format = "nats"`: the servers and the subject to publish to.
    pub nats: Option<crate::nats::settings::SinkSettings>,
}

fn default_retry_budget_s() -> u64 {
    crate::postgres::DEFAULT_RETRY_BUDGET_S
}

impl SinkConfig {
    /// The write mode, its default filled in: `error_if_exists` for
    /// files, `append` for PostgreSQL.
    pub fn write_mode(&self) -> WriteMode {
        match (self.mode, self.format) {
            (Some(mode), _) => mode,
            (None, SinkFormat::Postgres) => WriteMode::Append,
            (None, _) => WriteMode::ErrorIfExists,
        }
    }
}

fn default_compression() -> String {
    "snappy".into()
}

/// Quarantine formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuarantineFormat {
    /// One JSON object per rejected row (the row under `record`).
    Jsonl,
    /// Parquet with the row as JSON text in the `record` column.
    Parquet,
}

/// `[quarantine]`: where rejected records go.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuarantineConfig {
    /// `jsonl` or `parquet`.
    pub format: QuarantineFormat,
    /// Output file, relative to the pipeline file. Replaced on every run
    /// that commits (the quarantine describes one run).
    pub path: String,
}

/// One problem in a pipeline file: which file, which key, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The pipeline file.
    pub file: PathBuf,
    /// Dotted path of the key (`stages[1].plugin`), or empty for the whole file.
    pub key: String,
    /// What is wrong, and what would be right.
    pub message: String,
}

impl ConfigError {
    /// One problem with `key` of `file`, as the whole error.
    pub fn whole(file: &Path, key: &str, message: impl Into<String>) -> ConfigErrors {
        ConfigErrors(vec![ConfigError {
            file: file.to_path_buf(),
            key: key.to_string(),
            message: message.into(),
        }])
    }
}

/// The `[partition]` settings of pipeline TOML `text`, read without
/// replacing its variables, and whether it uses them.
///
/// # Errors
/// Malformed TOML or a malformed `[partition]`.
pub fn partition_settings_of(
    text: &str,
    path: &Path,
) -> Result<crate::partition::PartitionSettings, ConfigErrors> {
    #[derive(Deserialize)]
    struct OnlyPartition {
        #[serde(default)]
        partition: crate::partition::PartitionSettings,
    }
    Ok(parse_toml::<OnlyPartition>(text, path)?.partition)
}

/// Where the run history of pipeline `file` is, partitioned or not
/// ([`PipelineConfig::history_file`]).
///
/// # Errors
/// An unreadable or malformed pipeline file.
pub fn history_file_for(file: &Path) -> Result<PathBuf, ConfigErrors> {
    let text = read_text(file)?;
    if crate::partition::uses_partition(&text) {
        return Ok(partitioned_history_file(file));
    }
    Ok(PipelineConfig::from_toml(&text, file)?.history_file(file))
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(f, "{}: {}: {}", self.file.display(), self.key, self.message)
        }
    }
}

/// Every problem found in a pipeline file.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(
            f,
            "{n} problem{} in the pipeline file:",
            if n == 1 { "" } else { "s" }
        )?;
        for error in &self.0 {
            writeln!(f, "  - {error}")?;
        }
        Ok(())
    }
}

/// Collects [`ConfigError`]s for one file.
pub struct Problems {
    file: PathBuf,
    errors: Vec<ConfigError>,
}

impl Problems {
    /// An empty list for `file`.
    pub fn new(file: &Path) -> Self {
        Self {
            file: file.to_path_buf(),
            errors: Vec::new(),
        }
    }

    /// Records a problem with `key`.
    pub fn add(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError {
            file: self.file.clone(),
            key: key.into(),
            message: message.into(),
        });
    }

    /// `Ok` when nothing was recorded, else every problem.
    ///
    /// # Errors
    /// [`ConfigErrors`] with every recorded problem.
    pub fn finish(self) -> Result<(), ConfigErrors> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(self.errors))
        }
    }
}

/// The text of the config file at `path`.
///
/// # Errors
/// An unreadable file, as one [`ConfigError`] naming it.
pub fn read_text(path: &Path) -> Result<String, ConfigErrors> {
    std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            key: String::new(),
            message: format!("cannot read: {e}"),
        }])
    })
}

/// What a pipeline file is loaded for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// `weir run` / `weir check`: read the source files to the end.
    Run,
    /// `weir serve`: records arrive by request; source files are at most a
    /// schema sample.
    Serve,
}

/// Deepest nesting of tables and arrays a config file may have. The TOML
/// deserializer recurses once per level: 8,000 levels of `[{` (from
/// `weir-fuzz`) overflowed a 2 MiB thread stack, and so did 80 inline
/// tables each opened by a 79-part dotted key (toml refuses more than 80
/// brackets or 80 parts in one key, not both multiplied).
const MAX_TOML_NESTING: usize = 128;

/// The line where the nesting of `text` first exceeds `max`; `None` when
/// it never does. The text is cut into tokens by the lexer toml's own
/// parser uses (so a bracket in a string or a comment is no bracket, for
/// it as for us), and the depth at a point is every level that makes a
/// table or an array: the parts of the current table header, each open
/// array or inline table together with the parts of the key that opened
/// it, and the parts of the key being read. It may count more than the
/// parser nests (a float's `.` when the float is a value), never less.
fn nested_too_deep(text: &str, max: usize) -> Option<usize> {
    use toml_parser::lexer::TokenKind;
    let source = toml_parser::Source::new(text);
    // What each open bracket added to `depth`; the parts of the header in
    // force and of the key being read (kept past its `=`, so that a
    // bracket opening its value counts the key's parts too).
    let (mut open, mut depth) = (Vec::<(TokenKind, usize)>::new(), 0usize);
    let (mut header, mut key) = (0usize, 1usize);
    let (mut line_start, mut in_header, mut header_brackets) = (true, false, 0usize);
    for token in source.lex() {
        match token.kind() {
            TokenKind::Newline => {
                if in_header {
                    // `[[a.b]]`: each part is an array and a table.
                    header = key * header_brackets.min(2);
                    in_header = false;
                    if header > max {
                        return Some(text[..token.span().start()].matches('\n').count() + 1);
                    }
                }
                if open.is_empty() {
                    line_start = true;
                }
                key = 1;
                continue;
            }
            TokenKind::Whitespace | TokenKind::Comment => continue,
            TokenKind::LeftSquareBracket if open.is_empty() && (line_start || in_header) => {
                if !in_header {
                    header_brackets = 0;
                }
                in_header = true;
                header_brackets += 1;
            }
            TokenKind::Dot => key += 1,
            _ if in_header => {}
            kind @ (TokenKind::LeftSquareBracket | TokenKind::LeftCurlyBracket) => {
                open.push((kind, key));
                depth += key;
                key = 1;
            }
            closer @ (TokenKind::RightSquareBracket | TokenKind::RightCurlyBracket) => {
                // Only the closer of the innermost bracket closes it: the
                // parser reports a mismatched one and reads on, still that
                // deep (`[{` then `]`, 8,000 times, overflowed the stack).
                let opener = match closer {
                    TokenKind::RightSquareBracket => TokenKind::LeftSquareBracket,
                    _ => TokenKind::LeftCurlyBracket,
                };
                if open.last().is_some_and(|(kind, _)| *kind == opener) {
                    depth -= open.pop().map_or(0, |(_, added)| added);
                }
                key = 1;
            }
            TokenKind::Comma => key = 1,
            _ => {}
        }
        line_start = false;
        if header + depth + key > max {
            return Some(text[..token.span().start()].matches('\n').count() + 1);
        }
    }
    None
}

/// Every string in `value`, nested ones too.
fn toml_strings(value: &toml::Value) -> Vec<&str> {
    match value {
        toml::Value::String(text) => vec![text.as_str()],
        toml::Value::Array(items) => items.iter().flat_map(toml_strings).collect(),
        toml::Value::Table(table) => table.values().flat_map(toml_strings).collect(),
        _ => Vec::new(),
    }
}

/// Most unknown keys reported for one file before giving up.
const MAX_UNKNOWN_KEYS: usize = 64;

/// Parses TOML `text` (read from `path`) into `T`, naming the key (as
/// `stages[0].config`) and line of each problem.
///
/// Every unknown key is reported, not only the first: each one found is
/// blanked out of a copy of the text (offsets kept) and parsing starts
/// again, so a file with three typos gets three problems at once. Other
/// problems (invalid TOML, a value of the wrong type) end the list.
///
/// # Errors
/// Invalid TOML, unknown keys, or a value of the wrong type.
pub fn parse_toml<T: serde::de::DeserializeOwned>(
    text: &str,
    path: &Path,
) -> Result<T, ConfigErrors> {
    if let Some(line) = nested_too_deep(text, MAX_TOML_NESTING) {
        return Err(ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            key: String::new(),
            message: format!(
                "tables and arrays are nested more than {MAX_TOML_NESTING} deep (line {line}, counting each part of a dotted key): a file nested that deep is refused before parsing"
            ),
        }]));
    }
    let mut working = text.to_string();
    let mut errors = Vec::new();
    loop {
        let error = match toml::from_str::<T>(&working) {
            Ok(value) if errors.is_empty() => return Ok(value),
            Ok(_) => return Err(ConfigErrors(errors)),
            Err(error) => error,
        };
        let located = error
            .span()
            .and_then(|span| locate_key(&working, span.start));
        let key = match (&located, error.span()) {
            (Some((key, _)), _) => key.clone(),
            (None, Some(span)) => key_at(text, span.start),
            (None, None) => String::new(),
        };
        errors.push(ConfigError {
            file: path.to_path_buf(),
            key,
            message: error.message().trim().to_string() + &location(text, error.span()),
        });
        let unknown = error.message().starts_with("unknown field");
        match located {
            Some((_, range)) if unknown && errors.len() < MAX_UNKNOWN_KEYS => {
                blank(&mut working, range);
            }
            _ => return Err(ConfigErrors(errors)),
        }
    }
}

/// The key (`stages[1].confg`) whose key or value holds byte `offset` of
/// `text`, innermost first, with the range of its `key = value` (and a
/// comma separating it from a neighbour in an inline table).
fn locate_key(text: &str, offset: usize) -> Option<(String, std::ops::Range<usize>)> {
    let document = toml::de::DeTable::parse(text).ok()?;
    let (key, range) = find_in_table(document.get_ref(), offset, "")?;
    Some((key, with_separator(text, range)))
}

fn find_in_table(
    table: &toml::de::DeTable<'_>,
    offset: usize,
    prefix: &str,
) -> Option<(String, std::ops::Range<usize>)> {
    for (key, value) in table.iter() {
        let name = if prefix.is_empty() {
            key.get_ref().to_string()
        } else {
            format!("{prefix}.{}", key.get_ref())
        };
        if let Some(found) = find_in_value(value.get_ref(), offset, &name) {
            return Some(found);
        }
        let (key_span, value_span) = (key.span(), value.span());
        if key_span.contains(&offset) || value_span.contains(&offset) {
            return Some((name, key_span.start..value_span.end.max(key_span.end)));
        }
    }
    None
}

fn find_in_value(
    value: &toml::de::DeValue<'_>,
    offset: usize,
    name: &str,
) -> Option<(String, std::ops::Range<usize>)> {
    match value {
        toml::de::DeValue::Table(table) => find_in_table(table, offset, name),
        toml::de::DeValue::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| find_in_value(item.get_ref(), offset, &format!("{name}[{i}]"))),
        _ => None,
    }
}

/// `range` extended over the comma that separates it from the next (or
/// else the previous) entry of an inline table, so blanking it leaves
/// valid TOML.
fn with_separator(text: &str, range: std::ops::Range<usize>) -> std::ops::Range<usize> {
    let bytes = text.as_bytes();
    let mut after = range.end;
    while after < bytes.len() && matches!(bytes[after], b' ' | b'\t') {
        after += 1;
    }
    if bytes.get(after) == Some(&b',') {
        return range.start..after + 1;
    }
    let mut before = range.start;
    while before > 0 && matches!(bytes[before - 1], b' ' | b'\t') {
        before -= 1;
    }
    if before > 0 && bytes[before - 1] == b',' && bytes.get(after) == Some(&b'}') {
        return before - 1..range.end;
    }
    range
}

/// Replaces `range` of `text` with spaces, keeping line breaks and every
/// offset.
fn blank(text: &mut String, range: std::ops::Range<usize>) {
    let blanked: String = text[range.clone()]
        .bytes()
        .map(|b| if b == b'\n' { '\n' } else { ' ' })
        .collect();
    text.replace_range(range, &blanked);
}

/// The Arrow type for a type name of the pipeline file's `schema`
/// (`int64`, `utf8`, `date32`, `timestamp` (µs, no zone)...); `None` for
/// an unknown name.
pub fn parse_data_type(name: &str) -> Option<arrow::datatypes::DataType> {
    use arrow::datatypes::{DataType, TimeUnit};
    Some(match name {
        "boolean" | "bool" => DataType::Boolean,
        "int64" | "integer" => DataType::Int64,
        "float64" | "double" => DataType::Float64,
        "utf8" | "string" => DataType::Utf8,
        "binary" => DataType::Binary,
        "date32" | "date" => DataType::Date32,
        "timestamp" => DataType::Timestamp(TimeUnit::Microsecond, None),
        _ => return None,
    })
}

/// Whether `format` is a strftime date/timestamp format chrono understands
/// (the `format` of a `schema` column).
pub fn is_valid_date_format(format: &str) -> bool {
    !format.is_empty()
        && chrono::format::StrftimeItems::new(format)
            .all(|item| !matches!(item, chrono::format::Item::Error))
}

/// Expands `pattern` (relative to `base_dir`) into the sorted list of
/// matching files; a plain path matches itself if it exists.
///
/// # Errors
/// A malformed glob, or no file matching.
pub fn expand_paths(base_dir: &Path, pattern: &str) -> Result<Vec<PathBuf>, String> {
    let full = base_dir.join(pattern);
    let text = full.to_string_lossy();
    let mut files: Vec<PathBuf> = glob::glob(&text)
        .map_err(|e| format!("`{pattern}` is not a valid glob: {e}"))?
        .filter_map(Result::ok)
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(format!("no file matches `{}`", full.display()));
    }
    Ok(files)
}

/// Why a stateful pipeline cannot write to a NATS sink: the sink publishes
/// an epoch's rows before its ledger claim, and a stateful epoch that
/// another worker's commit made stale is computed again, possibly with
/// other rows, which could not be taken back.
pub const STATEFUL_NATS_SINK: &str = "stateful operators and stages do not write to a NATS sink yet: its rows are published before the epoch commits, and a stateful epoch may be computed again after another worker's commit (use a file or table sink, which commits with the state)";

/// A `latest` operator's `table`, read as a `[source]`.
///
/// # Errors
/// An unknown key or a value of the wrong type, as toml says it.
pub fn table_source(table: &toml::Table) -> Result<SourceConfig, String> {
    toml::Value::Table(table.clone())
        .try_into::<SourceConfig>()
        .map_err(|e| e.to_string().trim().to_string())
}

fn single_ascii(value: &str) -> bool {
    value.len() == 1 && value.is_ascii()
}

impl PipelineConfig {
    /// Reads and parses `path`.
    ///
    /// # Errors
    /// An unreadable file, malformed TOML, an unknown key or a value of the
    /// wrong type, as one [`ConfigError`] naming the file, line and key.
    pub fn from_file(path: &Path) -> Result<PipelineConfig, ConfigErrors> {
        let extension = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        if let Some(extension) = extension
            && ["csv", "tsv", "jsonl", "ndjson", "json", "parquet"].contains(&extension.as_str())
        {
            return Err(ConfigErrors(vec![ConfigError {
                file: path.to_path_buf(),
                key: String::new(),
                message: format!(
                    "this looks like a data file (.{extension}); weir takes a pipeline file (TOML) whose [source] reads the data, e.g.\n\n[source]\nformat = \"csv\"\npath = \"{}\"\n\n[sink]\nformat = \"parquet\"\npath = \"out.parquet\"\n\n[quarantine]\nformat = \"jsonl\"\npath = \"quarantine.jsonl\"\n\n(see docs/pipeline-file.md; `weir show FILE` prints a data file)",
                    path.file_name()
                        .map(|n| n.to_string_lossy())
                        .unwrap_or_default()
                ),
            }]));
        }
        Self::from_toml(&read_text(path)?, path)
    }

    /// Reads `path` for partition `key` (its variables replaced, see
    /// [`crate::partition`]).
    ///
    /// # Errors
    /// As [`PipelineConfig::from_file`].
    pub fn from_file_for(
        path: &Path,
        key: &crate::partition::PartitionKey,
    ) -> Result<PipelineConfig, ConfigErrors> {
        Self::from_toml_for(&read_text(path)?, path, Some(key))
    }

    /// Reads `path` for the partition whose value is `value` (`weir run
    /// --partition`), or for none.
    ///
    /// # Errors
    /// As [`PipelineConfig::from_file`], and a value with forbidden
    /// characters.
    pub fn from_file_partition(
        path: &Path,
        value: Option<&str>,
    ) -> Result<PipelineConfig, ConfigErrors> {
        let Some(value) = value else {
            return Self::from_file(path);
        };
        let text = read_text(path)?;
        let settings = partition_settings_of(&text, path)?;
        let key = crate::partition::PartitionKey::given(value, &settings)
            .map_err(|message| ConfigError::whole(path, "partition", message))?;
        Self::from_toml_for(&text, path, Some(&key))
    }

    /// Parses pipeline TOML `text`, attributing errors to `path`.
    ///
    /// # Errors
    /// As [`PipelineConfig::from_file`].
    pub fn from_toml(text: &str, path: &Path) -> Result<PipelineConfig, ConfigErrors> {
        Self::from_toml_for(text, path, None)
    }

    /// [`Self::from_toml`] for partition `key`.
    ///
    /// # Errors
    /// As [`PipelineConfig::from_file`].
    pub fn from_toml_for(
        text: &str,
        path: &Path,
        key: Option<&crate::partition::PartitionKey>,
    ) -> Result<PipelineConfig, ConfigErrors> {
        let text = crate::partition::substitute(text, key).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                file: path.to_path_buf(),
                key: String::new(),
                message: format!("line {}: {}", e.line, e.message),
            }])
        })?;
        let mut config: PipelineConfig = parse_toml(&text, path)?;
        config.partition_key = key.cloned();
        Ok(config)
    }

    /// Checks everything that needs no plugin to be loaded; see the module
    /// docs. `base_dir` is the pipeline file's directory.
    ///
    /// # Errors
    /// [`ConfigErrors`] with every problem found.
    pub fn validate(&self, file: &Path, base_dir: &Path) -> Result<(), ConfigErrors> {
        let mut problems = Problems::new(file);
        self.check(&mut problems, base_dir);
        problems.finish()
    }

    /// The `[secrets]` problems: a malformed source, or a `${secret:NAME}`
    /// that names no declared secret.
    fn check_secrets(&self, problems: &mut Problems) {
        for (name, source) in &self.secrets {
            if let Err(message) = crate::secrets::check_source(source) {
                problems.add(format!("secrets.{name}"), message);
            }
        }
        let mut uses: Vec<(String, String)> = Vec::new();
        let mut strings = |key: String, value: &toml::Value| {
            for text in toml_strings(value) {
                for name in crate::secrets::references(text) {
                    uses.push((key.clone(), name));
                }
            }
        };
        if let Some(extract) = &self.source.extract {
            strings(
                "source.extract.config".into(),
                &toml::Value::Table(extract.config.clone()),
            );
            if let Some(http) = &extract.capabilities.http {
                for (host, headers) in &http.headers {
                    for (header, value) in headers {
                        strings(
                            format!("source.extract.capabilities.http.headers.\"{host}\".{header}"),
                            &toml::Value::String(value.clone()),
                        );
                    }
                }
            }
        }
        for (i, stage) in self.stages.iter().enumerate() {
            strings(
                format!("stages[{i}].config"),
                &toml::Value::Table(stage.config.clone()),
            );
        }
        for (key, name) in uses {
            if !self.secrets.contains_key(&name) {
                problems.add(
                    key,
                    format!(
                        "`${{secret:{name}}}` names no secret: declare it in [secrets] (e.g. {name} = \"env:VARIABLE\"); in weir serve, a tenant's secrets are in its `secrets` of the service file"
                    ),
                );
            }
        }
    }

    /// The `[[operators]]` problems; `names` are the stages' names.
    fn check_operators<'a>(
        &'a self,
        problems: &mut Problems,
        base_dir: &Path,
        purpose: Purpose,
        mut names: std::collections::HashSet<&'a str>,
    ) {
        use crate::operator::config::OperatorKind;
        for (i, operator) in self.operators.iter().enumerate() {
            let key = format!("operators[{i}]");
            if operator.name.trim().is_empty() {
                problems.add(format!("{key}.name"), "must not be empty");
            } else if operator.name.starts_with('@') {
                problems.add(
                    format!("{key}.name"),
                    "must not start with `@` (weir's own state namespaces do)",
                );
            } else if !names.insert(operator.name.as_str()) {
                problems.add(
                    format!("{key}.name"),
                    format!(
                        "`{}` is used by a stage or an earlier operator; names must be unique",
                        operator.name
                    ),
                );
            }
            for problem in operator.problems(&key) {
                let (at, message) = problem.split_once(": ").unwrap_or((&key, &problem));
                problems.add(at.to_string(), message.to_string());
            }
            if operator.kind == OperatorKind::Latest
                && let Some(table) = &operator.table
            {
                match table_source(table) {
                    Err(e) => problems.add(format!("{key}.table"), e),
                    Ok(table) => {
                        if !matches!(
                            table.format,
                            SourceFormat::Csv | SourceFormat::Jsonl | SourceFormat::Parquet
                        ) {
                            problems.add(
                                format!("{key}.table.format"),
                                "a latest operator's table is read from csv, jsonl or parquet files",
                            );
                        } else if table.schema.is_none()
                            && let Err(e) = expand_paths(base_dir, &table.path)
                        {
                            problems.add(
                                format!("{key}.table.path"),
                                format!("{e} (the table's schema is read from its first file; declare `schema` to start without one)"),
                            );
                        }
                    }
                }
            }
            if purpose == Purpose::Serve
                && operator.kind == OperatorKind::Aggregate
                && operator.window.is_none()
            {
                problems.add(
                    format!("{key}.window"),
                    "weir serve's input never ends, so an aggregate there needs a window (and event_time) to close",
                );
            }
        }
        if !self.operators.is_empty() && self.sink.format == SinkFormat::Nats {
            problems.add("operators", STATEFUL_NATS_SINK);
        }
    }

    /// Records every problem [`PipelineConfig::validate`] would report.
    pub fn check(&self, problems: &mut Problems, base_dir: &Path) {
        self.check_for(problems, base_dir, Purpose::Run);
    }

    /// Records every problem that matters for `purpose`: `weir serve`
    /// reads no source files, so with a declared schema it needs none.
    pub fn check_for(&self, problems: &mut Problems, base_dir: &Path, purpose: Purpose) {
        if let Some(fraction) = self.pipeline.max_quarantine_fraction
            && !(0.0..=1.0).contains(&fraction)
        {
            problems.add(
                "pipeline.max_quarantine_fraction",
                format!("{fraction} is not a fraction between 0.0 and 1.0"),
            );
        }
        if self.pipeline.checkpoint_every_batches == Some(0) {
            problems.add("pipeline.checkpoint_every_batches", "must be at least 1");
        }
        check_checks(&self.checks, problems);
        self.check_secrets(problems);
        if self.pipeline.batch_size == 0 {
            problems.add("pipeline.batch_size", "must be at least 1");
        }
        let source = &self.source;
        let database = source.format == SourceFormat::Postgres;
        if database {
            check_postgres_source(problems, source, purpose);
        } else {
            for (key, set) in [
                ("source.connection", source.connection.is_some()),
                ("source.table", source.table.is_some()),
                ("source.query", source.query.is_some()),
                ("source.incremental_by", source.incremental_by.is_some()),
            ] {
                if set {
                    problems.add(key, "is only used with format = \"postgres\"");
                }
            }
        }
        let stream = source.format == SourceFormat::Nats;
        match (&source.nats, stream) {
            (Some(settings), true) => check_nats_source(problems, settings),
            (None, true) => problems.add(
                "source.nats",
                "missing: [source.nats] with the `stream` and durable `consumer` to read",
            ),
            (Some(_), false) => problems.add("source.nats", "is only used with format = \"nats\""),
            (None, false) => {}
        }
        if stream {
            if purpose == Purpose::Run {
                problems.add(
                    "source.format",
                    "a NATS stream never ends; serve the pipeline with weir serve (weir run reads files and tables)",
                );
            }
            if source.schema.is_none() {
                problems.add(
                    "source.schema",
                    "missing: a NATS source needs its records' schema declared",
                );
            }
            if !source.path.is_empty() {
                problems.add(
                    "source.path",
                    "a NATS source reads a stream, not a path; remove `path`",
                );
            }
        }
        let files_needed =
            !database && !stream && (purpose == Purpose::Run || source.schema.is_none());
        if source.path.is_empty() && files_needed {
            problems.add(
                "source.path",
                match purpose {
                    Purpose::Run => "missing: the file or glob to read",
                    Purpose::Serve => {
                        "missing: weir serve needs a sample file to infer the schema from, or a declared `schema`"
                    }
                },
            );
        } else if files_needed && let Err(e) = expand_paths(base_dir, &source.path) {
            problems.add("source.path", e);
        }
        if !single_ascii(&source.delimiter) {
            problems.add(
                "source.delimiter",
                format!("must be one ASCII character, got {:?}", source.delimiter),
            );
        }
        if !single_ascii(&source.quote) {
            problems.add(
                "source.quote",
                format!("must be one ASCII character, got {:?}", source.quote),
            );
        }
        if source.infer_rows == 0 && source.schema.is_none() {
            problems.add(
                "source.infer_rows",
                "must be at least 1 when no schema is declared",
            );
        }
        match (&source.format, &source.extract) {
            (SourceFormat::Extract, None) => problems.add(
                "source.extract",
                "format = \"extract\" needs a [source.extract] table naming the plugin",
            ),
            (SourceFormat::Extract, Some(extract)) => {
                check_limits(problems, "source.extract", &extract.limits());
                if extract.max_file_bytes == 0 {
                    problems.add("source.extract.max_file_bytes", "must be at least 1");
                }
                if let Err(e) = extract.capabilities.resolved(base_dir).check() {
                    problems.add("source.extract.capabilities", format!("{e:#}"));
                }
            }
            (_, Some(_)) => {
                problems.add("source.extract", "is only used with format = \"extract\"")
            }
            (_, None) => {}
        }
        for (i, column) in source.schema.iter().flatten().enumerate() {
            if parse_data_type(&column.data_type).is_none() {
                problems.add(
                    format!("source.schema[{i}].type"),
                    format!(
                        "unknown type `{}`; use boolean, int64, float64, utf8, binary, date32 or timestamp",
                        column.data_type
                    ),
                );
            }
            if let Some(format) = &column.format {
                let data_type = parse_data_type(&column.data_type);
                if !matches!(
                    data_type,
                    None | Some(
                        arrow::datatypes::DataType::Date32
                            | arrow::datatypes::DataType::Timestamp(..)
                    )
                ) {
                    problems.add(
                        format!("source.schema[{i}].format"),
                        format!(
                            "a format applies to date32 and timestamp columns, not {}",
                            column.data_type
                        ),
                    );
                } else if !is_valid_date_format(format) {
                    problems.add(
                        format!("source.schema[{i}].format"),
                        format!("`{format}` is not a strftime format chrono understands (e.g. \"%Y/%m/%d\")"),
                    );
                }
            }
        }
        let mut names = std::collections::HashSet::new();
        for (i, stage) in self.stages.iter().enumerate() {
            let key = |k: &str| format!("stages[{i}].{k}");
            if stage.name.trim().is_empty() {
                problems.add(key("name"), "must not be empty");
            } else if stage.name.starts_with('@') {
                problems.add(
                    key("name"),
                    "must not start with `@` (weir's own state namespaces do)",
                );
            } else if !names.insert(stage.name.as_str()) {
                problems.add(
                    key("name"),
                    format!(
                        "`{}` is used by an earlier stage; names must be unique",
                        stage.name
                    ),
                );
            }
            if stage.kind == PluginKind::Extract {
                problems.add(
                    key("kind"),
                    "extract plugins read files, so they belong in [source] (format = \"extract\" with [source.extract]), not in a stage",
                );
            }
            check_limits(problems, &format!("stages[{i}]"), &stage.limits());
            if stage.capabilities.http.is_some() {
                problems.add(
                    key("capabilities.http"),
                    "outbound HTTP is granted only to extract plugins, under [source.extract.capabilities.http]",
                );
            } else if let Err(e) = stage.capabilities.resolved(base_dir).check() {
                problems.add(key("capabilities.read_dirs"), format!("{e:#}"));
            }
            if stage.breaker.backoff_ms == 0 {
                problems.add(key("breaker.backoff_ms"), "must be at least 1");
            }
            if stage.breaker.max_backoff_ms < stage.breaker.backoff_ms {
                problems.add(
                    key("breaker.max_backoff_ms"),
                    format!(
                        "must be at least breaker.backoff_ms = {}",
                        stage.breaker.backoff_ms
                    ),
                );
            }
            if stage.config.contains_key("tables") && !stage.tables.is_empty() {
                problems.add(
                    key("config.tables"),
                    "is reserved for the reference tables given in `tables`",
                );
            }
            for (name, path) in &stage.tables {
                if let Err(e) = expand_paths(base_dir, path) {
                    problems.add(format!("stages[{i}].tables.{name}"), e);
                }
            }
        }
        self.check_operators(problems, base_dir, purpose, names);
        let sink = &self.sink;
        if sink.format == SinkFormat::Postgres {
            self.check_postgres_sink(problems, purpose);
            return;
        }
        if sink.format == SinkFormat::Nats {
            if self.source.format != SourceFormat::Nats {
                problems.add(
                    "sink.format",
                    "a NATS sink derives each message id from the source's stream sequence, so its source must be format = \"nats\"",
                );
            }
            match &sink.nats {
                None => problems.add(
                    "sink.nats",
                    "missing: [sink.nats] with the `subject` to publish to",
                ),
                Some(settings) => {
                    if let Err(e) = crate::nats::subject::SubjectTemplate::parse(&settings.subject)
                    {
                        problems.add("sink.nats.subject", format!("{e:#}"));
                    }
                    if settings.servers.is_empty() {
                        problems.add("sink.nats.servers", "must name at least one server");
                    }
                }
            }
            if !sink.path.is_empty() {
                problems.add(
                    "sink.path",
                    "a NATS sink publishes to a subject, not a path; remove `path`",
                );
            }
            return;
        }
        if sink.nats.is_some() {
            problems.add("sink.nats", "is only used with format = \"nats\"");
        }
        if sink.path.is_empty() {
            problems.add("sink.path", "missing: the output file or directory");
        }
        for (key, set) in [
            ("sink.connection", sink.connection.is_some()),
            ("sink.table", sink.table.is_some()),
            ("sink.key", !sink.key.is_empty()),
            ("sink.create", sink.create),
        ] {
            if set {
                problems.add(key, "is only used with format = \"postgres\"");
            }
        }
        if matches!(
            sink.mode,
            Some(WriteMode::Append | WriteMode::Upsert | WriteMode::Replace)
        ) {
            problems.add(
                "sink.mode",
                "a file sink's mode is error_if_exists or overwrite (append, upsert and replace are for format = \"postgres\")",
            );
        }
        if !sink.partition_by.is_empty() && sink.format != SinkFormat::Parquet {
            problems.add("sink.partition_by", "only parquet sinks can be partitioned");
        }
        if !["snappy", "zstd", "none"].contains(&sink.compression.as_str()) {
            problems.add(
                "sink.compression",
                format!("`{}` is not one of snappy, zstd, none", sink.compression),
            );
        }
        let sink_path = base_dir.join(&sink.path);
        // weir serve appends parts to a directory; `mode` is for weir run.
        // An interrupted checkpointed run may have published already; its
        // resume decides.
        let resumable = self.pipeline.checkpoint
            && sink.checkpoint_dir(base_dir).join(CHECKPOINT_FILE).exists();
        if purpose == Purpose::Run
            && sink.write_mode() == WriteMode::ErrorIfExists
            && sink_path.exists()
            && !resumable
        {
            problems.add(
                "sink.path",
                format!(
                    "{} exists; remove it or set mode = \"overwrite\"",
                    sink_path.display()
                ),
            );
        }
        if base_dir.join(&self.quarantine.path) == sink_path {
            problems.add("quarantine.path", "must differ from sink.path");
        }
    }
}

impl PipelineConfig {
    /// The checks of a `format = "postgres"` sink.
    fn check_postgres_sink(&self, problems: &mut Problems, purpose: Purpose) {
        let sink = &self.sink;
        if purpose == Purpose::Serve {
            problems.add(
                "sink.format",
                "weir serve does not load into PostgreSQL yet; use weir run (or a file sink)",
            );
        }
        if !self.pipeline.checkpoint {
            problems.add(
                "pipeline.checkpoint",
                "a postgres sink loads epoch by epoch under the checkpoint protocol; remove checkpoint = false",
            );
        }
        if !sink.path.is_empty() {
            problems.add(
                "sink.path",
                "a postgres sink writes to `table`, not to a path; remove `path`",
            );
        }
        match sink.table.as_deref() {
            None => problems.add(
                "sink.table",
                "missing: the table to load, `name` or `schema.name`",
            ),
            Some(table) => {
                if let Err(e) = crate::postgres::TableName::parse(table) {
                    problems.add("sink.table", format!("{e:#}"));
                }
            }
        }
        if let Err(e) = crate::postgres::Target::new(sink.connection.as_deref()) {
            problems.add("sink.connection", format!("{e:#}"));
        }
        match sink.write_mode() {
            WriteMode::Append | WriteMode::Replace => {
                if !sink.key.is_empty() {
                    problems.add("sink.key", "is only used with mode = \"upsert\"");
                }
            }
            WriteMode::Upsert => {
                if sink.key.is_empty() {
                    problems.add(
                        "sink.key",
                        "missing: mode = \"upsert\" needs the key columns, e.g. key = [\"id\"]",
                    );
                }
            }
            WriteMode::ErrorIfExists | WriteMode::Overwrite => problems.add(
                "sink.mode",
                "a postgres sink's mode is append (default), upsert or replace",
            ),
        }
        if !sink.partition_by.is_empty() && sink.write_mode() != WriteMode::Replace {
            problems.add(
                "sink.partition_by",
                "a postgres sink uses partition_by only with mode = \"replace\" (the partitions the run replaces)",
            );
        }
        if sink.retry_budget_s == 0 {
            problems.add("sink.retry_budget_s", "must be at least 1");
        }
    }
}

/// The checks of `[source.nats]`.
fn check_nats_source(problems: &mut Problems, settings: &crate::nats::settings::SourceSettings) {
    for (key, value) in [
        ("source.nats.stream", &settings.stream),
        ("source.nats.consumer", &settings.consumer),
        ("source.nats.ledger_stream", &settings.ledger_stream),
    ] {
        if let Err(message) = check_nats_name(value) {
            problems.add(key, message);
        }
    }
    if settings.servers.is_empty() {
        problems.add("source.nats.servers", "must name at least one server");
    }
    if settings.ack_wait_s == 0 {
        problems.add("source.nats.ack_wait_s", "must be at least 1");
    }
    if settings.ledger_max_age_s < settings.ack_wait_s * 10 {
        problems.add(
            "source.nats.ledger_max_age_s",
            format!(
                "{} s is too short: ledger records must outlive redeliveries (at least 10 × ack_wait_s = {} s)",
                settings.ledger_max_age_s,
                settings.ack_wait_s * 10
            ),
        );
    }
}

/// Whether `name` can be a stream or consumer name (and a subject token).
fn check_nats_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| matches!(c, '.' | '*' | '>' | ' ' | '\t' | '/' | '\\') || c.is_control())
    {
        return Err(format!(
            "`{name}` holds {c:?}, which a JetStream name cannot"
        ));
    }
    Ok(())
}

/// The checks of a `format = "postgres"` source.
fn check_postgres_source(problems: &mut Problems, source: &SourceConfig, purpose: Purpose) {
    if purpose == Purpose::Serve {
        problems.add(
            "source.format",
            "weir serve takes records by request and drop directory; read PostgreSQL with weir run",
        );
    }
    if !source.path.is_empty() {
        problems.add(
            "source.path",
            "a postgres source reads `table` or `query`, not a path; remove `path`",
        );
    }
    match (&source.table, &source.query) {
        (None, None) => problems.add(
            "source.table",
            "missing: the table to read (`table = \"name\"`), or a `query`",
        ),
        (Some(_), Some(_)) => problems.add("source.query", "give `table` or `query`, not both"),
        (Some(table), None) => {
            if let Err(e) = crate::postgres::TableName::parse(table) {
                problems.add("source.table", format!("{e:#}"));
            }
        }
        (None, Some(query)) => {
            if query.trim().is_empty() {
                problems.add("source.query", "is empty");
            }
        }
    }
    if let Err(e) = crate::postgres::Target::new(source.connection.as_deref()) {
        problems.add("source.connection", format!("{e:#}"));
    }
    if source.schema.is_some() {
        problems.add(
            "source.schema",
            "a postgres source's schema is the table's or query's; remove `schema`",
        );
    }
    if source.retry_budget_s == 0 {
        problems.add("source.retry_budget_s", "must be at least 1");
    }
}

/// Records a problem for each limit of `limits` (under `prefix`) out of range.
fn check_limits(problems: &mut Problems, prefix: &str, limits: &Limits) {
    let key = |k: &str| format!("{prefix}.{k}");
    if limits.fuel_per_batch == 0 {
        problems.add(key("fuel_per_batch"), "must be at least 1");
    }
    if limits.timeout_ms == 0 {
        problems.add(key("timeout_ms"), "must be at least 1");
    }
    if limits.max_memory_bytes == 0 || limits.max_memory_bytes > MAX_MEMORY_CEILING_BYTES {
        problems.add(
            key("max_memory_bytes"),
            format!("must be between 1 and {MAX_MEMORY_CEILING_BYTES} (4 GiB)"),
        );
    }
    if limits.max_output_bytes == 0 {
        problems.add(key("max_output_bytes"), "must be at least 1");
    }
}

/// The dotted key whose value starts at byte `offset`, best effort: the
/// nearest `[table]` header above plus the `key =` on that line.
fn key_at(text: &str, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    let key = line
        .split('=')
        .next()
        .filter(|_| line.contains('='))
        .map(str::trim)
        .unwrap_or("");
    let table = before[..line_start]
        .lines()
        .rev()
        .find_map(|l| {
            let l = l.trim();
            l.starts_with('[')
                .then(|| l.trim_matches(|c| c == '[' || c == ']').to_string())
        })
        .unwrap_or_default();
    match (table.is_empty(), key.is_empty()) {
        (true, _) => key.to_string(),
        (false, true) => table,
        (false, false) => format!("{table}.{key}"),
    }
}

#[cfg(test)]
#[test]
fn deep_nesting_is_refused_before_parsing_and_strings_do_not_count() {
    let deep = format!("a = {}1{}\n", "[".repeat(200), "]".repeat(200));
    assert_eq!(nested_too_deep(&deep, 128), Some(1));
    let crash = format!("x = [\n{}", "[{`ne]\n".repeat(8000));
    assert!(nested_too_deep(&crash, 128).is_some());
    let fine = "[a]\n[[b]]\nc = [[1, 2], { d = \"[x]\" }] # [y]\n";
    assert_eq!(nested_too_deep(fine, 5), None);
    assert_eq!(nested_too_deep(fine, 4), Some(3));
    // A string or a comment holds no bracket, closed or not.
    let quoted = format!("x = '''{}\n", "[{`ne]\n".repeat(8000));
    assert_eq!(nested_too_deep(&quoted, 128), None);
    assert!(parse_toml::<toml::Table>(&quoted, Path::new("p.toml")).is_err());
    let closers_in_strings = format!("x = {}1\n", "[ \"]\", ".repeat(300));
    assert!(nested_too_deep(&closers_in_strings, 128).is_some());
    // Headers and dotted keys count each part; floats and dates are fine.
    let dotted = "[a.b.c]\nd.e = { f = [1.5, 2.5] }\n";
    assert_eq!(nested_too_deep(dotted, 7), Some(2));
    assert_eq!(nested_too_deep(dotted, 8), None);
    let floats = format!(
        "x = [{}]\nt = 1979-05-27T07:32:00.999Z\n",
        "1.5, ".repeat(1000)
    );
    assert_eq!(nested_too_deep(&floats, 128), None);
    let error = parse_toml::<toml::Table>(&crash, Path::new("p.toml")).unwrap_err();
    assert!(
        error.to_string().contains("nested more than 128"),
        "{error}"
    );
}

#[cfg(test)]
#[test]
fn deep_dotted_keys_in_nested_inline_tables_do_not_overflow() {
    // toml refuses more than 80 brackets, or 80 parts in one key, but not
    // 80 x 79 levels of tables made of both.
    let key = vec!["k"; 79].join(".");
    let deep = format!(
        "x = {}1{}\n",
        format!("{{ {key} = ").repeat(80),
        "}".repeat(80)
    );
    let error = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || parse_toml::<toml::Table>(&deep, Path::new("p.toml")).unwrap_err())
        .unwrap()
        .join()
        .unwrap();
    assert!(error.to_string().contains("nested"), "{error}");
    // Fewer brackets (64) than toml's own limit, each opened by a 63-part
    // key: about 4,000 levels.
    let key = vec!["k"; 63].join(".");
    let deep = format!(
        "x = {}1{}\n",
        format!("{{ {key} = ").repeat(64),
        "}".repeat(64)
    );
    assert_eq!(nested_too_deep(&deep, MAX_TOML_NESTING), Some(1));
    let headers = format!("[[{}]]\n", vec!["a"; 70].join("."));
    assert_eq!(nested_too_deep(&headers, MAX_TOML_NESTING), Some(1));
    // From weir-fuzz in CI: mismatched closers (`]` inside `{`) close
    // nothing for the parser, and a run of them must not empty the count.
    let crash = format!(
        "config = {{ rules = [quarantine]\n{}{}\n{}",
        "[{`ne]\n".repeat(30),
        "]".repeat(60),
        "[{`ne]\n".repeat(8000)
    );
    assert!(nested_too_deep(&crash, MAX_TOML_NESTING).is_some());
    let error = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || parse_toml::<toml::Table>(&crash, Path::new("p.toml")).unwrap_err())
        .unwrap()
        .join()
        .unwrap();
    assert!(error.to_string().contains("nested"), "{error}");
}

fn location(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    span.map(|span| {
        let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
        format!(" (line {line})")
    })
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[source]
format = "csv"
path = "in.csv"

[sink]
format = "parquet"
path = "out"

[quarantine]
format = "jsonl"
path = "q.jsonl"
"#;

    #[test]
    fn minimal_file_parses_with_defaults() {
        let config = PipelineConfig::from_toml(MINIMAL, Path::new("p.toml")).unwrap();
        assert_eq!(config.pipeline.batch_size, 8192);
        assert_eq!(config.source.delimiter, ",");
        assert_eq!(config.sink.write_mode(), WriteMode::ErrorIfExists);
    }

    #[test]
    fn unknown_key_names_file_key_and_line() {
        let text = MINIMAL.replace("path = \"out\"", "path = \"out\"\ncompresion = \"zstd\"");
        let errors = PipelineConfig::from_toml(&text, Path::new("p.toml")).unwrap_err();
        let message = errors.to_string();
        assert!(message.contains("p.toml"), "{message}");
        assert!(message.contains("compresion"), "{message}");
        assert!(message.contains("line 9"), "{message}");
        assert_eq!(errors.0[0].key, "sink.compresion");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "{MINIMAL}\n[[stages]]\nname = \"a\"\nkind = \"transform\"\nplugin = \"builtin:select\"\ntimeout_ms = 0\n\n[[stages]]\nname = \"a\"\nkind = \"validate\"\nplugin = \"x.wasm\"\nmax_memory_bytes = 99999999999\n"
        )
        .replace("format = \"csv\"", "format = \"csv\"\ndelimiter = \";;\"");
        let config = PipelineConfig::from_toml(&text, Path::new("p.toml")).unwrap();
        let errors = config
            .validate(Path::new("p.toml"), dir.path())
            .unwrap_err();
        let keys: Vec<&str> = errors.0.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            vec![
                "source.path",
                "source.delimiter",
                "stages[0].timeout_ms",
                "stages[1].name",
                "stages[1].max_memory_bytes"
            ]
        );
    }
}
