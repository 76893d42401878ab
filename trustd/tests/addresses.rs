//! The address rules of signed inputs (docs/SECURITY.md, "Addresses in signed inputs") and
//! what blocklists may not cut ("What blocklists may not cut"), without root: parsing and
//! translation of every form, the same rules in every policy field, the compiled sets and
//! exemptions, and the overlap counts.

use std::net::IpAddr;

use serde_json::{Value, json};
use trustd::netfilter::{ProtectedKind, compile, compile_intel, protected, render, render_intel};
use trustd::policy::{Cidr, IntelFeed, Overlay, Policy, effective, parse_addr};
use trustd::state::Lifecycle;

fn cidr(s: &str) -> Result<String, String> {
    s.parse::<Cidr>().map(|c| c.to_string())
}

/// Attack: an IPv4-mapped entry (`::ffff:192.0.2.1`) or mapped prefix went into an IPv6 set
/// that no packet matches (Linux sends IPv4 for a mapped address). Each is now held as the
/// IPv4 address or prefix it stands for, prefix length minus 96.
#[test]
fn mapped_forms_become_the_ipv4_they_name() {
    for (text, want) in [
        ("::ffff:192.0.2.1", "192.0.2.1/32"),
        ("::FFFF:192.0.2.1", "192.0.2.1/32"),
        ("::ffff:c000:201", "192.0.2.1/32"),
        ("0:0:0:0:0:ffff:192.0.2.1", "192.0.2.1/32"),
        ("::ffff:192.0.2.1/128", "192.0.2.1/32"),
        ("::ffff:192.0.2.0/120", "192.0.2.0/24"),
        ("::ffff:10.0.0.0/104", "10.0.0.0/8"),
        ("::ffff:0:0/96", "0.0.0.0/0"),
        ("::ffff:127.0.0.1", "127.0.0.1/32"),
    ] {
        assert_eq!(cidr(text).as_deref(), Ok(want), "{text}");
    }
    assert_eq!(
        parse_addr("::ffff:10.99.0.2"),
        Ok(IpAddr::from([10, 99, 0, 2]))
    );
}

/// Attack: forms that match no packet, or more than they seem to name, accepted silently.
/// Each is refused with a reason that names the form.
#[test]
fn forms_that_match_nothing_or_are_ambiguous_are_refused() {
    for (text, says) in [
        // IPv4-compatible (deprecated), in dotted and hex form, and prefixes of them.
        ("::192.0.2.1", "IPv4-compatible"),
        ("::c000:201", "IPv4-compatible"),
        ("0::192.0.2.1", "IPv4-compatible"),
        ("::2", "IPv4-compatible"),
        ("::/96", "IPv4-compatible"),
        ("::/127", "IPv4-compatible"),
        ("::c000:200/120", "IPv4-compatible"),
        // The unspecified address as one address.
        ("::", "unspecified"),
        ("::/128", "unspecified"),
        ("0.0.0.0", "unspecified"),
        ("0.0.0.0/32", "unspecified"),
        // Prefixes wider than /96 that contain the mapped or compatible range.
        ("::/1", "::ffff:0:0/96"),
        ("::/64", "::ffff:0:0/96"),
        ("::/80", "::ffff:0:0/96"),
        ("::fffe:0:0/95", "::ffff:0:0/96"),
        ("::8000:0:0/81", "::ffff:0:0/96"),
        ("::/95", "IPv4-compatible"),
        // Host bits set: an address or its subnet?
        ("10.1.2.3/8", "host bits"),
        ("192.0.2.1/24", "host bits"),
        ("2001:db8::1/64", "host bits"),
        ("::ffff:192.0.2.1/120", "host bits"),
        // Text the strict grammar refuses.
        ("fe80::1%eth0", "not an IP address"),
        (" 192.0.2.1", "not an IP address"),
        ("192.0.2.1 ", "not an IP address"),
        ("192.0.2.1\n", "not an IP address"),
        ("010.0.0.1", "not an IP address"),
        ("0x7f.0.0.1", "not an IP address"),
        ("127.1", "not an IP address"),
        ("2130706433", "not an IP address"),
        ("[::1]", "not an IP address"),
        ("::ffff:1.2.3.4.5", "not an IP address"),
        ("10.0.0.0/", "prefix length"),
        ("10.0.0.0/8/8", "prefix length"),
        ("10.0.0.0/ 8", "prefix length"),
        ("10.0.0.0/08", "prefix length"),
        ("10.0.0.0/+8", "prefix length"),
        ("::/129", "prefix length"),
    ] {
        let err = cidr(text).expect_err(text);
        assert!(err.contains(says), "{text:?}: {err}");
    }
    for text in ["::", "::192.0.2.1", "0.0.0.0", "fe80::1%1", "10.0.0.1/32"] {
        assert!(parse_addr(text).is_err(), "{text} as an endpoint address");
    }
}

