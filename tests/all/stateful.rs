//! Stateful operators (`[[operators]]`, issue 18) in `weir run`: results
//! equal a group-by computed here, also when the run is killed with
//! SIGKILL at the checkpoint protocol's points and resumed; dedupe keeps
//! its state across runs; late rows and state quotas are quarantined with
//! their kinds.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};

use crate::crash::spawn_weir;
use crate::support::read_jsonl;

/// Runs `weir run pipeline.toml` in `dir`, killed at `crash` (`POINT:K`)
/// when given. Returns whether it was killed.
pub(crate) fn run_weir(dir: &Path, crash: Option<&str>) -> bool {
    let status = spawn_weir(dir, &["run", "pipeline.toml", "--no-progress"], crash)
        .wait()
        .unwrap();
    match status.signal() {
        Some(9) => true,
        None if status.success() => false,
        _ => panic!(
            "{crash:?}: the run ended with {status}: {}",
            std::fs::read_to_string(dir.join("child.log")).unwrap_or_default()
        ),
    }
}

fn write(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Rows, sum and count of non-null arr_delay, distinct tailnums.
type Group = (i64, f64, i64, HashSet<String>);

/// The flights sample grouped here by carrier and month: (flights, mean
/// arr_delay over non-null values, distinct non-null tailnums).
fn flights_by_carrier_month() -> BTreeMap<(String, i64), (i64, Option<f64>, usize)> {
    let text = std::fs::read_to_string(weir_tests::data_dir().join("flights_sample.csv")).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let at = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let (month, arr_delay, carrier, tailnum) =
        (at("month"), at("arr_delay"), at("carrier"), at("tailnum"));
    let mut groups: BTreeMap<(String, i64), Group> = BTreeMap::new();
    for line in lines {
        let fields: Vec<&str> = line.split(',').collect();
        let group = groups
            .entry((fields[carrier].to_string(), fields[month].parse().unwrap()))
            .or_default();
        group.0 += 1;
        if fields[arr_delay] != "NA" {
            group.1 += fields[arr_delay].parse::<f64>().unwrap();
            group.2 += 1;
        }
        if fields[tailnum] != "NA" {
            group.3.insert(fields[tailnum].to_string());
        }
    }
    groups
        .into_iter()
        .map(|(key, (n, sum, count, planes))| {
            (
                key,
                (n, (count > 0).then(|| sum / count as f64), planes.len()),
            )
        })
        .collect()
}

const AGGREGATE: &str = r#"
[pipeline]
name = "per_carrier_month"
batch_size = 64
workers = 2
checkpoint_every_batches = 2

[source]
format = "csv"
path = "flights.csv"
null_values = ["NA"]

[[operators]]
name = "per_carrier_month"
kind = "aggregate"
group_by = ["carrier", "month"]
measures = ["count(*) as flights", "mean(arr_delay) as mean_arr_delay", "count_distinct(tailnum) as planes"]

[sink]
format = "jsonl"
path = "out.jsonl"

[quarantine]
format = "jsonl"
path = "quarantine.jsonl"
"#;

fn aggregate_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        weir_tests::data_dir().join("flights_sample.csv"),
        dir.path().join("flights.csv"),
    )
    .unwrap();
    write(dir.path(), AGGREGATE);
    dir
}

fn assert_aggregates(dir: &Path, what: &str) {
    let expected = flights_by_carrier_month();
    let rows = read_jsonl(&dir.join("out.jsonl"));
    let mut got = BTreeMap::new();
    for row in &rows {
        let key = (
            row["carrier"].as_str().unwrap().to_string(),
            row["month"].as_i64().unwrap(),
        );
        let value = (
            row["flights"].as_i64().unwrap(),
            row["mean_arr_delay"].as_f64(),
            row["planes"].as_u64().unwrap() as usize,
        );
        assert!(
            got.insert(key.clone(), value).is_none(),
            "{what}: group {key:?} twice"
        );
    }
    assert_eq!(got.len(), expected.len(), "{what}: groups");
    for (key, (flights, mean, planes)) in &expected {
        let (got_flights, got_mean, got_planes) = got[key];
        assert_eq!(
            (got_flights, got_planes),
            (*flights, *planes),
            "{what}: {key:?}"
        );
        match (mean, got_mean) {
            (Some(a), Some(b)) => assert!((a - b).abs() < 1e-9, "{what}: {key:?} mean {a} vs {b}"),
            (None, None) => {}
            other => panic!("{what}: {key:?} mean {other:?}"),
        }
    }
    let leftovers: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("weir-checkpoint") || n.contains(".staged"))
        .collect();
    assert!(leftovers.is_empty(), "{what}: leftovers {leftovers:?}");
}

