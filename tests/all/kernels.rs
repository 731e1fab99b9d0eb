//! Compute kernels (`weir:plugin/compute@0.2.0`): a plugin that reads no
//! column reaches every column of its batch through host handles, its
//! kernel results are spliced in on the host without crossing, a validator
//! fails rows with `reject`, and kernels are held to the call's limits: a
//! kernel column next to a whole-batch output or named twice is a
//! `malformed_output`, an overflow is the plugin's error, and a plugin that
//! loops over kernels runs out of fuel or memory like one that loops in
//! WebAssembly.

use arrow::array::{AsArray, RecordBatch};
use weir::lent::Lendable;
use weir::plugin::{Limits, Plugin, PluginKind};

use crate::hostile::contained;
use crate::support::{action_csv, one_stage_pipeline, read_jsonl, run};

fn kernels() -> Plugin {
    let bytes = std::fs::read(weir_tests::KERNELS).unwrap();
    Plugin::from_bytes("kernels", &bytes, Some(PluginKind::Transform)).unwrap()
}

#[test]
fn every_type_and_null_pattern_goes_through_kernel_handles_and_back() {
    let plugin = kernels();
    for input in [
        weir_tests::every_type(1000),
        weir_tests::every_type(0),
        weir_tests::every_type(13).slice(3, 9),
    ] {
        let names: Vec<String> = input
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        let config = serde_json::json!({ "mode": "echo", "columns": names });
        let mut instance = plugin
            .instantiate("kernels", config.to_string().into(), Limits::default())
            .unwrap();
        assert_eq!(instance.reads(), Some(&[][..]), "it reads nothing");
        let sent = weir::splice::project(&input, instance.reads());
        let (out, _) = instance
            .transform_with(&input, &Lendable::new(&sent).unwrap().lend())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out.payload_bytes(), 0, "nothing crossed back");
        let out: RecordBatch = weir::splice::apply(&input, out).unwrap().batch;
        assert_eq!(out.num_rows(), input.num_rows());
        for name in &names {
            let original = input.column_by_name(name).unwrap();
            assert_eq!(
                out.column_by_name(name).unwrap().as_ref(),
                original.as_ref(),
                "{name}"
            );
            let nulls = out.column_by_name(&format!("{name}_null")).unwrap();
            let expected = arrow::compute::is_null(original.as_ref()).unwrap();
            assert_eq!(nulls.as_boolean(), &expected, "{name}_null");
        }
    }
}

#[test]
fn kernel_columns_are_spliced_on_the_host_and_rows_selected() {
    let dir = tempfile::tempdir().unwrap();
    action_csv(dir.path(), &["ok", "Zürich", "", "abc", "skip", "y"]);
    let pipeline = one_stage_pipeline(dir.path(), "transform", weir_tests::KERNELS, 4, "");
    let report = run(&pipeline);
    assert_eq!(report.records.read, 6);
    assert_eq!(report.records.written, 5, "the `skip` row is filtered");
    assert_eq!(report.records.quarantined, 0);
    assert_eq!(report.stages[0].bytes_sent, 0, "no column crossed");
    let out = read_jsonl(&dir.path().join("out.jsonl"));
    let keys: Vec<&String> = out[0].as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        ["id", "action", "upper", "len", "big", "id_x10", "sha"]
    );
    let ids: Vec<i64> = out.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, [0, 1, 2, 3, 5]);
    assert_eq!(out[1]["upper"], "ZÜRICH");
    assert_eq!(out[1]["len"], 6, "characters, not bytes");
    // An empty CSV field is read as null, and stays null through kernels.
    assert_eq!(out[2]["upper"], serde_json::Value::Null);
    let big: Vec<bool> = out.iter().map(|r| r["big"].as_bool().unwrap()).collect();
    assert_eq!(big, [false, false, false, true, true]);
    assert_eq!(out[4]["id_x10"], 50);
    assert_eq!(
        out[0]["sha"].as_str().unwrap(),
        weir::plugin::sha256_hex(b"sok"),
        "hex SHA-256 of the salt then the value"
    );
}

#[test]
fn a_validator_rejects_rows_with_a_kernel_mask_beside_its_own_verdicts() {
    let dir = tempfile::tempdir().unwrap();
    action_csv(dir.path(), &["a", "b", "c", "d", "e"]);
    let pipeline = one_stage_pipeline(dir.path(), "validate", weir_tests::KERNEL_CHECK, 10, "");
    let report = run(&pipeline);
    assert_eq!(report.records.written, 2, "ids 2 and 4 pass");
    let mut failed: Vec<(i64, String)> = read_jsonl(&dir.path().join("quarantine.jsonl"))
        .iter()
        .map(|q| {
            (
                q["record"]["id"].as_i64().unwrap(),
                q["rule"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    failed.sort();
    assert_eq!(
        failed,
        [(0, "zero".into()), (1, "odd".into()), (3, "odd".into())]
    );
}

#[test]
fn a_kernel_column_next_to_a_whole_batch_is_malformed() {
    let message = contained(
        weir_tests::KERNELS,
        "bad",
        "config = { fault = \"batch\" }",
        "malformed_output",
    );
    assert!(message.contains("need a splice"), "{message}");
}

#[test]
fn a_column_both_emitted_and_returned_is_malformed() {
    let message = contained(
        weir_tests::KERNELS,
        "bad",
        "config = { fault = \"twice\" }",
        "malformed_output",
    );
    assert!(message.contains("both emitted"), "{message}");
}

#[test]
fn a_kernel_overflow_is_the_plugins_invalid_input() {
    let message = contained(
        weir_tests::KERNELS,
        "bad",
        "config = { fault = \"overflow\" }",
        "plugin_error",
    );
    assert!(message.contains("overflow"), "{message}");
}

#[test]
fn a_handle_from_an_earlier_call_is_refused() {
    let message = contained(
        weir_tests::KERNELS,
        "bad",
        "config = { fault = \"stale\" }",
        "plugin_error",
    );
    assert!(message.contains("is not live"), "{message}");
}

#[test]
fn kernels_are_paid_from_the_calls_fuel() {
    contained(
        weir_tests::KERNELS,
        "bad",
        "config = { fault = \"burn\" }\nfuel_per_batch = 50_000_000",
        "fuel_exhausted",
    );
}

#[test]
fn kernel_arrays_count_against_the_memory_limit() {
    let message = contained(
        weir_tests::KERNELS,
        "bad",
        "config = { fault = \"hoard\" }\nmax_memory_bytes = 33_554_432",
        "memory_limit",
    );
    assert!(message.contains("max_memory_bytes"), "{message}");
}
