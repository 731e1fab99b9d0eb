//! Shared helper for the test components in `examples/`.

use weir_sdk::RecordBatch;

/// Index of the first row whose `action` column equals `word`, if any. A
/// batch without an `action` column never triggers.
pub fn triggered(batch: &RecordBatch, word: &str) -> Option<usize> {
    let actions = batch.utf8("action").ok()?;
    (0..actions.len()).find(|&row| actions.get(row) == Some(word))
}

/// For each row, whether its `int64` column `column` is non-null and
/// greater than `threshold`. Shared by the `filter` component and the native
/// baseline of the benchmark, so both run the same Rust.
///
/// # Errors
/// When `column` is missing or not `int64`.
pub fn greater_than(
    batch: &RecordBatch,
    column: &str,
    threshold: i64,
) -> Result<Vec<bool>, weir_sdk::Error> {
    let values = batch.int64(column)?;
    Ok((0..values.len())
        .map(|row| values.get(row).is_some_and(|v| v > threshold))
        .collect())
}
