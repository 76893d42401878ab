//! The ruleset as data: what `compile` produces and `render` turns into nft JSON.

use crate::policy::Cidr;

/// trustd's table: named counters and chains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruleset {
    /// Named counters (counts only: posture and audit read them, never addresses).
    pub counters: Vec<String>,
    /// Chains, base chains first.
    pub chains: Vec<Chain>,
}

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
}

/// What a rule does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Let it through.
    Accept,
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
}
