//! Posture: what the Trust Security Center shows, computed from the daemon's state (pure).
//!
//! A level (`trusted`, `degraded`, `untrusted`) and the reasons for it, each a sentence a
//! person can act on, plus the facts the UI displays. The D-Bus adapter publishes each field
//! as a property of `org.enigm.Trust1.Posture`.

use crate::policy::{Effective, LockdownReason, NetworkPlan};
use crate::state::{Condition, DeviceState, Lifecycle};
use crate::timefmt::Timestamp;

/// How far the device can be trusted right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Policy in force, confirmed in the kernel, nothing amiss.
    Trusted,
    /// Enforcing, but something needs attention.
    Degraded,
    /// The device is not enforcing what its admin intends, or cannot show that it is.
    Untrusted,
}

impl Level {
    /// The name on the bus.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Trusted => "trusted",
            Self::Degraded => "degraded",
            Self::Untrusted => "untrusted",
        }
    }
}

/// What the kernel holds, as far as the daemon has confirmed it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Enforcement {
    /// Nothing confirmed yet (the static lockdown of early boot may be in place).
    #[default]
    Unconfirmed,
    /// The effective policy (which may itself be lockdown) is in the kernel, read back.
    Enforced {
        /// Digest of the ruleset read back.
        digest: String,
    },
    /// The effective policy could not be applied; lockdown is in the kernel instead.
    Fallback {
        /// Digest of the lockdown ruleset read back.
        digest: String,
        /// Why the effective policy failed.
        why: String,
    },
    /// Nothing could be applied; whatever was in the kernel before stays.
    Failed {
        /// Why.
        why: String,
    },
}

impl Enforcement {
    /// The name on the bus: `enforced`, `fallback-lockdown`, `failed`, `unconfirmed`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Unconfirmed => "unconfirmed",
            Self::Enforced { .. } => "enforced",
            Self::Fallback { .. } => "fallback-lockdown",
            Self::Failed { .. } => "failed",
        }
    }

    /// Digest of the ruleset confirmed in the kernel, or empty.
    pub fn digest(&self) -> &str {
        match self {
            Self::Enforced { digest } | Self::Fallback { digest, .. } => digest,
            Self::Unconfirmed | Self::Failed { .. } => "",
        }
    }
}

/// The last-good policy, as posture shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyInfo {
    /// Its serial.
    pub serial: u64,
    /// SHA-256 of its envelope.
    pub digest: String,
    /// Its expiry.
    pub expires_at: Timestamp,
}

/// Everything posture is computed from.
#[derive(Debug, Clone)]
pub struct Input<'a> {
    /// The state in force.
    pub state: &'a DeviceState,
    /// How it was loaded.
    pub condition: &'a Condition,
    /// The effective policy.
    pub effective: &'a Effective,
    /// The last-good policy.
    pub policy: Option<PolicyInfo>,
    /// Now.
    pub now: Timestamp,
    /// What the kernel holds.
    pub enforcement: &'a Enforcement,
    /// The network as a person reads it (`vpn-required: tunnel down, blocking`).
    pub network_status: &'a str,
    /// Whether traffic is blocked because the policy's tunnel is down.
    pub tunnel_down: bool,
    /// Drift found (and repaired) since the daemon started: how often, and the last.
    pub drift: Option<(u64, &'a str)>,
    /// Why the blocklists are not in force, if they are not.
    pub intel_failure: Option<&'a str>,
    /// Why the last check could not read the kernel's ruleset back (nft failed, hung or is
    /// missing), until a read-back works again.
    pub check_failure: Option<&'a str>,
    /// Blocklist entries that overlap protected destinations (loopback, policy-named
    /// endpoints) and are not applied there, as a sentence with counts by kind.
    pub intel_overlaps: Option<&'a str>,
    /// Problems the audit log's check found.
    pub audit_problems: &'a [String],
    /// Damage records of the audit log no admin has acknowledged: (seq, reason).
    pub audit_damage: &'a [(u64, String)],
    /// Records in the audit log, and the hash of the last.
    pub audit_head: (u64, String),
    /// The kernel's Landlock ABI (0: unavailable).
    pub landlock_abi: u32,
    /// Stale installed inputs and doubts about the wall clock, each a sentence
    /// ([`crate::freshness::Assessment::reasons`]); each makes the device `degraded`.
    pub freshness: &'a [String],
    /// How trustd itself is confined (`Landlock ABI 2: partially enforced`), if it is.
    pub confinement: Option<&'a str>,
    /// Why the local configuration (`trustd.json`) could not be read, if it could not.
    pub config_fault: Option<&'a str>,
    /// Storage that fails to take writes (the audit log, the state directory), one
    /// sentence each: which store, path, errno, since when.
    pub storage: &'a [String],
}

