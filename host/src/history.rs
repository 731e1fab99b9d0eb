//! Run history: every run of a pipeline recorded in a local SQLite
//! database, read back by `weir runs ls|show`.
//!
//! Why SQLite (through `rusqlite`, with SQLite compiled in): one file next
//! to the pipeline's other state, readable by any SQL tool an operator
//! already has (`sqlite3 history.sqlite 'select …'`), safe for a reader
//! while a run writes (write-ahead log), and retention is a `DELETE`. The
//! pipeline's redb store holds its exactly-once state; history is an
//! account of what happened, so a lost history never loses data.
//!
//! Each run is one row in `runs`: inserted as `running` once its run id is
//! known (a resumed run keeps the id of the run it resumes, so the same row
//! goes on), then updated to `succeeded` with its counts and the whole run
//! report (stages, inputs, outputs, quarantine reasons, plugin versions)
//! as JSON, or to `failed` with the error. A process killed mid-run leaves
//! its row `running` until the run is resumed.
//!
//! Where: `history.sqlite` in the pipeline's state directory (the
//! directory of its operators' state store, see
//! [`crate::config::PipelineConfig::history_file`]). Retention (`[history]`
//! in the pipeline file): the newest `keep_runs` runs (default 1000) no
//! older than `keep_days` (default 90), applied after every run.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

pub use crate::config::{HISTORY_FILE, HistorySettings};
use crate::report::RunReport;

/// Status of a recorded run.
pub const RUNNING: &str = "running";
/// Status of a run that committed its output.
pub const SUCCEEDED: &str = "succeeded";
/// Status of an interrupted run that was abandoned (`weir run
/// --restart` discarded its checkpoint): it will never complete.
pub const ABORTED: &str = "aborted";
/// Status of a run that stopped with an error (nothing committed).
pub const FAILED: &str = "failed";

/// One recorded run, as `weir runs ls|show` print it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RunRecord {
    /// The run's id (the run report's `run_id`, also in every quarantine row).
    pub run_id: String,
    /// The pipeline's name.
    pub pipeline: String,
    /// What started it: `run` (`weir run`), `backfill` (`weir backfill`),
    /// `scheduled` (a schedule in `weir serve`), or `serve` (one interval
    /// of a served pipeline's micro-batches).
    pub kind: String,
    /// The partition it processed, for a partitioned pipeline.
    pub partition: Option<String>,
    /// Its data-check results ([`crate::checks::CheckResult`] as JSON).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checks: Option<serde_json::Value>,
    /// `running`, `succeeded`, `failed` or `aborted`.
    pub status: String,
    /// RFC 3339 UTC.
    pub started_at: String,
    /// RFC 3339 UTC; none while running.
    pub ended_at: Option<String>,
    /// Wall-clock duration in milliseconds; none while running.
    pub duration_ms: Option<u64>,
    /// Rows read from the source.
    pub read: u64,
    /// Rows written to the sink.
    pub written: u64,
    /// Rows quarantined.
    pub quarantined: u64,
    /// Rows a transform left out on purpose.
    pub filtered: u64,
    /// Why a failed run failed.
    pub error: Option<String>,
    /// The run report (JSON) of a succeeded run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<serde_json::Value>,
}

/// An open history database.
pub struct History {
    connection: Connection,
    path: PathBuf,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS runs (
    run_id      TEXT PRIMARY KEY,
    pipeline    TEXT NOT NULL,
    kind        TEXT NOT NULL,
    status      TEXT NOT NULL,
    started_at  TEXT NOT NULL,
    ended_at    TEXT,
    duration_ms INTEGER,
    read        INTEGER NOT NULL DEFAULT 0,
    written     INTEGER NOT NULL DEFAULT 0,
    quarantined INTEGER NOT NULL DEFAULT 0,
    filtered    INTEGER NOT NULL DEFAULT 0,
    error       TEXT,
    report      TEXT,
    partition   TEXT,
    observation TEXT,
    checks      TEXT
);
CREATE INDEX IF NOT EXISTS runs_by_start ON runs (started_at);
";

const COLUMNS: &str = "run_id, pipeline, kind, status, started_at, ended_at, duration_ms, read, written, quarantined, filtered, error, report, partition, checks";

/// What started a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Trigger {
    /// `weir run`.
    #[default]
    Run,
    /// `weir backfill`.
    Backfill,
    /// A schedule in `weir serve`.
    Scheduled,
}

