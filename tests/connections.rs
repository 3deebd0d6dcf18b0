//! The connection layer against one hostile address, and against 50 (127.0.0.2–51): every TCP
//! connection counted per address from accept to close, the handshake bounds (per address and
//! server-wide, oldest dropped first), the write deadline on what hyper serves, the read
//! bounds hyper already keeps, and what `/metrics` costs.
//!
//! Many-socket tests stay far under the process's 20,000 descriptors (client and server
//! share it here): a few thousand client sockets, of which the server keeps at most its
//! handshake bounds.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::*;
use futures_util::future::join_all;
use peerjsd::protocol::Rejection;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A connection to `server` from the loopback address `source`.
async fn connect_from(server: SocketAddr, source: IpAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    tokio::time::timeout(WAIT, socket.connect(server))
        .await
        .expect("connect timed out")
        .expect("connect")
}

/// A connection from `source` that sends half a request head and then nothing.
async fn half_open(server: SocketAddr, source: IpAddr) -> TcpStream {
    let mut stream = connect_from(server, source).await;
    stream
        .write_all(b"GET /peerjs?key=peerjs&id=x&token=t HTTP/1.1\r\nHost: x\r\nUpgr")
        .await
        .unwrap();
    stream
}

/// `n` half-open connections from `source`, opened 100 at a time.
async fn half_open_many(server: SocketAddr, source: IpAddr, n: usize) -> Vec<TcpStream> {
    let mut held = Vec::with_capacity(n);
    while held.len() < n {
        let batch = (n - held.len()).min(100);
        held.extend(join_all((0..batch).map(|_| half_open(server, source))).await);
    }
    held
}

