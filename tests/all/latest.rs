//! The `latest` operator (issue 18): the latest row per key of a changing
//! table joined onto the pipeline's rows, in `weir run` (also killed and
//! resumed, and across runs as the table changes) and in `weir serve`
//! (a table file dropped while it runs is picked up at the next refresh).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use crate::stateful::run_weir;
use crate::support::read_jsonl;

/// The `name` of every carrier in tests/data/airlines.csv, read here.
fn airline_names() -> HashMap<String, String> {
    std::fs::read_to_string(weir_tests::data_dir().join("airlines.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|line| {
            let (code, name) = line.split_once(',').unwrap();
            (code.to_string(), name.to_string())
        })
        .collect()
}

/// Flights enriched with their airline's name from the airlines table:
/// every output row carries the name the table gives its carrier, rows
/// and order unchanged; a kill after the first commit and a resume give
/// the same output.
#[test]
fn flights_get_their_airline_name_also_when_killed_and_resumed() {
    let names = airline_names();
    for crash in [None, Some("after-commit:1")] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(
            weir_tests::data_dir().join("flights_sample.csv"),
            dir.path().join("flights.csv"),
        )
        .unwrap();
        std::fs::copy(
            weir_tests::data_dir().join("airlines.csv"),
            dir.path().join("airlines.csv"),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("pipeline.toml"),
            r#"
[pipeline]
name = "named"
batch_size = 200
checkpoint_every_batches = 2

[source]
format = "csv"
path = "flights.csv"

[[operators]]
name = "airline"
kind = "latest"
key = ["carrier"]
table = { format = "csv", path = "airlines.csv" }
prefix = "airline_"

[sink]
format = "jsonl"
path = "out.jsonl"
mode = "overwrite"

[quarantine]
format = "jsonl"
path = "quarantine.jsonl"
"#,
        )
        .unwrap();
        if let Some(crash) = crash {
            assert!(run_weir(dir.path(), Some(crash)), "{crash}: never reached");
        }
        assert!(!run_weir(dir.path(), None));
        let out = read_jsonl(&dir.path().join("out.jsonl"));
        let input = std::fs::read_to_string(dir.path().join("flights.csv")).unwrap();
        assert_eq!(out.len(), input.lines().count() - 1, "{crash:?}: rows");
        for row in &out {
            let carrier = row["carrier"].as_str().unwrap();
            assert_eq!(
                row["airline_name"].as_str(),
                names.get(carrier).map(String::as_str),
                "{crash:?}: {row}"
            );
        }
    }
}

/// Customer `c`'s tier in table version `v`.
fn tier(c: i64, v: i64) -> String {
    format!("t{}", (c * 7 + v * 3) % 5)
}

fn table_file(path: &Path, rows: &[(i64, i64)]) {
    let mut text = String::from("customer,tier,version\n");
    for &(c, v) in rows {
        text.push_str(&format!("{c},{},{v}\n", tier(c, v)));
    }
    std::fs::write(path, text).unwrap();
}

fn orders_file(path: &Path, customers: std::ops::Range<i64>) {
    let mut text = String::from("order,customer\n");
    for c in customers {
        text.push_str(&format!("{},{c}\n", 1000 + c));
    }
    std::fs::write(path, text).unwrap();
}

const ORDERS: &str = r#"
[pipeline]
name = "orders"
batch_size = 16

[source]
format = "csv"
path = "orders.csv"

[[operators]]
name = "customer"
kind = "latest"
key = ["customer"]
columns = ["tier", "version"]
order_by = "version"
missing = "quarantine"

[operators.table]
format = "csv"
path = "customers/*.csv"
schema = [
  { name = "customer", type = "int64" },
  { name = "tier", type = "utf8" },
  { name = "version", type = "int64" },
]

[sink]
format = "jsonl"
path = "out.jsonl"
mode = "overwrite"

[quarantine]
format = "jsonl"
path = "quarantine.jsonl"
"#;

/// customer → (tier, version) of each output row.
type Joined = BTreeMap<i64, (String, i64)>;

