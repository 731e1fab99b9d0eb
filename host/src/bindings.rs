//! Host-side bindings for the `weir:plugin` worlds: version 0.2.0
//! (`wit/weir-plugin.wit`, what the SDKs build) and 0.1.0
//! (`wit/0.1.0/weir-plugin.wit`, which components built before 0.2.0
//! target and which weir keeps loading unchanged).
//!
//! The `types` interface is generated once, with 0.1.0's `transformer`
//! world, and every other world uses it through `with`: the two versions'
//! `types` are identical, so one [`RecordBatch`](types::RecordBatch) type
//! serves every plugin kind of either version. The `host` interface is
//! generated per version (the linker offers it under both names).

#![allow(missing_docs, clippy::all)]

/// Worlds of `weir:plugin@0.1.0`.
pub mod v0_1 {
    pub mod transformer {
        wasmtime::component::bindgen!({
            world: "transformer",
            path: "../wit/0.1.0",
            additional_derives: [PartialEq],
            // Exports are called on a fiber so that fuel is saved every
            // `FUEL_SLICE` (see `plugin::PluginInstance`); imports stay sync.
            exports: { default: async },
        });
    }

    pub mod validator {
        wasmtime::component::bindgen!({
            world: "validator",
            path: "../wit/0.1.0",
            with: {
                "weir:plugin/types": crate::bindings::types,
                "weir:plugin/host": crate::bindings::v0_1::transformer::weir::plugin::host,
            },
            exports: { default: async },
        });
    }

    pub mod extractor {
        wasmtime::component::bindgen!({
            world: "extractor",
            path: "../wit/0.1.0",
            with: {
                "weir:plugin/types": crate::bindings::types,
                "weir:plugin/host": crate::bindings::v0_1::transformer::weir::plugin::host,
            },
            exports: { default: async },
        });
    }
}

/// Worlds of `weir:plugin@0.2.0`.
pub mod v0_2 {
    pub mod transformer {
        wasmtime::component::bindgen!({
            world: "transformer",
            path: "../wit",
            additional_derives: [PartialEq],
            with: { "weir:plugin/types": crate::bindings::types },
            exports: { default: async },
        });
    }

    pub mod validator {
        wasmtime::component::bindgen!({
            world: "validator",
            path: "../wit",
            with: {
                "weir:plugin/types": crate::bindings::types,
                "weir:plugin/host": crate::bindings::v0_2::transformer::weir::plugin::host,
                "weir:plugin/stage": crate::bindings::v0_2::transformer::weir::plugin::stage,
                "weir:plugin/compute": crate::bindings::v0_2::transformer::weir::plugin::compute,
            },
            exports: { default: async },
        });
    }

    pub mod extractor {
        wasmtime::component::bindgen!({
            world: "extractor",
            path: "../wit",
            with: {
                "weir:plugin/types": crate::bindings::types,
                "weir:plugin/host": crate::bindings::v0_2::transformer::weir::plugin::host,
            },
            exports: { default: async },
        });
    }

    pub use transformer::weir::plugin::compute;
    pub use transformer::weir::plugin::host;
    pub use transformer::weir::plugin::stage;
}

pub use v0_1::transformer::weir::plugin::host;
pub use v0_1::transformer::weir::plugin::types;
