//! A cluster of nodes on NATS (`--cluster`): one namespace of ids and rooms across nodes.
//!
//! The room layer asks "where is id X" and "deliver to X" through
//! [`crate::room::remote::Remote`], which [`Cluster`] implements; it never learns how other
//! nodes are reached. Without `--cluster` none of this exists at runtime.
//!
//! # What each node keeps
//!
//! - **Its own seats** (`Local`): every id registered here, and every claim under way,
//!   with its claim time and its reconnect secret's digest. A member holds its seat as a
//!   guard ([`crate::room::remote::Seat`]), so the table is always what the rooms hold. Each
//!   change (an id registered, an id gone) gets the next number of this node's sequence and
//!   is broadcast in batches on `<prefix>.bcast`.
//! - **A directory of the others** (`Directory`): which node holds which id, built from
//!   their broadcast changes, checked against the sequence numbers their heartbeats carry. A
//!   gap (a lost message, a restart, a rejoin after a partition) is repaired by asking that
//!   node for a snapshot (`SyncRequest` → `SyncChunk`s).
//!
//! # Claims: an id unique across the cluster
//!
//! Each node is the authority for its own ids. A node admitting an id it does not hold asks
//! every node ([`wire::Claim`] on the broadcast subject) and waits for the answers of those
//! it knows to be alive (at most `--cluster-request-timeout`): an id held elsewhere is
//! released by its holder's node (same secret: replaced; otherwise its holder is probed and
//! released only if dead) or refused with ID-TAKEN; in room mode the seats the nodes report
//! (their members, plus their own claims made earlier) decide ROOM-FULL. Concurrent claims
//! of one id are ordered by (claim time, node name): the earlier wins everywhere.
//!
//! # Failure
//!
//! Every node broadcasts a heartbeat every `--cluster-heartbeat`; a node not heard from for
//! `--cluster-node-timeout` is dead: its ids leave every directory and the members of its
//! rooms get LEAVE. A node that loses NATS keeps serving its own peers (claims are then
//! decided locally), answers messages for other nodes' peers with EXPIRE, reports itself
//! degraded, and — once NATS is back — exchanges snapshots with the others. An id admitted on
//! two nodes meanwhile is kept by the earlier claim; the later registration is closed with
//! reason `duplicate_id` (the **partition rule**, applied by the node that holds the later
//! one as soon as it learns of the earlier).
//!
//! # Order
//!
//! All of a node's publishes go through one bounded queue to one task and one NATS
//! connection, so the messages of one sender to one destination arrive in the order the
//! sender's room handed them over; a room sends what it queued for an id before anything
//! newer ([`crate::room::actor`]).

mod node;
pub mod wire;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::Subject;
use bytes::Bytes;
use tokio::sync::{Notify, mpsc};
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::config::{ClusterConfig, Config, RoomMode};
use crate::metrics::{ClusterDrop, Metrics};
use crate::protocol::MessageType;
use crate::room::remote::{NodeId, Remote, Seat, SeatGuard, TokenDigest};
use crate::room::{IdHasher, Refusal};

pub use node::start;

/// Most messages waiting to be published (besides the byte bound, `--cluster-publish-backlog`).
const PUBLISH_SLOTS: usize = 16 * 1024;

/// Directory changes kept for the next broadcast; past it they are dropped and the other
/// nodes, seeing the gap, ask for a snapshot instead.
const MAX_PENDING_CHANGES: usize = 8 * 1024;

/// Changes per broadcast message.
const CHANGES_PER_MESSAGE: usize = 256;

/// Answers a waiting request may receive before the rest are dropped (one per node).
const MAX_ANSWERS: usize = 256;

type IdMap<V> = HashMap<Arc<str>, V, IdHasher>;

/// µs since the Unix epoch.
fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// One id this node holds or is claiming.
#[derive(Debug)]
struct LocalSeat {
    token: TokenDigest,
    ts: u64,
    /// Registered (not just claimed).
    held: bool,
}