/// count, mean(arr_delay) and count_distinct(tailnum) per carrier and
/// month over the flights sample equal the group-by computed here, for an
/// uninterrupted run and for runs killed at every checkpoint point (23
/// batches of 64 rows in epochs of 2 batches) and resumed.
#[test]
fn aggregate_equals_a_group_by_also_when_killed_and_resumed() {
    let dir = aggregate_dir();
    assert!(!run_weir(dir.path(), None));
    assert_aggregates(dir.path(), "uninterrupted");
    // One batch per epoch: the epoch left open when the input ends is
    // empty but for the closed windows' rows, and must be committed.
    let dir = aggregate_dir();
    let text = std::fs::read_to_string(dir.path().join("pipeline.toml")).unwrap();
    write(
        dir.path(),
        &text.replace(
            "checkpoint_every_batches = 2",
            "checkpoint_every_batches = 1",
        ),
    );
    assert!(!run_weir(dir.path(), None));
    assert_aggregates(dir.path(), "one batch per epoch");
    for crash in [
        "after-commit:1",
        "after-commit:5",
        "after-part-fsync:7",
        "mid-commit-rename:3",
        "after-checkpoint-rename:4",
        "mid-part-write:1",
        "mid-publish:1",
        "after-publish:1",
    ] {
        let dir = aggregate_dir();
        assert!(run_weir(dir.path(), Some(crash)), "{crash}: never reached");
        assert!(!run_weir(dir.path(), None));
        assert_aggregates(dir.path(), crash);
    }
}

/// `id,ts` rows: ids 0..n, one minute apart from 2026-01-01; `dups` maps
/// a row position to an earlier id it repeats (with that id's time).
fn events_csv(path: &Path, n: usize, dups: &HashMap<usize, usize>) {
    let mut text = String::from("id,ts,value\n");
    for i in 0..n {
        let id = dups.get(&i).copied().unwrap_or(i);
        let minute = id as i64;
        text.push_str(&format!(
            "{id},2026-01-01T{:02}:{:02}:00Z,{}\n",
            minute / 60 % 24,
            minute % 60,
            id % 7
        ));
    }
    std::fs::write(path, text).unwrap();
}

const DEDUPE: &str = r#"
[pipeline]
name = "unique"
batch_size = 100
workers = 2
checkpoint_every_batches = 3

[source]
format = "csv"
path = "events.csv"

[[operators]]
name = "unique"
kind = "dedupe"
key = ["id"]
duplicates = "quarantine"

[sink]
format = "jsonl"
path = "out.jsonl"
mode = "overwrite"

[quarantine]
format = "jsonl"
path = "quarantine.jsonl"
"#;

fn ids(
    rows: &[serde_json::Value],
    pick: impl Fn(&serde_json::Value) -> &serde_json::Value,
) -> Vec<i64> {
    let mut ids: Vec<i64> = rows.iter().map(|r| pick(r).as_i64().unwrap()).collect();
    ids.sort_unstable();
    ids
}

