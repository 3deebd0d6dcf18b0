//! One task per socket, from admission to close.
//!
//! The task is the socket's only reader and only writer. It `select!`s over: its outbox
//! (frames to write in batches with one flush, or the room's verdict to close: taken over,
//! slow reader, shutdown), the next inbound frame, and its alive deadline. The deadline is lazy: each frame
//! only records the time it arrived, and the timer, armed for `last_seen + alive_timeout`,
//! re-arms itself when it fires early, so an active peer costs no timer work per frame and
//! an idle one wakes once per timeout.
//!
//! Inbound frames are checked here, at the edge, before the room sees them: rate limit,
//! shape, and `src` stamping. A message for a connected member of the room goes straight to
//! that member's outbound queue (docs/ARCHITECTURE.md, "Per-sender order"); the rest (offline
//! destinations, a full queue, a message behind one of ours still in the room) go to the room
//! actor.

use std::future::{Future, poll_fn};
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{FutureExt, SinkExt, StreamExt};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::collections::VecDeque;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep, sleep_until, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data as OpData, OpCode};
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::{Bytes, Error as WsError, Message, Utf8Bytes};

use super::read_ahead::ReadAhead;
use crate::auth::TokenError;
use crate::cluster::{Claimed, Cluster};
use crate::config::{Config, RoomMode};
use crate::gate;
use crate::logging::LogIp;
use crate::protocol::{self, ClientFrame, ConnectParams, Dst, MessageType, texts};
use crate::protocol::{CloseReason, DropReason, Rejection};
use crate::room::outbox::{self, Limits};
use crate::room::remote::{Seat, TokenDigest, token_digest};
use crate::room::{
    self, DstRef, JoinReply, JoinRequest, Refusal, Relay, RoomCmd, RoomHandle, SessionLink,
};
use crate::state::{IpGuard, Shared};

/// Unusable frames (malformed, binary) in a row before the peer is closed.
const MAX_BAD_FRAMES_IN_A_ROW: u32 = 16;
/// Most inbound frames handled in one go before the session looks at its outbox again.
const READ_BATCH: u8 = 32;
/// Rate-limit drops further apart than this start a new "over the limit" streak.
const OVER_LIMIT_GAP: Duration = Duration::from_secs(1);
/// How long to wait for the client's close frame after sending ours.
const CLOSE_HANDSHAKE: Duration = Duration::from_secs(2);
/// Attempts at joining a room that keeps closing under us (it cannot happen twice in a row
/// unless the server is shutting down).
const JOIN_ATTEMPTS: usize = 4;

/// Where a socket came from, for limits and logs.
#[derive(Debug)]
pub struct Origin {
    /// The client IP (from X-Forwarded-For with `--proxied`).
    pub ip: IpAddr,
    /// Its place in the per-IP count, released when the session ends.
    pub guard: IpGuard,
}

/// Runs the WebSocket protocol on `io`, a socket just after the HTTP 101, until it closes.
/// The read-ahead tells the session when frames from one `recv` are still waiting.
///
/// Every idle peer is one of these tasks, so its size matters: the arguments go into boxes
/// before the first await (an async fn, or a helper wrapping this one, keeps its arguments
/// for its whole life, even once moved: +0.12 kB per idle peer for one such helper),
/// admission runs in its own boxed future, and the long-lived state is one `Session` next to
/// its `serve` future.
pub fn run<S>(
    io: ReadAhead<S>,
    params: ConnectParams,
    shared: Arc<Shared>,
    origin: Origin,
) -> impl Future<Output = ()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    drive(Box::new(io), Box::new((params, shared, origin)))
}

async fn drive<S>(io: Box<ReadAhead<S>>, start: Box<(ConnectParams, Arc<Shared>, Origin)>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (params, shared, origin) = *start;
    // `{ io }` moves the box into a temporary, so it is freed here rather than kept (as the
    // argument would be) until the socket closes.
    let io = *{ io };
    let config = Some(super::socket_config(&shared.config));
    let mut ws = Box::new(WebSocketStream::from_raw_socket(io, Role::Server, config).await);
    let Some(admitted) = Box::pin(admit(&mut ws, params, &shared, origin.ip)).await else {
        return;
    };
    let mut session = Session::new(ws, admitted, Arc::clone(&shared), origin.ip);
    let (reason, session_len) = session.run().await;
    shared.metrics.close(reason);
    tracing::info!(
        peer = &*session.id,
        ip = %LogIp(origin.ip),
        reason = reason.as_str(),
        seconds = session_len.as_secs(),
        "peer closed"
    );
    drop(origin.guard);
}

