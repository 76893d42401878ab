//! What the state directory knows of each kind of signed input: its serial floor and, for
//! the inputs loaded at start, the digest `state.json` names it by. The rest of a kind's
//! knowledge (payload type, schema, role, size cap, file name) is on
//! [`crate::bundle::Payload`].
//!
//! This file is the one place that maps a [`Role`] known only at run time (a role a
//! trust-root rotation changed, a role to set aside) to its input type: [`StoredRole::of_role`]
//! is an exhaustive match, so a new role does not compile until it is placed here.

use crate::bundle::{Payload, Role, TrustRoot, VerifyError, verify_installed};
use crate::policy::{IntelFeed, LifecycleCommand, Policy};

use super::{DeviceState, Serials};

/// A signed input the state directory keeps: where `state.json` holds its floor and its
/// digest.
pub trait Stored: Payload {
    /// Its serial floor (rollback protection) in `state.json`.
    fn floor(serials: &Serials) -> u64;
    /// The same floor, to change.
    fn floor_mut(serials: &mut Serials) -> &mut u64;
    /// Where `state.json` names the digest of its last accepted envelope: `Some` for the
    /// inputs loaded and put in force at start (policy, intel feed), whose file must match
    /// it; `None` for those whose file only carries a floor (the trust root, which is read
    /// by itself, and the last lifecycle command).
    fn digest_mut(state: &mut DeviceState) -> Option<&mut Option<String>>;
}

macro_rules! stored {
    ($t:ty, $floor:ident, $digest:ident) => {
        impl Stored for $t {
            fn floor(serials: &Serials) -> u64 {
                serials.$floor
            }
            fn floor_mut(serials: &mut Serials) -> &mut u64 {
                &mut serials.$floor
            }
            fn digest_mut(state: &mut DeviceState) -> Option<&mut Option<String>> {
                Some(&mut state.$digest)
            }
        }
    };
    ($t:ty, $floor:ident) => {
        impl Stored for $t {
            fn floor(serials: &Serials) -> u64 {
                serials.$floor
            }
            fn floor_mut(serials: &mut Serials) -> &mut u64 {
                &mut serials.$floor
            }
            fn digest_mut(_: &mut DeviceState) -> Option<&mut Option<String>> {
                None
            }
        }
    };
}

stored!(TrustRoot, root);
stored!(Policy, policy, policy_digest);
stored!(IntelFeed, intel, intel_digest);
stored!(LifecycleCommand, command);

/// One role's [`Stored`] knowledge as values, for code that holds the role only at run time.
#[derive(Clone, Copy)]
pub struct StoredRole {
    /// The role.
    pub role: Role,
    /// [`Payload::FILE_NAME`].
    pub file_name: &'static str,
    /// [`Payload::PAYLOAD_TYPE`].
    pub payload_type: &'static str,
    floor: fn(&Serials) -> u64,
    floor_mut: fn(&mut Serials) -> &mut u64,
    digest_mut: fn(&mut DeviceState) -> Option<&mut Option<String>>,
    check: CheckInstalled,
}

/// Re-check an installed envelope of one type: its serial and digest.
type CheckInstalled = fn(&[u8], &TrustRoot) -> Result<(u64, String), VerifyError>;

impl std::fmt::Debug for StoredRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredRole")
            .field("role", &self.role)
            .field("file_name", &self.file_name)
            .finish_non_exhaustive()
    }
}

fn check_installed<P: Payload>(
    bytes: &[u8],
    root: &TrustRoot,
) -> Result<(u64, String), VerifyError> {
    verify_installed::<P>(bytes, root).map(|v| (v.payload().serial(), v.digest().to_owned()))
}

impl StoredRole {
    /// The knowledge of type `P`.
    pub fn of<P: Stored>() -> Self {
        Self {
            role: P::ROLE,
            file_name: P::FILE_NAME,
            payload_type: P::PAYLOAD_TYPE,
            floor: P::floor,
            floor_mut: P::floor_mut,
            digest_mut: P::digest_mut,
            check: check_installed::<P>,
        }
    }

