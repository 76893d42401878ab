//! Child processes: every program trustd runs (today `nft`, possibly through `ip netns
//! exec`) goes through [`run`]. Owns starting, feeding, timing out, killing and reaping them;
//! it knows nothing about what they do.
//!
//! A child starts in a clean signal state whatever trustd's threads have blocked or ignored
//! (an empty signal mask, every signal's disposition back to the default), in a process
//! group of its own, and with `PR_SET_PDEATHSIG` = SIGKILL, so that it dies if the thread that
//! started it goes away (trustd killed). It gets a deadline: at the deadline its whole
//! process group is killed with SIGKILL (a child cannot ignore that) and the child is reaped,
//! so the caller never waits past the deadline by more than the kill (and never leaves a
//! zombie or a hung helper behind).

use std::io::{Read, Write};
use std::os::fd::AsFd;

use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a killed child may take to be reaped before it is left to a reaper thread (a
/// process in uninterruptible sleep dies only when it leaves it).
const REAP_GRACE: Duration = Duration::from_millis(500);

/// What a child printed and how it ended.
#[derive(Debug)]
pub struct Output {
    /// How it ended (an exit code, or the signal that killed it).
    pub status: ExitStatus,
    /// Everything it wrote to stdout.
    pub stdout: Vec<u8>,
    /// Everything it wrote to stderr.
    pub stderr: Vec<u8>,
}

/// Why a child did not run to its end.
#[derive(Debug, thiserror::Error)]
pub enum ChildError {
    /// It could not be started (missing, not executable, no memory...).
    #[error("{program} could not be started: {source}")]
    Spawn {
        /// The program, as named.
        program: String,
        /// What the OS said (`ENOENT`, `EACCES`...).
        #[source]
        source: std::io::Error,
    },
    /// It did not finish within its deadline: its process group was killed (SIGKILL) and
    /// the child reaped.
    #[error(
        "{program} did not finish within its deadline of {} ms: killed (SIGKILL, with its process group) and reaped",
        deadline.as_millis()
    )]
    Timeout {
        /// The program, as named.
        program: String,
        /// The deadline it had.
        deadline: Duration,
    },
    /// Feeding it or reading from it failed (it was killed and reaped).
    #[error("talking to {program} failed: {source}")]
    Io {
        /// The program, as named.
        program: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// The most a child may write to stdout: past it, it is killed and the call fails (an `nft`
/// listing of a million blocklist entries is some tens of MiB).
pub const MAX_STDOUT: usize = 64 << 20;
/// What is kept of a child's stderr (the rest is read and thrown away).
pub const MAX_STDERR: usize = 64 << 10;
/// After the child itself has exited, how long output still held open by a helper it left
/// behind is waited for.
const AFTER_EXIT: Duration = Duration::from_millis(200);

/// The deadline (CLOCK_MONOTONIC, ms) of the child being waited for right now; 0 for none.
static WAITING_UNTIL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Whether this process is waiting for a child that is still within its deadline: busy
/// with bounded work, not wedged (the watchdog's supervisor asks).
pub fn waiting_within_deadline() -> bool {
    match WAITING_UNTIL.load(std::sync::atomic::Ordering::SeqCst) {
        0 => false,
        until => crate::sys::monotonic_ns() / 1_000_000 <= until,
    }
}

/// Clears [`WAITING_UNTIL`] when the wait is over, however it ends.
struct Waiting;

impl Waiting {
    fn until(deadline: Duration) -> Self {
        let now = crate::sys::monotonic_ns() / 1_000_000;
        let d = u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX);
        WAITING_UNTIL.store(
            now.saturating_add(d).max(1),
            std::sync::atomic::Ordering::SeqCst,
        );
        Self
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        WAITING_UNTIL.store(0, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Run `cmd` with `stdin` as its input (none: `/dev/null`), collecting stdout and stderr,
/// for at most `deadline`. `started` is called with the child's pid as soon as it exists
/// (whatever it returns is kept until the child is reaped, e.g. a registration guard).
///
/// The command's stdio and process group are set here; its program, arguments and
/// environment are the caller's.
///
/// # Errors
/// [`ChildError::Spawn`] if it could not start, [`ChildError::Timeout`] if the deadline
/// passed (it is then killed and reaped), [`ChildError::Io`] if a pipe failed. A child that
/// ran to its end is `Ok` whatever its exit status (a death by signal included).
pub fn run<G>(
    cmd: &mut Command,
    stdin: Option<&[u8]>,
    deadline: Duration,
    started: impl FnOnce(u32) -> G,
) -> Result<Output, ChildError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let start = Instant::now();
    let end = start + deadline;
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    // Its own process group: at the deadline the group is killed, helpers included.
    .process_group(0);
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe calls (sigprocmask, rt_sigaction, prctl, getppid) on stack memory;
    // it allocates nothing and takes no lock.
    unsafe {
        cmd.pre_exec(clean_signal_state);
    }
    let mut child = cmd.spawn().map_err(|source| ChildError::Spawn {
        program: program.clone(),
        source,
    })?;
    let _guard = started(child.id());
    let _waiting = Waiting::until(deadline);
    match talk(&mut child, stdin, end) {
        Ok(Some((stdout, stderr))) => match wait_until(&mut child, end) {
            Ok(Some(status)) => Ok(Output {
                status,
                stdout,
                stderr,
            }),
            Ok(None) => {
                kill_and_reap(child);
                Err(ChildError::Timeout { program, deadline })
            }
            Err(source) => {
                kill_and_reap(child);
                Err(ChildError::Io { program, source })
            }
        },
        Ok(None) => {
            kill_and_reap(child);
            Err(ChildError::Timeout { program, deadline })
        }
        Err(source) => {
            kill_and_reap(child);
            Err(ChildError::Io { program, source })
        }
    }
}

/// In the child, before exec: an empty signal mask, default dispositions, and death with the
/// thread that started it. Only async-signal-safe calls.
fn clean_signal_state() -> std::io::Result<()> {
    use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)?;
    // Every signal number the kernel knows (1..=64), through the system call itself: the C
    // library (and nix's `Signal`) refuse the numbers libc reserves (32, 33), which a parent
    // may still have ignored. SIGKILL and SIGSTOP refuse the change and need none.
    let dfl = KernelSigaction {
        handler: libc::SIG_DFL,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    for sig in 1..=64 {
        // SAFETY: nix has no call that takes a raw signal number. `dfl` is a valid kernel
        // sigaction on the stack that outlives the call; a null old-action pointer is
        // allowed; rt_sigaction is async-signal-safe (see `run`).
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                &raw const dfl,
                std::ptr::null_mut::<KernelSigaction>(),
                std::mem::size_of::<u64>(),
            );
        }
    }
    let parent = nix::unistd::getppid();
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
    // The parent may have died between fork and prctl: then the child must not run (the
    // error ends it before exec; no one is left to read it). An OS error allocates nothing.
    if nix::unistd::getppid() != parent {
        return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
    }
    Ok(())
}

