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
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("t.csv"), "k,v\na,1\n").unwrap();
    let table = weir::source::read_reference_table(&dir.path().join("t.csv"), 1 << 20).unwrap();
    assert_eq!(table, serde_json::json!([{"k": "a", "v": 1}]));
}
