//! floor: the least any PeerJS server must do, as lean as we can make it; the benchmark's
//! speed floor.
//!
//! It accepts the WebSocket upgrade on `/peerjs?key=&id=&token=`, registers the id, sends
//! `{"type":"OPEN"}`, and for each text frame reads the envelope, stamps `src` with the sender's
//! id and forwards `{"type","src","dst","payload"}` to the connected `dst`. Nothing else: no
//! key check, no offline queue (a message to an unknown id is dropped), no heartbeat timeout
//! (HEARTBEAT is ignored), no limits. A duplicate id gets ID-TAKEN so that ids stay unique.
//!
//! Why it is lean:
//! - one thread (`current_thread` runtime; the benchmark pins the server to one core), so the
//!   registry is a `RefCell<HashMap>` with no locks or atomics on the hot path;
//! - one task per connection that both reads and writes, an outbound queue that allocates
//!   nothing while idle, and a small WebSocket read buffer
//!   (`--read-buffer`, 2 KiB by default: tungstenite's default 128 KiB buffer is zero-filled on
//!   the first read, so every idle peer would hold ~136 KB);
//! - writes are batched: the task feeds every frame waiting in its queue, then flushes once;
//! - the payload is never parsed: serde_json `RawValue` slices are copied through as they are.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::rc::Rc;
use std::time::Duration;

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_tungstenite::accept_hdr_async_with_config;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

#[derive(Parser, Debug)]
#[command(about = "Minimal PeerJS relay: the benchmark's speed floor")]
struct Args {
    #[arg(long, default_value_t = 9000)]
    port: u16,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// WebSocket read buffer per connection, bytes. Relay CPU per message is the same with
    /// 4 KiB (within noise); an idle peer costs 3.8 kB with 2 KiB, 5.9 kB with 4 KiB.
    #[arg(long, default_value_t = 2048)]
    read_buffer: usize,
    /// Experiment, off in `bench/run.sh`: the sender's task writes a relayed frame straight
    /// to the destination's socket (one `send`, no wake-up of the destination's task), falling
    /// back to the queue when the socket would block. It bounds what skipping the second
    /// task could save; it does not handle backpressure (a partial write ends that
    /// connection) and breaks the one-writer-per-socket rule peerjsd follows.
    #[arg(long)]
    direct_write: bool,
}

/// With `--direct-write`: a TCP stream shared by its connection task (reads, its own writes,
/// through tokio's own `poll_read`/`poll_write`) and other tasks' direct `try_write`s. One
/// thread, and no borrow is held across an await, so the borrows never overlap.
struct SharedTcp(Rc<RefCell<TcpStream>>);

impl tokio::io::AsyncRead for SharedTcp {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut *self.0.borrow_mut()).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for SharedTcp {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut *self.0.borrow_mut()).poll_write(cx, buf)
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut *self.0.borrow_mut()).poll_flush(cx)
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut *self.0.borrow_mut()).poll_shutdown(cx)
    }
}

/// A registered peer: its connection task's outbound queue, and which connection registered
/// it (so a closing connection only removes its own registration).
struct Peer {
    conn: u64,
    outbox: Rc<Outbox>,
    /// The socket itself, with `--direct-write`.
    direct: Option<Rc<RefCell<TcpStream>>>,
}

/// Frames waiting to be written to one connection. A `VecDeque` allocates nothing until the
/// first frame (an idle peer costs no queue memory, unlike a channel's preallocated block);
/// `Notify` keeps a permit if the task is busy, so no wake-up is lost.
#[derive(Default)]
struct Outbox {
    frames: RefCell<VecDeque<Utf8Bytes>>,
    ready: Notify,
    /// A direct write went out in part: the stream is corrupt, the connection ends.
    broken: std::cell::Cell<bool>,
}

type Registry = Rc<RefCell<HashMap<Box<str>, Peer>>>;

const OPEN: &str = r#"{"type":"OPEN"}"#;
const NO_ID: &str =
    r#"{"type":"ERROR","payload":{"msg":"No id, token, or key supplied to websocket server"}}"#;
const ID_TAKEN: &str = r#"{"type":"ID-TAKEN","payload":{"msg":"ID is taken"}}"#;

fn main() -> io::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, serve(args))
}

