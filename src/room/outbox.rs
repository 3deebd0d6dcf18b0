//! The link from a room to one member's session: a bounded outbound queue plus a kill switch.
//!
//! tokio's `mpsc::channel` allocates its first 32-slot block up front, which every idle peer
//! would carry for its whole life. This queue is a `VecDeque` behind a mutex
//! that is only locked for a push or a drain, plus an `AtomicWaker` for the one consumer
//! (registering it is a couple of atomic operations, and a dropped poll costs nothing); it
//! allocates on the first push and gives large buffers back once drained, so an idle peer
//! costs little more than the shared state itself. The same state carries the room's verdict when it drops the member
//! (taken over, slow reader, shutdown), so the session watches one thing instead of three.
//!
//! **Bounds.** The queue holds at most `frames` frames and `bytes` bytes (`--outbound-queue`,
//! `--max-outbound-bytes`). A frame's bytes stay charged after the session takes it, until
//! the session has handed all of it to the WebSocket (whose own buffer is small and bounded)
//! and calls [`OutboxReceiver::release`], so the bound covers everything waiting for this peer
//! in the server's memory, not just the queue.
//! A push that would pass either bound is refused with [`SendError::Full`]: only a peer whose
//! socket stopped taking bytes gets there (an honest reader drains as fast as it is written
//! to; see `--write-timeout` in the session for a socket that stalls with little queued).
//! Every charge is also drawn from the server-wide outbound total
//! ([`Budgets::draw_outbound`], `--max-outbound-total`): while that is over its limit, a push
//! that would leave this peer holding more than [`PRESSURE_SHARE`] is refused with
//! [`SendError::Pressure`]. That refuses the frame, not the peer: a peer that keeps reading
//! must not be closed because someone sent it a large frame while others pin the memory.
//!
//! **Probes** ("are you alive?" pings for the liveness probe) travel beside the frames, not in
//! the queue: they are never refused for being full, and the session sends them ahead of
//! frames still queued.
//!
//! Besides the room's own [`OutboxSender`], a room publishes a [`Route`] to each member's
//! queue so that sessions can hand it messages directly (see [`super::Routes`]). The count of
//! a session's messages still in the room ([`InFlight`]) lives here too: it is how the
//! per-sender order rule (docs/ARCHITECTURE.md, "Per-sender order") is kept.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::protocol::CloseReason;
use crate::room::budget::Budgets;
#[cfg(doc)]
use crate::room::budget::PRESSURE_SHARE;

/// Buffers above this many slots are released when the queue drains (a busy peer keeps a
/// small buffer instead of reallocating every batch; an idle one keeps what OPEN needed).
const KEEP_CAPACITY: usize = 32;

/// Bytes charged per frame on top of its length: its queue slot and allocation headers, so
/// that many tiny frames cannot slip past the byte bound.
pub const FRAME_OVERHEAD: usize = 64;

/// Probes waiting at once; more (many newcomers probing one id) are answered "alive" at once,
/// which can only ever keep a holder, never evict one.
const MAX_PROBES: usize = 64;

/// What a member's queue may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Frames (`--outbound-queue`).
    pub frames: usize,
    /// Bytes, counting [`FRAME_OVERHEAD`] per frame (`--max-outbound-bytes`).
    pub bytes: usize,
}

/// What a frame costs against [`Limits::bytes`].
pub fn charge(frame: &Utf8Bytes) -> usize {
    frame.len() + FRAME_OVERHEAD
}

#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    /// Wakes the consumer after a push, a kill, or when the sender goes away.
    wake: AtomicWaker,
    limits: Limits,
    /// The server-wide outbound total every charge is drawn from.
    budgets: Arc<Budgets>,
    /// Messages this queue's session sent through the room that the room has not handled
    /// yet (see [`InFlight`]).
    in_flight: AtomicU32,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Utf8Bytes>,
    /// Bytes charged: the queued frames plus those taken and not yet released.
    bytes: usize,
    /// Liveness probes to answer when the peer shows a sign of life.
    probes: Vec<oneshot::Sender<()>>,
    /// Set by [`OutboxSender::kill`]: the session must close with this reason.
    killed: Option<CloseReason>,
    /// The sending side is gone: nothing more will come.
    closed: bool,
    /// The session's end is gone: nobody reads this queue any more.
    receiver_gone: bool,
}

