//! The operator dashboard in a real headless Chromium
//! (`tests/browser/dashboard.mjs`, Debian's `chromium` through
//! playwright-core), and its browser sessions checked at the API level.
//!
//! The service has two tenants: `a` with the flights pipeline, an
//! `events` pipeline whose `clean` stage is a hot-reloadable component
//! and a nightly schedule of the flights job, and `b` with an `orders`
//! pipeline. Screenshots of every view, at a
//! desktop and a narrow width, are left in
//! `$CARGO_TARGET_TMPDIR/dashboard-screenshots/`.

use std::path::{Path, PathBuf};
use std::process::Command;

use reqwest::StatusCode;
use reqwest::blocking::Client;
use serde_json::{Value, json};

use crate::serve::Running;

const EVENTS_PIPELINE: &str = r#"
[pipeline]
name = "events"
workers = 1

[source]
format = "jsonl"
schema = [
  { name = "id", type = "int64" },
  { name = "action", type = "utf8" },
  { name = "value", type = "int64" },
]

[[stages]]
name = "check"
kind = "validate"
plugin = "builtin:check"

[[stages.config.rules]]
id = "value_non_negative"
column = "value"
check = "range"
ge = 0

[[stages]]
name = "clean"
kind = "transform"
plugin = "plugins/clean.wasm"

[sink]
format = "jsonl"
path = "out"

[quarantine]
format = "jsonl"
path = "quarantine"

[history]
interval = "1s"
"#;

const ORDERS_PIPELINE: &str = r#"
[pipeline]
name = "orders"

[source]
format = "jsonl"
schema = [{ name = "id", type = "int64" }, { name = "amount", type = "int64" }]

[[stages]]
name = "check"
kind = "validate"
plugin = "builtin:check"

[[stages.config.rules]]
id = "amount_positive"
column = "amount"
check = "range"
gt = 0

[sink]
format = "jsonl"
path = "out"

[quarantine]
format = "jsonl"
path = "quarantine"
"#;

struct Tokens {
    a: String,
    b: String,
    operator: String,
}

/// The service of the module docs under `root`.
fn write_service(root: &Path) -> (PathBuf, Tokens) {
    let data = weir_tests::data_dir();
    let a = root.join("tenants/a");
    std::fs::create_dir_all(a.join("data")).unwrap();
    std::fs::create_dir_all(a.join("plugins")).unwrap();
    std::fs::copy(data.join("flights_sample.csv"), a.join("data/flights.csv")).unwrap();
    std::fs::copy(data.join("airlines.csv"), a.join("data/airlines.csv")).unwrap();
    let flights = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/flights/pipeline.toml"),
    )
    .unwrap();
    // The same job run nightly by a schedule, into its own directory.
    let nightly = flights
        .replace("name = \"flights\"", "name = \"flights_nightly\"")
        .replace("out/", "nightly/");
    std::fs::write(a.join("flights.toml"), flights).unwrap();
    std::fs::write(a.join("nightly.toml"), nightly).unwrap();
    std::fs::write(a.join("events.toml"), EVENTS_PIPELINE).unwrap();
    std::fs::copy(weir_tests::IDENTITY, a.join("plugins/clean.wasm")).unwrap();
    let b = root.join("tenants/b");
    std::fs::create_dir_all(&b).unwrap();
    std::fs::write(b.join("orders.toml"), ORDERS_PIPELINE).unwrap();

    let (token_a, hash_a) = weir::serve::auth::new_token().unwrap();
    let (token_b, hash_b) = weir::serve::auth::new_token().unwrap();
    let (operator, operator_hash) = weir::serve::auth::new_token().unwrap();
    let path = root.join("service.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[service]
state_dir = "state"
operator_token_sha256 = "{operator_hash}"

[[tenants]]
name = "a"
dir = "tenants/a"
tokens = [{{ id = "a-ui", sha256 = "{hash_a}" }}]

[[tenants.pipelines]]
file = "flights.toml"
linger_ms = 20
sink_path = "serve/flights"
quarantine_path = "serve/quarantine"

[[tenants.pipelines]]
file = "events.toml"
linger_ms = 20

[[tenants.schedules]]
file = "nightly.toml"
name = "nightly"
cron = "0 2 * * *"
timezone = "Europe/Paris"

[[tenants]]
name = "b"
dir = "tenants/b"
tokens = [{{ id = "b-ui", sha256 = "{hash_b}" }}]

[[tenants.pipelines]]
file = "orders.toml"
linger_ms = 20
"#
        ),
    )
    .unwrap();
    (
        path,
        Tokens {
            a: token_a,
            b: token_b,
            operator,
        },
    )
}

