//! OpenLineage events: a run emits START and COMPLETE (or FAIL, or ABORT
//! when `--restart` abandons it) events
//! that validate against the spec 2-0-2 JSON Schema and its facets' schemas
//! (copies in tests/data/openlineage, from the OpenLineage repository),
//! name the right inputs, outputs and counts, reach an HTTP endpoint, and a
//! dead endpoint delays a run by at most `flush_ms`.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use weir::pipeline::{Pipeline, RunOptions};

use crate::support::{action_csv, http_endpoint, one_stage_pipeline};

/// Validators for a run event and for each facet weir emits, from the
/// schemas in tests/data/openlineage registered under their `$id`s.
struct Spec {
    event: jsonschema::Validator,
    facets: Vec<(&'static str, jsonschema::Validator)>,
}

fn spec() -> Spec {
    let dir = weir_tests::data_dir().join("openlineage");
    let read = |name: &str| -> Value {
        serde_json::from_str(&std::fs::read_to_string(dir.join(name)).unwrap()).unwrap()
    };
    let files = [
        "OpenLineage.json",
        "SchemaDatasetFacet.json",
        "OutputStatisticsOutputDatasetFacet.json",
        "DataQualityMetricsInputDatasetFacet.json",
        "ErrorMessageRunFacet.json",
    ];
    let mut registry = jsonschema::Registry::new();
    for file in files {
        let schema = read(file);
        let id = schema["$id"].as_str().unwrap().to_string();
        registry = registry.add(id, schema).unwrap();
    }
    let registry = registry.prepare().unwrap();
    let build = |schema: Value| {
        jsonschema::options()
            .with_registry(&registry)
            .should_validate_formats(true)
            .build(&schema)
            .unwrap()
    };
    let by_id = |file: &str| json!({ "$ref": read(file)["$id"] });
    Spec {
        event: build(by_id("OpenLineage.json")),
        facets: vec![
            ("schema", build(by_id("SchemaDatasetFacet.json"))),
            (
                "outputStatistics",
                build(by_id("OutputStatisticsOutputDatasetFacet.json")),
            ),
            (
                "dataQualityMetrics",
                build(by_id("DataQualityMetricsInputDatasetFacet.json")),
            ),
            ("errorMessage", build(by_id("ErrorMessageRunFacet.json"))),
        ],
    }
}

impl Spec {
    /// Validates `event` and every facet in it that has a schema here.
    fn check(&self, event: &Value) {
        let errors: Vec<String> = self
            .event
            .iter_errors(event)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{errors:#?}\n{event:#}");
        let mut holders: Vec<&Value> = vec![&event["run"]["facets"]];
        for dataset in event["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .chain(event["outputs"].as_array().unwrap())
        {
            holders.extend([
                &dataset["facets"],
                &dataset["inputFacets"],
                &dataset["outputFacets"],
            ]);
        }
        let facets = holders
            .into_iter()
            .filter_map(Value::as_object)
            .flat_map(|map| map.iter());
        for (name, facet) in facets {
            if let Some((_, validator)) = self.facets.iter().find(|(n, _)| n == name) {
                let wrapped = json!({ name: facet });
                let errors: Vec<String> = validator
                    .iter_errors(&wrapped)
                    .map(|e| e.to_string())
                    .collect();
                assert!(errors.is_empty(), "facet {name}: {errors:#?}\n{facet:#}");
            }
        }
    }
}

fn events(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn with_lineage(pipeline: &Path, table: &str) {
    let text = std::fs::read_to_string(pipeline).unwrap();
    std::fs::write(pipeline, format!("{text}\n[lineage]\n{table}\n")).unwrap();
}

#[test]
fn a_flights_run_emits_start_and_complete_that_validate_and_name_its_data() {
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
    with_lineage(
        &pipeline,
        "file = \"lineage/events.jsonl\"\nnamespace = \"test\"",
    );
    let report = Pipeline::load(&pipeline)
        .unwrap()
        .run(&RunOptions::default())
        .unwrap();
    let counts = report.lineage.unwrap();
    assert_eq!((counts.sent, counts.dropped, counts.failed), (2, 0, 0));

    let events = events(&dir.path().join("lineage/events.jsonl"));
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["eventType"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["START", "COMPLETE"]);
    let spec = spec();
    for event in &events {
        spec.check(event);
        assert_eq!(event["run"]["runId"], report.run_id.as_str());
        assert_eq!(
            event["job"],
            json!({ "namespace": "test", "name": report.pipeline })
        );
    }
    let complete = &events[1];
    let input = &complete["inputs"][0];
    assert_eq!(input["namespace"], "file");
    assert!(
        input["name"]
            .as_str()
            .unwrap()
            .ends_with("flights_sample.csv"),
        "{input}"
    );
    let fields = input["facets"]["schema"]["fields"].as_array().unwrap();
    assert!(
        fields.iter().any(|f| f["name"] == "arr_delay"),
        "{fields:?}"
    );
    let quality = &input["inputFacets"]["dataQualityMetrics"];
    assert_eq!(quality["rowCount"], report.records.read);
    let (sink, quarantine) = (&complete["outputs"][0], &complete["outputs"][1]);
    assert!(
        sink["name"].as_str().unwrap().ends_with("out/flights"),
        "{sink}"
    );
    assert_eq!(
        sink["outputFacets"]["outputStatistics"]["rowCount"],
        report.records.written
    );
    assert_eq!(
        sink["outputFacets"]["outputStatistics"]["fileCount"],
        report.outputs.len()
    );
    assert!(
        sink["outputFacets"]["outputStatistics"]["size"]
            .as_u64()
            .unwrap()
            > 0
    );
    let sink_fields = sink["facets"]["schema"]["fields"].as_array().unwrap();
    assert!(
        sink_fields.iter().any(|f| f["name"] == "delay_class"),
        "the sink's schema, after the stages"
    );
    assert_eq!(
        quarantine["outputFacets"]["outputStatistics"]["rowCount"],
        report.records.quarantined
    );
    let stages = complete["run"]["facets"]["weir_plugins"]["stages"]
        .as_array()
        .unwrap();
    assert_eq!(stages.len(), report.stages.len());
    assert_eq!(stages[0]["sha256"], report.stages[0].plugin_sha256.as_str());
    assert_eq!(
        complete["run"]["facets"]["weir_quarantine"]["quarantined"],
        report.records.quarantined
    );
}

#[test]
fn a_failed_run_emits_fail_with_its_error() {
    let dir = tempfile::tempdir().unwrap();
    action_csv(dir.path(), &["ok", "trap"]);
    let pipeline = one_stage_pipeline(
        dir.path(),
        "transform",
        weir_tests::PANIC,
        1,
        "on_error = \"fail\"",
    );
    with_lineage(&pipeline, "file = \"events.jsonl\"");
    assert!(
        Pipeline::load(&pipeline)
            .unwrap()
            .run(&RunOptions::default())
            .is_err()
    );
    let events = events(&dir.path().join("events.jsonl"));
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["eventType"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["START", "FAIL"]);
    let spec = spec();
    events.iter().for_each(|e| spec.check(e));
    let message = events[1]["run"]["facets"]["errorMessage"]["message"]
        .as_str()
        .unwrap();
    assert!(message.contains("probe"), "{message}");
}

#[test]
fn events_reach_an_http_endpoint_and_a_dead_one_delays_a_run_by_at_most_flush_ms() {
    let dir = tempfile::tempdir().unwrap();
    action_csv(dir.path(), &["ok", "ok", "ok"]);
    let pipeline = one_stage_pipeline(dir.path(), "transform", weir_tests::IDENTITY, 1, "");
    let text = std::fs::read_to_string(&pipeline)
        .unwrap()
        .replace("[sink]\n", "[sink]\nmode = \"overwrite\"\n");
    std::fs::write(&pipeline, &text).unwrap();

    let (url, received) = http_endpoint(true, 0);
    with_lineage(&pipeline, &format!("url = \"{url}\""));
    let report = Pipeline::load(&pipeline)
        .unwrap()
        .run(&RunOptions::default())
        .unwrap();
    assert_eq!(report.lineage.unwrap().sent, 2);
    let received = received.lock().unwrap().clone();
    let paths: Vec<&str> = received.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(paths, ["/api/v1/lineage", "/api/v1/lineage"]);
    assert_eq!(received[1].1["eventType"], "COMPLETE");
    assert_eq!(received[1].1["run"]["runId"], report.run_id.as_str());

    // A dead endpoint: requests time out after 10 s, but the run waits for
    // its events at most flush_ms = 500 ms, then counts them as dropped.
    std::fs::write(&pipeline, &text).unwrap();
    let baseline = {
        let started = Instant::now();
        Pipeline::load(&pipeline)
            .unwrap()
            .run(&RunOptions::default())
            .unwrap();
        started.elapsed()
    };
    let (dead, _) = http_endpoint(false, 0);
    with_lineage(
        &pipeline,
        &format!("url = \"{dead}\"\ntimeout_ms = 10000\nflush_ms = 500"),
    );
    let started = Instant::now();
    let report = Pipeline::load(&pipeline)
        .unwrap()
        .run(&RunOptions::default())
        .unwrap();
    let elapsed = started.elapsed();
    assert!(
        elapsed < baseline + Duration::from_millis(500 + 1500),
        "took {elapsed:?} against {baseline:?} without lineage"
    );
    let counts = report.lineage.unwrap();
    assert_eq!((counts.sent, counts.dropped), (0, 2), "{counts:?}");
}

#[test]
fn a_run_abandoned_by_restart_gets_abort_and_is_aborted_in_the_history() {
    let dir = tempfile::tempdir().unwrap();
    let mut csv = String::from("id,value\n");
    for i in 0..100 {
        csv.push_str(&format!("{i},{}\n", i * 2));
    }
    std::fs::write(dir.path().join("in.csv"), csv).unwrap();
    std::fs::write(
        dir.path().join("pipeline.toml"),
        r#"
[source]
format = "csv"
path = "in.csv"

[sink]
format = "jsonl"
path = "out.jsonl"

[quarantine]
format = "jsonl"
path = "q.jsonl"

[lineage]
file = "events.jsonl"
"#,
    )
    .unwrap();
    // Killed mid-read: its checkpoint stays for a resume.
    let killed = crate::crash::spawn_weir(
        dir.path(),
        &["run", "pipeline.toml", "--no-progress"],
        Some("mid-read:1"),
    )
    .wait()
    .unwrap();
    assert!(!killed.success());
    let history_file = dir
        .path()
        .join(".out.jsonl.weir-state")
        .join(weir::history::HISTORY_FILE);
    let runs = weir::history::History::open(&history_file)
        .unwrap()
        .list(10)
        .unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].status, "running");
    let killed_id = runs[0].run_id.clone();
    let status = crate::crash::spawn_weir(
        dir.path(),
        &["run", "pipeline.toml", "--no-progress", "--restart"],
        None,
    )
    .wait()
    .unwrap();
    let log = std::fs::read_to_string(dir.path().join("child.log")).unwrap_or_default();
    assert!(status.success(), "{log}");

    let events = events(&dir.path().join("events.jsonl"));
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["eventType"].as_str().unwrap())
        .collect();
    // ABORT (the killed run, as the restart begins), then the restart's
    // START and COMPLETE; the killed run's own START may come first, or
    // may have died in the lineage queue with its process.
    assert!(
        kinds.ends_with(&["ABORT", "START", "COMPLETE"]),
        "{events:#?}"
    );
    let spec = spec();
    events.iter().for_each(|e| spec.check(e));
    let n = events.len();
    assert_eq!(events[n - 3]["run"]["runId"], killed_id.as_str());
    assert_ne!(events[n - 2]["run"]["runId"], killed_id.as_str());
    assert!(
        events[n - 3]["run"]["facets"]["errorMessage"]["message"]
            .as_str()
            .unwrap()
            .contains("--restart")
    );
    let runs = weir::history::History::open(&history_file)
        .unwrap()
        .list(10)
        .unwrap();
    let statuses: Vec<(&str, &str)> = runs
        .iter()
        .map(|r| (r.run_id.as_str(), r.status.as_str()))
        .collect();
    assert!(
        statuses.contains(&(killed_id.as_str(), "aborted")),
        "{statuses:?}"
    );
    assert!(
        statuses.iter().any(|(_, s)| *s == "succeeded"),
        "{statuses:?}"
    );
}
