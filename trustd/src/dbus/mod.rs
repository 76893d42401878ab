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
mod gate;
mod launcher;
mod policy;
mod posture;
mod privacy;
pub mod private;
mod recent;
mod setup;
mod socket;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{OnceCell, oneshot, watch};
use zbus::Connection;
use zbus::message::Header;
use zbus::names::BusName;

use crate::daemon::{Call, Caller, CallerRole, Command, Senders, SharedGroups, Tx};
pub use error::{Error, Failure};
pub use gate::Gate;
pub use socket::{SENDER_BURST, SENDER_RATE, SMALL_BODY};

/// The well-known name.
pub const BUS_NAME: &str = "org.enigm.Trust1";
/// The object every interface is served at.
pub const OBJECT_PATH: &str = "/org/enigm/Trust1";
/// The interfaces served, in the order of the introspection XML.
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
/// only bounded (per generation: names in use stay, see [`recent::Recent`]).
const MAX_CACHED_CALLERS: usize = 4096;

/// How long the bus daemon has to report a caller's credentials before the call is refused.
pub const CREDENTIALS_TIMEOUT: Duration = Duration::from_secs(2);

/// One caller's credentials, looked up once however many of its calls wait for them.
type CallerCell = Arc<OnceCell<Caller>>;

/// What every interface shares: the engine's lanes, who holds which role, the admission
/// limits, and the callers seen so far.
///
/// Callers' credentials are asked of the bus daemon over a second connection of its own, so
/// that their answers never queue behind the calls the serving connection is dispatching:
/// however many calls arrive, the lookups complete (or time out after
/// [`CREDENTIALS_TIMEOUT`]).
#[derive(Debug, Clone)]
pub struct Handle {
    lanes: Senders,
    groups: SharedGroups,
    gate: Gate,
    dbus: zbus::fdo::DBusProxy<'static>,
    callers: Arc<Mutex<recent::Recent<CallerCell>>>,
    /// On a connection of the private socket: its caller, from the kernel's record of the
    /// peer (`SO_PEERCRED`), since its messages carry no sender. `None` on the bus.
    peer: Option<Caller>,
}

fn busy() -> Error {
    Error::Busy(format!(
        "too many calls of this caller are already waiting (at most {} per connection and {} per user); nothing changed, retry after an answer",
        gate::PER_CONNECTION,
        gate::PER_UID
    ))
}

impl socket::Judge for Handle {
    fn identify<'a>(
        &'a self,
        sender: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<socket::Identity>> + Send + 'a>>
    {
        Box::pin(async move {
            let Ok(name) = zbus::names::UniqueName::try_from(sender) else {
                return Some(socket::Identity {
                    uid: None,
                    privileged: false,
                });
            };
            self.caller(&name).await.ok().map(|c| self.identity(&c))
        })
    }

    fn known(&self, sender: &str) -> Option<socket::Identity> {
        let cell = self
            .callers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(sender)
            .cloned()?;
        cell.get().map(|c| self.identity(c))
    }
}

impl Handle {
    /// The caller's budget identity: its uid, and whether it holds the admin role.
    fn identity(&self, c: &Caller) -> socket::Identity {
        socket::Identity {
            uid: Some(c.uid),
            privileged: self
                .groups
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .role(c)
                == CallerRole::Admin,
        }
    }

    /// This handle for one connection of the private socket, whose caller is `peer`.
    fn for_peer(&self, peer: Caller) -> Self {
        Self {
            peer: Some(peer),
            ..self.clone()
        }
    }

