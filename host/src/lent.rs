//! A batch lent to a plugin call: the WIT `record-batch` made of references
//! into the Arrow buffers, so wasmtime lowers each column straight from
//! Arrow into the plugin's memory (one copy per buffer, not two).
//!
//! [`columnar::to_wit`] builds an owned `record-batch` first, which copies
//! every buffer into a `Vec` only for wasmtime to copy it again. For a
//! numeric filter over 8192-row batches that first copy was about 6% of
//! the call (26.5 against 28.3 µs per batch, 2026-12-07). A [`BatchRef`]
//! (from [`Lendable::lend`]) borrows instead; only what Arrow does not hold
//! in the WIT layout is made anew: a boolean or validity bitmap that starts
//! inside a byte (a slice at a row that is not a multiple of 8) and string
//! offsets that do not start at 0 (a sliced `utf8`/`binary` column).
//! Columns of types that need widening ([`columnar::widen`]) are widened
//! first, as before.
//!
//! The types mirror `weir:plugin/types` field for field (0.1.0 and 0.2.0
//! have the same `record-batch`). wasmtime checks them against the
//! component's export on an instance's first call with them, before
//! anything is lowered, so a mismatch is an error, never a bad lowering.

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::buffer::Buffer;
use arrow::datatypes::{DataType, Date32Type, Float64Type, Int64Type, TimestampMicrosecondType};
use wasmtime::component::{ComponentType, Lower};

use crate::bindings::types;
use crate::columnar;

/// `weir:plugin/types.record-batch`, borrowed: `num_rows` × `columns.len()`
/// with the schema's fields in column order.
#[derive(ComponentType, Lower, Debug)]
#[component(record)]
pub struct BatchRef<'a> {
    #[component(name = "schema")]
    schema: &'a types::Schema,
    #[component(name = "num-rows")]
    num_rows: u32,
    #[component(name = "columns")]
    columns: Vec<ColumnRef<'a>>,
}

/// `weir:plugin/types.column`, borrowed.
#[derive(ComponentType, Lower, Debug)]
#[component(record)]
pub struct ColumnRef<'a> {
    /// One bit per row, LSB first; `None` when no value is null.
    #[component(name = "validity")]
    validity: Option<&'a [u8]>,
    #[component(name = "values")]
    values: ValuesRef<'a>,
}

