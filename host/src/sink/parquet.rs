//! The Parquet file format of the sink: writing (arrow-rs `ArrowWriter`,
//! snappy by default) and concatenating epoch parts by copying row groups.

use std::collections::HashSet;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use arrow::array::{Array, ArrayRef};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use arrow::row::{RowConverter, SortField};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::column::writer::ColumnCloseResult;
use parquet::file::metadata::{PageIndexPolicy, ParquetMetaDataReader};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::ColumnPath;

use super::FormatWriter;

/// A Parquet file being written. The `ArrowWriter` is created with the
/// first batch, which decides the columns' dictionary encoding (see
/// [`dictionary_pays_off`]).
pub struct ParquetWriter {
    file: Option<File>,
    schema: SchemaRef,
    compression: Compression,
    writer: Option<ArrowWriter<File>>,
}

/// Share of distinct values in a column's first batch above which the
/// column is written without a dictionary (1/2).
///
/// Parquet writers dictionary-encode every column by default and fall back
/// to plain encoding only once a row group's dictionary page passes 1 MiB,
/// so a unique column (an id, a measured float) is hashed and interned
/// value by value for nothing at the start of every row group; with a
/// partitioned sink's many small row groups that is most of the encoding
/// time. DuckDB and Polars likewise decide from the data.
pub const DICTIONARY_MAX_DISTINCT_SHARE: f64 = 0.5;

/// Rows of the first batch that [`dictionary_pays_off`] looks at (8192,
/// one default batch). 1024 rows told ids from categories but not keys of
/// a few thousand values: flights' hashed tail numbers are 73% distinct in
/// their first 1024 rows, 28% in 8192 and 12% in a month, so they were
/// written plain, 70% of the output's bytes. With a dictionary the flights
/// output is 12 MB instead of 26 MB, and its run 0.97× the time. The
/// sample is at most the writer's first batch, so a writer opened per
/// small micro-batch (`weir serve`) or per partition still pays little.
pub const DICTIONARY_SAMPLE_ROWS: usize = 8192;

/// Whether `column` (the first batch) repeats values enough for a
/// dictionary: at most [`DICTIONARY_MAX_DISTINCT_SHARE`] of the non-null
/// values among its first [`DICTIONARY_SAMPLE_ROWS`] rows distinct.
/// Samples of fewer than 16 values keep the dictionary.
fn dictionary_pays_off(column: &ArrayRef) -> bool {
    let column = &column.slice(0, column.len().min(DICTIONARY_SAMPLE_ROWS));
    let values = column.len() - column.null_count();
    if values < 16 {
        return true;
    }
    let Ok(converter) = RowConverter::new(vec![SortField::new(column.data_type().clone())]) else {
        return true;
    };
    let Ok(rows) = converter.convert_columns(std::slice::from_ref(column)) else {
        return true;
    };
    let limit = (values as f64 * DICTIONARY_MAX_DISTINCT_SHARE) as usize;
    let mut distinct: HashSet<&[u8], foldhash::quality::RandomState> =
        HashSet::with_capacity_and_hasher(limit + 1, Default::default());
    for (row, key) in rows.iter().enumerate() {
        if column.is_valid(row) && distinct.insert(key.data()) && distinct.len() > limit {
            return false;
        }
    }
    true
}

impl ParquetWriter {
    /// Starts a file of `schema` rows, compressed with `compression`
    /// (`snappy`, `zstd` or `none`); nothing is written before the first
    /// batch.
    ///
    /// # Errors
    /// None today; kept for formats whose setup can fail.
    pub fn new(file: File, schema: SchemaRef, compression: &str) -> Result<ParquetWriter> {
        let compression = match compression {
            "zstd" => Compression::ZSTD(ZstdLevel::default()),
            "none" => Compression::UNCOMPRESSED,
            _ => Compression::SNAPPY,
        };
        Ok(ParquetWriter {
            file: Some(file),
            schema,
            compression,
            writer: None,
        })
    }

