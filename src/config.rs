//! Command line, environment and config file, validated once into [`Config`].
//!
//! Precedence: flags > `PEERJSD_*` environment > the reference's environment names (`PORT`,
//! `PEERSERVER_PATH`, `ALLOWED_ORIGINS`) > `--config` TOML file > built-in defaults. The file
//! and legacy variables are folded in as clap defaults, so `--help` shows the value that will
//! apply and clap does the rest. Nothing reads the environment after start-up.

use std::ffi::OsString;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

use crate::auth::{MIN_SECRET_LEN, Secret};
use crate::protocol::{MAX_NAME_LEN, is_valid_id};

/// How peers are grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RoomMode {
    /// One namespace for the whole server, as peerjs-server.
    Global,
    /// The `token` query parameter names the room; ids are unique per room.
    Token,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable lines.
    Text,
}

/// The command line. Every flag also reads `PEERJSD_<NAME>`; the reference's spellings are
/// accepted as aliases.
#[derive(Debug, Parser)]
#[command(
    name = "peerjsd",
    version,
    about = "A fast PeerJS signaling server: a drop-in for peerjs-server, with game rooms and abuse limits.",
    after_help = "Durations: a bare number is milliseconds (as in peerjs-server); 500ms, 60s, 5m, 1h also work.\n\
                  Reference environment names also work: PORT, PEERSERVER_PATH, ALLOWED_ORIGINS (comma-separated)."
)]
struct Cli {
    /// TOML config file; its keys are the long flag names (see config/peerjsd.toml).
    #[arg(long, env = "PEERJSD_CONFIG", value_name = "FILE", global = true)]
    config: Option<PathBuf>,

    /// `peerjsd token …`: print a join token instead of serving.
    #[command(subcommand)]
    command: Option<Command>,

    /// TCP port to listen on.
    #[arg(short = 'p', long, env = "PEERJSD_PORT", default_value = "9000")]
    port: u16,

    /// Address to listen on ("::" also accepts IPv4).
    #[arg(short = 'H', long, env = "PEERJSD_HOST", default_value = "::")]
    host: IpAddr,

    /// Mount path: the WebSocket is at {path}peerjs, REST at {path}.
    #[arg(long, env = "PEERJSD_PATH", default_value = "/")]
    path: String,

    /// Connection key clients must send (`key` option of the PeerJS client).
    #[arg(short = 'k', long, env = "PEERJSD_KEY", default_value = "peerjs")]
    key: String,

    /// How long messages for an offline peer wait before the sender gets EXPIRE.
    #[arg(short = 't', long, alias = "expire_timeout", env = "PEERJSD_EXPIRE_TIMEOUT", default_value = "5000", value_parser = parse_duration)]
    expire_timeout: Duration,

    /// A peer that sends nothing for this long is closed and its id freed.
    #[arg(long, alias = "alive_timeout", env = "PEERJSD_ALIVE_TIMEOUT", default_value = "60000", value_parser = parse_duration)]
    alive_timeout: Duration,

