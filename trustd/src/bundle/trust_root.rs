//! The trust root, schema `enigm.trust-root/v1`: public keys and, per role, which keys
//! sign and how many must.

use std::collections::{BTreeMap, HashSet};

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

impl TrustRoot {
    /// The keyids and threshold of `role`.
    pub fn role(&self, role: Role) -> &RoleKeys {
        match role {
            Role::Root => &self.roles.root,
            Role::Policy => &self.roles.policy,
            Role::Intel => &self.roles.intel,
            Role::Command => &self.roles.command,
        }
    }

    /// The public key behind `keyid`, if this root has it and it decodes.
    pub fn key(&self, keyid: &str) -> Option<VerifyingKey> {
        let k = self.keys.get(keyid)?;
        let raw: [u8; 32] = STANDARD.decode(&k.public).ok()?.try_into().ok()?;
        VerifyingKey::from_bytes(&raw).ok()
    }

    /// Every key decodes and matches its keyid; every role names known keys, each once,
    /// with a threshold between 1 and their number.
    pub fn validate(&self) -> Result<(), String> {
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
        for role in [Role::Root, Role::Policy, Role::Intel, Role::Command] {
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
