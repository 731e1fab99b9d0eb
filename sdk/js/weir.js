// weir's JavaScript SDK: write weir plugins in JavaScript.
//
// A plugin is an ES module (`app.js`) built into a WebAssembly component by
// `@bytecodealliance/componentize-js` (`weir plugin build DIR` does it). It
// exports the interface of its kind, made with this SDK's wrapper:
//
//   kind       export in app.js                         the function's signature
//   transform  export const transform = transformer(fn)  fn(batch) -> Batch
//   validate   export const validate = validator(fn)     fn(batch) -> iterable of {row, rule, message}
//
// `transformer(fn, { reads })` and `validator(fn, { reads })` send the
// plugin only the columns named in `reads` (an array, or a function called
// once that may use `config()`); the others stay on the host. A transform's
// result derived from its input (withColumn, filter, drop...) goes back as a
// splice of just the rows kept and the columns added or replaced, and the
// columns that were not sent are kept; a batch built from scratch replaces
// the whole batch, unsent columns included (contract weir:plugin@0.2.0).
//   extract    export const extract = extractor(fn)      fn(bytes, {sourceName, contentType}) -> Batch | Batch[]
//
// A Batch is `numRows` rows x `schema.length` columns. `batch.column(name)`
// is a Column: `.values` is the typed array the host sent (BigInt64Array for
// int64 and timestamp, Float64Array, Int32Array for date32) or, for text,
// an array of strings; `.get(i)` and `.toArray()` give `null` for nulls.
// `batch.rows()` gives one object per row. Timestamps are microseconds since
// the Unix epoch (BigInt) and dates are days since 1970-01-01. Columns a
// plugin does not touch go back to the host as they came.
//
// Throw `new InvalidConfig(msg)`, `new InvalidInput(msg)` or
// `new ParseError(msg)` to reject a batch on purpose; anything else thrown
// reaches the host as an `internal` plugin error with its message and stack.
// Either way the host quarantines the batch's rows with that message.
//
// `config()` is the stage's `[stages.config]` table as an object; `log()`,
// `info()`, `warn()`... write to the host's log.

import { config as hostConfig, log as hostLog } from 'weir:plugin/host@0.2.0';

// ---------------------------------------------------------------------------
// Types

/** true/false. */
export const BOOLEAN = Object.freeze({ tag: 'boolean' });
/** 64-bit signed integers, as BigInt. */
export const INT64 = Object.freeze({ tag: 'int64' });
/** Doubles. */
export const FLOAT64 = Object.freeze({ tag: 'float64' });
/** UTF-8 text, as strings. */
export const UTF8 = Object.freeze({ tag: 'utf8' });
/** Bytes, as Uint8Array. */
export const BINARY = Object.freeze({ tag: 'binary' });
/** Days since 1970-01-01, as numbers. */
export const DATE32 = Object.freeze({ tag: 'date32' });
/** Microseconds since the Unix epoch without a zone, as BigInt. */
export const TIMESTAMP = Object.freeze({ tag: 'timestamp', val: undefined });

/** A timestamp type (microseconds since the Unix epoch) in `timezone`. */
export function timestamp(timezone) {
  return Object.freeze({ tag: 'timestamp', val: timezone ?? undefined });
}

function typeName(type) {
  return type.tag === 'timestamp' && type.val !== undefined ? `timestamp(${type.val})` : type.tag;
}

// ---------------------------------------------------------------------------
// Errors

/** An error returned to the host on purpose; `kind` is the WIT error case. */
export class PluginError extends Error {
  constructor(kind, message) {
    super(message);
    this.kind = kind;
  }
}

/** The stage's configuration is unusable; name the key. */
export class InvalidConfig extends PluginError {
  constructor(message) {
    super('invalid-config', message);
  }
}

/** The batch lacks what the plugin needs; name the column. */
export class InvalidInput extends PluginError {
  constructor(message) {
    super('invalid-input', message);
  }
}

/** The bytes given to an extractor could not be parsed; say where. */
export class ParseError extends PluginError {
  constructor(message) {
    super('parse', message);
  }
}

/** Anything else that went wrong. */
export class Internal extends PluginError {
  constructor(message) {
    super('internal', message);
  }
}

