//! `org.enigm.Trust1.Privacy`: privacy mode on (everyone) or off (admins, or users where the
//! policy allows it).

use zbus::interface;
use zbus::message::Header;

use super::{Handle, error::Result};
use crate::daemon::Call;

/// The `org.enigm.Trust1.Privacy` interface, as trustd serves it.
#[derive(Debug)]
pub struct PrivacyInterface {
    h: Handle,
}

impl PrivacyInterface {
    pub(super) fn new(h: Handle) -> Self {
        Self { h }
    }
}

#[interface(name = "org.enigm.Trust1.Privacy")]
impl PrivacyInterface {
    /// Turn privacy mode on or off. Returns once the change is recorded in the audit log and
    /// the matching ruleset is confirmed in the kernel.
    async fn set_privacy_mode(&self, on: bool, #[zbus(header)] hdr: Header<'_>) -> Result<()> {
        self.h.call(&hdr, |tx| Call::SetPrivacy(on, tx)).await
    }
}
