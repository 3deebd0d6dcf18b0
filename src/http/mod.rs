//! HTTP: the accept loop, the split between WebSocket upgrades and REST, and the REST router.
//!
//! Every accepted connection first passes the [`crate::gate`] (per-address counts and the
//! handshake bounds; a refused one is answered 429 right in the accept loop). Its first
//! request is then read by [`crate::ws::upgrade::read_head`] within `--handshake-timeout`: a
//! WebSocket upgrade that passes its checks becomes a session in the connection's task.
//! Anything else is served by hyper's HTTP/1 server with upgrades enabled, its reads bounded
//! by hyper's head timeout and its writes by a [deadline]: a request that asks for an upgrade
//! is checked by `crate::ws::upgrade::check` (as Node hands such requests to the `ws`
//! library), everything else goes to the axum [`router`]. No business logic lives here.

pub mod deadline;
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
use tokio::time::timeout_at;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::gate::{self, Counted, HandshakeTicket};
use crate::logging::LogIp;
use crate::protocol::ConnectParams;
use crate::protocol::Rejection;
use crate::state::Shared;
use crate::ws::read_ahead::ReadAhead;
use crate::ws::session::Origin;
use crate::ws::{session, upgrade};
use deadline::WriteDeadline;

/// The REST and ops routes, answered as peerjs-server's Express app answers (see
/// [`rest::express`]).
pub fn router(shared: Arc<Shared>) -> Router {
    let config = Arc::clone(&shared.config);
    let routes = rest::routes(&config)
        .merge(ops::routes(config.metrics_public))
        .with_state(shared);
    rest::express(routes, Some(config))
}

/// Only `/health` and `/metrics`, for `--metrics-addr`.
pub fn ops_router(shared: Arc<Shared>) -> Router {
    rest::express(ops::routes(true).with_state(shared), None)
}

