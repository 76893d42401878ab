//! Real packets for the address rules of signed inputs and the reach of blocklists
//! (docs/SECURITY.md, "Addresses in signed inputs" and "What blocklists may not cut").
//!
//! Each address form is put in a signed feed or policy, applied by the real trustd in a
//! device namespace, and probed over IPv4 and IPv6 sockets (an IPv6 socket connecting to
//! `::ffff:a.b.c.d` sends IPv4 on Linux); the peer namespace counts what arrives. Feeds that
//! list loopback, the whole address space or the policy's endpoints are applied, and
//! loopback and the endpoints the policy names must still pass while the rest is dropped.

use std::io::Read;
use std::process::{Command, Stdio};

use serde_json::{Value, json};
use tests::KillOnDrop;
use tests::bin;
use tests::lab::{Lab, can_run, lab_policy};
use trustd::audit::Actor;
use trustd::daemon::Device;
use trustd::netfilter::NftBackend;
use trustd::timefmt::Timestamp;

const TOOLS: &[&str] = &["ip", "nft", "setpriv"];

fn feed(categories: Value) -> Value {
    json!({
        "schema": "enigm.intel/v1", "serial": 0,
        "issued_at": "2026-01-01T00:00:00Z", "expires_at": "2036-01-01T00:00:00Z",
        "categories": categories
    })
}

/// A policy in `direct` that allows tcp 443 and 80 to the whole lab (both families).
fn open_lab_policy() -> Value {
    let mut p = lab_policy("direct");
    p["network"]["allow"] = json!([
        {"dest": "10.99.0.0/24", "proto": "tcp", "ports": [443, 80]},
        {"dest": "10.97.0.1", "proto": "tcp", "ports": [443]},
        {"dest": "fd99::/64", "proto": "tcp", "ports": [443, 80]}
    ]);
    p
}

/// (target, should get through), probed as root.
fn expect(lab: &Lab, what: &str, cases: &[(&str, bool)]) {
    for (target, want) in cases {
        assert_eq!(
            lab.probe(target, None),
            *want,
            "{what}: {target} should be {}",
            if *want { "reachable" } else { "blocked" }
        );
    }
}

/// Listeners on the device's own loopback (IPv4 and IPv6, TCP and UDP).
fn loopback_listeners(lab: &Lab, ports: &[&str]) -> KillOnDrop {
    let mut c = Command::new("ip")
        .args(["netns", "exec", &lab.dev])
        .arg(bin("netprobe"))
        .arg("serve")
        .args(ports)
        .stdout(Stdio::piped())
        .spawn()
        .expect("netprobe serve");
    let mut ready = [0u8; 6];
    c.stdout
        .take()
        .expect("stdout")
        .read_exact(&mut ready)
        .expect("ready");
    KillOnDrop(Some(c))
}

fn last_record(lab: &Lab, kind: &str) -> trustd::audit::Record {
    trustd::audit::read_records(&lab.paths().audit_dir())
        .expect("audit")
        .into_iter()
        .rev()
        .find(|r| r.kind == kind)
        .unwrap_or_else(|| panic!("no {kind} record"))
}

/// Attack: an intel feed lists `::ffff:10.99.0.3` (an IPv4-mapped address) and a mapped
/// prefix. Before the fix they went into `ipv6_addr` sets that no packet matches, and the
/// addresses stayed reachable over IPv4 and through IPv6 sockets. Each must now block
/// exactly the IPv4 address or prefix it names, whichever socket family is used.
#[test]
fn mapped_addresses_in_a_feed_block_the_ipv4_packets_they_name() {
    if !can_run(TOOLS) {
        return;
    }
    let mut lab = Lab::new("am", false);
    lab.enforce(open_lab_policy());
    expect(
        &lab,
        "before the feed",
        &[
            ("10.99.0.3:443/tcp", true),
            ("[::ffff:10.99.0.3]:443/tcp", true),
            ("10.97.0.1:443/tcp", true),
        ],
    );
    let f = lab.sign_intel(feed(json!({
        "mapped": ["::ffff:10.99.0.3"],
        "mapped-prefix": ["::ffff:10.97.0.0/120"],
        "nat64": ["64:ff9b::10.99.0.2"]
    })));
    lab.load(&f);
    let out = lab.apply();
    assert!(out.contains("blocklists: 3 entries"), "{out}");
    let before = lab.counted("other443");
    expect(
        &lab,
        "with the feed",
        &[
            ("10.99.0.3:443/tcp", false),
            ("[::ffff:10.99.0.3]:443/tcp", false),
            ("10.97.0.1:443/tcp", false),
            ("[::ffff:10.97.0.1]:443/tcp", false),
            // What the feed does not name still passes, over both socket families.
            ("10.99.0.2:443/tcp", true),
            ("[::ffff:10.99.0.2]:443/tcp", true),
            ("[fd99::2]:443/tcp", true),
            ("[fd99::3]:443/tcp", true),
        ],
    );
    assert_eq!(
        lab.counted("other443"),
        before,
        "no packet to the blocked 10.99.0.3:443 reached the peer"
    );
    // The mapped entries are IPv4 elements in the kernel, not IPv6 ones.
    let sets = lab.dev_sh("nft list table inet trustd_intel");
    assert!(sets.contains("10.99.0.3"), "{sets}");
    assert!(sets.contains("10.97.0.0/24"), "{sets}");
    assert!(!sets.contains("::ffff:"), "{sets}");
}

