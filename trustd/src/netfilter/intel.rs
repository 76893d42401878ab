//! The intel table `inet trustd_intel`: blocklists by category, kept apart from the small
//! policy table because it is large. Exact addresses go to hash sets (cheap to load and to
//! update), prefixes to interval sets; each category has one counter (counts only).
//!
//! Big interval sets are never edited element by element (deleting from one costs minutes);
//! a feed that removes prefixes replaces the table in one transaction instead.
//!
//! The blocklists never cut what the policy or the always-allowed list guarantees
//! (docs/SECURITY.md): each base chain first accepts loopback and the always-allowed link
//! traffic, then jumps to a small regular chain (`exempt_out`, `exempt_in`) that accepts
//! the destinations the policy in force names explicitly ([`Protected`]). Only those two
//! chains change when the policy does: they are flushed and refilled in one transaction,
//! without touching the sets.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Value, json};

use super::compile::{LOOPBACK_PREFIXES, Protected, ProtectedKind, link_setup_in, link_setup_out};
use super::intel_netlink::{self, with_netlink};
use super::model::{Action, Match, Rule};
use super::render::render_expr;
use super::{Backend, EnforceError, NftError};
use crate::bundle::sha256_hex;
use crate::policy::{Cidr, IntelFeed};

/// The regular chain holding the outbound exemptions of the policy in force.
pub(super) const EXEMPT_OUT: &str = "exempt_out";
/// The regular chain holding the inbound (reply) exemptions of the policy in force.
pub(super) const EXEMPT_IN: &str = "exempt_in";

/// The intel table's name.
pub const INTEL_TABLE: &str = "trustd_intel";

/// One category's entries, split by family and kind, each kind a sorted vector without
/// duplicates (4 bytes an IPv4 address, 18 a prefix: a tree would cost several times
/// that at a million entries). Set and counter names are derived from the category's
/// index (category names are not nft identifiers).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Category {
    /// The category's name in the feed.
    pub name: String,
    v4_hosts: Vec<Ipv4Addr>,
    v4_nets: Vec<Cidr>,
    v6_hosts: Vec<Ipv6Addr>,
    v6_nets: Vec<Cidr>,
}

/// The compiled intel table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IntelRuleset {
    /// Categories in name order.
    pub categories: Vec<Category>,
    /// The destinations the policy in force protects from the blocklists (see
    /// [`crate::netfilter::protected`]); loopback and the always-allowed link traffic are
    /// exempt in every case.
    pub protected: Vec<Protected>,
}

impl IntelRuleset {
    /// Entries in all sets.
    pub fn len(&self) -> usize {
        self.categories
            .iter()
            .map(|c| c.v4_hosts.len() + c.v4_nets.len() + c.v6_hosts.len() + c.v6_nets.len())
            .sum()
    }

    /// Entries of one category (0 if absent).
    pub fn category_len(&self, name: &str) -> usize {
        self.categories
            .iter()
            .filter(|c| c.name == name)
            .map(|c| c.v4_hosts.len() + c.v4_nets.len() + c.v6_hosts.len() + c.v6_nets.len())
            .sum()
    }

    /// Whether there is no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many entries overlap each kind of protected destination (loopback, and the
    /// policy's [`Self::protected`]): those entries do not apply there. Counts only.
    pub fn overlaps(&self) -> BTreeMap<ProtectedKind, usize> {
        let loopback: Vec<Cidr> = LOOPBACK_PREFIXES
            .iter()
            .filter_map(|p| p.parse().ok())
            .collect();
        let mut guarded: Vec<(ProtectedKind, Cidr)> = loopback
            .into_iter()
            .map(|c| (ProtectedKind::Loopback, c))
            .collect();
        guarded.extend(self.protected.iter().map(|p| (p.kind, p.dest)));
        let mut out = BTreeMap::new();
        for c in &self.categories {
            let entries = c
                .v4_hosts
                .iter()
                .map(|a| Cidr::host(IpAddr::V4(*a)))
                .chain(c.v6_hosts.iter().map(|a| Cidr::host(IpAddr::V6(*a))))
                .chain(c.v4_nets.iter().chain(&c.v6_nets).copied());
            for e in entries {
                let kinds: BTreeSet<ProtectedKind> = guarded
                    .iter()
                    .filter(|(_, d)| d.overlaps(&e))
                    .map(|(k, _)| *k)
                    .collect();
                for k in kinds {
                    *out.entry(k).or_insert(0) += 1;
                }
            }
        }
        out
    }

    /// The counter name of each category (posture shows counts by category name).
    pub fn counters(&self) -> BTreeMap<String, String> {
        self.categories
            .iter()
            .enumerate()
            .map(|(i, c)| (c.name.clone(), format!("intel_{i}")))
            .collect()
    }
}

/// Split a feed into sets (prefixes nested in another are dropped: the wider one blocks them).
pub fn compile_intel(feed: Option<&IntelFeed>) -> IntelRuleset {
    let mut out = IntelRuleset::default();
    for (name, entries) in feed.map(|f| &f.categories).into_iter().flatten() {
        let mut c = Category {
            name: name.clone(),
            ..Category::default()
        };
        for e in entries {
            match (e.addr(), e.is_host()) {
                (IpAddr::V4(a), true) => c.v4_hosts.push(a),
                (IpAddr::V6(a), true) => c.v6_hosts.push(a),
                (IpAddr::V4(_), false) => c.v4_nets.push(*e),
                (IpAddr::V6(_), false) => c.v6_nets.push(*e),
            };
        }
        c.v4_hosts.sort_unstable();
        c.v4_hosts.dedup();
        c.v4_hosts.shrink_to_fit();
        c.v6_hosts.sort_unstable();
        c.v6_hosts.dedup();
        c.v6_hosts.shrink_to_fit();
        c.v4_nets = without_nested(std::mem::take(&mut c.v4_nets));
        c.v6_nets = without_nested(std::mem::take(&mut c.v6_nets));
        out.categories.push(c);
    }
    out
}

