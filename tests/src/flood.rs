//! Hostile local clients of trustd's bus service (the `flood` binary, one process per shape,
//! as ordinary users), and what a test or benchmark measures while they run: root's calls,
//! trustd's memory and descriptors.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::KillOnDrop;

/// Every shape the `flood` binary knows (see its usage).
pub const SHAPES: [&str; 6] = ["noreply", "unread", "fds", "hangup", "names", "conns"];

/// The ordinary users the flood runs as (base-passwd's lp and nobody: no role in trustd).
pub const USERS: [(u32, u32); 2] = [(7, 7), (65534, 65534)];

/// Running hostile clients; killed when dropped.
#[derive(Debug)]
pub struct Flood {
    _clients: Vec<KillOnDrop>,
}

impl Flood {
    /// Start one client of each of `shapes` as each of [`USERS`], for `millis`.
    pub fn start(address: &str, shapes: &[&str], millis: u64) -> Self {
        let mut v = Vec::new();
        for (uid, gid) in USERS {
            for shape in shapes {
                let child = Command::new("setpriv")
                    .args([
                        &format!("--reuid={uid}"),
                        &format!("--regid={gid}"),
                        "--clear-groups",
                    ])
                    .arg(crate::bin("flood"))
                    .args([address, shape, &millis.to_string()])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("start flood");
                v.push(KillOnDrop(Some(child)));
            }
        }
        Self { _clients: v }
    }
}

/// A process's resident memory in KiB (`VmRSS`) and its open descriptors.
pub fn usage(pid: u32) -> (u64, usize) {
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count);
    (rss, fds)
}

/// Latencies as root on one connection, in microseconds: `n` admin calls (`ActivePolicy`, an
/// engine round trip) and, interleaved with them, `n` calls of the bus daemon's own `GetId`
/// (the baseline: what the bus alone costs at that moment); and how many admin calls did not
/// answer within `timeout`.
pub fn admin_latencies(address: &str, n: usize, timeout: Duration) -> Latencies {
    crate::rt().block_on(async {
        let c = trustd::dbus::client::Client::connect(Some(address))
            .await
            .expect("root connects");
        let dbus = zbus::fdo::DBusProxy::new(c.connection())
            .await
            .expect("bus proxy");
        let mut out = Latencies::default();
        let us = |t: Instant| u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX);
        for _ in 0..n {
            let t = Instant::now();
            match tokio::time::timeout(timeout, c.active_policy()).await {
                Ok(r) => {
                    r.expect("ActivePolicy as root");
                    out.admin.push(us(t));
                }
                Err(_) => out.timeouts += 1,
            }
            let t = Instant::now();
            if let Ok(Ok(_)) = tokio::time::timeout(timeout, dbus.get_id()).await {
                out.bus.push(us(t));
            }
        }
        out
    })
}

/// What [`admin_latencies`] measured.
#[derive(Debug, Default)]
pub struct Latencies {
    /// Each admin call's latency, in microseconds.
    pub admin: Vec<u64>,
    /// Each `GetId` call's latency, in microseconds.
    pub bus: Vec<u64>,
    /// Admin calls without an answer in time.
    pub timeouts: usize,
}

/// The `p`th percentile (0..=100) of `v`, in its unit; 0 for none.
pub fn percentile(v: &[u64], p: usize) -> u64 {
    let mut s = v.to_vec();
    s.sort_unstable();
    if s.is_empty() {
        return 0;
    }
    s[((s.len() - 1) * p) / 100]
}
