//! `org.enigm.Trust1.Device`: signed lifecycle commands (admins, and the signature decides)
//! and TPM credential activation (admins).

use zbus::interface;
use zbus::message::Header;

use super::{Handle, error::Result};
use crate::daemon::{Call, LifecycleChange};

/// The `org.enigm.Trust1.Device` interface, as trustd serves it.
#[derive(Debug)]
pub struct DeviceInterface {
    h: Handle,
}

impl DeviceInterface {
    pub(super) fn new(h: Handle) -> Self {
        Self { h }
    }
}

#[interface(name = "org.enigm.Trust1.Device")]
impl DeviceInterface {
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

    /// TPM credential activation (TPM 2.0 Part 1 §24): `TPM2_ActivateCredential` by the
    /// attestation key and the endorsement key of a verifier's challenge, the buffers of its
    /// `TPM2B_ID_OBJECT` (`credential_blob`) and `TPM2B_ENCRYPTED_SECRET` (`secret`), each 1
    /// to 512 bytes, as `tpm2_makecredential` or `trustctl tpm make-credential` make them.
    /// Returns the credential recovered; a challenge made for another key is refused. Admins
    /// only; every call is audited.
    async fn activate_credential(
        &self,
        credential_blob: Vec<u8>,
        secret: Vec<u8>,
        #[zbus(header)] hdr: Header<'_>,
    ) -> Result<Vec<u8>> {
        self.h
            .call(&hdr, |tx| {
                Call::ActivateCredential(credential_blob, secret, tx)
            })
            .await
    }
}
