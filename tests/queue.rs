//! The offline queue: delivery after OPEN in order, EXPIRE per (sender, destination), bounds.

mod common;

use common::*;
use peerjsd::protocol::DropReason;
use serde_json::{Value, json};
use std::net::IpAddr;
use std::time::Duration;

#[tokio::test]
async fn queued_messages_arrive_in_order_right_after_open() {
    let server = TestServer::start(peerjsd::Config::default()).await;
    let alice = PeerClient::open(&server, "alice").await;
    let bob = PeerClient::open(&server, "bob").await;
    let messages = [
        offer("carol", "dc_a"),
        candidate("carol", "dc_a", 1),
        candidate("carol", "dc_a", 2),
    ];
    for m in &messages {
        alice.send(m.clone());
    }
    // Order is per sender; wait so bob's message is queued after all of alice's.
    server
        .until("three queued", |s| s.metrics.queued_messages.get() == 3)
        .await;
    let from_bob = answer("carol", "dc_b");
    bob.send(from_bob.clone());
    server
        .until("four queued", |s| s.metrics.queued_messages.get() == 4)
        .await;

    let mut carol = PeerClient::connect(&server, "carol", "t").await;
    assert_eq!(carol.recv().await, json!({"type": "OPEN"}));
    for m in &messages {
        assert_eq!(carol.recv().await, relayed(m, "alice"));
    }
    assert_eq!(carol.recv().await, relayed(&from_bob, "bob"));
    assert_eq!(server.shared.metrics.queued_messages.get(), 0);
    assert_eq!(server.shared.metrics.queued_bytes.get(), 0);
}

#[tokio::test]
async fn expiry_sends_one_expire_per_sender_and_destination() {
    let server = TestServer::with(|c| c.expire_timeout = Duration::from_millis(300)).await;
    let mut alice = PeerClient::open(&server, "alice").await;
    let mut bob = PeerClient::open(&server, "bob").await;
    alice.send(offer("ghost", "dc_1"));
    alice.send(candidate("ghost", "dc_1", 1));
    alice.send(candidate("ghost", "dc_1", 2));
    bob.send(offer("ghost", "dc_2"));
    alice.send(offer("phantom", "dc_3"));

    let mut got = vec![alice.recv().await, alice.recv().await];
    got.sort_by_key(|v| v["src"].as_str().unwrap_or_default().to_owned());
    assert_eq!(
        got,
        [
            json!({"type": "EXPIRE", "src": "ghost", "dst": "alice"}),
            json!({"type": "EXPIRE", "src": "phantom", "dst": "alice"})
        ]
    );
    assert_eq!(
        bob.recv().await,
        json!({"type": "EXPIRE", "src": "ghost", "dst": "bob"})
    );
    // Nothing more: a marker sent now is the next thing alice sees.
    bob.send(json!({"type": "ANSWER", "dst": "alice", "payload": "marker"}));
    assert_eq!(alice.recv().await["payload"], "marker");
    assert_eq!(server.shared.metrics.dropped(DropReason::Expired), 5);
    // The ghost connecting later finds nothing.
    let mut ghost = PeerClient::open(&server, "ghost").await;
    alice.send(json!({"type": "ANSWER", "dst": "ghost", "payload": "marker"}));
    assert_eq!(ghost.recv().await["payload"], "marker");
}

#[tokio::test]
async fn expire_is_dropped_when_the_sender_has_gone() {
    let server = TestServer::with(|c| c.expire_timeout = Duration::from_millis(200)).await;
    let alice = PeerClient::open(&server, "alice").await;
    let _bob = PeerClient::open(&server, "bob").await;
    alice.send(offer("ghost", "dc_1"));
    server
        .until("queued", |s| s.metrics.queued_messages.get() == 1)
        .await;
    alice.close();
    server
        .until("expired", |s| s.metrics.dropped(DropReason::Expired) == 1)
        .await;
    assert_eq!(server.shared.metrics.queued_bytes.get(), 0);
}

#[tokio::test]
async fn a_full_queue_answers_expire_at_once() {
    let server = TestServer::with(|c| {
        c.max_queue_per_peer = 3;
        c.expire_timeout = Duration::from_secs(60);
    })
    .await;
    let mut alice = PeerClient::open(&server, "alice").await;
    for n in 0..3 {
        alice.send(candidate("ghost", "dc", n));
    }
    alice.send(candidate("ghost", "dc", 3));
    assert_eq!(
        alice.recv().await,
        json!({"type": "EXPIRE", "src": "ghost", "dst": "alice"})
    );
    assert_eq!(server.shared.metrics.dropped(DropReason::QueueOverflow), 1);
    assert_eq!(server.shared.metrics.queued_messages.get(), 3);
    // The three that fit are still delivered.
    let mut ghost = PeerClient::open(&server, "ghost").await;
    for n in 0..3 {
        assert_eq!(
            ghost.recv().await,
            relayed(&candidate("ghost", "dc", n), "alice")
        );
    }
}