/// What admission produces: a registered peer.
struct Admitted {
    id: Arc<str>,
    room: RoomHandle,
    link: SessionLink,
    conn: room::ConnId,
}

/// Validates the query (docs/PROTOCOL.md §1.3 order, then `--issued-ids-only` and the signed
/// token), then registers with the room. On refusal the client gets ERROR or ID-TAKEN and a
/// close, and `None` is returned.
async fn admit<S>(
    ws: &mut WebSocketStream<S>,
    params: ConnectParams,
    shared: &Arc<Shared>,
    ip: IpAddr,
) -> Option<Admitted>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let config = &shared.config;
    let refusal = if params.id.is_empty() || params.token.is_empty() || params.key.is_empty() {
        Some((Rejection::MissingParams, texts::NO_ID_TOKEN_OR_KEY))
    } else if params.key.len() > protocol::MAX_NAME_LEN {
        Some((Rejection::InvalidName, texts::KEY_TOO_LONG))
    } else if params.key != config.key {
        Some((Rejection::InvalidKey, texts::INVALID_KEY))
    } else if !protocol::is_valid_id(&params.id) {
        Some((Rejection::InvalidName, texts::INVALID_ID))
    } else if shared.auth.is_none() && params.token.len() > protocol::MAX_NAME_LEN {
        // Signed tokens are longer; their own check below caps them.
        Some((Rejection::InvalidName, texts::TOKEN_TOO_LONG))
    } else if shared
        .ids
        .as_ref()
        .is_some_and(|ids| !ids.is_issued(&params.id))
    {
        Some((Rejection::IdNotIssued, texts::ID_NOT_ISSUED))
    } else {
        None
    };
    if let Some((why, text)) = refusal {
        refuse(ws, shared, ip, &params.id, why, protocol::error_frame(text)).await;
        return None;
    }

    let room_mode = config.rooms == RoomMode::Token;
    // With signed tokens the token must be valid for this id, and names the room.
    let grant = match &shared.auth {
        None => None,
        Some(auth) => match auth.check(&params.token, &params.id, room_mode, auth.now()) {
            Ok(grant) => Some(grant),
            Err(why) => {
                let frame = protocol::error_frame(why.message());
                refuse(ws, shared, ip, &params.id, why.into(), frame).await;
                return None;
            }
        },
    };
    // The room, and the token as the reconnect secret the room compares (room/mod.rs).
    let (room_key, secret, expired) = match &grant {
        Some(grant) => (
            grant.room.as_deref().unwrap_or(""),
            &*grant.signature,
            grant.expired,
        ),
        None if room_mode => (params.token.as_str(), params.token.as_str(), false),
        None => ("", params.token.as_str(), false),
    };
    let id: Arc<str> = Arc::from(params.id.as_str());
    // In a cluster the secret travels between nodes only as a digest.
    let digest = shared.cluster.as_ref().map(|_| token_digest(secret));
    for _ in 0..JOIN_ATTEMPTS {
        let room = shared.rooms.get_or_spawn(room_key);
        let seat = match (&shared.cluster, digest) {
            (Some(cluster), Some(digest)) => {
                let claim = ClaimContext {
                    room: room_key,
                    id: &id,
                    digest,
                    expired,
                    secret_token: !room_mode || shared.auth.is_some(),
                };
                match Box::pin(claim_in_cluster(ws, cluster, claim, config)).await {
                    ClusterClaim::Seat(seat) => Some(seat),
                    ClusterClaim::Local => None,
                    ClusterClaim::Again => continue,
                    ClusterClaim::Refused(refusal) => {
                        let (why, frame) = refusal_frame(refusal);
                        refuse(ws, shared, ip, &params.id, why, frame).await;
                        return None;
                    }
                }
            }
            _ => None,
        };
        let (peer_link, link) = room::link(
            Limits {
                frames: config.outbound_queue,
                bytes: config.max_outbound_bytes,
            },
            Arc::clone(&shared.rooms.budgets),
        );
        let conn = peer_link.conn;
        let request = JoinRequest {
            id: Arc::clone(&id),
            token: Box::from(secret),
            expired,
            link: peer_link,
            seat,
        };
        let mut reply = room.join(request).await;
        // A live-looking holder is probed; at most a couple of rounds if the id keeps moving.
        for _ in 0..JOIN_ATTEMPTS {
            let Some(JoinReply::Probe {
                holder,
                alive,
                request,
            }) = reply
            else {
                break;
            };
            // The 101 waits to go out with our first frame; do not hold it through the probe.
            let _ = ws.flush().await;
            if let Ok(Ok(())) = timeout(config.probe_timeout, alive).await {
                reply = Some(JoinReply::Refused(Refusal::IdTaken));
                drop(request);
                break;
            }
            tracing::info!(
                peer = &*id,
                "id holder did not answer a ping; taking the id over"
            );
            reply = room.take_over(holder, request).await;
        }
        match reply {
            Some(JoinReply::Admitted) => {
                shared.metrics.connections_accepted.inc();
                // `room` is left out of the line in global mode (a `None` field is not recorded).
                let room_field = room_mode.then_some(room_key);
                tracing::info!(peer = &*id, room = room_field, ip = %LogIp(ip), "peer open");
                return Some(Admitted {
                    id,
                    room,
                    link,
                    conn,
                });
            }
            Some(JoinReply::Refused(refusal)) => {
                let (why, frame) = refusal_frame(refusal);
                refuse(ws, shared, ip, &params.id, why, frame).await;
                return None;
            }
            Some(JoinReply::Probe { .. }) | Some(JoinReply::Retry) | None => {
                if shared.shutdown.token.is_cancelled() {
                    break;
                }
            }
        }
    }
    close(ws, CloseReason::Shutdown).await;
    None
}

