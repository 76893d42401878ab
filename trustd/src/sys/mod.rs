//! The only place that talks to the OS below std: clocks, ids, signals, child processes
//! (deadline, clean signal state), netlink (links and nftables change notifications).
//!
//! System calls go through the `nix` crate's safe wrappers; raw `libc` remains only where
//! nix has no safe call (`sigtimedwait`, the Landlock ABI query, raw `rt_sigaction` and
//! `_exit` after fork), each with its `SAFETY` line.

use std::path::Path;

use nix::sys::signal::{SigSet, Signal as NixSignal};
use nix::time::{ClockId, clock_gettime};

pub mod child;
pub mod netlink;
pub mod nfnl;
pub mod nft_events;

/// This boot's id (`/proc/sys/kernel/random/boot_id`), or `unknown`.
pub fn boot_id() -> String {
    std::fs::read_to_string(Path::new("/proc/sys/kernel/random/boot_id"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// CLOCK_MONOTONIC in nanoseconds (0 if the clock cannot be read).
pub fn monotonic_ns() -> u64 {
    clock_ns(ClockId::CLOCK_MONOTONIC)
}

/// CLOCK_BOOTTIME in nanoseconds: like CLOCK_MONOTONIC, but it also counts time suspended,
/// so that a wall clock that moved across a suspend is not taken for a jump (0 if the clock
/// cannot be read).
pub fn boottime_ns() -> u64 {
    clock_ns(ClockId::CLOCK_BOOTTIME)
}

fn clock_ns(clock: ClockId) -> u64 {
    let Ok(ts) = clock_gettime(clock) else {
        return 0;
    };
    u64::try_from(ts.tv_sec())
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(ts.tv_nsec()).unwrap_or(0))
}

/// The real uid of this process.
pub fn uid() -> u32 {
    nix::unistd::getuid().as_raw()
}

/// The effective uid of this process (whose files it creates).
pub fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// The id of this process.
pub fn pid() -> u32 {
    std::process::id()
}

/// Signals the daemon handles synchronously: TERM and INT stop it (enforcement stays),
/// HUP reloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM or SIGINT.
    Stop,
    /// SIGHUP.
    Reload,
}

/// Block SIGTERM, SIGINT and SIGHUP in this thread (call before starting other threads, so
/// that they inherit the mask) so that [`wait_signal`] receives them.
pub fn block_signals() -> std::io::Result<()> {
    daemon_sigset().thread_block().map_err(std::io::Error::from)
}

fn daemon_sigset() -> SigSet {
    let mut set = SigSet::empty();
    for sig in [NixSignal::SIGTERM, NixSignal::SIGINT, NixSignal::SIGHUP] {
        set.add(sig);
    }
    set
}

/// Wait up to `timeout` for a blocked signal; `None` on timeout.
pub fn wait_signal(timeout: std::time::Duration) -> Option<Signal> {
    let set = daemon_sigset();
    let ts = libc::timespec {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: libc::c_long::from(timeout.subsec_nanos()),
    };
    // SAFETY: nix has no sigtimedwait. `set` (an initialized sigset_t inside the SigSet) and
    // `ts` are valid for the call; a null siginfo pointer is allowed.
    let sig = unsafe { libc::sigtimedwait(set.as_ref(), std::ptr::null_mut(), &ts) };
    match sig {
        libc::SIGTERM | libc::SIGINT => Some(Signal::Stop),
        libc::SIGHUP => Some(Signal::Reload),
        _ => None,
    }
}

/// This process's peak resident set size (VmHWM), in KiB.
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The gid of the group `name` in the group database, or `None` if there is no such group
/// (or the lookup failed).
pub fn group_id(name: &str) -> Option<u32> {
    nix::unistd::Group::from_name(name)
        .ok()
        .flatten()
        .map(|g| g.gid.as_raw())
}

/// The Landlock ABI version the kernel offers (0: Landlock is not available).
pub fn landlock_abi() -> u32 {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_ulong = 1;
    // SAFETY: nix has no Landlock call (and the landlock crate does not expose the bare
    // version query). With a null attribute pointer, size 0 and the VERSION flag the call only returns
    // the ABI version (or an error); it creates nothing and touches no memory.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    u32::try_from(rc).unwrap_or(0)
}

/// What trustd tells the service manager (`sd_notify(3)`), from the `sd-notify` crate.
pub use sd_notify::NotifyState;

/// Tell the service manager `states` in one datagram through `$NOTIFY_SOCKET`
/// (`sd_notify(3)`: one `KEY=VALUE` line each). Without that variable (not started by
/// systemd) it does nothing. A `STATUS=` text must be one line: see [`status_text`].
pub fn notify(states: &[NotifyState]) -> std::io::Result<()> {
    sd_notify::notify(states)
}

/// The service manager's watchdog timeout, as `sd_watchdog_enabled(3)` reads it:
/// `$WATCHDOG_USEC` (microseconds), honoured only if `$WATCHDOG_PID` is unset or names this
/// process (a variable inherited from a parent that was itself supervised is not ours).
/// `None`: no watchdog, send no `WATCHDOG=1`.
pub fn watchdog_timeout() -> Option<std::time::Duration> {
    sd_notify::watchdog_enabled().filter(|d| !d.is_zero())
}

/// `text` made safe as the value of a `STATUS=` line: control characters (a newline would
/// start another `KEY=VALUE` line, e.g. a forged `WATCHDOG=1`) become spaces, and the text is
/// cut to `max` characters (with an ellipsis).
pub fn status_text(text: &str, max: usize) -> String {
    let clean: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if clean.chars().count() <= max {
        clean
    } else {
        let mut cut: String = clean.chars().take(max.saturating_sub(1)).collect();
        cut.push('…');
        cut
    }
}

/// Set no_new_privs: neither this process nor what it executes can gain privileges (setuid,
/// file capabilities). Irreversible.
pub fn set_no_new_privs() -> std::io::Result<()> {
    nix::sys::prctl::set_no_new_privs().map_err(std::io::Error::from)
}

/// Execute the open file `fd` (fexecve): the very file that was opened (and hashed), not
/// whatever its path names now. Returns only on failure.
pub fn exec_fd(
    fd: &std::os::fd::OwnedFd,
    argv: &[std::ffi::CString],
    env: &[std::ffi::CString],
) -> std::io::Error {
    match nix::unistd::fexecve(fd, argv, env) {
        Err(e) => e.into(),
    }
}

/// The identity the kernel recorded for the peer of a connected Unix socket when it
/// connected: `SO_PEERCRED` (uid, primary gid, pid) and `SO_PEERGROUPS` (its supplementary
/// groups; socket(7)). No bus daemon is asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The peer's effective uid at connect time.
    pub uid: u32,
    /// Its groups: the primary gid first, then the supplementary ones (deduplicated). Empty
    /// supplementary groups when the kernel does not report them (fewer roles, never more).
    pub gids: Vec<u32>,
    /// Its pid at connect time.
    pub pid: u32,
}

