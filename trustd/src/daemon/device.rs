//! Transitions on the device state, each audited.

use crate::Paths;
use crate::audit::{Actor, AuditError, AuditLog, Entry, Options, Outcome};
use crate::bundle::{
    Payload, TrustRoot, Verified, VerifyError, sha256_hex, verify, verify_rotation,
};
use crate::netfilter::{
    self, Backend, EnforceError, IntelRuleset, Ruleset, apply_intel, canonical_digest, compile,
    compile_intel, intel_chains_intact, update_intel,
};
use crate::policy::{Effective, LockdownReason, NetworkMode, NetworkPlan, Overlay, effective};
use crate::policy::{IntelFeed, Policy};
use crate::state::store::StateLock;
use crate::state::{Condition, DeviceState, Loaded, StateError, StateStore, load_trust_root};
use crate::sys::netlink::{LinkEvent, LinkState};
use crate::timefmt::Timestamp;
use std::collections::BTreeMap;

/// Why a command did not take effect. In every case the previous state stays in force.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The input was refused (and the refusal audited).
    #[error("refused: {0}")]
    Refused(#[from] VerifyError),
    /// The state directory failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// The audit log failed: nothing is changed without a record.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// No ruleset could be put in the kernel; the one already there stays.
    #[error(transparent)]
    Enforce(#[from] EnforceError),
}

/// What `enforce` put in the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enforced {
    /// `lockdown` or the policy mode.
    pub mode: &'static str,
    /// Digest of the ruleset, as read back.
    pub digest: String,
    /// Set when the effective policy could not be applied and lockdown was put in place.
    pub fallback: Option<String>,
}

fn lockdown_reason(e: &Effective) -> String {
    match &e.network {
        NetworkPlan::Lockdown { reason, .. } => reason.to_string(),
        NetworkPlan::Enforce(_) => format!("policy mode {}", e.mode_name()),
    }
}

/// What an accepted input changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The role's serial before.
    pub from_serial: u64,
    /// The role's serial now.
    pub to_serial: u64,
    /// SHA-256 of the accepted envelope.
    pub digest: String,
    /// The audit record of the change.
    pub audit_seq: u64,
}

/// The device's state and its audit log, opened for writing.
#[derive(Debug)]
pub struct Device {
    store: StateStore,
    root: TrustRoot,
    audit: AuditLog,
    state: DeviceState,
    policy: Option<Verified<Policy>>,
    intel: Option<Verified<IntelFeed>>,
    condition: Condition,
    notes: Vec<String>,
    enforced: Option<String>,
    enforced_rs: Option<Ruleset>,
    enforced_intel: Option<IntelRuleset>,
    links: BTreeMap<String, bool>,
    _lock: StateLock,
}

impl Device {
    /// Lock the state directory, open the audit log, load the state (never failing on bad
    /// state: it loads as most restrictive) and record the load.
    pub fn open(paths: &Paths, actor: Actor) -> Result<Self, DeviceError> {
        let store = StateStore::new(paths.clone());
        let lock = store.lock()?;
        let (audit, _report) = AuditLog::open(&paths.audit_dir(), Options::default())?;
        let root = match load_trust_root(paths) {
            Ok(r) => r,
            Err(e) => {
                audit.append(
                    Entry::new("trust-root.load", Outcome::Error, actor).reason(e.to_string()),
                )?;
                return Err(e.into());
            }
        };
        let Loaded {
            state,
            condition,
            policy,
            intel,
            notes,
        } = store.load(&root);
        let outcome = match condition {
            Condition::Fresh | Condition::Loaded => Outcome::Ok,
            Condition::Missing | Condition::Corrupt(_) => Outcome::Error,
        };
        let mut entry = Entry::new("state.load", outcome, actor)
            .transition("stopped", format!("lifecycle {}", state.lifecycle.as_str()));
        if !notes.is_empty() {
            entry = entry.reason(notes.join("; "));
        }
        if let Some(p) = &policy {
            entry = entry.digest("policy", p.digest());
        }
        audit.append(entry)?;
        Ok(Self {
            store,
            root,
            audit,
            state,
            policy,
            intel,
            condition,
            notes,
            enforced: None,
            enforced_rs: None,
            enforced_intel: None,
            links: BTreeMap::new(),
            _lock: lock,
        })
    }