/// Drop prefixes that another prefix of the set already covers (and duplicates): an
/// interval set refuses overlapping elements, and CIDR prefixes either nest or are
/// disjoint. Sorted by start in place; within one family that is also [`Cidr`]'s order.
fn without_nested(mut nets: Vec<Cidr>) -> Vec<Cidr> {
    // Widest first among equal starts.
    nets.sort_unstable_by(|a, b| {
        let (a, b) = (a.range(), b.range());
        a.0.cmp(&b.0).then(b.1.cmp(&a.1))
    });
    let mut covered_to: Option<u128> = None;
    nets.retain(|c| {
        let (lo, hi) = c.range();
        if covered_to.is_some_and(|end| lo <= end) {
            return false;
        }
        covered_to = Some(hi);
        true
    });
    nets.shrink_to_fit();
    nets
}

/// A set element as compiled.
#[derive(Debug, Clone, Copy)]
pub(super) enum Elem {
    Host(IpAddr),
    Net(Cidr),
}

impl Elem {
    pub(super) fn range(&self) -> (u128, u128) {
        match self {
            Self::Host(a) => Cidr::host(*a).range(),
            Self::Net(c) => c.range(),
        }
    }
}

impl Serialize for Elem {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Prefix {
            addr: String,
            len: u8,
        }
        #[derive(Serialize)]
        struct Wrap {
            prefix: Prefix,
        }
        match self {
            Self::Host(a) => s.collect_str(a),
            Self::Net(c) => Wrap {
                prefix: Prefix {
                    addr: c.addr().to_string(),
                    len: c.prefix(),
                },
            }
            .serialize(s),
        }
    }
}

/// One set of the intel table: its name, family, kind, and where its elements are.
pub(super) struct SetSpec {
    pub(super) name: String,
    pub(super) v6: bool,
    pub(super) interval: bool,
    /// The category's index.
    pub(super) cat: usize,
}

impl SetSpec {
    /// The set's elements, straight from the compiled category (no copy).
    pub(super) fn elems<'a>(&self, rs: &'a IntelRuleset) -> Box<dyn Iterator<Item = Elem> + 'a> {
        let c = &rs.categories[self.cat];
        match (self.v6, self.interval) {
            (false, false) => Box::new(c.v4_hosts.iter().map(|a| Elem::Host(IpAddr::V4(*a)))),
            (false, true) => Box::new(c.v4_nets.iter().map(|n| Elem::Net(*n))),
            (true, false) => Box::new(c.v6_hosts.iter().map(|a| Elem::Host(IpAddr::V6(*a)))),
            (true, true) => Box::new(c.v6_nets.iter().map(|n| Elem::Net(*n))),
        }
    }

    /// The range of its lowest and of its highest element (`None` when empty), without
    /// walking the set.
    pub(super) fn bounds(&self, rs: &IntelRuleset) -> Option<((u128, u128), (u128, u128))> {
        let c = &rs.categories[self.cat];
        let v4 = |a: &Ipv4Addr| (u128::from(u32::from(*a)), u128::from(u32::from(*a)));
        let v6 = |a: &Ipv6Addr| (u128::from(*a), u128::from(*a));
        match (self.v6, self.interval) {
            (false, false) => Some((v4(c.v4_hosts.first()?), v4(c.v4_hosts.last()?))),
            (false, true) => Some((c.v4_nets.first()?.range(), c.v4_nets.last()?.range())),
            (true, false) => Some((v6(c.v6_hosts.first()?), v6(c.v6_hosts.last()?))),
            (true, true) => Some((c.v6_nets.first()?.range(), c.v6_nets.last()?.range())),
        }
    }

    /// The elements of this set in `old` that `new` lacks, and those of `new` that `old`
    /// lacks (both compiled with the same layout): one merge of the two sorted sets, with
    /// memory for the difference only.
    pub(super) fn delta(&self, old: &IntelRuleset, new: &IntelRuleset) -> (Vec<Elem>, Vec<Elem>) {
        let (o, n) = (&old.categories[self.cat], &new.categories[self.cat]);
        match (self.v6, self.interval) {
            (false, false) => merge_delta(&o.v4_hosts, &n.v4_hosts, |a| Elem::Host(IpAddr::V4(*a))),
            (false, true) => merge_delta(&o.v4_nets, &n.v4_nets, |c| Elem::Net(*c)),
            (true, false) => merge_delta(&o.v6_hosts, &n.v6_hosts, |a| Elem::Host(IpAddr::V6(*a))),
            (true, true) => merge_delta(&o.v6_nets, &n.v6_nets, |c| Elem::Net(*c)),
        }
    }

    /// How many elements it holds.
    pub(super) fn len(&self, rs: &IntelRuleset) -> usize {
        let c = &rs.categories[self.cat];
        match (self.v6, self.interval) {
            (false, false) => c.v4_hosts.len(),
            (false, true) => c.v4_nets.len(),
            (true, false) => c.v6_hosts.len(),
            (true, true) => c.v6_nets.len(),
        }
    }

    /// Whether `addr` is one of its addresses (hash sets).
    pub(super) fn has_host(&self, rs: &IntelRuleset, addr: &IpAddr) -> bool {
        let c = &rs.categories[self.cat];
        match addr {
            IpAddr::V4(a) => !self.v6 && c.v4_hosts.binary_search(a).is_ok(),
            IpAddr::V6(a) => self.v6 && c.v6_hosts.binary_search(a).is_ok(),
        }
    }

    /// The prefix of this interval set with the greatest start at or below `addr`.
    pub(super) fn net_at_or_below(&self, rs: &IntelRuleset, addr: IpAddr) -> Option<Cidr> {
        let c = &rs.categories[self.cat];
        let nets = if self.v6 { &c.v6_nets } else { &c.v4_nets };
        let at = Cidr::host(addr).range().0;
        let i = nets.partition_point(|c| c.range().0 <= at);
        i.checked_sub(1).map(|i| nets[i])
    }
}

