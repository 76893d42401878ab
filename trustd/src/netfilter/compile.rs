//! Effective policy -> ruleset. Pure; every mode is a complete ruleset, deny by default in
//! and out. The always-allowed traffic (docs/SECURITY.md) is the same in every mode.

use super::model::{Action, Base, Chain, L4, Match, Rule, Ruleset};
use crate::policy::{
    AllowRule, Cidr, Effective, EffectiveNetwork, NetworkMode, NetworkPlan, Proto, RuleProto,
};

/// What `allow_lan` opens: private IPv4, link-local, IPv6 unique-local and link-local.
pub const LAN_PREFIXES: [&str; 6] = [
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "169.254.0.0/16",
    "fc00::/7",
    "fe80::/10",
];

/// mDNS, SSDP, LLMNR.
const LAN_DISCOVERY_PORTS: [u16; 3] = [1900, 5353, 5355];

fn cidr(s: &str) -> Cidr {
    s.parse()
        .expect("LAN_PREFIXES and 127.0.0.0/8 are valid prefixes (unit-tested)")
}

fn l4(p: Proto) -> L4 {
    match p {
        Proto::Tcp => L4::Tcp,
        Proto::Udp => L4::Udp,
    }
}

fn allow_rule(r: &AllowRule, mut prefix: Vec<Match>) -> Rule {
    prefix.push(Match::Daddr(r.dest));
    match r.proto {
        RuleProto::Tcp => prefix.push(Match::Dport(L4::Tcp, r.ports.clone())),
        RuleProto::Udp => prefix.push(Match::Dport(L4::Udp, r.ports.clone())),
        RuleProto::Icmp => prefix.push(Match::L4Proto(vec!["icmp", "ipv6-icmp"])),
        RuleProto::Any => {}
    }
    if !r.uids.is_empty() {
        prefix.push(Match::SkUid(r.uids.clone()));
    }
    if !r.gids.is_empty() {
        prefix.push(Match::SkGid(r.gids.clone()));
    }
    Rule::new(prefix, Action::Admit)
}

fn dns_rules(resolvers: &[std::net::IpAddr], via: &[Match]) -> Vec<Rule> {
    let mut out = Vec::new();
    for r in resolvers {
        let mut m = via.to_vec();
        m.push(Match::Daddr(Cidr::host(*r)));
        m.push(Match::Dport(L4::Any, vec![53]));
        out.push(Rule::new(m, Action::Admit));
    }
    // DNS anywhere else is refused, whatever the allow rules say.
    out.push(Rule::new(vec![Match::Dport(L4::Any, vec![53])], Action::Drop).counted("dns_blocked"));
    out
}

fn lan_rules() -> Vec<Rule> {
    LAN_PREFIXES
        .iter()
        .map(|p| Rule::new(vec![Match::Daddr(cidr(p))], Action::Admit))
        .collect()
}

