//! Host-managed keyed state, committed together with the output.
//!
//! Stateful operators ([`crate::operator`]) keep their working state in
//! memory and hand the host, at the end of each epoch, the keys they changed
//! since the last one: a [`Delta`] (key → new value, or removed). The delta
//! travels with the epoch's output through the checkpoint protocol as one
//! more prepared file ([`Delta::write`]: checksummed, fsynced), and is
//! applied to the durable [`StateStore`] only once the output it belongs to
//! is committed (`weir serve`) or published (`weir run`). Applying is one
//! transaction of the store that also records a **marker** naming what was
//! applied (the run id, the serve part), so a crash between the output's
//! commit and the state's, or a repeated recovery, applies it exactly once.
//!
//! After a crash the state is therefore exactly that of the last committed
//! output: the store plus the deltas of committed epochs not yet applied,
//! and the input replays from the matching position.
//!
//! The store is [redb](https://docs.rs/redb) (an embedded, copy-on-write
//! B-tree with ACID transactions whose commit is durable when it returns),
//! chosen over an LSM store (fjall, RocksDB) because state is written once
//! per epoch in one batch and read whole at start: a B-tree in one file,
//! with no background compaction threads, fits that and is simple to
//! inspect and back up. Each operator's state is a table named after the
//! operator (its **namespace**); keys and values are bytes that the
//! operator encodes. A plugin stage that keeps keyed state
//! (`weir:plugin/state`, see [`stage`]) has a namespace named after the
//! stage, in the same store and on the same commit path (stage and
//! operator names are unique together).

pub mod keyed;
pub mod stage;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, TableHandle};

/// File name of a pipeline's state store inside its state directory.
pub const STORE_FILE: &str = "state.redb";

/// Markers kept (the newest): enough to recognise any repeated apply,
/// since a marker is only consulted while its delta file still exists.
const MARKERS_KEPT: usize = 1024;

const MARKERS: TableDefinition<&str, u64> = TableDefinition::new("weir.markers");
/// Namespace → the settings its state was written under.
const SETTINGS: TableDefinition<&str, &str> = TableDefinition::new("weir.settings");
const PREFIX: &str = "state.";

/// One change: a key and its new value (`None`: removed).
pub type Change = (Vec<u8>, Option<Vec<u8>>);

/// Changes to one namespace: key → `Some(value)` (put) or `None` (removed).
pub type Changes = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// Changes to several namespaces, as one unit (one epoch, one part).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delta {
    /// Namespace (operator name) → its changes.
    pub namespaces: BTreeMap<String, Changes>,
}

const DELTA_MAGIC: &[u8; 8] = b"WEIRDLT1";

