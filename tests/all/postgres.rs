//! The PostgreSQL sink and source against a real, throwaway PostgreSQL
//! server (`weir_tests::pg::PgServer`): exactly-once loads under `kill -9`
//! at every step of an epoch's commit and under a server crash, every
//! type round-tripping, upsert, replace, incremental reads, and the
//! errors a user meets first.

use std::path::{Path, PathBuf};
use std::process::ExitStatus;

use weir_tests::pg::PgServer;

use crate::crash::spawn_weir_with;

/// Rows of the generated input.
const ROWS: i64 = 200_000;

/// The generated input, made once per test process: `id,value,grp`, ids
/// `0..ROWS`; every id ≡ 7 (mod 1000) has no value (the validate stage
/// quarantines it).
fn input() -> PathBuf {
    static INPUT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    INPUT
        .get_or_init(|| {
            let dir = std::env::temp_dir().join("weir-pg-input-v1");
            let path = dir.join("input.csv");
            if path.exists() {
                return path;
            }
            std::fs::create_dir_all(&dir).unwrap();
            let mut text = String::from("id,value,grp\n");
            for id in 0..ROWS {
                if id % 1000 == 7 {
                    text.push_str(&format!("{id},,g{}\n", id % 4));
                } else {
                    text.push_str(&format!("{id},{},g{}\n", id * 3 % 1_000_003, id % 4));
                }
            }
            let tmp = dir.join(format!("input.csv.{}.tmp", std::process::id()));
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, &path).unwrap();
            path
        })
        .clone()
}

/// Writes `dir/pipeline.toml`: the generated input (or `source`, a
/// `[source]` body), one validate stage, `sink` (a `[sink]` body) and a
/// JSON Lines quarantine; epochs of 2 batches of 8,192 rows.
fn write_pipeline(dir: &Path, source: Option<&str>, sink: &str) {
    let source = source.map(str::to_string).unwrap_or_else(|| {
        format!(
            "format = \"csv\"\npath = {:?}",
            input().display().to_string()
        )
    });
    let text = format!(
        r#"
[pipeline]
name = "pg"
batch_size = 8192
checkpoint_every_batches = 2

[source]
{source}

[[stages]]
name = "check"
kind = "validate"
plugin = "builtin:check"

[[stages.config.rules]]
id = "value_present"
column = "value"
check = "not_null"

[sink]
{sink}

[quarantine]
format = "jsonl"
path = "quarantine.jsonl"
"#
    );
    std::fs::write(dir.join("pipeline.toml"), text).unwrap();
}

/// A `[sink]` body loading `table` on `server` (the password comes from
/// `PGPASSWORD`, as [`run_weir`] sets it).
fn pg_sink(server: &PgServer, table: &str, extra: &str) -> String {
    format!(
        "format = \"postgres\"\nconnection = {:?}\ntable = {table:?}\n{extra}",
        server.connection_without_password()
    )
}

/// Runs `weir ARGS` in `dir` (crashing at `crash` when given) with the
/// test server's password in `PGPASSWORD`; returns how it ended and its
/// output.
fn run_weir(dir: &Path, args: &[&str], crash: Option<&str>) -> (ExitStatus, String) {
    let _ = std::fs::remove_file(dir.join("child.log"));
    let status = spawn_weir_with(
        dir,
        args,
        crash,
        &[("PGPASSWORD", weir_tests::pg::PASSWORD)],
    )
    .wait()
    .unwrap();
    let log = std::fs::read_to_string(dir.join("child.log")).unwrap_or_default();
    (status, log)
}

fn run_ok(dir: &Path) -> String {
    let (status, log) = run_weir(dir, &["run", "pipeline.toml", "--no-progress"], None);
    assert!(status.success(), "weir run failed: {log}");
    log
}

