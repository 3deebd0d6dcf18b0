//! The node-to-node protocol on NATS: message shapes and their bytes (no I/O).
//!
//! Every message is one NATS payload: a tag byte, then fixed fields in order. Strings are a
//! length byte (or two, for frames: the rest of the payload) and UTF-8 bytes; integers are
//! big-endian. The format is ours alone (all nodes of a cluster run the same major version),
//! small, and checked in one pass: [`decode`] refuses anything that is not exactly one
//! well-formed message — unknown tag, short or trailing bytes, bad UTF-8, an id or node name
//! of the wrong shape — so a hostile or corrupt message on a subject is counted and dropped
//! by the caller and never reaches a room.
//!
//! | subject | message | from → to |
//! |---|---|---|
//! | `<prefix>.hb` | [`Heartbeat`] | every node → all, every `--cluster-heartbeat` |
//! | `<prefix>.dir` | [`Changes`] | a node → all: ids it gained and lost, numbered |
//! | `<prefix>.claim` | [`Claim`] | a joining id's node → all |
//! | `<prefix>.node.<name>` | everything else | one node → that node (its inbox) |

use bytes::{BufMut, Bytes, BytesMut};

use crate::config::is_valid_node_name;
use crate::protocol::{MAX_NAME_LEN, MessageType, is_valid_id};

/// The size of a reconnect-secret digest on the bus (the secret itself never leaves a node).
pub const TOKEN_DIGEST: usize = 16;

/// A reconnect secret's digest.
pub type TokenDigest = [u8; TOKEN_DIGEST];

/// Entries per [`SyncChunk`]: a chunk stays far below NATS's default 1 MB payload.
pub const SYNC_CHUNK: usize = 512;

/// "I am alive; my directory changes are numbered up to `seq`."
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    /// The sender.
    pub node: String,
    /// When the sender started (µs since the epoch): a restarted node is a new incarnation.
    pub epoch: u64,
    /// The number of its last directory change.
    pub seq: u64,
}

/// Whether an id arrived or left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeOp {
    /// Registered on the sending node.
    Join,
    /// No longer registered there.
    Leave,
}

/// One directory change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Its number in the sender's sequence (consecutive: a gap means a lost message).
    pub seq: u64,
    /// Join or leave.
    pub op: ChangeOp,
    /// The room key (`""` in global mode).
    pub room: String,
    /// The id.
    pub id: String,
    /// When the id was claimed (µs since the epoch; the partition rule's first key).
    pub ts: u64,
}

/// A batch of directory changes, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changes {
    /// The sender.
    pub node: String,
    /// Its incarnation.
    pub epoch: u64,
    /// The changes, in sequence order.
    pub changes: Vec<Change>,
}

/// "May I register `id` in `room`?", asked of every node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The asking node (answers go to its inbox).
    pub node: String,
    /// Its request number.
    pub req: u64,
    /// The room key.
    pub room: String,
    /// The id.
    pub id: String,
    /// The joining socket's reconnect secret, digested.
    pub token: TokenDigest,
    /// When the claim was made (µs since the epoch, unique per node).
    pub ts: u64,
}

/// What a node knows of a claimed id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not registered here, nor claimed earlier.
    Free,
    /// Registered here; `same_token` if with the claim's secret.
    Held {
        /// The claim carries the holder's reconnect secret.
        same_token: bool,
    },
    /// An earlier claim of this node's own is under way: the asker loses.
    ClaimedEarlier,
}

/// A node's answer to a [`Claim`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimReply {
    /// The answering node.
    pub node: String,
    /// The claim's request number.
    pub req: u64,
    /// The id.
    pub verdict: Verdict,
    /// Seats this node holds in the room: its members, plus its own claims earlier than the
    /// asker's.
    pub seats: u32,
}

/// A message for a member on the receiving node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deliver {
    /// The room key.
    pub room: String,
    /// The sender's id (for EXPIRE, and queue shares).
    pub src: String,
    /// The destination id.
    pub dst: String,
    /// The message's type.
    pub kind: MessageType,
    /// The frame exactly as the destination's socket gets it (UTF-8, checked).
    pub frame: Bytes,
}

/// "Let `id` go, if the claim's secret is its holder's, or if its holder is dead."
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    /// The asking node.
    pub node: String,
    /// Its request number.
    pub req: u64,
    /// The room key.
    pub room: String,
    /// The id.
    pub id: String,
    /// The newcomer's secret, digested: the same as the holder's replaces it at once.
    pub token: TokenDigest,
}

