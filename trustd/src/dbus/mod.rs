//! The D-Bus adapter: `org.enigm.Trust1` at `/org/enigm/Trust1`, one file per interface.
//!
//! No logic lives here. A method call becomes a [`Command`] for the engine, carrying the
//! caller's credentials as the bus daemon reports them for the message's sender; the engine
//! authorizes, acts, audits and answers. Posture properties are read from the snapshot the
//! engine publishes, and every change of it is sent as one `PropertiesChanged` signal.

mod audit;
pub mod client;
mod device;
mod error;
mod launcher;
mod policy;
mod posture;
mod privacy;
mod setup;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot, watch};
use zbus::Connection;
use zbus::message::Header;
use zbus::names::BusName;

use crate::daemon::{Caller, Command, Request, Response};
pub use error::Error;

/// The well-known name.
pub const BUS_NAME: &str = "org.enigm.Trust1";
/// The object every interface is served at.
pub const OBJECT_PATH: &str = "/org/enigm/Trust1";
/// The interfaces served, in the order of DESIGN.md.
pub const INTERFACES: [&str; 7] = [
    "org.enigm.Trust1.Posture",
    "org.enigm.Trust1.Privacy",
    "org.enigm.Trust1.Policy",
    "org.enigm.Trust1.Launcher",
    "org.enigm.Trust1.Setup",
    "org.enigm.Trust1.Device",
    "org.enigm.Trust1.Audit",
];

/// Unique names are never reused on a bus, so a cached caller cannot go stale; the cache is
/// only bounded.
const MAX_CACHED_CALLERS: usize = 4096;

/// What every interface shares: the engine's queue and the callers seen so far.
#[derive(Debug, Clone)]
pub struct Handle {
    tx: mpsc::Sender<Command>,
    callers: Arc<Mutex<HashMap<String, Caller>>>,
}

impl Handle {
    /// A handle on the engine's queue.
    pub fn new(tx: mpsc::Sender<Command>) -> Self {
        Self {
            tx,
            callers: Arc::default(),
        }
    }

    /// The caller of the message, from the bus daemon's `GetConnectionCredentials` for the
    /// message's sender: never from the body, never this process's own identity.
    async fn caller(&self, conn: &Connection, hdr: &Header<'_>) -> error::Result<Caller> {
        let sender = hdr
            .sender()
            .ok_or_else(|| Error::AccessDenied("the call carries no sender".into()))?;
        let name = sender.as_str().to_owned();
        if let Some(c) = self.cached(&name) {
            return Ok(c);
        }
        let dbus = zbus::fdo::DBusProxy::builder(conn)
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await?;
        let creds = dbus
            .get_connection_credentials(BusName::Unique(sender.to_owned()))
            .await
            .map_err(|e| Error::AccessDenied(format!("the caller's credentials: {e}")))?;
        let uid = creds
            .unix_user_id()
            .ok_or_else(|| Error::AccessDenied("the bus did not report the caller's uid".into()))?;
        let caller = Caller {
            uid,
            // No groups reported means no group membership: fail closed.
            gids: creds.unix_group_ids().cloned().unwrap_or_default(),
            pid: creds.process_id(),
            bus_name: name.clone(),
        };
        let mut cache = self
            .callers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if cache.len() >= MAX_CACHED_CALLERS {
            cache.clear();
        }
        cache.insert(name, caller.clone());
        Ok(caller)
    }

    fn cached(&self, name: &str) -> Option<Caller> {
        self.callers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    /// Identify the caller, queue the request, wait for the engine's answer.
    async fn call(
        &self,
        conn: &Connection,
        hdr: &Header<'_>,
        request: Request,
    ) -> error::Result<Response> {
        let caller = self.caller(conn, hdr).await?;
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Command::Call {
                caller,
                request,
                reply,
            })
            .await
            .map_err(|_| Error::Failed("trustd is stopping; nothing changed".into()))?;
        answer
            .await
            .map_err(|_| Error::Failed("trustd stopped before answering".into()))?
            .map_err(Error::from)
    }
}

/// The posture as a JSON object keyed by the D-Bus property names (for signed reports).
pub fn posture_json(p: &crate::posture::Posture) -> serde_json::Map<String, serde_json::Value> {
    posture::properties(p)
        .iter()
        .map(|(k, v)| ((*k).to_owned(), client::variant_json(v)))
        .collect()
}

fn unexpected(r: &Response) -> Error {
    Error::Failed(format!("internal: unexpected answer {r:?}"))
}

/// Register every interface, take the bus name, and start sending `PropertiesChanged` for
/// posture changes. The name is taken only once the interfaces are there, so a client that
/// sees the name can call at once.
pub async fn serve(
    builder: zbus::connection::Builder<'_>,
    handle: Handle,
    posture_rx: watch::Receiver<crate::posture::Posture>,
) -> zbus::Result<Connection> {
    let conn = builder
        .serve_at(
            OBJECT_PATH,
            posture::Posture::new(posture_rx.clone(), handle.clone()),
        )
        .serve_at(OBJECT_PATH, privacy::Privacy::new(handle.clone()))
        .serve_at(OBJECT_PATH, policy::Policy::new(handle.clone()))
        .serve_at(OBJECT_PATH, launcher::Launcher::new(handle.clone()))
        .serve_at(OBJECT_PATH, setup::Setup::new(handle.clone()))
        .serve_at(OBJECT_PATH, device::Device::new(handle.clone()))
        .serve_at(OBJECT_PATH, audit::Audit::new(handle))
        .name(BUS_NAME)
        .build()
        .await?;
    let emitter = zbus::object_server::SignalEmitter::new(&conn, OBJECT_PATH)?.into_owned();
    tokio::spawn(posture::signal_changes(emitter, posture_rx));
    Ok(conn)
}