/// `(rows, distinct ids, sum of ids)` of `table`.
fn id_summary(server: &PgServer, table: &str) -> (i64, i64, i64) {
    let row = server
        .client()
        .query_one(
            &format!(
                "SELECT count(*), count(DISTINCT id), coalesce(sum(id), 0)::bigint FROM {table}"
            ),
            &[],
        )
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

/// What the table must hold after the harness pipeline: every id but
/// those ≡ 7 (mod 1000), once.
fn expected_summary() -> (i64, i64, i64) {
    let ids: Vec<i64> = (0..ROWS).filter(|id| id % 1000 != 7).collect();
    (ids.len() as i64, ids.len() as i64, ids.iter().sum())
}

fn quarantined_ids(dir: &Path) -> Vec<i64> {
    let mut ids: Vec<i64> = std::fs::read_to_string(dir.join("quarantine.jsonl"))
        .unwrap()
        .lines()
        .map(|line| {
            let row: serde_json::Value = serde_json::from_str(line).unwrap();
            row["record"]["id"].as_i64().unwrap()
        })
        .collect();
    ids.sort_unstable();
    ids
}

fn assert_exactly_once(server: &PgServer, dir: &Path, table: &str, what: &str) {
    assert_eq!(
        id_summary(server, table),
        expected_summary(),
        "{what}: the table must hold every valid id exactly once"
    );
    let expected: Vec<i64> = (0..ROWS).filter(|id| id % 1000 == 7).collect();
    assert_eq!(quarantined_ids(dir), expected, "{what}: the quarantine");
    assert!(
        !dir.join(format!(".{table}.weir-checkpoint")).exists(),
        "{what}: the checkpoint directory is removed"
    );
}

#[test]
fn a_load_holds_every_row_once_and_records_each_epoch() {
    let server = PgServer::start();
    let dir = tempfile::tempdir().unwrap();
    write_pipeline(
        dir.path(),
        None,
        &pg_sink(&server, "events", "create = true"),
    );
    let log = run_ok(dir.path());
    assert!(log.contains("200000 read"), "{log}");
    assert_exactly_once(&server, dir.path(), "events", "first run");
    // The epochs are recorded with their source positions.
    let epochs: i64 = server
        .client()
        .query_one(
            "SELECT count(*) FROM _weir_checkpoints WHERE target = 'events'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(epochs, 13, "25 batches in epochs of 2");
    // The types weir created.
    let types: Vec<(String, String)> = server
        .client()
        .query(
            "SELECT column_name::text, data_type::text FROM information_schema.columns WHERE table_name = 'events' ORDER BY ordinal_position",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        types,
        vec![
            ("id".to_string(), "bigint".to_string()),
            ("value".into(), "bigint".into()),
            ("grp".into(), "text".into())
        ]
    );
}

/// Kills `weir run` at `point` (its `hit`-th time), runs it again, and
/// checks the table holds every row once.
fn crash_and_recover(point: &str, hits: &[u64]) {
    let server = PgServer::start();
    for (run, hit) in hits.iter().enumerate() {
        let table = format!("crash_{run}");
        let dir = tempfile::tempdir().unwrap();
        write_pipeline(dir.path(), None, &pg_sink(&server, &table, "create = true"));
        let what = format!("{point}:{hit}");
        let (status, log) = run_weir(
            dir.path(),
            &["run", "pipeline.toml", "--no-progress"],
            Some(&what),
        );
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9), "{what}: never reached: {log}");
        let log = run_ok(dir.path());
        assert!(log.contains("resumed"), "{what}: {log}");
        if point == "after-pg-commit" {
            assert!(
                log.contains(&format!(
                    "the sink had committed epoch {hit} before the crash"
                )),
                "{what}: the recovery finds the epoch the database committed: {log}"
            );
        }
        assert_exactly_once(&server, dir.path(), &table, &what);
    }
}

#[test]
fn killed_mid_copy_a_load_resumes_exactly_once() {
    crash_and_recover("mid-copy", &[1, 4, 9]);
}

#[test]
fn killed_before_commit_a_load_resumes_exactly_once() {
    crash_and_recover("before-pg-commit", &[1, 6, 13]);
}

