//! A client of `org.enigm.Trust1`, for `trustctl` and the tests: typed calls, posture as
//! JSON, and the stream of posture changes.

use std::collections::HashMap;

use serde_json::{Value, json};
use zbus::proxy::CacheProperties;
use zbus::{Connection, OwnedVariant, Variant};

use super::{BUS_NAME, OBJECT_PATH};

/// The posture properties, in the order of the introspection XML (dbus/org.enigm.Trust1.xml):
/// the names of the service's own table.
pub const POSTURE_PROPERTIES: [&str; super::posture::NAMES.len()] = super::posture::NAMES;

/// A D-Bus value as JSON (strings, numbers, booleans, arrays and structs as arrays).
pub fn variant_json(v: &Variant<'_>) -> Value {
    match v {
        Variant::Bool(b) => json!(b),
        Variant::U8(n) => json!(n),
        Variant::I16(n) => json!(n),
        Variant::U16(n) => json!(n),
        Variant::I32(n) => json!(n),
        Variant::U32(n) => json!(n),
        Variant::I64(n) => json!(n),
        Variant::U64(n) => json!(n),
        Variant::F64(n) => json!(n),
        Variant::Str(s) => json!(s.as_str()),
        Variant::Variant(inner) => variant_json(inner),
        Variant::Array(a) => Value::Array(a.inner().iter().map(variant_json).collect()),
        Variant::Structure(s) => Value::Array(s.fields().iter().map(variant_json).collect()),
        other => json!(other.to_string()),
    }
}

/// What an `Apply*` call returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyResult {
    /// The role's serial before.
    pub from_serial: u64,
    /// The role's serial now.
    pub to_serial: u64,
    /// SHA-256 of the envelope.
    pub digest: String,
    /// The audit record's seq.
    pub audit_seq: u64,
    /// What a person should know (ApplyIntelFeed: overlaps with protected destinations).
    pub notes: Vec<String>,
}

// The interfaces as typed proxies: interface, method and argument types are declared once
// here (they mirror dbus/org.enigm.Trust1.xml; the tests check both against the service).

#[zbus::proxy(
    interface = "org.enigm.Trust1.Posture",
    default_service = "org.enigm.Trust1",
    default_path = "/org/enigm/Trust1"
)]
trait PostureInterface {
    /// This device's handle for a verifier.
    fn get_device_handle(&self, verifier: &str) -> zbus::Result<String>;
    /// A signed posture report answering `nonce`.
    fn get_report(&self, nonce: &str) -> zbus::Result<String>;
}

#[zbus::proxy(
    interface = "org.enigm.Trust1.Privacy",
    default_service = "org.enigm.Trust1",
    default_path = "/org/enigm/Trust1"
)]
trait PrivacyInterface {
    /// Privacy mode on or off.
    fn set_privacy_mode(&self, on: bool) -> zbus::Result<()>;
}

#[zbus::proxy(
    interface = "org.enigm.Trust1.Policy",
    default_service = "org.enigm.Trust1",
    default_path = "/org/enigm/Trust1"
)]
trait PolicyInterface {
    /// (from_serial, to_serial, digest, audit_seq).
    fn apply_bundle(&self, envelope: &[u8]) -> zbus::Result<(u64, u64, String, u64)>;
    /// (from_serial, to_serial, digest, audit_seq, notes).
    fn apply_intel_feed(
        &self,
        envelope: &[u8],
    ) -> zbus::Result<(u64, u64, String, u64, Vec<String>)>;
    /// (from_serial, to_serial, digest, audit_seq).
    fn apply_trust_root(&self, envelope: &[u8]) -> zbus::Result<(u64, u64, String, u64)>;
    /// The last-good policy's payload (empty: none).
    fn active_policy(&self) -> zbus::Result<String>;
}

#[zbus::proxy(
    interface = "org.enigm.Trust1.Launcher",
    default_service = "org.enigm.Trust1",
    default_path = "/org/enigm/Trust1"
)]
trait LauncherInterface {
    /// (allowed, reason, profile JSON).
    fn check_launch(&self, app_id: &str, exe: &str) -> zbus::Result<(bool, String, String)>;
    /// What the launcher did.
    fn report_launch(&self, app_id: &str, started: bool, reason: &str) -> zbus::Result<()>;
}

