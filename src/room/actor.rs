//! The room actor: one task that owns a room's members, offline queue and queue deadlines.
//!
//! It runs the mini-redis deadline loop: handle commands as they come, and sleep until the
//! oldest queue's expiry (one timer for the whole room, re-armed only when that deadline
//! changes; an idle room costs nothing). It never awaits a session: every write to a member
//! is a `try_send` on the member's bounded outbound queue, and a member whose queue is full is
//! closed as a slow reader. It ends when it has no members and nothing queued, or on shutdown.
//!
//! It also keeps the room's [`Routes`] in step with its members, so that sessions can deliver
//! to connected members without passing through it (see the module above).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::sync::oneshot;
use tokio::time::{Instant, sleep_until};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::outbox::SendError;
use super::registry::ActorId;
use super::{
    ConnId, IdHasher, JoinReply, JoinRequest, Outbound, PeerLink, Refusal, Relay, RoomCmd, Routes,
};
use crate::config::RoomMode;
use crate::metrics::{CloseReason, DropReason};
use crate::protocol::{self, MessageType};
use crate::state::Shared;

/// Accounting overhead charged per queued message on top of its frame, so many tiny messages
/// cannot slip past `--max-queued-bytes`.
const QUEUE_ENTRY_OVERHEAD: usize = 64;

/// Commands handled per wake-up before the loop checks its timer again.
const BATCH: usize = 32;

/// Hash maps keyed by peer ids.
type IdMap<K, V> = HashMap<K, V, IdHasher>;

/// A registered peer.
#[derive(Debug)]
struct Member {
    /// Its token: a take-over needs the same one (global mode).
    token: Box<str>,
    /// How to reach its session.
    link: PeerLink,
    /// Join order, for `/peers`.
    joined: u64,
}

/// Messages waiting for one offline id.
#[derive(Debug)]
struct Queue {
    /// Distinguishes this queue from an earlier one for the same id in the deadline list.
    generation: u64,
    /// (sender, type, frame), in arrival order.
    messages: VecDeque<(Arc<str>, MessageType, Utf8Bytes)>,
    /// Bytes charged against `--max-queued-bytes`.
    bytes: usize,
}

/// The task owning one room.
pub struct RoomActor {
    key: Box<str>,
    actor_id: ActorId,
    mailbox: mpsc::Receiver<RoomCmd>,
    shared: Arc<Shared>,
    members: IdMap<Arc<str>, Member>,
    /// The members' queues, published for direct delivery: the same ids as `members`.
    routes: Arc<Routes>,
    queues: IdMap<Box<str>, Queue>,
    /// (deadline, id, generation) of every queue, oldest first. All queues share one
    /// expire timeout, so creation order is expiry order. Entries of flushed queues are
    /// skipped when they come up.
    deadlines: VecDeque<(Instant, Box<str>, u64)>,
    next_generation: u64,
    next_join: u64,
    /// Messages relayed, for latency sampling.
    relayed: u32,
}

impl RoomActor {
    /// An actor for room `key`, reading `mailbox` and keeping `routes`.
    pub fn new(
        key: Box<str>,
        actor_id: ActorId,
        mailbox: mpsc::Receiver<RoomCmd>,
        routes: Arc<Routes>,
        shared: Arc<Shared>,
    ) -> Self {
        RoomActor {
            key,
            actor_id,
            mailbox,
            shared,
            members: IdMap::default(),
            routes,
            queues: IdMap::default(),
            deadlines: VecDeque::new(),
            next_generation: 0,
            next_join: 0,
            relayed: 0,
        }
    }

    /// Runs until the room is empty or the server shuts down.
    pub async fn run(mut self) {
        // Grows to the largest batch seen: a quiet room holds no buffer.
        let mut batch = Vec::new();
        let far_future = Instant::now() + std::time::Duration::from_secs(86_400 * 365);
        let timer = sleep_until(far_future);
        tokio::pin!(timer);
        let mut armed_for: Option<Instant> = None;
        // Shutdown arrives as a command (see `RoomRegistry::shutdown_all`): watching the
        // cancellation token here would take its mutex on every wake-up.
        loop {
            let next = self.deadlines.front().map(|d| d.0);
            if next != armed_for {
                timer.as_mut().reset(next.unwrap_or(far_future));
                armed_for = next;
            }
            tokio::select! {
                biased;
                n = self.mailbox.recv_many(&mut batch, BATCH) => {
                    if n == 0 {
                        break;
                    }
                    let mut stop = false;
                    for cmd in batch.drain(..) {
                        match cmd {
                            RoomCmd::Shutdown => stop = true,
                            cmd => self.handle(cmd),
                        }
                    }
                    if stop {
                        break;
                    }
                }
                _ = &mut timer, if next.is_some() => self.expire_due(Instant::now()),
            }
            if self.members.is_empty() && self.queues.is_empty() {
                let shared = Arc::clone(&self.shared);
                if shared
                    .rooms
                    .retire(&self.key, self.actor_id, &mut self.mailbox, &shared)
                {
                    break;
                }
            }
        }
        self.wind_down().await;
    }

