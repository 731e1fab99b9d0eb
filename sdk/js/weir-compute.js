// Columnar compute on the host (weir:plugin/compute@0.2.0), for transform
// and validate plugins (`weir plugin build` copies this file next to
// app.js). Import it as `import { col, lit, ifElse, emit, reject, rejectEach } from
// './weir-compute.js'`.
//
// A Col is a handle on a column the host keeps for the running call: any
// column of the input batch (`col(name)`, also columns `reads` does not
// list, so a plugin that only uses kernels can read nothing), a scalar
// (`lit(value)`) or a kernel's result. Its methods run as Arrow kernels on
// the host instead of a JavaScript loop over rows, and nothing crosses
// into JavaScript until `toArray()`:
//
//   const late = col('arr_delay').gt(60);                  // boolean Col
//   emit('late', late);                                    // a new column
//   return batch;                                          // the rest unchanged
//
// `emit(name, c)` adds or replaces an output column of a transform (which
// must return a Batch derived from its input, sent back as a splice);
// `reject(mask, rule, message)` fails the rows where a validator's mask is
// true. Plain values mix in as scalars: integers (and BigInt) as int64,
// other numbers as float64, strings, booleans, Uint8Array, null. int64
// and float64 mix as float64; int64 division is integer division. A kernel
// that cannot run (a type it does not take, an overflow, a bad regex)
// throws InvalidInput. Handles last until the call returns.

import * as compute from 'weir:plugin/compute@0.2.0';
import { InvalidInput } from './weir.js';

function kernel(call) {
  try {
    return call();
  } catch (error) {
    const payload = error?.payload;
    if (payload?.tag !== undefined) throw new InvalidInput(String(payload.val));
    throw error;
  }
}

function scalar(value) {
  if (value === null || value === undefined) return { tag: 'null' };
  switch (typeof value) {
    case 'boolean':
      return { tag: 'boolean', val: value };
    case 'bigint':
      return { tag: 'int64', val: value };
    case 'number':
      return Number.isSafeInteger(value) ? { tag: 'int64', val: BigInt(value) } : { tag: 'float64', val: value };
    case 'string':
      return { tag: 'utf8', val: value };
    default:
      if (value instanceof Uint8Array) return { tag: 'binary', val: value };
      throw new TypeError(`no scalar for ${Object.prototype.toString.call(value)}`);
  }
}

const operand = (value) => (value instanceof Col ? value : lit(value));
const bytes = (salt) => (typeof salt === 'string' ? new TextEncoder().encode(salt) : new Uint8Array(salt ?? []));

/** A column (or scalar) the host keeps for the running call. */
export class Col {
  constructor(handle) {
    this.handle = handle;
  }

  _compare(op, other) {
    return new Col(kernel(() => compute.compare(this.handle, op, operand(other).handle)));
  }

  _arith(op, other) {
    return new Col(kernel(() => compute.arith(this.handle, op, operand(other).handle)));
  }

  _logic(op, other) {
    return new Col(kernel(() => compute.logic(this.handle, op, operand(other).handle)));
  }

  /** Boolean comparisons (null where either side is null). */
  eq(other) { return this._compare('eq', other); }
  ne(other) { return this._compare('ne', other); }
  lt(other) { return this._compare('lt', other); }
  le(other) { return this._compare('le', other); }
  gt(other) { return this._compare('gt', other); }
  ge(other) { return this._compare('ge', other); }

  /** Arithmetic on int64 or float64. */
  add(other) { return this._arith('add', other); }
  sub(other) { return this._arith('sub', other); }
  mul(other) { return this._arith('mul', other); }
  div(other) { return this._arith('div', other); }
  rem(other) { return this._arith('rem', other); }

  /** Kleene logic on booleans. */
  and(other) { return this._logic('and', other); }
  or(other) { return this._logic('or', other); }
  xor(other) { return this._logic('xor', other); }
  andNot(other) { return this._logic('and-not', other); }
  not() { return new Col(kernel(() => compute.invert(this.handle))); }

  /** Boolean: whether each value is null (never null itself). */
  isNull() { return new Col(kernel(() => compute.isNull(this.handle))); }
  /** This column with its nulls replaced by `value`. */
  fillNull(value) { return new Col(kernel(() => compute.fillNull(this.handle, operand(value).handle))); }
  /** Converted to `type` (weir.INT64, weir.UTF8...) with Arrow's cast rules. */
  cast(type) { return new Col(kernel(() => compute.cast(this.handle, type))); }

