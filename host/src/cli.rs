//! The `weir` command line, as a library function so that tests can run it
//! in-process ([`run`]); `src/main.rs` only calls it.
//!
//! Exit codes: [`EXIT_OK`] success; [`EXIT_RUN_FAILED`] the run failed (I/O,
//! or a stage with `on_error = "fail"`); [`EXIT_USAGE`] bad command line;
//! [`EXIT_INVALID`] the pipeline file or a plugin is invalid (nothing ran).

use std::ffi::OsString;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use crate::client::Client;
use crate::config::ConfigErrors;
use crate::pipeline::{Pipeline, RunOptions};
use crate::plugin::Plugin;
use crate::report::RunReport;
use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

/// weir: data pipelines whose logic lives in sandboxed WebAssembly components.
#[derive(Parser)]
#[command(version, about, propagate_version = true)]
struct Cli {
    /// Log filter (`warn`, `info`, `weir=debug`...); also `WEIR_LOG`.
    #[arg(long, global = true, env = "WEIR_LOG", default_value = "warn")]
    log: String,
    /// Write logs as JSON lines.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline file to completion.
    Run {
        /// The pipeline file (TOML).
        pipeline: PathBuf,
        /// Also write the run report (counts, lineage) as JSON here.
        #[arg(long)]
        report: Option<PathBuf>,
        /// Never draw the progress line.
        #[arg(long)]
        no_progress: bool,
        /// Reload plugin files that change during the run (batches already
        /// started finish on the version they started with).
        #[arg(long)]
        watch: bool,
        /// Discard the checkpoint of an interrupted run of this pipeline
        /// and start over. Without it, a run that was killed resumes after
        /// its last committed epoch (see docs/delivery.md).
        #[arg(long)]
        restart: bool,
        /// The partition to run, for a pipeline that uses `${partition}`
        /// (e.g. `2013-01-05`; see docs/backfill.md).
        #[arg(long)]
        partition: Option<String>,
    },
    /// Run a partitioned pipeline once per partition of a range, each
    /// run overwriting exactly its partition's output (docs/backfill.md).
    Backfill {
        /// The pipeline file (TOML); it must use `${partition}`.
        pipeline: PathBuf,
        /// First partition: a date (2013-01-01), month (2013-01) or
        /// date-time (2013-01-01T06:00).
        #[arg(long)]
        from: String,
        /// Last partition, included.
        #[arg(long)]
        to: String,
        /// Partitions run at once.
        #[arg(long, default_value_t = 2)]
        parallel: usize,
        /// Only the partitions whose newest recorded run did not succeed
        /// (failed, interrupted, or never run).
        #[arg(long)]
        only_failed: bool,
        /// Write the backfill's summary (one entry per partition) as JSON
        /// here.
        #[arg(long)]
        report: Option<PathBuf>,
        /// Never draw the progress bar.
        #[arg(long)]
        no_progress: bool,
    },
    /// Validate a pipeline file and its plugins without running.
    Check {
        /// The pipeline file (TOML).
        pipeline: PathBuf,
        /// The partition to check it for, for a pipeline that uses
        /// `${partition}`.
        #[arg(long)]
        partition: Option<String>,
    },
    /// Work with plugin components.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// Print a new random API token and the SHA-256 to put in the service
    /// file (`operator_token_sha256`, or a tenant's `tokens`). The token is
    /// shown once; weir stores only the hash. Clients send it as
    /// `Authorization: Bearer TOKEN` (the weir CLI reads `$WEIR_TOKEN`).
    Token,
    /// Serve the pipelines of a service file: HTTP ingest, drop
    /// directories, hot reload, admin API, /metrics. Stops on SIGTERM or
    /// Ctrl-C after writing everything it acknowledged.
    Serve {
        /// The service file (TOML); see docs/serve.md.
        service: PathBuf,
        /// Listen here instead of `[service] listen` (e.g. 127.0.0.1:0).
        #[arg(long)]
        listen: Option<String>,
    },
    /// Show a running service's pipelines: state, counts, rates.
    Status {
        /// Only this pipeline, in full (JSON).
        pipeline: Option<String>,
        #[command(flatten)]
        service: ServiceUrl,
    },
    /// Post a file's records to a running service and print the outcome.
    Post {
        /// Pipeline name.
        pipeline: String,
        /// A .csv, .jsonl/.ndjson, .json (array) or .parquet file.
        file: PathBuf,
        /// The request's Idempotency-Key. Default: a new random UUID. Give
        /// the same key to post again after an interrupted `weir post`:
        /// the service writes the records once.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Keep retrying (same key) on lost connections and 408/409/429/
        /// 5xx answers for this many seconds.
        #[arg(long, default_value_t = 60)]
        retry_for_s: u64,
        #[command(flatten)]
        service: ServiceUrl,
    },
    /// Stop a running pipeline taking records (requests get 503).
    Pause {
        /// Pipeline name.
        pipeline: String,
        #[command(flatten)]
        service: ServiceUrl,
    },
    /// Let a paused pipeline take records again.
    Resume {
        /// Pipeline name.
        pipeline: String,
        #[command(flatten)]
        service: ServiceUrl,
    },
    /// Read or replay a running service's quarantine.
    Quarantine {
        #[command(subcommand)]
        command: QuarantineCommand,
    },
    /// Inspect or reset the state of a pipeline's stateful operators
    /// (`[[operators]]`) kept between runs of `weir run`.
    State {
        #[command(subcommand)]
        command: StateCommand,
    },
    /// The run history of a pipeline's `weir run`s: what ran, when, with
    /// which counts, inputs, outputs and plugin versions.
    Runs {
        #[command(subcommand)]
        command: RunsCommand,
    },
    /// Print the first rows of a Parquet, JSON Lines or CSV output.
    Show {
        /// A file, or a directory of Parquet files (partitioned output).
        path: PathBuf,
        /// Rows to print.
        #[arg(long, short = 'n', default_value_t = 10)]
        limit: usize,
    },
}

