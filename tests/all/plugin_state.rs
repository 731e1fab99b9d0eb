//! Keyed state for plugins (`weir:plugin/state`, issue 18), with the
//! running-total example of `examples/running-total` in Rust, Python and
//! JavaScript: totals equal prefix sums computed here, across batches,
//! epochs, runs, a SIGKILL mid-run, a hot reload to another language's
//! build and a SIGKILL of `weir serve`; a failed batch's writes are
//! discarded; a batch over the stage's state quota fails alone as
//! `state_quota`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::crash::spawn_weir;
use crate::stateful::run_weir;
use crate::support::read_jsonl;

/// The running-total example built in `language`.
fn plugin(language: &str) -> PathBuf {
    weir_tests::built_plugin(&format!(
        "examples/running-total/plugins/running-total-{language}"
    ))
}

/// Payment `i`: (customer `c{i*7 % 13}`, or none every 97th row; amount
/// `i % 100 + 1`).
fn payment(i: usize) -> (Option<String>, i64) {
    let customer = (i % 97 != 5).then(|| format!("c{}", i * 7 % 13));
    (customer, (i % 100 + 1) as i64)
}

fn payments_csv(path: &Path, rows: std::ops::Range<usize>) {
    let mut text = String::from("customer,amount\n");
    for i in rows {
        let (customer, amount) = payment(i);
        text.push_str(&format!("{},{amount}\n", customer.unwrap_or_default()));
    }
    std::fs::write(path, text).unwrap();
}

/// The expected running totals of `rows`, given the totals before them.
fn running(rows: std::ops::Range<usize>, totals: &mut BTreeMap<String, i64>) -> Vec<Option<i64>> {
    rows.map(|i| {
        let (customer, amount) = payment(i);
        customer.map(|c| {
            let total = totals.entry(c).or_default();
            *total += amount;
            *total
        })
    })
    .collect()
}

/// A pipeline over `payments.csv` in `dir` through `plugin` (copied to
/// `dir/plugin.wasm`), with `stage_extra` lines in the stage's table.
fn write_pipeline(dir: &Path, plugin: &Path, stage_extra: &str) {
    std::fs::copy(plugin, dir.join("plugin.wasm")).unwrap();
    std::fs::write(
        dir.join("pipeline.toml"),
        format!(
            r#"
[pipeline]
name = "totals"
batch_size = 256
checkpoint_every_batches = 4

[source]
format = "csv"
path = "payments.csv"

[[stages]]
name = "running_total"
kind = "transform"
plugin = "plugin.wasm"
{stage_extra}

[sink]
format = "jsonl"
path = "out.jsonl"
mode = "overwrite"

[quarantine]
format = "jsonl"
path = "quarantine.jsonl"
"#
        ),
    )
    .unwrap();
}

fn totals_of(rows: &[Value]) -> Vec<Option<i64>> {
    rows.iter().map(|r| r["running_total"].as_i64()).collect()
}

#[test]
fn running_totals_in_rust_python_and_js_equal_prefix_sums_and_go_on_across_runs() {
    for language in ["rust", "python", "js"] {
        let dir = tempfile::tempdir().unwrap();
        write_pipeline(dir.path(), &plugin(language), "");
        payments_csv(&dir.path().join("payments.csv"), 0..3000);
        let mut totals = BTreeMap::new();
        assert!(!run_weir(dir.path(), None));
        let out = read_jsonl(&dir.path().join("out.jsonl"));
        assert_eq!(totals_of(&out), running(0..3000, &mut totals), "{language}");
        // The next run's totals go on from the committed state.
        payments_csv(&dir.path().join("payments.csv"), 3000..3500);
        assert!(!run_weir(dir.path(), None));
        let out = read_jsonl(&dir.path().join("out.jsonl"));
        assert_eq!(
            totals_of(&out),
            running(3000..3500, &mut totals),
            "{language}, second run"
        );
    }
}