/// This node's seats and the changes to broadcast.
#[derive(Debug, Default)]
struct Local {
    rooms: HashMap<Box<str>, IdMap<LocalSeat>>,
    /// The number of the last change.
    seq: u64,
    /// Changes not broadcast yet, in order.
    changes: Vec<wire::Change>,
    /// The last claim time handed out (claim times are unique per node).
    last_ts: u64,
}

/// An id another node holds.
#[derive(Debug, Clone)]
struct Held {
    node: NodeId,
    ts: u64,
}

/// What this node knows of another.
#[derive(Debug)]
struct NodeState {
    epoch: u64,
    /// The number of its last change applied here.
    applied: u64,
    last_seen: Instant,
    /// Its inbox subject.
    inbox: Subject,
    /// A snapshot being received, and when it was asked for.
    sync: Option<(Instant, Vec<wire::Entry>)>,
}

/// The other nodes and the ids they hold.
#[derive(Debug, Default)]
struct Directory {
    nodes: HashMap<NodeId, NodeState>,
    rooms: HashMap<Box<str>, IdMap<Held>>,
    /// Ids held elsewhere, for the gauge.
    remote_peers: usize,
}

impl Directory {
    fn insert(&mut self, room: &str, id: &str, held: Held) -> bool {
        let ids = self.rooms.entry(Box::from(room)).or_default();
        let fresh = ids.insert(Arc::from(id), held).is_none();
        if fresh {
            self.remote_peers += 1;
        }
        fresh
    }

    /// Removes `id` if `node` holds it.
    fn remove(&mut self, room: &str, id: &str, node: &str) -> bool {
        let Some(ids) = self.rooms.get_mut(room) else {
            return false;
        };
        if ids.get(id).is_none_or(|h| &*h.node != node) {
            return false;
        }
        ids.remove(id);
        if ids.is_empty() {
            self.rooms.remove(room);
        }
        self.remote_peers -= 1;
        true
    }

    /// Removes every id `node` holds; returns them as (room, id).
    fn remove_node(&mut self, node: &str) -> Vec<(Box<str>, Arc<str>)> {
        let mut gone = Vec::new();
        self.rooms.retain(|room, ids| {
            ids.retain(|id, held| {
                let keep = &*held.node != node;
                if !keep {
                    gone.push((room.clone(), Arc::clone(id)));
                }
                keep
            });
            !ids.is_empty()
        });
        self.remote_peers -= gone.len();
        gone
    }
}

/// Replies to a request this node is waiting for, by request number.
type Pending = HashMap<u64, mpsc::Sender<wire::Message>>;

/// What a join's claim came to ([`Cluster::claim`]).
#[derive(Debug)]
pub enum Claimed {
    /// The id is this socket's across the cluster: register it with this seat.
    Granted(Seat),
    /// This node holds the id: its room decides, as a node alone would.
    Local,
    /// Another node holds it: ask it to let go ([`Cluster::release`]) or refuse.
    Elsewhere {
        /// The holder's node.
        node: NodeId,
        /// The claim carries the holder's secret.
        same_token: bool,
    },
    /// Refused.
    Refused(Refusal),
}

