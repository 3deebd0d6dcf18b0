//! TURN credentials (README: TURN): `GET {path}{key}/ice` — its shape, who may have credentials
//! (a join token with `--auth-secret`, a per-IP rate limit without), 401/429/404, CORS,
//! secret rotation, and the credentials against a real coturn (Debian's `coturn` package:
//! `turnserver`, and its client `turnutils_uclient`), started here on loopback ports.
//!
//! The coturn tests need the package installed (`apt-get install -y coturn`; `.ci/run` and
//! `e2e/setup.sh` install it). Without it they fail and say so: they never skip.

mod common;

use std::net::{TcpListener as StdTcpListener, UdpSocket};
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use common::*;
use hmac::{Hmac, KeyInit, Mac};
use peerjsd::Config;
use peerjsd::auth::{Secret, TokenVerifier};
use peerjsd::config::{AuthConfig, TurnConfig};
use peerjsd::http::ice::TurnSigner;
use peerjsd::metrics::IceOutcome;
use serde_json::{Value, json};
use sha1::Sha1;

/// coturn's `static-auth-secret`, and peerjsd's `--turn-secret`.
const TURN_SECRET: &str = "the coturn static-auth-secret, 32+";
/// The secret before it, during a rotation.
const OLD_TURN_SECRET: &str = "the previous coturn secret, 32+ b";
/// `--auth-secret` (join tokens).
const AUTH_SECRET: &str = "this secret is 32 bytes or more!";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// `base64(HMAC-SHA1(secret, username))`, computed here, apart from the server's signer.
fn hmac_sha1(secret: &str, username: &str) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

fn turn(secrets: &[&str], turn_uris: &[&str], stun_uris: &[&str]) -> TurnConfig {
    TurnConfig {
        secrets: secrets.iter().map(|s| Secret::new(s.as_bytes())).collect(),
        turn_uris: turn_uris.iter().map(|s| s.to_string()).collect(),
        stun_uris: stun_uris.iter().map(|s| s.to_string()).collect(),
        ttl: Duration::from_secs(24 * 3600),
        rate_limit: NonZeroU32::new(60),
    }
}

fn with_turn(config: &mut Config) {
    config.turn = Some(turn(
        &[TURN_SECRET],
        &[
            "turn:turn.example.com:3478",
            "turns:turn.example.com:5349?transport=tcp",
        ],
        &["stun:stun.example.com:3478"],
    ));
}

fn with_auth(config: &mut Config) {
    config.auth = Some(AuthConfig {
        secrets: vec![Secret::new(AUTH_SECRET.as_bytes())],
        issuer: None,
        audience: None,
    });
}

/// A join token for `sub`, valid from `at` for `ttl` seconds, signed with `secret`.
fn token(secret: &str, sub: &str, at: u64, ttl: u64) -> String {
    let signer = TokenVerifier::new(&[Secret::new(secret.as_bytes())], None, None);
    signer
        .mint(&signer.claims_for(sub, None, at, Duration::from_secs(ttl)))
        .unwrap()
}

/// The TURN entry of a 200 answer: (urls, username, credential).
fn turn_entry(body: &Value) -> (Vec<String>, String, String) {
    let servers = body["iceServers"].as_array().expect("iceServers");
    let turn = servers.last().expect("a TURN entry");
    let urls = turn["urls"]
        .as_array()
        .expect("urls")
        .iter()
        .map(|u| u.as_str().unwrap().to_owned())
        .collect();
    (
        urls,
        turn["username"].as_str().expect("username").to_owned(),
        turn["credential"].as_str().expect("credential").to_owned(),
    )
}

/// `GET path` expecting 200 with credentials; returns the parsed body.
async fn credentials(server: &TestServer, path: &str, headers: &[&str]) -> Value {
    let r = server.get(path, headers).await;
    assert_eq!(r.status, 200, "{path}: {}", r.body);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    serde_json::from_str(&r.body).unwrap()
}

