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
use weir_sdk::{Column, ColumnValues, Error, Output, RecordBatch, Splice, Transform, Utf8Builder};

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
    let mut out = Vec::with_capacity(64);
    write_salted_sha256_hex(&Sha256::new_with_prefix(salt.as_bytes()), value, &mut out);
    String::from_utf8(out).expect("hex is ASCII")
}

/// Appends the hex SHA-256 of the bytes already in `salted` followed by
/// `value` to `out`, with no allocation.
fn write_salted_sha256_hex(salted: &Sha256, value: &[u8], out: &mut Vec<u8>) {
    let digest = salted.clone().chain_update(value).finalize();
    let mut hex = [0u8; 64];
    hex::encode_to_slice(digest, &mut hex).expect("64 hex digits for 32 bytes");
    out.extend_from_slice(&hex);
}

/// A new `utf8` column: `write` appends each non-null value's replacement;
/// nulls stay null.
fn map_text(
    batch: &RecordBatch,
    name: &str,
    mut write: impl FnMut(&[u8], &mut Vec<u8>),
) -> Result<Column, Error> {
    let column = batch.column(name)?;
    let mut out = Utf8Builder::with_capacity(batch.len(), batch.len() * 64);
    let mut push = |value: Option<&[u8]>| match value {
        Some(value) => out.push_with(|buf| write(value, buf)),
        None => out.push_null(),
    };
    match &column.values {
        ColumnValues::Utf8(_) | ColumnValues::Binary(_) => {
            let view = column
                .as_utf8()
                .or_else(|| column.as_binary())
                .expect("matched above");
            (0..batch.len()).for_each(|r| push(view.get_bytes(r)));
        }
        ColumnValues::Int64(_) => {
            let view = column.as_int64().expect("matched above");
            (0..batch.len()).for_each(|r| {
                push(
                    view.get(r)
                        .map(|v| v.to_string())
                        .as_deref()
                        .map(str::as_bytes),
                )
            });
        }
        _ => {
            return Err(Error::InvalidInput(format!(
                "mask: column `{name}` must be utf8, binary or int64"
            )));
        }
    }
    Ok(out.finish())
}

/// The `mask` plugin.
pub struct Mask;

impl Transform for Mask {
    /// Only the masked columns cross into the plugin, and back.
    fn reads() -> Result<Option<Vec<String>>, Error> {
        let config: Config = weir_sdk::config()?;
        Ok(Some(
            config.sha256.into_iter().chain(config.redact).collect(),
        ))
    }

    fn transform(batch: RecordBatch) -> Result<Output, Error> {
        let config: Config = weir_sdk::config()?;
        let mut splice = Splice::new();
        for name in &config.sha256 {
            let salted = Sha256::new_with_prefix(config.salt.as_bytes());
            let column = map_text(&batch, name, |v, out| {
                write_salted_sha256_hex(&salted, v, out)
            })?;
            splice = splice.replace(&batch, name, column)?;
        }
        for name in &config.redact {
            let column = map_text(&batch, name, |_, out| {
                out.extend_from_slice(config.replacement.as_bytes())
            })?;
            splice = splice.replace(&batch, name, column)?;
        }
        Ok(splice.into())
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
