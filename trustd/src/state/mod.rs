//! Persisted device state: serials per role, privacy mode, completed setup steps,
//! lifecycle, and the last-good signed inputs.
//!
//! Owns `/var/lib/trustd` (through [`crate::Paths`]) and nothing else. Every write is
//! atomic (see [`atomic`]). Loading never fails: missing or corrupt state loads as the most
//! restrictive state and says why, so that no error path can open the device up.

pub mod atomic;
pub mod input;
pub mod recovery;
pub mod secret;
pub mod store;

pub use input::{Stored, StoredRole};
pub use recovery::{Installed, LeftForce, RoleReset, start_over};
pub use store::{Condition, Loaded, StateError, StateStore, load_trust_root};

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::bundle::{Role, Roles};

/// The version of `state.json` this build writes and reads.
pub const STATE_VERSION: u32 = 1;

/// The lifecycle of the device in its management.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lifecycle {
    /// Not yet enrolled.
    Unenrolled,
    /// Managed and in use.
    Enrolled,
    /// Temporarily locked down by an admin.
    Suspended,
    /// Permanently locked down; the device secret is destroyed.
    Revoked,
    /// Taken out of service (final).
    Retired,
    /// The persisted state was lost or corrupt: treated as the most restrictive state until
    /// a signed command says otherwise.
    Unknown,
}

impl Lifecycle {
    /// The state a signed command moves the device to, or why it may not. The table:
    ///
    /// | action | from | to |
    /// | --- | --- | --- |
    /// | enroll | unenrolled, unknown (re-enrollment after lost state) | enrolled |
    /// | suspend | enrolled | suspended |
    /// | resume | suspended | enrolled |
    /// | revoke | enrolled, suspended, unknown | revoked |
    /// | retire | every state but retired | retired (final) |
    pub fn after(self, action: crate::policy::LifecycleAction) -> Result<Self, String> {
        use crate::policy::LifecycleAction as A;
        let to = match (action, self) {
            (A::Enroll, Self::Unenrolled | Self::Unknown) => Self::Enrolled,
            (A::Suspend, Self::Enrolled) => Self::Suspended,
            (A::Resume, Self::Suspended) => Self::Enrolled,
            (A::Revoke, Self::Enrolled | Self::Suspended | Self::Unknown) => Self::Revoked,
            (A::Retire, from) if from != Self::Retired => Self::Retired,
            (action, from) => {
                return Err(format!(
                    "{} is not allowed from {}{}",
                    action.as_str(),
                    from.as_str(),
                    if from == Self::Retired {
                        " (retired is final)"
                    } else {
                        ""
                    }
                ));
            }
        };
        Ok(to)
    }

    /// Its name in posture and audit.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Unenrolled => "unenrolled",
            Self::Enrolled => "enrolled",
            Self::Suspended => "suspended",
            Self::Revoked => "revoked",
            Self::Retired => "retired",
            Self::Unknown => "unknown",
        }
    }
}

/// The highest serial accepted per role (rollback protection).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Serials {
    /// Trust-root rotations.
    pub root: u64,
    /// Policy bundles.
    pub policy: u64,
    /// Intel feeds.
    pub intel: u64,
    /// Lifecycle commands.
    pub command: u64,
}

impl Serials {
    /// The serial held for `role`.
    pub fn get(&self, role: Role) -> u64 {
        StoredRole::of_role(role).floor(self)
    }

    /// Set the serial of `role`: only fast-forward recovery lowers a floor (see
    /// [`recovery`]); everything else raises.
    pub fn set(&mut self, role: Role, serial: u64) {
        *StoredRole::of_role(role).floor_mut(self) = serial;
    }

    /// Raise the serial of `role` (never lowers it).
    pub fn raise(&mut self, role: Role, serial: u64) {
        let slot = StoredRole::of_role(role).floor_mut(self);
        *slot = (*slot).max(serial);
    }
}

/// What `state.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceState {
    /// [`STATE_VERSION`].
    pub version: u32,
    /// Rollback floors.
    pub serials: Serials,
    /// Privacy mode on or off.
    pub privacy_mode: bool,
    /// Setup steps completed so far.
    pub completed_steps: BTreeSet<String>,
    /// The lifecycle state.
    pub lifecycle: Lifecycle,
    /// SHA-256 of the last-good policy envelope, if any.
    pub policy_digest: Option<String>,
    /// SHA-256 of the last-good intel envelope, if any.
    pub intel_digest: Option<String>,
    /// The keys and threshold of every role of the trust root under which the floors in
    /// `serials` were set. A trust root whose role differs from this starts that role's
    /// floor over (see [`recovery`]), also when the rotation was interrupted before this
    /// file was written. Absent in a state.json written before it existed: the trust root
    /// in force is then taken as the one the floors were set under.
    #[serde(default)]
    pub floor_roles: Option<Roles>,
}

impl DeviceState {
    /// A device that has never run trustd: unenrolled, no policy (so lockdown), privacy off.
    pub fn initial() -> Self {
        Self {
            version: STATE_VERSION,
            serials: Serials::default(),
            privacy_mode: false,
            completed_steps: BTreeSet::new(),
            lifecycle: Lifecycle::Unenrolled,
            policy_digest: None,
            intel_digest: None,
            floor_roles: None,
        }
    }

    /// The state to assume when the persisted one is lost: lifecycle unknown (lockdown),
    /// privacy on, no setup step complete, serial floors as given.
    pub fn most_restrictive(serials: Serials) -> Self {
        Self {
            version: STATE_VERSION,
            serials,
            privacy_mode: true,
            completed_steps: BTreeSet::new(),
            lifecycle: Lifecycle::Unknown,
            policy_digest: None,
            intel_digest: None,
            floor_roles: None,
        }
    }
}

#[cfg(test)]
mod lifecycle_tests {
    use super::Lifecycle::{self, *};
    use crate::policy::LifecycleAction::{self, *};

    /// Every (state, action) pair: the allowed ones and where they lead; all others refused.
    #[test]
    fn every_transition_of_the_table() {
        let allowed: &[(Lifecycle, LifecycleAction, Lifecycle)] = &[
            (Unenrolled, Enroll, Enrolled),
            (Unknown, Enroll, Enrolled),
            (Enrolled, Suspend, Suspended),
            (Suspended, Resume, Enrolled),
            (Enrolled, Revoke, Revoked),
            (Suspended, Revoke, Revoked),
            (Unknown, Revoke, Revoked),
            (Unenrolled, Retire, Retired),
            (Enrolled, Retire, Retired),
            (Suspended, Retire, Retired),
            (Revoked, Retire, Retired),
            (Unknown, Retire, Retired),
        ];
        let states = [Unenrolled, Enrolled, Suspended, Revoked, Retired, Unknown];
        let actions = [Enroll, Suspend, Resume, Revoke, Retire];
        let mut refused = 0;
        for from in states {
            for action in actions {
                let want = allowed
                    .iter()
                    .find(|(f, a, _)| *f == from && *a == action)
                    .map(|t| t.2);
                match (from.after(action), want) {
                    (Ok(to), Some(w)) => assert_eq!(to, w, "{from:?} {action:?}"),
                    (Err(why), None) => {
                        refused += 1;
                        assert!(why.contains(action.as_str()) && why.contains(from.as_str()));
                    }
                    (got, want) => panic!("{from:?} {action:?}: got {got:?}, want {want:?}"),
                }
            }
        }
        assert_eq!(refused, 30 - allowed.len());
        assert!(
            Retired
                .after(Enroll)
                .expect_err("final")
                .contains("retired is final")
        );
    }
}
