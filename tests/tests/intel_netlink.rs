//! The blocklist table built over nf_tables netlink by trustd itself, in namespaces the
//! tests create and delete: admins' tools (`nft -j list`) see exactly what the `nft` JSON
//! path puts there, real packets to listed addresses and prefixes are dropped, and element
//! updates (interval deletions included) move the kernel to the new feed in one step.

use std::process::Command;

use serde_json::{Value, json};
use tests::lab::{Lab, Netns, can_run, lab_policy};
use trustd::audit::{Actor, read_records};
use trustd::daemon::Device;
use trustd::netfilter::{
    Backend, INTEL_TABLE, IntelNetlink, L4, Match, NftBackend, NftError, Protected, ProtectedKind,
    TEMPLATE_TABLE, apply_intel, check_intel, compile_intel, intel_chains_intact,
    intel_quick_intact, update_exemptions, verify_intel_listing,
};

const TOOLS: &[&str] = &["ip", "nft"];

fn feed(malware: &[&str], trackers: &[&str]) -> Value {
    json!({
        "schema": "enigm.intel/v1", "serial": 0,
        "issued_at": "2026-01-01T00:00:00Z", "expires_at": "2036-01-01T00:00:00Z",
        "categories": {"malware": malware, "trackers": trackers}
    })
}

/// `nft -j list table inet trustd_intel` in `ns`, without handles, set elements sorted,
/// and without the table's flags (the table built over netlink is owned by trustd's
/// socket; `nft -f` cannot make an owned table that outlives it: see [`table_flags`]).
fn listing(ns: &str) -> Value {
    let mut v = listing_with_flags(ns);
    for item in v["nftables"].as_array_mut().expect("list") {
        if let Some(t) = item.get_mut("table").and_then(Value::as_object_mut) {
            t.remove("flags");
        }
    }
    v
}

/// The blocklist table's flags as `nft -j list` shows them (`[]` when none).
fn table_flags(ns: &str) -> Value {
    let v = listing_with_flags(ns);
    v["nftables"]
        .as_array()
        .expect("list")
        .iter()
        .find_map(|i| i.get("table"))
        .and_then(|t| t.get("flags").cloned())
        .unwrap_or_else(|| json!([]))
}

/// A small feed compiled: addresses and a prefix in `malware` (sets c0_v4h, c0_v4n,
/// c0_v6h), one address in `trackers` (c1_v4h).
fn small_feed() -> trustd::netfilter::IntelRuleset {
    let f: trustd::policy::IntelFeed = serde_json::from_value(feed(
        &["10.99.0.3", "10.99.0.4", "198.51.100.0/24", "fd99::3"],
        &["203.0.113.7"],
    ))
    .expect("feed");
    compile_intel(Some(&f))
}

/// `nft OPTS list table inet trustd_intel` in `ns`: its output (it must succeed).
fn list_intel(ns: &str, opts: &[&str]) -> Vec<u8> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "nft"])
        .args(opts)
        .args(["list", "table", "inet", INTEL_TABLE])
        .output()
        .expect("nft");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// [`listing`] with the table's flags.
fn listing_with_flags(ns: &str) -> Value {
    let mut v: Value = serde_json::from_slice(&list_intel(ns, &["-j"])).expect("json");
    for item in v["nftables"].as_array_mut().expect("list") {
        for (_, inner) in item.as_object_mut().expect("object").iter_mut() {
            if let Some(o) = inner.as_object_mut() {
                // Handles are the kernel's; counters move with traffic.
                o.remove("handle");
                o.remove("packets");
                o.remove("bytes");
                o.remove("version");
                o.remove("release_name");
                if let Some(Value::Array(e)) = o.get_mut("elem") {
                    e.sort_by_key(Value::to_string);
                }
            }
        }
    }
    v
}

