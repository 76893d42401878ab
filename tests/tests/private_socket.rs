//! trustd's private socket (`/run/trustd/private` under the device's prefix): root's
//! `trustctl` reaches trustd peer to peer, without the bus daemon that a flood of ordinary
//! users keeps busy; nobody else can connect, and a process of another uid that holds a
//! connection anyway is authorized, audited and budgeted as on the bus. Also: one ordinary uid
//! cannot multiply its call budget by opening many bus connections.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::process::Command;
use std::time::{Duration, Instant};

use tests::bus::BusPolicy;
use tests::flood::{Flood, SHAPES, private_latencies};
use tests::lab::{Lab, can_run, lab_policy, serve};

/// Wait (5 s at most) for the daemon's private socket to exist; its path.
fn private_socket(lab: &Lab) -> std::path::PathBuf {
    let path = lab.paths().private_socket();
    let t = Instant::now();
    while !path.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "trustd made no private socket at {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    path
}

/// trustctl as `uid` (gid the same, groups `groups`), with `caps` (e.g. `+dac_override`)
/// kept across the change of uid.
fn trustctl_as(uid: u32, groups: &[u32], caps: Option<&str>, args: &[&str]) -> tests::Run {
    let mut cmd = Command::new("setpriv");
    cmd.args([format!("--reuid={uid}"), format!("--regid={uid}")]);
    if groups.is_empty() {
        cmd.arg("--clear-groups");
    } else {
        let g: Vec<String> = groups.iter().map(u32::to_string).collect();
        cmd.arg(format!("--groups={}", g.join(",")));
    }
    if let Some(c) = caps {
        cmd.args([format!("--inh-caps={c}"), format!("--ambient-caps={c}")]);
    }
    cmd.arg(tests::bin("trustctl"))
        .args(args)
        .output()
        .expect("run trustctl through setpriv")
        .into()
}

/// Root's calls over the private socket complete, fast, while two ordinary users flood the
/// bus with every hostile shape; `trustctl` as root picks the socket by itself
/// ($TRUSTCTL_PRIVATE names it here, the device's being under a prefix); a deleted table is
/// still put back; root's calls there are audited with the kernel's identity.
#[test]
fn roots_calls_over_the_private_socket_complete_under_a_bus_flood() {
    if !can_run(&["ip", "nft", "setpriv", "dbus-daemon"]) {
        return;
    }
    let (lab, mut daemon) = serve("ps", lab_policy("direct"), BusPolicy::Shipped);
    let addr = daemon.bus.address.clone();
    let sock = private_socket(&lab);
    let flood = Flood::start(&addr, &SHAPES, 60_000);
    std::thread::sleep(Duration::from_secs(3));
    let mut all = Vec::new();
    for round in 0..3 {
        let l = private_latencies(&sock, 50, Duration::from_secs(2));
        assert_eq!(l.timeouts, 0, "round {round}: root's calls timed out");
        assert_eq!(l.failed, 0, "round {round}: {:?}", l.first_error);
        all.extend(l.admin);

        let t = Instant::now();
        let out = Command::new(tests::bin("trustctl"))
            .env("TRUSTCTL_PRIVATE", &sock)
            .args(["privacy", if round % 2 == 0 { "on" } else { "off" }])
            .output()
            .expect("trustctl");
        assert!(
            out.status.success() && t.elapsed() < Duration::from_secs(2),
            "round {round}: trustctl privacy as root over the private socket: {:?} after {:?}: {}",
            out.status,
            t.elapsed(),
            String::from_utf8_lossy(&out.stderr)
        );

        assert!(
            lab.delete_policy_table_and_wait(Duration::from_millis(1500))
                .is_some(),
            "round {round}: the deleted table was not restored within 1.5 s"
        );
    }
    drop(flood);
    let p99 = tests::flood::percentile(&all, 99);
    eprintln!(
        "root over the private socket under the flood: {} calls, p50 {} us, p99 {p99} us",
        all.len(),
        tests::flood::percentile(&all, 50)
    );
    assert!(
        p99 < 500_000,
        "root's p99 over the private socket under the flood is {p99} us"
    );
    assert!(daemon.terminate().success());
    let records = trustd::audit::read_records(&lab.paths().audit_dir()).expect("audit");
    let private: Vec<_> = records
        .iter()
        .filter(|r| {
            r.actor
                .bus_name
                .as_deref()
                .is_some_and(|n| n.starts_with("private-socket#"))
        })
        .collect();
    assert!(
        private.len() >= 3,
        "root's privacy changes over the private socket are on record: {private:?}"
    );
    assert!(
        private.iter().all(|r| r.actor.uid == Some(0)),
        "with the kernel's uid for root: {private:?}"
    );
}

