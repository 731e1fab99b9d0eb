//! Support for weir's integration tests: the paths of the test components
//! `build.rs` compiled, and the committed data samples.

include!(concat!(env!("OUT_DIR"), "/components.rs"));

/// The directory of committed test data (`tests/data`).
pub fn data_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data")
}
