//! What can go wrong in one plugin call, as distinct, readable kinds.

use wasmtime::Trap;

use super::limits::{Limits, MemoryLimitExceeded, PoolExhausted};
use crate::bindings::types;

/// How wasmtime words a spent host-call copy budget.
const HOSTCALL_FUEL_EXHAUSTED: &str = "fuel allocated for hostcalls has been exhausted";

/// A failed plugin call. Every kind costs only the batch in flight: its rows
/// are quarantined with [`PluginError::kind`] and the message, the instance
/// is discarded, and the next batch gets a fresh one.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PluginError {
    /// The call used all of its `fuel_per_batch`.
    #[error("fuel exhausted: the call used all {fuel_per_batch} fuel units of fuel_per_batch")]
    FuelExhausted {
        /// The stage's `fuel_per_batch`.
        fuel_per_batch: u64,
    },
    /// The call ran past its `timeout_ms` deadline.
    #[error("deadline exceeded: the call ran longer than timeout_ms = {timeout_ms}")]
    Timeout {
        /// The stage's `timeout_ms`.
        timeout_ms: u64,
    },
    /// The plugin tried to grow its linear memory past `max_memory_bytes`.
    #[error("memory limit: {0}")]
    MemoryLimit(String),
    /// The result's buffers exceed `max_output_bytes`.
    #[error(
        "output too large: {bytes} bytes of column buffers, over max_output_bytes = {limit_bytes}"
    )]
    OutputTooLarge {
        /// Size of the result's buffers, in bytes.
        bytes: u64,
        /// The stage's `max_output_bytes`.
        limit_bytes: u64,
    },
    /// The result was so far over `max_output_bytes` that the host stopped
    /// copying it out of the plugin (see [`Limits::copy_budget_bytes`]).
    #[error(
        "output too large: the result is over {copied_bytes} bytes, far over max_output_bytes = {limit_bytes}; the host stopped copying it"
    )]
    OutputCopyStopped {
        /// Bytes the host was willing to copy (the copy budget).
        copied_bytes: u64,
        /// The stage's `max_output_bytes`.
        limit_bytes: u64,
    },
    /// The plugin trapped (a panic, an `unreachable`, an out-of-bounds
    /// access...). The message includes what the plugin wrote to stderr.
    #[error("trap: {0}")]
    Trap(String),
    /// The result breaks the batch contract (lengths that disagree, invalid
    /// offsets or UTF-8, a schema the columns do not match...).
    #[error("malformed output: {0}")]
    MalformedOutput(String),
    /// The plugin returned an error on purpose.
    #[error("plugin error ({kind}): {message}")]
    Returned {
        /// The WIT `error` case: `invalid-config`, `invalid-input`, `parse`
        /// or `internal`.
        kind: &'static str,
        /// The plugin's message.
        message: String,
    },
    /// The call's writes would take the stage's keyed state past its
    /// `max_state_bytes` (`weir:plugin/state`).
    #[error("state quota: {0}")]
    StateQuota(String),
    /// The component could not be instantiated (a missing import, a trap in
    /// its start function...).
    #[error("instantiation failed: {0}")]
    Instantiate(String),
}

impl From<crate::columnar::MalformedBatch> for PluginError {
    fn from(error: crate::columnar::MalformedBatch) -> PluginError {
        PluginError::MalformedOutput(error.0)
    }
}

