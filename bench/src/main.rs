//! peerjsd-bench: the benchmark driver. Runs each scenario against each server, interleaved
//! (A B C A B C …), each run on a freshly started server pinned to CPU 0 with the load
//! generator pinned to CPU 1, and prints a Markdown table of medians and ratios.
//!
//! `bench/run.sh` builds everything and calls this from the repository root; see
//! `bench/README.md`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, ValueEnum};
use peerjsd_bench::jwt::BENCH_SECRET;
use peerjsd_bench::report::LoadReport;

#[derive(Parser, Debug)]
#[command(about = "Benchmark peerjsd against peerjs-server 1.0.2 and a minimal relay")]
struct Cli {
    /// Runs of each (scenario, server), interleaved across servers.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Smoke run: one short run of each, smaller loads (under a minute for all).
    #[arg(long)]
    quick: bool,
    /// Scenarios to run, comma-separated [default: all but hold19k].
    #[arg(long, value_enum, value_delimiter = ',')]
    scenarios: Vec<ScenarioId>,
    /// Servers to run, comma-separated [default: every one that is available; hold19k:
    /// peerjsd only].
    #[arg(long, value_enum, value_delimiter = ',')]
    servers: Vec<ServerKind>,
    /// The peerjsd binary [default: `peerjsd` beside this binary].
    #[arg(long)]
    peerjsd: Option<PathBuf>,
    /// Another peerjsd binary (the commit before a change, a variant build), run with
    /// peerjsd's arguments as the server `baseline`, for a same-run comparison.
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// The folder where `npm ci` installed peer@1.0.2.
    #[arg(long, default_value = "bench/node")]
    node_dir: PathBuf,
    /// Peers held by the hold19k scenario (the open-file limit here is 20,000 per process).
    #[arg(long, default_value_t = 19_000)]
    hold_peers: usize,
    /// Where to write runs.jsonl, results.md and server logs [default:
    /// target/bench-results/<unix time>].
    #[arg(long)]
    out: Option<PathBuf>,
    /// CPU for the server and CPU for the load generator.
    #[arg(long, default_value_t = 0)]
    server_cpu: usize,
    #[arg(long, default_value_t = 1)]
    loadgen_cpu: usize,
    /// Noise guard, in % of one core used by other processes: before each run wait (up to
    /// --quiet-wait s) until the machine is below it, and repeat a run whose measurement
    /// window was above it (up to --retries times, keeping the least noisy). 0 turns it off.
    #[arg(long, default_value_t = 25.0)]
    max_noise: f64,
    #[arg(long, default_value_t = 2)]
    retries: usize,
    #[arg(long, default_value_t = 30.0)]
    quiet_wait: f64,
    /// An extra argument for the floor relay, repeatable (e.g. `--floor-arg=--direct-write`
    /// for its direct-write experiment).
    #[arg(long, allow_hyphen_values = true)]
    floor_arg: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
enum ScenarioId {
    Relay1,
    Relay100,
    Rate5k,
    Idle10k,
    Churn,
    Rooms4,
    Hold19k,
    /// 5,000 msgs/s as rate5k, against peerjsd alone, peerjsd with `--cluster` (all pairs on
    /// one node) and two clustered nodes (pairs split across them).
    Cluster,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, ValueEnum)]
enum ServerKind {
    PeerjsServer,
    Floor,
    Baseline,
    Peerjsd,
    /// peerjsd with `--auth-secret`, the load generator presenting signed join tokens: what
    /// verifying a token costs per connection.
    PeerjsdAuth,
    /// peerjsd with `--cluster` on a nats-server, every peer on this one node: what the
    /// cluster costs same-node relays. CPU: the node plus nats-server.
    ClusterSame,
    /// Two peerjsd nodes on one nats-server, each pair's first peer on node A and the
    /// second on node B: every message crosses nodes. CPU: both nodes plus nats-server.
    ClusterCross,
}

impl ServerKind {
    fn name(self) -> &'static str {
        match self {
            ServerKind::PeerjsServer => "peerjs-server",
            ServerKind::Floor => "floor",
            ServerKind::Baseline => "baseline",
            ServerKind::Peerjsd => "peerjsd",
            ServerKind::PeerjsdAuth => "peerjsd-auth",
            ServerKind::ClusterSame => "cluster-same",
            ServerKind::ClusterCross => "cluster-cross",
        }
    }

    /// Whether this is a peerjsd binary (it takes peerjsd's flags).
    fn is_peerjsd(self) -> bool {
        matches!(
            self,
            ServerKind::Peerjsd
                | ServerKind::PeerjsdAuth
                | ServerKind::Baseline
                | ServerKind::ClusterSame
                | ServerKind::ClusterCross
        )
    }

    /// Whether it runs on a nats-server.
    fn is_cluster(self) -> bool {
        matches!(self, ServerKind::ClusterSame | ServerKind::ClusterCross)
    }
}

