//! The effective policy: a pure function of (verified bundle, privacy mode, setup state,
//! lifecycle). Overlays only remove permissions; whatever is unknown gives lockdown.

use std::collections::BTreeSet;

use super::Lifecycle;
use super::{AllowRule, InboundRule, NetworkMode, Policy, ProxySection, Tor, Vpn};

/// Why the network is in lockdown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockdownReason {
    /// No valid policy has ever been installed (or the last good one no longer verifies).
    NoPolicy,
    /// Required setup steps are pending (names sorted).
    SetupIncomplete(Vec<String>),
    /// The device is suspended, revoked or retired by a signed command.
    Lifecycle(Lifecycle),
    /// The persisted state was lost or corrupt.
    StateUnknown,
}

impl std::fmt::Display for LockdownReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoPolicy => f.write_str("no valid policy installed"),
            Self::SetupIncomplete(steps) => {
                write!(f, "setup incomplete (pending: {})", steps.join(", "))
            }
            Self::Lifecycle(l) => write!(f, "device {}", l.as_str()),
            Self::StateUnknown => f.write_str("device state unknown"),
        }
    }
}

/// What the network must allow, beyond the always-allowed traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkPlan {
    /// Loopback, the always-allowed traffic, and the bootstrap allowlist only.
    Lockdown {
        /// Why.
        reason: LockdownReason,
        /// The policy's bootstrap allowlist (empty without a policy).
        bootstrap: Vec<AllowRule>,
    },
    /// A policy mode.
    Enforce(EffectiveNetwork),
}

/// A policy mode with everything it needs, after overlays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectiveNetwork {
    /// The mode in force (privacy mode may have switched it).
    pub mode: NetworkMode,
    /// Outbound allow rules.
    pub allow: Vec<AllowRule>,
    /// DNS may reach only these.
    pub resolvers: Vec<std::net::IpAddr>,
    /// Local networks reachable.
    pub allow_lan: bool,
    /// Inbound allow rules.
    pub inbound: Vec<InboundRule>,
    /// For vpn-required.
    pub vpn: Option<Vpn>,
    /// For proxy-required.
    pub proxy: Option<ProxySection>,
    /// For tor-only.
    pub tor: Option<Tor>,
}

/// The device-side inputs of the effective policy.
#[derive(Debug, Clone, Copy)]
pub struct Overlay<'a> {
    /// Privacy mode on.
    pub privacy: bool,
    /// Setup steps completed.
    pub completed_steps: &'a BTreeSet<String>,
    /// The lifecycle state.
    pub lifecycle: Lifecycle,
}

/// The effective policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effective {
    /// The network plan.
    pub network: NetworkPlan,
    /// Drop mDNS, SSDP and LLMNR (privacy mode, in every plan).
    pub block_lan_discovery: bool,
    /// Required setup steps not yet completed (sorted).
    pub pending_steps: Vec<String>,
}

impl Effective {
    /// The mode name as posture shows it (`lockdown` or the policy mode).
    pub fn mode_name(&self) -> &'static str {
        match &self.network {
            NetworkPlan::Lockdown { .. } => "lockdown",
            NetworkPlan::Enforce(n) => n.mode.as_str(),
        }
    }
}

