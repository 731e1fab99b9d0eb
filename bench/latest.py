"""The flights enrichment in weir (`latest`), DuckDB and Polars, for `scripts/bench`.

One query, three engines, whole processes: every row of flights.csv
(NA = null) with the manufacturer, model and seats of its plane from
planes.csv joined on tailnum (a left join: flights whose plane is not in
the table keep nulls), written as CSV. weir runs a `latest` operator whose
table is planes.csv; DuckDB and Polars run the same LEFT JOIN in a fresh
Python process each (so their start-up counts, as weir's does). planes.csv
has one row per tailnum, so the latest row per key is the row. Checks that
the three results agree (row count, and the multiset of (tailnum,
manufacturer, model, seats) tuples), then prints one JSON object with each
engine's median wall-clock seconds.

Usage: python latest.py WEIR_BINARY DATA_DIR OUT_DIR [REPETITIONS]
"""

import collections
import csv
import json
import os
import subprocess
import sys

from processes import median_seconds

COLUMNS = "f.*, p.manufacturer AS plane_manufacturer, p.model AS plane_model, p.seats AS plane_seats"

DUCKDB = f"""
import duckdb, os, sys
con = duckdb.connect()
con.execute(f"SET threads = {{os.cpu_count()}}")
con.execute(f'''COPY (
  SELECT {COLUMNS}
  FROM read_csv('{{sys.argv[1]}}/flights.csv', header = true, nullstr = 'NA') f
  LEFT JOIN read_csv('{{sys.argv[1]}}/planes.csv', header = true, nullstr = 'NA') p USING (tailnum))
  TO '{{sys.argv[2]}}' (HEADER)''')
"""

POLARS = """
import polars as pl, sys
flights = pl.read_csv(f"{sys.argv[1]}/flights.csv", null_values=["NA"])
planes = pl.read_csv(f"{sys.argv[1]}/planes.csv", null_values=["NA"]).select(
    "tailnum",
    pl.col("manufacturer").alias("plane_manufacturer"),
    pl.col("model").alias("plane_model"),
    pl.col("seats").alias("plane_seats"),
)
flights.join(planes, on="tailnum", how="left").write_csv(sys.argv[2])
"""

PIPELINE = """
[pipeline]
name = "latest-bench"
checkpoint = true

[source]
format = "csv"
path = "{data}/flights.csv"
null_values = ["NA"]

[[operators]]
name = "plane"
kind = "latest"
key = ["tailnum"]
columns = ["manufacturer", "model", "seats"]
prefix = "plane_"
table = {{ format = "csv", path = "{data}/planes.csv", null_values = ["NA"] }}

[sink]
format = "csv"
path = "{out}/weir.csv"
mode = "overwrite"

[quarantine]
format = "jsonl"
path = "{out}/weir-quarantine.jsonl"
"""


def joined(path):
    """Multiset of (tailnum, manufacturer, model, seats), and the row count."""
    with open(path) as f:
        counts = collections.Counter()
        for r in csv.DictReader(f):
            seats = r["plane_seats"]
            counts[(r["tailnum"], r["plane_manufacturer"], r["plane_model"], int(float(seats)) if seats else None)] += 1
        return counts


def main():
    weir, data, out = sys.argv[1], os.path.abspath(sys.argv[2]), os.path.abspath(sys.argv[3])
    reps = int(sys.argv[4]) if len(sys.argv) > 4 else 5
    os.makedirs(out, exist_ok=True)
    pipeline = os.path.join(out, "latest.toml")
    with open(pipeline, "w") as f:
        f.write(PIPELINE.format(data=data, out=out))
    commands = {
        "weir": [weir, "run", pipeline, "--no-progress"],
        "duckdb": [sys.executable, "-c", DUCKDB, data, f"{out}/duckdb.csv"],
        "polars": [sys.executable, "-c", POLARS, data, f"{out}/polars.csv"],
    }
    def reset(name):
        # weir keeps the planes it applied between runs: start afresh so
        # that each run reads the table, as the others do.
        if name == "weir":
            subprocess.run([weir, "state", "reset", pipeline], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    medians = median_seconds(commands, reps, before=reset)
    results = {name: joined(f"{out}/{name}.csv") for name in commands}
    for name in ("duckdb", "polars"):
        assert results["weir"] == results[name], f"weir's joined rows differ from {name}'s"
    faster = min(medians["duckdb"], medians["polars"])
    print(json.dumps({
        "rows": sum(results["weir"].values()),
        "matched": sum(n for k, n in results["weir"].items() if k[1]),
        "seconds": medians,
        "weir_over_faster": medians["weir"] / faster,
    }))


if __name__ == "__main__":
    main()
