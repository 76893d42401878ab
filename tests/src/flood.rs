//! Hostile local clients of trustd's bus service (the `flood` binary, one process per shape,
//! as ordinary users), and what a test or benchmark measures while they run: root's calls,
//! trustd's memory and descriptors.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::KillOnDrop;

/// Every shape the `flood` binary knows (see its usage).
pub const SHAPES: [&str; 11] = [
    "noreply", "unread", "fds", "hangup", "names", "conns", "huge", "builtin", "signals",
    "longpath", "gone",
];

/// The ordinary users the flood runs as (base-passwd's lp and nobody: no role in trustd).
pub const USERS: [(u32, u32); 2] = [(7, 7), (65534, 65534)];

/// Running hostile clients; killed when dropped.
///
/// On a device, ordinary users' processes run in systemd's `user.slice` and trustd and the bus
/// daemon in `system.slice`, which the kernel weighs against each other as two groups however
/// many processes each holds. Where the cgroup v1 `cpu` controller is writable (this machine),
/// the clients share one cpu group of default weight the same way, so that a dozen busy
/// clients count as one competitor for the CPU, not twelve; elsewhere they run as they are.
#[derive(Debug)]
pub struct Flood {
    clients: Vec<KillOnDrop>,
    group: Option<std::path::PathBuf>,
}

impl Flood {
    /// Start one client of each of `shapes` as each of [`USERS`], for `millis`, sending as
    /// fast as the bus takes their calls.
    pub fn start(address: &str, shapes: &[&str], millis: u64) -> Self {
        Self::start_paced(address, shapes, millis, "flat")
    }

    /// [`Flood::start`] with the `flood` binary's PACE (`flat` or `bursts`).
    pub fn start_paced(address: &str, shapes: &[&str], millis: u64, pace: &str) -> Self {
        let group = std::path::Path::new("/sys/fs/cgroup/cpu")
            .join(format!("trustd-flood-{}-{millis}", std::process::id()));
        let group = std::fs::create_dir(&group).ok().map(|()| group);
        let mut clients = Vec::new();
        for (uid, gid) in USERS {
            for shape in shapes {
                let child = Command::new("setpriv")
                    .args([
                        &format!("--reuid={uid}"),
                        &format!("--regid={gid}"),
                        "--clear-groups",
                    ])
                    .arg(crate::bin("flood"))
                    .args([address, shape, &millis.to_string(), pace])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("start flood");
                if let Some(g) = &group {
                    let _ = std::fs::write(g.join("cgroup.procs"), child.id().to_string());
                }
                clients.push(KillOnDrop(Some(child)));
            }
        }
        Self { clients, group }
    }