/// Debian's Chromium, or `WEIR_CHROMIUM`.
fn chromium() -> PathBuf {
    if let Some(path) = std::env::var_os("WEIR_CHROMIUM") {
        return PathBuf::from(path);
    }
    for candidate in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if Path::new(candidate).is_file() {
            return PathBuf::from(candidate);
        }
    }
    panic!(
        "the dashboard tests need Chromium: apt-get install chromium (scripts/install-system-packages does), or set WEIR_CHROMIUM"
    );
}

/// playwright-core, installed by `scripts/install-guest-tools`.
fn playwright_core() -> PathBuf {
    let path = weir::authoring::toolchain::tools_dir().join("browser/node_modules/playwright-core");
    assert!(
        path.join("index.mjs").is_file(),
        "the dashboard tests need playwright-core at {}: run scripts/install-guest-tools",
        path.display()
    );
    path
}

fn sha256_of(file: &str) -> String {
    weir::plugin::sha256_hex(&std::fs::read(file).unwrap())
}

#[test]
fn the_dashboard_works_in_a_real_browser_for_operators_and_tenants() {
    let dir = tempfile::tempdir().unwrap();
    let (service, tokens) = write_service(dir.path());
    let running = Running::start(&service);
    let screenshots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots");
    let output = Command::new("node")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("browser/dashboard.mjs"))
        .env("WEIR_URL", running.url())
        .env("TOKEN_A", &tokens.a)
        .env("TOKEN_B", &tokens.b)
        .env("TOKEN_OPERATOR", &tokens.operator)
        .env(
            "FLIGHTS_CSV",
            weir_tests::data_dir().join("flights_sample.csv"),
        )
        .env(
            "CLEAN_WASM",
            dir.path().join("tenants/a/plugins/clean.wasm"),
        )
        .env("PANIC_WASM", weir_tests::PANIC)
        .env("IDENTITY_SHA", sha256_of(weir_tests::IDENTITY))
        .env("PANIC_SHA", sha256_of(weir_tests::PANIC))
        .env("SCREENSHOTS", &screenshots)
        .env("CHROMIUM", chromium())
        .env("PLAYWRIGHT_CORE", playwright_core())
        .output()
        .expect("node runs (apt-get install nodejs)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the browser test failed:\n{stdout}\n{stderr}"
    );
    for view in [
        "login",
        "overview",
        "pipeline",
        "plugins",
        "quarantine",
        "runs",
        "run",
        "tenants",
    ] {
        for width in ["desktop", "narrow"] {
            let file = screenshots.join(format!("{view}-{width}.png"));
            assert!(
                file.metadata().is_ok_and(|m| m.len() > 1000),
                "screenshot {}",
                file.display()
            );
        }
    }
    // What the browser saw is what the service did: the replayed row was
    // written once, through the rolled-back version.
    let written = std::fs::read_dir(dir.path().join("tenants/a/out"))
        .unwrap()
        .flatten()
        .flat_map(|e| crate::support::read_jsonl(&e.path()))
        .collect::<Vec<_>>();
    let ids: Vec<i64> = written.iter().filter_map(|r| r["id"].as_i64()).collect();
    assert_eq!(
        ids.iter().filter(|&&id| id == 2).count(),
        1,
        "the trapped row, replayed, is in the sink once: {ids:?}"
    );
    running.shutdown().unwrap();
}