#[zbus::proxy(
    interface = "org.enigm.Trust1.Setup",
    default_service = "org.enigm.Trust1",
    default_path = "/org/enigm/Trust1"
)]
trait SetupInterface {
    /// Complete a setup step.
    fn complete_step(&self, step: &str) -> zbus::Result<()>;
}

#[zbus::proxy(
    interface = "org.enigm.Trust1.Device",
    default_service = "org.enigm.Trust1",
    default_path = "/org/enigm/Trust1"
)]
trait DeviceInterface {
    /// (from, to).
    fn apply_command(&self, envelope: &[u8]) -> zbus::Result<(String, String)>;
    /// The credential recovered.
    fn activate_credential(&self, credential_blob: &[u8], secret: &[u8]) -> zbus::Result<Vec<u8>>;
}

#[zbus::proxy(
    interface = "org.enigm.Trust1.Audit",
    default_service = "org.enigm.Trust1",
    default_path = "/org/enigm/Trust1"
)]
trait AuditInterface {
    /// The last `n` records.
    fn tail(&self, n: u32) -> zbus::Result<Vec<String>>;
    /// (records, problems).
    fn verify(&self) -> zbus::Result<(u64, Vec<String>)>;
    /// Acknowledge damage up to `through`.
    fn acknowledge_damage(&self, through: u64) -> zbus::Result<String>;
    /// A signed checkpoint.
    fn checkpoint(&self) -> zbus::Result<String>;
}

/// A proxy of one interface, its properties never cached (posture changes under it).
macro_rules! proxy {
    ($conn:expr, $p:ident) => {
        $p::builder($conn)
            .cache_properties(CacheProperties::No)
            .build()
            .await
    };
}

/// How long a call waits for trustd's answer before it fails with a time-out
/// (`zbus::Error::InputOutput` of kind `TimedOut`): longer than any call takes while trustd
/// works with the default `nft_timeout_ms` (an engine call waits at most two `nft`
/// deadlines), so that a call trustd dropped unread (over a budget) or a wedged trustd ends
/// in an error, not a client waiting forever. The call itself may still complete in trustd.
pub const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(90);

/// A connection to trustd.
#[derive(Debug, Clone)]
pub struct Client {
    conn: Connection,
}

impl Client {
    /// Connect to the bus at `address`, or to the system bus.
    pub async fn connect(address: Option<&str>) -> zbus::Result<Self> {
        let b = match address {
            Some(a) => zbus::connection::Builder::address(a),
            None => zbus::connection::Builder::system(),
        };
        Ok(Self {
            conn: b.method_timeout(CALL_TIMEOUT).build().await?,
        })
    }

