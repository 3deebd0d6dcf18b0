//! HTTP: the accept loop, the split between WebSocket upgrades and REST, and the REST router.
//!
//! Every TCP connection is served by hyper's HTTP/1 server with upgrades enabled. A request
//! that asks for an upgrade goes to [`crate::ws::upgrade`] (as Node hands such requests to the
//! `ws` library); everything else goes to the axum [`router`]. No business logic lives here.

pub mod ops;
pub mod rest;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::state::Shared;
use crate::ws::upgrade;

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

/// Accepts connections until shutdown, with TLS when `tls` is set. Accept errors (e.g. out
/// of file descriptors) are logged and retried after a pause instead of spinning or ending
/// the server.
pub async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    router: Router,
    tls: Option<TlsAcceptor>,
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
                let shared_for_conn = Arc::clone(&shared);
                let router = router.clone();
                let tracker = &shared.shutdown.tracker;
                match &tls {
                    None => {
                        tracker.spawn(serve_connection(stream, peer, shared_for_conn, router));
                    }
                    Some(acceptor) => {
                        let handshake = acceptor.accept(stream);
                        tracker.spawn(async move {
                            let limit = shared_for_conn.config.handshake_timeout;
                            match tokio::time::timeout(limit, handshake).await {
                                Ok(Ok(stream)) => {
                                    serve_connection(stream, peer, shared_for_conn, router).await
                                }
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

/// Serves one connection: HTTP/1 requests until the client goes, an upgrade hands the socket
/// to a session, or shutdown.
pub async fn serve_connection<I>(io: I, peer: SocketAddr, shared: Arc<Shared>, router: Router)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service_shared = Arc::clone(&shared);
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let response = if upgrade::is_upgrade(&request) {
            Ok(upgrade::handle(request, &service_shared, peer))
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
