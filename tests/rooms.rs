//! Room mode (`--rooms token`): rooms of up to 4, ids per room, LEAVE announcements, isolation,
//! actors that end with their room, and slow readers that never stall a room.

mod common;

use common::*;
use peerjsd::config::RoomMode;
use peerjsd::protocol::{CloseReason, DropReason, Rejection};
use serde_json::json;
use std::time::Duration;

async fn room_server(tweak: impl FnOnce(&mut peerjsd::Config)) -> TestServer {
    TestServer::with(|c| {
        c.rooms = RoomMode::Token;
        c.max_room_peers = 4;
        c.announce_leave = true;
        tweak(c);
    })
    .await
}

#[tokio::test]
async fn four_players_mesh_and_the_fifth_is_told_the_room_is_full() {
    let server = room_server(|_| {}).await;
    let names = ["p1", "p2", "p3", "p4"];
    let mut players = Vec::new();
    for name in names {
        players.push(PeerClient::open_with_token(&server, name, "room1").await);
    }
    // Full mesh: each ordered pair exchanges OFFER, ANSWER and CANDIDATEs.
    for i in 0..4 {
        for j in 0..4 {
            if i == j {
                continue;
            }
            let conn = format!("dc_{i}{j}");
            players[i].send(offer(names[j], &conn));
            assert_eq!(
                players[j].recv().await,
                relayed(&offer(names[j], &conn), names[i])
            );
            players[j].send(answer(names[i], &conn));
            assert_eq!(
                players[i].recv().await,
                relayed(&answer(names[i], &conn), names[j])
            );
            for n in 0..3 {
                players[i].send(candidate(names[j], &conn, n));
            }
            for n in 0..3 {
                assert_eq!(
                    players[j].recv().await,
                    relayed(&candidate(names[j], &conn, n), names[i])
                );
            }
        }
    }
    let mut fifth = PeerClient::connect(&server, "p5", "room1").await;
    assert_eq!(
        fifth.recv().await,
        json!({"type": "ERROR", "payload": {"msg": "Room is full"}})
    );
    assert_eq!(fifth.closed().await.0, 1013);
    assert_eq!(server.shared.metrics.rejected(Rejection::RoomFull), 1);
    // Another room is independent.
    PeerClient::open_with_token(&server, "p5", "room2").await;
}

#[tokio::test]
async fn ids_are_per_room_and_messages_never_cross_rooms() {
    let server = room_server(|c| c.expire_timeout = Duration::from_millis(300)).await;
    let mut a1 = PeerClient::open_with_token(&server, "alice", "room1").await;
    let mut a2 = PeerClient::open_with_token(&server, "alice", "room2").await;
    let mut bob2 = PeerClient::open_with_token(&server, "bob", "room2").await;
    // bob (room2) writes to "alice": only room2's alice gets it.
    bob2.send(json!({"type": "OFFER", "dst": "alice", "payload": "hi"}));
    assert_eq!(
        a2.recv().await,
        json!({"type": "OFFER", "src": "bob", "dst": "alice", "payload": "hi"})
    );
    // room1's alice writes to bob, who is only in room2: queued, then EXPIRE, never delivered.
    a1.send(json!({"type": "OFFER", "dst": "bob", "payload": "cross"}));
    assert_eq!(
        a1.recv().await,
        json!({"type": "EXPIRE", "src": "bob", "dst": "alice"})
    );
    a2.send(json!({"type": "ANSWER", "dst": "bob", "payload": "marker"}));
    assert_eq!(
        bob2.recv().await["payload"],
        "marker",
        "bob saw nothing from room1 before the marker"
    );
}

