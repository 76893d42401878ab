//! ed25519 keys: generation, key ids, and the key files `trustctl keygen` writes.

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::digest::sha256_hex;

/// Why a key file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// Reading or writing failed.
    #[error("key file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The content is not a key file of the expected kind.
    #[error("key file {path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// The keyid of a public key: lowercase hex SHA-256 of its 32 raw bytes.
pub fn key_id(key: &VerifyingKey) -> String {
    sha256_hex(key.as_bytes())
}

/// A new key from the operating system's random source.
pub fn generate_key() -> std::io::Result<SigningKey> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(std::io::Error::other)?;
    Ok(SigningKey::from_bytes(&seed))
}

/// A private key file (written 0600).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivateKeyFile {
    /// Always `ed25519`.
    pub alg: String,
    /// Its keyid.
    pub keyid: String,
    /// Standard base64 of the 32-byte seed.
    pub private: String,
}

/// A public key file.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicKeyFile {
    /// Always `ed25519`.
    pub alg: String,
    /// Its keyid.
    pub keyid: String,
    /// Standard base64 of the 32-byte public key.
    pub public: String,
}

/// Key files are a few hundred bytes; the cap only keeps an endless file out of memory.
const MAX_KEY_FILE_BYTES: usize = 64 << 10;

fn read(path: &Path) -> Result<Vec<u8>, KeyFileError> {
    crate::files::capped::read_capped(path, MAX_KEY_FILE_BYTES).map_err(|source| KeyFileError::Io {
        path: path.into(),
        source,
    })
}

fn invalid(path: &Path, reason: impl Into<String>) -> KeyFileError {
    KeyFileError::Invalid {
        path: path.into(),
        reason: reason.into(),
    }
}

fn decode32(path: &Path, b64: &str) -> Result<[u8; 32], KeyFileError> {
    let raw = STANDARD
        .decode(b64)
        .map_err(|_| invalid(path, "key is not valid base64"))?;
    raw.try_into()
        .map_err(|_| invalid(path, "key is not 32 bytes"))
}

impl PrivateKeyFile {
    /// The file for `key`.
    pub fn new(key: &SigningKey) -> Self {
        Self {
            alg: "ed25519".into(),
            keyid: key_id(&key.verifying_key()),
            private: STANDARD.encode(key.to_bytes()),
        }
    }

    /// Load a signing key, checking its keyid.
    pub fn load(path: &Path) -> Result<SigningKey, KeyFileError> {
        let f: Self = crate::json::parse_strict(&read(path)?)
            .map_err(|e| invalid(path, format!("not a private key file: {e}")))?;
        if f.alg != "ed25519" {
            return Err(invalid(path, format!("unsupported alg {:?}", f.alg)));
        }
        let key = SigningKey::from_bytes(&decode32(path, &f.private)?);
        if key_id(&key.verifying_key()) != f.keyid {
            return Err(invalid(path, "keyid does not match the key"));
        }
        Ok(key)
    }
}

impl PublicKeyFile {
    /// The file for `key`.
    pub fn new(key: &VerifyingKey) -> Self {
        Self {
            alg: "ed25519".into(),
            keyid: key_id(key),
            public: STANDARD.encode(key.as_bytes()),
        }
    }

    /// Load a public key, checking its keyid.
    pub fn load(path: &Path) -> Result<VerifyingKey, KeyFileError> {
        let f: Self = crate::json::parse_strict(&read(path)?)
            .map_err(|e| invalid(path, format!("not a public key file: {e}")))?;
        if f.alg != "ed25519" {
            return Err(invalid(path, format!("unsupported alg {:?}", f.alg)));
        }
        let key = VerifyingKey::from_bytes(&decode32(path, &f.public)?)
            .map_err(|_| invalid(path, "not a valid ed25519 public key"))?;
        if key_id(&key) != f.keyid {
            return Err(invalid(path, "keyid does not match the key"));
        }
        Ok(key)
    }
}
