//! Rooms: who is connected, and the messages waiting for those who are not.
//!
//! A room is one [`actor::RoomActor`] task that alone owns the room's members, its offline
//! queue and its queue deadlines. Sessions talk to it through a [`RoomHandle`] (a bounded
//! mailbox of [`RoomCmd`]s); it answers joins on a `oneshot` and writes to members only with
//! `try_send` on their bounded outbound queues, so a slow peer can never stall a room.
//!
//! Messages between connected members take a shorter path: the actor publishes each
//! member's queue in the room's [`Routes`], and a session delivers straight to it, unless a
//! message of its own is still on its way through the actor (then it follows it there: the
//! per-sender order rule, stated in docs/ARCHITECTURE.md, "Per-sender order"). The actor still
//! decides everything else: who is a member, what is queued for
//! whom, and who is closed as a slow reader (a direct push that fails goes through the actor).
//!
//! In a cluster (`--cluster`) the room also knows, through [`remote::Remote`], which ids other
//! nodes hold: a message for one goes there, what waits in its offline queue follows the id
//! to whichever node it joins, and departures elsewhere are announced to its members. The
//! direct path between members of this node is the same with or without a cluster.
//!
//! In global mode the whole server is one room (key `""`); in token mode the token names
//! the room. [`registry::RoomRegistry`] maps keys to live actors, spawning on first join and
//! forgetting a room when its actor ends (no members and nothing queued).

pub mod actor;
pub mod budget;
pub mod outbox;
pub mod registry;
pub mod remote;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::protocol::CloseReason;
use crate::protocol::MessageType;

/// Mailbox size of a room actor.
pub const ROOM_MAILBOX: usize = 1024;

/// Identifies one socket's registration, so a stale socket's departure cannot remove a
/// newer registration of the same id (a reference bug: docs/PROTOCOL.md §5).
pub type ConnId = u64;

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// A connection number never used before in this process.
pub fn next_conn_id() -> ConnId {
    NEXT_CONN.fetch_add(1, Ordering::Relaxed)
}

/// The room's end of a member's session.
#[derive(Debug)]
pub struct PeerLink {
    /// This registration.
    pub conn: ConnId,
    /// The session's outbound queue; the room only ever `try_send`s on it, and `kill`s it
    /// when it drops a member the session did not ask to remove (take-over, slow reader,
    /// failed probe, shutdown). Dropped without a kill (the room failed), the session closes
    /// with 1011.
    pub tx: outbox::OutboxSender,
}

/// The session's end of its link.
#[derive(Debug)]
pub struct SessionLink {
    /// Frames and probes to write, or the room's verdict.
    pub rx: outbox::OutboxReceiver,
}

/// A fresh pair of link ends with an outbound queue bounded by `limits`, drawing on the
/// outbound total of `budgets`.
pub fn link(limits: outbox::Limits, budgets: Arc<budget::Budgets>) -> (PeerLink, SessionLink) {
    let (tx, rx) = outbox::outbox(limits, budgets);
    (
        PeerLink {
            conn: next_conn_id(),
            tx,
        },
        SessionLink { rx },
    )
}

/// A socket asking to be registered.
#[derive(Debug)]
pub struct JoinRequest {
    /// The id it wants.
    pub id: Arc<str>,
    /// Its reconnect secret: the token in global mode; with `--auth-secret` the signed
    /// token's signature (in both modes: then every token is the peer's own); without it in
    /// room mode the room name, which proves nothing (every member knows it).
    pub token: Box<str>,
    /// A signed token past its `exp`: good only to reconnect to the id registered with the
    /// same token; anyone else is refused ([`Refusal::TokenExpired`]).
    pub expired: bool,
    /// Where the room reaches it once admitted.
    pub link: PeerLink,
    /// In a cluster: the id's claim, granted by the other nodes (`None` for an id this node
    /// already holds, which the room takes over or refuses as a node alone would).
    pub seat: Option<remote::Seat>,
}

/// Why a join was refused (each maps to an ERROR or ID-TAKEN frame).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A live peer holds the id.
    IdTaken,
    /// The room has `--max-room-peers` members.
    RoomFull,
    /// The server has `--concurrent-limit` peers.
    ServerFull,
    /// The signed token has expired and this is not a same-token reconnect.
    TokenExpired,
}

