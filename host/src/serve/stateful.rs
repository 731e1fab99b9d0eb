//! A served pipeline's stateful operators (and stateful plugin stages):
//! their state committed with each micro-batch.
//!
//! Micro-batches of a pipeline with `[[operators]]` or a stage that keeps
//! keyed state are processed one at a time (state must see rows in one
//! order). The state changes of a
//! micro-batch are a [`Delta`] staged beside its sink and quarantine files
//! (`STATE_DIR/PIPELINE/operators/.part-ID.weir-delta.tmp`, fsynced) and
//! recorded and committed with them by the delivery log: committed means
//! renamed to `part-ID.delta`. Right after the commit the delta is applied
//! to the state store under the marker `part:ID` and its file removed. A
//! crash between the two leaves a committed delta file, which
//! [`ServedOperators::open`] applies (once: the marker) before the first
//! batch; a delta never committed is removed with its micro-batch, whose
//! submission was never acknowledged. So the state is always that of the
//! committed output.
//!
//! A pipeline reading a NATS stream commits through the stream's ledger
//! instead ([`super::ledger`]): its micro-batch's delta is published to the
//! ledger with its claim, not staged as a file
//! ([`ServedOperators::take_unclaimed`]), and every worker applies every
//! claim's delta in ledger order ([`ServedOperators::apply_claim`]). The
//! store records the ledger sequence of the last claim applied (its
//! position), in the same transaction as the claim's delta.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};

use super::delivery::StagedFile;
use crate::operator::{OperatorChain, OperatorConfig, OperatorReport};
use crate::state::stage::StageState;
use crate::state::{Delta, STORE_FILE};

/// Directory of the operators' store and deltas inside a pipeline's state
/// directory.
pub const OPERATORS_DIR: &str = "operators";

/// The operators of a served pipeline, their store and deltas.
#[derive(Debug)]
pub struct ServedOperators {
    chain: OperatorChain,
    dir: PathBuf,
    /// Why no more micro-batches may run until a restart: the state in
    /// memory or in the store may no longer match the committed output
    /// (a commit whose outcome is unknown, a failed apply, a panic), and
    /// only recovery at start ([`ServedOperators::open`]) can tell.
    broken: Option<String>,
    /// Reading a NATS stream: deltas go to the ledger, not to files.
    stream: bool,
    /// Stream: the last micro-batch's delta, for its claim.
    unclaimed: Option<Delta>,
    /// Stream: the ledger sequence of the last claim applied (read from
    /// the store once).
    position: Option<u64>,
}

/// Namespace of the ledger position in the store of a stream pipeline's
/// state (no stage or operator has it: their names cannot start with `@`).
const LEDGER_POSITION: &str = "@ledger";
const POSITION_KEY: &[u8] = b"position";

/// A micro-batch's staged state changes.
#[derive(Debug)]
pub struct StagedDelta {
    marker: String,
    delta: Delta,
    /// Its file, staged and final.
    pub file: StagedFile,
}

fn marker(part: &str) -> String {
    format!("part:{part}")
}

