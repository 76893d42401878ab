//! What trustd tells its service manager (`sd_notify(3)`), heard on a notify socket the test
//! binds, from the real binary serving on a private bus in a network namespace: `READY=1`
//! with a `STATUS=` naming the posture level, `WATCHDOG=1` at half of `$WATCHDOG_USEC`
//! whatever the drift interval, `STATUS=` again when posture changes, `RELOADING=1` (with
//! `MONOTONIC_USEC=`) then `READY=1` around SIGHUP, `STOPPING=1` on SIGTERM; and no pings
//! at all when `$WATCHDOG_PID` names another process. (Pings stopping while the bus service
//! or the engine is wedged: tests/tests/flood.rs.)

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use tests::bus::{Bus, BusPolicy};
use tests::lab::{Daemon, Lab, can_run, lab_policy, wait_ready};

/// A lab with a policy loaded, trustd started on a private bus with `env` besides
/// `NOTIFY_SOCKET` and a drift check every 100 ms, and the socket it notifies.
fn start(tag: &str, env: &[(&str, &str)]) -> (Lab, Daemon, UnixDatagram, tempfile::TempDir) {
    start_every(tag, 100, &[], env)
}

/// [`start`] with a drift interval of `interval_ms` and `args` for trustd.
fn start_every(
    tag: &str,
    interval_ms: u64,
    args: &[&str],
    env: &[(&str, &str)],
) -> (Lab, Daemon, UnixDatagram, tempfile::TempDir) {
    let mut lab = Lab::new(tag, false);
    let b = lab.sign(lab_policy("direct"));
    lab.load(&b);
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, sock) = tests::flood::notify_socket(dir.path());
    let bus = Bus::start(BusPolicy::Shipped, "");
    let addr = bus.address.clone();
    let mut vars: Vec<(&str, &std::ffi::OsStr)> = vec![("NOTIFY_SOCKET", path.as_os_str())];
    vars.extend(env.iter().map(|(k, v)| (*k, std::ffi::OsStr::new(*v))));
    let daemon = lab.run_daemon_env(bus, interval_ms, args, &vars);
    wait_ready(&addr);
    (lab, daemon, sock, dir)
}

/// Every message that arrives on `sock` within `within`, with when it arrived.
fn collect(sock: &UnixDatagram, within: Duration) -> Vec<(Instant, String)> {
    let mut buf = [0u8; 4096];
    let mut out = Vec::new();
    let t = Instant::now();
    while t.elapsed() < within {
        if let Ok(n) = sock.recv(&mut buf) {
            out.push((
                Instant::now(),
                String::from_utf8_lossy(&buf[..n]).into_owned(),
            ));
        }
    }
    out
}

/// The first message on `sock` within `within` for which `f` holds (others are dropped).
fn wait_for(sock: &UnixDatagram, within: Duration, f: impl Fn(&str) -> bool) -> Option<String> {
    let mut buf = [0u8; 4096];
    let t = Instant::now();
    while t.elapsed() < within {
        if let Ok(n) = sock.recv(&mut buf) {
            let m = String::from_utf8_lossy(&buf[..n]).into_owned();
            if f(&m) {
                return Some(m);
            }
        }
    }
    None
}

fn has(m: &str, line: &str) -> bool {
    m.lines().any(|l| l == line)
}

fn status(m: &str) -> Option<&str> {
    m.lines().find_map(|l| l.strip_prefix("STATUS="))
}

fn signal(sig: &str, pid: u32) {
    assert!(
        std::process::Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .expect("kill")
            .success(),
        "kill {sig} {pid}"
    );
}