impl ScenarioId {
    fn name(self) -> &'static str {
        match self {
            ScenarioId::Relay1 => "relay1",
            ScenarioId::Relay100 => "relay100",
            ScenarioId::Rate5k => "rate5k",
            ScenarioId::Idle10k => "idle10k",
            ScenarioId::Churn => "churn",
            ScenarioId::Rooms4 => "rooms4",
            ScenarioId::Hold19k => "hold19k",
            ScenarioId::Cluster => "cluster",
        }
    }

    fn title(self) -> &'static str {
        match self {
            ScenarioId::Relay1 => "relay at saturation, 1 pair",
            ScenarioId::Relay100 => "relay at saturation, 100 pairs",
            ScenarioId::Rate5k => "fixed rate 5,000 msgs/s (1,000 pairs × 5/s)",
            ScenarioId::Idle10k => "10,000 idle heartbeating peers",
            ScenarioId::Churn => "churn: connect, OPEN, one OFFER, close",
            ScenarioId::Rooms4 => "rooms of 4: join, full-mesh signaling, leave",
            ScenarioId::Hold19k => "hold ~19,000 idle peers",
            ScenarioId::Cluster => {
                "cluster: 5,000 msgs/s (1,000 pairs × 5/s) on one node, with and without --cluster, and across two nodes"
            }
        }
    }

    /// Load generator arguments (after --port/--server-pid), and whether the server runs in
    /// room mode.
    fn loadgen_args(self, quick: bool, hold_peers: usize, rooms_token: bool) -> Vec<String> {
        let (warm, dur) = if quick { ("0.5", "1") } else { ("2", "5") };
        let strings = |args: &[&str]| args.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // Each scenario's own arguments, and its warm-up and measurement window.
        let (mut a, warm, dur) = match self {
            ScenarioId::Relay1 => (
                strings(&[
                    "relay",
                    "--pairs",
                    "1",
                    "--window",
                    "256",
                    "--flush-every",
                    "16",
                ]),
                warm,
                dur,
            ),
            ScenarioId::Relay100 => (
                strings(&["relay", "--pairs", "100", "--window", "16"]),
                warm,
                dur,
            ),
            ScenarioId::Rate5k | ScenarioId::Cluster => {
                let pairs = if quick { "200" } else { "1000" };
                let window = if quick { ("0.5", "1.5") } else { ("3", "10") };
                let args = strings(&["rate", "--pairs", pairs, "--per-pair-rate", "5"]);
                (args, window.0, window.1)
            }
            ScenarioId::Idle10k | ScenarioId::Hold19k => {
                let peers = match (self, quick) {
                    (ScenarioId::Hold19k, false) => hold_peers.to_string(),
                    (ScenarioId::Hold19k, true) => (hold_peers / 10).to_string(),
                    (_, false) => "10000".into(),
                    (_, true) => "1000".into(),
                };
                let window = if quick { ("0.5", "1.5") } else { ("2", "20") };
                let args = strings(&["idle", "--peers", &peers, "--concurrency", "64"]);
                (args, window.0, window.1)
            }
            ScenarioId::Churn => (
                strings(&["churn", "--concurrency", "32", "--hubs", "8"]),
                warm,
                dur,
            ),
            ScenarioId::Rooms4 => (
                strings(&["rooms", "--concurrency", "32", "--candidates", "10"]),
                warm,
                dur,
            ),
        };
        a.extend(strings(&["--warmup", warm, "--duration", dur]));
        a.insert(0, "--scenario".into());
        if rooms_token {
            a.push("--rooms-token".into());
        }
        a
    }
}

const DEFAULT_SCENARIOS: [ScenarioId; 6] = [
    ScenarioId::Relay1,
    ScenarioId::Relay100,
    ScenarioId::Rate5k,
    ScenarioId::Idle10k,
    ScenarioId::Churn,
    ScenarioId::Rooms4,
];

/// Everything needed to start the servers.
struct Setup {
    /// The copy of the peerjsd binary that is run, and where it was copied from.
    peerjsd: Option<PathBuf>,
    peerjsd_origin: PathBuf,
    /// The copy of the `--baseline` binary, if one was given.
    baseline: Option<PathBuf>,
    node_script: Option<PathBuf>,
    floor: PathBuf,
    floor_args: Vec<String>,
    loadgen: PathBuf,
    server_cpu: usize,
    loadgen_cpu: usize,
    out: PathBuf,
}

/// One finished run.
struct Run {
    report: LoadReport,
    /// The server died during the run, or never started.
    server_note: Option<String>,
}

