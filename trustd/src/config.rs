//! The local configuration, `/etc/trustd/trustd.json` (optional): which groups hold the admin
//! and setup roles, how often drift is checked, how long an `nft` child may run, and which
//! TPM holds the attestation key. Unknown fields are refused, as everywhere.

use serde::Deserialize;

use crate::Paths;

/// A group named in the configuration: a name looked up in the group database, or a gid.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum GroupRef {
    /// A numeric gid.
    Gid(u32),
    /// A group name.
    Name(String),
}

impl GroupRef {
    /// The gid, or `None` when the name is not in the group database (then nobody holds
    /// the role through a group: fail closed).
    pub fn resolve(&self) -> Option<u32> {
        match self {
            Self::Gid(g) => Some(*g),
            Self::Name(n) => crate::sys::group_id(n),
        }
    }
}

/// `trustd.json`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Members hold the admin role (as does uid 0).
    pub admin_group: GroupRef,
    /// Members hold the setup role.
    pub setup_group: GroupRef,
    /// How often the kernel's ruleset is compared with the one enforced, in milliseconds.
    pub check_interval_ms: u64,
    /// Sign an audit checkpoint every this many records (and at every clean stop).
    pub checkpoint_every: u64,
    /// How long one `nft` child may run, in milliseconds, before it is killed (with its
    /// process group) and the operation fails with the previous ruleset kept
    /// ([`NFT_TIMEOUT_MS`] bounds it).
    pub nft_timeout_ms: u64,
    /// Size of each audit segment, in bytes, preallocated when the segment is started (at
    /// least 4096; default 8 MiB). Within a segment a full filesystem does not stop the log;
    /// starting the next one needs this much free space.
    pub audit_segment_bytes: u64,
    /// The TPM's TCTI, as the TSS names it: `device:/dev/tpmrm0` on a device (the kernel's
    /// resource manager), `swtpm:host=127.0.0.1,port=P` for a software TPM, or `none` for no
    /// TPM even where one is present. Absent: the TPM device trustd was started with
    /// (`trustd run --default-tpm-device`, which the shipped unit sets to `/dev/tpmrm0`) if it
    /// exists, else none; see [`Config::tpm_choice`]. Without a TPM reports say their
    /// evidence is signed by the software key only.
    pub tpm: Option<String>,
    /// Whether trustd owns its blocklist table `inet trustd_intel` (default true): the
    /// table is created with nftables' `owner` and `persist` flags (Linux 6.9), so that while
    /// trustd runs no other process, root's `nft` included, can change or delete it and
    /// `nft flush ruleset` leaves it; when trustd exits the table stays in force, unowned,
    /// until trustd adopts it again. `false` leaves it unowned as on older kernels: others'
    /// changes are then seen and repaired, not prevented. Read at start.
    pub intel_table_owned: bool,
}

/// The accepted range of `nft_timeout_ms`: long enough for a large blocklist (a 1M-entry
/// feed takes nft about 25 s), short enough that a hung `nft` cannot hold the daemon for long.
pub const NFT_TIMEOUT_MS: std::ops::RangeInclusive<u64> = 100..=600_000;

impl Default for Config {
    fn default() -> Self {
        Self {
            admin_group: GroupRef::Name("trustd-admin".into()),
            setup_group: GroupRef::Name("trustd-setup".into()),
            check_interval_ms: 1000,
            checkpoint_every: 1000,
            nft_timeout_ms: u64::try_from(crate::netfilter::DEFAULT_NFT_DEADLINE.as_millis())
                .unwrap_or(20_000),
            audit_segment_bytes: crate::audit::Options::default().max_segment_bytes,
            tpm: None,
            intel_table_owned: true,
        }
    }
}

/// The value of `tpm` that turns the TPM off even where one is present.
pub const TPM_NONE: &str = "none";

/// Which TPM trustd uses, as [`Config::tpm_choice`] decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TpmChoice {
    /// Open the TPM at this TCTI (a failure shows in posture).
    Use(String),
    /// No TPM, and that is expected (the reason, for the log).
    Off(String),
    /// No TPM, and that is not expected: posture says so (the reason).
    Missing(String),
}

/// Why the configuration could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct ConfigError {
    path: String,
    reason: String,
}

