//! Plugin slots swap versions atomically, reject bad candidates while the
//! old version serves, keep a history to roll back to, and follow file
//! changes through the watcher.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, RecordBatch, StringArray};
use weir::columnar::to_wit;
use weir::plugin::{Limits, Plugin, PluginKind, PluginSlot, PluginWatcher, sha256_hex};

fn bytes(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

fn slot_serving(component: &str) -> PluginSlot {
    let plugin =
        Plugin::from_bytes("probe.wasm", &bytes(component), Some(PluginKind::Transform)).unwrap();
    PluginSlot::new(plugin, "probe", "{}".into(), Limits::default())
}

/// A one-row batch asking the `refuse` component for an error.
fn error_request() -> weir::bindings::types::RecordBatch {
    let batch = RecordBatch::try_from_iter([(
        "action",
        Arc::new(StringArray::from(vec!["error"])) as ArrayRef,
    )])
    .unwrap();
    to_wit(&batch).unwrap()
}

fn calls_ok(version: &weir::plugin::PluginVersion) -> bool {
    let mut instance = version
        .plugin
        .instantiate("probe", "{}".into(), Limits::default())
        .unwrap();
    instance.transform(&error_request()).is_ok()
}

#[test]
fn slot_swaps_rejects_and_rolls_back() {
    let slot = slot_serving(weir_tests::IDENTITY);
    let (identity, refuse) = (
        sha256_hex(&bytes(weir_tests::IDENTITY)),
        sha256_hex(&bytes(weir_tests::REFUSE)),
    );
    let in_flight = slot.current();

    let swap = slot.reload(&bytes(weir_tests::REFUSE)).unwrap();
    assert!(!swap.unchanged);
    assert_eq!(slot.current().plugin.sha256(), refuse);
    assert!(
        calls_ok(&in_flight),
        "a batch that started on the old version finishes on it"
    );
    assert!(
        !calls_ok(&slot.current()),
        "new batches get the new version"
    );
    assert!(slot.reload(&bytes(weir_tests::REFUSE)).unwrap().unchanged);

    let garbage = slot.reload(b"\0asm but not really").unwrap_err();
    assert!(
        garbage.error.contains("not a valid WebAssembly component"),
        "{}",
        garbage.error
    );
    let wrong_world = slot.reload(&bytes(weir_tests::FLAG)).unwrap_err();
    assert!(
        wrong_world.error.contains("is a validate plugin"),
        "{}",
        wrong_world.error
    );
    assert_eq!(
        slot.current().plugin.sha256(),
        refuse,
        "rejected candidates never serve"
    );

    let status = slot.status();
    assert_eq!((status.reloads, status.rejections), (1, 2));
    assert_eq!(status.history, vec![identity.clone()]);
    assert_eq!(
        status.last_rejection.unwrap().sha256,
        sha256_hex(&bytes(weir_tests::FLAG))
    );

    assert_eq!(slot.rollback().unwrap().plugin.sha256(), identity);
    assert_eq!(slot.current().plugin.sha256(), identity);
    assert!(slot.rollback().unwrap_err().contains("no previous version"));
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Replaces `path` the way a build tool does: write beside it, then rename.
fn replace(path: &Path, contents: &[u8]) {
    let tmp = path.with_extension("wasm.tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn watcher_reloads_changed_files_and_rejects_broken_ones() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("probe.wasm");
    std::fs::write(&file, bytes(weir_tests::IDENTITY)).unwrap();
    let slot = Arc::new(slot_serving(weir_tests::IDENTITY));
    let _watcher = PluginWatcher::start(
        vec![(file.clone(), slot.clone())],
        Duration::from_millis(50),
    )
    .unwrap();

    let refuse = sha256_hex(&bytes(weir_tests::REFUSE));
    replace(&file, &bytes(weir_tests::REFUSE));
    wait_for("the new version to serve", || {
        slot.current().plugin.sha256() == refuse
    });

    std::fs::write(&file, b"not a component").unwrap();
    wait_for("the broken file to be rejected", || {
        slot.status().rejections >= 1
    });
    assert_eq!(
        slot.current().plugin.sha256(),
        refuse,
        "the old version keeps serving"
    );
    assert_eq!(slot.status().reloads, 1);
}

#[test]
fn reloads_during_a_run_lose_nothing_and_every_row_names_its_version() {
    let dir = tempfile::tempdir().unwrap();
    let actions: Vec<&str> = vec!["ok"; 400];
    crate::support::action_csv(dir.path(), &actions);
    std::fs::write(dir.path().join("probe.wasm"), bytes(weir_tests::IDENTITY)).unwrap();
    let file = crate::support::write_pipeline(
        dir.path(),
        r#"
[pipeline]
batch_size = 4
workers = 2

[source]
format = "csv"
path = "input.csv"

[[stages]]
name = "probe"
kind = "transform"
plugin = "probe.wasm"
"#,
    );
    std::fs::write(
        &file,
        std::fs::read_to_string(&file).unwrap().replace(
            "path = \"out.jsonl\"",
            "path = \"out.jsonl\"\nlineage_column = \"_lineage\"",
        ),
    )
    .unwrap();
    let pipeline = weir::pipeline::Pipeline::load(&file).unwrap();
    let slot = pipeline.stages()[0].slot.clone();

    // Two versions that both pass "ok" rows through unchanged.
    let versions = [bytes(weir_tests::IDENTITY), bytes(weir_tests::PANIC)];
    let expected: Vec<String> = versions
        .iter()
        .map(|v| format!("probe={}", sha256_hex(v)))
        .collect();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapper = {
        let (slot, stop) = (slot.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                slot.reload(&versions[i % 2]).unwrap();
                i += 1;
            }
        })
    };
    wait_for("swaps before the run", || slot.status().reloads >= 2);
    let report = pipeline.run(&Default::default()).unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    swapper.join().unwrap();

    assert_eq!(
        (
            report.records.read,
            report.records.written,
            report.records.quarantined
        ),
        (400, 400, 0)
    );
    let rows = crate::support::read_jsonl(&dir.path().join("out.jsonl"));
    let ids: Vec<i64> = rows.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert_eq!(
        ids,
        (0..400).collect::<Vec<_>>(),
        "every record exactly once, in order"
    );
    for row in &rows {
        let lineage = row["_lineage"].as_str().unwrap();
        assert!(
            expected.iter().any(|e| e == lineage),
            "unknown lineage {lineage}"
        );
    }
    for used in &report.stages[0].plugin_versions {
        assert!(
            expected.iter().any(|e| e.ends_with(used.as_str())),
            "unknown version {used}"
        );
    }
}