    /// Most peers connected to the server at once.
    #[arg(
        short = 'c',
        long,
        alias = "concurrent_limit",
        env = "PEERJSD_CONCURRENT_LIMIT",
        default_value = "100000"
    )]
    concurrent_limit: usize,

    /// Serve the list of connected ids at GET {path}{key}/peers.
    #[arg(long, alias = "allow_discovery", env = "PEERJSD_ALLOW_DISCOVERY", action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value = "false")]
    allow_discovery: bool,

    /// Behind a reverse proxy: take the client IP from the last X-Forwarded-For entry.
    #[arg(long, env = "PEERJSD_PROXIED", action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value = "false")]
    proxied: bool,

    /// Allowed Origin (repeatable). Unset: reflect any Origin on REST and accept any WebSocket.
    #[arg(
        long,
        env = "PEERJSD_CORS",
        value_delimiter = ',',
        value_name = "ORIGIN"
    )]
    cors: Vec<String>,

    /// TLS private key (PEM); needs --sslcert.
    #[arg(long, alias = "ssl-key", env = "PEERJSD_SSLKEY", value_name = "FILE")]
    sslkey: Option<PathBuf>,

    /// TLS certificate chain (PEM); needs --sslkey.
    #[arg(long, alias = "ssl-cert", env = "PEERJSD_SSLCERT", value_name = "FILE")]
    sslcert: Option<PathBuf>,

    /// "global": one namespace, as peerjs-server. "token": the PeerJS token names a room.
    #[arg(
        long,
        env = "PEERJSD_ROOMS",
        value_enum,
        default_value = "global",
        global = true
    )]
    rooms: RoomMode,

    /// Room mode: most peers per room; the next one gets ERROR "Room is full".
    #[arg(long, env = "PEERJSD_MAX_ROOM_PEERS", default_value = "4")]
    max_room_peers: usize,

    /// Send LEAVE from a departing peer to the rest of its room [default: on in room mode, off in global mode].
    #[arg(long, env = "PEERJSD_ANNOUNCE_LEAVE", action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    announce_leave: Option<bool>,

    /// Messages per second per peer (burst = rate); 0 turns rate limiting off.
    #[arg(long, env = "PEERJSD_RATE_LIMIT", default_value = "100")]
    rate_limit: u32,

    /// A peer over its rate limit for this long is closed with ERROR "Rate limit exceeded".
    #[arg(long, env = "PEERJSD_RATE_LIMIT_GRACE", default_value = "5s", value_parser = parse_duration)]
    rate_limit_grace: Duration,

    /// Largest inbound message in bytes; larger closes the socket with 1009.
    #[arg(long, env = "PEERJSD_MAX_MESSAGE_SIZE", default_value = "1048576")]
    max_message_size: usize,

    /// Most WebSocket connections from one client IP (HTTP 429 past it); 0 = no limit.
    #[arg(long, env = "PEERJSD_MAX_CONNECTIONS_PER_IP", default_value = "256")]
    max_connections_per_ip: usize,

    /// A TLS handshake plus first request head, or any later request head, that takes longer
    /// than this is dropped, as is a kept-alive HTTP connection idle this long.
    #[arg(long, env = "PEERJSD_HANDSHAKE_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    handshake_timeout: Duration,

    /// Most TCP connections from one client address, of any kind, from accept to close (HTTP
    /// 429 and close past it); 0 = no limit. Not applied with --proxied.
    #[arg(long, env = "PEERJSD_MAX_TCP_PER_IP", default_value = "512")]
    max_tcp_per_ip: usize,

    /// Most connections still in their handshake (TLS, or no whole first request head yet)
    /// server-wide; past it the oldest of them is dropped for the newcomer.
    #[arg(long, env = "PEERJSD_MAX_HANDSHAKES", default_value = "1024")]
    max_handshakes: usize,

    /// Most connections still in their handshake from one client address (HTTP 429 and close
    /// past it); 0 = no limit. Not applied with --proxied.
    #[arg(long, env = "PEERJSD_MAX_HANDSHAKES_PER_IP", default_value = "32")]
    max_handshakes_per_ip: usize,

    /// IPv6 clients are counted per network of this prefix length in the per-address limits.
    #[arg(long, env = "PEERJSD_IPV6_PREFIX", default_value = "64", value_parser = clap::value_parser!(u8).range(1..=128))]
    ipv6_prefix: u8,

    /// Most queued messages for one offline peer; past it the sender gets EXPIRE at once.
    #[arg(long, env = "PEERJSD_MAX_QUEUE_PER_PEER", default_value = "64")]
    max_queue_per_peer: usize,

    /// Most bytes queued for offline peers server-wide; past it senders get EXPIRE at once.
    #[arg(long, env = "PEERJSD_MAX_QUEUED_BYTES", default_value = "33554432")]
    max_queued_bytes: usize,

    /// Each sender's share of the offline queue, in messages; past it that sender gets EXPIRE at once.
    #[arg(long, env = "PEERJSD_MAX_QUEUE_PER_SENDER", default_value = "128")]
    max_queue_per_sender: usize,

    /// Each sender's share of the offline queue, in bytes; past it that sender gets EXPIRE at once.
    #[arg(
        long,
        env = "PEERJSD_MAX_QUEUED_BYTES_PER_SENDER",
        default_value = "1048576"
    )]
    max_queued_bytes_per_sender: usize,

    /// The share of the offline queue held by all senders from one client address (IPv6: per
    /// --ipv6-prefix network), in bytes across all rooms; past it they get EXPIRE at once.
    #[arg(
        long,
        env = "PEERJSD_MAX_QUEUED_BYTES_PER_IP",
        default_value = "8388608"
    )]
    max_queued_bytes_per_ip: usize,

    /// Frames waiting to be written to one peer; a peer that lets this fill up is closed.
    #[arg(long, env = "PEERJSD_OUTBOUND_QUEUE", default_value = "4096")]
    outbound_queue: usize,

    /// Bytes waiting to be written to one peer; a peer that lets this fill up is closed.
    #[arg(long, env = "PEERJSD_MAX_OUTBOUND_BYTES", default_value = "2097152")]
    max_outbound_bytes: usize,

    /// Bytes waiting to be written to all peers together; past it a frame that would leave its
    /// peer holding more than 64 KiB is refused, and its sender gets EXPIRE.
    #[arg(long, env = "PEERJSD_MAX_OUTBOUND_TOTAL", default_value = "268435456")]
    max_outbound_total: usize,

    /// A socket that accepts no bytes for this long while data waits for it is closed.
    #[arg(long, env = "PEERJSD_WRITE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    write_timeout: Duration,

    /// How long a duplicate id's holder has to answer a WebSocket ping before it is evicted.
    #[arg(long, env = "PEERJSD_PROBE_TIMEOUT", default_value = "1500ms", value_parser = parse_duration)]
    probe_timeout: Duration,

    /// On SIGTERM/SIGINT, how long to wait for sockets to close before exiting anyway.
    #[arg(long, env = "PEERJSD_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    shutdown_timeout: Duration,

    /// Log format: json or text. Filter with RUST_LOG (default "info").
    #[arg(long, env = "PEERJSD_LOG_FORMAT", value_enum, default_value = "json")]
    log_format: LogFormat,

    /// Serve /metrics on the public port too; false: only on --metrics-addr (404 on the public port).
    #[arg(long, env = "PEERJSD_METRICS_PUBLIC", action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value = "true")]
    metrics_public: bool,

    /// Also serve /metrics (and /health) on this separate address, e.g. 127.0.0.1:9100.
    #[arg(long, env = "PEERJSD_METRICS_ADDR", value_name = "ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,

    /// Signed join tokens: the PeerJS token must be a JWT (HS256) signed with this secret
    /// (at least 32 bytes), whose `sub` is the id.
    #[arg(
        long,
        env = "PEERJSD_AUTH_SECRET",
        value_name = "SECRET",
        hide_env_values = true,
        hide_default_value = true,
        global = true
    )]
    auth_secret: Option<String>,

    /// The secret used before --auth-secret, still accepted while a secret is rotated.
    #[arg(
        long,
        env = "PEERJSD_AUTH_SECRET_PREVIOUS",
        value_name = "SECRET",
        hide_env_values = true,
        hide_default_value = true,
        global = true
    )]
    auth_secret_previous: Option<String>,

    /// Read --auth-secret from this file (first line), and --auth-secret-previous from its second line if any.
    #[arg(
        long,
        env = "PEERJSD_AUTH_SECRET_FILE",
        value_name = "FILE",
        global = true
    )]
    auth_secret_file: Option<PathBuf>,

    /// With --auth-secret: tokens must carry this `iss` claim.
    #[arg(long, env = "PEERJSD_AUTH_ISSUER", value_name = "ISS", global = true)]
    auth_issuer: Option<String>,

    /// With --auth-secret: tokens must carry this `aud` claim.
    #[arg(long, env = "PEERJSD_AUTH_AUDIENCE", value_name = "AUD", global = true)]
    auth_audience: Option<String>,

    /// Refuse ids that GET {path}{key}/id did not mint (a MAC inside the id); `new Peer()` without an id works unchanged.
    #[arg(long, env = "PEERJSD_ISSUED_IDS_ONLY", action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value = "false")]
    issued_ids_only: bool,

    /// Key of issued ids (at least 32 bytes; nodes that share ids share it) [default: the --auth-secret, else random per process].
    #[arg(
        long,
        env = "PEERJSD_ID_SECRET",
        value_name = "SECRET",
        hide_env_values = true,
        hide_default_value = true
    )]
    id_secret: Option<String>,

    /// Read --id-secret from this file (first line; a second line is a previous secret, still accepted).
    #[arg(long, env = "PEERJSD_ID_SECRET_FILE", value_name = "FILE")]
    id_secret_file: Option<PathBuf>,

    /// TURN credentials: coturn's static-auth-secret (at least 32 bytes). Serves GET {path}{key}/ice.
    #[arg(
        long,
        env = "PEERJSD_TURN_SECRET",
        value_name = "SECRET",
        hide_env_values = true,
        hide_default_value = true
    )]
    turn_secret: Option<String>,

    /// The TURN secret used before --turn-secret, accepted while it is rotated (only --turn-secret signs).
    #[arg(
        long,
        env = "PEERJSD_TURN_SECRET_PREVIOUS",
        value_name = "SECRET",
        hide_env_values = true,
        hide_default_value = true
    )]
    turn_secret_previous: Option<String>,

    /// Read --turn-secret from this file (first line), and --turn-secret-previous from its second line if any.
    #[arg(long, env = "PEERJSD_TURN_SECRET_FILE", value_name = "FILE")]
    turn_secret_file: Option<PathBuf>,

    /// A TURN server the credentials are for (repeatable): turn:HOST[:PORT][?transport=udp|tcp] or turns:….
    #[arg(
        long,
        env = "PEERJSD_TURN_URI",
        value_delimiter = ',',
        value_name = "URI"
    )]
    turn_uri: Vec<String>,

    /// A STUN server GET {path}{key}/ice lists too (repeatable): stun:HOST[:PORT] or stuns:….
    #[arg(
        long,
        env = "PEERJSD_STUN_URI",
        value_delimiter = ',',
        value_name = "URI"
    )]
    stun_uri: Vec<String>,

    /// How long the TURN credentials GET {path}{key}/ice hands out are valid.
    #[arg(long, env = "PEERJSD_TURN_TTL", default_value = "24h", value_parser = parse_duration)]
    turn_ttl: Duration,

    /// Without --auth-secret: GET {path}{key}/ice requests per minute per client IP (burst = rate; IPv6 per /64); HTTP 429 past it. 0 = no limit.
    #[arg(long, env = "PEERJSD_ICE_RATE_LIMIT", default_value = "60")]
    ice_rate_limit: u32,
    /// Join a cluster of nodes through these NATS servers (comma-separated nats:// or tls:// URLs); unset: this node runs alone.
    #[arg(
        long,
        env = "PEERJSD_CLUSTER",
        value_delimiter = ',',
        value_name = "URL"
    )]
    cluster: Vec<String>,

    /// The cluster's name: nodes with the same name (on the same NATS) share one namespace.
    #[arg(long, env = "PEERJSD_CLUSTER_NAME", default_value = "peerjsd")]
    cluster_name: String,

    /// This node's name in the cluster (letters, digits, '-', '_') [default: the hostname plus a random suffix].
    #[arg(long, env = "PEERJSD_NODE_NAME")]
    node_name: Option<String>,

    /// NATS credentials file (JWT + NKey seed, as `nsc` writes it).
    #[arg(long, env = "PEERJSD_CLUSTER_CREDS", value_name = "FILE")]
    cluster_creds: Option<PathBuf>,

    /// NATS user (with --cluster-password).
    #[arg(long, env = "PEERJSD_CLUSTER_USER")]
    cluster_user: Option<String>,

    /// NATS password (with --cluster-user).
    #[arg(
        long,
        env = "PEERJSD_CLUSTER_PASSWORD",
        hide_env_values = true,
        hide_default_value = true
    )]
    cluster_password: Option<String>,

    /// NATS authentication token.
    #[arg(
        long,
        env = "PEERJSD_CLUSTER_TOKEN",
        hide_env_values = true,
        hide_default_value = true
    )]
    cluster_token: Option<String>,

    /// CA certificate (PEM) that signs the NATS servers' certificates; implies TLS.
    #[arg(long, env = "PEERJSD_CLUSTER_TLS_CA", value_name = "FILE")]
    cluster_tls_ca: Option<PathBuf>,

    /// How often this node tells the cluster it is alive.
    #[arg(long, env = "PEERJSD_CLUSTER_HEARTBEAT", default_value = "1s", value_parser = parse_duration)]
    cluster_heartbeat: Duration,

    /// A node not heard from for this long is dead: its ids and seats are freed cluster-wide.
    #[arg(long, env = "PEERJSD_CLUSTER_NODE_TIMEOUT", default_value = "3s", value_parser = parse_duration)]
    cluster_node_timeout: Duration,

    /// How long a join waits for the other nodes to answer its claim on an id.
    #[arg(long, env = "PEERJSD_CLUSTER_REQUEST_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    cluster_request_timeout: Duration,

    /// Bytes waiting to be published to NATS; past it cross-node messages get EXPIRE (and are counted).
    #[arg(
        long,
        env = "PEERJSD_CLUSTER_PUBLISH_BACKLOG",
        default_value = "8388608"
    )]
    cluster_publish_backlog: usize,
}

