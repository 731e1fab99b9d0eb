// `{{name}}`: a weir extractor. Parses `key=value` lines into a batch of two
// text columns, `key` and `value`; blank lines and `#` comments are skipped,
// and a line without `=` is a parse error naming its number.

import { Batch, extractor, ParseError, UTF8 } from './weir.js';

export const extract = extractor((bytes, { sourceName }) => {
  const keys = [];
  const values = [];
  new TextDecoder().decode(bytes).split('\n').forEach((raw, i) => {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) return;
    const at = line.indexOf('=');
    if (at < 0) throw new ParseError(`${sourceName} line ${i + 1}: no \`=\``);
    keys.push(line.slice(0, at).trim());
    values.push(line.slice(at + 1).trim());
  });
  return Batch.fromColumns({ key: keys, value: values }, { key: UTF8, value: UTF8 });
});
