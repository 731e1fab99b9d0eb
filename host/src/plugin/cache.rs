//! On-disk cache of compiled components.
//!
//! Compiling a component with Cranelift costs from tens of milliseconds to
//! seconds; loading the compiled artifact costs well under a millisecond.
//! Artifacts are stored as `<dir>/<engine-hash>/<component-sha256>.cwasm`:
//! the first key is [`wasmtime::Engine::precompile_compatibility_hash`] (the
//! wasmtime version and every setting that affects code generation), the
//! second the SHA-256 of the component bytes. Only this cache writes into
//! that directory; weir never loads a precompiled artifact a user supplies.
//!
//! The directory is `$WEIR_CACHE_DIR`, else `$XDG_CACHE_HOME/weir`, else
//! `$HOME/.cache/weir`; set `WEIR_CACHE_DIR=off` to disable caching.
//!
//! A **scope** (a `weir serve` tenant's name) adds a directory level,
//! `<dir>/<engine-hash>/<scope>/…`: a tenant's uploads and reloads are
//! cached apart from every other tenant's, so the time an upload takes
//! cannot tell a tenant whether another tenant compiled the same bytes.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Where compiled artifacts live, or `None` when caching is off.
pub fn cache_dir() -> Option<PathBuf> {
    match std::env::var_os("WEIR_CACHE_DIR") {
        Some(dir) if dir == "off" => None,
        Some(dir) => Some(PathBuf::from(dir)),
        None => std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache")))
            .map(|base| base.join("weir")),
    }
}

/// Deletes the compiled artifact of the component whose SHA-256 hex is
/// `sha256` from `scope`'s part of the cache (every engine version's),
/// when caching is on; a missing artifact is not an error. `weir serve`
/// calls it when it deletes a tenant's stored upload, so the cache does
/// not keep growing with uploads nobody uses.
pub fn remove(scope: &str, sha256: &str) {
    let Some(dir) = cache_dir() else {
        return;
    };
    let Ok(engines) = std::fs::read_dir(&dir) else {
        return;
    };
    for engine in engines.flatten() {
        let artifact = engine
            .path()
            .join(format!("tenant-{scope}"))
            .join(format!("{sha256}.cwasm"));
        match std::fs::remove_file(&artifact) {
            Ok(()) => tracing::info!(path = %artifact.display(), "deleted a cached artifact"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                tracing::warn!(path = %artifact.display(), %error, "could not delete a cached artifact")
            }
        }
    }
}

/// How a component was obtained, for reports and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Compiled now (and stored, if caching is on).
    Compiled,
    /// Loaded from the artifact cache.
    Cached,
}

fn engine_key(engine: &Engine) -> String {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

/// Returns the compiled component for `bytes` (whose SHA-256 hex is
/// `sha256`), from the cache (of `scope`, when given) when possible, else
/// compiling and storing it.
///
/// # Errors
/// When `bytes` is not a valid component. A cache that cannot be read or
/// written is not an error: weir compiles instead and logs a warning.
pub fn load_or_compile(
    engine: &Engine,
    bytes: &[u8],
    sha256: &str,
    scope: Option<&str>,
) -> Result<(Component, Origin)> {
    let Some(dir) = cache_dir() else {
        return Ok((Component::new(engine, bytes)?, Origin::Compiled));
    };
    let mut dir = dir.join(engine_key(engine));
    if let Some(scope) = scope {
        dir = dir.join(format!("tenant-{scope}"));
    }
    let path = dir.join(format!("{sha256}.cwasm"));
    if path.is_file() {
        // SAFETY: the file was written by `store` below from the output of
        // `Component::serialize` of this exact engine configuration (the
        // directory is keyed by its compatibility hash) and the file name is
        // the hash of the source bytes; wasmtime additionally checks the
        // artifact's header against the engine before using it.
        match unsafe { Component::deserialize_file(engine, &path) } {
            Ok(component) => return Ok((component, Origin::Cached)),
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "ignoring unusable cached artifact")
            }
        }
    }
    let component = Component::new(engine, bytes)?;
    if let Err(error) = store(&component, &dir, &path) {
        tracing::warn!(dir = %dir.display(), %error, "could not write the compiled-artifact cache");
    }
    Ok((component, Origin::Compiled))
}

/// Writes atomically: a temporary file in the same directory, then rename,
/// so a concurrent reader never sees half an artifact.
fn store(component: &Component, dir: &Path, path: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let artifact = component.serialize()?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut tmp, &artifact)?;
    tmp.persist(path)?;
    Ok(())
}