/// The frame that tells a client why it was refused, and the reason counted.
fn refusal_frame(refusal: Refusal) -> (Rejection, String) {
    match refusal {
        Refusal::IdTaken => (Rejection::IdTaken, protocol::id_taken_frame()),
        Refusal::RoomFull => (Rejection::RoomFull, protocol::error_frame(texts::ROOM_FULL)),
        Refusal::ServerFull => (
            Rejection::ServerFull,
            protocol::error_frame(texts::CONCURRENT_LIMIT),
        ),
        Refusal::TokenExpired => (
            Rejection::TokenExpired,
            protocol::error_frame(TokenError::Expired.message()),
        ),
    }
}

/// What a joining socket asks the cluster for.
struct ClaimContext<'a> {
    room: &'a str,
    id: &'a Arc<str>,
    digest: TokenDigest,
    expired: bool,
    /// Whether the same token again is the same client (see the room actor).
    secret_token: bool,
}

/// What the cluster said to a joining socket.
enum ClusterClaim {
    /// Register with this seat.
    Seat(Seat),
    /// This node holds the id: the room decides.
    Local,
    /// The holder on another node let it go: claim again.
    Again,
    /// Refused.
    Refused(Refusal),
}

/// Claims the id across the cluster; an id held on another node is asked for there (a
/// reconnect with the same secret replaces its holder; otherwise the holder is probed by its
/// node, and let go only if it does not answer).
async fn claim_in_cluster<S>(
    ws: &mut WebSocketStream<S>,
    cluster: &Arc<Cluster>,
    claim: ClaimContext<'_>,
    config: &Config,
) -> ClusterClaim
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match cluster.claim(claim.room, claim.id, claim.digest).await {
        Claimed::Granted(seat) => ClusterClaim::Seat(seat),
        Claimed::Local => ClusterClaim::Local,
        Claimed::Refused(refusal) => ClusterClaim::Refused(refusal),
        Claimed::Elsewhere { node, same_token } => {
            if claim.expired && !(same_token && claim.secret_token) {
                return ClusterClaim::Refused(Refusal::TokenExpired);
            }
            // The 101 waits to go out with our first frame; do not hold it through a probe.
            let _ = ws.flush().await;
            let wait = config.probe_timeout + cluster_request_timeout(config);
            if cluster
                .release(&node, claim.room, claim.id, claim.digest, wait)
                .await
            {
                ClusterClaim::Again
            } else {
                ClusterClaim::Refused(Refusal::IdTaken)
            }
        }
    }
}

fn cluster_request_timeout(config: &Config) -> Duration {
    config
        .cluster
        .as_ref()
        .map_or(Duration::from_secs(1), |c| c.request_timeout)
}

