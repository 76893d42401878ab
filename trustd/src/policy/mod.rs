//! The signed documents' v1 types (policy, intel feed, lifecycle command) and their
//! semantic validation.
//!
//! These types only describe what an admin signed; they perform no I/O and trust nothing:
//! a value of them is reachable by the rest of the daemon only inside a
//! [`crate::bundle::Verified`], which only the verifier constructs.

mod cidr;
mod command;
mod effective;
mod intel;
mod model;

pub use cidr::{Cidr, parse_addr};
pub use command::{Lifecycle, LifecycleAction, LifecycleCommand};
pub use effective::{Effective, EffectiveNetwork, LockdownReason, NetworkPlan, Overlay, effective};
pub use intel::IntelFeed;
pub use model::{
    AllowRule, App, AppMode, Dns, Endpoint, InboundRule, LandlockProfile, Launcher,
    MAX_MAX_AGE_SECS, MIN_MAX_AGE_SECS, MaxAge, Network, NetworkMode, Policy, Privacy, Proto,
    ProxySection, RuleProto, Setup, Tor, Vpn,
};

/// A name as used for app ids, setup steps, intel categories and verifier ids:
/// `[A-Za-z0-9][A-Za-z0-9._-]{0,63}`.
pub fn is_valid_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}
