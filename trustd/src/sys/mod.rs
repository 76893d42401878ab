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