/// What stays as written: real IPv6 destinations, embeddings included (they match IPv6
/// packets), loopback, and the whole space of each family.
#[test]
fn real_destinations_are_kept_as_written() {
    for (text, want) in [
        ("::1", "::1/128"),
        ("::/0", "::/0"),
        ("0.0.0.0/0", "0.0.0.0/0"),
        ("127.0.0.0/8", "127.0.0.0/8"),
        ("64:ff9b::192.0.2.1", "64:ff9b::c000:201/128"),
        ("64:ff9b::/96", "64:ff9b::/96"),
        ("64:ff9b:1::/48", "64:ff9b:1::/48"),
        ("2002:c000:201::/48", "2002:c000:201::/48"),
        ("2001::/32", "2001::/32"),
        ("::1:0:0/96", "::1:0:0/96"),
        ("::ffff:0:0:0/96", "::ffff:0:0:0/96"),
        ("2001:DB8::1", "2001:db8::1/128"),
        ("2001:0db8::0001", "2001:db8::1/128"),
        ("fe80::/10", "fe80::/10"),
        ("ff02::1", "ff02::1/128"),
        ("255.255.255.255", "255.255.255.255/32"),
    ] {
        assert_eq!(cidr(text).as_deref(), Ok(want), "{text}");
    }
}

fn policy(network: Value, setup: Value) -> Result<Policy, String> {
    let p = json!({
        "schema": "enigm.policy/v1", "serial": 1,
        "issued_at": "2026-01-01T00:00:00Z", "expires_at": "2036-01-01T00:00:00Z",
        "network": network, "setup": setup
    });
    let p: Policy = serde_json::from_value(p).map_err(|e| e.to_string())?;
    p.validate()?;
    Ok(p)
}

