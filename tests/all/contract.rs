//! Contract `weir:plugin@0.2.0` beside 0.1.0: a component built against
//! 0.1.0 still loads and runs; a 0.2.0 stage receives only the columns it
//! declares it reads, and returns a splice (row selection and new columns)
//! that the host applies to the columns that never crossed; a splice that
//! does not fit its batch is a `malformed_output` for that batch alone.

use std::path::Path;

use weir::plugin::{Contract, Plugin, PluginKind};

use crate::hostile::contained;
use crate::support::{action_csv, one_stage_pipeline, read_jsonl, run};

/// `input.csv` in `dir`: `rows` rows of `id` (int64), `value` (int64, some
/// negative) and `name` (text, non-ASCII).
fn numbers_csv(dir: &Path, rows: usize) {
    let mut text = String::from("id,value,name\n");
    for i in 0..rows {
        text.push_str(&format!("{i},{},row-{i}-zürich\n", i as i64 % 7 - 3));
    }
    std::fs::write(dir.join("input.csv"), text).unwrap();
}

/// The output and quarantine rows and the stage's counts after running
/// `plugin` as the only transform over [`numbers_csv`] in 100-row batches.
fn filter_run(plugin: &str, rows: usize) -> (Vec<serde_json::Value>, weir::report::StageReport) {
    let dir = tempfile::tempdir().unwrap();
    numbers_csv(dir.path(), rows);
    let pipeline = one_stage_pipeline(dir.path(), "transform", plugin, 100, "");
    let report = run(&pipeline);
    assert_eq!(report.records.read, rows as u64);
    assert_eq!(
        report.records.quarantined,
        0,
        "{:?}",
        std::fs::read_to_string(dir.path().join("quarantine.jsonl"))
            .unwrap_or_default()
            .lines()
            .next()
    );
    (
        read_jsonl(&dir.path().join("out.jsonl")),
        report.stages[0].clone(),
    )
}

#[test]
fn components_name_the_contract_version_they_target() {
    let inspect = |path: &str| Plugin::inspect(&std::fs::read(path).unwrap()).unwrap();
    let legacy = inspect(weir_tests::LEGACY_FILTER);
    assert_eq!(legacy.contract, Some(Contract::V0_1));
    assert_eq!(legacy.kind, Some(PluginKind::Transform));
    assert!(
        legacy
            .exports
            .iter()
            .any(|e| e == "weir:plugin/transform@0.1.0"),
        "{:?}",
        legacy.exports
    );
    let current = inspect(weir_tests::FILTER);
    assert_eq!(current.contract, Some(Contract::V0_2));
    assert!(
        current
            .exports
            .iter()
            .any(|e| e == "weir:plugin/transform@0.2.0"),
        "{:?}",
        current.exports
    );
    let plugin = Plugin::from_bytes(
        "legacy",
        &std::fs::read(weir_tests::LEGACY_FILTER).unwrap(),
        None,
    )
    .unwrap();
    assert_eq!(plugin.contract(), Contract::V0_1);
}

#[test]
fn a_0_1_component_and_its_0_2_rewrite_write_the_same_rows_but_only_the_read_column_crosses() {
    let rows = 1000;
    let (legacy_rows, legacy) = filter_run(weir_tests::LEGACY_FILTER, rows);
    let (rows_out, current) = filter_run(weir_tests::FILTER, rows);

    // value = id % 7 - 3 > 0 for id % 7 in {4, 5, 6}.
    let expected: Vec<i64> = (0..rows as i64).filter(|i| i % 7 >= 4).collect();
    let ids = |rows: &[serde_json::Value]| -> Vec<i64> {
        rows.iter().map(|r| r["id"].as_i64().unwrap()).collect()
    };
    assert_eq!(ids(&legacy_rows), expected);
    assert_eq!(
        rows_out, legacy_rows,
        "every column, unsent ones included, comes out the same"
    );
    assert_eq!(rows_out[0]["name"], "row-4-zürich");
    assert_eq!(current.filtered, (rows - expected.len()) as u64);

    // 0.2.0: only `value` (8 bytes a row, no nulls) goes in, only a row
    // mask (one bit a row, a byte per 8 rows of each 100-row batch) comes
    // back. 0.1.0: every column both ways.
    assert_eq!(current.bytes_sent, rows as u64 * 8);
    assert_eq!(current.bytes_returned, (rows as u64 / 100) * 13);
    assert!(
        legacy.bytes_sent > 2 * rows as u64 * 8,
        "id, value and name: {}",
        legacy.bytes_sent
    );
    assert!(legacy.bytes_returned > current.bytes_returned * 10);
}

#[test]
fn a_splice_adds_columns_after_the_unsent_ones() {
    let dir = tempfile::tempdir().unwrap();
    action_csv(dir.path(), &["ok", "zürich", ""]);
    let pipeline = one_stage_pipeline(dir.path(), "transform", weir_tests::BAD_SPLICE, 10, "");
    let report = run(&pipeline);
    assert_eq!(report.records.written, 3);
    let out = read_jsonl(&dir.path().join("out.jsonl"));
    let keys: Vec<&String> = out[0].as_object().unwrap().keys().collect();
    assert_eq!(keys, ["id", "action", "shout"]);
    let shouts: Vec<&serde_json::Value> = out.iter().map(|r| &r["shout"]).collect();
    assert_eq!(
        shouts,
        [&"OK".into(), &"ZÜRICH".into(), &serde_json::Value::Null]
    );
}

#[test]
fn a_splice_whose_mask_does_not_fit_is_malformed() {
    let message = contained(
        weir_tests::BAD_SPLICE,
        "bad",
        "config = { fault = \"mask\" }",
        "malformed_output",
    );
    assert!(message.contains("the row mask has"), "{message}");
}

#[test]
fn a_splice_selecting_a_row_out_of_range_is_malformed() {
    let message = contained(
        weir_tests::BAD_SPLICE,
        "bad",
        "config = { fault = \"index\" }",
        "malformed_output",
    );
    assert!(message.contains("selects row"), "{message}");
}

#[test]
fn a_spliced_column_of_the_wrong_length_is_malformed() {
    let message = contained(
        weir_tests::BAD_SPLICE,
        "bad",
        "config = { fault = \"length\" }",
        "malformed_output",
    );
    assert!(message.contains("new columns"), "{message}");
}

#[test]
fn a_splice_dropping_a_missing_column_is_malformed() {
    let message = contained(
        weir_tests::BAD_SPLICE,
        "bad",
        "config = { fault = \"drop\" }",
        "malformed_output",
    );
    assert!(message.contains("no_such_column"), "{message}");
}

#[test]
fn a_stage_reading_a_column_the_source_lacks_is_refused_before_the_run() {
    // `reads` names `value`, which this source does not have: the schema
    // probe at load time calls the stage on an empty batch of what it
    // would receive, and the pipeline file is refused with its error.
    let dir = tempfile::tempdir().unwrap();
    action_csv(dir.path(), &["ok", "ok"]);
    let pipeline = one_stage_pipeline(dir.path(), "transform", weir_tests::FILTER, 10, "");
    let Err(error) = weir::pipeline::Pipeline::load(&pipeline) else {
        panic!("the pipeline file is refused");
    };
    let error = error.to_string();
    assert!(
        error.contains("stages[0]") && error.contains("no column `value`"),
        "{error}"
    );
}
