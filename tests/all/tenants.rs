//! Tenants: every route authorizes by tenant (no token, a malformed or
//! revoked one, tenant A, tenant B and the operator against tenant A's
//! objects), plugin uploads and names cannot write outside the tenant's
//! directory, a tenant's pipeline cannot point outside it, and the ingest
//! quotas answer 429 and 413.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::json;

use crate::serve::Running;

/// A tenant's pipeline `events`: `flag` (validate) from the tenant's own
/// `plugins/flag.wasm`, JSON Lines sink and quarantine inside its dir.
fn write_tenant(dir: &Path) {
    std::fs::create_dir_all(dir.join("plugins")).unwrap();
    std::fs::copy(weir_tests::FLAG, dir.join("plugins/flag.wasm")).unwrap();
    std::fs::write(
        dir.join("pipeline.toml"),
        r#"
[pipeline]
name = "events"

[source]
format = "jsonl"
schema = [{ name = "id", type = "int64" }, { name = "action", type = "utf8" }]

[[stages]]
name = "flag"
kind = "validate"
plugin = "plugins/flag.wasm"

[sink]
format = "jsonl"
path = "out"

[quarantine]
format = "jsonl"
path = "quarantine"
"#,
    )
    .unwrap();
}

struct Tokens {
    a: String,
    b: String,
    operator: String,
}

/// Tenants `a` and `b` under `root`, with tokens; `quotas_a` is tenant
/// a's quotas table (TOML inline).
fn write_service(root: &Path, quotas_a: &str) -> (PathBuf, Tokens) {
    let (a, a_hash) = weir::serve::auth::new_token().unwrap();
    let (b, b_hash) = weir::serve::auth::new_token().unwrap();
    let (operator, operator_hash) = weir::serve::auth::new_token().unwrap();
    for tenant in ["a", "b"] {
        write_tenant(&root.join("tenants").join(tenant));
    }
    std::fs::create_dir_all(root.join("outside")).unwrap();
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
tokens = [{{ id = "a-ci", sha256 = "{a_hash}" }}]
quotas = {{ {quotas_a} }}

[[tenants.pipelines]]
file = "pipeline.toml"
linger_ms = 10

[[tenants]]
name = "b"
dir = "tenants/b"
tokens = [{{ id = "b-ci", sha256 = "{b_hash}" }}]

[[tenants.pipelines]]
file = "pipeline.toml"
linger_ms = 10
"#
        ),
    )
    .unwrap();
    (path, Tokens { a, b, operator })
}

