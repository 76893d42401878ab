//! Durable file operations that more than one part of trustd needs: atomic replacement
//! ([`atomic`]) and the lock file a single writer holds on its directory ([`lock`]).
//!
//! Knows nothing about what the files hold; the state directory ([`crate::state`]) and the
//! audit log ([`crate::audit`]) each decide their own layout.

pub mod atomic;
pub mod lock;