#[test]
fn the_table_built_over_netlink_lists_as_nft_builds_it_and_drops_real_packets() {
    if !can_run(TOOLS) {
        return;
    }
    let mut lab = Lab::new("n", false);
    let mut p = lab_policy("direct");
    p["network"]["allow"] = json!([{"dest": "10.0.0.0/8", "proto": "tcp", "ports": [443, 80]}]);
    lab.enforce(p);
    assert!(lab.probe("10.99.0.3:443/tcp", None) && lab.probe("10.97.0.1:443/tcp", None));

    // Every kind of element: v4 and v6 addresses, prefixes (one reaching the top of the
    // IPv4 space, which has no end element), nested prefixes (dropped when compiled).
    let malware = [
        "10.99.0.3",
        "192.0.2.7",
        "fd99::3",
        "2001:db8::1",
        "198.51.100.0/24",
        "198.51.100.128/25",
        "255.255.255.0/24",
        "2001:db8:1::/48",
    ];
    let trackers = ["10.97.0.0/24", "203.0.113.0/28"];
    let f = lab.sign_intel(feed(&malware, &trackers));
    lab.load(&f);
    let mut dev = Device::open(&lab.paths(), Actor::this_process()).expect("device");
    let mut nl = NftBackend::in_netns(&lab.dev);
    dev.enforce(&mut nl, Actor::this_process())
        .expect("enforce");
    dev.enforce_intel(&mut nl, Actor::this_process())
        .expect("blocklists over netlink");
    // Owned by trustd's socket, kept when it closes (`persist`, which nft 1.0.6 names
    // "unknown"): the only difference from the table `nft -f` builds.
    assert_eq!(
        table_flags(&lab.dev)[0],
        "owner",
        "the table built over netlink is owned by trustd's socket"
    );

    // The same compiled table through `nft -f` (the JSON path) in another namespace.
    let other = Netns::new("tnl", "j");
    let rs = compile_intel(Some(dev.intel().expect("feed").payload()));
    let mut rs_protected = rs.clone();
    rs_protected.protected = trustd::netfilter::protected(&dev.effective());
    let mut json_path = NftBackend::in_netns(&other.0).without_netlink();
    apply_intel(&mut json_path, &rs_protected).expect("nft JSON path");
    let (held, want) = (listing(&lab.dev), listing(&other.0));
    assert_eq!(
        held, want,
        "nft -j list shows the table built over netlink as the one nft builds"
    );
    let text = serde_json::to_string(&held).expect("json");
    verify_intel_listing(&rs_protected, &text).expect("the listing holds the compiled table");

    assert!(
        !lab.probe("10.99.0.3:443/tcp", None),
        "a listed address is dropped"
    );
    assert!(
        !lab.probe("10.97.0.1:443/tcp", None),
        "a listed prefix is dropped"
    );
    assert!(lab.probe("10.99.0.2:443/tcp", None), "others pass");

    // An update that adds an address and removes a prefix: element batches, no replace.
    let malware2 = [&malware[..], &["10.99.0.2"]].concat();
    let f = lab.sign_intel(feed(&malware2, &trackers[1..]));
    dev.apply_intel(
        &std::fs::read(&f).expect("feed"),
        Actor::this_process(),
        trustd::timefmt::Timestamp::now(),
    )
    .expect("feed accepted");
    dev.enforce_intel(&mut nl, Actor::this_process())
        .expect("update");
    let records = read_records(&lab.paths().audit_dir()).expect("audit");
    let last = records
        .iter()
        .rev()
        .find(|r| r.kind == "intel.enforce")
        .expect("record");
    assert!(
        last.reason
            .as_deref()
            .unwrap_or("")
            .ends_with("table updated"),
        "{:?}",
        last.reason
    );
    assert!(
        !lab.probe("10.99.0.2:443/tcp", None),
        "the added address is dropped"
    );
    assert!(
        lab.probe("10.97.0.1:443/tcp", None),
        "the removed prefix passes again (deleted from its interval set)"
    );
    let rs2 = compile_intel(Some(dev.intel().expect("feed").payload()));
    let mut rs2p = rs2.clone();
    rs2p.protected = rs_protected.protected.clone();
    apply_intel(&mut json_path, &rs2p).expect("nft JSON path");
    assert_eq!(
        listing(&lab.dev),
        listing(&other.0),
        "after element updates, nft -j list shows what nft builds from the new feed"
    );
}

