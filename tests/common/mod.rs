//! Test harness: a real peerjsd on `127.0.0.1:0`, a raw HTTP helper, and `PeerClient`, a real
//! WebSocket client that speaks what the PeerJS 1.x browser client sends.
//!
//! `PeerClient` reads its socket continuously in a background task (so it answers pings, as a
//! browser does) and hands received frames to the test. `freeze()` makes it stop touching the
//! socket, like a machine that vanished without closing its TCP connection.

#![allow(dead_code)]

pub mod cluster;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use peerjsd::{Config, Server, Shared};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

/// How long any expected event may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(5);

/// A running server.
pub struct TestServer {
    pub addr: SocketAddr,
    pub shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), peerjsd::RunError>>>,
}

impl TestServer {
    /// Starts a server with `config` on an ephemeral loopback port.
    pub async fn start(config: Config) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = Server::new(config).expect("server");
        let shared = server.shared();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(listener, async move {
            let _ = stopped.await;
        }));
        TestServer {
            addr,
            shared,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Starts a server with default settings, changed by `tweak`.
    pub async fn with(tweak: impl FnOnce(&mut Config)) -> Self {
        let mut config = Config::default();
        tweak(&mut config);
        Self::start(config).await
    }

    /// The signaling URL with this raw query string.
    pub fn ws_url(&self, query: &str) -> String {
        format!("ws://{}{}?{query}", self.addr, self.shared.config.ws_path())
    }

    /// The URL a PeerJS client builds for `id` and `token`.
    pub fn peer_url(&self, id: &str, token: &str) -> String {
        self.ws_url(&format!(
            "key={}&id={id}&token={token}&version=1.5.5",
            self.shared.config.key
        ))
    }

    /// Triggers shutdown and waits for `run` to return.
    pub async fn stop(mut self) -> Result<(), peerjsd::RunError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task
            .take()
            .expect("running")
            .await
            .expect("server task panicked")
    }

    /// Begins shutdown without waiting.
    pub fn begin_stop(&mut self) -> JoinHandle<Result<(), peerjsd::RunError>> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.take().expect("running")
    }

    /// Waits until `check` holds (polling the server's own state), or fails after [`WAIT`].
    pub async fn until(&self, what: &str, check: impl Fn(&Shared) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !check(&self.shared) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for: {what}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A raw HTTP/1.1 request; returns status, lower-cased headers and body.
    pub async fn http(&self, request: &str) -> HttpResponse {
        http_raw(self.addr, request).await
    }

    /// `GET path` with extra header lines.
    pub async fn get(&self, path: &str, headers: &[&str]) -> HttpResponse {
        let mut request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
            self.addr
        );
        for header in headers {
            request.push_str(header);
            request.push_str("\r\n");
        }
        request.push_str("\r\n");
        self.http(&request).await
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A raw WebSocket upgrade request for `path` (with its query), plus extra header lines.
pub fn upgrade_request(path: &str, extra_headers: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra_headers}\r\n"
    )
}

/// A client frame as the browser sends it: FIN, opcode text, masked.
pub fn masked_text_frame(text: &str, mask: [u8; 4]) -> Vec<u8> {
    let payload = text.as_bytes();
    let mut frame = vec![0x81];
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n <= 0xffff => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// A parsed HTTP response.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `request` as-is on a fresh connection and reads the response until the server closes
/// or the declared body has arrived.
pub async fn http_raw(addr: SocketAddr, request: &str) -> HttpResponse {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(WAIT, stream.read(&mut buf))
            .await
            .expect("response timed out")
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        if let Some(response) = parse_response(&raw, false) {
            return response;
        }
    }
    parse_response(&raw, true)
        .unwrap_or_else(|| panic!("incomplete response: {:?}", String::from_utf8_lossy(&raw)))
}

/// `raw` as a response once its body has arrived, or (`closed`: the server closed) whatever
/// of it did, as for an answer to HEAD.
fn parse_response(raw: &[u8], closed: bool) -> Option<HttpResponse> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut lines = head.lines();
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok());
    match length {
        Some(length) if body.len() >= length => Some(HttpResponse {
            status,
            headers,
            body: body[..length].to_owned(),
        }),
        Some(_) if closed => Some(HttpResponse {
            status,
            headers,
            body: body.to_owned(),
        }),
        Some(_) => None,
        // No body, and hyper sends no length for them.
        None if status == 101 || status == 204 => Some(HttpResponse {
            status,
            headers,
            body: String::new(),
        }),
        None => None,
    }
}

