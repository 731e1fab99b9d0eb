//! Column projection and splicing, the two halves of `weir:plugin@0.2.0`'s
//! narrow boundary.
//!
//! - [`project`]: before a call, only the columns a stage reads (its
//!   `describe`) are converted and sent; the rest stay in arrow on the host.
//! - [`apply`]: after a transform returns a [`Splice`], the host builds the
//!   output from the *whole* input batch: it drops and replaces columns,
//!   appends the new ones, and applies the row selection to every column
//!   with arrow's `filter`/`take` kernels, so the columns that never crossed
//!   are selected natively (a buffer copy, no conversion).
//!
//! The output column order is fixed by the contract: the input's columns in
//! order minus `drop`, replaced ones in place, new ones appended in the
//! order given.

use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, UInt32Array};
use arrow::buffer::{BooleanBuffer, Buffer};
use arrow::datatypes::{Field, Schema};
use arrow::record_batch::{RecordBatch, RecordBatchOptions};

use crate::bindings::types;
use crate::columnar::{self, MalformedBatch};
use crate::plugin::{Selection, Splice, TransformOutput};

/// A transform's output in arrow, with where its rows came from.
#[derive(Debug, Clone)]
pub struct Transformed {
    /// The output batch: every column of the stage's output, whether it
    /// crossed the boundary or not.
    pub batch: RecordBatch,
    /// Which input rows the output rows are, when the output is a splice
    /// (so lineage and request origins follow rows exactly); `None` for a
    /// whole batch, whose rows the host cannot relate to the input.
    pub rows: Option<Kept>,
}

/// Which input row each output row of a splice is, kept in the form the
/// plugin's selection came in. Row numbers are made only when asked for
/// ([`Kept::indices`]): `weir serve` tracks each row's request, `weir run`
/// does not, and making them cost about a seventh of a numeric filter's
/// call on 8192 rows.
#[derive(Debug, Clone, PartialEq)]
pub enum Kept {
    /// Every input row, in order (a splice without a selection); the
    /// number of rows.
    All(usize),
    /// The input rows whose bit is set, in order.
    Mask(BooleanBuffer),
    /// These input rows, in this order (a row may repeat).
    Indices(Vec<u32>),
}

impl Kept {
    /// The input row of each output row: as many numbers as output rows.
    pub fn indices(&self) -> Vec<u32> {
        match self {
            Kept::All(rows) => (0..*rows as u32).collect(),
            Kept::Mask(mask) => mask.set_indices().map(|i| i as u32).collect(),
            Kept::Indices(indices) => indices.clone(),
        }
    }
}

/// The columns of `batch` named in `reads`, in the batch's order (a name
/// the batch lacks is skipped); the whole batch when `reads` is `None`.
/// Zero-copy: the arrays are shared, not copied.
pub fn project(batch: &RecordBatch, reads: Option<&[String]>) -> RecordBatch {
    let Some(reads) = reads else {
        return batch.clone();
    };
    let indices: Vec<usize> = batch
        .schema()
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| reads.iter().any(|r| r == f.name()))
        .map(|(i, _)| i)
        .collect();
    if indices.len() == batch.num_columns() {
        return batch.clone();
    }
    batch
        .project(&indices)
        .expect("indices come from the batch's own schema")
}

/// The output `output` makes of `input` (the whole batch, before
/// projection).
///
/// # Errors
/// [`MalformedBatch`] when a whole batch breaks the `record-batch` rules,
/// or a splice does not fit `input`: a new column without one value per
/// input row or with a type its values do not carry, a name added twice, a
/// dropped column the input lacks, a mask of the wrong size or an index out
/// of range.
pub fn apply(input: &RecordBatch, output: TransformOutput) -> Result<Transformed, MalformedBatch> {
    match output {
        TransformOutput::Batch(batch) => Ok(Transformed {
            batch: columnar::from_wit(batch)?,
            rows: None,
        }),
        TransformOutput::Splice { splice, computed } => splice_onto(input, splice, computed),
    }
}

fn malformed(message: String) -> MalformedBatch {
    MalformedBatch(format!("splice: {message}"))
}

