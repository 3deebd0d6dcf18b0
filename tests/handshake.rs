//! The WebSocket opening handshake on both of its paths: the short one (peerjsd reads the
//! first request itself and answers 101 with the session's first frame) and hyper's (a long
//! head, a request after REST on a kept-alive connection).

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What the RFC 6455 example key (the one `upgrade_request` sends) must be answered with.
const EXAMPLE_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// Reads until `needle` has arrived; returns everything read.
async fn read_until(socket: &mut TcpStream, needle: &[u8]) -> Vec<u8> {
    let mut seen = Vec::new();
    while !seen.windows(needle.len()).any(|w| w == needle) {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, socket.read(&mut chunk))
            .await
            .unwrap_or_else(|_| panic!("timed out; got {:?}", String::from_utf8_lossy(&seen)))
            .expect("read");
        assert!(n > 0, "closed; got {:?}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&chunk[..n]);
    }
    seen
}

/// The 101 as the short path writes it (as `ws` does), for the example key.
fn short_path_101() -> String {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {EXAMPLE_ACCEPT}\r\n\r\n"
    )
}

/// The server's text frame (unmasked, short) carrying `text`.
fn server_text_frame(text: &str) -> Vec<u8> {
    let mut frame = vec![0x81, text.len() as u8];
    frame.extend_from_slice(text.as_bytes());
    frame
}

/// Sends an OFFER for bob over the raw socket and checks that bob gets it from `from`.
async fn relays_to_bob(socket: &mut TcpStream, bob: &mut PeerClient, from: &str) {
    let message = offer("bob", "dc_raw");
    let frame = masked_text_frame(&message.to_string(), [3, 1, 4, 1]);
    socket.write_all(&frame).await.unwrap();
    assert_eq!(bob.recv().await, relayed(&message, from));
}

#[tokio::test]
async fn the_101_is_written_as_ws_writes_it_and_open_follows() {
    let server = TestServer::start(peerjsd::Config::default()).await;
    let mut socket = TcpStream::connect(server.addr).await.unwrap();
    let request = upgrade_request("/peerjs?key=peerjs&id=plain&token=t", "");
    socket.write_all(request.as_bytes()).await.unwrap();
    let open = server_text_frame(peerjsd::protocol::OPEN);
    let seen = read_until(&mut socket, &open).await;
    let mut whole = short_path_101().into_bytes();
    whole.extend_from_slice(&open);
    assert_eq!(
        String::from_utf8_lossy(&seen),
        String::from_utf8_lossy(&whole)
    );
}

#[tokio::test]
async fn a_request_head_that_arrives_in_pieces_is_upgraded() {
    let server = TestServer::start(peerjsd::Config::default()).await;
    let mut bob = PeerClient::open(&server, "bob").await;
    let mut socket = TcpStream::connect(server.addr).await.unwrap();
    socket.set_nodelay(true).unwrap();
    let request = upgrade_request("/peerjs?key=peerjs&id=slow&token=t", "");
    for piece in request.as_bytes().chunks(7) {
        socket.write_all(piece).await.unwrap();
        tokio::task::yield_now().await;
    }
    let seen = read_until(&mut socket, peerjsd::protocol::OPEN.as_bytes()).await;
    assert!(seen.starts_with(short_path_101().as_bytes()));
    relays_to_bob(&mut socket, &mut bob, "slow").await;
}

