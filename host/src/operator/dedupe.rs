//! `dedupe`: passes the first row of each key and drops (or quarantines)
//! the rows whose key was seen before.
//!
//! State: key (the key columns in Arrow's row format, which is
//! byte-comparable and encodes every type and null) → the time of the
//! latest row with that key that passed, in ms: its event time with
//! `event_time`, the wall clock with `ttl`, 0 otherwise. With `within`, a
//! row is a duplicate only when its event time is within `within` of that
//! time. Keys older than the latest event time minus `within` (or than now
//! minus `ttl`) count as forgotten at once and are removed from the state
//! at each epoch's end, which bounds it.

use anyhow::{Result, bail};
use arrow::array::{Array, BooleanArray};
use arrow::record_batch::RecordBatch;
use arrow::row::{RowConverter, Rows, SortField};

use super::config::{Duplicates, OperatorConfig};
use super::time::{event_times, millis};
use super::{Operator, Rejected, Step, describe_key, reason};
use crate::columnar::column_names;
use crate::state::Changes;
use crate::state::keyed::Keyed;

/// The reserved key holding the latest time seen (row-format keys are
/// never empty).
const HIGH_WATER: &[u8] = b"";

/// How a key's time is measured.
#[derive(Debug, Clone)]
enum Clock {
    /// Keys are remembered forever.
    None,
    /// Event time of `column`; duplicates within `within` ms (forever with
    /// `None`).
    Event { column: String, within: Option<i64> },
    /// Wall clock; keys forgotten `ttl` ms after first seen.
    Wall { ttl: i64 },
}

/// The `dedupe` operator.
pub struct Dedupe {
    name: String,
    key: Vec<String>,
    clock: Clock,
    duplicates: Duplicates,
    converter: Option<RowConverter>,
    seen: Keyed<i64>,
    /// The horizon of the last expiry scan: a scan reads every key, so it
    /// runs only once the horizon has moved on by an eighth of the span
    /// (keys past the horizon count as forgotten anyway, so this bounds
    /// memory, not results).
    expired_to: Option<i64>,
}

impl Dedupe {
    /// A dedupe operator from its (checked) config.
    ///
    /// # Errors
    /// A duration that does not parse.
    pub fn new(config: &OperatorConfig) -> Result<Dedupe> {
        let clock = match (&config.event_time, &config.within, &config.ttl) {
            (Some(column), within, _) => Clock::Event {
                column: column.clone(),
                within: within.as_deref().map(millis).transpose()?,
            },
            (None, _, Some(ttl)) => Clock::Wall { ttl: millis(ttl)? },
            (None, _, None) => Clock::None,
        };
        Ok(Dedupe {
            name: config.name.clone(),
            key: config.key.clone(),
            clock,
            duplicates: config.duplicates,
            converter: None,
            seen: Keyed::default(),
            expired_to: None,
        })
    }

    fn keys(&mut self, batch: &RecordBatch) -> Result<Rows> {
        let mut columns = Vec::with_capacity(self.key.len());
        for name in &self.key {
            let Some(column) = batch.column_by_name(name) else {
                bail!(
                    "operator `{}`: key column `{name}` is not in the batch (columns: {})",
                    self.name,
                    column_names(&batch.schema())
                );
            };
            columns.push(column.clone());
        }
        if self.converter.is_none() {
            let fields = columns
                .iter()
                .map(|c| SortField::new(c.data_type().clone()))
                .collect();
            self.converter = Some(RowConverter::new(fields)?);
        }
        let converter = self.converter.as_ref().expect("set above");
        Ok(converter.convert_columns(&columns)?)
    }

    fn high_water(&self) -> Option<i64> {
        self.seen.get(HIGH_WATER).copied()
    }
}

impl Operator for Dedupe {
    fn restore(&mut self, changes: Changes) -> Result<()> {
        self.seen.restore(changes)
    }

