//! Run history: every `weir run` is recorded (counts, status, the whole
//! report, or the error of a failed run) in the pipeline's
//! `history.sqlite`, `weir runs ls|show` read it, and retention keeps the
//! newest runs.

use weir::cli::{EXIT_OK, EXIT_RUN_FAILED, run as cli};
use weir::config::PipelineConfig;
use weir::history::{FAILED, History, SUCCEEDED};
use weir::pipeline::{Pipeline, RunOptions};

use crate::support::{action_csv, one_stage_pipeline, run};

fn weir(args: &[&str]) -> u8 {
    cli(["weir", "--log", "off"]
        .into_iter()
        .chain(args.iter().copied()))
}

fn history_of(pipeline: &std::path::Path) -> History {
    let config = PipelineConfig::from_file(pipeline).unwrap();
    History::open(&config.history_file(pipeline)).unwrap()
}

#[test]
fn every_run_is_recorded_with_its_counts_report_or_error() {
    let data = weir_tests::data_dir();
    let dir = tempfile::tempdir().unwrap();
    weir_tests::write_flights_pipeline(
        dir.path(),
        "pipeline.toml",
        &data,
        "flights_sample.csv",
        Some(300),
    );
    let pipeline = dir.path().join("pipeline.toml");
    let first = run(&pipeline);
    let second = run(&pipeline);

    let history = history_of(&pipeline);
    let runs = history.list(10).unwrap();
    assert_eq!(runs.len(), 2);
    let ids: Vec<&str> = runs.iter().map(|r| r.run_id.as_str()).collect();
    assert_eq!(
        ids,
        [second.run_id.as_str(), first.run_id.as_str()],
        "newest first"
    );
    for (record, report) in runs.iter().zip([&second, &first]) {
        assert_eq!(record.status, SUCCEEDED);
        assert_eq!(record.pipeline, report.pipeline);
        assert_eq!(
            (
                record.read,
                record.written,
                record.quarantined,
                record.filtered
            ),
            (
                report.records.read,
                report.records.written,
                report.records.quarantined,
                report.records.filtered
            )
        );
        assert!(record.duration_ms.is_some() && record.ended_at.is_some());
        assert!(record.report.is_none(), "ls leaves the report out");
    }
    let shown = history.show(&first.run_id[..8]).unwrap().unwrap();
    let report = shown.report.expect("show includes the report");
    assert_eq!(report["run_id"], first.run_id.as_str());
    assert_eq!(
        report["stages"].as_array().unwrap().len(),
        first.stages.len()
    );
    assert_eq!(
        report["outputs"].as_array().unwrap().len(),
        first.outputs.len()
    );
    assert_eq!(
        report["stages"][0]["plugin_sha256"],
        first.stages[0].plugin_sha256.as_str(),
        "plugin versions are in the record"
    );

    let file = pipeline.to_str().unwrap();
    assert_eq!(weir(&["runs", "ls", file]), EXIT_OK);
    assert_eq!(weir(&["runs", "ls", "--json", file]), EXIT_OK);
    assert_eq!(weir(&["runs", "show", file, &first.run_id]), EXIT_OK);
    assert_ne!(weir(&["runs", "show", file, "no-such-run"]), EXIT_OK);
}

#[test]
fn a_failed_run_is_recorded_with_its_error_and_retention_keeps_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    action_csv(dir.path(), &["ok", "trap"]);
    let failing = one_stage_pipeline(
        dir.path(),
        "transform",
        weir_tests::PANIC,
        1,
        "on_error = \"fail\"",
    );
    assert_eq!(
        weir(&["run", "--no-progress", failing.to_str().unwrap()]),
        EXIT_RUN_FAILED
    );
    let history = history_of(&failing);
    let runs = history.list(10).unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].status, FAILED);
    let error = runs[0].error.as_deref().unwrap();
    assert!(
        error.contains("probe"),
        "the error names the stage: {error}"
    );
    assert_eq!(runs[0].written, 0);

    // Retention: [history] keep_runs = 2 keeps the two newest runs.
    let text = std::fs::read_to_string(&failing)
        .unwrap()
        .replace("[sink]\n", "[sink]\nmode = \"overwrite\"\n");
    std::fs::write(&failing, format!("{text}\n[history]\nkeep_runs = 2\n")).unwrap();
    action_csv(dir.path(), &["ok", "ok"]);
    let pipeline = Pipeline::load(&failing).unwrap();
    let reports: Vec<_> = (0..3)
        .map(|_| pipeline.run(&RunOptions::default()).unwrap())
        .collect();
    let kept: Vec<String> = history
        .list(10)
        .unwrap()
        .into_iter()
        .map(|r| r.run_id)
        .collect();
    assert_eq!(kept, [reports[2].run_id.clone(), reports[1].run_id.clone()]);

    // [history] enabled = false records nothing.
    std::fs::write(&failing, format!("{text}\n[history]\nenabled = false\n")).unwrap();
    let quiet = Pipeline::load(&failing)
        .unwrap()
        .run(&RunOptions::default())
        .unwrap();
    assert!(!history.contains(&quiet.run_id).unwrap());
}