/// This node's end of the cluster, shared by sessions, rooms and the cluster's tasks.
pub struct Cluster {
    settings: ClusterConfig,
    /// `peerjsd.<cluster name>`.
    prefix: String,
    node: NodeId,
    /// This incarnation's start (µs since the epoch).
    epoch: u64,
    /// Room mode's seat limit (`usize::MAX` in global mode).
    max_room_peers: usize,
    metrics: Arc<Metrics>,
    /// Whether the NATS connection is up.
    connected: AtomicBool,
    publish_tx: mpsc::Sender<(Subject, Bytes)>,
    /// Bytes in the publish queue.
    backlog: AtomicUsize,
    local: Mutex<Local>,
    directory: RwLock<Directory>,
    pending: Mutex<Pending>,
    next_req: AtomicU64,
    /// Woken when `local` has changes to broadcast.
    changed: Notify,
    /// The publish queue's receiving end, until the publisher task takes it.
    publish_rx: Mutex<Option<mpsc::Receiver<(Subject, Bytes)>>>,
    /// Claims wait until then after (re)connecting: a node that has not heard the others'
    /// heartbeats yet would not know whom to ask.
    claims_from: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node", &self.node)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// This node's end of the cluster `settings` describes; nothing runs until [`start`].
    pub fn new(settings: ClusterConfig, config: &Config, metrics: Arc<Metrics>) -> Self {
        let (publish_tx, publish_rx) = mpsc::channel(PUBLISH_SLOTS);
        let prefix = format!("peerjsd.{}", settings.name);
        Cluster {
            node: Arc::from(settings.node_name.as_str()),
            prefix,
            settings,
            epoch: now_micros(),
            max_room_peers: match config.rooms {
                RoomMode::Token => config.max_room_peers,
                RoomMode::Global => usize::MAX,
            },
            metrics,
            connected: AtomicBool::new(false),
            publish_tx,
            backlog: AtomicUsize::new(0),
            local: Mutex::default(),
            directory: RwLock::default(),
            pending: Mutex::default(),
            next_req: AtomicU64::new(1),
            changed: Notify::new(),
            publish_rx: Mutex::new(Some(publish_rx)),
            claims_from: Mutex::new(None),
        }
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Whether the NATS connection is up (`/health` says "degraded" when not).
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// Other nodes alive, as far as this node knows.
    pub fn live_nodes(&self) -> usize {
        self.read_directory().nodes.len()
    }

    fn lock_local(&self) -> MutexGuard<'_, Local> {
        // Plain data; every operation leaves it consistent.
        self.local.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn read_directory(&self) -> RwLockReadGuard<'_, Directory> {
        self.directory.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_directory(&self) -> RwLockWriteGuard<'_, Directory> {
        self.directory.write().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_pending(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn broadcast_subject(&self) -> Subject {
        Subject::from(format!("{}.bcast", self.prefix))
    }

    fn inbox_of(&self, node: &str) -> Subject {
        Subject::from(format!("{}.node.{node}", self.prefix))
    }

    /// Queues a message for NATS unless the connection is down or the backlog is full
    /// (counted either way). Never waits.
    fn publish(&self, subject: Subject, payload: Bytes) -> bool {
        if !self.is_connected() {
            self.metrics.cluster_drop(ClusterDrop::Disconnected);
            return false;
        }
        let len = payload.len() + subject.len();
        let limit = self.settings.publish_backlog;
        let reserved = self
            .backlog
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                (b + len <= limit).then_some(b + len)
            })
            .is_ok();
        if !reserved {
            self.metrics.cluster_drop(ClusterDrop::BacklogFull);
            return false;
        }
        if self.publish_tx.try_send((subject, payload)).is_err() {
            self.backlog.fetch_sub(len, Ordering::AcqRel);
            self.metrics.cluster_drop(ClusterDrop::BacklogFull);
            return false;
        }
        true
    }

    /// Registers a request and returns its number and where its answers arrive.
    fn open_request(&self, answers: usize) -> (u64, RequestGuard<'_>) {
        let req = self.next_req.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(answers.clamp(1, MAX_ANSWERS));
        self.lock_pending().insert(req, tx);
        (
            req,
            RequestGuard {
                cluster: self,
                req,
                rx,
            },
        )
    }

    /// Hands an answer to the request waiting for it; false if none is (a late or forged
    /// answer).
    fn answer(&self, req: u64, message: wire::Message) -> bool {
        let pending = self.lock_pending();
        match pending.get(&req) {
            Some(tx) => tx.try_send(message).is_ok(),
            None => false,
        }
    }

    /// Called on (re)connecting: claims wait one and a half heartbeats, until every live node
    /// has been heard from.
    fn connected_now(&self) {
        let at = Instant::now() + self.settings.heartbeat * 3 / 2;
        *self.claims_from.lock().unwrap_or_else(|e| e.into_inner()) = Some(at);
    }

