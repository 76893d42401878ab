//! The policy payload, schema `enigm.policy/v1` (JSON Schema: `policy-schemas/v1/policy.schema.json`).

use std::collections::HashSet;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::{Cidr, is_valid_name};
use crate::timefmt::Timestamp;

/// A signed policy: what the network, privacy mode, launcher and setup allow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Always `enigm.policy/v1`.
    pub schema: String,
    /// Monotonic per signer; a device refuses a serial not above the one it holds.
    pub serial: u64,
    /// When the admin issued it.
    pub issued_at: Timestamp,
    /// After this the device refuses it (and keeps the last good one); installed, it stays in
    /// force past this, stale in posture.
    pub expires_at: Timestamp,
    /// Network enforcement.
    pub network: Network,
    /// What privacy mode forces.
    #[serde(default)]
    pub privacy: Privacy,
    /// Which apps may start.
    #[serde(default)]
    pub launcher: Launcher,
    /// What holds until setup is complete.
    #[serde(default)]
    pub setup: Setup,
    /// How old an installed input may grow before posture calls it stale (absent: only
    /// expiry makes an input stale).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<MaxAge>,
}

/// The longest a device should go on with an input after it was issued, in seconds per
/// role. Past it the input keeps enforcing (expiry and age never open anything) but posture
/// is `degraded`, naming the input and since when it is stale: a feed an attacker holds
/// back (TUF's freeze attack) shows before it expires.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaxAge {
    /// Seconds after its `issued_at` that the installed policy is stale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<u64>,
    /// Seconds after its `issued_at` that the installed intel feed is stale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intel: Option<u64>,
}

/// The shortest `max_age` a policy may set, in seconds (a minute).
pub const MIN_MAX_AGE_SECS: u64 = 60;
/// The longest `max_age` a policy may set, in seconds (about 100 years).
pub const MAX_MAX_AGE_SECS: u64 = 100 * 366 * 86_400;

/// How traffic may leave the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NetworkMode {
    /// Only the `allow` rules.
    Direct,
    /// Only the VPN endpoints on physical links; everything else through the tunnel.
    VpnRequired,
    /// Only the proxy endpoints (and the proxy's own uids).
    ProxyRequired,
    /// Only the Tor daemon's uid; TCP and DNS redirected to Tor.
    TorOnly,
}

impl NetworkMode {
    /// The name used in policy, posture and audit.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::VpnRequired => "vpn-required",
            Self::ProxyRequired => "proxy-required",
            Self::TorOnly => "tor-only",
        }
    }
}

/// The `network` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// The mode.
    pub mode: NetworkMode,
    /// Required by `vpn-required`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpn: Option<Vpn>,
    /// Required by `proxy-required`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxySection>,
    /// Required by `tor-only`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tor: Option<Tor>,
    /// Outbound allow rules (in `direct`; through the tunnel in `vpn-required`).
    #[serde(default)]
    pub allow: Vec<AllowRule>,
    /// The only resolvers DNS may reach.
    #[serde(default)]
    pub dns: Dns,
    /// Whether the local networks (RFC 1918, link-local, ULA) are reachable.
    #[serde(default)]
    pub allow_lan: bool,
    /// Inbound allow rules; everything else inbound is dropped.
    #[serde(default)]
    pub inbound: Vec<InboundRule>,
}

/// A VPN: its tunnel interfaces and the endpoints the physical links may reach.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vpn {
    /// Tunnel interface names (`wg0`, `tun0`).
    pub interfaces: Vec<String>,
    /// The VPN servers.
    pub endpoints: Vec<Endpoint>,
}

/// The proxies, and the uids (the proxy daemon itself) exempt from going through them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxySection {
    /// Proxy servers.
    pub endpoints: Vec<Endpoint>,
    /// Uids that may reach the allow rules directly (the proxy daemon).
    #[serde(default)]
    pub exempt_uids: Vec<u32>,
}

/// The local Tor daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tor {
    /// The uid Tor runs as: the only one whose traffic leaves.
    pub uid: u32,
    /// Tor's TransPort: other TCP is redirected there.
    pub trans_port: u16,
    /// Tor's DNSPort: DNS is redirected there.
    pub dns_port: u16,
}

/// One remote service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// Its address (IPv4-mapped input is held as IPv4; see [`super::parse_addr`]).
    #[serde(deserialize_with = "super::cidr::deserialize_addr")]
    pub address: IpAddr,
    /// Its transport.
    pub proto: Proto,
    /// Its port.
    pub port: u16,
}

/// A transport with ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

/// The transport an allow rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleProto {
    /// TCP, to `ports`.
    Tcp,
    /// UDP, to `ports`.
    Udp,
    /// ICMP and ICMPv6 (no ports).
    Icmp,
    /// Any transport (no ports).
    Any,
}

