//! The Parquet file format of the sink: writing (arrow-rs `ArrowWriter`,
//! snappy by default) and concatenating epoch parts by copying row groups.

use std::collections::HashSet;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::RecordBatch;
use arrow::row::{RowConverter, SortField};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_writer::{
    ArrowColumnChunk, ArrowColumnWriter, ArrowLeafColumn, ArrowRowGroupWriterFactory,
    compute_leaves,
};
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
    /// Set by [`FormatWriter::write_each_batch_whole`]: every batch is
    /// kept as given and encoded when the file is flushed or finished, as
    /// a row group of its own whose columns are encoded on two threads.
    whole: Option<WholeBatches>,
    whole_batches: bool,
    /// Batches given in whole-batch mode and not encoded yet.
    pending: Vec<RecordBatch>,
}

/// The file a [`ParquetWriter`] writes batch by batch, each as one row
/// group whose columns are encoded in parallel ([`write_row_group`]).
struct WholeBatches {
    file: SerializedFileWriter<File>,
    columns: ArrowRowGroupWriterFactory,
    row_groups: usize,
}

/// Rows below which a batch's columns are encoded on one thread (4096):
/// a thread's start (tens of µs) then costs more than half the encoding.
pub const PARALLEL_ENCODING_MIN_ROWS: usize = 4096;

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
///
/// Fixed-width columns are counted by their bits and strings and binaries
/// by their bytes, in place; other types (nested, booleans) through
/// arrow's row format. `weir serve` opens a writer for every micro-batch,
/// so this runs for every column of every micro-batch: through the row
/// format for all types it was about a tenth of the service's CPU.
fn dictionary_pays_off(column: &ArrayRef) -> bool {
    let column = &column.slice(0, column.len().min(DICTIONARY_SAMPLE_ROWS));
    let values = column.len() - column.null_count();
    if values < 16 {
        return true;
    }
    let limit = (values as f64 * DICTIONARY_MAX_DISTINCT_SHARE) as usize;
    let nulls = column.logical_nulls();
    if let Some(width) = column.data_type().primitive_width() {
        // `ArrayData::buffer` starts at the data's offset but is not cut
        // at its length.
        let data = column.to_data();
        let rows = column.len();
        return match width {
            1 => at_most_distinct(values_of::<u8>(&data, rows, &nulls), limit),
            2 => at_most_distinct(values_of::<u16>(&data, rows, &nulls), limit),
            4 => at_most_distinct(values_of::<u32>(&data, rows, &nulls), limit),
            8 => at_most_distinct(values_of::<u64>(&data, rows, &nulls), limit),
            16 => at_most_distinct(values_of::<i128>(&data, rows, &nulls), limit),
            _ => at_most_distinct(
                values_of::<arrow::datatypes::i256>(&data, rows, &nulls),
                limit,
            ),
        };
    }
    if let Some(strings) = column.as_string_opt::<i32>() {
        return at_most_distinct(strings.iter(), limit);
    }
    if let Some(strings) = column.as_string_opt::<i64>() {
        return at_most_distinct(strings.iter(), limit);
    }
    if let Some(strings) = column.as_string_view_opt() {
        return at_most_distinct(strings.iter(), limit);
    }
    if let Some(bytes) = column.as_binary_opt::<i32>() {
        return at_most_distinct(bytes.iter(), limit);
    }
    if let Some(bytes) = column.as_binary_opt::<i64>() {
        return at_most_distinct(bytes.iter(), limit);
    }
    if let Some(bytes) = column.as_binary_view_opt() {
        return at_most_distinct(bytes.iter(), limit);
    }
    let Ok(converter) = RowConverter::new(vec![SortField::new(column.data_type().clone())]) else {
        return true;
    };
    let Ok(rows) = converter.convert_columns(std::slice::from_ref(column)) else {
        return true;
    };
    at_most_distinct(
        rows.iter()
            .enumerate()
            .map(|(row, key)| valid(&nulls, row).then(|| key.data())),
        limit,
    )
}

/// Whether `row` is not null under `nulls`.
fn valid(nulls: &Option<arrow::buffer::NullBuffer>, row: usize) -> bool {
    nulls.as_ref().is_none_or(|nulls| nulls.is_valid(row))
}

/// The first `rows` fixed-width values of `data` as `T` (its bits), `None`
/// where the row is null.
fn values_of<'a, T: arrow::datatypes::ArrowNativeType>(
    data: &'a arrow::array::ArrayData,
    rows: usize,
    nulls: &'a Option<arrow::buffer::NullBuffer>,
) -> impl Iterator<Item = Option<&'a T>> {
    data.buffer::<T>(0)[..rows]
        .iter()
        .enumerate()
        .map(move |(row, value)| valid(nulls, row).then_some(value))
}

