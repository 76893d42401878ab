//! The daemon's core: every change of state is a command in, a transition out, an audit
//! record on disk, then the reply.
//!
//! [`Device`] holds the state in memory and is the only writer of the state directory and
//! the audit log while it lives. [`Engine`] owns it in the running daemon and takes every
//! command (bus calls, drift ticks, link changes, signals) from one queue.

pub mod api;
mod device;
pub mod engine;
pub mod process;
pub mod watchdog;

pub use api::{
    AuditCheck, Call, CallError, Caller, CallerRole, LaunchAnswer, LifecycleChange, Method,
    RoleGroups, SharedGroups, Tx,
};
pub use device::{
    Applied, CredentialRefusal, Device, DeviceError, Enforced, HostFacts, INTEL_BACKSTOP,
    ReportError, SecretError,
};
pub use engine::{Command, Engine, Heartbeat, Monotonic, Queues, Senders, queues};
