//! OpenLineage run events (spec 2-0-2) for each run: START when it
//! begins, COMPLETE with its inputs, outputs and counts, FAIL with its
//! error.
//!
//! Events go to a JSON Lines file and/or an HTTP endpoint
//! (`POST {url}/api/v1/lineage`, as Marquez takes them) from a background
//! thread fed through a bounded queue: emitting never blocks the run. An
//! event that does not fit the queue is dropped and counted; at the end of
//! a run the pipeline waits at most `flush_ms` for the queued events, then
//! counts what is left as dropped and goes on. A run therefore takes at
//! most `flush_ms` longer with a slow or dead endpoint.
//!
//! What an event holds (facets with their spec `_schemaURL`s):
//! - job: `namespace` (default `weir`) and the pipeline's name;
//! - run: its id (the run report's `run_id`), `errorMessage` on FAIL, and
//!   two weir facets: `weir_plugins` (each stage's plugin and SHA-256) and
//!   `weir_quarantine` (rows quarantined and filtered, per stage, with the
//!   error kinds);
//! - inputs: the source (its path, resolved; a glob or directory stands for
//!   its files) with the `schema` facet and `dataQualityMetrics` (rows read,
//!   files, bytes);
//! - outputs: the sink and the quarantine, each with `schema` (the sink's)
//!   and `outputStatistics` (rows, files, bytes).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::Duration;

use anyhow::{Context, Result};
use arrow::datatypes::Schema;
use serde_json::{Value, json};

pub use crate::config::LineageSettings;
pub use crate::report::LineageCounts;
use crate::report::RunReport;

/// The spec the events follow.
pub const SCHEMA_URL: &str = "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent";

/// The `producer` of every event and facet: weir's repository and version.
pub const PRODUCER: &str = concat!(
    env!("CARGO_PKG_REPOSITORY"),
    "/tree/v",
    env!("CARGO_PKG_VERSION")
);

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
    pending: AtomicU64,
}

/// The sender of one run's events.
pub struct Emitter {
    queue: Option<SyncSender<Value>>,
    done: Receiver<()>,
    counters: Arc<Counters>,
    flush: Duration,
    namespace: String,
}

impl Emitter {
    /// Starts the sender thread for `settings` (paths relative to
    /// `base_dir`).
    ///
    /// # Errors
    /// When the thread cannot be started.
    pub fn start(settings: &LineageSettings, base_dir: &Path) -> Result<Emitter> {
        let (queue, events) = std::sync::mpsc::sync_channel::<Value>(settings.queue.max(1));
        let (finished, done) = std::sync::mpsc::channel();
        let counters = Arc::new(Counters::default());
        let file = settings.file.as_ref().map(|f| base_dir.join(f));
        let url = settings
            .url
            .as_ref()
            .map(|u| format!("{}/api/v1/lineage", u.trim_end_matches('/')));
        let timeout = Duration::from_millis(settings.timeout_ms);
        let worker_counters = counters.clone();
        std::thread::Builder::new()
            .name("weir-lineage".into())
            .spawn(move || {
                send_all(events, file, url, timeout, &worker_counters);
                let _ = finished.send(());
            })
            .context("starting the lineage sender")?;
        Ok(Emitter {
            queue: Some(queue),
            done,
            counters,
            flush: Duration::from_millis(settings.flush_ms),
            namespace: settings.namespace.clone(),
        })
    }

    /// The job namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Queues `event`, or drops and counts it when the queue is full.
    pub fn emit(&self, event: Value) {
        let Some(queue) = &self.queue else { return };
        self.counters.pending.fetch_add(1, Ordering::SeqCst);
        match queue.try_send(event) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.counters.pending.fetch_sub(1, Ordering::SeqCst);
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("lineage: the event queue is full; an event was dropped");
            }
        }
    }

    /// Waits up to `flush_ms` for the queued events; what is still queued
    /// then is counted as dropped (the sender goes on in the background).
    pub fn finish(mut self) -> LineageCounts {
        drop(self.queue.take());
        if self.done.recv_timeout(self.flush).is_err() {
            let left = self.counters.pending.swap(0, Ordering::SeqCst);
            self.counters.dropped.fetch_add(left, Ordering::Relaxed);
            if left > 0 {
                tracing::warn!(
                    "lineage: {left} event(s) still unsent after flush_ms = {} ms; dropped",
                    self.flush.as_millis()
                );
            }
        }
        LineageCounts {
            sent: self.counters.sent.load(Ordering::Relaxed),
            dropped: self.counters.dropped.load(Ordering::Relaxed),
            failed: self.counters.failed.load(Ordering::Relaxed),
        }
    }
}