#[tokio::test]
async fn leaving_or_timing_out_is_announced_to_the_rest_of_the_room() {
    let server = room_server(|c| c.alive_timeout = Duration::from_millis(400)).await;
    let mut p1 = PeerClient::open_with_token(&server, "p1", "room").await;
    let mut p2 = PeerClient::open_with_token(&server, "p2", "room").await;
    let p3 = PeerClient::open_with_token(&server, "p3", "room").await;
    let _elsewhere = PeerClient::open_with_token(&server, "p3", "other").await;
    // p1 and p2 keep talking; p3 closes its tab.
    p3.close();
    assert_eq!(
        p1.recv().await,
        json!({"type": "LEAVE", "src": "p3", "dst": "p1"})
    );
    assert_eq!(
        p2.recv().await,
        json!({"type": "LEAVE", "src": "p3", "dst": "p2"})
    );
    // p2 goes silent (no heartbeat): p1 hears of it once the alive timeout passes.
    for _ in 0..30 {
        p1.send(json!({"type": "HEARTBEAT"}));
        if let Ok(frame) = tokio::time::timeout(Duration::from_millis(100), p1.recv()).await {
            assert_eq!(frame, json!({"type": "LEAVE", "src": "p2", "dst": "p1"}));
            assert_eq!(p2.closed().await, (1000, "alive_timeout".into()));
            return;
        }
    }
    panic!("no LEAVE for p2 after its alive timeout");
}

#[tokio::test]
async fn a_duplicate_id_in_a_room_is_taken_even_with_the_same_token_unless_the_holder_is_dead() {
    let server = room_server(|c| c.probe_timeout = Duration::from_millis(300)).await;
    let holder = PeerClient::open_with_token(&server, "p1", "room").await;
    let mut other = PeerClient::open_with_token(&server, "p2", "room").await;
    let mut copycat = PeerClient::connect(&server, "p1", "room").await;
    assert_eq!(
        copycat.recv().await,
        json!({"type": "ID-TAKEN", "payload": {"msg": "ID is taken"}})
    );
    copycat.closed().await;
    // The holder vanishes: the next claimant gets the id, and the room hears the old one left.
    holder.freeze();
    let mut heir = PeerClient::open_with_token(&server, "p1", "room").await;
    assert_eq!(
        other.recv().await,
        json!({"type": "LEAVE", "src": "p1", "dst": "p2"})
    );
    other.send(json!({"type": "OFFER", "dst": "p1", "payload": 1}));
    assert_eq!(heir.recv().await["src"], "p2");
    drop(holder);
}

#[tokio::test]
async fn an_emptied_room_ends_its_actor() {
    let server = room_server(|_| {}).await;
    let mut clients = Vec::new();
    for room in 0..5 {
        for n in 0..3 {
            clients.push(
                PeerClient::open_with_token(&server, &format!("p{n}"), &format!("room{room}"))
                    .await,
            );
        }
    }
    assert_eq!(server.shared.rooms.len(), 5);
    assert_eq!(server.shared.metrics.rooms.get(), 5);
    for client in &clients {
        client.close();
    }
    server
        .until("all rooms ended", |s| {
            s.rooms.is_empty() && s.metrics.rooms.get() == 0
        })
        .await;
    assert_eq!(server.shared.peer_count(), 0);
    // A room can be used again afterwards.
    PeerClient::open_with_token(&server, "p0", "room0").await;
    assert_eq!(server.shared.rooms.len(), 1);
}

