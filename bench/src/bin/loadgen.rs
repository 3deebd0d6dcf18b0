//! loadgen: drives one scenario against one PeerJS server and prints one JSON report line
//! (`peerjsd_bench::report::LoadReport`) on stdout.
//!
//! It speaks what the peerjs 1.5.x browser client sends: it connects to
//! `ws://127.0.0.1:P/peerjs?key=peerjs&id=<id>&token=<random>&version=1.5.5`, waits for
//! `{"type":"OPEN"}`, sends `{"type":"HEARTBEAT"}` every 5 s per peer, and OFFER / ANSWER /
//! CANDIDATE messages shaped like the client's (see `peerjsd_bench::msg`), each tagged with a
//! sequence number and its send time so the receiver checks order, loss and one-way latency.
//! With `--auth-secret` every connection's token is a join token signed for its id instead.
//!
//! One thread (`current_thread` runtime + `LocalSet`): the driver pins the load generator to
//! one core, and shared counters are plain `Cell`/`RefCell`. Server CPU and memory are read
//! from `/proc/<server-pid>` at the edges of the measurement window.
//!
//! Scenarios:
//! - `relay`: `--pairs` pairs, `--window` messages in flight per pair; every message received
//!   is answered with one to its sender, so the window stays full (saturation).
//! - `rate`: `--pairs` pairs, the first of each sends `--per-pair-rate` messages/s to the
//!   second, start times spread evenly (open loop); one-way latency.
//! - `idle`: `--peers` peers connect (`--concurrency` at a time) and then only heartbeat.
//! - `churn`: `--concurrency` workers loop connect → OPEN → one OFFER to one of `--hubs`
//!   connected peers → close.
//! - `rooms`: `--concurrency` rooms at a time; each room: 4 peers join, every pair exchanges
//!   OFFER, ANSWER and `--candidates` CANDIDATEs each way, then all leave.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use futures_util::future::join_all;
use futures_util::{FutureExt, SinkExt, StreamExt};
use hdrhistogram::Histogram;
use peerjsd_bench::jwt::Signer;
use peerjsd_bench::msg::{self, Frame, Kind, Relayed};
use peerjsd_bench::procfs::{self, CpuClock};
use peerjsd_bench::report::LoadReport;
use peerjsd_bench::rng::Rng;
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{Interval, MissedTickBehavior, interval_at, sleep, timeout};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{WebSocketStream, client_async_with_config};

type Ws = WebSocketStream<TcpStream>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Relay,
    Rate,
    Idle,
    Churn,
    Rooms,
}

#[derive(Parser, Debug)]
#[command(about = "PeerJS load generator (one scenario, one JSON report line)")]
struct Args {
    #[arg(long, value_enum)]
    scenario: Scenario,
    /// Server port on 127.0.0.1.
    #[arg(long)]
    port: u16,
    /// Server process id, for its CPU time and VmRSS.
    #[arg(long)]
    server_pid: u32,
    /// A second node's port (cluster scenario): the second peer of every pair (`b…`)
    /// connects there, so every message crosses nodes.
    #[arg(long)]
    port2: Option<u16>,
    /// More processes whose CPU counts as the server's (the other node, nats-server);
    /// repeatable.
    #[arg(long)]
    also_pid: Vec<u32>,
    /// Seconds of load before the measurement window opens.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Length of the measurement window (idle: how long the peers are held), seconds.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// relay, rate: number of peer pairs.
    #[arg(long, default_value_t = 1)]
    pairs: usize,
    /// relay: messages in flight per pair.
    #[arg(long, default_value_t = 32)]
    window: usize,
    /// rate: messages per second per pair.
    #[arg(long, default_value_t = 5.0)]
    per_pair_rate: f64,
    /// idle: number of peers to connect and hold.
    #[arg(long, default_value_t = 10_000)]
    peers: usize,
    /// Connections opened at once (idle, relay, rate), churn workers, or rooms in progress.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// churn: connected peers that receive the churning peers' OFFERs.
    #[arg(long, default_value_t = 8)]
    hubs: usize,
    /// rooms: CANDIDATEs each way per pair.
    #[arg(long, default_value_t = 10)]
    candidates: usize,
    /// rooms: the server runs `--rooms token`, so use ids unique per room (p0..p3) and the
    /// room name as token; otherwise ids are unique server-wide.
    #[arg(long)]
    rooms_token: bool,
    /// Heartbeat interval per peer, ms (the client's default pingInterval).
    #[arg(long, default_value_t = 5000)]
    heartbeat_ms: u64,
    /// The server runs `--auth-secret` with this secret: every connection presents a join
    /// token signed with it for its id (and, with --rooms-token, its room).
    #[arg(long)]
    auth_secret: Option<String>,
    /// relay: flush replies after this many handled frames, so that the server starts on
    /// them while the load generator is still reading (0: once per batch read).
    #[arg(long, default_value_t = 0)]
    flush_every: usize,
    /// WebSocket read buffer per client connection, bytes (default: 64 KiB for relay, 4 KiB
    /// otherwise).
    #[arg(long)]
    read_buffer: Option<usize>,
}

