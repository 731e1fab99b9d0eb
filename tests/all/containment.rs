//! Containment accounting: what a failed call costs, and how the host
//! treats results and messages that are too big.

use crate::support::{action_csv, one_stage_pipeline, read_jsonl, run};

/// Fuel the `burn` component's one-row batch was charged when it ended
/// with `action`, under `limits`, and the error kind it was quarantined
/// with (`None` when it succeeded).
fn charged(action: &str, limits: &str) -> (u64, Option<String>) {
    let dir = tempfile::tempdir().unwrap();
    action_csv(dir.path(), &[action]);
    let extra = format!("config = {{ iterations = 20_000_000 }}\n{limits}");
    let pipeline = one_stage_pipeline(dir.path(), "transform", weir_tests::BURN, 1, &extra);
    let report = run(&pipeline);
    let kind = (report.records.quarantined == 1).then(|| {
        read_jsonl(&dir.path().join("quarantine.jsonl"))[0]["error_kind"]
            .as_str()
            .unwrap()
            .to_string()
    });
    (report.stages[0].fuel_consumed, kind)
}

#[test]
fn every_way_a_call_ends_is_charged_the_fuel_it_burned() {
    let slice = weir::plugin::FUEL_SLICE;
    let (success, kind) = charged("ok", "");
    assert_eq!(kind, None);
    assert!(success > 20_000_000, "the loop burned fuel: {success}");
    // Each ending burns the same loop first; what follows it differs by
    // far less than a slice.
    for (action, limits, expected) in [
        ("error", "", "plugin_error"),
        ("trap", "", "trap"),
        ("grow", "max_memory_bytes = 67_108_864", "memory_limit"),
    ] {
        let (fuel, kind) = charged(action, limits);
        assert_eq!(kind.as_deref(), Some(expected));
        assert!(
            fuel.abs_diff(success) <= 2 * slice,
            "{action}: charged {fuel}, the successful call {success}"
        );
    }
    let (fuel, kind) = charged("spin", "fuel_per_batch = 300_000_000");
    assert_eq!(kind.as_deref(), Some("fuel_exhausted"));
    assert_eq!(fuel, 300_000_000, "the whole budget");
}

#[test]
fn a_call_stopped_at_its_deadline_is_charged_the_fuel_it_burned() {
    // Spinning for 500 ms burns billions of fuel units on an idle core;
    // even at a tenth of a core it burns far more than 10 slices.
    let (fuel, kind) = charged(
        "spin",
        "timeout_ms = 500\nfuel_per_batch = 1_000_000_000_000_000",
    );
    assert_eq!(kind.as_deref(), Some("timeout"));
    assert!(
        fuel >= 10 * weir::plugin::FUEL_SLICE,
        "a timed-out call is charged what it burned, not the fuel saved at its last host call: {fuel}"
    );
}

/// Runs `huge` on one `huge` row asking for `mib` MiB, under `limits`:
/// rows written and the quarantine's error kind and message, if any.
fn huge_result(mib: usize, limits: &str) -> (u64, Option<(String, String)>) {
    let dir = tempfile::tempdir().unwrap();
    action_csv(dir.path(), &["huge"]);
    let extra = format!("config = {{ mib = {mib} }}\n{limits}");
    let pipeline = one_stage_pipeline(dir.path(), "transform", weir_tests::HUGE, 1, &extra);
    let report = run(&pipeline);
    let quarantined = (report.records.quarantined == 1).then(|| {
        let row = &read_jsonl(&dir.path().join("quarantine.jsonl"))[0];
        (
            row["error_kind"].as_str().unwrap().to_string(),
            row["message"].as_str().unwrap().to_string(),
        )
    });
    (report.records.written, quarantined)
}

#[test]
fn a_result_under_max_output_bytes_succeeds_past_wasmtimes_default_copy_budget() {
    // 136 MiB: over wasmtime's default 128 MiB host-call copy budget, under
    // the default max_output_bytes (256 MiB).
    let (written, quarantined) = huge_result(136, "");
    assert_eq!((written, quarantined), (1, None));
}

#[test]
fn a_result_far_over_max_output_bytes_is_output_too_large_not_a_trap() {
    // Just over the limit: copied, measured, refused.
    let (_, quarantined) = huge_result(20, "max_output_bytes = 16_777_216");
    let (kind, message) = quarantined.unwrap();
    assert_eq!(kind, "output_too_large", "{message}");
    // Far over it: the copy itself is stopped.
    let (_, quarantined) = huge_result(136, "max_output_bytes = 16_777_216");
    let (kind, message) = quarantined.unwrap();
    assert_eq!(kind, "output_too_large", "{message}");
    assert!(message.contains("max_output_bytes = 16777216"), "{message}");
    assert!(message.contains("stopped copying"), "{message}");
}

#[test]
fn a_plugins_stderr_is_cut_to_its_last_4_kib_per_quarantined_row() {
    let message = crate::hostile::contained(weir_tests::CHATTY, "chatter", "", "trap");
    assert!(
        message.contains("poison row 0 after the chatter"),
        "the panic message, written last, is kept: {:.200}",
        message
    );
    assert!(message.contains("earlier bytes cut"), "{message:.200}");
    assert!(
        message.len() < 2 * weir::plugin::MAX_STDERR_BYTES,
        "{} bytes",
        message.len()
    );
}

#[test]
fn a_failed_batchs_long_message_is_stored_once_not_on_every_row() {
    let dir = tempfile::tempdir().unwrap();
    crate::support::action_csv(dir.path(), &["ok", "ok", "chatter", "ok", "ok", "ok"]);
    let pipeline = crate::support::one_stage_pipeline(
        dir.path(),
        "transform",
        weir_tests::CHATTY,
        8,
        "bisect_max_calls = 0",
    );
    let report = crate::support::run(&pipeline);
    assert_eq!(report.records.quarantined, 6, "the whole batch, unsplit");
    let quarantine = crate::support::read_jsonl(&dir.path().join("quarantine.jsonl"));
    let messages: Vec<&str> = quarantine
        .iter()
        .map(|row| row["message"].as_str().unwrap())
        .collect();
    assert!(messages[0].len() > 2048, "the first row has it whole");
    assert!(
        messages[0].contains("after the chatter"),
        "{:.200}",
        messages[0]
    );
    for (i, message) in messages.iter().enumerate().skip(1) {
        assert!(message.len() < 512, "row {i}: {} bytes", message.len());
        assert!(message.contains(&format!("{i} rows above")), "{message}");
    }
}
