//! The signaling protocol against a real server: admission, relay, HEARTBEAT, LEAVE, EXPIRE,
//! unknown types, query decoding (docs/PROTOCOL.md §1–§4).

mod common;

use common::*;
use peerjsd::protocol::{DropReason, Rejection};
use serde_json::json;

#[tokio::test]
async fn open_then_offer_answer_candidates_relay_with_src_stamped() {
    let server = TestServer::start(peerjsd::Config::default()).await;
    let mut alice = PeerClient::open(&server, "alice").await;
    let mut bob = PeerClient::open(&server, "bob").await;

    let offer = offer("bob", "dc_1");
    alice.send(offer.clone());
    assert_eq!(bob.recv().await, relayed(&offer, "alice"));

    let answer = answer("alice", "dc_1");
    bob.send(answer.clone());
    assert_eq!(alice.recv().await, relayed(&answer, "bob"));

    for n in 0..5 {
        alice.send(candidate("bob", "dc_1", n));
    }
    for n in 0..5 {
        assert_eq!(
            bob.recv().await,
            relayed(&candidate("bob", "dc_1", n), "alice"),
            "candidate {n} in order"
        );
    }
    assert_eq!(server.shared.metrics.relayed_total(), 7);
}

#[tokio::test]
async fn validation_order_and_texts_are_the_references() {
    let server = TestServer::start(peerjsd::Config::default()).await;
    let cases = [
        (
            "id=a&token=t",
            "No id, token, or key supplied to websocket server",
        ),
        (
            "key=peerjs&token=t",
            "No id, token, or key supplied to websocket server",
        ),
        (
            "key=peerjs&id=a",
            "No id, token, or key supplied to websocket server",
        ),
        (
            "key=peerjs&id=&token=t",
            "No id, token, or key supplied to websocket server",
        ),
        // The key is checked before the id: a wrong key never yields ID-TAKEN or an id error.
        ("key=nope&id=a&token=t", "Invalid key provided"),
        ("key=nope&id=-bad-&token=t", "Invalid key provided"),
    ];
    for (query, text) in cases {
        let mut peer = PeerClient::connect_url(&server.ws_url(query), "x").await;
        assert_eq!(
            peer.recv().await,
            json!({"type": "ERROR", "payload": {"msg": text}}),
            "{query}"
        );
        let (code, _) = peer.closed().await;
        assert_eq!(code, 1008, "{query}");
    }
    assert_eq!(server.shared.metrics.rejected(Rejection::MissingParams), 4);
    assert_eq!(server.shared.metrics.rejected(Rejection::InvalidKey), 2);
    assert_eq!(server.shared.peer_count(), 0);
}

#[tokio::test]
async fn ids_and_tokens_outside_the_client_grammar_are_refused_with_a_clear_text() {
    let server = TestServer::start(peerjsd::Config::default()).await;
    let long_token = "t".repeat(65);
    let long_id = "i".repeat(65);
    let cases = [
        ("-a".to_owned(), "tok".to_owned(), "Invalid id"),
        ("a..b".to_owned(), "tok".to_owned(), "Invalid id"),
        ("null%00".to_owned(), "tok".to_owned(), "Invalid id"),
        (long_id, "tok".to_owned(), "Invalid id"),
        ("ok".to_owned(), long_token, "Invalid token"),
    ];
    for (id, token, text) in cases {
        let mut peer = PeerClient::connect(&server, &id, &token).await;
        let frame = peer.expect("ERROR").await;
        let msg = frame["payload"]["msg"].as_str().unwrap_or_default();
        assert!(msg.starts_with(text), "{id}: {msg}");
        peer.closed().await;
    }
    // The longest allowed id works.
    PeerClient::open(&server, &"i".repeat(64)).await;
    assert_eq!(server.shared.metrics.rejected(Rejection::InvalidName), 5);
}

