//! JSON Lines decoding that quarantines malformed lines instead of failing
//! the run.
//!
//! Up to `batch_size` lines are decoded together with arrow-json's
//! [`Decoder`]. When that fails (a line that is not JSON, or a value that
//! does not fit its column), the batch's lines are decoded again one at a
//! time: lines that decode go on as a batch, the others are rejected with
//! arrow's message, their text and their line number (1-based). Blank lines
//! are skipped.

use std::io::{BufRead, BufReader, Read};
use std::sync::Arc;

use anyhow::Result;
use arrow::datatypes::SchemaRef;
use arrow::json::reader::Decoder;
use arrow::record_batch::RecordBatch;

use super::recovery::{Decoded, NextBatch, Recovered};

/// The lines of one JSON Lines file, decoded batch by batch.
pub struct JsonLines {
    reader: BufReader<Box<dyn Read + Send>>,
    schema: SchemaRef,
    batch_size: usize,
    file: Arc<str>,
    /// Lines read so far, blank ones included (for line numbers).
    line: u64,
}

impl JsonLines {
    /// Reads `file` as JSON Lines of `schema`.
    pub fn open(
        file: Box<dyn Read + Send>,
        name: Arc<str>,
        schema: SchemaRef,
        batch_size: usize,
    ) -> JsonLines {
        JsonLines {
            reader: BufReader::with_capacity(1 << 20, file),
            schema,
            batch_size,
            file: name,
            line: 0,
        }
    }

    fn decoder(&self, batch_size: usize) -> Result<Decoder> {
        Ok(arrow::json::ReaderBuilder::new(self.schema.clone())
            .with_batch_size(batch_size)
            .build_decoder()?)
    }

    /// Decodes `lines` (text, line number) together; `Err` when any fails.
    fn decode_all(&self, lines: &[(Vec<u8>, u64)]) -> Result<Option<RecordBatch>> {
        let mut decoder = self.decoder(lines.len().max(1))?;
        for (text, _) in lines {
            decoder.decode(text)?;
            decoder.decode(b"\n")?;
        }
        Ok(decoder.flush()?)
    }

    fn recover(&self, lines: Vec<(Vec<u8>, u64)>) -> Result<Vec<Decoded>> {
        let mut recovered = Recovered::default();
        for line in lines {
            match self.decode_all(std::slice::from_ref(&line)) {
                Ok(Some(batch)) => recovered.parsed(batch),
                Ok(None) => {}
                Err(error) => {
                    let (text, number) = line;
                    let message = format!("line {number} cannot be parsed: {error}");
                    recovered.rejected(
                        number,
                        String::from_utf8_lossy(&text).into_owned(),
                        message,
                    );
                }
            }
        }
        recovered.finish(&self.schema, &self.file)
    }
}

impl NextBatch for JsonLines {
    fn next_batch(&mut self) -> Result<Option<Vec<Decoded>>> {
        let mut lines = Vec::with_capacity(self.batch_size);
        let mut buf = Vec::new();
        while lines.len() < self.batch_size {
            buf.clear();
            if self.reader.read_until(b'\n', &mut buf)? == 0 {
                break;
            }
            self.line += 1;
            let text = buf.trim_ascii();
            if !text.is_empty() {
                lines.push((text.to_vec(), self.line));
            }
        }
        if lines.is_empty() {
            return Ok(None);
        }
        match self.decode_all(&lines) {
            Ok(batch) => Ok(Some(batch.map(Decoded::Batch).into_iter().collect())),
            Err(_) => Ok(Some(self.recover(lines)?)),
        }
    }
}