    /// The writer, created on first use with dictionaries only on the
    /// columns of `sample` that repeat values.
    fn writer(&mut self, sample: Option<&RecordBatch>) -> Result<&mut ArrowWriter<File>> {
        if self.writer.is_none() {
            let mut properties = WriterProperties::builder().set_compression(self.compression);
            if let Some(sample) = sample {
                for (field, column) in sample.schema().fields().iter().zip(sample.columns()) {
                    if !dictionary_pays_off(column) {
                        properties = properties.set_column_dictionary_enabled(
                            ColumnPath::from(field.name().as_str()),
                            false,
                        );
                    }
                }
            }
            let file = self.file.take().expect("the file is taken once");
            self.writer = Some(ArrowWriter::try_new(
                file,
                self.schema.clone(),
                Some(properties.build()),
            )?);
        }
        Ok(self.writer.as_mut().expect("created above"))
    }
}

impl FormatWriter for ParquetWriter {
    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        Ok(self.writer(Some(batch))?.write(batch)?)
    }

    fn buffered_bytes(&self) -> usize {
        self.writer.as_ref().map_or(0, ArrowWriter::memory_size)
    }

    fn flush_buffered(&mut self) -> Result<()> {
        match &mut self.writer {
            Some(writer) => Ok(writer.flush()?),
            None => Ok(()),
        }
    }

    fn finish(mut self: Box<Self>) -> Result<()> {
        self.writer(None)?;
        self.writer.take().expect("created above").close()?;
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

#[cfg(test)]
mod dictionary_tests {
    use super::*;
    use arrow::array::{Float64Array, StringArray};
    use parquet::basic::Encoding;
    use parquet::file::reader::{FileReader, SerializedFileReader};

    /// A mostly distinct column is written plain, a repetitive one with a
    /// dictionary, decided from the first batch.
    #[test]
    fn only_repetitive_columns_get_a_dictionary() {
        let rows = 1000;
        let batch = RecordBatch::try_from_iter([
            (
                "measured",
                Arc::new(Float64Array::from_iter_values(
                    (0..rows).map(|i| i as f64 * 0.37),
                )) as ArrayRef,
            ),
            (
                "carrier",
                Arc::new(StringArray::from_iter_values(
                    (0..rows).map(|i| ["AA", "DL", "UA"][i % 3]),
                )) as ArrayRef,
            ),
        ])
        .unwrap();
        assert!(!dictionary_pays_off(batch.column(0)));
        assert!(dictionary_pays_off(batch.column(1)));
        assert!(
            dictionary_pays_off(&batch.column(0).slice(0, 10)),
            "too small to tell"
        );
        // 2000 keys in turn over 8192 rows: every one of the first 1024
        // is new, but a dictionary holds a quarter of the values.
        let keys: ArrayRef = Arc::new(StringArray::from_iter_values(
            (0..8192).map(|i| format!("{:064x}", (i % 2000) * 7919)),
        ));
        assert!(dictionary_pays_off(&keys), "a few thousand keys");
        assert!(!dictionary_pays_off(&keys.slice(0, 1024)), "all distinct");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.parquet");
        let mut writer: Box<dyn FormatWriter> = Box::new(
            ParquetWriter::new(File::create(&path).unwrap(), batch.schema(), "snappy").unwrap(),
        );
        writer.write(&batch).unwrap();
        writer.finish().unwrap();
        let reader = SerializedFileReader::new(File::open(&path).unwrap()).unwrap();
        let group = reader.metadata().row_group(0);
        let dictionary = |column: usize| {
            group
                .column(column)
                .encodings()
                .any(|e| e == Encoding::RLE_DICTIONARY || e == Encoding::PLAIN_DICTIONARY)
        };
        assert!(
            !dictionary(0),
            "measured: {:?}",
            group.column(0).encodings().collect::<Vec<_>>()
        );
        assert!(
            dictionary(1),
            "carrier: {:?}",
            group.column(1).encodings().collect::<Vec<_>>()
        );
    }
}
