//! Transitions on the device state, each audited.

use crate::Paths;
use crate::audit::damage::{ACKNOWLEDGE_KIND, Anchor, CHECKPOINT_KIND};
use crate::audit::{Actor, AuditError, AuditLog, Entry, Options, Outcome};
use crate::bundle::{
    Payload, Role, TrustRoot, Verified, VerifyError, sha256_hex, verify, verify_rotation,
};
use crate::netfilter::{
    self, Backend, EnforceError, IntelRuleset, Protected, ProtectedKind, Ruleset, apply_intel,
    canonical_digest, compile, compile_intel, intel_chains_intact, protected, update_exemptions,
    update_intel,
};
use crate::policy::{Effective, LockdownReason, NetworkMode, NetworkPlan, Overlay, effective};
use crate::policy::{IntelFeed, LifecycleAction, LifecycleCommand, Policy};
use crate::posture::{self, Enforcement, PolicyInfo, Posture};
use crate::state::secret::DeviceSecret;
use crate::state::store::StateLock;
use crate::state::{
    Condition, DeviceState, Installed, Lifecycle, Loaded, RoleReset, StateError, StateStore,
    Stored, load_trust_root, start_over,
};
use crate::storage::StorageFault;
use crate::sys::netlink::{LinkEvent, LinkState};
use crate::timefmt::Timestamp;
use std::collections::BTreeMap;

mod clock;
mod drift;

fn lock_tpm(
    m: &std::sync::Mutex<crate::tpm::Measurements>,
) -> std::sync::MutexGuard<'_, crate::tpm::Measurements> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Whether the last checkpoint measured is `cp`.
fn measured_is(m: &crate::tpm::Measurements, cp: &crate::audit::checkpoint::Checkpoint) -> bool {
    m.last_checkpoint().is_some_and(|d| {
        d.get("size") == Some(&cp.size.to_string())
            && d.get("root") == Some(&crate::bundle::hex(&cp.root))
    })
}
pub use drift::INTEL_BACKSTOP;

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
    /// The setup step is not one the policy requires.
    #[error("refused: {0}")]
    UnknownStep(String),
    /// A validly signed command that this device may not carry out (another device's, or a
    /// transition its lifecycle does not allow).
    #[error("refused: {0}")]
    CommandRefused(String),
    /// The device secret or key could not be read or written.
    #[error("device secret: {0}")]
    Secret(String),
    /// No checkpoint could be made (the log no longer extends the last one, or a write
    /// failed).
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// A credential activation was refused: no TPM in use, a malformed challenge, or one
    /// made for another attestation key or endorsement key.
    #[error("credential activation refused: {0}")]
    Credential(String),
    /// The TPM failed (not the input's fault).
    #[error("{0}")]
    Tpm(crate::tpm::TpmError),
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
fn with_overlaps(mut entry: Entry, overlaps: &BTreeMap<ProtectedKind, usize>) -> Entry {
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
    /// What a person should know about the result (for an intel feed: entries that overlap
    /// protected destinations and do not apply there).
    pub notes: Vec<String>,
}

/// Load the trust root and the state, and record the load.
fn load_and_record(
    store: &StateStore,
    audit: &AuditLog,
    actor: Actor,
    from: &str,
) -> Result<(TrustRoot, Loaded), DeviceError> {
    let root = match load_trust_root(store.paths()) {
        Ok(r) => r,
        Err(e) => {
            audit.append(
                Entry::new("trust-root.load", Outcome::Error, actor).reason(e.to_string()),
            )?;
            return Err(e.into());
        }
    };
    let loaded = store.load(&root);
    if loaded.condition == Condition::Loaded && loaded.state.serials.root > root.serial {
        // The root on disk is older than one this device accepted (a rotated root replaced
        // by an earlier one): rotating back is refused here as it is over the bus.
        let e = StateError::TrustRoot {
            path: store.paths().rotated_trust_root(),
            reason: format!(
                "serial {} is older than the trust root serial {} this device accepted",
                root.serial, loaded.state.serials.root
            ),
        };
        audit.append(Entry::new("trust-root.load", Outcome::Error, actor).reason(e.to_string()))?;
        return Err(e.into());
    }
    if loaded.condition == Condition::Fresh {
        // A new device: write its initial state now, so that the files made next (device
        // secret, audit log) never make a later load take state.json for lost.
        store.save(&loaded.state)?;
    }
    if loaded.rewrite {
        settle_resets(
            store,
            audit,
            &loaded.resets,
            actor.clone(),
            "completed at load",
        )?;
        store.save(&loaded.state)?;
    }
    let outcome = match loaded.condition {
        Condition::Fresh | Condition::Loaded => Outcome::Ok,
        Condition::Missing | Condition::Corrupt(_) => Outcome::Error,
    };
    let mut entry = Entry::new("state.load", outcome, actor).transition(
        from,
        format!("lifecycle {}", loaded.state.lifecycle.as_str()),
    );
    if !loaded.notes.is_empty() {
        entry = entry.reason(loaded.notes.join("; "));
    }
    if let Some(p) = &loaded.policy {
        entry = entry.digest("policy", p.digest());
    }
    audit.append(entry)?;
    Ok((root, loaded))
}

/// Record the roles a trust root started over (fast-forward recovery), then set aside the
/// installed inputs that left force, so that nothing reads them again. Nothing to do for
/// an empty list.
fn settle_resets(
    store: &StateStore,
    audit: &AuditLog,
    resets: &[RoleReset],
    actor: Actor,
    when: &str,
) -> Result<(), DeviceError> {
    if resets.is_empty() {
        return Ok(());
    }
    audit.append(reset_entry(
        Entry::new("trust-root.reset", Outcome::Ok, actor),
        resets,
        when,
    ))?;
    for r in resets.iter().filter(|r| r.left.is_some()) {
        store.set_aside(r.change.role)?;
    }
    Ok(())
}

/// `entry` naming the roles started over and the inputs that left force (their digests
/// as `left.<role>`).
fn reset_entry(mut entry: Entry, resets: &[RoleReset], when: &str) -> Entry {
    let roles: Vec<&str> = resets.iter().map(|r| r.change.role.as_str()).collect();
    let what: Vec<String> = resets.iter().map(ToString::to_string).collect();
    entry = entry.reason(format!(
        "{when}: roles started over: {} ({})",
        roles.join(", "),
        what.join("; ")
    ));
    for r in resets {
        if let Some(l) = &r.left {
            entry = entry.digest(format!("left.{}", r.change.role), l.digest.clone());
        }
    }
    entry
}

