//! What the host provides: logging and the stage's configuration.

use serde::de::DeserializeOwned;

use crate::Error;
use crate::bindings::transformer::weir::plugin::host;

pub use host::Level;

/// Writes `message` to the host's log at `level`, tagged with this plugin's
/// name and stage.
pub fn log(level: Level, message: &str) {
    host::log(level, message);
}

/// The stage's configuration table from the pipeline file, as JSON text
/// (`{}` when the stage has none).
pub fn config_json() -> String {
    host::config()
}

/// The stage's configuration, deserialized into `T`.
///
/// # Errors
/// [`Error::InvalidConfig`] naming the problem when the table does not fit
/// `T` (a missing key, a wrong type...).
pub fn config<T: DeserializeOwned>() -> Result<T, Error> {
    serde_json::from_str(&config_json()).map_err(|e| Error::InvalidConfig(e.to_string()))
}
