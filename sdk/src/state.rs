//! Keyed state the host keeps for this stage (`weir:plugin/state`).
//!
//! The host stores the state, commits it atomically with the output of the
//! batch that changed it, and gives it back after a reload, a trap or a
//! crash exactly as of the last committed output. A plugin that uses it
//! sees batches one at a time, in input order. Keys and values are bytes;
//! the `*_json` helpers store any `serde` type as JSON.
//!
//! Calls are batch-shaped: read every key a batch needs with one
//! [`get_many`] and write them back with one [`put_many`]; each call costs
//! fuel, so one call per batch is much cheaper than one per row.
//!
//! Writes past the stage's `max_state_bytes` (default 256 MiB) end the call:
//! the batch is quarantined as `state_quota` and none of its writes count.
//! A new plugin version reads what the old one wrote: if you change your
//! value format, keep a version in it and convert old values as you read
//! them.
//!
//! ```no_run
//! use std::collections::HashMap;
//! # fn totals(keys: &[String], amounts: &[i64]) -> Result<Vec<i64>, weir_sdk::Error> {
//! // A running total per key over one batch.
//! let mut distinct: Vec<&String> = keys.iter().collect();
//! distinct.sort();
//! distinct.dedup();
//! let stored: Vec<Option<i64>> = weir_sdk::state::get_json_many(&distinct)?;
//! let mut totals: HashMap<&String, i64> =
//!     distinct.iter().zip(stored).map(|(k, v)| (*k, v.unwrap_or(0))).collect();
//! let mut out = Vec::with_capacity(keys.len());
//! for (key, amount) in keys.iter().zip(amounts) {
//!     let total = totals.get_mut(key).expect("every key was read");
//!     *total += amount;
//!     out.push(*total);
//! }
//! weir_sdk::state::put_json_many(totals.iter().map(|(k, v)| (*k, v)))?;
//! # Ok(out) }
//! ```

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Error;
use crate::bindings::transformer::weir::plugin::state as wit;

pub use wit::Entry;

/// The values of `keys`, one per key in order; `None` where a key has none.
pub fn get_many<K: AsRef<[u8]>>(keys: &[K]) -> Vec<Option<Vec<u8>>> {
    let keys: Vec<Vec<u8>> = keys.iter().map(|k| k.as_ref().to_vec()).collect();
    wit::get_many(&keys)
}

/// The value of `key`.
pub fn get(key: &[u8]) -> Option<Vec<u8>> {
    get_many(&[key]).pop().flatten()
}

/// Sets each key to its value; a later pair for the same key wins.
pub fn put_many<K: Into<Vec<u8>>, V: Into<Vec<u8>>>(entries: impl IntoIterator<Item = (K, V)>) {
    let entries: Vec<Entry> = entries
        .into_iter()
        .map(|(key, value)| Entry {
            key: key.into(),
            value: value.into(),
        })
        .collect();
    wit::put_many(&entries);
}

/// Sets `key` to `value`.
pub fn put(key: &[u8], value: &[u8]) {
    put_many([(key.to_vec(), value.to_vec())]);
}

/// Removes `keys` (keys without a value are ignored).
pub fn delete_many<K: AsRef<[u8]>>(keys: &[K]) {
    let keys: Vec<Vec<u8>> = keys.iter().map(|k| k.as_ref().to_vec()).collect();
    wit::delete_many(&keys);
}

/// At most `limit` entries whose key starts with `prefix`, in bytewise key
/// order, after the key `start_after` when given (pass the last key of a
/// page to get the next one).
pub fn scan_prefix(prefix: &[u8], start_after: Option<&[u8]>, limit: u32) -> Vec<Entry> {
    wit::scan_prefix(prefix, start_after.map(<[u8]>::to_vec).as_deref(), limit)
}

/// The values of `keys` (text keys), decoded from JSON.
///
/// # Errors
/// [`Error::Internal`] when a stored value is not JSON of type `T` (an
/// older version of the plugin wrote another format).
pub fn get_json_many<K: AsRef<str>, T: DeserializeOwned>(
    keys: &[K],
) -> Result<Vec<Option<T>>, Error> {
    let keys: Vec<&[u8]> = keys.iter().map(|k| k.as_ref().as_bytes()).collect();
    get_many(&keys)
        .into_iter()
        .zip(&keys)
        .map(|(value, key)| {
            value
                .map(|bytes| {
                    serde_json::from_slice(&bytes).map_err(|e| {
                        Error::Internal(format!(
                            "the state of key {:?} is not the JSON this plugin expects: {e}",
                            String::from_utf8_lossy(key)
                        ))
                    })
                })
                .transpose()
        })
        .collect()
}

/// The value of text key `key`, decoded from JSON.
///
/// # Errors
/// As [`get_json_many`].
pub fn get_json<T: DeserializeOwned>(key: &str) -> Result<Option<T>, Error> {
    Ok(get_json_many(&[key])?.pop().flatten())
}

/// Sets each text key to its value encoded as JSON.
///
/// # Errors
/// [`Error::Internal`] when a value cannot be encoded (a map with non-text
/// keys, for example).
pub fn put_json_many<K: AsRef<str>, T: Serialize>(
    entries: impl IntoIterator<Item = (K, T)>,
) -> Result<(), Error> {
    let entries = entries
        .into_iter()
        .map(|(key, value)| {
            serde_json::to_vec(&value)
                .map(|bytes| (key.as_ref().as_bytes().to_vec(), bytes))
                .map_err(|e| Error::Internal(format!("encoding state as JSON: {e}")))
        })
        .collect::<Result<Vec<_>, Error>>()?;
    put_many(entries);
    Ok(())
}

/// Sets text key `key` to `value` encoded as JSON.
///
/// # Errors
/// As [`put_json_many`].
pub fn put_json<T: Serialize>(key: &str, value: &T) -> Result<(), Error> {
    put_json_many([(key, value)])
}
