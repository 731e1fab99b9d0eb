//! Why rows were rejected: what the quarantine stores beside each row,
//! given by the stage, the source reader or the sink's destination that
//! refused them.
//!
//! A group of rejected rows carries its reasons column-wise
//! ([`Reasons`]): the [`Cause`] as runs of rows that share it, the
//! messages as runs too (one shared text, or each row's own text in one
//! buffer). A bad day rejects millions of rows; one `Reason` struct per
//! row, six reference-counted strings each, cost more to build, hand
//! between threads and drop than writing the rows did.

use std::sync::Arc;

/// Why a group of rows was rejected: everything but the row itself. The
/// form in which connectors and operators say why; a group of them is kept
/// as [`Reasons`].
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

impl Reason {
    /// The reason without its message.
    pub fn cause(&self) -> Cause {
        Cause {
            stage: self.stage.clone(),
            plugin: self.plugin.clone(),
            plugin_sha256: self.plugin_sha256.clone(),
            error_kind: self.error_kind.clone(),
            rule: self.rule.clone(),
        }
    }
}

/// What the rows of a run share: a [`Reason`] but its message.
#[derive(Debug, Clone)]
pub struct Cause {
    /// The stage that rejected the rows.
    pub stage: Arc<str>,
    /// The stage's plugin reference.
    pub plugin: Arc<str>,
    /// SHA-256 of the plugin component.
    pub plugin_sha256: Arc<str>,
    /// `validation` or a plugin error kind.
    pub error_kind: Arc<str>,
    /// Failed rule ids, comma-separated (validation only).
    pub rule: Option<Arc<str>>,
}

impl Cause {
    /// The reason of a row with this cause and `message`.
    pub fn with_message(&self, message: Arc<str>) -> Reason {
        Reason {
            stage: self.stage.clone(),
            plugin: self.plugin.clone(),
            plugin_sha256: self.plugin_sha256.clone(),
            error_kind: self.error_kind.clone(),
            rule: self.rule.clone(),
            message,
        }
    }

    /// Whether `self` and `other` hold the same strings: the same
    /// allocations (the common case, checked first) or equal text.
    pub fn same(&self, other: &Cause) -> bool {
        let same = |a: &Arc<str>, b: &Arc<str>| Arc::ptr_eq(a, b) || a == b;
        same(&self.stage, &other.stage)
            && same(&self.plugin, &other.plugin)
            && same(&self.plugin_sha256, &other.plugin_sha256)
            && same(&self.error_kind, &other.error_kind)
            && match (&self.rule, &other.rule) {
                (Some(a), Some(b)) => same(a, b),
                (None, None) => true,
                _ => false,
            }
    }

    /// Whether `self` holds `other`'s allocations for all but the rule,
    /// and `rule` (by allocation): the test a builder makes per row.
    fn is(&self, other: &Cause, rule: Option<&Arc<str>>) -> bool {
        Arc::ptr_eq(&self.stage, &other.stage)
            && Arc::ptr_eq(&self.plugin, &other.plugin)
            && Arc::ptr_eq(&self.plugin_sha256, &other.plugin_sha256)
            && Arc::ptr_eq(&self.error_kind, &other.error_kind)
            && match (&self.rule, rule) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            }
    }
}

/// Consecutive rows' messages.
#[derive(Debug, Clone)]
enum Messages {
    /// `rows` rows with one shared text.
    Same { text: Arc<str>, rows: u32 },
    /// Each row's own text: row `i` is `text[ends[i - 1]..ends[i]]`
    /// (from 0 for the first).
    Each { text: String, ends: Vec<u32> },
}

/// Why each row of a group was rejected, column-wise: row `i`'s cause and
/// message. Built by [`Reasons::same`] (every row one reason),
/// [`Reasons::push`] (row by row, the strings copied into the group's
/// buffer) or collected from [`Reason`]s; read by [`Reasons::iter`] and
/// [`Reasons::causes`].
#[derive(Debug, Clone, Default)]
pub struct Reasons {
    /// Runs of rows with the same cause, in row order: (cause, rows).
    causes: Vec<(Cause, u32)>,
    /// Runs of rows' messages, in row order.
    messages: Vec<Messages>,
    rows: usize,
}

impl Reasons {
    /// `rows` rows, all rejected for `reason` (sharing its strings).
    pub fn same(reason: Reason, rows: usize) -> Reasons {
        let mut reasons = Reasons::default();
        reasons.push_same(reason, rows);
        reasons
    }

    /// Rows in the group.
    pub fn len(&self) -> usize {
        self.rows
    }

    /// Whether the group has no rows.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Appends `rows` rows rejected for `reason`.
    pub fn push_same(&mut self, reason: Reason, rows: usize) {
        if rows == 0 {
            return;
        }
        let count = u32::try_from(rows).expect("a group of rejected rows fits in u32");
        let cause = reason.cause();
        self.extend_cause(cause, count);
        match self.messages.last_mut() {
            Some(Messages::Same { text, rows }) if Arc::ptr_eq(text, &reason.message) => {
                *rows += count;
            }
            _ => self.messages.push(Messages::Same {
                text: reason.message,
                rows: count,
            }),
        }
        self.rows += rows;
    }

