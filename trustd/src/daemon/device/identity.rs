//! Identity: what makes this device itself and lets others check what it says. The device
//! secret (device handles, lifecycle binding), the device key (checkpoints of the audit log
//! and signed posture reports) and, when one is attached, the TPM that measures trustd's
//! enforcements and checkpoints into its PCR, quotes reports and activates credentials.
//!
//! [`Identity`] owns those; the audit log it records in is lent by the device for each call.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use ed25519_dalek::SigningKey;

use super::error::{CredentialRefusal, DeviceError, ReportError, SecretError};
use crate::Paths;
use crate::audit::checkpoint::Checkpoint;
use crate::audit::damage::{Anchor, CHECKPOINT_KIND};
use crate::audit::{Actor, AuditLog, Entry, Outcome};
use crate::posture::{self, Posture};
use crate::state::Lifecycle;
use crate::state::secret::DeviceSecret;
use crate::tpm::{Measurements, TpmError};

fn lock_tpm(m: &Mutex<Measurements>) -> MutexGuard<'_, Measurements> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Whether the last checkpoint measured is `cp`.
fn measured_is(m: &Measurements, cp: &Checkpoint) -> bool {
    m.last_checkpoint().is_some_and(|d| {
        d.get("size") == Some(&cp.size.to_string())
            && d.get("root") == Some(&crate::bundle::hex(&cp.root))
    })
}

/// The device secret, the device key and the TPM (see the module documentation).
#[derive(Debug)]
pub struct Identity {
    /// `None` once the device is revoked or retired (the secret is destroyed).
    secret: Option<DeviceSecret>,
    key: SigningKey,
    /// trustd's TPM measurements (`None`: no TPM; see [`Self::attach_tpm`]).
    tpm: Option<Mutex<Measurements>>,
    /// Why a configured TPM is not in use.
    tpm_unavailable: Option<String>,
}

/// Load the device key, or make it; returns it and whether it was made now (the caller
/// records that once the audit log is open).
pub(super) fn load_key(paths: &Paths) -> Result<(SigningKey, bool), DeviceError> {
    crate::report::load_or_create_key(paths).map_err(|e| SecretError::Key(e).into())
}

/// The audit log's anchor: checkpoints this key signed.
pub(super) fn anchor(key: &SigningKey) -> Anchor {
    Anchor {
        origin: crate::report::origin(&key.verifying_key()),
        key: key.verifying_key(),
    }
}

/// The device secret as the lifecycle says it must be: none once revoked or retired (a
/// destruction a crash interrupted is finished here), else the one on disk, made at first
/// start (audited).
pub(super) fn settle_secret(
    paths: &Paths,
    audit: &AuditLog,
    lifecycle: Lifecycle,
    actor: Actor,
) -> Result<Option<DeviceSecret>, DeviceError> {
    if matches!(lifecycle, Lifecycle::Revoked | Lifecycle::Retired) {
        if paths.device_secret().exists() {
            audit.append(
                Entry::new("device.secret", Outcome::Ok, actor)
                    .transition("present", "destroyed")
                    .reason(format!("device {}", lifecycle.as_str())),
            )?;
            DeviceSecret::destroy(paths).map_err(|source| SecretError::Write {
                path: paths.device_secret(),
                source,
            })?;
        }
        return Ok(None);
    }
    match DeviceSecret::load(paths) {
        Ok(Some(s)) => Ok(Some(s)),
        Ok(None) => new_secret(paths, audit, actor, "none", "first start").map(Some),
        // Never replaced silently: every handle would change. The admin repairs or removes it.
        Err(e) => {
            audit.append(
                Entry::new("device.secret", Outcome::Error, actor)
                    .reason(format!("the device secret cannot be read: {e}")),
            )?;
            Err(SecretError::Unreadable {
                path: paths.device_secret(),
                source: e,
            }
            .into())
        }
    }
}

/// Make, record and save a new device secret (every handle changes).
fn new_secret(
    paths: &Paths,
    audit: &AuditLog,
    actor: Actor,
    from: &str,
    why: &str,
) -> Result<DeviceSecret, DeviceError> {
    let s = DeviceSecret::generate().map_err(SecretError::Generate)?;
    audit.append(
        Entry::new("device.secret", Outcome::Ok, actor)
            .transition(from, "created")
            .reason(why.to_owned()),
    )?;
    s.save(paths).map_err(|source| SecretError::Write {
        path: paths.device_secret(),
        source,
    })?;
    Ok(s)
}