/// Every field of a policy that holds an address or a prefix follows the same rules: the
/// mapped form is held as IPv4, the compatible form is refused.
#[test]
fn every_policy_address_field_follows_the_same_rules() {
    let p = policy(
        json!({
            "mode": "vpn-required",
            "vpn": {"interfaces": ["wg0"], "endpoints": [{"address": "::ffff:198.51.100.1", "proto": "udp", "port": 51820}]},
            "proxy": {"endpoints": [{"address": "::ffff:198.51.100.2", "proto": "tcp", "port": 3128}]},
            "allow": [{"dest": "::ffff:192.0.2.0/120", "proto": "tcp", "ports": [443]}],
            "dns": {"resolvers": ["::ffff:198.51.100.53"]},
            "inbound": [{"source": "::ffff:203.0.113.7", "proto": "tcp", "ports": [22]}]
        }),
        json!({"bootstrap_allow": [{"dest": "::ffff:198.51.100.9", "proto": "tcp", "ports": [443]}]}),
    )
    .expect("mapped forms are accepted");
    let n = &p.network;
    let v4 = |s: &str| s.parse::<IpAddr>().expect("ip");
    assert_eq!(
        n.vpn.as_ref().expect("vpn").endpoints[0].address,
        v4("198.51.100.1")
    );
    assert_eq!(
        n.proxy.as_ref().expect("proxy").endpoints[0].address,
        v4("198.51.100.2")
    );
    assert_eq!(n.allow[0].dest.to_string(), "192.0.2.0/24");
    assert_eq!(n.dns.resolvers, [v4("198.51.100.53")]);
    assert_eq!(
        n.inbound[0].source.expect("source").to_string(),
        "203.0.113.7/32"
    );
    assert_eq!(
        p.setup.bootstrap_allow[0].dest.to_string(),
        "198.51.100.9/32"
    );
    // The compiled rules name IPv4 (`ip daddr`), never `ip6 daddr ::ffff:`.
    let eff = effective(
        Some(&p),
        Overlay {
            privacy: false,
            completed_steps: &Default::default(),
            lifecycle: Lifecycle::Enrolled,
        },
    );
    let text = render(&compile(&eff)).to_string();
    assert!(!text.contains("::ffff"), "{text}");
    assert!(text.contains("198.51.100.1"), "{text}");

    let bad = [
        (
            json!({"mode": "direct", "allow": [{"dest": "::198.51.100.1", "proto": "any"}]}),
            json!({}),
        ),
        (
            json!({"mode": "direct", "allow": [{"dest": "192.0.2.1/24", "proto": "any"}]}),
            json!({}),
        ),
        (
            json!({"mode": "direct", "dns": {"resolvers": ["::198.51.100.53"]}}),
            json!({}),
        ),
        (
            json!({"mode": "direct", "dns": {"resolvers": ["0.0.0.0"]}}),
            json!({}),
        ),
        (
            json!({"mode": "direct", "inbound": [{"source": "::/64", "proto": "tcp", "ports": [22]}]}),
            json!({}),
        ),
        (
            json!({"mode": "proxy-required", "proxy": {"endpoints": [{"address": "::", "proto": "tcp", "port": 3128}]}}),
            json!({}),
        ),
        (
            json!({"mode": "vpn-required", "vpn": {"interfaces": ["wg0"], "endpoints": [{"address": "::c633:6401", "proto": "udp", "port": 1}]}}),
            json!({}),
        ),
        (
            json!({"mode": "direct"}),
            json!({"bootstrap_allow": [{"dest": "::ffff:0:0/95", "proto": "tcp", "ports": [443]}]}),
        ),
    ];
    for (network, setup) in bad {
        assert!(
            policy(network.clone(), setup.clone()).is_err(),
            "accepted {network} {setup}"
        );
    }
}

fn feed(categories: Value) -> Result<IntelFeed, String> {
    let f = json!({
        "schema": "enigm.intel/v1", "serial": 1,
        "issued_at": "2026-01-01T00:00:00Z", "expires_at": "2036-01-01T00:00:00Z",
        "categories": categories
    });
    serde_json::from_value(f).map_err(|e| e.to_string())
}

/// The shipped example's mapped entry lands in an IPv4 set; no IPv6 set holds a mapped one.
#[test]
fn the_compiled_feed_puts_mapped_entries_in_ipv4_sets() {
    let f = feed(json!({"a": ["::ffff:192.0.2.1", "::ffff:198.51.100.0/120", "2001:db8::1"]}))
        .expect("feed");
    let rs = compile_intel(Some(&f));
    let text = render_intel(&rs);
    assert!(!text.contains("::ffff"), "{text}");
    let v: Value = serde_json::from_str(&text).expect("json");
    let elems = |name: &str| -> String {
        v["nftables"]
            .as_array()
            .expect("cmds")
            .iter()
            .filter_map(|c| c.get("add").and_then(|a| a.get("element")))
            .filter(|e| e["name"] == name)
            .map(|e| e["elem"].to_string())
            .collect()
    };
    assert!(elems("c0_v4h").contains("192.0.2.1"));
    assert!(elems("c0_v4n").contains("198.51.100.0"));
    assert!(elems("c0_v6h").contains("2001:db8::1"));
}

fn lab_like(mode: &str, steps: &[&str]) -> Policy {
    policy(
        json!({
            "mode": mode,
            "vpn": {"interfaces": ["wg0"], "endpoints": [{"address": "198.51.100.1", "proto": "udp", "port": 51820}]},
            "proxy": {"endpoints": [{"address": "198.51.100.2", "proto": "tcp", "port": 3128}]},
            "tor": {"uid": 1235, "trans_port": 9040, "dns_port": 9053},
            "allow": [{"dest": "0.0.0.0/0", "proto": "tcp", "ports": [443]}],
            "dns": {"resolvers": ["198.51.100.53"]}
        }),
        json!({"required_steps": steps, "bootstrap_allow": [{"dest": "198.51.100.9", "proto": "tcp", "ports": [443]}]}),
    )
    .expect("policy")
}

