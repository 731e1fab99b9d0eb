//! An append-only log of checkpoint records, for coordinators that
//! checkpoint often (`weir serve` records one per committed request).
//!
//! Each record is a frame: its length (u32, little-endian), the CRC-32 of
//! its bytes (u32, little-endian), then the bytes. [`Log::append`] writes
//! one frame and fsyncs the file before returning. A crash mid-append
//! leaves a torn last frame (short, or failing its CRC); [`Log::open`]
//! detects it, ignores it and cuts it off, so it is never trusted. A bad
//! frame that is *not* the last (bytes follow it) is damage, not a torn
//! write, and refuses to open. [`Log::rewrite`] compacts the log
//! atomically (temporary file, fsync, rename, fsync of the directory).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// Bytes before each record: length and CRC-32.
const FRAME_HEADER: usize = 8;

/// Largest record accepted, in bytes (a longer length field is damage).
pub const MAX_RECORD_BYTES: usize = 16 << 20;

/// An open checkpoint log.
#[derive(Debug)]
pub struct Log {
    path: PathBuf,
    file: File,
    /// Records in the file.
    records: usize,
    /// Bytes in the file.
    bytes: u64,
}

/// What [`Log::open`] found.
#[derive(Debug)]
pub struct Opened {
    /// The log, positioned for appending.
    pub log: Log,
    /// Every intact record, oldest first.
    pub records: Vec<Vec<u8>>,
    /// Bytes of a torn last record that were cut off (0 when none).
    pub torn_bytes: u64,
}

fn frame(record: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME_HEADER + record.len());
    out.extend_from_slice(&(record.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(record).to_le_bytes());
    out.extend_from_slice(record);
    out
}