/// The kernel's `struct sigaction` (x86_64 and arm64 alike: handler, flags, restorer, a
/// 64-bit mask), for `rt_sigaction`.
#[repr(C)]
struct KernelSigaction {
    handler: libc::sighandler_t,
    flags: libc::c_ulong,
    restorer: usize,
    mask: u64,
}

fn nonblocking(fd: &impl AsFd) -> std::io::Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = OFlag::from_bits_retain(fcntl(fd.as_fd(), FcntlArg::F_GETFL)?);
    fcntl(fd.as_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// Feed stdin and drain stdout and stderr until both are closed; `None` if `end` came first.
fn talk(
    child: &mut Child,
    input: Option<&[u8]>,
    end: Instant,
) -> std::io::Result<Option<(Vec<u8>, Vec<u8>)>> {
    let mut stdin = child.stdin.take();
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    if let Some(fd) = &stdout {
        nonblocking(fd)?;
    }
    if let Some(fd) = &stderr {
        nonblocking(fd)?;
    }
    if let Some(fd) = &stdin {
        nonblocking(fd)?;
    }
    let input = input.unwrap_or_default();
    let mut written = 0;
    if input.is_empty() {
        stdin = None;
    }
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut buf = vec![0u8; 64 << 10];
    let mut exited: Option<Instant> = None;
    while stdout.is_some() || stderr.is_some() {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        // Whether the child itself has ended: output a helper it left behind holds open is
        // then waited for only briefly (its exit status is what counts).
        if exited.is_none() && has_exited(child.id()) {
            exited = Some(Instant::now());
        }
        if exited.is_some_and(|t| t.elapsed() >= AFTER_EXIT) {
            // What still holds the pipes open is a helper the child left behind, possibly in
            // a session of its own (out of reach of the group kill): found by the pipes it
            // holds, and killed.
            let held: Vec<u64> = [
                stdout.as_ref().and_then(pipe_inode),
                stderr.as_ref().and_then(pipe_inode),
            ]
            .into_iter()
            .flatten()
            .collect();
            kill_holders(&held);
            break;
        }
        let left = left.min(Duration::from_millis(50));
        let ms = u16::try_from(left.as_millis() + 1).unwrap_or(u16::MAX);
        let ready = match poll_ready(
            [
                stdin.as_ref().map(|p| (p.as_fd(), PollFlags::POLLOUT)),
                stdout.as_ref().map(|p| (p.as_fd(), PollFlags::POLLIN)),
                stderr.as_ref().map(|p| (p.as_fd(), PollFlags::POLLIN)),
            ],
            ms,
        ) {
            Ok(r) => r,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        if ready[0]
            && let Some(pipe) = stdin.as_mut()
        {
            match pipe.write(&input[written..]) {
                Ok(n) => written += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                // It closed its input: what it says and its exit status tell the rest.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => written = input.len(),
                Err(e) => return Err(e),
            }
            if written >= input.len() {
                stdin = None;
            }
        }
        if ready[1] && drain(&mut stdout, &mut out, &mut buf, MAX_STDOUT)? {
            return Err(std::io::Error::other(format!(
                "it wrote more than {MAX_STDOUT} bytes to stdout (killed)"
            )));
        }
        if ready[2] {
            let _over = drain(&mut stderr, &mut err, &mut buf, MAX_STDERR)?;
        }
    }
    Ok(Some((out, err)))
}

/// Poll the descriptors present in `fds` (an absent one is not polled and never ready) for
/// up to `ms` milliseconds: which of them are ready (any event, errors and hang-ups
/// included).
fn poll_ready(
    fds: [Option<(std::os::fd::BorrowedFd<'_>, PollFlags)>; 3],
    ms: u16,
) -> nix::Result<[bool; 3]> {
    let mut slots = [None; 3];
    let mut polled = Vec::with_capacity(3);
    for (i, fd) in fds.into_iter().enumerate() {
        if let Some((fd, events)) = fd {
            slots[i] = Some(polled.len());
            polled.push(PollFd::new(fd, events));
        }
    }
    nix::poll::poll(&mut polled, PollTimeout::from(ms))?;
    Ok(slots.map(|s| {
        s.and_then(|i| polled[i].revents())
            .is_some_and(|r| !r.is_empty())
    }))
}

/// Read what a non-blocking pipe holds into `sink`, keeping at most `limit` bytes; at its
/// end, close it (`None`). Returns whether more than `limit` bytes came (the excess is
/// thrown away).
fn drain<R: Read>(
    pipe: &mut Option<R>,
    sink: &mut Vec<u8>,
    buf: &mut [u8],
    limit: usize,
) -> std::io::Result<bool> {
    let Some(p) = pipe.as_mut() else {
        return Ok(false);
    };
    let mut over = false;
    loop {
        match p.read(buf) {
            Ok(0) => {
                *pipe = None;
                return Ok(over);
            }
            Ok(n) => {
                let room = limit.saturating_sub(sink.len());
                sink.extend_from_slice(&buf[..n.min(room)]);
                over |= n > room;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(over),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Wait for the child's exit until `end`; `None` if it is still running then.
fn wait_until(child: &mut Child, end: Instant) -> std::io::Result<Option<ExitStatus>> {
    let mut pause = Duration::from_micros(100);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        std::thread::sleep(pause.min(left));
        pause = (pause * 2).min(Duration::from_millis(10));
    }
}

/// SIGKILL the child's process group (and the child itself, should it have left the group),
/// then reap it; one that does not die within [`REAP_GRACE`] is reaped by a thread of its own.
/// The inode of the pipe behind descriptor `fd`.
fn pipe_inode(fd: &impl AsFd) -> Option<u64> {
    nix::sys::stat::fstat(fd.as_fd()).ok().map(|st| st.st_ino)
}

/// SIGKILL every other process holding one of the pipes `inodes` (`/proc/PID/fd`).
fn kill_holders(inodes: &[u64]) {
    if inodes.is_empty() {
        return;
    }
    let names: Vec<String> = inodes.iter().map(|i| format!("pipe:[{i}]")).collect();
    let me = std::process::id();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path())
                .is_ok_and(|l| names.iter().any(|n| l.as_os_str() == n.as_str()))
        });
        if holds && let Ok(pid) = libc::pid_t::try_from(pid) {
            tracing::warn!("killing process {pid}, left behind by a child and holding its output");
            // `pid` holds this process's own pipe to the child.
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// Whether child `pid` has exited, without reaping it (`waitid` with `WNOWAIT`): its pid, and
/// so its process group's id, stay its own until it is reaped.
fn has_exited(pid: u32) -> bool {
    use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // P_PID with WNOHANG | WNOWAIT only inspects our own child and leaves it waitable.
    matches!(
        waitid(
            Id::Pid(Pid::from_raw(pid)),
            WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT,
        ),
        Ok(status) if status != WaitStatus::StillAlive
    )
}

fn kill_and_reap(mut child: Child) {
    let pid = libc::pid_t::try_from(child.id()).unwrap_or(0);
    if pid > 0 {
        // The group is the child's own (`process_group(0)`), and the child is not reaped
        // yet, so its pid cannot name another process.
        let _ = nix::sys::signal::killpg(Pid::from_raw(pid), Signal::SIGKILL);
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    let end = Instant::now() + REAP_GRACE;
    if let Ok(Some(_)) = wait_until(&mut child, end) {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("reaper".into())
        .spawn(move || {
            let _ = child.wait();
        });
    if let Err(e) = spawned {
        tracing::error!("child {pid} killed but not reaped: {e}");
    }
}

/// What the exit status says, as a person reads it: `exit code 1`, `killed by signal 9
/// (SIGKILL)`.
pub fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("killed by signal {s} ({})", signal_name(s)),
        (None, None) => "an unknown status".to_owned(),
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGINT => "SIGINT",
        libc::SIGHUP => "SIGHUP",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        _ => "another signal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Processes whose process group is `pgid` (from `/proc/PID/stat`).
    fn group_members(pgid: u32) -> Vec<u32> {
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").expect("proc").flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
                continue;
            };
            // state, ppid, pgrp; a zombie is dead (killed, waiting for init to reap it).
            let f: Vec<&str> = after.split_whitespace().collect();
            if f.get(2) == Some(&pgid.to_string().as_str()) && f.first() != Some(&"Z") {
                out.push(pid);
            }
        }
        out
    }

    #[test]
    fn the_deadline_kills_a_child_that_ignores_sigterm_with_its_group_and_reaps_it() {
        let mut pid = 0;
        let start = Instant::now();
        let err = run(
            Command::new("sh").args(["-c", "trap '' TERM; sleep 100; sleep 100"]),
            None,
            Duration::from_millis(300),
            |p| pid = p,
        )
        .expect_err("it hangs");
        let took = start.elapsed();
        assert!(matches!(err, ChildError::Timeout { .. }), "{err}");
        assert!(err.to_string().contains("300 ms"), "{err}");
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(2),
            "{took:?}"
        );
        // Reaped (no zombie) and nothing of its group is left running (the `sleep` included;
        // it was killed too, and init reaps it).
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
        assert_eq!(group_members(pid), Vec::<u32>::new());
    }

    #[test]
    fn the_deadline_holds_while_the_child_does_not_read_its_input() {
        // 8 MiB fills any pipe: the writer must not block past the deadline.
        let input = vec![b'x'; 8 << 20];
        let start = Instant::now();
        let err = run(
            Command::new("sleep").arg("100"),
            Some(&input),
            Duration::from_millis(200),
            |_| (),
        )
        .expect_err("it never reads");
        assert!(matches!(err, ChildError::Timeout { .. }), "{err}");
        assert!(start.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn a_child_starts_with_an_empty_signal_mask_and_default_dispositions() {
        // Block and ignore signals in this thread as trustd does in every thread.
        // The mask change only affects this test's thread.
        let mut set = nix::sys::signal::SigSet::empty();
        set.add(Signal::SIGTERM);
        set.add(Signal::SIGHUP);
        set.thread_block().expect("block");
        let out = run(
            Command::new("cat").arg("/proc/self/status"),
            None,
            Duration::from_secs(10),
            |_| (),
        )
        .expect("cat");
        assert!(out.status.success());
        let status = String::from_utf8_lossy(&out.stdout);
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
                .unwrap_or("missing")
                .to_owned()
        };
        assert_eq!(field("SigBlk:"), "0000000000000000", "{status}");
        assert_eq!(field("SigIgn:"), "0000000000000000", "{status}");
    }

    #[test]
    fn exits_deaths_and_missing_programs_are_told_apart() {
        let out = run(
            Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
            Some(b"input"),
            Duration::from_secs(10),
            |_| (),
        )
        .expect("runs");
        assert_eq!(describe(out.status), "exit code 3");
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"err\n");
        let out = run(
            Command::new("sh").args(["-c", "kill -9 $$"]),
            None,
            Duration::from_secs(10),
            |_| (),
        )
        .expect("runs");
        assert_eq!(describe(out.status), "killed by signal 9 (SIGKILL)");
        let err = run(
            &mut Command::new("/nonexistent/nft"),
            None,
            Duration::from_secs(10),
            |_| (),
        )
        .expect_err("missing");
        assert!(
            matches!(&err, ChildError::Spawn { source, .. } if source.kind() == std::io::ErrorKind::NotFound),
            "{err}"
        );
        // Input larger than a pipe is fed while the output is drained.
        let big = vec![b'y'; 4 << 20];
        let out = run(
            &mut Command::new("cat"),
            Some(&big),
            Duration::from_secs(10),
            |_| (),
        )
        .expect("cat");
        assert_eq!(out.stdout.len(), big.len());
    }
}
