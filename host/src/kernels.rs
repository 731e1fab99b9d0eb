//! The compute kernels of `weir:plugin/compute@0.2.0`, over Arrow arrays.
//!
//! Each kernel takes [`Value`]s (an array with one value per row, or a
//! scalar of one value broadcast against them) and returns a new one, or a
//! [`KernelError`] that the plugin receives as `invalid-input`. Most are
//! thin wrappers of arrow's own kernels (`cmp`, `numeric`, `boolean`,
//! `zip`, `cast`, `like`, `regexp`); the text, hash, bucket and lookup
//! kernels are written here because arrow has no equivalent with the
//! contract's semantics. The operators are the WIT enums themselves.
//!
//! Every result has a contract type (`boolean`, `int64`, `float64`,
//! `utf8`, `binary`, `timestamp` in µs, `date32`): anything else is an
//! error, so that what a kernel makes can always cross the boundary and
//! be written by a sink. This module knows nothing of wasmtime: the
//! plugin side (handles, fuel, memory) is [`crate::plugin::compute`].

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryBuilder, BooleanArray, Datum, Int64Array, Int64Builder,
    NullArray, StringBuilder, UInt32Array,
};
use arrow::compute::kernels::{boolean, cmp, numeric, zip};
use arrow::compute::{CastOptions, cast_with_options};
use arrow::datatypes::{DataType, Float64Type, Int64Type, TimeUnit, TimestampMicrosecondType};
use arrow::error::ArrowError;
use sha2::{Digest, Sha256};

pub use crate::bindings::v0_2::compute::{
    ArithOp as Arith, BoolOp as Logic, CmpOp as Cmp, HashOp as Hash, MatchOp as Match,
    TextOp as Text,
};
use crate::columnar;

/// A kernel's operand or result: `array` holds one value per row, or one
/// value when `scalar` (broadcast against the other operands).
#[derive(Debug, Clone)]
pub struct Value {
    /// The values.
    pub array: ArrayRef,
    /// Whether `array` is one value that stands for every row.
    pub scalar: bool,
}

impl Datum for Value {
    fn get(&self) -> (&dyn Array, bool) {
        (self.array.as_ref(), self.scalar)
    }
}

impl Value {
    /// A column of one value per row.
    pub fn column(array: ArrayRef) -> Value {
        Value {
            array,
            scalar: false,
        }
    }

    /// A scalar: `array` must hold exactly one value.
    pub fn scalar(array: ArrayRef) -> Value {
        debug_assert_eq!(array.len(), 1);
        Value {
            array,
            scalar: true,
        }
    }

    /// A null scalar whose type adapts to the other operand.
    pub fn null() -> Value {
        Value::scalar(Arc::new(NullArray::new(1)))
    }

    /// The array as `rows` values: a scalar repeated, a column as is.
    ///
    /// # Errors
    /// When a column's length is not `rows`.
    pub fn broadcast(&self, rows: usize) -> Result<ArrayRef> {
        if !self.scalar {
            if self.array.len() != rows {
                return Err(KernelError(format!(
                    "a column of {} values where {rows} rows were expected",
                    self.array.len()
                )));
            }
            return Ok(self.array.clone());
        }
        let zeros = UInt32Array::from(vec![0u32; rows]);
        Ok(arrow::compute::take(self.array.as_ref(), &zeros, None)?)
    }
}

/// A kernel that cannot run on its operands: a type it does not take,
/// columns of different lengths, an overflow, a bad pattern. The message
/// says which.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct KernelError(pub String);

impl From<ArrowError> for KernelError {
    fn from(error: ArrowError) -> Self {
        KernelError(match error {
            ArrowError::ComputeError(m)
            | ArrowError::CastError(m)
            | ArrowError::InvalidArgumentError(m) => m,
            ArrowError::ArithmeticOverflow(m) => format!("overflow: {m}"),
            ArrowError::DivideByZero => "division by zero".to_string(),
            other => other.to_string(),
        })
    }
}

type Result<T> = std::result::Result<T, KernelError>;

/// The result of a kernel over `operands`: a scalar when they all are.
fn result(array: ArrayRef, operands: &[&Value]) -> Result<Value> {
    if columnar::wit_data_type(array.data_type()).is_none() {
        return Err(KernelError(format!(
            "the result would be of type {}, which the contract does not carry",
            array.data_type()
        )));
    }
    Ok(Value {
        array,
        scalar: operands.iter().all(|v| v.scalar),
    })
}

/// The rows a kernel over `operands` works on: the length of the columns,
/// which must agree; 1 when all are scalars.
fn rows(operands: &[&Value]) -> Result<usize> {
    let mut rows = None;
    for v in operands.iter().filter(|v| !v.scalar) {
        match rows {
            None => rows = Some(v.array.len()),
            Some(r) if r != v.array.len() => {
                return Err(KernelError(format!(
                    "columns of different lengths ({r} and {})",
                    v.array.len()
                )));
            }
            Some(_) => {}
        }
    }
    Ok(rows.unwrap_or(1))
}

