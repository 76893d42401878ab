//! Fast-forward recovery (TUF's name for it): what a change of the trust root does to the
//! serial floors and the installed inputs.
//!
//! A stolen key can sign an input with the highest serial there is; once it is installed,
//! rollback protection refuses every later input of the role. So when the trust root
//! changes the keys or the threshold of the policy, intel or command role, that role's
//! floor starts over: from the serial of the installed input the new root still verifies,
//! or from 0 when there is none; an installed input the new root's threshold no longer
//! signs leaves force in the same transition. A role whose keys and threshold did not
//! change keeps its floor exactly. The root role never starts over: its serial only rises,
//! so an older root is refused whatever its keys.
//!
//! Pure: the caller passes the installed envelopes' bytes, writes the state, sets aside
//! the inputs that left force and audits what [`start_over`] returns. Reads no file.

use std::collections::BTreeMap;

use crate::bundle::{Role, RoleChange, Roles, TrustRoot};
use crate::digest::sha256_hex;

use super::DeviceState;
use super::input::StoredRole;
use super::store::unverified_serial;

/// The envelopes installed on the device, as stored, by role.
#[derive(Debug, Clone, Default)]
pub struct Installed<'a>(BTreeMap<Role, &'a [u8]>);

impl<'a> Installed<'a> {
    /// With `bytes` as the installed input of `role` (`None`: none is installed).
    #[must_use]
    pub fn with(mut self, role: Role, bytes: Option<&'a [u8]>) -> Self {
        match bytes {
            Some(b) => self.0.insert(role, b),
            None => self.0.remove(&role),
        };
        self
    }

    /// Every role's installed input as `input` gives it. The caller's `input` is best an
    /// exhaustive `match role`, so that a new role cannot be left out of a rotation.
    pub fn from_fn(mut input: impl FnMut(Role) -> Option<&'a [u8]>) -> Self {
        Role::ALL
            .into_iter()
            .fold(Self::default(), |i, role| i.with(role, input(role)))
    }

    fn of(&self, role: Role) -> Option<&'a [u8]> {
        self.0.get(&role).copied()
    }
}

/// An installed input that the trust root no longer verifies: it leaves force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeftForce {
    /// Lowercase hex SHA-256 of its envelope.
    pub digest: String,
    /// The serial it claims, if its payload can be read at all (never trusted: for the
    /// record only).
    pub serial: Option<u64>,
    /// Why the new root refuses it.
    pub why: String,
}

/// What a change of the trust root did to one role whose keys or threshold changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleReset {
    /// How the role changed.
    pub change: RoleChange,
    /// The floor before and after.
    pub floor: (u64, u64),
    /// The installed input the new root still verifies, which stays in force: its serial
    /// and digest.
    pub kept: Option<(u64, String)>,
    /// The installed input that left force.
    pub left: Option<LeftForce>,
}

impl std::fmt::Display for RoleReset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let role = self.change.role;
        write!(
            f,
            "{}; {role} floor {} -> {}",
            self.change, self.floor.0, self.floor.1
        )?;
        if let Some((serial, _)) = &self.kept {
            write!(
                f,
                "; installed {role} serial {serial} stays in force (the new root's threshold signs it)"
            )?;
        }
        if let Some(l) = &self.left {
            let serial = l.serial.map_or("unreadable".to_owned(), |s| s.to_string());
            write!(
                f,
                "; installed {role} serial {serial} left force ({})",
                l.why
            )?;
        }
        Ok(())
    }
}

