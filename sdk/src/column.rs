//! Typed, null-aware access to a [`Column`] and constructors for new ones.

use crate::bitmap::{Bitmap, BitmapBuilder};
use crate::{Column, ColumnValues, DataType, VarLen};

/// A typed view of a fixed-width column (`int64`, `float64`, `timestamp`,
/// `date32`): `len` values plus validity.
#[derive(Debug, Clone, Copy)]
pub struct PrimitiveView<'a, T> {
    values: &'a [T],
    validity: Option<Bitmap<'a>>,
}

impl<'a, T: Copy> PrimitiveView<'a, T> {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether the column has no rows.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The value at `row`, or `None` when it is null or out of range.
    #[inline]
    pub fn get(&self, row: usize) -> Option<T> {
        let valid = self.validity.is_none_or(|v| v.get(row));
        if valid {
            self.values.get(row).copied()
        } else {
            None
        }
    }

    /// The raw values, nulls included (their slots are unspecified).
    pub fn values(&self) -> &'a [T] {
        self.values
    }

    /// Every row, nulls as `None`.
    pub fn iter(&self) -> impl Iterator<Item = Option<T>> + '_ {
        (0..self.len()).map(|row| self.get(row))
    }
}

/// A view of a boolean column.
#[derive(Debug, Clone, Copy)]
pub struct BoolView<'a> {
    values: Bitmap<'a>,
    validity: Option<Bitmap<'a>>,
    len: usize,
}

impl BoolView<'_> {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the column has no rows.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The value at `row`, or `None` when it is null or out of range.
    pub fn get(&self, row: usize) -> Option<bool> {
        let valid = row < self.len && self.validity.is_none_or(|v| v.get(row));
        valid.then(|| self.values.get(row))
    }
}

/// A view of a `utf8` or `binary` column.
#[derive(Debug, Clone, Copy)]
pub struct VarLenView<'a> {
    offsets: &'a [i32],
    data: &'a [u8],
    validity: Option<Bitmap<'a>>,
}

impl<'a> VarLenView<'a> {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    /// Whether the column has no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes at `row`, or `None` when it is null or out of range.
    #[inline]
    pub fn get_bytes(&self, row: usize) -> Option<&'a [u8]> {
        if row >= self.len() || !self.validity.is_none_or(|v| v.get(row)) {
            return None;
        }
        let (start, end) = (self.offsets[row] as usize, self.offsets[row + 1] as usize);
        self.data.get(start..end)
    }

    /// The text at `row`, or `None` when it is null, out of range or not
    /// UTF-8 (the host guarantees `utf8` columns are UTF-8).
    #[inline]
    pub fn get(&self, row: usize) -> Option<&'a str> {
        self.get_bytes(row)
            .and_then(|b| std::str::from_utf8(b).ok())
    }

    /// Every row as text, nulls as `None`.
    pub fn iter(&self) -> impl Iterator<Item = Option<&'a str>> + '_ {
        (0..self.len()).map(|row| self.get(row))
    }
}

