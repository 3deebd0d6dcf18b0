//! CPU time and resident memory of a process, from `/proc`.
//!
//! CPU is `utime + stime` (fields 14 and 15 of `/proc/<pid>/stat`), which covers every thread
//! of the process (Node's libuv and V8 helper threads included). Its unit is the clock tick,
//! `getconf CLK_TCK` (100 on Linux), so one reading is only 10 ms precise: measurement windows
//! are seconds long for that reason.

use std::fmt::Display;
use std::io;
use std::process::Command;

/// Which process to read: a pid, or `self`.
pub fn stat_path(who: impl Display) -> String {
    format!("/proc/{who}/stat")
}

/// Clock ticks per second (`getconf CLK_TCK`), 100 if that cannot be asked.
pub fn clk_tck() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

/// `utime + stime` of a process, in clock ticks.
pub fn cpu_ticks(who: impl Display) -> io::Result<u64> {
    let text = std::fs::read_to_string(stat_path(who))?;
    parse_stat_ticks(&text).ok_or_else(|| io::Error::other("unreadable /proc/<pid>/stat"))
}

/// Parses `utime + stime` out of a `/proc/<pid>/stat` line. The command name (field 2) is in
/// parentheses and may hold spaces, so fields are counted from the last `)`.
pub fn parse_stat_ticks(text: &str) -> Option<u64> {
    let after = &text[text.rfind(')')? + 1..];
    let mut fields = after.split_ascii_whitespace();
    // `after` starts at field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Resident set size (`VmRSS` of `/proc/<pid>/status`), in KiB.
pub fn rss_kib(who: impl Display) -> io::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{who}/status"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| io::Error::other("no VmRSS in /proc/<pid>/status"))
}

/// Busy and steal time of the whole machine (all cores, `cpu` line of `/proc/stat`), in
/// clock ticks: busy = user + nice + system + irq + softirq + steal.
pub fn machine_ticks() -> io::Result<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat")?;
    parse_machine_ticks(&text).ok_or_else(|| io::Error::other("unreadable /proc/stat"))
}

pub fn parse_machine_ticks(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_ascii_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal [guest guest_nice: already in user]
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    let busy = at(0) + at(1) + at(2) + at(5) + at(6) + at(7);
    Some((busy, at(7)))
}

/// A CPU clock reading of one process, in seconds.
#[derive(Clone, Copy, Debug)]
pub struct CpuClock {
    tck: f64,
}

impl CpuClock {
    pub fn new() -> Self {
        Self {
            tck: clk_tck() as f64,
        }
    }

    /// Machine busy and steal seconds so far (all cores).
    pub fn machine(&self) -> (f64, f64) {
        machine_ticks()
            .map(|(b, s)| (b as f64 / self.tck, s as f64 / self.tck))
            .unwrap_or((0.0, 0.0))
    }

    /// CPU seconds (user + system) the process has used so far; 0 if it is gone.
    pub fn seconds(&self, who: impl Display) -> f64 {
        cpu_ticks(who).map(|t| t as f64 / self.tck).unwrap_or(0.0)
    }
}

impl Default for CpuClock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_spaces_in_the_name() {
        let line =
            "1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 31 0 0 20 0 3 0 99 0 0";
        assert_eq!(parse_stat_ticks(line), Some(281));
    }

    #[test]
    fn parses_proc_stat() {
        let text = "cpu  100 5 50 9000 7 3 2 11 0 0\ncpu0 50 2 25 4500 3 1 1 5 0 0\n";
        assert_eq!(parse_machine_ticks(text), Some((171, 11)));
    }

    #[test]
    fn reads_own_process() {
        assert!(cpu_ticks("self").is_ok());
        assert!(rss_kib("self").unwrap() > 0);
    }
}