/// Counters shared by every task of the run.
struct Stats {
    /// Tagged messages written to a socket and flushed (or about to be, in the same batch).
    sent: u64,
    /// Tagged messages received back from the server.
    received: u64,
    /// Units completed inside the measurement window (what depends on the scenario).
    window_units: u64,
    /// One-way latency of messages received inside the window, nanoseconds.
    hist: Histogram<u64>,
    reordered: u64,
    malformed: u64,
    peer_failures: u64,
    notes: Vec<String>,
}

struct Ctx {
    args: Args,
    addr: SocketAddr,
    ws_config: WebSocketConfig,
    /// The epoch of every send timestamp (one clock for senders and receivers).
    epoch: Instant,
    /// Round-robin over 127.0.0.2–251 as source address, so tens of thousands of
    /// connections never run out of ephemeral ports (TIME_WAIT from earlier runs included).
    next_src: Cell<u32>,
    measuring: Cell<bool>,
    stopping: Cell<bool>,
    /// Churn workers and room slots still running (the drain waits for them).
    active: Cell<usize>,
    rng: RefCell<Rng>,
    /// Signs join tokens (`--auth-secret`).
    signer: Option<Signer>,
    st: RefCell<Stats>,
}

impl Ctx {
    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn note(&self, text: String) {
        let mut st = self.st.borrow_mut();
        if st.notes.len() < 5 && !st.notes.contains(&text) {
            st.notes.push(text);
        }
    }

    fn failure(&self, what: String) {
        if self.stopping.get() {
            return;
        }
        self.st.borrow_mut().peer_failures += 1;
        self.note(what);
    }

    fn unit_done(&self) {
        if self.measuring.get() {
            self.st.borrow_mut().window_units += 1;
        }
    }

    /// Accounts one received tagged message. `expect` is the next sequence number on this
    /// (src, dst) stream; `expected_src` is checked when given.
    fn received(&self, r: &Relayed, expected_src: Option<&str>, expect: &mut u64, unit: bool) {
        let now = self.now_ns();
        let mut st = self.st.borrow_mut();
        st.received += 1;
        // A hub hears from many one-message peers: there is no stream to check.
        if let Some(src) = expected_src
            && (src != r.src || r.seq != *expect)
        {
            st.reordered += 1;
        }
        *expect = r.seq + 1;
        if self.measuring.get() {
            st.hist
                .saturating_record(now.saturating_sub(r.ts_ns).max(1));
            if unit {
                st.window_units += 1;
            }
        }
    }

    /// The token `id` connects with: a signed join token when the server checks them (for
    /// `room` in room mode), else the room name in room mode, else a PeerJS-like random one.
    fn token(&self, id: &str, room: Option<&str>) -> String {
        match (&self.signer, room) {
            (Some(signer), room) => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                signer.token(id, room, now + 3600)
            }
            (None, Some(room)) => room.to_owned(),
            (None, None) => self.rng.borrow_mut().token(),
        }
    }

    /// A heartbeat timer: first beat one interval after OPEN, as the client does, plus a
    /// random offset of up to 10 % so that peers opened together do not beat together.
    fn heartbeat(&self) -> Interval {
        let period = Duration::from_millis(self.args.heartbeat_ms.max(1));
        let jitter = self
            .rng
            .borrow_mut()
            .below(period.as_millis() as u64 / 10 + 1);
        let mut iv = interval_at(
            tokio::time::Instant::now() + period + Duration::from_millis(jitter),
            period,
        );
        iv.set_missed_tick_behavior(MissedTickBehavior::Delay);
        iv
    }
}

