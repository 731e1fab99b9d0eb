//! Why rows were rejected: what the quarantine stores beside each row,
//! given by the stage, the source reader or the sink's destination that
//! refused them.

use std::sync::Arc;

/// Why a group of rows was rejected: everything but the row itself.
#[derive(Debug, Clone)]
pub struct Reason {
    /// The stage that rejected the rows.
    pub stage: Arc<str>,
    /// The stage's plugin reference.
    pub plugin: Arc<str>,
    /// SHA-256 of the plugin component.
    pub plugin_sha256: Arc<str>,
    /// `validation` or a plugin error kind.
    pub error_kind: Arc<str>,
    /// Failed rule ids, comma-separated (validation only); shared by the
    /// rows one rule failed alone.
    pub rule: Option<Arc<str>>,
    /// Human-readable explanation. Shared: the rows of one failed call
    /// (up to a whole batch) hold one copy of its message, which may carry
    /// the plugin's stderr (up to about 4 KiB).
    pub message: Arc<str>,
}
