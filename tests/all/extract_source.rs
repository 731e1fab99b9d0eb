//! `format = "extract"`: each file's bytes go through an extract plugin; a
//! file it rejects is quarantined as one row naming the file, and the other
//! files are still read.

use crate::support::{extract_pipeline, read_jsonl, run};

fn pipeline(dir: &std::path::Path, plugin: &str) -> std::path::PathBuf {
    extract_pipeline(
        dir,
        "*.txt",
        plugin,
        "content_type = \"text/plain\"\ntimeout_ms = 5000",
    )
}

#[test]
fn extracted_files_flow_and_a_bad_file_is_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.txt"), "x = 1\ny = 2\n").unwrap();
    std::fs::write(dir.path().join("b.txt"), "garbage").unwrap();
    std::fs::write(dir.path().join("c.txt"), "zürich = 3\n").unwrap();
    let report = run(&pipeline(dir.path(), weir_tests::KV_EXTRACT));

    assert_eq!(report.records.read, 4, "three rows plus one rejected file");
    assert_eq!(report.records.written, 3);
    assert_eq!(report.records.quarantined, 1);
    let rows: Vec<(String, i64)> = read_jsonl(&dir.path().join("out.jsonl"))
        .iter()
        .map(|r| {
            (
                r["key"].as_str().unwrap().to_string(),
                r["value"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        vec![("x".into(), 1), ("y".into(), 2), ("zürich".into(), 3)]
    );

    let quarantine = read_jsonl(&dir.path().join("quarantine.jsonl"));
    assert_eq!(quarantine.len(), 1);
    let rejected = &quarantine[0];
    assert_eq!(rejected["stage"], "source");
    assert_eq!(rejected["error_kind"], "plugin_error");
    assert!(
        rejected["record"]["source_file"]
            .as_str()
            .unwrap()
            .ends_with("b.txt")
    );
    assert_eq!(rejected["record"]["bytes"], 7);
    let message = rejected["message"].as_str().unwrap();
    assert!(message.contains("b.txt line 1: no `=`"), "{message}");
}

#[test]
fn a_non_extractor_plugin_is_rejected_at_load() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.txt"), "x = 1\n").unwrap();
    let errors =
        weir::pipeline::Pipeline::load(&pipeline(dir.path(), weir_tests::IDENTITY)).unwrap_err();
    let error = errors
        .0
        .iter()
        .find(|e| e.key == "source.extract.plugin")
        .expect("keyed on the plugin");
    assert!(
        error.message.contains("is a transform plugin"),
        "{}",
        error.message
    );
    assert!(
        error.message.contains("world `extractor`"),
        "{}",
        error.message
    );
}