/// What became of a [`Release`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The holder was closed (replaced, or failed its probe): the id is free.
    Released,
    /// The holder answered its probe: the id stays taken.
    Alive,
    /// The id is not registered here (any more).
    NotHere,
}

/// The answer to a [`Release`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseReply {
    /// The answering node.
    pub node: String,
    /// The request number.
    pub req: u64,
    /// What happened.
    pub outcome: Outcome,
}

/// "Send me everything you hold."
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncRequest {
    /// The asking node.
    pub node: String,
}

/// One id a node holds, in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The room key.
    pub room: String,
    /// The id.
    pub id: String,
    /// Its claim time.
    pub ts: u64,
}

/// Part of a node's snapshot; the last one has `last` set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncChunk {
    /// The node the snapshot is of.
    pub node: String,
    /// Its incarnation.
    pub epoch: u64,
    /// Its change number when the snapshot was taken.
    pub seq: u64,
    /// Whether this chunk completes the snapshot.
    pub last: bool,
    /// Ids held.
    pub entries: Vec<Entry>,
}

/// "I am shutting down: my ids are gone" (sent on a clean shutdown, so that the others need
/// not wait for the node timeout).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Goodbye {
    /// The leaving node.
    pub node: String,
    /// Its incarnation.
    pub epoch: u64,
}

/// Any message of the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// See [`Heartbeat`].
    Heartbeat(Heartbeat),
    /// See [`Changes`].
    Changes(Changes),
    /// See [`Claim`].
    Claim(Claim),
    /// See [`ClaimReply`].
    ClaimReply(ClaimReply),
    /// See [`Deliver`].
    Deliver(Deliver),
    /// See [`Release`].
    Release(Release),
    /// See [`ReleaseReply`].
    ReleaseReply(ReleaseReply),
    /// See [`SyncRequest`].
    SyncRequest(SyncRequest),
    /// See [`SyncChunk`].
    SyncChunk(SyncChunk),
    /// See [`Goodbye`].
    Goodbye(Goodbye),
}

const T_HEARTBEAT: u8 = 1;
const T_CHANGES: u8 = 2;
const T_CLAIM: u8 = 3;
const T_CLAIM_REPLY: u8 = 4;
const T_DELIVER: u8 = 5;
const T_RELEASE: u8 = 6;
const T_RELEASE_REPLY: u8 = 7;
const T_SYNC_REQUEST: u8 = 8;
const T_SYNC_CHUNK: u8 = 9;
const T_GOODBYE: u8 = 10;

/// Why a payload was refused (one reason for the `malformed` drop count).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed cluster message")]
pub struct Malformed;

struct Writer(BytesMut);

impl Writer {
    fn new(tag: u8, capacity: usize) -> Self {
        let mut buf = BytesMut::with_capacity(capacity + 1);
        buf.put_u8(tag);
        Writer(buf)
    }
    fn u8(&mut self, v: u8) -> &mut Self {
        self.0.put_u8(v);
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.put_u32(v);
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.put_u64(v);
        self
    }
    /// A short string (names, ids, rooms: at most 255 bytes; longer ones are cut, which the
    /// reader then refuses — they never come from a valid registration).
    fn str(&mut self, s: &str) -> &mut Self {
        let bytes = &s.as_bytes()[..s.len().min(255)];
        self.0.put_u8(bytes.len() as u8);
        self.0.put_slice(bytes);
        self
    }
    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.0.put_slice(b);
        self
    }
    fn finish(self) -> Bytes {
        self.0.freeze()
    }
}

struct Reader {
    buf: Bytes,
    at: usize,
}