/// Sends the refusal frame, closes, and counts it.
async fn refuse<S>(
    ws: &mut WebSocketStream<S>,
    shared: &Shared,
    ip: IpAddr,
    id: &str,
    why: Rejection,
    frame: String,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    shared.metrics.reject(why);
    tracing::info!(peer = id, ip = %LogIp(ip), reason = why.as_str(), "peer refused");
    let code = match why {
        Rejection::RoomFull | Rejection::ServerFull => CloseCode::Again,
        _ => CloseCode::Policy,
    };
    let sent = timeout(
        CLOSE_HANDSHAKE,
        ws.send(Message::Text(Utf8Bytes::from(frame))),
    )
    .await;
    if matches!(sent, Ok(Ok(()))) {
        close_with(ws, code, why.as_str()).await;
    }
}

/// Closes with the code and reason for `reason`, then waits briefly for the client's close.
async fn close<S>(ws: &mut WebSocketStream<S>, reason: CloseReason)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if reason == CloseReason::ClientGone {
        return;
    }
    let code = CloseCode::from(reason.close_code());
    let text = match reason {
        CloseReason::Shutdown => "going away",
        other => other.as_str(),
    };
    if reason == CloseReason::RateLimited {
        // The one in-session ERROR: the client shows the reason, then the close follows.
        let frame = Utf8Bytes::from(protocol::error_frame(texts::RATE_LIMITED));
        if !matches!(
            timeout(CLOSE_HANDSHAKE, ws.send(Message::Text(frame))).await,
            Ok(Ok(()))
        ) {
            return;
        }
    }
    if reason == CloseReason::SlowReader {
        // Its socket takes nothing: the close frame would only wait behind what it never
        // read. Offer it once and let the socket go.
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from_static(text),
        };
        let _ = ws.close(Some(frame)).now_or_never();
        return;
    }
    close_with(ws, code, text).await;
}

