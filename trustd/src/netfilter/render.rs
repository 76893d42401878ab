//! Ruleset -> nft JSON, and the digest that read-back compares.
//!
//! The JSON is written in the form `nft -j list` prints back (single values as scalars, no
//! protocol match that a port match already implies), so that the digest of the compiled
//! ruleset and the digest of the kernel's listing are computed over the same text.

use serde_json::{Value, json};

use super::TABLE;
use super::model::{Action, FLOW_MARK_MASK, L4, Match, Rule, Ruleset};
use crate::bundle::sha256_hex;
use crate::policy::Cidr;

fn one_or_set<T: Into<Value> + Clone + Ord>(items: &[T]) -> Value {
    let mut v: Vec<T> = items.to_vec();
    v.sort();
    v.dedup();
    if v.len() == 1 {
        v[0].clone().into()
    } else {
        json!({ "set": v.into_iter().map(Into::into).collect::<Vec<Value>>() })
    }
}

fn addr(c: &Cidr) -> Value {
    if c.is_host() {
        json!(c.addr().to_string())
    } else {
        json!({"prefix": {"addr": c.addr().to_string(), "len": c.prefix()}})
    }
}

fn m(op: &str, left: Value, right: Value) -> Value {
    json!({"match": {"op": op, "left": left, "right": right}})
}

fn meta(key: &str) -> Value {
    json!({"meta": {"key": key}})
}

fn payload(protocol: &str, field: &str) -> Value {
    json!({"payload": {"protocol": protocol, "field": field}})
}

fn l4name(p: L4) -> &'static str {
    match p {
        L4::Tcp => "tcp",
        L4::Udp => "udp",
        L4::Any => "th",
    }
}

fn ct(key: &str) -> Value {
    json!({"ct": {"key": key}})
}

fn render_match(x: &Match, generation: u32) -> Value {
    match x {
        Match::OifName(n) => m("==", meta("oifname"), one_or_set(n)),
        Match::OifNameNot(n) => m("!=", meta("oifname"), one_or_set(n)),
        Match::IifName(n) => m("==", meta("iifname"), one_or_set(n)),
        Match::IifNameNot(n) => m("!=", meta("iifname"), one_or_set(n)),
        Match::OifLoopback(is) => m(
            if *is { "==" } else { "!=" },
            meta("oif"),
            json!(LOOPBACK_INDEX),
        ),
        Match::IifLoopback => m("==", meta("iif"), json!(LOOPBACK_INDEX)),
        Match::CtState(s) if s.len() == 1 => m("in", json!({"ct": {"key": "state"}}), json!(s[0])),
        Match::CtState(s) => m("in", json!({"ct": {"key": "state"}}), json!(s)),
        Match::Daddr(c) => m(
            "==",
            payload(if c.addr().is_ipv4() { "ip" } else { "ip6" }, "daddr"),
            addr(c),
        ),
        Match::Saddr(c) => m(
            "==",
            payload(if c.addr().is_ipv4() { "ip" } else { "ip6" }, "saddr"),
            addr(c),
        ),
        Match::L4Proto(p) => m("==", meta("l4proto"), one_or_set(p)),
        Match::Dport(p, ports) => m("==", payload(l4name(*p), "dport"), one_or_set(ports)),
        Match::Sport(p, ports) => m("==", payload(l4name(*p), "sport"), one_or_set(ports)),
        Match::SkUid(u) => m("==", meta("skuid"), one_or_set(u)),
        Match::SkUidNot(u) => m("!=", meta("skuid"), json!(u)),
        Match::SkGid(g) => m("==", meta("skgid"), one_or_set(g)),
        // The kernel lists these by type number; the compiler gives them in that order.
        Match::Icmpv6Type(t) if t.len() == 1 => m("==", payload("icmpv6", "type"), json!(t[0])),
        Match::Icmpv6Type(t) => m("==", payload("icmpv6", "type"), json!({ "set": t })),
        Match::Ipv4 => m("==", meta("nfproto"), json!("ipv4")),
        // `ct mark & 0xffffff00 == GEN` lists as a prefix of the mark (the mask is one).
        Match::FlowCurrent => m(
            "==",
            ct("mark"),
            json!({"prefix": {"addr": generation, "len": FLOW_MARK_MASK.count_ones()}}),
        ),
        Match::CtReply => m("==", ct("direction"), json!("reply")),
    }
}

/// A rule's expression list, in the shape `nft -j list` prints it; `generation` is the
/// ruleset's flow generation (what `Admit` sets and `FlowCurrent` checks).
pub(super) fn render_expr(r: &Rule, generation: u32) -> Vec<Value> {
    let mut expr: Vec<Value> = r
        .matches
        .iter()
        .map(|x| render_match(x, generation))
        .collect();
    if let Some(c) = &r.counter {
        expr.push(json!({"counter": c}));
    }
    match &r.action {
        Action::Accept => expr.push(json!({"accept": null})),
        Action::Admit => {
            // `ct mark set ct mark & ~MASK | GEN`; the kernel lists the mask with GEN's bits
            // set (`& (~MASK | GEN) | GEN`, the same function), so it is written that way.
            expr.push(json!({"mangle": {"key": ct("mark"), "value": {"|": [
                {"&": [ct("mark"), !FLOW_MARK_MASK | generation]}, generation]}}}));
            expr.push(json!({"accept": null}));
        }
        Action::Goto(chain) => expr.push(json!({"goto": {"target": chain}})),
        Action::Jump(chain) => expr.push(json!({"jump": {"target": chain}})),
        Action::Drop => expr.push(json!({"drop": null})),
        Action::Redirect(port) => expr.push(json!({"redirect": {"port": port}})),
    }
    expr
}

