//! The lifecycle command payload, schema `enigm.command/v1`.

use serde::{Deserialize, Serialize};

use super::is_valid_name;
use crate::timefmt::Timestamp;

/// A signed lifecycle command, bound to one device (its handle for the issuer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LifecycleCommand {
    /// Always `enigm.command/v1`.
    pub schema: String,
    /// Monotonic per signer: a command is never accepted twice.
    pub serial: u64,
    /// When it was issued.
    pub issued_at: Timestamp,
    /// After this it is refused.
    pub expires_at: Timestamp,
    /// The verifier id the device handle was derived for.
    pub issuer: String,
    /// The device handle for `issuer`: binds the command to one device.
    pub device: String,
    /// What to do.
    pub action: LifecycleAction,
    /// Random, unique per command.
    pub nonce: String,
}

/// A lifecycle transition request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LifecycleAction {
    /// unenrolled -> enrolled.
    Enroll,
    /// enrolled -> suspended.
    Suspend,
    /// suspended -> enrolled.
    Resume,
    /// enrolled or suspended -> revoked.
    Revoke,
    /// any but retired -> retired (final).
    Retire,
}

impl LifecycleAction {
    /// Its name in commands and audit records.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Enroll => "enroll",
            Self::Suspend => "suspend",
            Self::Resume => "resume",
            Self::Revoke => "revoke",
            Self::Retire => "retire",
        }
    }
}

impl LifecycleCommand {
    /// Issuer is a name, device and nonce are non-empty tokens.
    pub fn validate(&self) -> Result<(), String> {
        if !is_valid_name(&self.issuer) {
            return Err(format!("issuer {:?} is not a valid name", self.issuer));
        }
        for (what, v) in [("device", &self.device), ("nonce", &self.nonce)] {
            if v.len() < 8
                || v.len() > 128
                || !v
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
            {
                return Err(format!(
                    "{what} must be 8 to 128 characters of [A-Za-z0-9_-]"
                ));
            }
        }
        Ok(())
    }
}