impl ServedOperators {
    /// Opens the store of the operators and the stateful `stages` in
    /// `state_dir/operators/`, applies the
    /// committed deltas a crash left (after [`super::delivery::Delivery::open`]
    /// finished their commits) and removes the staged ones.
    ///
    /// # Errors
    /// The store cannot be opened or a delta cannot be read or applied.
    pub fn open(
        configs: &[OperatorConfig],
        stages: &[Arc<StageState>],
        state_dir: &Path,
    ) -> Result<ServedOperators> {
        let dir = state_dir.join(OPERATORS_DIR);
        super::files::create_private_dir_all(&dir)?;
        let mut chain = OperatorChain::open(configs, stages, &dir.join(STORE_FILE), "")?;
        let mut committed = Vec::new();
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?
        {
            let path = entry?.path();
            let name = path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            if name.starts_with('.') && name.ends_with(".tmp") {
                std::fs::remove_file(&path)
                    .with_context(|| format!("removing {}", path.display()))?;
            } else if let Some(part) = name
                .strip_prefix("part-")
                .and_then(|n| n.strip_suffix(".delta"))
            {
                committed.push((marker(part), path));
            }
        }
        // Micro-batches commit one at a time and none runs after a failed
        // apply (`broken`), so at most one delta can be committed and
        // unapplied after a crash: order is moot.
        for (marker, path) in committed {
            let delta = Delta::read(&path)?;
            if chain.store().apply(&marker, &delta)? {
                chain.restore(delta)?;
                tracing::warn!(delta = %path.display(), "applied the state changes of a micro-batch committed before a crash");
            }
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
        crate::durable::fsync_dir(&dir)?;
        Ok(ServedOperators {
            chain,
            dir,
            broken: None,
            stream: false,
            unclaimed: None,
            position: None,
        })
    }

    /// Makes the operators commit through a stream's ledger: deltas are
    /// kept for the claim ([`ServedOperators::take_unclaimed`]), not staged.
    pub fn for_stream(mut self) -> ServedOperators {
        self.stream = true;
        self
    }

    /// Stream: the last micro-batch's state changes, to publish with its
    /// claim (`None`: nothing changed).
    pub fn take_unclaimed(&mut self) -> Option<Delta> {
        self.unclaimed.take()
    }

    /// Stream: the ledger sequence of the last claim whose state is in
    /// the store (0: none).
    ///
    /// # Errors
    /// The store cannot be read.
    pub fn position(&mut self) -> Result<u64> {
        if let Some(position) = self.position {
            return Ok(position);
        }
        let stored = self.chain.store().load(LEDGER_POSITION)?;
        let position = stored
            .iter()
            .find(|(key, _)| key == POSITION_KEY)
            .and_then(|(_, value)| value.as_slice().try_into().ok())
            .map_or(0, u64::from_le_bytes);
        self.position = Some(position);
        Ok(position)
    }

    /// Stream: applies the state of the claim at ledger `sequence`, whose
    /// stateful predecessor is at `after` (`None`: a stateless claim,
    /// nothing to apply): `delta` is another worker's (or this worker's,
    /// from before a crash) and is restored into the working state, or
    /// with `own` this worker's just-committed micro-batch, whose changes
    /// the working state holds already and are now accepted. A claim at
    /// or before the position is skipped (applied already).
    ///
    /// # Errors
    /// A claim after a gap (claims between the position and it are
    /// missing: expired from the ledger), or a store that cannot be
    /// written. The operators then stop until a restart.
    pub fn apply_claim(
        &mut self,
        sequence: u64,
        after: Option<u64>,
        delta: Option<Delta>,
        own: bool,
    ) -> Result<()> {
        let Some(after) = after else { return Ok(()) };
        let position = self.position()?;
        if sequence <= position {
            return Ok(());
        }
        if after != position {
            let why = format!(
                "the ledger's stateful claims go on from record {after}, but this worker's state ends at record {position}: the claims between them expired from the ledger (ledger_max_age_s) or belong to another state. Copy the operators' store from a worker that is up to date while it is stopped, or remove it to start the state anew"
            );
            self.broken = Some(why.clone());
            anyhow::bail!(why);
        }
        let mut delta = delta.unwrap_or_default();
        delta.namespaces.insert(
            LEDGER_POSITION.to_string(),
            [(POSITION_KEY.to_vec(), Some(sequence.to_le_bytes().to_vec()))]
                .into_iter()
                .collect(),
        );
        let applied = self
            .chain
            .store()
            .apply(&format!("ledger:{sequence}"), &delta);
        if let Err(error) = applied {
            self.broken = Some(format!(
                "applying ledger record {sequence} failed: {error:#}"
            ));
            return Err(error);
        }
        self.position = Some(sequence);
        match own {
            true => self.chain.accept(),
            false => {
                if let Err(error) = self.chain.restore(delta) {
                    self.broken = Some(format!("restoring ledger record {sequence}: {error:#}"));
                    return Err(error);
                }
            }
        }
        Ok(())
    }

    /// The chain, to run a micro-batch through.
    pub fn chain(&mut self) -> &mut OperatorChain {
        &mut self.chain
    }

    /// Writes the micro-batch's state changes under a staging name
    /// (fsynced); `None` when nothing changed.
    ///
    /// # Errors
    /// An I/O error.
    pub fn stage(&mut self, part: &str) -> Result<Option<StagedDelta>> {
        let delta = self.chain.take_delta();
        if delta.is_empty() {
            return Ok(None);
        }
        if self.stream {
            self.unclaimed = Some(delta);
            return Ok(None);
        }
        let staged = self.dir.join(format!(".part-{part}.weir-delta.tmp"));
        delta.write(&staged)?;
        crate::durable::fsync_dir(&self.dir)?;
        Ok(Some(StagedDelta {
            marker: marker(part),
            delta,
            file: StagedFile {
                staged,
                path: self.dir.join(format!("part-{part}.delta")),
            },
        }))
    }

    /// Refuses to run a micro-batch once the state may be out of step
    /// with the output.
    ///
    /// # Errors
    /// The reason, and that a restart recovers.
    pub fn check(&self) -> Result<()> {
        match &self.broken {
            None => Ok(()),
            Some(why) => anyhow::bail!(
                "the stateful operators stopped taking records: {why}. Restart weir serve: recovery then applies exactly the committed state"
            ),
        }
    }

    /// After the micro-batch committed: applies its delta to the store and
    /// removes the file; the changes can no longer be rolled back. A
    /// failed apply stops the operators until a restart, which applies it.
    pub fn committed(&mut self, staged: Option<StagedDelta>) {
        self.chain.accept();
        let Some(staged) = staged else { return };
        let applied = self
            .chain
            .store()
            .apply(&staged.marker, &staged.delta)
            .and_then(|_| {
                std::fs::remove_file(&staged.file.path)
                    .with_context(|| format!("removing {}", staged.file.path.display()))
            });
        if let Err(error) = applied {
            tracing::error!(delta = %staged.file.path.display(), error = format!("{error:#}"), "cannot apply committed state changes to the store");
            self.broken = Some(format!(
                "applying {} failed: {error:#}",
                staged.file.path.display()
            ));
        }
    }

    /// The micro-batch failed before it was recorded: its changes are
    /// undone (a staged delta is removed at the next start).
    pub fn failed(&mut self) {
        self.chain.rollback();
        self.unclaimed = None;
    }

    /// Recording or committing the micro-batch failed: it may or may not
    /// be recorded, so its staged delta stays for recovery to commit or
    /// remove, and the operators stop until a restart.
    pub fn commit_failed(&mut self, error: &anyhow::Error) {
        self.chain.rollback();
        self.broken = Some(format!("a micro-batch's commit failed ({error:#})"));
    }

    /// A micro-batch panicked while holding the operators.
    pub fn poisoned(&mut self) {
        self.chain.rollback();
        self.broken = Some("a micro-batch panicked mid-way".to_string());
    }

    /// Each operator's counts and state size.
    pub fn reports(&self) -> Vec<OperatorReport> {
        self.chain.reports()
    }
}