/// Where the service is.
#[derive(clap::Args)]
struct ServiceUrl {
    /// Base URL of `weir serve`.
    #[arg(long, env = "WEIR_URL", default_value = crate::client::DEFAULT_URL)]
    url: String,
}

/// Which quarantined rows.
#[derive(clap::Args)]
struct QuarantineSelection {
    /// Pipeline name.
    pipeline: String,
    /// Only rows rejected by this stage (`source`: did not parse).
    #[arg(long)]
    stage: Option<String>,
    /// Only rows with this error kind (`validation`, `parse`, `trap`...).
    #[arg(long)]
    error_kind: Option<String>,
    /// Only rows that failed this rule id.
    #[arg(long)]
    rule: Option<String>,
    /// Only rows rejected by this plugin version (SHA-256 prefix).
    #[arg(long)]
    plugin_sha256: Option<String>,
    /// Only these row ids (PART:ROW), comma-separated.
    #[arg(long, value_delimiter = ',')]
    ids: Vec<String>,
    /// Only rows quarantined at or after this RFC 3339 date-time
    /// (2026-12-06T05:00:00Z).
    #[arg(long)]
    since: Option<String>,
    /// Only rows quarantined before this RFC 3339 date-time.
    #[arg(long)]
    until: Option<String>,
    /// Rows at most.
    #[arg(long)]
    limit: Option<usize>,
    #[command(flatten)]
    service: ServiceUrl,
}

impl QuarantineSelection {
    fn filter(&self) -> crate::serve::quarantine_log::QuarantineFilter {
        crate::serve::quarantine_log::QuarantineFilter {
            stage: self.stage.clone(),
            error_kind: self.error_kind.clone(),
            rule: self.rule.clone(),
            plugin_sha256: self.plugin_sha256.clone(),
            ids: (!self.ids.is_empty()).then(|| self.ids.clone()),
            since: self.since.clone(),
            until: self.until.clone(),
            limit: self.limit,
            ..Default::default()
        }
    }
}

#[derive(Subcommand)]
enum QuarantineCommand {
    /// List quarantined rows (JSON lines, oldest first).
    Ls {
        #[command(flatten)]
        selection: QuarantineSelection,
    },
    /// Re-submit quarantined rows through the current plugins (each row at
    /// most once).
    Replay {
        #[command(flatten)]
        selection: QuarantineSelection,
    },
}

#[derive(Subcommand)]
enum StateCommand {
    /// Keys and bytes of each operator's and each stateful stage's state
    /// (JSON).
    Inspect {
        /// The pipeline file.
        pipeline: PathBuf,
    },
    /// Drop the state, so that the next run starts without it (every
    /// operator's and stage's, or one's with --operator/--stage). Do not
    /// run while a run of the pipeline is in progress: the store is locked
    /// then.
    Reset {
        /// The pipeline file.
        pipeline: PathBuf,
        /// Only the state of this operator or stage.
        #[arg(long, alias = "stage")]
        operator: Option<String>,
    },
}