impl PluginError {
    /// A short, stable identifier of the kind, as written to the quarantine
    /// and the run report: `fuel_exhausted`, `timeout`, `memory_limit`,
    /// `output_too_large`, `trap`, `malformed_output`, `plugin_error`,
    /// `instantiate`.
    pub fn kind(&self) -> &'static str {
        match self {
            PluginError::FuelExhausted { .. } => "fuel_exhausted",
            PluginError::Timeout { .. } => "timeout",
            PluginError::MemoryLimit(_) => "memory_limit",
            PluginError::OutputTooLarge { .. } | PluginError::OutputCopyStopped { .. } => {
                "output_too_large"
            }
            PluginError::Trap(_) => "trap",
            PluginError::MalformedOutput(_) => "malformed_output",
            PluginError::Returned { .. } => "plugin_error",
            PluginError::Instantiate(_) => "instantiate",
            PluginError::StateQuota(_) => "state_quota",
        }
    }

    /// Turns a failed wasmtime call into its kind. `stderr` is what the
    /// plugin printed (a Rust panic message, for example).
    pub fn classify(error: &wasmtime::Error, limits: &Limits, stderr: &str) -> PluginError {
        if let Some(exceeded) = error.downcast_ref::<MemoryLimitExceeded>() {
            return PluginError::MemoryLimit(exceeded.to_string());
        }
        if let Some(exceeded) = error.downcast_ref::<super::state::StateQuotaExceeded>() {
            return PluginError::StateQuota(exceeded.to_string());
        }
        if let Some(exhausted) = error.downcast_ref::<PoolExhausted>() {
            return PluginError::MemoryLimit(exhausted.to_string());
        }
        if error
            .downcast_ref::<super::clock::SleepPastDeadline>()
            .is_some()
        {
            return PluginError::Timeout {
                timeout_ms: limits.timeout_ms,
            };
        }
        // wasmtime's copy budget for one host call (`Store::set_hostcall_fuel`,
        // set from `max_output_bytes`); its error type is private.
        if error
            .chain()
            .any(|e| e.to_string().contains(HOSTCALL_FUEL_EXHAUSTED))
        {
            return PluginError::OutputCopyStopped {
                copied_bytes: limits.copy_budget_bytes(),
                limit_bytes: limits.max_output_bytes,
            };
        }
        match error.downcast_ref::<Trap>() {
            Some(Trap::OutOfFuel) => PluginError::FuelExhausted {
                fuel_per_batch: limits.fuel_per_batch,
            },
            Some(Trap::Interrupt) => PluginError::Timeout {
                timeout_ms: limits.timeout_ms,
            },
            _ => {
                let stderr = stderr.trim();
                let detail = head(&error.root_cause().to_string(), MAX_MESSAGE_BYTES);
                PluginError::Trap(if stderr.is_empty() {
                    detail
                } else {
                    format!(
                        "{detail}; plugin stderr: {}",
                        tail(stderr, MAX_STDERR_BYTES)
                    )
                })
            }
        }
    }

    /// The returned WIT error as a [`PluginError::Returned`].
    pub fn returned(error: types::Error) -> PluginError {
        let (kind, message) = match error {
            types::Error::InvalidConfig(m) => ("invalid-config", m),
            types::Error::InvalidInput(m) => ("invalid-input", m),
            types::Error::Parse(m) => ("parse", m),
            types::Error::Internal(m) => ("internal", m),
        };
        PluginError::Returned {
            kind,
            message: head(&message, MAX_MESSAGE_BYTES),
        }
    }
}

/// Most bytes of a plugin's own message (a returned error, a trap's
/// description) kept in an error: 4 KiB. The rest is cut and counted, so a
/// plugin cannot make every quarantined row carry megabytes.
pub const MAX_MESSAGE_BYTES: usize = 4096;

/// Most bytes of a plugin's stderr kept in a trap's message: its last 4 KiB
/// (a panic message comes last). What was cut is counted in the message.
pub const MAX_STDERR_BYTES: usize = 4096;

/// `text` cut to its first `max` bytes (on a character boundary), with a
/// note of how many bytes were cut.
pub fn head(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… [{} more bytes cut]", &text[..end], text.len() - end)
}

/// `text` cut to its last `max` bytes (on a character boundary), with a
/// note of how many bytes were cut before them.
pub fn tail(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("[{start} earlier bytes cut] …{}", &text[start..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_are_cut_on_character_boundaries_and_counted() {
        let text = "é".repeat(3000); // 6000 bytes
        let cut = head(&text, MAX_MESSAGE_BYTES);
        assert!(cut.ends_with("… [1904 more bytes cut]"), "{}", &cut[4000..]);
        let cut = tail(&text, MAX_STDERR_BYTES);
        assert!(
            cut.starts_with("[1904 earlier bytes cut] …é"),
            "{}",
            &cut[..40]
        );
        assert_eq!(head("short", 10), "short");
    }

    #[test]
    fn a_returned_error_message_is_capped() {
        let error = PluginError::returned(types::Error::Parse("x".repeat(40_000)));
        let PluginError::Returned { message, .. } = &error else {
            unreachable!()
        };
        assert!(message.len() < MAX_MESSAGE_BYTES + 64, "{}", message.len());
        assert!(message.ends_with("[35904 more bytes cut]"), "{message:.40}");
    }

    #[test]
    fn a_malformed_batch_is_a_malformed_output_failure() {
        let error = PluginError::from(crate::columnar::MalformedBatch("column `c`: bad".into()));
        assert_eq!(error.kind(), "malformed_output");
        assert_eq!(error.to_string(), "malformed output: column `c`: bad");
    }
}
