// Runs componentize-js's componentize() API (used by `weir plugin build`
// for JavaScript plugins; the jco CLI mishandles some paths).
// Usage: node componentize.mjs ENTRY SOURCE WIT_DIR WORLD OUT
import { writeFile } from 'node:fs/promises';
import { pathToFileURL } from 'node:url';

const [entry, sourcePath, witPath, worldName, out] = process.argv.slice(2);
const { componentize } = await import(pathToFileURL(entry).href);
const { component } = await componentize({
  sourcePath,
  witPath,
  worldName,
  // weir plugins get WASI's clocks, random and stdio, never HTTP.
  disableFeatures: ['http', 'fetch-event'],
});
await writeFile(out, component);