    /// Claims `id` in `room` for a joining socket whose secret digests to `token`.
    pub async fn claim(self: &Arc<Self>, room: &str, id: &Arc<str>, token: TokenDigest) -> Claimed {
        let wait_until = *self.claims_from.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(at) = wait_until
            && self.is_connected()
            && Instant::now() < at
        {
            tokio::time::sleep_until(at).await;
        }
        // 1. This node's own view: an id held here is the room's to decide; one being claimed
        //    by another socket here right now is taken.
        let ts = {
            let mut local = self.lock_local();
            let ts = now_micros().max(local.last_ts + 1);
            local.last_ts = ts;
            let ids = local.rooms.entry(Box::from(room)).or_default();
            match ids.get(id) {
                Some(seat) if seat.held => return Claimed::Local,
                Some(_) => return Claimed::Refused(Refusal::IdTaken),
                None => {}
            }
            ids.insert(
                Arc::clone(id),
                LocalSeat {
                    token,
                    ts,
                    held: false,
                },
            );
            ts
        };
        let seat = ClusterSeat {
            cluster: Arc::clone(self),
            room: Box::from(room),
            id: Arc::clone(id),
            ts,
            held: false,
        };
        // 2. Ask every node this one knows to be alive.
        let expected: Vec<NodeId> = self.read_directory().nodes.keys().cloned().collect();
        let mut replies: Vec<wire::ClaimReply> = Vec::new();
        if !expected.is_empty() {
            let (req, mut answers) = self.open_request(expected.len());
            let claim = wire::Message::Claim(wire::Claim {
                node: self.node.to_string(),
                req,
                room: room.to_owned(),
                id: id.to_string(),
                token,
                ts,
            });
            if self.publish(self.broadcast_subject(), claim.encode()) {
                let deadline = Instant::now() + self.settings.request_timeout;
                while replies.len() < expected.len() {
                    match timeout_at(deadline, answers.rx.recv()).await {
                        Some(wire::Message::ClaimReply(reply))
                            if expected.iter().any(|n| **n == *reply.node)
                                && !replies.iter().any(|r| r.node == reply.node) =>
                        {
                            replies.push(reply)
                        }
                        Some(_) => {}
                        None => break,
                    }
                }
                if replies.len() < expected.len() {
                    self.metrics.cluster_drop(ClusterDrop::Unanswered);
                }
            }
            // Not connected: decided here alone; the partition rule settles it later.
        }
        // 3. The verdict.
        for reply in &replies {
            match reply.verdict {
                wire::Verdict::ClaimedEarlier => return Claimed::Refused(Refusal::IdTaken),
                wire::Verdict::Held { same_token } => {
                    return Claimed::Elsewhere {
                        node: Arc::from(reply.node.as_str()),
                        same_token,
                    };
                }
                wire::Verdict::Free => {}
            }
        }
        if self.max_room_peers != usize::MAX {
            let elsewhere: usize = replies.iter().map(|r| r.seats as usize).sum();
            let here = self.local_seats(room, ts);
            if elsewhere + here >= self.max_room_peers {
                return Claimed::Refused(Refusal::RoomFull);
            }
        }
        Claimed::Granted(Box::new(seat))
    }

    /// Seats this node holds in `room`, counting its claims made before `before`.
    fn local_seats(&self, room: &str, before: u64) -> usize {
        let local = self.lock_local();
        local.rooms.get(room).map_or(0, |ids| {
            ids.values().filter(|s| s.held || s.ts < before).count()
        })
    }

    /// Asks `node` to let `id` go for a newcomer with secret `token`: it replaces a holder
    /// with the same secret, and otherwise probes it and lets it go only if it is dead.
    /// True if the id was let go (claim it again). `wait` bounds the answer.
    pub async fn release(
        &self,
        node: &NodeId,
        room: &str,
        id: &str,
        token: TokenDigest,
        wait: Duration,
    ) -> bool {
        let inbox = match self.read_directory().nodes.get(node) {
            Some(state) => state.inbox.clone(),
            // It died meanwhile: its ids are free.
            None => return true,
        };
        let (req, mut answer) = self.open_request(1);
        let message = wire::Message::Release(wire::Release {
            node: self.node.to_string(),
            req,
            room: room.to_owned(),
            id: id.to_owned(),
            token,
        });
        if !self.publish(inbox, message.encode()) {
            return false;
        }
        let deadline = Instant::now() + wait;
        loop {
            match timeout_at(deadline, answer.rx.recv()).await {
                Some(wire::Message::ReleaseReply(reply)) if *reply.node == **node => {
                    return matches!(
                        reply.outcome,
                        wire::Outcome::Released | wire::Outcome::NotHere
                    );
                }
                Some(_) => {}
                // No answer: if the node has been declared dead meanwhile, its ids are free.
                None => return !self.read_directory().nodes.contains_key(node),
            }
        }
    }

