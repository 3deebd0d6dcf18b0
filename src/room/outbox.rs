//! A member's outbound queue: bounded, single consumer, allocation only while non-empty.
//!
//! tokio's `mpsc::channel` allocates its first 32-slot block up front (~1.2 KB here), which
//! every idle peer would carry for its whole life. This queue is a `VecDeque` behind a mutex
//! that is only locked for a push or a drain, plus an `AtomicWaker` for the one consumer
//! (registering it is two atomic operations, and a dropped poll costs nothing, unlike a
//! `Notify` waiter); it allocates on the first push and gives large buffers back once
//! drained, so an idle peer costs ~150 bytes.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;

use super::Outbound;

/// Buffers above this many slots are released when the queue drains (a busy peer keeps a
/// small buffer instead of reallocating every batch; an idle one keeps what OPEN needed).
const KEEP_CAPACITY: usize = 32;

#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    /// Wakes the consumer after a push or when the sender goes away.
    wake: AtomicWaker,
    capacity: usize,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Outbound>,
    /// The sending side was dropped: nothing more will come.
    closed: bool,
}

/// Why [`OutboxSender::try_send`] refused an item.
#[derive(Debug, PartialEq, Eq)]
pub enum SendError {
    /// The queue holds `capacity` items: the consumer is not keeping up.
    Full,
    /// The consumer is gone.
    Closed,
}

/// The room's end: pushes without ever waiting.
#[derive(Debug)]
pub struct OutboxSender {
    inner: Arc<Inner>,
}

/// The session's end: takes everything queued at once.
#[derive(Debug)]
pub struct OutboxReceiver {
    inner: Arc<Inner>,
}

/// A queue holding at most `capacity` items.
pub fn outbox(capacity: usize) -> (OutboxSender, OutboxReceiver) {
    let inner = Arc::new(Inner {
        state: Mutex::new(State::default()),
        wake: AtomicWaker::new(),
        capacity,
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
}

impl OutboxSender {
    /// Queues `item` unless the queue is full or its receiver is gone.
    pub fn try_send(&self, item: Outbound) -> Result<(), SendError> {
        {
            let mut state = self.inner.lock();
            if Arc::strong_count(&self.inner) == 1 {
                return Err(SendError::Closed);
            }
            if state.queue.len() >= self.inner.capacity {
                return Err(SendError::Full);
            }
            state.queue.push_back(item);
        }
        self.inner.wake.wake();
        Ok(())
    }
}

impl Drop for OutboxSender {
    fn drop(&mut self) {
        self.inner.lock().closed = true;
        self.inner.wake.wake();
    }
}

impl OutboxReceiver {
    /// Moves every queued item into `out`, waiting for at least one. Returns 0 once the
    /// sender is gone and the queue is empty. Cancel-safe: nothing is taken until it returns.
    pub async fn recv_all(&mut self, out: &mut Vec<Outbound>) -> usize {
        std::future::poll_fn(|cx| self.poll_recv_all(cx, out)).await
    }

    fn poll_recv_all(&mut self, cx: &mut Context<'_>, out: &mut Vec<Outbound>) -> Poll<usize> {
        // Register first, then look: a push after the look wakes this registration.
        self.inner.wake.register(cx.waker());
        let mut state = self.inner.lock();
        if !state.queue.is_empty() {
            let n = state.queue.len();
            out.extend(state.queue.drain(..));
            if state.queue.capacity() > KEEP_CAPACITY {
                state.queue.shrink_to(KEEP_CAPACITY);
            }
            return Poll::Ready(n);
        }
        if state.closed {
            return Poll::Ready(0);
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::Utf8Bytes;

    fn frame(s: &'static str) -> Outbound {
        Outbound::Frame(Utf8Bytes::from_static(s))
    }

    #[tokio::test]
    async fn delivers_in_order_and_bounds_the_queue() {
        let (tx, mut rx) = outbox(2);
        assert_eq!(tx.try_send(frame("a")), Ok(()));
        assert_eq!(tx.try_send(frame("b")), Ok(()));
        assert_eq!(tx.try_send(frame("c")), Err(SendError::Full));
        let mut out = Vec::new();
        assert_eq!(rx.recv_all(&mut out).await, 2);
        let texts: Vec<_> = out
            .iter()
            .map(|o| match o {
                Outbound::Frame(f) => f.as_str().to_owned(),
                Outbound::Probe(_) => String::new(),
            })
            .collect();
        assert_eq!(texts, ["a", "b"]);
        assert_eq!(tx.try_send(frame("c")), Ok(()));
    }

    #[tokio::test]
    async fn wakes_the_receiver_and_reports_closing() {
        let (tx, mut rx) = outbox(4);
        let waiter = tokio::spawn(async move {
            let mut out = Vec::new();
            let first = rx.recv_all(&mut out).await;
            let second = rx.recv_all(&mut out).await;
            (first, second)
        });
        tokio::task::yield_now().await;
        tx.try_send(frame("x")).unwrap();
        tokio::task::yield_now().await;
        drop(tx);
        assert_eq!(waiter.await.unwrap(), (1, 0));
    }

    #[tokio::test]
    async fn a_send_to_a_dropped_receiver_fails() {
        let (tx, rx) = outbox(4);
        drop(rx);
        assert_eq!(tx.try_send(frame("x")), Err(SendError::Closed));
    }
}
