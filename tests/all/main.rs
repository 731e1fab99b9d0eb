//! weir's integration tests: one binary, a module per area.

mod boundary;
mod config_errors;
mod flights;
mod hostile;
mod support;
