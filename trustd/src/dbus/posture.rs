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
use crate::posture::Posture as Snapshot;

/// The interface: reads the snapshot the engine publishes.
#[derive(Debug)]
pub struct Posture {
    rx: watch::Receiver<Snapshot>,
    h: Handle,
}

impl Posture {
    pub(super) fn new(rx: watch::Receiver<Snapshot>, h: Handle) -> Self {
        Self { rx, h }
    }
}

// Each method call runs in a task of its own, so that a call waiting for the engine never
// holds up the dispatch of others; the bus service's admission limits (`gate`) bound how
// many such tasks a caller can have.
#[interface(name = "org.enigm.Trust1.Posture")]
impl Posture {
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
    async fn get_report(&self, nonce: String, #[zbus(header)] hdr: Header<'_>) -> Result<String> {
        self.h.call(&hdr, |tx| Call::Report(nonce, tx)).await
    }

    /// `trusted`, `degraded` or `untrusted`.
    #[zbus(property)]
    fn level(&self) -> String {
        self.rx.borrow().level.as_str().to_owned()
    }

    /// Why the level is not `trusted`, worst first, as sentences.
    #[zbus(property)]
    fn reasons(&self) -> Vec<String> {
        self.rx.borrow().reasons.clone()
    }

    /// What the kernel holds: `enforced`, `fallback-lockdown`, `failed`, `unconfirmed`.
    #[zbus(property)]
    fn enforcement(&self) -> String {
        self.rx.borrow().enforcement.clone()
    }

    /// `lockdown` or the policy's network mode in force.
    #[zbus(property)]
    fn network_mode(&self) -> String {
        self.rx.borrow().network_mode.clone()
    }

    /// Whether privacy mode is on.
    #[zbus(property)]
    fn privacy_mode(&self) -> bool {
        self.rx.borrow().privacy_mode
    }

    /// Serial of the last-good policy (0: none).
    #[zbus(property)]
    fn policy_serial(&self) -> u64 {
        self.rx.borrow().policy_serial
    }

    /// SHA-256 of the last-good policy envelope (empty: none).
    #[zbus(property)]
    fn policy_digest(&self) -> String {
        self.rx.borrow().policy_digest.clone()
    }

    /// Digest of the ruleset confirmed in the kernel (empty: none confirmed).
    #[zbus(property)]
    fn ruleset_digest(&self) -> String {
        self.rx.borrow().ruleset_digest.clone()
    }

    /// Whether every required setup step is complete.
    #[zbus(property)]
    fn setup_complete(&self) -> bool {
        self.rx.borrow().setup_complete
    }

    /// The required setup steps not yet complete.
    #[zbus(property)]
    fn pending_setup_steps(&self) -> Vec<String> {
        self.rx.borrow().pending_setup_steps.clone()
    }

    /// `unenrolled`, `enrolled`, `suspended`, `revoked`, `retired` or `unknown`.
    #[zbus(property)]
    fn lifecycle(&self) -> String {
        self.rx.borrow().lifecycle.clone()
    }

    /// Records in the audit log and the hash of the last one.
    #[zbus(property)]
    fn audit_head(&self) -> (u64, String) {
        self.rx.borrow().audit_head.clone()
    }

    /// How trustd itself is confined: `Landlock ABI N: fully enforced` (or `partially
    /// enforced`, `not enforced`), or `not confined`.
    #[zbus(property)]
    fn confinement(&self) -> String {
        self.rx.borrow().confinement.clone()
    }
}

/// Each property's name and value, in the order of the introspection XML (dbus/org.enigm.Trust1.xml).
pub(super) fn properties(p: &Snapshot) -> Vec<(&'static str, Variant<'static>)> {
    vec![
        ("Level", Variant::from(p.level.as_str().to_owned())),
        ("Reasons", Variant::from(p.reasons.clone())),
        ("Enforcement", Variant::from(p.enforcement.clone())),
        ("NetworkMode", Variant::from(p.network_mode.clone())),
        ("PrivacyMode", Variant::from(p.privacy_mode)),
        ("PolicySerial", Variant::from(p.policy_serial)),
        ("PolicyDigest", Variant::from(p.policy_digest.clone())),
        ("RulesetDigest", Variant::from(p.ruleset_digest.clone())),
        ("SetupComplete", Variant::from(p.setup_complete)),
        (
            "PendingSetupSteps",
            Variant::from(p.pending_setup_steps.clone()),
        ),
        ("Lifecycle", Variant::from(p.lifecycle.clone())),
        ("AuditHead", Variant::from(p.audit_head.clone())),
        ("Confinement", Variant::from(p.confinement.clone())),
    ]
}

/// Send one `PropertiesChanged` per posture change, carrying every property that changed.
pub(super) async fn signal_changes(
    emitter: SignalEmitter<'static>,
    mut rx: watch::Receiver<Snapshot>,
) {
    let iface = InterfaceName::from_static_str_unchecked("org.enigm.Trust1.Posture");
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
