//! The intel table `inet trustd_intel`: blocklists by category, kept apart from the small
//! policy table because it is large. Exact addresses go to hash sets (cheap to load and to
//! update), prefixes to interval sets; each category has one counter (counts only).
//!
//! Big interval sets are never edited element by element (deleting from one costs minutes);
//! a feed that removes prefixes replaces the table in one transaction instead.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde_json::{Value, json};

use super::{Backend, EnforceError, NftError};
use crate::bundle::sha256_hex;
use crate::policy::{Cidr, IntelFeed};

/// The intel table's name.
pub const INTEL_TABLE: &str = "trustd_intel";

/// One category's entries, split by family and kind. Set and counter names are derived
/// from the category's index (category names are not nft identifiers).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Category {
    /// The category's name in the feed.
    pub name: String,
    v4_hosts: BTreeSet<IpAddr>,
    v4_nets: BTreeSet<Cidr>,
    v6_hosts: BTreeSet<IpAddr>,
    v6_nets: BTreeSet<Cidr>,
}

/// The compiled intel table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IntelRuleset {
    /// Categories in name order.
    pub categories: Vec<Category>,
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

    /// The counter name of each category (posture shows counts by category name).
    pub fn counters(&self) -> BTreeMap<String, String> {
        self.categories
            .iter()
            .enumerate()
            .map(|(i, c)| (c.name.clone(), format!("intel_{i}")))
            .collect()
    }
}

/// Split a feed into sets.
pub fn compile_intel(feed: Option<&IntelFeed>) -> IntelRuleset {
    let mut out = IntelRuleset::default();
    for (name, entries) in feed.map(|f| &f.categories).into_iter().flatten() {
        let mut c = Category {
            name: name.clone(),
            ..Category::default()
        };
        for e in entries {
            match (e.addr().is_ipv4(), e.is_host()) {
                (true, true) => c.v4_hosts.insert(e.addr()),
                (true, false) => c.v4_nets.insert(*e),
                (false, true) => c.v6_hosts.insert(e.addr()),
                (false, false) => c.v6_nets.insert(*e),
            };
        }
        out.categories.push(c);
    }
    out
}

struct SetSpec {
    name: String,
    v6: bool,
    interval: bool,
    elems: Vec<Value>,
}