fn mode_rules(n: &EffectiveNetwork) -> (Vec<Rule>, Vec<Rule>) {
    let mut out = Vec::new();
    let mut nat = Vec::new();
    match n.mode {
        NetworkMode::Direct => {
            out.extend(dns_rules(&n.resolvers, &[]));
            if n.allow_lan {
                out.extend(lan_rules());
            }
            out.extend(n.allow.iter().map(|r| allow_rule(r, vec![])));
        }
        NetworkMode::VpnRequired => {
            let vpn = n.vpn.clone().unwrap_or_else(|| crate::policy::Vpn {
                interfaces: vec![],
                endpoints: vec![],
            });
            for e in &vpn.endpoints {
                out.push(Rule::new(
                    vec![
                        Match::Daddr(Cidr::host(e.address)),
                        Match::Dport(l4(e.proto), vec![e.port]),
                    ],
                    Action::Admit,
                ));
            }
            let tun = vec![Match::OifName(vpn.interfaces.clone())];
            if !vpn.interfaces.is_empty() {
                out.extend(dns_rules(&n.resolvers, &tun));
            }
            if n.allow_lan {
                out.extend(lan_rules());
            }
            if !vpn.interfaces.is_empty() {
                out.extend(n.allow.iter().map(|r| allow_rule(r, tun.clone())));
            }
        }
        NetworkMode::ProxyRequired => {
            for e in n.proxy.iter().flat_map(|p| &p.endpoints) {
                out.push(Rule::new(
                    vec![
                        Match::Daddr(Cidr::host(e.address)),
                        Match::Dport(l4(e.proto), vec![e.port]),
                    ],
                    Action::Admit,
                ));
            }
            out.extend(dns_rules(&n.resolvers, &[]));
            if n.allow_lan {
                out.extend(lan_rules());
            }
            let exempt: Vec<u32> = n.proxy.iter().flat_map(|p| p.exempt_uids.clone()).collect();
            if !exempt.is_empty() {
                out.extend(
                    n.allow
                        .iter()
                        .map(|r| allow_rule(r, vec![Match::SkUid(exempt.clone())])),
                );
            }
        }
        NetworkMode::TorOnly => {
            if let Some(t) = &n.tor {
                out.push(Rule::new(vec![Match::SkUid(vec![t.uid])], Action::Admit));
                if n.allow_lan {
                    out.extend(lan_rules());
                }
                let not_tor = || {
                    vec![
                        Match::Ipv4,
                        Match::SkUidNot(t.uid),
                        Match::OifLoopback(false),
                    ]
                };
                let mut dns = not_tor();
                dns.push(Match::Dport(L4::Udp, vec![53]));
                nat.push(Rule::new(dns, Action::Redirect(t.dns_port)));
                let mut dns_tcp = not_tor();
                dns_tcp.push(Match::Dport(L4::Tcp, vec![53]));
                nat.push(Rule::new(dns_tcp, Action::Redirect(t.dns_port)));
                let mut tcp = not_tor();
                tcp.push(Match::L4Proto(vec!["tcp"]));
                nat.push(Rule::new(tcp, Action::Redirect(t.trans_port)));
            }
        }
    }
    (out, nat)
}

/// The always-allowed link traffic, outbound: DHCP and DHCPv6 clients (with `dhcp`: the
/// policy table admits them, the blocklist table's exemptions only accept them), and the
/// ICMPv6 that link setup needs (docs/SECURITY.md). The kernel does not track neighbor
/// discovery and MLD (no conntrack entry, so no mark to set: reading it would end the rule):
/// those rules accept each packet as it is.
pub(super) fn link_setup_out(dhcp: &Action) -> Vec<Rule> {
    vec![
        Rule::new(
            vec![
                Match::Sport(L4::Udp, vec![68]),
                Match::Dport(L4::Udp, vec![67]),
            ],
            dhcp.clone(),
        ),
        Rule::new(
            vec![
                Match::Sport(L4::Udp, vec![546]),
                Match::Dport(L4::Udp, vec![547]),
            ],
            dhcp.clone(),
        ),
        Rule::new(
            vec![Match::Icmpv6Type(vec![
                "nd-router-solicit",
                "nd-neighbor-solicit",
                "nd-neighbor-advert",
                "mld2-listener-report",
            ])],
            Action::Accept,
        ),
    ]
}

/// The always-allowed link traffic, inbound (the replies and announcements of
/// [`link_setup_out`]).
pub(super) fn link_setup_in(dhcp: &Action) -> Vec<Rule> {
    vec![
        Rule::new(
            vec![
                Match::Sport(L4::Udp, vec![67]),
                Match::Dport(L4::Udp, vec![68]),
            ],
            dhcp.clone(),
        ),
        Rule::new(
            vec![
                Match::Sport(L4::Udp, vec![547]),
                Match::Dport(L4::Udp, vec![546]),
            ],
            dhcp.clone(),
        ),
        Rule::new(
            vec![Match::Icmpv6Type(vec![
                "mld-listener-query",
                "nd-router-advert",
                "nd-neighbor-solicit",
                "nd-neighbor-advert",
            ])],
            Action::Accept,
        ),
    ]
}