fn send_all(
    events: Receiver<Value>,
    file: Option<PathBuf>,
    url: Option<String>,
    timeout: Duration,
    counters: &Counters,
) {
    let client = url.as_ref().and_then(|_| {
        reqwest::blocking::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .inspect_err(|e| tracing::warn!("lineage: no HTTP client: {e}"))
            .ok()
    });
    for event in events {
        // An error message facet may quote a secret; an event that cannot
        // be redacted is not sent (counted as failed).
        let event = redacted(event);
        let sendable = event.is_some();
        let mut ok = sendable;
        let event = event.unwrap_or(Value::Null);
        if sendable
            && let Some(path) = &file
            && let Err(e) = append(path, &event)
        {
            tracing::warn!("lineage: writing {}: {e:#}", path.display());
            ok = false;
        }
        if let (true, Some(url), Some(client)) = (sendable, &url, &client) {
            match client.post(url).json(&event).send() {
                Ok(response) if response.status().is_success() => {}
                Ok(response) => {
                    tracing::warn!("lineage: {url} answered {}", response.status());
                    ok = false;
                }
                Err(e) => {
                    tracing::warn!("lineage: posting to {url}: {e}");
                    ok = false;
                }
            }
        }
        // A finish() that gave up already counted this one as dropped.
        let _ = counters
            .pending
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |p| p.checked_sub(1));
        let counter = if ok { &counters.sent } else { &counters.failed };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// `event` with every secret value redacted ([`crate::secrets::redact`]);
/// `None` (the event is not sent) when the redacted text is no longer
/// JSON.
fn redacted(event: Value) -> Option<Value> {
    if !crate::secrets::any_known() {
        return Some(event);
    }
    let text = event.to_string();
    match crate::secrets::redact(&text) {
        std::borrow::Cow::Borrowed(_) => Some(event),
        std::borrow::Cow::Owned(clean) => serde_json::from_str(&clean)
            .inspect_err(|_| {
                tracing::warn!("lineage: an event held a secret and could not be redacted; dropped")
            })
            .ok(),
    }
}

fn append(path: &Path, event: &Value) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let mut line = serde_json::to_vec(event)?;
    line.push(b'\n');
    file.write_all(&line)?;
    Ok(())
}

fn facet(schema_url: &str, mut body: Value) -> Value {
    let object = body.as_object_mut().expect("facets are objects");
    object.insert("_producer".into(), PRODUCER.into());
    object.insert("_schemaURL".into(), schema_url.into());
    body
}

/// The `schema` dataset facet of `schema`.
fn schema_facet(schema: &Schema) -> Value {
    let fields: Vec<Value> = schema
        .fields()
        .iter()
        .map(|f| json!({ "name": f.name(), "type": f.data_type().to_string() }))
        .collect();
    facet(
        "https://openlineage.io/spec/facets/1-2-0/SchemaDatasetFacet.json#/$defs/SchemaDatasetFacet",
        json!({ "fields": fields }),
    )
}

/// Where a run reads and writes, for its events.
#[derive(Debug, Clone)]
pub struct Datasets {
    /// (namespace, name) of the source, e.g. (`file`, `/data/flights.csv`).
    pub source: (String, String),
    /// The source's schema, when known.
    pub source_schema: Option<Arc<Schema>>,
    /// (namespace, name) of the sink.
    pub sink: (String, String),
    /// The sink's schema, when known.
    pub sink_schema: Option<Arc<Schema>>,
    /// (namespace, name) of the quarantine.
    pub quarantine: (String, String),
}

fn base_event(kind: &str, run_id: &str, namespace: &str, job: &str, time: &str) -> Value {
    json!({
        "eventType": kind,
        "eventTime": time,
        "producer": PRODUCER,
        "schemaURL": SCHEMA_URL,
        "run": { "runId": run_id, "facets": {} },
        "job": { "namespace": namespace, "name": job },
        "inputs": [],
        "outputs": [],
    })
}

fn dataset((namespace, name): &(String, String), schema: Option<&Arc<Schema>>) -> Value {
    let mut facets = serde_json::Map::new();
    if let Some(schema) = schema {
        facets.insert("schema".into(), schema_facet(schema));
    }
    json!({ "namespace": namespace, "name": name, "facets": facets })
}

/// A START event for run `run_id` of job `job`, started at `time`
/// (RFC 3339).
pub fn start(namespace: &str, job: &str, run_id: &str, time: &str, datasets: &Datasets) -> Value {
    let mut event = base_event("START", run_id, namespace, job, time);
    event["inputs"] = json!([dataset(&datasets.source, datasets.source_schema.as_ref())]);
    event["outputs"] = json!([dataset(&datasets.sink, datasets.sink_schema.as_ref())]);
    event
}

