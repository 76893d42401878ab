//! Credential activation in software, for a verifier off the device (and for the software
//! TPM of tests): `TPM2_MakeCredential` as TPM 2.0 Library Part 1 §24 ("Credential
//! Protection") and Annex C.6.1 (ECDH seed) define it, for an endorsement key made from the
//! TCG EK Credential Profile's default ECC template (P-256, SHA-256 name algorithm,
//! AES-128-CFB). Pure: no TPM, no FFI.
//!
//! MakeCredential, for a credential `c` (at most 32 bytes), the EK's public point `Q_ek` and
//! the attestation key's TPM name `n`:
//! - an ephemeral P-256 key `(d_e, Q_e)`; `Z` = x of `d_e · Q_ek`;
//! - `seed = KDFe(SHA-256, Z, "IDENTITY", x(Q_e), x(Q_ek), 256)` (Part 1, 11.4.10.3);
//! - `symKey = KDFa(SHA-256, seed, "STORAGE", n, "", 128)`,
//!   `hmacKey = KDFa(SHA-256, seed, "INTEGRITY", "", "", 256)` (Part 1, 11.4.10.2);
//! - `encIdentity = AES-128-CFB(symKey, IV = 0, TPM2B_DIGEST(c))`;
//! - `integrity = HMAC-SHA-256(hmacKey, encIdentity || n)`;
//! - the credential blob (`TPM2B_ID_OBJECT`'s buffer) is `TPM2B_DIGEST(integrity) ||
//!   encIdentity`, the encrypted secret (`TPM2B_ENCRYPTED_SECRET`'s buffer) is the marshalled
//!   `TPMS_ECC_POINT` `Q_e`.
//!
//! Only the TPM holding the EK's private key recovers `seed`, and `TPM2_ActivateCredential`
//! releases `c` only when the object it is asked to activate has the name `n` and is loaded in
//! the same TPM: so a device that returns `c` shows that its AK lives beside that EK.
//!
//! Files: the project's challenge (JSON, [`Challenge`]) and tpm2-tools' credential file
//! (`tpm2_makecredential -o`: magic `0xBADCC0DE`, version 1, then the two TPM2B structures).

use aes::cipher::{BlockCipherEncrypt as _, KeyInit as _};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::Mac as _;
use p256::elliptic_curve::sec1::{FromEncodedPoint as _, ToEncodedPoint as _};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// The most credential bytes a challenge carries: the EK name algorithm's digest size
/// (SHA-256), as `TPM2_MakeCredential` allows.
pub const MAX_CREDENTIAL: usize = 32;
/// The most bytes of a credential blob or an encrypted secret accepted (an ECC P-256 EK's are
/// 68 bytes each; an RSA-2048 EK's secret is 256).
pub const MAX_PART: usize = 512;
/// The most bytes of a challenge file read.
pub const MAX_FILE: usize = 16 * 1024;
/// The schema of [`Challenge`].
pub const SCHEMA: &str = "enigm.tpm-credential/v1";
/// tpm2-tools' credential file magic (`tpm2_makecredential -o`).
const TPM2_TOOLS_MAGIC: [u8; 4] = [0xba, 0xdc, 0xc0, 0xde];

type HmacSha256 = hmac::Hmac<Sha256>;

/// Why a credential could not be made, read or activated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// The endorsement key is not a P-256 public key (SPKI PEM).
    #[error("endorsement key: {0}")]
    Ek(String),
    /// The attestation key's name is not a SHA-256 TPM name (hex).
    #[error("attestation key name: {0}")]
    Name(String),
    /// The credential is empty or longer than [`MAX_CREDENTIAL`] bytes.
    #[error("the secret must be 1 to {MAX_CREDENTIAL} bytes, not {0}")]
    SecretSize(usize),
    /// The challenge is not one of the accepted forms, or its parts are malformed.
    #[error("malformed challenge: {0}")]
    Malformed(String),
    /// The integrity HMAC does not verify: the challenge was made for another attestation
    /// key or another endorsement key, or was altered.
    #[error(
        "the credential's integrity check failed: the challenge was made for another attestation key or endorsement key, or was altered"
    )]
    Integrity,
    /// No randomness for the ephemeral key.
    #[error("no randomness for the ephemeral key: {0}")]
    Random(String),
}