/// The loopback prefixes: blocklists never apply to them (nor to interface `lo`).
pub const LOOPBACK_PREFIXES: [&str; 2] = ["127.0.0.0/8", "::1/128"];

/// What kind of destination a blocklist may not cut, as reports name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProtectedKind {
    /// Loopback (`lo`, 127.0.0.0/8, ::1), which also carries Tor's local ports.
    Loopback,
    /// A VPN endpoint of the policy (vpn-required).
    VpnEndpoint,
    /// A proxy endpoint of the policy (proxy-required).
    ProxyEndpoint,
    /// A DNS resolver of the policy, port 53.
    Resolver,
    /// A rule of the setup bootstrap allowlist (lockdown).
    Bootstrap,
}

impl ProtectedKind {
    /// The name used in apply results, audit records and posture.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Loopback => "loopback",
            Self::VpnEndpoint => "vpn-endpoint",
            Self::ProxyEndpoint => "proxy-endpoint",
            Self::Resolver => "resolver",
            Self::Bootstrap => "bootstrap",
        }
    }
}

/// A destination that the policy in force names explicitly, which the blocklists do not
/// cut: the same matches as the policy table's accept rule for it, and for its replies.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Protected {
    /// What it is.
    pub kind: ProtectedKind,
    /// Its address or prefix.
    pub dest: Cidr,
    /// Matches of the packets sent to it (interface, address, transport, ports, uids).
    pub out: Vec<Match>,
    /// Matches of its replies (interface, conntrack state, source address and port).
    pub reply: Vec<Match>,
}

fn protect(kind: ProtectedKind, rule: &AllowRule, via: &[String]) -> Protected {
    let mut pre = Vec::new();
    let mut reply = Vec::new();
    if !via.is_empty() {
        pre.push(Match::OifName(via.to_vec()));
        reply.push(Match::IifName(via.to_vec()));
    }
    let out = allow_rule(rule, pre).matches;
    reply.push(Match::CtState(vec!["established", "related"]));
    reply.push(Match::Saddr(rule.dest));
    match rule.proto {
        RuleProto::Tcp => reply.push(Match::Sport(L4::Tcp, rule.ports.clone())),
        RuleProto::Udp => reply.push(Match::Sport(L4::Udp, rule.ports.clone())),
        RuleProto::Icmp => reply.push(Match::L4Proto(vec!["icmp", "ipv6-icmp"])),
        RuleProto::Any => {}
    }
    Protected {
        kind,
        dest: rule.dest,
        out,
        reply,
    }
}

fn endpoint_rule(address: std::net::IpAddr, proto: Proto, port: u16) -> AllowRule {
    AllowRule {
        dest: Cidr::host(address),
        proto: match proto {
            Proto::Tcp => RuleProto::Tcp,
            Proto::Udp => RuleProto::Udp,
        },
        ports: vec![port],
        uids: vec![],
        gids: vec![],
    }
}

