//! An admin call's latency (`ActivePolicy` as root, an engine round trip) idle and while
//! ordinary users flood trustd's bus service with every hostile shape of the `flood` binary,
//! in the same run on the same private bus with the shipped policy: over trustd's private
//! socket (what root's trustctl uses) and over the bus. Prints p50 and p99 of each and their
//! ratio (target: p99 under the flood at most 10x idle, no call timing out).
//!
//! Needs root, nft, ip, setpriv and dbus-daemon; trustd's binaries built in the same profile:
//! `cargo build --release --workspace && cargo bench -p tests --bench flood`.

use std::time::Duration;

use tests::bus::BusPolicy;
use tests::flood::{
    Flood, SHAPES, admin_latencies, cpu_ticks, percentile, private_latencies, usage,
};
use tests::lab::{can_run, lab_policy, serve};

fn main() {
    if !can_run(&["ip", "nft", "setpriv", "dbus-daemon"]) {
        return;
    }
    let (lab, daemon) = serve("bf", lab_policy("direct"), BusPolicy::Shipped);
    let addr = daemon.bus.address.clone();
    let sock = lab.paths().private_socket();
    let t = std::time::Instant::now();
    while !sock.exists() && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let n = 400;
    let timeout = Duration::from_secs(5);
    let idle_p = private_latencies(&sock, n, timeout);
    assert_eq!(
        idle_p.failed, 0,
        "ActivePolicy as root over the private socket: {:?}",
        idle_p.first_error
    );
    let (q50i, q99i) = (percentile(&idle_p.admin, 50), percentile(&idle_p.admin, 99));
    let idle = admin_latencies(&addr, n, timeout);
    assert_eq!(
        idle.failed, 0,
        "ActivePolicy as root: {:?}",
        idle.first_error
    );
    let (p50i, p99i) = (percentile(&idle.admin, 50), percentile(&idle.admin, 99));
    println!("admin call (ActivePolicy as root), {n} calls each:");
    println!(
        "  idle, private socket: p50 {q50i:>7} us  p99 {q99i:>7} us  timeouts {}",
        idle_p.timeouts
    );
    println!(
        "  idle, bus:            p50 {p50i:>7} us  p99 {p99i:>7} us  timeouts {}  (the bus daemon's own GetId: p50 {} us, p99 {} us)",
        idle.timeouts,
        percentile(&idle.bus, 50),
        percentile(&idle.bus, 99)
    );
    #[allow(clippy::cast_precision_loss)]
    let ratio = |a: u64, b: u64| a as f64 / b.max(1) as f64;
    for (pace, what) in [
        (
            "bursts",
            "bursts of 300 calls (20 connections) per client every 500 ms",
        ),
        ("flat", "every client as fast as the bus takes it"),
    ] {
        let (rss0, fds0) = usage(daemon.id());
        let flood = Flood::start_paced(&addr, &SHAPES, 120_000, pace);
        std::thread::sleep(Duration::from_secs(3));
        let (c0, b0, t) = (
            cpu_ticks(daemon.id()),
            cpu_ticks(daemon.bus.pid()),
            std::time::Instant::now(),
        );
        let busy_p = private_latencies(&sock, n, timeout);
        assert_eq!(
            busy_p.failed, 0,
            "ActivePolicy as root over the private socket: {:?}",
            busy_p.first_error
        );
        let busy = admin_latencies(&addr, n, timeout);
        assert_eq!(
            busy.failed, 0,
            "ActivePolicy as root: {:?}",
            busy.first_error
        );
        let secs = t.elapsed().as_secs_f64();
        #[allow(clippy::cast_precision_loss)]
        let share = |a: u64, b: u64| (b - a) as f64 / 100.0 / secs * 100.0;
        let (trustd_cpu, bus_cpu) = (
            share(c0, cpu_ticks(daemon.id())),
            share(b0, cpu_ticks(daemon.bus.pid())),
        );
        let (rss1, fds1) = usage(daemon.id());
        let grouped = flood.grouped();
        drop(flood);
        let (p50f, p99f) = (percentile(&busy.admin, 50), percentile(&busy.admin, 99));
        let (b50, b99) = (percentile(&busy.bus, 50), percentile(&busy.bus, 99));
        println!(
            "  flood ({what}; {} hostile clients: {} shapes x 2 users{}):",
            SHAPES.len() * 2,
            SHAPES.len(),
            if grouped {
                ", sharing one cpu group as user.slice would hold them"
            } else {
                ""
            }
        );
        let (q50f, q99f) = (percentile(&busy_p.admin, 50), percentile(&busy_p.admin, 99));
        println!(
            "    private socket: admin call p50 {q50f:>7} us  p99 {q99f:>7} us  timeouts {}; ratio to idle: p50 {:.1}x, p99 {:.1}x (target p99 <= 10x)",
            busy_p.timeouts,
            ratio(q50f, q50i),
            ratio(q99f, q99i)
        );
        println!(
            "    bus:            admin call p50 {p50f:>7} us  p99 {p99f:>7} us  timeouts {}; ratio to idle: p50 {:.1}x, p99 {:.1}x",
            busy.timeouts,
            ratio(p50f, p50i),
            ratio(p99f, p99i)
        );
        println!(
            "    the bus daemon's own GetId meanwhile: p50 {b50} us, p99 {b99} us; admin call p99 / GetId p99: {:.1}x",
            ratio(p99f, b99)
        );
        println!(
            "    trustd: RSS {rss0} -> {rss1} KiB, fds {fds0} -> {fds1}; CPU trustd {trustd_cpu:.0}% of a core, dbus-daemon {bus_cpu:.0}%"
        );
    }
}
