//! The cluster's tasks: the NATS connection, the publisher, and the node task that reads the
//! bus, answers other nodes, keeps the directory and detects dead nodes.
//!
//! The node task is the only writer of the directory. It runs the deadline loop: inbound
//! messages as they come, this node's changes when there are some, a heartbeat every
//! `--cluster-heartbeat`, and the earliest "this node is dead" deadline. Everything from the
//! bus is decoded by [`super::wire::decode`] first; what does not decode is counted and
//! dropped, and a well-formed message that makes no sense here (an answer nobody waits for,
//! changes from a node not yet known) is ignored. Work that has to wait (probing a holder
//! for another node) runs in tasks of its own, at most [`MAX_RELEASES`] at once.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::{ConnectOptions, Event, Subject, Subscriber};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{Semaphore, oneshot, watch};
use tokio::time::{Instant, MissedTickBehavior, sleep_until};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::wire::{self, Message};
use super::{Cluster, Held, NodeState, bounded};
use crate::config::ClusterAuth;
use crate::metrics::ClusterDrop;
use crate::protocol::CloseReason;
use crate::room::registry::RoomRegistry;
use crate::room::{DstRef, Holder, Relay, RoomCmd, RoomHandle};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Releases (probes for other nodes' newcomers) under way at once; more are answered
/// "alive", which can only keep a holder, never evict one.
const MAX_RELEASES: usize = 64;

/// Inbound messages the NATS client buffers per subscription before it drops (and reports
/// a slow consumer).
const SUBSCRIPTION_CAPACITY: usize = 8 * 1024;

/// Commands for rooms whose mailbox was full, waiting in tasks of their own; past it they
/// are dropped and counted (`room_busy`): the node task never waits for a room.
const MAX_WAITING_SENDS: usize = 1024;

/// How long the publisher may take to hand the last messages (the goodbye) to NATS.
const FINAL_FLUSH: Duration = Duration::from_secs(1);

/// Connects to NATS in the background and spawns the publisher and the node task on the
/// shutdown tracker. Returns at once: until NATS answers, the node runs degraded.
pub async fn start(
    cluster: Arc<Cluster>,
    rooms: Arc<RoomRegistry>,
    tracker: TaskTracker,
    token: CancellationToken,
    probe_timeout: Duration,
) {
    let settings = &cluster.settings;
    let (state_tx, state_rx) = watch::channel(false);
    let metrics = Arc::clone(&cluster.metrics);
    let mut options = ConnectOptions::new()
        .name(format!("peerjsd {}", cluster.node))
        .no_echo()
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(settings.node_timeout)
        .ping_interval(settings.node_timeout)
        .subscription_capacity(SUBSCRIPTION_CAPACITY)
        .reconnect_delay_callback(|attempts| {
            // Quick retries at first (another server of the list is likely up), then 1 s.
            Duration::from_millis((attempts as u64 * 100).min(1000))
        })
        .event_callback(move |event| {
            let state_tx = state_tx.clone();
            let metrics = Arc::clone(&metrics);
            async move {
                match event {
                    Event::Connected => {
                        let _ = state_tx.send(true);
                    }
                    Event::Disconnected | Event::Closed => {
                        let _ = state_tx.send(false);
                    }
                    Event::SlowConsumer(_) => metrics.cluster_drop(ClusterDrop::SlowConsumer),
                    _ => {}
                }
            }
        });
    options = match &settings.auth {
        ClusterAuth::None => options,
        ClusterAuth::Creds(path) => match options.credentials_file(path).await {
            Ok(options) => options,
            Err(error) => {
                // Checked at start-up; a file that went away since leaves the node degraded.
                tracing::error!(%error, path = %path.display(), "cannot read --cluster-creds");
                return;
            }
        },
        ClusterAuth::UserPassword(user, password) => options.user_and_password(
            user.clone(),
            String::from_utf8_lossy(password.bytes()).into_owned(),
        ),
        ClusterAuth::Token(token) => {
            options.token(String::from_utf8_lossy(token.bytes()).into_owned())
        }
    };
    if let Some(ca) = &settings.tls_ca {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    let client = match options.connect(settings.urls.join(",")).await {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(%error, "cannot set up the cluster's NATS connection");
            return;
        }
    };
    let subscribed = async {
        let bcast = client.subscribe(cluster.broadcast_subject()).await?;
        let inbox = client.subscribe(cluster.inbox_of(&cluster.node)).await?;
        Ok::<_, async_nats::SubscribeError>((bcast, inbox))
    };
    let (bcast, inbox) = match subscribed.await {
        Ok(subs) => subs,
        Err(error) => {
            tracing::error!(%error, "cannot subscribe to the cluster's subjects");
            return;
        }
    };
    tracing::info!(
        node = &*cluster.node,
        cluster = &*cluster.settings.name,
        "joining the cluster"
    );
    let Some(publish_rx) = cluster
        .publish_rx
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
    else {
        return;
    };
    let (stop_tx, stop_rx) = oneshot::channel();
    tracker.spawn(publish(
        client.clone(),
        Arc::clone(&cluster),
        publish_rx,
        stop_rx,
    ));
    let task = NodeTask {
        releases: Arc::new(Semaphore::new(MAX_RELEASES)),
        waiting_sends: Arc::new(Semaphore::new(MAX_WAITING_SENDS)),
        cluster,
        rooms,
        tracker: tracker.clone(),
        token,
        probe_timeout,
        published_seq: 0,
    };
    tracker.spawn(task.run(bcast, inbox, state_rx, stop_tx, client));
}

/// The publisher: hands queued messages to NATS, one at a time, in order. On `stop` it
/// publishes what is still queued (the goodbye last), flushes, and ends.
async fn publish(
    client: async_nats::Client,
    cluster: Arc<Cluster>,
    mut queue: tokio::sync::mpsc::Receiver<(Subject, Bytes)>,
    mut stop: oneshot::Receiver<()>,
) {
    let send = |subject: Subject, payload: Bytes| {
        cluster
            .backlog
            .fetch_sub(payload.len() + subject.len(), Ordering::AcqRel);
        let client = client.clone();
        let metrics = Arc::clone(&cluster.metrics);
        async move {
            if client.publish(subject, payload).await.is_err() {
                metrics.cluster_drop(ClusterDrop::PublishFailed);
            }
        }
    };
    loop {
        tokio::select! {
            biased;
            _ = &mut stop => break,
            next = queue.recv() => match next {
                Some((subject, payload)) => {
                    // A connection that is down blocks here; a stop still ends the task.
                    tokio::select! {
                        biased;
                        _ = &mut stop => return,
                        () = send(subject, payload) => {}
                    }
                }
                None => return,
            },
        }
    }
    let _ = bounded(FINAL_FLUSH, async {
        while let Ok((subject, payload)) = queue.try_recv() {
            send(subject, payload).await;
        }
        let _ = client.flush().await;
    })
    .await;
}

/// The node task (see the module doc).
struct NodeTask {
    cluster: Arc<Cluster>,
    rooms: Arc<RoomRegistry>,
    /// Where the node task's helpers run (waits for full mailboxes, probes for others).
    tracker: TaskTracker,
    /// Cancelled on shutdown: the node says goodbye and ends.
    token: CancellationToken,
    probe_timeout: Duration,
    releases: Arc<Semaphore>,
    /// Bounds the commands waiting for a full room mailbox.
    waiting_sends: Arc<Semaphore>,
    /// The number of the last change handed to the publisher (what heartbeats announce).
    published_seq: u64,
}

impl NodeTask {
    async fn run(
        mut self,
        mut bcast: Subscriber,
        mut inbox: Subscriber,
        mut state: watch::Receiver<bool>,
        stop_publisher: oneshot::Sender<()>,
        client: async_nats::Client,
    ) {
        let settings = &self.cluster.settings;
        let mut heartbeat = tokio::time::interval(settings.heartbeat);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let token = self.token.clone();
        let far = Instant::now() + Duration::from_secs(86_400 * 365);
        loop {
            let next_death = self.next_death();
            tokio::select! {
                biased;
                _ = token.cancelled() => break,
                changed = state.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let up = *state.borrow_and_update();
                    self.connection(up);
                }
                Some(message) = bcast.next() => self.handle(message.payload),
                Some(message) = inbox.next() => self.handle(message.payload),
                () = self.cluster.changed.notified() => self.flush_changes(),
                _ = heartbeat.tick() => {
                    self.flush_changes();
                    self.heartbeat();
                }
                () = sleep_until(next_death.unwrap_or(far)), if next_death.is_some() => {
                    self.bury_the_dead(Instant::now());
                }
            }
        }
        // Leaving: the others forget this node's ids at once instead of after the timeout.
        let goodbye = Message::Goodbye(wire::Goodbye {
            node: self.cluster.node.to_string(),
            epoch: self.cluster.epoch,
        });
        self.cluster
            .publish(self.cluster.broadcast_subject(), goodbye.encode());
        let _ = stop_publisher.send(());
        drop((bcast, inbox, client));
        self.cluster.metrics.cluster_connected.set(0);
    }

    fn connection(&mut self, up: bool) {
        let was = self.cluster.connected.swap(up, Ordering::AcqRel);
        self.cluster.metrics.cluster_connected.set(i64::from(up));
        if up && !was {
            self.cluster.connected_now();
            tracing::info!(node = &*self.cluster.node, "cluster connected");
            self.flush_changes();
            self.heartbeat();
        } else if !up && was {
            tracing::warn!(
                node = &*self.cluster.node,
                "cluster unreachable: serving local peers only (degraded)"
            );
        }
    }

    /// When the first node that has gone quiet will be declared dead.
    fn next_death(&self) -> Option<Instant> {
        let timeout = self.cluster.settings.node_timeout;
        let directory = self.cluster.read_directory();
        directory
            .nodes
            .values()
            .map(|n| n.last_seen + timeout)
            .min()
    }

    fn heartbeat(&mut self) {
        let message = Message::Heartbeat(wire::Heartbeat {
            node: self.cluster.node.to_string(),
            epoch: self.cluster.epoch,
            seq: self.published_seq,
        });
        if self.cluster.is_connected() {
            self.cluster
                .publish(self.cluster.broadcast_subject(), message.encode());
        }
    }

    /// Broadcasts this node's changes (unless NATS is down: they wait, up to a bound).
    fn flush_changes(&mut self) {
        if !self.cluster.is_connected() {
            return;
        }
        let (changes, seq) = {
            let mut local = self.cluster.lock_local();
            (std::mem::take(&mut local.changes), local.seq)
        };
        for batch in changes.chunks(super::CHANGES_PER_MESSAGE) {
            let message = Message::Changes(wire::Changes {
                node: self.cluster.node.to_string(),
                epoch: self.cluster.epoch,
                changes: batch.to_vec(),
            });
            self.cluster
                .publish(self.cluster.broadcast_subject(), message.encode());
        }
        self.published_seq = seq;
    }

    fn handle(&mut self, payload: Bytes) {
        let message = match wire::decode(payload) {
            Ok(message) => message,
            Err(_) => {
                self.cluster.metrics.cluster_drop(ClusterDrop::Malformed);
                return;
            }
        };
        if let Some(node) = sender(&message)
            && node == &*self.cluster.node
        {
            self.cluster.metrics.cluster_drop(ClusterDrop::NameClash);
            tracing::error!(
                node,
                "another node of the cluster uses this node's name; give each a unique --node-name"
            );
            return;
        }
        match message {
            Message::Heartbeat(hb) => self.on_heartbeat(hb),
            Message::Changes(changes) => self.on_changes(changes),
            Message::Claim(claim) => self.on_claim(claim),
            Message::ClaimReply(reply) => {
                self.cluster.answer(reply.req, Message::ClaimReply(reply));
            }
            Message::ReleaseReply(reply) => {
                self.cluster.answer(reply.req, Message::ReleaseReply(reply));
            }
            Message::Deliver(deliver) => self.on_deliver(deliver),
            Message::Release(release) => self.on_release(release),
            Message::SyncRequest(request) => self.on_sync_request(&request.node),
            Message::SyncChunk(chunk) => self.on_sync_chunk(chunk),
            Message::Goodbye(goodbye) => {
                let known = self
                    .cluster
                    .read_directory()
                    .nodes
                    .get(goodbye.node.as_str())
                    .is_some_and(|n| n.epoch == goodbye.epoch);
                if known {
                    tracing::info!(node = goodbye.node, "cluster node left");
                    self.forget_node(&goodbye.node);
                }
            }
        }
        self.update_gauges();
    }

    fn update_gauges(&self) {
        let directory = self.cluster.read_directory();
        let metrics = &self.cluster.metrics;
        metrics.cluster_nodes.set(directory.nodes.len() as i64);
        metrics
            .cluster_remote_peers
            .set(directory.remote_peers as i64);
    }

    fn on_heartbeat(&mut self, hb: wire::Heartbeat) {
        let now = Instant::now();
        let mut directory = self.cluster.write_directory();
        let node: Arc<str> = match directory.nodes.get_key_value(hb.node.as_str()) {
            Some((name, state)) if state.epoch == hb.epoch => {
                let name = Arc::clone(name);
                let sync_due = state.applied < hb.seq
                    && state.sync.as_ref().is_none_or(|(asked, _)| {
                        now.duration_since(*asked) > self.cluster.settings.node_timeout
                    });
                if let Some(state) = directory.nodes.get_mut(&name) {
                    state.last_seen = now;
                    if sync_due {
                        state.sync = Some((now, Vec::new()));
                    }
                }
                drop(directory);
                if sync_due {
                    self.request_sync(&name);
                }
                return;
            }
            Some((name, _)) => Arc::clone(name),
            None => Arc::from(hb.node.as_str()),
        };
        // A node not known, or a new incarnation of one (restarted): forget what it held,
        // and ask for what it holds now.
        let restarted = directory.nodes.remove(&node).is_some();
        let gone = if restarted {
            directory.remove_node(&node)
        } else {
            Vec::new()
        };
        directory.nodes.insert(
            Arc::clone(&node),
            NodeState {
                epoch: hb.epoch,
                applied: 0,
                last_seen: now,
                inbox: self.cluster.inbox_of(&node),
                sync: Some((now, Vec::new())),
            },
        );
        drop(directory);
        tracing::info!(node = &*node, restarted, "cluster node joined");
        self.announce_gone(gone);
        self.request_sync(&node);
    }

    fn request_sync(&self, node: &str) {
        let message = Message::SyncRequest(wire::SyncRequest {
            node: self.cluster.node.to_string(),
        });
        self.cluster
            .publish(self.cluster.inbox_of(node), message.encode());
    }

    fn on_changes(&mut self, changes: wire::Changes) {
        let mut directory = self.cluster.write_directory();
        let Some((node, state)) = directory.nodes.get_key_value(changes.node.as_str()) else {
            return;
        };
        if state.epoch != changes.epoch {
            return;
        }
        let node = Arc::clone(node);
        let mut applied = state.applied;
        let syncing = state.sync.is_some();
        let mut joined = Vec::new();
        let mut left = Vec::new();
        let mut gap = false;
        for change in changes.changes {
            if change.seq <= applied {
                continue;
            }
            if change.seq != applied + 1 {
                gap = true;
                break;
            }
            applied = change.seq;
            match change.op {
                wire::ChangeOp::Join => {
                    let held = Held {
                        node: Arc::clone(&node),
                        ts: change.ts,
                    };
                    if insert_earlier(&mut directory, &change.room, &change.id, held) {
                        joined.push((change.room, change.id, change.ts));
                    }
                }
                wire::ChangeOp::Leave => {
                    if directory.remove(&change.room, &change.id, &node) {
                        left.push((Box::from(change.room), Arc::from(change.id)));
                    }
                }
            }
        }
        let now = Instant::now();
        if let Some(state) = directory.nodes.get_mut(&node) {
            state.applied = applied;
            if gap && !syncing {
                state.sync = Some((now, Vec::new()));
            }
        }
        drop(directory);
        if gap && !syncing {
            self.request_sync(&node);
        }
        for (room, id, ts) in joined {
            self.joined_elsewhere(&room, &id, ts, &node);
        }
        self.announce_gone(left);
    }

    /// An id registered on `node`: the partition rule for a duplicate here, and what is
    /// queued here for it goes there.
    fn joined_elsewhere(&self, room: &str, id: &str, ts: u64, node: &str) {
        let ours = {
            let local = self.cluster.lock_local();
            local
                .rooms
                .get(room)
                .and_then(|ids| ids.get(id))
                .filter(|seat| seat.held)
                .map(|seat| seat.ts)
        };
        let id: Arc<str> = Arc::from(id);
        if let Some(our_ts) = ours
            && (our_ts, &*self.cluster.node) > (ts, node)
        {
            // The same id registered there earlier: ours goes.
            self.cluster.metrics.cluster_duplicates.inc();
            tracing::warn!(
                peer = &*id,
                node,
                "id also registered on another node with an earlier claim; closing ours"
            );
            self.tell(
                room,
                RoomCmd::Evict {
                    id: Arc::clone(&id),
                    conn: None,
                    claimed_at: Some(our_ts),
                    reason: CloseReason::DuplicateId,
                    reply: None,
                },
            );
        }
        self.tell(room, RoomCmd::RemoteJoined { id });
    }

    /// Ids that left other nodes: their rooms here announce it.
    fn announce_gone(&self, gone: Vec<(Box<str>, Arc<str>)>) {
        if !self.rooms.config.announce_leave {
            return;
        }
        for (room, id) in gone {
            self.tell(&room, RoomCmd::RemoteLeft { id });
        }
    }

    /// Hands `cmd` to room `room` if it exists here; waits only if its mailbox is full.
    fn tell(&self, room: &str, cmd: RoomCmd) {
        if let Some(handle) = self.rooms.get(room) {
            self.send_to_room(handle, cmd);
        }
    }

    /// Sends `cmd` to a room: at once if its mailbox has space, else from a task that waits
    /// for it (at most [`MAX_WAITING_SENDS`] at once; rooms drain their mailboxes quickly, and
    /// the node task never waits on one).
    fn send_to_room(&self, room: RoomHandle, cmd: RoomCmd) {
        use tokio::sync::mpsc::error::TrySendError;
        let Err(TrySendError::Full(cmd)) = room.try_send(cmd) else {
            return;
        };
        let Ok(permit) = Arc::clone(&self.waiting_sends).try_acquire_owned() else {
            self.cluster.metrics.cluster_drop(ClusterDrop::RoomBusy);
            return;
        };
        self.tracker.spawn(async move {
            let _ = room.send(cmd).await;
            drop(permit);
        });
    }

    fn on_claim(&self, claim: wire::Claim) {
        let me = &*self.cluster.node;
        let before = |ts: u64| (ts, me) < (claim.ts, claim.node.as_str());
        let (verdict, seats) = {
            let local = self.cluster.lock_local();
            match local.rooms.get(claim.room.as_str()) {
                None => (wire::Verdict::Free, 0),
                Some(ids) => {
                    let verdict = match ids.get(claim.id.as_str()) {
                        Some(seat) if seat.held => wire::Verdict::Held {
                            same_token: seat.token == claim.token,
                        },
                        Some(seat) if before(seat.ts) => wire::Verdict::ClaimedEarlier,
                        _ => wire::Verdict::Free,
                    };
                    let seats = ids.values().filter(|s| s.held || before(s.ts)).count();
                    (verdict, u32::try_from(seats).unwrap_or(u32::MAX))
                }
            }
        };
        let reply = Message::ClaimReply(wire::ClaimReply {
            node: me.to_owned(),
            req: claim.req,
            verdict,
            seats,
        });
        self.cluster
            .publish(self.cluster.inbox_of(&claim.node), reply.encode());
    }

    fn on_deliver(&self, deliver: wire::Deliver) {
        self.cluster.metrics.cluster_received.inc();
        let Ok(frame) = Utf8Bytes::try_from(deliver.frame) else {
            self.cluster.metrics.cluster_drop(ClusterDrop::Malformed);
            return;
        };
        // A message for an id that left meanwhile waits here like one for an offline peer.
        let room = self.rooms.get_or_spawn(&deliver.room);
        let relay = Relay {
            src: Arc::from(deliver.src),
            origin: None,
            kind: deliver.kind,
            dst: DstRef::Owned(deliver.dst.into_boxed_str()),
            frame,
            read_at: Instant::now(),
            sent: None,
        };
        self.send_to_room(room, RoomCmd::Relay(relay));
    }

    fn on_release(&self, release: wire::Release) {
        let inbox = self.cluster.inbox_of(&release.node);
        let reply = |outcome| {
            Message::ReleaseReply(wire::ReleaseReply {
                node: self.cluster.node.to_string(),
                req: release.req,
                outcome,
            })
        };
        let Ok(permit) = Arc::clone(&self.releases).try_acquire_owned() else {
            self.cluster
                .publish(inbox, reply(wire::Outcome::Alive).encode());
            return;
        };
        let Some(room) = self.rooms.get(&release.room) else {
            self.cluster
                .publish(inbox, reply(wire::Outcome::NotHere).encode());
            return;
        };
        let cluster = Arc::clone(&self.cluster);
        let probe_timeout = self.probe_timeout;
        self.tracker.spawn(async move {
            let outcome = release_id(room, &release, probe_timeout).await;
            let message = Message::ReleaseReply(wire::ReleaseReply {
                node: cluster.node.to_string(),
                req: release.req,
                outcome,
            });
            cluster.publish(inbox, message.encode());
            drop(permit);
        });
    }

    fn on_sync_request(&self, node: &str) {
        let (entries, seq) = {
            let local = self.cluster.lock_local();
            let mut entries = Vec::new();
            for (room, ids) in &local.rooms {
                for (id, seat) in ids {
                    if seat.held {
                        entries.push(wire::Entry {
                            room: room.to_string(),
                            id: id.to_string(),
                            ts: seat.ts,
                        });
                    }
                }
            }
            (entries, local.seq)
        };
        let inbox = self.cluster.inbox_of(node);
        let mut chunks = entries.chunks(wire::SYNC_CHUNK).peekable();
        if chunks.peek().is_none() {
            let message = self.chunk(seq, true, Vec::new());
            self.cluster.publish(inbox, message.encode());
            return;
        }
        while let Some(chunk) = chunks.next() {
            let last = chunks.peek().is_none();
            let message = self.chunk(seq, last, chunk.to_vec());
            self.cluster.publish(inbox.clone(), message.encode());
        }
    }

    fn chunk(&self, seq: u64, last: bool, entries: Vec<wire::Entry>) -> Message {
        Message::SyncChunk(wire::SyncChunk {
            node: self.cluster.node.to_string(),
            epoch: self.cluster.epoch,
            seq,
            last,
            entries,
        })
    }

    fn on_sync_chunk(&mut self, chunk: wire::SyncChunk) {
        let mut directory = self.cluster.write_directory();
        let Some((node, state)) = directory.nodes.get_key_value(chunk.node.as_str()) else {
            return;
        };
        let node = Arc::clone(node);
        if state.epoch != chunk.epoch || state.sync.is_none() {
            return;
        }
        let Some(state) = directory.nodes.get_mut(&node) else {
            return;
        };
        let Some((_, received)) = &mut state.sync else {
            return;
        };
        received.extend(chunk.entries);
        if !chunk.last {
            return;
        }
        let Some((_, snapshot)) = state.sync.take() else {
            return;
        };
        state.applied = state.applied.max(chunk.seq);
        // What it held before and does not now left; what it holds now is (re)inserted.
        let mut previous: HashSet<(Box<str>, Arc<str>)> =
            directory.remove_node(&node).into_iter().collect();
        let mut joined = Vec::new();
        for entry in snapshot {
            let held = Held {
                node: Arc::clone(&node),
                ts: entry.ts,
            };
            let known =
                previous.remove(&(Box::from(entry.room.as_str()), Arc::from(entry.id.as_str())));
            if insert_earlier(&mut directory, &entry.room, &entry.id, held) && !known {
                joined.push((entry.room, entry.id, entry.ts));
            }
        }
        drop(directory);
        self.cluster.metrics.cluster_syncs.inc();
        for (room, id, ts) in joined {
            self.joined_elsewhere(&room, &id, ts, &node);
        }
        self.announce_gone(previous.into_iter().collect());
    }

    /// Declares dead every node not heard from for `--cluster-node-timeout`.
    fn bury_the_dead(&mut self, now: Instant) {
        let timeout = self.cluster.settings.node_timeout;
        let dead: Vec<Arc<str>> = {
            let directory = self.cluster.read_directory();
            directory
                .nodes
                .iter()
                .filter(|(_, n)| n.last_seen + timeout <= now)
                .map(|(name, _)| Arc::clone(name))
                .collect()
        };
        for node in dead {
            tracing::warn!(
                node = &*node,
                "cluster node silent for the node timeout: its ids are freed"
            );
            self.cluster.metrics.cluster_nodes_lost.inc();
            self.forget_node(&node);
        }
        self.update_gauges();
    }

    fn forget_node(&self, node: &str) {
        let gone = {
            let mut directory = self.cluster.write_directory();
            directory.nodes.remove(node);
            directory.remove_node(node)
        };
        self.announce_gone(gone);
    }
}