#[test]
fn plugin_state_is_exact_when_the_run_is_killed_and_resumed() {
    for crash in ["mid-part-write:7", "after-commit:2", "mid-publish:1"] {
        let dir = tempfile::tempdir().unwrap();
        write_pipeline(dir.path(), &plugin("rust"), "");
        payments_csv(&dir.path().join("payments.csv"), 0..3000);
        assert!(run_weir(dir.path(), Some(crash)), "{crash}: never reached");
        assert!(!run_weir(dir.path(), None));
        let mut totals = BTreeMap::new();
        let out = read_jsonl(&dir.path().join("out.jsonl"));
        assert_eq!(totals_of(&out), running(0..3000, &mut totals), "{crash}");
        payments_csv(&dir.path().join("payments.csv"), 3000..3300);
        assert!(!run_weir(dir.path(), None));
        let out = read_jsonl(&dir.path().join("out.jsonl"));
        assert_eq!(
            totals_of(&out),
            running(3000..3300, &mut totals),
            "{crash}, the run after"
        );
    }
}

/// Per customer, the largest total in `rows` (the sum of its amounts).
fn final_totals(rows: &[Value]) -> BTreeMap<String, i64> {
    let mut totals = BTreeMap::new();
    for row in rows {
        if let (Some(customer), Some(total)) =
            (row["customer"].as_str(), row["running_total"].as_i64())
        {
            let entry = totals.entry(customer.to_string()).or_insert(total);
            *entry = (*entry).max(total);
        }
    }
    totals
}

#[test]
fn a_failed_batch_changes_no_state_and_a_batch_over_the_quota_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    payments_csv(&dir.path().join("payments.csv"), 0..2000);
    // Every batch holding customer c3 fails after writing its totals: the
    // bisection passes the other rows, and only theirs count.
    write_pipeline(
        dir.path(),
        &plugin("rust"),
        "config = { fail_on_key = \"c3\" }\nbisect_max_calls = 2000",
    );
    assert!(!run_weir(dir.path(), None));
    let quarantine = read_jsonl(&dir.path().join("quarantine.jsonl"));
    let c3 = (0..2000)
        .filter(|&i| payment(i).0.as_deref() == Some("c3"))
        .count();
    assert_eq!(quarantine.len(), c3);
    assert!(quarantine.iter().all(|r| r["record"]["customer"] == "c3"));
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    for i in 0..2000 {
        if let (Some(customer), amount) = payment(i)
            && customer != "c3"
        {
            *expected.entry(customer).or_default() += amount;
        }
    }
    let out = read_jsonl(&dir.path().join("out.jsonl"));
    assert_eq!(final_totals(&out), expected);

    // 40 bytes hold four or five customers' totals, not thirteen.
    let dir = tempfile::tempdir().unwrap();
    payments_csv(&dir.path().join("payments.csv"), 0..2000);
    write_pipeline(dir.path(), &plugin("rust"), "max_state_bytes = 40");
    assert!(!run_weir(dir.path(), None));
    let quarantine = read_jsonl(&dir.path().join("quarantine.jsonl"));
    let out = read_jsonl(&dir.path().join("out.jsonl"));
    assert!(!quarantine.is_empty() && !out.is_empty());
    assert_eq!(quarantine.len() + out.len(), 2000);
    assert!(
        quarantine.iter().all(|r| r["error_kind"] == "state_quota"),
        "{:?}",
        quarantine[0]
    );
    let inspect = spawn_weir(dir.path(), &["state", "inspect", "pipeline.toml"], None)
        .wait()
        .unwrap();
    assert!(inspect.success());
    let log = std::fs::read_to_string(dir.path().join("child.log")).unwrap();
    let start = log
        .rfind("{\n  \"store\"")
        .expect("weir state inspect printed its JSON");
    let report: Value = serde_json::Deserializer::from_str(&log[start..])
        .into_iter()
        .next()
        .unwrap()
        .unwrap();
    let bytes = report["stages"][0]["bytes"].as_i64().unwrap();
    assert!(bytes > 0 && bytes <= 40, "{report}");
}

