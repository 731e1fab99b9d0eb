//! What a new user meets on unfamiliar data (issue 12): columns matched
//! by name, plugin configs checked at load, runs that write nothing, empty
//! outputs that other tools can read, and error messages that point at the
//! file line.

use std::path::Path;

use weir::cli::run as weir_cli;
use weir::pipeline::{Pipeline, RunOptions};

use crate::support::{read_jsonl, write_pipeline};

fn weir(args: &[&str]) -> u8 {
    weir_cli(
        ["weir", "--log", "off"]
            .into_iter()
            .chain(args.iter().copied()),
    )
}

/// A pipeline over the CSV files matching `pattern` with no stage and
/// `source_extra` appended to `[source]`.
fn csv_pipeline(dir: &Path, pattern: &str, source_extra: &str) -> std::path::PathBuf {
    write_pipeline(
        dir,
        &format!(
            "[pipeline]\nworkers = 1\n\n[source]\nformat = \"csv\"\npath = {pattern:?}\n{source_extra}\n"
        ),
    )
}

/// Runs `file` after removing the outputs of an earlier run in its
/// directory (`out.jsonl`, `quarantine.jsonl`).
fn run_file(file: &Path) -> anyhow::Result<weir::report::RunReport> {
    let dir = file.parent().unwrap();
    for output in ["out.jsonl", "quarantine.jsonl"] {
        let _ = std::fs::remove_file(dir.join(output));
    }
    let pipeline = Pipeline::load(file).map_err(|e| anyhow::anyhow!("{e}"))?;
    pipeline.run(&RunOptions::default())
}

#[test]
fn csv_files_with_reordered_columns_are_matched_by_name() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.csv"), "id,name,score\n1,ann,10\n").unwrap();
    std::fs::write(dir.path().join("b.csv"), "score,id,name\n20,2,bob\n").unwrap();
    let file = csv_pipeline(dir.path(), "*.csv", "");
    let report = run_file(&file).unwrap();
    assert_eq!(report.records.written, 2);
    let rows = read_jsonl(&dir.path().join("out.jsonl"));
    assert_eq!(rows[1]["id"], 2, "{rows:?}");
    assert_eq!(rows[1]["name"], "bob", "{rows:?}");
    assert_eq!(rows[1]["score"], 20, "{rows:?}");
}

#[test]
fn a_csv_header_lacking_or_adding_a_column_is_an_error_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.csv"), "id,name,score\n1,ann,10\n").unwrap();
    std::fs::write(dir.path().join("b.csv"), "id,nmae,score\n2,bob,20\n").unwrap();
    let file = csv_pipeline(dir.path(), "*.csv", "");
    let error = format!("{:#}", run_file(&file).unwrap_err());
    assert!(error.contains("b.csv"), "{error}");
    assert!(error.contains("`name`"), "{error}");

    std::fs::write(dir.path().join("b.csv"), "id,score,extra\n2,20,x\n").unwrap();
    let error = format!("{:#}", run_file(&file).unwrap_err());
    assert!(error.contains("`name`"), "{error}");

    // Allowed: the missing column is null, the extra one skipped.
    let file = csv_pipeline(
        dir.path(),
        "*.csv",
        "missing_columns = \"null\"\nextra_columns = \"ignore\"",
    );
    let report = run_file(&file).unwrap();
    assert_eq!(report.records.written, 2);
    let rows = read_jsonl(&dir.path().join("out.jsonl"));
    assert_eq!(rows[1]["name"], serde_json::Value::Null, "{rows:?}");
    assert_eq!(rows[1]["score"], 20, "{rows:?}");
    assert!(rows[1].get("extra").is_none(), "{rows:?}");
}

