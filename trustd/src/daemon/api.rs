//! The protocol between the bus adapter (`crate::dbus`) and the engine: who calls
//! ([`Caller`], [`CallerRole`]), which method ([`Method`]: its name, who may call it, the audit kind
//! of the records its calls cause), and the call itself ([`Call`]): its arguments and a reply
//! channel of its own answer's type, so an answer of the wrong shape cannot be sent and no
//! adapter has an "unexpected answer" case (the pattern of Mullvad's daemon commands).
//!
//! Errors stay typed ([`CallError`]) until the bus adapter maps them to D-Bus error names in
//! one place (trustd/src/dbus/error.rs). Nothing here touches the device or the bus.

use tokio::sync::oneshot;

use super::{Applied, DeviceError};
use crate::audit::Actor;

/// Who is calling, as the bus daemon reported it for the message's sender. Never taken from
/// the message body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The caller's uid.
    pub uid: u32,
    /// Its groups (primary and supplementary) as the bus daemon saw them at connect time.
    pub gids: Vec<u32>,
    /// Its pid, when the bus reports one.
    pub pid: Option<u32>,
    /// Its unique bus name.
    pub bus_name: String,
}

impl Caller {
    /// The audit record's actor.
    pub fn actor(&self) -> Actor {
        Actor {
            uid: Some(self.uid),
            pid: self.pid,
            bus_name: Some(self.bus_name.clone()),
        }
    }
}

/// A caller's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallerRole {
    /// uid 0 or a member of the admin group.
    Admin,
    /// A member of the setup group.
    Setup,
    /// Everyone else.
    User,
}

impl CallerRole {
    /// The name in audit records and errors.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Setup => "setup",
            Self::User => "user",
        }
    }
}

/// Which gids hold which role (`None`: the group does not exist, so nobody holds the role
/// through it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RoleGroups {
    /// The admin group.
    pub admin: Option<u32>,
    /// The setup group.
    pub setup: Option<u32>,
}

impl RoleGroups {
    /// The caller's role: admin = uid 0 or the admin group; setup = the setup group.
    pub fn role(&self, c: &Caller) -> CallerRole {
        let member = |g: Option<u32>| g.is_some_and(|g| c.gids.contains(&g));
        if c.uid == 0 || member(self.admin) {
            CallerRole::Admin
        } else if member(self.setup) {
            CallerRole::Setup
        } else {
            CallerRole::User
        }
    }
}

/// Who holds which role, shared between the engine (which authorizes, and reloads it on
/// SIGHUP) and the bus service (which queues privileged callers' calls in their own lane).
pub type SharedGroups = std::sync::Arc<std::sync::RwLock<RoleGroups>>;

listed_enum! {
    /// Every method a caller can ask the engine for: one row of the table of docs/SECURITY.md
    /// ("Who may do what over the bus") each. `SetPrivacyMode` is two rows (on, off): who may
    /// call it depends on the argument.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub enum Method {
        /// `SetPrivacyMode(true)`.
        PrivacyOn,
        /// `SetPrivacyMode(false)`.
        PrivacyOff,
        /// `ApplyBundle`.
        ApplyBundle,
        /// `ApplyIntelFeed`.
        ApplyIntelFeed,
        /// `ApplyTrustRoot`.
        ApplyTrustRoot,
        /// `ActivePolicy`.
        ActivePolicy,
        /// `CompleteStep`.
        CompleteStep,
        /// Audit `Tail`.
        Tail,
        /// Audit `Verify`.
        Verify,
        /// Audit `AcknowledgeDamage`.
        AcknowledgeDamage,
        /// Launcher `CheckLaunch`.
        CheckLaunch,
        /// Launcher `ReportLaunch`.
        ReportLaunch,
        /// Device `ApplyCommand`.
        ApplyCommand,
        /// Posture `GetDeviceHandle`.
        GetDeviceHandle,
        /// Audit `Checkpoint`.
        Checkpoint,
        /// Posture `GetReport`.
        GetReport,
        /// Device `ActivateCredential`.
        ActivateCredential,
    }
}