/// Accepts connections until shutdown, with TLS when `tls` is set, and serves them; with
/// `signaling`, WebSocket upgrades too (the ops listener has none). A connection over a
/// per-address limit is refused here, without a task. Accept errors (e.g. out of file
/// descriptors) are logged and retried after a pause instead of spinning or ending the
/// server.
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
                let admitted = match shared.gate.admit(peer) {
                    Ok(admitted) => admitted,
                    Err(refused) => {
                        tracing::debug!(ip = %LogIp(peer.ip()), ?refused, "connection refused");
                        gate::refuse(stream, tls.is_none());
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                limit_unsent(&stream);
                let stream = Counted::new(stream, admitted.conn);
                let handshake = admitted.handshake;
                let conn = Connection {
                    peer,
                    shared: Arc::clone(&shared),
                    router: router.clone(),
                    signaling,
                };
                let tracker = &shared.shutdown.tracker;
                match &tls {
                    None => {
                        tracker.spawn(conn.serve(stream, handshake));
                    }
                    Some(acceptor) => {
                        let accept = acceptor.accept(stream);
                        tracker.spawn(async move {
                            let shared = &conn.shared;
                            let accepted = tokio::select! {
                                biased;
                                accepted = timeout_at(handshake.deadline(), accept) => accepted,
                                _ = handshake.evicted() => return,
                                _ = shared.shutdown.token.cancelled() => return,
                            };
                            match accepted {
                                Ok(Ok(stream)) => conn.serve(stream, handshake).await,
                                Ok(Err(error)) => {
                                    tracing::debug!(%peer, %error, "TLS handshake failed")
                                }
                                Err(_) => {
                                    shared.metrics.reject(Rejection::HandshakeTimeout);
                                    tracing::debug!(%peer, "TLS handshake timed out")
                                }
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
    /// [`upgrade::read_head`] before `handshake`'s deadline (and while the connection keeps
    /// its place among those in their handshake): an accepted signaling upgrade runs its
    /// session right here, in this task; anything else, and every later request, is served by
    /// hyper.
    ///
    /// An idle peer is this future, so its size matters: the arguments go into a box that is
    /// freed before the first await (an async fn keeps its arguments for its whole life).
    pub fn serve<I>(
        self,
        io: I,
        handshake: HandshakeTicket,
    ) -> impl Future<Output = ()> + Send + 'static
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        serve(Box::new((self, io, handshake)))
    }
}

async fn serve<I>(start: Box<(Connection, I, HandshakeTicket)>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // `{ start }` moves the box into a temporary, freed at the end of this statement.
    let (conn, io, handshake) = *{ start };
    // The handshake's future (which borrows the socket and holds the ticket) ends with this
    // statement, and `next` is moved whole into the future that serves the rest: nothing else
    // is kept for the connection's life.
    let Some(next) = first_request(conn, ReadAhead::new(io), handshake).await else {
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

/// Reads the first request head: `None` when there was no whole head by the handshake's
/// deadline, the connection was dropped for a newer one in its handshake, the client left,
/// a read failed, or shutdown began. The handshake's place is given back on return.
async fn first_request<I>(
    conn: Connection,
    mut io: ReadAhead<I>,
    handshake: HandshakeTicket,
) -> Option<Next<I>>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let shared = &conn.shared;
    let read = upgrade::read_head(&mut io, shared, conn.peer, conn.signaling);
    let head = tokio::select! {
        biased;
        head = timeout_at(handshake.deadline(), read) => head,
        _ = handshake.evicted() => {
            tracing::debug!(ip = %LogIp(conn.peer.ip()), "dropped in its handshake for a newer connection");
            return None;
        }
        _ = shared.shutdown.token.cancelled() => return None,
    };
    drop(handshake);
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
        Ok(Err(_)) => None,
        Err(_) => {
            shared.metrics.reject(Rejection::HandshakeTimeout);
            None
        }
    }
}

/// Serves HTTP/1 requests with hyper until the client goes, a deadline passes, an upgrade
/// hands the socket to a session, or shutdown.
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
            Ok(upgrade_via_hyper::<I>(request, &service_shared, peer))
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
    let config = &shared.config;
    let io = WriteDeadline::new(io, config.write_timeout, Arc::clone(&shared.metrics));
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(config.handshake_timeout)
        .max_buf_size(upgrade::MAX_HEAD)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(connection);
    let token = shared.shutdown.token.clone();
    tokio::select! {
        _ = &mut connection => {}
        _ = token.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(config.shutdown_timeout, connection).await;
        }
    }
}

/// Answers an upgrade request hyper read: 101 and a spawned session, or the refusal. `I` is
/// the connection's stream, which hyper hands back after the 101 (without the write
/// deadline: the session keeps its own).
fn upgrade_via_hyper<I>(
    mut request: Request<Incoming>,
    shared: &Arc<Shared>,
    peer: SocketAddr,
) -> Response<Body>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (params, origin, response) = match upgrade::check(&request, shared, peer) {
        Ok(accepted) => accepted,
        Err(refusal) => return refusal.respond(shared),
    };
    let on_upgrade = hyper::upgrade::on(&mut request);
    let task_shared = Arc::clone(shared);
    shared.shutdown.tracker.spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(error) => {
                tracing::debug!(ip = %LogIp(origin.ip), %error, "upgrade failed");
                return;
            }
        };
        // hyper gives back the stream it was given, and the bytes it read past the request.
        match upgraded.downcast::<TokioIo<WriteDeadline<ReadAhead<I>>>>() {
            Ok(parts) => {
                let mut io = parts.io.into_inner().into_inner();
                io.unread(&parts.read_buf);
                // Copied out: the buffer is a view of hyper's 8 KiB read buffer, which it
                // would otherwise keep alive for the socket's life (every idle peer's cost).
                drop(parts.read_buf);
                session::run(io, params, task_shared, origin).await;
            }
            Err(_) => tracing::error!("hyper upgraded a stream of another type; closing it"),
        }
    });
    response
}
