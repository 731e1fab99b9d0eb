//! The numeric filter of `filter.rs` built against the frozen contract
//! `weir:plugin@0.1.0` (`wit/0.1.0/`) with raw `wit-bindgen`, as components
//! built before 0.2.0 are: it receives every column and returns the whole
//! filtered batch. weir must keep loading and running it unchanged.
wit_bindgen::generate!({
    path: "../../wit/0.1.0",
    world: "transformer",
});

use exports::weir::plugin::transform::{Guest, RecordBatch};
use weir::plugin::types::{Column, ColumnValues, Error, VarLen};

struct LegacyFilter;

/// Keeps the rows at `keep` of a column (Arrow layout, least significant
/// bit first).
fn take(column: &Column, keep: &[usize]) -> Column {
    let bit = |bytes: &[u8], i: usize| bytes[i / 8] & (1 << (i % 8)) != 0;
    let bitmap = |get: &dyn Fn(usize) -> bool| {
        let mut out = vec![0u8; keep.len().div_ceil(8)];
        for (j, &i) in keep.iter().enumerate() {
            if get(i) {
                out[j / 8] |= 1 << (j % 8);
            }
        }
        out
    };
    let values = match &column.values {
        ColumnValues::Boolean(b) => ColumnValues::Boolean(bitmap(&|i| bit(b, i))),
        ColumnValues::Int64(v) => ColumnValues::Int64(keep.iter().map(|&i| v[i]).collect()),
        ColumnValues::Timestamp(v) => ColumnValues::Timestamp(keep.iter().map(|&i| v[i]).collect()),
        ColumnValues::Float64(v) => ColumnValues::Float64(keep.iter().map(|&i| v[i]).collect()),
        ColumnValues::Date32(v) => ColumnValues::Date32(keep.iter().map(|&i| v[i]).collect()),
        ColumnValues::Utf8(v) => ColumnValues::Utf8(take_var_len(v, keep)),
        ColumnValues::Binary(v) => ColumnValues::Binary(take_var_len(v, keep)),
    };
    let validity = column.validity.as_ref().map(|v| bitmap(&|i| bit(v, i)));
    Column { validity, values }
}

/// Keeps the values at `keep` of a text or binary column.
fn take_var_len(column: &VarLen, keep: &[usize]) -> VarLen {
    let mut offsets = Vec::with_capacity(keep.len() + 1);
    let mut data = Vec::new();
    offsets.push(0);
    for &i in keep {
        let (start, end) = (column.offsets[i] as usize, column.offsets[i + 1] as usize);
        data.extend_from_slice(&column.data[start..end]);
        offsets.push(data.len() as i32);
    }
    VarLen { offsets, data }
}

impl Guest for LegacyFilter {
    fn transform(batch: RecordBatch) -> Result<RecordBatch, Error> {
        let index = batch
            .schema
            .fields
            .iter()
            .position(|f| f.name == "value")
            .ok_or_else(|| Error::InvalidInput("the batch has no column `value`".into()))?;
        let column = &batch.columns[index];
        let ColumnValues::Int64(values) = &column.values else {
            return Err(Error::InvalidInput("column `value` is not int64".into()));
        };
        let valid = |i: usize| {
            column
                .validity
                .as_ref()
                .is_none_or(|v| v[i / 8] & (1 << (i % 8)) != 0)
        };
        let keep: Vec<usize> = (0..values.len())
            .filter(|&i| valid(i) && values[i] > 0)
            .collect();
        Ok(RecordBatch {
            schema: batch.schema.clone(),
            num_rows: keep.len() as u32,
            columns: batch.columns.iter().map(|c| take(c, &keep)).collect(),
        })
    }
}

export!(LegacyFilter);
