//! A cluster on NATS (SPEC §10): real nats-server processes in a 3-node NATS cluster, and
//! peerjsd nodes each connected to a different NATS server.

mod common;

use common::cluster::{NatsCluster, formed, node, until_known};
use common::{PeerClient, TestServer, offer, relayed};
use serde_json::json;

/// Three nodes in global mode, node i on NATS server i.
async fn three(nats: &NatsCluster) -> (TestServer, TestServer, TestServer) {
    let urls = nats.urls();
    let a = node(vec![urls[0].clone()], "a", |_| {}).await;
    let b = node(vec![urls[1].clone()], "b", |_| {}).await;
    let c = node(vec![urls[2].clone()], "c", |_| {}).await;
    formed(&[&a, &b, &c]).await;
    (a, b, c)
}

/// Waits until `server` sees `id` registered on another node.
async fn sees(server: &TestServer, room: &str, id: &str) {
    until_known(server, room, id, true).await;
}

#[tokio::test]
async fn global_mode_ids_are_unique_and_messages_cross_nodes_in_order() {
    let nats = NatsCluster::start(3).await;
    let (a, b, c) = three(&nats).await;
    let mut alice = PeerClient::open(&a, "alice").await;
    let mut bob = PeerClient::open(&b, "bob").await;
    // alice is taken on every node.
    let mut again = PeerClient::connect(&c, "alice", "other-token").await;
    assert_eq!(
        again.recv().await,
        json!({"type": "ID-TAKEN", "payload": {"msg": "ID is taken"}})
    );
    sees(&a, "", "bob").await;
    sees(&b, "", "alice").await;
    for n in 0..90 {
        alice.send(offer("bob", &format!("c{n}")));
    }
    for n in 0..90 {
        let got = bob.expect("OFFER").await;
        assert_eq!(
            got,
            relayed(&offer("bob", &format!("c{n}")), "alice"),
            "message {n}"
        );
    }
    bob.send(offer("alice", "back"));
    assert_eq!(alice.expect("OFFER").await["src"], "bob");
    drop((a, b, c));
}

#[tokio::test]
async fn the_offline_queue_follows_the_id_to_whichever_node_it_joins_and_expires_otherwise() {
    let nats = NatsCluster::start(3).await;
    let (a, b, c) = three(&nats).await;
    let mut alice = PeerClient::open(&a, "alice").await;
    // carol is nowhere yet: queued on alice's node.
    alice.send(offer("carol", "q1"));
    alice.send(offer("carol", "q2"));
    a.until("two queued", |s| s.rooms.budgets.queued_bytes() > 0)
        .await;
    let mut carol = PeerClient::open(&c, "carol").await;
    assert_eq!(carol.expect("OFFER").await["payload"]["connectionId"], "q1");
    assert_eq!(carol.expect("OFFER").await["payload"]["connectionId"], "q2");
    // And what follows takes the direct way, after them.
    alice.send(offer("carol", "q3"));
    assert_eq!(carol.expect("OFFER").await["payload"]["connectionId"], "q3");
    a.until("the queue forwarded", |s| {
        s.rooms.budgets.queued_bytes() == 0
    })
    .await;

    // dave never comes: alice gets EXPIRE after the expire timeout (5 s by default).
    alice.send(offer("dave", "never"));
    assert_eq!(
        tokio::time::timeout(std::time::Duration::from_secs(8), alice.next_frame())
            .await
            .expect("EXPIRE within the expire timeout"),
        Some(json!({"type": "EXPIRE", "src": "dave", "dst": "alice"}))
    );
    // A message queued on b for a sender on a: EXPIRE crosses back. erin on b sends to
    // frank (offline); frank never comes.
    let mut erin = PeerClient::open(&b, "erin").await;
    erin.send(offer("frank", "x"));
    assert_eq!(
        tokio::time::timeout(std::time::Duration::from_secs(8), erin.next_frame())
            .await
            .expect("EXPIRE"),
        Some(json!({"type": "EXPIRE", "src": "frank", "dst": "erin"}))
    );
    drop((a, b, c));
}

#[tokio::test]
async fn a_reconnect_with_the_same_token_on_another_node_replaces_the_old_socket() {
    let nats = NatsCluster::start(3).await;
    let (a, b, c) = three(&nats).await;
    let mut old = PeerClient::open_with_token(&a, "alice", "secret1").await;
    sees(&b, "", "alice").await;
    let mut new = PeerClient::open_with_token(&b, "alice", "secret1").await;
    assert_eq!(old.closed().await, (1000, "replaced".into()));
    // The id now lives on b: a message from c reaches the new socket.
    let bob = PeerClient::open(&c, "bob").await;
    c.until("alice on b", |s| {
        s.rooms
            .remote
            .as_ref()
            .and_then(|r| r.locate("", "alice"))
            .as_deref()
            == Some("b")
    })
    .await;
    bob.send(offer("alice", "after"));
    assert_eq!(
        new.expect("OFFER").await["payload"]["connectionId"],
        "after"
    );
}

