//! Writing plugins: `weir plugin new` scaffolds a project in Rust, Python
//! or JavaScript ([`scaffold`]) and `weir plugin build` turns it into a
//! component ([`toolchain`]).
//!
//! A plugin project is a directory with a manifest, `weir-plugin.toml`:
//!
//! ```toml
//! [plugin]
//! name = "delay-class"      # the component is written to dist/NAME.wasm
//! language = "python"       # rust | python | js
//! kind = "transform"        # extract | validate | transform
//! ```
//!
//! The SDKs for Python (`sdk/python/weir`) and JavaScript (`sdk/js/weir.js`)
//! and the WIT contract are compiled into the weir binary, so a project
//! always builds against the contract of the weir that builds it.

pub mod scaffold;
pub mod toolchain;

use std::path::Path;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::plugin::PluginKind;

/// The manifest's file name, at the root of a plugin project.
pub const MANIFEST: &str = "weir-plugin.toml";

/// `wit/weir-plugin.wit`, the contract every plugin targets.
pub const WIT: &str = include_str!("../../../wit/weir-plugin.wit");
/// `sdk/python/weir/__init__.py`, the Python SDK (module `weir`).
pub const PYTHON_SDK: &str = include_str!("../../../sdk/python/weir/__init__.py");
/// `sdk/js/weir.js`, the JavaScript SDK (imported as `./weir.js`).
pub const JS_SDK: &str = include_str!("../../../sdk/js/weir.js");
/// `sdk/js/weir-state.js`, the JavaScript SDK's keyed state (imported as
/// `./weir-state.js` by plugins built with `state = true`).
pub const JS_STATE_SDK: &str = include_str!("../../../sdk/js/weir-state.js");
/// `sdk/js/weir-compute.js`, the JavaScript SDK's compute kernels (imported
/// as `./weir-compute.js` by transform and validate plugins that use them).
pub const JS_COMPUTE_SDK: &str = include_str!("../../../sdk/js/weir-compute.js");

/// A language plugins can be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    /// Rust with the `weir-sdk` crate, built by cargo for `wasm32-wasip2`.
    Rust,
    /// Python with the `weir` module, built by componentize-py.
    Python,
    /// JavaScript (an ES module) with `weir.js`, built by componentize-js.
    Js,
}

impl Language {
    /// The name used in manifests and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Language::Rust => "rust",
            Language::Python => "python",
            Language::Js => "js",
        }
    }
}

impl std::fmt::Display for Language {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `weir-plugin.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The `[plugin]` table.
    pub plugin: ManifestPlugin,
}

/// The `[plugin]` table of `weir-plugin.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestPlugin {
    /// The plugin's name: letters, digits, `-` and `_`, starting with a
    /// letter. The component is written to `dist/NAME.wasm`.
    pub name: String,
    /// The language the project is written in.
    pub language: Language,
    /// Which world the component targets.
    pub kind: PluginKind,
    /// Whether the plugin keeps keyed state (`weir:plugin/state`). Python and JavaScript plugins are then built
    /// for the `stateful-*` world, whose state functions the SDKs wrap
    /// (`weir.state`, `./weir-state.js`). Rust plugins may call
    /// `weir_sdk::state` whatever this says. Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub state: bool,
}

impl Manifest {
    /// Reads `DIR/weir-plugin.toml`.
    ///
    /// # Errors
    /// When the file is missing (the message says how to create one), or
    /// malformed (file, key and problem), or the name is not a valid name.
    pub fn read(dir: &Path) -> Result<Manifest> {
        let path = dir.join(MANIFEST);
        if !path.is_file() {
            anyhow::bail!(
                "{} has no {MANIFEST}; create a project with `weir plugin new --lang LANG --kind KIND NAME`, \
                 or add one:\n\n[plugin]\nname = \"my-plugin\"\nlanguage = \"python\"   # rust | python | js\n\
                 kind = \"transform\"     # extract | validate | transform",
                dir.display()
            );
        }
        let text = crate::config::read_text(&path)?;
        let manifest: Manifest = crate::config::parse_toml(&text, &path)?;
        check_name(&manifest.plugin.name).map_err(|problem| {
            anyhow::anyhow!("{}: key `plugin.name`: {problem}", path.display())
        })?;
        Ok(manifest)
    }
}

/// Checks a plugin name: it becomes a file name, a Cargo package name and
/// part of a Python module path, so only `[A-Za-z][A-Za-z0-9_-]*` is taken.
///
/// # Errors
/// A sentence saying what is wrong with `name`.
pub fn check_name(name: &str) -> std::result::Result<(), String> {
    let mut chars = name.chars();
    match chars.next() {
        None => Err("the name is empty".into()),
        Some(first) if !first.is_ascii_alphabetic() => {
            Err(format!("`{name}` must start with a letter"))
        }
        _ if !chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') => Err(format!(
            "`{name}` may only hold letters, digits, `-` and `_`"
        )),
        _ if name.len() > 64 => Err(format!("`{name}` is longer than 64 characters")),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_names_are_checked() {
        assert!(check_name("delay-class_2").is_ok());
        for bad in ["", "2fast", "has space", "dots.no", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_malformed_manifest_names_the_file_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let error = Manifest::read(dir.path()).unwrap_err().to_string();
        assert!(error.contains("weir plugin new"), "{error}");
        std::fs::write(
            dir.path().join(MANIFEST),
            "[plugin]\nname = \"x\"\nlanguage = \"cobol\"\nkind = \"transform\"\n",
        )
        .unwrap();
        let error = format!("{:#}", Manifest::read(dir.path()).unwrap_err());
        assert!(
            error.contains(MANIFEST) && error.contains("cobol"),
            "{error}"
        );
        std::fs::write(
            dir.path().join(MANIFEST),
            "[plugin]\nname = \"1x\"\nlanguage = \"js\"\nkind = \"transform\"\n",
        )
        .unwrap();
        let error = format!("{:#}", Manifest::read(dir.path()).unwrap_err());
        assert!(error.contains("plugin.name"), "{error}");
    }
}
