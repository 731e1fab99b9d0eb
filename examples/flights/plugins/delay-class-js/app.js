// The flights example's delay-class stage in JavaScript (the same transform
// is in ../delay-class-rust and ../delay-class-python).
//
// Adds the text column `column`: the label of the first `when_null` entry
// whose column is null on the row; else, for a non-null `source` value `v`,
// `labels[i]` for the first `i` with `v <= breaks[i]`, or the last label;
// else null.
//
// Written with the host's compute kernels (./weir-compute.js): no column
// crosses into JavaScript and no JavaScript loop runs per row; the label
// column is built on the host and spliced into the output there.

import { config, InvalidConfig, transformer } from './weir.js';
import { col, emit, ifElse } from './weir-compute.js';

export const transform = transformer((batch) => {
  const { column, source, breaks, labels, when_null: whenNull = [] } = config();
  if (labels.length !== breaks.length + 1) throw new InvalidConfig('labels: needs one more entry than breaks');
  let label = col(source).bucket(breaks).lookup(labels);
  // The first guard wins, so it is applied last (outermost).
  for (const guard of [...whenNull].reverse()) {
    label = ifElse(col(guard.column).isNull(), guard.label, label);
  }
  emit(column, label);
  return batch;
}, { reads: [] });