/// What `peerjsd` can do besides serving.
#[derive(Debug, Subcommand)]
enum Command {
    /// Print a join token signed with the configured --auth-secret (same sources as the server: flags, PEERJSD_*, --config).
    Token {
        /// The peer id the token admits (its `sub` claim).
        #[arg(long)]
        sub: String,
        /// The room it admits to (its `room` claim; needed in room mode).
        #[arg(long)]
        room: Option<String>,
        /// How long it is valid.
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        ttl: Duration,
    },
}

/// The validated configuration the server runs with. Tests build it from [`Config::default`].
#[derive(Debug, Clone)]
pub struct Config {
    /// Listen port.
    pub port: u16,
    /// Listen address.
    pub host: IpAddr,
    /// Normalised mount path: starts and ends with `/`.
    pub path: String,
    /// The key clients must present.
    pub key: String,
    /// Offline queue expiry.
    pub expire_timeout: Duration,
    /// Inactivity after which a peer is closed.
    pub alive_timeout: Duration,
    /// Most registered peers server-wide.
    pub concurrent_limit: usize,
    /// Whether `/peers` lists ids.
    pub allow_discovery: bool,
    /// Whether the client IP comes from `X-Forwarded-For`.
    pub proxied: bool,
    /// Allowed origins; empty means "any".
    pub cors: Vec<String>,
    /// TLS key and certificate paths, when serving TLS.
    pub tls: Option<TlsPaths>,
    /// Global or per-token rooms.
    pub rooms: RoomMode,
    /// Room capacity in room mode (`usize::MAX` in global mode).
    pub max_room_peers: usize,
    /// Whether departures are announced with LEAVE to the rest of the room.
    pub announce_leave: bool,
    /// Messages per second per peer; `None` = unlimited.
    pub rate_limit: Option<NonZeroU32>,
    /// How long a peer may stay over its rate limit before it is closed.
    pub rate_limit_grace: Duration,
    /// Largest inbound message.
    pub max_message_size: usize,
    /// Most sockets per client IP; `None` = unlimited.
    pub max_connections_per_ip: Option<usize>,
    /// Bound on a TLS handshake plus the first request head, on any later head, and on an
    /// idle kept-alive HTTP connection.
    pub handshake_timeout: Duration,
    /// Most TCP connections per client address; `None` = unlimited. Not applied with
    /// `proxied` (the socket peer is then the proxy).
    pub max_tcp_per_ip: Option<usize>,
    /// Most connections in their handshake server-wide (at least 1).
    pub max_handshakes: usize,
    /// Most connections in their handshake per client address; `None` = unlimited. Not
    /// applied with `proxied`.
    pub max_handshakes_per_ip: Option<usize>,
    /// Prefix length an IPv6 client address is counted under (1 to 128).
    pub ipv6_prefix: u8,
    /// Offline queue bound per destination.
    pub max_queue_per_peer: usize,
    /// Offline queue bound server-wide, in bytes.
    pub max_queued_bytes: usize,
    /// Offline-queue messages one sender may hold.
    pub max_queue_per_sender: usize,
    /// Offline-queue bytes one sender may hold.
    pub max_queued_bytes_per_sender: usize,
    /// Offline-queue bytes the senders from one client address may hold.
    pub max_queued_bytes_per_ip: usize,
    /// Outbound frames buffered per peer.
    pub outbound_queue: usize,
    /// Outbound bytes buffered per peer (queued, or taken and not yet written).
    pub max_outbound_bytes: usize,
    /// Outbound bytes buffered for all peers together before a peer holding more than its
    /// share is refused.
    pub max_outbound_total: usize,
    /// How long a socket may accept no bytes while data waits for it.
    pub write_timeout: Duration,
    /// Liveness probe bound for a duplicate id's holder.
    pub probe_timeout: Duration,
    /// Drain bound on shutdown.
    pub shutdown_timeout: Duration,
    /// Log format.
    pub log_format: LogFormat,
    /// Whether `/metrics` is served on the public port (it always is on `metrics_addr`).
    pub metrics_public: bool,
    /// Separate listener for `/metrics` and `/health`.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Signed join tokens, when `--auth-secret` is set.
    pub auth: Option<AuthConfig>,
    /// Whether the WebSocket refuses ids `GET {path}{key}/id` did not mint.
    pub issued_ids_only: bool,
    /// TURN credentials at `GET {path}{key}/ice`, when `--turn-secret` is set.
    pub turn: Option<TurnConfig>,
    /// `--id-secret` (and a previous one): the key of issued ids. Empty: the auth secrets,
    /// or without those a random key per process.
    pub id_secrets: Vec<Secret>,
    /// `--cluster`: the NATS cluster this node joins; `None` runs alone.
    pub cluster: Option<ClusterConfig>,
}

/// `--cluster` and what goes with it.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// NATS server URLs.
    pub urls: Vec<String>,
    /// `--cluster-name`: the subjects' prefix is `peerjsd.<name>.`.
    pub name: String,
    /// `--node-name`: this node's name, unique in the cluster.
    pub node_name: String,
    /// How to authenticate to NATS.
    pub auth: ClusterAuth,
    /// `--cluster-tls-ca`: trust this CA and require TLS.
    pub tls_ca: Option<PathBuf>,
    /// `--cluster-heartbeat`.
    pub heartbeat: Duration,
    /// `--cluster-node-timeout`: the failure-detection bound.
    pub node_timeout: Duration,
    /// `--cluster-request-timeout`.
    pub request_timeout: Duration,
    /// `--cluster-publish-backlog`, in bytes.
    pub publish_backlog: usize,
}

/// Credentials for the NATS connection (at most one kind).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterAuth {
    /// None.
    None,
    /// `--cluster-creds`.
    Creds(PathBuf),
    /// `--cluster-user` and `--cluster-password`.
    UserPassword(String, Secret),
    /// `--cluster-token`.
    Token(Secret),
}

/// `--turn-secret` and what goes with it: the TURN credentials of `GET {path}{key}/ice`.
#[derive(Debug, Clone)]
pub struct TurnConfig {
    /// The signing secret, then the previous one if any. Only the first signs: peerjsd never
    /// verifies a TURN credential (coturn does), the second is accepted so that a rotation's
    /// two-secret setup can be given to peerjsd as it is.
    pub secrets: Vec<Secret>,
    /// `--turn-uri`s, checked: `turn:`/`turns:` URIs (RFC 7065).
    pub turn_uris: Vec<String>,
    /// `--stun-uri`s, checked: `stun:`/`stuns:` URIs (RFC 7064).
    pub stun_uris: Vec<String>,
    /// How long a credential is valid from when it is handed out (at least a second).
    pub ttl: Duration,
    /// Requests per minute per client IP without `--auth-secret`; `None` = unlimited.
    pub rate_limit: Option<NonZeroU32>,
}

/// `--auth-secret` and what goes with it.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// The signing secret, then the previous one if any (both verify).
    pub secrets: Vec<Secret>,
    /// Required `iss`.
    pub issuer: Option<String>,
    /// Required `aud`.
    pub audience: Option<String>,
}

