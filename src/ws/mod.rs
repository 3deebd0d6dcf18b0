//! The signaling WebSocket: the HTTP upgrade ([`upgrade`]) and the per-socket task
//! ([`session`]).

pub mod read_ahead;
pub mod session;
pub mod upgrade;

use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::config::Config;

/// Read buffer per socket. Signaling frames are a few hundred bytes; tungstenite's default
/// (128 KiB, zero-filled on first read) would cost every idle peer ~136 KB.
pub const READ_BUFFER: usize = 512;

/// Bytes buffered before a write is forced; the session flushes once per batch anyway.
pub const WRITE_BUFFER: usize = 16 * 1024;

/// The WebSocket settings for a server socket under `config`.
pub fn socket_config(config: &Config) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        // Room for one batch plus one frame; past it, writes fail and the peer is closed.
        .max_write_buffer_size(WRITE_BUFFER + 2 * config.max_message_size)
        .max_message_size(Some(config.max_message_size))
        .max_frame_size(Some(config.max_message_size))
}
