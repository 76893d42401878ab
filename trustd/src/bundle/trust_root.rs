//! The trust root, schema `enigm.trust-root/v1`: public keys and, per role, which keys
//! sign and how many must.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

use super::{Role, key_id};
use crate::timefmt::Timestamp;

/// The keys a device trusts, and the threshold per role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustRoot {
    /// Always `enigm.trust-root/v1`.
    pub schema: String,
    /// Rotation must raise it.
    pub serial: u64,
    /// When it was issued.
    pub issued_at: Timestamp,
    /// A rotation to an already expired root is refused. The installed root's own expiry is
    /// not enforced: an expired root would otherwise lock admins out of every later fix.
    pub expires_at: Timestamp,
    /// keyid -> key.
    pub keys: BTreeMap<String, TrustKey>,
    /// role -> keyids and threshold.
    pub roles: Roles,
}

/// A public key in the trust root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustKey {
    /// Always `ed25519`.
    pub alg: String,
    /// Standard base64 of the 32 raw bytes.
    pub public: String,
}

/// The four roles.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Roles {
    /// Signs trust-root rotations.
    pub root: RoleKeys,
    /// Signs policy bundles.
    pub policy: RoleKeys,
    /// Signs intel feeds.
    pub intel: RoleKeys,
    /// Signs lifecycle commands.
    pub command: RoleKeys,
}

/// The keys of one role and how many distinct ones must sign.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleKeys {
    /// Keyids (each present in `keys`).
    pub keyids: Vec<String>,
    /// At least 1, at most the number of keyids.
    pub threshold: u32,
}

impl Roles {
    /// The keyids and threshold of `role`.
    pub fn get(&self, role: Role) -> &RoleKeys {
        match role {
            Role::Root => &self.root,
            Role::Policy => &self.policy,
            Role::Intel => &self.intel,
            Role::Command => &self.command,
        }
    }

    /// How the roles of `new` differ from these, one entry per role whose set of keyids
    /// or threshold differs (the order of keyids does not count), in the order root,
    /// policy, intel, command. A keyid names one key (it is the key's SHA-256), so the same
    /// keyids mean the same keys. This is the whole decision of which roles a rotation
    /// changed; what follows from it (TUF's fast-forward recovery) is the state's.
    pub fn changes(&self, new: &Roles) -> Vec<RoleChange> {
        Role::ALL
            .into_iter()
            .filter_map(|role| {
                let (a, b) = (self.get(role), new.get(role));
                let old: BTreeSet<&String> = a.keyids.iter().collect();
                let now: BTreeSet<&String> = b.keyids.iter().collect();
                if old == now && a.threshold == b.threshold {
                    return None;
                }
                Some(RoleChange {
                    role,
                    added: now.difference(&old).map(|k| (*k).clone()).collect(),
                    removed: old.difference(&now).map(|k| (*k).clone()).collect(),
                    threshold: (a.threshold, b.threshold),
                })
            })
            .collect()
    }
}

/// How one role differs between two trust roots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleChange {
    /// The role.
    pub role: Role,
    /// Keyids the new root gives the role that the old one did not.
    pub added: Vec<String>,
    /// Keyids the old root gave the role that the new one does not.
    pub removed: Vec<String>,
    /// The threshold before and after.
    pub threshold: (u32, u32),
}

impl std::fmt::Display for RoleChange {
    /// `policy role: keys added 1a2b3c4d5e6f7a8b, removed 9f8e7d6c5b4a3f2e; threshold 2 -> 1`
    /// (keyids shortened to 16 hex digits; the parts that did not change are left out).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let short = |ids: &[String]| {
            ids.iter()
                .map(|k| k.get(..16).unwrap_or(k))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let mut parts = Vec::new();
        if !self.added.is_empty() {
            parts.push(format!("keys added {}", short(&self.added)));
        }
        if !self.removed.is_empty() {
            parts.push(format!("keys removed {}", short(&self.removed)));
        }
        if self.threshold.0 != self.threshold.1 {
            parts.push(format!(
                "threshold {} -> {}",
                self.threshold.0, self.threshold.1
            ));
        }
        write!(f, "{} role: {}", self.role, parts.join(", "))
    }
}

impl TrustRoot {
    /// The keyids and threshold of `role`.
    pub fn role(&self, role: Role) -> &RoleKeys {
        self.roles.get(role)
    }