    /// Connect to trustd's private socket at `path` (peer to peer, no bus daemon; only root
    /// can connect to the one trustd makes). Signals (posture changes) are not sent on it.
    ///
    /// The server must be root or the owner of the socket's directory, a directory nobody
    /// else may write: a socket planted elsewhere (in /tmp, or by another user) is refused
    /// before a byte is sent, so root's calls never reach a process that could answer lies.
    pub async fn connect_private(path: &std::path::Path) -> zbus::Result<Self> {
        use std::os::fd::AsFd;
        use std::os::unix::fs::MetadataExt;
        let io = |e: std::io::Error| zbus::Error::InputOutput(std::sync::Arc::new(e));
        let stream = std::os::unix::net::UnixStream::connect(path).map_err(io)?;
        let dir = path.parent().unwrap_or(std::path::Path::new("/"));
        let meta = std::fs::metadata(dir).map_err(io)?;
        let server = crate::sys::peer_identity(stream.as_fd()).map_err(io)?.uid;
        if meta.mode() & 0o022 != 0 || (server != 0 && server != meta.uid()) {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!(
                    "{}: served by uid {server}, in a directory of uid {} (mode {:o}): not trustd's socket; nothing sent",
                    path.display(),
                    meta.uid(),
                    meta.mode() & 0o7777
                ),
            )));
        }
        Ok(Self {
            conn: zbus::connection::Builder::unix_stream(stream)
                .p2p()
                .method_timeout(CALL_TIMEOUT)
                .build()
                .await?,
        })
    }

    /// The connection.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    async fn properties(&self) -> zbus::Result<zbus::fdo::PropertiesProxy<'static>> {
        zbus::fdo::PropertiesProxy::builder(&self.conn)
            .destination(BUS_NAME)
            .path(OBJECT_PATH)
            .cache_properties(CacheProperties::No)
            .build()
            .await
    }

    /// Every posture property, in the order of the introspection XML (dbus/org.enigm.Trust1.xml).
    pub async fn posture(&self) -> zbus::Result<Vec<(String, Value)>> {
        let iface = proxy!(&self.conn, PostureInterfaceProxy)?
            .inner()
            .interface()
            .to_owned();
        let all: HashMap<String, OwnedVariant> = self.properties().await?.get_all(iface).await?;
        Ok(POSTURE_PROPERTIES
            .iter()
            .map(|n| {
                let v = all
                    .get(*n)
                    .map_or(Value::Null, |v| variant_json(&Variant::from(v.clone())));
                ((*n).to_owned(), v)
            })
            .collect())
    }

    /// One posture property.
    pub async fn posture_property(&self, name: &str) -> zbus::Result<Value> {
        let p = proxy!(&self.conn, PostureInterfaceProxy)?;
        let v: OwnedVariant = p.inner().get_property(name).await?;
        Ok(variant_json(&Variant::from(v)))
    }

    /// Privacy mode on or off.
    pub async fn set_privacy_mode(&self, on: bool) -> zbus::Result<()> {
        proxy!(&self.conn, PrivacyInterfaceProxy)?
            .set_privacy_mode(on)
            .await
    }

    /// Apply a signed policy bundle.
    pub async fn apply_bundle(&self, envelope: &[u8]) -> zbus::Result<ApplyResult> {
        self.introduce(envelope.len()).await;
        let r = proxy!(&self.conn, PolicyInterfaceProxy)?
            .apply_bundle(envelope)
            .await?;
        Ok(ApplyResult::from((r.0, r.1, r.2, r.3, Vec::new())))
    }

    /// Apply a signed intel feed.
    pub async fn apply_intel_feed(&self, envelope: &[u8]) -> zbus::Result<ApplyResult> {
        self.introduce(envelope.len()).await;
        let r = proxy!(&self.conn, PolicyInterfaceProxy)?
            .apply_intel_feed(envelope)
            .await?;
        Ok(ApplyResult::from(r))
    }

    /// Apply a signed trust-root rotation.
    pub async fn apply_trust_root(&self, envelope: &[u8]) -> zbus::Result<ApplyResult> {
        self.introduce(envelope.len()).await;
        let r = proxy!(&self.conn, PolicyInterfaceProxy)?
            .apply_trust_root(envelope)
            .await?;
        Ok(ApplyResult::from((r.0, r.1, r.2, r.3, Vec::new())))
    }

    /// Before a call whose body is over [`crate::dbus::SMALL_BODY`] bytes (`len`) on the bus:
    /// make one small call that trustd answers after learning who the caller is, so that the
    /// large body is read (trustd reads a large body only from a sender it knows as an admin,
    /// and waits to learn that only within a small budget that other users can spend). On
    /// the private socket, or for a small body, nothing. The small call's own outcome does not
    /// matter (a refusal also teaches trustd the caller).
    async fn introduce(&self, len: usize) {
        if len <= crate::dbus::SMALL_BODY as usize || self.conn.unique_name().is_none() {
            return;
        }
        let _ = self.active_policy().await;
    }

    /// The active policy's payload (empty: none).
    pub async fn active_policy(&self) -> zbus::Result<String> {
        proxy!(&self.conn, PolicyInterfaceProxy)?
            .active_policy()
            .await
    }

    /// Complete a setup step.
    pub async fn complete_step(&self, step: &str) -> zbus::Result<()> {
        proxy!(&self.conn, SetupInterfaceProxy)?
            .complete_step(step)
            .await
    }

    /// The last `n` audit records (JSON lines).
    pub async fn audit_tail(&self, n: u32) -> zbus::Result<Vec<String>> {
        proxy!(&self.conn, AuditInterfaceProxy)?.tail(n).await
    }

    /// Check the audit log: records read and problems found.
    pub async fn audit_verify(&self) -> zbus::Result<(u64, Vec<String>)> {
        proxy!(&self.conn, AuditInterfaceProxy)?.verify().await
    }

    /// Acknowledge the audit log damage recorded up to record `through` (`u64::MAX`: all).
    pub async fn audit_acknowledge(&self, through: u64) -> zbus::Result<String> {
        proxy!(&self.conn, AuditInterfaceProxy)?
            .acknowledge_damage(through)
            .await
    }

    /// May the app start? `(allowed, reason, profile JSON)`.
    pub async fn check_launch(
        &self,
        app_id: &str,
        exe: &str,
    ) -> zbus::Result<(bool, String, String)> {
        proxy!(&self.conn, LauncherInterfaceProxy)?
            .check_launch(app_id, exe)
            .await
    }

    /// Report what the launcher did.
    pub async fn report_launch(
        &self,
        app_id: &str,
        started: bool,
        reason: &str,
    ) -> zbus::Result<()> {
        proxy!(&self.conn, LauncherInterfaceProxy)?
            .report_launch(app_id, started, reason)
            .await
    }

    /// Apply a signed lifecycle command: `(from, to)`.
    pub async fn apply_command(&self, envelope: &[u8]) -> zbus::Result<(String, String)> {
        self.introduce(envelope.len()).await;
        proxy!(&self.conn, DeviceInterfaceProxy)?
            .apply_command(envelope)
            .await
    }

    /// TPM credential activation of a verifier's challenge (the buffers of its
    /// `TPM2B_ID_OBJECT` and `TPM2B_ENCRYPTED_SECRET`): the credential recovered.
    pub async fn activate_credential(
        &self,
        credential_blob: &[u8],
        secret: &[u8],
    ) -> zbus::Result<Vec<u8>> {
        proxy!(&self.conn, DeviceInterfaceProxy)?
            .activate_credential(credential_blob, secret)
            .await
    }

    /// The device's handle for a verifier.
    pub async fn device_handle(&self, verifier: &str) -> zbus::Result<String> {
        proxy!(&self.conn, PostureInterfaceProxy)?
            .get_device_handle(verifier)
            .await
    }

    /// A signed checkpoint of the audit log now.
    pub async fn checkpoint(&self) -> zbus::Result<String> {
        proxy!(&self.conn, AuditInterfaceProxy)?.checkpoint().await
    }

    /// A signed posture report answering `nonce`.
    pub async fn report(&self, nonce: &str) -> zbus::Result<String> {
        proxy!(&self.conn, PostureInterfaceProxy)?
            .get_report(nonce)
            .await
    }

    /// Subscribe to posture changes (before making the change you want to see).
    pub async fn posture_changes(&self) -> zbus::Result<PostureChanges> {
        let iface = proxy!(&self.conn, PostureInterfaceProxy)?
            .inner()
            .interface()
            .to_owned();
        let props = self.properties().await?;
        Ok(PostureChanges {
            inner: Box::pin(props.receive_properties_changed().await?),
            iface: iface.into(),
        })
    }
}