fn cast_value(v: &Value, to: &DataType) -> Result<Value> {
    if v.array.data_type() == to {
        return Ok(v.clone());
    }
    let options = CastOptions {
        safe: false,
        ..Default::default()
    };
    Ok(Value {
        array: cast_with_options(v.array.as_ref(), to, &options)?,
        scalar: v.scalar,
    })
}

/// `a` and `b` brought to one type: a null literal takes the other's type,
/// and int64 meets float64 as float64.
fn unify(a: &Value, b: &Value) -> Result<(Value, Value)> {
    let (ta, tb) = (a.array.data_type(), b.array.data_type());
    let target = match (ta, tb) {
        _ if ta == tb => return Ok((a.clone(), b.clone())),
        (DataType::Null, other) | (other, DataType::Null) => other.clone(),
        (DataType::Int64, DataType::Float64) | (DataType::Float64, DataType::Int64) => {
            DataType::Float64
        }
        _ => {
            return Err(KernelError(format!(
                "operands of types {ta} and {tb} do not mix"
            )));
        }
    };
    Ok((cast_value(a, &target)?, cast_value(b, &target)?))
}

fn expect_type(v: &Value, what: &str, types: &[DataType]) -> Result<()> {
    if types.contains(v.array.data_type()) {
        return Ok(());
    }
    let names: Vec<String> = types.iter().map(ToString::to_string).collect();
    Err(KernelError(format!(
        "{what} takes {}, not {}",
        names.join(" or "),
        v.array.data_type()
    )))
}

/// `a op b`, a boolean column (null where either is null).
///
/// # Errors
/// When the types do not mix or lengths differ.
pub fn compare(a: &Value, op: Cmp, b: &Value) -> Result<Value> {
    rows(&[a, b])?;
    let (a, b) = unify(a, b)?;
    let out = match op {
        Cmp::Eq => cmp::eq(&a, &b),
        Cmp::Ne => cmp::neq(&a, &b),
        Cmp::Lt => cmp::lt(&a, &b),
        Cmp::Le => cmp::lt_eq(&a, &b),
        Cmp::Gt => cmp::gt(&a, &b),
        Cmp::Ge => cmp::gt_eq(&a, &b),
    }?;
    result(Arc::new(out), &[&a, &b])
}

/// `a op b` on int64 or float64 (int64 with float64 gives float64).
///
/// # Errors
/// Other types; an int64 overflow; an int64 division by zero.
pub fn arith(a: &Value, op: Arith, b: &Value) -> Result<Value> {
    rows(&[a, b])?;
    let (a, b) = unify(a, b)?;
    expect_type(&a, "arithmetic", &[DataType::Int64, DataType::Float64])?;
    let out = match op {
        Arith::Add => numeric::add(&a, &b),
        Arith::Sub => numeric::sub(&a, &b),
        Arith::Mul => numeric::mul(&a, &b),
        Arith::Div => numeric::div(&a, &b),
        Arith::Rem => numeric::rem(&a, &b),
    }?;
    result(out, &[&a, &b])
}

/// Kleene `a op b` on booleans.
///
/// # Errors
/// Non-boolean operands or lengths that differ.
pub fn logic(a: &Value, op: Logic, b: &Value) -> Result<Value> {
    let n = rows(&[a, b])?;
    let (a, b) = unify(a, b)?;
    expect_type(&a, "logic", &[DataType::Boolean])?;
    let (x, y) = (a.broadcast(n)?, b.broadcast(n)?);
    let (x, y) = (x.as_boolean(), y.as_boolean());
    let out = match op {
        Logic::And => boolean::and_kleene(x, y)?,
        Logic::Or => boolean::or_kleene(x, y)?,
        // Unknown when either side is: xor has no Kleene shortcut.
        Logic::Xor => cmp::neq(x, y)?,
        Logic::AndNot => boolean::and_kleene(x, &boolean::not(y)?)?,
    };
    result(Arc::new(out), &[&a, &b])
}

/// Boolean not.
///
/// # Errors
/// A non-boolean operand.
pub fn invert(a: &Value) -> Result<Value> {
    expect_type(a, "invert", &[DataType::Boolean])?;
    result(Arc::new(boolean::not(a.array.as_boolean())?), &[a])
}

/// Whether each value is null: a boolean with no nulls.
pub fn is_null(a: &Value) -> Value {
    let out = match a.array.data_type() {
        // A null literal's NullArray has no validity buffer but is all null.
        DataType::Null => BooleanArray::from(vec![true; a.array.len()]),
        _ => arrow::compute::is_null(a.array.as_ref()).expect("is_null takes every type"),
    };
    Value {
        array: Arc::new(out),
        scalar: a.scalar,
    }
}