#[derive(Subcommand)]
enum RunsCommand {
    /// The newest runs, newest first: id, status, start, duration, counts.
    Ls {
        /// The pipeline file.
        pipeline: PathBuf,
        /// How many runs.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Print JSON (one array) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One run with its whole report (stages, inputs, outputs, quarantine
    /// reasons, plugin versions), as JSON.
    Show {
        /// The pipeline file.
        pipeline: PathBuf,
        /// The run id, or its first characters (at least 4).
        run_id: String,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Create a plugin project that builds as is (a small working example).
    New {
        /// Where to create the project (like `cargo new`): `NAME` or a path
        /// such as `../plugins/late-only`; the plugin is named after its
        /// last component.
        name: PathBuf,
        /// Language to write it in.
        #[arg(long, value_enum)]
        lang: crate::authoring::Language,
        /// Which kind of plugin.
        #[arg(long, value_enum)]
        kind: crate::plugin::PluginKind,
        /// Create the project under this directory.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Rust only: the `weir-sdk` crate's directory (default:
        /// $WEIR_SDK_PATH, else the sdk/ of the checkout weir was built from).
        #[arg(long)]
        sdk_path: Option<PathBuf>,
    },
    /// Build a plugin project (its weir-plugin.toml) into a component,
    /// with cargo, componentize-py or componentize-js.
    Build {
        /// The project directory.
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Write the component here instead of DIR/dist/NAME.wasm.
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
    /// Show a component's world, exports, imports, size and hash.
    Inspect {
        /// The component file (`.wasm`) or `builtin:NAME`.
        plugin: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List a running service's plugins: current hash, history, rejections.
    Ls {
        #[command(flatten)]
        service: ServiceUrl,
    },
    /// Make a running service re-read a stage's plugin file now.
    Reload {
        /// Pipeline name.
        pipeline: String,
        /// Stage name.
        stage: String,
        #[command(flatten)]
        service: ServiceUrl,
    },
    /// Make a running service serve a stage's previous plugin version.
    Rollback {
        /// Pipeline name.
        pipeline: String,
        /// Stage name.
        stage: String,
        #[command(flatten)]
        service: ServiceUrl,
    },
}

/// `println!` that returns the I/O error (a closed pipe) instead of
/// panicking, and redacts secrets ([`crate::secrets::redact`]).
macro_rules! say {
    ($($arg:tt)*) => {
        writeln!(
            std::io::stdout().lock(),
            "{}",
            crate::secrets::redact(&format!($($arg)*))
        )
    };
}

/// Exit code: success.
pub const EXIT_OK: u8 = 0;
/// Exit code: the run failed; nothing was committed.
pub const EXIT_RUN_FAILED: u8 = 1;
/// Exit code: the command line is wrong (clap's convention).
pub const EXIT_USAGE: u8 = 2;
/// Exit code: the pipeline file or a plugin is invalid; nothing ran.
pub const EXIT_INVALID: u8 = 3;

/// Runs the `weir` command line with `args` (the first is the program name)
/// and returns the process exit code. Errors are printed to stderr.
pub fn run(args: impl IntoIterator<Item = impl Into<OsString> + Clone>) -> u8 {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            return if error.use_stderr() {
                EXIT_USAGE
            } else {
                EXIT_OK
            };
        }
    };
    init_logging(&cli.log, cli.log_json);
    match dispatch(cli.command) {
        Ok(()) => EXIT_OK,
        // `weir … | head` closing stdout early is not a failure.
        Err(error) if is_broken_pipe(&error) => EXIT_OK,
        Err(error) => {
            if let Some(invalid) = error.downcast_ref::<ConfigErrors>() {
                eprint!("error: {}", crate::secrets::redact(&invalid.to_string()));
                return EXIT_INVALID;
            }
            eprintln!("error: {}", crate::secrets::redact(&format!("{error:#}")));
            EXIT_RUN_FAILED
        }
    }
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn init_logging(filter: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(crate::secrets::RedactingStderr);
    // A second call (tests running the CLI in-process) keeps the first.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

fn dispatch(command: Command) -> Result<()> {
    match command {
        Command::Run {
            pipeline,
            report,
            no_progress,
            watch,
            restart,
            partition,
        } => run_pipeline(
            &pipeline,
            partition.as_deref(),
            report.as_deref(),
            !no_progress,
            watch,
            restart,
        ),
        Command::Backfill {
            pipeline,
            from,
            to,
            parallel,
            only_failed,
            report,
            no_progress,
        } => {
            let options = crate::backfill::BackfillOptions {
                from,
                to,
                parallel,
                only_failed,
                progress: !no_progress && std::io::stderr().is_terminal(),
            };
            let summary = crate::backfill::backfill(&pipeline, &options)?;
            if let Some(path) = report {
                std::fs::write(&path, serde_json::to_string_pretty(&summary)? + "\n")
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            let failed = summary.failed();
            say!(
                "{}: {} partitions, {} succeeded, {} failed, {} skipped, {} rows written in {:.1} s",
                pipeline.display(),
                summary.partitions.len(),
                summary.partitions.len() - failed - summary.skipped(),
                failed,
                summary.skipped(),
                summary.written(),
                summary.duration_ms as f64 / 1000.0
            )?;
            if failed > 0 {
                anyhow::bail!(
                    "{failed} partitions failed; run again with --only-failed to re-run only them"
                );
            }
            Ok(())
        }
        Command::Check {
            pipeline,
            partition,
        } => {
            let loaded = Pipeline::build(
                crate::config::PipelineConfig::from_file_partition(
                    &pipeline,
                    partition.as_deref(),
                )?,
                &pipeline,
            )?;
            say!(
                "{}: ok ({} stages)",
                pipeline.display(),
                loaded.stages().len()
            )?;
            for stage in loaded.stages() {
                say!(
                    "  {} ({}): {} sha256:{}",
                    stage.name,
                    stage.kind,
                    stage.reference,
                    &stage.plugin().sha256()[..12]
                )?;
            }
            Ok(())
        }
        Command::Plugin { command } => plugin_command(command),
        Command::Token => {
            let (token, sha256) = crate::serve::auth::new_token()?;
            println!("token:  {token}");
            println!("sha256: {sha256}");
            Ok(())
        }
        Command::Serve { service, listen } => crate::serve::serve_until_signal(&service, listen),
        Command::Status { pipeline, service } => status(&service.url, pipeline.as_deref()),
        Command::Post {
            pipeline,
            file,
            idempotency_key,
            retry_for_s,
            service,
        } => {
            let key = idempotency_key.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
            // On stderr, so that an interrupted post can be sent again under
            // the same key (`--idempotency-key`) without writing twice.
            eprintln!("idempotency-key: {key}");
            print_json(&Client::new(&service.url)?.post_file_once(
                &pipeline,
                &file,
                &key,
                std::time::Duration::from_secs(retry_for_s),
            )?)
        }
        Command::Pause { pipeline, service } => print_json(
            &Client::new(&service.url)?.post(&format!("/v1/pipelines/{pipeline}/pause"), None)?,
        ),
        Command::Resume { pipeline, service } => print_json(
            &Client::new(&service.url)?.post(&format!("/v1/pipelines/{pipeline}/resume"), None)?,
        ),
        Command::Quarantine { command } => quarantine_command(command),
        Command::Show { path, limit } => show(&path, limit),
        Command::State { command } => state_command(command),
        Command::Runs { command } => runs_command(command),
    }
}

fn run_pipeline(
    file: &Path,
    partition: Option<&str>,
    report_path: Option<&Path>,
    progress: bool,
    watch: bool,
    restart: bool,
) -> Result<()> {
    let config = crate::config::PipelineConfig::from_file_partition(file, partition)?;
    let pipeline = Pipeline::build(config, file)?;
    let options = RunOptions {
        progress: progress && std::io::stderr().is_terminal(),
        restart,
        trigger: crate::history::Trigger::Run,
    };
    // Watching stops when the guard drops, after the run.
    let _watcher = if watch {
        pipeline.watch_plugins(crate::plugin::DEFAULT_DEBOUNCE)?
    } else {
        None
    };
    let report = pipeline
        .run(&options)
        .with_context(|| format!("pipeline {} failed; nothing was committed", file.display()))?;
    print_summary(&report)?;
    if let Some(path) = report_path {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, crate::secrets::redact(&json).into_owned() + "\n")
            .with_context(|| format!("writing the report to {}", path.display()))?;
        say!("report: {}", path.display())?;
    }
    Ok(())
}

fn print_summary(report: &RunReport) -> std::io::Result<()> {
    let seconds = report.duration_ms as f64 / 1000.0;
    let r = &report.records;
    say!(
        "{}: {} read → {} written, {} quarantined, {} filtered in {:.2} s ({:.0} records/s)",
        report.pipeline,
        r.read,
        r.written,
        r.quarantined,
        r.filtered,
        seconds,
        r.read as f64 / seconds.max(1e-3)
    )?;
    for stage in &report.stages {
        let errors = if stage.errors.is_empty() {
            String::new()
        } else {
            format!(", failed calls {:?}", stage.errors)
        };
        say!(
            "  {:<12} {:<16} in {:>8}  out {:>8}  quarantined {:>7}  filtered {:>7}{errors}",
            stage.name,
            stage.plugin,
            stage.records_in,
            stage.records_out,
            stage.quarantined,
            stage.filtered
        )?;
    }
    if let Some(account) = &report.checkpoint {
        let recovery = &account.recovery;
        if let Some(epoch) = recovery.resumed_after_epoch {
            say!(
                "  resumed an interrupted run after epoch {epoch} (file #{} of the source, after record {}); recovery took {} ms, finished {} commit(s), rolled back {} epoch(s)",
                recovery.position.file + 1,
                recovery.position.records,
                recovery.recovery_ms,
                recovery.commits_finished,
                recovery.epochs_rolled_back
            )?;
            if let Some(epoch) = recovery.sink_committed_epoch {
                say!(
                    "  the sink had committed epoch {epoch} before the crash: it was replayed to the same position and not loaded again"
                )?;
            }
        }
        say!(
            "  checkpoint: {} epoch(s) committed, {} ms committing",
            account.epochs,
            account.commit_ms
        )?;
    }
    for operator in &report.operators {
        if operator.kind.is_none() {
            say!(
                "  stage {} keyed state: {} keys, {} bytes",
                operator.name,
                operator.state_keys,
                operator.state_bytes
            )?;
            continue;
        }
        let mut extra = String::new();
        if operator.dropped > 0 {
            extra.push_str(&format!(", {} duplicates dropped", operator.dropped));
        }
        if operator.late > 0 {
            extra.push_str(&format!(", {} late", operator.late));
        }
        say!(
            "  operator {}: {} in → {} out, {} quarantined{extra}; state {} keys, {} bytes",
            operator.name,
            operator.records_in,
            operator.records_out,
            operator.quarantined,
            operator.state_keys,
            operator.state_bytes
        )?;
    }
    if let Some(http) = &report.source_http {
        say!(
            "  source http: {} requests, {} attempts ({} retries), {} denied by allow_hosts, {} refused by an open circuit",
            http.requests,
            http.attempts,
            http.retries,
            http.denied,
            http.rested
        )?;
    }
    let output = match report.outputs.as_slice() {
        [] => "no file (no row to partition)".to_string(),
        [only] => only.path.display().to_string(),
        [first, ..] => format!(
            "{} files (first: {})",
            report.outputs.len(),
            first.path.display()
        ),
    };
    say!(
        "output: {output}; quarantine: {} ({} rows)",
        report.quarantine.path.display(),
        report.quarantine.rows
    )?;
    if let Some(warning) = report.nothing_written_warning() {
        eprintln!("warning: {warning}");
    }
    Ok(())
}

fn print_json(value: &serde_json::Value) -> Result<()> {
    say!("{}", serde_json::to_string_pretty(value)?)?;
    Ok(())
}

fn status(url: &str, pipeline: Option<&str>) -> Result<()> {
    let client = Client::new(url)?;
    if let Some(name) = pipeline {
        return print_json(&client.get(&format!("/v1/pipelines/{name}"))?);
    }
    let answer = client.get("/v1/pipelines")?;
    say!(
        "{:<16} {:<9} {:>10} {:>10} {:>11} {:>9} {:>8} {:>10}",
        "PIPELINE",
        "STATE",
        "RECEIVED",
        "WRITTEN",
        "QUARANTINED",
        "FILTERED",
        "QUEUED",
        "RECORDS/S"
    )?;
    for p in answer["pipelines"].as_array().into_iter().flatten() {
        say!(
            "{:<16} {:<9} {:>10} {:>10} {:>11} {:>9} {:>8} {:>10.0}",
            p["name"].as_str().unwrap_or_default(),
            p["state"].as_str().unwrap_or_default(),
            p["received"].as_u64().unwrap_or_default(),
            p["written"].as_u64().unwrap_or_default(),
            p["quarantined"].as_u64().unwrap_or_default(),
            p["filtered"].as_u64().unwrap_or_default(),
            p["queued_records"].as_u64().unwrap_or_default(),
            p["records_per_second"].as_f64().unwrap_or_default()
        )?;
    }
    Ok(())
}

/// The first 12 hex digits of a SHA-256 (all of it when shorter, so a
/// server answer without one prints empty rather than panicking).
fn short_sha(sha256: &str) -> &str {
    sha256.get(..12).unwrap_or(sha256)
}

fn build_plugin(dir: &Path, out: Option<&Path>) -> Result<()> {
    let manifest = crate::authoring::Manifest::read(dir)?;
    let spinner = if std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new_spinner().with_message(format!(
            "building {} ({} {}) …",
            manifest.plugin.name, manifest.plugin.language, manifest.plugin.kind
        ));
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        Some(bar)
    } else {
        None
    };
    let options = crate::authoring::toolchain::BuildOptions {
        out: out.map(Path::to_path_buf),
        cargo_target_dir: None,
    };
    let built = crate::authoring::toolchain::build(dir, &options);
    if let Some(bar) = spinner {
        bar.finish_and_clear();
    }
    let built = built?;
    say!(
        "built {} ({} {} plugin, {:.1} MB, sha256:{}) with {} in {:.1} s; compiled for this machine in {:.1} s (cached for later runs)",
        built.path.display(),
        built.language,
        built.kind,
        built.size_bytes as f64 / 1e6,
        short_sha(&built.sha256),
        built.tool,
        built.build_time.as_secs_f64(),
        built.compile_time.as_secs_f64()
    )?;
    Ok(())
}

fn plugin_command(command: PluginCommand) -> Result<()> {
    match command {
        PluginCommand::Inspect { plugin, json } => inspect(&plugin, json),
        PluginCommand::New {
            name,
            lang,
            kind,
            dir,
            sdk_path,
        } => {
            // `weir plugin new ../plugins/late-only`: the last component is
            // the name, the rest joins `--dir`.
            let plugin_name = name
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "`{}` does not end in a plugin name; give a path like ../plugins/my-plugin",
                        name.display()
                    )
                })?;
            let parent = match name.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => dir.join(parent),
                _ => dir,
            };
            let options = crate::authoring::scaffold::NewOptions {
                name: plugin_name,
                language: lang,
                kind,
                parent,
                sdk_path,
            };
            let project = crate::authoring::scaffold::create(&options)?;
            say!(
                "created {} ({} {} plugin); build it with: weir plugin build {}",
                project.display(),
                options.language,
                options.kind,
                project.display()
            )?;
            Ok(())
        }
        PluginCommand::Build { dir, out } => build_plugin(&dir, out.as_deref()),
        PluginCommand::Ls { service } => {
            let answer = Client::new(&service.url)?.get("/v1/plugins")?;
            for p in answer["plugins"].as_array().into_iter().flatten() {
                let rejection = p["last_rejection"]["error"]
                    .as_str()
                    .map(|e| format!("  last rejected: {e}"))
                    .unwrap_or_default();
                say!(
                    "{}/{} ({}) {} sha256:{} reloads {} rejected {}{rejection}",
                    p["pipeline"].as_str().unwrap_or_default(),
                    p["stage"].as_str().unwrap_or_default(),
                    p["kind"].as_str().unwrap_or_default(),
                    p["plugin"].as_str().unwrap_or_default(),
                    short_sha(p["current_sha256"].as_str().unwrap_or_default()),
                    p["reloads"],
                    p["rejections"]
                )?;
            }
            Ok(())
        }
        PluginCommand::Reload {
            pipeline,
            stage,
            service,
        } => print_json(&Client::new(&service.url)?.post(
            &format!("/v1/pipelines/{pipeline}/stages/{stage}/reload"),
            None,
        )?),
        PluginCommand::Rollback {
            pipeline,
            stage,
            service,
        } => print_json(&Client::new(&service.url)?.post(
            &format!("/v1/pipelines/{pipeline}/stages/{stage}/rollback"),
            None,
        )?),
    }
}

