//! A Parquet quarantine's reason columns, written as runs.
//!
//! Seven of the quarantine's nine columns (run id, source file, stage,
//! plugin, its SHA-256, error kind, rule) hold the same values for whole
//! runs of rows: every row of one failed call, often every row of a run.
//! Handed to parquet-rs as string columns, each row's value was hashed and
//! compared by the dictionary encoder's interner to find the one entry it
//! already had (about 12% of a run with half its 3M rows quarantined, with
//! building the columns). Here each column chunk is written from the runs
//! themselves: a dictionary page of the distinct values and one data page
//! of their indices, run-length encoded, in the layout parquet-rs writes
//! for a dictionary-encoded column (`RLE_DICTIONARY`, the Parquet format
//! specification's "Dictionary Encoding" and "Run Length Encoding /
//! Bit-Packing Hybrid"); the per-row work is gone. The chunks are spliced
//! into the row group beside the `message` and `record` columns that
//! parquet-rs encodes ([`parquet::file::writer::SerializedRowGroupWriter::append_column`]).

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::Bytes;
use parquet::basic::{Compression, Encoding};
use parquet::column::page::{CompressedPage, Page, PageWriter};
use parquet::column::writer::ColumnCloseResult;
use parquet::file::metadata::ColumnChunkMetaData;
use parquet::file::writer::{SerializedPageWriter, TrackedWrite};
use parquet::schema::types::ColumnDescPtr;

use crate::reason::Reasons;

/// How many reason columns a quarantine row has: every column of
/// [`super::schema`] but `message` and `record`, in its order.
pub(super) const REASON_COLUMNS: usize = 7;

/// The reason columns' values that a run of rows shares, in schema order
/// (`None`: null, only `rule` can be).
pub(super) type Head = [Option<Arc<str>>; REASON_COLUMNS];

/// Runs of rows with the same reason columns, in row order: each run's
/// values and its length in rows.
#[derive(Debug, Default)]
pub(super) struct ReasonRuns {
    runs: Vec<(Head, u32)>,
    rows: u64,
}

impl ReasonRuns {
    /// The runs of `reasons`' rows, all read from `source_file` by run
    /// `run_id`: the runs of their causes.
    pub(super) fn of(reasons: &Reasons, run_id: &Arc<str>, source_file: &Arc<str>) -> ReasonRuns {
        let mut runs = ReasonRuns::default();
        for (cause, rows) in reasons.causes() {
            runs.runs.push((
                [
                    Some(run_id.clone()),
                    Some(source_file.clone()),
                    Some(cause.stage.clone()),
                    Some(cause.plugin.clone()),
                    Some(cause.plugin_sha256.clone()),
                    Some(cause.error_kind.clone()),
                    cause.rule.clone(),
                ],
                rows,
            ));
        }
        runs.rows = reasons.len() as u64;
        runs
    }

    /// Appends `other`'s runs after these, joining the last run and the
    /// first of `other` when they share their values.
    pub(super) fn extend(&mut self, other: ReasonRuns) {
        let mut others = other.runs.into_iter();
        if let (Some((last, rows)), Some((first, first_rows))) =
            (self.runs.last_mut(), others.as_slice().first())
            && same_head(last, first)
        {
            *rows += first_rows;
            others.next();
        }
        self.runs.extend(others);
        self.rows += other.rows;
    }

    /// Rows in all runs.
    pub(super) fn rows(&self) -> u64 {
        self.rows
    }

    /// Reason column `column`'s runs: each value and how many rows hold it.
    fn column(&self, column: usize) -> impl Iterator<Item = (Option<&str>, u32)> {
        self.runs
            .iter()
            .map(move |(head, rows)| (head[column].as_deref(), *rows))
    }