    /// The state in force.
    pub fn state(&self) -> &DeviceState {
        &self.state
    }

    /// How the persisted state was found at open.
    pub fn condition(&self) -> &Condition {
        &self.condition
    }

    /// What a person should know about the load.
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// The last-good policy.
    pub fn policy(&self) -> Option<&Verified<Policy>> {
        self.policy.as_ref()
    }

    /// The last-good intel feed.
    pub fn intel(&self) -> Option<&Verified<IntelFeed>> {
        self.intel.as_ref()
    }

    /// The trust root in force.
    pub fn trust_root(&self) -> &TrustRoot {
        &self.root
    }

    /// The audit log.
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// The effective policy of the state in force.
    pub fn effective(&self) -> Effective {
        effective(
            self.policy.as_ref().map(Verified::payload),
            Overlay {
                privacy: self.state.privacy_mode,
                completed_steps: &self.state.completed_steps,
                lifecycle: self.state.lifecycle,
            },
        )
    }

    /// Put the effective policy into the kernel and confirm it by read-back. If that fails,
    /// put lockdown (with the bootstrap allowlist) in place instead; if even that fails, the
    /// ruleset already in the kernel stays: nothing here removes enforcement. Every outcome is
    /// audited.
    pub fn enforce(
        &mut self,
        backend: &mut dyn Backend,
        actor: Actor,
    ) -> Result<Enforced, DeviceError> {
        let eff = self.effective();
        let rs = compile(&eff);
        let mode = eff.mode_name();
        match netfilter::apply(backend, &rs) {
            Ok(digest) => {
                self.audit.append(
                    Entry::new("network.apply", Outcome::Ok, actor)
                        .transition(
                            self.enforced.clone().unwrap_or_else(|| "unknown".into()),
                            mode,
                        )
                        .reason(lockdown_reason(&eff))
                        .digest("ruleset", digest.clone()),
                )?;
                self.enforced = Some(mode.to_owned());
                self.enforced_rs = Some(rs);
                Ok(Enforced {
                    mode,
                    digest,
                    fallback: None,
                })
            }
            Err(e) => {
                self.audit.append(
                    Entry::new("network.apply", Outcome::Error, actor.clone())
                        .reason(format!("{mode} not in force: {e}"))
                        .digest("ruleset", canonical_digest(&rs)),
                )?;
                let lock = compile(&Effective {
                    network: NetworkPlan::Lockdown {
                        reason: LockdownReason::StateUnknown,
                        bootstrap: self
                            .policy
                            .as_ref()
                            .map(|p| p.payload().setup.bootstrap_allow.clone())
                            .unwrap_or_default(),
                    },
                    block_lan_discovery: true,
                    pending_steps: eff.pending_steps.clone(),
                });
                match netfilter::apply(backend, &lock) {
                    Ok(digest) => {
                        self.audit.append(
                            Entry::new("network.apply", Outcome::Ok, actor)
                                .transition(mode, "lockdown")
                                .reason(format!("fell back to lockdown: {e}"))
                                .digest("ruleset", digest.clone()),
                        )?;
                        self.enforced = Some("lockdown".into());
                        self.enforced_rs = Some(lock);
                        Ok(Enforced {
                            mode: "lockdown",
                            digest,
                            fallback: Some(e.to_string()),
                        })
                    }
                    Err(e2) => {
                        self.audit.append(
                            Entry::new("network.apply", Outcome::Error, actor)
                                .reason(format!("lockdown not in force either: {e2}; the ruleset in the kernel stays")),
                        )?;
                        Err(DeviceError::Enforce(e2))
                    }
                }
            }
        }
    }

