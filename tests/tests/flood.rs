//! Regression: an ordinary user froze trustd by pipelining ~300 `GetDeviceHandle` calls with
//! NO_REPLY_EXPECTED on one connection (the service asked the bus for each caller's
//! credentials on the connection it was dispatching from, and the drift check waited on the
//! bus). Here hostile clients of every shape (pipelined no-reply calls, replies never read,
//! file descriptors attached, connections dropped mid-call, thousands of names, hundreds of
//! connections), as two ordinary users at once, flood trustd on a real dbus-daemon with the
//! shipped bus policy. Root's calls keep completing, a deleted table is put back by the
//! drift check, memory and descriptors stay bounded, and the refusals are on record.

use std::time::{Duration, Instant};

use tests::bus::BusPolicy;
use tests::flood::{Flood, SHAPES, admin_latencies, usage, watchdog_ping};
use tests::lab::{can_run, lab_policy, serve};

#[test]
fn a_flood_by_ordinary_users_stops_neither_roots_calls_nor_drift_repair() {
    if !can_run(&["ip", "nft", "setpriv", "dbus-daemon"]) {
        return;
    }
    let (lab, mut daemon) = serve("fl", lab_policy("direct"), BusPolicy::Shipped);
    let addr = daemon.bus.address.clone();
    let pid = daemon.id();
    let (rss0, fds0) = usage(pid);
    let flood = Flood::start(&addr, &SHAPES, 60_000);
    std::thread::sleep(Duration::from_secs(3));

    let (mut rss_max, mut fds_max) = (rss0, fds0);
    let mut all = Vec::new();
    let mut bus = Vec::new();
    let mut repairs = Vec::new();
    for round in 0..4 {
        // Root's calls, on one connection and on fresh ones (as trustctl makes them).
        let l = admin_latencies(&addr, 50, Duration::from_secs(5));
        assert_eq!(
            l.timeouts, 0,
            "round {round}: root's calls timed out under the flood"
        );
        assert_eq!(
            l.failed, 0,
            "round {round}: ActivePolicy as root failed: {:?}",
            l.first_error
        );
        all.extend(l.admin);
        bus.extend(l.bus);
        let t = Instant::now();
        let out = tests::trustctl(std::path::Path::new("/"), &["--bus", &addr, "status"]);
        assert_eq!(
            out.code, 0,
            "trustctl status under the flood: {}",
            out.stderr
        );
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "trustctl status took {:?}",
            t.elapsed()
        );

        // An ordinary user who is not flooding (uid 2, another user than the flooders) is
        // still served.
        let t = Instant::now();
        let out = std::process::Command::new("setpriv")
            .args(["--reuid=2", "--regid=2", "--clear-groups"])
            .arg(tests::bin("trustctl"))
            .args(["--bus", &addr, "status"])
            .output()
            .expect("run trustctl as uid 2");
        assert!(
            out.status.success() && t.elapsed() < Duration::from_secs(5),
            "round {round}: an ordinary user's status under another user's flood: {:?} after {:?}: {}",
            out.status,
            t.elapsed(),
            String::from_utf8_lossy(&out.stderr)
        );

        // Someone deletes the policy table: the change notification (or, failing it, the
        // drift check every 1 s) puts it back.
        let took = lab
            .delete_policy_table_and_wait(Duration::from_millis(1500))
            .unwrap_or_else(|| {
                panic!(
                    "round {round}: the deleted table was not restored within 1.5 s under the flood"
                )
            });
        repairs.push(took);

        let (rss, fds) = usage(pid);
        rss_max = rss_max.max(rss);
        fds_max = fds_max.max(fds);
    }
    drop(flood);
    eprintln!(
        "under the flood: {} root calls, p50 {} us, p99 {} us (the bus daemon's GetId: p50 {} us, p99 {} us); table restored in {:?}; trustd RSS {} -> {} KiB at most, fds {} -> {} at most",
        all.len(),
        tests::flood::percentile(&all, 50),
        tests::flood::percentile(&all, 99),
        tests::flood::percentile(&bus, 50),
        tests::flood::percentile(&bus, 99),
        repairs,
        rss0,
        rss_max,
        fds0,
        fds_max
    );
    assert!(
        rss_max < rss0 + 64 * 1024,
        "trustd's memory grew by more than 64 MiB under the flood ({rss0} -> {rss_max} KiB)"
    );
    assert!(
        fds_max < fds0 + 256,
        "trustd's descriptors grew by more than 256 under the flood ({fds0} -> {fds_max})"
    );
    assert!(
        daemon.terminate().success(),
        "trustd stops cleanly after the flood"
    );
    let records = trustd::audit::read_records(&lab.paths().audit_dir()).expect("audit");
    let busy: Vec<_> = records.iter().filter(|r| r.kind == "bus.busy").collect();
    assert!(!busy.is_empty(), "the calls refused as busy are on record");
    assert!(
        busy.iter()
            .all(|r| r.actor.uid.is_none_or(|u| u == 7 || u == 65534)),
        "only the flooding users were refused: {busy:?}"
    );
    let drift = records.iter().filter(|r| r.kind.contains("drift")).count();
    assert!(drift >= 4, "each repair is audited ({drift} drift records)");
}

