//! # weir-sdk: write weir plugins in Rust
//!
//! A weir plugin is a WebAssembly component that implements one of three
//! kinds, each a plain Rust function:
//!
//! | kind | trait | export macro | input → output |
//! |---|---|---|---|
//! | transform | [`Transform`] | [`export_transform!`] | [`RecordBatch`] → [`Output`] (a whole batch or a [`Splice`]) |
//! | validate | [`Validate`] | [`export_validate!`] | [`RecordBatch`] → `Vec<`[`Verdict`]`>` |
//! | extract | [`Extract`] | [`export_extract!`] | bytes + [`SourceMetadata`] → `Vec<`[`RecordBatch`]`>` |
//!
//! This SDK targets the contract `weir:plugin@0.2.0`. A validate or transform
//! stage may declare the columns it reads ([`Transform::reads`],
//! [`Validate::reads`]): only those cross into the plugin, the others stay on
//! the host. A transform that only filters rows or adds, replaces or drops
//! a few columns returns a [`Splice`] of just those changes, and the host
//! applies them to the columns that never crossed; see
//! `docs/plugins-rust.md`.
//!
//! Batches are columnar and mirror Arrow's layout (see `wit/weir-plugin.wit`):
//! read a column with [`RecordBatch::column`] and a typed view such as
//! [`Column::as_int64`]; build new columns with [`Column::from_int64`],
//! [`Column::from_utf8`] and friends. With the `arrow` feature, batches
//! convert to and from arrow-rs `RecordBatch` (see [`arrow`]).
//!
//! ## Example: a transform that upper-cases a column
//!
//! ```no_run
//! use weir_sdk::{Column, Error, Output, RecordBatch, Splice, Transform};
//!
//! struct Upper;
//!
//! fn column_name() -> Result<String, Error> {
//!     let config: weir_sdk::serde_json::Value = weir_sdk::config()?;
//!     Ok(config["column"].as_str().unwrap_or("name").to_string())
//! }
//!
//! impl Transform for Upper {
//!     // Only this column crosses into the plugin; the others stay on the host.
//!     fn reads() -> Result<Option<Vec<String>>, Error> {
//!         Ok(Some(vec![column_name()?]))
//!     }
//!
//!     fn transform(batch: RecordBatch) -> Result<Output, Error> {
//!         let name = column_name()?;
//!         let values = batch.utf8(&name)?;
//!         let upper = Column::from_utf8((0..values.len()).map(|i| values.get(i).map(str::to_uppercase)));
//!         // Only the new column crosses back.
//!         Ok(Splice::new().replace(&batch, &name, upper)?.into())
//!     }
//! }
//!
//! weir_sdk::export_transform!(Upper);
//! ```
//!
//! ## Example: a validator
//!
//! ```no_run
//! use weir_sdk::{Error, RecordBatch, Validate, Verdict};
//!
//! /// Flags rows whose `distance` is not positive.
//! struct PositiveDistance;
//!
//! impl Validate for PositiveDistance {
//!     fn validate(batch: RecordBatch) -> Result<Vec<Verdict>, Error> {
//!         let distance = batch.int64("distance")?;
//!         Ok((0..batch.len())
//!             .filter(|&row| distance.get(row).is_some_and(|d| d <= 0))
//!             .map(|row| Verdict {
//!                 row: row as u32,
//!                 rule: "distance_positive".into(),
//!                 message: format!("distance {:?} is not positive", distance.get(row)),
//!             })
//!             .collect())
//!     }
//! }
//!
//! weir_sdk::export_validate!(PositiveDistance);
//! ```
//!
//! ## Example: an extractor
//!
//! ```no_run
//! use weir_sdk::{Column, DataType, Error, Extract, Field, RecordBatch, SourceMetadata};
//!
//! /// One row per non-empty line, in a `line` column.
//! struct Lines;
//!
//! impl Extract for Lines {
//!     fn extract(data: Vec<u8>, metadata: SourceMetadata) -> Result<Vec<RecordBatch>, Error> {
//!         let text = String::from_utf8(data)
//!             .map_err(|e| Error::Parse(format!("{}: not UTF-8: {e}", metadata.source_name)))?;
//!         let lines: Vec<Option<&str>> = text.lines().filter(|l| !l.is_empty()).map(Some).collect();
//!         let rows = lines.len() as u32;
//!         let field = Field { name: "line".into(), data_type: DataType::Utf8, nullable: false };
//!         Ok(vec![RecordBatch::try_new(vec![field], vec![Column::from_utf8(lines)], rows)?])
//!     }
//! }
//!
//! weir_sdk::export_extract!(Lines);
//! ```
//!
//! Build with `cargo build --release --target wasm32-wasip2` and a
//! `crate-type = ["cdylib"]` library; the `.wasm` file in
//! `target/wasm32-wasip2/release/` is the plugin.

