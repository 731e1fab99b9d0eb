//! The JSON Lines file format of the sink: one JSON object per row, nulls
//! explicit; epoch parts concatenate byte for byte.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use anyhow::Result;
use arrow::json::writer::LineDelimited;
use arrow::record_batch::RecordBatch;

use super::FormatWriter;

/// A JSON Lines file being written.
pub struct JsonlWriter(arrow::json::Writer<BufWriter<File>, LineDelimited>);

impl JsonlWriter {
    /// Starts a file.
    pub fn new(file: File) -> JsonlWriter {
        JsonlWriter(
            arrow::json::WriterBuilder::new()
                .with_explicit_nulls(true)
                .build(BufWriter::new(file)),
        )
    }
}

impl FormatWriter for JsonlWriter {
    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        Ok(self.0.write(batch)?)
    }

    fn finish(mut self: Box<Self>) -> Result<()> {
        self.0.finish()?;
        std::io::Write::flush(self.0.get_mut())?;
        Ok(())
    }
}

/// Appends `parts` to `output`, in order.
///
/// # Errors
/// An unreadable part or an I/O error.
pub fn concat(parts: &[PathBuf], output: &Path) -> Result<()> {
    super::text::concat_lines(parts, output, false)
}
