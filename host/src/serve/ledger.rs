//! The commit ledger of a stream pipeline: which stream sequences are
//! committed, shared by every worker bound to the same durable consumer.
//!
//! **Why.** Several workers pulling from one durable consumer receive
//! interleaved sequences, and a message can be delivered twice: to a
//! worker that then dies after writing its output but before its
//! acknowledgement, or that acknowledges after `ack_wait` (the server
//! accepts a late acknowledgement even though it has redelivered the
//! message to another worker). The acknowledgement therefore cannot be
//! the commit; the ledger is.
//!
//! **How.** The ledger is a JetStream subject (`weir.ledger.STREAM.CONSUMER`
//! in the `WEIR_LEDGER` stream) of [`Claim`] records, each naming the
//! worker, its micro-batch (part), the stream sequences it holds and its
//! staged files. A worker commits an epoch by publishing its claim with
//! `Nats-Expected-Last-Subject-Sequence` set to the last ledger record it
//! has read: JetStream's optimistic concurrency control, the same
//! compare-and-set its key-value buckets are built on. If another worker
//! committed in between, the publish is refused, the worker reads the new
//! records, and either publishes again (no overlap) or leaves out the
//! messages someone else committed. So every sequence is claimed by exactly
//! one committed epoch, and a redelivered committed message is recognized
//! and only acknowledged.
//!
//! Sequences at or below the consumer's acknowledgement floor are never
//! delivered again, so they are forgotten ([`Ledger::forget_below`]); the
//! records themselves expire with the ledger stream's `max_age`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use async_nats::jetstream;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::stream::DirectGetErrorKind;
use serde::{Deserialize, Serialize};

use super::delivery::StagedFile;
use crate::nats::settings::SourceSettings;

/// A set of stream sequences, as disjoint inclusive ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeqSet {
    /// start → end, inclusive, disjoint and not adjacent.
    ranges: BTreeMap<u64, u64>,
}

impl SeqSet {
    /// The set of `sequences` (any order).
    pub fn from_sequences(sequences: impl IntoIterator<Item = u64>) -> SeqSet {
        let mut set = SeqSet::default();
        for s in sequences {
            set.insert(s, s);
        }
        set
    }

    /// Adds `start..=end`.
    pub fn insert(&mut self, mut start: u64, mut end: u64) {
        // Merge with a range that overlaps or touches on the left.
        if let Some((&s, &e)) = self.ranges.range(..=start).next_back()
            && e.saturating_add(1) >= start
        {
            start = s;
            end = end.max(e);
            self.ranges.remove(&s);
        }
        // And with every range starting inside or right after.
        while let Some((&s, &e)) = self.ranges.range(start..).next() {
            if s > end.saturating_add(1) {
                break;
            }
            end = end.max(e);
            self.ranges.remove(&s);
        }
        self.ranges.insert(start, end);
    }

    /// Adds every range of `other`.
    pub fn extend(&mut self, other: &SeqSet) {
        for (&s, &e) in &other.ranges {
            self.insert(s, e);
        }
    }

    /// Whether `sequence` is in the set.
    pub fn contains(&self, sequence: u64) -> bool {
        self.ranges
            .range(..=sequence)
            .next_back()
            .is_some_and(|(_, &e)| e >= sequence)
    }

    /// Removes every sequence at or below `floor`.
    pub fn remove_through(&mut self, floor: u64) {
        let below: Vec<u64> = self.ranges.range(..=floor).map(|(&s, _)| s).collect();
        for s in below {
            let e = self.ranges.remove(&s).expect("listed");
            if e > floor {
                self.ranges.insert(floor + 1, e);
            }
        }
    }

    /// Ranges, ascending.
    pub fn ranges(&self) -> Vec<(u64, u64)> {
        self.ranges.iter().map(|(&s, &e)| (s, e)).collect()
    }

    /// Number of ranges.
    pub fn range_count(&self) -> usize {
        self.ranges.len()
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }
}

/// One committed epoch in the ledger.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claim {
    /// The worker that committed it (its id, kept in its state directory).
    pub worker: String,
    /// The micro-batch's part id.
    pub part: String,
    /// Stream sequences it holds, as inclusive ranges.
    pub sequences: Vec<(u64, u64)>,
    /// Its staged files and their final names, on the worker's machine:
    /// what the worker renames into place after a crash.
    pub files: Vec<StagedFile>,
    /// When it was committed, seconds since the Unix epoch.
    pub at: u64,
}

