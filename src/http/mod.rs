//! HTTP: the accept loop, the split between WebSocket upgrades and REST, and the REST router.
//!
//! A connection's first request is read by [`crate::ws::upgrade::read_head`]: a WebSocket
//! upgrade that passes its checks becomes a session in the connection's task. Anything else
//! is served by hyper's HTTP/1 server with upgrades enabled: a request that asks for an
//! upgrade goes to [`crate::ws::upgrade::handle`] (as Node hands such requests to the `ws`
//! library), everything else to the axum [`router`]. No business logic lives here.

pub mod ice;
pub mod ops;
pub mod rest;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response};
use futures_util::future::Either;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::protocol::ConnectParams;
use crate::state::Shared;
use crate::ws::read_ahead::ReadAhead;
use crate::ws::session::Origin;
use crate::ws::{session, upgrade};

/// The REST and ops routes, with CORS on the REST ones.
pub fn router(shared: Arc<Shared>) -> Router {
    rest::routes(&shared.config)
        .merge(ops::routes())
        .fallback(rest::not_found)
        .with_state(shared)
}

/// Only `/health` and `/metrics`, for `--metrics-addr`.
pub fn ops_router(shared: Arc<Shared>) -> Router {
    ops::routes().fallback(rest::not_found).with_state(shared)
}

