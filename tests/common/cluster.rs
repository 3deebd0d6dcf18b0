//! Cluster harness: real `nats-server` processes clustered on loopback ports, and peerjsd
//! nodes joined to them (in-process [`TestServer`]s, or `peerjsd` processes where a test
//! must SIGKILL one).
//!
//! The tests fail (never skip) when `nats-server` is missing: `apt-get install nats-server`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use peerjsd::config::{ClusterAuth, ClusterConfig};
use peerjsd::{Config, Shared};

use super::{TestServer, WAIT};

/// Timings for tests: quick, but with room for a loaded 2-core machine.
pub const HEARTBEAT: Duration = Duration::from_millis(250);
pub const NODE_TIMEOUT: Duration = Duration::from_millis(1500);

/// The nats-server binary.
pub fn nats_server_bin() -> PathBuf {
    for candidate in [
        "/usr/sbin/nats-server",
        "/usr/bin/nats-server",
        "/usr/local/bin/nats-server",
    ] {
        if Path::new(candidate).exists() {
            return PathBuf::from(candidate);
        }
    }
    panic!("nats-server not found (the cluster tests need it): apt-get install nats-server");
}

/// A loopback port nobody listens on right now, for a server that binds it later. It comes
/// from below the kernel's ephemeral range (32768 and up on Linux), so no client socket of a
/// test running beside this one can be given it in the meantime (a port from `bind(:0)` could
/// be, and the server would then fail to start), nor from the 20000s that tests/ice.rs gives
/// coturn's relays, and this process never hands one out twice.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 10_000;
    const SPAN: u32 = 10_000;
    // Processes running at once (nextest) start far apart.
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7_919) % SPAN,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..SPAN {
        let port = (FIRST + NEXT.fetch_add(1, Ordering::Relaxed) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {FIRST}..{}", FIRST + SPAN);
}

/// One nats-server process.
pub struct Nats {
    child: Option<Child>,
    pub port: u16,
    pub cluster_port: u16,
    pub monitor_port: u16,
    routes: Vec<u16>,
    log: PathBuf,
    /// `--no_advertise`: clients learn no other server from this one.
    no_advertise: bool,
}

impl Nats {
    fn spawn(&mut self) {
        let routes: Vec<String> = self
            .routes
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect();
        let mut command = Command::new(nats_server_bin());
        command
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-m", &self.monitor_port.to_string()])
            .args(["--cluster_name", "peerjsd-test"])
            .args([
                "--cluster",
                &format!("nats://127.0.0.1:{}", self.cluster_port),
            ])
            .args(["-l", self.log.to_str().expect("utf-8 path")]);
        if !routes.is_empty() {
            command.args(["--routes", &routes.join(",")]);
        }
        if self.no_advertise {
            command.arg("--no_advertise");
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
    }

    /// The client URL.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same ports.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Routes this server has to the others (from its monitoring endpoint).
    pub async fn routes(&self) -> Option<u64> {
        let addr: SocketAddr = format!("127.0.0.1:{}", self.monitor_port).parse().ok()?;
        let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        drop(stream);
        let response = super::http_raw(
            addr,
            "GET /routez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        let value: serde_json::Value = serde_json::from_str(&response.body).ok()?;
        value["num_routes"].as_u64()
    }

    /// Whether it accepts client connections.
    pub async fn is_up(&self) -> bool {
        tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_ok()
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A NATS cluster of real servers, routed to each other.
pub struct NatsCluster {
    pub servers: Vec<Nats>,
    _dir: TempDir,
}

impl NatsCluster {
    /// Starts `n` servers and waits until every one has routes to all the others.
    pub async fn start(n: usize) -> Self {
        Self::start_with(n, false).await
    }

    /// As [`Self::start`]; with `no_advertise` a client knows only the servers it was given
    /// (so that killing its server cuts it off).
    pub async fn start_with(n: usize, no_advertise: bool) -> Self {
        let dir = TempDir::new("nats");
        let cluster_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let mut servers = Vec::new();
        for i in 0..n {
            let mut server = Nats {
                child: None,
                port: free_port(),
                cluster_port: cluster_ports[i],
                monitor_port: free_port(),
                routes: cluster_ports
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, p)| *p)
                    .collect(),
                log: dir.0.join(format!("nats-{i}.log")),
                no_advertise,
            };
            server.spawn();
            servers.push(server);
        }
        let cluster = NatsCluster { servers, _dir: dir };
        cluster.wait_for_routes(n as u64 - 1).await;
        cluster
    }

    /// Waits until every running server has `routes` routes.
    pub async fn wait_for_routes(&self, routes: u64) {
        let deadline = tokio::time::Instant::now() + 2 * WAIT;
        for server in self.servers.iter().filter(|s| s.child.is_some()) {
            loop {
                if server.routes().await == Some(routes) {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "nats-server on {} did not form {routes} routes; log: {}",
                    server.port,
                    std::fs::read_to_string(&server.log).unwrap_or_default()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// Every server's client URL, comma-separated (as `--cluster` takes them).
    pub fn urls(&self) -> Vec<String> {
        self.servers.iter().map(Nats::url).collect()
    }
}

/// A cluster configuration for node `name` on `urls`, with the test timings.
pub fn cluster_config(urls: Vec<String>, name: &str) -> ClusterConfig {
    ClusterConfig {
        urls,
        name: "t".into(),
        node_name: name.into(),
        auth: ClusterAuth::None,
        tls_ca: None,
        heartbeat: HEARTBEAT,
        node_timeout: NODE_TIMEOUT,
        request_timeout: Duration::from_secs(1),
        publish_backlog: 8 << 20,
    }
}

/// Starts an in-process node on `urls` named `name`, its configuration changed by `tweak`.
pub async fn node(urls: Vec<String>, name: &str, tweak: impl FnOnce(&mut Config)) -> TestServer {
    TestServer::with(|c| {
        c.cluster = Some(cluster_config(urls, name));
        tweak(c);
    })
    .await
}

/// Waits until each server is connected and sees all the others.
pub async fn formed(servers: &[&TestServer]) {
    let others = servers.len() - 1;
    for server in servers {
        server
            .until("the cluster to form", |shared: &Shared| {
                shared
                    .cluster
                    .as_ref()
                    .is_some_and(|c| c.is_connected() && c.live_nodes() == others)
            })
            .await;
    }
}

/// Waits until `server` does (`known`) or does not know `id` in `room` as held on another
/// node.
pub async fn until_known(server: &TestServer, room: &str, id: &str, known: bool) {
    let (room, id) = (room.to_owned(), id.to_owned());
    server
        .until(&format!("{id} known elsewhere: {known}"), move |shared| {
            shared
                .rooms
                .remote
                .as_ref()
                .is_some_and(|r| r.locate(&room, &id).is_some() == known)
        })
        .await;
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(what: &str) -> Self {
        let n = uuid::Uuid::new_v4().simple().to_string();
        let dir = std::env::temp_dir().join(format!("peerjsd-{what}-{}", &n[..12]));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A `peerjsd` process (for tests that SIGKILL a node).
pub struct Process {
    child: Option<Child>,
    pub port: u16,
    pub metrics_port: u16,
}

impl Process {
    /// Starts `peerjsd` on a free port with `args` added, and waits until it listens.
    pub async fn start(args: &[&str]) -> Self {
        let port = free_port();
        let metrics_port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_peerjsd"))
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start peerjsd");
        let process = Process {
            child: Some(child),
            port,
            metrics_port,
        };
        let deadline = tokio::time::Instant::now() + WAIT;
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "peerjsd did not listen"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        process
    }

    /// `/health` as JSON.
    pub async fn health(&self) -> serde_json::Value {
        let addr: SocketAddr = format!("127.0.0.1:{}", self.port).parse().expect("addr");
        let response = super::http_raw(
            addr,
            "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        serde_json::from_str(&response.body).expect("health JSON")
    }

    /// The URL a PeerJS client builds for `id` and `token`.
    pub fn peer_url(&self, id: &str, token: &str) -> String {
        format!(
            "ws://127.0.0.1:{}/peerjs?key=peerjs&id={id}&token={token}&version=1.5.5",
            self.port
        )
    }

    /// SIGKILL: no goodbye, no close frames.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}