/// The outcome of [`Ledger::commit`].
#[derive(Debug)]
pub enum Commit {
    /// The claim is in the ledger: the epoch is committed.
    Committed,
    /// Other epochs had already committed these of the claim's sequences;
    /// nothing was written. Leave them out and prepare again.
    Overlap(SeqSet),
}

/// A worker's view of the ledger, and its means to add to it.
pub struct Ledger {
    context: jetstream::Context,
    stream: jetstream::stream::Stream,
    subject: String,
    worker: String,
    /// Ledger stream sequence of the last record read (0: none).
    last: u64,
    committed: SeqSet,
    /// The highest acknowledgement floor seen: every sequence at or below
    /// it was acknowledged, and a message is acknowledged only once its
    /// epoch is committed, so all of them count as committed (even one
    /// the server still had in flight to this worker when the floor
    /// passed it: the late-acknowledgement race).
    floor: u64,
    records_read: u64,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("subject", &self.subject)
            .field("last", &self.last)
            .finish_non_exhaustive()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Ledger {
    /// Opens (creating when missing) the ledger stream of `settings` and
    /// reads every record of this pipeline's subject. Returns the ledger
    /// and the files of this `worker`'s claims (to finish renaming after a
    /// crash).
    ///
    /// # Errors
    /// The server refused to create or read the ledger stream, or a record
    /// is not a claim.
    pub async fn open(
        context: &jetstream::Context,
        settings: &SourceSettings,
        worker: &str,
    ) -> Result<(Ledger, Vec<StagedFile>)> {
        let stream = context
            .get_or_create_stream(jetstream::stream::Config {
                name: settings.ledger_stream.clone(),
                subjects: vec![format!("weir.ledger.{}.>", settings.ledger_stream)],
                max_age: Duration::from_secs(settings.ledger_max_age_s),
                allow_direct: true,
                storage: jetstream::stream::StorageType::File,
                ..Default::default()
            })
            .await
            .with_context(|| format!("opening the ledger stream `{}`", settings.ledger_stream))?;
        let subject = format!(
            "weir.ledger.{}.{}.{}",
            settings.ledger_stream, settings.stream, settings.consumer
        );
        let mut ledger = Ledger {
            context: context.clone(),
            stream,
            subject,
            worker: worker.to_string(),
            last: 0,
            committed: SeqSet::default(),
            floor: 0,
            records_read: 0,
        };
        let mut mine = Vec::new();
        ledger
            .read_new(|claim| {
                if claim.worker == worker {
                    mine.extend(claim.files.iter().cloned());
                }
            })
            .await?;
        Ok((ledger, mine))
    }

    /// The ledger subject of this pipeline.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// Whether `sequence` is committed, as far as this worker has read.
    pub fn is_committed(&self, sequence: u64) -> bool {
        sequence <= self.floor || self.committed.contains(sequence)
    }

    /// Ranges of committed sequences still remembered.
    pub fn remembered_ranges(&self) -> usize {
        self.committed.range_count()
    }

    /// Records read since the ledger was opened.
    pub fn records_read(&self) -> u64 {
        self.records_read
    }

    /// Counts every sequence at or below the consumer's acknowledgement
    /// floor as committed, and forgets their ranges.
    pub fn forget_below(&mut self, ack_floor: u64) {
        self.floor = self.floor.max(ack_floor);
        self.committed.remove_through(self.floor);
    }

    /// Reads the records after the last one read, calling `each` on every
    /// claim.
    async fn read_new(&mut self, mut each: impl FnMut(&Claim)) -> Result<()> {
        loop {
            let message = match self
                .stream
                .direct_get_next_for_subject(self.subject.clone(), Some(self.last + 1))
                .await
            {
                Ok(message) => message,
                Err(e) if e.kind() == DirectGetErrorKind::NotFound => return Ok(()),
                Err(e) => {
                    return Err(anyhow::Error::new(e).context(format!(
                        "reading the ledger `{}` after record {}",
                        self.subject, self.last
                    )));
                }
            };
            let claim: Claim = serde_json::from_slice(&message.payload).with_context(|| {
                format!(
                    "ledger `{}` record {} is not a weir claim",
                    self.subject, message.sequence
                )
            })?;
            for &(s, e) in &claim.sequences {
                self.committed.insert(s, e);
            }
            each(&claim);
            self.last = message.sequence;
            self.records_read += 1;
        }
    }

    /// Commits `claim` unless another epoch committed some of its
    /// sequences first. A publish whose outcome is unknown (a timeout, a
    /// lost connection) is resolved by reading the ledger back: the claim
    /// is committed if it is there.
    ///
    /// # Errors
    /// The ledger could not be reached within the retries (about a
    /// minute); the claim's outcome is then unknown and the caller must
    /// not acknowledge nor publish its messages (they are redelivered, and
    /// the ledger decides then).
    pub async fn commit(&mut self, claim: &Claim) -> Result<Commit> {
        let wanted = {
            let mut set = SeqSet::default();
            for &(s, e) in &claim.sequences {
                set.insert(s, e);
            }
            set
        };
        let payload = bytes::Bytes::from(serde_json::to_vec(claim)?);
        let mut failures = 0u32;
        loop {
            let overlap = self.overlap(&wanted);
            if !overlap.is_empty() {
                return Ok(Commit::Overlap(overlap));
            }
            let publish = jetstream::message::PublishMessage::build()
                .payload(payload.clone())
                .message_id(format!("{}:{}", claim.worker, claim.part))
                .expected_last_subject_sequence(self.last);
            let sent = match self
                .context
                .send_publish(self.subject.clone(), publish)
                .await
            {
                Ok(ack) => ack.await,
                Err(e) => Err(e),
            };
            match sent {
                Ok(ack) if !ack.duplicate => {
                    self.last = ack.sequence;
                    self.records_read += 1;
                    self.committed.extend(&wanted);
                    return Ok(Commit::Committed);
                }
                Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                    metrics::counter!("weir_stream_ledger_conflicts_total").increment(1);
                }
                // A duplicate (our own earlier publish got through) or an
                // unknown outcome: read back what the ledger holds.
                Ok(_) | Err(_) => {
                    failures += 1;
                    if failures > 12 {
                        bail!(
                            "the ledger `{}` could not be written after {failures} attempts",
                            self.subject
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(250 * u64::from(failures.min(20))))
                        .await;
                }
            }
            let mut ours = false;
            let read = self
                .read_new(|c| ours |= c.worker == claim.worker && c.part == claim.part)
                .await;
            if let Err(e) = read {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "reading the ledger back failed; retrying"
                );
                continue;
            }
            if ours {
                return Ok(Commit::Committed);
            }
        }
    }