fn state_command(command: StateCommand) -> Result<()> {
    let (StateCommand::Inspect { pipeline } | StateCommand::Reset { pipeline, .. }) = &command;
    let pipeline = pipeline.clone();
    let config = crate::config::PipelineConfig::from_file(&pipeline)?;
    let base_dir = pipeline.parent().map(Path::to_path_buf).unwrap_or_default();
    let store = config.state_store(&base_dir);
    match command {
        StateCommand::Inspect { .. } => {
            let sizes = crate::state::sizes_at(&store)?;
            print_json(&serde_json::json!({
                "store": store,
                "operators": config.operators.iter().map(|o| {
                    let size = sizes.get(&o.name).copied().unwrap_or_default();
                    serde_json::json!({"name": o.name, "kind": o.kind, "keys": size.keys, "bytes": size.bytes})
                }).collect::<Vec<_>>(),
                // A stage has a namespace once its plugin stored something.
                "stages": config.stages.iter().filter_map(|s| {
                    let size = sizes.get(&s.name)?;
                    Some(serde_json::json!({"name": s.name, "keys": size.keys, "bytes": size.bytes}))
                }).collect::<Vec<_>>(),
            }))
        }
        StateCommand::Reset { operator, .. } => {
            let names = || {
                config
                    .operators
                    .iter()
                    .map(|o| o.name.as_str())
                    .chain(config.stages.iter().map(|s| s.name.as_str()))
            };
            if let Some(name) = &operator
                && !names().any(|n| n == name)
            {
                anyhow::bail!(
                    "{} has no operator or stage `{name}` (there are: {})",
                    pipeline.display(),
                    names().collect::<Vec<_>>().join(", ")
                );
            }
            if !store.exists() {
                say!("{}: no state yet", store.display())?;
                return Ok(());
            }
            let dropped = crate::state::StateStore::open(&store)?.reset(operator.as_deref())?;
            say!(
                "{}: dropped the state of {}",
                store.display(),
                if dropped.is_empty() {
                    "nothing (it was empty)".to_string()
                } else {
                    dropped.join(", ")
                }
            )?;
            Ok(())
        }
    }
}