impl Identity {
    /// The identity of a device whose key is `key` and whose secret is `secret` (as
    /// [`settle_secret`] left it); no TPM yet.
    pub(super) fn new(key: SigningKey, secret: Option<DeviceSecret>) -> Self {
        Self {
            secret,
            key,
            tpm: None,
            tpm_unavailable: None,
        }
    }

    /// Settle the secret again for `lifecycle` (on reload).
    pub(super) fn settle(
        &mut self,
        paths: &Paths,
        audit: &AuditLog,
        lifecycle: Lifecycle,
        actor: Actor,
    ) -> Result<(), DeviceError> {
        self.secret = settle_secret(paths, audit, lifecycle, actor)?;
        Ok(())
    }

    /// Forget the secret and destroy it on disk (revoked or retired: `lifecycle`).
    pub(super) fn destroy_secret(
        &mut self,
        paths: &Paths,
        audit: &AuditLog,
        lifecycle: Lifecycle,
        actor: Actor,
    ) -> Result<(), DeviceError> {
        self.secret = None;
        settle_secret(paths, audit, lifecycle, actor).map(|_| ())
    }

    /// Replace the secret with a new one (re-enrolled after lost state: every handle
    /// changes).
    pub(super) fn renew_secret(
        &mut self,
        paths: &Paths,
        audit: &AuditLog,
        actor: Actor,
    ) -> Result<(), DeviceError> {
        let s = new_secret(
            paths,
            audit,
            actor,
            "present",
            "re-enrolled after lost state: every handle changes",
        )?;
        self.secret = Some(s);
        Ok(())
    }

    /// The device's handle for `issuer` (`None`: no secret, the device is revoked or
    /// retired).
    pub fn handle(&self, issuer: &str) -> Option<String> {
        self.secret.as_ref().map(|s| s.handle(issuer))
    }

    /// The checkpoint origin (and note key name) of this device's key.
    pub fn origin(&self) -> String {
        crate::report::origin(&self.key.verifying_key())
    }

    /// Sign a checkpoint of `audit` as it is now and store it (the `checkpoint` file).
    /// Refused if the log no longer extends the last checkpoint this key signed (unless
    /// a damage record names that one). If nothing was logged since the stored checkpoint,
    /// that one is returned. Otherwise an `audit.checkpoint` record announcing the size
    /// comes first, inside the checkpoint: a later open tells a removed or older
    /// checkpoint file from it.
    pub fn checkpoint(&self, audit: &AuditLog) -> Result<String, DeviceError> {
        use crate::audit::checkpoint::{checkpoint_log, parse_and_verify, read_checkpoint};
        let origin = self.origin();
        let stored = read_checkpoint(audit.dir()).ok().flatten().and_then(|n| {
            let cp = parse_and_verify(&n, &origin, &self.key.verifying_key()).ok()?;
            Some((n, cp))
        });
        if let Some((note, cp)) = stored
            && cp.origin == origin
            && (cp.size, cp.root) == audit.tree_head()
        {
            return Ok(note);
        }
        let size = audit.tree_head().0 + 1;
        // The intent first: a stop between the announcement and the stored checkpoint is
        // then told apart from a checkpoint removed afterwards (see `PENDING_FILE`).
        crate::audit::checkpoint::write_pending(audit.dir(), size)?;
        audit.append(
            Entry::new(CHECKPOINT_KIND, Outcome::Ok, Actor::this_process())
                .reason(format!(
                    "a checkpoint of at least {size} records (this one included) is signed next"
                ))
                .digest("size", size.to_string()),
        )?;
        let signed = checkpoint_log(audit, &origin, &origin, &self.key);
        if let Err(e) = crate::audit::checkpoint::clear_pending(audit.dir()) {
            tracing::warn!("{e}");
        }
        match signed {
            Ok((cp, note)) => {
                self.measure_checkpoint(audit, &cp);
                Ok(note)
            }
            Err(e) => {
                audit.append(
                    Entry::new(CHECKPOINT_KIND, Outcome::Error, Actor::this_process())
                        .reason(format!("the checkpoint announced was not signed: {e}"))
                        .digest("size", size.to_string()),
                )?;
                Err(DeviceError::Checkpoint(e))
            }
        }
    }

    /// Records in the last stored checkpoint of `audit` (0: none).
    pub fn checkpointed_size(&self, audit: &AuditLog) -> u64 {
        let origin = self.origin();
        crate::audit::checkpoint::read_checkpoint(audit.dir())
            .ok()
            .flatten()
            .and_then(|n| {
                crate::audit::checkpoint::parse_and_verify(&n, &origin, &self.key.verifying_key())
                    .ok()
            })
            .map_or(0, |c| c.size)
    }

