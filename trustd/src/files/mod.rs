//! Durable file operations that more than one part of trustd needs: atomic replacement
//! ([`atomic`]), reads bounded before the bytes are in memory ([`capped`]), the lock file a single writer holds on its directory ([`lock`]), and who
//! may write a device's directories at all ([`owner`]).
//!
//! Knows nothing about what the files hold; the state directory ([`crate::state`]) and the
//! audit log ([`crate::audit`]) each decide their own layout.

pub mod atomic;
pub mod capped;
pub mod lock;
pub mod owner;