/// What the background reader saw.
#[derive(Debug)]
pub enum Event {
    /// A text frame, parsed as JSON (or kept as a string if it is not JSON).
    Frame(Value),
    /// A binary frame.
    Binary(Vec<u8>),
    /// The server closed (with its close frame, if any).
    Closed(Option<CloseFrame>),
    /// The connection failed.
    Error(String),
}

enum Command {
    Send(Message),
    Freeze,
    Close,
}

/// A PeerJS-speaking WebSocket client.
pub struct PeerClient {
    pub id: String,
    events: mpsc::UnboundedReceiver<Event>,
    commands: mpsc::UnboundedSender<Command>,
}

impl PeerClient {
    /// Connects with a raw query string; does not wait for OPEN.
    pub async fn connect_url(url: &str, id: &str) -> Self {
        let (ws, response) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect timed out")
            .unwrap_or_else(|e| panic!("connect to {url} failed: {e}"));
        assert_eq!(response.status(), 101);
        Self::serve(ws, id)
    }

    /// Connects as `id` from the local address `local` (see [`tcp_connect_from`]) and waits
    /// for OPEN.
    pub async fn open_from(server: &TestServer, id: &str, local: IpAddr) -> Self {
        let url = server.peer_url(id, &random_token());
        let stream = tcp_connect_from(local, server.addr, None)
            .await
            .unwrap_or_else(|e| panic!("connect from {local} failed: {e}"));
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::client_async(url, stream))
            .await
            .expect("handshake timed out")
            .expect("handshake");
        let mut peer = Self::serve(ws, id);
        assert_eq!(peer.recv().await, serde_json::json!({"type": "OPEN"}));
        peer
    }

    /// Drives `ws` on a task of its own, which turns what arrives into events and carries out
    /// commands.
    fn serve<S>(ws: tokio_tungstenite::WebSocketStream<S>, id: &str) -> Self
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (event_tx, events) = mpsc::unbounded_channel();
        let (commands, mut command_rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut ws = ws;
            loop {
                tokio::select! {
                    command = command_rx.recv() => match command {
                        Some(Command::Send(message)) => {
                            if let Err(e) = ws.send(message).await {
                                let _ = event_tx.send(Event::Error(e.to_string()));
                            }
                        }
                        Some(Command::Close) | None => {
                            let _ = ws.close(None).await;
                            // Read out the server's reply so the close handshake finishes.
                            while let Ok(Some(Ok(_))) = tokio::time::timeout(WAIT, ws.next()).await {}
                            return;
                        }
                        Some(Command::Freeze) => {
                            // Hold the socket open and never touch it again.
                            let _keep = ws;
                            std::future::pending::<()>().await;
                            return;
                        }
                    },
                    frame = ws.next() => {
                        let event = match frame {
                            Some(Ok(Message::Text(text))) => Event::Frame(
                                serde_json::from_str(&text).unwrap_or_else(|_| Value::String(text.to_string())),
                            ),
                            Some(Ok(Message::Binary(bytes))) => Event::Binary(bytes.to_vec()),
                            Some(Ok(Message::Close(frame))) => {
                                let _ = event_tx.send(Event::Closed(frame));
                                while let Ok(Some(Ok(_))) = tokio::time::timeout(WAIT, ws.next()).await {}
                                return;
                            }
                            Some(Ok(_)) => continue,
                            Some(Err(e)) => Event::Error(e.to_string()),
                            None => Event::Closed(None),
                        };
                        let end = matches!(event, Event::Closed(_) | Event::Error(_));
                        if event_tx.send(event).is_err() || end {
                            return;
                        }
                    }
                }
            }
        });
        PeerClient {
            id: id.to_owned(),
            events,
            commands,
        }
    }

    /// Connects as `id` with `token`; does not wait for OPEN.
    pub async fn connect(server: &TestServer, id: &str, token: &str) -> Self {
        Self::connect_url(&server.peer_url(id, token), id).await
    }

    /// Connects as `id` with a random token and waits for OPEN.
    pub async fn open(server: &TestServer, id: &str) -> Self {
        Self::open_with_token(server, id, &random_token()).await
    }

    /// Connects as `id` with `token` and waits for OPEN.
    pub async fn open_with_token(server: &TestServer, id: &str, token: &str) -> Self {
        let mut peer = Self::connect(server, id, token).await;
        assert_eq!(
            peer.recv().await,
            json!({"type": "OPEN"}),
            "{id} expected OPEN"
        );
        peer
    }

    /// Sends a JSON value as a text frame.
    pub fn send(&self, value: Value) {
        self.send_text(&value.to_string());
    }

    /// Sends a text frame.
    pub fn send_text(&self, text: &str) {
        self.send_message(Message::text(text));
    }

    /// Sends any WebSocket message.
    pub fn send_message(&self, message: Message) {
        let _ = self.commands.send(Command::Send(message));
    }

    /// A function that sends text frames from another task.
    pub fn sender(&self) -> impl Fn(String) + Send + 'static {
        let commands = self.commands.clone();
        move |text| {
            let _ = commands.send(Command::Send(Message::text(text)));
        }
    }

    /// Stops reading and writing, keeping the TCP connection open.
    pub fn freeze(&self) {
        let _ = self.commands.send(Command::Freeze);
    }

    /// Closes cleanly.
    pub fn close(&self) {
        let _ = self.commands.send(Command::Close);
    }

    /// The next event, failing after [`WAIT`].
    pub async fn event(&mut self) -> Event {
        match tokio::time::timeout(WAIT, self.events.recv()).await {
            Ok(Some(event)) => event,
            Ok(None) => Event::Closed(None),
            Err(_) => panic!("{}: no event within {WAIT:?}", self.id),
        }
    }

    /// The next text frame, waiting as long as it takes (for a task that only reacts to
    /// what arrives); `None` once the connection has ended.
    pub async fn next_frame(&mut self) -> Option<Value> {
        loop {
            match self.events.recv().await? {
                Event::Frame(value) => return Some(value),
                Event::Closed(_) | Event::Error(_) => return None,
                Event::Binary(_) => {}
            }
        }
    }

    /// The next text frame, failing on anything else.
    pub async fn recv(&mut self) -> Value {
        match self.event().await {
            Event::Frame(value) => value,
            other => panic!("{}: expected a frame, got {other:?}", self.id),
        }
    }

    /// The next frame, which must have type `kind`.
    pub async fn expect(&mut self, kind: &str) -> Value {
        let frame = self.recv().await;
        assert_eq!(frame["type"], kind, "{}: unexpected frame {frame}", self.id);
        frame
    }

    /// Waits for the server's close; returns (code, reason).
    pub async fn closed(&mut self) -> (u16, String) {
        loop {
            match self.event().await {
                Event::Closed(Some(frame)) => return (frame.code.into(), frame.reason.to_string()),
                Event::Closed(None) => return (1005, String::new()),
                Event::Error(e) => return (1006, e),
                Event::Frame(_) | Event::Binary(_) => continue,
            }
        }
    }

    /// Waits for the close, requiring no frames before it.
    pub async fn closed_without_frames(&mut self) -> (u16, String) {
        match self.event().await {
            Event::Closed(Some(frame)) => (frame.code.into(), frame.reason.to_string()),
            Event::Closed(None) => (1005, String::new()),
            other => panic!("{}: expected a close, got {other:?}", self.id),
        }
    }

    /// Asserts nothing arrives for `quiet` (use sparingly: only to prove an absence, after a
    /// later-sent marker message has arrived).
    pub async fn assert_nothing_for(&mut self, quiet: Duration) {
        if let Ok(Some(event)) = tokio::time::timeout(quiet, self.events.recv()).await {
            panic!("{}: expected nothing, got {event:?}", self.id);
        }
    }

    /// Frames already received, without waiting.
    pub fn drain(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        while let Ok(event) = self.events.try_recv() {
            out.push(event);
        }
        out
    }
}

