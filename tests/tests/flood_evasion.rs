//! Floods aimed past the per-sender call budget in the serving socket
//! (trustd/src/dbus/socket.rs): a long object path. Each runs as two ordinary users on a real
//! dbus-daemon with the shipped bus policy, beside root's calls and a measure of the bus
//! daemon's own latency (so that what is trustd's can be told from what is the bus's).

use std::time::Duration;

use tests::bus::BusPolicy;
use tests::flood::{Flood, percentile, usage, watchdog_ping};
use tests::lab::{can_run, lab_policy, serve};

/// trustd in a lab with the shipped bus policy and a watchdog of 4 s (it pings every 2 s
/// while the engine and the bus service work), ready: the lab, trustd, the bus address,
/// the socket its watchdog pings arrive on, and the directory that holds that socket.
fn watched(
    tag: &str,
) -> (
    tests::lab::Lab,
    tests::lab::Daemon,
    String,
    std::os::unix::net::UnixDatagram,
    tempfile::TempDir,
) {
    let mut lab = tests::lab::Lab::new(tag, false);
    let b = lab.sign(lab_policy("direct"));
    lab.load(&b);
    let dir = tempfile::tempdir().expect("tempdir");
    let (notify, sock) = tests::flood::notify_socket(dir.path());
    let bus = tests::bus::Bus::start(BusPolicy::Shipped, "");
    let addr = bus.address.clone();
    let daemon = lab.run_daemon_env(
        bus,
        200,
        &[],
        &[
            ("NOTIFY_SOCKET", notify.as_os_str()),
            ("WATCHDOG_USEC", std::ffi::OsStr::new("4000000")),
        ],
    );
    tests::lab::wait_ready(&addr);
    (lab, daemon, addr, sock, dir)
}

/// The floods here measure latencies on a machine of two cores: one at a time, so that one
/// test's flood is not counted in another's figures.
static ONE_FLOOD: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_flood() -> std::sync::MutexGuard<'static, ()> {
    ONE_FLOOD
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `n` of root's `ActivePolicy` calls (an engine round trip), each on the connection trustctl
/// would use: their latencies in microseconds, and how many failed or timed out (with the
/// first error); the bus daemon's own latency meanwhile goes to `bus`.
fn root_calls(address: &str, n: usize, bus: &mut Vec<u64>) -> (Vec<u64>, usize, Option<String>) {
    let l = tests::flood::admin_latencies(address, n, Duration::from_secs(5));
    bus.extend(l.bus);
    let first = l
        .first_error
        .or_else(|| (l.timeouts > 0).then(|| "timed out after 5 s".to_owned()));
    (l.admin, l.failed + l.timeouts, first)
}