impl State {
    /// Why nobody will read what is pushed now, if so.
    fn refuses(&self) -> bool {
        self.receiver_gone || self.closed || self.killed.is_some()
    }

    /// The room's verdict for the session. A sender dropped without a kill means the room
    /// failed (its actor ended without letting its members go).
    fn verdict(&self) -> Option<CloseReason> {
        self.killed
            .or(self.closed.then_some(CloseReason::RoomFailed))
    }
}

/// Why [`OutboxSender::try_send`] refused a frame.
#[derive(Debug, PartialEq, Eq)]
pub enum SendError {
    /// The queue is at its bound: the consumer is not taking what it is sent.
    Full,
    /// The server is short of outbound memory and this frame would leave the consumer
    /// holding more than its share under pressure: the frame is refused, the consumer kept.
    Pressure,
    /// The consumer is gone.
    Closed,
}

/// The room's end: pushes without ever waiting.
#[derive(Debug)]
pub struct OutboxSender {
    inner: Arc<Inner>,
}

/// The session's end.
#[derive(Debug)]
pub struct OutboxReceiver {
    inner: Arc<Inner>,
}

/// A link whose queue holds at most `limits`, drawing on the outbound total of `budgets`.
pub fn outbox(limits: Limits, budgets: Arc<Budgets>) -> (OutboxSender, OutboxReceiver) {
    let inner = Arc::new(Inner {
        state: Mutex::new(State::default()),
        wake: AtomicWaker::new(),
        limits,
        budgets,
        in_flight: AtomicU32::new(0),
    });
    (
        OutboxSender {
            inner: Arc::clone(&inner),
        },
        OutboxReceiver { inner },
    )
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The lock guards plain data with no invariants a panic could break.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `frame` unless the queue is at a bound, the server is short of outbound memory,
    /// or nobody will read it (the session is gone, or the room has let the member go); then
    /// `frame` comes back with the reason.
    fn try_push(&self, frame: Utf8Bytes) -> Result<(), (SendError, Utf8Bytes)> {
        {
            let mut state = self.lock();
            if state.refuses() {
                return Err((SendError::Closed, frame));
            }
            let cost = charge(&frame);
            let backlog = state.bytes + cost;
            if state.queue.len() >= self.limits.frames || backlog > self.limits.bytes {
                return Err((SendError::Full, frame));
            }
            if !self.budgets.draw_outbound(cost, backlog) {
                return Err((SendError::Pressure, frame));
            }
            state.bytes = backlog;
            state.queue.push_back(frame);
        }
        self.wake.wake();
        Ok(())
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        self.budgets.return_outbound(state.bytes);
    }
}

impl OutboxSender {
    /// Queues `frame` unless the queue is at a bound or its receiver is gone; then the frame
    /// comes back with the reason.
    pub fn try_send(&self, frame: Utf8Bytes) -> Result<(), (SendError, Utf8Bytes)> {
        self.inner.try_push(frame)
    }

    /// Asks the session for a sign of life: `alive` gets `()` when the peer shows one. If the
    /// session cannot be asked (it is gone), `alive` is dropped at once.
    pub fn probe(&self, alive: oneshot::Sender<()>) {
        {
            let mut state = self.inner.lock();
            if state.refuses() {
                return;
            }
            if state.probes.len() >= MAX_PROBES {
                let _ = alive.send(());
                return;
            }
            state.probes.push(alive);
        }
        self.inner.wake.wake();
    }