    /// Appends one row rejected for `cause` with `rule` (by allocation, as
    /// runs are told apart per row) and `message`, which is copied into
    /// the group's buffer: no allocation per row.
    pub fn push(&mut self, cause: &Cause, rule: Option<&Arc<str>>, message: &str) {
        match self.causes.last_mut() {
            Some((last, rows)) if last.is(cause, rule) => *rows += 1,
            _ => self.causes.push((
                Cause {
                    rule: rule.cloned(),
                    ..cause.clone()
                },
                1,
            )),
        }
        self.push_message(message);
        self.rows += 1;
    }

    fn push_message(&mut self, message: &str) {
        if !matches!(self.messages.last(), Some(Messages::Each { .. })) {
            self.messages.push(Messages::Each {
                text: String::new(),
                ends: Vec::new(),
            });
        }
        let Some(Messages::Each { text, ends }) = self.messages.last_mut() else {
            unreachable!("an Each run was just made last")
        };
        text.push_str(message);
        ends.push(u32::try_from(text.len()).expect("a group's messages fit in 4 GiB"));
    }

    fn extend_cause(&mut self, cause: Cause, rows: u32) {
        match self.causes.last_mut() {
            Some((last, count)) if last.same(&cause) => *count += rows,
            _ => self.causes.push((cause, rows)),
        }
    }

    /// Appends `other`'s rows after these.
    pub fn append(&mut self, other: Reasons) {
        for (cause, rows) in other.causes {
            self.extend_cause(cause, rows);
        }
        for messages in other.messages {
            match (self.messages.last_mut(), messages) {
                (
                    Some(Messages::Each { text, ends }),
                    Messages::Each {
                        text: more,
                        ends: more_ends,
                    },
                ) => {
                    let base = text.len() as u32;
                    text.push_str(&more);
                    ends.extend(more_ends.iter().map(|end| base + end));
                }
                (_, messages) => self.messages.push(messages),
            }
        }
        self.rows += other.rows;
    }

    /// The runs of rows with the same cause, in row order: each cause and
    /// how many rows have it.
    pub fn causes(&self) -> impl Iterator<Item = (&Cause, u32)> {
        self.causes.iter().map(|(cause, rows)| (cause, *rows))
    }

    /// Each row's message, in row order, with whether it is the first row
    /// of a run sharing that text (see [`Reasons::iter`]).
    pub fn messages(&self) -> impl Iterator<Item = Message<'_>> {
        self.messages.iter().flat_map(|run| {
            let rows: Box<dyn Iterator<Item = Message<'_>>> = match run {
                Messages::Same { text, rows } => {
                    Box::new((0..*rows).map(move |i| Message::Shared(text, i)))
                }
                Messages::Each { text, ends } => {
                    Box::new(ends.iter().scan(0usize, move |start, &end| {
                        let row = &text[*start..end as usize];
                        *start = end as usize;
                        Some(Message::Own(row))
                    }))
                }
            };
            rows
        })
    }

    /// Each row's cause and message, in row order.
    pub fn iter(&self) -> impl Iterator<Item = (&Cause, &str)> {
        self.causes
            .iter()
            .flat_map(|(cause, rows)| std::iter::repeat_n(cause, *rows as usize))
            .zip(self.messages().map(|m| m.text()))
    }

    /// For each of `selections` (indices into this group, any order,
    /// repeats allowed), the reasons of its rows in that order. The group
    /// is read once for all of them: `weir serve` splits a group by the
    /// requests its rows came in.
    ///
    /// # Panics
    /// A row out of range.
    pub fn select(&self, selections: &[&[u32]]) -> Vec<Reasons> {
        let all: Vec<(&Cause, Message<'_>)> = self
            .causes
            .iter()
            .flat_map(|(cause, rows)| std::iter::repeat_n(cause, *rows as usize))
            .zip(self.messages())
            .collect();
        selections
            .iter()
            .map(|rows| {
                let mut out = Reasons::default();
                for &row in *rows {
                    let (cause, message) = &all[row as usize];
                    match message {
                        Message::Shared(text, _) => {
                            out.push_same(cause.with_message(Arc::clone(text)), 1);
                        }
                        Message::Own(text) => out.push(cause, cause.rule.as_ref(), text),
                    }
                }
                out
            })
            .collect()
    }
}

/// One row's message in a [`Reasons`].
#[derive(Debug, Clone, Copy)]
pub enum Message<'a> {
    /// A text the rows of a run share (one failed call's error), with the
    /// row's position in that run.
    Shared(&'a Arc<str>, u32),
    /// The row's own text.
    Own(&'a str),
}

impl<'a> Message<'a> {
    /// The message's text.
    pub fn text(&self) -> &'a str {
        match self {
            Message::Shared(text, _) => text,
            Message::Own(text) => text,
        }
    }
}

