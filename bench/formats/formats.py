"""Prepares the inputs and times weir, DuckDB and Polars on them (run.sh)."""
import os, statistics, subprocess, sys, time

KINDS = ["jsonl", "json", "csv"]

PIPELINE = """[pipeline]
name = "bench-{kind}"

[source]
format = "{kind}"
path = "{path}"
null_values = ["NA"]

[sink]
format = "parquet"
path = "out-weir-{kind}.parquet"
mode = "overwrite"

[quarantine]
format = "jsonl"
path = "quarantine-{kind}.jsonl"
"""

def prepare(flights, work):
    import duckdb
    src = f"read_csv('{flights}', nullstr='NA')"
    outputs = {
        "flights.jsonl": f"copy (select * from {src}) to '{work}/flights.jsonl' (format json)",
        "flights.json": f"copy (select * from {src}) to '{work}/flights.json' (format json, array true)",
        "csv/a.csv": None,
        "csv/b.csv": f"copy (select * exclude (year, month), year, month from {src}) to '{work}/csv/b.csv' (header, nullstr 'NA')",
    }
    os.makedirs(f"{work}/csv", exist_ok=True)
    for name, sql in outputs.items():
        if os.path.exists(f"{work}/{name}"):
            continue
        if sql is None:
            with open(flights, "rb") as f, open(f"{work}/{name}", "wb") as out:
                out.write(f.read())
        else:
            duckdb.sql(sql)
    for kind, path in [("jsonl", "flights.jsonl"), ("json", "flights.json"), ("csv", "csv/*.csv")]:
        with open(f"{work}/{kind}.toml", "w") as f:
            f.write(PIPELINE.format(kind=kind, path=path).replace('null_values = ["NA"]\n', "" if kind != "csv" else 'null_values = ["NA"]\n'))

def duckdb_run(kind, work):
    import duckdb
    src = {"jsonl": f"read_json('{work}/flights.jsonl', format='newline_delimited')",
           "json": f"read_json('{work}/flights.json', format='array')",
           "csv": f"read_csv(['{work}/csv/a.csv', '{work}/csv/b.csv'], nullstr='NA', union_by_name=true)"}[kind]
    duckdb.sql(f"copy (select * from {src}) to '{work}/out-duckdb-{kind}.parquet' (format parquet)")

def polars_run(kind, work):
    import polars as pl
    if kind == "jsonl":
        df = pl.read_ndjson(f"{work}/flights.jsonl")
    elif kind == "json":
        df = pl.read_json(f"{work}/flights.json")
    else:
        df = pl.concat([pl.read_csv(f"{work}/csv/{n}.csv", null_values="NA") for n in "ab"], how="diagonal_relaxed")
    df.write_parquet(f"{work}/out-polars-{kind}.parquet")

def timed(command):
    started = time.monotonic()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - started

def compare(weir, work, runs):
    me = [sys.executable, __file__]
    print(f"{'input':<8} {'weir/duckdb':>12} {'weir/polars':>12}   (median of {runs} paired wall-time ratios; < 1 means weir is faster)")
    for kind in KINDS:
        ratios = {"duckdb": [], "polars": []}
        weir_cmd = [weir, "--log", "off", "run", f"{work}/{kind}.toml"]
        for other in ratios:
            timed(weir_cmd)  # warm-up
            for _ in range(runs):
                a = timed(weir_cmd)
                b = timed(me + [other, kind, work])
                ratios[other].append(a / b)
        print(f"{kind:<8} {statistics.median(ratios['duckdb']):>12.2f} {statistics.median(ratios['polars']):>12.2f}")

if __name__ == "__main__":
    command = sys.argv[1]
    if command == "prepare":
        prepare(sys.argv[2], sys.argv[3])
    elif command == "compare":
        compare(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif command == "duckdb":
        duckdb_run(sys.argv[2], sys.argv[3])
    elif command == "polars":
        polars_run(sys.argv[2], sys.argv[3])
