#!/usr/bin/env bash
# What an open dashboard costs the data path. Starts `weir serve` with the
# flights pipeline, then posts the committed flights sample POSTS times,
# paired A B A B…: A while a poller makes the requests the dashboard's
# overview and pipeline views make (pipelines, plugins, report), ten times
# as often as the page does (every 200 ms instead of every 2 s); B with
# nothing polling. Prints farm-bench's table; quote the median A/B wall
# ratio.
#
# Usage: bench/dashboard.sh WEIR_BINARY [RUNS] [POSTS]   (needs curl, farm-bench)
set -euo pipefail
weir="$(realpath "$1")"
runs="${2:-8}"
posts="${3:-40}"
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
server=""
trap '[ -n "$server" ] && kill "$server" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT

mkdir -p "$work/data"
cp "$repo/tests/data/flights_sample.csv" "$work/data/flights.csv"
cp "$repo/tests/data/airlines.csv" "$work/data/airlines.csv"
cp "$repo/examples/flights/pipeline.toml" "$work/pipeline.toml"
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
url="http://127.0.0.1:$port"
cat > "$work/service.toml" <<TOML
[service]
listen = "127.0.0.1:$port"
state_dir = "state"

[[pipelines]]
file = "pipeline.toml"
linger_ms = 20
sink_path = "serve/flights"
quarantine_path = "serve/quarantine"
TOML
"$weir" --log off serve "$work/service.toml" &
server=$!
for _ in $(seq 100); do
  curl -sf "$url/ready" >/dev/null && break
  sleep 0.1
done

cat > "$work/post.sh" <<SH
#!/bin/sh
# \$1: poll | quiet
if [ "\$1" = poll ]; then
  ( while :; do
      curl -s $url/v1/pipelines >/dev/null
      curl -s $url/v1/plugins >/dev/null
      curl -s $url/v1/pipelines/flights/report >/dev/null
      sleep 0.2
    done ) &
  poller=\$!
fi
for i in \$(seq $posts); do
  curl -sf -H 'content-type: text/csv' --data-binary @$work/data/flights.csv $url/v1/pipelines/flights/records >/dev/null
done
[ -n "\${poller:-}" ] && kill \$poller
exit 0
SH
farm-bench -n "$runs" --timeout 900 --vs "sh $work/post.sh quiet" -- sh "$work/post.sh" poll
