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
use arrow::util::display::array_value_to_string;

use super::config::{Duplicates, OperatorConfig};
use super::keyed::Keyed;
use super::time::{column_names, event_times, millis};
use super::{Operator, Rejected, Step, reason};
use crate::state::Changes;

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
        })
    }

    fn keys(&mut self, batch: &RecordBatch) -> Result<Rows> {
        let mut columns = Vec::with_capacity(self.key.len());
        for name in &self.key {
            let Some(column) = batch.column_by_name(name) else {
                bail!(
                    "operator `{}`: key column `{name}` is not in the batch (columns: {})",
                    self.name,
                    column_names(batch)
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

    fn describe_key(&self, batch: &RecordBatch, row: usize) -> String {
        self.key
            .iter()
            .map(|name| {
                let value = batch
                    .column_by_name(name)
                    .and_then(|c| array_value_to_string(c, row).ok())
                    .unwrap_or_default();
                format!("{name}={value}")
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn high_water(&self) -> Option<i64> {
        self.seen.get(HIGH_WATER).copied()
    }
}

impl Operator for Dedupe {
    fn name(&self) -> &str {
        &self.name
    }

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
        let positions = |rows: &[usize]| rows.iter().map(|&r| r as u32).collect::<Vec<u32>>();
        if !no_time.is_empty() {
            let column = match &self.clock {
                Clock::Event { column, .. } => column.as_str(),
                _ => "",
            };
            let message = format!(
                "the event-time column `{column}` is null or out of range (beyond ±31,000 years)"
            );
            rejected.push(Rejected::take(
                batch,
                positions(&no_time),
                vec![reason(&self.name, "missing_event_time", message); no_time.len()],
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
                            self.describe_key(batch, row)
                        );
                        reason(&self.name, "duplicate", message)
                    })
                    .collect();
                rejected.push(Rejected::take(batch, positions(&duplicates), reasons)?);
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
        if let Some(horizon) = horizon {
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