impl Column {
    fn validity_bitmap(&self) -> Option<Bitmap<'_>> {
        self.validity.as_deref().map(Bitmap::new)
    }

    /// Whether `row` is null.
    pub fn is_null(&self, row: usize) -> bool {
        self.validity_bitmap().is_some_and(|v| !v.get(row))
    }

    /// The `int64` values, or `None` for another type.
    pub fn as_int64(&self) -> Option<PrimitiveView<'_, i64>> {
        match &self.values {
            ColumnValues::Int64(values) => Some(self.primitive(values)),
            _ => None,
        }
    }

    /// The `float64` values, or `None` for another type.
    pub fn as_float64(&self) -> Option<PrimitiveView<'_, f64>> {
        match &self.values {
            ColumnValues::Float64(values) => Some(self.primitive(values)),
            _ => None,
        }
    }

    /// The `timestamp` values (µs since the epoch), or `None` for another type.
    pub fn as_timestamp(&self) -> Option<PrimitiveView<'_, i64>> {
        match &self.values {
            ColumnValues::Timestamp(values) => Some(self.primitive(values)),
            _ => None,
        }
    }

    /// The `date32` values (days since the epoch), or `None` for another type.
    pub fn as_date32(&self) -> Option<PrimitiveView<'_, i32>> {
        match &self.values {
            ColumnValues::Date32(values) => Some(self.primitive(values)),
            _ => None,
        }
    }

    /// The `boolean` values, or `None` for another type. `len` is the batch's
    /// row count (a bitmap does not record it).
    pub fn as_boolean(&self, len: usize) -> Option<BoolView<'_>> {
        match &self.values {
            ColumnValues::Boolean(bits) => Some(BoolView {
                values: Bitmap::new(bits),
                validity: self.validity_bitmap(),
                len,
            }),
            _ => None,
        }
    }

    /// The `utf8` values, or `None` for another type.
    pub fn as_utf8(&self) -> Option<VarLenView<'_>> {
        match &self.values {
            ColumnValues::Utf8(v) => Some(self.var_len(v)),
            _ => None,
        }
    }

    /// The `binary` values, or `None` for another type.
    pub fn as_binary(&self) -> Option<VarLenView<'_>> {
        match &self.values {
            ColumnValues::Binary(v) => Some(self.var_len(v)),
            _ => None,
        }
    }

    /// Numeric value at `row` as `f64` for `int64`, `float64`, `date32` and
    /// `timestamp` columns; `None` when null or not numeric.
    pub fn numeric(&self, row: usize) -> Option<f64> {
        match &self.values {
            ColumnValues::Int64(_) => self.as_int64()?.get(row).map(|v| v as f64),
            ColumnValues::Float64(_) => self.as_float64()?.get(row),
            ColumnValues::Timestamp(_) => self.as_timestamp()?.get(row).map(|v| v as f64),
            ColumnValues::Date32(_) => self.as_date32()?.get(row).map(f64::from),
            _ => None,
        }
    }

    fn primitive<'a, T>(&'a self, values: &'a [T]) -> PrimitiveView<'a, T> {
        PrimitiveView {
            values,
            validity: self.validity_bitmap(),
        }
    }

    fn var_len<'a>(&'a self, v: &'a VarLen) -> VarLenView<'a> {
        VarLenView {
            offsets: &v.offsets,
            data: &v.data,
            validity: self.validity_bitmap(),
        }
    }

    /// A new `int64` column from optional values.
    pub fn from_int64(values: impl IntoIterator<Item = Option<i64>>) -> Column {
        let (values, validity) = collect_primitive(values);
        Column {
            validity,
            values: ColumnValues::Int64(values),
        }
    }

    /// A new `float64` column from optional values.
    pub fn from_float64(values: impl IntoIterator<Item = Option<f64>>) -> Column {
        let (values, validity) = collect_primitive(values);
        Column {
            validity,
            values: ColumnValues::Float64(values),
        }
    }

    /// A new `timestamp` column (µs since the epoch) from optional values.
    pub fn from_timestamp(values: impl IntoIterator<Item = Option<i64>>) -> Column {
        let (values, validity) = collect_primitive(values);
        Column {
            validity,
            values: ColumnValues::Timestamp(values),
        }
    }

    /// A new `date32` column (days since the epoch) from optional values.
    pub fn from_date32(values: impl IntoIterator<Item = Option<i32>>) -> Column {
        let (values, validity) = collect_primitive(values);
        Column {
            validity,
            values: ColumnValues::Date32(values),
        }
    }

    /// A new `boolean` column from optional values.
    pub fn from_boolean(values: impl IntoIterator<Item = Option<bool>>) -> Column {
        let mut bits = BitmapBuilder::default();
        let mut validity = BitmapBuilder::default();
        for value in values {
            bits.push(value.unwrap_or(false));
            validity.push(value.is_some());
        }
        Column {
            validity: validity.finish_validity(),
            values: ColumnValues::Boolean(bits.finish()),
        }
    }

    /// A new `utf8` column from optional strings.
    pub fn from_utf8<S: AsRef<str>>(values: impl IntoIterator<Item = Option<S>>) -> Column {
        let (var_len, validity) =
            collect_var_len(values.into_iter().map(|v| v.map(|s| AsBytes(s))));
        Column {
            validity,
            values: ColumnValues::Utf8(var_len),
        }
    }

    /// A new `binary` column from optional byte strings.
    pub fn from_binary<B: AsRef<[u8]>>(values: impl IntoIterator<Item = Option<B>>) -> Column {
        let (var_len, validity) = collect_var_len(values);
        Column {
            validity,
            values: ColumnValues::Binary(var_len),
        }
    }

    /// A column of `len` nulls of `data_type`.
    pub fn nulls(data_type: &DataType, len: usize) -> Column {
        let values = match data_type {
            DataType::Boolean => ColumnValues::Boolean(vec![0; len.div_ceil(8)]),
            DataType::Int64 => ColumnValues::Int64(vec![0; len]),
            DataType::Float64 => ColumnValues::Float64(vec![0.0; len]),
            DataType::Utf8 => ColumnValues::Utf8(VarLen {
                offsets: vec![0; len + 1],
                data: Vec::new(),
            }),
            DataType::Binary => ColumnValues::Binary(VarLen {
                offsets: vec![0; len + 1],
                data: Vec::new(),
            }),
            DataType::Timestamp(_) => ColumnValues::Timestamp(vec![0; len]),
            DataType::Date32 => ColumnValues::Date32(vec![0; len]),
        };
        Column {
            validity: Some(vec![0; len.div_ceil(8)]),
            values,
        }
    }

    /// The rows at `indices`, in that order, as a new column of the same type.
    ///
    /// # Panics
    /// When an index is out of range.
    pub fn take(&self, indices: &[usize]) -> Column {
        let validity = self.validity_bitmap().map(|v| {
            let mut out = BitmapBuilder::with_capacity(indices.len());
            indices.iter().for_each(|&i| out.push(v.get(i)));
            out.finish()
        });
        let values = match &self.values {
            ColumnValues::Boolean(bits) => {
                let bits = Bitmap::new(bits);
                let mut out = BitmapBuilder::with_capacity(indices.len());
                indices.iter().for_each(|&i| out.push(bits.get(i)));
                ColumnValues::Boolean(out.finish())
            }
            ColumnValues::Int64(v) => ColumnValues::Int64(indices.iter().map(|&i| v[i]).collect()),
            ColumnValues::Float64(v) => {
                ColumnValues::Float64(indices.iter().map(|&i| v[i]).collect())
            }
            ColumnValues::Timestamp(v) => {
                ColumnValues::Timestamp(indices.iter().map(|&i| v[i]).collect())
            }
            ColumnValues::Date32(v) => {
                ColumnValues::Date32(indices.iter().map(|&i| v[i]).collect())
            }
            ColumnValues::Utf8(v) => ColumnValues::Utf8(take_var_len(v, indices)),
            ColumnValues::Binary(v) => ColumnValues::Binary(take_var_len(v, indices)),
        };
        Column { validity, values }
    }
}

