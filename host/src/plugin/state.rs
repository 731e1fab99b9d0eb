//! The host side of `weir:plugin/state@0.2.0`: a stage's keyed state as
//! seen by one plugin call.
//!
//! The functions are linked by hand (`func_wrap`) rather than through
//! `bindgen!`, because charging fuel needs the store, which generated host
//! traits do not see. A call's reads see the stage's state plus the call's
//! own writes; its writes are buffered in a [`StateCall`] and applied to the
//! [`StageState`] only when the stage accepts the call's output
//! ([`super::PluginInstance::commit_state`]), so that a call that traps,
//! errs, runs out of a limit or returns a malformed output changes nothing.
//!
//! # Fuel
//! Each state function costs [`FUEL_PER_CALL`] plus [`FUEL_PER_KEY`] per key
//! (entry, for scans and puts) plus one unit per byte of keys and values
//! moved either way. A WebAssembly instruction costs one unit and a B-tree
//! lookup over short keys takes the host about 50–100 ns, a few hundred
//! instructions' time, hence the per-key rate. A call that cannot pay stops
//! as out of fuel.

use std::collections::HashMap;
use std::ops::Bound;
use std::sync::Arc;

use anyhow::Result;
use wasmtime::StoreContextMut;
use wasmtime::component::{ComponentType, Lift, Linker, Lower};

use super::PluginState;
use crate::state::stage::StageState;

/// The instance the functions are defined in.
pub const STATE_INTERFACE: &str = "weir:plugin/state@0.2.0";

/// Fuel charged for every state function call.
pub const FUEL_PER_CALL: u64 = 1_000;
/// Fuel charged per key read, written, removed or scanned.
pub const FUEL_PER_KEY: u64 = 200;

/// `weir:plugin/state.entry`.
#[derive(Debug, Clone, PartialEq, Eq, ComponentType, Lift, Lower)]
#[component(record)]
pub struct Entry {
    /// The key's bytes.
    key: Vec<u8>,
    /// The value's bytes.
    value: Vec<u8>,
}

/// Seeded foldhash: keys are user data, and point lookups dominate (a
/// scan sorts the writes it needs).
type Hasher = foldhash::quality::RandomState;

/// The state a stage's call works on and the writes it made so far.
#[derive(Debug)]
pub struct StateCall {
    state: Arc<StageState>,
    /// Key → new value (`None`: removed).
    writes: HashMap<Vec<u8>, Option<Vec<u8>>, Hasher>,
    /// Change in bytes of keys and values the writes would make.
    grown: i64,
}

/// A `put-many` that would take a stage's state past its `max_state_bytes`,
/// or its tenant's state past the tenant's; the call stops, classified as
/// `state_quota`.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "{whose} keyed state would grow to {bytes} bytes, over its max_state_bytes = {quota} (raise it, make the plugin delete keys it no longer needs, or reset the state with `weir state reset`)"
)]
pub struct StateQuotaExceeded {
    /// `the stage's`, or `the tenant's` (all its stages and operators).
    pub whose: &'static str,
    /// Bytes of keys and values the state would have held.
    pub bytes: u64,
    /// The `max_state_bytes` passed.
    pub quota: u64,
}

/// A plugin that imports `weir:plugin/state` where the host has none to
/// give it.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "the plugin uses keyed state (weir:plugin/state), which this stage does not have: the pipeline was started with a plugin version that does not use it. Restart the pipeline with this version to give the stage its state"
)]
pub struct NoState;

impl StateCall {
    /// A call on `state` with no writes yet.
    pub fn new(state: Arc<StageState>) -> StateCall {
        StateCall {
            state,
            writes: HashMap::default(),
            grown: 0,
        }
    }

    /// Forgets the writes (a new call begins).
    pub fn clear(&mut self) {
        self.writes.clear();
        self.grown = 0;
    }

    /// Takes the writes instead of applying them (an extract plugin's,
    /// which travel with the batches of the file it read).
    pub fn take(&mut self) -> crate::state::Changes {
        self.grown = 0;
        self.writes.drain().collect()
    }

    /// Applies the writes to the stage's state.
    pub fn commit(&mut self) {
        self.grown = 0;
        self.state.apply(self.writes.drain());
    }

    fn get_many(&self, keys: Vec<Vec<u8>>) -> Vec<Option<Vec<u8>>> {
        let map = self.state.lock();
        keys.iter()
            .map(|key| match self.writes.get(key) {
                Some(written) => written.clone(),
                None => map.get(key).cloned(),
            })
            .collect()
    }

