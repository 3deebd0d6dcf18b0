//! The server-wide budgets rooms draw on: peer slots (`--concurrent-limit`) and offline-queue
//! bytes (`--max-queued-bytes`).
//!
//! Every draw is a guard that gives back what it took when dropped, so whatever happens to
//! the room holding it (it ends, or its actor panics and unwinds), the server's counts stay
//! true: a failed room cannot leak seats or queue space.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::metrics::Metrics;

/// The counters behind the budgets, shared by every room.
#[derive(Debug)]
pub struct Budgets {
    /// Registered peers.
    peers: AtomicUsize,
    /// `--concurrent-limit`.
    peer_limit: usize,
    /// Bytes charged to all offline queues.
    queued: AtomicUsize,
    /// `--max-queued-bytes`.
    queued_limit: usize,
    /// Gauges kept in step with the counters.
    metrics: Arc<Metrics>,
}

impl Budgets {
    /// Budgets of `peer_limit` peers and `queued_limit` queued bytes.
    pub fn new(peer_limit: usize, queued_limit: usize, metrics: Arc<Metrics>) -> Self {
        Budgets {
            peers: AtomicUsize::new(0),
            peer_limit,
            queued: AtomicUsize::new(0),
            queued_limit,
            metrics,
        }
    }

    /// Takes a peer slot, if any is free.
    pub fn peer_slot(self: &Arc<Self>) -> Option<PeerSlot> {
        let limit = self.peer_limit;
        self.peers
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()?;
        self.metrics.peers.inc();
        Some(PeerSlot {
            budgets: Arc::clone(self),
        })
    }

    /// Registered peers right now.
    pub fn peers(&self) -> usize {
        self.peers.load(Ordering::Acquire)
    }

    /// Bytes charged to offline queues right now.
    pub fn queued_bytes(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// An empty charge against the offline-queue budget, to grow message by message.
    pub fn queue_charge(self: &Arc<Self>) -> QueueCharge {
        QueueCharge {
            budgets: Arc::clone(self),
            messages: 0,
            bytes: 0,
        }
    }
}

/// One registered peer's place in `--concurrent-limit`; given back on drop.
#[derive(Debug)]
pub struct PeerSlot {
    budgets: Arc<Budgets>,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        self.budgets.peers.fetch_sub(1, Ordering::AcqRel);
        self.budgets.metrics.peers.dec();
    }
}

/// Queued messages' share of `--max-queued-bytes` (one offline queue's); given back on drop.
#[derive(Debug)]
pub struct QueueCharge {
    budgets: Arc<Budgets>,
    messages: usize,
    bytes: usize,
}

impl QueueCharge {
    /// Charges one more message of `bytes`, if the server-wide budget allows.
    pub fn add(&mut self, bytes: usize) -> bool {
        let limit = self.budgets.queued_limit;
        let ok = self
            .budgets
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                n.checked_add(bytes).filter(|total| *total <= limit)
            })
            .is_ok();
        if ok {
            self.messages += 1;
            self.bytes += bytes;
            let metrics = &self.budgets.metrics;
            metrics.queued_bytes.inc_by(bytes as i64);
            metrics.queued_messages.inc();
        }
        ok
    }

    /// Bytes charged.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Messages charged.
    pub fn messages(&self) -> usize {
        self.messages
    }
}

impl Drop for QueueCharge {
    fn drop(&mut self) {
        self.budgets.queued.fetch_sub(self.bytes, Ordering::AcqRel);
        let metrics = &self.budgets.metrics;
        metrics.queued_bytes.dec_by(self.bytes as i64);
        metrics.queued_messages.dec_by(self.messages as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_and_charges_come_back_when_dropped() {
        let budgets = Arc::new(Budgets::new(2, 100, Arc::new(Metrics::new())));
        let a = budgets.peer_slot().unwrap();
        let _b = budgets.peer_slot().unwrap();
        assert!(budgets.peer_slot().is_none());
        drop(a);
        assert!(budgets.peer_slot().is_some());

        let mut first = budgets.queue_charge();
        assert!(first.add(60));
        let mut second = budgets.queue_charge();
        assert!(!second.add(41), "over the server-wide budget");
        assert!(second.add(40));
        assert_eq!(budgets.queued_bytes(), 100);
        drop(first);
        assert_eq!(budgets.queued_bytes(), 40);
        drop(second);
        assert_eq!(budgets.queued_bytes(), 0);
        assert_eq!(budgets.metrics.queued_messages.get(), 0);
    }
}
