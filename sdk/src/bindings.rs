//! Generated bindings for the three `weir:plugin@0.2.0` worlds.
//!
//! The `types`, `host` and `stage` interfaces are generated once (under
//! `transformer`) and shared by the other two worlds through `with`, so a
//! [`RecordBatch`](crate::RecordBatch) is the same Rust type whichever kind of
//! plugin you write. Each world's custom section is emitted by its export
//! macro, so a plugin component only declares the world it exports.
//!
//! Every kind is generated from its `stateful-*` world, so that [`crate::state`] is available to every plugin; a
//! component imports `weir:plugin/state` only when it calls a state
//! function (unused imports are left out of the component), and only then
//! does the host treat its stage as stateful.

#![allow(missing_docs, clippy::all)]

pub mod transformer {
    wit_bindgen::generate!({
        world: "stateful-transformer",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "__export_transformer",
        default_bindings_module: "weir_sdk::bindings::transformer",
        additional_derives: [PartialEq, Clone],
    });
}

pub mod validator {
    wit_bindgen::generate!({
        world: "stateful-validator",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "__export_validator",
        default_bindings_module: "weir_sdk::bindings::validator",
        additional_derives: [PartialEq, Clone],
        with: {
            "weir:plugin/types@0.2.0": crate::bindings::transformer::weir::plugin::types,
            "weir:plugin/host@0.2.0": crate::bindings::transformer::weir::plugin::host,
            "weir:plugin/stage@0.2.0": crate::bindings::transformer::weir::plugin::stage,
            "weir:plugin/state@0.2.0": crate::bindings::transformer::weir::plugin::state,
            "weir:plugin/compute@0.2.0": crate::bindings::transformer::weir::plugin::compute,
        },
    });
}

pub mod extractor {
    wit_bindgen::generate!({
        world: "stateful-extractor",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "__export_extractor",
        default_bindings_module: "weir_sdk::bindings::extractor",
        additional_derives: [PartialEq, Clone],
        with: {
            "weir:plugin/types@0.2.0": crate::bindings::transformer::weir::plugin::types,
            "weir:plugin/host@0.2.0": crate::bindings::transformer::weir::plugin::host,
            "weir:plugin/state@0.2.0": crate::bindings::transformer::weir::plugin::state,
        },
    });
}
