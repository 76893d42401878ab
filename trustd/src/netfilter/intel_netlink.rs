//! The intel table over nf_tables netlink (docs/ARCHITECTURE.md, "The blocklist table over
//! netlink"): the table is replaced, updated, refilled and read back by trustd itself, in
//! batches that the kernel commits as one transaction, without `nft` handling the elements.
//!
//! How a replacement is built: `nft` compiles the small part (counters, set declarations,
//! chains and rules, the same JSON as the `nft` path) into a scratch table without hooks
//! ([`TEMPLATE_TABLE`]), which is read back with `nft -j list` and compared with the compiled
//! structure. Its objects are then dumped over netlink and copied attribute by attribute
//! into one batch that deletes and re-creates `inet trustd_intel`, streams every element
//! straight from the compiled sets into element messages, adds the hooks, and deletes the
//! scratch table. So the rule bytecode is nft's own (admins' `nft list` shows what it
//! always did) and the elements never pass through `nft`, JSON or a second copy.
//!
//! Read-back: the new table's declarations and rules are dumped and compared with the
//! scratch table's; each set's elements are dumped and checked one message at a time
//! against the compiled sets (membership and counts: the kernel holds exactly the compiled
//! elements, not more, not fewer).
//!
//! Touches only `inet trustd_intel` and its scratch table.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use super::compile::Protected;
use super::intel::{
    EXEMPT_IN, EXEMPT_OUT, Elem, INTEL_TABLE, IntelRuleset, SetSpec, TEMPLATE_TABLE,
    intel_structure_digest, intel_structure_digest_with, render_template, sets,
    verify_template_listing,
};
use super::{Backend, EnforceError, NftError};
use crate::bundle::sha256_hex;
use crate::sys::nfnl::{Batch, MSG_ROOM, NfSocket, NfnlError, READ_TRIES, attrs, raw_attrs};

const NFPROTO_INET: u8 = 1;

const NFT_MSG_NEWTABLE: u8 = 0;
const NFT_MSG_GETTABLE: u8 = 1;
const NFT_MSG_DELTABLE: u8 = 2;
const NFT_MSG_NEWCHAIN: u8 = 3;
const NFT_MSG_GETCHAIN: u8 = 4;
const NFT_MSG_NEWRULE: u8 = 6;
const NFT_MSG_GETRULE: u8 = 7;
const NFT_MSG_DELRULE: u8 = 8;
const NFT_MSG_NEWSET: u8 = 9;
const NFT_MSG_GETSET: u8 = 10;
const NFT_MSG_NEWSETELEM: u8 = 12;
const NFT_MSG_GETSETELEM: u8 = 13;
const NFT_MSG_DELSETELEM: u8 = 14;
const NFT_MSG_NEWOBJ: u8 = 18;
const NFT_MSG_GETOBJ: u8 = 19;

const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;

/// `NFTA_TABLE_NAME`.
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_FLAGS: u16 = 2;
/// `NFTA_TABLE_OWNER`: the port id of the netlink socket that owns the table.
const NFTA_TABLE_OWNER: u16 = 7;
/// `NFT_TABLE_F_OWNER` (Linux 5.12): only the creating netlink socket may change or delete
/// the table; others (root's `nft` included) get `EPERM`, and `nft flush ruleset` passes it by.
pub const NFT_TABLE_F_OWNER: u32 = 0x2;
/// `NFT_TABLE_F_PERSIST` (Linux 6.9): with [`NFT_TABLE_F_OWNER`], the table stays when its
/// owner's socket closes (orphaned: no owner, anyone may change it) instead of going with
/// it; a socket that re-creates it with both flags adopts it.
pub const NFT_TABLE_F_PERSIST: u32 = 0x4;
/// `NFTA_CHAIN_*`.
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
/// `NFTA_RULE_*`.
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_USERDATA: u16 = 7;
/// `NFTA_SET_*`.
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_ID: u16 = 10;
/// `NFTA_SET_COUNT` (Linux 6.16 and later): how many elements the set holds.
const NFTA_SET_COUNT: u16 = 20;
/// The set attributes that declare a set (name, flags, key and data types and lengths,
/// policy, description, timeouts, nft's user data, object type, expressions); handles,
/// ids and the table are the kernel's or set here.
const SET_DECL: [u16; 14] = [2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 15, 17, 18];
/// `NFT_SET_ANONYMOUS`.
const NFT_SET_ANONYMOUS: u32 = 0x1;
/// `NFTA_SET_ELEM_LIST_*`.
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_LIST_SET_ID: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
/// `NFTA_SET_ELEM_*`.
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_FLAGS: u16 = 3;
const NFTA_SET_ELEM_USERDATA: u16 = 6;
const NFTA_DATA_VALUE: u16 = 1;
/// `NFT_SET_ELEM_INTERVAL_END`: the element closes an interval (its key is one past it).
const NFT_SET_ELEM_INTERVAL_END: u32 = 1;
/// `NFT_SET_ELEM_CATCHALL`: the element has no key and matches every key (Linux 5.13
/// and later). The feed never compiles one; the kernel does not count it in
/// `NFTA_SET_COUNT`.
const NFT_SET_ELEM_CATCHALL: u32 = 2;
/// nft's element user data marking an interval open to the top of the address space
/// (`NFTNL_UDATA_SET_ELEM_FLAGS` = `NFTNL_SET_ELEM_F_INTERVAL_OPEN`), so that `nft list`
/// shows it as the prefix it is.
const UDATA_INTERVAL_OPEN: [u8; 6] = [1, 4, 1, 0, 0, 0];
/// `NFTA_OBJ_*`.
const NFTA_OBJ_TABLE: u16 = 1;
const NFTA_OBJ_NAME: u16 = 2;
const NFTA_OBJ_TYPE: u16 = 3;
const NFTA_OBJ_DATA: u16 = 4;
/// Netfilter hooks (`NF_INET_LOCAL_IN`, `NF_INET_LOCAL_OUT`) and `NF_ACCEPT`.
const NF_INET_LOCAL_IN: u32 = 1;
const NF_INET_LOCAL_OUT: u32 = 3;
const NF_ACCEPT: u32 = 1;

/// The base chains of the intel table: name, hook, priority (as in the compiled structure).
const BASE_CHAINS: [(&str, u32, i32); 2] = [
    ("output", NF_INET_LOCAL_OUT, -150),
    ("input", NF_INET_LOCAL_IN, -10),
];

/// The kernel's nf_tables over netlink, for the intel table: a socket, and the declarations
/// and rules of the table last put in force (what the later checks compare, keyed by the
/// compiled structure's digest).
#[derive(Debug)]
pub struct IntelNetlink {
    sock: NfSocket,
    applied: Option<(String, Shape)>,
    timings: Vec<(&'static str, Duration)>,
    /// Whether a replace makes the table owned by this socket ([`NFT_TABLE_F_OWNER`] and
    /// [`NFT_TABLE_F_PERSIST`]).
    own: bool,
}

impl IntelNetlink {
    /// Use this socket (in the network namespace whose tables it should change). Each
    /// replace makes the blocklist table owned by this socket, so that no other process
    /// can change or delete it while the socket is open (see [`Self::unowned`]).
    pub fn new(sock: NfSocket) -> Self {
        Self {
            sock,
            applied: None,
            timings: Vec::new(),
            own: true,
        }
    }

    /// Leave the table unowned: any process with `CAP_NET_ADMIN` may change it, and only
    /// the read-backs and notifications see such a change (as on kernels before Linux 6.9,
    /// which cannot keep an owned table after its owner exits). Also taken when the kernel
    /// refuses the flags.
    #[must_use]
    pub fn unowned(mut self) -> Self {
        self.own = false;
        self
    }

    /// Whether replaces make the table owned by this socket (false after [`Self::unowned`]
    /// or once the kernel refused the flags).
    pub fn owns_table(&self) -> bool {
        self.own
    }

    /// The table's flags and owner as a replace makes them.
    fn table_owner(&self) -> (u32, Option<u32>) {
        if self.own {
            (
                NFT_TABLE_F_OWNER | NFT_TABLE_F_PERSIST,
                Some(self.sock.port_id()),
            )
        } else {
            (0, None)
        }
    }

