//! # `mask`: pseudonymise or redact columns
//!
//! A transformer plugin. For each listed column it replaces every non-null
//! value, keeping nulls null:
//!
//! - `sha256`: the lowercase hex SHA-256 (FIPS 180-4) of the UTF-8 bytes of
//!   `salt` followed by the value, 64 characters. The same value and salt
//!   always give the same digest, so masked columns still join and group.
//! - `redact`: the fixed text `replacement` (default `REDACTED`).
//!
//! `utf8` columns are hashed as they are; `int64` columns as their decimal
//! text. The output column is `utf8`.
//!
//! ```toml
//! [[stages]]
//! name = "mask"
//! kind = "transform"
//! plugin = "builtin:mask"
//! config = { salt = "change-me", sha256 = ["tailnum"], redact = [] }
//! ```
//!
//! Errors: `invalid-config` for unknown keys; `invalid-input` when a listed
//! column is missing or of another type.

use serde::Deserialize;
use sha2::{Digest, Sha256};
use weir_sdk::{Column, ColumnValues, Error, RecordBatch, Transform};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Prefix mixed into every hashed value; default empty (not recommended).
    #[serde(default)]
    salt: String,
    /// Columns replaced by their salted SHA-256.
    #[serde(default)]
    sha256: Vec<String>,
    /// Columns replaced by `replacement`.
    #[serde(default)]
    redact: Vec<String>,
    /// Text written in place of redacted values.
    #[serde(default = "default_replacement")]
    replacement: String,
}

fn default_replacement() -> String {
    "REDACTED".to_string()
}

/// Salted SHA-256 of `value`, as 64 lowercase hex characters.
pub fn salted_sha256_hex(salt: &str, value: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(salt.as_bytes());
    hasher.update(value);
    hex::encode(hasher.finalize())
}

fn map_text(batch: &RecordBatch, name: &str, f: impl Fn(&[u8]) -> String) -> Result<Column, Error> {
    let column = batch.column(name)?;
    let rows = 0..batch.len();
    match &column.values {
        ColumnValues::Utf8(_) | ColumnValues::Binary(_) => {
            let view = column
                .as_utf8()
                .or_else(|| column.as_binary())
                .expect("matched above");
            Ok(Column::from_utf8(rows.map(|r| view.get_bytes(r).map(&f))))
        }
        ColumnValues::Int64(_) => {
            let view = column.as_int64().expect("matched above");
            Ok(Column::from_utf8(
                rows.map(|r| view.get(r).map(|v| f(v.to_string().as_bytes()))),
            ))
        }
        _ => Err(Error::InvalidInput(format!(
            "mask: column `{name}` must be utf8, binary or int64"
        ))),
    }
}

/// The `mask` plugin.
pub struct Mask;

impl Transform for Mask {
    fn transform(mut batch: RecordBatch) -> Result<RecordBatch, Error> {
        let config: Config = weir_sdk::config()?;
        for name in &config.sha256 {
            let column = map_text(&batch, name, |v| salted_sha256_hex(&config.salt, v))?;
            batch = batch.replace_column(name, column)?;
        }
        for name in &config.redact {
            let column = map_text(&batch, name, |_| config.replacement.clone())?;
            batch = batch.replace_column(name, column)?;
        }
        Ok(batch)
    }
}

weir_sdk::export_transform!(Mask);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_matches_the_fips_test_vector() {
        // FIPS 180-2 appendix B.1: SHA-256("abc").
        assert_eq!(
            salted_sha256_hex("a", b"bc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
