//! The device and the wall clock: which installed inputs are stale, whether the clock can be
//! believed, and the audit records of each change of either (see [`crate::freshness`]).
//!
//! Nothing here changes what is in force: time only ever changes what posture says and
//! what the log records. Each transition is recorded once while the daemon runs (an input
//! turning stale, the clock turning implausible or plausible again, a jump of the clock).

use std::collections::BTreeSet;

use super::{Device, DeviceError};
use crate::audit::{Actor, Entry, Outcome};
use crate::bundle::Role;
use crate::freshness::{Assessment, ClockWatch, Held, assess, build_time};
use crate::timefmt::Timestamp;

/// What the device has noticed about time since it started.
#[derive(Debug, Default)]
pub(super) struct TimeWatch {
    /// The wall clock against the monotonic one.
    clock: ClockWatch,
    /// Keys of the stale inputs and clock doubts already recorded.
    noted: BTreeSet<String>,
}

/// The key of a recorded clock doubt.
const CLOCK_KEY: &str = "clock:implausible";

impl Held {
    /// An installed signed input of `role`, with the `max_age` its policy sets for it.
    fn of<P: crate::bundle::Payload>(
        role: Role,
        p: &P,
        digest: &str,
        max_age: Option<u64>,
    ) -> Self {
        Self {
            role,
            serial: p.serial(),
            digest: digest.to_owned(),
            issued_at: p.issued_at(),
            expires_at: p.expires_at(),
            max_age,
        }
    }
}

impl Device {
    /// The installed inputs whose time matters: the policy, the intel feed (each with the
    /// policy's `max_age` for its role) and the trust root.
    fn held_inputs(&self) -> Vec<Held> {
        let max_age = self.policy.as_ref().and_then(|p| p.payload().max_age);
        let mut held = Vec::new();
        if let Some(p) = &self.policy {
            held.push(Held::of(
                Role::Policy,
                p.payload(),
                p.digest(),
                max_age.and_then(|m| m.policy),
            ));
        }
        if let Some(i) = &self.intel {
            held.push(Held::of(
                Role::Intel,
                i.payload(),
                i.digest(),
                max_age.and_then(|m| m.intel),
            ));
        }
        held.push(Held {
            role: Role::Root,
            serial: self.root.serial,
            digest: String::new(),
            issued_at: self.root.issued_at,
            expires_at: self.root.expires_at,
            max_age: None,
        });
        held
    }

    /// What the time `now` says about the installed inputs and the clock.
    pub fn freshness(&self, now: Timestamp) -> Assessment {
        assess(now, &self.held_inputs(), build_time())
    }

    /// Look at the clock (`now`, and CLOCK_BOOTTIME, which counts suspend) and record what changed since the
    /// last look: a jump of the wall clock, an input that turned stale, the clock turning
    /// implausible or plausible again. Returns the sentences recorded. Nothing in force
    /// changes. Call it on every periodic check.
    pub fn check_time(&mut self, now: Timestamp, actor: Actor) -> Result<Vec<String>, DeviceError> {
        let mut out = Vec::new();
        if let Some(jump) = self.time.clock.observe(now, crate::sys::boottime_ns()) {
            let why = jump.sentence();
            self.audit.append(
                Entry::new("clock.jump", Outcome::Ok, actor.clone())
                    .transition(jump.from.to_string(), jump.to.to_string())
                    .reason(why.clone()),
            )?;
            out.push(why);
        }
        let a = self.freshness(now);
        let mut current = BTreeSet::new();
        for s in &a.stale {
            let key = s.key();
            if !self.time.noted.contains(&key) {
                let why = s.sentence(now);
                let mut entry =
                    Entry::new(format!("{}.stale", s.held.role), Outcome::Ok, actor.clone())
                        .transition("fresh", "stale")
                        .reason(why.clone());
                if !s.held.digest.is_empty() {
                    entry = entry.digest("input", s.held.digest.clone());
                }
                self.audit.append(entry)?;
                out.push(why);
            }
            current.insert(key);
        }
        match (&a.clock, self.time.noted.contains(CLOCK_KEY)) {
            (Some(doubt), false) => {
                let why = doubt.sentence(now);
                self.audit.append(
                    Entry::new("clock.implausible", Outcome::Ok, actor)
                        .transition("plausible", "implausible")
                        .reason(why.clone()),
                )?;
                out.push(why);
                current.insert(CLOCK_KEY.to_owned());
            }
            (Some(_), true) => {
                current.insert(CLOCK_KEY.to_owned());
            }
            (None, true) => {
                let why =
                    format!("the clock reads {now} again, which nothing installed contradicts");
                self.audit.append(
                    Entry::new("clock.implausible", Outcome::Ok, actor)
                        .transition("implausible", "plausible")
                        .reason(why.clone()),
                )?;
                out.push(why);
            }
            (None, false) => {}
        }
        self.time.noted = current;
        Ok(out)
    }
}
