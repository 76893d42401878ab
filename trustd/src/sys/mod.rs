//! The only place that talks to the OS below std: clocks, ids, signals, child processes
//! (deadline, clean signal state), netlink (links and nftables change notifications).

use std::path::Path;

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
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// CLOCK_BOOTTIME in nanoseconds: like CLOCK_MONOTONIC, but it also counts time suspended,
/// so that a wall clock that moved across a suspend is not taken for a jump (0 if the clock
/// cannot be read).
pub fn boottime_ns() -> u64 {
    clock_ns(libc::CLOCK_BOOTTIME)
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, exclusively borrowed timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    if rc != 0 {
        return 0;
    }
    u64::try_from(ts.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(ts.tv_nsec).unwrap_or(0))
}

/// The real uid of this process.
pub fn uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
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
    let set = daemon_sigset();
    // SAFETY: `set` is an initialized sigset_t; a null old-set pointer is allowed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::from_raw_os_error(rc))
    }
}

fn daemon_sigset() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initializes it before any other use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, exclusively borrowed sigset_t for each call.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGHUP);
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
    // SAFETY: `set` and `ts` are valid for the call; a null siginfo pointer is allowed.
    let sig = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &ts) };
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
    let cname = std::ffi::CString::new(name).ok()?;
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: group is plain data, filled in by getgrnam_r before it is read.
        let mut grp: libc::group = unsafe { std::mem::zeroed() };
        let mut out: *mut libc::group = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call; `buf` outlives it and its length is
        // passed; `out` is only compared with null afterwards.
        let rc = unsafe {
            libc::getgrnam_r(
                cname.as_ptr(),
                &mut grp,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut out,
            )
        };
        if rc == libc::ERANGE && buf.len() < (1 << 20) {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        return (rc == 0 && !out.is_null()).then_some(grp.gr_gid);
    }
}

/// The Landlock ABI version the kernel offers (0: Landlock is not available).
pub fn landlock_abi() -> u32 {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_ulong = 1;
    // SAFETY: with a null attribute pointer, size 0 and the VERSION flag the call only returns
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
    // SAFETY: PR_SET_NO_NEW_PRIVS takes plain integer arguments and touches no memory.
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Execute the open file `fd` (fexecve): the very file that was opened (and hashed), not
/// whatever its path names now. Returns only on failure.
pub fn exec_fd(
    fd: &std::os::fd::OwnedFd,
    argv: &[std::ffi::CString],
    env: &[std::ffi::CString],
) -> std::io::Error {
    use std::os::fd::AsRawFd;
    let mut a: Vec<*const libc::c_char> = argv.iter().map(|s| s.as_ptr()).collect();
    a.push(std::ptr::null());
    let mut e: Vec<*const libc::c_char> = env.iter().map(|s| s.as_ptr()).collect();
    e.push(std::ptr::null());
    // SAFETY: `a` and `e` are null-terminated arrays of pointers to NUL-terminated strings
    // that outlive the call; `fd` is an open descriptor owned by the caller.
    unsafe { libc::fexecve(fd.as_raw_fd(), a.as_ptr(), e.as_ptr()) };
    std::io::Error::last_os_error()
}