/// `peerjsd token`: what to mint, and the configuration whose secret signs it.
#[derive(Debug)]
pub struct TokenRequest {
    /// The configuration (its `auth` is set).
    pub config: Config,
    /// The id.
    pub sub: String,
    /// The room claim.
    pub room: Option<String>,
    /// Validity from now.
    pub ttl: Duration,
}

/// PEM files for TLS.
#[derive(Debug, Clone)]
pub struct TlsPaths {
    /// Private key.
    pub key: PathBuf,
    /// Certificate chain.
    pub cert: PathBuf,
}

impl Default for Config {
    /// The built-in defaults (what `peerjsd` with no flags and no environment runs with).
    fn default() -> Self {
        let cli = Cli::parse_from(["peerjsd"]);
        // The built-in defaults always validate.
        Config::try_from(cli).unwrap_or_else(|e| panic!("built-in defaults are invalid: {e}"))
    }
}

/// A configuration problem, reported as one line and exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

/// What parsing the command line produced.
#[derive(Debug)]
pub enum Parsed {
    /// Run with this configuration.
    Run(Box<Config>),
    /// `--help` or `--version`: print this to stdout and exit 0.
    Print(String),
    /// `peerjsd token …`: mint a token and print it.
    Token(Box<TokenRequest>),
}

impl Config {
    /// Parses arguments and the process environment, reading `--config` if given.
    pub fn from_args<I, T>(args: I) -> Result<Parsed, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let mut command = Cli::command();

        if let Some(file) = config_file_arg(&args) {
            let text = std::fs::read_to_string(&file).map_err(|e| {
                ConfigError(format!("cannot read config file {}: {e}", file.display()))
            })?;
            for (name, values) in file_defaults(&text, &command)
                .map_err(|e| ConfigError(format!("config file {}: {e}", file.display())))?
            {
                command = command.mut_arg(name, |arg| arg.default_values(values));
            }
        }
        for (arg, var) in [
            ("port", "PORT"),
            ("path", "PEERSERVER_PATH"),
            ("cors", "ALLOWED_ORIGINS"),
        ] {
            if let Ok(value) = std::env::var(var) {
                let values: Vec<String> = if arg == "cors" {
                    value
                        .split(',')
                        .map(|s| s.trim().to_owned())
                        .filter(|s| !s.is_empty())
                        .collect()
                } else {
                    vec![value]
                };
                command = command.mut_arg(arg, |a| a.default_values(values));
            }
        }

        let matches = match command.try_get_matches_from(args) {
            Ok(m) => m,
            Err(e) => return clap_error(e),
        };
        let mut cli = match Cli::from_arg_matches(&matches) {
            Ok(cli) => cli,
            Err(e) => return clap_error(e),
        };
        match cli.command.take() {
            None => Config::try_from(cli).map(|c| Parsed::Run(Box::new(c))),
            Some(Command::Token { sub, room, ttl }) => {
                let config = Config::try_from(cli)?;
                token_request(config, sub, room, ttl).map(|t| Parsed::Token(Box::new(t)))
            }
        }
    }

    /// The WebSocket path: `{path}peerjs`.
    pub fn ws_path(&self) -> String {
        format!("{}peerjs", self.path)
    }
}

/// Checks what `peerjsd token` was asked for against the configuration it signs with.
fn token_request(
    config: Config,
    sub: String,
    room: Option<String>,
    ttl: Duration,
) -> Result<TokenRequest, ConfigError> {
    let bad = |flag: &str, value: &str, why: &str| {
        Err(ConfigError(format!(
            "invalid value '{value}' for '--{flag}': {why}"
        )))
    };
    if config.auth.is_none() {
        return Err(ConfigError(
            "peerjsd token needs a secret: --auth-secret, --auth-secret-file, PEERJSD_AUTH_SECRET or auth-secret in the config file".into(),
        ));
    }
    if !is_valid_id(&sub) {
        return bad(
            "sub",
            &sub,
            "not a PeerJS id (1-64 letters or digits, optionally separated by single '-', '_' or ' ')",
        );
    }
    match room.as_deref() {
        None if config.rooms == RoomMode::Token => {
            return Err(ConfigError(
                "room mode (--rooms token) needs --room: the token names the room".into(),
            ));
        }
        Some(r) if r.is_empty() || r.len() > MAX_NAME_LEN => {
            return bad("room", r, "must be 1-64 bytes");
        }
        _ => {}
    }
    if ttl.as_secs() == 0 {
        return bad("ttl", &format!("{ttl:?}"), "must be at least 1s");
    }
    Ok(TokenRequest {
        config,
        sub,
        room,
        ttl,
    })
}

