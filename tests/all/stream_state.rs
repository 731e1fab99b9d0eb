//! Stateful operators on a NATS JetStream stream (issue 18), against a real
//! nats-server: workers sharing one durable consumer keep one state
//! through the ledger, so `dedupe` passes each key exactly once over all
//! of them, also when one is killed right after its ledger claim (its
//! state is recovered from the ledger) and when a new worker joins (it
//! catches up from the ledger).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use serde_json::Value;
use weir_tests::nats::NatsServer;

use crate::crash::spawn_weir_with;

const STREAM: &str = "KEYED";

/// Messages, and how many distinct keys they carry (each key several
/// times, spread over the stream).
const MESSAGES: i64 = 3000;
const KEYS: i64 = 700;

fn key_of(id: i64) -> i64 {
    id * 11 % KEYS
}

fn write_worker(dir: &Path, url: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("pipeline.toml"),
        format!(
            r#"
[pipeline]
name = "keyed"

[source]
format = "nats"
schema = [
  {{ name = "id", type = "int64" }},
  {{ name = "key", type = "int64" }},
]

[source.nats]
servers = ["{url}"]
stream = "{STREAM}"
consumer = "weir-keyed"
subject = "keyed.in"
ack_wait_s = 2

[[operators]]
name = "unique"
kind = "dedupe"
key = ["key"]
duplicates = "quarantine"

[sink]
format = "jsonl"
path = "out"

[quarantine]
format = "jsonl"
path = "quarantine"
"#
        ),
    )
    .unwrap();
    let port = weir_tests::free_port();
    std::fs::write(
        dir.join("service.toml"),
        format!(
            "[service]\nstate_dir = \"state\"\nlisten = \"127.0.0.1:{port}\"\n\n[[pipelines]]\nfile = \"pipeline.toml\"\nlinger_ms = 10\nmax_batch_rows = 50\n"
        ),
    )
    .unwrap();
}

fn port(dir: &Path) -> u16 {
    let text = std::fs::read_to_string(dir.join("service.toml")).unwrap();
    let at = text.find("127.0.0.1:").unwrap() + "127.0.0.1:".len();
    text[at..].split('"').next().unwrap().parse().unwrap()
}

fn publish(url: &str, ids: std::ops::Range<i64>) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let client = async_nats::connect(url).await.unwrap();
            let context = jetstream::new(client);
            context
                .get_or_create_stream(jetstream::stream::Config {
                    name: STREAM.into(),
                    subjects: vec!["keyed.>".into()],
                    ..Default::default()
                })
                .await
                .unwrap();
            for id in ids {
                let payload = format!("{{\"id\":{id},\"key\":{}}}", key_of(id));
                context
                    .publish("keyed.in", payload.into())
                    .await
                    .unwrap()
                    .await
                    .unwrap();
            }
        });
}

fn serve(dir: &Path, crash: Option<&str>) -> std::process::Child {
    spawn_weir_with(
        dir,
        &["serve", "service.toml"],
        crash,
        &[("RUST_LOG", "warn")],
    )
}

