//! The built-in `mask` end to end: `sha256` columns hashed by the host's
//! kernel (utf8 as its bytes, int64 as its decimal text, nulls kept),
//! `redact` columns replaced in the plugin, the other columns and the
//! column order untouched, and a column of another type refused.

use sha2::{Digest, Sha256};

use crate::support::{read_jsonl, run, write_pipeline};

fn masked(salt: &str, value: &str) -> String {
    hex::encode(Sha256::digest(format!("{salt}{value}").as_bytes()))
}

fn pipeline(dir: &std::path::Path, config: &str) -> std::path::PathBuf {
    std::fs::write(
        dir.join("input.csv"),
        "id,name,note,score\n1,ann,a,1.5\n-22,NA,NA,2.5\n3,bob,c,NA\n4,Zürich,NA,4\n5,NA,e,5\n",
    )
    .unwrap();
    write_pipeline(
        dir,
        &format!(
            r#"
[pipeline]
batch_size = 2

[source]
format = "csv"
path = "input.csv"
null_values = ["NA"]

[[stages]]
name = "mask"
kind = "transform"
plugin = "builtin:mask"
config = {config}
"#
        ),
    )
}

#[test]
fn hashed_and_redacted_columns_keep_their_nulls_and_the_rest_is_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let file = pipeline(
        dir.path(),
        r#"{ salt = "s", sha256 = ["id", "name"], redact = ["note"], replacement = "X" }"#,
    );
    run(&file);
    let rows = read_jsonl(&dir.path().join("out.jsonl"));
    let ids = ["1", "-22", "3", "4", "5"];
    let names = [Some("ann"), None, Some("bob"), Some("Zürich"), None];
    let notes = [true, false, true, false, true];
    let scores = [Some(1.5), Some(2.5), None, Some(4.0), Some(5.0)];
    assert_eq!(rows.len(), ids.len());
    for (i, row) in rows.iter().enumerate() {
        let keys: Vec<&str> = row
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            ["id", "name", "note", "score"],
            "row {i}: column order"
        );
        assert_eq!(row["id"], masked("s", ids[i]), "row {i}: id");
        match names[i] {
            Some(name) => assert_eq!(row["name"], masked("s", name), "row {i}: name"),
            None => assert!(row["name"].is_null(), "row {i}: a null name stays null"),
        }
        if notes[i] {
            assert_eq!(row["note"], "X", "row {i}: note");
        } else {
            assert!(row["note"].is_null(), "row {i}: a null note stays null");
        }
        assert_eq!(row["score"].as_f64(), scores[i], "row {i}: score untouched");
    }
}

#[test]
fn a_float_column_is_refused_by_name() {
    for config in [r#"{ sha256 = ["score"] }"#, r#"{ redact = ["score"] }"#] {
        let dir = tempfile::tempdir().unwrap();
        let file = pipeline(dir.path(), config);
        // Refused when the pipeline is loaded (the schema probe), or at
        // the latest when the first batch reaches the stage.
        let error = match weir::pipeline::Pipeline::load(&file) {
            Err(e) => e.to_string(),
            Ok(p) => p
                .run(&weir::pipeline::RunOptions::default())
                .expect_err(config)
                .to_string(),
        };
        assert!(
            error.contains("mask: column `score` must be utf8, binary or int64"),
            "{config}: {error}"
        );
    }
}
