//! Room key → live room actor, and what every room draws on.
//!
//! The only shared map in the server besides metrics. Its lock is held for a hash-map
//! operation at a time, never across an `.await`. A room actor that runs out of members
//! removes itself here *and* closes its mailbox while holding the lock, so a session either
//! finds the live actor or spawns a new one; a join that raced the closing gets
//! [`super::JoinReply::Retry`] and comes back here. An actor that panics is removed here by
//! its task's guard (see `RoomRegistry::spawn`), and a handle whose actor is gone is never handed
//! out again: the next join spawns a fresh actor.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::FutureExt;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio_util::task::TaskTracker;

use super::actor::RoomActor;
use super::budget::{BudgetLimits, Budgets};
use super::remote::Remote;
use super::{RoomCmd, RoomHandle};
use crate::config::Config;
use crate::metrics::Metrics;

/// Identifies one actor incarnation, so an ending actor never removes its successor.
pub type ActorId = u64;

/// Room key → the actor incarnation registered for it and its handle.
type Rooms = HashMap<Box<str>, (ActorId, RoomHandle)>;

/// The registry of live rooms, with the configuration, metrics, budgets and task tracker
/// their actors use.
#[derive(Debug)]
pub struct RoomRegistry {
    /// The validated configuration.
    pub config: Arc<Config>,
    /// Where the rooms count what they do.
    pub metrics: Arc<Metrics>,
    /// Peer slots and offline-queue bytes.
    pub budgets: Arc<Budgets>,
    /// The other nodes of the cluster (`--cluster`); `None` when this node runs alone.
    pub remote: Option<Arc<dyn Remote>>,
    /// Every actor is spawned on it, so shutdown can wait for them.
    tracker: TaskTracker,
    rooms: Mutex<Rooms>,
    next_actor: AtomicU64,
    /// Set by [`RoomRegistry::shutdown_all`]: rooms spawned later are told to stop at once.
    shutting_down: AtomicBool,
}

impl RoomRegistry {
    /// An empty registry whose actors run on `tracker`, in a cluster if `remote` is set.
    pub fn new(
        config: Arc<Config>,
        metrics: Arc<Metrics>,
        tracker: TaskTracker,
        remote: Option<Arc<dyn Remote>>,
    ) -> Self {
        let budgets = Arc::new(Budgets::new(
            BudgetLimits {
                peers: config.concurrent_limit,
                queued_bytes: config.max_queued_bytes,
                queued_bytes_per_origin: config.max_queued_bytes_per_ip,
                outbound_bytes: config.max_outbound_total,
            },
            Arc::clone(&metrics),
        ));
        RoomRegistry {
            config,
            metrics,
            budgets,
            remote,
            tracker,
            rooms: Mutex::default(),
            next_actor: AtomicU64::new(0),
            shutting_down: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Rooms> {
        // A panic while holding this lock cannot leave the map inconsistent (each operation
        // is a single insert/remove), so a poisoned lock is still usable.
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The room's actor, spawning it if the room does not exist yet (or its actor failed).
    pub fn get_or_spawn(self: &Arc<Self>, key: &str) -> RoomHandle {
        let mut rooms = self.lock();
        if let Some((_, handle)) = rooms.get(key) {
            if !handle.is_closed() {
                return handle.clone();
            }
            // Its actor is gone without retiring (it failed): never hand out its handle.
            rooms.remove(key);
            self.metrics.rooms.dec();
        }
        let actor_id = self.next_actor.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(super::ROOM_MAILBOX);
        let routes = Arc::default();
        let handle = RoomHandle::new(tx, Arc::clone(&routes));
        rooms.insert(Box::from(key), (actor_id, handle.clone()));
        self.metrics.rooms.inc();
        let actor = RoomActor::new(Box::from(key), actor_id, rx, routes, Arc::clone(self));
        self.spawn(Box::from(key), actor_id, actor);
        if self.shutting_down.load(Ordering::Acquire) {
            // The mailbox is empty, so this fits.
            let _ = handle.try_send(RoomCmd::Shutdown);
        }
        handle
    }

    /// Runs `actor` on the tracker. If it panics, the room is logged, counted and forgotten;
    /// unwinding its state dropped every member's outbox sender without a kill (their sessions
    /// close with 1011) and gave back their seats and queue space.
    fn spawn(self: &Arc<Self>, key: Box<str>, actor_id: ActorId, actor: RoomActor) {
        let registry = Arc::clone(self);
        self.tracker.spawn(async move {
            let ran = std::panic::AssertUnwindSafe(actor.run())
                .catch_unwind()
                .await;
            if ran.is_err() {
                registry.metrics.room_failed();
                tracing::error!(room = &*key, "room actor failed; its members are closed");
                registry.forget(&key, actor_id);
            }
        });
    }

    /// Removes the room if `actor_id` is still the one registered under `key`.
    fn forget(&self, key: &str, actor_id: ActorId) {
        self.remove_incarnation(&mut self.lock(), key, actor_id);
    }

    /// Removes `key`'s room from `rooms` if `actor_id` is still its registered incarnation.
    fn remove_incarnation(&self, rooms: &mut Rooms, key: &str, actor_id: ActorId) {
        if rooms.get(key).is_some_and(|(id, _)| *id == actor_id) {
            rooms.remove(key);
            self.metrics.rooms.dec();
        }
    }

    /// Tells every room to close its members (1001) and end. A full mailbox gets the command
    /// from a task that waits for room, so the caller never blocks.
    pub fn shutdown_all(&self) {
        let rooms = self.lock();
        self.shutting_down.store(true, Ordering::Release);
        for (_, handle) in rooms.values() {
            if let Err(TrySendError::Full(cmd)) = handle.try_send(RoomCmd::Shutdown) {
                let handle = handle.clone();
                self.tracker.spawn(async move {
                    let _ = handle.send(cmd).await;
                });
            }
        }
    }

    /// The room's actor if the room exists.
    pub fn get(&self, key: &str) -> Option<RoomHandle> {
        self.lock().get(key).map(|(_, handle)| handle.clone())
    }

    /// Number of live rooms.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no room is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Makes the room's actor panic, as a bug would: for tests of what a failed room does to
    /// its members. Returns false if there is no such room.
    #[doc(hidden)]
    pub fn inject_failure(&self, key: &str) -> bool {
        self.get(key)
            .is_some_and(|room| room.try_send(RoomCmd::Fail).is_ok())
    }

    /// Called by an idle actor: removes it (if it is still the registered incarnation) and
    /// closes its mailbox under the lock. Returns false if a join arrived in the meantime,
    /// in which case the actor keeps running.
    pub(super) fn retire(
        &self,
        key: &str,
        actor: ActorId,
        mailbox: &mut mpsc::Receiver<RoomCmd>,
    ) -> bool {
        let mut rooms = self.lock();
        if !mailbox.is_empty() {
            return false;
        }
        self.remove_incarnation(&mut rooms, key, actor);
        mailbox.close();
        true
    }
}