/// Bring `state`'s floors, set under the roles `under`, under `root`: every role but root
/// whose keys or threshold differ starts over (see the module), and the digest of an input
/// that left force is cleared (where `state.json` names one: [`super::Stored::digest_mut`]). `state.floor_roles` becomes `root`'s roles.
/// Returns one entry per role started over, in the order policy, intel, command.
pub fn start_over(
    state: &mut DeviceState,
    under: &Roles,
    root: &TrustRoot,
    installed: &Installed<'_>,
) -> Vec<RoleReset> {
    let mut resets = Vec::new();
    for change in under.changes(&root.roles) {
        let role = change.role;
        if role == Role::Root {
            continue;
        }
        let stored = StoredRole::of_role(role);
        let verdict = installed.of(role).map(|bytes| {
            stored.check_installed(bytes, root).map_err(|e| LeftForce {
                digest: sha256_hex(bytes),
                serial: unverified_serial(bytes),
                why: e.to_string(),
            })
        });
        let (kept, left) = match verdict {
            None => (None, None),
            Some(Ok(k)) => (Some(k), None),
            Some(Err(l)) => (None, Some(l)),
        };
        let from = state.serials.get(role);
        let to = kept.as_ref().map_or(0, |(serial, _)| *serial);
        state.serials.set(role, to);
        if left.is_some()
            && let Some(digest) = stored.digest_mut(state)
        {
            *digest = None;
        }
        resets.push(RoleReset {
            change,
            floor: (from, to),
            kept,
            left,
        });
    }
    state.floor_roles = Some(root.roles.clone());
    resets
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::{PublicKeyFile, RoleKeys, TrustKey, key_id, sign_envelope};
    use crate::state::Serials;
    use ed25519_dalek::SigningKey;
    use serde_json::json;

    fn key(n: u8) -> SigningKey {
        SigningKey::from_bytes(&[n; 32])
    }

    fn ids(ks: &[&SigningKey]) -> Vec<String> {
        ks.iter().map(|k| key_id(&k.verifying_key())).collect()
    }

    /// Root key 1, intel key 5, command key 6; policy as given.
    fn root(policy: &[&SigningKey], threshold: u32) -> TrustRoot {
        let mut keys = std::collections::BTreeMap::new();
        for k in [1, 2, 3, 5, 6, 8, 9].map(key) {
            let f = PublicKeyFile::new(&k.verifying_key());
            keys.insert(
                f.keyid,
                TrustKey {
                    alg: f.alg,
                    public: f.public,
                },
            );
        }
        let role = |ks: &[&SigningKey], threshold| RoleKeys {
            keyids: ids(ks),
            threshold,
        };
        TrustRoot {
            schema: "enigm.trust-root/v1".into(),
            serial: 1,
            issued_at: crate::timefmt::Timestamp::parse("2026-01-01T00:00:00Z").expect("ts"),
            expires_at: crate::timefmt::Timestamp::parse("2036-01-01T00:00:00Z").expect("ts"),
            keys,
            roles: Roles {
                root: role(&[&key(1)], 1),
                policy: role(policy, threshold),
                intel: role(&[&key(5)], 1),
                command: role(&[&key(6)], 1),
            },
        }
    }

    fn policy(serial: u64, signers: &[&SigningKey]) -> Vec<u8> {
        let p = json!({
            "schema": "enigm.policy/v1", "serial": serial,
            "issued_at": "2026-11-01T00:00:00Z", "expires_at": "2027-11-01T00:00:00Z",
            "network": {"mode": "direct"}
        });
        let keys: Vec<SigningKey> = signers.iter().map(|k| (*k).clone()).collect();
        serde_json::to_vec(&sign_envelope(
            "application/vnd.enigm.policy+json",
            &serde_json::to_vec(&p).expect("json"),
            &keys,
        ))
        .expect("json")
    }

    fn state(policy_floor: u64, digest: Option<String>) -> DeviceState {
        let mut s = DeviceState::initial();
        s.serials = Serials {
            root: 1,
            policy: policy_floor,
            intel: 7,
            command: 3,
        };
        s.policy_digest = digest;
        s
    }

    /// The fast-forward attack: a stolen policy key (2) installed serial u64::MAX; the new
    /// root gives the role to key 8 alone. The floor starts over from 0 and the input
    /// leaves force; the intel and command floors stay exactly.
    #[test]
    fn a_policy_signed_only_by_a_removed_key_leaves_force_and_its_floor_starts_over() {
        let old = root(&[&key(2)], 1);
        let new = root(&[&key(8)], 1);
        let attack = policy(u64::MAX, &[&key(2)]);
        let mut s = state(u64::MAX, Some(sha256_hex(&attack)));
        let resets = start_over(
            &mut s,
            &old.roles,
            &new,
            &Installed::default().with(Role::Policy, Some(&attack)),
        );
        assert_eq!(resets.len(), 1);
        let r = &resets[0];
        assert_eq!((r.change.role, r.floor), (Role::Policy, (u64::MAX, 0)));
        let left = r.left.as_ref().expect("left force");
        assert_eq!(left.serial, Some(u64::MAX));
        assert_eq!(left.digest, sha256_hex(&attack));
        assert!(
            left.why.contains("policy role needs valid signatures"),
            "{}",
            left.why
        );
        assert_eq!(s.serials.policy, 0);
        assert_eq!(s.policy_digest, None);
        assert_eq!(
            (s.serials.intel, s.serials.command, s.serials.root),
            (7, 3, 1)
        );
        assert_eq!(s.floor_roles.as_ref(), Some(&new.roles));
        assert!(
            r.to_string().contains("policy floor 18446744073709551615 -> 0; installed policy serial 18446744073709551615 left force"),
            "{r}"
        );
    }

    #[test]
    fn an_input_the_new_threshold_still_signs_stays_and_its_serial_is_the_floor() {
        // Signed by the old key 2 and the new key 8: the new root's threshold signs it.
        let both = policy(40, &[&key(2), &key(8)]);
        let mut s = state(40, Some(sha256_hex(&both)));
        let resets = start_over(
            &mut s,
            &root(&[&key(2)], 1).roles,
            &root(&[&key(8)], 1),
            &Installed::default().with(Role::Policy, Some(&both)),
        );
        assert_eq!(resets[0].kept, Some((40, sha256_hex(&both))));
        assert_eq!(resets[0].left, None);
        assert_eq!(s.serials.policy, 40, "rollback below it stays refused");
        assert_eq!(s.policy_digest, Some(sha256_hex(&both)));
    }

    #[test]
    fn a_threshold_raised_over_the_same_keys_takes_out_an_input_signed_by_one() {
        let one = policy(u64::MAX, &[&key(2)]);
        let mut s = state(u64::MAX, Some(sha256_hex(&one)));
        let resets = start_over(
            &mut s,
            &root(&[&key(2), &key(3)], 1).roles,
            &root(&[&key(2), &key(3)], 2),
            &Installed::default().with(Role::Policy, Some(&one)),
        );
        assert_eq!(resets[0].floor, (u64::MAX, 0));
        assert!(resets[0].left.is_some());
    }

    #[test]
    fn a_key_only_added_keeps_the_input_and_the_floor() {
        let p = policy(12, &[&key(2)]);
        let mut s = state(12, Some(sha256_hex(&p)));
        let resets = start_over(
            &mut s,
            &root(&[&key(2)], 1).roles,
            &root(&[&key(2), &key(9)], 1),
            &Installed::default().with(Role::Policy, Some(&p)),
        );
        assert_eq!(resets[0].floor, (12, 12));
        assert!(resets[0].kept.is_some() && resets[0].left.is_none());
    }

    #[test]
    fn a_changed_role_with_nothing_installed_starts_from_zero() {
        let mut s = state(99, None);
        let resets = start_over(
            &mut s,
            &root(&[&key(2)], 1).roles,
            &root(&[&key(8)], 1),
            &Installed::default(),
        );
        assert_eq!(resets[0].floor, (99, 0));
        assert_eq!(
            (resets[0].kept.clone(), resets[0].left.clone()),
            (None, None)
        );
    }

    #[test]
    fn unchanged_roles_and_the_root_role_keep_their_floors_exactly() {
        let old = root(&[&key(2)], 1);
        let mut new = root(&[&key(2)], 1);
        new.roles.root = RoleKeys {
            keyids: ids(&[&key(9)]),
            threshold: 1,
        };
        let p = policy(3, &[&key(2)]);
        let mut s = state(u64::MAX, Some(sha256_hex(&p)));
        let resets = start_over(
            &mut s,
            &old.roles,
            &new,
            &Installed::default().with(Role::Policy, Some(&p)),
        );
        assert_eq!(resets, []);
        assert_eq!(s.serials.policy, u64::MAX, "policy keys did not change");
        assert_eq!(s.serials.root, 1);
        assert_eq!(s.floor_roles.as_ref(), Some(&new.roles));
    }

    #[test]
    fn intel_and_command_roles_start_over_the_same_way() {
        let old = root(&[&key(2)], 1);
        let mut new = root(&[&key(2)], 1);
        new.roles.intel = RoleKeys {
            keyids: ids(&[&key(8)]),
            threshold: 1,
        };
        new.roles.command = RoleKeys {
            keyids: ids(&[&key(9)]),
            threshold: 1,
        };
        let feed = serde_json::to_vec(&sign_envelope(
            "application/vnd.enigm.intel+json",
            &serde_json::to_vec(&json!({
                "schema": "enigm.intel/v1", "serial": u64::MAX,
                "issued_at": "2026-11-01T00:00:00Z", "expires_at": "2027-11-01T00:00:00Z",
                "categories": {}
            }))
            .expect("json"),
            &[key(5)],
        ))
        .expect("json");
        let mut s = state(3, None);
        s.intel_digest = Some(sha256_hex(&feed));
        let resets = start_over(
            &mut s,
            &old.roles,
            &new,
            &Installed::default()
                .with(Role::Intel, Some(&feed))
                .with(Role::Command, Some(b"not an envelope")),
        );
        let roles: Vec<Role> = resets.iter().map(|r| r.change.role).collect();
        assert_eq!(roles, [Role::Intel, Role::Command]);
        assert_eq!(resets[0].floor, (7, 0));
        assert_eq!(
            resets[0].left.as_ref().and_then(|l| l.serial),
            Some(u64::MAX)
        );
        assert_eq!(resets[1].floor, (3, 0));
        assert_eq!(resets[1].left.as_ref().map(|l| l.serial), Some(None));
        assert_eq!(s.intel_digest, None);
        assert_eq!(s.serials.policy, 3);
    }
}