// componentize-js returns a thrown object's `payload` as the `err` case of
// the export's result; anything else thrown would trap without a message.
function guarded(call) {
  try {
    return call();
  } catch (error) {
    if (error instanceof PluginError) {
      throw { payload: { tag: error.kind, val: error.message } };
    }
    const name = error?.name ?? 'Error';
    const message = error?.message ?? String(error);
    const where = firstFrame(error?.stack);
    throw { payload: { tag: 'internal', val: `${name}: ${message}${where ? ` (at ${where})` : ''}` } };
  }
}

function firstFrame(stack) {
  if (typeof stack !== 'string') return '';
  const line = stack.split('\n').find((l) => l.trim() !== '');
  return line ? line.trim().replace(/^.*@/, '') : '';
}

// ---------------------------------------------------------------------------
// Columns

const encoder = new TextEncoder();
const decoder = new TextDecoder('utf-8', { fatal: true });

function bit(bitmap, i) {
  return ((bitmap[i >> 3] >> (i & 7)) & 1) === 1;
}

/**
 * One column: `length` values of `type`, with an optional validity bitmap
 * (Arrow layout: bit i set means row i is not null).
 */
export class Column {
  /** Wraps a column as the host sent it (the WIT `column` record). */
  constructor(type, length, wit) {
    this.type = type;
    this.length = length;
    this._wit = wit;
    this._cache = undefined;
  }

  /** Whether row `i` is null. */
  isNull(i) {
    const validity = this._wit.validity;
    return validity !== undefined && validity !== null && !bit(validity, i);
  }

  /** Number of null rows. */
  get nullCount() {
    let nulls = 0;
    for (let i = 0; i < this.length; i++) if (this.isNull(i)) nulls++;
    return nulls;
  }

  /**
   * The values without nulls applied: a typed array for numbers
   * (BigInt64Array for int64 and timestamp, Float64Array, Int32Array for
   * date32), an array of booleans, strings or Uint8Arrays otherwise. A null
   * row's slot holds an unspecified value; check `isNull(i)`.
   */
  get values() {
    if (this._cache === undefined) this._cache = this._decodeValues();
    return this._cache;
  }

  _decodeValues() {
    const { tag, val } = this._wit.values;
    switch (tag) {
      case 'boolean':
        return Array.from({ length: this.length }, (_, i) => bit(val, i));
      case 'utf8': {
        const { offsets, data } = val;
        const out = new Array(this.length);
        for (let i = 0; i < this.length; i++) out[i] = decoder.decode(data.subarray(offsets[i], offsets[i + 1]));
        return out;
      }
      case 'binary': {
        const { offsets } = val;
        const data = asBytes(val.data) ?? Uint8Array.from(val.data);
        return Array.from({ length: this.length }, (_, i) => data.slice(offsets[i], offsets[i + 1]));
      }
      default:
        return val;
    }
  }

  /** Row `i`'s value, or `null`. */
  get(i) {
    return this.isNull(i) ? null : this.values[i];
  }

  /** Every value as a plain Array, `null` for nulls. */
  toArray() {
    const values = this.values;
    return Array.from({ length: this.length }, (_, i) => (this.isNull(i) ? null : values[i]));
  }

