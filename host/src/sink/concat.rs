//! Concatenating the part files of several epochs into one output file,
//! without decoding: Parquet row groups are copied chunk by chunk (the
//! approach of the parquet crate's `parquet-concat` tool), CSV parts after
//! the first lose their header line, JSON Lines parts are appended.
//!
//! A single part is hard-linked instead of copied (the part stays for a
//! publish that a crash makes run again).

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use parquet::column::writer::ColumnCloseResult;
use parquet::file::metadata::{PageIndexPolicy, ParquetMetaDataReader};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;

use crate::config::SinkFormat;

/// Writes the concatenation of `parts` (files of one `format`, same
/// schema, in order) to `output` and fsyncs it. `output` must not exist.
///
/// # Errors
/// An unreadable part, parts whose Parquet schemas differ, or an I/O
/// error.
pub fn concat(format: SinkFormat, parts: &[PathBuf], output: &Path) -> Result<()> {
    if let Some(parent) = output.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    if let [only] = parts {
        std::fs::hard_link(only, output)
            .with_context(|| format!("linking {} to {}", only.display(), output.display()))?;
        return Ok(());
    }
    match format {
        SinkFormat::Parquet => concat_parquet(parts, output),
        SinkFormat::Csv => concat_text(parts, output, true),
        SinkFormat::Jsonl => concat_text(parts, output, false),
    }
    .with_context(|| format!("writing {}", output.display()))?;
    crate::checkpoint::fsync_file(output)
}

fn concat_text(parts: &[PathBuf], output: &Path, skip_header: bool) -> Result<()> {
    let mut out = BufWriter::new(File::create(output)?);
    for (i, part) in parts.iter().enumerate() {
        let mut input = BufReader::new(
            File::open(part).with_context(|| format!("opening {}", part.display()))?,
        );
        if skip_header && i > 0 {
            let mut header = Vec::new();
            input.read_until(b'\n', &mut header)?;
        }
        std::io::copy(&mut input, &mut out)?;
    }
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok(())
}

fn concat_parquet(parts: &[PathBuf], output: &Path) -> Result<()> {
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