/// The joined output rows; quarantined customers with their error kinds.
fn joined(dir: &Path) -> (Joined, Vec<(i64, String)>) {
    let out = read_jsonl(&dir.join("out.jsonl"))
        .iter()
        .map(|r| {
            (
                r["customer"].as_i64().unwrap(),
                (
                    r["tier"].as_str().unwrap().to_string(),
                    r["version"].as_i64().unwrap(),
                ),
            )
        })
        .collect();
    let quarantine = read_jsonl(&dir.join("quarantine.jsonl"))
        .iter()
        .map(|r| {
            (
                r["record"]["customer"].as_i64().unwrap(),
                r["error_kind"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    (out, quarantine)
}

/// A changing table across runs: update files add and change customers;
/// with `order_by`, an older version read later does not replace a newer
/// one; a file rewritten in place is applied again; rows of customers the
/// table lacks go to the quarantine as `no_match`; the kept rows outlive
/// the table's files (they are state, committed with the output).
#[test]
fn a_changing_table_keeps_the_latest_version_per_key_across_runs() {
    let dir = tempfile::tempdir().unwrap();
    let customers = dir.path().join("customers");
    std::fs::create_dir(&customers).unwrap();
    std::fs::write(dir.path().join("pipeline.toml"), ORDERS).unwrap();
    // Customers 0..40 at version 1.
    table_file(
        &customers.join("2026-12-01.csv"),
        &(0..40).map(|c| (c, 1)).collect::<Vec<_>>(),
    );
    orders_file(&dir.path().join("orders.csv"), 0..50);
    assert!(!run_weir(dir.path(), None));
    let (out, quarantine) = joined(dir.path());
    let expected: BTreeMap<i64, (String, i64)> = (0..40).map(|c| (c, (tier(c, 1), 1))).collect();
    assert_eq!(out, expected, "first run");
    assert_eq!(
        quarantine,
        (40..50)
            .map(|c| (c, "no_match".to_string()))
            .collect::<Vec<_>>()
    );

    // An update file: customers 30..50 at version 3; then a file sorting
    // later with customers 30..35 at version 2, which must not win.
    table_file(
        &customers.join("2026-12-02.csv"),
        &(30..50).map(|c| (c, 3)).collect::<Vec<_>>(),
    );
    table_file(
        &customers.join("2026-12-03.csv"),
        &(30..35).map(|c| (c, 2)).collect::<Vec<_>>(),
    );
    assert!(!run_weir(dir.path(), None));
    let (out, quarantine) = joined(dir.path());
    let latest = |c: i64| if c < 30 { 1 } else { 3 };
    let expected: BTreeMap<i64, (String, i64)> = (0..50)
        .map(|c| (c, (tier(c, latest(c)), latest(c))))
        .collect();
    assert_eq!(out, expected, "after the updates");
    assert!(quarantine.is_empty(), "{quarantine:?}");

    // Every table file removed but one, rewritten in place with version 4
    // of customer 0: the other kept rows stay.
    for name in ["2026-12-01.csv", "2026-12-02.csv"] {
        std::fs::remove_file(customers.join(name)).unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(20));
    table_file(&customers.join("2026-12-03.csv"), &[(0, 4)]);
    assert!(!run_weir(dir.path(), None));
    let (out, _) = joined(dir.path());
    assert_eq!(out[&0], (tier(0, 4), 4), "the rewritten file");
    assert_eq!(out[&45], (tier(45, 3), 3), "a kept row whose file is gone");
    assert_eq!(out.len(), 50);

    // `weir state reset` forgets the kept rows; only the file left is read.
    let status = crate::crash::spawn_weir(dir.path(), &["state", "reset", "pipeline.toml"], None)
        .wait()
        .unwrap();
    assert!(status.success());
    assert!(!run_weir(dir.path(), None));
    let (out, quarantine) = joined(dir.path());
    assert_eq!(out.keys().copied().collect::<Vec<_>>(), vec![0]);
    assert_eq!(quarantine.len(), 49);
}

/// `latest` in `weir serve`: posted rows are joined with the table; a
/// table file dropped while the service runs is applied at the next
/// refresh; the kept rows survive a restart with no table file left.
#[test]
fn a_served_pipeline_picks_up_a_new_table_file() {
    use crate::serve::{Running, get, post};
    let dir = tempfile::tempdir().unwrap();
    let customers = dir.path().join("customers");
    std::fs::create_dir(&customers).unwrap();
    table_file(
        &customers.join("a.csv"),
        &(0..10).map(|c| (c, 1)).collect::<Vec<_>>(),
    );
    std::fs::write(
        dir.path().join("pipeline.toml"),
        r#"
[pipeline]
name = "orders"

[source]
format = "jsonl"
schema = [
  { name = "order", type = "int64" },
  { name = "customer", type = "int64" },
]

[[operators]]
name = "customer"
kind = "latest"
key = ["customer"]
order_by = "version"
refresh = "50ms"
table = { format = "csv", path = "customers/*.csv", schema = [
  { name = "customer", type = "int64" },
  { name = "tier", type = "utf8" },
  { name = "version", type = "int64" },
] }

[sink]
format = "jsonl"
path = "out"

[quarantine]
format = "jsonl"
path = "quarantine"
"#,
    )
    .unwrap();
    let service = crate::serve::write_service(dir.path(), "", "linger_ms = 1");
    let send = |running: &Running, order: i64, customers: std::ops::Range<i64>| {
        let body: String = customers
            .map(|c| format!("{{\"order\":{order},\"customer\":{c}}}\n"))
            .collect();
        let (status, ack) = running.oneshot(post(
            "/v1/pipelines/orders/records",
            "application/x-ndjson",
            body,
        ));
        assert!(status.is_success(), "{ack}");
    };
    let running = Running::start(&service);
    send(&running, 1, 0..12);
    table_file(
        &customers.join("b.csv"),
        &(5..12).map(|c| (c, 2)).collect::<Vec<_>>(),
    );
    std::thread::sleep(std::time::Duration::from_millis(100));
    send(&running, 2, 0..12);
    let (_, status) = running.oneshot(get("/v1/pipelines/orders"));
    assert_eq!(status["operators"][0]["kind"], "latest", "{status}");
    running.shutdown().unwrap();
    for name in ["a.csv", "b.csv"] {
        std::fs::remove_file(customers.join(name)).unwrap();
    }
    let running = Running::start(&service);
    send(&running, 3, 0..12);
    running.shutdown().unwrap();

    let out = crate::serve::read_parts(&dir.path().join("out"));
    let mut versions: BTreeMap<(i64, i64), Option<i64>> = BTreeMap::new();
    for row in &out {
        let key = (
            row["order"].as_i64().unwrap(),
            row["customer"].as_i64().unwrap(),
        );
        versions.insert(key, row["version"].as_i64());
        if let Some(v) = row["version"].as_i64() {
            assert_eq!(row["tier"].as_str().unwrap(), tier(key.1, v), "{row}");
        }
    }
    let expected: BTreeMap<(i64, i64), Option<i64>> = (1..=3)
        .flat_map(|order| {
            (0..12).map(move |c| {
                let version = match (order, c) {
                    (1, 10..) => None,
                    (1, _) | (_, 0..5) => Some(1),
                    _ => Some(2),
                };
                ((order, c), version)
            })
        })
        .collect();
    assert_eq!(versions, expected);
}