fn kinds(p: &Policy) -> Vec<(ProtectedKind, String)> {
    let eff = effective(
        Some(p),
        Overlay {
            privacy: false,
            completed_steps: &Default::default(),
            lifecycle: Lifecycle::Enrolled,
        },
    );
    let mut v: Vec<_> = protected(&eff)
        .into_iter()
        .map(|x| (x.kind, x.dest.to_string()))
        .collect();
    v.dedup();
    v
}

/// Which destinations each mode protects from the blocklists: the ones it names and its
/// table accepts; never the plain allow rules (here 0.0.0.0/0 tcp 443).
#[test]
fn each_mode_protects_the_destinations_it_names_and_not_its_allow_rules() {
    use ProtectedKind::*;
    let s = |k, d: &str| (k, d.to_owned());
    assert_eq!(
        kinds(&lab_like("direct", &[])),
        [s(Resolver, "198.51.100.53/32")]
    );
    assert_eq!(
        kinds(&lab_like("vpn-required", &[])),
        [
            s(VpnEndpoint, "198.51.100.1/32"),
            s(Resolver, "198.51.100.53/32")
        ]
    );
    assert_eq!(
        kinds(&lab_like("proxy-required", &[])),
        [
            s(ProxyEndpoint, "198.51.100.2/32"),
            s(Resolver, "198.51.100.53/32")
        ]
    );
    assert_eq!(kinds(&lab_like("tor-only", &[])), []);
    assert_eq!(
        kinds(&lab_like("direct", &["eula"])),
        [s(Bootstrap, "198.51.100.9/32")]
    );
}

/// Overlaps are counted per kind: a compiled entry (a prefix nested in a wider one of its
/// category is not one) counts once per kind it touches; entries elsewhere count nothing.
#[test]
fn overlaps_are_counted_by_kind() {
    let p = lab_like("vpn-required", &[]);
    let eff = effective(
        Some(&p),
        Overlay {
            privacy: false,
            completed_steps: &Default::default(),
            lifecycle: Lifecycle::Enrolled,
        },
    );
    let f = feed(json!({
        "a": ["0.0.0.0/0", "::/0", "127.0.0.1", "203.0.113.1"],
        "b": ["::ffff:198.51.100.1"],
        "c": ["198.51.100.0/24"]
    }))
    .expect("feed");
    let mut rs = compile_intel(Some(&f));
    rs.protected = protected(&eff);
    let o = rs.overlaps();
    assert_eq!(o.get(&ProtectedKind::Loopback), Some(&3));
    assert_eq!(o.get(&ProtectedKind::VpnEndpoint), Some(&3));
    assert_eq!(o.get(&ProtectedKind::Resolver), Some(&2));
    assert_eq!(o.get(&ProtectedKind::ProxyEndpoint), None);
    // The exemptions come before every drop rule of each base chain.
    let text = render_intel(&rs);
    let v: Value = serde_json::from_str(&text).expect("json");
    for chain in ["output", "input"] {
        let rules: Vec<String> = v["nftables"]
            .as_array()
            .expect("cmds")
            .iter()
            .filter_map(|c| c.get("add").and_then(|a| a.get("rule")))
            .filter(|r| r["chain"] == chain)
            .map(|r| r["expr"].to_string())
            .collect();
        let jump = rules
            .iter()
            .position(|r| r.contains("\"jump\""))
            .expect("jump");
        let first_drop = rules
            .iter()
            .position(|r| r.contains("\"drop\""))
            .expect("drop");
        assert!(jump < first_drop, "{chain}: {rules:?}");
        assert!(
            rules[0].contains("{\"key\":\"oif\"}") || rules[0].contains("{\"key\":\"iif\"}"),
            "{chain}: loopback (by interface index) first: {}",
            rules[0]
        );
    }
}