fn main() {
    let cli = Cli::parse();
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let bin_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("target/release"));
    let peerjsd = cli
        .peerjsd
        .clone()
        .unwrap_or_else(|| bin_dir.join("peerjsd"));
    let node_script = cli.node_dir.join("node_modules/peer/dist/bin/peerjs.js");
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let out = cli
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("target/bench-results/{stamp}")));
    if let Err(e) = fs::create_dir_all(&out) {
        eprintln!("cannot create {}: {e}", out.display());
        std::process::exit(2);
    }
    let mut notes: Vec<String> = Vec::new();
    // bench/run.sh sets this when peerjsd does not build: a stale binary must not be measured.
    let build_failed = std::env::var("PEERJSD_BENCH_NO_PEERJSD").ok();
    // Run a copy: a rebuild of target/release/peerjsd during the benchmark must not change
    // the binary under test halfway.
    let peerjsd_copy = out.join("peerjsd");
    let peerjsd_usable =
        peerjsd.is_file() && build_failed.is_none() && fs::copy(&peerjsd, &peerjsd_copy).is_ok();
    let baseline = cli.baseline.as_ref().and_then(|path| {
        let copy = out.join("peerjsd-baseline");
        let copied = fs::copy(path, &copy).is_ok();
        if !copied {
            notes.push(format!(
                "baseline: cannot copy {}; not measured",
                path.display()
            ));
        }
        copied.then_some(copy)
    });
    let setup = Setup {
        peerjsd: peerjsd_usable.then_some(peerjsd_copy),
        peerjsd_origin: peerjsd.clone(),
        baseline,
        node_script: node_script.is_file().then_some(node_script.clone()),
        floor: bin_dir.join("floor"),
        floor_args: cli.floor_arg.clone(),
        loadgen: bin_dir.join("loadgen"),
        server_cpu: cli.server_cpu,
        loadgen_cpu: cli.loadgen_cpu,
        out: out.clone(),
    };
    if let Some(why) = build_failed {
        notes.push(format!("peerjsd: {why}; not measured"));
    } else if setup.peerjsd.is_none() {
        notes.push(format!(
            "peerjsd: no binary at {}; not measured",
            peerjsd.display()
        ));
    }
    if setup.node_script.is_none() {
        notes.push(format!(
            "peerjs-server: {} missing (run `npm ci` in {}); not measured",
            node_script.display(),
            cli.node_dir.display()
        ));
    }
    for bin in [&setup.floor, &setup.loadgen] {
        if !bin.is_file() {
            eprintln!(
                "missing {}: build with `cargo build --release -p peerjsd-bench`",
                bin.display()
            );
            std::process::exit(2);
        }
    }

    let scenarios: Vec<ScenarioId> = if cli.scenarios.is_empty() {
        DEFAULT_SCENARIOS.to_vec()
    } else {
        cli.scenarios.clone()
    };
    let nats = NATS_SERVERS.iter().map(Path::new).find(|p| p.is_file());
    if nats.is_none() {
        notes.push("cluster-same, cluster-cross: no nats-server (apt-get install nats-server); not measured".into());
    }
    let available = |k: ServerKind| match k {
        ServerKind::Peerjsd | ServerKind::PeerjsdAuth => setup.peerjsd.is_some(),
        ServerKind::ClusterSame | ServerKind::ClusterCross => {
            setup.peerjsd.is_some() && nats.is_some()
        }
        ServerKind::Baseline => setup.baseline.is_some(),
        ServerKind::PeerjsServer => setup.node_script.is_some(),
        ServerKind::Floor => true,
    };
    let runs = if cli.quick { 1 } else { cli.runs.max(1) };

    // The plan, in execution order: scenario by scenario, repetitions interleaved.
    let mut plan: Vec<(ScenarioId, usize, ServerKind)> = Vec::new();
    for &sc in &scenarios {
        let wanted: Vec<ServerKind> = if !cli.servers.is_empty() {
            cli.servers.clone()
        } else if sc == ScenarioId::Hold19k {
            vec![ServerKind::Baseline, ServerKind::Peerjsd]
        } else if sc == ScenarioId::Cluster {
            vec![
                ServerKind::Baseline,
                ServerKind::Peerjsd,
                ServerKind::ClusterSame,
                ServerKind::ClusterCross,
            ]
        } else if sc == ScenarioId::Churn {
            // Connections are where a join token is checked: measure peerjsd with it too.
            vec![
                ServerKind::PeerjsServer,
                ServerKind::Floor,
                ServerKind::Baseline,
                ServerKind::Peerjsd,
                ServerKind::PeerjsdAuth,
            ]
        } else {
            vec![
                ServerKind::PeerjsServer,
                ServerKind::Floor,
                ServerKind::Baseline,
                ServerKind::Peerjsd,
            ]
        };
        for rep in 0..runs {
            for &srv in &wanted {
                if available(srv) {
                    plan.push((sc, rep, srv));
                }
            }
        }
    }

    let machine = machine_info(&setup, &cli, runs);
    eprintln!("{machine}");
    eprintln!(
        "{} runs planned; results and server logs in {}",
        plan.len(),
        out.display()
    );

    let mut results: BTreeMap<(ScenarioId, ServerKind), Vec<Run>> = BTreeMap::new();
    // A server that cannot start with given flags is not retried with the same flags.
    let mut start_failures: BTreeMap<(ServerKind, bool), String> = BTreeMap::new();
    let mut jsonl = File::create(out.join("runs.jsonl")).ok();
    let total = plan.len();
    let guard = !cli.quick && cli.max_noise > 0.0;
    let mut repeated = 0usize;
    for (i, &(sc, rep, srv)) in plan.iter().enumerate() {
        let rooms = sc == ScenarioId::Rooms4 && srv.is_peerjsd();
        let run = if let Some(why) = start_failures.get(&(srv, rooms)) {
            Run {
                report: LoadReport {
                    error: Some(why.clone()),
                    ..Default::default()
                },
                server_note: Some(why.clone()),
            }
        } else {
            let mut best: Option<Run> = None;
            for attempt in 0..=if guard { cli.retries } else { 0 } {
                if guard {
                    wait_quiet(cli.max_noise / 100.0, cli.quiet_wait);
                }
                let run = run_one(&setup, &cli, sc, rep, srv, rooms);
                let noisy = noise_frac(&run.report) * 100.0 > cli.max_noise;
                if attempt > 0 {
                    repeated += 1;
                }
                if guard && noisy && run.report.error.is_none() && attempt < cli.retries {
                    eprintln!(
                        "  {} #{} {}: other processes took {:.0} % of a core, repeating",
                        sc.name(),
                        rep + 1,
                        srv.name(),
                        noise_frac(&run.report) * 100.0
                    );
                }
                let better = best
                    .as_ref()
                    .is_none_or(|b| noise_frac(&run.report) < noise_frac(&b.report));
                let done = !guard || !noisy || run.report.error.is_some();
                if better || run.report.error.is_some() {
                    best = Some(run);
                }
                if done {
                    break;
                }
                sleep(Duration::from_millis(500));
            }
            let run = best.expect("at least one attempt ran");
            if let Some(note) = &run.server_note
                && note.starts_with("did not start (")
            {
                start_failures.insert((srv, rooms), note.clone());
            }
            run
        };
        eprintln!(
            "[{}/{}] {} #{} {}: {}",
            i + 1,
            total,
            sc.name(),
            rep + 1,
            srv.name(),
            one_line(sc, &run)
        );
        if let Some(f) = jsonl.as_mut() {
            let line = serde_json::json!({
                "scenario": sc.name(), "rep": rep + 1, "server": srv.name(),
                "server_note": run.server_note, "report": run.report,
            });
            let _ = writeln!(f, "{line}");
        }
        results.entry((sc, srv)).or_default().push(run);
        // Let TIME_WAIT sockets, page cache and the other core settle between runs.
        if i + 1 < total {
            sleep(Duration::from_millis(if cli.quick { 200 } else { 1000 }));
        }
    }

    for ((srv, rooms), why) in &start_failures {
        notes.push(format!(
            "{}{}: {why}",
            srv.name(),
            if *rooms { " (--rooms token)" } else { "" }
        ));
    }
    if repeated > 0 {
        notes.push(format!(
            "{repeated} run(s) were repeated because other processes took more than {:.0} % of a core during the window; the least noisy attempt was kept",
            cli.max_noise
        ));
    }
    let table = render(&machine, &scenarios, &results, &notes, cli.quick);
    println!("{table}");
    let _ = fs::write(out.join("results.md"), &table);
    eprintln!("wrote {}", out.join("results.md").display());
}

