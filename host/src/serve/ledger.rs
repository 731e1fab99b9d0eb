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
//! **Stateful pipelines** (operators or stateful plugin stages) need more:
//! every worker's state must be that of every committed epoch, applied in
//! one order, or two workers could both pass the same key as new. So the
//! ledger is also the log of the state: an epoch's state delta is
//! published to the ledger stream (`SUBJECT.state`, in chunks) before its
//! claim, which names those chunks ([`Claim::state`]) and the stateful claim
//! before it ([`Claim::after`]). A worker applies every claim's
//! delta in ledger order before it prepares an epoch, and its claim's
//! compare-and-set succeeds only if no claim was added since: so each
//! epoch was computed on the state of every epoch before it. When another
//! worker committed first, the claim is refused as [`Commit::Stale`]: the
//! epoch is undone, the new deltas applied, and the epoch prepared again.
//! Stateful pipelines thus scale out for availability (any worker takes
//! over with the state), not for throughput (epochs commit one at a time).
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
    /// Stateful pipelines: the ledger stream sequences of the epoch's
    /// state delta ([`crate::state::Delta::to_bytes`]), in chunks, in
    /// order; empty when nothing changed or the pipeline is stateless.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub state: Vec<u64>,
    /// Stateful pipelines: the ledger sequence of the stateful claim
    /// before it on the subject (0: it is the first), so that a worker can
    /// tell it has applied the state of every epoch before it. `None`: a
    /// stateless pipeline's claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<u64>,
}

/// Where a committed claim landed in the ledger.
#[derive(Debug, Clone, Copy)]
pub struct ClaimedState {
    /// The claim's ledger sequence.
    pub sequence: u64,
    /// The ledger sequence of the stateful claim before it (0: none, or a
    /// stateless pipeline).
    pub after: u64,
}

/// The outcome of [`Ledger::commit`].
#[derive(Debug)]
pub enum Commit {
    /// The claim is in the ledger: the epoch is committed.
    Committed(ClaimedState),
    /// Other epochs had already committed these of the claim's sequences;
    /// nothing was written. Leave them out and prepare again.
    Overlap(SeqSet),
    /// A stateful pipeline: another worker committed since this worker
    /// last applied the ledger's state, so the epoch was computed on an
    /// old state; nothing was written. Undo it, apply
    /// [`Ledger::take_unapplied`], and prepare it again.
    Stale,
}

