//! Shared pieces of the peerjsd benchmark harness.
//!
//! Layout:
//! - [`jwt`]: HS256 join tokens for a peerjsd started with `--auth-secret`.
//! - [`msg`]: PeerJS-shaped messages (what the peerjs 1.5.x browser client sends), built from
//!   templates with a sequence number and a send timestamp embedded in `connectionId`, and a
//!   cheap scanner that reads them back from what a server relays.
//! - [`procfs`]: CPU time (utime+stime) and VmRSS of a process, read from `/proc`.
//! - [`report`]: the JSON line the load generator prints and the driver reads.
//! - [`rng`]: a tiny xorshift generator for PeerJS-like tokens (no crypto needed).
//!
//! Binaries: `peerjsd-bench` (the driver, `src/main.rs`), `loadgen` (the load generator) and
//! `floor` (the minimal relay used as a speed floor).

pub mod jwt;
pub mod msg;
pub mod procfs;
pub mod report;
pub mod rng;
