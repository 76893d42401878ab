//! `org.enigm.Trust1.Privacy`: privacy mode on (everyone) or off (admins, or users where the
//! policy allows it).

use zbus::interface;
use zbus::message::Header;

use super::{Handle, error::Result, unexpected};
use crate::daemon::{Request, Response};

/// The interface.
#[derive(Debug)]
pub struct Privacy {
    h: Handle,
}

impl Privacy {
    pub(super) fn new(h: Handle) -> Self {
        Self { h }
    }
}

#[interface(name = "org.enigm.Trust1.Privacy")]
impl Privacy {
    /// Turn privacy mode on or off. Returns once the change is recorded in the audit log and
    /// the matching ruleset is confirmed in the kernel.
    async fn set_privacy_mode(&self, on: bool, #[zbus(header)] hdr: Header<'_>) -> Result<()> {
        match self.h.call(&hdr, Request::SetPrivacy(on)).await? {
            Response::Done => Ok(()),
            r => Err(unexpected(&r)),
        }
    }
}
