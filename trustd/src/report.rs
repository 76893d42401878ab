//! Evidence for someone off the device: the device signing key, and posture reports.
//!
//! The device key (ed25519, 0600 beside the device secret, made at first start) signs audit
//! checkpoints (C2SP signed notes, origin and key name `enigm.org/trustd/<first 16 hex digits of
//! the device key's keyid>`) and
//! posture reports: DSSE envelopes of type `application/vnd.enigm.posture-report+json` over the
//! posture, its evidence (policy and ruleset digests, the audit checkpoint, boot id, kernel,
//! Landlock ABI) and the verifier's nonce. A verifier checks a report offline with the
//! device's public key and the nonce it sent.
//!
//! Version 2 (`enigm.posture-report/v2`, made since trustd has TPM attestation) wraps the same
//! report as exact bytes (`body`) beside what signs the evidence (`signer`: `tpm` or
//! `software-key-only`) and, with a TPM, an [`Attestation`]: a quote by the TPM's
//! attestation key whose qualifying data is [`qualifying_data`] of the nonce and the body,
//! with the PCR values and trustd's measurement event log. Version 1 reports still verify.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature as EdSignature, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::Paths;
use crate::bundle::{Envelope, PrivateKeyFile, PublicKeyFile, key_id, pae, sign_envelope};
use crate::tpm::Attestation;

/// The report's payload type.
pub const REPORT_TYPE: &str = "application/vnd.enigm.posture-report+json";
/// The report's schema.
pub const REPORT_SCHEMA: &str = "enigm.posture-report/v1";
/// The schema of a version 2 report and of its body.
pub const REPORT_SCHEMA_V2: &str = "enigm.posture-report/v2";
/// The largest report a verifier reads (a v2 report carries the event log since boot).
pub const MAX_REPORT_BYTES: usize = 4 << 20;
/// `signer` of a report whose evidence a TPM quote covers.
pub const SIGNER_TPM: &str = "tpm";
/// `signer` of a report signed by the device's software key only.
pub const SIGNER_SOFTWARE: &str = "software-key-only";

/// The checkpoint origin and note key name of a device key.
pub fn origin(key: &VerifyingKey) -> String {
    format!("enigm.org/trustd/{}", &key_id(key)[..16])
}

/// Load the device key, or make it (0600, and the public half 0644) if there is none.
/// Returns the key and whether it was made now. The public half is written twice, as
/// `device.pub` (trustd's key file) and `device.vkey` (a signed-note verifier key under the
/// checkpoint origin); the vkey is rewritten at load when it is missing or names another key.
pub fn load_or_create_key(paths: &Paths) -> std::io::Result<(SigningKey, bool)> {
    let made = match PrivateKeyFile::load(&paths.device_key()) {
        Ok(k) => Some((k, false)),
        Err(_) if !paths.device_key().exists() => None,
        Err(e) => return Err(std::io::Error::other(e.to_string())),
    };
    let (key, new) = match made {
        Some(loaded) => loaded,
        None => {
            let key = crate::bundle::generate_key().map_err(std::io::Error::other)?;
            crate::files::atomic::create_dir_all(&paths.state_dir(), 0o700)?;
            let private = serde_json::to_vec_pretty(&PrivateKeyFile::new(&key))?;
            crate::files::atomic::write_atomic(&paths.device_key(), &private, 0o600)?;
            let public = serde_json::to_vec_pretty(&PublicKeyFile::new(&key.verifying_key()))?;
            crate::files::atomic::write_atomic(&paths.device_pub(), &public, 0o644)?;
            (key, true)
        }
    };
    let vk = key.verifying_key();
    let vkey = crate::audit::checkpoint::verifier_key(&origin(&vk), &vk)
        .map_err(std::io::Error::other)?
        + "\n";
    if std::fs::read_to_string(paths.device_vkey()).ok().as_deref() != Some(vkey.as_str()) {
        crate::files::atomic::write_atomic(&paths.device_vkey(), vkey.as_bytes(), 0o644)?;
    }
    Ok((key, new))
}

