//! CSV decoding that quarantines malformed records instead of failing the run.
//!
//! Batches are decoded with arrow-csv's [`Decoder`] as usual. When a batch
//! fails to parse (a value that is not of its column's type), its raw bytes
//! are decoded again one record at a time: records that parse go on as a
//! batch, the others are rejected with arrow's message, their text and their
//! record number (1-based, header excluded). Only the failing batch pays for
//! the second pass.
//!
//! A record with the wrong number of fields fails inside arrow's record
//! splitter, where the bytes it consumed are unknown; that stays a fatal
//! error naming the line.
//!
//! With a header line, columns are matched **by name**: a file whose
//! columns come in another order is read into the right columns. A header
//! that lacks a schema column, or names one the schema does not have, is
//! an error naming the columns, unless the source's `missing_columns =
//! "null"` (the column is all nulls) or `extra_columns = "ignore"` allows
//! it. Without a header, columns are taken by position.

use std::io::{BufRead, BufReader, Read};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use arrow::array::{ArrayRef, new_null_array};
use arrow::csv::reader::Decoder;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;

use crate::config::{ExtraColumns, MissingColumns};

use super::recovery::{Decoded, NextBatch, Recovered};

/// How to build a decoder: the source's CSV dialect and schema.
#[derive(Clone)]
pub struct Dialect {
    /// The schema every record is parsed into.
    pub schema: SchemaRef,
    /// Field separator.
    pub delimiter: u8,
    /// Quote character.
    pub quote: u8,
    /// Cells matching this are null.
    pub null_regex: Option<regex::Regex>,
    /// A header without a schema column: refused or read as nulls.
    pub missing_columns: MissingColumns,
    /// A header column the schema does not have: refused or skipped.
    pub extra_columns: ExtraColumns,
    /// Date and timestamp columns read as text and converted.
    pub dates: super::dates::DateFormats,
}

impl Dialect {
    /// A decoder of records laid out as `file_schema`.
    fn decoder(&self, file_schema: &SchemaRef, batch_size: usize) -> Decoder {
        let mut builder = arrow::csv::ReaderBuilder::new(file_schema.clone())
            .with_header(false)
            .with_delimiter(self.delimiter)
            .with_quote(self.quote)
            .with_batch_size(batch_size);
        if let Some(regex) = &self.null_regex {
            builder = builder.with_null_regex(regex.clone());
        }
        builder.build_decoder()
    }
}

/// Feeds `reader` to `decoder` until it holds a full batch or the input
/// ends, appending the consumed bytes to `raw` when given.
fn fill(
    reader: &mut impl BufRead,
    decoder: &mut Decoder,
    mut raw: Option<&mut Vec<u8>>,
) -> Result<()> {
    loop {
        let buf = reader.fill_buf()?;
        let consumed = decoder.decode(buf)?;
        if let Some(raw) = raw.as_deref_mut() {
            raw.extend_from_slice(&buf[..consumed]);
        }
        reader.consume(consumed);
        if consumed == 0 || decoder.capacity() == 0 {
            return Ok(());
        }
    }
}

/// How a file's fields map onto the source schema.
struct Layout {
    /// The file's records as read: its columns in header order, typed as
    /// the source schema's (extra columns as utf8).
    file_schema: SchemaRef,
    /// For each source column, its index among the file's, or `None` when
    /// the file lacks it (all nulls).
    columns: Vec<Option<usize>>,
    /// The file's layout is the source schema's.
    identity: bool,
}

impl Layout {
    /// Fields taken by position.
    fn positional(schema: &SchemaRef) -> Layout {
        Layout {
            file_schema: schema.clone(),
            columns: (0..schema.fields().len()).map(Some).collect(),
            identity: true,
        }
    }

