//! The host side of `weir:plugin/compute@0.2.0`: column handles and the
//! kernels of [`crate::kernels`] as functions a plugin imports.
//!
//! A call's handles live in a [`ComputeCall`] in the store: a number per
//! array, forgotten when the next call begins, so a plugin never drops
//! them and a handle kept across calls is refused rather than reused.
//! Handle numbers keep counting up across calls (wrapping after 2³²), so a
//! stale one does not name a newer array. The functions are linked by
//! hand, like [`super::state`], because charging fuel needs the store.
//!
//! # Costs
//! A kernel runs on the host's CPU on the plugin's behalf, so it is paid
//! for from the call's fuel (its `fuel_per_batch`, and through it the
//! tenant's `fuel_per_second`) before it runs: [`FUEL_PER_KERNEL`] per
//! call, plus [`FUEL_PER_VALUE`] per value of the result, plus
//! [`FUEL_PER_BYTE`] per byte of text or bytes it reads ([`FUEL_PER_REGEX_BYTE`]
//! for `matches` with a regex, [`FUEL_PER_HASHED_BYTE`] and
//! [`FUEL_PER_HASH`] per value for `hash`). The rates are about what the
//! same work costs as WebAssembly instructions compiled from Rust (one
//! fuel unit each): a compare or add over an int64 column is a load, an
//! operation, a store and a loop branch per value; a lowercase or
//! substring search a few instructions per byte; software SHA-256 about
//! 15–20 instructions per byte plus a block's setup per value. Moving work
//! into kernels is then faster, not cheaper in quota.
//!
//! The arrays a call's kernels create count against the stage's
//! `max_memory_bytes` (their Arrow buffer sizes, summed over the call); a
//! kernel that would pass it ends the call as `memory_limit`.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Result;
use arrow::array::{Array, ArrayRef};
use arrow::record_batch::RecordBatch;
use wasmtime::StoreContextMut;
use wasmtime::component::Linker;

use super::PluginState;
use super::VerdictMessage;
use super::limits::MemoryLimitExceeded;
use crate::bindings::types;
use crate::bindings::v0_2::compute::{
    ArithOp, BoolOp, CmpOp, ColInfo, HashOp, MatchOp, Scalar, TextOp,
};
use crate::columnar;
use crate::kernels::{self, KernelError, Texts, Value};

/// The instance the functions are defined in.
pub const COMPUTE_INTERFACE: &str = "weir:plugin/compute@0.2.0";

/// Fuel charged for every compute function call.
pub const FUEL_PER_KERNEL: u64 = 100;
/// Fuel charged per value a kernel produces (or `read` copies).
pub const FUEL_PER_VALUE: u64 = 4;
/// Fuel charged per byte of utf8 or binary data a kernel reads.
pub const FUEL_PER_BYTE: u64 = 2;
/// Fuel charged per byte a regex scans.
pub const FUEL_PER_REGEX_BYTE: u64 = 8;
/// Fuel charged per byte hashed (salt included).
pub const FUEL_PER_HASHED_BYTE: u64 = 16;
/// Fuel charged per value hashed (padding and the last block).
pub const FUEL_PER_HASH: u64 = 1_000;

/// Kernel outputs the host adds to a call's result.
#[derive(Debug, Default)]
pub struct ComputeOutputs {
    /// `emit`: (name, one value per input row), in call order.
    pub emitted: Vec<(String, ArrayRef)>,
    /// `reject` and `reject-each`, in call order.
    pub rejected: Vec<Rejection>,
}

/// The rows one `reject` or `reject-each` call failed.
#[derive(Debug)]
pub struct Rejection {
    /// The failing rows, ascending.
    pub rows: Vec<u32>,
    /// The rule they failed.
    pub rule: String,
    /// Why: one message for every row, or one per row of `rows`.
    pub messages: RejectMessages,
}

/// The messages of a [`Rejection`].
#[derive(Debug)]
pub enum RejectMessages {
    /// `reject`: the same message on every row.
    Same(String),
    /// `reject-each`: `rows.len()` messages, in the order of `rows`.
    Each(Texts),
}

