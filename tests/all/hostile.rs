//! Hostile components: each misbehaves on one row of one batch of three.
//! The run must survive, find that row by splitting its batch, quarantine
//! exactly that row with the right error kind, replace the instance, and
//! write every other row.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::{action_csv, one_stage_pipeline, read_jsonl, run};

/// Runs `component` as a transform over three 2-row batches, the second of
/// which holds `trigger` in its second row, and checks the containment
/// contract. Returns the quarantine message.
pub(crate) fn contained(component: &str, trigger: &str, limits: &str, kind: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    action_csv(dir.path(), &["ok", "ok", "ok", trigger, "ok", "ok"]);
    let pipeline = one_stage_pipeline(dir.path(), "transform", component, 2, limits);
    let report = run(&pipeline);

    assert_eq!(report.records.read, 6);
    assert_eq!(report.records.written, 5, "every other row is written");
    assert_eq!(report.records.quarantined, 1, "only the poison row");
    let stage = &report.stages[0];
    assert_eq!(
        stage.errors.get(kind),
        Some(&2),
        "the batch and then the poison row alone failed: {:?}",
        stage.errors
    );
    assert_eq!(stage.bisect_calls, 2, "one split: two halves");
    assert_eq!(
        stage.instances, 3,
        "the failed instance was replaced after each failure"
    );

    let written: Vec<i64> = read_jsonl(&dir.path().join("out.jsonl"))
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    assert_eq!(written, vec![0, 1, 2, 4, 5]);
    let quarantine = read_jsonl(&dir.path().join("quarantine.jsonl"));
    let ids: Vec<i64> = quarantine
        .iter()
        .map(|q| q["record"]["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![3]);
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
        message.contains("poison row 0"),
        "the plugin's stderr is kept: {message}"
    );
}

#[test]
fn malformed_batch_is_rejected() {
    let message = contained(weir_tests::MALFORMED, "malformed", "", "malformed_output");
    assert!(message.contains("1 values for 2 rows"), "{message}");
}

#[test]
fn returned_error_quarantines_the_batch() {
    let message = contained(weir_tests::REFUSE, "error", "", "plugin_error");
    assert!(
        message.contains("invalid-input") && message.contains("row 0 asked for an error"),
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
        // The state directory keeps the run history, on purpose.
        .filter(|n| n.contains("weir-") && !n.ends_with(".weir-state"))
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

/// A batch of `rows` rows of which `poison` trap, run with `stage_extra`.
fn poison_run(
    rows: usize,
    poison: &[usize],
    batch_size: usize,
    stage_extra: &str,
) -> (tempfile::TempDir, weir::report::RunReport) {
    let dir = tempfile::tempdir().unwrap();
    let actions: Vec<&str> = (0..rows)
        .map(|i| if poison.contains(&i) { "trap" } else { "ok" })
        .collect();
    action_csv(dir.path(), &actions);
    let pipeline = one_stage_pipeline(
        dir.path(),
        "transform",
        weir_tests::PANIC,
        batch_size,
        stage_extra,
    );
    let report = run(&pipeline);
    (dir, report)
}

fn quarantined_ids(dir: &std::path::Path) -> Vec<i64> {
    read_jsonl(&dir.join("quarantine.jsonl"))
        .iter()
        .map(|q| q["record"]["id"].as_i64().unwrap())
        .collect()
}

#[test]
fn splitting_finds_poison_rows_in_a_large_batch() {
    let (dir, report) = poison_run(1000, &[3, 617, 618], 1000, "");
    assert_eq!(report.records.written, 997);
    assert_eq!(quarantined_ids(dir.path()), vec![3, 617, 618]);
    let calls = report.stages[0].bisect_calls;
    assert!(
        calls <= u64::from(weir::config::DEFAULT_BISECT_MAX_CALLS),
        "bounded: {calls}"
    );
    let written: Vec<i64> = read_jsonl(&dir.path().join("out.jsonl"))
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    let expected: Vec<i64> = (0..1000).filter(|i| ![3, 617, 618].contains(i)).collect();
    assert_eq!(written, expected, "the rest, in order");
}

#[test]
fn the_split_budget_bounds_the_retries() {
    // 4 calls split 64 rows into halves then quarters: the quarter holding
    // the poison row (16 rows) is quarantined, the other 48 rows written.
    let (dir, report) = poison_run(64, &[40], 64, "bisect_max_calls = 4");
    assert_eq!(report.stages[0].bisect_calls, 4);
    assert_eq!(report.records.written, 48);
    assert_eq!(quarantined_ids(dir.path()), (32..48).collect::<Vec<_>>());

    let (dir, report) = poison_run(64, &[40], 64, "bisect_max_calls = 0");
    assert_eq!(report.stages[0].bisect_calls, 0);
    assert_eq!(report.records.written, 0, "no split: the whole batch");
    assert_eq!(quarantined_ids(dir.path()).len(), 64);
}

#[test]
fn validator_failures_are_split_too_and_verdicts_keep_their_rows() {
    // FLAG flags `bad` rows and panics on `trap`: after the split, the
    // verdicts of each half must still name the right rows.
    let dir = tempfile::tempdir().unwrap();
    action_csv(
        dir.path(),
        &["ok", "bad", "trap", "ok", "bad", "ok", "ok", "ok"],
    );
    let pipeline = one_stage_pipeline(dir.path(), "validate", weir_tests::FLAG, 8, "");
    let report = run(&pipeline);
    assert_eq!(report.records.written, 5);
    let quarantine = read_jsonl(&dir.path().join("quarantine.jsonl"));
    let mut found: Vec<(i64, String)> = quarantine
        .iter()
        .map(|q| {
            (
                q["record"]["id"].as_i64().unwrap(),
                q["error_kind"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    found.sort();
    assert_eq!(
        found,
        vec![
            (1, "validation".to_string()),
            (2, "trap".to_string()),
            (4, "validation".to_string())
        ]
    );
}

#[test]
fn a_plugin_failing_batch_after_batch_is_rested_by_its_breaker() {
    // Every row traps: 10 one-row batches. After 3 failed batches the
    // breaker opens for 60 s, so the other 7 are quarantined without a call.
    let poison: Vec<usize> = (0..10).collect();
    let (dir, report) = poison_run(
        10,
        &poison,
        1,
        "[stages.breaker]\nfailures = 3\nbackoff_ms = 60_000",
    );
    assert_eq!(report.records.quarantined, 10);
    let stage = &report.stages[0];
    assert_eq!(stage.calls, 3, "no call once open");
    assert_eq!(stage.rested_batches, 7);
    let kinds: Vec<String> = read_jsonl(&dir.path().join("quarantine.jsonl"))
        .iter()
        .map(|q| q["error_kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(&kinds[..3], ["trap", "trap", "trap"]);
    assert!(kinds[3..].iter().all(|k| k == "circuit_open"), "{kinds:?}");
}

#[test]
fn deep_recursion_is_a_trap() {
    // Rust's shadow stack lives in linear memory: overflowing it is an
    // out-of-bounds access (wasmtime's own stack cap, `max_wasm_stack`,
    // stops recursion with small frames as "call stack exhausted").
    let message = contained(weir_tests::RECURSE, "recurse", "", "trap");
    assert!(message.contains("wasm trap"), "{message}");
}

#[test]
fn a_garbage_file_is_rejected_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.wasm");
    std::fs::write(&garbage, b"\0asm this is not a component at all").unwrap();
    let error =
        weir::plugin::Plugin::load(garbage.to_str().unwrap(), None, dir.path()).unwrap_err();
    assert!(
        format!("{error:#}").contains("not a valid WebAssembly component"),
        "{error:#}"
    );
}

#[test]
fn a_forbidden_import_is_rejected_at_load_naming_it() {
    let error = weir::plugin::Plugin::load(weir_tests::FORBIDDEN, None, Path::new("."))
        .unwrap_err()
        .to_string();
    assert!(error.contains("`acme:evil/exfiltrate`"), "{error}");
    assert!(error.contains("does not provide"), "{error}");
}

#[test]
fn sockets_are_linked_but_every_connection_is_refused() {
    let message = contained(weir_tests::SOCKETS, "connect", "", "plugin_error");
    assert!(message.contains("connect failed"), "{message}");
}

#[test]
fn a_granted_directory_is_readable_and_nothing_else_is() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("ref")).unwrap();
    std::fs::write(dir.path().join("ref/table.txt"), "reference text").unwrap();
    action_csv(dir.path(), &["ok", "ok", "write", "ok"]);
    let config = "config = { file = \"/ref/table.txt\" }";
    let granted = format!("{config}\ncapabilities = {{ read_dirs = {{ \"/ref\" = \"ref\" }} }}");
    let pipeline = one_stage_pipeline(dir.path(), "transform", weir_tests::READER, 4, &granted);
    let report = run(&pipeline);
    assert_eq!(report.records.written, 3);
    let rows = read_jsonl(&dir.path().join("out.jsonl"));
    assert!(
        rows.iter().all(|r| r["content"] == "reference text"),
        "{rows:?}"
    );
    let quarantine = read_jsonl(&dir.path().join("quarantine.jsonl"));
    assert_eq!(quarantine.len(), 1);
    let message = quarantine[0]["message"].as_str().unwrap();
    assert!(message.contains("write failed"), "read-only: {message}");
    assert!(!dir.path().join("ref/table.txt.written").exists());

    // Without the grant the plugin sees no files at all.
    let other = tempfile::tempdir().unwrap();
    action_csv(other.path(), &["ok"]);
    let pipeline = one_stage_pipeline(other.path(), "transform", weir_tests::READER, 4, config);
    let report = run(&pipeline);
    assert_eq!(report.records.quarantined, 1);
    let quarantine = read_jsonl(&other.path().join("quarantine.jsonl"));
    assert!(
        quarantine[0]["message"]
            .as_str()
            .unwrap()
            .contains("cannot read /ref/table.txt"),
        "{}",
        quarantine[0]["message"]
    );
}

#[test]
fn a_slow_host_call_is_stopped_by_the_deadline() {
    let started = Instant::now();
    let message = contained(weir_tests::SLEEPY, "sleep", "timeout_ms = 300", "timeout");
    assert!(message.contains("timeout_ms = 300"), "{message}");
    // A sleep past the deadline stops the call at once: no 5 s wait.
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the 5 s sleeps were cut short: {:?}",
        started.elapsed()
    );

    // A sleep that fits in the deadline still sleeps and succeeds.
    let dir = tempfile::tempdir().unwrap();
    action_csv(dir.path(), &["nap", "nap", "ok"]);
    let pipeline = one_stage_pipeline(
        dir.path(),
        "transform",
        weir_tests::SLEEPY,
        1,
        "timeout_ms = 1000",
    );
    let started = Instant::now();
    let report = run(&pipeline);
    assert_eq!(report.records.written, 3);
    assert!(started.elapsed() >= Duration::from_millis(40));
}

#[test]
fn a_failed_call_is_charged_the_fuel_it_burned() {
    let dir = tempfile::tempdir().unwrap();
    crate::support::action_csv(dir.path(), &["loop"]);
    let pipeline = crate::support::one_stage_pipeline(
        dir.path(),
        "transform",
        weir_tests::SPIN,
        10,
        "fuel_per_batch = 50_000_000\ntimeout_ms = 600_000",
    );
    let report = crate::support::run(&pipeline);
    assert_eq!(report.records.quarantined, 1);
    assert_eq!(
        report.stages[0].fuel_consumed, 50_000_000,
        "the whole budget of the call that ran out of it"
    );
}
