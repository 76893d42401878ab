//! The private socket: `org.enigm.Trust1` served peer to peer (no bus daemon) on a Unix
//! socket that only root can reach (`/run/trustd/private`), as systemd does with
//! `/run/systemd/private`. Root's `trustctl` uses it, so that an admin's calls never queue
//! behind a bus daemon that a flood of other users' calls keeps busy.
//!
//! Same objects, same interfaces, same engine lanes, same authorization, audit and admission
//! limits as on the bus; only the caller's identity comes from elsewhere: the kernel's record
//! of the peer (`SO_PEERCRED`, `SO_PEERGROUPS`), taken when the connection is accepted, in
//! place of the bus daemon's `GetConnectionCredentials`. Nothing here decides who may do
//! what: a connection's calls go to the engine with that caller, which authorizes them as it
//! does those from the bus.

use std::os::fd::AsFd;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, watch};

use super::socket::{Judge, NoFds, SharedBudgets};
use super::{Handle, Service, serve_interfaces};
use crate::daemon::Caller;

/// Connections of the private socket served at once; one more is closed as soon as it is
/// accepted (and logged), so that no client can make trustd hold more.
pub const MAX_CONNECTIONS: usize = 16;
/// How long a new connection has to finish the D-Bus authentication before it is closed.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a reply to a private client may wait for the client to read before the
/// connection is closed: a client that stops reading gives up its connection, never
/// trustd's memory or a slot.
pub const WRITE_STALL: Duration = Duration::from_secs(10);

/// What the connections of the private socket share with the bus service.
#[derive(Debug, Clone)]
pub(super) struct Shared {
    pub(super) handle: Handle,
    pub(super) posture_rx: watch::Receiver<crate::posture::Posture>,
    pub(super) budgets: SharedBudgets,
}

/// The audit name of the `n`th connection of the private socket (in the place of a unique
/// bus name; it cannot be mistaken for one, which starts with `:`).
pub fn connection_name(n: u64) -> String {
    format!("private-socket#{n}")
}

impl Service {
    /// Listen on the private socket at `path` (the file created owner-only, mode 0600, before
    /// anyone can connect; an old socket file there is replaced) and serve every accepted
    /// connection peer to peer, at most [`MAX_CONNECTIONS`] at once. The task runs until
    /// aborted or the runtime stops.
    ///
    /// # Errors
    /// The socket could not be created (its directory missing, another kind of file at
    /// `path`, no permission).
    pub fn serve_private(&self, path: &Path) -> std::io::Result<tokio::task::JoinHandle<()>> {
        let listener = crate::sys::bind_owner_only(path)?;
        let listener = tokio::net::UnixListener::from_std(listener)?;
        let shared = self.shared.clone();
        Ok(tokio::spawn(accept(listener, shared)))
    }
}

async fn accept(listener: tokio::net::UnixListener, shared: Shared) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut n: u64 = 0;
    let mut warned: Option<tokio::time::Instant> = None;
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of descriptors or memory: wait rather than spin.
                tracing::warn!("the private socket: accepting a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            let now = tokio::time::Instant::now();
            if warned.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10)) {
                warned = Some(now);
                tracing::warn!(
                    "the private socket: {MAX_CONNECTIONS} connections already served; new ones are closed"
                );
            }
            continue;
        };
        n += 1;
        let shared = shared.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_one(stream, n, shared).await {
                tracing::info!("the private socket: connection {n}: {e}");
            }
            drop(slot);
        });
    }
}

/// Serve one accepted connection until its peer goes (or stops reading its replies).
async fn serve_one(stream: tokio::net::UnixStream, n: u64, shared: Shared) -> Result<(), String> {
    let peer = crate::sys::peer_identity(stream.as_fd())
        .map_err(|e| format!("the peer's credentials: {e}"))?;
    let caller = Caller {
        uid: peer.uid,
        gids: peer.gids,
        pid: Some(peer.pid),
        bus_name: connection_name(n),
    };
    let handle = shared.handle.for_peer(caller);
    let identity = handle.identity(handle.peer.as_ref().ok_or("no peer")?);
    let judge: Arc<dyn Judge> = Arc::new(handle.clone());
    let sock = NoFds::accepted(stream, judge, shared.budgets.clone(), identity);
    let b = zbus::connection::Builder::socket(sock)
        .server(zbus::Guid::generate())
        .p2p()
        // The EXTERNAL authentication must name the uid the kernel reports.
        .user_id(peer.uid);
    let conn = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        serve_interfaces(b, &handle, &shared.posture_rx).build(),
    )
    .await
    .map_err(|_| "no authentication in time: closed".to_owned())?
    .map_err(|e| format!("authentication: {e}"))?;
    // Hold the slot until the connection ends (the peer goes, or stops reading its replies
    // for WRITE_STALL and is cut off).
    conn.closed().await;
    Ok(())
}