/// The whole conversation of one trustd's life with a watchdog of 3 s.
#[test]
fn the_service_manager_hears_ready_status_pings_at_half_the_timeout_reload_and_stopping() {
    if !can_run(&["ip", "nft", "dbus-daemon"]) {
        return;
    }
    let (lab, mut daemon, sock, _dir) = start("wn", &[("WATCHDOG_USEC", "3000000")]);

    // READY, with the posture level.
    let ready = wait_for(&sock, Duration::from_secs(5), |m| has(m, "READY=1"))
        .expect("READY=1 once serving");
    let first = status(&ready).expect("STATUS= with READY=1").to_owned();
    assert!(
        ["posture trusted", "posture degraded", "posture untrusted"]
            .iter()
            .any(|p| first.starts_with(p)),
        "STATUS names the level: {first:?}"
    );

    // Pings at half the timeout (1.5 s), not at the drift interval (100 ms).
    let msgs = collect(&sock, Duration::from_secs(8));
    let pings: Vec<Instant> = msgs
        .iter()
        .filter(|(_, m)| has(m, "WATCHDOG=1"))
        .map(|(t, _)| *t)
        .collect();
    let gaps: Vec<Duration> = pings.windows(2).map(|w| w[1] - w[0]).collect();
    eprintln!("pings: {} in 8 s, gaps {gaps:?}", pings.len());
    assert!(
        (4..=6).contains(&pings.len()),
        "about 8 s / 1.5 s pings, got {} (gaps {gaps:?})",
        pings.len()
    );
    assert!(
        gaps.iter()
            .all(|g| *g >= Duration::from_millis(1200) && *g <= Duration::from_millis(2000)),
        "each ping about 1.5 s after the last: {gaps:?}"
    );

    // Posture changes (a drift repaired): STATUS follows.
    lab.dev_sh("nft delete table inet trustd");
    let changed = wait_for(&sock, Duration::from_secs(5), |m| {
        status(m).is_some_and(|s| s != first)
    })
    .expect("a new STATUS= after the drift repair");
    let s = status(&changed).unwrap_or_default();
    assert!(
        s.starts_with("posture degraded") || s.starts_with("posture untrusted"),
        "{s:?}"
    );
    assert!(!s.contains('\n'));

    // SIGHUP: RELOADING=1 with the monotonic time, then READY=1 when the reload is done.
    signal("-HUP", daemon.id());
    let reloading = wait_for(&sock, Duration::from_secs(3), |m| has(m, "RELOADING=1"))
        .expect("RELOADING=1 on SIGHUP");
    let usec: u64 = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .and_then(|v| v.parse().ok())
        .expect("MONOTONIC_USEC= with RELOADING=1");
    assert!(usec > 0);
    assert!(
        wait_for(&sock, Duration::from_secs(10), |m| has(m, "READY=1")).is_some(),
        "READY=1 once the reload is done"
    );

    // SIGTERM: STOPPING=1, then a clean exit.
    signal("-TERM", daemon.id());
    assert!(
        wait_for(&sock, Duration::from_secs(3), |m| has(m, "STOPPING=1")).is_some(),
        "STOPPING=1 on SIGTERM"
    );
    let st = daemon.wait().expect("wait");
    assert!(st.success(), "exit after SIGTERM: {st:?}");
}

/// A `$WATCHDOG_PID` that is not trustd's (inherited from a supervised parent) is not a
/// request to ping: READY=1 still arrives, WATCHDOG=1 never.
#[test]
fn a_watchdog_meant_for_another_process_gets_no_pings() {
    if !can_run(&["ip", "nft", "dbus-daemon"]) {
        return;
    }
    let (_lab, daemon, sock, _dir) =
        start("wp", &[("WATCHDOG_USEC", "1000000"), ("WATCHDOG_PID", "1")]);
    assert_ne!(daemon.id(), 1);
    assert!(
        wait_for(&sock, Duration::from_secs(5), |m| has(m, "READY=1")).is_some(),
        "READY=1"
    );
    let msgs = collect(&sock, Duration::from_secs(3));
    assert!(
        !msgs.iter().any(|(_, m)| has(m, "WATCHDOG=1")),
        "pings for a watchdog of pid 1: {msgs:?}"
    );
}

