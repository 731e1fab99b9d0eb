//! Named crash points for the crash harness (`tests/all/crash.rs`).
//!
//! Every durability step of the checkpoint protocol calls [`point`] with
//! its name. When the environment variable `WEIR_CRASH_AT` is
//! `NAME:K`, the K-th call (1-based) of point `NAME` sends SIGKILL to the
//! process itself: no destructor runs, no buffer is flushed, exactly as if
//! the machine lost power at that step (except for the page cache, which
//! survives a killed process). Without the variable a point costs one
//! relaxed atomic load.
//!
//! The points, in the order an epoch reaches them: `mid-read`,
//! `mid-part-write`, `after-part-fsync`, `mid-checkpoint-write`,
//! `after-checkpoint-rename`, `mid-commit-rename`, `after-commit`
//! (before the sources are acknowledged), `after-ack`, and for the end of a
//! `weir run`: `mid-publish`, `after-publish`. The PostgreSQL sink adds,
//! inside its prepare step: `mid-copy` (after each chunk of rows sent to
//! the server), `before-pg-commit` (rows and epoch record sent, `COMMIT`
//! not), `after-pg-commit` (committed in the database, not yet in weir's
//! checkpoint).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The environment variable that arms a crash point: `NAME:K`.
pub const ENV: &str = "WEIR_CRASH_AT";

struct Armed {
    name: String,
    hit: u64,
    seen: AtomicU64,
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let value = std::env::var(ENV).ok()?;
            let (name, hit) = value.rsplit_once(':')?;
            Some(Armed {
                name: name.to_string(),
                hit: hit.parse().ok().filter(|&k| k > 0)?,
                seen: AtomicU64::new(0),
            })
        })
        .as_ref()
}

/// Kills the process with SIGKILL if `WEIR_CRASH_AT` names this point and
/// this is its K-th hit; otherwise returns at once.
pub fn point(name: &str) {
    let Some(armed) = armed() else { return };
    if armed.name != name {
        return;
    }
    if armed.seen.fetch_add(1, Ordering::Relaxed) + 1 == armed.hit {
        // SAFETY: kill(2) on our own pid has no memory-safety preconditions.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
        // SIGKILL cannot be caught; wait for it to land.
        loop {
            std::thread::park();
        }
    }
}