/// `nft` in `ns` with `args`, which must succeed.
fn nft(ns: &str, args: &str) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "nft"])
        .args(args.split(' '))
        .output()
        .expect("nft");
    assert!(
        out.status.success(),
        "nft {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn an_element_added_or_removed_behind_trustds_back_fails_the_read_back() {
    // Attack: someone with CAP_NET_ADMIN adds an entry to a blocklist set (blocking what
    // the feed does not name) or removes one (letting a listed address through), in every
    // kind of set: the read-back without a dump (present elements shown by an aborted
    // deletion, counts compared) and the dumped one (an interval set starting at address
    // 0) must both find it.
    if !can_run(TOOLS) {
        return;
    }
    let ns = Netns::new("tnl", "x");
    // Unowned (as on kernels before Linux 6.9): an owned table refuses these edits.
    let mut nl = NftBackend::in_netns(&ns.0).with_intel_table_owned(false);
    let f: trustd::policy::IntelFeed = serde_json::from_value(feed(
        &[
            "10.99.0.3",
            "10.99.0.5",
            "198.51.100.0/24",
            "fd99::3",
            "2001:db8::/48",
        ],
        &["0.0.0.0/8", "203.0.113.0/28"],
    ))
    .expect("feed");
    let rs = compile_intel(Some(&f));
    apply_intel(&mut nl, &rs).expect("built and read back");
    // Nothing else committed: the replace's read-back took the elements' presence from its
    // own batch; every later check shows each element present.
    let nlk = nl.take_intel_netlink().expect("netlink");
    assert!(
        nlk.timings()
            .iter()
            .any(|(stage, _)| stage.contains("presence proven by the batch")),
        "{:?}",
        nlk.timings()
    );
    nl.put_intel_netlink(nlk);
    trustd::netfilter::check_intel(&mut nl, &rs).expect("an untouched table reads back");
    let tamper = [
        ("c0_v4h", "10.99.0.4"),
        ("c0_v4n", "192.0.2.0/24"),
        ("c0_v6h", "fd99::4"),
        ("c0_v6n", "2001:db8:5::/48"),
        ("c1_v4n", "203.0.113.64/28"),
    ];
    for (set, extra) in tamper {
        nft(
            &ns.0,
            &format!("add element inet {INTEL_TABLE} {set} {{ {extra} }}"),
        );
        let err =
            trustd::netfilter::check_intel(&mut nl, &rs).expect_err("an added element is found");
        assert!(err.contains(set), "{set}: {err}");
        nft(
            &ns.0,
            &format!("delete element inet {INTEL_TABLE} {set} {{ {extra} }}"),
        );
        trustd::netfilter::check_intel(&mut nl, &rs).expect("back as compiled");
    }
    let removed = [
        ("c0_v4h", "10.99.0.5"),
        ("c0_v4n", "198.51.100.0/24"),
        ("c0_v6h", "fd99::3"),
        ("c0_v6n", "2001:db8::/48"),
        ("c1_v4n", "0.0.0.0/8"),
    ];
    for (set, gone) in removed {
        nft(
            &ns.0,
            &format!("delete element inet {INTEL_TABLE} {set} {{ {gone} }}"),
        );
        let err =
            trustd::netfilter::check_intel(&mut nl, &rs).expect_err("a removed element is found");
        assert!(err.contains(set), "{set}: {err}");
        nft(
            &ns.0,
            &format!("add element inet {INTEL_TABLE} {set} {{ {gone} }}"),
        );
        trustd::netfilter::check_intel(&mut nl, &rs).expect("back as compiled");
    }
}

/// The real backend, with every `nft` listing it runs recorded.
struct Listed {
    inner: NftBackend,
    lists: Vec<String>,
}

impl Backend for Listed {
    fn apply(&mut self, script: &str) -> Result<(), NftError> {
        self.inner.apply(script)
    }
    fn list_table(&mut self, name: &str) -> Result<Option<String>, NftError> {
        self.lists.push(format!("table {name}"));
        self.inner.list_table(name)
    }
    fn list_chain(&mut self, table: &str, chain: &str) -> Result<Option<String>, NftError> {
        self.lists.push(format!("chain {table} {chain}"));
        self.inner.list_chain(table, chain)
    }
    fn take_intel_netlink(&mut self) -> Option<IntelNetlink> {
        self.inner.take_intel_netlink()
    }
    fn put_intel_netlink(&mut self, nl: IntelNetlink) {
        self.inner.put_intel_netlink(nl)
    }
}