#[test]
fn a_misspelled_builtin_config_key_fails_check_and_run_with_the_key_and_exit_3() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.csv"), "id,month\n1,5\n2,13\n").unwrap();
    for (plugin, kind, config) in [
        (
            "builtin:check",
            "validate",
            "chek = [{ id = \"m\", column = \"month\", check = \"range\", ge = 1, le = 12 }]",
        ),
        ("builtin:select", "transform", "kep = [\"id\"]"),
    ] {
        let file = write_pipeline(
            dir.path(),
            &format!(
                "[source]\nformat = \"csv\"\npath = \"in.csv\"\n\n[[stages]]\nname = \"s\"\nkind = \"{kind}\"\nplugin = \"{plugin}\"\nconfig = {{ {config} }}\n"
            ),
        );
        let path = file.to_str().unwrap();
        assert_eq!(weir(&["check", path]), 3, "{plugin}");
        assert_eq!(weir(&["run", path]), 3, "{plugin}");
        let errors = Pipeline::load(&file).unwrap_err();
        let problem = errors.0.iter().find(|e| e.key == "stages[0].config");
        assert!(problem.is_some(), "{plugin}: {errors}");
        assert!(!dir.path().join("out.jsonl").exists(), "nothing ran");
    }
}

#[test]
fn a_rule_on_a_column_the_source_lacks_fails_check() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.csv"), "id,month\n1,5\n").unwrap();
    let file = write_pipeline(
        dir.path(),
        "[source]\nformat = \"csv\"\npath = \"in.csv\"\n\n[[stages]]\nname = \"v\"\nkind = \"validate\"\nplugin = \"builtin:check\"\nconfig = { rules = [{ id = \"r\", column = \"mnth\", check = \"not_null\" }] }\n",
    );
    let errors = Pipeline::load(&file).unwrap_err();
    let problem = errors
        .0
        .iter()
        .find(|e| e.key == "stages[0]")
        .unwrap_or_else(|| panic!("{errors}"));
    assert!(problem.message.contains("mnth"), "{}", problem.message);
    assert_eq!(weir(&["check", file.to_str().unwrap()]), 3);
}

#[test]
fn max_quarantine_fraction_fails_a_run_that_quarantines_too_much_but_keeps_the_quarantine() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.csv"), "id,month\n1,5\n2,13\n3,14\n").unwrap();
    let stages = "[[stages]]\nname = \"v\"\nkind = \"validate\"\nplugin = \"builtin:check\"\nconfig = { rules = [{ id = \"month\", column = \"month\", check = \"range\", ge = 1, le = 12 }] }\n";
    let file = write_pipeline(
        dir.path(),
        &format!(
            "[pipeline]\nmax_quarantine_fraction = 0.5\n\n[source]\nformat = \"csv\"\npath = \"in.csv\"\n\n{stages}"
        ),
    );
    let error = format!("{:#}", run_file(&file).unwrap_err());
    assert!(error.contains("2 of 3 records"), "{error}");
    assert!(error.contains("stage `v`"), "{error}");
    assert_eq!(weir(&["run", file.to_str().unwrap()]), 1);
    assert!(
        !dir.path().join("out.jsonl").exists(),
        "no output committed"
    );
    assert_eq!(read_jsonl(&dir.path().join("quarantine.jsonl")).len(), 2);

    // Under the threshold the run succeeds.
    let file = write_pipeline(
        dir.path(),
        &format!(
            "[pipeline]\nmax_quarantine_fraction = 0.7\n\n[source]\nformat = \"csv\"\npath = \"in.csv\"\n\n{stages}"
        ),
    );
    assert_eq!(run_file(&file).unwrap().records.written, 1);

    // Out of range is a config error.
    let file = write_pipeline(
        dir.path(),
        "[pipeline]\nmax_quarantine_fraction = 5\n\n[source]\nformat = \"csv\"\npath = \"in.csv\"\n",
    );
    let errors = Pipeline::load(&file).unwrap_err();
    assert!(
        errors
            .0
            .iter()
            .any(|e| e.key == "pipeline.max_quarantine_fraction"),
        "{errors}"
    );
}

