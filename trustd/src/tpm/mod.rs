//! Hardware-backed evidence: trustd's TPM 2.0 attestation key, its measurements into a PCR
//! of its own, and quotes over them for posture reports (docs/ARCHITECTURE.md, "TPM
//! attestation"; docs/SECURITY.md, "What the TPM quote proves").
//!
//! Owns: the [`Tpm`] trait (extend, read, quote) with the real TPM ([`EsapiTpm`], the only
//! FFI edge, in `esapi.rs`) and a software stand-in for tests ([`SoftTpm`]); the event log
//! (`eventlog.rs`); the quote's parsing and checking for verifiers (`quote.rs`, pure);
//! [`Measurements`], which keeps the log and the PCR in step. Must not touch: the device
//! state, the audit log or the network; the daemon calls in with what to measure.

pub mod credential;
pub mod esapi;
pub mod eventlog;
pub mod quote;
mod soft;
pub mod verify;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use esapi::EsapiTpm;
pub use eventlog::{Event, EventLog, Kind};
pub use soft::SoftTpm;

/// trustd's PCR. PCRs 0-7 are the firmware's (SRTM), 8-9 the boot loader's (and the
/// kernel's initrd), 10 IMA's, 11 and 12 systemd-stub's and systemd-pcrphase's, 14 shim's
/// MOK lists, 15 systemd's machine and volume identity; 16 and 23 can be reset by software
/// and 17-22 belong to D-RTM. 13 is, in the UAPI registry, systemd-stub's system-extension
/// images, which the Enigm OS boot does not use; like every PCR below 16 it is reset only by
/// a reboot.
pub const TRUSTD_PCR: u32 = 13;
/// IMA's PCR.
pub const IMA_PCR: u32 = 10;
/// The firmware's PCRs (SRTM: code, configuration, boot manager, GPT, Secure Boot).
pub const FIRMWARE_PCRS: std::ops::RangeInclusive<u32> = 0..=7;

/// The PCRs every report's quote covers whatever their values, ascending: IMA's and
/// trustd's (an all-zero PCR 10 says IMA measured nothing). A verifier requires both, so that
/// root cannot leave PCR 10 out of a quote (hiding its tools that IMA measured) and pass for
/// a device without IMA. The firmware's PCRs are added where they hold values.
pub fn quoted_pcrs() -> Vec<u32> {
    vec![IMA_PCR, TRUSTD_PCR]
}

/// Check a TCTI as trustd.json's `tpm` names it, before the TSS reads it: `device:PATH` (an
/// absolute path), `swtpm:` and `mssim:` with only `host=H` and `port=P` (1-65535), each at
/// most once, or `tabrmd:` with the TSS's own options. The TSS binding ignores any other key
/// of `swtpm:`/`mssim:` and falls back to `localhost:2321`, so a unix socket
/// (`swtpm:path=...`, which tpm2-tools accept) or a typo would quietly reach whatever
/// listens on that port; such a value is refused here with the reason.
pub fn check_tcti(tcti: &str) -> Result<(), String> {
    let (kind, conf) = tcti.split_once(':').unwrap_or((tcti, ""));
    match kind {
        "device" => {
            if !conf.starts_with('/') {
                return Err(format!(
                    "tpm {tcti:?}: device: takes the absolute path of the TPM node (device:/dev/tpmrm0)"
                ));
            }
        }
        "swtpm" | "mssim" => {
            let mut seen = Vec::new();
            for kv in conf.split(',').filter(|kv| !kv.is_empty()) {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                match k {
                    "host" if !v.is_empty() => {}
                    "port" if v.parse::<u16>().is_ok_and(|p| p > 0) => {}
                    "host" | "port" => {
                        return Err(format!(
                            "tpm {tcti:?}: {k}={v:?} is not a {}",
                            if k == "host" {
                                "host"
                            } else {
                                "port (1-65535)"
                            }
                        ));
                    }
                    "path" => {
                        return Err(format!(
                            "tpm {tcti:?}: trustd reaches swtpm over TCP only ({kind}:host=H,port=P; start swtpm with `--server type=tcp,port=P --ctrl type=tcp,port=P+1`), not over a unix socket"
                        ));
                    }
                    _ => {
                        return Err(format!(
                            "tpm {tcti:?}: unknown option {k:?} ({kind}: takes host=H and port=P only; anything else would be ignored and localhost:2321 used)"
                        ));
                    }
                }
                if seen.contains(&k) {
                    return Err(format!("tpm {tcti:?}: {k} given twice"));
                }
                seen.push(k);
            }
            // Left out, the TSS would quietly use localhost and port 2321, where any local
            // user may listen.
            for k in ["host", "port"] {
                if !seen.contains(&k) {
                    return Err(format!(
                        "tpm {tcti:?}: {k}= is missing ({kind}:host=H,port=P; the TSS's default, localhost:2321, is not assumed)"
                    ));
                }
            }
        }
        "tabrmd" => {}
        _ => {
            return Err(format!(
                "tpm {tcti:?} is not a TCTI (device:PATH, swtpm:host=H,port=P, mssim:host=H,port=P, tabrmd:...) nor \"none\""
            ));
        }
    }
    Ok(())
}

