//! Backfills: one run of a partitioned pipeline ([`crate::partition`]) per
//! partition of a range, each overwriting exactly its own partition.
//!
//! Idempotence comes from the pipeline file: every partition must write
//! to its own place (`${partition}` in the sink's path and the
//! quarantine's path, or a PostgreSQL sink in `mode = "replace"` with
//! `partition_by`), checked before anything runs, and file sinks are run
//! in `overwrite` mode. A partition's run publishes its output atomically
//! (a rename, or one transaction), so running a backfill again replaces
//! each partition with an identical one instead of appending duplicates,
//! and a partition that failed left its old output as it was.
//!
//! Partitions run `parallel` at a time (each run also uses the
//! pipeline's `workers`), in order of the range. Each run is recorded in
//! the pipeline's run history with kind `backfill` and its partition, so
//! `--only-failed` can pick the partitions whose newest run did not
//! succeed. A run killed mid-way resumes from its checkpoint the next
//! time its partition runs.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::config::{ConfigError, ConfigErrors, PipelineConfig, SinkFormat, WriteMode};
use crate::history::Trigger;
use crate::partition::PartitionKey;
use crate::pipeline::{Pipeline, RunOptions};

/// How to backfill.
#[derive(Debug, Clone)]
pub struct BackfillOptions {
    /// The first partition (date, month or date-time; see
    /// [`crate::partition::PartitionSettings::range`]).
    pub from: String,
    /// The last partition, included.
    pub to: String,
    /// Partitions run at once; at least 1.
    pub parallel: usize,
    /// Only the partitions whose newest recorded run did not succeed.
    pub only_failed: bool,
    /// Draw a progress bar on stderr.
    pub progress: bool,
}

/// What a backfill did, one entry per partition of the range.
#[derive(Debug, Clone, Serialize)]
pub struct BackfillSummary {
    /// The pipeline file.
    pub pipeline: PathBuf,
    /// Wall-clock time of the whole backfill, in milliseconds.
    pub duration_ms: u64,
    /// Every partition of the range, oldest first.
    pub partitions: Vec<PartitionOutcome>,
}

impl BackfillSummary {
    /// Partitions whose run failed.
    pub fn failed(&self) -> usize {
        self.count(PartitionStatus::Failed)
    }

    /// Partitions left alone (`--only-failed`, newest run succeeded).
    pub fn skipped(&self) -> usize {
        self.count(PartitionStatus::Skipped)
    }

    /// Partitions not run because the backfill was stopped.
    pub fn stopped(&self) -> usize {
        self.count(PartitionStatus::Stopped)
    }

    /// Rows written over all partitions.
    pub fn written(&self) -> u64 {
        self.partitions.iter().map(|p| p.written).sum()
    }

    fn count(&self, status: PartitionStatus) -> usize {
        self.partitions
            .iter()
            .filter(|p| p.status == status)
            .count()
    }
}

/// What became of one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PartitionStatus {
    /// Its run committed.
    Succeeded,
    /// Its run failed; its old output is untouched.
    Failed,
    /// Not run: its newest run had succeeded (`--only-failed`).
    Skipped,
    /// Not run: the backfill was stopped first (`weir serve` shutting
    /// down); run it again with `only_failed`.
    Stopped,
}

/// One partition's run.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionOutcome {
    /// `${partition}`.
    pub partition: String,
    /// What became of it.
    pub status: PartitionStatus,
    /// The run's id (in the history and the quarantine), when it ran and
    /// got that far.
    pub run_id: Option<String>,
    /// Rows read.
    pub read: u64,
    /// Rows written.
    pub written: u64,
    /// Rows quarantined.
    pub quarantined: u64,
    /// The run's wall-clock time, in milliseconds.
    pub duration_ms: u64,
    /// Why it failed.
    pub error: Option<String>,
}

/// A check of one partition's pipeline config before it runs, which may
/// complete it: an error fails that partition's run (`weir serve` confines
/// a tenant's pipelines with it, on the text each run reads, and gives
/// them the tenant's secrets).
pub type Vet<'a> = &'a (dyn Fn(&mut PipelineConfig) -> Result<(), ConfigErrors> + Sync);

/// What the caller of [`backfill_with`] adds to a backfill.
#[derive(Clone, Copy)]
pub struct Hooks<'a> {
    /// Checks each partition's config before its run.
    pub vet: Vet<'a>,
    /// Asked before each partition: when true, the partitions not started
    /// yet are [`PartitionStatus::Stopped`].
    pub stop: &'a (dyn Fn() -> bool + Sync),
}