/// A free port outside the ephemeral range (32768–60999 here), so that no client socket of
/// the load generator, live or in TIME_WAIT, can hold it; checked on every address, as Node
/// listens on `::`.
/// What other processes took during a run's window, as a fraction of one core.
fn noise_frac(r: &LoadReport) -> f64 {
    if r.wall_s > 0.0 {
        r.other_cpu_s / r.wall_s
    } else {
        0.0
    }
}

/// Waits until the whole machine is below `limit` (fraction of one core) over half a second,
/// for at most `max_s` seconds. No benchmark process runs at this point, so all of it is
/// other work.
fn wait_quiet(limit: f64, max_s: f64) {
    let clock = peerjsd_bench::procfs::CpuClock::new();
    let start = Instant::now();
    let mut said = false;
    loop {
        let (b0, _) = clock.machine();
        let t0 = Instant::now();
        sleep(Duration::from_millis(500));
        let busy = (clock.machine().0 - b0) / t0.elapsed().as_secs_f64();
        if busy < limit || start.elapsed().as_secs_f64() >= max_s {
            if said {
                eprintln!(
                    "  machine at {:.0} % of a core after {:.0} s",
                    busy * 100.0,
                    start.elapsed().as_secs_f64()
                );
            }
            return;
        }
        if !said {
            eprintln!(
                "  machine busy ({:.0} % of a core used by others): waiting up to {max_s:.0} s",
                busy * 100.0
            );
            said = true;
        }
    }
}

fn free_port(attempt: usize) -> u16 {
    let base = 20_000 + (std::process::id() as usize * 7 + attempt * 131) % 10_000;
    for i in 0..10_000 {
        let port = (20_000 + (base - 20_000 + i) % 10_000) as u16;
        if TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).is_ok()
            && TcpListener::bind((std::net::Ipv6Addr::UNSPECIFIED, port)).is_ok()
        {
            return port;
        }
    }
    19_999
}

fn server_command(setup: &Setup, srv: ServerKind, port: u16, rooms: bool) -> Command {
    let mut cmd = Command::new("taskset");
    cmd.arg("-c").arg(setup.server_cpu.to_string());
    let p = port.to_string();
    match srv {
        ServerKind::Peerjsd
        | ServerKind::PeerjsdAuth
        | ServerKind::Baseline
        | ServerKind::ClusterSame
        | ServerKind::ClusterCross => {
            let binary = if srv == ServerKind::Baseline {
                setup.baseline.as_deref()
            } else {
                setup.peerjsd.as_deref()
            };
            cmd.arg(binary.unwrap_or(Path::new("peerjsd")));
            cmd.args(["--port", &p, "--host", "127.0.0.1", "--path", "/"]);
            cmd.args(["--concurrent-limit", "100000", "--rate-limit", "0"]);
            cmd.args(["--max-connections-per-ip", "0"]);
            if rooms {
                cmd.args(["--rooms", "token"]);
            }
            if srv == ServerKind::PeerjsdAuth {
                cmd.args(["--auth-secret", BENCH_SECRET]);
            }
        }
        ServerKind::PeerjsServer => {
            cmd.arg("node");
            cmd.arg(setup.node_script.as_deref().unwrap_or(Path::new("peerjs")));
            cmd.args(["--port", &p, "--path", "/", "--concurrent_limit", "100000"]);
        }
        ServerKind::Floor => {
            cmd.arg(&setup.floor);
            cmd.args(["--port", &p, "--host", "127.0.0.1"]);
            cmd.args(&setup.floor_args);
        }
    }
    cmd
}

/// Starts the server and waits until its port accepts connections; retries on another port
/// when the chosen one turned out to be taken.
fn start_server(
    setup: &Setup,
    srv: ServerKind,
    rooms: bool,
    log: &Path,
) -> Result<(Child, u16), String> {
    let mut attempt = 0;
    loop {
        match start_server_on(setup, srv, rooms, log, free_port(attempt)) {
            Err(e) if e.contains("EADDRINUSE") && attempt < 5 => attempt += 1,
            other => return other,
        }
    }
}

fn start_server_on(
    setup: &Setup,
    srv: ServerKind,
    rooms: bool,
    log: &Path,
    port: u16,
) -> Result<(Child, u16), String> {
    let mut cmd = server_command(setup, srv, port, rooms);
    let out = File::create(log).map_err(|e| format!("log file: {e}"))?;
    let err = out.try_clone().map_err(|e| format!("log file: {e}"))?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err));
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("did not start: {e} ({cmd:?})"))?;
    let deadline = Instant::now() + Duration::from_secs(15);
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let text = fs::read_to_string(log).unwrap_or_default();
            let first = text
                .lines()
                .find(|l| l.to_lowercase().contains("error"))
                .or_else(|| text.lines().next())
                .unwrap_or("")
                .trim()
                .to_string();
            let rejected = [
                "unexpected argument",
                "unrecognized",
                "unknown",
                "invalid value",
            ]
            .iter()
            .any(|w| text.to_lowercase().contains(w));
            return Err(format!(
                "did not start ({status}){}: {first}",
                if rejected {
                    ", it rejected a command-line flag"
                } else {
                    ""
                }
            ));
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return Ok((child, port));
        }
        // Node logs a failed listen and keeps running.
        if fs::read_to_string(log).is_ok_and(|t| t.contains("EADDRINUSE")) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("port {port} taken (EADDRINUSE)"));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err("did not start: port not open after 15 s".into());
        }
        sleep(Duration::from_millis(20));
    }
}

