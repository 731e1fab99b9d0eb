//! Conversions between the WIT [`RecordBatch`] and
//! arrow-rs [`arrow_array::RecordBatch`] (feature `arrow`), so a plugin can
//! use Arrow kernels on its input.
//!
//! Both directions copy whole buffers. Arrow types outside the WIT set
//! ([`to_wit`]) are an error naming the column: cast them first.
//!
//! ```no_run
//! # fn demo(batch: weir_sdk::RecordBatch) -> Result<weir_sdk::RecordBatch, weir_sdk::Error> {
//! let arrow_batch = weir_sdk::arrow::from_wit(batch)?;
//! // ... arrow kernels ...
//! weir_sdk::arrow::to_wit(&arrow_batch)
//! # }
//! ```

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Date32Type, Float64Type, Int64Type, TimestampMicrosecondType};
use arrow_array::{
    Array, ArrayRef, BinaryArray, BooleanArray, Date32Array, Float64Array, Int64Array,
    RecordBatchOptions, StringArray, TimestampMicrosecondArray,
};
use arrow_buffer::{BooleanBuffer, Buffer, NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow_schema::{DataType as ArrowType, Field as ArrowField, Schema as ArrowSchema, TimeUnit};

use crate::{Column, ColumnValues, DataType, Error, Field, RecordBatch, Schema, VarLen};

fn arrow_type(data_type: &DataType) -> ArrowType {
    match data_type {
        DataType::Boolean => ArrowType::Boolean,
        DataType::Int64 => ArrowType::Int64,
        DataType::Float64 => ArrowType::Float64,
        DataType::Utf8 => ArrowType::Utf8,
        DataType::Binary => ArrowType::Binary,
        DataType::Timestamp(zone) => {
            ArrowType::Timestamp(TimeUnit::Microsecond, zone.as_deref().map(Arc::from))
        }
        DataType::Date32 => ArrowType::Date32,
    }
}

fn wit_type(name: &str, data_type: &ArrowType) -> Result<DataType, Error> {
    Ok(match data_type {
        ArrowType::Boolean => DataType::Boolean,
        ArrowType::Int64 => DataType::Int64,
        ArrowType::Float64 => DataType::Float64,
        ArrowType::Utf8 => DataType::Utf8,
        ArrowType::Binary => DataType::Binary,
        ArrowType::Timestamp(TimeUnit::Microsecond, zone) => {
            DataType::Timestamp(zone.as_ref().map(|z| z.to_string()))
        }
        ArrowType::Date32 => DataType::Date32,
        other => {
            return Err(Error::Internal(format!(
                "column `{name}` has Arrow type {other}, which has no WIT equivalent; cast it first"
            )));
        }
    })
}

fn bitmap(bytes: Vec<u8>, rows: usize) -> Result<BooleanBuffer, Error> {
    if bytes.len() < rows.div_ceil(8) {
        return Err(Error::InvalidInput(format!(
            "a bitmap of {} bytes cannot hold {rows} rows",
            bytes.len()
        )));
    }
    Ok(BooleanBuffer::new(Buffer::from_vec(bytes), 0, rows))
}

fn offsets(v: &VarLen) -> Result<OffsetBuffer<i32>, Error> {
    if v.offsets.first().is_none_or(|&o| o < 0) || v.offsets.windows(2).any(|w| w[1] < w[0]) {
        return Err(Error::InvalidInput(
            "offsets must start at or above 0 and never decrease".into(),
        ));
    }
    Ok(OffsetBuffer::new(ScalarBuffer::from(v.offsets.clone())))
}

fn array_from_wit(field: &Field, column: Column, rows: usize) -> Result<ArrayRef, Error> {
    let nulls = column
        .validity
        .map(|b| bitmap(b, rows).map(NullBuffer::new))
        .transpose()?;
    let invalid =
        |e: arrow_schema::ArrowError| Error::InvalidInput(format!("column `{}`: {e}", field.name));
    Ok(match column.values {
        ColumnValues::Boolean(bits) => Arc::new(BooleanArray::new(bitmap(bits, rows)?, nulls)),
        ColumnValues::Int64(v) => Arc::new(Int64Array::try_new(v.into(), nulls).map_err(invalid)?),
        ColumnValues::Float64(v) => {
            Arc::new(Float64Array::try_new(v.into(), nulls).map_err(invalid)?)
        }
        ColumnValues::Timestamp(v) => {
            let zone = match &field.data_type {
                DataType::Timestamp(zone) => zone.clone(),
                _ => None,
            };
            Arc::new(
                TimestampMicrosecondArray::try_new(v.into(), nulls)
                    .map_err(invalid)?
                    .with_timezone_opt(zone),
            )
        }
        ColumnValues::Date32(v) => {
            Arc::new(Date32Array::try_new(v.into(), nulls).map_err(invalid)?)
        }
        ColumnValues::Utf8(v) => Arc::new(
            StringArray::try_new(offsets(&v)?, Buffer::from_vec(v.data), nulls).map_err(invalid)?,
        ),
        ColumnValues::Binary(v) => Arc::new(
            BinaryArray::try_new(offsets(&v)?, Buffer::from_vec(v.data), nulls).map_err(invalid)?,
        ),
    })
}

/// Converts a WIT batch into an arrow-rs batch with the same names, types,
/// nullability and rows.
///
/// # Errors
/// [`Error::InvalidInput`] when the batch breaks its shape rules.
pub fn from_wit(batch: RecordBatch) -> Result<arrow_array::RecordBatch, Error> {
    let rows = batch.num_rows as usize;
    let mut fields = Vec::with_capacity(batch.columns.len());
    let mut arrays = Vec::with_capacity(batch.columns.len());
    for (field, column) in batch.schema.fields.into_iter().zip(batch.columns) {
        arrays.push(array_from_wit(&field, column, rows)?);
        fields.push(ArrowField::new(
            &field.name,
            arrow_type(&field.data_type),
            field.nullable,
        ));
    }
    let options = RecordBatchOptions::new().with_row_count(Some(rows));
    arrow_array::RecordBatch::try_new_with_options(
        Arc::new(ArrowSchema::new(fields)),
        arrays,
        &options,
    )
    .map_err(|e| Error::InvalidInput(e.to_string()))
}

fn var_len(offsets: &[i32], data: &[u8]) -> VarLen {
    let first = offsets.first().copied().unwrap_or(0);
    let last = offsets.last().copied().unwrap_or(0);
    VarLen {
        offsets: offsets.iter().map(|o| o - first).collect(),
        data: data[first as usize..last as usize].to_vec(),
    }
}

/// Converts an arrow-rs batch whose columns all have WIT types (boolean,
/// int64, float64, utf8, binary, timestamp µs, date32) into a WIT batch.
///
/// # Errors
/// [`Error::Internal`] naming a column of another Arrow type.
pub fn to_wit(batch: &arrow_array::RecordBatch) -> Result<RecordBatch, Error> {
    let mut fields = Vec::with_capacity(batch.num_columns());
    let mut columns = Vec::with_capacity(batch.num_columns());
    for (field, array) in batch.schema().fields().iter().zip(batch.columns()) {
        let data_type = wit_type(field.name(), field.data_type())?;
        let values = match &data_type {
            DataType::Boolean => {
                ColumnValues::Boolean(array.as_boolean().values().sliced().to_vec())
            }
            DataType::Int64 => {
                ColumnValues::Int64(array.as_primitive::<Int64Type>().values().to_vec())
            }
            DataType::Float64 => {
                ColumnValues::Float64(array.as_primitive::<Float64Type>().values().to_vec())
            }
            DataType::Timestamp(_) => ColumnValues::Timestamp(
                array
                    .as_primitive::<TimestampMicrosecondType>()
                    .values()
                    .to_vec(),
            ),
            DataType::Date32 => {
                ColumnValues::Date32(array.as_primitive::<Date32Type>().values().to_vec())
            }
            DataType::Utf8 => {
                let s = array.as_string::<i32>();
                ColumnValues::Utf8(var_len(s.value_offsets(), s.value_data()))
            }
            DataType::Binary => {
                let b = array.as_binary::<i32>();
                ColumnValues::Binary(var_len(b.value_offsets(), b.value_data()))
            }
        };
        let validity = array
            .nulls()
            .filter(|n| n.null_count() > 0)
            .map(|n| n.inner().sliced().to_vec());
        columns.push(Column { validity, values });
        fields.push(Field {
            name: field.name().clone(),
            data_type,
            nullable: field.is_nullable(),
        });
    }
    Ok(RecordBatch {
        schema: Schema { fields },
        num_rows: u32::try_from(batch.num_rows())
            .map_err(|_| Error::Internal("more than u32::MAX rows".into()))?,
        columns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_nulls_and_slices() {
        let wit = RecordBatch::try_new(
            vec![
                Field {
                    name: "i".into(),
                    data_type: DataType::Int64,
                    nullable: true,
                },
                Field {
                    name: "s".into(),
                    data_type: DataType::Utf8,
                    nullable: true,
                },
                Field {
                    name: "b".into(),
                    data_type: DataType::Boolean,
                    nullable: true,
                },
                Field {
                    name: "t".into(),
                    data_type: DataType::Timestamp(Some("UTC".into())),
                    nullable: false,
                },
            ],
            vec![
                Column::from_int64([Some(1), None, Some(3)]),
                Column::from_utf8([Some("zürich"), Some("東京"), None]),
                Column::from_boolean([Some(true), None, Some(false)]),
                Column::from_timestamp([Some(0), Some(1), Some(2)]),
            ],
            3,
        )
        .unwrap();
        let arrow = from_wit(wit.clone()).unwrap();
        assert_eq!(arrow.num_rows(), 3);
        assert_eq!(to_wit(&arrow).unwrap(), wit);
        let sliced = to_wit(&arrow.slice(1, 2)).unwrap();
        assert_eq!(
            sliced.utf8("s").unwrap().iter().collect::<Vec<_>>(),
            vec![Some("東京"), None]
        );
    }
}