/// A credential made for one AK and EK: what `TPM2_ActivateCredential` takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// The buffer of the `TPM2B_ID_OBJECT` (integrity HMAC and encrypted credential).
    pub blob: Vec<u8>,
    /// The buffer of the `TPM2B_ENCRYPTED_SECRET` (the ephemeral ECC point).
    pub secret: Vec<u8>,
}

/// The project's challenge file: a [`Credential`] and the AK name it was made for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Challenge {
    /// [`SCHEMA`].
    pub schema: String,
    /// The attestation key's TPM name it was made for (hex).
    pub ak_name: String,
    /// Base64 of [`Credential::blob`].
    pub credential_blob: String,
    /// Base64 of [`Credential::secret`].
    pub secret: String,
}

/// Lowercase or uppercase hex to bytes.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// A SHA-256 TPM name from its hex (as in `tpm-ak.name`): `000b` and 32 bytes.
pub fn parse_name(hex: &str) -> Result<Vec<u8>, CredentialError> {
    let n =
        unhex(hex).ok_or_else(|| CredentialError::Name(format!("{:?} is not hex", clip(hex))))?;
    if n.len() != 34 || n[..2] != [0x00, 0x0b] {
        return Err(CredentialError::Name(format!(
            "{} bytes starting {}: not a SHA-256 name (000b and 32 bytes)",
            n.len(),
            crate::bundle::hex(&n[..n.len().min(2)])
        )));
    }
    Ok(n)
}

fn clip(s: &str) -> String {
    s.chars().take(80).collect()
}

/// KDFa (TPM 2.0 Part 1, 11.4.10.2) with HMAC-SHA-256, `bits` a multiple of 8 up to 256.
fn kdfa(key: &[u8], label: &str, u: &[u8], v: &[u8], bits: u32) -> Vec<u8> {
    let mut m = <HmacSha256 as hmac::KeyInit>::new_from_slice(key).expect("HMAC takes any key");
    m.update(&1u32.to_be_bytes());
    m.update(label.as_bytes());
    m.update(&[0]);
    m.update(u);
    m.update(v);
    m.update(&bits.to_be_bytes());
    let out = m.finalize().into_bytes();
    out[..(bits / 8) as usize].to_vec()
}

/// KDFe (TPM 2.0 Part 1, 11.4.10.3) with SHA-256, 256 bits.
fn kdfe(z: &[u8], label: &str, u: &[u8], v: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(1u32.to_be_bytes());
    h.update(z);
    h.update(label.as_bytes());
    h.update([0]);
    h.update(u);
    h.update(v);
    h.finalize().into()
}

/// AES-128 in CFB mode (full-block feedback) with a zero IV, as the TPM protects
/// credentials; `decrypt` selects the direction.
fn aes128_cfb(key: &[u8], data: &[u8], decrypt: bool) -> Vec<u8> {
    let cipher = aes::Aes128::new_from_slice(key).expect("a 16-byte key");
    let mut prev = [0u8; 16];
    let mut out = Vec::with_capacity(data.len());
    for chunk in data.chunks(16) {
        let mut ks = aes::Block::from(prev);
        cipher.encrypt_block(&mut ks);
        let mut next = prev;
        for (i, b) in chunk.iter().enumerate() {
            let o = b ^ ks[i];
            out.push(o);
            next[i] = if decrypt { *b } else { o };
        }
        prev = next;
    }
    out
}

fn x_of(p: &p256::AffinePoint) -> Vec<u8> {
    p.to_encoded_point(false)
        .x()
        .map(|x| x.to_vec())
        .unwrap_or_default()
}

