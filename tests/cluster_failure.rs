//! A cluster when things fail: a peerjsd node killed with SIGKILL, a NATS server killed, a
//! node cut off from NATS (degraded, then rejoining, with the partition rule), and hostile
//! messages on the cluster's subjects.

mod common;

use std::time::Duration;

use common::cluster::{NatsCluster, Process, formed, node, until_known};
use common::{PeerClient, offer};
use peerjsd::metrics::ClusterDrop;
use serde_json::json;

fn process_args<'a>(url: &'a str, name: &'a str, rooms: bool) -> Vec<&'a str> {
    let mut args = vec![
        "--cluster",
        url,
        "--cluster-name",
        "t",
        "--node-name",
        name,
        "--cluster-heartbeat",
        "250ms",
        "--cluster-node-timeout",
        "1500ms",
    ];
    if rooms {
        args.extend(["--rooms", "token"]);
    }
    args
}

#[tokio::test]
async fn a_node_killed_with_sigkill_has_its_seats_freed_and_its_rooms_told() {
    let nats = NatsCluster::start(3).await;
    let urls = nats.urls();
    let mut killed = Process::start(&process_args(&urls[0], "doomed", true)).await;
    let survivor = node(vec![urls[1].clone()], "survivor", |c| {
        c.rooms = peerjsd::config::RoomMode::Token;
        c.max_room_peers = 2;
        c.announce_leave = true;
    })
    .await;
    survivor
        .until("the doomed node joined", |s| {
            s.cluster.as_ref().is_some_and(|c| c.live_nodes() == 1)
        })
        .await;
    let url = killed.peer_url("p0", "room1");
    let _p0 = PeerClient::connect_url(&url, "p0").await;
    let mut p1 = PeerClient::open_with_token(&survivor, "p1", "room1").await;
    until_known(&survivor, "room1", "p0", true).await;
    // The room (of 2) is full, cluster-wide.
    let mut third = PeerClient::connect(&survivor, "p2", "room1").await;
    assert_eq!(
        third.expect("ERROR").await["payload"]["msg"],
        "Room is full"
    );

    killed.kill();
    // Within the node timeout (1.5 s here, 3 s by default) p1 hears that p0 left...
    assert_eq!(
        p1.recv().await,
        json!({"type": "LEAVE", "src": "p0", "dst": "p1"})
    );
    assert_eq!(survivor.shared.metrics.cluster_nodes_lost.get(), 1);
    // ...and p0's seat and id are free again.
    let _p0_again = PeerClient::open_with_token(&survivor, "p0", "room1").await;
}

#[tokio::test]
async fn peers_keep_working_when_a_nats_server_is_killed() {
    let mut nats = NatsCluster::start(3).await;
    let urls = nats.urls();
    // a knows only NATS server 0 and learns the others from it.
    let a = node(vec![urls[0].clone()], "a", |_| {}).await;
    let b = node(vec![urls[1].clone()], "b", |_| {}).await;
    let c = node(vec![urls[2].clone()], "c", |_| {}).await;
    formed(&[&a, &b, &c]).await;
    let mut alice = PeerClient::open(&a, "alice").await;
    let bob = PeerClient::open(&b, "bob").await;
    let mut carol = PeerClient::open(&c, "carol").await;
    until_known(&b, "", "carol", true).await;
    until_known(&a, "", "bob", true).await;

    nats.servers[0].kill();
    // b and c never depended on server 0.
    bob.send(offer("carol", "during"));
    assert_eq!(
        carol.expect("OFFER").await["payload"]["connectionId"],
        "during"
    );
    // a reconnects to another server and is reachable again.
    a.until("a reconnected", |s| {
        s.cluster.as_ref().is_some_and(|c| c.is_connected())
    })
    .await;
    until_known(&b, "", "alice", true).await;
    let mut delivered = false;
    for n in 0..20 {
        bob.send(offer("alice", &format!("after{n}")));
        if let Ok(Some(frame)) =
            tokio::time::timeout(Duration::from_millis(500), alice.next_frame()).await
        {
            assert_eq!(frame["type"], "OFFER", "{frame}");
            delivered = true;
            break;
        }
    }
    assert!(delivered, "no message reached alice after the reconnect");
    drop((a, b, c));
}