impl Log {
    /// Opens (creating) the log at `path` and reads its records.
    ///
    /// # Errors
    /// An I/O error, or a damaged frame followed by more data (the file was
    /// edited or damaged; the message names it and says how to reset).
    pub fn open(path: &Path) -> Result<Opened> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        let _ = std::fs::remove_file(super::tmp_path(path));
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .with_context(|| format!("opening checkpoint log {}", path.display()))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .with_context(|| format!("reading checkpoint log {}", path.display()))?;
        let mut records = Vec::new();
        let mut at = 0usize;
        while at < bytes.len() {
            let rest = &bytes[at..];
            let intact = (rest.len() >= FRAME_HEADER)
                .then(|| {
                    let len = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
                    let crc = u32::from_le_bytes(rest[4..8].try_into().unwrap());
                    let body = rest.get(FRAME_HEADER..FRAME_HEADER + len)?;
                    (len <= MAX_RECORD_BYTES && crc32fast::hash(body) == crc).then_some(len)
                })
                .flatten();
            match intact {
                Some(len) => {
                    records.push(rest[FRAME_HEADER..FRAME_HEADER + len].to_vec());
                    at += FRAME_HEADER + len;
                }
                None => {
                    let claimed = rest
                        .get(..4)
                        .map(|l| u32::from_le_bytes(l.try_into().unwrap()) as usize)
                        .unwrap_or(0);
                    if rest.len() > FRAME_HEADER + claimed.min(MAX_RECORD_BYTES) {
                        bail!(
                            "checkpoint log {} is damaged at byte {at} (record {} fails its checksum and more data follows): it was edited or the disk lost data. Nothing was changed; move it away to start this pipeline's delivery state afresh (idempotency keys and dropped-file records are then forgotten)",
                            path.display(),
                            records.len() + 1
                        );
                    }
                    break;
                }
            }
        }
        let torn_bytes = (bytes.len() - at) as u64;
        if torn_bytes > 0 {
            tracing::warn!(log = %path.display(), torn_bytes, "a torn last checkpoint record (crash mid-write) was ignored and cut off");
            file.set_len(at as u64)
                .and_then(|()| file.sync_all())
                .with_context(|| format!("cutting the torn record off {}", path.display()))?;
        }
        file.seek(SeekFrom::End(0))?;
        Ok(Opened {
            log: Log {
                path: path.to_path_buf(),
                file,
                records: records.len(),
                bytes: at as u64,
            },
            records,
            torn_bytes,
        })
    }

    /// Appends `record` and fsyncs it: when this returns, the record
    /// survives a crash. Crash points: `mid-checkpoint-write` (half the
    /// frame written), `after-checkpoint-append`.
    ///
    /// # Errors
    /// An I/O error or a record over [`MAX_RECORD_BYTES`]; a partial frame
    /// left by an I/O error is cut off by the next [`Log::open`].
    pub fn append(&mut self, record: &[u8]) -> Result<()> {
        anyhow::ensure!(
            record.len() <= MAX_RECORD_BYTES,
            "a checkpoint record of {} bytes is over the {MAX_RECORD_BYTES}-byte limit",
            record.len()
        );
        let framed = frame(record);
        let half = framed.len() / 2;
        self.file
            .write_all(&framed[..half])
            .with_context(|| format!("appending to {}", self.path.display()))?;
        crate::crash::point("mid-checkpoint-write");
        self.file
            .write_all(&framed[half..])
            .and_then(|()| self.file.sync_data())
            .with_context(|| format!("appending to {}", self.path.display()))?;
        self.records += 1;
        self.bytes += framed.len() as u64;
        crate::crash::point("after-checkpoint-append");
        Ok(())
    }

    /// Replaces the whole log with `records`, atomically.
    ///
    /// # Errors
    /// An I/O error; the log then keeps its old contents.
    pub fn rewrite<'a>(&mut self, records: impl IntoIterator<Item = &'a [u8]>) -> Result<()> {
        let tmp = super::tmp_path(&self.path);
        let mut out = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let mut count = 0;
        let mut bytes = 0u64;
        for record in records {
            let framed = frame(record);
            out.write_all(&framed)?;
            count += 1;
            bytes += framed.len() as u64;
        }
        out.sync_all()?;
        drop(out);
        std::fs::rename(&tmp, &self.path)
            .with_context(|| format!("replacing {}", self.path.display()))?;
        super::fsync_dir(self.path.parent().unwrap_or(Path::new(".")))?;
        self.file = OpenOptions::new()
            .append(true)
            .read(true)
            .open(&self.path)?;
        self.records = count;
        self.bytes = bytes;
        Ok(())
    }

    /// The log's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records in the log.
    pub fn records(&self) -> usize {
        self.records
    }

    /// Size of the log, in bytes.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_reopening_and_a_torn_tail_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("delivery.log");
        let mut log = Log::open(&path).unwrap().log;
        log.append(b"one").unwrap();
        log.append(b"two").unwrap();
        drop(log);
        // A crash mid-append: half a frame.
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(&frame(b"three")[..7]).unwrap();
        drop(file);
        let opened = Log::open(&path).unwrap();
        assert_eq!(opened.records, vec![b"one".to_vec(), b"two".to_vec()]);
        assert_eq!(opened.torn_bytes, 7);
        let mut log = opened.log;
        log.append(b"four").unwrap();
        drop(log);
        let opened = Log::open(&path).unwrap();
        assert_eq!(opened.records.len(), 3);
        assert_eq!(opened.torn_bytes, 0);
        let mut log = opened.log;
        log.rewrite([b"four".as_slice()]).unwrap();
        assert_eq!(Log::open(&path).unwrap().records, vec![b"four".to_vec()]);
    }

    #[test]
    fn damage_before_the_last_record_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("delivery.log");
        let mut log = Log::open(&path).unwrap().log;
        log.append(b"first record").unwrap();
        log.append(b"second record").unwrap();
        drop(log);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[FRAME_HEADER + 2] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        let error = Log::open(&path).unwrap_err().to_string();
        assert!(error.contains("damaged at byte 0"), "{error}");
    }
}