/// A request with `authorization: TOKEN` when given; bodies of
/// `…/records` are JSON Lines, all others JSON.
fn request(method: &str, path: &str, token: Option<&str>, body: Body) -> Request<Body> {
    let content_type = if path.ends_with("/records") {
        "application/x-ndjson"
    } else {
        "application/json"
    };
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", content_type);
    if let Some(token) = token {
        builder = builder.header("authorization", token);
    }
    builder.body(body).unwrap()
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Posts JSON Lines `body` to `pipeline` of `token`'s tenant.
fn post_records(
    running: &Running,
    token: &str,
    pipeline: &str,
    body: impl Into<Body>,
) -> (StatusCode, serde_json::Value) {
    running.oneshot(request(
        "POST",
        &format!("/v1/pipelines/{pipeline}/records"),
        Some(&bearer(token)),
        body.into(),
    ))
}

/// Tenant `name`'s entry of `GET /v1/tenants`, asked with the operator token.
fn tenant_status(running: &Running, operator: &str, name: &str) -> serde_json::Value {
    let (status, tenants) = running.oneshot(request(
        "GET",
        "/v1/tenants",
        Some(&bearer(operator)),
        Body::empty(),
    ));
    assert_eq!(status, StatusCode::OK, "{tenants}");
    tenants["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("no tenant {name} in {tenants}"))
        .clone()
}

/// Every file under `dir`, relative.
fn files(dir: &Path) -> BTreeSet<PathBuf> {
    let mut found = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(next) = stack.pop() {
        for entry in std::fs::read_dir(&next).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                found.insert(path.strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    found
}

#[test]
fn every_route_authorizes_by_tenant() {
    let root = tempfile::tempdir().unwrap();
    let (service_file, tokens) = write_service(root.path(), "");
    let running = Running::start(&service_file);
    let operator = bearer(&tokens.operator);

    // A token issued through the API, then revoked.
    let (status, issued) = running.oneshot(request(
        "POST",
        "/v1/tenants/a/tokens",
        Some(&operator),
        Body::from(json!({"id": "temp"}).to_string()),
    ));
    assert_eq!(status, StatusCode::OK, "{issued}");
    let revoked = bearer(issued["token"].as_str().unwrap());
    let (status, _) = running.oneshot(request(
        "GET",
        "/v1/pipelines",
        Some(&revoked),
        Body::empty(),
    ));
    assert_eq!(
        status,
        StatusCode::OK,
        "the issued token works before revocation"
    );
    let (status, _) = running.oneshot(request(
        "DELETE",
        "/v1/tenants/a/tokens/temp",
        Some(&operator),
        Body::empty(),
    ));
    assert_eq!(status, StatusCode::OK);

    let record = "{\"id\":1,\"action\":\"ok\"}\n";
    let routes: Vec<(&str, &str, &str)> = vec![
        ("GET", "/pipelines", ""),
        ("GET", "/pipelines/events", ""),
        ("POST", "/pipelines/events/records", record),
        ("POST", "/pipelines/events/pause", ""),
        ("POST", "/pipelines/events/resume", ""),
        ("GET", "/pipelines/events/report", ""),
        ("GET", "/plugins", ""),
        ("POST", "/pipelines/events/stages/flag/reload", ""),
        ("POST", "/pipelines/events/stages/flag/rollback", ""),
        ("GET", "/pipelines/events/quarantine", ""),
        ("POST", "/pipelines/events/quarantine/replay", "{}"),
    ];
    let callers: Vec<(&str, Option<String>)> = vec![
        ("none", None),
        ("malformed", Some("Bearer not-a-token".to_string())),
        ("wrong scheme", Some(format!("Basic {}", tokens.a))),
        (
            "unknown",
            Some(bearer(&weir::serve::auth::new_token().unwrap().0)),
        ),
        ("revoked", Some(revoked.clone())),
        ("a", Some(bearer(&tokens.a))),
        ("b", Some(bearer(&tokens.b))),
        ("operator", Some(operator.clone())),
    ];
    for (method, route, body) in &routes {
        let path = format!("/v1/tenants/a{route}");
        for (who, token) in &callers {
            let req = request(
                method,
                &path,
                token.as_deref(),
                Body::from(body.to_string()),
            );
            let (status, answer) = running.oneshot(req);
            match *who {
                "none" | "malformed" | "wrong scheme" | "unknown" | "revoked" => {
                    assert_eq!(
                        status,
                        StatusCode::UNAUTHORIZED,
                        "{who} {method} {path}: {answer}"
                    )
                }
                // No cross-tenant success: b gets what a missing object gets.
                "b" => assert_eq!(
                    status,
                    StatusCode::NOT_FOUND,
                    "{who} {method} {path}: {answer}"
                ),
                // Tenant a and the operator get through authorization: the
                // route answers for itself (rollback has no previous
                // version: 409).
                _ => assert!(
                    status.is_success() || status == StatusCode::CONFLICT,
                    "{who} {method} {path}: {status} {answer}"
                ),
            }
        }
    }

    // The short routes act on the caller's own tenant: b's ingest lands in b.
    let req = request(
        "POST",
        "/v1/pipelines/events/records",
        Some(&bearer(&tokens.b)),
        Body::from(record),
    );
    let (status, ack) = running.oneshot(req);
    assert_eq!(status, StatusCode::OK, "{ack}");
    let status_of = |tenant: &str| {
        running
            .service
            .pipeline(tenant, "events")
            .unwrap()
            .status()
            .received
    };
    assert_eq!(status_of("b"), 1, "b's own record");
    assert_eq!(status_of("a"), 2, "a's and the operator's records only");

    // Operator-only routes refuse tenants.
    for path in ["/metrics", "/v1/tenants", "/v1/tenants/a/tokens"] {
        let (status, _) = running.oneshot(request(
            "GET",
            path,
            Some(&bearer(&tokens.a)),
            Body::empty(),
        ));
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
    }
    let (status, metrics) =
        running.oneshot(request("GET", "/metrics", Some(&operator), Body::empty()));
    assert_eq!(status, StatusCode::OK);
    let metrics = metrics.as_str().unwrap().to_string();
    assert!(
        metrics.contains("tenant=\"a\"") && metrics.contains("tenant=\"b\""),
        "every metric carries its tenant"
    );
    let (_, report) = running.oneshot(request(
        "GET",
        "/v1/pipelines/events/report",
        Some(&bearer(&tokens.a)),
        Body::empty(),
    ));
    assert_eq!(report["status"]["tenant"], "a");
    assert_eq!(report["batches"][0]["tenant"], "a");
    running.shutdown().unwrap();
}

#[test]
fn uploads_and_names_cannot_write_outside_the_tenant() {
    let root = tempfile::tempdir().unwrap();
    let (service_file, tokens) = write_service(root.path(), "max_plugin_bytes = 4_000_000");
    let running = Running::start(&service_file);
    let a = bearer(&tokens.a);
    let before_b = files(&root.path().join("tenants/b"));
    let before_outside = files(&root.path().join("outside"));

    // A valid component is stored by content hash in a's directory.
    let bytes = std::fs::read(weir_tests::IDENTITY).unwrap();
    let (status, stored) = running.oneshot(request(
        "POST",
        "/v1/plugins",
        Some(&a),
        Body::from(bytes.clone()),
    ));
    assert_eq!(status, StatusCode::OK, "{stored}");
    let sha256 = stored["sha256"].as_str().unwrap().to_string();
    assert_eq!(sha256, weir::plugin::sha256_hex(&bytes));
    let path = root
        .path()
        .join("tenants/a/plugins/sha256")
        .join(format!("{sha256}.wasm"));
    assert_eq!(std::fs::read(&path).unwrap(), bytes);

    // Garbage and oversized uploads are refused and store nothing.
    let (status, answer) = running.oneshot(request(
        "POST",
        "/v1/plugins",
        Some(&a),
        Body::from(vec![0u8; 1000]),
    ));
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    let (status, _) = running.oneshot(request(
        "POST",
        "/v1/plugins",
        Some(&a),
        Body::from(vec![0u8; 5_000_000]),
    ));
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        files(&root.path().join("tenants/a/plugins/sha256")).len(),
        1,
        "only the valid upload"
    );

    // Traversal in names: stage, pipeline, tenant and hash.
    for (method, path, body) in [
        (
            "POST",
            "/v1/pipelines/events/stages/..%2F..%2Foutside/reload",
            String::new(),
        ),
        (
            "POST",
            "/v1/pipelines/..%2F..%2Foutside/stages/flag/reload",
            String::new(),
        ),
        ("GET", "/v1/tenants/..%2Fb/pipelines", String::new()),
        (
            "POST",
            "/v1/pipelines/events/stages/flag/deploy",
            json!({"sha256": "../../../outside/x"}).to_string(),
        ),
        (
            "POST",
            "/v1/pipelines/events/stages/flag/deploy",
            json!({"sha256": format!("{}/../../b", &sha256[..60])}).to_string(),
        ),
    ] {
        let (status, answer) = running.oneshot(request(method, path, Some(&a), Body::from(body)));
        assert!(
            status == StatusCode::NOT_FOUND || status == StatusCode::BAD_REQUEST,
            "{path}: {status} {answer}"
        );
    }
    // b cannot deploy a's upload (it is not in b's directory).
    let (status, _) = running.oneshot(request(
        "POST",
        "/v1/pipelines/events/stages/flag/deploy",
        Some(&bearer(&tokens.b)),
        Body::from(json!({"sha256": sha256}).to_string()),
    ));
    assert_eq!(status, StatusCode::NOT_FOUND);
    // a deploys its upload: a transform into a validate stage is rejected,
    // the old version keeps serving.
    let (status, answer) = running.oneshot(request(
        "POST",
        "/v1/pipelines/events/stages/flag/deploy",
        Some(&a),
        Body::from(json!({"sha256": sha256}).to_string()),
    ));
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("transform"),
        "{answer}"
    );

    assert_eq!(
        files(&root.path().join("tenants/b")),
        before_b,
        "nothing written in b"
    );
    assert_eq!(
        files(&root.path().join("outside")),
        before_outside,
        "nothing written outside"
    );
    running.shutdown().unwrap();
}

#[test]
fn ingest_quotas_answer_429_and_413() {
    let root = tempfile::tempdir().unwrap();
    let (service_file, tokens) = write_service(
        root.path(),
        "ingest_burst = 3, ingest_requests_per_second = 0.5, max_body_bytes = 1000",
    );
    let running = Running::start(&service_file);
    let send = |token: &str, body: String| post_records(&running, token, "events", body);
    let record = "{\"id\":1,\"action\":\"ok\"}\n".to_string();
    let (status, answer) = send(&tokens.a, record.repeat(100));
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{answer}");
    let mut statuses = Vec::new();
    let mut took = Vec::new();
    for _ in 0..4 {
        let started = std::time::Instant::now();
        statuses.push(send(&tokens.a, record.clone()).0);
        took.push(started.elapsed());
    }
    // A 429 is held until the quota would allow a request (at most 1 s), so
    // a client retrying at once cannot flood the service with refusals.
    assert!(took[2] >= std::time::Duration::from_millis(900), "{took:?}");
    // The over-size request took a token too: 3 in the burst = 1 + 2 OK.
    assert_eq!(&statuses[..2], [StatusCode::OK, StatusCode::OK]);
    assert!(
        statuses[2..]
            .iter()
            .all(|s| *s == StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
    // b is not throttled by a's flood.
    assert_eq!(send(&tokens.b, record.clone()).0, StatusCode::OK);
    running.shutdown().unwrap();
}

#[test]
fn a_tenant_pipeline_cannot_point_outside_its_directory() {
    let root = tempfile::tempdir().unwrap();
    let (service_file, _) = write_service(root.path(), "");
    let pipeline = root.path().join("tenants/a/pipeline.toml");
    let text = std::fs::read_to_string(&pipeline)
        .unwrap()
        .replace("plugins/flag.wasm", weir_tests::FLAG)
        .replace("path = \"out\"", "path = \"../b/out\"");
    std::fs::write(&pipeline, text).unwrap();
    let error = format!(
        "{:#}",
        weir::serve::Service::load(&service_file).unwrap_err()
    );
    assert!(error.contains("stages[0].plugin"), "{error}");
    assert!(error.contains("sink.path"), "{error}");
    assert!(error.contains("outside tenant `a`"), "{error}");
}

#[test]
fn a_tenant_over_its_memory_quota_fails_alone_and_gets_its_memory_back() {
    let root = tempfile::tempdir().unwrap();
    // Less than one instance of the flag component needs to start.
    let (service_file, tokens) = write_service(root.path(), "max_memory_bytes = 65_536");
    let running = Running::start(&service_file);
    let send = |token: &str| {
        let body = "{\"id\":1,\"action\":\"ok\"}\n{\"id\":2,\"action\":\"ok\"}\n";
        post_records(&running, token, "events", body)
    };
    let (status, ack) = send(&tokens.a);
    assert_eq!(status, StatusCode::OK, "{ack}");
    assert_eq!(ack["quarantined"], 2, "{ack}");
    assert_eq!(ack["reasons"][0]["error_kind"], "memory_limit", "{ack}");
    let example = ack["reasons"][0]["example"].as_str().unwrap();
    assert!(
        example.contains("tenant `a`") && example.contains("max_memory_bytes = 65536"),
        "{example}"
    );
    let (status, ack) = send(&tokens.b);
    assert_eq!(
        (status, ack["written"].as_u64()),
        (StatusCode::OK, Some(2)),
        "{ack}"
    );

    let used = |name: &str| {
        tenant_status(&running, &tokens.operator, name)["memory_used_bytes"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(used("a"), 0, "failed instances gave their memory back");
    assert!(used("b") > 0, "b's idle instance holds its memory");
    running.shutdown().unwrap();
}

#[test]
fn a_flood_of_slow_batches_does_not_starve_another_tenant() {
    let root = tempfile::tempdir().unwrap();
    // One batch slot for the whole service, so the tenants must take turns.
    // Tenant a has 4 pipelines whose batches loop until their 500 ms
    // deadline, so up to 4 of its batches are ready at once.
    let (service_file, tokens) = write_service(
        root.path(),
        "max_concurrent_batches = 4, fuel_per_second = 0, ingest_requests_per_second = 1000",
    );
    let a_dir = root.path().join("tenants/a");
    std::fs::copy(weir_tests::SPIN, a_dir.join("plugins/spin.wasm")).unwrap();
    let pipeline = std::fs::read_to_string(a_dir.join("pipeline.toml")).unwrap();
    let a_pipelines: String = (0..4)
        .map(|i| {
            let text = pipeline
                .replace("name = \"events\"", &format!("name = \"loops{i}\""))
                .replace(
                    "name = \"flag\"\nkind = \"validate\"\nplugin = \"plugins/flag.wasm\"",
                    "name = \"spin\"\nkind = \"transform\"\nplugin = \"plugins/spin.wasm\"\ntimeout_ms = 500\nbisect_max_calls = 0",
                )
                .replace("path = \"out\"", &format!("path = \"out{i}\""))
                .replace("path = \"quarantine\"", &format!("path = \"quarantine{i}\""));
            std::fs::write(a_dir.join(format!("loops{i}.toml")), text).unwrap();
            format!("[[tenants.pipelines]]\nfile = \"loops{i}.toml\"\nlinger_ms = 1\n\n")
        })
        .collect();
    let service = std::fs::read_to_string(&service_file)
        .unwrap()
        .replace("[service]\n", "[service]\nmax_running_batches = 1\n")
        .replacen(
            "[[tenants.pipelines]]\nfile = \"pipeline.toml\"\nlinger_ms = 10\n",
            &a_pipelines,
            1,
        );
    std::fs::write(&service_file, service).unwrap();
    let running = Running::start(&service_file);
    let post = |token: &str, pipeline: &str, action: &str| {
        let body = format!("{{\"id\":1,\"action\":\"{action}\"}}\n");
        post_records(&running, token, pipeline, body)
    };
    let tenant_share =
        |name: &str| tenant_status(&running, &tokens.operator, name)["scheduler"].clone();

    std::thread::scope(|scope| {
        let flood: Vec<_> = (0..8)
            .map(|i| {
                let post = &post;
                let token = &tokens.a;
                scope.spawn(move || post(token, &format!("loops{}", i % 4), "loop"))
            })
            .collect();
        // Wait until a has one batch running and three waiting for the slot.
        let queued = std::time::Instant::now();
        while tenant_share("a")["waiting"].as_u64().unwrap_or(0) < 3 {
            assert!(
                queued.elapsed() < std::time::Duration::from_secs(10),
                "a never queued: {}",
                tenant_share("a")
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let started = std::time::Instant::now();
        let (status, ack) = post(&tokens.b, "events", "ok");
        let b_latency = started.elapsed();
        assert_eq!(
            (status, ack["written"].as_u64()),
            (StatusCode::OK, Some(1)),
            "{ack}"
        );
        // b waits for a's running batch (at most its 500 ms deadline), not
        // for the three a queued before it (another 1.5 s).
        assert!(
            b_latency < std::time::Duration::from_millis(1200),
            "b waited {b_latency:?} behind a's flood"
        );
        for request in flood {
            let (status, ack) = request.join().unwrap();
            assert_eq!(status, StatusCode::OK, "{ack}");
            assert_eq!(ack["written"].as_u64(), Some(0), "{ack}");
        }
    });
    // A batch frees its slot just after acknowledging its records.
    let acked = std::time::Instant::now();
    while tenant_share("a")["running"].as_u64() != Some(0) {
        assert!(acked.elapsed() < std::time::Duration::from_secs(5));
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let (a, b) = (tenant_share("a"), tenant_share("b"));
    // At least one 500 ms batch per pipeline of a.
    assert!(a["slot_seconds"].as_f64().unwrap() >= 4.0 * 0.45, "{a}");
    assert_eq!(a["waiting"].as_u64(), Some(0));
    assert!(b["slot_seconds"].as_f64().unwrap() < 0.5, "{b}");
    running.shutdown().unwrap();
}

#[test]
fn a_tenant_out_of_fuel_gets_no_split_calls() {
    let root = tempfile::tempdir().unwrap();
    // a's budget is smaller than one call of the flag validator.
    let (service_file, tokens) = write_service(root.path(), "fuel_per_second = 1000");
    let running = Running::start(&service_file);
    let body: String = (0..10)
        .map(|i| {
            let action = if i == 3 { "trap" } else { "ok" };
            format!("{{\"id\":{i},\"action\":\"{action}\"}}\n")
        })
        .collect();
    let send = |token: &str| post_records(&running, token, "events", body.clone());
    // b splits the batch and quarantines the poison row alone ...
    let (status, ack) = send(&tokens.b);
    assert_eq!(status, StatusCode::OK, "{ack}");
    assert_eq!(
        (ack["written"].as_u64(), ack["quarantined"].as_u64()),
        (Some(9), Some(1)),
        "{ack}"
    );
    // ... a, whose fuel is spent by the failed call, quarantines it whole.
    let (status, ack) = send(&tokens.a);
    assert_eq!(status, StatusCode::OK, "{ack}");
    assert_eq!(
        (ack["written"].as_u64(), ack["quarantined"].as_u64()),
        (Some(0), Some(10)),
        "{ack}"
    );
    let a = running.service.pipeline("a", "events").unwrap();
    assert_eq!(a.stage_reports()[0].bisect_calls, 0);
    assert!(a.stage_reports()[0].fuel_consumed > 1000);
    running.shutdown().unwrap();
}

#[test]
fn revoking_a_token_names_one_token_and_never_the_operators() {
    let dir = tempfile::tempdir().unwrap();
    let (service, tokens) = write_service(dir.path(), "");
    let running = Running::start(&service);
    let operator = bearer(&tokens.operator);
    let pipelines = |token: &str| {
        running
            .oneshot(request(
                "GET",
                "/v1/pipelines",
                Some(&bearer(token)),
                Body::empty(),
            ))
            .0
    };
    let issue = |id: &str| {
        let (status, answer) = running.oneshot(request(
            "POST",
            "/v1/tenants/a/tokens",
            Some(&operator),
            Body::from(json!({ "id": id }).to_string()),
        ));
        (
            status,
            answer["token"].as_str().unwrap_or_default().to_string(),
        )
    };
    let (status, first) = issue("x");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(pipelines(&first), StatusCode::OK);
    let (status, _) = running.oneshot(request(
        "DELETE",
        "/v1/tenants/a/tokens/x",
        Some(&operator),
        Body::empty(),
    ));
    assert_eq!(status, StatusCode::OK);
    assert_eq!(pipelines(&first), StatusCode::UNAUTHORIZED);
    assert_eq!(pipelines(&tokens.a), StatusCode::OK, "another token of a");

    // The id of a revoked token may name a new one; the old stays revoked.
    let (status, second) = issue("x");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(pipelines(&second), StatusCode::OK);
    assert_eq!(pipelines(&first), StatusCode::UNAUTHORIZED);
    // A live id cannot be issued twice, nor the operator's.
    assert_eq!(issue("x").0, StatusCode::CONFLICT);
    assert_eq!(issue("operator").0, StatusCode::CONFLICT);

    // The operator token is never reached through a tenant's id.
    let (status, _) = running.oneshot(request(
        "DELETE",
        "/v1/tenants/a/tokens/operator",
        Some(&operator),
        Body::empty(),
    ));
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = running.oneshot(request(
        "GET",
        "/v1/tenants",
        Some(&operator),
        Body::empty(),
    ));
    assert_eq!(status, StatusCode::OK, "the operator token still works");

    // The scheme is case-insensitive.
    let (status, _) = running.oneshot(request(
        "GET",
        "/v1/pipelines",
        Some(&format!("bearer {}", tokens.a)),
        Body::empty(),
    ));
    assert_eq!(status, StatusCode::OK);
    running.shutdown().unwrap();

    // A tenant token may not be named `operator` in the service file.
    let text = std::fs::read_to_string(&service)
        .unwrap()
        .replace("id = \"a-ci\"", "id = \"operator\"");
    std::fs::write(&service, text).unwrap();
    let error = weir::serve::Service::load(&service).unwrap_err();
    assert!(
        format!("{error:#}").contains("reserved for the operator"),
        "{error:#}"
    );
}

#[test]
fn errors_are_json_and_openapi_is_open() {
    let dir = tempfile::tempdir().unwrap();
    let (service, tokens) = write_service(dir.path(), "");
    let running = Running::start(&service);
    let client = reqwest::blocking::Client::new();
    let url = running.url().to_string();
    let answer = client.get(format!("{url}/openapi.json")).send().unwrap();
    assert_eq!(answer.status(), StatusCode::OK, "no token needed");
    for response in [
        client.get(format!("{url}/no/such/route")).send().unwrap(),
        client
            .post(format!("{url}/v1/tenants/a/tokens"))
            .header("authorization", bearer(&tokens.operator))
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .unwrap(),
        client.put(format!("{url}/health")).send().unwrap(),
    ] {
        let status = response.status();
        assert!(status.is_client_error(), "{status}");
        let body: serde_json::Value = response.json().unwrap();
        assert!(body["error"].is_string(), "{status}: {body}");
    }
    running.shutdown().unwrap();
}

#[test]
fn plugin_uploads_are_rate_limited_and_stored_uploads_capped_with_gc() {
    let dir = tempfile::tempdir().unwrap();
    let identity = std::fs::read(weir_tests::IDENTITY).unwrap();
    let flag = std::fs::read(weir_tests::FLAG).unwrap();
    let (service, tokens) = write_service(
        dir.path(),
        &format!(
            "plugin_uploads_per_minute = 2, max_stored_plugin_bytes = {}",
            identity.len().max(flag.len()) * 3 / 2
        ),
    );
    let running = Running::start(&service);
    let upload = |bytes: &[u8]| {
        let mut request = request(
            "POST",
            "/v1/plugins",
            Some(&bearer(&tokens.a)),
            Body::from(bytes.to_vec()),
        );
        request
            .headers_mut()
            .insert("content-type", "application/wasm".parse().unwrap());
        running.oneshot(request)
    };
    let stored = dir.path().join("tenants/a/plugins/sha256");
    let (status, first) = upload(&identity);
    assert_eq!(status, StatusCode::OK, "{first}");
    // Its compiled artifact is cached in the tenant's own part of the cache.
    let artifact = |sha256: &str| -> Vec<std::path::PathBuf> {
        let Some(cache) = weir::plugin::cache::cache_dir() else {
            return Vec::new();
        };
        std::fs::read_dir(cache)
            .into_iter()
            .flatten()
            .flatten()
            .map(|engine| {
                engine
                    .path()
                    .join("tenant-a")
                    .join(format!("{sha256}.cwasm"))
            })
            .filter(|path| path.exists())
            .collect()
    };
    let first_sha = first["sha256"].as_str().unwrap().to_string();
    let cached = weir::plugin::cache::cache_dir().is_some();
    assert_eq!(artifact(&first_sha).len(), usize::from(cached));
    // The second upload does not fit beside the first, which no stage
    // uses: the first is deleted to make room.
    let (status, second) = upload(&flag);
    assert_eq!(status, StatusCode::OK, "{second}");
    let names: Vec<String> = std::fs::read_dir(&stored)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [format!("{}.wasm", second["sha256"].as_str().unwrap())]
    );
    assert!(artifact(&first_sha).is_empty(), "its artifact went with it");
    // A third upload within the minute is refused.
    let (status, error) = upload(&identity);
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{error}");
    assert!(
        error["error"]
            .as_str()
            .unwrap()
            .contains("uploads per minute"),
        "{error}"
    );
    running.shutdown().unwrap();
}

#[test]
fn a_tenants_bodies_in_memory_are_capped_by_its_own_budget() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let (service, tokens) = write_service(
        dir.path(),
        "max_body_bytes = 4000000, max_buffered_bytes = 1500000",
    );
    let running = Running::start(&service);
    let line = "{\"id\":1,\"action\":\"ok\"}\n";
    let body: String = line.repeat(1_000_000 / line.len());
    let head = |token: &str| {
        format!(
            "POST /v1/pipelines/events/records HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/x-ndjson\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
    };
    // Tenant a's first body, all but its last byte, holds its budget...
    let mut first = crate::security::connect(&running);
    first.write_all(head(&tokens.a).as_bytes()).unwrap();
    first.write_all(&body.as_bytes()[..body.len() - 1]).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    // ...so its second gets 429, while tenant b is not affected.
    let mut second = crate::security::connect(&running);
    second.write_all(head(&tokens.a).as_bytes()).unwrap();
    let answer = crate::security::send_until_answered(&mut second, body.as_bytes());
    assert!(answer.starts_with("HTTP/1.1 429"), "{:.300}", answer);
    assert!(answer.contains("tenant `a`"), "{:.300}", answer);
    let mut other = crate::security::connect(&running);
    other.write_all(head(&tokens.b).as_bytes()).unwrap();
    let answer = crate::security::send_until_answered(&mut other, body.as_bytes());
    assert!(answer.starts_with("HTTP/1.1 200"), "{:.300}", answer);
    first.write_all(&body.as_bytes()[body.len() - 1..]).unwrap();
    let answer = crate::security::read_answer(&mut first);
    assert!(answer.starts_with("HTTP/1.1 200"), "{:.300}", answer);
    running.shutdown().unwrap();
}
