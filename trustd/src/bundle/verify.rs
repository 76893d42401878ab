//! The verifier: the only constructor of [`Verified`].

use std::collections::BTreeSet;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;

use super::{Envelope, Payload, Role, TrustRoot, Verified, pae};
use crate::digest::sha256_hex;
use crate::json::{JsonError, parse_strict};
use crate::timefmt::Timestamp;

/// Envelopes above this size are refused before any parsing (64 KiB of policy is already
/// far more than any real device needs; intel feeds get their own, larger cap).
pub const MAX_ENVELOPE_BYTES: usize = 1 << 20;

/// The cap for intel feeds, which carry address lists.
pub const MAX_INTEL_ENVELOPE_BYTES: usize = 32 << 20;

/// Why a signed input was refused. The message is what a user or a script sees.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    /// Over the size cap; nothing was parsed.
    #[error("envelope is {size} bytes, over the limit of {limit} bytes")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The cap.
        limit: usize,
    },
    /// The envelope is not a DSSE envelope.
    #[error("envelope is not a valid DSSE envelope: {0}")]
    Envelope(JsonError),
    /// The payload field does not decode.
    #[error("envelope payload is not valid base64")]
    PayloadBase64,
    /// Signed for another kind of document.
    #[error("payload type {got:?} is not accepted here (expected {expected:?})")]
    WrongPayloadType {
        /// The envelope's payloadType.
        got: String,
        /// What this call accepts.
        expected: &'static str,
    },
    /// Not enough distinct trusted keys of the role signed.
    #[error(
        "{role} role needs valid signatures from {need} distinct trusted keys, got {got}{details}"
    )]
    Threshold {
        /// The role.
        role: Role,
        /// Its threshold.
        need: u32,
        /// Distinct valid signatures found.
        got: u32,
        /// Why the other signatures did not count.
        details: String,
    },
    /// The signed payload is not valid JSON for its type.
    #[error("payload is not valid: {0}")]
    Payload(JsonError),
    /// The payload is of another schema version.
    #[error("payload schema is {got:?}, this trustd reads {expected:?}")]
    Schema {
        /// What it says.
        got: String,
        /// What this build reads.
        expected: &'static str,
    },
    /// Parsed but inconsistent.
    #[error("payload is invalid: {0}")]
    Invalid(String),
    /// Past its expiry by this device's clock (which may itself be wrong: the message says
    /// what it reads).
    #[error(
        "payload expired at {expires_at}; this device's clock reads {now} (if the clock is wrong, set it and apply again)"
    )]
    Expired {
        /// Its expires_at.
        expires_at: Timestamp,
        /// The device's time.
        now: Timestamp,
    },
    /// Issued later than this device's clock reads, by more than [`MAX_CLOCK_SKEW_SECS`]:
    /// the clock is behind (or the input is misdated), so its expiry cannot be judged.
    #[error(
        "payload issued at {issued_at}, later than this device's clock reads ({now}): the clock is behind or the input is misdated; set the clock and apply again"
    )]
    NotYetValid {
        /// Its issued_at.
        issued_at: Timestamp,
        /// The device's time.
        now: Timestamp,
    },
    /// Not newer than what the device holds.
    #[error("serial {got} is not newer than the installed serial {installed} for the {role} role")]
    Rollback {
        /// The role.
        role: Role,
        /// The payload's serial.
        got: u64,
        /// The persisted serial.
        installed: u64,
    },
}

impl VerifyError {
    /// A short stable word for scripts and audit records.
    pub fn code(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "too-large",
            Self::Envelope(_) => "bad-envelope",
            Self::PayloadBase64 => "bad-envelope",
            Self::WrongPayloadType { .. } => "wrong-payload-type",
            Self::Threshold { .. } => "signature-threshold",
            Self::Payload(_) => "bad-payload",
            Self::Schema { .. } => "wrong-schema",
            Self::Invalid(_) => "invalid-payload",
            Self::Expired { .. } => "expired",
            Self::NotYetValid { .. } => "not-yet-valid",
            Self::Rollback { .. } => "rollback",
        }
    }
}

fn short(keyid: &str) -> &str {
    keyid.get(..16).unwrap_or(keyid)
}

/// The most signatures an envelope may carry: each may be tried against every key of the
/// role, so their number bounds the work an input can cause.
pub const MAX_SIGNATURES: usize = 16;