impl Rejection {
    /// (row, rule, message) for each failing row; the rows share one
    /// copy of the rule, and one of the message or of the buffer of
    /// messages.
    pub fn into_verdicts(self) -> impl Iterator<Item = (u32, Arc<str>, VerdictMessage)> {
        let Rejection {
            rows,
            rule,
            messages,
        } = self;
        let rule: Arc<str> = Arc::from(rule);
        // Without a boxed iterator of messages: a dynamic call per rejected
        // row. `Each` holds one message per row of `rows`.
        let message = match messages {
            RejectMessages::Same(message) => VerdictMessage::Text(Arc::from(message)),
            RejectMessages::Each(each) => VerdictMessage::Row(Arc::new(each), 0),
        };
        rows.into_iter().enumerate().map(move |(i, row)| {
            let message = match &message {
                VerdictMessage::Text(text) => VerdictMessage::Text(text.clone()),
                VerdictMessage::Row(each, _) => VerdictMessage::Row(each.clone(), i as u32),
            };
            (row, rule.clone(), message)
        })
    }
}

/// The handles and outputs of the running call.
#[derive(Debug, Default)]
pub struct ComputeCall {
    /// The whole input batch (all its columns), when the call has one.
    input: Option<RecordBatch>,
    values: HashMap<u32, Value>,
    next: u32,
    /// Bytes of the arrays kernels created during the call.
    bytes: u64,
    /// The stage's `max_memory_bytes`.
    limit_bytes: u64,
    outputs: ComputeOutputs,
}

impl ComputeCall {
    /// An empty call state whose kernels may create up to `limit_bytes`.
    pub fn new(limit_bytes: u64) -> ComputeCall {
        ComputeCall {
            limit_bytes,
            ..ComputeCall::default()
        }
    }

    /// Forgets the last call's handles and outputs; `input` is the batch
    /// of the call about to begin (none for `describe` and `extract`).
    pub fn begin(&mut self, input: Option<RecordBatch>) {
        self.input = input;
        self.values.clear();
        self.bytes = 0;
        self.outputs = ComputeOutputs::default();
    }

    /// Takes what the call emitted and rejected.
    pub fn take_outputs(&mut self) -> ComputeOutputs {
        self.values.clear();
        self.input = None;
        std::mem::take(&mut self.outputs)
    }

    fn rows(&self) -> Result<usize, KernelError> {
        self.input
            .as_ref()
            .map(RecordBatch::num_rows)
            .ok_or_else(|| {
                KernelError("compute kernels run only during a transform or validate call".into())
            })
    }

    fn get(&self, handle: u32) -> Result<&Value, KernelError> {
        self.values.get(&handle).ok_or_else(|| {
            KernelError(format!(
                "column handle {handle} is not live (handles last for the call that made them)"
            ))
        })
    }

    /// The rows where the boolean `mask` is true (a scalar is broadcast;
    /// a null is not true): those a `reject` fails.
    fn failing_rows(&self, mask: &Value) -> Result<Vec<u32>, KernelError> {
        let mask = mask.broadcast(self.rows()?)?;
        kernels::selected(&Value::column(mask))
    }

    /// Counts `bytes` more of the call's kernel memory, or ends the call
    /// past the limit.
    fn account(&mut self, bytes: u64) -> wasmtime::Result<()> {
        self.bytes = self.bytes.saturating_add(bytes);
        if self.bytes > self.limit_bytes {
            return Err(wasmtime::Error::new(MemoryLimitExceeded {
                requested_bytes: self.bytes,
                limit_bytes: self.limit_bytes,
            }));
        }
        Ok(())
    }

    /// Keeps `value` and returns its handle, or ends the call past the
    /// memory limit.
    fn keep(&mut self, value: Value, created: bool) -> wasmtime::Result<u32> {
        if created {
            self.account(value.array.get_array_memory_size() as u64)?;
        }
        let handle = self.next;
        self.next = self.next.wrapping_add(1);
        self.values.insert(handle, value);
        Ok(handle)
    }
}

/// Bytes of utf8 or binary data in `value` (0 for fixed-width types).
fn data_bytes(value: &Value) -> usize {
    use arrow::array::AsArray;
    use arrow::datatypes::DataType;
    match value.array.data_type() {
        DataType::Utf8 => value.array.as_string::<i32>().value_data().len(),
        DataType::Binary => value.array.as_binary::<i32>().value_data().len(),
        _ => 0,
    }
}

