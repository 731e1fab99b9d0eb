//! Columnar compute on the host (`weir:plugin/compute`).
//!
//! A [`Col`] is a handle on a column the host holds for the running call:
//! any column of the input batch ([`Col::input`], also those the stage
//! does not list in `reads`), a scalar ([`Col::lit`]) or the result of a
//! kernel. Kernels run on the host over Arrow arrays, so nothing crosses
//! the boundary until the plugin [`Col::read`]s a column, and the results
//! go back with [`emit`] (a transform's added or replaced columns, added
//! to the [`Splice`](crate::Splice) it returns) or [`reject`] (a
//! validator's failing rows, added to its verdicts).
//!
//! A Rust plugin is already compiled, so kernels mostly help where the
//! host does the work faster (SHA-256 with the CPU's SHA instructions,
//! regexes) or where a column is only passed along; Python and JavaScript
//! plugins gain the most. Each kernel costs fuel (see the host's
//! `plugin::compute` docs) and returns [`Error::InvalidInput`] when its
//! operands do not fit (types, lengths, overflow).
//!
//! ```no_run
//! use weir_sdk::compute::{self, Col};
//! # fn transform() -> Result<weir_sdk::Output, weir_sdk::Error> {
//! // late = arr_delay > 60, computed on the host; the plugin reads nothing.
//! let late = Col::input("arr_delay")?.gt(60)?;
//! compute::emit("late", &late)?;
//! Ok(weir_sdk::Splice::new().into())
//! # }
//! ```
//!
//! Handles last for the call that made them and need no dropping.

use crate::Error;
use crate::bindings::transformer::weir::plugin::compute as wit;
use crate::bindings::transformer::weir::plugin::types::{Column, DataType};

pub use wit::{ArithOp, BoolOp, CmpOp, ColInfo, HashOp, MatchOp, Scalar, TextOp};

/// A column (or scalar) held by the host for the running call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Col(u32);

/// What can stand as a kernel operand: a [`Col`], or a value made into a
/// scalar with [`Col::lit`].
pub trait IntoCol {
    /// The operand as a handle.
    fn into_col(self) -> Col;
}

impl IntoCol for Col {
    fn into_col(self) -> Col {
        self
    }
}

impl IntoCol for &Col {
    fn into_col(self) -> Col {
        *self
    }
}

macro_rules! scalar_operand {
    ($($t:ty => $case:ident),* $(,)?) => {$(
        impl IntoCol for $t {
            fn into_col(self) -> Col {
                Col::lit(Scalar::$case(self.into()))
            }
        }
    )*};
}

scalar_operand!(bool => Boolean, i64 => Int64, i32 => Int64, f64 => Float64, &str => Utf8, String => Utf8);

impl Col {
    /// The handle's number (valid for the call that made it).
    pub fn handle(&self) -> u32 {
        self.0
    }

    /// A handle from its number, as [`Col::handle`] gave it: a number from
    /// an earlier call is refused by every kernel.
    pub fn from_handle(handle: u32) -> Col {
        Col(handle)
    }

    /// The input batch's column `name`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the column when the batch lacks it.
    pub fn input(name: &str) -> Result<Col, Error> {
        wit::input(name).map(Col)
    }

    /// A scalar, broadcast against columns; [`Scalar::Null`] takes the
    /// other operand's type.
    pub fn lit(value: Scalar) -> Col {
        Col(wit::literal(&value))
    }

    /// A handle on values the plugin made, one per input row.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when the length is not the batch's.
    pub fn from_column(values: &Column) -> Result<Col, Error> {
        wit::from_column(values).map(Col)
    }

    /// The values, copied into the plugin.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a stale handle.
    pub fn read(&self) -> Result<Column, Error> {
        wit::read(self.0)
    }

    /// Type, length and null count.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a stale handle.
    pub fn info(&self) -> Result<ColInfo, Error> {
        wit::info(self.0)
    }

    /// `self op other`, boolean.
    ///
    /// # Errors
    /// Types that do not mix.
    pub fn compare(&self, op: CmpOp, other: impl IntoCol) -> Result<Col, Error> {
        wit::compare(self.0, op, other.into_col().0).map(Col)
    }

    /// `self == other` (errors as [`Col::compare`]).
    pub fn eq(&self, other: impl IntoCol) -> Result<Col, Error> {
        self.compare(CmpOp::Eq, other)
    }

    /// `self != other` (errors as [`Col::compare`]).
    pub fn ne(&self, other: impl IntoCol) -> Result<Col, Error> {
        self.compare(CmpOp::Ne, other)
    }

    /// `self < other` (errors as [`Col::compare`]).
    pub fn lt(&self, other: impl IntoCol) -> Result<Col, Error> {
        self.compare(CmpOp::Lt, other)
    }

    /// `self <= other` (errors as [`Col::compare`]).
    pub fn le(&self, other: impl IntoCol) -> Result<Col, Error> {
        self.compare(CmpOp::Le, other)
    }

    /// `self > other` (errors as [`Col::compare`]).
    pub fn gt(&self, other: impl IntoCol) -> Result<Col, Error> {
        self.compare(CmpOp::Gt, other)
    }

    /// `self >= other` (errors as [`Col::compare`]).
    pub fn ge(&self, other: impl IntoCol) -> Result<Col, Error> {
        self.compare(CmpOp::Ge, other)
    }