/// A token like the PeerJS client's `Math.random().toString(36).slice(2)`.
pub fn random_token() -> String {
    let n = uuid::Uuid::new_v4().as_u128();
    format!("{:x}", n)[..11].to_owned()
}

/// An SDP-like text of about `len` bytes.
pub fn sdp(len: usize) -> String {
    let line = "a=candidate:1 1 udp 2113937151 192.168.1.2 54400 typ host generation 0\r\n";
    let mut out = String::from("v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\n");
    while out.len() < len {
        out.push_str(line);
    }
    out
}

/// An OFFER as the PeerJS client sends it (no `src`).
pub fn offer(dst: &str, connection_id: &str) -> Value {
    json!({
        "type": "OFFER",
        "payload": {
            "sdp": {"type": "offer", "sdp": sdp(400)},
            "type": "data",
            "connectionId": connection_id,
            "label": connection_id,
            "reliable": false,
            "serialization": "binary",
            "metadata": null
        },
        "dst": dst
    })
}

/// An ANSWER as the PeerJS client sends it.
pub fn answer(dst: &str, connection_id: &str) -> Value {
    json!({
        "type": "ANSWER",
        "payload": {"sdp": {"type": "answer", "sdp": sdp(300)}, "type": "data", "connectionId": connection_id},
        "dst": dst
    })
}

