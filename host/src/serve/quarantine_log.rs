//! Reading back the serve-mode quarantine: a directory of
//! `part-PARTID.jsonl|parquet` files, one per micro-batch with rejects
//! (columns as in [`crate::quarantine`]).
//!
//! Every row gets a stable id, `PARTID:ROW` (row counted from 0 within its
//! part), used to filter, replay and remember what was replayed.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, Result};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::{Deserialize, Serialize};

/// One quarantined row.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QuarantineEntry {
    /// `PARTID:ROW`.
    pub id: String,
    /// The micro-batch (part) that rejected it.
    pub run_id: String,
    /// The request (`http:...`), dropped file or replay it came from.
    pub source_file: String,
    /// The stage that rejected it (`source` when it did not parse).
    pub stage: String,
    /// The stage's plugin.
    pub plugin: String,
    /// SHA-256 of the plugin version that rejected it.
    pub plugin_sha256: String,
    /// `validation`, `parse` or a plugin error kind.
    pub error_kind: String,
    /// Failed rule ids, for validation.
    pub rule: Option<String>,
    /// Why.
    pub message: String,
    /// The row as the stage received it.
    pub record: serde_json::Value,
    /// Whether it was already replayed.
    #[serde(default)]
    pub replayed: bool,
    /// When its micro-batch was quarantined (its part file was written),
    /// RFC 3339 UTC to the second.
    #[serde(default)]
    pub quarantined_at: String,
}

impl QuarantineEntry {
    /// Whether replaying it can work: rows that did not parse have no
    /// columns to replay.
    pub fn replayable(&self) -> bool {
        self.stage != "source"
    }
}

/// Which quarantined rows to list or replay; every given field must match.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuarantineFilter {
    /// Only rows rejected by this stage.
    pub stage: Option<String>,
    /// Only rows with this error kind.
    pub error_kind: Option<String>,
    /// Only rows whose failed rules include this rule id.
    pub rule: Option<String>,
    /// Only rows rejected by this plugin version (a SHA-256 prefix works).
    pub plugin_sha256: Option<String>,
    /// Only rows from this source (request id or file path).
    pub source_file: Option<String>,
    /// Only these ids.
    pub ids: Option<Vec<String>>,
    /// Only rows quarantined at or after this instant (RFC 3339).
    pub since: Option<String>,
    /// Only rows quarantined before this instant (RFC 3339).
    pub until: Option<String>,
    /// Also rows already replayed. Default false.
    #[serde(default)]
    pub include_replayed: bool,
    /// Rows to skip. Default 0.
    #[serde(default)]
    pub offset: usize,
    /// Rows to return at most. Default 100 (listing) or all (replay).
    pub limit: Option<usize>,
}

impl QuarantineFilter {
    /// `since` and `until` as instants (RFC 3339, the zone required: a
    /// time without one would be guessed).
    ///
    /// # Errors
    /// Either is not an RFC 3339 date-time (the message names it).
    pub fn window(&self) -> Result<(Option<SystemTime>, Option<SystemTime>), String> {
        let parse = |key: &str, value: &Option<String>| {
            value
                .as_deref()
                .map(|text| {
                    chrono::DateTime::parse_from_rfc3339(text.trim())
                        .map(SystemTime::from)
                        .map_err(|e| {
                            format!("{key}: `{text}` is not an RFC 3339 date-time with a zone ({e}); for example 2026-12-06T05:00:00Z or 2026-12-06T06:00:00+01:00")
                        })
                })
                .transpose()
        };
        Ok((parse("since", &self.since)?, parse("until", &self.until)?))
    }

    fn matches(&self, entry: &QuarantineEntry) -> bool {
        let eq = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        eq(&self.stage, &entry.stage)
            && eq(&self.error_kind, &entry.error_kind)
            && eq(&self.source_file, &entry.source_file)
            && self.rule.as_deref().is_none_or(|want| {
                entry
                    .rule
                    .as_deref()
                    .is_some_and(|rules| rules.split(',').any(|r| r == want))
            })
            && self
                .plugin_sha256
                .as_deref()
                .is_none_or(|want| entry.plugin_sha256.starts_with(want))
            && self.ids.as_ref().is_none_or(|ids| ids.contains(&entry.id))
            && (self.include_replayed || !entry.replayed)
    }
}

/// Quarantine part files in `dir`, oldest first (part ids sort by time
/// within one service run).
fn part_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("part-"))
        })
        .collect();
    files.sort_by_key(|p| {
        (
            p.metadata().and_then(|m| m.modified()).ok(),
            p.file_name().map(|n| n.to_owned()),
        )
    });
    Ok(files)
}

/// The rows in `dir` matching `filter`, after `offset`, at most `limit`;
/// and how many matched in all. `replayed` tells which ids were replayed.
///
/// # Errors
/// An unreadable directory or part file.
pub fn list(
    dir: &Path,
    filter: &QuarantineFilter,
    default_limit: usize,
    replayed: impl Fn(&str) -> bool,
) -> Result<(Vec<QuarantineEntry>, usize)> {
    let limit = filter.limit.unwrap_or(default_limit);
    let (since, until) = filter.window().map_err(anyhow::Error::msg)?;
    let mut matched = 0;
    let mut entries = Vec::new();
    for file in part_files(dir)? {
        // A part is written once, when its micro-batch commits: its time
        // is every row's.
        let written = file
            .metadata()
            .and_then(|m| m.modified())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        if since.is_some_and(|t| written < t) || until.is_some_and(|t| written >= t) {
            continue;
        }
        let quarantined_at = humantime::format_rfc3339_seconds(written).to_string();
        let part = file
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.strip_prefix("part-"))
            .unwrap_or_default()
            .to_string();
        for (row, mut fields) in read_part(&file)?.into_iter().enumerate() {
            let id = format!("{part}:{row}");
            fields.insert("id".into(), id.clone().into());
            fields.insert("replayed".into(), replayed(&id).into());
            fields.insert("quarantined_at".into(), quarantined_at.clone().into());
            let entry: QuarantineEntry = serde_json::from_value(serde_json::Value::Object(fields))
                .with_context(|| {
                    format!("{}: row {row} is not a quarantine row", file.display())
                })?;
            if filter.matches(&entry) {
                if matched >= filter.offset && entries.len() < limit {
                    entries.push(entry);
                }
                matched += 1;
            }
        }
    }
    Ok((entries, matched))
}

/// The rows of one part file as JSON objects, `record` parsed.
fn read_part(file: &Path) -> Result<Vec<serde_json::Map<String, serde_json::Value>>> {
    let mut rows = Vec::new();
    if file.extension().is_some_and(|e| e == "parquet") {
        let reader =
            ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(file)?)?.build()?;
        for batch in reader {
            let mut writer = arrow::json::ArrayWriter::new(Vec::new());
            writer.write(&batch?)?;
            writer.finish()?;
            let objects: Vec<serde_json::Map<String, serde_json::Value>> =
                serde_json::from_slice(&writer.into_inner())?;
            for mut object in objects {
                if let Some(serde_json::Value::String(text)) = object.get("record") {
                    let record = serde_json::from_str(text)?;
                    object.insert("record".into(), record);
                }
                rows.push(object);
            }
        }
    } else {
        let reader = std::io::BufReader::new(
            std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?,
        );
        for line in reader.lines() {
            let line = line?;
            if !line.trim().is_empty() {
                rows.push(
                    serde_json::from_str(&line)
                        .with_context(|| format!("reading {}", file.display()))?,
                );
            }
        }
    }
    Ok(rows)
}