fn tpm2b(b: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(b.len() + 2);
    v.extend_from_slice(&u16::try_from(b.len()).unwrap_or(u16::MAX).to_be_bytes());
    v.extend_from_slice(b);
    v
}

/// Read one TPM2B from the front of `b`: its contents and the rest.
fn take_tpm2b<'a>(b: &'a [u8], what: &str) -> Result<(&'a [u8], &'a [u8]), CredentialError> {
    let bad = || CredentialError::Malformed(format!("{what}: truncated"));
    let n = b.get(..2).ok_or_else(bad)?;
    let n = usize::from(u16::from_be_bytes([n[0], n[1]]));
    let body = b.get(2..2 + n).ok_or_else(bad)?;
    Ok((body, &b[2 + n..]))
}

/// An attestation key's public area as the verifier checked it ([`check_ak_public`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AkPublic {
    /// Its TPM name: `000b` and SHA-256 of the marshalled `TPMT_PUBLIC`.
    pub name: Vec<u8>,
    /// Its public key, SPKI PEM.
    pub pem: String,
}

/// Check a marshalled `TPMT_PUBLIC` (`tpm-ak.pub`; TPM 2.0 Part 2, 12.2.4) as a verifier
/// must before it makes a credential for it: an ECC P-256 key, SHA-256 name algorithm,
/// restricted, signing only, `fixedTPM`, `fixedParent`, `sensitiveDataOrigin`, ECDSA with
/// SHA-256. Returns its name (what the credential is bound to) and its public key (what
/// quotes are checked with), so that the two are known to be the same key.
pub fn check_ak_public(public: &[u8]) -> Result<AkPublic, CredentialError> {
    let bad = |why: &str| CredentialError::Name(format!("attestation key public area: {why}"));
    let mut r = public;
    let u16_ = |r: &mut &[u8]| -> Result<u16, CredentialError> {
        let b = r.get(..2).ok_or_else(|| bad("truncated"))?;
        let v = u16::from_be_bytes([b[0], b[1]]);
        *r = &r[2..];
        Ok(v)
    };
    let ty = u16_(&mut r)?;
    let name_alg = u16_(&mut r)?;
    let hi = u16_(&mut r)?;
    let lo = u16_(&mut r)?;
    let attrs = (u32::from(hi) << 16) | u32::from(lo);
    let (_policy, rest) = take_tpm2b(r, "attestation key public area")?;
    r = rest;
    if ty != 0x0023 || name_alg != 0x000b {
        return Err(bad("not an ECC key with a SHA-256 name"));
    }
    const FIXED_TPM: u32 = 1 << 1;
    const FIXED_PARENT: u32 = 1 << 4;
    const SENSITIVE_DATA_ORIGIN: u32 = 1 << 5;
    const RESTRICTED: u32 = 1 << 16;
    const DECRYPT: u32 = 1 << 17;
    const SIGN: u32 = 1 << 18;
    let need = FIXED_TPM | FIXED_PARENT | SENSITIVE_DATA_ORIGIN | RESTRICTED | SIGN;
    if attrs & need != need || attrs & DECRYPT != 0 {
        return Err(bad(&format!(
            "attributes {attrs:#010x}: not a restricted signing key fixed to its TPM"
        )));
    }
    // TPMS_ECC_PARMS: symmetric (TPM_ALG_NULL for a signing key), scheme, curve, kdf.
    let sym = u16_(&mut r)?;
    let scheme = u16_(&mut r)?;
    let scheme_hash = if scheme == 0x0010 { 0 } else { u16_(&mut r)? };
    let curve = u16_(&mut r)?;
    let kdf = u16_(&mut r)?;
    if kdf != 0x0010 {
        u16_(&mut r)?;
    }
    if sym != 0x0010 || scheme != 0x0018 || scheme_hash != 0x000b || curve != 0x0003 {
        return Err(bad("not ECDSA P-256 with SHA-256"));
    }
    let (x, rest) = take_tpm2b(r, "attestation key public area")?;
    let (y, rest) = take_tpm2b(rest, "attestation key public area")?;
    if !rest.is_empty() {
        return Err(bad("bytes after the public key"));
    }
    let pem = super::quote::p256_pem(&pad32(x)?, &pad32(y)?).map_err(|e| bad(&e.to_string()))?;
    let mut name = vec![0x00, 0x0b];
    name.extend_from_slice(&Sha256::digest(public));
    Ok(AkPublic { name, pem })
}