#[tokio::test]
async fn a_head_too_long_for_the_short_path_is_upgraded_by_hyper() {
    let server = TestServer::start(peerjsd::Config::default()).await;
    let mut bob = PeerClient::open(&server, "bob").await;
    let mut socket = TcpStream::connect(server.addr).await.unwrap();
    let cookie = format!("Cookie: c={}\r\n", "x".repeat(12 * 1024));
    let request = upgrade_request("/peerjs?key=peerjs&id=long&token=t", &cookie);
    // A frame right behind the head: hyper reads it with the head and must hand it back.
    let early = offer("bob", "dc_early");
    let mut bytes = request.into_bytes();
    bytes.extend(masked_text_frame(&early.to_string(), [2, 7, 1, 8]));
    socket.write_all(&bytes).await.unwrap();
    assert_eq!(bob.recv().await, relayed(&early, "long"));
    let seen = read_until(&mut socket, peerjsd::protocol::OPEN.as_bytes()).await;
    let seen = String::from_utf8_lossy(&seen).to_ascii_lowercase();
    assert!(seen.starts_with("http/1.1 101"), "{seen}");
    assert!(
        seen.contains(&EXAMPLE_ACCEPT.to_ascii_lowercase()),
        "{seen}"
    );
    relays_to_bob(&mut socket, &mut bob, "long").await;
}

#[tokio::test]
async fn an_upgrade_after_a_rest_request_on_the_same_connection_works() {
    let server = TestServer::start(peerjsd::Config::default()).await;
    let mut bob = PeerClient::open(&server, "bob").await;
    let mut socket = TcpStream::connect(server.addr).await.unwrap();
    socket
        .write_all(b"GET /peerjs/id HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let seen = read_until(&mut socket, b"\r\n\r\n").await;
    assert!(seen.starts_with(b"HTTP/1.1 200"));
    // The id's body (36 bytes) may still be on its way; the OPEN comes after it either way.
    let request = upgrade_request("/peerjs?key=peerjs&id=kept&token=t", "");
    socket.write_all(request.as_bytes()).await.unwrap();
    let seen = read_until(&mut socket, peerjsd::protocol::OPEN.as_bytes()).await;
    assert!(String::from_utf8_lossy(&seen).contains("HTTP/1.1 101"));
    relays_to_bob(&mut socket, &mut bob, "kept").await;
}

#[tokio::test]
async fn a_newcomer_waiting_on_a_probe_gets_its_101_at_once() {
    let server = TestServer::with(|c| {
        c.probe_timeout = Duration::from_secs(30);
        c.alive_timeout = Duration::from_secs(600);
    })
    .await;
    let holder = PeerClient::open_with_token(&server, "alice", "one").await;
    holder.freeze();
    let mut socket = TcpStream::connect(server.addr).await.unwrap();
    let request = upgrade_request("/peerjs?key=peerjs&id=alice&token=two", "");
    socket.write_all(request.as_bytes()).await.unwrap();
    // Within WAIT, long before the 30 s probe ends: the 101 is not held for the OPEN.
    let seen = read_until(&mut socket, b"\r\n\r\n").await;
    assert!(seen.starts_with(b"HTTP/1.1 101"));
}

#[tokio::test]
async fn a_connection_that_sent_no_request_does_not_hold_up_shutdown() {
    let server = TestServer::with(|c| c.handshake_timeout = Duration::from_secs(60)).await;
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let mut partial = TcpStream::connect(server.addr).await.unwrap();
    partial
        .write_all(b"GET /peerjs?id=a HTTP/1.1\r\n")
        .await
        .unwrap();
    let _peer = PeerClient::open(&server, "bob").await;
    tokio::time::timeout(WAIT, server.stop())
        .await
        .expect("drained in time")
        .expect("clean drain");
    for socket in [&mut silent, &mut partial] {
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(WAIT, socket.read(&mut buf))
            .await
            .expect("closed")
            .unwrap_or(0);
        assert_eq!(n, 0);
    }
}

#[tokio::test]
async fn a_bad_upgrade_on_the_short_path_gets_hyper_s_answer_once() {
    let server = TestServer::with(|c| c.max_connections_per_ip = Some(1)).await;
    let _first = PeerClient::open(&server, "first").await;
    let response = server
        .http(&upgrade_request("/peerjs?key=peerjs&id=second&token=t", ""))
        .await;
    assert_eq!(response.status, 429);
    assert_eq!(
        server
            .shared
            .metrics
            .rejected(peerjsd::protocol::Rejection::PerIp),
        1
    );
    // The refused client took no place in the count.
    assert_eq!(server.shared.peer_count(), 1);
}
