//! Hostile components: each misbehaves on one batch of three. The run must
//! survive, quarantine exactly that batch with the right error kind, replace
//! the instance, and write the other two batches.

use std::time::{Duration, Instant};

use crate::support::{action_csv, one_stage_pipeline, read_jsonl, run};

/// Runs `component` as a transform over three 2-row batches, the second of
/// which holds `trigger`, and checks the containment contract. Returns the
/// quarantine message.
pub(crate) fn contained(component: &str, trigger: &str, limits: &str, kind: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    action_csv(dir.path(), &["ok", "ok", "ok", trigger, "ok", "ok"]);
    let pipeline = one_stage_pipeline(dir.path(), "transform", component, 2, limits);
    let report = run(&pipeline);

    assert_eq!(report.records.read, 6);
    assert_eq!(
        report.records.written, 4,
        "the batches before and after are written"
    );
    assert_eq!(
        report.records.quarantined, 2,
        "the whole failing batch, no more"
    );
    let stage = &report.stages[0];
    assert_eq!(
        stage.errors.get(kind),
        Some(&1),
        "errors: {:?}",
        stage.errors
    );
    assert_eq!(stage.instances, 2, "the failed instance was replaced once");

    let written: Vec<i64> = read_jsonl(&dir.path().join("out.jsonl"))
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    assert_eq!(written, vec![0, 1, 4, 5]);
    let quarantine = read_jsonl(&dir.path().join("quarantine.jsonl"));
    let ids: Vec<i64> = quarantine
        .iter()
        .map(|q| q["record"]["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![2, 3]);
    for row in &quarantine {
        assert_eq!(row["error_kind"], kind);
        assert_eq!(row["stage"], "probe");
        assert_eq!(row["plugin_sha256"].as_str().unwrap().len(), 64);
        assert_eq!(row["run_id"], report.run_id.as_str());
    }
    quarantine[0]["message"].as_str().unwrap().to_string()
}

#[test]
fn infinite_loop_is_stopped_by_fuel() {
    let message = contained(
        weir_tests::SPIN,
        "loop",
        "fuel_per_batch = 50_000_000\ntimeout_ms = 600_000",
        "fuel_exhausted",
    );
    assert!(message.contains("50000000 fuel units"), "{message}");
}

#[test]
fn infinite_loop_is_stopped_by_the_deadline() {
    let started = Instant::now();
    let message = contained(
        weir_tests::SPIN,
        "loop",
        "fuel_per_batch = 1_000_000_000_000_000\ntimeout_ms = 300",
        "timeout",
    );
    assert!(message.contains("timeout_ms = 300"), "{message}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the deadline cut the loop short"
    );
}

#[test]
fn memory_bomb_is_stopped_by_the_memory_cap() {
    let message = contained(
        weir_tests::BOMB,
        "bomb",
        "max_memory_bytes = 67_108_864",
        "memory_limit",
    );
    assert!(message.contains("max_memory_bytes = 67108864"), "{message}");
}

#[test]
fn panic_is_a_trap_with_the_panic_message() {
    let message = contained(weir_tests::PANIC, "trap", "", "trap");
    assert!(
        message.contains("poison row 1"),
        "the plugin's stderr is kept: {message}"
    );
}

#[test]
fn malformed_batch_is_rejected() {
    let message = contained(weir_tests::MALFORMED, "malformed", "", "malformed_output");
    assert!(message.contains("2 values for 3 rows"), "{message}");
}

#[test]
fn returned_error_quarantines_the_batch() {
    let message = contained(weir_tests::REFUSE, "error", "", "plugin_error");
    assert!(
        message.contains("invalid-input") && message.contains("row 1 asked for an error"),
        "{message}"
    );
}

#[test]
fn huge_output_is_stopped_by_the_output_cap() {
    let message = contained(
        weir_tests::HUGE,
        "huge",
        "max_output_bytes = 1_048_576",
        "output_too_large",
    );
    assert!(message.contains("max_output_bytes = 1048576"), "{message}");
}

#[test]
fn on_error_fail_stops_the_run_and_commits_nothing() {
    let dir = tempfile::tempdir().unwrap();
    action_csv(dir.path(), &["ok", "ok", "ok", "trap"]);
    let pipeline = one_stage_pipeline(
        dir.path(),
        "transform",
        weir_tests::PANIC,
        2,
        "on_error = \"fail\"",
    );
    let pipeline = weir::pipeline::Pipeline::load(&pipeline).unwrap();
    let error = pipeline.run(&Default::default()).unwrap_err();
    assert!(
        format!("{error:#}").contains("on_error = \"fail\""),
        "{error:#}"
    );
    assert!(!dir.path().join("out.jsonl").exists());
    assert!(!dir.path().join("quarantine.jsonl").exists());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("weir-"))
        .collect();
    assert!(leftovers.is_empty(), "staging files removed: {leftovers:?}");
}

#[test]
fn validator_verdicts_split_rows_with_reasons() {
    let dir = tempfile::tempdir().unwrap();
    action_csv(dir.path(), &["ok", "bad", "", "ok", "bad"]);
    let pipeline = one_stage_pipeline(dir.path(), "validate", weir_tests::FLAG, 2, "");
    let report = run(&pipeline);
    assert_eq!((report.records.written, report.records.quarantined), (2, 3));
    let quarantine = read_jsonl(&dir.path().join("quarantine.jsonl"));
    let rules: Vec<(i64, &str)> = quarantine
        .iter()
        .map(|q| {
            (
                q["record"]["id"].as_i64().unwrap(),
                q["rule"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rules,
        vec![(1, "not_bad"), (2, "action_present"), (4, "not_bad")]
    );
    assert!(quarantine.iter().all(|q| q["error_kind"] == "validation"));
    assert!(
        quarantine[1]["record"]["action"].is_null(),
        "nulls are explicit in the record"
    );
}
