//! `weir serve`: the API through `Router::oneshot` and over a loopback
//! socket, micro-batches that merge requests, the flights sample over HTTP
//! against `weir run`, hot reload under continuous load with exactly-once
//! delivery, graceful shutdown and the drop directory.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;
use weir::serve::Service;

use crate::support::read_jsonl;

/// A service on a loopback port, with a way to call its router directly.
pub(crate) struct Running {
    background: weir::serve::background::Background,
    pub(crate) service: Arc<Service>,
    url: String,
}

impl Running {
    pub(crate) fn start(service_file: &Path) -> Running {
        let background = weir::serve::background::Background::start(service_file)
            .unwrap_or_else(|e| panic!("{e:#}"));
        Running {
            service: background.service().clone(),
            url: background.url().to_string(),
            background,
        }
    }

    /// The service's base URL (`http://127.0.0.1:PORT`).
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.background.runtime()
    }

    /// One request through the router, without a socket.
    pub(crate) fn oneshot(&self, request: Request<Body>) -> (StatusCode, Value) {
        let router = weir::serve::api::router(self.service.clone());
        self.runtime().block_on(async move {
            let response = router.oneshot(request).await.unwrap();
            let status = response.status();
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            let value = serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
            (status, value)
        })
    }

    /// Triggers shutdown and waits for the drain.
    pub(crate) fn shutdown(self) -> anyhow::Result<()> {
        self.background.shutdown()
    }
}

pub(crate) fn post(path: &str, content_type: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post(path)
        .header("content-type", content_type)
        .body(body.into())
        .unwrap()
}

pub(crate) fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

/// A pipeline over records `id` (int64), `action` (utf8), `value` (int64):
/// `flag` (validate: `bad` / null action), then `extra` stages, with JSON
/// Lines sink and quarantine directories and a lineage column.
pub(crate) fn write_pipeline(dir: &Path, extra_stages: &str) -> PathBuf {
    let text = format!(
        r#"
[pipeline]
name = "events"
workers = 2

[source]
format = "jsonl"
schema = [
  {{ name = "id", type = "int64" }},
  {{ name = "action", type = "utf8" }},
  {{ name = "value", type = "int64" }},
]

[[stages]]
name = "flag"
kind = "validate"
plugin = {flag:?}
{extra_stages}

[sink]
format = "jsonl"
path = "out"
lineage_column = "lineage"

[quarantine]
format = "jsonl"
path = "quarantine"
"#,
        flag = weir_tests::FLAG
    );
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, text).unwrap();
    path
}

pub(crate) fn write_service(dir: &Path, extra: &str, pipeline_extra: &str) -> PathBuf {
    let path = dir.join("service.toml");
    std::fs::write(
        &path,
        format!(
            "[service]\nstate_dir = \"state\"\n{extra}\n\n[[pipelines]]\nfile = \"pipeline.toml\"\n{pipeline_extra}\n"
        ),
    )
    .unwrap();
    path
}

/// JSON Lines records with ids `ids`, action `ok` unless listed in `bad`.
pub(crate) fn records(ids: std::ops::Range<i64>, bad: &[i64]) -> String {
    ids.map(|id| {
        let action = if bad.contains(&id) { "bad" } else { "ok" };
        format!(
            "{{\"id\":{id},\"action\":\"{action}\",\"value\":{}}}\n",
            id % 7
        )
    })
    .collect()
}

/// Every JSON object in the `part-*` files of `dir` (and below).
pub(crate) fn read_parts(dir: &Path) -> Vec<Value> {
    let mut rows = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return rows;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            if !path.file_name().unwrap().to_string_lossy().starts_with('.') {
                rows.extend(read_parts(&path));
            }
        } else if path.extension().is_some_and(|e| e == "jsonl") {
            rows.extend(read_jsonl(&path));
        }
    }
    rows
}

pub(crate) fn ids_of(rows: &[Value], pointer: &str) -> Vec<i64> {
    rows.iter()
        .map(|r| r.pointer(pointer).and_then(Value::as_i64).unwrap())
        .collect()
}

