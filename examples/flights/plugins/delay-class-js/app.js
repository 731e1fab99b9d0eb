// The flights example's delay-class stage in JavaScript (the same transform
// is in ../delay-class-rust and ../delay-class-python).
//
// Adds the text column `column`: the label of the first `when_null` entry
// whose column is null on the row; else, for a non-null `source` value `v`,
// `labels[i]` for the first `i` with `v <= breaks[i]`, or the last label;
// else null.

import { config, InvalidConfig, transformer, UTF8 } from './weir.js';

// Only `source` and the `when_null` columns are sent; only the new column
// comes back.
const reads = () => [config().source, ...(config().when_null ?? []).map((g) => g.column)];

export const transform = transformer((batch) => {
  const { column, source, breaks, labels, when_null: whenNull = [] } = config();
  if (labels.length !== breaks.length + 1) throw new InvalidConfig('labels: needs one more entry than breaks');
  const values = batch.column(source);
  const guards = whenNull.map((g) => [batch.column(g.column), g.label]);
  const out = new Array(batch.numRows);
  for (let row = 0; row < batch.numRows; row++) {
    const guard = guards.find(([guarded]) => guarded.isNull(row));
    if (guard) {
      out[row] = guard[1];
    } else if (values.isNull(row)) {
      out[row] = null;
    } else {
      const value = Number(values.values[row]);
      const bucket = breaks.findIndex((b) => value <= b);
      out[row] = labels[bucket < 0 ? breaks.length : bucket];
    }
  }
  return batch.withColumn(column, out, UTF8);
}, { reads });
