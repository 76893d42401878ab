//! The TPM itself, through `tss-esapi` over Debian's libtss2 (ESAPI and the TCTI loader): the
//! only place of trustd that calls into the TSS. The ESAPI context is not `Send`, so it lives
//! on one thread of its own and the daemon sends it jobs ([`EsapiTpm`]); a job that does not
//! answer within [`TPM_DEADLINE`] fails, and the TPM is then taken as gone.
//!
//! Keys: the endorsement key from the TCG EK Credential Profile's default ECC P-256 template
//! (`TPM2_CreatePrimary` in the endorsement hierarchy: the same key every time), and the
//! attestation key, a restricted ECDSA P-256 / SHA-256 signing key created under it at the
//! first start (as `tpm2_createak` does, with the EK's policy). The AK's TPM-wrapped private
//! blob and public area are kept in the state directory and loaded under the EK at each
//! start; the private part never leaves the TPM unwrapped.

use std::path::{Path, PathBuf};
use std::str::FromStr as _;
use std::sync::mpsc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use tss_esapi::Context;
use tss_esapi::abstraction::{AsymmetricAlgorithmSelection, DefaultKey, ak, ek};
use tss_esapi::attributes::SessionAttributesBuilder;
use tss_esapi::constants::tss::TPM2_TRANSIENT_FIRST;
use tss_esapi::constants::{CapabilityType, SessionType};
use tss_esapi::handles::{AuthHandle, KeyHandle, PcrHandle, SessionHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::{
    AsymmetricAlgorithm, HashingAlgorithm, SignatureSchemeAlgorithm,
};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    CapabilityData, Data, Digest, DigestValues, EncryptedSecret, IdObject, PcrSelectionListBuilder,
    PcrSlot, Private, Public, SignatureScheme, SymmetricDefinition,
};
use tss_esapi::traits::{Marshall as _, UnMarshall as _};

use super::credential::Credential;
use super::{Identity, Tpm, TpmError};

/// How long one TPM job may take before the TPM is taken as gone.
pub const TPM_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

/// The AK blob in the state directory.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AkBlob {
    /// Base64 of the marshalled `TPMT_PUBLIC`.
    public: String,
    /// Base64 of the `TPM2B_PRIVATE` buffer (wrapped by the EK: useless outside this TPM).
    private: String,
}

fn tss(op: &'static str) -> impl FnOnce(tss_esapi::Error) -> TpmError {
    move |e| TpmError::Tpm {
        op,
        reason: e.to_string(),
    }
}

struct Inner {
    ctx: Context,
    ak: KeyHandle,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // A raw TPM (no resource manager) keeps transient objects until flushed.
        let _ = self.ctx.flush_context(self.ak.into());
    }
}

fn ecc_pem(public: &Public) -> Result<String, TpmError> {
    match public {
        Public::Ecc { unique, .. } => {
            super::quote::p256_pem(unique.x().value(), unique.y().value()).map_err(|e| {
                TpmError::Tpm {
                    op: "read public key",
                    reason: e.to_string(),
                }
            })
        }
        _ => Err(TpmError::Tpm {
            op: "read public key",
            reason: "not an ECC key".into(),
        }),
    }
}

/// Flush every transient object this connection can see: on a raw TPM they outlive a
/// killed trustd; under the kernel's resource manager there are none.
fn flush_stale(ctx: &mut Context) {
    let Ok((CapabilityData::Handles(list), _)) =
        ctx.get_capability(CapabilityType::Handles, TPM2_TRANSIENT_FIRST, 64)
    else {
        return;
    };
    for h in list.into_inner() {
        if let TpmHandle::Transient(_) = h
            && let Ok(obj) = ctx.execute_without_session(|c| c.tr_from_tpm_public(h))
        {
            let _ = ctx.flush_context(obj);
        }
    }
}

/// The NV index of the ECC P-256 EK certificate (TCG EK Credential Profile).
const EK_CERT_ECC_P256: u32 = 0x01c0_000a;

/// Whether the TPM holds an ECC EK certificate (asked first, so that a TPM without one does
/// not make the TSS log errors).
fn has_ek_certificate(ctx: &mut Context) -> bool {
    matches!(
        ctx.get_capability(CapabilityType::Handles, EK_CERT_ECC_P256, 1),
        Ok((CapabilityData::Handles(list), _))
            if list.iter().any(|h| u32::from(*h) == EK_CERT_ECC_P256)
    )
}