fn runs_command(command: RunsCommand) -> Result<()> {
    let (RunsCommand::Ls { pipeline, .. } | RunsCommand::Show { pipeline, .. }) = &command;
    let path = crate::config::history_file_for(pipeline)?;
    if !path.exists() {
        anyhow::bail!(
            "{}: no run history yet at {} (runs are recorded by `weir run` unless [history] enabled = false)",
            pipeline.display(),
            path.display()
        );
    }
    let history = crate::history::History::open(&path)?;
    match command {
        RunsCommand::Ls { limit, json, .. } => {
            let runs = history.list(limit)?;
            if json {
                return print_json(&serde_json::to_value(&runs)?);
            }
            say!(
                "{:<36}  {:<9}  {:<9}  {:<13}  {:<20}  {:>9}  {:>10}  {:>10}  {:>11}",
                "RUN",
                "KIND",
                "STATUS",
                "PARTITION",
                "STARTED",
                "SECONDS",
                "READ",
                "WRITTEN",
                "QUARANTINED"
            )?;
            for run in runs {
                let seconds = run
                    .duration_ms
                    .map_or("-".to_string(), |ms| format!("{:.1}", ms as f64 / 1000.0));
                say!(
                    "{:<36}  {:<9}  {:<9}  {:<13}  {:<20}  {:>9}  {:>10}  {:>10}  {:>11}",
                    run.run_id,
                    run.kind,
                    run.status,
                    run.partition.as_deref().unwrap_or("-"),
                    run.started_at,
                    seconds,
                    run.read,
                    run.written,
                    run.quarantined
                )?;
                if let Some(error) = &run.error {
                    say!("  error: {}", error.lines().next().unwrap_or_default())?;
                }
            }
            Ok(())
        }
        RunsCommand::Show { run_id, .. } => match history.show(&run_id)? {
            Some(run) => print_json(&serde_json::to_value(&run)?),
            None => anyhow::bail!("no run `{run_id}` in {}", path.display()),
        },
    }
}