/// One or two secrets from a flag pair or a file; each at least [`MIN_SECRET_LEN`] bytes.
/// The values never appear in an error.
fn secrets(
    flag: &str,
    value: Option<String>,
    previous: Option<String>,
    file: Option<&std::path::Path>,
) -> Result<Vec<Secret>, ConfigError> {
    let mut found: Vec<(String, String)> = Vec::new();
    if let Some(v) = value {
        found.push((format!("--{flag}"), v));
    }
    if let Some(v) = previous {
        if found.is_empty() {
            return Err(ConfigError(format!(
                "--{flag}-previous needs --{flag} (the secret that signs)"
            )));
        }
        found.push((format!("--{flag}-previous"), v));
    }
    if let Some(path) = file {
        if !found.is_empty() {
            return Err(ConfigError(format!(
                "--{flag}-file and --{flag} are exclusive: give the secrets one way"
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError(format!("cannot read --{flag}-file {}: {e}", path.display()))
        })?;
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        if lines.is_empty() || lines.len() > 2 {
            return Err(ConfigError(format!(
                "--{flag}-file {}: expected one secret per line, one or two lines",
                path.display()
            )));
        }
        for line in lines {
            found.push((format!("--{flag}-file"), line.to_owned()));
        }
    }
    found
        .into_iter()
        .map(|(source, secret)| {
            if secret.len() < MIN_SECRET_LEN {
                Err(ConfigError(format!(
                    "invalid secret for '{source}': {} bytes, it must be at least {MIN_SECRET_LEN} (e.g. openssl rand -base64 32)",
                    secret.len()
                )))
            } else {
                Ok(Secret::new(secret.into_bytes()))
            }
        })
        .collect()
}

/// `--turn-secret` with its URIs, TTL and rate: `None` without a secret (then no URI may be
/// given, since nothing would serve it).
fn turn_config(
    secrets: Vec<Secret>,
    turn_uris: Vec<String>,
    stun_uris: Vec<String>,
    ttl: Duration,
    rate_limit: u32,
) -> Result<Option<TurnConfig>, ConfigError> {
    if secrets.is_empty() {
        return match (turn_uris.is_empty(), stun_uris.is_empty()) {
            (true, true) => Ok(None),
            (false, _) => Err(ConfigError(
                "--turn-uri needs --turn-secret (GET {path}{key}/ice is off without it)".into(),
            )),
            (true, false) => Err(ConfigError(
                "--stun-uri needs --turn-secret (GET {path}{key}/ice is off without it)".into(),
            )),
        };
    }
    if turn_uris.is_empty() {
        return Err(ConfigError(
            "--turn-secret needs at least one --turn-uri (the TURN servers its credentials are for)"
                .into(),
        ));
    }
    for (flag, uris, schemes) in [
        ("turn-uri", &turn_uris, ["turn", "turns"]),
        ("stun-uri", &stun_uris, ["stun", "stuns"]),
    ] {
        for uri in uris {
            check_ice_uri(uri, schemes).map_err(|why| {
                ConfigError(format!("invalid value '{uri}' for '--{flag}': {why}"))
            })?;
        }
    }
    if ttl.as_secs() == 0 {
        return Err(ConfigError(format!(
            "invalid value '{ttl:?}' for '--turn-ttl': must be at least 1s"
        )));
    }
    Ok(Some(TurnConfig {
        secrets,
        turn_uris,
        stun_uris,
        ttl,
        rate_limit: NonZeroU32::new(rate_limit),
    }))
}

/// Checks a STUN or TURN URI (RFC 7064, RFC 7065): `scheme:host[:port]`, and for TURN an
/// optional `?transport=udp` or `?transport=tcp`. The host is a name, an IPv4 address or a
/// bracketed IPv6 address; no `//`, user, path or other query.
fn check_ice_uri(uri: &str, schemes: [&str; 2]) -> Result<(), String> {
    let expected = || format!("must start with {}: or {}:", schemes[0], schemes[1]);
    let Some((scheme, rest)) = uri.split_once(':') else {
        return Err(expected());
    };
    if !schemes.contains(&scheme) {
        return Err(expected());
    }
    let turn = scheme.starts_with("turn");
    let (authority, query) = match rest.split_once('?') {
        Some((authority, query)) => (authority, Some(query)),
        None => (rest, None),
    };
    match query {
        None => {}
        Some("transport=udp" | "transport=tcp") if turn => {}
        Some(_) if turn => return Err("the only query is ?transport=udp or ?transport=tcp".into()),
        Some(_) => return Err("a STUN URI has no query".into()),
    }
    if authority.starts_with("//") {
        return Err(format!("no '//' after the scheme: {scheme}:host[:port]"));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let Some((address, after)) = v6.split_once(']') else {
            return Err("an IPv6 address needs its closing ']'".into());
        };
        if address.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("'{address}' is not an IPv6 address"));
        }
        match after {
            "" => (address, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (address, Some(port)),
                None => return Err("expected ':port' after the IPv6 address".into()),
            },
        }
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let name_ok = |h: &str| {
        !h.is_empty()
            && h.len() <= 253
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    };
    if !authority.starts_with('[') && !name_ok(host) {
        return Err(
            "expected a host name or address after the scheme (e.g. turn:turn.example.com:3478)"
                .into(),
        );
    }
    if let Some(port) = port
        && !(port.bytes().all(|b| b.is_ascii_digit()) && port.parse::<u16>().is_ok_and(|p| p > 0))
    {
        return Err(format!("'{port}' is not a port (1-65535)"));
    }
    Ok(())
}

/// Whether `name` can be a NATS subject token and a node or cluster name: 1-64 of
/// `[A-Za-z0-9_-]`.
pub fn is_valid_node_name(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// This machine's name with a random suffix, made a valid node name.
fn default_node_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_default();
    let mut name: String = host
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(48)
        .collect();
    if name.is_empty() {
        name.push_str("node");
    }
    let mut bytes = [0u8; 4];
    // No randomness at start-up: the process id still tells restarts apart.
    if getrandom::fill(&mut bytes).is_err() {
        bytes = std::process::id().to_le_bytes();
    }
    format!("{name}-{:08x}", u32::from_le_bytes(bytes))
}

/// Validates the `--cluster*` flags into a [`ClusterConfig`] (`None` without `--cluster`).
#[allow(clippy::too_many_arguments)]
fn cluster_config(
    urls: Vec<String>,
    name: String,
    node_name: Option<String>,
    creds: Option<PathBuf>,
    user: Option<String>,
    password: Option<String>,
    token: Option<String>,
    tls_ca: Option<PathBuf>,
    (heartbeat, node_timeout, request_timeout): (Duration, Duration, Duration),
    publish_backlog: usize,
) -> Result<Option<ClusterConfig>, ConfigError> {
    let bad = |flag: &str, value: &dyn std::fmt::Display, why: &str| {
        Err(ConfigError(format!(
            "invalid value '{value}' for '--{flag}': {why}"
        )))
    };
    let urls: Vec<String> = urls
        .into_iter()
        .map(|u| u.trim().to_owned())
        .filter(|u| !u.is_empty())
        .collect();
    if urls.is_empty() {
        let set = [
            ("node-name", node_name.is_some()),
            ("cluster-creds", creds.is_some()),
            ("cluster-user", user.is_some()),
            ("cluster-password", password.is_some()),
            ("cluster-token", token.is_some()),
            ("cluster-tls-ca", tls_ca.is_some()),
        ];
        if let Some((flag, _)) = set.iter().find(|(_, set)| *set) {
            return Err(ConfigError(format!(
                "--{flag} needs --cluster (it configures the cluster's NATS connection)"
            )));
        }
        return Ok(None);
    }
    for url in &urls {
        let scheme_ok = ["nats://", "tls://"].iter().any(|s| url.starts_with(s));
        if !scheme_ok || url.parse::<async_nats::ServerAddr>().is_err() {
            return bad(
                "cluster",
                url,
                "expected nats://host:port or tls://host:port",
            );
        }
    }
    if !is_valid_node_name(&name) {
        return bad(
            "cluster-name",
            &name,
            "1-64 letters, digits, '-' or '_' (it is part of NATS subjects)",
        );
    }
    let node_name = match node_name {
        Some(n) if !is_valid_node_name(&n) => {
            return bad(
                "node-name",
                &n,
                "1-64 letters, digits, '-' or '_' (it is part of NATS subjects)",
            );
        }
        Some(n) => n,
        None => default_node_name(),
    };
    let auth = match (creds, user, password, token) {
        (None, None, None, None) => ClusterAuth::None,
        (Some(path), None, None, None) => ClusterAuth::Creds(path),
        (None, Some(user), Some(password), None) if !user.is_empty() => {
            ClusterAuth::UserPassword(user, Secret::new(password.into_bytes()))
        }
        (None, None, None, Some(token)) if !token.is_empty() => {
            ClusterAuth::Token(Secret::new(token.into_bytes()))
        }
        (None, Some(_), None, None) | (None, None, Some(_), None) => {
            return Err(ConfigError(
                "--cluster-user and --cluster-password go together".into(),
            ));
        }
        _ => {
            return Err(ConfigError(
                "give one kind of NATS credentials: --cluster-creds, --cluster-user/--cluster-password or --cluster-token".into(),
            ));
        }
    };
    for (flag, path) in [
        (
            "cluster-creds",
            match &auth {
                ClusterAuth::Creds(path) => Some(path),
                _ => None,
            },
        ),
        ("cluster-tls-ca", tls_ca.as_ref()),
    ] {
        if let Some(path) = path
            && let Err(e) = std::fs::read(path)
        {
            return Err(ConfigError(format!(
                "cannot read --{flag} {}: {e}",
                path.display()
            )));
        }
    }
    if heartbeat < Duration::from_millis(50) {
        return bad(
            "cluster-heartbeat",
            &format!("{heartbeat:?}"),
            "must be at least 50ms",
        );
    }
    if node_timeout < heartbeat * 2 {
        return bad(
            "cluster-node-timeout",
            &format!("{node_timeout:?}"),
            "must be at least twice --cluster-heartbeat (one lost heartbeat must not kill a node)",
        );
    }
    if request_timeout.is_zero() {
        return bad("cluster-request-timeout", &"0", "must be more than 0");
    }
    if publish_backlog < 64 * 1024 {
        return bad(
            "cluster-publish-backlog",
            &publish_backlog,
            "must be at least 65536 bytes",
        );
    }
    Ok(Some(ClusterConfig {
        urls,
        name,
        node_name,
        auth,
        tls_ca,
        heartbeat,
        node_timeout,
        request_timeout,
        publish_backlog,
    }))
}

fn clap_error(e: clap::Error) -> Result<Parsed, ConfigError> {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            Ok(Parsed::Print(e.render().to_string()))
        }
        _ => {
            let text = e.render().to_string();
            let line = text
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("invalid arguments");
            Err(ConfigError(line.trim_start_matches("error: ").to_owned()))
        }
    }
}

/// Finds `--config FILE` / `--config=FILE` in the arguments, else `PEERJSD_CONFIG`.
fn config_file_arg(args: &[OsString]) -> Option<PathBuf> {
    let mut iter = args.iter().skip(1);
    while let Some(arg) = iter.next() {
        let arg = arg.to_string_lossy();
        if arg == "--config" {
            return iter.next().map(PathBuf::from);
        }
        if let Some(path) = arg.strip_prefix("--config=") {
            return Some(PathBuf::from(path));
        }
    }
    std::env::var_os("PEERJSD_CONFIG").map(PathBuf::from)
}