impl Hooks<'static> {
    /// No check, never stopped (`weir backfill`).
    pub fn none() -> Hooks<'static> {
        Hooks {
            vet: &|_| Ok(()),
            stop: &|| false,
        }
    }
}

/// Runs `file` once per partition from `options.from` to `options.to`.
///
/// # Errors
/// A pipeline file that is not partitioned, malformed, or whose
/// partitions would share an output; a bad range. A partition whose run
/// fails is not an error here: it is in the summary.
pub fn backfill(file: &Path, options: &BackfillOptions) -> Result<BackfillSummary> {
    backfill_with(file, options, Hooks::none())
}

/// [`backfill`] with `hooks`: each partition's config vetted before its
/// run, and a way to stop between partitions.
///
/// # Errors
/// As [`backfill`].
pub fn backfill_with(
    file: &Path,
    options: &BackfillOptions,
    hooks: Hooks<'_>,
) -> Result<BackfillSummary> {
    let started = Instant::now();
    let text = crate::config::read_text(file)?;
    if !crate::partition::uses_partition(&text) {
        return Err(ConfigError::whole(
            file,
            "",
            "a backfill runs one partition at a time, but this pipeline uses no ${partition}: put it in [source] path (what a partition reads) and [sink] path (where it writes), see docs/backfill.md",
        )
        .into());
    }
    let settings = crate::config::partition_settings_of(&text, file)?;
    let keys = settings
        .range(&options.from, &options.to)
        .map_err(anyhow::Error::msg)?;
    check_separate_outputs(file, &text, &settings, &keys[0])?;
    let history_file = crate::config::partitioned_history_file(file);
    let latest = match options.only_failed && history_file.exists() {
        true => crate::history::History::open(&history_file)?.latest_by_partition()?,
        false => Default::default(),
    };
    let mut outcomes: Vec<Option<PartitionOutcome>> = vec![None; keys.len()];
    let mut queue = VecDeque::new();
    for (i, key) in keys.iter().enumerate() {
        let succeeded =
            latest.get(&key.value).map(String::as_str) == Some(crate::history::SUCCEEDED);
        if options.only_failed && succeeded {
            outcomes[i] = Some(PartitionOutcome::not_run(
                &key.value,
                PartitionStatus::Skipped,
            ));
        } else {
            queue.push_back(i);
        }
    }
    let to_run = queue.len();
    let bar = progress_bar(options.progress, to_run as u64);
    let queue = Mutex::new(queue);
    let outcomes = Mutex::new(outcomes);
    let failures = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..options.parallel.clamp(1, to_run.max(1)) {
            scope.spawn(|| {
                loop {
                    let Some(i) = queue.lock().expect("queue").pop_front() else {
                        break;
                    };
                    let outcome = if (hooks.stop)() {
                        PartitionOutcome::not_run(&keys[i].value, PartitionStatus::Stopped)
                    } else {
                        backfill_partition(file, &text, &keys[i], hooks.vet)
                    };
                    let line = outcome.line();
                    if outcome.status == PartitionStatus::Failed {
                        failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    match &bar {
                        Some(bar) => {
                            bar.println(line);
                            bar.set_message(format!(
                                "{} failed",
                                failures.load(std::sync::atomic::Ordering::Relaxed)
                            ));
                            bar.inc(1);
                        }
                        None => eprintln!("{line}"),
                    }
                    outcomes.lock().expect("outcomes")[i] = Some(outcome);
                }
            });
        }
    });
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok(BackfillSummary {
        pipeline: file.to_path_buf(),
        duration_ms: started.elapsed().as_millis() as u64,
        partitions: outcomes
            .into_inner()
            .expect("outcomes")
            .into_iter()
            .map(|o| o.expect("every partition ran or was skipped"))
            .collect(),
    })
}

fn progress_bar(show: bool, length: u64) -> Option<indicatif::ProgressBar> {
    show.then(|| {
        let bar = indicatif::ProgressBar::new(length);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "backfill [{bar:30}] {pos}/{len} partitions, {msg}, {elapsed} (eta {eta})",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        bar.set_message("0 failed");
        bar
    })
}

