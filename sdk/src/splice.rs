//! A transform's output as changes to its input ([`Splice`]), and the
//! `describe` glue behind [`Transform::reads`](crate::Transform::reads).

use std::sync::Mutex;

use crate::batch::DataTypeExt;
use crate::bitmap::BitmapBuilder;
use crate::{
    Column, ColumnValues, DataType, Error, Field, NewColumn, Output, RecordBatch, Selection,
    Splice, StageInfo,
};

/// The error `reads` returned in `describe`, reported on every batch
/// (`describe` itself cannot fail).
static DESCRIBE_ERROR: Mutex<Option<Error>> = Mutex::new(None);

/// `describe`'s answer from a plugin's `reads`; an error is kept for
/// [`check_reads`] and every column is asked for meanwhile.
#[doc(hidden)]
pub fn describe(reads: Result<Option<Vec<String>>, Error>) -> StageInfo {
    match reads {
        Ok(reads) => StageInfo { reads },
        Err(error) => {
            *DESCRIBE_ERROR.lock().unwrap_or_else(|e| e.into_inner()) = Some(error);
            StageInfo { reads: None }
        }
    }
}

/// The error `reads` returned in `describe`, if it did.
///
/// # Errors
/// That error, on every batch.
#[doc(hidden)]
pub fn check_reads() -> Result<(), Error> {
    match &*DESCRIBE_ERROR.lock().unwrap_or_else(|e| e.into_inner()) {
        Some(error) => Err(error.clone()),
        None => Ok(()),
    }
}

impl From<RecordBatch> for Output {
    fn from(batch: RecordBatch) -> Output {
        Output::Batch(batch)
    }
}

impl From<Splice> for Output {
    fn from(splice: Splice) -> Output {
        Output::Splice(splice)
    }
}

impl Default for Splice {
    fn default() -> Self {
        Splice::new()
    }
}

impl Splice {
    /// No change: every row, every column.
    pub fn new() -> Splice {
        Splice {
            selection: None,
            columns: Vec::new(),
            drop: Vec::new(),
        }
    }

    /// Keeps the rows whose `keep` entry is true (one entry per input row),
    /// in input order.
    pub fn keep(mut self, keep: &[bool]) -> Splice {
        let mut mask = BitmapBuilder::with_capacity(keep.len());
        mask.extend_from_bools(keep);
        self.selection = Some(Selection::Mask(mask.finish()));
        self
    }

    /// Keeps the input rows at `indices`, in that order (an index may
    /// repeat).
    pub fn take(mut self, indices: Vec<u32>) -> Splice {
        self.selection = Some(Selection::Indices(indices));
        self
    }

    /// Adds `column` (one value per input row) as `field`, or replaces the
    /// input column of the same name in place.
    pub fn set(mut self, field: Field, column: Column) -> Splice {
        self.columns.retain(|c| c.field.name != field.name);
        self.columns.push(NewColumn { field, column });
        self
    }

    /// Replaces `batch`'s column `name` by `column`, whose type may differ:
    /// the field keeps its name (and its time zone for a timestamp) and is
    /// nullable if the old one was or `column` has nulls.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when `batch` has no such column.
    pub fn replace(self, batch: &RecordBatch, name: &str, column: Column) -> Result<Splice, Error> {
        let old = batch
            .index_of(name)
            .map(|i| &batch.schema.fields[i])
            .ok_or_else(|| Error::InvalidInput(format!("the batch has no column `{name}`")))?;
        let data_type = match (&old.data_type, &column.values) {
            (DataType::Timestamp(zone), ColumnValues::Timestamp(_)) => {
                DataType::Timestamp(zone.clone())
            }
            (_, values) => DataType::of_values(values),
        };
        let field = Field {
            name: name.to_string(),
            data_type,
            nullable: old.nullable || column.validity.is_some(),
        };
        Ok(self.set(field, column))
    }

    /// Leaves the input column `name` out of the output (whether or not it
    /// was sent to the plugin).
    pub fn drop(mut self, name: impl Into<String>) -> Splice {
        self.drop.push(name.into());
        self
    }
}

impl Output {
    /// The batch this output makes of `input`, as the host would build it
    /// when every column was sent: for native unit tests of a plugin.
    ///
    /// # Errors
    /// [`Error::Internal`] for a splice that does not fit `input` (a column
    /// of the wrong length or type, a selection out of range).
    pub fn apply(self, input: RecordBatch) -> Result<RecordBatch, Error> {
        let splice = match self {
            Output::Batch(batch) => return Ok(batch),
            Output::Splice(splice) => splice,
        };
        let rows = input.len();
        let mut batch = input;
        for new in splice.columns {
            if !has_rows(&new.column, rows) {
                return Err(Error::Internal(format!(
                    "spliced column `{}` does not have one value per input row ({rows})",
                    new.field.name
                )));
            }
            batch = batch.with_column(new.field, new.column)?;
        }
        batch = batch.drop_columns(&splice.drop);
        let indices: Vec<usize> = match splice.selection {
            None => return Ok(batch),
            Some(Selection::Mask(mask)) => (0..rows)
                .filter(|&i| mask.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0))
                .collect(),
            Some(Selection::Indices(indices)) => indices.into_iter().map(|i| i as usize).collect(),
        };
        if let Some(bad) = indices.iter().find(|&&i| i >= rows) {
            return Err(Error::Internal(format!(
                "selection names row {bad} of {rows}"
            )));
        }
        Ok(batch.take(&indices))
    }
}

/// Whether `column` holds `rows` values (a boolean bitmap, `rows` bits).
fn has_rows(column: &Column, rows: usize) -> bool {
    match &column.values {
        ColumnValues::Boolean(bits) => bits.len() == rows.div_ceil(8),
        ColumnValues::Int64(v) | ColumnValues::Timestamp(v) => v.len() == rows,
        ColumnValues::Float64(v) => v.len() == rows,
        ColumnValues::Date32(v) => v.len() == rows,
        ColumnValues::Utf8(v) | ColumnValues::Binary(v) => v.offsets.len() == rows + 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::tests::sample;

    #[test]
    fn a_splice_applies_like_the_host_does() {
        let input = sample();
        let splice = Splice::new()
            .keep(&[true, false, true])
            .replace(
                &input,
                "id",
                Column::from_float64([Some(0.5), Some(1.5), Some(2.5)]),
            )
            .unwrap()
            .drop("name");
        let out = Output::from(splice).apply(input).unwrap();
        assert_eq!(out.schema.fields.len(), 1);
        assert_eq!(out.schema.fields[0].data_type, DataType::Float64);
        assert_eq!(
            out.float64("id").unwrap().iter().collect::<Vec<_>>(),
            vec![Some(0.5), Some(2.5)]
        );
    }

    #[test]
    fn a_short_column_or_a_bad_index_is_an_error() {
        let short = Splice::new().set(
            Field {
                name: "x".into(),
                data_type: DataType::Int64,
                nullable: false,
            },
            Column::from_int64([Some(1)]),
        );
        assert!(Output::from(short).apply(sample()).is_err());
        let out_of_range = Splice::new().take(vec![0, 3]);
        assert!(Output::from(out_of_range).apply(sample()).is_err());
    }
}
