//! Event time: reading it from a column, and assigning rows to windows.

use anyhow::{Result, bail};
use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{DataType, Int64Type, TimeUnit};
use arrow::record_batch::RecordBatch;

/// Event times of `column` in milliseconds since the Unix epoch (`None`
/// for nulls and values beyond [`MAX_EVENT_TIME_MS`]). Timestamps of any unit, dates (`date32`/`date64`) and
/// integers (taken as milliseconds) are accepted.
///
/// # Errors
/// The column is missing or of another type.
pub fn event_times(batch: &RecordBatch, column: &str, operator: &str) -> Result<Vec<Option<i64>>> {
    let Ok(index) = batch.schema().index_of(column) else {
        bail!(
            "operator `{operator}`: event-time column `{column}` is not in the batch (columns: {})",
            crate::columnar::column_names(&batch.schema())
        );
    };
    let array: &ArrayRef = batch.column(index);
    let (values, scale): (ArrayRef, fn(i64) -> i64) = match array.data_type() {
        DataType::Timestamp(unit, _) => {
            let scale: fn(i64) -> i64 = match unit {
                TimeUnit::Second => |v| v.saturating_mul(1000),
                TimeUnit::Millisecond => |v| v,
                TimeUnit::Microsecond => |v| v.div_euclid(1000),
                TimeUnit::Nanosecond => |v| v.div_euclid(1_000_000),
            };
            (arrow::compute::cast(array, &DataType::Int64)?, scale)
        }
        DataType::Date32 => (
            arrow::compute::cast(array, &DataType::Int32)
                .and_then(|a| arrow::compute::cast(&a, &DataType::Int64))?,
            |v| v.saturating_mul(86_400_000),
        ),
        DataType::Date64 | DataType::Int64 | DataType::Int32 | DataType::UInt32 => {
            (arrow::compute::cast(array, &DataType::Int64)?, |v| v)
        }
        other => bail!(
            "operator `{operator}`: event-time column `{column}` is {other}, not a timestamp, date or integer (milliseconds)"
        ),
    };
    let values = values.as_primitive::<Int64Type>();
    Ok((0..values.len())
        .map(|i| {
            values
                .is_valid(i)
                .then(|| scale(values.value(i)))
                .filter(|t| t.abs() <= MAX_EVENT_TIME_MS)
        })
        .collect())
}

/// Largest event time taken, in ms from the Unix epoch either way (about
/// 31,700 years): beyond it a value is treated as missing, so that window
/// arithmetic can never overflow.
pub const MAX_EVENT_TIME_MS: i64 = 1_000_000_000_000_000;

/// Tumbling (`hop == size`) or hopping windows over event time, in ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windows {
    /// Window length.
    pub size: i64,
    /// Distance between window starts.
    pub hop: i64,
}

impl Windows {
    /// Starts of the windows `[start, start + size)` holding `t`, latest
    /// first: every multiple of `hop` in `(t - size, t]`.
    pub fn starts(&self, t: i64) -> impl Iterator<Item = i64> + '_ {
        let last = t.div_euclid(self.hop) * self.hop;
        (0..)
            .map(move |k: i64| last.saturating_sub(k.saturating_mul(self.hop)))
            .take_while(move |start| start.saturating_add(self.size) > t)
    }
}

/// Parses a duration such as `90s`, `15m`, `1h`, `7d` into milliseconds.
///
/// # Errors
/// Not a duration, or zero.
pub fn millis(text: &str) -> Result<i64> {
    let duration = humantime::parse_duration(text)
        .map_err(|e| anyhow::anyhow!("`{text}` is not a duration like 90s, 15m, 1h or 7d ({e})"))?;
    if duration.is_zero() {
        bail!("`{text}` is zero");
    }
    Ok(duration.as_millis().min(i64::MAX as u128) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hopping_windows_hold_a_time_in_size_over_hop_windows() {
        let w = Windows { size: 60, hop: 20 };
        assert_eq!(w.starts(65).collect::<Vec<_>>(), vec![60, 40, 20]);
        assert_eq!(w.starts(-5).collect::<Vec<_>>(), vec![-20, -40, -60]);
        let tumbling = Windows { size: 10, hop: 10 };
        assert_eq!(tumbling.starts(10).collect::<Vec<_>>(), vec![10]);
        assert_eq!(millis("1h").unwrap(), 3_600_000);
        assert!(millis("0s").is_err());
    }
}
