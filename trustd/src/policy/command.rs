//! The lifecycle command payload, schema `enigm.command/v1`, and the lifecycle it moves the
//! device through ([`Lifecycle`], with its transition table).

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
    pub fn after(self, action: LifecycleAction) -> Result<Self, String> {
        use LifecycleAction as A;
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

#[cfg(test)]
mod lifecycle_tests {
    use super::Lifecycle::{self, *};
    use super::LifecycleAction::{self, *};

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