#[tokio::test]
async fn the_server_wide_queue_bound_holds_across_destinations() {
    let server = TestServer::with(|c| {
        c.max_queued_bytes = 4 * 1024;
        c.expire_timeout = Duration::from_secs(60);
    })
    .await;
    let mut alice = PeerClient::open(&server, "alice").await;
    // ~600-byte offers to distinct offline ids: only a handful fit in 4 KiB.
    for n in 0..20 {
        alice.send(offer(&format!("ghost{n}"), "dc"));
    }
    let mut expired = 0;
    server
        .until("all 20 offers queued or refused", |s| {
            s.metrics.dropped(DropReason::QueueOverflow) + (s.metrics.queued_messages.get() as u64)
                >= 20
        })
        .await;
    let overflow = server.shared.metrics.dropped(DropReason::QueueOverflow);
    assert!(overflow >= 14, "{overflow} overflowed");
    for _ in 0..overflow {
        let frame = alice.expect("EXPIRE").await;
        assert_eq!(frame["dst"], "alice");
        expired += 1;
    }
    assert_eq!(expired, overflow);
    assert!(server.shared.metrics.queued_bytes.get() <= 4 * 1024);
}

/// Senders keep streaming to an id that connects midway: the first messages are queued, the
/// rest go straight to the new member, and none may overtake an earlier one from the same
/// sender (the direct path waits for the sender's messages still passing through the room).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streams_to_an_id_that_connects_midway_arrive_in_order() {
    const SENDERS: usize = 4;
    const MESSAGES: u32 = 1000;
    let server = TestServer::with(|c| {
        c.max_queue_per_peer = SENDERS * MESSAGES as usize;
        c.max_queue_per_sender = MESSAGES as usize;
        c.outbound_queue = 2 * SENDERS * MESSAGES as usize;
        c.rate_limit = None;
    })
    .await;
    for round in 0..20 {
        let dst = format!("late{round}");
        let mut senders = Vec::new();
        for s in 0..SENDERS {
            senders.push(PeerClient::open(&server, &format!("s{s}r{round}")).await);
        }
        let queued_before = server.shared.metrics.queued_messages.get();
        let streams: Vec<_> = senders
            .iter()
            .map(|sender| {
                let send = sender.sender();
                let dst = dst.clone();
                tokio::spawn(async move {
                    for n in 0..MESSAGES {
                        send(candidate(&dst, "dc", n).to_string());
                        if n % 64 == 0 {
                            tokio::task::yield_now().await;
                        }
                    }
                })
            })
            .collect();
        // Connect once part of the streams has been queued.
        server
            .until("part of the streams queued", |s| {
                s.metrics.queued_messages.get() > queued_before + 20
            })
            .await;
        let mut late = PeerClient::connect(&server, &dst, "t").await;
        assert_eq!(late.recv().await, json!({"type": "OPEN"}));
        let mut next = [0u32; SENDERS];
        for _ in 0..SENDERS as u32 * MESSAGES {
            let got = late.recv().await;
            let src = got["src"].as_str().unwrap_or_default();
            let s = (0..SENDERS)
                .find(|s| src == format!("s{s}r{round}"))
                .unwrap_or_else(|| panic!("unexpected sender in {got}"));
            let want = relayed(&candidate(&dst, "dc", next[s]), src);
            assert_eq!(got, want, "round {round}: from {src}, out of order");
            next[s] += 1;
        }
        for stream in streams {
            stream.await.unwrap();
        }
    }
}

