//! Plugins in Python and JavaScript: the SDKs carry every data type with
//! nulls both ways, errors reach the host with their message, the limits
//! hold as for Rust components, `weir plugin new` projects build and work
//! in every language × kind, and the flights chain mixing Rust, JavaScript
//! and Python writes exactly what the all-Rust chain writes.
//!
//! The components are built from source by `weir plugin build`, which
//! needs the guest tools (`scripts/install-guest-tools`).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use arrow::array::{Array, AsArray, RecordBatch, StringArray};
use arrow::datatypes::Int64Type;
use weir::columnar::{from_wit, to_wit};
use weir::lent::Lendable;
use weir::plugin::{Limits, Plugin, PluginKind};

use crate::hostile::contained;
use crate::support::{output_rows, read_jsonl, run};

/// The probe test component (`tests/components/LANG/probe`), built once.
fn probe_path(language: &str) -> PathBuf {
    weir_tests::built_plugin(&format!("tests/components/{language}/probe"))
}

fn probe(language: &str) -> &'static Plugin {
    static PYTHON: OnceLock<Plugin> = OnceLock::new();
    static JS: OnceLock<Plugin> = OnceLock::new();
    let cell = match language {
        "python" => &PYTHON,
        "js" => &JS,
        other => panic!("no probe for {other}"),
    };
    cell.get_or_init(|| load(&probe_path(language), PluginKind::Transform))
}

fn load(path: &Path, kind: PluginKind) -> Plugin {
    let bytes = std::fs::read(path).unwrap();
    Plugin::from_bytes(&path.display().to_string(), &bytes, Some(kind))
        .unwrap_or_else(|e| panic!("{e:#}"))
}

fn transform(plugin: &Plugin, config: serde_json::Value, batch: &RecordBatch) -> RecordBatch {
    let mut instance = plugin
        .instantiate("probe", config.to_string().into(), Limits::default())
        .unwrap();
    let sent = weir::splice::project(batch, instance.reads());
    let (out, _) = instance
        .transform(&to_wit(&sent).unwrap())
        .unwrap_or_else(|e| panic!("{e}"));
    weir::splice::apply(batch, out).unwrap().batch
}

fn round_trips_every_type_with_nulls(language: &str) {
    let plugin = probe(language);
    for mode in ["columns", "rows"] {
        let config = serde_json::json!({ "mode": mode });
        for batch in [
            weir_tests::every_type(1000),
            weir_tests::every_type(0),
            weir_tests::every_type(100).slice(13, 50),
        ] {
            assert_eq!(
                transform(plugin, config.clone(), &batch),
                batch,
                "{language}, mode {mode}, {} rows",
                batch.num_rows()
            );
        }
    }
}