    /// The size of `key`'s entry now (key plus value), 0 when absent.
    fn entry_bytes(&self, map: &crate::state::stage::StageMap, key: &[u8]) -> i64 {
        let value = match self.writes.get(key) {
            Some(written) => written.as_ref().map(Vec::len),
            None => map.get(key).map(Vec::len),
        };
        value.map_or(0, |v| (key.len() + v) as i64)
    }

    /// Buffers `entries`. Past the quota the call must end: the writes
    /// are then discarded with it, so they are not undone here.
    fn put_many(&mut self, entries: Vec<Entry>) -> Result<(), StateQuotaExceeded> {
        let map = self.state.lock();
        let base = map.bytes() as i64;
        // What the tenant's budget does not count yet: this stage's growth
        // since the chain last counted it (earlier calls of this batch).
        let uncounted = base - self.state.counted() as i64;
        for Entry { key, value } in entries {
            // A later entry for the same key replaces this one.
            self.grown += (key.len() + value.len()) as i64 - self.entry_bytes(&map, &key);
            self.writes.insert(key, Some(value));
            let bytes = (base + self.grown).max(0) as u64;
            if bytes > self.state.quota() {
                return Err(StateQuotaExceeded {
                    whose: "the stage's",
                    bytes,
                    quota: self.state.quota(),
                });
            }
            if let Some(budget) = self.state.budget()
                && budget.would_pass(uncounted + self.grown)
            {
                return Err(StateQuotaExceeded {
                    whose: "the tenant's",
                    bytes: (budget.used() as i64 + uncounted + self.grown).max(0) as u64,
                    quota: budget.limit(),
                });
            }
        }
        Ok(())
    }

    fn delete_many(&mut self, keys: Vec<Vec<u8>>) {
        let map = self.state.lock();
        for key in &keys {
            self.grown -= self.entry_bytes(&map, key);
        }
        drop(map);
        for key in keys {
            self.writes.insert(key, None);
        }
    }

    /// Merges the state's and the writes' entries under `prefix`, after
    /// `start_after`, in key order; a write wins over the state. The
    /// call's writes under the prefix are sorted for it (a scan costs
    /// O(writes) more than a lookup).
    fn scan_prefix(&self, prefix: &[u8], start_after: Option<&[u8]>, limit: usize) -> Vec<Entry> {
        let start = match start_after {
            Some(after) if after >= prefix => Bound::Excluded(after),
            _ => Bound::Included(prefix),
        };
        let after_start = |key: &[u8]| match start {
            Bound::Excluded(s) => key > s,
            Bound::Included(s) => key >= s,
            Bound::Unbounded => true,
        };
        let mut writes: Vec<(&Vec<u8>, &Option<Vec<u8>>)> = self
            .writes
            .iter()
            .filter(|(k, _)| k.starts_with(prefix) && after_start(k))
            .collect();
        writes.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let map = self.state.lock();
        let mut stored = map
            .range_from(start)
            .take_while(|(k, _)| k.starts_with(prefix))
            .peekable();
        let mut written = writes.into_iter().peekable();
        let mut out = Vec::new();
        while out.len() < limit {
            let next = match (stored.peek(), written.peek()) {
                (None, None) => break,
                (Some((s, _)), Some((w, _))) if s < w => stored.next().map(|(k, v)| (k, Some(v))),
                (Some((s, _)), Some((w, _))) if s == w => {
                    stored.next();
                    written.next().map(|(k, v)| (k, v.as_ref()))
                }
                (Some(_), None) => stored.next().map(|(k, v)| (k, Some(v))),
                _ => written.next().map(|(k, v)| (k, v.as_ref())),
            };
            if let Some((key, Some(value))) = next {
                out.push(Entry {
                    key: key.clone(),
                    value: value.clone(),
                });
            }
        }
        out
    }
}

/// Takes `keys` keys and `bytes` bytes' worth of fuel from the call.
fn charge(
    store: &mut StoreContextMut<'_, PluginState>,
    keys: usize,
    bytes: usize,
) -> wasmtime::Result<()> {
    let cost = FUEL_PER_CALL
        .saturating_add(FUEL_PER_KEY.saturating_mul(keys as u64))
        .saturating_add(bytes as u64);
    super::take_fuel(store, cost)
}

fn call<'a>(
    store: &'a mut StoreContextMut<'_, PluginState>,
) -> wasmtime::Result<&'a mut StateCall> {
    store
        .data_mut()
        .state
        .as_mut()
        .ok_or_else(|| wasmtime::Error::new(NoState))
}

