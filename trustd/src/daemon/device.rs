//! The device: the state directory and the audit log, opened for writing, and the parts
//! that own the rest (see docs/ARCHITECTURE.md, "The device and its parts"). Every
//! transition is audited.
//!
//! [`Device`] is the one door the engine (and the offline commands) go through. It owns the
//! signed inputs in force (trust root, state, policy, intel feed) and the stores, and
//! composes the parts, each owning its state:
//! - [`enforcement::Enforcer`]: what is in the kernel, drift checks and repair, links,
//!   blocklist exemptions, the fallback lockdown;
//! - [`identity::Identity`]: the device secret and key, device handles, checkpoints,
//!   signed reports, the TPM;
//! - `inputs.rs`: verifying, recording and installing signed inputs (policy, intel feed,
//!   trust-root rotation, lifecycle command), and loading the state at open and reload;
//! - [`clock::TimeWatch`]: stale inputs and the wall clock;
//! - [`facts::HostFacts`]: the host facts read once at open.
//!
//! The engine's record budget ([`budget::RecordBudget`]) lives here too, beside the
//! other parts of the core that own state.

use crate::Paths;
use crate::audit::damage::{ACKNOWLEDGE_KIND, REPAIR_KIND};
use crate::audit::{Actor, AuditLog, Entry, Options, Outcome};
use crate::bundle::{InForce, TrustRoot, Verified};
use crate::netfilter::Backend;
use crate::policy::{Effective, IntelFeed, Overlay, Policy, effective};
use crate::posture::{self, PolicyInfo, Posture};
use crate::state::store::StateLock;
use crate::state::{Condition, DeviceState, StateError, StateStore};
use crate::storage::StorageFault;
use crate::sys::netlink::{LinkEvent, LinkState};
use crate::sys::nft_events::Changes;
use crate::timefmt::Timestamp;
use std::collections::BTreeMap;

pub mod budget;
mod clock;
mod drift;
pub mod enforcement;
pub mod error;
pub mod facts;
pub mod identity;
mod inputs;

pub use drift::INTEL_BACKSTOP;
pub use enforcement::Enforced;
pub use error::{CredentialRefusal, DeviceError, ReportError, SecretError};
pub use facts::HostFacts;
pub use inputs::Applied;

use enforcement::{Ctx, Enforcer};
use identity::Identity;

/// What an enforcement reads from the device and does not own (see [`Ctx`]): built from
/// the device's fields, so that the enforcer alone is borrowed mutably.
macro_rules! ctx {
    ($dev:expr) => {
        Ctx {
            audit: &$dev.audit,
            effective: effective_of(&$dev.state, $dev.policy.as_ref()),
            policy: $dev.policy.as_ref(),
            intel: $dev.intel.as_ref(),
            identity: &$dev.identity,
        }
    };
}

/// The effective policy of `state` under `policy`.
fn effective_of(state: &DeviceState, policy: Option<&Verified<Policy>>) -> Effective {
    effective(
        policy.map(Verified::payload),
        Overlay {
            privacy: state.privacy_mode,
            completed_steps: &state.completed_steps,
            lifecycle: state.lifecycle,
        },
    )
}

