//! Capabilities: what a plugin may reach beyond its batch and config.
//! Deny by default:
//!
//! - Every plugin may import the parts of WASI that reach nothing outside
//!   the instance (clocks, random, I/O streams, its own stdout/stderr, an
//!   empty environment and arguments) and `weir:plugin/host`.
//! - The file system is linked but empty: a plugin sees only the
//!   directories its stage grants, read-only (`read_dirs`).
//! - `wasi:sockets` is linked but inert: no address is ever allowed, so
//!   every connect, bind or name lookup fails with `access-denied`. It is
//!   linked because componentize-py puts CPython's socket module, and with
//!   it every `wasi:sockets` interface, into every Python component.
//! - Anything else (`wasi:http`, interfaces weir does not know) gets the
//!   plugin rejected at load, with a message naming the import.
//!
//! ```toml
//! [[stages]]
//! name = "enrich"
//! kind = "transform"
//! plugin = "plugins/enrich.wasm"
//! capabilities = { read_dirs = { "/ref" = "reference" } }   # read-only
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

/// Import prefixes every plugin may have: they reach nothing outside the
/// instance (the file system is empty without a granted directory).
pub const ALWAYS_ALLOWED: &[&str] = &[
    "weir:plugin/",
    "wasi:io/",
    "wasi:clocks/",
    "wasi:random/",
    "wasi:cli/",
    "wasi:filesystem/",
    "wasi:sockets/",
];

/// What a stage grants its plugin, from `[stages.capabilities]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Grants {
    /// Directories the plugin may read (never write), by the path it sees
    /// (absolute, e.g. `/ref`) → the host directory, relative to the
    /// pipeline file. Default: none.
    pub read_dirs: BTreeMap<String, PathBuf>,
}

impl Grants {
    /// The grants with host paths resolved against `base_dir`.
    pub fn resolved(&self, base_dir: &Path) -> Grants {
        Grants {
            read_dirs: self
                .read_dirs
                .iter()
                .map(|(guest, host)| (guest.clone(), base_dir.join(host)))
                .collect(),
        }
    }

    /// Checks that every import of plugin `name` is one weir allows (the
    /// same for every stage: grants add directories, not interfaces).
    ///
    /// # Errors
    /// The first import not granted, named, with what is allowed.
    pub fn check_imports(&self, name: &str, imports: &[String]) -> Result<()> {
        for import in imports {
            if !ALWAYS_ALLOWED.iter().any(|p| import.starts_with(p)) {
                let what = if import.starts_with("wasi:http/") {
                    "outbound HTTP, which weir does not grant to stages"
                } else {
                    "an interface weir does not provide"
                };
                bail!(
                    "plugin `{name}` imports `{import}`: {what}. Plugins may import only {}",
                    ALWAYS_ALLOWED
                        .iter()
                        .map(|p| format!("{p}*"))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
        Ok(())
    }

    /// Checks the granted directories exist.
    ///
    /// # Errors
    /// A guest path that is not absolute, or a host directory that is not
    /// a directory.
    pub fn check_dirs(&self) -> Result<()> {
        for (guest, host) in &self.read_dirs {
            if !guest.starts_with('/') || guest.contains("..") {
                bail!("`{guest}` must be an absolute path without `..`, like \"/ref\"");
            }
            if !host.is_dir() {
                bail!("{} is not a directory", host.display());
            }
        }
        Ok(())
    }

    /// Mounts the granted directories, read-only, into `wasi`.
    ///
    /// # Errors
    /// A directory that cannot be opened.
    pub fn apply(&self, wasi: &mut WasiCtxBuilder) -> Result<()> {
        for (guest, host) in &self.read_dirs {
            wasi.preopened_dir(host, guest, FsPerms::ReadOnly)
                .map_err(anyhow::Error::from)
                .with_context(|| format!("opening {} for the plugin", host.display()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denies_sockets_http_and_unknown_interfaces_by_name() {
        let grants = Grants::default();
        let ok = vec![
            "wasi:io/streams@0.2.6".to_string(),
            "wasi:filesystem/preopens@0.2.6".to_string(),
            "weir:plugin/host@0.1.0".to_string(),
        ];
        grants.check_imports("p", &ok).unwrap();
        for bad in ["wasi:http/outgoing-handler@0.2.6", "acme:evil/api"] {
            let mut imports = ok.clone();
            imports.push(bad.to_string());
            let error = grants.check_imports("p", &imports).unwrap_err().to_string();
            assert!(error.contains(bad), "{error}");
        }
    }
}