impl Config {
    /// Read `trustd.json`; its absence means the defaults. A file that is there but bad is an
    /// error: the daemon must not guess who its admins are.
    pub fn load(paths: &Paths) -> Result<Self, ConfigError> {
        let path = paths.config_file();
        let err = |reason: String| ConfigError {
            path: path.display().to_string(),
            reason,
        };
        let bytes = match crate::files::capped::read_capped(&path, 1 << 20) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(err(e.to_string())),
        };
        let c: Self = crate::json::parse_strict(&bytes).map_err(|e| err(e.to_string()))?;
        if c.check_interval_ms < 50 {
            return Err(err("check_interval_ms must be at least 50".into()));
        }
        if !NFT_TIMEOUT_MS.contains(&c.nft_timeout_ms) {
            return Err(err(format!(
                "nft_timeout_ms must be between {} and {} (it is {})",
                NFT_TIMEOUT_MS.start(),
                NFT_TIMEOUT_MS.end(),
                c.nft_timeout_ms
            )));
        }
        if let Some(t) = &c.tpm
            && t != TPM_NONE
        {
            crate::tpm::check_tcti(t).map_err(err)?;
        }
        if c.audit_segment_bytes < 4096 {
            return Err(err("audit_segment_bytes must be at least 4096".into()));
        }
        Ok(c)
    }
}