/// The device's state and its audit log, opened for writing, and the parts that own the
/// rest (see the module documentation).
#[derive(Debug)]
pub struct Device {
    store: StateStore,
    root: TrustRoot,
    audit: AuditLog,
    state: DeviceState,
    policy: Option<Verified<Policy>>,
    /// Held without its envelope (the state directory keeps it): a large feed once.
    intel: Option<InForce<IntelFeed>>,
    condition: Condition,
    notes: Vec<String>,
    /// What is in the kernel and how it is kept there.
    enforcer: Enforcer,
    /// The device secret and key, and the TPM.
    identity: Identity,
    /// The host facts read at open.
    facts: HostFacts,
    audit_problems: Vec<String>,
    /// Damage records of the audit log no admin has acknowledged: (seq, reason).
    audit_damage: Vec<(u64, String)>,
    confinement: Option<String>,
    config_fault: Option<String>,
    time: clock::TimeWatch,
    /// The state directory's first failed write not yet followed by a successful one.
    state_fault: Option<StorageFault>,
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
        Self::open_with_facts(paths, actor, opts, HostFacts::read())
    }

    /// [`Self::open_with`] with the host facts given instead of read from the kernel (a
    /// test gives its own; posture and reports state them).
    pub fn open_with_facts(
        paths: &Paths,
        actor: Actor,
        opts: Options,
        facts: HostFacts,
    ) -> Result<Self, DeviceError> {
        let store = StateStore::new(paths.clone());
        let lock = store.lock()?;
        // The device key first: the audit log is checked against the checkpoint it signed
        // before any record is written.
        let (key, made) = identity::load_key(store.paths())?;
        let anchor = identity::anchor(&key);
        let (audit, report) = AuditLog::open_anchored(&paths.audit_dir(), opts, Some(&anchor))?;
        let (root, loaded) = inputs::load_and_record(&store, &audit, actor.clone(), "stopped")?;
        let secret =
            identity::settle_secret(store.paths(), &audit, loaded.state.lifecycle, actor.clone())?;
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
            intel: loaded.intel.map(Verified::into_in_force),
            condition: loaded.condition,
            notes: loaded.notes,
            enforcer: Enforcer::default(),
            identity: Identity::new(key, secret),
            facts,
            audit_problems: Vec::new(),
            audit_damage: report.unacknowledged,
            confinement: None,
            config_fault: None,
            time: clock::TimeWatch::default(),
            state_fault: None,
            _lock: lock,
        };
        if let Some(size) = report.interrupted_checkpoint {
            // Not damage: every record is there; only the signature the last run was about
            // to store is missing. Said in the log, then signed again.
            dev.audit.append(
                Entry::new(REPAIR_KIND, Outcome::Ok, Actor::this_process())
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
        let (root, loaded) =
            inputs::load_and_record(&self.store, &self.audit, actor.clone(), "running")?;
        self.identity.settle(
            self.store.paths(),
            &self.audit,
            loaded.state.lifecycle,
            actor,
        )?;
        self.root = root;
        self.state = loaded.state;
        self.policy = loaded.policy;
        self.intel = loaded.intel.map(Verified::into_in_force);
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

    /// The last-good intel feed (its envelope is in the state directory, not in memory).
    pub fn intel(&self) -> Option<&InForce<IntelFeed>> {
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
        effective_of(&self.state, self.policy.as_ref())
    }

    /// The host facts read at open.
    pub fn facts(&self) -> &HostFacts {
        &self.facts
    }

    // Enforcement: the enforcer acts, given what it reads from the device.

    /// Put the effective policy into the kernel and confirm it by read-back. If that fails,
    /// put lockdown (with the bootstrap allowlist) in place instead; if even that fails, the
    /// ruleset already in the kernel stays: nothing here removes enforcement. Every outcome is
    /// audited.
    pub fn enforce(
        &mut self,
        backend: &mut dyn Backend,
        actor: Actor,
    ) -> Result<Enforced, DeviceError> {
        self.enforcer.enforce(backend, &ctx!(self), actor)
    }

    /// Put the last-good intel feed's blocklists into their own table: element additions
    /// when only that changed, else one transaction replacing the table, verified by a full
    /// read-back. A failure keeps the previous blocklists and is audited; it never touches
    /// the policy table. Returns the entries in force.
    pub fn enforce_intel(
        &mut self,
        backend: &mut dyn Backend,
        actor: Actor,
    ) -> Result<usize, DeviceError> {
        self.enforcer.enforce_intel(backend, &ctx!(self), actor)
    }

    /// Blocklist entries that overlap protected destinations and do not apply there, as a
    /// sentence with counts by kind (never addresses); `None` if there are none.
    pub fn blocklist_overlaps(&self) -> Option<String> {
        self.enforcer.blocklist_overlaps()
    }

    /// Check that the kernel still holds the ruleset last enforced; if someone removed or
    /// edited it, audit the drift and put it back. Returns the drift found, if any.
    pub fn check_drift(
        &mut self,
        backend: &mut dyn Backend,
        actor: Actor,
    ) -> Result<Option<String>, DeviceError> {
        self.enforcer.check_drift(backend, &ctx!(self), actor)
    }

    /// Whether nftables notifications are watched (set once the watcher is subscribed; the
    /// periodic check then reads the blocklist table back only every [`INTEL_BACKSTOP`]).
    pub fn set_table_events(&mut self, on: bool) {
        self.enforcer.set_table_events(on);
    }

    /// Act on what nftables notifications said about trustd's tables: a foreign change is
    /// audited as drift (`network.drift`, `intel.drift`) with its kind, and the table put
    /// back; lost notifications are checked by a read-back first. Returns the drift found,
    /// if any.
    pub fn tables_changed(
        &mut self,
        backend: &mut dyn Backend,
        changes: &Changes,
        actor: Actor,
    ) -> Result<Option<String>, DeviceError> {
        self.enforcer
            .tables_changed(backend, &ctx!(self), changes, actor)
    }

    /// The links as they are now (at start, from a netlink dump; not audited).
    pub fn set_links(&mut self, links: &[LinkState]) {
        self.enforcer.set_links(links);
    }

    /// What the network is doing, as a person reads it: `direct`, `lockdown: setup
    /// incomplete (pending: eula)`, `vpn-required: tunnel wg0 up`, `vpn-required: tunnel
    /// down, blocking`.
    pub fn network_status(&self) -> String {
        self.enforcer.network_status(&self.effective())
    }

    /// Apply link changes the kernel reported; a change of the network status (a tunnel
    /// going down or up in vpn-required) is audited. Returns the new status if it changed.
    pub fn links_changed(
        &mut self,
        events: &[LinkEvent],
        actor: Actor,
    ) -> Result<Option<String>, DeviceError> {
        self.enforcer.links_changed(&ctx!(self), events, actor)
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
        self.enforcer
            .links_resynced(&ctx!(self), links, why, at, actor)
    }

    /// The links as trustd knows them: name and whether it is up (administratively and
    /// with carrier).
    pub fn links(&self) -> &BTreeMap<String, bool> {
        self.enforcer.links()
    }

    // The signed inputs in force and the state directory.

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

    /// Why the local configuration (`trustd.json`) could not be read, at start or at the
    /// last reload (`None`: it was read). While it is set, posture is `degraded` with this
    /// reason; each change is recorded in the audit log (`config.load`). The caller gives
    /// no group a role meanwhile (only uid 0 is admin), at start and at a reload alike.
    pub fn set_config_fault(&mut self, why: Option<String>, actor: Actor) {
        if why == self.config_fault {
            return;
        }
        let entry = match &why {
            Some(w) => Entry::new("config.load", Outcome::Error, actor).reason(format!(
                "{} not read: {w}",
                self.store.paths().config_file().display()
            )),
            None => Entry::new("config.load", Outcome::Ok, actor).reason(format!(
                "{} read",
                self.store.paths().config_file().display()
            )),
        };
        self.audit.record(entry);
        self.config_fault = why;
    }

    /// The posture of the device now: a function of the device's state in memory, its
    /// host facts and `now` only (nothing is read from the system here).
    pub fn posture(&self, now: Timestamp) -> Posture {
        let eff = self.effective();
        let status = self.enforcer.network_status(&eff);
        let tunnel_down = matches!(&eff.network, crate::policy::NetworkPlan::Enforce(n) if n.mode == crate::policy::NetworkMode::VpnRequired)
            && self.enforcer.tunnel_up(&eff).is_none();
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
            enforcement: self.enforcer.enforcement(),
            network_status: &status,
            tunnel_down,
            drift: self.enforcer.drift(),
            intel_failure: self.enforcer.intel_failure(),
            check_failure: self.enforcer.check_failure(),
            intel_overlaps: self.blocklist_overlaps().as_deref(),
            audit_problems: &self.audit_problems,
            audit_damage: &self.audit_damage,
            audit_head: self.audit.head(),
            landlock_abi: self.facts.landlock_abi,
            freshness: &freshness,
            confinement: self.confinement.as_deref(),
            config_fault: self.config_fault.as_deref(),
            storage: &self.storage_faults(),
        });
        self.identity.add_evidence(&mut p);
        p
    }

    // Identity: the device secret and key, checkpoints, reports, the TPM.

    /// The device's handle for `verifier` (see [`crate::state::secret::DeviceSecret::handle`]).
    pub fn device_handle(&self, verifier: &str) -> Result<String, DeviceError> {
        if !crate::policy::is_valid_name(verifier) {
            return Err(DeviceError::CommandRefused(format!(
                "{verifier:?} is not a verifier id (1 to 64 of [A-Za-z0-9._-], starting alphanumeric)"
            )));
        }
        self.identity.handle(verifier).ok_or_else(|| {
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

    /// The checkpoint origin (and note key name) of this device's key.
    pub fn origin(&self) -> String {
        self.identity.origin()
    }

    /// Sign a checkpoint of the audit log as it is now and store it (the `checkpoint` file).
    /// Refused if the log no longer extends the last checkpoint this key signed (unless
    /// a damage record names that one). If nothing was logged since the stored checkpoint,
    /// that one is returned. Otherwise an `audit.checkpoint` record announcing the size
    /// comes first, inside the checkpoint: a later open tells a removed or older
    /// checkpoint file from it.
    pub fn checkpoint(&self) -> Result<String, DeviceError> {
        self.identity.checkpoint(&self.audit)
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
        self.identity.checkpointed_size(&self.audit)
    }

    /// A signed posture report answering `nonce`: the posture, a fresh checkpoint, and the
    /// evidence (with the host facts read at open), as a DSSE envelope signed by the device
    /// key.
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
                boot_id: self.facts.boot_id.clone(),
                kernel: self.facts.kernel_release.clone(),
                landlock_abi: self.facts.landlock_abi,
            },
        };
        self.identity.sign_report(&self.audit, &report)
    }

    /// Use `tpm` for evidence from now on: the measurement log under the runtime directory
    /// is checked against trustd's PCR, the start is measured (with the audit log's tree
    /// head) and recorded with the attestation key's name. Fails only when the log cannot
    /// be opened or the PCR read; a failed measurement shows in posture.
    pub fn attach_tpm(
        &mut self,
        tpm: Box<dyn crate::tpm::Tpm>,
    ) -> Result<(), crate::tpm::TpmError> {
        self.identity.attach_tpm(
            &self.audit,
            &self.store.paths().measurement_log(),
            &self.facts.boot_id,
            tpm,
        )
    }

    /// A TPM is configured but cannot be used: posture says so, reports are signed by the
    /// software key only.
    pub fn tpm_unavailable(&mut self, why: String) {
        self.identity.tpm_unavailable(&self.audit, why);
    }

    /// `TPM2_ActivateCredential` of a verifier's challenge (the buffers of its
    /// `TPM2B_ID_OBJECT` and `TPM2B_ENCRYPTED_SECRET`, each at most
    /// [`crate::tpm::credential::MAX_PART`] bytes) by the attestation key and the endorsement
    /// key: the credential recovered, which shows the verifier that the AK lives in the TPM
    /// of that EK. Audited (`tpm.activate-credential`) whatever the outcome; changes nothing
    /// else. A refusal is [`DeviceError::Credential`], a TPM failure [`DeviceError::Tpm`].
    pub fn activate_credential(
        &self,
        blob: Vec<u8>,
        secret: Vec<u8>,
        actor: Actor,
    ) -> Result<Vec<u8>, DeviceError> {
        self.identity
            .activate_credential(&self.audit, blob, secret, actor)
    }

    /// The attestation key and EK, when a TPM is attached.
    pub fn tpm_identity(&self) -> Option<crate::tpm::Identity> {
        self.identity.tpm_identity()
    }
}