impl Reader {
    fn take(&mut self, n: usize) -> Result<&[u8], Malformed> {
        let end = self.at.checked_add(n).ok_or(Malformed)?;
        let slice = self.buf.get(self.at..end).ok_or(Malformed)?;
        self.at = end;
        Ok(slice)
    }
    fn u8(&mut self) -> Result<u8, Malformed> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, Malformed> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, Malformed> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    fn bool(&mut self) -> Result<bool, Malformed> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(Malformed),
        }
    }
    fn str(&mut self) -> Result<String, Malformed> {
        let n = self.u8()? as usize;
        let b = self.take(n)?;
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| Malformed)
    }
    fn node(&mut self) -> Result<String, Malformed> {
        let s = self.str()?;
        if is_valid_node_name(&s) {
            Ok(s)
        } else {
            Err(Malformed)
        }
    }
    fn id(&mut self) -> Result<String, Malformed> {
        let s = self.str()?;
        if is_valid_id(&s) {
            Ok(s)
        } else {
            Err(Malformed)
        }
    }
    fn room(&mut self) -> Result<String, Malformed> {
        let s = self.str()?;
        if s.len() <= MAX_NAME_LEN {
            Ok(s)
        } else {
            Err(Malformed)
        }
    }
    fn token(&mut self) -> Result<TokenDigest, Malformed> {
        let mut t = [0u8; TOKEN_DIGEST];
        t.copy_from_slice(self.take(TOKEN_DIGEST)?);
        Ok(t)
    }
    fn kind(&mut self) -> Result<MessageType, Malformed> {
        let i = self.u8()? as usize;
        MessageType::ALL.get(i).copied().ok_or(Malformed)
    }
    /// Counts of repeated items are bounded by what the rest of the payload could hold, so
    /// a forged count cannot make the reader reserve memory it does not need.
    fn count(&mut self, min_item: usize) -> Result<usize, Malformed> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min_item) > self.buf.len() - self.at {
            return Err(Malformed);
        }
        Ok(n)
    }
    fn rest(&mut self) -> Bytes {
        let rest = self.buf.slice(self.at..);
        self.at = self.buf.len();
        rest
    }
    fn end(self) -> Result<(), Malformed> {
        if self.at == self.buf.len() {
            Ok(())
        } else {
            Err(Malformed)
        }
    }
}

impl Message {
    /// The payload bytes.
    pub fn encode(&self) -> Bytes {
        match self {
            Message::Heartbeat(m) => {
                let mut w = Writer::new(T_HEARTBEAT, 32 + m.node.len());
                w.str(&m.node).u64(m.epoch).u64(m.seq);
                w.finish()
            }
            Message::Changes(m) => {
                let mut w = Writer::new(T_CHANGES, 32 + m.changes.len() * 48);
                w.str(&m.node).u64(m.epoch).u32(m.changes.len() as u32);
                for c in &m.changes {
                    let op = match c.op {
                        ChangeOp::Join => 0,
                        ChangeOp::Leave => 1,
                    };
                    w.u64(c.seq).u8(op).str(&c.room).str(&c.id).u64(c.ts);
                }
                w.finish()
            }
            Message::Claim(m) => {
                let mut w = Writer::new(T_CLAIM, 64 + m.room.len() + m.id.len());
                w.str(&m.node).u64(m.req).str(&m.room).str(&m.id);
                w.bytes(&m.token).u64(m.ts);
                w.finish()
            }
            Message::ClaimReply(m) => {
                let mut w = Writer::new(T_CLAIM_REPLY, 32 + m.node.len());
                w.str(&m.node).u64(m.req);
                match m.verdict {
                    Verdict::Free => w.u8(0),
                    Verdict::Held { same_token: false } => w.u8(1),
                    Verdict::Held { same_token: true } => w.u8(2),
                    Verdict::ClaimedEarlier => w.u8(3),
                };
                w.u32(m.seats);
                w.finish()
            }
            Message::Deliver(m) => {
                let mut w = Writer::new(
                    T_DELIVER,
                    8 + m.room.len() + m.src.len() + m.dst.len() + m.frame.len(),
                );
                w.str(&m.room)
                    .str(&m.src)
                    .str(&m.dst)
                    .u8(m.kind.index() as u8);
                w.bytes(&m.frame);
                w.finish()
            }
            Message::Release(m) => {
                let mut w = Writer::new(T_RELEASE, 64 + m.room.len() + m.id.len());
                w.str(&m.node)
                    .u64(m.req)
                    .str(&m.room)
                    .str(&m.id)
                    .bytes(&m.token);
                w.finish()
            }
            Message::ReleaseReply(m) => {
                let mut w = Writer::new(T_RELEASE_REPLY, 16 + m.node.len());
                w.str(&m.node).u64(m.req).u8(match m.outcome {
                    Outcome::Released => 0,
                    Outcome::Alive => 1,
                    Outcome::NotHere => 2,
                });
                w.finish()
            }
            Message::SyncRequest(m) => {
                let mut w = Writer::new(T_SYNC_REQUEST, 1 + m.node.len());
                w.str(&m.node);
                w.finish()
            }
            Message::SyncChunk(m) => {
                let mut w = Writer::new(T_SYNC_CHUNK, 32 + m.entries.len() * 40);
                w.str(&m.node).u64(m.epoch).u64(m.seq).u8(u8::from(m.last));
                w.u32(m.entries.len() as u32);
                for e in &m.entries {
                    w.str(&e.room).str(&e.id).u64(e.ts);
                }
                w.finish()
            }
            Message::Goodbye(m) => {
                let mut w = Writer::new(T_GOODBYE, 16 + m.node.len());
                w.str(&m.node).u64(m.epoch);
                w.finish()
            }
        }
    }
}

