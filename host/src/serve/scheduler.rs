//! Fair sharing of the service's batch slots between tenants.
//!
//! The service runs at most `max_running_batches` micro-batches at once
//! (default: the number of cores), whichever tenant they belong to. While
//! fewer are ready, every ready batch runs at once (the scheduler is work
//! conserving). When more are ready, a freed slot goes to the waiting
//! tenant that has received the least slot time for its weight:
//!
//! - each tenant has a virtual time, which grows by `seconds / weight` for
//!   every second one of its batches holds a slot (counted while the batch
//!   runs, not only when it ends, so a tenant with a long batch running is
//!   already behind);
//! - the slot goes to the waiting tenant with the smallest virtual time,
//!   and within a tenant to its oldest waiting batch;
//! - a tenant that had nothing running or waiting re-enters at no less than
//!   the smallest virtual time of the tenants with work, so idling banks no
//!   credit it could later use to shut the others out.
//!
//! This is stride scheduling (Waldspurger and Weihl, 1995) with the
//! re-entry rule of Linux's Completely Fair Scheduler (`min_vruntime`),
//! applied to batch slots instead of CPU time slices. A tenant flooding
//! slow or looping batches thus gets its weighted share of the slots and no
//! more while others have work, and a light tenant's batch waits at most
//! for one slot to free up. Within its share, a tenant is further bounded
//! by its own quotas (see [`super::tenant`]).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;
use tokio::sync::oneshot;

/// The service-wide batch scheduler; see the module docs.
#[derive(Debug)]
pub struct FairScheduler {
    slots: usize,
    epoch: Instant,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    running: usize,
    accounts: HashMap<Arc<str>, Account>,
}

#[derive(Debug)]
struct Account {
    weight: f64,
    /// Virtual time of its finished slot time, in weighted seconds.
    vtime: f64,
    running: usize,
    /// Sum of the start times (seconds since `epoch`) of its running batches.
    started_sum: f64,
    waiting: VecDeque<oneshot::Sender<f64>>,
    /// Slot time used by its finished batches, in seconds.
    used_seconds: f64,
}

impl Account {
    fn new(weight: f64) -> Account {
        Account {
            weight,
            vtime: 0.0,
            running: 0,
            started_sum: 0.0,
            waiting: VecDeque::new(),
            used_seconds: 0.0,
        }
    }

    /// Virtual time at `now` (seconds since the epoch), running batches
    /// included.
    fn vtime_at(&self, now: f64) -> f64 {
        self.vtime + (self.running as f64 * now - self.started_sum) / self.weight
    }

    fn has_work(&self) -> bool {
        self.running > 0 || !self.waiting.is_empty()
    }
}

/// One tenant's share of the scheduler, for `GET /v1/tenants`.
#[derive(Debug, Clone, Serialize)]
pub struct SchedulerShare {
    /// Its weight.
    pub weight: f64,
    /// Its batches holding a slot now.
    pub running: usize,
    /// Its batches waiting for a slot now.
    pub waiting: usize,
    /// Slot time its finished batches held, in seconds.
    pub slot_seconds: f64,
}

impl FairScheduler {
    /// A scheduler of `slots` batch slots (at least 1).
    pub fn new(slots: usize) -> Arc<FairScheduler> {
        Arc::new(FairScheduler {
            slots: slots.max(1),
            epoch: Instant::now(),
            state: Mutex::new(State::default()),
        })
    }

    /// Declares tenant `tenant` with `weight` (relative share; default 1).
    /// A tenant not declared gets weight 1 on first use.
    pub fn register(&self, tenant: &Arc<str>, weight: f64) {
        let mut state = self.state.lock().expect("scheduler lock");
        state
            .accounts
            .entry(tenant.clone())
            .or_insert_with(|| Account::new(weight))
            .weight = weight.max(f64::MIN_POSITIVE);
    }

    fn now(&self) -> f64 {
        self.epoch.elapsed().as_secs_f64()
    }

    /// Waits for a slot for one of `tenant`'s batches. The slot is held
    /// until the returned guard is dropped.
    pub async fn acquire(self: &Arc<Self>, tenant: &Arc<str>) -> SlotGuard {
        let receiver = match self.enter(tenant, self.now()) {
            Entry::Granted(started) => return self.guard(tenant, started),
            Entry::Wait(receiver) => receiver,
        };
        let mut pending = Pending {
            scheduler: self.clone(),
            tenant: tenant.clone(),
            receiver: Some(receiver),
        };
        let waited = Instant::now();
        let granted = pending.receiver.as_mut().expect("set above").await;
        pending.receiver = None;
        let started = granted.expect("the scheduler drops a waiter's sender only by sending on it");
        metrics::histogram!("weir_scheduler_wait_seconds", "tenant" => tenant.to_string())
            .record(waited.elapsed().as_secs_f64());
        self.guard(tenant, started)
    }