fn splice_onto(
    input: &RecordBatch,
    splice: Splice,
    computed: Vec<(String, ArrayRef)>,
) -> Result<Transformed, MalformedBatch> {
    let rows = input.num_rows();
    let schema = input.schema();
    if let Some(missing) = splice
        .drop
        .iter()
        .find(|name| schema.index_of(name).is_err())
    {
        return Err(malformed(format!(
            "drops column `{missing}`, which the batch does not have"
        )));
    }
    // The new columns are checked like a batch of their own: one value per
    // input row, types that match, no name twice.
    let new = if splice.columns.is_empty() {
        None
    } else {
        let (fields, columns) = splice
            .columns
            .into_iter()
            .map(|c| (c.field, c.column))
            .unzip();
        let batch = types::RecordBatch {
            schema: types::Schema { fields },
            num_rows: u32::try_from(rows).map_err(|_| malformed(format!("{rows} rows")))?,
            columns,
        };
        Some(columnar::from_wit(batch).map_err(|e| malformed(format!("new columns: {e}")))?)
    };
    // The splice's new columns, then those emitted with compute kernels
    // (already one Arrow value per input row, checked by `emit`).
    let mut added: Vec<(Arc<Field>, ArrayRef)> = new
        .as_ref()
        .map(|n| {
            n.schema()
                .fields()
                .iter()
                .cloned()
                .zip(n.columns().iter().cloned())
                .collect()
        })
        .unwrap_or_default();
    for (name, array) in computed {
        if added.iter().any(|(f, _)| *f.name() == name) {
            return Err(malformed(format!(
                "column `{name}` is both emitted with a kernel and returned"
            )));
        }
        if splice.drop.contains(&name) {
            return Err(malformed(format!(
                "column `{name}` is both emitted and dropped"
            )));
        }
        if array.len() != rows {
            return Err(malformed(format!(
                "emitted column `{name}` has {} values for {rows} rows",
                array.len()
            )));
        }
        // A replaced column stays as nullable as it was unless nulls appear.
        let nullable = match schema.field_with_name(&name) {
            Ok(existing) => existing.is_nullable() || array.null_count() > 0,
            Err(_) => true,
        };
        let field = Field::new(name, array.data_type().clone(), nullable);
        added.push((Arc::new(field), array));
    }
    let mut fields: Vec<Arc<Field>> = Vec::with_capacity(schema.fields().len());
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    let replacement = |name: &str| added.iter().find(|(f, _)| f.name() == name).cloned();
    for (field, array) in schema.fields().iter().zip(input.columns()) {
        if splice.drop.iter().any(|d| d == field.name()) {
            continue;
        }
        match replacement(field.name()) {
            Some((field, array)) => {
                fields.push(field);
                arrays.push(array);
            }
            None => {
                fields.push(field.clone());
                arrays.push(array.clone());
            }
        }
    }
    for (field, array) in &added {
        if schema.index_of(field.name()).is_err() {
            fields.push(field.clone());
            arrays.push(array.clone());
        }
    }
    let options = RecordBatchOptions::new().with_row_count(Some(rows));
    let spliced =
        RecordBatch::try_new_with_options(Arc::new(Schema::new(fields)), arrays, &options)
            .map_err(|e| malformed(e.to_string()))?;
    let (batch, kept) = match splice.selection {
        None => (spliced, Kept::All(rows)),
        Some(Selection::Mask(mask)) => {
            let needed = rows.div_ceil(8);
            if mask.len() != needed {
                return Err(malformed(format!(
                    "the row mask has {} bytes; {rows} rows need {needed}",
                    mask.len()
                )));
            }
            let mask = BooleanArray::new(BooleanBuffer::new(Buffer::from_vec(mask), 0, rows), None);
            let batch = if mask.true_count() == rows {
                spliced
            } else {
                arrow::compute::filter_record_batch(&spliced, &mask)
                    .map_err(|e| malformed(e.to_string()))?
            };
            (batch, Kept::Mask(mask.into_parts().0))
        }
        Some(Selection::Indices(indices)) => {
            if let Some(bad) = indices.iter().find(|&&i| i as usize >= rows) {
                return Err(malformed(format!(
                    "selects row {bad} of a batch of {rows} rows"
                )));
            }
            let take = UInt32Array::from(indices);
            let batch = arrow::compute::take_record_batch(&spliced, &take)
                .map_err(|e| malformed(e.to_string()))?;
            (batch, Kept::Indices(take.into_parts().1.into()))
        }
    };
    Ok(Transformed {
        batch,
        rows: Some(kept),
    })
}