    /// Reason column `column` (of the file's leaf columns, `descr`) as a
    /// Parquet column chunk, for
    /// [`parquet::file::writer::SerializedRowGroupWriter::append_column`].
    ///
    /// # Errors
    /// More than 4 GiB of distinct values or rows in a row group, or an
    /// error of parquet-rs' page writer.
    pub(super) fn column_chunk(
        &self,
        column: usize,
        descr: ColumnDescPtr,
    ) -> Result<(Bytes, ColumnCloseResult)> {
        column_chunk(self.column(column), descr)
    }
}

/// Whether two heads hold the same values (by allocation, as
/// [`ReasonRuns::of`] tells runs apart).
fn same_head(a: &Head, b: &Head) -> bool {
    a.iter().zip(b).all(|(a, b)| same_text(a, b))
}

/// Whether two optional strings are both null or the same allocation.
fn same_text(a: &Option<Arc<str>>, b: &Option<Arc<str>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

/// A dictionary-encoded column chunk of byte-array values given as runs
/// (`None`: null rows), uncompressed: a dictionary page (the distinct
/// values, `PLAIN`) and one version-1 data page (definition levels when the
/// column is nullable, then the values' dictionary indices), both in the
/// RLE/bit-packing hybrid encoding.
fn column_chunk<'a>(
    runs: impl Iterator<Item = (Option<&'a str>, u32)>,
    descr: ColumnDescPtr,
) -> Result<(Bytes, ColumnCloseResult)> {
    let too_large = "a quarantine row group's reason column exceeds 4 GiB";
    let mut dictionary: Vec<&str> = Vec::new();
    let mut index_of: HashMap<&str, u32> = HashMap::new();
    // Runs of definition levels (1: a value, 0: null) and of indices.
    let mut levels: Vec<(u32, u32)> = Vec::new();
    let mut indices: Vec<(u32, u32)> = Vec::new();
    let mut rows: u32 = 0;
    let mut value_bytes: u64 = 0;
    for (value, run) in runs {
        if run == 0 {
            continue;
        }
        rows = rows.checked_add(run).context(too_large)?;
        push_run(&mut levels, u32::from(value.is_some()), run);
        if let Some(value) = value {
            let next = u32::try_from(dictionary.len()).context(too_large)?;
            let index = *index_of.entry(value).or_insert_with(|| {
                dictionary.push(value);
                next
            });
            push_run(&mut indices, index, run);
            value_bytes += value.len() as u64 * u64::from(run);
        }
    }

    let mut dictionary_page = Vec::new();
    for value in &dictionary {
        let len = u32::try_from(value.len()).context(too_large)?;
        dictionary_page.extend_from_slice(&len.to_le_bytes());
        dictionary_page.extend_from_slice(value.as_bytes());
    }
    let mut data_page = Vec::new();
    if descr.max_def_level() > 0 {
        let mut encoded = Vec::new();
        hybrid(&mut encoded, 1, &levels);
        let len = u32::try_from(encoded.len()).context(too_large)?;
        data_page.extend_from_slice(&len.to_le_bytes());
        data_page.extend_from_slice(&encoded);
    }
    let bit_width = bits_for(dictionary.len().saturating_sub(1) as u64);
    data_page.push(bit_width);
    hybrid(&mut data_page, bit_width, &indices);

    let mut out = TrackedWrite::new(Vec::new());
    let (dictionary_spec, data_spec) = {
        let mut pages = SerializedPageWriter::new(&mut out);
        let dictionary_len = dictionary_page.len();
        let dictionary_spec = pages.write_page(CompressedPage::new(
            Page::DictionaryPage {
                buf: Bytes::from(dictionary_page),
                num_values: u32::try_from(dictionary.len()).context(too_large)?,
                encoding: Encoding::PLAIN,
                is_sorted: false,
            },
            dictionary_len,
        ))?;
        let data_len = data_page.len();
        let data_spec = pages.write_page(CompressedPage::new(
            Page::DataPage {
                buf: Bytes::from(data_page),
                num_values: rows,
                encoding: Encoding::RLE_DICTIONARY,
                def_level_encoding: Encoding::RLE,
                rep_level_encoding: Encoding::RLE,
                statistics: None,
            },
            data_len,
        ))?;
        pages.close()?;
        (dictionary_spec, data_spec)
    };
    let bytes = Bytes::from(out.into_inner()?);
    let compressed = (dictionary_spec.compressed_size + data_spec.compressed_size) as i64;
    let uncompressed = (dictionary_spec.uncompressed_size + data_spec.uncompressed_size) as i64;
    let metadata = ColumnChunkMetaData::builder(descr)
        .set_compression(Compression::UNCOMPRESSED)
        .set_encodings(vec![
            Encoding::PLAIN,
            Encoding::RLE,
            Encoding::RLE_DICTIONARY,
        ])
        .set_num_values(i64::from(rows))
        .set_total_compressed_size(compressed)
        .set_total_uncompressed_size(uncompressed)
        .set_dictionary_page_offset(Some(dictionary_spec.offset as i64))
        .set_data_page_offset(data_spec.offset as i64)
        .set_unencoded_byte_array_data_bytes(Some(value_bytes as i64))
        .build()?;
    let close = ColumnCloseResult {
        bytes_written: bytes.len() as u64,
        rows_written: u64::from(rows),
        metadata,
        bloom_filter: None,
        column_index: None,
        offset_index: None,
    };
    Ok((bytes, close))
}

/// Appends a run of `count` copies of `value`, joined to the last run when
/// it holds the same value.
fn push_run(runs: &mut Vec<(u32, u32)>, value: u32, count: u32) {
    match runs.last_mut() {
        Some((last, rows)) if *last == value => *rows += count,
        _ => runs.push((value, count)),
    }
}

/// Bits needed for values up to `max` (0 for 0).
fn bits_for(max: u64) -> u8 {
    (64 - max.leading_zeros()) as u8
}

/// Values per bit-packed group of the hybrid encoding (the format's 8).
const GROUP: usize = 8;

/// Groups in one bit-packed run at most: 63, as parquet-rs and Arrow C++
/// write, so that the run's header fits one byte.
const MAX_GROUPS_PER_RUN: usize = 63;

/// Writes `runs` (value, count) of `bit_width`-bit values in the
/// RLE/bit-packing hybrid encoding, without its length prefix: as RLE
/// runs when the runs are long (8 rows or more on average, or the values
/// take no bits), else bit-packed, each value in `bit_width` bits, least
/// significant bit first, the last group padded with zeros.
fn hybrid(out: &mut Vec<u8>, bit_width: u8, runs: &[(u32, u32)]) {
    let values: u64 = runs.iter().map(|&(_, count)| u64::from(count)).sum();
    if values == 0 {
        return;
    }
    let value_bytes = usize::from(bit_width).div_ceil(8);
    if bit_width == 0 || values >= GROUP as u64 * runs.len() as u64 {
        for &(value, count) in runs {
            varint(out, u64::from(count) << 1);
            out.extend_from_slice(&value.to_le_bytes()[..value_bytes]);
        }
        return;
    }
    let mut expanded = runs
        .iter()
        .flat_map(|&(value, count)| std::iter::repeat_n(value, count as usize))
        .peekable();
    let width = u32::from(bit_width);
    while expanded.peek().is_some() {
        let run: Vec<u32> = expanded.by_ref().take(GROUP * MAX_GROUPS_PER_RUN).collect();
        let groups = run.len().div_ceil(GROUP);
        varint(out, ((groups as u64) << 1) | 1);
        let start = out.len();
        out.resize(start + groups * usize::from(bit_width), 0);
        for (i, value) in run.into_iter().enumerate() {
            let bit = i as u64 * u64::from(width);
            for b in 0..width {
                if value >> b & 1 == 1 {
                    let at = bit + u64::from(b);
                    out[start + (at / 8) as usize] |= 1 << (at % 8);
                }
            }
        }
    }
}

/// ULEB128, as the hybrid encoding's run headers are written.
fn varint(out: &mut Vec<u8>, mut value: u64) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both shapes of the hybrid encoding, byte for byte as the format
    /// specification lays them out.
    #[test]
    fn the_hybrid_encoding_is_laid_out_as_the_format_says() {
        let mut out = Vec::new();
        hybrid(&mut out, 3, &[(5, 300)]);
        // RLE: header 300 << 1 = 600 as ULEB128 (0xd8 0x04), the value in
        // one byte.
        assert_eq!(out, [0xd8, 0x04, 5]);
        out.clear();
        hybrid(&mut out, 0, &[(0, 1000)]);
        assert_eq!(out, [0xd0, 0x0f]);
        out.clear();
        // Bit-packed (short runs): values 0..8 in 3 bits each, LSB first;
        // the format's own example.
        let runs: Vec<(u32, u32)> = (0..8).map(|v| (v, 1)).collect();
        hybrid(&mut out, 3, &runs);
        assert_eq!(out, [0b11, 0b1000_1000, 0b1100_0110, 0b1111_1010]);
    }

    /// One column chunk per shape of runs, alone in a file, reads back
    /// with parquet-rs row by row as given: nulls and values in long and
    /// short runs, every row null (an empty dictionary), 300 distinct
    /// values (9-bit indices), more than one bit-packed run's 504 values.
    #[test]
    fn column_chunks_read_back_as_their_runs() {
        use arrow::array::AsArray;
        use parquet::file::properties::WriterProperties;
        use parquet::file::writer::SerializedFileWriter;

        let names: Vec<String> = (0..300).map(|i| format!("value-{i}")).collect();
        let shapes: Vec<Vec<(Option<&str>, u32)>> = vec![
            vec![
                (Some("a"), 10_000),
                (None, 3),
                (Some("b"), 1),
                (Some("a"), 20),
            ],
            (0..2_000)
                .map(|i| ([Some("x"), None, Some("y")][i % 3], 1))
                .collect(),
            vec![(None, 700)],
            names
                .iter()
                .map(|n| (Some(n.as_str()), 1 + (n.len() as u32 % 2)))
                .collect(),
            vec![(Some(""), 5)],
        ];
        for (shape, runs) in shapes.iter().enumerate() {
            for nullable in [true, false] {
                if !nullable && runs.iter().any(|(v, _)| v.is_none()) {
                    continue;
                }
                let repetition = if nullable { "optional" } else { "required" };
                let schema = Arc::new(
                    parquet::schema::parser::parse_message_type(&format!(
                        "message m {{ {repetition} binary v (STRING); }}"
                    ))
                    .unwrap(),
                );
                let mut out = Vec::new();
                let mut file = SerializedFileWriter::new(
                    &mut out,
                    schema,
                    Arc::new(WriterProperties::builder().build()),
                )
                .unwrap();
                let descr = file.schema_descr().column(0);
                let (bytes, close) = column_chunk(runs.iter().copied(), descr).unwrap();
                let mut row_group = file.next_row_group().unwrap();
                row_group.append_column(&bytes, close).unwrap();
                row_group.close().unwrap();
                file.close().unwrap();
                let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReader::try_new(
                    Bytes::from(out),
                    1000,
                )
                .unwrap();
                let mut read: Vec<Option<String>> = Vec::new();
                for batch in reader {
                    let batch = batch.unwrap();
                    let column = batch.column(0);
                    let column =
                        arrow::compute::cast(column, &arrow::datatypes::DataType::Utf8).unwrap();
                    read.extend(
                        column
                            .as_string::<i32>()
                            .iter()
                            .map(|v| v.map(str::to_string)),
                    );
                }
                let expected: Vec<Option<String>> = runs
                    .iter()
                    .flat_map(|(v, n)| std::iter::repeat_n(v.map(str::to_string), *n as usize))
                    .collect();
                assert_eq!(read, expected, "shape {shape}, nullable {nullable}");
            }
        }
    }
}