/// `a` where it is not null, else `b`.
///
/// # Errors
/// When the types do not mix or lengths differ.
pub fn fill_null(a: &Value, b: &Value) -> Result<Value> {
    let n = rows(&[a, b])?;
    let (a, b) = unify(a, b)?;
    let valid = boolean::not(is_null(&a).broadcast(n)?.as_boolean())?;
    result(zip::zip(&valid, &a, &b)?, &[&a, &b])
}

/// `a` cast to `to` (a contract type) with Arrow's cast rules.
///
/// # Errors
/// A value that does not convert, or a cast Arrow does not do.
pub fn cast(a: &Value, to: &DataType) -> Result<Value> {
    // The contract's timestamps are µs since the epoch whatever their zone
    // (the zone is how to show them), so a new zone relabels the values;
    // Arrow would reinterpret a zoneless one as local time in that zone.
    if let (
        DataType::Timestamp(TimeUnit::Microsecond, _),
        DataType::Timestamp(TimeUnit::Microsecond, zone),
    ) = (a.array.data_type(), to)
    {
        let relabelled = a
            .array
            .as_primitive::<TimestampMicrosecondType>()
            .clone()
            .with_timezone_opt(zone.clone());
        return result(Arc::new(relabelled), &[a]);
    }
    let out = cast_value(a, to)?;
    result(out.array, &[a])
}

fn map_utf8(a: &Value, f: impl Fn(&str) -> std::borrow::Cow<'_, str>) -> Result<ArrayRef> {
    let strings = a.array.as_string::<i32>();
    let mut out = StringBuilder::with_capacity(strings.len(), strings.value_data().len());
    for value in strings.iter() {
        match value {
            Some(v) => out.append_value(f(v)),
            None => out.append_null(),
        }
    }
    Ok(Arc::new(out.finish()))
}

/// A text function of a utf8 value.
///
/// # Errors
/// A non-utf8 operand.
pub fn text(a: &Value, op: Text) -> Result<Value> {
    expect_type(a, "text functions", &[DataType::Utf8, DataType::Null])?;
    // A null literal becomes a utf8 null.
    let a = &cast_value(a, &DataType::Utf8)?;
    let out: ArrayRef = match op {
        Text::Lowercase => map_utf8(a, |s| {
            // ASCII (the common case) maps byte for byte without a new
            // allocation per value beyond the result.
            if s.bytes().any(|b| b.is_ascii_uppercase()) || !s.is_ascii() {
                std::borrow::Cow::Owned(s.to_lowercase())
            } else {
                std::borrow::Cow::Borrowed(s)
            }
        })?,
        Text::Uppercase => map_utf8(a, |s| {
            if s.bytes().any(|b| b.is_ascii_lowercase()) || !s.is_ascii() {
                std::borrow::Cow::Owned(s.to_uppercase())
            } else {
                std::borrow::Cow::Borrowed(s)
            }
        })?,
        Text::Trim => map_utf8(a, |s| std::borrow::Cow::Borrowed(s.trim()))?,
        Text::Length => {
            let strings = a.array.as_string::<i32>();
            let mut out = Int64Builder::with_capacity(strings.len());
            for value in strings.iter() {
                out.append_option(value.map(|v| v.chars().count() as i64));
            }
            Arc::new(out.finish())
        }
    };
    result(out, &[a])
}

/// Whether each utf8 value contains, starts with, ends with or matches
/// `pattern`.
///
/// # Errors
/// A non-utf8 operand or a regex that does not compile.
pub fn matches(a: &Value, op: Match, pattern: &str) -> Result<Value> {
    expect_type(a, "text tests", &[DataType::Utf8])?;
    let out = match op {
        Match::Regex => {
            let regex = compiled(pattern)?;
            a.array
                .as_string::<i32>()
                .iter()
                .map(|v| v.map(|v| regex.is_match(v)))
                .collect::<BooleanArray>()
        }
        _ => {
            let needle = arrow::array::Scalar::new(arrow::array::StringArray::from(vec![pattern]));
            use arrow::compute::kernels::comparison as like;
            match op {
                Match::Contains => like::contains(a, &needle)?,
                Match::StartsWith => like::starts_with(a, &needle)?,
                _ => like::ends_with(a, &needle)?,
            }
        }
    };
    result(Arc::new(out), &[a])
}

/// Compiled patterns kept at most by [`compiled`] (128); past that the
/// cache starts over. A plugin runs the same few patterns batch after
/// batch, so a small cache spares a compile per call (tens of µs, on a
/// thread the call does not pay fuel for).
pub const REGEX_CACHE_ENTRIES: usize = 128;