#[tokio::test]
async fn off_without_a_turn_secret_and_under_another_key() {
    let plain = TestServer::with(|_| {}).await;
    let r = plain.get("/peerjs/ice", &[]).await;
    assert_eq!(r.status, 404);
    assert!(
        r.body.contains("<pre>Cannot GET /peerjs/ice</pre>"),
        "{}",
        r.body
    );

    let on = TestServer::with(with_turn).await;
    let r = on.get("/other/ice", &[]).await;
    assert_eq!(r.status, 404);
    assert!(
        r.body.contains("<pre>Cannot GET /other/ice</pre>"),
        "{}",
        r.body
    );
    assert_eq!(on.shared.metrics.ice_requests(IceOutcome::Issued), 0);
    assert_eq!(on.get("/peerjs/ice", &[]).await.status, 200);
}

#[tokio::test]
async fn without_auth_every_request_gets_fresh_credentials_for_a_random_name() {
    let server = TestServer::with(with_turn).await;
    let a = credentials(&server, "/peerjs/ice", &[]).await;
    let b = credentials(&server, "/peerjs/ice/", &[]).await;
    assert_eq!(a["ttl"], 86400);
    let stun = &a["iceServers"][0];
    assert_eq!(stun, &json!({"urls": ["stun:stun.example.com:3478"]}));
    assert_eq!(a["iceServers"].as_array().unwrap().len(), 2);
    let (urls, username, credential) = turn_entry(&a);
    assert_eq!(
        urls,
        [
            "turn:turn.example.com:3478",
            "turns:turn.example.com:5349?transport=tcp"
        ]
    );
    let (expiry, who) = username.split_once(':').unwrap();
    let expiry: u64 = expiry.parse().unwrap();
    let expected = now() + 86400;
    assert!(
        expiry.abs_diff(expected) <= 5,
        "expiry {expiry}, expected about {expected}"
    );
    assert!(
        who.len() == 32 && who.bytes().all(|b| b.is_ascii_hexdigit()),
        "{who}"
    );
    assert_eq!(credential, hmac_sha1(TURN_SECRET, &username));
    let (_, other, _) = turn_entry(&b);
    assert_ne!(
        other.split_once(':').unwrap().1,
        who,
        "two requests share a name"
    );
    assert_eq!(server.shared.metrics.ice_requests(IceOutcome::Issued), 2);

    // No STUN configured: the TURN entry alone. A custom --path mounts it too.
    let bare = TestServer::with(|c| {
        c.path = "/myapp/".into();
        c.key = "k".into();
        c.turn = Some(turn(&[TURN_SECRET], &["turn:10.0.0.1:3478"], &[]));
    })
    .await;
    let body = credentials(&bare, "/myapp/k/ice", &[]).await;
    assert_eq!(body["iceServers"].as_array().unwrap().len(), 1);
    let (urls, _, _) = turn_entry(&body);
    assert_eq!(urls, ["turn:10.0.0.1:3478"]);
}