#[test]
fn a_run_that_writes_nothing_still_commits_readable_files_with_the_schema() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.csv"), "id,month\n1,13\n2,14\n").unwrap();
    for (format, path) in [("parquet", "out.parquet"), ("csv", "out.csv")] {
        let text = format!(
            "[source]\nformat = \"csv\"\npath = \"in.csv\"\n\n[[stages]]\nname = \"v\"\nkind = \"validate\"\nplugin = \"builtin:check\"\nconfig = {{ rules = [{{ id = \"month\", column = \"month\", check = \"range\", ge = 1, le = 12 }}] }}\n\n[[stages]]\nname = \"t\"\nkind = \"transform\"\nplugin = \"builtin:select\"\nconfig = {{ keep = [\"month\"] }}\n\n[sink]\nformat = \"{format}\"\npath = \"{path}\"\nmode = \"overwrite\"\n\n[quarantine]\nformat = \"jsonl\"\npath = \"q.jsonl\"\n"
        );
        let file = dir.path().join("p.toml");
        std::fs::write(&file, text).unwrap();
        let report = run_file(&file).unwrap();
        assert_eq!((report.records.written, report.records.quarantined), (0, 2));
        let warning = report.nothing_written_warning().unwrap();
        assert!(
            warning.contains("stage `v`") && warning.contains("max_quarantine_fraction"),
            "{warning}"
        );
        let output = dir.path().join(path);
        if format == "parquet" {
            let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
                std::fs::File::open(&output).unwrap(),
            )
            .unwrap();
            let names: Vec<String> = reader
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect();
            assert_eq!(names, ["month"], "the schema as transformed by the stages");
        } else {
            assert_eq!(std::fs::read_to_string(&output).unwrap().trim(), "month");
        }
    }
}

#[test]
fn a_header_only_csv_gives_a_parquet_file_with_its_columns() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.csv"), "id,name\n").unwrap();
    let text = "[source]\nformat = \"csv\"\npath = \"in.csv\"\n\n[sink]\nformat = \"parquet\"\npath = \"out.parquet\"\n\n[quarantine]\nformat = \"jsonl\"\npath = \"q.jsonl\"\n";
    let file = dir.path().join("p.toml");
    std::fs::write(&file, text).unwrap();
    let report = run_file(&file).unwrap();
    assert_eq!(report.records.read, 0);
    assert!(
        report
            .nothing_written_warning()
            .unwrap()
            .contains("the input has no records")
    );
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        std::fs::File::open(dir.path().join("out.parquet")).unwrap(),
    )
    .unwrap();
    assert_eq!(reader.schema().fields().len(), 2);
}

#[test]
fn csv_parse_errors_give_the_file_line_and_name_the_column() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.csv"), "id,score\n1,10\n2,ten\n3,30\n").unwrap();
    let file = csv_pipeline(
        dir.path(),
        "in.csv",
        "schema = [{ name = \"id\", type = \"int64\" }, { name = \"score\", type = \"int64\" }]",
    );
    let report = run_file(&file).unwrap();
    assert_eq!((report.records.written, report.records.quarantined), (2, 1));
    let quarantine = read_jsonl(&dir.path().join("quarantine.jsonl"));
    let message = quarantine[0]["message"].as_str().unwrap();
    assert!(message.starts_with("line 3 (record 2)"), "{message}");
    assert!(message.contains("column `score`"), "{message}");

    // A record with a wrong field count names the line and says "fields".
    std::fs::write(dir.path().join("in.csv"), "id,score\n1,10\n2,20,x\n").unwrap();
    let error = format!("{:#}", run_file(&file).unwrap_err());
    assert!(error.contains("line 3 (record 2) has 3 fields"), "{error}");
}

#[test]
fn check_reports_every_unknown_key_at_once_in_one_path_style() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.csv"), "id,month\n1,5\n").unwrap();
    let file = write_pipeline(
        dir.path(),
        "[pipeline]\nbach_size = 10\n\n[source]\nformat = \"csv\"\npath = \"in.csv\"\ndelimeter = \";\"\n\n[[stages]]\nname = \"a\"\nkind = \"transform\"\nplugin = \"builtin:select\"\n\n[[stages]]\nname = \"b\"\nkind = \"transform\"\nplugin = \"builtin:select\"\nconfg = { keep = [\"id\"] }\n",
    );
    let errors = Pipeline::load(&file).unwrap_err();
    let keys: Vec<&str> = errors.0.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        ["pipeline.bach_size", "source.delimeter", "stages[1].confg"],
        "{errors}"
    );
    assert_eq!(weir(&["check", file.to_str().unwrap()]), 3);
}