/// Builds a `utf8` column value by value, writing straight into its offsets
/// and data buffers: no allocation per value.
///
/// ```
/// let mut b = weir_sdk::Utf8Builder::with_capacity(2, 16);
/// b.push_str("zürich");
/// b.push_null();
/// b.push_with(|out| out.extend_from_slice(b"hex"));
/// let column = b.finish();
/// assert_eq!(column.as_utf8().unwrap().iter().collect::<Vec<_>>(), vec![Some("zürich"), None, Some("hex")]);
/// ```
#[derive(Debug, Default, Clone)]
pub struct Utf8Builder {
    offsets: Vec<i32>,
    data: Vec<u8>,
    validity: BitmapBuilder,
}

impl Utf8Builder {
    /// An empty builder with room for `rows` values totalling `bytes`.
    pub fn with_capacity(rows: usize, bytes: usize) -> Self {
        let mut offsets = Vec::with_capacity(rows + 1);
        offsets.push(0);
        Self {
            offsets,
            data: Vec::with_capacity(bytes),
            validity: BitmapBuilder::with_capacity(rows),
        }
    }

    /// Appends a null.
    pub fn push_null(&mut self) {
        self.validity.push(false);
        self.offsets.push(offset(self.data.len()));
    }

    /// Appends `value`.
    pub fn push_str(&mut self, value: &str) {
        self.push_with(|out| out.extend_from_slice(value.as_bytes()));
    }