    fn process(&mut self, batch: &RecordBatch) -> Result<Step> {
        let keys = self.keys(batch)?;
        let times = match &self.clock {
            Clock::Event { column, .. } => Some(event_times(batch, column, &self.name)?),
            _ => None,
        };
        let now = match self.clock {
            Clock::Wall { .. } => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64),
            _ => 0,
        };
        let within = match self.clock {
            Clock::Event { within, .. } => within,
            _ => None,
        };
        // Keys last seen before the horizon count as forgotten, whether or
        // not the epoch's expiry has removed them yet: results do not
        // depend on when epochs end.
        let horizon = match (&self.clock, self.high_water()) {
            (
                Clock::Event {
                    within: Some(w), ..
                },
                Some(high),
            ) => Some(high.saturating_sub(*w)),
            (Clock::Wall { ttl }, _) => Some(now.saturating_sub(*ttl)),
            _ => None,
        };
        let mut keep = Vec::with_capacity(batch.num_rows());
        let mut duplicates = Vec::new();
        let mut no_time = Vec::new();
        let mut high_water = self.high_water();
        for (i, key) in keys.iter().enumerate() {
            let t = match &times {
                Some(times) => match times[i] {
                    Some(t) => t,
                    None => {
                        keep.push(false);
                        no_time.push(i);
                        continue;
                    }
                },
                None => now,
            };
            let key = key.as_ref();
            let seen = self
                .seen
                .get(key)
                .copied()
                .filter(|&last| horizon.is_none_or(|h| last >= h));
            let duplicate = match (seen, within) {
                (Some(_), None) => true,
                (Some(last), Some(within)) => (t - last).abs() < within,
                (None, _) => false,
            };
            if duplicate {
                duplicates.push(i);
            } else if seen.is_none_or(|last| t > last) {
                // The latest passed row's time: later rows are compared
                // with it.
                self.seen.put(key, t);
            }
            keep.push(!duplicate);
            high_water = Some(high_water.map_or(t, |h| h.max(t)));
        }
        if let (Some(high_water), false) = (high_water, matches!(self.clock, Clock::None))
            && self.high_water() != Some(high_water)
        {
            self.seen.put(HIGH_WATER, high_water);
        }
        let kept = BooleanArray::from(keep);
        let output = arrow::compute::filter_record_batch(batch, &kept)?;
        let mut rejected = Vec::new();
        if let Clock::Event { column, .. } = &self.clock
            && !no_time.is_empty()
        {
            rejected.push(Rejected::missing_event_time(
                &self.name, column, batch, &no_time,
            )?);
        }
        let dropped = match self.duplicates {
            Duplicates::Drop => duplicates.len() as u64,
            Duplicates::Quarantine if duplicates.is_empty() => 0,
            Duplicates::Quarantine => {
                let reasons = duplicates
                    .iter()
                    .map(|&row| {
                        let message = format!(
                            "a row with the same key ({}) was seen before",
                            describe_key(&self.key, batch, row)
                        );
                        reason(&self.name, "duplicate", message)
                    })
                    .collect();
                rejected.push(Rejected::take(batch, &duplicates, reasons)?);
                0
            }
        };
        Ok(Step {
            output: Some(output),
            kept: Some(kept),
            rejected,
            dropped,
            late: 0,
        })
    }

    fn finish(&mut self) -> Result<Option<RecordBatch>> {
        Ok(None)
    }

    fn take_changes(&mut self) -> Changes {
        // Forget keys that can no longer have duplicates.
        let horizon = match (&self.clock, self.high_water()) {
            (
                Clock::Event {
                    within: Some(w), ..
                },
                Some(h),
            ) => Some(h.saturating_sub(*w)),
            (Clock::Wall { ttl }, Some(h)) => Some(h.saturating_sub(*ttl)),
            _ => None,
        };
        let span = match &self.clock {
            Clock::Event {
                within: Some(w), ..
            } => *w,
            Clock::Wall { ttl } => *ttl,
            _ => 0,
        };
        let due = |horizon: i64| {
            self.expired_to
                .is_none_or(|last| horizon.saturating_sub(last) >= span / 8)
        };
        if let Some(horizon) = horizon.filter(|&h| due(h)) {
            self.expired_to = Some(horizon);
            let expired: Vec<Vec<u8>> = self
                .seen
                .iter()
                .filter(|(key, first)| !key.is_empty() && **first < horizon)
                .map(|(key, _)| key.clone())
                .collect();
            for key in expired {
                self.seen.remove(&key);
            }
        }
        self.seen.take_changes()
    }

    fn accept(&mut self) {
        self.seen.accept();
    }

    fn rollback(&mut self) {
        self.seen.rollback();
    }

    fn state_size(&self) -> (u64, u64) {
        (self.seen.len() as u64, self.seen.bytes() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use std::sync::Arc;

    fn batch(ids: &[i64], times: &[i64]) -> RecordBatch {
        RecordBatch::try_from_iter([
            ("id", Arc::new(Int64Array::from(ids.to_vec())) as _),
            ("t", Arc::new(Int64Array::from(times.to_vec())) as _),
        ])
        .unwrap()
    }

    fn passed(dedupe: &mut Dedupe, ids: &[i64], times: &[i64]) -> usize {
        let step = dedupe.process(&batch(ids, times)).unwrap();
        dedupe.accept();
        step.output.unwrap().num_rows()
    }

    /// `within` compares with the latest passed row of a key, so an older
    /// out-of-order row does not reopen the key; and a key past the
    /// horizon counts as forgotten before any expiry scan removed it.
    #[test]
    fn within_compares_with_the_latest_passed_row_and_honours_the_horizon() {
        let config: OperatorConfig = toml::from_str(
            "name = \"d\"\nkind = \"dedupe\"\nkey = [\"id\"]\nevent_time = \"t\"\nwithin = \"10ms\"",
        )
        .unwrap();
        let mut dedupe = Dedupe::new(&config).unwrap();
        assert_eq!(passed(&mut dedupe, &[1], &[100]), 1);
        assert_eq!(passed(&mut dedupe, &[1], &[50]), 1);
        assert_eq!(passed(&mut dedupe, &[1], &[105]), 0, "a duplicate of t=100");
        // Another key moves the high water to 1000: key 1 (last 100) is
        // past the horizon 990, so a row at 1000 is new, not a duplicate.
        assert_eq!(passed(&mut dedupe, &[2], &[1000]), 1);
        assert_eq!(passed(&mut dedupe, &[1], &[995]), 1);
    }
}