/// Checks that two partitions never write the same output, with the
/// partition after `first` as the other one.
fn check_separate_outputs(
    file: &Path,
    text: &str,
    settings: &crate::partition::PartitionSettings,
    first: &PartitionKey,
) -> Result<()> {
    let second = settings
        .key(settings.every.next(first.start))
        .map_err(anyhow::Error::msg)?;
    let a = PipelineConfig::from_toml_for(text, file, Some(first))?;
    let b = PipelineConfig::from_toml_for(text, file, Some(&second))?;
    if a.sink.format == SinkFormat::Postgres {
        if a.sink.write_mode() != WriteMode::Replace || a.sink.partition_by.is_empty() {
            return Err(ConfigError::whole(
                file,
                "sink.mode",
                "a backfill into PostgreSQL must replace each partition's rows: set mode = \"replace\" and partition_by (the columns the partition's rows share)",
            )
            .into());
        }
    } else if a.sink.path == b.sink.path {
        return Err(ConfigError::whole(
            file,
            "sink.path",
            format!(
                "every partition would write {}: a backfill overwrites one output per partition, so put ${{partition}} in the sink's path (e.g. \"out/${{partition}}.parquet\")",
                a.sink.path
            ),
        )
        .into());
    }
    if a.quarantine.path == b.quarantine.path {
        return Err(ConfigError::whole(
            file,
            "quarantine.path",
            format!(
                "every partition would write its quarantine to {}: put ${{partition}} in the quarantine's path too",
                a.quarantine.path
            ),
        )
        .into());
    }
    Ok(())
}

/// Loads pipeline `file` (whose text is `text`) for partition `key`,
/// checks it with `vet` and runs it, a file sink in `overwrite` mode so
/// that the run replaces the partition's output; recorded in the history
/// as started by `trigger`.
///
/// # Errors
/// The pipeline cannot be loaded for the partition, `vet` refused it, or
/// its run failed.
pub fn run_partition(
    file: &Path,
    text: &str,
    key: &PartitionKey,
    trigger: Trigger,
    vet: Vet<'_>,
) -> Result<crate::report::RunReport> {
    let mut config = PipelineConfig::from_toml_for(text, file, Some(key))?;
    vet(&mut config)?;
    if config.sink.format != SinkFormat::Postgres {
        config.sink.mode = Some(WriteMode::Overwrite);
    }
    let pipeline = Pipeline::build(config, file)?;
    pipeline
        .run(&RunOptions {
            progress: false,
            restart: false,
            trigger,
        })
        .with_context(|| format!("partition {}", key.value))
}

/// Runs one partition of a backfill; every failure ends in the outcome.
fn backfill_partition(
    file: &Path,
    text: &str,
    key: &PartitionKey,
    vet: Vet<'_>,
) -> PartitionOutcome {
    let started = Instant::now();
    match run_partition(file, text, key, Trigger::Backfill, vet) {
        Ok(report) => PartitionOutcome {
            partition: key.value.clone(),
            status: PartitionStatus::Succeeded,
            run_id: Some(report.run_id),
            read: report.records.read,
            written: report.records.written,
            quarantined: report.records.quarantined,
            duration_ms: report.duration_ms,
            error: None,
        },
        Err(error) => PartitionOutcome {
            partition: key.value.clone(),
            status: PartitionStatus::Failed,
            run_id: None,
            read: 0,
            written: 0,
            quarantined: 0,
            duration_ms: started.elapsed().as_millis() as u64,
            error: Some(format!("{error:#}")),
        },
    }
}

impl PartitionOutcome {
    fn not_run(partition: &str, status: PartitionStatus) -> PartitionOutcome {
        PartitionOutcome {
            partition: partition.to_string(),
            status,
            run_id: None,
            read: 0,
            written: 0,
            quarantined: 0,
            duration_ms: 0,
            error: None,
        }
    }

    /// One line for the terminal.
    fn line(&self) -> String {
        match self.status {
            PartitionStatus::Failed => format!(
                "{}  failed     {}",
                self.partition,
                self.error.as_deref().unwrap_or_default()
            ),
            PartitionStatus::Stopped => format!("{}  stopped    not run", self.partition),
            _ => format!(
                "{}  succeeded  {} read, {} written, {} quarantined in {:.1} s",
                self.partition,
                self.read,
                self.written,
                self.quarantined,
                self.duration_ms as f64 / 1000.0
            ),
        }
    }
}