#[tokio::test]
async fn a_node_cut_off_from_nats_degrades_then_rejoins_and_the_earlier_duplicate_wins() {
    let mut nats = NatsCluster::start_with(3, true).await;
    let urls = nats.urls();
    let a = node(vec![urls[0].clone()], "a", |_| {}).await;
    let b = node(vec![urls[1].clone()], "b", |_| {}).await;
    formed(&[&a, &b]).await;
    let mut alice = PeerClient::open(&a, "alice").await;
    let mut amy = PeerClient::open(&a, "amy").await;
    let bob = PeerClient::open(&b, "bob").await;
    until_known(&a, "", "bob", true).await;
    until_known(&b, "", "alice", true).await;

    nats.servers[0].kill();
    a.until("a degraded", |s| {
        s.cluster.as_ref().is_some_and(|c| !c.is_connected())
    })
    .await;
    let health: serde_json::Value =
        serde_json::from_str(&a.get("/health", &[]).await.body).unwrap();
    assert_eq!(
        (health["status"].as_str(), health["cluster"].as_str()),
        (Some("ok"), Some("degraded"))
    );
    let metrics = a.get("/metrics", &["Accept: text/plain"]).await.body;
    assert!(metrics.contains("peerjs_cluster_connected 0"), "{metrics}");
    // Local peers keep working; a message for a peer on another node gets EXPIRE at once.
    alice.send(offer("amy", "local"));
    assert_eq!(
        amy.expect("OFFER").await["payload"]["connectionId"],
        "local"
    );
    alice.send(offer("bob", "cut off"));
    assert_eq!(
        alice.recv().await,
        json!({"type": "EXPIRE", "src": "bob", "dst": "alice"})
    );
    // The same id registered on both sides of the partition: first on b, then on a.
    b.until("b gave a up", |s| {
        s.cluster.as_ref().is_some_and(|c| c.live_nodes() == 0)
    })
    .await;
    let mut dup_b = PeerClient::open(&b, "dup").await;
    let mut dup_a = PeerClient::open(&a, "dup").await;

    // NATS comes back: a rejoins by itself, and the later "dup" (a's) is closed.
    nats.servers[0].restart();
    formed(&[&a, &b]).await;
    assert_eq!(dup_a.closed().await, (1008, "duplicate_id".into()));
    assert_eq!(a.shared.metrics.cluster_duplicates.get(), 1);
    // The earlier one keeps its id and is reachable from a.
    until_known(&a, "", "dup", true).await;
    alice.send(offer("dup", "to the survivor"));
    assert_eq!(
        dup_b.expect("OFFER").await["payload"]["connectionId"],
        "to the survivor"
    );
    // And bob, alice: across again.
    until_known(&b, "", "alice", true).await;
    bob.send(offer("alice", "rejoined"));
    assert_eq!(
        alice.expect("OFFER").await["payload"]["connectionId"],
        "rejoined"
    );
}

#[tokio::test]
async fn hostile_messages_on_the_cluster_subjects_are_counted_and_dropped() {
    let nats = NatsCluster::start(1).await;
    let urls = nats.urls();
    let a = node(urls.clone(), "a", |_| {}).await;
    let b = node(urls.clone(), "b", |_| {}).await;
    formed(&[&a, &b]).await;
    let mut alice = PeerClient::open(&a, "alice").await;
    let bob = PeerClient::open(&b, "bob").await;
    until_known(&b, "", "alice", true).await;

    let intruder = async_nats::connect(urls[0].as_str())
        .await
        .expect("connect");
    let garbage: Vec<Vec<u8>> = vec![
        vec![],
        vec![0xff; 64],
        b"{\"type\":\"OFFER\"}".to_vec(),
        // A Deliver whose frame is not UTF-8; one with a huge forged count (Changes).
        vec![
            5, 0, 1, b'x', 5, b'a', b'l', b'i', b'c', b'e', 1, 0xff, 0xfe,
        ],
        {
            let mut m = vec![2, 1, b'b'];
            m.extend(0u64.to_be_bytes());
            m.extend(u32::MAX.to_be_bytes());
            m
        },
    ];
    for subject in ["peerjsd.t.bcast", "peerjsd.t.node.a"] {
        for payload in &garbage {
            intruder
                .publish(subject, payload.clone().into())
                .await
                .expect("publish");
        }
    }
    intruder.flush().await.expect("flush");
    a.until("the garbage counted", |s| {
        s.metrics.cluster_dropped(ClusterDrop::Malformed) >= 10
    })
    .await;
    // Still serving, across nodes.
    bob.send(offer("alice", "still here"));
    assert_eq!(
        alice.expect("OFFER").await["payload"]["connectionId"],
        "still here"
    );
}