fn main() {
    let args = Args::parse();
    // Tens of thousands of sockets: raise the soft open-file limit to the hard one.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => fail(&args, format!("runtime: {e}")),
    };
    let local = tokio::task::LocalSet::new();
    let report = local.block_on(&rt, run(args));
    println!(
        "{}",
        serde_json::to_string(&report).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    );
    // Thousands of sockets and tasks: let the kernel clean up.
    std::process::exit(0);
}

fn fail(args: &Args, error: String) -> ! {
    let report = LoadReport {
        scenario: format!("{:?}", args.scenario).to_lowercase(),
        error: Some(error),
        ..Default::default()
    };
    println!("{}", serde_json::to_string(&report).unwrap_or_default());
    std::process::exit(1);
}

async fn run(args: Args) -> LoadReport {
    let read_buffer = args.read_buffer.unwrap_or(match args.scenario {
        Scenario::Relay => 64 * 1024,
        _ => 4 * 1024,
    });
    let scenario = args.scenario;
    let budget = Duration::from_secs_f64(args.warmup + args.duration + 180.0);
    let ctx = Rc::new(Ctx {
        addr: SocketAddr::from((Ipv4Addr::LOCALHOST, args.port)),
        ws_config: WebSocketConfig::default().read_buffer_size(read_buffer),
        epoch: Instant::now(),
        next_src: Cell::new(0),
        measuring: Cell::new(false),
        stopping: Cell::new(false),
        active: Cell::new(0),
        rng: RefCell::new(Rng::from_entropy()),
        signer: args.auth_secret.as_deref().map(Signer::new),
        st: RefCell::new(Stats {
            sent: 0,
            received: 0,
            window_units: 0,
            hist: Histogram::new_with_bounds(1, 120_000_000_000, 3)
                .expect("static histogram bounds are valid"),
            reordered: 0,
            malformed: 0,
            peer_failures: 0,
            notes: Vec::new(),
        }),
        args,
    });
    let fut = async {
        match scenario {
            Scenario::Relay => relay(ctx.clone()).await,
            Scenario::Rate => rate(ctx.clone()).await,
            Scenario::Idle => idle(ctx.clone()).await,
            Scenario::Churn => churn(ctx.clone()).await,
            Scenario::Rooms => rooms(ctx.clone()).await,
        }
    };
    let mut report = match timeout(budget, fut).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => LoadReport {
            error: Some(e),
            ..Default::default()
        },
        Err(_) => LoadReport {
            error: Some(format!("run did not finish within {budget:?}")),
            ..Default::default()
        },
    };
    report.scenario = format!("{scenario:?}").to_lowercase();
    let st = ctx.st.borrow();
    report.sent = st.sent;
    report.received = st.received;
    report.lost = st.sent.saturating_sub(st.received);
    report.reordered = st.reordered;
    report.malformed = st.malformed;
    report.peer_failures = st.peer_failures;
    report.notes.extend(st.notes.iter().cloned());
    if !st.hist.is_empty() {
        let us = |q: f64| st.hist.value_at_quantile(q) as f64 / 1000.0;
        report.lat_p50_us = Some(us(0.50));
        report.lat_p90_us = Some(us(0.90));
        report.lat_p99_us = Some(us(0.99));
        report.lat_max_us = Some(st.hist.max() as f64 / 1000.0);
    }
    report
}

// ---------------------------------------------------------------------------------------------
// Connections