#![warn(missing_docs)]

mod batch;
#[doc(hidden)]
pub mod bindings;
mod bitmap;
mod column;
pub mod compute;
pub mod host;
mod splice;
pub mod state;

#[cfg(feature = "arrow")]
pub mod arrow;

pub use batch::DataTypeExt;
pub use bitmap::{Bitmap, BitmapBuilder};
pub use column::{BoolView, PrimitiveView, Utf8Builder, VarLenView};
pub use host::{Level, config, config_json, log};
#[doc(hidden)]
pub use splice::{check_reads, describe};
/// Re-exported so plugins can read their config without extra dependencies.
pub use {serde, serde_json};

pub use bindings::extractor::exports::weir::plugin::extract::SourceMetadata;
pub use bindings::transformer::exports::weir::plugin::transform::Output;
pub use bindings::transformer::weir::plugin::stage::{NewColumn, Selection, Splice, StageInfo};
pub use bindings::transformer::weir::plugin::types::{
    Column, ColumnValues, DataType, Error, Field, RecordBatch, Schema, VarLen,
};
pub use bindings::validator::exports::weir::plugin::validate::Verdict;

/// A plugin that rewrites record batches (the `transformer` world).
pub trait Transform {
    /// Names of the columns the plugin reads; only those are sent to it
    /// (in the batch's order) and the others pass through on the host.
    /// Called once per instance, before any batch, so it may read
    /// [`config`]. The default, `None`, sends every column.
    ///
    /// # Errors
    /// An unusable config ([`Error::InvalidConfig`]): the host then
    /// quarantines every batch with that error.
    fn reads() -> Result<Option<Vec<String>>, Error> {
        Ok(None)
    }

    /// Returns the transformed batch: either a whole [`RecordBatch`]
    /// (`batch.into()`; any rows, any schema, and it replaces the columns
    /// that were not sent too) or a [`Splice`] of the changes (a row
    /// selection plus the columns added, replaced or dropped). Rows left out
    /// are counted as filtered, not quarantined.
    ///
    /// # Errors
    /// Return an [`Error`] to have the host quarantine this batch's rows with
    /// the error's kind and message; the next batch is still processed.
    fn transform(batch: RecordBatch) -> Result<Output, Error>;
}

/// A plugin that checks rows (the `validator` world).
pub trait Validate {
    /// Names of the columns the plugin reads; see [`Transform::reads`].
    /// Verdict rows index the whole batch either way.
    ///
    /// # Errors
    /// As [`Transform::reads`].
    fn reads() -> Result<Option<Vec<String>>, Error> {
        Ok(None)
    }

    /// Returns one [`Verdict`] per failed (row, rule); an empty list means all
    /// rows pass.
    ///
    /// # Errors
    /// An [`Error`] quarantines the whole batch with its message.
    fn validate(batch: RecordBatch) -> Result<Vec<Verdict>, Error>;
}

