//! TPM 2.0 quotes read and checked in software, for a verifier off the device: the
//! marshalled `TPMS_ATTEST` of a quote and its `TPMT_SIGNATURE` (TPM 2.0 Library, Part 2:
//! Structures, 10.12.12 and 11.3.4), an ECDSA P-256 / SHA-256 attestation key as an SPKI
//! PEM, and the PCR digest over the quoted values. Pure: no TPM, no FFI.

use std::collections::BTreeMap;

use p256::ecdsa::signature::Verifier as _;
use sha2::{Digest as _, Sha256};

/// `TPM_GENERATED_VALUE`: every structure the TPM signs starts with it.
pub const TPM_GENERATED: u32 = 0xff54_4347;
/// `TPM_ST_ATTEST_QUOTE`.
pub const ST_ATTEST_QUOTE: u16 = 0x8018;
/// `TPM_ALG_SHA256`.
pub const ALG_SHA256: u16 = 0x000b;
/// `TPM_ALG_ECDSA`.
pub const ALG_ECDSA: u16 = 0x0018;

/// The DER prefix of a P-256 `SubjectPublicKeyInfo` (RFC 5480) before the 65-byte
/// uncompressed point.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// Why a quote was not accepted. Each says what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuoteError {
    /// The bytes are not a marshalled structure of the expected shape.
    #[error("malformed {what}: {why}")]
    Malformed {
        /// `quote` or `signature`.
        what: &'static str,
        /// What was wrong.
        why: String,
    },
    /// The attestation key is not a P-256 public key (SPKI PEM).
    #[error("attestation key: {0}")]
    Key(String),
    /// The signature does not verify with the attestation key.
    #[error("the quote's signature does not verify with the attestation key")]
    Signature,
    /// The quote answers other qualifying data (another nonce or another report).
    #[error(
        "the quote's qualifying data {got} is not {want} (the quote answers another nonce or report)"
    )]
    Qualifying {
        /// Hex of what the quote carries.
        got: String,
        /// Hex of what the report binds.
        want: String,
    },
    /// The PCR values given do not hash to the quote's PCR digest.
    #[error("the PCR values given do not match the quoted PCR digest: {0}")]
    Pcrs(String),
}

/// The TPM's clock at the quote (`TPMS_CLOCK_INFO`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClockInfo {
    /// Milliseconds the TPM has been powered since its clock was last set.
    pub clock: u64,
    /// TPM resets (reboots) so far: changes on every boot.
    pub reset_count: u32,
    /// TPM restarts (resume from hibernation) since the last reset.
    pub restart_count: u32,
    /// The clock has not gone back since it was last set.
    pub safe: bool,
}

/// A parsed quote (`TPMS_ATTEST` of type `TPM_ST_ATTEST_QUOTE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attest {
    /// The signer's qualified name.
    pub signer: Vec<u8>,
    /// The qualifying data (`extraData`).
    pub extra: Vec<u8>,
    /// The clock.
    pub clock: ClockInfo,
    /// The TPM's firmware version.
    pub firmware: u64,
    /// The PCRs quoted, `(hash algorithm, PCR indices ascending)`, in the quote's order.
    pub selection: Vec<(u16, Vec<u32>)>,
    /// The hash over the quoted PCR values.
    pub pcr_digest: Vec<u8>,
}