async fn close_with<S>(ws: &mut WebSocketStream<S>, code: CloseCode, reason: &'static str)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let frame = CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    };
    let _ = timeout(CLOSE_HANDSHAKE, async {
        if ws.close(Some(frame)).await.is_err() {
            return;
        }
        // Read until the client answers the close (or goes), so our last frames are not lost
        // to a TCP reset.
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

/// A registered peer's socket.
struct Session<S> {
    ws: Box<WebSocketStream<ReadAhead<S>>>,
    id: Arc<str>,
    conn: room::ConnId,
    room: RoomHandle,
    link: SessionLink,
    shared: Arc<Shared>,
    /// The client's address, an IPv6 one reduced to its `--ipv6-prefix` network: its
    /// messages for offline ids are charged to that address's share.
    origin: IpAddr,
    /// `None` when rate limiting is off.
    limiter: Option<DefaultDirectRateLimiter>,
    /// Start of the current run of rate-limit drops, and the last drop.
    over_limit: Option<(Instant, Instant)>,
    /// Unusable frames since the last good one.
    bad_in_a_row: u32,
    /// When the last frame arrived (the alive deadline is this plus the alive timeout).
    last_seen: Instant,
    /// Probes waiting for a sign of life.
    probes: Vec<oneshot::Sender<()>>,
    /// Messages delivered directly, for latency sampling.
    delivered: u32,
    /// What is on its way from the outbox to the socket.
    out: Writer,
}

/// What [`Session::poll_event`] found for the loop to handle.
enum Event {
    /// An inbound frame (or the end of the stream).
    Frame(Option<Result<Message, WsError>>),
    /// The alive deadline, or the write-stall deadline, may have passed.
    TimerDue,
    /// The session must end.
    Close(CloseReason),
}

impl<S> Session<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn new(
        ws: Box<WebSocketStream<ReadAhead<S>>>,
        admitted: Admitted,
        shared: Arc<Shared>,
        ip: IpAddr,
    ) -> Self {
        let limiter = shared
            .config
            .rate_limit
            .map(|rate| RateLimiter::direct(Quota::per_second(rate)));
        Session {
            ws,
            id: admitted.id,
            conn: admitted.conn,
            room: admitted.room,
            link: admitted.link,
            origin: gate::address_key(ip, shared.config.ipv6_prefix),
            shared,
            limiter,
            over_limit: None,
            bad_in_a_row: 0,
            last_seen: Instant::now(),
            probes: Vec::new(),
            delivered: 0,
            out: Writer::default(),
        }
    }

    /// Serves the socket; returns why it ended and how long it lasted.
    async fn run(&mut self) -> (CloseReason, Duration) {
        let started = Instant::now();
        let reason = self.serve().await;
        // What the room queued will not be written now: free it at once.
        self.out = Writer::default();
        // Free the id first, then say goodbye on the wire.
        let leave = RoomCmd::Leave {
            id: Arc::clone(&self.id),
            conn: self.conn,
            reason,
        };
        let _ = Box::pin(self.room.send(leave)).await;
        Box::pin(close(&mut self.ws, reason)).await;
        (reason, started.elapsed())
    }

    async fn serve(&mut self) -> CloseReason {
        let alive_timeout = self.shared.config.alive_timeout;
        let write_timeout = self.shared.config.write_timeout;
        // No shutdown watch here: on shutdown the room actor kills every member through its
        // outbox, so the loop watches one thing for all of the room's verdicts. One timer
        // serves both deadlines (alive, and the write stall while the socket refuses bytes).
        let deadline = sleep_until(self.last_seen + alive_timeout);
        tokio::pin!(deadline);
        let mut timer = Timer {
            sleep: deadline,
            registered: false,
        };
        loop {
            let event = poll_fn(|cx| self.poll_event(cx, &mut timer)).await;
            match event {
                Event::Close(why) => return why,
                Event::Frame(frame) => {
                    // The frames one `recv` brought are handled here together, up to
                    // READ_BATCH, with one clock read instead of a trip around the loop
                    // each. Only the count is held across the await: idle tasks stay small.
                    self.last_seen = Instant::now();
                    let mut frame = frame;
                    let mut handled: u8 = 1;
                    loop {
                        let forwarded = match self.handle_frame(frame) {
                            Ok(None) => Ok(()),
                            Ok(Some(cmd)) => match forward(&self.room, cmd) {
                                Forward::Done(result) => result,
                                // Only the box is held across this await, not the command.
                                Forward::Wait(send) => {
                                    send.await.map_err(|_| CloseReason::Shutdown)
                                }
                            },
                            Err(why) => Err(why),
                        };
                        if let Err(why) = forwarded {
                            return why;
                        }
                        // Go on only while bytes that recv brought wait in the read-ahead: a lone
                        // frame (a heartbeat, a message at a low rate) pays no second poll.
                        if handled == READ_BATCH || !self.ws.get_ref().has_buffered() {
                            break;
                        }
                        handled += 1;
                        // Polled without this task's waker; the loop polls the stream with
                        // it again before the task sleeps.
                        match self.ws.next().now_or_never() {
                            Some(next) => frame = next,
                            None => break,
                        }
                    }
                }
                Event::TimerDue => {
                    let now = Instant::now();
                    let alive_due = self.last_seen + alive_timeout;
                    if alive_due <= now {
                        return CloseReason::AliveTimeout;
                    }
                    let stall_due = self.out.stalled_since.map(|since| since + write_timeout);
                    if stall_due.is_some_and(|due| due <= now) {
                        self.shared
                            .metrics
                            .drop_messages(DropReason::SlowReader, self.out.frames.len() as u64);
                        tracing::info!(
                            peer = &*self.id,
                            "socket took no bytes for the write timeout; closing slow reader"
                        );
                        return CloseReason::SlowReader;
                    }
                    timer.reset(stall_due.map_or(alive_due, |due| due.min(alive_due)));
                }
            }
        }
    }

    /// One look at everything the session waits for, in order: writing what the room queued
    /// (and the room's verdict), the next inbound frame, the deadlines. Reading goes on while
    /// a write waits for the socket, so pongs, heartbeats and the close of a peer on a slow
    /// link are seen however long its writes take.
    fn poll_event(&mut self, cx: &mut Context<'_>, timer: &mut Timer<'_>) -> Poll<Event> {
        let blocked = match self.poll_write(cx) {
            Ok(blocked) => blocked,
            Err(why) => return Poll::Ready(Event::Close(why)),
        };
        // Only the low bits are kept (the difference is what matters, and it stays small).
        let written = self.ws.get_ref().written() as u32;
        if self.out.stalled_since.is_some()
            && written.wrapping_sub(self.out.stall_mark) >= MIN_PROGRESS
        {
            // A socket that was full took a fragment's worth again: the peer is reading.
            self.out.stalled_since = None;
            self.answer_probes();
        }
        if blocked {
            let waiting = self.probes.len();
            if let Poll::Ready(why) = self.link.rx.poll_killed(cx, &mut self.probes) {
                return Poll::Ready(Event::Close(why));
            }
            if self.probes.len() > waiting {
                // Ask now, between fragments, rather than behind what is queued.
                self.out.ping = true;
            }
            if self.out.stalled_since.is_none() {
                let now = Instant::now();
                self.out.stalled_since = Some(now);
                self.out.stall_mark = written;
                timer.bring_forward(now + self.shared.config.write_timeout);
            }
        } else {
            self.out.stalled_since = None;
        }
        if let Poll::Ready(frame) = self.ws.poll_next_unpin(cx) {
            return Poll::Ready(Event::Frame(frame));
        }
        if timer.poll_fired(cx).is_ready() {
            return Poll::Ready(Event::TimerDue);
        }
        Poll::Pending
    }

    /// Moves what the room queued to the socket: pings for probes first, then frames (a large
    /// one in fragments, so the WebSocket's own buffer stays small and control frames can pass
    /// between them), flushing once the batch is out. Returns whether the socket is refusing
    /// bytes (`true`) or everything was written and the outbox is empty (`false`).
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Result<bool, CloseReason> {
        let written = self.write_pass(cx);
        // Frames wholly handed to the WebSocket no longer count against the outbox's bound
        // (the WebSocket's own buffer is bounded by MAX_WRITE_BUFFER): one lock per pass.
        let handed = std::mem::take(&mut self.out.handed);
        if handed > 0 {
            self.link.rx.release(handed);
        }
        written
    }

    fn write_pass(&mut self, cx: &mut Context<'_>) -> Result<bool, CloseReason> {
        loop {
            while self.out.has_pieces() {
                match self.ws.poll_ready_unpin(cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(_)) => return Err(CloseReason::ClientGone),
                    Poll::Pending => return Ok(true),
                }
                if let Some(piece) = self.out.next_piece() {
                    self.ws
                        .start_send_unpin(piece)
                        .map_err(|_| CloseReason::ClientGone)?;
                    self.out.unflushed = true;
                }
            }
            if self.out.unflushed {
                match self.ws.poll_flush_unpin(cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(_)) => return Err(CloseReason::ClientGone),
                    Poll::Pending => return Ok(true),
                }
                self.out.unflushed = false;
            }
            let mut probes = Vec::new();
            match self
                .link
                .rx
                .poll_take(cx, &mut self.out.frames, &mut probes)
            {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(verdict)) => return Err(verdict),
                Poll::Pending => return Ok(false),
            }
            if !probes.is_empty() {
                self.probes.append(&mut probes);
                self.out.ping = true;
            }
        }
    }

    /// The peer showed a sign of life: every waiting probe learns it.
    fn answer_probes(&mut self) {
        for probe in self.probes.drain(..) {
            let _ = probe.send(());
        }
    }

    /// Handles one inbound frame (or the end of the stream), read at `last_seen`; returns
    /// what to send the room. Synchronous on purpose: the hot path never holds a send future
    /// in the task's state.
    fn handle_frame(
        &mut self,
        frame: Option<Result<Message, WsError>>,
    ) -> Result<Option<RoomCmd>, CloseReason> {
        let message = match frame {
            None => return Err(CloseReason::ClientGone),
            Some(Ok(message)) => message,
            Some(Err(error)) => return Err(self.read_error(error)),
        };
        self.answer_probes();
        let metrics = &self.shared.metrics;
        match message {
            Message::Text(text) => {
                metrics.received.inc();
                if !self.within_rate_limit()? {
                    return Ok(None);
                }
                match protocol::parse_frame(&text) {
                    Ok(frame) => {
                        self.bad_in_a_row = 0;
                        self.dispatch(frame)
                    }
                    Err(_) => self.bad_frame(DropReason::Malformed).map(|()| None),
                }
            }
            Message::Binary(_) => {
                metrics.received.inc();
                if !self.within_rate_limit()? {
                    return Ok(None);
                }
                self.bad_frame(DropReason::Binary).map(|()| None)
            }
            Message::Close(_) => Err(CloseReason::ClientGone),
            // Pings are answered by tungstenite; pongs only prove liveness (done above).
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => Ok(None),
        }
    }

    fn read_error(&self, error: WsError) -> CloseReason {
        match error {
            WsError::Capacity(_) => {
                self.shared.metrics.drop_messages(DropReason::TooLarge, 1);
                CloseReason::TooLarge
            }
            WsError::Utf8(_) => CloseReason::InvalidUtf8,
            WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
                CloseReason::ClientGone
            }
            WsError::Protocol(_) => CloseReason::ProtocolError,
            _ => CloseReason::ClientGone,
        }
    }

    /// Counts an unusable frame; closes the peer if it keeps sending them.
    fn bad_frame(&mut self, why: DropReason) -> Result<(), CloseReason> {
        self.shared.metrics.drop_messages(why, 1);
        self.bad_in_a_row += 1;
        if self.bad_in_a_row >= MAX_BAD_FRAMES_IN_A_ROW {
            return Err(CloseReason::Malformed);
        }
        Ok(())
    }

    /// Takes a token from the limiter. `Ok(false)`: drop this message. `Err`: the peer has
    /// been over the limit for the whole grace period and is closed with ERROR.
    fn within_rate_limit(&mut self) -> Result<bool, CloseReason> {
        let Some(limiter) = &self.limiter else {
            return Ok(true);
        };
        if limiter.check().is_ok() {
            return Ok(true);
        }
        self.shared
            .metrics
            .drop_messages(DropReason::RateLimited, 1);
        let now = Instant::now();
        let since = match self.over_limit {
            Some((since, last)) if now.duration_since(last) <= OVER_LIMIT_GAP => since,
            _ => now,
        };
        self.over_limit = Some((since, now));
        if now.duration_since(since) >= self.shared.config.rate_limit_grace {
            return Err(CloseReason::RateLimited);
        }
        Ok(false)
    }

    /// Turns a parsed frame into the room command it calls for, if any.
    fn dispatch(&mut self, frame: ClientFrame<'_>) -> Result<Option<RoomCmd>, CloseReason> {
        let Some(kind) = frame.kind else {
            return Ok(None); // unknown or missing type: ignored, as the reference does
        };
        let dst = match frame.dst {
            _ if kind == MessageType::Heartbeat => return Ok(None),
            Dst::Id(dst) => dst,
            Dst::Missing if kind == MessageType::Leave => return Err(CloseReason::Left),
            Dst::Missing => {
                self.shared
                    .metrics
                    .drop_messages(DropReason::Undeliverable, 1);
                return Ok(None);
            }
            Dst::NotAString => {
                self.shared.metrics.drop_messages(DropReason::Malformed, 1);
                return Ok(None);
            }
        };
        let (text, located) =
            protocol::relay_frame_locating_dst(kind, &self.id, &dst, frame.payload);
        let mut frame = Utf8Bytes::from(text);
        // Straight to a connected member, unless one of ours is still on its way through
        // the room: the per-sender order rule (docs/ARCHITECTURE.md, "Per-sender order").
        if !self.link.rx.has_in_flight() {
            match self.room.try_deliver(&dst, frame) {
                Ok(()) => {
                    let metrics = &self.shared.metrics;
                    metrics.relay_sampled(kind, self.last_seen, &mut self.delivered);
                    return Ok(None);
                }
                Err(back) => frame = back,
            }
        }
        Ok(Some(RoomCmd::Relay(Relay {
            src: Arc::clone(&self.id),
            origin: Some(self.origin),
            kind,
            dst: DstRef::new(&dst, located),
            frame,
            read_at: self.last_seen, // set when this frame arrived
            sent: Some(self.link.rx.in_flight()),
        })))
    }
}