fn run_one(
    setup: &Setup,
    cli: &Cli,
    sc: ScenarioId,
    rep: usize,
    srv: ServerKind,
    rooms: bool,
) -> Run {
    let log = setup
        .out
        .join(format!("{}-{}-{}.log", sc.name(), srv.name(), rep + 1));
    if srv.is_cluster() {
        return run_cluster(setup, cli, sc, rep, srv, rooms);
    }
    let (mut child, port) = match start_server(setup, srv, rooms, &log) {
        Ok(x) => x,
        Err(e) => {
            return Run {
                report: LoadReport {
                    error: Some(e.clone()),
                    ..Default::default()
                },
                server_note: Some(e),
            };
        }
    };
    // Let the server finish starting (Node compiles lazily) before the baseline readings.
    sleep(Duration::from_millis(300));
    let pid = child.id();
    let mut cmd = Command::new("taskset");
    cmd.arg("-c")
        .arg(setup.loadgen_cpu.to_string())
        .arg(&setup.loadgen)
        .args([
            "--port",
            &port.to_string(),
            "--server-pid",
            &pid.to_string(),
        ])
        .args(sc.loadgen_args(cli.quick, cli.hold_peers, rooms))
        .stdin(Stdio::null());
    if srv == ServerKind::PeerjsdAuth {
        cmd.args(["--auth-secret", BENCH_SECRET]);
    }
    let output = cmd.output();
    let server_note = match child.try_wait() {
        Ok(Some(status)) => Some(format!("server exited during the run ({status})")),
        _ => None,
    };
    let _ = child.kill();
    let _ = child.wait();
    Run {
        report: loadgen_report(output),
        server_note,
    }
}

/// Where Debian's nats-server may be.
const NATS_SERVERS: [&str; 2] = ["/usr/sbin/nats-server", "/usr/bin/nats-server"];

/// A cluster run: a nats-server and one or two peerjsd nodes on it, all pinned to the
/// server core; the load generator counts all of their CPU.
fn run_cluster(
    setup: &Setup,
    cli: &Cli,
    sc: ScenarioId,
    rep: usize,
    srv: ServerKind,
    rooms: bool,
) -> Run {
    let failed = |why: String| Run {
        report: LoadReport {
            error: Some(why.clone()),
            ..Default::default()
        },
        server_note: Some(why),
    };
    let Some(nats_bin) = NATS_SERVERS.iter().map(Path::new).find(|p| p.is_file()) else {
        return failed("did not start (no nats-server)".into());
    };
    let name = |what: &str| {
        setup.out.join(format!(
            "{}-{}-{}-{what}.log",
            sc.name(),
            srv.name(),
            rep + 1
        ))
    };
    let nats_port = free_port(rep + 7);
    let mut children: Vec<Child> = Vec::new();
    let kill_all = |children: &mut Vec<Child>| {
        for child in children.iter_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    };
    let mut nats = Command::new("taskset");
    nats.arg("-c")
        .arg(setup.server_cpu.to_string())
        .arg(nats_bin)
        .args(["-a", "127.0.0.1", "-p", &nats_port.to_string()]);
    match spawn_logged(nats, &name("nats")) {
        Ok(child) => children.push(child),
        Err(e) => return failed(e),
    }
    if !wait_port(nats_port) {
        kill_all(&mut children);
        return failed("did not start (nats-server did not listen)".into());
    }
    let url = format!("nats://127.0.0.1:{nats_port}");
    let nodes = if srv == ServerKind::ClusterCross {
        2
    } else {
        1
    };
    let mut ports = Vec::new();
    for n in 0..nodes {
        let port = free_port(rep * 2 + n + 11);
        let mut cmd = server_command(setup, ServerKind::Peerjsd, port, rooms);
        cmd.args(["--cluster", &url, "--node-name", &format!("bench-{n}")]);
        match spawn_logged(cmd, &name(&format!("node{n}"))) {
            Ok(child) => children.push(child),
            Err(e) => {
                kill_all(&mut children);
                return failed(e);
            }
        }
        if !wait_port(port) {
            kill_all(&mut children);
            return failed(format!("did not start (node {n} did not listen)"));
        }
        ports.push(port);
    }
    // Both nodes see each other before the load starts.
    if nodes == 2 && !ports.iter().all(|&p| wait_health(p, r#""nodes":1"#)) {
        kill_all(&mut children);
        return failed("the two nodes did not see each other within 15 s".into());
    }
    sleep(Duration::from_millis(300));
    let pids: Vec<u32> = children.iter().map(Child::id).collect();
    let mut cmd = Command::new("taskset");
    cmd.arg("-c")
        .arg(setup.loadgen_cpu.to_string())
        .arg(&setup.loadgen)
        .args(["--port", &ports[0].to_string()])
        .args(["--server-pid", &pids[1].to_string()])
        .args(["--also-pid", &pids[0].to_string()]);
    if let Some(port2) = ports.get(1) {
        cmd.args(["--port2", &port2.to_string()])
            .args(["--also-pid", &pids[2].to_string()]);
    }
    cmd.args(sc.loadgen_args(cli.quick, cli.hold_peers, rooms))
        .stdin(Stdio::null());
    let output = cmd.output();
    let died = children
        .iter_mut()
        .any(|c| matches!(c.try_wait(), Ok(Some(_))));
    kill_all(&mut children);
    Run {
        report: loadgen_report(output),
        server_note: died.then(|| "a node or nats-server exited during the run".into()),
    }
}

fn spawn_logged(mut cmd: Command, log: &Path) -> Result<Child, String> {
    let out = File::create(log).map_err(|e| format!("log file: {e}"))?;
    let err = out.try_clone().map_err(|e| format!("log file: {e}"))?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
        .map_err(|e| format!("did not start: {e} ({cmd:?})"))
}

/// Waits (at most 15 s) until `port` accepts connections.
fn wait_port(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return true;
        }
        sleep(Duration::from_millis(20));
    }
    false
}

/// Waits (at most 15 s) until `/health` on `port` contains `needle`.
fn wait_health(port: u16, needle: &str) -> bool {
    use std::io::Read;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
            let request = "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
            let mut body = String::new();
            if stream.write_all(request.as_bytes()).is_ok()
                && stream.read_to_string(&mut body).is_ok()
                && body.contains(needle)
            {
                return true;
            }
        }
        sleep(Duration::from_millis(50));
    }
    false
}