/// The private socket is a socket file only its owner can open (mode 0600): an ordinary
/// user's connect fails with EACCES, and trustctl says so rather than falling back when the
/// socket was asked for.
#[test]
fn an_ordinary_user_cannot_connect_to_the_private_socket() {
    if !can_run(&["ip", "nft", "setpriv", "dbus-daemon"]) {
        return;
    }
    let (lab, _daemon) = serve("pa", lab_policy("direct"), BusPolicy::Shipped);
    let sock = private_socket(&lab);
    let meta = std::fs::symlink_metadata(&sock).expect("stat");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.mode() & 0o777, 0o600, "owner only");
    assert_eq!(meta.uid(), tests_euid(), "owned by trustd's user");
    let s = sock.display().to_string();
    for uid in [7, 65534] {
        let out = trustctl_as(uid, &[], None, &["--private", &s, "status"]);
        assert_ne!(out.code, 0, "uid {uid} reached the private socket");
        assert!(
            out.stderr.contains("Permission denied"),
            "uid {uid}: EACCES expected: {}",
            out.stderr
        );
    }
    // Even with the admin group: the socket is for root (and trustd's own user).
    let admin = tests::bus::gid(tests::bus::ADMIN_GROUP);
    let out = trustctl_as(7, &[admin], None, &["--private", &s, "status"]);
    assert!(out.stderr.contains("Permission denied"), "{}", out.stderr);
}

fn tests_euid() -> u32 {
    trustd::sys::euid()
}

/// Regression for a hole of the kind "a caller gets rights from how it reached trustd": a
/// process of an ordinary uid that holds a connection to the private socket anyway (here it
/// connected with CAP_DAC_OVERRIDE) is refused exactly what trustd refuses it on the bus (a bus
/// that lets everyone call everything, so that trustd's own checks answer on both ways in), is
/// audited under its own uid, and gets the admin role only through the admin group.
#[test]
fn a_private_socket_connection_gets_the_same_denials_as_the_bus() {
    if !can_run(&["ip", "nft", "setpriv", "dbus-daemon"]) {
        return;
    }
    let (lab, mut daemon) = serve("pd", lab_policy("direct"), BusPolicy::Open);
    let addr = daemon.bus.address.clone();
    let sock = private_socket(&lab);
    let s = sock.display().to_string();
    let cap = Some("+dac_override");
    let bundle = lab.paths().policy_bundle().display().to_string();
    for args in [
        vec!["audit", "tail", "-n", "1"],
        vec!["privacy", "off"],
        vec!["policy", "apply", bundle.as_str()],
    ] {
        let mut private = vec!["--private", s.as_str()];
        private.extend(&args);
        let mut bus = vec!["--bus", addr.as_str()];
        bus.extend(&args);
        let p = trustctl_as(7, &[], cap, &private);
        let b = trustctl_as(7, &[], cap, &bus);
        assert_eq!(
            p.code, 1,
            "{args:?} over the private socket as uid 7: {}",
            p.stderr
        );
        assert_eq!(b.code, 1, "{args:?} over the bus as uid 7: {}", b.stderr);
        assert!(
            p.stderr.starts_with("trustctl: AccessDenied: ") && p.stderr == b.stderr,
            "{args:?}: the same refusal on both ways in: private {:?}, bus {:?}",
            p.stderr,
            b.stderr
        );
    }
    let p = trustctl_as(7, &[], cap, &["--private", &s, "status"]);
    assert_eq!(p.code, 0, "posture is everyone's: {}", p.stderr);
    // The admin group makes an admin there as on the bus (groups from SO_PEERGROUPS).
    let admin = tests::bus::gid(tests::bus::ADMIN_GROUP);
    let p = trustctl_as(
        7,
        &[admin],
        cap,
        &["--private", &s, "audit", "tail", "-n", "1"],
    );
    assert_eq!(p.code, 0, "the admin group's member: {}", p.stderr);

    assert!(daemon.terminate().success());
    let records = trustd::audit::read_records(&lab.paths().audit_dir()).expect("audit");
    let denied: Vec<_> = records
        .iter()
        .filter(|r| r.kind == trustd::daemon::api::DENIED_KIND)
        .collect();
    let via_private = denied
        .iter()
        .filter(|r| {
            r.actor.uid == Some(7)
                && r.actor
                    .bus_name
                    .as_deref()
                    .is_some_and(|n| n.starts_with("private-socket#"))
        })
        .count();
    assert!(
        via_private >= 3,
        "the refusals over the private socket are audited under uid 7: {denied:?}"
    );
}