async fn connect(ctx: &Ctx, id: &str, token: &str) -> Result<Ws, String> {
    let n = ctx.next_src.get();
    ctx.next_src.set(n.wrapping_add(1));
    let src = Ipv4Addr::new(127, 0, 0, 2 + (n % 250) as u8);
    let sock = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    sock.bind(SocketAddr::from((src, 0)))
        .map_err(|e| format!("bind {src}: {e}"))?;
    let addr = match ctx.args.port2 {
        Some(port2) if id.starts_with('b') => SocketAddr::from((Ipv4Addr::LOCALHOST, port2)),
        _ => ctx.addr,
    };
    let tcp = timeout(Duration::from_secs(10), sock.connect(addr))
        .await
        .map_err(|_| "TCP connect timed out".to_string())?
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let url = format!(
        "ws://127.0.0.1:{}/peerjs?key=peerjs&id={id}&token={token}&version=1.5.5",
        addr.port()
    );
    let (mut ws, _) = timeout(
        Duration::from_secs(10),
        client_async_with_config(url, tcp, Some(ctx.ws_config)),
    )
    .await
    .map_err(|_| "WebSocket handshake timed out".to_string())?
    .map_err(|e| format!("WebSocket handshake: {e}"))?;
    loop {
        match timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                return match msg::scan(&t) {
                    Frame::Other("OPEN") => Ok(ws),
                    _ => Err(format!("expected OPEN, got {t}")),
                };
            }
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(e))) => return Err(format!("before OPEN: {e}")),
            Ok(None) => return Err("closed before OPEN".into()),
            Err(_) => return Err("no OPEN within 10 s".into()),
        }
    }
}

/// Connects every id (with a fresh token each), `--concurrency` at a time, in order.
async fn connect_all(ctx: &Rc<Ctx>, ids: &[String]) -> Result<Vec<Ws>, String> {
    let results: Vec<Result<Ws, String>> = futures_util::stream::iter(ids.iter())
        .map(|id| {
            let ctx = ctx.clone();
            async move {
                let token = ctx.token(id, None);
                connect(&ctx, id, &token)
                    .await
                    .map_err(|e| format!("{id}: {e}"))
            }
        })
        .buffered(ctx.args.concurrency.max(1))
        .collect()
        .await;
    results.into_iter().collect()
}

