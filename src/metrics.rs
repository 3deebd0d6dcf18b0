//! Counters and gauges, served at `/metrics` as JSON or Prometheus text.
//!
//! Every metric is registered once at start-up; labels come only from small fixed enums (the
//! reasons in [`crate::protocol`], decided by the sessions and rooms, and the outcomes below;
//! never a room, token or peer id), and each labelled series is resolved to its own
//! handle up front, so recording on the hot path is one atomic add.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::protocol::{CloseReason, DropReason, MessageType, Rejection};

/// One relayed message in this many is timed for the latency histogram (a clock read each).
pub const LATENCY_SAMPLE: u32 = 8;

label_enum! {
    /// Why a cluster message was not sent or not used (`--cluster`).
    ClusterDrop {
        /// A message on a cluster subject that is not a well-formed message of the protocol.
        Malformed => "malformed",
        /// A message from a node using this node's own name (a misconfiguration).
        NameClash => "name_clash",
        /// Not published: the NATS connection is down.
        Disconnected => "disconnected",
        /// Not published: `--cluster-publish-backlog` is full.
        BacklogFull => "backlog_full",
        /// NATS refused it (e.g. larger than its max_payload).
        PublishFailed => "publish_failed",
        /// A claim that some live node did not answer in time (decided without it).
        Unanswered => "unanswered",
        /// The NATS client dropped inbound messages because this node did not keep up.
        SlowConsumer => "slow_consumer",
        /// For a room whose mailbox stayed full while many others waited too.
        RoomBusy => "room_busy",
    }
}

label_enum! {
    /// How a `GET {path}{key}/ice` request ended.
    IceOutcome {
        /// TURN credentials handed out.
        Issued => "issued",
        /// `--auth-secret`: no valid join token (HTTP 401).
        Unauthorized => "unauthorized",
        /// Without `--auth-secret`: the client IP was over `--ice-rate-limit` (HTTP 429).
        RateLimited => "rate_limited",
    }
}

type Labels = [(&'static str, &'static str); 1];

/// All of the server's metrics. One instance per server, shared by `Arc`.
pub struct Metrics {
    registry: Registry,
    /// Unprefixed registry for the standard process metrics.
    process: Registry,
    /// Peers admitted and not yet gone.
    pub peers: Gauge,
    /// Room actors alive.
    pub rooms: Gauge,
    /// WebSocket upgrades accepted.
    pub connections_accepted: Counter,
    /// Room actors that failed (panicked) and were replaced.
    room_failures: Counter,
    rejected: Vec<Counter>,
    closed: Vec<Counter>,
    relayed: Vec<Counter>,
    dropped: Vec<Counter>,
    ice: Vec<Counter>,
    /// Inbound frames read from peers, of any kind.
    pub received: Counter,
    /// Messages waiting in offline queues.
    pub queued_messages: Gauge,
    /// Bytes waiting in offline queues.
    pub queued_bytes: Gauge,
    /// Bytes waiting to be written to peers (`room::budget::Budgets::draw_outbound`).
    pub outbound_bytes: Gauge,
    /// Seconds from reading a message to handing it to the destination's writer.
    pub relay_latency: Histogram,
    /// 1 while the cluster's NATS connection is up (0 without `--cluster`, or degraded).
    pub cluster_connected: Gauge,
    /// Other nodes alive.
    pub cluster_nodes: Gauge,
    /// Ids held on other nodes.
    pub cluster_remote_peers: Gauge,
    /// Messages handed to NATS for peers on other nodes.
    pub cluster_sent: Counter,
    /// Messages from other nodes for peers here.
    pub cluster_received: Counter,
    /// Nodes declared dead (no heartbeat for `--cluster-node-timeout`).
    pub cluster_nodes_lost: Counter,
    /// Registrations closed by the partition rule (`duplicate_id`).
    pub cluster_duplicates: Counter,
    /// Snapshots received from other nodes (after a gap, a restart or a partition).
    pub cluster_syncs: Counter,
    cluster_dropped: Vec<Counter>,
    /// Last sample for the JSON rates: (when, relayed, errors) and the rates it produced.
    rate_sample: Mutex<RateSample>,
    /// TCP connections open on any listener, from accept to close.
    pub tcp_connections: Gauge,
    /// Connections still in their handshake (TLS, or no whole first request head yet).
    pub handshakes: Gauge,
    /// HTTP connections closed because the client took no bytes for `--write-timeout`.
    pub http_write_timeouts: Counter,
    /// The `process_*` figures, refreshed off the runtime's workers.
    process_cache: Arc<ProcessCache>,
}

