//! What a room needs from the rest of a cluster: "where is id X" and "deliver to X".
//!
//! The room layer never knows how other nodes are reached; the `cluster` module implements
//! [`Remote`] on NATS. A node that runs alone has no `Remote` at all, so its rooms take
//! exactly the paths they always took (one `Option` test on the offline path, none on the
//! direct one).
//!
//! A registered id in a cluster holds a [`Seat`]: the cluster's record that this node holds
//! the id, kept by the member like its peer slot and given back when the member is dropped,
//! whatever drops it (leave, take-over, slow reader, a failed room).

use std::sync::Arc;

use sha2::{Digest, Sha256};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::protocol::MessageType;

/// A node's name.
pub type NodeId = Arc<str>;

/// A reconnect secret as it travels between nodes: a digest, never the secret itself.
pub type TokenDigest = [u8; 16];

/// The digest of a reconnect secret (the first 16 bytes of its SHA-256).
pub fn token_digest(secret: &str) -> TokenDigest {
    let hash = Sha256::digest(secret.as_bytes());
    let mut out = [0u8; 16];
    out.copy_from_slice(&hash[..16]);
    out
}

/// Other nodes, as a room sees them.
pub trait Remote: Send + Sync + std::fmt::Debug {
    /// The node that holds `id` in `room`, if another node does.
    fn locate(&self, room: &str, id: &str) -> Option<NodeId>;

    /// Hands `frame` (for `dst`, from `src`) to `node`. False if it cannot go now (the bus
    /// is unreachable or its backlog is full): the caller answers as for an offline peer.
    fn deliver(
        &self,
        node: &NodeId,
        room: &str,
        src: &str,
        dst: &str,
        kind: MessageType,
        frame: &Utf8Bytes,
    ) -> bool;

    /// The ids of `room` held on other nodes, oldest claim first.
    fn members(&self, room: &str) -> Vec<Arc<str>>;
}

/// A registered id's place in the cluster (see the module doc).
pub trait SeatGuard: Send + Sync + std::fmt::Debug {
    /// The member is registered: tell the cluster (the claim becomes a holding).
    fn hold(&mut self);
    /// When the id was claimed (µs since the epoch), which the partition rule compares.
    fn claimed_at(&self) -> u64;
}

/// A seat, owned by the member (or the join request) that holds it.
pub type Seat = Box<dyn SeatGuard>;
