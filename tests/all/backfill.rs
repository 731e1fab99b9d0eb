//! Partitioned pipelines and backfills: `weir backfill` runs one run per
//! date partition, each overwriting exactly its partition; running it
//! again leaves identical output; `--only-failed` re-runs only the
//! partitions that failed; every run is in the history with its partition.

use std::collections::BTreeMap;
use std::path::Path;

use weir::backfill::{BackfillOptions, PartitionStatus, backfill};
use weir::cli::{EXIT_INVALID, EXIT_OK, run as cli};
use weir::history::History;

const PIPELINE: &str = r#"
[pipeline]
workers = 1

[partition]
every = "day"

[source]
format = "csv"
path = "landing/${partition}/*.csv"

[[stages]]
name = "v"
kind = "validate"
plugin = "builtin:check"
config = { rules = [{ id = "positive", column = "value", check = "range", ge = 0 }] }

[sink]
format = "parquet"
path = "out/${partition}.parquet"

[quarantine]
format = "jsonl"
path = "quarantine/${partition}.jsonl"
"#;

fn weir(args: &[&str]) -> u8 {
    cli(["weir", "--log", "off"]
        .into_iter()
        .chain(args.iter().copied()))
}

/// `landing/2013-01-DD/part.csv` for days 1..=10: 10 + DD rows, one of
/// them negative (quarantined).
fn landing(dir: &Path) {
    for day in 1..=10 {
        let folder = dir.join(format!("landing/2013-01-{day:02}"));
        std::fs::create_dir_all(&folder).unwrap();
        let mut text = String::from("id,value\n");
        for i in 0..10 + day {
            let value = if i == 3 { -1 } else { i * day };
            text.push_str(&format!("{i},{value}\n"));
        }
        std::fs::write(folder.join("part.csv"), text).unwrap();
    }
}

/// Every output file under `out/` (name → its rows as JSON Lines).
fn output_files(dir: &Path) -> BTreeMap<String, Vec<String>> {
    let mut files = BTreeMap::new();
    for partition in std::fs::read_dir(dir.join("out")).unwrap() {
        let partition = partition.unwrap().path();
        let name = partition
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if name.starts_with('.') {
            continue;
        }
        let rows = weir::source::read_output(&partition, usize::MAX)
            .unwrap()
            .iter()
            .map(|b| {
                let mut w = arrow::json::LineDelimitedWriter::new(Vec::new());
                w.write(b).unwrap();
                w.finish().unwrap();
                String::from_utf8(w.into_inner()).unwrap()
            })
            .collect();
        files.insert(name, rows);
    }
    files
}

fn options(only_failed: bool) -> BackfillOptions {
    BackfillOptions {
        from: "2013-01-01".into(),
        to: "2013-01-10".into(),
        parallel: 3,
        only_failed,
        progress: false,
    }
}

#[test]
fn a_backfill_writes_each_partition_once_and_again_identically() {
    let dir = tempfile::tempdir().unwrap();
    landing(dir.path());
    let pipeline = dir.path().join("daily.toml");
    std::fs::write(&pipeline, PIPELINE).unwrap();

    let first = backfill(&pipeline, &options(false)).unwrap();
    assert_eq!(first.partitions.len(), 10);
    assert_eq!(first.failed(), 0, "{:#?}", first.partitions);
    for (day, outcome) in (1..=10u64).zip(&first.partitions) {
        assert_eq!(outcome.partition, format!("2013-01-{day:02}"));
        assert_eq!(outcome.status, PartitionStatus::Succeeded);
        assert_eq!(
            (outcome.read, outcome.written, outcome.quarantined),
            (10 + day, 9 + day, 1),
            "partition {} read its own files only",
            outcome.partition
        );
    }
    let output = output_files(dir.path());
    assert_eq!(output.len(), 10, "{:?}", output.keys());
    let quarantine =
        std::fs::read_to_string(dir.path().join("quarantine/2013-01-04.jsonl")).unwrap();
    assert_eq!(quarantine.lines().count(), 1);

    // Again: each partition replaced by an identical one, nothing appended.
    let second = backfill(&pipeline, &options(false)).unwrap();
    assert_eq!(second.failed(), 0);
    assert_eq!(output_files(dir.path()), output);

    let history = History::open(&weir::config::partitioned_history_file(&pipeline)).unwrap();
    let runs = history.list(100).unwrap();
    assert_eq!(runs.len(), 20);
    assert!(
        runs.iter()
            .all(|r| r.kind == "backfill" && r.status == "succeeded")
    );
    let mut partitions: Vec<_> = runs.iter().filter_map(|r| r.partition.clone()).collect();
    partitions.sort();
    partitions.dedup();
    assert_eq!(partitions.len(), 10);
}