/// What `a` holds that `b` lacks, and what `b` holds that `a` lacks, in one walk of both.
fn merge_delta<T: Ord>(a: &[T], b: &[T], elem: impl Fn(&T) -> Elem) -> (Vec<Elem>, Vec<Elem>) {
    use std::cmp::Ordering;
    let (mut only_a, mut only_b) = (Vec::new(), Vec::new());
    let (mut x, mut y) = (a.iter().peekable(), b.iter().peekable());
    loop {
        match (x.peek(), y.peek()) {
            (Some(p), Some(q)) => match p.cmp(q) {
                Ordering::Less => {
                    only_a.push(elem(p));
                    x.next();
                }
                Ordering::Greater => {
                    only_b.push(elem(q));
                    y.next();
                }
                Ordering::Equal => {
                    x.next();
                    y.next();
                }
            },
            (Some(p), None) => {
                only_a.push(elem(p));
                x.next();
            }
            (None, Some(q)) => {
                only_b.push(elem(q));
                y.next();
            }
            (None, None) => break,
        }
    }
    (only_a, only_b)
}

/// The sets of `rs` (those with elements), with their category's index.
pub(super) fn sets(rs: &IntelRuleset) -> Vec<(usize, SetSpec)> {
    let mut out = Vec::new();
    for (i, c) in rs.categories.iter().enumerate() {
        for (suffix, v6, interval, empty) in [
            ("v4h", false, false, c.v4_hosts.is_empty()),
            ("v4n", false, true, c.v4_nets.is_empty()),
            ("v6h", true, false, c.v6_hosts.is_empty()),
            ("v6n", true, true, c.v6_nets.is_empty()),
        ] {
            if !empty {
                out.push((
                    i,
                    SetSpec {
                        name: format!("c{i}_{suffix}"),
                        v6,
                        interval,
                        cat: i,
                    },
                ));
            }
        }
    }
    out
}

fn set_decl(s: &SetSpec) -> Value {
    let mut set = json!({
        "family": "inet", "table": INTEL_TABLE, "name": s.name,
        "type": if s.v6 { "ipv6_addr" } else { "ipv4_addr" },
    });
    if s.interval {
        set["flags"] = json!(["interval"]);
        set["auto-merge"] = json!(true);
    }
    set
}

fn rule_json(chain: &str, r: &Rule) -> Value {
    json!({"rule": {"family": "inet", "table": INTEL_TABLE, "chain": chain, "expr": render_expr(r, 0)}})
}

/// The first rules of a base chain: loopback, the always-allowed link traffic, then the
/// policy's exemptions (`out`: the output chain, else the input chain).
fn base_exemptions(out: bool) -> Vec<Rule> {
    let accept = |m| Rule::new(vec![m], Action::Accept);
    let mut rules = Vec::new();
    // Loopback: by the device's index (see `Match::OifLoopback`).
    rules.push(accept(if out {
        Match::OifLoopback(true)
    } else {
        Match::IifLoopback
    }));
    for p in LOOPBACK_PREFIXES {
        let c: Cidr = p
            .parse()
            .unwrap_or_else(|_| Cidr::host(IpAddr::from([127, 0, 0, 1])));
        rules.push(accept(if out {
            Match::Daddr(c)
        } else {
            Match::Saddr(c)
        }));
    }
    rules.extend(if out {
        link_setup_out(&Action::Accept)
    } else {
        link_setup_in(&Action::Accept)
    });
    if !out {
        // What conntrack relates to flows let out, the ICMP errors about them (path MTU
        // discovery among them): they may come from any router on the path, so a feed
        // listing it (or ::/0) would otherwise black hole the flows to protected endpoints.
        // (No protocol names: a minimal system has no /etc/protocols for nft to read them.)
        rules.push(Rule::new(
            vec![Match::CtState(vec!["related"])],
            Action::Accept,
        ));
    }
    rules.push(Rule::new(
        vec![],
        Action::Jump(if out { EXEMPT_OUT } else { EXEMPT_IN }.into()),
    ));
    rules
}

/// The rules of the exemption chains for `protected`: (exempt_out, exempt_in).
fn exemption_rules(protected: &[Protected]) -> (Vec<Rule>, Vec<Rule>) {
    protected
        .iter()
        .map(|p| {
            (
                Rule::new(p.out.clone(), Action::Accept),
                Rule::new(p.reply.clone(), Action::Accept),
            )
        })
        .unzip()
}

fn structure(rs: &IntelRuleset) -> Vec<Value> {
    structure_with(rs, &rs.protected)
}

