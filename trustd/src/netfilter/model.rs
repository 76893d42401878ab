//! The ruleset as data: what `compile` produces and `render` turns into nft JSON.
//!
//! Flows carry the generation of the ruleset that admitted them in their conntrack mark
//! (docs/ARCHITECTURE.md, "Flows across a ruleset change"): [`Match::FlowCurrent`] tests it,
//! [`Action::Admit`] sets it.

use crate::policy::Cidr;

/// trustd's table: named counters and chains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruleset {
    /// Named counters (counts only: posture and audit read them, never addresses).
    pub counters: Vec<String>,
    /// Chains, base chains first.
    pub chains: Vec<Chain>,
    /// The flow generation: the value, under [`FLOW_MARK_MASK`], that [`Action::Admit`]
    /// writes into the conntrack mark of the flows this ruleset admits. Derived from the
    /// ruleset itself (`render::flow_generation`), so the same ruleset always has the same
    /// generation and is never 0 (the mark of a flow nothing marked).
    pub generation: u32,
}

/// The bits of the conntrack mark that hold the flow generation (the high 24); the low 8
/// bits are kept as they are for other users of the mark.
pub const FLOW_MARK_MASK: u32 = 0xffff_ff00;

/// A chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// Its name.
    pub name: String,
    /// Hook, if it is a base chain.
    pub base: Option<Base>,
    /// Rules in order.
    pub rules: Vec<Rule>,
}

/// A base chain's hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Base {
    /// `filter` or `nat`.
    pub kind: &'static str,
    /// `input`, `output`, `forward`.
    pub hook: &'static str,
    /// Priority.
    pub prio: i32,
    /// Default verdict: `drop` for every filter chain trustd makes.
    pub policy: &'static str,
}

/// A transport for port matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum L4 {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// Either (the transport header).
    Any,
}

/// One match of a rule (all must hold).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Match {
    /// Output interface name is one of.
    OifName(Vec<String>),
    /// Output interface name is none of.
    OifNameNot(Vec<String>),
    /// Input interface name is one of.
    IifName(Vec<String>),
    /// Input interface name is none of.
    IifNameNot(Vec<String>),
    /// The output interface is (`true`) or is not the loopback device, by its interface
    /// index (`meta oif 1`: the loopback device is the first of every network namespace and
    /// can be neither deleted nor moved). Never by its name, which any process with
    /// CAP_NET_ADMIN can give another interface, nor by its type (`meta oiftype
    /// loopback`), which a TUN device's owner can set with `TUNSETLINK`.
    OifLoopback(bool),
    /// The input interface is the loopback device, by its index (`meta iif 1`).
    IifLoopback,
    /// Conntrack state is one of.
    CtState(Vec<&'static str>),
    /// Destination address or prefix.
    Daddr(Cidr),
    /// Source address or prefix.
    Saddr(Cidr),
    /// Transport protocol is one of (`icmp`, `ipv6-icmp`, `tcp`, `udp`).
    L4Proto(Vec<&'static str>),
    /// Destination port is one of.
    Dport(L4, Vec<u16>),
    /// Source port is one of.
    Sport(L4, Vec<u16>),
    /// Socket owner uid is one of.
    SkUid(Vec<u32>),
    /// Socket owner uid is not.
    SkUidNot(u32),
    /// Socket owner gid is one of.
    SkGid(Vec<u32>),
    /// ICMPv6 type is one of.
    Icmpv6Type(Vec<&'static str>),
    /// IPv4 only (`meta nfproto ipv4`).
    Ipv4,
    /// The packet's flow carries this ruleset's generation in its conntrack mark.
    FlowCurrent,
    /// The packet travels in the reply direction of its flow (`ct direction reply`).
    CtReply,
}

impl Match {
    /// The same condition seen from the other end of the flow: what a rule says about a
    /// flow's first packet, said about a packet travelling the other way (destination and
    /// source swapped, output interface as input interface). Socket owner and protocol
    /// stay. `None` for a match that has no mirror (ICMPv6 types, conntrack state).
    pub fn mirrored(&self) -> Option<Self> {
        Some(match self {
            Self::OifName(n) => Self::IifName(n.clone()),
            Self::OifNameNot(n) => Self::IifNameNot(n.clone()),
            Self::IifName(n) => Self::OifName(n.clone()),
            Self::IifNameNot(n) => Self::OifNameNot(n.clone()),
            Self::OifLoopback(true) => Self::IifLoopback,
            Self::IifLoopback => Self::OifLoopback(true),
            // No input-side "not loopback" match is compiled.
            Self::OifLoopback(false) => return None,
            Self::Daddr(c) => Self::Saddr(*c),
            Self::Saddr(c) => Self::Daddr(*c),
            Self::Dport(p, ports) => Self::Sport(*p, ports.clone()),
            Self::Sport(p, ports) => Self::Dport(*p, ports.clone()),
            Self::L4Proto(_) | Self::SkUid(_) | Self::SkUidNot(_) | Self::SkGid(_) | Self::Ipv4 => {
                self.clone()
            }
            Self::CtState(_) | Self::Icmpv6Type(_) | Self::FlowCurrent | Self::CtReply => {
                return None;
            }
        })
    }
}

/// What a rule does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Let it through (loopback, nat chains: no flow mark).
    Accept,
    /// Admit the packet's flow: write this ruleset's generation into its conntrack mark
    /// (the bits under [`FLOW_MARK_MASK`]; the others are kept), then let it through.
    Admit,
    /// Continue in the named regular chain; its end drops (the caller's policy).
    Goto(String),
    /// Drop it.
    Drop,
    /// Redirect to a local port (nat chains).
    Redirect(u16),
    /// Continue in the named regular chain (an accept there ends the base chain too).
    Jump(String),
}

/// A rule: matches, an optional named counter, an action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// All must hold.
    pub matches: Vec<Match>,
    /// Count matching packets in this named counter.
    pub counter: Option<String>,
    /// The verdict.
    pub action: Action,
}

impl Rule {
    /// `matches` then `action`.
    pub fn new(matches: Vec<Match>, action: Action) -> Self {
        Self {
            matches,
            counter: None,
            action,
        }
    }

    /// Count into `name`.
    pub fn counted(mut self, name: &str) -> Self {
        self.counter = Some(name.to_owned());
        self
    }

    /// The rule applied to packets travelling the other way on the flows it speaks of (see
    /// [`Match::mirrored`]); `None` if a match has no mirror or the rule jumps elsewhere.
    pub fn mirrored(&self) -> Option<Self> {
        if matches!(self.action, Action::Goto(_)) {
            return None;
        }
        let mut matches = self
            .matches
            .iter()
            .map(Match::mirrored)
            .collect::<Option<Vec<_>>>()?;
        // nft merges adjacent matches on one header and lists them in header order: a source
        // port before a destination port (the read-back digest compares that order).
        for i in 1..matches.len() {
            if let (Match::Dport(a, _), Match::Sport(b, _)) = (&matches[i - 1], &matches[i])
                && a == b
            {
                matches.swap(i - 1, i);
            }
        }
        Some(Self {
            matches,
            counter: self.counter.clone(),
            action: self.action.clone(),
        })
    }
}
