//! A record batch with a column of every data type weir carries.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryArray, BooleanArray, Date32Array, Float64Array, Int64Array, RecordBatch,
    StringArray, TimestampMicrosecondArray,
};

/// `rows` rows × 9 columns (boolean, int64, float64, utf8 with non-ASCII
/// and empty strings, binary, timestamp in UTC, naive timestamp, date32),
/// every fourth row null.
pub fn every_type(rows: usize) -> RecordBatch {
    let pick = |i: usize| i % 4 != 3; // every fourth row is null
    let columns: Vec<(&str, ArrayRef)> = vec![
        (
            "boolean",
            Arc::new(BooleanArray::from(
                (0..rows)
                    .map(|i| pick(i).then_some(i % 2 == 0))
                    .collect::<Vec<_>>(),
            )),
        ),
        (
            "int64",
            Arc::new(Int64Array::from(
                (0..rows)
                    .map(|i| pick(i).then_some(i as i64 * -7_000_000_001))
                    .collect::<Vec<_>>(),
            )),
        ),
        (
            "float64",
            Arc::new(Float64Array::from(
                (0..rows)
                    .map(|i| pick(i).then_some(i as f64 / 3.0))
                    .collect::<Vec<_>>(),
            )),
        ),
        (
            "utf8",
            Arc::new(StringArray::from(
                (0..rows)
                    .map(|i| {
                        pick(i).then(|| {
                            ["", "plain", "zürich", "東京 ✈", "emoji 🛫"][i % 5].to_string()
                        })
                    })
                    .collect::<Vec<_>>(),
            )),
        ),
        (
            "binary",
            Arc::new(BinaryArray::from_iter(
                (0..rows).map(|i| pick(i).then(|| [0u8, 255, i as u8][..i % 3].to_vec())),
            )),
        ),
        (
            "timestamp",
            Arc::new(
                TimestampMicrosecondArray::from(
                    (0..rows)
                        .map(|i| pick(i).then_some(1_356_998_400_000_000 + i as i64))
                        .collect::<Vec<_>>(),
                )
                .with_timezone("UTC"),
            ),
        ),
        (
            "timestamp_naive",
            Arc::new(TimestampMicrosecondArray::from(
                (0..rows)
                    .map(|i| pick(i).then_some(-(i as i64)))
                    .collect::<Vec<_>>(),
            )),
        ),
        (
            "date32",
            Arc::new(Date32Array::from(
                (0..rows)
                    .map(|i| pick(i).then_some(15_706 + i as i32))
                    .collect::<Vec<_>>(),
            )),
        ),
    ];
    RecordBatch::try_from_iter(columns).unwrap()
}