fn bytes_of(keys: &[Vec<u8>]) -> usize {
    keys.iter().map(Vec::len).sum()
}

fn bytes_of_entries(entries: &[Entry]) -> usize {
    entries.iter().map(|e| e.key.len() + e.value.len()).sum()
}

/// Defines `weir:plugin/state@0.2.0` in `linker`.
///
/// # Errors
/// When the linker already defines it.
pub fn add_to_linker(linker: &mut Linker<PluginState>) -> Result<()> {
    let mut state = linker.instance(STATE_INTERFACE)?;
    state.func_wrap(
        "get-many",
        |mut store: StoreContextMut<'_, PluginState>, (keys,): (Vec<Vec<u8>>,)| {
            let values = call(&mut store)?.get_many(keys);
            let bytes = values.iter().flatten().map(Vec::len).sum::<usize>();
            charge(&mut store, values.len(), bytes)?;
            Ok((values,))
        },
    )?;
    state.func_wrap(
        "put-many",
        |mut store: StoreContextMut<'_, PluginState>, (entries,): (Vec<Entry>,)| {
            charge(&mut store, entries.len(), bytes_of_entries(&entries))?;
            call(&mut store)?
                .put_many(entries)
                .map_err(wasmtime::Error::new)?;
            Ok(())
        },
    )?;
    state.func_wrap(
        "delete-many",
        |mut store: StoreContextMut<'_, PluginState>, (keys,): (Vec<Vec<u8>>,)| {
            charge(&mut store, keys.len(), bytes_of(&keys))?;
            call(&mut store)?.delete_many(keys);
            Ok(())
        },
    )?;
    state.func_wrap(
        "scan-prefix",
        |mut store: StoreContextMut<'_, PluginState>,
         (prefix, start_after, limit): (Vec<u8>, Option<Vec<u8>>, u32)| {
            let entries =
                call(&mut store)?.scan_prefix(&prefix, start_after.as_deref(), limit as usize);
            charge(&mut store, entries.len(), bytes_of_entries(&entries))?;
            Ok((entries,))
        },
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &[u8], value: &[u8]) -> Entry {
        Entry {
            key: key.to_vec(),
            value: value.to_vec(),
        }
    }

    #[test]
    fn a_call_sees_its_writes_and_scans_merge_them_in_key_order() {
        let state = Arc::new(StageState::new("s", 1 << 20));
        let mut first = StateCall::new(state.clone());
        first
            .put_many(vec![
                entry(b"a1", b"x"),
                entry(b"a3", b"y"),
                entry(b"b", b"z"),
            ])
            .unwrap();
        first.commit();
        let mut call = StateCall::new(state.clone());
        call.put_many(vec![entry(b"a2", b"new"), entry(b"a3", b"Y")])
            .unwrap();
        call.delete_many(vec![b"a1".to_vec()]);
        assert_eq!(
            call.get_many(vec![b"a1".to_vec(), b"a3".to_vec(), b"b".to_vec()]),
            vec![None, Some(b"Y".to_vec()), Some(b"z".to_vec())]
        );
        let keys = |entries: Vec<Entry>| entries.into_iter().map(|e| e.key).collect::<Vec<_>>();
        assert_eq!(
            keys(call.scan_prefix(b"a", None, 10)),
            vec![b"a2".to_vec(), b"a3".to_vec()]
        );
        assert_eq!(
            keys(call.scan_prefix(b"a", Some(b"a2"), 10)),
            vec![b"a3".to_vec()]
        );
        assert_eq!(keys(call.scan_prefix(b"", None, 2)).len(), 2);
        // Not applied until committed.
        assert_eq!(state.lock().get(b"a1"), Some(&b"x".to_vec()));
        call.commit();
        assert_eq!(state.lock().get(b"a1"), None);
        assert_eq!(state.size(), (3, 2 + 3 + 2 + 1 + 1 + 1));
    }

    #[test]
    fn a_put_past_the_quota_is_refused() {
        let state = Arc::new(StageState::new("s", 10));
        let mut call = StateCall::new(state.clone());
        call.put_many(vec![entry(b"k", b"12345")]).unwrap();
        // Replacing a value counts only the difference.
        call.put_many(vec![entry(b"k", b"123456789")]).unwrap();
        call.commit();
        assert_eq!(state.size(), (1, 10));
        let mut call = StateCall::new(state.clone());
        let error = call.put_many(vec![entry(b"k2", b"1")]).unwrap_err();
        assert_eq!((error.bytes, error.quota), (13, 10));
    }
}