/// Accepts connections until shutdown, with TLS when `tls` is set, and serves them; with
/// `signaling`, WebSocket upgrades too (the ops listener has none). Accept errors (e.g. out
/// of file descriptors) are logged and retried after a pause instead of spinning or ending
/// the server.
pub async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    router: Router,
    tls: Option<TlsAcceptor>,
    signaling: bool,
) {
    let token = shared.shutdown.token.clone();
    loop {
        let accepted = tokio::select! {
            _ = token.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                limit_unsent(&stream);
                let conn = Connection {
                    peer,
                    shared: Arc::clone(&shared),
                    router: router.clone(),
                    signaling,
                };
                let tracker = &shared.shutdown.tracker;
                match &tls {
                    None => {
                        tracker.spawn(conn.serve(stream));
                    }
                    Some(acceptor) => {
                        let handshake = acceptor.accept(stream);
                        tracker.spawn(async move {
                            let limit = conn.shared.config.handshake_timeout;
                            match tokio::time::timeout(limit, handshake).await {
                                Ok(Ok(stream)) => conn.serve(stream).await,
                                Ok(Err(error)) => {
                                    tracing::debug!(%peer, %error, "TLS handshake failed")
                                }
                                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                            }
                        });
                    }
                }
            }
            Err(error) => {
                tracing::warn!(%error, "accept failed; pausing");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// Unsent bytes the kernel may hold for one socket before it stops taking more.
///
/// Without it, loopback and LAN sockets autotune their send buffers to megabytes: a peer that
/// stops reading would let the kernel swallow megabytes of what is sent to it (kernel memory
/// an attacker controls), our pings for the liveness probe would queue behind all of it, and
/// the session could not tell a stalled socket from a busy one. With it, what waits stays in
/// the session's own bounded queue, where `--max-outbound-bytes` and `--write-timeout` see it.
/// Data in flight is not limited by this, so throughput on long links is unchanged.
pub const NOTSENT_LOWAT: u32 = 16 * 1024;

fn limit_unsent(stream: &tokio::net::TcpStream) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Err(error) = socket2::SockRef::from(stream).set_tcp_notsent_lowat(NOTSENT_LOWAT) {
        tracing::debug!(%error, "TCP_NOTSENT_LOWAT not set");
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = stream;
}

/// What serving a connection needs besides its stream.
pub struct Connection {
    /// The client's address.
    pub peer: SocketAddr,
    /// The server's state.
    pub shared: Arc<Shared>,
    /// Serves the requests that are not WebSocket upgrades.
    pub router: Router,
    /// Whether WebSocket upgrades are served (else they go to `router` like any request).
    pub signaling: bool,
}

impl Connection {
    /// Serves `io` until the client goes or shutdown. The first request is read by
    /// [`upgrade::read_head`]: an accepted signaling upgrade runs its session right here, in
    /// this task; anything else, and every later request, is served by hyper.
    ///
    /// An idle peer is this future, so its size matters: `self` goes into a box that is freed
    /// before the first await (an async fn keeps its arguments for its whole life).
    pub fn serve<I>(self, io: I) -> impl Future<Output = ()> + Send + 'static
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        serve(Box::new((self, io)))
    }
}

async fn serve<I>(start: Box<(Connection, I)>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // `{ start }` moves the box into a temporary, freed at the end of this statement.
    let (conn, io) = *{ start };
    // The handshake's future (which borrows the socket) ends with this statement, and `next`
    // is moved whole into the future that serves the rest: nothing else is kept for the
    // connection's life.
    let Some(next) = first_request(conn, ReadAhead::new(io)).await else {
        return;
    };
    next.serve().await;
}

/// What follows a connection's first request head.
enum Next<I> {
    /// An accepted upgrade, its 101 queued on the socket.
    Session(ReadAhead<I>, ConnectParams, Origin, Arc<Shared>),
    /// Anything else, for hyper (the bytes read so far are in the socket's buffer).
    Http(ReadAhead<I>, Connection),
}

impl<I> Next<I>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    fn serve(self) -> impl Future<Output = ()> {
        match self {
            Next::Session(io, params, origin, shared) => {
                Either::Left(session::run(io, params, shared, origin))
            }
            Next::Http(io, conn) => Either::Right(Box::pin(serve_http(io, conn))),
        }
    }
}

/// Reads the first request head: `None` when there was no whole request within the
/// handshake timeout, the client left, a read failed, or shutdown began.
async fn first_request<I>(conn: Connection, mut io: ReadAhead<I>) -> Option<Next<I>>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    if !conn.signaling {
        return Some(Next::Http(io, conn));
    }
    let limit = conn.shared.config.handshake_timeout;
    let head = tokio::select! {
        head = timeout(limit, upgrade::read_head(&mut io, &conn.shared, conn.peer)) => head,
        _ = conn.shared.shutdown.token.cancelled() => return None,
    };
    match head {
        Ok(Ok(Some(upgrade))) => {
            io.write_first(upgrade.response);
            Some(Next::Session(
                io,
                upgrade.params,
                upgrade.origin,
                conn.shared,
            ))
        }
        Ok(Ok(None)) => Some(Next::Http(io, conn)),
        Ok(Err(_)) | Err(_) => None,
    }
}

/// Serves HTTP/1 requests with hyper until the client goes, an upgrade hands the socket to a
/// session, or shutdown.
async fn serve_http<I>(io: ReadAhead<I>, conn: Connection)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Connection {
        peer,
        shared,
        router,
        signaling,
    } = conn;
    let service_shared = Arc::clone(&shared);
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        // The client's address, for handlers that limit per IP (`/ice`).
        request
            .extensions_mut()
            .insert(axum::extract::ConnectInfo(peer));
        let response = if signaling && upgrade::is_upgrade(request.headers()) {
            Ok(upgrade::handle::<_, I>(request, &service_shared, peer))
        } else {
            Err(router.clone().oneshot(request))
        };
        async move {
            Ok::<Response<Body>, Infallible>(match response {
                Ok(response) => response,
                Err(routed) => match routed.await {
                    Ok(response) => response,
                    Err(never) => match never {},
                },
            })
        }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(shared.config.handshake_timeout)
        .max_buf_size(64 * 1024)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(connection);
    let token = shared.shutdown.token.clone();
    tokio::select! {
        _ = &mut connection => {}
        _ = token.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(shared.config.shutdown_timeout, connection).await;
        }
    }
}