    /// A handle that pushes to the same queue, for the room's route table. Unlike this
    /// sender, dropping it tells the session nothing.
    pub fn route(&self) -> Route {
        Route {
            inner: Arc::clone(&self.inner),
        }
    }

    /// Tells the session to close with `reason`; queued frames are not delivered, and their
    /// bytes go back at once.
    pub fn kill(self, reason: CloseReason) {
        let dropped = {
            let mut state = self.inner.lock();
            state.killed = Some(reason);
            let queued: usize = state.queue.iter().map(charge).sum();
            state.queue = VecDeque::new();
            state.bytes -= queued;
            queued
        };
        self.inner.budgets.return_outbound(dropped);
        // Drop wakes the session.
    }
}

impl Drop for OutboxSender {
    fn drop(&mut self) {
        self.inner.lock().closed = true;
        self.inner.wake.wake();
    }
}

/// A member's queue as published in its room's route table: sessions push to it directly.
#[derive(Debug, Clone)]
pub struct Route {
    inner: Arc<Inner>,
}

impl Route {
    /// Queues a frame as [`OutboxSender::try_send`] does (refusing also once the room has
    /// let the member go); gives it back if refused.
    pub fn try_send_frame(&self, frame: Utf8Bytes) -> Result<(), Utf8Bytes> {
        self.inner.try_push(frame).map_err(|(_, frame)| frame)
    }
}

/// One message a session sent through its room, not yet handled there. Created by
/// [`OutboxReceiver::in_flight`]; dropping it (once the room has delivered, queued or
/// dropped the message) takes it off the count.
#[derive(Debug)]
pub struct InFlight {
    inner: Arc<Inner>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // Release: whatever the room did with the message happens before a session that
        // sees the count at zero delivers its next one directly.
        self.inner.in_flight.fetch_sub(1, Ordering::Release);
    }
}

impl Drop for OutboxReceiver {
    fn drop(&mut self) {
        self.inner.lock().receiver_gone = true;
    }
}

