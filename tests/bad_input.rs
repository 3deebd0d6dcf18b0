//! Bad input never hurts: each kind is answered as the README's deviations say, counted, and every other peer
//! keeps being served.

mod common;

use common::*;
use futures_util::SinkExt;
use peerjsd::protocol::{CloseReason, DropReason};
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

/// Two honest peers; returns them after checking they can talk.
async fn honest_pair(server: &TestServer) -> (PeerClient, PeerClient) {
    let alice = PeerClient::open(server, "alice").await;
    let mut bob = PeerClient::open(server, "bob").await;
    alice.send(json!({"type": "OFFER", "dst": "bob", "payload": "hello"}));
    assert_eq!(bob.recv().await["payload"], "hello");
    (alice, bob)
}

async fn still_served(alice: &PeerClient, bob: &mut PeerClient, marker: &str) {
    alice.send(json!({"type": "CANDIDATE", "dst": "bob", "payload": marker}));
    assert_eq!(
        bob.recv().await["payload"],
        marker,
        "honest peers still served"
    );
}

#[tokio::test]
async fn malformed_and_non_object_json_are_dropped_and_the_peer_keeps_being_read() {
    let server = TestServer::start(peerjsd::Config::default()).await;
    let (alice, mut bob) = honest_pair(&server).await;
    let mut mallory = PeerClient::open(&server, "mallory").await;
    for text in [
        "{",
        "not json",
        "{\"type\":\"OFFER\",}",
        "null",
        "42",
        "\"OFFER\"",
        "[1,2]",
        "true",
        "",
    ] {
        mallory.send_text(text);
    }
    // Non-string dst is malformed too.
    mallory.send(json!({"type": "OFFER", "dst": 12, "payload": 1}));
    // Mallory is still connected and read: a good message now is relayed.
    mallory.send(json!({"type": "OFFER", "dst": "bob", "payload": "after"}));
    assert_eq!(
        bob.recv().await,
        json!({"type": "OFFER", "src": "mallory", "dst": "bob", "payload": "after"})
    );
    assert_eq!(server.shared.metrics.dropped(DropReason::Malformed), 10);
    still_served(&alice, &mut bob, "m1").await;
    assert!(
        mallory.drain().is_empty(),
        "no ERROR for a recoverable problem"
    );
}

#[tokio::test]
async fn binary_frames_are_dropped_and_counted() {
    let server = TestServer::start(peerjsd::Config::default()).await;
    let (alice, mut bob) = honest_pair(&server).await;
    let mallory = PeerClient::open(&server, "mallory").await;
    mallory.send_message(Message::binary(
        br#"{"type":"OFFER","dst":"bob","payload":1}"#.to_vec(),
    ));
    mallory.send(json!({"type": "OFFER", "dst": "bob", "payload": "text still works"}));
    assert_eq!(bob.recv().await["payload"], "text still works");
    assert_eq!(server.shared.metrics.dropped(DropReason::Binary), 1);
    still_served(&alice, &mut bob, "b1").await;
}

#[tokio::test]
async fn a_peer_that_keeps_sending_garbage_is_closed() {
    let server = TestServer::start(peerjsd::Config::default()).await;
    let (alice, mut bob) = honest_pair(&server).await;
    let mut mallory = PeerClient::open(&server, "mallory").await;
    for _ in 0..16 {
        mallory.send_text("garbage");
    }
    let (code, reason) = mallory.closed().await;
    assert_eq!((code, reason.as_str()), (1008, "malformed"));
    server
        .until("closed", |s| s.metrics.closed(CloseReason::Malformed) == 1)
        .await;
    still_served(&alice, &mut bob, "g1").await;
}

#[tokio::test]
async fn invalid_utf8_is_a_protocol_error_1007() {
    let server = TestServer::start(peerjsd::Config::default()).await;
    let (alice, mut bob) = honest_pair(&server).await;
    let mut mallory = PeerClient::open(&server, "mallory").await;
    let bad = Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
    mallory.send_message(Message::Frame(bad));
    let (code, _) = mallory.closed().await;
    assert_eq!(code, 1007);
    still_served(&alice, &mut bob, "u1").await;
    server.until("mallory gone", |s| s.peer_count() == 2).await;
}