#[tokio::test]
async fn with_auth_a_valid_join_token_is_needed_and_names_the_user() {
    let server = TestServer::with(|c| {
        with_turn(c);
        with_auth(c);
        // Under auth the per-IP limit does not apply: a token is the limit.
        c.turn.as_mut().unwrap().rate_limit = NonZeroU32::new(1);
    })
    .await;
    let good = token(AUTH_SECRET, "alice", now(), 600);
    for _ in 0..3 {
        let body = credentials(&server, &format!("/peerjs/ice?token={good}"), &[]).await;
        let (_, username, credential) = turn_entry(&body);
        assert!(username.ends_with(":alice"), "{username}");
        assert_eq!(credential, hmac_sha1(TURN_SECRET, &username));
    }
    let bearer = format!(
        "Authorization: Bearer {}",
        token(AUTH_SECRET, "bob", now(), 600)
    );
    let body = credentials(&server, "/peerjs/ice", &[&bearer]).await;
    assert!(turn_entry(&body).1.ends_with(":bob"));
    assert_eq!(server.shared.metrics.ice_requests(IceOutcome::Issued), 4);

    let refusals = [
        (
            String::new(),
            "Missing token: send the join token as ?token= or Authorization: Bearer",
        ),
        (
            format!(
                "?token={}",
                token("another secret, also 32 bytes long", "alice", now(), 600)
            ),
            "Invalid token: bad signature",
        ),
        (
            format!("?token={}", token(AUTH_SECRET, "alice", now() - 7200, 600)),
            "Invalid token: expired",
        ),
        ("?token=not-a-token".into(), "Invalid token: malformed"),
        // A `sub` that is not a PeerJS id never reaches coturn's USERNAME attribute.
        (
            format!("?token={}", token(AUTH_SECRET, "a:b", now(), 600)),
            "Invalid token: wrong id",
        ),
    ];
    for (query, text) in &refusals {
        let r = server.get(&format!("/peerjs/ice{query}"), &[]).await;
        assert_eq!((r.status, r.body.as_str()), (401, *text), "{query}");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        assert_eq!(r.header("cache-control"), Some("no-store"));
    }
    let r = server
        .get("/peerjs/ice", &["Authorization: Bearer garbage"])
        .await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (401, "Invalid token: malformed")
    );
    assert_eq!(
        server.shared.metrics.ice_requests(IceOutcome::Unauthorized),
        refusals.len() as u64 + 1
    );
    assert_eq!(server.shared.metrics.ice_requests(IceOutcome::Issued), 4);
    assert_eq!(
        server.shared.metrics.ice_requests(IceOutcome::RateLimited),
        0
    );
}

#[tokio::test]
async fn without_auth_each_client_ip_is_rate_limited() {
    let limited = |proxied: bool| {
        move |c: &mut Config| {
            with_turn(c);
            c.turn.as_mut().unwrap().rate_limit = NonZeroU32::new(3);
            c.proxied = proxied;
        }
    };
    let server = TestServer::with(limited(false)).await;
    for _ in 0..3 {
        credentials(&server, "/peerjs/ice", &[]).await;
    }
    let r = server.get("/peerjs/ice", &[]).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (
            429,
            "Too many requests: at most 3 a minute from one address"
        )
    );
    assert_eq!(r.header("cache-control"), Some("no-store"));
    // Three a minute: one more in 20 s at most.
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=20).contains(&retry), "Retry-After {retry}");
    // Not behind a proxy, X-Forwarded-For is the client's to forge: it changes nothing.
    let forged = server
        .get("/peerjs/ice", &["X-Forwarded-For: 198.51.100.1"])
        .await;
    assert_eq!(forged.status, 429);
    let m = &server.shared.metrics;
    assert_eq!(
        (
            m.ice_requests(IceOutcome::Issued),
            m.ice_requests(IceOutcome::RateLimited)
        ),
        (3, 2)
    );

    // --proxied: the address the proxy appended is the client.
    let proxied = TestServer::with(limited(true)).await;
    let from = |ip: &'static str| format!("X-Forwarded-For: 6.6.6.6, {ip}");
    for _ in 0..3 {
        credentials(&proxied, "/peerjs/ice", &[&from("198.51.100.1")]).await;
    }
    assert_eq!(
        proxied
            .get("/peerjs/ice", &[&from("198.51.100.1")])
            .await
            .status,
        429
    );
    credentials(&proxied, "/peerjs/ice", &[&from("198.51.100.2")]).await;
    // IPv6 clients share a budget per /64.
    for _ in 0..3 {
        credentials(&proxied, "/peerjs/ice", &[&from("2001:db8:0:1::1")]).await;
    }
    let r = proxied
        .get("/peerjs/ice", &[&from("2001:db8:0:1:ffff::2")])
        .await;
    assert_eq!(r.status, 429);
}