/// Parse the envelope and check the threshold of `role` in `root`; returns the payload
/// bytes and the keyids that counted.
///
/// A signature's `keyid` is a hint (DSSE: optional and not authenticated): it may be empty or
/// name no key of the role, and the signature still counts for the role's key that verifies
/// it. Each distinct key counts once, however many signatures it made.
fn check_signatures(
    bytes: &[u8],
    limit: usize,
    expected_type: &'static str,
    root: &TrustRoot,
    role: Role,
) -> Result<(Vec<u8>, Vec<String>), VerifyError> {
    if bytes.len() > limit {
        return Err(VerifyError::TooLarge {
            size: bytes.len(),
            limit,
        });
    }
    let env: Envelope = parse_strict(bytes).map_err(VerifyError::Envelope)?;
    if env.payload_type != expected_type {
        return Err(VerifyError::WrongPayloadType {
            got: env.payload_type,
            expected: expected_type,
        });
    }
    let payload = STANDARD
        .decode(&env.payload)
        .map_err(|_| VerifyError::PayloadBase64)?;
    let msg = pae(&env.payload_type, &payload);
    let keys = root.role(role);
    if env.signatures.len() > MAX_SIGNATURES {
        return Err(VerifyError::Threshold {
            role,
            need: keys.threshold,
            got: 0,
            details: format!(
                " (the envelope has {} signatures; at most {MAX_SIGNATURES} are read)",
                env.signatures.len()
            ),
        });
    }
    let mut good = BTreeSet::new();
    let mut problems = Vec::new();
    for (i, s) in env.signatures.iter().enumerate() {
        let label = if s.keyid.is_empty() {
            format!("signature {} (no keyid)", i + 1)
        } else {
            format!("keyid {}", short(&s.keyid))
        };
        let sig = STANDARD
            .decode(&s.sig)
            .ok()
            .and_then(|raw| ed25519_dalek::Signature::from_slice(&raw).ok());
        let Some(sig) = sig else {
            problems.push(format!("{label}: signature is not 64 bytes of base64"));
            continue;
        };
        // DSSE's keyid is an unauthenticated hint: the key it names is tried first, then
        // every other key of the role. What counts is the key that verifies.
        let hinted = keys.keyids.contains(&s.keyid);
        let hint = hinted.then_some(&s.keyid);
        let mut undecodable = false;
        let signer = hint
            .into_iter()
            .chain(keys.keyids.iter().filter(|k| Some(*k) != hint))
            .find(|kid| match root.key(kid) {
                Some(key) => key.verify_strict(&msg, &sig).is_ok(),
                None => {
                    undecodable |= hint == Some(*kid);
                    false
                }
            });
        let Some(signer) = signer else {
            problems.push(if undecodable {
                format!("{label}: key does not decode")
            } else if hinted {
                format!("{label}: signature does not verify")
            } else if s.keyid.is_empty() {
                format!("{label}: verifies with no key of the {role} role")
            } else {
                format!("{label}: not a key of the {role} role")
            });
            continue;
        };
        if !good.insert(signer.clone()) {
            if Some(signer) == hint {
                problems.push(format!("{label}: signed more than once, counted once"));
            } else {
                problems.push(format!(
                    "{label}: made by key {}, which signed more than once, counted once",
                    short(signer)
                ));
            }
        }
    }
    let got = u32::try_from(good.len()).unwrap_or(u32::MAX);
    if got < keys.threshold {
        let details = if env.signatures.is_empty() {
            " (the envelope has no signatures)".to_owned()
        } else if problems.is_empty() {
            String::new()
        } else {
            format!(" ({})", problems.join("; "))
        };
        return Err(VerifyError::Threshold {
            role,
            need: keys.threshold,
            got,
            details,
        });
    }
    Ok((payload, good.into_iter().collect()))
}

/// The `schema` field alone, read before the typed parse so that another version gets a
/// clear error rather than a list of unknown fields.
#[derive(Deserialize)]
struct SchemaOnly {
    schema: Option<serde_json::Value>,
}

fn parse_payload<P: Payload>(payload: &[u8]) -> Result<P, VerifyError> {
    let head: SchemaOnly = parse_strict(payload).map_err(VerifyError::Payload)?;
    match head.schema {
        Some(serde_json::Value::String(s)) if s == P::SCHEMA => {}
        Some(serde_json::Value::String(s)) => {
            return Err(VerifyError::Schema {
                got: s,
                expected: P::SCHEMA,
            });
        }
        _ => {
            return Err(VerifyError::Payload(JsonError::Invalid(
                "missing or non-string field `schema`".into(),
            )));
        }
    }
    let p: P = parse_strict(payload).map_err(VerifyError::Payload)?;
    if p.issued_at() > p.expires_at() {
        return Err(VerifyError::Invalid("issued_at is after expires_at".into()));
    }
    p.validate().map_err(VerifyError::Invalid)?;
    Ok(p)
}