/// A plugin that parses raw bytes into record batches (the `extractor` world).
pub trait Extract {
    /// Parses the whole content of one source object.
    ///
    /// # Errors
    /// [`Error::Parse`] when the bytes are malformed, naming where.
    fn extract(data: Vec<u8>, metadata: SourceMetadata) -> Result<Vec<RecordBatch>, Error>;
}

/// Exports a [`Transform`] implementation as this component's `transform`.
#[macro_export]
macro_rules! export_transform {
    ($plugin:ty) => {
        // Exports exist only in the component; a native build (unit tests)
        // compiles the plugin as a plain library.
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct WeirExport;
            impl $crate::bindings::transformer::exports::weir::plugin::transform::Guest for WeirExport {
                fn describe() -> $crate::StageInfo {
                    $crate::describe(<$plugin as $crate::Transform>::reads())
                }
                fn transform(batch: $crate::RecordBatch) -> ::core::result::Result<$crate::Output, $crate::Error> {
                    $crate::check_reads()?;
                    <$plugin as $crate::Transform>::transform(batch)
                }
            }
            $crate::bindings::transformer::__export_transformer!(WeirExport with_types_in $crate::bindings::transformer);
        };
        /// The plugin's entry point as a plain function, for native tests.
        #[cfg(not(target_arch = "wasm32"))]
        #[doc(hidden)]
        pub fn weir_native_transform(batch: $crate::RecordBatch) -> ::core::result::Result<$crate::Output, $crate::Error> {
            <$plugin as $crate::Transform>::transform(batch)
        }
    };
}

/// Exports a [`Validate`] implementation as this component's `validate`.
#[macro_export]
macro_rules! export_validate {
    ($plugin:ty) => {
        // Exports exist only in the component; a native build (unit tests)
        // compiles the plugin as a plain library.
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct WeirExport;
            impl $crate::bindings::validator::exports::weir::plugin::validate::Guest for WeirExport {
                fn describe() -> $crate::StageInfo {
                    $crate::describe(<$plugin as $crate::Validate>::reads())
                }
                fn validate(batch: $crate::RecordBatch) -> ::core::result::Result<::std::vec::Vec<$crate::Verdict>, $crate::Error> {
                    $crate::check_reads()?;
                    <$plugin as $crate::Validate>::validate(batch)
                }
            }
            $crate::bindings::validator::__export_validator!(WeirExport with_types_in $crate::bindings::validator);
        };
        /// The plugin's entry point as a plain function, for native tests.
        #[cfg(not(target_arch = "wasm32"))]
        #[doc(hidden)]
        pub fn weir_native_validate(batch: $crate::RecordBatch) -> ::core::result::Result<::std::vec::Vec<$crate::Verdict>, $crate::Error> {
            <$plugin as $crate::Validate>::validate(batch)
        }
    };
}

/// Exports an [`Extract`] implementation as this component's `extract`.
#[macro_export]
macro_rules! export_extract {
    ($plugin:ty) => {
        // Exports exist only in the component; a native build (unit tests)
        // compiles the plugin as a plain library.
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct WeirExport;
            impl $crate::bindings::extractor::exports::weir::plugin::extract::Guest for WeirExport {
                fn extract(
                    data: ::std::vec::Vec<u8>,
                    metadata: $crate::SourceMetadata,
                ) -> ::core::result::Result<::std::vec::Vec<$crate::RecordBatch>, $crate::Error> {
                    <$plugin as $crate::Extract>::extract(data, metadata)
                }
            }
            $crate::bindings::extractor::__export_extractor!(WeirExport with_types_in $crate::bindings::extractor);
        };
        /// The plugin's entry point as a plain function, for native tests.
        #[cfg(not(target_arch = "wasm32"))]
        #[doc(hidden)]
        pub fn weir_native_extract(
            data: ::std::vec::Vec<u8>,
            metadata: $crate::SourceMetadata,
        ) -> ::core::result::Result<::std::vec::Vec<$crate::RecordBatch>, $crate::Error> {
            <$plugin as $crate::Extract>::extract(data, metadata)
        }
    };
}