#[tokio::test]
async fn cors_is_the_rest_routes_cors() {
    let server = TestServer::with(|c| {
        with_turn(c);
        with_auth(c);
    })
    .await;
    let t = token(AUTH_SECRET, "alice", now(), 600);
    let r = server
        .get(
            &format!("/peerjs/ice?token={t}"),
            &["Origin: https://game.example"],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://game.example")
    );
    // A refusal carries them too, so the page can read the 401's text.
    let r = server
        .get("/peerjs/ice", &["Origin: https://game.example"])
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://game.example")
    );
    // The browser's preflight for a fetch with `Authorization: Bearer`.
    let preflight = server
        .http(&format!(
            "OPTIONS /peerjs/ice HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\
             Origin: https://game.example\r\nAccess-Control-Request-Method: GET\r\n\
             Access-Control-Request-Headers: authorization\r\n\r\n",
            server.addr
        ))
        .await;
    assert_eq!(
        preflight.status, 204,
        "as the cors package answers a preflight"
    );
    assert_eq!(
        preflight.header("access-control-allow-origin"),
        Some("https://game.example")
    );
    assert_eq!(
        preflight.header("access-control-allow-headers"),
        Some("authorization")
    );
    assert!(
        preflight
            .header("access-control-allow-methods")
            .is_some_and(|m| m.contains("GET")),
        "{preflight:?}"
    );

    // With --cors, another origin gets no CORS headers (the browser then hides the answer).
    let listed = TestServer::with(|c| {
        with_turn(c);
        c.cors = vec!["https://game.example".into()];
    })
    .await;
    let r = listed
        .get("/peerjs/ice", &["Origin: https://evil.example"])
        .await;
    assert_eq!(r.header("access-control-allow-origin"), None);
    let r = listed
        .get("/peerjs/ice", &["Origin: https://game.example"])
        .await;
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://game.example")
    );
}

#[tokio::test]
async fn during_a_rotation_the_first_secret_signs() {
    let server = TestServer::with(|c| {
        c.turn = Some(turn(
            &[TURN_SECRET, OLD_TURN_SECRET],
            &["turn:127.0.0.1:3478"],
            &[],
        ));
    })
    .await;
    let (_, username, credential) = turn_entry(&credentials(&server, "/peerjs/ice", &[]).await);
    assert_eq!(credential, hmac_sha1(TURN_SECRET, &username));
    assert_ne!(credential, hmac_sha1(OLD_TURN_SECRET, &username));
}

// ------------------------------------------------------------------ a real coturn

/// Relay port blocks handed to the coturns of this test binary, one each.
static RELAY_BLOCK: AtomicU16 = AtomicU16::new(0);

/// A coturn (`turnserver`) on loopback with the TURN REST scheme, for the life of the value.
struct Coturn {
    port: u16,
    log: PathBuf,
    dir: PathBuf,
    child: std::process::Child,
}

