//! `org.enigm.Trust1.Posture`: the device's posture as properties, readable by everyone.

use std::borrow::Cow;
use std::collections::HashMap;

use tokio::sync::watch;
use zbus::Variant;
use zbus::interface;
use zbus::names::InterfaceName;
use zbus::object_server::SignalEmitter;

use zbus::message::Header;

use super::{Handle, error::Result};
use crate::daemon::Call;
use crate::posture::Posture;

/// The `org.enigm.Trust1.Posture` interface, as trustd serves it: it reads the snapshot the
/// engine publishes.
#[derive(Debug)]
pub struct PostureInterface {
    rx: watch::Receiver<Posture>,
    h: Handle,
}

impl PostureInterface {
    pub(super) fn new(rx: watch::Receiver<Posture>, h: Handle) -> Self {
        Self { rx, h }
    }
}

/// One posture property: its D-Bus name and its value in a snapshot (the value's D-Bus type
/// is its Rust type's, the one the interface serves).
#[derive(Debug, Clone, Copy)]
pub(super) struct Property {
    /// The D-Bus name (`PolicySerial`).
    pub name: &'static str,
    /// The D-Bus type (`t`).
    pub signature: &'static zbus::Signature,
    /// Its value in a snapshot.
    pub value: fn(&Posture) -> Variant<'static>,
}

