//! The consumer task of a pipeline reading a NATS JetStream stream
//! (`[source] format = "nats"`): pulls epochs of messages from the durable
//! consumer, runs them through the stages, commits them through the
//! [`super::ledger`], then acknowledges them.
//!
//! ```text
//! pull ≤ max_batch_rows messages (wait ≤ linger_ms)
//!   ├─ already in the ledger (a redelivery of a committed message) → ack only
//!   └─ the rest: decode → stages → stage files / publish (progress acks meanwhile)
//!        → ledger claim (compare-and-set) ── refused: someone committed some
//!        │                                    of them first → drop those, redo
//!        → rename files into place → double-ack every message
//! ```
//!
//! A stateful pipeline (operators, stateful stages) applies the state of
//! every claim in the ledger before each epoch, publishes its epoch's
//! state delta to the ledger before its claim, and redoes an epoch that
//! another worker's commit made stale ([`super::ledger`]).
//!
//! A crash anywhere loses nothing and duplicates nothing: before the claim,
//! the epoch's files are staging files (removed at the next start) and its
//! messages are redelivered; after it, the claim names the files (renamed
//! at the next start) and the messages, which any worker then only
//! acknowledges. A lost connection ends the session; the task reconnects
//! with backoff and recovers the same way, without a restart of weir.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use async_nats::jetstream;
use async_nats::jetstream::AckKind;
use async_nats::jetstream::consumer::{AckPolicy, PullConsumer, pull};
use async_nats::jetstream::message::Acker;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::watch;

use super::ledger::{Commit, Ledger, SeqSet};
use super::live::{LivePipeline, PipelineState};
use crate::nats::Received;
use crate::nats::settings::SourceSettings;
use crate::sink::nats::NatsSink;

/// Epochs of `max_batch_rows` messages the consumer lets be delivered and
/// unacknowledged at once (`max_ack_pending`), over all its workers: room
/// for 16 workers each holding one epoch.
pub const ACK_PENDING_EPOCHS: usize = 16;

/// Acknowledgements in flight at once.
const ACKS_IN_FLIGHT: usize = 4096;

/// One pulled message: what the epoch needs of it.
struct Pulled {
    received: Received,
    acker: Acker,
    /// The acknowledgement subject, for progress acknowledgements.
    reply: Option<async_nats::Subject>,
    /// Publish time, nanoseconds since the Unix epoch.
    published_ns: i128,
}