/// A client that sends the session cookie it was given, like a browser
/// (reqwest is built without its cookie store).
struct Browser {
    client: Client,
    url: String,
    cookie: Option<String>,
}

impl Browser {
    fn new(url: &str) -> Browser {
        Browser {
            client: Client::new(),
            url: url.to_string(),
            cookie: None,
        }
    }

    /// Logs in with `token`: the status, the answer and the `Set-Cookie`.
    fn login(&mut self, token: &str) -> (StatusCode, Value, Option<String>) {
        let response = self
            .client
            .post(format!("{}/v1/session", self.url))
            .json(&json!({ "token": token }))
            .send()
            .unwrap();
        let set_cookie = response
            .headers()
            .get("set-cookie")
            .map(|v| v.to_str().unwrap().to_string());
        if let Some(set) = &set_cookie {
            self.cookie = Some(set.split(';').next().unwrap().to_string());
        }
        (response.status(), response.json().unwrap(), set_cookie)
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::blocking::RequestBuilder {
        let request = self.client.request(method, format!("{}{path}", self.url));
        match &self.cookie {
            Some(cookie) => request.header("cookie", cookie),
            None => request,
        }
    }

    fn get(&self, path: &str) -> reqwest::blocking::Response {
        self.request(reqwest::Method::GET, path).send().unwrap()
    }
}

#[test]
fn browser_sessions_need_the_csrf_token_stay_in_their_tenant_and_end_with_their_token() {
    let dir = tempfile::tempdir().unwrap();
    let (service, tokens) = write_service(dir.path());
    let running = Running::start(&service);
    let url = running.url().to_string();

    // The page and its files need no login; they carry a strict CSP.
    let page = reqwest::blocking::get(format!("{url}/ui/")).unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let csp = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert!(page.text().unwrap().contains("app.js"));
    let script = reqwest::blocking::get(format!("{url}/ui/app.js")).unwrap();
    assert!(
        script.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );

    // A wrong token opens nothing.
    let mut client = Browser::new(&url);
    let (status, answer, cookie) = client.login(&format!("weir_{}", "0".repeat(64)));
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
    assert!(cookie.is_none());

    // Tenant b logs in: an HttpOnly, SameSite=Strict cookie and a CSRF token.
    let (status, answer, cookie) = client.login(&tokens.b);
    assert_eq!(status, StatusCode::OK, "{answer}");
    let cookie = cookie.expect("a session cookie");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(!cookie.contains("Secure"), "plain HTTP: not Secure");
    let behind_https = client
        .client
        .post(format!("{url}/v1/session"))
        .header("x-forwarded-proto", "https")
        .json(&json!({ "token": tokens.b }))
        .send()
        .unwrap();
    let secure = behind_https.headers()["set-cookie"].to_str().unwrap();
    assert!(
        secure.starts_with("__Host-weir_session=") && secure.ends_with("; Secure"),
        "{secure}"
    );
    let elsewhere = client
        .client
        .post(format!("{url}/v1/session"))
        .header("origin", "https://evil.example")
        .json(&json!({ "token": tokens.b }))
        .send()
        .unwrap();
    assert_eq!(
        elsewhere.status(),
        StatusCode::FORBIDDEN,
        "login from another site"
    );
    assert_eq!(answer["caller"]["tenant"], "b");
    let csrf = answer["csrf_token"].as_str().unwrap().to_string();
    let answer = client.get("/v1/session");
    assert_eq!(answer.headers()["cache-control"], "no-store");
    let session: Value = answer.json().unwrap();
    let planted = client
        .request(reqwest::Method::GET, "/v1/pipelines/orders")
        .header("cookie", "weir_session=planted")
        .send()
        .unwrap();
    assert_eq!(
        planted.status(),
        StatusCode::UNAUTHORIZED,
        "a second session cookie is refused, not chosen"
    );
    assert_eq!(
        session["csrf_token"],
        csrf.as_str(),
        "the page can get it again"
    );

    // Reads with the cookie alone; its own tenant only.
    let own = client.get("/v1/pipelines/orders");
    assert_eq!(own.status(), StatusCode::OK);
    for path in ["/v1/tenants/a/pipelines", "/v1/tenants/a/pipelines/events"] {
        let other = client.get(path);
        assert_eq!(other.status(), StatusCode::NOT_FOUND, "{path}");
    }
    let tenants = client.get("/v1/tenants");
    assert_eq!(tenants.status(), StatusCode::FORBIDDEN);

    // Changes need the CSRF token; from another site they are refused even
    // with it; another tenant's pipeline does not exist.
    let pause = |path: &str, csrf: Option<&str>, origin: Option<&str>| {
        let mut request = client.request(reqwest::Method::POST, path);
        if let Some(csrf) = csrf {
            request = request.header("x-csrf-token", csrf);
        }
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        request.send().unwrap().status()
    };
    let orders = "/v1/pipelines/orders/pause";
    assert_eq!(pause(orders, None, None), StatusCode::FORBIDDEN, "no CSRF");
    assert_eq!(
        pause(orders, Some("0123"), None),
        StatusCode::FORBIDDEN,
        "wrong CSRF"
    );
    assert_eq!(
        pause(orders, Some(&csrf), Some("https://evil.example")),
        StatusCode::FORBIDDEN,
        "another site"
    );
    assert_eq!(
        pause("/v1/tenants/a/pipelines/events/pause", Some(&csrf), None),
        StatusCode::NOT_FOUND,
        "another tenant's"
    );
    let state = |name: &str, tenant: &str| -> Value {
        reqwest::blocking::Client::new()
            .get(format!("{url}/v1/tenants/{tenant}/pipelines/{name}"))
            .bearer_auth(&tokens.operator)
            .send()
            .unwrap()
            .json::<Value>()
            .unwrap()["state"]
            .clone()
    };
    assert_eq!(state("orders", "b"), "running", "nothing was paused yet");
    assert_eq!(state("events", "a"), "running");
    let same_origin = url.clone();
    assert_eq!(
        pause(orders, Some(&csrf), Some(&same_origin)),
        StatusCode::OK,
        "the page's own change"
    );
    assert_eq!(state("orders", "b"), "paused");
    assert_eq!(
        pause("/v1/pipelines/orders/resume", Some(&csrf), None),
        StatusCode::OK
    );

    // The quarantine browser's time filter: rows quarantined in a window.
    let posted = reqwest::blocking::Client::new()
        .post(format!("{url}/v1/pipelines/orders/records"))
        .bearer_auth(&tokens.b)
        .header("content-type", "application/x-ndjson")
        .body("{\"id\":1,\"amount\":5}\n{\"id\":2,\"amount\":-3}\n")
        .send()
        .unwrap();
    assert_eq!(posted.status(), StatusCode::OK);
    let hour = std::time::Duration::from_secs(3600);
    let at = |t: std::time::SystemTime| humantime::format_rfc3339_seconds(t).to_string();
    let matched = |query: &str| -> (StatusCode, Value) {
        let answer = client.get(&format!("/v1/pipelines/orders/quarantine?{query}"));
        (answer.status(), answer.json().unwrap())
    };
    let now = std::time::SystemTime::now();
    let (status, listed) = matched(&format!("since={}", at(now - hour)));
    assert_eq!(status, StatusCode::OK, "{listed}");
    assert_eq!(listed["matched"], 1, "{listed}");
    assert_eq!(listed["rows"][0]["record"]["id"], 2);
    assert!(
        listed["rows"][0]["quarantined_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{listed}"
    );
    assert_eq!(
        matched(&format!("since={}", at(now + hour))).1["matched"],
        0
    );
    assert_eq!(
        matched(&format!("until={}", at(now - hour))).1["matched"],
        0
    );
    // An offset is honoured; a time without a zone is refused, not guessed.
    let an_hour_ago_in_paris = chrono::DateTime::<chrono::Utc>::from(now - hour)
        .with_timezone(&chrono::FixedOffset::east_opt(3600).unwrap())
        .to_rfc3339();
    assert_eq!(
        matched(&format!(
            "since={}",
            an_hour_ago_in_paris.replace('+', "%2B")
        ))
        .1["matched"],
        1
    );
    let (status, _) = matched("since=2026-12-06T05:00:00");
    assert_eq!(status, StatusCode::BAD_REQUEST, "no zone");
    let (status, error) = matched("since=yesterday");
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        error["error"].as_str().unwrap().contains("since"),
        "{error}"
    );

    // Without the cookie, nothing.
    let anonymous = Client::new();
    let status = anonymous
        .post(format!("{url}{orders}"))
        .header("x-csrf-token", &csrf)
        .send()
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Revoking the token ends its sessions at once.
    let revoked = reqwest::blocking::Client::new()
        .delete(format!("{url}/v1/tenants/b/tokens/b-ui"))
        .bearer_auth(&tokens.operator)
        .send()
        .unwrap();
    assert_eq!(revoked.status(), StatusCode::OK);
    let after = client.get("/v1/pipelines/orders");
    assert_eq!(after.status(), StatusCode::UNAUTHORIZED);

    // Logging out ends a session: its cookie opens nothing afterwards.
    let mut operator = Browser::new(&url);
    let (status, answer, _) = operator.login(&tokens.operator);
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer["caller"]["role"], "operator");
    let csrf = answer["csrf_token"].as_str().unwrap();
    let out = operator
        .request(reqwest::Method::DELETE, "/v1/session")
        .header("x-csrf-token", csrf)
        .send()
        .unwrap();
    assert_eq!(out.status(), StatusCode::OK);
    // The browser drops the cookie; a copy of it kept elsewhere is dead too.
    let after = operator.get("/v1/tenants");
    assert_eq!(after.status(), StatusCode::UNAUTHORIZED);
    running.shutdown().unwrap();
}