/// The session's one timer (the earliest of its deadlines), polled only when it may have fired.
///
/// A `Sleep` that returned `Pending` keeps that waker until it fires, so while it has not
/// elapsed, polling it again tells nothing: a busy socket skips the timer poll (and its cache
/// misses) on every wake-up. After a reset it is polled once, to register again.
struct Timer<'a> {
    sleep: Pin<&'a mut Sleep>,
    /// Polled (and pending) since the last reset.
    registered: bool,
}

impl Timer<'_> {
    /// Makes the timer fire at `at` if that is sooner than it would.
    fn bring_forward(&mut self, at: Instant) {
        if at < self.sleep.deadline() {
            self.reset(at);
        }
    }

    fn poll_fired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.registered && !self.sleep.is_elapsed() {
            return Poll::Pending;
        }
        let fired = self.sleep.as_mut().poll(cx);
        self.registered = fired.is_pending();
        fired
    }

    fn reset(&mut self, at: Instant) {
        self.sleep.as_mut().reset(at);
        self.registered = false;
    }
}

/// What is on its way from a session's outbox to its socket.
#[derive(Default)]
struct Writer {
    /// Frames taken from the outbox and not yet wholly handed to the WebSocket (still
    /// charged). The first may be going out in fragments.
    frames: VecDeque<Utf8Bytes>,
    /// How much of the first frame has gone out in fragments (0: none).
    sent: usize,
    /// The charge of frames wholly handed to the WebSocket in this write pass, given back to
    /// the outbox at its end.
    handed: usize,
    /// Since when the socket has refused bytes without taking [`MIN_PROGRESS`] of them (for
    /// `--write-timeout`), and how much had been written then.
    stalled_since: Option<Instant>,
    stall_mark: u32,
    /// A ping is owed for probes taken from the outbox.
    ping: bool,
    /// Pieces were handed to the WebSocket and not flushed yet.
    unflushed: bool,
}