    /// The seat becomes a holding: broadcast it.
    fn hold(&self, room: &str, id: &Arc<str>, ts: u64) {
        let mut local = self.lock_local();
        let Some(seat) = local.rooms.get_mut(room).and_then(|ids| ids.get_mut(id)) else {
            return;
        };
        if seat.ts != ts || seat.held {
            return;
        }
        seat.held = true;
        push_change(&mut local, wire::ChangeOp::Join, room, id, ts);
        drop(local);
        self.changed.notify_one();
    }

    /// The seat is given back: forget it, and broadcast that if it was held.
    fn unseat(&self, room: &str, id: &Arc<str>, ts: u64) {
        let mut local = self.lock_local();
        let Some(ids) = local.rooms.get_mut(room) else {
            return;
        };
        let held = match ids.get(id) {
            Some(seat) if seat.ts == ts => seat.held,
            _ => return,
        };
        ids.remove(id);
        if ids.is_empty() {
            local.rooms.remove(room);
        }
        if held {
            push_change(&mut local, wire::ChangeOp::Leave, room, id, ts);
            drop(local);
            self.changed.notify_one();
        }
    }
}

/// Records a change with the next sequence number. Past [`MAX_PENDING_CHANGES`] unsent the
/// oldest are dropped: the other nodes see the gap and ask for a snapshot.
fn push_change(local: &mut Local, op: wire::ChangeOp, room: &str, id: &str, ts: u64) {
    local.seq += 1;
    if local.changes.len() >= MAX_PENDING_CHANGES {
        local.changes.clear();
    }
    let seq = local.seq;
    local.changes.push(wire::Change {
        seq,
        op,
        room: room.to_owned(),
        id: id.to_owned(),
        ts,
    });
}

/// Waits for `future` until `deadline`; `None` if it passed (or the future gave `None`).
async fn timeout_at<T>(deadline: Instant, future: impl Future<Output = Option<T>>) -> Option<T> {
    tokio::time::timeout_at(deadline, future)
        .await
        .ok()
        .flatten()
}

/// A request's registration; dropping it forgets the request.
struct RequestGuard<'a> {
    cluster: &'a Cluster,
    req: u64,
    rx: mpsc::Receiver<wire::Message>,
}

impl Drop for RequestGuard<'_> {
    fn drop(&mut self) {
        self.cluster.lock_pending().remove(&self.req);
    }
}

/// A claimed id's seat (see [`crate::room::remote::SeatGuard`]).
#[derive(Debug)]
struct ClusterSeat {
    cluster: Arc<Cluster>,
    room: Box<str>,
    id: Arc<str>,
    ts: u64,
    held: bool,
}

impl SeatGuard for ClusterSeat {
    fn hold(&mut self) {
        if !self.held {
            self.held = true;
            self.cluster.hold(&self.room, &self.id, self.ts);
        }
    }

    fn claimed_at(&self) -> u64 {
        self.ts
    }
}

impl Drop for ClusterSeat {
    fn drop(&mut self) {
        self.cluster.unseat(&self.room, &self.id, self.ts);
    }
}

impl Remote for Cluster {
    fn locate(&self, room: &str, id: &str) -> Option<NodeId> {
        let directory = self.read_directory();
        directory
            .rooms
            .get(room)
            .and_then(|ids| ids.get(id))
            .map(|held| Arc::clone(&held.node))
    }

    fn deliver(
        &self,
        node: &NodeId,
        room: &str,
        src: &str,
        dst: &str,
        kind: MessageType,
        frame: &Utf8Bytes,
    ) -> bool {
        let Some(inbox) = self
            .read_directory()
            .nodes
            .get(node)
            .map(|n| n.inbox.clone())
        else {
            return false;
        };
        let message = wire::Message::Deliver(wire::Deliver {
            room: room.to_owned(),
            src: src.to_owned(),
            dst: dst.to_owned(),
            kind,
            frame: Bytes::from(frame.clone()),
        });
        let sent = self.publish(inbox, message.encode());
        if sent {
            self.metrics.cluster_sent.inc();
        }
        sent
    }

