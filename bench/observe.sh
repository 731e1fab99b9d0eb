#!/usr/bin/env bash
# The cost of run history + OpenLineage + data checks on the flights run
# (issue 19's budget: at most 3 % of wall time). Runs the flights pipeline
# twice over, paired A B A B…: A with [history], [lineage] (a JSON Lines
# file) and every [checks] check on (learned volume and quarantine rate
# included); B with history off and no lineage or checks. Prints
# farm-bench's table; quote the median A/B wall ratio.
#
# Usage: bench/observe.sh WEIR_BINARY [RUNS]   (after examples/flights/fetch-data.sh)
set -euo pipefail
weir="$(realpath "$1")"
runs="${2:-10}"
cd "$(dirname "$0")/../examples/flights"
on=.bench-observe-on.toml
off=.bench-observe-off.toml
trap 'rm -f "$on" "$off"' EXIT
sed -e 's#path = "out/flights"#path = "out/bench-on"#' \
    -e 's#out/quarantine.jsonl#out/bench-on-quarantine.jsonl#' pipeline.toml > "$on"
cat >> "$on" <<'TOML'

[history]
enabled = true

[lineage]
file = "out/bench-on-lineage.jsonl"

[checks]
freshness = { max_age = "100000d" }
volume = { learned = true }
quarantine = { learned = true }
nulls = { max_fraction = 0.5 }
TOML
sed -e 's#path = "out/flights"#path = "out/bench-off"#' \
    -e 's#out/quarantine.jsonl#out/bench-off-quarantine.jsonl#' pipeline.toml > "$off"
printf '\n[history]\nenabled = false\n' >> "$off"
farm-bench -n "$runs" --timeout 600 --vs "$weir --log off run $off" -- "$weir" --log off run "$on"