/// A destination the blocklists must let through: `dest` on `ports` (TCP), through
/// `ifaces` when some are named (more than one port or interface: inline sets in the rules).
fn exempt(dest: &str, ports: &[u16], ifaces: &[&str]) -> Protected {
    let dest: trustd::policy::Cidr = dest.parse().expect("cidr");
    let names: Vec<String> = ifaces.iter().map(|s| (*s).to_owned()).collect();
    let (mut out, mut reply) = (Vec::new(), Vec::new());
    if !names.is_empty() {
        out.push(Match::OifName(names.clone()));
        reply.push(Match::IifName(names));
    }
    out.extend([Match::Daddr(dest), Match::Dport(L4::Tcp, ports.to_vec())]);
    reply.extend([
        Match::CtState(vec!["established", "related"]),
        Match::Saddr(dest),
        Match::Sport(L4::Tcp, ports.to_vec()),
    ]);
    Protected {
        kind: ProtectedKind::ProxyEndpoint,
        dest,
        out,
        reply,
    }
}

#[test]
fn exemptions_change_over_netlink_without_nft_listing_the_blocklist_table() {
    // Cost attack: with a large feed in force, `nft list chain` of the blocklist table
    // fetches every element of its sets (seconds and hundreds of MiB at 1M entries), so a
    // policy change that moves the exemptions must not list it with `nft`. The exemption
    // chains are refilled over netlink (inline sets of ports and interfaces included),
    // read back against what nft compiles, and later checks stay on netlink.
    if !can_run(TOOLS) {
        return;
    }
    let ns = Netns::new("tnl", "e");
    let mut be = Listed {
        inner: NftBackend::in_netns(&ns.0),
        lists: Vec::new(),
    };
    let f: trustd::policy::IntelFeed = serde_json::from_value(feed(
        &["10.99.0.3", "198.51.100.0/24", "fd99::3", "2001:db8::/48"],
        &["203.0.113.0/28"],
    ))
    .expect("feed");
    let mut rs = compile_intel(Some(&f));
    let one = vec![exempt("10.99.0.2", &[3128], &[])];
    let many = vec![
        exempt("10.98.0.0/16", &[443, 8443], &["eth9", "wg9"]),
        exempt("10.99.0.2", &[3128], &[]),
        exempt("fd98::/64", &[80, 443, 8080], &["wg9"]),
    ];
    rs.protected = one.clone();
    apply_intel(&mut be, &rs).expect("built over netlink");
    let other = Netns::new("tnl", "f");
    let mut json_path = NftBackend::in_netns(&other.0).without_netlink();
    for to in [many.clone(), one, Vec::new(), many] {
        be.lists.clear();
        update_exemptions(&mut be, &rs, &to).expect("exemptions refilled over netlink");
        rs.protected = to;
        check_intel(&mut be, &rs).expect("the table reads back whole");
        assert!(
            intel_chains_intact(&mut be, &rs).expect("checked"),
            "the chains are intact"
        );
        let scratch = format!("table {TEMPLATE_TABLE}");
        assert!(
            be.lists.iter().all(|l| *l == scratch),
            "nft listed only the scratch table: {:?}",
            be.lists
        );
        apply_intel(&mut json_path, &rs).expect("nft JSON path");
        assert_eq!(
            listing(&ns.0),
            listing(&other.0),
            "nft -j list shows the refilled table as nft builds it"
        );
    }
    // A rule slipped into an exemption chain: refused while the table is owned; found by
    // the check over netlink when it is not (kernels before Linux 6.9).
    let slip = format!("add rule inet {INTEL_TABLE} exempt_out ip daddr 192.0.2.1 accept");
    assert!(!try_nft(&ns.0, &slip).0, "the owned table refuses the slip");
    assert!(intel_chains_intact(&mut be, &rs).expect("checked"));
    drop(be);
    let mut be = NftBackend::in_netns(&ns.0).with_intel_table_owned(false);
    apply_intel(&mut be, &rs).expect("unowned");
    nft(&ns.0, &slip);
    assert!(
        !intel_chains_intact(&mut be, &rs).expect("checked"),
        "an added exemption is found"
    );
}

/// A backend that lets another writer change the scratch table right after `nft` listed
/// it, `times` times (the race between the listing that is checked and the netlink dump
/// that is copied).
struct Racing {
    inner: NftBackend,
    ns: String,
    times: usize,
}

