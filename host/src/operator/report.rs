//! An operator's counts, for the run report and the service's status (a
//! leaf module: the report and the config read it without the engine).

use serde::Serialize;

use super::config::OperatorKind;

/// One operator's counts, for the run report and the service's status;
/// also the state size of a stateful plugin stage (with no `kind` and
/// only the state counts).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct OperatorReport {
    /// The operator's name.
    pub name: String,
    /// `dedupe`, `aggregate` or `latest`; none for a plugin stage's keyed state.
    pub kind: Option<OperatorKind>,
    /// Rows it received.
    pub records_in: u64,
    /// Rows it passed on (aggregate: result rows).
    pub records_out: u64,
    /// Rows it quarantined (late rows, missing event times, duplicates
    /// with `duplicates = "quarantine"`, batches over the state quota).
    pub quarantined: u64,
    /// Rows left out on purpose: duplicates (dedupe), rows with no table
    /// row (latest with `missing = "drop"`).
    pub dropped: u64,
    /// Rows that arrived after their window closed.
    pub late: u64,
    /// Keys in its state now.
    pub state_keys: u64,
    /// Approximate bytes of its state now.
    pub state_bytes: u64,
}
