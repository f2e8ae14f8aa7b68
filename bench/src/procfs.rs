//! What `/proc` says about a process: resident memory and CPU time.
//!
//! Client and server share the machine's cores, so the new workloads report how much CPU each
//! side used while measuring: a client near a full core is a hint that the client, not the
//! server, limited the run. The server's numbers need `--server-pid` (bench/run.sh passes it).
//! Everything here is best effort: on a system without `/proc` the readings are `None`.

use std::time::Instant;

/// Clock ticks per second of `/proc/<pid>/stat`'s utime and stime (USER_HZ, 100 on Linux).
const TICKS_PER_SEC: f64 = 100.0;

/// Which process to read: this one or another by PID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Process {
    Current,
    Pid(u32),
}

impl Process {
    fn path(self, file: &str) -> String {
        match self {
            Process::Current => format!("/proc/self/{file}"),
            Process::Pid(pid) => format!("/proc/{pid}/{file}"),
        }
    }

    /// Resident set size in KiB (`VmRSS` of `/proc/<pid>/status`).
    pub fn rss_kib(self) -> Option<u64> {
        parse_vm_rss(&std::fs::read_to_string(self.path("status")).ok()?)
    }

    /// User plus system CPU seconds used so far.
    pub fn cpu_seconds(self) -> Option<f64> {
        parse_cpu_ticks(&std::fs::read_to_string(self.path("stat")).ok()?)
            .map(|ticks| ticks as f64 / TICKS_PER_SEC)
    }
}

/// Measures the CPU used by the client (this process) and the server over an interval.
pub struct CpuMeter {
    server: Option<Process>,
    start: Instant,
    client_start: Option<f64>,
    server_start: Option<f64>,
}

/// Average cores used over an interval (1.0 = one core busy the whole time).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuUse {
    pub client_cores: Option<f64>,
    pub server_cores: Option<f64>,
}

impl CpuMeter {
    /// Starts measuring now; `server_pid` is the server's PID if known.
    pub fn start(server_pid: Option<u32>) -> Self {
        let server = server_pid.map(Process::Pid);
        CpuMeter {
            server,
            start: Instant::now(),
            client_start: Process::Current.cpu_seconds(),
            server_start: server.and_then(Process::cpu_seconds),
        }
    }

    /// Average cores used by each side since [`CpuMeter::start`].
    pub fn stop(&self) -> CpuUse {
        let secs = self.start.elapsed().as_secs_f64();
        let cores = |before: Option<f64>, after: Option<f64>| match (before, after) {
            (Some(b), Some(a)) if secs > 0.0 => Some(((a - b) / secs * 100.0).round() / 100.0),
            _ => None,
        };
        CpuUse {
            client_cores: cores(self.client_start, Process::Current.cpu_seconds()),
            server_cores: cores(
                self.server_start,
                self.server.and_then(Process::cpu_seconds),
            ),
        }
    }
}

impl CpuUse {
    /// "client 0.85 cores, server 1.02 cores of 2", for the summaries.
    pub fn describe(&self) -> String {
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        let side = |name: &str, v: Option<f64>| match v {
            Some(v) => format!("{name} {v:.2}"),
            None => format!("{name} ?"),
        };
        format!(
            "{}, {} cores of {cores} (client and server share them)",
            side("client", self.client_cores),
            side("server", self.server_cores)
        )
    }
}

/// `VmRSS:   1234 kB` -> 1234.
fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line["VmRSS:".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// utime + stime (fields 14 and 15) of `/proc/<pid>/stat`. The command name (field 2) may hold
/// spaces and parentheses, so fields are counted from the last `)`.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11); // field 3 (state) is the first after ')'
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rss_from_status() {
        let status = "Name:\tetcd\nVmPeak:\t  99 kB\nVmRSS:\t   20480 kB\nThreads:\t9\n";
        assert_eq!(parse_vm_rss(status), Some(20480));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
    }

    #[test]
    fn reads_cpu_ticks_after_the_command_name() {
        let stat = "4242 (a (weird) name) S 1 4242 4242 0 -1 4194560 500 0 0 0 \
                    150 25 0 0 20 0 9 0 100 1000 200 18446744073709551615";
        assert_eq!(parse_cpu_ticks(stat), Some(175));
        assert_eq!(parse_cpu_ticks("garbage"), None);
    }

    #[test]
    fn this_process_is_visible() {
        if std::path::Path::new("/proc/self/stat").exists() {
            assert!(Process::Current.rss_kib().unwrap() > 0);
            assert!(Process::Current.cpu_seconds().is_some());
        }
    }
}