/// `derive` mode: int64 doubled, utf8 upper-cased, a boolean "is null"
/// column, and only the rows whose int64 is null or even.
fn derives_columns_from_native_values(language: &str) {
    let batch = weir_tests::every_type(200);
    let all_columns = transform(
        probe(language),
        serde_json::json!({ "mode": "derive" }),
        &batch,
    );
    // Declaring the two columns it reads: only those cross, and the SDK
    // answers with a splice (a row selection and the three new columns)
    // that the host applies to every column.
    let config = serde_json::json!({ "mode": "derive", "reads": ["int64", "utf8"] });
    let mut instance = probe(language)
        .instantiate("probe", config.to_string().into(), Limits::default())
        .unwrap();
    assert_eq!(
        instance.reads(),
        Some(&["int64".to_string(), "utf8".to_string()][..])
    );
    let sent = weir::splice::project(&batch, instance.reads());
    assert_eq!(sent.num_columns(), 2);
    let (output, _) = instance
        .transform(&to_wit(&sent).unwrap())
        .unwrap_or_else(|e| panic!("{e}"));
    match &output {
        weir::plugin::TransformOutput::Splice { splice, .. } => {
            let names: Vec<&str> = splice
                .columns
                .iter()
                .map(|c| c.field.name.as_str())
                .collect();
            assert_eq!(names, ["int64_doubled", "utf8_upper", "is_null"]);
            assert!(splice.selection.is_some() && splice.drop.is_empty());
        }
        weir::plugin::TransformOutput::Batch(_) => {
            panic!("{language}: a whole batch, not a splice")
        }
    }
    let out = weir::splice::apply(&batch, output).unwrap().batch;
    assert_eq!(out, all_columns, "{language}: the same batch either way");
    let ints = batch
        .column_by_name("int64")
        .unwrap()
        .as_primitive::<Int64Type>();
    let texts = batch.column_by_name("utf8").unwrap().as_string::<i32>();
    let kept: Vec<usize> = (0..batch.num_rows())
        .filter(|&i| ints.is_null(i) || ints.value(i) % 2 == 0)
        .collect();
    assert_eq!(out.num_rows(), kept.len());
    let doubled = out
        .column_by_name("int64_doubled")
        .unwrap()
        .as_primitive::<Int64Type>();
    let upper = out.column_by_name("utf8_upper").unwrap().as_string::<i32>();
    let is_null = out.column_by_name("is_null").unwrap().as_boolean();
    for (row, &i) in kept.iter().enumerate() {
        let expected = (!ints.is_null(i)).then(|| ints.value(i) * 2);
        assert_eq!(
            (!doubled.is_null(row)).then(|| doubled.value(row)),
            expected
        );
        let expected = (!texts.is_null(i)).then(|| texts.value(i).to_uppercase());
        assert_eq!(
            (!upper.is_null(row)).then(|| upper.value(row).to_string()),
            expected
        );
        assert_eq!(is_null.value(row), ints.is_null(i));
    }
}

/// `kernels` mode: columns computed with the host's compute kernels through
/// the SDK's wrappers (operators, scalars on either side, if-else, a kernel
/// mask as the row filter), with one column sent; the same expressions through
/// `weir::kernels` directly must give the same columns.
fn computes_with_host_kernels(language: &str) {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, BooleanArray, Int64Array};
    use weir::kernels::{self as k, Value};

    let batch = weir_tests::every_type(300);
    // Only int64 is sent (the plugin checks `to_list` against it); the
    // kernels reach the other columns on the host.
    let config = serde_json::json!({ "mode": "kernels", "reads": ["int64"] });
    let mut instance = probe(language)
        .instantiate("probe", config.to_string().into(), Limits::default())
        .unwrap();
    let sent = weir::splice::project(&batch, instance.reads());
    assert_eq!(sent.num_columns(), 1, "{language}: only int64 is sent");
    let (output, _) = instance
        .transform_with(&batch, &Lendable::new(&sent).unwrap().lend())
        .unwrap_or_else(|e| panic!("{language}: {e}"));
    let out = weir::splice::apply(&batch, output).unwrap().batch;

    let col = |name: &str| Value::column(batch.column_by_name(name).unwrap().clone());
    let int = |v: i64| Value::scalar(Arc::new(Int64Array::from(vec![v])) as ArrayRef);
    let float =
        |v: f64| Value::scalar(Arc::new(arrow::array::Float64Array::from(vec![v])) as ArrayRef);
    let text = |v: &str| Value::scalar(Arc::new(StringArray::from(vec![v])) as ArrayRef);
    let (i, f, s) = (col("int64"), col("float64"), col("utf8"));
    let positive = k::compare(&i, k::Cmp::Gt, &int(0)).unwrap();
    let half = k::arith(&i, k::Arith::Mul, &float(0.5)).unwrap();
    let mix = k::arith(
        &k::arith(&int(1), k::Arith::Sub, &half).unwrap(),
        k::Arith::Add,
        &f,
    )
    .unwrap();
    let big = k::compare(&f, k::Cmp::Gt, &float(100.5)).unwrap();
    let either = k::logic(&col("boolean"), k::Logic::Or, &big).unwrap();
    let text_valid = k::invert(&k::is_null(&s)).unwrap();
    let expected: Vec<(&str, Value)> = vec![
        ("k_gt", positive.clone()),
        ("k_mix", mix),
        (
            "k_logic",
            k::logic(&either, k::Logic::And, &text_valid).unwrap(),
        ),
        ("k_upper", k::text(&s, k::Text::Uppercase).unwrap()),
        ("k_len", k::text(&s, k::Text::Length).unwrap()),
        ("k_fill", k::fill_null(&i, &int(-1)).unwrap()),
        ("k_sha", k::hash(&s, k::Hash::Sha256Hex, b"salt").unwrap()),
        ("k_if", k::if_else(&positive, &text("pos"), &s).unwrap()),
        (
            "k_class",
            k::lookup(
                &k::bucket(&f, &[10.0, 50.5]).unwrap(),
                &["low".into(), "mid".into(), "high".into()],
            )
            .unwrap(),
        ),
    ];
    let keep: BooleanArray = batch
        .column_by_name("boolean")
        .unwrap()
        .as_boolean()
        .iter()
        .map(|v| Some(v == Some(true)))
        .collect();
    assert_eq!(out.num_rows(), keep.true_count(), "{language}: rows kept");
    for (name, value) in expected {
        let want = arrow::compute::filter(value.array.as_ref(), &keep).unwrap();
        assert_eq!(
            out.column_by_name(name).unwrap().as_ref(),
            want.as_ref(),
            "{language}: {name}"
        );
    }
}