/// The load generator's report line, or why there is none.
fn loadgen_report(output: std::io::Result<std::process::Output>) -> LoadReport {
    match output {
        Ok(o) => {
            let stdout = String::from_utf8_lossy(&o.stdout);
            match stdout
                .lines()
                .rev()
                .find_map(|l| serde_json::from_str::<LoadReport>(l).ok())
            {
                Some(r) => r,
                None => LoadReport {
                    error: Some(format!(
                        "loadgen gave no report ({}): {}",
                        o.status,
                        String::from_utf8_lossy(&o.stderr).trim()
                    )),
                    ..Default::default()
                },
            }
        }
        Err(e) => LoadReport {
            error: Some(format!("loadgen did not run: {e}")),
            ..Default::default()
        },
    }
}

// ---------------------------------------------------------------------------------------------
// Reporting

fn cmd_output(cmd: &str, args: &[&str]) -> Option<String> {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

fn machine_info(setup: &Setup, cli: &Cli, runs: usize) -> String {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown".into());
    let nproc = cmd_output("nproc", &[]).unwrap_or_else(|| "?".into());
    let kernel = cmd_output("uname", &["-r"]).unwrap_or_else(|| "?".into());
    let mem = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default();
    let node = cmd_output("node", &["--version"]).unwrap_or_else(|| "not found".into());
    let mut commit =
        cmd_output("git", &["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "?".into());
    if cmd_output("git", &["status", "--porcelain", "--", "src", "Cargo.toml"])
        .is_some_and(|s| !s.is_empty())
    {
        commit.push_str(" + uncommitted changes in src/");
    }
    let nofile = rlimit::getrlimit(rlimit::Resource::NOFILE)
        .map(|(s, h)| format!("{s}/{h}"))
        .unwrap_or_default();
    let mut s = String::new();
    let _ = writeln!(s, "# peerjsd benchmark");
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "- machine: `nproc` {nproc}, {model}, kernel {kernel}, {mem} RAM, open files (soft/hard) {nofile}"
    );
    let _ = writeln!(
        s,
        "- server pinned to CPU {}, load generator to CPU {} (`taskset`); {} run(s) per (scenario, server), interleaved{}",
        setup.server_cpu,
        setup.loadgen_cpu,
        runs,
        if cli.quick {
            "; **quick mode: short windows, smaller loads**"
        } else {
            ""
        }
    );
    let _ = writeln!(
        s,
        "- servers: peerjsd {} (repo commit {commit}); peerjs-server 1.0.2 on Node {node}; floor = bench/src/bin/floor.rs{}",
        if setup.peerjsd.is_some() {
            setup.peerjsd_origin.display().to_string()
        } else {
            "(absent)".into()
        },
        if setup.floor_args.is_empty() {
            String::new()
        } else {
            format!(" run with `{}`", setup.floor_args.join(" "))
        },
    );
    if let Some(baseline) = &cli.baseline {
        let _ = writeln!(
            s,
            "- baseline: {} (another peerjsd, same arguments)",
            baseline.display()
        );
    }
    s
}

fn one_line(sc: ScenarioId, run: &Run) -> String {
    let r = &run.report;
    if let Some(e) = &r.error {
        return format!("ERROR {e}");
    }
    let mut s = match sc {
        ScenarioId::Idle10k | ScenarioId::Hold19k => format!(
            "{} peers, {:.0} peers/s, {:.2} kB/peer, server {:.1}% CPU holding",
            r.peers.unwrap_or(0),
            r.connect_per_s.unwrap_or(0.0),
            rss_per_peer(r).unwrap_or(0.0),
            r.server_cpu_frac() * 100.0
        ),
        _ => format!(
            "{:.0} {}/s, server {:.2} µs/{} ({:.0}% CPU), loadgen {:.0}% CPU, {}-bound",
            r.rate(),
            r.unit,
            r.server_us_per_unit().unwrap_or(0.0),
            r.unit,
            r.server_cpu_frac() * 100.0,
            r.loadgen_cpu_frac() * 100.0,
            r.bound()
        ),
    };
    let _ = write!(s, "; {}", checks(r));
    if r.wall_s > 0.0 && r.other_cpu_s / r.wall_s > 0.1 {
        let _ = write!(
            s,
            "; NOISE: other processes used {:.0}% of a core",
            r.other_cpu_s / r.wall_s * 100.0
        );
    }
    if let Some(n) = &run.server_note {
        let _ = write!(s, "; {n}");
    }
    s
}

fn bound(r: &LoadReport) -> String {
    if r.error.is_some() {
        "—".into()
    } else {
        r.bound().into()
    }
}

fn rss_per_peer(r: &LoadReport) -> Option<f64> {
    let (b, a, p) = (r.rss_before_kib?, r.rss_after_kib?, r.peers?);
    (p > 0).then(|| (a as f64 - b as f64) / p as f64)
}

/// "ok" when nothing was lost, reordered, malformed or failed.
fn checks(r: &LoadReport) -> String {
    if let Some(e) = &r.error {
        return format!("error: {}", truncate(e, 60));
    }
    let mut parts = Vec::new();
    if r.lost > 0 {
        parts.push(format!("lost {}", r.lost));
    }
    if r.reordered > 0 {
        parts.push(format!("out-of-order {}", r.reordered));
    }
    if r.malformed > 0 {
        parts.push(format!("bad frames {}", r.malformed));
    }
    if r.peer_failures > 0 {
        parts.push(format!("failed peers {}", r.peer_failures));
    }
    if parts.is_empty() {
        "ok".into()
    } else {
        parts.join(", ")
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n).collect::<String>())
    }
}

/// A numeric row: how to read it from a report and how to print it.
struct NumRow {
    label: &'static str,
    get: fn(&LoadReport) -> Option<f64>,
    decimals: usize,
}

/// A text row, aggregated over runs (e.g. "ok ×3").
struct TextRow {
    label: &'static str,
    get: fn(&LoadReport) -> String,
}

enum Row {
    Num(NumRow),
    Text(TextRow),
}

fn num(label: &'static str, get: fn(&LoadReport) -> Option<f64>, decimals: usize) -> Row {
    Row::Num(NumRow {
        label,
        get,
        decimals,
    })
}

fn text(label: &'static str, get: fn(&LoadReport) -> String) -> Row {
    Row::Text(TextRow { label, get })
}

