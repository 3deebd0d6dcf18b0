//! What waits to be written to a peer (README: Configuration): bounded in bytes, a socket that stops taking
//! bytes is closed as a slow reader after `--write-timeout` whether or not more is sent to it,
//! its alive deadline still runs while a write waits, a peer on a slow link that keeps reading
//! keeps its id, and an honest reader is never evicted however bursty its traffic.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use peerjsd::protocol::{CloseReason, DropReason};
use serde_json::json;
use tokio::net::TcpStream;

/// An OFFER whose payload makes the frame about `len` bytes.
fn big_offer(dst: &str, len: usize) -> String {
    json!({"type": "OFFER", "dst": dst, "payload": {"sdp": "x".repeat(len)}}).to_string()
}

/// The server ended the connection of a peer that stopped reading. Its close frame is behind
/// the backlog the peer never read, so the peer may see the frame (with `reason`) or, if the
/// server gave up waiting for it to drain, a reset.
async fn assert_closed<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>, reason: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (code, text) = read_to_close(ws).await;
    assert!(
        (code == 1008 || code == 1000) && text == reason || code == 1006,
        "closed with {code} {text:?}"
    );
}

/// Starts a server where one big frame fits the queue (or not, per `outbound_bytes`).
async fn server(write_timeout: Duration, alive: Duration, outbound_bytes: usize) -> TestServer {
    TestServer::with(|c| {
        c.rate_limit = None;
        c.write_timeout = write_timeout;
        c.alive_timeout = alive;
        c.max_outbound_bytes = outbound_bytes;
    })
    .await
}

#[tokio::test]
async fn a_socket_that_takes_no_bytes_is_closed_after_the_write_timeout() {
    // 64 MiB of room: only the timeout can close it.
    let server = server(Duration::from_secs(1), Duration::from_secs(60), 64 << 20).await;
    let mut sink = small_buffer_peer(&server, "sink", "t", 2048, |s| s).await;
    let mut sender = PeerClient::open(&server, "sender").await;
    // ~12 MB: more than the kernel buffers take, then nothing more is sent.
    for _ in 0..12 {
        sender.send_text(&big_offer("sink", 1_000_000));
    }
    server
        .until("the sink closed as a slow reader", |s| {
            s.metrics.closed(CloseReason::SlowReader) == 1
        })
        .await;
    assert_closed(&mut sink, "slow_reader").await;
    // The sender is unaffected.
    let other = PeerClient::open(&server, "other").await;
    other.send(json!({"type": "ANSWER", "dst": "sender", "payload": "still here"}));
    assert_eq!(sender.expect("ANSWER").await["payload"], "still here");
    assert_eq!(server.shared.peer_count(), 2);
}

#[tokio::test]
async fn a_peer_whose_backlog_passes_the_byte_bound_is_closed_at_once() {
    let server = server(Duration::from_secs(600), Duration::from_secs(600), 2 << 20).await;
    let mut sink = small_buffer_peer(&server, "sink", "t", 2048, |s| s).await;
    let sender = PeerClient::open(&server, "sender").await;
    for _ in 0..40 {
        sender.send_text(&big_offer("sink", 500_000));
    }
    server
        .until("the sink closed as a slow reader", |s| {
            s.metrics.closed(CloseReason::SlowReader) == 1
        })
        .await;
    assert!(server.shared.metrics.dropped(DropReason::SlowReader) >= 1);
    assert_closed(&mut sink, "slow_reader").await;
}

#[tokio::test]
async fn the_alive_deadline_runs_while_a_write_waits() {
    let server = server(Duration::from_secs(600), Duration::from_secs(1), 64 << 20).await;
    let mut sink = small_buffer_peer(&server, "sink", "t", 2048, |s| s).await;
    let sender = PeerClient::open(&server, "sender").await;
    for _ in 0..12 {
        sender.send_text(&big_offer("sink", 1_000_000));
    }
    // The sender keeps itself alive; the sink sends nothing.
    server
        .until("the sink timed out", |s| {
            sender.send(json!({"type": "HEARTBEAT"}));
            s.metrics.closed(CloseReason::AliveTimeout) == 1
        })
        .await;
    assert_closed(&mut sink, "alive_timeout").await;
}

#[tokio::test]
async fn a_live_holder_on_a_slow_link_keeps_its_id() {
    let server = TestServer::with(|c| c.rate_limit = None).await;
    // About 160 KB/s: a 1 MB frame takes six seconds, four times the probe timeout.
    let mut holder = small_buffer_peer(&server, "holder", "mine", 2048, |s: TcpStream| {
        SlowLink::new(s, 8 * 1024, Duration::from_millis(50))
    })
    .await;
    let reader = tokio::spawn(async move {
        let mut frames = Vec::new();
        while let Some(Ok(message)) = holder.next().await {
            if let tokio_tungstenite::tungstenite::Message::Text(text) = message {
                let frame: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                let done = frame["payload"] == "after";
                frames.push(frame["type"].as_str().unwrap_or_default().to_owned());
                if done {
                    break;
                }
            }
        }
        frames
    });
    let attacker = PeerClient::open(&server, "attacker").await;
    attacker.send_text(&big_offer("holder", 1_000_000));
    server
        .until("the offer is on its way", |s| {
            s.metrics.relayed_total() == 1
        })
        .await;
    // Someone else asks for the id: the holder is probed while its write is under way.
    let mut hijacker = PeerClient::connect(&server, "holder", "not-mine").await;
    assert_eq!(
        hijacker.recv().await,
        json!({"type": "ID-TAKEN", "payload": {"msg": "ID is taken"}})
    );
    attacker.send(json!({"type": "ANSWER", "dst": "holder", "payload": "after"}));
    let frames = tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .expect("the holder got everything")
        .unwrap();
    assert_eq!(frames, ["OFFER", "ANSWER"]);
    assert_eq!(server.shared.metrics.closed(CloseReason::ProbeFailed), 0);
}

