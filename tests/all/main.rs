//! weir's integration tests: one binary, a module per area.

mod boundary;
mod cli;
mod config_errors;
mod containment;
mod contract;
mod crash;
mod extract_source;
mod flights;
mod history;
mod hostile;
mod hot_reload;
mod http;
mod kernels;
mod languages;
mod latest;
mod malformed_input;
mod new_user;
mod plugin_state;
mod postgres;
mod security;
mod serve;
mod stateful;
mod stream_state;
mod streaming;
mod support;
mod tenants;
