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

use std::io::{BufRead, BufReader, Read};
use std::sync::Arc;

use anyhow::{Context, Result};
use arrow::csv::reader::Decoder;
use arrow::datatypes::SchemaRef;

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
}

impl Dialect {
    fn decoder(&self, batch_size: usize) -> Decoder {
        let mut builder = arrow::csv::ReaderBuilder::new(self.schema.clone())
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

/// The records of one CSV file, decoded batch by batch.
pub struct CsvRecords {
    reader: BufReader<Box<dyn Read + Send>>,
    dialect: Dialect,
    batch_size: usize,
    decoder: Decoder,
    file: Arc<str>,
    /// Data records before the current batch.
    records_before: u64,
}

impl CsvRecords {
    /// Opens `file` (skipping a header line when `header`).
    ///
    /// # Errors
    /// An unreadable file or a malformed header line.
    pub fn open(
        file: Box<dyn Read + Send>,
        name: Arc<str>,
        dialect: Dialect,
        header: bool,
        batch_size: usize,
    ) -> Result<CsvRecords> {
        let mut reader = BufReader::with_capacity(1 << 20, file);
        if header {
            // Consume the header as one record of the same width.
            fill(&mut reader, &mut dialect.decoder(1), None).context("reading the header line")?;
        }
        Ok(CsvRecords {
            reader,
            decoder: dialect.decoder(batch_size),
            dialect,
            batch_size,
            file: name,
            records_before: 0,
        })
    }

    /// Decodes `raw` (whole records) one record at a time.
    fn recover(&self, raw: &[u8]) -> Result<Vec<Decoded>> {
        let mut recovered = Recovered::default();
        let mut input = raw;
        let mut number = self.records_before;
        while !input.is_empty() {
            let mut single = self.dialect.decoder(1);
            let mut cursor = input;
            fill(&mut cursor, &mut single, None)?;
            let text = &input[..input.len() - cursor.len()];
            input = cursor;
            match single.flush() {
                Ok(Some(batch)) => {
                    number += 1;
                    recovered.parsed(batch);
                }
                Ok(None) => {}
                Err(error) => {
                    number += 1;
                    let text = String::from_utf8_lossy(text)
                        .trim_end_matches(['\r', '\n'])
                        .to_string();
                    recovered.rejected(
                        number,
                        text,
                        format!("record {number} cannot be parsed: {error}"),
                    );
                }
            }
        }
        recovered.finish(&self.dialect.schema, &self.file)
    }
}

impl NextBatch for CsvRecords {
    fn next_batch(&mut self) -> Result<Option<Vec<Decoded>>> {
        let mut raw = Vec::new();
        fill(&mut self.reader, &mut self.decoder, Some(&mut raw))?;
        match self.decoder.flush() {
            Ok(None) => Ok(None),
            Ok(Some(batch)) => {
                self.records_before += batch.num_rows() as u64;
                Ok(Some(vec![Decoded::Batch(batch)]))
            }
            Err(_) => {
                // The decoder's state after a failed flush is unspecified.
                self.decoder = self.dialect.decoder(self.batch_size);
                let recovered = self.recover(&raw)?;
                self.records_before += recovered.iter().map(Decoded::records).sum::<u64>();
                Ok(Some(recovered))
            }
        }
    }
}
