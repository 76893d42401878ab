//! Lost link notifications (root, in a network namespace the test creates and deletes).
//!
//! The link watcher once ended silently on a receive error: a socket overrun (`ENOBUFS`)
//! after a burst of link changes stopped link tracking for good, and a tunnel going down was
//! never reported. Here a watcher with the smallest receive buffer misses a burst of 300
//! links created and 100 deleted; it must subscribe again, read every link, say what was
//! lost, and keep watching; the device records the gap and ends up with the kernel's links.

mod common;

use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{Netns, TestDevice, can_run_privileged};
use trustd::audit::{Actor, Outcome, read_records};
use trustd::daemon::Device;
use trustd::sys::netlink::{LinkEvent, LinkUpdate, LinkWatcher};

/// The links of the namespace as `ip` lists them: name and whether up with carrier.
fn kernel_links(ns: &Netns) -> std::collections::BTreeMap<String, bool> {
    let out = ns.sh("ip -j link show");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    v.as_array()
        .expect("array")
        .iter()
        .map(|l| {
            let flags: Vec<&str> = l["flags"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|f| f.as_str())
                .collect();
            (
                l["ifname"].as_str().expect("name").to_owned(),
                flags.contains(&"UP") && flags.contains(&"LOWER_UP"),
            )
        })
        .collect()
}

#[test]
fn an_overrun_link_watcher_resubscribes_resyncs_and_the_gap_is_audited() {
    if !can_run_privileged(&["ip"]) {
        return;
    }
    let ns = Netns::new("lw");
    let (tx, rx) = mpsc::channel::<Option<LinkUpdate>>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let path = format!("/run/netns/{}", ns.name);
    let watcher = std::thread::spawn(move || {
        let f = std::fs::File::open(&path).expect("namespace file");
        // SAFETY: setns with an open network namespace descriptor; it changes only this
        // thread's network namespace (its sockets, including the resubscribed one).
        let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        // The smallest buffer the kernel allows: a burst overruns it.
        let w = LinkWatcher::with_receive_buffer(1).expect("subscribe");
        let _ = tx.send(None);
        let _ = go_rx.recv();
        w.run(|u| tx.send(Some(u)).is_ok());
    });
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(5)).expect("ready"),
        None
    );
    // The burst, while the watcher does not read: 150 veth pairs made, 50 of them deleted,
    // one pair up.
    ns.sh(
        "seq 0 149 | sed 's/.*/link add a& type veth peer name b&/' | ip -batch - && \
         seq 0 49 | sed 's/.*/link del a&/' | ip -batch - && \
         ip link set a120 up && ip link set b120 up && ip link set lo up",
    );
    go_tx.send(()).expect("go");
    let start = Instant::now();
    let (links, why, at) = loop {
        let left = Duration::from_secs(10).saturating_sub(start.elapsed());
        match rx.recv_timeout(left).expect("a resync within 10 s") {
            Some(LinkUpdate::Resync { links, why, at }) => break (links, why, at),
            Some(LinkUpdate::Events(_)) | None => {}
        }
    };
    assert!(why.contains("ENOBUFS"), "{why}");
    let expected = kernel_links(&ns);
    assert_eq!(expected.len(), 201, "lo, a50..a149, b50..b149");
    assert_eq!(expected.get("a120"), Some(&true));
    assert_eq!(expected.get("a0"), None);
    let got: std::collections::BTreeMap<String, bool> =
        links.iter().map(|l| (l.name.clone(), l.up)).collect();
    assert_eq!(
        got, expected,
        "the resync read every link as the kernel has it"
    );

    // The device takes the resync: the gap is audited and its links are the kernel's.
    let dev = TestDevice::new();
    let mut d = Device::open(&dev.paths, Actor::this_process()).expect("open");
    d.set_links(&[]);
    d.links_resynced(&links, &why, &at, Actor::this_process())
        .expect("resync");
    assert_eq!(d.links(), &expected);
    let records = read_records(&dev.paths.audit_dir()).expect("audit");
    let gap = records
        .iter()
        .find(|r| r.kind == "network.links")
        .expect("a network.links record");
    assert_eq!(gap.outcome, Outcome::Error);
    let reason = gap.reason.as_deref().unwrap_or_default();
    assert!(
        reason.contains(&format!("link events lost at {at}"))
            && reason.contains("ENOBUFS")
            && reason.contains("resynced from a full link list: 201 link(s)"),
        "{reason}"
    );

    // The watcher still watches, on its new subscription.
    ns.sh("ip link add late type veth peer name late1");
    let start = Instant::now();
    loop {
        let left = Duration::from_secs(10).saturating_sub(start.elapsed());
        let u = rx.recv_timeout(left).expect("the new link is reported");
        let seen = match &u {
            Some(LinkUpdate::Events(ev)) => ev
                .iter()
                .any(|e| matches!(e, LinkEvent::Present(l) if l.name == "late")),
            Some(LinkUpdate::Resync { links, .. }) => links.iter().any(|l| l.name == "late"),
            None => false,
        };
        if seen {
            break;
        }
    }
    // The receiver gone, the next change ends the watcher.
    drop(rx);
    ns.sh("ip link del late");
    let start = Instant::now();
    while !watcher.is_finished() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the watcher did not end"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    watcher.join().expect("watcher");
}
