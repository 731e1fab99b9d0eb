//! A submission's acknowledgement: how many of its records went where, and
//! why some were quarantined. Built by the live pipeline as pieces commit,
//! recorded by the delivery log for idempotency keys.

use serde::{Deserialize, Serialize};

use crate::quarantine::Reasons;

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
    pub(super) fn add_quarantined(&mut self, reasons: &Reasons) {
        self.quarantined += reasons.len() as u64;
        let mut messages = reasons.messages();
        for (cause, rows) in reasons.causes() {
            // Counted in place: an entry is made (and its strings copied)
            // once per kind, not once per quarantined record.
            let rule = cause.rule.as_deref();
            let first = messages.next().map_or("", |m| m.text());
            match self.entry(&cause.stage, &cause.error_kind, rule) {
                Some(entry) => entry.count += u64::from(rows),
                None => self.reasons.push(ReasonCount {
                    stage: cause.stage.to_string(),
                    error_kind: cause.error_kind.to_string(),
                    rule: rule.map(str::to_string),
                    count: u64::from(rows),
                    example: first.to_string(),
                }),
            }
            // The run's other rows' messages.
            for _ in 1..rows {
                messages.next();
            }
        }
    }

    /// The entry of `stage`, `error_kind` and `rule`, if counted yet.
    fn entry(
        &mut self,
        stage: &str,
        error_kind: &str,
        rule: Option<&str>,
    ) -> Option<&mut ReasonCount> {
        self.reasons
            .iter_mut()
            .find(|r| r.stage == stage && r.error_kind == error_kind && r.rule.as_deref() == rule)
    }

    /// Adds `reason`'s count to the entry of the same stage, kind and rule.
    fn count_reason(&mut self, reason: ReasonCount) {
        match self.entry(&reason.stage, &reason.error_kind, reason.rule.as_deref()) {
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::quarantine::Reason;

    fn reason(stage: &Arc<str>, rule: Option<&str>, message: &str) -> Reason {
        Reason {
            stage: stage.clone(),
            plugin: "builtin:check".into(),
            plugin_sha256: "00".into(),
            error_kind: "validation".into(),
            rule: rule.map(Arc::from),
            message: message.into(),
        }
    }

    #[test]
    fn reasons_are_counted_per_stage_kind_and_rule_with_their_first_example() {
        let (check, other): (Arc<str>, Arc<str>) = ("check".into(), "other".into());
        let mut ack = Ack::default();
        ack.add_quarantined(
            &[
                reason(&check, Some("a"), "x = 1"),
                reason(&check, Some("b"), "y = 2"),
                reason(&check, Some("a"), "x = 3"),
                reason(&other, Some("a"), "x = 4"),
                reason(&check, None, "trapped"),
            ]
            .into_iter()
            .collect(),
        );
        let mut more = Ack::default();
        more.add_quarantined(&[reason(&check, Some("a"), "x = 5")].into_iter().collect());
        ack.merge(more);
        let ack = ack.finish();
        assert_eq!(ack.quarantined, 6);
        let counts: Vec<(&str, Option<&str>, u64, &str)> = ack
            .reasons
            .iter()
            .map(|r| (&*r.stage, r.rule.as_deref(), r.count, &*r.example))
            .collect();
        assert_eq!(
            counts,
            [
                ("check", Some("a"), 3, "x = 1"),
                ("check", Some("b"), 1, "y = 2"),
                ("other", Some("a"), 1, "x = 4"),
                ("check", None, 1, "trapped"),
            ]
        );
    }
}