impl Backend for Racing {
    fn apply(&mut self, script: &str) -> Result<(), NftError> {
        self.inner.apply(script)
    }
    fn list_table(&mut self, name: &str) -> Result<Option<String>, NftError> {
        let listed = self.inner.list_table(name);
        if name == TEMPLATE_TABLE && self.times > 0 {
            self.times -= 1;
            // Exempt a listed address: copied, it would pass the blocklists.
            nft(
                &self.ns,
                &format!("add rule inet {TEMPLATE_TABLE} exempt_out ip daddr 10.99.0.3 accept"),
            );
        }
        listed
    }
    fn list_chain(&mut self, table: &str, chain: &str) -> Result<Option<String>, NftError> {
        self.inner.list_chain(table, chain)
    }
    fn take_intel_netlink(&mut self) -> Option<IntelNetlink> {
        self.inner.take_intel_netlink()
    }
    fn put_intel_netlink(&mut self, nl: IntelNetlink) {
        self.inner.put_intel_netlink(nl)
    }
}

#[test]
fn a_rule_slipped_into_the_scratch_table_after_its_listing_is_never_copied() {
    // Attack: another writer with CAP_NET_ADMIN changes the scratch table between its
    // `nft -j list` (checked against the compiled structure) and its netlink dump (copied
    // into the blocklist table), slipping in an exemption for a listed address. The
    // ruleset generation before the listing and after the dump differs: the scratch table
    // is built and read again; when the writer keeps at it, the replace and the exemption
    // refill are refused and the table in force stays.
    if !can_run(TOOLS) {
        return;
    }
    let ns = Netns::new("tnl", "r");
    let other = Netns::new("tnl", "s");
    let f: trustd::policy::IntelFeed = serde_json::from_value(feed(
        &["10.99.0.3", "198.51.100.0/24", "fd99::3"],
        &["203.0.113.0/28"],
    ))
    .expect("feed");
    let mut rs = compile_intel(Some(&f));
    let mut be = Racing {
        inner: NftBackend::in_netns(&ns.0),
        ns: ns.0.clone(),
        times: 1,
    };
    let mut json_path = NftBackend::in_netns(&other.0).without_netlink();

    // Once: read again, and the table holds only what was compiled.
    apply_intel(&mut be, &rs).expect("built after a second read");
    assert_eq!(be.times, 0, "the writer did change the scratch table");
    apply_intel(&mut json_path, &rs).expect("nft JSON path");
    assert_eq!(
        listing(&ns.0),
        listing(&other.0),
        "the slipped rule is not in the blocklist table"
    );
    check_intel(&mut be, &rs).expect("reads back");

    // Every time: refused, the table in force stays as it was.
    let before = listing(&ns.0);
    be.times = usize::MAX;
    let err = apply_intel(&mut be, &rs).expect_err("refused");
    assert!(err.to_string().contains("changed"), "{err}");
    let to = vec![exempt("10.99.0.2", &[3128], &[])];
    let err = update_exemptions(&mut be, &rs, &to).expect_err("refused");
    assert!(err.to_string().contains("changed"), "{err}");
    // The scratch table is left behind (it has no hooks); the blocklist table is unchanged.
    assert_eq!(listing(&ns.0), before, "the table in force stays");

    // Once during an exemption refill: read again, copied as compiled.
    be.times = 1;
    update_exemptions(&mut be, &rs, &to).expect("refilled after a second read");
    rs.protected = to;
    apply_intel(&mut json_path, &rs).expect("nft JSON path");
    assert_eq!(listing(&ns.0), listing(&other.0), "as compiled");
}