/// `pattern` compiled, from a cache shared by every plugin of the process
/// (a compiled regex holds no data of the calls that used it).
///
/// # Errors
/// A pattern that does not compile (not cached).
fn compiled(pattern: &str) -> Result<Arc<regex::Regex>> {
    // `Arc`, not `Regex::clone`: a clone gets a pool of search caches of
    // its own, which its first search would have to build again.
    static CACHE: std::sync::LazyLock<std::sync::Mutex<HashMap<String, Arc<regex::Regex>>>> =
        std::sync::LazyLock::new(Default::default);
    if let Some(regex) = CACHE.lock().expect("regex cache lock").get(pattern) {
        return Ok(regex.clone());
    }
    let regex = Arc::new(
        regex::Regex::new(pattern).map_err(|e| KernelError(format!("regex `{pattern}`: {e}")))?,
    );
    let mut cache = CACHE.lock().expect("regex cache lock");
    if cache.len() >= REGEX_CACHE_ENTRIES {
        cache.clear();
    }
    cache.insert(pattern.to_string(), regex.clone());
    Ok(regex)
}

/// The salted hash of each value's bytes: utf8 and binary as they are,
/// int64 as its decimal text; nulls stay null.
///
/// # Errors
/// Other types.
pub fn hash(a: &Value, op: Hash, salt: &[u8]) -> Result<Value> {
    expect_type(
        a,
        "hash",
        &[DataType::Utf8, DataType::Binary, DataType::Int64],
    )?;
    let salted = Sha256::new_with_prefix(salt);
    let digest = |bytes: &[u8]| salted.clone().chain_update(bytes).finalize();
    let mut text = String::new();
    let values: Box<dyn Iterator<Item = Option<&[u8]>>> = match a.array.data_type() {
        DataType::Utf8 => Box::new(
            a.array
                .as_string::<i32>()
                .iter()
                .map(|v| v.map(str::as_bytes)),
        ),
        DataType::Binary => Box::new(a.array.as_binary::<i32>().iter()),
        _ => Box::new(std::iter::empty()),
    };
    let n = a.array.len();
    let out: ArrayRef = if a.array.data_type() == &DataType::Int64 {
        let ints = a.array.as_primitive::<Int64Type>();
        hash_into(
            op,
            n,
            ints.iter().map(|v| {
                v.map(|v| {
                    use std::fmt::Write;
                    text.clear();
                    write!(text, "{v}").expect("writing to a String");
                    digest(text.as_bytes())
                })
            }),
        )
    } else {
        hash_into(op, n, values.map(|v| v.map(digest)))
    };
    result(out, &[a])
}

fn hash_into<D: AsRef<[u8]>>(
    op: Hash,
    n: usize,
    digests: impl Iterator<Item = Option<D>>,
) -> ArrayRef {
    match op {
        Hash::Sha256 => {
            let mut out = BinaryBuilder::with_capacity(n, n * 32);
            digests.for_each(|d| out.append_option(d));
            Arc::new(out.finish())
        }
        Hash::Sha256Hex => {
            let mut out = StringBuilder::with_capacity(n, n * 64);
            let mut hex = [0u8; 64];
            for d in digests {
                match d {
                    Some(d) => {
                        hex::encode_to_slice(d.as_ref(), &mut hex).expect("64 hex digits");
                        out.append_value(std::str::from_utf8(&hex).expect("hex is ASCII"));
                    }
                    None => out.append_null(),
                }
            }
            Arc::new(out.finish())
        }
    }
}

/// int64: for each numeric value `v` the first `i` with `v <= breaks[i]`,
/// else `breaks.len()` (NaN too); nulls stay null.
///
/// # Errors
/// A non-numeric operand, or `breaks` not ascending or holding NaN.
pub fn bucket(a: &Value, breaks: &[f64]) -> Result<Value> {
    expect_type(a, "bucket", &[DataType::Int64, DataType::Float64])?;
    if breaks.iter().any(|b| b.is_nan()) || breaks.windows(2).any(|w| w[0] > w[1]) {
        return Err(KernelError(format!(
            "bucket breaks must ascend and not be NaN: {breaks:?}"
        )));
    }
    // A binary search is the first i with !(breaks[i] < v), i.e. v <= breaks[i].
    let place = |v: f64| {
        if v.is_nan() {
            breaks.len() as i64
        } else {
            breaks.partition_point(|&b| b < v) as i64
        }
    };
    let out: Int64Array = match a.array.data_type() {
        DataType::Int64 => a
            .array
            .as_primitive::<Int64Type>()
            .unary(|v| place(v as f64)),
        _ => a.array.as_primitive::<Float64Type>().unary(place),
    };
    result(Arc::new(out), &[a])
}

/// utf8: `labels[i]` for each int64 `i`; null when null or out of range.
///
/// # Errors
/// A non-int64 operand.
pub fn lookup(a: &Value, labels: &[String]) -> Result<Value> {
    expect_type(a, "lookup", &[DataType::Int64])?;
    let index = a.array.as_primitive::<Int64Type>();
    let bytes = labels.iter().map(String::len).max().unwrap_or(0);
    let mut out = StringBuilder::with_capacity(index.len(), index.len() * bytes);
    for i in index.iter() {
        let label = i
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| labels.get(i));
        out.append_option(label);
    }
    result(Arc::new(out.finish()), &[a])
}

