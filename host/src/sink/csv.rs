//! The CSV file format of the sink: a header line, then one line per row;
//! epoch parts concatenate with every header but the first dropped.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use anyhow::Result;
use arrow::record_batch::RecordBatch;

use super::FormatWriter;

/// A CSV file being written.
pub struct CsvWriter(arrow::csv::Writer<BufWriter<File>>);

impl CsvWriter {
    /// Starts a file; the header is written with the first batch (an empty
    /// one writes only the header).
    pub fn new(file: File) -> CsvWriter {
        CsvWriter(
            arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(BufWriter::new(file)),
        )
    }
}

impl FormatWriter for CsvWriter {
    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        Ok(self.0.write(batch)?)
    }

    fn finish(self: Box<Self>) -> Result<()> {
        std::io::Write::flush(&mut self.0.into_inner())?;
        Ok(())
    }
}

/// Writes `parts` to `output`, in order, keeping only the first part's
/// header line (column names never hold a newline here: the writer quotes
/// them, and weir's column names come from a TOML schema or a header).
///
/// # Errors
/// An unreadable part or an I/O error.
pub fn concat(parts: &[PathBuf], output: &Path) -> Result<()> {
    super::text::concat_lines(parts, output, true)
}
