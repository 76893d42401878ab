//! The device secret and the privacy-preserving device handles derived from it.
//!
//! 32 random bytes made at first start (0600 in the state directory). A verifier (an MDM,
//! an attestation service) knows the device by `handle(verifier)` = HMAC-SHA256(secret,
//! verifier id), truncated to 128 bits and base64url-encoded: stable for one verifier,
//! unlinkable across verifiers without the secret, and never a hardware serial or MAC.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use zeroize::{Zeroize, Zeroizing};

use crate::Paths;
use crate::files::atomic::{create_dir_all, fsync_dir, write_atomic};

/// The secret's length in bytes.
pub const SECRET_LEN: usize = 32;

/// The device secret. Its bytes never leave this type, and are zeroed when it is dropped
/// (`zeroize`, which the compiler may not optimize away; copies made before, such as a
/// register spill, are not covered).
pub struct DeviceSecret([u8; SECRET_LEN]);

impl std::fmt::Debug for DeviceSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeviceSecret(..)")
    }
}

impl Drop for DeviceSecret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// HMAC-SHA256 (RFC 2104, the `hmac` crate) of `msg` under `key` (any length: a key longer
/// than a block is hashed first).
pub fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    // HMAC takes a key of any length: new_from_slice cannot fail for it.
    let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(key) else {
        unreachable!("HMAC accepts keys of every length")
    };
    mac.update(msg);
    mac.finalize().into_bytes().into()
}

impl DeviceSecret {
    /// A new random secret.
    pub fn generate() -> std::io::Result<Self> {
        let mut s = Self([0u8; SECRET_LEN]);
        getrandom::fill(&mut s.0).map_err(std::io::Error::other)?;
        Ok(s)
    }

    /// The secret on disk, if there is one of the right length.
    pub fn load(paths: &Paths) -> std::io::Result<Option<Self>> {
        match std::fs::read(paths.device_secret()).map(Zeroizing::new) {
            Ok(b) => {
                let mut s = Self([0u8; SECRET_LEN]);
                if b.len() != SECRET_LEN {
                    return Err(std::io::Error::other(format!(
                        "{} is {} bytes, not {SECRET_LEN}",
                        paths.device_secret().display(),
                        b.len()
                    )));
                }
                s.0.copy_from_slice(&b);
                Ok(Some(s))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Write it (0600, atomically).
    pub fn save(&self, paths: &Paths) -> std::io::Result<()> {
        create_dir_all(&paths.state_dir(), 0o700)?;
        write_atomic(&paths.device_secret(), &self.0, 0o600)
    }

    /// Remove the secret from disk (and the directory entry durably).
    pub fn destroy(paths: &Paths) -> std::io::Result<()> {
        match std::fs::remove_file(paths.device_secret()) {
            Ok(()) => fsync_dir(&paths.state_dir()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The device's handle for `verifier`.
    pub fn handle(&self, verifier: &str) -> String {
        let mac = hmac_sha256(&self.0, verifier.as_bytes());
        URL_SAFE_NO_PAD.encode(&mac[..16])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn hmac_matches_rfc4231() {
        // Test case 2.
        assert_eq!(
            hex(&hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Test case 6: a key longer than a block.
        assert_eq!(
            hex(&hmac_sha256(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn handles_are_stable_per_verifier_and_unlinkable_across() {
        let a = DeviceSecret([7; SECRET_LEN]);
        let b = DeviceSecret([8; SECRET_LEN]);
        assert_eq!(a.handle("mdm.example"), a.handle("mdm.example"));
        assert_ne!(a.handle("mdm.example"), a.handle("attest.example"));
        assert_ne!(a.handle("mdm.example"), b.handle("mdm.example"));
        let h = a.handle("mdm.example");
        assert_eq!(h.len(), 22);
        assert!(
            h.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
    }

    #[test]
    fn saved_0600_loaded_and_destroyed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = Paths::new(dir.path());
        assert!(DeviceSecret::load(&paths).expect("load").is_none());
        let s = DeviceSecret::generate().expect("random");
        s.save(&paths).expect("save");
        let mode = std::fs::metadata(paths.device_secret())
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let l = DeviceSecret::load(&paths).expect("load").expect("present");
        assert_eq!(l.handle("v"), s.handle("v"));
        DeviceSecret::destroy(&paths).expect("destroy");
        assert!(DeviceSecret::load(&paths).expect("load").is_none());
    }
}
