//! Enforcement: what trustd put in the kernel and keeps there. The policy table (applied,
//! confirmed by read-back, replaced by lockdown when it cannot be applied), the blocklist
//! table and its exemptions, the links the network status depends on, and the drift checks
//! and repairs of both tables (the kernel's notifications are handled in `drift.rs`).
//!
//! [`Enforcer`] owns that state. What it reads but does not own (the audit log, the
//! effective policy of the state in force, the installed intel feed, the TPM that measures
//! each enforcement) it is given in a [`Ctx`] by the device for each call. Nothing here
//! removes enforcement: a failure keeps what the kernel holds and is audited.

use std::collections::BTreeMap;

use super::DeviceError;
use super::identity::Identity;
use crate::audit::{Actor, AuditLog, Entry, Outcome};
use crate::bundle::{InForce, Verified};
use crate::netfilter::{
    self, Backend, EnforceError, IntelRuleset, Protected, ProtectedKind, Ruleset, apply_intel,
    canonical_digest, check_intel, compile, compile_intel, intel_chains_intact, intel_quick_intact,
    protected, update_exemptions, update_intel,
};
use crate::policy::{Effective, IntelFeed, LockdownReason, NetworkMode, NetworkPlan, Policy};
use crate::posture::Enforcement;
use crate::sys::netlink::{LinkEvent, LinkState};

/// What an enforcement reads and does not own, lent by the device for one call.
#[derive(Debug)]
pub struct Ctx<'a> {
    /// The audit log every outcome is recorded in.
    pub audit: &'a AuditLog,
    /// The effective policy of the state in force.
    pub effective: Effective,
    /// The last-good policy (its bootstrap allowlist is kept in lockdown; its digest is
    /// measured with each enforcement).
    pub policy: Option<&'a Verified<Policy>>,
    /// The last-good intel feed.
    pub intel: Option<&'a InForce<IntelFeed>>,
    /// The identity whose TPM (if any) measures each enforcement.
    pub identity: &'a Identity,
}

impl Ctx<'_> {
    fn measure_enforcement(&self, mode: &str, ruleset: &str) {
        let policy = self
            .policy
            .map(|p| p.digest().to_owned())
            .unwrap_or_default();
        self.identity
            .measure_enforcement(self.audit, mode, &policy, ruleset);
    }
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

/// Add the overlap counts to an audit entry: `overlap.<kind>` = entries (counts only).
pub(super) fn with_overlaps(mut entry: Entry, overlaps: &BTreeMap<ProtectedKind, usize>) -> Entry {
    for (k, n) in overlaps {
        entry = entry.digest(format!("overlap.{}", k.as_str()), n.to_string());
    }
    entry
}

fn overlap_sentence(overlaps: &BTreeMap<ProtectedKind, usize>) -> Option<String> {
    if overlaps.is_empty() {
        return None;
    }
    let parts: Vec<String> = overlaps
        .iter()
        .map(|(k, n)| format!("{} {n}", k.as_str()))
        .collect();
    Some(format!(
        "blocklist entries overlap protected destinations and are not applied there: {}",
        parts.join(", ")
    ))
}