/// The device secret as the lifecycle says it must be: none once revoked or retired (a
/// destruction a crash interrupted is finished here), else the one on disk, made at first
/// start (audited).
fn settle_secret(
    paths: &Paths,
    audit: &AuditLog,
    lifecycle: Lifecycle,
    actor: Actor,
) -> Result<Option<DeviceSecret>, DeviceError> {
    let err = |e: std::io::Error| DeviceError::Secret(e.to_string());
    if matches!(lifecycle, Lifecycle::Revoked | Lifecycle::Retired) {
        if paths.device_secret().exists() {
            audit.append(
                Entry::new("device.secret", Outcome::Ok, actor)
                    .transition("present", "destroyed")
                    .reason(format!("device {}", lifecycle.as_str())),
            )?;
            DeviceSecret::destroy(paths).map_err(err)?;
        }
        return Ok(None);
    }
    match DeviceSecret::load(paths) {
        Ok(Some(s)) => Ok(Some(s)),
        Ok(None) => new_secret(paths, audit, actor, "none", "first start").map(Some),
        // Never replaced silently: every handle would change. The admin repairs or removes it.
        Err(e) => {
            audit.append(
                Entry::new("device.secret", Outcome::Error, actor)
                    .reason(format!("the device secret cannot be read: {e}")),
            )?;
            Err(DeviceError::Secret(format!(
                "{}: {e}; remove it to make a new one (every device handle changes)",
                paths.device_secret().display()
            )))
        }
    }
}

/// Make, record and save a new device secret (every handle changes).
fn new_secret(
    paths: &Paths,
    audit: &AuditLog,
    actor: Actor,
    from: &str,
    why: &str,
) -> Result<DeviceSecret, DeviceError> {
    let s = DeviceSecret::generate().map_err(|e| DeviceError::Secret(e.to_string()))?;
    audit.append(
        Entry::new("device.secret", Outcome::Ok, actor)
            .transition(from, "created")
            .reason(why.to_owned()),
    )?;
    s.save(paths)
        .map_err(|e| DeviceError::Secret(e.to_string()))?;
    Ok(s)
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
    protected: Option<Vec<Protected>>,
    intel_overlaps: BTreeMap<ProtectedKind, usize>,
    exemptions_unrecorded: bool,
    enforcement: Enforcement,
    drift: Option<(u64, String)>,
    intel_failure: Option<String>,
    audit_problems: Vec<String>,
    /// Damage records of the audit log no admin has acknowledged: (seq, reason).
    audit_damage: Vec<(u64, String)>,
    links: BTreeMap<String, bool>,
    secret: Option<DeviceSecret>,
    key: ed25519_dalek::SigningKey,
    confinement: Option<String>,
    watch: drift::Watch,
    time: clock::TimeWatch,
    /// Why the kernel's ruleset could not be read back at the last check (nft failed, hung
    /// or is missing), recorded once per streak; cleared by the next read-back that works.
    check_failure: Option<String>,
    /// When a failed enforcement is tried again, and the pause after that.
    retry: Option<(std::time::Instant, std::time::Duration)>,
    /// The state directory's first failed write not yet followed by a successful one.
    state_fault: Option<StorageFault>,
    /// trustd's TPM measurements (`None`: no TPM; see [`Self::attach_tpm`]).
    tpm: Option<std::sync::Mutex<crate::tpm::Measurements>>,
    /// Why a configured TPM is not in use.
    tpm_unavailable: Option<String>,
    _lock: StateLock,
}

impl Device {
    /// Lock the state directory, open the audit log, load the state (never failing on bad
    /// state: it loads as most restrictive) and record the load.
    pub fn open(paths: &Paths, actor: Actor) -> Result<Self, DeviceError> {
        Self::open_with(paths, actor, Options::default())
    }

    /// [`Self::open`] with the audit log's options (its segment size).
    pub fn open_with(paths: &Paths, actor: Actor, opts: Options) -> Result<Self, DeviceError> {
        let store = StateStore::new(paths.clone());
        let lock = store.lock()?;
        // The device key first: the audit log is checked against the checkpoint it signed
        // before any record is written.
        let (key, made) = crate::report::load_or_create_key(store.paths())
            .map_err(|e| DeviceError::Secret(format!("device key: {e}")))?;
        let anchor = Anchor {
            origin: crate::report::origin(&key.verifying_key()),
            key: key.verifying_key(),
        };
        let (audit, report) = AuditLog::open_anchored(&paths.audit_dir(), opts, Some(&anchor))?;
        let (root, loaded) = load_and_record(&store, &audit, actor.clone(), "stopped")?;
        let secret = settle_secret(store.paths(), &audit, loaded.state.lifecycle, actor.clone())?;
        if made {
            audit.append(
                Entry::new("device.key", Outcome::Ok, actor)
                    .transition("none", "created")
                    .digest("key", crate::bundle::key_id(&key.verifying_key())),
            )?;
        }
        let dev = Self {
            store,
            root,
            audit,
            state: loaded.state,
            policy: loaded.policy,
            intel: loaded.intel,
            condition: loaded.condition,
            notes: loaded.notes,
            enforced: None,
            enforced_rs: None,
            enforced_intel: None,
            protected: None,
            intel_overlaps: BTreeMap::new(),
            exemptions_unrecorded: false,
            enforcement: Enforcement::Unconfirmed,
            drift: None,
            intel_failure: None,
            audit_problems: Vec::new(),
            audit_damage: report.unacknowledged,
            links: BTreeMap::new(),
            secret,
            key,
            confinement: None,
            watch: drift::Watch::default(),
            time: clock::TimeWatch::default(),
            check_failure: None,
            retry: None,
            state_fault: None,
            tpm: None,
            tpm_unavailable: None,
            _lock: lock,
        };
        if let Some(size) = report.interrupted_checkpoint {
            // Not damage: every record is there; only the signature the last run was about
            // to store is missing. Said in the log, then signed again.
            dev.audit.append(
                Entry::new(crate::audit::damage::REPAIR_KIND, Outcome::Ok, Actor::this_process())
                    .reason(format!(
                        "the last run stopped between announcing a checkpoint of at least {size} records and storing it; no record is missing; it is signed again now"
                    ))
                    .digest("interrupted-checkpoint-size", size.to_string()),
            )?;
            if let Err(e) = dev.checkpoint() {
                tracing::error!("signing the interrupted checkpoint again: {e}");
            }
        }
        Ok(dev)
    }