impl Method {
    /// The method's name, for audit records and errors.
    pub fn name(self) -> &'static str {
        match self {
            Self::PrivacyOn => "SetPrivacyMode(true)",
            Self::PrivacyOff => "SetPrivacyMode(false)",
            Self::ApplyBundle => "ApplyBundle",
            Self::ApplyIntelFeed => "ApplyIntelFeed",
            Self::ApplyTrustRoot => "ApplyTrustRoot",
            Self::ActivePolicy => "ActivePolicy",
            Self::CompleteStep => "CompleteStep",
            Self::Tail => "Tail",
            Self::Verify => "Verify",
            Self::AcknowledgeDamage => "AcknowledgeDamage",
            Self::CheckLaunch => "CheckLaunch",
            Self::ReportLaunch => "ReportLaunch",
            Self::ApplyCommand => "ApplyCommand",
            Self::GetDeviceHandle => "GetDeviceHandle",
            Self::Checkpoint => "Checkpoint",
            Self::GetReport => "GetReport",
            Self::ActivateCredential => "ActivateCredential",
        }
    }

    /// Who may call it (docs/SECURITY.md, "Who may do what over the bus");
    /// `user_may_disable_privacy` comes from the policy.
    pub fn allowed(self, role: CallerRole, user_may_disable_privacy: bool) -> bool {
        match self {
            Self::PrivacyOn
            | Self::CheckLaunch
            | Self::ReportLaunch
            | Self::GetDeviceHandle
            | Self::GetReport => true,
            Self::PrivacyOff => role == CallerRole::Admin || user_may_disable_privacy,
            Self::CompleteStep => matches!(role, CallerRole::Admin | CallerRole::Setup),
            Self::ApplyBundle
            | Self::ApplyIntelFeed
            | Self::ApplyTrustRoot
            | Self::ActivePolicy
            | Self::ApplyCommand
            | Self::Checkpoint
            | Self::Tail
            | Self::Verify
            | Self::AcknowledgeDamage
            | Self::ActivateCredential => role == CallerRole::Admin,
        }
    }

    /// The kind of the audit record a call of this method may cause by itself and that
    /// counts against its caller's record budget (`daemon/device/budget.rs`): a refused
    /// launch check, a launch report. `None`: its records are the transitions it makes.
    pub fn budgeted_kind(self) -> Option<&'static str> {
        match self {
            Self::CheckLaunch => Some("launch.check"),
            Self::ReportLaunch => Some("launch.exec"),
            Self::PrivacyOn
            | Self::PrivacyOff
            | Self::ApplyBundle
            | Self::ApplyIntelFeed
            | Self::ApplyTrustRoot
            | Self::ActivePolicy
            | Self::CompleteStep
            | Self::Tail
            | Self::Verify
            | Self::AcknowledgeDamage
            | Self::ApplyCommand
            | Self::GetDeviceHandle
            | Self::Checkpoint
            | Self::GetReport
            | Self::ActivateCredential => None,
        }
    }
}

/// The kind of the audit record of a call refused for its caller's role.
pub const DENIED_KIND: &str = "authz.denied";

/// Why a call did not take effect. In every case the state in force stays.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The caller's role may not do this (the refusal is audited).
    #[error("{0}")]
    AccessDenied(String),
    /// The input was refused (bad signature, rollback, expired, malformed...).
    #[error("{0}")]
    Refused(String),
    /// The setup step is not one the policy requires.
    #[error("{0}")]
    UnknownStep(String),
    /// The daemon could not carry it out (disk, audit log, kernel).
    #[error("{0}")]
    Failed(String),
}