/// An outbound allow rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowRule {
    /// Destination address or prefix.
    pub dest: Cidr,
    /// Transport.
    pub proto: RuleProto,
    /// Destination ports (tcp and udp only; at least one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
    /// If set, only these uids match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub uids: Vec<u32>,
    /// If set, only these gids match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gids: Vec<u32>,
}

/// An inbound allow rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboundRule {
    /// Source address or prefix; any source if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Cidr>,
    /// Transport.
    pub proto: Proto,
    /// Local ports (at least one).
    pub ports: Vec<u16>,
}

/// DNS.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dns {
    /// The only addresses port 53 may reach. Empty: no DNS (except Tor's in `tor-only`).
    /// IPv4-mapped input is held as IPv4 (see [`super::parse_addr`]).
    #[serde(default, deserialize_with = "super::cidr::deserialize_addrs")]
    pub resolvers: Vec<IpAddr>,
}

/// What privacy mode forces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Privacy {
    /// The network mode privacy mode switches to (it may only tighten).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_mode: Option<NetworkMode>,
    /// Drop mDNS, SSDP and LLMNR.
    #[serde(default = "yes")]
    pub block_lan_discovery: bool,
    /// Apps refused while privacy mode is on.
    #[serde(default)]
    pub deny_apps: Vec<String>,
    /// Whether a user (not only an admin) may turn privacy mode off.
    #[serde(default)]
    pub user_may_disable: bool,
}

fn yes() -> bool {
    true
}

impl Default for Privacy {
    fn default() -> Self {
        Self {
            network_mode: None,
            block_lan_discovery: true,
            deny_apps: Vec::new(),
            user_may_disable: false,
        }
    }
}

/// Which apps may start; anything not listed is refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Launcher {
    /// The apps.
    #[serde(default)]
    pub apps: Vec<App>,
    /// If set, the only app that may start (outside setup).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kiosk: Option<String>,
}

/// A launchable app, pinned by hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct App {
    /// Its id (`org.enigm.Browser`).
    pub id: String,
    /// Absolute path of the executable.
    pub exec: String,
    /// Lowercase hex SHA-256 of the executable.
    pub sha256: String,
    /// The modes in which it may run.
    pub modes: Vec<AppMode>,
    /// Its Landlock confinement.
    #[serde(default)]
    pub landlock: LandlockProfile,
}

/// A mode an app may run in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AppMode {
    /// Privacy mode off, setup complete.
    Normal,
    /// Privacy mode on.
    Privacy,
    /// Setup incomplete.
    Setup,
}

/// Paths an app may read, write and execute (absolute).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LandlockProfile {
    /// Read-only paths.
    #[serde(default)]
    pub read: Vec<String>,
    /// Read-write paths.
    #[serde(default)]
    pub write: Vec<String>,
    /// Executable paths.
    #[serde(default)]
    pub execute: Vec<String>,
}

/// What holds until setup is complete.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Setup {
    /// Steps that must be completed.
    #[serde(default)]
    pub required_steps: Vec<String>,
    /// The only outbound traffic before setup completes (and in lockdown).
    #[serde(default)]
    pub bootstrap_allow: Vec<AllowRule>,
    /// The only apps before setup completes.
    #[serde(default)]
    pub apps: Vec<String>,
}

fn is_interface_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

fn is_absolute_path(s: &str) -> bool {
    s.starts_with('/') && !s.split('/').any(|c| c == "..") && !s.contains('\0')
}

fn check_rule(r: &AllowRule, where_: &str) -> Result<(), String> {
    match r.proto {
        RuleProto::Tcp | RuleProto::Udp if r.ports.is_empty() => Err(format!(
            "{where_}: a tcp or udp rule to {} needs at least one port",
            r.dest
        )),
        RuleProto::Icmp | RuleProto::Any if !r.ports.is_empty() => Err(format!(
            "{where_}: an icmp or any rule to {} takes no ports",
            r.dest
        )),
        _ if r.ports.contains(&0) => Err(format!("{where_}: port 0 in a rule to {}", r.dest)),
        _ => Ok(()),
    }
}

fn unique<'a>(items: impl IntoIterator<Item = &'a String>, what: &str) -> Result<(), String> {
    let mut seen = HashSet::new();
    for i in items {
        if !seen.insert(i) {
            return Err(format!("{what} {i:?} is listed twice"));
        }
    }
    Ok(())
}

