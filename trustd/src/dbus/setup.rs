//! `org.enigm.Trust1.Setup`: setup steps (the setup role and admins).

use zbus::interface;
use zbus::message::Header;

use super::{Handle, error::Result};
use crate::daemon::Call;

/// The `org.enigm.Trust1.Setup` interface, as trustd serves it.
#[derive(Debug)]
pub struct SetupInterface {
    h: Handle,
}

impl SetupInterface {
    pub(super) fn new(h: Handle) -> Self {
        Self { h }
    }
}

#[interface(name = "org.enigm.Trust1.Setup")]
impl SetupInterface {
    /// Mark a step the policy requires as complete. When the last one completes, the network
    /// leaves the bootstrap allowlist for the policy.
    async fn complete_step(&self, step: String, #[zbus(header)] hdr: Header<'_>) -> Result<()> {
        self.h.call(&hdr, |tx| Call::CompleteStep(step, tx)).await
    }
}
