//! Working keyed state: a map from key bytes to values that remembers
//! which keys changed since the last epoch (to build its
//! [`crate::state::Changes`]) and how to undo the current batch (a batch
//! that fails after the state changed, in `weir serve`, must leave the state
//! as it was).
//!
//! Operators keep theirs in a hash map (the default, fastest for point
//! lookups); plugin stages in an [`IndexedMap`], a hash map plus an ordered
//! index of its keys for their prefix scans ([`crate::state::stage`]).

use std::collections::{BTreeSet, HashMap, HashSet};

/// foldhash's seeded hasher: keys are user data, so seeded per process,
/// and several times faster than the standard SipHash on short keys.
type Hasher = foldhash::quality::RandomState;

use anyhow::Result;

use crate::state::Changes;

/// A value an operator keeps per key, with its byte encoding in the store.
pub trait Codec: Clone {
    /// The value's bytes.
    fn encode(&self) -> Vec<u8>;
    /// A value from its bytes.
    ///
    /// # Errors
    /// Bytes this codec did not write.
    fn decode(bytes: &[u8]) -> Result<Self>;
    /// Approximate bytes it occupies, for quotas and the status.
    fn size(&self) -> usize;
}

/// The map a [`Keyed`] keeps its values in.
pub trait KeyMap<V>: Default {
    /// The value of `key`.
    fn get(&self, key: &[u8]) -> Option<&V>;
    /// The value of `key`, to change in place.
    fn get_mut(&mut self, key: &[u8]) -> Option<&mut V>;
    /// Sets `key`, returning its old value.
    fn insert(&mut self, key: Vec<u8>, value: V) -> Option<V>;
    /// Removes `key`, returning its value.
    fn remove(&mut self, key: &[u8]) -> Option<V>;
    /// Number of keys.
    fn len(&self) -> usize;
    /// Whether there are no keys.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<V> KeyMap<V> for HashMap<Vec<u8>, V, Hasher> {
    fn get(&self, key: &[u8]) -> Option<&V> {
        HashMap::get(self, key)
    }
    fn get_mut(&mut self, key: &[u8]) -> Option<&mut V> {
        HashMap::get_mut(self, key)
    }
    fn insert(&mut self, key: Vec<u8>, value: V) -> Option<V> {
        HashMap::insert(self, key, value)
    }
    fn remove(&mut self, key: &[u8]) -> Option<V> {
        HashMap::remove(self, key)
    }
    fn len(&self) -> usize {
        HashMap::len(self)
    }
}

/// Keyed values with change tracking, in a `M` map (a seeded hash map by
/// default).
#[derive(Debug)]
pub struct Keyed<V, M = HashMap<Vec<u8>, V, Hasher>> {
    map: M,
    /// Keys changed since [`Keyed::take_changes`].
    dirty: HashSet<Vec<u8>, Hasher>,
    /// First value (before the batch) of each key the batch touched.
    undo: HashMap<Vec<u8>, Option<V>, Hasher>,
    /// Approximate bytes of keys and values.
    bytes: usize,
}

impl<V, M: KeyMap<V>> Default for Keyed<V, M> {
    fn default() -> Self {
        Keyed {
            map: M::default(),
            dirty: HashSet::default(),
            undo: HashMap::default(),
            bytes: 0,
        }
    }
}

impl<V: Codec> Keyed<V> {
    /// Every key and value, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&Vec<u8>, &V)> {
        self.map.iter()
    }
}

/// A hash map with an ordered index of its keys: point lookups and
/// updates of existing keys cost one hash (no key comparisons along a
/// B-tree path), and only inserting or removing a key touches the index,
/// which serves scans in key order.
#[derive(Debug)]
pub struct IndexedMap<V> {
    map: HashMap<Vec<u8>, V, Hasher>,
    keys: BTreeSet<Vec<u8>>,
}

impl<V> Default for IndexedMap<V> {
    fn default() -> Self {
        IndexedMap {
            map: HashMap::default(),
            keys: BTreeSet::new(),
        }
    }
}

impl<V> KeyMap<V> for IndexedMap<V> {
    fn get(&self, key: &[u8]) -> Option<&V> {
        self.map.get(key)
    }
    fn get_mut(&mut self, key: &[u8]) -> Option<&mut V> {
        self.map.get_mut(key)
    }
    fn insert(&mut self, key: Vec<u8>, value: V) -> Option<V> {
        if let Some(slot) = self.map.get_mut(key.as_slice()) {
            return Some(std::mem::replace(slot, value));
        }
        self.keys.insert(key.clone());
        self.map.insert(key, value)
    }
    fn remove(&mut self, key: &[u8]) -> Option<V> {
        let value = self.map.remove(key)?;
        self.keys.remove(key);
        Some(value)
    }
    fn len(&self) -> usize {
        self.map.len()
    }
}

