//! Every filesystem location trustd reads or writes, under one root prefix.
//!
//! Nothing else in the crate names `/etc`, `/var` or `/run`: tests and the sandbox run pass a
//! temporary directory as the prefix, the daemon on a device passes `/`.

use std::path::{Path, PathBuf};

use crate::bundle::{Payload, TrustRoot};
use crate::policy::{IntelFeed, LifecycleCommand, Policy};

/// The locations of the files on a device (README, "Files on a device"), resolved under a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    prefix: PathBuf,
}

impl Paths {
    /// Locations under `prefix` (`/` on a device).
    pub fn new(prefix: impl Into<PathBuf>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The locations of a real device.
    pub fn system() -> Self {
        Self::new("/")
    }

    /// The root prefix everything else hangs from.
    pub fn prefix(&self) -> &Path {
        &self.prefix
    }

    /// `/etc/trustd`: read-only configuration provisioned with the image.
    pub fn config_dir(&self) -> PathBuf {
        self.prefix.join("etc/trustd")
    }

    /// `/etc/trustd/trust-root.json`: the provisioned trust root (plain JSON, not an envelope).
    pub fn provisioned_trust_root(&self) -> PathBuf {
        self.config_dir().join("trust-root.json")
    }

    /// `/etc/trustd/trustd.json`: optional local configuration.
    pub fn config_file(&self) -> PathBuf {
        self.config_dir().join("trustd.json")
    }

    /// `/var/lib/trustd`: persisted state, owned by trustd.
    pub fn state_dir(&self) -> PathBuf {
        self.prefix.join("var/lib/trustd")
    }

    /// `state.json`: serials, privacy mode, setup steps, lifecycle.
    pub fn state_file(&self) -> PathBuf {
        self.state_dir().join("state.json")
    }

    /// The last accepted signed input of type `P`, as the envelope it arrived in: the
    /// state directory's [`Payload::FILE_NAME`].
    pub fn input<P: Payload>(&self) -> PathBuf {
        self.state_dir().join(P::FILE_NAME)
    }

    /// The last-good policy bundle, as the signed envelope it arrived in.
    pub fn policy_bundle(&self) -> PathBuf {
        self.input::<Policy>()
    }

    /// The last-good intel feed, as the signed envelope it arrived in.
    pub fn intel_feed(&self) -> PathBuf {
        self.input::<IntelFeed>()
    }

    /// A trust root accepted by rotation; it supersedes the provisioned one.
    pub fn rotated_trust_root(&self) -> PathBuf {
        self.input::<TrustRoot>()
    }

    /// The device secret (0600) from which device handles are derived.
    pub fn device_secret(&self) -> PathBuf {
        self.state_dir().join("device.secret")
    }

    /// The last lifecycle command accepted, as the signed envelope it arrived in: its serial
    /// is the command floor again if state.json is lost.
    pub fn last_command(&self) -> PathBuf {
        self.input::<LifecycleCommand>()
    }

    /// The device's signing key (0600): signs audit checkpoints and posture reports.
    pub fn device_key(&self) -> PathBuf {
        self.state_dir().join("device.key")
    }

    /// Its public half, for verifiers.
    pub fn device_pub(&self) -> PathBuf {
        self.state_dir().join("device.pub")
    }

    /// The same public key as a signed-note verifier key (one line), for checkpoint verifiers.
    pub fn device_vkey(&self) -> PathBuf {
        self.state_dir().join("device.vkey")
    }

    /// Lock held by whoever writes the state directory (the daemon, or `trustctl` offline).
    pub fn state_lock(&self) -> PathBuf {
        self.state_dir().join(".lock")
    }

    /// `/var/log/trustd/audit`: audit segments, head and checkpoints.
    pub fn audit_dir(&self) -> PathBuf {
        self.prefix.join("var/log/trustd/audit")
    }

    /// The TPM attestation key's wrapped blob (0600): only the TPM that made it can load it.
    pub fn tpm_ak_blob(&self) -> PathBuf {
        self.state_dir().join("tpm-ak.json")
    }

    /// trustd's TPM measurement event log since boot (JSON lines, under the runtime
    /// directory: it goes with the reboot that resets the PCR).
    pub fn measurement_log(&self) -> PathBuf {
        self.runtime_dir().join("measurements.jsonl")
    }

    /// `/run/trustd`: runtime files.
    pub fn runtime_dir(&self) -> PathBuf {
        self.prefix.join("run/trustd")
    }

    /// `/run/trustd/private`: the private socket, `org.enigm.Trust1` peer to peer for root
    /// (docs/SECURITY.md, "The private socket").
    pub fn private_socket(&self) -> PathBuf {
        self.runtime_dir().join("private")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_location_stays_under_the_prefix() {
        let p = Paths::new("/tmp/x");
        for path in [
            p.provisioned_trust_root(),
            p.config_file(),
            p.state_file(),
            p.policy_bundle(),
            p.intel_feed(),
            p.rotated_trust_root(),
            p.device_secret(),
            p.state_lock(),
            p.audit_dir(),
            p.runtime_dir(),
        ] {
            assert!(
                path.starts_with("/tmp/x"),
                "{} escapes the prefix",
                path.display()
            );
        }
    }

    #[test]
    fn system_paths_are_the_documented_ones() {
        let p = Paths::system();
        assert_eq!(
            p.provisioned_trust_root(),
            Path::new("/etc/trustd/trust-root.json")
        );
        assert_eq!(p.state_file(), Path::new("/var/lib/trustd/state.json"));
        assert_eq!(
            p.policy_bundle(),
            Path::new("/var/lib/trustd/policy.dsse.json")
        );
        assert_eq!(p.intel_feed(), Path::new("/var/lib/trustd/intel.dsse.json"));
        assert_eq!(
            p.rotated_trust_root(),
            Path::new("/var/lib/trustd/trust-root.dsse.json")
        );
        assert_eq!(
            p.last_command(),
            Path::new("/var/lib/trustd/command.dsse.json")
        );
        assert_eq!(p.audit_dir(), Path::new("/var/log/trustd/audit"));
        assert_eq!(p.runtime_dir(), Path::new("/run/trustd"));
    }
}
