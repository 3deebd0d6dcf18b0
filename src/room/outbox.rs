//! The link from a room to one member's session: a bounded outbound queue plus a kill switch.
//!
//! tokio's `mpsc::channel` allocates its first 32-slot block up front (~1.2 KB here), which
//! every idle peer would carry for its whole life. This queue is a `VecDeque` behind a mutex
//! that is only locked for a push or a drain, plus an `AtomicWaker` for the one consumer
//! (registering it is a couple of atomic operations, and a dropped poll costs nothing); it
//! allocates on the first push and gives large buffers back once drained, so an idle peer
//! costs ~100 bytes. The same state carries the room's verdict when it drops the member
//! (taken over, slow reader, shutdown), so the session watches one thing instead of three.
//!
//! Besides the room's own [`OutboxSender`], a room publishes a [`Route`] to each member's
//! queue so that sessions can hand it messages directly (see [`super::Routes`]). To keep each
//! sender's messages in order across the two paths, a session counts the messages it sent
//! through the room that the room has not handled yet ([`InFlight`]) and only delivers
//! directly while that count is zero.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::Outbound;
use crate::metrics::CloseReason;

/// Buffers above this many slots are released when the queue drains (a busy peer keeps a
/// small buffer instead of reallocating every batch; an idle one keeps what OPEN needed).
const KEEP_CAPACITY: usize = 32;

#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    /// Wakes the consumer after a push, a kill, or when the sender goes away.
    wake: AtomicWaker,
    capacity: usize,
    /// Messages this queue's session sent through the room that the room has not handled
    /// yet (see [`InFlight`]).
    in_flight: AtomicU32,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Outbound>,
    /// Set by [`OutboxSender::kill`]: the session must close with this reason.
    killed: Option<CloseReason>,
    /// The sending side is gone: nothing more will come.
    closed: bool,
    /// The session's end is gone: nobody reads this queue any more.
    receiver_gone: bool,
}

/// Why [`OutboxSender::try_send`] refused an item.
#[derive(Debug, PartialEq, Eq)]
pub enum SendError {
    /// The queue holds `capacity` items: the consumer is not keeping up.
    Full,
    /// The consumer is gone.
    Closed,
}

/// What the session gets from [`OutboxReceiver::recv_all`].
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    /// This many items were moved into the buffer.
    Items(usize),
    /// The room dropped this member: close with this reason.
    Killed(CloseReason),
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

