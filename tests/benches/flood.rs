//! An admin call's latency (`ActivePolicy` as root, an engine round trip) idle and while
//! ordinary users flood trustd's bus service with every hostile shape of the `flood` binary,
//! in the same run on the same private bus with the shipped policy. Prints p50 and p99 of
//! each and their ratio (target: p99 under the flood at most 10x idle, no call timing out).
//!
//! Needs root, nft, ip, setpriv and dbus-daemon; trustd's binaries built in the same profile:
//! `cargo build --release --workspace && cargo bench -p tests --bench flood`.

use std::time::Duration;

use tests::bus::BusPolicy;
use tests::flood::{Flood, SHAPES, admin_latencies, percentile, usage};
use tests::lab::{can_run, lab_policy, serve};

fn main() {
    if !can_run(&["ip", "nft", "setpriv", "dbus-daemon"]) {
        return;
    }
    let (_lab, daemon) = serve("bf", lab_policy("direct"), BusPolicy::Shipped);
    let addr = daemon.bus.address.clone();
    let n = 400;
    let timeout = Duration::from_secs(5);
    let idle = admin_latencies(&addr, n, timeout);
    let (rss0, fds0) = usage(daemon.id());
    let flood = Flood::start(&addr, &SHAPES, 120_000);
    std::thread::sleep(Duration::from_secs(3));
    let busy = admin_latencies(&addr, n, timeout);
    let (rss1, fds1) = usage(daemon.id());
    drop(flood);
    let (p50i, p99i) = (percentile(&idle.admin, 50), percentile(&idle.admin, 99));
    let (p50f, p99f) = (percentile(&busy.admin, 50), percentile(&busy.admin, 99));
    println!("admin call (ActivePolicy as root), {n} calls each:");
    println!(
        "  idle:        p50 {p50i:>7} us  p99 {p99i:>7} us  timeouts {}",
        idle.timeouts
    );
    println!(
        "  under flood: p50 {p50f:>7} us  p99 {p99f:>7} us  timeouts {}  ({} hostile clients: {} shapes x 2 users)",
        busy.timeouts,
        SHAPES.len() * 2,
        SHAPES.len()
    );
    println!(
        "  baseline, the bus daemon's own GetId: idle p50 {} us p99 {} us; under flood p50 {} us p99 {} us",
        percentile(&idle.bus, 50),
        percentile(&idle.bus, 99),
        percentile(&busy.bus, 50),
        percentile(&busy.bus, 99)
    );
    #[allow(clippy::cast_precision_loss)]
    let ratio = |a: u64, b: u64| a as f64 / b.max(1) as f64;
    println!(
        "  ratio flood/idle: p50 {:.1}x, p99 {:.1}x (target p99 <= 10x)",
        ratio(p50f, p50i),
        ratio(p99f, p99i)
    );
    println!("  trustd: RSS {rss0} -> {rss1} KiB, fds {fds0} -> {fds1}");
}