    /// The public key behind `keyid`, if this root has it and it decodes.
    pub fn key(&self, keyid: &str) -> Option<VerifyingKey> {
        let k = self.keys.get(keyid)?;
        let raw: [u8; 32] = STANDARD.decode(&k.public).ok()?.try_into().ok()?;
        VerifyingKey::from_bytes(&raw).ok()
    }

    /// Every key decodes and matches its keyid; every role names known keys, each once,
    /// with a threshold between 1 and their number; `issued_at` is not after `expires_at`
    /// (as for every signed input; a provisioned root is checked the same way).
    pub fn validate(&self) -> Result<(), String> {
        if self.issued_at > self.expires_at {
            return Err(format!(
                "issued_at {} is after expires_at {}",
                self.issued_at, self.expires_at
            ));
        }
        for (id, k) in &self.keys {
            if k.alg != "ed25519" {
                return Err(format!("key {id}: unsupported alg {:?}", k.alg));
            }
            let key = self.key(id).ok_or_else(|| {
                format!("key {id}: public is not a 32-byte ed25519 key in base64")
            })?;
            if key_id(&key) != *id {
                return Err(format!("key {id}: keyid is not the SHA-256 of the key"));
            }
        }
        for role in Role::ALL {
            let r = self.role(role);
            let mut seen = HashSet::new();
            for id in &r.keyids {
                if !self.keys.contains_key(id) {
                    return Err(format!("role {role}: keyid {id} is not in keys"));
                }
                if !seen.insert(id) {
                    return Err(format!("role {role}: keyid {id} is listed twice"));
                }
            }
            if r.threshold == 0 || r.threshold as usize > r.keyids.len() {
                return Err(format!(
                    "role {role}: threshold {} must be between 1 and its {} keys",
                    r.threshold,
                    r.keyids.len()
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(ids: &[&str], threshold: u32) -> RoleKeys {
        RoleKeys {
            keyids: ids.iter().map(|s| (*s).to_owned()).collect(),
            threshold,
        }
    }

    fn roles(policy: RoleKeys) -> Roles {
        Roles {
            root: keys(&["r"], 1),
            policy,
            intel: keys(&["i"], 1),
            command: keys(&["c"], 1),
        }
    }

    #[test]
    fn the_same_keys_in_another_order_with_the_same_threshold_change_nothing() {
        let a = roles(keys(&["a", "b", "c"], 2));
        let b = roles(keys(&["c", "a", "b"], 2));
        assert_eq!(a.changes(&b), []);
        assert_eq!(a.changes(&a), []);
    }

    #[test]
    fn a_replaced_key_is_a_change_naming_what_was_added_and_removed() {
        let a = roles(keys(&["a", "b"], 1));
        let b = roles(keys(&["b", "n"], 1));
        let c = a.changes(&b);
        assert_eq!(
            c,
            [RoleChange {
                role: Role::Policy,
                added: vec!["n".into()],
                removed: vec!["a".into()],
                threshold: (1, 1),
            }]
        );
        assert_eq!(
            c[0].to_string(),
            "policy role: keys added n, keys removed a"
        );
    }

    #[test]
    fn a_threshold_raised_or_lowered_over_the_same_keys_is_a_change() {
        let a = roles(keys(&["a", "b", "c"], 1));
        let up = roles(keys(&["a", "b", "c"], 2));
        let c = a.changes(&up);
        assert_eq!(c.len(), 1);
        assert_eq!((c[0].role, c[0].threshold), (Role::Policy, (1, 2)));
        assert!(c[0].added.is_empty() && c[0].removed.is_empty());
        assert_eq!(c[0].to_string(), "policy role: threshold 1 -> 2");
        assert_eq!(up.changes(&a)[0].threshold, (2, 1));
    }

    #[test]
    fn a_key_only_added_is_a_change() {
        let a = roles(keys(&["a"], 1));
        let b = roles(keys(&["a", "n"], 1));
        let c = a.changes(&b);
        assert_eq!(c.len(), 1);
        assert_eq!(
            (c[0].added.clone(), c[0].removed.len()),
            (vec!["n".into()], 0)
        );
    }

    #[test]
    fn every_role_is_compared_and_reported_in_order() {
        let a = roles(keys(&["a"], 1));
        let mut b = roles(keys(&["p"], 1));
        b.root = keys(&["r2"], 1);
        b.command = keys(&["c", "c2"], 2);
        let got: Vec<Role> = a.changes(&b).iter().map(|c| c.role).collect();
        assert_eq!(got, [Role::Root, Role::Policy, Role::Command]);
    }
}
