//! Support for weir's integration tests: the paths of the test components
//! `build.rs` compiled, and the committed data samples.

include!(concat!(env!("OUT_DIR"), "/components.rs"));

mod every_type;
pub use every_type::every_type;
pub mod nats;
pub mod pg;

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The directory of committed test data (`tests/data`).
pub fn data_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data")
}

/// Writes `dir/EXAMPLE`: the flights example `examples/flights/EXAMPLE`
/// (`pipeline.toml`, or `pipeline-mixed.toml` whose plugins the caller puts
/// under `dir/plugins`) unchanged but for its inputs, read from `data`
/// (`flights` names the flights CSV there) and, when given, its
/// `batch_size`. Returns the example's own text.
///
/// # Panics
/// When the example cannot be read or no longer names its inputs as
/// expected.
pub fn write_flights_pipeline(
    dir: &std::path::Path,
    example_file: &str,
    data: &std::path::Path,
    flights: &str,
    batch_size: Option<usize>,
) -> String {
    let example = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples/flights")
            .join(example_file),
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
    std::fs::write(dir.join(example_file), text).unwrap();
    example
}

/// Builds the plugin project at `project` (relative to the repository
/// root, e.g. `tests/components/python/probe`) with `weir plugin build`,
/// once per test process, into [`PLUGIN_BUILD_DIR`], and returns the
/// component's path. Python and JavaScript projects need the guest tools
/// (`scripts/install-guest-tools`).
///
/// # Panics
/// When the build fails, with the builder's message.
pub fn built_plugin(project: &str) -> std::path::PathBuf {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, OnceLock};
    static BUILDS: OnceLock<Mutex<HashMap<String, Arc<OnceLock<std::path::PathBuf>>>>> =
        OnceLock::new();
    let slot = BUILDS
        .get_or_init(Default::default)
        .lock()
        .unwrap()
        .entry(project.to_string())
        .or_default()
        .clone();
    slot.get_or_init(|| {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let builds = std::path::Path::new(PLUGIN_BUILD_DIR);
        let options = weir::authoring::toolchain::BuildOptions {
            out: Some(builds.join(format!("{}.wasm", project.replace('/', "--")))),
            cargo_target_dir: Some(builds.join("cargo")),
        };
        weir::authoring::toolchain::build(&root.join(project), &options)
            .unwrap_or_else(|e| panic!("building {project}: {e:#}"))
            .path
    })
    .clone()
}