/// One sender fills the offline queue with 1 MiB OFFERs to made-up ids (within the rate
/// limit, refilling as its EXPIREs come back): it holds no more than its share, and another
/// sender's messages to a peer that connects a second later are all delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_sender_cannot_use_up_the_offline_queue_for_everyone() {
    let server = TestServer::with(|_| {}).await; // defaults: 32 MiB in all, 1 MiB per sender
    let share = server.shared.config.max_queued_bytes_per_sender;
    let attacker = PeerClient::open(&server, "attacker").await;
    let honest = PeerClient::open(&server, "honest").await;
    let offer = |n: u32| {
        json!({"type": "OFFER", "dst": format!("ghost{n}"), "payload": "x".repeat(1_048_000)})
            .to_string()
    };
    for n in 0..32 {
        attacker.send_text(&offer(n));
    }
    server
        .until("the first 32 offers handled", |s| {
            s.metrics.queued_messages.get() as u64
                + s.metrics.dropped(DropReason::QueueShare)
                + s.metrics.dropped(DropReason::QueueOverflow)
                >= 32
        })
        .await;
    let flood = tokio::spawn({
        let send = attacker.sender();
        let mut attacker = attacker;
        async move {
            // Refill as EXPIREs come back, at most 20 a second (under the rate limit).
            let mut n = 32;
            while let Some(frame) = attacker.next_frame().await {
                if frame["type"] == "EXPIRE" {
                    n += 1;
                    send(offer(n));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
    for n in 0..28 {
        honest.send(offer_to("late", n));
        tokio::time::sleep(Duration::from_millis(30)).await;
        let queued = server.shared.rooms.budgets.queued_bytes();
        assert!(queued <= 2 * share, "{queued} bytes queued");
    }
    let mut late = PeerClient::connect(&server, "late", "t").await;
    assert_eq!(late.recv().await, json!({"type": "OPEN"}));
    for n in 0..28 {
        assert_eq!(late.recv().await, relayed(&offer_to("late", n), "honest"));
    }
    assert!(server.shared.metrics.dropped(DropReason::QueueShare) > 0);
    flood.abort();
}

fn offer_to(dst: &str, n: u32) -> Value {
    json!({"type": "OFFER", "dst": dst, "payload": {"n": n, "sdp": sdp(300)}})
}

/// Many senders from one address (each within its own share) cannot use up the offline queue
/// either: together they hold at most their address's share (`--max-queued-bytes-per-ip`),
/// and a sender from another address still queues.
#[tokio::test]
async fn senders_from_one_address_share_one_part_of_the_offline_queue() {
    const PER_IP: usize = 256 * 1024;
    let server = TestServer::with(|c| {
        c.rate_limit = None;
        c.max_queued_bytes_per_ip = PER_IP;
    })
    .await;
    let attacker_ip: IpAddr = [127, 0, 0, 1].into();
    let big = |dst: &str| {
        json!({"type": "OFFER", "dst": dst, "payload": "x".repeat(100_000)}).to_string()
    };
    let mut attackers = Vec::new();
    for a in 0..4 {
        let attacker = PeerClient::open_from(&server, &format!("a{a}"), attacker_ip).await;
        for n in 0..4 {
            attacker.send_text(&big(&format!("ghost-{a}-{n}")));
        }
        attackers.push(attacker);
    }
    // 16 offers of 100 KB, each sender well within its own 1 MiB: only two fit the address's
    // share, the other 14 are answered EXPIRE at once.
    server
        .until("14 refused", |s| {
            s.metrics.dropped(DropReason::QueueShare) == 14
        })
        .await;
    // Each sender is told, per made-up id.
    let mut expired = 0;
    tokio::time::timeout(WAIT, async {
        while expired < 14 {
            for attacker in &mut attackers {
                for event in attacker.drain() {
                    match event {
                        Event::Frame(frame) if frame["type"] == "EXPIRE" => expired += 1,
                        other => panic!("unexpected {other:?}"),
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("14 EXPIREs");
    assert_eq!(expired, 14);
    let queued = server.shared.rooms.budgets.origin_bytes(attacker_ip);
    assert!(
        (200_000..=PER_IP).contains(&queued),
        "{queued} bytes queued"
    );
    assert_eq!(server.shared.metrics.queued_messages.get(), 2);
    // Another address queues as usual, and its peer gets everything when it comes.
    let honest = PeerClient::open_from(&server, "honest", [127, 0, 0, 2].into()).await;
    for _ in 0..2 {
        honest.send_text(&big("late"));
    }
    server
        .until("the honest offers queued", |s| {
            s.metrics.queued_messages.get() == 4
        })
        .await;
    let mut late = PeerClient::connect(&server, "late", "t").await;
    assert_eq!(late.recv().await, json!({"type": "OPEN"}));
    for _ in 0..2 {
        assert_eq!(late.expect("OFFER").await["src"], "honest");
    }
    assert_eq!(server.shared.metrics.dropped(DropReason::QueueShare), 14);
}