#[test]
fn python_sdk_computes_with_host_kernels() {
    computes_with_host_kernels("python");
}

#[test]
fn js_sdk_computes_with_host_kernels() {
    computes_with_host_kernels("js");
}

#[test]
fn python_sdk_rejects_rows_with_host_kernels() {
    rejects_with_host_kernels("python");
}

#[test]
fn js_sdk_rejects_rows_with_host_kernels() {
    rejects_with_host_kernels("js");
}

/// The `rejector` validator (`tests/components/LANG/rejector`) fails rows
/// through `reject_each`/`rejectEach` and `reject` only, and reads nothing.
fn rejects_with_host_kernels(language: &str) {
    use std::sync::Arc;

    use arrow::array::Float64Array;
    use arrow::datatypes::{DataType, Field, Schema};

    let path = weir_tests::built_plugin(&format!("tests/components/{language}/rejector"));
    let plugin = load(&path, PluginKind::Validate);
    let mut instance = plugin
        .instantiate("rejector", "{}".to_string().into(), Limits::default())
        .unwrap();
    assert_eq!(
        instance.reads(),
        Some(&[][..]),
        "{language}: it reads nothing"
    );
    let input = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new("x", DataType::Float64, true)])),
        vec![Arc::new(Float64Array::from(vec![
            Some(1.0),
            Some(-2.5),
            None,
            Some(0.0),
            Some(-1e-7),
        ]))],
    )
    .unwrap();
    let sent = weir::splice::project(&input, instance.reads());
    let (verdicts, _) = instance
        .validate_with(&input, &Lendable::new(&sent).unwrap().lend())
        .unwrap_or_else(|e| panic!("{language}: {e}"));
    let got: Vec<(u32, &str, &str)> = verdicts
        .iter()
        .map(|v| (v.row, &*v.rule, &*v.message))
        .collect();
    assert_eq!(
        got,
        [
            (1, "negative", "x = -2.5 is below 0"),
            (4, "negative", "x = -0.0000001 is below 0"),
            (3, "zero", "x is zero"),
        ],
        "{language}"
    );
}

fn exception_is_a_plugin_error_with_the_message(language: &str, expected: &[&str]) {
    let path = probe_path(language);
    let message = contained(path.to_str().unwrap(), "raise", "", "plugin_error");
    for part in expected {
        assert!(message.contains(part), "{part:?} in {message}");
    }
    let message = contained(path.to_str().unwrap(), "invalid", "", "plugin_error");
    assert!(
        message.contains("invalid-input") && message.contains("asked for invalid-input"),
        "{message}"
    );
}

