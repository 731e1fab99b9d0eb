//! How rejected rows become quarantine rows: the reason columns, the
//! records as JSON, a JSON Lines line ([`super::schema`] is the shape).

use std::borrow::Cow;
use std::io::Write;
use std::sync::Arc;

use anyhow::{Context, Result};
use arrow::array::{StringArray, StringViewArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;

use super::Reason;

/// Longest message repeated on every row of a failed batch, in bytes. A
/// longer one (a trap with the plugin's stderr) is stored whole on the
/// first row that has it and cut on the others, which say where the whole
/// text is: a plugin's stderr is not copied into each of 8,192 rows.
pub const MAX_REPEATED_MESSAGE_BYTES: usize = 256;

/// The message stored for each of `reasons`' rows (see
/// [`MAX_REPEATED_MESSAGE_BYTES`]); borrowed unless it had to be cut.
pub(super) fn stored_messages(reasons: &[Reason]) -> Vec<Cow<'_, str>> {
    let mut whole: Option<(&Arc<str>, usize)> = None;
    reasons
        .iter()
        .enumerate()
        .map(|(row, reason)| {
            let message = &*reason.message;
            if message.len() <= MAX_REPEATED_MESSAGE_BYTES {
                return Cow::Borrowed(message);
            }
            match whole {
                // The rows of one failed call share their message.
                Some((text, first)) if Arc::ptr_eq(text, &reason.message) || **text == *message => {
                    let cut = crate::plugin::head(message, MAX_REPEATED_MESSAGE_BYTES);
                    Cow::Owned(format!(
                        "{cut} [the whole message is on the quarantined row {} rows above, from the same failed call]",
                        row - first
                    ))
                }
                _ => {
                    whole = Some((&reason.message, row));
                    Cow::Borrowed(message)
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

/// The schema of the batches a Parquet quarantine encodes: [`schema`],
/// with the reason columns that rows share (all but `message` and
/// `record`) as string views ([`shared_strings`]). The file does not
/// record it (`skip_arrow_metadata`): its columns read back as [`schema`]
/// says, plain strings.
pub(super) fn parquet_batch_schema() -> SchemaRef {
    let plain = schema();
    Arc::new(Schema::new(
        plain
            .fields()
            .iter()
            .map(|field| match field.name().as_str() {
                "message" | "record" => field.as_ref().clone(),
                _ => field.as_ref().clone().with_data_type(DataType::Utf8View),
            })
            .collect::<Vec<_>>(),
    ))
}

/// A string column of `values` (`None`: null) in which consecutive rows
/// holding the same string (the same allocation: an `Arc<str>` the rows of
/// one stage or one failed call share, or one constant) store it once, as
/// Arrow string views pointing at one copy.
///
/// Rows × 1, any length. Built as plain strings, the reason columns copied
/// every shared string into every row (the plugin's SHA-256 alone is 64
/// bytes a row), about 225 bytes a row in all, for the Parquet encoder to
/// read and dictionary-encode back to one value.
///
/// # Errors
/// More than 4 GiB of distinct strings in one batch.
pub(super) fn shared_strings<'a>(
    values: impl Iterator<Item = Option<&'a str>>,
) -> Result<StringViewArray> {
    let (low, _) = values.size_hint();
    let mut views = Vec::with_capacity(low);
    let mut nulls = arrow::array::NullBufferBuilder::new(low);
    let mut data = Vec::new();
    let mut last: Option<(*const u8, usize, u128)> = None;
    for value in values {
        let Some(value) = value else {
            views.push(0);
            nulls.append_null();
            continue;
        };
        nulls.append_non_null();
        let view = match last {
            Some((ptr, len, view)) if ptr == value.as_ptr() && len == value.len() => view,
            _ => {
                let offset = u32::try_from(data.len())
                    .context("a quarantine batch's distinct reason strings exceed 4 GiB")?;
                if value.len() > 12 {
                    data.extend_from_slice(value.as_bytes());
                }
                let view = arrow::array::builder::make_view(value.as_bytes(), 0, offset);
                last = Some((value.as_ptr(), value.len(), view));
                view
            }
        };
        views.push(view);
    }
    // SAFETY: every view was made by `make_view` from a `&str` (valid
    // UTF-8), inline or pointing at the copy of it just appended to
    // `data`, buffer 0; a null's view is zero. `try_new` would check the
    // UTF-8 of every row's string again, 3% of a half-rejected run.
    Ok(unsafe {
        StringViewArray::new_unchecked(
            views.into(),
            vec![arrow::buffer::Buffer::from_vec(data)].into(),
            nulls.finish(),
        )
    })
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
/// writer produced (no parse and re-encode). The fields that rows of one
/// failed call share are encoded once per run of equal reasons.
pub(super) fn write_jsonl(
    out: &mut impl Write,
    run_id: &str,
    source_file: &str,
    reasons: &[Reason],
    messages: &[Cow<'_, str>],
    records: &JsonRecords,
) -> Result<()> {
    let mut head = Vec::new();
    let mut head_of: Option<&Reason> = None;
    for (i, (reason, message)) in reasons.iter().zip(messages).enumerate() {
        let same = head_of.is_some_and(|h| {
            Arc::ptr_eq(&h.stage, &reason.stage)
                && Arc::ptr_eq(&h.plugin, &reason.plugin)
                && Arc::ptr_eq(&h.plugin_sha256, &reason.plugin_sha256)
                && h.error_kind == reason.error_kind
        });
        if !same {
            head.clear();
            head.extend_from_slice(b"{\"run_id\":");
            serde_json::to_writer(&mut head, run_id)?;
            head.extend_from_slice(b",\"source_file\":");
            serde_json::to_writer(&mut head, source_file)?;
            head.extend_from_slice(b",\"stage\":");
            serde_json::to_writer(&mut head, &*reason.stage)?;
            head.extend_from_slice(b",\"plugin\":");
            serde_json::to_writer(&mut head, &*reason.plugin)?;
            head.extend_from_slice(b",\"plugin_sha256\":");
            serde_json::to_writer(&mut head, &*reason.plugin_sha256)?;
            head.extend_from_slice(b",\"error_kind\":");
            serde_json::to_writer(&mut head, &*reason.error_kind)?;
            head_of = Some(reason);
        }
        out.write_all(&head)?;
        out.write_all(b",\"rule\":")?;
        serde_json::to_writer(&mut *out, &reason.rule.as_deref())?;
        out.write_all(b",\"message\":")?;
        serde_json::to_writer(&mut *out, &**message)?;
        out.write_all(b",\"record\":")?;
        out.write_all(records.get(i))?;
        out.write_all(b"}\n")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Array;

    /// A shared-strings column reads back row by row as given: nulls,
    /// strings short enough to sit in their view, a long string shared by
    /// consecutive rows, and equal text in separate allocations.
    #[test]
    fn shared_strings_read_back_as_given() {
        let long: Arc<str> = Arc::from("f".repeat(64));
        let other_copy: Arc<str> = Arc::from("f".repeat(64));
        let short: Arc<str> = Arc::from("check");
        let rows: Vec<Option<&str>> = vec![
            Some(&long),
            Some(&long),
            None,
            Some(&short),
            Some(&other_copy),
            Some(&long),
            Some(""),
            None,
        ];
        let column = shared_strings(rows.iter().copied()).unwrap();
        assert_eq!(column.len(), rows.len());
        let read: Vec<Option<&str>> = column.iter().collect();
        assert_eq!(read, rows);
        assert_eq!(column.null_count(), 2);
        assert_eq!(
            column.data_buffers()[0].len(),
            3 * 64,
            "a run of one allocation is stored once"
        );
        let all_present = shared_strings(std::iter::repeat_n(Some(&*long), 5)).unwrap();
        assert!(all_present.nulls().is_none());
        assert_eq!(all_present.data_buffers()[0].len(), 64);
    }
}
