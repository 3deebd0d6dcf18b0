//! What an idle peer costs in the server's own memory. Most of it is the session task, whose
//! size is fixed at compile time: a local held across an `.await` in the session loop is
//! carried by every idle peer, so this pins the size (README: RSS per idle peer).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

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