  /**
   * A column of `type` from an Array (`null`/`undefined` for nulls) or a
   * typed array (no nulls). Throws a TypeError naming `name` and the row for
   * a value of the wrong type.
   */
  static from(type, values, name = 'column') {
    const length = values.length;
    let validity;
    if (!ArrayBuffer.isView(values)) {
      for (let i = 0; i < length; i++) {
        if (values[i] === null || values[i] === undefined) {
          validity ??= new Uint8Array((length + 7) >> 3).fill(0xff);
          validity[i >> 3] &= ~(1 << (i & 7));
        }
      }
    }
    const isNull = (i) => validity !== undefined && !bit(validity, i);
    const wrong = (i) =>
      new TypeError(`${name} is ${typeName(type)} but row ${i} holds ${typeof values[i]} ${String(values[i])}`);
    let wit;
    switch (type.tag) {
      case 'boolean': {
        const bits = new Uint8Array((length + 7) >> 3);
        for (let i = 0; i < length; i++) {
          if (isNull(i)) continue;
          if (typeof values[i] !== 'boolean') throw wrong(i);
          if (values[i]) bits[i >> 3] |= 1 << (i & 7);
        }
        wit = { tag: 'boolean', val: bits };
        break;
      }
      case 'int64':
      case 'timestamp': {
        const out = new BigInt64Array(length);
        for (let i = 0; i < length; i++) {
          if (isNull(i)) continue;
          const v = values[i];
          if (typeof v === 'bigint') out[i] = v;
          else if (Number.isInteger(v)) out[i] = BigInt(v);
          else if (type.tag === 'timestamp' && v instanceof Date) out[i] = BigInt(v.getTime()) * 1000n;
          else throw wrong(i);
        }
        wit = { tag: type.tag, val: out };
        break;
      }
      case 'float64': {
        const out = new Float64Array(length);
        for (let i = 0; i < length; i++) {
          if (isNull(i)) continue;
          const v = values[i];
          if (typeof v === 'number') out[i] = v;
          else if (typeof v === 'bigint') out[i] = Number(v);
          else throw wrong(i);
        }
        wit = { tag: 'float64', val: out };
        break;
      }
      case 'date32': {
        const out = new Int32Array(length);
        for (let i = 0; i < length; i++) {
          if (isNull(i)) continue;
          const v = values[i];
          if (Number.isInteger(v)) out[i] = v;
          else if (v instanceof Date) out[i] = Math.floor(v.getTime() / 86_400_000);
          else throw wrong(i);
        }
        wit = { tag: 'date32', val: out };
        break;
      }
      case 'utf8':
      case 'binary': {
        const offsets = new Int32Array(length + 1);
        let data = new Uint8Array(Math.max(64, length * 16));
        let end = 0;
        for (let i = 0; i < length; i++) {
          if (!isNull(i)) {
            const v = values[i];
            if (type.tag === 'utf8') {
              if (typeof v !== 'string') throw wrong(i);
              // At most 3 bytes per UTF-16 code unit.
              data = ensure(data, end + v.length * 3);
              end += encoder.encodeInto(v, data.subarray(end)).written;
            } else {
              const bytes = asBytes(v);
              if (bytes === undefined) throw wrong(i);
              data = ensure(data, end + bytes.length);
              data.set(bytes, end);
              end += bytes.length;
            }
          }
          if (end > 0x7fffffff) throw new RangeError(`${name} holds more than 2^31 - 1 bytes`);
          offsets[i + 1] = end;
        }
        wit = { tag: type.tag, val: { offsets, data: data.slice(0, end) } };
        break;
      }
      default:
        throw new TypeError(`unknown data type ${JSON.stringify(type)}`);
    }
    return new Column(type, length, { validity, values: wit });
  }
}

// Any byte view (the bindings' list<u8> need not be this realm's
// Uint8Array) or ArrayBuffer as a Uint8Array; undefined for anything else.
function asBytes(value) {
  if (value instanceof Uint8Array) return value;
  if (ArrayBuffer.isView(value)) return new Uint8Array(value.buffer, value.byteOffset, value.byteLength);
  if (value instanceof ArrayBuffer) return new Uint8Array(value);
  return undefined;
}

function ensure(buffer, needed) {
  if (needed <= buffer.length) return buffer;
  const grown = new Uint8Array(Math.max(needed, buffer.length * 2));
  grown.set(buffer);
  return grown;
}

function inferType(name, values) {
  if (values instanceof BigInt64Array) return INT64;
  if (values instanceof Float64Array || values instanceof Float32Array) return FLOAT64;
  if (values instanceof Int32Array) return INT64;
  for (const v of values) {
    if (v === null || v === undefined) continue;
    if (typeof v === 'boolean') return BOOLEAN;
    if (typeof v === 'bigint') return INT64;
    if (typeof v === 'number') return Number.isInteger(v) ? INT64 : FLOAT64;
    if (typeof v === 'string') return UTF8;
    if (asBytes(v) !== undefined) return BINARY;
    if (v instanceof Date) return timestamp('UTC');
    throw new TypeError(`${name}: cannot store a ${typeof v} value`);
  }
  throw new TypeError(`${name}: every value is null, so its type must be given`);
}