fn pct(x: f64) -> Option<f64> {
    Some(x * 100.0)
}

fn rows(sc: ScenarioId) -> Vec<Row> {
    match sc {
        ScenarioId::Relay1 | ScenarioId::Relay100 => vec![
            num("msgs/s relayed", |r| Some(r.rate()), 0),
            num("server CPU µs/msg", |r| r.server_us_per_unit(), 2),
            num("server CPU % of its core", |r| pct(r.server_cpu_frac()), 0),
            num(
                "loadgen CPU % of its core",
                |r| pct(r.loadgen_cpu_frac()),
                0,
            ),
            num("latency p50 µs (queueing)", |r| r.lat_p50_us, 0),
            text("bound by", bound),
            text("loss / order checks", checks),
        ],
        ScenarioId::Rate5k | ScenarioId::Cluster => vec![
            num("msgs/s delivered", |r| Some(r.rate()), 0),
            num("latency p50 µs", |r| r.lat_p50_us, 0),
            num("latency p90 µs", |r| r.lat_p90_us, 0),
            num("latency p99 µs", |r| r.lat_p99_us, 0),
            num("server CPU % of its core", |r| pct(r.server_cpu_frac()), 1),
            num("server CPU µs/msg", |r| r.server_us_per_unit(), 2),
            text("loss / order checks", checks),
        ],
        ScenarioId::Idle10k | ScenarioId::Hold19k => vec![
            num("peers held", |r| r.peers.map(|p| p as f64), 0),
            num("connect rate peers/s (ramp)", |r| r.connect_per_s, 0),
            num(
                "server CPU µs/connect (ramp)",
                |r| Some(r.ramp_server_cpu_s? * 1e6 / r.peers? as f64),
                1,
            ),
            num("RSS kB/peer", rss_per_peer, 2),
            num(
                "server RSS MB after",
                |r| r.rss_after_kib.map(|k| k as f64 / 1024.0),
                1,
            ),
            num("server CPU % holding", |r| pct(r.server_cpu_frac()), 2),
            num("server CPU µs/heartbeat", |r| r.server_us_per_unit(), 2),
            text("checks", checks),
        ],
        ScenarioId::Churn => vec![
            num("connections/s", |r| Some(r.rate()), 0),
            num("server CPU µs/connection", |r| r.server_us_per_unit(), 1),
            num("server CPU % of its core", |r| pct(r.server_cpu_frac()), 0),
            num(
                "loadgen CPU % of its core",
                |r| pct(r.loadgen_cpu_frac()),
                0,
            ),
            text("bound by", bound),
            text("loss / order checks", checks),
        ],
        ScenarioId::Rooms4 => vec![
            num("rooms/s", |r| Some(r.rate()), 0),
            num(
                "rooms per server CPU-second",
                |r| (r.server_cpu_s > 0.0).then(|| r.units as f64 / r.server_cpu_s),
                0,
            ),
            num("server CPU µs/room", |r| r.server_us_per_unit(), 0),
            num("server CPU % of its core", |r| pct(r.server_cpu_frac()), 0),
            num(
                "loadgen CPU % of its core",
                |r| pct(r.loadgen_cpu_frac()),
                0,
            ),
            text("bound by", bound),
            text("loss / order checks", checks),
        ],
    }
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn fmt_num(x: f64, decimals: usize) -> String {
    let s = format!("{x:.decimals$}");
    // Thousands separators for the integer part, for readability.
    let (int, frac) = s.split_once('.').map_or((s.as_str(), ""), |(i, f)| (i, f));
    let (sign, digits) = int.strip_prefix('-').map_or(("", int), |d| ("-", d));
    let mut grouped = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    if frac.is_empty() {
        format!("{sign}{grouped}")
    } else {
        format!("{sign}{grouped}.{frac}")
    }
}

/// "ok ×3", or the distinct values in run order with counts.
fn aggregate_text(values: Vec<String>) -> String {
    let mut seen: Vec<(String, usize)> = Vec::new();
    for v in values {
        match seen.iter_mut().find(|(s, _)| *s == v) {
            Some((_, n)) => *n += 1,
            None => seen.push((v, 1)),
        }
    }
    seen.into_iter()
        .map(|(s, n)| if n > 1 { format!("{s} ×{n}") } else { s })
        .collect::<Vec<_>>()
        .join("; ")
}

fn render(
    machine: &str,
    scenarios: &[ScenarioId],
    results: &BTreeMap<(ScenarioId, ServerKind), Vec<Run>>,
    notes: &[String],
    quick: bool,
) -> String {
    let servers = [
        ServerKind::PeerjsServer,
        ServerKind::Floor,
        ServerKind::Baseline,
        ServerKind::Peerjsd,
        ServerKind::PeerjsdAuth,
        ServerKind::ClusterSame,
        ServerKind::ClusterCross,
    ];
    let present: Vec<ServerKind> = servers
        .into_iter()
        .filter(|s| results.keys().any(|(_, k)| k == s))
        .collect();
    // Ratio columns (numerator ÷ denominator): peerjsd against each other server, and
    // peerjsd with signed tokens against peerjsd without.
    let mut ratios: Vec<(ServerKind, ServerKind)> = Vec::new();
    if present.contains(&ServerKind::Peerjsd) {
        for &k in &present {
            if !matches!(
                k,
                ServerKind::Peerjsd
                    | ServerKind::PeerjsdAuth
                    | ServerKind::ClusterSame
                    | ServerKind::ClusterCross
            ) {
                ratios.push((ServerKind::Peerjsd, k));
            }
        }
        if present.contains(&ServerKind::PeerjsdAuth) {
            ratios.push((ServerKind::PeerjsdAuth, ServerKind::Peerjsd));
        }
        // The cluster's costs: same-node relays with it on ÷ off, and across nodes ÷ one node.
        for k in [ServerKind::ClusterSame, ServerKind::ClusterCross] {
            if present.contains(&k) {
                ratios.push((k, ServerKind::Peerjsd));
            }
        }
    }
    let mut s = String::from(machine);
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "Medians over runs. Ratio = peerjsd ÷ other (and peerjsd-auth, peerjsd with --auth-secret and every connection presenting a signed join token, ÷ peerjsd): for CPU, latency and memory lower is better, for rates higher is better. \
         \"bound by loadgen\" means the load generator's core was ≥ 90 % busy while the server's was not: \
         the rate then measures the load generator, compare server CPU per unit instead. \
         CPU = utime+stime of the process from /proc/<pid>/stat over the measurement window (10 ms ticks)."
    );
    if quick {
        let _ = writeln!(
            s,
            "\n**Quick mode**: windows of about a second and smaller loads; a smoke test, not a measurement."
        );
    }
    let _ = writeln!(s);

    let mut header = String::from("| scenario / metric |");
    let mut rule = String::from("|---|");
    for k in &present {
        let _ = write!(header, " {} |", k.name());
        rule.push_str("---:|");
    }
    for (a, b) in &ratios {
        let _ = write!(header, " {}/{} |", a.name(), b.name());
        rule.push_str("---:|");
    }
    let _ = writeln!(s, "{header}\n{rule}");

    let mut noise: Vec<f64> = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    for &sc in scenarios {
        let _ = write!(s, "| **{}** |", sc.title());
        let ncols = present.len() + ratios.len();
        for _ in 0..ncols {
            s.push_str(" |");
        }
        s.push('\n');
        for row in rows(sc) {
            let reports = |k: ServerKind| -> Vec<&LoadReport> {
                results
                    .get(&(sc, k))
                    .map(|v| {
                        v.iter()
                            .map(|r| &r.report)
                            .filter(|r| r.error.is_none())
                            .collect()
                    })
                    .unwrap_or_default()
            };
            match row {
                Row::Num(n) => {
                    let meds: Vec<Option<f64>> = present
                        .iter()
                        .map(|&k| {
                            median(reports(k).into_iter().filter_map(|r| (n.get)(r)).collect())
                        })
                        .collect();
                    let _ = write!(s, "| {} |", n.label);
                    for m in &meds {
                        let _ = write!(
                            s,
                            " {} |",
                            m.map(|x| fmt_num(x, n.decimals))
                                .unwrap_or_else(|| "—".into())
                        );
                    }
                    let med =
                        |k: ServerKind| present.iter().position(|p| *p == k).and_then(|i| meds[i]);
                    for &(a, b) in &ratios {
                        let cell = match (med(a), med(b)) {
                            (Some(a), Some(b)) if b != 0.0 => format!("{:.2}×", a / b),
                            _ => "—".into(),
                        };
                        let _ = write!(s, " {cell} |");
                    }
                    s.push('\n');
                }
                Row::Text(t) => {
                    let _ = write!(s, "| {} |", t.label);
                    for &k in &present {
                        let runs = results.get(&(sc, k));
                        let cell = runs
                            .map(|v| aggregate_text(v.iter().map(|r| (t.get)(&r.report)).collect()))
                            .unwrap_or_else(|| "—".into());
                        let _ = write!(s, " {} |", if cell.is_empty() { "—" } else { &cell });
                    }
                    for _ in &ratios {
                        s.push_str(" |");
                    }
                    s.push('\n');
                }
            }
        }
        for &k in &present {
            for (i, run) in results.get(&(sc, k)).into_iter().flatten().enumerate() {
                let r = &run.report;
                if r.wall_s > 0.0 {
                    noise.push(r.other_cpu_s / r.wall_s);
                }
                if let Some(e) = &r.error {
                    errors.push(format!("{} #{} {}: {e}", sc.name(), i + 1, k.name()));
                } else if let Some(n) = &run.server_note {
                    errors.push(format!("{} #{} {}: {n}", sc.name(), i + 1, k.name()));
                }
                for n in &r.notes {
                    errors.push(format!("{} #{} {}: {n}", sc.name(), i + 1, k.name()));
                }
            }
        }
    }
    let _ = writeln!(s);
    if let (Some(med), Some(max)) = (
        median(noise.clone()),
        noise.iter().copied().reduce(f64::max),
    ) {
        let _ = writeln!(
            s,
            "Noise: other processes used a median {:.0} % (max {:.0} %) of one core during the measurement windows{}.",
            med * 100.0,
            max * 100.0,
            if max > 0.1 {
                " — figures from busy windows are less trustworthy"
            } else {
                ""
            }
        );
    }
    if !notes.is_empty() || !errors.is_empty() {
        let _ = writeln!(s, "\nNotes:");
        for n in notes.iter().chain(errors.iter()) {
            let _ = writeln!(s, "- {}", truncate(n, 300));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }

    #[test]
    fn numbers_get_thousands_separators() {
        assert_eq!(fmt_num(1234567.0, 0), "1,234,567");
        assert_eq!(fmt_num(999.0, 0), "999");
        assert_eq!(fmt_num(12345.678, 2), "12,345.68");
        assert_eq!(fmt_num(-1234.0, 0), "-1,234");
        assert_eq!(fmt_num(0.5, 2), "0.50");
    }

    #[test]
    fn text_cells_count_repeats() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(aggregate_text(v(&["ok", "ok", "ok"])), "ok ×3");
        assert_eq!(
            aggregate_text(v(&["server", "loadgen", "server"])),
            "server ×2; loadgen"
        );
    }

    #[test]
    fn checks_summarise_problems() {
        let mut r = LoadReport::default();
        assert_eq!(checks(&r), "ok");
        r.lost = 2;
        r.reordered = 1;
        assert_eq!(checks(&r), "lost 2, out-of-order 1");
    }

    #[test]
    fn quick_mode_shrinks_loads() {
        let full = ScenarioId::Idle10k.loadgen_args(false, 19_000, false);
        let quick = ScenarioId::Idle10k.loadgen_args(true, 19_000, false);
        assert!(full.contains(&"10000".to_string()));
        assert!(quick.contains(&"1000".to_string()));
        let rooms = ScenarioId::Rooms4.loadgen_args(false, 19_000, true);
        assert_eq!(rooms.last().map(String::as_str), Some("--rooms-token"));
    }
}