#[derive(Clone, Copy)]
struct RateSample {
    at: Instant,
    messages: u64,
    errors: u64,
    messages_per_second: f64,
    error_rate: f64,
}

/// The JSON figures of `/metrics` (README: What it serves).
#[derive(Debug, Clone, Copy, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// Room actors alive.
    pub active_rooms: i64,
    /// Peers connected.
    pub active_peers: i64,
    /// Messages relayed per second over the last sampling window.
    pub messages_per_second: f64,
    /// Dropped messages and refused connections per inbound message or connection attempt.
    pub error_rate: f64,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("peerjs");
        let peers = Gauge::default();
        registry.register("peers", "Peers connected and registered", peers.clone());
        let rooms = Gauge::default();
        registry.register(
            "rooms",
            "Rooms with at least one peer (global mode: 0 or 1)",
            rooms.clone(),
        );
        let connections_accepted = Counter::default();
        registry.register(
            "connections_accepted",
            "WebSocket upgrades accepted",
            connections_accepted.clone(),
        );
        let room_failures = Counter::default();
        registry.register(
            "room_failures",
            "Room actors that failed; their members were closed with 1011",
            room_failures.clone(),
        );
        let rejected = family(
            &mut registry,
            "connections_rejected",
            "Connection attempts refused, by reason",
            "reason",
            Rejection::ALL.iter().map(|r| r.as_str()),
        );
        let closed = family(
            &mut registry,
            "sessions_closed",
            "Admitted sockets that ended, by reason",
            "reason",
            CloseReason::ALL.iter().map(|r| r.as_str()),
        );
        let relayed = family(
            &mut registry,
            "messages_relayed",
            "Messages delivered to a connected peer (including queued ones), by type",
            "type",
            MessageType::ALL.iter().map(|t| t.as_str()),
        );
        let dropped = family(
            &mut registry,
            "messages_dropped",
            "Messages not delivered, by reason",
            "reason",
            DropReason::ALL.iter().map(|r| r.as_str()),
        );
        let ice = family(
            &mut registry,
            "ice_requests",
            "GET {path}{key}/ice requests (TURN credentials), by outcome",
            "outcome",
            IceOutcome::ALL.iter().map(|o| o.as_str()),
        );
        let received = Counter::default();
        registry.register(
            "messages_received",
            "Frames read from peers",
            received.clone(),
        );
        let queued_messages = Gauge::default();
        registry.register(
            "offline_queue_messages",
            "Messages waiting for a peer that is not connected",
            queued_messages.clone(),
        );
        let queued_bytes = Gauge::default();
        registry.register_with_unit(
            "offline_queue",
            "Bytes waiting for a peer that is not connected",
            Unit::Bytes,
            queued_bytes.clone(),
        );
        let outbound_bytes = Gauge::default();
        registry.register_with_unit(
            "outbound",
            "Bytes waiting to be written to peers, until handed to their sockets",
            Unit::Bytes,
            outbound_bytes.clone(),
        );
        let relay_latency = Histogram::new(exponential_buckets(0.000_01, 4.0, 10));
        registry.register_with_unit(
            "relay_latency",
            "Time from reading a message to queueing it for the destination's socket",
            Unit::Seconds,
            relay_latency.clone(),
        );
        let tcp_connections = Gauge::default();
        registry.register(
            "tcp_connections",
            "TCP connections open on any listener, from accept to close",
            tcp_connections.clone(),
        );
        let handshakes = Gauge::default();
        registry.register(
            "handshakes",
            "Connections still in their handshake (TLS, or no whole first request head yet)",
            handshakes.clone(),
        );
        let http_write_timeouts = Counter::default();
        registry.register(
            "http_write_timeouts",
            "HTTP connections (REST, ops, refused upgrades) closed because the client took no \
             bytes of an answer for --write-timeout",
            http_write_timeouts.clone(),
        );
        let cluster_connected = Gauge::default();
        registry.register(
            "cluster_connected",
            "1 while the cluster's NATS connection is up (0 without --cluster or when degraded)",
            cluster_connected.clone(),
        );
        let cluster_nodes = Gauge::default();
        registry.register(
            "cluster_nodes",
            "Other cluster nodes alive",
            cluster_nodes.clone(),
        );
        let cluster_remote_peers = Gauge::default();
        registry.register(
            "cluster_remote_peers",
            "Ids registered on other cluster nodes",
            cluster_remote_peers.clone(),
        );
        let cluster_sent = Counter::default();
        registry.register(
            "cluster_messages_sent",
            "Messages published for peers on other nodes",
            cluster_sent.clone(),
        );
        let cluster_received = Counter::default();
        registry.register(
            "cluster_messages_received",
            "Messages from other nodes for peers here",
            cluster_received.clone(),
        );
        let cluster_nodes_lost = Counter::default();
        registry.register(
            "cluster_nodes_lost",
            "Nodes declared dead after --cluster-node-timeout without a heartbeat",
            cluster_nodes_lost.clone(),
        );
        let cluster_duplicates = Counter::default();
        registry.register(
            "cluster_duplicates",
            "Registrations closed by the partition rule (an earlier claim held the id)",
            cluster_duplicates.clone(),
        );
        let cluster_syncs = Counter::default();
        registry.register(
            "cluster_syncs",
            "Snapshots of other nodes' ids received",
            cluster_syncs.clone(),
        );
        let cluster_dropped = family(
            &mut registry,
            "cluster_dropped",
            "Cluster messages not sent or not used, by reason",
            "reason",
            ClusterDrop::ALL.iter().map(|r| r.as_str()),
        );
        registry.register_collector(Box::new(LogLinesDropped));
        let now = Instant::now();
        let mut process = Registry::default();
        let process_cache = Arc::new(ProcessCache::default());
        process.register_collector(Box::new(ProcessCollector(Arc::clone(&process_cache))));
        Metrics {
            registry,
            process,
            peers,
            rooms,
            connections_accepted,
            room_failures,
            rejected,
            closed,
            relayed,
            dropped,
            ice,
            received,
            queued_messages,
            queued_bytes,
            outbound_bytes,
            relay_latency,
            cluster_connected,
            cluster_nodes,
            cluster_remote_peers,
            cluster_sent,
            cluster_received,
            cluster_nodes_lost,
            cluster_duplicates,
            cluster_syncs,
            cluster_dropped,
            rate_sample: Mutex::new(RateSample {
                at: now,
                messages: 0,
                errors: 0,
                messages_per_second: 0.0,
                error_rate: 0.0,
            }),
            tcp_connections,
            handshakes,
            http_write_timeouts,
            process_cache,
        }
    }

    /// Makes the `process_*` figures at most [`PROCESS_REFRESH`] old before a scrape: reads
    /// `/proc` on the blocking pool when they are older, never more than one read at a time
    /// however many scrapes wait, and never on the caller's thread.
    pub async fn refresh_process(&self) {
        ProcessCache::refresh(&self.process_cache).await;
    }

    /// How many times the `process_*` figures were read from `/proc` (tests).
    pub fn process_reads(&self) -> u64 {
        self.process_cache.lock().reads
    }

    /// Counts a refused connection attempt.
    pub fn reject(&self, why: Rejection) {
        self.rejected[why as usize].inc();
    }

    /// Counts a cluster message not sent or not used.
    pub fn cluster_drop(&self, why: ClusterDrop) {
        self.cluster_dropped[why as usize].inc();
    }

    /// Current value of a cluster drop counter.
    pub fn cluster_dropped(&self, why: ClusterDrop) -> u64 {
        self.cluster_dropped[why as usize].get()
    }

    /// Counts a room actor that failed.
    pub fn room_failed(&self) {
        self.room_failures.inc();
    }

    /// Room actors that failed so far.
    pub fn room_failures(&self) -> u64 {
        self.room_failures.get()
    }

    /// Counts an ended session.
    pub fn close(&self, why: CloseReason) {
        self.closed[why as usize].inc();
    }

    /// Counts a delivered message.
    pub fn relay(&self, kind: MessageType) {
        self.relayed[kind.index()].inc();
    }

    /// Counts a message relayed as it arrived from a socket that read it at `read_at`, and
    /// times one in [`LATENCY_SAMPLE`]. `relayed` is the caller's own count, for sampling.
    pub fn relay_sampled(
        &self,
        kind: MessageType,
        read_at: tokio::time::Instant,
        relayed: &mut u32,
    ) {
        self.relay(kind);
        if relayed.is_multiple_of(LATENCY_SAMPLE) {
            let latency = read_at.into_std().elapsed();
            self.relay_latency.observe(latency.as_secs_f64());
        }
        *relayed = relayed.wrapping_add(1);
    }

    /// Counts `n` undelivered messages.
    pub fn drop_messages(&self, why: DropReason, n: u64) {
        self.dropped[why as usize].inc_by(n);
    }

    /// Current value of a drop counter (tests and the JSON summary).
    pub fn dropped(&self, why: DropReason) -> u64 {
        self.dropped[why as usize].get()
    }

    /// Counts a `GET {path}{key}/ice` request.
    pub fn ice_request(&self, outcome: IceOutcome) {
        self.ice[outcome as usize].inc();
    }

    /// Current value of an `/ice` outcome counter.
    pub fn ice_requests(&self, outcome: IceOutcome) -> u64 {
        self.ice[outcome as usize].get()
    }

    /// Current value of a rejection counter.
    pub fn rejected(&self, why: Rejection) -> u64 {
        self.rejected[why as usize].get()
    }

    /// Current value of a close counter.
    pub fn closed(&self, why: CloseReason) -> u64 {
        self.closed[why as usize].get()
    }

    /// Messages delivered, all types.
    pub fn relayed_total(&self) -> u64 {
        self.relayed.iter().map(Counter::get).sum()
    }

    fn errors_total(&self) -> u64 {
        self.dropped.iter().map(Counter::get).sum::<u64>()
            + self.rejected.iter().map(Counter::get).sum::<u64>()
    }

    /// The JSON figures. Rates are over the time since the previous sample, resampled at most
    /// once a second, so scrapes never cost more than a few atomic loads.
    pub fn summary(&self) -> Summary {
        let now = Instant::now();
        let messages = self.relayed_total();
        let errors = self.errors_total();
        let mut sample = match self.rate_sample.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let elapsed = now.duration_since(sample.at);
        if elapsed >= Duration::from_secs(1) {
            let secs = elapsed.as_secs_f64();
            let new_messages = messages.saturating_sub(sample.messages);
            let new_errors = errors.saturating_sub(sample.errors);
            *sample = RateSample {
                at: now,
                messages,
                errors,
                messages_per_second: new_messages as f64 / secs,
                error_rate: if new_messages + new_errors == 0 {
                    0.0
                } else {
                    new_errors as f64 / (new_messages + new_errors) as f64
                },
            };
        }
        Summary {
            active_rooms: self.rooms.get(),
            active_peers: self.peers.get(),
            messages_per_second: sample.messages_per_second,
            error_rate: sample.error_rate,
        }
    }

    /// The Prometheus/OpenMetrics text exposition.
    pub fn encode_text(&self) -> String {
        use prometheus_client::encoding::text::{encode_eof, encode_registry};
        let mut out = String::with_capacity(8 * 1024);
        // Writing into a String cannot fail. Process metrics keep their standard
        // unprefixed `process_*` names, so they come from a second registry.
        let _ = encode_registry(&mut out, &self.registry);
        let _ = encode_registry(&mut out, &self.process);
        let _ = encode_eof(&mut out);
        out
    }
}