/// The COMPLETE event of a run that committed `report`, ended at `time`.
pub fn complete(namespace: &str, report: &RunReport, time: &str, datasets: &Datasets) -> Value {
    let mut event = base_event(
        "COMPLETE",
        &report.run_id,
        namespace,
        &report.pipeline,
        time,
    );
    let input_bytes: u64 = report.inputs.iter().map(|i| i.bytes).sum();
    let mut input = dataset(&datasets.source, datasets.source_schema.as_ref());
    input["inputFacets"] = json!({
        "dataQualityMetrics": facet(
            "https://openlineage.io/spec/facets/1-0-3/DataQualityMetricsInputDatasetFacet.json#/$defs/DataQualityMetricsInputDatasetFacet",
            json!({
                "rowCount": report.records.read,
                "fileCount": report.inputs.len(),
                "bytes": input_bytes,
                "columnMetrics": {},
            }),
        ),
    });
    let size = |paths: &mut dyn Iterator<Item = &PathBuf>| -> u64 {
        paths
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum()
    };
    let statistics = |rows: u64, files: usize, bytes: u64| {
        json!({
            "outputStatistics": facet(
                "https://openlineage.io/spec/facets/1-0-2/OutputStatisticsOutputDatasetFacet.json#/$defs/OutputStatisticsOutputDatasetFacet",
                json!({ "rowCount": rows, "fileCount": files, "size": bytes }),
            ),
        })
    };
    let mut sink = dataset(&datasets.sink, datasets.sink_schema.as_ref());
    sink["outputFacets"] = statistics(
        report.records.written,
        report.outputs.len(),
        size(&mut report.outputs.iter().map(|o| &o.path)),
    );
    let mut quarantine = dataset(&datasets.quarantine, None);
    quarantine["outputFacets"] = statistics(
        report.quarantine.rows,
        1,
        size(&mut std::iter::once(&report.quarantine.path)),
    );
    event["inputs"] = json!([input]);
    event["outputs"] = json!([sink, quarantine]);
    event["run"]["facets"] = json!({
        "weir_plugins": facet(
            concat!(env!("CARGO_PKG_REPOSITORY"), "/blob/main/docs/lineage.md#weir_plugins"),
            json!({
                "stages": report.stages.iter().map(|s| json!({
                    "name": s.name,
                    "plugin": s.plugin,
                    "sha256": s.plugin_sha256,
                    "versions": s.plugin_versions,
                })).collect::<Vec<_>>(),
            }),
        ),
        "weir_quarantine": facet(
            concat!(env!("CARGO_PKG_REPOSITORY"), "/blob/main/docs/lineage.md#weir_quarantine"),
            json!({
                "read": report.records.read,
                "written": report.records.written,
                "quarantined": report.records.quarantined,
                "filtered": report.records.filtered,
                "stages": report.stages.iter().map(|s| json!({
                    "name": s.name,
                    "quarantined": s.quarantined,
                    "filtered": s.filtered,
                    "errors": s.errors,
                })).collect::<Vec<_>>(),
            }),
        ),
    });
    event
}

/// The FAIL event of run `run_id`, which stopped with `error` at `time`.
pub fn fail(
    namespace: &str,
    job: &str,
    run_id: &str,
    time: &str,
    error: &str,
    datasets: &Datasets,
) -> Value {
    let mut event = base_event("FAIL", run_id, namespace, job, time);
    event["inputs"] = json!([dataset(&datasets.source, datasets.source_schema.as_ref())]);
    event["run"]["facets"] = json!({
        "errorMessage": facet(
            "https://openlineage.io/spec/facets/1-0-1/ErrorMessageRunFacet.json#/$defs/ErrorMessageRunFacet",
            json!({ "message": error, "programmingLanguage": "rust" }),
        ),
    });
    event
}

/// The ABORT event of run `run_id`, abandoned at `time` for `why` (its
/// checkpoint discarded by `weir run --restart`: it will never complete).
pub fn abort(
    namespace: &str,
    job: &str,
    run_id: &str,
    time: &str,
    why: &str,
    datasets: &Datasets,
) -> Value {
    let mut event = fail(namespace, job, run_id, time, why, datasets);
    event["eventType"] = json!("ABORT");
    event
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_drops_and_counts_and_finish_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        // A dead endpoint: nothing listens on port 9 of a TEST-NET address.
        let settings = LineageSettings {
            file: Some("events.jsonl".into()),
            url: Some("http://192.0.2.1:9".into()),
            queue: 2,
            timeout_ms: 5_000,
            flush_ms: 300,
            ..LineageSettings::default()
        };
        let emitter = Emitter::start(&settings, dir.path()).unwrap();
        for i in 0..10 {
            emitter.emit(json!({ "n": i }));
        }
        let started = std::time::Instant::now();
        let counts = emitter.finish();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "finish waited {:?}",
            started.elapsed()
        );
        assert!(counts.dropped >= 7, "{counts:?}");
        assert_eq!(counts.sent, 0, "{counts:?}");
    }
}