    /// Put the last-good intel feed's blocklists into their own table: element additions
    /// when only that changed, else one transaction replacing the table, verified by a full
    /// read-back. A failure keeps the previous blocklists and is audited; it never touches
    /// the policy table.
    pub fn enforce_intel(
        &mut self,
        backend: &mut dyn Backend,
        actor: Actor,
    ) -> Result<usize, DeviceError> {
        let rs = compile_intel(self.intel.as_ref().map(Verified::payload));
        let mut entry = Entry::new("intel.enforce", Outcome::Ok, actor.clone());
        for c in &rs.categories {
            entry = entry.digest(
                format!("count.{}", c.name),
                rs.category_len(&c.name).to_string(),
            );
        }
        let incremental = match &self.enforced_intel {
            Some(old) => update_intel(backend, old, &rs).map_err(EnforceError::Apply),
            None => Ok(false),
        };
        let result = match incremental {
            Ok(true) => Ok("updated"),
            Ok(false) => apply_intel(backend, &rs).map(|()| "replaced"),
            Err(e) => Err(e),
        };
        match result {
            Ok(how) => {
                self.audit
                    .append(entry.reason(format!("{} entries, table {how}", rs.len())))?;
                let n = rs.len();
                self.enforced_intel = Some(rs);
                Ok(n)
            }
            Err(e) => {
                self.audit
                    .append(
                        Entry::new("intel.enforce", Outcome::Error, actor).reason(format!(
                            "blocklists not updated: {e}; the previous ones stay"
                        )),
                    )?;
                Err(e.into())
            }
        }
    }

    /// The links as they are now (at start, from a netlink dump; not audited).
    pub fn set_links(&mut self, links: &[LinkState]) {
        self.links = links.iter().map(|l| (l.name.clone(), l.up)).collect();
    }

    fn tunnel_up(&self) -> Option<String> {
        let eff = self.effective();
        let NetworkPlan::Enforce(n) = &eff.network else {
            return None;
        };
        n.vpn
            .as_ref()?
            .interfaces
            .iter()
            .find(|i| self.links.get(*i) == Some(&true))
            .cloned()
    }

    /// What the network is doing, as a person reads it: `direct`, `lockdown: setup
    /// incomplete (pending: eula)`, `vpn-required: tunnel wg0 up`, `vpn-required: tunnel
    /// down, blocking`.
    pub fn network_status(&self) -> String {
        let eff = self.effective();
        match &eff.network {
            NetworkPlan::Lockdown { reason, .. } => format!("lockdown: {reason}"),
            NetworkPlan::Enforce(n) if n.mode == NetworkMode::VpnRequired => match self.tunnel_up()
            {
                Some(t) => format!("vpn-required: tunnel {t} up"),
                None => "vpn-required: tunnel down, blocking".to_owned(),
            },
            NetworkPlan::Enforce(n) => n.mode.as_str().to_owned(),
        }
    }

    /// Apply link changes the kernel reported; a change of the network status (a tunnel
    /// going down or up in vpn-required) is audited. Returns the new status if it changed.
    pub fn links_changed(
        &mut self,
        events: &[LinkEvent],
        actor: Actor,
    ) -> Result<Option<String>, DeviceError> {
        let before = self.network_status();
        for e in events {
            match e {
                LinkEvent::Present(l) => {
                    self.links.insert(l.name.clone(), l.up);
                }
                LinkEvent::Removed(name) => {
                    self.links.remove(name);
                }
            }
        }
        let after = self.network_status();
        if after == before {
            return Ok(None);
        }
        self.audit.append(
            Entry::new("network.status", Outcome::Ok, actor).transition(before, after.clone()),
        )?;
        Ok(Some(after))
    }

    /// Check that the kernel still holds the ruleset last enforced; if someone removed or
    /// edited it, audit the drift and put it back. Returns the drift found, if any.
    pub fn check_drift(
        &mut self,
        backend: &mut dyn Backend,
        actor: Actor,
    ) -> Result<Option<String>, DeviceError> {
        let mut found = None;
        if let Some(rs) = &self.enforced_rs
            && let Err(e) = netfilter::verify(backend, rs)
        {
            let what = e.to_string();
            self.audit.append(
                Entry::new("network.drift", Outcome::Error, actor.clone())
                    .reason(format!("{what}; restoring"))
                    .digest("ruleset", canonical_digest(rs)),
            )?;
            self.enforce(backend, actor.clone())?;
            found = Some(what);
        }
        if let Some(rs) = &self.enforced_intel
            && !intel_chains_intact(backend, rs).unwrap_or(false)
        {
            let what = "the blocklist table was removed or its rules edited".to_owned();
            self.audit.append(
                Entry::new("intel.drift", Outcome::Error, actor.clone())
                    .reason(format!("{what}; restoring")),
            )?;
            self.enforced_intel = None;
            self.enforce_intel(backend, actor)?;
            found = Some(what);
        }
        Ok(found)
    }