    /// Fields matched by the names of `header`.
    fn from_header(header: &[String], dialect: &Dialect) -> Result<Layout> {
        let schema = &dialect.schema;
        let mut seen = std::collections::HashSet::new();
        if let Some(duplicate) = header.iter().find(|name| !seen.insert(name.as_str())) {
            bail!("the header names column `{duplicate}` twice");
        }
        let extra: Vec<&str> = header
            .iter()
            .filter(|name| schema.field_with_name(name).is_err())
            .map(String::as_str)
            .collect();
        let missing: Vec<&Field> = schema
            .fields()
            .iter()
            .filter(|f| !header.contains(f.name()))
            .map(|f| f.as_ref())
            .collect();
        let list = |names: &mut dyn Iterator<Item = &str>| {
            names
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if !missing.is_empty() && dialect.missing_columns == MissingColumns::Error {
            bail!(
                "the header lacks column(s) {} of the source schema (header: {}); set `missing_columns = \"null\"` in [source] to read them as nulls",
                list(&mut missing.iter().map(|f| f.name().as_str())),
                list(&mut header.iter().map(String::as_str)),
            );
        }
        if let Some(field) = missing.iter().find(|f| !f.is_nullable()) {
            bail!(
                "the header lacks column `{}`, which is not nullable",
                field.name()
            );
        }
        if !extra.is_empty() && dialect.extra_columns == ExtraColumns::Error {
            bail!(
                "the header has column(s) {} that the source schema does not (schema: {}); set `extra_columns = \"ignore\"` in [source] to skip them",
                list(&mut extra.iter().copied()),
                list(&mut schema.fields().iter().map(|f| f.name().as_str())),
            );
        }
        let read_schema = dialect.dates.read_schema(schema);
        let file_schema = Arc::new(Schema::new(
            header
                .iter()
                .map(|name| match read_schema.field_with_name(name) {
                    Ok(field) => field.clone(),
                    Err(_) => Field::new(name, DataType::Utf8, true),
                })
                .collect::<Vec<_>>(),
        ));
        let columns: Vec<Option<usize>> = schema
            .fields()
            .iter()
            .map(|f| header.iter().position(|name| name == f.name()))
            .collect();
        let identity =
            header.len() == columns.len() && columns.iter().enumerate().all(|(i, c)| *c == Some(i));
        Ok(Layout {
            file_schema,
            columns,
            identity,
        })
    }

    /// `batch` (of the file's layout) as a batch of `schema`.
    fn project(&self, batch: RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
        if self.identity {
            return Ok(batch);
        }
        let columns: Vec<ArrayRef> = self
            .columns
            .iter()
            .zip(schema.fields())
            .map(|(index, field)| match index {
                Some(i) => batch.column(*i).clone(),
                None => new_null_array(field.data_type(), batch.num_rows()),
            })
            .collect();
        Ok(RecordBatch::try_new(schema.clone(), columns)?)
    }
}

/// Reads the header record (which may hold quoted newlines) and consumes
/// exactly its bytes; `None` for an empty input. A UTF-8 byte-order mark is
/// dropped.
fn read_header(reader: &mut impl BufRead, dialect: &Dialect) -> Result<Option<Vec<String>>> {
    use csv_core::ReadRecordResult;
    let mut core = csv_core::ReaderBuilder::new()
        .delimiter(dialect.delimiter)
        .quote(dialect.quote)
        .build();
    let (mut out, mut ends) = (vec![0u8; 1024], vec![0usize; 64]);
    let (mut out_len, mut ends_len) = (0, 0);
    loop {
        let input = reader.fill_buf()?;
        let (result, read, written, ended) =
            core.read_record(input, &mut out[out_len..], &mut ends[ends_len..]);
        reader.consume(read);
        out_len += written;
        ends_len += ended;
        match result {
            ReadRecordResult::InputEmpty => {}
            ReadRecordResult::OutputFull => out.resize(out.len() * 2, 0),
            ReadRecordResult::OutputEndsFull => ends.resize(ends.len() * 2, 0),
            ReadRecordResult::Record => break,
            ReadRecordResult::End => return Ok(None),
        }
    }
    let mut start = 0;
    let mut names = Vec::with_capacity(ends_len);
    for &end in &ends[..ends_len] {
        let name = std::str::from_utf8(&out[start..end]).context("the header is not UTF-8")?;
        names.push(name.trim_start_matches('\u{feff}').to_string());
        start = end;
    }
    Ok(Some(names))
}

/// The records of one CSV file, decoded batch by batch.
pub struct CsvRecords {
    reader: BufReader<Box<dyn Read + Send>>,
    layout: Layout,
    /// The source schema as the decoder reads it (formatted dates as
    /// text), computed once.
    read_schema: SchemaRef,
    dialect: Dialect,
    batch_size: usize,
    decoder: Decoder,
    file: Arc<str>,
    /// Data records before the current batch.
    records_before: u64,
    /// File lines before the current batch, the header's included.
    lines_before: u64,
    /// Data records before the current decoder was made (arrow numbers
    /// the records each decoder has seen, from 1).
    decoder_start: u64,
}

/// Arrow's parse error with the column named instead of numbered, and its
/// line (counted within one record's decoder) left out: the caller gives
/// the file line.
fn parse_message(error: &arrow::error::ArrowError, schema: &Schema) -> String {
    static COLUMN: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r"for column (\d+) at line \d+").expect("a valid pattern")
    });
    let message = error.to_string();
    let message = message.strip_prefix("Parser error: ").unwrap_or(&message);
    COLUMN
        .replace(message, |captures: &regex::Captures<'_>| {
            let index: usize = captures[1].parse().unwrap_or(usize::MAX);
            match schema.fields().get(index) {
                Some(field) => format!("for column `{}`", field.name()),
                None => captures[0].to_string(),
            }
        })
        .into_owned()
}