function toColumn(name, values, type) {
  if (values instanceof Column) return values;
  if (type !== undefined && type.type !== undefined) type = type.type;
  const array = ArrayBuffer.isView(values) ? values : Array.from(values);
  return Column.from(type ?? inferType(`column "${name}"`, array), array, `column "${name}"`);
}

// ---------------------------------------------------------------------------
// Record batches

/**
 * A record batch: `numRows` rows x `schema.length` columns. Immutable:
 * `withColumn`, `select`, `filter`... return a new batch.
 */
export class Batch {
  /** `schema`: [{name, type, nullable}]; `columns`: Column per field. */
  constructor(schema, columns, numRows, input = undefined, rows = undefined) {
    this.schema = schema;
    this.columns = columns;
    this.numRows = numRows;
    // The batch the plugin was given, and which of its rows these are
    // (undefined: all, in order), to send back only the changes.
    this._input = input;
    this._rows = rows;
    this._index = new Map(schema.map((field, i) => [field.name, i]));
    if (this._index.size !== schema.length) {
      throw new Error(`duplicate column names in ${JSON.stringify(this.columnNames)}`);
    }
    columns.forEach((column, i) => {
      if (column.length !== numRows) {
        throw new Error(`column "${schema[i].name}" has ${column.length} values, the batch has ${numRows} rows`);
      }
    });
  }

  /** Column names, in order. */
  get columnNames() {
    return this.schema.map((field) => field.name);
  }

  /** Whether a column called `name` exists. */
  has(name) {
    return this._index.has(name);
  }

  /** Column `name`; throws InvalidInput naming it when absent. */
  column(name) {
    return this.columns[this._position(name)];
  }

  /** The rows, each an object from column name to value (`null` for nulls). */
  rows() {
    const names = this.columnNames;
    const arrays = this.columns.map((column) => column.toArray());
    const rows = new Array(this.numRows);
    for (let r = 0; r < this.numRows; r++) {
      const row = {};
      for (let c = 0; c < names.length; c++) row[names[c]] = arrays[c][r];
      rows[r] = row;
    }
    return rows;
  }

  /**
   * This batch with column `name` set to `values` (a Column, an Array with
   * nulls, or a typed array): replaced in place when it exists, else
   * appended. The type is `type`, else the existing column's, else
   * inferred; nullability is the existing column's, else true (a column
   * holding a null is always sent as nullable).
   */
  withColumn(name, values, type) {
    const position = this._index.get(name);
    type ??= position !== undefined ? this.schema[position].type : undefined;
    const column = toColumn(name, values, type);
    const nullable = position !== undefined ? this.schema[position].nullable : true;
    const field = { name, type: column.type, nullable };
    const schema = [...this.schema];
    const columns = [...this.columns];
    if (position !== undefined) {
      schema[position] = field;
      columns[position] = column;
    } else {
      schema.push(field);
      columns.push(column);
    }
    return new Batch(schema, columns, this.numRows, this._input, this._rows);
  }

  /** Only the columns `names`, in that order. */
  select(names) {
    const positions = names.map((name) => this._position(name));
    return new Batch(
      positions.map((i) => this.schema[i]),
      positions.map((i) => this.columns[i]),
      this.numRows,
      this._input,
      this._rows,
    );
  }

  /** Every column but `names` (absent names are ignored). */
  drop(names) {
    const dropped = new Set(names);
    const keep = this.schema.map((_, i) => i).filter((i) => !dropped.has(this.schema[i].name));
    return new Batch(
      keep.map((i) => this.schema[i]),
      keep.map((i) => this.columns[i]),
      this.numRows,
      this._input,
      this._rows,
    );
  }

  /** Columns renamed by `{old: new}`. */
  rename(mapping) {
    for (const old of Object.keys(mapping)) this._position(old);
    const schema = this.schema.map((field) => ({ ...field, name: mapping[field.name] ?? field.name }));
    return new Batch(schema, this.columns, this.numRows, this._input, this._rows);
  }

