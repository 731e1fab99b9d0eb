// Test transform for the JavaScript SDK.
//
// Config `mode`: "columns" (default) converts every column to a JS array
// and back; "rows" rebuilds the batch from row objects; "derive" appends
// columns computed from JS values; "kernels" emits columns computed with
// the host's compute kernels (see tests/all/languages.rs) and keeps the rows
// whose boolean is true. Config `reads` (optional) is the list
// of columns the stage declares it reads. A column `action` triggers misbehaviour
// on the batch holding: "loop" (spins forever), "bloat" (allocates without
// end), "raise" (throws a TypeError), "invalid" (an InvalidInput on
// purpose), "log" (a host log line).

import { Batch, config, info, InvalidConfig, InvalidInput, transformer } from './weir.js';
import { col, emit, ifElse, lit, selected } from './weir-compute.js';

function misbehave(batch) {
  if (!batch.has('action')) return;
  const actions = new Set(batch.column('action').toArray());
  if (actions.has('loop')) {
    for (;;) {}
  }
  if (actions.has('bloat')) {
    const hoard = [];
    for (;;) hoard.push(new Uint8Array(1 << 20).fill(1));
  }
  if (actions.has('raise')) {
    throw new TypeError(`boom: thrown on purpose in ${[...actions].filter(Boolean).sort().join(',')}`);
  }
  if (actions.has('invalid')) throw new InvalidInput('column `action` asked for invalid-input');
  if (actions.has('log')) info('hello from js');
}

export const transform = transformer((batch) => {
  misbehave(batch);
  const mode = config().mode ?? 'columns';
  if (mode === 'columns') {
    for (const field of batch.schema) batch = batch.withColumn(field.name, batch.column(field.name).toArray(), field.type);
    return batch;
  }
  if (mode === 'rows') {
    const types = Object.fromEntries(batch.schema.map((f) => [f.name, f]));
    return Batch.fromRows(batch.rows(), types).select(batch.columnNames);
  }
  if (mode === 'derive') {
    const ints = batch.column('int64').toArray();
    const texts = batch.column('utf8').toArray();
    return batch
      .withColumn('int64_doubled', ints.map((v) => (v === null ? null : v * 2n)))
      .withColumn('utf8_upper', texts.map((t) => (t === null ? null : t.toUpperCase())))
      .withColumn('is_null', ints.map((v) => v === null))
      .filter(ints.map((v) => v === null || v % 2n === 0n));
  }
  if (mode === 'kernels') {
    const [i, f, s] = [col('int64'), col('float64'), col('utf8')];
    const back = i.toArray();
    const original = batch.column('int64').toArray();
    if (back.length !== original.length || back.some((v, r) => v !== original[r])) {
      throw new Error('Col.toArray differs from the batch column');
    }
    emit('k_gt', i.gt(0));
    emit('k_mix', lit(1).sub(i.mul(0.5)).add(f));
    emit('k_logic', col('boolean').or(f.gt(100.5)).and(s.isNull().not()));
    emit('k_upper', s.upper());
    emit('k_len', s.length());
    emit('k_fill', i.fillNull(-1));
    emit('k_sha', s.sha256Hex('salt'));
    emit('k_if', ifElse(i.gt(0), 'pos', s));
    emit('k_class', f.bucket([10, 50.5]).lookup(['low', 'mid', 'high']));
    return batch.take(selected(col('boolean')));
  }
  throw new InvalidConfig(`mode: unknown ${JSON.stringify(mode)}`);
}, { reads: () => config().reads });
