//! The `peerjsd` binary: parse the configuration, set up logging, bind, run, exit; or, as
//! `peerjsd token`, print a join token signed with the configured secret.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;

use peerjsd::auth::TokenVerifier;
use peerjsd::config::{Parsed, RoomMode, TokenRequest};
use peerjsd::{Config, Server};
use sd_notify::NotifyState;
use tokio::net::TcpListener;

fn main() -> ExitCode {
    let config = match Config::from_args(std::env::args_os()) {
        Ok(Parsed::Run(config)) => *config,
        Ok(Parsed::Print(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Ok(Parsed::Token(request)) => return print_token(&request),
        Err(error) => {
            eprintln!("peerjsd: error: {error}");
            return ExitCode::from(2);
        }
    };
    // Dropped last, after the runtime: the shutdown lines are written out.
    let _logs = peerjsd::logging::init(config.log_format);
    raise_fd_limit();
    let runtime = match build_runtime() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("peerjsd: error: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(serve(config))
}

/// `peerjsd token --sub ID [--room R] [--ttl 1h]`: prints a token signed with the configured
/// secret (and the configured issuer and audience), valid from now for `--ttl`.
fn print_token(request: &TokenRequest) -> ExitCode {
    let Some(auth) = &request.config.auth else {
        eprintln!("peerjsd: error: no --auth-secret configured");
        return ExitCode::from(2);
    };
    let verifier = TokenVerifier::new(
        &auth.secrets,
        auth.issuer.as_deref(),
        auth.audience.as_deref(),
    );
    let claims = verifier.claims_for(
        &request.sub,
        request.room.as_deref(),
        verifier.now(),
        request.ttl,
    );
    match verifier.mint(&claims) {
        Some(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        None => {
            eprintln!("peerjsd: error: cannot sign a token with the configured secret");
            ExitCode::FAILURE
        }
    }
}

/// One core (e.g. `taskset`, a 1-CPU container or VM): a single-threaded runtime, which skips
/// the work-stealing scheduler's cross-thread bookkeeping. More cores: one worker per core.
fn build_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cores)
            .enable_all()
            .build()
    }
}

async fn serve(config: Config) -> ExitCode {
    let signal = shutdown_signal();
    // TLS files are configuration: a bad one is reported like a bad flag (exit 2).
    let server = match Server::new(config.clone()) {
        Ok(server) => server,
        Err(error) => {
            eprintln!("peerjsd: error: {error}");
            return ExitCode::from(2);
        }
    };
    let listener = match bind(&config).await {
        Ok(listener) => listener,
        Err(error) => return cannot_listen(&format!("[{}]:{}", config.host, config.port), &error),
    };
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    tracing::info!(
        addr = %addr,
        path = %config.path,
        rooms = if config.rooms == RoomMode::Token { "token" } else { "global" },
        tls = config.tls.is_some(),
        auth = config.auth.is_some(),
        issued_ids_only = config.issued_ids_only,
        turn = config.turn.is_some(),
        version = env!("CARGO_PKG_VERSION"),
        "listening"
    );
    if config.issued_ids_only && config.id_secrets.is_empty() && config.auth.is_none() {
        tracing::warn!(
            "issued ids are keyed at random: they stop working after a restart and on other nodes; set --id-secret"
        );
    }
    let server = match config.metrics_addr {
        None => server,
        Some(wanted) => match TcpListener::bind(wanted).await {
            Ok(metrics) => {
                let bound = metrics
                    .local_addr()
                    .map(|a| a.to_string())
                    .unwrap_or_default();
                tracing::info!(addr = %bound, "metrics listening");
                server.with_metrics_listener(metrics)
            }
            Err(error) => return cannot_listen(&wanted.to_string(), &error),
        },
    };
    // systemd (Type=notify): ready once the socket is bound. A no-op without NOTIFY_SOCKET.
    let status = format!("STATUS=listening on {addr}");
    let _ = sd_notify::notify(&[NotifyState::Ready, NotifyState::Custom(&status)]);
    let shutdown = async {
        signal.await;
        let _ = sd_notify::notify(&[
            NotifyState::Stopping,
            NotifyState::Custom("STATUS=draining"),
        ]);
    };
    match server.run(listener, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "shutdown incomplete");
            ExitCode::FAILURE
        }
    }
}

fn cannot_listen(addr: &str, error: &std::io::Error) -> ExitCode {
    eprintln!("peerjsd: error: cannot listen on {addr}: {error}");
    tracing::error!(%error, addr, "cannot listen");
    ExitCode::FAILURE
}

/// Binds the configured address. The default `::` also takes IPv4; on a host without IPv6
/// it falls back to `0.0.0.0`.
async fn bind(config: &Config) -> std::io::Result<TcpListener> {
    let addr = SocketAddr::new(config.host, config.port);
    match TcpListener::bind(addr).await {
        Err(error) if config.host.is_unspecified() && config.host.is_ipv6() => {
            tracing::warn!(%error, "cannot bind [::]; falling back to 0.0.0.0");
            TcpListener::bind(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), config.port)).await
        }
        other => other,
    }
}

/// Each socket is a file descriptor: raise the soft limit to the hard one.
fn raise_fd_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open file limit"),
        Err(error) => tracing::warn!(%error, "cannot raise the open file limit"),
    }
}

/// Registers SIGTERM and SIGINT handlers now (before the server reports ready, so an early
/// signal drains instead of killing) and returns a future that resolves on either.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let terminate = signal(SignalKind::terminate());
    let interrupt = signal(SignalKind::interrupt());
    async move {
        match (terminate, interrupt) {
            (Ok(mut terminate), Ok(mut interrupt)) => {
                tokio::select! {
                    _ = terminate.recv() => {}
                    _ = interrupt.recv() => {}
                }
            }
            _ => {
                tracing::warn!("cannot install signal handlers; stop with SIGKILL");
                std::future::pending::<()>().await;
            }
        }
    }
}
