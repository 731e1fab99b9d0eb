//! Outbound HTTP for extract plugins: the `fetch` component GETs each URL of
//! its source file from a mock API on loopback. Allowlisted hosts work, any
//! other host is refused before anything is sent, failures are retried with
//! exponential backoff, and a host that keeps failing gets its circuit
//! opened.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{StatusCode, Uri};

use crate::support::{extract_pipeline, read_jsonl, run, write_pipeline};

/// Rows of the committed flights sample served in this many parts.
const PARTS: usize = 3;

#[derive(Default)]
struct Api {
    /// (path and query, when) of every request received.
    hits: Mutex<Vec<(String, Instant)>>,
    /// `/flaky` answers 503 this many more times, then serves part 0.
    flaky_failures_left: AtomicUsize,
}

/// A mock API on 127.0.0.1 (a random port) serving the flights sample as
/// CSV at `/flights?part=N`, plus `/flaky`, `/down` (always 503) and
/// `/slow` (answers after 5 s).
struct MockApi {
    port: u16,
    api: Arc<Api>,
    _runtime: tokio::runtime::Runtime,
}

impl MockApi {
    fn start(flaky_failures: usize) -> MockApi {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let api = Arc::new(Api::default());
        api.flaky_failures_left
            .store(flaky_failures, Ordering::SeqCst);
        let app = axum::Router::new().fallback(answer).with_state(api.clone());
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        runtime.spawn(async move { axum::serve(listener, app).await.unwrap() });
        MockApi {
            port,
            api,
            _runtime: runtime,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn hits(&self, path: &str) -> Vec<Instant> {
        self.api
            .hits
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, at)| *at)
            .collect()
    }

    fn total_hits(&self) -> usize {
        self.api.hits.lock().unwrap().len()
    }
}

async fn answer(State(api): State<Arc<Api>>, uri: Uri) -> (StatusCode, String) {
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    api.hits
        .lock()
        .unwrap()
        .push((path.clone(), Instant::now()));
    match uri.path() {
        "/flights" => {
            let part = uri
                .query()
                .and_then(|q| q.strip_prefix("part="))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            (StatusCode::OK, sample_part(part))
        }
        "/flaky" => {
            let left = api.flaky_failures_left.load(Ordering::SeqCst);
            if left > 0 {
                api.flaky_failures_left.store(left - 1, Ordering::SeqCst);
                (StatusCode::SERVICE_UNAVAILABLE, "busy".into())
            } else {
                (StatusCode::OK, sample_part(0))
            }
        }
        "/down" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "down for maintenance".into(),
        ),
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            (StatusCode::OK, sample_part(0))
        }
        _ => (StatusCode::NOT_FOUND, "no such endpoint".into()),
    }
}

