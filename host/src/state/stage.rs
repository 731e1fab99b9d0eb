//! A plugin stage's keyed state: the working copy behind the
//! `weir:plugin/state` interface.
//!
//! One [`StageState`] exists per stateful stage of a pipeline (a stage
//! whose component imports `weir:plugin/state`), shared by every instance
//! and plugin version of the stage, so that a reload keeps the state. The
//! host functions ([`crate::plugin::state`]) read it and buffer a call's
//! writes; a successful call's writes are applied here
//! ([`StageState::apply`]) and from then on travel like an operator's
//! changes: taken per epoch (or micro-batch) as the stage's namespace of a
//! [`crate::state::Delta`], committed with the output, undone with a failed
//! micro-batch.
//!
//! Values live in a hash map with an ordered key index (prefix scans walk
//! it in key order), in memory: the whole namespace is loaded at start, bounded by the stage's
//! `max_state_bytes`.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::Result;

use super::keyed::{IndexedMap, Keyed};
use super::{Changes, StateBudget};

/// A stage's working state: key bytes → value bytes, change-tracked,
/// with keys indexed in order for scans.
pub type StageMap = Keyed<Vec<u8>, IndexedMap<Vec<u8>>>;

/// Default `max_state_bytes` of a stage: 256 MiB of keys and values, the
/// same as an operator's ([`crate::operator::config`]): state is held in
/// memory, and this keeps one stage well inside a small machine.
pub const DEFAULT_MAX_STATE_BYTES: u64 = 256 * 1024 * 1024;

/// One stateful stage's keyed state.
#[derive(Debug)]
pub struct StageState {
    namespace: String,
    quota: u64,
    map: Mutex<StageMap>,
    /// The tenant's budget ([`super::StateBudget`]), under `weir serve`.
    budget: std::sync::OnceLock<Arc<StateBudget>>,
    /// The bytes of this state the budget counts (as of the last
    /// [`crate::operator::OperatorChain`] sync).
    counted: std::sync::atomic::AtomicU64,
}

impl StageState {
    /// An empty state for the stage `namespace` (its name), capped at
    /// `quota` bytes of keys and values.
    pub fn new(namespace: &str, quota: u64) -> StageState {
        StageState {
            namespace: namespace.to_string(),
            quota,
            map: Mutex::new(StageMap::default()),
            budget: std::sync::OnceLock::new(),
            counted: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// A state that is never committed, for a smoke test's or a schema
    /// probe's call: reads find nothing, writes are dropped with it.
    pub fn scratch() -> StageState {
        StageState::new("(probe)", DEFAULT_MAX_STATE_BYTES)
    }

    /// The namespace in the state store: the stage's name.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The cap on keys plus values, in bytes.
    pub fn quota(&self) -> u64 {
        self.quota
    }

    /// Makes the stage's state count against `budget` (a tenant's); the
    /// first call wins.
    pub fn set_budget(&self, budget: Arc<StateBudget>) {
        let _ = self.budget.set(budget);
    }

    /// The budget it counts against, if any.
    pub fn budget(&self) -> Option<&Arc<StateBudget>> {
        self.budget.get()
    }

    /// Bytes the budget counts for this state.
    pub fn counted(&self) -> u64 {
        self.counted.load(Ordering::Relaxed)
    }

    /// Records that the budget now counts `bytes` for this state.
    pub fn set_counted(&self, bytes: u64) {
        self.counted.store(bytes, Ordering::Relaxed);
    }

    /// The map. A call that panicked while holding it left it as it was
    /// before its writes were applied (they are applied in one step), so a
    /// poisoned lock is taken as is.
    pub fn lock(&self) -> MutexGuard<'_, StageMap> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies a successful call's writes (key → value, or `None`:
    /// removed); they are then changes of the current batch.
    pub fn apply(&self, writes: impl IntoIterator<Item = (Vec<u8>, Option<Vec<u8>>)>) {
        let mut map = self.lock();
        for (key, value) in writes {
            match value {
                Some(value) => map.put(&key, value),
                None => {
                    map.remove(&key);
                }
            }
        }
    }

    /// Applies stored changes (the store's entries, committed deltas),
    /// not as changes.
    ///
    /// # Errors
    /// None for byte values; kept for symmetry with operators.
    pub fn restore(&self, changes: Changes) -> Result<()> {
        let mut map = self.lock();
        map.restore(changes)?;
        map.accept();
        Ok(())
    }

    /// Keys and bytes of keys plus values.
    pub fn size(&self) -> (u64, u64) {
        let map = self.lock();
        (map.len() as u64, map.bytes() as u64)
    }
}
