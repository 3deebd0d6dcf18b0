//! The `peerjsd` binary: parse the configuration, set up logging, bind, run, exit.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;

use peerjsd::config::{LogFormat, Parsed};
use peerjsd::{Config, Server};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let config = match Config::from_args(std::env::args_os()) {
        Ok(Parsed::Run(config)) => *config,
        Ok(Parsed::Print(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            eprintln!("peerjsd: error: {error}");
            return ExitCode::from(2);
        }
    };
    init_logging(config.log_format);
    raise_fd_limit();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("peerjsd: error: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(serve(config))
}

async fn serve(config: Config) -> ExitCode {
    let listener = match bind(&config).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!(
                "peerjsd: error: cannot listen on [{}]:{}: {error}",
                config.host, config.port
            );
            tracing::error!(%error, host = %config.host, port = config.port, "cannot listen");
            return ExitCode::FAILURE;
        }
    };
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    tracing::info!(
        addr = %addr,
        path = %config.path,
        rooms = if config.rooms == peerjsd::config::RoomMode::Token { "token" } else { "global" },
        version = env!("CARGO_PKG_VERSION"),
        "listening"
    );
    match Server::new(config).run(listener, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "shutdown incomplete");
            ExitCode::FAILURE
        }
    }
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

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
        LogFormat::Text => builder.init(),
    }
}

/// Each socket is a file descriptor: raise the soft limit to the hard one.
fn raise_fd_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open file limit"),
        Err(error) => tracing::warn!(%error, "cannot raise the open file limit"),
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
