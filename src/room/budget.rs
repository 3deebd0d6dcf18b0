//! The server-wide budgets rooms draw on: peer slots (`--concurrent-limit`), offline-queue
//! bytes (`--max-queued-bytes`, and each client address's share of them,
//! `--max-queued-bytes-per-ip`) and the bytes waiting to be written to peers
//! (`--max-outbound-total`).
//!
//! Every draw is a guard that gives back what it took when dropped, so whatever happens to
//! the room holding it (it ends, or its actor panics and unwinds), the server's counts stay
//! true: a failed room cannot leak seats or queue space.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

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
    /// Offline-queue bytes charged to each client address (IPv6: its network) that has any,
    /// across every room.
    origins: Mutex<HashMap<IpAddr, usize>>,
    /// `--max-queued-bytes-per-ip`.
    origin_limit: usize,
    /// `--max-outbound-total`; the bytes drawn against it are counted by the
    /// `Metrics::outbound_bytes` gauge itself.
    outbound_limit: usize,
    /// Gauges kept in step with the counters.
    metrics: Arc<Metrics>,
}

/// What one peer may have waiting to be written while the outbound total is over
/// `--max-outbound-total`: a peer that keeps reading holds far less (signaling messages are a
/// few KB), so under pressure only frames for peers that let a backlog build up (or frames
/// larger than this) are refused.
pub const PRESSURE_SHARE: usize = 64 * 1024;

/// The sizes of the server-wide budgets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetLimits {
    /// Registered peers (`--concurrent-limit`).
    pub peers: usize,
    /// Bytes in offline queues (`--max-queued-bytes`).
    pub queued_bytes: usize,
    /// Of those, what the senders from one client address may hold
    /// (`--max-queued-bytes-per-ip`).
    pub queued_bytes_per_origin: usize,
    /// Bytes waiting to be written to peers, beyond which a frame that would leave its peer
    /// holding more than [`PRESSURE_SHARE`] is refused (`--max-outbound-total`).
    pub outbound_bytes: usize,
}

impl Budgets {
    /// Budgets of the given sizes.
    pub fn new(limits: BudgetLimits, metrics: Arc<Metrics>) -> Self {
        Budgets {
            peers: AtomicUsize::new(0),
            peer_limit: limits.peers,
            queued: AtomicUsize::new(0),
            queued_limit: limits.queued_bytes,
            origins: Mutex::default(),
            origin_limit: limits.queued_bytes_per_origin,
            outbound_limit: limits.outbound_bytes,
            metrics,
        }
    }

    /// Budgets no unit test reaches, for tests of the pieces that draw on them.
    #[cfg(test)]
    pub fn roomy() -> Arc<Self> {
        Arc::new(Budgets::new(
            BudgetLimits {
                peers: usize::MAX,
                queued_bytes: usize::MAX,
                queued_bytes_per_origin: usize::MAX,
                outbound_bytes: usize::MAX,
            },
            Arc::new(Metrics::new()),
        ))
    }

    /// Draws `cost` bytes for a frame that will wait to be written to a peer whose backlog,
    /// counting it, is `backlog`. Refused only when the server-wide total would pass
    /// `--max-outbound-total` and the peer would hold more than [`PRESSURE_SHARE`]; so the
    /// total stays under the limit plus one share per peer, and frames for a peer that keeps
    /// reading are refused only if larger than the share while the server is short.
    pub fn draw_outbound(&self, cost: usize, backlog: usize) -> bool {
        let gauge = &self.metrics.outbound_bytes;
        let before = usize::try_from(gauge.inc_by(cost as i64)).unwrap_or(0);
        if before + cost <= self.outbound_limit || backlog <= PRESSURE_SHARE {
            return true;
        }
        gauge.dec_by(cost as i64);
        false
    }

    /// Gives back `bytes` drawn by [`draw_outbound`](Self::draw_outbound).
    pub fn return_outbound(&self, bytes: usize) {
        if bytes != 0 {
            self.metrics.outbound_bytes.dec_by(bytes as i64);
        }
    }

