//! # weir: data pipelines whose logic lives in sandboxed WebAssembly components
//!
//! weir reads record batches from a source, passes them through a chain of
//! plugins (WebAssembly components implementing the `weir:plugin` worlds in
//! `wit/weir-plugin.wit`) and writes what passes to a sink and what fails to
//! a quarantine, with the reason. Every plugin call runs under fuel,
//! wall-clock and memory limits; a plugin that traps, loops or bloats costs
//! only the batch it was working on.
//!
//! The main pieces:
//! - [`pipeline::Pipeline`]: load a pipeline file and run it.
//! - [`plugin::Plugin`] / [`plugin::PluginInstance`]: compile, check and
//!   call a component under [`plugin::Limits`].
//! - [`columnar`]: arrow-rs ⇄ the WIT record batch.
//! - [`source`], [`sink`], [`quarantine`]: host-native I/O.
//! - [`authoring`]: `weir plugin new` / `weir plugin build` for Rust,
//!   Python and JavaScript plugins.
//! - [`serve`]: `weir serve`, the long-running service with HTTP ingest,
//!   hot reload, an admin API and Prometheus metrics; [`client`] talks to it.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use weir::pipeline::{Pipeline, RunOptions};
//! let pipeline = Pipeline::load(std::path::Path::new("examples/flights/pipeline.toml"))?;
//! let report = pipeline.run(&RunOptions::default())?;
//! println!("{} written, {} quarantined", report.records.written, report.records.quarantined);
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod alert;
pub mod authoring;
pub mod backfill;
pub mod bindings;
pub mod builtin;
pub mod checkpoint;
pub mod checks;
pub mod cli;
pub mod client;
pub mod columnar;
pub mod config;
pub mod crash;
pub mod durable;
pub mod engine;
pub mod history;
pub mod kernels;
pub mod lent;
pub mod lineage;
pub mod nats;
pub mod operator;
pub mod partition;
pub mod pipeline;
pub mod plugin;
pub mod position;
pub mod postgres;
pub mod quarantine;
pub mod reason;
pub mod report;
pub mod secrets;
pub mod serve;
pub mod sink;
pub mod source;
pub mod splice;
pub mod stages;
pub mod state;