#[test]
fn a_dump_interrupted_by_a_commit_is_read_again() {
    // Attack: a read-back whose dump spans several messages while another writer commits
    // mixes two states of the ruleset (the kernel marks such replies NLM_F_DUMP_INTR). An
    // interrupted dump is an error, and a consistent read reads again (a bounded number of
    // times, then fails closed).
    use std::cell::Cell;
    use std::time::Duration;
    use trustd::sys::nfnl::{NfSocket, NfnlError};
    if !can_run(TOOLS) {
        return;
    }
    let ns = Netns::new("tnl", "d");
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("rules.nft");
    let mut text = String::from("table inet t {\n chain c {\n");
    for i in 0..3000u32 {
        text.push_str(&format!(
            "  ip daddr 10.{}.{}.1 counter accept\n",
            i / 256,
            i % 256
        ));
    }
    text.push_str(" }\n}\n");
    std::fs::write(&script, text).expect("script");
    nft(&ns.0, &format!("-f {}", script.display()));
    let mut sock = NfSocket::open_in_netns(&ns.0, Duration::from_secs(10)).expect("socket");
    let commits = Cell::new(0u32);
    let commit = || {
        let n = commits.get();
        commits.set(n + 1);
        nft(&ns.0, &format!("add table inet other{n}"));
    };
    // NFT_MSG_GETRULE of inet table t.
    let dump_rules = |sock: &mut NfSocket, writer: bool| {
        let mut n = 0usize;
        let r = sock.dump(
            7,
            1,
            |m| m.put_str(1, "t"),
            |_| {
                if n == 0 && writer {
                    commit();
                }
                n += 1;
                Ok(())
            },
        );
        (r, n)
    };
    let (r, _) = dump_rules(&mut sock, true);
    assert!(
        matches!(r, Err(NfnlError::Interrupted)),
        "an interrupted dump is an error: {r:?}"
    );
    let (r, n) = dump_rules(&mut sock, false);
    assert!(matches!(r, Ok(Ok(true))) && n == 3000, "{r:?} {n}");

    // Interrupted once: read again, whole.
    let tries = Cell::new(0u32);
    let got = sock
        .consistent(|s| {
            tries.set(tries.get() + 1);
            dump_rules(s, tries.get() == 1)
        })
        .expect("settled on the second read");
    assert!(matches!(got, (Ok(Ok(true)), 3000)), "{got:?}");
    assert_eq!(tries.get(), 2);
    // Always interrupted: refused after a bounded number of reads.
    let err = sock
        .consistent(|s| dump_rules(s, true))
        .expect_err("never settles");
    assert!(matches!(err, NfnlError::Unsettled { .. }), "{err}");
    // A commit between two dumps of one read (no dump interrupted) is seen too.
    let err = sock
        .consistent(|s| {
            let a = dump_rules(s, false);
            commit();
            a
        })
        .expect_err("the generation moved");
    assert!(matches!(err, NfnlError::Unsettled { .. }), "{err}");
}

#[test]
fn a_catch_all_element_slipped_into_a_blocklist_set_fails_the_read_back() {
    // Attack: a catch-all element (`*`, no key) added to a blocklist set makes it match
    // every address (the device cut off), and the kernel does not count it: the read-back
    // by counts and present elements must still find it, in hash and interval sets.
    use std::time::Duration;
    use trustd::sys::nfnl::{Batch, NfSocket};
    if !can_run(TOOLS) {
        return;
    }
    let ns = Netns::new("tnl", "c");
    // Unowned (as on kernels before Linux 6.9): an owned table refuses the slipped element.
    let mut nl = NftBackend::in_netns(&ns.0).with_intel_table_owned(false);
    let f: trustd::policy::IntelFeed = serde_json::from_value(feed(
        &["10.99.0.3", "198.51.100.0/24", "fd99::3", "2001:db8::/48"],
        &["0.0.0.0/8"],
    ))
    .expect("feed");
    let rs = compile_intel(Some(&f));
    apply_intel(&mut nl, &rs).expect("built");
    check_intel(&mut nl, &rs).expect("untouched");
    let mut sock = NfSocket::open_in_netns(&ns.0, Duration::from_secs(10)).expect("socket");
    // NFT_MSG_NEWSETELEM / NFT_MSG_DELSETELEM of a catch-all element in `set`.
    let catch_all = |sock: &mut NfSocket, set: &str, add: bool| {
        let mut b = Batch::new();
        b.begin(
            if add { 12 } else { 14 },
            if add { 0x400 } else { 0 },
            1,
            "catch-all",
        );
        b.put_str(1, INTEL_TABLE);
        b.put_str(2, set);
        let list = b.nest_begin(3);
        let e = b.nest_begin(1);
        b.put_be32(3, 2);
        b.nest_end(e);
        b.nest_end(list);
        sock.commit(b).expect("catch-all element");
    };
    // c0: hash and interval sets read back by counts; c1_v4n (starting at 0, an even
    // count) by a dump.
    for set in ["c0_v4h", "c0_v4n", "c0_v6h", "c0_v6n", "c1_v4n"] {
        catch_all(&mut sock, set, true);
        let err = check_intel(&mut nl, &rs).expect_err("a catch-all element is found");
        assert!(
            err.contains(set) && err.contains("catch-all"),
            "{set}: {err}"
        );
        catch_all(&mut sock, set, false);
        check_intel(&mut nl, &rs).expect("back as compiled");
    }
}