#[test]
fn check_given_a_data_file_says_it_takes_a_pipeline_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("flights.csv");
    std::fs::write(&data, "id\n1\n").unwrap();
    let errors = Pipeline::load(&data).unwrap_err();
    let message = errors.to_string();
    assert!(message.contains("data file"), "{message}");
    assert!(message.contains("[source]"), "{message}");
    assert_eq!(weir(&["check", data.to_str().unwrap()]), 3);
}

#[test]
fn plugin_new_takes_a_path_and_names_the_plugin_after_its_last_component() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let code = weir(&[
        "plugin",
        "new",
        "../plugins/late-only",
        "--lang",
        "python",
        "--kind",
        "validate",
        "--dir",
        work.to_str().unwrap(),
    ]);
    assert_eq!(code, 0);
    let manifest =
        std::fs::read_to_string(dir.path().join("plugins/late-only/weir-plugin.toml")).unwrap();
    assert!(manifest.contains("name = \"late-only\""), "{manifest}");
}

#[test]
fn show_decodes_partition_values_and_reads_folders_mixing_schemas() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("in.csv"),
        "id,day\n1,2012/01/01\n2,\n3,a=b%c\n",
    )
    .unwrap();
    let text = "[source]\nformat = \"csv\"\npath = \"in.csv\"\n\n[sink]\nformat = \"parquet\"\npath = \"out\"\npartition_by = [\"day\"]\n\n[quarantine]\nformat = \"parquet\"\npath = \"q.parquet\"\n";
    let file = dir.path().join("p.toml");
    std::fs::write(&file, text).unwrap();
    let report = run_file(&file).unwrap();
    assert_eq!(report.records.written, 3);
    let out = dir.path().join("out");
    // A folder mixing outputs and a quarantine file.
    std::fs::copy(dir.path().join("q.parquet"), out.join("q.parquet")).unwrap();
    let files = weir::source::read_output_files(&out, usize::MAX).unwrap();
    let mut days: Vec<Option<String>> = Vec::new();
    for (_, batches) in &files {
        for batch in batches {
            if let Ok(column) = batch.schema().index_of("day") {
                let values = arrow::array::cast::as_string_array(batch.column(column));
                days.extend(values.iter().map(|v| v.map(str::to_string)));
            }
        }
    }
    days.sort();
    assert_eq!(
        days,
        [
            None,
            Some("2012/01/01".to_string()),
            Some("a=b%c".to_string())
        ]
    );
    assert_eq!(weir(&["show", out.to_str().unwrap()]), 0);
}

#[test]
fn json_lines_columns_keep_their_written_order_in_output_and_quarantine() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("in.jsonl"),
        "{\"zeta\": 1, \"alpha\": \"a\", \"mid\": 2.5}\n{\"zeta\": 2, \"alpha\": \"b\", \"mid\": 1.5}\n",
    )
    .unwrap();
    let file = write_pipeline(
        dir.path(),
        "[source]\nformat = \"jsonl\"\npath = \"in.jsonl\"\n\n[[stages]]\nname = \"v\"\nkind = \"validate\"\nplugin = \"builtin:check\"\nconfig = { rules = [{ id = \"small\", column = \"zeta\", check = \"range\", le = 1 }] }\n",
    );
    run_file(&file).unwrap();
    let output = std::fs::read_to_string(dir.path().join("out.jsonl")).unwrap();
    let first = output.lines().next().unwrap();
    assert!(
        first.find("zeta") < first.find("alpha") && first.find("alpha") < first.find("mid"),
        "{first}"
    );
    let quarantine = std::fs::read_to_string(dir.path().join("quarantine.jsonl")).unwrap();
    let record = &quarantine[quarantine.find("\"record\"").unwrap()..];
    assert!(
        record.find("zeta") < record.find("alpha") && record.find("alpha") < record.find("mid"),
        "{record}"
    );
}