/// The EK's public key from its SPKI PEM (`tpm-ek.pem`). Another key is refused saying what
/// it is (an RSA EK, a P-384 EK of the high-range templates), never with the OID the parser
/// expected.
pub fn ek_from_pem(pem: &str) -> Result<p256::PublicKey, CredentialError> {
    use p256::pkcs8::DecodePublicKey as _;
    p256::PublicKey::from_public_key_pem(pem.trim()).map_err(|_| {
        CredentialError::Ek(format!(
            "{}: only the EK of the EK Credential Profile's default ECC P-256 template is supported (the one trustd exports as tpm-ek.pem; `tpm2_createek -G ecc`)",
            super::quote::describe_public_key(pem)
        ))
    })
}

/// The `TPMA_OBJECT` of the attestation key trustd makes (`tpm2_createak`'s): fixedTPM,
/// fixedParent, sensitiveDataOrigin, userWithAuth, restricted, sign.
pub const AK_ATTRIBUTES: u32 = 0x0005_0072;

/// The marshalled `TPMT_PUBLIC` (TPM 2.0 Part 2, 12.2.4) of an attestation key made from
/// trustd's template (ECC P-256, SHA-256 name algorithm, [`AK_ATTRIBUTES`], empty auth
/// policy, ECDSA with SHA-256, no KDF) whose public point is `ak`: what `tpm-ak.pub` holds
/// for that key.
pub fn ak_public_area(ak: &p256::ecdsa::VerifyingKey) -> Vec<u8> {
    let point = ak.to_encoded_point(false);
    let mut p = Vec::with_capacity(90);
    for v in [0x0023u16, 0x000b] {
        p.extend_from_slice(&v.to_be_bytes());
    }
    p.extend_from_slice(&AK_ATTRIBUTES.to_be_bytes());
    p.extend_from_slice(&[0, 0]); // authPolicy: empty
    for v in [0x0010u16, 0x0018, 0x000b, 0x0003, 0x0010] {
        p.extend_from_slice(&v.to_be_bytes());
    }
    p.extend_from_slice(&tpm2b(point.x().map(|x| &x[..]).unwrap_or_default()));
    p.extend_from_slice(&tpm2b(point.y().map(|y| &y[..]).unwrap_or_default()));
    p
}

/// The TPM name (hex: `000b` and SHA-256 of [`ak_public_area`]) that an attestation key with
/// public key `ak`, made from trustd's template, has in its TPM: what trustd measures in its
/// start event, so a verifier holding only `tpm-ak.pem` can check it.
pub fn ak_name_of(ak: &p256::ecdsa::VerifyingKey) -> String {
    format!(
        "000b{}",
        crate::bundle::hex(&Sha256::digest(ak_public_area(ak)))
    )
}

/// `TPM2_MakeCredential` in software: `credential` for the AK named `ak_name` (its TPM name
/// bytes) under the EK `ek`, with a fresh ephemeral key.
pub fn make(
    ek: &p256::PublicKey,
    ak_name: &[u8],
    credential: &[u8],
) -> Result<Credential, CredentialError> {
    let eph = loop {
        let mut b = [0u8; 32];
        getrandom::fill(&mut b).map_err(|e| CredentialError::Random(e.to_string()))?;
        if let Ok(k) = p256::SecretKey::from_slice(&b) {
            break k;
        }
    };
    make_with(&eph, ek, ak_name, credential)
}