/// Attack: a policy names its destinations in IPv4-mapped form (an allow rule, a mapped
/// prefix, a proxy endpoint, a resolver). Before the fix these compiled to `ip6 daddr
/// ::ffff:...` rules that no packet matches. Each must now allow exactly the IPv4
/// destination it names, reached from IPv4 and IPv6 sockets alike, and nothing more.
#[test]
fn mapped_addresses_in_a_policy_allow_exactly_the_ipv4_destination() {
    if !can_run(TOOLS) {
        return;
    }
    let mut lab = Lab::new("ap", false);
    let mut p = lab_policy("direct");
    p["network"]["allow"] = json!([
        {"dest": "::ffff:10.99.0.2", "proto": "tcp", "ports": [443]},
        {"dest": "::ffff:10.97.0.0/120", "proto": "tcp", "ports": [443]}
    ]);
    p["network"]["dns"]["resolvers"] = json!(["::ffff:10.99.0.2"]);
    lab.enforce(p.clone());
    expect(
        &lab,
        "direct, mapped allow rules",
        &[
            ("10.99.0.2:443/tcp", true),
            ("[::ffff:10.99.0.2]:443/tcp", true),
            ("10.97.0.1:443/tcp", true),
            ("10.99.0.2:53/udp", true),
            ("[::ffff:10.99.0.2]:53/udp", true),
            ("10.99.0.2:80/tcp", false),
            ("10.99.0.3:443/tcp", false),
            ("[::ffff:10.99.0.3]:443/tcp", false),
            ("[fd99::2]:443/tcp", false),
            ("10.99.0.3:53/udp", false),
        ],
    );
    p["network"]["mode"] = json!("proxy-required");
    p["network"]["proxy"] =
        json!({"endpoints": [{"address": "::ffff:10.99.0.2", "proto": "tcp", "port": 3128}]});
    lab.enforce(p);
    expect(
        &lab,
        "proxy-required, mapped endpoint",
        &[
            ("10.99.0.2:3128/tcp", true),
            ("[::ffff:10.99.0.2]:3128/tcp", true),
            ("10.99.0.3:3128/tcp", false),
            ("10.99.0.2:443/tcp", false),
        ],
    );
    for name in ["other443", "tcp80", "otherdns"] {
        assert_eq!(lab.counted(name), 0, "{name}: nothing forbidden arrived");
    }
}

/// Attack: address forms that would match nothing, or something other than what they
/// seem to name (IPv4-compatible, the unspecified address, prefixes spanning the mapped
/// range, host bits set, zone ids, padding). trustd must refuse the signed input with a
/// reason naming the form, and keep the last good one in force.
#[test]
fn address_forms_that_match_nothing_are_refused_and_the_last_good_feed_stays() {
    if !can_run(TOOLS) {
        return;
    }
    let mut lab = Lab::new("ar", false);
    lab.enforce(open_lab_policy());
    let good = lab.sign_intel(feed(json!({"malware": ["10.99.0.3"]})));
    lab.load(&good);
    lab.apply();
    assert!(!lab.probe("10.99.0.3:443/tcp", None));
    for (entry, says) in [
        ("::10.99.0.2", "IPv4-compatible"),
        ("::", "unspecified"),
        ("0.0.0.0", "unspecified"),
        ("::/64", "::ffff:0:0/96"),
        ("::/96", "IPv4-compatible"),
        ("10.99.0.3/16", "host bits"),
        ("fe80::1%dev0", "not an IP address"),
        (" 10.99.0.2", "not an IP address"),
        ("010.99.0.2", "not an IP address"),
    ] {
        let f = lab.sign_intel(feed(json!({"malware": [entry]})));
        let o = Command::new(bin("trustctl"))
            .args(["load", "--prefix"])
            .arg(lab.prefix.path())
            .arg(&f)
            .output()
            .expect("trustctl");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{entry:?} was accepted");
        assert!(err.contains(says), "{entry:?}: {err}");
    }
    // The same forms in a policy are refused too.
    for (field, value) in [
        (
            "allow",
            json!([{"dest": "::10.99.0.2", "proto": "tcp", "ports": [443]}]),
        ),
        (
            "allow",
            json!([{"dest": "10.99.0.2/8", "proto": "tcp", "ports": [443]}]),
        ),
        ("dns", json!({"resolvers": ["::10.99.0.2"]})),
        (
            "inbound",
            json!([{"source": "::/8", "proto": "tcp", "ports": [22]}]),
        ),
    ] {
        let mut p = open_lab_policy();
        p["network"][field] = value;
        let b = lab.sign(p);
        let o = Command::new(bin("trustctl"))
            .args(["load", "--prefix"])
            .arg(lab.prefix.path())
            .arg(&b)
            .output()
            .expect("trustctl");
        assert!(!o.status.success(), "{field} accepted");
    }
    // Nothing changed: the good feed and policy are in force after a restart.
    lab.apply();
    expect(
        &lab,
        "after the refusals",
        &[("10.99.0.3:443/tcp", false), ("10.99.0.2:443/tcp", true)],
    );
}

