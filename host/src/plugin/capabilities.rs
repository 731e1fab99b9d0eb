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
//! - `wasi:http` is linked for extract plugins only, and a source must
//!   grant it with an allowlist of hosts (`http`, see [`super::http`]); a
//!   validate or transform plugin importing it is rejected at load, and so
//!   is an extract plugin whose source does not grant it.
//! - Anything else (interfaces weir does not know) gets the plugin
//!   rejected at load, with a message naming the import.
//!
//! ```toml
//! [[stages]]
//! name = "enrich"
//! kind = "transform"
//! plugin = "plugins/enrich.wasm"
//! capabilities = { read_dirs = { "/ref" = "reference" } }   # read-only
//!
//! [source.extract.capabilities.http]                        # extract only
//! allow_hosts = ["api.example.com"]
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use super::PluginKind;
use super::http::HttpGrant;

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
    /// Outbound HTTP (extract plugins only). Default: none.
    pub http: Option<HttpGrant>,
}

/// The interface prefix of outbound HTTP.
const WASI_HTTP: &str = "wasi:http/";

/// Checks that every import of plugin `name`, of `kind`, is one weir can
/// link: [`ALWAYS_ALLOWED`], plus `wasi:http` for extract plugins (which
/// their source must still grant, see [`Grants::check_granted`]).
///
/// # Errors
/// The first import weir cannot link, named, with what is allowed.
pub fn check_imports(name: &str, kind: PluginKind, imports: &[String]) -> Result<()> {
    for import in imports {
        if ALWAYS_ALLOWED.iter().any(|p| import.starts_with(p)) {
            continue;
        }
        let what = if !import.starts_with(WASI_HTTP) {
            "an interface weir does not provide"
        } else if kind == PluginKind::Extract {
            continue;
        } else {
            "outbound HTTP, which weir grants only to extract plugins"
        };
        bail!(
            "plugin `{name}` imports `{import}`: {what}. {kind} plugins may import only {}",
            ALWAYS_ALLOWED
                .iter()
                .map(|p| format!("{p}*"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
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
            http: self.http.clone(),
        }
    }

    /// Checks that these grants cover the imports of plugin `name`:
    /// `wasi:http` needs an `http` grant.
    ///
    /// # Errors
    /// The first import not granted, named, with the key that grants it.
    pub fn check_granted(&self, name: &str, imports: &[String]) -> Result<()> {
        if self.http.is_none()
            && let Some(import) = imports.iter().find(|i| i.starts_with(WASI_HTTP))
        {
            bail!(
                "plugin `{name}` imports `{import}`: outbound HTTP, which its source does not grant. Grant it with `capabilities.http.allow_hosts = [\"host\", ...]`"
            );
        }
        Ok(())
    }

    /// Checks the granted directories exist and the HTTP grant is usable.
    ///
    /// # Errors
    /// A guest path that is not absolute, a host directory that is not a
    /// directory, or an unusable `http` grant (see [`HttpGrant::check`]).
    pub fn check(&self) -> Result<()> {
        if let Some(http) = &self.http {
            http.check().context("capabilities.http")?;
        }
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
    fn http_is_linked_for_extract_plugins_only_and_needs_a_grant() {
        let ok = vec![
            "wasi:io/streams@0.2.6".to_string(),
            "wasi:filesystem/preopens@0.2.6".to_string(),
            "weir:plugin/host@0.1.0".to_string(),
        ];
        let http = "wasi:http/outgoing-handler@0.2.6".to_string();
        let with_http = [ok.clone(), vec![http.clone()]].concat();
        check_imports("p", PluginKind::Transform, &ok).unwrap();
        check_imports("p", PluginKind::Extract, &with_http).unwrap();
        for kind in [PluginKind::Transform, PluginKind::Validate] {
            let error = check_imports("p", kind, &with_http)
                .unwrap_err()
                .to_string();
            assert!(
                error.contains(&http) && error.contains("only to extract"),
                "{error}"
            );
        }
        let mut unknown = ok.clone();
        unknown.push("acme:evil/api".into());
        let error = check_imports("p", PluginKind::Extract, &unknown)
            .unwrap_err()
            .to_string();
        assert!(error.contains("acme:evil/api"), "{error}");

        let error = Grants::default()
            .check_granted("p", &with_http)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains(&http) && error.contains("allow_hosts"),
            "{error}"
        );
        let granted = Grants {
            http: Some(HttpGrant {
                allow_hosts: vec!["x.org".into()],
                ..HttpGrant::default()
            }),
            ..Grants::default()
        };
        granted.check_granted("p", &with_http).unwrap();
    }
}