/// Runs the consumer of `live` until `stop`; reconnects after any error.
///
/// # Errors
/// Only this worker's id cannot be read or written.
pub async fn run(live: Arc<LivePipeline>, mut stop: watch::Receiver<bool>) -> Result<()> {
    let settings = live
        .stream_settings()
        .cloned()
        .context("the pipeline reads no stream")?;
    let worker = super::ledger::worker_id(live.state_dir())?;
    live.set_stream_status(|s| {
        s.worker = worker.clone();
        s.stream = settings.stream.clone();
        s.consumer = settings.consumer.clone();
    });
    let mut backoff = Duration::from_millis(250);
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        let started = Instant::now();
        match session(&live, &settings, &worker, &mut stop).await {
            Ok(()) => return Ok(()),
            Err(error) => {
                let message = format!("{error:#}");
                tracing::warn!(pipeline = %live.name, error = %message, "the stream consumer stopped; reconnecting");
                live.set_stream_status(|s| {
                    s.connected = false;
                    s.last_error = Some(message);
                });
            }
        }
        if started.elapsed() > Duration::from_secs(30) {
            backoff = Duration::from_millis(250);
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => return Ok(()),
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// One connection: binds the consumer, recovers, then pulls epochs.
async fn session(
    live: &Arc<LivePipeline>,
    settings: &SourceSettings,
    worker: &str,
    stop: &mut watch::Receiver<bool>,
) -> Result<()> {
    let name = format!("weir {}/{}", live.tenant, live.name);
    let client = crate::nats::connect(&settings.servers, &name).await?;
    let context = jetstream::new(client.clone());
    let stream = context
        .get_stream(&settings.stream)
        .await
        .with_context(|| format!("the stream `{}`", settings.stream))?;
    let max_messages = live.max_batch_rows().max(1);
    let mut consumer: PullConsumer = stream
        .get_or_create_consumer(
            &settings.consumer,
            pull::Config {
                durable_name: Some(settings.consumer.clone()),
                ack_policy: AckPolicy::Explicit,
                ack_wait: Duration::from_secs(settings.ack_wait_s),
                max_ack_pending: (max_messages * ACK_PENDING_EPOCHS) as i64,
                filter_subject: settings.subject.clone().unwrap_or_default(),
                ..Default::default()
            },
        )
        .await
        .with_context(|| format!("the durable consumer `{}`", settings.consumer))?;
    let stateful = live.is_stateful();
    let (mut ledger, claimed) = Ledger::open(&context, settings, worker, stateful).await?;
    // No epoch is in flight between sessions: what this worker committed
    // is renamed into place, every other staging file is rolled back.
    let recovering = live.clone();
    tokio::task::spawn_blocking(move || recovering.recover_claimed(&claimed))
        .await
        .context("recovery panicked")??;
    // The state of every claim committed while this worker was away (or
    // before it crashed), in ledger order.
    apply_state(live, &mut ledger).await?;
    let sink = match live.pipeline().config().sink.nats.as_ref() {
        Some(sink) => Some(NatsSink::connect(sink, &name).await?),
        None => None,
    };
    live.set_stream_status(|s| {
        s.connected = true;
        s.last_error = None;
    });
    tracing::info!(pipeline = %live.name, stream = %settings.stream, consumer = %settings.consumer, worker, "consuming");
    let linger = live.hosted().linger().max(Duration::from_millis(10));
    let ack_wait = Duration::from_secs(settings.ack_wait_s);
    let name: Arc<str> = Arc::from(format!("nats:{}", settings.stream));
    let mut last_info: Option<Instant> = None;
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        if last_info.is_none_or(|t| t.elapsed() > Duration::from_secs(1)) {
            let info = consumer
                .info()
                .await
                .context("reading the consumer's state")?;
            let (pending, ack_pending, redelivered, floor) = (
                info.num_pending,
                info.num_ack_pending as u64,
                info.num_redelivered as u64,
                info.ack_floor.stream_sequence,
            );
            ledger.forget_below(floor);
            let ranges = ledger.remembered_ranges();
            live.set_stream_status(|s| {
                s.pending = pending;
                s.ack_pending = ack_pending;
                s.redelivered = redelivered;
                s.ledger_ranges = ranges;
            });
            let labels = [
                ("tenant", live.tenant.to_string()),
                ("pipeline", live.name.clone()),
            ];
            metrics::gauge!("weir_stream_pending_messages", &labels).set(pending as f64);
            metrics::gauge!("weir_stream_ack_pending_messages", &labels).set(ack_pending as f64);
            last_info = Some(Instant::now());
        }
        if live.state() == PipelineState::Paused {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = stop.changed() => {}
            }
            continue;
        }
        let pulled = tokio::select! {
            pulled = pull(&consumer, max_messages, linger) => pulled?,
            _ = stop.changed() => return Ok(()),
        };
        if pulled.is_empty() {
            continue;
        }
        epoch(
            live,
            &client,
            &mut ledger,
            sink.as_ref(),
            &name,
            pulled,
            ack_wait,
        )
        .await?;
    }
}

/// Pulls up to `max` messages, waiting at most `wait` for them.
async fn pull(consumer: &PullConsumer, max: usize, wait: Duration) -> Result<Vec<Pulled>> {
    let mut batch = consumer
        .batch()
        .max_messages(max)
        .expires(wait)
        .messages()
        .await
        .context("pulling messages")?;
    let mut pulled = Vec::new();
    while let Some(message) = batch.next().await {
        let message = match message {
            Ok(message) => message,
            // A status (no messages, request timeout) ends the batch.
            Err(error) => {
                tracing::debug!(%error, "the pull ended");
                break;
            }
        };
        let info = message
            .info()
            .map_err(|e| anyhow::anyhow!("a message without JetStream metadata: {e}"))?;
        let sequence = info.stream_sequence;
        let published_ns = info.published.unix_timestamp_nanos();
        let reply = message.message.reply.clone();
        let (message, acker) = message.split();
        pulled.push(Pulled {
            received: Received {
                sequence,
                payload: message.payload,
            },
            acker,
            reply,
            published_ns,
        });
    }
    Ok(pulled)
}