/// What a report proves beyond the posture itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Evidence {
    /// SHA-256 of the last-good policy envelope (empty: none).
    pub policy_digest: String,
    /// Digest of the ruleset confirmed in the kernel (empty: none).
    pub ruleset_digest: String,
    /// The audit checkpoint at the time of the report (a signed note).
    pub checkpoint: String,
    /// This boot's id.
    pub boot_id: String,
    /// The kernel release.
    pub kernel: String,
    /// The kernel's Landlock ABI.
    pub landlock_abi: u32,
}

/// The signed posture report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// Always [`REPORT_SCHEMA`].
    pub schema: String,
    /// The verifier's nonce, as sent.
    pub nonce: String,
    /// When the report was made.
    pub time: crate::timefmt::Timestamp,
    /// The checkpoint origin (identifies the device key).
    pub origin: String,
    /// Every posture property by its D-Bus name.
    pub posture: serde_json::Map<String, serde_json::Value>,
    /// The evidence.
    pub evidence: Evidence,
}

/// A nonce a verifier may send: 8 to 128 characters of `[A-Za-z0-9_-]`.
pub fn valid_nonce(n: &str) -> bool {
    (8..=128).contains(&n.len())
        && n.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
}

/// Sign a report as a DSSE envelope (JSON).
pub fn sign_report(report: &Report, key: &SigningKey) -> Result<String, serde_json::Error> {
    let env = sign_envelope(
        REPORT_TYPE,
        &serde_json::to_vec(report)?,
        std::slice::from_ref(key),
    );
    serde_json::to_string_pretty(&env)
}

/// The v2 payload: the report as exact bytes, what signs its evidence, and the TPM's
/// attestation over it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportV2 {
    /// Always [`REPORT_SCHEMA_V2`].
    pub schema: String,
    /// Base64 of the [`Report`]'s JSON (its schema [`REPORT_SCHEMA_V2`]).
    pub body: String,
    /// [`SIGNER_TPM`] or [`SIGNER_SOFTWARE`].
    pub signer: String,
    /// The TPM quote and event log (`None`: no TPM).
    pub attestation: Option<Attestation>,
    /// Consistency proofs (RFC 6962) from every audit tree head measured this boot (at a
    /// start or a checkpoint) smaller than the report's checkpoint, to it: the log in the
    /// report still extends every root the TPM holds.
    #[serde(default)]
    pub proofs: Vec<crate::audit::ConsistencyProof>,
}

/// The quote's qualifying data for a report: SHA-256 over a domain string, the nonce and
/// SHA-256 of the body's exact bytes (32 bytes, within `TPM2B_DATA`).
pub fn qualifying_data(nonce: &str, body: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(b"enigm.org/trustd/posture-report/v2\0");
    h.update(nonce.as_bytes());
    h.update(b"\0");
    h.update(sha2::Sha256::digest(body));
    h.finalize().into()
}

/// Make a v2 report: `attest` is given the qualifying data and returns the attestation
/// (`None` without a TPM) or why there is none; the result is signed by `key` as a DSSE
/// envelope (JSON).
pub fn sign_report_v2(
    report: &Report,
    key: &SigningKey,
    proofs: Vec<crate::audit::ConsistencyProof>,
    attest: impl FnOnce(&[u8; 32]) -> Result<Option<Attestation>, String>,
) -> Result<String, String> {
    let mut report = report.clone();
    report.schema = REPORT_SCHEMA_V2.into();
    let body = serde_json::to_vec(&report).map_err(|e| e.to_string())?;
    let attestation = attest(&qualifying_data(&report.nonce, &body))?;
    let v2 = ReportV2 {
        schema: REPORT_SCHEMA_V2.into(),
        body: STANDARD.encode(&body),
        signer: if attestation.is_some() {
            SIGNER_TPM
        } else {
            SIGNER_SOFTWARE
        }
        .into(),
        attestation,
        proofs,
    };
    let env = sign_envelope(
        REPORT_TYPE,
        &serde_json::to_vec(&v2).map_err(|e| e.to_string())?,
        std::slice::from_ref(key),
    );
    serde_json::to_string_pretty(&env).map_err(|e| e.to_string())
}

