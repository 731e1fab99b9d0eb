//! NATS JetStream: what the stream source ([`crate::serve::stream`]), the
//! stream sink ([`crate::sink::nats`]) and the shared commit ledger
//! ([`crate::serve::ledger`]) have in common: their settings, the
//! connection, and how a batch of messages becomes rows.
//!
//! A served pipeline whose `[source] format = "nats"` binds a **durable
//! pull consumer** of a JetStream stream (`AckPolicy::Explicit`). Any
//! number of `weir serve` processes, on any machines, may bind the same
//! consumer: the server hands each pull request the next messages, so the
//! workers split the stream between them. Each micro-batch (epoch) of
//! messages is committed through the ledger before its
//! messages are acknowledged, which is what keeps the output exactly once
//! when a message is redelivered to another worker (docs/streaming.md).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use arrow::array::{ArrayRef, Int64Array, StringArray};
use arrow::record_batch::RecordBatch;

use crate::config::SourceFormat;
use crate::reason::{Reason, Reasons};
use crate::source::{Source, SourceBatch, SourceItem};

pub mod settings;
pub mod subject;

/// Connects to `servers`, reconnecting forever after a lost connection
/// (buffered publishes and acknowledgements are sent on reconnect;
/// anything not acknowledged in time is redelivered by the server).
///
/// # Errors
/// No server reachable within 5 s, or a malformed URL.
pub async fn connect(servers: &[String], name: &str) -> Result<async_nats::Client> {
    let addresses = servers
        .iter()
        .map(|s| {
            s.parse::<async_nats::ServerAddr>()
                .with_context(|| format!("`{s}` is not a NATS server URL"))
        })
        .collect::<Result<Vec<_>>>()?;
    async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(Duration::from_secs(5))
        .max_reconnects(None)
        .connect(addresses)
        .await
        .with_context(|| format!("connecting to NATS at {}", servers.join(", ")))
}

/// One message of an epoch: its stream sequence and payload.
#[derive(Debug, Clone)]
pub struct Received {
    /// Stream sequence: the message's position in the stream.
    pub sequence: u64,
    /// Payload bytes.
    pub payload: bytes::Bytes,
}

/// An epoch's messages as source items, and the stream sequence of each
/// input row.
#[derive(Debug)]
pub struct Decoded {
    /// At most one batch of the source schema (the messages that parsed,
    /// in order) and the rejected messages (`record_number` is the stream
    /// sequence, `text` the payload).
    pub items: Vec<SourceItem>,
    /// For row `i` of the batch, its message's stream sequence.
    pub sequences: Vec<u64>,
}

/// Decodes `messages` into `source`'s schema. A payload that does not
/// parse, or is empty, becomes a rejected row naming its stream
/// sequence; nothing is dropped. `name` goes to the quarantine's
/// `source_file` (`nats:STREAM`).
///
/// # Errors
/// Only an internal failure to build the batch.
pub fn decode(source: &Source, name: &Arc<str>, messages: &[Received]) -> Result<Decoded> {
    // One message per line: a JSON value's own line breaks are
    // whitespace, so they can be replaced without changing its meaning.
    let mut body = Vec::new();
    let mut lines: Vec<u64> = Vec::new();
    let mut empty: Vec<u64> = Vec::new();
    for message in messages {
        if message.payload.iter().all(u8::is_ascii_whitespace) {
            empty.push(message.sequence);
            continue;
        }
        body.extend(
            message
                .payload
                .iter()
                .map(|&b| if b == b'\n' || b == b'\r' { b' ' } else { b }),
        );
        body.push(b'\n');
        lines.push(message.sequence);
    }
    let mut batches = Vec::new();
    let mut rejected_lines = std::collections::HashSet::new();
    let mut items = Vec::new();
    if !lines.is_empty() {
        let decoded = source.decode_bytes(name.clone(), SourceFormat::Jsonl, body.into())?;
        for item in decoded.items {
            match item {
                SourceItem::Batch(batch) => batches.push(batch.batch),
                SourceItem::Rejected {
                    file,
                    rows,
                    reasons,
                } => {
                    let numbers = rows
                        .column_by_name("record_number")
                        .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
                        .context("rejected rows without a record_number")?;
                    let sequences: Vec<i64> = numbers
                        .values()
                        .iter()
                        .map(|&line| {
                            rejected_lines.insert(line as usize);
                            lines[line as usize - 1] as i64
                        })
                        .collect();
                    let mut renumbered = Reasons::default();
                    for ((cause, message), sequence) in reasons.iter().zip(&sequences) {
                        // "line N …" numbers the epoch's lines, which mean
                        // nothing outside it: the sequence does.
                        let message = message
                            .strip_prefix("line ")
                            .and_then(|rest| rest.split_once(' '))
                            .map_or(message, |(_, rest)| rest);
                        renumbered.push(
                            cause,
                            cause.rule.as_ref(),
                            &format!("stream sequence {sequence}: {message}"),
                        );
                    }
                    let mut columns = rows.columns().to_vec();
                    let index = rows.schema().index_of("record_number")?;
                    columns[index] = Arc::new(Int64Array::from(sequences)) as ArrayRef;
                    items.push(SourceItem::Rejected {
                        file,
                        rows: RecordBatch::try_new(rows.schema(), columns)?,
                        reasons: renumbered,
                    });
                }
            }
        }
    }
    if !empty.is_empty() {
        items.push(empty_payloads(name, &empty)?);
    }
    let sequences: Vec<u64> = lines
        .iter()
        .enumerate()
        .filter(|(i, _)| !rejected_lines.contains(&(i + 1)))
        .map(|(_, &sequence)| sequence)
        .collect();
    if !batches.is_empty() {
        let schema = batches[0].schema();
        let batch = arrow::compute::concat_batches(&schema, &batches)?;
        anyhow::ensure!(
            batch.num_rows() == sequences.len(),
            "decoded {} rows from {} parsed messages",
            batch.num_rows(),
            sequences.len()
        );
        items.insert(
            0,
            SourceItem::Batch(SourceBatch {
                batch,
                file: name.clone(),
                state: None,
            }),
        );
    }
    Ok(Decoded { items, sequences })
}

/// Rejected rows for messages with no payload.
fn empty_payloads(name: &Arc<str>, sequences: &[u64]) -> Result<SourceItem> {
    let rows = RecordBatch::try_from_iter([
        (
            "source_file",
            Arc::new(StringArray::from(vec![name.as_ref(); sequences.len()])) as ArrayRef,
        ),
        (
            "record_number",
            Arc::new(Int64Array::from_iter_values(
                sequences.iter().map(|&s| s as i64),
            )),
        ),
        (
            "text",
            Arc::new(StringArray::from(vec![""; sequences.len()])),
        ),
    ])?;
    let reasons = sequences
        .iter()
        .map(|sequence| Reason {
            stage: Arc::from("source"),
            plugin: Arc::from(crate::source::NATIVE_READER),
            plugin_sha256: Arc::from(""),
            error_kind: "parse".into(),
            rule: None,
            message: format!("stream sequence {sequence}: the message has no payload").into(),
        })
        .collect();
    Ok(SourceItem::Rejected {
        file: name.clone(),
        rows,
        reasons,
    })
}
