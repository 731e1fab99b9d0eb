//! The Parquet file format of the sink: writing (arrow-rs `ArrowWriter`,
//! snappy by default) and concatenating epoch parts by copying row groups.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::column::writer::ColumnCloseResult;
use parquet::file::metadata::{PageIndexPolicy, ParquetMetaDataReader};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;

use super::FormatWriter;

/// A Parquet file being written.
pub struct ParquetWriter(ArrowWriter<File>);

impl ParquetWriter {
    /// Starts a file of `schema` rows, compressed with `compression`
    /// (`snappy`, `zstd` or `none`).
    ///
    /// # Errors
    /// A schema Parquet cannot hold.
    pub fn new(file: File, schema: SchemaRef, compression: &str) -> Result<ParquetWriter> {
        let compression = match compression {
            "zstd" => Compression::ZSTD(ZstdLevel::default()),
            "none" => Compression::UNCOMPRESSED,
            _ => Compression::SNAPPY,
        };
        let properties = WriterProperties::builder()
            .set_compression(compression)
            .build();
        Ok(ParquetWriter(ArrowWriter::try_new(
            file,
            schema,
            Some(properties),
        )?))
    }
}

impl FormatWriter for ParquetWriter {
    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        Ok(self.0.write(batch)?)
    }

    fn buffered_bytes(&self) -> usize {
        self.0.memory_size()
    }

    fn flush_buffered(&mut self) -> Result<()> {
        Ok(self.0.flush()?)
    }

    fn finish(self: Box<Self>) -> Result<()> {
        self.0.close()?;
        Ok(())
    }
}

/// Writes the row groups of `parts` (Parquet files of one schema), in
/// order, to `output` without decoding them: each column chunk is copied
/// as it is (the approach of the parquet crate's `parquet-concat` tool).
/// The first part's key-value metadata (the Arrow schema) is kept.
///
/// # Errors
/// An unreadable part, parts of different schemas, or an I/O error.
pub fn concat(parts: &[PathBuf], output: &Path) -> Result<()> {
    let inputs = parts
        .iter()
        .map(|path| {
            let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
            let metadata = ParquetMetaDataReader::new()
                .with_page_index_policy(PageIndexPolicy::Optional)
                .parse_and_finish(&file)
                .with_context(|| format!("reading the footer of {}", path.display()))?;
            Ok((path, file, metadata))
        })
        .collect::<Result<Vec<_>>>()?;
    let first = &inputs[0].2;
    for (path, _, metadata) in &inputs[1..] {
        anyhow::ensure!(
            metadata.file_metadata().schema() == first.file_metadata().schema(),
            "{} has another schema than {}",
            path.display(),
            inputs[0].0.display()
        );
    }
    // The Arrow schema (ARROW:schema) travels in the key-value metadata.
    let properties = WriterProperties::builder()
        .set_key_value_metadata(first.file_metadata().key_value_metadata().cloned())
        .build();
    let schema = first.file_metadata().schema_descr().root_schema_ptr();
    let mut writer = SerializedFileWriter::new(
        BufWriter::new(File::create(output)?),
        schema,
        Arc::new(properties),
    )?;
    for (_, input, metadata) in &inputs {
        let page_index = metadata.page_index();
        for (g, group) in metadata.row_groups().iter().enumerate() {
            let mut out = writer.next_row_group()?;
            for (c, column) in group.columns().iter().enumerate() {
                out.append_column(
                    input,
                    ColumnCloseResult {
                        bytes_written: column.compressed_size() as _,
                        rows_written: group.num_rows() as _,
                        metadata: column.clone(),
                        bloom_filter: None,
                        column_index: page_index
                            .and_then(|index| index.column_index(g, c))
                            .cloned(),
                        offset_index: page_index
                            .and_then(|index| index.offset_index(g, c))
                            .cloned(),
                    },
                )?;
            }
            out.close()?;
        }
    }
    let file = writer
        .into_inner()?
        .into_inner()
        .map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok(())
}
