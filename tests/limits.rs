//! Abuse limits (README: Configuration): rate limit, connection limits, Origin allow-list, and bounded memory
//! under a flood — each counted by reason in the metrics.

mod common;

use common::*;
use peerjsd::protocol::{CloseReason, DropReason, Rejection};
use serde_json::json;
use std::num::NonZeroU32;
use std::time::Duration;

#[tokio::test]
async fn over_the_rate_limit_messages_are_dropped_and_the_peer_stays() {
    let server = TestServer::with(|c| c.rate_limit = NonZeroU32::new(10)).await;
    let alice = PeerClient::open(&server, "alice").await;
    let mut bob = PeerClient::open(&server, "bob").await;
    let started = std::time::Instant::now();
    for n in 0..50 {
        alice.send(json!({"type": "CANDIDATE", "dst": "bob", "payload": n}));
    }
    server
        .until("50 frames read", |s| s.metrics.received.get() >= 50)
        .await;
    // The burst (10) passes, plus what refilled while the frames were on their way (10 a
    // second): however slow the machine, at least the rest is dropped, and at most 40.
    let refilled = (started.elapsed().as_secs_f64() * 10.0).ceil() as u64;
    let dropped = server.shared.metrics.dropped(DropReason::RateLimited);
    assert!(
        dropped <= 40 && dropped + 10 + refilled >= 50,
        "{dropped} dropped, {refilled} tokens refilled meanwhile"
    );
    let mut delivered = Vec::new();
    for _ in 0..(50 - dropped) {
        delivered.push(bob.recv().await["payload"].as_u64().unwrap());
    }
    assert_eq!(
        delivered[..10],
        (0..10).collect::<Vec<_>>()[..],
        "the burst goes through in order"
    );
    // Still connected, no ERROR: once tokens refill, messages flow again.
    let mut marker_seen = false;
    for attempt in 0..50 {
        alice.send(json!({"type": "ANSWER", "dst": "bob", "payload": format!("marker{attempt}")}));
        if let Ok(frame) = tokio::time::timeout(Duration::from_millis(200), bob.recv()).await {
            assert!(frame["payload"].as_str().unwrap().starts_with("marker"));
            marker_seen = true;
            break;
        }
    }
    assert!(marker_seen);
}

#[tokio::test]
async fn heartbeats_count_against_the_rate_limit() {
    let server = TestServer::with(|c| c.rate_limit = NonZeroU32::new(5)).await;
    let alice = PeerClient::open(&server, "alice").await;
    let _bob = PeerClient::open(&server, "bob").await;
    for _ in 0..5 {
        alice.send(json!({"type": "HEARTBEAT"}));
    }
    alice.send(json!({"type": "OFFER", "dst": "bob", "payload": 1}));
    server
        .until("the offer was dropped", |s| {
            s.metrics.dropped(DropReason::RateLimited) == 1
        })
        .await;
    assert_eq!(server.shared.metrics.relayed_total(), 0);
}

