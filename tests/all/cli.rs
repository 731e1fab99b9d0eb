//! The `weir` command line, run in-process: exit codes tell a bad pipeline
//! file from a failed run, and `run --report` writes the report.

use weir::cli::{EXIT_INVALID, EXIT_OK, EXIT_RUN_FAILED, EXIT_USAGE, run};

use crate::support::{action_csv, one_stage_pipeline, read_jsonl};

/// Runs `weir ARGS` in-process, with logging off: the log subscriber is
/// process-wide and would print every later test's warnings.
fn weir(args: &[&str]) -> u8 {
    run(["weir", "--log", "off"]
        .into_iter()
        .chain(args.iter().copied()))
}

#[test]
fn exit_codes_distinguish_bad_config_from_a_failed_run() {
    let dir = tempfile::tempdir().unwrap();
    action_csv(dir.path(), &["ok", "trap"]);

    let failing = one_stage_pipeline(
        dir.path(),
        "transform",
        weir_tests::PANIC,
        1,
        "on_error = \"fail\"",
    );
    let failing = failing.to_str().unwrap();
    assert_eq!(weir(&["check", failing]), EXIT_OK);
    assert_eq!(weir(&["run", "--no-progress", failing]), EXIT_RUN_FAILED);

    let invalid = one_stage_pipeline(dir.path(), "transform", "missing.wasm", 1, "");
    assert_eq!(weir(&["check", invalid.to_str().unwrap()]), EXIT_INVALID);
    assert_eq!(weir(&["run", invalid.to_str().unwrap()]), EXIT_INVALID);

    assert_eq!(weir(&["frobnicate"]), EXIT_USAGE);
}

#[test]
fn run_writes_the_report_and_inspect_reads_a_component() {
    let dir = tempfile::tempdir().unwrap();
    action_csv(dir.path(), &["ok", "bad", "ok"]);
    let pipeline = one_stage_pipeline(dir.path(), "validate", weir_tests::FLAG, 2, "");
    let report = dir.path().join("report.json");
    let code = weir(&[
        "run",
        "--no-progress",
        pipeline.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
    ]);
    assert_eq!(code, EXIT_OK);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(report["records"]["read"], 3);
    assert_eq!(report["records"]["quarantined"], 1);
    assert_eq!(
        report["stages"][0]["plugin_sha256"].as_str().unwrap().len(),
        64
    );
    assert_eq!(report["outputs"][0]["rows"], 2);
    assert_eq!(read_jsonl(&dir.path().join("out.jsonl")).len(), 2);

    assert_eq!(weir(&["plugin", "inspect", weir_tests::FLAG]), EXIT_OK);
    assert_eq!(
        weir(&["plugin", "inspect", "builtin:check", "--json"]),
        EXIT_OK
    );
    assert_eq!(
        weir(&[
            "plugin",
            "inspect",
            dir.path().join("out.jsonl").to_str().unwrap()
        ]),
        EXIT_RUN_FAILED
    );
}

#[cfg(unix)]
#[test]
fn the_test_command_stops_at_once_with_the_install_line_when_system_packages_are_missing() {
    // A PATH with nothing but bash and id: no node, python3 or clang-14.
    let bin = tempfile::tempdir().unwrap();
    for tool in ["bash", "id"] {
        let found = ["/usr/bin", "/bin"]
            .iter()
            .map(|d| std::path::Path::new(d).join(tool))
            .find(|p| p.exists())
            .unwrap();
        std::os::unix::fs::symlink(found, bin.path().join(tool)).unwrap();
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let output = std::process::Command::new(bin.path().join("bash"))
        .arg(root.join("scripts/install-system-packages"))
        .arg("--check")
        .env("PATH", bin.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("apt-get install -y")
            && stderr.contains("clang-14")
            && stderr.contains("npm"),
        "{stderr}"
    );
    // scripts/test checks them before it builds anything.
    let script = std::fs::read_to_string(root.join("scripts/test")).unwrap();
    let check = script.find("scripts/install-system-packages").unwrap();
    let build = script.find("cargo test").unwrap();
    assert!(check < build, "the check comes first");
}