/// A report whose signature, schema, nonce and origin checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// The report.
    pub report: Report,
    /// 1 or 2.
    pub version: u8,
    /// What signs the evidence ([`SIGNER_SOFTWARE`] for every v1 report).
    pub signer: String,
    /// The TPM attestation (v2 with a TPM).
    pub attestation: Option<Attestation>,
    /// The qualifying data the quote must carry (v2).
    pub qualifying: [u8; 32],
    /// The consistency proofs from measured tree heads (v2).
    pub proofs: Vec<crate::audit::ConsistencyProof>,
}

/// Check a report offline: the envelope's type, a signature by `key` over it (whatever its
/// keyid says; at most [`crate::bundle::MAX_SIGNATURES`] are read), the schema, and that it
/// answers `nonce`. Returns the report.
pub fn verify_report(bytes: &[u8], nonce: &str, key: &VerifyingKey) -> Result<Report, String> {
    open_report(bytes, nonce, key).map(|o| o.report)
}

/// [`verify_report`] for either version, returning the v2 parts too (unchecked: see
/// [`crate::tpm::verify`]).
pub fn open_report(bytes: &[u8], nonce: &str, key: &VerifyingKey) -> Result<Opened, String> {
    if bytes.len() > MAX_REPORT_BYTES {
        return Err(format!(
            "report is {} bytes, over {MAX_REPORT_BYTES}",
            bytes.len()
        ));
    }
    let env: Envelope =
        crate::json::parse_strict(bytes).map_err(|e| format!("not a DSSE envelope: {e}"))?;
    if env.payload_type != REPORT_TYPE {
        return Err(format!(
            "payload type {:?}, not {REPORT_TYPE}",
            env.payload_type
        ));
    }
    let payload = STANDARD
        .decode(&env.payload)
        .map_err(|e| format!("payload is not base64: {e}"))?;
    let msg = pae(&env.payload_type, &payload);
    let want = key_id(key);
    if env.signatures.len() > crate::bundle::MAX_SIGNATURES {
        return Err(format!(
            "the report has {} signatures; at most {} are read",
            env.signatures.len(),
            crate::bundle::MAX_SIGNATURES
        ));
    }
    // The keyid is a hint (DSSE): any signature that verifies with `key` counts.
    let signed = env.signatures.iter().any(|s| {
        STANDARD
            .decode(&s.sig)
            .ok()
            .and_then(|b| EdSignature::from_slice(&b).ok())
            .is_some_and(|sig| key.verify_strict(&msg, &sig).is_ok())
    });
    if !signed {
        return Err(format!("no valid signature by device key {want}"));
    }
    #[derive(Deserialize)]
    struct Probe {
        schema: String,
    }
    let probe: Probe = serde_json::from_slice(&payload).map_err(|e| format!("report: {e}"))?;
    let (report, opened) = match probe.schema.as_str() {
        REPORT_SCHEMA => {
            let r: Report =
                crate::json::parse_strict(&payload).map_err(|e| format!("report: {e}"))?;
            (r, None)
        }
        REPORT_SCHEMA_V2 => {
            let v2: ReportV2 =
                crate::json::parse_strict(&payload).map_err(|e| format!("report: {e}"))?;
            let body = STANDARD
                .decode(&v2.body)
                .map_err(|e| format!("report body is not base64: {e}"))?;
            let r: Report =
                crate::json::parse_strict(&body).map_err(|e| format!("report body: {e}"))?;
            if r.schema != REPORT_SCHEMA_V2 {
                return Err(format!(
                    "report body schema {:?}, not {REPORT_SCHEMA_V2}",
                    r.schema
                ));
            }
            match (v2.signer.as_str(), &v2.attestation) {
                (SIGNER_TPM, Some(_)) | (SIGNER_SOFTWARE, None) => {}
                (s, a) => {
                    return Err(format!(
                        "signer {s:?} with {} attestation",
                        if a.is_some() { "an" } else { "no" }
                    ));
                }
            }
            let q = qualifying_data(&r.nonce, &body);
            (r, Some((v2.signer, v2.attestation, q, v2.proofs)))
        }
        other => {
            return Err(format!(
                "schema {other:?}, not {REPORT_SCHEMA} or {REPORT_SCHEMA_V2}"
            ));
        }
    };
    if report.nonce != nonce {
        return Err(format!(
            "the report answers nonce {:?}, not {nonce:?} (a replayed report, or the wrong --nonce)",
            report.nonce
        ));
    }
    if report.origin != origin(key) {
        return Err(format!(
            "the report's origin {} is not this key's {}",
            report.origin,
            origin(key)
        ));
    }
    Ok(match opened {
        None => Opened {
            report,
            version: 1,
            signer: SIGNER_SOFTWARE.into(),
            attestation: None,
            qualifying: [0; 32],
            proofs: Vec::new(),
        },
        Some((signer, attestation, qualifying, proofs)) => Opened {
            report,
            version: 2,
            signer,
            attestation,
            qualifying,
            proofs,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(nonce: &str, key: &SigningKey) -> Report {
        Report {
            schema: REPORT_SCHEMA.into(),
            nonce: nonce.into(),
            time: crate::timefmt::Timestamp::now(),
            origin: origin(&key.verifying_key()),
            posture: serde_json::Map::new(),
            evidence: Evidence {
                policy_digest: "p".into(),
                ruleset_digest: "r".into(),
                checkpoint: "c".into(),
                boot_id: "b".into(),
                kernel: "k".into(),
                landlock_abi: 2,
            },
        }
    }

    #[test]
    fn a_report_verifies_only_with_its_key_nonce_and_bytes() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let other = SigningKey::from_bytes(&[8; 32]);
        let signed = sign_report(&report("nonce-1234", &key), &key).expect("sign");
        let vk = key.verifying_key();
        assert!(verify_report(signed.as_bytes(), "nonce-1234", &vk).is_ok());
        let e = verify_report(signed.as_bytes(), "nonce-9999", &vk).expect_err("nonce");
        assert!(e.contains("replayed"), "{e}");
        let e = verify_report(signed.as_bytes(), "nonce-1234", &other.verifying_key())
            .expect_err("key");
        assert!(e.contains("no valid signature"), "{e}");
        // Any change of the payload breaks the signature.
        let mut env: serde_json::Value = serde_json::from_str(&signed).expect("json");
        let payload = STANDARD
            .decode(env["payload"].as_str().expect("payload"))
            .expect("b64");
        let text = String::from_utf8(payload)
            .expect("utf8")
            .replace("\"r\"", "\"x\"");
        env["payload"] = STANDARD.encode(text).into();
        let e = verify_report(env.to_string().as_bytes(), "nonce-1234", &vk).expect_err("edit");
        assert!(e.contains("no valid signature"), "{e}");
        assert!(valid_nonce("abcdefgh") && !valid_nonce("short") && !valid_nonce("bad nonce!"));
    }

    /// The keyid is a hint (DSSE): a report whose keyid was dropped or renamed by a tool
    /// still verifies with the key; another key's signature under the right keyid does not.
    #[test]
    fn a_report_verifies_by_its_key_whatever_the_keyid_says() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let other = SigningKey::from_bytes(&[8; 32]);
        let vk = key.verifying_key();
        let signed = sign_report(&report("nonce-1234", &key), &key).expect("sign");
        let mut env: serde_json::Value = serde_json::from_str(&signed).expect("json");
        env["signatures"][0]
            .as_object_mut()
            .expect("object")
            .remove("keyid");
        assert!(verify_report(env.to_string().as_bytes(), "nonce-1234", &vk).is_ok());
        env["signatures"][0]["keyid"] = "device".into();
        assert!(verify_report(env.to_string().as_bytes(), "nonce-1234", &vk).is_ok());
        let forged = sign_report(&report("nonce-1234", &key), &other).expect("sign");
        let mut env: serde_json::Value = serde_json::from_str(&forged).expect("json");
        env["signatures"][0]["keyid"] = key_id(&vk).into();
        let e = verify_report(env.to_string().as_bytes(), "nonce-1234", &vk).expect_err("other");
        assert!(e.contains("no valid signature"), "{e}");
    }
}