async fn serve(args: Args) -> io::Result<()> {
    let listener = TcpListener::bind((args.host.as_str(), args.port)).await?;
    eprintln!("floor listening on {}", listener.local_addr()?);
    let config = WebSocketConfig::default().read_buffer_size(args.read_buffer);
    let registry = Registry::default();
    let mut next_conn = 0u64;
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                next_conn += 1;
                let _ = stream.set_nodelay(true);
                let (registry, conn) = (registry.clone(), next_conn);
                if args.direct_write {
                    let stream = Rc::new(RefCell::new(stream));
                    let direct = Some(stream.clone());
                    let shared = SharedTcp(stream);
                    tokio::task::spawn_local(connection(shared, direct, registry, conn, config));
                } else {
                    tokio::task::spawn_local(connection(stream, None, registry, conn, config));
                }
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                eprintln!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// One connection. `stream` is the socket itself, or with `--direct-write` a [`SharedTcp`]
/// over it, `direct` being the same socket for other tasks' writes.
async fn connection<S>(
    stream: S,
    direct: Option<Rc<RefCell<TcpStream>>>,
    registry: Registry,
    conn: u64,
    config: WebSocketConfig,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut query = None;
    // The callback's signature is tungstenite's.
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        if req.uri().path() != "/peerjs" {
            let mut err = ErrorResponse::new(Some("Bad Request".into()));
            *err.status_mut() = StatusCode::BAD_REQUEST;
            return Err(err);
        }
        query = req.uri().query().map(str::to_owned);
        Ok(resp)
    };
    // Boxed so that the handshake's large state is freed once it is done instead of staying
    // part of every connection task's allocation (the task shrinks from 1.9 KB to 0.75 KB).
    let handshake = Box::pin(accept_hdr_async_with_config(stream, callback, Some(config)));
    let Ok(mut ws) = handshake.await else {
        return;
    };
    let id = query.as_deref().and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .filter(|(k, _)| k == "id")
            .last()
            .map(|(_, v)| v.into_owned())
            .filter(|v| !v.is_empty())
    });
    let Some(id) = id else {
        let _ = ws.send(Message::text(NO_ID)).await;
        let _ = ws.close(None).await;
        return;
    };

    let outbox = Rc::new(Outbox::default());
    let taken = {
        let mut peers = registry.borrow_mut();
        let taken = peers.contains_key(id.as_str());
        if !taken {
            let peer = Peer {
                conn,
                outbox: outbox.clone(),
                direct,
            };
            peers.insert(id.as_str().into(), peer);
        }
        taken
    };
    if taken {
        let _ = ws.send(Message::text(ID_TAKEN)).await;
        let _ = ws.close(None).await;
        return;
    }
    // `src` as a JSON string, encoded once.
    let src_json = serde_json::to_string(&id).unwrap_or_default();

    if ws.send(Message::text(OPEN)).await.is_ok() {
        loop {
            tokio::select! {
                () = outbox.ready.notified() => {
                    if outbox.broken.get() {
                        break;
                    }
                    // Feed everything queued, flush once.
                    let mut ok = true;
                    loop {
                        let next = outbox.frames.borrow_mut().pop_front();
                        let Some(frame) = next else { break };
                        if ws.feed(Message::Text(frame)).await.is_err() {
                            ok = false;
                            break;
                        }
                    }
                    if !ok || ws.flush().await.is_err() {
                        break;
                    }
                }
                frame = ws.next() => match frame {
                    Some(Ok(Message::Text(text))) => relay(&registry, &src_json, &text),
                    // tungstenite queued a pong or the closing handshake's reply: send it.
                    Some(Ok(Message::Ping(_) | Message::Close(_))) => {
                        let _ = ws.flush().await;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break,
                }
            }
        }
    }

    let mut peers = registry.borrow_mut();
    if peers.get(id.as_str()).is_some_and(|p| p.conn == conn) {
        peers.remove(id.as_str());
    }
}

/// The envelope fields a relay needs, borrowed from the frame; `payload` stays raw.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<&'a RawValue>,
    #[serde(borrow)]
    dst: Option<&'a RawValue>,
    #[serde(borrow)]
    payload: Option<&'a RawValue>,
}

fn relay(registry: &Registry, src_json: &str, text: &str) {
    let Ok(env) = serde_json::from_str::<Envelope>(text) else {
        return;
    };
    let (Some(kind), Some(dst_raw)) = (env.kind, env.dst) else {
        return;
    };
    if kind.get() == r#""HEARTBEAT""# {
        return;
    }
    let dst: Cow<str> = match serde_json::from_str::<&str>(dst_raw.get()) {
        Ok(s) => Cow::Borrowed(s),
        // An id with escapes in it: unescape into a String.
        Err(_) => match serde_json::from_str::<String>(dst_raw.get()) {
            Ok(s) => Cow::Owned(s),
            Err(_) => return,
        },
    };
    let peers = registry.borrow();
    let Some(peer) = peers.get(&*dst) else {
        return;
    };
    let payload_len = env.payload.map_or(0, |p| p.get().len());
    let mut out = String::with_capacity(48 + src_json.len() + dst_raw.get().len() + payload_len);
    out.push_str(r#"{"type":"#);
    out.push_str(kind.get());
    out.push_str(r#","src":"#);
    out.push_str(src_json);
    out.push_str(r#","dst":"#);
    out.push_str(dst_raw.get());
    if let Some(payload) = env.payload {
        out.push_str(r#","payload":"#);
        out.push_str(payload.get());
    }
    out.push('}');
    if let Some(tcp) = &peer.direct
        && peer.outbox.frames.borrow().is_empty()
    {
        // A server's text frame: FIN + text opcode, unmasked length, payload.
        let mut buf = Vec::with_capacity(out.len() + 10);
        buf.push(0x81);
        match u16::try_from(out.len()) {
            Ok(n) if n < 126 => buf.push(n as u8),
            Ok(n) => {
                buf.push(126);
                buf.extend_from_slice(&n.to_be_bytes());
            }
            Err(_) => {
                buf.push(127);
                buf.extend_from_slice(&(out.len() as u64).to_be_bytes());
            }
        }
        buf.extend_from_slice(out.as_bytes());
        match tcp.borrow().try_write(&buf) {
            Ok(n) if n == buf.len() => return,
            Ok(_) => {
                peer.outbox.broken.set(true);
                peer.outbox.ready.notify_one();
                return;
            }
            // Would block (or failed): queue it, the connection's task writes it.
            Err(_) => {}
        }
    }
    peer.outbox
        .frames
        .borrow_mut()
        .push_back(Utf8Bytes::from(out));
    peer.outbox.ready.notify_one();
}