/// The kernel's record of who is at the other end of the Unix stream `fd`.
///
/// # Errors
/// `SO_PEERCRED` failing (not a connected Unix socket).
pub fn peer_identity(fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<PeerIdentity> {
    use nix::sys::socket::{getsockopt, sockopt};
    let cred = getsockopt(&fd, sockopt::PeerCredentials).map_err(std::io::Error::from)?;
    let mut gids = vec![cred.gid()];
    for g in peer_groups(fd).unwrap_or_default() {
        if !gids.contains(&g) {
            gids.push(g);
        }
    }
    Ok(PeerIdentity {
        uid: cred.uid(),
        gids,
        pid: u32::try_from(cred.pid()).unwrap_or(0),
    })
}

/// `SO_PEERGROUPS` (Linux 4.13): the peer's supplementary groups at connect time.
fn peer_groups(fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<Vec<u32>> {
    use std::os::fd::AsRawFd;
    // NGROUPS_MAX on Linux is 65536; ask with room for 64 first, then with what it needs.
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    for _ in 0..2 {
        let mut len = libc::socklen_t::try_from(groups.len() * std::mem::size_of::<libc::gid_t>())
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        // SAFETY: `groups` is a live buffer of `len` bytes that the kernel writes at most
        // `len` bytes into (and updates `len`); `fd` is a valid open descriptor for the call.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let n = len as usize / std::mem::size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(n);
            return Ok(groups);
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ERANGE) || n <= groups.len() {
            return Err(err);
        }
        groups.resize(n, 0);
    }
    Err(std::io::Error::from(std::io::ErrorKind::InvalidData))
}

/// Bind and listen on a Unix stream socket at `path` whose file is created with mode 0600
/// (owner only) from the start: the mode is set on the socket before `bind` (Linux takes the
/// new file's mode from the socket's inode, less the umask), then set again on the path, so
/// that at no moment can anyone but the owner (and a process with `CAP_DAC_OVERRIDE`, i.e.
/// root) connect. A socket file left at `path` by an earlier run is removed first; any other
/// kind of file there is an error.
///
/// # Errors
/// `path` holds something other than a socket; socket, bind or listen failing.
pub fn bind_owner_only(path: &Path) -> std::io::Result<std::os::unix::net::UnixListener> {
    use nix::sys::socket::{AddressFamily, Backlog, SockFlag, SockType, UnixAddr, bind, listen};
    use nix::sys::stat::{Mode, fchmod};
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let fd = nix::sys::socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    let owner_only = Mode::S_IRUSR | Mode::S_IWUSR;
    fchmod(&fd, owner_only)?;
    bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &UnixAddr::new(path)?)?;
    std::fs::set_permissions(
        path,
        std::os::unix::fs::PermissionsExt::from_mode(owner_only.bits()),
    )?;
    listen(&fd, Backlog::new(16)?)?;
    Ok(std::os::unix::net::UnixListener::from(fd))
}

/// The index of the network interface named `name` in this thread's network namespace
/// (`if_nametoindex(3)`), `None` when there is none.
pub fn if_index(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: `c` is a NUL-terminated string that lives across the call; if_nametoindex
    // only reads it.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}
