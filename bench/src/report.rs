//! What one load generator run reports (one JSON line on stdout), read by the driver.

use serde::{Deserialize, Serialize};

/// The result of one scenario against one server process.
///
/// Every figure is taken over the measurement window (after warm-up) unless its name says
/// otherwise. CPU seconds are `utime + stime` deltas from `/proc/<pid>/stat`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LoadReport {
    pub scenario: String,
    /// Set when the run could not complete (connection refused, server error frame, timeout).
    pub error: Option<String>,
    /// Length of the measurement window, seconds.
    pub wall_s: f64,
    /// Server CPU seconds used in the window.
    pub server_cpu_s: f64,
    /// Load generator CPU seconds used in the window.
    pub loadgen_cpu_s: f64,
    /// CPU seconds the rest of the machine (other processes, interrupts) used in the window:
    /// busy time of all cores from `/proc/stat` minus server and load generator. A noise
    /// indicator: this machine is shared.
    pub other_cpu_s: f64,
    /// Steal time of all cores in the window (a virtual machine's host taking the CPU).
    pub steal_s: f64,
    /// What `units` counts: "msg" (relayed messages received), "conn" (connections completed),
    /// "room" (rooms completed) or "heartbeat" (heartbeats sent while holding idle peers).
    pub unit: String,
    /// Units completed in the window.
    pub units: u64,
    /// One-way latency of relayed messages received in the window, microseconds.
    pub lat_p50_us: Option<f64>,
    pub lat_p90_us: Option<f64>,
    pub lat_p99_us: Option<f64>,
    pub lat_max_us: Option<f64>,
    /// Relayed messages sent / received over the whole run (warm-up and drain included).
    pub sent: u64,
    pub received: u64,
    /// `sent - received` after the drain period.
    pub lost: u64,
    /// Messages that arrived with a sequence number other than the next expected one on their
    /// (src, dst) stream, or from the wrong `src`.
    pub reordered: u64,
    /// Frames the scanner could not read, and unexpected ERROR/ID-TAKEN frames.
    pub malformed: u64,
    /// Peers that failed to connect or were disconnected during the run.
    pub peer_failures: u64,
    /// Idle/hold scenarios: peers held, connect ramp rate, server CPU spent on the ramp.
    pub peers: Option<u64>,
    pub connect_per_s: Option<f64>,
    pub ramp_server_cpu_s: Option<f64>,
    /// VmRSS of the server before any connection and after holding the peers, KiB.
    pub rss_before_kib: Option<u64>,
    pub rss_after_kib: Option<u64>,
    /// Free-form remarks (e.g. "drain timed out").
    pub notes: Vec<String>,
}

impl LoadReport {
    /// Server CPU as a fraction of one core over the window.
    pub fn server_cpu_frac(&self) -> f64 {
        frac(self.server_cpu_s, self.wall_s)
    }

    /// Load generator CPU as a fraction of one core over the window.
    pub fn loadgen_cpu_frac(&self) -> f64 {
        frac(self.loadgen_cpu_s, self.wall_s)
    }

    /// Units per second of wall time.
    pub fn rate(&self) -> f64 {
        frac(self.units as f64, self.wall_s)
    }

    /// Server CPU microseconds per unit.
    pub fn server_us_per_unit(&self) -> Option<f64> {
        (self.units > 0).then(|| self.server_cpu_s * 1e6 / self.units as f64)
    }

    /// Which side limited the throughput: "server" when the server used ≥ 90 % of its core,
    /// "loadgen" when the load generator did while the server did not, "both", else
    /// "neither" (latency-bound, or preempted by other processes).
    pub fn bound(&self) -> &'static str {
        if self.server_cpu_frac() >= 0.9 && self.loadgen_cpu_frac() >= 0.9 {
            "both"
        } else if self.server_cpu_frac() >= 0.9 {
            "server"
        } else if self.loadgen_cpu_frac() >= 0.9 {
            "loadgen"
        } else {
            "neither"
        }
    }
}

fn frac(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}
