//! How rejected rows become quarantine rows: the reason columns, the
//! records as JSON, a JSON Lines line ([`super::schema`] is the shape).

use std::borrow::Cow;
use std::io::Write;
use std::sync::Arc;

use anyhow::{Context, Result};
use arrow::array::StringArray;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;

use crate::reason::{Message, Reasons};

/// Longest message repeated on every row of a failed batch, in bytes. A
/// longer one (a trap with the plugin's stderr) is stored whole on the
/// first row that has it and cut on the others, which say where the whole
/// text is: a plugin's stderr is not copied into each of 8,192 rows.
pub const MAX_REPEATED_MESSAGE_BYTES: usize = 256;

/// The message stored for each of `reasons`' rows (see
/// [`MAX_REPEATED_MESSAGE_BYTES`]), with the values of known secrets cut
/// when `redact` ([`crate::secrets::redact`]: a plugin may echo a secret
/// into its message); borrowed unless it had to be changed.
pub(super) fn stored_messages(reasons: &Reasons, redact: bool) -> Vec<Cow<'_, str>> {
    let mut messages = cut_messages(reasons);
    if redact {
        for message in &mut messages {
            if let Cow::Owned(redacted) = crate::secrets::redact(message) {
                *message = Cow::Owned(redacted);
            }
        }
    }
    messages
}

/// Each row's message, cut where it repeats a long one.
fn cut_messages(reasons: &Reasons) -> Vec<Cow<'_, str>> {
    // The last long message stored whole: its text and row.
    let mut whole: Option<(&str, usize)> = None;
    reasons
        .messages()
        .enumerate()
        .map(|(row, message)| {
            let text = message.text();
            if text.len() <= MAX_REPEATED_MESSAGE_BYTES {
                return Cow::Borrowed(text);
            }
            // The rows of one failed call share their message.
            let repeated = match (whole, message) {
                (Some(_), Message::Shared(_, position)) if position > 0 => true,
                (Some((before, _)), _) => before == text,
                (None, _) => false,
            };
            match whole {
                Some((_, first)) if repeated => {
                    let cut = crate::plugin::head(text, MAX_REPEATED_MESSAGE_BYTES);
                    Cow::Owned(format!(
                        "{cut} [the whole message is on the quarantined row {} rows above, from the same failed call]",
                        row - first
                    ))
                }
                _ => {
                    whole = Some((text, row));
                    Cow::Borrowed(text)
                }
            }
        })
        .collect()
}

/// The quarantine's Arrow schema (see the module docs).
pub fn schema() -> SchemaRef {
    let utf8 = |name: &str, nullable| Field::new(name, DataType::Utf8, nullable);
    Arc::new(Schema::new(vec![
        utf8("run_id", false),
        utf8("source_file", false),
        utf8("stage", false),
        utf8("plugin", false),
        utf8("plugin_sha256", false),
        utf8("error_kind", false),
        utf8("rule", true),
        utf8("message", false),
        utf8("record", false),
    ]))
}

/// Each row of `rows` as a JSON object with explicit nulls.
///
/// # Errors
/// A column arrow's JSON writer cannot encode.
pub fn rows_as_json(rows: &RecordBatch) -> Result<Vec<String>> {
    let records = JsonRecords::encode(rows)?;
    Ok((0..records.len())
        .map(|i| String::from_utf8_lossy(records.get(i)).into_owned())
        .collect())
}

/// The rows of a batch as JSON objects (explicit nulls), encoded one
/// after another by arrow's JSON encoder into one buffer, laid out as a
/// string column: object `i` is `text[offsets[i]..offsets[i + 1]]`. The
/// Parquet quarantine takes the buffer as its `record` column without a
/// copy; the JSON Lines one writes each object into its line.
pub(super) struct JsonRecords {
    /// The objects, back to back.
    pub(super) text: Vec<u8>,
    /// Where each object starts in `text`, plus `text.len()`.
    offsets: Vec<i32>,
}