#[test]
fn api_ingests_every_format_and_rejects_bad_bodies_clearly() {
    let dir = tempfile::tempdir().unwrap();
    write_pipeline(dir.path(), "");
    let service = write_service(dir.path(), "max_body_bytes = 4096", "linger_ms = 5");
    let running = Running::start(&service);
    let path = "/v1/pipelines/events/records";

    // JSON Lines: a line that does not parse is quarantined, the rest go on.
    let body = format!("{}not json\n", records(0..5, &[3]));
    let (status, ack) = running.oneshot(post(path, "application/x-ndjson", body));
    assert_eq!(status, StatusCode::OK, "{ack}");
    assert_eq!(ack["received"], 6);
    assert_eq!(ack["written"], 4);
    assert_eq!(ack["quarantined"], 2);
    let kinds: BTreeSet<&str> = ack["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["error_kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, BTreeSet::from(["parse", "validation"]));

    // JSON array and CSV (header line, the pipeline's dialect).
    let (status, ack) = running.oneshot(post(
        path,
        "application/json; charset=utf-8",
        json!([{"id": 10, "action": "ok", "value": 1}, {"id": 11, "action": null, "value": 2}])
            .to_string(),
    ));
    assert_eq!(
        (status, ack["written"].clone(), ack["quarantined"].clone()),
        (StatusCode::OK, json!(1), json!(1))
    );
    let (status, ack) = running.oneshot(post(
        path,
        "text/csv",
        "id,action,value\n20,ok,1\n21,bad,2\n22,ok,x\n",
    ));
    assert_eq!(status, StatusCode::OK, "{ack}");
    assert_eq!(
        (ack["written"].clone(), ack["quarantined"].clone()),
        (json!(1), json!(2))
    );

    // Bad bodies: each a clear 4xx, nothing taken.
    let (status, error) = running.oneshot(post(path, "application/json", "[{\"id\": 1,"));
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        error["error"].as_str().unwrap().contains("not JSON"),
        "{error}"
    );
    let (status, error) = running.oneshot(post(path, "application/json", "42"));
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        error["error"].as_str().unwrap().contains("a number"),
        "{error}"
    );
    let (status, error) = running.oneshot(post(path, "text/plain", "id\n1\n"));
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(
        error["error"].as_str().unwrap().contains("text/csv"),
        "{error}"
    );
    let (status, error) = running.oneshot(post(path, "application/x-ndjson", records(0..200, &[])));
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(error["error"].as_str().unwrap().contains("4096"), "{error}");
    let (status, error) = running.oneshot(post("/v1/pipelines/nope/records", "text/csv", ""));
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        error["error"].as_str().unwrap().contains("events"),
        "{error}"
    );

    // Pause: 503 with Retry-After; resume: accepted again.
    assert_eq!(
        running
            .oneshot(
                Request::post("/v1/pipelines/events/pause")
                    .body(Body::empty())
                    .unwrap()
            )
            .1["state"],
        "paused"
    );
    let (status, _) = running.oneshot(post(path, "application/x-ndjson", records(30..31, &[])));
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        running
            .oneshot(
                Request::post("/v1/pipelines/events/resume")
                    .body(Body::empty())
                    .unwrap()
            )
            .1["state"],
        "running"
    );
    let (status, _) = running.oneshot(post(path, "application/x-ndjson", records(30..31, &[])));
    assert_eq!(status, StatusCode::OK);

    // Counts add up, in the API and in the files.
    let (_, status) = running.oneshot(get("/v1/pipelines/events"));
    assert_eq!(status["received"], 12);
    assert_eq!(status["written"], 7);
    assert_eq!(status["quarantined"], 5);
    assert_eq!(read_parts(&dir.path().join("out")).len(), 7);
    assert_eq!(read_parts(&dir.path().join("quarantine")).len(), 5);

    // The quarantine, filtered; replay re-runs rows once (they fail again).
    let (_, listed) = running.oneshot(get("/v1/pipelines/events/quarantine?rule=not_bad"));
    assert_eq!(listed["matched"], 2);
    assert_eq!(
        ids_of(listed["rows"].as_array().unwrap(), "/record/id"),
        vec![3, 21]
    );
    let ids: Vec<&str> = listed["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    let replay_ids = json!({ "ids": ids }).to_string();
    let replay = |body: &str| {
        running.oneshot(post(
            "/v1/pipelines/events/quarantine/replay",
            "application/json",
            body.to_string(),
        ))
    };
    let (status, replayed) = replay(&replay_ids);
    assert_eq!(status, StatusCode::OK, "{replayed}");
    assert_eq!(replayed["replayed"], 2);
    assert_eq!(replayed["result"]["quarantined"], 2, "they fail again");
    assert_eq!(
        replay(&replay_ids).1["replayed"],
        0,
        "a row is replayed at most once"
    );
    let (_, listed) = running.oneshot(get("/v1/pipelines/events/quarantine?rule=not_bad"));
    assert_eq!(
        listed["matched"], 2,
        "only the new rejections are still to replay"
    );
    let (_, parse) = running.oneshot(post(
        "/v1/pipelines/events/quarantine/replay",
        "application/json",
        json!({"error_kind": "parse"}).to_string(),
    ));
    assert_eq!(parse["not_replayable"].as_array().unwrap().len(), 2);
    let (status, _) = replay("{\"stage\": 1}");
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "a malformed filter is refused"
    );

    // Health, readiness, plugins, report, metrics.
    assert_eq!(running.oneshot(get("/health")).0, StatusCode::OK);
    assert_eq!(running.oneshot(get("/ready")).0, StatusCode::OK);
    let (_, plugins) = running.oneshot(get("/v1/plugins"));
    assert_eq!(plugins["plugins"][0]["stage"], "flag");
    assert_eq!(
        plugins["plugins"][0]["current_sha256"]
            .as_str()
            .unwrap()
            .len(),
        64
    );
    let (_, report) = running.oneshot(get("/v1/pipelines/events/report"));
    // 12 received, 2 did not parse, 2 replayed.
    assert_eq!(report["stages"][0]["records_in"], 12);
    assert!(!report["batches"].as_array().unwrap().is_empty());
    let (status, metrics) = running.oneshot(get("/metrics"));
    assert_eq!(status, StatusCode::OK);
    let metrics = metrics.as_str().unwrap();
    for name in [
        "weir_records_in_total{tenant=\"default\",pipeline=\"events\"}",
        "weir_plugin_healthy{tenant=\"default\",pipeline=\"events\",stage=\"flag\"} 1",
        "weir_plugin_call_duration_seconds_bucket",
        "weir_batch_latency_seconds_bucket",
        "weir_plugin_fuel_consumed_total",
        "weir_plugin_reloads_total",
    ] {
        assert!(metrics.contains(name), "/metrics has {name}");
    }
    running.shutdown().unwrap();
}

