//! A circuit breaker per stage: a plugin that fails batch after batch is
//! marked unhealthy and not called for a while, so that a broken version
//! costs one quick quarantine per batch instead of a full deadline each.
//!
//! The usual three states (Nygard, *Release It!*, "Circuit Breaker"):
//!
//! - **closed**: calls go through; each batch in which no call of the
//!   plugin succeeded counts a failure, a batch with any success resets the
//!   count. `failures` failures in a row open the breaker.
//! - **open**: no call is made; batches are quarantined at once with kind
//!   `circuit_open` (replayable). After the backoff the breaker half-opens.
//! - **half-open**: exactly one batch is let through as a probe. Success
//!   closes the breaker; failure opens it again with the backoff doubled,
//!   up to `max_backoff_ms`.
//!
//! A reload or rollback of the stage's plugin closes the breaker: a new
//! version gets a fresh chance.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// When a stage's plugin counts as unhealthy, and for how long it rests.
/// Set per stage in the pipeline file under `[stages.breaker]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Batches in a row with no successful call that open the breaker.
    /// Default 5; 0 never opens it.
    pub failures: u32,
    /// First rest after opening, in milliseconds. Default 1,000.
    pub backoff_ms: u64,
    /// Longest rest, in milliseconds: the backoff doubles at each failed
    /// probe up to this. Default 60,000.
    pub max_backoff_ms: u64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failures: 5,
            backoff_ms: 1_000,
            max_backoff_ms: 60_000,
        }
    }
}

/// The state of a breaker, for the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Healthy: calls go through.
    Closed,
    /// Unhealthy: batches are quarantined without a call until the backoff ends.
    Open,
    /// One probe batch is being let through.
    HalfOpen,
}

/// What the breaker says about the next batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Call the plugin, then report with [`CircuitBreaker::record`].
    Call,
    /// Do not call it; it rests for this much longer.
    Rest(Duration),
}

/// A snapshot of a breaker, for `GET /v1/plugins` and metrics.
#[derive(Debug, Clone, Serialize)]
pub struct BreakerStatus {
    /// closed, open or half_open.
    pub state: BreakerState,
    /// Whether the plugin is currently considered healthy (`state` closed).
    pub healthy: bool,
    /// Batches in a row with no successful call.
    pub consecutive_failures: u32,
    /// Times the breaker opened since the service started.
    pub trips: u64,
    /// While open: milliseconds until the next probe.
    pub retry_in_ms: Option<u64>,
}

#[derive(Debug)]
struct Inner {
    state: BreakerState,
    consecutive_failures: u32,
    trips: u64,
    backoff: Duration,
    open_until: Option<Instant>,
}

