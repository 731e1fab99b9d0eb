//! A pipeline hosted by `weir serve`: records arrive in submissions (HTTP
//! requests, dropped files, quarantine replays), are grouped into
//! micro-batches, run through the stages and committed; each submission is
//! acknowledged only once all its records are in the sink or the quarantine.
//!
//! ```text
//! submit() ──pieces──▶ batcher task ──micro-batch──▶ blocking worker ──▶ commit ──▶ acks
//!   (await ack)        (cut at max_batch_rows,        (stages, sink part,
//!                       linger_ms, or quiet_ms)        quarantine part)
//! ```
//!
//! A micro-batch is cut when it holds `max_batch_rows`, `linger_ms` after
//! its first record, or earlier once waiting cannot add to it: no record
//! for `quiet_ms`, no request still being received or decoded
//! ([`super::arrivals`]) and a worker free. The last rule is what lets
//! callers that wait for their answer before posting again share a
//! micro-batch without waiting out the linger: after an answer they all
//! post at once, and their requests are cut together as soon as they are
//! in.
//!
//! A micro-batch is committed as its own files (see
//! [`Sink::create_part`]); the quarantine is a directory of
//! `part-PARTID.jsonl|parquet` files, one per micro-batch with rejects.
//! Micro-batches run concurrently on up to `[pipeline] workers` threads.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, anyhow};
use arrow::array::UInt32Array;
use serde::Serialize;
use tokio::sync::{Semaphore, mpsc, oneshot};

pub use super::ack::{Ack, MAX_REASONS, ReasonCount};
use super::delivery::{Admission, Delivery, Origin, PieceRecord, StagedFile};
use crate::config::{QuarantineConfig, QuarantineFormat};
use crate::pipeline::Pipeline;
use crate::quarantine::Quarantine;
use crate::report::StageReport;
use crate::sink::Sink;
use crate::source::{Source, SourceBatch, SourceItem};
use crate::stages::{Origins, Quarantined, Scope, Worker};

use super::arrivals::{Arrival, Arrivals};
use super::config::HostedPipeline;
use super::connections::Connections;
use super::ledger::ClaimedState;
use super::quota::Quota;
use super::stateful::ServedOperators;

/// Whether a pipeline takes new records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PipelineState {
    /// Accepting and processing records.
    Running,
    /// New submissions are refused (`503`); batches already accepted finish.
    Paused,
    /// Shutting down: new submissions are refused, queued ones are flushed.
    Draining,
}

impl PipelineState {
    fn from_u8(value: u8) -> PipelineState {
        match value {
            0 => PipelineState::Running,
            1 => PipelineState::Paused,
            _ => PipelineState::Draining,
        }
    }
}

/// Why a submission was not taken or not written.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The pipeline is paused.
    #[error("pipeline `{0}` is paused; resume it or retry later")]
    Paused(String),
    /// The service is shutting down.
    #[error("pipeline `{0}` is shutting down")]
    ShuttingDown(String),
    /// The micro-batch holding the records could not be committed; none of
    /// its records were written.
    #[error("the records could not be written: {0}")]
    Failed(String),
    /// The pipeline reads a NATS stream; it takes no records by request.
    #[error("pipeline `{0}` reads a NATS stream; publish the records to the stream instead")]
    Stream(String),
    /// The submission's idempotency key was refused.
    #[error(transparent)]
    Key(#[from] super::delivery::KeyError),
}

/// A submission's outcome.
#[derive(Debug, Clone)]
pub struct Submitted {
    /// Where its records went.
    pub ack: Ack,
    /// The key's submission was already committed: nothing was written
    /// now, `ack` is the recorded acknowledgement.
    pub replayed: bool,
}

/// One submission's acknowledgement, filled in as its pieces commit.
struct AckState {
    remaining: AtomicU64,
    outcome: Mutex<(Ack, Option<String>)>,
    sender: Mutex<Option<oneshot::Sender<Result<Ack, String>>>>,
}

impl AckState {
    fn complete_piece(&self, result: Result<Ack, String>) {
        {
            let mut outcome = self.outcome.lock().expect("ack lock");
            match result {
                Ok(ack) => outcome.0.merge(ack),
                Err(error) => outcome.1 = Some(error),
            }
        }
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            let (ack, error) = std::mem::take(&mut *self.outcome.lock().expect("ack lock"));
            let result = match error {
                Some(error) => Err(error),
                None => Ok(ack.finish()),
            };
            if let Some(sender) = self.sender.lock().expect("ack lock").take() {
                let _ = sender.send(result);
            }
        }
    }
}

/// Part of one submission: a batch of at most `max_batch_rows` rows or a
/// group of unparseable records.
struct Piece {
    item: SourceItem,
    ack: Arc<AckState>,
    enqueued: Instant,
    /// Its submission's origin and its index there, for exactly-once.
    origin: Option<(Arc<Origin>, u32, u32)>,
}

impl Piece {
    fn rows(&self) -> usize {
        item_rows(&self.item)
    }
}

/// Counters of a live pipeline since the service started.
#[derive(Debug, Default)]
struct Counters {
    submissions: AtomicU64,
    received: AtomicU64,
    written: AtomicU64,
    filtered: AtomicU64,
    quarantined: AtomicU64,
    batches: AtomicU64,
    failed_batches: AtomicU64,
    queued_rows: AtomicU64,
}

/// Counts of a live pipeline, for the admin API.
#[derive(Debug, Clone, Serialize)]
pub struct PipelineStatus {
    /// The tenant owning it.
    pub tenant: String,
    /// Pipeline name.
    pub name: String,
    /// The pipeline file.
    pub file: PathBuf,
    /// Running, paused or draining.
    pub state: PipelineState,
    /// Submissions taken (requests, dropped files, replays).
    pub submissions: u64,
    /// Records received.
    pub received: u64,
    /// Records written to the sink.
    pub written: u64,
    /// Records left out on purpose by a transform.
    pub filtered: u64,
    /// Records quarantined.
    pub quarantined: u64,
    /// Micro-batches committed.
    pub batches: u64,
    /// Micro-batches that failed (nothing of them written).
    pub failed_batches: u64,
    /// Records waiting for their micro-batch to be cut.
    pub queued_records: u64,
    /// Records received per second over the last minute.
    pub records_per_second: f64,
    /// Micro-batching: rows per batch at most.
    pub max_batch_rows: usize,
    /// Micro-batching: longest wait for a batch to fill, in ms.
    pub linger_ms: u64,
    /// Micro-batching: a batch is cut after this long without a record
    /// (and none on its way), in ms; 0 when off.
    pub quiet_ms: u64,
    /// Directory the sink appends parts to.
    pub sink_dir: PathBuf,
    /// Directory of quarantine parts.
    pub quarantine_dir: PathBuf,
    /// The drop directory, if any.
    pub drop_dir: Option<PathBuf>,
    /// The checkpoint protocol: the last committed micro-batch (epoch),
    /// the delivery log, remembered idempotency keys, recovery at start.
    pub delivery: super::delivery::DeliveryStatus,
    /// A stream pipeline's consumer: connection, lag (pending messages),
    /// the ledger.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<StreamStatus>,
    /// The stateful operators: counts and state size (keys, bytes).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub operators: Vec<crate::operator::OperatorReport>,
}

