//! Persisted device state: serials per role, privacy mode, completed setup steps,
//! lifecycle, and the last-good signed inputs.
//!
//! Owns `/var/lib/trustd` (through [`crate::Paths`]) and nothing else. Every write is
//! atomic (see [`crate::files::atomic`]). Loading never fails: missing or corrupt state loads as the most
//! restrictive state and says why, so that no error path can open the device up.

pub mod input;
pub mod recovery;
pub mod secret;
pub mod store;

/// Atomic writes, now in [`crate::files::atomic`] (the audit log and the device key use
/// them too); the old path stays for callers outside the state directory.
pub use crate::files::atomic;
/// The lifecycle is the lifecycle command's vocabulary ([`crate::policy::Lifecycle`]);
/// `state.json` holds one.
pub use crate::policy::Lifecycle;
pub use input::{Stored, StoredRole};
pub use recovery::{Installed, LeftForce, RoleReset, start_over};
pub use store::{Condition, Loaded, StateError, StateStore, load_trust_root};

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::bundle::{Role, Roles};

/// The version of `state.json` this build writes and reads.
pub const STATE_VERSION: u32 = 1;

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
