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
use serde::Deserialize;

use crate::config::SourceFormat;
use crate::reason::Reason;
use crate::source::{Source, SourceBatch, SourceItem};

/// The server used when `servers` is left out.
pub const DEFAULT_SERVER: &str = "nats://127.0.0.1:4222";

/// Default `ack_wait_s`: how long the server waits for an acknowledgement
/// before redelivering a message, in seconds (the server's own default).
pub const DEFAULT_ACK_WAIT_S: u64 = 30;

/// Default `ledger_stream`: the JetStream stream holding the commit ledger.
pub const DEFAULT_LEDGER_STREAM: &str = "WEIR_LEDGER";

/// Default `ledger_max_age_s`: how long a ledger record is kept, in
/// seconds (7 days). It must outlast the longest time a committed message
/// can stay unacknowledged (a worker that died between its commit and its
/// acknowledgements, until its messages are redelivered: `ack_wait_s`).
pub const DEFAULT_LEDGER_MAX_AGE_S: u64 = 7 * 24 * 3600;

fn default_servers() -> Vec<String> {
    vec![DEFAULT_SERVER.to_string()]
}
fn default_ack_wait_s() -> u64 {
    DEFAULT_ACK_WAIT_S
}
fn default_ledger_stream() -> String {
    DEFAULT_LEDGER_STREAM.to_string()
}
fn default_ledger_max_age_s() -> u64 {
    DEFAULT_LEDGER_MAX_AGE_S
}

/// How a message's payload becomes a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Payload {
    /// One JSON object per message, decoded into the source schema like a
    /// JSON Lines record (default).
    #[default]
    Json,
}

/// `[source.nats]`: the stream and durable consumer a served pipeline
/// reads (`[source] format = "nats"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSettings {
    /// Server URLs; the client reconnects to any of them. Default
    /// `["nats://127.0.0.1:4222"]`.
    #[serde(default = "default_servers")]
    pub servers: Vec<String>,
    /// The JetStream stream to read (it must exist).
    pub stream: String,
    /// The durable pull consumer's name; created (with this file's
    /// settings) when it does not exist. Every worker of the pipeline
    /// binds the same one.
    pub consumer: String,
    /// Only messages on this subject (wildcards allowed). Default: all of
    /// the stream's subjects.
    pub subject: Option<String>,
    /// `json` (default): one JSON object per message.
    #[serde(default)]
    pub payload: Payload,
    /// Seconds the server waits for an acknowledgement before it
    /// redelivers a message (to any worker). Default 30. Long epochs send
    /// progress acknowledgements every third of it.
    #[serde(default = "default_ack_wait_s")]
    pub ack_wait_s: u64,
    /// The stream holding the commit ledger; created when missing.
    /// Default `WEIR_LEDGER` (subjects `weir.ledger.>`).
    #[serde(default = "default_ledger_stream")]
    pub ledger_stream: String,
    /// How long ledger records are kept, in seconds. Default 604,800 (7 days).
    #[serde(default = "default_ledger_max_age_s")]
    pub ledger_max_age_s: u64,
}

/// `[sink.nats]`: where a served pipeline publishes its output rows
/// (`[sink] format = "nats"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkSettings {
    /// Server URLs. Default `["nats://127.0.0.1:4222"]`.
    #[serde(default = "default_servers")]
    pub servers: Vec<String>,
    /// The subject of each row; `{column}` is replaced by the row's value
    /// of that column (dots, spaces, `*` and `>` in it become `_`, a null
    /// becomes `_null`). Example: `flights.clean.{carrier}`. A JetStream
    /// stream must capture it (its duplicate window is what drops the
    /// republished rows of a replayed epoch).
    pub subject: String,
}

/// A whole-config check of the NATS settings, for `weir check`.
pub fn check_names(problems: &mut crate::config::Problems, settings: &SourceSettings) {
    for (key, value) in [
        ("source.nats.stream", &settings.stream),
        ("source.nats.consumer", &settings.consumer),
        ("source.nats.ledger_stream", &settings.ledger_stream),
    ] {
        if let Err(message) = check_token(value) {
            problems.add(key, message);
        }
    }
    if settings.servers.is_empty() {
        problems.add("source.nats.servers", "must name at least one server");
    }
    if settings.ack_wait_s == 0 {
        problems.add("source.nats.ack_wait_s", "must be at least 1");
    }
    if settings.ledger_max_age_s < settings.ack_wait_s * 10 {
        problems.add(
            "source.nats.ledger_max_age_s",
            format!(
                "{} s is too short: ledger records must outlive redeliveries (at least 10 × ack_wait_s = {} s)",
                settings.ledger_max_age_s,
                settings.ack_wait_s * 10
            ),
        );
    }
}

/// Whether `name` can be a stream or consumer name (and a subject token).
fn check_token(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| matches!(c, '.' | '*' | '>' | ' ' | '\t' | '/' | '\\') || c.is_control())
    {
        return Err(format!(
            "`{name}` holds {c:?}, which a JetStream name cannot"
        ));
    }
    Ok(())
}

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
                    let reasons = reasons
                        .into_iter()
                        .zip(&sequences)
                        .map(|(reason, sequence)| {
                            // "line N …" numbers the epoch's lines, which
                            // mean nothing outside it: the sequence does.
                            let message = reason
                                .message
                                .strip_prefix("line ")
                                .and_then(|rest| rest.split_once(' '))
                                .map_or(reason.message.as_str(), |(_, rest)| rest);
                            Reason {
                                message: format!("stream sequence {sequence}: {message}"),
                                ..reason
                            }
                        })
                        .collect();
                    let mut columns = rows.columns().to_vec();
                    let index = rows.schema().index_of("record_number")?;
                    columns[index] = Arc::new(Int64Array::from(sequences)) as ArrayRef;
                    items.push(SourceItem::Rejected {
                        file,
                        rows: RecordBatch::try_new(rows.schema(), columns)?,
                        reasons,
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
            message: format!("stream sequence {sequence}: the message has no payload"),
        })
        .collect();
    Ok(SourceItem::Rejected {
        file: name.clone(),
        rows,
        reasons,
    })
}