fn sets(rs: &IntelRuleset) -> Vec<(usize, SetSpec)> {
    let mut out = Vec::new();
    for (i, c) in rs.categories.iter().enumerate() {
        let hosts =
            |s: &BTreeSet<IpAddr>| s.iter().map(|a| json!(a.to_string())).collect::<Vec<_>>();
        let nets = |s: &BTreeSet<Cidr>| {
            s.iter()
                .map(|n| json!({"prefix": {"addr": n.addr().to_string(), "len": n.prefix()}}))
                .collect::<Vec<_>>()
        };
        for (suffix, v6, interval, elems) in [
            ("v4h", false, false, hosts(&c.v4_hosts)),
            ("v4n", false, true, nets(&c.v4_nets)),
            ("v6h", true, false, hosts(&c.v6_hosts)),
            ("v6n", true, true, nets(&c.v6_nets)),
        ] {
            if !elems.is_empty() {
                out.push((
                    i,
                    SetSpec {
                        name: format!("c{i}_{suffix}"),
                        v6,
                        interval,
                        elems,
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

fn structure(rs: &IntelRuleset) -> Vec<Value> {
    let mut out = Vec::new();
    for (i, _) in rs.categories.iter().enumerate() {
        out.push(json!({"counter": {"family": "inet", "table": INTEL_TABLE, "name": format!("intel_{i}")}}));
    }
    for (hook, prio) in [("output", -10), ("input", -10)] {
        out.push(
            json!({"chain": {"family": "inet", "table": INTEL_TABLE, "name": hook,
            "type": "filter", "hook": hook, "prio": prio, "policy": "accept"}}),
        );
    }
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

/// The script that replaces the intel table in one transaction.
pub fn render_intel(rs: &IntelRuleset) -> Value {
    let table = json!({"table": {"family": "inet", "name": INTEL_TABLE}});
    let mut cmds = vec![
        json!({"add": table.clone()}),
        json!({"delete": table.clone()}),
        json!({"add": table}),
    ];
    // Sets before the rules that reference them, with their elements.
    let mut structure = structure(rs);
    structure.sort_by_key(|o| match () {
        _ if o.get("counter").is_some() => 0,
        _ if o.get("set").is_some() => 1,
        _ if o.get("chain").is_some() => 2,
        _ => 3,
    });
    cmds.extend(structure.into_iter().map(|o| json!({ "add": o })));
    for (_, s) in sets(rs) {
        cmds.push(json!({"add": {"element": {"family": "inet", "table": INTEL_TABLE, "name": s.name, "elem": s.elems}}}));
    }
    json!({ "nftables": cmds })
}

/// Digest of the table's structure (chains, rules, set declarations), without elements:
/// what the frequent drift check compares.
pub fn intel_structure_digest(rs: &IntelRuleset) -> String {
    sha256_hex(structure_items(rs).join("\n").as_bytes())
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
                }
            }
        }
    }
    o
}

fn structure_items(rs: &IntelRuleset) -> Vec<String> {
    let mut items: Vec<String> = structure(rs)
        .iter()
        .map(|o| normalize(o).to_string())
        .collect();
    items.sort();
    items
}

fn listing_items(listing: &Value) -> Vec<String> {
    let mut items: Vec<String> = listing["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|o| {
            ["counter", "chain", "set", "rule"]
                .iter()
                .any(|k| o.get(*k).is_some())
        })
        .map(|o| normalize(o).to_string())
        .collect();
    items.sort();
    items
}

fn range_of(c: &Cidr) -> (u128, u128) {
    let (bits, width) = match c.addr() {
        IpAddr::V4(a) => (u128::from(u32::from(a)), 32u32),
        IpAddr::V6(a) => (u128::from(a), 128u32),
    };
    let host = width - u32::from(c.prefix());
    let span = if host >= 128 {
        u128::MAX
    } else {
        (1u128 << host) - 1
    };
    (bits, bits | span)
}

fn parse_elem(e: &Value) -> Option<(u128, u128)> {
    let one = |s: &str| s.parse::<Cidr>().ok().map(|c| range_of(&c));
    match e {
        Value::String(s) => one(s),
        Value::Object(_) => {
            if let Some(p) = e.get("prefix") {
                let c: Cidr = format!("{}/{}", p["addr"].as_str()?, p["len"].as_u64()?)
                    .parse()
                    .ok()?;
                Some(range_of(&c))
            } else if let Some(r) = e.get("range").and_then(Value::as_array) {
                Some((one(r.first()?.as_str()?)?.0, one(r.get(1)?.as_str()?)?.1))
            } else {
                parse_elem(e.get("elem")?.get("val")?)
            }
        }
        _ => None,
    }
}

/// Check a full listing: the structure matches, and every compiled entry is blocked by the
/// set it belongs in (interval sets may have merged neighbours; more blocking is allowed,
/// less is not).
pub fn verify_intel_listing(rs: &IntelRuleset, listing: &Value) -> Result<(), String> {
    let (want, held_items) = (structure_items(rs), listing_items(listing));
    if want != held_items {
        let missing = want.iter().find(|i| !held_items.contains(i));
        let extra = held_items.iter().find(|i| !want.contains(i));
        return Err(format!(
            "the intel table's chains, rules or sets differ from the compiled ones (missing {}, unexpected {})",
            missing.map_or("nothing", String::as_str),
            extra.map_or("nothing", String::as_str)
        ));
    }
    let mut held: BTreeMap<String, Vec<(u128, u128)>> = BTreeMap::new();
    for o in listing["nftables"].as_array().into_iter().flatten() {
        if let Some(s) = o.get("set") {
            let name = s["name"].as_str().unwrap_or("").to_owned();
            let mut ranges: Vec<(u128, u128)> = s["elem"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(parse_elem)
                .collect();
            ranges.sort_unstable();
            held.insert(name, ranges);
        }
    }
    for (_, s) in sets(rs) {
        let ranges = held.get(&s.name).map(Vec::as_slice).unwrap_or(&[]);
        for e in &s.elems {
            let Some((lo, hi)) = parse_elem(e) else {
                return Err(format!("set {}: cannot read compiled element {e}", s.name));
            };
            // The last range starting at or before `lo` must reach `hi`.
            let i = ranges.partition_point(|r| r.0 <= lo);
            if i == 0 || ranges[i - 1].1 < hi {
                return Err(format!("set {} is missing {e}", s.name));
            }
        }
    }
    Ok(())
}

/// Replace the intel table with `rs` and verify it by a full read-back.
pub fn apply_intel(backend: &mut dyn Backend, rs: &IntelRuleset) -> Result<(), EnforceError> {
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

/// Move the kernel from `old` to `new` with element additions (and deletions from hash sets
/// only), in one transaction, when the structure is unchanged and no prefix is removed.
/// Returns `Ok(false)` when that is not possible: the caller replaces the table instead.
pub fn update_intel(
    backend: &mut dyn Backend,
    old: &IntelRuleset,
    new: &IntelRuleset,
) -> Result<bool, NftError> {
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
    if names(old) != names(new) || shape(old) != shape(new) {
        return Ok(false);
    }
    let mut cmds = Vec::new();
    for (o, n) in old.categories.iter().zip(&new.categories) {
        if !o.v4_nets.is_subset(&n.v4_nets) || !o.v6_nets.is_subset(&n.v6_nets) {
            return Ok(false);
        }
        let i = new
            .categories
            .iter()
            .position(|c| c.name == n.name)
            .unwrap_or(0);
        let add = |suffix: &str, elems: Vec<Value>, cmds: &mut Vec<Value>| {
            if !elems.is_empty() {
                cmds.push(json!({"add": {"element": {"family": "inet", "table": INTEL_TABLE, "name": format!("c{i}_{suffix}"), "elem": elems}}}));
            }
        };
        let del = |suffix: &str, elems: Vec<Value>, cmds: &mut Vec<Value>| {
            if !elems.is_empty() {
                cmds.push(json!({"delete": {"element": {"family": "inet", "table": INTEL_TABLE, "name": format!("c{i}_{suffix}"), "elem": elems}}}));
            }
        };
        let s = |v: &IpAddr| json!(v.to_string());
        let p = |c: &Cidr| json!({"prefix": {"addr": c.addr().to_string(), "len": c.prefix()}});
        add(
            "v4h",
            n.v4_hosts.difference(&o.v4_hosts).map(s).collect(),
            &mut cmds,
        );
        add(
            "v6h",
            n.v6_hosts.difference(&o.v6_hosts).map(s).collect(),
            &mut cmds,
        );
        add(
            "v4n",
            n.v4_nets.difference(&o.v4_nets).map(p).collect(),
            &mut cmds,
        );
        add(
            "v6n",
            n.v6_nets.difference(&o.v6_nets).map(p).collect(),
            &mut cmds,
        );
        del(
            "v4h",
            o.v4_hosts.difference(&n.v4_hosts).map(s).collect(),
            &mut cmds,
        );
        del(
            "v6h",
            o.v6_hosts.difference(&n.v6_hosts).map(s).collect(),
            &mut cmds,
        );
    }
    if !cmds.is_empty() {
        backend.apply(&json!({ "nftables": cmds }))?;
    }
    Ok(true)
}