fn stop(mut child: std::process::Child) {
    // SAFETY: kill has no memory preconditions.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// (id, key) of each row in the sinks.
type Written = Vec<(i64, i64)>;

/// The rows in every worker's sink, and (id, error kind) of each row in
/// their quarantines.
fn outcome(dirs: &[PathBuf]) -> (Written, Vec<(i64, String)>) {
    let mut written = Vec::new();
    let mut quarantined = Vec::new();
    for dir in dirs {
        for row in crate::serve::read_parts(&dir.join("out")) {
            written.push((row["id"].as_i64().unwrap(), row["key"].as_i64().unwrap()));
        }
        for row in crate::serve::read_parts(&dir.join("quarantine")) {
            quarantined.push((
                row["record"]["id"].as_i64().unwrap(),
                row["error_kind"].as_str().unwrap().to_string(),
            ));
        }
    }
    (written, quarantined)
}

fn stream_status(dir: &Path) -> Value {
    reqwest::blocking::get(format!("http://127.0.0.1:{}/v1/pipelines/keyed", port(dir)))
        .and_then(|r| r.json::<Value>())
        .map(|v| v["stream"].clone())
        .unwrap_or_default()
}

#[test]
fn workers_sharing_a_stream_dedupe_each_key_exactly_once() {
    let nats = NatsServer::start();
    let root = tempfile::tempdir().unwrap();
    let dirs: Vec<PathBuf> = (0..3).map(|i| root.path().join(format!("w{i}"))).collect();
    for dir in &dirs {
        write_worker(dir, &nats.url());
    }
    // Two thirds now; the last third once the third worker has joined, so
    // that it works on the stream too, not only catches up.
    publish(&nats.url(), 0..MESSAGES * 2 / 3);
    // Worker 0 dies right after its third claim is in the ledger: before
    // its files are renamed and its state applied.
    let mut first = serve(&dirs[0], Some("after-ledger-commit:3"));
    let mut second = Some(serve(&dirs[1], None));
    let total = |dirs: &[PathBuf]| {
        let (w, q) = outcome(dirs);
        w.len() + q.len()
    };
    let status = first.wait().unwrap();
    assert!(
        status.code().is_none(),
        "worker 0 was to be killed at its claim: {status}: {}",
        std::fs::read_to_string(dirs[0].join("child.log")).unwrap_or_default()
    );
    let first = serve(&dirs[0], None);
    // A third worker joins once a third of the stream is done: it starts
    // from the ledger's state.
    let deadline = Instant::now() + Duration::from_secs(120);
    while total(&dirs) < MESSAGES as usize / 3 {
        assert!(Instant::now() < deadline, "no progress");
        std::thread::sleep(Duration::from_millis(50));
    }
    let third = serve(&dirs[2], None);
    // Publish the rest only once the third worker is bound to the
    // consumer: on a loaded machine the other two could otherwise drain
    // it all while the third is still starting.
    let deadline = Instant::now() + Duration::from_secs(60);
    while stream_status(&dirs[2])["connected"] != true {
        assert!(
            Instant::now() < deadline,
            "the third worker never connected"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    publish(&nats.url(), MESSAGES * 2 / 3..MESSAGES);
    let deadline = Instant::now() + Duration::from_secs(240);
    while total(&dirs) < MESSAGES as usize {
        assert!(
            Instant::now() < deadline,
            "stalled at {} of {MESSAGES}: {}",
            total(&dirs),
            std::fs::read_to_string(dirs[0].join("child.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Redeliveries of what the killed worker committed arrive and are
    // recognized.
    std::thread::sleep(Duration::from_secs(3));
    let statuses: Vec<Value> = dirs.iter().map(|d| stream_status(d)).collect();
    for child in [first, second.take().unwrap(), third] {
        stop(child);
    }
    eprintln!("stream status of each worker: {statuses:?}");
    let (written, quarantined) = outcome(&dirs);
    // Each key passed exactly once, by whichever worker.
    let mut passed: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for &(id, key) in &written {
        assert_eq!(key, key_of(id));
        passed.entry(key).or_default().push(id);
    }
    let twice: Vec<_> = passed
        .iter()
        .filter(|(_, ids)| ids.len() > 1)
        .take(5)
        .collect();
    assert!(twice.is_empty(), "keys passed more than once: {twice:?}");
    assert_eq!(passed.len() as i64, KEYS, "every key passed");
    // Every message came out once: passed or quarantined as a duplicate.
    let mut ids: Vec<i64> = written
        .iter()
        .map(|&(id, _)| id)
        .chain(quarantined.iter().map(|(id, _)| *id))
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..MESSAGES).collect::<Vec<_>>());
    assert!(quarantined.iter().all(|(_, kind)| kind == "duplicate"));
    // The workers did share the state: some applied others' claims.
    let applied: u64 = statuses
        .iter()
        .map(|s| s["applied_claims"].as_u64().unwrap_or(0))
        .sum();
    assert!(
        applied > 0,
        "no worker applied another's state: {statuses:?}"
    );
    // The late worker caught up from the ledger and then took its share.
    assert!(
        statuses[2]["messages"].as_u64().unwrap_or(0) > 0,
        "the third worker processed nothing: {statuses:?}"
    );
}