struct Reader<'a> {
    b: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], QuoteError> {
        if self.b.len() < n {
            return Err(QuoteError::Malformed {
                what: self.what,
                why: format!("{} bytes short", n - self.b.len()),
            });
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn u8(&mut self) -> Result<u8, QuoteError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, QuoteError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, QuoteError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, QuoteError> {
        let b = self.take(8)?;
        let mut a = [0; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    fn sized(&mut self) -> Result<&'a [u8], QuoteError> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
    fn bad(&self, why: impl Into<String>) -> QuoteError {
        QuoteError::Malformed {
            what: self.what,
            why: why.into(),
        }
    }
}

impl Attest {
    /// Parse a marshalled `TPMS_ATTEST` that must be a quote and have nothing after it.
    pub fn parse(bytes: &[u8]) -> Result<Self, QuoteError> {
        let mut r = Reader {
            b: bytes,
            what: "quote",
        };
        let magic = r.u32()?;
        if magic != TPM_GENERATED {
            return Err(r.bad(format!(
                "magic {magic:#x}, not TPM_GENERATED_VALUE (not made by a TPM)"
            )));
        }
        let kind = r.u16()?;
        if kind != ST_ATTEST_QUOTE {
            return Err(r.bad(format!("type {kind:#x}, not a quote")));
        }
        let signer = r.sized()?.to_vec();
        let extra = r.sized()?.to_vec();
        let clock = ClockInfo {
            clock: r.u64()?,
            reset_count: r.u32()?,
            restart_count: r.u32()?,
            safe: r.u8()? != 0,
        };
        let firmware = r.u64()?;
        let count = r.u32()?;
        if count > 16 {
            return Err(r.bad(format!("{count} PCR banks")));
        }
        let mut selection = Vec::new();
        for _ in 0..count {
            let alg = r.u16()?;
            let size = r.u8()?;
            if size > 8 {
                return Err(r.bad(format!("a PCR bitmap of {size} bytes")));
            }
            let bits = r.take(usize::from(size))?;
            let mut pcrs = Vec::new();
            for (i, byte) in bits.iter().enumerate() {
                for bit in 0..8u32 {
                    if byte & (1 << bit) != 0 {
                        pcrs.push(u32::try_from(i).unwrap_or(u32::MAX) * 8 + bit);
                    }
                }
            }
            selection.push((alg, pcrs));
        }
        let pcr_digest = r.sized()?.to_vec();
        if !r.b.is_empty() {
            return Err(r.bad(format!("{} bytes after the quote", r.b.len())));
        }
        Ok(Self {
            signer,
            extra,
            clock,
            firmware,
            selection,
            pcr_digest,
        })
    }

    /// The SHA-256 PCRs quoted, ascending (other banks are not read).
    pub fn sha256_pcrs(&self) -> Vec<u32> {
        self.selection
            .iter()
            .filter(|(alg, _)| *alg == ALG_SHA256)
            .flat_map(|(_, p)| p.iter().copied())
            .collect()
    }
}

/// Parse a marshalled ECDSA `TPMT_SIGNATURE` with SHA-256 into its `(r, s)` scalars.
pub fn parse_signature(bytes: &[u8]) -> Result<p256::ecdsa::Signature, QuoteError> {
    let mut r = Reader {
        b: bytes,
        what: "signature",
    };
    let alg = r.u16()?;
    let hash = r.u16()?;
    if alg != ALG_ECDSA || hash != ALG_SHA256 {
        return Err(r.bad(format!(
            "scheme {alg:#x} with hash {hash:#x}, not ECDSA with SHA-256"
        )));
    }
    let sr = r.sized()?;
    let ss = r.sized()?;
    if !r.b.is_empty() || sr.len() > 32 || ss.len() > 32 {
        return Err(r.bad("scalars longer than 32 bytes, or bytes after them"));
    }
    let pad = |v: &[u8]| {
        let mut a = [0u8; 32];
        a[32 - v.len()..].copy_from_slice(v);
        a
    };
    p256::ecdsa::Signature::from_scalars(pad(sr), pad(ss)).map_err(|e| r.bad(e.to_string()))
}

/// The SPKI PEM of a P-256 public key given its affine coordinates (big-endian, at most 32
/// bytes each, as the TPM returns them).
pub fn p256_pem(x: &[u8], y: &[u8]) -> Result<String, QuoteError> {
    use base64::Engine as _;
    if x.len() > 32 || y.len() > 32 {
        return Err(QuoteError::Key("a coordinate longer than 32 bytes".into()));
    }
    let mut der = P256_SPKI_PREFIX.to_vec();
    der.push(0x04);
    for c in [x, y] {
        der.extend(std::iter::repeat_n(0, 32 - c.len()));
        der.extend_from_slice(c);
    }
    // Refuse a point that is not on the curve.
    p256::PublicKey::from_sec1_bytes(&der[P256_SPKI_PREFIX.len()..])
        .map_err(|e| QuoteError::Key(e.to_string()))?;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
    let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END PUBLIC KEY-----\n");
    Ok(pem)
}

/// An attestation key's public key as a verifier holds it (ECDSA P-256).
pub type AkKey = p256::ecdsa::VerifyingKey;

/// The SPKI PEM of an attestation key (what `tpm-ak.pem` holds and tpm2-tools read).
pub fn ak_pem(ak: &AkKey) -> String {
    let p = ak.to_encoded_point(false);
    p256_pem(
        p.x().map(|x| &x[..]).unwrap_or_default(),
        p.y().map(|y| &y[..]).unwrap_or_default(),
    )
    .unwrap_or_default()
}

/// Read a P-256 public key from an SPKI PEM. Another key is refused with what it is (an RSA
/// key, an ECC key on another curve, not a public key in PEM at all).
pub fn ak_from_pem(pem: &str) -> Result<p256::ecdsa::VerifyingKey, QuoteError> {
    use p256::pkcs8::DecodePublicKey as _;
    p256::ecdsa::VerifyingKey::from_public_key_pem(pem.trim()).map_err(|_| {
        QuoteError::Key(format!(
            "{}, not the ECC P-256 public key (SPKI PEM, `tpm-ak.pem`) of a trustd attestation key",
            describe_public_key(pem)
        ))
    })
}

/// What an SPKI PEM holds, for an error message: `an ECC P-256 public key`, `an ECC P-384
/// public key (curve OID 1.3.132.0.34)`, `an RSA public key (OID 1.2.840.113549.1.1.1)`,
/// or why it is no public key at all. Never the OID a parser expected.
pub fn describe_public_key(pem: &str) -> String {
    use p256::pkcs8::der::Decode as _;
    use p256::pkcs8::spki::SubjectPublicKeyInfoRef;
    let text = pem.trim();
    if text.starts_with("-----BEGIN PRIVATE KEY")
        || text.starts_with("-----BEGIN EC PRIVATE KEY")
        || text.starts_with("-----BEGIN RSA PRIVATE KEY")
    {
        return "a private key (give the public key)".into();
    }
    if text.starts_with("-----BEGIN CERTIFICATE") {
        return "a certificate (give its public key, `openssl x509 -pubkey -noout`)".into();
    }
    let Ok((label, der)) = p256::pkcs8::der::pem::decode_vec(text.as_bytes()) else {
        return "not a PEM file".into();
    };
    if label != "PUBLIC KEY" {
        return format!("a PEM {label:?}, not a PUBLIC KEY");
    }
    let Ok(spki) = SubjectPublicKeyInfoRef::from_der(&der) else {
        return "a PUBLIC KEY whose DER is not a SubjectPublicKeyInfo".into();
    };
    let alg = spki.algorithm.oid.to_string();
    let curve = spki.algorithm.parameters_oid().ok().map(|o| o.to_string());
    match (alg.as_str(), curve.as_deref()) {
        ("1.2.840.10045.2.1", Some("1.2.840.10045.3.1.7")) => "an ECC P-256 public key".into(),
        ("1.2.840.10045.2.1", Some("1.3.132.0.34")) => {
            "an ECC P-384 public key (curve OID 1.3.132.0.34)".into()
        }
        ("1.2.840.10045.2.1", Some("1.3.132.0.35")) => {
            "an ECC P-521 public key (curve OID 1.3.132.0.35)".into()
        }
        ("1.2.840.10045.2.1", Some(c)) => format!("an ECC public key on the curve with OID {c}"),
        ("1.2.840.10045.2.1", None) => "an ECC public key without a named curve".into(),
        ("1.2.840.113549.1.1.1", _) => "an RSA public key (OID 1.2.840.113549.1.1.1)".into(),
        ("1.3.101.112", _) => "an Ed25519 public key (OID 1.3.101.112)".into(),
        (a, _) => format!("a public key of the algorithm with OID {a}"),
    }
}

/// What a checked quote says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// The parsed quote.
    pub attest: Attest,
    /// The SHA-256 values of the PCRs quoted, by index.
    pub pcrs: BTreeMap<u32, [u8; 32]>,
}

/// Check a quote: `signature` over `attest` by `ak` (ECDSA P-256, SHA-256), the qualifying
/// data equal to `qualifying`, SHA-256 PCRs only, and `pcrs` exactly the PCRs selected with
/// values that hash (in the selection's order) to the quoted PCR digest.
pub fn check(
    attest: &[u8],
    signature: &[u8],
    ak: &p256::ecdsa::VerifyingKey,
    qualifying: &[u8],
    pcrs: &BTreeMap<u32, [u8; 32]>,
) -> Result<Checked, QuoteError> {
    let sig = parse_signature(signature)?;
    ak.verify(attest, &sig).map_err(|_| QuoteError::Signature)?;
    let a = Attest::parse(attest)?;
    if a.extra != qualifying {
        return Err(QuoteError::Qualifying {
            got: crate::bundle::hex(&a.extra),
            want: crate::bundle::hex(qualifying),
        });
    }
    if a.selection.iter().any(|(alg, _)| *alg != ALG_SHA256) {
        return Err(QuoteError::Pcrs(
            "a bank other than SHA-256 is quoted".into(),
        ));
    }
    let selected = a.sha256_pcrs();
    let given: Vec<u32> = pcrs.keys().copied().collect();
    let mut sorted = selected.clone();
    sorted.sort_unstable();
    if sorted != given {
        return Err(QuoteError::Pcrs(format!(
            "the quote covers PCRs {selected:?}, the values given are for {given:?}"
        )));
    }
    let mut h = Sha256::new();
    for i in &selected {
        h.update(pcrs[i]);
    }
    if h.finalize().as_slice() != a.pcr_digest.as_slice() {
        return Err(QuoteError::Pcrs(
            "their hash differs from the signed digest".into(),
        ));
    }
    Ok(Checked {
        attest: a,
        pcrs: pcrs.clone(),
    })
}

/// Marshal a quote as a TPM would: for tests and fakes that sign in software.
pub fn marshal_quote(extra: &[u8], clock: ClockInfo, pcrs: &BTreeMap<u32, [u8; 32]>) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend(TPM_GENERATED.to_be_bytes());
    b.extend(ST_ATTEST_QUOTE.to_be_bytes());
    let signer = [0u8; 34];
    b.extend(u16::try_from(signer.len()).unwrap_or(0).to_be_bytes());
    b.extend(signer);
    b.extend(u16::try_from(extra.len()).unwrap_or(0).to_be_bytes());
    b.extend(extra);
    b.extend(clock.clock.to_be_bytes());
    b.extend(clock.reset_count.to_be_bytes());
    b.extend(clock.restart_count.to_be_bytes());
    b.push(u8::from(clock.safe));
    b.extend(0u64.to_be_bytes());
    b.extend(1u32.to_be_bytes());
    b.extend(ALG_SHA256.to_be_bytes());
    b.push(3);
    let mut bits = [0u8; 3];
    let mut h = Sha256::new();
    for (i, v) in pcrs {
        if let Some(byte) = bits.get_mut(usize::try_from(i / 8).unwrap_or(usize::MAX)) {
            *byte |= 1 << (i % 8);
        }
        h.update(v);
    }
    b.extend(bits);
    b.extend(32u16.to_be_bytes());
    b.extend(h.finalize());
    b
}

/// Marshal an ECDSA P-256 / SHA-256 signature as a `TPMT_SIGNATURE`.
pub fn marshal_signature(sig: &p256::ecdsa::Signature) -> Vec<u8> {
    let (r, s) = sig.split_bytes();
    let mut b = Vec::new();
    b.extend(ALG_ECDSA.to_be_bytes());
    b.extend(ALG_SHA256.to_be_bytes());
    for v in [r, s] {
        b.extend(32u16.to_be_bytes());
        b.extend(v);
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Signer as _;

    fn key() -> p256::ecdsa::SigningKey {
        p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).expect("key")
    }

    fn pcrs() -> BTreeMap<u32, [u8; 32]> {
        BTreeMap::from([(10, [1; 32]), (13, [2; 32])])
    }

    fn clock() -> ClockInfo {
        ClockInfo {
            clock: 5000,
            reset_count: 3,
            restart_count: 0,
            safe: true,
        }
    }

    #[test]
    fn a_quote_checks_only_with_its_key_data_and_pcr_values() {
        let k = key();
        let attest = marshal_quote(b"qualifying", clock(), &pcrs());
        let sig: p256::ecdsa::Signature = k.sign(&attest);
        let sig = marshal_signature(&sig);
        let vk = *k.verifying_key();
        let c = check(&attest, &sig, &vk, b"qualifying", &pcrs()).expect("checks");
        assert_eq!(c.attest.clock, clock());
        assert_eq!(c.attest.sha256_pcrs(), vec![10, 13]);
        assert_eq!(
            check(&attest, &sig, &vk, b"other", &pcrs()),
            Err(QuoteError::Qualifying {
                got: crate::bundle::hex(b"qualifying"),
                want: crate::bundle::hex(b"other")
            })
        );
        let mut lie = pcrs();
        lie.insert(13, [3; 32]);
        assert!(matches!(
            check(&attest, &sig, &vk, b"qualifying", &lie),
            Err(QuoteError::Pcrs(_))
        ));
        lie.remove(&13);
        assert!(matches!(
            check(&attest, &sig, &vk, b"qualifying", &lie),
            Err(QuoteError::Pcrs(_))
        ));
        let other = p256::ecdsa::SigningKey::from_slice(&[8u8; 32]).expect("key");
        assert_eq!(
            check(&attest, &sig, other.verifying_key(), b"qualifying", &pcrs()),
            Err(QuoteError::Signature)
        );
        let mut edited = attest.clone();
        let last = edited.len() - 1;
        edited[last] ^= 1;
        assert_eq!(
            check(&edited, &sig, &vk, b"qualifying", &pcrs()),
            Err(QuoteError::Signature)
        );
    }

    #[test]
    fn malformed_quotes_and_keys_are_refused_with_a_reason() {
        assert!(matches!(
            Attest::parse(&[0xff, 0x54, 0x43]),
            Err(QuoteError::Malformed { .. })
        ));
        let mut a = marshal_quote(b"x", clock(), &pcrs());
        a.push(0);
        assert!(matches!(
            Attest::parse(&a),
            Err(QuoteError::Malformed { .. })
        ));
        a.pop();
        a[0] = 0;
        assert!(matches!(
            Attest::parse(&a),
            Err(QuoteError::Malformed { .. })
        ));
        assert!(matches!(ak_from_pem("nope"), Err(QuoteError::Key(_))));
        let vk = key().verifying_key().to_encoded_point(false);
        let pem = p256_pem(vk.x().expect("x"), vk.y().expect("y")).expect("pem");
        assert_eq!(ak_from_pem(&pem).expect("pem"), *key().verifying_key());
        assert_eq!(ak_pem(key().verifying_key()), pem);
        assert!(p256_pem(&[1; 32], &[2; 32]).is_err(), "not on the curve");
    }
}