/// The posture snapshot. Field for field the properties of `org.enigm.Trust1.Posture`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Posture {
    /// `trusted`, `degraded` or `untrusted`.
    pub level: Level,
    /// Why the level is not `trusted`, worst first.
    pub reasons: Vec<String>,
    /// What the kernel holds: see [`Enforcement::as_str`].
    pub enforcement: String,
    /// `lockdown` or the policy mode in force.
    pub network_mode: String,
    /// Privacy mode.
    pub privacy_mode: bool,
    /// Serial of the last-good policy (0: none).
    pub policy_serial: u64,
    /// SHA-256 of the last-good policy envelope, or empty.
    pub policy_digest: String,
    /// Digest of the ruleset confirmed in the kernel, or empty.
    pub ruleset_digest: String,
    /// Every required setup step is complete.
    pub setup_complete: bool,
    /// The required steps not yet complete.
    pub pending_setup_steps: Vec<String>,
    /// The lifecycle state.
    pub lifecycle: String,
    /// Records in the audit log and the hash of the last one.
    pub audit_head: (u64, String),
    /// How trustd itself is confined: `Landlock ABI N: fully enforced` (or `partially`,
    /// `not enforced`), or `not confined`.
    pub confinement: String,
    /// What signs the device's evidence, as the reports' `signer` says it (`tpm` or
    /// `software-key-only`), and a sentence saying why. Informational: a device without a
    /// TPM is not less trusted for it (a TPM configured but not in use is a reason).
    pub evidence: (String, String),
}

/// [`Posture::evidence`] of a device without a TPM.
pub fn software_evidence(why: &str) -> (String, String) {
    (
        crate::report::SIGNER_SOFTWARE.to_owned(),
        format!(
            "{why}: reports and checkpoints are signed by the device's software key only, which root on the device can read"
        ),
    )
}

