// Keyed state the host keeps for this stage (weir:plugin/state@0.2.0), for
// plugins built with `state = true` under [plugin] in weir-plugin.toml
// (`weir plugin build` then targets the stateful world and copies this file
// next to app.js). Import it as `import { state } from './weir-state.js'`.
//
// The host stores the state, commits it atomically with the output of the
// batch that changed it, and gives it back after a reload, a failure or a
// crash exactly as of the last committed output; a stateful plugin sees
// batches one at a time, in input order. Writes made by a batch that fails
// (a throw, a limit) are discarded with it. Keys are strings (UTF-8) or
// Uint8Arrays and sort bytewise; values are Uint8Arrays, or any JSON value
// with the *Json methods. Calls are batch-shaped and cost fuel: read every
// key a batch needs with one getMany and write them back with one putMany.
// Writing past the stage's max_state_bytes fails the batch as state_quota.

import { getMany, putMany, deleteMany, scanPrefix } from 'weir:plugin/state@0.2.0';

const encoder = new TextEncoder();
const decoder = new TextDecoder();

function keyBytes(key) {
  return typeof key === 'string' ? encoder.encode(key) : new Uint8Array(key);
}

export const state = {
  /** The values (Uint8Array) of `keys` in order; undefined where a key has none. */
  getMany(keys) {
    return getMany(Array.from(keys, keyBytes));
  },

  /** The value of `key`, or undefined. */
  get(key) {
    return this.getMany([key])[0];
  },

  /** Sets each [key, value] pair (value a Uint8Array); a later pair for the same key wins. */
  putMany(pairs) {
    putMany(Array.from(pairs, ([key, value]) => ({ key: keyBytes(key), value: new Uint8Array(value) })));
  },

  /** Sets `key` to `value`. */
  put(key, value) {
    this.putMany([[key, value]]);
  },

  /** Removes `keys` (keys without a value are ignored). */
  deleteMany(keys) {
    deleteMany(Array.from(keys, keyBytes));
  },

  /**
   * At most `limit` [key, value] pairs (Uint8Arrays) whose key starts with
   * `prefix`, in key order, after the key `startAfter` when given (pass the
   * last key of a page to get the next).
   */
  scanPrefix(prefix, startAfter = undefined, limit = 1000) {
    const after = startAfter === undefined ? undefined : keyBytes(startAfter);
    return scanPrefix(keyBytes(prefix), after, limit).map((e) => [e.key, e.value]);
  },

  /** The values of `keys` decoded from JSON; undefined where absent. */
  getJsonMany(keys) {
    const list = Array.from(keys);
    return this.getMany(list).map((value, i) => {
      if (value === undefined) return undefined;
      try {
        return JSON.parse(decoder.decode(value));
      } catch (e) {
        throw new Error(`the state of key ${JSON.stringify(String(list[i]))} is not JSON: ${e.message}`);
      }
    });
  },

  /** The value of `key` decoded from JSON, or undefined. */
  getJson(key) {
    return this.getJsonMany([key])[0];
  },

  /** Sets each [key, value] pair, value encoded as JSON. */
  putJsonMany(pairs) {
    this.putMany(Array.from(pairs, ([key, value]) => [key, encoder.encode(JSON.stringify(value))]));
  },

  /** Sets `key` to `value` encoded as JSON. */
  putJson(key, value) {
    this.putJsonMany([[key, value]]);
  },
};