    /// Turn privacy mode on or off (who may is the caller's decision), persisted and audited.
    /// The network follows on the next [`Self::enforce`].
    pub fn set_privacy(&mut self, on: bool, actor: Actor) -> Result<(), DeviceError> {
        let name = |b: bool| if b { "on" } else { "off" };
        let from = self.state.privacy_mode;
        self.audit.append(
            Entry::new("privacy.set", Outcome::Ok, actor.clone()).transition(name(from), name(on)),
        )?;
        let mut next = self.state.clone();
        next.privacy_mode = on;
        if let Err(e) = self.store.save(&next) {
            self.audit.append(
                Entry::new("privacy.set", Outcome::Error, actor)
                    .reason(format!("not saved: {e}; privacy stays {}", name(from))),
            )?;
            return Err(e.into());
        }
        self.state = next;
        Ok(())
    }

    /// Verify and install a policy bundle.
    pub fn apply_policy(
        &mut self,
        bytes: &[u8],
        actor: Actor,
        now: Timestamp,
    ) -> Result<Applied, DeviceError> {
        let v = self.admit(bytes, actor.clone(), now, |b, root, now, held| {
            verify::<Policy>(b, root, now, held)
        })?;
        let applied = self.install("policy.apply", &v, actor)?;
        self.policy = Some(v);
        Ok(applied)
    }

    /// Verify and install an intel feed.
    pub fn apply_intel(
        &mut self,
        bytes: &[u8],
        actor: Actor,
        now: Timestamp,
    ) -> Result<Applied, DeviceError> {
        let v = self.admit(bytes, actor.clone(), now, |b, root, now, held| {
            verify::<IntelFeed>(b, root, now, held)
        })?;
        let applied = self.install("intel.apply", &v, actor)?;
        self.intel = Some(v);
        Ok(applied)
    }

    /// Verify and install a trust-root rotation (signed by the current root's threshold).
    pub fn apply_trust_root(
        &mut self,
        bytes: &[u8],
        actor: Actor,
        now: Timestamp,
    ) -> Result<Applied, DeviceError> {
        let v = self.admit(bytes, actor.clone(), now, |b, root, now, _| {
            verify_rotation(b, root, now)
        })?;
        let applied = self.install("trust-root.rotate", &v, actor)?;
        self.root = v.payload().clone();
        Ok(applied)
    }

    /// Run `check`; a refusal is audited (with the input's digest) and returned.
    fn admit<P: Payload>(
        &self,
        bytes: &[u8],
        actor: Actor,
        now: Timestamp,
        check: impl FnOnce(&[u8], &TrustRoot, Timestamp, u64) -> Result<Verified<P>, VerifyError>,
    ) -> Result<Verified<P>, DeviceError> {
        let held = self.state.serials.get(P::ROLE);
        check(bytes, &self.root, now, held).map_err(|e| {
            let entry = Entry::new(format!("{}.apply", P::ROLE), Outcome::Refused, actor)
                .reason(e.to_string())
                .digest("input", sha256_hex(bytes))
                .digest("error", e.code());
            match self.audit.append(entry) {
                Ok(_) => DeviceError::Refused(e),
                Err(a) => DeviceError::Audit(a),
            }
        })
    }

    /// Record the change, then make it: the log never misses a change that happened. If the
    /// write fails after the record, a second record says so and the old state stays.
    fn install<P: Payload>(
        &mut self,
        kind: &str,
        v: &Verified<P>,
        actor: Actor,
    ) -> Result<Applied, DeviceError> {
        let from = self.state.serials.get(P::ROLE);
        let to = v.payload().serial();
        let receipt = self.audit.append(
            Entry::new(kind, Outcome::Ok, actor.clone())
                .transition(format!("serial {from}"), format!("serial {to}"))
                .digest("input", v.digest()),
        )?;
        if let Err(e) = self.store.install(v, &mut self.state) {
            self.audit.append(
                Entry::new(kind, Outcome::Error, actor)
                    .reason(format!(
                        "record {} not put in force: {e}; serial {from} stays",
                        receipt.seq
                    ))
                    .digest("input", v.digest()),
            )?;
            return Err(e.into());
        }
        Ok(Applied {
            from_serial: from,
            to_serial: to,
            digest: v.digest().to_owned(),
            audit_seq: receipt.seq,
        })
    }
}