/// Turns the TOML file into clap default values, keyed by argument id.
fn file_defaults(
    text: &str,
    command: &clap::Command,
) -> Result<Vec<(String, Vec<String>)>, String> {
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| e.message().to_owned())?;
    let mut out = Vec::new();
    for (key, value) in table {
        let id = key.replace('-', "_");
        let known = command
            .get_arguments()
            .any(|a| a.get_id() == id.as_str() && a.get_long().is_some() && id != "config");
        if !known {
            return Err(format!("unknown key '{key}'"));
        }
        let values = match value {
            toml::Value::String(s) => vec![s],
            toml::Value::Integer(i) => vec![i.to_string()],
            toml::Value::Boolean(b) => vec![b.to_string()],
            toml::Value::Float(f) => vec![f.to_string()],
            toml::Value::Array(items) => items
                .into_iter()
                .map(|v| match v {
                    toml::Value::String(s) => Ok(s),
                    other => Err(format!("'{key}' must be a list of strings, found {other}")),
                })
                .collect::<Result<_, _>>()?,
            other => return Err(format!("'{key}' has an unsupported value {other}")),
        };
        out.push((id, values));
    }
    Ok(out)
}

/// Parses `5000` (milliseconds, as the reference), `500ms`, `60s`, `5m` or `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("'{s}' is not a duration (use 5000, 500ms, 60s, 5m or 1h)"))?;
    let ms = match unit.trim() {
        "" | "ms" => Some(n),
        "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => return Err(format!("'{s}' has an unknown unit (use ms, s, m or h)")),
    };
    ms.map(Duration::from_millis)
        .ok_or_else(|| format!("'{s}' is too long"))
}

/// What a relayed frame may add to the message it relays (the server's `src`, the envelope)
/// plus what the outbound queue charges per frame.
const OUTBOUND_ENVELOPE: usize = 1024;

/// Normalises a mount path the way the PeerJS client does: leading and trailing `/`.
fn normalise_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len() + 2);
    if !path.starts_with('/') {
        out.push('/');
    }
    out.push_str(path);
    if !out.ends_with('/') {
        out.push('/');
    }
    out
}

impl TryFrom<Cli> for Config {
    type Error = ConfigError;