/// Regression (found in review). The read-back of the blocklist table compared rules sorted,
/// so a table whose set-drop rules were moved in front of the loopback, link and exemption
/// accepts read back as intact; where the read-back decides (repeated edits, the watcher
/// stopped, the periodic backstop) a feed then cut loopback and the policy's endpoints with
/// nothing audited. Rules are now compared in order, chain by chain.
#[test]
fn a_blocklist_drop_moved_before_the_exemptions_does_not_read_back_as_intact() {
    use trustd::netfilter::{compile_intel, render_intel, verify_intel_listing};
    use trustd::policy::IntelFeed;
    let feed: IntelFeed = serde_json::from_value(json!({
        "schema": "enigm.intel/v1", "serial": 1,
        "issued_at": "2026-01-01T00:00:00Z", "expires_at": "2036-01-01T00:00:00Z",
        "categories": {"all": ["0.0.0.0/0"]}
    }))
    .expect("feed");
    let rs = compile_intel(Some(&feed));
    let script: Value = serde_json::from_str(&render_intel(&rs)).expect("json");
    // The script's objects as `nft -j list table` shows them (elements inside their set).
    let mut objs: Vec<Value> = Vec::new();
    for c in script["nftables"].as_array().expect("cmds") {
        let Some(add) = c.get("add") else { continue };
        if let Some(e) = add.get("element") {
            let set = objs
                .iter_mut()
                .find(|o| o.get("set").is_some_and(|s| s["name"] == e["name"]))
                .expect("set declared before its elements");
            set["set"]["elem"] = e["elem"].clone();
        } else if add.get("table").is_none() {
            objs.push(add.clone());
        }
    }
    let listing = |objs: &[Value]| json!({"nftables": objs}).to_string();
    verify_intel_listing(&rs, &listing(&objs)).expect("the table as applied reads back");
    // Move the output chain's set-drop rule in front of the chain's first rule.
    let is_out = |o: &Value| o.get("rule").is_some_and(|r| r["chain"] == "output");
    let first = objs.iter().position(is_out).expect("output rules");
    let drop = objs
        .iter()
        .position(|o| is_out(o) && o.to_string().contains("\"@c0_"))
        .expect("set rule");
    let r = objs.remove(drop);
    objs.insert(first, r);
    assert!(
        verify_intel_listing(&rs, &listing(&objs)).is_err(),
        "a blocklist drop moved before `oifname lo accept` reads back as intact"
    );
}

/// Regression (found in review). The blocklists must not cut the policy-named endpoints and
/// their replies, but the reply exemption (`ct state established,related ip6 saddr E udp
/// sport P`) never matches an ICMP error, and errors from routers on the path come from other
/// addresses: a feed listing `::/0` (or the routers) dropped Packet Too Big / frag-needed for
/// the VPN endpoint's flow, a path MTU black hole.
#[test]
fn icmp_errors_of_protected_flows_pass_the_blocklists() {
    use trustd::netfilter::{compile_intel, protected, render_intel};
    use trustd::policy::IntelFeed;
    let p = policy(
        json!({"mode": "vpn-required", "vpn": {"interfaces": ["wg0"],
               "endpoints": [{"address": "2001:db8:2::1", "proto": "udp", "port": 51820}]}}),
        json!({}),
    )
    .expect("policy");
    let done = Default::default();
    let eff = effective(
        Some(&p),
        Overlay {
            privacy: false,
            completed_steps: &done,
            lifecycle: Lifecycle::Enrolled,
        },
    );
    let feed: IntelFeed = serde_json::from_value(json!({
        "schema": "enigm.intel/v1", "serial": 1,
        "issued_at": "2026-01-01T00:00:00Z", "expires_at": "2036-01-01T00:00:00Z",
        "categories": {"all": ["::/0", "0.0.0.0/0"]}
    }))
    .expect("feed");
    let mut rs = compile_intel(Some(&feed));
    rs.protected = protected(&eff);
    let v: Value = serde_json::from_str(&render_intel(&rs)).expect("json");
    let input: Vec<String> = v["nftables"]
        .as_array()
        .expect("cmds")
        .iter()
        .filter_map(|c| c.get("add").and_then(|a| a.get("rule")))
        .filter(|r| r["chain"] == "input" || r["chain"] == "exempt_in")
        .map(|r| format!("{} {}", r["chain"], r["expr"]))
        .collect();
    eprintln!("{}", input.join("\n"));
    assert!(
        input
            .iter()
            .any(|r| r.contains("related") && !r.contains("sport")),
        "no rule lets ICMP errors about protected flows through the blocklists"
    );
}