/// The kernel state trustd enforces and watches (see the module documentation).
#[derive(Debug)]
pub struct Enforcer {
    /// The mode last put in the kernel (`lockdown` or the policy's), for the next record.
    enforced: Option<String>,
    /// The policy table last put in the kernel (what drift checks compare against).
    pub(super) enforced_rs: Option<Ruleset>,
    /// The blocklist table last put in the kernel.
    pub(super) enforced_intel: Option<IntelRuleset>,
    /// The destinations the policy table in force protects (the blocklists' exemptions).
    protected: Option<Vec<Protected>>,
    /// Blocklist entries that overlap protected destinations, by kind.
    intel_overlaps: BTreeMap<ProtectedKind, usize>,
    /// Exemptions were narrowed before an apply and not yet recorded.
    exemptions_unrecorded: bool,
    /// The kernel's exemption chains are not the wanted ones: a refill failed. Cleared only
    /// by a refill or a replacement of the table that succeeds (an element update or a set
    /// refill leaves the chains as they are); until then the next enforcement of the
    /// blocklists replaces the table, and their failure stays reported.
    exemptions_stale: bool,
    /// What the kernel holds, as far as confirmed.
    enforcement: Enforcement,
    /// Drift repaired since start: how many times, and the last.
    pub(super) drift: Option<(u64, String)>,
    /// Why the blocklists or their exemptions are not as wanted.
    pub(super) intel_failure: Option<String>,
    /// The links: name and whether up.
    links: BTreeMap<String, bool>,
    /// How the tables are watched (notifications, backstop).
    pub(super) watch: super::drift::Watch,
    /// Why the kernel's ruleset could not be read back at the last check (nft failed, hung
    /// or is missing), recorded once per streak; cleared by the next read-back that works.
    check_failure: Option<String>,
    /// When a failed enforcement is tried again, and the pause after that.
    retry: Option<(std::time::Instant, std::time::Duration)>,
    /// Another socket was seen owning a table of the blocklist table's (or its scratch
    /// table's) name since the blocklists last failed: once the names are free, try at once.
    names_held: bool,
}

impl Default for Enforcer {
    fn default() -> Self {
        Self {
            enforced: None,
            enforced_rs: None,
            enforced_intel: None,
            protected: None,
            intel_overlaps: BTreeMap::new(),
            exemptions_unrecorded: false,
            exemptions_stale: false,
            enforcement: Enforcement::Unconfirmed,
            drift: None,
            intel_failure: None,
            links: BTreeMap::new(),
            watch: super::drift::Watch::default(),
            check_failure: None,
            retry: None,
            names_held: false,
        }
    }
}

impl Enforcer {
    /// What the kernel holds, as far as confirmed.
    pub fn enforcement(&self) -> &Enforcement {
        &self.enforcement
    }

    /// Drift repaired since start: how many times, and the last drift.
    pub fn drift(&self) -> Option<(u64, &str)> {
        self.drift.as_ref().map(|(n, w)| (*n, w.as_str()))
    }

    /// Why the blocklists (or their exemptions) are not as wanted.
    pub fn intel_failure(&self) -> Option<&str> {
        self.intel_failure.as_deref()
    }

    /// Whether the kernel's blocklist exemptions are not the wanted ones (a refill failed
    /// and no refill or replacement has succeeded since).
    pub(super) fn exemptions_stale(&self) -> bool {
        self.exemptions_stale
    }

    /// After the blocklist table was replaced whole: its exemption chains are the wanted ones.
    pub(super) fn exemptions_refilled(&mut self) {
        self.exemptions_stale = false;
    }

    /// Why the last check could not read the kernel's ruleset back.
    pub fn check_failure(&self) -> Option<&str> {
        self.check_failure.as_deref()
    }