fn limits_hold(language: &str) {
    let path = probe_path(language);
    let path = path.to_str().unwrap();
    // The interpreters start with tens of MiB of memory and spend millions
    // of fuel units on an ordinary 2-row batch; the limits leave room for
    // that and still stop the misbehaving batch.
    let message = contained(
        path,
        "loop",
        "fuel_per_batch = 2_000_000_000\ntimeout_ms = 600_000",
        "fuel_exhausted",
    );
    assert!(message.contains("2000000000 fuel units"), "{message}");
    let message = contained(
        path,
        "loop",
        "fuel_per_batch = 1_000_000_000_000_000\ntimeout_ms = 1000",
        "timeout",
    );
    assert!(message.contains("timeout_ms = 1000"), "{message}");
    let message = contained(
        path,
        "bloat",
        "max_memory_bytes = 268_435_456",
        "memory_limit",
    );
    assert!(
        message.contains("max_memory_bytes = 268435456"),
        "{message}"
    );
}

#[test]
fn python_sdk_round_trips_every_type_with_nulls() {
    round_trips_every_type_with_nulls("python");
}

#[test]
fn js_sdk_round_trips_every_type_with_nulls() {
    round_trips_every_type_with_nulls("js");
}

#[test]
fn python_sdk_derives_columns_from_native_values() {
    derives_columns_from_native_values("python");
}

#[test]
fn js_sdk_derives_columns_from_native_values() {
    derives_columns_from_native_values("js");
}

#[test]
fn python_exception_is_a_plugin_error_with_the_message() {
    exception_is_a_plugin_error_with_the_message(
        "python",
        &[
            "internal",
            "ValueError: boom: raised on purpose in raise",
            "app.py:",
        ],
    );
}

#[test]
fn js_throw_is_a_plugin_error_with_the_message() {
    exception_is_a_plugin_error_with_the_message(
        "js",
        &["internal", "TypeError: boom: thrown on purpose in raise"],
    );
}

#[test]
fn python_plugin_is_held_to_fuel_deadline_and_memory_limits() {
    limits_hold("python");
}

#[test]
fn js_plugin_is_held_to_fuel_deadline_and_memory_limits() {
    limits_hold("js");
}

/// `weir plugin new` for each kind in `language`, built as generated, then
/// each plugin run on input its example handles.
fn scaffolded_projects_build_and_work(language: weir::authoring::Language) {
    use weir::authoring::scaffold::{NewOptions, create};
    use weir::authoring::toolchain::{BuildOptions, build};
    let dir = tempfile::tempdir().unwrap();
    let builds = Path::new(weir_tests::PLUGIN_BUILD_DIR);
    let text = |values: &[Option<&str>]| -> arrow::array::ArrayRef {
        std::sync::Arc::new(StringArray::from(values.to_vec()))
    };
    for kind in [
        PluginKind::Transform,
        PluginKind::Validate,
        PluginKind::Extract,
    ] {
        let name = format!("new-{language}-{kind}");
        let project = create(&NewOptions {
            name: name.clone(),
            language,
            kind,
            parent: dir.path().to_path_buf(),
            sdk_path: None,
        })
        .unwrap();
        let built = build(
            &project,
            &BuildOptions {
                out: None,
                cargo_target_dir: Some(builds.join("cargo")),
            },
        )
        .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert_eq!(
            built.path,
            project.join("dist").join(format!("{name}.wasm"))
        );
        let plugin = load(&built.path, kind);
        let config = serde_json::json!({ "columns": ["name"], "required": ["name"] }).to_string();
        let mut instance = plugin
            .instantiate("new", config.into(), Limits::default())
            .unwrap();
        let batch = RecordBatch::try_from_iter([
            ("name", text(&[Some("a"), None, Some("zürich")])),
            ("code", text(&[Some("x"), Some("y"), None])),
        ])
        .unwrap();
        match kind {
            PluginKind::Transform => {
                let sent = weir::splice::project(&batch, instance.reads());
                let (out, _) = instance.transform(&to_wit(&sent).unwrap()).unwrap();
                let expected = RecordBatch::try_from_iter([
                    ("name", text(&[Some("A"), None, Some("ZÜRICH")])),
                    ("code", text(&[Some("x"), Some("y"), None])),
                ])
                .unwrap();
                assert_eq!(
                    weir::splice::apply(&batch, out).unwrap().batch,
                    expected,
                    "{name}"
                );
            }
            PluginKind::Validate => {
                let (verdicts, _) = instance.validate(&to_wit(&batch).unwrap()).unwrap();
                let verdicts: Vec<(u32, &str, &str)> = verdicts
                    .iter()
                    .map(|v| (v.row, &*v.rule, &*v.message))
                    .collect();
                assert_eq!(verdicts, [(1, "required:name", "name is null")], "{name}");
            }
            PluginKind::Extract => {
                let metadata = weir::plugin::SourceMetadata {
                    source_name: "settings.txt".into(),
                    content_type: String::new(),
                };
                let (batches, _) = instance
                    .extract(b"# settings\na=1\n\nb = two words\n", &metadata)
                    .unwrap();
                let out = from_wit(batches.into_iter().next().unwrap()).unwrap();
                let column = |n: &str| {
                    out.column_by_name(n)
                        .unwrap()
                        .as_string::<i32>()
                        .iter()
                        .map(|v| v.unwrap().to_string())
                        .collect::<Vec<_>>()
                };
                assert_eq!(column("key"), ["a", "b"], "{name}");
                assert_eq!(column("value"), ["1", "two words"], "{name}");
                let error = instance.extract(b"a=1\noops\n", &metadata).unwrap_err();
                assert_eq!(error.kind(), "plugin_error", "{name}");
                let message = error.to_string();
                assert!(
                    message.contains("parse") && message.contains("settings.txt line 2"),
                    "{name}: {message}"
                );
            }
        }
    }
}

