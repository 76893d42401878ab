//! D-Bus throughput and latency of trustd, against a baseline measured in the same run on
//! the same private bus.
//!
//! - Posture property reads per second (`Properties.Get` of `Level`), one at a time and 16 in
//!   flight, beside a trivial zbus service with one string property (this binary, re-run as
//!   `--serve-trivial ADDRESS`, so both services are separate processes).
//! - The time from `SetPrivacyMode` to its reply (sent only after the new ruleset is read
//!   back from the kernel) and to the `PropertiesChanged` signal.
//!
//! Needs root, nft, ip and dbus-daemon; trustd's binaries built in the same profile:
//! `cargo build --release --workspace && cargo bench -p tests --bench dbus`.

use std::time::{Duration, Instant};

use tests::bus::{Bus, BusPolicy};
use tests::lab::{Lab, can_run, lab_policy};
use trustd::dbus::client::Client;
use zbus::Connection;

const TRIVIAL: &str = "org.enigm.Bench";
const TRIVIAL_PATH: &str = "/org/enigm/Bench";
const TRIVIAL_IFACE: &str = "org.enigm.Bench1";

struct Trivial;

#[zbus::interface(name = "org.enigm.Bench1")]
impl Trivial {
    #[zbus(property)]
    fn value(&self) -> String {
        "trusted".to_owned()
    }
}

/// Two workers, as trustd has: for the trivial service and for the client.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn serve_trivial(address: &str) {
    let rt = runtime();
    rt.block_on(async {
        let _conn = zbus::connection::Builder::address(address)
            .serve_at(TRIVIAL_PATH, Trivial)
            .name(TRIVIAL)
            .build()
            .await
            .expect("serve");
        std::future::pending::<()>().await;
    });
}

async fn get(
    conn: &Connection,
    dest: &str,
    path: &str,
    iface: &str,
    prop: &str,
) -> zbus::Result<zbus::Message> {
    conn.call_method(
        Some(dest),
        path,
        Some("org.freedesktop.DBus.Properties"),
        "Get",
        &(iface, prop),
    )
    .await
}

/// Reads per second: `n` calls, `inflight` at a time, over one connection.
async fn rate(
    conn: &Connection,
    target: (&'static str, &'static str, &'static str, &'static str),
    n: usize,
    inflight: usize,
) -> f64 {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..inflight {
        let c = conn.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..n / inflight {
                get(&c, target.0, target.1, target.2, target.3)
                    .await
                    .expect("Get");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    (n / inflight * inflight) as f64 / start.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--serve-trivial") {
        serve_trivial(&args[2]);
        return;
    }
    if !can_run(&["ip", "nft", "dbus-daemon"]) {
        return;
    }
    let mut lab = Lab::new("bd", false);
    let b = lab.sign(lab_policy("direct"));
    lab.load(&b);
    let bus = Bus::start(
        BusPolicy::Shipped,
        r#"<policy context="default"><allow own="org.enigm.Bench"/><allow send_destination="org.enigm.Bench"/></policy>"#,
    );
    let addr = bus.address.clone();
    let daemon = lab.run_daemon_on_bus(bus, 1000);
    let me = std::env::current_exe().expect("exe");
    let trivial = tests::KillOnDrop(Some(
        std::process::Command::new(me)
            .args(["--serve-trivial", &addr])
            .spawn()
            .expect("trivial service"),
    ));

    let rt = runtime();
    rt.block_on(async {
        let client = Client::connect(Some(&addr)).await.expect("connect");
        let conn = client.connection().clone();
        let start = Instant::now();
        loop {
            let ok_t = client.posture_property("Level").await.is_ok();
            let ok_b = get(&conn, TRIVIAL, TRIVIAL_PATH, TRIVIAL_IFACE, "Value")
                .await
                .is_ok();
            if ok_t && ok_b {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "services not up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let posture = (
            trustd::dbus::BUS_NAME,
            trustd::dbus::OBJECT_PATH,
            "org.enigm.Trust1.Posture",
            "Level",
        );
        let baseline = (TRIVIAL, TRIVIAL_PATH, TRIVIAL_IFACE, "Value");
        let n = 4000;
        for inflight in [1usize, 16] {
            // Warm up both, then alternate rounds so that drift of the machine hits both.
            rate(&conn, posture, n / 4, inflight).await;
            rate(&conn, baseline, n / 4, inflight).await;
            let (mut t, mut b) = (Vec::new(), Vec::new());
            for _ in 0..5 {
                t.push(rate(&conn, posture, n, inflight).await);
                b.push(rate(&conn, baseline, n, inflight).await);
            }
            let (t, b) = (median(t), median(b));
            println!(
                "posture reads, {inflight:>2} in flight: trustd {t:>7.0}/s, trivial zbus service {b:>7.0}/s: {:.2}x (target 0.90x)",
                t / b
            );
        }

        // Privacy mode: call -> reply (ruleset read back from the kernel) -> signal.
        let mut changes = client.posture_changes().await.expect("subscribe");
        let (mut replies, mut signals) = (Vec::new(), Vec::new());
        for i in 0..20 {
            let on = i % 2 == 0;
            let t0 = Instant::now();
            client.set_privacy_mode(on).await.expect("privacy");
            replies.push(t0.elapsed().as_secs_f64() * 1e3);
            loop {
                let ch = tokio::time::timeout(Duration::from_secs(5), changes.next())
                    .await
                    .expect("signal within 5 s")
                    .expect("stream");
                if ch.iter().any(|(k, _)| k == "PrivacyMode") {
                    break;
                }
            }
            signals.push(t0.elapsed().as_secs_f64() * 1e3);
        }
        println!(
            "privacy mode: reply with the new ruleset read back from the kernel, median {:.1} ms (max {:.1}); PropertiesChanged received, median {:.1} ms (max {:.1})",
            median(replies.clone()),
            replies.iter().copied().fold(0.0, f64::max),
            median(signals.clone()),
            signals.iter().copied().fold(0.0, f64::max),
        );
    });
    drop(trivial);
    drop(daemon);
}