    /// Put the effective policy into the kernel and confirm it by read-back. If that fails,
    /// put lockdown (with the bootstrap allowlist) in place instead; if even that fails, the
    /// ruleset already in the kernel stays: nothing here removes enforcement. Every outcome is
    /// audited.
    pub fn enforce(
        &mut self,
        backend: &mut dyn Backend,
        ctx: &Ctx<'_>,
        actor: Actor,
    ) -> Result<Enforced, DeviceError> {
        let eff = &ctx.effective;
        let rs = compile(eff);
        let mode = eff.mode_name();
        let guarded = protected(eff);
        self.narrow_exemptions(backend, ctx, &guarded, &actor)?;
        match netfilter::apply(backend, &rs) {
            Ok(digest) => {
                ctx.audit.record(
                    Entry::new("network.apply", Outcome::Ok, actor.clone())
                        .transition(
                            self.enforced.clone().unwrap_or_else(|| "unknown".into()),
                            mode,
                        )
                        .reason(lockdown_reason(eff))
                        .digest("ruleset", digest.clone()),
                );
                self.enforced = Some(mode.to_owned());
                self.enforced_rs = Some(rs);
                ctx.measure_enforcement(mode, &digest);
                self.enforcement = Enforcement::Enforced {
                    digest: digest.clone(),
                };
                // The apply read the table back: what a failed check left unconfirmed is.
                self.check_failure = None;
                self.follow_exemptions(backend, ctx, guarded, &actor)?;
                Ok(Enforced {
                    mode,
                    digest,
                    fallback: None,
                })
            }
            Err(e) => {
                ctx.audit.record(
                    Entry::new("network.apply", Outcome::Error, actor.clone())
                        .reason(format!("{mode} not in force: {e}"))
                        .digest("ruleset", canonical_digest(&rs)),
                );
                let lock_eff = Effective {
                    network: NetworkPlan::Lockdown {
                        reason: LockdownReason::StateUnknown,
                        bootstrap: ctx
                            .policy
                            .map(|p| p.payload().setup.bootstrap_allow.clone())
                            .unwrap_or_default(),
                    },
                    block_lan_discovery: true,
                    pending_steps: eff.pending_steps.clone(),
                };
                let lock = compile(&lock_eff);
                let guarded = protected(&lock_eff);
                self.narrow_exemptions(backend, ctx, &guarded, &actor)?;
                match netfilter::apply(backend, &lock) {
                    Ok(digest) => {
                        ctx.audit.record(
                            Entry::new("network.apply", Outcome::Ok, actor.clone())
                                .transition(mode, "lockdown")
                                .reason(format!("fell back to lockdown: {e}"))
                                .digest("ruleset", digest.clone()),
                        );
                        self.enforced = Some("lockdown".into());
                        self.enforced_rs = Some(lock);
                        ctx.measure_enforcement("lockdown", &digest);
                        self.enforcement = Enforcement::Fallback {
                            digest: digest.clone(),
                            why: e.to_string(),
                        };
                        self.follow_exemptions(backend, ctx, guarded, &actor)?;
                        Ok(Enforced {
                            mode: "lockdown",
                            digest,
                            fallback: Some(e.to_string()),
                        })
                    }
                    Err(e2) => {
                        ctx.audit.record(
                            Entry::new("network.apply", Outcome::Error, actor)
                                .reason(format!("lockdown not in force either: {e2}; the ruleset in the kernel stays")),
                        );
                        self.enforcement = Enforcement::Failed {
                            why: format!("{e}; lockdown: {e2}"),
                        };
                        Err(DeviceError::Enforce(e2))
                    }
                }
            }
        }
    }

    /// Before a policy table is applied: exempt from the blocklists only what both the table
    /// in force and the next one protect, so that at no instant is a destination exempt that
    /// the table in force does not name (docs/SECURITY.md).
    fn narrow_exemptions(
        &mut self,
        backend: &mut dyn Backend,
        ctx: &Ctx<'_>,
        next: &[Protected],
        actor: &Actor,
    ) -> Result<(), DeviceError> {
        let Some(rs) = &self.enforced_intel else {
            return Ok(());
        };
        let both: Vec<Protected> = rs
            .protected
            .iter()
            .filter(|p| next.contains(p))
            .cloned()
            .collect();
        // Recorded with the change it prepares, after the policy table's record (one record
        // per transition; a failure is recorded at once).
        if self.set_exemptions(backend, ctx, both, actor, false)? {
            self.exemptions_unrecorded = true;
        }
        Ok(())
    }

    /// After a policy table is in force: its protected destinations become the blocklists'
    /// exemptions (and the protection a later blocklist is compiled with).
    fn follow_exemptions(
        &mut self,
        backend: &mut dyn Backend,
        ctx: &Ctx<'_>,
        now: Vec<Protected>,
        actor: &Actor,
    ) -> Result<(), DeviceError> {
        self.protected = Some(now.clone());
        self.set_exemptions(backend, ctx, now, actor, true)
            .map(|_| ())
    }