#[test]
fn rust_plugin_projects_from_weir_plugin_new_build_and_work() {
    scaffolded_projects_build_and_work(weir::authoring::Language::Rust);
}

#[test]
fn python_plugin_projects_from_weir_plugin_new_build_and_work() {
    scaffolded_projects_build_and_work(weir::authoring::Language::Python);
}

#[test]
fn js_plugin_projects_from_weir_plugin_new_build_and_work() {
    scaffolded_projects_build_and_work(weir::authoring::Language::Js);
}

#[test]
fn flights_chain_mixing_rust_javascript_and_python_matches_the_all_rust_chain() {
    let data = weir_tests::data_dir();
    let dir = tempfile::tempdir().unwrap();
    weir_tests::write_flights_pipeline(
        dir.path(),
        "pipeline.toml",
        &data,
        "flights_sample.csv",
        Some(300),
    );
    let mixed = weir_tests::write_flights_pipeline(
        dir.path(),
        "pipeline-mixed.toml",
        &data,
        "flights_sample.csv",
        Some(300),
    );
    for name in ["delay-class-js", "mask-python"] {
        let reference = format!("plugins/{name}/dist/{name}.wasm");
        assert!(
            mixed.contains(&reference),
            "the mixed example uses {reference}"
        );
        let target = dir.path().join(&reference);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        let built = weir_tests::built_plugin(&format!("examples/flights/plugins/{name}"));
        std::fs::copy(built, target).unwrap();
    }

    let rust = run(&dir.path().join("pipeline.toml"));
    let mixed = run(&dir.path().join("pipeline-mixed.toml"));
    assert_eq!(
        (mixed.records.written, mixed.records.quarantined),
        (rust.records.written, rust.records.quarantined)
    );
    assert!(rust.records.written > 1000, "the sample reaches the sink");
    let plugins: Vec<&str> = mixed.stages.iter().map(|s| s.plugin.as_str()).collect();
    assert!(
        plugins.iter().any(|p| p.contains("delay-class-js"))
            && plugins.iter().any(|p| p.contains("mask-python")),
        "{plugins:?}"
    );
    // Every row, every column, in column order (JSON text keeps it).
    assert_eq!(
        output_rows(&dir.path().join("out-mixed/flights")),
        output_rows(&dir.path().join("out/flights"))
    );
    let quarantine = |path: &str| -> Vec<String> {
        let mut rows: Vec<String> = read_jsonl(&dir.path().join(path))
            .iter()
            .map(|r| format!("{} {} {}", r["stage"], r["rule"], r["record"]))
            .collect();
        rows.sort();
        rows
    };
    assert_eq!(
        quarantine("out-mixed/quarantine.jsonl"),
        quarantine("out/quarantine.jsonl")
    );
}