/// dedupe on an input with known duplicates (every 7th row repeats an id
/// seen 1 to 300 rows before): exactly the first row of each id passes
/// and each duplicate is quarantined as `duplicate`, uninterrupted and
/// after kills; a second run over new rows drops the ids the first one
/// saw (state persists across runs) and a reset forgets them.
#[test]
fn dedupe_passes_each_key_once_across_kills_and_runs() {
    let n: usize = 2000;
    let dups: HashMap<usize, usize> = (1..n)
        .filter(|i| i % 7 == 0)
        .map(|i| {
            // Repeat an id that did appear: not itself a duplicate's row.
            let j = i.saturating_sub(1 + i * 13 % 300);
            (i, if j % 7 == 0 && j > 0 { j - 1 } else { j })
        })
        .collect();
    let unique: Vec<i64> = (0..n)
        .filter(|i| !dups.contains_key(i))
        .map(|i| i as i64)
        .collect();
    let mut duplicates: Vec<i64> = dups.values().map(|&id| id as i64).collect();
    duplicates.sort_unstable();
    for crash in [
        None,
        Some("after-commit:2"),
        Some("mid-part-write:9"),
        Some("mid-publish:1"),
    ] {
        let what = format!("{crash:?}");
        let dir = tempfile::tempdir().unwrap();
        events_csv(&dir.path().join("events.csv"), n, &dups);
        write(dir.path(), DEDUPE);
        if let Some(crash) = crash {
            assert!(run_weir(dir.path(), Some(crash)), "{what}: never reached");
        }
        assert!(!run_weir(dir.path(), None));
        let out = read_jsonl(&dir.path().join("out.jsonl"));
        assert_eq!(ids(&out, |r| &r["id"]), unique, "{what}: output");
        let quarantine = read_jsonl(&dir.path().join("quarantine.jsonl"));
        assert_eq!(
            ids(&quarantine, |r| &r["record"]["id"]),
            duplicates,
            "{what}: quarantine"
        );
        assert!(quarantine.iter().all(|r| r["error_kind"] == "duplicate"));
        if crash.is_some() {
            continue;
        }
        // A second run over ids 1900..2100: those the first run passed
        // are dropped.
        let mut text = String::from("id,ts,value\n");
        for id in 1900..2100 {
            text.push_str(&format!("{id},2026-01-02T00:00:00Z,0\n"));
        }
        std::fs::write(dir.path().join("events.csv"), text).unwrap();
        assert!(!run_weir(dir.path(), None));
        let out = read_jsonl(&dir.path().join("out.jsonl"));
        let new: Vec<i64> = (1900..2100).filter(|id| !unique.contains(id)).collect();
        assert_eq!(ids(&out, |r| &r["id"]), new, "second run");
        // `weir state reset` forgets every key.
        let status = spawn_weir(dir.path(), &["state", "reset", "pipeline.toml"], None)
            .wait()
            .unwrap();
        assert!(
            status.success(),
            "{}",
            std::fs::read_to_string(dir.path().join("child.log")).unwrap()
        );
        assert!(!run_weir(dir.path(), None));
        let out = read_jsonl(&dir.path().join("out.jsonl"));
        assert_eq!(out.len(), 200, "after reset");
    }
}

/// Tumbling hourly windows on event time with 10 minutes of allowed
/// lateness: every 50th row (after the first 200) is three hours behind
/// the stream and goes to the quarantine as `late`; each window's count
/// and sum equal those of the on-time rows in it.
#[test]
fn late_rows_are_quarantined_and_windows_hold_the_on_time_rows() {
    let dir = tempfile::tempdir().unwrap();
    let n = 1300i64;
    let mut text = String::from("id,ts,value\n");
    let mut late = Vec::new();
    let mut windows: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
    for id in 0..n {
        let minute = if id >= 200 && id % 50 == 0 {
            late.push(id);
            id - 180
        } else {
            let window = windows.entry(id / 60).or_default();
            window.0 += 1;
            window.1 += id % 7;
            id
        };
        text.push_str(&format!(
            "{id},2026-01-01T{:02}:{:02}:00Z,{}\n",
            minute / 60,
            minute % 60,
            id % 7
        ));
    }
    std::fs::write(dir.path().join("events.csv"), text).unwrap();
    write(
        dir.path(),
        r#"
[pipeline]
batch_size = 25
workers = 1

[source]
format = "csv"
path = "events.csv"

[[operators]]
name = "hourly"
kind = "aggregate"
event_time = "ts"
window = "1h"
allowed_lateness = "10m"
measures = ["count(*) as rows", "sum(value) as total"]

[sink]
format = "jsonl"
path = "out.jsonl"

[quarantine]
format = "jsonl"
path = "quarantine.jsonl"
"#,
    );
    assert!(!run_weir(dir.path(), None));
    let quarantine = read_jsonl(&dir.path().join("quarantine.jsonl"));
    assert_eq!(ids(&quarantine, |r| &r["record"]["id"]), late);
    assert!(
        quarantine.iter().all(|r| r["error_kind"] == "late"),
        "{:?}",
        quarantine[0]
    );
    let out = read_jsonl(&dir.path().join("out.jsonl"));
    let got: BTreeMap<i64, (i64, i64)> = out
        .iter()
        .map(|r| {
            let start = chrono::DateTime::parse_from_rfc3339(r["window_start"].as_str().unwrap())
                .unwrap()
                .timestamp();
            let hour = (start - 1_767_225_600) / 3600;
            (
                hour,
                (r["rows"].as_i64().unwrap(), r["total"].as_i64().unwrap()),
            )
        })
        .collect();
    assert_eq!(got, windows);
}