/// `--max-outbound-total`: once non-readers hold the server-wide total, a frame that would
/// leave its peer holding more than 64 KiB is refused and its sender gets EXPIRE, whoever the
/// peer is: a reader sent a large frame is not closed for it (that would let anyone who pins
/// the memory close whom they like), nor is a second non-reader. Small frames go on, and the
/// bytes come back when the holder goes.
#[tokio::test]
async fn past_the_outbound_total_frames_that_would_build_a_backlog_are_refused() {
    let server = TestServer::with(|c| {
        c.rate_limit = None;
        c.write_timeout = Duration::from_secs(600);
        c.alive_timeout = Duration::from_secs(600);
        c.max_outbound_total = 2 << 20;
    })
    .await;
    let first = small_buffer_peer(&server, "first", "t", 2048, |s| s).await;
    let _second = small_buffer_peer(&server, "second", "t", 2048, |s| s).await;
    let mut sender = PeerClient::open(&server, "sender").await;
    let mut honest = PeerClient::open(&server, "honest").await;
    for _ in 0..2 {
        sender.send_text(&big_offer("first", 1_000_000));
    }
    server
        .until("the first non-reader holds the total", |s| {
            s.rooms.budgets.outbound_bytes() > 1_900_000
        })
        .await;
    // Under pressure a peer that keeps reading still gets its messages...
    for n in 0..20 {
        honest.send(json!({"type": "ANSWER", "dst": "sender", "payload": n}));
        assert_eq!(sender.expect("ANSWER").await["payload"], n);
        sender.send(json!({"type": "ANSWER", "dst": "honest", "payload": n}));
        assert_eq!(honest.expect("ANSWER").await["payload"], n);
    }
    // ...but not a frame of 100 KB, nor a megabyte for the second non-reader: their sender
    // is told, and both peers stay.
    for dst in ["honest", "second"] {
        sender.send_text(&big_offer(dst, 100_000));
        assert_eq!(
            sender.recv().await,
            json!({"type": "EXPIRE", "src": dst, "dst": "sender"})
        );
    }
    assert_eq!(
        server.shared.metrics.dropped(DropReason::OutboundPressure),
        2
    );
    sender.send(json!({"type": "ANSWER", "dst": "honest", "payload": "small"}));
    assert_eq!(honest.expect("ANSWER").await["payload"], "small");
    assert_eq!(server.shared.peer_count(), 4);
    assert_eq!(server.shared.metrics.closed(CloseReason::SlowReader), 0);
    // Once the holder goes its bytes come back, and large frames go through again.
    drop(first);
    server
        .until("its bytes came back", |s| {
            s.rooms.budgets.outbound_bytes() < 64 * 1024
        })
        .await;
    sender.send_text(&big_offer("honest", 100_000));
    assert_eq!(honest.expect("OFFER").await["src"], "sender");
}

/// Bursts far larger than the old 256-frame queue, rate limit off, one core kept busy:
/// the reader keeps reading, so it is never closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_honest_reader_is_never_evicted_by_bursts() {
    const BURST: u32 = 2000;
    let server = TestServer::with(|c| c.rate_limit = None).await;
    let sender = PeerClient::open(&server, "sender").await;
    let mut reader = PeerClient::open(&server, "reader").await;
    let hog_on = Arc::new(AtomicBool::new(true));
    let hog = std::thread::spawn({
        let on = Arc::clone(&hog_on);
        move || {
            let mut x = 0u64;
            while on.load(Ordering::Relaxed) {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        }
    });
    let send = sender.sender();
    for round in 0..20 {
        for n in 0..BURST {
            send(candidate("reader", &format!("r{round}"), n).to_string());
        }
        for n in 0..BURST {
            let frame = reader.expect("CANDIDATE").await;
            assert_eq!(frame["payload"]["connectionId"], format!("r{round}"));
            assert_eq!(
                frame["payload"]["candidate"]["candidate"]
                    .as_str()
                    .and_then(|c| c.split([':', ' ']).nth(1))
                    .and_then(|n| n.parse::<u32>().ok()),
                Some(n)
            );
        }
    }
    hog_on.store(false, Ordering::Relaxed);
    hog.join().unwrap();
    assert_eq!(server.shared.metrics.closed(CloseReason::SlowReader), 0);
    assert_eq!(server.shared.metrics.dropped(DropReason::SlowReader), 0);
}