/// The table of posture properties, each row `getter "Name": Type = |snapshot| value;` with
/// its doc comment. It makes the interface's property getters, [`PROPERTIES`] (which the
/// `PropertiesChanged` diff, the client's [`super::client::POSTURE_PROPERTIES`] and the
/// signed report's posture read) and nothing else: a property is one row here plus its line
/// in dbus/org.enigm.Trust1.xml (the introspection test compares them).
macro_rules! posture_properties {
    ($( $(#[doc = $doc:literal])* $getter:ident $name:tt : $ty:ty = |$p:ident| $value:expr; )*) => {
        /// Every posture property, in the order of the introspection XML.
        pub(super) const PROPERTIES: &[Property] = &[$(
            Property {
                name: $name,
                signature: <$ty as zbus::zvariant::Type>::SIGNATURE,
                value: |$p: &Posture| {
                    let v: $ty = $value;
                    Variant::from(v)
                },
            },
        )*];

        // Each method call runs in a task of its own, so that a call waiting for the engine
        // never holds up the dispatch of others; the bus service's admission limits (`gate`)
        // bound how many such tasks a caller can have.
        #[interface(name = "org.enigm.Trust1.Posture")]
        impl PostureInterface {
            /// This device's handle for `verifier` (a verifier id such as `mdm.example.org`):
            /// HMAC-SHA256 of the device secret and the id, 22 characters of base64url. Stable for
            /// one verifier, unlinkable across verifiers, never a hardware identifier.
            async fn get_device_handle(
                &self,
                verifier: String,
                #[zbus(header)] hdr: Header<'_>,
            ) -> Result<String> {
                self.h
                    .call(&hdr, |tx| Call::DeviceHandle(verifier, tx))
                    .await
            }

            /// A posture report answering `nonce` (8 to 128 of [A-Za-z0-9_-]): the posture, its
            /// evidence (policy and ruleset digests, a fresh audit checkpoint, boot id, kernel,
            /// Landlock ABI) and the nonce, as a DSSE envelope (JSON) signed by the device key.
            async fn get_report(
                &self,
                nonce: String,
                #[zbus(header)] hdr: Header<'_>,
            ) -> Result<String> {
                self.h.call(&hdr, |tx| Call::Report(nonce, tx)).await
            }

            $(
                $(#[doc = $doc])*
                #[zbus(property, name = $name)]
                fn $getter(&self) -> $ty {
                    let $p: &Posture = &self.rx.borrow();
                    $value
                }
            )*
        }
    };
}

posture_properties! {
    /// `trusted`, `degraded` or `untrusted`.
    level "Level": String = |p| p.level.as_str().to_owned();
    /// Why the level is not `trusted`, worst first, as sentences.
    reasons "Reasons": Vec<String> = |p| p.reasons.clone();
    /// What the kernel holds: `enforced`, `fallback-lockdown`, `failed`, `unconfirmed`.
    enforcement "Enforcement": String = |p| p.enforcement.clone();
    /// `lockdown` or the policy's network mode in force.
    network_mode "NetworkMode": String = |p| p.network_mode.clone();
    /// Whether privacy mode is on.
    privacy_mode "PrivacyMode": bool = |p| p.privacy_mode;
    /// Serial of the last-good policy (0: none).
    policy_serial "PolicySerial": u64 = |p| p.policy_serial;
    /// SHA-256 of the last-good policy envelope (empty: none).
    policy_digest "PolicyDigest": String = |p| p.policy_digest.clone();
    /// Digest of the ruleset confirmed in the kernel (empty: none confirmed).
    ruleset_digest "RulesetDigest": String = |p| p.ruleset_digest.clone();
    /// Whether every required setup step is complete.
    setup_complete "SetupComplete": bool = |p| p.setup_complete;
    /// The required setup steps not yet complete.
    pending_setup_steps "PendingSetupSteps": Vec<String> = |p| p.pending_setup_steps.clone();
    /// `unenrolled`, `enrolled`, `suspended`, `revoked`, `retired` or `unknown`.
    lifecycle "Lifecycle": String = |p| p.lifecycle.clone();
    /// Records in the audit log and the hash of the last one.
    audit_head "AuditHead": (u64, String) = |p| p.audit_head.clone();
    /// How trustd itself is confined: `Landlock ABI N: fully enforced` (or `partially
    /// enforced`, `not enforced`), or `not confined`.
    confinement "Confinement": String = |p| p.confinement.clone();
    /// What signs the device's evidence (reports, checkpoints), as a report's `signer` says
    /// it: `tpm` (a TPM quote by the attestation key) or `software-key-only` (the device key
    /// in a file, which root can read), and a sentence saying why. Informational: it does not
    /// change `Level` (a TPM configured but not in use is also one of the `Reasons`).
    evidence "Evidence": (String, String) = |p| p.evidence.clone();
}

/// The names of [`PROPERTIES`], in its order.
pub(super) const NAMES: [&str; PROPERTIES.len()] = {
    let mut out = [""; PROPERTIES.len()];
    let mut i = 0;
    while i < PROPERTIES.len() {
        out[i] = PROPERTIES[i].name;
        i += 1;
    }
    out
};

/// Each property's name and value, in the order of the introspection XML (dbus/org.enigm.Trust1.xml).
pub(super) fn properties(p: &Posture) -> Vec<(&'static str, Variant<'static>)> {
    PROPERTIES
        .iter()
        .map(|r| {
            let v = (r.value)(p);
            debug_assert_eq!(v.value_signature(), r.signature, "{}", r.name);
            (r.name, v)
        })
        .collect()
}

/// Send one `PropertiesChanged` per posture change, carrying every property that changed.
pub(super) async fn signal_changes(
    emitter: SignalEmitter<'static>,
    mut rx: watch::Receiver<Posture>,
) {
    let iface = InterfaceName::from_static_str_unchecked(super::INTERFACES[0]);
    let mut last = properties(&rx.borrow_and_update());
    while rx.changed().await.is_ok() {
        let now = properties(&rx.borrow_and_update());
        let changed: HashMap<&str, Variant<'_>> = now
            .iter()
            .zip(&last)
            .filter(|(n, o)| n.1 != o.1)
            .map(|(n, _)| (n.0, n.1.clone()))
            .collect();
        if !changed.is_empty()
            && let Err(e) = zbus::fdo::Properties::properties_changed(
                &emitter,
                iface.clone(),
                changed,
                Cow::Borrowed(&[]),
            )
            .await
        {
            tracing::warn!("PropertiesChanged not sent: {e}");
        }
        last = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table and the committed introspection XML name the same properties with the same
    /// types (the XML lists them in its own order).
    #[test]
    fn the_table_matches_the_introspection_xml() {
        let xml = include_str!("../../../dbus/org.enigm.Trust1.xml");
        let start = xml
            .find("<interface name=\"org.enigm.Trust1.Posture\">")
            .expect("the Posture interface");
        let iface = &xml[start..start + xml[start..].find("</interface>").expect("end")];
        let mut in_xml: Vec<(String, String)> = iface
            .lines()
            .filter_map(|l| {
                let l = l.trim();
                let rest = l.strip_prefix("<property name=\"")?;
                let (name, rest) = rest.split_once('"')?;
                let ty = rest.split_once("type=\"")?.1.split_once('"')?.0;
                Some((name.to_owned(), ty.to_owned()))
            })
            .collect();
        let mut in_table: Vec<(String, String)> = PROPERTIES
            .iter()
            .map(|r| (r.name.to_owned(), r.signature.to_string()))
            .collect();
        in_xml.sort();
        in_table.sort();
        assert_eq!(in_table, in_xml);
        assert_eq!(NAMES.len(), PROPERTIES.len());
    }
}
