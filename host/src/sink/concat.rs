//! Concatenating the part files of several epochs into one output file,
//! without decoding, each format its own way (`parquet::concat` copies row
//! groups, `csv::concat` drops repeated headers, `jsonl::concat` appends).
//!
//! A single part is hard-linked instead of copied (the part stays for a
//! publish that a crash makes run again).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::config::SinkFormat;

/// Writes the concatenation of `parts` (files of one `format`, same
/// schema, in order) to `output` and fsyncs it. `output` must not exist.
///
/// # Errors
/// An unreadable part, parts whose Parquet schemas differ, or an I/O
/// error.
pub fn concat(format: SinkFormat, parts: &[PathBuf], output: &Path) -> Result<()> {
    if let Some(parent) = output.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    if let [only] = parts {
        std::fs::hard_link(only, output)
            .with_context(|| format!("linking {} to {}", only.display(), output.display()))?;
        return Ok(());
    }
    match format {
        SinkFormat::Parquet => super::parquet::concat(parts, output),
        SinkFormat::Csv => super::csv::concat(parts, output),
        SinkFormat::Jsonl => super::jsonl::concat(parts, output),
        SinkFormat::Postgres => anyhow::bail!("a PostgreSQL table has no parts to concatenate"),
        SinkFormat::Nats => anyhow::bail!("a NATS subject has no parts to concatenate"),
    }
    .with_context(|| format!("writing {}", output.display()))?;
    crate::durable::fsync_file(output)
}
