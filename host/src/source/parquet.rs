//! The Parquet source: files read with arrow-rs's Parquet reader in
//! batches of `batch_size` rows; a file of another schema is an error.

use ::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use anyhow::{Context, Result, bail};
use arrow::record_batch::RecordBatchReader;

use super::recovery::Decoded;
use super::{Source, without_panics};

impl Source {
    pub(super) fn decode_parquet<R: ::parquet::file::reader::ChunkReader + 'static>(
        &self,
        input: R,
    ) -> Result<Box<dyn Iterator<Item = Result<Decoded>> + Send>> {
        let schema = self
            .schema
            .clone()
            .context("only native formats are decoded by the host")?;
        let batch_size = self.batch_size;
        let reader = without_panics(std::panic::AssertUnwindSafe(move || {
            Ok(ParquetRecordBatchReaderBuilder::try_new(input)?
                .with_batch_size(batch_size)
                .build()?)
        }))?;
        let found = reader.schema();
        if found.fields() != schema.fields() {
            bail!("its schema differs from the source's: {found:?}");
        }
        let mut reader = Some(reader);
        Ok(Box::new(std::iter::from_fn(move || {
            let mut current = reader.take()?;
            let next = without_panics(std::panic::AssertUnwindSafe(|| {
                current.next().transpose().map_err(anyhow::Error::from)
            }));
            match next {
                Ok(Some(batch)) => {
                    reader = Some(current);
                    Some(Ok(Decoded::Batch(batch)))
                }
                Ok(None) => None,
                // After an error (or a panic) the reader is not used again.
                Err(error) => Some(Err(error)),
            }
        })))
    }
}