/// Attack: the intel role signs feeds listing loopback (`127.0.0.0/8`, `::1`) or every
/// address (`0.0.0.0/0`, `::/0`). Before the fix they dropped loopback, and would drop the
/// VPN and proxy endpoints, the resolvers and the bootstrap allowlist that the policy role
/// guarantees. Now those pass in every mode, everything else listed is dropped, and the
/// overlap is reported in the apply output and the audit record.
#[test]
fn a_feed_cannot_cut_loopback_or_the_destinations_the_policy_names() {
    if !can_run(TOOLS) {
        return;
    }
    let mut lab = Lab::new("al", false);
    let _lo = loopback_listeners(
        &lab,
        &[
            "127.0.0.1:7001/tcp",
            "[::1]:7001/tcp",
            "127.0.0.1:7002/udp",
            "127.0.0.2:7003/tcp",
            // Tor's TransPort and DNSPort of the lab policy.
            "127.0.0.1:9040/tcp",
            "127.0.0.1:9053/udp",
        ],
    );
    lab.enforce(lab_policy("direct"));
    let local = [
        ("127.0.0.1:7001/tcp", true),
        ("[::1]:7001/tcp", true),
        ("127.0.0.1:7002/udp", true),
        ("127.0.0.2:7003/tcp", true),
    ];
    expect(&lab, "no feed", &local);

    let f = lab.sign_intel(feed(json!({"local": ["127.0.0.0/8", "::1"]})));
    lab.load(&f);
    let out = lab.apply();
    assert!(out.contains("loopback 2"), "{out}");
    expect(&lab, "loopback feed", &local);

    let f = lab.sign_intel(feed(json!({"everything": ["0.0.0.0/0", "::/0"]})));
    lab.load(&f);
    let out = lab.apply();
    assert!(
        out.contains("loopback 2") && out.contains("resolver 1"),
        "the overlap is reported: {out}"
    );
    let r = last_record(&lab, "intel.enforce");
    assert_eq!(
        r.digests.get("overlap.loopback").map(String::as_str),
        Some("2")
    );
    assert_eq!(
        r.digests.get("overlap.resolver").map(String::as_str),
        Some("1")
    );
    assert!(
        !format!("{r:?}").contains("10.99.0.2"),
        "no address in the audit record"
    );
    expect(&lab, "everything feed, direct", &local);
    expect(
        &lab,
        "everything feed, direct",
        &[
            // The resolver the policy names (replies included).
            ("10.99.0.2:53/udp", true),
            // Allowed by plain allow rules, but listed: dropped.
            ("10.99.0.2:443/tcp", false),
            ("[fd99::2]:443/tcp", false),
            ("10.99.0.2:5353/udp", false),
        ],
    );

    // The other modes: each one's named endpoints pass, the rest is dropped.
    let mut dev = Device::open(&lab.paths(), Actor::this_process()).expect("device");
    let mut nft = NftBackend::in_netns(&lab.dev);
    for (mode, pass, fail) in [
        (
            "proxy-required",
            vec!["10.99.0.2:3128/tcp", "10.99.0.2:53/udp"],
            vec!["10.99.0.2:443/tcp", "10.99.0.2:51820/udp"],
        ),
        (
            "vpn-required",
            vec!["10.99.0.2:51820/udp"],
            vec!["10.99.0.2:3128/tcp", "10.99.0.2:53/udp"],
        ),
        (
            // Regression: other users' TCP and DNS are redirected to Tor's local ports, and
            // the blocklists once saw only the redirect (loopback, exempt), so Tor reached
            // any listed address for them. They judge the destination the packet was sent
            // to: listed, dropped.
            "tor-only",
            vec![],
            vec!["10.99.0.3:443/tcp", "10.99.0.3:53/udp", "[fd99::2]:443/tcp"],
        ),
        (
            "direct",
            vec!["10.99.0.2:53/udp"],
            vec!["10.99.0.2:51820/udp", "10.99.0.2:3128/tcp"],
        ),
    ] {
        let b = lab.sign(lab_policy(mode));
        dev.apply_policy(
            &std::fs::read(&b).expect("bundle"),
            Actor::this_process(),
            Timestamp::now(),
        )
        .expect("policy");
        dev.enforce(&mut nft, Actor::this_process())
            .expect("enforce");
        if mode == "proxy-required" {
            // The first time through the device: the feed goes in with this policy's
            // exemptions; later modes only refill the exemption chains.
            dev.enforce_intel(&mut nft, Actor::this_process())
                .expect("intel");
        }
        for t in &pass {
            assert!(lab.probe(t, None), "{mode}: {t} is named by the policy");
        }
        for t in &fail {
            assert!(!lab.probe(t, None), "{mode}: {t} is listed and not named");
        }
        assert!(lab.probe("127.0.0.1:7001/tcp", None), "{mode}: loopback");
        let overlaps = dev.blocklist_overlaps().expect("overlap reported");
        assert!(overlaps.contains("loopback 2"), "{overlaps}");
    }
    let p = dev.posture(Timestamp::now());
    assert!(
        p.reasons
            .iter()
            .any(|r| r.contains("protected destinations")),
        "posture says so: {:?}",
        p.reasons
    );
    let exempt = last_record(&lab, "intel.exempt");
    assert_eq!(
        exempt.digests.get("overlap.resolver").map(String::as_str),
        Some("1")
    );

    // Lockdown (setup incomplete): the bootstrap allowlist passes, nothing else.
    let mut p = lab_policy("direct");
    p["setup"]["required_steps"] = json!(["eula"]);
    let b = lab.sign(p);
    dev.apply_policy(
        &std::fs::read(&b).expect("bundle"),
        Actor::this_process(),
        Timestamp::now(),
    )
    .expect("policy");
    dev.enforce(&mut nft, Actor::this_process())
        .expect("enforce");
    assert!(lab.probe("10.99.0.2:8443/tcp", None), "bootstrap allowlist");
    assert!(
        !lab.probe("10.99.0.2:53/udp", None),
        "not named in lockdown"
    );
    assert!(lab.probe("[::1]:7001/tcp", None), "loopback in lockdown");
    assert!(
        dev.blocklist_overlaps()
            .is_some_and(|o| o.contains("bootstrap 1")),
        "{:?}",
        dev.blocklist_overlaps()
    );
}

