//! A TPM in software for tests: PCRs in memory, quotes marshalled as a TPM marshals them and
//! signed by an ECDSA P-256 key it holds. It proves nothing; it lets the daemon's
//! measurements and a verifier's checks be tested without a TPM.

use std::collections::BTreeMap;

use p256::ecdsa::signature::Signer as _;
use p256::elliptic_curve::sec1::ToEncodedPoint as _;

use super::quote::{ClockInfo, marshal_quote, marshal_signature, p256_pem};
use super::{Identity, Tpm, TpmError};

/// A software stand-in for a TPM.
#[derive(Debug)]
pub struct SoftTpm {
    key: p256::ecdsa::SigningKey,
    ek: p256::SecretKey,
    identity: Identity,
    pcrs: BTreeMap<u32, [u8; 32]>,
    /// The reset count its quotes carry.
    pub reset_count: u32,
    /// When set, every call fails with this.
    pub fail: Option<String>,
}

impl SoftTpm {
    /// A stand-in whose AK is derived from `seed` (any 32 bytes that make a valid scalar).
    pub fn new(seed: [u8; 32]) -> Result<Self, TpmError> {
        let bad = |e: String| TpmError::Tpm {
            op: "make a software key",
            reason: e,
        };
        let key = p256::ecdsa::SigningKey::from_slice(&seed).map_err(|e| bad(e.to_string()))?;
        // The EK: another scalar derived from the same seed.
        let ek = {
            use sha2::Digest as _;
            p256::SecretKey::from_slice(&sha2::Sha256::digest([&b"ek"[..], &seed].concat()))
                .map_err(|e| bad(e.to_string()))?
        };
        let ek_pem = {
            let p = ek.public_key().as_affine().to_encoded_point(false);
            p256_pem(
                p.x().map(|x| &x[..]).unwrap_or_default(),
                p.y().map(|y| &y[..]).unwrap_or_default(),
            )
            .map_err(|e| bad(e.to_string()))?
        };
        let vk = *key.verifying_key();
        let point = vk.to_encoded_point(false);
        let pem = p256_pem(
            point.x().map(|x| &x[..]).unwrap_or_default(),
            point.y().map(|y| &y[..]).unwrap_or_default(),
        )
        .map_err(|e| bad(e.to_string()))?;
        Ok(Self {
            key,
            ek,
            identity: Identity {
                ak_public: pem.clone(),
                ak_name: super::credential::ak_name_of(&vk),
                ek_public: ek_pem,
                ek_certificate: None,
                ak_tpm_public: super::credential::ak_public_area(&vk),
                created: true,
                replaced: None,
            },
            pcrs: BTreeMap::new(),
            reset_count: 1,
            fail: None,
        })
    }

    /// The AK's signing key (a test forges with it).
    pub fn signing_key(&self) -> &p256::ecdsa::SigningKey {
        &self.key
    }

    fn check(&self) -> Result<(), TpmError> {
        match &self.fail {
            Some(why) => Err(TpmError::Gone(why.clone())),
            None => Ok(()),
        }
    }
}

impl Tpm for SoftTpm {
    fn identity(&self) -> &Identity {
        &self.identity
    }

    fn extend(&mut self, pcr: u32, digest: &[u8; 32]) -> Result<(), TpmError> {
        self.check()?;
        let old = self.pcrs.get(&pcr).copied().unwrap_or([0; 32]);
        self.pcrs.insert(pcr, super::eventlog::extend(&old, digest));
        Ok(())
    }

    fn read_pcr(&mut self, pcr: u32) -> Result<[u8; 32], TpmError> {
        self.check()?;
        Ok(self.pcrs.get(&pcr).copied().unwrap_or([0; 32]))
    }

    fn quote(&mut self, pcrs: &[u32], qualifying: &[u8]) -> Result<(Vec<u8>, Vec<u8>), TpmError> {
        self.check()?;
        let values = pcrs
            .iter()
            .map(|p| (*p, self.pcrs.get(p).copied().unwrap_or([0; 32])))
            .collect();
        let attest = marshal_quote(
            qualifying,
            ClockInfo {
                clock: 1000,
                reset_count: self.reset_count,
                restart_count: 0,
                safe: true,
            },
            &values,
        );
        let sig: p256::ecdsa::Signature = self.key.sign(&attest);
        Ok((attest, marshal_signature(&sig)))
    }

    fn activate_credential(
        &mut self,
        credential: &super::credential::Credential,
    ) -> Result<Vec<u8>, TpmError> {
        self.check()?;
        let name =
            super::credential::parse_name(&self.identity.ak_name).map_err(|e| TpmError::Tpm {
                op: "activate a credential",
                reason: e.to_string(),
            })?;
        super::credential::activate(&self.ek, &name, credential).map_err(|e| TpmError::Refused {
            op: "activate a credential",
            reason: e.to_string(),
        })
    }
}