    /// After retiring (or on shutdown): answer joins that raced the closing, free the rest.
    async fn wind_down(&mut self) {
        self.mailbox.close();
        while let Some(cmd) = self.mailbox.recv().await {
            match cmd {
                RoomCmd::Join { reply, .. } | RoomCmd::TakeOver { reply, .. } => {
                    let _ = reply.send(JoinReply::Retry);
                }
                RoomCmd::ListPeers { reply } => {
                    let _ = reply.send(Vec::new());
                }
                RoomCmd::Relay(_) | RoomCmd::Leave { .. } | RoomCmd::Shutdown => {}
            }
        }
        self.routes.clear();
        for (_, member) in self.members.drain() {
            self.shared.release_peer_slot();
            member.link.tx.kill(CloseReason::Shutdown);
        }
        for (_, queue) in self.queues.drain() {
            self.shared
                .release_queue_bytes(queue.messages.len(), queue.bytes);
        }
        let key = &self.key;
        tracing::debug!(room = %key, "room closed");
    }

    fn handle(&mut self, cmd: RoomCmd) {
        match cmd {
            RoomCmd::Join { request, reply } => {
                let answer = self.join(request);
                let _ = reply.send(answer);
            }
            RoomCmd::TakeOver {
                stale,
                request,
                reply,
            } => {
                let answer = self.take_over(stale, request);
                let _ = reply.send(answer);
            }
            RoomCmd::Relay(relay) => self.relay(relay),
            RoomCmd::Leave { id, conn, reason } => {
                if self.members.get(&id).is_some_and(|m| m.link.conn == conn) {
                    self.remove(&id, reason);
                }
            }
            RoomCmd::Shutdown => {} // handled by the run loop
            RoomCmd::ListPeers { reply } => {
                let mut peers: Vec<(&Arc<str>, u64)> =
                    self.members.iter().map(|(id, m)| (id, m.joined)).collect();
                peers.sort_unstable_by_key(|(_, joined)| *joined);
                let _ = reply.send(peers.into_iter().map(|(id, _)| Arc::clone(id)).collect());
            }
        }
    }

    fn room_mode(&self) -> bool {
        self.shared.config.rooms == RoomMode::Token
    }

    /// Whether a member's token is its own secret, so that the same token again is the same
    /// client reconnecting: in global mode, and with signed tokens in both modes. In room
    /// mode without them every member knows the token, so it proves nothing (SPEC §3).
    fn token_is_secret(&self) -> bool {
        !self.room_mode() || self.shared.config.auth.is_some()
    }

    fn join(&mut self, request: JoinRequest) -> JoinReply {
        let Some(holder) = self.members.get(&request.id) else {
            return self.admit_new(request);
        };
        if self.token_is_secret() && holder.token == request.token {
            // The one place an expired signed token is good: its own id, still registered.
            return self.replace(request, CloseReason::Replaced);
        }
        if request.expired {
            return JoinReply::Refused(Refusal::TokenExpired);
        }
        let holder_conn = holder.link.conn;
        let (alive_tx, alive) = oneshot::channel();
        // A holder whose outbound queue is full is not reading: the dropped `alive_tx` makes
        // the probe fail at once.
        let _ = holder.link.tx.try_send(Outbound::Probe(alive_tx));
        JoinReply::Probe {
            holder: holder_conn,
            alive,
            request,
        }
    }

    fn take_over(&mut self, stale: ConnId, request: JoinRequest) -> JoinReply {
        match self.members.get(&request.id) {
            Some(holder) if holder.link.conn == stale => {
                self.replace(request, CloseReason::ProbeFailed)
            }
            // Someone else registered the id meanwhile: start over.
            Some(_) => self.join(request),
            None => self.admit_new(request),
        }
    }