/// A dedupe whose state would pass its max_state_bytes quarantines the
/// batch that would, as `state_quota`, and the run goes on.
#[test]
fn a_batch_over_the_state_quota_is_quarantined_alone() {
    let dir = tempfile::tempdir().unwrap();
    events_csv(&dir.path().join("events.csv"), 1000, &HashMap::new());
    write(
        dir.path(),
        &DEDUPE.replace(
            "duplicates = \"quarantine\"",
            "duplicates = \"quarantine\"\nmax_state_bytes = 8000",
        ),
    );
    assert!(!run_weir(dir.path(), None));
    let out = read_jsonl(&dir.path().join("out.jsonl"));
    let quarantine = read_jsonl(&dir.path().join("quarantine.jsonl"));
    assert_eq!(out.len() + quarantine.len(), 1000);
    assert!(!out.is_empty() && !quarantine.is_empty());
    assert!(quarantine.iter().all(|r| r["error_kind"] == "state_quota"));
    assert!(
        quarantine[0]["message"]
            .as_str()
            .unwrap()
            .contains("max_state_bytes")
    );
}

/// `dedupe` over HTTP in `weir serve`, killed with SIGKILL at the delivery
/// protocol's points while a client retries each request (same
/// `Idempotency-Key`) until acknowledged: every id reaches the sink once
/// and every later occurrence the quarantine as `duplicate`, also for ids
/// repeated across kills (state committed with the output, and applied at
/// restart when a kill came between the two); the status shows the state.
#[test]
fn dedupe_over_http_is_exact_across_kills() {
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("pipeline.toml"),
        r#"
[pipeline]
name = "events"

[source]
format = "jsonl"
schema = [
  { name = "id", type = "int64" },
  { name = "value", type = "int64" },
]

[[operators]]
name = "unique"
kind = "dedupe"
key = ["id"]
duplicates = "quarantine"

[sink]
format = "jsonl"
path = "out"

[quarantine]
format = "jsonl"
path = "quarantine"
"#,
    )
    .unwrap();
    let port = weir_tests::free_port();
    std::fs::write(
        dir.path().join("service.toml"),
        format!(
            "[service]\nstate_dir = \"state\"\nlisten = \"127.0.0.1:{port}\"\n\n[[pipelines]]\nfile = \"pipeline.toml\"\nlinger_ms = 5\n"
        ),
    )
    .unwrap();
    let url = format!("http://127.0.0.1:{port}/v1/pipelines/events");
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    // Request r carries ids 10r..10r+20: each id arrives in two requests.
    let body = |r: i64| -> String {
        (10 * r..10 * r + 20)
            .map(|id| format!("{{\"id\":{id},\"value\":{r}}}\n"))
            .collect()
    };
    let requests = 40i64;
    let points = [
        "after-commit",
        "after-part-fsync",
        "after-checkpoint-append",
        "mid-commit-rename",
    ];
    let mut child = spawn_weir(
        dir.path(),
        &["serve", "service.toml"],
        Some("after-commit:3"),
    );
    let mut kills = 0;
    for r in 0..requests {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            assert!(
                Instant::now() < deadline,
                "request {r} was never acknowledged"
            );
            if let Some(status) = child.try_wait().unwrap() {
                assert_eq!(status.signal(), Some(9), "the service stopped: {status}");
                kills += 1;
                // Kill again at the next point a few batches on, or run
                // clean once every point was hit.
                let crash = (kills < 2 * points.len())
                    .then(|| format!("{}:{}", points[kills % points.len()], 2 + kills % 3));
                child = spawn_weir(dir.path(), &["serve", "service.toml"], crash.as_deref());
            }
            let answer = http
                .post(format!("{url}/records"))
                .header("content-type", "application/x-ndjson")
                .header("idempotency-key", format!("request-{r}"))
                .body(body(r))
                .send();
            if let Ok(response) = answer
                && response.status().is_success()
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    assert!(kills >= 4, "only {kills} kills happened");
    let status: serde_json::Value = loop {
        if let Ok(response) = http.get(&url).send()
            && response.status().is_success()
        {
            break response.json().unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let distinct = 10 * (requests - 1) + 20;
    assert_eq!(status["operators"][0]["state_keys"], distinct, "{status}");
    child.kill().unwrap();
    child.wait().unwrap();
    let out = crate::serve::read_parts(&dir.path().join("out"));
    assert_eq!(ids(&out, |r| &r["id"]), (0..distinct).collect::<Vec<_>>());
    let quarantine = crate::serve::read_parts(&dir.path().join("quarantine"));
    // Ids 10..10·requests arrived twice: the second occurrence is the
    // duplicate.
    assert_eq!(
        ids(&quarantine, |r| &r["record"]["id"]),
        (10..10 * requests).collect::<Vec<_>>()
    );
    assert!(quarantine.iter().all(|r| r["error_kind"] == "duplicate"));
}

/// A windowed aggregate in `weir serve`: hourly windows close as the
/// watermark passes them and their rows reach the sink; late rows are
/// quarantined as `late`; an hour that straddles a restart of the service
/// counts every row (open windows live in the committed state).
#[test]
fn windows_in_serve_close_on_the_watermark_and_survive_a_restart() {
    use crate::serve::{Running, get, post};
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("pipeline.toml"),
        r#"
[pipeline]
name = "hourly"

[source]
format = "jsonl"
schema = [
  { name = "id", type = "int64" },
  { name = "ts", type = "timestamp" },
  { name = "value", type = "int64" },
]

[[operators]]
name = "hourly"
kind = "aggregate"
event_time = "ts"
window = "1h"
allowed_lateness = "5m"
measures = ["count(*) as rows", "sum(value) as total"]

[sink]
format = "jsonl"
path = "out"

[quarantine]
format = "jsonl"
path = "quarantine"
"#,
    )
    .unwrap();
    let service = crate::serve::write_service(dir.path(), "", "linger_ms = 1");
    // Minute m of 2026-01-01, id m, value m % 5.
    let row = |m: i64| {
        format!(
            "{{\"id\":{m},\"ts\":\"2026-01-01T{:02}:{:02}:00\",\"value\":{}}}\n",
            m / 60,
            m % 60,
            m % 5
        )
    };
    let send = |running: &Running, minutes: std::ops::Range<i64>| {
        for chunk in minutes.collect::<Vec<_>>().chunks(20) {
            let body: String = chunk.iter().map(|&m| row(m)).collect();
            let (status, ack) = running.oneshot(post(
                "/v1/pipelines/hourly/records",
                "application/x-ndjson",
                body,
            ));
            assert!(status.is_success(), "{ack}");
        }
    };
    let running = Running::start(&service);
    send(&running, 0..150);
    // Minute 10 again, long after its hour closed: late.
    send(&running, 10..11);
    let (_, status) = running.oneshot(get("/v1/pipelines/hourly"));
    assert_eq!(status["operators"][0]["late"], 1, "{status}");
    running.shutdown().unwrap();
    // Hour 2 (minutes 120..180) is open across the restart.
    let running = Running::start(&service);
    send(&running, 150..200);
    running.shutdown().unwrap();
    let out = crate::serve::read_parts(&dir.path().join("out"));
    let windows: BTreeMap<String, (i64, i64)> = out
        .iter()
        .map(|r| {
            (
                r["window_start"].as_str().unwrap().to_string(),
                (r["rows"].as_i64().unwrap(), r["total"].as_i64().unwrap()),
            )
        })
        .collect();
    // The watermark reached 199 - 5 minutes: hours 0, 1 and 2 closed.
    let expected: BTreeMap<String, (i64, i64)> = (0..3)
        .map(|h| {
            let minutes = h * 60..h * 60 + 60;
            (
                format!("2026-01-01T{h:02}:00:00Z"),
                (60, minutes.map(|m| m % 5).sum()),
            )
        })
        .collect();
    assert_eq!(windows, expected);
    let quarantine = crate::serve::read_parts(&dir.path().join("quarantine"));
    assert_eq!(quarantine.len(), 1);
    assert_eq!(quarantine[0]["error_kind"], "late");
    assert_eq!(quarantine[0]["record"]["id"], 10);
}

/// A batch over a later operator's quota is undone in every operator: the
/// earlier dedupe has not remembered its keys, so the quarantined rows
/// pass when sent again with a larger quota.
#[test]
fn a_batch_over_the_quota_changes_no_operator() {
    let dir = tempfile::tempdir().unwrap();
    events_csv(&dir.path().join("events.csv"), 1000, &HashMap::new());
    let two = |quota: u64| {
        DEDUPE.replace(
            "[sink]",
            &format!(
                "[[operators]]\nname = \"again\"\nkind = \"dedupe\"\nkey = [\"id\", \"value\"]\nmax_state_bytes = {quota}\n\n[sink]"
            ),
        )
    };
    write(dir.path(), &two(12_000));
    assert!(!run_weir(dir.path(), None));
    let passed = read_jsonl(&dir.path().join("out.jsonl"));
    let quarantined = read_jsonl(&dir.path().join("quarantine.jsonl"));
    assert!(!passed.is_empty() && !quarantined.is_empty());
    assert!(
        quarantined
            .iter()
            .all(|r| r["error_kind"] == "state_quota" && r["stage"] == "again")
    );
    // The same input again with room: what passed is now a duplicate for
    // `unique`; what was quarantined passes.
    write(dir.path(), &two(1 << 30));
    assert!(!run_weir(dir.path(), None));
    let out = read_jsonl(&dir.path().join("out.jsonl"));
    assert_eq!(
        ids(&out, |r| &r["id"]),
        ids(&quarantined, |r| &r["record"]["id"])
    );
}

/// State written under other settings is refused with the way out, and
/// `weir state reset` is that way.
#[test]
fn changed_settings_over_kept_state_are_refused_until_reset() {
    let dir = tempfile::tempdir().unwrap();
    events_csv(&dir.path().join("events.csv"), 200, &HashMap::new());
    write(dir.path(), DEDUPE);
    assert!(!run_weir(dir.path(), None));
    write(
        dir.path(),
        &DEDUPE.replace("key = [\"id\"]", "key = [\"value\"]"),
    );
    let status = spawn_weir(dir.path(), &["run", "pipeline.toml", "--no-progress"], None)
        .wait()
        .unwrap();
    assert!(!status.success());
    let log = std::fs::read_to_string(dir.path().join("child.log")).unwrap();
    assert!(
        log.contains("settings changed") && log.contains("weir state reset"),
        "{log}"
    );
    let reset = spawn_weir(
        dir.path(),
        &["state", "reset", "pipeline.toml", "--operator", "unique"],
        None,
    )
    .wait()
    .unwrap();
    assert!(reset.success());
    assert!(!run_weir(dir.path(), None));
    // Seven distinct values (id % 7): seven rows pass.
    assert_eq!(read_jsonl(&dir.path().join("out.jsonl")).len(), 7);
}

/// `approx_count_distinct` beside `count_distinct` over generated groups
/// of 40, 4,000 and 40,000 distinct values (each value three times): the
/// sketch is exact for the small group and within 5% (about three
/// standard errors at precision 12) for the others, and a run killed
/// mid-way and resumed gives the very same estimates (the sketch is
/// stored in the state and goes on counting).
#[test]
fn approx_count_distinct_is_close_to_exact_and_survives_a_kill() {
    let groups = [("small", 40usize), ("medium", 4_000), ("large", 40_000)];
    let write_input = |dir: &Path| {
        let mut text = String::from("grp,value\n");
        for _round in 0..3 {
            for (name, n) in groups {
                for v in 0..n {
                    // Rounds repeat every value; interleaved groups.
                    text.push_str(&format!("{name},{}\n", (v * 7919) % n));
                }
            }
        }
        std::fs::write(dir.join("values.csv"), text).unwrap();
        write(
            dir,
            r#"
[pipeline]
name = "distinct"
batch_size = 4096
checkpoint_every_batches = 4

[source]
format = "csv"
path = "values.csv"

[[operators]]
name = "per_group"
kind = "aggregate"
group_by = ["grp"]
measures = ["count_distinct(value) as exact", "approx_count_distinct(value) as approx"]

[sink]
format = "jsonl"
path = "out.jsonl"
mode = "overwrite"

[quarantine]
format = "jsonl"
path = "quarantine.jsonl"
"#,
        );
    };
    let results = |dir: &Path| -> BTreeMap<String, (i64, i64)> {
        read_jsonl(&dir.join("out.jsonl"))
            .iter()
            .map(|r| {
                (
                    r["grp"].as_str().unwrap().to_string(),
                    (r["exact"].as_i64().unwrap(), r["approx"].as_i64().unwrap()),
                )
            })
            .collect()
    };
    let dir = tempfile::tempdir().unwrap();
    write_input(dir.path());
    assert!(!run_weir(dir.path(), None));
    let clean = results(dir.path());
    for (name, n) in groups {
        let (exact, approx) = clean[name];
        assert_eq!(exact, n as i64, "{name}");
        let error = (approx - exact).abs() as f64 / exact as f64;
        if n <= 100 {
            assert_eq!(approx, exact, "{name}");
        } else {
            assert!(error < 0.05, "{name}: {approx} for {exact} ({error:.3})");
        }
    }
    let dir = tempfile::tempdir().unwrap();
    write_input(dir.path());
    assert!(run_weir(dir.path(), Some("after-commit:2")));
    assert!(!run_weir(dir.path(), None));
    assert_eq!(results(dir.path()), clean, "killed and resumed");
}