#[test]
fn a_json_array_file_is_a_source_and_json_lines_starting_with_a_bracket_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let array: String = format!(
        "[\n{}\n]",
        (0..2000)
            .map(|i| format!("  {{\"id\": {i}, \"name\": \"n{i}\"}}"))
            .collect::<Vec<_>>()
            .join(",\n")
    );
    std::fs::write(dir.path().join("in.json"), &array).unwrap();
    let file = write_pipeline(
        dir.path(),
        "[source]\nformat = \"json\"\npath = \"in.json\"\n",
    );
    let report = run_file(&file).unwrap();
    assert_eq!(report.records.written, 2000);
    let rows = read_jsonl(&dir.path().join("out.jsonl"));
    assert_eq!(rows[1999]["name"], "n1999");

    // The same text read as JSON Lines: one clear, short error.
    std::fs::write(dir.path().join("in.jsonl"), &array).unwrap();
    let file = write_pipeline(
        dir.path(),
        "[source]\nformat = \"jsonl\"\npath = \"in.jsonl\"\nschema = [{ name = \"id\", type = \"int64\" }]\n",
    );
    let error = format!("{:#}", run_file(&file).unwrap_err());
    assert!(error.contains("format = \"json\""), "{error}");
    assert!(error.len() < 1000, "{} bytes: {error}", error.len());
}

#[test]
fn unknown_json_fields_are_counted_and_can_be_quarantined_or_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("in.jsonl"),
        "{\"id\": 1}\n{\"id\": 2, \"extra\": true, \"more\": 1}\n",
    )
    .unwrap();
    let pipeline = |policy: &str| {
        write_pipeline(
            dir.path(),
            &format!(
                "[source]\nformat = \"jsonl\"\npath = \"in.jsonl\"\nschema = [{{ name = \"id\", type = \"int64\" }}]\n{policy}\n"
            ),
        )
    };
    let report = run_file(&pipeline("")).unwrap();
    assert_eq!(
        (report.records.written, report.records.unknown_fields),
        (2, 2)
    );

    let report = run_file(&pipeline("unknown_fields = \"quarantine\"")).unwrap();
    assert_eq!((report.records.written, report.records.quarantined), (1, 1));
    let quarantine = read_jsonl(&dir.path().join("quarantine.jsonl"));
    let message = quarantine[0]["message"].as_str().unwrap();
    assert!(
        message.contains("line 2") && message.contains("`extra`"),
        "{message}"
    );

    let error = format!(
        "{:#}",
        run_file(&pipeline("unknown_fields = \"error\"")).unwrap_err()
    );
    assert!(
        error.contains("line 2") && error.contains("`extra`"),
        "{error}"
    );
}

#[test]
fn json_array_body_errors_keep_the_original_text_and_the_element_index() {
    use axum::http::StatusCode;
    let dir = tempfile::tempdir().unwrap();
    crate::serve::write_pipeline(dir.path(), "");
    let service = crate::serve::write_service(dir.path(), "", "linger_ms = 5");
    let running = crate::serve::Running::start(&service);
    let body = "[{\"id\": 1, \"action\": \"ok\", \"value\": 1},\n {\"id\": \"two\",   \"action\": \"ok\", \"value\": 2},\n {\"id\": 3, \"action\": \"ok\", \"value\": 3, \"note\": \"x\"}]";
    let (status, ack) = running.oneshot(crate::serve::post(
        "/v1/pipelines/events/records",
        "application/json",
        body,
    ));
    assert_eq!(status, StatusCode::OK, "{ack}");
    assert_eq!(
        (ack["written"].as_u64(), ack["quarantined"].as_u64()),
        (Some(2), Some(1)),
        "{ack}"
    );
    assert_eq!(ack["unknown_fields"], 1, "{ack}");
    running.shutdown().unwrap();
    let quarantined = crate::serve::read_parts(&dir.path().join("quarantine"));
    let row = &quarantined[0];
    let text = row["record"]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("{row}"));
    assert_eq!(
        text, "{\"id\": \"two\",   \"action\": \"ok\", \"value\": 2}",
        "the client's own text"
    );
    assert_eq!(row["record"]["record_number"], 1, "{row}");
    assert!(
        row["message"].as_str().unwrap().starts_with("element 1"),
        "{row}"
    );
}

