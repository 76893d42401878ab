//! Why a device operation did not take effect, each with its typed source where one exists
//! (state directory, audit log, bundle verification, nft backend, checkpoint, TPM).

use std::path::PathBuf;

use crate::audit::AuditError;
use crate::audit::checkpoint::CheckpointError;
use crate::bundle::VerifyError;
use crate::netfilter::EnforceError;
use crate::state::StateError;
use crate::tpm::TpmError;
use crate::tpm::credential::CredentialError;

/// Why a command did not take effect. In every case the previous state stays in force.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The input was refused (and the refusal audited).
    #[error("refused: {0}")]
    Refused(#[from] VerifyError),
    /// The state directory failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// The audit log failed: nothing is changed without a record.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// No ruleset could be put in the kernel; the one already there stays.
    #[error(transparent)]
    Enforce(#[from] EnforceError),
    /// The setup step is not one the policy requires (the sentence says which).
    #[error("refused: {0}")]
    UnknownStep(String),
    /// A validly signed command (or a request) that this device may not carry out
    /// (another device's, a transition its lifecycle does not allow, a malformed verifier
    /// id or nonce); the sentence says why.
    #[error("refused: {0}")]
    CommandRefused(String),
    /// The device secret or key could not be read or written.
    #[error("device secret: {0}")]
    Secret(#[from] SecretError),
    /// No checkpoint could be made (the log no longer extends the last one, or a write
    /// failed).
    #[error("checkpoint: {0}")]
    Checkpoint(#[from] CheckpointError),
    /// A signed posture report could not be made.
    #[error("report: {0}")]
    Report(#[from] ReportError),
    /// A credential activation was refused: no TPM in use, a malformed challenge, or one
    /// made for another attestation key or endorsement key.
    #[error("credential activation refused: {0}")]
    Credential(#[from] CredentialRefusal),
    /// The TPM failed (not the input's fault).
    #[error(transparent)]
    Tpm(TpmError),
}

/// Why the device secret or the device key could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The device secret on disk cannot be read; it is never replaced silently (every
    /// handle would change): the admin repairs or removes it.
    #[error(
        "{}: {source}; remove it to make a new one (every device handle changes)",
        path.display()
    )]
    Unreadable {
        /// The secret's file.
        path: PathBuf,
        /// What reading it gave.
        source: std::io::Error,
    },
    /// No new secret could be drawn from the kernel's random source.
    #[error("{0}")]
    Generate(#[source] std::io::Error),
    /// The secret could not be written or removed.
    #[error("{source}")]
    Write {
        /// The secret's file.
        path: PathBuf,
        /// What writing or removing it gave.
        source: std::io::Error,
    },
    /// The device key could not be loaded or made.
    #[error("device key: {0}")]
    Key(#[source] std::io::Error),
}

/// Why a signed posture report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The TPM did not quote the report.
    #[error("TPM quote: {0}")]
    Quote(#[source] TpmError),
    /// The report could not be encoded (the report module gives its reason as text).
    #[error("{0}")]
    Encode(String),
}

/// Why a credential activation was refused (not a TPM failure).
#[derive(Debug, thiserror::Error)]
pub enum CredentialRefusal {
    /// No TPM is configured.
    #[error("no TPM is configured: evidence is signed by the software key only")]
    NoTpm,
    /// A TPM is configured but not in use (why).
    #[error("the TPM configured is not in use ({0})")]
    TpmNotInUse(String),
    /// The challenge is malformed (sizes).
    #[error(transparent)]
    Malformed(#[from] CredentialError),
    /// The TPM refused it: made for another attestation key or endorsement key.
    #[error("{reason}")]
    Refused {
        /// The TPM's refusal.
        source: TpmError,
        /// Its reason, as a sentence.
        reason: String,
    },
}