    /// A slot for `tenant` now if one is free and no batch is waiting for
    /// one; never queues. For work a running batch can use but does not
    /// need: `weir serve` runs half of a micro-batch on an idle core. The
    /// slot time is charged to the tenant like any other.
    pub fn try_acquire(self: &Arc<Self>, tenant: &Arc<str>) -> Option<SlotGuard> {
        let now = self.now();
        let mut state = self.state.lock().expect("scheduler lock");
        let anyone_waiting = state.accounts.values().any(|a| !a.waiting.is_empty());
        if state.running >= self.slots || anyone_waiting {
            return None;
        }
        let account = state
            .accounts
            .entry(tenant.clone())
            .or_insert_with(|| Account::new(1.0));
        account.running += 1;
        account.started_sum += now;
        state.running += 1;
        drop(state);
        Some(self.guard(tenant, now))
    }

    /// A batch of `tenant` is ready at `now` (seconds since the epoch).
    fn enter(&self, tenant: &Arc<str>, now: f64) -> Entry {
        let mut state = self.state.lock().expect("scheduler lock");
        let floor = state
            .accounts
            .values()
            .filter(|a| a.has_work())
            .map(|a| a.vtime_at(now))
            .min_by(f64::total_cmp);
        let anyone_waiting = state.accounts.values().any(|a| !a.waiting.is_empty());
        let free = state.running < self.slots;
        let account = state
            .accounts
            .entry(tenant.clone())
            .or_insert_with(|| Account::new(1.0));
        if !account.has_work()
            && let Some(floor) = floor
        {
            account.vtime = account.vtime.max(floor);
        }
        if free && !anyone_waiting {
            account.running += 1;
            account.started_sum += now;
            state.running += 1;
            return Entry::Granted(now);
        }
        let (sender, receiver) = oneshot::channel();
        account.waiting.push_back(sender);
        Entry::Wait(receiver)
    }

    fn guard(self: &Arc<Self>, tenant: &Arc<str>, started: f64) -> SlotGuard {
        SlotGuard {
            scheduler: self.clone(),
            tenant: tenant.clone(),
            started,
        }
    }

    /// Ends a batch of `tenant` that started at `started` (seconds since
    /// the epoch) and hands freed slots to waiting tenants.
    fn release(&self, tenant: &Arc<str>, started: f64) {
        self.release_at(tenant, started, self.now());
    }

    fn release_at(&self, tenant: &Arc<str>, started: f64, now: f64) {
        let mut state = self.state.lock().expect("scheduler lock");
        if let Some(account) = state.accounts.get_mut(tenant) {
            account.running -= 1;
            account.started_sum -= started;
            let held = (now - started).max(0.0);
            account.vtime += held / account.weight;
            account.used_seconds += held;
        }
        state.running -= 1;
        self.dispatch(&mut state, now);
    }

    /// Gives free slots to the waiting tenants with the least virtual time.
    fn dispatch(&self, state: &mut State, now: f64) {
        while state.running < self.slots {
            let Some(next) = state
                .accounts
                .iter()
                .filter(|(_, a)| !a.waiting.is_empty())
                .min_by(|(_, a), (_, b)| a.vtime_at(now).total_cmp(&b.vtime_at(now)))
                .map(|(name, _)| name.clone())
            else {
                return;
            };
            let account = state.accounts.get_mut(&next).expect("found above");
            let sender = account.waiting.pop_front().expect("not empty");
            // A waiter that gave up (its task was cancelled) is skipped.
            if sender.send(now).is_ok() {
                account.running += 1;
                account.started_sum += now;
                state.running += 1;
            }
        }
    }

    /// Each tenant's running and waiting batches and slot time.
    pub fn shares(&self) -> HashMap<String, SchedulerShare> {
        let state = self.state.lock().expect("scheduler lock");
        state
            .accounts
            .iter()
            .map(|(name, a)| {
                (
                    name.to_string(),
                    SchedulerShare {
                        weight: a.weight,
                        running: a.running,
                        waiting: a.waiting.len(),
                        slot_seconds: a.used_seconds,
                    },
                )
            })
            .collect()
    }
}

/// What [`FairScheduler::enter`] decided.
enum Entry {
    /// A slot, taken at this time.
    Granted(f64),
    /// Wait for a slot; the time it was granted arrives here.
    Wait(oneshot::Receiver<f64>),
}

/// A waiter that may be cancelled: if its slot was granted but never
/// taken, the slot is given back.
struct Pending {
    scheduler: Arc<FairScheduler>,
    tenant: Arc<str>,
    receiver: Option<oneshot::Receiver<f64>>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(mut receiver) = self.receiver.take() {
            receiver.close();
            if let Ok(started) = receiver.try_recv() {
                self.scheduler.release(&self.tenant, started);
            }
        }
    }
}

/// A held batch slot; dropping it frees the slot and charges the tenant.
#[derive(Debug)]
pub struct SlotGuard {
    scheduler: Arc<FairScheduler>,
    tenant: Arc<str>,
    started: f64,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.scheduler.release(&self.tenant, self.started);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(n: &str) -> Arc<str> {
        Arc::from(n)
    }

    fn granted(entry: Entry) -> f64 {
        match entry {
            Entry::Granted(at) => at,
            Entry::Wait(_) => panic!("expected a slot"),
        }
    }

