//! Schedules in `weir serve`: a pipeline scheduled every second runs on
//! the service's clock and its runs are in the API; a backfill started
//! through the API runs each partition once; a tenant sees only its own
//! schedules, and a tenant's scheduled pipeline cannot reach outside its
//! directory, hosts the operator did not allow, or the service's network.

use std::path::Path;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{Value, json};

use crate::serve::{Running, get, post};

/// Validate (`value >= 0`) then write; `{head}` goes first (e.g. a
/// `[partition]` table), `{input}`, `{output}` and `{quarantine}` name
/// the files.
fn pipeline(head: &str, input: &str, output: &str, quarantine: &str) -> String {
    format!(
        r#"
{head}
[pipeline]
workers = 1

[source]
format = "csv"
path = "{input}"

[[stages]]
name = "v"
kind = "validate"
plugin = "builtin:check"
config = {{ rules = [{{ id = "positive", column = "value", check = "range", ge = 0 }}] }}

[sink]
format = "jsonl"
path = "{output}"
mode = "overwrite"

[quarantine]
format = "jsonl"
path = "{quarantine}"
"#
    )
}

/// `landing/2013-01-DD/part.csv` for days 1..=3 (10 + DD rows, one
/// negative) and `landing/all.csv` (5 rows, one negative).
fn landing(dir: &Path) {
    for day in 1..=3 {
        let folder = dir.join(format!("landing/2013-01-{day:02}"));
        std::fs::create_dir_all(&folder).unwrap();
        let mut text = String::from("id,value\n");
        for i in 0..10 + day {
            text.push_str(&format!("{i},{}\n", if i == 3 { -1 } else { i }));
        }
        std::fs::write(folder.join("part.csv"), text).unwrap();
    }
    std::fs::write(
        dir.join("landing/all.csv"),
        "id,value\n1,1\n2,2\n3,-3\n4,4\n5,5\n",
    )
    .unwrap();
}

fn authorized(request: Request<Body>, token: &str) -> Request<Body> {
    let (mut parts, body) = request.into_parts();
    parts
        .headers
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    Request::from_parts(parts, body)
}