/// [`make`] with a chosen ephemeral key (tests).
pub fn make_with(
    eph: &p256::SecretKey,
    ek: &p256::PublicKey,
    ak_name: &[u8],
    credential: &[u8],
) -> Result<Credential, CredentialError> {
    if credential.is_empty() || credential.len() > MAX_CREDENTIAL {
        return Err(CredentialError::SecretSize(credential.len()));
    }
    let shared = (ek.to_projective() * *eph.to_nonzero_scalar()).to_affine();
    let q_e = eph.public_key().as_affine().to_encoded_point(false);
    let (ex, ey) = (
        q_e.x().map(|x| x.to_vec()).unwrap_or_default(),
        q_e.y().map(|y| y.to_vec()).unwrap_or_default(),
    );
    let seed = kdfe(&x_of(&shared), "IDENTITY", &ex, &x_of(ek.as_affine()));
    let sym = kdfa(&seed, "STORAGE", ak_name, &[], 128);
    let hmac_key = kdfa(&seed, "INTEGRITY", &[], &[], 256);
    let enc = aes128_cfb(&sym, &tpm2b(credential), false);
    let mut m = <HmacSha256 as hmac::KeyInit>::new_from_slice(&hmac_key).expect("any key");
    m.update(&enc);
    m.update(ak_name);
    let integrity = m.finalize().into_bytes();
    let mut blob = tpm2b(&integrity);
    blob.extend_from_slice(&enc);
    let mut secret = tpm2b(&ex);
    secret.extend_from_slice(&tpm2b(&ey));
    Ok(Credential { blob, secret })
}

/// `TPM2_ActivateCredential` in software, with the EK's private key (the software TPM of
/// tests; a verifier's cross-check of a format). Fails with [`CredentialError::Integrity`]
/// when the credential was not made for `ak_name` under this EK.
pub fn activate(
    ek: &p256::SecretKey,
    ak_name: &[u8],
    c: &Credential,
) -> Result<Vec<u8>, CredentialError> {
    let (x, rest) = take_tpm2b(&c.secret, "encrypted secret")?;
    let (y, _) = take_tpm2b(rest, "encrypted secret")?;
    let point = p256::EncodedPoint::from_affine_coordinates(
        &p256::FieldBytes::from(pad32(x)?),
        &p256::FieldBytes::from(pad32(y)?),
        false,
    );
    let q_e = Option::<p256::AffinePoint>::from(p256::AffinePoint::from_encoded_point(&point))
        .ok_or_else(|| {
            CredentialError::Malformed("encrypted secret: not a point on P-256".into())
        })?;
    let shared = (p256::ProjectivePoint::from(q_e) * *ek.to_nonzero_scalar()).to_affine();
    let seed = kdfe(
        &x_of(&shared),
        "IDENTITY",
        &x_of(&q_e),
        &x_of(ek.public_key().as_affine()),
    );
    let (integrity, enc) = take_tpm2b(&c.blob, "credential blob")?;
    let hmac_key = kdfa(&seed, "INTEGRITY", &[], &[], 256);
    let mut m = <HmacSha256 as hmac::KeyInit>::new_from_slice(&hmac_key).expect("any key");
    m.update(enc);
    m.update(ak_name);
    m.verify_slice(integrity)
        .map_err(|_| CredentialError::Integrity)?;
    let sym = kdfa(&seed, "STORAGE", ak_name, &[], 128);
    let plain = aes128_cfb(&sym, enc, true);
    let (cred, _) = take_tpm2b(&plain, "credential")?;
    Ok(cred.to_vec())
}

fn pad32(b: &[u8]) -> Result<[u8; 32], CredentialError> {
    if b.len() > 32 {
        return Err(CredentialError::Malformed(
            "encrypted secret: a coordinate longer than 32 bytes".into(),
        ));
    }
    let mut out = [0u8; 32];
    out[32 - b.len()..].copy_from_slice(b);
    Ok(out)
}

