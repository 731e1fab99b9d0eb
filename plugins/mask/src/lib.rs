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
//! The hashing runs on the host, through the `hash` compute kernel
//! (`weir:plugin/compute`), where SHA-256 uses the CPU's SHA instructions;
//! WebAssembly has none, and hashing in the plugin made `mask` the slowest
//! stage of the flights example. The hashed columns therefore never cross
//! into the plugin: it reads only the columns it redacts.
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

use std::sync::OnceLock;

use serde::Deserialize;
use weir_sdk::compute::{self, Col, HashOp};
use weir_sdk::{
    Column, ColumnValues, DataType, Error, Output, RecordBatch, Splice, Transform, Utf8Builder,
};

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

/// The stage's configuration, read and parsed once per instance (it cannot
/// change while the instance lives).
fn config() -> Result<&'static Config, Error> {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    if let Some(config) = CONFIG.get() {
        return Ok(config);
    }
    let config: Config = weir_sdk::config()?;
    Ok(CONFIG.get_or_init(|| config))
}

/// Column `name` with every non-null value replaced by the salted SHA-256
/// in lowercase hex, computed by the host.
fn sha256_hex(name: &str, salt: &str) -> Result<Col, Error> {
    let column = Col::input(name)?;
    match column.info()?.data_type {
        DataType::Utf8 | DataType::Binary | DataType::Int64 => {
            column.hash(HashOp::Sha256Hex, salt.as_bytes())
        }
        _ => Err(wrong_type(name)),
    }
}

/// The error for a listed column of a type `mask` cannot take.
fn wrong_type(name: &str) -> Error {
    Error::InvalidInput(format!(
        "mask: column `{name}` must be utf8, binary or int64"
    ))
}

/// Column `name` with every non-null value replaced by `replacement`.
fn redacted(batch: &RecordBatch, name: &str, replacement: &str) -> Result<Column, Error> {
    let column = batch.column(name)?;
    if !matches!(
        column.values,
        ColumnValues::Utf8(_) | ColumnValues::Binary(_) | ColumnValues::Int64(_)
    ) {
        return Err(wrong_type(name));
    }
    let validity = column.validity.as_deref().map(weir_sdk::Bitmap::new);
    let mut out = Utf8Builder::with_capacity(batch.len(), batch.len() * replacement.len());
    for row in 0..batch.len() {
        if validity.is_none_or(|v| v.get(row)) {
            out.push_with(|buf| buf.extend_from_slice(replacement.as_bytes()));
        } else {
            out.push_null();
        }
    }
    Ok(out.finish())
}

/// The `mask` plugin.
pub struct Mask;

impl Transform for Mask {
    /// Only the redacted columns cross into the plugin; the hashed ones
    /// are reached through kernels and come back with `emit`.
    fn reads() -> Result<Option<Vec<String>>, Error> {
        Ok(Some(config()?.redact.clone()))
    }

    fn transform(batch: RecordBatch) -> Result<Output, Error> {
        let config = config()?;
        for name in &config.sha256 {
            compute::emit(name, &sha256_hex(name, &config.salt)?)?;
        }
        let mut splice = Splice::new();
        for name in &config.redact {
            let column = redacted(&batch, name, &config.replacement)?;
            splice = splice.replace(&batch, name, column)?;
        }
        Ok(splice.into())
    }
}

weir_sdk::export_transform!(Mask);