/// Regression: call budgets were kept per unique bus name, so one ordinary uid with 16
/// connections had 16 budgets. Now they share their uid's: 16 connections asking 20 times a
/// second each (10 times the rate one uid is given) get about one uid's worth answered, and
/// another ordinary user meanwhile is served as usual.
#[test]
fn many_connections_of_one_uid_share_one_call_budget() {
    if !can_run(&["ip", "nft", "setpriv", "dbus-daemon"]) {
        return;
    }
    let (_lab, daemon) = serve("pb", lab_policy("direct"), BusPolicy::Shipped);
    let addr = daemon.bus.address.clone();
    let secs = 4u64;
    let flooder = Command::new("setpriv")
        .args(["--reuid=7", "--regid=7", "--clear-groups"])
        .arg(tests::bin("flood"))
        .args([addr.as_str(), "budget", &(secs * 1000).to_string()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the budget client");
    let mut flooder = tests::KillOnDrop(Some(flooder));
    std::thread::sleep(Duration::from_secs(1));
    let other = trustctl_as(2, &[], None, &["--bus", &addr, "status"]);
    assert_eq!(other.code, 0, "another user is served: {}", other.stderr);
    let out = flooder
        .0
        .take()
        .expect("child")
        .wait_with_output()
        .expect("budget client output");
    let answered: u64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("a count");
    let asked = 16 * 20 * secs;
    // One uid's budget over the run: its burst, its rate, and the calls its connections made
    // before their uid was learnt (charged to it afterwards).
    let budget = trustd::dbus::SENDER_BURST + trustd::dbus::SENDER_RATE * secs as f64;
    eprintln!(
        "one uid, 16 connections: {answered} of {asked} calls answered (one uid's budget: {budget})"
    );
    assert!(
        (answered as f64) < 2.0 * budget,
        "16 connections of one uid got {answered} calls answered, more than twice one uid's budget ({budget})"
    );
    assert!(answered > 0, "the uid is served within its budget");
}

/// A fake trustd: another user listens on a socket where root's trustctl is pointed (here a
/// world-writable directory, as /tmp is) and would answer `status` or `policy apply` with
/// lies. trustctl checks who serves the socket (root, or the owner of a directory no one
/// else may write) and refuses before sending anything.
#[test]
fn roots_trustctl_refuses_a_private_socket_served_by_another_user() {
    if !can_run(&["setpriv", "python3"]) {
        return;
    }
    let d = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(
        d.path(),
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o1777),
    )
    .expect("chmod");
    let sock = d.path().join("private");
    let mut fake = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
        ])
        .arg(
            "import socket,sys,time\n\
             s=socket.socket(socket.AF_UNIX)\n\
             s.bind(sys.argv[1]); s.listen(4)\n\
             c,_=s.accept(); time.sleep(5)\n",
        )
        .arg(&sock)
        .spawn()
        .expect("fake server");
    let start = Instant::now();
    while !sock.exists() && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = Command::new(tests::bin("trustctl"))
        .args(["--json", "--private"])
        .arg(&sock)
        .arg("status")
        .output()
        .expect("trustctl");
    let _ = fake.kill();
    let _ = fake.wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_ne!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("not trustd's socket"), "{stdout}");
}