/// `peerjs_log_lines_dropped_total`: log lines lost because stdout could not keep up (see
/// [`crate::logging`]), read at scrape time.
#[derive(Debug)]
struct LogLinesDropped;

impl prometheus_client::collector::Collector for LogLinesDropped {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> std::fmt::Result {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        let dropped = ConstCounter::new(crate::logging::dropped_total());
        dropped.encode(encoder.encode_descriptor(
            "log_lines_dropped",
            "Log lines dropped because stdout could not keep up",
            None,
            dropped.metric_type(),
        )?)
    }
}

/// How old the `process_*` figures may be when a scrape is answered.
pub const PROCESS_REFRESH: Duration = Duration::from_secs(1);

/// The standard `process_*` figures, read from `/proc/self` (Linux only; elsewhere nothing is
/// reported).
///
/// Reading them walks `/proc/self/fd`, which costs in proportion to the open sockets
/// (milliseconds with tens of thousands of them): done on every scrape on a runtime worker, a few clients pipelining scrapes could
/// take the cores from the relays. So the figures are cached: a scrape that finds them older
/// than [`PROCESS_REFRESH`] starts one read on the blocking pool (or waits for the one under
/// way) and the collector only copies the cache.
#[derive(Debug, Default)]
struct ProcessCache {
    state: Mutex<CacheState>,
    /// Wakes the scrapes waiting for a read under way.
    read_done: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct CacheState {
    /// The last figures read (`None` before the first read, or where `/proc` is missing).
    figures: Option<ProcessFigures>,
    /// When they were read (tokio's clock, so that tests can move it).
    read_at: Option<tokio::time::Instant>,
    /// A read is under way on the blocking pool.
    reading: bool,
    /// Reads so far.
    reads: u64,
}

impl CacheState {
    fn fresh(&self) -> bool {
        self.read_at
            .is_some_and(|at| at.elapsed() < PROCESS_REFRESH)
    }
}

impl ProcessCache {
    fn lock(&self) -> MutexGuard<'_, CacheState> {
        match self.state.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    async fn refresh(cache: &Arc<Self>) {
        loop {
            // Registered before looking, so a read that ends in between is not missed.
            let done = cache.read_done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            {
                let mut state = cache.lock();
                if state.fresh() {
                    return;
                }
                if !state.reading {
                    state.reading = true;
                    let cache = Arc::clone(cache);
                    // The read owns its result: a scrape that goes away does not start another.
                    tokio::task::spawn_blocking(move || {
                        let figures = ProcessFigures::read();
                        let mut state = cache.lock();
                        state.figures = figures;
                        state.read_at = Some(tokio::time::Instant::now());
                        state.reading = false;
                        state.reads += 1;
                        drop(state);
                        cache.read_done.notify_waiters();
                    });
                }
            }
            done.await;
        }
    }
}

/// The `process_*` metrics from [`ProcessCache`].
#[derive(Debug)]
struct ProcessCollector(Arc<ProcessCache>);

/// Clock ticks per second of `/proc/<pid>/stat` times: USER_HZ, 100 on every Linux ABI.
const USER_HZ: f64 = 100.0;

impl ProcessFigures {
    fn read() -> Option<ProcessFigures> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the parenthesised command name, which may itself contain spaces.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
        let cpu_seconds = (ticks(11)? + ticks(12)?) / USER_HZ;
        let start_ticks = ticks(19)?;
        let virtual_bytes = ticks(20)?;
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let resident_bytes = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map(|kib| kib * 1024.0)?;
        let boot_time = std::fs::read_to_string("/proc/stat")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse::<f64>().ok())?;
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as f64;
        let max_fds = std::fs::read_to_string("/proc/self/limits")
            .ok()?
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .and_then(|l| l.split_whitespace().nth(3))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::INFINITY);
        Some(ProcessFigures {
            cpu_seconds,
            resident_bytes,
            virtual_bytes,
            open_fds,
            max_fds,
            start_time: boot_time + start_ticks / USER_HZ,
        })
    }
}

