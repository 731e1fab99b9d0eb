//! Requests on their way into a hosted pipeline: received (their headers
//! read) but whose records are not yet queued for a micro-batch.
//!
//! The batcher uses the count to cut a micro-batch as soon as waiting
//! longer cannot add to it: when no record has come for `quiet_ms` and no
//! request is still being read or decoded ([`super::live`]). Clients that
//! wait for their answer before posting again (most HTTP clients) then
//! share a micro-batch without waiting out `linger_ms`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

/// The requests of one pipeline on their way to its queue.
#[derive(Debug, Default)]
pub struct Arrivals {
    on_the_way: AtomicUsize,
    changed: Notify,
}

impl Arrivals {
    /// Counts one more request on its way until the returned guard is
    /// dropped (once its records are queued, or it failed).
    pub fn expect(self: &Arc<Self>) -> Arrival {
        self.on_the_way.fetch_add(1, Ordering::AcqRel);
        Arrival {
            arrivals: self.clone(),
        }
    }

    /// Requests on their way now.
    pub fn on_the_way(&self) -> usize {
        self.on_the_way.load(Ordering::Acquire)
    }

    /// Waits until a request stops being on its way (it may have already
    /// happened since the last call: one such wake-up is kept).
    pub async fn changed(&self) {
        self.changed.notified().await;
    }
}

/// One request on its way; see [`Arrivals::expect`].
#[derive(Debug)]
pub struct Arrival {
    arrivals: Arc<Arrivals>,
}

impl Drop for Arrival {
    fn drop(&mut self) {
        self.arrivals.on_the_way.fetch_sub(1, Ordering::AcqRel);
        self.arrivals.changed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counts_requests_until_their_guards_drop() {
        let arrivals = Arc::new(Arrivals::default());
        let first = arrivals.expect();
        let second = arrivals.expect();
        assert_eq!(arrivals.on_the_way(), 2);
        drop(first);
        assert_eq!(arrivals.on_the_way(), 1);
        // The drop's wake-up is kept for a waiter that comes later.
        tokio::time::timeout(std::time::Duration::from_secs(1), arrivals.changed())
            .await
            .expect("a dropped arrival wakes the batcher");
        drop(second);
        assert_eq!(arrivals.on_the_way(), 0);
    }
}
