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
use weir::pipeline::Pipeline;

/// Rows of the committed flights sample served in this many parts.
const PARTS: usize = 3;

#[derive(Default)]
struct Api {
    /// (path and query, when) of every request received.
    hits: Mutex<Vec<(String, Instant)>>,
    /// `/flaky` answers 503 this many more times, then serves part 0.
    flaky_failures_left: AtomicUsize,
    /// The `Authorization` header of every request, when it had one.
    authorizations: Mutex<Vec<String>>,
}

/// A mock API on 127.0.0.1 (a random port) serving the flights sample as
/// CSV at `/flights?part=N`, plus `/flaky`, `/down` (always 503), `/slow`
/// (answers after 5 s), `/private` (part 0 for `Authorization: Bearer
/// {PARTNER_TOKEN}`, else 401) and `/whoami` (418 quoting the request's
/// `Authorization`, as a careless API might).
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

/// The partner API's token in the secret tests.
const PARTNER_TOKEN: &str = "pt-5ecret-0f-the-partner-42";

async fn answer(
    State(api): State<Arc<Api>>,
    uri: Uri,
    headers: axum::http::HeaderMap,
) -> (StatusCode, String) {
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    api.hits
        .lock()
        .unwrap()
        .push((path.clone(), Instant::now()));
    let authorization = headers
        .get("authorization")
        .map(|v| v.to_str().unwrap().to_string());
    if let Some(auth) = &authorization {
        api.authorizations.lock().unwrap().push(auth.clone());
    }
    match uri.path() {
        "/private" if authorization == Some(format!("Bearer {PARTNER_TOKEN}")) => {
            (StatusCode::OK, sample_part(0))
        }
        "/private" => (StatusCode::UNAUTHORIZED, "who are you?".into()),
        "/whoami" => (
            StatusCode::IM_A_TEAPOT,
            format!("you sent {}", authorization.unwrap_or_default()),
        ),
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

#[test]
fn a_secret_header_reaches_only_its_host_and_is_redacted_everywhere_weir_writes() {
    let api = MockApi::start(0);
    let dir = tempfile::tempdir().unwrap();
    // SAFETY: only this test reads this variable.
    unsafe { std::env::set_var("WEIR_TEST_PARTNER_TOKEN", PARTNER_TOKEN) };
    std::fs::write(dir.path().join("a.urls"), api.url("/private")).unwrap();
    std::fs::write(dir.path().join("b.urls"), api.url("/whoami")).unwrap();
    let host = format!("127.0.0.1:{}", api.port);
    let file = extract_pipeline(
        dir.path(),
        "*.urls",
        weir_tests::FETCH,
        &format!(
            r#"timeout_ms = 10000
capabilities = {{ http = {{ allow_hosts = ["{host}"], headers = {{ "{host}" = {{ Authorization = "Bearer ${{secret:partner}}" }} }} }} }}

[secrets]
partner = "env:WEIR_TEST_PARTNER_TOKEN"
"#
        ),
    );
    let report = run(&file);
    assert_eq!(
        report.records.written as usize,
        sample_part(0).lines().count() - 1
    );
    assert_eq!(report.records.quarantined, 1);
    assert_eq!(
        *api.api.authorizations.lock().unwrap(),
        [
            format!("Bearer {PARTNER_TOKEN}"),
            format!("Bearer {PARTNER_TOKEN}")
        ],
        "the host added the header to both requests"
    );
    // The API quoted the token back; the quarantine has the name instead.
    let quarantine = std::fs::read_to_string(dir.path().join("quarantine.jsonl")).unwrap();
    assert!(!quarantine.contains(PARTNER_TOKEN), "{quarantine}");
    assert!(
        quarantine.contains("you sent Bearer [secret:partner]"),
        "{quarantine}"
    );
    let history = walkdir(dir.path())
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "sqlite"))
        .collect::<Vec<_>>();
    assert!(!history.is_empty(), "the run is in a history");
    for path in history {
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            !String::from_utf8_lossy(&bytes).contains(PARTNER_TOKEN),
            "{} holds the token",
            path.display()
        );
    }
    assert!(
        !serde_json::to_string(&report)
            .unwrap()
            .contains(PARTNER_TOKEN)
    );

    // A reference to an undeclared secret, or an unset variable, is a
    // config problem naming the key, before anything runs.
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replace("secret:partner}", "secret:partnr}")).unwrap();
    let error = Pipeline::load(&file).unwrap_err().to_string();
    assert!(
        error.contains("source.extract.capabilities.http.headers") && error.contains("partnr"),
        "{error}"
    );
    std::fs::write(
        &file,
        text.replace("WEIR_TEST_PARTNER_TOKEN", "WEIR_TEST_NO_SUCH_VARIABLE"),
    )
    .unwrap();
    let error = Pipeline::load(&file).unwrap_err().to_string();
    assert!(
        error.contains("secrets.partner")
            && error.contains("WEIR_TEST_NO_SUCH_VARIABLE is not set"),
        "{error}"
    );
}