    /// Refill the blocklist table's exemption chains (the sets are not touched). A success
    /// is audited, with the overlaps that follow, when `record` says so (it changed
    /// something now or in an earlier, unrecorded step); a failure always. On failure the
    /// compiled exemptions are still kept as wanted, so the next drift check finds the
    /// difference and replaces the table. Returns whether the chains were changed.
    fn set_exemptions(
        &mut self,
        backend: &mut dyn Backend,
        ctx: &Ctx<'_>,
        to: Vec<Protected>,
        actor: &Actor,
        record: bool,
    ) -> Result<bool, DeviceError> {
        let Some(rs) = self.enforced_intel.as_mut() else {
            return Ok(false);
        };
        let changed = rs.protected != to;
        // A refill that failed before is done again even when nothing changed since.
        let refill = changed || self.exemptions_stale;
        let result = if refill {
            update_exemptions(backend, rs, &to)
        } else {
            Ok(())
        };
        rs.protected = to;
        let overlaps = rs.overlaps();
        let n = rs.protected.len();
        match result {
            Ok(()) => {
                if refill {
                    self.exemptions_stale = false;
                }
                if record && (changed || self.exemptions_unrecorded) {
                    let entry = Entry::new("intel.exempt", Outcome::Ok, actor.clone()).reason(
                        format!("{n} policy-named destination(s) exempt from the blocklists"),
                    );
                    ctx.audit.record(with_overlaps(entry, &overlaps));
                    self.exemptions_unrecorded = false;
                }
                self.intel_overlaps = overlaps;
            }
            Err(e) => {
                ctx.audit.record(
                    Entry::new("intel.exempt", Outcome::Error, actor.clone()).reason(format!(
                        "blocklist exemptions not updated: {e}; the table is replaced at the next check"
                    )),
                );
                self.exemptions_stale = true;
                self.intel_failure = Some(e.to_string());
            }
        }
        Ok(changed)
    }

    /// Blocklist entries that overlap protected destinations and do not apply there, as a
    /// sentence with counts by kind (never addresses); `None` if there are none.
    pub fn blocklist_overlaps(&self) -> Option<String> {
        overlap_sentence(&self.intel_overlaps)
    }

    /// Put the last-good intel feed's blocklists into their own table: element additions
    /// when only that changed, else one transaction replacing the table, verified by a full
    /// read-back. A failure keeps the previous blocklists and is audited; it never touches
    /// the policy table.
    pub fn enforce_intel(
        &mut self,
        backend: &mut dyn Backend,
        ctx: &Ctx<'_>,
        actor: Actor,
    ) -> Result<usize, DeviceError> {
        let mut rs = compile_intel(ctx.intel.map(InForce::payload));
        rs.protected = self
            .protected
            .clone()
            .unwrap_or_else(|| protected(&ctx.effective));
        let overlaps = rs.overlaps();
        let mut entry = with_overlaps(
            Entry::new("intel.enforce", Outcome::Ok, actor.clone()),
            &overlaps,
        );
        for c in &rs.categories {
            entry = entry.digest(
                format!("count.{}", c.name),
                rs.category_len(&c.name).to_string(),
            );
        }
        // Element batches leave the exemption chains as they are: after a failed refill
        // the table is replaced (with the exemptions wanted) instead.
        let incremental = match &self.enforced_intel {
            Some(old) if !self.exemptions_stale => {
                update_intel(backend, old, &rs).map_err(EnforceError::Apply)
            }
            _ => Ok(false),
        };
        let result = match incremental {
            Ok(true) => Ok("updated"),
            Ok(false) => apply_intel(backend, &rs).map(|()| "replaced"),
            Err(e) => Err(e),
        };
        match result {
            Ok(how) => {
                ctx.audit
                    .record(entry.reason(format!("{} entries, table {how}", rs.len())));
                let n = rs.len();
                self.enforced_intel = Some(rs);
                self.intel_overlaps = overlaps;
                // Updated in place only when the chains were not stale; replaced: refilled.
                self.exemptions_stale = false;
                self.intel_failure = None;
                Ok(n)
            }
            Err(e) => {
                // The previous blocklists stay only if they were in force: after drift (the
                // table changed or removed by someone else) nothing trustd compiled is.
                let kept = if self.enforced_intel.is_some() {
                    "the previous ones stay"
                } else {
                    "no blocklist trustd compiled is in force until a retry succeeds"
                };
                ctx.audit.record(
                    Entry::new("intel.enforce", Outcome::Error, actor)
                        .reason(format!("blocklists not updated: {e}; {kept}")),
                );
                self.intel_failure = Some(e.to_string());
                Err(e.into())
            }
        }
    }