impl Credential {
    /// Both parts are 1 to [`MAX_PART`] bytes.
    pub fn check_sizes(&self) -> Result<(), CredentialError> {
        for (what, b) in [
            ("credential blob", &self.blob),
            ("encrypted secret", &self.secret),
        ] {
            if b.is_empty() || b.len() > MAX_PART {
                return Err(CredentialError::Malformed(format!(
                    "{what} of {} bytes (1 to {MAX_PART})",
                    b.len()
                )));
            }
        }
        Ok(())
    }

    /// The project's challenge file (JSON) for the AK named `ak_name`.
    pub fn to_challenge(&self, ak_name: &[u8]) -> Challenge {
        Challenge {
            schema: SCHEMA.to_owned(),
            ak_name: crate::bundle::hex(ak_name),
            credential_blob: STANDARD.encode(&self.blob),
            secret: STANDARD.encode(&self.secret),
        }
    }

    /// tpm2-tools' credential file (what `tpm2_activatecredential -i` reads).
    pub fn to_tpm2_tools(&self) -> Vec<u8> {
        let mut v = TPM2_TOOLS_MAGIC.to_vec();
        v.extend_from_slice(&1u32.to_be_bytes());
        v.extend_from_slice(&tpm2b(&self.blob));
        v.extend_from_slice(&tpm2b(&self.secret));
        v
    }