impl Delta {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.namespaces.values().all(BTreeMap::is_empty)
    }

    /// Number of changed keys.
    pub fn len(&self) -> usize {
        self.namespaces.values().map(BTreeMap::len).sum()
    }

    /// The delta's bytes. Layout: `WEIRDLT1`, then per change a tag byte
    /// (1 put, 2 remove), the namespace, the key and (puts) the value, each
    /// as a u32 little-endian length and bytes; then the CRC-32 of
    /// everything before it (u32 little-endian).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(64 + self.len() * 32);
        bytes.extend_from_slice(DELTA_MAGIC);
        let field = |bytes: &mut Vec<u8>, data: &[u8]| {
            bytes.extend_from_slice(&(data.len() as u32).to_le_bytes());
            bytes.extend_from_slice(data);
        };
        for (namespace, changes) in &self.namespaces {
            for (key, value) in changes {
                bytes.push(if value.is_some() { 1 } else { 2 });
                field(&mut bytes, namespace.as_bytes());
                field(&mut bytes, key);
                if let Some(value) = value {
                    field(&mut bytes, value);
                }
            }
        }
        let crc = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        bytes
    }

    /// Writes the delta ([`Delta::to_bytes`]) to `path` and fsyncs it.
    ///
    /// # Errors
    /// An I/O error.
    pub fn write(&self, path: &Path) -> Result<()> {
        let bytes = self.to_bytes();
        let mut file =
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        file.write_all(&bytes)
            .and_then(|()| file.sync_all())
            .with_context(|| format!("writing {}", path.display()))
    }

    /// Reads a delta [`Delta::write`] wrote.
    ///
    /// # Errors
    /// An unreadable file, or one that is not a whole delta (wrong magic,
    /// failed checksum, truncated).
    pub fn read(path: &Path) -> Result<Delta> {
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .with_context(|| format!("reading {}", path.display()))?;
        Delta::from_bytes(&bytes, &path.display().to_string())
    }

    /// The delta [`Delta::to_bytes`] made; `what` names where the bytes
    /// come from, for the error.
    ///
    /// # Errors
    /// Bytes that are not a whole delta (wrong magic, failed checksum,
    /// truncated).
    pub fn from_bytes(bytes: &[u8], what: &str) -> Result<Delta> {
        let damaged = || anyhow::anyhow!("{what} is not a whole state delta");
        if bytes.len() < DELTA_MAGIC.len() + 4 || &bytes[..8] != DELTA_MAGIC {
            return Err(damaged());
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        if crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
            return Err(damaged());
        }
        let mut at = DELTA_MAGIC.len();
        let field = |at: &mut usize| -> Option<&[u8]> {
            let len = u32::from_le_bytes(body.get(*at..*at + 4)?.try_into().ok()?) as usize;
            let data = body.get(*at + 4..*at + 4 + len)?;
            *at += 4 + len;
            Some(data)
        };
        // Written in key order per namespace: collected into vectors first,
        // so each map is built in one bulk step rather than by inserts.
        let mut entries: BTreeMap<String, Vec<Change>> = BTreeMap::new();
        while at < body.len() {
            let tag = body[at];
            at += 1;
            let namespace = field(&mut at).ok_or_else(damaged)?;
            let key = field(&mut at).ok_or_else(damaged)?.to_vec();
            let value = match tag {
                1 => Some(field(&mut at).ok_or_else(damaged)?.to_vec()),
                2 => None,
                _ => return Err(damaged()),
            };
            entries
                .entry(String::from_utf8_lossy(namespace).into_owned())
                .or_default()
                .push((key, value));
        }
        Ok(Delta {
            namespaces: entries
                .into_iter()
                .map(|(namespace, changes)| (namespace, changes.into_iter().collect()))
                .collect(),
        })
    }
}

/// A cap on the keyed state of a group of pipelines (a `weir serve`
/// tenant's, [`crate::serve`] `max_state_bytes`), shared by their
/// operators and stateful stages: each adds to it what its state grows by
/// and takes off what it shrinks by, in bytes of keys plus values.
#[derive(Debug)]
pub struct StateBudget {
    limit: u64,
    used: std::sync::atomic::AtomicI64,
}

impl StateBudget {
    /// A budget of `limit` bytes, none used.
    pub fn new(limit: u64) -> StateBudget {
        StateBudget {
            limit,
            used: std::sync::atomic::AtomicI64::new(0),
        }
    }

    /// The cap, in bytes.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes counted now.
    pub fn used(&self) -> u64 {
        // Never negative: every subtraction follows its addition.
        self.used.load(std::sync::atomic::Ordering::Relaxed).max(0) as u64
    }

    /// Counts `bytes` more (or fewer, when negative).
    pub fn add(&self, bytes: i64) {
        self.used
            .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether growing by `bytes` would pass the cap.
    pub fn would_pass(&self, bytes: i64) -> bool {
        i128::from(self.used()) + i128::from(bytes) > i128::from(self.limit)
    }
}

/// Size of one namespace in the store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct NamespaceSize {
    /// Keys stored.
    pub keys: u64,
    /// Bytes of keys and values stored (redb's `stored_bytes`, without
    /// its page overhead).
    pub bytes: u64,
}

/// A pipeline's durable state: one redb file, one table per namespace.
pub struct StateStore {
    db: redb::Database,
    path: PathBuf,
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStore")
            .field("path", &self.path)
            .finish()
    }
}

fn table(namespace: &str) -> String {
    format!("{PREFIX}{namespace}")
}