    fn overlap(&self, wanted: &SeqSet) -> SeqSet {
        let mut overlap = SeqSet::default();
        for (s, e) in wanted.ranges() {
            if s <= self.floor {
                overlap.insert(s, e.min(self.floor));
            }
            // Claims are small; a range is checked per sequence only
            // where it meets a committed range.
            for (&cs, &ce) in self.committed.ranges.range(..=e) {
                if ce < s {
                    continue;
                }
                overlap.insert(s.max(cs), e.min(ce));
            }
        }
        overlap
    }

    /// A claim by this worker, committed now.
    pub fn claim(&self, part: &str, sequences: &SeqSet, files: Vec<StagedFile>) -> Claim {
        Claim {
            worker: self.worker.clone(),
            part: part.to_string(),
            sequences: sequences.ranges(),
            files,
            at: unix_now(),
        }
    }
}

/// This worker's id for `state_dir` (created on first use): what its
/// claims carry so that its own recovery finds them.
///
/// # Errors
/// The id file cannot be read or written.
pub fn worker_id(state_dir: &std::path::Path) -> Result<String> {
    let path: PathBuf = state_dir.join("worker-id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => Ok(id.trim().to_string()),
        _ => {
            let id = uuid::Uuid::new_v4().simple().to_string();
            super::files::write_private(&path, id.as_bytes())?;
            crate::durable::fsync_dir(state_dir)?;
            Ok(id)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::SeqSet;

    #[test]
    fn ranges_merge_and_forget() {
        let mut set = SeqSet::from_sequences([5, 1, 2, 3, 9, 10, 4]);
        assert_eq!(set.ranges(), vec![(1, 5), (9, 10)]);
        set.insert(6, 8);
        assert_eq!(set.ranges(), vec![(1, 10)]);
        assert!(set.contains(7) && !set.contains(11) && !set.contains(0));
        set.remove_through(4);
        assert_eq!(set.ranges(), vec![(5, 10)]);
        set.insert(20, 30);
        set.remove_through(25);
        assert_eq!(set.ranges(), vec![(26, 30)]);
    }
}