impl Config {
    /// Which TPM to use. `tpm` named in trustd.json wins (`none`: no TPM). Without it, the
    /// device node `default_device` (the shipped unit passes `/dev/tpmrm0`) is used when it
    /// exists. When it does not, but an attestation key was made in a TPM before
    /// (`ak_made`: its blob is in the state directory), the TPM is missing rather than
    /// absent: the evidence this device gave before was TPM-backed and now would not be,
    /// so posture must say so instead of quietly falling back to the software key.
    pub fn tpm_choice(&self, default_device: Option<&std::path::Path>, ak_made: bool) -> TpmChoice {
        match (self.tpm.as_deref(), default_device) {
            (Some(TPM_NONE), _) => TpmChoice::Off("trustd.json sets \"tpm\": \"none\"".into()),
            (Some(tcti), _) => TpmChoice::Use(tcti.to_owned()),
            (None, Some(dev)) if dev.exists() => {
                TpmChoice::Use(format!("device:{}", dev.display()))
            }
            (None, Some(dev)) if ak_made => TpmChoice::Missing(format!(
                "an attestation key was made in a TPM on this device, and there is no TPM at {} now",
                dev.display()
            )),
            (None, Some(dev)) => TpmChoice::Off(format!("no TPM at {}", dev.display())),
            (None, None) => TpmChoice::Off("no TPM configured".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_gids_defaults_and_unknown_fields() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = Paths::new(dir.path());
        assert_eq!(Config::load(&paths).expect("absent"), Config::default());
        std::fs::create_dir_all(paths.config_dir()).expect("mkdir");
        std::fs::write(
            paths.config_file(),
            br#"{"admin_group": 61001, "setup_group": "wheel"}"#,
        )
        .expect("write");
        let c = Config::load(&paths).expect("load");
        assert_eq!(c.admin_group.resolve(), Some(61001));
        assert_eq!(c.setup_group, GroupRef::Name("wheel".into()));
        assert_eq!(c.check_interval_ms, 1000);
        std::fs::write(paths.config_file(), br#"{"admin_groups": 1}"#).expect("write");
        let e = Config::load(&paths).expect_err("unknown field").to_string();
        assert!(e.contains("admin_groups"), "{e}");
        assert_eq!(
            GroupRef::Name("no-such-group-trustd".into()).resolve(),
            None
        );
    }

    #[test]
    fn the_nft_deadline_has_a_default_and_bounds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = Paths::new(dir.path());
        assert_eq!(Config::default().nft_timeout_ms, 20_000);
        std::fs::create_dir_all(paths.config_dir()).expect("mkdir");
        std::fs::write(paths.config_file(), br#"{"nft_timeout_ms": 1500}"#).expect("write");
        assert_eq!(Config::load(&paths).expect("load").nft_timeout_ms, 1500);
        for bad in ["0", "99", "600001"] {
            std::fs::write(
                paths.config_file(),
                format!(r#"{{"nft_timeout_ms": {bad}}}"#),
            )
            .expect("write");
            let e = Config::load(&paths).expect_err(bad).to_string();
            assert!(e.contains("nft_timeout_ms must be between"), "{bad}: {e}");
        }
        std::fs::write(paths.config_file(), br#"{"nft_timeout_ms": "10"}"#).expect("write");
        assert!(Config::load(&paths).is_err());
    }

    #[test]
    fn the_tpm_is_a_tcti_or_absent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = Paths::new(dir.path());
        assert_eq!(Config::default().tpm, None);
        std::fs::create_dir_all(paths.config_dir()).expect("mkdir");
        for good in [
            "device:/dev/tpmrm0",
            "swtpm:host=127.0.0.1,port=2321",
            "none",
        ] {
            std::fs::write(paths.config_file(), format!(r#"{{"tpm": "{good}"}}"#)).expect("write");
            assert_eq!(Config::load(&paths).expect(good).tpm.as_deref(), Some(good));
        }
        std::fs::write(paths.config_file(), br#"{"tpm": "/dev/tpm0"}"#).expect("write");
        let e = Config::load(&paths).expect_err("not a tcti").to_string();
        assert!(e.contains("is not a TCTI"), "{e}");
    }

    /// Security regression test: the TSS binding ignores every `swtpm:`/`mssim:` option but
    /// host and port and then connects to localhost:2321, where any local user may listen
    /// with a TPM of its own. A unix socket (`swtpm:path=`, as tpm2-tools take it), a typo
    /// or a bad port must be refused with the reason, never quietly sent elsewhere.
    #[test]
    fn a_tcti_the_tss_would_quietly_send_to_localhost_2321_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = Paths::new(dir.path());
        std::fs::create_dir_all(paths.config_dir()).expect("mkdir");
        for (bad, why) in [
            ("swtpm:path=/tmp/swtpm.sock", "over TCP only"),
            ("swtpm:host=127.0.0.1,prot=2321", "unknown option \"prot\""),
            ("mssim:host=127.0.0.1,port=99999", "not a port"),
            ("swtpm:port=0", "not a port"),
            ("swtpm:host=,port=2321", "not a host"),
            ("swtpm:port=2321,port=2400", "given twice"),
            ("device:dev/tpmrm0", "absolute path"),
            ("device:", "absolute path"),
            ("tpm2:/dev/tpm0", "is not a TCTI"),
            ("swtpm:", "host= is missing"),
            ("swtpm:port=2400", "host= is missing"),
            ("swtpm:host=127.0.0.1", "port= is missing"),
        ] {
            std::fs::write(
                paths.config_file(),
                serde_json::json!({ "tpm": bad }).to_string(),
            )
            .expect("write");
            let e = Config::load(&paths).expect_err(bad).to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
        for good in [
            "swtpm:host=127.0.0.1,port=2400",
            "mssim:host=localhost,port=2321",
        ] {
            std::fs::write(
                paths.config_file(),
                serde_json::json!({ "tpm": good }).to_string(),
            )
            .expect("write");
            assert!(Config::load(&paths).is_ok(), "{good}");
        }
    }

    /// A device with a TPM node uses it without configuration; trustd.json's `tpm` wins
    /// (`none` turns it off); a TPM that held the attestation key before and is gone now is
    /// missing (posture says so), not absent.
    #[test]
    fn the_tpm_device_is_used_when_present_and_a_vanished_one_is_missing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let node = dir.path().join("tpmrm0");
        let gone = dir.path().join("tpmrm9");
        std::fs::write(&node, b"").expect("node");
        let none = Config::default();
        assert_eq!(
            none.tpm_choice(Some(&node), false),
            TpmChoice::Use(format!("device:{}", node.display()))
        );
        assert!(matches!(
            none.tpm_choice(Some(&gone), false),
            TpmChoice::Off(_)
        ));
        let TpmChoice::Missing(why) = none.tpm_choice(Some(&gone), true) else {
            panic!("a vanished TPM is not missing");
        };
        assert!(why.contains("attestation key"), "{why}");
        assert!(matches!(none.tpm_choice(None, true), TpmChoice::Off(_)));
        let swtpm = Config {
            tpm: Some("swtpm:host=127.0.0.1,port=2321".into()),
            ..Config::default()
        };
        assert_eq!(
            swtpm.tpm_choice(Some(&node), false),
            TpmChoice::Use("swtpm:host=127.0.0.1,port=2321".into())
        );
        let off = Config {
            tpm: Some(TPM_NONE.into()),
            ..Config::default()
        };
        assert!(matches!(
            off.tpm_choice(Some(&node), true),
            TpmChoice::Off(_)
        ));
    }
}
