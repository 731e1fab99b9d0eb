// Test validator for the JavaScript SDK: it reads no column and fails rows
// only through the host's kernels, `negative` with `rejectEach` (each
// message names the row's `x`) and `zero` with `reject` (one message).

import { validator } from './weir.js';
import { col, reject, rejectEach } from './weir-compute.js';

export const validate = validator(function* () {
  const x = col('x');
  rejectEach(x.lt(0), 'negative', 'x = ', x, ' is below 0');
  reject(x.eq(0), 'zero', 'x is zero');
}, { reads: [] });
