//! Shared helper for the test components in `examples/`.

use weir_sdk::RecordBatch;

/// Index of the first row whose `action` column equals `word`, if any. A
/// batch without an `action` column never triggers.
pub fn triggered(batch: &RecordBatch, word: &str) -> Option<usize> {
    let actions = batch.utf8("action").ok()?;
    (0..actions.len()).find(|&row| actions.get(row) == Some(word))
}

/// The rows whose `int64` column `column` is non-null and greater than
/// `threshold`. Shared by the `filter` component and the native baseline of
/// the benchmark, so both run the same Rust.
///
/// # Errors
/// When `column` is missing or not `int64`.
pub fn filter_greater_than(
    batch: &RecordBatch,
    column: &str,
    threshold: i64,
) -> Result<RecordBatch, weir_sdk::Error> {
    let values = batch.int64(column)?;
    let keep: Vec<bool> = (0..values.len())
        .map(|row| values.get(row).is_some_and(|v| v > threshold))
        .collect();
    Ok(batch.filter(&keep))
}