    /// Read a challenge file in either form: tpm2-tools' (by its magic) or the project's
    /// JSON. Returns the credential and, for the JSON form, the AK name it was made for.
    /// Size-capped ([`MAX_FILE`], [`MAX_PART`]).
    pub fn read(bytes: &[u8]) -> Result<(Self, Option<String>), CredentialError> {
        if bytes.len() > MAX_FILE {
            return Err(CredentialError::Malformed(format!(
                "{} bytes (at most {MAX_FILE})",
                bytes.len()
            )));
        }
        if bytes.starts_with(&TPM2_TOOLS_MAGIC) {
            let rest = bytes.get(8..).ok_or_else(|| {
                CredentialError::Malformed("tpm2-tools credential file: truncated".into())
            })?;
            if bytes[4..8] != 1u32.to_be_bytes() {
                return Err(CredentialError::Malformed(
                    "tpm2-tools credential file: not version 1".into(),
                ));
            }
            let (blob, rest) = take_tpm2b(rest, "credential blob")?;
            let (secret, rest) = take_tpm2b(rest, "encrypted secret")?;
            if !rest.is_empty() {
                return Err(CredentialError::Malformed(format!(
                    "tpm2-tools credential file: {} bytes after the encrypted secret",
                    rest.len()
                )));
            }
            let c = Self {
                blob: blob.to_vec(),
                secret: secret.to_vec(),
            };
            c.check_sizes()?;
            return Ok((c, None));
        }
        let ch: Challenge = crate::json::parse_strict(bytes)
            .map_err(|e| CredentialError::Malformed(e.to_string()))?;
        if ch.schema != SCHEMA {
            return Err(CredentialError::Malformed(format!(
                "schema {:?}, not {SCHEMA}",
                clip(&ch.schema)
            )));
        }
        let b64 = |what: &str, s: &str| {
            STANDARD
                .decode(s)
                .map_err(|e| CredentialError::Malformed(format!("{what}: {e}")))
        };
        let c = Self {
            blob: b64("credential_blob", &ch.credential_blob)?,
            secret: b64("secret", &ch.secret)?,
        };
        c.check_sizes()?;
        parse_name(&ch.ak_name)?;
        Ok((c, Some(ch.ak_name.trim().to_ascii_lowercase())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(fill: u8) -> p256::SecretKey {
        p256::SecretKey::from_slice(&[fill; 32]).expect("scalar")
    }

    fn name(fill: u8) -> Vec<u8> {
        let mut n = vec![0x00, 0x0b];
        n.extend_from_slice(&[fill; 32]);
        n
    }

    #[test]
    fn a_credential_made_for_an_ak_activates_with_its_ek_and_name_only() {
        let ek = key(7);
        let c = make(&ek.public_key(), &name(1), b"the verifier's secret").expect("make");
        assert_eq!(c.blob.len(), 2 + 32 + 2 + 21);
        assert_eq!(c.secret.len(), 68);
        assert_eq!(
            activate(&ek, &name(1), &c).expect("activate"),
            b"the verifier's secret"
        );
        assert_eq!(activate(&ek, &name(2), &c), Err(CredentialError::Integrity));
        assert_eq!(
            activate(&key(8), &name(1), &c),
            Err(CredentialError::Integrity)
        );
        let mut altered = c.clone();
        let last = altered.blob.len() - 1;
        altered.blob[last] ^= 1;
        assert_eq!(
            activate(&ek, &name(1), &altered),
            Err(CredentialError::Integrity)
        );
    }

    #[test]
    fn both_file_forms_read_back_and_bad_sizes_are_refused() {
        let ek = key(7);
        let c = make(&ek.public_key(), &name(1), &[9; 32]).expect("make");
        let (back, n) = Credential::read(&c.to_tpm2_tools()).expect("tpm2-tools form");
        assert_eq!((back, n), (c.clone(), None));
        let json = serde_json::to_vec(&c.to_challenge(&name(1))).expect("json");
        let (back, n) = Credential::read(&json).expect("json form");
        assert_eq!(back, c);
        assert_eq!(n.as_deref(), Some(crate::bundle::hex(&name(1)).as_str()));
        assert_eq!(
            make(&ek.public_key(), &name(1), &[0; 33]),
            Err(CredentialError::SecretSize(33))
        );
        assert!(make(&ek.public_key(), &name(1), &[]).is_err());
        assert!(Credential::read(&vec![b' '; MAX_FILE + 1]).is_err());
        let mut big = c.to_tpm2_tools();
        big.push(0);
        assert!(Credential::read(&big).is_err());
        assert!(parse_name("000b00").is_err());
        assert!(parse_name(&crate::bundle::hex(&name(3))).is_ok());
    }

    /// A credential made by tpm2-tools (`tpm2_makecredential -T none -G ecc`, an outside
    /// implementation) for a known EK and name opens here: the KDFs, the cipher and the HMAC
    /// agree with it.
    #[test]
    fn a_tpm2_tools_credential_opens_with_the_software_activation() {
        let ek = p256::SecretKey::from_slice(&unhex(TPM2_TOOLS_EK).expect("hex")).expect("ek");
        let file = unhex(TPM2_TOOLS_CRED).expect("hex");
        let (c, _) = Credential::read(&file).expect("read");
        let name = unhex(TPM2_TOOLS_NAME).expect("hex");
        assert_eq!(
            activate(&ek, &name, &c).expect("activate"),
            b"0123456789abcdef0123456789abcdef"
        );
    }

    /// The public area of an AK as the TPM makes it checks out and names itself as the TPM
    /// names it; one with the decrypt attribute (an unrestricted key) does not.
    #[test]
    fn an_ak_public_area_is_checked_before_a_credential_is_made_for_it() {
        // tpm2_createak -G ecc -g sha256 -s ecdsa's attributes: fixedTPM fixedParent
        // sensitiveDataOrigin userWithAuth restricted sign.
        let key = key(9).public_key().as_affine().to_encoded_point(false);
        let mut p = vec![0x00, 0x23, 0x00, 0x0b, 0x00, 0x05, 0x00, 0x72, 0x00, 0x00];
        p.extend_from_slice(&[0x00, 0x10, 0x00, 0x18, 0x00, 0x0b, 0x00, 0x03, 0x00, 0x10]);
        p.extend_from_slice(&tpm2b(key.x().expect("x")));
        p.extend_from_slice(&tpm2b(key.y().expect("y")));
        let ak = check_ak_public(&p).expect("an AK");
        assert_eq!(ak.name[..2], [0x00, 0x0b]);
        assert_eq!(ak.name[2..], Sha256::digest(&p)[..]);
        let want =
            super::super::quote::p256_pem(key.x().expect("x"), key.y().expect("y")).expect("pem");
        assert_eq!(ak.pem, want);
        // A verifier holding only the PEM names the AK as trustd's template does.
        let vk = p256::ecdsa::VerifyingKey::from_sec1_bytes(key.as_bytes()).expect("vk");
        assert_eq!(ak_public_area(&vk), p);
        assert_eq!(ak_name_of(&vk), crate::bundle::hex(&ak.name));
        let mut unrestricted = p.clone();
        unrestricted[5] = 0x06; // restricted off, decrypt on
        assert!(check_ak_public(&unrestricted).is_err());
        assert!(check_ak_public(&p[..p.len() - 1]).is_err());
    }

    /// An EK of another type is refused saying what it is: never the OID of P-256 (what the
    /// parser wanted) for a P-384 key, nor the EC algorithm OID for an RSA key.
    #[test]
    fn an_ek_of_another_type_is_named_for_what_it_is() {
        let e = ek_from_pem(P384_PEM).expect_err("P-384").to_string();
        assert!(e.contains("P-384") && e.contains("1.3.132.0.34"), "{e}");
        assert!(!e.contains("1.2.840.10045.3.1.7"), "{e}");
        let e = ek_from_pem(RSA_PEM).expect_err("RSA").to_string();
        assert!(e.contains("RSA") && !e.contains("1.2.840.10045"), "{e}");
        let e = ek_from_pem("junk").expect_err("junk").to_string();
        assert!(e.contains("not a PEM file"), "{e}");
        let e = super::super::quote::ak_from_pem(P384_PEM)
            .expect_err("P-384 AK")
            .to_string();
        assert!(
            e.contains("P-384") && !e.contains("1.2.840.10045.3.1.7"),
            "{e}"
        );
        let p256 = key(9).public_key();
        let pem = {
            use p256::pkcs8::EncodePublicKey as _;
            p256.to_public_key_pem(Default::default()).expect("pem")
        };
        assert!(ek_from_pem(&pem).is_ok());
        assert_eq!(
            super::super::quote::describe_public_key(&pem),
            "an ECC P-256 public key"
        );
    }

    const P384_PEM: &str = "-----BEGIN PUBLIC KEY-----
MHYwEAYHKoZIzj0CAQYFK4EEACIDYgAEAK12TjhsCI+9JCn4Jpok9E5vXSDEX5hn
LsbdRzZO0LRjHRtn3UCDesko/dJgtYOBXoUlNGSfYX7RzMAZ1mnSmkya9Eq0JKHe
ZJ4X+qOTBfuO36BUpXpam95Z2ZUY2sw0
-----END PUBLIC KEY-----
";
    const RSA_PEM: &str = "-----BEGIN PUBLIC KEY-----
MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDa/HdB8H+j0+tMWWbSckUxwiZZ
FIsXdnc5LTqbQa4FYs4CRo8ViW88Y+FZno2GEyV2UFiqJVb7gZEvIAcWzpX4RArh
+zKhE/9IWwmt15mkvq5t+Dy0JaE2WHHcBuZadhcQvYMeEoih7bTqfgo4P1gBigjQ
LF4i8OSjyQSqB9U4xwIDAQAB
-----END PUBLIC KEY-----
";

    const TPM2_TOOLS_EK: &str = "fabb344ce0bb351bdd871233ceb8549b49c204b153c19e38edc4f54865243b7b";
    const TPM2_TOOLS_NAME: &str =
        "000b45ecf111ec2680776f40d9f77e51950bd7e6daa2b75d93de182d4bf660cc6d31";
    const TPM2_TOOLS_CRED: &str = "badcc0de000000010044002016639ae85e57637fd9e391f4d03a2bf2d210d3aebbffdae9f90a618fa67429eefd6c4876b3367af177f049850c56a0dd00e12af5cf898035e17369aa8243a81d05ee00440020e28c4c447421cc2a4d635b80853607022fc49a36a1921c9a3dd2355451ad24e300207ba01ce851a27a63508539ae495b360c8ccb28527bd1081439a812b8f9ebc430";
}