#[tokio::test]
async fn a_peer_that_stays_over_the_limit_gets_error_and_1008() {
    let server = TestServer::with(|c| {
        c.rate_limit = NonZeroU32::new(10);
        c.rate_limit_grace = Duration::from_millis(800);
    })
    .await;
    let mut flooder = PeerClient::open(&server, "flooder").await;
    let mut honest = PeerClient::open(&server, "honest").await;
    let flood = tokio::spawn({
        let started = std::time::Instant::now();
        let sender = flooder.sender();
        async move {
            while started.elapsed() < Duration::from_secs(5) {
                for _ in 0..10 {
                    sender(
                        json!({"type": "CANDIDATE", "dst": "honest", "payload": "spam"})
                            .to_string(),
                    );
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    let error = loop {
        let frame = flooder.recv().await;
        if frame["type"] == "ERROR" {
            break frame;
        }
    };
    assert_eq!(
        error,
        json!({"type": "ERROR", "payload": {"msg": "Rate limit exceeded"}})
    );
    assert_eq!(flooder.closed().await, (1008, "rate_limited".into()));
    flood.abort();
    server
        .until("counted", |s| {
            s.metrics.closed(CloseReason::RateLimited) == 1
        })
        .await;
    // The honest peer got some spam (within the limit) and is fine.
    let other = PeerClient::open(&server, "other").await;
    other.send(json!({"type": "ANSWER", "dst": "honest", "payload": "marker"}));
    while honest.recv().await["payload"] != "marker" {}
}

#[tokio::test]
async fn connections_per_ip_are_capped_with_429() {
    let server = TestServer::with(|c| c.max_connections_per_ip = Some(3)).await;
    let mut clients = Vec::new();
    for n in 0..3 {
        clients.push(PeerClient::open(&server, &format!("p{n}")).await);
    }
    let refused = server
        .http(&upgrade_request("/peerjs?key=peerjs&id=p3&token=t", ""))
        .await;
    assert_eq!(refused.status, 429);
    assert_eq!(server.shared.metrics.rejected(Rejection::PerIp), 1);
    clients.pop().unwrap().close();
    server
        .until("a slot freed", |s| {
            s.connections_from("127.0.0.1".parse().unwrap()) == 2
        })
        .await;
    PeerClient::open(&server, "p3").await;
}

/// Sends an upgrade request and keeps the connection open; returns the status and the socket.
async fn upgrade_held(server: &TestServer, request: &str) -> (u16, tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, stream.read(&mut byte))
            .await
            .expect("response")
            .unwrap();
        assert_eq!(n, 1, "closed before the response head ended");
        head.push(byte[0]);
    }
    let status = String::from_utf8_lossy(&head)[9..12].parse().unwrap();
    (status, stream)
}

#[tokio::test]
async fn behind_a_proxy_the_forwarded_ip_is_what_counts() {
    let server = TestServer::with(|c| {
        c.max_connections_per_ip = Some(1);
        c.proxied = true;
    })
    .await;
    let (first, _held) = upgrade_held(
        &server,
        &upgrade_request(
            "/peerjs?key=peerjs&id=a&token=t",
            "X-Forwarded-For: 198.51.100.1\r\n",
        ),
    )
    .await;
    assert_eq!(first, 101);
    // The same forwarded client again: refused. Another one through the same proxy: fine.
    let again = server
        .http(&upgrade_request(
            "/peerjs?key=peerjs&id=b&token=t",
            "X-Forwarded-For: 198.51.100.1\r\n",
        ))
        .await;
    assert_eq!(again.status, 429);
    // A forged first entry does not help: the proxy's (last) entry counts.
    let forged = server
        .http(&upgrade_request(
            "/peerjs?key=peerjs&id=c&token=t",
            "X-Forwarded-For: 203.0.113.9, 198.51.100.1\r\n",
        ))
        .await;
    assert_eq!(forged.status, 429);
    let (other, _held2) = upgrade_held(
        &server,
        &upgrade_request(
            "/peerjs?key=peerjs&id=d&token=t",
            "X-Forwarded-For: 198.51.100.2\r\n",
        ),
    )
    .await;
    assert_eq!(other, 101);
    // Without --proxied the header is ignored: all of these share 127.0.0.1.
    let direct = TestServer::with(|c| c.max_connections_per_ip = Some(1)).await;
    let (first, _held3) = upgrade_held(
        &direct,
        &upgrade_request(
            "/peerjs?key=peerjs&id=a&token=t",
            "X-Forwarded-For: 198.51.100.1\r\n",
        ),
    )
    .await;
    assert_eq!(first, 101);
    let second = direct
        .http(&upgrade_request(
            "/peerjs?key=peerjs&id=b&token=t",
            "X-Forwarded-For: 198.51.100.2\r\n",
        ))
        .await;
    assert_eq!(second.status, 429);
}

#[tokio::test]
async fn with_an_allow_list_other_origins_get_403_before_upgrade() {
    let server = TestServer::with(|c| c.cors = vec!["https://game.example".into()]).await;
    let query = "/peerjs?key=peerjs&id=a&token=t";
    let evil = server
        .http(&upgrade_request(query, "Origin: https://evil.example\r\n"))
        .await;
    assert_eq!(evil.status, 403);
    let none = server.http(&upgrade_request(query, "")).await;
    assert_eq!(none.status, 403);
    let good = server
        .http(&upgrade_request(query, "Origin: https://game.example\r\n"))
        .await;
    assert_eq!(good.status, 101);
    assert_eq!(server.shared.metrics.rejected(Rejection::Origin), 2);
}

#[tokio::test]
async fn the_concurrent_limit_refuses_with_the_reference_text_but_not_a_take_over() {
    let server = TestServer::with(|c| c.concurrent_limit = 2).await;
    let _a = PeerClient::open_with_token(&server, "a", "ta").await;
    let b = PeerClient::open_with_token(&server, "b", "tb").await;
    let mut c = PeerClient::connect(&server, "c", "tc").await;
    assert_eq!(
        c.recv().await,
        json!({"type": "ERROR", "payload": {"msg": "Server has reached its concurrent user limit"}})
    );
    assert_eq!(c.closed().await.0, 1013);
    // A take-over replaces a member, so it is admitted at the limit.
    let _b2 = PeerClient::open_with_token(&server, "b", "tb").await;
    drop(b);
    assert_eq!(server.shared.metrics.rejected(Rejection::ServerFull), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_offline_queue_stays_within_its_budget_under_a_flood_of_offline_and_bad_messages() {
    const QUEUE_BYTES: usize = 2 * 1024 * 1024;
    let server = TestServer::with(|c| {
        c.rate_limit = None;
        c.max_queued_bytes = QUEUE_BYTES;
        c.max_queue_per_peer = 8;
        c.max_message_size = 64 * 1024;
        c.expire_timeout = Duration::from_secs(60);
    })
    .await;
    let honest_a = PeerClient::open(&server, "honest-a").await;
    let mut honest_b = PeerClient::open(&server, "honest-b").await;
    let mut attackers = Vec::new();
    for n in 0..8 {
        attackers.push(PeerClient::open(&server, &format!("attacker{n}")).await);
    }
    let payload = "p".repeat(1000);
    let mut sent = 0u64;
    // Two floods of 20,000 offers (~1.1 KB) to distinct offline ids, plus garbage: an unbounded
    // queue (as in peerjs-server) would keep ~44 MB for the expire timeout. What it costs in the
    // server's memory (RSS) is measured by tests/abuse.rs, on a server process of its own.
    for flood in 0..2 {
        for round in 0..25 {
            for (n, attacker) in attackers.iter().enumerate() {
                for k in 0..100 {
                    let dst = format!("ghost-{flood}-{n}-{round}-{k}");
                    attacker.send(json!({"type": "OFFER", "dst": dst, "payload": payload}));
                }
                attacker.send_text("{not json");
                sent += 100;
            }
            // Honest traffic keeps flowing during the flood.
            honest_a.send(json!({"type": "CANDIDATE", "dst": "honest-b", "payload": round}));
            loop {
                let frame = honest_b.recv().await;
                if frame["src"] == "honest-a" {
                    assert_eq!(frame["payload"], round);
                    break;
                }
            }
        }
        server
            .until("flood processed", |s| {
                s.metrics.dropped(DropReason::QueueOverflow)
                    + s.metrics.dropped(DropReason::QueueShare)
                    + s.metrics.queued_messages.get() as u64
                    >= sent
            })
            .await;
        let queued = server.shared.metrics.queued_bytes.get() as usize;
        assert!(queued <= QUEUE_BYTES, "{queued} bytes queued");
        // The attackers' EXPIREs pile up in this test's own client buffers: empty them.
        let expires: usize = attackers.iter_mut().map(|a| a.drain().len()).sum();
        eprintln!("flood {flood}: attackers got {expires} frames back");
    }
    let refused = server.shared.metrics.dropped(DropReason::QueueOverflow)
        + server.shared.metrics.dropped(DropReason::QueueShare);
    assert!(refused > 35_000, "{refused} refused");
    assert_eq!(server.shared.metrics.dropped(DropReason::Malformed), 400);
    // Oversized frames close their senders and are not buffered.
    for attacker in &attackers[..2] {
        attacker.send_text(&"x".repeat(200 * 1024));
    }
    server
        .until("oversized closed", |s| {
            s.metrics.closed(CloseReason::TooLarge) == 2
        })
        .await;
    assert_eq!(server.shared.metrics.dropped(DropReason::TooLarge), 2);
}