    /// `self op other` on int64 or float64.
    ///
    /// # Errors
    /// Other types, an int64 overflow or division by zero.
    pub fn arith(&self, op: ArithOp, other: impl IntoCol) -> Result<Col, Error> {
        wit::arith(self.0, op, other.into_col().0).map(Col)
    }

    /// Kleene `self op other` on booleans.
    ///
    /// # Errors
    /// Non-boolean operands.
    pub fn logic(&self, op: BoolOp, other: impl IntoCol) -> Result<Col, Error> {
        wit::logic(self.0, op, other.into_col().0).map(Col)
    }

    /// Boolean not.
    ///
    /// # Errors
    /// A non-boolean column.
    pub fn not(&self) -> Result<Col, Error> {
        wit::invert(self.0).map(Col)
    }

    /// Whether each value is null.
    ///
    /// # Errors
    /// A stale handle.
    pub fn is_null(&self) -> Result<Col, Error> {
        wit::is_null(self.0).map(Col)
    }

    /// This column with its nulls replaced by `other`'s values.
    ///
    /// # Errors
    /// Types that do not mix.
    pub fn fill_null(&self, other: impl IntoCol) -> Result<Col, Error> {
        wit::fill_null(self.0, other.into_col().0).map(Col)
    }

    /// Converted to `to` with Arrow's cast rules.
    ///
    /// # Errors
    /// A value that does not convert.
    pub fn cast(&self, to: &DataType) -> Result<Col, Error> {
        wit::cast(self.0, to).map(Col)
    }

    /// A text function of a utf8 column.
    ///
    /// # Errors
    /// A non-utf8 column.
    pub fn text(&self, op: TextOp) -> Result<Col, Error> {
        wit::text(self.0, op).map(Col)
    }

    /// Whether each utf8 value contains, starts or ends with, or matches
    /// (a regex) `pattern`.
    ///
    /// # Errors
    /// A non-utf8 column, or a regex that does not compile.
    pub fn matches(&self, op: MatchOp, pattern: &str) -> Result<Col, Error> {
        wit::matches(self.0, op, pattern).map(Col)
    }

    /// The salted SHA-256 of each value (utf8, binary, or int64 as decimal
    /// text).
    ///
    /// # Errors
    /// Other types.
    pub fn hash(&self, op: HashOp, salt: &[u8]) -> Result<Col, Error> {
        wit::hash(self.0, op, salt).map(Col)
    }

    /// int64: the first `i` with `value <= breaks[i]`, else `breaks.len()`.
    ///
    /// # Errors
    /// A non-numeric column; `breaks` not ascending.
    pub fn bucket(&self, breaks: &[f64]) -> Result<Col, Error> {
        wit::bucket(self.0, breaks).map(Col)
    }

    /// utf8: `labels[i]` for each int64 `i`, null when out of range.
    ///
    /// # Errors
    /// A non-int64 column.
    pub fn lookup(&self, labels: &[String]) -> Result<Col, Error> {
        wit::lookup(self.0, labels).map(Col)
    }

    /// Where this boolean mask is true, `when_true`, else `when_false`.
    ///
    /// # Errors
    /// A non-boolean mask; branch types that do not mix.
    pub fn if_else(&self, when_true: impl IntoCol, when_false: impl IntoCol) -> Result<Col, Error> {
        wit::if_else(self.0, when_true.into_col().0, when_false.into_col().0).map(Col)
    }

    /// The rows where this boolean mask is true, ascending: a
    /// [`Selection::Indices`](crate::Selection::Indices).
    ///
    /// # Errors
    /// A non-boolean column.
    pub fn selected(&self) -> Result<Vec<u32>, Error> {
        wit::selected(self.0)
    }
}

/// Adds or replaces the output column `name` with `col` (a scalar is
/// broadcast); the transform must return a [`Splice`](crate::Splice) that
/// does not also set `name`.
///
/// # Errors
/// A name emitted twice, or a column of another length than the batch.
pub fn emit(name: &str, col: &Col) -> Result<(), Error> {
    wit::emit(name, col.0)
}

/// Fails `rule` with `message` on every row where the boolean `mask` is
/// true (a validator; a null passes).
///
/// # Errors
/// A non-boolean mask.
pub fn reject(mask: &Col, rule: &str, message: &str) -> Result<(), Error> {
    wit::reject(mask.0, rule, message)
}

/// Fails `rule` on every row where the boolean `mask` is true (a
/// validator; a null passes), each with its own message: `prefix`, the
/// row's value of `values` as text, then `suffix` (`"x = "`, `-1.5`,
/// `" is not >= 0"`). The host writes the text: an int64's digits, a
/// float64 as Rust's `Display` does, a utf8 value as it is,
/// `true`/`false`, `null` for a null. Much cheaper than a [`Verdict`]
/// per row when many rows fail: no string is built in the plugin or
/// copied out of it.
///
/// [`Verdict`]: crate::Verdict
///
/// # Errors
/// A non-boolean mask, or `values` of another type or length.
pub fn reject_each(
    mask: &Col,
    rule: &str,
    prefix: &str,
    values: &Col,
    suffix: &str,
) -> Result<(), Error> {
    wit::reject_each(mask.0, rule, prefix, values.0, suffix)
}