#[tokio::test]
async fn a_message_over_the_size_limit_closes_with_1009() {
    let server = TestServer::with(|c| c.max_message_size = 64 * 1024).await;
    let (alice, mut bob) = honest_pair(&server).await;
    let mut mallory = PeerClient::open(&server, "mallory").await;
    let huge = format!(
        r#"{{"type":"OFFER","dst":"bob","payload":"{}"}}"#,
        "x".repeat(70 * 1024)
    );
    mallory.send_text(&huge);
    let (code, _) = mallory.closed().await;
    assert_eq!(code, 1009);
    assert_eq!(server.shared.metrics.dropped(DropReason::TooLarge), 1);
    // Just under the limit is fine.
    let big = format!(
        r#"{{"type":"OFFER","dst":"bob","payload":"{}"}}"#,
        "y".repeat(60 * 1024)
    );
    alice.send_text(&big);
    assert_eq!(
        bob.recv().await["payload"].as_str().map(str::len),
        Some(60 * 1024)
    );
}

#[tokio::test]
async fn a_client_that_vanishes_mid_message_is_cleaned_up() {
    let server = TestServer::start(peerjsd::Config::default()).await;
    let (alice, mut bob) = honest_pair(&server).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(server.peer_url("mallory", "t"))
        .await
        .unwrap();
    server
        .until("mallory registered", |s| s.peer_count() == 3)
        .await;
    // Half a frame: a text frame header announcing 1000 bytes, then only a few, then gone.
    let stream = match ws.get_mut() {
        tokio_tungstenite::MaybeTlsStream::Plain(stream) => stream,
        _ => unreachable!(),
    };
    stream
        .write_all(&[0x81, 0xFE, 0x03, 0xE8, 1, 2, 3, 4, b'{', b'"'])
        .await
        .unwrap();
    stream.flush().await.unwrap();
    drop(ws);
    server.until("mallory gone", |s| s.peer_count() == 2).await;
    assert_eq!(server.shared.metrics.closed(CloseReason::ClientGone), 1);
    still_served(&alice, &mut bob, "v1").await;
}

#[tokio::test]
async fn a_flood_of_bad_frames_from_many_peers_leaves_honest_traffic_intact() {
    let server = TestServer::start(peerjsd::Config::default()).await;
    let (alice, mut bob) = honest_pair(&server).await;
    let mut attackers = Vec::new();
    for n in 0..20 {
        let (mut ws, _) = tokio_tungstenite::connect_async(server.peer_url(&format!("m{n}"), "t"))
            .await
            .unwrap();
        for _ in 0..10 {
            let _ = ws.feed(Message::text("{oops")).await;
            let _ = ws.feed(Message::binary(vec![0u8; 100])).await;
        }
        let _ = ws.flush().await;
        attackers.push(ws);
    }
    for n in 0..50 {
        still_served(&alice, &mut bob, &format!("f{n}")).await;
    }
    server
        .until("all attackers closed", |s| {
            s.metrics.closed(CloseReason::Malformed) == 20
        })
        .await;
}

#[tokio::test]
async fn a_key_over_64_characters_is_refused_with_a_clear_text() {
    let server = TestServer::start(peerjsd::Config::default()).await;
    let (alice, mut bob) = honest_pair(&server).await;
    let url = server.ws_url(&format!("key={}&id=x&token=t", "k".repeat(65)));
    let mut long = PeerClient::connect_url(&url, "x").await;
    assert_eq!(
        long.recv().await,
        json!({"type": "ERROR", "payload": {"msg": "Invalid key: at most 64 characters"}})
    );
    long.closed().await;
    // 64 characters is a key like any other: a wrong one is just wrong.
    let url = server.ws_url(&format!("key={}&id=y&token=t", "k".repeat(64)));
    let mut wrong = PeerClient::connect_url(&url, "y").await;
    assert_eq!(
        wrong.recv().await,
        json!({"type": "ERROR", "payload": {"msg": "Invalid key provided"}})
    );
    assert_eq!(
        server
            .shared
            .metrics
            .rejected(peerjsd::protocol::Rejection::InvalidName),
        1
    );
    still_served(&alice, &mut bob, "after-long-key").await;
}
