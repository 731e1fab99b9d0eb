//! The settings of the NATS connectors, as written in a pipeline file:
//! `[source.nats]` and `[sink.nats]` (checked by [`crate::config`]).

use serde::Deserialize;

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