    /// Read the trust root and the state from disk again (SIGHUP), under the lock already
    /// held. If the trust root cannot be read, nothing changes (and that is audited). What
    /// is in the kernel stays until the next [`Self::enforce`].
    pub fn reload(&mut self, actor: Actor) -> Result<(), DeviceError> {
        let (root, loaded) = load_and_record(&self.store, &self.audit, actor.clone(), "running")?;
        self.secret = settle_secret(
            self.store.paths(),
            &self.audit,
            loaded.state.lifecycle,
            actor,
        )?;
        self.root = root;
        self.state = loaded.state;
        self.policy = loaded.policy;
        self.intel = loaded.intel;
        self.condition = loaded.condition;
        self.notes = loaded.notes;
        Ok(())
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
        let guarded = protected(&eff);
        self.narrow_exemptions(backend, &guarded, &actor)?;
        match netfilter::apply(backend, &rs) {
            Ok(digest) => {
                self.audit.record(
                    Entry::new("network.apply", Outcome::Ok, actor.clone())
                        .transition(
                            self.enforced.clone().unwrap_or_else(|| "unknown".into()),
                            mode,
                        )
                        .reason(lockdown_reason(&eff))
                        .digest("ruleset", digest.clone()),
                );
                self.enforced = Some(mode.to_owned());
                self.enforced_rs = Some(rs);
                self.measure_enforcement(mode, &digest);
                self.enforcement = Enforcement::Enforced {
                    digest: digest.clone(),
                };
                // The apply read the table back: what a failed check left unconfirmed is.
                self.check_failure = None;
                self.follow_exemptions(backend, guarded, &actor)?;
                Ok(Enforced {
                    mode,
                    digest,
                    fallback: None,
                })
            }
            Err(e) => {
                self.audit.record(
                    Entry::new("network.apply", Outcome::Error, actor.clone())
                        .reason(format!("{mode} not in force: {e}"))
                        .digest("ruleset", canonical_digest(&rs)),
                );
                let lock_eff = Effective {
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
                };
                let lock = compile(&lock_eff);
                let guarded = protected(&lock_eff);
                self.narrow_exemptions(backend, &guarded, &actor)?;
                match netfilter::apply(backend, &lock) {
                    Ok(digest) => {
                        self.audit.record(
                            Entry::new("network.apply", Outcome::Ok, actor.clone())
                                .transition(mode, "lockdown")
                                .reason(format!("fell back to lockdown: {e}"))
                                .digest("ruleset", digest.clone()),
                        );
                        self.enforced = Some("lockdown".into());
                        self.enforced_rs = Some(lock);
                        self.measure_enforcement("lockdown", &digest);
                        self.enforcement = Enforcement::Fallback {
                            digest: digest.clone(),
                            why: e.to_string(),
                        };
                        self.follow_exemptions(backend, guarded, &actor)?;
                        Ok(Enforced {
                            mode: "lockdown",
                            digest,
                            fallback: Some(e.to_string()),
                        })
                    }
                    Err(e2) => {
                        self.audit.record(
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
        if self.set_exemptions(backend, both, actor, false)? {
            self.exemptions_unrecorded = true;
        }
        Ok(())
    }

    /// After a policy table is in force: its protected destinations become the blocklists'
    /// exemptions (and the protection a later blocklist is compiled with).
    fn follow_exemptions(
        &mut self,
        backend: &mut dyn Backend,
        now: Vec<Protected>,
        actor: &Actor,
    ) -> Result<(), DeviceError> {
        self.protected = Some(now.clone());
        self.set_exemptions(backend, now, actor, true).map(|_| ())
    }

    /// Refill the blocklist table's exemption chains (the sets are not touched). A success
    /// is audited, with the overlaps that follow, when `record` says so (it changed
    /// something now or in an earlier, unrecorded step); a failure always. On failure the
    /// compiled exemptions are still kept as wanted, so the next drift check finds the
    /// difference and replaces the table. Returns whether the chains were changed.
    fn set_exemptions(
        &mut self,
        backend: &mut dyn Backend,
        to: Vec<Protected>,
        actor: &Actor,
        record: bool,
    ) -> Result<bool, DeviceError> {
        let Some(rs) = self.enforced_intel.as_mut() else {
            return Ok(false);
        };
        let changed = rs.protected != to;
        let result = if changed {
            update_exemptions(backend, rs, &to)
        } else {
            Ok(())
        };
        rs.protected = to;
        let overlaps = rs.overlaps();
        let n = rs.protected.len();
        match result {
            Ok(()) => {
                if record && (changed || self.exemptions_unrecorded) {
                    let entry = Entry::new("intel.exempt", Outcome::Ok, actor.clone()).reason(
                        format!("{n} policy-named destination(s) exempt from the blocklists"),
                    );
                    self.audit.record(with_overlaps(entry, &overlaps));
                    self.exemptions_unrecorded = false;
                }
                self.intel_overlaps = overlaps;
            }
            Err(e) => {
                self.audit.record(
                    Entry::new("intel.exempt", Outcome::Error, actor.clone()).reason(format!(
                        "blocklist exemptions not updated: {e}; the table is replaced at the next check"
                    )),
                );
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
        actor: Actor,
    ) -> Result<usize, DeviceError> {
        let mut rs = compile_intel(self.intel.as_ref().map(Verified::payload));
        rs.protected = self
            .protected
            .clone()
            .unwrap_or_else(|| protected(&self.effective()));
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
                    .record(entry.reason(format!("{} entries, table {how}", rs.len())));
                let n = rs.len();
                self.enforced_intel = Some(rs);
                self.intel_overlaps = overlaps;
                self.intel_failure = None;
                Ok(n)
            }
            Err(e) => {
                self.audit
                    .record(
                        Entry::new("intel.enforce", Outcome::Error, actor).reason(format!(
                            "blocklists not updated: {e}; the previous ones stay"
                        )),
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
        self.audit.record(
            Entry::new("network.status", Outcome::Ok, actor).transition(before, after.clone()),
        );
        Ok(Some(after))
    }

    /// Link notifications were lost (`why`, noticed at `at`) and the watcher read every link
    /// again: `links` replaces what was known. The gap is audited (`network.links`, with the
    /// network status before and after), whatever changed. Returns the status if it changed.
    pub fn links_resynced(
        &mut self,
        links: &[LinkState],
        why: &str,
        at: &str,
        actor: Actor,
    ) -> Result<Option<String>, DeviceError> {
        let before = self.network_status();
        self.set_links(links);
        let after = self.network_status();
        self.audit.append(
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
                self.audit.append(
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
            self.audit.append(
                Entry::new("network.check", Outcome::Ok, actor.clone())
                    .reason(format!("the ruleset reads back again (after: {was})"))
                    .digest("ruleset", digest.clone()),
            )?;
        }
        if let Some((Err(e), _)) = check
            && let Some(rs) = &self.enforced_rs
        {
            let what = e.to_string();
            self.audit.record(
                Entry::new("network.drift", Outcome::Error, actor.clone())
                    .reason(format!("{what}; restoring"))
                    .digest("ruleset", canonical_digest(rs)),
            );
            self.enforce(backend, actor.clone())?;
            found = Some(what);
        } else {
            self.retry_failed_enforcement(backend, &actor)?;
        }
        // Reading the blocklist chains back costs about half a second with 100k entries:
        // with nftables notifications watched it is only a backstop (see drift.rs).
        if self.watch.intel_due()
            && let Some(rs) = &self.enforced_intel
            && !intel_chains_intact(backend, rs).unwrap_or(false)
        {
            let what = "the blocklist table was removed or its rules edited".to_owned();
            self.audit.record(
                Entry::new("intel.drift", Outcome::Error, actor.clone())
                    .reason(format!("{what}; restoring")),
            );
            self.enforced_intel = None;
            // A failed re-apply is recorded by enforce_intel and tried again next interval;
            // it must not end the daemon (the policy table is separate and stays).
            let _ = self.enforce_intel(backend, actor);
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
        actor: &Actor,
    ) -> Result<(), DeviceError> {
        use std::time::{Duration, Instant};
        let policy_failed = matches!(
            self.enforcement,
            Enforcement::Failed { .. } | Enforcement::Fallback { .. }
        );
        if !policy_failed && self.intel_failure.is_none() {
            self.retry = None;
            return Ok(());
        }
        let now = Instant::now();
        let (due, pause) = *self
            .retry
            .get_or_insert((now + Duration::from_secs(1), Duration::from_secs(1)));
        if now < due {
            return Ok(());
        }
        let next = (pause * 2).min(Duration::from_secs(300));
        self.retry = Some((now + next, next));
        if policy_failed {
            match self.enforce(backend, actor.clone()) {
                Ok(_) => {}
                Err(DeviceError::Enforce(_)) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        if self.intel_failure.is_some() {
            // Replaced whole: the exemption chains may differ from what is recorded as wanted.
            self.enforced_intel = None;
            match self.enforce_intel(backend, actor.clone()) {
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
        let saved = self.store.save(&next);
        if let Err(e) = self.note_state(saved) {
            self.audit.record(
                Entry::new("privacy.set", Outcome::Error, actor)
                    .reason(format!("not saved: {e}; privacy stays {}", name(from))),
            );
            return Err(e.into());
        }
        self.state = next;
        Ok(())
    }

    /// Mark a required setup step complete, persisted and audited. A step the policy does
    /// not require is refused (and audited); a step already complete changes nothing.
    /// Returns whether the state changed. The network follows on the next [`Self::enforce`].
    pub fn complete_step(&mut self, step: &str, actor: Actor) -> Result<bool, DeviceError> {
        let required = self
            .policy
            .as_ref()
            .is_some_and(|p| p.payload().setup.required_steps.iter().any(|s| s == step));
        if !required {
            let why = format!("{step:?} is not a setup step the policy requires");
            self.audit
                .append(Entry::new("setup.step", Outcome::Refused, actor).reason(why.clone()))?;
            return Err(DeviceError::UnknownStep(why));
        }
        if self.state.completed_steps.contains(step) {
            return Ok(false);
        }
        let mut next = self.state.clone();
        next.completed_steps.insert(step.to_owned());
        let pending = |st: &DeviceState| {
            self.policy.as_ref().map_or(0, |p| {
                p.payload()
                    .setup
                    .required_steps
                    .iter()
                    .filter(|s| !st.completed_steps.contains(*s))
                    .count()
            })
        };
        self.audit.append(
            Entry::new("setup.step", Outcome::Ok, actor.clone())
                .transition(
                    format!("{} pending", pending(&self.state)),
                    format!("{} pending", pending(&next)),
                )
                .reason(format!("step {step} complete")),
        )?;
        let saved = self.store.save(&next);
        if let Err(e) = self.note_state(saved) {
            self.audit.record(
                Entry::new("setup.step", Outcome::Error, actor)
                    .reason(format!("not saved: {e}; step {step} stays pending")),
            );
            return Err(e.into());
        }
        self.state = next;
        Ok(true)
    }

    /// Keep track of the state directory's health from the outcome of a write to it: a
    /// failed write opens a fault (posture names it), a successful one closes it (and says
    /// so in the audit log).
    fn note_state<T>(&mut self, r: Result<T, StateError>) -> Result<T, StateError> {
        match &r {
            Ok(_) => self.state_recovered(),
            Err(StateError::Io { path, source }) => {
                if self.state_fault.is_none() {
                    let f = StorageFault::new("state directory", path, source, Timestamp::now());
                    tracing::error!("state not written: {}", f.describe());
                    self.state_fault = Some(f);
                }
            }
            Err(_) => {}
        }
        r
    }

    fn state_recovered(&mut self) {
        if let Some(f) = self.state_fault.take() {
            self.audit.record(
                Entry::new("state.storage", Outcome::Ok, Actor::this_process()).reason(format!(
                    "the state directory takes writes again (failed: {})",
                    f.describe()
                )),
            );
        }
    }

    /// The periodic check of storage that failed: the audit log writes its gap record if it
    /// can, and a failed state directory is written a probe file (created, synced, removed).
    /// Each that works again clears its posture reason.
    pub fn probe_storage(&mut self) {
        self.audit.probe();
        if self.state_fault.is_some() {
            let probe = self.store.paths().state_dir().join(".probe");
            let r = crate::files::atomic::write_atomic(&probe, b"probe\n", 0o600)
                .and_then(|()| std::fs::remove_file(&probe))
                .map_err(|source| StateError::Io {
                    path: probe.clone(),
                    source,
                });
            if r.is_err() {
                let _ = std::fs::remove_file(&probe);
            }
            let _ = self.note_state(r);
        }
    }

    /// The storage failures in effect, as posture reasons: which store, which path, which
    /// errno, since when (and for the audit log, how many records were not written).
    pub fn storage_faults(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(g) = self.audit.gap() {
            out.push(g.posture_reason());
        }
        if let Some(f) = &self.state_fault {
            out.push(format!(
                "{}; no change can be made until it takes writes (the state in force stays)",
                f.describe()
            ));
        }
        out
    }

    /// Whether an ordinary user may turn privacy mode off (the policy says so).
    pub fn user_may_disable_privacy(&self) -> bool {
        self.policy
            .as_ref()
            .is_some_and(|p| p.payload().privacy.user_may_disable)
    }

    /// How trustd confined itself (posture shows it).
    pub fn set_confinement(&mut self, how: String) {
        self.confinement = Some(how);
    }

    /// The posture of the device now.
    pub fn posture(&self, now: Timestamp) -> Posture {
        let eff = self.effective();
        let status = self.network_status();
        let tunnel_down = matches!(&eff.network, NetworkPlan::Enforce(n) if n.mode == NetworkMode::VpnRequired)
            && self.tunnel_up().is_none();
        let freshness = self.freshness(now).reasons();
        let mut p = posture::posture(&posture::Input {
            state: &self.state,
            condition: &self.condition,
            effective: &eff,
            policy: self.policy.as_ref().map(|p| PolicyInfo {
                serial: p.payload().serial,
                digest: p.digest().to_owned(),
                expires_at: p.payload().expires_at,
            }),
            now,
            enforcement: &self.enforcement,
            network_status: &status,
            tunnel_down,
            drift: self.drift.as_ref().map(|(n, w)| (*n, w.as_str())),
            intel_failure: self.intel_failure.as_deref(),
            check_failure: self.check_failure.as_deref(),
            intel_overlaps: self.blocklist_overlaps().as_deref(),
            audit_problems: &self.audit_problems,
            audit_damage: &self.audit_damage,
            audit_head: self.audit.head(),
            landlock_abi: crate::sys::landlock_abi(),
            freshness: &freshness,
            confinement: self.confinement.as_deref(),
            storage: &self.storage_faults(),
        });
        if let Some(why) = self.tpm_problem() {
            p.level = p.level.max(posture::Level::Degraded);
            p.reasons.push(why);
        }
        if let Some(why) = &self.tpm_unavailable {
            p.evidence =
                posture::software_evidence(&format!("the TPM configured is not in use ({why})"));
        } else if let Some(id) = self.tpm_identity() {
            p.evidence = (
                crate::report::SIGNER_TPM.to_owned(),
                format!(
                    "reports carry a TPM quote by the attestation key {} over trustd's PCR {}",
                    id.ak_name,
                    crate::tpm::TRUSTD_PCR
                ),
            );
        }
        p
    }

    /// The device's handle for `verifier` (see [`DeviceSecret::handle`]).
    pub fn device_handle(&self, verifier: &str) -> Result<String, DeviceError> {
        if !crate::policy::is_valid_name(verifier) {
            return Err(DeviceError::CommandRefused(format!(
                "{verifier:?} is not a verifier id (1 to 64 of [A-Za-z0-9._-], starting alphanumeric)"
            )));
        }
        self.secret
            .as_ref()
            .map(|s| s.handle(verifier))
            .ok_or_else(|| {
                DeviceError::CommandRefused(format!(
                    "the device is {}: its secret is destroyed and it has no handles",
                    self.state.lifecycle.as_str()
                ))
            })
    }

    /// May this app start now? (The decision; the caller audits.)
    pub fn check_launch(&self, app_id: &str, exe: &str) -> crate::launch::Decision {
        crate::launch::decide(
            self.policy.as_ref().map(Verified::payload),
            Overlay {
                privacy: self.state.privacy_mode,
                completed_steps: &self.state.completed_steps,
                lifecycle: self.state.lifecycle,
            },
            app_id,
            exe,
        )
    }

    /// Verify a signed lifecycle command, check that it is bound to this device (its handle
    /// for the issuer) and that the lifecycle allows it, then record it, persist the new
    /// lifecycle with the command serial in one write, and carry out its effects: revoke and
    /// retire destroy the device secret; enrolling again after lost state makes a new one.
    /// Returns the lifecycle before and after. The network follows on the next
    /// [`Self::enforce`].
    pub fn apply_command(
        &mut self,
        bytes: &[u8],
        actor: Actor,
        now: Timestamp,
    ) -> Result<(Lifecycle, Lifecycle), DeviceError> {
        let v = self.admit(bytes, actor.clone(), now, |b, root, now, held| {
            verify::<LifecycleCommand>(b, root, now, held)
        })?;
        let cmd = v.payload();
        let from = self.state.lifecycle;
        let refuse = |this: &Self, why: String| -> Result<(Lifecycle, Lifecycle), DeviceError> {
            this.audit.append(
                Entry::new("command.apply", Outcome::Refused, actor.clone())
                    .reason(why.clone())
                    .digest("input", v.digest())
                    .digest("device", cmd.device.clone()),
            )?;
            Err(DeviceError::CommandRefused(why))
        };
        let bound = self.secret.as_ref().map(|s| s.handle(&cmd.issuer));
        if bound.as_deref() != Some(cmd.device.as_str()) {
            let why = match bound {
                Some(_) => format!(
                    "the command is for device {} of {}, not this one",
                    cmd.device, cmd.issuer
                ),
                None => format!(
                    "this device is {} and has no secret: no command can be bound to it",
                    from.as_str()
                ),
            };
            return refuse(self, why);
        }
        let to = match from.after(cmd.action) {
            Ok(to) => to,
            Err(why) => return refuse(self, why),
        };
        self.audit.append(
            Entry::new("command.apply", Outcome::Ok, actor.clone())
                .transition(from.as_str(), to.as_str())
                .reason(format!("{} by {}", cmd.action.as_str(), cmd.issuer))
                .digest("input", v.digest())
                .digest("device", cmd.device.clone()),
        )?;
        let mut next = self.state.clone();
        // The envelope first (its serial is the floor should state.json be lost), then the
        // state that names the new lifecycle and the command serial, in one write. If the
        // state cannot be saved, the previous envelope is put back: a refused command
        // raises no floor.
        let saved = self.store.install_with(&v, &mut next, |n| n.lifecycle = to);
        if let Err(e) = self.note_state(saved) {
            self.audit.record(
                Entry::new("command.apply", Outcome::Error, actor)
                    .reason(format!("not saved: {e}; lifecycle stays {}", from.as_str())),
            );
            return Err(e.into());
        }
        self.state = next;
        let paths = self.store.paths().clone();
        // The new lifecycle is saved: whatever happens to the secret now, the caller must
        // still enforce it, so a failure here is recorded and finished at the next start,
        // never returned as "nothing changed".
        let effect = if matches!(to, Lifecycle::Revoked | Lifecycle::Retired) {
            self.secret = None;
            settle_secret(&paths, &self.audit, to, actor.clone()).map(|_| ())
        } else if cmd.action == LifecycleAction::Enroll && from == Lifecycle::Unknown {
            new_secret(
                &paths,
                &self.audit,
                actor.clone(),
                "present",
                "re-enrolled after lost state: every handle changes",
            )
            .map(|s| self.secret = Some(s))
        } else {
            Ok(())
        };
        if let Err(e) = effect {
            // The lifecycle is in force: a record that cannot be written now is counted for
            // the gap record, never answered as "nothing changed".
            self.audit.record(
                Entry::new("device.secret", Outcome::Error, actor).reason(format!(
                    "lifecycle {} is in force, but the device secret was not updated: {e}; the next start finishes it",
                    to.as_str()
                )),
            );
        }
        Ok((from, to))
    }

    /// The checkpoint origin (and note key name) of this device's key.
    pub fn origin(&self) -> String {
        crate::report::origin(&self.key.verifying_key())
    }

    /// Sign a checkpoint of the audit log as it is now and store it (the `checkpoint` file).
    /// Refused if the log no longer extends the last checkpoint this key signed (unless
    /// a damage record names that one). If nothing was logged since the stored checkpoint,
    /// that one is returned. Otherwise an `audit.checkpoint` record announcing the size
    /// comes first, inside the checkpoint: a later open tells a removed or older
    /// checkpoint file from it.
    pub fn checkpoint(&self) -> Result<String, DeviceError> {
        use crate::audit::checkpoint::{checkpoint_log, parse_and_verify, read_checkpoint};
        let origin = self.origin();
        let stored = read_checkpoint(self.audit.dir())
            .ok()
            .flatten()
            .and_then(|n| {
                let cp = parse_and_verify(&n, &origin, &self.key.verifying_key()).ok()?;
                Some((n, cp))
            });
        if let Some((note, cp)) = stored
            && cp.origin == origin
            && (cp.size, cp.root) == self.audit.tree_head()
        {
            return Ok(note);
        }
        let size = self.audit.tree_head().0 + 1;
        // The intent first: a stop between the announcement and the stored checkpoint is
        // then told apart from a checkpoint removed afterwards (see `PENDING_FILE`).
        crate::audit::checkpoint::write_pending(self.audit.dir(), size)?;
        self.audit.append(
            Entry::new(CHECKPOINT_KIND, Outcome::Ok, Actor::this_process())
                .reason(format!(
                    "a checkpoint of at least {size} records (this one included) is signed next"
                ))
                .digest("size", size.to_string()),
        )?;
        let signed = checkpoint_log(&self.audit, &origin, &origin, &self.key);
        if let Err(e) = crate::audit::checkpoint::clear_pending(self.audit.dir()) {
            tracing::warn!("{e}");
        }
        signed
            .map(|(cp, note)| {
                self.measure_checkpoint(&cp);
                note
            })
            .or_else(|e| {
                self.audit.append(
                    Entry::new(CHECKPOINT_KIND, Outcome::Error, Actor::this_process())
                        .reason(format!("the checkpoint announced was not signed: {e}"))
                        .digest("size", size.to_string()),
                )?;
                Err(DeviceError::Checkpoint(e.to_string()))
            })
    }

    /// Damage records of the audit log no admin has acknowledged: (seq, reason).
    pub fn audit_damage(&self) -> &[(u64, String)] {
        &self.audit_damage
    }

    /// An admin acknowledges the audit log's damage recorded in records up to `through`
    /// (`u64::MAX`: all). Recorded as an `audit.acknowledge` record naming the damage
    /// records it covers; they stay in the log. Posture stops showing them. Refused if no
    /// unacknowledged damage record is at or below `through`.
    pub fn acknowledge_damage(
        &mut self,
        through: u64,
        actor: Actor,
    ) -> Result<String, DeviceError> {
        let covered: Vec<u64> = self
            .audit_damage
            .iter()
            .map(|(s, _)| *s)
            .filter(|s| *s <= through)
            .collect();
        let Some(&last) = covered.last() else {
            return Err(DeviceError::CommandRefused(
                if self.audit_damage.is_empty() {
                    "no audit log damage awaits acknowledgement".to_owned()
                } else {
                    format!(
                        "no unacknowledged damage record at or below record {through} (the first is record {})",
                        self.audit_damage[0].0
                    )
                },
            ));
        };
        let list = covered
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let r = self.audit.append(
            Entry::new(ACKNOWLEDGE_KIND, Outcome::Ok, actor)
                .reason(format!(
                    "an admin acknowledged the audit log damage recorded in record(s) {list}; those records stay in the log"
                ))
                .digest("through", last.to_string())
                .digest("records", list.clone()),
        )?;
        self.audit_damage.retain(|(s, _)| *s > last);
        Ok(format!(
            "acknowledged the damage recorded in record(s) {list} (acknowledgement is record {})",
            r.seq
        ))
    }

    /// Check the whole audit log now. Returns the records read and every problem found,
    /// recorded damage no admin acknowledged included; posture shows the chain's problems
    /// that no damage record names.
    pub fn verify_audit(&mut self) -> Result<(u64, Vec<String>), DeviceError> {
        let mut insp = crate::audit::damage::inspect(self.audit.dir(), None)?;
        // A torn tail that is this writer's own failed write (the storage failed mid-batch)
        // is neither tamper nor damage: the next write covers it.
        if let Some((seg, n)) = self.audit.unfinished() {
            let own = |p: &crate::audit::Problem| {
                matches!(p, crate::audit::Problem::TornTail { segment, bytes }
                    if *segment == seg && *bytes <= n)
            };
            let keep: Vec<bool> = insp.report.problems.iter().map(|p| !own(p)).collect();
            if keep.len() == insp.findings.len() {
                let mut k = keep.iter();
                insp.findings.retain(|_| *k.next().unwrap_or(&true));
            }
            insp.report.problems.retain(|p| !own(p));
        }
        let history = self.audit.history();
        let mut all: Vec<String> = insp
            .report
            .problems
            .iter()
            .map(ToString::to_string)
            .collect();
        // Damage on record but not acknowledged keeps the check failing: the log is
        // damaged-then-recorded, not intact.
        all.extend(self.audit_damage.iter().map(|(seq, why)| {
            format!("damage recorded in record {seq}, not yet acknowledged: {why}")
        }));
        let unrecorded: Vec<String> = insp
            .report
            .problems
            .iter()
            .zip(&insp.findings)
            .filter(|(_, f)| !history.known.contains(&f.id()))
            .map(|(p, _)| p.to_string())
            .collect();
        // All of them together may be bound by one digest of a damage record.
        let refs: Vec<&crate::audit::damage::Finding> = insp.findings.iter().collect();
        self.audit_problems = if history.covers(&refs) {
            Vec::new()
        } else {
            unrecorded
        };
        Ok((insp.report.records, all))
    }

    /// Records in the last stored checkpoint (0: none).
    pub fn checkpointed_size(&self) -> u64 {
        let origin = self.origin();
        crate::audit::checkpoint::read_checkpoint(self.audit.dir())
            .ok()
            .flatten()
            .and_then(|n| {
                crate::audit::checkpoint::parse_and_verify(&n, &origin, &self.key.verifying_key())
                    .ok()
            })
            .map_or(0, |c| c.size)
    }

    /// A signed posture report answering `nonce`: the posture, a fresh checkpoint, and the
    /// evidence, as a DSSE envelope signed by the device key.
    pub fn report(&self, nonce: &str, now: Timestamp) -> Result<String, DeviceError> {
        if !crate::report::valid_nonce(nonce) {
            return Err(DeviceError::CommandRefused(
                "a nonce is 8 to 128 characters of [A-Za-z0-9_-]".into(),
            ));
        }
        let checkpoint = self.checkpoint()?;
        let p = self.posture(now);
        let snapshot = crate::dbus::posture_json(&p);
        let report = crate::report::Report {
            schema: crate::report::REPORT_SCHEMA.into(),
            nonce: nonce.to_owned(),
            time: now,
            origin: self.origin(),
            posture: snapshot,
            evidence: crate::report::Evidence {
                policy_digest: p.policy_digest.clone(),
                ruleset_digest: p.ruleset_digest.clone(),
                checkpoint,
                boot_id: crate::sys::boot_id(),
                kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                    .map(|s| s.trim().to_owned())
                    .unwrap_or_default(),
                landlock_abi: crate::sys::landlock_abi(),
            },
        };
        let Some(tpm) = &self.tpm else {
            return crate::report::sign_report_v2(&report, &self.key, Vec::new(), |_| Ok(None))
                .map_err(DeviceError::Checkpoint);
        };
        // The checkpoint reported is the last one measured (one stored before the TPM was
        // attached is measured now).
        if let Ok(cp) = crate::audit::checkpoint::parse_and_verify(
            &report.evidence.checkpoint,
            &report.origin,
            &self.key.verifying_key(),
        ) && !measured_is(&lock_tpm(tpm), &cp)
        {
            self.measure_checkpoint(&cp);
        }
        // Proofs that the log reported extends every tree head measured this boot.
        let size = self.audit.tree_head().0;
        let heads: std::collections::BTreeSet<u64> =
            crate::tpm::verify::measured_heads(lock_tpm(tpm).events())
                .into_iter()
                .map(|(s, _)| s)
                .filter(|s| (1..size).contains(s))
                .collect();
        let proofs = heads
            .into_iter()
            .filter_map(|s| self.audit.consistency_proof(s, size).ok())
            .collect();
        crate::report::sign_report_v2(&report, &self.key, proofs, |q| {
            lock_tpm(tpm)
                .attest(q)
                .map(Some)
                .map_err(|e| format!("TPM quote: {e}"))
        })
        .map_err(DeviceError::Checkpoint)
    }

    /// Use `tpm` for evidence from now on: the measurement log under the runtime directory
    /// is checked against trustd's PCR, the start is measured (with the audit log's tree
    /// head) and recorded with the attestation key's name. Fails only when the log cannot
    /// be opened or the PCR read; a failed measurement shows in posture.
    pub fn attach_tpm(
        &mut self,
        tpm: Box<dyn crate::tpm::Tpm>,
    ) -> Result<(), crate::tpm::TpmError> {
        let id = tpm.identity().clone();
        let m = crate::tpm::Measurements::open(tpm, &self.store.paths().measurement_log())?;
        let (size, root) = self.audit.tree_head();
        let detail = BTreeMap::from([
            ("version".to_owned(), env!("CARGO_PKG_VERSION").to_owned()),
            ("boot_id".to_owned(), crate::sys::boot_id()),
            ("audit_size".to_owned(), size.to_string()),
            ("audit_root".to_owned(), crate::bundle::hex(&root)),
            ("ak".to_owned(), id.ak_name.clone()),
        ]);
        let m = std::sync::Mutex::new(m);
        self.tpm = Some(m);
        // A failed measurement is kept for posture (the Measurements' problem) and recorded.
        self.measure(crate::tpm::Kind::Start, detail);
        self.tpm_unavailable = None;
        let mut entry = Entry::new("tpm.attach", Outcome::Ok, Actor::this_process())
            .transition(
                "none",
                if id.created {
                    "ak-created"
                } else {
                    "ak-loaded"
                },
            )
            .digest("ak", id.ak_name);
        if let Some(why) = id.replaced {
            entry = entry.reason(format!(
                "the earlier attestation key no longer loads ({why}); a new one was made"
            ));
        }
        self.audit.record(entry);
        Ok(())
    }

    /// A TPM is configured but cannot be used: posture says so, reports are signed by the
    /// software key only.
    pub fn tpm_unavailable(&mut self, why: String) {
        self.audit.record(
            Entry::new("tpm.attach", Outcome::Error, Actor::this_process()).reason(why.clone()),
        );
        self.tpm_unavailable = Some(why);
    }

    /// `TPM2_ActivateCredential` of a verifier's challenge (the buffers of its
    /// `TPM2B_ID_OBJECT` and `TPM2B_ENCRYPTED_SECRET`, each at most
    /// [`crate::tpm::credential::MAX_PART`] bytes) by the attestation key and the endorsement
    /// key: the credential recovered, which shows the verifier that the AK lives in the TPM
    /// of that EK. Audited (`tpm.activate-credential`) whatever the outcome; changes nothing
    /// else.
    pub fn activate_credential(
        &self,
        blob: Vec<u8>,
        secret: Vec<u8>,
        actor: Actor,
    ) -> Result<Vec<u8>, DeviceError> {
        let c = crate::tpm::credential::Credential { blob, secret };
        let input = crate::bundle::sha256_hex(&[&c.blob[..], &c.secret[..]].concat());
        let r = match (&self.tpm, c.check_sizes()) {
            (None, _) => Err(DeviceError::Credential(match &self.tpm_unavailable {
                Some(why) => format!("the TPM configured is not in use ({why})"),
                None => "no TPM is configured: evidence is signed by the software key only".into(),
            })),
            (Some(_), Err(e)) => Err(DeviceError::Credential(e.to_string())),
            (Some(t), Ok(())) => lock_tpm(t).activate_credential(&c).map_err(|e| match e {
                crate::tpm::TpmError::Refused { reason, .. } => DeviceError::Credential(reason),
                e => DeviceError::Tpm(e),
            }),
        };
        let (outcome, reason) = match &r {
            Ok(_) => (Outcome::Ok, None),
            Err(DeviceError::Credential(why)) => (Outcome::Refused, Some(why.clone())),
            Err(e) => (Outcome::Error, Some(e.to_string())),
        };
        let mut entry =
            Entry::new("tpm.activate-credential", outcome, actor).digest("input", input);
        if let Some(id) = self.tpm_identity() {
            entry = entry.digest("ak", id.ak_name);
        }
        if let Some(why) = reason {
            entry = entry.reason(why);
        }
        self.audit.record(entry);
        r
    }

    /// The attestation key and EK, when a TPM is attached.
    pub fn tpm_identity(&self) -> Option<crate::tpm::Identity> {
        self.tpm.as_ref().map(|t| lock_tpm(t).identity().clone())
    }

    fn tpm_problem(&self) -> Option<String> {
        if let Some(why) = &self.tpm_unavailable {
            return Some(format!(
                "the TPM configured is not in use ({why}): evidence is signed by the software key only"
            ));
        }
        let t = lock_tpm(self.tpm.as_ref()?);
        t.problem()
            .map(|p| format!("TPM measurements cannot be trusted this boot: {p}"))
    }

    fn measure(&self, kind: crate::tpm::Kind, detail: BTreeMap<String, String>) {
        let Some(t) = &self.tpm else { return };
        if let Err(e) = lock_tpm(t).measure(kind, detail) {
            self.audit.record(
                Entry::new("tpm.measure", Outcome::Error, Actor::this_process())
                    .reason(e.to_string()),
            );
        }
    }

    fn measure_enforcement(&self, mode: &str, ruleset: &str) {
        let policy = self
            .policy
            .as_ref()
            .map(|p| p.digest().to_owned())
            .unwrap_or_default();
        self.measure(
            crate::tpm::Kind::Enforce,
            BTreeMap::from([
                ("mode".to_owned(), mode.to_owned()),
                ("policy".to_owned(), policy),
                ("ruleset".to_owned(), ruleset.to_owned()),
            ]),
        );
    }

    fn measure_checkpoint(&self, cp: &crate::audit::checkpoint::Checkpoint) {
        self.measure(
            crate::tpm::Kind::Checkpoint,
            BTreeMap::from([
                ("origin".to_owned(), cp.origin.clone()),
                ("size".to_owned(), cp.size.to_string()),
                ("root".to_owned(), crate::bundle::hex(&cp.root)),
            ]),
        );
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

    /// Verify and install a trust-root rotation (signed by the current root's threshold and
    /// the new root's own). Every role whose keys or threshold it changes starts over in
    /// the same transition (fast-forward recovery, see [`crate::state::recovery`]): its
    /// floor restarts from the installed input the new root still verifies, or 0, and an
    /// installed input it no longer verifies leaves force (a policy: lockdown with no
    /// allowlist; an intel feed: no blocklist; the last command: its serial is no floor)
    /// and is set aside. The lifecycle stays as it is. One record names the roles started
    /// over and what left force. The network follows on the next [`Self::enforce`] and
    /// [`Self::enforce_intel`].
    pub fn apply_trust_root(
        &mut self,
        bytes: &[u8],
        actor: Actor,
        now: Timestamp,
    ) -> Result<Applied, DeviceError> {
        let v = self.admit(bytes, actor.clone(), now, |b, root, now, _| {
            verify_rotation(b, root, now)
        })?;
        let new = v.payload();
        let mut next = self.state.clone();
        let under = next
            .floor_roles
            .clone()
            .unwrap_or_else(|| self.root.roles.clone());
        let command = std::fs::read(self.store.input_path(Role::Command)).ok();
        let installed = Installed::default()
            .with(
                Role::Policy,
                self.policy.as_ref().map(Verified::envelope_bytes),
            )
            .with(
                Role::Intel,
                self.intel.as_ref().map(Verified::envelope_bytes),
            )
            .with(Role::Command, command.as_deref());
        let resets = start_over(&mut next, &under, new, &installed);
        let kind = "trust-root.rotate";
        let (from, to) = (self.root.serial, new.serial);
        let mut entry = Entry::new(kind, Outcome::Ok, actor.clone())
            .transition(format!("serial {from}"), format!("serial {to}"))
            .digest("input", v.digest());
        entry = if resets.is_empty() {
            entry.reason("no role's keys or threshold changed: every floor stays".to_owned())
        } else {
            reset_entry(entry, &resets, "rotated")
        };
        let receipt = self.audit.append(entry)?;
        // The rotated root is the commit point: should the state below not be written, the
        // next load sees roles that differ from the ones the floors were set under and
        // starts them over itself.
        let stored = self.store.install(&v, &mut next);
        if let Err(e) = self.note_state(stored) {
            return self.not_in_force(
                kind,
                actor,
                receipt.seq,
                e,
                &format!("root serial {from}"),
                v.digest(),
            );
        }
        self.state = next;
        self.root = new.clone();
        let left = |role: Role| {
            resets
                .iter()
                .any(|r| r.change.role == role && r.left.is_some())
        };
        if left(Role::Policy) {
            self.policy = None;
        }
        if left(Role::Intel) {
            self.intel = None;
        }
        for r in resets.iter().filter(|r| r.left.is_some()) {
            // In force or not is decided above: a file left in place is refused by every
            // later load as well, since the root in force no longer verifies it.
            if let Err(e) = self.store.set_aside(r.change.role) {
                self.audit.record(
                    Entry::new(kind, Outcome::Error, actor.clone()).reason(format!(
                        "the {} that left force was not set aside: {e}; it stays out of force",
                        r.change.role
                    )),
                );
            }
        }
        Ok(Applied {
            from_serial: from,
            to_serial: to,
            digest: v.digest().to_owned(),
            audit_seq: receipt.seq,
            notes: Vec::new(),
        })
    }

    /// A verified input was recorded as record `seq` but could not be stored: say so in a
    /// second record (what stays in force: `stays`) and return the store's error.
    fn not_in_force<T>(
        &self,
        kind: &str,
        actor: Actor,
        seq: u64,
        e: StateError,
        stays: &str,
        digest: &str,
    ) -> Result<T, DeviceError> {
        // The store's error is the caller's answer even if this record cannot be written
        // either (it is then counted for the gap record).
        self.audit.record(
            Entry::new(kind, Outcome::Error, actor)
                .reason(format!("record {seq} not put in force: {e}; {stays} stays"))
                .digest("input", digest),
        );
        Err(e.into())
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
    fn install<P: Stored>(
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
        let stored = self.store.install(v, &mut self.state);
        if let Err(e) = self.note_state(stored) {
            return self.not_in_force(
                kind,
                actor,
                receipt.seq,
                e,
                &format!("serial {from}"),
                v.digest(),
            );
        }
        Ok(Applied {
            from_serial: from,
            to_serial: to,
            digest: v.digest().to_owned(),
            audit_seq: receipt.seq,
            notes: Vec::new(),
        })
    }
}