/// The objects of the table (counters, chains, rules) in the shape `nft -j list` uses,
/// without handles.
fn objects(rs: &Ruleset) -> Vec<Value> {
    let mut out = Vec::new();
    for c in &rs.counters {
        out.push(json!({"counter": {"family": "inet", "table": TABLE, "name": c}}));
    }
    for c in &rs.chains {
        let mut chain = json!({"family": "inet", "table": TABLE, "name": c.name});
        if let Some(b) = &c.base {
            chain["type"] = json!(b.kind);
            chain["hook"] = json!(b.hook);
            chain["prio"] = json!(b.prio);
            chain["policy"] = json!(b.policy);
        }
        out.push(json!({"chain": chain}));
    }
    for c in &rs.chains {
        for r in &c.rules {
            out.push(json!({"rule": {"family": "inet", "table": TABLE, "chain": c.name, "expr": render_expr(r, rs.generation)}}));
        }
    }
    out
}

/// The nft JSON script that replaces trustd's table in one transaction: add (so that the
/// delete cannot fail), delete, add, then the content. Either all of it is in force after
/// `nft -f`, or none of it and the previous table stays.
pub fn render(rs: &Ruleset) -> Value {
    let table = json!({"table": {"family": "inet", "name": TABLE}});
    let mut cmds = vec![
        json!({"add": table.clone()}),
        json!({"delete": table.clone()}),
        json!({"add": table}),
    ];
    cmds.extend(objects(rs).into_iter().map(|o| json!({ "add": o })));
    json!({ "nftables": cmds })
}

/// Reduce listing objects to what the digest covers: the table's flags if it has any (trustd
/// never sets one), counters by name, chains with their hooks, rules with their expressions,
/// in a fixed order; no handles, no counter values.
/// The loopback device's interface index: the first of every network namespace.
pub const LOOPBACK_INDEX: u32 = 1;

/// An interface index match (`meta iif`/`meta oif`) with the index it compares: `nft`
/// lists the index by the interface's current name (which a rename changes; the compiled
/// rule names the index), so a listed name is looked up (in this thread's network
/// namespace). A name no interface has stays as listed, and compares unequal.
pub(super) fn listed_index(e: &mut Value) {
    let Some(m) = e.get_mut("match") else {
        return;
    };
    let key = m
        .get("left")
        .and_then(|l| l.get("meta"))
        .and_then(|x| x.get("key"))
        .and_then(Value::as_str);
    if !matches!(key, Some("iif" | "oif")) {
        return;
    }
    if let Some(i) = m
        .get("right")
        .and_then(Value::as_str)
        .and_then(crate::sys::if_index)
    {
        m["right"] = json!(i);
    }
}

fn canonical(objs: &[Value]) -> Vec<Value> {
    let mut counters = Vec::new();
    let mut chains = Vec::new();
    let mut rules: Vec<(String, Value)> = Vec::new();
    let mut flags = Vec::new();
    for o in objs {
        if let Some(f) = o.get("table").and_then(|t| t.get("flags")) {
            // A dormant table lists its chains and rules but filters nothing.
            flags.push(json!({ "table_flags": f }));
        } else if let Some(c) = o.get("counter") {
            counters.push(json!({"counter": c.get("name")}));
        } else if let Some(c) = o.get("chain") {
            chains.push(json!({"chain": [c.get("name"), c.get("type"), c.get("hook"), c.get("prio"), c.get("policy")]}));
        } else if let Some(r) = o.get("rule") {
            let mut expr = r.get("expr").cloned().unwrap_or(Value::Null);
            // A counter reference lists as the name; an anonymous counter carries values.
            if let Some(items) = expr.as_array_mut() {
                for e in items {
                    if let Some(c) = e.get_mut("counter")
                        && c.is_object()
                    {
                        *c = Value::Null;
                    }
                    listed_index(e);
                }
            }
            let chain = r
                .get("chain")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            rules.push((chain.clone(), json!({"rule": [chain, expr]})));
        }
    }
    counters.sort_by_key(|v| v.to_string());
    chains.sort_by_key(|v| v.to_string());
    // Rules keep their order within a chain; chains are taken in name order.
    rules.sort_by(|a, b| a.0.cmp(&b.0));
    flags
        .into_iter()
        .chain(counters)
        .chain(chains)
        .chain(rules.into_iter().map(|(_, v)| v))
        .collect()
}

fn digest(objs: &[Value]) -> String {
    sha256_hex(Value::Array(canonical(objs)).to_string().as_bytes())
}

/// The flow generation of `rs`: the first 24 bits of the digest of `rs` with its generation
/// left out (taken as 0), in the bits under [`FLOW_MARK_MASK`]; never 0 (a flow nothing has
/// marked carries 0). Equal rulesets get equal generations; two different rulesets get the
/// same one with probability 2^-24.
pub fn flow_generation(rs: &Ruleset) -> u32 {
    let unmarked = Ruleset {
        generation: 0,
        ..rs.clone()
    };
    let d = canonical_digest(&unmarked);
    let top = u32::from_str_radix(&d[..8], 16).expect("a sha256 hex digest") & FLOW_MARK_MASK;
    if top == 0 {
        1 << FLOW_MARK_MASK.trailing_zeros()
    } else {
        top
    }
}

/// Digest of a compiled ruleset.
pub fn canonical_digest(rs: &Ruleset) -> String {
    digest(&objects(rs))
}

/// Digest of `nft -j list table inet trustd` output.
pub fn listing_digest(listing: &Value) -> String {
    let objs: Vec<Value> = listing
        .get("nftables")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    digest(&objs)
}