/// A stream pipeline's consumer, for `/v1/pipelines/NAME`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StreamStatus {
    /// This worker's id (in its claims).
    pub worker: String,
    /// The stream and durable consumer.
    pub stream: String,
    /// The durable consumer.
    pub consumer: String,
    /// Whether the consumer is bound now.
    pub connected: bool,
    /// Messages in the stream not yet delivered to any worker (the lag).
    pub pending: u64,
    /// Messages delivered to some worker and not yet acknowledged.
    pub ack_pending: u64,
    /// Messages the server redelivered at least once.
    pub redelivered: u64,
    /// Epochs this worker committed.
    pub epochs: u64,
    /// Messages this worker committed.
    pub messages: u64,
    /// Redelivered messages that were already committed (by this or
    /// another worker), acknowledged without being processed again.
    pub skipped_committed: u64,
    /// Epochs whose claim found some of its messages committed by another
    /// worker first (those were left out and the epoch redone).
    pub overlaps: u64,
    /// Stateful pipelines: epochs computed on a state that another
    /// worker's commit made stale, undone and computed again.
    pub stale_epochs: u64,
    /// Stateful pipelines: other workers' claims whose state this worker
    /// applied.
    pub applied_claims: u64,
    /// Messages a NATS sink published that the server reported as
    /// duplicates (a replayed epoch's output, dropped by the server).
    pub published_duplicates: u64,
    /// Ranges of committed stream sequences remembered (above the ack floor).
    pub ledger_ranges: usize,
    /// The last error (connection, consumer, epoch), if any since it last
    /// connected.
    pub last_error: Option<String>,
}

/// One committed micro-batch, for the admin API's reports.
#[derive(Debug, Clone, Serialize)]
pub struct BatchReport {
    /// The tenant.
    pub tenant: String,
    /// Part id: also in the output file names and the quarantine's `run_id`.
    pub part: String,
    /// When it was committed, RFC 3339 UTC.
    pub committed_at: String,
    /// Submissions it merged.
    pub submissions: usize,
    /// Records in, written, filtered, quarantined.
    pub received: u64,
    /// Records written.
    pub written: u64,
    /// Records filtered.
    pub filtered: u64,
    /// Records quarantined.
    pub quarantined: u64,
    /// From the first record's arrival to the commit, in ms.
    pub latency_ms: f64,
    /// Files it added.
    pub outputs: Vec<PathBuf>,
    /// `stage=sha256` of the version each stage ran.
    pub plugin_versions: Vec<String>,
}

/// An epoch of stream messages whose output is staged (or published) and
/// waits for the ledger ([`super::ledger`]).
#[derive(Debug)]
pub struct StreamEpoch {
    /// Its part id.
    pub part: String,
    /// Its staged sink and quarantine files.
    pub staged: Vec<StagedFile>,
    report: BatchReport,
    /// What a NATS sink published (stored, duplicates).
    pub published: Option<crate::sink::nats::Published>,
    /// A stateful pipeline's state changes ([`crate::state::Delta::to_bytes`]),
    /// for the claim; `None` when stateless or nothing changed.
    pub state: Option<Vec<u8>>,
}

/// A micro-batch whose output is staged (or published) but not committed.
struct Prepared {
    acks: Vec<Ack>,
    report: BatchReport,
    staged: Vec<StagedFile>,
    /// When the staging finished.
    at: Instant,
    /// What a NATS sink published.
    published: Option<crate::sink::nats::Published>,
    /// The operators' state changes, staged (also in `staged`).
    delta: Option<super::stateful::StagedDelta>,
}

/// Reports kept per pipeline.
pub const REPORT_HISTORY: usize = 100;

/// A pipeline being served.
pub struct LivePipeline {
    /// Pipeline name (from the pipeline file).
    pub name: String,
    /// The tenant owning it.
    pub tenant: Arc<str>,
    quota: Arc<Quota>,
    pipeline: Pipeline,
    source: Source,
    hosted: HostedPipeline,
    base_dir: PathBuf,
    max_batch_rows: usize,
    sink_dir: PathBuf,
    sink_config: crate::config::SinkConfig,
    quarantine_dir: PathBuf,
    quarantine_config: QuarantineConfig,
    state_dir: PathBuf,
    state: AtomicU8,
    queue: Mutex<Option<mpsc::Sender<Piece>>>,
    /// Requests on their way to `queue`.
    arrivals: Arc<Arrivals>,
    /// The service's HTTP connections: when every one is inside a request,
    /// nothing more can come and a pending micro-batch is cut at once.
    connections: Arc<Connections>,
    counters: Counters,
    stage_totals: Mutex<Vec<StageReport>>,
    reports: Mutex<VecDeque<BatchReport>>,
    rate: Mutex<VecDeque<(Instant, u64)>>,
    workers: Mutex<Vec<Worker>>,
    concurrency: usize,
    instance_id: String,
    part_seq: AtomicU64,
    replayed: Mutex<HashSet<String>>,
    delivery: Delivery,
    /// `[source.nats]` of a stream pipeline.
    stream: Option<crate::nats::settings::SourceSettings>,
    stream_status: Mutex<Option<StreamStatus>>,
    /// The stateful operators; holding the lock serialises micro-batches.
    operators: Option<Mutex<ServedOperators>>,
    /// The operators' counts after the last micro-batch (read without
    /// waiting for a running one).
    operator_reports: Mutex<Vec<crate::operator::OperatorReport>>,
    /// Its run history, per interval, and freshness watch.
    history: super::served_history::ServedHistory,
}