/// `when_true` where `mask` is true, else `when_false` (a null mask picks
/// `when_false`).
///
/// # Errors
/// A non-boolean mask, branch types that do not mix, lengths that differ.
pub fn if_else(mask: &Value, when_true: &Value, when_false: &Value) -> Result<Value> {
    let n = rows(&[mask, when_true, when_false])?;
    expect_type(mask, "if-else's mask", &[DataType::Boolean])?;
    let (t, f) = unify(when_true, when_false)?;
    let all_scalar = mask.scalar && t.scalar && f.scalar;
    let mask_array = if all_scalar {
        mask.array.clone()
    } else {
        mask.broadcast(n)?
    };
    // zip returns a column unless both branches are scalars; a scalar
    // mask with scalar branches is a scalar.
    let out = zip::zip(mask_array.as_boolean(), &t, &f)?;
    if all_scalar {
        return result(out, &[mask, &t, &f]);
    }
    Ok(Value::column(out))
}

/// The rows where a boolean is true, ascending (a null is not true).
///
/// # Errors
/// A non-boolean operand.
pub fn selected(mask: &Value) -> Result<Vec<u32>> {
    expect_type(mask, "selected", &[DataType::Boolean])?;
    let mask = mask.array.as_boolean();
    let bits = match mask.nulls() {
        Some(nulls) => mask.values() & nulls.inner(),
        None => mask.values().clone(),
    };
    Ok(bits.set_indices().map(|i| i as u32).collect())
}

/// Appends `value` exactly as its `Display` writes it (the shortest digits
/// that read back as the value, never an exponent), with zmij's Schubfach
/// formatter where the two provably agree, which is about three times
/// faster than `core`'s: on a bad day a validator's messages format one
/// float per failing row.
fn push_float(text: &mut String, value: f64) {
    use std::fmt::Write;
    if value.is_finite() {
        let mut buffer = zmij::Buffer::new();
        let short = buffer.format_finite(value);
        // zmij writes `.0` after an integral value (Display does not) and
        // an exponent for very small or large values (Display never does:
        // those fall back). With 16 or 17 significant digits more than
        // one shortest text can read back as the value, and the two
        // formatters may pick different ones; with at most 15 there is
        // only one.
        let short = short.strip_suffix(".0").unwrap_or(short);
        let significant = short
            .bytes()
            .filter(u8::is_ascii_digit)
            .skip_while(|&b| b == b'0')
            .count();
        if !short.contains('e') && significant <= 15 {
            text.push_str(short);
            return;
        }
    }
    let _ = write!(text, "{value}");
}

/// Texts, one per row, back to back in one buffer: row `i` is
/// `text[ends[i - 1]..ends[i]]` (from 0 for the first). What
/// [`messages`] writes: a million rejected rows' messages are two
/// allocations, not a million.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Texts {
    text: String,
    ends: Vec<u32>,
}

impl Texts {
    /// Rows.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Bytes of all rows' text.
    pub fn bytes(&self) -> usize {
        self.text.len()
    }

    /// Row `i`'s text.
    ///
    /// # Panics
    /// `i >= self.len()`.
    pub fn get(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.text[start..self.ends[i] as usize]
    }
}

