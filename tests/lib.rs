//! Support for weir's integration tests: the paths of the test components
//! `build.rs` compiled, and the committed data samples.

include!(concat!(env!("OUT_DIR"), "/components.rs"));

/// The directory of committed test data (`tests/data`).
pub fn data_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data")
}

/// Writes `dir/pipeline.toml`: the flights example
/// (`examples/flights/pipeline.toml`) unchanged but for its inputs, read
/// from `data` (`flights` names the flights CSV there) and, when given, its
/// `batch_size`. Returns the example's own text.
///
/// # Panics
/// When the example cannot be read or no longer names its inputs as
/// expected.
pub fn write_flights_pipeline(
    dir: &std::path::Path,
    data: &std::path::Path,
    flights: &str,
    batch_size: Option<usize>,
) -> String {
    let example = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/flights/pipeline.toml"),
    )
    .unwrap();
    let mut text = example
        .replace(
            "data/flights.csv",
            &data.join(flights).display().to_string(),
        )
        .replace(
            "data/airlines.csv",
            &data.join("airlines.csv").display().to_string(),
        );
    if let Some(rows) = batch_size {
        text = text.replace("batch_size = 8192", &format!("batch_size = {rows}"));
    }
    assert!(
        example.contains("\"data/flights.csv\"") && example.contains("\"data/airlines.csv\""),
        "the example names its inputs as expected"
    );
    std::fs::write(dir.join("pipeline.toml"), text).unwrap();
    example
}