    /// Sign `report` (whose checkpoint [`Self::checkpoint`] just made) as a DSSE envelope
    /// by the device key, with the TPM's quote and the consistency proofs from every tree
    /// head measured this boot when a TPM is attached.
    pub fn sign_report(
        &self,
        audit: &AuditLog,
        report: &crate::report::Report,
    ) -> Result<String, DeviceError> {
        let Some(tpm) = &self.tpm else {
            return crate::report::sign_report_v2(report, &self.key, Vec::new(), |_| Ok(None))
                .map_err(|e| ReportError::Encode(e).into());
        };
        // The checkpoint reported is the last one measured (one stored before the TPM was
        // attached is measured now).
        if let Ok(cp) = crate::audit::checkpoint::parse_and_verify(
            &report.evidence.checkpoint,
            &report.origin,
            &self.key.verifying_key(),
        ) && !measured_is(&lock_tpm(tpm), &cp)
        {
            self.measure_checkpoint(audit, &cp);
        }
        // Proofs that the log reported extends every tree head measured this boot.
        let size = audit.tree_head().0;
        let heads: std::collections::BTreeSet<u64> =
            crate::tpm::verify::measured_heads(lock_tpm(tpm).events())
                .into_iter()
                .map(|(s, _)| s)
                .filter(|s| (1..size).contains(s))
                .collect();
        let proofs = heads
            .into_iter()
            .filter_map(|s| audit.consistency_proof(s, size).ok())
            .collect();
        let mut quote_failure: Option<TpmError> = None;
        crate::report::sign_report_v2(report, &self.key, proofs, |q| {
            lock_tpm(tpm).attest(q).map(Some).map_err(|e| {
                let why = format!("TPM quote: {e}");
                quote_failure = Some(e);
                why
            })
        })
        .map_err(|e| match quote_failure.take() {
            Some(t) => ReportError::Quote(t).into(),
            None => ReportError::Encode(e).into(),
        })
    }

    /// Use `tpm` for evidence from now on: the measurement log `measurement_log` is checked
    /// against trustd's PCR, the start is measured (with `audit`'s tree head and this
    /// `boot_id`) and recorded with the attestation key's name. Fails only when the log
    /// cannot be opened or the PCR read; a failed measurement shows in posture.
    pub fn attach_tpm(
        &mut self,
        audit: &AuditLog,
        measurement_log: &std::path::Path,
        boot_id: &str,
        tpm: Box<dyn crate::tpm::Tpm>,
    ) -> Result<(), TpmError> {
        let id = tpm.identity().clone();
        let m = Measurements::open(tpm, measurement_log)?;
        let (size, root) = audit.tree_head();
        let detail = BTreeMap::from([
            ("version".to_owned(), env!("CARGO_PKG_VERSION").to_owned()),
            ("boot_id".to_owned(), boot_id.to_owned()),
            ("audit_size".to_owned(), size.to_string()),
            ("audit_root".to_owned(), crate::bundle::hex(&root)),
            ("ak".to_owned(), id.ak_name.clone()),
        ]);
        self.tpm = Some(Mutex::new(m));
        // A failed measurement is kept for posture (the Measurements' problem) and recorded.
        self.measure(audit, crate::tpm::Kind::Start, detail);
        self.tpm_unavailable = None;
        let mut entry = Entry::new("tpm.attach", Outcome::Ok, Actor::this_process())
            .transition(
                "none",
                if id.created {
                    "ak-created"
                } else {
                    "ak-loaded"
                },
            )
            .digest("ak", id.ak_name);
        if let Some(why) = id.replaced {
            entry = entry.reason(format!(
                "the earlier attestation key no longer loads ({why}); a new one was made"
            ));
        }
        audit.record(entry);
        Ok(())
    }

    /// A TPM is configured but cannot be used (`why`): posture says so, reports are signed
    /// by the software key only.
    pub fn tpm_unavailable(&mut self, audit: &AuditLog, why: String) {
        audit.record(
            Entry::new("tpm.attach", Outcome::Error, Actor::this_process()).reason(why.clone()),
        );
        self.tpm_unavailable = Some(why);
    }