#[tokio::test]
async fn a_dead_holder_on_another_node_is_probed_and_taken_over_a_live_one_is_not() {
    let nats = NatsCluster::start(3).await;
    let (a, b, _c) = three(&nats).await;
    // A live holder on a: a newcomer with another token on b gets ID-TAKEN.
    let _live = PeerClient::open_with_token(&a, "alice", "t1").await;
    sees(&b, "", "alice").await;
    let mut intruder = PeerClient::connect(&b, "alice", "t2").await;
    assert_eq!(intruder.expect("ID-TAKEN").await["type"], "ID-TAKEN");
    // A holder whose machine vanished (no pong): taken over, and its socket is closed.
    let frozen = PeerClient::open_with_token(&a, "zed", "t1").await;
    sees(&b, "", "zed").await;
    frozen.freeze();
    let mut heir = PeerClient::open_with_token(&b, "zed", "t2").await;
    heir.send(json!({"type": "HEARTBEAT"}));
    a.until("zed let go on a", |s| {
        s.metrics
            .closed(peerjsd::protocol::CloseReason::ProbeFailed)
            == 1
    })
    .await;
    assert!(
        heir.drain()
            .iter()
            .all(|e| !matches!(e, common::Event::Closed(_)))
    );
}

/// Three nodes in room mode.
async fn three_rooms(nats: &NatsCluster) -> (TestServer, TestServer, TestServer) {
    let urls = nats.urls();
    let rooms = |c: &mut peerjsd::Config| {
        c.rooms = peerjsd::config::RoomMode::Token;
        c.max_room_peers = 4;
        c.announce_leave = true;
        c.allow_discovery = true;
    };
    let a = node(vec![urls[0].clone()], "a", rooms).await;
    let b = node(vec![urls[1].clone()], "b", rooms).await;
    let c = node(vec![urls[2].clone()], "c", rooms).await;
    formed(&[&a, &b, &c]).await;
    (a, b, c)
}

#[tokio::test]
async fn a_room_spans_nodes_with_one_size_limit_one_id_space_leave_and_peer_list() {
    let nats = NatsCluster::start(3).await;
    let (a, b, c) = three_rooms(&nats).await;
    let mut p0 = PeerClient::open_with_token(&a, "p0", "room1").await;
    let mut p1 = PeerClient::open_with_token(&b, "p1", "room1").await;
    let mut p2 = PeerClient::open_with_token(&c, "p2", "room1").await;
    // The same id in the same room on another node: taken (probe: p0 answers).
    let mut dup = PeerClient::connect(&c, "p0", "room1").await;
    assert_eq!(dup.expect("ID-TAKEN").await["type"], "ID-TAKEN");
    // The same id in another room: free.
    let _other = PeerClient::open_with_token(&c, "p0", "room2").await;
    let p3 = PeerClient::open_with_token(&a, "p3", "room1").await;
    // The fifth, on any node: room full.
    let mut fifth = PeerClient::connect(&b, "p4", "room1").await;
    assert_eq!(
        fifth.recv().await,
        json!({"type": "ERROR", "payload": {"msg": "Room is full"}})
    );
    // Messages across the room's nodes.
    sees(&a, "room1", "p2").await;
    p0.send(offer("p2", "x"));
    assert_eq!(p2.expect("OFFER").await["src"], "p0");
    // The whole room from any node's /peers.
    sees(&b, "room1", "p3").await;
    let list: serde_json::Value =
        serde_json::from_str(&b.get("/peerjs/peers?token=room1", &[]).await.body).unwrap();
    let mut ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, ["p0", "p1", "p2", "p3"]);
    // p3 leaves: members on every node hear it.
    p3.close();
    for (peer, name) in [(&mut p0, "p0"), (&mut p1, "p1"), (&mut p2, "p2")] {
        assert_eq!(
            peer.recv().await,
            json!({"type": "LEAVE", "src": "p3", "dst": name}),
            "{name}"
        );
    }
    // Its seat is free again, cluster-wide.
    let _p4 = PeerClient::open_with_token(&c, "p4", "room1").await;
}

#[tokio::test]
async fn a_node_that_shuts_down_says_goodbye_and_its_rooms_hear_leave_at_once() {
    let nats = NatsCluster::start(1).await;
    let urls = nats.urls();
    let rooms = |c: &mut peerjsd::Config| {
        c.rooms = peerjsd::config::RoomMode::Token;
        c.announce_leave = true;
    };
    let a = node(urls.clone(), "a", rooms).await;
    let b = node(urls.clone(), "b", rooms).await;
    formed(&[&a, &b]).await;
    let mut p0 = PeerClient::open_with_token(&a, "p0", "room").await;
    let mut p1 = PeerClient::open_with_token(&b, "p1", "room").await;
    sees(&b, "room", "p0").await;
    let stopped = tokio::time::timeout(common::WAIT, a.stop()).await;
    assert!(matches!(stopped, Ok(Ok(()))), "{stopped:?}");
    assert_eq!(p0.closed().await.0, 1001);
    assert_eq!(
        p1.recv().await,
        json!({"type": "LEAVE", "src": "p0", "dst": "p1"})
    );
    // Told by the goodbye, not by the node timeout.
    assert_eq!(b.shared.metrics.cluster_nodes_lost.get(), 0);
}