impl Trigger {
    /// As recorded: `run`, `backfill` or `scheduled`.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Run => "run",
            Trigger::Backfill => "backfill",
            Trigger::Scheduled => "scheduled",
        }
    }
}

/// One interval of a served pipeline, as [`History::interval`] records
/// it.
#[derive(Debug, Clone, Copy)]
pub struct Interval<'a> {
    /// `serve-{START}` (the start as `YYYYmmddTHHMMSSZ`).
    pub run_id: &'a str,
    /// The pipeline's name.
    pub pipeline: &'a str,
    /// The interval's start and end, RFC 3339 UTC.
    pub started_at: &'a str,
    /// See `started_at`.
    pub ended_at: &'a str,
    /// Its length, in milliseconds.
    pub duration_ms: u64,
    /// Records received, written, quarantined and filtered by the
    /// micro-batches committed in it.
    pub read: u64,
    /// See `read`.
    pub written: u64,
    /// See `read`.
    pub quarantined: u64,
    /// See `read`.
    pub filtered: u64,
    /// Micro-batches committed in it.
    pub batches: u64,
    /// Micro-batches that failed in it.
    pub failed_batches: u64,
    /// The last failure's error.
    pub error: Option<&'a str>,
    /// The interval's summary, as JSON.
    pub summary: &'a str,
}

/// What a run is, as recorded: how it was started and which partition.
#[derive(Debug, Clone, Copy)]
pub struct RunKind<'a> {
    /// `run`, `backfill` or `scheduled`.
    pub kind: &'a str,
    /// The partition, for a partitioned pipeline.
    pub partition: Option<&'a str>,
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