/// The systemd watchdog proves both halves of trustd work: it is fed while the engine checks
/// the kernel and the service answers through the bus, and not fed while either is wedged
/// (the bus daemon stopped; `nft` hung in the middle of an apply), so that systemd restarts a
/// wedged trustd. Pings resume when the bus comes back.
#[test]
fn the_watchdog_is_fed_only_while_the_engine_and_the_bus_service_work() {
    if !can_run(&["ip", "nft", "dbus-daemon"]) {
        return;
    }
    let mut lab = tests::lab::Lab::new("wd", false);
    let b = lab.sign(lab_policy("direct"));
    lab.load(&b);
    let dir = tempfile::tempdir().expect("tempdir");
    let (notify, sock) = tests::flood::notify_socket(dir.path());
    // An nft that hangs once the flag exists, as a wedged child would.
    let flag = dir.path().join("hang");
    let nft = dir.path().join("nft");
    std::fs::write(
        &nft,
        format!(
            "#!/bin/sh\n[ -e {} ] && exec sleep 600\nexec nft \"$@\"\n",
            flag.display()
        ),
    )
    .expect("nft wrapper");
    std::fs::set_permissions(&nft, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let bus = tests::bus::Bus::start(BusPolicy::Shipped, "");
    let addr = bus.address.clone();
    // A watchdog of 4 s: pings every 2 s (half of it), an engine without a drift check for
    // 2 s counts as wedged.
    let daemon = lab.run_daemon_env(
        bus,
        200,
        &["--nft", &nft.display().to_string()],
        &[
            ("NOTIFY_SOCKET", notify.as_os_str()),
            ("WATCHDOG_USEC", std::ffi::OsStr::new("4000000")),
        ],
    );
    tests::lab::wait_ready(&addr);
    assert!(
        watchdog_ping(&sock, Duration::from_secs(5)),
        "the watchdog is fed while trustd works"
    );

    // The bus daemon stops answering: the service cannot be reached, the pings stop.
    let bus_pid = daemon.bus.pid().to_string();
    let signal = |sig: &str, pid: &str| {
        assert!(
            std::process::Command::new("kill")
                .args([sig, pid])
                .status()
                .expect("kill")
                .success()
        );
    };
    signal("-STOP", &bus_pid);
    std::thread::sleep(Duration::from_secs(3));
    let fed = watchdog_ping(&sock, Duration::from_secs(4));
    signal("-CONT", &bus_pid);
    assert!(!fed, "no ping while the bus service cannot be reached");
    assert!(
        watchdog_ping(&sock, Duration::from_secs(8)),
        "pings resume when the bus answers again"
    );

    // The engine waits on an nft that hangs: busy with bounded work (the child is killed at
    // its deadline, 20 s by default), not wedged, so the pings go on and systemd does not
    // kill a trustd that would only meet the same hang again (its retries and posture lost).
    std::fs::write(&flag, b"").expect("flag");
    let a = addr.clone();
    let _caller = std::thread::spawn(move || {
        tests::rt().block_on(async {
            let c = trustd::dbus::client::Client::connect(Some(&a))
                .await
                .expect("connect");
            let _ = c.set_privacy_mode(true).await;
        });
    });
    std::thread::sleep(Duration::from_secs(6));
    let fed = watchdog_ping(&sock, Duration::from_secs(4));
    for child in tests::flood::children(daemon.id()) {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &child.to_string()])
            .status();
    }
    assert!(
        fed,
        "pings go on while the engine waits on a child within its deadline"
    );
}
