// `{{name}}`: a weir validator. Flags rows where a column named in the
// stage's config is null, e.g. `config = { required = ["tailnum"] }`; the
// rule is `required:COLUMN`.

import { config, validator } from './weir.js';

export const validate = validator(function* (batch) {
  for (const name of config().required ?? []) {
    const column = batch.column(name);
    for (let row = 0; row < batch.numRows; row++) {
      if (column.isNull(row)) yield { row, rule: `required:${name}`, message: `${name} is null` };
    }
  }
});