/// The database committed the epoch, weir's checkpoint does not record it
/// yet: the replay must end that epoch at the same position and load it
/// not again.
#[test]
fn killed_after_the_database_commit_a_load_resumes_exactly_once() {
    crash_and_recover("after-pg-commit", &[1, 7, 13]);
}

#[test]
fn killed_after_the_checkpoint_before_the_source_ack_a_load_resumes_exactly_once() {
    crash_and_recover("after-commit", &[2, 12]);
}

/// Runs `weir run pipeline.toml` in `dir`; once `under_way` (a count
/// query) returns at least 1, crashes the server (`pg_ctl stop -m
/// immediate`) and starts it again after `down`. Returns weir's log,
/// asserting that the run succeeded and retried the lost connection.
fn crash_the_server_during_a_run(
    server: &PgServer,
    dir: &Path,
    under_way: &str,
    down: std::time::Duration,
) -> String {
    let mut child = spawn_weir_with(
        dir,
        &["run", "pipeline.toml", "--no-progress"],
        None,
        &[("PGPASSWORD", weir_tests::pg::PASSWORD)],
    );
    let started = std::time::Instant::now();
    loop {
        let count: i64 = server
            .client()
            .query_one(under_way, &[])
            .map(|r| r.get(0))
            .unwrap_or(0);
        if count > 0 {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "never under way: {under_way}"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    server.stop_immediately();
    std::thread::sleep(down);
    server.start_again();
    let status = child.wait().unwrap();
    let log = std::fs::read_to_string(dir.join("child.log")).unwrap();
    assert!(status.success(), "weir did not survive the restart: {log}");
    assert!(
        log.contains("retrying"),
        "the lost connection is retried: {log}"
    );
    log
}

#[test]
fn a_server_crash_mid_load_is_retried_and_loads_exactly_once() {
    let server = PgServer::start();
    let dir = tempfile::tempdir().unwrap();
    write_pipeline(
        dir.path(),
        None,
        &pg_sink(&server, "survivor", "create = true\nretry_budget_s = 60"),
    );
    // Crash the server once two epochs have landed.
    crash_the_server_during_a_run(
        &server,
        dir.path(),
        "SELECT count(*) - 1 FROM _weir_checkpoints",
        std::time::Duration::from_millis(1500),
    );
    assert_exactly_once(&server, dir.path(), "survivor", "server crash");
}

#[test]
fn rows_the_database_refuses_go_to_the_quarantine_and_the_rest_load() {
    let server = PgServer::start();
    server
        .client()
        .batch_execute(
            "CREATE TABLE checked (id bigint PRIMARY KEY, value bigint CONSTRAINT value_not_9s CHECK (id % 5000 <> 1234), grp text)",
        )
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_pipeline(dir.path(), None, &pg_sink(&server, "checked", ""));
    let log = run_ok(dir.path());
    let refused: Vec<i64> = (0..ROWS).filter(|id| id % 5000 == 1234).collect();
    let (rows, distinct, _) = id_summary(&server, "checked");
    assert_eq!(rows, expected_summary().0 - refused.len() as i64, "{log}");
    assert_eq!(distinct, rows);
    let text = std::fs::read_to_string(dir.path().join("quarantine.jsonl")).unwrap();
    let from_database: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|row| row["error_kind"] == "database")
        .collect();
    let mut ids: Vec<i64> = from_database
        .iter()
        .map(|row| row["record"]["id"].as_i64().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, refused);
    let message = from_database[0]["message"].as_str().unwrap();
    assert!(
        message.contains("value_not_9s") && message.contains("23514"),
        "the database's own message: {message}"
    );
    assert_eq!(from_database[0]["record"]["grp"], "g2");
    assert!(
        log.contains(&format!("{} quarantined", 200 + refused.len())),
        "the report counts them: {log}"
    );
}

#[test]
fn upsert_leaves_the_latest_version_of_each_key() {
    let server = PgServer::start();
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("profiles.csv");
    let source = format!("format = \"csv\"\npath = {:?}", csv.display().to_string());
    let sink = pg_sink(
        &server,
        "profiles",
        "mode = \"upsert\"\nkey = [\"id\"]\ncreate = true",
    );
    write_pipeline(dir.path(), Some(&source), &sink);
    std::fs::write(&csv, "id,value,grp\n1,10,a\n2,20,b\n3,30,c\n").unwrap();
    run_ok(dir.path());
    // The second run updates 2, adds 4, and has 3 twice: the later wins.
    std::fs::write(&csv, "id,value,grp\n2,21,b2\n3,31,c\n4,40,d\n3,32,c3\n").unwrap();
    let log = run_ok(dir.path());
    let rows: Vec<(i64, i64, String)> = server
        .client()
        .query("SELECT id, value, grp FROM profiles ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        rows,
        vec![
            (1, 10, "a".to_string()),
            (2, 21, "b2".into()),
            (3, 32, "c3".into()),
            (4, 40, "d".into())
        ],
        "{log}"
    );
}

#[test]
fn upsert_rows_the_table_refuses_go_to_the_quarantine_and_the_rest_merge() {
    let server = PgServer::start();
    server
        .client()
        .batch_execute(
            "CREATE TABLE scores (id bigint PRIMARY KEY, value bigint CONSTRAINT non_negative CHECK (value >= 0), grp text)",
        )
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("scores.csv");
    let source = format!("format = \"csv\"\npath = {:?}", csv.display().to_string());
    write_pipeline(
        dir.path(),
        Some(&source),
        &pg_sink(&server, "scores", "mode = \"upsert\"\nkey = [\"id\"]"),
    );
    // Id 3's last version breaks the CHECK: it is quarantined, and the last
    // version the table accepts stays.
    std::fs::write(
        &csv,
        "id,value,grp\n1,10,a\n2,-5,b\n3,30,c\n3,-1,c2\n4,40,d\n",
    )
    .unwrap();
    let log = run_ok(dir.path());
    let rows: Vec<(i64, i64)> = server
        .client()
        .query("SELECT id, value FROM scores ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(rows, vec![(1, 10), (3, 30), (4, 40)], "{log}");
    let refused: Vec<(i64, i64, String)> =
        std::fs::read_to_string(dir.path().join("quarantine.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .map(|row| {
                (
                    row["record"]["id"].as_i64().unwrap(),
                    row["record"]["value"].as_i64().unwrap(),
                    row["message"].as_str().unwrap().to_string(),
                )
            })
            .collect();
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert_eq!((refused[0].0, refused[0].1), (2, -5));
    assert_eq!((refused[1].0, refused[1].1), (3, -1));
    assert!(
        refused.iter().all(|r| r.2.contains("non_negative")),
        "{refused:?}"
    );
    assert!(log.contains("2 quarantined"), "{log}");
}

#[test]
fn replace_swaps_the_whole_table_or_only_the_partitions_written() {
    let server = PgServer::start();
    server
        .client()
        .batch_execute(
            "CREATE TABLE daily (id bigint, value bigint, grp text, added bigint GENERATED ALWAYS AS IDENTITY); INSERT INTO daily (id, value, grp) VALUES (100, 1, 'old'), (101, 2, 'g1')",
        )
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("day.csv");
    let source = format!("format = \"csv\"\npath = {:?}", csv.display().to_string());
    std::fs::write(&csv, "id,value,grp\n1,10,g1\n2,20,g1\n").unwrap();
    write_pipeline(
        dir.path(),
        Some(&source),
        &pg_sink(
            &server,
            "daily",
            "mode = \"replace\"\npartition_by = [\"grp\"]",
        ),
    );
    run_ok(dir.path());
    let ids = |server: &PgServer| -> Vec<i64> {
        server
            .client()
            .query("SELECT id FROM daily ORDER BY id", &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    assert_eq!(
        ids(&server),
        vec![1, 2, 100],
        "partition g1 replaced, `old` kept"
    );
    write_pipeline(
        dir.path(),
        Some(&source),
        &pg_sink(&server, "daily", "mode = \"replace\""),
    );
    std::fs::write(&csv, "id,value,grp\n7,70,g7\n").unwrap();
    run_ok(dir.path());
    assert_eq!(ids(&server), vec![7], "the whole table replaced");
    let shadows: i64 = server
        .client()
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE tablename LIKE '_weir_replace_%'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(shadows, 0, "no shadow table is left behind");
}

#[test]
fn the_first_errors_a_user_meets_are_clear_and_write_nothing() {
    let server = PgServer::start();
    let dir = tempfile::tempdir().unwrap();
    let run = |sink: &str| {
        write_pipeline(dir.path(), None, sink);
        let (status, log) = run_weir(dir.path(), &["run", "pipeline.toml", "--no-progress"], None);
        assert!(!status.success(), "{log}");
        log
    };
    // A wrong password: the server's refusal, never the password.
    let log = run(&format!(
        "format = \"postgres\"\nconnection = \"host=127.0.0.1 port={} user=weir password=not-the-secret dbname=postgres\"\ntable = \"t\"\ncreate = true",
        server.port
    ));
    assert!(log.contains("password authentication failed"), "{log}");
    assert!(
        !log.contains("not-the-secret"),
        "the password leaked: {log}"
    );
    // A missing table without `create`.
    let log = run(&pg_sink(&server, "missing", ""));
    assert!(
        log.contains("table missing does not exist") && log.contains("create = true"),
        "{log}"
    );
    // A column of another type, named before anything is written.
    server
        .client()
        .batch_execute("CREATE TABLE narrow (id integer, value bigint, grp text)")
        .unwrap();
    let log = run(&pg_sink(&server, "narrow", ""));
    assert!(
        log.contains("column `id` of table narrow is `integer`") && log.contains("bigint"),
        "{log}"
    );
    let rows: i64 = server
        .client()
        .query_one("SELECT count(*) FROM narrow", &[])
        .unwrap()
        .get(0);
    assert_eq!(rows, 0);
    // Upsert without a unique key.
    server
        .client()
        .batch_execute("CREATE TABLE nokey (id bigint, value bigint, grp text)")
        .unwrap();
    let log = run(&pg_sink(
        &server,
        "nokey",
        "mode = \"upsert\"\nkey = [\"id\"]",
    ));
    assert!(
        log.contains("needs a unique index or primary key on exactly (id)"),
        "{log}"
    );
    // A server that is not there: retried within the budget, then a clear failure.
    let log = run(
        "format = \"postgres\"\nconnection = \"host=127.0.0.1 port=1 user=weir dbname=postgres\"\ntable = \"t\"\nretry_budget_s = 1",
    );
    assert!(
        log.contains("gave up after") && log.contains("retry_budget_s = 1"),
        "{log}"
    );
}

/// Writes `dir/NAME`: `source` and `sink` (`[source]` and `[sink]`
/// bodies), no stage, `batch_size` rows per batch, epochs of 2 batches.
fn write_plain_pipeline(dir: &Path, name: &str, source: &str, sink: &str, batch_size: usize) {
    let text = format!(
        r#"
[pipeline]
name = "plain"
batch_size = {batch_size}
checkpoint_every_batches = 2

[source]
{source}

[sink]
{sink}

[quarantine]
format = "jsonl"
path = "quarantine-{name}.jsonl"
"#
    );
    std::fs::write(dir.join(name), text).unwrap();
}

fn run_file(dir: &Path, name: &str) -> String {
    let (status, log) = run_weir(dir, &["run", name, "--no-progress"], None);
    assert!(status.success(), "weir run {name} failed: {log}");
    log
}

/// Rows × 8 columns of every weir type at its extremes: nulls, empty and
/// non-ASCII strings, NaN and infinities, the first and last days
/// PostgreSQL and Arrow share.
fn extremes() -> arrow::record_batch::RecordBatch {
    use arrow::array::*;
    use std::sync::Arc;
    let day = 86_400_000_000i64;
    arrow::record_batch::RecordBatch::try_from_iter(vec![
        (
            "id",
            Arc::new(Int64Array::from(vec![1, 2, 3, 4, 5, 6])) as ArrayRef,
        ),
        (
            "flag",
            Arc::new(BooleanArray::from(vec![
                Some(true),
                Some(false),
                None,
                Some(true),
                None,
                Some(false),
            ])),
        ),
        (
            "count",
            Arc::new(Int64Array::from(vec![
                Some(i64::MIN),
                Some(i64::MAX),
                None,
                Some(0),
                Some(-1),
                Some(1),
            ])),
        ),
        (
            "ratio",
            Arc::new(Float64Array::from(vec![
                Some(f64::MAX),
                Some(f64::MIN_POSITIVE),
                None,
                Some(f64::INFINITY),
                Some(f64::NEG_INFINITY),
                Some(f64::NAN),
            ])),
        ),
        (
            "name",
            Arc::new(StringArray::from(vec![
                Some(""),
                Some("zürich"),
                None,
                Some("東京 ✈ 🛫"),
                Some("quote \" and \\ and\nnewline, comma"),
                Some(&*"long".repeat(10_000)),
            ])),
        ),
        (
            "blob",
            Arc::new(BinaryArray::from(vec![
                Some(&b""[..]),
                Some(&b"\0\x01\xff"[..]),
                None,
                Some(&b"plain"[..]),
                Some(&[0u8; 300][..]),
                Some(&b"\\x00"[..]),
            ])),
        ),
        (
            "day",
            Arc::new(Date32Array::from(vec![
                Some(-719_162),  // 0001-01-01
                Some(2_932_896), // 9999-12-31
                None,
                Some(0),
                Some(-1),
                Some(10_957),
            ])),
        ),
        (
            "at",
            Arc::new(TimestampMicrosecondArray::from(vec![
                Some(-719_162 * day),
                Some(2_932_896 * day + day - 1),
                None,
                Some(0),
                Some(-1),
                Some(1_700_000_000_123_456),
            ])),
        ),
        (
            "at_utc",
            Arc::new(
                TimestampMicrosecondArray::from(vec![
                    Some(1),
                    None,
                    Some(-1),
                    Some(0),
                    Some(day),
                    Some(-day),
                ])
                .with_timezone("UTC"),
            ),
        ),
    ])
    .unwrap()
}

fn read_parquet(path: &Path) -> arrow::record_batch::RecordBatch {
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        std::fs::File::open(path).unwrap(),
    )
    .unwrap()
    .build()
    .unwrap();
    let batches: Vec<_> = reader.map(|b| b.unwrap()).collect();
    arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap()
}

#[test]
fn every_type_round_trips_file_to_postgres_to_file_identically() {
    let server = PgServer::start();
    let dir = tempfile::tempdir().unwrap();
    let input = extremes();
    let file = std::fs::File::create(dir.path().join("in.parquet")).unwrap();
    let mut writer = parquet::arrow::ArrowWriter::try_new(file, input.schema(), None).unwrap();
    writer.write(&input).unwrap();
    writer.close().unwrap();
    write_plain_pipeline(
        dir.path(),
        "load.toml",
        "format = \"parquet\"\npath = \"in.parquet\"",
        &pg_sink(&server, "every_type", "create = true"),
        4,
    );
    run_file(dir.path(), "load.toml");
    write_plain_pipeline(
        dir.path(),
        "unload.toml",
        &format!(
            "format = \"postgres\"\nconnection = {:?}\nquery = \"SELECT * FROM every_type ORDER BY id\"",
            server.connection_without_password()
        ),
        "format = \"parquet\"\npath = \"out.parquet\"",
        4,
    );
    run_file(dir.path(), "unload.toml");
    let output = read_parquet(&dir.path().join("out.parquet"));
    assert_eq!(
        output.schema().fields().len(),
        input.schema().fields().len()
    );
    for (index, field) in input.schema().fields().iter().enumerate() {
        let (got, want) = (output.column(index), input.column(index));
        assert_eq!(got.data_type(), want.data_type(), "column {}", field.name());
        assert_eq!(
            got.to_data(),
            want.to_data(),
            "column {} changed on the way through PostgreSQL",
            field.name()
        );
    }
    // What weir created, as PostgreSQL sees it.
    let types: Vec<String> = server
        .client()
        .query(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'every_type'::regclass AND attnum > 0 ORDER BY attnum",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        types,
        [
            "bigint",
            "boolean",
            "bigint",
            "double precision",
            "text",
            "bytea",
            "date",
            "timestamp without time zone",
            "timestamp with time zone"
        ]
    );
}

#[test]
fn an_incremental_source_reads_only_new_and_updated_rows_and_upsert_keeps_the_latest() {
    let server = PgServer::start();
    server
        .client()
        .batch_execute(
            "CREATE TABLE crm (id integer PRIMARY KEY, updated_at timestamp NOT NULL, name text, score numeric(6,2));
             INSERT INTO crm SELECT i, TIMESTAMP '2026-01-01' + (i / 3) * INTERVAL '1 second', 'n' || i, i / 4.0 FROM generate_series(1, 100) i;",
        )
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Batches of 2 rows, with 3 rows per timestamp: batches must grow
    // rather than end inside a timestamp.
    write_plain_pipeline(
        dir.path(),
        "sync.toml",
        &format!(
            "format = \"postgres\"\nconnection = {:?}\ntable = \"crm\"\nincremental_by = \"updated_at\"",
            server.connection_without_password()
        ),
        &pg_sink(
            &server,
            "crm_copy",
            "mode = \"upsert\"\nkey = [\"id\"]\ncreate = true",
        ),
        2,
    );
    let log = run_file(dir.path(), "sync.toml");
    assert!(log.contains("100 read → 100 written"), "{log}");
    // Two new rows, one updated row, one untouched.
    server
        .client()
        .batch_execute(
            "INSERT INTO crm VALUES (101, TIMESTAMP '2026-02-01', 'new', 1.5), (102, TIMESTAMP '2026-02-01', 'newer', NULL);
             UPDATE crm SET name = 'renamed', updated_at = TIMESTAMP '2026-02-02' WHERE id = 50;",
        )
        .unwrap();
    let log = run_file(dir.path(), "sync.toml");
    assert!(
        log.contains("3 read → 3 written"),
        "only the new and updated rows: {log}"
    );
    let log = run_file(dir.path(), "sync.toml");
    assert!(log.contains("0 read → 0 written"), "nothing new: {log}");
    let client = &mut server.client();
    let copy: Vec<(i64, String, Option<String>)> = client
        .query("SELECT id, name, score FROM crm_copy ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(copy.len(), 102);
    assert_eq!(
        copy[49],
        (50, "renamed".to_string(), Some("12.50".to_string()))
    );
    assert_eq!(copy[101], (102, "newer".to_string(), None));
    assert_eq!(
        copy[0],
        (1, "n1".to_string(), Some("0.25".to_string())),
        "numeric is read as its text"
    );
}

#[test]
fn a_postgres_to_postgres_run_killed_after_a_commit_resumes_from_its_high_water_mark() {
    let server = PgServer::start();
    for (run, point) in ["after-pg-commit:2", "mid-copy:3", "after-commit:4"]
        .iter()
        .enumerate()
    {
        let source = format!("events_{run}");
        let table = format!("events_copy_{run}");
        server
            .client()
            .batch_execute(&format!(
                "CREATE TABLE {source} (id bigint, value bigint, grp text);
                 INSERT INTO {source} SELECT i, i * 3, 'g' || (i % 4) FROM generate_series(0, 49999) i;"
            ))
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        write_plain_pipeline(
            dir.path(),
            "pipeline.toml",
            &format!(
                "format = \"postgres\"\nconnection = {:?}\ntable = \"{source}\"\nincremental_by = \"id\"",
                server.connection_without_password()
            ),
            &pg_sink(&server, &table, "create = true"),
            4096,
        );
        let (status, log) = run_weir(
            dir.path(),
            &["run", "pipeline.toml", "--no-progress"],
            Some(point),
        );
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9), "{point}: never reached: {log}");
        // Rows added while the run is down belong to the next run: the
        // resumed run reads what the crashed one would have.
        server
            .client()
            .batch_execute(&format!(
                "INSERT INTO {source} SELECT i, i * 3, 'late' FROM generate_series(50000, 50099) i"
            ))
            .unwrap();
        let log = run_ok(dir.path());
        assert!(log.contains("resumed"), "{point}: {log}");
        assert_eq!(
            id_summary(&server, &table),
            (50_000, 50_000, (0..50_000i64).sum()),
            "{point}: every row of the first run once: {log}"
        );
        let log = run_ok(dir.path());
        assert!(
            log.contains("100 read → 100 written"),
            "{point}: the late rows, once: {log}"
        );
        assert_eq!(
            id_summary(&server, &table),
            (50_100, 50_100, (0..50_100i64).sum()),
            "{point}: every row once after the next run"
        );
    }
}

#[test]
fn a_value_the_column_cannot_take_is_quarantined_with_the_servers_words() {
    let server = PgServer::start();
    let dir = tempfile::tempdir().unwrap();
    // PostgreSQL's text cannot hold a NUL character.
    std::fs::write(
        dir.path().join("notes.jsonl"),
        "{\"id\": 1, \"note\": \"fine\"}\n{\"id\": 2, \"note\": \"nul \\u0000 inside\"}\n{\"id\": 3, \"note\": \"東京\"}\n",
    )
    .unwrap();
    write_plain_pipeline(
        dir.path(),
        "pipeline.toml",
        "format = \"jsonl\"\npath = \"notes.jsonl\"",
        &pg_sink(&server, "notes", "create = true"),
        2,
    );
    let log = run_file(dir.path(), "pipeline.toml");
    let ids: Vec<i64> = server
        .client()
        .query("SELECT id FROM notes ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, vec![1, 3], "{log}");
    let quarantine =
        std::fs::read_to_string(dir.path().join("quarantine-pipeline.toml.jsonl")).unwrap();
    let row: serde_json::Value = serde_json::from_str(quarantine.lines().next().unwrap()).unwrap();
    assert_eq!(row["record"]["id"], 2);
    assert_eq!(row["error_kind"], "database");
    assert!(
        row["message"].as_str().unwrap().contains("22021"),
        "the server's own reason: {row}"
    );
}

#[test]
fn a_server_crash_mid_read_is_retried_and_every_row_is_read_once() {
    let server = PgServer::start();
    server
        .client()
        .batch_execute(
            "CREATE TABLE big (id bigint PRIMARY KEY, payload text);
             INSERT INTO big SELECT i, repeat('x', 200) FROM generate_series(0, 999999) i;",
        )
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_plain_pipeline(
        dir.path(),
        "pipeline.toml",
        &format!(
            "format = \"postgres\"\nconnection = {:?}\nquery = \"SELECT * FROM big ORDER BY id\"",
            server.connection_without_password()
        ),
        "format = \"parquet\"\npath = \"big.parquet\"",
        4096,
    );
    // Crash the server while weir's COPY is running.
    let log = crash_the_server_during_a_run(
        &server,
        dir.path(),
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'COPY (SELECT%'",
        std::time::Duration::from_millis(1000),
    );
    let output = read_parquet(&dir.path().join("big.parquet"));
    let ids = output
        .column_by_name("id")
        .unwrap()
        .as_any()
        .downcast_ref::<arrow::array::Int64Array>()
        .unwrap()
        .values()
        .to_vec();
    assert_eq!(
        ids,
        (0..1_000_000i64).collect::<Vec<_>>(),
        "every row once, in order: {log}"
    );
}
