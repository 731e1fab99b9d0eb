//! A served pipeline's stateful operators: their state committed with each
//! micro-batch.
//!
//! Micro-batches of a pipeline with `[[operators]]` are processed one at a
//! time (the operators must see rows in one order). The state changes of a
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

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::delivery::StagedFile;
use crate::operator::{OperatorChain, OperatorConfig, OperatorReport};
use crate::state::{Delta, STORE_FILE};

/// Directory of the operators' store and deltas inside a pipeline's state
/// directory.
pub const OPERATORS_DIR: &str = "operators";

/// The operators of a served pipeline, their store and deltas.
#[derive(Debug)]
pub struct ServedOperators {
    chain: OperatorChain,
    dir: PathBuf,
    /// Committed deltas not yet applied (a failed apply), oldest first:
    /// marker, file, changes.
    unapplied: Vec<(String, PathBuf, Delta)>,
}

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
    /// Opens the operators' store in `state_dir/operators/`, applies the
    /// committed deltas a crash left (after [`super::delivery::Delivery::open`]
    /// finished their commits) and removes the staged ones.
    ///
    /// # Errors
    /// The store cannot be opened or a delta cannot be read or applied.
    pub fn open(configs: &[OperatorConfig], state_dir: &Path) -> Result<ServedOperators> {
        let dir = state_dir.join(OPERATORS_DIR);
        super::files::create_private_dir_all(&dir)?;
        let mut chain = OperatorChain::open(configs, &dir.join(STORE_FILE), "")?;
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
        // Micro-batches commit one at a time, so at most one delta can be
        // committed and unapplied after a crash; order is moot.
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
            unapplied: Vec::new(),
        })
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

    /// After the micro-batch committed: applies its delta to the store and
    /// removes the file; the changes can no longer be rolled back. A
    /// failed apply is retried before the next one (the file stays, and a
    /// restart would apply it too).
    pub fn committed(&mut self, staged: Option<StagedDelta>) {
        self.chain.accept();
        if let Some(staged) = staged {
            self.unapplied
                .push((staged.marker, staged.file.path, staged.delta));
        }
        while let Some((marker, path, delta)) = self.unapplied.first() {
            match self.chain.store().apply(marker, delta) {
                Ok(_) => {
                    let _ = std::fs::remove_file(path);
                    self.unapplied.remove(0);
                }
                Err(error) => {
                    tracing::error!(delta = %path.display(), error = format!("{error:#}"), "cannot apply committed state changes to the store; retried with the next micro-batch and at restart");
                    break;
                }
            }
        }
    }

    /// The micro-batch failed before its commit: its changes are undone
    /// and its staged delta removed.
    pub fn failed(&mut self, staged: Option<StagedDelta>) {
        self.chain.rollback();
        if let Some(staged) = staged {
            let _ = std::fs::remove_file(&staged.file.staged);
        }
    }

    /// Each operator's counts and state size.
    pub fn reports(&self) -> Vec<OperatorReport> {
        self.chain.reports()
    }
}
