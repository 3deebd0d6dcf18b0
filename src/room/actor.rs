//! The room actor: one task that owns a room's members, offline queue and queue deadlines.
//!
//! It runs the mini-redis deadline loop: handle commands as they come, and sleep until the
//! oldest queue's expiry (one timer for the whole room, re-armed only when that deadline
//! changes; an idle room costs nothing). A mailbox that never empties does not hold expiry
//! back: after every batch of commands the actor looks at the clock and expires what is due.
//! It never awaits a session: every write to a member is a `try_send` on the member's bounded
//! outbound queue, and a member whose queue is at its bound is closed as a slow reader. It
//! ends when it has no members and nothing queued, or on shutdown.
//!
//! Removing a member can remove others (its LEAVE finds a member's queue full, which closes
//! that member, whose LEAVE…): removals go through a work list drained in a loop, never by
//! recursion, so each departure costs one pass over the room, however many follow it.
//!
//! The offline queue is shared fairly: each sender may hold at most its share (messages and
//! bytes) of what waits, charged at what the entries really cost in memory; past its share,
//! or past the server-wide budget, the sender gets EXPIRE at once and others keep queueing.
//!
//! It also keeps the room's [`Routes`] in step with its members, so that sessions can deliver
//! to connected members without passing through it (see the module above).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::sync::oneshot;
use tokio::time::{Instant, sleep_until};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::budget::{OriginCharge, PeerSlot, QueueCharge};
use super::outbox::SendError;
use super::registry::{ActorId, RoomRegistry};
use super::remote::{NodeId, Seat, TokenDigest, token_digest};
use super::{
    ConnId, Holder, IdHasher, JoinReply, JoinRequest, PeerLink, Refusal, Relay, RoomCmd, Routes,
};
use crate::config::RoomMode;
use crate::protocol::{self, MessageType};
use crate::protocol::{CloseReason, DropReason};

/// What a queued message costs in memory besides its frame: its queue slot, the frame's
/// allocation header and its sender's share entry. Charged against `--max-queued-bytes` and
/// the sender's `--max-queued-bytes-per-sender`, so many tiny messages cannot slip past them.
pub const QUEUE_ENTRY_OVERHEAD: usize = 96;

/// What a new offline queue costs in memory besides its messages: its map entry, its id
/// (allocated once, shared with the deadline list), its deadline entry and its first slots.
/// Charged against `--max-queued-bytes` when the queue is created.
pub const QUEUE_OVERHEAD: usize = 256;

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
    /// On the leaving list: it is not told of others' departures any more.
    leaving: bool,
    /// Its place in `--concurrent-limit`, given back when the member is dropped (or passed
    /// on to whoever takes its id over).
    slot: PeerSlot,
    /// In a cluster, its id's seat (given back, and announced, when the member is dropped;
    /// passed on like the slot).
    seat: Option<Seat>,
}

/// One message waiting for an offline id.
#[derive(Debug)]
struct Queued {
    src: Arc<str>,
    /// The sender's client address (network, for IPv6), whose share it is charged to too;
    /// `None` for a message from another node.
    origin: Option<IpAddr>,
    kind: MessageType,
    frame: Utf8Bytes,
}

impl Queued {
    /// What it is charged to its sender's share.
    fn cost(&self) -> usize {
        self.frame.len() + QUEUE_ENTRY_OVERHEAD
    }
}

/// Messages waiting for one offline id.
#[derive(Debug)]
struct Queue {
    /// Distinguishes this queue from an earlier one for the same id in the deadline list.
    generation: u64,
    /// In arrival order.
    messages: VecDeque<Queued>,
    /// This queue's share of `--max-queued-bytes`, given back when it is dropped.
    charge: QueueCharge,
}

/// What one sender holds in the room's offline queues.
#[derive(Debug, Default, Clone, Copy)]
struct Share {
    messages: usize,
    bytes: usize,
}