    fn waiting(entry: Entry) -> oneshot::Receiver<f64> {
        match entry {
            Entry::Wait(receiver) => receiver,
            Entry::Granted(_) => panic!("expected to wait"),
        }
    }

    /// A slot taken without waiting is only ever an idle one: none while
    /// the slots are full or a batch waits, and it is charged and freed
    /// like any other.
    #[test]
    fn an_idle_slot_is_lent_only_when_nobody_waits() {
        let s = FairScheduler::new(2);
        let a = name("a");
        granted(s.enter(&a, 0.0));
        let lent = s.try_acquire(&a).expect("one slot is idle");
        assert!(s.try_acquire(&a).is_none(), "both slots are taken");
        let mut waiter = waiting(s.enter(&name("b"), 0.0));
        drop(lent);
        assert!(
            waiter.try_recv().is_ok(),
            "the lent slot went to the waiter"
        );
        assert!(s.try_acquire(&a).is_none());
        assert_eq!(s.shares()["a"].running, 1);
    }

    #[test]
    fn work_conserving_below_the_slot_count() {
        let s = FairScheduler::new(2);
        let a = name("a");
        granted(s.enter(&a, 0.0));
        granted(s.enter(&a, 0.0));
        let mut third = waiting(s.enter(&a, 0.0));
        assert!(third.try_recv().is_err());
        s.release_at(&a, 0.0, 1.0);
        assert_eq!(third.try_recv().unwrap(), 1.0, "the freed slot, at once");
    }

    #[test]
    fn a_light_tenant_overtakes_a_flooding_one() {
        let s = FairScheduler::new(1);
        let (a, b) = (name("a"), name("b"));
        granted(s.enter(&a, 0.0));
        let mut a_queue: Vec<_> = (0..5).map(|_| waiting(s.enter(&a, 0.0))).collect();
        let mut b_batch = waiting(s.enter(&b, 0.5));
        s.release_at(&a, 0.0, 1.0);
        assert_eq!(b_batch.try_recv().unwrap(), 1.0, "b next, before a's queue");
        assert!(a_queue[0].try_recv().is_err());
        s.release_at(&b, 1.0, 1.1);
        assert_eq!(a_queue[0].try_recv().unwrap(), 1.1, "then a again");
    }

    #[test]
    fn slots_are_shared_by_weight_under_contention() {
        let s = FairScheduler::new(1);
        let (a, b) = (name("a"), name("b"));
        s.register(&a, 1.0);
        s.register(&b, 3.0);
        // Both always have a batch waiting; every batch holds its slot 1 s.
        let mut now = 0.0;
        let first = granted(s.enter(&a, now));
        let mut queues = [
            (a.clone(), waiting(s.enter(&a, now))),
            (b.clone(), waiting(s.enter(&b, now))),
        ];
        let mut holder = (a.clone(), first);
        let mut slots = HashMap::<String, u32>::new();
        for _ in 0..400 {
            now += 1.0;
            s.release_at(&holder.0, holder.1, now);
            let i = queues
                .iter_mut()
                .position(|(_, r)| r.try_recv().is_ok())
                .expect("someone got the slot");
            let tenant = queues[i].0.clone();
            *slots.entry(tenant.to_string()).or_default() += 1;
            holder = (tenant.clone(), now);
            queues[i].1 = waiting(s.enter(&tenant, now));
        }
        let (a_slots, b_slots) = (slots["a"], slots["b"]);
        assert!(
            (295..=305).contains(&b_slots),
            "b (weight 3) got {b_slots} of 400, a {a_slots}"
        );
    }

    #[test]
    fn idling_banks_no_credit() {
        let s = FairScheduler::new(1);
        let (a, b) = (name("a"), name("b"));
        // a works alone for 100 s while b idles.
        for t in 0..100 {
            let at = granted(s.enter(&a, t as f64));
            s.release_at(&a, at, t as f64 + 1.0);
        }
        // Now both contend: b must not get the next 100 slots in a row.
        granted(s.enter(&a, 100.0));
        let mut a_next = waiting(s.enter(&a, 100.0));
        let mut b_first = waiting(s.enter(&b, 100.0));
        let mut b_second = waiting(s.enter(&b, 100.0));
        s.release_at(&a, 100.0, 101.0);
        assert!(b_first.try_recv().is_ok(), "b first: it has had less");
        s.release_at(&b, 101.0, 102.5);
        assert!(a_next.try_recv().is_ok(), "then a, as b is now ahead");
        assert!(b_second.try_recv().is_err());
    }

    #[test]
    fn a_cancelled_waiter_gives_its_slot_on() {
        let s = FairScheduler::new(1);
        let (a, b) = (name("a"), name("b"));
        granted(s.enter(&a, 0.0));
        let gone = waiting(s.enter(&b, 0.0));
        drop(gone);
        let mut next = waiting(s.enter(&a, 0.0));
        s.release_at(&a, 0.0, 1.0);
        assert_eq!(next.try_recv().unwrap(), 1.0);
        assert_eq!(s.shares()["a"].running, 1);
        assert_eq!(s.shares()["b"].running, 0);
    }
}
