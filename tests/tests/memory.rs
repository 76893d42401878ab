//! trustd's memory stays bounded: its resident set (and that of the `nft` children it starts,
//! which the service's cgroup and so `MemoryMax=` also count) measured idle, while a
//! 100,000-entry intel feed is applied over the bus, and under the flood of hostile bus
//! clients; each stays under the budget the shipped unit's `MemoryMax=` is sized from
//! (systemd/trustd.service), so that the limit only ever stops a runaway.

use std::time::{Duration, Instant};

use tests::bus::BusPolicy;
use tests::flood::{Flood, SHAPES, usage};
use tests::lab::{can_run, lab_policy, serve};

/// What trustd alone may hold at its peak (VmHWM), in KiB.
const TRUSTD_BUDGET_KIB: u64 = 96 * 1024;
/// What trustd and its largest `nft` child may hold together at their peaks, in KiB: the
/// unit's `MemoryMax=` (256 MiB) leaves head room over this.
const SERVICE_BUDGET_KIB: u64 = 192 * 1024;

/// A process's `VmHWM` (peak resident set) in KiB, 0 if it is gone.
fn peak(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

#[test]
fn trustd_memory_stays_within_its_budget_idle_with_a_100k_feed_and_under_a_flood() {
    if !can_run(&["ip", "nft", "setpriv", "dbus-daemon"]) {
        return;
    }
    let (mut lab, daemon) = serve("mem", lab_policy("direct"), BusPolicy::Shipped);
    let addr = daemon.bus.address.clone();
    let pid = daemon.id();
    std::thread::sleep(Duration::from_secs(2));
    let (idle, _) = usage(pid);

    // The feed over the bus, as an admin would send it; the nft children watched meanwhile.
    let f = lab.sign_intel(tests::lab::feed_100k());
    let envelope = std::fs::read(&f).expect("feed");
    let applying = std::thread::spawn(move || {
        tests::rt().block_on(async {
            let c = trustd::dbus::client::Client::connect(Some(&addr))
                .await
                .expect("connect");
            c.apply_intel_feed(&envelope).await
        })
    });
    let t = Instant::now();
    let mut nft_peak = 0;
    while !applying.is_finished() {
        for child in tests::flood::children(pid) {
            nft_peak = nft_peak.max(peak(child));
        }
        std::thread::sleep(Duration::from_millis(5));
        assert!(t.elapsed() < Duration::from_secs(120), "feed not applied");
    }
    let applied = applying.join().expect("thread");
    assert!(applied.is_ok(), "100k feed refused: {applied:?}");
    let took = t.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    let (with_feed, _) = usage(pid);
    let peak_feed = peak(pid);

    // The flood of hostile clients, with the feed in force.
    let flood = Flood::start(&daemon.bus.address, &SHAPES, 15_000);
    let mut flood_max = 0;
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(15) {
        flood_max = flood_max.max(usage(pid).0);
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(flood);
    let peak_all = peak(pid);
    eprintln!(
        "trustd RSS: idle {idle} KiB; 100k feed applied in {took:?}: {with_feed} KiB after, peak {peak_feed} KiB, largest nft child peak {nft_peak} KiB; under the flood at most {flood_max} KiB; lifetime peak {peak_all} KiB"
    );
    assert!(nft_peak > 0, "the nft child was not seen");
    assert!(
        peak_all <= TRUSTD_BUDGET_KIB,
        "trustd peaked at {peak_all} KiB, over its {TRUSTD_BUDGET_KIB} KiB budget"
    );
    assert!(
        peak_all + nft_peak <= SERVICE_BUDGET_KIB,
        "trustd ({peak_all} KiB) and nft ({nft_peak} KiB) together over {SERVICE_BUDGET_KIB} KiB"
    );
}