/// `weir:plugin/types.column-values`, borrowed.
#[derive(ComponentType, Lower, Debug)]
#[component(variant)]
pub enum ValuesRef<'a> {
    /// One bit per row, LSB first.
    #[component(name = "boolean")]
    Boolean(&'a [u8]),
    /// One value per row (nulls' slots unspecified).
    #[component(name = "int64")]
    Int64(&'a [i64]),
    /// One value per row.
    #[component(name = "float64")]
    Float64(&'a [f64]),
    /// UTF-8 strings.
    #[component(name = "utf8")]
    Utf8(VarLenRef<'a>),
    /// Byte strings.
    #[component(name = "binary")]
    Binary(VarLenRef<'a>),
    /// Microseconds since the Unix epoch.
    #[component(name = "timestamp")]
    Timestamp(&'a [i64]),
    /// Days since the Unix epoch.
    #[component(name = "date32")]
    Date32(&'a [i32]),
}

/// `weir:plugin/types.var-len`, borrowed: `offsets` has one more entry
/// than rows and starts at 0; `data` is the bytes they point into.
#[derive(ComponentType, Lower, Debug)]
#[component(record)]
pub struct VarLenRef<'a> {
    #[component(name = "offsets")]
    offsets: &'a [i32],
    #[component(name = "data")]
    data: &'a [u8],
}

impl BatchRef<'_> {
    /// Rows in the batch.
    pub fn num_rows(&self) -> u32 {
        self.num_rows
    }

    /// Size of the column buffers in bytes, counted as
    /// [`columnar::payload_bytes`] counts an owned batch.
    pub fn payload_bytes(&self) -> u64 {
        self.columns
            .iter()
            .map(|c| {
                let values = match &c.values {
                    ValuesRef::Boolean(b) => b.len(),
                    ValuesRef::Int64(v) | ValuesRef::Timestamp(v) => v.len() * 8,
                    ValuesRef::Float64(v) => v.len() * 8,
                    ValuesRef::Date32(v) => v.len() * 4,
                    ValuesRef::Utf8(v) | ValuesRef::Binary(v) => v.offsets.len() * 4 + v.data.len(),
                };
                (values + c.validity.map_or(0, <[u8]>::len)) as u64
            })
            .sum()
    }
}

/// What a column needs made anew because Arrow does not hold it in the WIT
/// layout; everything else is borrowed from the batch.
struct Made {
    validity: Option<Buffer>,
    bits: Option<Buffer>,
    offsets: Option<Vec<i32>>,
}

/// An Arrow batch ready to be lent: the batch (widened to WIT types), its
/// WIT schema, and the few buffers made anew. [`Lendable::lend`] gives the
/// [`BatchRef`] a call lowers.
pub struct Lendable {
    batch: RecordBatch,
    schema: types::Schema,
    made: Vec<Made>,
}

impl Lendable {
    /// Prepares `batch` (its columns of types outside WIT widened first).
    ///
    /// # Errors
    /// As [`columnar::to_wit`]: a column whose type cannot cross the
    /// boundary, or more than `u32::MAX` rows.
    pub fn new(batch: &RecordBatch) -> Result<Lendable, String> {
        let batch = columnar::widen(batch)?;
        u32::try_from(batch.num_rows())
            .map_err(|_| "a batch holds at most u32::MAX rows".to_string())?;
        let schema = columnar::schema_to_wit(batch.schema_ref())?;
        let made = batch.columns().iter().map(|c| made(c.as_ref())).collect();
        Ok(Lendable {
            batch,
            schema,
            made,
        })
    }

    /// The batch as the call borrows it.
    pub fn lend(&self) -> BatchRef<'_> {
        let columns = self
            .batch
            .columns()
            .iter()
            .zip(&self.made)
            .map(|(array, made)| column_ref(array.as_ref(), made))
            .collect();
        BatchRef {
            schema: &self.schema,
            num_rows: self.batch.num_rows() as u32,
            columns,
        }
    }
}

fn made(array: &dyn Array) -> Made {
    let validity = array
        .logical_nulls()
        .filter(|n| n.null_count() > 0)
        .map(|n| n.inner().sliced());
    let bits = match array.data_type() {
        DataType::Boolean => Some(array.as_boolean().values().sliced()),
        _ => None,
    };
    let rebased = |offsets: &[i32]| {
        let first = offsets.first().copied().unwrap_or(0);
        (first != 0).then(|| offsets.iter().map(|o| o - first).collect())
    };
    let offsets = match array.data_type() {
        DataType::Utf8 => rebased(array.as_string::<i32>().value_offsets()),
        DataType::Binary => rebased(array.as_binary::<i32>().value_offsets()),
        _ => None,
    };
    Made {
        validity,
        bits,
        offsets,
    }
}

fn column_ref<'a>(array: &'a dyn Array, made: &'a Made) -> ColumnRef<'a> {
    let var_len = |offsets: &'a [i32], data: &'a [u8]| {
        let first = offsets.first().copied().unwrap_or(0) as usize;
        let last = offsets.last().copied().unwrap_or(0) as usize;
        VarLenRef {
            offsets: made.offsets.as_deref().unwrap_or(offsets),
            data: &data[first..last],
        }
    };
    let values = match array.data_type() {
        DataType::Boolean => ValuesRef::Boolean(made.bits.as_deref().unwrap_or_default()),
        DataType::Int64 => ValuesRef::Int64(array.as_primitive::<Int64Type>().values()),
        DataType::Float64 => ValuesRef::Float64(array.as_primitive::<Float64Type>().values()),
        DataType::Timestamp(..) => {
            ValuesRef::Timestamp(array.as_primitive::<TimestampMicrosecondType>().values())
        }
        DataType::Date32 => ValuesRef::Date32(array.as_primitive::<Date32Type>().values()),
        DataType::Utf8 => {
            let strings = array.as_string::<i32>();
            ValuesRef::Utf8(var_len(strings.value_offsets(), strings.value_data()))
        }
        DataType::Binary => {
            let bytes = array.as_binary::<i32>();
            ValuesRef::Binary(var_len(bytes.value_offsets(), bytes.value_data()))
        }
        other => unreachable!("widen() leaves only WIT types, found {other}"),
    };
    ColumnRef {
        validity: made.validity.as_deref(),
        values,
    }
}