/// `s` cut to at most `max` characters (with an ellipsis when cut).
fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// Compute the posture.
pub fn posture(i: &Input<'_>) -> Posture {
    let mut reasons: Vec<(Level, String)> = Vec::new();
    let mut add = |l: Level, r: String| reasons.push((l, r));
    use Level::{Degraded, Untrusted};

    match i.condition {
        Condition::Corrupt(why) => add(
            Untrusted,
            format!("device state was corrupt ({why}): the most restrictive state is in force"),
        ),
        Condition::Missing => add(
            Untrusted,
            "device state was lost: the most restrictive state is in force".into(),
        ),
        Condition::Fresh | Condition::Loaded => {}
    }
    match i.enforcement {
        Enforcement::Unconfirmed => add(Untrusted, "enforcement not confirmed yet".into()),
        Enforcement::Failed { why } => add(
            Untrusted,
            format!("enforcement failed ({why}): the ruleset already in the kernel stays"),
        ),
        Enforcement::Fallback { why, .. } => add(
            Untrusted,
            format!("the policy could not be enforced ({why}): lockdown is in force"),
        ),
        Enforcement::Enforced { .. } => {}
    }
    if let NetworkPlan::Lockdown { reason, .. } = &i.effective.network {
        match reason {
            LockdownReason::NoPolicy => {
                add(Untrusted, "no valid policy installed: lockdown".into());
            }
            LockdownReason::StateUnknown | LockdownReason::Lifecycle(_) => {}
            LockdownReason::SetupIncomplete(_) => {}
        }
    }
    if !i.audit_damage.is_empty() {
        let which: Vec<String> = i
            .audit_damage
            .iter()
            .map(|(seq, why)| format!("record {seq}: {}", clip(why, 240)))
            .collect();
        add(
            Untrusted,
            format!(
                "audit log damage recorded and not yet acknowledged by an admin (`trustctl audit acknowledge`): {}",
                which.join("; ")
            ),
        );
    }
    if !i.audit_problems.is_empty() {
        add(
            Untrusted,
            format!("audit chain broken: {}", i.audit_problems.join("; ")),
        );
    }
    match i.state.lifecycle {
        Lifecycle::Enrolled => {}
        Lifecycle::Unenrolled => add(Degraded, "device not enrolled".into()),
        Lifecycle::Suspended => add(Untrusted, "device suspended: lockdown".into()),
        Lifecycle::Revoked => add(Untrusted, "device revoked: lockdown".into()),
        Lifecycle::Retired => add(Untrusted, "device retired".into()),
        Lifecycle::Unknown => add(
            Untrusted,
            "lifecycle unknown until a signed command sets it".into(),
        ),
    }
    // Expiry and max_age of the installed inputs, and the clock itself: never a reason to
    // take anything out of force, always one to say so.
    for r in i.freshness {
        add(Degraded, r.clone());
    }
    if !i.effective.pending_steps.is_empty() {
        add(
            Degraded,
            format!(
                "setup incomplete (pending: {}): bootstrap network only",
                i.effective.pending_steps.join(", ")
            ),
        );
    }
    if i.tunnel_down {
        add(Degraded, i.network_status.to_owned());
    }
    if let Some((n, last)) = i.drift {
        add(
            Degraded,
            format!("enforcement drift repaired {n} time(s) since start; last: {last}"),
        );
    }
    if let Some(why) = i.check_failure {
        add(Untrusted, format!("enforcement not confirmed: {why}"));
    }
    if let Some(why) = i.intel_failure {
        add(Degraded, format!("blocklists not in force: {why}"));
    }
    if let Some(overlaps) = i.intel_overlaps {
        add(Degraded, overlaps.to_owned());
    }
    if let Some(why) = i.config_fault {
        add(
            Degraded,
            format!(
                "configuration not read ({why}): no group gains a role until it is fixed and reloaded"
            ),
        );
    }
    for fault in i.storage {
        add(Degraded, format!("storage failing: {fault}"));
    }
    if i.landlock_abi == 0 {
        add(Degraded, "Landlock unavailable in this kernel".into());
    }
    match i.confinement {
        None => add(Degraded, "trustd is not confined (Landlock)".into()),
        Some(c) if c.ends_with("not enforced") => {
            add(
                Degraded,
                format!("trustd's confinement is not in force ({c})"),
            );
        }
        Some(_) => {}
    }

    reasons.sort_by_key(|r| std::cmp::Reverse(r.0));
    let level = reasons.first().map_or(Level::Trusted, |r| r.0);
    Posture {
        level,
        reasons: reasons.into_iter().map(|r| r.1).collect(),
        enforcement: i.enforcement.as_str().to_owned(),
        network_mode: i.effective.mode_name().to_owned(),
        privacy_mode: i.state.privacy_mode,
        policy_serial: i.policy.as_ref().map_or(0, |p| p.serial),
        policy_digest: i
            .policy
            .as_ref()
            .map(|p| p.digest.clone())
            .unwrap_or_default(),
        ruleset_digest: i.enforcement.digest().to_owned(),
        setup_complete: i.effective.pending_steps.is_empty(),
        pending_setup_steps: i.effective.pending_steps.clone(),
        lifecycle: i.state.lifecycle.as_str().to_owned(),
        audit_head: i.audit_head.clone(),
        confinement: i.confinement.unwrap_or("not confined").to_owned(),
        // The device sets what its TPM signs (`Device::posture`).
        evidence: software_evidence("no TPM is configured"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Overlay, Policy, effective};
    use std::collections::BTreeSet;

    fn policy(required: &[&str]) -> Policy {
        let mut p: Policy = serde_json::from_value(serde_json::json!({
            "schema": "enigm.policy/v1", "serial": 7,
            "issued_at": "2026-01-01T00:00:00Z", "expires_at": "2027-01-01T00:00:00Z",
            "network": {"mode": "direct", "allow": [{"dest": "192.0.2.0/24", "proto": "tcp", "ports": [443]}]}
        }))
        .expect("policy");
        p.setup.required_steps = required.iter().map(|s| (*s).to_owned()).collect();
        p
    }

    struct Case {
        state: DeviceState,
        condition: Condition,
        policy: Option<Policy>,
        now: &'static str,
        enforcement: Enforcement,
        tunnel_down: bool,
        drift: Option<(u64, &'static str)>,
        audit_problems: Vec<String>,
        audit_damage: Vec<(u64, String)>,
        landlock_abi: u32,
        confinement: Option<&'static str>,
        config_fault: Option<&'static str>,
        storage: Vec<String>,
    }

    impl Case {
        fn good() -> Self {
            let mut state = DeviceState::initial();
            state.lifecycle = Lifecycle::Enrolled;
            Self {
                state,
                condition: Condition::Loaded,
                policy: Some(policy(&[])),
                now: "2026-06-01T00:00:00Z",
                enforcement: Enforcement::Enforced {
                    digest: "abc".into(),
                },
                tunnel_down: false,
                drift: None,
                audit_problems: vec![],
                audit_damage: vec![],
                landlock_abi: 4,
                confinement: Some("Landlock ABI 4: fully enforced"),
                config_fault: None,
                storage: vec![],
            }
        }

        fn run(&self) -> Posture {
            let steps: BTreeSet<String> = self.state.completed_steps.clone();
            let eff = effective(
                self.policy.as_ref(),
                Overlay {
                    privacy: self.state.privacy_mode,
                    completed_steps: &steps,
                    lifecycle: self.state.lifecycle,
                },
            );
            let held: Vec<crate::freshness::Held> = self
                .policy
                .iter()
                .map(|p| crate::freshness::Held {
                    role: crate::bundle::Role::Policy,
                    serial: p.serial,
                    digest: "d".into(),
                    issued_at: p.issued_at,
                    expires_at: p.expires_at,
                    max_age: None,
                })
                .collect();
            let now = Timestamp::parse(self.now).expect("time");
            let build = Timestamp::parse("2026-01-01T00:00:00Z").expect("time");
            let freshness = crate::freshness::assess(now, &held, build).reasons();
            posture(&Input {
                state: &self.state,
                condition: &self.condition,
                effective: &eff,
                policy: self.policy.as_ref().map(|p| PolicyInfo {
                    serial: p.serial,
                    digest: "d".into(),
                    expires_at: p.expires_at,
                }),
                now: Timestamp::parse(self.now).expect("time"),
                enforcement: &self.enforcement,
                network_status: "vpn-required: tunnel down, blocking",
                tunnel_down: self.tunnel_down,
                drift: self.drift,
                intel_failure: None,
                check_failure: None,
                intel_overlaps: None,
                audit_problems: &self.audit_problems,
                audit_damage: &self.audit_damage,
                audit_head: (3, "h".into()),
                landlock_abi: self.landlock_abi,
                freshness: &freshness,
                confinement: self.confinement,
                config_fault: self.config_fault,
                storage: &self.storage,
            })
        }
    }

    #[test]
    fn a_good_device_is_trusted() {
        let p = Case::good().run();
        assert_eq!(p.level, Level::Trusted, "{:?}", p.reasons);
        assert!(p.reasons.is_empty());
        assert_eq!(p.enforcement, "enforced");
        assert_eq!(p.network_mode, "direct");
        assert_eq!(p.ruleset_digest, "abc");
        assert_eq!(p.policy_serial, 7);
        assert!(p.setup_complete);
    }

    #[test]
    fn each_reason_sets_its_level() {
        type Tweak = fn(&mut Case);
        let cases: [(Tweak, Level, &str); 16] = [
            (
                |c| c.config_fault = Some("line 3: unknown field `tmp`"),
                Level::Degraded,
                "configuration not read (line 3: unknown field `tmp`): no group gains a role",
            ),
            (
                |c| {
                    c.storage =
                        vec!["audit log /a: ENOSPC (full) since 2026-06-01T00:00:00Z".into()]
                },
                Level::Degraded,
                "storage failing: audit log /a: ENOSPC",
            ),
            (
                |c| c.policy = None,
                Level::Untrusted,
                "no valid policy installed",
            ),
            (
                |c| c.condition = Condition::Corrupt("bad json".into()),
                Level::Untrusted,
                "device state was corrupt (bad json)",
            ),
            (
                |c| c.enforcement = Enforcement::Unconfirmed,
                Level::Untrusted,
                "enforcement not confirmed",
            ),
            (
                |c| {
                    c.enforcement = Enforcement::Fallback {
                        digest: "l".into(),
                        why: "nft failed".into(),
                    }
                },
                Level::Untrusted,
                "could not be enforced (nft failed): lockdown",
            ),
            (
                |c| c.audit_problems = vec!["record 4: hash mismatch".into()],
                Level::Untrusted,
                "audit chain broken: record 4",
            ),
            (
                |c| c.audit_damage = vec![(9, "[head-removed] the head file was removed".into())],
                Level::Untrusted,
                "audit log damage recorded and not yet acknowledged by an admin (`trustctl audit acknowledge`): record 9: [head-removed]",
            ),
            (
                |c| c.state.lifecycle = Lifecycle::Revoked,
                Level::Untrusted,
                "device revoked",
            ),
            (
                |c| c.now = "2027-02-01T00:00:00Z",
                Level::Degraded,
                "policy serial 7 expired at 2027-01-01T00:00:00Z",
            ),
            (
                |c| c.now = "1970-01-01T00:00:00Z",
                Level::Degraded,
                "the clock is implausible: it reads 1970-01-01T00:00:00Z",
            ),
            (
                |c| c.policy = Some(policy(&["eula", "wifi"])),
                Level::Degraded,
                "setup incomplete (pending: eula, wifi)",
            ),
            (
                |c| c.tunnel_down = true,
                Level::Degraded,
                "tunnel down, blocking",
            ),
            (
                |c| c.drift = Some((2, "table removed")),
                Level::Degraded,
                "drift repaired 2 time(s) since start; last: table removed",
            ),
            (
                |c| c.landlock_abi = 0,
                Level::Degraded,
                "Landlock unavailable",
            ),
            (
                |c| c.confinement = None,
                Level::Degraded,
                "trustd is not confined",
            ),
        ];
        for (tweak, level, reason) in cases {
            let mut c = Case::good();
            tweak(&mut c);
            let p = c.run();
            assert_eq!(p.level, level, "{reason}: {:?}", p.reasons);
            assert!(
                p.reasons.iter().any(|r| r.contains(reason)),
                "{reason} not in {:?}",
                p.reasons
            );
        }
    }

    #[test]
    fn worst_reason_first_and_setup_fields() {
        let mut c = Case::good();
        c.landlock_abi = 0;
        c.audit_problems = vec!["gap".into()];
        c.policy = Some(policy(&["eula"]));
        let p = c.run();
        assert_eq!(p.level, Level::Untrusted);
        assert!(
            p.reasons[0].starts_with("audit chain broken"),
            "{:?}",
            p.reasons
        );
        assert!(!p.setup_complete);
        assert_eq!(p.pending_setup_steps, vec!["eula".to_owned()]);
        assert_eq!(p.network_mode, "lockdown");
    }
}