    /// Bytes waiting to be written to peers right now.
    pub fn outbound_bytes(&self) -> usize {
        usize::try_from(self.metrics.outbound_bytes.get()).unwrap_or(0)
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

    /// An empty charge against the offline-queue share of client address `origin` (already
    /// reduced to its network for IPv6), to grow message by message.
    pub fn origin_charge(self: &Arc<Self>, origin: IpAddr) -> OriginCharge {
        OriginCharge {
            budgets: Arc::clone(self),
            origin,
            bytes: 0,
        }
    }

    fn origins(&self) -> MutexGuard<'_, HashMap<IpAddr, usize>> {
        // Plain counts, each changed in one step: a panic cannot leave them half-written.
        self.origins.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Offline-queue bytes charged to `origin` right now, in every room.
    pub fn origin_bytes(&self, origin: IpAddr) -> usize {
        self.origins().get(&origin).copied().unwrap_or(0)
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

/// What one room's offline queues hold from the senders of one client address, against that
/// address's share (`--max-queued-bytes-per-ip`) across all rooms; given back on drop.
#[derive(Debug)]
pub struct OriginCharge {
    budgets: Arc<Budgets>,
    origin: IpAddr,
    bytes: usize,
}

impl OriginCharge {
    /// Charges `bytes` more, if the address's share allows.
    pub fn add(&mut self, bytes: usize) -> bool {
        let limit = self.budgets.origin_limit;
        let mut origins = self.budgets.origins();
        let held = origins.entry(self.origin).or_default();
        match held.checked_add(bytes).filter(|total| *total <= limit) {
            Some(total) => {
                *held = total;
                self.bytes += bytes;
                true
            }
            None => {
                if *held == 0 {
                    origins.remove(&self.origin);
                }
                false
            }
        }
    }

    /// Gives back `bytes` of what this charge holds.
    pub fn sub(&mut self, bytes: usize) {
        let bytes = bytes.min(self.bytes);
        self.bytes -= bytes;
        self.budgets.give_back_origin(self.origin, bytes);
    }

    /// Bytes charged.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for OriginCharge {
    fn drop(&mut self) {
        self.budgets.give_back_origin(self.origin, self.bytes);
    }
}

impl Budgets {
    fn give_back_origin(&self, origin: IpAddr, bytes: usize) {
        if bytes == 0 {
            return;
        }
        let mut origins = self.origins();
        if let Some(held) = origins.get_mut(&origin) {
            *held = held.saturating_sub(bytes);
            if *held == 0 {
                origins.remove(&origin);
            }
        }
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
        let budgets = Arc::new(Budgets::new(
            BudgetLimits {
                peers: 2,
                queued_bytes: 100,
                queued_bytes_per_origin: 100,
                outbound_bytes: 0,
            },
            Arc::new(Metrics::new()),
        ));
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

    #[test]
    fn under_pressure_only_a_frame_taking_its_peer_past_the_share_is_refused() {
        let budgets = Budgets::new(
            BudgetLimits {
                peers: 1,
                queued_bytes: 0,
                queued_bytes_per_origin: 0,
                outbound_bytes: 100_000,
            },
            Arc::new(Metrics::new()),
        );
        // One peer fills the total with its own backlog: no pressure yet.
        assert!(budgets.draw_outbound(100_000, 100_000));
        // Past the total, a peer with a small backlog still gets its frames...
        assert!(budgets.draw_outbound(1_000, 1_000));
        assert!(budgets.draw_outbound(1_000, PRESSURE_SHARE));
        // ...a frame that would take one past the share does not, and nothing is drawn for it.
        assert!(!budgets.draw_outbound(1_000, PRESSURE_SHARE + 1));
        assert_eq!(budgets.outbound_bytes(), 102_000);
        // Once the backlog is written, the total is back under the limit for everyone.
        budgets.return_outbound(100_000);
        assert!(budgets.draw_outbound(1_000, 200_000));
        budgets.return_outbound(3_000);
        assert_eq!(budgets.outbound_bytes(), 0);
    }

    #[test]
    fn an_address_share_spans_rooms_and_comes_back() {
        let budgets = Arc::new(Budgets::new(
            BudgetLimits {
                peers: 1,
                queued_bytes: 1000,
                queued_bytes_per_origin: 100,
                outbound_bytes: 0,
            },
            Arc::new(Metrics::new()),
        ));
        let attacker: IpAddr = [10, 0, 0, 1].into();
        let honest: IpAddr = [10, 0, 0, 2].into();
        // Two rooms' charges for the same address share one limit.
        let mut here = budgets.origin_charge(attacker);
        let mut there = budgets.origin_charge(attacker);
        assert!(here.add(60));
        assert!(!there.add(41));
        assert!(there.add(40));
        // Another address has its own.
        let mut other = budgets.origin_charge(honest);
        assert!(other.add(100));
        here.sub(50);
        assert!(there.add(50));
        assert_eq!(budgets.origin_bytes(attacker), 100);
        drop(here);
        drop(there);
        assert_eq!(budgets.origin_bytes(attacker), 0);
        assert_eq!(
            budgets.origins().len(),
            1,
            "only the honest address is left"
        );
        drop(other);
        assert!(budgets.origins().is_empty());
    }
}