/// The task owning one room.
pub struct RoomActor {
    key: Box<str>,
    actor_id: ActorId,
    mailbox: mpsc::Receiver<RoomCmd>,
    /// The registry, and through it the configuration, metrics and budgets.
    rooms: Arc<RoomRegistry>,
    members: IdMap<Arc<str>, Member>,
    /// The members' queues, published for direct delivery: the same ids as `members`.
    routes: Arc<Routes>,
    queues: IdMap<Arc<str>, Queue>,
    /// (deadline, id, generation) of every queue, oldest first. All queues share one
    /// expire timeout, so creation order is expiry order. Entries of flushed queues are
    /// skipped when they come up.
    deadlines: VecDeque<(Instant, Arc<str>, u64)>,
    /// Each sender's share of the offline queues; an entry exists while it holds any.
    shares: IdMap<Arc<str>, Share>,
    /// What the offline queues here hold from each client address, against its share
    /// across all rooms; an entry exists while it holds any.
    origins: IdMap<IpAddr, OriginCharge>,
    /// Members to remove (and announce), drained by [`RoomActor::settle`].
    leaving: Vec<(Arc<str>, CloseReason)>,
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
        rooms: Arc<RoomRegistry>,
    ) -> Self {
        RoomActor {
            key,
            actor_id,
            mailbox,
            rooms,
            members: IdMap::default(),
            routes,
            queues: IdMap::default(),
            deadlines: VecDeque::new(),
            shares: IdMap::default(),
            origins: IdMap::default(),
            leaving: Vec::new(),
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
                    // A mailbox that is never empty would starve the timer branch.
                    if self.deadlines.front().is_some_and(|d| d.0 <= Instant::now()) {
                        self.expire_due(Instant::now());
                    }
                }
                _ = &mut timer, if next.is_some() => self.expire_due(Instant::now()),
            }
            self.shrink_idle_maps();
            if self.members.is_empty() && self.queues.is_empty() {
                let rooms = Arc::clone(&self.rooms);
                if rooms.retire(&self.key, self.actor_id, &mut self.mailbox) {
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
                RoomCmd::Check { reply, .. } => {
                    let _ = reply.send(Holder::NotHere);
                }
                RoomCmd::Evict { reply, .. } => {
                    if let Some(reply) = reply {
                        let _ = reply.send(false);
                    }
                }
                RoomCmd::Relay(_)
                | RoomCmd::Leave { .. }
                | RoomCmd::Shutdown
                | RoomCmd::Fail
                | RoomCmd::RemoteJoined { .. }
                | RoomCmd::RemoteLeft { .. } => {}
            }
        }
        self.routes.clear();
        // Slots and queue charges are given back as the members and queues are dropped.
        for (_, member) in self.members.drain() {
            member.link.tx.kill(CloseReason::Shutdown);
        }
        self.queues.clear();
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
                if let Some(member) = self.members.get_mut(&id)
                    && member.link.conn == conn
                    && !member.leaving
                {
                    member.leaving = true;
                    self.leaving.push((id, reason));
                }
            }
            RoomCmd::Shutdown => {} // handled by the run loop
            RoomCmd::ListPeers { reply } => {
                let mut peers: Vec<(&Arc<str>, u64)> =
                    self.members.iter().map(|(id, m)| (id, m.joined)).collect();
                peers.sort_unstable_by_key(|(_, joined)| *joined);
                let _ = reply.send(peers.into_iter().map(|(id, _)| Arc::clone(id)).collect());
            }
            RoomCmd::Fail => panic!("room {:?}: failure injected", self.key),
            RoomCmd::RemoteJoined { id } => {
                if self.queues.contains_key(&id)
                    && let Some(node) = self
                        .rooms
                        .remote
                        .as_ref()
                        .and_then(|r| r.locate(&self.key, &id))
                {
                    self.forward_queue(&id, &node);
                }
            }
            RoomCmd::RemoteLeft { id } => {
                // A member here with the same id is a duplicate the partition rule kept.
                if !self.members.contains_key(&id) {
                    self.announce_leave(&id);
                }
            }
            RoomCmd::Check { id, token, reply } => {
                let answer = self.check(&id, &token);
                let _ = reply.send(answer);
            }
            RoomCmd::Evict {
                id,
                conn,
                claimed_at,
                reason,
                reply,
            } => {
                let evicted = self.evict(&id, conn, claimed_at, reason);
                if let Some(reply) = reply {
                    let _ = reply.send(evicted);
                }
            }
        }
        self.settle();
    }

    fn room_mode(&self) -> bool {
        self.rooms.config.rooms == RoomMode::Token
    }

    /// Whether a member's token is its own secret, so that the same token again is the same
    /// client reconnecting: in global mode, and with signed tokens in both modes. In room
    /// mode without them every member knows the token, so it proves nothing (README: Game rooms).
    fn token_is_secret(&self) -> bool {
        !self.room_mode() || self.rooms.config.auth.is_some()
    }

    fn join(&mut self, request: JoinRequest) -> JoinReply {
        let Some(holder) = self.members.get(&request.id) else {
            if self.rooms.remote.is_some() && request.seat.is_none() {
                // The id was held here when the session looked and has left since: it must
                // be claimed from the cluster now.
                return JoinReply::Retry;
            }
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
        // A holder whose session is gone drops `alive_tx`: the probe fails at once.
        holder.link.tx.probe(alive_tx);
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
            None if self.rooms.remote.is_some() && request.seat.is_none() => JoinReply::Retry,
            None => self.admit_new(request),
        }
    }

    /// Another node's newcomer asks about member `id` (see [`RoomCmd::Check`]).
    fn check(&mut self, id: &str, token: &TokenDigest) -> Holder {
        let Some(holder) = self.members.get(id) else {
            return Holder::NotHere;
        };
        if holder.leaving {
            return Holder::NotHere;
        }
        if self.token_is_secret() && token_digest(&holder.token) == *token {
            return Holder::SameToken(holder.link.conn);
        }
        let (alive_tx, alive) = oneshot::channel();
        holder.link.tx.probe(alive_tx);
        Holder::Probing(holder.link.conn, alive)
    }

    /// Removes member `id` if it is still the registration asked about; true if it is gone.
    fn evict(
        &mut self,
        id: &str,
        conn: Option<ConnId>,
        claimed_at: Option<u64>,
        reason: CloseReason,
    ) -> bool {
        let Some((key, member)) = self.members.get_key_value(id) else {
            return true;
        };
        let same_conn = conn.is_none_or(|c| c == member.link.conn);
        let same_claim = claimed_at.is_none_or(|at| {
            member
                .seat
                .as_ref()
                .is_some_and(|seat| seat.claimed_at() == at)
        });
        if !(same_conn && same_claim) {
            return false;
        }
        let key = Arc::clone(key);
        tracing::info!(
            peer = id,
            reason = reason.as_str(),
            "peer closed for the cluster"
        );
        self.remove(&key, reason);
        true
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
    fn admit(&mut self, mut request: JoinRequest) -> JoinReply {
        if self.members.len() >= self.rooms.config.max_room_peers {
            return JoinReply::Refused(Refusal::RoomFull);
        }
        let Some(slot) = self.rooms.budgets.peer_slot() else {
            return JoinReply::Refused(Refusal::ServerFull);
        };
        let seat = request.seat.take();
        self.install(request, slot, seat);
        JoinReply::Admitted
    }

    /// Puts `request` in the place of the id's current holder, which is closed with `reason`.
    /// The holder's slot passes to the newcomer, so no limit applies.
    fn replace(&mut self, mut request: JoinRequest, reason: CloseReason) -> JoinReply {
        let Some(old) = self.members.remove(&request.id) else {
            return self.admit(request);
        };
        self.routes.remove(&request.id);
        tracing::info!(
            peer = &*request.id,
            reason = reason.as_str(),
            "peer replaced by a new socket"
        );
        let Member {
            link, slot, seat, ..
        } = old;
        link.tx.kill(reason);
        if reason == CloseReason::ProbeFailed {
            // The old incarnation is gone: the room learns it left before it returns.
            self.announce_leave(&request.id);
        }
        // The holder's seat is the older claim, which the partition rule prefers.
        let seat = seat.or(request.seat.take());
        self.install(request, slot, seat);
        JoinReply::Admitted
    }

    /// Adds the member, sends OPEN, then delivers what was queued for it.
    fn install(&mut self, request: JoinRequest, slot: PeerSlot, mut seat: Option<Seat>) {
        let JoinRequest {
            id, token, link, ..
        } = request;
        if let Some(seat) = &mut seat {
            seat.hold();
        }
        let joined = self.next_join;
        self.next_join += 1;
        // The queue is empty and holds at least one frame, so this cannot fail.
        let _ = link.tx.try_send(Utf8Bytes::from_static(protocol::OPEN));
        let route = link.tx.route();
        self.members.insert(
            Arc::clone(&id),
            Member {
                token,
                link,
                joined,
                leaving: false,
                slot,
                seat,
            },
        );
        if let Some(queue) = self.queues.remove(&*id) {
            self.flush_queue(&id, queue);
        }
        // Published last: a session that finds the member here delivers after OPEN and after
        // everything that was queued.
        self.routes.insert(id, route);
    }

    /// Hands a newcomer what was queued for it, in order. The burst is the server's doing, so
    /// it never makes the newcomer a slow reader: what does not fit in its outbound queue is
    /// dropped, and its senders get EXPIRE as if it had expired.
    fn flush_queue(&mut self, id: &Arc<str>, queue: Queue) {
        for queued in &queue.messages {
            self.unshare(queued);
        }
        let Some(member) = self.members.get(id) else {
            return;
        };
        let metrics = &self.rooms.metrics;
        let mut unsent: Vec<Arc<str>> = Vec::new();
        for queued in queue.messages {
            let pushed = if unsent.is_empty() {
                member.link.tx.try_send(queued.frame)
            } else {
                Err((SendError::Full, queued.frame))
            };
            match pushed {
                Ok(()) => metrics.relay(queued.kind),
                Err((SendError::Full | SendError::Pressure, _)) => {
                    metrics.drop_messages(DropReason::QueueOverflow, 1);
                    if !unsent.contains(&queued.src) {
                        unsent.push(queued.src);
                    }
                }
                Err((SendError::Closed, _)) => {
                    metrics.drop_messages(DropReason::Undeliverable, 1);
                }
            }
        }
        for src in unsent {
            self.send_expire(id, &src);
        }
    }

    fn relay(&mut self, relay: Relay) {
        let Relay {
            src,
            origin,
            kind,
            dst,
            frame,
            read_at,
            sent,
        } = relay;
        // `sent` is dropped when this returns: the room is done with the message.
        // The id is read from the frame itself; only the offline path copies it.
        let pushed = match self.members.get(dst.resolve(&frame)) {
            Some(member) => member.link.tx.try_send(frame),
            None if self.rooms.remote.is_some() => {
                let dst: Arc<str> = Arc::from(dst.resolve(&frame));
                let message = Queued {
                    src,
                    origin,
                    kind,
                    frame,
                };
                return self.relay_elsewhere(message, dst, sent.is_none());
            }
            None if kind.is_queued_when_offline() => {
                let dst = Arc::from(dst.resolve(&frame));
                let message = Queued {
                    src,
                    origin,
                    kind,
                    frame,
                };
                return self.enqueue(message, dst);
            }
            None => {
                return self
                    .rooms
                    .metrics
                    .drop_messages(DropReason::Undeliverable, 1);
            }
        };
        match pushed {
            Ok(()) => {
                let metrics = &self.rooms.metrics;
                metrics.relay_sampled(kind, read_at, &mut self.relayed);
            }
            Err((why, frame)) => {
                let to_tell = kind.is_queued_when_offline().then_some(&*src);
                self.push_failed(why, dst.resolve(&frame), to_tell);
            }
        }
    }

    /// A message for an id that is not a member here: to the node that holds it, or into
    /// the offline queue. A message that came from another node is never sent on to a third
    /// (directories that disagree for a moment must not bounce it around): it waits here.
    fn relay_elsewhere(&mut self, message: Queued, dst: Arc<str>, from_remote: bool) {
        let node = match &self.rooms.remote {
            Some(remote) if !from_remote => remote.locate(&self.key, &dst),
            _ => None,
        };
        if let Some(node) = node {
            // What waits here for it goes first, so nothing overtakes it.
            if self.queues.contains_key(&dst) {
                self.forward_queue(&dst, &node);
            }
            let Queued {
                src, kind, frame, ..
            } = &message;
            let sent = self
                .rooms
                .remote
                .as_ref()
                .is_some_and(|r| r.deliver(&node, &self.key, src, &dst, *kind, frame));
            if !sent {
                self.rooms
                    .metrics
                    .drop_messages(DropReason::ClusterUnreachable, 1);
                if kind.is_queued_when_offline() {
                    self.send_expire(&dst, src);
                }
            }
            return;
        }
        if message.kind.is_queued_when_offline() {
            return self.enqueue(message, dst);
        }
        self.rooms
            .metrics
            .drop_messages(DropReason::Undeliverable, 1);
    }

    /// Sends what is queued for `id` to `node`, which now holds it, in order; senders whose
    /// messages cannot go get EXPIRE.
    fn forward_queue(&mut self, id: &Arc<str>, node: &NodeId) {
        let Some(queue) = self.queues.remove(id) else {
            return;
        };
        let mut unsent: Vec<Arc<str>> = Vec::new();
        for queued in queue.messages {
            self.unshare(&queued);
            let sent = self.rooms.remote.as_ref().is_some_and(|r| {
                r.deliver(node, &self.key, &queued.src, id, queued.kind, &queued.frame)
            });
            if !sent {
                self.rooms
                    .metrics
                    .drop_messages(DropReason::ClusterUnreachable, 1);
                if !unsent.contains(&queued.src) {
                    unsent.push(queued.src);
                }
            }
        }
        for src in unsent {
            self.send_expire(id, &src);
        }
    }

    /// Hands a frame to a connected member; `false` if it is not there or not reading.
    fn deliver(&mut self, dst: &str, kind: MessageType, frame: Utf8Bytes) -> bool {
        let pushed = match self.members.get(dst) {
            Some(member) => member.link.tx.try_send(frame),
            None => {
                self.rooms
                    .metrics
                    .drop_messages(DropReason::Undeliverable, 1);
                return false;
            }
        };
        match pushed {
            Ok(()) => {
                self.rooms.metrics.relay(kind);
                true
            }
            Err((why, _)) => {
                self.push_failed(why, dst, None);
                false
            }
        }
    }

    /// A member's queue refused a frame: a full queue means it stopped reading (it is put on
    /// the leaving list as a slow reader); under memory pressure only the frame is refused
    /// (`expire_to`, the sender of a message the protocol answers with EXPIRE, is told); a
    /// closed queue means its session ended and its Leave is on the way (the message is lost,
    /// as it would be on the wire).
    fn push_failed(&mut self, why: SendError, dst: &str, expire_to: Option<&str>) {
        let metrics = &self.rooms.metrics;
        match why {
            SendError::Full => {
                metrics.drop_messages(DropReason::SlowReader, 1);
                if let Some((id, _)) = self.members.get_key_value(dst) {
                    let id = Arc::clone(id);
                    self.slow_reader(id);
                }
            }
            SendError::Pressure => {
                metrics.drop_messages(DropReason::OutboundPressure, 1);
                if let Some(src) = expire_to {
                    self.send_expire(dst, src);
                }
            }
            SendError::Closed => metrics.drop_messages(DropReason::Undeliverable, 1),
        }
    }

    /// Puts a member whose queue is full on the leaving list (once).
    fn slow_reader(&mut self, id: Arc<str>) {
        if let Some(member) = self.members.get_mut(&id)
            && !member.leaving
        {
            member.leaving = true;
            tracing::info!(peer = &*id, "outbound queue full; closing slow reader");
            self.leaving.push((id, CloseReason::SlowReader));
        }
    }

    /// Queues a message for an offline id, or answers EXPIRE at once if the destination's
    /// queue, the sender's share, its address's share or the server-wide budget is full.
    fn enqueue(&mut self, queued: Queued, dst: Arc<str>) {
        let config = &self.rooms.config;
        let cost = queued.cost();
        let share = self.shares.get(&queued.src).copied().unwrap_or_default();
        let within_share = share.messages < config.max_queue_per_sender
            && share.bytes + cost <= config.max_queued_bytes_per_sender
            && queued
                .origin
                .is_none_or(|origin| self.draw_origin(origin, cost));
        let accepted = within_share
            && match self.queues.get_mut(&dst) {
                Some(queue) => {
                    queue.messages.len() < self.rooms.config.max_queue_per_peer
                        && queue.charge.add(cost)
                }
                None => self.new_queue(&dst, cost),
            };
        if !accepted {
            if within_share && let Some(origin) = queued.origin {
                self.return_origin(origin, cost);
            }
            let why = if within_share {
                DropReason::QueueOverflow
            } else {
                DropReason::QueueShare
            };
            self.rooms.metrics.drop_messages(why, 1);
            self.send_expire(&dst, &queued.src);
            return;
        }
        let entry = self.shares.entry(Arc::clone(&queued.src)).or_default();
        entry.messages += 1;
        entry.bytes += cost;
        if let Some(queue) = self.queues.get_mut(&dst) {
            queue.messages.push_back(queued);
        }
    }

    /// Creates the queue for `dst` charged with its own overhead and a first message of
    /// `cost`, if the server-wide budget allows.
    fn new_queue(&mut self, dst: &Arc<str>, cost: usize) -> bool {
        let mut charge = self.rooms.budgets.queue_charge();
        if !charge.add(QUEUE_OVERHEAD + cost) {
            return false;
        }
        let generation = self.next_generation;
        self.next_generation += 1;
        let deadline = Instant::now() + self.rooms.config.expire_timeout;
        self.deadlines
            .push_back((deadline, Arc::clone(dst), generation));
        let mut messages = VecDeque::new();
        messages.reserve_exact(1);
        self.queues.insert(
            Arc::clone(dst),
            Queue {
                generation,
                messages,
                charge,
            },
        );
        true
    }

    /// Charges `cost` to the share of client address `origin`, if it allows.
    fn draw_origin(&mut self, origin: IpAddr, cost: usize) -> bool {
        let budgets = &self.rooms.budgets;
        self.origins
            .entry(origin)
            .or_insert_with(|| budgets.origin_charge(origin))
            .add(cost)
    }

    /// Gives `cost` back to the share of client address `origin`.
    fn return_origin(&mut self, origin: IpAddr, cost: usize) {
        if let Some(charge) = self.origins.get_mut(&origin) {
            charge.sub(cost);
            if charge.bytes() == 0 {
                self.origins.remove(&origin);
            }
        }
    }

    /// Takes a message that leaves the queue off its sender's share and its address's.
    fn unshare(&mut self, queued: &Queued) {
        let cost = queued.cost();
        if let Some(origin) = queued.origin {
            self.return_origin(origin, cost);
        }
        if let Some(share) = self.shares.get_mut(&queued.src) {
            share.messages -= 1;
            share.bytes -= cost;
            if share.messages == 0 {
                self.shares.remove(&queued.src);
            }
        }
    }

    /// Drops every queue whose deadline has passed and tells each sender once (docs/PROTOCOL.md §4).
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
            self.rooms
                .metrics
                .drop_messages(DropReason::Expired, queue.messages.len() as u64);
            let mut told: Vec<&Arc<str>> = Vec::new();
            for queued in &queue.messages {
                if !told.contains(&&queued.src) {
                    told.push(&queued.src);
                }
            }
            for src in told {
                self.send_expire(&dst, src);
            }
            for queued in &queue.messages {
                self.unshare(queued);
            }
        }
        self.settle();
    }

    fn send_expire(&mut self, unreachable: &str, sender: &str) {
        if self.members.contains_key(sender) {
            let frame = Utf8Bytes::from(protocol::expire_frame(unreachable, sender));
            self.deliver(sender, MessageType::Expire, frame);
        } else if let Some(remote) = &self.rooms.remote
            && let Some(node) = remote.locate(&self.key, sender)
        {
            // A sender on another node (its message was queued here).
            let frame = Utf8Bytes::from(protocol::expire_frame(unreachable, sender));
            let kind = MessageType::Expire;
            if !remote.deliver(&node, &self.key, unreachable, sender, kind, &frame) {
                let metrics = &self.rooms.metrics;
                metrics.drop_messages(DropReason::ClusterUnreachable, 1);
            }
        }
    }

    /// Removes everyone on the leaving list, and whoever their departures put on it.
    fn settle(&mut self) {
        while let Some((id, reason)) = self.leaving.pop() {
            self.remove(&id, reason);
        }
    }

    /// Removes a member: frees its slot, tells its session why if the session did not ask,
    /// and announces the departure to the room if configured.
    fn remove(&mut self, id: &Arc<str>, reason: CloseReason) {
        let Some(member) = self.members.remove(id) else {
            return;
        };
        self.routes.remove(id);
        // If the session asked (it is closing), nobody listens; otherwise this closes it.
        member.link.tx.kill(reason);
        self.announce_leave(id);
    }

    /// `{"type":"LEAVE","src":<leaver>,"dst":<member>}` to every other member that is not
    /// leaving itself: one pass over the room. Members whose queue is full are put on the
    /// leaving list, not removed here.
    fn announce_leave(&mut self, leaver: &str) {
        if !self.rooms.config.announce_leave {
            return;
        }
        let metrics = &self.rooms.metrics;
        let mut full = Vec::new();
        for (member, m) in &self.members {
            if m.leaving || **member == *leaver {
                continue;
            }
            let frame = Utf8Bytes::from(protocol::leave_frame(leaver, member));
            match m.link.tx.try_send(frame) {
                Ok(()) => metrics.relay(MessageType::Leave),
                Err((SendError::Full, _)) => {
                    metrics.drop_messages(DropReason::SlowReader, 1);
                    full.push(Arc::clone(member));
                }
                Err((SendError::Pressure, _)) => {
                    metrics.drop_messages(DropReason::OutboundPressure, 1);
                }
                Err((SendError::Closed, _)) => {
                    metrics.drop_messages(DropReason::Undeliverable, 1);
                }
            }
        }
        for id in full {
            self.slow_reader(id);
        }
    }

    /// Gives back the memory of maps that grew under a burst (many offline ids, many
    /// senders) once they are mostly empty; `HashMap` and `VecDeque` never shrink by
    /// themselves.
    fn shrink_idle_maps(&mut self) {
        fn oversized(len: usize, capacity: usize) -> bool {
            capacity > 64 && len < capacity / 4
        }
        if oversized(self.queues.len(), self.queues.capacity()) {
            self.queues.shrink_to_fit();
        }
        if oversized(self.shares.len(), self.shares.capacity()) {
            self.shares.shrink_to_fit();
        }
        if oversized(self.origins.len(), self.origins.capacity()) {
            self.origins.shrink_to_fit();
        }
        if oversized(self.deadlines.len(), self.deadlines.capacity()) {
            self.deadlines.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;
    use std::time::Duration;

    use tokio_util::task::TaskTracker;

    use super::*;
    use crate::config::Config;
    use crate::metrics::Metrics;
    use crate::room::budget::Budgets;
    use crate::room::outbox::Limits;
    use crate::room::{ROOM_MAILBOX, RoomHandle, SessionLink, link};

    fn registry(tweak: impl FnOnce(&mut Config)) -> Arc<RoomRegistry> {
        let mut config = Config::default();
        tweak(&mut config);
        Arc::new(RoomRegistry::new(
            Arc::new(config),
            Arc::new(Metrics::new()),
            TaskTracker::new(),
            None,
        ))
    }

    /// Joins `id` with an outbound queue of `frames`; the session end is returned unread,
    /// with its registration.
    async fn join(room: &RoomHandle, id: &str, frames: usize) -> (SessionLink, ConnId) {
        let (peer, session) = link(
            Limits {
                frames,
                bytes: 1 << 20,
            },
            Budgets::roomy(),
        );
        let conn = peer.conn;
        let request = JoinRequest {
            id: Arc::from(id),
            token: Box::from("t"),
            link: peer,
            expired: false,
            seat: None,
        };
        assert!(matches!(
            room.join(request).await,
            Some(JoinReply::Admitted)
        ));
        (session, conn)
    }

    /// Everything queued for a session, as text.
    fn taken(session: &SessionLink) -> Vec<String> {
        let mut frames = VecDeque::new();
        let mut probes = Vec::new();
        let waker = futures_util::task::noop_waker();
        let _ = session.rx.poll_take(
            &mut std::task::Context::from_waker(&waker),
            &mut frames,
            &mut probes,
        );
        frames.iter().map(|f| f.as_str().to_owned()).collect()
    }

    #[tokio::test]
    async fn thousands_of_slow_readers_leave_one_after_another_without_recursion() {
        const MEMBERS: usize = 5000;
        let rooms = registry(|c| c.announce_leave = true);
        let room = rooms.get_or_spawn("");
        // Each queue holds one frame: OPEN fills it, so every LEAVE finds it full.
        let mut sessions = Vec::new();
        for n in 0..MEMBERS {
            sessions.push(join(&room, &format!("p{n}"), 1).await);
        }
        assert_eq!(rooms.budgets.peers(), MEMBERS);
        // p0's session ends: its LEAVE finds every other queue full, and each of those
        // members' own departure would (recursively, before) announce to the rest.
        let leave = RoomCmd::Leave {
            id: Arc::from("p0"),
            conn: sessions[0].1,
            reason: CloseReason::ClientGone,
        };
        room.send(leave).await.unwrap();
        // The actor survives and has removed everyone.
        let peers = room.list_peers().await;
        assert!(peers.is_empty(), "{} left", peers.len());
        assert_eq!(rooms.budgets.peers(), 0);
        assert_eq!(
            rooms.metrics.dropped(DropReason::SlowReader),
            (MEMBERS - 1) as u64,
            "one LEAVE refused per member, then none to members already leaving"
        );
        drop(sessions);
    }

    /// A message from `src` to `dst` as its session hands it to the room.
    fn relay(src: &str, dst: &str, from: &SessionLink) -> RoomCmd {
        let (text, _) = protocol::relay_frame_locating_dst(MessageType::Offer, src, dst, None);
        RoomCmd::Relay(Relay {
            src: Arc::from(src),
            origin: None,
            kind: MessageType::Offer,
            dst: super::super::DstRef::Owned(Box::from(dst)),
            frame: Utf8Bytes::from(text),
            read_at: Instant::now(),
            sent: Some(from.rx.in_flight()),
        })
    }

    /// A queue's deadline passes while the mailbox is full: its EXPIRE must go out after the
    /// batch being handled, not once the mailbox is empty (a mailbox that never empties
    /// would starve it). The frames a member receives show where it went out.
    #[tokio::test(start_paused = true)]
    async fn a_queue_expires_after_the_batch_in_hand_while_the_mailbox_is_full() {
        let rooms = registry(|c| c.expire_timeout = Duration::from_millis(300));
        let room = rooms.get_or_spawn("");
        let (sender, _) = join(&room, "sender", 4 * ROOM_MAILBOX).await;
        let (other, _) = join(&room, "other", 16).await;
        room.send(relay("sender", "ghost", &sender)).await.unwrap();
        // (The clock is paused: these waits are bounded in turns, not time.)
        let mut turns = 0;
        while rooms.metrics.queued_messages.get() != 1 {
            turns += 1;
            assert!(turns < 1000, "the message was never queued");
            tokio::task::yield_now().await;
        }
        // A full mailbox, untouched until the clock is past the deadline (this runtime has
        // one thread: the actor runs only when this task yields).
        for _ in 0..ROOM_MAILBOX {
            assert!(room.try_send(relay("other", "sender", &other)).is_ok());
        }
        tokio::time::advance(Duration::from_millis(400)).await;
        let expire = protocol::expire_frame("ghost", "sender");
        let (mut frames, mut turns) = (Vec::new(), 0);
        while frames.len() < 1 + ROOM_MAILBOX + 1 {
            turns += 1;
            assert!(turns < 1000, "got {} frames", frames.len());
            tokio::task::yield_now().await;
            frames.extend(taken(&sender));
        }
        let at = frames.iter().position(|f| *f == expire);
        // OPEN, then at most one batch of OFFERs, then the EXPIRE.
        assert!(at.is_some_and(|at| at <= 1 + BATCH), "EXPIRE at {at:?}");
    }

    #[tokio::test]
    async fn a_failed_actor_frees_its_seats_and_is_replaced() {
        let rooms = registry(|_| {});
        let room = rooms.get_or_spawn("");
        let (member, _) = join(&room, "a", 16).await;
        assert_eq!(rooms.budgets.peers(), 1);
        assert!(rooms.inject_failure(""));
        let verdict = poll_fn(|cx| member.rx.poll_killed(cx, &mut Vec::new())).await;
        assert_eq!(verdict, CloseReason::RoomFailed);
        assert_eq!(rooms.budgets.peers(), 0);
        assert_eq!(rooms.metrics.room_failures(), 1);
        // The next join gets a fresh actor, not the dead one's handle.
        let fresh = rooms.get_or_spawn("");
        let _again = join(&fresh, "a", 16).await;
        assert_eq!(rooms.len(), 1);
    }
}
