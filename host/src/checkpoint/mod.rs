//! The checkpoint protocol: exactly-once output across crashes.
//!
//! Work is cut into **epochs**. For each epoch:
//!
//! 1. **prepare**: every sink and the quarantine finish the epoch's files
//!    in a staging directory and fsync them;
//! 2. **checkpoint**: the coordinator durably records the epoch, every
//!    source's position at its end and every prepared part
//!    ([`write_atomic`]: temporary file, fsync, rename, fsync of the
//!    directory; or one framed record of a [`log::Log`]);
//! 3. **commit**: the parts are renamed into their committed place, an
//!    idempotent step (a part already in place is left alone);
//! 4. **acknowledge**: only now are sources told the epoch's input is done
//!    (a dropped file moved to `.done/`, an HTTP client answered).
//!
//! A crash before step 2 loses only staged files, which recovery removes,
//! and the source resumes from the previous epoch's position; a crash
//! after step 2 is finished by recovery, which commits the recorded parts
//! again (a no-op where done). So a record is in the output exactly once,
//! and a source is acknowledged only for committed records.
//!
//! [`run`] applies it to `weir run` (resumable batch runs);
//! `serve::exactly_once` to `weir serve` (idempotency keys, the drop
//! directory). The protocol follows the two-phase commit sinks of Flink
//! (`TwoPhaseCommitSinkFunction`) and Kafka Connect's offset commits.
//! `docs/delivery.md` is the user's account.

pub mod log;
pub mod run;

pub use crate::durable::{
    fsync_dir, fsync_file, read_verified, sha256_file, tmp_path, write_atomic, xxh3_file,
};