/// Takes the fuel for a kernel over `values` values and `bytes` bytes at
/// `per_byte` from the call.
fn charge(
    store: &mut StoreContextMut<'_, PluginState>,
    values: usize,
    bytes: usize,
    per_byte: u64,
) -> wasmtime::Result<()> {
    let cost = FUEL_PER_KERNEL
        .saturating_add(FUEL_PER_VALUE.saturating_mul(values as u64))
        .saturating_add(per_byte.saturating_mul(bytes as u64));
    super::take_fuel(store, cost)
}

fn invalid(error: KernelError) -> types::Error {
    types::Error::InvalidInput(error.0)
}

/// The operands' values (cloned `Arc`s), and the values a kernel over them
/// produces: the batch's rows, or 1 when all are scalars.
fn operands(
    store: &StoreContextMut<'_, PluginState>,
    handles: &[u32],
) -> Result<(Vec<Value>, usize), KernelError> {
    let call = &store.data().compute;
    let values = handles
        .iter()
        .map(|&h| call.get(h).cloned())
        .collect::<Result<Vec<_>, _>>()?;
    let n = if values.iter().all(|v| v.scalar) {
        1
    } else {
        call.rows()?
    };
    Ok((values, n))
}

type Answer<T> = wasmtime::Result<(Result<T, types::Error>,)>;

/// Runs `kernel` over the values of `handles` after charging for them,
/// and keeps its result.
fn run(
    store: &mut StoreContextMut<'_, PluginState>,
    handles: &[u32],
    per_byte: u64,
    extra: u64,
    kernel: impl FnOnce(&[Value]) -> Result<Value, KernelError>,
) -> Answer<u32> {
    let (values, n) = match operands(store, handles) {
        Ok(found) => found,
        Err(error) => return Ok((Err(invalid(error)),)),
    };
    let bytes: usize = values.iter().map(data_bytes).sum();
    charge(store, n, bytes, per_byte)?;
    if extra > 0 {
        charge(store, 0, n, extra)?;
    }
    match kernel(&values) {
        Ok(value) => Ok((Ok(store.data_mut().compute.keep(value, true)?),)),
        Err(error) => Ok((Err(invalid(error)),)),
    }
}

fn scalar_array(value: Scalar) -> Value {
    use arrow::array::{BinaryArray, BooleanArray, Float64Array, Int64Array, StringArray};
    let array: ArrayRef = match value {
        Scalar::Null => return Value::null(),
        Scalar::Boolean(v) => Arc::new(BooleanArray::from(vec![v])),
        Scalar::Int64(v) => Arc::new(Int64Array::from(vec![v])),
        Scalar::Float64(v) => Arc::new(Float64Array::from(vec![v])),
        Scalar::Utf8(v) => Arc::new(StringArray::from(vec![v])),
        Scalar::Binary(v) => Arc::new(BinaryArray::from_vec(vec![&v[..]])),
    };
    Value::scalar(array)
}

/// The WIT data type `values` carries (a timestamp without a zone).
fn carried_type(values: &types::ColumnValues) -> types::DataType {
    use types::{ColumnValues as V, DataType as T};
    match values {
        V::Boolean(_) => T::Boolean,
        V::Int64(_) => T::Int64,
        V::Float64(_) => T::Float64,
        V::Utf8(_) => T::Utf8,
        V::Binary(_) => T::Binary,
        V::Timestamp(_) => T::Timestamp(None),
        V::Date32(_) => T::Date32,
    }
}

type Store<'a> = StoreContextMut<'a, PluginState>;

