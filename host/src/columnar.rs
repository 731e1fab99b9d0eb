//! Conversion between arrow-rs record batches and the columnar
//! `record-batch` that crosses the plugin boundary.
//!
//! The WIT form mirrors Arrow's buffers (validity bitmap, values, offsets +
//! data), so each direction copies whole buffers, never row by row.
//!
//! Arrow types outside the WIT set are widened before crossing, losslessly
//! where Arrow can: all integers → `int64` (a `uint64` above `i64::MAX`
//! becomes null), `float16/32` → `float64`, `large_utf8`/`utf8_view` →
//! `utf8`, large/view binary → `binary`, timestamps of any unit →
//! microseconds (the zone is kept), `date64` → `date32`, dictionary-encoded
//! text → `utf8`, decimals → `float64`, and the all-null `null` type →
//! `utf8`. Any other type is an error naming the column.
//!
//! Everything a plugin returns is checked before it is trusted
//! ([`from_wit`]): field and column counts, value types, lengths, bitmap
//! sizes, offsets, UTF-8, nullability and unique names. A violation is a
//! [`MalformedBatch`] (the plugin runtime reports it as a
//! `malformed_output` failure of the call).

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BinaryArray, BooleanArray, Date32Array, Float64Array, Int64Array, StringArray,
    TimestampMicrosecondArray,
};
use arrow::buffer::{BooleanBuffer, Buffer, NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow::record_batch::{RecordBatch, RecordBatchOptions};

use crate::bindings::types;

/// The schema's column names, comma-separated, for error messages.
pub fn column_names(schema: &Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The WIT type a column of Arrow type `data_type` crosses as, or `None`
/// when weir cannot carry it.
pub fn wit_type(data_type: &DataType) -> Option<DataType> {
    use DataType::*;
    Some(match data_type {
        Boolean => Boolean,
        Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32 | UInt64 => Int64,
        Float16 | Float32 | Float64 | Decimal32(..) | Decimal64(..) | Decimal128(..)
        | Decimal256(..) => Float64,
        Utf8 | LargeUtf8 | Utf8View | Null => Utf8,
        Binary | LargeBinary | BinaryView | FixedSizeBinary(_) => Binary,
        Timestamp(_, zone) => Timestamp(TimeUnit::Microsecond, zone.clone()),
        Date32 | Date64 => Date32,
        Dictionary(_, value) if wit_type(value) == Some(Utf8) => Utf8,
        _ => return None,
    })
}

/// The schema `schema` has once widened to WIT types (see the module docs).
///
/// # Errors
/// Names the first column whose type weir cannot carry.
pub fn wit_schema(schema: &Schema) -> Result<Schema, String> {
    let fields = schema
        .fields()
        .iter()
        .map(|f| {
            let data_type = wit_type(f.data_type()).ok_or_else(|| {
                format!(
                    "column `{}` has type {}, which weir plugins cannot receive",
                    f.name(),
                    f.data_type()
                )
            })?;
            let nullable = f.is_nullable()
                || f.data_type() == &DataType::UInt64
                || f.data_type() == &DataType::Null;
            Ok(Field::new(f.name(), data_type, nullable))
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Schema::new(fields))
}

/// Widens every column of `batch` to its WIT type (a no-op for batches that
/// already use only WIT types).
///
/// # Errors
/// Names a column whose type cannot be carried or cast.
pub fn widen(batch: &RecordBatch) -> Result<RecordBatch, String> {
    // The common case, checked without building a schema: every column
    // already has a WIT type (every call of a stage asks).
    let fields = batch.schema_ref().fields();
    if fields
        .iter()
        .all(|f| wit_data_type(f.data_type()).is_some())
    {
        return Ok(batch.clone());
    }
    // Some column has another type, so the widened schema differs.
    let schema = wit_schema(batch.schema_ref())?;
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(column, field)| {
            if column.data_type() == field.data_type() {
                Ok(column.clone())
            } else {
                arrow::compute::cast(column, field.data_type()).map_err(|e| {
                    format!(
                        "column `{}`: cannot convert to {}: {e}",
                        field.name(),
                        field.data_type()
                    )
                })
            }
        })
        .collect::<Result<Vec<_>, String>>()?;
    RecordBatch::try_new(Arc::new(schema), columns).map_err(|e| e.to_string())
}

fn validity(array: &dyn Array) -> Option<Vec<u8>> {
    let nulls = array.logical_nulls()?;
    (nulls.null_count() > 0).then(|| nulls.inner().sliced().to_vec())
}

fn var_len(offsets: &[i32], data: &[u8]) -> types::VarLen {
    let first = offsets.first().copied().unwrap_or(0);
    let last = offsets.last().copied().unwrap_or(0);
    types::VarLen {
        offsets: if first == 0 {
            offsets.to_vec()
        } else {
            offsets.iter().map(|o| o - first).collect()
        },
        data: data[first as usize..last as usize].to_vec(),
    }
}

/// Converts an arrow-rs batch (widened first, see [`widen`]) into the WIT
/// form: `num_rows` × `num_columns`, same names, order and nullability.
///
/// # Errors
/// Names a column whose type cannot cross the boundary, or a batch of more
/// than `u32::MAX` rows.
pub fn to_wit(batch: &RecordBatch) -> Result<types::RecordBatch, String> {
    let batch = widen(batch)?;
    let schema = schema_to_wit(batch.schema_ref())?;
    let columns = batch
        .columns()
        .iter()
        .map(|c| column_to_wit(c.as_ref()))
        .collect();
    Ok(types::RecordBatch {
        schema,
        num_rows: u32::try_from(batch.num_rows())
            .map_err(|_| "a batch holds at most u32::MAX rows".to_string())?,
        columns,
    })
}

/// The WIT schema of an Arrow schema whose types are all WIT types (see
/// [`widen`]): same names, order and nullability.
///
/// # Errors
/// Names a field whose type has no WIT form.
pub(crate) fn schema_to_wit(schema: &Schema) -> Result<types::Schema, String> {
    let fields = schema
        .fields()
        .iter()
        .map(|f| {
            Ok(types::Field {
                name: f.name().clone(),
                data_type: wit_data_type(f.data_type())
                    .ok_or_else(|| format!("column `{}`: unsupported type", f.name()))?,
                nullable: f.is_nullable(),
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(types::Schema { fields })
}

pub(crate) fn wit_data_type(data_type: &DataType) -> Option<types::DataType> {
    Some(match data_type {
        DataType::Boolean => types::DataType::Boolean,
        DataType::Int64 => types::DataType::Int64,
        DataType::Float64 => types::DataType::Float64,
        DataType::Utf8 => types::DataType::Utf8,
        DataType::Binary => types::DataType::Binary,
        DataType::Timestamp(TimeUnit::Microsecond, zone) => {
            types::DataType::Timestamp(zone.as_ref().map(|z| z.to_string()))
        }
        DataType::Date32 => types::DataType::Date32,
        _ => return None,
    })
}

pub(crate) fn arrow_data_type(data_type: &types::DataType) -> DataType {
    match data_type {
        types::DataType::Boolean => DataType::Boolean,
        types::DataType::Int64 => DataType::Int64,
        types::DataType::Float64 => DataType::Float64,
        types::DataType::Utf8 => DataType::Utf8,
        types::DataType::Binary => DataType::Binary,
        types::DataType::Timestamp(zone) => {
            DataType::Timestamp(TimeUnit::Microsecond, zone.as_deref().map(Arc::from))
        }
        types::DataType::Date32 => DataType::Date32,
    }
}

pub(crate) fn column_to_wit(array: &dyn Array) -> types::Column {
    use arrow::array::AsArray;
    use arrow::datatypes::{Date32Type, Float64Type, Int64Type, TimestampMicrosecondType};
    let values = match array.data_type() {
        DataType::Boolean => {
            types::ColumnValues::Boolean(array.as_boolean().values().sliced().to_vec())
        }
        DataType::Int64 => {
            types::ColumnValues::Int64(array.as_primitive::<Int64Type>().values().to_vec())
        }
        DataType::Float64 => {
            types::ColumnValues::Float64(array.as_primitive::<Float64Type>().values().to_vec())
        }
        DataType::Timestamp(..) => types::ColumnValues::Timestamp(
            array
                .as_primitive::<TimestampMicrosecondType>()
                .values()
                .to_vec(),
        ),
        DataType::Date32 => {
            types::ColumnValues::Date32(array.as_primitive::<Date32Type>().values().to_vec())
        }
        DataType::Utf8 => {
            let strings = array.as_string::<i32>();
            types::ColumnValues::Utf8(var_len(strings.value_offsets(), strings.value_data()))
        }
        DataType::Binary => {
            let bytes = array.as_binary::<i32>();
            types::ColumnValues::Binary(var_len(bytes.value_offsets(), bytes.value_data()))
        }
        other => unreachable!("widen() leaves only WIT types, found {other}"),
    };
    types::Column {
        validity: validity(array),
        values,
    }
}

/// Size of a WIT batch's column buffers, in bytes: what
/// `max_output_bytes` counts.
pub fn payload_bytes(batch: &types::RecordBatch) -> u64 {
    batch.columns.iter().map(column_payload_bytes).sum()
}

/// Size of one column's buffers, in bytes (see [`payload_bytes`]).
pub fn column_payload_bytes(column: &types::Column) -> u64 {
    let values = match &column.values {
        types::ColumnValues::Boolean(b) => b.len(),
        types::ColumnValues::Int64(v) | types::ColumnValues::Timestamp(v) => v.len() * 8,
        types::ColumnValues::Float64(v) => v.len() * 8,
        types::ColumnValues::Date32(v) => v.len() * 4,
        types::ColumnValues::Utf8(v) | types::ColumnValues::Binary(v) => {
            v.offsets.len() * 4 + v.data.len()
        }
    };
    (values + column.validity.as_ref().map_or(0, Vec::len)) as u64
}

/// A batch that breaks the WIT `record-batch` contract: which rule, and
/// where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct MalformedBatch(pub String);

fn malformed(message: String) -> MalformedBatch {
    MalformedBatch(message)
}

/// Converts a batch a plugin returned into arrow-rs, checking every shape
/// rule of the WIT `record-batch` (see the module docs).
///
/// # Errors
/// [`MalformedBatch`] naming the column and the broken rule.
pub fn from_wit(batch: types::RecordBatch) -> Result<RecordBatch, MalformedBatch> {
    let rows = batch.num_rows as usize;
    // Every column's length is checked against the claimed row count
    // before anything is allocated for it; a batch without columns has
    // nothing to check it against, so a claim of rows is refused (it made
    // the next stage allocate per claimed row: 4,294,967,295 rows failed
    // as `memory_limit` or `malformed_output` depending on the limit).
    if batch.columns.is_empty() && rows > 0 {
        return Err(malformed(format!(
            "a batch without columns claims {rows} rows; rows are carried by columns"
        )));
    }
    if batch.columns.len() != batch.schema.fields.len() {
        return Err(malformed(format!(
            "the schema has {} fields but the batch has {} columns",
            batch.schema.fields.len(),
            batch.columns.len()
        )));
    }
    let mut names = std::collections::HashSet::new();
    let mut fields = Vec::with_capacity(batch.columns.len());
    let mut arrays = Vec::with_capacity(batch.columns.len());
    for (field, column) in batch.schema.fields.into_iter().zip(batch.columns) {
        if !names.insert(field.name.clone()) {
            return Err(malformed(format!(
                "column name `{}` appears twice",
                field.name
            )));
        }
        let array = column_from_wit(&field, column, rows)
            .map_err(|e| malformed(format!("column `{}`: {e}", field.name)))?;
        if !field.nullable && array.null_count() > 0 {
            return Err(malformed(format!(
                "column `{}` is declared non-nullable but has {} nulls",
                field.name,
                array.null_count()
            )));
        }
        fields.push(Field::new(
            &field.name,
            arrow_data_type(&field.data_type),
            field.nullable,
        ));
        arrays.push(array);
    }
    let options = RecordBatchOptions::new().with_row_count(Some(rows));
    RecordBatch::try_new_with_options(Arc::new(Schema::new(fields)), arrays, &options)
        .map_err(|e| malformed(e.to_string()))
}

fn bitmap(bytes: Vec<u8>, rows: usize, what: &str) -> Result<BooleanBuffer, String> {
    let needed = rows.div_ceil(8);
    if bytes.len() < needed {
        return Err(format!(
            "{what} has {} bytes, {rows} rows need {needed}",
            bytes.len()
        ));
    }
    Ok(BooleanBuffer::new(Buffer::from_vec(bytes), 0, rows))
}

fn check_len(len: usize, rows: usize) -> Result<(), String> {
    if len != rows {
        return Err(format!("{len} values for {rows} rows"));
    }
    Ok(())
}

fn offsets(v: &types::VarLen, rows: usize) -> Result<OffsetBuffer<i32>, String> {
    if v.offsets.len() != rows + 1 {
        return Err(format!(
            "{} offsets for {rows} rows (need rows + 1)",
            v.offsets.len()
        ));
    }
    if v.offsets[0] < 0 || v.offsets.windows(2).any(|w| w[1] < w[0]) {
        return Err("offsets must start at or above 0 and never decrease".into());
    }
    let last = *v.offsets.last().expect("rows + 1 >= 1 offsets") as usize;
    if last > v.data.len() {
        return Err(format!(
            "offsets reach byte {last} but data has {} bytes",
            v.data.len()
        ));
    }
    Ok(OffsetBuffer::new(ScalarBuffer::from(v.offsets.clone())))
}

pub(crate) fn column_from_wit(
    field: &types::Field,
    column: types::Column,
    rows: usize,
) -> Result<ArrayRef, String> {
    let nulls = column
        .validity
        .map(|bytes| bitmap(bytes, rows, "the validity bitmap").map(NullBuffer::new))
        .transpose()?;
    let array: ArrayRef = match (&field.data_type, column.values) {
        (types::DataType::Boolean, types::ColumnValues::Boolean(bits)) => Arc::new(
            BooleanArray::new(bitmap(bits, rows, "the boolean bitmap")?, nulls),
        ),
        (types::DataType::Int64, types::ColumnValues::Int64(v)) => {
            check_len(v.len(), rows)?;
            Arc::new(Int64Array::new(v.into(), nulls))
        }
        (types::DataType::Float64, types::ColumnValues::Float64(v)) => {
            check_len(v.len(), rows)?;
            Arc::new(Float64Array::new(v.into(), nulls))
        }
        (types::DataType::Timestamp(zone), types::ColumnValues::Timestamp(v)) => {
            check_len(v.len(), rows)?;
            Arc::new(
                TimestampMicrosecondArray::new(v.into(), nulls).with_timezone_opt(zone.clone()),
            )
        }
        (types::DataType::Date32, types::ColumnValues::Date32(v)) => {
            check_len(v.len(), rows)?;
            Arc::new(Date32Array::new(v.into(), nulls))
        }
        (types::DataType::Utf8, types::ColumnValues::Utf8(v)) => {
            let offsets = offsets(&v, rows)?;
            Arc::new(
                StringArray::try_new(offsets, Buffer::from_vec(v.data), nulls)
                    .map_err(|e| e.to_string())?,
            )
        }
        (types::DataType::Binary, types::ColumnValues::Binary(v)) => {
            let offsets = offsets(&v, rows)?;
            Arc::new(
                BinaryArray::try_new(offsets, Buffer::from_vec(v.data), nulls)
                    .map_err(|e| e.to_string())?,
            )
        }
        (declared, _) => {
            return Err(format!(
                "declared {declared:?} but carries values of another type"
            ));
        }
    };
    Ok(array)
}

/// `batch` with a non-null `utf8` column appended per `(name, value)`, the
/// same value on every row (Hive partition values read back from paths,
/// the sink's lineage column).
///
/// # Errors
/// Only when arrow refuses the batch (a duplicate name is allowed by arrow;
/// callers that care check first).
pub fn with_constant_utf8(
    batch: RecordBatch,
    columns: &[(&str, Option<&str>)],
) -> Result<RecordBatch, arrow::error::ArrowError> {
    if columns.is_empty() {
        return Ok(batch);
    }
    let rows = batch.num_rows();
    let mut fields: Vec<Field> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    let mut arrays = batch.columns().to_vec();
    for (name, value) in columns {
        fields.push(Field::new(*name, DataType::Utf8, value.is_none()));
        arrays.push(Arc::new(StringArray::from(vec![*value; rows])));
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int32Array, UInt8Array};

    fn round_trip(batch: &RecordBatch) -> RecordBatch {
        from_wit(to_wit(batch).unwrap()).unwrap()
    }

    #[test]
    fn sliced_arrays_are_rebased() {
        let strings: ArrayRef = Arc::new(StringArray::from(vec![
            Some("a"),
            None,
            Some("ünï"),
            Some("東京"),
            None,
        ]));
        let ints: ArrayRef = Arc::new(Int64Array::from(vec![
            Some(1),
            None,
            Some(3),
            Some(4),
            Some(5),
        ]));
        let batch = RecordBatch::try_from_iter([("s", strings), ("i", ints)])
            .unwrap()
            .slice(1, 3);
        assert_eq!(round_trip(&batch), batch);
    }

    #[test]
    fn narrow_types_are_widened() {
        let batch = RecordBatch::try_from_iter([
            ("a", Arc::new(Int32Array::from(vec![1, -2])) as ArrayRef),
            (
                "b",
                Arc::new(UInt8Array::from(vec![Some(7), None])) as ArrayRef,
            ),
        ])
        .unwrap();
        let out = round_trip(&batch);
        assert_eq!(out.schema().field(0).data_type(), &DataType::Int64);
        assert_eq!(out.column(1).null_count(), 1);
    }

    #[test]
    fn a_batch_without_columns_cannot_claim_rows() {
        let batch = |num_rows| types::RecordBatch {
            schema: types::Schema { fields: vec![] },
            num_rows,
            columns: vec![],
        };
        let err = from_wit(batch(u32::MAX)).unwrap_err();
        assert!(err.to_string().contains("4294967295 rows"), "{err}");
        assert_eq!(from_wit(batch(0)).unwrap().num_rows(), 0);
    }

    #[test]
    fn malformed_offsets_are_rejected() {
        let batch = types::RecordBatch {
            schema: types::Schema {
                fields: vec![types::Field {
                    name: "s".into(),
                    data_type: types::DataType::Utf8,
                    nullable: false,
                }],
            },
            num_rows: 2,
            columns: vec![types::Column {
                validity: None,
                values: types::ColumnValues::Utf8(types::VarLen {
                    offsets: vec![0, 5, 2],
                    data: b"hello".to_vec(),
                }),
            }],
        };
        let err = from_wit(batch).unwrap_err();
        assert!(err.to_string().contains("never decrease"), "{err}");
    }

    #[test]
    fn invalid_utf8_and_short_columns_are_rejected() {
        let field = |t| types::Field {
            name: "c".into(),
            data_type: t,
            nullable: true,
        };
        let bad_utf8 = types::RecordBatch {
            schema: types::Schema {
                fields: vec![field(types::DataType::Utf8)],
            },
            num_rows: 1,
            columns: vec![types::Column {
                validity: None,
                values: types::ColumnValues::Utf8(types::VarLen {
                    offsets: vec![0, 2],
                    data: vec![0xff, 0xfe],
                }),
            }],
        };
        let err = from_wit(bad_utf8).unwrap_err();
        assert!(err.to_string().starts_with("column `c`"), "{err}");
        let short = types::RecordBatch {
            schema: types::Schema {
                fields: vec![field(types::DataType::Int64)],
            },
            num_rows: 3,
            columns: vec![types::Column {
                validity: None,
                values: types::ColumnValues::Int64(vec![1, 2]),
            }],
        };
        let err = from_wit(short).unwrap_err();
        assert!(err.to_string().contains("2 values for 3 rows"), "{err}");
    }
}