/// The structure of `rs`'s table with `protected` as its exemptions.
fn structure_with(rs: &IntelRuleset, protected: &[Protected]) -> Vec<Value> {
    let mut out = Vec::new();
    for (i, _) in rs.categories.iter().enumerate() {
        out.push(json!({"counter": {"family": "inet", "table": INTEL_TABLE, "name": format!("intel_{i}")}}));
    }
    // Output at -150: after conntrack (-200), before nat (-100), so the blocklists see the
    // destination a packet was sent to, not the local port a redirect (tor-only) gives it.
    for (hook, prio) in [("output", -150), ("input", -10)] {
        out.push(
            json!({"chain": {"family": "inet", "table": INTEL_TABLE, "name": hook,
            "type": "filter", "hook": hook, "prio": prio, "policy": "accept"}}),
        );
    }
    for chain in [EXEMPT_OUT, EXEMPT_IN] {
        out.push(json!({"chain": {"family": "inet", "table": INTEL_TABLE, "name": chain}}));
    }
    for (chain, is_out) in [("output", true), ("input", false)] {
        out.extend(base_exemptions(is_out).iter().map(|r| rule_json(chain, r)));
    }
    let (ex_out, ex_in) = exemption_rules(protected);
    out.extend(ex_out.iter().map(|r| rule_json(EXEMPT_OUT, r)));
    out.extend(ex_in.iter().map(|r| rule_json(EXEMPT_IN, r)));
    for (i, s) in sets(rs) {
        out.push(json!({ "set": set_decl(&s) }));
        for (chain, field) in [("output", "daddr"), ("input", "saddr")] {
            out.push(json!({"rule": {"family": "inet", "table": INTEL_TABLE, "chain": chain, "expr": [
                {"match": {"op": "==", "left": {"payload": {"protocol": if s.v6 { "ip6" } else { "ip" }, "field": field}},
                           "right": format!("@{}", s.name)}},
                {"counter": format!("intel_{i}")},
                {"drop": null}
            ]}}));
        }
    }
    out
}

/// The scratch table in which `nft` compiles the intel table's chains, rules, counters and
/// set declarations (no elements, no hooks) for the netlink path to copy.
pub const TEMPLATE_TABLE: &str = "trustd_intel_tmpl";

/// The intel table's structure as the scratch table [`TEMPLATE_TABLE`] holds it: the same
/// objects, its chains without hooks (so that nothing in it sees a packet).
fn template_structure(rs: &IntelRuleset, protected: &[Protected]) -> Vec<Value> {
    structure_with(rs, protected)
        .into_iter()
        .map(|mut o| {
            for kind in ["counter", "chain", "set", "rule"] {
                if let Some(inner) = o.get_mut(kind).and_then(Value::as_object_mut) {
                    inner.insert("table".into(), json!(TEMPLATE_TABLE));
                    if kind == "chain" {
                        for k in ["type", "hook", "prio", "policy"] {
                            inner.remove(k);
                        }
                    }
                }
            }
            o
        })
        .collect()
}

/// The script that (re)creates the scratch table for `rs` with `protected` as its
/// exemptions: small, whatever the feed's size.
pub(super) fn render_template(rs: &IntelRuleset, protected: &[Protected]) -> String {
    let table = json!({"table": {"family": "inet", "name": TEMPLATE_TABLE}});
    let mut cmds = vec![
        json!({"add": table.clone()}),
        json!({"delete": table.clone()}),
        json!({"add": table}),
    ];
    let mut objs = template_structure(rs, protected);
    objs.sort_by_key(|o| match () {
        _ if o.get("counter").is_some() => 0,
        _ if o.get("set").is_some() => 1,
        _ if o.get("chain").is_some() => 2,
        _ => 3,
    });
    cmds.extend(objs.into_iter().map(|o| json!({ "add": o })));
    json!({ "nftables": cmds }).to_string()
}

/// Check `nft -j list table inet` [`TEMPLATE_TABLE`] against the compiled structure (of
/// `rs` with `protected` as its exemptions).
pub(super) fn verify_template_listing(
    rs: &IntelRuleset,
    protected: &[Protected],
    listing: &str,
) -> Result<(), String> {
    let listing: Listing = serde_json::from_str(listing)
        .map_err(|e| format!("the scratch table listing does not parse: {e}"))?;
    let want = in_order(
        template_structure(rs, protected)
            .iter()
            .map(|o| (rule_chain(o), normalize(o).to_string())),
    );
    let held = listing_items(&listing);
    if want != held {
        let missing = want.iter().find(|i| !held.contains(i));
        let extra = held.iter().find(|i| !want.contains(i));
        return Err(format!(
            "nft compiled the intel table's chains, rules or sets otherwise (missing {}, unexpected {})",
            missing.map_or("nothing", String::as_str),
            extra.map_or("nothing", String::as_str)
        ));
    }
    Ok(())
}

/// The script (JSON text) that replaces the intel table in one transaction. Elements are
/// serialized straight from the compiled sets, never held as a JSON tree: a 100k-entry feed
/// would otherwise cost tens of MiB.
pub fn render_intel(rs: &IntelRuleset) -> String {
    #[derive(Serialize)]
    struct Body<'a> {
        family: &'a str,
        table: &'a str,
        name: &'a str,
        elem: &'a [Elem],
    }
    #[derive(Serialize)]
    struct Element<'a> {
        element: Body<'a>,
    }
    #[derive(Serialize)]
    struct Add<'a> {
        add: Element<'a>,
    }
    let table = json!({"table": {"family": "inet", "name": INTEL_TABLE}});
    let mut cmds: Vec<String> = vec![
        json!({"add": table.clone()}).to_string(),
        json!({"delete": table.clone()}).to_string(),
        json!({"add": table}).to_string(),
    ];
    // Sets before the rules that reference them.
    let mut structure = structure(rs);
    structure.sort_by_key(|o| match () {
        _ if o.get("counter").is_some() => 0,
        _ if o.get("set").is_some() => 1,
        _ if o.get("chain").is_some() => 2,
        _ => 3,
    });
    cmds.extend(
        structure
            .into_iter()
            .map(|o| json!({ "add": o }).to_string()),
    );
    for (_, s) in sets(rs) {
        let elems: Vec<Elem> = s.elems(rs).collect();
        let add = Add {
            add: Element {
                element: Body {
                    family: "inet",
                    table: INTEL_TABLE,
                    name: &s.name,
                    elem: &elems,
                },
            },
        };
        cmds.push(serde_json::to_string(&add).unwrap_or_default());
    }
    format!("{{\"nftables\":[{}]}}", cmds.join(","))
}