    fn members(&self, room: &str) -> Vec<Arc<str>> {
        let directory = self.read_directory();
        let Some(ids) = directory.rooms.get(room) else {
            return Vec::new();
        };
        let mut held: Vec<(&Arc<str>, u64)> = ids.iter().map(|(id, h)| (id, h.ts)).collect();
        held.sort_unstable_by_key(|(_, ts)| *ts);
        held.into_iter().map(|(id, _)| Arc::clone(id)).collect()
    }
}

/// Waits for `future` at most `limit`.
async fn bounded<T>(limit: Duration, future: impl Future<Output = T>) -> Option<T> {
    timeout(limit, future).await.ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ClusterAuth;

    fn cluster(backlog: usize, rooms: RoomMode) -> Arc<Cluster> {
        let settings = ClusterConfig {
            urls: vec!["nats://127.0.0.1:4222".into()],
            name: "t".into(),
            node_name: "me".into(),
            auth: ClusterAuth::None,
            tls_ca: None,
            heartbeat: Duration::from_secs(1),
            node_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_millis(50),
            publish_backlog: backlog,
        };
        let config = Config {
            rooms,
            max_room_peers: 2,
            ..Config::default()
        };
        Arc::new(Cluster::new(settings, &config, Arc::new(Metrics::new())))
    }

    #[test]
    fn the_publish_queue_is_bounded_in_bytes_and_refuses_while_disconnected() {
        let c = cluster(64 * 1024, RoomMode::Global);
        let payload = Bytes::from(vec![b'x'; 1000]);
        assert!(!c.publish(c.broadcast_subject(), payload.clone()));
        assert_eq!(c.metrics.cluster_dropped(ClusterDrop::Disconnected), 1);
        c.connected.store(true, Ordering::Release);
        let mut accepted = 0;
        while c.publish(c.broadcast_subject(), payload.clone()) {
            accepted += 1;
            assert!(accepted < 1000, "never refused");
        }
        // Nobody drains it here: it holds what fits in 64 KiB and no more.
        assert_eq!(accepted, 64 * 1024 / (1000 + c.broadcast_subject().len()));
        assert!(c.backlog.load(Ordering::Acquire) <= 64 * 1024);
        assert_eq!(c.metrics.cluster_dropped(ClusterDrop::BacklogFull), 1);
    }

    #[tokio::test]
    async fn seats_are_claimed_held_and_given_back_with_numbered_changes() {
        // Alone (no other node known), and disconnected: claims are decided here.
        let c = cluster(1 << 20, RoomMode::Token);
        let id: Arc<str> = Arc::from("p0");
        let Claimed::Granted(mut seat) = c.claim("r", &id, [1; 16]).await else {
            panic!("not granted");
        };
        // A second claim of the same id here while the first is under way: taken.
        assert!(matches!(
            c.claim("r", &id, [1; 16]).await,
            Claimed::Refused(Refusal::IdTaken)
        ));
        seat.hold();
        assert!(matches!(c.claim("r", &id, [1; 16]).await, Claimed::Local));
        let other: Arc<str> = Arc::from("p1");
        let Claimed::Granted(second) = c.claim("r", &other, [2; 16]).await else {
            panic!("not granted");
        };
        // Room of 2: the third claim in the room is refused while both seats are taken.
        let third: Arc<str> = Arc::from("p2");
        assert!(matches!(
            c.claim("r", &third, [3; 16]).await,
            Claimed::Refused(Refusal::RoomFull)
        ));
        drop(second);
        drop(seat);
        let local = c.lock_local();
        assert!(local.rooms.is_empty(), "{:?}", local.rooms);
        // One join and one leave, numbered 1 and 2 (the unheld claim changed nothing).
        let ops: Vec<(u64, wire::ChangeOp)> = local.changes.iter().map(|c| (c.seq, c.op)).collect();
        assert_eq!(ops, [(1, wire::ChangeOp::Join), (2, wire::ChangeOp::Leave)]);
    }
}