fn sample_lines() -> Vec<String> {
    std::fs::read_to_string(weir_tests::data_dir().join("flights_sample.csv"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// The header plus the `part`-th of `PARTS` slices of the sample's rows.
fn sample_part(part: usize) -> String {
    let lines = sample_lines();
    let rows = &lines[1..];
    let size = rows.len().div_ceil(PARTS);
    let slice = rows.chunks(size).nth(part).unwrap_or(&[]);
    let mut text = lines[0].clone();
    for row in slice {
        text.push('\n');
        text.push_str(row);
    }
    text.push('\n');
    text
}

/// A pipeline reading `*.urls` through the `fetch` extractor, whose
/// source grants `http` (a TOML inline table body, or nothing when empty).
fn pipeline(dir: &Path, http: &str) -> PathBuf {
    let grant = if http.is_empty() {
        String::new()
    } else {
        format!("capabilities = {{ http = {{ {http} }} }}")
    };
    extract_pipeline(
        dir,
        "*.urls",
        weir_tests::FETCH,
        &format!("timeout_ms = 10000\n{grant}"),
    )
}

fn quarantine_messages(dir: &Path) -> Vec<(String, String)> {
    let path = dir.join("quarantine.jsonl");
    if !path.exists() {
        return Vec::new();
    }
    read_jsonl(&path)
        .iter()
        .map(|row| {
            let file = row["record"]["source_file"].as_str().unwrap();
            let name = Path::new(file).file_name().unwrap().to_string_lossy();
            (
                name.into_owned(),
                row["message"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn an_allowlisted_api_is_fetched_and_extracted() {
    let api = MockApi::start(0);
    let dir = tempfile::tempdir().unwrap();
    let urls = |parts: &[usize]| {
        parts
            .iter()
            .map(|n| api.url(&format!("/flights?part={n}")) + "\n")
            .collect::<String>()
    };
    std::fs::write(dir.path().join("a.urls"), urls(&[0, 1])).unwrap();
    std::fs::write(dir.path().join("b.urls"), urls(&[2])).unwrap();
    let report = run(&pipeline(
        dir.path(),
        &format!("allow_hosts = [\"127.0.0.1:{}\"]", api.port),
    ));

    let expected = sample_lines();
    assert_eq!(
        report.records.quarantined,
        0,
        "{:?}",
        quarantine_messages(dir.path())
    );
    assert_eq!(report.records.written as usize, expected.len() - 1);
    let http = report.source_http.expect("the source grants http");
    assert_eq!(
        (http.requests, http.attempts, http.retries, http.denied),
        (3, 3, 0, 0)
    );
    assert_eq!(api.total_hits(), 3);
    // Every row arrives, in order, with its values typed.
    let header: Vec<&str> = expected[0].split(',').collect();
    let column = |name: &str| header.iter().position(|h| *h == name).unwrap();
    for (row, line) in read_jsonl(&dir.path().join("out.jsonl"))
        .iter()
        .zip(&expected[1..])
    {
        let cells: Vec<&str> = line.split(',').collect();
        assert_eq!(
            row["tailnum"].as_str().unwrap_or("NA"),
            cells[column("tailnum")]
        );
        assert_eq!(
            row["distance"].as_i64().unwrap().to_string(),
            cells[column("distance")]
        );
        let dep_delay = cells[column("dep_delay")];
        match row["dep_delay"].as_i64() {
            Some(delay) => assert_eq!(delay.to_string(), dep_delay),
            None => assert_eq!(dep_delay, "NA", "a missing delay is null: {row}"),
        }
    }
}

#[test]
fn a_host_not_allowlisted_is_refused_before_anything_is_sent() {
    let allowed = MockApi::start(0);
    let other = MockApi::start(0);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.urls"), allowed.url("/flights?part=0")).unwrap();
    std::fs::write(dir.path().join("b.urls"), other.url("/flights?part=0")).unwrap();
    // The same server by another name is another host.
    let by_name = format!("http://localhost:{}/flights?part=1", allowed.port);
    std::fs::write(dir.path().join("c.urls"), by_name).unwrap();
    let report = run(&pipeline(
        dir.path(),
        &format!("allow_hosts = [\"127.0.0.1:{}\"]", allowed.port),
    ));

    assert_eq!(other.total_hits(), 0, "nothing reached the other host");
    assert_eq!(
        allowed.total_hits(),
        1,
        "only a.urls reached the allowed one"
    );
    let http = report.source_http.unwrap();
    assert_eq!((http.requests, http.attempts, http.denied), (3, 1, 2));
    let refused = quarantine_messages(dir.path());
    assert_eq!(refused.len(), 2, "{refused:?}");
    for (file, message) in &refused {
        assert!(["b.urls", "c.urls"].contains(&file.as_str()), "{file}");
        assert!(message.contains("HttpRequestDenied"), "{message}");
    }
}

#[test]
fn http_must_be_granted_and_only_to_extract_plugins() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.urls"), "http://127.0.0.1:9/x\n").unwrap();
    let errors = weir::pipeline::Pipeline::load(&pipeline(dir.path(), "")).unwrap_err();
    let error = errors
        .0
        .iter()
        .find(|e| e.key == "source.extract.capabilities")
        .unwrap_or_else(|| panic!("{errors}"));
    assert!(
        error.message.contains("imports `wasi:http/") && error.message.contains("allow_hosts"),
        "{error}"
    );

    let errors =
        weir::pipeline::Pipeline::load(&pipeline(dir.path(), "allow_hosts = []")).unwrap_err();
    assert!(
        errors.to_string().contains("`allow_hosts` is empty"),
        "{errors}"
    );

    let transform = write_pipeline(
        dir.path(),
        r#"
[source]
format = "csv"
path = "*.csv"

[[stages]]
name = "t"
kind = "transform"
plugin = "builtin:select"
capabilities = { http = { allow_hosts = ["example.com"] } }
"#,
    );
    let errors = weir::pipeline::Pipeline::load(&transform).unwrap_err();
    let error = errors
        .0
        .iter()
        .find(|e| e.key == "stages[0].capabilities.http")
        .unwrap_or_else(|| panic!("{errors}"));
    assert!(error.message.contains("only to extract plugins"), "{error}");
}

#[test]
fn failures_are_retried_with_exponential_backoff_then_the_host_circuit_opens() {
    let api = MockApi::start(3);
    let dir = tempfile::tempdir().unwrap();
    // Files are read in name order.
    std::fs::write(dir.path().join("1-flaky.urls"), api.url("/flaky")).unwrap();
    for name in ["2-down.urls", "3-down.urls", "4-down.urls"] {
        std::fs::write(dir.path().join(name), api.url("/down")).unwrap();
    }
    std::fs::write(
        dir.path().join("5-flights.urls"),
        api.url("/flights?part=0"),
    )
    .unwrap();
    let report = run(&pipeline(
        dir.path(),
        &format!(
            "allow_hosts = [\"127.0.0.1:{}\"], retries = 3, backoff_ms = 100, max_backoff_ms = 1000, breaker = {{ failures = 2, backoff_ms = 60000 }}",
            api.port
        ),
    ));

    // /flaky: three 503s, then the part; each wait is within its equal-jitter
    // range [d/2, d] for d = 100, 200, 400 ms (plus scheduling slack).
    let flaky = api.hits("/flaky");
    assert_eq!(flaky.len(), 4, "three retries");
    for (k, pair) in flaky.windows(2).enumerate() {
        let gap = pair[1] - pair[0];
        let full = Duration::from_millis(100 << k);
        assert!(gap >= full / 2, "wait {k}: {gap:?} < {:?}", full / 2);
        assert!(gap < full + Duration::from_millis(500), "wait {k}: {gap:?}");
    }
    // /down: two requests of four attempts each open the circuit; the
    // third request and the next one to the same host are refused unsent.
    assert_eq!(api.hits("/down").len(), 8);
    assert!(
        api.hits("/flights?part=0").is_empty(),
        "refused by the open circuit"
    );
    let http = report.source_http.unwrap();
    assert_eq!(
        (http.requests, http.attempts, http.retries, http.rested),
        (5, 12, 9, 2)
    );
    let quarantined = quarantine_messages(dir.path());
    let names: Vec<&str> = quarantined.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(
        names,
        [
            "2-down.urls",
            "3-down.urls",
            "4-down.urls",
            "5-flights.urls"
        ]
    );
    for (file, message) in &quarantined[..2] {
        assert!(
            message.contains("HTTP 503: down for maintenance"),
            "{file}: {message}"
        );
    }
    for (file, message) in &quarantined[2..] {
        assert!(
            message.contains("circuit open for 127.0.0.1:"),
            "{file}: {message}"
        );
    }
    assert_eq!(
        report.records.written as usize,
        sample_part(0).lines().count() - 1
    );
}

#[test]
fn a_slow_api_times_out_at_the_grant_timeout() {
    let api = MockApi::start(0);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.urls"), api.url("/slow")).unwrap();
    let started = Instant::now();
    let report = run(&pipeline(
        dir.path(),
        &format!(
            "allow_hosts = [\"127.0.0.1:{}\"], timeout_ms = 300, retries = 0",
            api.port
        ),
    ));
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(report.records.quarantined, 1);
    let (_, message) = &quarantine_messages(dir.path())[0];
    assert!(message.contains("Timeout"), "{message}");
}