impl Coturn {
    /// Starts coturn with these `static-auth-secret`s and waits until it listens.
    async fn start(secrets: &[&str]) -> Coturn {
        let port = free_port();
        let block = RELAY_BLOCK.fetch_add(1, Ordering::Relaxed);
        // Below the ephemeral range, a block of 40 per coturn, apart per process.
        let min = 20_000 + (std::process::id() % 100) as u16 * 100 + block * 40;
        let dir =
            std::env::temp_dir().join(format!("peerjsd-coturn-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("turn.log");
        // The README's coturn configuration (use-auth-secret, a static-auth-secret line per
        // secret, realm, ports), on loopback, plus what a test needs: peers on loopback, no
        // TLS, a log of its own (`verbose`: coturn logs each allocation and refusal with its
        // username, which the tests read), and no system paths.
        let mut conf = format!(
            "listening-ip=127.0.0.1\nlistening-port={port}\nrelay-ip=127.0.0.1\n\
             min-port={min}\nmax-port={max}\nrealm=peerjsd.test\nuse-auth-secret\n",
            max = min + 39
        );
        for secret in secrets {
            conf.push_str(&format!("static-auth-secret={secret}\n"));
        }
        conf.push_str(&format!(
            "fingerprint\nno-cli\nno-multicast-peers\ndenied-peer-ip=10.0.0.0-10.255.255.255\n\
             denied-peer-ip=172.16.0.0-172.31.255.255\ndenied-peer-ip=192.168.0.0-192.168.255.255\n\
             no-tls\nno-dtls\nallow-loopback-peers\n\
             verbose\nno-stdout-log\nsimple-log\nlog-file={}\npidfile={}\nuserdb={}\n",
            log.display(),
            dir.join("pid").display(),
            dir.join("turndb").display()
        ));
        let conf_file = dir.join("turnserver.conf");
        std::fs::write(&conf_file, conf).unwrap();
        let mut command = std::process::Command::new("turnserver");
        command
            .arg("-c")
            .arg(&conf_file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = match command.spawn() {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "coturn is not installed (no `turnserver` on PATH): apt-get install -y coturn \
                 (.ci/run, scripts/test and e2e/setup.sh install it); these tests need a real TURN server"
            ),
            Err(e) => panic!("cannot start turnserver: {e}"),
        };
        let coturn = Coturn {
            port,
            log,
            dir,
            child,
        };
        coturn
            .wait_log(&format!("UDP listener opened on: 127.0.0.1:{port}"))
            .await;
        coturn
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until coturn has logged a line containing `needle` (it writes its log file as
    /// it goes), or fails with the log.
    async fn wait_log(&self, needle: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !self.log_text().contains(needle) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "coturn never logged {needle:?}; its log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Runs `turnutils_uclient` against this coturn with `username`/`credential`: two
    /// allocations on coturn that send each other `messages` packets through their relays
    /// (`-y`: client to client; `-c`: no RTCP pair). Returns (success, output).
    async fn uclient(&self, username: &str, credential: &str) -> (bool, String) {
        let run = tokio::process::Command::new("turnutils_uclient")
            .args(["-y", "-c", "-n", "3", "-l", "64"])
            .args(["-p", &self.port.to_string()])
            .args(["-u", username, "-w", credential])
            .arg("127.0.0.1")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        let out = match tokio::time::timeout(Duration::from_secs(60), run).await {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => panic!("cannot run turnutils_uclient (package coturn): {e}"),
            Err(_) => panic!("turnutils_uclient did not finish within 60 s"),
        };
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// The credential allocates relays on coturn and data goes through them.
    async fn assert_relays(&self, username: &str, credential: &str) {
        let (ok, out) = self.uclient(username, credential).await;
        assert!(ok, "uclient failed for {username}:\n{out}");
        // uclient's summary: every packet sent through one relay arrived through the other.
        let totals = out
            .lines()
            .rev()
            .find_map(|l| l.split_once("start_mclient: tot_send_msgs="))
            .map(|(_, rest)| rest.to_owned())
            .unwrap_or_else(|| panic!("no totals in uclient's output:\n{out}"));
        let (sent, received) = totals.split_once(", tot_recv_msgs=").unwrap();
        let (sent, received): (u32, u32) =
            (sent.parse().unwrap(), received.trim().parse().unwrap());
        assert!(
            sent > 0 && received == sent,
            "sent {sent}, received {received}:\n{out}"
        );
        assert!(out.contains("Total lost packets 0 "), "{out}");
        self.wait_log(&format!(
            "user <{username}>: incoming packet ALLOCATE processed, success"
        ))
        .await;
    }

    /// coturn answers the credential's allocation with 401 and uclient gives up.
    async fn assert_refuses(&self, username: &str, credential: &str) {
        let (ok, out) = self.uclient(username, credential).await;
        assert!(
            !ok,
            "uclient succeeded with {username} / {credential}:\n{out}"
        );
        assert!(out.contains("Cannot complete Allocation"), "{out}");
        self.wait_log(&format!(
            "user <{username}>: incoming packet message processed, error 401: Unauthorized"
        ))
        .await;
        assert!(
            !self.log_text().contains(&format!(
                "user <{username}>: incoming packet ALLOCATE processed, success"
            )),
            "coturn allocated for {username}"
        );
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A loopback port free for both TCP and UDP (coturn listens on both).
fn free_port() -> u16 {
    loop {
        let tcp = StdTcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// The host and port of a `turn:host:port` URI.
fn turn_port(uri: &str) -> u16 {
    let rest = uri
        .strip_prefix("turn:127.0.0.1:")
        .unwrap_or_else(|| panic!("{uri}"));
    rest.split('?').next().unwrap().parse().unwrap()
}

/// A peerjsd whose `/ice` points at `coturn`, signing with `secrets`, with join tokens.
async fn peerjsd_for(coturn: &Coturn, secrets: &[&str]) -> TestServer {
    let uri = format!("turn:127.0.0.1:{}?transport=udp", coturn.port);
    TestServer::with(|c| {
        c.turn = Some(turn(secrets, &[&uri], &[]));
        with_auth(c);
    })
    .await
}

/// The credential `/ice` hands the user `sub`, checked to name `coturn`.
async fn minted(server: &TestServer, coturn: &Coturn, sub: &str) -> (String, String) {
    let t = token(AUTH_SECRET, sub, now(), 600);
    let body = credentials(server, &format!("/peerjs/ice?token={t}"), &[]).await;
    let (urls, username, credential) = turn_entry(&body);
    assert_eq!(turn_port(&urls[0]), coturn.port);
    (username, credential)
}

#[tokio::test]
async fn coturn_relays_with_the_credentials_ice_hands_out() {
    let coturn = Coturn::start(&[TURN_SECRET]).await;
    let server = peerjsd_for(&coturn, &[TURN_SECRET]).await;
    let (username, credential) = minted(&server, &coturn, "alice").await;
    assert!(username.ends_with(":alice"));
    coturn.assert_relays(&username, &credential).await;
    // Without auth: a random name, the same result.
    let open = TestServer::with(|c| {
        c.turn = Some(turn(
            &[TURN_SECRET],
            &[&format!("turn:127.0.0.1:{}", coturn.port)],
            &[],
        ));
    })
    .await;
    let (_, username, credential) = turn_entry(&credentials(&open, "/peerjs/ice", &[]).await);
    coturn.assert_relays(&username, &credential).await;
}

#[tokio::test]
async fn coturn_refuses_expired_and_tampered_credentials_with_401() {
    let coturn = Coturn::start(&[TURN_SECRET]).await;
    let server = peerjsd_for(&coturn, &[TURN_SECRET]).await;
    let (username, credential) = minted(&server, &coturn, "mallory").await;
    let (expiry, _) = username.split_once(':').unwrap();
    // Another user's name under mallory's credential.
    coturn
        .assert_refuses(&format!("{expiry}:alice"), &credential)
        .await;
    // A later expiry under the same credential.
    let later = expiry.parse::<u64>().unwrap() + 3600;
    coturn
        .assert_refuses(&format!("{later}:mallory"), &credential)
        .await;
    // The credential changed.
    let mut bytes = base64::engine::general_purpose::STANDARD
        .decode(&credential)
        .unwrap();
    bytes[0] ^= 1;
    let forged = base64::engine::general_purpose::STANDARD.encode(&bytes);
    coturn.assert_refuses(&username, &forged).await;
    // Expired: what the endpoint's signer makes with an expiry a minute ago.
    let signer = TurnSigner::new(&Secret::new(TURN_SECRET.as_bytes())).unwrap();
    let old = signer.sign(now() - 60, "mallory");
    coturn.assert_refuses(&old.username, &old.credential).await;
    // The untouched credential still works (the refusals were for the right reasons).
    coturn.assert_relays(&username, &credential).await;
}

#[tokio::test]
async fn coturn_with_both_secrets_takes_either_and_peerjsd_signs_with_the_first() {
    // coturn mid-rotation: both secrets. coturn after it: the new one only.
    let both = Coturn::start(&[TURN_SECRET, OLD_TURN_SECRET]).await;
    let new_only = Coturn::start(&[TURN_SECRET]).await;
    // peerjsd before the switch signs with the old secret; after it, with the new one first.
    let before = peerjsd_for(&both, &[OLD_TURN_SECRET]).await;
    let after = peerjsd_for(&both, &[TURN_SECRET, OLD_TURN_SECRET]).await;
    let (u_old, c_old) = minted(&before, &both, "p1").await;
    let (u_new, c_new) = minted(&after, &both, "p2").await;
    both.assert_relays(&u_old, &c_old).await;
    both.assert_relays(&u_new, &c_new).await;
    // Once coturn drops the old secret, only what the first secret signed works.
    new_only.assert_relays(&u_new, &c_new).await;
    new_only.assert_refuses(&u_old, &c_old).await;
}
