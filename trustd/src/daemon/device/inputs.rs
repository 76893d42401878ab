//! Signed inputs: verify, record, then install. Every input (policy, intel feed, trust-root
//! rotation, lifecycle command) is checked by `bundle::verify` against the trust root and
//! the serial floor held, recorded in the audit log, then written through the state store;
//! a refusal is recorded with the input's digest, a failed write after the record by a
//! second record, and the previous input stays in force. Also the load of the state at open
//! and on reload.

use super::{Device, DeviceError};
use crate::audit::{Actor, AuditLog, Entry, Outcome};
use crate::bundle::{
    Payload, Role, TrustRoot, Verified, VerifyError, sha256_hex, verify, verify_rotation,
};
use crate::policy::{IntelFeed, LifecycleAction, LifecycleCommand, Policy};
use crate::state::{
    Condition, Installed, Lifecycle, Loaded, RoleReset, StateError, StateStore, Stored,
    load_trust_root, start_over,
};
use crate::timefmt::Timestamp;

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
pub(super) fn load_and_record(
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

impl Device {
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
        let bound = self.identity.handle(&cmd.issuer);
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
            self.identity
                .destroy_secret(&paths, &self.audit, to, actor.clone())
        } else if cmd.action == LifecycleAction::Enroll && from == Lifecycle::Unknown {
            self.identity
                .renew_secret(&paths, &self.audit, actor.clone())
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
        self.intel = Some(v.into_in_force());
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
        // The feed in force is held without its envelope: the stored one stands for it, if
        // it is that feed (same digest); else the rotation is refused and nothing changes
        // (whether the feed leaves force under the new root cannot be decided without it).
        let intel = match &self.intel {
            None => None,
            Some(held) => {
                let path = self.store.input_path(Role::Intel);
                let read = std::fs::read(&path).and_then(|b| {
                    if sha256_hex(&b) == held.digest() {
                        Ok(b)
                    } else {
                        Err(std::io::Error::other(format!(
                            "not the feed in force (sha256 {}, in force {})",
                            sha256_hex(&b),
                            held.digest()
                        )))
                    }
                });
                match read {
                    Ok(b) => Some(b),
                    Err(source) => {
                        let e = StateError::Io { path, source };
                        let why = format!(
                            "the stored intel feed could not be read back ({e}): the rotation \
                             is refused and the trust root and the feed in force stay; apply a \
                             feed again, then the rotation (docs/SECURITY.md, \"A rotation \
                             over a lost stored feed\")"
                        );
                        let entry =
                            Entry::new(format!("{}.apply", Role::Root), Outcome::Refused, actor)
                                .reason(why.clone())
                                .digest("input", v.digest());
                        self.audit.append(entry)?;
                        return Err(DeviceError::CommandRefused(why));
                    }
                }
            }
        };
        // Exhaustive: a new role does not compile until its installed input is given here.
        let installed = Installed::from_fn(|role| match role {
            // The root role never starts over (start_over skips it).
            Role::Root => None,
            Role::Policy => self.policy.as_ref().map(Verified::envelope_bytes),
            Role::Intel => intel.as_deref(),
            Role::Command => command.as_deref(),
        });
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
        for r in resets.iter().filter(|r| r.left.is_some()) {
            // Exhaustive: a new role decides here whether it is held in memory.
            match r.change.role {
                Role::Policy => self.policy = None,
                Role::Intel => self.intel = None,
                // The root is never reset; the last command is a floor, not held in force.
                Role::Root | Role::Command => {}
            }
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