/// How far a new input's `issued_at` may lie ahead of this device's clock, in seconds
/// (the signer's clock and the device's may differ a little).
pub const MAX_CLOCK_SKEW_SECS: i64 = 600;

/// A new input is judged against the device's clock: not expired, not issued (beyond the
/// skew) after it, and above the installed serial.
fn check_freshness<P: Payload>(p: &P, now: Timestamp, installed: u64) -> Result<(), VerifyError> {
    if now > p.expires_at() {
        return Err(VerifyError::Expired {
            expires_at: p.expires_at(),
            now,
        });
    }
    if p.issued_at() > now.saturating_plus_secs(MAX_CLOCK_SKEW_SECS) {
        return Err(VerifyError::NotYetValid {
            issued_at: p.issued_at(),
            now,
        });
    }
    if p.serial() <= installed {
        return Err(VerifyError::Rollback {
            role: P::ROLE,
            got: p.serial(),
            installed,
        });
    }
    Ok(())
}

/// Verify a signed `P` against `root` at time `now`, given the serial the device holds
/// for `P`'s role. Every check runs; the first failure is returned.
pub fn verify<P: Payload>(
    bytes: &[u8],
    root: &TrustRoot,
    now: Timestamp,
    installed_serial: u64,
) -> Result<Verified<P>, VerifyError> {
    let (payload, signers) =
        check_signatures(bytes, P::MAX_ENVELOPE_BYTES, P::PAYLOAD_TYPE, root, P::ROLE)?;
    let p: P = parse_payload(&payload)?;
    check_freshness(&p, now, installed_serial)?;
    Ok(Verified {
        payload: p,
        envelope: bytes.to_vec(),
        digest: sha256_hex(bytes),
        signers,
    })
}

/// Verify a trust-root rotation: signed by the `root` threshold of the current root and of
/// the new root itself (so its keys are proven held), a higher serial, not expired.
pub fn verify_rotation(
    bytes: &[u8],
    current: &TrustRoot,
    now: Timestamp,
) -> Result<Verified<TrustRoot>, VerifyError> {
    let (payload, signers) = check_signatures(
        bytes,
        TrustRoot::MAX_ENVELOPE_BYTES,
        TrustRoot::PAYLOAD_TYPE,
        current,
        Role::Root,
    )?;
    let new: TrustRoot = parse_payload(&payload)?;
    check_signatures(
        bytes,
        TrustRoot::MAX_ENVELOPE_BYTES,
        TrustRoot::PAYLOAD_TYPE,
        &new,
        Role::Root,
    )?;
    check_freshness(&new, now, current.serial)?;
    Ok(Verified {
        payload: new,
        envelope: bytes.to_vec(),
        digest: sha256_hex(bytes),
        signers,
    })
}

/// Re-load a `P` accepted earlier (the last-good file): signatures against `root` and the
/// payload are checked again; expiry and serial are not, because the device keeps its last
/// good input when it expires (expiry never opens anything) and the serial is its own.
pub fn verify_installed<P: Payload>(
    bytes: &[u8],
    root: &TrustRoot,
) -> Result<Verified<P>, VerifyError> {
    let (payload, signers) =
        check_signatures(bytes, P::MAX_ENVELOPE_BYTES, P::PAYLOAD_TYPE, root, P::ROLE)?;
    let p: P = parse_payload(&payload)?;
    Ok(Verified {
        payload: p,
        envelope: bytes.to_vec(),
        digest: sha256_hex(bytes),
        signers,
    })
}

/// Re-check an envelope already accepted earlier (a rotated root on disk): its own root
/// threshold and payload, but not expiry or serial.
pub(crate) fn verify_self_signed_root(bytes: &[u8]) -> Result<TrustRoot, VerifyError> {
    if bytes.len() > TrustRoot::MAX_ENVELOPE_BYTES {
        return Err(VerifyError::TooLarge {
            size: bytes.len(),
            limit: TrustRoot::MAX_ENVELOPE_BYTES,
        });
    }
    let env: Envelope = parse_strict(bytes).map_err(VerifyError::Envelope)?;
    let payload = STANDARD
        .decode(&env.payload)
        .map_err(|_| VerifyError::PayloadBase64)?;
    let root: TrustRoot = parse_payload(&payload)?;
    check_signatures(
        bytes,
        TrustRoot::MAX_ENVELOPE_BYTES,
        TrustRoot::PAYLOAD_TYPE,
        &root,
        Role::Root,
    )?;
    Ok(root)
}