impl From<DeviceError> for CallError {
    fn from(e: DeviceError) -> Self {
        match e {
            DeviceError::Refused(v) => Self::Refused(format!("{v}; the last good one stays")),
            DeviceError::UnknownStep(why) => Self::UnknownStep(why),
            DeviceError::CommandRefused(why) => Self::Refused(format!("{why}; nothing changed")),
            DeviceError::Credential(why) => Self::Refused(why.to_string()),
            DeviceError::State(_) | DeviceError::Audit(_) => {
                let errno = crate::storage::io_cause(&e)
                    .map(|io| format!(" [{}]", crate::storage::errno_name(io)))
                    .unwrap_or_default();
                Self::Failed(format!(
                    "{}{errno}: the change could not be made durable, so nothing changed; the state in force stays",
                    crate::error_chain(&e)
                ))
            }
            DeviceError::Enforce(_)
            | DeviceError::Secret(_)
            | DeviceError::Checkpoint(_)
            | DeviceError::Report(_)
            | DeviceError::Tpm(_) => Self::Failed(format!(
                "{}; the state in force stays",
                crate::error_chain(&e)
            )),
        }
    }
}

/// Where one call's answer goes: its own type, or why it did not take effect.
pub type Tx<T> = oneshot::Sender<Result<T, CallError>>;

/// A launch decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchAnswer {
    /// Whether the app may start.
    pub allowed: bool,
    /// Why (a sentence).
    pub reason: String,
    /// The profile as JSON (empty when refused).
    pub profile: String,
}

/// A lifecycle transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecycleChange {
    /// Before.
    pub from: String,
    /// After.
    pub to: String,
}

/// What a check of the audit log found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditCheck {
    /// Records read.
    pub records: u64,
    /// Problems found (empty: the log is intact).
    pub problems: Vec<String>,
}

/// A caller's call: its arguments and where its typed answer goes.
#[derive(Debug)]
pub enum Call {
    /// Privacy mode on or off.
    SetPrivacy(bool, Tx<()>),
    /// A signed policy bundle.
    ApplyBundle(Vec<u8>, Tx<Applied>),
    /// A signed intel feed.
    ApplyIntel(Vec<u8>, Tx<Applied>),
    /// A signed trust-root rotation.
    ApplyTrustRoot(Vec<u8>, Tx<Applied>),
    /// The last-good policy's payload as JSON (empty: none).
    ActivePolicy(Tx<String>),
    /// A setup step done.
    CompleteStep(String, Tx<()>),
    /// The last N audit records, one JSON object each.
    AuditTail(u32, Tx<Vec<String>>),
    /// Check the audit log.
    AuditVerify(Tx<AuditCheck>),
    /// An admin acknowledges the audit log damage recorded up to this seq (`u64::MAX`: all).
    AcknowledgeDamage(u64, Tx<String>),
    /// May this app start? (app id, the executable the launcher is about to run; empty:
    /// the policy's).
    CheckLaunch(String, String, Tx<LaunchAnswer>),
    /// What a launcher did after a check: (app id, whether it started, why not or how it
    /// is confined).
    ReportLaunch(String, bool, String, Tx<()>),
    /// A signed lifecycle command.
    ApplyCommand(Vec<u8>, Tx<LifecycleChange>),
    /// The device's handle for a verifier.
    DeviceHandle(String, Tx<String>),
    /// A signed checkpoint of the audit log now.
    Checkpoint(Tx<String>),
    /// A signed posture report answering a nonce.
    Report(String, Tx<String>),
    /// TPM credential activation: (credential blob, encrypted secret), the buffers of the
    /// `TPM2B_ID_OBJECT` and `TPM2B_ENCRYPTED_SECRET`; answers the credential recovered.
    ActivateCredential(Vec<u8>, Vec<u8>, Tx<Vec<u8>>),
}

/// An answer ready to be sent (the engine sends it once the posture is republished).
pub struct Answer(Box<dyn FnOnce() + Send>);

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Answer")
    }
}

impl Answer {
    /// `result` for `tx`.
    pub fn new<T: Send + 'static>(tx: Tx<T>, result: Result<T, CallError>) -> Self {
        // A caller that went away does not need its answer.
        Self(Box::new(move || {
            let _ = tx.send(result);
        }))
    }

    /// Send it.
    pub fn send(self) {
        (self.0)();
    }
}