impl StateStore {
    /// Opens (or creates) the store at `path`, creating its directory.
    ///
    /// # Errors
    /// The directory cannot be created, or the file is not a redb
    /// database (or is open in another process: redb locks it).
    pub fn open(path: &Path) -> Result<StateStore> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let db = redb::Database::create(path).with_context(|| {
            format!(
                "opening the state store {} (is another weir using it?)",
                path.display()
            )
        })?;
        Ok(StateStore {
            db,
            path: path.to_path_buf(),
        })
    }

    /// The store's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every entry of `namespace`, in key order (none for a namespace never
    /// written).
    ///
    /// # Errors
    /// A read error of the store.
    pub fn load(&self, namespace: &str) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let name = table(namespace);
        let definition: TableDefinition<&[u8], &[u8]> = TableDefinition::new(&name);
        let read = self.db.begin_read()?;
        let table = match read.open_table(definition) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut entries = Vec::with_capacity(table.len()? as usize);
        for entry in table.iter()? {
            let (key, value) = entry?;
            entries.push((key.value().to_vec(), value.value().to_vec()));
        }
        Ok(entries)
    }

    /// The settings `namespace`'s state was written under, as
    /// [`StateStore::set_settings`] recorded them.
    ///
    /// # Errors
    /// A read error of the store.
    pub fn settings(&self, namespace: &str) -> Result<Option<String>> {
        let read = self.db.begin_read()?;
        match read.open_table(SETTINGS) {
            Ok(table) => Ok(table.get(namespace)?.map(|v| v.value().to_string())),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Records the settings `namespace`'s state is written under.
    ///
    /// # Errors
    /// A write error of the store.
    pub fn set_settings(&self, namespace: &str, settings: &str) -> Result<()> {
        let write = self.db.begin_write()?;
        write.open_table(SETTINGS)?.insert(namespace, settings)?;
        write.commit()?;
        Ok(())
    }

    /// Whether a delta marked `marker` was applied.
    ///
    /// # Errors
    /// A read error of the store.
    pub fn applied(&self, marker: &str) -> Result<bool> {
        let read = self.db.begin_read()?;
        match read.open_table(MARKERS) {
            Ok(table) => Ok(table.get(marker)?.is_some()),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Applies `delta` and records `marker`, in one durable transaction,
    /// unless `marker` was applied already. Returns whether it applied.
    ///
    /// # Errors
    /// A write error of the store; nothing is applied then.
    pub fn apply(&self, marker: &str, delta: &Delta) -> Result<bool> {
        self.apply_all(marker, std::iter::once(Ok(delta)))
    }

    /// Applies `deltas` in order (a later change to a key wins) and records
    /// `marker`, in one durable transaction, unless `marker` was applied
    /// already. Returns whether it applied.
    ///
    /// # Errors
    /// A delta that cannot be read, or a write error of the store; nothing
    /// is applied then.
    pub fn apply_all<D: std::borrow::Borrow<Delta>>(
        &self,
        marker: &str,
        deltas: impl IntoIterator<Item = Result<D>>,
    ) -> Result<bool> {
        let write = self.db.begin_write()?;
        {
            let mut markers = write.open_table(MARKERS)?;
            if markers.get(marker)?.is_some() {
                return Ok(false);
            }
            let next = markers
                .iter()?
                .filter_map(|e| e.ok().map(|(_, v)| v.value()))
                .max()
                .map_or(0, |n| n + 1);
            markers.insert(marker, next)?;
            if markers.len()? as usize > MARKERS_KEPT {
                let cut = next - MARKERS_KEPT as u64;
                markers.retain(|_, n| n > cut)?;
            }
            for delta in deltas {
                let delta = delta?;
                for (namespace, changes) in &delta.borrow().namespaces {
                    let name = table(namespace);
                    let definition: TableDefinition<&[u8], &[u8]> = TableDefinition::new(&name);
                    let mut table = write.open_table(definition)?;
                    for (key, value) in changes {
                        match value {
                            Some(value) => {
                                table.insert(key.as_slice(), value.as_slice())?;
                            }
                            None => {
                                table.remove(key.as_slice())?;
                            }
                        }
                    }
                }
            }
        }
        write
            .commit()
            .with_context(|| format!("committing state to {}", self.path.display()))?;
        Ok(true)
    }

    /// Keys and bytes of every namespace.
    ///
    /// # Errors
    /// A read error of the store.
    pub fn sizes(&self) -> Result<BTreeMap<String, NamespaceSize>> {
        let read = self.db.begin_read()?;
        let mut sizes = BTreeMap::new();
        for handle in read.list_tables()? {
            let Some(namespace) = handle.name().strip_prefix(PREFIX) else {
                continue;
            };
            let name = handle.name().to_string();
            let definition: TableDefinition<&[u8], &[u8]> = TableDefinition::new(&name);
            let table = read.open_table(definition)?;
            let stats = table.stats()?;
            sizes.insert(
                namespace.to_string(),
                NamespaceSize {
                    keys: table.len()?,
                    bytes: stats.stored_bytes(),
                },
            );
        }
        Ok(sizes)
    }

    /// Drops the state of `namespace`, or of every namespace with `None`.
    /// Returns the namespaces dropped.
    ///
    /// # Errors
    /// A write error of the store.
    pub fn reset(&self, namespace: Option<&str>) -> Result<Vec<String>> {
        let write = self.db.begin_write()?;
        let names: Vec<String> = write
            .list_tables()?
            .map(|h| h.name().to_string())
            .filter(|n| n.starts_with(PREFIX))
            .filter(|n| namespace.is_none_or(|ns| *n == table(ns)))
            .collect();
        for name in &names {
            let definition: TableDefinition<&[u8], &[u8]> = TableDefinition::new(name);
            write.delete_table(definition)?;
        }
        write.commit()?;
        Ok(names
            .into_iter()
            .map(|n| n[PREFIX.len()..].to_string())
            .collect())
    }
}

/// Reads [`StateStore::sizes`] of the store at `path` without keeping it
/// open; empty when there is none.
///
/// # Errors
/// The file exists but cannot be opened or read.
pub fn sizes_at(path: &Path) -> Result<BTreeMap<String, NamespaceSize>> {
    if !path.exists() {
        return Ok(BTreeMap::new());
    }
    StateStore::open(path)?.sizes()
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestChange<'a> = (&'a str, &'a [u8], Option<&'a [u8]>);

    fn delta(pairs: &[TestChange<'_>]) -> Delta {
        let mut d = Delta::default();
        for (ns, k, v) in pairs {
            d.namespaces
                .entry(ns.to_string())
                .or_default()
                .insert(k.to_vec(), v.map(<[u8]>::to_vec));
        }
        d
    }

    #[test]
    fn a_budget_counts_growth_and_an_unlimited_one_never_passes() {
        let budget = StateBudget::new(100);
        budget.add(60);
        assert!(!budget.would_pass(40));
        assert!(budget.would_pass(41));
        budget.add(-60);
        assert_eq!(budget.used(), 0);
        let unlimited = StateBudget::new(u64::MAX);
        unlimited.add(1 << 40);
        assert!(!unlimited.would_pass(i64::MAX));
    }

    #[test]
    fn a_delta_round_trips_and_damage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("delta.bin");
        let d = delta(&[
            ("a", b"k1", Some(b"v1")),
            ("a", b"k2", None),
            ("b", b"", Some(b"")),
        ]);
        d.write(&path).unwrap();
        assert_eq!(Delta::read(&path).unwrap(), d);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 6;
        bytes[last] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(Delta::read(&path).is_err());
    }

    #[test]
    fn a_marked_delta_applies_once_and_reset_drops_a_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(&dir.path().join(STORE_FILE)).unwrap();
        let d = delta(&[("a", b"k1", Some(b"v1")), ("b", b"x", Some(b"y"))]);
        assert!(store.apply("run:1", &d).unwrap());
        assert!(!store.apply("run:1", &delta(&[("a", b"k1", None)])).unwrap());
        assert_eq!(
            store.load("a").unwrap(),
            vec![(b"k1".to_vec(), b"v1".to_vec())]
        );
        assert!(store.applied("run:1").unwrap());
        assert!(store.apply("run:2", &delta(&[("a", b"k1", None)])).unwrap());
        assert!(store.load("a").unwrap().is_empty());
        assert_eq!(store.sizes().unwrap()["b"].keys, 1);
        assert_eq!(store.reset(Some("b")).unwrap(), vec!["b".to_string()]);
        assert!(store.load("b").unwrap().is_empty());
    }
}
