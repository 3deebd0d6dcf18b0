//! The accept gate: what every TCP connection passes before the server spends a task on it,
//! and the bounds on connections that are still in their handshake.
//!
//! Why: one address that opens thousands of connections and sends half a request head (or
//! nothing) costs the server a descriptor, a task and a buffer each until the handshake
//! timeout; a timeout alone bounds how long, not how many. So:
//!
//! - Every accepted connection (WebSocket, REST, the ops listener alike) is counted under its
//!   client's [address key](address_key) from accept to close (`--max-tcp-per-ip`).
//! - A connection is *in its handshake* from accept until its first request head is whole
//!   (TLS included). Per address that is bounded too (`--max-handshakes-per-ip`); past either
//!   per-address bound the connection is refused at once, in the accept loop, with a canned
//!   429 ([`refuse`]): no task, no buffer.
//! - Server-wide, at most `--max-handshakes` connections are in their handshake; when a new
//!   one arrives with the table full, the *oldest* is dropped to admit it. Many addresses
//!   flooding half-open connections then only push each other out: an honest handshake
//!   completes in milliseconds, long before it becomes the oldest.
//!
//! With `--proxied` every connection comes from the proxy's address, so the per-address
//! bounds are not applied (slowloris protection is then the proxy's job); the server-wide
//! handshake bound still is.
//!
//! Cost per connection: one map update at accept, one when the handshake ends, one at close,
//! two short locks of the handshake table, and one small allocation (the eviction signal).

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use dashmap::DashMap;
use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::protocol::Rejection;

/// IPv4 clients of a dual-stack socket appear as `::ffff:a.b.c.d`; count them as IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The key a client address is counted under: an IPv4 address as it is (v4-mapped IPv6
/// included), an IPv6 address masked to its first `ipv6_prefix` bits, since one subscriber
/// usually holds a whole /64 and could rotate through it freely.
pub fn address_key(ip: IpAddr, ipv6_prefix: u8) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => {
            let bits = u32::from(ipv6_prefix.min(128));
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
        }
        v4 => v4,
    }
}

/// Why a connection was refused at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Its address holds `--max-tcp-per-ip` connections.
    TcpPerIp,
    /// Its address holds `--max-handshakes-per-ip` connections in their handshake.
    HandshakesPerIp,
}

/// One address's connections.
#[derive(Debug, Default)]
struct Counts {
    /// Open, from accept to close.
    tcp: usize,
    /// Of those, still in their handshake.
    handshakes: usize,
}

/// The per-address counts and the server-wide handshake table. One per server.
#[derive(Debug)]
pub struct Gate {
    /// Whether connections are counted per address (not behind a proxy, and a limit is set).
    per_address: bool,
    max_tcp: usize,
    max_handshakes_per_ip: usize,
    ipv6_prefix: u8,
    handshake_timeout: std::time::Duration,
    /// Per address key; an entry exists only while its address has a connection open.
    counts: DashMap<IpAddr, Counts>,
    /// Connections in their handshake, oldest first.
    table: Mutex<Table>,
    metrics: Arc<Metrics>,
}

#[derive(Debug)]
struct Table {
    /// At most this many entries.
    limit: usize,
    /// The next entry's number; numbers only grow, so `entries` is sorted by them.
    next: u64,
    entries: VecDeque<Entry>,
}

#[derive(Debug)]
struct Entry {
    seq: u64,
    signal: Arc<Eviction>,
}

/// Set when a connection is dropped from the handshake table to make room.
#[derive(Debug, Default)]
struct Eviction {
    evicted: AtomicBool,
    waker: AtomicWaker,
}

impl Eviction {
    fn evict(&self) {
        self.evicted.store(true, Ordering::Release);
        self.waker.wake();
    }
}