/// One message per row of `rows`: `prefix`, that row's value of `values`
/// as text, `suffix`. Text is the decimal digits of an int64, a float64 as
/// Rust's `Display` writes it (the shortest digits that read back as the
/// value, never an exponent: `-1.5`, `100`, `NaN`, `inf`), a utf8 value
/// as it is, `true`/`false`, and `null` for a null. A scalar gives its
/// one value to every row.
///
/// # Errors
/// Any other type, or a row past the end of a column.
pub fn messages(values: &Value, rows: &[u32], prefix: &str, suffix: &str) -> Result<Texts> {
    use std::fmt::Write;
    let array = values.array.as_ref();
    let at = |row: u32| -> Result<usize> {
        let i = if values.scalar { 0 } else { row as usize };
        if i >= array.len() {
            return Err(KernelError(format!(
                "row {row} is past the end of a column of {} values",
                array.len()
            )));
        }
        Ok(i)
    };
    // A null array's nulls are logical only.
    let nulls = array.logical_nulls();
    // Every message is written into one buffer: no allocation per row.
    let mut out = Texts {
        text: String::with_capacity(rows.len() * (prefix.len() + 16 + suffix.len())),
        ends: Vec::with_capacity(rows.len()),
    };
    let mut each = |write: &mut dyn FnMut(&mut String, usize)| -> Result<()> {
        for &row in rows {
            let i = at(row)?;
            let text = &mut out.text;
            text.push_str(prefix);
            if nulls.as_ref().is_some_and(|n| n.is_null(i)) {
                text.push_str("null");
            } else {
                write(text, i);
            }
            text.push_str(suffix);
            let end = u32::try_from(text.len())
                .map_err(|_| KernelError("one call's messages exceed 4 GiB".to_string()))?;
            out.ends.push(end);
        }
        Ok(())
    };
    match array.data_type() {
        DataType::Int64 => {
            let v = array.as_primitive::<Int64Type>();
            each(&mut |t, i| {
                let _ = write!(t, "{}", v.value(i));
            })?;
        }
        DataType::Float64 => {
            let v = array.as_primitive::<Float64Type>();
            each(&mut |t, i| push_float(t, v.value(i)))?;
        }
        DataType::Utf8 => {
            let v = array.as_string::<i32>();
            each(&mut |t, i| t.push_str(v.value(i)))?;
        }
        DataType::Boolean => {
            let v = array.as_boolean();
            each(&mut |t, i| t.push_str(if v.value(i) { "true" } else { "false" }))?;
        }
        DataType::Null => each(&mut |_, _| unreachable!("every value is null"))?,
        other => {
            return Err(KernelError(format!(
                "messages take int64, float64, utf8 or boolean values, not {other} (cast them to utf8 first)"
            )));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use arrow::array::{BinaryArray, Float64Array, StringArray};

    use super::*;

    #[test]
    fn float_text_is_exactly_what_display_writes() {
        let mut values = vec![
            0.0,
            -0.0,
            1.0,
            -1.0,
            0.1,
            1e-5,
            9.99e-6,
            1e16,
            9.999999999999998e15,
            1e300,
            5e-324,
            f64::MAX,
            f64::MIN_POSITIVE,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            -12.345,
            100.0,
            2f64.powi(53) + 2.0,
        ];
        // Random bit patterns (every exponent) and three-decimal values,
        // from a fixed xorshift sequence.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..200_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            values.push(f64::from_bits(state));
            values.push((state % 2_000_000) as f64 / 1000.0 - 1000.0);
        }
        for value in values {
            let mut text = String::new();
            push_float(&mut text, value);
            assert_eq!(text, value.to_string(), "{value:e}");
        }
    }

    #[test]
    fn messages_show_each_failing_rows_value() {
        let rows = [0, 2, 3];
        let texts_of = |values: &Value, rows: &[u32], prefix, suffix| -> Vec<String> {
            let texts = messages(values, rows, prefix, suffix).unwrap();
            (0..texts.len()).map(|i| texts.get(i).to_string()).collect()
        };
        let m = texts_of(
            &floats(&[Some(-1.5), None, Some(100.0), None]),
            &rows,
            "x = ",
            "!",
        );
        assert_eq!(m, ["x = -1.5!", "x = 100!", "x = null!"]);
        let m = texts_of(
            &ints(&[Some(i64::MIN), None, Some(7), Some(-0)]),
            &rows,
            "",
            "",
        );
        assert_eq!(m, [i64::MIN.to_string(), "7".into(), "0".into()]);
        let m = texts_of(
            &texts(&[Some("a"), None, Some("Zürich"), Some("")]),
            &rows,
            "`",
            "`",
        );
        assert_eq!(m, ["`a`", "`Zürich`", "``"]);
        let m = texts_of(&text_scalar("same"), &rows, "", "");
        assert_eq!(m, ["same"; 3]);
        let m = texts_of(&Value::null(), &rows[..1], "v = ", "");
        assert_eq!(m, ["v = null"]);
        assert!(
            messages(&ints(&[Some(1)]), &rows, "", "").is_err(),
            "row past the end"
        );
        let dates = Value::column(Arc::new(arrow::array::Date32Array::from(vec![1, 2, 3, 4])));
        assert!(
            messages(&dates, &rows, "", "")
                .unwrap_err()
                .0
                .contains("cast them to utf8")
        );
    }

    fn ints(values: &[Option<i64>]) -> Value {
        Value::column(Arc::new(Int64Array::from(values.to_vec())))
    }

    fn floats(values: &[Option<f64>]) -> Value {
        Value::column(Arc::new(Float64Array::from(values.to_vec())))
    }

    fn texts(values: &[Option<&str>]) -> Value {
        Value::column(Arc::new(StringArray::from(values.to_vec())))
    }

    fn int(v: i64) -> Value {
        Value::scalar(Arc::new(Int64Array::from(vec![v])))
    }

    fn text_scalar(v: &str) -> Value {
        Value::scalar(Arc::new(StringArray::from(vec![v])))
    }

    fn bools(v: &Value) -> Vec<Option<bool>> {
        v.array.as_boolean().iter().collect()
    }

    fn strings(v: &Value) -> Vec<Option<String>> {
        v.array
            .as_string::<i32>()
            .iter()
            .map(|s| s.map(str::to_string))
            .collect()
    }

    #[test]
    fn comparisons_mix_int_and_float_and_keep_nulls() {
        let a = ints(&[Some(1), None, Some(70), Some(60)]);
        let gt = compare(&a, Cmp::Gt, &int(60)).unwrap();
        assert_eq!(bools(&gt), [Some(false), None, Some(true), Some(false)]);
        assert!(!gt.scalar);
        let b = floats(&[Some(0.5), Some(1.0), Some(70.0), None]);
        let le = compare(&a, Cmp::Le, &b).unwrap();
        assert_eq!(bools(&le), [Some(false), None, Some(true), None]);
        let error = compare(&a, Cmp::Eq, &texts(&[Some("x"); 4])).unwrap_err();
        assert!(error.0.contains("do not mix"), "{error}");
        let error = compare(&a, Cmp::Eq, &ints(&[Some(1)])).unwrap_err();
        assert!(error.0.contains("different lengths"), "{error}");
    }

    #[test]
    fn arithmetic_checks_overflow_and_division_by_zero() {
        let a = ints(&[Some(7), None, Some(i64::MAX)]);
        let error = arith(&a, Arith::Add, &int(1)).unwrap_err();
        assert!(error.0.contains("overflow"), "{error}");
        let error = arith(&ints(&[Some(1)]), Arith::Div, &int(0)).unwrap_err();
        assert_eq!(error.0, "division by zero");
        let half = arith(
            &ints(&[Some(7), None]),
            Arith::Mul,
            &floats(&[Some(0.5), Some(2.0)]),
        )
        .unwrap();
        let values: Vec<_> = half.array.as_primitive::<Float64Type>().iter().collect();
        assert_eq!(values, [Some(3.5), None]);
        let scalar = arith(&int(2), Arith::Sub, &int(5)).unwrap();
        assert!(scalar.scalar);
        assert!(arith(&texts(&[Some("a")]), Arith::Add, &texts(&[Some("b")])).is_err());
    }

    #[test]
    fn logic_is_kleene_and_broadcasts_scalars() {
        let a = Value::column(Arc::new(BooleanArray::from(vec![
            Some(true),
            Some(false),
            None,
            None,
        ])));
        let b = Value::column(Arc::new(BooleanArray::from(vec![
            None,
            None,
            Some(false),
            Some(true),
        ])));
        assert_eq!(
            bools(&logic(&a, Logic::And, &b).unwrap()),
            [None, Some(false), Some(false), None]
        );
        assert_eq!(
            bools(&logic(&a, Logic::Or, &b).unwrap()),
            [Some(true), None, None, Some(true)]
        );
        assert_eq!(bools(&logic(&a, Logic::Xor, &b).unwrap()), [None; 4]);
        let t = Value::scalar(Arc::new(BooleanArray::from(vec![true])));
        assert_eq!(
            bools(&logic(&a, Logic::AndNot, &t).unwrap()),
            // `null and not true` is `null and false`: false.
            [Some(false); 4]
        );
        assert_eq!(
            bools(&invert(&a).unwrap()),
            [Some(false), Some(true), None, None]
        );
        assert_eq!(
            bools(&is_null(&a)),
            [Some(false), Some(false), Some(true), Some(true)]
        );
    }

    #[test]
    fn fill_null_and_if_else_pick_per_row() {
        let a = ints(&[Some(1), None, Some(3)]);
        let filled = fill_null(&a, &int(0)).unwrap();
        let values: Vec<_> = filled.array.as_primitive::<Int64Type>().iter().collect();
        assert_eq!(values, [Some(1), Some(0), Some(3)]);
        let mask = Value::column(Arc::new(BooleanArray::from(vec![
            Some(true),
            None,
            Some(false),
        ])));
        let picked = if_else(
            &mask,
            &text_scalar("yes"),
            &texts(&[Some("a"), Some("b"), None]),
        )
        .unwrap();
        assert_eq!(
            strings(&picked),
            [Some("yes".into()), Some("b".into()), None]
        );
        let null_branch = if_else(
            &mask,
            &Value::null(),
            &texts(&[Some("a"), Some("b"), Some("c")]),
        )
        .unwrap();
        assert_eq!(
            strings(&null_branch),
            [None, Some("b".into()), Some("c".into())]
        );
    }

    #[test]
    fn text_functions_are_unicode_aware() {
        let a = texts(&[Some("ÉCOLE Ab"), None, Some("  x "), Some("abc")]);
        assert_eq!(
            strings(&text(&a, Text::Lowercase).unwrap()),
            [
                Some("école ab".into()),
                None,
                Some("  x ".into()),
                Some("abc".into())
            ]
        );
        assert_eq!(
            strings(&text(&a, Text::Uppercase).unwrap())[0],
            Some("ÉCOLE AB".into())
        );
        assert_eq!(strings(&text(&a, Text::Trim).unwrap())[2], Some("x".into()));
        let lengths: Vec<_> = text(&a, Text::Length)
            .unwrap()
            .array
            .as_primitive::<Int64Type>()
            .iter()
            .collect();
        assert_eq!(lengths, [Some(8), None, Some(4), Some(3)]);
        assert!(text(&ints(&[Some(1)]), Text::Lowercase).is_err());
    }

    #[test]
    fn a_pattern_is_compiled_once_and_a_bad_one_is_not_kept() {
        let pattern = "^(?:k|\\w{30}@\\p{L}{2,})\\d{1,3}-cache-test$";
        let first = compiled(pattern).unwrap();
        let again = compiled(pattern).unwrap();
        assert!(
            Arc::ptr_eq(&first, &again),
            "the second call compiled again"
        );
        assert!(compiled("(").unwrap_err().0.contains("regex `(`"));
        assert!(compiled("(").is_err());
        for i in 0..=REGEX_CACHE_ENTRIES {
            compiled(&format!("^bounded {i}$")).unwrap();
        }
        let back = compiled(pattern).unwrap();
        assert!(back.is_match("k7-cache-test"));
    }

    #[test]
    fn matches_test_text() {
        let a = texts(&[Some("N123AB"), Some("x1"), None]);
        assert_eq!(
            bools(&matches(&a, Match::Regex, "^N[0-9A-Z]{1,5}$").unwrap()),
            [Some(true), Some(false), None]
        );
        assert_eq!(
            bools(&matches(&a, Match::Contains, "23").unwrap()),
            [Some(true), Some(false), None]
        );
        assert_eq!(
            bools(&matches(&a, Match::StartsWith, "x").unwrap()),
            [Some(false), Some(true), None]
        );
        assert_eq!(
            bools(&matches(&a, Match::EndsWith, "AB").unwrap()),
            [Some(true), Some(false), None]
        );
        let error = matches(&a, Match::Regex, "(").unwrap_err();
        assert!(error.0.contains("regex `(`"), "{error}");
    }

    #[test]
    fn sha256_matches_the_fips_vector_and_hashes_ints_as_text() {
        // FIPS 180-2 appendix B.1: SHA-256("abc"), here salt "a" + value "bc".
        let hex = hash(&texts(&[Some("bc"), None]), Hash::Sha256Hex, b"a").unwrap();
        assert_eq!(
            strings(&hex),
            [
                Some("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".into()),
                None
            ]
        );
        let raw = hash(&ints(&[Some(-12)]), Hash::Sha256, b"").unwrap();
        let expected = Sha256::digest(b"-12");
        assert_eq!(raw.array.as_binary::<i32>().value(0), expected.as_slice());
        let bytes = Value::column(Arc::new(BinaryArray::from(vec![Some(&b"bc"[..])])));
        assert_eq!(
            hash(&bytes, Hash::Sha256Hex, b"a")
                .unwrap()
                .array
                .as_string::<i32>()
                .value(0),
            strings(&hex)[0].as_deref().unwrap()
        );
    }

    #[test]
    fn bucket_and_lookup_classify() {
        let a = floats(&[
            Some(-5.0),
            Some(0.0),
            Some(0.5),
            Some(60.0),
            Some(1e9),
            None,
            Some(f64::NAN),
        ]);
        let b = bucket(&a, &[0.0, 15.0, 60.0]).unwrap();
        let places: Vec<_> = b.array.as_primitive::<Int64Type>().iter().collect();
        assert_eq!(
            places,
            [Some(0), Some(0), Some(1), Some(2), Some(3), None, Some(3)]
        );
        let labels: Vec<String> = ["early", "on_time", "late", "very_late"]
            .map(String::from)
            .to_vec();
        let named = lookup(&b, &labels).unwrap();
        assert_eq!(strings(&named)[3], Some("late".into()));
        assert_eq!(
            strings(&lookup(&ints(&[Some(9), Some(-1)]), &labels).unwrap()),
            [None, None]
        );
        assert!(bucket(&a, &[1.0, 0.0]).is_err());
        assert!(bucket(&texts(&[Some("a")]), &[1.0]).is_err());
    }

    #[test]
    fn selected_skips_false_and_null() {
        let mask = Value::column(Arc::new(BooleanArray::from(vec![
            Some(true),
            None,
            Some(false),
            Some(true),
        ])));
        assert_eq!(selected(&mask).unwrap(), [0, 3]);
    }

    #[test]
    fn broadcast_repeats_scalars() {
        let out = int(4).broadcast(3).unwrap();
        assert_eq!(out.as_primitive::<Int64Type>().values().as_ref(), [4, 4, 4]);
        assert!(ints(&[Some(1)]).broadcast(3).is_err());
    }
}