#[derive(Debug, Clone, Copy)]
struct ProcessFigures {
    cpu_seconds: f64,
    resident_bytes: f64,
    virtual_bytes: f64,
    open_fds: f64,
    max_fds: f64,
    start_time: f64,
}

impl prometheus_client::collector::Collector for ProcessCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> std::fmt::Result {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        let Some(p) = self.0.lock().figures else {
            return Ok(());
        };
        let cpu = ConstCounter::new(p.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu",
            "Total user and system CPU time spent in seconds.",
            Some(&Unit::Seconds),
            cpu.metric_type(),
        )?)?;
        for (name, help, unit, value) in [
            (
                "process_resident_memory",
                "Resident memory size in bytes.",
                Some(Unit::Bytes),
                p.resident_bytes,
            ),
            (
                "process_virtual_memory",
                "Virtual memory size in bytes.",
                Some(Unit::Bytes),
                p.virtual_bytes,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors.",
                None,
                p.open_fds,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors.",
                None,
                p.max_fds,
            ),
            (
                "process_start_time",
                "Start time of the process since unix epoch in seconds.",
                Some(Unit::Seconds),
                p.start_time,
            ),
        ] {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(
                name,
                help,
                unit.as_ref(),
                gauge.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

/// Registers a counter family and resolves each label value to its own handle, in order.
fn family<'a>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    label: &'static str,
    values: impl Iterator<Item = &'static str> + 'a,
) -> Vec<Counter> {
    let family = Family::<Labels, Counter>::default();
    registry.register(name, help, family.clone());
    values
        .map(|v| family.get_or_create_owned(&[(label, v)]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn process_figures_are_read_at_most_once_a_second_however_many_scrape() {
        let m = Metrics::new();
        assert!(
            !m.encode_text().contains("process_open_fds"),
            "nothing read yet"
        );
        futures_util::future::join_all((0..50).map(|_| m.refresh_process())).await;
        assert_eq!(m.process_reads(), 1, "one read for 50 concurrent scrapes");
        assert!(m.encode_text().contains("\nprocess_open_fds "));
        m.refresh_process().await;
        tokio::time::advance(PROCESS_REFRESH - Duration::from_millis(1)).await;
        m.refresh_process().await;
        assert_eq!(m.process_reads(), 1, "still fresh");
        tokio::time::advance(Duration::from_millis(1)).await;
        futures_util::future::join_all((0..50).map(|_| m.refresh_process())).await;
        assert_eq!(m.process_reads(), 2, "stale: read again, once");
    }

    #[tokio::test(start_paused = true)]
    async fn a_scrape_that_goes_away_does_not_start_a_second_read() {
        let m = Metrics::new();
        // Started and dropped before its read finished.
        let abandoned = tokio::time::timeout(Duration::ZERO, m.refresh_process()).await;
        assert!(abandoned.is_err());
        m.refresh_process().await;
        assert_eq!(m.process_reads(), 1);
    }

    #[test]
    fn exposition_has_every_series_with_zero() {
        let m = Metrics::new();
        m.drop_messages(DropReason::RateLimited, 3);
        m.reject(Rejection::RoomFull);
        m.relay(MessageType::Offer);
        let text = m.encode_text();
        assert!(
            text.contains("peerjs_messages_dropped_total{reason=\"rate_limited\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("peerjs_messages_dropped_total{reason=\"slow_reader\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("peerjs_connections_rejected_total{reason=\"room_full\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("peerjs_messages_relayed_total{type=\"OFFER\"} 1"),
            "{text}"
        );
        assert!(text.contains("peerjs_peers 0"), "{text}");
        assert!(
            text.contains(
                "# TYPE peerjs_log_lines_dropped counter\npeerjs_log_lines_dropped_total "
            ),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