impl FromIterator<Reason> for Reasons {
    /// One row per reason. Consecutive reasons with equal causes share one
    /// run; their messages are copied into the group's buffer unless they
    /// are one allocation.
    fn from_iter<I: IntoIterator<Item = Reason>>(reasons: I) -> Reasons {
        let mut out = Reasons::default();
        for reason in reasons {
            let shared = match out.messages.last() {
                Some(Messages::Same { text, .. }) => Arc::ptr_eq(text, &reason.message),
                _ => false,
            };
            // A message shared with other rows (a failed call's) stays
            // shared, not copied per row.
            if shared || Arc::strong_count(&reason.message) > 1 {
                out.push_same(reason, 1);
            } else {
                out.extend_cause(reason.cause(), 1);
                out.push_message(&reason.message);
                out.rows += 1;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(stage: &Arc<str>, rule: Option<&str>, message: &str) -> Reason {
        Reason {
            stage: stage.clone(),
            plugin: Arc::from("builtin:check"),
            plugin_sha256: Arc::from("ab"),
            error_kind: Arc::from("validation"),
            rule: rule.map(Arc::from),
            message: Arc::from(message),
        }
    }

    fn rows(reasons: &Reasons) -> Vec<(String, Option<String>, String)> {
        reasons
            .iter()
            .map(|(cause, message)| {
                (
                    cause.stage.to_string(),
                    cause.rule.as_deref().map(str::to_string),
                    message.to_string(),
                )
            })
            .collect()
    }

    fn row(stage: &str, rule: Option<&str>, message: &str) -> (String, Option<String>, String) {
        (
            stage.to_string(),
            rule.map(str::to_string),
            message.to_string(),
        )
    }

    /// Shared, pushed, collected and appended rows read back in order,
    /// with their causes as runs.
    #[test]
    fn rows_read_back_in_order_with_causes_as_runs() {
        let check: Arc<str> = Arc::from("check");
        let mut reasons = Reasons::same(reason(&check, None, "the call trapped"), 3);
        let template = reason(&check, None, "").cause();
        let rule: Arc<str> = Arc::from("range");
        reasons.push(&template, Some(&rule), "x = 1");
        reasons.push(&template, Some(&rule), "x = 200");
        reasons.push(&template, None, "");
        let collected: Reasons = vec![
            reason(&Arc::from("source"), None, "bad quote"),
            reason(&Arc::from("source"), None, "too few fields"),
        ]
        .into_iter()
        .collect();
        reasons.append(collected);
        assert_eq!(reasons.len(), 8);
        assert_eq!(
            rows(&reasons),
            [
                row("check", None, "the call trapped"),
                row("check", None, "the call trapped"),
                row("check", None, "the call trapped"),
                row("check", Some("range"), "x = 1"),
                row("check", Some("range"), "x = 200"),
                row("check", None, ""),
                row("source", None, "bad quote"),
                row("source", None, "too few fields"),
            ]
        );
        let runs: Vec<u32> = reasons.causes().map(|(_, rows)| rows).collect();
        assert_eq!(runs, [3, 2, 1, 2], "equal causes share a run");
        let firsts: Vec<bool> = reasons
            .messages()
            .map(|m| matches!(m, Message::Shared(_, 0) | Message::Own(_)))
            .collect();
        assert_eq!(
            firsts,
            [true, false, false, true, true, true, true, true],
            "a shared message says which row of its run each is"
        );
    }

    /// A selection picks rows in its order, repeats included, keeping
    /// shared messages shared.
    #[test]
    fn a_selection_picks_rows_in_its_order() {
        let check: Arc<str> = Arc::from("check");
        let mut reasons = Reasons::same(reason(&check, None, "trapped"), 2);
        let template = reason(&check, None, "").cause();
        let rule: Arc<str> = Arc::from("range");
        reasons.push(&template, Some(&rule), "x = 1");
        reasons.push(&template, Some(&rule), "x = 2");
        let picked = reasons.select(&[&[3, 0, 1, 3], &[2]]);
        assert_eq!(rows(&picked[1]), [row("check", Some("range"), "x = 1")]);
        let picked = &picked[0];
        assert_eq!(
            rows(picked),
            [
                row("check", Some("range"), "x = 2"),
                row("check", None, "trapped"),
                row("check", None, "trapped"),
                row("check", Some("range"), "x = 2"),
            ]
        );
        let shared = picked
            .messages()
            .filter(|m| matches!(m, Message::Shared(..)))
            .count();
        assert_eq!(shared, 2);
        assert_eq!(picked.messages.len(), 3, "the two trapped rows are one run");
        assert!(Reasons::default().select(&[&[]])[0].is_empty());
    }
}