    /// How long each stage of the last replace or update took, in order (stage name,
    /// wall time): what the benchmark reports per stage.
    pub fn timings(&self) -> &[(&'static str, Duration)] {
        &self.timings
    }
}

/// Time stage `what` from `*t` until now into `timings`, and restart `*t`.
fn lap(timings: &mut Vec<(&'static str, Duration)>, t: &mut Instant, what: &'static str) {
    timings.push((what, t.elapsed()));
    *t = Instant::now();
}

/// A base chain's hook number, priority, policy and type.
type Hook = (u32, i32, u32, String);

fn be32(v: &[u8]) -> u32 {
    v.get(..4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map_or(0, u32::from_be_bytes)
}

/// The hook of a dumped chain, `None` for a regular chain.
fn hook_of(body: &[u8]) -> Option<Hook> {
    let nest = attrs(body).find(|(t, _)| *t == NFTA_CHAIN_HOOK)?.1;
    let num = attrs(nest)
        .find(|(t, _)| *t == NFTA_HOOK_HOOKNUM)
        .map(|(_, v)| be32(v))?;
    let prio = attrs(nest)
        .find(|(t, _)| *t == NFTA_HOOK_PRIORITY)
        .map(|(_, v)| be32(v))?;
    let policy = attrs(body)
        .find(|(t, _)| *t == NFTA_CHAIN_POLICY)
        .map_or(NF_ACCEPT, |(_, v)| be32(v));
    let kind = attrs(body)
        .find(|(t, _)| *t == NFTA_CHAIN_TYPE)
        .map(|(_, v)| str_attr(v))?;
    Some((num, prio as i32, policy, kind))
}

/// Rules per chain, in order: their copied attributes (expressions, user data).
type Rules = BTreeMap<String, Vec<Vec<u8>>>;

/// A table's declarations as dumped: what the replacement copies and the read-back compares.
#[derive(Debug, Default, PartialEq, Eq)]
struct Shape {
    /// The table's flags (`NFTA_TABLE_FLAGS`): `owner` and `persist` as trustd makes it
    /// (0 when unowned); `dormant` (1) turns every hook of the table off while its chains
    /// and rules stay listed.
    flags: u32,
    /// The port id of the socket owning the table (`NFTA_TABLE_OWNER`), if owned.
    owner: Option<u32>,
    /// Counters and other objects: (name, type attribute, data attribute as created).
    objs: BTreeMap<String, (Vec<u8>, Vec<u8>)>,
    /// Set declarations by name (their [`SET_DECL`] attributes) and whether anonymous.
    sets: BTreeMap<String, (Vec<u8>, bool)>,
    /// Elements of the anonymous sets (the rules' inline sets), each raw, sorted.
    anon: BTreeMap<String, Vec<Vec<u8>>>,
    /// Chains in creation order.
    chains: Vec<String>,
    /// Base chains: name -> (hook, priority, policy, type).
    hooks: BTreeMap<String, Hook>,
    /// Rules per chain.
    rules: Rules,
}

/// Where a run of attributes sits, for [`renest`].
#[derive(Clone, Copy)]
enum Nest<'a> {
    /// A rule's attributes.
    Rule,
    /// `NFTA_RULE_EXPRESSIONS`: `NFTA_LIST_ELEM`s.
    Exprs,
    /// One expression: its name, then its data.
    Expr,
    /// An expression's data (which of its attributes nest depends on its name).
    ExprData(&'a [u8]),
    /// `NFTA_DATA_*`: a value, or a verdict (nested).
    Data,
    /// One set element, the whole `NFTA_LIST_ELEM`.
    Elem,
    /// A set element's attributes: key, data, key end nest.
    ElemAttrs,
    /// Attributes holding no nest.
    Leaf,
}

/// Copy attributes as the kernel dumped them, with `NLA_F_NESTED` set on every nest (the
/// kernel dumps nf_tables nests without it and, for some, refuses them without it on
/// input, as libnftnl always sets it).
fn renest(raw: &[u8], at: Nest<'_>) -> Vec<u8> {
    renest_with(raw, at, &mut |_| None)
}

/// What a rule's reference to a set by name (a `lookup` expression's set name) becomes.
/// `None`: kept as it is; else the attribute bytes written in its place.
type Relink<'a> = dyn FnMut(&str) -> Option<Vec<u8>> + 'a;

/// One netlink attribute, padded.
fn nla(t: u16, v: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + v.len() + 3);
    out.extend_from_slice(&((4 + v.len()) as u16).to_ne_bytes());
    out.extend_from_slice(&t.to_ne_bytes());
    out.extend_from_slice(v);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
    out
}

/// `NFTA_LOOKUP_SET`, `NFTA_LOOKUP_SET_ID`.
const NFTA_LOOKUP_SET: u16 = 1;
const NFTA_LOOKUP_SET_ID: u16 = 4;

/// [`renest`], with each `lookup` expression's set name passed through `relink`.
fn renest_with(raw: &[u8], at: Nest<'_>, relink: &mut Relink<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut expr_name: &[u8] = &[];
    for (t, whole) in raw_attrs(raw) {
        let len = usize::from(u16::from_ne_bytes([whole[0], whole[1]])).min(whole.len());
        let inner = &whole[4..len];
        let child = match (at, t) {
            (Nest::Rule, 4) => Some(Nest::Exprs),
            (Nest::Exprs, 1) => Some(Nest::Expr),
            (Nest::Expr, 2) => Some(Nest::ExprData(expr_name)),
            (Nest::ExprData(n), t) => match (n, t) {
                (b"cmp\0", 3)
                | (b"immediate\0", 2)
                | (b"bitwise\0", 4 | 5 | 7)
                | (b"range\0", 3..=4) => Some(Nest::Data),
                _ => None,
            },
            (Nest::Data, 2) => Some(Nest::Leaf),
            (Nest::Elem, 1) => Some(Nest::ElemAttrs),
            (Nest::ElemAttrs, 1 | 2 | 9) => Some(Nest::Data),
            _ => None,
        };
        if matches!(at, Nest::Expr) && t == 1 {
            expr_name = inner;
        }
        if let (Nest::ExprData(b"lookup\0"), NFTA_LOOKUP_SET) = (at, t)
            && let Some(with) = relink(&str_attr(inner))
        {
            out.extend_from_slice(&with);
            continue;
        }
        match child {
            Some(c) => {
                let body = renest_with(inner, c, relink);
                let n = (4 + body.len()) as u16;
                out.extend_from_slice(&n.to_ne_bytes());
                out.extend_from_slice(&(t | 0x8000).to_ne_bytes());
                out.extend_from_slice(&body);
            }
            None => out.extend_from_slice(whole),
        }
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
    }
    out
}

/// The number of an anonymous set's name (`__set12` -> 12).
fn anon_number(name: &str) -> u64 {
    name.trim_start_matches(|c: char| !c.is_ascii_digit())
        .parse()
        .unwrap_or(u64::MAX)
}

fn nl(e: NfnlError) -> NftError {
    NftError::Netlink(e.to_string())
}

fn str_attr(v: &[u8]) -> String {
    String::from_utf8_lossy(v.split(|b| *b == 0).next().unwrap_or_default()).into_owned()
}

fn copy(body: &[u8], keep: &[u16]) -> Vec<u8> {
    raw_attrs(body)
        .filter(|(t, _)| keep.contains(t))
        .flat_map(|(_, raw)| raw.iter().copied())
        .collect()
}

/// Dump `table`'s declarations, chains and rules (and the anonymous sets' elements).
fn shape(sock: &mut NfSocket, table: &str) -> Result<Option<Shape>, NftError> {
    let mut s = Shape::default();
    (s.flags, s.owner) = shape_table(sock, table)?.unwrap_or((0, None));
    let found = sock
        .dump(
            NFT_MSG_GETSET,
            NFPROTO_INET,
            |m| m.put_str(NFTA_SET_TABLE, table),
            |r| {
                let name = attrs(r.body)
                    .find(|(t, _)| *t == NFTA_SET_NAME)
                    .map(|(_, v)| str_attr(v))
                    .ok_or("a set without a name")?;
                let flags = attrs(r.body)
                    .find(|(t, _)| *t == NFTA_SET_FLAGS && r.body.len() >= 4)
                    .map_or(0, |(_, v)| {
                        u32::from_be_bytes(
                            v.get(..4).and_then(|b| b.try_into().ok()).unwrap_or([0; 4]),
                        )
                    });
                s.sets.insert(
                    name,
                    (copy(r.body, &SET_DECL), flags & NFT_SET_ANONYMOUS != 0),
                );
                Ok(())
            },
        )
        .map_err(nl)?
        .map_err(NftError::Netlink)?;
    if !found {
        return Ok(None);
    }
    let anon: Vec<String> = s
        .sets
        .iter()
        .filter(|(_, (_, a))| *a)
        .map(|(n, _)| n.clone())
        .collect();
    for name in anon {
        let mut elems = Vec::new();
        sock.dump(
            NFT_MSG_GETSETELEM,
            NFPROTO_INET,
            |m| {
                m.put_str(NFTA_SET_ELEM_LIST_TABLE, table);
                m.put_str(NFTA_SET_ELEM_LIST_SET, &name);
            },
            |r| {
                for (t, v) in attrs(r.body) {
                    if t == NFTA_SET_ELEM_LIST_ELEMENTS {
                        elems.extend(raw_attrs(v).map(|(_, raw)| raw.to_vec()));
                    }
                }
                Ok(())
            },
        )
        .map_err(nl)?
        .map_err(NftError::Netlink)?;
        elems.sort();
        s.anon.insert(name, elems);
    }
    sock.dump(
        NFT_MSG_GETOBJ,
        NFPROTO_INET,
        |m| m.put_str(NFTA_OBJ_TABLE, table),
        |r| {
            let name = attrs(r.body)
                .find(|(t, _)| *t == NFTA_OBJ_NAME)
                .map(|(_, v)| str_attr(v))
                .ok_or("an object without a name")?;
            s.objs.insert(
                name,
                (
                    copy(r.body, &[NFTA_OBJ_TYPE]),
                    copy(r.body, &[NFTA_OBJ_DATA]),
                ),
            );
            Ok(())
        },
    )
    .map_err(nl)?
    .map_err(NftError::Netlink)?;
    sock.dump(
        NFT_MSG_GETCHAIN,
        NFPROTO_INET,
        |_| {},
        |r| {
            let in_table =
                attrs(r.body).any(|(t, v)| t == NFTA_CHAIN_TABLE && str_attr(v) == table);
            if in_table {
                let name = attrs(r.body)
                    .find(|(t, _)| *t == NFTA_CHAIN_NAME)
                    .map(|(_, v)| str_attr(v))
                    .ok_or("a chain without a name")?;
                if let Some(hook) = hook_of(r.body) {
                    s.hooks.insert(name.clone(), hook);
                }
                s.chains.push(name);
            }
            Ok(())
        },
    )
    .map_err(nl)?
    .map_err(NftError::Netlink)?;
    s.rules = rules(sock, table)?;
    Ok(Some(s))
}

/// `table`'s rules per chain, in order.
fn rules(sock: &mut NfSocket, table: &str) -> Result<Rules, NftError> {
    let mut out = Rules::new();
    sock.dump(
        NFT_MSG_GETRULE,
        NFPROTO_INET,
        |m| m.put_str(NFTA_RULE_TABLE, table),
        |r| {
            let chain = attrs(r.body)
                .find(|(t, _)| *t == NFTA_RULE_CHAIN)
                .map(|(_, v)| str_attr(v))
                .ok_or("a rule without a chain")?;
            out.entry(chain)
                .or_default()
                .push(copy(r.body, &[NFTA_RULE_EXPRESSIONS, NFTA_RULE_USERDATA]));
            Ok(())
        },
    )
    .map_err(nl)?
    .map_err(NftError::Netlink)?;
    Ok(out)
}

fn add_chain(b: &mut Batch, name: &str) {
    b.begin(
        NFT_MSG_NEWCHAIN,
        NLM_F_CREATE,
        NFPROTO_INET,
        format!("chain {name}"),
    );
    b.put_str(NFTA_CHAIN_TABLE, INTEL_TABLE);
    b.put_str(NFTA_CHAIN_NAME, name);
    if let Some((_, hooknum, prio)) = BASE_CHAINS.iter().find(|(n, _, _)| *n == name) {
        let h = b.nest_begin(NFTA_CHAIN_HOOK);
        b.put_be32(NFTA_HOOK_HOOKNUM, *hooknum);
        b.put_be32(NFTA_HOOK_PRIORITY, *prio as u32);
        b.nest_end(h);
        b.put_be32(NFTA_CHAIN_POLICY, NF_ACCEPT);
        b.put_str(NFTA_CHAIN_TYPE, "filter");
    }
}

/// The key bytes of an address (network byte order, 4 or 16 bytes).
fn key_bytes(v: u128, v6: bool) -> Vec<u8> {
    if v6 {
        v.to_be_bytes().to_vec()
    } else {
        (v as u32).to_be_bytes().to_vec()
    }
}

fn elem_begin(b: &mut Batch, msg: u8, set: &str, what: &str) -> usize {
    let flags = if msg == NFT_MSG_NEWSETELEM {
        NLM_F_CREATE
    } else {
        0
    };
    b.begin(msg, flags, NFPROTO_INET, format!("{what} of set {set}"));
    b.put_str(NFTA_SET_ELEM_LIST_TABLE, INTEL_TABLE);
    b.put_str(NFTA_SET_ELEM_LIST_SET, set);
    b.nest_begin(NFTA_SET_ELEM_LIST_ELEMENTS)
}

fn put_key(b: &mut Batch, key: &[u8], flags: u32, udata: Option<&[u8]>) {
    let e = b.nest_begin(NFTA_LIST_ELEM);
    let k = b.nest_begin(NFTA_SET_ELEM_KEY);
    b.put(NFTA_DATA_VALUE, key);
    b.nest_end(k);
    if flags != 0 {
        b.put_be32(NFTA_SET_ELEM_FLAGS, flags);
    }
    if let Some(u) = udata {
        b.put(NFTA_SET_ELEM_USERDATA, u);
    }
    b.nest_end(e);
}

/// The highest address of `set`'s family.
fn top_of(set: &SetSpec) -> u128 {
    if set.v6 {
        u128::MAX
    } else {
        u128::from(u32::MAX)
    }
}

/// Whether `set` holds nft's no-match element, an interval end at address 0 (nft writes
/// it before the first interval when that does not start at 0): here when no prefix
/// reaches the top of the address space and the first does not start at 0, so that the
/// set's element count is odd. The kernel reports an interval set's count halved
/// (`NFTA_SET_COUNT`), and an odd count is what tells one extra element apart.
fn zero_end(rs: &IntelRuleset, set: &SetSpec) -> bool {
    if !set.interval {
        return false;
    }
    set.bounds(rs)
        .is_some_and(|(first, last)| first.0 != 0 && last.1 != top_of(set))
}

/// nft's no-match element of `set` (see [`zero_end`]), as one element message.
fn put_zero_end(b: &mut Batch, msg: u8, set: &SetSpec, what: &str) {
    let at = elem_begin(b, msg, &set.name, what);
    put_key(b, &key_bytes(0, set.v6), NFT_SET_ELEM_INTERVAL_END, None);
    b.nest_end(at);
}

/// Element messages (`msg`: add or delete) for `elems` of `set`, as many as their size needs.
/// An interval set's prefix is two elements, its start and (one past) its end, as nft
/// writes them; a prefix reaching the top of the address space has no end element.
fn put_elems(
    b: &mut Batch,
    msg: u8,
    set: &SetSpec,
    elems: impl Iterator<Item = Elem>,
    what: &str,
) -> usize {
    let top = if set.v6 {
        u128::MAX
    } else {
        u128::from(u32::MAX)
    };
    let mut nest: Option<usize> = None;
    let mut n = 0;
    for e in elems {
        if nest.is_none() || b.msg_len() > MSG_ROOM {
            if let Some(at) = nest {
                b.nest_end(at);
            }
            nest = Some(elem_begin(b, msg, &set.name, what));
        }
        let (lo, hi) = e.range();
        if set.interval {
            let open = hi == top;
            put_key(
                b,
                &key_bytes(lo, set.v6),
                0,
                open.then_some(&UDATA_INTERVAL_OPEN[..]),
            );
            if !open {
                put_key(
                    b,
                    &key_bytes(hi + 1, set.v6),
                    NFT_SET_ELEM_INTERVAL_END,
                    None,
                );
            }
        } else {
            put_key(b, &key_bytes(lo, set.v6), 0, None);
        }
        n += 1;
    }
    if let Some(at) = nest {
        b.nest_end(at);
    }
    n
}

/// Check one set's elements in the kernel against the compiled ones, one dump message at a
/// time: every element held is a compiled one (an address of a hash set; the start or
/// one-past-the-end of a compiled prefix, or nft's no-match element where [`zero_end`]
/// puts it) and the counts agree, so the kernel holds exactly
/// the compiled elements.
fn check_elems(sock: &mut NfSocket, rs: &IntelRuleset, set: &SetSpec) -> Result<(), String> {
    let addr = |v: &[u8]| -> Option<(u128, IpAddr)> {
        match v.len() {
            4 => {
                let a = Ipv4Addr::from(<[u8; 4]>::try_from(v).ok()?);
                Some((u128::from(u32::from(a)), IpAddr::V4(a)))
            }
            16 => {
                let a = Ipv6Addr::from(<[u8; 16]>::try_from(v).ok()?);
                Some((u128::from(a), IpAddr::V6(a)))
            }
            _ => None,
        }
    };
    let (mut starts, mut ends) = (0usize, 0usize);
    let name = &set.name;
    let zero = zero_end(rs, set);
    let found = sock
        .dump(
            NFT_MSG_GETSETELEM,
            NFPROTO_INET,
            |m| {
                m.put_str(NFTA_SET_ELEM_LIST_TABLE, INTEL_TABLE);
                m.put_str(NFTA_SET_ELEM_LIST_SET, name);
            },
            |r| {
                for (t, list) in attrs(r.body) {
                    if t != NFTA_SET_ELEM_LIST_ELEMENTS {
                        continue;
                    }
                    for (_, elem) in attrs(list) {
                        let mut key = None;
                        let mut flags = 0u32;
                        for (t, v) in attrs(elem) {
                            match t {
                                NFTA_SET_ELEM_KEY => {
                                    key = attrs(v)
                                        .find(|(t, _)| *t == NFTA_DATA_VALUE)
                                        .and_then(|(_, v)| addr(v));
                                }
                                NFTA_SET_ELEM_FLAGS if v.len() == 4 => {
                                    flags = u32::from_be_bytes([v[0], v[1], v[2], v[3]]);
                                }
                                _ => {}
                            }
                        }
                        if flags & NFT_SET_ELEM_CATCHALL != 0 {
                            return Err(catch_all(name));
                        }
                        let (bits, ip) =
                            key.ok_or_else(|| format!("set {name} holds an element without an address key"))?;
                        if ip.is_ipv6() != set.v6 {
                            return Err(format!("set {name} holds an element of the other family"));
                        }
                        if !set.interval {
                            if !set.has_host(rs, &ip) {
                                return Err(format!("set {name} holds {ip}, which is not in the feed"));
                            }
                            starts += 1;
                        } else if flags & NFT_SET_ELEM_INTERVAL_END != 0 && bits == 0 && zero {
                            // nft's no-match element.
                            ends += 1;
                        } else if flags & NFT_SET_ELEM_INTERVAL_END != 0 {
                            // One past a compiled prefix's end.
                            let last = bits.checked_sub(1).ok_or_else(|| {
                                format!("set {name} holds an interval ending before the first address")
                            })?;
                            let below = if set.v6 {
                                IpAddr::V6(Ipv6Addr::from(last))
                            } else {
                                IpAddr::V4(Ipv4Addr::from(last as u32))
                            };
                            if set.net_at_or_below(rs, below).is_none_or(|c| c.range().1 != last) {
                                return Err(format!("set {name} holds an interval ending at {below}, which no prefix of the feed ends at"));
                            }
                            ends += 1;
                        } else {
                            if set.net_at_or_below(rs, ip).is_none_or(|c| c.range().0 != bits) {
                                return Err(format!("set {name} holds an interval starting at {ip}, which no prefix of the feed starts at"));
                            }
                            starts += 1;
                        }
                    }
                }
                Ok(())
            },
        )
        .map_err(|e| e.to_string())??;
    if !found {
        return Err(format!("set {name} is missing"));
    }
    let n = set.len(rs);
    let top = if set.v6 {
        u128::MAX
    } else {
        u128::from(u32::MAX)
    };
    let open = usize::from(set.interval && set.bounds(rs).is_some_and(|(_, l)| l.1 == top));
    let want_ends = if set.interval {
        n - open + usize::from(zero)
    } else {
        0
    };
    if starts != n || ends != want_ends {
        return Err(format!(
            "set {name} holds {starts} element(s) ({ends} interval ends), the feed {n} ({want_ends})"
        ));
    }
    Ok(())
}

/// Why a set holding a catch-all element is refused.
fn catch_all(set: &str) -> String {
    format!(
        "set {set} holds a catch-all element (it matches every address), which no feed compiles to"
    )
}

/// Whether `set` of the intel table holds a catch-all element, which no count shows: a
/// dry-run batch deleting it, which the kernel refuses (`ENOENT`) when there is none and
/// then aborts either way, changing nothing.
fn has_catch_all(sock: &mut NfSocket, set: &str) -> Result<bool, String> {
    let mut b = Batch::new();
    let at = elem_begin(&mut b, NFT_MSG_DELSETELEM, set, "catch-all element");
    let e = b.nest_begin(NFTA_LIST_ELEM);
    b.put_be32(NFTA_SET_ELEM_FLAGS, NFT_SET_ELEM_CATCHALL);
    b.nest_end(e);
    b.nest_end(at);
    match sock.dry_run(b) {
        Ok(()) => Ok(true),
        Err(NfnlError::Refused { err, .. }) if err.raw_os_error() == Some(libc::ENOENT) => {
            Ok(false)
        }
        Err(e) => Err(format!(
            "set {set} could not be checked for a catch-all element: {e}"
        )),
    }
}

/// How [`check_sets`] knows that every compiled element is in the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Presence {
    /// Shown element by element (dry-run deletions the kernel aborts).
    Check,
    /// Proven by the transaction that put them there: trustd's own batch, which created
    /// the sets empty in a new table and wrote every compiled element, was committed
    /// whole (the kernel refuses a batch with any element it cannot add), and no other
    /// transaction was committed since (the generation moved by exactly one).
    Proven,
}

/// How element presence is known after trustd's own batch was committed between the
/// generations `before` (asked just before it) and `after` (asked after the read-back):
/// proven when exactly that one transaction was committed (the kernel adds one per
/// committed transaction and skips 0 when it wraps), else checked.
fn presence_after(before: u32, after: u32) -> Presence {
    let ours = match before.wrapping_add(1) {
        0 => 1,
        g => g,
    };
    if after == ours {
        Presence::Proven
    } else {
        Presence::Check
    }
}

/// Elements per dry-run batch of the presence check: its memory stays bounded (about
/// 1.3 MiB) whatever the feed's size.
const CHECK_CHUNK: usize = 32 * 1024;

/// How many elements the kernel holds for `set` when it holds exactly the compiled ones:
/// one per address; per prefix its start and, unless the prefix reaches the top of the
/// address space, its (one past the) end.
fn kernel_len(rs: &IntelRuleset, set: &SetSpec) -> usize {
    let n = set.len(rs);
    if !set.interval {
        return n;
    }
    let top = top_of(set);
    let open = usize::from(set.bounds(rs).is_some_and(|(_, l)| l.1 == top));
    2 * n - open + usize::from(zero_end(rs, set))
}

/// The element count of each set of the intel table as the kernel reports it
/// (`NFTA_SET_COUNT`); `Ok(None)` when this kernel does not report counts (before 6.16).
fn set_counts(sock: &mut NfSocket) -> Result<Option<BTreeMap<String, usize>>, String> {
    let mut counts = BTreeMap::new();
    let mut reported = true;
    let found = sock
        .dump(
            NFT_MSG_GETSET,
            NFPROTO_INET,
            |m| m.put_str(NFTA_SET_TABLE, INTEL_TABLE),
            |r| {
                let name = attrs(r.body)
                    .find(|(t, _)| *t == NFTA_SET_NAME)
                    .map(|(_, v)| str_attr(v))
                    .ok_or("a set without a name")?;
                match attrs(r.body).find(|(t, _)| *t == NFTA_SET_COUNT) {
                    Some((_, v)) if v.len() == 4 => {
                        counts.insert(name, be32(v) as usize);
                    }
                    _ => reported = false,
                }
                Ok(())
            },
        )
        .map_err(|e| e.to_string())??;
    if !found {
        return Err("the blocklist table is gone".into());
    }
    Ok(reported.then_some(counts))
}

/// Check the elements of `chosen` (sets of `rs`) in the kernel against the compiled ones.
///
/// Where the kernel reports element counts: every compiled element is there (dry-run
/// batches deleting each of them, which the kernel refuses for any element it does not
/// hold, with the interval-end flag as compiled, and then aborts without a change), and
/// each set's count is the compiled one. `n` distinct compiled elements present in a set
/// of `n` is exactly the compiled set: the same verdict as a full dump, in time linear in
/// the elements (a dump costs the kernel a walk from the set's start for every 32 KiB
/// message, quadratic in the set's size). Where it does not, a full dump per set
/// ([`check_elems`]).
///
/// [`Presence::Proven`] leaves out the dry-run deletions (the counts, the catch-all check
/// and the dumps stay): for the read-back right after trustd's own batch built the sets,
/// when the generation shows that no other transaction was committed since (see
/// [`replace`]).
fn check_sets(
    sock: &mut NfSocket,
    rs: &IntelRuleset,
    chosen: &[&SetSpec],
    presence: Presence,
) -> Result<(), String> {
    let counted = set_counts(sock)?.is_some();
    // An interval set's count is reported halved: only an odd number of elements tells
    // one extra element apart (see [`zero_end`]); the others are dumped.
    let (by_count, by_dump): (Vec<&SetSpec>, Vec<&SetSpec>) = chosen
        .iter()
        .copied()
        .partition(|s| counted && (!s.interval || kernel_len(rs, s) % 2 == 1));
    for s in by_dump {
        check_elems(sock, rs, s)?;
    }
    if by_count.is_empty() {
        return Ok(());
    }
    for s in &by_count {
        // Counts and presence of the compiled elements say nothing of a catch-all element.
        if has_catch_all(sock, &s.name)? {
            return Err(catch_all(&s.name));
        }
        if presence == Presence::Proven {
            continue;
        }
        if zero_end(rs, s) {
            let mut b = Batch::new();
            put_zero_end(&mut b, NFT_MSG_DELSETELEM, s, "no-match element");
            sock.dry_run(b)
                .map_err(|e| format!("set {} lacks its no-match element: {e}", s.name))?;
        }
        let mut elems = s.elems(rs);
        loop {
            let mut b = Batch::new();
            let put = put_elems(
                &mut b,
                NFT_MSG_DELSETELEM,
                s,
                elems.by_ref().take(CHECK_CHUNK),
                "elements",
            );
            if put == 0 {
                break;
            }
            sock.dry_run(b).map_err(|e| match e {
                NfnlError::Refused { err, .. } if err.raw_os_error() == Some(libc::ENOENT) => {
                    format!("set {} lacks elements of the feed", s.name)
                }
                e => format!("set {} could not be checked: {e}", s.name),
            })?;
        }
    }
    // Counted after the presence check: nothing was added beside the compiled elements.
    let counts = set_counts(sock)?.ok_or("the kernel stopped reporting set counts")?;
    for s in by_count {
        // As the kernel reports it: an interval set's elements halved, rounded down.
        let want = if s.interval {
            kernel_len(rs, s) / 2
        } else {
            kernel_len(rs, s)
        };
        match counts.get(&s.name) {
            None => return Err(format!("set {} is missing", s.name)),
            Some(held) if *held != want => {
                return Err(format!(
                    "set {} holds {held} element(s), the feed compiles to {want}",
                    s.name
                ));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Replace the intel table with `rs` in one transaction (see the module's documentation),
/// then read it back.
pub(super) fn replace(
    nlk: &mut IntelNetlink,
    backend: &mut dyn Backend,
    rs: &IntelRuleset,
) -> Result<(), EnforceError> {
    nlk.applied = None;
    let mismatch = |found: String| EnforceError::Mismatch {
        expected: intel_structure_digest(rs),
        found,
    };
    let digest = intel_structure_digest(rs);
    nlk.timings.clear();
    let mut t = Instant::now();
    // 0. A table an earlier trustd left (orphaned) is this socket's from now on, whatever
    // becomes of the replace: not open to other writers while it is built, or after it
    // failed.
    adopt(nlk);
    // 1. nft compiles the small part into the scratch table; read back as compiled.
    let tmpl = scratch(&mut nlk.sock, backend, rs, &rs.protected, &digest)?;
    lap(
        &mut nlk.timings,
        &mut t,
        "scratch table (nft -f, nft -j list, dump)",
    );
    // 2. One batch: the table replaced, copied declarations, streamed elements, hooks.
    let mut b = Batch::new();
    // Added first so that the delete finds it; then made anew, owned by this socket
    // unless unowned (an orphaned table left by an earlier trustd is deleted like any other;
    // one another socket owns refuses the whole batch with EPERM).
    let (table_flags, _) = nlk.table_owner();
    for (msg, flags, what) in [
        (NFT_MSG_NEWTABLE, NLM_F_CREATE, "table (add)"),
        (NFT_MSG_DELTABLE, 0, "table (delete)"),
        (NFT_MSG_NEWTABLE, NLM_F_CREATE, "table"),
    ] {
        b.begin(msg, flags, NFPROTO_INET, what);
        b.put_str(NFTA_TABLE_NAME, INTEL_TABLE);
        if what == "table" && table_flags != 0 {
            b.put_be32(NFTA_TABLE_FLAGS, table_flags);
        }
    }
    for (name, (kind, data)) in &tmpl.objs {
        b.begin(
            NFT_MSG_NEWOBJ,
            NLM_F_CREATE,
            NFPROTO_INET,
            format!("counter {name}"),
        );
        b.put_str(NFTA_OBJ_TABLE, INTEL_TABLE);
        b.put_str(NFTA_OBJ_NAME, name);
        b.put_raw(kind);
        b.put_raw(data);
    }
    // Named sets first, then the rules' inline (anonymous) sets in the order the kernel
    // numbered them in the scratch table: created as `__set%d` in the new, empty table,
    // they get the same numbers, which the copied rules name.
    let mut order: Vec<(&String, &(Vec<u8>, bool))> = tmpl.sets.iter().collect();
    order.sort_by_key(|(name, (_, anon))| (*anon, anon_number(name), (*name).clone()));
    for (id, (name, (decl, anon))) in (1u32..).zip(order) {
        b.begin(
            NFT_MSG_NEWSET,
            NLM_F_CREATE,
            NFPROTO_INET,
            format!("set {name}"),
        );
        b.put_str(NFTA_SET_TABLE, INTEL_TABLE);
        for (t, raw) in raw_attrs(decl) {
            if t == NFTA_SET_NAME && *anon {
                b.put_str(NFTA_SET_NAME, "__set%d");
            } else {
                b.put_raw(raw);
            }
        }
        // The kernel requires a transaction-local id for every new set.
        b.put_be32(NFTA_SET_ID, id);
        if *anon {
            put_anon_elements(&mut b, name, id, &tmpl);
        }
    }
    let all = sets(rs);
    for (_, s) in &all {
        if zero_end(rs, s) {
            put_zero_end(&mut b, NFT_MSG_NEWSETELEM, s, "elements");
        }
        put_elems(&mut b, NFT_MSG_NEWSETELEM, s, s.elems(rs), "elements");
    }
    for chain in &tmpl.chains {
        add_chain(&mut b, chain);
    }
    for chain in &tmpl.chains {
        for (i, r) in tmpl.rules.get(chain).into_iter().flatten().enumerate() {
            b.begin(
                NFT_MSG_NEWRULE,
                NLM_F_CREATE | NLM_F_APPEND,
                NFPROTO_INET,
                format!("rule {} of chain {chain}", i + 1),
            );
            b.put_str(NFTA_RULE_TABLE, INTEL_TABLE);
            b.put_str(NFTA_RULE_CHAIN, chain);
            b.put_raw(&renest(r, Nest::Rule));
        }
    }
    let batch_bytes = b.bytes();
    lap(&mut nlk.timings, &mut t, "netlink batch built");
    // 3. Commit, noting the generation before: the kernel moves it by one per committed
    // transaction, so one more after the read-back means none but this batch came between.
    let before = nlk
        .sock
        .generation()
        .map_err(|e| EnforceError::Apply(nl(e)))?;
    if let Err(e) = scratch_commit(nlk, b) {
        if nlk.own && refused_flags(&e) {
            // A kernel before Linux 6.9 knows no `persist`: an owned table would go with
            // trustd's socket (a crash would remove the blocklists), so it stays unowned.
            tracing::warn!(
                "the kernel refused an owned, persistent blocklist table ({e}); it stays \
                 unowned: other processes with CAP_NET_ADMIN can change it, and trustd \
                 repairs what it sees"
            );
            nlk.own = false;
            return replace(nlk, backend, rs);
        }
        return Err(EnforceError::Apply(nl(e)));
    }
    lap(&mut nlk.timings, &mut t, "kernel commit (send, wait)");
    tracing::debug!(batch_bytes, "blocklist table replaced over netlink");
    // 4. Read back: declarations and rules as nft compiled them, elements as compiled
    // (counts, catch-all; presence proven by the batch when nothing else was committed).
    let want = wanted(tmpl, nlk.table_owner());
    let chosen: Vec<&SetSpec> = all.iter().map(|(_, s)| s).collect();
    let mut stages = (Duration::ZERO, Duration::ZERO);
    let mut presence = Presence::Proven;
    loop {
        read_back(&mut nlk.sock, |sock| {
            let t = Instant::now();
            let held = shape(sock, INTEL_TABLE)
                .map_err(EnforceError::ReadBack)?
                .ok_or_else(|| mismatch("absent".into()))?;
            same_shape(&held, &want).map_err(mismatch)?;
            stages.0 = t.elapsed();
            let t = Instant::now();
            let r = check_sets(sock, rs, &chosen, presence).map_err(mismatch);
            stages.1 = t.elapsed();
            r
        })?;
        if presence == Presence::Check {
            break;
        }
        let after = nlk
            .sock
            .generation()
            .map_err(|e| EnforceError::ReadBack(nl(e)))?;
        presence = presence_after(before, after);
        if presence == Presence::Proven {
            break;
        }
        // Another transaction came between: every element is shown present.
    }
    nlk.timings
        .push(("read back: declarations and rules", stages.0));
    nlk.timings.push((
        match presence {
            Presence::Proven => "read back: elements (counts; presence proven by the batch)",
            Presence::Check => "read back: elements (counts; each shown present)",
        },
        stages.1,
    ));
    nlk.timings.push((
        "read back: generation checks",
        t.elapsed().saturating_sub(stages.0 + stages.1),
    ));
    nlk.applied = Some((digest, want));
    Ok(())
}

/// Make an orphaned blocklist table (`persist` without `owner`: its owner's socket closed,
/// an earlier trustd exited) owned by this socket, in a transaction of its own: the kernel
/// lets a socket adopt an orphaned table by creating it again with both flags (Linux 6.9).
/// A table made dormant meanwhile is woken in the same step. Nothing is done when the
/// table is unowned by choice, absent, already this socket's, or another socket's (the
/// replace then fails with `EPERM` and says so).
fn adopt(nlk: &mut IntelNetlink) {
    let (flags, _) = nlk.table_owner();
    if flags == 0 {
        return;
    }
    let held = match shape_table(&mut nlk.sock, INTEL_TABLE) {
        Ok(Some(h)) => h,
        _ => return,
    };
    if held.0 & NFT_TABLE_F_OWNER != 0 {
        return;
    }
    let mut b = Batch::new();
    b.begin(NFT_MSG_NEWTABLE, 0, NFPROTO_INET, "table (adopt)");
    b.put_str(NFTA_TABLE_NAME, INTEL_TABLE);
    b.put_be32(NFTA_TABLE_FLAGS, flags);
    match nlk.sock.commit(b) {
        Ok(()) => tracing::info!("the blocklist table left by an earlier trustd is trustd's again"),
        Err(e) => tracing::debug!("the blocklist table was not adopted: {e}"),
    }
}

/// Whether a table named as the blocklist table or its scratch table is owned by another
/// socket than this one (which refuses every replace with `EPERM` until that socket
/// closes; the kernel then removes its table without a notification).
pub(super) fn names_held(nlk: &mut IntelNetlink) -> Result<bool, NftError> {
    let me = nlk.sock.port_id();
    for table in [INTEL_TABLE, TEMPLATE_TABLE] {
        if let Some((flags, owner)) = shape_table(&mut nlk.sock, table)?
            && flags & NFT_TABLE_F_OWNER != 0
            && owner != Some(me)
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// `table`'s flags and owner as dumped, `None` when there is no such table.
fn shape_table(sock: &mut NfSocket, table: &str) -> Result<Option<(u32, Option<u32>)>, NftError> {
    let mut found = None;
    sock.dump(
        NFT_MSG_GETTABLE,
        NFPROTO_INET,
        |_| {},
        |r| {
            if attrs(r.body).any(|(t, v)| t == NFTA_TABLE_NAME && str_attr(v) == table) {
                found = Some(table_flags_of(r.body));
            }
            Ok(())
        },
    )
    .map_err(nl)?
    .map_err(NftError::Netlink)?;
    Ok(found)
}

/// A dumped table's flags and owner (`NFTA_TABLE_FLAGS`, `NFTA_TABLE_OWNER`).
fn table_flags_of(body: &[u8]) -> (u32, Option<u32>) {
    (
        attrs(body)
            .find(|(t, _)| *t == NFTA_TABLE_FLAGS)
            .map_or(0, |(_, v)| be32(v)),
        attrs(body)
            .find(|(t, _)| *t == NFTA_TABLE_OWNER)
            .map(|(_, v)| be32(v)),
    )
}

/// Add to `b` the elements the scratch table's anonymous set `name` holds (`tmpl`), for the
/// new anonymous set of the blocklist table created in the same batch with set id `id`.
///
/// As many messages as the elements need: one attribute holds at most 64 KiB (netlink's
/// 16-bit length), so a large inline set (thousands of ports) is split across messages,
/// as libnftnl splits it; the kernel takes them all into the new set before the rules of
/// the same batch bind it.
fn put_anon_elements(b: &mut Batch, name: &str, id: u32, tmpl: &Shape) {
    let mut nest: Option<usize> = None;
    for e in tmpl.anon.get(name).into_iter().flatten() {
        if nest.is_none() || b.msg_len() > MSG_ROOM {
            if let Some(at) = nest {
                b.nest_end(at);
            }
            nest = Some(anon_elements_begin(b, name, id));
        }
        b.put_raw(&renest(e, Nest::Elem));
    }
    // An empty inline set still gets its (empty) element message, as before.
    let at = nest.unwrap_or_else(|| anon_elements_begin(b, name, id));
    b.nest_end(at);
}

/// One element message for the new anonymous set with set id `id`; returns the open nest.
fn anon_elements_begin(b: &mut Batch, name: &str, id: u32) -> usize {
    b.begin(
        NFT_MSG_NEWSETELEM,
        NLM_F_CREATE,
        NFPROTO_INET,
        format!("elements of set {name}"),
    );
    b.put_str(NFTA_SET_ELEM_LIST_TABLE, INTEL_TABLE);
    b.put_str(NFTA_SET_ELEM_LIST_SET, "__set%d");
    b.put_be32(NFTA_SET_ELEM_LIST_SET_ID, id);
    b.nest_begin(NFTA_SET_ELEM_LIST_ELEMENTS)
}

/// End `b` by deleting the scratch table and commit it.
fn commit_scratch(nlk: &mut IntelNetlink, b: Batch) -> Result<(), EnforceError> {
    scratch_commit(nlk, b).map_err(|e| EnforceError::Apply(nl(e)))
}

/// [`commit_scratch`], with the kernel's refusal as it came.
fn scratch_commit(nlk: &mut IntelNetlink, mut b: Batch) -> Result<(), NfnlError> {
    b.begin(NFT_MSG_DELTABLE, 0, NFPROTO_INET, "scratch table (delete)");
    b.put_str(NFTA_TABLE_NAME, TEMPLATE_TABLE);
    nlk.sock.commit(b)
}

/// Whether a replace was refused for the new table's flags (`EOPNOTSUPP` on the table
/// message: the kernel does not know `NFT_TABLE_F_PERSIST`).
fn refused_flags(e: &NfnlError) -> bool {
    matches!(e, NfnlError::Refused { what, err }
        if what.starts_with("table") && err.raw_os_error() == Some(libc::EOPNOTSUPP))
}

/// What the blocklist table should hold: the scratch table's shape `tmpl` with the base
/// chains' hooks, which the scratch table does not have, and the table's `(flags, owner)`.
fn wanted(tmpl: Shape, (flags, owner): (u32, Option<u32>)) -> Shape {
    let mut want = tmpl;
    want.flags = flags;
    want.owner = owner;
    want.hooks = BASE_CHAINS
        .iter()
        .map(|(n, h, p)| ((*n).to_owned(), (*h, *p, NF_ACCEPT, "filter".to_owned())))
        .collect();
    want
}

/// Run the read-back `f` so that all it reads is one state of the ruleset (see
/// [`NfSocket::consistent`]): read again when a transaction was committed meanwhile or a
/// dump was interrupted, up to [`READ_TRIES`] times, then refused.
fn read_back<T>(
    sock: &mut NfSocket,
    f: impl FnMut(&mut NfSocket) -> Result<T, EnforceError>,
) -> Result<T, EnforceError> {
    sock.consistent(f)
        .map_err(|e| EnforceError::ReadBack(nl(e)))?
}

/// Put the structure of `rs` with the exemptions `protected` into the scratch table with
/// `nft` and read it: its `nft -j list` listing, checked against the compiled structure,
/// and its netlink dump (what the batch copies) between two generation requests, so that
/// both are the same state of the ruleset. When another writer committed in between (it
/// could have slipped a rule into the scratch table after the listing was checked, and
/// had it copied into the blocklist table), it starts over, up to [`READ_TRIES`] times,
/// then refuses.
fn scratch(
    sock: &mut NfSocket,
    backend: &mut dyn Backend,
    rs: &IntelRuleset,
    protected: &[Protected],
    digest: &str,
) -> Result<Shape, EnforceError> {
    let mismatch = |found: String| EnforceError::Mismatch {
        expected: digest.to_owned(),
        found,
    };
    for _ in 0..READ_TRIES {
        backend
            .apply(&render_template(rs, protected))
            .map_err(|e| {
                let why = e.to_string();
                EnforceError::Apply(if why.contains("Operation not permitted") {
                    NftError::Netlink(format!(
                        "the scratch table inet {TEMPLATE_TABLE} could not be built: another \
                         process owns a table of that name (nftables owner flag): {why}"
                    ))
                } else {
                    e
                })
            })?;
        let read = sock
            .settled(|sock| {
                let listing = backend
                    .list_table(TEMPLATE_TABLE)
                    .map_err(EnforceError::ReadBack)?
                    .ok_or_else(|| mismatch("no scratch table".into()))?;
                verify_template_listing(rs, protected, &listing).map_err(mismatch)?;
                shape(sock, TEMPLATE_TABLE)
                    .map_err(EnforceError::ReadBack)?
                    .ok_or_else(|| mismatch("no scratch table".into()))
            })
            .map_err(|e| EnforceError::ReadBack(nl(e)))?;
        if let Some(r) = read {
            return r;
        }
    }
    Err(EnforceError::ReadBack(nl(NfnlError::Unsettled {
        tries: READ_TRIES,
    })))
}

/// Whether a dumped table has the declarations and rules wanted (counters by name and
/// type: their values move with traffic).
fn same_shape(held: &Shape, want: &Shape) -> Result<(), String> {
    let objs = |s: &Shape| {
        s.objs
            .iter()
            .map(|(n, (t, _))| (n.clone(), t.clone()))
            .collect::<Vec<_>>()
    };
    let what = if held.flags != want.flags {
        "table flags (a dormant table filters nothing; an unowned one can be changed by anyone)"
    } else if held.owner != want.owner {
        "table owner (trustd's socket no longer holds it)"
    } else if objs(held) != objs(want) {
        "counters"
    } else if held.sets != want.sets {
        "set declarations"
    } else if held.anon != want.anon {
        "rules' inline sets"
    } else if held.chains != want.chains || held.hooks != want.hooks {
        "chains"
    } else if held.rules != want.rules {
        "rules"
    } else {
        return Ok(());
    };
    Err(format!(
        "the blocklist table's {what} differ from the compiled ones"
    ))
}

/// Each anonymous set of `s` by name: a digest of its declaration (without its name) and
/// its elements, which is what a rule's reference to it means.
fn anon_tokens(s: &Shape) -> BTreeMap<String, String> {
    s.sets
        .iter()
        .filter(|(_, (_, anon))| *anon)
        .map(|(name, (decl, _))| {
            let mut bytes: Vec<u8> = raw_attrs(decl)
                .filter(|(t, _)| *t != NFTA_SET_NAME)
                .flat_map(|(_, raw)| raw.iter().copied())
                .collect();
            for e in s.anon.get(name).into_iter().flatten() {
                bytes.extend_from_slice(&(e.len() as u32).to_be_bytes());
                bytes.extend_from_slice(e);
            }
            (name.clone(), sha256_hex(&bytes))
        })
        .collect()
}

/// `s`'s rules with every reference to an anonymous set replaced by what it holds (the
/// kernel numbers anonymous sets per table, so the same rule names another number in
/// another table or after other rules came and went).
fn canonical_rules(s: &Shape) -> Rules {
    let tokens = anon_tokens(s);
    s.rules
        .iter()
        .map(|(chain, rules)| {
            let rules = rules
                .iter()
                .map(|r| {
                    renest_with(r, Nest::Rule, &mut |name| {
                        let mut v = tokens.get(name)?.clone().into_bytes();
                        v.push(0);
                        Some(nla(NFTA_LOOKUP_SET, &v))
                    })
                })
                .collect();
            (chain.clone(), rules)
        })
        .collect()
}

/// [`same_shape`] up to the numbering of anonymous sets: counters, named sets, chains and
/// hooks as they are, rules with each anonymous set they name compared by its content.
fn same_shape_canonical(held: &Shape, want: &Shape) -> Result<(), String> {
    let objs = |s: &Shape| {
        s.objs
            .iter()
            .map(|(n, (t, _))| (n.clone(), t.clone()))
            .collect::<Vec<_>>()
    };
    let named = |s: &Shape| {
        s.sets
            .iter()
            .filter(|(_, (_, anon))| !*anon)
            .map(|(n, (d, _))| (n.clone(), d.clone()))
            .collect::<Vec<_>>()
    };
    let anon = |s: &Shape| {
        let mut t: Vec<String> = anon_tokens(s).into_values().collect();
        t.sort();
        t
    };
    let what = if held.flags != want.flags {
        "table flags (a dormant table filters nothing; an unowned one can be changed by anyone)"
    } else if held.owner != want.owner {
        "table owner (trustd's socket no longer holds it)"
    } else if objs(held) != objs(want) {
        "counters"
    } else if named(held) != named(want) {
        "set declarations"
    } else if anon(held) != anon(want) {
        "rules' inline sets"
    } else if held.chains != want.chains || held.hooks != want.hooks {
        "chains"
    } else if canonical_rules(held) != canonical_rules(want) {
        "rules"
    } else {
        return Ok(());
    };
    Err(format!(
        "the blocklist table's {what} differ from the compiled ones"
    ))
}

/// Put `protected` in force as the exemptions of the blocklists `rs` in one transaction,
/// without touching the sets or listing the table with `nft`: `nft` compiles the table's
/// structure with the new exemptions into the scratch table (read back with `nft -j list`
/// and compared with the compiled structure); one batch flushes the two exemption chains
/// and copies their new rules (with the inline sets they name) from it, and deletes it;
/// then the table's declarations and rules are dumped and compared with the scratch
/// table's (anonymous sets by content). The confirmed table becomes the one later checks
/// compare with.
pub(super) fn refill_exemptions(
    nlk: &mut IntelNetlink,
    backend: &mut dyn Backend,
    rs: &IntelRuleset,
    protected: &[Protected],
) -> Result<(), EnforceError> {
    // Until confirmed, later checks do not trust what was confirmed before.
    nlk.applied = None;
    let digest = intel_structure_digest_with(rs, protected);
    let mismatch = |found: String| EnforceError::Mismatch {
        expected: digest.clone(),
        found,
    };
    let tmpl = scratch(&mut nlk.sock, backend, rs, protected, &digest)?;
    // The new rules, their inline sets named by transaction-local ids (the kernel numbers
    // them in the table when it creates them).
    let mut ids: Vec<String> = Vec::new();
    let mut new_rules: Vec<(&str, Vec<u8>)> = Vec::new();
    for chain in [EXEMPT_OUT, EXEMPT_IN] {
        for r in tmpl.rules.get(chain).into_iter().flatten() {
            let raw = renest_with(r, Nest::Rule, &mut |name| {
                if !tmpl.sets.get(name).is_some_and(|(_, anon)| *anon) {
                    return None;
                }
                let id = match ids.iter().position(|n| n == name) {
                    Some(i) => i + 1,
                    None => {
                        ids.push(name.to_owned());
                        ids.len()
                    }
                } as u32;
                let mut v = nla(NFTA_LOOKUP_SET, b"__set%d\0");
                v.extend(nla(NFTA_LOOKUP_SET_ID, &id.to_be_bytes()));
                Some(v)
            });
            new_rules.push((chain, raw));
        }
    }
    let mut b = Batch::new();
    for chain in [EXEMPT_OUT, EXEMPT_IN] {
        // A rule deletion naming only the chain flushes it (and the inline sets its rules
        // were bound to go with them).
        b.begin(
            NFT_MSG_DELRULE,
            0,
            NFPROTO_INET,
            format!("flush of chain {chain}"),
        );
        b.put_str(NFTA_RULE_TABLE, INTEL_TABLE);
        b.put_str(NFTA_RULE_CHAIN, chain);
    }
    for (id, name) in (1u32..).zip(&ids) {
        let Some((decl, _)) = tmpl.sets.get(name) else {
            continue;
        };
        b.begin(
            NFT_MSG_NEWSET,
            NLM_F_CREATE,
            NFPROTO_INET,
            format!("set {name}"),
        );
        b.put_str(NFTA_SET_TABLE, INTEL_TABLE);
        for (t, raw) in raw_attrs(decl) {
            if t == NFTA_SET_NAME {
                b.put_str(NFTA_SET_NAME, "__set%d");
            } else {
                b.put_raw(raw);
            }
        }
        b.put_be32(NFTA_SET_ID, id);
        put_anon_elements(&mut b, name, id, &tmpl);
    }
    for (i, (chain, raw)) in new_rules.iter().enumerate() {
        b.begin(
            NFT_MSG_NEWRULE,
            NLM_F_CREATE | NLM_F_APPEND,
            NFPROTO_INET,
            format!("exemption rule {} (chain {chain})", i + 1),
        );
        b.put_str(NFTA_RULE_TABLE, INTEL_TABLE);
        b.put_str(NFTA_RULE_CHAIN, chain);
        b.put_raw(raw);
    }
    commit_scratch(nlk, b)?;
    let want = wanted(tmpl, nlk.table_owner());
    let held = read_back(&mut nlk.sock, |sock| {
        let held = shape(sock, INTEL_TABLE)
            .map_err(EnforceError::ReadBack)?
            .ok_or_else(|| mismatch("absent".into()))?;
        same_shape_canonical(&held, &want).map_err(mismatch)?;
        Ok(held)
    })?;
    nlk.applied = Some((digest, held));
    Ok(())
}

/// The full read-back of the table put in force with `rs`: declarations and rules as
/// they were confirmed then, every set's elements as compiled. An error when this socket
/// has not confirmed `rs` in force (a replace or exemption refill failed since, or `rs` is
/// not what was put there): the caller replaces the table, never falls back to an `nft`
/// listing of every element.
pub(super) fn check(nlk: &mut IntelNetlink, rs: &IntelRuleset) -> Result<(), String> {
    let want = match &nlk.applied {
        Some((digest, want)) if *digest == intel_structure_digest(rs) => want,
        _ => return Err("the blocklist table in force is not the one compiled".into()),
    };
    let all = sets(rs);
    let chosen: Vec<&SetSpec> = all.iter().map(|(_, s)| s).collect();
    nlk.sock
        .consistent(|sock| {
            let held = match shape(sock, INTEL_TABLE) {
                Ok(Some(h)) => h,
                Ok(None) => return Err("the blocklist table is gone".into()),
                Err(e) => return Err(format!("the blocklist table could not be read back: {e}")),
            };
            same_shape(&held, want)?;
            check_sets(sock, rs, &chosen, Presence::Check)
        })
        .map_err(|e| format!("the blocklist table could not be read back: {e}"))?
}

/// Move the kernel from `old` to `new` with element batches (deletions first, then
/// additions, in hash and interval sets alike) in one transaction. `Ok(false)` when the
/// structure differs (sets appear or vanish, categories or exemptions change): the caller
/// replaces the table instead.
pub(super) fn update(
    nlk: &mut IntelNetlink,
    old: &IntelRuleset,
    new: &IntelRuleset,
) -> Result<bool, NftError> {
    if !super::intel::same_layout(old, new) || old.protected != new.protected {
        return Ok(false);
    }
    nlk.timings.clear();
    let mut t = Instant::now();
    let (old_sets, new_sets) = (sets(old), sets(new));
    // Per set, what goes and what comes: one merge of the two sorted sets each.
    let deltas: Vec<(&SetSpec, &SetSpec, Vec<Elem>, Vec<Elem>)> = old_sets
        .iter()
        .zip(&new_sets)
        .map(|((_, o), (_, n))| {
            let (gone, added) = n.delta(old, new);
            (o, n, gone, added)
        })
        .collect();
    let mut b = Batch::new();
    // Deletions first, then additions (a prefix may be replaced by an overlapping one).
    for (o, n, gone, _) in &deltas {
        // nft's no-match element goes first, comes last, when its need changes.
        if zero_end(old, o) && !zero_end(new, n) {
            put_zero_end(&mut b, NFT_MSG_DELSETELEM, n, "removed elements");
        }
        put_elems(
            &mut b,
            NFT_MSG_DELSETELEM,
            n,
            gone.iter().copied(),
            "removed elements",
        );
    }
    for (o, n, _, added) in &deltas {
        put_elems(
            &mut b,
            NFT_MSG_NEWSETELEM,
            o,
            added.iter().copied(),
            "added elements",
        );
        if zero_end(new, n) && !zero_end(old, o) {
            put_zero_end(&mut b, NFT_MSG_NEWSETELEM, o, "added elements");
        }
    }
    lap(&mut nlk.timings, &mut t, "delta and netlink batch built");
    if b.messages() > 0 {
        nlk.sock.commit(b).map_err(nl)?;
    }
    lap(&mut nlk.timings, &mut t, "kernel commit (send, wait)");
    Ok(true)
}

/// Refill the named sets of the intel table with their compiled elements in one
/// transaction (each flushed, then filled), then check their elements. `Ok(false)` if a
/// name is not a set of `rs`.
pub(super) fn refill(
    nlk: &mut IntelNetlink,
    rs: &IntelRuleset,
    names: &[String],
) -> Result<bool, String> {
    let all = sets(rs);
    let mut chosen = Vec::new();
    for name in names {
        let Some((_, s)) = all.iter().find(|(_, s)| &s.name == name) else {
            return Ok(false);
        };
        chosen.push(s);
    }
    let mut b = Batch::new();
    for s in &chosen {
        // A deletion without elements flushes the set.
        b.begin(
            NFT_MSG_DELSETELEM,
            0,
            NFPROTO_INET,
            format!("flush of set {}", s.name),
        );
        b.put_str(NFTA_SET_ELEM_LIST_TABLE, INTEL_TABLE);
        b.put_str(NFTA_SET_ELEM_LIST_SET, &s.name);
        if zero_end(rs, s) {
            put_zero_end(&mut b, NFT_MSG_NEWSETELEM, s, "elements");
        }
        put_elems(&mut b, NFT_MSG_NEWSETELEM, s, s.elems(rs), "elements");
    }
    nlk.sock.commit(b).map_err(|e| e.to_string())?;
    nlk.sock
        .consistent(|sock| check_sets(sock, rs, &chosen, Presence::Check))
        .map_err(|e| format!("the refilled sets could not be read back: {e}"))??;
    Ok(true)
}

/// Whether the intel table is still, as far as a cheap read shows, what was put in force
/// with `rs`: the table (its flags: not dormant; owned by this socket unless unowned), every declaration and rule as
/// confirmed then, and every set's element count as compiled (an interval set's halved, as
/// the kernel reports it), all in one state of the ruleset; no element is read. So a table
/// made dormant or a set flushed or cut is caught by this check too, not only by
/// notifications (whose attribution a process could fool by winning a reaped child's pid)
/// or by the full read-back ([`check`]). `false` when this socket has not confirmed `rs` in
/// force: the caller replaces the table.
pub(super) fn rules_intact(nlk: &mut IntelNetlink, rs: &IntelRuleset) -> Result<bool, NftError> {
    let want = match &nlk.applied {
        Some((digest, applied)) if *digest == intel_structure_digest(rs) => applied,
        _ => return Ok(false),
    };
    let all = sets(rs);
    nlk.sock
        .consistent(|sock| {
            let Some(held) = shape(sock, INTEL_TABLE)? else {
                return Ok(false);
            };
            if same_shape(&held, want).is_err() {
                return Ok(false);
            }
            let Some(counts) = set_counts(sock).map_err(NftError::Netlink)? else {
                // No counts reported (an older kernel): the rules, as before.
                return Ok(true);
            };
            Ok(all.iter().all(|(_, s)| {
                let want = if s.interval {
                    kernel_len(rs, s) / 2
                } else {
                    kernel_len(rs, s)
                };
                counts.get(&s.name) == Some(&want)
            }))
        })
        .map_err(nl)?
}

/// Run `f` with the backend's netlink socket for the intel table, if it has one.
pub(super) fn with_netlink<R>(
    backend: &mut dyn Backend,
    f: impl FnOnce(&mut IntelNetlink, &mut dyn Backend) -> R,
) -> Option<R> {
    let mut nlk = backend.take_intel_netlink()?;
    let r = f(&mut nlk, backend);
    backend.put_intel_netlink(nlk);
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The read-back after a replace leaves out the element-by-element presence check only
    /// when the generation moved by exactly trustd's own transaction: any other commit
    /// before it or during the read-back (another writer could have removed elements)
    /// brings the check back.
    #[test]
    fn element_presence_is_proven_only_when_no_other_transaction_came_between() {
        assert_eq!(presence_after(41, 42), Presence::Proven);
        assert_eq!(presence_after(41, 43), Presence::Check, "one more writer");
        assert_eq!(presence_after(41, 41), Presence::Check, "nothing committed");
        assert_eq!(presence_after(41, 40), Presence::Check);
        // The kernel skips 0 when the generation wraps.
        assert_eq!(presence_after(u32::MAX, 1), Presence::Proven);
        assert_eq!(presence_after(u32::MAX, 0), Presence::Check);
        assert_eq!(presence_after(u32::MAX, 2), Presence::Check);
    }

    /// Only the kernel's `EOPNOTSUPP` for the new table (a kernel before Linux 6.9 knows no
    /// `persist` flag) makes trustd leave the table unowned; `EPERM` (another socket owns
    /// the table) or a refusal of any other message does not.
    #[test]
    fn only_a_kernel_without_the_persist_flag_leaves_the_table_unowned() {
        let refused = |what: &str, errno| NfnlError::Refused {
            what: what.into(),
            err: std::io::Error::from_raw_os_error(errno),
        };
        assert!(refused_flags(&refused("table", libc::EOPNOTSUPP)));
        assert!(refused_flags(&refused(
            "table (attribute at offset 20)",
            libc::EOPNOTSUPP
        )));
        assert!(!refused_flags(&refused("table (add)", libc::EPERM)));
        assert!(!refused_flags(&refused("table", libc::EPERM)));
        assert!(!refused_flags(&refused("set c0_v4h", libc::EOPNOTSUPP)));
        assert!(!refused_flags(&refused(
            "scratch table (delete)",
            libc::EOPNOTSUPP
        )));
    }
}