/// Builds the C example (`examples/flights/plugins/distance-km-c`) with its
/// `build.sh` (clang + wasi-libc, `wit-bindgen c`, `wasm-tools`).
fn built_c_example(dir: &Path) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = dir.join("distance-km-c.wasm");
    let output = std::process::Command::new("bash")
        .arg(root.join("examples/flights/plugins/distance-km-c/build.sh"))
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "build.sh failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    out
}

#[test]
fn c_example_adds_kilometres_and_reports_a_missing_column() {
    let dir = tempfile::tempdir().unwrap();
    let component = built_c_example(dir.path());
    let data = weir_tests::data_dir();
    let pipeline = crate::support::write_pipeline(
        dir.path(),
        &format!(
            r#"
[pipeline]
batch_size = 300

[source]
format = "csv"
path = {:?}

[[stages]]
name = "km"
kind = "transform"
plugin = {:?}
"#,
            data.join("flights_sample.csv").display().to_string(),
            component.display().to_string()
        ),
    );
    let report = run(&pipeline);
    assert!(report.records.read > 0);
    assert_eq!(report.records.written, report.records.read);
    let rows = read_jsonl(&dir.path().join("out.jsonl"));
    let mut nulls = 0;
    for row in &rows {
        match row["distance"].as_i64() {
            Some(miles) => {
                // serde_json's float parsing may be off by one ulp.
                let expected = miles as f64 * 1.609344;
                let km = row["distance_km"].as_f64().unwrap();
                assert!((km - expected).abs() <= expected * 1e-15, "{row}");
            }
            None => {
                nulls += 1;
                assert!(row["distance_km"].is_null(), "{row}");
            }
        }
    }
    assert!(nulls < rows.len());

    // Without a `distance` column the load-time probe (one call on an
    // empty batch of the source schema) reports the plugin's message
    // before any row is read.
    let other = tempfile::tempdir().unwrap();
    crate::support::action_csv(other.path(), &["ok", "ok"]);
    let pipeline = crate::support::one_stage_pipeline(
        other.path(),
        "transform",
        component.to_str().unwrap(),
        2,
        "",
    );
    let errors = weir::pipeline::Pipeline::load(&pipeline).unwrap_err();
    let problem = errors
        .0
        .iter()
        .find(|e| e.key == "stages[0]")
        .unwrap_or_else(|| panic!("{errors}"));
    assert!(
        problem.message.contains("no column `distance`"),
        "{}",
        problem.message
    );
    assert!(!other.path().join("quarantine.jsonl").exists());
}

#[test]
fn a_reload_that_refuses_the_stages_input_is_rejected_and_the_old_version_serves() {
    // The C example needs a `distance` column; the source has none. At
    // load that is a config error (see above); as a hot reload it is a
    // rejected candidate, and the running version keeps serving.
    let dir = tempfile::tempdir().unwrap();
    let component = built_c_example(dir.path());
    crate::support::action_csv(dir.path(), &["ok", "ok"]);
    let pipeline =
        crate::support::one_stage_pipeline(dir.path(), "transform", weir_tests::IDENTITY, 2, "");
    let loaded = weir::pipeline::Pipeline::load(&pipeline).unwrap();
    let stage = &loaded.stages()[0];
    let before = stage.plugin().sha256().to_string();
    let rejection = stage
        .slot
        .reload(&std::fs::read(&component).unwrap())
        .unwrap_err();
    assert!(
        rejection.error.contains("invalid-input") && rejection.error.contains("distance"),
        "{}",
        rejection.error
    );
    assert_eq!(stage.plugin().sha256(), before);
}