fn loopback(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

/// Everything the server sends until it closes, or a failure after [`WAIT`].
async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(WAIT, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return String::from_utf8_lossy(&got).into_owned(),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "still open after {WAIT:?}; got {:?}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
}

/// An honest pair connects, is admitted and relays, and `/health` answers.
async fn honest_clients_are_served(server: &TestServer) {
    let health = server.get("/health", &[]).await;
    assert_eq!(health.status, 200, "{}", health.body);
    let (a, b) = (random_token(), random_token());
    let alice = PeerClient::open(server, &a).await;
    let mut bob = PeerClient::open(server, &b).await;
    let message = offer(&b, "dc_honest");
    alice.send(message.clone());
    assert_eq!(bob.recv().await, relayed(&message, &a));
    alice.close();
    bob.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_half_open_connections_from_one_address_hold_32_places() {
    // Long enough that nothing here is ended by the handshake timeout.
    let server = TestServer::with(|c| c.handshake_timeout = Duration::from_secs(120)).await;
    let attacker = loopback(2);
    let mut held = half_open_many(server.addr, attacker, 32).await;
    server
        .until("32 in their handshake", |s| {
            s.gate.handshakes_from(attacker) == 32
        })
        .await;

    // The 33rd is refused at once, in the accept loop, with a 429.
    let mut refused = connect_from(server.addr, attacker).await;
    let answer = read_to_close(&mut refused).await;
    assert!(
        answer.starts_with("HTTP/1.1 429 Too Many Requests\r\n"),
        "{answer}"
    );
    assert!(answer.contains("Connection: close\r\n"), "{answer}");
    assert!(
        answer.ends_with("Too many connections from this address\n"),
        "{answer}"
    );

    // Thousands more: all refused, none kept.
    held.extend(half_open_many(server.addr, attacker, 3000).await);
    server
        .until("every connection accepted and refused", |s| {
            s.metrics.rejected(Rejection::HandshakesPerIp) == 3001
        })
        .await;
    assert_eq!(server.shared.gate.handshakes_from(attacker), 32);
    assert_eq!(server.shared.gate.connections_from(attacker), 32);
    assert_eq!(server.shared.metrics.tcp_connections.get(), 32);

    honest_clients_are_served(&server).await;
    assert_eq!(held.len(), 3032, "the attacker still holds its sockets");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_floods_from_50_addresses_only_push_each_other_out() {
    let server = TestServer::with(|c| {
        c.handshake_timeout = Duration::from_secs(120);
        c.max_handshakes = 1024;
    })
    .await;
    let addr = server.addr;
    // 50 addresses hold 60 each (3,000 in all; 32 per address admitted, 1,600 > 1,024).
    let held: Vec<Vec<TcpStream>> =
        join_all((2..52).map(|last| half_open_many(addr, loopback(last), 60))).await;
    server
        .until("every address at its handshake limit", |s| {
            s.metrics.rejected(Rejection::HandshakeEvicted) >= 1600 - 1024
        })
        .await;
    assert!(server.shared.gate.handshakes() <= 1024);
    assert!(server.shared.metrics.handshakes.get() <= 1024 + 50);

    // And while they keep coming (each new one pushes out the oldest), honest clients from
    // another address are served.
    let flood = tokio::spawn(async move {
        let mut churn = Vec::new();
        for round in 0.. {
            let last = 2 + (round % 50) as u8;
            churn.push(half_open(addr, loopback(last)).await);
            if churn.len() > 500 {
                churn.remove(0);
            }
        }
    });
    let evicted_before = server.shared.metrics.rejected(Rejection::HandshakeEvicted);
    honest_clients_are_served(&server).await;
    honest_clients_are_served(&server).await;
    server
        .until("the flood kept evicting", |s| {
            s.metrics.rejected(Rejection::HandshakeEvicted) > evicted_before + 100
        })
        .await;
    honest_clients_are_served(&server).await;
    flood.abort();
    assert!(server.shared.gate.handshakes() <= 1024);
    assert_eq!(held.iter().map(Vec::len).sum::<usize>(), 3000);
}

#[tokio::test]
async fn every_kind_of_connection_counts_toward_the_per_address_limit() {
    let server = TestServer::with(|c| c.max_tcp_per_ip = Some(3)).await;
    let client = loopback(3);
    // Two WebSocket peers and a kept-alive REST connection from one address.
    let mut sockets = Vec::new();
    for id in ["one", "two"] {
        let mut ws = connect_from(server.addr, client).await;
        let request = upgrade_request(&format!("/peerjs?key=peerjs&id={id}&token=t"), "");
        ws.write_all(request.as_bytes()).await.unwrap();
        let mut seen = Vec::new();
        while !String::from_utf8_lossy(&seen).contains(r#"{"type":"OPEN"}"#) {
            let mut buf = [0u8; 512];
            let n = tokio::time::timeout(WAIT, ws.read(&mut buf))
                .await
                .expect("OPEN")
                .unwrap();
            assert!(n > 0);
            seen.extend_from_slice(&buf[..n]);
        }
        sockets.push(ws);
    }
    let mut rest = connect_from(server.addr, client).await;
    rest.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let n = tokio::time::timeout(WAIT, rest.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    assert_eq!(server.shared.gate.connections_from(client), 3);

    // The fourth of any kind is refused before it says anything.
    let mut fourth = connect_from(server.addr, client).await;
    assert!(read_to_close(&mut fourth).await.starts_with("HTTP/1.1 429"));
    assert_eq!(server.shared.metrics.rejected(Rejection::TcpPerIp), 1);
    // Other addresses are not affected.
    assert_eq!(server.get("/health", &[]).await.status, 200);

    // A connection that closes gives its place back.
    drop(sockets.remove(0));
    server
        .until("the closed socket is given back", |s| {
            s.gate.connections_from(client) == 2
        })
        .await;
    let mut again = connect_from(server.addr, client).await;
    again
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    assert!(read_to_close(&mut again).await.starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn behind_a_proxy_the_proxy_address_is_not_limited() {
    let server = TestServer::with(|c| {
        c.proxied = true;
        c.max_tcp_per_ip = Some(2);
        c.max_handshakes_per_ip = Some(1);
        c.handshake_timeout = Duration::from_secs(120);
    })
    .await;
    let proxy = loopback(4);
    let _held = half_open_many(server.addr, proxy, 5).await;
    server
        .until("all five in their handshake", |s| s.gate.handshakes() == 5)
        .await;
    assert_eq!(server.shared.metrics.rejected(Rejection::TcpPerIp), 0);
    assert_eq!(
        server.shared.metrics.rejected(Rejection::HandshakesPerIp),
        0
    );
    let mut more = connect_from(server.addr, proxy).await;
    more.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    assert!(read_to_close(&mut more).await.starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn a_handshake_that_does_not_finish_in_time_is_dropped_and_counted() {
    let server = TestServer::with(|c| c.handshake_timeout = Duration::from_millis(200)).await;
    let client = loopback(5);
    let mut stream = half_open(server.addr, client).await;
    assert_eq!(read_to_close(&mut stream).await, "");
    server
        .until("counted", |s| {
            s.metrics.rejected(Rejection::HandshakeTimeout) == 1
        })
        .await;
    server
        .until("its places given back", |s| {
            s.gate.connections_from(client) == 0 && s.gate.handshakes() == 0
        })
        .await;
}

/// Starts a server with `config` and a `--metrics-addr` listener; returns (public, ops).
async fn with_ops_listener(
    config: peerjsd::Config,
) -> (
    SocketAddr,
    SocketAddr,
    std::sync::Arc<peerjsd::Shared>,
    tokio::sync::oneshot::Sender<()>,
) {
    let ops = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ops_addr = ops.local_addr().unwrap();
    let public = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let public_addr = public.local_addr().unwrap();
    let server = peerjsd::Server::new(config)
        .unwrap()
        .with_metrics_listener(ops);
    let shared = server.shared();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run(public, async {
        let _ = stopped.await;
    }));
    (public_addr, ops_addr, shared, stop)
}

#[tokio::test]
async fn clients_that_pipeline_requests_and_never_read_are_closed_after_the_write_timeout() {
    let config = peerjsd::Config {
        write_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let (public, ops, shared, _stop) = with_ops_listener(config).await;
    // REST and ops on the public port, ops on the metrics port: each client pipelines 400
    // requests with a 2 KB receive buffer and never reads.
    let attacks = [
        (public, "GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_owned()),
        (public, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n".to_owned()),
        (ops, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n".to_owned()),
    ];
    let mut held = Vec::new();
    for (addr, request) in &attacks {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(2048).unwrap();
        let mut stream = socket.connect(*addr).await.unwrap();
        stream
            .write_all(request.repeat(400).as_bytes())
            .await
            .unwrap();
        held.push(stream);
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    while shared.metrics.http_write_timeouts.get() < attacks.len() as u64
        || shared.metrics.tcp_connections.get() > 0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "write timeouts {}, connections open {}",
            shared.metrics.http_write_timeouts.get(),
            shared.metrics.tcp_connections.get()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        shared.metrics.http_write_timeouts.get(),
        attacks.len() as u64
    );
    // A reader that does read gets every answer.
    let mut honest = TcpStream::connect(public).await.unwrap();
    let pipelined = "GET /health HTTP/1.1\r\nHost: x\r\n\r\n".repeat(399)
        + "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    honest.write_all(pipelined.as_bytes()).await.unwrap();
    assert_eq!(
        read_to_close(&mut honest)
            .await
            .matches("HTTP/1.1 200 OK")
            .count(),
        400
    );
}

#[tokio::test]
async fn hyper_ends_idle_kept_alive_connections_dribbled_heads_and_unread_bodies() {
    let server = TestServer::with(|c| c.handshake_timeout = Duration::from_millis(300)).await;
    // Idle after a request: closed after the handshake timeout (hyper's head timeout).
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(read_to_close(&mut idle).await.starts_with("HTTP/1.1 200"));

    // A second head dribbled a byte every 50 ms, without end: cut all the same.
    let mut dribble = TcpStream::connect(server.addr).await.unwrap();
    dribble
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\nGET /health HTTP/1.1\r\nX-A: ")
        .await
        .unwrap();
    let mut answers = Vec::new();
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            let mut buf = [0u8; 1024];
            tokio::select! {
                read = dribble.read(&mut buf) => match read {
                    Ok(0) | Err(_) => return,
                    Ok(n) => answers.extend_from_slice(&buf[..n]),
                },
                _ = tokio::time::sleep(Duration::from_millis(50)) => {
                    if dribble.write_all(b"a").await.is_err() {
                        return;
                    }
                }
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "a dribbled head was read for {WAIT:?}");
    assert_eq!(
        String::from_utf8_lossy(&answers)
            .matches("HTTP/1.1 200")
            .count(),
        1
    );

    // A body no route reads: answered, then the connection is closed at once.
    let mut body = TcpStream::connect(server.addr).await.unwrap();
    body.write_all(b"POST /peerjs/id HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n01234")
        .await
        .unwrap();
    assert!(read_to_close(&mut body).await.starts_with("HTTP/1.1 404"));
    server
        .until("all closed", |s| s.metrics.tcp_connections.get() == 0)
        .await;
}

#[tokio::test]
async fn metrics_can_be_kept_off_the_public_port() {
    let config = peerjsd::Config {
        metrics_public: false,
        ..Default::default()
    };
    let (public, ops, _shared, _stop) = with_ops_listener(config).await;
    let request =
        "GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: text/plain\r\nConnection: close\r\n\r\n";
    let hidden = http_raw(public, request).await;
    assert_eq!(hidden.status, 404);
    assert!(
        hidden.body.contains("Cannot GET /metrics"),
        "{}",
        hidden.body
    );
    let served = http_raw(ops, request).await;
    assert_eq!(served.status, 200);
    assert!(served.body.contains("peerjs_tcp_connections"));
    // /health stays on both.
    assert_eq!(
        http_raw(public, &request.replace("metrics", "health"))
            .await
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_scrapes_share_one_read_of_the_process_figures() {
    // 50 handshakes at once from one address: past the default per-address bound.
    let server = TestServer::with(|c| c.max_handshakes_per_ip = None).await;
    let started = std::time::Instant::now();
    let scrapes = join_all((0..50).map(|_| server.get("/metrics", &["Accept: text/plain"]))).await;
    let elapsed = started.elapsed();
    for scrape in &scrapes {
        assert_eq!(scrape.status, 200);
        assert!(
            scrape.body.contains("\nprocess_open_fds "),
            "{}",
            scrape.body
        );
    }
    // At most one read per second: one at the first scrape, one more per second after it.
    let reads = server.shared.metrics.process_reads();
    assert!(reads >= 1);
    assert!(
        reads <= 1 + elapsed.as_secs(),
        "{reads} reads of /proc for 50 scrapes in {elapsed:?}"
    );
}

#[tokio::test]
async fn a_head_is_in_its_handshake_until_it_ends_however_long() {
    let server = TestServer::with(|c| c.handshake_timeout = Duration::from_millis(300)).await;
    let start = "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n";
    // More headers than the short path parses; longer than it parses.
    let many: String = (0..40).map(|i| format!("X-Many-{i}: v\r\n")).collect();
    let long = format!("X-Long: {}\r\n", "v".repeat(12 * 1024));
    for (n, headers) in [many, long].iter().enumerate() {
        // Never finished: the handshake deadline ends it, without an answer (hyper, had it
        // been handed the head, would have been the one to end it, and not counted it).
        let mut unfinished = TcpStream::connect(server.addr).await.unwrap();
        unfinished
            .write_all(format!("{start}{headers}").as_bytes())
            .await
            .unwrap();
        assert_eq!(read_to_close(&mut unfinished).await, "");
        assert_eq!(
            server.shared.metrics.rejected(Rejection::HandshakeTimeout),
            n as u64 + 1
        );
        // Finished: served, and out of the handshake table.
        let mut finished = TcpStream::connect(server.addr).await.unwrap();
        finished
            .write_all(format!("{start}{headers}\r\n").as_bytes())
            .await
            .unwrap();
        assert!(
            read_to_close(&mut finished)
                .await
                .starts_with("HTTP/1.1 200")
        );
        server
            .until("out of the handshake table", |s| s.gate.handshakes() == 0)
            .await;
    }

    // A head that never ends is read up to 64 KiB, then hyper answers 431.
    let mut endless = TcpStream::connect(server.addr).await.unwrap();
    let filler = format!("X-Filler: {}\r\n", "v".repeat(1000));
    endless
        .write_all(format!("{start}{}", filler.repeat(70)).as_bytes())
        .await
        .unwrap();
    assert!(
        read_to_close(&mut endless)
            .await
            .starts_with("HTTP/1.1 431")
    );
}
