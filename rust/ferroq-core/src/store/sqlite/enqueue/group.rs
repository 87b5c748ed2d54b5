//! Group commit for enqueue. Concurrent sends to one shard share a single
//! write transaction: each caller queues its (already validated) request;
//! whoever gets the shard's connection serves every request queued by then
//! in one transaction, wakes their callers, and hands the lead to the
//! oldest request still queued (those that arrived during its commit), so
//! it can return to its own caller at once while the next batch commits.
//! Every call still returns only once its own tasks are committed. With
//! one sender there is nothing to share and the cost is a queue push and an
//! uncontended lock.

use crate::error::Result;
use crate::store::Enqueued;
use crate::task::NewTask;
use parking_lot::{Condvar, Mutex};
use std::sync::Arc;
use std::time::Duration;

/// Requests no larger than this (payload bytes) are shared; bigger ones
/// write directly rather than being copied into a request.
pub const GROUP_MAX_BYTES: usize = 256 * 1024;

/// How long a waiting sender sleeps before looking at the lock again (it is
/// woken at once when its request is served or it is handed the lead).
const FOLLOWER_WAIT: Duration = Duration::from_micros(200);

/// One caller's enqueue, waiting to be committed.
pub struct Pending {
    /// The tasks (all routed to this shard).
    pub tasks: Vec<NewTask>,
    /// The first local id handed out for them (see the module doc of `sqlite`).
    pub first_local: i64,
    /// The enqueue time.
    pub now: i64,
    slot: Mutex<Slot>,
    done: Condvar,
}

/// What a waiting caller is told: its outcome, or that it should lead.
struct Slot {
    result: Option<Result<Vec<Enqueued>>>,
    lead: bool,
}

impl Pending {
    /// A request for `tasks`.
    pub fn new(tasks: Vec<NewTask>, first_local: i64, now: i64) -> Arc<Self> {
        let slot = Mutex::new(Slot { result: None, lead: false });
        Arc::new(Pending { tasks, first_local, now, slot, done: Condvar::new() })
    }

    /// Hands the request its outcome and wakes its caller.
    pub fn finish(&self, r: Result<Vec<Enqueued>>) {
        self.slot.lock().result = Some(r);
        self.done.notify_one();
    }

    /// Wakes the caller to take the lead for the requests queued now.
    pub fn nudge(&self) {
        self.slot.lock().lead = true;
        self.done.notify_one();
    }

    /// The outcome, if served; otherwise waits until it is served, the
    /// caller is asked to lead, or a short while passes.
    pub fn wait(&self) -> Option<Result<Vec<Enqueued>>> {
        let mut slot = self.slot.lock();
        if slot.result.is_none() && !slot.lead {
            self.done.wait_for(&mut slot, FOLLOWER_WAIT);
        }
        slot.lead = false;
        slot.result.take()
    }

    /// The outcome, if served, without waiting.
    pub fn take(&self) -> Option<Result<Vec<Enqueued>>> {
        self.slot.lock().result.take()
    }
}

/// The requests queued on one shard.
#[derive(Default)]
pub struct Group {
    queue: Mutex<Vec<Arc<Pending>>>,
}

impl Group {
    /// Queues a request.
    pub fn push(&self, p: Arc<Pending>) {
        self.queue.lock().push(p);
    }

    /// Takes every queued request.
    pub fn drain(&self) -> Vec<Arc<Pending>> {
        std::mem::take(&mut *self.queue.lock())
    }

    /// Asks the oldest queued request's caller to lead the next batch.
    pub fn hand_over(&self) {
        if let Some(p) = self.queue.lock().first() {
            p.nudge();
        }
    }
}