/// Bytes of state delta per ledger message: well under NATS's default
/// `max_payload` of 1 MiB.
pub const STATE_CHUNK_BYTES: usize = 256 * 1024;

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
    /// Whether claims carry state ([`Ledger::take_unapplied`]).
    stateful: bool,
    /// Stateful: claims read and not yet taken, with their ledger
    /// sequences, in ledger order.
    unapplied: Vec<(u64, Claim)>,
    /// The ledger sequence of the last stateful claim read or committed.
    last_stateful: u64,
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
        stateful: bool,
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
            stateful,
            unapplied: Vec::new(),
            last_stateful: 0,
        };
        let mut mine = Vec::new();
        ledger
            .read_new(|_, claim| {
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

    /// Reads the claims committed since the last read (a stateful
    /// pipeline's worker does before each epoch; they are then in
    /// [`Ledger::take_unapplied`]).
    ///
    /// # Errors
    /// The ledger cannot be read, or holds a record that is not a claim.
    pub async fn refresh(&mut self) -> Result<()> {
        self.read_new(|_, _| {}).await
    }

    /// Stateful: the claims read since the last call, with their ledger
    /// sequences, in ledger order: their state is to be applied, in this
    /// order, before the next epoch is prepared.
    pub fn take_unapplied(&mut self) -> Vec<(u64, Claim)> {
        std::mem::take(&mut self.unapplied)
    }

    /// Publishes a stateful epoch's state delta `bytes` to the ledger
    /// stream, in chunks of [`STATE_CHUNK_BYTES`]; returns their ledger
    /// sequences for [`Claim::state`]. Chunks of a claim that is never
    /// committed are never read, and expire with the ledger's records.
    ///
    /// # Errors
    /// The server did not acknowledge a chunk.
    pub async fn publish_state(&self, bytes: &[u8]) -> Result<Vec<u64>> {
        let subject = format!("{}.state", self.subject);
        let mut sequences = Vec::new();
        for chunk in bytes.chunks(STATE_CHUNK_BYTES) {
            let ack = self
                .context
                .publish(subject.clone(), bytes::Bytes::copy_from_slice(chunk))
                .await
                .with_context(|| format!("publishing state to `{subject}`"))?
                .await
                .with_context(|| format!("publishing state to `{subject}`"))?;
            sequences.push(ack.sequence);
        }
        Ok(sequences)
    }

    /// The state delta bytes of `claim`, read back from the ledger stream.
    ///
    /// # Errors
    /// A chunk cannot be read (expired with the ledger's `max_age`, or the
    /// server is unreachable).
    pub async fn fetch_state(&self, claim: &Claim) -> Result<Vec<u8>> {
        let mut bytes = Vec::new();
        for &sequence in &claim.state {
            let message = self.stream.direct_get(sequence).await.with_context(|| {
                format!(
                    "reading the state of the epoch {} (worker {}) at ledger record {sequence}",
                    claim.part, claim.worker
                )
            })?;
            bytes.extend_from_slice(&message.payload);
        }
        Ok(bytes)
    }

    /// Reads the records after the last one read, calling `each` on every
    /// claim with its ledger sequence.
    async fn read_new(&mut self, mut each: impl FnMut(u64, &Claim)) -> Result<()> {
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
            each(message.sequence, &claim);
            if claim.after.is_some() {
                self.last_stateful = message.sequence;
            }
            self.last = message.sequence;
            self.records_read += 1;
            if self.stateful {
                self.unapplied.push((message.sequence, claim));
            }
        }
    }

    /// Commits `claim` unless another epoch committed some of its
    /// sequences first (or, stateful, any claim was committed since the
    /// last [`Ledger::take_unapplied`]). A publish whose outcome is unknown
    /// (a timeout, a lost connection) is resolved by reading the ledger
    /// back: the claim is committed if it is there.
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
        let mut failures = 0u32;
        // Whether an earlier publish of this claim may have got through
        // (its outcome is unknown until the ledger is read back): the
        // claim must not be given up then.
        let mut uncertain = false;
        loop {
            if !uncertain {
                if self.stateful && !self.unapplied.is_empty() {
                    return Ok(Commit::Stale);
                }
                let overlap = self.overlap(&wanted);
                if !overlap.is_empty() {
                    return Ok(Commit::Overlap(overlap));
                }
            }
            let claim = Claim {
                after: self.stateful.then_some(self.last_stateful),
                ..claim.clone()
            };
            let payload = bytes::Bytes::from(serde_json::to_vec(&claim)?);
            let publish = jetstream::message::PublishMessage::build()
                .payload(payload)
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
                    let claimed = ClaimedState {
                        sequence: ack.sequence,
                        after: claim.after.unwrap_or_default(),
                    };
                    if self.stateful {
                        self.last_stateful = ack.sequence;
                    }
                    return Ok(Commit::Committed(claimed));
                }
                Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                    metrics::counter!("weir_stream_ledger_conflicts_total").increment(1);
                }
                // A duplicate (our own earlier publish got through) or an
                // unknown outcome: read back what the ledger holds.
                Ok(_) | Err(_) => {
                    uncertain = true;
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
            let mut ours = None;
            let read = self
                .read_new(|sequence, c| {
                    if c.worker == claim.worker && c.part == claim.part {
                        ours = Some(ClaimedState {
                            sequence,
                            after: c.after.unwrap_or_default(),
                        });
                    }
                })
                .await;
            if let Err(e) = read {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "reading the ledger back failed; retrying"
                );
                continue;
            }
            // Read back whole: the claim is not there.
            uncertain = false;
            if let Some(claimed) = ours {
                // Our own claim is applied by the caller, not as another's.
                self.unapplied
                    .retain(|(_, c)| !(c.worker == claim.worker && c.part == claim.part));
                // Claims read after ours were committed after it: they
                // stay, to be applied after ours.
                return Ok(Commit::Committed(claimed));
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
            state: Vec::new(),
            after: None,
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