  /** The rows at `indices`, in that order (repeats allowed). */
  take(indices) {
    const columns = this.columns.map((column) => {
      const values = column.toArray();
      const taken = Column.from(column.type, Array.from(indices, (i) => values[i]), 'column');
      // Still the input's column, on fewer rows: the host selects it itself.
      taken._source = column._source;
      return taken;
    });
    const rows = this._input === undefined ? undefined : Array.from(indices, (i) => (this._rows ? this._rows[i] : i));
    return new Batch(this.schema, columns, indices.length, this._input, rows);
  }

  /** The rows where `keep` is true: an array of numRows booleans, or a
   * function of the row object and its index. */
  filter(keep) {
    const mask = typeof keep === 'function' ? this.rows().map((row, i) => Boolean(keep(row, i))) : Array.from(keep);
    if (mask.length !== this.numRows) {
      throw new Error(`filter mask has ${mask.length} entries, the batch has ${this.numRows} rows`);
    }
    const indices = [];
    mask.forEach((flag, i) => flag && indices.push(i));
    return this.take(indices);
  }

  /**
   * A batch from `{name: values}` in key order; each column's type comes
   * from `types[name]` when given (a type such as UTF8, or a schema field
   * `{type, nullable}`), else from its values.
   */
  static fromColumns(columns, types = {}) {
    const names = Object.keys(columns);
    const built = names.map((name) => toColumn(name, columns[name], types[name]));
    const lengths = new Set(built.map((column) => column.length));
    if (lengths.size > 1) throw new Error(`columns have different lengths: ${[...lengths].join(', ')}`);
    const schema = built.map((column, i) => ({
      name: names[i],
      type: column.type,
      nullable: types[names[i]]?.nullable ?? true,
    }));
    return new Batch(schema, built, built.length ? built[0].length : 0);
  }

  /** A batch from row objects; columns are the union of their keys in
   * first-seen order, and a missing key is null. Types as in fromColumns. */
  static fromRows(rows, types = {}) {
    const names = new Set();
    for (const row of rows) for (const key of Object.keys(row)) names.add(key);
    for (const key of Object.keys(types)) names.add(key);
    const columns = {};
    for (const name of names) columns[name] = rows.map((row) => row[name] ?? null);
    return Batch.fromColumns(columns, types);
  }

  static _fromWit(batch) {
    const schema = batch.schema.fields.map((f) => ({ name: f.name, type: f.dataType, nullable: f.nullable }));
    const columns = batch.columns.map((column, i) => {
      const wrapped = new Column(schema[i].type, batch.numRows, column);
      wrapped._source = wrapped;
      return wrapped;
    });
    const input = { schema, columns, numRows: batch.numRows };
    return new Batch(schema, columns, batch.numRows, input, undefined);
  }

  /**
   * This batch as changes to the input it derives from (the WIT `splice`),
   * or undefined when a splice cannot say it: a batch not derived from the
   * input, input columns reordered or placed after new ones, or rows
   * repeated while columns were computed.
   */
  _toSplice() {
    const input = this._input;
    if (input === undefined) return undefined;
    const positions = new Map(input.schema.map((field, i) => [field.name, i]));
    const repeated = this._rows !== undefined && new Set(this._rows).size !== this._rows.length;
    let last = -1;
    let appended = false;
    const changed = [];
    for (let i = 0; i < this.schema.length; i++) {
      const field = this.schema[i];
      const column = this.columns[i];
      const position = positions.get(field.name);
      if (position === undefined) {
        appended = true;
      } else if (appended || position <= last) {
        return undefined;
      } else {
        last = position;
        const original = input.schema[position];
        const same = column._source !== undefined && column._source === input.columns[position];
        if (same && sameType(field.type, original.type) && field.nullable === original.nullable) continue;
      }
      if (repeated) return undefined;
      changed.push([field, column]);
    }
    const columns = changed.map(([field, column]) => {
      let wit = column._wit;
      if (column._source !== undefined) {
        // An input column under a new name: already in the input's rows.
        wit = column._source._wit;
      } else if (this._rows !== undefined) {
        // Computed on the selected rows: spread onto the input's rows (the
        // others are not selected, any value does).
        const values = column.toArray();
        const spread = new Array(input.numRows).fill(field.nullable ? null : fillerOf(field.type));
        this._rows.forEach((row, j) => {
          spread[row] = values[j];
        });
        wit = Column.from(field.type, spread, field.name)._wit;
      }
      return {
        field: { name: field.name, dataType: field.type, nullable: field.nullable || wit.validity != null },
        column: wit,
      };
    });
    const names = new Set(this.columnNames);
    const drop = input.schema.map((field) => field.name).filter((name) => !names.has(name));
    const selection = this._rows === undefined ? undefined : { tag: 'indices', val: Uint32Array.from(this._rows) };
    return { selection, columns, drop };
  }

