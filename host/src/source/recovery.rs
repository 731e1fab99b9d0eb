//! What the CSV and JSON Lines readers share: the [`Decoded`] items they
//! yield, the [`Recovered`] collector for the record-by-record second pass
//! over a batch that failed to parse, and the [`Decoding`] iterator that
//! turns "next batch" into a stream of items.

use std::collections::VecDeque;
use std::sync::Arc;

use anyhow::Result;
use arrow::array::{ArrayRef, Int64Array, StringArray};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;

/// What decoding produced: rows, or records that could not be parsed.
pub enum Decoded {
    /// Parsed rows.
    Batch(RecordBatch),
    /// Unparseable records: `rows` has columns `source_file` (utf8),
    /// `record_number` (int64) and `text` (utf8), one row per record, and
    /// `messages` one parse error per row.
    Rejected {
        /// One row per rejected record.
        rows: RecordBatch,
        /// Why each record was rejected.
        messages: Vec<String>,
    },
}

impl Decoded {
    /// Records it stands for, parsed or rejected.
    pub fn records(&self) -> u64 {
        match self {
            Decoded::Batch(batch) => batch.num_rows() as u64,
            Decoded::Rejected { rows, .. } => rows.num_rows() as u64,
        }
    }
}

/// Collects the outcome of decoding a batch's records one at a time.
#[derive(Default)]
pub struct Recovered {
    good: Vec<RecordBatch>,
    numbers: Vec<i64>,
    texts: Vec<String>,
    messages: Vec<String>,
}

impl Recovered {
    /// A record that parsed.
    pub fn parsed(&mut self, batch: RecordBatch) {
        self.good.push(batch);
    }

    /// Record `number` (1-based), whose `text` failed with `message`.
    pub fn rejected(&mut self, number: u64, text: String, message: String) {
        self.numbers.push(number as i64);
        self.texts.push(text);
        self.messages.push(message);
    }

    /// The parsed records as one batch of `schema`, then the rejected ones
    /// (read from `file`), each only when there are any.
    ///
    /// # Errors
    /// Only if the parsed batches do not fit `schema`, which their decoder
    /// guarantees.
    pub fn finish(self, schema: &SchemaRef, file: &str) -> Result<Vec<Decoded>> {
        let mut out = Vec::new();
        if !self.good.is_empty() {
            out.push(Decoded::Batch(arrow::compute::concat_batches(
                schema, &self.good,
            )?));
        }
        if !self.messages.is_empty() {
            let rows = RecordBatch::try_from_iter([
                (
                    "source_file",
                    Arc::new(StringArray::from(vec![file; self.numbers.len()])) as ArrayRef,
                ),
                ("record_number", Arc::new(Int64Array::from(self.numbers))),
                ("text", Arc::new(StringArray::from(self.texts))),
            ])?;
            out.push(Decoded::Rejected {
                rows,
                messages: self.messages,
            });
        }
        Ok(out)
    }
}

/// A reader that decodes its input one batch at a time.
pub trait NextBatch {
    /// The items decoded from the next batch of records, or `None` at the
    /// end of the input.
    ///
    /// # Errors
    /// An I/O error, or input that cannot even be split into records.
    fn next_batch(&mut self) -> Result<Option<Vec<Decoded>>>;
}

/// Streams a [`NextBatch`] reader's items; stops after the first error.
pub struct Decoding<R> {
    reader: R,
    pending: VecDeque<Decoded>,
    done: bool,
}

impl<R: NextBatch> Decoding<R> {
    /// Streams `reader`.
    pub fn new(reader: R) -> Self {
        Decoding {
            reader,
            pending: VecDeque::new(),
            done: false,
        }
    }
}

impl<R: NextBatch> Iterator for Decoding<R> {
    type Item = Result<Decoded>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(decoded) = self.pending.pop_front() {
                return Some(Ok(decoded));
            }
            if self.done {
                return None;
            }
            match self.reader.next_batch() {
                Ok(Some(decoded)) => self.pending.extend(decoded),
                Ok(None) => self.done = true,
                Err(error) => {
                    self.done = true;
                    return Some(Err(error));
                }
            }
        }
    }
}