    /// Appends the value `write` appends to the data buffer. It must write
    /// valid UTF-8: the host rejects a column that is not
    /// (`malformed-output`).
    pub fn push_with(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        if self.offsets.is_empty() {
            self.offsets.push(0);
        }
        write(&mut self.data);
        self.validity.push(true);
        self.offsets.push(offset(self.data.len()));
    }

    /// The finished column.
    pub fn finish(mut self) -> Column {
        if self.offsets.is_empty() {
            self.offsets.push(0);
        }
        Column {
            validity: self.validity.finish_validity(),
            values: ColumnValues::Utf8(VarLen {
                offsets: self.offsets,
                data: self.data,
            }),
        }
    }
}

/// Adapts `AsRef<str>` to `AsRef<[u8]>` for the shared var-len builder.
struct AsBytes<S>(S);

impl<S: AsRef<str>> AsRef<[u8]> for AsBytes<S> {
    fn as_ref(&self) -> &[u8] {
        self.0.as_ref().as_bytes()
    }
}

fn collect_primitive<T: Default>(
    values: impl IntoIterator<Item = Option<T>>,
) -> (Vec<T>, Option<Vec<u8>>) {
    let iter = values.into_iter();
    let mut out = Vec::with_capacity(iter.size_hint().0);
    let mut validity = BitmapBuilder::with_capacity(iter.size_hint().0);
    for value in iter {
        validity.push(value.is_some());
        out.push(value.unwrap_or_default());
    }
    (out, validity.finish_validity())
}

fn collect_var_len<B: AsRef<[u8]>>(
    values: impl IntoIterator<Item = Option<B>>,
) -> (VarLen, Option<Vec<u8>>) {
    let iter = values.into_iter();
    let mut offsets = Vec::with_capacity(iter.size_hint().0 + 1);
    let mut data = Vec::new();
    let mut validity = BitmapBuilder::with_capacity(iter.size_hint().0);
    offsets.push(0);
    for value in iter {
        validity.push(value.is_some());
        if let Some(bytes) = value {
            data.extend_from_slice(bytes.as_ref());
        }
        offsets.push(offset(data.len()));
    }
    (VarLen { offsets, data }, validity.finish_validity())
}

fn take_var_len(v: &VarLen, indices: &[usize]) -> VarLen {
    let mut offsets = Vec::with_capacity(indices.len() + 1);
    let mut data = Vec::new();
    offsets.push(0);
    for &i in indices {
        let (start, end) = (v.offsets[i] as usize, v.offsets[i + 1] as usize);
        data.extend_from_slice(&v.data[start..end]);
        offsets.push(offset(data.len()));
    }
    VarLen { offsets, data }
}

/// Arrow's 32-bit offsets cap one column's bytes at 2 GiB.
fn offset(len: usize) -> i32 {
    i32::try_from(len).expect("a utf8/binary column holds at most 2 GiB (i32 offsets)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int64_nulls_round_trip() {
        let column = Column::from_int64([Some(1), None, Some(-3)]);
        let view = column.as_int64().unwrap();
        assert_eq!(
            view.iter().collect::<Vec<_>>(),
            vec![Some(1), None, Some(-3)]
        );
        assert!(column.is_null(1));
        assert!(column.as_utf8().is_none());
    }

    #[test]
    fn utf8_take_keeps_non_ascii_and_nulls() {
        let column = Column::from_utf8([Some("zürich"), None, Some("東京")]);
        let taken = column.take(&[2, 1, 0]);
        let view = taken.as_utf8().unwrap();
        assert_eq!(
            view.iter().collect::<Vec<_>>(),
            vec![Some("東京"), None, Some("zürich")]
        );
    }

    #[test]
    fn no_nulls_means_no_validity() {
        assert!(
            Column::from_float64([Some(1.0), Some(2.0)])
                .validity
                .is_none()
        );
        assert!(Column::from_boolean([Some(true), None]).validity.is_some());
    }
}