impl Gate {
    /// An empty gate for `config`'s limits, counting into `metrics`.
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Self {
        let max_tcp = config.max_tcp_per_ip.unwrap_or(usize::MAX);
        let max_handshakes_per_ip = config.max_handshakes_per_ip.unwrap_or(usize::MAX);
        Gate {
            per_address: !config.proxied
                && (config.max_tcp_per_ip.is_some() || config.max_handshakes_per_ip.is_some()),
            max_tcp,
            max_handshakes_per_ip,
            ipv6_prefix: config.ipv6_prefix,
            handshake_timeout: config.handshake_timeout,
            counts: DashMap::new(),
            table: Mutex::new(Table {
                limit: config.max_handshakes.max(1),
                next: 0,
                entries: VecDeque::new(),
            }),
            metrics,
        }
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        match self.table.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Counts a connection just accepted from `peer`: its place for its whole life and its
    /// place in the handshake table (dropping the oldest entry if the table is full). Refused
    /// (and counted) when its address is over a per-address limit.
    pub fn admit(self: &Arc<Self>, peer: SocketAddr) -> Result<Admitted, Refused> {
        let key = self
            .per_address
            .then(|| address_key(peer.ip(), self.ipv6_prefix));
        if let Some(key) = key {
            let mut counts = self.counts.entry(key).or_default();
            // Over a limit means the entry was there already (limits are at least 1), so a
            // refusal leaves no empty entry behind.
            let refused = if counts.tcp >= self.max_tcp {
                Some((Refused::TcpPerIp, Rejection::TcpPerIp))
            } else if counts.handshakes >= self.max_handshakes_per_ip {
                Some((Refused::HandshakesPerIp, Rejection::HandshakesPerIp))
            } else {
                counts.tcp += 1;
                counts.handshakes += 1;
                None
            };
            drop(counts);
            if let Some((refused, why)) = refused {
                self.metrics.reject(why);
                return Err(refused);
            }
        }
        let signal = Arc::new(Eviction::default());
        let seq = {
            let mut table = self.table();
            if table.entries.len() >= table.limit
                && let Some(oldest) = table.entries.pop_front()
            {
                oldest.signal.evict();
                self.metrics.reject(Rejection::HandshakeEvicted);
            }
            let seq = table.next;
            table.next += 1;
            table.entries.push_back(Entry {
                seq,
                signal: Arc::clone(&signal),
            });
            seq
        };
        self.metrics.tcp_connections.inc();
        self.metrics.handshakes.inc();
        Ok(Admitted {
            conn: ConnTicket {
                gate: Arc::clone(self),
                key,
            },
            handshake: HandshakeTicket {
                gate: Arc::clone(self),
                key,
                seq,
                signal,
                deadline: Instant::now() + self.handshake_timeout,
            },
        })
    }

    /// Connections open from `ip`'s address key (0 when addresses are not counted).
    pub fn connections_from(&self, ip: IpAddr) -> usize {
        self.counts
            .get(&address_key(ip, self.ipv6_prefix))
            .map_or(0, |c| c.tcp)
    }

    /// Connections from `ip`'s address key still in their handshake.
    pub fn handshakes_from(&self, ip: IpAddr) -> usize {
        self.counts
            .get(&address_key(ip, self.ipv6_prefix))
            .map_or(0, |c| c.handshakes)
    }

    /// Connections in the server-wide handshake table.
    pub fn handshakes(&self) -> usize {
        self.table().entries.len()
    }
}

/// What an admitted connection holds: [`ConnTicket`] until it closes, [`HandshakeTicket`]
/// until its first request head is whole.
#[derive(Debug)]
pub struct Admitted {
    /// The connection's place in its address's count.
    pub conn: ConnTicket,
    /// Its place among the connections in their handshake.
    pub handshake: HandshakeTicket,
}

/// A connection's place in its address's count, given back when dropped.
#[derive(Debug)]
pub struct ConnTicket {
    gate: Arc<Gate>,
    /// `None` when addresses are not counted.
    key: Option<IpAddr>,
}

impl Drop for ConnTicket {
    fn drop(&mut self) {
        self.gate.metrics.tcp_connections.dec();
        if let Some(key) = self.key {
            // The entry goes at zero, so the map never grows with past clients.
            self.gate.counts.remove_if_mut(&key, |_, counts| {
                counts.tcp -= 1;
                counts.tcp == 0
            });
        }
    }
}

/// A connection's place among those in their handshake, given back when dropped (its first
/// request head is whole, or it ended).
#[derive(Debug)]
pub struct HandshakeTicket {
    gate: Arc<Gate>,
    key: Option<IpAddr>,
    seq: u64,
    signal: Arc<Eviction>,
    /// Accept time plus `--handshake-timeout`: the TLS handshake and the first head together
    /// must be done by then.
    deadline: Instant,
}

impl HandshakeTicket {
    /// When the handshake must be done.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Resolves if the connection is dropped from the table to make room for a newer one.
    pub async fn evicted(&self) {
        poll_fn(|cx| {
            if self.signal.evicted.load(Ordering::Acquire) {
                return Poll::Ready(());
            }
            self.signal.waker.register(cx.waker());
            if self.signal.evicted.load(Ordering::Acquire) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }
}

impl Drop for HandshakeTicket {
    fn drop(&mut self) {
        {
            let mut table = self.gate.table();
            // Honest handshakes end in about the order they began, so this is near the front.
            if let Ok(i) = table.entries.binary_search_by_key(&self.seq, |e| e.seq) {
                table.entries.remove(i);
            }
        }
        self.gate.metrics.handshakes.dec();
        if let Some(key) = self.key
            && let Some(mut counts) = self.gate.counts.get_mut(&key)
        {
            counts.handshakes -= 1;
        }
    }
}

/// A socket that holds its connection's [`ConnTicket`]: the count follows the socket through
/// TLS, hyper and an upgrade, and is given back when the socket closes.
#[derive(Debug)]
pub struct Counted<S> {
    inner: S,
    _ticket: ConnTicket,
}

impl<S> Counted<S> {
    /// `inner`, counted by `ticket`.
    pub fn new(inner: S, ticket: ConnTicket) -> Self {
        Counted {
            inner,
            _ticket: ticket,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// What a refused plain-HTTP connection is told.
const REFUSED: &[u8] = b"HTTP/1.1 429 Too Many Requests\r\nConnection: close\r\n\
    Content-Type: text/plain\r\nContent-Length: 39\r\n\r\nToo many connections from this address\n";

/// Refuses a connection in the accept loop: with `answer`, one non-blocking write of a canned
/// 429 (no TLS: a TLS client could not read it), then close. No task, no allocation, and it
/// never waits: what the socket buffer does not take is lost.
pub fn refuse(stream: tokio::net::TcpStream, answer: bool) {
    use std::io::{Read, Write};
    // Straight to the socket: tokio's `try_write` would wait for a readiness event first.
    let socket = socket2::SockRef::from(&stream);
    if answer {
        let _ = (&*socket).write(REFUSED);
    }
    let _ = socket.shutdown(std::net::Shutdown::Write);
    // What the client sent already is read and dropped, so the close is a FIN after the 429
    // rather than a reset that could destroy it in flight.
    let mut sink = [0u8; 1024];
    let _ = (&*socket).read(&mut sink);
    drop(stream);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(tweak: impl FnOnce(&mut Config)) -> Arc<Gate> {
        let mut config = Config::default();
        tweak(&mut config);
        Arc::new(Gate::new(&config, Arc::new(Metrics::new())))
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn address_keys() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(address_key(ip("10.1.2.3"), 64), ip("10.1.2.3"));
        assert_eq!(address_key(ip("::ffff:10.1.2.3"), 64), ip("10.1.2.3"));
        assert_eq!(
            address_key(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd"), 64),
            ip("2001:db8:1:2::")
        );
        assert_eq!(
            address_key(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd"), 48),
            ip("2001:db8:1::")
        );
        assert_eq!(
            address_key(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd"), 128),
            ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd")
        );
        assert_eq!(address_key(ip("2001:db8::1"), 1), ip("::"));
    }

    #[test]
    fn per_address_limits_refuse_and_free_their_places() {
        let gate = gate(|c| {
            c.max_tcp_per_ip = Some(3);
            c.max_handshakes_per_ip = Some(2);
        });
        let a = addr("10.0.0.1:1000");
        let first = gate.admit(a).unwrap();
        let second = gate.admit(a).unwrap();
        assert_eq!(
            gate.admit(a).unwrap_err(),
            Refused::HandshakesPerIp,
            "two in their handshake"
        );
        assert_eq!(gate.metrics.rejected(Rejection::HandshakesPerIp), 1);
        // Another address is not affected, and an IPv6 /64 is one address.
        let v6 = gate.admit(addr("[2001:db8::1]:1")).unwrap();
        let _v6b = gate.admit(addr("[2001:db8::2]:1")).unwrap();
        assert_eq!(
            gate.admit(addr("[2001:db8::3]:1")).unwrap_err(),
            Refused::HandshakesPerIp
        );
        drop(v6);
        // A finished handshake frees its handshake place, not its connection place.
        drop(first.handshake);
        let third = gate.admit(a).unwrap();
        drop(third.handshake);
        drop(second.handshake);
        assert_eq!(gate.connections_from(a.ip()), 3);
        assert_eq!(gate.handshakes_from(a.ip()), 0);
        assert_eq!(gate.admit(a).unwrap_err(), Refused::TcpPerIp);
        assert_eq!(gate.metrics.rejected(Rejection::TcpPerIp), 1);
        drop((first.conn, second.conn, third.conn));
        assert_eq!(gate.connections_from(a.ip()), 0);
        assert!(
            gate.counts.get(&a.ip()).is_none(),
            "no entry left for a gone address"
        );
        assert!(gate.admit(a).is_ok());
    }

    #[test]
    fn websockets_from_one_ipv6_network_share_their_per_ip_count() {
        let config = Config {
            max_connections_per_ip: Some(2),
            ..Config::default()
        };
        let shared = Arc::new(crate::state::Shared::new(config));
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let _a = shared.admit_ip(ip("2001:db8:0:1::a")).unwrap();
        let _b = shared.admit_ip(ip("2001:db8:0:1:ffff::b")).unwrap();
        assert!(shared.admit_ip(ip("2001:db8:0:1::c")).is_none(), "same /64");
        assert!(
            shared.admit_ip(ip("2001:db8:0:2::a")).is_some(),
            "another /64"
        );
        assert_eq!(shared.connections_from(ip("2001:db8:0:1::d")), 2);
    }

    #[test]
    fn behind_a_proxy_addresses_are_not_counted() {
        let gate = gate(|c| {
            c.proxied = true;
            c.max_tcp_per_ip = Some(1);
            c.max_handshakes_per_ip = Some(1);
        });
        let a = addr("10.0.0.1:1000");
        let held: Vec<_> = (0..5).map(|_| gate.admit(a).unwrap()).collect();
        assert_eq!(gate.connections_from(a.ip()), 0);
        assert_eq!(gate.handshakes(), 5);
        drop(held);
        assert_eq!(gate.handshakes(), 0);
        assert_eq!(gate.metrics.tcp_connections.get(), 0);
    }

    #[test]
    fn a_full_table_drops_its_oldest_entry_for_the_newcomer() {
        use futures_util::FutureExt;
        let gate = gate(|c| {
            c.max_handshakes = 3;
            c.max_handshakes_per_ip = None;
        });
        let a = addr("10.0.0.1:1000");
        let oldest = gate.admit(a).unwrap();
        let second = gate.admit(a).unwrap();
        let third = gate.admit(a).unwrap();
        // The second finishes its handshake: the table has room again.
        drop(second.handshake);
        let fourth = gate.admit(a).unwrap();
        assert_eq!(gate.metrics.rejected(Rejection::HandshakeEvicted), 0);
        // Full: the next one pushes out the oldest, whose wait for eviction ends.
        let fifth = gate.admit(a).unwrap();
        assert_eq!(gate.metrics.rejected(Rejection::HandshakeEvicted), 1);
        assert!(oldest.handshake.evicted().now_or_never().is_some());
        assert!(
            third.handshake.evicted().now_or_never().is_none(),
            "only the oldest goes"
        );
        assert_eq!(gate.handshakes(), 3);
        // The evicted one's ticket still counts until its connection lets go of it.
        assert_eq!(gate.handshakes_from(a.ip()), 4);
        drop(oldest);
        assert_eq!(gate.handshakes_from(a.ip()), 3);
        drop((third, fourth, fifth, second.conn));
        assert_eq!(gate.handshakes(), 0);
        assert_eq!(gate.connections_from(a.ip()), 0);
        assert_eq!(gate.metrics.handshakes.get(), 0);
    }
}