/// Commits one epoch of `pulled` messages, then acknowledges them.
async fn epoch(
    live: &Arc<LivePipeline>,
    client: &async_nats::Client,
    ledger: &mut Ledger,
    sink: Option<&NatsSink>,
    name: &Arc<str>,
    pulled: Vec<Pulled>,
    ack_wait: Duration,
) -> Result<()> {
    let stateful = live.is_stateful();
    let mut fresh = pulled;
    loop {
        if stateful {
            // Epochs are computed on the state of every committed one.
            ledger.refresh().await?;
            apply_state(live, ledger).await?;
        }
        let (done, rest): (Vec<Pulled>, Vec<Pulled>) = fresh
            .into_iter()
            .partition(|p| ledger.is_committed(p.received.sequence));
        skip_committed(live, &done).await;
        fresh = rest;
        if fresh.is_empty() {
            return Ok(());
        }
        let part = live.next_part();
        let received: Vec<Received> = fresh.iter().map(|p| p.received.clone()).collect();
        let sequences = SeqSet::from_sequences(received.iter().map(|r| r.sequence));
        let decoded = crate::nats::decode(live.source(), name, &received)?;
        let (keepalive, keepalive_stop) = progress(client, &fresh, ack_wait);
        let prepare = {
            let live = live.clone();
            let part = part.clone();
            let sink = sink.cloned();
            tokio::task::spawn_blocking(move || live.prepare_epoch(&part, decoded, sink.as_ref()))
        };
        let prepared = prepare.await.context("an epoch panicked");
        let epoch = match prepared {
            Ok(Ok(epoch)) => epoch,
            Ok(Err(error)) | Err(error) => {
                let _ = keepalive_stop.send(());
                let _ = keepalive.await;
                // Redelivered after a pause; what a NATS sink already
                // published is deduplicated then.
                let message = format!("{error:#}");
                tracing::error!(pipeline = %live.name, part, error = %message, "an epoch failed; its messages will be redelivered");
                live.set_stream_status(|s| s.last_error = Some(message));
                negative(fresh.iter().map(|p| &p.acker)).await;
                return Ok(());
            }
        };
        let mut claim = ledger.claim(&part, &sequences, epoch.staged.clone());
        if let Some(state) = &epoch.state {
            match ledger.publish_state(state).await {
                Ok(chunks) => claim.state = chunks,
                Err(error) => {
                    let _ = keepalive_stop.send(());
                    let _ = keepalive.await;
                    live.discard_epoch(epoch);
                    negative(fresh.iter().map(|p| &p.acker)).await;
                    return Err(error);
                }
            }
        }
        crate::crash::point("before-ledger-commit");
        let committed = ledger.commit(&claim).await;
        let _ = keepalive_stop.send(());
        let _ = keepalive.await;
        match committed? {
            Commit::Committed(claimed) => {
                crate::crash::point("after-ledger-commit");
                let first_published = fresh.iter().map(|p| p.published_ns).min().unwrap_or(0);
                let now_ns = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as i128)
                    .unwrap_or(0);
                let latency = Duration::from_nanos((now_ns - first_published).max(0) as u64);
                let duplicates = epoch.published.map_or(0, |p| p.duplicates);
                let count = fresh.len() as u64;
                let committer = live.clone();
                tokio::task::spawn_blocking(move || {
                    committer.commit_epoch(epoch, latency, claimed)
                })
                .await
                .context("a commit panicked")??;
                crate::crash::point("after-commit");
                live.set_stream_status(|s| {
                    s.epochs += 1;
                    s.messages += count;
                    s.published_duplicates += duplicates;
                });
                let half = fresh.len() / 2;
                acknowledge(fresh[..half].iter().map(|p| &p.acker)).await;
                crate::crash::point("mid-ack");
                acknowledge(fresh[half..].iter().map(|p| &p.acker)).await;
                crate::crash::point("after-ack");
                return Ok(());
            }
            Commit::Overlap(_) => {
                // The overlap is in the ledger's committed set: the loop
                // leaves it out.
                live.discard_epoch(epoch);
                live.set_stream_status(|s| s.overlaps += 1);
            }
            Commit::Stale => {
                live.discard_epoch(epoch);
                live.set_stream_status(|s| s.stale_epochs += 1);
                metrics::counter!("weir_stream_stale_epochs_total").increment(1);
            }
        }
    }
}