/// Parses one payload, refusing anything that is not exactly one well-formed message.
pub fn decode(payload: Bytes) -> Result<Message, Malformed> {
    let mut r = Reader {
        buf: payload,
        at: 0,
    };
    let message = match r.u8()? {
        T_HEARTBEAT => Message::Heartbeat(Heartbeat {
            node: r.node()?,
            epoch: r.u64()?,
            seq: r.u64()?,
        }),
        T_CHANGES => {
            let node = r.node()?;
            let epoch = r.u64()?;
            // seq + op + two lengths + one byte of id + ts
            let n = r.count(8 + 1 + 2 + 1 + 8)?;
            let mut changes = Vec::with_capacity(n);
            for _ in 0..n {
                let seq = r.u64()?;
                let op = match r.u8()? {
                    0 => ChangeOp::Join,
                    1 => ChangeOp::Leave,
                    _ => return Err(Malformed),
                };
                changes.push(Change {
                    seq,
                    op,
                    room: r.room()?,
                    id: r.id()?,
                    ts: r.u64()?,
                });
            }
            Message::Changes(Changes {
                node,
                epoch,
                changes,
            })
        }
        T_CLAIM => Message::Claim(Claim {
            node: r.node()?,
            req: r.u64()?,
            room: r.room()?,
            id: r.id()?,
            token: r.token()?,
            ts: r.u64()?,
        }),
        T_CLAIM_REPLY => Message::ClaimReply(ClaimReply {
            node: r.node()?,
            req: r.u64()?,
            verdict: match r.u8()? {
                0 => Verdict::Free,
                1 => Verdict::Held { same_token: false },
                2 => Verdict::Held { same_token: true },
                3 => Verdict::ClaimedEarlier,
                _ => return Err(Malformed),
            },
            seats: r.u32()?,
        }),
        T_DELIVER => {
            let room = r.room()?;
            let src = r.id()?;
            let dst = r.id()?;
            let kind = r.kind()?;
            let frame = r.rest();
            if std::str::from_utf8(&frame).is_err() || frame.is_empty() {
                return Err(Malformed);
            }
            Message::Deliver(Deliver {
                room,
                src,
                dst,
                kind,
                frame,
            })
        }
        T_RELEASE => Message::Release(Release {
            node: r.node()?,
            req: r.u64()?,
            room: r.room()?,
            id: r.id()?,
            token: r.token()?,
        }),
        T_RELEASE_REPLY => Message::ReleaseReply(ReleaseReply {
            node: r.node()?,
            req: r.u64()?,
            outcome: match r.u8()? {
                0 => Outcome::Released,
                1 => Outcome::Alive,
                2 => Outcome::NotHere,
                _ => return Err(Malformed),
            },
        }),
        T_SYNC_REQUEST => Message::SyncRequest(SyncRequest { node: r.node()? }),
        T_SYNC_CHUNK => {
            let node = r.node()?;
            let epoch = r.u64()?;
            let seq = r.u64()?;
            let last = r.bool()?;
            let n = r.count(1 + 2 + 8)?;
            let mut entries = Vec::with_capacity(n);
            for _ in 0..n {
                entries.push(Entry {
                    room: r.room()?,
                    id: r.id()?,
                    ts: r.u64()?,
                });
            }
            Message::SyncChunk(SyncChunk {
                node,
                epoch,
                seq,
                last,
                entries,
            })
        }
        T_GOODBYE => Message::Goodbye(Goodbye {
            node: r.node()?,
            epoch: r.u64()?,
        }),
        _ => return Err(Malformed),
    };
    r.end()?;
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Message> {
        vec![
            Message::Heartbeat(Heartbeat {
                node: "n1".into(),
                epoch: 7,
                seq: 9,
            }),
            Message::Changes(Changes {
                node: "n1".into(),
                epoch: 7,
                changes: vec![
                    Change {
                        seq: 1,
                        op: ChangeOp::Join,
                        room: "".into(),
                        id: "alice".into(),
                        ts: 5,
                    },
                    Change {
                        seq: 2,
                        op: ChangeOp::Leave,
                        room: "room é".into(),
                        id: "bob".into(),
                        ts: 6,
                    },
                ],
            }),
            Message::Claim(Claim {
                node: "n2".into(),
                req: 3,
                room: "r".into(),
                id: "carol".into(),
                token: [7; TOKEN_DIGEST],
                ts: 11,
            }),
            Message::ClaimReply(ClaimReply {
                node: "n3".into(),
                req: 3,
                verdict: Verdict::Held { same_token: true },
                seats: 2,
            }),
            Message::Deliver(Deliver {
                room: "".into(),
                src: "a".into(),
                dst: "b".into(),
                kind: MessageType::Offer,
                frame: Bytes::from_static(br#"{"type":"OFFER","src":"a","dst":"b"}"#),
            }),
            Message::Release(Release {
                node: "n2".into(),
                req: 4,
                room: "".into(),
                id: "carol".into(),
                token: [1; TOKEN_DIGEST],
            }),
            Message::ReleaseReply(ReleaseReply {
                node: "n1".into(),
                req: 4,
                outcome: Outcome::Alive,
            }),
            Message::SyncRequest(SyncRequest { node: "n2".into() }),
            Message::Goodbye(Goodbye {
                node: "n2".into(),
                epoch: 3,
            }),
            Message::SyncChunk(SyncChunk {
                node: "n1".into(),
                epoch: 7,
                seq: 9,
                last: true,
                entries: vec![Entry {
                    room: "".into(),
                    id: "alice".into(),
                    ts: 5,
                }],
            }),
        ]
    }

    #[test]
    fn every_message_round_trips() {
        for m in samples() {
            assert_eq!(decode(m.encode()), Ok(m.clone()), "{m:?}");
        }
    }

    #[test]
    fn pins_the_heartbeat_bytes() {
        let hb = Message::Heartbeat(Heartbeat {
            node: "n1".into(),
            epoch: 1,
            seq: 2,
        });
        assert_eq!(
            &hb.encode()[..],
            b"\x01\x02n1\0\0\0\0\0\0\0\x01\0\0\0\0\0\0\0\x02"
        );
    }

    #[test]
    fn every_truncation_and_any_trailing_byte_is_refused() {
        for m in samples() {
            let bytes = m.encode();
            for len in 0..bytes.len() {
                // A Deliver's frame is the rest of the payload: a shorter (non-empty) frame is
                // still a message, so only cuts before the frame must fail.
                if let Message::Deliver(d) = &m
                    && len > bytes.len() - d.frame.len()
                {
                    continue;
                }
                assert_eq!(
                    decode(bytes.slice(..len)),
                    Err(Malformed),
                    "{m:?} cut at {len}"
                );
            }
            if !matches!(m, Message::Deliver(_)) {
                let mut longer = bytes.to_vec();
                longer.push(0);
                assert_eq!(decode(Bytes::from(longer)), Err(Malformed), "{m:?}");
            }
        }
    }

    #[test]
    fn hostile_fields_are_refused() {
        // An unknown tag; an id that is not a PeerJS id; a node name that is not a subject
        // token; a frame that is not UTF-8; a type out of range; a forged huge count.
        let cases: Vec<Vec<u8>> = vec![
            vec![0xff],
            {
                let mut b = vec![T_CLAIM, 2, b'n', b'1'];
                b.extend(0u64.to_be_bytes());
                b.extend([0, 3, b'a', b'.', b'b']);
                b.extend([0; TOKEN_DIGEST]);
                b.extend(0u64.to_be_bytes());
                b
            },
            {
                let mut b = vec![T_HEARTBEAT, 3, b'n', b'.', b'1'];
                b.extend([0; 16]);
                b
            },
            vec![T_DELIVER, 0, 1, b'a', 1, b'b', 1, 0xff, 0xfe],
            vec![T_DELIVER, 0, 1, b'a', 1, b'b', 200, b'x'],
            {
                let mut b = vec![T_CHANGES, 2, b'n', b'1'];
                b.extend(0u64.to_be_bytes());
                b.extend(u32::MAX.to_be_bytes());
                b
            },
        ];
        for case in cases {
            assert_eq!(
                decode(Bytes::from(case.clone())),
                Err(Malformed),
                "{case:?}"
            );
        }
    }
}