    fn try_from(cli: Cli) -> Result<Self, ConfigError> {
        let bad = |flag: &str, value: &dyn std::fmt::Display, why: &str| {
            Err(ConfigError(format!(
                "invalid value '{value}' for '--{flag}': {why}"
            )))
        };
        if cli.key.is_empty() {
            return bad("key", &"", "must not be empty");
        }
        if cli.key.len() > crate::protocol::MAX_NAME_LEN {
            return bad(
                "key",
                &cli.key,
                &format!(
                    "at most {} characters (clients cannot send a longer one)",
                    crate::protocol::MAX_NAME_LEN
                ),
            );
        }
        if cli.path.contains(['?', '#']) || cli.path.chars().any(char::is_whitespace) {
            return bad("path", &cli.path, "must be a plain URL path");
        }
        if cli.alive_timeout.is_zero() {
            return bad("alive-timeout", &"0", "must be more than 0");
        }
        if cli.expire_timeout.is_zero() {
            return bad("expire-timeout", &"0", "must be more than 0");
        }
        if cli.concurrent_limit == 0 {
            return bad("concurrent-limit", &"0", "must be at least 1");
        }
        if cli.rooms == RoomMode::Token && cli.max_room_peers < 2 {
            return bad(
                "max-room-peers",
                &cli.max_room_peers,
                "a room needs at least 2 peers",
            );
        }
        if cli.max_message_size < 1024 {
            return bad(
                "max-message-size",
                &cli.max_message_size,
                "must be at least 1024 bytes",
            );
        }
        if cli.outbound_queue == 0 {
            return bad("outbound-queue", &"0", "must be at least 1");
        }
        if cli.max_queue_per_peer == 0 {
            return bad("max-queue-per-peer", &"0", "must be at least 1");
        }
        if cli.max_queue_per_sender == 0 {
            return bad("max-queue-per-sender", &"0", "must be at least 1");
        }
        // A relayed frame is the inbound message plus the envelope the server writes.
        let largest_frame = cli.max_message_size + OUTBOUND_ENVELOPE;
        if cli.max_outbound_bytes < largest_frame {
            return bad(
                "max-outbound-bytes",
                &cli.max_outbound_bytes,
                &format!(
                    "must hold the largest message: at least --max-message-size + {OUTBOUND_ENVELOPE} ({largest_frame})"
                ),
            );
        }
        if cli.max_outbound_total < cli.max_outbound_bytes {
            return bad(
                "max-outbound-total",
                &cli.max_outbound_total,
                "must be at least --max-outbound-bytes",
            );
        }
        if cli.handshake_timeout.is_zero() {
            return bad("handshake-timeout", &"0", "must be more than 0");
        }
        if cli.max_handshakes == 0 {
            return bad("max-handshakes", &"0", "must be at least 1");
        }
        if cli.write_timeout.is_zero() {
            return bad("write-timeout", &"0", "must be more than 0");
        }
        if cli.probe_timeout.is_zero() {
            return bad("probe-timeout", &"0", "must be more than 0");
        }
        for origin in &cli.cors {
            if origin.is_empty() || origin.contains(char::is_whitespace) || origin.ends_with('/') {
                return bad(
                    "cors",
                    origin,
                    "an origin is scheme://host[:port] with no trailing slash",
                );
            }
        }
        let tls = match (cli.sslkey, cli.sslcert) {
            (Some(key), Some(cert)) => Some(TlsPaths { key, cert }),
            (None, None) => None,
            (Some(_), None) => return Err(ConfigError("--sslkey needs --sslcert".into())),
            (None, Some(_)) => return Err(ConfigError("--sslcert needs --sslkey".into())),
        };
        let auth_secrets = secrets(
            "auth-secret",
            cli.auth_secret,
            cli.auth_secret_previous,
            cli.auth_secret_file.as_deref(),
        )?;
        for (flag, value) in [
            ("auth-issuer", &cli.auth_issuer),
            ("auth-audience", &cli.auth_audience),
        ] {
            match value {
                Some(v) if v.is_empty() => return bad(flag, &"", "must not be empty"),
                Some(_) if auth_secrets.is_empty() => {
                    return Err(ConfigError(format!(
                        "--{flag} needs --auth-secret (tokens are only checked with a secret)"
                    )));
                }
                _ => {}
            }
        }
        let auth = (!auth_secrets.is_empty()).then_some(AuthConfig {
            secrets: auth_secrets,
            issuer: cli.auth_issuer,
            audience: cli.auth_audience,
        });
        let id_secrets = secrets(
            "id-secret",
            cli.id_secret,
            None,
            cli.id_secret_file.as_deref(),
        )?;
        if !id_secrets.is_empty() && !cli.issued_ids_only {
            return Err(ConfigError(
                "--id-secret needs --issued-ids-only (it keys the issued ids)".into(),
            ));
        }
        let turn = turn_config(
            secrets(
                "turn-secret",
                cli.turn_secret,
                cli.turn_secret_previous,
                cli.turn_secret_file.as_deref(),
            )?,
            cli.turn_uri,
            cli.stun_uri,
            cli.turn_ttl,
            cli.ice_rate_limit,
        )?;
        let cluster = cluster_config(
            cli.cluster,
            cli.cluster_name,
            cli.node_name,
            cli.cluster_creds,
            cli.cluster_user,
            cli.cluster_password,
            cli.cluster_token,
            cli.cluster_tls_ca,
            (
                cli.cluster_heartbeat,
                cli.cluster_node_timeout,
                cli.cluster_request_timeout,
            ),
            cli.cluster_publish_backlog,
        )?;
        let room_mode = cli.rooms == RoomMode::Token;
        Ok(Config {
            port: cli.port,
            host: cli.host,
            path: normalise_path(&cli.path),
            key: cli.key,
            expire_timeout: cli.expire_timeout,
            alive_timeout: cli.alive_timeout,
            concurrent_limit: cli.concurrent_limit,
            allow_discovery: cli.allow_discovery,
            proxied: cli.proxied,
            cors: cli.cors,
            tls,
            rooms: cli.rooms,
            max_room_peers: if room_mode {
                cli.max_room_peers
            } else {
                usize::MAX
            },
            announce_leave: cli.announce_leave.unwrap_or(room_mode),
            rate_limit: NonZeroU32::new(cli.rate_limit),
            rate_limit_grace: cli.rate_limit_grace,
            max_message_size: cli.max_message_size,
            max_connections_per_ip: (cli.max_connections_per_ip > 0)
                .then_some(cli.max_connections_per_ip),
            handshake_timeout: cli.handshake_timeout,
            max_tcp_per_ip: (cli.max_tcp_per_ip > 0).then_some(cli.max_tcp_per_ip),
            max_handshakes: cli.max_handshakes,
            max_handshakes_per_ip: (cli.max_handshakes_per_ip > 0)
                .then_some(cli.max_handshakes_per_ip),
            ipv6_prefix: cli.ipv6_prefix,
            max_queue_per_peer: cli.max_queue_per_peer,
            max_queued_bytes: cli.max_queued_bytes,
            max_queue_per_sender: cli.max_queue_per_sender,
            max_queued_bytes_per_sender: cli.max_queued_bytes_per_sender,
            max_queued_bytes_per_ip: cli.max_queued_bytes_per_ip,
            outbound_queue: cli.outbound_queue,
            max_outbound_bytes: cli.max_outbound_bytes,
            max_outbound_total: cli.max_outbound_total,
            write_timeout: cli.write_timeout,
            probe_timeout: cli.probe_timeout,
            shutdown_timeout: cli.shutdown_timeout,
            log_format: cli.log_format,
            metrics_public: cli.metrics_public,
            metrics_addr: cli.metrics_addr,
            auth,
            issued_ids_only: cli.issued_ids_only,
            id_secrets,
            turn,
            cluster,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Config, String> {
        match Config::from_args(std::iter::once("peerjsd").chain(args.iter().copied())) {
            Ok(Parsed::Run(c)) => Ok(*c),
            Ok(Parsed::Print(_)) => Err("printed".into()),
            Ok(Parsed::Token(_)) => Err("token".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5000"), Ok(Duration::from_millis(5000)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert!(parse_duration("5 days").is_err());
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn reference_flag_names_work() {
        let c = run(&[
            "--port",
            "9001",
            "--path",
            "/myapp",
            "--key",
            "k",
            "--expire_timeout",
            "5000",
            "--alive_timeout",
            "60000",
            "--concurrent_limit",
            "5000",
            "--allow_discovery",
        ])
        .unwrap();
        assert_eq!(c.port, 9001);
        assert_eq!(c.path, "/myapp/");
        assert_eq!(c.ws_path(), "/myapp/peerjs");
        assert_eq!(c.key, "k");
        assert_eq!(c.concurrent_limit, 5000);
        assert!(c.allow_discovery);
        let c = run(&[
            "-p", "1", "-k", "x", "-t", "1s", "-c", "3", "--cors", "http://a", "--cors", "http://b",
        ])
        .unwrap();
        assert_eq!((c.port, c.key.as_str(), c.concurrent_limit), (1, "x", 3));
        assert_eq!(c.expire_timeout, Duration::from_secs(1));
        assert_eq!(c.cors, ["http://a", "http://b"]);
    }

    #[test]
    fn connection_limits_take_zero_as_off() {
        let c = Config::default();
        assert_eq!(c.max_tcp_per_ip, Some(512));
        assert_eq!(c.max_handshakes_per_ip, Some(32));
        assert_eq!((c.max_handshakes, c.ipv6_prefix), (1024, 64));
        assert!(c.metrics_public);
        let c = run(&[
            "--max-tcp-per-ip",
            "0",
            "--max-handshakes-per-ip",
            "0",
            "--ipv6-prefix",
            "48",
            "--metrics-public",
            "false",
        ])
        .unwrap();
        assert_eq!((c.max_tcp_per_ip, c.max_handshakes_per_ip), (None, None));
        assert_eq!(c.ipv6_prefix, 48);
        assert!(!c.metrics_public);
    }

    #[test]
    fn defaults_follow_the_mode() {
        let c = Config::default();
        assert_eq!(
            (c.port, c.path.as_str(), c.key.as_str()),
            (9000, "/", "peerjs")
        );
        assert_eq!(c.alive_timeout, Duration::from_secs(60));
        assert!(!c.announce_leave);
        assert_eq!(c.max_room_peers, usize::MAX);
        let c = run(&["--rooms", "token"]).unwrap();
        assert!(c.announce_leave);
        assert_eq!(c.max_room_peers, 4);
        let c = run(&["--rooms", "token", "--announce-leave", "false"]).unwrap();
        assert!(!c.announce_leave);
    }

    #[test]
    fn bad_values_give_one_line_naming_the_flag() {
        let e = run(&["--port", "nine"]).unwrap_err();
        assert!(
            e.contains("--port") && e.contains("nine") && !e.contains('\n'),
            "{e}"
        );
        let e = run(&["--alive-timeout", "soon"]).unwrap_err();
        assert!(e.contains("--alive-timeout") && e.contains("soon"), "{e}");
        let e = run(&["--sslkey", "k.pem"]).unwrap_err();
        assert!(e.contains("--sslcert"), "{e}");
        let e = run(&["--rooms", "token", "--max-room-peers", "1"]).unwrap_err();
        assert!(e.contains("--max-room-peers"), "{e}");
        let e = run(&["--key", &"k".repeat(65)]).unwrap_err();
        assert!(e.contains("--key") && e.contains("at most 64"), "{e}");
        assert_eq!(run(&["--key", &"k".repeat(64)]).unwrap().key.len(), 64);
        let e = run(&["--ipv6-prefix", "129"]).unwrap_err();
        assert!(e.contains("--ipv6-prefix") && !e.contains('\n'), "{e}");
        let e = run(&["--max-handshakes", "0"]).unwrap_err();
        assert!(e.contains("--max-handshakes"), "{e}");
        let e = run(&["--max-outbound-total", "1048576"]).unwrap_err();
        assert!(
            e.contains("--max-outbound-total") && e.contains("--max-outbound-bytes"),
            "{e}"
        );
    }

    #[test]
    fn auth_secrets_come_from_flags_or_a_file_and_never_print() {
        let new = "n".repeat(32);
        let old = "o".repeat(40);
        let c = run(&["--auth-secret", &new, "--auth-secret-previous", &old]).unwrap();
        let auth = c.auth.as_ref().unwrap();
        assert_eq!(
            auth.secrets,
            [Secret::new(new.as_bytes()), Secret::new(old.as_bytes())]
        );
        assert!(!format!("{c:?}").contains(&new), "{c:?}");
        assert!(Config::default().auth.is_none());

        let dir = std::env::temp_dir().join(format!("peerjsd-secrets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("secret");
        std::fs::write(&file, format!("{new}\n\n{old}\n")).unwrap();
        let f = file.to_str().unwrap();
        let c = run(&["--auth-secret-file", f, "--auth-issuer", "https://app"]).unwrap();
        let auth = c.auth.unwrap();
        assert_eq!(auth.secrets.len(), 2);
        assert_eq!(auth.issuer.as_deref(), Some("https://app"));
        std::fs::write(&file, "a\nb\nc\n").unwrap();
        assert!(
            run(&["--auth-secret-file", f])
                .unwrap_err()
                .contains("one or two lines")
        );
        std::fs::write(&file, "too short\n").unwrap();
        let e = run(&["--auth-secret-file", f]).unwrap_err();
        assert!(e.contains("at least 32") && !e.contains("too short"), "{e}");
        let e = run(&["--auth-secret-file", f, "--auth-secret", &new]).unwrap_err();
        assert!(e.contains("exclusive"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();

        for (args, needle) in [
            (vec!["--auth-secret", "short"], "at least 32"),
            (vec!["--auth-secret-previous", &old], "needs --auth-secret"),
            (vec!["--auth-issuer", "x"], "needs --auth-secret"),
            (vec!["--auth-audience", "x"], "needs --auth-secret"),
            (vec!["--id-secret", &new], "needs --issued-ids-only"),
            (
                vec!["--issued-ids-only", "--id-secret", "short"],
                "at least 32",
            ),
            (
                vec!["--auth-secret-file", "/nonexistent/peerjsd"],
                "cannot read",
            ),
        ] {
            let e = run(&args).unwrap_err();
            assert!(e.contains(needle) && !e.contains('\n'), "{args:?}: {e}");
        }
        let c = run(&["--issued-ids-only", "--id-secret", &new]).unwrap();
        assert!(c.issued_ids_only);
        assert_eq!(c.id_secrets, [Secret::new(new.as_bytes())]);
    }

    #[test]
    fn turn_needs_a_secret_and_uris_and_checks_them() {
        let new = "n".repeat(32);
        let old = "o".repeat(32);
        assert!(Config::default().turn.is_none());
        let c = run(&[
            "--turn-secret",
            &new,
            "--turn-secret-previous",
            &old,
            "--turn-uri",
            "turn:turn.example.com:3478",
            "--turn-uri",
            "turns:turn.example.com:5349?transport=tcp",
            "--stun-uri",
            "stun:[2001:db8::1]:3478",
        ])
        .unwrap();
        let turn = c.turn.as_ref().unwrap();
        assert_eq!(
            turn.secrets,
            [Secret::new(new.as_bytes()), Secret::new(old.as_bytes())]
        );
        assert_eq!(
            turn.turn_uris,
            [
                "turn:turn.example.com:3478",
                "turns:turn.example.com:5349?transport=tcp"
            ]
        );
        assert_eq!(turn.stun_uris, ["stun:[2001:db8::1]:3478"]);
        assert_eq!(turn.ttl, Duration::from_secs(24 * 3600));
        assert_eq!(turn.rate_limit, NonZeroU32::new(60));
        assert!(!format!("{c:?}").contains(&new), "{c:?}");
        let c = run(&[
            "--turn-secret",
            &new,
            "--turn-uri",
            "turn:10.0.0.1?transport=udp",
            "--turn-ttl",
            "1h",
            "--ice-rate-limit",
            "0",
        ])
        .unwrap();
        let turn = c.turn.unwrap();
        assert_eq!(turn.ttl, Duration::from_secs(3600));
        assert_eq!(turn.rate_limit, None);

        let uri = |u: &str| ["--turn-secret", &new, "--turn-uri", u].map(String::from);
        for (args, needle) in [
            (
                vec!["--turn-uri".into(), "turn:a:1".into()],
                "--turn-uri needs --turn-secret",
            ),
            (
                vec!["--stun-uri".into(), "stun:a".into()],
                "--stun-uri needs --turn-secret",
            ),
            (
                vec!["--turn-secret".into(), new.clone()],
                "at least one --turn-uri",
            ),
            (vec!["--turn-secret".into(), "short".into()], "at least 32"),
            (
                vec!["--turn-secret-previous".into(), old.clone()],
                "needs --turn-secret",
            ),
            (
                uri("stun:a:3478").to_vec(),
                "must start with turn: or turns:",
            ),
            (uri("turn://a:3478").to_vec(), "no '//'"),
            (uri("turn:a:0").to_vec(), "not a port"),
            (uri("turn:a:+80").to_vec(), "not a port"),
            (uri("turn:a:70000").to_vec(), "not a port"),
            (uri("turn:").to_vec(), "expected a host"),
            (uri("turn:user@a").to_vec(), "expected a host"),
            (uri("turn:a/path").to_vec(), "expected a host"),
            (
                uri("turn:a?transport=sctp").to_vec(),
                "?transport=udp or ?transport=tcp",
            ),
            (uri("turn:[::1").to_vec(), "closing ']'"),
            (uri("turn:[nope]:3478").to_vec(), "not an IPv6 address"),
            (
                [
                    uri("turn:a").as_slice(),
                    &["--stun-uri".into(), "stun:a?x=1".into()],
                ]
                .concat(),
                "a STUN URI has no query",
            ),
            (
                [
                    uri("turn:a").as_slice(),
                    &["--stun-uri".into(), "turn:a".into()],
                ]
                .concat(),
                "must start with stun: or stuns:",
            ),
            (
                [uri("turn:a").as_slice(), &["--turn-ttl".into(), "0".into()]].concat(),
                "--turn-ttl",
            ),
        ] {
            let e = run(&args.iter().map(String::as_str).collect::<Vec<_>>()).unwrap_err();
            assert!(e.contains(needle) && !e.contains('\n'), "{args:?}: {e}");
            assert!(!e.contains(&new), "a secret was echoed: {e}");
        }
        // The URI flags name themselves in their error.
        let e = run(&uri("turn:a:0")
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>())
        .unwrap_err();
        assert!(
            e.starts_with("invalid value 'turn:a:0' for '--turn-uri'"),
            "{e}"
        );
    }

    #[test]
    fn cluster_flags_are_checked_and_need_cluster() {
        let c = run(&[
            "--cluster",
            "nats://a:4222,nats://b:4222",
            "--node-name",
            "eu-1",
            "--cluster-user",
            "u",
            "--cluster-password",
            "p",
        ])
        .unwrap();
        let cluster = c.cluster.unwrap();
        assert_eq!(cluster.urls, ["nats://a:4222", "nats://b:4222"]);
        assert_eq!(cluster.node_name, "eu-1");
        assert_eq!(cluster.node_timeout, Duration::from_secs(3));
        assert!(matches!(cluster.auth, ClusterAuth::UserPassword(..)));
        assert!(!format!("{cluster:?}").contains("\"p\""));
        let generated = run(&["--cluster", "nats://a:4222"])
            .unwrap()
            .cluster
            .unwrap();
        assert!(
            is_valid_node_name(&generated.node_name),
            "{}",
            generated.node_name
        );
        assert!(Config::default().cluster.is_none());
        for (args, needle) in [
            (vec!["--node-name", "x"], "needs --cluster"),
            (vec!["--cluster-token", "x"], "needs --cluster"),
            (vec!["--cluster", "http://a:1"], "--cluster"),
            (
                vec!["--cluster", "nats://a:1", "--node-name", "a.b"],
                "--node-name",
            ),
            (
                vec!["--cluster", "nats://a:1", "--cluster-name", "a b"],
                "--cluster-name",
            ),
            (
                vec!["--cluster", "nats://a:1", "--cluster-user", "u"],
                "go together",
            ),
            (
                vec![
                    "--cluster",
                    "nats://a:1",
                    "--cluster-token",
                    "t",
                    "--cluster-user",
                    "u",
                    "--cluster-password",
                    "p",
                ],
                "one kind",
            ),
            (
                vec![
                    "--cluster",
                    "nats://a:1",
                    "--cluster-heartbeat",
                    "1s",
                    "--cluster-node-timeout",
                    "1500ms",
                ],
                "--cluster-node-timeout",
            ),
            (
                vec![
                    "--cluster",
                    "nats://a:1",
                    "--cluster-creds",
                    "/nonexistent/x.creds",
                ],
                "cannot read",
            ),
            (
                vec!["--cluster", "nats://a:1", "--cluster-publish-backlog", "10"],
                "--cluster-publish-backlog",
            ),
        ] {
            let e = run(&args).unwrap_err();
            assert!(e.contains(needle) && !e.contains('\n'), "{args:?}: {e}");
        }
    }

    #[test]
    fn config_file_is_below_flags() {
        let dir = std::env::temp_dir().join(format!("peerjsd-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("peerjsd.toml");
        std::fs::write(&file, "port = 9100\nkey = \"fromfile\"\nalive-timeout = \"30s\"\ncors = [\"http://x\"]\nallow-discovery = true\n").unwrap();
        let f = file.to_str().unwrap();
        let c = run(&["--config", f, "--key", "fromflag"]).unwrap();
        assert_eq!(c.port, 9100);
        assert_eq!(c.key, "fromflag");
        assert_eq!(c.alive_timeout, Duration::from_secs(30));
        assert_eq!(c.cors, ["http://x"]);
        assert!(c.allow_discovery);
        std::fs::write(&file, "prot = 1\n").unwrap();
        let e = run(&["--config", f]).unwrap_err();
        assert!(e.contains("unknown key 'prot'"), "{e}");
        std::fs::write(&file, "port = \"x\"\n").unwrap();
        let e = run(&["--config", f]).unwrap_err();
        assert!(e.contains("--port"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