/// Root's `ActivePolicy` idle, then under `shape` (as two ordinary users), and trustd's RSS
/// before and at most during: (idle p99, flood p99, failed calls, RSS before, RSS max).
fn under(tag: &str, shape: &str) -> (u64, u64, usize, u64, u64) {
    let (lab, mut daemon) = serve(tag, lab_policy("direct"), BusPolicy::Shipped);
    let addr = daemon.bus.address.clone();
    let pid = daemon.id();
    let (idle, _, _) = root_calls(&addr, 50, &mut Vec::new());
    let mut bus = Vec::new();
    let (rss0, _) = usage(pid);
    let flood = Flood::start(&addr, &[shape], 30_000);
    std::thread::sleep(Duration::from_secs(3));
    let mut rss_max = rss0;
    let mut busy = Vec::new();
    let mut timeouts = 0;
    let mut why = None;
    for _ in 0..4 {
        let (ok, failed, first) = root_calls(&addr, 25, &mut bus);
        timeouts += failed;
        why = why.or(first);
        busy.extend(ok);
        rss_max = rss_max.max(usage(pid).0);
    }
    // Enforcement maintenance must not depend on the bus: a deleted table comes back.
    lab.dev_sh("nft delete table inet trustd");
    let t = std::time::Instant::now();
    while !lab.dev_sh("nft list tables").contains("inet trustd\n") {
        assert!(
            t.elapsed() < Duration::from_millis(1500),
            "{shape}: the deleted table was not restored within 1.5 s under the flood"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("{shape}: a deleted table restored in {:?}", t.elapsed());
    drop(flood);
    let (i99, b99) = (percentile(&idle, 99), percentile(&busy, 99));
    eprintln!(
        "{shape}: root's ActivePolicy idle p99 {i99} us, under the flood p50 {} p99 {b99} us, {timeouts} of 100 failed (first: {why:?}); the bus daemon's GetId p50 {} p99 {} us; trustd RSS {rss0} -> {rss_max} KiB",
        percentile(&busy, 50),
        percentile(&bus, 50),
        percentile(&bus, 99)
    );
    let _ = daemon.terminate();
    (i99, b99, timeouts, rss0, rss_max)
}

/// The object path of a call is a header field of any length the bus's message limit allows
/// (32 MiB on the system bus): trustd reads every header whole whoever sent it, and zbus
/// answers a call on an unknown object with an error that repeats the path.
#[test]
fn a_long_object_path_neither_grows_memory_nor_stalls_roots_calls() {
    let _one = one_flood();
    if !can_run(&["ip", "nft", "setpriv", "dbus-daemon"]) {
        return;
    }
    let (i99, b99, timeouts, rss0, rss_max) = under("fp", "longpath");
    assert_eq!(
        timeouts, 0,
        "root's calls failed under calls with 16 MiB paths"
    );
    assert!(
        rss_max < rss0 + 64 * 1024,
        "trustd's memory grew by more than 64 MiB under calls with 16 MiB paths ({rss0} -> {rss_max} KiB)"
    );
    assert!(
        b99 <= (10 * i99).max(100_000),
        "root's p99 under calls with 16 MiB paths is {b99} us, idle {i99} us (target: at most 10x)"
    );
}

/// Regression (connection churn): every new bus name had a budget of its own until trustd
/// learnt its uid, and the serving connection's reader waited up to half a second on the bus
/// for each name over it. A user opening and closing connections as fast as the bus let it,
/// each pipelining `Introspect` calls, was therefore served far past any budget and stalled
/// trustd's bus service for about a minute, until the watchdog restarted trustd. Now all
/// names whose uid is not known share one small pool and the reader never waits on a lookup
/// for a call: under the churn the watchdog is fed throughout (so the service answers through
/// the bus), root's calls over the private socket complete, a deleted table comes back, and
/// once the churn stops a new caller is answered at once. The churn is of dear calls (from
/// the shared pool) and of cheap ones (each a new name's free first call, whose total is
/// capped: uncapped, 8 `Ping`s per connection stalled the service for over a minute).
/// And another user's new connection is served during the churn: its calls, finding the pool
/// empty, used to be dropped (its `trustctl status` was answered 0 times in 4); they are now
/// held until its uid is known and served from that uid's own budget.
#[test]
fn connection_churn_neither_stalls_the_bus_service_nor_starves_the_watchdog() {
    let _one = one_flood();
    if !can_run(&["ip", "nft", "setpriv", "dbus-daemon"]) {
        return;
    }
    let (lab, mut daemon, addr, sock, _dir) = watched("fc");
    let private = lab.paths().private_socket();
    assert!(watchdog_ping(&sock, Duration::from_secs(5)), "fed before");
    let (rss0, _) = usage(daemon.id());

    // Root's long-lived bus connection, known before the churn starts.
    let rt = tests::rt();
    let root_bus = rt
        .block_on(trustd::dbus::client::Client::connect(Some(&addr)))
        .expect("root's bus connection");
    assert_eq!(
        rt.block_on(tests::flood::reads_at_once(&root_bus, 8)),
        8,
        "root's reads before the churn"
    );

    // Dear calls (Introspect, from the shared pool) and cheap ones (Ping, each a new name's
    // free first call) on connections opened and closed as fast as the bus lets them.
    let flood = Flood::start(&addr, &["churn", "pings"], 60_000);
    std::thread::sleep(Duration::from_secs(3));
    let mut root = Vec::new();
    let mut fresh = Vec::new();
    let mut rss_max = rss0;
    for round in 0..4 {
        assert!(
            watchdog_ping(&sock, Duration::from_secs(4)),
            "round {round}: the watchdog went unfed under connection churn (the bus service stalled)"
        );
        let l = tests::flood::private_latencies(&private, 20, Duration::from_secs(2));
        assert_eq!(
            (l.timeouts, l.failed),
            (0, 0),
            "round {round}: root's calls over the private socket under connection churn: {:?}",
            l.first_error
        );
        root.extend(l.admin);
        // A new caller on the bus (a fresh connection, as trustctl makes one per command, as
        // another ordinary user): its first calls find the unknown pool empty, are held until
        // its uid is known, and are then served from its own uid's budget.
        let t = std::time::Instant::now();
        let ok = std::process::Command::new("timeout")
            .args(["5", "setpriv", "--reuid=2", "--regid=2", "--clear-groups"])
            .arg(tests::bin("trustctl"))
            .args(["--bus", &addr, "status"])
            .output()
            .expect("run trustctl as uid 2")
            .status
            .success();
        let took = t.elapsed();
        assert!(
            ok,
            "round {round}: another user's trustctl status on a new bus connection was not answered within 5 s under connection churn"
        );
        fresh.push(took);
        // A client starting up sends several calls before its first answer (one per
        // interface): all are served, not only the first two.
        let out = std::process::Command::new("setpriv")
            .args(["--reuid=3", "--regid=3", "--clear-groups"])
            .arg(tests::bin("flood"))
            .args([&addr, "fresh", "0"])
            .output()
            .expect("run flood fresh as uid 3");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "8",
            "round {round}: of 8 reads sent at once on a new connection of another user under connection churn, the rest were dropped"
        );
        // A connection known before the churn stays known: every 4096 new names used to
        // wipe what trustd knew of callers, and root's reads on it were then held or dropped.
        assert_eq!(
            rt.block_on(tests::flood::reads_at_once(&root_bus, 8)),
            8,
            "round {round}: of 8 reads at once on root's long-lived bus connection under connection churn, some were dropped"
        );
        lab.delete_policy_table_and_wait(Duration::from_millis(1500))
            .unwrap_or_else(|| {
                panic!("round {round}: the deleted table was not restored within 1.5 s")
            });
        rss_max = rss_max.max(usage(daemon.id()).0);
    }
    drop(flood);

    // The churn is over: once the bus has handed trustd what it had queued (a call that
    // arrives in that backlog may still be dropped and leave its caller waiting for its
    // time-out), a new caller on the bus is answered at once, not after a minute, and the
    // watchdog is still fed.
    std::thread::sleep(Duration::from_secs(3));
    let t = std::time::Instant::now();
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=2", "--regid=2", "--clear-groups"])
        .arg(tests::bin("trustctl"))
        .args(["--bus", &addr, "status"])
        .output()
        .expect("run trustctl as uid 2");
    let took = t.elapsed();
    assert!(
        out.status.success() && took < Duration::from_secs(5),
        "an ordinary user's status right after the churn: {:?} after {took:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(watchdog_ping(&sock, Duration::from_secs(4)), "fed after");
    eprintln!(
        "connection churn: root's calls over the private socket p50 {} us p99 {} us; another user's trustctl status on a new bus connection answered in {:?}; a new bus caller answered {took:?} after it stopped; trustd RSS {rss0} -> {rss_max} KiB",
        percentile(&root, 50),
        percentile(&root, 99),
        fresh
    );
    assert!(
        rss_max < rss0 + 64 * 1024,
        "trustd's memory grew by more than 64 MiB under connection churn ({rss0} -> {rss_max} KiB)"
    );
    assert!(daemon.terminate().success(), "trustd stops cleanly");
}

/// Regression: trustd's second bus connection (its credential lookups and the self-check
/// that feeds the watchdog) read every message whole. An ordinary user sending it unicast
/// signals with 30 MiB bodies (any connection may be sent signals) delayed the self-check's
/// answer behind them: trustd stopped feeding the watchdog for as long as the flood lasted
/// (systemd would restart a working trustd every 30 s) and grew by 60 MiB. That connection
/// now reads only replies and the bus daemon's messages, skipping anything else unread.
#[test]
fn signals_to_trustds_other_bus_connection_neither_starve_the_watchdog_nor_grow_memory() {
    let _one = one_flood();
    if !can_run(&["ip", "nft", "setpriv", "dbus-daemon"]) {
        return;
    }
    let (_lab, daemon, addr, sock, _dir) = watched("fa");
    assert!(watchdog_ping(&sock, Duration::from_secs(5)), "fed before");
    assert!(
        !tests::flood::trustd_aside(&addr).is_empty(),
        "trustd's other bus connection is found as an ordinary user would find it"
    );
    let (rss0, _) = usage(daemon.id());
    let flood = Flood::start(&addr, &["aside"], 30_000);
    std::thread::sleep(Duration::from_secs(3));
    let mut rss_max = rss0;
    for round in 0..4 {
        assert!(
            watchdog_ping(&sock, Duration::from_secs(4)),
            "round {round}: the watchdog went unfed under signals to trustd's other bus connection"
        );
        rss_max = rss_max.max(usage(daemon.id()).0);
    }
    drop(flood);
    eprintln!("signals to trustd's other bus connection: trustd RSS {rss0} -> {rss_max} KiB");
    assert!(
        rss_max < rss0 + 32 * 1024,
        "trustd's memory grew by more than 32 MiB under signals to its other bus connection ({rss0} -> {rss_max} KiB)"
    );
}