/// The destinations the effective policy names explicitly and its table accepts: in
/// lockdown the bootstrap allowlist; in `direct` the resolvers; in `vpn-required` the VPN
/// endpoints (any interface) and the resolvers (through the tunnel); in `proxy-required`
/// the proxy endpoints and the resolvers; in `tor-only` none beyond loopback (Tor's ports
/// are local). Plain `allow` rules, LAN prefixes and inbound rules are not protected: the
/// blocklists exist to cut inside what they allow.
pub fn protected(e: &Effective) -> Vec<Protected> {
    let dns = |resolvers: &[std::net::IpAddr], via: &[String]| {
        resolvers
            .iter()
            .flat_map(|r| {
                [Proto::Udp, Proto::Tcp]
                    .map(|p| protect(ProtectedKind::Resolver, &endpoint_rule(*r, p, 53), via))
            })
            .collect::<Vec<_>>()
    };
    let mut out = Vec::new();
    match &e.network {
        NetworkPlan::Lockdown { bootstrap, .. } => {
            out.extend(
                bootstrap
                    .iter()
                    .map(|r| protect(ProtectedKind::Bootstrap, r, &[])),
            );
        }
        NetworkPlan::Enforce(n) => match n.mode {
            NetworkMode::Direct => out.extend(dns(&n.resolvers, &[])),
            NetworkMode::VpnRequired => {
                if let Some(v) = &n.vpn {
                    for ep in &v.endpoints {
                        out.push(protect(
                            ProtectedKind::VpnEndpoint,
                            &endpoint_rule(ep.address, ep.proto, ep.port),
                            &[],
                        ));
                    }
                    if !v.interfaces.is_empty() {
                        out.extend(dns(&n.resolvers, &v.interfaces));
                    }
                }
            }
            NetworkMode::ProxyRequired => {
                for ep in n.proxy.iter().flat_map(|p| &p.endpoints) {
                    out.push(protect(
                        ProtectedKind::ProxyEndpoint,
                        &endpoint_rule(ep.address, ep.proto, ep.port),
                        &[],
                    ));
                }
                out.extend(dns(&n.resolvers, &[]));
            }
            NetworkMode::TorOnly => {}
        },
    }
    out.sort();
    out.dedup();
    out
}

/// The regular chain that judges, by the output rules, packets arriving on flows this device
/// opened whose mark is not current.
pub const INPUT_REPLY: &str = "input_reply";
/// The regular chain that judges, by the input rules, packets leaving on flows a peer opened
/// whose mark is not current.
pub const OUTPUT_REPLY: &str = "output_reply";

/// The first rules of a filter base chain: loopback, invalid, the fast path for packets of
/// flows this ruleset admitted, then packets in the reply direction of a flow not (yet)
/// admitted by it go to `reply_chain`, where the opposite chain's rules judge them.
fn head(lo: Vec<Rule>, on_tunnel: Option<Match>, reply_chain: &str) -> Vec<Rule> {
    let mut fast = vec![
        Match::CtState(vec!["established", "related"]),
        Match::FlowCurrent,
    ];
    fast.extend(on_tunnel);
    let mut rules = lo;
    rules.extend([
        Rule::new(vec![Match::CtState(vec!["invalid"])], Action::Drop),
        Rule::new(fast, Action::Accept),
        Rule::new(vec![Match::CtReply], Action::Goto(reply_chain.to_owned())),
    ]);
    rules
}

/// The rules of `body` seen from the other end of its flows, then a counted drop.
fn reply_rules(body: &[Rule], counter: &str) -> Vec<Rule> {
    let mut out: Vec<Rule> = body.iter().filter_map(Rule::mirrored).collect();
    out.push(Rule::new(vec![], Action::Drop).counted(counter));
    out
}