impl Policy {
    /// Checks what the types cannot: references between sections, required sections per
    /// mode, names and paths. The first problem is returned as a sentence.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(m) = &self.max_age {
            for (role, v) in [("policy", m.policy), ("intel", m.intel)] {
                if let Some(v) = v
                    && !(MIN_MAX_AGE_SECS..=MAX_MAX_AGE_SECS).contains(&v)
                {
                    return Err(format!(
                        "max_age.{role} is {v} seconds; it must be from {MIN_MAX_AGE_SECS} to {MAX_MAX_AGE_SECS}"
                    ));
                }
            }
        }
        let n = &self.network;
        let modes = [Some(n.mode), self.privacy.network_mode];
        for mode in modes.into_iter().flatten() {
            match mode {
                NetworkMode::VpnRequired => match &n.vpn {
                    Some(v) if !v.interfaces.is_empty() && !v.endpoints.is_empty() => {}
                    _ => {
                        return Err(
                        "vpn-required (as network.mode or privacy.network_mode) needs network.vpn with at least one interface and one endpoint"
                            .into(),
                    );
                    }
                },
                NetworkMode::ProxyRequired => match &n.proxy {
                    Some(p) if !p.endpoints.is_empty() => {}
                    _ => {
                        return Err(
                        "proxy-required (as network.mode or privacy.network_mode) needs network.proxy with at least one endpoint"
                            .into(),
                    );
                    }
                },
                NetworkMode::TorOnly if n.tor.is_none() => {
                    return Err(
                        "tor-only (as network.mode or privacy.network_mode) needs network.tor"
                            .into(),
                    );
                }
                _ => {}
            }
        }
        if let Some(v) = &n.vpn {
            for i in &v.interfaces {
                if !is_interface_name(i) {
                    return Err(format!(
                        "network.vpn.interfaces: {i:?} is not an interface name"
                    ));
                }
            }
        }
        for e in n
            .vpn
            .iter()
            .flat_map(|v| &v.endpoints)
            .chain(n.proxy.iter().flat_map(|p| &p.endpoints))
        {
            if e.port == 0 {
                return Err(format!("endpoint {} has port 0", e.address));
            }
        }
        if let Some(t) = &n.tor
            && (t.trans_port == 0 || t.dns_port == 0)
        {
            return Err("network.tor: trans_port and dns_port must not be 0".into());
        }
        for r in &n.allow {
            check_rule(r, "network.allow")?;
        }
        for r in &self.setup.bootstrap_allow {
            check_rule(r, "setup.bootstrap_allow")?;
        }
        for r in &n.inbound {
            if r.ports.is_empty() || r.ports.contains(&0) {
                return Err("network.inbound: every rule needs ports, none of them 0".into());
            }
        }
        if self.privacy.network_mode == Some(NetworkMode::Direct) && n.mode != NetworkMode::Direct {
            return Err(format!(
                "privacy.network_mode direct would loosen network.mode {}",
                n.mode.as_str()
            ));
        }

        let apps = &self.launcher.apps;
        unique(apps.iter().map(|a| &a.id), "launcher app")?;
        let ids: HashSet<&str> = apps.iter().map(|a| a.id.as_str()).collect();
        for a in apps {
            if !is_valid_name(&a.id) {
                return Err(format!("launcher app id {:?} is not a valid name", a.id));
            }
            if !is_absolute_path(&a.exec) {
                return Err(format!(
                    "launcher app {}: exec {:?} is not an absolute path",
                    a.id, a.exec
                ));
            }
            if a.sha256.len() != 64
                || !a
                    .sha256
                    .bytes()
                    .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
            {
                return Err(format!(
                    "launcher app {}: sha256 is not 64 lowercase hex digits",
                    a.id
                ));
            }
            if a.modes.is_empty() {
                return Err(format!("launcher app {}: modes is empty", a.id));
            }
            let l = &a.landlock;
            for p in l.read.iter().chain(&l.write).chain(&l.execute) {
                if !is_absolute_path(p) {
                    return Err(format!(
                        "launcher app {}: landlock path {p:?} is not absolute",
                        a.id
                    ));
                }
            }
        }
        if let Some(k) = &self.launcher.kiosk
            && !ids.contains(k.as_str())
        {
            return Err(format!("launcher.kiosk {k:?} is not one of launcher.apps"));
        }
        for (list, what) in [
            (&self.privacy.deny_apps, "privacy.deny_apps"),
            (&self.setup.apps, "setup.apps"),
        ] {
            for id in list {
                if !ids.contains(id.as_str()) {
                    return Err(format!("{what}: {id:?} is not one of launcher.apps"));
                }
            }
        }
        unique(&self.setup.required_steps, "setup step")?;
        for s in &self.setup.required_steps {
            if !is_valid_name(s) {
                return Err(format!("setup step {s:?} is not a valid name"));
            }
        }
        Ok(())
    }
}
