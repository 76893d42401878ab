//! The daemon's core: every change of state is a command in, a transition out, an audit
//! record on disk, then the reply.
//!
//! [`Device`] holds the state in memory and is the only writer of the state directory and
//! the audit log while it lives. Callers (the D-Bus adapter, `trustctl` offline) serialize
//! their commands through it.

mod device;

pub use device::{Applied, Device, DeviceError, Enforced};