/// Every file under `dir`.
fn walkdir(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walkdir(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[test]
fn a_tenants_scheduled_pull_gets_the_secret_the_operator_gave_it() {
    let api = MockApi::start(0);
    let root = tempfile::tempdir().unwrap();
    let tenant = root.path().join("acme");
    std::fs::create_dir_all(tenant.join("plugins")).unwrap();
    std::fs::copy(weir_tests::FETCH, tenant.join("plugins/fetch.wasm")).unwrap();
    std::fs::write(tenant.join("a.urls"), api.url("/private")).unwrap();
    // The operator keeps the token in a file only weir's user can read.
    let secret = root.path().join("acme-partner.token");
    std::fs::write(&secret, format!("{PARTNER_TOKEN}\n")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let host = format!("127.0.0.1:{}", api.port);
    let pull = format!(
        r#"
[pipeline]
workers = 1

[source]
format = "extract"
path = "*.urls"

[source.extract]
plugin = "plugins/fetch.wasm"
capabilities = {{ http = {{ allow_hosts = ["{host}"], headers = {{ "{host}" = {{ Authorization = "Bearer ${{secret:partner}}" }} }} }} }}

[sink]
format = "jsonl"
path = "out/pull.jsonl"
mode = "overwrite"

[quarantine]
format = "jsonl"
path = "quarantine/pull.jsonl"
"#
    );
    std::fs::write(tenant.join("pull.toml"), &pull).unwrap();
    let service = root.path().join("service.toml");
    let service_text = format!(
        r#"
[service]
state_dir = "state"

[[tenants]]
name = "acme"
dir = "acme"
http_allow_hosts = ["{host}"]
secrets = {{ partner = "file:acme-partner.token" }}

[[tenants.schedules]]
file = "pull.toml"
cron = "* * * * * *"
retries = 0
"#
    );
    std::fs::write(&service, &service_text).unwrap();

    // A tenant's own file may not declare secrets: that would make the
    // service read its environment or files for the tenant.
    std::fs::write(
        tenant.join("pull.toml"),
        format!("{pull}\n[secrets]\npartner = \"env:HOME\"\n"),
    )
    .unwrap();
    let error = format!("{:#}", weir::serve::Service::load(&service).unwrap_err());
    assert!(
        error.contains("pull.toml: secrets: a tenant's pipeline may not declare secrets"),
        "{error}"
    );
    std::fs::write(tenant.join("pull.toml"), &pull).unwrap();

    let running = crate::serve::Running::start(&service);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        let (code, status) = running.oneshot(crate::serve::get("/v1/tenants/acme/schedules/pull"));
        assert_eq!(code, StatusCode::OK, "{status}");
        if status["succeeded"].as_u64().unwrap_or(0) >= 1 {
            break status;
        }
        assert!(Instant::now() < deadline, "no run succeeded: {status}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(status["failed"], 0, "{status}");
    running.shutdown().unwrap();
    let rows = read_jsonl(&tenant.join("out/pull.jsonl"));
    assert_eq!(rows.len(), sample_part(0).lines().count() - 1);
    assert!(
        api.api
            .authorizations
            .lock()
            .unwrap()
            .iter()
            .all(|a| *a == format!("Bearer {PARTNER_TOKEN}"))
    );
    for path in walkdir(root.path()) {
        if path == secret {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            !String::from_utf8_lossy(&bytes).contains(PARTNER_TOKEN),
            "{} holds the token",
            path.display()
        );
    }
}