impl OutboxReceiver {
    /// Counts one more message sent through the room, until the returned guard is dropped.
    pub fn in_flight(&self) -> InFlight {
        self.inner.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            inner: Arc::clone(&self.inner),
        }
    }

    /// Whether a message sent through the room is still unhandled there: if so, the next one
    /// must follow it through the room too, or it could overtake it.
    pub fn has_in_flight(&self) -> bool {
        self.inner.in_flight.load(Ordering::Acquire) != 0
    }

    /// Moves every queued frame into `frames` and every probe into `probes`: `Ready(Ok(()))`
    /// if there was anything, `Ready(Err(_))` with the room's verdict once it dropped this
    /// member, else `Pending` (woken by the next push). The frames stay charged until
    /// [`release`](Self::release)d.
    pub fn poll_take(
        &self,
        cx: &mut Context<'_>,
        frames: &mut VecDeque<Utf8Bytes>,
        probes: &mut Vec<oneshot::Sender<()>>,
    ) -> Poll<Result<(), CloseReason>> {
        // Register first, then look: a push after the look wakes this registration.
        self.inner.wake.register(cx.waker());
        let mut state = self.inner.lock();
        if let Some(verdict) = state.verdict() {
            return Poll::Ready(Err(verdict));
        }
        if state.queue.is_empty() && state.probes.is_empty() {
            return Poll::Pending;
        }
        probes.append(&mut state.probes);
        frames.extend(state.queue.drain(..));
        if state.queue.capacity() > KEEP_CAPACITY {
            state.queue.shrink_to(KEEP_CAPACITY);
        }
        Poll::Ready(Ok(()))
    }

    /// For a session whose socket is not taking what it has already taken: moves new probes
    /// into `probes` (they need not wait behind the frames), and is `Ready` with the room's
    /// verdict once it dropped this member.
    pub fn poll_killed(
        &self,
        cx: &mut Context<'_>,
        probes: &mut Vec<oneshot::Sender<()>>,
    ) -> Poll<CloseReason> {
        self.inner.wake.register(cx.waker());
        let mut state = self.inner.lock();
        probes.append(&mut state.probes);
        match state.verdict() {
            Some(verdict) => Poll::Ready(verdict),
            None => Poll::Pending,
        }
    }

    /// Gives back `bytes` of charge for frames written to the socket.
    pub fn release(&self, bytes: usize) {
        let freed = {
            let mut state = self.inner.lock();
            let freed = bytes.min(state.bytes);
            state.bytes -= freed;
            freed
        };
        self.inner.budgets.return_outbound(freed);
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use super::*;

    const ROOMY: Limits = Limits {
        frames: 4,
        bytes: 1 << 20,
    };

    fn frame(s: &'static str) -> Utf8Bytes {
        Utf8Bytes::from_static(s)
    }

    async fn take(rx: &OutboxReceiver) -> Result<Vec<String>, CloseReason> {
        let mut frames = VecDeque::new();
        let mut probes = Vec::new();
        poll_fn(|cx| rx.poll_take(cx, &mut frames, &mut probes)).await?;
        Ok(frames.iter().map(|f| f.as_str().to_owned()).collect())
    }

    #[tokio::test]
    async fn delivers_in_order_and_bounds_the_queue_in_frames() {
        let (tx, rx) = outbox(
            Limits {
                frames: 2,
                bytes: 1 << 20,
            },
            Budgets::roomy(),
        );
        assert!(tx.try_send(frame("a")).is_ok());
        assert!(tx.try_send(frame("b")).is_ok());
        assert!(matches!(tx.try_send(frame("c")), Err((SendError::Full, f)) if f.as_str() == "c"));
        assert_eq!(take(&rx).await, Ok(vec!["a".into(), "b".into()]));
        assert!(tx.try_send(frame("c")).is_ok());
    }

    #[tokio::test]
    async fn bytes_stay_charged_until_released() {
        let small = charge(&frame("0123456789"));
        let (tx, rx) = outbox(
            Limits {
                frames: 100,
                bytes: 2 * small,
            },
            Budgets::roomy(),
        );
        assert!(tx.try_send(frame("0123456789")).is_ok());
        assert!(tx.try_send(frame("0123456789")).is_ok());
        assert!(matches!(
            tx.try_send(frame("0123456789")),
            Err((SendError::Full, _))
        ));
        // Taken by the session but not yet written: still charged.
        assert_eq!(take(&rx).await.map(|f| f.len()), Ok(2));
        assert!(matches!(
            tx.try_send(frame("0123456789")),
            Err((SendError::Full, _))
        ));
        rx.release(small);
        assert!(tx.try_send(frame("0123456789")).is_ok());
    }

    #[tokio::test]
    async fn every_charge_is_drawn_from_the_server_wide_total_and_comes_back() {
        let budgets = Budgets::roomy();
        let small = charge(&frame("0123456789"));
        let (tx, rx) = outbox(ROOMY, Arc::clone(&budgets));
        for _ in 0..3 {
            assert!(tx.try_send(frame("0123456789")).is_ok());
        }
        assert_eq!(budgets.outbound_bytes(), 3 * small);
        // Two taken and one of them written; then the room lets the member go.
        let mut frames = VecDeque::new();
        poll_fn(|cx| rx.poll_take(cx, &mut frames, &mut Vec::new()))
            .await
            .unwrap();
        rx.release(small);
        assert!(tx.try_send(frame("0123456789")).is_ok());
        tx.kill(CloseReason::SlowReader);
        // The frame still queued went back with the kill; the two taken go with the session.
        assert_eq!(budgets.outbound_bytes(), 2 * small);
        drop(rx);
        assert_eq!(budgets.outbound_bytes(), 0);
    }

    #[tokio::test]
    async fn wakes_the_receiver_and_reports_a_sender_dropped_without_a_kill_as_a_failure() {
        let (tx, rx) = outbox(ROOMY, Budgets::roomy());
        let waiter = tokio::spawn(async move { (take(&rx).await, take(&rx).await) });
        tokio::task::yield_now().await;
        assert!(tx.try_send(frame("x")).is_ok());
        tokio::task::yield_now().await;
        drop(tx);
        assert_eq!(
            waiter.await.unwrap(),
            (Ok(vec!["x".into()]), Err(CloseReason::RoomFailed))
        );
    }

    #[tokio::test]
    async fn a_kill_wins_over_queued_frames_and_wakes_a_stuck_writer() {
        let (tx, rx) = outbox(ROOMY, Budgets::roomy());
        assert!(tx.try_send(frame("never")).is_ok());
        let (waiting, done) = tokio::sync::oneshot::channel();
        let rx_task = tokio::spawn(async move {
            let _ = waiting.send(());
            let verdict = poll_fn(|cx| rx.poll_killed(cx, &mut Vec::new())).await;
            (verdict, take(&rx).await)
        });
        done.await.unwrap();
        tx.kill(CloseReason::SlowReader);
        assert_eq!(
            rx_task.await.unwrap(),
            (CloseReason::SlowReader, Err(CloseReason::SlowReader))
        );
    }

    #[tokio::test]
    async fn probes_pass_a_full_queue_and_a_flood_of_them_reads_as_alive() {
        let (tx, rx) = outbox(
            Limits {
                frames: 1,
                bytes: 1 << 20,
            },
            Budgets::roomy(),
        );
        assert!(tx.try_send(frame("fills it")).is_ok());
        let (alive, answer) = oneshot::channel();
        tx.probe(alive);
        let mut frames = VecDeque::new();
        let mut probes = Vec::new();
        poll_fn(|cx| rx.poll_take(cx, &mut frames, &mut probes))
            .await
            .unwrap();
        assert_eq!((frames.len(), probes.len()), (1, 1));
        drop(probes);
        assert!(answer.await.is_err(), "unanswered probes fail");

        let mut answers = Vec::new();
        for _ in 0..=MAX_PROBES {
            let (alive, answer) = oneshot::channel();
            tx.probe(alive);
            answers.push(answer);
        }
        assert_eq!(answers.pop().unwrap().await, Ok(()), "one too many: alive");
    }

    #[tokio::test]
    async fn a_send_to_a_dropped_receiver_fails_and_its_probe_is_dropped() {
        let (tx, rx) = outbox(ROOMY, Budgets::roomy());
        drop(rx);
        assert!(matches!(
            tx.try_send(frame("x")),
            Err((SendError::Closed, _))
        ));
        let (alive, answer) = oneshot::channel();
        tx.probe(alive);
        assert!(answer.await.is_err());
    }

    #[test]
    fn a_route_refuses_once_the_member_is_let_go_or_its_session_is_gone() {
        let (tx, rx) = outbox(ROOMY, Budgets::roomy());
        let route = tx.route();
        assert!(route.try_send_frame(frame("a")).is_ok());
        tx.kill(CloseReason::SlowReader);
        assert_eq!(
            route.try_send_frame(frame("b")).map_err(|f| f.to_string()),
            Err("b".to_owned())
        );
        drop(rx);

        let (tx, rx) = outbox(ROOMY, Budgets::roomy());
        let route = tx.route();
        drop(rx);
        // (The room's own sender refuses too: `a_send_to_a_dropped_receiver_fails…`.)
        assert!(route.try_send_frame(frame("c")).is_err());
        drop(tx);
    }

    #[test]
    fn in_flight_counts_until_each_guard_is_dropped() {
        let (_tx, rx) = outbox(ROOMY, Budgets::roomy());
        assert!(!rx.has_in_flight());
        let first = rx.in_flight();
        let second = rx.in_flight();
        drop(first);
        assert!(rx.has_in_flight());
        drop(second);
        assert!(!rx.has_in_flight());
    }
}
