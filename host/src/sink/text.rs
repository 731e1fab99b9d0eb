//! Concatenating line-oriented text parts (CSV, JSON Lines) byte for byte.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Appends text `parts` to `output`, dropping the first line of every
/// part but the first when `skip_header`.
///
/// # Errors
/// An unreadable part or an I/O error.
pub fn concat_lines(parts: &[PathBuf], output: &Path, skip_header: bool) -> Result<()> {
    let mut out = BufWriter::new(File::create(output)?);
    for (i, part) in parts.iter().enumerate() {
        let mut input = BufReader::new(
            File::open(part).with_context(|| format!("opening {}", part.display()))?,
        );
        if skip_header && i > 0 {
            let mut header = Vec::new();
            input.read_until(b'\n', &mut header)?;
        }
        std::io::copy(&mut input, &mut out)?;
    }
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok(())
}