impl CsvRecords {
    /// Opens `file`; with `header`, its first record names the columns.
    ///
    /// # Errors
    /// An unreadable file, or a header that does not match the source
    /// schema (see the module documentation).
    pub fn open(
        file: Box<dyn Read + Send>,
        name: Arc<str>,
        dialect: Dialect,
        header: bool,
        batch_size: usize,
    ) -> Result<CsvRecords> {
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let read_schema = dialect.dates.read_schema(&dialect.schema);
        let names = match header {
            true => read_header(&mut reader, &dialect).context("reading the header line")?,
            false => None,
        };
        let (layout, lines_before) = match names {
            Some(names) => (Layout::from_header(&names, &dialect)?, 1),
            None => (Layout::positional(&read_schema), 0),
        };
        Ok(CsvRecords {
            reader,
            decoder: dialect.decoder(&layout.file_schema, batch_size),
            layout,
            read_schema,
            dialect,
            batch_size,
            file: name,
            records_before: 0,
            lines_before,
            decoder_start: 0,
        })
    }

    /// Arrow's "incorrect number of fields for line N" with the file line
    /// and record number instead (exact unless a quoted field spans lines).
    fn field_count_error(&self, error: anyhow::Error) -> anyhow::Error {
        static FIELDS: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
            regex::Regex::new(
                r"incorrect number of fields for line (\d+), expected (\d+) got (.+)$",
            )
            .expect("a valid pattern")
        });
        let message = error.to_string();
        let Some(captures) = FIELDS.captures(&message) else {
            return error;
        };
        let Ok(nth) = captures[1].parse::<u64>() else {
            return error;
        };
        let record = self.decoder_start + nth;
        let line = record + self.lines_before.saturating_sub(self.records_before);
        anyhow::anyhow!(
            "line {line} (record {record}) has {} fields, but the header has {}; \
             quote fields that contain the delimiter",
            &captures[3],
            &captures[2]
        )
    }

    /// A decoded batch (of the file's layout) as a batch of the source
    /// schema: columns in schema order, formatted dates converted.
    ///
    /// # Errors
    /// A value that does not match its column's date format.
    fn finish(&self, batch: RecordBatch) -> Result<RecordBatch, String> {
        let batch = self
            .layout
            .project(batch, &self.read_schema)
            .map_err(|e| e.to_string())?;
        self.dialect.dates.convert(batch, &self.dialect.schema)
    }

    /// Decodes `raw` (whole records) one record at a time.
    fn recover(&self, raw: &[u8]) -> Result<Vec<Decoded>> {
        let mut recovered = Recovered::default();
        let mut input = raw;
        let mut number = self.records_before;
        let mut line = self.lines_before;
        while !input.is_empty() {
            let mut single = self.dialect.decoder(&self.layout.file_schema, 1);
            let mut cursor = input;
            fill(&mut cursor, &mut single, None)?;
            let text = &input[..input.len() - cursor.len()];
            input = cursor;
            let first_line = line + 1;
            line += newlines(text);
            match single.flush() {
                Ok(Some(batch)) => {
                    number += 1;
                    match self.finish(batch) {
                        Ok(batch) => recovered.parsed(batch),
                        Err(why) => recovered.rejected(
                            number,
                            String::from_utf8_lossy(text)
                                .trim_end_matches(['\r', '\n'])
                                .to_string(),
                            format!("line {first_line} (record {number}) cannot be parsed: {why}"),
                        ),
                    }
                }
                Ok(None) => {}
                Err(error) => {
                    number += 1;
                    let text = String::from_utf8_lossy(text)
                        .trim_end_matches(['\r', '\n'])
                        .to_string();
                    let why = parse_message(&error, &self.layout.file_schema);
                    recovered.rejected(
                        number,
                        text,
                        format!("line {first_line} (record {number}) cannot be parsed: {why}"),
                    );
                }
            }
        }
        recovered.finish(&self.dialect.schema, &self.file)
    }
}

impl CsvRecords {
    /// The current batch's records (`raw`) decoded one at a time, with a
    /// fresh decoder for the next batch: the state of one whose flush failed
    /// is unspecified.
    fn recover_batch(&mut self, raw: &[u8]) -> Result<Vec<Decoded>> {
        let recovered = self.recover(raw)?;
        self.records_before += recovered.iter().map(Decoded::records).sum::<u64>();
        self.decoder_start = self.records_before;
        self.decoder = self
            .dialect
            .decoder(&self.layout.file_schema, self.batch_size);
        Ok(recovered)
    }
}

impl NextBatch for CsvRecords {
    fn next_batch(&mut self) -> Result<Option<Vec<Decoded>>> {
        let mut raw = Vec::new();
        fill(&mut self.reader, &mut self.decoder, Some(&mut raw))
            .map_err(|error| self.field_count_error(error))?;
        let lines = newlines(&raw);
        let result = match self.decoder.flush() {
            Ok(None) => Ok(None),
            Ok(Some(batch)) => match self.finish(batch) {
                Ok(batch) => {
                    self.records_before += batch.num_rows() as u64;
                    Ok(Some(vec![Decoded::Batch(batch)]))
                }
                // A date off its format: find the records, one at a time.
                Err(_) => self.recover_batch(&raw).map(Some),
            },
            Err(_) => self.recover_batch(&raw).map(Some),
        };
        self.lines_before += lines;
        result
    }
}

/// Line breaks in `bytes`.
fn newlines(bytes: &[u8]) -> u64 {
    memchr::memchr_iter(b'\n', bytes).count() as u64
}