/// Posts `rows` as one request (with `token` when given) and waits for its
/// acknowledgement, retrying while the service starts.
fn post_as(
    http: &reqwest::blocking::Client,
    url: &str,
    key: &str,
    rows: std::ops::Range<usize>,
    token: Option<&str>,
) -> Value {
    let body: String = rows
        .map(|i| {
            let (customer, amount) = payment(i);
            format!(
                "{}\n",
                serde_json::json!({"customer": customer, "amount": amount})
            )
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            Instant::now() < deadline,
            "request {key} was never acknowledged"
        );
        let mut request = http
            .post(format!("{url}/records"))
            .header("content-type", "application/x-ndjson")
            .header("idempotency-key", key)
            .body(body.clone());
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let answer = request.send();
        if let Ok(response) = answer
            && response.status().is_success()
        {
            return response.json().unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn post(
    http: &reqwest::blocking::Client,
    url: &str,
    key: &str,
    rows: std::ops::Range<usize>,
) -> Value {
    post_as(http, url, key, rows, None)
}

/// The serve pipeline `totals` over JSON Lines through the running-total
/// plugin at `plugin.wasm` in `dir`.
fn write_serve_pipeline(dir: &Path, plugin: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(plugin, dir.join("plugin.wasm")).unwrap();
    std::fs::write(
        dir.join("pipeline.toml"),
        r#"
[pipeline]
name = "totals"

[source]
format = "jsonl"
schema = [
  { name = "customer", type = "utf8" },
  { name = "amount", type = "int64" },
]

[[stages]]
name = "running_total"
kind = "transform"
plugin = "plugin.wasm"

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

#[test]
fn a_tenant_over_its_state_quota_fails_its_own_batches_only() {
    let root = tempfile::tempdir().unwrap();
    let (a, a_hash) = weir::serve::auth::new_token().unwrap();
    let (b, b_hash) = weir::serve::auth::new_token().unwrap();
    for tenant in ["a", "b"] {
        write_serve_pipeline(&root.path().join("tenants").join(tenant), &plugin("rust"));
    }
    let port = weir_tests::free_port();
    std::fs::write(
        root.path().join("service.toml"),
        format!(
            r#"
[service]
state_dir = "state"
listen = "127.0.0.1:{port}"

[[tenants]]
name = "a"
dir = "tenants/a"
tokens = [{{ id = "a-ci", sha256 = "{a_hash}" }}]
quotas = {{ max_state_bytes = 60 }}

[[tenants.pipelines]]
file = "pipeline.toml"
linger_ms = 5

[[tenants]]
name = "b"
dir = "tenants/b"
tokens = [{{ id = "b-ci", sha256 = "{b_hash}" }}]

[[tenants.pipelines]]
file = "pipeline.toml"
linger_ms = 5
"#
        ),
    )
    .unwrap();
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut child = spawn_weir(root.path(), &["serve", "service.toml"], None);
    // Each request brings one customer per row: 13 customers' totals
    // (about 9 bytes each) do not fit in tenant a's 60 bytes.
    for (tenant, token) in [("a", &a), ("b", &b)] {
        let url = format!("http://127.0.0.1:{port}/v1/tenants/{tenant}/pipelines/totals");
        for r in 0..4 {
            post_as(
                &http,
                &url,
                &format!("r{r}"),
                r * 13..r * 13 + 13,
                Some(token),
            );
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let dir = |tenant: &str, what: &str| root.path().join("tenants").join(tenant).join(what);
    let quarantined = crate::serve::read_parts(&dir("a", "quarantine"));
    assert!(!quarantined.is_empty());
    for row in &quarantined {
        assert_eq!(row["error_kind"], "state_quota", "{row}");
        assert!(
            row["message"]
                .as_str()
                .unwrap()
                .contains("the tenant's keyed state"),
            "{row}"
        );
    }
    let written = crate::serve::read_parts(&dir("a", "out"));
    assert_eq!(written.len() + quarantined.len(), 52);
    // Tenant b, same rows, default quota: everything passes.
    assert_eq!(crate::serve::read_parts(&dir("b", "out")).len(), 52);
    assert!(crate::serve::read_parts(&dir("b", "quarantine")).is_empty());
}

#[test]
fn plugin_state_survives_a_hot_reload_to_another_language_and_a_kill_9_in_serve() {
    let dir = tempfile::tempdir().unwrap();
    write_serve_pipeline(dir.path(), &plugin("rust"));
    let port = weir_tests::free_port();
    std::fs::write(
        dir.path().join("service.toml"),
        format!(
            "[service]\nstate_dir = \"state\"\nlisten = \"127.0.0.1:{port}\"\n\n[[pipelines]]\nfile = \"pipeline.toml\"\nlinger_ms = 5\n"
        ),
    )
    .unwrap();
    let url = format!("http://127.0.0.1:{port}/v1/pipelines/totals");
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut child = spawn_weir(dir.path(), &["serve", "service.toml"], None);
    let requests = |from: usize, to: usize| {
        for r in from..to {
            post(&http, &url, &format!("request-{r}"), r * 20..r * 20 + 20);
        }
    };
    requests(0, 10);
    // The JavaScript build of the same plugin reads the Rust build's state.
    std::fs::copy(plugin("js"), dir.path().join("plugin.wasm")).unwrap();
    // Compiling the JavaScript component takes a while.
    let reload = http
        .post(format!("{url}/stages/running_total/reload"))
        .timeout(Duration::from_secs(300))
        .send()
        .unwrap();
    assert!(reload.status().is_success(), "{:?}", reload.text());
    requests(10, 20);
    child.kill().unwrap();
    child.wait().unwrap();
    let mut child = spawn_weir(dir.path(), &["serve", "service.toml"], None);
    requests(20, 30);
    let status: Value = http.get(&url).send().unwrap().json().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(status["operators"][0]["name"], "running_total", "{status}");
    assert_eq!(status["operators"][0]["state_keys"], 13, "{status}");
    // Per customer, its totals are the prefix sums of its amounts in
    // request order, whichever build computed them.
    let out = crate::serve::read_parts(&dir.path().join("out"));
    assert_eq!(out.len(), 600);
    let mut got: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for row in &out {
        if let Some(customer) = row["customer"].as_str() {
            got.entry(customer.to_string())
                .or_default()
                .push(row["running_total"].as_i64().unwrap());
        }
    }
    got.values_mut().for_each(|totals| totals.sort_unstable());
    let mut expected: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let mut sums = BTreeMap::new();
    for i in 0..600 {
        if let (Some(customer), amount) = payment(i) {
            let sum: &mut i64 = sums.entry(customer.clone()).or_default();
            *sum += amount;
            expected.entry(customer).or_default().push(*sum);
        }
    }
    assert_eq!(got, expected);
    assert!(crate::serve::read_parts(&dir.path().join("quarantine")).is_empty());
}

/// A file of one id per line.
fn ids_file(path: &Path, ids: impl IntoIterator<Item = i64>, extra: &str) {
    let mut text: String = ids.into_iter().map(|id| format!("{id}\n")).collect();
    text.push_str(extra);
    std::fs::write(path, text).unwrap();
}

fn write_cursor_pipeline(dir: &Path) {
    std::fs::copy(weir_tests::CURSOR_EXTRACT, dir.join("cursor.wasm")).unwrap();
    std::fs::write(
        dir.join("pipeline.toml"),
        r#"
[pipeline]
name = "pull"
batch_size = 100
checkpoint_every_batches = 2

[source]
format = "extract"
path = "*.txt"

[source.extract]
plugin = "cursor.wasm"

[sink]
format = "jsonl"
path = "out.jsonl"
mode = "overwrite"

[quarantine]
format = "jsonl"
path = "quarantine.jsonl"
"#,
    )
    .unwrap();
}

fn out_ids(dir: &Path) -> Vec<i64> {
    read_jsonl(&dir.join("out.jsonl"))
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect()
}

#[test]
fn an_extract_plugins_cursor_makes_runs_incremental_across_kills_and_failures() {
    for crash in [None, Some("mid-part-write:4"), Some("after-commit:3")] {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        write_cursor_pipeline(dir);
        ids_file(&dir.join("a.txt"), 1..=500, "");
        ids_file(&dir.join("b.txt"), 300..=800, "");
        if let Some(crash) = crash {
            assert!(run_weir(dir, Some(crash)), "{crash}: never reached");
        }
        assert!(!run_weir(dir, None));
        assert_eq!(out_ids(dir), (1..=800).collect::<Vec<_>>(), "{crash:?}");
        // The files grew: the next run pulls only what is new.
        ids_file(&dir.join("c.txt"), 700..=1000, "");
        assert!(!run_weir(dir, None));
        assert_eq!(out_ids(dir), (801..=1000).collect::<Vec<_>>(), "{crash:?}");
    }
    // A file the plugin fails after moving its cursor leaves it where it
    // was: once the file is fixed, its ids come through.
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    write_cursor_pipeline(dir);
    ids_file(&dir.join("a.txt"), 1..=10, "");
    ids_file(&dir.join("b.txt"), 11..=20, "fail\n");
    assert!(!run_weir(dir, None));
    assert_eq!(out_ids(dir), (1..=10).collect::<Vec<_>>());
    assert_eq!(read_jsonl(&dir.join("quarantine.jsonl")).len(), 1);
    ids_file(&dir.join("b.txt"), 11..=20, "");
    assert!(!run_weir(dir, None));
    assert_eq!(out_ids(dir), (11..=20).collect::<Vec<_>>());
}