/// What a stalled socket must take to count as read from again: a peer that trickles a byte
/// now and then to keep a megabyte backlog alive is still a slow reader, while a slow link
/// (even 2 KB/s) passes this well within `--write-timeout`.
const MIN_PROGRESS: u32 = 16 * 1024;

/// Frames larger than this go out as fragments of at most this many bytes: the WebSocket's
/// write buffer (which never shrinks) stays small, a slow reader costs no copying of a large
/// remainder on every partial write, and control frames (our pings, pongs) can pass between
/// fragments. Signaling messages are far smaller, so they go whole.
const FRAGMENT: usize = 16 * 1024;

impl Writer {
    /// Whether anything waits to be handed to the WebSocket.
    fn has_pieces(&self) -> bool {
        self.ping || !self.frames.is_empty()
    }

    /// The next message to hand to the WebSocket: a ping, or the next frame (whole, or its
    /// next fragment).
    fn next_piece(&mut self) -> Option<Message> {
        if std::mem::take(&mut self.ping) {
            return Some(Message::Ping(Bytes::new()));
        }
        let frame = self.frames.front()?;
        if self.sent == 0 && frame.len() <= FRAGMENT {
            self.handed += outbox::charge(frame);
            return self.frames.pop_front().map(Message::Text);
        }
        let payload = Bytes::from(frame.clone());
        let start = self.sent;
        let end = fragment_end(&payload, start);
        let last = end == payload.len();
        let opcode = if start == 0 {
            OpData::Text
        } else {
            OpData::Continue
        };
        let piece = Frame::message(payload.slice(start..end), OpCode::Data(opcode), last);
        if last {
            self.handed += outbox::charge(frame);
            self.frames.pop_front();
            self.sent = 0;
        } else {
            self.sent = end;
        }
        Some(Message::Frame(piece))
    }
}