#[test]
fn openapi_describes_routes_that_exist() {
    let dir = tempfile::tempdir().unwrap();
    write_pipeline(dir.path(), "");
    let running = Running::start(&write_service(dir.path(), "", ""));
    let doc: Value = serde_json::from_str(weir::serve::api::OPENAPI_JSON).unwrap();
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 18);
    for (path, methods) in paths {
        let concrete = path
            .replace("{name}", "events")
            .replace("{stage}", "flag")
            .replace("{tenant}", "default")
            .replace("{id}", "x");
        for method in methods.as_object().unwrap().keys() {
            let request = Request::builder()
                .method(method.to_uppercase().as_str())
                .uri(&concrete)
                .body(Body::empty())
                .unwrap();
            let (status, body) = running.oneshot(request);
            // The router's own 404/405 have no JSON error body.
            assert!(
                !(matches!(
                    status,
                    StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED
                ) && body.get("error").is_none()),
                "{method} {path} is documented but not routed ({status})"
            );
        }
    }
    running.shutdown().unwrap();
}

/// A service whose pipeline adds a `filter` stage (drops rows with
/// value <= 2, which changes the row count of a batch that mixes
/// requests) and never cuts a micro-batch early, so that requests posted
/// together share one.
fn start_merging_filter(dir: &Path) -> Running {
    write_pipeline(
        dir,
        &format!(
            "[[stages]]\nname = \"keep\"\nkind = \"transform\"\nplugin = {:?}\nconfig = {{ gt = 2 }}\n",
            weir_tests::FILTER
        ),
    );
    Running::start(&write_service(dir, "", "linger_ms = 400\nquiet_ms = 0"))
}

/// Micro-batches the `events` pipeline has committed.
fn event_batches(running: &Running) -> u64 {
    running
        .service
        .pipeline("default", "events")
        .unwrap()
        .status()
        .batches
}

/// Posts JSON Lines `body` to the `events` pipeline through `router` and
/// returns the answer.
async fn post_events(router: axum::Router, body: String) -> Value {
    let response = router
        .oneshot(post(
            "/v1/pipelines/events/records",
            "application/x-ndjson",
            body,
        ))
        .await
        .unwrap();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice::<Value>(&bytes).unwrap()
}

#[test]
fn requests_merged_into_one_micro_batch_get_their_own_counts() {
    let dir = tempfile::tempdir().unwrap();
    let running = start_merging_filter(dir.path());
    let router = weir::serve::api::router(running.service.clone());
    let send = |body: String| post_events(router.clone(), body);
    // value = id % 7: ids 0..14 keep 3,4,5,6,10,11,12,13; ids 100..107 keep 101..104.
    let (a, b) = running
        .runtime()
        .block_on(async { tokio::join!(send(records(0..14, &[4])), send(records(100..107, &[]))) });
    assert_eq!(event_batches(&running), 1, "one micro-batch");
    assert_eq!(
        (
            a["received"].clone(),
            a["quarantined"].clone(),
            a["written"].clone(),
            a["filtered"].clone()
        ),
        (json!(14), json!(1), json!(7), json!(6))
    );
    assert_eq!(
        (
            b["received"].clone(),
            b["quarantined"].clone(),
            b["written"].clone(),
            b["filtered"].clone()
        ),
        (json!(7), json!(0), json!(4), json!(3))
    );
    running.shutdown().unwrap();
}

/// A micro-batch big enough to run as two halves on two workers (with an
/// idle core, as on a 2-core machine) gives every request the counts and
/// the rows it would get from one worker: the halves' outputs, rejected
/// rows and origins are joined back in request order.
#[test]
fn a_micro_batch_run_as_two_halves_gives_each_request_its_own_rows() {
    let dir = tempfile::tempdir().unwrap();
    let running = start_merging_filter(dir.path());
    let router = weir::serve::api::router(running.service.clone());
    let send = |body: String| post_events(router.clone(), body);
    let requests: [(std::ops::Range<i64>, &[i64]); 3] = [
        (0..3000, &[5, 2999]),
        (10_000..13_000, &[10_001]),
        (20_000..20_010, &[]),
    ];
    let answers = running.runtime().block_on(async {
        let [a, b, c] = requests.clone().map(|(ids, bad)| send(records(ids, bad)));
        let (a, b, c) = tokio::join!(a, b, c);
        [a, b, c]
    });
    assert_eq!(event_batches(&running), 1, "one micro-batch");
    running.shutdown().unwrap();
    let mut expected_written = Vec::new();
    for ((ids, bad), answer) in requests.iter().zip(&answers) {
        let kept: Vec<i64> = ids
            .clone()
            .filter(|id| !bad.contains(id) && id % 7 > 2)
            .collect();
        let received = ids.end - ids.start;
        assert_eq!(
            (
                answer["received"].clone(),
                answer["quarantined"].clone(),
                answer["written"].clone(),
                answer["filtered"].clone()
            ),
            (
                json!(received),
                json!(bad.len()),
                json!(kept.len()),
                json!(received as usize - bad.len() - kept.len())
            ),
            "request {ids:?}"
        );
        expected_written.extend(kept);
    }
    let mut written = ids_of(&read_parts(&dir.path().join("out")), "/id");
    written.sort_unstable();
    expected_written.sort_unstable();
    assert_eq!(written, expected_written, "each kept row once");
    let mut quarantined = ids_of(&read_parts(&dir.path().join("quarantine")), "/record/id");
    quarantined.sort_unstable();
    assert_eq!(quarantined, [5, 2999, 10_001]);
}