fn quarantine_command(command: QuarantineCommand) -> Result<()> {
    match command {
        QuarantineCommand::Ls { selection } => {
            let filter = serde_json::to_value(selection.filter())?;
            let query: Vec<(String, String)> = filter
                .as_object()
                .expect("a struct")
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| {
                    let text = match v {
                        serde_json::Value::String(s) => s.clone(),
                        serde_json::Value::Array(ids) => ids
                            .iter()
                            .filter_map(|i| i.as_str())
                            .collect::<Vec<_>>()
                            .join(","),
                        other => other.to_string(),
                    };
                    (k.clone(), text)
                })
                .collect();
            let query = query
                .iter()
                .map(|(k, v)| format!("{k}={}", crate::client::url_escape(v)))
                .collect::<Vec<_>>()
                .join("&");
            let client = Client::new(&selection.service.url)?;
            let answer = client.get(&format!(
                "/v1/pipelines/{}/quarantine?{query}",
                selection.pipeline
            ))?;
            for row in answer["rows"].as_array().into_iter().flatten() {
                say!("{row}")?;
            }
            eprintln!("{} matching row(s)", answer["matched"]);
            Ok(())
        }
        QuarantineCommand::Replay { selection } => {
            let filter = serde_json::to_value(selection.filter())?;
            print_json(&Client::new(&selection.service.url)?.post(
                &format!("/v1/pipelines/{}/quarantine/replay", selection.pipeline),
                Some(&filter),
            )?)
        }
    }
}