/// Where the fragment of UTF-8 text `payload` starting at `offset` ends: [`FRAGMENT`] bytes on,
/// moved back to a character boundary so each fragment is whole characters.
fn fragment_end(payload: &[u8], offset: usize) -> usize {
    let mut end = (offset + FRAGMENT).min(payload.len());
    // Continuation bytes are 0b10xx_xxxx; a character is at most 4 bytes.
    while end < payload.len() && end > offset + 1 && payload[end] & 0xC0 == 0x80 {
        end -= 1;
    }
    end
}

/// A command handed to the room, or the wait for mailbox space.
enum Forward<'a> {
    /// Sent (or the room is gone: shutdown).
    Done(Result<(), CloseReason>),
    /// The mailbox is full: await this (boxed, off the hot path).
    Wait(Pin<Box<dyn Future<Output = Result<(), RoomCmd>> + Send + 'a>>),
}

/// Hands a command to the room; only if its mailbox is full is there something to wait for.
/// Not an `async fn`: the session's future would hold the command (its arguments) across the
/// await, and every idle peer pays for the session future's size. The room ending under a
/// registered peer only happens at shutdown.
fn forward(room: &RoomHandle, cmd: RoomCmd) -> Forward<'_> {
    match room.try_send(cmd) {
        Ok(()) => Forward::Done(Ok(())),
        Err(TrySendError::Full(cmd)) => Forward::Wait(Box::pin(room.send(cmd))),
        Err(TrySendError::Closed(_)) => Forward::Done(Err(CloseReason::Shutdown)),
    }
}