/// The room's answer to a join.
#[derive(Debug)]
pub enum JoinReply {
    /// Registered; OPEN (and any queued messages) are already in the outbound queue.
    Admitted,
    /// Refused; the link was dropped.
    Refused(Refusal),
    /// The id is held by another socket that was just probed. If `alive` resolves in time,
    /// the holder is alive (answer ID-TAKEN); otherwise send [`RoomCmd::TakeOver`] with the
    /// request handed back here.
    Probe {
        /// The holder's registration.
        holder: ConnId,
        /// Resolves when the holder shows a sign of life; errors if it cannot be asked.
        alive: oneshot::Receiver<()>,
        /// The request, to retry with.
        request: JoinRequest,
    },
    /// The room was closing; ask the registry again.
    Retry,
}

/// A message for a room actor.
#[derive(Debug)]
pub enum RoomCmd {
    /// Register a socket.
    Join {
        /// Who.
        request: JoinRequest,
        /// The answer.
        reply: oneshot::Sender<JoinReply>,
    },
    /// The holder `stale` of the request's id failed its probe: replace it.
    TakeOver {
        /// The registration that failed to answer.
        stale: ConnId,
        /// Who takes its place.
        request: JoinRequest,
        /// The answer.
        reply: oneshot::Sender<JoinReply>,
    },
    /// Deliver a message, or queue it if `dst` is offline.
    Relay(Relay),
    /// A member's socket ended.
    Leave {
        /// Its id.
        id: Arc<str>,
        /// Its registration; ignored if the id has since been registered again.
        conn: ConnId,
        /// Why (for logs and metrics).
        reason: CloseReason,
    },
    /// The server is shutting down: close every member (1001) and end.
    Shutdown,
    /// List the members' ids in the order they joined.
    ListPeers {
        /// The answer.
        reply: oneshot::Sender<Vec<Arc<str>>>,
    },
    /// Panic, as a bug would ([`registry::RoomRegistry::inject_failure`], for tests).
    Fail,
    /// Another node registered `id`: what is queued here for it goes there.
    RemoteJoined {
        /// The id.
        id: Arc<str>,
    },
    /// `id` left another node (or that node died): the members here hear LEAVE.
    RemoteLeft {
        /// The id.
        id: Arc<str>,
    },
    /// Another node's newcomer wants `id`: is it held here, with the newcomer's secret, or
    /// is its holder alive?
    Check {
        /// The id.
        id: Arc<str>,
        /// The newcomer's secret, digested.
        token: remote::TokenDigest,
        /// The answer.
        reply: oneshot::Sender<Holder>,
    },
    /// Close member `id` (if it is still registration `conn`, or holds a seat claimed at
    /// `claimed_at`) with `reason`; `reply` learns whether it was removed.
    Evict {
        /// The id.
        id: Arc<str>,
        /// Only this registration.
        conn: Option<ConnId>,
        /// Only the registration with this claim time.
        claimed_at: Option<u64>,
        /// Why (the member's close reason).
        reason: CloseReason,
        /// Told once the member is gone (or was not there).
        reply: Option<oneshot::Sender<bool>>,
    },
}

/// What a room knows of an id another node's newcomer wants ([`RoomCmd::Check`]).
#[derive(Debug)]
pub enum Holder {
    /// Not registered here.
    NotHere,
    /// Registered with the newcomer's own secret: a reconnect, which replaces it.
    SameToken(ConnId),
    /// Registered by someone else, now probed: `alive` resolves if it answers.
    Probing(ConnId, oneshot::Receiver<()>),
}

/// One message to route.
#[derive(Debug)]
pub struct Relay {
    /// The sender's id (for EXPIRE).
    pub src: Arc<str>,
    /// The sender's client address (an IPv6 one reduced to its `--ipv6-prefix` network), for
    /// its share of the offline queue; `None` for a message from another node.
    pub origin: Option<IpAddr>,
    /// Its type.
    pub kind: MessageType,
    /// The destination id (usually a span of `frame`: no allocation per message).
    pub dst: DstRef,
    /// The complete outbound frame, `src` already stamped.
    pub frame: Utf8Bytes,
    /// When the session read it (for the relay latency histogram).
    pub read_at: Instant,
    /// Counts the message as on its way through the room until the room is done with it
    /// (`None` for a message from another node).
    pub sent: Option<outbox::InFlight>,
}

/// Where a relayed message's destination id is.
#[derive(Debug)]
pub enum DstRef {
    /// Bytes `start..end` of the frame (the id needed no JSON escaping).
    InFrame {
        /// First byte.
        start: u32,
        /// One past the last byte.
        end: u32,
    },
    /// A copy (the id was escaped in the frame).
    Owned(Box<str>),
}

impl DstRef {
    /// Where `dst` is, given the frame built by [`crate::protocol::relay_frame_locating_dst`].
    pub fn new(dst: &str, located: Option<std::ops::Range<usize>>) -> Self {
        match located.and_then(|r| Some((u32::try_from(r.start).ok()?, u32::try_from(r.end).ok()?)))
        {
            Some((start, end)) => DstRef::InFrame { start, end },
            None => DstRef::Owned(Box::from(dst)),
        }
    }