/// Polls `path` until `done` holds for its answer (at most 60 s).
fn wait_for(running: &Running, path: &str, token: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = running.oneshot(authorized(get(path), token));
        assert_eq!(status, StatusCode::OK, "{body}");
        if done(&body) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "gave up waiting on {path}: {body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn scheduled_runs_fire_and_backfills_run_through_the_api_per_tenant() {
    let root = tempfile::tempdir().unwrap();
    let (operator, operator_hash) = weir::serve::auth::new_token().unwrap();
    let (acme, acme_hash) = weir::serve::auth::new_token().unwrap();
    let (other, other_hash) = weir::serve::auth::new_token().unwrap();
    let tenant = root.path().join("tenants/acme");
    landing(&tenant);
    std::fs::write(
        tenant.join("refresh.toml"),
        pipeline(
            "",
            "landing/all.csv",
            "out/all.jsonl",
            "quarantine/all.jsonl",
        ),
    )
    .unwrap();
    std::fs::write(
        tenant.join("daily.toml"),
        pipeline(
            "[partition]\nevery = \"day\"\n",
            "landing/${partition}/*.csv",
            "out/${partition}.jsonl",
            "quarantine/${partition}.jsonl",
        ),
    )
    .unwrap();
    std::fs::create_dir_all(root.path().join("tenants/other")).unwrap();
    let service = root.path().join("service.toml");
    std::fs::write(
        &service,
        format!(
            r#"
[service]
state_dir = "state"
operator_token_sha256 = "{operator_hash}"

[[tenants]]
name = "acme"
dir = "tenants/acme"
tokens = [{{ id = "acme-ci", sha256 = "{acme_hash}" }}]

[[tenants.schedules]]
file = "refresh.toml"
cron = "* * * * * *"        # every second (6 fields, seconds first)
retries = 0

[[tenants.schedules]]
file = "daily.toml"
cron = "0 2 * * *"
timezone = "Europe/Paris"

[[tenants]]
name = "other"
dir = "tenants/other"
tokens = [{{ id = "other-ci", sha256 = "{other_hash}" }}]
schedules = []
"#
        ),
    )
    .unwrap();
    let running = Running::start(&service);

    // The every-second schedule runs, again and again, as `scheduled` runs.
    let status = wait_for(&running, "/v1/schedules/refresh", &acme, |s| {
        s["succeeded"].as_u64().unwrap_or(0) >= 2
    });
    assert_eq!(status["failed"], 0, "{status}");
    assert_eq!(status["cron"], "* * * * * *");
    assert!(status["next"].is_string(), "{status}");
    let (code, runs) = running.oneshot(authorized(get("/v1/schedules/refresh/runs"), &acme));
    assert_eq!(code, StatusCode::OK, "{runs}");
    let runs = runs["runs"].as_array().unwrap().clone();
    assert!(runs.len() >= 2, "{runs:?}");
    for run in &runs {
        assert_eq!(run["kind"], "scheduled", "{run}");
        if run["status"] == "succeeded" {
            assert_eq!(
                (&run["read"], &run["written"], &run["quarantined"]),
                (&json!(5), &json!(4), &json!(1))
            );
        }
    }
    let output = std::fs::read_to_string(tenant.join("out/all.jsonl")).unwrap();
    assert_eq!(
        output.lines().count(),
        4,
        "overwritten by each run, not appended"
    );

    // The daily schedule's 02:00 is hours away: nothing ran; a backfill
    // through the API runs its three partitions.
    let (code, body) = running.oneshot(authorized(
        post(
            "/v1/schedules/daily/backfill",
            "application/json",
            json!({ "from": "2013-01-01", "to": "2013-01-03", "parallel": 2 }).to_string(),
        ),
        &acme,
    ));
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["backfill"]["state"], "running");
    let status = wait_for(&running, "/v1/schedules/daily", &acme, |s| {
        s["backfill"]["state"] != "running"
    });
    assert_eq!(status["backfill"]["state"], "done", "{status}");
    assert_eq!(status["backfill"]["failed"], 0, "{status}");
    assert_eq!(status["succeeded"], 0, "the schedule itself has not fired");
    for day in 1..=3 {
        let rows =
            std::fs::read_to_string(tenant.join(format!("out/2013-01-0{day}.jsonl"))).unwrap();
        assert_eq!(
            rows.lines().count(),
            9 + day,
            "partition {day} wrote its own rows"
        );
    }
    let (_, runs) = running.oneshot(authorized(get("/v1/schedules/daily/runs?limit=10"), &acme));
    let mut partitions: Vec<_> = runs["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["kind"].as_str().unwrap().to_string(),
                r["partition"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    partitions.sort();
    assert_eq!(
        partitions,
        ["2013-01-01", "2013-01-02", "2013-01-03"].map(|p| ("backfill".to_string(), p.to_string()))
    );

    // Bad requests get a clear 4xx and start nothing.
    for (path, body, expected) in [
        (
            "/v1/schedules/daily/backfill",
            json!({ "from": "2013-01-05", "to": "2013-01-01" }),
            "before",
        ),
        (
            "/v1/schedules/refresh/backfill",
            json!({ "from": "2013-01-01", "to": "2013-01-02" }),
            "not partitioned",
        ),
        (
            "/v1/schedules/daily/backfill",
            json!({ "from": "yesterday", "to": "2013-01-02" }),
            "yesterday",
        ),
    ] {
        let (code, answer) = running.oneshot(authorized(
            post(path, "application/json", body.to_string()),
            &acme,
        ));
        assert_eq!(code, StatusCode::BAD_REQUEST, "{answer}");
        assert!(
            answer["error"].as_str().unwrap().contains(expected),
            "{answer}"
        );
    }

    // Another tenant cannot see or start acme's schedules; the operator can.
    let (code, body) = running.oneshot(authorized(get("/v1/schedules"), &other));
    assert_eq!(
        (code, body["schedules"].as_array().unwrap().len()),
        (StatusCode::OK, 0)
    );
    for request in [
        get("/v1/tenants/acme/schedules"),
        get("/v1/schedules/refresh"),
        post(
            "/v1/tenants/acme/schedules/daily/backfill",
            "application/json",
            json!({ "from": "2013-01-01", "to": "2013-01-01" }).to_string(),
        ),
    ] {
        let (code, _) = running.oneshot(authorized(request, &other));
        assert_eq!(code, StatusCode::NOT_FOUND);
    }
    let (code, _) = running.oneshot(get("/v1/tenants/acme/schedules"));
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    let (code, body) = running.oneshot(authorized(get("/v1/tenants/acme/schedules"), &operator));
    assert_eq!(code, StatusCode::OK);
    let names: Vec<_> = body["schedules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["daily", "refresh"]);

    let (code, metrics) = running.oneshot(authorized(get("/metrics"), &operator));
    assert_eq!(code, StatusCode::OK);
    let metrics = metrics.as_str().unwrap();
    for expected in [
        r#"weir_scheduled_runs_total{tenant="acme",schedule="refresh",status="succeeded"}"#,
        r#"weir_scheduled_run_seconds_count{tenant="acme",schedule="refresh"}"#,
        r#"weir_check_results_total{tenant="acme",pipeline="refresh",check="schema",status="ok"}"#,
    ] {
        assert!(
            metrics.contains(expected),
            "{expected} missing from:\n{metrics}"
        );
    }

    running.shutdown().unwrap();
    // The schedule's state survives the service: the last instant handled.
    let state: Value = serde_json::from_slice(
        &std::fs::read(
            root.path()
                .join("state/tenants/acme/schedules/refresh.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert!(state["last"].is_string(), "{state}");
}

#[test]
fn a_tenants_scheduled_pipeline_stays_in_its_lane() {
    let root = tempfile::tempdir().unwrap();
    let tenant = root.path().join("tenants/acme");
    landing(&tenant);
    std::fs::create_dir_all(root.path().join("elsewhere")).unwrap();
    // Writes outside its dir, posts lineage to a URL, pulls from a host
    // the operator did not allow, and would fail from its second run.
    let mut text = pipeline(
        "",
        "landing/all.csv",
        "../../elsewhere/out.jsonl",
        "quarantine/q.jsonl",
    )
    .replace("mode = \"overwrite\"\n", "");
    text.push_str("\n[lineage]\nurl = \"http://169.254.169.254\"\n");
    std::fs::write(tenant.join("leaky.toml"), &text).unwrap();
    std::fs::write(
        tenant.join("pull.toml"),
        r#"
[source]
format = "extract"
[source.extract]
plugin = "plugins/pull.wasm"
[source.extract.capabilities.http]
allow_hosts = ["api.partner.example", "internal.corp"]

[sink]
format = "jsonl"
path = "out/pull.jsonl"
mode = "overwrite"

[quarantine]
format = "jsonl"
path = "quarantine/pull.jsonl"
"#,
    )
    .unwrap();
    // A served pipeline that would post its alerts to a URL.
    std::fs::write(
        tenant.join("served.toml"),
        r#"
[source]
format = "jsonl"
schema = [{ name = "id", type = "int64" }]

[sink]
format = "jsonl"
path = "out/served"

[quarantine]
format = "jsonl"
path = "quarantine/served"

[checks]
webhook = "http://169.254.169.254/alerts"
"#,
    )
    .unwrap();
    let service = root.path().join("service.toml");
    std::fs::write(
        &service,
        r#"
[[tenants]]
name = "acme"
dir = "tenants/acme"
http_allow_hosts = ["api.partner.example"]

[[tenants.pipelines]]
file = "served.toml"

[[tenants.schedules]]
file = "leaky.toml"
cron = "0 2 * * *"

[[tenants.schedules]]
file = "pull.toml"
cron = "0 3 * * *"

[[tenants.schedules]]
file = "../../escape.toml"
cron = "0 4 * * *"
name = "escape"

[[tenants.schedules]]
file = "pull.toml"
name = "pull-too"
cron = "61 * * * *"
timezone = "Mars/Olympus"
"#,
    )
    .unwrap();
    let error = format!("{:#}", weir::serve::Service::load(&service).unwrap_err());
    for expected in [
        "tenants[0].schedules[2].file",
        "outside the tenant's dir",
        "tenants[0].schedules[3].cron",
        "tenants[0].schedules[3].timezone",
        "Mars/Olympus",
    ] {
        assert!(
            error.contains(expected),
            "{expected:?} missing from:\n{error}"
        );
    }

    // With the service file fixed, the pipeline files' own problems.
    let fixed: String = std::fs::read_to_string(&service)
        .unwrap()
        .split("[[tenants.schedules]]\nfile = \"../../escape.toml\"")
        .next()
        .unwrap()
        .to_string();
    std::fs::write(&service, fixed).unwrap();
    let error = format!("{:#}", weir::serve::Service::load(&service).unwrap_err());
    for expected in [
        "leaky.toml: sink.path",
        "outside the tenant's dir",
        "leaky.toml: sink.mode",
        "leaky.toml: lineage.url",
        "pull.toml: source.extract.capabilities.http.allow_hosts: `internal.corp` is not among the hosts",
        "served.toml: checks.webhook: a tenant's pipeline may not post alerts to a URL",
    ] {
        assert!(
            error.contains(expected),
            "{expected:?} missing from:\n{error}"
        );
    }
    assert!(!error.contains("api.partner.example` is not"), "{error}");
}

#[test]
fn a_tenants_pipeline_changed_after_loading_is_refused_at_each_run() {
    let root = tempfile::tempdir().unwrap();
    let (acme, acme_hash) = weir::serve::auth::new_token().unwrap();
    let tenant = root.path().join("tenants/acme");
    landing(&tenant);
    let elsewhere = root.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let refresh = tenant.join("refresh.toml");
    std::fs::write(
        &refresh,
        pipeline(
            "",
            "landing/all.csv",
            "out/all.jsonl",
            "quarantine/all.jsonl",
        ),
    )
    .unwrap();
    let daily = tenant.join("daily.toml");
    std::fs::write(
        &daily,
        pipeline(
            "[partition]\nevery = \"day\"\n",
            "landing/${partition}/*.csv",
            "out/${partition}.jsonl",
            "quarantine/${partition}.jsonl",
        ),
    )
    .unwrap();
    let service = root.path().join("service.toml");
    std::fs::write(
        &service,
        format!(
            r#"
[service]
state_dir = "state"

[[tenants]]
name = "acme"
dir = "tenants/acme"
tokens = [{{ id = "acme-ci", sha256 = "{acme_hash}" }}]

[[tenants.schedules]]
file = "refresh.toml"
cron = "* * * * * *"
retries = 0

[[tenants.schedules]]
file = "daily.toml"
cron = "0 2 * * *"
"#
        ),
    )
    .unwrap();
    let running = Running::start(&service);
    wait_for(&running, "/v1/schedules/refresh", &acme, |s| {
        s["succeeded"].as_u64().unwrap_or(0) >= 1
    });

    // Loaded clean, then rewritten to write outside the tenant's dir:
    // every run from then on is refused before it reads a row.
    std::fs::write(
        &refresh,
        pipeline(
            "",
            "landing/all.csv",
            "../../elsewhere/all.jsonl",
            "quarantine/all.jsonl",
        ),
    )
    .unwrap();
    let status = wait_for(&running, "/v1/schedules/refresh", &acme, |s| {
        s["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("outside the tenant's dir"))
    });
    assert!(
        status["last_error"].as_str().unwrap().contains("sink.path"),
        "{status}"
    );
    // Its history is refused too once the file puts it outside.
    std::fs::write(
        &refresh,
        pipeline(
            "",
            "landing/all.csv",
            "out/all.jsonl",
            "quarantine/all.jsonl",
        )
        .replace(
            "[pipeline]\n",
            "[pipeline]\nstate_dir = \"../../elsewhere\"\n",
        ),
    )
    .unwrap();
    let (code, body) = running.oneshot(authorized(get("/v1/schedules/refresh/runs"), &acme));
    assert_ne!(code, StatusCode::OK, "{body}");
    assert!(
        body.to_string().contains("outside the tenant's dir"),
        "{body}"
    );

    // Each partition of a backfill is checked as it runs: the file now
    // reads another tenant's landing through a `latest` table.
    let mut text = pipeline(
        "[partition]\nevery = \"day\"\n",
        "landing/${partition}/*.csv",
        "out/${partition}.jsonl",
        "quarantine/${partition}.jsonl",
    );
    text.push_str(
        "\n[[operators]]\nname = \"peek\"\nkind = \"latest\"\nkey = [\"id\"]\ntable = { format = \"csv\", path = \"../../elsewhere/*.csv\" }\n",
    );
    std::fs::write(elsewhere.join("secret.csv"), "id,secret\n1,x\n").unwrap();
    std::fs::write(&daily, text).unwrap();
    let (code, body) = running.oneshot(authorized(
        post(
            "/v1/schedules/daily/backfill",
            "application/json",
            json!({ "from": "2013-01-01", "to": "2013-01-02" }).to_string(),
        ),
        &acme,
    ));
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    let status = wait_for(&running, "/v1/schedules/daily", &acme, |s| {
        s["backfill"]["state"] != "running"
    });
    assert_eq!(status["backfill"]["state"], "done", "{status}");
    assert_eq!(status["backfill"]["failed"], 2, "{status}");
    let error = status["backfill"]["summary"]["partitions"][0]["error"]
        .as_str()
        .unwrap();
    assert!(
        error.contains("operators[0].table.path") && error.contains("outside the tenant's dir"),
        "{error}"
    );
    assert!(!tenant.join("out/2013-01-01.jsonl").exists());

    let stopping = Instant::now();
    running.shutdown().unwrap();
    assert!(stopping.elapsed() < Duration::from_secs(20));
    let mut written: Vec<_> = std::fs::read_dir(&elsewhere)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    written.sort();
    assert_eq!(written, ["secret.csv"], "nothing written outside");
}