/// When every open HTTP connection is inside a request, no client can send
/// more, so the micro-batch is cut at once rather than after `quiet_ms`;
/// one idle keep-alive connection is enough for it to wait out the quiet
/// time again.
#[test]
fn a_micro_batch_is_cut_at_once_when_every_connection_waits_for_its_answer() {
    let dir = tempfile::tempdir().unwrap();
    write_pipeline(dir.path(), "");
    let running = Running::start(&write_service(
        dir.path(),
        "",
        "linger_ms = 60000\nquiet_ms = 3000",
    ));
    let post = |client: &reqwest::blocking::Client, ids: std::ops::Range<i64>| {
        let response = client
            .post(format!("{}/v1/pipelines/events/records", running.url))
            .header("content-type", "application/x-ndjson")
            .body(records(ids, &[]))
            .send()
            .unwrap();
        assert_eq!(response.status(), 200);
        response.json::<Value>().unwrap()["written"]
            .as_i64()
            .unwrap()
    };
    // Four clients, one connection each, three rounds: waiting out the
    // quiet time even once would take 3 s.
    let started = Instant::now();
    let written: i64 = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..4)
            .map(|c| {
                scope.spawn(move || {
                    let client = reqwest::blocking::Client::new();
                    (0..3)
                        .map(|round| {
                            post(&client, c * 1000 + round * 10..c * 1000 + round * 10 + 10)
                        })
                        .sum::<i64>()
                })
            })
            .collect();
        clients.into_iter().map(|c| c.join().unwrap()).sum()
    });
    let elapsed = started.elapsed();
    assert_eq!(written, 120);
    assert!(
        elapsed < Duration::from_millis(2500),
        "12 requests from 4 waiting clients took {elapsed:?}: a batch waited for quiet"
    );

    // A fifth connection, open and idle after its request: the next post
    // waits for the quiet time.
    let idle = reqwest::blocking::Client::new();
    let health = idle.get(format!("{}/health", running.url)).send().unwrap();
    assert!(health.status().is_success(), "{}", health.status());
    let started = Instant::now();
    assert_eq!(post(&reqwest::blocking::Client::new(), 5000..5010), 10);
    assert!(
        started.elapsed() >= Duration::from_millis(3000),
        "answered after {:?} with an idle connection open",
        started.elapsed()
    );
    drop(idle);
    assert_eq!(read_parts(&dir.path().join("out")).len(), 130);
    running.shutdown().unwrap();
}

/// Clients that wait for their answer before posting again are not held
/// for the linger time: once every request on its way is queued and no
/// record has come for `quiet_ms`, the micro-batch is cut. With
/// `quiet_ms = 0` a lone request waits out the linger.
#[test]
fn a_quiet_micro_batch_is_cut_without_waiting_out_its_linger() {
    let dir = tempfile::tempdir().unwrap();
    write_pipeline(dir.path(), "");
    // A minute of linger: any request that waited for it fails the
    // time bound below.
    let running = Running::start(&write_service(dir.path(), "", "linger_ms = 60000"));
    let router = weir::serve::api::router(running.service.clone());
    let client = |first: i64| {
        let router = router.clone();
        async move {
            let mut written = 0;
            for round in 0..5 {
                let ids = first + round * 10..first + round * 10 + 10;
                let response = router
                    .clone()
                    .oneshot(post(
                        "/v1/pipelines/events/records",
                        "application/x-ndjson",
                        records(ids, &[]),
                    ))
                    .await
                    .unwrap();
                assert_eq!(response.status(), StatusCode::OK);
                let bytes = response.into_body().collect().await.unwrap().to_bytes();
                written += serde_json::from_slice::<Value>(&bytes).unwrap()["written"]
                    .as_i64()
                    .unwrap();
            }
            written
        }
    };
    let started = Instant::now();
    let written = running.runtime().block_on(async {
        let (a, b, c, d) = tokio::join!(client(0), client(1000), client(2000), client(3000));
        a + b + c + d
    });
    let elapsed = started.elapsed();
    assert_eq!(written, 200);
    assert!(
        elapsed < Duration::from_secs(30),
        "20 requests took {elapsed:?}: some waited out the 60 s linger"
    );
    let status = running
        .service
        .pipeline("default", "events")
        .unwrap()
        .status();
    assert_eq!(status.quiet_ms, 2, "the default");
    // The 4 clients post together after each answer, so their requests
    // share micro-batches rather than each being cut alone.
    assert!(
        status.batches < 20,
        "{} micro-batches for 20 requests",
        status.batches
    );
    assert_eq!(read_parts(&dir.path().join("out")).len(), 200);
    running.shutdown().unwrap();

    let dir = tempfile::tempdir().unwrap();
    write_pipeline(dir.path(), "");
    let running = Running::start(&write_service(
        dir.path(),
        "",
        "linger_ms = 1500\nquiet_ms = 0",
    ));
    let started = Instant::now();
    let (status, ack) = running.oneshot(post(
        "/v1/pipelines/events/records",
        "application/x-ndjson",
        records(0..10, &[]),
    ));
    assert_eq!(status, StatusCode::OK, "{ack}");
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "answered after {:?}, before the linger",
        started.elapsed()
    );
    running.shutdown().unwrap();
}