/// Applies the state of the claims the ledger read since the last call
/// (other workers' epochs, and this worker's own from before a crash), in
/// ledger order; claims this worker applied already are skipped.
///
/// # Errors
/// A claim's state cannot be read back from the ledger or applied.
async fn apply_state(live: &Arc<LivePipeline>, ledger: &mut Ledger) -> Result<()> {
    let claims = ledger.take_unapplied();
    if claims.is_empty() {
        return Ok(());
    }
    let position = {
        let live = live.clone();
        tokio::task::spawn_blocking(move || live.ledger_position())
            .await
            .context("reading the ledger position panicked")??
    };
    let mut states = Vec::new();
    for (sequence, claim) in claims {
        if claim.after.is_none() || sequence <= position {
            continue;
        }
        let bytes = ledger.fetch_state(&claim).await?;
        states.push((sequence, claim.after, bytes));
    }
    if states.is_empty() {
        return Ok(());
    }
    let count = states.len() as u64;
    let applying = live.clone();
    tokio::task::spawn_blocking(move || applying.apply_claims(states))
        .await
        .context("applying the ledger's state panicked")??;
    live.set_stream_status(|s| s.applied_claims += count);
    Ok(())
}

/// Acknowledges messages some epoch already committed (redeliveries),
/// without processing them, and counts them.
async fn skip_committed(live: &LivePipeline, done: &[Pulled]) {
    if done.is_empty() {
        return;
    }
    let count = done.len() as u64;
    live.set_stream_status(|s| s.skipped_committed += count);
    metrics::counter!("weir_stream_skipped_committed_total").increment(count);
    acknowledge(done.iter().map(|p| &p.acker)).await;
}

/// Sends progress acknowledgements for `pulled` every third of `ack_wait`
/// until told to stop, so that a long epoch keeps its messages.
fn progress(
    client: &async_nats::Client,
    pulled: &[Pulled],
    ack_wait: Duration,
) -> (
    tokio::task::JoinHandle<()>,
    tokio::sync::oneshot::Sender<()>,
) {
    let (tx, mut rx) = tokio::sync::oneshot::channel();
    let replies: Vec<async_nats::Subject> = pulled.iter().filter_map(|p| p.reply.clone()).collect();
    let client = client.clone();
    let every = ack_wait / 3;
    let handle = tokio::spawn(async move {
        loop {
            tokio::select! {
                () = tokio::time::sleep(every) => {
                    // `+WPI`: work in progress, the ack_wait starts again.
                    let progress = bytes::Bytes::from(AckKind::Progress);
                    for reply in &replies {
                        let _ = client.publish(reply.clone(), progress.clone()).await;
                    }
                    let _ = client.flush().await;
                }
                _ = &mut rx => return,
            }
        }
    });
    (handle, tx)
}

/// Double-acknowledges every message (the server confirms each
/// acknowledgement). A failure is only logged: the message is redelivered
/// and then acknowledged as committed.
async fn acknowledge<'a>(ackers: impl Iterator<Item = &'a Acker>) {
    let mut pending = FuturesUnordered::new();
    let mut failed = 0u64;
    for acker in ackers {
        pending.push(acker.double_ack());
        if pending.len() >= ACKS_IN_FLIGHT && matches!(pending.next().await, Some(Err(_))) {
            failed += 1;
        }
    }
    while let Some(result) = pending.next().await {
        if result.is_err() {
            failed += 1;
        }
    }
    if failed > 0 {
        metrics::counter!("weir_stream_ack_failures_total").increment(failed);
        tracing::warn!(
            failed,
            "acknowledgements failed; those messages will be redelivered and recognized as committed"
        );
    }
}

/// Asks for redelivery of every message after a pause of a second.
async fn negative<'a>(ackers: impl Iterator<Item = &'a Acker>) {
    let mut pending = FuturesUnordered::new();
    for acker in ackers {
        pending.push(acker.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))));
        if pending.len() >= ACKS_IN_FLIGHT {
            pending.next().await;
        }
    }
    while pending.next().await.is_some() {}
}