/// A link whose queue holds at most `capacity` items.
pub fn outbox(capacity: usize) -> (OutboxSender, OutboxReceiver) {
    let inner = Arc::new(Inner {
        state: Mutex::new(State::default()),
        wake: AtomicWaker::new(),
        capacity,
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

    /// Queues `wrap(item)` unless the queue is full, or nobody will read it (the session is
    /// gone, or the room has let the member go); then `item` comes back with the reason.
    fn try_push<T>(&self, item: T, wrap: impl FnOnce(T) -> Outbound) -> Result<(), (SendError, T)> {
        {
            let mut state = self.lock();
            if state.receiver_gone || state.closed || state.killed.is_some() {
                return Err((SendError::Closed, item));
            }
            if state.queue.len() >= self.capacity {
                return Err((SendError::Full, item));
            }
            state.queue.push_back(wrap(item));
        }
        self.wake.wake();
        Ok(())
    }
}

impl OutboxSender {
    /// Queues `item` unless the queue is full or its receiver is gone; then the item comes
    /// back with the reason.
    pub fn try_send(&self, item: Outbound) -> Result<(), (SendError, Outbound)> {
        self.inner.try_push(item, |item| item)
    }

    /// A handle that pushes to the same queue, for the room's route table. Unlike this
    /// sender, dropping it tells the session nothing.
    pub fn route(&self) -> Route {
        Route {
            inner: Arc::clone(&self.inner),
        }
    }

    /// Tells the session to close with `reason`; queued items are not delivered.
    pub fn kill(self, reason: CloseReason) {
        self.inner.lock().killed = Some(reason);
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
        self.inner
            .try_push(frame, Outbound::Frame)
            .map_err(|(_, frame)| frame)
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

    /// Moves every queued item into `out`, waiting for at least one, or reports the kill.
    /// A sender dropped without a kill reads as a shutdown. Cancel-safe: nothing is taken
    /// until it returns.
    pub async fn recv_all(&mut self, out: &mut Vec<Outbound>) -> Received {
        poll_fn(|cx| self.poll_recv_all(cx, out)).await
    }

    fn poll_recv_all(&mut self, cx: &mut Context<'_>, out: &mut Vec<Outbound>) -> Poll<Received> {
        // Register first, then look: a push after the look wakes this registration.
        self.inner.wake.register(cx.waker());
        let mut state = self.inner.lock();
        if let Some(verdict) = Self::verdict(&state) {
            return Poll::Ready(Received::Killed(verdict));
        }
        if state.queue.is_empty() {
            return Poll::Pending;
        }
        let n = state.queue.len();
        out.extend(state.queue.drain(..));
        if state.queue.capacity() > KEEP_CAPACITY {
            state.queue.shrink_to(KEEP_CAPACITY);
        }
        Poll::Ready(Received::Items(n))
    }

    /// Resolves when the room drops this member (for racing a slow write).
    pub async fn killed(&self) -> CloseReason {
        poll_fn(|cx| {
            self.inner.wake.register(cx.waker());
            match Self::verdict(&self.inner.lock()) {
                Some(verdict) => Poll::Ready(verdict),
                None => Poll::Pending,
            }
        })
        .await
    }

    fn verdict(state: &State) -> Option<CloseReason> {
        state
            .killed
            .or(state.closed.then_some(CloseReason::Shutdown))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(s: &'static str) -> Outbound {
        Outbound::Frame(Utf8Bytes::from_static(s))
    }

    #[tokio::test]
    async fn delivers_in_order_and_bounds_the_queue() {
        let (tx, mut rx) = outbox(2);
        assert!(tx.try_send(frame("a")).is_ok());
        assert!(tx.try_send(frame("b")).is_ok());
        assert!(
            matches!(tx.try_send(frame("c")), Err((SendError::Full, Outbound::Frame(f))) if f.as_str() == "c")
        );
        let mut out = Vec::new();
        assert_eq!(rx.recv_all(&mut out).await, Received::Items(2));
        let texts: Vec<_> = out
            .iter()
            .map(|o| match o {
                Outbound::Frame(f) => f.as_str().to_owned(),
                Outbound::Probe(_) => String::new(),
            })
            .collect();
        assert_eq!(texts, ["a", "b"]);
        assert!(tx.try_send(frame("c")).is_ok());
    }

    #[tokio::test]
    async fn wakes_the_receiver_and_reports_a_dropped_sender_as_shutdown() {
        let (tx, mut rx) = outbox(4);
        let waiter = tokio::spawn(async move {
            let mut out = Vec::new();
            let first = rx.recv_all(&mut out).await;
            let second = rx.recv_all(&mut out).await;
            (first, second)
        });
        tokio::task::yield_now().await;
        assert!(tx.try_send(frame("x")).is_ok());
        tokio::task::yield_now().await;
        drop(tx);
        assert_eq!(
            waiter.await.unwrap(),
            (Received::Items(1), Received::Killed(CloseReason::Shutdown))
        );
    }

    #[tokio::test]
    async fn a_kill_wins_over_queued_items_and_wakes_a_stuck_writer() {
        let (tx, mut rx) = outbox(4);
        assert!(tx.try_send(frame("never")).is_ok());
        let (waiting, done) = tokio::sync::oneshot::channel();
        let rx_task = tokio::spawn(async move {
            let _ = waiting.send(());
            let verdict = rx.killed().await;
            (verdict, rx.recv_all(&mut Vec::new()).await)
        });
        done.await.unwrap();
        tx.kill(CloseReason::SlowReader);
        assert_eq!(
            rx_task.await.unwrap(),
            (
                CloseReason::SlowReader,
                Received::Killed(CloseReason::SlowReader)
            )
        );
    }

    #[tokio::test]
    async fn a_send_to_a_dropped_receiver_fails() {
        let (tx, rx) = outbox(4);
        drop(rx);
        assert!(matches!(
            tx.try_send(frame("x")),
            Err((SendError::Closed, _))
        ));
    }

    #[test]
    fn a_route_refuses_once_the_member_is_let_go_or_its_session_is_gone() {
        let (tx, rx) = outbox(4);
        let route = tx.route();
        assert!(route.try_send_frame(Utf8Bytes::from_static("a")).is_ok());
        tx.kill(CloseReason::SlowReader);
        assert_eq!(
            route
                .try_send_frame(Utf8Bytes::from_static("b"))
                .map_err(|f| f.to_string()),
            Err("b".to_owned())
        );
        drop(rx);

        let (tx, rx) = outbox(4);
        let route = tx.route();
        drop(rx);
        // (The room's own sender refuses too: `a_send_to_a_dropped_receiver_fails`.)
        assert!(route.try_send_frame(Utf8Bytes::from_static("c")).is_err());
        drop(tx);
    }

    #[test]
    fn in_flight_counts_until_each_guard_is_dropped() {
        let (_tx, rx) = outbox(4);
        assert!(!rx.has_in_flight());
        let first = rx.in_flight();
        let second = rx.in_flight();
        drop(first);
        assert!(rx.has_in_flight());
        drop(second);
        assert!(!rx.has_in_flight());
    }
}
