//! Signed inputs: size cap -> DSSE envelope -> signature threshold -> strict parse ->
//! schema version -> validation -> expiry -> rollback, in that order.
//!
//! Only [`verify`] constructs a [`Verified`]; the rest of trustd accepts nothing else.
//! This module reads no files and keeps no state: the caller passes the trust root, the
//! time and the installed serial, so every decision here is a pure function of its inputs.

mod envelope;
mod keys;
mod trust_root;
mod verify;

use serde::de::DeserializeOwned;

pub use envelope::{Envelope, Signature, pae, sign_envelope};
pub use keys::{KeyFileError, PrivateKeyFile, PublicKeyFile, generate_key, key_id};
pub use trust_root::{RoleChange, RoleKeys, Roles, TrustKey, TrustRoot};
pub(crate) use verify::verify_self_signed_root;
pub use verify::{
    MAX_CLOCK_SKEW_SECS, MAX_ENVELOPE_BYTES, MAX_INTEL_ENVELOPE_BYTES, MAX_SIGNATURES, VerifyError,
    verify, verify_installed, verify_rotation,
};

/// Hex and SHA-256 live in [`crate::digest`]; kept here for callers of the signed-input API
/// ([`Verified::digest`] is one).
pub use crate::digest::{hex, sha256_hex};
use crate::policy::{IntelFeed, LifecycleCommand, Policy};
use crate::timefmt::Timestamp;

listed_enum! {
    /// A signing role of the trust root. `Role::ALL` lists them in the order root, policy,
    /// intel, command.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
    pub enum Role {
        /// Signs trust-root rotations.
        Root,
        /// Signs policy bundles.
        Policy,
        /// Signs intel feeds.
        Intel,
        /// Signs lifecycle commands.
        Command,
    }
}

impl Role {
    /// The role's name in the trust root and in messages.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Root => "root",
            Self::Policy => "policy",
            Self::Intel => "intel",
            Self::Command => "command",
        }
    }

    /// What a person calls the input the role signs: `trust root`, `policy`, `intel feed`,
    /// `lifecycle command`.
    pub fn noun(&self) -> &'static str {
        match self {
            Self::Root => "trust root",
            Self::Policy => "policy",
            Self::Intel => "intel feed",
            Self::Command => "lifecycle command",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A document type that arrives signed: everything the verifier and the state directory
/// need to know of one kind of signed input is here (and, for the state's slots, in
/// [`crate::state::Stored`]), so that adding a kind is one implementation, not a search
/// for `match role`.
pub trait Payload: DeserializeOwned {
    /// The DSSE `payloadType`.
    const PAYLOAD_TYPE: &'static str;
    /// The `schema` value this build reads.
    const SCHEMA: &'static str;
    /// The trust-root role whose keys must sign it.
    const ROLE: Role;
    /// Envelopes above this many bytes are refused before any parsing.
    const MAX_ENVELOPE_BYTES: usize;
    /// The file name its last accepted envelope is kept under in the state directory
    /// (see [`crate::Paths::input`]).
    const FILE_NAME: &'static str;
    /// Its `serial`.
    fn serial(&self) -> u64;
    /// Its `issued_at`.
    fn issued_at(&self) -> Timestamp;
    /// Its `expires_at`.
    fn expires_at(&self) -> Timestamp;
    /// What the types cannot check, as a sentence naming the field.
    fn validate(&self) -> Result<(), String>;
}

macro_rules! payload {
    ($t:ty, $ptype:literal, $schema:literal, $role:expr, $cap:expr, $file:literal) => {
        impl Payload for $t {
            const PAYLOAD_TYPE: &'static str = $ptype;
            const SCHEMA: &'static str = $schema;
            const ROLE: Role = $role;
            const MAX_ENVELOPE_BYTES: usize = $cap;
            const FILE_NAME: &'static str = $file;
            fn serial(&self) -> u64 {
                self.serial
            }
            fn issued_at(&self) -> Timestamp {
                self.issued_at
            }
            fn expires_at(&self) -> Timestamp {
                self.expires_at
            }
            fn validate(&self) -> Result<(), String> {
                <$t>::validate(self)
            }
        }
    };
}

payload!(
    Policy,
    "application/vnd.enigm.policy+json",
    "enigm.policy/v1",
    Role::Policy,
    MAX_ENVELOPE_BYTES,
    "policy.dsse.json"
);
payload!(
    IntelFeed,
    "application/vnd.enigm.intel+json",
    "enigm.intel/v1",
    Role::Intel,
    MAX_INTEL_ENVELOPE_BYTES,
    "intel.dsse.json"
);
payload!(
    LifecycleCommand,
    "application/vnd.enigm.command+json",
    "enigm.command/v1",
    Role::Command,
    MAX_ENVELOPE_BYTES,
    "command.dsse.json"
);
payload!(
    TrustRoot,
    "application/vnd.enigm.trust-root+json",
    "enigm.trust-root/v1",
    Role::Root,
    MAX_ENVELOPE_BYTES,
    "trust-root.dsse.json"
);

/// A payload whose envelope passed every check. Only the verifier makes one.
#[derive(Debug, Clone)]
pub struct Verified<T> {
    payload: T,
    envelope: Vec<u8>,
    digest: String,
    signers: Vec<String>,
}

impl<T> Verified<T> {
    /// The checked payload.
    pub fn payload(&self) -> &T {
        &self.payload
    }

    /// The envelope bytes exactly as received (what is persisted as last good).
    pub fn envelope_bytes(&self) -> &[u8] {
        &self.envelope
    }

    /// Lowercase hex SHA-256 of the envelope bytes.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The keyids whose signatures counted toward the threshold.
    pub fn signers(&self) -> &[String] {
        &self.signers
    }

    /// Keep the payload in force without the envelope bytes, once they are stored as the
    /// last good input (a 1M-entry feed's envelope is tens of MiB, a second copy of every
    /// entry beside the parsed payload).
    pub fn into_in_force(self) -> InForce<T> {
        InForce {
            payload: self.payload,
            digest: self.digest,
            signers: self.signers,
        }
    }
}

/// A verified payload held in force after its envelope was stored as the last good input
/// ([`Verified::into_in_force`]): the payload, the envelope's digest and the signers, not
/// the envelope itself (the state directory keeps it). It cannot be installed again; what
/// needs the envelope reads the stored one and checks it against [`Self::digest`].
#[derive(Debug, Clone)]
pub struct InForce<T> {
    payload: T,
    digest: String,
    signers: Vec<String>,
}

impl<T> InForce<T> {
    /// The checked payload.
    pub fn payload(&self) -> &T {
        &self.payload
    }

    /// Lowercase hex SHA-256 of the envelope bytes that were verified.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The keyids whose signatures counted toward the threshold.
    pub fn signers(&self) -> &[String] {
        &self.signers
    }
}