    /// Admits a socket whose id is free, unless its signed token has expired (only a
    /// same-token reconnect may use one of those).
    fn admit_new(&mut self, request: JoinRequest) -> JoinReply {
        if request.expired {
            return JoinReply::Refused(Refusal::TokenExpired);
        }
        self.admit(request)
    }

    /// Registers a new id, if the room and the server have room for it.
    fn admit(&mut self, request: JoinRequest) -> JoinReply {
        if self.members.len() >= self.shared.config.max_room_peers {
            return JoinReply::Refused(Refusal::RoomFull);
        }
        if !self.shared.acquire_peer_slot() {
            return JoinReply::Refused(Refusal::ServerFull);
        }
        self.install(request);
        JoinReply::Admitted
    }

    /// Puts `request` in the place of the id's current holder, which is closed with `reason`.
    /// The holder's slots pass to the newcomer, so no limit applies.
    fn replace(&mut self, request: JoinRequest, reason: CloseReason) -> JoinReply {
        if let Some(old) = self.members.remove(&request.id) {
            self.routes.remove(&request.id);
            tracing::info!(
                peer = &*request.id,
                reason = reason.as_str(),
                "peer replaced by a new socket"
            );
            old.link.tx.kill(reason);
            if reason == CloseReason::ProbeFailed {
                // The old incarnation is gone: the room learns it left before it returns.
                self.announce_leave(&request.id);
            }
        }
        self.install(request);
        JoinReply::Admitted
    }

    /// Adds the member, sends OPEN, then delivers what was queued for it.
    fn install(&mut self, request: JoinRequest) {
        let JoinRequest {
            id, token, link, ..
        } = request;
        let joined = self.next_join;
        self.next_join += 1;
        // The queue is empty and holds at least one frame, so this cannot fail.
        let _ = link
            .tx
            .try_send(Outbound::Frame(Utf8Bytes::from_static(protocol::OPEN)));
        let route = link.tx.route();
        self.members.insert(
            Arc::clone(&id),
            Member {
                token,
                link,
                joined,
            },
        );
        if let Some(queue) = self.queues.remove(&*id) {
            self.shared
                .release_queue_bytes(queue.messages.len(), queue.bytes);
            for (_, kind, frame) in queue.messages {
                self.deliver(&id, kind, frame);
            }
        }
        // Published last: a session that finds the member here delivers after OPEN and after
        // everything that was queued. (A slow reader closed by the flush above is gone.)
        if self.members.contains_key(&id) {
            self.routes.insert(id, route);
        }
    }

    fn relay(&mut self, relay: Relay) {
        let Relay {
            src,
            kind,
            dst,
            frame,
            read_at,
            sent: _handled_when_this_returns,
        } = relay;
        // The id is read from the frame itself; only the offline path copies it.
        let pushed = match self.members.get(dst.resolve(&frame)) {
            Some(member) => member.link.tx.try_send(Outbound::Frame(frame)),
            None if kind.is_queued_when_offline() => {
                let dst = Box::from(dst.resolve(&frame));
                return self.enqueue(src, kind, dst, frame);
            }
            None => {
                return self
                    .shared
                    .metrics
                    .drop_messages(DropReason::Undeliverable, 1);
            }
        };
        match pushed {
            Ok(()) => {
                let metrics = &self.shared.metrics;
                metrics.relay_sampled(kind, read_at, &mut self.relayed);
            }
            Err((why, Outbound::Frame(frame))) => self.push_failed(why, dst.resolve(&frame)),
            Err((_, Outbound::Probe(_))) => {} // not pushed here: a frame was
        }
    }

    /// Hands a frame to a connected member; `false` if it is not there or not reading.
    fn deliver(&mut self, dst: &str, kind: MessageType, frame: Utf8Bytes) -> bool {
        let pushed = match self.members.get(dst) {
            Some(member) => member.link.tx.try_send(Outbound::Frame(frame)),
            None => {
                self.shared
                    .metrics
                    .drop_messages(DropReason::Undeliverable, 1);
                return false;
            }
        };
        match pushed {
            Ok(()) => {
                self.shared.metrics.relay(kind);
                true
            }
            Err((why, _)) => {
                self.push_failed(why, dst);
                false
            }
        }
    }

