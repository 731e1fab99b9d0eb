//! A running total per key, kept in weir's keyed state.
//!
//! Adds the column `running_total` (int64): for each row, the sum of the
//! `amount` column over every row with the same `customer` so far, this
//! one included, across batches, runs, reloads and crashes. Rows with a
//! null key get a null total; a null amount counts as 0.
//!
//! Config (all optional): `key` (default `customer`, a text column),
//! `amount` (default `amount`, an int64 column), `output` (default
//! `running_total`), and `fail_on_key`: a key that makes the plugin fail
//! its batch after writing its totals, to see that a failed batch leaves
//! no trace in the state.
//!
//! One state read and one write per batch: the batch's distinct keys are
//! read with `get_json_many` and written back with `put_json_many`.

use std::collections::HashMap;

use serde::Deserialize;
use weir_sdk::{Column, DataType, Error, Field, Output, RecordBatch, Splice, Transform};

#[derive(Deserialize)]
#[serde(default)]
struct Config {
    key: String,
    amount: String,
    output: String,
    fail_on_key: Option<String>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            key: "customer".into(),
            amount: "amount".into(),
            output: "running_total".into(),
            fail_on_key: None,
        }
    }
}

struct RunningTotal;

impl Transform for RunningTotal {
    fn reads() -> Result<Option<Vec<String>>, Error> {
        let config: Config = weir_sdk::config()?;
        Ok(Some(vec![config.key, config.amount]))
    }

    fn transform(batch: RecordBatch) -> Result<Output, Error> {
        let config: Config = weir_sdk::config()?;
        let keys = batch.utf8(&config.key)?;
        let amounts = batch.int64(&config.amount)?;
        let mut distinct: Vec<&str> = keys.iter().flatten().collect();
        distinct.sort_unstable();
        distinct.dedup();
        let stored: Vec<Option<i64>> = weir_sdk::state::get_json_many(&distinct)?;
        let mut totals: HashMap<&str, i64> = distinct
            .iter()
            .zip(stored)
            .map(|(key, total)| (*key, total.unwrap_or(0)))
            .collect();
        let running = (0..batch.len()).map(|row| {
            let total = totals.get_mut(keys.get(row)?).expect("every key was read");
            *total += amounts.get(row).unwrap_or(0);
            Some(*total)
        });
        let column = Column::from_int64(running.collect::<Vec<_>>());
        weir_sdk::state::put_json_many(totals.iter())?;
        if let Some(poison) = &config.fail_on_key
            && totals.contains_key(poison.as_str())
        {
            return Err(Error::InvalidInput(format!(
                "key {poison:?} is the configured fail_on_key"
            )));
        }
        let field = Field {
            name: config.output,
            data_type: DataType::Int64,
            nullable: true,
        };
        Ok(Splice::new().set(field, column).into())
    }
}

weir_sdk::export_transform!(RunningTotal);
