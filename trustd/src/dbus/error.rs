//! The typed errors of `org.enigm.Trust1`: each name says what kind of failure it was, each
//! message is a sentence a UI can show as it is.

use crate::daemon::CallError;

/// `org.enigm.Trust1.Error.*`.
#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.enigm.Trust1.Error")]
pub enum Error {
    /// A bus-level failure.
    #[zbus(error)]
    ZBus(zbus::Error),
    /// The caller's role may not do this; nothing changed.
    AccessDenied(String),
    /// The input was refused (signature, rollback, expiry, format); the last good one stays.
    Refused(String),
    /// The setup step is not one the policy requires.
    UnknownStep(String),
    /// The daemon could not carry the call out; the state in force stays.
    Failed(String),
    /// Too many of the caller's calls are already waiting; this one was not heard and
    /// nothing changed. Retry once an earlier call is answered.
    Busy(String),
}

impl From<CallError> for Error {
    fn from(e: CallError) -> Self {
        match e {
            CallError::AccessDenied(m) => Self::AccessDenied(m),
            CallError::Refused(m) => Self::Refused(m),
            CallError::UnknownStep(m) => Self::UnknownStep(m),
            CallError::Failed(m) => Self::Failed(m),
        }
    }
}

/// The result of a method of `org.enigm.Trust1`.
pub type Result<T> = std::result::Result<T, Error>;
