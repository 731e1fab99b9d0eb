//! The service's open HTTP connections, and how many are inside a
//! request.
//!
//! An HTTP/1.1 connection carries one request at a time: while every open
//! connection is inside a request (its client waiting for the answer), no
//! client can send anything more except on a new connection. The batcher
//! ([`super::live`]) then cuts its micro-batch at once instead of waiting
//! out `quiet_ms` for records that cannot come: with four clients that
//! wait for their answers, that wait was 2 ms of an 18 ms round.
//!
//! Every request counts, whatever it asks (another pipeline, `/metrics`):
//! a connection inside any request cannot post here until it is answered.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Counts of the service's connections, shared by the server loop
/// ([`super::http`]) and the pipelines' batchers.
#[derive(Debug, Default)]
pub struct Connections {
    open: AtomicUsize,
    busy: AtomicUsize,
}

impl Connections {
    /// Counts one more open connection until the guard is dropped.
    pub fn opened(self: &Arc<Self>) -> Counted {
        self.open.fetch_add(1, Ordering::AcqRel);
        Counted {
            count: self.clone(),
            busy: false,
        }
    }

    /// Counts one more request being served until the guard is dropped
    /// (once its response is handed to the connection).
    pub fn serving(self: &Arc<Self>) -> Counted {
        self.busy.fetch_add(1, Ordering::AcqRel);
        Counted {
            count: self.clone(),
            busy: true,
        }
    }

    /// At least one connection is open and every open one is inside a
    /// request.
    pub fn all_busy(&self) -> bool {
        // The two counts are read one after the other, so a request that
        // ends in between can make this true a moment late or early: the
        // batcher then cuts a micro-batch up to `quiet_ms` early or late,
        // which changes batch sizes, never what is written.
        let busy = self.busy.load(Ordering::Acquire);
        let open = self.open.load(Ordering::Acquire);
        open > 0 && busy >= open
    }
}

/// Keeps one connection or request counted while alive.
#[derive(Debug)]
pub struct Counted {
    count: Arc<Connections>,
    busy: bool,
}

impl Drop for Counted {
    fn drop(&mut self) {
        let counter = match self.busy {
            true => &self.count.busy,
            false => &self.count.open,
        };
        counter.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_busy_only_while_every_open_connection_is_inside_a_request() {
        let connections = Arc::new(Connections::default());
        assert!(!connections.all_busy(), "no connection: nothing to wait on");
        let first = connections.opened();
        let second = connections.opened();
        let serving = connections.serving();
        assert!(!connections.all_busy(), "one of two idle");
        let serving_too = connections.serving();
        assert!(connections.all_busy());
        drop(serving);
        assert!(!connections.all_busy(), "an answered client may post again");
        drop(serving_too);
        drop((first, second));
        assert!(!connections.all_busy());
    }
}