impl From<(u64, u64, String, u64, Vec<String>)> for ApplyResult {
    fn from(
        (from_serial, to_serial, digest, audit_seq, notes): (u64, u64, String, u64, Vec<String>),
    ) -> Self {
        Self {
            from_serial,
            to_serial,
            digest,
            audit_seq,
            notes,
        }
    }
}

/// The `PropertiesChanged` signals of `org.enigm.Trust1.Posture`.
pub struct PostureChanges {
    inner: std::pin::Pin<Box<zbus::fdo::PropertiesChangedStream>>,
    iface: zbus::names::OwnedInterfaceName,
}

impl std::fmt::Debug for PostureChanges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PostureChanges")
    }
}

impl PostureChanges {
    /// The next change: the properties that changed, in the order of the introspection XML (dbus/org.enigm.Trust1.xml). `None` when the
    /// connection is gone.
    pub async fn next(&mut self) -> Option<Vec<(String, Value)>> {
        use futures_core::Stream;
        loop {
            let sig = std::future::poll_fn(|cx| self.inner.as_mut().poll_next(cx)).await?;
            let Ok(args) = sig.args() else { continue };
            if args.interface_name().as_str() != self.iface.as_str() {
                continue;
            }
            let mut changed: Vec<(String, Value)> = args
                .changed_properties()
                .iter()
                .map(|(k, v)| ((*k).to_owned(), variant_json(v)))
                .collect();
            changed.sort_by_key(|(k, _)| POSTURE_PROPERTIES.iter().position(|p| p == k));
            return Some(changed);
        }
    }
}
