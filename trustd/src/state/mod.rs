//! Persisted device state: serials per role, privacy mode, completed setup steps,
//! lifecycle, and the last-good signed inputs.
//!
//! Owns `/var/lib/trustd` (through [`crate::Paths`]) and nothing else. Every write is
//! atomic (see [`atomic`]). Loading never fails: missing or corrupt state loads as the most
//! restrictive state and says why, so that no error path can open the device up.

pub mod atomic;
pub mod store;

pub use store::{Condition, Loaded, StateError, StateStore, load_trust_root};

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::bundle::Role;

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
        match role {
            Role::Root => self.root,
            Role::Policy => self.policy,
            Role::Intel => self.intel,
            Role::Command => self.command,
        }
    }

    /// Raise the serial of `role` (never lowers it).
    pub fn raise(&mut self, role: Role, serial: u64) {
        let slot = match role {
            Role::Root => &mut self.root,
            Role::Policy => &mut self.policy,
            Role::Intel => &mut self.intel,
            Role::Command => &mut self.command,
        };
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
        }
    }
}
