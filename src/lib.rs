//! peerjsd: a PeerJS signaling server.
//!
//! How it fits together — the tasks, who owns what, one message walked from socket to socket,
//! and where each invariant is kept — is in `docs/ARCHITECTURE.md`; the wire protocol it
//! implements is in `docs/PROTOCOL.md`.
//!
//! # Layout
//!
//! - [`config`]: command line, environment and config file, validated once into [`Config`].
//! - [`protocol`]: the PeerJS wire format (no I/O): parsing client frames, building server
//!   frames; and the reasons the server decides (close, drop, refusal) with their close codes,
//!   which the metrics only label.
//! - [`json`]: the validating, allocation-free JSON scanner `protocol` parses frames with,
//!   and the serde_json reader it is held to (and measured against: `bench/ab.sh`).
//! - [`gate`]: what every accepted connection passes: per-address counts of connections and
//!   of handshakes, and the server-wide bound on connections still in their handshake.
//! - [`http`]: the accept loop, the upgrade/REST split, the REST and ops routes, the
//!   read/write deadlines of the connections hyper serves, and the TURN credentials of
//!   `GET {path}{key}/ice` (`--turn-secret`).
//! - [`ws`]: the WebSocket handshake (a connection's first request head is read and checked
//!   here, and an accepted upgrade needs no hyper), the read-ahead socket wrapper, and the
//!   per-socket session task.
//! - [`room`]: the room actors (one task owns each room's members and offline queue; it
//!   publishes the members' queues so that sessions deliver to connected peers directly) and
//!   the registry that finds them, with the budgets (peer slots, queued bytes) they draw on.
//!   Global mode is a single room.
//! - [`cluster`]: several nodes as one (`--cluster`): the NATS connection, the directory of
//!   ids held on other nodes, claims, heartbeats and failure detection. Rooms reach it only
//!   through [`room::remote::Remote`].
//! - [`auth`]: signed join tokens (`--auth-secret`): verify a token, say what it grants.
//! - [`issued_id`]: ids minted with a MAC (`--issued-ids-only`), and the check that an id was.
//! - [`metrics`]: counters and gauges, JSON and Prometheus text.
//! - [`logging`]: JSON log lines (our own fast formatter) or text, filtered by `RUST_LOG`.
//! - [`tls`]: `--sslkey/--sslcert` loaded into a rustls acceptor.
//! - [`state`]: what the parts share (config, metrics, registry, limits, shutdown).
//!
//! # Tasks
//!
//! One accept loop per listener; one task per connection, which reads the first request and
//! then either runs the WebSocket session itself (its only reader and writer) or serves HTTP
//! with hyper (an upgrade there gets a session task of its own); one actor per room. Every
//! channel is bounded and every task is spawned on the shutdown
//! [`TaskTracker`](tokio_util::task::TaskTracker) and ends on shutdown (accept loops and
//! connections on the token, room actors on a `Shutdown` command, sessions when their room
//! closes them), so [`Server::run`] can wait for all of them.
//!
//! With `--cluster`, two more: the cluster's node task (reads the bus, answers the other
//! nodes, keeps the directory of their ids, sends heartbeats, declares silent nodes dead) and
//! its publisher (the one writer to NATS, fed by a queue bounded in bytes), plus a short task
//! per probe another node asks for. A message for a peer on another node goes session → room
//! actor (the id is not a member here) → [`room::remote::Remote::deliver`] → publisher → NATS
//! → the destination node's task → its room actor → the member's outbound queue.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

/// Declares a label enum with its wire names and the list of all variants.
macro_rules! label_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $text:literal,)* }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vdoc])* $variant,)* }
        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];
            /// The label value.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text,)* }
            }
        }
    };
}

pub mod auth;
pub mod cluster;
pub mod config;
pub mod gate;
pub mod http;
pub mod issued_id;
pub mod json;
pub mod logging;
pub mod metrics;
pub mod protocol;
pub mod room;
pub mod state;
pub mod tls;
pub mod ws;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::net::TcpListener;

pub use config::Config;
pub use state::Shared;

/// A server ready to run: its state exists, so tests can watch metrics and rooms.
pub struct Server {
    shared: Arc<Shared>,
    /// Set when `--sslkey/--sslcert` are configured.
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// The `--metrics-addr` listener, if any.
    metrics_listener: Option<TcpListener>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// How a run ended badly.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Some tasks were still running when `--shutdown-timeout` passed.
    #[error("shutdown timed out after {0:?} with {1} tasks still running")]
    DrainTimeout(std::time::Duration, usize),
}

impl Server {
    /// A server with this configuration. Fails only if TLS is configured and its files
    /// cannot be used.
    pub fn new(config: Config) -> Result<Self, tls::TlsError> {
        let tls = config.tls.as_ref().map(tls::acceptor).transpose()?;
        Ok(Server {
            shared: Arc::new(Shared::new(config)),
            tls,
            metrics_listener: None,
        })
    }

    /// Also serves `/health` and `/metrics` on `listener` (`--metrics-addr`).
    pub fn with_metrics_listener(mut self, listener: TcpListener) -> Self {
        self.metrics_listener = Some(listener);
        self
    }

    /// The shared state (metrics, rooms, configuration).
    pub fn shared(&self) -> Arc<Shared> {
        Arc::clone(&self.shared)
    }

    /// Serves `listener` until `shutdown` resolves, then drains: `/health` turns 503, the
    /// listener stops accepting, every socket is closed with 1001, and this returns once all
    /// tasks ended, or with [`RunError::DrainTimeout`] after `--shutdown-timeout`.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), RunError> {
        let shared = self.shared;
        if let Some(cluster) = &shared.cluster {
            cluster::start(
                Arc::clone(cluster),
                Arc::clone(&shared.rooms),
                shared.shutdown.tracker.clone(),
                shared.shutdown.token.clone(),
                shared.config.probe_timeout,
            )
            .await;
        }
        let router = http::router(Arc::clone(&shared));
        let tracker = &shared.shutdown.tracker;
        tracker.spawn(http::accept_loop(
            listener,
            Arc::clone(&shared),
            router,
            self.tls,
            true,
        ));
        if let Some(listener) = self.metrics_listener {
            let ops = http::ops_router(Arc::clone(&shared));
            tracker.spawn(http::accept_loop(
                listener,
                Arc::clone(&shared),
                ops,
                None,
                false,
            ));
        }

        shutdown.await;
        tracing::info!(peers = shared.peer_count(), "shutting down");
        shared.draining.store(true, Ordering::Release);
        shared.shutdown.token.cancel();
        shared.rooms.shutdown_all();
        shared.shutdown.tracker.close();
        let deadline = shared.config.shutdown_timeout;
        match tokio::time::timeout(deadline, shared.shutdown.tracker.wait()).await {
            Ok(()) => {
                tracing::info!("shutdown complete");
                Ok(())
            }
            Err(_) => Err(RunError::DrainTimeout(
                deadline,
                shared.shutdown.tracker.len(),
            )),
        }
    }
}