impl std::fmt::Debug for LivePipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LivePipeline")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl LivePipeline {
    /// Prepares `pipeline` for serving with `hosted`'s settings, for the
    /// tenant whose quotas are `quota`; state files go under
    /// `state_dir/NAME/`. Call [`LivePipeline::start`] in a tokio runtime to
    /// begin taking records.
    ///
    /// # Errors
    /// A pipeline whose source has no fixed schema (declare `schema` or
    /// point `path` at a sample file), an `extract` source, or sink /
    /// quarantine paths that are files.
    pub fn new(
        pipeline: Pipeline,
        hosted: HostedPipeline,
        state_dir: &Path,
        quota: Arc<Quota>,
    ) -> Result<LivePipeline> {
        let config = pipeline.config().clone();
        let base_dir = pipeline
            .file
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        if config.source.format == crate::config::SourceFormat::Extract {
            anyhow::bail!(
                "{}: weir serve takes records (JSON, CSV, Parquet), so its source cannot be `extract`",
                pipeline.file.display()
            );
        }
        // A stream's messages are decoded as JSON Lines records.
        let stream = config.source.nats.clone();
        let source_config = match stream {
            Some(_) => crate::config::SourceConfig {
                format: crate::config::SourceFormat::Jsonl,
                ..config.source.clone()
            },
            None => config.source.clone(),
        };
        if stream.is_some() && hosted.drop_dir.is_some() {
            anyhow::bail!(
                "{}: a pipeline reading a NATS stream takes no drop directory; remove drop_dir",
                pipeline.file.display()
            );
        }
        // The schema `Pipeline::load` inferred for its probe, unless the
        // file changed since.
        let source = Source::open_with_cursor(
            &source_config,
            &base_dir,
            config.pipeline.batch_size,
            None,
            None,
            pipeline.take_probed_source().as_ref(),
        )
        .with_context(|| {
                format!(
                    "{}: weir serve needs the records' schema before the first request: declare [source] schema, or point [source] path at a sample file",
                    pipeline.file.display()
                )
            })?;
        let sink_dir = hosted
            .sink_path
            .clone()
            .unwrap_or_else(|| base_dir.join(&config.sink.path));
        let quarantine_dir = hosted
            .quarantine_path
            .clone()
            .unwrap_or_else(|| base_dir.join(&config.quarantine.path));
        let sink_config = crate::config::SinkConfig {
            path: sink_dir.display().to_string(),
            ..config.sink.clone()
        };
        for dir in [&sink_dir, &quarantine_dir] {
            if dir.exists() && !dir.is_dir() {
                anyhow::bail!(
                    "{} is a file (from `weir run`?); weir serve writes one file per micro-batch into a directory there: move it away",
                    dir.display()
                );
            }
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let state_dir = state_dir.join(&pipeline.name);
        super::files::create_private_dir_all(&state_dir)?;
        let history = super::served_history::ServedHistory::new(
            &pipeline.name,
            &quota.tenant,
            state_dir.join(crate::history::HISTORY_FILE),
            pipeline.config().history.clone(),
            pipeline.config().checks.clone(),
        );
        let replayed = read_replayed(&state_dir.join(REPLAYED_FILE))?;
        let delivery = Delivery::open(
            &state_dir,
            &sink_dir,
            &quarantine_dir,
            hosted.idempotency_window(),
            stream.is_some(),
        )?;
        // After the delivery log finished the commits a crash interrupted.
        let stage_states = pipeline.stage_states();
        let operators = match config.operators.is_empty() && stage_states.is_empty() {
            true => None,
            false => {
                let mut operators =
                    ServedOperators::open(&config.operators, &stage_states, &state_dir)?;
                if stream.is_some() {
                    operators = operators.for_stream();
                }
                operators.chain().set_budget(quota.state_budget().clone());
                Some(Mutex::new(operators))
            }
        };
        let concurrency = match config.pipeline.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let stage_totals = pipeline
            .stages()
            .iter()
            .map(|s| StageReport {
                name: s.name.to_string(),
                kind: Some(s.kind),
                plugin: s.reference.clone(),
                ..StageReport::default()
            })
            .collect();
        Ok(LivePipeline {
            name: pipeline.name.clone(),
            tenant: quota.tenant.clone(),
            quota,
            max_batch_rows: hosted.max_batch_rows.unwrap_or(config.pipeline.batch_size),
            quarantine_config: config.quarantine.clone(),
            pipeline,
            source,
            hosted,
            base_dir,
            sink_dir,
            sink_config,
            quarantine_dir,
            state_dir,
            state: AtomicU8::new(0),
            queue: Mutex::new(None),
            arrivals: Arc::new(Arrivals::default()),
            connections: Arc::default(),
            counters: Counters::default(),
            stage_totals: Mutex::new(stage_totals),
            reports: Mutex::new(VecDeque::new()),
            rate: Mutex::new(VecDeque::new()),
            workers: Mutex::new(Vec::new()),
            concurrency,
            instance_id: uuid::Uuid::new_v4().simple().to_string()[..8].to_string(),
            part_seq: AtomicU64::new(0),
            replayed: Mutex::new(replayed),
            delivery,
            stream,
            stream_status: Mutex::new(None),
            operator_reports: Mutex::new(
                operators
                    .as_ref()
                    .map(|o| o.lock().expect("fresh lock").reports())
                    .unwrap_or_default(),
            ),
            operators,
            history,
        })
    }

    /// Tenant and pipeline, as metrics labels.
    fn labels(&self) -> [(&'static str, String); 2] {
        [
            ("tenant", self.tenant.to_string()),
            ("pipeline", self.name.clone()),
        ]
    }

    /// The hosted pipeline.
    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    /// The serve-mode settings.
    pub fn hosted(&self) -> &HostedPipeline {
        &self.hosted
    }

    /// The source, for its schema and decoders.
    pub fn source(&self) -> &Source {
        &self.source
    }

    /// The pipeline file's directory.
    pub fn base_dir(&self) -> &Path {
        &self.base_dir
    }

    /// Its run history, per interval, and freshness watch.
    pub fn history(&self) -> &super::served_history::ServedHistory {
        &self.history
    }

    /// Where drop-directory checkpoints and replay records live.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// Shares the service's connection counts (by default, a count of its
    /// own that never sees a connection, so batches wait for quiet).
    pub fn with_connections(mut self, connections: Arc<Connections>) -> LivePipeline {
        self.connections = connections;
        self
    }

    /// Starts the batcher task; returns its handle, which ends after
    /// [`LivePipeline::close`] once every queued record is committed.
    pub fn start(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let (tx, rx) = mpsc::channel(1024);
        *self.queue.lock().expect("queue lock") = Some(tx);
        tokio::spawn(self.clone().batcher(rx))
    }

    /// Stops taking records; queued ones are flushed without waiting for
    /// their linger time.
    pub fn close(&self) {
        self.state.store(2, Ordering::Release);
        self.queue.lock().expect("queue lock").take();
    }

    /// Running, paused or draining.
    pub fn state(&self) -> PipelineState {
        PipelineState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Refuses new submissions until [`LivePipeline::resume`]; returns
    /// false when draining.
    pub fn pause(&self) -> bool {
        self.state
            .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
            || self.state() == PipelineState::Paused
    }

    /// Takes submissions again; returns false when draining.
    pub fn resume(&self) -> bool {
        self.state
            .compare_exchange(1, 0, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
            || self.state() == PipelineState::Running
    }

    /// The pipeline's exactly-once delivery state.
    pub fn delivery(&self) -> &Delivery {
        &self.delivery
    }

    /// Submits decoded records and waits until they are committed.
    ///
    /// # Errors
    /// [`SubmitError`]: paused, shutting down, or a micro-batch that could
    /// not be committed.
    pub async fn submit(&self, items: Vec<SourceItem>) -> Result<Ack, SubmitError> {
        Ok(self.submit_from(items, None, None).await?.ack)
    }

    /// Counts a request for this pipeline as on its way until the guard
    /// is given to [`LivePipeline::submit_from`] (or dropped): the batcher
    /// does not cut a micro-batch early while one is
    /// ([`super::arrivals`]). Take it as soon as the request is known to
    /// be for this pipeline, before reading its body.
    pub fn expect_arrival(&self) -> Arrival {
        self.arrivals.expect()
    }

    /// [`LivePipeline::submit`] exactly once per `origin` (an idempotency
    /// key, a dropped file): a submission whose pieces are all committed
    /// is answered with the recorded acknowledgement and writes nothing;
    /// one partly committed before a crash submits only the missing
    /// pieces ([`super::delivery`]). `arrival`, the request's
    /// [`LivePipeline::expect_arrival`] guard, is released once its
    /// records are queued.
    ///
    /// # Errors
    /// As [`LivePipeline::submit`], and [`SubmitError::Key`] for a key in
    /// flight or reused for another body.
    pub async fn submit_from(
        &self,
        items: Vec<SourceItem>,
        origin: Option<Origin>,
        arrival: Option<Arrival>,
    ) -> Result<Submitted, SubmitError> {
        if self.stream.is_some() {
            return Err(SubmitError::Stream(self.name.clone()));
        }
        match self.state() {
            PipelineState::Running => {}
            PipelineState::Paused => return Err(SubmitError::Paused(self.name.clone())),
            PipelineState::Draining => return Err(SubmitError::ShuttingDown(self.name.clone())),
        }
        let queue = self
            .queue
            .lock()
            .expect("queue lock")
            .clone()
            .ok_or_else(|| SubmitError::ShuttingDown(self.name.clone()))?;
        let pieces = self.split(items);
        let count = pieces.len() as u32;
        let mut committed = BTreeMap::new();
        let mut _guard = None;
        let origin = match origin {
            None => None,
            Some(_) if !self.pipeline.config().pipeline.checkpoint => {
                return Err(SubmitError::Key(super::delivery::KeyError::Disabled(
                    self.name.clone(),
                )));
            }
            Some(origin) => match self.delivery.admit(&origin, count)? {
                Admission::Done(ack) => {
                    return Ok(Submitted {
                        ack,
                        replayed: true,
                    });
                }
                Admission::Submit {
                    committed: done,
                    guard,
                } => {
                    committed = done;
                    _guard = Some(guard);
                    Some(Arc::new(origin))
                }
            },
        };
        let pieces: Vec<(u32, SourceItem)> = (0..count)
            .zip(pieces)
            .filter(|(index, _)| !committed.contains_key(index))
            .collect();
        if pieces.is_empty() {
            let mut ack = Ack::default();
            for piece in committed.into_values() {
                ack.merge(piece);
            }
            return Ok(Submitted {
                ack: ack.finish(),
                replayed: false,
            });
        }
        let mut already = Ack::default();
        for piece in committed.into_values() {
            already.merge(piece);
        }
        let (sender, receiver) = oneshot::channel();
        let received: u64 = pieces.iter().map(|(_, item)| item_rows(item) as u64).sum();
        self.counters.submissions.fetch_add(1, Ordering::Relaxed);
        self.counters
            .received
            .fetch_add(received, Ordering::Relaxed);
        self.counters
            .queued_rows
            .fetch_add(received, Ordering::Relaxed);
        metrics::counter!("weir_records_in_total", &self.labels()).increment(received);
        let ack = Arc::new(AckState {
            remaining: AtomicU64::new(pieces.len() as u64),
            outcome: Mutex::new((already, None)),
            sender: Mutex::new(Some(sender)),
        });
        let enqueued = Instant::now();
        for (index, item) in pieces {
            let piece = Piece {
                item,
                ack: ack.clone(),
                enqueued,
                origin: origin.as_ref().map(|o| (o.clone(), index, count)),
            };
            if queue.send(piece).await.is_err() {
                return Err(SubmitError::ShuttingDown(self.name.clone()));
            }
        }
        drop(queue);
        // Queued: the batcher may cut without waiting for more of it.
        drop(arrival);
        match receiver.await {
            Ok(Ok(ack)) => Ok(Submitted {
                ack,
                replayed: false,
            }),
            Ok(Err(error)) => Err(SubmitError::Failed(error)),
            Err(_) => Err(SubmitError::Failed("the batch was dropped".into())),
        }
    }

    /// Cuts batches larger than `max_batch_rows`.
    fn split(&self, items: Vec<SourceItem>) -> Vec<SourceItem> {
        let mut pieces = Vec::new();
        for item in items {
            match item {
                SourceItem::Batch(SourceBatch { batch, file, .. }) => {
                    let mut offset = 0;
                    while offset < batch.num_rows() {
                        let len = self.max_batch_rows.min(batch.num_rows() - offset);
                        pieces.push(SourceItem::Batch(SourceBatch {
                            batch: batch.slice(offset, len),
                            file: file.clone(),
                            state: None,
                        }));
                        offset += len;
                    }
                }
                rejected @ SourceItem::Rejected { .. } => {
                    if item_rows(&rejected) > 0 {
                        pieces.push(rejected);
                    }
                }
            }
        }
        pieces
    }

    async fn batcher(self: Arc<Self>, mut queue: mpsc::Receiver<Piece>) {
        let linger = self.hosted.linger();
        let quiet = self.hosted.quiet();
        let slots = Arc::new(Semaphore::new(self.concurrency));
        let mut running = tokio::task::JoinSet::new();
        let mut pending: Vec<Piece> = Vec::new();
        let mut pending_rows = 0usize;
        // The linger deadline of the pending batch.
        let mut deadline: Option<tokio::time::Instant> = None;
        let mut last_piece = tokio::time::Instant::now();
        loop {
            // Waiting could still add to the pending batch while a request
            // is on its way, and there is no point in cutting it before a
            // worker is free (it would only wait, closed to later pieces).
            let quiet_at = quiet.filter(|_| {
                !pending.is_empty()
                    && self.arrivals.on_the_way() == 0
                    && slots.available_permits() > 0
            });
            // Nor any point in waiting out the quiet time when no client
            // can send more: every open connection is waiting for its
            // answer (those behind the pending pieces among them).
            let quiet_at = quiet_at.map(|quiet| match self.connections.all_busy() {
                true => last_piece,
                false => last_piece + quiet,
            });
            let wake = match (deadline, quiet_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let piece = tokio::select! {
                piece = queue.recv() => piece,
                () = sleep_until(wake) => {
                    // The linger ran out, or the batch is quiet, unless a
                    // request started on its way during the quiet time:
                    // then it is worth waiting for (the loop looks again
                    // once it is queued).
                    let lingered = deadline.is_some_and(|d| d <= tokio::time::Instant::now());
                    if !lingered && self.arrivals.on_the_way() > 0 {
                        continue;
                    }
                    self.cut(&mut pending, &mut pending_rows, &slots, &mut running).await;
                    deadline = None;
                    continue;
                }
                // A request stopped being on its way or a worker became
                // free: look again at whether the batch is quiet.
                () = self.arrivals.changed(), if !pending.is_empty() => continue,
                Some(_) = running.join_next(), if !running.is_empty() => continue,
            };
            let Some(piece) = piece else { break };
            last_piece = tokio::time::Instant::now();
            let rows = piece.rows();
            if pending_rows > 0 && pending_rows + rows > self.max_batch_rows {
                self.cut(&mut pending, &mut pending_rows, &slots, &mut running)
                    .await;
                deadline = None;
            }
            if pending.is_empty() {
                deadline = Some(last_piece + linger);
            }
            pending_rows += rows;
            pending.push(piece);
            if pending_rows >= self.max_batch_rows || self.state() == PipelineState::Draining {
                self.cut(&mut pending, &mut pending_rows, &slots, &mut running)
                    .await;
                deadline = None;
            }
            // Reap finished batches so the set does not grow.
            while running.try_join_next().is_some() {}
        }
        self.cut(&mut pending, &mut pending_rows, &slots, &mut running)
            .await;
        while running.join_next().await.is_some() {}
    }

    /// Hands the pending pieces to a worker thread as one micro-batch.
    async fn cut(
        self: &Arc<Self>,
        pending: &mut Vec<Piece>,
        pending_rows: &mut usize,
        slots: &Arc<Semaphore>,
        running: &mut tokio::task::JoinSet<()>,
    ) {
        if pending.is_empty() {
            return;
        }
        let pieces = std::mem::take(pending);
        *pending_rows = 0;
        let permit = slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        // The tenant's share: its batches over all its pipelines.
        let tenant_permit = self
            .quota
            .batch_slots()
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        // A tenant in fuel debt waits here, before taking a service slot.
        self.quota.wait_for_fuel().await;
        let run_slot = self.quota.run_slot().await;
        let this = self.clone();
        running.spawn_blocking(move || {
            this.run_batch(pieces);
            drop((run_slot, permit, tenant_permit));
        });
    }

    fn take_worker(&self) -> Worker {
        self.workers
            .lock()
            .expect("workers lock")
            .pop()
            .unwrap_or_else(|| {
                Worker::new(
                    Scope {
                        memory: Some(self.quota.memory().clone()),
                        fuel: Some(self.quota.clone()),
                        ..Scope::new(&self.tenant, &self.name)
                    },
                    self.pipeline.stages(),
                    self.pipeline.config().sink.lineage_column.clone(),
                )
            })
    }

    /// Runs, commits and acknowledges one micro-batch (on a blocking thread).
    fn run_batch(&self, pieces: Vec<Piece>) {
        let rows: u64 = pieces.iter().map(|p| p.rows() as u64).sum();
        let first_enqueued = pieces.iter().map(|p| p.enqueued).min();
        let mut worker = self.take_worker();
        let seq = self.part_seq.fetch_add(1, Ordering::Relaxed);
        let part = format!("{}-{seq:08}", self.instance_id);
        let outcome = self.process(&mut worker, &part, &pieces);
        let deltas = worker.take_reports();
        self.workers.lock().expect("workers lock").push(worker);
        self.quota
            .charge_fuel(deltas.iter().map(|d| d.fuel_consumed).sum());
        self.merge_stage_reports(&deltas);
        self.counters.queued_rows.fetch_sub(rows, Ordering::Relaxed);
        let latency = first_enqueued.map(|t| t.elapsed()).unwrap_or_default();
        match outcome {
            Ok((acks, mut report)) => {
                report.latency_ms = latency.as_secs_f64() * 1000.0;
                self.record_batch(&report, latency);
                for (piece, ack) in pieces.iter().zip(acks) {
                    piece.ack.complete_piece(Ok(ack));
                }
                crate::crash::point("after-ack");
            }
            Err(error) => {
                self.counters.failed_batches.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("weir_batches_failed_total", &self.labels()).increment(1);
                self.history.failed(&format!("{error:#}"));
                tracing::error!(tenant = %self.tenant, pipeline = %self.name, part, error = format!("{error:#}"), "a micro-batch failed; none of its records were written");
                let message = format!("{error:#}");
                for piece in &pieces {
                    piece.ack.complete_piece(Err(message.clone()));
                }
            }
        }
    }

    fn merge_stage_reports(&self, deltas: &[StageReport]) {
        let mut totals = self.stage_totals.lock().expect("stage lock");
        for (total, delta) in totals.iter_mut().zip(deltas) {
            total.merge(delta);
            let labels = [
                ("tenant", self.tenant.to_string()),
                ("pipeline", self.name.clone()),
                ("stage", total.name.clone()),
                ("plugin", total.plugin.clone()),
            ];
            metrics::counter!("weir_stage_records_in_total", &labels).increment(delta.records_in);
            metrics::counter!("weir_stage_records_out_total", &labels).increment(delta.records_out);
            metrics::counter!("weir_stage_records_quarantined_total", &labels)
                .increment(delta.quarantined);
            metrics::counter!("weir_stage_records_filtered_total", &labels)
                .increment(delta.filtered);
        }
    }

    fn record_batch(&self, report: &BatchReport, latency: Duration) {
        let c = &self.counters;
        c.batches.fetch_add(1, Ordering::Relaxed);
        c.written.fetch_add(report.written, Ordering::Relaxed);
        c.filtered.fetch_add(report.filtered, Ordering::Relaxed);
        c.quarantined
            .fetch_add(report.quarantined, Ordering::Relaxed);
        let labels = self.labels();
        metrics::counter!("weir_records_out_total", &labels).increment(report.written);
        metrics::counter!("weir_records_quarantined_total", &labels).increment(report.quarantined);
        metrics::counter!("weir_records_filtered_total", &labels).increment(report.filtered);
        metrics::counter!("weir_batches_total", &labels).increment(1);
        metrics::histogram!("weir_batch_latency_seconds", &labels).record(latency.as_secs_f64());
        let mut reports = self.reports.lock().expect("reports lock");
        reports.push_front(report.clone());
        reports.truncate(REPORT_HISTORY);
        self.history.committed(super::served_history::Committed {
            submissions: report.submissions,
            received: report.received,
            written: report.written,
            filtered: report.filtered,
            quarantined: report.quarantined,
            outputs: report.outputs.len(),
            latency_ms: report.latency_ms,
            plugin_versions: &report.plugin_versions,
        });
        let mut rate = self.rate.lock().expect("rate lock");
        rate.push_back((Instant::now(), c.received.load(Ordering::Relaxed)));
        while rate
            .front()
            .is_some_and(|(t, _)| t.elapsed() > Duration::from_secs(60))
        {
            rate.pop_front();
        }
    }

    /// Runs the stages over the merged pieces and commits the sink and
    /// quarantine parts. Returns each piece's ack and the batch report.
    fn process(
        &self,
        worker: &mut Worker,
        part: &str,
        pieces: &[Piece],
    ) -> Result<(Vec<Ack>, BatchReport)> {
        // Stateful operators see one micro-batch at a time, from their run
        // to the commit of its output and state.
        let mut operators = self.lock_operators();
        if let Some(operators) = operators.as_deref() {
            operators.check()?;
        }
        let outcome = self.prepare(worker, part, pieces, None, operators.as_deref_mut());
        let mut prepared = match outcome {
            Ok(prepared) => prepared,
            Err(error) => {
                if let Some(operators) = operators.as_deref_mut() {
                    operators.failed();
                }
                return Err(error);
            }
        };
        let delta = prepared.delta.take();
        let committed = self.commit_prepared(part, pieces, &prepared);
        if let Some(operators) = operators.as_deref_mut() {
            match &committed {
                Ok(()) => operators.committed(delta),
                Err(error) => operators.commit_failed(error),
            }
            self.publish_operator_reports(operators.reports());
        }
        committed?;
        crate::crash::point("after-commit");
        Ok((prepared.acks, prepared.report))
    }

    /// Runs the stages over `batches` (the pieces' rows, in order; request
    /// `i` starts at merged row `starts[i]`) with their origins tracked.
    ///
    /// Clients that wait for their answers make one micro-batch at a time,
    /// which ran on one core while the other idled: with 4 such clients
    /// `weir serve` ingested about half as fast as `weir run` on the same
    /// rows. When `splittable`, the micro-batch is big enough
    /// ([`SPLIT_MIN_ROWS`]), the pipeline may run more than one batch at
    /// once and the service has an idle slot no other batch is waiting for
    /// ([`super::quota::Quota::try_idle_slot`]), the pieces are cut into
    /// two halves of about equal rows and the second runs on another
    /// worker, in parallel. The results are joined as if one worker had
    /// run them: the outputs in piece order, the origins in merged row
    /// numbers, the rejected groups of the first half then the second's,
    /// and both halves' plugin versions (two for a stage only when a
    /// plugin was reloaded between the halves' starts).
    ///
    /// # Errors
    /// As [`Worker::process_tracked`].
    fn run_stages(
        &self,
        worker: &mut Worker,
        part: &str,
        batches: &[arrow::record_batch::RecordBatch],
        starts: Vec<u32>,
        splittable: bool,
    ) -> Result<crate::stages::BatchResult> {
        let schema = self.source.schema().expect("serve sources have a schema");
        let starts: Arc<[u32]> = Arc::from(starts);
        let total: usize = batches.iter().map(|b| b.num_rows()).sum();
        let run = |worker: &mut Worker,
                   batches: &[arrow::record_batch::RecordBatch],
                   first_row: usize| {
            let merged = arrow::compute::concat_batches(&schema, batches)?;
            let origins = Origins {
                rows: (first_row as u32..(first_row + merged.num_rows()) as u32).collect(),
                starts: starts.clone(),
            };
            worker.process_tracked(
                0,
                SourceItem::Batch(SourceBatch {
                    batch: merged,
                    file: Arc::from(part),
                    state: None,
                }),
                Some(origins),
            )
        };
        // The cut that leaves the halves' rows closest to equal; a half
        // without rows is no help.
        let (cut, before) = batches
            .iter()
            .scan(0, |rows, batch| {
                *rows += batch.num_rows();
                Some(*rows)
            })
            .enumerate()
            .map(|(i, rows)| (i + 1, rows))
            .take(batches.len().saturating_sub(1))
            .min_by_key(|&(_, rows)| rows.abs_diff(total - rows))
            .unzip();
        let before = before.unwrap_or(0);
        let helper = (splittable
            && total >= SPLIT_MIN_ROWS
            && before > 0
            && before < total
            && self.concurrency > 1)
            .then(|| self.quota.try_idle_slot())
            .flatten();
        let (Some(cut), Some(slot)) = (cut, helper) else {
            return run(worker, batches, 0);
        };
        let mut second_worker = self.take_worker();
        let (first, second) = std::thread::scope(|scope| {
            let second = scope.spawn(|| run(&mut second_worker, &batches[cut..], before));
            let first = run(worker, &batches[..cut], 0);
            (first, second.join())
        });
        drop(slot);
        let deltas = second_worker.take_reports();
        self.workers
            .lock()
            .expect("workers lock")
            .push(second_worker);
        self.quota
            .charge_fuel(deltas.iter().map(|d| d.fuel_consumed).sum());
        self.merge_stage_reports(&deltas);
        let second = second.map_err(|_| anyhow::anyhow!("a micro-batch's second half panicked"))?;
        join_halves(first?, second?)
    }

    /// Keeps the operators' counts for the status and sets their state
    /// gauges.
    fn publish_operator_reports(&self, reports: Vec<crate::operator::OperatorReport>) {
        for report in &reports {
            let labels = [
                ("tenant", self.tenant.to_string()),
                ("pipeline", self.name.clone()),
                ("operator", report.name.clone()),
            ];
            metrics::gauge!("weir_operator_state_keys", &labels).set(report.state_keys as f64);
            metrics::gauge!("weir_operator_state_bytes", &labels).set(report.state_bytes as f64);
        }
        *self.operator_reports.lock().expect("operator reports lock") = reports;
    }

    /// Records and commits a prepared micro-batch's files with its keyed
    /// pieces.
    fn commit_prepared(&self, part: &str, pieces: &[Piece], prepared: &Prepared) -> Result<()> {
        let keyed: Vec<PieceRecord> = pieces
            .iter()
            .zip(&prepared.acks)
            .filter_map(|(piece, ack)| {
                let (origin, index, count) = piece.origin.as_ref()?;
                Some(PieceRecord {
                    key: origin.key.clone(),
                    body_sha256: origin.body_sha256.clone(),
                    index: *index,
                    count: *count,
                    ack: ack.clone(),
                })
            })
            .collect();
        if self.pipeline.config().pipeline.checkpoint {
            self.delivery
                .record_and_commit(part, prepared.staged.clone(), keyed, prepared.at)
        } else {
            // `checkpoint = false`: at-least-once, committed unrecorded.
            self.delivery.commit_unrecorded(prepared.staged.clone())
        }
    }

    /// Runs the stages over the merged pieces and writes the sink and
    /// quarantine parts under staging names (fsynced), or, for a NATS sink,
    /// publishes the output (`publish`: the sink and the stream sequence of
    /// each input row of the single batch piece, from which each message
    /// id is derived). Nothing is visible until the staged files are
    /// committed.
    fn prepare(
        &self,
        worker: &mut Worker,
        part: &str,
        pieces: &[Piece],
        publish: Option<(&crate::sink::nats::NatsSink, &[u64])>,
        mut operators: Option<&mut ServedOperators>,
    ) -> Result<Prepared> {
        let mut acks: Vec<Ack> = pieces
            .iter()
            .map(|p| Ack {
                received: p.rows() as u64,
                ..Ack::default()
            })
            .collect();
        // Parsed rows of every piece, merged; `owners[i]` is the piece
        // owning merged request `i`.
        let mut batches = Vec::new();
        let mut starts = Vec::new();
        let mut owners = Vec::new();
        let mut merged_rows = 0u32;
        let mut quarantined: Vec<(usize, Quarantined)> = Vec::new();
        for (i, piece) in pieces.iter().enumerate() {
            match &piece.item {
                SourceItem::Batch(batch) if publish.is_some() => {
                    // Each row its own request: its output rows are traced
                    // to it even through a transform that adds rows.
                    for _ in 0..batch.batch.num_rows() {
                        starts.push(merged_rows);
                        owners.push(i);
                        merged_rows += 1;
                    }
                    batches.push(batch.batch.clone());
                }
                SourceItem::Batch(batch) => {
                    starts.push(merged_rows);
                    owners.push(i);
                    merged_rows += batch.batch.num_rows() as u32;
                    batches.push(batch.batch.clone());
                }
                SourceItem::Rejected { rows, reasons, .. } => quarantined.push((
                    i,
                    Quarantined {
                        rows: rows.clone(),
                        reasons: reasons.clone(),
                        origins: None,
                    },
                )),
            }
        }
        let mut output = None;
        let mut message_ids: Vec<String> = Vec::new();
        let mut plugin_versions = Vec::new();
        if !batches.is_empty() {
            // Without operators, the stages see rows independently of the
            // micro-batch they came in, so half of it can run on an idle
            // core; operators and stateful stages see it whole.
            let splittable = operators.is_none() && publish.is_none();
            let mut result = self.run_stages(worker, part, &batches, starts, splittable)?;
            // `take` the output only when there are operators to give it to.
            if let Some(operators) = operators.as_deref_mut()
                && let Some(output) = result.output.take()
            {
                let stepped = operators
                    .chain()
                    .process(output, result.output_origins.take())?;
                result.output = stepped.output;
                result.output_origins = stepped.output_origins;
                result.quarantined.extend(stepped.quarantined);
            }
            plugin_versions = result.plugin_versions;
            for group in result.quarantined {
                let pieces = by_request(group.origins.as_ref(), group.rows.num_rows());
                let selections: Vec<&[u32]> = pieces.values().map(Vec::as_slice).collect();
                let reasons = group.reasons.select(&selections);
                for ((request, rows), reasons) in pieces.iter().zip(reasons) {
                    let indices = UInt32Array::from(rows.clone());
                    let piece_rows = arrow::compute::take_record_batch(&group.rows, &indices)?;
                    quarantined.push((
                        owners[*request],
                        Quarantined {
                            rows: piece_rows,
                            reasons,
                            origins: None,
                        },
                    ));
                }
            }
            if let Some(batch) = result.output {
                let by_request = by_request(result.output_origins.as_ref(), batch.num_rows());
                for (request, rows) in &by_request {
                    acks[owners[*request]].written += rows.len() as u64;
                }
                if let Some((_, sequences)) = publish {
                    // `STREAM:SEQUENCE:K`: the K-th output row of the
                    // message at SEQUENCE (crate::sink::nats).
                    let stream = self.stream_name();
                    let mut ids = vec![String::new(); batch.num_rows()];
                    for (request, rows) in &by_request {
                        for (k, &row) in rows.iter().enumerate() {
                            ids[row as usize] = format!("{stream}:{}:{k}", sequences[*request]);
                        }
                    }
                    message_ids = ids;
                }
                output = Some(batch);
            }
        }
        let prepared = Instant::now();
        // The quarantine part is encoded and written on a thread of its own
        // while the sink part is written here, and the two are finished and
        // fsynced side by side: a micro-batch's answer waits for the
        // slower, not both.
        for (piece, group) in &quarantined {
            acks[*piece].add_quarantined(&group.reasons);
        }
        let write_quarantine = || -> Result<(PathBuf, PathBuf)> {
            let config = QuarantineConfig {
                path: self
                    .quarantine_dir
                    .join(format!(
                        "part-{part}.{}",
                        quarantine_extension(self.quarantine_config.format)
                    ))
                    .display()
                    .to_string(),
                ..self.quarantine_config.clone()
            };
            let mut quarantine = Quarantine::create(&config, Path::new(""), part)?;
            for (piece, group) in &quarantined {
                let file = match &pieces[*piece].item {
                    SourceItem::Batch(batch) => batch.file.clone(),
                    SourceItem::Rejected { file, .. } => file.clone(),
                };
                quarantine.write(&group.rows, group.reasons.clone(), &file)?;
            }
            quarantine.prepare()
        };
        let write_sink = || -> Result<(Vec<StagedFile>, Option<_>)> {
            let mut staged = Vec::new();
            if let (Some((sink, _)), Some(batch)) = (publish, output.as_ref()) {
                if batch.num_rows() > 0 {
                    let sent = tokio::runtime::Handle::current()
                        .block_on(sink.publish(batch, &message_ids))
                        .context("publishing the output to NATS")?;
                    crate::crash::point("after-publish");
                    return Ok((staged, Some(sent)));
                }
            } else if let Some(batch) = output.as_ref().filter(|b| b.num_rows() > 0) {
                let mut sink = Sink::create_part(&self.sink_config, Path::new(""), part)?;
                sink.write(batch)
                    .with_context(|| format!("writing to {}", self.sink_dir.display()))?;
                crate::crash::point("mid-part-write");
                for (file, path) in sink.prepare_parts()? {
                    staged.push(StagedFile { staged: file, path });
                }
            }
            Ok((staged, None))
        };
        let (sink_part, quarantine_part) = std::thread::scope(|scope| {
            let quarantine = (!quarantined.is_empty()).then(|| scope.spawn(write_quarantine));
            let sink_part = write_sink();
            let quarantine_part = quarantine.map(|q| {
                q.join().unwrap_or_else(|_| {
                    Err(anyhow::anyhow!("the quarantine part's thread panicked"))
                })
            });
            (sink_part, quarantine_part)
        });
        let (mut staged, published) = sink_part?;
        // `prepare_parts` fsynced the directories its files are in; the
        // sink's own directory needs it only when a file went into a
        // partition directory below it, which may be new.
        let sink_dir_changed = staged
            .iter()
            .any(|file| file.staged.parent() != Some(self.sink_dir.as_path()));
        if let Some(quarantine_part) = quarantine_part {
            let (file, path) = quarantine_part?;
            staged.push(StagedFile { staged: file, path });
        }
        let outputs: Vec<PathBuf> = staged.iter().map(|s| s.path.clone()).collect();
        let delta = match operators {
            Some(operators) => operators.stage(part)?,
            None => None,
        };
        if let Some(delta) = &delta {
            staged.push(delta.file.clone());
        }
        if sink_dir_changed {
            crate::durable::fsync_dir(&self.sink_dir)?;
        }
        crate::durable::fsync_dir(&self.quarantine_dir)?;
        crate::crash::point("after-part-fsync");
        for ack in &mut acks {
            // A transform may also add rows, so `written` can exceed what
            // was received.
            ack.accepted = ack.received.saturating_sub(ack.quarantined);
            ack.filtered = ack.accepted.saturating_sub(ack.written);
        }
        let total = |f: fn(&Ack) -> u64| acks.iter().map(f).sum::<u64>();
        let report = BatchReport {
            tenant: self.tenant.to_string(),
            part: part.to_string(),
            committed_at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            submissions: pieces
                .iter()
                .map(|p| Arc::as_ptr(&p.ack))
                .collect::<HashSet<_>>()
                .len(),
            received: total(|a| a.received),
            written: total(|a| a.written),
            filtered: total(|a| a.filtered),
            quarantined: total(|a| a.quarantined),
            latency_ms: 0.0,
            outputs,
            plugin_versions,
        };
        Ok(Prepared {
            acks,
            report,
            staged,
            at: prepared,
            published,
            delta,
        })
    }

    /// Counts and rates, for the admin API.
    pub fn status(&self) -> PipelineStatus {
        let c = &self.counters;
        let rate = {
            let rate = self.rate.lock().expect("rate lock");
            match (rate.front(), rate.back()) {
                (Some((t0, n0)), Some((t1, n1))) if t1 > t0 => {
                    (n1 - n0) as f64 / (*t1 - *t0).as_secs_f64()
                }
                _ => 0.0,
            }
        };
        PipelineStatus {
            tenant: self.tenant.to_string(),
            name: self.name.clone(),
            file: self.pipeline.file.clone(),
            state: self.state(),
            submissions: c.submissions.load(Ordering::Relaxed),
            received: c.received.load(Ordering::Relaxed),
            written: c.written.load(Ordering::Relaxed),
            filtered: c.filtered.load(Ordering::Relaxed),
            quarantined: c.quarantined.load(Ordering::Relaxed),
            batches: c.batches.load(Ordering::Relaxed),
            failed_batches: c.failed_batches.load(Ordering::Relaxed),
            queued_records: c.queued_rows.load(Ordering::Relaxed),
            records_per_second: rate,
            max_batch_rows: self.max_batch_rows,
            linger_ms: self.hosted.linger_ms,
            quiet_ms: self.hosted.quiet_ms,
            sink_dir: self.sink_dir.clone(),
            quarantine_dir: self.quarantine_dir.clone(),
            drop_dir: self.hosted.drop_dir.clone(),
            delivery: self.delivery.status(),
            stream: self
                .stream_status
                .lock()
                .expect("stream status lock")
                .clone(),
            operators: self
                .operator_reports
                .lock()
                .expect("operator reports lock")
                .clone(),
        }
    }

    /// `[source.nats]` of a pipeline reading a stream.
    pub fn stream_settings(&self) -> Option<&crate::nats::settings::SourceSettings> {
        self.stream.as_ref()
    }

    /// Micro-batching: rows per batch at most (a stream's epoch: messages).
    pub fn max_batch_rows(&self) -> usize {
        self.max_batch_rows
    }

    fn stream_name(&self) -> &str {
        self.stream.as_ref().map_or("", |s| s.stream.as_str())
    }

    /// Updates the stream section of [`LivePipeline::status`].
    pub fn set_stream_status(&self, update: impl FnOnce(&mut StreamStatus)) {
        let mut status = self.stream_status.lock().expect("stream status lock");
        update(status.get_or_insert_with(Default::default));
    }

    /// A new part id: `INSTANCE-SEQ`, unique across restarts.
    pub fn next_part(&self) -> String {
        let seq = self.part_seq.fetch_add(1, Ordering::Relaxed);
        format!("{}-{seq:08}", self.instance_id)
    }

    /// Recovery of a stream pipeline: see [`Delivery::recover_claimed`].
    ///
    /// # Errors
    /// A rename that fails.
    pub fn recover_claimed(&self, claimed: &[StagedFile]) -> Result<(u64, u64)> {
        self.delivery
            .recover_claimed(claimed, &self.sink_dir, &self.quarantine_dir)
    }

    /// Runs one epoch of stream messages (`decoded`, from
    /// [`crate::nats::decode`]) through the stages and stages its output
    /// (or publishes it to `sink`), on the calling (blocking) thread.
    /// Nothing is visible until [`LivePipeline::commit_epoch`].
    ///
    /// # Errors
    /// The sink could not be written or published to; nothing of the
    /// epoch is committed.
    pub fn prepare_epoch(
        &self,
        part: &str,
        decoded: crate::nats::Decoded,
        sink: Option<&crate::sink::nats::NatsSink>,
    ) -> Result<StreamEpoch> {
        let started = Instant::now();
        let ack = Arc::new(AckState {
            remaining: AtomicU64::new(u64::MAX),
            outcome: Mutex::new((Ack::default(), None)),
            sender: Mutex::new(None),
        });
        let pieces: Vec<Piece> = decoded
            .items
            .into_iter()
            .map(|item| Piece {
                item,
                ack: ack.clone(),
                enqueued: started,
                origin: None,
            })
            .collect();
        let rows: u64 = pieces.iter().map(|p| p.rows() as u64).sum();
        self.counters.received.fetch_add(rows, Ordering::Relaxed);
        self.counters.submissions.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("weir_records_in_total", &self.labels()).increment(rows);
        let mut worker = self.take_worker();
        let publish = sink.map(|sink| (sink, decoded.sequences.as_slice()));
        // A stateful pipeline's epoch holds the operators from here to its
        // commit or discard; this pipeline's one consumer task runs its
        // epochs one at a time, and it takes no other input.
        let mut operators = self.lock_operators();
        let outcome = match operators.as_deref().map(ServedOperators::check) {
            Some(Err(error)) => Err(error),
            _ => self.prepare(
                &mut worker,
                part,
                &pieces,
                publish,
                operators.as_deref_mut(),
            ),
        };
        let state = match (&outcome, operators.as_deref_mut()) {
            (Ok(_), Some(operators)) => operators.take_unclaimed().map(|d| d.to_bytes()),
            (Err(_), Some(operators)) => {
                operators.failed();
                None
            }
            _ => None,
        };
        drop(operators);
        let deltas = worker.take_reports();
        self.workers.lock().expect("workers lock").push(worker);
        self.quota
            .charge_fuel(deltas.iter().map(|d| d.fuel_consumed).sum());
        self.merge_stage_reports(&deltas);
        match outcome {
            Ok(prepared) => Ok(StreamEpoch {
                part: part.to_string(),
                staged: prepared.staged,
                report: prepared.report,
                published: prepared.published,
                state,
            }),
            Err(error) => {
                self.counters.failed_batches.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("weir_batches_failed_total", &self.labels()).increment(1);
                self.history.failed(&format!("{error:#}"));
                Err(error)
            }
        }
    }

    /// Commits an epoch the ledger accepted: renames its staged files into
    /// place and counts it. `latency`: from its first message's publish
    /// time to now.
    ///
    /// # Errors
    /// A rename that fails (the ledger holds the epoch: recovery at the
    /// next start finishes it).
    pub fn commit_epoch(
        &self,
        epoch: StreamEpoch,
        latency: Duration,
        claim: ClaimedState,
    ) -> Result<()> {
        if let Some(operators) = self.lock_operators().as_deref_mut() {
            // The state first: a crash before it is recovered from the
            // ledger, which holds the claim and its delta.
            let delta = epoch
                .state
                .as_deref()
                .map(|bytes| crate::state::Delta::from_bytes(bytes, &epoch.part))
                .transpose()?;
            operators.apply_claim(claim.sequence, Some(claim.after), delta, true)?;
            self.publish_operator_reports(operators.reports());
        }
        self.delivery.commit_unrecorded(epoch.staged)?;
        let mut report = epoch.report;
        report.latency_ms = latency.as_secs_f64() * 1000.0;
        self.record_batch(&report, latency);
        Ok(())
    }

    /// Drops an epoch's staged files and undoes its state changes: the
    /// ledger refused it.
    pub fn discard_epoch(&self, epoch: StreamEpoch) {
        if let Some(operators) = self.lock_operators().as_deref_mut() {
            operators.failed();
        }
        self.delivery.discard(&epoch.staged);
    }

    /// Whether the pipeline keeps state (operators or stateful stages),
    /// which a stream pipeline commits through its ledger.
    pub fn is_stateful(&self) -> bool {
        self.operators.is_some()
    }

    /// Stream: the ledger sequence of the last claim whose state this
    /// worker has applied (0: none, or stateless).
    ///
    /// # Errors
    /// The store cannot be read.
    pub fn ledger_position(&self) -> Result<u64> {
        match self.lock_operators().as_deref_mut() {
            Some(operators) => operators.position(),
            None => Ok(0),
        }
    }

    /// Stream: applies other claims' state, in ledger order: `(ledger
    /// sequence, the stateful claim before it, its delta bytes)`.
    ///
    /// # Errors
    /// A delta that does not decode, a gap in the ledger, or a store that
    /// cannot be written: the operators stop until a restart.
    pub fn apply_claims(&self, claims: Vec<(u64, Option<u64>, Vec<u8>)>) -> Result<()> {
        let mut guard = self.lock_operators();
        let Some(operators) = guard.as_deref_mut() else {
            return Ok(());
        };
        operators.check()?;
        for (sequence, after, bytes) in claims {
            let delta = match bytes.is_empty() {
                true => None,
                false => Some(crate::state::Delta::from_bytes(
                    &bytes,
                    &format!("ledger record {sequence}'s state"),
                )?),
            };
            operators.apply_claim(sequence, after, delta, false)?;
        }
        self.publish_operator_reports(operators.reports());
        Ok(())
    }

    /// The operators, locked (a panic while they were held stops them
    /// until a restart).
    fn lock_operators(&self) -> Option<std::sync::MutexGuard<'_, ServedOperators>> {
        self.operators.as_ref().map(|m| {
            m.lock().unwrap_or_else(|poisoned| {
                let mut operators = poisoned.into_inner();
                operators.poisoned();
                operators
            })
        })
    }

    /// Per-stage counts since the service started.
    pub fn stage_reports(&self) -> Vec<StageReport> {
        let mut totals = self.stage_totals.lock().expect("stage lock").clone();
        for (total, stage) in totals.iter_mut().zip(self.pipeline.stages()) {
            total.plugin_sha256 = stage.plugin().sha256().to_string();
        }
        totals
    }

    /// The most recent micro-batches, newest first.
    pub fn batch_reports(&self) -> Vec<BatchReport> {
        self.reports
            .lock()
            .expect("reports lock")
            .iter()
            .cloned()
            .collect()
    }

    /// Directory of the quarantine parts.
    pub fn quarantine_dir(&self) -> &Path {
        &self.quarantine_dir
    }

    /// Quarantine ids already replayed.
    pub fn is_replayed(&self, id: &str) -> bool {
        self.replayed.lock().expect("replayed lock").contains(id)
    }

    /// Records `ids` as replayed (appended to `replayed.jsonl`).
    ///
    /// # Errors
    /// When the record file cannot be written.
    pub fn mark_replayed(&self, ids: &[String]) -> Result<()> {
        use std::io::Write;
        let path = self.state_dir.join(REPLAYED_FILE);
        let mut file = super::files::append_private(&path)?;
        let mut text = String::new();
        for id in ids {
            text.push_str(&serde_json::to_string(id)?);
            text.push('\n');
        }
        file.write_all(text.as_bytes())?;
        file.sync_data()?;
        self.replayed
            .lock()
            .expect("replayed lock")
            .extend(ids.iter().cloned());
        Ok(())
    }
}

const REPLAYED_FILE: &str = "replayed.jsonl";

fn read_replayed(path: &Path) -> Result<HashSet<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l).with_context(|| format!("{}: bad line {l}", path.display()))
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(HashSet::new()),
        Err(e) => Err(anyhow!("reading {}: {e}", path.display())),
    }
}