    /// `TPM2_ActivateCredential` of a verifier's challenge by the attestation key and the
    /// endorsement key (see [`super::Device::activate_credential`]). Audited
    /// (`tpm.activate-credential`) whatever the outcome.
    pub fn activate_credential(
        &self,
        audit: &AuditLog,
        blob: Vec<u8>,
        secret: Vec<u8>,
        actor: Actor,
    ) -> Result<Vec<u8>, DeviceError> {
        let c = crate::tpm::credential::Credential { blob, secret };
        let input = crate::bundle::sha256_hex(&[&c.blob[..], &c.secret[..]].concat());
        let r = match (&self.tpm, c.check_sizes()) {
            (None, _) => Err(match &self.tpm_unavailable {
                Some(why) => CredentialRefusal::TpmNotInUse(why.clone()),
                None => CredentialRefusal::NoTpm,
            }
            .into()),
            (Some(_), Err(e)) => Err(CredentialRefusal::Malformed(e).into()),
            (Some(t), Ok(())) => lock_tpm(t).activate_credential(&c).map_err(|e| match e {
                TpmError::Refused { ref reason, .. } => CredentialRefusal::Refused {
                    reason: reason.clone(),
                    source: e,
                }
                .into(),
                e => DeviceError::Tpm(e),
            }),
        };
        let (outcome, reason) = match &r {
            Ok(_) => (Outcome::Ok, None),
            Err(DeviceError::Credential(why)) => (Outcome::Refused, Some(why.to_string())),
            Err(e) => (Outcome::Error, Some(e.to_string())),
        };
        let mut entry =
            Entry::new("tpm.activate-credential", outcome, actor).digest("input", input);
        if let Some(id) = self.tpm_identity() {
            entry = entry.digest("ak", id.ak_name);
        }
        if let Some(why) = reason {
            entry = entry.reason(why);
        }
        audit.record(entry);
        r
    }

    /// The attestation key and EK, when a TPM is attached.
    pub fn tpm_identity(&self) -> Option<crate::tpm::Identity> {
        self.tpm.as_ref().map(|t| lock_tpm(t).identity().clone())
    }

    fn tpm_problem(&self) -> Option<String> {
        if let Some(why) = &self.tpm_unavailable {
            return Some(format!(
                "the TPM configured is not in use ({why}): evidence is signed by the software key only"
            ));
        }
        let t = lock_tpm(self.tpm.as_ref()?);
        t.problem()
            .map(|p| format!("TPM measurements cannot be trusted this boot: {p}"))
    }

    /// Add to `p` what posture says about evidence: a TPM problem degrades it, and the
    /// evidence line names the signer.
    pub fn add_evidence(&self, p: &mut Posture) {
        if let Some(why) = self.tpm_problem() {
            p.level = p.level.max(posture::Level::Degraded);
            p.reasons.push(why);
        }
        if let Some(why) = &self.tpm_unavailable {
            p.evidence =
                posture::software_evidence(&format!("the TPM configured is not in use ({why})"));
        } else if let Some(id) = self.tpm_identity() {
            p.evidence = (
                crate::report::SIGNER_TPM.to_owned(),
                format!(
                    "reports carry a TPM quote by the attestation key {} over trustd's PCR {}",
                    id.ak_name,
                    crate::tpm::TRUSTD_PCR
                ),
            );
        }
    }

    fn measure(&self, audit: &AuditLog, kind: crate::tpm::Kind, detail: BTreeMap<String, String>) {
        let Some(t) = &self.tpm else { return };
        if let Err(e) = lock_tpm(t).measure(kind, detail) {
            audit.record(
                Entry::new("tpm.measure", Outcome::Error, Actor::this_process())
                    .reason(e.to_string()),
            );
        }
    }

    /// Measure an enforcement: the mode, the policy's digest and the ruleset's.
    pub fn measure_enforcement(&self, audit: &AuditLog, mode: &str, policy: &str, ruleset: &str) {
        self.measure(
            audit,
            crate::tpm::Kind::Enforce,
            BTreeMap::from([
                ("mode".to_owned(), mode.to_owned()),
                ("policy".to_owned(), policy.to_owned()),
                ("ruleset".to_owned(), ruleset.to_owned()),
            ]),
        );
    }

    fn measure_checkpoint(&self, audit: &AuditLog, cp: &Checkpoint) {
        self.measure(
            audit,
            crate::tpm::Kind::Checkpoint,
            BTreeMap::from([
                ("origin".to_owned(), cp.origin.clone()),
                ("size".to_owned(), cp.size.to_string()),
                ("root".to_owned(), crate::bundle::hex(&cp.root)),
            ]),
        );
    }
}