#[tokio::test]
async fn global_mode_does_not_announce_leaves_by_default() {
    let server = TestServer::start(peerjsd::Config::default()).await;
    let mut alice = PeerClient::open(&server, "alice").await;
    let bob = PeerClient::open(&server, "bob").await;
    let carol = PeerClient::open(&server, "carol").await;
    bob.close();
    server.until("bob gone", |s| s.peer_count() == 2).await;
    carol.send(json!({"type": "ANSWER", "dst": "alice", "payload": "marker"}));
    assert_eq!(
        alice.recv().await["payload"],
        "marker",
        "no LEAVE before the marker"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_is_closed_and_its_room_keeps_receiving() {
    let server = room_server(|c| {
        c.rate_limit = None;
        c.outbound_queue = 16;
    })
    .await;
    let sender = PeerClient::open_with_token(&server, "sender", "room").await;
    let mut friend = PeerClient::open_with_token(&server, "friend", "room").await;
    let mut other = PeerClient::open_with_token(&server, "other", "room").await;
    let staller = PeerClient::open_with_token(&server, "staller", "room").await;
    staller.freeze();
    // ~60 KB messages to the staller fill its socket buffers, then its 16-frame queue.
    let big = "x".repeat(60 * 1024);
    let mut sent_to_friend = 0;
    let started = std::time::Instant::now();
    while server.shared.metrics.closed(CloseReason::SlowReader) == 0
        && server.shared.metrics.dropped(DropReason::SlowReader) == 0
    {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the staller was never closed"
        );
        for _ in 0..20 {
            sender.send(json!({"type": "CANDIDATE", "dst": "staller", "payload": big}));
        }
        // Interleaved with the flood, the rest of the room keeps getting every message in order.
        sender.send(json!({"type": "CANDIDATE", "dst": "friend", "payload": sent_to_friend}));
        other.send(json!({"type": "CANDIDATE", "dst": "friend", "payload": "from other"}));
        let expected = [
            json!({"type": "CANDIDATE", "src": "sender", "dst": "friend", "payload": sent_to_friend}),
            json!({"type": "CANDIDATE", "src": "other", "dst": "friend", "payload": "from other"}),
        ];
        let mut got = Vec::new();
        while got.len() < 2 {
            let frame = friend.recv().await;
            if frame["type"] == "LEAVE" {
                assert_eq!(frame["src"], "staller");
                continue;
            }
            assert!(expected.contains(&frame), "unexpected {frame}");
            got.push(frame);
        }
        sent_to_friend += 1;
    }
    // The room hears the staller left, and traffic still flows.
    let leave = loop {
        let frame = other.recv().await;
        if frame["type"] == "LEAVE" {
            break frame;
        }
    };
    assert_eq!(leave["src"], "staller");
    other.send(json!({"type": "OFFER", "dst": "friend", "payload": "after"}));
    loop {
        let frame = friend.recv().await;
        if frame["payload"] == "after" {
            break;
        }
    }
    server
        .until("staller's session ended", |s| {
            s.metrics.closed(CloseReason::SlowReader) == 1
        })
        .await;
    assert!(sent_to_friend > 0);
}

/// A room whose actor fails (a bug; injected here) closes its members with 1011, frees their
/// seats, and is replaced: the same room works again at once, and other rooms never noticed.
#[tokio::test]
async fn a_failed_room_closes_its_members_frees_their_seats_and_comes_back() {
    let server = room_server(|_| {}).await;
    let mut a = PeerClient::open_with_token(&server, "a", "doomed").await;
    let mut b = PeerClient::open_with_token(&server, "b", "doomed").await;
    let mut c = PeerClient::open_with_token(&server, "c", "elsewhere").await;
    let d = PeerClient::open_with_token(&server, "d", "elsewhere").await;
    assert!(server.shared.rooms.inject_failure("doomed"));
    assert_eq!(a.closed().await, (1011, "room_failed".into()));
    assert_eq!(b.closed().await, (1011, "room_failed".into()));
    server
        .until("seats freed", |s| {
            s.peer_count() == 2 && s.metrics.closed(CloseReason::RoomFailed) == 2
        })
        .await;
    assert_eq!(server.shared.metrics.room_failures(), 1);
    let mut a2 = PeerClient::open_with_token(&server, "a", "doomed").await;
    let b2 = PeerClient::open_with_token(&server, "b", "doomed").await;
    b2.send(json!({"type": "OFFER", "dst": "a", "payload": 1}));
    assert_eq!(a2.expect("OFFER").await["src"], "b");
    d.send(json!({"type": "OFFER", "dst": "c", "payload": 2}));
    assert_eq!(c.expect("OFFER").await["payload"], 2);
}