fn inspect(reference: &str, json: bool) -> Result<()> {
    let (name, bytes) = crate::plugin::read_plugin_bytes(reference, Path::new("."))?;
    let inspection = Plugin::inspect(&bytes)
        .with_context(|| format!("{name} is not a valid WebAssembly component"))?;
    if json {
        say!("{}", serde_json::to_string_pretty(&inspection)?)?;
        return Ok(());
    }
    say!("plugin:  {name}")?;
    say!(
        "world:   {}",
        match (inspection.world, inspection.kind, inspection.contract) {
            (Some(world), Some(kind), Some(contract)) => {
                format!("weir:plugin/{world}@{contract} ({kind} plugin)")
            }
            _ => "not a weir plugin".to_string(),
        }
    )?;
    say!("size:    {} bytes", inspection.size_bytes)?;
    say!("sha256:  {}", inspection.sha256)?;
    say!("exports: {}", inspection.exports.join(", "))?;
    say!("imports:")?;
    for import in &inspection.imports {
        say!("  {import}")?;
    }
    Ok(())
}

/// Prints up to `limit` rows of `path`, one table per run of files sharing
/// a schema (a folder may mix outputs and quarantine files), naming the
/// files when there are several; nulls print as `NULL`, distinct from an
/// empty string.
fn show(path: &Path, limit: usize) -> Result<()> {
    let files = crate::source::read_output_files(path, limit)?;
    let mut groups: Vec<(Vec<PathBuf>, Vec<arrow::record_batch::RecordBatch>)> = Vec::new();
    // Same column names and types; nullability may differ (a partition
    // value read from a path is nullable only where it is null).
    let columns =
        |batch: &arrow::record_batch::RecordBatch| -> Vec<(String, arrow::datatypes::DataType)> {
            batch
                .schema()
                .fields()
                .iter()
                .map(|f| (f.name().clone(), f.data_type().clone()))
                .collect()
        };
    for (file, batches) in files {
        let shape = batches.first().map(columns);
        match groups.last_mut() {
            Some((names, group))
                if shape.is_none() || group.is_empty() || group.first().map(columns) == shape =>
            {
                names.push(file);
                group.extend(batches);
            }
            _ => groups.push((vec![file], batches)),
        }
    }
    // Batches of one group must share one schema to print as one table.
    for (_, group) in &mut groups {
        if let Some(first) = group.first() {
            let nullable: Vec<_> = first
                .schema()
                .fields()
                .iter()
                .map(|f| f.as_ref().clone().with_nullable(true))
                .collect();
            let schema = std::sync::Arc::new(arrow::datatypes::Schema::new(nullable));
            for batch in group.iter_mut() {
                *batch = arrow::record_batch::RecordBatch::try_new(
                    schema.clone(),
                    batch.columns().to_vec(),
                )?;
            }
        }
    }
    let options = arrow::util::display::FormatOptions::default().with_null("NULL");
    let several = groups.len() > 1;
    for (names, batches) in &groups {
        if several {
            let listed: Vec<String> = names.iter().map(|n| n.display().to_string()).collect();
            say!("{} file(s): {}", names.len(), listed.join(", "))?;
        }
        say!(
            "{}",
            arrow::util::pretty::pretty_format_batches_with_options(batches, &options)?
        )?;
    }
    Ok(())
}
