//! What every part of the server shares: configuration, metrics, the room registry (which
//! holds the budgets rooms draw on), the cluster (with `--cluster`), the per-IP connection
//! counts, and the shutdown signal.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use dashmap::DashMap;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::TokenVerifier;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::gate::{Gate, address_key};
use crate::issued_id::IdIssuer;
use crate::metrics::Metrics;
use crate::room::registry::RoomRegistry;

/// Cancellation plus the set of tasks to wait for (axum does not track upgraded sockets).
#[derive(Debug, Default, Clone)]
pub struct Shutdown {
    /// Cancelled when the server starts draining.
    pub token: CancellationToken,
    /// Every session, room actor and connection task.
    pub tracker: TaskTracker,
}

/// Server-wide state, shared by `Arc`.
#[derive(Debug)]
pub struct Shared {
    /// The validated configuration.
    pub config: Arc<Config>,
    /// All metrics.
    pub metrics: Arc<Metrics>,
    /// Live rooms, and the peer slots and queue bytes they draw on.
    pub rooms: Arc<RoomRegistry>,
    /// Draining and task tracking.
    pub shutdown: Shutdown,
    /// Set when shutdown begins: `/health` answers 503.
    pub draining: AtomicBool,
    /// Verifies join tokens (`--auth-secret`).
    pub auth: Option<TokenVerifier>,
    /// Mints and checks issued ids (`--issued-ids-only`).
    pub ids: Option<IdIssuer>,
    /// The cluster this node is part of (`--cluster`); `None` when it runs alone.
    pub cluster: Option<Arc<Cluster>>,
    /// Open WebSocket sessions per client address key, for `--max-connections-per-ip`.
    per_ip: DashMap<IpAddr, usize>,
    /// Every TCP connection's place, per address and among those in their handshake.
    pub gate: Arc<Gate>,
}

impl Shared {
    /// Fresh state for a server with this configuration.
    ///
    /// With `--issued-ids-only` and no secret for it, the ids' key is drawn at random here;
    /// this panics only if the system has no randomness at start-up.
    pub fn new(config: Config) -> Self {
        let auth = config.auth.as_ref().map(|auth| {
            TokenVerifier::new(
                &auth.secrets,
                auth.issuer.as_deref(),
                auth.audience.as_deref(),
            )
        });
        let ids = config
            .issued_ids_only
            .then(|| match (&config.id_secrets[..], &config.auth) {
                ([], Some(auth)) => IdIssuer::new(&auth.secrets),
                ([], None) => IdIssuer::random()
                    .unwrap_or_else(|e| panic!("cannot key --issued-ids-only: {e}")),
                (secrets, _) => IdIssuer::new(secrets),
            });
        let config = Arc::new(config);
        let metrics = Arc::new(Metrics::new());
        let shutdown = Shutdown::default();
        let cluster = config
            .cluster
            .clone()
            .map(|settings| Arc::new(Cluster::new(settings, &config, Arc::clone(&metrics))));
        let remote = cluster
            .clone()
            .map(|c| c as Arc<dyn crate::room::remote::Remote>);
        let rooms = Arc::new(RoomRegistry::new(
            Arc::clone(&config),
            Arc::clone(&metrics),
            shutdown.tracker.clone(),
            remote,
        ));
        let gate = Arc::new(Gate::new(&config, Arc::clone(&metrics)));
        Shared {
            auth,
            ids,
            config,
            metrics,
            rooms,
            shutdown,
            cluster,
            draining: AtomicBool::new(false),
            per_ip: DashMap::new(),
            gate,
        }
    }

    /// Registered peers right now.
    pub fn peer_count(&self) -> usize {
        self.rooms.budgets.peers()
    }

    /// Counts a new socket from `ip` against `--max-connections-per-ip` (an IPv6 address by
    /// its `--ipv6-prefix` network). The returned guard gives it back when dropped; `None` if
    /// the address is at its limit.
    pub fn admit_ip(self: &Arc<Self>, ip: IpAddr) -> Option<IpGuard> {
        let ip = address_key(ip, self.config.ipv6_prefix);
        if let Some(limit) = self.config.max_connections_per_ip {
            let mut count = self.per_ip.entry(ip).or_insert(0);
            if *count >= limit {
                return None;
            }
            *count += 1;
        }
        Some(IpGuard {
            shared: Arc::clone(self),
            ip,
        })
    }

    /// Open sockets from `ip` (for tests and metrics).
    pub fn connections_from(&self, ip: IpAddr) -> usize {
        let ip = address_key(ip, self.config.ipv6_prefix);
        self.per_ip.get(&ip).map_or(0, |c| *c)
    }
}

/// One socket's place in the per-IP count.
#[derive(Debug)]
pub struct IpGuard {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl Drop for IpGuard {
    fn drop(&mut self) {
        if self.shared.config.max_connections_per_ip.is_some() {
            // Remove the entry when it reaches zero so the map never grows with past clients.
            self.shared.per_ip.remove_if_mut(&self.ip, |_, count| {
                *count -= 1;
                *count == 0
            });
        }
    }
}
