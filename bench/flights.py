"""The flights pipeline in DuckDB and in Polars, for `scripts/bench`.

Same input and logic as examples/flights/pipeline.toml: read flights.csv
(NA = null), tag each row with the validation rules it fails, write failing
rows as JSON Lines and passing rows, enriched with carrier_name (joined from
airlines.csv) and delay_class and with tailnum replaced by the hex SHA-256 of
salt + tailnum, as Parquet partitioned by month. Prints one JSON object with
the median wall-clock time of each engine and its row counts.

Usage: python flights.py DATA_DIR OUT_DIR [REPETITIONS]
"""

import json
import os
import statistics
import sys
import time

SALT = "weir-flights-example"
RULES_SQL = [
    ("tailnum_format", "tailnum IS NOT NULL AND NOT regexp_full_match(tailnum, '^N[0-9A-Z]{1,5}$')"),
    ("arr_time_when_departed", "dep_time IS NOT NULL AND arr_time IS NULL"),
    ("month_range", "month NOT BETWEEN 1 AND 12"),
    ("day_range", "day NOT BETWEEN 1 AND 31"),
    ("dep_time_range", "dep_time NOT BETWEEN 1 AND 2400"),
    ("distance_positive", "distance <= 0"),
]


def run_duckdb(data, out):
    import duckdb

    con = duckdb.connect()
    con.execute(f"SET threads = {os.cpu_count()}")
    rule = "concat_ws(',', " + ", ".join(f"CASE WHEN {cond} THEN '{name}' END" for name, cond in RULES_SQL) + ")"
    con.execute(
        f"CREATE TEMP TABLE checked AS SELECT *, {rule} AS rule "
        f"FROM read_csv('{data}/flights.csv', header = true, nullstr = 'NA')"
    )
    con.execute(
        f"""COPY (
            SELECT c.* EXCLUDE (rule, tailnum),
                   sha256('{SALT}' || c.tailnum) AS tailnum,
                   a.name AS carrier_name,
                   CASE WHEN c.dep_time IS NULL THEN 'cancelled'
                        WHEN c.arr_delay IS NULL THEN 'diverted'
                        WHEN c.arr_delay <= 0 THEN 'on_time'
                        WHEN c.arr_delay <= 60 THEN 'late'
                        ELSE 'very_late' END AS delay_class
            FROM checked c LEFT JOIN read_csv('{data}/airlines.csv', header = true) a USING (carrier)
            WHERE c.rule = ''
        ) TO '{out}/duckdb-flights' (FORMAT parquet, PARTITION_BY (month), OVERWRITE_OR_IGNORE)"""
    )
    con.execute(f"COPY (SELECT * FROM checked WHERE rule <> '') TO '{out}/duckdb-quarantine.jsonl' (FORMAT json)")
    written = con.execute("SELECT count(*) FROM checked WHERE rule = ''").fetchone()[0]
    quarantined = con.execute("SELECT count(*) FROM checked WHERE rule <> ''").fetchone()[0]
    return written, quarantined


def run_polars(data, out):
    import polars as pl
    import polars_hash  # noqa: F401  (registers the .chash namespace)

    c = pl.col
    rules = [
        ("tailnum_format", c("tailnum").is_not_null() & ~c("tailnum").str.contains(r"^N[0-9A-Z]{1,5}$")),
        ("arr_time_when_departed", c("dep_time").is_not_null() & c("arr_time").is_null()),
        ("month_range", ~c("month").is_between(1, 12)),
        ("day_range", ~c("day").is_between(1, 31)),
        ("dep_time_range", ~c("dep_time").is_between(1, 2400)),
        ("distance_positive", c("distance") <= 0),
    ]
    rule = pl.concat_str([pl.when(cond).then(pl.lit(name)) for name, cond in rules], separator=",", ignore_nulls=True)
    checked = (
        pl.scan_csv(f"{data}/flights.csv", null_values="NA", infer_schema_length=10000)
        .with_columns(rule.fill_null("").alias("rule"))
        .collect()
    )
    airlines = pl.read_csv(f"{data}/airlines.csv").rename({"name": "carrier_name"})
    passed = (
        checked.filter(c("rule") == "")
        .drop("rule")
        .join(airlines, on="carrier", how="left")
        .with_columns(
            (pl.lit(SALT) + c("tailnum")).chash.sha2_256().alias("tailnum"),
            pl.when(c("dep_time").is_null()).then(pl.lit("cancelled"))
            .when(c("arr_delay").is_null()).then(pl.lit("diverted"))
            .when(c("arr_delay") <= 0).then(pl.lit("on_time"))
            .when(c("arr_delay") <= 60).then(pl.lit("late"))
            .otherwise(pl.lit("very_late"))
            .alias("delay_class"),
        )
    )
    passed.write_parquet(f"{out}/polars-flights", partition_by="month")
    failed = checked.filter(c("rule") != "")
    failed.write_ndjson(f"{out}/polars-quarantine.jsonl")
    return passed.height, failed.height


def main():
    data, out = sys.argv[1], sys.argv[2]
    repetitions = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    os.makedirs(out, exist_ok=True)
    results = {}
    for name, run in [("duckdb", run_duckdb), ("polars", run_polars)]:
        times, counts = [], None
        for _ in range(repetitions):
            started = time.perf_counter()
            counts = run(data, out)
            times.append(time.perf_counter() - started)
        results[name] = {"seconds": statistics.median(times), "written": counts[0], "quarantined": counts[1]}
    print(json.dumps(results))


if __name__ == "__main__":
    main()
