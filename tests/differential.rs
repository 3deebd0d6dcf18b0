//! Differential test: one scripted PeerJS session, run against the real peerjs-server 1.0.2
//! (`tests/reference`, installed with `npm ci`) and against peerjsd; every frame each client
//! receives must be the same, except where SPEC lists a deliberate deviation.
//!
//! Deviations left out of the comparison (each tested on its own elsewhere): close codes
//! (the reference sends none), same-token take-over (peerjsd sends OPEN), LEAVE without `dst`,
//! the liveness probe, malformed and binary frames, the id grammar, unbounded queues.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

const EXPIRE_MS: u64 = 1500;

/// The reference server as a child process.
struct Reference {
    child: Child,
    addr: SocketAddr,
}

impl Reference {
    fn start() -> Self {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/reference");
        let bin = root.join("node_modules/peer/dist/bin/peerjs.js");
        assert!(
            bin.exists(),
            "peerjs-server 1.0.2 is not installed: run `npm ci --prefix tests/reference` (scripts/test does)"
        );
        // The port is picked free and handed to node; if something takes it in between, node
        // exits, and we try another.
        for _attempt in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("free port")
                .port();
            let child = Command::new("node")
                .arg(&bin)
                .args([
                    "--port",
                    &port.to_string(),
                    "--path",
                    "/",
                    "--expire_timeout",
                    &EXPIRE_MS.to_string(),
                ])
                // Loopback only: a wildcard bind collides with any socket using the port
                // on any address (e.g. a load test's client sockets).
                .args(["--alive_timeout", "60000", "--host", "127.0.0.1"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("node");
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
            // Owned at once, so the child is killed whatever happens next.
            let mut reference = Reference { child, addr };
            let started = Instant::now();
            // peerjs-server logs a failed listen and keeps running, so give up after a while.
            while std::net::TcpStream::connect(addr).is_err() {
                if reference.child.try_wait().expect("child status").is_some()
                    || started.elapsed() > Duration::from_secs(15)
                {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if std::net::TcpStream::connect(addr).is_ok() {
                return reference;
            }
        }
        panic!("the reference server kept exiting at start-up");
    }
}

impl Drop for Reference {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one client received, normalised: frames as JSON, and "CLOSED" for a server close.
type Log = Vec<Value>;

/// Runs the script against the server at `addr`; returns each client's log, in client order.
async fn script(addr: SocketAddr) -> Vec<(String, Log)> {
    let url = |query: &str| format!("ws://{addr}/peerjs?{query}");
    let peer_url =
        |id: &str, token: &str| url(&format!("key=peerjs&id={id}&token={token}&version=1.5.5"));
    let mut logs: Vec<(String, Log)> = Vec::new();

    async fn take(client: &mut PeerClient, n: usize, log: &mut Log) {
        for _ in 0..n {
            match tokio::time::timeout(Duration::from_secs(6), client.event()).await {
                Ok(Event::Frame(v)) => log.push(v),
                Ok(Event::Closed(_)) | Ok(Event::Error(_)) => {
                    log.push(json!("CLOSED"));
                    return;
                }
                Ok(Event::Binary(b)) => log.push(json!({"binary": b.len()})),
                Err(_) => {
                    log.push(json!("TIMEOUT"));
                    return;
                }
            }
        }
    }

    let (mut la, mut lb, mut lc, mut ld, mut lx) =
        (Log::new(), Log::new(), Log::new(), Log::new(), Log::new());
    let mut a = PeerClient::connect_url(&peer_url("alice", "ta"), "alice").await;
    take(&mut a, 1, &mut la).await;
    let mut b = PeerClient::connect_url(&peer_url("bob", "tb"), "bob").await;
    take(&mut b, 1, &mut lb).await;

    // Relay with src stamped, in order.
    a.send(offer("bob", "dc_1"));
    take(&mut b, 1, &mut lb).await;
    b.send(answer("alice", "dc_1"));
    take(&mut a, 1, &mut la).await;
    for n in 0..3 {
        a.send(candidate("bob", "dc_1", n));
    }
    take(&mut b, 3, &mut lb).await;

    // Spoofed src and extra fields; payloads of every JSON kind; no payload.
    a.send_text(
        r#"{"type":"OFFER","src":"mallory","dst":"bob","x":1,"payload":{"k":[1,"two",null,true]}}"#,
    );
    a.send(json!({"type": "CANDIDATE", "dst": "bob", "payload": "a string"}));
    a.send(json!({"type": "CANDIDATE", "dst": "bob", "payload": 12.5}));
    a.send(json!({"type": "CANDIDATE", "dst": "bob"}));
    take(&mut b, 4, &mut lb).await;

    // Never forwarded: HEARTBEAT (even with a dst), unknown and server-only types.
    for kind in ["HEARTBEAT", "FOO", "OPEN", "ID-TAKEN", "offer"] {
        a.send(json!({"type": kind, "dst": "bob", "payload": kind}));
    }
    a.send(json!({"type": "ANSWER", "dst": "bob", "payload": "marker-1"}));
    take(&mut b, 1, &mut lb).await;

    // LEAVE and EXPIRE from a client are relayed to a connected peer.
    a.send(json!({"type": "LEAVE", "dst": "bob"}));
    a.send(json!({"type": "EXPIRE", "dst": "bob"}));
    take(&mut b, 2, &mut lb).await;

    // A message to oneself comes back.
    a.send(json!({"type": "CANDIDATE", "dst": "alice", "payload": "self"}));
    take(&mut a, 1, &mut la).await;

    // Offline queue: delivered right after OPEN, in order.
    a.send(offer("carol", "dc_2"));
    a.send(candidate("carol", "dc_2", 7));
    b.send(json!({"type": "HEARTBEAT"}));
    // LEAVE/EXPIRE to an offline id are not queued.
    a.send(json!({"type": "LEAVE", "dst": "carol"}));
    // A marker through bob proves alice's messages were processed before carol connects.
    a.send(json!({"type": "ANSWER", "dst": "bob", "payload": "marker-2"}));
    take(&mut b, 1, &mut lb).await;
    let mut c = PeerClient::connect_url(&peer_url("carol", "tc"), "carol").await;
    take(&mut c, 3, &mut lc).await;

    // Expiry: one EXPIRE per (sender, destination), to each sender.
    a.send(offer("dave", "dc_3"));
    a.send(candidate("dave", "dc_3", 1));
    b.send(offer("dave", "dc_4"));
    take(&mut a, 1, &mut la).await;
    take(&mut b, 1, &mut lb).await;
    // And the queue is gone: dave connecting now gets only OPEN (then a marker).
    let mut d = PeerClient::connect_url(&peer_url("dave", "td"), "dave").await;
    a.send(json!({"type": "ANSWER", "dst": "dave", "payload": "marker-3"}));
    take(&mut d, 2, &mut ld).await;

    // Admission errors, in the reference's order and texts.
    for query in [
        "id=x&token=t".to_owned(),
        "key=peerjs&token=t".to_owned(),
        "key=peerjs&id=x".to_owned(),
        "key=wrong&id=x&token=t".to_owned(),
        "key=wrong&id=alice&token=zz".to_owned(),
        "key=peerjs&id=bob&token=other".to_owned(),
    ] {
        let mut x = PeerClient::connect_url(&url(&query), "x").await;
        take(&mut x, 2, &mut lx).await;
    }

    // Query decoding: last duplicate wins, %20 and + become spaces.
    let mut e =
        PeerClient::connect_url(&url("key=peerjs&id=first&id=E%20x&token=t+1"), "E x").await;
    let mut le = Log::new();
    take(&mut e, 1, &mut le).await;
    a.send(json!({"type": "OFFER", "dst": "E x", "payload": "spaced"}));
    take(&mut e, 1, &mut le).await;

    // A closed peer's id is free at once; messages to it are queued again.
    c.close();
    // Each server frees the id once it has handled the close, which the client cannot
    // observe: until then a newcomer is told ID-TAKEN (not logged; asked again).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let (_c2, lc2) = loop {
        let mut c2 = PeerClient::connect_url(&peer_url("carol", "another"), "carol").await;
        let mut lc2 = Log::new();
        take(&mut c2, 1, &mut lc2).await;
        if lc2.first().is_none_or(|f| f["type"] != "ID-TAKEN")
            || tokio::time::Instant::now() > deadline
        {
            break (c2, lc2);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    logs.push(("alice".into(), la));
    logs.push(("bob".into(), lb));
    logs.push(("carol".into(), lc));
    logs.push(("dave".into(), ld));
    logs.push(("refused".into(), lx));
    logs.push(("E x".into(), le));
    logs.push(("carol again".into(), lc2));
    // Nothing unexpected is pending anywhere.
    for (name, client) in [
        ("alice", &mut a),
        ("bob", &mut b),
        ("dave", &mut d),
        ("E x", &mut e),
    ] {
        let extra: Vec<String> = client
            .drain()
            .into_iter()
            .map(|ev| format!("{ev:?}"))
            .collect();
        logs.push((
            format!("{name} extra"),
            extra.into_iter().map(Value::String).collect(),
        ));
    }
    logs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peerjsd_answers_the_script_exactly_as_peerjs_server_1_0_2() {
    let reference = Reference::start();
    let reference_logs = script(reference.addr).await;
    drop(reference);

    let server = TestServer::with(|c| c.expire_timeout = Duration::from_millis(EXPIRE_MS)).await;
    let our_logs = script(server.addr).await;

    for ((name, theirs), (_, ours)) in reference_logs.iter().zip(&our_logs) {
        assert_eq!(
            ours, theirs,
            "client '{name}' received different frames:\npeerjsd:   {ours:#?}\nreference: {theirs:#?}"
        );
    }
    // Sanity: the script did exercise the servers (a broken harness would compare two empty logs).
    let bob = &reference_logs[1].1;
    assert_eq!(bob.len(), 14, "bob received {} frames", bob.len());
    assert!(
        reference_logs
            .iter()
            .flat_map(|(_, l)| l)
            .all(|v| v != "TIMEOUT"),
        "{reference_logs:#?}"
    );
}

/// Requests around the REST API and what Express + `cors` answer to them. `true`: the body
/// is random (a fresh id) and only its length is compared.
const HTTP_REQUESTS: &[(&str, bool)] = &[
    (
        "OPTIONS /peerjs/id HTTP/1.1\r\nOrigin: http://a.example\r\nAccess-Control-Request-Method: GET\r\nAccess-Control-Request-Headers: x-custom\r\n",
        false,
    ),
    ("OPTIONS /peerjs/peers HTTP/1.1\r\n", false),
    (
        "OPTIONS /nowhere HTTP/1.1\r\nOrigin: http://b.example\r\n",
        false,
    ),
    (
        "POST /peerjs/id HTTP/1.1\r\nOrigin: http://a.example\r\nContent-Length: 0\r\n",
        false,
    ),
    ("PUT /peerjs/peers HTTP/1.1\r\nContent-Length: 0\r\n", false),
    ("DELETE / HTTP/1.1\r\n", false),
    (
        "GET /nowhere HTTP/1.1\r\nOrigin: http://a.example\r\n",
        false,
    ),
    ("GET /peerjs HTTP/1.1\r\n", false),
    ("GET /a%20b/%zz/x'y&z HTTP/1.1\r\n", false),
    ("GET / HTTP/1.1\r\nOrigin: http://a.example\r\n", false),
    ("GET /peerjs/peers HTTP/1.1\r\n", false),
    (
        "GET /peerjs/id HTTP/1.1\r\nOrigin: http://a.example\r\n",
        true,
    ),
    ("HEAD /peerjs/id HTTP/1.1\r\n", false),
];

/// The headers compared: what a browser acts on. (Express adds `X-Powered-By` and an ETag;
/// hyper sends no `Content-Length` with a 204; neither matters to a client.)
const COMPARED_HEADERS: &[&str] = &[
    "content-type",
    "access-control-allow-origin",
    "access-control-allow-methods",
    "access-control-allow-headers",
    "access-control-allow-credentials",
    "vary",
    "allow",
    "content-security-policy",
    "x-content-type-options",
];

async fn http_answers(addr: SocketAddr) -> Vec<Value> {
    let mut answers = Vec::new();
    for (request, random_body) in HTTP_REQUESTS {
        let response = http_raw(
            addr,
            &format!("{request}Host: x\r\nConnection: close\r\n\r\n"),
        )
        .await;
        let headers: serde_json::Map<String, Value> = COMPARED_HEADERS
            .iter()
            .filter_map(|name| Some((name.to_string(), json!(response.header(name)?))))
            .collect();
        let body = if *random_body {
            json!(response.body.len())
        } else {
            json!(response.body)
        };
        answers.push(json!({
            "request": request.lines().next(),
            "status": response.status,
            "headers": headers,
            "body": body,
        }));
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_answers_match_express_and_cors_as_peerjs_server_1_0_2_serves_them() {
    let reference = Reference::start();
    let theirs = http_answers(reference.addr).await;
    drop(reference);
    let server = TestServer::start(peerjsd::Config::default()).await;
    let ours = http_answers(server.addr).await;
    for (ours, theirs) in ours.iter().zip(&theirs) {
        assert_eq!(
            ours, theirs,
            "peerjsd (left) and the reference (right) differ"
        );
    }
    assert_eq!(ours.len(), HTTP_REQUESTS.len());
    // Sanity: the answers are the ones this test is about.
    assert_eq!(theirs[0]["status"], 204);
    assert_eq!(theirs[3]["status"], 404);
}