#[tokio::test]
async fn only_type_src_dst_payload_are_relayed_and_the_payload_is_byte_for_byte() {
    let server = TestServer::start(peerjsd::Config::default()).await;
    let alice = PeerClient::open(&server, "alice").await;
    let mut bob = PeerClient::open(&server, "bob").await;
    // Odd spacing, key order, number forms and escapes inside the payload must survive intact.
    let payload = r#"{ "sdp" : {"type":"offer","sdp":"v=0\r\n\u00e9"} , "n": 1.50e1, "z": [ ] }"#;
    alice.send_text(&format!(
        r#"{{"src":"mallory","extra":{{"x":1}},"type":"OFFER","dst":"bob","payload":{payload}}}"#
    ));
    let mut raw = PeerClient::connect(&server, "carol", "t").await;
    raw.expect("OPEN").await;
    let frame = bob.recv().await;
    assert_eq!(frame["src"], "alice", "src is stamped by the server");
    assert!(frame.get("extra").is_none());
    // Re-check at the byte level with a second message read as raw text.
    let text = format!(r#"{{"type":"ANSWER","dst":"carol","payload":{payload}}}"#);
    alice.send_text(&text);
    match raw.event().await {
        Event::Frame(value) => {
            let expected =
                format!(r#"{{"type":"ANSWER","src":"alice","dst":"carol","payload":{payload}}}"#);
            assert_eq!(
                value.to_string(),
                serde_json::from_str::<serde_json::Value>(&expected)
                    .unwrap()
                    .to_string()
            );
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn relayed_frames_keep_exact_bytes() {
    // A lower-level check: read the frame text itself, not a parsed value.
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let server = TestServer::start(peerjsd::Config::default()).await;
    let (mut a, _) = tokio_tungstenite::connect_async(server.peer_url("a", "t1"))
        .await
        .unwrap();
    let (mut b, _) = tokio_tungstenite::connect_async(server.peer_url("b", "t2"))
        .await
        .unwrap();
    assert_eq!(
        a.next().await.unwrap().unwrap(),
        Message::text(r#"{"type":"OPEN"}"#)
    );
    assert_eq!(
        b.next().await.unwrap().unwrap(),
        Message::text(r#"{"type":"OPEN"}"#)
    );
    let payload = "{ \"a\" :\t[1 , 2.0], \"s\":\"\\u00e9\\n\" }";
    a.send(Message::text(format!(
        r#"{{"type":"OFFER","dst":"b","payload":{payload}}}"#
    )))
    .await
    .unwrap();
    let got = b.next().await.unwrap().unwrap();
    assert_eq!(
        got,
        Message::text(format!(
            r#"{{"type":"OFFER","src":"a","dst":"b","payload":{payload}}}"#
        ))
    );
    // Strings and numbers as payloads, and no payload at all.
    a.send(Message::text(
        r#"{"type":"CANDIDATE","dst":"b","payload":"x"}"#,
    ))
    .await
    .unwrap();
    a.send(Message::text(r#"{"type":"CANDIDATE","dst":"b"}"#))
        .await
        .unwrap();
    assert_eq!(
        b.next().await.unwrap().unwrap(),
        Message::text(r#"{"type":"CANDIDATE","src":"a","dst":"b","payload":"x"}"#)
    );
    assert_eq!(
        b.next().await.unwrap().unwrap(),
        Message::text(r#"{"type":"CANDIDATE","src":"a","dst":"b"}"#)
    );
}

#[tokio::test]
async fn heartbeat_and_unknown_types_are_never_forwarded() {
    let server = TestServer::start(peerjsd::Config::default()).await;
    let alice = PeerClient::open(&server, "alice").await;
    let mut bob = PeerClient::open(&server, "bob").await;
    alice.send(json!({"type": "HEARTBEAT", "dst": "bob"}));
    alice.send(json!({"type": "OPEN", "dst": "bob"}));
    alice.send(json!({"type": "ERROR", "dst": "bob"}));
    alice.send(json!({"type": "offer", "dst": "bob"}));
    alice.send(json!({"type": 5, "dst": "bob"}));
    alice.send(json!({"dst": "bob", "payload": {}}));
    // A marker sent last arrives first: nothing before it was forwarded.
    alice.send(json!({"type": "ANSWER", "dst": "bob", "payload": "marker"}));
    assert_eq!(bob.recv().await["payload"], "marker");
    assert_eq!(server.shared.metrics.relayed_total(), 1);
}

#[tokio::test]
async fn leave_and_expire_from_clients_are_relayed_but_never_queued() {
    let server = TestServer::start(peerjsd::Config::default()).await;
    let alice = PeerClient::open(&server, "alice").await;
    let mut bob = PeerClient::open(&server, "bob").await;
    alice.send(json!({"type": "LEAVE", "dst": "bob"}));
    assert_eq!(
        bob.recv().await,
        json!({"type": "LEAVE", "src": "alice", "dst": "bob"})
    );
    alice.send(json!({"type": "EXPIRE", "dst": "bob", "payload": 1}));
    assert_eq!(
        bob.recv().await,
        json!({"type": "EXPIRE", "src": "alice", "dst": "bob", "payload": 1})
    );

    // To an offline id they are dropped, not queued: carol connecting later gets only OPEN.
    alice.send(json!({"type": "LEAVE", "dst": "carol"}));
    alice.send(json!({"type": "EXPIRE", "dst": "carol"}));
    server
        .until("both drops counted", |s| {
            s.metrics.dropped(DropReason::Undeliverable) == 2
        })
        .await;
    let mut carol = PeerClient::open(&server, "carol").await;
    alice.send(json!({"type": "ANSWER", "dst": "carol", "payload": "marker"}));
    assert_eq!(carol.recv().await["payload"], "marker");
}

#[tokio::test]
async fn leave_without_dst_frees_the_id_and_closes_the_socket() {
    let server = TestServer::start(peerjsd::Config::default()).await;
    let mut alice = PeerClient::open_with_token(&server, "alice", "one").await;
    alice.send(json!({"type": "LEAVE"}));
    let (code, reason) = alice.closed().await;
    assert_eq!((code, reason.as_str()), (1000, "left"));
    server.until("alice gone", |s| s.peer_count() == 0).await;
    // Another client (other token) gets the id at once.
    PeerClient::open_with_token(&server, "alice", "two").await;
}

#[tokio::test]
async fn a_message_to_yourself_comes_back() {
    let server = TestServer::start(peerjsd::Config::default()).await;
    let mut alice = PeerClient::open(&server, "alice").await;
    alice.send(json!({"type": "CANDIDATE", "dst": "alice", "payload": 7}));
    assert_eq!(
        alice.recv().await,
        json!({"type": "CANDIDATE", "src": "alice", "dst": "alice", "payload": 7})
    );
}

#[tokio::test]
async fn query_decoding_is_urlsearchparams_with_last_duplicate_winning() {
    let server = TestServer::start(peerjsd::Config::default()).await;
    let mut spaced = PeerClient::connect_url(
        &server.ws_url("key=nope&key=peerjs&id=first&id=E%20x&token=t+1&version=1.5.5"),
        "E x",
    )
    .await;
    spaced.expect("OPEN").await;
    let mut plus =
        PeerClient::connect_url(&server.ws_url("key=peerjs&id=a+b&token=t"), "a b").await;
    plus.expect("OPEN").await;
    let sender = PeerClient::open(&server, "sender").await;
    sender.send(json!({"type": "OFFER", "dst": "E x", "payload": 1}));
    assert_eq!(
        spaced.recv().await,
        json!({"type": "OFFER", "src": "sender", "dst": "E x", "payload": 1})
    );
    sender.send(json!({"type": "OFFER", "dst": "a b", "payload": 2}));
    assert_eq!(
        plus.recv().await,
        json!({"type": "OFFER", "src": "sender", "dst": "a b", "payload": 2})
    );
}

#[tokio::test]
async fn frames_sent_in_the_same_write_as_the_upgrade_request_are_relayed_in_order() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start(peerjsd::Config::default()).await;
    let mut bob = PeerClient::open(&server, "bob").await;

    // The upgrade request, then frames before the 101 has been read: bytes the HTTP layer
    // read past the request must reach the WebSocket in order. One frame is larger than a
    // socket read, so it arrives in pieces.
    let small = offer("bob", "dc_early");
    let large = json!({"type": "OFFER", "dst": "bob", "payload": {"sdp": sdp(20_000)}});
    let mut bytes = upgrade_request("/peerjs?key=peerjs&id=early&token=t", "").into_bytes();
    bytes.extend(masked_text_frame(&small.to_string(), [1, 2, 3, 4]));
    bytes.extend(masked_text_frame(&large.to_string(), [9, 8, 7, 6]));
    let mut socket = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    socket.write_all(&bytes).await.unwrap();

    assert_eq!(bob.recv().await, relayed(&small, "early"));
    assert_eq!(bob.recv().await, relayed(&large, "early"));
    // The early client got its 101 and OPEN too.
    let mut head = vec![0u8; 1024];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), socket.read(&mut head))
        .await
        .unwrap()
        .unwrap();
    assert!(
        head[..n].starts_with(b"HTTP/1.1 101"),
        "{:?}",
        String::from_utf8_lossy(&head[..n])
    );
}

#[tokio::test]
async fn a_burst_of_frames_in_one_write_is_relayed_whole_and_in_order() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // No rate limit: the burst is over the default's 100 at once.
    let server = TestServer::with(|c| c.rate_limit = None).await;
    let mut bob = PeerClient::open(&server, "bob").await;
    let mut socket = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let upgrade = upgrade_request("/peerjs?key=peerjs&id=burst&token=t", "");
    socket.write_all(upgrade.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains(peerjsd::protocol::OPEN) {
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), socket.read(&mut chunk))
            .await
            .expect("OPEN in time")
            .unwrap();
        assert!(n > 0, "closed before OPEN");
        seen.extend_from_slice(&chunk[..n]);
    }

    // Many more frames than the session handles per wake-up, in one write, with heartbeats
    // and a malformed frame among them: every relayable one arrives, in order.
    let mut burst = Vec::new();
    for n in 0..200u32 {
        let mask = n.to_le_bytes();
        burst.extend(masked_text_frame(
            &candidate("bob", "dc_burst", n).to_string(),
            mask,
        ));
        if n % 50 == 7 {
            burst.extend(masked_text_frame(r#"{"type":"HEARTBEAT"}"#, mask));
            burst.extend(masked_text_frame("{not json", mask));
        }
    }
    socket.write_all(&burst).await.unwrap();
    for n in 0..200 {
        assert_eq!(
            bob.recv().await,
            relayed(&candidate("bob", "dc_burst", n), "burst"),
            "candidate {n}"
        );
    }
    assert_eq!(server.shared.metrics.relayed_total(), 200);
}
