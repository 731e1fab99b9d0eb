//! JSON Lines decoding that quarantines malformed lines instead of failing
//! the run.
//!
//! Up to `batch_size` lines are decoded together with arrow-json's
//! [`Decoder`]. When that fails (a line that is not JSON, or a value that
//! does not fit its column), the batch's lines are decoded again one at a
//! time: lines that decode go on as a batch, the others are rejected with
//! arrow's message, their text and their line number (1-based). Blank lines
//! are skipped. Before any of that, each line goes through
//! [`check_record`]: a line nested too deep for arrow's recursive code, or
//! with a number its column cannot hold, is rejected without reaching the
//! decoder, and its fields that are not columns are counted (and, as the
//! source's `unknown_fields` says, ignored, quarantined or fatal).
//!
//! The same reader decodes the elements of a JSON array body (`weir
//! serve`), one element per line; they are then numbered and named by
//! their index in the array ([`Numbering::ArrayElements`]).

use std::io::{BufRead, BufReader, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Result, bail};
use arrow::datatypes::SchemaRef;
use arrow::json::reader::Decoder;
use arrow::record_batch::RecordBatch;

use super::json_check::{Columns, check_record};
use super::recovery::{Decoded, NextBatch, Recovered};
use crate::config::UnknownFields;

/// How the records of the input are numbered in messages and in the
/// quarantine's `record_number`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Numbering {
    /// File lines, from 1 (blank lines counted).
    Lines,
    /// Elements of a JSON array, from 0, one per line of the input.
    ArrayElements,
}

impl Numbering {
    /// "line 3" or "element 2" for input line `line` (1-based).
    fn name(self, line: u64) -> String {
        match self {
            Numbering::Lines => format!("line {line}"),
            Numbering::ArrayElements => format!("element {}", line - 1),
        }
    }

    fn number(self, line: u64) -> u64 {
        match self {
            Numbering::Lines => line,
            Numbering::ArrayElements => line - 1,
        }
    }
}

/// A JSON document (an array of objects, or one object) as JSON Lines:
/// each element's own text on one line, in order, so its parse errors
/// quote what the client sent and name its index
/// ([`Numbering::ArrayElements`]). Line breaks inside an element are
/// whitespace (JSON strings cannot hold a raw one), so they become spaces.
///
/// # Errors
/// Input that is not JSON (serde_json's nesting limit of 128 included), or
/// a document that is neither an array nor an object.
pub fn array_as_lines(bytes: &[u8]) -> Result<Vec<u8>> {
    let document: &serde_json::value::RawValue =
        serde_json::from_slice(bytes).map_err(|e| anyhow::anyhow!("the input is not JSON: {e}"))?;
    let text = document.get().trim_start();
    let elements: Vec<&serde_json::value::RawValue> = match text.as_bytes().first() {
        Some(b'[') => serde_json::from_str(text)?,
        Some(b'{') => vec![document],
        first => bail!(
            "expected an array of objects or one object, found {}",
            match first {
                Some(b'"') => "a string",
                Some(b't' | b'f') => "a boolean",
                Some(b'n') => "null",
                _ => "a number",
            }
        ),
    };
    let mut lines = Vec::with_capacity(bytes.len() + elements.len());
    for element in elements {
        lines.extend(
            element
                .get()
                .bytes()
                .map(|b| if b == b'\n' || b == b'\r' { b' ' } else { b }),
        );
        lines.push(b'\n');
    }
    Ok(lines)
}

/// How a JSON Lines reader treats what is not in the schema.
#[derive(Debug, Clone)]
pub struct Options {
    /// Fields that are not columns: ignored, quarantined or fatal.
    pub unknown_fields: UnknownFields,
    /// Counts the fields that were not columns (in records let through).
    pub unknown_count: Arc<AtomicU64>,
    /// How records are numbered.
    pub numbering: Numbering,
    /// Date and timestamp columns read as text and converted.
    pub dates: super::dates::DateFormats,
}

/// The lines of one JSON Lines file, decoded batch by batch.
pub struct JsonLines {
    reader: BufReader<Box<dyn Read + Send>>,
    schema: SchemaRef,
    /// `schema` as the decoder reads it (formatted dates as text).
    read_schema: SchemaRef,
    columns: Columns,
    options: Options,
    batch_size: usize,
    file: Arc<str>,
    /// Lines read so far, blank ones included (for line numbers).
    line: u64,
}

/// A line (text, line number).
type Line = (Vec<u8>, u64);

impl JsonLines {
    /// Reads `file` as JSON Lines of `schema`.
    pub fn open(
        file: Box<dyn Read + Send>,
        name: Arc<str>,
        schema: SchemaRef,
        batch_size: usize,
        options: Options,
    ) -> JsonLines {
        JsonLines {
            reader: BufReader::with_capacity(1 << 20, file),
            columns: Columns::of(&schema),
            read_schema: options.dates.read_schema(&schema),
            schema,
            options,
            batch_size,
            file: name,
            line: 0,
        }
    }

    fn decoder(&self, batch_size: usize) -> Result<Decoder> {
        Ok(arrow::json::ReaderBuilder::new(self.read_schema.clone())
            .with_batch_size(batch_size)
            .build_decoder()?)
    }