/// Closes like a browser tab: a close frame, then read until the server's close and EOF.
async fn close(ws: &mut Ws) {
    let _ = ws.close(None).await;
    let _ = timeout(Duration::from_secs(5), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Measurement

struct Window {
    wall_s: f64,
    server_cpu_s: f64,
    loadgen_cpu_s: f64,
    other_cpu_s: f64,
    steal_s: f64,
}

/// Warm-up, then the measurement window: `measuring` is true exactly between the two CPU
/// readings.
async fn measure(ctx: &Ctx) -> Window {
    let clock = CpuClock::new();
    // The server, plus (cluster scenario) the other node and nats-server.
    let servers = || {
        let pids = std::iter::once(ctx.args.server_pid).chain(ctx.args.also_pid.iter().copied());
        pids.map(|pid| clock.seconds(pid)).sum::<f64>()
    };
    sleep(Duration::from_secs_f64(ctx.args.warmup)).await;
    let (m0, st0) = clock.machine();
    let (s0, l0, t0) = (servers(), clock.seconds("self"), Instant::now());
    ctx.measuring.set(true);
    sleep(Duration::from_secs_f64(ctx.args.duration)).await;
    ctx.measuring.set(false);
    let (s1, l1, t1) = (servers(), clock.seconds("self"), Instant::now());
    let (m1, st1) = clock.machine();
    let (server_cpu_s, loadgen_cpu_s) = (s1 - s0, l1 - l0);
    Window {
        wall_s: (t1 - t0).as_secs_f64(),
        server_cpu_s,
        loadgen_cpu_s,
        other_cpu_s: (m1 - m0 - server_cpu_s - loadgen_cpu_s).max(0.0),
        steal_s: st1 - st0,
    }
}

/// Stops new work and waits (up to 5 s) for workers to finish and every sent message to
/// arrive.
async fn stop_and_drain(ctx: &Ctx) {
    ctx.stopping.set(true);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let done = {
            let st = ctx.st.borrow();
            ctx.active.get() == 0 && st.received >= st.sent
        };
        if done {
            return;
        }
        if Instant::now() >= deadline {
            ctx.note("drain timed out after 5 s".into());
            return;
        }
        sleep(Duration::from_millis(5)).await;
    }
}

fn report(ctx: &Ctx, w: &Window, unit: &str) -> LoadReport {
    LoadReport {
        wall_s: w.wall_s,
        server_cpu_s: w.server_cpu_s,
        loadgen_cpu_s: w.loadgen_cpu_s,
        other_cpu_s: w.other_cpu_s,
        steal_s: w.steal_s,
        unit: unit.into(),
        units: ctx.st.borrow().window_units,
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------------------------
// A peer with one partner (relay, rate, idle) or many senders (churn hubs)

struct Peer {
    ctx: Rc<Ctx>,
    ws: Ws,
    id: String,
    /// The peer we exchange with; `None` for a hub that hears from many.
    partner: Option<String>,
    /// Next sequence number expected from the partner, and the next one we send.
    expect: u64,
    seq_out: u64,
    /// relay: answer every received message, keeping the window full.
    echo: bool,
    /// Sends OFFERs (else ANSWERs) among its CANDIDATEs.
    initiator: bool,
    /// Count received messages as units (relay, rate), or heartbeats (idle).
    count_received: bool,
    count_heartbeats: bool,
}

impl Peer {
    fn new(ctx: &Rc<Ctx>, ws: Ws, id: String, partner: Option<String>) -> Self {
        Self {
            ctx: ctx.clone(),
            ws,
            id,
            partner,
            expect: 0,
            seq_out: 0,
            echo: false,
            initiator: false,
            count_received: false,
            count_heartbeats: false,
        }
    }

    /// Feeds (does not flush) the next tagged message to the partner: one OFFER (or ANSWER)
    /// then three CANDIDATEs, over and over.
    async fn feed_next(&mut self) -> bool {
        let kind = match (self.seq_out % 4, self.initiator) {
            (0, true) => Kind::Offer,
            (0, false) => Kind::Answer,
            _ => Kind::Candidate,
        };
        let dst = self.partner.as_deref().unwrap_or_default();
        let text = msg::build_string(kind, dst, self.seq_out, self.ctx.now_ns());
        self.seq_out += 1;
        self.ctx.st.borrow_mut().sent += 1;
        self.ws.feed(Message::text(text)).await.is_ok()
    }

    /// Handles one frame; false when the connection is over.
    async fn on_frame(&mut self, frame: Option<Result<Message, impl std::fmt::Display>>) -> bool {
        match frame {
            Some(Ok(Message::Text(t))) => match msg::scan(&t) {
                Frame::Relayed(r) => {
                    self.ctx.received(
                        &r,
                        self.partner.as_deref(),
                        &mut self.expect,
                        self.count_received,
                    );
                    if self.echo && !self.ctx.stopping.get() {
                        return self.feed_next().await;
                    }
                    true
                }
                Frame::Other("ERROR" | "ID-TAKEN") | Frame::Malformed => {
                    self.ctx.st.borrow_mut().malformed += 1;
                    self.ctx.note(format!("{}: unexpected frame {t}", self.id));
                    true
                }
                Frame::Other(_) => true,
            },
            Some(Ok(_)) => true,
            Some(Err(e)) => {
                self.ctx.failure(format!("{}: {e}", self.id));
                false
            }
            None => {
                self.ctx
                    .failure(format!("{}: closed by the server", self.id));
                false
            }
        }
    }

    /// Reads, echoes, heartbeats and (with `ticker`) sends on schedule until the connection
    /// ends. Frames that are already buffered are handled in one go and the replies flushed
    /// once.
    async fn run(mut self, mut ticker: Option<Interval>) {
        let mut hb = self.ctx.heartbeat();
        loop {
            let frame = tokio::select! {
                frame = self.ws.next() => frame,
                _ = hb.tick() => {
                    if self.count_heartbeats {
                        self.ctx.unit_done();
                    }
                    let ok = self.ws.send(Message::text(msg::HEARTBEAT)).await.is_ok();
                    if !ok {
                        self.ctx.failure(format!("{}: heartbeat failed", self.id));
                        return;
                    }
                    continue;
                }
                _ = tick(&mut ticker) => {
                    if self.ctx.stopping.get() {
                        continue;
                    }
                    let sent = self.feed_next().await && self.ws.flush().await.is_ok();
                    if !sent {
                        self.ctx.failure(format!("{}: send failed", self.id));
                        return;
                    }
                    continue;
                }
            };
            if !self.on_frame(frame).await {
                return;
            }
            let flush_every = self.ctx.args.flush_every;
            let mut handled = 1;
            while let Some(frame) = self.ws.next().now_or_never() {
                if !self.on_frame(frame).await {
                    return;
                }
                handled += 1;
                if flush_every > 0 && handled % flush_every == 0 && self.ws.flush().await.is_err() {
                    self.ctx.failure(format!("{}: flush failed", self.id));
                    return;
                }
            }
            if self.ws.flush().await.is_err() {
                self.ctx.failure(format!("{}: flush failed", self.id));
                return;
            }
        }
    }
}

/// Waits for the next tick, or forever without a ticker.
async fn tick(ticker: &mut Option<Interval>) {
    match ticker {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

fn spawn(fut: impl Future<Output = ()> + 'static) {
    tokio::task::spawn_local(fut);
}

// ---------------------------------------------------------------------------------------------
// Scenarios

/// Saturation: `--window` messages circulate per pair.
async fn relay(ctx: Rc<Ctx>) -> Result<LoadReport, String> {
    let pairs = ctx.args.pairs;
    let ids: Vec<String> = (0..pairs)
        .flat_map(|i| [format!("a{i}"), format!("b{i}")])
        .collect();
    let mut wss = connect_all(&ctx, &ids).await?.into_iter();
    for i in 0..pairs {
        let (Some(a), Some(b)) = (wss.next(), wss.next()) else {
            break;
        };
        let mut pa = Peer::new(&ctx, a, ids[2 * i].clone(), Some(ids[2 * i + 1].clone()));
        let mut pb = Peer::new(&ctx, b, ids[2 * i + 1].clone(), Some(ids[2 * i].clone()));
        for p in [&mut pa, &mut pb] {
            p.echo = true;
            p.count_received = true;
        }
        pa.initiator = true;
        for _ in 0..ctx.args.window {
            if !pa.feed_next().await {
                return Err("could not send the initial window".into());
            }
        }
        if pa.ws.flush().await.is_err() {
            return Err("could not send the initial window".into());
        }
        spawn(pa.run(None));
        spawn(pb.run(None));
    }
    let w = measure(&ctx).await;
    stop_and_drain(&ctx).await;
    Ok(report(&ctx, &w, "msg"))
}

/// Fixed rate: each pair's first peer sends `--per-pair-rate` messages/s to the second.
async fn rate(ctx: Rc<Ctx>) -> Result<LoadReport, String> {
    let pairs = ctx.args.pairs;
    let ids: Vec<String> = (0..pairs)
        .flat_map(|i| [format!("a{i}"), format!("b{i}")])
        .collect();
    let mut wss = connect_all(&ctx, &ids).await?.into_iter();
    let period = Duration::from_secs_f64(1.0 / ctx.args.per_pair_rate.max(0.001));
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    for i in 0..pairs {
        let (Some(a), Some(b)) = (wss.next(), wss.next()) else {
            break;
        };
        let mut pa = Peer::new(&ctx, a, ids[2 * i].clone(), Some(ids[2 * i + 1].clone()));
        let mut pb = Peer::new(&ctx, b, ids[2 * i + 1].clone(), Some(ids[2 * i].clone()));
        pa.initiator = true;
        pb.count_received = true;
        let offset = period.mul_f64(i as f64 / pairs as f64);
        let mut ticker = interval_at(start + offset, period);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
        spawn(pa.run(Some(ticker)));
        spawn(pb.run(None));
    }
    let w = measure(&ctx).await;
    stop_and_drain(&ctx).await;
    Ok(report(&ctx, &w, "msg"))
}

/// Idle peers: connect `--peers` (ramp), then hold them for `--duration` while they
/// heartbeat.
async fn idle(ctx: Rc<Ctx>) -> Result<LoadReport, String> {
    let clock = CpuClock::new();
    let pid = ctx.args.server_pid;
    let rss_before = procfs::rss_kib(pid).map_err(|e| format!("server VmRSS: {e}"))?;
    let n = ctx.args.peers;
    let (s0, t0) = (clock.seconds(pid), Instant::now());
    let connected = Rc::new(Cell::new(0u64));
    futures_util::stream::iter(0..n)
        .for_each_concurrent(ctx.args.concurrency.max(1), |i| {
            let ctx = ctx.clone();
            let connected = connected.clone();
            async move {
                let id = format!("i{i}");
                let token = ctx.token(&id, None);
                match connect(&ctx, &id, &token).await {
                    Ok(ws) => {
                        connected.set(connected.get() + 1);
                        let mut p = Peer::new(&ctx, ws, id, None);
                        p.count_heartbeats = true;
                        spawn(p.run(None));
                    }
                    Err(e) => ctx.failure(format!("{id}: {e}")),
                }
            }
        })
        .await;
    let (s1, t1) = (clock.seconds(pid), Instant::now());
    let peers = connected.get();
    // Let the last handshakes' garbage settle, then hold and measure.
    let w = measure(&ctx).await;
    let rss_after = procfs::rss_kib(pid).map_err(|e| format!("server VmRSS: {e}"))?;
    let mut r = report(&ctx, &w, "heartbeat");
    r.peers = Some(peers);
    r.connect_per_s = Some(peers as f64 / (t1 - t0).as_secs_f64());
    r.ramp_server_cpu_s = Some(s1 - s0);
    r.rss_before_kib = Some(rss_before);
    r.rss_after_kib = Some(rss_after);
    ctx.stopping.set(true);
    Ok(r)
}

/// Churn: connect, OPEN, one OFFER to a connected hub, close; as fast as possible.
async fn churn(ctx: Rc<Ctx>) -> Result<LoadReport, String> {
    let hubs: Vec<String> = (0..ctx.args.hubs.max(1)).map(|i| format!("h{i}")).collect();
    for (ws, id) in connect_all(&ctx, &hubs).await?.into_iter().zip(&hubs) {
        spawn(Peer::new(&ctx, ws, id.clone(), None).run(None));
    }
    for w in 0..ctx.args.concurrency.max(1) {
        let ctx = ctx.clone();
        let hubs = hubs.clone();
        ctx.active.set(ctx.active.get() + 1);
        spawn(async move {
            let mut n = 0usize;
            while !ctx.stopping.get() {
                let id = format!("c{w}n{n}");
                let token = ctx.token(&id, None);
                let hub = &hubs[(w + n) % hubs.len()];
                n += 1;
                let mut ws = match connect(&ctx, &id, &token).await {
                    Ok(ws) => ws,
                    Err(e) => {
                        ctx.failure(format!("{id}: {e}"));
                        sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let offer = msg::build_string(Kind::Offer, hub, 0, ctx.now_ns());
                ctx.st.borrow_mut().sent += 1;
                if ws.send(Message::text(offer)).await.is_err() {
                    ctx.failure(format!("{id}: OFFER not sent"));
                    continue;
                }
                close(&mut ws).await;
                ctx.unit_done();
            }
            ctx.active.set(ctx.active.get() - 1);
        });
    }
    let w = measure(&ctx).await;
    stop_and_drain(&ctx).await;
    Ok(report(&ctx, &w, "conn"))
}

/// Rooms of 4: join, full-mesh OFFER/ANSWER/CANDIDATEs, leave; `--concurrency` rooms at once.
async fn rooms(ctx: Rc<Ctx>) -> Result<LoadReport, String> {
    for slot in 0..ctx.args.concurrency.max(1) {
        let ctx = ctx.clone();
        ctx.active.set(ctx.active.get() + 1);
        spawn(async move {
            let mut n = 0usize;
            while !ctx.stopping.get() {
                let name = format!("r{slot}x{n}");
                n += 1;
                match timeout(Duration::from_secs(20), room(&ctx, &name)).await {
                    Ok(Ok(())) => ctx.unit_done(),
                    Ok(Err(e)) => {
                        ctx.failure(format!("{name}: {e}"));
                        sleep(Duration::from_millis(20)).await;
                    }
                    Err(_) => ctx.failure(format!("{name}: room did not complete in 20 s")),
                }
            }
            ctx.active.set(ctx.active.get() - 1);
        });
    }
    let w = measure(&ctx).await;
    stop_and_drain(&ctx).await;
    Ok(report(&ctx, &w, "room"))
}

async fn room(ctx: &Rc<Ctx>, name: &str) -> Result<(), String> {
    let ids: Vec<String> = if ctx.args.rooms_token {
        (0..4).map(|i| format!("p{i}")).collect()
    } else {
        (0..4).map(|i| format!("{name}p{i}")).collect()
    };
    let room = ctx.args.rooms_token.then_some(name);
    let tokens: Vec<String> = ids.iter().map(|id| ctx.token(id, room)).collect();
    let joined = join_all(ids.iter().zip(&tokens).map(|(id, t)| connect(ctx, id, t))).await;
    let mut wss = Vec::with_capacity(4);
    for j in joined {
        wss.push(j?);
    }
    let results = join_all(
        wss.into_iter()
            .enumerate()
            .map(|(me, ws)| room_peer(ctx, ws, me, &ids)),
    )
    .await;
    results.into_iter().collect()
}

/// One room member: OFFER (+ CANDIDATEs) to every higher-numbered member, ANSWER
/// (+ CANDIDATEs) to every OFFER; leaves once it has heard everything from all three.
async fn room_peer(ctx: &Ctx, mut ws: Ws, me: usize, ids: &[String]) -> Result<(), String> {
    let cands = ctx.args.candidates;
    let mut seq_out = [0u64; 4];
    let mut expect = [0u64; 4];
    async fn send_burst(
        ctx: &Ctx,
        ws: &mut Ws,
        first: Kind,
        dst: &str,
        seq: &mut u64,
        cands: usize,
    ) -> Result<(), String> {
        for k in 0..=cands {
            let kind = if k == 0 { first } else { Kind::Candidate };
            let text = msg::build_string(kind, dst, *seq, ctx.now_ns());
            *seq += 1;
            ctx.st.borrow_mut().sent += 1;
            ws.feed(Message::text(text))
                .await
                .map_err(|e| format!("send: {e}"))?;
        }
        Ok(())
    }
    for j in me + 1..ids.len() {
        send_burst(ctx, &mut ws, Kind::Offer, &ids[j], &mut seq_out[j], cands).await?;
    }
    ws.flush().await.map_err(|e| format!("flush: {e}"))?;
    let want = (ids.len() as u64 - 1) * (cands as u64 + 1);
    let mut got = 0u64;
    while got < want {
        let frame = timeout(Duration::from_secs(10), ws.next())
            .await
            .map_err(|_| format!("{}: heard {got} of {want} messages in 10 s", ids[me]))?;
        let t = match frame {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(format!("{}: {e}", ids[me])),
            None => return Err(format!("{}: closed by the server", ids[me])),
        };
        match msg::scan(&t) {
            Frame::Relayed(r) => {
                let Some(j) = ids.iter().position(|id| id == r.src) else {
                    ctx.st.borrow_mut().reordered += 1;
                    continue;
                };
                ctx.received(&r, Some(&ids[j]), &mut expect[j], false);
                got += 1;
                if r.kind == Kind::Offer {
                    send_burst(ctx, &mut ws, Kind::Answer, &ids[j], &mut seq_out[j], cands).await?;
                    ws.flush().await.map_err(|e| format!("flush: {e}"))?;
                }
            }
            // LEAVE from peerjsd's rooms when a finished member leaves; fine.
            Frame::Other("LEAVE") => {}
            Frame::Other(_) | Frame::Malformed => {
                ctx.st.borrow_mut().malformed += 1;
                ctx.note(format!("{}: unexpected frame {t}", ids[me]));
            }
        }
    }
    close(&mut ws).await;
    Ok(())
}