#[test]
fn an_exemption_with_thousands_of_ports_is_copied_across_messages() {
    // An inline set larger than one netlink attribute holds (64 KiB: here some 5,000
    // ports) is split across element messages, so large exemptions are put in force over
    // netlink, as nft puts them, instead of being refused.
    if !can_run(TOOLS) {
        return;
    }
    let ns = Netns::new("tnl", "p");
    let other = Netns::new("tnl", "q");
    let mut nl = NftBackend::in_netns(&ns.0);
    let mut json_path = NftBackend::in_netns(&other.0).without_netlink();
    let f: trustd::policy::IntelFeed =
        serde_json::from_value(feed(&["10.99.0.3", "198.51.100.0/24"], &[])).expect("feed");
    let mut rs = compile_intel(Some(&f));
    let ports: Vec<u16> = (1..=5000).map(|p| p * 3).collect();
    let big = vec![exempt("10.99.0.2", &ports, &[])];
    for (replace, to) in [(true, big.clone()), (false, Vec::new()), (false, big)] {
        if replace {
            rs.protected = to;
            apply_intel(&mut nl, &rs).expect("replaced over netlink");
        } else {
            update_exemptions(&mut nl, &rs, &to).expect("refilled over netlink");
            rs.protected = to;
        }
        check_intel(&mut nl, &rs).expect("reads back");
        apply_intel(&mut json_path, &rs).expect("nft JSON path");
        assert_eq!(listing(&ns.0), listing(&other.0), "as nft builds it");
    }
}

#[test]
fn the_cheap_read_back_sees_a_dormant_table_and_a_flushed_or_cut_set() {
    // Attack: a process with CAP_NET_ADMIN that wins the pid of one of trustd's reaped `nft`
    // children (trustd starts one at every check) has its edit of the blocklist table taken
    // for trustd's own by the notifications. The table made dormant, or its sets flushed,
    // went unseen past the 300 s backstop, which read only the rules. The periodic
    // read-back (every tick without notifications, every 5 minutes with them) now reads the
    // table's flags, declarations, rules and set counts: each such edit fails it, and a
    // replace makes it pass again.
    if !can_run(TOOLS) {
        return;
    }
    let ns = Netns::new("tnl", "q");
    // Unowned (as on kernels before Linux 6.9): an owned table refuses these edits (see
    // `an_owned_blocklist_table_refuses_every_other_writer_and_outlives_trustd`).
    let mut nl = NftBackend::in_netns(&ns.0).with_intel_table_owned(false);
    let rs = small_feed();
    apply_intel(&mut nl, &rs).expect("built");
    let quick = |nl: &mut NftBackend| {
        intel_quick_intact(nl, &rs)
            .expect("over netlink")
            .expect("read")
    };
    assert!(quick(&mut nl), "untouched");
    for edit in [
        "add table inet trustd_intel { flags dormant ; }",
        "flush set inet trustd_intel c0_v4h",
        "delete element inet trustd_intel c0_v4h { 10.99.0.3 }",
        "flush set inet trustd_intel c0_v4n",
        "add element inet trustd_intel c1_v4h { 10.99.0.9 }",
    ] {
        nft(&ns.0, edit);
        assert!(
            !quick(&mut nl),
            "{edit}: not seen by the check of every tick"
        );
        apply_intel(&mut nl, &rs).expect("replaced");
        assert!(quick(&mut nl), "{edit}: replaced, as compiled again");
    }
}

/// `nft ARGS` in `ns`: its exit status and stderr.
fn try_nft(ns: &str, args: &str) -> (bool, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "sh", "-c", &format!("nft {args}")])
        .output()
        .expect("nft");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `nft list table inet trustd_intel` in `ns` without the table's flags line and nft's