/// One stage's breaker, shared by every worker running that stage.
#[derive(Debug)]
pub struct CircuitBreaker {
    config: BreakerConfig,
    inner: Mutex<Inner>,
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                consecutive_failures: 0,
                trips: 0,
                backoff: Duration::from_millis(config.backoff_ms),
                open_until: None,
            }),
        }
    }

    /// Whether the next batch may call the plugin. An open breaker whose
    /// backoff has ended half-opens and admits this one batch as its probe.
    pub fn admit(&self) -> Admission {
        let mut inner = self.inner.lock().expect("breaker lock");
        match inner.state {
            BreakerState::Closed => Admission::Call,
            // Only the probe runs while half-open.
            BreakerState::HalfOpen => Admission::Rest(Duration::ZERO),
            BreakerState::Open => {
                let until = inner.open_until.unwrap_or_else(Instant::now);
                let now = Instant::now();
                if now >= until {
                    inner.state = BreakerState::HalfOpen;
                    Admission::Call
                } else {
                    Admission::Rest(until - now)
                }
            }
        }
    }

    /// Reports an admitted batch: `succeeded` when at least one call of the
    /// plugin on it returned normally. Returns true when this opened the
    /// breaker.
    pub fn record(&self, succeeded: bool) -> bool {
        let mut inner = self.inner.lock().expect("breaker lock");
        if succeeded {
            inner.state = BreakerState::Closed;
            inner.consecutive_failures = 0;
            inner.backoff = Duration::from_millis(self.config.backoff_ms);
            inner.open_until = None;
            return false;
        }
        inner.consecutive_failures = inner.consecutive_failures.saturating_add(1);
        let open = match inner.state {
            BreakerState::HalfOpen => {
                let max = Duration::from_millis(self.config.max_backoff_ms);
                inner.backoff = (inner.backoff * 2).min(max);
                true
            }
            BreakerState::Closed => {
                self.config.failures > 0 && inner.consecutive_failures >= self.config.failures
            }
            BreakerState::Open => false,
        };
        if open {
            inner.state = BreakerState::Open;
            inner.trips += 1;
            inner.open_until = Some(Instant::now() + inner.backoff);
        }
        open
    }

    /// Closes the breaker (a new plugin version was swapped in).
    pub fn reset(&self) {
        let mut inner = self.inner.lock().expect("breaker lock");
        inner.state = BreakerState::Closed;
        inner.consecutive_failures = 0;
        inner.backoff = Duration::from_millis(self.config.backoff_ms);
        inner.open_until = None;
    }

    /// Its current state.
    pub fn status(&self) -> BreakerStatus {
        let inner = self.inner.lock().expect("breaker lock");
        BreakerStatus {
            state: inner.state,
            healthy: inner.state == BreakerState::Closed,
            consecutive_failures: inner.consecutive_failures,
            trips: inner.trips,
            retry_in_ms: (inner.state == BreakerState::Open).then(|| {
                inner.open_until.map_or(0, |t| {
                    t.saturating_duration_since(Instant::now()).as_millis() as u64
                })
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(failures: u32, backoff_ms: u64) -> CircuitBreaker {
        CircuitBreaker::new(BreakerConfig {
            failures,
            backoff_ms,
            max_backoff_ms: 4 * backoff_ms,
        })
    }

    #[test]
    fn opens_after_failures_in_a_row_and_a_success_resets_the_count() {
        let b = breaker(3, 60_000);
        assert!(!b.record(false));
        assert!(!b.record(false));
        assert!(!b.record(true), "a success resets");
        assert!(!b.record(false));
        assert!(!b.record(false));
        assert!(b.record(false), "third failure in a row opens");
        assert!(matches!(b.admit(), Admission::Rest(d) if d > Duration::from_secs(50)));
        let status = b.status();
        assert_eq!(status.state, BreakerState::Open);
        assert!(!status.healthy);
        assert_eq!(status.trips, 1);
    }

    #[test]
    fn half_open_admits_one_probe_and_doubles_the_backoff_on_failure() {
        let b = breaker(1, 20);
        assert!(b.record(false));
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(b.admit(), Admission::Call, "the probe");
        assert_eq!(
            b.admit(),
            Admission::Rest(Duration::ZERO),
            "only one probe at a time"
        );
        assert!(b.record(false), "a failed probe opens again");
        match b.admit() {
            Admission::Rest(d) => assert!(d > Duration::from_millis(25), "doubled: {d:?}"),
            Admission::Call => panic!("still open"),
        }
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(b.admit(), Admission::Call);
        assert!(!b.record(true));
        assert_eq!(b.status().state, BreakerState::Closed);
        assert_eq!(b.status().trips, 2);
    }

    #[test]
    fn zero_failures_never_opens_and_reset_closes() {
        let b = breaker(0, 10);
        for _ in 0..100 {
            assert!(!b.record(false));
        }
        assert_eq!(b.admit(), Admission::Call);
        let b = breaker(1, 60_000);
        b.record(false);
        b.reset();
        assert_eq!(b.admit(), Admission::Call);
        assert_eq!(b.status().trips, 1, "trips are kept");
    }
}
