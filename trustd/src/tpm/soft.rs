//! A TPM in software for tests: PCRs in memory, quotes marshalled as a TPM marshals them and
//! signed by an ECDSA P-256 key it holds. It proves nothing; it lets the daemon's
//! measurements and a verifier's checks be tested without a TPM.

use std::collections::BTreeMap;

use p256::ecdsa::signature::Signer as _;

use super::quote::{ClockInfo, marshal_quote, marshal_signature, p256_pem};
use super::{Identity, Tpm, TpmError};

/// A software stand-in for a TPM.
#[derive(Debug)]
pub struct SoftTpm {
    key: p256::ecdsa::SigningKey,
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
        let point = key.verifying_key().to_encoded_point(false);
        let pem = p256_pem(
            point.x().map(|x| &x[..]).unwrap_or_default(),
            point.y().map(|y| &y[..]).unwrap_or_default(),
        )
        .map_err(|e| bad(e.to_string()))?;
        Ok(Self {
            key,
            identity: Identity {
                ak_public: pem.clone(),
                ak_name: "000b".to_owned() + &crate::bundle::sha256_hex(pem.as_bytes()),
                ek_public: pem,
                ek_certificate: None,
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
}
