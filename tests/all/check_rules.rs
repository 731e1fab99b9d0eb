//! The built-in `check` validator end to end: every rule fails its rows
//! through the host's compute kernels (`reject`, `reject-each`), so no
//! column crosses into it, and each quarantined row's rule ids and
//! messages are exactly what its rules say, in the rules' order. Edge
//! values the kernels' total order would get wrong are pinned here: a
//! `-0.0` passes `ge = 0` and a `NaN` fails every range.

use std::collections::BTreeMap;

use crate::support::{read_jsonl, run, write_pipeline};

/// Runs `builtin:check` with `rules` (TOML inline tables) over `csv`
/// (read with `schema`, a TOML array) and returns the run's report, the
/// ids written to the sink and, for each quarantined id, its (rule,
/// message).
fn check(
    csv: &str,
    schema: &str,
    rules: &str,
) -> (
    weir::report::RunReport,
    Vec<i64>,
    BTreeMap<i64, (String, String)>,
) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("input.csv"), csv).unwrap();
    let pipeline = write_pipeline(
        dir.path(),
        &format!(
            r#"
[pipeline]
batch_size = 4

[source]
format = "csv"
path = "input.csv"
schema = {schema}

[[stages]]
name = "check"
kind = "validate"
plugin = "builtin:check"
config = {{ rules = [ {rules} ] }}
"#
        ),
    );
    let report = run(&pipeline);
    let mut written: Vec<i64> = read_jsonl(&dir.path().join("out.jsonl"))
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    written.sort_unstable();
    let quarantined = read_jsonl(&dir.path().join("quarantine.jsonl"))
        .into_iter()
        .map(|row| {
            let id = row["record"]["id"].as_i64().unwrap();
            let rule = row["rule"].as_str().unwrap().to_string();
            let message = row["message"].as_str().unwrap().to_string();
            (id, (rule, message))
        })
        .collect();
    (report, written, quarantined)
}

fn failed(pairs: &[(i64, &str, &str)]) -> BTreeMap<i64, (String, String)> {
    pairs
        .iter()
        .map(|(id, rule, message)| (*id, (rule.to_string(), message.to_string())))
        .collect()
}

#[test]
fn range_rules_match_rust_comparisons_and_show_values_exactly() {
    let csv = "id,n,x\n\
               0,5,1.5\n\
               1,9007199254740993,2\n\
               2,,-0.0\n\
               3,-1,NaN\n\
               4,100,\n\
               5,101,-1.5\n\
               6,7,100.25\n";
    let schema = r#"[{ name = "id", type = "int64" }, { name = "n", type = "int64" }, { name = "x", type = "float64" }]"#;
    let rules = r#"{ id = "n_range", column = "n", check = "range", ge = 0, le = 100 },
                   { id = "x_range", column = "x", check = "range", ge = 0, lt = 100 }"#;
    let (report, written, quarantined) = check(csv, schema, rules);
    assert_eq!(written, [0, 2, 4], "nulls and -0.0 pass");
    assert_eq!(
        quarantined,
        failed(&[
            (1, "n_range", "n = 9007199254740993 is not >= 0 and <= 100"),
            (
                3,
                "n_range,x_range",
                "n = -1 is not >= 0 and <= 100; x = NaN is not >= 0 and < 100"
            ),
            (
                5,
                "n_range,x_range",
                "n = 101 is not >= 0 and <= 100; x = -1.5 is not >= 0 and < 100"
            ),
            (6, "x_range", "x = 100.25 is not >= 0 and < 100"),
        ])
    );
    assert_eq!(report.records.quarantined, 4);
    assert_eq!(report.stages[0].bytes_sent, 0, "no column crossed");
}

#[test]
fn text_rules_fail_through_kernels_in_rule_order() {
    let csv = "id,code,tail,other\n\
               0,AA,N123,x\n\
               1,ZZ,X99,\n\
               2,,N1,y\n\
               3,B6,N12345678,z\n\
               4,AA,,w\n";
    let schema = r#"[{ name = "id", type = "int64" }, { name = "code", type = "utf8" },
                     { name = "tail", type = "utf8" }, { name = "other", type = "utf8" }]"#;
    let rules = r#"{ id = "known", column = "code", check = "allowed", values = ["AA", "B6"] },
                   { id = "shape", column = "tail", check = "regex", pattern = "^N[0-9]+$" },
                   { id = "short", column = "tail", check = "length", min = 3, max = 6 },
                   { id = "code_set", column = "code", check = "not_null_when", other = "other" },
                   { id = "tail_set", column = "tail", check = "not_null" }"#;
    let (report, written, quarantined) = check(csv, schema, rules);
    assert_eq!(written, [0]);
    assert_eq!(
        quarantined,
        failed(&[
            (
                1,
                "known,shape",
                "code = `ZZ` is not one of the allowed values; tail = `X99` does not match ^N[0-9]+$"
            ),
            (
                2,
                "short,code_set",
                "tail has 2 characters, outside 3..=6; code is null although other is not"
            ),
            (3, "short", "tail has 9 characters, outside 3..=6"),
            (4, "tail_set", "tail is null"),
        ])
    );
    assert_eq!(report.stages[0].bytes_sent, 0, "no column crossed");
}

#[test]
fn numbers_in_allowed_lists_and_dates_in_ranges_are_checked_in_the_plugin() {
    let csv = "id,carrier_no,day\n\
               0,1,2024-01-02\n\
               1,3,2023-12-31\n\
               2,2,\n";
    let schema = r#"[{ name = "id", type = "int64" }, { name = "carrier_no", type = "int64" },
                     { name = "day", type = "date32" }]"#;
    // 2024-01-01 is day 19723 of the Unix epoch.
    let rules = r#"{ id = "known", column = "carrier_no", check = "allowed", values = [1, 2] },
                   { id = "recent", column = "day", check = "range", ge = 19723 }"#;
    let (_, written, quarantined) = check(csv, schema, rules);
    assert_eq!(written, [0, 2]);
    assert_eq!(
        quarantined,
        failed(&[(
            1,
            "known,recent",
            "carrier_no = `3` is not one of the allowed values; day = 19722 is not >= 19723"
        )])
    );
}
