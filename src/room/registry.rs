//! Room key → live room actor.
//!
//! The only shared map in the server besides metrics. Its lock is held for a hash-map
//! operation at a time, never across an `.await`. A room actor that runs out of members
//! removes itself here *and* closes its mailbox while holding the lock, so a session either
//! finds the live actor or spawns a new one; a join that raced the closing gets
//! [`super::JoinReply::Retry`] and comes back here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::mpsc::{self, error::TrySendError};

use super::actor::RoomActor;
use super::{RoomCmd, RoomHandle};
use crate::state::Shared;

/// Identifies one actor incarnation, so an ending actor never removes its successor.
pub type ActorId = u64;

/// The registry of live rooms.
#[derive(Debug, Default)]
pub struct RoomRegistry {
    rooms: Mutex<HashMap<Box<str>, (ActorId, RoomHandle)>>,
    next_actor: std::sync::atomic::AtomicU64,
    /// Set by [`RoomRegistry::shutdown_all`]: rooms spawned later are told to stop at once.
    shutting_down: std::sync::atomic::AtomicBool,
}

impl RoomRegistry {
    fn lock(&self) -> MutexGuard<'_, HashMap<Box<str>, (ActorId, RoomHandle)>> {
        // A panic while holding this lock cannot leave the map inconsistent (each operation
        // is a single insert/remove), so a poisoned lock is still usable.
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The room's actor, spawning it if the room does not exist yet.
    pub fn get_or_spawn(&self, key: &str, shared: &Arc<Shared>) -> RoomHandle {
        let mut rooms = self.lock();
        if let Some((_, handle)) = rooms.get(key) {
            return handle.clone();
        }
        let actor_id = self
            .next_actor
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(super::ROOM_MAILBOX);
        let routes = Arc::default();
        let handle = RoomHandle::new(tx, Arc::clone(&routes));
        rooms.insert(Box::from(key), (actor_id, handle.clone()));
        shared.metrics.rooms.inc();
        let actor = RoomActor::new(Box::from(key), actor_id, rx, routes, Arc::clone(shared));
        shared.shutdown.tracker.spawn(actor.run());
        if self
            .shutting_down
            .load(std::sync::atomic::Ordering::Acquire)
        {
            // The mailbox is empty, so this fits.
            let _ = handle.try_send(RoomCmd::Shutdown);
        }
        handle
    }

    /// Tells every room to close its members (1001) and end. A full mailbox gets the command
    /// from a task that waits for room, so the caller never blocks.
    pub fn shutdown_all(&self, shared: &Shared) {
        let rooms = self.lock();
        self.shutting_down
            .store(true, std::sync::atomic::Ordering::Release);
        for (_, handle) in rooms.values() {
            if let Err(TrySendError::Full(cmd)) = handle.try_send(RoomCmd::Shutdown) {
                let handle = handle.clone();
                shared.shutdown.tracker.spawn(async move {
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

    /// Called by an idle actor: removes it (if it is still the registered incarnation) and
    /// closes its mailbox under the lock. Returns false if a join arrived in the meantime,
    /// in which case the actor keeps running.
    pub(super) fn retire(
        &self,
        key: &str,
        actor: ActorId,
        mailbox: &mut mpsc::Receiver<RoomCmd>,
        shared: &Shared,
    ) -> bool {
        let mut rooms = self.lock();
        if !mailbox.is_empty() {
            return false;
        }
        if rooms.get(key).is_some_and(|(id, _)| *id == actor) {
            rooms.remove(key);
            shared.metrics.rooms.dec();
        }
        mailbox.close();
        true
    }
}