    /// Whether the clients share one cpu group (as `user.slice` would hold them).
    pub fn grouped(&self) -> bool {
        self.group.is_some()
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.clients.clear();
        if let Some(g) = &self.group {
            // Empty once its processes are reaped.
            for _ in 0..50 {
                if std::fs::remove_dir(g).is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// trustd's bus connections other than the one that owns `org.enigm.Trust1` (the bus
/// daemon's view: names whose process is the owner's), as an ordinary user can find them.
/// Empty when the bus cannot be asked.
pub fn trustd_aside(address: &str) -> Vec<String> {
    crate::rt().block_on(async {
        let Ok(conn) = zbus::connection::Builder::address(address)
            .method_timeout(Duration::from_secs(5))
            .build()
            .await
        else {
            return Vec::new();
        };
        let Ok(bus) = zbus::fdo::DBusProxy::new(&conn).await else {
            return Vec::new();
        };
        let Ok(owner) = bus
            .get_name_owner("org.enigm.Trust1".try_into().expect("a bus name"))
            .await
        else {
            return Vec::new();
        };
        let Ok(pid) = bus
            .get_connection_unix_process_id(owner.clone().into())
            .await
        else {
            return Vec::new();
        };
        let mut aside = Vec::new();
        for name in bus.list_names().await.unwrap_or_default() {
            let name = name.to_string();
            if !name.starts_with(':') || name == owner.as_str() {
                continue;
            }
            let Ok(unique) = zbus::names::BusName::try_from(name.clone()) else {
                continue;
            };
            if bus.get_connection_unix_process_id(unique).await.ok() == Some(pid) {
                aside.push(name);
            }
        }
        aside
    })
}

/// Send `n` posture property reads at once on `c` (as a client starting up does, one per
/// interface) and count those answered within 5 s each.
pub async fn reads_at_once(c: &trustd::dbus::client::Client, n: usize) -> usize {
    let calls: Vec<_> = (0..n)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move {
                let call = c.posture_property("Level");
                matches!(
                    tokio::time::timeout(Duration::from_secs(5), call).await,
                    Ok(Ok(_))
                )
            })
        })
        .collect();
    let mut answered = 0;
    for t in calls {
        answered += usize::from(t.await.unwrap_or(false));
    }
    answered
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
/// Like [`admin_latencies`], as root over trustd's private socket at `socket` (no bus
/// daemon in the way; `bus` stays empty).
pub fn private_latencies(socket: &std::path::Path, n: usize, timeout: Duration) -> Latencies {
    crate::rt().block_on(async {
        let c = trustd::dbus::client::Client::connect_private(socket)
            .await
            .expect("root connects to the private socket");
        let mut out = Latencies::default();
        for _ in 0..n {
            let t = Instant::now();
            match tokio::time::timeout(timeout, c.active_policy()).await {
                Ok(Ok(_)) => out
                    .admin
                    .push(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX)),
                Ok(Err(e)) => {
                    out.failed += 1;
                    out.first_error
                        .get_or_insert_with(|| e.to_string().chars().take(160).collect());
                }
                Err(_) => out.timeouts += 1,
            }
        }
        out
    })
}

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
                Ok(Ok(_)) => out.admin.push(us(t)),
                Ok(Err(e)) => {
                    out.failed += 1;
                    out.first_error
                        .get_or_insert_with(|| e.to_string().chars().take(160).collect());
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
    /// Admin calls answered with an error, and the first such error.
    pub failed: usize,
    /// See `failed`.
    pub first_error: Option<String>,
}

/// The children of process `pid` (from /proc).
pub fn children(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    let after = s.rsplit_once(')')?.1.to_owned();
                    after.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

/// CPU time used so far by process `pid` and by all its threads (user + system), in clock
/// ticks (`/proc/PID/stat`).
pub fn cpu_ticks(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let f: Vec<u64> = s
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .skip(11)
                .take(2)
                .filter_map(|v| v.parse().ok())
                .collect();
            Some(f.iter().sum())
        })
        .unwrap_or(0)
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

/// A service manager's notification socket for trustd (`$NOTIFY_SOCKET`): `notify` in the
/// directory `dir`, bound, with a read timeout of 100 ms; its path and the socket.
pub fn notify_socket(
    dir: &std::path::Path,
) -> (std::path::PathBuf, std::os::unix::net::UnixDatagram) {
    let path = dir.join("notify");
    let sock = std::os::unix::net::UnixDatagram::bind(&path).expect("notify socket");
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    (path, sock)
}

/// Whether a `WATCHDOG=1` arrives on `sock` (trustd's `$NOTIFY_SOCKET`, with a read timeout
/// set) within `within`; notifications sent before the call are drained first.
pub fn watchdog_ping(sock: &std::os::unix::net::UnixDatagram, within: Duration) -> bool {
    let mut buf = [0u8; 256];
    while sock.recv(&mut buf).is_ok() {}
    let t = Instant::now();
    while t.elapsed() < within {
        if let Ok(n) = sock.recv(&mut buf)
            && buf[..n].windows(10).any(|w| w == b"WATCHDOG=1")
        {
            return true;
        }
    }
    false
}