/// A drift interval longer than the watchdog timeout (60 s against 2 s) is capped at a quarter
/// of the timeout: the engine keeps beating, so a healthy trustd keeps pinging (uncapped, its
/// heartbeat would be stale within a second and systemd would kill it).
#[test]
fn a_drift_interval_longer_than_the_watchdog_is_capped_so_a_healthy_trustd_keeps_pinging() {
    if !can_run(&["ip", "nft", "dbus-daemon"]) {
        return;
    }
    let (_lab, _daemon, sock, _dir) =
        start_every("wc", 60_000, &[], &[("WATCHDOG_USEC", "2000000")]);
    assert!(
        wait_for(&sock, Duration::from_secs(5), |m| has(m, "READY=1")).is_some(),
        "READY=1"
    );
    let msgs = collect(&sock, Duration::from_secs(5));
    let pings = msgs.iter().filter(|(_, m)| has(m, "WATCHDOG=1")).count();
    assert!(
        (4..=6).contains(&pings),
        "a ping every second for 5 s, got {pings}: {msgs:?}"
    );
}

/// The injected `nft` of the test below: the real one until `mode` (next to it) says `hang`.
const HANGING_NFT: &str = r#"#!/bin/sh
dir=$(dirname "$0")
case "$(cat "$dir/mode" 2>/dev/null)" in
  hang) trap '' TERM; exec sleep 1000 ;;
  *) exec nft "$@" ;;
esac
"#;

/// An `nft` that hangs is a fault trustd handles by deadlines: each one is killed at its
/// deadline, the engine never blocks past it, trustd goes on serving its posture and retrying.
/// Here with the shipped numbers: the default deadline (20 s, no trustd.json) and the unit's
/// `WatchdogSec=30` (the engine counts as wedged after 5 s without a drift check). A trustd doing what it is meant to
/// says must therefore keep feeding the watchdog: if the pings stop for a whole timeout,
/// systemd kills it (SIGABRT) and restarts it, and since every check runs a new `nft` that
/// hangs again, it is killed in a loop, its retries' back-off and its posture lost each time.
#[test]
fn an_nft_that_hangs_within_its_deadline_does_not_get_trustd_killed_by_the_watchdog() {
    if !can_run(&["ip", "nft", "dbus-daemon"]) {
        return;
    }
    let tools = tempfile::tempdir().expect("tempdir");
    let nft = tools.path().join("nft");
    std::fs::write(&nft, HANGING_NFT).expect("script");
    std::fs::set_permissions(&nft, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let nft_arg = nft.display().to_string();
    let (_lab, _daemon, sock, _dir) = start_every(
        "wh",
        500,
        &["--nft", &nft_arg],
        &[("WATCHDOG_USEC", "30000000")],
    );
    assert!(
        wait_for(&sock, Duration::from_secs(5), |m| has(m, "READY=1")).is_some(),
        "READY=1"
    );
    // Healthy first: pings every 15 s.
    assert!(
        wait_for(&sock, Duration::from_secs(20), |m| has(m, "WATCHDOG=1")).is_some(),
        "a first ping"
    );
    std::fs::write(tools.path().join("mode"), "hang").expect("mode");
    let start = Instant::now();
    let msgs = collect(&sock, Duration::from_secs(75));
    let mut last = start;
    let mut worst = Duration::ZERO;
    for (t, m) in &msgs {
        if has(m, "WATCHDOG=1") {
            worst = worst.max(*t - last);
            last = *t;
        }
    }
    worst = worst.max(last.elapsed());
    eprintln!("longest time without a ping while nft hangs: {worst:?}");
    assert!(
        worst < Duration::from_secs(30),
        "no WATCHDOG=1 for {worst:?}, at least the 30 s watchdog timeout, while trustd only \
         waited on nft children killed at their 20 s deadline: systemd would kill it \
         (messages: {msgs:?})"
    );
}
