//! A submission's acknowledgement: how many of its records went where, and
//! why some were quarantined. Built by the live pipeline as pieces commit,
//! recorded by the delivery log for idempotency keys.

use serde::{Deserialize, Serialize};

use crate::quarantine::Reason;

/// How many of a submission's records went where, and why some were
/// quarantined. `received = written + filtered + quarantined`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Ack {
    /// Records in the submission (parsed or not).
    pub received: u64,
    /// Records taken by the pipeline: written or filtered on purpose.
    pub accepted: u64,
    /// Records written to the sink.
    pub written: u64,
    /// Records a transform left out on purpose.
    pub filtered: u64,
    /// Records written to the quarantine.
    pub quarantined: u64,
    /// Quarantine reasons with how many records each, most frequent first
    /// (at most [`MAX_REASONS`] kinds).
    pub reasons: Vec<ReasonCount>,
    /// JSON record fields that were not columns of the source schema
    /// (dropped, or quarantined with their record, per the source's
    /// `unknown_fields`).
    #[serde(default)]
    pub unknown_fields: u64,
}

/// Distinct reasons listed in an [`Ack`].
pub const MAX_REASONS: usize = 20;

/// One kind of quarantine reason and how many records had it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReasonCount {
    /// The stage that rejected (`source` for records that did not parse).
    pub stage: String,
    /// `validation`, `parse` or a plugin error kind.
    pub error_kind: String,
    /// The failed rule ids, for validation.
    pub rule: Option<String>,
    /// How many records.
    pub count: u64,
    /// One of their messages.
    pub example: String,
}

impl Ack {
    pub(super) fn add_quarantined(&mut self, reasons: &[Reason]) {
        self.quarantined += reasons.len() as u64;
        for reason in reasons {
            self.count_reason(ReasonCount {
                stage: reason.stage.to_string(),
                error_kind: reason.error_kind.to_string(),
                rule: reason.rule.as_deref().map(str::to_string),
                count: 1,
                example: reason.message.clone(),
            });
        }
    }

    /// Adds `reason`'s count to the entry of the same stage, kind and rule.
    fn count_reason(&mut self, reason: ReasonCount) {
        match self.reasons.iter_mut().find(|r| {
            r.stage == reason.stage && r.error_kind == reason.error_kind && r.rule == reason.rule
        }) {
            Some(entry) => entry.count += reason.count,
            None => self.reasons.push(reason),
        }
    }

    pub(super) fn merge(&mut self, other: Ack) {
        self.received += other.received;
        self.accepted += other.accepted;
        self.written += other.written;
        self.filtered += other.filtered;
        self.quarantined += other.quarantined;
        for reason in other.reasons {
            self.count_reason(reason);
        }
    }

    pub(super) fn finish(mut self) -> Ack {
        self.reasons.sort_by_key(|r| std::cmp::Reverse(r.count));
        self.reasons.truncate(MAX_REASONS);
        self
    }
}
