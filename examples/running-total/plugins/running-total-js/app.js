// A running total per key, kept in weir's keyed state (the same transform is
// in ../running-total-rust and ../running-total-python).
//
// Adds the int64 column `output` (default `running_total`): for each row, the
// sum of the `amount` column (default `amount`) over every row with the same
// `key` (default `customer`) so far, this one included, across batches,
// runs, reloads and crashes. A null key gets a null total; a null amount
// counts as 0.
//
// One state read and one write per batch: the batch's distinct keys are read
// with getJsonMany and written back with putJsonMany.

import { config, INT64, transformer } from './weir.js';
import { state } from './weir-state.js';

const names = () => {
  const c = config();
  return { key: c.key ?? 'customer', amount: c.amount ?? 'amount', output: c.output ?? 'running_total' };
};

export const transform = transformer((batch) => {
  const { key, amount, output } = names();
  const keys = batch.column(key);
  const amounts = batch.column(amount);
  const distinct = new Set();
  for (let row = 0; row < batch.numRows; row++) {
    if (!keys.isNull(row)) distinct.add(keys.get(row));
  }
  const list = [...distinct].sort();
  const totals = new Map(list.map((k) => [k, 0]));
  state.getJsonMany(list).forEach((stored, i) => totals.set(list[i], stored ?? 0));
  const running = new Array(batch.numRows);
  for (let row = 0; row < batch.numRows; row++) {
    if (keys.isNull(row)) {
      running[row] = null;
      continue;
    }
    const k = keys.get(row);
    const total = totals.get(k) + (amounts.isNull(row) ? 0 : Number(amounts.values[row]));
    totals.set(k, total);
    running[row] = total;
  }
  state.putJsonMany(totals);
  return batch.withColumn(output, running, INT64);
}, { reads: () => [names().key, names().amount] });
