//! What an idle peer costs in the server's own memory. Most of it is its connection's task,
//! whose size is fixed at compile time: a local held across an `.await` in the session loop
//! (or an argument of the connection future) is carried by every idle peer, so this pins the
//! size (README: RSS per idle peer).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use peerjsd::http::{Connection, router};
use peerjsd::protocol::ConnectParams;
use peerjsd::ws::read_ahead::ReadAhead;
use peerjsd::ws::session::{self, Origin};
use peerjsd::{Config, Shared};

/// The session future's size in this build, plus a little room for compiler changes. At
/// 1,064 bytes (a frame slot held across the await) idle peers measured 0.14 kB more RSS each.
const MAX_SESSION_TASK_BYTES: usize = 1000;

#[tokio::test]
async fn an_idle_session_task_stays_small() {
    let shared = Arc::new(Shared::new(Config::default()));
    let (_client, server_io) = tokio::io::duplex(1024);
    let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let guard = shared.admit_ip(ip).expect("ip");
    let params = ConnectParams {
        id: "idle".into(),
        token: "t".into(),
        key: "peerjs".into(),
    };
    let session = session::run(
        ReadAhead::new(server_io),
        params,
        Arc::clone(&shared),
        Origin { ip, guard },
    );
    let size = std::mem::size_of_val(&session);
    assert!(
        size <= MAX_SESSION_TASK_BYTES,
        "the session future is {size} bytes (limit {MAX_SESSION_TASK_BYTES}): \
         is something new held across an await in the session loop?"
    );
}

/// The connection task runs the session inline after the handshake: it may hold little more.
const MAX_CONNECTION_TASK_BYTES: usize = MAX_SESSION_TASK_BYTES + 64;

#[tokio::test]
async fn a_connection_task_is_about_its_session() {
    let shared = Arc::new(Shared::new(Config::default()));
    let (_client, server_io) = tokio::io::duplex(1024);
    let peer = "127.0.0.1:5000".parse().unwrap();
    let admitted = shared.gate.admit(peer).expect("admitted");
    let conn = Connection {
        peer,
        shared: Arc::clone(&shared),
        router: router(Arc::clone(&shared)),
        signaling: true,
    };
    let task = conn.serve(server_io, admitted.handshake);
    let size = std::mem::size_of_val(&task);
    assert!(
        size <= MAX_CONNECTION_TASK_BYTES,
        "the connection future is {size} bytes (limit {MAX_CONNECTION_TASK_BYTES}): is an \
         argument or a handshake local kept for the connection's life?"
    );
}