/// The node that sent `message`, for those that name one.
fn sender(message: &Message) -> Option<&str> {
    match message {
        Message::Heartbeat(m) => Some(&m.node),
        Message::Changes(m) => Some(&m.node),
        Message::Claim(m) => Some(&m.node),
        Message::ClaimReply(m) => Some(&m.node),
        Message::Release(m) => Some(&m.node),
        Message::ReleaseReply(m) => Some(&m.node),
        Message::SyncRequest(m) => Some(&m.node),
        Message::SyncChunk(m) => Some(&m.node),
        Message::Goodbye(m) => Some(&m.node),
        Message::Deliver(_) => None,
    }
}

/// Inserts `held` unless another node holds the id with an earlier claim (that node keeps
/// it; the later one's node closes its registration when it learns of it). True if
/// inserted as new.
fn insert_earlier(directory: &mut super::Directory, room: &str, id: &str, held: Held) -> bool {
    if let Some(existing) = directory.rooms.get(room).and_then(|ids| ids.get(id)) {
        if existing.node == held.node {
            let ids = directory.rooms.get_mut(room);
            if let Some(slot) = ids.and_then(|ids| ids.get_mut(id)) {
                slot.ts = held.ts;
            }
            return false;
        }
        if (existing.ts, &*existing.node) < (held.ts, &*held.node) {
            return false;
        }
        let node = Arc::clone(&existing.node);
        directory.remove(room, id, &node);
    }
    directory.insert(room, id, held)
}