/// Compute the effective policy. `policy` is the last good verified policy, if any.
pub fn effective(policy: Option<&Policy>, overlay: Overlay<'_>) -> Effective {
    let pending_steps: Vec<String> = policy
        .map(|p| {
            p.setup
                .required_steps
                .iter()
                .filter(|s| !overlay.completed_steps.contains(*s))
                .cloned()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect()
        })
        .unwrap_or_default();
    let block_lan_discovery =
        overlay.privacy && policy.is_none_or(|p| p.privacy.block_lan_discovery);
    let bootstrap = || {
        policy
            .map(|p| p.setup.bootstrap_allow.clone())
            .unwrap_or_default()
    };
    let lockdown = |reason| NetworkPlan::Lockdown {
        reason,
        bootstrap: bootstrap(),
    };

    let network = match (overlay.lifecycle, policy) {
        (Lifecycle::Unknown, _) => lockdown(LockdownReason::StateUnknown),
        (l @ (Lifecycle::Suspended | Lifecycle::Revoked | Lifecycle::Retired), _) => {
            lockdown(LockdownReason::Lifecycle(l))
        }
        (_, None) => lockdown(LockdownReason::NoPolicy),
        (_, Some(_)) if !pending_steps.is_empty() => {
            lockdown(LockdownReason::SetupIncomplete(pending_steps.clone()))
        }
        (Lifecycle::Unenrolled | Lifecycle::Enrolled, Some(p)) => {
            let n = &p.network;
            let mode = match (overlay.privacy, p.privacy.network_mode) {
                (true, Some(m)) => m,
                _ => n.mode,
            };
            NetworkPlan::Enforce(EffectiveNetwork {
                mode,
                allow: n.allow.clone(),
                resolvers: n.dns.resolvers.clone(),
                allow_lan: n.allow_lan,
                inbound: n.inbound.clone(),
                vpn: n.vpn.clone(),
                proxy: n.proxy.clone(),
                tor: n.tor.clone(),
            })
        }
    };
    Effective {
        network,
        block_lan_discovery,
        pending_steps,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(extra: serde_json::Value) -> Policy {
        let mut v = serde_json::json!({
            "schema": "enigm.policy/v1", "serial": 1,
            "issued_at": "2026-01-01T00:00:00Z", "expires_at": "2036-01-01T00:00:00Z",
            "network": {"mode": "direct", "allow": [{"dest": "203.0.113.0/24", "proto": "tcp", "ports": [443]}],
                        "tor": {"uid": 107, "trans_port": 9040, "dns_port": 5353}},
            "privacy": {"network_mode": "tor-only"},
            "setup": {"required_steps": ["eula", "wifi"],
                      "bootstrap_allow": [{"dest": "198.51.100.10", "proto": "tcp", "ports": [443]}]}
        });
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            for (k, val) in e {
                o.insert(k.clone(), val.clone());
            }
        }
        serde_json::from_value(v).expect("policy")
    }

    fn done(steps: &[&str]) -> BTreeSet<String> {
        steps.iter().map(|s| s.to_string()).collect()
    }

    fn overlay(privacy: bool, steps: &BTreeSet<String>, lifecycle: Lifecycle) -> Overlay<'_> {
        Overlay {
            privacy,
            completed_steps: steps,
            lifecycle,
        }
    }

    #[test]
    fn no_policy_or_unknown_state_or_locked_lifecycle_is_lockdown() {
        let p = policy(serde_json::json!({}));
        let all = done(&["eula", "wifi"]);
        let e = effective(None, overlay(false, &all, Lifecycle::Enrolled));
        assert_eq!(
            e.network,
            NetworkPlan::Lockdown {
                reason: LockdownReason::NoPolicy,
                bootstrap: vec![]
            }
        );
        for l in [
            Lifecycle::Unknown,
            Lifecycle::Suspended,
            Lifecycle::Revoked,
            Lifecycle::Retired,
        ] {
            let e = effective(Some(&p), overlay(false, &all, l));
            let NetworkPlan::Lockdown { bootstrap, .. } = &e.network else {
                panic!("{l:?} is not lockdown");
            };
            assert_eq!(
                bootstrap, &p.setup.bootstrap_allow,
                "{l:?} keeps the management endpoints"
            );
        }
    }

    #[test]
    fn setup_incomplete_is_bootstrap_only_and_names_the_pending_steps() {
        let p = policy(serde_json::json!({}));
        let some = done(&["wifi"]);
        let e = effective(Some(&p), overlay(false, &some, Lifecycle::Enrolled));
        assert_eq!(e.pending_steps, ["eula"]);
        assert_eq!(e.mode_name(), "lockdown");
        let all = done(&["eula", "wifi", "extra"]);
        let e = effective(Some(&p), overlay(false, &all, Lifecycle::Enrolled));
        assert_eq!(e.mode_name(), "direct");
    }

    #[test]
    fn privacy_switches_to_its_mode_and_blocks_discovery_and_never_opens() {
        let p = policy(serde_json::json!({}));
        let all = done(&["eula", "wifi"]);
        let e = effective(Some(&p), overlay(true, &all, Lifecycle::Enrolled));
        assert_eq!(e.mode_name(), "tor-only");
        assert!(e.block_lan_discovery);
        let off = effective(Some(&p), overlay(false, &all, Lifecycle::Enrolled));
        assert!(!off.block_lan_discovery);
        // In lockdown privacy still blocks discovery, and lockdown stays lockdown.
        let e = effective(Some(&p), overlay(true, &all, Lifecycle::Suspended));
        assert_eq!(e.mode_name(), "lockdown");
        assert!(e.block_lan_discovery);
    }
}