    /// The caller of the message, from the bus daemon's `GetConnectionCredentials` for the
    /// message's sender: never from the body, never this process's own identity.
    async fn caller(&self, sender: &zbus::names::UniqueName<'_>) -> error::Result<Caller> {
        let name = sender.as_str().to_owned();
        let cell = {
            let mut cache = self.callers.lock().unwrap_or_else(PoisonError::into_inner);
            cache.get_or_insert_with(&name, CallerCell::default).clone()
        };
        let caller = cell
            .get_or_try_init(|| async {
                let creds = tokio::time::timeout(
                    CREDENTIALS_TIMEOUT,
                    self.dbus
                        .get_connection_credentials(BusName::Unique(sender.to_owned())),
                )
                .await
                .map_err(|_| {
                    Error::AccessDenied(
                        "the bus did not report the caller's credentials in time; nothing changed"
                            .into(),
                    )
                })?
                .map_err(|e| Error::AccessDenied(format!("the caller's credentials: {e}")))?;
                let uid = creds.unix_user_id().ok_or_else(|| {
                    Error::AccessDenied("the bus did not report the caller's uid".into())
                })?;
                Ok::<_, Error>(Caller {
                    uid,
                    // No groups reported means no group membership: fail closed.
                    gids: creds.unix_group_ids().cloned().unwrap_or_default(),
                    pid: creds.process_id(),
                    bus_name: name.clone(),
                })
            })
            .await;
        match caller {
            Ok(c) => Ok(c.clone()),
            Err(e) => {
                // Not cached: the next call asks again.
                self.callers
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&name);
                Err(e)
            }
        }
    }

    /// Admit the call, identify the caller, queue the request in its caller's lane, wait for
    /// the engine's answer. A call over its connection's or its uid's limit, or finding the
    /// ordinary callers' lane full, is refused at once with `Busy` (counted, and recorded as
    /// one record per uid).
    ///
    /// `call` makes the engine's call from the reply channel of the answer's own type.
    async fn call<T>(
        &self,
        hdr: &Header<'_>,
        call: impl FnOnce(Tx<T>) -> Call,
    ) -> error::Result<T> {
        let (mut ticket, caller) = if let Some(peer) = &self.peer {
            // The private socket: one connection, one peer, identified by the kernel.
            let ticket = self.gate.enter(&peer.bus_name).ok_or_else(busy)?;
            (ticket, peer.clone())
        } else {
            let sender = hdr
                .sender()
                .ok_or_else(|| Error::AccessDenied("the call carries no sender".into()))?;
            let ticket = self.gate.enter(sender.as_str()).ok_or_else(busy)?;
            (ticket, self.caller(sender).await?)
        };
        let role = self
            .groups
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .role(&caller);
        let uid = caller.uid;
        let (reply, answer) = oneshot::channel();
        let cmd = Command::Call {
            caller,
            call: call(reply),
        };
        let stopping = || Error::Failed("trustd is stopping; nothing changed".into());
        if role == CallerRole::Admin {
            self.lanes.admin.send(cmd).await.map_err(|_| stopping())?;
        } else {
            if !ticket.charge_uid(uid) {
                return Err(busy());
            }
            match self.lanes.user.try_send(cmd) {
                Ok(()) => {}
                Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                    self.gate.count_refusal(Some(uid));
                    return Err(busy());
                }
                Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => return Err(stopping()),
            }
        }
        let answer = answer
            .await
            .map_err(|_| Error::Failed("trustd stopped before answering".into()))?
            .map_err(Error::from);
        drop(ticket);
        answer
    }
}

/// The posture as a JSON object keyed by the D-Bus property names (for signed reports).
pub fn posture_json(p: &crate::posture::Posture) -> serde_json::Map<String, serde_json::Value> {
    posture::properties(p)
        .iter()
        .map(|(k, v)| ((*k).to_owned(), client::variant_json(v)))
        .collect()
}

/// The service on the bus: the serving connection, and the second one it uses to ask the bus
/// daemon for callers' credentials and to check that the service answers.
#[derive(Debug)]
pub struct Service {
    /// The connection that owns [`BUS_NAME`] and serves the interfaces.
    pub conn: Connection,
    /// The connection for credential lookups and self-checks.
    pub aux: Connection,
    /// What the private socket's connections share with the bus service.
    shared: private::Shared,
}

impl Service {
    /// Whether the service answers through the bus: a posture property read from the second
    /// connection, routed by the bus daemon to the serving one, within `timeout`. This is
    /// what a client sees; the watchdog is fed only while it holds.
    pub async fn answers(&self, timeout: Duration) -> bool {
        let call = self.aux.call_method(
            Some(BUS_NAME),
            OBJECT_PATH,
            Some("org.freedesktop.DBus.Properties"),
            "Get",
            &(INTERFACES[0], "Level"),
        );
        matches!(tokio::time::timeout(timeout, call).await, Ok(Ok(_)))
    }
}

/// The system bus's address (`$DBUS_SYSTEM_BUS_ADDRESS`, or the specification's default).
fn system_bus_address() -> String {
    std::env::var("DBUS_SYSTEM_BUS_ADDRESS")
        .unwrap_or_else(|_| "unix:path=/var/run/dbus/system_bus_socket".to_owned())
}

