//! Bad pipeline files and bad plugins are reported before anything runs,
//! each problem with its file and key.

use std::path::Path;

use weir::config::ConfigErrors;
use weir::pipeline::Pipeline;

use crate::support::{action_csv, one_stage_pipeline};

fn load_errors(pipeline: &Path) -> ConfigErrors {
    Pipeline::load(pipeline).expect_err("the pipeline must be rejected")
}

fn problem_for<'a>(errors: &'a ConfigErrors, key: &str) -> &'a str {
    errors
        .0
        .iter()
        .find(|e| e.key == key)
        .map(|e| e.message.as_str())
        .unwrap_or_else(|| panic!("no problem reported for `{key}` in:\n{errors}"))
}

#[test]
fn missing_plugin_file_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    action_csv(dir.path(), &["ok"]);
    let file = one_stage_pipeline(dir.path(), "transform", "nope.wasm", 2, "");
    let errors = load_errors(&file);
    assert!(problem_for(&errors, "stages[0].plugin").contains("nope.wasm"));
    assert!(
        errors.to_string().contains(&file.display().to_string()),
        "{errors}"
    );
}

#[test]
fn wrong_kind_names_both_worlds() {
    let dir = tempfile::tempdir().unwrap();
    action_csv(dir.path(), &["ok"]);
    let file = one_stage_pipeline(dir.path(), "transform", weir_tests::FLAG, 2, "");
    let message = problem_for(&load_errors(&file), "stages[0].plugin").to_string();
    assert!(message.contains("is a validate plugin"), "{message}");
    assert!(message.contains("kind = \"transform\""), "{message}");
    assert!(
        message.contains("world `transformer`") && message.contains("world `validator`"),
        "{message}"
    );
}

#[test]
fn garbage_plugin_file_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    action_csv(dir.path(), &["ok"]);
    std::fs::write(dir.path().join("garbage.wasm"), b"\0asm not really").unwrap();
    let file = one_stage_pipeline(dir.path(), "transform", "garbage.wasm", 2, "");
    let message = problem_for(&load_errors(&file), "stages[0].plugin").to_string();
    assert!(
        message.contains("not a valid WebAssembly component"),
        "{message}"
    );
}

#[test]
fn unknown_builtin_lists_the_known_ones() {
    let dir = tempfile::tempdir().unwrap();
    action_csv(dir.path(), &["ok"]);
    let file = one_stage_pipeline(dir.path(), "transform", "builtin:nope", 2, "");
    let message = problem_for(&load_errors(&file), "stages[0].plugin").to_string();
    assert!(message.contains("check, mask, derive, select"), "{message}");
}

#[test]
fn several_problems_are_reported_together() {
    let dir = tempfile::tempdir().unwrap();
    action_csv(dir.path(), &["ok"]);
    let file = one_stage_pipeline(
        dir.path(),
        "transform",
        "missing.wasm",
        2,
        "timeout_ms = 0\ntables = { t = \"no-such-table.csv\" }",
    );
    let errors = load_errors(&file);
    for key in [
        "stages[0].plugin",
        "stages[0].timeout_ms",
        "stages[0].tables.t",
    ] {
        problem_for(&errors, key);
    }
}

#[test]
fn misspelt_key_is_reported_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    action_csv(dir.path(), &["ok"]);
    let file = one_stage_pipeline(
        dir.path(),
        "transform",
        weir_tests::IDENTITY,
        2,
        "fuel_per_btach = 10",
    );
    let errors = load_errors(&file);
    assert_eq!(errors.0.len(), 1);
    let error = &errors.0[0];
    assert_eq!(error.key, "stages[0].fuel_per_btach");
    assert!(
        error.message.contains("unknown field `fuel_per_btach`"),
        "{}",
        error.message
    );
    assert!(error.message.contains("line 14"), "{}", error.message);
}

#[test]
fn existing_output_is_not_overwritten_by_default() {
    let dir = tempfile::tempdir().unwrap();
    action_csv(dir.path(), &["ok"]);
    std::fs::write(dir.path().join("out.jsonl"), "keep me\n").unwrap();
    let file = one_stage_pipeline(dir.path(), "transform", weir_tests::IDENTITY, 2, "");
    let message = problem_for(&load_errors(&file), "sink.path").to_string();
    assert!(message.contains("mode = \"overwrite\""), "{message}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("out.jsonl")).unwrap(),
        "keep me\n"
    );
}

#[test]
fn plugin_config_errors_are_reported_at_load_with_the_key() {
    // A malformed *plugin* config fails the load (the stage is called once
    // on an empty batch of the source schema): nothing runs, no row is
    // quarantined for it, and the problem names the stage's config key.
    let dir = tempfile::tempdir().unwrap();
    action_csv(dir.path(), &["ok", "ok", "ok"]);
    let file = one_stage_pipeline(
        dir.path(),
        "transform",
        "builtin:select",
        2,
        "config = { keep = [\"id\"], dorp = [\"action\"] }",
    );
    let message = problem_for(&load_errors(&file), "stages[0].config").to_string();
    assert!(message.contains("dorp"), "{message}");
    assert!(!dir.path().join("quarantine.jsonl").exists());
}
