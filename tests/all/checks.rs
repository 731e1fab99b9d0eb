//! Data checks and alerts: after five normal runs, a run with half the
//! usual rows, a source with a dropped column and a quarantine spike each
//! raise exactly the expected alert at a loopback webhook; normal runs
//! raise none; a check with `on_fail = "fail"` fails the run and commits
//! nothing; the results are in the history.

use std::path::Path;

use serde_json::Value;
use weir::checks::Status;
use weir::history::History;
use weir::pipeline::{Pipeline, RunOptions};
use weir::report::RunReport;

use crate::support::{Received, http_endpoint};

fn pipeline_text(webhook: &str, volume_extra: &str) -> String {
    format!(
        r#"
[pipeline]
workers = 1

[source]
format = "csv"
path = "input.csv"

[[stages]]
name = "v"
kind = "validate"
plugin = "builtin:check"
config = {{ rules = [{{ id = "positive", column = "value", check = "range", ge = 0 }}] }}

[sink]
format = "parquet"
path = "out.parquet"
mode = "overwrite"

[quarantine]
format = "jsonl"
path = "quarantine.jsonl"

[checks]
webhook = "{webhook}"
webhook_retries = 2
webhook_timeout_ms = 2000

[checks.volume]
min_runs = 3
{volume_extra}

[checks.quarantine]
min_runs = 3

[checks.nulls]
max_fraction = 0.5
"#
    )
}

/// `input.csv` with `rows` rows, `bad` of them negative (quarantined),
/// with or without the `category` column.
fn input(dir: &Path, rows: usize, bad: usize, with_category: bool) {
    let mut text = String::from(if with_category {
        "id,value,category\n"
    } else {
        "id,value\n"
    });
    for i in 0..rows {
        let value = if i < bad { -1 } else { i as i64 };
        match with_category {
            true => text.push_str(&format!("{i},{value},c{}\n", i % 7)),
            false => text.push_str(&format!("{i},{value}\n")),
        }
    }
    std::fs::write(dir.join("input.csv"), text).unwrap();
}

fn run(dir: &Path) -> anyhow::Result<RunReport> {
    let pipeline = Pipeline::load(&dir.join("pipeline.toml")).unwrap_or_else(|e| panic!("{e}"));
    pipeline.run(&RunOptions::default())
}

/// A pipeline with five normal runs behind it (about 1000 rows, 1%
/// quarantined), none of which alerted.
fn with_normal_history(volume_extra: &str, refuse: usize) -> (tempfile::TempDir, Received) {
    let dir = tempfile::tempdir().unwrap();
    let (url, received) = http_endpoint(true, refuse);
    std::fs::write(
        dir.path().join("pipeline.toml"),
        pipeline_text(&url, volume_extra),
    )
    .unwrap();
    for rows in [1000, 1010, 990, 1005, 995] {
        input(dir.path(), rows, rows / 100, true);
        let report = run(dir.path()).unwrap();
        assert!(
            report.checks.iter().all(|c| c.status == Status::Ok),
            "{:#?}",
            report.checks
        );
    }
    assert!(
        received.lock().unwrap().is_empty(),
        "normal runs raise no alert"
    );
    (dir, received)
}

/// The checks named in each alert received.
fn alerted(received: &Received) -> Vec<Vec<String>> {
    received
        .lock()
        .unwrap()
        .iter()
        .map(|(_, body)| {
            body["checks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["check"].as_str().unwrap().to_string())
                .collect()
        })
        .collect()
}

#[test]
fn half_the_usual_rows_raise_a_volume_alert() {
    let (dir, received) = with_normal_history("", 0);
    input(dir.path(), 500, 5, true);
    let report = run(dir.path()).unwrap();
    assert_eq!(alerted(&received), [["volume"]]);
    let body: Value = received.lock().unwrap()[0].1.clone();
    assert_eq!(body["run_id"], report.run_id.as_str());
    assert_eq!(body["status"], "fail");
    assert_eq!(body["run_failed"], false);
    let check = &body["checks"][0];
    assert_eq!(check["observed"], 500.0);
    let expected = check["expected"].as_array().unwrap();
    assert!(expected[0].as_f64().unwrap() > 500.0, "{check}");
    // A normal run afterwards raises nothing more.
    input(dir.path(), 1000, 10, true);
    run(dir.path()).unwrap();
    assert_eq!(alerted(&received).len(), 1);
}

#[test]
fn a_dropped_column_raises_a_schema_alert_through_a_retry() {
    // The webhook refuses the first attempt: the retry delivers it.
    let (dir, received) = with_normal_history("", 1);
    input(dir.path(), 1000, 10, false);
    let report = run(dir.path()).unwrap();
    assert_eq!(alerted(&received), [["schema"]]);
    let schema = report.checks.iter().find(|c| c.check == "schema").unwrap();
    assert!(
        schema.message.contains("`category` removed"),
        "{}",
        schema.message
    );

    let history =
        History::open(&weir::config::history_file_for(&dir.path().join("pipeline.toml")).unwrap())
            .unwrap();
    let recorded = history.show(&report.run_id).unwrap().unwrap();
    let checks = recorded.checks.expect("the checks are in the history");
    assert!(
        checks
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["check"] == "schema" && c["status"] == "fail"),
        "{checks:#}"
    );
}

#[test]
fn a_quarantine_spike_raises_a_quarantine_alert() {
    let (dir, received) = with_normal_history("", 0);
    input(dir.path(), 1000, 300, true);
    run(dir.path()).unwrap();
    assert_eq!(alerted(&received), [["quarantine"]]);
}

#[test]
fn a_check_set_to_fail_fails_the_run_and_commits_nothing() {
    let (dir, received) = with_normal_history("on_fail = \"fail\"", 0);
    let out = dir.path().join("out.parquet");
    let before = std::fs::read(&out).unwrap();
    input(dir.path(), 400, 4, true);
    let error = run(dir.path()).unwrap_err().to_string();
    assert!(
        error.contains("data checks failed") && error.contains("volume"),
        "{error}"
    );
    assert_eq!(
        std::fs::read(&out).unwrap(),
        before,
        "the output was not replaced"
    );
    assert_eq!(alerted(&received), [["volume"]]);
    assert_eq!(received.lock().unwrap()[0].1["run_failed"], true);
    let history =
        History::open(&weir::config::history_file_for(&dir.path().join("pipeline.toml")).unwrap())
            .unwrap();
    let newest = &history.list(1).unwrap()[0];
    assert_eq!(newest.status, "failed");
    assert!(newest.checks.is_some());
    // The failed run does not become part of what is learned: a normal
    // run afterwards is fine.
    input(dir.path(), 1000, 10, true);
    run(dir.path()).unwrap();
    assert_eq!(alerted(&received).len(), 1);
}
