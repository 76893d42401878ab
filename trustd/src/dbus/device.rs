//! `org.enigm.Trust1.Device`: signed lifecycle commands (admins, and the signature decides).

use zbus::interface;
use zbus::message::Header;

use super::{Handle, error::Result};
use crate::daemon::{Call, LifecycleChange};

/// The interface.
#[derive(Debug)]
pub struct Device {
    h: Handle,
}

impl Device {
    pub(super) fn new(h: Handle) -> Self {
        Self { h }
    }
}

#[interface(name = "org.enigm.Trust1.Device")]
impl Device {
    /// Verify a signed lifecycle command (DSSE envelope, role `command`) bound to this
    /// device's handle for its issuer, and carry it out. Returns the lifecycle before and
    /// after; the network and launcher follow before the reply.
    #[zbus(out_args("from", "to"))]
    async fn apply_command(
        &self,
        envelope: Vec<u8>,
        #[zbus(header)] hdr: Header<'_>,
    ) -> Result<(String, String)> {
        let LifecycleChange { from, to } = self
            .h
            .call(&hdr, |tx| Call::ApplyCommand(envelope, tx))
            .await?;
        Ok((from, to))
    }
}
