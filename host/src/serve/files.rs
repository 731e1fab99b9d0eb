//! Files only the service's user may read: the state directory (tokens,
//! checkpoints, attempt logs) and uploaded plugins.
//!
//! Created 0600 (files) and 0700 (directories) whatever the umask, so a
//! token hash or a tenant's plugin is not world-readable under the common
//! umask 022. Sink and quarantine files follow the umask: they are the
//! pipeline's output, shared as the operator decides (docs/security.md).

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

#[cfg(unix)]
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};

/// Creates `dir` and its missing parents with mode 0700.
///
/// # Errors
/// When a directory cannot be created.
pub fn create_private_dir_all(dir: &Path) -> Result<()> {
    let mut builder = DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    builder.mode(0o700);
    builder
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}

/// Writes `bytes` to `path` (created or truncated) with mode 0600.
///
/// # Errors
/// When the file cannot be written.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    restrict(&file, path)?;
    file.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))
}

/// Opens `path` for appending (created with mode 0600).
///
/// # Errors
/// When the file cannot be opened.
pub fn append_private(path: &Path) -> Result<File> {
    let mut options = OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    options.mode(0o600);
    let file = options
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    restrict(&file, path)?;
    Ok(file)
}

/// Sets 0600 on a file that existed before with a wider mode (a state
/// directory from an older weir).
fn restrict(file: &File, path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = file.metadata()?.permissions().mode();
        if mode & 0o077 != 0 {
            file.set_permissions(std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("restricting {}", path.display()))?;
        }
    }
    #[cfg(not(unix))]
    let _ = (file, path);
    Ok(())
}