impl<V: Codec> Keyed<V, IndexedMap<V>> {
    /// The entries from `start` on, in key order.
    pub fn range_from(
        &self,
        start: std::ops::Bound<&[u8]>,
    ) -> impl Iterator<Item = (&Vec<u8>, &V)> {
        self.map
            .keys
            .range::<[u8], _>((start, std::ops::Bound::Unbounded))
            .map(|key| (key, &self.map.map[key.as_slice()]))
    }
}

impl<V: Codec, M: KeyMap<V>> Keyed<V, M> {
    /// The value of `key`.
    pub fn get(&self, key: &[u8]) -> Option<&V> {
        self.map.get(key)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Approximate bytes of keys and values.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    fn touch(&mut self, key: &[u8]) {
        if !self.undo.contains_key(key) {
            self.undo.insert(key.to_vec(), self.map.get(key).cloned());
        }
        if !self.dirty.contains(key) {
            self.dirty.insert(key.to_vec());
        }
    }

    /// Sets `key` to `value`.
    pub fn put(&mut self, key: &[u8], value: V) {
        self.touch(key);
        self.bytes += value.size();
        match self.map.insert(key.to_vec(), value) {
            Some(old) => self.bytes -= old.size(),
            None => self.bytes += key.len(),
        }
    }

    /// Changes the value of `key` in place, creating it with `init` first
    /// if absent.
    pub fn update(&mut self, key: &[u8], init: impl FnOnce() -> V, change: impl FnOnce(&mut V)) {
        self.touch(key);
        let value = match self.map.get_mut(key) {
            Some(value) => value,
            None => {
                let value = init();
                self.bytes += key.len() + value.size();
                self.map.insert(key.to_vec(), value);
                self.map.get_mut(key).expect("inserted above")
            }
        };
        let before = value.size();
        change(value);
        self.bytes = self.bytes + value.size() - before;
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &[u8]) -> Option<V> {
        self.map.get(key)?;
        self.touch(key);
        let old = self.map.remove(key)?;
        self.bytes -= key.len() + old.size();
        Some(old)
    }

    /// Keeps the batch's changes: they can no longer be undone.
    pub fn accept(&mut self) {
        self.undo.clear();
    }

    /// Undoes every change since [`Keyed::accept`].
    pub fn rollback(&mut self) {
        for (key, old) in std::mem::take(&mut self.undo) {
            if let Some(current) = self.map.remove(&key) {
                self.bytes -= key.len() + current.size();
            }
            if let Some(old) = old {
                self.bytes += key.len() + old.size();
                self.map.insert(key, old);
            }
        }
    }

    /// The changes since the last call, encoded: each changed key's value
    /// now, or `None` where it was removed.
    pub fn take_changes(&mut self) -> Changes {
        std::mem::take(&mut self.dirty)
            .into_iter()
            .map(|key| {
                let value = self.map.get(&key).map(Codec::encode);
                (key, value)
            })
            .collect()
    }

    /// Applies stored changes (the store's entries at start, then
    /// committed deltas); not tracked as changes.
    ///
    /// # Errors
    /// A value that does not decode.
    pub fn restore(
        &mut self,
        changes: impl IntoIterator<Item = (Vec<u8>, Option<Vec<u8>>)>,
    ) -> Result<()> {
        for (key, value) in changes {
            if let Some(old) = self.map.remove(&key) {
                self.bytes -= key.len() + old.size();
            }
            if let Some(bytes) = value {
                let value = V::decode(&bytes)?;
                self.bytes += key.len() + value.size();
                self.map.insert(key, value);
            }
        }
        Ok(())
    }
}

impl Codec for i64 {
    fn encode(&self) -> Vec<u8> {
        self.to_le_bytes().to_vec()
    }
    fn decode(bytes: &[u8]) -> Result<Self> {
        Ok(i64::from_le_bytes(bytes.try_into().map_err(|_| {
            anyhow::anyhow!("a stored i64 has {} bytes", bytes.len())
        })?))
    }
    fn size(&self) -> usize {
        8
    }
}

impl Codec for Vec<u8> {
    fn encode(&self) -> Vec<u8> {
        self.clone()
    }
    fn decode(bytes: &[u8]) -> Result<Self> {
        Ok(bytes.to_vec())
    }
    fn size(&self) -> usize {
        self.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollback_restores_the_batch_start_and_changes_name_only_touched_keys() {
        let mut keyed = Keyed::<i64>::default();
        keyed.put(b"a", 1);
        keyed.accept();
        assert_eq!(keyed.take_changes().len(), 1);
        keyed.put(b"a", 2);
        keyed.put(b"b", 3);
        keyed.update(b"a", || 0, |v| *v += 10);
        keyed.rollback();
        assert_eq!(keyed.get(b"a"), Some(&1));
        assert_eq!(keyed.get(b"b"), None);
        assert_eq!(keyed.bytes(), 9);
        keyed.remove(b"a");
        keyed.accept();
        let changes = keyed.take_changes();
        assert_eq!(changes.get(b"a".as_slice()), Some(&None));
    }
}