    /// The id, read from `frame` when it lives there.
    pub fn resolve<'a>(&'a self, frame: &'a Utf8Bytes) -> &'a str {
        match self {
            DstRef::InFrame { start, end } => frame
                .as_str()
                .get(*start as usize..*end as usize)
                .unwrap_or(""),
            DstRef::Owned(dst) => dst,
        }
    }
}

/// Hash maps keyed by peer ids: foldhash, seeded per process (ids come from clients).
pub type IdHasher = foldhash::fast::RandomState;

/// A room's members' queues by id, written only by its actor (a member is published after
/// its OPEN and queued messages are in its queue, and withdrawn when it leaves), read by its
/// members' sessions to deliver directly. Readers never block each other; the actor writes
/// only on joins and leaves. A plain map behind one lock: a room of four costs ~100 bytes
/// (a sharded map would cost a kilobyte per room).
#[derive(Debug, Default)]
pub struct Routes {
    map: RwLock<RouteMap>,
}

type RouteMap = HashMap<Arc<str>, outbox::Route, IdHasher>;

impl Routes {
    fn read(&self) -> RwLockReadGuard<'_, RouteMap> {
        // Plain data with no invariants a panic could break.
        self.map.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, RouteMap> {
        self.map.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes member `id`'s queue.
    pub fn insert(&self, id: Arc<str>, route: outbox::Route) {
        self.write().insert(id, route);
    }

    /// Withdraws member `id`.
    pub fn remove(&self, id: &str) {
        self.write().remove(id);
    }

    /// Withdraws everyone.
    pub fn clear(&self) {
        self.write().clear();
    }

    /// Pushes `frame` to member `dst`'s queue; gives it back if there is no such member or
    /// its queue refused it.
    fn try_deliver(&self, dst: &str, frame: Utf8Bytes) -> Result<(), Utf8Bytes> {
        match self.read().get(dst) {
            Some(route) => route.try_send_frame(frame),
            None => Err(frame),
        }
    }
}

/// A cheap, cloneable way to reach a room actor.
#[derive(Debug, Clone)]
pub struct RoomHandle {
    tx: mpsc::Sender<RoomCmd>,
    routes: Arc<Routes>,
}

impl RoomHandle {
    /// A handle on the actor reading `tx`'s mailbox, which maintains `routes`.
    pub fn new(tx: mpsc::Sender<RoomCmd>, routes: Arc<Routes>) -> Self {
        RoomHandle { tx, routes }
    }

    /// Hands `frame` straight to member `dst`'s queue. Gives it back if `dst` is not a
    /// member or its queue refused it (full or closing): the room then decides.
    pub fn try_deliver(&self, dst: &str, frame: Utf8Bytes) -> Result<(), Utf8Bytes> {
        self.routes.try_deliver(dst, frame)
    }

    /// Sends a command, waiting for mailbox space. Gives the command back if the room ended.
    pub async fn send(&self, cmd: RoomCmd) -> Result<(), RoomCmd> {
        self.tx.send(cmd).await.map_err(|e| e.0)
    }

    /// Whether the actor is gone (its mailbox is closed).
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Sends a command if the mailbox has room, without waiting.
    pub fn try_send(&self, cmd: RoomCmd) -> Result<(), mpsc::error::TrySendError<RoomCmd>> {
        self.tx.try_send(cmd)
    }

    /// Asks to register. `None` if the room ended before answering: ask the registry for
    /// the room again, with a fresh link.
    pub async fn join(&self, request: JoinRequest) -> Option<JoinReply> {
        let (reply, answer) = oneshot::channel();
        self.send(RoomCmd::Join { request, reply }).await.ok()?;
        answer.await.ok()
    }

    /// Asks to replace a holder that failed its probe. `None` as for [`Self::join`].
    pub async fn take_over(&self, stale: ConnId, request: JoinRequest) -> Option<JoinReply> {
        let (reply, answer) = oneshot::channel();
        self.send(RoomCmd::TakeOver {
            stale,
            request,
            reply,
        })
        .await
        .ok()?;
        answer.await.ok()
    }

    /// The members' ids, oldest first; empty if the room has ended.
    pub async fn list_peers(&self) -> Vec<Arc<str>> {
        let (reply, answer) = oneshot::channel();
        if self.send(RoomCmd::ListPeers { reply }).await.is_err() {
            return Vec::new();
        }
        answer.await.unwrap_or_default()
    }
}
