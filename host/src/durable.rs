//! Durable file operations: fsync of files and directories, atomic
//! replacement with a checksum, content hashes. Used by the checkpoint
//! protocol and by the sinks that prepare files for it.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use sha2::Digest;

/// Marker that starts the checksum line of a file written by
/// [`write_atomic`].
const CHECKSUM_PREFIX: &str = "\nsha256:";

/// fsyncs the directory `dir`, so that a rename or a new file inside it
/// survives a power loss (the rename itself is atomic, but its durability
/// needs the directory's metadata on disk).
///
/// # Errors
/// The directory cannot be opened or synced.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    // `Path::parent` of a bare file name is the empty path: the current
    // directory.
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing directory {}", dir.display()))
}

/// fsyncs the file at `path`.
///
/// # Errors
/// The file cannot be opened or synced.
pub fn fsync_file(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("syncing {}", path.display()))
}

/// Durably replaces `path` with `contents` followed by a checksum line:
/// written to `PATH.tmp`, fsynced, renamed over `path`, and the directory
/// fsynced. A crash at any step leaves either the old file or the new
/// one, never a mix; a leftover `PATH.tmp` is a torn write and
/// [`read_verified`] ignores it.
///
/// Crash points: `mid-checkpoint-write` (half the bytes written) and
/// `after-checkpoint-rename`.
///
/// # Errors
/// An I/O error; `path` then still holds its previous contents.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<()> {
    let tmp = tmp_path(path);
    let dir = path.parent().unwrap_or(Path::new("."));
    let checksum = hex::encode(sha2::Sha256::digest(contents));
    let mut file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let half = contents.len() / 2;
    file.write_all(&contents[..half])
        .and_then(|()| file.flush())
        .with_context(|| format!("writing {}", tmp.display()))?;
    crate::crash::point("mid-checkpoint-write");
    file.write_all(&contents[half..])
        .and_then(|()| writeln!(file, "{CHECKSUM_PREFIX}{checksum}"))
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    drop(file);
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    fsync_dir(dir)?;
    crate::crash::point("after-checkpoint-rename");
    Ok(())
}

/// The temporary sibling [`write_atomic`] writes first.
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Reads a file written by [`write_atomic`] and checks its checksum.
/// Returns `None` when the file does not exist; a leftover torn
/// temporary file is removed.
///
/// # Errors
/// The file exists but its checksum line is missing or wrong: it was
/// edited or damaged after it was written, and nothing in it is trusted.
pub fn read_verified(path: &Path) -> Result<Option<Vec<u8>>> {
    let _ = std::fs::remove_file(tmp_path(path));
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let text = std::str::from_utf8(&bytes).ok();
    let verified = text.and_then(|text| {
        let (contents, checksum) = text.rsplit_once(CHECKSUM_PREFIX)?;
        let actual = hex::encode(sha2::Sha256::digest(contents.as_bytes()));
        (checksum.trim_end() == actual).then(|| contents.as_bytes().to_vec())
    });
    match verified {
        Some(contents) => Ok(Some(contents)),
        None => bail!(
            "{} fails its checksum: it was edited or damaged after weir wrote it, so it cannot be trusted",
            path.display()
        ),
    }
}

/// SHA-256 of a file's contents, hex.
///
/// # Errors
/// The file cannot be read.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = sha2::Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = std::io::Read::read(&mut file, &mut buffer)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_atomic_write_reads_back_and_an_edit_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("checkpoint.json");
        assert!(read_verified(&path).unwrap().is_none());
        write_atomic(&path, b"{\"epoch\":1}").unwrap();
        assert_eq!(read_verified(&path).unwrap().unwrap(), b"{\"epoch\":1}");
        write_atomic(&path, b"{\"epoch\":2}").unwrap();
        assert_eq!(read_verified(&path).unwrap().unwrap(), b"{\"epoch\":2}");
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace("2", "3")).unwrap();
        let error = read_verified(&path).unwrap_err().to_string();
        assert!(error.contains("fails its checksum"), "{error}");
    }

    #[test]
    fn a_torn_temporary_file_is_ignored_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("checkpoint.json");
        write_atomic(&path, b"old").unwrap();
        std::fs::write(tmp_path(&path), b"{\"epo").unwrap();
        assert_eq!(read_verified(&path).unwrap().unwrap(), b"old");
        assert!(!tmp_path(&path).exists());
    }
}