#[test]
fn csv_bodies_are_matched_by_header_name() {
    use axum::http::StatusCode;
    let dir = tempfile::tempdir().unwrap();
    crate::serve::write_pipeline(dir.path(), "");
    let service = crate::serve::write_service(dir.path(), "", "linger_ms = 5");
    let running = crate::serve::Running::start(&service);
    let path = "/v1/pipelines/events/records";
    let (status, ack) = running.oneshot(crate::serve::post(
        path,
        "text/csv",
        "value,action,id\n5,ok,7\n",
    ));
    assert_eq!(status, StatusCode::OK, "{ack}");
    let (status, error) = running.oneshot(crate::serve::post(
        path,
        "text/csv",
        "id,act,value\n8,ok,1\n",
    ));
    assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");
    assert!(
        error["error"].as_str().unwrap().contains("`action`"),
        "{error}"
    );
    running.shutdown().unwrap();
    let rows = crate::serve::read_parts(&dir.path().join("out"));
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0]["id"].as_i64(), rows[0]["value"].as_i64()),
        (Some(7), Some(5))
    );
}

#[test]
fn dates_in_other_formats_are_inferred_or_declared_and_off_format_values_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("in.csv"),
        "id,day,at\n1,2012/01/31,31.01.2012 13:45\n2,2013/12/01,01.12.2013 00:00\n",
    )
    .unwrap();
    let text = "[source]\nformat = \"csv\"\npath = \"in.csv\"\n\n[sink]\nformat = \"parquet\"\npath = \"out.parquet\"\n\n[quarantine]\nformat = \"jsonl\"\npath = \"q.jsonl\"\n";
    let file = dir.path().join("p.toml");
    std::fs::write(&file, text).unwrap();
    let report = run_file(&file).unwrap();
    assert_eq!((report.records.written, report.records.quarantined), (2, 0));
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        std::fs::File::open(dir.path().join("out.parquet")).unwrap(),
    )
    .unwrap();
    let schema = reader.schema().clone();
    assert_eq!(
        schema.field_with_name("day").unwrap().data_type(),
        &arrow::datatypes::DataType::Date32,
        "inferred from 2012/01/31"
    );
    assert!(matches!(
        schema.field_with_name("at").unwrap().data_type(),
        arrow::datatypes::DataType::Timestamp(..)
    ));

    // Declared, with a value off its format: that record alone is quarantined.
    std::fs::write(
        dir.path().join("in.csv"),
        "id,day\n1,31.01.2012\n2,2012-02-01\n3,01.03.2012\n",
    )
    .unwrap();
    let file = csv_pipeline(
        dir.path(),
        "in.csv",
        "schema = [{ name = \"id\", type = \"int64\" }, { name = \"day\", type = \"date32\", format = \"%d.%m.%Y\" }]",
    );
    let report = run_file(&file).unwrap();
    assert_eq!((report.records.written, report.records.quarantined), (2, 1));
    let rows = read_jsonl(&dir.path().join("out.jsonl"));
    assert_eq!(rows[0]["day"], "2012-01-31", "{rows:?}");
    let quarantine = read_jsonl(&dir.path().join("quarantine.jsonl"));
    let message = quarantine[0]["message"].as_str().unwrap();
    assert!(
        message.contains("`2012-02-01`") && message.contains("%d.%m.%Y"),
        "{message}"
    );
    assert!(message.starts_with("line 3 (record 2)"), "{message}");

    // A format on a column that is not a date is a config error.
    let file = csv_pipeline(
        dir.path(),
        "in.csv",
        "schema = [{ name = \"id\", type = \"int64\", format = \"%Y\" }, { name = \"day\", type = \"utf8\" }]",
    );
    let errors = Pipeline::load(&file).unwrap_err();
    assert!(
        errors.0.iter().any(|e| e.key == "source.schema[0].format"),
        "{errors}"
    );
}