/// Whether the non-null `values` hold at most `limit` distinct values;
/// stops counting past `limit`.
fn at_most_distinct<T: std::hash::Hash + Eq>(
    values: impl Iterator<Item = Option<T>>,
    limit: usize,
) -> bool {
    // Sized for a category column, grown for a key: reserving the
    // limit (4,097 for 8,192 rows) allocated and cleared 72 KiB a column.
    let mut distinct: HashSet<T, foldhash::fast::RandomState> =
        HashSet::with_capacity_and_hasher((limit + 1).min(256), Default::default());
    for value in values.flatten() {
        if distinct.insert(value) && distinct.len() > limit {
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
            whole: None,
            whole_batches: false,
            pending: Vec::new(),
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

    /// Encodes the batches kept in whole-batch mode, each as one or more
    /// row groups of at most the writer's row-group rows.
    fn encode_pending(&mut self) -> Result<()> {
        let pending = std::mem::take(&mut self.pending);
        let Some(first) = pending.first() else {
            return Ok(());
        };
        if self.whole.is_none() {
            self.writer(Some(first))?;
            let (file, columns) = self
                .writer
                .take()
                .expect("created above")
                .into_serialized_writer()?;
            self.whole = Some(WholeBatches {
                file,
                columns,
                row_groups: 0,
            });
        }
        let whole = self.whole.as_mut().expect("created above");
        let rows_per_group = whole
            .file
            .properties()
            .max_row_group_row_count()
            .unwrap_or(usize::MAX)
            .max(1);
        for batch in &pending {
            let mut start = 0;
            while start < batch.num_rows() {
                let rows = rows_per_group.min(batch.num_rows() - start);
                write_row_group(whole, &self.schema, &batch.slice(start, rows))?;
                start += rows;
            }
        }
        Ok(())
    }
}

impl FormatWriter for ParquetWriter {
    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        if self.whole_batches {
            // Encoded at the flush or finish, which a sink runs for all of
            // a part's files at once (`Sink::prepare_parts`): a
            // partitioned micro-batch's files are then encoded in parallel.
            self.pending.push(batch.clone());
            return Ok(());
        }
        Ok(self.writer(Some(batch))?.write(batch)?)
    }

    fn write_each_batch_whole(&mut self) {
        self.whole_batches = true;
    }

    fn buffered_bytes(&self) -> usize {
        self.writer.as_ref().map_or(0, ArrowWriter::memory_size)
            + self
                .pending
                .iter()
                .flat_map(RecordBatch::columns)
                // A partition's rows are often a slice of the output batch:
                // counted by their own bytes, not the whole batch's.
                .map(|column| {
                    column
                        .to_data()
                        .get_slice_memory_size()
                        .unwrap_or_else(|_| column.get_array_memory_size())
                })
                .sum::<usize>()
    }

    fn flush_buffered(&mut self) -> Result<()> {
        self.encode_pending()?;
        match &mut self.writer {
            Some(writer) => Ok(writer.flush()?),
            None => Ok(()),
        }
    }

    fn finish(mut self: Box<Self>) -> Result<()> {
        self.encode_pending()?;
        if let Some(whole) = self.whole.take() {
            whole.file.close()?;
            return Ok(());
        }
        self.writer(None)?;
        self.writer.take().expect("created above").close()?;
        Ok(())
    }
}

/// Appends `batch` (rows × the file's schema, at most a row group's rows)
/// to `whole` as one row group. With at least
/// [`PARALLEL_ENCODING_MIN_ROWS`] rows its leaf columns are encoded on two
/// threads, split by an estimate of their cost (16 per value plus the
/// bytes of string and binary values), then appended in order: the file
/// is the one [`ArrowWriter`] would write, and the encoding, most of a
/// `weir serve` micro-batch's write, takes about half the time while the
/// other core would otherwise wait (arrow-rs documents this use of
/// `ArrowColumnWriter`).
///
/// # Errors
/// An encoding or I/O error.
fn write_row_group(
    whole: &mut WholeBatches,
    schema: &SchemaRef,
    batch: &RecordBatch,
) -> Result<()> {
    let writers = whole.columns.create_column_writers(whole.row_groups)?;
    let mut leaves = Vec::with_capacity(writers.len());
    for (field, column) in schema.fields().iter().zip(batch.columns()) {
        let of_field = compute_leaves(field, column)?;
        let cost = (column.len() * 16
            + match column.data_type() {
                DataType::Utf8
                | DataType::LargeUtf8
                | DataType::Utf8View
                | DataType::Binary
                | DataType::LargeBinary
                | DataType::BinaryView => column.get_buffer_memory_size(),
                _ => 0,
            })
            / of_field.len().max(1);
        leaves.extend(of_field.into_iter().map(|leaf| (leaf, cost)));
    }
    anyhow::ensure!(
        leaves.len() == writers.len(),
        "{} leaf columns for {} column writers",
        leaves.len(),
        writers.len()
    );
    // Largest first, each to the lighter of two shares.
    let mut jobs: Vec<(usize, ArrowColumnWriter, ArrowLeafColumn, usize)> = writers
        .into_iter()
        .zip(leaves)
        .enumerate()
        .map(|(i, (writer, (leaf, cost)))| (i, writer, leaf, cost))
        .collect();
    jobs.sort_by_key(|job| std::cmp::Reverse(job.3));
    let mut shares: [Vec<_>; 2] = [Vec::new(), Vec::new()];
    let mut loads = [0usize; 2];
    let parallel = batch.num_rows() >= PARALLEL_ENCODING_MIN_ROWS && jobs.len() > 1;
    for job in jobs {
        let share = usize::from(parallel && loads[1] < loads[0]);
        loads[share] += job.3;
        shares[share].push(job);
    }
    let encode = |share: Vec<(usize, ArrowColumnWriter, ArrowLeafColumn, usize)>| {
        share
            .into_iter()
            .map(|(i, mut writer, leaf, _)| {
                writer.write(&leaf)?;
                Ok((i, writer.close()?))
            })
            .collect::<Result<Vec<(usize, ArrowColumnChunk)>>>()
    };
    let [first, second] = shares;
    let mut chunks = std::thread::scope(|scope| -> Result<Vec<(usize, ArrowColumnChunk)>> {
        let second = (!second.is_empty()).then(|| scope.spawn(|| encode(second)));
        let mut chunks = encode(first)?;
        if let Some(second) = second {
            chunks.extend(
                second
                    .join()
                    .map_err(|_| anyhow::anyhow!("a column encoding thread panicked"))??,
            );
        }
        Ok(chunks)
    })?;
    chunks.sort_by_key(|(i, _)| *i);
    let mut row_group = whole.file.next_row_group()?;
    for (_, chunk) in chunks {
        chunk.append_to_row_group(&mut row_group)?;
    }
    row_group.close()?;
    whole.row_groups += 1;
    Ok(())
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

    /// Every way of counting (fixed-width bits, string and binary bytes,
    /// the row format) gives the share an independent count gives, right
    /// at the limit, on a slice whose neighbouring rows are all distinct
    /// and with nulls left out of the count.
    #[test]
    fn distinct_values_are_counted_in_the_slice_alone_for_every_type() {
        use arrow::array::{FixedSizeBinaryArray, Int64Array};
        use arrow::datatypes::DataType;
        let types = [
            DataType::Int8,
            DataType::Int16,
            DataType::Int32,
            DataType::Int64,
            DataType::UInt64,
            DataType::Float64,
            DataType::Date32,
            DataType::Decimal128(20, 0),
            DataType::Decimal256(40, 0),
            DataType::Utf8,
            DataType::LargeUtf8,
            DataType::Utf8View,
            DataType::Binary,
            DataType::LargeBinary,
            DataType::BinaryView,
        ];
        for repeat in 40..=50u32 {
            // Rows 0..100 and 200..300 all distinct; 100..200 repeat every
            // `repeat` rows, with every tenth row null.
            let ids: Vec<Option<u32>> = (0..300u32)
                .map(|row| match row {
                    100..200 if row % 10 == 0 => None,
                    100..200 => Some(row % repeat),
                    _ => Some(60 + row),
                })
                .collect();
            let in_slice: HashSet<u32> = ids[100..200].iter().flatten().copied().collect();
            let values = ids[100..200].iter().flatten().count();
            let expected = in_slice.len() <= values / 2;
            let int64: ArrayRef = Arc::new(Int64Array::from_iter(
                ids.iter().map(|id| id.map(i64::from)),
            ));
            let mut columns: Vec<ArrayRef> = types
                .iter()
                .map(|to| {
                    let via = if matches!(to, DataType::Utf8 | DataType::Int8) {
                        to.clone()
                    } else if to.is_primitive() {
                        DataType::Int64
                    } else {
                        DataType::Utf8
                    };
                    // Int8 cannot hold the outer rows' ids: they wrap.
                    let int64 = if *to == DataType::Int8 {
                        Arc::new(Int64Array::from_iter(
                            ids.iter().map(|id| id.map(|id| i64::from(id % 128))),
                        )) as ArrayRef
                    } else {
                        int64.clone()
                    };
                    let via = arrow::compute::cast(&int64, &via).unwrap();
                    arrow::compute::cast(&via, to).unwrap()
                })
                .collect();
            // Fixed-size binary and booleans go through the row format.
            columns.push(Arc::new(
                FixedSizeBinaryArray::try_from_sparse_iter_with_size(
                    ids.iter().map(|id| id.map(u32::to_be_bytes)),
                    4,
                )
                .unwrap(),
            ));
            for column in columns {
                assert_eq!(
                    dictionary_pays_off(&column.slice(100, 100)),
                    expected,
                    "{} with {} distinct of {values}",
                    column.data_type(),
                    in_slice.len()
                );
            }
        }
    }

    /// Batches written whole (columns encoded on two threads, each batch a
    /// row group) read back as written: nested columns with several leaves,
    /// nulls, strings, a batch under the parallel threshold and one over
    /// it, a sliced batch; the same rows an `ArrowWriter` file holds.
    #[test]
    fn batches_written_whole_read_back_as_written() {
        use arrow::array::{Int64Array, ListArray, StructArray};
        use arrow::datatypes::{Field, Int64Type};
        let rows = PARALLEL_ENCODING_MIN_ROWS + 1000;
        let ids: ArrayRef = Arc::new(Int64Array::from_iter(
            (0..rows as i64).map(|i| (i % 7 != 0).then_some(i)),
        ));
        let names: ArrayRef = Arc::new(StringArray::from_iter(
            (0..rows).map(|i| (i % 5 != 0).then(|| format!("name-{}", i % 300))),
        ));
        let pairs: ArrayRef = Arc::new(StructArray::from(vec![
            (
                Arc::new(Field::new("a", DataType::Int64, true)),
                ids.clone(),
            ),
            (
                Arc::new(Field::new("b", DataType::Utf8, true)),
                names.clone(),
            ),
        ]));
        let lists: ArrayRef = Arc::new(ListArray::from_iter_primitive::<Int64Type, _, _>(
            (0..rows as i64)
                .map(|i| (i % 3 != 0).then(|| (0..i % 4).map(Some).collect::<Vec<_>>())),
        ));
        let batch = RecordBatch::try_from_iter([
            ("id", ids),
            ("name", names),
            ("pair", pairs),
            ("list", lists),
        ])
        .unwrap();
        let schema = Arc::new(arrow::datatypes::Schema::new(
            batch
                .schema()
                .fields()
                .iter()
                .map(|f| f.as_ref().clone().with_nullable(true))
                .collect::<Vec<_>>(),
        ));
        let batch = batch.with_schema(schema.clone()).unwrap();
        let written = [batch.slice(0, 100), batch.clone(), batch.slice(17, 4500)];
        let dir = tempfile::tempdir().unwrap();
        let read = |path: &Path| -> Vec<RecordBatch> {
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
                File::open(path).unwrap(),
            )
            .unwrap()
            .build()
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
        };
        let mut files = Vec::new();
        for whole in [true, false] {
            let path = dir.path().join(format!("{whole}.parquet"));
            let mut writer: Box<dyn FormatWriter> = Box::new(
                ParquetWriter::new(File::create(&path).unwrap(), schema.clone(), "snappy").unwrap(),
            );
            if whole {
                writer.write_each_batch_whole();
            }
            for part in &written {
                writer.write(part).unwrap();
                if whole && part.num_rows() == 100 {
                    // Kept, not encoded, and counted well under the whole
                    // batch it is a slice of.
                    let kept = writer.buffered_bytes();
                    assert!(
                        kept > 0 && kept < batch.get_array_memory_size() / 4,
                        "{kept} bytes kept for 100 of {rows} rows ({} in all)",
                        batch.get_array_memory_size()
                    );
                }
            }
            writer.finish().unwrap();
            files.push(path);
        }
        let expected = arrow::compute::concat_batches(&schema, &written).unwrap();
        let whole = read(&files[0]);
        assert_eq!(
            arrow::compute::concat_batches(&schema, &whole).unwrap(),
            expected
        );
        assert_eq!(
            arrow::compute::concat_batches(&schema, &read(&files[1])).unwrap(),
            expected
        );
        let groups = SerializedFileReader::new(File::open(&files[0]).unwrap())
            .unwrap()
            .metadata()
            .row_groups()
            .iter()
            .map(|group| group.num_rows())
            .collect::<Vec<_>>();
        assert_eq!(groups, [100, rows as i64, 4500]);
    }

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