    /// Decodes `lines` together into the source schema (formatted dates
    /// converted); `Err` when any fails.
    fn decode_all(&self, lines: &[Line]) -> Result<Option<RecordBatch>> {
        let mut decoder = self.decoder(lines.len().max(1))?;
        for (text, _) in lines {
            decoder.decode(text)?;
            decoder.decode(b"\n")?;
        }
        match decoder.flush()? {
            Some(batch) => Ok(Some(
                self.options
                    .dates
                    .convert(batch, &self.schema)
                    .map_err(anyhow::Error::msg)?,
            )),
            None => Ok(None),
        }
    }

    /// Decodes `lines` in ever smaller ranges until each line that fails
    /// is alone, and rejects those; `refused` (line number, text, reason)
    /// failed [`check_record`] and are rejected as they are. `failed` is
    /// the error of decoding all of `lines` together, when already known.
    fn recover(
        &self,
        lines: Vec<Line>,
        refused: Vec<(u64, Vec<u8>, String)>,
        failed: Option<anyhow::Error>,
    ) -> Result<Vec<Decoded>> {
        let numbering = self.options.numbering;
        let mut recovered = Recovered::default();
        for (line, text, reason) in refused {
            recovered.rejected(
                numbering.number(line),
                String::from_utf8_lossy(&text).into_owned(),
                format!("{} is refused: {reason}", numbering.name(line)),
            );
        }
        // Halve the failing range until the lines that fail are alone: a
        // batch with one bad line costs about 2·log2(lines) decodes, not
        // one decoder per line. Ranges are taken in order, so the good
        // lines keep their order.
        let mut pending = vec![(0..lines.len(), failed)];
        while let Some((range, known_failure)) = pending.pop() {
            if range.is_empty() {
                continue;
            }
            let failure = match known_failure {
                Some(error) => error,
                None => match self.decode_all(&lines[range.clone()]) {
                    Ok(Some(batch)) => {
                        recovered.parsed(batch);
                        continue;
                    }
                    Ok(None) => continue,
                    Err(error) => error,
                },
            };
            if range.len() == 1 {
                let (text, line) = &lines[range.start];
                let message = format!(
                    "{} cannot be parsed: {}",
                    numbering.name(*line),
                    crate::plugin::head(&failure.to_string(), MAX_PARSE_MESSAGE_BYTES)
                );
                recovered.rejected(
                    numbering.number(*line),
                    String::from_utf8_lossy(text).into_owned(),
                    message,
                );
                continue;
            }
            let middle = range.start + range.len() / 2;
            // The stack is last-in first-out: push the second half first.
            pending.push((middle..range.end, None));
            pending.push((range.start..middle, None));
        }
        recovered.finish(&self.schema, &self.file)
    }
}

/// Longest decoder message kept in a rejected record's reason, in bytes:
/// arrow quotes the value, which may be the whole line (its text is in
/// the record anyway).
const MAX_PARSE_MESSAGE_BYTES: usize = 512;

impl NextBatch for JsonLines {
    fn next_batch(&mut self) -> Result<Option<Vec<Decoded>>> {
        let mut lines = Vec::with_capacity(self.batch_size);
        let mut refused = Vec::new();
        let mut buf = Vec::new();
        let mut unknown = 0u64;
        while lines.len() + refused.len() < self.batch_size {
            buf.clear();
            if self.reader.read_until(b'\n', &mut buf)? == 0 {
                break;
            }
            self.line += 1;
            let text = buf.trim_ascii();
            if text.is_empty() {
                continue;
            }
            if self.line == 1
                && self.options.numbering == Numbering::Lines
                && text.starts_with(b"[")
            {
                bail!(
                    "line 1 starts with `[`: this looks like a JSON array, not JSON Lines (one object per line); use format = \"json\" for a file, or Content-Type application/json for a request body"
                );
            }
            match check_record(text, &self.columns) {
                Ok(found) if found.unknown_fields == 0 => lines.push((text.to_vec(), self.line)),
                Ok(found) => {
                    unknown += u64::from(found.unknown_fields);
                    let first = found.first_unknown.unwrap_or_default();
                    let first = crate::plugin::head(&first, 128);
                    match self.options.unknown_fields {
                        UnknownFields::Ignore => lines.push((text.to_vec(), self.line)),
                        UnknownFields::Quarantine => refused.push((
                            self.line,
                            text.to_vec(),
                            format!(
                                "field `{first}` is not a column of the source schema (unknown_fields = \"quarantine\")"
                            ),
                        )),
                        UnknownFields::Error => bail!(
                            "{} has field `{first}`, which is not a column of the source schema; set unknown_fields = \"ignore\" or \"quarantine\" in [source] to accept such records",
                            self.options.numbering.name(self.line)
                        ),
                    }
                }
                Err(reason) => refused.push((self.line, text.to_vec(), reason)),
            }
        }
        self.options
            .unknown_count
            .fetch_add(unknown, Ordering::Relaxed);
        if lines.is_empty() && refused.is_empty() {
            return Ok(None);
        }
        if !refused.is_empty() {
            return Ok(Some(self.recover(lines, refused, None)?));
        }
        match self.decode_all(&lines) {
            Ok(batch) => Ok(Some(batch.map(Decoded::Batch).into_iter().collect())),
            Err(error) => Ok(Some(self.recover(lines, Vec::new(), Some(error))?)),
        }
    }
}
