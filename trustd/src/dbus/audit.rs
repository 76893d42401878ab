//! `org.enigm.Trust1.Audit`: the audit log (admins only).

use zbus::interface;
use zbus::message::Header;

use super::{Handle, error::Result};
use crate::daemon::{AuditCheck, Call};

/// The `org.enigm.Trust1.Audit` interface, as trustd serves it.
#[derive(Debug)]
pub struct AuditInterface {
    h: Handle,
}

impl AuditInterface {
    pub(super) fn new(h: Handle) -> Self {
        Self { h }
    }
}

/// More than this many records in one answer would make a message too large to be useful.
const MAX_TAIL: u32 = 10_000;

#[interface(name = "org.enigm.Trust1.Audit")]
impl AuditInterface {
    /// The last `n` records (at most 10000), one JSON object each, oldest first.
    async fn tail(&self, n: u32, #[zbus(header)] hdr: Header<'_>) -> Result<Vec<String>> {
        self.h
            .call(&hdr, |tx| Call::AuditTail(n.min(MAX_TAIL), tx))
            .await
    }

    /// A checkpoint of the log as it is now: a C2SP signed note (origin, size, root hash)
    /// signed by the device key. Keep it: later logs can be proven to extend it.
    async fn checkpoint(&self, #[zbus(header)] hdr: Header<'_>) -> Result<String> {
        self.h.call(&hdr, Call::Checkpoint).await
    }

    /// Check the whole log: the chain, the segments and the head. Returns the records read
    /// and every problem found (none: intact).
    #[zbus(out_args("records", "problems"))]
    async fn verify(&self, #[zbus(header)] hdr: Header<'_>) -> Result<(u64, Vec<String>)> {
        let AuditCheck { records, problems } = self.h.call(&hdr, Call::AuditVerify).await?;
        Ok((records, problems))
    }

    /// Acknowledge the damage recorded in the log's `audit.damage` records up to and
    /// including record `through` (the largest value: all of them). Posture stops showing
    /// them; the damage records stay in the log and the acknowledgement is itself an
    /// audit record. Refused when no unacknowledged damage record is at or below `through`.
    async fn acknowledge_damage(
        &self,
        through: u64,
        #[zbus(header)] hdr: Header<'_>,
    ) -> Result<String> {
        self.h
            .call(&hdr, |tx| Call::AcknowledgeDamage(through, tx))
            .await
    }
}