/// A CANDIDATE as the PeerJS client sends it.
pub fn candidate(dst: &str, connection_id: &str, n: u32) -> Value {
    json!({
        "type": "CANDIDATE",
        "payload": {
            "candidate": {
                "candidate": format!("candidate:{n} 1 udp 2113937151 192.168.1.2 {} typ host generation 0", 50000 + n),
                "sdpMid": "0",
                "sdpMLineIndex": 0,
                "usernameFragment": "abcd"
            },
            "type": "data",
            "connectionId": connection_id
        },
        "dst": dst
    })
}

/// `message` as the server relays it from `src`: only type, src, dst, payload.
pub fn relayed(message: &Value, src: &str) -> Value {
    let mut out = json!({"type": message["type"], "src": src, "dst": message["dst"]});
    if let Some(payload) = message.get("payload") {
        out["payload"] = payload.clone();
    }
    out
}

/// A WebSocket client on a socket with a small receive buffer (`rcvbuf` bytes; the kernel
/// doubles it), over `wrap` of the TCP stream: the handshake is done and OPEN read. A test
/// that stops polling it is a peer that stopped reading; its socket fills after a few KB.
pub async fn small_buffer_peer<S>(
    server: &TestServer,
    id: &str,
    token: &str,
    rcvbuf: u32,
    wrap: impl FnOnce(TcpStream) -> S,
) -> tokio_tungstenite::WebSocketStream<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(rcvbuf).expect("SO_RCVBUF");
    let stream = socket.connect(server.addr).await.expect("connect");
    let url = server.peer_url(id, token);
    let (mut ws, _) =
        tokio::time::timeout(WAIT, tokio_tungstenite::client_async(url, wrap(stream)))
            .await
            .expect("handshake timed out")
            .expect("handshake");
    let open = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("no OPEN")
        .expect("closed before OPEN")
        .expect("read");
    assert_eq!(
        open.into_text().expect("text").as_str(),
        r#"{"type":"OPEN"}"#
    );
    ws
}

/// Reads `ws` (through whatever backlog it has) until the server's close: (code, reason).
pub async fn read_to_close<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> (u16, String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await {
            Ok(Some(Ok(Message::Close(Some(frame))))) => {
                return (frame.code.into(), frame.reason.to_string());
            }
            Ok(Some(Ok(Message::Close(None)))) | Ok(None) => return (1005, String::new()),
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(e))) => return (1006, e.to_string()),
            Err(_) => panic!("no close within {WAIT:?}"),
        }
    }
}

/// A link that delivers at most `chunk` bytes per `every`: a peer on a slow connection that
/// keeps reading.
pub struct SlowLink<S> {
    inner: S,
    chunk: usize,
    every: Duration,
    next: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl<S> SlowLink<S> {
    pub fn new(inner: S, chunk: usize, every: Duration) -> Self {
        SlowLink {
            inner,
            chunk,
            every,
            next: Box::pin(tokio::time::sleep(Duration::ZERO)),
        }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for SlowLink<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::future::Future;
        std::task::ready!(self.next.as_mut().poll(cx));
        let this = &mut *self;
        let n = this.chunk.min(buf.remaining());
        let mut limited = tokio::io::ReadBuf::new(buf.initialize_unfilled_to(n));
        std::task::ready!(std::pin::Pin::new(&mut this.inner).poll_read(cx, &mut limited))?;
        let got = limited.filled().len();
        buf.advance(got);
        let at = tokio::time::Instant::now() + this.every;
        this.next.as_mut().reset(at);
        std::task::Poll::Ready(Ok(()))
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for SlowLink<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Connects to `server` from the local address `local` (any of 127.0.0.0/8 works on Linux
/// loopback, so per-IP limits see distinct clients). With `narrow_window`, the client is on a
/// narrow link as over a real network: that receive buffer, and an Ethernet-sized MSS (1460)
/// — with loopback's 64 KiB MSS the server's kernel would buffer megabytes for a client that
/// stops reading, where over a network it buffers tens of kilobytes. Both are set before
/// connecting, so the small window and MSS are advertised from the first segment.
pub async fn tcp_connect_from(
    local: IpAddr,
    server: SocketAddr,
    narrow_window: Option<u32>,
) -> std::io::Result<TcpStream> {
    let socket = if local.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(size) = narrow_window {
        socket.set_recv_buffer_size(size)?;
        socket2::SockRef::from(&socket).set_tcp_mss(1460)?;
    }
    socket.bind(SocketAddr::new(local, 0))?;
    socket.connect(server).await
}