  _toWit() {
    const fields = this.schema.map((field, i) => ({
      name: field.name,
      dataType: field.type,
      nullable: field.nullable || this.columns[i]._wit.validity != null,
    }));
    return { schema: { fields }, numRows: this.numRows, columns: this.columns.map((column) => column._wit) };
  }

  _position(name) {
    const position = this._index.get(name);
    if (position === undefined) {
      throw new InvalidInput(`no column "${name}"; the batch has ${JSON.stringify(this.columnNames)}`);
    }
    return position;
  }
}

// ---------------------------------------------------------------------------
// Plugin kinds

function sameType(a, b) {
  return a.tag === b.tag && (a.val ?? null) === (b.val ?? null);
}

const FILLERS = { boolean: false, int64: 0n, float64: 0, utf8: '', binary: new Uint8Array(), timestamp: 0n, date32: 0 };

function fillerOf(type) {
  return FILLERS[type.tag];
}

// `describe` cannot fail: an error from `reads` is kept and thrown on every
// batch instead.
let describeError;

function stageInfo(options) {
  try {
    const reads = typeof options?.reads === 'function' ? options.reads() : options?.reads;
    return { reads: reads == null ? undefined : Array.from(reads, String) };
  } catch (e) {
    describeError = e;
    return { reads: undefined };
  }
}

function checkDescribe() {
  if (describeError !== undefined) throw describeError;
}

/** The `transform` export for `fn(batch) -> Batch`; `options.reads` names
 * the columns it reads (see the module comment). */
export function transformer(fn, options = {}) {
  return {
    describe() {
      return stageInfo(options);
    },
    transform(batch) {
      return guarded(() => {
        checkDescribe();
        const result = fn(Batch._fromWit(batch));
        if (!(result instanceof Batch)) throw new TypeError('a transform must return a Batch');
        const splice = result._toSplice();
        return splice === undefined ? { tag: 'batch', val: result._toWit() } : { tag: 'splice', val: splice };
      });
    },
  };
}

/** The `validate` export for `fn(batch) -> iterable of {row, rule, message}`;
 * `options.reads` names the columns it reads. */
export function validator(fn, options = {}) {
  return {
    describe() {
      return stageInfo(options);
    },
    validate(batch) {
      return guarded(() => {
        checkDescribe();
        const converted = Batch._fromWit(batch);
        const verdicts = [];
        for (const { row, rule, message } of fn(converted)) {
          if (!Number.isInteger(row) || row < 0 || row >= converted.numRows) {
            throw new RangeError(`verdict row ${row} is outside the batch's ${converted.numRows} rows`);
          }
          verdicts.push({ row, rule: String(rule), message: String(message) });
        }
        return verdicts;
      });
    },
  };
}

/** The `extract` export for `fn(bytes, {sourceName, contentType}) -> Batch | Batch[]`. */
export function extractor(fn) {
  return {
    extract(data, metadata) {
      return guarded(() => {
        const result = fn(data, metadata);
        const batches = result instanceof Batch ? [result] : Array.from(result);
        return batches.map((batch) => batch._toWit());
      });
    },
  };
}

// ---------------------------------------------------------------------------
// Host services

let configCache;

/** The stage's `[stages.config]` table as an object (`{}` when none). */
export function config() {
  configCache ??= JSON.parse(hostConfig());
  return configCache;
}

/** Writes `message` to the host log at `level`: trace, debug, info, warn or error. */
export function log(level, message) {
  hostLog(level, String(message));
}

export const debug = (message) => log('debug', message);
export const info = (message) => log('info', message);
export const warn = (message) => log('warn', message);
export const error = (message) => log('error', message);