impl History {
    /// Opens (creating it and its directory when missing) the history at
    /// `path`.
    ///
    /// # Errors
    /// When the directory cannot be created or the file is not a history
    /// database.
    pub fn open(path: &Path) -> Result<History> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let connection = Connection::open(path)
            .with_context(|| format!("opening the run history {}", path.display()))?;
        connection
            .busy_timeout(std::time::Duration::from_secs(5))
            .with_context(|| format!("opening the run history {}", path.display()))?;
        // A reader (`weir runs ls`) may look while a run writes. Two runs
        // preparing a new database at the same moment (a backfill's
        // partitions in parallel) can get `database is locked` at once,
        // busy timeout or not (SQLite does not wait where waiting could
        // deadlock, as in switching to WAL): try again for up to 5 s rather
        // than lose the run's history row.
        let prepare = || {
            connection
                .pragma_update(None, "journal_mode", "WAL")
                .and_then(|()| connection.execute_batch(SCHEMA))
                .and_then(|()| add_missing_columns(&connection))
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match prepare() {
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.code == rusqlite::ErrorCode::DatabaseBusy
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                outcome => {
                    outcome
                        .with_context(|| format!("preparing the run history {}", path.display()))?;
                    break;
                }
            }
        }
        Ok(History {
            connection,
            path: path.to_path_buf(),
        })
    }

    /// Where the database is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records that run `run_id` of `pipeline` started at `started_at`
    /// (RFC 3339), or goes on (a resumed run).
    ///
    /// # Errors
    /// When the database cannot be written.
    pub fn begin(
        &self,
        run_id: &str,
        pipeline: &str,
        kind: RunKind<'_>,
        started_at: &str,
    ) -> Result<()> {
        self.connection
            .execute(
                "INSERT INTO runs (run_id, pipeline, kind, status, started_at, partition) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (run_id) DO UPDATE SET status = excluded.status, ended_at = NULL, error = NULL",
                params![run_id, pipeline, kind.kind, RUNNING, started_at, kind.partition],
            )
            .context("recording the run's start in the history")?;
        Ok(())
    }

    /// Records a run that committed its output, with its report.
    ///
    /// # Errors
    /// When the database cannot be written.
    pub fn succeeded(&self, kind: RunKind<'_>, report: &RunReport) -> Result<()> {
        let json = crate::secrets::redact(&serde_json::to_string(report)?).into_owned();
        let r = &report.records;
        self.connection
            .execute(
                "INSERT INTO runs (run_id, pipeline, kind, status, started_at, ended_at, duration_ms, read, written, quarantined, filtered, report, partition)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
                 ON CONFLICT (run_id) DO UPDATE SET status = excluded.status, ended_at = excluded.ended_at,
                   duration_ms = excluded.duration_ms, read = excluded.read, written = excluded.written,
                   quarantined = excluded.quarantined, filtered = excluded.filtered, error = NULL,
                   report = excluded.report",
                params![
                    report.run_id,
                    report.pipeline,
                    kind.kind,
                    SUCCEEDED,
                    report.started_at,
                    now_rfc3339(),
                    report.duration_ms as i64,
                    r.read as i64,
                    r.written as i64,
                    r.quarantined as i64,
                    r.filtered as i64,
                    json,
                    kind.partition
                ],
            )
            .context("recording the run in the history")?;
        Ok(())
    }

    /// Records that run `run_id`, interrupted, was abandoned for `why`;
    /// nothing when it is not in the history.
    ///
    /// # Errors
    /// When the database cannot be written.
    pub fn aborted(&self, run_id: &str, why: &str) -> Result<()> {
        self.connection
            .execute(
                "UPDATE runs SET status = ?2, ended_at = ?3, error = ?4 WHERE run_id = ?1 AND status = ?5",
                params![run_id, ABORTED, now_rfc3339(), why, RUNNING],
            )
            .context("recording the aborted run in the history")?;
        Ok(())
    }

    /// Records (or updates) one interval of a served pipeline
    /// ([`crate::serve::served_history`]): kind `serve`, status
    /// `succeeded` when a micro-batch committed in it, else `failed`;
    /// `summary` is its JSON report, `error` the last failure.
    ///
    /// # Errors
    /// When the database cannot be written.
    pub fn interval(&self, interval: &Interval<'_>) -> Result<()> {
        let status = if interval.batches > 0 || interval.failed_batches == 0 {
            SUCCEEDED
        } else {
            FAILED
        };
        self.connection
            .execute(
                "INSERT INTO runs (run_id, pipeline, kind, status, started_at, ended_at, duration_ms, read, written, quarantined, filtered, error, report)
                 VALUES (?1, ?2, 'serve', ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
                 ON CONFLICT (run_id) DO UPDATE SET status = excluded.status, ended_at = excluded.ended_at,
                   duration_ms = excluded.duration_ms, read = excluded.read, written = excluded.written,
                   quarantined = excluded.quarantined, filtered = excluded.filtered, error = excluded.error,
                   report = excluded.report",
                params![
                    interval.run_id,
                    interval.pipeline,
                    status,
                    interval.started_at,
                    interval.ended_at,
                    interval.duration_ms as i64,
                    interval.read as i64,
                    interval.written as i64,
                    interval.quarantined as i64,
                    interval.filtered as i64,
                    interval.error.map(crate::secrets::redact),
                    crate::secrets::redact(interval.summary),
                ],
            )
            .context("recording the interval in the history")?;
        Ok(())
    }

    /// Records that run `run_id` failed with `error` after `duration_ms`.
    ///
    /// # Errors
    /// When the database cannot be written.
    pub fn failed(
        &self,
        run_id: &str,
        pipeline: &str,
        kind: RunKind<'_>,
        started_at: &str,
        duration_ms: u64,
        error: &str,
    ) -> Result<()> {
        self.connection
            .execute(
                "INSERT INTO runs (run_id, pipeline, kind, status, started_at, ended_at, duration_ms, error, partition)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT (run_id) DO UPDATE SET status = excluded.status, ended_at = excluded.ended_at,
                   duration_ms = excluded.duration_ms, error = excluded.error",
                params![
                    run_id,
                    pipeline,
                    kind.kind,
                    FAILED,
                    started_at,
                    now_rfc3339(),
                    duration_ms as i64,
                    crate::secrets::redact(error),
                    kind.partition
                ],
            )
            .context("recording the failed run in the history")?;
        Ok(())
    }

    /// Keeps the newest `keep_runs` runs that started less than `keep_days`
    /// days ago; returns how many it removed.
    ///
    /// # Errors
    /// When the database cannot be written.
    pub fn prune(&self, keep_runs: u64, keep_days: u64) -> Result<usize> {
        let cutoff = std::time::SystemTime::now()
            .checked_sub(std::time::Duration::from_secs(
                keep_days.saturating_mul(86_400),
            ))
            .unwrap_or(std::time::UNIX_EPOCH);
        let cutoff = humantime::format_rfc3339_seconds(cutoff).to_string();
        let removed = self
            .connection
            .execute(
                "DELETE FROM runs WHERE started_at < ?1 OR run_id NOT IN
                   (SELECT run_id FROM runs ORDER BY started_at DESC, rowid DESC LIMIT ?2)",
                params![cutoff, i64::try_from(keep_runs).unwrap_or(i64::MAX)],
            )
            .context("pruning the run history")?;
        Ok(removed)
    }

    /// The newest `limit` runs, newest first, without their reports.
    ///
    /// # Errors
    /// When the database cannot be read.
    pub fn list(&self, limit: usize) -> Result<Vec<RunRecord>> {
        let mut statement = self.connection.prepare(&format!(
            "SELECT {COLUMNS} FROM runs ORDER BY started_at DESC, rowid DESC LIMIT ?1"
        ))?;
        let rows = statement
            .query_map(params![limit as i64], |row| record(row, false))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// The run whose id is `run_id` or starts with it (at least 4
    /// characters), with its report.
    ///
    /// # Errors
    /// When the database cannot be read, or the prefix names several runs.
    pub fn show(&self, run_id: &str) -> Result<Option<RunRecord>> {
        let mut statement = self.connection.prepare(&format!(
            "SELECT {COLUMNS} FROM runs WHERE run_id = ?1 OR (length(?1) >= 4 AND substr(run_id, 1, length(?1)) = ?1) LIMIT 2"
        ))?;
        let mut found = statement
            .query_map(params![run_id], |row| record(row, true))?
            .collect::<Result<Vec<_>, _>>()?;
        match found.len() {
            0 | 1 => Ok(found.pop()),
            _ => anyhow::bail!("`{run_id}` is the start of several run ids; give more of it"),
        }
    }

    /// The status of the newest run of each partition (partition →
    /// status).
    ///
    /// # Errors
    /// When the database cannot be read.
    pub fn latest_by_partition(&self) -> Result<std::collections::HashMap<String, String>> {
        let mut statement = self.connection.prepare(
            "SELECT partition, status FROM runs WHERE partition IS NOT NULL ORDER BY started_at, rowid",
        )?;
        let mut latest = std::collections::HashMap::new();
        for row in statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))? {
            let (partition, status): (String, String) = row?;
            latest.insert(partition, status);
        }
        Ok(latest)
    }

    /// Records what run `run_id` looked like and its check results (after
    /// [`Self::succeeded`] or [`Self::failed`]).
    ///
    /// # Errors
    /// When the database cannot be written.
    pub fn record_checks(
        &self,
        run_id: &str,
        observation: &crate::checks::Observation,
        results: &[crate::checks::CheckResult],
    ) -> Result<()> {
        self.connection
            .execute(
                "UPDATE runs SET observation = ?2, checks = ?3 WHERE run_id = ?1",
                params![
                    run_id,
                    serde_json::to_string(observation)?,
                    serde_json::to_string(results)?
                ],
            )
            .context("recording the run's checks in the history")?;
        Ok(())
    }

    /// What the newest `limit` successful runs looked like, newest first
    /// (what the data checks learn from).
    ///
    /// # Errors
    /// When the database cannot be read.
    pub fn observations(&self, limit: usize) -> Result<Vec<crate::checks::Observation>> {
        let mut statement = self.connection.prepare(
            "SELECT observation FROM runs WHERE status = ?1 AND observation IS NOT NULL
             ORDER BY started_at DESC, rowid DESC LIMIT ?2",
        )?;
        let rows = statement
            .query_map(params![SUCCEEDED, limit as i64], |row| {
                row.get::<_, String>(0)
            })?
            .filter_map(|text| text.ok().and_then(|t| serde_json::from_str(&t).ok()))
            .collect();
        Ok(rows)
    }

    /// Whether a run with this exact id is recorded.
    ///
    /// # Errors
    /// When the database cannot be read.
    pub fn contains(&self, run_id: &str) -> Result<bool> {
        Ok(self
            .connection
            .query_row(
                "SELECT 1 FROM runs WHERE run_id = ?1",
                params![run_id],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }
}

fn record(row: &rusqlite::Row<'_>, with_report: bool) -> rusqlite::Result<RunRecord> {
    let count = |i: usize| row.get::<_, i64>(i).map(|v| v.max(0) as u64);
    let report: Option<String> = row.get(12)?;
    Ok(RunRecord {
        run_id: row.get(0)?,
        pipeline: row.get(1)?,
        kind: row.get(2)?,
        status: row.get(3)?,
        started_at: row.get(4)?,
        ended_at: row.get(5)?,
        duration_ms: row.get::<_, Option<i64>>(6)?.map(|v| v.max(0) as u64),
        read: count(7)?,
        written: count(8)?,
        quarantined: count(9)?,
        filtered: count(10)?,
        error: row.get(11)?,
        report: report
            .filter(|_| with_report)
            .and_then(|text| serde_json::from_str(&text).ok()),
        partition: row.get(13)?,
        checks: row
            .get::<_, Option<String>>(14)?
            .and_then(|text| serde_json::from_str(&text).ok()),
    })
}

/// Adds the columns a history made by an older weir lacks.
fn add_missing_columns(connection: &Connection) -> rusqlite::Result<()> {
    for column in ["partition", "observation", "checks"] {
        let has: bool = connection
            .prepare("SELECT 1 FROM pragma_table_info('runs') WHERE name = ?1")?
            .exists([column])?;
        if !has {
            connection.execute_batch(&format!("ALTER TABLE runs ADD COLUMN {column} TEXT"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUN: RunKind<'static> = RunKind {
        kind: "run",
        partition: None,
    };

    #[test]
    fn a_run_goes_from_running_to_failed_and_retention_keeps_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let history = History::open(&dir.path().join("h/history.sqlite")).unwrap();
        history
            .begin("aaaa-1", "p", RUN, "2026-12-01T00:00:00Z")
            .unwrap();
        assert_eq!(history.list(10).unwrap()[0].status, RUNNING);
        history
            .failed("aaaa-1", "p", RUN, "2026-12-01T00:00:00Z", 12, "boom")
            .unwrap();
        let shown = history.show("aaaa").unwrap().unwrap();
        assert_eq!(
            (shown.status.as_str(), shown.error.as_deref()),
            (FAILED, Some("boom"))
        );
        let now = now_rfc3339();
        for i in 0..3 {
            history.begin(&format!("bbbb-{i}"), "p", RUN, &now).unwrap();
        }
        assert!(history.show("bbbb").is_err(), "an ambiguous prefix");
        // The 2026-12-01 run is older than a day; of the rest, two are kept.
        let removed = history.prune(2, 1).unwrap();
        assert_eq!(removed, 2);
        let ids: Vec<String> = history
            .list(10)
            .unwrap()
            .into_iter()
            .map(|r| r.run_id)
            .collect();
        assert_eq!(ids, ["bbbb-2", "bbbb-1"]);
    }

    #[test]
    fn runs_opening_a_new_history_at_the_same_moment_all_get_their_row() {
        // A backfill's partitions in parallel: SQLite answered `database is
        // locked` at once to some while another switched the new file to
        // WAL, and those runs were missing from the history.
        for round in 0..10 {
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join("history.sqlite");
            let barrier = std::sync::Barrier::new(8);
            std::thread::scope(|scope| {
                for i in 0..8 {
                    let (file, barrier) = (&file, &barrier);
                    scope.spawn(move || {
                        barrier.wait();
                        History::open(file)
                            .and_then(|h| {
                                h.begin(&format!("run-{i}"), "p", RUN, "2026-12-01T00:00:00Z")
                            })
                            .unwrap_or_else(|e| panic!("round {round}, run {i}: {e:#}"));
                    });
                }
            });
            assert_eq!(History::open(&file).unwrap().list(100).unwrap().len(), 8);
        }
    }
}