impl Call {
    /// The method called.
    pub fn method(&self) -> Method {
        match self {
            Self::SetPrivacy(true, _) => Method::PrivacyOn,
            Self::SetPrivacy(false, _) => Method::PrivacyOff,
            Self::ApplyBundle(..) => Method::ApplyBundle,
            Self::ApplyIntel(..) => Method::ApplyIntelFeed,
            Self::ApplyTrustRoot(..) => Method::ApplyTrustRoot,
            Self::ActivePolicy(_) => Method::ActivePolicy,
            Self::CompleteStep(..) => Method::CompleteStep,
            Self::AuditTail(..) => Method::Tail,
            Self::AuditVerify(_) => Method::Verify,
            Self::AcknowledgeDamage(..) => Method::AcknowledgeDamage,
            Self::CheckLaunch(..) => Method::CheckLaunch,
            Self::ReportLaunch(..) => Method::ReportLaunch,
            Self::ApplyCommand(..) => Method::ApplyCommand,
            Self::DeviceHandle(..) => Method::GetDeviceHandle,
            Self::Checkpoint(_) => Method::Checkpoint,
            Self::Report(..) => Method::GetReport,
            Self::ActivateCredential(..) => Method::ActivateCredential,
        }
    }

    /// The answer that refuses this call with `e`, whatever its answer's type.
    pub fn refuse(self, e: CallError) -> Answer {
        match self {
            Self::SetPrivacy(_, tx) | Self::CompleteStep(_, tx) | Self::ReportLaunch(.., tx) => {
                Answer::new(tx, Err(e))
            }
            Self::ApplyBundle(_, tx) | Self::ApplyIntel(_, tx) | Self::ApplyTrustRoot(_, tx) => {
                Answer::new(tx, Err(e))
            }
            Self::ActivePolicy(tx) | Self::Checkpoint(tx) => Answer::new(tx, Err(e)),
            Self::AcknowledgeDamage(_, tx) => Answer::new(tx, Err(e)),
            Self::DeviceHandle(_, tx) | Self::Report(_, tx) => Answer::new(tx, Err(e)),
            Self::AuditTail(_, tx) => Answer::new(tx, Err(e)),
            Self::AuditVerify(tx) => Answer::new(tx, Err(e)),
            Self::CheckLaunch(.., tx) => Answer::new(tx, Err(e)),
            Self::ApplyCommand(_, tx) => Answer::new(tx, Err(e)),
            Self::ActivateCredential(.., tx) => Answer::new(tx, Err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table of docs/SECURITY.md, row by row.
    #[test]
    fn the_role_table() {
        let rows: Vec<(Method, [bool; 3], [bool; 3])> = Method::ALL
            .iter()
            .map(|&m| {
                let at = |may| {
                    [CallerRole::User, CallerRole::Setup, CallerRole::Admin]
                        .map(|r| m.allowed(r, may))
                };
                (m, at(false), at(true))
            })
            .collect();
        for (m, strict, lenient) in rows {
            // One arm per row of the table, no catch-all: a new method needs its row here.
            let want: ([bool; 3], [bool; 3]) = match m {
                Method::PrivacyOn
                | Method::CheckLaunch
                | Method::ReportLaunch
                | Method::GetDeviceHandle
                | Method::GetReport => ([true; 3], [true; 3]),
                Method::PrivacyOff => ([false, false, true], [true; 3]),
                Method::CompleteStep => ([false, true, true], [false, true, true]),
                Method::ApplyBundle
                | Method::ApplyIntelFeed
                | Method::ApplyTrustRoot
                | Method::ActivePolicy
                | Method::Tail
                | Method::Verify
                | Method::AcknowledgeDamage
                | Method::ApplyCommand
                | Method::Checkpoint
                | Method::ActivateCredential => ([false, false, true], [false, false, true]),
            };
            assert_eq!((strict, lenient), want, "{}", m.name());
        }
    }

    #[test]
    fn an_answer_goes_to_its_own_caller_in_its_own_type() {
        let (tx, mut rx) = oneshot::channel();
        let call = Call::AuditVerify(tx);
        assert_eq!(call.method(), Method::Verify);
        call.refuse(CallError::Refused("no".into())).send();
        assert_eq!(rx.try_recv(), Ok(Err(CallError::Refused("no".into()))));
    }
}