/// `bytes` with a custom section appended: the same component, another
/// content hash (a distinct version for the reload test).
fn variant(bytes: &[u8], name: &str) -> Vec<u8> {
    let mut payload = vec![name.len() as u8];
    payload.extend_from_slice(name.as_bytes());
    payload.extend_from_slice(b"weir reload test");
    let mut out = bytes.to_vec();
    out.push(0); // custom section id
    out.push(payload.len() as u8); // LEB128 size, < 128
    out.extend_from_slice(&payload);
    out
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[test]
fn hot_reload_under_continuous_load_delivers_every_record_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let plugin_path = dir.path().join("probe.wasm");
    let identity = std::fs::read(weir_tests::IDENTITY).unwrap();
    let versions: Vec<Vec<u8>> = ["v1", "v2", "v3"]
        .iter()
        .map(|v| variant(&identity, v))
        .collect();
    std::fs::write(&plugin_path, &versions[0]).unwrap();
    write_pipeline(
        dir.path(),
        "[[stages]]\nname = \"probe\"\nkind = \"transform\"\nplugin = \"probe.wasm\"\n",
    );
    let service = write_service(
        dir.path(),
        "reload_debounce_ms = 10",
        "linger_ms = 20\nmax_batch_rows = 500",
    );
    let running = Running::start(&service);
    let valid: BTreeSet<String> = versions
        .iter()
        .map(|v| weir::plugin::sha256_hex(v))
        .collect();

    // Posters: continuous requests of 40 records with unique ids.
    let stop = Arc::new(AtomicBool::new(false));
    let posters: Vec<_> = (0..2)
        .map(|poster| {
            let (url, stop) = (running.url.clone(), stop.clone());
            std::thread::spawn(move || {
                let client = reqwest::blocking::Client::new();
                let mut acked = Vec::new();
                let mut next = poster * 10_000_000;
                while !stop.load(Ordering::Relaxed) {
                    let ids = next..next + 40;
                    next += 40;
                    let response = client
                        .post(format!("{url}/v1/pipelines/events/records"))
                        .header("content-type", "application/x-ndjson")
                        .body(records(ids.clone(), &[]))
                        .send()
                        .unwrap();
                    assert_eq!(response.status(), 200, "{}", response.text().unwrap());
                    let ack: Value = response.json().unwrap();
                    assert_eq!(ack["written"], 40);
                    acked.extend(ids);
                }
                acked
            })
        })
        .collect();

    // Swapper: 3 valid versions in turn, with a broken and a wrong-world
    // file in between; each file written by rename, as a build tool does.
    let client = reqwest::blocking::Client::new();
    let plugins = |client: &reqwest::blocking::Client| -> Value {
        client
            .get(format!("{}/v1/plugins", running.url))
            .send()
            .unwrap()
            .json::<Value>()
            .unwrap()["plugins"][1]
            .clone()
    };
    let write = |bytes: &[u8]| {
        let tmp = dir.path().join(".probe.wasm.tmp");
        std::fs::write(&tmp, bytes).unwrap();
        std::fs::rename(&tmp, &plugin_path).unwrap();
    };
    let wrong_world = std::fs::read(weir_tests::FLAG).unwrap();
    let mut latencies = Vec::new();
    let mut swaps = 0;
    let mut rejected = 0;
    let mut current = 0;
    for round in 0..120 {
        let before = plugins(&client);
        let written = Instant::now();
        if round % 4 == 3 {
            // Broken or wrong-world: rejected, the old version serves.
            write(if round % 8 == 3 {
                b"not a component".as_slice()
            } else {
                &wrong_world
            });
            let rejections = before["rejections"].as_u64().unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let now = plugins(&client);
                if now["rejections"].as_u64().unwrap() > rejections {
                    assert_eq!(now["current_sha256"], before["current_sha256"]);
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "round {round}: no rejection seen"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            rejected += 1;
            // Put the serving version back on disk.
            write(&versions[current]);
            std::thread::sleep(Duration::from_millis(30));
            continue;
        }
        current = (current + 1) % versions.len();
        let want = weir::plugin::sha256_hex(&versions[current]);
        write(&versions[current]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while plugins(&client)["current_sha256"] != want.as_str() {
            assert!(
                Instant::now() < deadline,
                "round {round}: version not swapped in"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        latencies.push(written.elapsed());
        swaps += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let acked: Vec<i64> = posters
        .into_iter()
        .flat_map(|p| p.join().unwrap())
        .collect();
    // The report names, for each recent micro-batch, the versions that
    // produced its files: the same as the rows' lineage.
    let (_, report) = running.oneshot(get("/v1/pipelines/events/report"));
    let batches = report["batches"].as_array().unwrap();
    assert!(!batches.is_empty());
    for batch in batches {
        let versions: Vec<&str> = batch["plugin_versions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        for file in batch["outputs"].as_array().unwrap() {
            for row in read_jsonl(Path::new(file.as_str().unwrap())) {
                assert_eq!(row["lineage"], versions.join(";"));
            }
        }
    }
    running.shutdown().unwrap();

    assert!(
        swaps >= 90 && rejected >= 30,
        "{swaps} swaps, {rejected} rejected"
    );
    latencies.sort();
    eprintln!(
        "hot reload under load: {swaps} swaps (+{rejected} rejected), file written → serving p50 {:?} p99 {:?} (debounce 10 ms); {} records",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        acked.len()
    );

    let out = read_parts(&dir.path().join("out"));
    let quarantined = read_parts(&dir.path().join("quarantine"));
    assert!(
        quarantined.is_empty(),
        "identity quarantines nothing: {:?}",
        quarantined.first()
    );
    let mut seen: HashMap<i64, usize> = HashMap::new();
    for id in ids_of(&out, "/id") {
        *seen.entry(id).or_default() += 1;
    }
    assert_eq!(
        seen.len(),
        acked.len(),
        "every acknowledged record is written"
    );
    assert!(seen.values().all(|&n| n == 1), "no record is written twice");
    assert!(acked.iter().all(|id| seen.contains_key(id)));
    let mut stamped = BTreeSet::new();
    for row in &out {
        let lineage = row["lineage"].as_str().unwrap();
        let probe = lineage
            .split(';')
            .find_map(|s| s.strip_prefix("probe="))
            .unwrap();
        assert!(
            valid.contains(probe),
            "stamped with a version that never served: {probe}"
        );
        stamped.insert(probe.to_string());
    }
    assert!(stamped.len() >= 2, "records went through several versions");
    // Versions never mix within a micro-batch: each part file has one.
    for entry in std::fs::read_dir(dir.path().join("out")).unwrap() {
        let rows = read_jsonl(&entry.unwrap().path());
        let lineages: BTreeSet<&str> = rows
            .iter()
            .map(|r| r["lineage"].as_str().unwrap())
            .collect();
        assert_eq!(lineages.len(), 1);
    }
}

#[test]
fn graceful_shutdown_writes_everything_it_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    write_pipeline(dir.path(), "");
    // A long linger and no early cut: requests are still waiting for their
    // batch at shutdown.
    let running = Running::start(&write_service(
        dir.path(),
        "",
        "linger_ms = 5000\nquiet_ms = 0",
    ));
    let url = running.url.clone();
    let posters: Vec<_> = (0..4)
        .map(|i| {
            let url = url.clone();
            std::thread::spawn(move || {
                let response = reqwest::blocking::Client::new()
                    .post(format!("{url}/v1/pipelines/events/records"))
                    .header("content-type", "application/x-ndjson")
                    .body(records(i * 100..i * 100 + 50, &[]))
                    .send();
                match response {
                    Ok(r) if r.status() == 200 => (i * 100..i * 100 + 50).collect::<Vec<i64>>(),
                    _ => Vec::new(),
                }
            })
        })
        .collect();
    let live = running
        .service
        .pipeline("default", "events")
        .unwrap()
        .clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    while live.status().queued_records < 200 {
        assert!(Instant::now() < deadline, "requests did not arrive");
        std::thread::sleep(Duration::from_millis(5));
    }
    let started = Instant::now();
    running.shutdown().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "shutdown flushes without waiting for the linger"
    );
    let acked: BTreeSet<i64> = posters
        .into_iter()
        .flat_map(|p| p.join().unwrap())
        .collect();
    assert_eq!(acked.len(), 200, "every in-flight request was answered");
    let written: Vec<i64> = ids_of(&read_parts(&dir.path().join("out")), "/id");
    assert_eq!(written.len(), 200);
    assert_eq!(written.into_iter().collect::<BTreeSet<_>>(), acked);
}

/// Waits (at most 15 s) until the drop-directory checkpoint `checkpoint`
/// has `lines` lines.
pub(crate) fn wait_for_lines(checkpoint: &Path, lines: usize) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let done = std::fs::read_to_string(checkpoint)
            .map(|t| t.lines().count())
            .unwrap_or(0);
        if done >= lines {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{done} of {lines} files processed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn drop_directory_ingests_each_file_once_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    write_pipeline(dir.path(), "");
    let drop = dir.path().join("incoming");
    std::fs::create_dir(&drop).unwrap();
    let service = write_service(dir.path(), "", "drop_dir = \"incoming\"\nlinger_ms = 5");
    let checkpoint = dir.path().join("state/events/processed.jsonl");
    let wait_for = |lines: usize| wait_for_lines(&checkpoint, lines);

    std::fs::write(drop.join("a.jsonl"), records(0..30, &[5])).unwrap();
    std::fs::write(drop.join(".hidden.jsonl"), records(500..510, &[])).unwrap();
    let running = Running::start(&service);
    std::fs::write(drop.join("b.csv"), "id,action,value\n100,ok,1\n101,ok,2\n").unwrap();
    wait_for(2);
    running.shutdown().unwrap();

    // Restart: a and b are not ingested again; c is new.
    std::fs::write(
        drop.join("c.json"),
        json!([{"id": 200, "action": "ok", "value": 3}]).to_string(),
    )
    .unwrap();
    let running = Running::start(&service);
    wait_for(3);
    std::thread::sleep(Duration::from_millis(300));
    running.shutdown().unwrap();

    let entries: BTreeMap<String, Value> = read_jsonl(&checkpoint)
        .into_iter()
        .map(|e| (e["file"].as_str().unwrap().to_string(), e))
        .collect();
    assert_eq!(
        entries.keys().collect::<Vec<_>>(),
        ["a.jsonl", "b.csv", "c.json"]
    );
    assert_eq!(entries["a.jsonl"]["quarantined"], 1);
    let mut written = ids_of(&read_parts(&dir.path().join("out")), "/id");
    written.sort();
    let mut expected: Vec<i64> = (0..30).filter(|&i| i != 5).chain([100, 101, 200]).collect();
    expected.sort();
    assert_eq!(
        written, expected,
        "each file's records once; hidden files ignored"
    );
}

#[test]
fn flights_sample_over_http_gives_the_same_output_as_weir_run() {
    let data = weir_tests::data_dir();
    let dir = tempfile::tempdir().unwrap();
    weir_tests::write_flights_pipeline(
        dir.path(),
        "pipeline.toml",
        &data,
        "flights_sample.csv",
        None,
    );
    // weir run on the whole sample.
    let report = crate::support::run(&dir.path().join("pipeline.toml"));
    let run_rows = crate::support::output_rows(&dir.path().join("out/flights"));
    let run_quarantine: Vec<Value> = read_jsonl(&dir.path().join("out/quarantine.jsonl"));

    // weir serve, the same rows posted as CSV in chunks of 300.
    let service = write_service(
        dir.path(),
        "",
        "linger_ms = 50\nsink_path = \"serve/flights\"\nquarantine_path = \"serve/quarantine\"",
    );
    let running = Running::start(&service);
    let text = std::fs::read_to_string(data.join("flights_sample.csv")).unwrap();
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    let rows: Vec<&str> = lines.collect();
    let client = reqwest::blocking::Client::new();
    let mut totals = (0, 0);
    for chunk in rows.chunks(300) {
        let body = format!("{header}\n{}\n", chunk.join("\n"));
        let ack: Value = client
            .post(format!("{}/v1/pipelines/flights/records", running.url))
            .header("content-type", "text/csv")
            .body(body)
            .send()
            .unwrap()
            .json()
            .unwrap();
        totals.0 += ack["written"].as_u64().unwrap();
        totals.1 += ack["quarantined"].as_u64().unwrap();
    }
    running.shutdown().unwrap();

    assert_eq!(totals, (report.records.written, report.records.quarantined));
    assert_eq!(
        crate::support::output_rows(&dir.path().join("serve/flights")),
        run_rows
    );
    let key = |rows: Vec<Value>| -> Vec<String> {
        let mut keys: Vec<String> = rows
            .iter()
            .map(|r| format!("{} {} {}", r["stage"], r["rule"], r["record"]))
            .collect();
        keys.sort();
        keys
    };
    assert_eq!(
        key(read_parts(&dir.path().join("serve/quarantine"))),
        key(run_quarantine)
    );
}

/// Runs `weir ARGS` in-process with logging off.
fn weir(args: &[&str]) -> u8 {
    weir::cli::run(
        ["weir", "--log", "off"]
            .into_iter()
            .chain(args.iter().copied()),
    )
}

#[test]
fn operator_commands_steer_a_running_service() {
    use weir::cli::{EXIT_INVALID, EXIT_OK, EXIT_RUN_FAILED};
    let dir = tempfile::tempdir().unwrap();
    let identity = std::fs::read(weir_tests::IDENTITY).unwrap();
    let plugin = dir.path().join("probe.wasm");
    std::fs::write(&plugin, variant(&identity, "a")).unwrap();
    write_pipeline(
        dir.path(),
        "[[stages]]\nname = \"probe\"\nkind = \"transform\"\nplugin = \"probe.wasm\"\n",
    );
    // A long debounce: only the explicit reload below swaps versions.
    let service = write_service(dir.path(), "reload_debounce_ms = 600000", "linger_ms = 5");
    let running = Running::start(&service);
    let url = running.url.clone();
    let url = url.as_str();
    let slot = |i: usize| {
        running
            .service
            .pipeline("default", "events")
            .unwrap()
            .pipeline()
            .stages()[i]
            .slot
            .status()
    };

    let input = dir.path().join("rows.jsonl");
    std::fs::write(&input, records(0..10, &[2])).unwrap();
    let input = input.to_str().unwrap();
    assert_eq!(weir(&["post", "events", input, "--url", url]), EXIT_OK);
    assert_eq!(
        running
            .service
            .pipeline("default", "events")
            .unwrap()
            .status()
            .written,
        9
    );
    assert_eq!(weir(&["status", "--url", url]), EXIT_OK);
    assert_eq!(weir(&["status", "events", "--url", url]), EXIT_OK);
    assert_eq!(weir(&["plugin", "ls", "--url", url]), EXIT_OK);
    assert_eq!(
        weir(&[
            "quarantine",
            "ls",
            "events",
            "--rule",
            "not_bad",
            "--url",
            url
        ]),
        EXIT_OK
    );

    let first = slot(1).current_sha256;
    std::fs::write(&plugin, variant(&identity, "b")).unwrap();
    assert_eq!(
        weir(&["plugin", "reload", "events", "probe", "--url", url]),
        EXIT_OK
    );
    assert_ne!(slot(1).current_sha256, first);
    std::fs::write(&plugin, b"garbage").unwrap();
    assert_eq!(
        weir(&["plugin", "reload", "events", "probe", "--url", url]),
        EXIT_RUN_FAILED,
        "a broken file is rejected"
    );
    assert_eq!(slot(1).rejections, 1);
    assert_eq!(
        weir(&["plugin", "rollback", "events", "probe", "--url", url]),
        EXIT_OK
    );
    assert_eq!(slot(1).current_sha256, first);
    assert_eq!(
        weir(&["plugin", "rollback", "events", "probe", "--url", url]),
        EXIT_RUN_FAILED,
        "no older version"
    );
    assert_eq!(
        weir(&["plugin", "reload", "events", "nope", "--url", url]),
        EXIT_RUN_FAILED,
        "no such stage"
    );

    assert_eq!(weir(&["pause", "events", "--url", url]), EXIT_OK);
    assert_eq!(
        weir(&["post", "events", input, "--url", url]),
        EXIT_RUN_FAILED,
        "paused"
    );
    assert_eq!(weir(&["resume", "events", "--url", url]), EXIT_OK);
    assert_eq!(
        weir(&[
            "quarantine",
            "replay",
            "events",
            "--rule",
            "not_bad",
            "--url",
            url
        ]),
        EXIT_OK
    );
    running.shutdown().unwrap();
    assert_eq!(
        weir(&["status", "--url", url]),
        EXIT_RUN_FAILED,
        "nothing listens any more"
    );

    std::fs::write(
        dir.path().join("bad.toml"),
        "[service]\nlisten = \"nowhere\"\n\n[[pipelines]]\nfile = \"missing.toml\"\n",
    )
    .unwrap();
    assert_eq!(
        weir(&["serve", dir.path().join("bad.toml").to_str().unwrap()]),
        EXIT_INVALID
    );
    let errors = weir::serve::config::ServiceConfig::from_file(&dir.path().join("bad.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        errors.contains("service.listen") && errors.contains("pipelines[0].file"),
        "{errors}"
    );
}

#[test]
fn a_served_pipeline_records_its_history_per_interval_and_alerts_when_data_stops() {
    let dir = tempfile::tempdir().unwrap();
    let (webhook, received) = crate::support::http_endpoint(true, 0);
    let pipeline = write_pipeline(dir.path(), "");
    let mut text = std::fs::read_to_string(&pipeline).unwrap();
    text.push_str(&format!(
        "\n[history]\ninterval = \"1s\"\n\n[checks]\nwebhook = \"{webhook}/alerts\"\n\n[checks.freshness]\nmax_age = \"2s\"\n\n[checks.volume]\nmax_rows = 5\n"
    ));
    std::fs::write(&pipeline, text).unwrap();
    let service = write_service(dir.path(), "", "");
    let running = Running::start(&service);
    for (ids, bad) in [(0..10, vec![3]), (10..25, vec![])] {
        let (code, body) = running.oneshot(post(
            "/v1/pipelines/events/records",
            "application/x-ndjson",
            records(ids, &bad),
        ));
        assert_eq!(code, StatusCode::OK, "{body}");
    }
    // Each interval is judged (more rows than `max_rows`: a volume
    // alert); data stops: after 2 s of silence, one freshness alert, not
    // one per second.
    let checks_alerted = || -> Vec<String> {
        received
            .lock()
            .unwrap()
            .iter()
            .flat_map(|(path, alert)| {
                assert_eq!(path, "/alerts");
                alert["checks"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|c| c["check"].as_str().unwrap().to_string())
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !checks_alerted().contains(&"freshness".to_string()) {
        assert!(Instant::now() < deadline, "no freshness alert");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(2500));
    let alerted = checks_alerted();
    assert_eq!(
        alerted.iter().filter(|c| *c == "freshness").count(),
        1,
        "{alerted:?}"
    );
    assert!(alerted.contains(&"volume".to_string()), "{alerted:?}");
    assert!(
        alerted.iter().all(|c| c == "freshness" || c == "volume"),
        "{alerted:?}"
    );
    // The ended intervals are in the history: kind `serve`, every record
    // counted once.
    let (code, body) = running.oneshot(get("/v1/pipelines/events/runs"));
    assert_eq!(code, StatusCode::OK, "{body}");
    let runs = body["runs"].as_array().unwrap();
    assert!(!runs.is_empty(), "{body}");
    let total = |key: &str| runs.iter().map(|r| r[key].as_u64().unwrap()).sum::<u64>();
    assert_eq!(
        (total("read"), total("written"), total("quarantined")),
        (25, 24, 1)
    );
    for run in runs {
        assert_eq!(run["kind"], "serve", "{run}");
        assert_eq!(run["status"], "succeeded", "{run}");
        assert_eq!(run["checks"][0]["check"], "volume", "{run}");
        assert!(
            run["run_id"].as_str().unwrap().starts_with("serve-"),
            "{run}"
        );
    }
    let (code, metrics) = running.oneshot(get("/metrics"));
    assert_eq!(code, StatusCode::OK);
    assert!(
        metrics
            .as_str()
            .unwrap()
            .contains(r#"weir_check_results_total{tenant="default",pipeline="events",check="freshness",status="fail"}"#),
        "{metrics}"
    );
    running.shutdown().unwrap();
}