/// Digest of the table's structure (chains, rules, set declarations), without elements:
/// what the frequent drift check compares.
pub fn intel_structure_digest(rs: &IntelRuleset) -> String {
    intel_structure_digest_with(rs, &rs.protected)
}

/// [`intel_structure_digest`] of `rs` with `protected` as its exemptions.
pub(super) fn intel_structure_digest_with(rs: &IntelRuleset, protected: &[Protected]) -> String {
    let items = in_order(
        structure_with(rs, protected)
            .iter()
            .map(|o| (rule_chain(o), normalize(o).to_string())),
    );
    sha256_hex(items.join("\n").as_bytes())
}

fn normalize(o: &Value) -> Value {
    let mut o = o.clone();
    for kind in ["counter", "chain", "set", "rule"] {
        if let Some(inner) = o.get_mut(kind).and_then(Value::as_object_mut) {
            for k in [
                "handle",
                "packets",
                "bytes",
                "elem",
                "family",
                "table",
                "size",
                "auto-merge",
            ] {
                inner.remove(k);
            }
            if let Some(expr) = inner.get_mut("expr").and_then(Value::as_array_mut) {
                for e in expr {
                    if let Some(c) = e.get_mut("counter")
                        && c.is_object()
                    {
                        *c = Value::Null;
                    }
                    sort_inline_sets(e);
                    super::render::listed_index(e);
                }
            }
        }
    }
    o
}

/// Put the members of every inline set (`{"set": [...]}`) in one order: a set has none,
/// and `nft` lists some (interface names) in the kernel's hash order, not as written.
fn sort_inline_sets(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (k, inner) in m.iter_mut() {
                if k == "set"
                    && let Value::Array(members) = inner
                {
                    members.sort_by_cached_key(Value::to_string);
                }
                sort_inline_sets(inner);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(sort_inline_sets),
        _ => {}
    }
}

fn structure_items(rs: &IntelRuleset) -> Vec<String> {
    in_order(
        structure(rs)
            .iter()
            .map(|o| (rule_chain(o), normalize(o).to_string())),
    )
}