#[test]
fn a_service_without_tokens_answers_only_requests_addressed_to_loopback_names() {
    // DNS rebinding: a page of evil.example whose name now resolves to
    // 127.0.0.1 reaches the loopback service with `Host: evil.example`.
    let dir = tempfile::tempdir().unwrap();
    crate::serve::write_pipeline(dir.path(), "");
    let running = Running::start(&crate::serve::write_service(dir.path(), "", ""));
    let port = running.url().rsplit(':').next().unwrap().to_string();
    let client = Client::new();
    let get = |path: &str, host: &str| {
        client
            .get(format!("{}{path}", running.url()))
            .header("host", host)
            .send()
            .unwrap()
    };
    let rebound = get("/v1/pipelines", &format!("evil.example:{port}"));
    assert_eq!(rebound.status(), StatusCode::FORBIDDEN);
    let error: Value = rebound.json().unwrap();
    assert!(
        error["error"].as_str().unwrap().contains("no tokens"),
        "{error}"
    );
    assert_eq!(
        get("/ui/", "evil.example").status(),
        StatusCode::FORBIDDEN,
        "the dashboard's files too"
    );
    for host in [format!("localhost:{port}"), format!("127.0.0.1:{port}")] {
        assert_eq!(
            get("/v1/pipelines", &host).status(),
            StatusCode::OK,
            "{host}"
        );
    }
    assert_eq!(
        get("/health", "evil.example").status(),
        StatusCode::OK,
        "probes answer whatever the name"
    );
    running.shutdown().unwrap();
}