    /// A member's queue refused a frame: a full queue means it stopped reading (closed as a
    /// slow reader); a closed one means its session ended and its Leave is on the way (the
    /// message is lost, as it would be on the wire).
    fn push_failed(&mut self, why: SendError, dst: &str) {
        match why {
            SendError::Full => {
                self.shared.metrics.drop_messages(DropReason::SlowReader, 1);
                if let Some((id, _)) = self.members.get_key_value(dst) {
                    let id = Arc::clone(id);
                    tracing::info!(peer = &*id, "outbound queue full; closing slow reader");
                    self.remove(&id, CloseReason::SlowReader);
                }
            }
            SendError::Closed => self
                .shared
                .metrics
                .drop_messages(DropReason::Undeliverable, 1),
        }
    }

    /// Queues a message for an offline id, or answers EXPIRE at once if the queue is full.
    fn enqueue(&mut self, src: Arc<str>, kind: MessageType, dst: Box<str>, frame: Utf8Bytes) {
        let cost = frame.len() + QUEUE_ENTRY_OVERHEAD;
        let per_peer = self.shared.config.max_queue_per_peer;
        let queued = self.queues.get(&dst).map_or(0, |q| q.messages.len());
        if queued >= per_peer || !self.shared.reserve_queue_bytes(cost) {
            self.shared
                .metrics
                .drop_messages(DropReason::QueueOverflow, 1);
            self.send_expire(&dst, &src);
            return;
        }
        let queue = match self.queues.get_mut(&dst) {
            Some(queue) => queue,
            None => {
                let generation = self.next_generation;
                self.next_generation += 1;
                let deadline = Instant::now() + self.shared.config.expire_timeout;
                self.deadlines
                    .push_back((deadline, dst.clone(), generation));
                self.queues.entry(dst).or_insert(Queue {
                    generation,
                    messages: VecDeque::new(),
                    bytes: 0,
                })
            }
        };
        queue.messages.push_back((src, kind, frame));
        queue.bytes += cost;
    }

    /// Drops every queue whose deadline has passed and tells each sender once (reference §3).
    fn expire_due(&mut self, now: Instant) {
        while let Some((deadline, _, _)) = self.deadlines.front() {
            if *deadline > now {
                break;
            }
            let Some((_, dst, generation)) = self.deadlines.pop_front() else {
                break;
            };
            let current = self
                .queues
                .get(&dst)
                .is_some_and(|q| q.generation == generation);
            if !current {
                continue;
            }
            let Some(queue) = self.queues.remove(&dst) else {
                continue;
            };
            self.shared
                .release_queue_bytes(queue.messages.len(), queue.bytes);
            self.shared
                .metrics
                .drop_messages(DropReason::Expired, queue.messages.len() as u64);
            let mut told: Vec<&Arc<str>> = Vec::new();
            for (src, _, _) in &queue.messages {
                if !told.contains(&src) {
                    told.push(src);
                }
            }
            for src in told {
                self.send_expire(&dst, src);
            }
        }
    }

    fn send_expire(&mut self, unreachable: &str, sender: &str) {
        if self.members.contains_key(sender) {
            let frame = Utf8Bytes::from(protocol::expire_frame(unreachable, sender));
            self.deliver(sender, MessageType::Expire, frame);
        }
    }

    /// Removes a member: frees its slot, tells its session why if the session did not ask,
    /// and announces the departure to the room if configured.
    fn remove(&mut self, id: &Arc<str>, reason: CloseReason) {
        let Some(member) = self.members.remove(id) else {
            return;
        };
        self.routes.remove(id);
        self.shared.release_peer_slot();
        // If the session asked (it is closing), nobody listens; otherwise this closes it.
        member.link.tx.kill(reason);
        self.announce_leave(id);
    }

    /// `{"type":"LEAVE","src":<leaver>,"dst":<member>}` to every other member.
    fn announce_leave(&mut self, leaver: &str) {
        if !self.shared.config.announce_leave {
            return;
        }
        let others: Vec<Arc<str>> = self
            .members
            .keys()
            .filter(|id| &***id != leaver)
            .cloned()
            .collect();
        for member in others {
            let frame = Utf8Bytes::from(protocol::leave_frame(leaver, &member));
            self.deliver(&member, MessageType::Leave, frame);
        }
    }
}