impl JsonRecords {
    pub(super) fn encode(rows: &RecordBatch) -> Result<JsonRecords> {
        let options = arrow::json::writer::EncoderOptions::default().with_explicit_nulls(true);
        let array = arrow::array::StructArray::from(rows.clone());
        let field = Arc::new(Field::new_struct(
            "record",
            rows.schema().fields().clone(),
            false,
        ));
        let mut encoder = arrow::json::writer::make_encoder(&field, &array, &options)?;
        let mut text = Vec::with_capacity(rows.num_rows() * 64);
        let mut offsets = Vec::with_capacity(rows.num_rows() + 1);
        offsets.push(0);
        for row in 0..rows.num_rows() {
            encoder.encode(row, &mut text);
            offsets.push(
                i32::try_from(text.len())
                    .context("a batch's quarantined records exceed 2 GiB of JSON")?,
            );
        }
        Ok(JsonRecords { text, offsets })
    }

    /// The records with every secret value redacted
    /// ([`crate::secrets::redact`]).
    pub(super) fn redacted(self) -> Result<JsonRecords> {
        let mut text = Vec::with_capacity(self.text.len());
        let mut offsets = Vec::with_capacity(self.offsets.len());
        offsets.push(0);
        for i in 0..self.len() {
            let row = String::from_utf8_lossy(self.get(i));
            text.extend_from_slice(crate::secrets::redact(&row).as_bytes());
            offsets.push(
                i32::try_from(text.len())
                    .context("a batch's quarantined records exceed 2 GiB of JSON")?,
            );
        }
        Ok(JsonRecords { text, offsets })
    }

    fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    /// Row `i`'s object.
    fn get(&self, i: usize) -> &[u8] {
        &self.text[self.offsets[i] as usize..self.offsets[i + 1] as usize]
    }

    /// The objects as a string column, without copying them.
    ///
    /// # Errors
    /// Text that is not UTF-8 (arrow's JSON encoder writes UTF-8).
    pub(super) fn into_column(self) -> Result<StringArray> {
        Ok(StringArray::try_new(
            arrow::buffer::OffsetBuffer::new(self.offsets.into()),
            arrow::buffer::Buffer::from_vec(self.text),
            None,
        )?)
    }
}

/// Writes one JSON Lines quarantine row per reason, field by field in the
/// schema's order, with the record embedded as the object arrow's JSON
/// writer produced (no parse and re-encode). The fields that a run of rows
/// with one cause shares are encoded once per run.
pub(super) fn write_jsonl(
    out: &mut impl Write,
    run_id: &str,
    source_file: &str,
    reasons: &Reasons,
    messages: &[Cow<'_, str>],
    records: &JsonRecords,
) -> Result<()> {
    let mut head = Vec::new();
    let mut row = 0;
    for (cause, rows) in reasons.causes() {
        head.clear();
        head.extend_from_slice(b"{\"run_id\":");
        serde_json::to_writer(&mut head, run_id)?;
        head.extend_from_slice(b",\"source_file\":");
        serde_json::to_writer(&mut head, source_file)?;
        head.extend_from_slice(b",\"stage\":");
        serde_json::to_writer(&mut head, &*cause.stage)?;
        head.extend_from_slice(b",\"plugin\":");
        serde_json::to_writer(&mut head, &*cause.plugin)?;
        head.extend_from_slice(b",\"plugin_sha256\":");
        serde_json::to_writer(&mut head, &*cause.plugin_sha256)?;
        head.extend_from_slice(b",\"error_kind\":");
        serde_json::to_writer(&mut head, &*cause.error_kind)?;
        head.extend_from_slice(b",\"rule\":");
        serde_json::to_writer(&mut head, &cause.rule.as_deref())?;
        head.extend_from_slice(b",\"message\":");
        for _ in 0..rows {
            out.write_all(&head)?;
            serde_json::to_writer(&mut *out, &*messages[row])?;
            out.write_all(b",\"record\":")?;
            out.write_all(records.get(row))?;
            out.write_all(b"}\n")?;
            row += 1;
        }
    }
    Ok(())
}