    /// The knowledge of the input `role` signs.
    pub fn of_role(role: Role) -> Self {
        // `role => type`, checked when compiled: the type's `Payload::ROLE` is that role.
        macro_rules! row {
            ($role:ident => $t:ty) => {{
                // An item, not an inline `const { }`: items are evaluated by `cargo check`
                // too, inline blocks only when code is generated.
                const _: () = assert!(
                    matches!(<$t as Payload>::ROLE, Role::$role),
                    concat!(
                        stringify!($t),
                        "'s Payload::ROLE is not Role::",
                        stringify!($role)
                    )
                );
                Self::of::<$t>()
            }};
        }
        // Exhaustive: a new role does not compile until its input type is named here.
        match role {
            Role::Root => row!(Root => TrustRoot),
            Role::Policy => row!(Policy => Policy),
            Role::Intel => row!(Intel => IntelFeed),
            Role::Command => row!(Command => LifecycleCommand),
        }
    }

    /// The role whose input has the DSSE `payloadType` `payload_type`, if any.
    pub fn of_payload_type(payload_type: &str) -> Option<Self> {
        Role::ALL
            .into_iter()
            .map(Self::of_role)
            .find(|s| s.payload_type == payload_type)
    }

    /// Its floor in `serials`.
    pub fn floor(&self, serials: &Serials) -> u64 {
        (self.floor)(serials)
    }

    /// Its floor in `serials`, to change.
    pub fn floor_mut<'a>(&self, serials: &'a mut Serials) -> &'a mut u64 {
        (self.floor_mut)(serials)
    }

    /// Where `state` names its digest ([`Stored::digest_mut`]).
    pub fn digest_mut<'a>(&self, state: &'a mut DeviceState) -> Option<&'a mut Option<String>> {
        (self.digest_mut)(state)
    }

    /// Whether `state.json` names its file by digest: it is loaded and put in force at start.
    pub fn loaded_at_start(&self) -> bool {
        let mut probe = DeviceState::initial();
        self.digest_mut(&mut probe).is_some()
    }

    /// Re-check an installed envelope against `root` (signatures and payload; not expiry or
    /// serial, see [`verify_installed`]): its serial and digest.
    pub fn check_installed(
        &self,
        bytes: &[u8],
        root: &TrustRoot,
    ) -> Result<(u64, String), VerifyError> {
        (self.check)(bytes, root)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every role maps to the type that names it, and no two share a file or a floor.
    #[test]
    fn every_role_has_its_own_file_floor_and_type() {
        let mut files = std::collections::BTreeSet::new();
        for (i, role) in Role::ALL.into_iter().enumerate() {
            let s = StoredRole::of_role(role);
            assert_eq!(s.role, role);
            assert!(files.insert(s.file_name), "{} shared", s.file_name);
            let mut serials = Serials::default();
            *s.floor_mut(&mut serials) = 10 + i as u64;
            assert_eq!(s.floor(&serials), 10 + i as u64);
            let others: u64 = Role::ALL
                .into_iter()
                .filter(|r| *r != role)
                .map(|r| StoredRole::of_role(r).floor(&serials))
                .sum();
            assert_eq!(others, 0, "{role}'s floor is another role's");
        }
    }

    #[test]
    fn only_the_policy_and_the_intel_feed_are_named_by_digest() {
        let named: Vec<Role> = Role::ALL
            .into_iter()
            .filter(|r| StoredRole::of_role(*r).loaded_at_start())
            .collect();
        assert_eq!(named, [Role::Policy, Role::Intel]);
        let mut st = DeviceState::initial();
        *StoredRole::of_role(Role::Intel)
            .digest_mut(&mut st)
            .expect("slot") = Some("i".into());
        assert_eq!(
            (st.policy_digest.as_deref(), st.intel_digest.as_deref()),
            (None, Some("i"))
        );
    }
}
