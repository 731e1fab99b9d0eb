//! Reloads plugin slots when their files change.
//!
//! [`PluginWatcher`] watches the directory of each plugin file (editors and
//! `cargo build` replace files by rename, which a watch on the file itself
//! would miss), debounces bursts of events, and hands the new bytes to the
//! file's [`PluginSlot`] on the watcher's own thread. Compiling and checking
//! happen there, never on a request path.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use notify::RecursiveMode;
use notify_debouncer_full::{DebounceEventResult, Debouncer, RecommendedCache, new_debouncer};

use super::PluginSlot;

/// Default quiet period after the last change before a file is reloaded:
/// 200 ms, long enough for a compiler or `cp` to finish writing.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(200);

/// Watches plugin files; dropping it stops watching.
pub struct PluginWatcher {
    _debouncer: Debouncer<notify::RecommendedWatcher, RecommendedCache>,
}

fn canonical(path: &Path) -> PathBuf {
    // The file may be mid-replacement; its directory is stable.
    match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) => dir
            .canonicalize()
            .map(|dir| dir.join(name))
            .unwrap_or_else(|_| path.to_path_buf()),
        _ => path.to_path_buf(),
    }
}

impl PluginWatcher {
    /// Starts watching: a change to `path` reloads its slot after `debounce`.
    ///
    /// # Errors
    /// When a directory cannot be watched (missing, or out of inotify
    /// watches).
    pub fn start(
        slots: Vec<(PathBuf, Arc<PluginSlot>)>,
        debounce: Duration,
    ) -> Result<PluginWatcher> {
        let by_path: HashMap<PathBuf, Arc<PluginSlot>> = slots
            .into_iter()
            .map(|(path, slot)| (canonical(&path), slot))
            .collect();
        let directories: HashSet<PathBuf> = by_path
            .keys()
            .filter_map(|p| p.parent().map(Path::to_path_buf))
            .collect();
        let handler_slots = by_path.clone();
        let mut debouncer = new_debouncer(debounce, None, move |result: DebounceEventResult| {
            let events = match result {
                Ok(events) => events,
                Err(errors) => {
                    errors.iter().for_each(|error| tracing::warn!(%error, "plugin watcher error"));
                    return;
                }
            };
            let changed: HashSet<PathBuf> = events
                .iter()
                .filter(|e| e.kind.is_create() || e.kind.is_modify())
                .flat_map(|e| e.paths.iter().map(|p| canonical(p)))
                .filter(|p| handler_slots.contains_key(p))
                .collect();
            for path in changed {
                let slot = &handler_slots[&path];
                match std::fs::read(&path) {
                    Ok(bytes) => {
                        // The slot logs and records the outcome either way.
                        let _ = slot.reload(&bytes);
                    }
                    Err(error) => tracing::warn!(path = %path.display(), %error, "cannot read a changed plugin file"),
                }
            }
        })
        .context("starting the plugin file watcher")?;
        for directory in directories {
            debouncer
                .watch(&directory, RecursiveMode::NonRecursive)
                .with_context(|| format!("watching {}", directory.display()))?;
        }
        Ok(PluginWatcher {
            _debouncer: debouncer,
        })
    }
}
