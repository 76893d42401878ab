//! `org.enigm.Trust1.Policy`: signed inputs (admins only, and the signatures decide).

use zbus::interface;
use zbus::message::Header;

use super::{Handle, error::Result};
use crate::daemon::{Applied, Call, Tx};

/// The `org.enigm.Trust1.Policy` interface, as trustd serves it.
#[derive(Debug)]
pub struct PolicyInterface {
    h: Handle,
}

impl PolicyInterface {
    pub(super) fn new(h: Handle) -> Self {
        Self { h }
    }

    async fn apply(
        &self,
        hdr: &Header<'_>,
        call: impl FnOnce(Tx<Applied>) -> Call,
    ) -> Result<(u64, u64, String, u64)> {
        let Applied {
            from_serial,
            to_serial,
            digest,
            audit_seq,
            ..
        } = self.h.call(hdr, call).await?;
        Ok((from_serial, to_serial, digest, audit_seq))
    }
}

#[interface(name = "org.enigm.Trust1.Policy")]
impl PolicyInterface {
    /// Verify a signed policy bundle (DSSE envelope) and put it in force. Returns the serial
    /// before and after, the envelope's SHA-256 and the audit record's seq.
    #[zbus(out_args("from_serial", "to_serial", "digest", "audit_seq"))]
    async fn apply_bundle(
        &self,
        envelope: Vec<u8>,
        #[zbus(header)] hdr: Header<'_>,
    ) -> Result<(u64, u64, String, u64)> {
        self.apply(&hdr, |tx| Call::ApplyBundle(envelope, tx)).await
    }

    /// Verify a signed intel feed and put its blocklists in force. Returns what
    /// ApplyBundle does, and notes: the entries that overlap protected destinations
    /// (loopback, policy-named endpoints) and are not applied there, counted by kind.
    #[zbus(out_args("from_serial", "to_serial", "digest", "audit_seq", "notes"))]
    async fn apply_intel_feed(
        &self,
        envelope: Vec<u8>,
        #[zbus(header)] hdr: Header<'_>,
    ) -> Result<(u64, u64, String, u64, Vec<String>)> {
        let a = self
            .h
            .call(&hdr, |tx| Call::ApplyIntel(envelope, tx))
            .await?;
        Ok((a.from_serial, a.to_serial, a.digest, a.audit_seq, a.notes))
    }

    /// Verify a trust-root rotation signed by the current root and install it.
    #[zbus(out_args("from_serial", "to_serial", "digest", "audit_seq"))]
    async fn apply_trust_root(
        &self,
        envelope: Vec<u8>,
        #[zbus(header)] hdr: Header<'_>,
    ) -> Result<(u64, u64, String, u64)> {
        self.apply(&hdr, |tx| Call::ApplyTrustRoot(envelope, tx))
            .await
    }

    /// The last-good policy's payload as JSON (empty: none installed).
    async fn active_policy(&self, #[zbus(header)] hdr: Header<'_>) -> Result<String> {
        self.h.call(&hdr, Call::ActivePolicy).await
    }
}