/// Asks the room holding `release.id` to let it go (see [`wire::Release`]).
async fn release_id(
    room: RoomHandle,
    release: &wire::Release,
    probe_timeout: Duration,
) -> wire::Outcome {
    let id: Arc<str> = Arc::from(release.id.as_str());
    let (reply, answer) = oneshot::channel();
    let check = RoomCmd::Check {
        id: Arc::clone(&id),
        token: release.token,
        reply,
    };
    if room.send(check).await.is_err() {
        return wire::Outcome::NotHere;
    }
    let (conn, reason) = match answer.await {
        Err(_) | Ok(Holder::NotHere) => return wire::Outcome::NotHere,
        Ok(Holder::SameToken(conn)) => (conn, CloseReason::Replaced),
        Ok(Holder::Probing(conn, alive)) => {
            if let Ok(Ok(())) = tokio::time::timeout(probe_timeout, alive).await {
                return wire::Outcome::Alive;
            }
            tracing::info!(
                peer = &*id,
                "id holder did not answer a ping; another node takes the id over"
            );
            (conn, CloseReason::ProbeFailed)
        }
    };
    let (reply, evicted) = oneshot::channel();
    let evict = RoomCmd::Evict {
        id,
        conn: Some(conn),
        claimed_at: None,
        reason,
        reply: Some(reply),
    };
    if room.send(evict).await.is_err() {
        return wire::Outcome::NotHere;
    }
    match evicted.await {
        Ok(true) => wire::Outcome::Released,
        _ => wire::Outcome::Alive,
    }
}