fn open_inner(tcti: &str, blob_path: &Path) -> Result<(Inner, Identity), TpmError> {
    super::check_tcti(tcti).map_err(|reason| TpmError::Tcti {
        tcti: tcti.to_owned(),
        reason,
    })?;
    let conf = tss_esapi::TctiNameConf::from_str(tcti).map_err(|e| TpmError::Tcti {
        tcti: tcti.to_owned(),
        reason: e.to_string(),
    })?;
    // The TSS's error for a TCTI that cannot connect is its bare response code ("response
    // code not recognized"); say what it means.
    let mut ctx = Context::new(conf).map_err(|e| TpmError::Tcti {
        tcti: tcti.to_owned(),
        reason: format!(
            "could not connect: nothing answers there, or trustd may not open it (the TSS says: {e}; its messages on stderr name the cause)"
        ),
    })?;
    flush_stale(&mut ctx);
    let ek = ek::create_ek_object(&mut ctx, AsymmetricAlgorithm::Ecc, None::<DefaultKey>)
        .map_err(tss("create the endorsement key"))?;
    let result = ak_under(&mut ctx, ek, blob_path);
    let ek_public = ctx
        .read_public(ek)
        .map_err(tss("read the endorsement key"))
        .and_then(|(p, _, _)| ecc_pem(&p));
    let _ = ctx.flush_context(ek.into());
    let (ak, created, replaced) = result?;
    let ek_certificate = has_ek_certificate(&mut ctx)
        .then(|| {
            ek::retrieve_ek_pubcert(
                &mut ctx,
                AsymmetricAlgorithmSelection::Ecc(EccCurve::NistP256),
            )
            .ok()
        })
        .flatten()
        .map(|der| STANDARD.encode(der));
    let (public, name, _) = ctx
        .read_public(ak)
        .map_err(tss("read the attestation key"))?;
    let identity = Identity {
        ak_public: ecc_pem(&public)?,
        ak_name: crate::bundle::hex(name.value()),
        ek_public: ek_public?,
        ek_certificate,
        ak_tpm_public: public
            .marshall()
            .map_err(tss("marshal the attestation key"))?,
        created,
        replaced,
    };
    Ok((Inner { ctx, ak }, identity))
}

/// Whether a public area read from the AK blob is an attestation key as trustd makes one: a
/// restricted signing key (not a decryption key) that never leaves this TPM
/// (`fixedTPM`, `fixedParent`, `sensitiveDataOrigin`), ECC P-256 with ECDSA / SHA-256
/// (TPM 2.0 Library, Part 2, 8.3 `TPMA_OBJECT`). A blob planted by root with an unrestricted
/// key of the same TPM would let it sign any `TPMS_ATTEST` it likes, so such a blob is not
/// used. `TPM2_Load` checks that the private part belongs to this public area.
fn check_ak_public(public: &Public) -> Result<(), String> {
    let Public::Ecc {
        object_attributes: a,
        parameters,
        ..
    } = public
    else {
        return Err("the key in the blob is not an ECC key".into());
    };
    let attrs_ok = a.restricted()
        && a.sign_encrypt()
        && !a.decrypt()
        && a.fixed_tpm()
        && a.fixed_parent()
        && a.sensitive_data_origin();
    if !attrs_ok {
        return Err(format!(
            "the key in the blob is not a restricted signing key fixed to this TPM (attributes {:#010x})",
            u32::from(*a)
        ));
    }
    let scheme_ok = matches!(
        parameters.ecc_scheme(),
        tss_esapi::structures::EccScheme::EcDsa(h)
            if h.hashing_algorithm() == HashingAlgorithm::Sha256
    );
    if parameters.ecc_curve() != EccCurve::NistP256 || !scheme_ok {
        return Err("the key in the blob is not ECDSA P-256 with SHA-256".into());
    }
    Ok(())
}