/// The chain a rule object belongs to (`None` for other objects).
fn rule_chain(o: &Value) -> Option<String> {
    o.get("rule")
        .and_then(|r| r.get("chain"))
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// Items compared as a whole: every object but the rules in name order, then each chain's
/// rules in the order they are evaluated. Rule order matters: a drop moved in front of the
/// exemptions would cut what they protect.
fn in_order(items: impl Iterator<Item = (Option<String>, String)>) -> Vec<String> {
    let mut others = Vec::new();
    let mut rules: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (chain, item) in items {
        match chain {
            Some(c) => rules.entry(c).or_default().push(item),
            None => others.push(item),
        }
    }
    others.sort();
    others.extend(rules.into_values().flatten());
    others
}

/// The parts of `nft -j list table` that the read-back needs; elements are parsed into
/// small typed values, not a JSON tree.
#[derive(Deserialize)]
struct Listing {
    nftables: Vec<Item>,
}

#[derive(Deserialize)]
struct Item {
    set: Option<ListedSet>,
    counter: Option<Value>,
    chain: Option<Value>,
    rule: Option<Value>,
}

#[derive(Deserialize)]
struct ListedSet {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    flags: Vec<String>,
    #[serde(default)]
    elem: Vec<ListedElem>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ListedElem {
    Addr(String),
    Prefix { prefix: ListedPrefix },
    Range { range: (String, String) },
    Wrapped { elem: Box<ListedVal> },
}

#[derive(Deserialize)]
struct ListedPrefix {
    addr: String,
    len: u8,
}

#[derive(Deserialize)]
struct ListedVal {
    val: ListedElem,
}

impl ListedElem {
    fn range(&self) -> Option<(u128, u128)> {
        let one = |s: &str| listed_range(s, None);
        match self {
            Self::Addr(s) => one(s),
            Self::Prefix { prefix } => listed_range(&prefix.addr, Some(prefix.len)),
            Self::Range { range } => Some((one(&range.0)?.0, one(&range.1)?.1)),
            Self::Wrapped { elem } => elem.val.range(),
        }
    }
}

fn set_item(name: &str, kind: &str, flags: &[String]) -> String {
    let mut set = json!({"name": name, "type": kind});
    if !flags.is_empty() {
        set["flags"] = json!(flags);
    }
    json!({ "set": set }).to_string()
}

fn listing_items(listing: &Listing) -> Vec<String> {
    let mut items = Vec::new();
    for i in &listing.nftables {
        if let Some(s) = &i.set {
            items.push((None, set_item(&s.name, &s.kind, &s.flags)));
        }
        for (k, v) in [
            ("counter", &i.counter),
            ("chain", &i.chain),
            ("rule", &i.rule),
        ] {
            if let Some(v) = v {
                let o = json!({ k: v });
                items.push((rule_chain(&o), normalize(&o).to_string()));
            }
        }
    }
    in_order(items.into_iter())
}

/// The range of an element as the kernel lists it. Parsed as plain text, not by the rules
/// for signed inputs (the kernel may list `0.0.0.0` as the start of a range).
fn listed_range(addr: &str, len: Option<u8>) -> Option<(u128, u128)> {
    let (bits, width) = match addr.parse::<IpAddr>().ok()? {
        IpAddr::V4(a) => (u128::from(u32::from(a)), 32u32),
        IpAddr::V6(a) => (u128::from(a), 128u32),
    };
    let len = u32::from(len.unwrap_or(width as u8));
    if len > width {
        return None;
    }
    let host = width - len;
    let span = if host >= 128 {
        u128::MAX
    } else {
        (1u128 << host) - 1
    };
    Some((bits & !span, bits | span))
}

/// Check a full listing: the structure matches, and every compiled entry is blocked by the
/// set it belongs in (interval sets may have merged neighbours; more blocking is allowed,
/// less is not).
pub fn verify_intel_listing(rs: &IntelRuleset, listing: &str) -> Result<(), String> {
    let listing: Listing = serde_json::from_str(listing)
        .map_err(|e| format!("the intel table listing does not parse: {e}"))?;
    let (want, held_items) = (structure_items(rs), listing_items(&listing));
    if want != held_items {
        let missing = want.iter().find(|i| !held_items.contains(i));
        let extra = held_items.iter().find(|i| !want.contains(i));
        return Err(format!(
            "the intel table's chains, rules or sets differ from the compiled ones (missing {}, unexpected {})",
            missing.map_or("nothing", String::as_str),
            extra.map_or("nothing", String::as_str)
        ));
    }
    let mut held: BTreeMap<&str, Vec<(u128, u128)>> = BTreeMap::new();
    for s in listing.nftables.iter().filter_map(|i| i.set.as_ref()) {
        let mut ranges: Vec<(u128, u128)> = s.elem.iter().filter_map(ListedElem::range).collect();
        ranges.sort_unstable();
        held.insert(&s.name, ranges);
    }
    for (_, s) in sets(rs) {
        let ranges = held.get(s.name.as_str()).map(Vec::as_slice).unwrap_or(&[]);
        for e in s.elems(rs) {
            let (lo, hi) = e.range();
            // The last range starting at or before `lo` must reach `hi`.
            let i = ranges.partition_point(|r| r.0 <= lo);
            if i == 0 || ranges[i - 1].1 < hi {
                return Err(format!(
                    "set {} is missing {}",
                    s.name,
                    serde_json::to_string(&e).unwrap_or_default()
                ));
            }
        }
    }
    Ok(())
}

/// Replace the intel table with `rs` in one transaction and verify it by a full read-back:
/// over netlink when the backend has a socket for it (see `intel_netlink`), else as one
/// `nft` JSON script and a full listing.
pub fn apply_intel(backend: &mut dyn Backend, rs: &IntelRuleset) -> Result<(), EnforceError> {
    if let Some(r) = with_netlink(backend, |nl, b| intel_netlink::replace(nl, b, rs)) {
        return r;
    }
    backend
        .apply(&render_intel(rs))
        .map_err(EnforceError::Apply)?;
    let listing = backend
        .list_table(INTEL_TABLE)
        .map_err(EnforceError::ReadBack)?
        .ok_or_else(|| EnforceError::Mismatch {
            expected: intel_structure_digest(rs),
            found: "absent".into(),
        })?;
    verify_intel_listing(rs, &listing).map_err(|why| EnforceError::Mismatch {
        expected: intel_structure_digest(rs),
        found: why,
    })
}

/// Whether `new` has the categories and sets of `old`, in the same order, so that an update
/// can change their elements in place instead of replacing the table.
pub(super) fn same_layout(old: &IntelRuleset, new: &IntelRuleset) -> bool {
    let names = |rs: &IntelRuleset| {
        rs.categories
            .iter()
            .map(|c| c.name.clone())
            .collect::<Vec<_>>()
    };
    let shape = |rs: &IntelRuleset| {
        sets(rs)
            .into_iter()
            .map(|(_, s)| s.name)
            .collect::<Vec<_>>()
    };
    names(old) == names(new) && shape(old) == shape(new)
}

/// Move the kernel from `old` to `new` with element additions (and deletions from hash sets
/// only), in one transaction, when the structure is unchanged and no prefix is removed.
/// Returns `Ok(false)` when that is not possible: the caller replaces the table instead.
pub fn update_intel(
    backend: &mut dyn Backend,
    old: &IntelRuleset,
    new: &IntelRuleset,
) -> Result<bool, NftError> {
    if let Some(r) = with_netlink(backend, |nl, _| intel_netlink::update(nl, old, new)) {
        return r;
    }
    if !same_layout(old, new) {
        return Ok(false);
    }
    let mut cmds = Vec::new();
    for (i, (o, n)) in old.categories.iter().zip(&new.categories).enumerate() {
        let (v4h_gone, v4h_added) =
            merge_delta(&o.v4_hosts, &n.v4_hosts, |a| Elem::Host(IpAddr::V4(*a)));
        let (v6h_gone, v6h_added) =
            merge_delta(&o.v6_hosts, &n.v6_hosts, |a| Elem::Host(IpAddr::V6(*a)));
        let (v4n_gone, v4n_added) = merge_delta(&o.v4_nets, &n.v4_nets, |c| Elem::Net(*c));
        let (v6n_gone, v6n_added) = merge_delta(&o.v6_nets, &n.v6_nets, |c| Elem::Net(*c));
        if !v4n_gone.is_empty() || !v6n_gone.is_empty() {
            return Ok(false);
        }
        // Additions everywhere; deletions only from hash sets (never from interval sets).
        let changes: [(&str, &str, Vec<Elem>); 6] = [
            ("add", "v4h", v4h_added),
            ("add", "v6h", v6h_added),
            ("add", "v4n", v4n_added),
            ("add", "v6n", v6n_added),
            ("delete", "v4h", v4h_gone),
            ("delete", "v6h", v6h_gone),
        ];
        for (op, suffix, elems) in changes {
            if !elems.is_empty() {
                let set = format!("c{i}_{suffix}");
                cmds.push(json!({ op: {"element": {"family": "inet", "table": INTEL_TABLE, "name": set, "elem": elems}}}));
            }
        }
    }
    if old.protected != new.protected {
        cmds.extend(exemption_commands(&new.protected));
    }
    if !cmds.is_empty() {
        backend.apply(&json!({ "nftables": cmds }).to_string())?;
    }
    Ok(true)
}

/// Commands that refill both exemption chains with `protected` (inside one transaction).
fn exemption_commands(protected: &[Protected]) -> Vec<Value> {
    let mut cmds = Vec::new();
    for chain in [EXEMPT_OUT, EXEMPT_IN] {
        cmds.push(
            json!({"flush": {"chain": {"family": "inet", "table": INTEL_TABLE, "name": chain}}}),
        );
    }
    let (ex_out, ex_in) = exemption_rules(protected);
    cmds.extend(
        ex_out
            .iter()
            .map(|r| json!({ "add": rule_json(EXEMPT_OUT, r) })),
    );
    cmds.extend(
        ex_in
            .iter()
            .map(|r| json!({ "add": rule_json(EXEMPT_IN, r) })),
    );
    cmds
}

/// Put `protected` in force as the exemptions of the blocklists `rs` (the table in force):
/// both exemption chains are flushed and refilled in one transaction (the sets are not
/// touched, so this costs what a small ruleset does), then read back.
///
/// Over netlink (when the backend has a socket for it) `nft` compiles the table's
/// structure with the new exemptions into the scratch table, which is read back; the new
/// chains' rules are copied from it, and the table's declarations and rules are then
/// dumped and compared with the scratch table's. No `nft` process lists the intel table
/// (whose listing fetches every element of its sets).
pub fn update_exemptions(
    backend: &mut dyn Backend,
    rs: &IntelRuleset,
    protected: &[Protected],
) -> Result<(), EnforceError> {
    if let Some(r) = with_netlink(backend, |nl, b| {
        intel_netlink::refill_exemptions(nl, b, rs, protected)
    }) {
        return r;
    }
    let cmds = exemption_commands(protected);
    backend
        .apply(&json!({ "nftables": cmds }).to_string())
        .map_err(EnforceError::Apply)?;
    let (ex_out, ex_in) = exemption_rules(protected);
    for (chain, rules) in [(EXEMPT_OUT, ex_out), (EXEMPT_IN, ex_in)] {
        let want: Vec<String> = rules
            .iter()
            .map(|r| normalize(&rule_json(chain, r)).to_string())
            .collect();
        let held = chain_rules(backend, chain).map_err(EnforceError::ReadBack)?;
        // In order: a rule moved is a rule changed.
        if held.as_ref() != Some(&want) {
            return Err(EnforceError::Mismatch {
                expected: format!("{} rules in {chain}", rules.len()),
                found: held.map_or("absent".into(), |h| format!("{} rules", h.len())),
            });
        }
    }
    Ok(())
}

/// The normalized rules of one chain of the intel table, `None` if it is absent.
fn chain_rules(backend: &mut dyn Backend, chain: &str) -> Result<Option<Vec<String>>, NftError> {
    let Some(text) = backend.list_chain(INTEL_TABLE, chain)? else {
        return Ok(None);
    };
    let listing: Value =
        serde_json::from_str(&text).map_err(|e| NftError::Output(e.to_string()))?;
    Ok(Some(
        listing["nftables"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|o| o.get("rule").is_some())
            .map(|o| normalize(o).to_string())
            .collect(),
    ))
}

/// The cheap check of every tick, over netlink only (`None` through `nft`): the intel
/// table's flags, declarations, rules and set counts are still those put in force.
pub fn intel_quick_intact(
    backend: &mut dyn Backend,
    rs: &IntelRuleset,
) -> Option<Result<bool, NftError>> {
    with_netlink(backend, |nl, _| intel_netlink::rules_intact(nl, rs))
}

/// The cheap, frequent check: the intel table's chains still hold the compiled rules
/// (over netlink, a dump of the rules only; through `nft`, `nft list chain`, which prints
/// no elements but fetches them all).
pub fn intel_chains_intact(backend: &mut dyn Backend, rs: &IntelRuleset) -> Result<bool, NftError> {
    // Over netlink, the rules as put in force (a dump of rules only: `nft list chain`
    // fetches every element of the table first).
    if let Some(r) = with_netlink(backend, |nl, _| intel_netlink::rules_intact(nl, rs)) {
        return r;
    }
    for chain in ["output", "input", EXEMPT_OUT, EXEMPT_IN] {
        let want: Vec<String> = structure(rs)
            .iter()
            .filter(|o| o.get("rule").is_some_and(|r| r["chain"] == chain))
            .map(|o| normalize(o).to_string())
            .collect();
        let held = chain_rules(backend, chain)?;
        // In order: a drop moved in front of the exemptions cuts what they protect.
        if held != Some(want) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The script (JSON text) that refills the named sets of the intel table with their
/// compiled elements in one transaction (each set flushed, then its elements added): the
/// repair when someone changed only set elements, far cheaper than replacing the table.
/// `None` if a name is not a set of `rs`.
pub fn render_intel_refill(rs: &IntelRuleset, names: &[String]) -> Option<String> {
    let all = sets(rs);
    let mut cmds = Vec::new();
    for name in names {
        let (_, s) = all.iter().find(|(_, s)| &s.name == name)?;
        let set = json!({"family": "inet", "table": INTEL_TABLE, "name": s.name});
        cmds.push(json!({"flush": {"set": set}}).to_string());
        cmds.push(format!(
            "{{\"add\":{{\"element\":{{\"family\":\"inet\",\"table\":{},\"name\":{},\"elem\":{}}}}}}}",
            json!(INTEL_TABLE),
            json!(s.name),
            serde_json::to_string(&s.elems(rs).collect::<Vec<_>>()).ok()?
        ));
    }
    Some(format!("{{\"nftables\":[{}]}}", cmds.join(",")))
}

/// The full read-back of the intel table put in force with `rs`: over netlink when the
/// backend has a socket for it (declarations and rules as confirmed when it was put
/// there, each set's elements as compiled; an error when it has not confirmed `rs` in
/// force), else by `nft -j list table`. `Err` says what differs.
/// Whether another socket owns a table named as the blocklist table or its scratch table
/// (nftables' owner flag): `None` without a netlink socket or when it cannot be read.
pub fn intel_names_held(backend: &mut dyn Backend) -> Option<bool> {
    with_netlink(backend, |nl, _| intel_netlink::names_held(nl).ok()).flatten()
}

pub fn check_intel(backend: &mut dyn Backend, rs: &IntelRuleset) -> Result<(), String> {
    if let Some(r) = with_netlink(backend, |nl, _| intel_netlink::check(nl, rs)) {
        return r;
    }
    match backend.list_table(INTEL_TABLE) {
        Ok(Some(text)) => verify_intel_listing(rs, &text),
        Ok(None) => Err("the blocklist table is gone".to_owned()),
        Err(e) => Err(format!("the blocklist table could not be read back: {e}")),
    }
}

/// Put back the compiled elements of the named sets (the repair when others changed only
/// set elements), or the whole table when that is not possible, in one transaction, and
/// read back what was put back. Returns how (`sets refilled`, `table restored`).
pub fn refill_intel(
    backend: &mut dyn Backend,
    rs: &IntelRuleset,
    names: &[String],
) -> Result<&'static str, String> {
    if !names.is_empty()
        && let Some(r) = with_netlink(backend, |nl, _| intel_netlink::refill(nl, rs, names))
    {
        match r {
            Ok(true) => return Ok("sets refilled"),
            Ok(false) => {}
            Err(e) => return Err(e),
        }
    }
    if with_netlink(backend, |_, _| ()).is_some() {
        return apply_intel(backend, rs)
            .map(|()| "table restored")
            .map_err(|e| e.to_string());
    }
    let refill = (!names.is_empty())
        .then(|| render_intel_refill(rs, names))
        .flatten();
    let how = if refill.is_some() {
        "sets refilled"
    } else {
        "table restored"
    };
    let script = refill.unwrap_or_else(|| render_intel(rs));
    backend.apply(&script).map_err(|e| e.to_string())?;
    match backend.list_table(INTEL_TABLE) {
        Ok(Some(text)) => verify_intel_listing(rs, &text).map(|()| how),
        Ok(None) => Err("the blocklist table is gone after the repair".to_owned()),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(entries: &[&str]) -> IntelFeed {
        serde_json::from_value(json!({
            "schema": "enigm.intel/v1", "serial": 1,
            "issued_at": "2026-01-01T00:00:00Z", "expires_at": "2036-01-01T00:00:00Z",
            "categories": {"malware": entries}
        }))
        .expect("feed")
    }

    #[test]
    fn an_update_is_the_difference_of_each_set_and_nothing_else() {
        let old = compile_intel(Some(&feed(&[
            "10.0.0.1",
            "10.0.0.3",
            "10.0.0.1",
            "192.0.2.0/24",
            "198.51.100.0/24",
            "2001:db8::1",
        ])));
        let new = compile_intel(Some(&feed(&[
            "10.0.0.3",
            "10.0.0.2",
            "198.51.100.0/24",
            "203.0.113.0/24",
            "2001:db8::1",
        ])));
        assert!(same_layout(&old, &new));
        let show = |v: &[Elem]| -> Vec<String> {
            v.iter()
                .map(|e| serde_json::to_string(e).expect("json"))
                .collect()
        };
        let deltas: Vec<(String, Vec<String>, Vec<String>)> = sets(&new)
            .iter()
            .map(|(_, s)| {
                let (gone, added) = s.delta(&old, &new);
                (s.name.clone(), show(&gone), show(&added))
            })
            .collect();
        let prefix = |a: &str| format!("{{\"prefix\":{{\"addr\":\"{a}\",\"len\":24}}}}");
        assert_eq!(
            deltas,
            vec![
                (
                    "c0_v4h".to_owned(),
                    vec!["\"10.0.0.1\"".to_owned()],
                    vec!["\"10.0.0.2\"".to_owned()]
                ),
                (
                    "c0_v4n".to_owned(),
                    vec![prefix("192.0.2.0")],
                    vec![prefix("203.0.113.0")]
                ),
                ("c0_v6h".to_owned(), vec![], vec![]),
            ]
        );
        // Lookups on the sorted vectors.
        let (_, v4n) = &sets(&new)[1];
        let at = |a: &str| v4n.net_at_or_below(&new, a.parse().expect("addr"));
        assert_eq!(
            at("198.51.100.77"),
            Some("198.51.100.0/24".parse().expect("cidr"))
        );
        assert_eq!(at("10.0.0.1"), None);
        let (_, v4h) = &sets(&new)[0];
        assert!(v4h.has_host(&new, &"10.0.0.2".parse().expect("addr")));
        assert!(!v4h.has_host(&new, &"10.0.0.1".parse().expect("addr")));
    }

    #[test]
    fn nested_prefixes_are_dropped_and_disjoint_ones_kept() {
        let nets: Vec<Cidr> = [
            "10.0.0.0/8",
            "10.1.0.0/16",
            "10.1.2.0/24",
            "11.0.0.0/24",
            "11.0.1.0/24",
            "0.0.0.0/1",
        ]
        .iter()
        .map(|s| s.parse().expect("cidr"))
        .collect();
        let kept: Vec<String> = without_nested(nets)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(kept, ["0.0.0.0/1"]);
        let nets: Vec<Cidr> = ["10.1.0.0/16", "10.1.2.0/24", "11.0.0.0/24", "11.0.1.0/24"]
            .iter()
            .map(|s| s.parse().expect("cidr"))
            .collect();
        let kept: Vec<String> = without_nested(nets)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(kept, ["10.1.0.0/16", "11.0.0.0/24", "11.0.1.0/24"]);
    }
}