/// `# progname` comment (which name the owner).
fn text_listing(ns: &str) -> String {
    String::from_utf8_lossy(&list_intel(ns, &[]))
        .lines()
        .filter(|l| !l.starts_with("\tflags"))
        .map(|l| l.split(" # progname").next().unwrap_or(l).to_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn an_owned_blocklist_table_refuses_every_other_writer_and_outlives_trustd() {
    // Attack: root (or any process with CAP_NET_ADMIN) edits the blocklist table behind
    // trustd's back, racing its repairs: flushes a set, deletes or adds an element, makes the
    // table dormant, deletes it, puts an accept rule first, runs `nft flush ruleset`, or
    // answers each of trustd's commits with one of its own. Owned by trustd's socket, the
    // table refuses every such edit (EPERM) and holds exactly what was compiled. When the
    // socket closes (trustd stops or crashes) the table stays in force, unowned; the next
    // replace adopts it. A table another socket owns under the name is refused, not
    // taken over: the replace fails and says so, and the squatter's table is untouched.
    if !can_run(TOOLS) {
        return;
    }
    let ns = Netns::new("tnl", "o");
    let mut nl = NftBackend::in_netns(&ns.0);
    let rs = small_feed();
    apply_intel(&mut nl, &rs).expect("built");
    let before = listing(&ns.0);
    let text_before = text_listing(&ns.0);
    assert_eq!(table_flags(&ns.0)[0], "owner", "owned after a replace");
    for edit in [
        "add table inet trustd_intel '{ flags dormant ; }'",
        "flush set inet trustd_intel c0_v4h",
        "delete element inet trustd_intel c0_v4h '{ 10.99.0.3 }'",
        "add element inet trustd_intel c1_v4h '{ 10.99.0.9 }'",
        "flush set inet trustd_intel c0_v4n",
        "insert rule inet trustd_intel output accept",
        "flush chain inet trustd_intel output",
        "delete table inet trustd_intel",
        "add table inet trustd_intel '{ flags owner ; }'",
    ] {
        let (ok, err) = try_nft(&ns.0, edit);
        assert!(!ok, "{edit}: the kernel took an edit of the owned table");
        assert!(
            err.contains("Operation not permitted"),
            "{edit}: refused for the owner, not for another reason: {err}"
        );
    }
    let (ok, err) = try_nft(&ns.0, "flush ruleset");
    assert!(ok, "flush ruleset runs: {err}");
    assert_eq!(
        listing(&ns.0),
        before,
        "after every refused edit and a flush of the ruleset the table is as compiled"
    );
    check_intel(&mut nl, &rs).expect("and trustd's full read-back agrees");

    // trustd's socket closes (stop, crash): the table stays, unowned, and blocks on.
    drop(nl);
    // (nft 1.0.6 prints an orphaned table's flags wrongly, in JSON too: the text
    // listing is compared, without the table's flags line.)
    assert_eq!(
        text_listing(&ns.0),
        text_before,
        "the table outlives its owner"
    );
    assert!(
        !try_nft(
            &ns.0,
            "list table inet trustd_intel | grep -q 'flags owner'"
        )
        .0,
        "orphaned: no owner"
    );
    // The next trustd adopts it with its replace.
    let mut next = NftBackend::in_netns(&ns.0);
    apply_intel(&mut next, &rs).expect("adopted by the next replace");
    assert_eq!(table_flags(&ns.0)[0], "owner", "owned again");
    assert!(!try_nft(&ns.0, "flush set inet trustd_intel c0_v4h").0);
    drop(next);

    // A squatter owns a table of that name first: trustd's replace is refused (it never
    // takes another socket's table) and says the kernel refused it; nothing is changed.
    try_nft(&ns.0, "delete table inet trustd_intel");
    let squat = hold_owned(&ns.0, INTEL_TABLE);
    let mut third = NftBackend::in_netns(&ns.0);
    let err = apply_intel(&mut third, &rs).expect_err("a table another socket owns");
    assert!(
        err.to_string().contains("Operation not permitted"),
        "the refusal names the cause: {err}"
    );
    assert!(
        try_nft(
            &ns.0,
            "list table inet trustd_intel | grep -q 'flags owner$'"
        )
        .0 && !try_nft(&ns.0, "list set inet trustd_intel c0_v4h").0,
        "the squatter's empty table is as it made it"
    );
    drop(squat);
}

/// A process in `ns` holding `inet NAME` owned by its socket (`nft -i`) until dropped.
fn hold_owned(ns: &str, name: &str) -> tests::KillGroupOnDrop {
    let held = tests::KillGroupOnDrop::sh_in(
        ns,
        &format!("(echo 'add table inet {name} {{ flags owner; }}'; sleep 60) | nft -i"),
    );
    let start = std::time::Instant::now();
    while !try_nft(
        ns,
        &format!("list table inet {name} | grep -q 'flags owner$'"),
    )
    .0
    {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(5),
            "the squatter did not take inet {name}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    held
}