/// Compile the effective policy into trustd's table.
///
/// Every filter chain begins the same way: loopback accepted; invalid packets dropped;
/// packets of flows this ruleset admitted (their conntrack mark carries its generation)
/// accepted; packets in the reply direction of any other flow judged, in a regular chain, by
/// the opposite chain's rules mirrored (a reply is admitted when the ruleset would admit the
/// flow's first packet). Everything else, first packets and packets of flows admitted by an
/// earlier ruleset alike, goes through the chain's rules, whose accepts mark the flow. So a
/// ruleset change judges every open flow again on its next packet, in either direction, and
/// an unchanged ruleset (same generation) leaves open flows alone.
pub fn compile(e: &Effective) -> Ruleset {
    let filter = |hook| {
        Some(Base {
            kind: "filter",
            hook,
            prio: 0,
            policy: "drop",
        })
    };
    let mut output = Vec::new();
    let mut input = Vec::new();
    if e.block_lan_discovery {
        let d = Rule::new(
            vec![Match::Dport(L4::Udp, LAN_DISCOVERY_PORTS.to_vec())],
            Action::Drop,
        )
        .counted("lan_discovery_blocked");
        output.push(d.clone());
        input.push(d);
    }
    // Always allowed: DHCP and DHCPv6 clients, and the ICMPv6 that link setup needs.
    output.extend(link_setup_out(&Action::Admit));
    input.extend(link_setup_in(&Action::Admit));

    let mut nat = Vec::new();
    match &e.network {
        NetworkPlan::Lockdown { bootstrap, .. } => {
            output.extend(bootstrap.iter().map(|r| allow_rule(r, vec![])));
        }
        NetworkPlan::Enforce(n) => {
            let (out, n_rules) = mode_rules(n);
            output.extend(out);
            nat = n_rules;
            for r in &n.inbound {
                let mut m = Vec::new();
                if let Some(s) = r.source {
                    m.push(Match::Saddr(s));
                }
                m.push(Match::Dport(l4(r.proto), r.ports.clone()));
                input.push(Rule::new(m, Action::Admit));
            }
        }
    }
    // In vpn-required mode the tunnel decides: a flow admitted through the tunnel whose
    // packets are routed elsewhere (the tunnel went down) is judged again on every packet,
    // and the rules only admit what they admit off the tunnel (the endpoints, the LAN).
    let tunnels = match &e.network {
        NetworkPlan::Enforce(n) if n.mode == NetworkMode::VpnRequired => n
            .vpn
            .as_ref()
            .map(|v| v.interfaces.clone())
            .filter(|i| !i.is_empty()),
        _ => None,
    };
    let input_reply = reply_rules(&output, "blocked_in");
    let output_reply = reply_rules(&input, "blocked_out");
    let mut input_chain = head(
        vec![Rule::new(vec![Match::IifLoopback], Action::Accept)],
        tunnels.clone().map(Match::IifName),
        INPUT_REPLY,
    );
    input_chain.extend(input);
    input_chain.push(Rule::new(vec![], Action::Drop).counted("blocked_in"));
    let mut output_chain = head(
        vec![
            Rule::new(vec![Match::OifLoopback(true)], Action::Accept),
            // Loopback too: a connection that tor-only's nat redirects to Tor's local ports
            // leaves over lo, but the output hook still names the interface its first route
            // chose; its destination is what shows where it goes.
            Rule::new(vec![Match::Daddr(cidr("127.0.0.0/8"))], Action::Accept),
        ],
        tunnels.map(Match::OifName),
        OUTPUT_REPLY,
    );
    output_chain.extend(output);
    output_chain.push(Rule::new(vec![], Action::Drop).counted("blocked_out"));

    let mut chains = vec![
        Chain {
            name: "input".into(),
            base: filter("input"),
            rules: input_chain,
        },
        Chain {
            name: "output".into(),
            base: filter("output"),
            rules: output_chain,
        },
        Chain {
            name: "forward".into(),
            base: filter("forward"),
            rules: vec![Rule::new(vec![], Action::Drop).counted("blocked_forward")],
        },
        Chain {
            name: INPUT_REPLY.into(),
            base: None,
            rules: input_reply,
        },
        Chain {
            name: OUTPUT_REPLY.into(),
            base: None,
            rules: output_reply,
        },
    ];
    if !nat.is_empty() {
        chains.push(Chain {
            name: "nat_output".into(),
            base: Some(Base {
                kind: "nat",
                hook: "output",
                prio: -100,
                policy: "accept",
            }),
            rules: nat,
        });
    }
    let mut counters: Vec<String> = chains
        .iter()
        .flat_map(|c| c.rules.iter().filter_map(|r| r.counter.clone()))
        .collect();
    counters.sort();
    counters.dedup();
    let mut rs = Ruleset {
        counters,
        chains,
        generation: 0,
    };
    rs.generation = super::render::flow_generation(&rs);
    rs
}
