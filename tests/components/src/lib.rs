//! Shared helper for the test components in `examples/`.

use weir_sdk::RecordBatch;

/// Index of the first row whose `action` column equals `word`, if any. A
/// batch without an `action` column never triggers.
pub fn triggered(batch: &RecordBatch, word: &str) -> Option<usize> {
    let actions = batch.utf8("action").ok()?;
    (0..actions.len()).find(|&row| actions.get(row) == Some(word))
}