#[cfg(test)]
mod tests {
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::DataType;

    use super::*;
    use crate::plugin::NewColumn;

    fn input() -> RecordBatch {
        RecordBatch::try_from_iter([
            (
                "a",
                Arc::new(Int64Array::from(vec![1, 2, 3, 4])) as ArrayRef,
            ),
            (
                "b",
                Arc::new(StringArray::from(vec!["w", "x", "y", "z"])) as ArrayRef,
            ),
            (
                "c",
                Arc::new(Int64Array::from(vec![10, 20, 30, 40])) as ArrayRef,
            ),
        ])
        .unwrap()
    }

    fn int_column(name: &str, values: Vec<i64>) -> NewColumn {
        NewColumn {
            field: types::Field {
                name: name.into(),
                data_type: types::DataType::Int64,
                nullable: false,
            },
            column: types::Column {
                validity: None,
                values: types::ColumnValues::Int64(values),
            },
        }
    }

    #[test]
    fn projection_keeps_the_batch_order_and_shares_arrays() {
        let batch = input();
        let reads = vec!["c".to_string(), "a".to_string(), "nope".to_string()];
        let projected = project(&batch, Some(&reads));
        assert_eq!(columnar::column_names(&projected.schema()), "a, c");
        assert!(Arc::ptr_eq(projected.column(1), batch.column(2)));
        assert_eq!(project(&batch, None).num_columns(), 3);
    }

    #[test]
    fn a_splice_replaces_in_place_appends_drops_and_selects() {
        let splice = Splice {
            selection: Some(Selection::Mask(vec![0b1010])),
            columns: vec![
                int_column("d", vec![5, 6, 7, 8]),
                int_column("a", vec![0, -1, -2, -3]),
            ],
            drop: vec!["b".into()],
        };
        let out = apply(
            &input(),
            TransformOutput::Splice {
                splice,
                computed: Vec::new(),
            },
        )
        .unwrap();
        assert_eq!(columnar::column_names(&out.batch.schema()), "a, c, d");
        assert_eq!(out.rows.map(|k| k.indices()), Some(vec![1, 3]));
        let a = out
            .batch
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert_eq!(a.values().as_ref(), &[-1, -3]);
        let c = out
            .batch
            .column(1)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert_eq!(c.values().as_ref(), &[20, 40]);
        assert_eq!(out.batch.schema().field(2).data_type(), &DataType::Int64);
    }

    #[test]
    fn indices_may_repeat_and_reorder() {
        let splice = Splice {
            selection: Some(Selection::Indices(vec![3, 0, 0])),
            columns: Vec::new(),
            drop: Vec::new(),
        };
        let out = apply(
            &input(),
            TransformOutput::Splice {
                splice,
                computed: Vec::new(),
            },
        )
        .unwrap();
        let b = out
            .batch
            .column(1)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(b.iter().flatten().collect::<Vec<_>>(), vec!["z", "w", "w"]);
        assert_eq!(out.rows.map(|k| k.indices()), Some(vec![3, 0, 0]));
    }

    #[test]
    fn a_splice_that_does_not_fit_is_malformed() {
        let cases = [
            (
                Splice {
                    selection: None,
                    columns: vec![int_column("d", vec![1])],
                    drop: Vec::new(),
                },
                "new columns",
            ),
            (
                Splice {
                    selection: Some(Selection::Mask(vec![0, 0])),
                    columns: Vec::new(),
                    drop: Vec::new(),
                },
                "mask has 2 bytes",
            ),
            (
                Splice {
                    selection: Some(Selection::Indices(vec![4])),
                    columns: Vec::new(),
                    drop: Vec::new(),
                },
                "selects row 4",
            ),
            (
                Splice {
                    selection: None,
                    columns: Vec::new(),
                    drop: vec!["zz".into()],
                },
                "drops column `zz`",
            ),
        ];
        for (splice, expected) in cases {
            let error = apply(
                &input(),
                TransformOutput::Splice {
                    splice,
                    computed: Vec::new(),
                },
            )
            .unwrap_err();
            assert!(error.0.contains(expected), "{error} lacks {expected}");
        }
    }
}
