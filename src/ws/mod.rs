//! The signaling WebSocket: the HTTP upgrade ([`upgrade`]) and the per-socket task
//! ([`session`]).

pub mod read_ahead;
pub mod session;
pub mod upgrade;

use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::config::Config;

/// Read buffer per socket. Signaling frames are a few hundred bytes; tungstenite's default
/// (128 KiB, zero-filled on the first read) would be resident for every idle peer.
pub const READ_BUFFER: usize = 512;

/// Bytes buffered before a write is forced; the session flushes once per batch anyway.
pub const WRITE_BUFFER: usize = 16 * 1024;

/// Most bytes the WebSocket may buffer for writing: the session hands it one piece of at
/// most 16 KiB at a time (large frames go in fragments) and waits for it to drain past
/// [`WRITE_BUFFER`], so this only needs room for a piece, a pong and a close frame.
pub const MAX_WRITE_BUFFER: usize = 4 * WRITE_BUFFER;

/// The WebSocket settings for a server socket under `config`.
pub fn socket_config(config: &Config) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(MAX_WRITE_BUFFER)
        .max_message_size(Some(config.max_message_size))
        .max_frame_size(Some(config.max_message_size))
}
