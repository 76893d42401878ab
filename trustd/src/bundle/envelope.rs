//! The DSSE envelope and its pre-authentication encoding (PAE).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signer, SigningKey};
use serde::{Deserialize, Serialize};

use super::key_id;

/// A DSSE envelope as it travels: `payloadType`, base64 `payload`, `signatures`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// The media type of the payload; signed as part of the PAE.
    #[serde(rename = "payloadType")]
    pub payload_type: String,
    /// Standard base64 of the payload bytes.
    pub payload: String,
    /// One or more signatures over the PAE.
    pub signatures: Vec<Signature>,
}

/// One signature in an envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signature {
    /// Lowercase hex SHA-256 of the signer's raw public key, as trustctl writes it. DSSE
    /// makes the field optional and unauthenticated: absent reads as empty, and a verifier
    /// tries the role's keys whatever it says.
    #[serde(default)]
    pub keyid: String,
    /// Standard base64 of the 64-byte ed25519 signature.
    pub sig: String,
}

/// DSSE v1 pre-authentication encoding: what is actually signed.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + payload_type.len() + 32);
    out.extend_from_slice(b"DSSEv1 ");
    out.extend_from_slice(payload_type.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload_type.as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload);
    out
}

/// Sign `payload` as `payload_type` with each key (in order).
pub fn sign_envelope(payload_type: &str, payload: &[u8], keys: &[SigningKey]) -> Envelope {
    let msg = pae(payload_type, payload);
    Envelope {
        payload_type: payload_type.to_owned(),
        payload: STANDARD.encode(payload),
        signatures: keys
            .iter()
            .map(|k| Signature {
                keyid: key_id(&k.verifying_key()),
                sig: STANDARD.encode(k.sign(&msg).to_bytes()),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pae_matches_the_dsse_spec_example() {
        // The example from the DSSE protocol document.
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
    }
}
