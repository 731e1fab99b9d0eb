"""The flights aggregate in weir, DuckDB and Polars, for `scripts/bench`.

One query, three engines, whole processes: per carrier, year and month over
flights.csv (NA = null), the number of flights, the mean arr_delay, the
largest dep_delay and the number of distinct tailnums, written as CSV.
weir runs examples/flights/pipeline-aggregate.toml without its validate
stage (an equivalent copy is written to OUT_DIR); DuckDB and Polars run the
same GROUP BY in a fresh Python process each (so their start-up counts, as
weir's does). Checks that the three results agree, then prints one JSON
object with each engine's median wall-clock seconds.

Usage: python aggregate.py WEIR_BINARY DATA_DIR OUT_DIR [REPETITIONS]
"""

import csv
import json
import math
import os
import sys

from processes import median_seconds

DUCKDB = """
import duckdb, sys
con = duckdb.connect()
con.execute(f"SET threads = {os.cpu_count()}")
con.execute(f'''COPY (
  SELECT carrier, year, month, count(*) AS flights, avg(arr_delay) AS mean_arr_delay,
         max(dep_delay) AS max_dep_delay, count(DISTINCT tailnum) AS planes
  FROM read_csv('{sys.argv[1]}/flights.csv', header = true, nullstr = 'NA')
  GROUP BY ALL) TO '{sys.argv[2]}' (HEADER)''')
"""

POLARS = """
import polars as pl, sys
df = pl.read_csv(f"{sys.argv[1]}/flights.csv", null_values=["NA"])
df.group_by(["carrier", "year", "month"]).agg(
    pl.len().alias("flights"),
    pl.col("arr_delay").mean().alias("mean_arr_delay"),
    pl.col("dep_delay").max().alias("max_dep_delay"),
    pl.col("tailnum").drop_nulls().n_unique().alias("planes"),
).write_csv(sys.argv[2])
"""

PIPELINE = """
[pipeline]
name = "aggregate-bench"
checkpoint = true

[source]
format = "csv"
path = "{data}/flights.csv"
null_values = ["NA"]

[[operators]]
name = "per_carrier_month"
kind = "aggregate"
group_by = ["carrier", "year", "month"]
measures = ["count(*) as flights", "mean(arr_delay) as mean_arr_delay", "max(dep_delay) as max_dep_delay", "count_distinct(tailnum) as planes"]

[sink]
format = "csv"
path = "{out}/weir.csv"
mode = "overwrite"

[quarantine]
format = "jsonl"
path = "{out}/weir-quarantine.jsonl"
"""


def rows(path):
    with open(path) as f:
        out = {}
        for r in csv.DictReader(f):
            key = (r["carrier"], int(r["year"]), int(r["month"]))
            mean = float(r["mean_arr_delay"]) if r["mean_arr_delay"] else None
            out[key] = (int(r["flights"]), mean, int(float(r["max_dep_delay"])), int(r["planes"]))
        return out


def same(a, b):
    if a.keys() != b.keys():
        return False
    for k in a:
        (n1, m1, x1, p1), (n2, m2, x2, p2) = a[k], b[k]
        if (n1, x1, p1) != (n2, x2, p2):
            return False
        if (m1 is None) != (m2 is None) or (m1 is not None and not math.isclose(m1, m2, rel_tol=1e-9)):
            return False
    return True


def main():
    weir, data, out = sys.argv[1], os.path.abspath(sys.argv[2]), os.path.abspath(sys.argv[3])
    reps = int(sys.argv[4]) if len(sys.argv) > 4 else 5
    os.makedirs(out, exist_ok=True)
    pipeline = os.path.join(out, "aggregate.toml")
    with open(pipeline, "w") as f:
        f.write(PIPELINE.format(data=data, out=out))
    commands = {
        "weir": [weir, "run", pipeline, "--no-progress"],
        "duckdb": [sys.executable, "-c", "import os\n" + DUCKDB, data, f"{out}/duckdb.csv"],
        "polars": [sys.executable, "-c", POLARS, data, f"{out}/polars.csv"],
    }
    medians = median_seconds(commands, reps)
    results = {name: rows(f"{out}/{name}.csv") for name in commands}
    for name in ("duckdb", "polars"):
        assert same(results["weir"], results[name]), f"weir's aggregates differ from {name}'s"
    faster = min(medians["duckdb"], medians["polars"])
    print(json.dumps({
        "groups": len(results["weir"]),
        "seconds": medians,
        "weir_over_faster": medians["weir"] / faster,
    }))


if __name__ == "__main__":
    main()