  /** utf8 text functions. */
  lower() { return new Col(kernel(() => compute.text(this.handle, 'lowercase'))); }
  upper() { return new Col(kernel(() => compute.text(this.handle, 'uppercase'))); }
  trim() { return new Col(kernel(() => compute.text(this.handle, 'trim'))); }
  /** int64: each value's length in characters. */
  length() { return new Col(kernel(() => compute.text(this.handle, 'length'))); }
  includes(text) { return new Col(kernel(() => compute.matches(this.handle, 'contains', text))); }
  startsWith(text) { return new Col(kernel(() => compute.matches(this.handle, 'starts-with', text))); }
  endsWith(text) { return new Col(kernel(() => compute.matches(this.handle, 'ends-with', text))); }
  /** Boolean: whether each value matches `pattern` (Rust regex syntax, unanchored). */
  matches(pattern) { return new Col(kernel(() => compute.matches(this.handle, 'regex', pattern))); }

  /** binary: SHA-256 of `salt` then each value (int64 as decimal text). */
  sha256(salt) { return new Col(kernel(() => compute.hash(this.handle, 'sha256', bytes(salt)))); }
  /** utf8: the same as 64 lowercase hex characters. */
  sha256Hex(salt) { return new Col(kernel(() => compute.hash(this.handle, 'sha256-hex', bytes(salt)))); }

  /** int64: the first `i` with `value <= breaks[i]` (ascending), else `breaks.length`. */
  bucket(breaks) { return new Col(kernel(() => compute.bucket(this.handle, Float64Array.from(breaks)))); }
  /** utf8: `labels[i]` for each int64 `i`, null when out of range. */
  lookup(labels) { return new Col(kernel(() => compute.lookup(this.handle, labels.map(String)))); }

  /** {dataType, len, nullCount, isScalar}. */
  info() { return kernel(() => compute.info(this.handle)); }

  /** The values, copied into JavaScript (`null` for nulls), as weir.Column does. */
  toArray() {
    const info = this.info();
    const column = kernel(() => compute.read(this.handle));
    return decode(column, info.len);
  }
}

function decode(column, length) {
  const valid = (i) => column.validity === undefined || ((column.validity[i >> 3] >> (i & 7)) & 1) === 1;
  const out = new Array(length);
  const { tag, val } = column.values;
  const decoder = new TextDecoder();
  for (let i = 0; i < length; i++) {
    if (!valid(i)) {
      out[i] = null;
    } else if (tag === 'boolean') {
      out[i] = ((val[i >> 3] >> (i & 7)) & 1) === 1;
    } else if (tag === 'utf8' || tag === 'binary') {
      const slice = val.data.subarray(val.offsets[i], val.offsets[i + 1]);
      out[i] = tag === 'utf8' ? decoder.decode(slice) : slice;
    } else {
      out[i] = val[i];
    }
  }
  return out;
}

/** The input batch's column `name` (whether `reads` lists it or not). */
export function col(name) {
  return new Col(kernel(() => compute.input(name)));
}

/** A scalar, broadcast against columns; null takes the other side's type. */
export function lit(value) {
  const wit = scalar(value);
  // componentize-js 0.23 traps ("coreabi_from_bigint64") lowering this
  // variant's s64 case with a negative value; its f64 case shares the
  // same 64-bit slot, so floats take the same detour to be safe: they
  // cross as text the host casts back, which is exact (JavaScript prints
  // the shortest digits that parse to the same value).
  if (wit.tag === 'float64' || (wit.tag === 'int64' && wit.val < 0n)) {
    const text = Number.isNaN(value) ? 'NaN' : value === Infinity ? 'inf' : value === -Infinity ? '-inf' : String(value);
    const handle = compute.literal({ tag: 'utf8', val: text });
    return new Col(kernel(() => compute.cast(handle, { tag: wit.tag })));
  }
  return new Col(compute.literal(wit));
}

/** `whenTrue` where `mask` is true, else `whenFalse` (a null mask picks `whenFalse`). */
export function ifElse(mask, whenTrue, whenFalse) {
  return new Col(kernel(() => compute.ifElse(mask.handle, operand(whenTrue).handle, operand(whenFalse).handle)));
}

/** The input rows where the boolean `mask` is true, ascending (for batch.take). */
export function selected(mask) {
  return Array.from(kernel(() => compute.selected(mask.handle)));
}

/** Adds or replaces the transform's output column `name` with `c` (a scalar is broadcast). */
export function emit(name, c) {
  kernel(() => compute.emit(name, operand(c).handle));
}

/** Fails `rule` with `message` on the rows where the boolean `mask` is true (a validator). */
export function reject(mask, rule, message) {
  kernel(() => compute.reject(mask.handle, rule, message));
}

/**
 * Fails `rule` on the rows where the boolean `mask` is true (a validator),
 * each with its own message: `prefix`, the row's value of `values` (a Col
 * or a plain value) as text, then `suffix`. The host writes the text, so
 * no string is built in JavaScript per failing row.
 */
export function rejectEach(mask, rule, prefix, values, suffix) {
  kernel(() => compute.rejectEach(mask.handle, rule, prefix, operand(values).handle, suffix));
}