/// Defines `weir:plugin/compute@0.2.0` in `linker`.
///
/// # Errors
/// When the linker already defines it.
pub fn add_to_linker(linker: &mut Linker<PluginState>) -> Result<()> {
    let mut compute = linker.instance(COMPUTE_INTERFACE)?;
    compute.func_wrap(
        "input",
        |mut store: Store<'_>, (name,): (String,)| -> Answer<u32> {
            charge(&mut store, 0, 0, 0)?;
            let call = &store.data().compute;
            let found = call.rows().and_then(|_| {
                let batch = call.input.as_ref().expect("rows() checked it");
                let index = batch.schema().index_of(&name).map_err(|_| {
                    KernelError(format!(
                        "no column `{name}`; the batch has {}",
                        columnar::column_names(&batch.schema())
                    ))
                })?;
                let array = batch.column(index).clone();
                // The contract's types only: narrower Arrow types are widened
                // as they would be to cross the boundary.
                match columnar::wit_type(array.data_type()) {
                    Some(wide) if &wide != array.data_type() => {
                        Ok((kernels::cast(&Value::column(array), &wide)?, true))
                    }
                    Some(_) => Ok((Value::column(array), false)),
                    None => Err(KernelError(format!(
                        "column `{name}` has type {}, which the contract does not carry",
                        array.data_type()
                    ))),
                }
            });
            match found {
                Ok((value, created)) => Ok((Ok(store.data_mut().compute.keep(value, created)?),)),
                Err(error) => Ok((Err(invalid(error)),)),
            }
        },
    )?;
    compute.func_wrap("literal", |mut store: Store<'_>, (value,): (Scalar,)| {
        let bytes = match &value {
            Scalar::Utf8(v) => v.len(),
            Scalar::Binary(v) => v.len(),
            _ => 0,
        };
        charge(&mut store, 1, bytes, FUEL_PER_BYTE)?;
        Ok((store.data_mut().compute.keep(scalar_array(value), true)?,))
    })?;
    compute.func_wrap(
        "from-column",
        |mut store: Store<'_>, (column,): (types::Column,)| -> Answer<u32> {
            let rows = match store.data().compute.rows() {
                Ok(rows) => rows,
                Err(error) => return Ok((Err(invalid(error)),)),
            };
            let bytes = columnar::column_payload_bytes(&column) as usize;
            charge(&mut store, rows, bytes, 1)?;
            let field = types::Field {
                name: "from-column".into(),
                data_type: carried_type(&column.values),
                nullable: true,
            };
            match columnar::column_from_wit(&field, column, rows) {
                Ok(array) => Ok((Ok(store
                    .data_mut()
                    .compute
                    .keep(Value::column(array), true)?),)),
                Err(error) => Ok((Err(types::Error::InvalidInput(format!(
                    "from-column: {error}"
                ))),)),
            }
        },
    )?;
    compute.func_wrap(
        "read",
        |mut store: Store<'_>, (handle,): (u32,)| -> Answer<types::Column> {
            let value = match operands(&store, &[handle]) {
                Ok((mut values, _)) => values.pop().expect("one handle"),
                Err(error) => return Ok((Err(invalid(error)),)),
            };
            charge(&mut store, value.array.len(), data_bytes(&value), 1)?;
            Ok((Ok(columnar::column_to_wit(value.array.as_ref())),))
        },
    )?;
    compute.func_wrap(
        "info",
        |mut store: Store<'_>, (handle,): (u32,)| -> Answer<ColInfo> {
            charge(&mut store, 0, 0, 0)?;
            let value = match store.data().compute.get(handle) {
                Ok(value) => value,
                Err(error) => return Ok((Err(invalid(error)),)),
            };
            let data_type =
                columnar::wit_data_type(value.array.data_type()).unwrap_or(types::DataType::Utf8);
            Ok((Ok(ColInfo {
                data_type,
                len: value.array.len() as u32,
                null_count: value.array.logical_null_count() as u32,
                is_scalar: value.scalar,
            }),))
        },
    )?;
    compute.func_wrap(
        "compare",
        |mut store: Store<'_>, (a, op, b): (u32, CmpOp, u32)| {
            run(&mut store, &[a, b], FUEL_PER_BYTE, 0, |v| {
                kernels::compare(&v[0], op, &v[1])
            })
        },
    )?;
    compute.func_wrap(
        "arith",
        |mut store: Store<'_>, (a, op, b): (u32, ArithOp, u32)| {
            run(&mut store, &[a, b], 0, 0, |v| {
                kernels::arith(&v[0], op, &v[1])
            })
        },
    )?;
    compute.func_wrap(
        "logic",
        |mut store: Store<'_>, (a, op, b): (u32, BoolOp, u32)| {
            run(&mut store, &[a, b], 0, 0, |v| {
                kernels::logic(&v[0], op, &v[1])
            })
        },
    )?;
    compute.func_wrap("invert", |mut store: Store<'_>, (a,): (u32,)| {
        run(&mut store, &[a], 0, 0, |v| kernels::invert(&v[0]))
    })?;
    compute.func_wrap("is-null", |mut store: Store<'_>, (a,): (u32,)| {
        run(&mut store, &[a], 0, 0, |v| Ok(kernels::is_null(&v[0])))
    })?;
    compute.func_wrap("fill-null", |mut store: Store<'_>, (a, b): (u32, u32)| {
        run(&mut store, &[a, b], FUEL_PER_BYTE, 0, |v| {
            kernels::fill_null(&v[0], &v[1])
        })
    })?;
    compute.func_wrap(
        "cast",
        |mut store: Store<'_>, (a, to): (u32, types::DataType)| {
            run(&mut store, &[a], FUEL_PER_BYTE, 0, |v| {
                kernels::cast(&v[0], &columnar::arrow_data_type(&to))
            })
        },
    )?;
    compute.func_wrap("text", |mut store: Store<'_>, (a, op): (u32, TextOp)| {
        run(&mut store, &[a], FUEL_PER_BYTE, 0, |v| {
            kernels::text(&v[0], op)
        })
    })?;
    compute.func_wrap(
        "matches",
        |mut store: Store<'_>, (a, op, pattern): (u32, MatchOp, String)| {
            let per_byte = match op {
                MatchOp::Regex => FUEL_PER_REGEX_BYTE,
                _ => FUEL_PER_BYTE,
            };
            run(&mut store, &[a], per_byte, 0, |v| {
                kernels::matches(&v[0], op, &pattern)
            })
        },
    )?;
    compute.func_wrap(
        "hash",
        |mut store: Store<'_>, (a, op, salt): (u32, HashOp, Vec<u8>)| {
            // Per value: the fixed cost plus the salt, hashed again each time.
            let per_value = FUEL_PER_HASH + FUEL_PER_HASHED_BYTE * salt.len() as u64;
            run(&mut store, &[a], FUEL_PER_HASHED_BYTE, per_value, |v| {
                kernels::hash(&v[0], op, &salt)
            })
        },
    )?;
    compute.func_wrap(
        "bucket",
        |mut store: Store<'_>, (a, breaks): (u32, Vec<f64>)| {
            // A binary search: about log2(breaks) compares per value.
            let per_value = u64::from(usize::BITS - breaks.len().leading_zeros());
            run(&mut store, &[a], 0, per_value, |v| {
                kernels::bucket(&v[0], &breaks)
            })
        },
    )?;
    compute.func_wrap(
        "lookup",
        |mut store: Store<'_>, (a, labels): (u32, Vec<String>)| {
            let longest = labels.iter().map(String::len).max().unwrap_or(0) as u64;
            run(&mut store, &[a], 0, longest * FUEL_PER_BYTE, |v| {
                kernels::lookup(&v[0], &labels)
            })
        },
    )?;
    compute.func_wrap(
        "if-else",
        |mut store: Store<'_>, (mask, t, f): (u32, u32, u32)| {
            run(&mut store, &[mask, t, f], FUEL_PER_BYTE, 0, |v| {
                kernels::if_else(&v[0], &v[1], &v[2])
            })
        },
    )?;
    compute.func_wrap(
        "selected",
        |mut store: Store<'_>, (mask,): (u32,)| -> Answer<Vec<u32>> {
            let (values, n) = match operands(&store, &[mask]) {
                Ok(found) => found,
                Err(error) => return Ok((Err(invalid(error)),)),
            };
            charge(&mut store, n, 0, 0)?;
            Ok((kernels::selected(&values[0]).map_err(invalid),))
        },
    )?;
    compute.func_wrap(
        "emit",
        |mut store: Store<'_>, (name, handle): (String, u32)| -> Answer<()> {
            charge(&mut store, 0, 0, 0)?;
            let call = &mut store.data_mut().compute;
            let found = call.rows().and_then(|rows| {
                if call.outputs.emitted.iter().any(|(n, _)| *n == name) {
                    return Err(KernelError(format!("column `{name}` is emitted twice")));
                }
                call.get(handle)?.broadcast(rows)
            });
            match found {
                Ok(array) => {
                    call.outputs.emitted.push((name, array));
                    Ok((Ok(()),))
                }
                Err(error) => Ok((Err(invalid(KernelError(format!("emit `{name}`: {error}")))),)),
            }
        },
    )?;
    compute.func_wrap(
        "reject",
        |mut store: Store<'_>, (mask, rule, message): (u32, String, String)| -> Answer<()> {
            let (values, n) = match operands(&store, &[mask]) {
                Ok(found) => found,
                Err(error) => return Ok((Err(invalid(error)),)),
            };
            charge(&mut store, n, rule.len() + message.len(), 1)?;
            let call = &mut store.data_mut().compute;
            match call.failing_rows(&values[0]) {
                Ok(rows) => {
                    call.outputs.rejected.push(Rejection {
                        rows,
                        rule,
                        messages: RejectMessages::Same(message),
                    });
                    Ok((Ok(()),))
                }
                Err(error) => Ok((Err(invalid(error)),)),
            }
        },
    )?;
    compute.func_wrap(
        "reject-each",
        |mut store: Store<'_>,
         (mask, rule, prefix, values, suffix): (u32, String, String, u32, String)|
         -> Answer<()> {
            let (operands, n) = match operands(&store, &[mask, values]) {
                Ok(found) => found,
                Err(error) => return Ok((Err(invalid(error)),)),
            };
            charge(&mut store, n, rule.len() + prefix.len() + suffix.len(), 1)?;
            let call = &store.data().compute;
            let rows = match call.rows().and_then(|rows| {
                let values = &operands[1];
                if !values.scalar && values.array.len() != rows {
                    return Err(KernelError(format!(
                        "reject-each: {} values where {rows} rows were expected",
                        values.array.len()
                    )));
                }
                call.failing_rows(&operands[0])
            }) {
                Ok(rows) => rows,
                Err(error) => return Ok((Err(invalid(error)),)),
            };
            // The messages are kept until the call returns: their fixed
            // parts count against the memory limit before they are
            // written (a long prefix times many rows), the whole after.
            let fixed = rows.len().saturating_mul(prefix.len() + suffix.len());
            store.data_mut().compute.account(fixed as u64)?;
            let messages = match kernels::messages(&operands[1], &rows, &prefix, &suffix) {
                Ok(messages) => messages,
                Err(error) => {
                    return Ok((Err(invalid(KernelError(format!("reject-each: {error}")))),));
                }
            };
            let written = messages.bytes();
            // Formatting a value is a few instructions per character.
            charge(&mut store, rows.len(), written - fixed, FUEL_PER_BYTE)?;
            store.data_mut().compute.account((written - fixed) as u64)?;
            store.data_mut().compute.outputs.rejected.push(Rejection {
                rows,
                rule,
                messages: RejectMessages::Each(messages),
            });
            Ok((Ok(()),))
        },
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rows one `reject` call failed share its rule and its message:
    /// a whole batch's worth of rows holds one copy of each.
    #[test]
    fn one_rejects_rows_share_its_rule_and_message() {
        let rejection = Rejection {
            rows: vec![0, 3, 7],
            rule: "positive".into(),
            messages: RejectMessages::Same("x must be positive".into()),
        };
        let verdicts: Vec<_> = rejection.into_verdicts().collect();
        assert_eq!(
            verdicts.iter().map(|(row, _, _)| *row).collect::<Vec<_>>(),
            [0, 3, 7]
        );
        for (_, rule, message) in &verdicts {
            assert!(Arc::ptr_eq(rule, &verdicts[0].1));
            let (VerdictMessage::Text(message), VerdictMessage::Text(first)) =
                (message, &verdicts[0].2)
            else {
                panic!("a reject call's message is one text")
            };
            assert!(Arc::ptr_eq(message, first));
            assert_eq!(&**message, "x must be positive");
        }
        let values = Value::column(Arc::new(arrow::array::StringArray::from(vec!["a", "b"])));
        let each = Rejection {
            rows: vec![0, 1],
            rule: "r".into(),
            messages: RejectMessages::Each(kernels::messages(&values, &[0, 1], "", "").unwrap()),
        };
        let messages: Vec<String> = each
            .into_verdicts()
            .map(|(_, _, m)| m.to_string())
            .collect();
        assert_eq!(messages, ["a", "b"]);
    }
}
