//! The typed errors of `org.enigm.Trust1`: each name says what kind of failure it was, each
//! message is a sentence a UI can show as it is. The one place where error names are mapped:
//! the engine's [`CallError`] to a name here, and a client's failed call back to a typed
//! [`Failure`] (clients never read a name out of text).

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

impl Error {
    /// The last part of the error's name (`Refused` for `org.enigm.Trust1.Error.Refused`),
    /// as `trustctl` prints it; `ZBus` for a bus-level failure.
    pub fn short_name(&self) -> &'static str {
        match self {
            Self::ZBus(_) => "ZBus",
            Self::AccessDenied(_) => "AccessDenied",
            Self::Refused(_) => "Refused",
            Self::UnknownStep(_) => "UnknownStep",
            Self::Failed(_) => "Failed",
            Self::Busy(_) => "Busy",
        }
    }

    /// The message (a sentence).
    pub fn message(&self) -> String {
        match self {
            Self::ZBus(e) => e.to_string(),
            Self::AccessDenied(m)
            | Self::Refused(m)
            | Self::UnknownStep(m)
            | Self::Failed(m)
            | Self::Busy(m) => m.clone(),
        }
    }

    /// Whether trustd refused the call (the caller's role, the input, the step) rather than
    /// failing to carry it out: what a script treats as a refusal (`trustctl` exits 1).
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            Self::AccessDenied(_) | Self::Refused(_) | Self::UnknownStep(_)
        )
    }
}

/// How a client reads a failed call of `org.enigm.Trust1`.
#[derive(Debug)]
pub enum Failure {
    /// trustd answered with one of its errors (never [`Error::ZBus`]).
    Trustd(Error),
    /// The bus daemon refused to deliver the call (its policy, the second layer), with its
    /// message: a refusal too.
    BusDenied(String),
    /// Anything else: the bus or the connection failed, or a name that is not ours.
    Bus(zbus::Error),
}

impl From<zbus::Error> for Failure {
    fn from(e: zbus::Error) -> Self {
        match Error::from(e) {
            Error::ZBus(e) => match zbus::fdo::Error::from(e.clone()) {
                zbus::fdo::Error::AccessDenied(msg) => Self::BusDenied(msg),
                _ => Self::Bus(e),
            },
            ours => Self::Trustd(ours),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zbus::DBusError;

    /// A name sent by the service reads back as the same variant on the client side.
    #[test]
    fn every_error_name_reads_back_as_its_variant() {
        let all = [
            Error::AccessDenied("a".into()),
            Error::Refused("b".into()),
            Error::UnknownStep("c".into()),
            Error::Failed("d".into()),
            Error::Busy("e".into()),
        ];
        for e in all {
            let name = e.name().to_string();
            assert_eq!(name, format!("org.enigm.Trust1.Error.{}", e.short_name()));
            let sent = zbus::Error::MethodError(
                zbus::names::OwnedErrorName::try_from(name.clone()).expect("name"),
                Some(e.message()),
                zbus::message::Message::method_call("/", "M")
                    .build(&())
                    .expect("msg"),
            );
            match Failure::from(sent) {
                Failure::Trustd(back) => {
                    assert_eq!(back.short_name(), e.short_name());
                    assert_eq!(back.message(), e.message());
                }
                other => panic!("{name}: {other:?}"),
            }
        }
        let denied = zbus::Error::FDO(Box::new(zbus::fdo::Error::AccessDenied("policy".into())));
        assert!(matches!(Failure::from(denied), Failure::BusDenied(m) if m == "policy"));
    }
}