/// Load the AK from its blob, or make one (and its blob) if there is none or it no longer
/// loads (the TPM was cleared: its hierarchy proofs changed; the EK stays the same). Returns the handle, whether
/// it was made now, and why the old one was replaced.
fn ak_under(
    ctx: &mut Context,
    ek: KeyHandle,
    blob_path: &Path,
) -> Result<(KeyHandle, bool, Option<String>), TpmError> {
    let blob_err = |reason: String| TpmError::Blob {
        path: blob_path.to_owned(),
        reason,
    };
    let mut replaced = None;
    match std::fs::read(blob_path) {
        Ok(bytes) => {
            let loaded = crate::json::parse_strict::<AkBlob>(&bytes)
                .map_err(|e| e.to_string())
                .and_then(|b| {
                    let public = STANDARD.decode(&b.public).map_err(|e| e.to_string())?;
                    let private = STANDARD.decode(&b.private).map_err(|e| e.to_string())?;
                    let public = Public::unmarshall(&public).map_err(|e| e.to_string())?;
                    check_ak_public(&public)?;
                    let private = Private::try_from(private).map_err(|e| e.to_string())?;
                    ak::load_ak(ctx, ek, None, private, public).map_err(|e| e.to_string())
                });
            match loaded {
                Ok(h) => return Ok((h, false, None)),
                Err(e) => replaced = Some(e),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(blob_err(e.to_string())),
    }
    let made = ak::create_ak(
        ctx,
        ek,
        HashingAlgorithm::Sha256,
        SignatureSchemeAlgorithm::EcDsa,
        None,
        None::<DefaultKey>,
    )
    .map_err(tss("create the attestation key"))?;
    let blob = AkBlob {
        public: STANDARD.encode(
            made.out_public
                .marshall()
                .map_err(tss("marshal the attestation key"))?,
        ),
        private: STANDARD.encode(made.out_private.value()),
    };
    let text = serde_json::to_vec_pretty(&blob).map_err(|e| blob_err(e.to_string()))?;
    if let Some(dir) = blob_path.parent() {
        crate::state::atomic::create_dir_all(dir, 0o700).map_err(|e| blob_err(e.to_string()))?;
    }
    crate::state::atomic::write_atomic(blob_path, &text, 0o600)
        .map_err(|e| blob_err(e.to_string()))?;
    let h = ak::load_ak(ctx, ek, None, made.out_private, made.out_public)
        .map_err(tss("load the attestation key"))?;
    Ok((h, true, replaced))
}

fn pcr_handle(pcr: u32) -> Result<PcrHandle, TpmError> {
    PcrHandle::try_from(pcr).map_err(|e| TpmError::Tpm {
        op: "name a PCR",
        reason: format!("PCR {pcr}: {e}"),
    })
}

fn selection(pcrs: &[u32]) -> Result<tss_esapi::structures::PcrSelectionList, TpmError> {
    let slots = pcrs
        .iter()
        .map(|p| {
            1u32.checked_shl(*p)
                .and_then(|bit| PcrSlot::try_from(bit).ok())
                .ok_or_else(|| TpmError::Tpm {
                    op: "select PCRs",
                    reason: format!("no PCR {p}"),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    PcrSelectionListBuilder::new()
        .with_selection(HashingAlgorithm::Sha256, &slots)
        .build()
        .map_err(tss("select PCRs"))
}

impl Inner {
    fn extend(&mut self, pcr: u32, digest: &[u8; 32]) -> Result<(), TpmError> {
        let mut values = DigestValues::new();
        values.set(
            HashingAlgorithm::Sha256,
            Digest::try_from(digest.to_vec()).map_err(tss("extend"))?,
        );
        let handle = pcr_handle(pcr)?;
        self.ctx
            .execute_with_nullauth_session(|c| c.pcr_extend(handle, values))
            .map_err(tss("extend"))
    }

    fn read_pcr(&mut self, pcr: u32) -> Result<[u8; 32], TpmError> {
        let sel = selection(&[pcr])?;
        let (_, _, digests) = self
            .ctx
            .execute_without_session(|c| c.pcr_read(sel))
            .map_err(tss("read a PCR"))?;
        digests
            .value()
            .first()
            .and_then(|d| <[u8; 32]>::try_from(d.value()).ok())
            .ok_or_else(|| TpmError::Tpm {
                op: "read a PCR",
                reason: format!("PCR {pcr} has no SHA-256 value"),
            })
    }

    /// `TPM2_ActivateCredential`: the AK (password session, empty auth) is the object
    /// activated, the EK (re-created from its template) decrypts under a policy session
    /// satisfying its policy, `PolicySecret(TPM_RH_ENDORSEMENT)`, as `tpm2_activatecredential`
    /// does. The EK and the session are flushed whatever happens.
    fn activate_credential(&mut self, c: &Credential) -> Result<Vec<u8>, TpmError> {
        let refused = |e: tss_esapi::Error| TpmError::Refused {
            op: "activate a credential",
            reason: format!("malformed challenge ({e})"),
        };
        let blob = IdObject::try_from(c.blob.clone()).map_err(refused)?;
        let secret = EncryptedSecret::try_from(c.secret.clone()).map_err(refused)?;
        let ek = ek::create_ek_object(&mut self.ctx, AsymmetricAlgorithm::Ecc, None::<DefaultKey>)
            .map_err(tss("create the endorsement key"))?;
        let r = activate_under(&mut self.ctx, self.ak, ek, blob, secret);
        let _ = self.ctx.flush_context(ek.into());
        r
    }

    fn quote(&mut self, pcrs: &[u32], qualifying: &[u8]) -> Result<(Vec<u8>, Vec<u8>), TpmError> {
        let sel = selection(pcrs)?;
        let data = Data::try_from(qualifying.to_vec()).map_err(tss("quote"))?;
        let ak = self.ak;
        let (attest, sig) = self
            .ctx
            .execute_with_nullauth_session(|c| c.quote(ak, data, SignatureScheme::Null, sel))
            .map_err(tss("quote"))?;
        Ok((
            attest.marshall().map_err(tss("marshal the quote"))?,
            sig.marshall().map_err(tss("marshal the signature"))?,
        ))
    }
}

/// The TPM's answers that mean the challenge itself was refused (TPM 2.0 Part 2, 6.6.3):
/// its HMAC does not verify for this AK and EK, or its parts are malformed.
fn challenge_refused(e: &tss_esapi::Error) -> bool {
    use tss_esapi::constants::response_code::Tss2ResponseCodeKind as K;
    matches!(e, tss_esapi::Error::Tss2Error(rc) if matches!(
        rc.kind(),
        Some(K::Integrity | K::Size | K::Value | K::EccPoint | K::Insufficient)
    ))
}

fn activate_under(
    ctx: &mut Context,
    ak: KeyHandle,
    ek: KeyHandle,
    blob: IdObject,
    secret: EncryptedSecret,
) -> Result<Vec<u8>, TpmError> {
    let session = ctx
        .start_auth_session(
            None,
            None,
            None,
            SessionType::Policy,
            SymmetricDefinition::AES_128_CFB,
            HashingAlgorithm::Sha256,
        )
        .map_err(tss("start the endorsement key's policy session"))?
        .ok_or_else(|| TpmError::Tpm {
            op: "start the endorsement key's policy session",
            reason: "no session".into(),
        })?;
    let (attrs, mask) = SessionAttributesBuilder::new()
        .with_decrypt(true)
        .with_encrypt(true)
        .build();
    let r = ctx
        .tr_sess_set_attributes(session, attrs, mask)
        .and_then(|()| {
            ctx.execute_with_temporary_object(SessionHandle::from(session).into(), |ctx, _| {
                ctx.execute_with_nullauth_session(|ctx| {
                    ctx.policy_secret(
                        PolicySession::try_from(session)?,
                        AuthHandle::Endorsement,
                        Default::default(),
                        Default::default(),
                        Default::default(),
                        None,
                    )
                })?;
                ctx.execute_with_sessions(
                    (Some(AuthSession::Password), Some(session), None),
                    |ctx| ctx.activate_credential(ak, ek, blob, secret),
                )
            })
        });
    match r {
        Ok(d) => Ok(d.value().to_vec()),
        Err(e) if challenge_refused(&e) => Err(TpmError::Refused {
            op: "activate a credential",
            reason: format!(
                "the TPM refused the challenge ({e}): it was made for another attestation key or endorsement key, or was altered"
            ),
        }),
        Err(e) => Err(tss("activate a credential")(e)),
    }
}

type Job = Box<dyn FnOnce(&mut Inner) + Send>;

/// A TPM reached through a TCTI (`device:/dev/tpmrm0`, `swtpm:host=H,port=P`, ...), served by
/// a thread of its own.
#[derive(Debug)]
pub struct EsapiTpm {
    tx: Option<mpsc::Sender<Job>>,
    /// Closed by the TPM thread when it ends (its objects flushed).
    done: mpsc::Receiver<()>,
    identity: Identity,
    tcti: String,
    gone: Option<String>,
}

impl EsapiTpm {
    /// Connect through `tcti`, flush stale transient objects, make or load the AK (its blob
    /// at `blob_path`). Fails with what went wrong; nothing is left loaded in the TPM.
    pub fn open(tcti: &str, blob_path: PathBuf) -> Result<Self, TpmError> {
        let (tx, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let (done_tx, done) = mpsc::channel::<()>();
        let name = tcti.to_owned();
        std::thread::Builder::new()
            .name("trustd-tpm".into())
            .spawn(move || {
                let _done = done_tx;
                match open_inner(&name, &blob_path) {
                    Ok((mut inner, id)) => {
                        let _ = ready_tx.send(Ok(id));
                        while let Ok(job) = rx.recv() {
                            job(&mut inner);
                        }
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })
            .map_err(|e| TpmError::Tcti {
                tcti: tcti.to_owned(),
                reason: format!("no thread for the TPM: {e}"),
            })?;
        let identity = ready_rx
            .recv_timeout(TPM_DEADLINE * 2)
            .map_err(|_| TpmError::Hung { op: "open" })??;
        Ok(Self {
            tx: Some(tx),
            done,
            identity,
            tcti: tcti.to_owned(),
            gone: None,
        })
    }

    /// Run `confine` on the TPM's own thread (Landlock restricts only the thread that asks and
    /// the threads it starts later, and this thread exists before trustd confines itself):
    /// what it returns, or why it could not run.
    ///
    /// # Errors
    /// `confine`'s own error, or the TPM thread is gone or hung.
    pub fn confine_thread(
        &mut self,
        confine: impl FnOnce() -> Result<String, String> + Send + 'static,
    ) -> Result<String, String> {
        self.call("confine", move |_| Ok(confine()))
            .map_err(|e| e.to_string())?
    }

    /// The TCTI it was opened with.
    pub fn tcti(&self) -> &str {
        &self.tcti
    }

    fn call<R: Send + 'static>(
        &mut self,
        op: &'static str,
        f: impl FnOnce(&mut Inner) -> Result<R, TpmError> + Send + 'static,
    ) -> Result<R, TpmError> {
        if let Some(why) = &self.gone {
            return Err(TpmError::Gone(why.clone()));
        }
        let (rtx, rrx) = mpsc::channel();
        let job: Job = Box::new(move |inner| {
            let _ = rtx.send(f(inner));
        });
        if self.tx.as_ref().is_none_or(|tx| tx.send(job).is_err()) {
            self.gone = Some("the TPM thread ended".into());
            return Err(TpmError::Gone("the TPM thread ended".into()));
        }
        match rrx.recv_timeout(TPM_DEADLINE) {
            Ok(r) => r,
            Err(_) => {
                self.gone = Some(format!("{op} did not answer within {TPM_DEADLINE:?}"));
                Err(TpmError::Hung { op })
            }
        }
    }
}

impl Drop for EsapiTpm {
    /// Ends the TPM thread and waits (at most [`TPM_DEADLINE`]) until it has flushed the
    /// AK, so that the next user of a raw TPM finds its object slots free.
    fn drop(&mut self) {
        self.tx = None;
        let _ = self.done.recv_timeout(TPM_DEADLINE);
    }
}

impl Tpm for EsapiTpm {
    fn identity(&self) -> &Identity {
        &self.identity
    }

    fn extend(&mut self, pcr: u32, digest: &[u8; 32]) -> Result<(), TpmError> {
        let d = *digest;
        self.call("extend", move |i| i.extend(pcr, &d))
    }

    fn read_pcr(&mut self, pcr: u32) -> Result<[u8; 32], TpmError> {
        self.call("read a PCR", move |i| i.read_pcr(pcr))
    }

    fn quote(&mut self, pcrs: &[u32], qualifying: &[u8]) -> Result<(Vec<u8>, Vec<u8>), TpmError> {
        let pcrs = pcrs.to_vec();
        let q = qualifying.to_vec();
        self.call("quote", move |i| i.quote(&pcrs, &q))
    }

    fn activate_credential(&mut self, credential: &Credential) -> Result<Vec<u8>, TpmError> {
        let c = credential.clone();
        self.call("activate a credential", move |i| i.activate_credential(&c))
    }
}
