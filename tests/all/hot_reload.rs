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
