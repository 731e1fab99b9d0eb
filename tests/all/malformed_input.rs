//! A CSV record whose value does not fit its column is quarantined with its
//! text and record number; the records around it, in the same batch and
//! after, are written in order.

use crate::support::{read_jsonl, run, write_pipeline};

#[test]
fn unparseable_csv_records_are_quarantined_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("input.csv"),
        "id,amount,note\n1,10,a\n2,abc,b\n3,30,\"quoted, with comma\"\n4,40,d\n5,4x5,e\n6,60,f\n",
    )
    .unwrap();
    let pipeline = write_pipeline(
        dir.path(),
        r#"
[pipeline]
batch_size = 3
workers = 1

[source]
format = "csv"
path = "input.csv"
schema = [
  { name = "id", type = "int64" },
  { name = "amount", type = "int64" },
  { name = "note", type = "utf8" },
]
"#,
    );
    let report = run(&pipeline);
    assert_eq!(report.records.read, 6);
    assert_eq!(report.records.written, 4);
    assert_eq!(report.records.quarantined, 2);

    let written: Vec<(i64, i64)> = read_jsonl(&dir.path().join("out.jsonl"))
        .iter()
        .map(|r| (r["id"].as_i64().unwrap(), r["amount"].as_i64().unwrap()))
        .collect();
    assert_eq!(written, vec![(1, 10), (3, 30), (4, 40), (6, 60)]);

    let quarantine = read_jsonl(&dir.path().join("quarantine.jsonl"));
    let rejected: Vec<(i64, &str)> = quarantine
        .iter()
        .map(|q| {
            (
                q["record"]["record_number"].as_i64().unwrap(),
                q["record"]["text"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(rejected, vec![(2, "2,abc,b"), (5, "5,4x5,e")]);
    for q in &quarantine {
        assert_eq!(q["stage"], "source");
        assert_eq!(q["error_kind"], "parse");
        assert_eq!(q["plugin"], weir::source::NATIVE_READER);
        assert!(
            q["message"].as_str().unwrap().contains("cannot be parsed"),
            "{}",
            q["message"]
        );
    }
}

#[test]
fn a_bad_reference_table_row_is_an_error_not_a_silent_drop() {
    // Reference tables have no quarantine: a row that cannot be read must
    // fail the load, naming the file, rather than vanish from the lookup.
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.jsonl");
    std::fs::write(&good, "{\"k\": \"a\", \"v\": 1}\n").unwrap();
    let table = weir::source::read_reference_table(&good, 1 << 20).unwrap();
    assert_eq!(table, serde_json::json!([{"k": "a", "v": 1}]));

    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"k\": \"a\", \"v\": 1}\nnot json\n").unwrap();
    let error = format!(
        "{:#}",
        weir::source::read_reference_table(&bad, 1 << 20).unwrap_err()
    );
    assert!(error.contains("bad.jsonl"), "{error}");
}

#[test]
fn malformed_json_lines_are_quarantined_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("input.jsonl"),
        "{\"id\": 1, \"v\": 10}\nnot json at all\n{\"id\": 3, \"v\": \"abc\"}\n{\"id\": 4, \"v\": 40}\n\n{\"id\": 6, \"v\": 60, \"note\": \"zürich\"}\n",
    )
    .unwrap();
    let pipeline = write_pipeline(
        dir.path(),
        r#"
[pipeline]
batch_size = 10
workers = 1

[source]
format = "jsonl"
path = "input.jsonl"
schema = [{ name = "id", type = "int64" }, { name = "v", type = "int64" }, { name = "note", type = "utf8" }]
"#,
    );
    let report = run(&pipeline);
    assert_eq!(
        (
            report.records.read,
            report.records.written,
            report.records.quarantined
        ),
        (5, 3, 2)
    );
    let written: Vec<i64> = read_jsonl(&dir.path().join("out.jsonl"))
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    assert_eq!(written, vec![1, 4, 6]);
    let quarantine = read_jsonl(&dir.path().join("quarantine.jsonl"));
    let lines: Vec<i64> = quarantine
        .iter()
        .map(|q| q["record"]["record_number"].as_i64().unwrap())
        .collect();
    assert_eq!(lines, vec![2, 3], "line numbers count the blank line too");
    assert_eq!(quarantine[0]["record"]["text"], "not json at all");
    assert!(
        quarantine
            .iter()
            .all(|q| q["error_kind"] == "parse" && q["stage"] == "source")
    );
}
