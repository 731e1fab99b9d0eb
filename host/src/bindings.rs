//! Host-side bindings for the `weir:plugin` worlds (`wit/weir-plugin.wit`).
//!
//! The `types` and `host` interfaces are generated once, with the
//! `transformer` world, and shared by the other two through `with`, so one
//! [`RecordBatch`](types::RecordBatch) type serves every plugin kind.

#![allow(missing_docs, clippy::all)]

pub mod transformer {
    wasmtime::component::bindgen!({
        world: "transformer",
        path: "../wit",
        additional_derives: [PartialEq],
        // Exports are called on a fiber so that fuel is saved every
        // `FUEL_SLICE` (see `plugin::PluginInstance`); imports stay sync.
        exports: { default: async },
    });
}

pub mod validator {
    wasmtime::component::bindgen!({
        world: "validator",
        path: "../wit",
        with: {
            "weir:plugin/types": crate::bindings::transformer::weir::plugin::types,
            "weir:plugin/host": crate::bindings::transformer::weir::plugin::host,
        },
        exports: { default: async },
    });
}

pub mod extractor {
    wasmtime::component::bindgen!({
        world: "extractor",
        path: "../wit",
        with: {
            "weir:plugin/types": crate::bindings::transformer::weir::plugin::types,
            "weir:plugin/host": crate::bindings::transformer::weir::plugin::host,
        },
        exports: { default: async },
    });
}

pub use transformer::weir::plugin::host;
pub use transformer::weir::plugin::types;