/// Why the TPM could not do what was asked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TpmError {
    /// The TCTI could not be loaded or the TPM not reached.
    #[error("TPM at {tcti}: {reason}")]
    Tcti {
        /// The TCTI configured.
        tcti: String,
        /// Why.
        reason: String,
    },
    /// A TPM command failed.
    #[error("TPM: {op}: {reason}")]
    Tpm {
        /// What was being done.
        op: &'static str,
        /// The TSS's message.
        reason: String,
    },
    /// The attestation key's blob could not be read or written.
    #[error("attestation key blob {path}: {reason}")]
    Blob {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The TPM refused the input it was given (a credential made for another key, or
    /// altered): nothing is wrong with the TPM.
    #[error("TPM: {op}: {reason}")]
    Refused {
        /// What was being done.
        op: &'static str,
        /// Why, as a sentence.
        reason: String,
    },
    /// The TPM did not answer in time.
    #[error("TPM: {op} did not answer in time")]
    Hung {
        /// What was being done.
        op: &'static str,
    },
    /// The TPM stopped answering earlier; nothing more is asked of it.
    #[error("TPM is gone: {0}")]
    Gone(String),
    /// The event log could not be written.
    #[error("measurement event log {path}: {reason}")]
    EventLog {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// What a verifier needs to know the device's TPM keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// The attestation key's public key, SPKI PEM (ECDSA P-256).
    pub ak_public: String,
    /// The AK's TPM name (hex: name algorithm, then the hash of its public area).
    pub ak_name: String,
    /// The endorsement key's public key, SPKI PEM (the EK Credential Profile's ECC template).
    pub ek_public: String,
    /// The EK's certificate (base64 DER) where the TPM has one in NV.
    pub ek_certificate: Option<String>,
    /// The AK's public area, the marshalled `TPMT_PUBLIC` its name hashes (exported as
    /// `tpm-ak.pub` for credential activation; empty for the software TPM).
    #[serde(skip)]
    pub ak_tpm_public: Vec<u8>,
    /// The AK was made at this start.
    #[serde(skip)]
    pub created: bool,
    /// Why an earlier AK was replaced (its blob no longer loads: the TPM was cleared).
    #[serde(skip)]
    pub replaced: Option<String>,
}

impl Identity {
    /// Write the public parts for verifiers into `dir`: `tpm-ak.pem`, `tpm-ak.name` (hex),
    /// `tpm-ak.pub` (the marshalled `TPMT_PUBLIC`, binary, which a verifier checks and names
    /// before credential activation), `tpm-ek.pem` and, where the TPM has one, `tpm-ek.crt`
    /// (base64 DER), each 0644.
    pub fn export(&self, dir: &Path) -> std::io::Result<()> {
        let w = |name: &str, text: &str| {
            crate::state::atomic::write_atomic(&dir.join(name), text.as_bytes(), 0o644)
        };
        w("tpm-ak.pem", &self.ak_public)?;
        w("tpm-ak.name", &format!("{}\n", self.ak_name))?;
        w("tpm-ek.pem", &self.ek_public)?;
        if !self.ak_tpm_public.is_empty() {
            crate::state::atomic::write_atomic(
                &dir.join("tpm-ak.pub"),
                &self.ak_tpm_public,
                0o644,
            )?;
        }
        if let Some(c) = &self.ek_certificate {
            w("tpm-ek.crt", &format!("{c}\n"))?;
        }
        Ok(())
    }
}

/// A TPM as trustd uses it.
pub trait Tpm: Send + std::fmt::Debug {
    /// The AK and EK.
    fn identity(&self) -> &Identity;
    /// `TPM2_PCR_Extend` of the SHA-256 bank of `pcr` with `digest`.
    fn extend(&mut self, pcr: u32, digest: &[u8; 32]) -> Result<(), TpmError>;
    /// The SHA-256 value of `pcr`.
    fn read_pcr(&mut self, pcr: u32) -> Result<[u8; 32], TpmError>;
    /// `TPM2_Quote` by the AK over the SHA-256 bank of `pcrs` with `qualifying` as
    /// qualifying data. Returns the marshalled `TPMS_ATTEST` and `TPMT_SIGNATURE`.
    fn quote(&mut self, pcrs: &[u32], qualifying: &[u8]) -> Result<(Vec<u8>, Vec<u8>), TpmError>;
    /// `TPM2_ActivateCredential` with the AK as the object activated and the EK as the key
    /// that decrypts (TPM 2.0 Library Part 1 §24): the credential of `credential` when it was
    /// made for this AK's name under this EK ([`credential`]). A credential made for another
    /// key fails with [`TpmError::Refused`]. The default (a TPM stand-in without an EK) refuses
    /// every credential.
    fn activate_credential(
        &mut self,
        credential: &credential::Credential,
    ) -> Result<Vec<u8>, TpmError> {
        let _ = credential;
        Err(TpmError::Refused {
            op: "activate a credential",
            reason: "this TPM has no endorsement key to activate credentials with".into(),
        })
    }
}

/// The TPM part of a posture report: the quote, the PCR values it covers, the event log and
/// the keys. Byte fields are base64, PCR values hex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attestation {
    /// trustd's PCR.
    pub pcr: u32,
    /// The AK, the EK.
    pub identity: Identity,
    /// The marshalled `TPMS_ATTEST` (base64).
    pub quote: String,
    /// The marshalled `TPMT_SIGNATURE` (base64).
    pub signature: String,
    /// The SHA-256 values of the PCRs quoted (hex), by index.
    pub pcrs: BTreeMap<u32, String>,
    /// The TPM's clock at the quote, as the quote says (for readers; verifiers take it from
    /// the quote).
    pub clock: quote::ClockInfo,
    /// trustd's measurement events since boot.
    pub events: Vec<Event>,
}

const ZERO: [u8; 32] = [0; 32];

/// trustd's event log and its PCR, kept in step: each event is written to the log, then
/// extended. A problem found (the PCR does not replay the log, the TPM failed) is kept for
/// posture until the next reboot.
#[derive(Debug)]
pub struct Measurements {
    tpm: Box<dyn Tpm>,
    log: EventLog,
    problem: Option<String>,
}

impl Measurements {
    /// Open the log at `log_path` and compare its replay with the PCR. An event written but
    /// not extended (trustd stopped between the two) is extended now; any other difference is
    /// kept as the problem (the log goes on, and verifiers see the mismatch).
    pub fn open(mut tpm: Box<dyn Tpm>, log_path: &Path) -> Result<Self, TpmError> {
        let log_err = |e: std::io::Error| TpmError::EventLog {
            path: log_path.to_owned(),
            reason: e.to_string(),
        };
        let log = EventLog::open(log_path).map_err(log_err)?;
        // Torn lines (a crash mid-write) are dropped from the file too.
        log.rewrite().map_err(log_err)?;
        let pcr = tpm.read_pcr(TRUSTD_PCR)?;
        let mut problem = None;
        if let Err(e) = eventlog::replay_matches(log.events(), &pcr) {
            let n = log.events().len();
            let torn = n > 0
                && eventlog::replay(&log.events()[..n - 1]).is_ok_and(|v| v == pcr)
                && eventlog::replay(log.events()).is_ok();
            if torn {
                tpm.extend(TRUSTD_PCR, &log.events()[n - 1].compute())?;
            } else {
                problem = Some(format!("PCR {TRUSTD_PCR}: {e}"));
            }
        }
        Ok(Self { tpm, log, problem })
    }

    /// The AK and EK.
    pub fn identity(&self) -> &Identity {
        self.tpm.identity()
    }

    /// What is wrong with the measurements, if anything.
    pub fn problem(&self) -> Option<&str> {
        self.problem.as_deref()
    }

    /// The events since boot.
    pub fn events(&self) -> &[Event] {
        self.log.events()
    }

    /// Write an event and extend it into trustd's PCR. A failure is also kept as the problem.
    pub fn measure(
        &mut self,
        kind: Kind,
        detail: BTreeMap<String, String>,
    ) -> Result<(), TpmError> {
        let r = self
            .log
            .append(kind, detail)
            .map_err(|e| TpmError::EventLog {
                path: self.log.path().to_owned(),
                reason: e.to_string(),
            })
            .and_then(|e| self.tpm.extend(TRUSTD_PCR, &e.compute()));
        if let Err(e) = &r
            && self.problem.is_none()
        {
            self.problem = Some(format!("a measurement failed: {e}"));
        }
        r
    }

    /// Credential activation by the AK and EK (see [`Tpm::activate_credential`]).
    pub fn activate_credential(
        &mut self,
        credential: &credential::Credential,
    ) -> Result<Vec<u8>, TpmError> {
        self.tpm.activate_credential(credential)
    }

    /// The details of the last measured checkpoint.
    pub fn last_checkpoint(&self) -> Option<&BTreeMap<String, String>> {
        self.log
            .events()
            .iter()
            .rev()
            .find(|e| e.kind == Kind::Checkpoint)
            .map(|e| &e.detail)
    }

    /// A quote over [`quoted_pcrs`] (IMA's and trustd's) and the firmware's PCRs that hold
    /// values, answering `qualifying`, with the PCR values it covers (read after it and checked
    /// against its digest; taken again if something extended a PCR in between).
    pub fn attest(&mut self, qualifying: &[u8]) -> Result<Attestation, TpmError> {
        use base64::Engine as _;
        let mut pcrs = quoted_pcrs();
        for p in FIRMWARE_PCRS {
            let v = self.tpm.read_pcr(p)?;
            if v != ZERO && v != [0xff; 32] {
                pcrs.push(p);
            }
        }
        pcrs.sort_unstable();
        let mut last = String::new();
        for _ in 0..3 {
            let (attest, sig) = self.tpm.quote(&pcrs, qualifying)?;
            let mut values = BTreeMap::new();
            for p in &pcrs {
                values.insert(*p, self.tpm.read_pcr(*p)?);
            }
            let parsed = quote::Attest::parse(&attest).map_err(|e| TpmError::Tpm {
                op: "quote",
                reason: e.to_string(),
            })?;
            let digest = {
                use sha2::Digest as _;
                let mut h = sha2::Sha256::new();
                for p in parsed.sha256_pcrs() {
                    h.update(values.get(&p).unwrap_or(&ZERO));
                }
                h.finalize().to_vec()
            };
            if digest != parsed.pcr_digest {
                last = "the PCRs changed between the quote and their read".into();
                continue;
            }
            let b64 = base64::engine::general_purpose::STANDARD;
            return Ok(Attestation {
                pcr: TRUSTD_PCR,
                identity: self.tpm.identity().clone(),
                quote: b64.encode(&attest),
                signature: b64.encode(&sig),
                pcrs: values
                    .iter()
                    .map(|(k, v)| (*k, crate::bundle::hex(v)))
                    .collect(),
                clock: parsed.clock,
                events: self.log.events().to_vec(),
            });
        }
        Err(TpmError::Tpm {
            op: "quote",
            reason: last,
        })
    }
}
