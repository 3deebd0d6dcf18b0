//! Reconnects and duplicate ids: take-over, stale closes, ID-TAKEN and the liveness probe.

mod common;

use common::*;
use peerjsd::protocol::{CloseReason, Rejection};
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn same_token_takes_over_sends_open_and_closes_the_old_socket() {
    let server = TestServer::start(peerjsd::Config::default()).await;
    let mut old = PeerClient::open_with_token(&server, "alice", "secret").await;
    let mut new = PeerClient::open_with_token(&server, "alice", "secret").await;
    let (code, reason) = old.closed().await;
    assert_eq!((code, reason.as_str()), (1000, "replaced"));
    assert_eq!(server.shared.peer_count(), 1);
    // The old socket's close did not remove the new registration: alice is still reachable.
    server
        .until("old session counted as closed", |s| {
            s.metrics.closed(CloseReason::Replaced) == 1
        })
        .await;
    let bob = PeerClient::open(&server, "bob").await;
    bob.send(offer("alice", "dc"));
    assert_eq!(new.recv().await, relayed(&offer("alice", "dc"), "bob"));
}

#[tokio::test]
async fn a_different_token_gets_id_taken_while_the_holder_is_alive() {
    let server = TestServer::with(|c| c.probe_timeout = Duration::from_millis(500)).await;
    let mut holder = PeerClient::open_with_token(&server, "alice", "one").await;
    let mut intruder = PeerClient::connect(&server, "alice", "two").await;
    assert_eq!(
        intruder.recv().await,
        json!({"type": "ID-TAKEN", "payload": {"msg": "ID is taken"}})
    );
    let (code, _) = intruder.closed().await;
    assert_eq!(code, 1008);
    assert_eq!(server.shared.metrics.rejected(Rejection::IdTaken), 1);
    // The holder is untouched.
    let bob = PeerClient::open(&server, "bob").await;
    bob.send(json!({"type": "OFFER", "dst": "alice", "payload": 1}));
    assert_eq!(holder.recv().await["src"], "bob");
}

#[tokio::test]
async fn a_silent_holder_fails_the_probe_and_the_newcomer_gets_the_id() {
    let server = TestServer::with(|c| {
        c.probe_timeout = Duration::from_millis(300);
        c.alive_timeout = Duration::from_secs(600);
    })
    .await;
    let holder = PeerClient::open_with_token(&server, "alice", "one").await;
    holder.freeze(); // the machine vanished: TCP open, nothing answers
    let started = tokio::time::Instant::now();
    let mut newcomer = PeerClient::connect(&server, "alice", "two").await;
    assert_eq!(newcomer.recv().await, json!({"type": "OPEN"}));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(server.shared.peer_count(), 1);
    server
        .until("stale holder closed", |s| {
            s.metrics.closed(CloseReason::ProbeFailed) == 1
        })
        .await;
    let bob = PeerClient::open(&server, "bob").await;
    bob.send(json!({"type": "OFFER", "dst": "alice", "payload": 1}));
    assert_eq!(newcomer.recv().await["src"], "bob");
}

#[tokio::test]
async fn a_closed_socket_frees_its_id_at_once() {
    let server = TestServer::start(peerjsd::Config::default()).await;
    let first = PeerClient::open_with_token(&server, "alice", "one").await;
    first.close();
    server.until("alice gone", |s| s.peer_count() == 0).await;
    PeerClient::open_with_token(&server, "alice", "two").await;
}

#[tokio::test]
async fn reconnect_after_disconnect_is_a_fresh_open() {
    let server = TestServer::start(peerjsd::Config::default()).await;
    let first = PeerClient::open_with_token(&server, "alice", "same").await;
    first.close();
    server.until("alice gone", |s| s.peer_count() == 0).await;
    let mut again = PeerClient::open_with_token(&server, "alice", "same").await;
    let bob = PeerClient::open(&server, "bob").await;
    bob.send(json!({"type": "OFFER", "dst": "alice", "payload": 1}));
    assert_eq!(again.recv().await["src"], "bob");
}