    /// The links as they are now (at start, from a netlink dump; not audited).
    pub fn set_links(&mut self, links: &[LinkState]) {
        self.links = links.iter().map(|l| (l.name.clone(), l.up)).collect();
    }

    pub(super) fn tunnel_up(&self, eff: &Effective) -> Option<String> {
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
    pub fn network_status(&self, eff: &Effective) -> String {
        match &eff.network {
            NetworkPlan::Lockdown { reason, .. } => format!("lockdown: {reason}"),
            NetworkPlan::Enforce(n) if n.mode == NetworkMode::VpnRequired => {
                match self.tunnel_up(eff) {
                    Some(t) => format!("vpn-required: tunnel {t} up"),
                    None => "vpn-required: tunnel down, blocking".to_owned(),
                }
            }
            NetworkPlan::Enforce(n) => n.mode.as_str().to_owned(),
        }
    }

    /// Apply link changes the kernel reported; a change of the network status (a tunnel
    /// going down or up in vpn-required) is audited. Returns the new status if it changed.
    pub fn links_changed(
        &mut self,
        ctx: &Ctx<'_>,
        events: &[LinkEvent],
        actor: Actor,
    ) -> Result<Option<String>, DeviceError> {
        let before = self.network_status(&ctx.effective);
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
        let after = self.network_status(&ctx.effective);
        if after == before {
            return Ok(None);
        }
        ctx.audit.record(
            Entry::new("network.status", Outcome::Ok, actor).transition(before, after.clone()),
        );
        Ok(Some(after))
    }

    /// Link notifications were lost (`why`, noticed at `at`) and the watcher read every link
    /// again: `links` replaces what was known. The gap is audited (`network.links`, with the
    /// network status before and after), whatever changed. Returns the status if it changed.
    pub fn links_resynced(
        &mut self,
        ctx: &Ctx<'_>,
        links: &[LinkState],
        why: &str,
        at: &str,
        actor: Actor,
    ) -> Result<Option<String>, DeviceError> {
        let before = self.network_status(&ctx.effective);
        self.set_links(links);
        let after = self.network_status(&ctx.effective);
        ctx.audit.append(
            Entry::new("network.links", Outcome::Error, actor)
                .transition(before.clone(), after.clone())
                .reason(format!(
                    "link events lost at {at} ({why}); resynced from a full link list: {} link(s)",
                    links.len()
                )),
        )?;
        Ok((after != before).then_some(after))
    }

    /// The links as trustd knows them: name and whether it is up (administratively and
    /// with carrier).
    pub fn links(&self) -> &BTreeMap<String, bool> {
        &self.links
    }

    /// Check that the kernel still holds the ruleset last enforced; if someone removed or
    /// edited it, audit the drift and put it back. Returns the drift found, if any.
    pub fn check_drift(
        &mut self,
        backend: &mut dyn Backend,
        ctx: &Ctx<'_>,
        actor: Actor,
    ) -> Result<Option<String>, DeviceError> {
        let mut found = None;
        let check = self
            .enforced_rs
            .as_ref()
            .map(|rs| (netfilter::verify(backend, rs), canonical_digest(rs)));
        if let Some((Err(EnforceError::ReadBack(e)), digest)) = &check {
            // nft could not list the table (it failed, hung or is missing): that is not
            // drift, and re-applying would need the same nft. Recorded once per streak.
            let why = format!(
                "reading the ruleset back failed: {e}; what the kernel holds is not confirmed, the ruleset in the kernel stays"
            );
            if self.check_failure.is_none() {
                ctx.audit.append(
                    Entry::new("network.check", Outcome::Error, actor)
                        .reason(why.clone())
                        .digest("ruleset", digest.clone()),
                )?;
            }
            self.check_failure = Some(why);
            return Ok(None);
        }
        if let Some((Ok(digest), _)) = &check
            && let Some(was) = self.check_failure.take()
        {
            ctx.audit.append(
                Entry::new("network.check", Outcome::Ok, actor.clone())
                    .reason(format!("the ruleset reads back again (after: {was})"))
                    .digest("ruleset", digest.clone()),
            )?;
        }
        if let Some((Err(e), _)) = check
            && let Some(rs) = &self.enforced_rs
        {
            let what = e.to_string();
            ctx.audit.record(
                Entry::new("network.drift", Outcome::Error, actor.clone())
                    .reason(format!("{what}; restoring"))
                    .digest("ruleset", canonical_digest(rs)),
            );
            self.enforce(backend, ctx, actor.clone())?;
            found = Some(what);
        } else {
            self.retry_failed_enforcement(backend, ctx, &actor)?;
        }
        // The blocklist table is read back every tick without notifications, every
        // INTEL_BACKSTOP with them (they are attributed to trustd only from its own threads,
        // and a read-back racing their repairs only adds failed replaces): every element
        // every INTEL_BACKSTOP; between, over netlink, its flags, declarations, rules and
        // set counts (cheap), through `nft` its chains.
        if let Some(rs) = &self.enforced_intel
            && self.watch.intel_due()
            && !(if self.watch.intel_full_due() {
                check_intel(backend, rs).is_ok()
            } else {
                match intel_quick_intact(backend, rs) {
                    Some(r) => r.unwrap_or(false),
                    None => intel_chains_intact(backend, rs).unwrap_or(false),
                }
            })
        {
            let what =
                "the blocklist table was removed, made dormant, or its rules or elements edited"
                    .to_owned();
            ctx.audit.record(
                Entry::new("intel.drift", Outcome::Error, actor.clone())
                    .reason(format!("{what}; restoring")),
            );
            self.enforced_intel = None;
            // A failed re-apply is recorded by enforce_intel and tried again next interval;
            // it must not end the daemon (the policy table is separate and stays).
            let _ = self.enforce_intel(backend, ctx, actor);
            found = Some(what);
        }
        if let Some(what) = &found {
            let n = self.drift.as_ref().map_or(0, |d| d.0);
            self.drift = Some((n + 1, what.clone()));
        }
        Ok(found)
    }

    /// After an enforcement that failed (the policy not in force: lockdown or the previous
    /// ruleset instead; or the blocklists or their exemptions not updated), try again: first
    /// after 1 s, then after twice the pause before, up to 5 minutes, so a failing nft costs
    /// a record per attempt, not per check. A success clears the failure (and posture); a
    /// failure is audited by [`Self::enforce`] or [`Self::enforce_intel`].
    fn retry_failed_enforcement(
        &mut self,
        backend: &mut dyn Backend,
        ctx: &Ctx<'_>,
        actor: &Actor,
    ) -> Result<(), DeviceError> {
        use std::time::{Duration, Instant};
        let policy_failed = matches!(
            self.enforcement,
            Enforcement::Failed { .. } | Enforcement::Fallback { .. }
        );
        if !policy_failed && self.intel_failure.is_none() {
            self.retry = None;
            self.names_held = false;
            return Ok(());
        }
        let now = Instant::now();
        let (due, pause) = *self
            .retry
            .get_or_insert((now + Duration::from_secs(1), Duration::from_secs(1)));
        // The blocklists were refused because another socket owned a table of their name
        // (or of their scratch table's): the kernel removes it silently when that socket
        // closes, so look at every check and try at once when the names, seen held, are free.
        let refused = self
            .intel_failure
            .as_deref()
            .is_some_and(|f| f.contains("Operation not permitted"));
        let freed = if refused && now < due {
            match netfilter::intel_names_held(backend) {
                Some(true) => {
                    self.names_held = true;
                    false
                }
                Some(false) => std::mem::take(&mut self.names_held),
                None => false,
            }
        } else {
            false
        };
        if now < due && !freed {
            return Ok(());
        }
        let next = (pause * 2).min(Duration::from_secs(300));
        self.retry = Some((now + next, next));
        if policy_failed {
            match self.enforce(backend, ctx, actor.clone()) {
                Ok(_) => {}
                Err(DeviceError::Enforce(_)) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        if self.intel_failure.is_some() {
            // Replaced whole: the exemption chains may differ from what is recorded as wanted.
            self.enforced_intel = None;
            match self.enforce_intel(backend, ctx, actor.clone()) {
                Ok(_) | Err(DeviceError::Enforce(_)) => {}
                Err(e) => return Err(e),
            }
        }
        if !matches!(
            self.enforcement,
            Enforcement::Failed { .. } | Enforcement::Fallback { .. }
        ) && self.intel_failure.is_none()
        {
            self.retry = None;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::Options;
    use crate::netfilter::RecordingBackend;
    use crate::policy::{Lifecycle, Overlay, effective};

    /// The enforcer alone: an audit log in a tempdir, an identity without a TPM, the
    /// effective policy of a device without one (lockdown), the recording fake as kernel.
    /// A context with no policy and no feed installed, over `parts()`'s log and identity.
    fn ctx<'a>(audit: &'a AuditLog, identity: &'a Identity, effective: Effective) -> Ctx<'a> {
        Ctx {
            audit,
            effective,
            policy: None,
            intel: None,
            identity,
        }
    }

    fn parts() -> (tempfile::TempDir, AuditLog, Identity, Effective) {
        let dir = tempfile::tempdir().expect("tempdir");
        let (audit, _) =
            AuditLog::open(&dir.path().join("audit"), Options::default()).expect("audit log");
        let identity = Identity::new(ed25519_dalek::SigningKey::from_bytes(&[7; 32]), None);
        let steps = std::collections::BTreeSet::new();
        let eff = effective(
            None,
            Overlay {
                privacy: false,
                completed_steps: &steps,
                lifecycle: Lifecycle::Unenrolled,
            },
        );
        (dir, audit, identity, eff)
    }

    fn apply_outcomes(dir: &std::path::Path) -> Vec<(String, Option<String>)> {
        crate::audit::read_records(&dir.join("audit"))
            .expect("records")
            .into_iter()
            .filter(|r| r.kind == "network.apply")
            .map(|r| (format!("{:?}", r.outcome), r.to))
            .collect()
    }

    #[test]
    fn a_failed_apply_falls_back_to_lockdown_and_a_failed_lockdown_keeps_the_kernel_as_it_was() {
        let (dir, audit, identity, eff) = parts();
        let ctx = ctx(&audit, &identity, eff);
        let mut kernel = RecordingBackend::default();
        let mut e = Enforcer::default();
        let me = Actor::this_process();

        let first = e.enforce(&mut kernel, &ctx, me.clone()).expect("enforce");
        assert_eq!((first.mode, &first.fallback), ("lockdown", &None));
        assert!(matches!(e.enforcement(), Enforcement::Enforced { .. }));

        // One failure: the ruleset wanted is not in force, lockdown is put in its place.
        kernel.fail_applies = 1;
        let second = e.enforce(&mut kernel, &ctx, me.clone()).expect("fallback");
        assert_eq!(second.mode, "lockdown");
        assert!(second.fallback.is_some(), "{second:?}");
        assert!(matches!(e.enforcement(), Enforcement::Fallback { .. }));

        // Two in a row: nothing could be applied; what the kernel holds stays and reads back.
        kernel.fail_applies = 2;
        let third = e.enforce(&mut kernel, &ctx, me);
        assert!(matches!(third, Err(DeviceError::Enforce(_))), "{third:?}");
        assert!(matches!(e.enforcement(), Enforcement::Failed { .. }));
        let kept = e.enforced_rs.as_ref().expect("the last ruleset confirmed");
        assert!(
            netfilter::verify(&mut kernel, kept).is_ok(),
            "the kernel still holds it"
        );

        let outcomes = apply_outcomes(dir.path());
        assert_eq!(outcomes.len(), 5, "every apply is recorded: {outcomes:?}");
        assert_eq!(outcomes[0].0, "Ok");
        let lockdown = Some("lockdown".to_owned());
        assert_eq!(
            outcomes[1..3].to_vec(),
            vec![("Error".to_owned(), None), ("Ok".to_owned(), lockdown)]
        );
        assert!(
            outcomes[3..].iter().all(|(o, _)| o == "Error"),
            "{outcomes:?}"
        );
    }

    /// Regression (stale exemptions reported as fixed): a refill of the blocklists'
    /// exemption chains failed, then a later blocklist update succeeded by element batches
    /// only, which never touch the chains, and cleared the failure: posture said all was in
    /// force while the kernel kept the old exemptions. The failure must stay until a refill
    /// or a replacement of the table succeeds, and the next enforcement must put the
    /// wanted exemptions in.
    #[test]
    fn a_failed_exemption_refill_is_not_cleared_by_an_element_update() {
        use crate::netfilter::{Match, check_intel};
        let (_dir, audit, identity, eff) = parts();
        let ctx = ctx(&audit, &identity, eff);
        let mut kernel = RecordingBackend::default();
        let mut e = Enforcer::default();
        let me = Actor::this_process();
        e.enforce_intel(&mut kernel, &ctx, me.clone())
            .expect("blocklists");
        let dest: crate::policy::Cidr = "192.0.2.10/32".parse().expect("cidr");
        let to = vec![Protected {
            kind: ProtectedKind::ProxyEndpoint,
            dest,
            out: vec![Match::Daddr(dest)],
            reply: vec![Match::Saddr(dest)],
        }];

        // The refill fails: reported.
        kernel.fail_next = true;
        e.protected = Some(to.clone());
        e.set_exemptions(&mut kernel, &ctx, to.clone(), &me, true)
            .expect("a failure is recorded, not returned");
        assert!(e.intel_failure().is_some());
        let wanted = e.enforced_intel.clone().expect("wanted");
        assert!(
            check_intel(&mut kernel, &wanted).is_err(),
            "the kernel lacks the new exemptions"
        );

        // A later enforcement of the (unchanged) blocklists: either the kernel then holds
        // the wanted exemptions, or the failure is still reported.
        e.enforce_intel(&mut kernel, &ctx, me.clone())
            .expect("blocklists");
        let wanted = e.enforced_intel.clone().expect("wanted");
        let held = check_intel(&mut kernel, &wanted);
        assert!(
            held.is_ok() || e.intel_failure().is_some(),
            "the failure was cleared while the kernel kept the old exemptions: {held:?}"
        );
        assert!(held.is_ok(), "the next enforcement refills them: {held:?}");
        assert!(e.intel_failure().is_none() && !e.exemptions_stale());

        // A refill that fails and then succeeds with the same exemptions clears it too.
        kernel.fail_next = true;
        let other = vec![to[0].clone(), {
            let mut p = to[0].clone();
            p.dest = "198.51.100.1/32".parse().expect("cidr");
            p
        }];
        e.set_exemptions(&mut kernel, &ctx, other.clone(), &me, true)
            .expect("recorded");
        assert!(e.exemptions_stale());
        e.set_exemptions(&mut kernel, &ctx, other, &me, true)
            .expect("recorded");
        assert!(
            !e.exemptions_stale(),
            "refilled although nothing changed since"
        );
        let wanted = e.enforced_intel.clone().expect("wanted");
        check_intel(&mut kernel, &wanted).expect("the kernel holds them");
    }

    #[test]
    fn a_removed_policy_table_is_drift_and_is_put_back() {
        let (dir, audit, identity, eff) = parts();
        let ctx = ctx(&audit, &identity, eff);
        let mut kernel = RecordingBackend::default();
        let mut e = Enforcer::default();
        let me = Actor::this_process();
        e.enforce(&mut kernel, &ctx, me.clone()).expect("enforce");
        assert_eq!(
            e.check_drift(&mut kernel, &ctx, me.clone()).expect("check"),
            None
        );

        kernel.set_table(None);
        let found = e.check_drift(&mut kernel, &ctx, me).expect("check");
        assert!(found.is_some(), "a removed table is drift");
        assert_eq!(e.drift().map(|(n, _)| n), Some(1));
        let rs = e.enforced_rs.as_ref().expect("ruleset");
        assert!(netfilter::verify(&mut kernel, rs).is_ok(), "put back");
        let drift = crate::audit::read_records(&dir.path().join("audit"))
            .expect("records")
            .into_iter()
            .filter(|r| r.kind == "network.drift")
            .count();
        assert_eq!(drift, 1);
    }
}