/// A connection builder for `address` (default: the system bus) over a socket that takes no
/// file descriptors ([`socket::NoFds`]); addresses other than `unix:path=` are refused.
/// With `judge`: the serving connection (calls budgeted, see [`socket::NoFds::with_judge`]);
/// without: trustd's own client connection, which reads only replies
/// ([`socket::NoFds::replies_only`]).
async fn builder(
    address: Option<&str>,
    judge: Option<Arc<dyn socket::Judge>>,
    budgets: socket::SharedBudgets,
) -> zbus::Result<zbus::connection::Builder<'static>> {
    let address = address.map_or_else(system_bus_address, str::to_owned);
    let path = socket::unix_path(&address).ok_or_else(|| {
        zbus::Error::Address(format!(
            "{address}: trustd serves only on a unix:path= bus address"
        ))
    })?;
    let sock = socket::NoFds::connect(path)
        .await
        .map_err(|e| zbus::Error::InputOutput(std::sync::Arc::new(e)))?;
    Ok(zbus::connection::Builder::socket(match judge {
        Some(judge) => sock.with_judge(Some(judge), budgets),
        None => sock.replies_only(),
    }))
}

/// Register every interface, take the bus name, and start sending `PropertiesChanged` for
/// posture changes. The name is taken only once the interfaces are there, so a client that
/// sees the name can call at once. `address`: the bus (default: the system bus).
///
/// Calls are queued in `lanes` (privileged callers in the admin lane), each admitted by
/// `gate`; `groups` says who is privileged.
pub async fn serve(
    address: Option<&str>,
    lanes: Senders,
    groups: SharedGroups,
    gate: Gate,
    posture_rx: watch::Receiver<crate::posture::Posture>,
) -> zbus::Result<Service> {
    let budgets = socket::Budgets::shared();
    let aux = builder(address, None, socket::Budgets::shared())
        .await?
        .build()
        .await?;
    // trustd's own client connection (the liveness reads that feed the watchdog) is known
    // from the start, so that no flood of unknown names can crowd its calls out.
    if let Some(name) = aux.unique_name() {
        budgets.lock().unwrap_or_else(PoisonError::into_inner).pin(
            name.as_str(),
            socket::Identity {
                uid: Some(crate::sys::euid()),
                privileged: true,
            },
        );
    }
    let dbus = zbus::fdo::DBusProxy::builder(&aux)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await?;
    let handle = Handle {
        lanes,
        groups,
        gate,
        dbus,
        callers: Arc::new(Mutex::new(recent::Recent::new(MAX_CACHED_CALLERS))),
        peer: None,
    };
    let judge: Arc<dyn socket::Judge> = Arc::new(handle.clone());
    let shared = private::Shared {
        handle: handle.clone(),
        posture_rx: posture_rx.clone(),
        budgets: budgets.clone(),
    };
    let conn = serve_interfaces(
        builder(address, Some(judge), budgets).await?,
        &handle,
        &posture_rx,
    )
    .name(BUS_NAME)
    .build()
    .await?;
    let emitter = zbus::object_server::SignalEmitter::new(&conn, OBJECT_PATH)?.into_owned();
    tokio::spawn(posture::signal_changes(emitter, posture_rx));
    Ok(Service { conn, aux, shared })
}

/// Build the interfaces served at [`OBJECT_PATH`] on `b`, each with `handle`.
fn serve_interfaces(
    b: zbus::connection::Builder<'static>,
    handle: &Handle,
    posture_rx: &watch::Receiver<crate::posture::Posture>,
) -> zbus::connection::Builder<'static> {
    b.serve_at(
        OBJECT_PATH,
        posture::PostureInterface::new(posture_rx.clone(), handle.clone()),
    )
    .serve_at(OBJECT_PATH, privacy::PrivacyInterface::new(handle.clone()))
    .serve_at(OBJECT_PATH, policy::PolicyInterface::new(handle.clone()))
    .serve_at(
        OBJECT_PATH,
        launcher::LauncherInterface::new(handle.clone()),
    )
    .serve_at(OBJECT_PATH, setup::SetupInterface::new(handle.clone()))
    .serve_at(OBJECT_PATH, device::DeviceInterface::new(handle.clone()))
    .serve_at(OBJECT_PATH, audit::AuditInterface::new(handle.clone()))
}
