//! The NATS JetStream sink of a served stream pipeline: each output row is
//! published as one JSON message to a subject (templated from the row's
//! columns), with a `Nats-Msg-Id` derived from the source position of the
//! row, and the epoch commits only once the server acknowledged every
//! message.
//!
//! **Exactly once.** The message id of an output row is
//! `STREAM:SEQUENCE:K`: the source stream, the stream sequence of the
//! message the row came from, and the row's index among that message's
//! output rows. An epoch replayed after a crash (or by another worker,
//! after a redelivery) publishes the same ids, and the server drops them
//! as duplicates within the output stream's `duplicate_window` (default
//! 2 minutes; keep it above the consumer's `ack_wait` plus a restart). The
//! duplicates the server reported are counted
//! (`weir_nats_publish_duplicates_total`).

use std::future::IntoFuture;
use std::sync::Arc;

use anyhow::{Context, Result};
use arrow::record_batch::RecordBatch;
use async_nats::jetstream;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;

use crate::nats::settings::SinkSettings;
use crate::nats::subject::SubjectTemplate;

/// Acknowledgements awaited at once while publishing.
const IN_FLIGHT: usize = 4096;

/// What a publish did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Published {
    /// Messages the server stored.
    pub stored: u64,
    /// Messages the server dropped as duplicates of an earlier publish.
    pub duplicates: u64,
}

/// A connected NATS sink.
#[derive(Clone)]
pub struct NatsSink {
    context: jetstream::Context,
    template: Arc<SubjectTemplate>,
}

impl std::fmt::Debug for NatsSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsSink").finish_non_exhaustive()
    }
}

impl NatsSink {
    /// Connects to the sink's servers.
    ///
    /// # Errors
    /// A malformed subject template, or no server reachable.
    pub async fn connect(settings: &SinkSettings, name: &str) -> Result<NatsSink> {
        let template = SubjectTemplate::parse(&settings.subject)?;
        let client = crate::nats::connect(&settings.servers, name).await?;
        Ok(NatsSink {
            context: jetstream::new(client),
            template: Arc::new(template),
        })
    }

    /// Publishes every row of `batch` as a JSON object, row `i` with
    /// message id `ids[i]`, and waits for every acknowledgement.
    ///
    /// # Errors
    /// A subject no stream captures, a refused or unacknowledged publish
    /// (the epoch then fails and its messages are redelivered; what was
    /// published is deduplicated on the replay).
    pub async fn publish(&self, batch: &RecordBatch, ids: &[String]) -> Result<Published> {
        let subjects = self.template.subjects(batch)?;
        let mut json = Vec::with_capacity(batch.num_rows() * 64);
        {
            let mut writer = arrow::json::LineDelimitedWriter::new(&mut json);
            writer.write(batch)?;
            writer.finish()?;
        }
        let json = bytes::Bytes::from(json);
        let mut published = Published::default();
        let mut pending = FuturesUnordered::new();
        let mut start = 0;
        for (row, subject) in subjects.into_iter().enumerate() {
            let end = start
                + memchr::memchr(b'\n', &json[start..]).context("a row without its JSON line")?;
            let payload = json.slice(start..end);
            start = end + 1;
            let message = jetstream::message::PublishMessage::build()
                .payload(payload)
                .message_id(&ids[row]);
            let ack = self
                .context
                .send_publish(subject.clone(), message)
                .await
                .with_context(|| format!("publishing to `{subject}`"))?;
            pending.push(ack.into_future());
            if pending.len() >= IN_FLIGHT {
                count(&mut published, pending.next().await)?;
            }
        }
        while let Some(ack) = pending.next().await {
            count(&mut published, Some(ack))?;
        }
        if published.duplicates > 0 {
            metrics::counter!("weir_nats_publish_duplicates_total").increment(published.duplicates);
        }
        Ok(published)
    }
}

fn count(
    published: &mut Published,
    ack: Option<Result<jetstream::publish::PublishAck, jetstream::context::PublishError>>,
) -> Result<()> {
    match ack {
        None => Ok(()),
        Some(Ok(ack)) => {
            if ack.duplicate {
                published.duplicates += 1;
            } else {
                published.stored += 1;
            }
            Ok(())
        }
        Some(Err(e)) => Err(anyhow::Error::new(e).context("a publish was not acknowledged")),
    }
}
