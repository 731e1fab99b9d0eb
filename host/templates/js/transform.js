// `{{name}}`: a weir transform. Upper-cases the text columns named in the
// stage's config, e.g. `config = { columns = ["origin"] }`.

import { config, transformer, UTF8 } from './weir.js';

export const transform = transformer(
  (batch) => {
    for (const name of config().columns ?? []) {
      const upper = batch.column(name).toArray().map((value) => (value === null ? null : value.toUpperCase()));
      batch = batch.withColumn(name, upper, UTF8);
    }
    // Derived from the input: only the replaced columns go back.
    return batch;
  },
  // Only these columns are sent to the plugin; the others stay on the host.
  { reads: () => config().columns ?? [] },
);