fn quarantine_extension(format: QuarantineFormat) -> &'static str {
    match format {
        QuarantineFormat::Jsonl => "jsonl",
        QuarantineFormat::Parquet => "parquet",
    }
}

fn item_rows(item: &SourceItem) -> usize {
    match item {
        SourceItem::Batch(batch) => batch.batch.num_rows(),
        SourceItem::Rejected { rows, .. } => rows.num_rows(),
    }
}

/// Row indices of a group, by the merged request they came from (request 0
/// for all when untracked).
/// Fewest rows in a micro-batch worth running as two halves on two cores
/// ([`LivePipeline::run_stages`]); below it a thread costs more than half
/// the stages save.
const SPLIT_MIN_ROWS: usize = 4096;

/// The result of a micro-batch run as two halves, `first` and `second` (its
/// rows after `first`'s), as one worker would have made it.
///
/// # Errors
/// The halves' outputs differ in schema (a plugin reloaded between them
/// that changed its output).
fn join_halves(
    mut first: crate::stages::BatchResult,
    second: crate::stages::BatchResult,
) -> Result<crate::stages::BatchResult> {
    first.rows_read += second.rows_read;
    first.quarantined.extend(second.quarantined);
    for version in second.plugin_versions {
        if !first.plugin_versions.contains(&version) {
            first.plugin_versions.push(version);
        }
    }
    first.output = match (first.output.take(), second.output) {
        (Some(a), Some(b)) => Some(
            arrow::compute::concat_batches(&a.schema(), [&a, &b])
                .context("the two halves of a micro-batch gave outputs of different schemas")?,
        ),
        (a, b) => a.or(b),
    };
    first.output_origins = match (first.output_origins.take(), second.output_origins) {
        (Some(mut a), Some(b)) => {
            a.rows.extend(b.rows);
            Some(a)
        }
        (a, b) => a.or(b),
    };
    Ok(first)
}

fn by_request(origins: Option<&Origins>, rows: usize) -> BTreeMap<usize, Vec<u32>> {
    let mut groups: BTreeMap<usize, Vec<u32>> = BTreeMap::new();
    for row in 0..rows {
        let request = origins.map_or(0, |o| o.request_of(o.rows[row]));
        groups.entry(request).or_default().push(row as u32);
    }
    groups
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