/// Attack: with a blocklist in force, the admin applies a feed over the bus. The overlap
/// with protected destinations must be in what ApplyIntelFeed returns (and trustctl
/// prints) and in posture, not only in the audit log.
#[test]
fn the_overlap_is_reported_by_apply_intel_feed_and_posture() {
    if !can_run(TOOLS) {
        return;
    }
    let (mut lab, daemon) = tests::lab::serve(
        "ab",
        lab_policy("vpn-required"),
        tests::bus::BusPolicy::Shipped,
    );
    let f = lab.sign_intel(feed(
        json!({"bad": ["10.99.0.2", "127.0.0.1", "10.99.0.3"]}),
    ));
    let addr = daemon.bus.address.clone();
    let (notes, reasons) = tests::rt().block_on(async {
        let c = trustd::dbus::client::Client::connect(Some(&addr))
            .await
            .expect("connect");
        let r = c
            .apply_intel_feed(&std::fs::read(&f).expect("feed"))
            .await
            .expect("applied");
        let reasons = c.posture_property("Reasons").await.expect("reasons");
        (r.notes, reasons)
    });
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(
        notes[0].contains("loopback 1") && notes[0].contains("vpn-endpoint 1"),
        "{notes:?}"
    );
    assert!(
        reasons.to_string().contains("vpn-endpoint 1"),
        "posture: {reasons}"
    );
    // The VPN endpoint passes (kill switch with the tunnel down), the other address not.
    assert!(lab.probe("10.99.0.2:51820/udp", None));
    assert!(!lab.probe("10.99.0.3:51820/udp", None));
    let out = Command::new(bin("trustctl"))
        .args(["--bus", &addr, "intel", "apply"])
        .arg(lab.sign_intel(feed(json!({"bad": ["10.99.0.2"]}))))
        .output()
        .expect("trustctl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("vpn-endpoint 1"),
        "trustctl prints it: {text}"
    );
}