#[test]
fn only_the_failed_partition_runs_again() {
    let dir = tempfile::tempdir().unwrap();
    landing(dir.path());
    let pipeline = dir.path().join("daily.toml");
    std::fs::write(&pipeline, PIPELINE).unwrap();
    // The 7th's data has not landed.
    let seventh = dir.path().join("landing/2013-01-07");
    let parked = dir.path().join("parked");
    std::fs::rename(&seventh, &parked).unwrap();

    let first = backfill(&pipeline, &options(false)).unwrap();
    let failed: Vec<_> = first
        .partitions
        .iter()
        .filter(|p| p.status == PartitionStatus::Failed)
        .map(|p| p.partition.as_str())
        .collect();
    assert_eq!(failed, ["2013-01-07"]);
    assert!(
        first.partitions[6]
            .error
            .as_deref()
            .unwrap()
            .contains("landing/2013-01-07"),
        "{:?}",
        first.partitions[6].error
    );
    assert!(!dir.path().join("out/2013-01-07.parquet").exists());
    let before = output_files(dir.path());

    std::fs::rename(&parked, &seventh).unwrap();
    let report = dir.path().join("backfill.json");
    assert_eq!(
        weir(&[
            "backfill",
            pipeline.to_str().unwrap(),
            "--from",
            "2013-01-01",
            "--to",
            "2013-01-10",
            "--only-failed",
            "--report",
            report.to_str().unwrap(),
        ]),
        EXIT_OK
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let ran: Vec<&str> = summary["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["status"] != "skipped")
        .map(|p| p["partition"].as_str().unwrap())
        .collect();
    assert_eq!(ran, ["2013-01-07"], "only the failed partition ran");
    let after = output_files(dir.path());
    assert_eq!(after.len(), 10);
    for (name, rows) in &before {
        assert_eq!(&after[name], rows, "{name} was left alone");
    }

    // Nothing failed any more: a further --only-failed runs nothing.
    let again = backfill(&pipeline, &options(true)).unwrap();
    assert_eq!(again.skipped(), 10);
}

#[test]
fn partitioned_pipelines_are_refused_where_they_would_collide() {
    let dir = tempfile::tempdir().unwrap();
    landing(dir.path());
    let pipeline = dir.path().join("daily.toml");
    // One sink path for all partitions: a backfill would overwrite it ten times.
    std::fs::write(
        &pipeline,
        PIPELINE.replace("out/${partition}.parquet", "out/all.parquet"),
    )
    .unwrap();
    let error = backfill(&pipeline, &options(false))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("sink.path") && error.contains("${partition}"),
        "{error}"
    );

    // `weir run` without a partition names the flag to give.
    std::fs::write(&pipeline, PIPELINE).unwrap();
    assert_eq!(weir(&["run", pipeline.to_str().unwrap()]), EXIT_INVALID);
    let error = weir::pipeline::Pipeline::load(&pipeline)
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("--partition"), "{error}");
    // ... and with one, runs just it.
    assert_eq!(
        weir(&[
            "run",
            pipeline.to_str().unwrap(),
            "--partition",
            "2013-01-03"
        ]),
        EXIT_OK
    );
    assert_eq!(output_files(dir.path()).len(), 1);
    let runs = History::open(&weir::config::partitioned_history_file(&pipeline))
        .unwrap()
        .list(10)
        .unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(
        (runs[0].kind.as_str(), runs[0].partition.as_deref()),
        ("run", Some("2013-01-03"))
    );
}
