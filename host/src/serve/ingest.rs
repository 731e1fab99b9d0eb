//! Request bodies and dropped files as source items.
//!
//! The body's format comes from its `Content-Type` (a dropped file's from
//! its extension); its records are decoded into the pipeline's source
//! schema by the same readers `weir run` uses, so a record that does not
//! parse is quarantined with its text and number while the others go on.

use std::path::Path;
use std::sync::Arc;

use crate::config::SourceFormat;
use crate::source::{DecodedBody, Source};

/// Formats a request body or dropped file may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    /// `text/csv`: the pipeline's CSV dialect (header line, delimiter,
    /// quote, null values).
    Csv,
    /// `application/x-ndjson` (also `application/jsonl`,
    /// `application/json-lines`): one JSON object per line.
    JsonLines,
    /// `application/json`: an array of objects, or one object.
    JsonArray,
    /// `application/vnd.apache.parquet`: a Parquet file of the source schema.
    Parquet,
}

/// Content types [`BodyFormat::from_content_type`] accepts, for error messages.
pub const ACCEPTED_CONTENT_TYPES: &str =
    "text/csv, application/x-ndjson, application/json, application/vnd.apache.parquet";

impl BodyFormat {
    /// The format a `Content-Type` header names (parameters such as
    /// `; charset=utf-8` are ignored); `None` when unsupported.
    pub fn from_content_type(content_type: &str) -> Option<BodyFormat> {
        let essence = content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        match essence.as_str() {
            "text/csv" => Some(BodyFormat::Csv),
            "application/x-ndjson"
            | "application/jsonl"
            | "application/json-lines"
            | "application/x-jsonlines" => Some(BodyFormat::JsonLines),
            "application/json" => Some(BodyFormat::JsonArray),
            "application/vnd.apache.parquet" | "application/x-parquet" => Some(BodyFormat::Parquet),
            _ => None,
        }
    }

    /// The format a file's extension names: `.csv`, `.jsonl` / `.ndjson`,
    /// `.json`, `.parquet`; `None` otherwise.
    pub fn from_path(path: &Path) -> Option<BodyFormat> {
        match path.extension()?.to_str()? {
            "csv" => Some(BodyFormat::Csv),
            "jsonl" | "ndjson" => Some(BodyFormat::JsonLines),
            "json" => Some(BodyFormat::JsonArray),
            "parquet" => Some(BodyFormat::Parquet),
            _ => None,
        }
    }

    /// Decodes `bytes` into items of `source`'s schema, named `name` in the
    /// quarantine's `source_file` column. A JSON array's elements keep
    /// their own text and are numbered by their index.
    ///
    /// # Errors
    /// A body that cannot be split into records at all: JSON that is not an
    /// array or object, a CSV line with the wrong number of fields or a
    /// header that does not match the schema, a Parquet file that is not
    /// one or has another schema.
    pub fn decode(
        self,
        source: &Source,
        name: Arc<str>,
        bytes: bytes::Bytes,
    ) -> anyhow::Result<DecodedBody> {
        let format = match self {
            BodyFormat::Csv => SourceFormat::Csv,
            BodyFormat::JsonLines => SourceFormat::Jsonl,
            BodyFormat::JsonArray => SourceFormat::Json,
            BodyFormat::Parquet => SourceFormat::Parquet,
        };
        source.decode_bytes(name, format, bytes)
    }
}
