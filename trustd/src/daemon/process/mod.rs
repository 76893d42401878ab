//! The daemon process around the [`Engine`]: what `trustd run` starts, in order, and how it
//! stops.
//!
//! [`run`] opens the device (or puts [`lockdown`] in place when its files do not open),
//! attaches the TPM, confines trustd itself ([`confine`]), starts the engine on a thread of
//! its own, the signal, link and nftables-event threads, serves `org.enigm.Trust1` on the bus
//! and the private socket, and watches both halves for the service manager's watchdog
//! ([`supervise::supervise`]).
//! Enforcement never depends on the bus: the engine keeps its own drift timer.

pub mod confine;
pub mod lockdown;
pub mod supervise;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::Paths;
use crate::audit::Actor;
use crate::config::{Config, TpmChoice};
use crate::daemon::engine::Reconfigure;
use crate::daemon::watchdog::{Timing, status_line};
use crate::daemon::{Command, Device, DeviceError, Engine, Heartbeat, RoleGroups};
use crate::dbus::Gate;
use crate::netfilter::{EnforceError, NftBackend};
use crate::sys::NotifyState;
use crate::sys::netlink::LinkUpdate;
use crate::timefmt::Timestamp;

use supervise::{notify, reload_notified, report_status, supervise};

/// What `trustd run` was given on its command line.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The nft binary (each run is killed at trustd.json's `nft_timeout_ms`).
    pub nft: PathBuf,
    /// The drift check interval in milliseconds (default: trustd.json's).
    pub check_interval_ms: Option<u64>,
    /// The bus to serve on (default: the system bus).
    pub bus: Option<String>,
    /// Confine trustd with Landlock ([`confine::confine_self`]) once its state is loaded.
    pub confine: bool,
    /// The TPM device to use when trustd.json names none, if the node exists.
    pub default_tpm_device: Option<PathBuf>,
}

/// How [`run`] ended, short of an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Stopped by SIGTERM; enforcement stays in the kernel. Exit 0.
    Stopped,
    /// The bus connection was lost: stopped so that the service manager restarts trustd.
    /// Exit 3.
    BusLost,
    /// The device's files did not open (`why`): lockdown (ruleset `digest`) is in force and
    /// nothing is served. Exit 1.
    Lockdown {
        /// The digest of the lockdown ruleset the kernel holds.
        digest: String,
        /// Why the device's files did not open.
        why: String,
    },
}

/// Why [`run`] failed. Whatever the kernel held stays in force.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The device's files opened but the engine failed (a command, the audit log, nft).
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// The lockdown could not be put in place.
    #[error(transparent)]
    Lockdown(#[from] EnforceError),
    /// A thread or a runtime could not be started.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The bus service could not be started.
    #[error("serving org.enigm.Trust1 on the bus")]
    Serve(#[source] zbus::Error),
    /// The engine thread ended without saying how.
    #[error("the engine thread ended without a result")]
    EngineGone,
}

/// Who holds which role, from the configuration, and the configuration. A configuration that
/// cannot be read is an error (the caller leaves only uid 0 as admin, never a guess); a
/// group that does not exist is logged.
///
/// # Errors
/// trustd.json could not be read or parsed (its reason as text).
pub fn role_groups(paths: &Paths) -> Result<(RoleGroups, Config), String> {
    let c = Config::load(paths).map_err(|e| e.to_string())?;
    let groups = RoleGroups {
        admin: c.admin_group.resolve(),
        setup: c.setup_group.resolve(),
    };
    for (role, g, r) in [
        ("admin", groups.admin, &c.admin_group),
        ("setup", groups.setup, &c.setup_group),
    ] {
        if g.is_none() {
            tracing::warn!(
                "group {r:?} for the {role} role does not exist: nobody holds it through a group"
            );
        }
    }
    Ok((groups, c))
}

/// Open the TPM at `tcti`, export its public keys beside the device key and attach it (or
/// record why not: posture says so, reports are signed by the software key only).
fn attach_tpm(
    paths: &Paths,
    dev: &mut Device,
    tcti: &str,
    confine: Option<&std::path::Path>,
) -> Option<Result<String, String>> {
    use crate::tpm::Tpm as _;
    let mut confined = None;
    match crate::tpm::EsapiTpm::open(tcti, paths.tpm_ak_blob()) {
        Ok(mut tpm) => {
            // The TPM's thread exists before trustd confines itself: it confines itself now,
            // with the same profile (its device or socket is already open).
            if let Some(nft) = confine {
                let (paths, nft) = (paths.clone(), nft.to_owned());
                confined = Some(tpm.confine_thread(move || confine::confine_self(&paths, &nft)));
            }
            if let Err(e) = tpm.identity().export(&paths.state_dir()) {
                tracing::warn!("exporting the TPM's public keys: {e}");
            }
            match dev.attach_tpm(Box::new(tpm)) {
                Ok(()) => tracing::info!("TPM at {tcti}: measurements and quotes in use"),
                Err(e) => {
                    tracing::error!("TPM at {tcti} not in use: {e}");
                    dev.tpm_unavailable(e.to_string());
                }
            }
        }
        Err(e) => {
            tracing::error!("TPM at {tcti} not in use: {e}");
            dev.tpm_unavailable(e.to_string());
        }
    }
    confined
}

/// `trustd run`: enforce, serve `org.enigm.Trust1`, keep enforcing until SIGTERM or a lost
/// bus connection. Call it with the signals blocked ([`crate::sys::block_signals`]) and
/// before any other thread exists (confinement applies to the threads started after it).
///
/// # Errors
/// See [`RunError`]; in every case the ruleset in the kernel stays.
pub fn run(paths: &Paths, opts: RunOptions) -> Result<Outcome, RunError> {
    let RunOptions {
        nft,
        check_interval_ms: interval_ms,
        bus,
        confine,
        default_tpm_device,
    } = opts;
    let confine = confine.then(|| nft.clone());
    let me = Actor::this_process;
    // A configuration that cannot be read is not a reason to stop enforcing: trustd runs
    // with the built-in defaults and only uid 0 as admin, and posture says why (degraded,
    // audited once the device is open).
    let (groups, config, config_fault) = match role_groups(paths) {
        Ok((groups, config)) => (groups, config, None),
        Err(e) => {
            tracing::error!("configuration not read ({e}): only uid 0 holds the admin role");
            (RoleGroups::default(), Config::default(), Some(e))
        }
    };
    let mut backend = NftBackend::new(nft)
        .with_deadline(Duration::from_millis(config.nft_timeout_ms))
        .with_intel_table_owned(config.intel_table_owned);
    let opts = crate::audit::Options {
        max_segment_bytes: config.audit_segment_bytes,
    };
    let mut dev = match Device::open_with(paths, me(), opts) {
        Ok(d) => d,
        Err(e) => {
            let digest = lockdown::apply(&mut backend)?;
            return Ok(Outcome::Lockdown {
                digest,
                why: crate::error_chain(&e),
            });
        }
    };
    dev.set_config_fault(config_fault, me());
    // The TPM before confinement: the TCTI library is loaded and the device opened now.
    let mut tpm_thread = None;
    match config.tpm_choice(default_tpm_device.as_deref(), paths.tpm_ak_blob().exists()) {
        TpmChoice::Use(tcti) => tpm_thread = attach_tpm(paths, &mut dev, &tcti, confine.as_deref()),
        TpmChoice::Off(why) => {
            tracing::info!("{why}: evidence is signed by the software key only");
        }
        TpmChoice::Missing(why) => {
            tracing::error!("TPM missing: {why}");
            dev.tpm_unavailable(why);
        }
    }
    match crate::sys::netlink::dump_links() {
        Ok(links) => dev.set_links(&links),
        Err(err) => tracing::warn!("reading links: {err}"),
    }
    if let Some(nft) = &confine {
        match confine::confine_self(paths, nft) {
            Ok(how) => {
                let how = confine::with_tpm_thread(how, tpm_thread);
                tracing::info!("confined: {how}");
                dev.set_confinement(how);
            }
            Err(e) => tracing::error!("not confined: {e}"),
        }
    }
    // Subscribed before the first apply, so that no change after it goes unseen.
    let table_watcher = crate::sys::nft_events::TableWatcher::open(
        crate::netfilter::TABLE,
        crate::netfilter::INTEL_TABLE,
    );
    match &table_watcher {
        Ok(_) => dev.set_table_events(true),
        Err(err) => tracing::warn!("watching nftables changes: {err}; periodic checks only"),
    }
    let config_paths = paths.clone();
    let reconfigure: Reconfigure = Box::new(move || role_groups(&config_paths).map(|g| g.0));
    let (mut engine, posture_rx) =
        Engine::start(dev, backend, groups, reconfigure, Timestamp::now)?;
    engine.set_checkpoint_every(config.checkpoint_every);
    let (lanes, queues) = crate::daemon::queues();
    let gate = Gate::default();
    let refusals = gate.clone();
    engine.set_busy_source(Box::new(move || refusals.take_refusals()));
    let groups = engine.groups();
    // The watchdog's timeout sets the ping period and caps the drift interval.
    let timing = Timing::new(
        crate::sys::watchdog_timeout(),
        Duration::from_millis(interval_ms.unwrap_or(config.check_interval_ms)),
    );
    let interval = timing.drift;
    if let Some(w) = timing.watchdog {
        tracing::info!(
            "watchdog timeout {w:?}: ping every {:?} while the engine and the bus service work; drift check every {interval:?}",
            timing.ping
        );
    }
    let heartbeat = Arc::new(Heartbeat::default());

    // The engine on a thread and a runtime of its own: it checks for drift on its own timer,
    // so enforcement is maintained whatever the bus and the callers do.
    let (done_tx, done_rx) = oneshot::channel::<Result<(), RunError>>();
    let beat = heartbeat.clone();
    std::thread::Builder::new()
        .name("engine".into())
        .spawn(move || {
            let r = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .map_err(RunError::from)
                .and_then(|rt| Ok(rt.block_on(engine.run(queues, interval, beat))?));
            let _ = done_tx.send(r);
        })?;

    // Signals: blocked in every thread, taken here.
    let sig_tx = lanes.control.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            loop {
                let cmd = match crate::sys::wait_signal(Duration::from_secs(3600)) {
                    Some(crate::sys::Signal::Stop) => {
                        notify(&[
                            NotifyState::Stopping,
                            NotifyState::Status("stopping; enforcement stays in the kernel"),
                        ]);
                        Command::Stop("stopped by signal")
                    }
                    Some(crate::sys::Signal::Reload) => reload_notified(),
                    None => continue,
                };
                if sig_tx.blocking_send(cmd).is_err() {
                    break;
                }
            }
        })?;

    // Link changes from rtnetlink.
    match crate::sys::netlink::LinkWatcher::open() {
        Ok(w) => {
            let link_tx = lanes.control.clone();
            std::thread::Builder::new()
                .name("links".into())
                .spawn(move || {
                    // Never ends on an error: an overrun or a failed receive resubscribes
                    // and resyncs every link (audited as network.links).
                    w.run(|update| {
                        let cmd = match update {
                            LinkUpdate::Events(events) => Command::Links(events),
                            LinkUpdate::Resync { links, why, at } => {
                                Command::LinksResynced { links, why, at }
                            }
                        };
                        link_tx.blocking_send(cmd).is_ok()
                    });
                })?;
        }
        Err(err) => tracing::warn!("watching links: {err}"),
    }

    // Changes to trustd's tables, from nftables notifications (independent of the bus).
    if let Ok(w) = table_watcher {
        let nft_tx = lanes.control.clone();
        std::thread::Builder::new()
            .name("nft-events".into())
            .spawn(move || w.run(|c| nft_tx.blocking_send(Command::TablesChanged(c)).is_ok()))?;
    }

    let mut status_rx = posture_rx.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let stop_tx = lanes.control.clone();
    let private_socket = paths.private_socket();
    let result = rt.block_on(async move {
        let service = crate::dbus::serve(bus.as_deref(), lanes, groups, gate, posture_rx)
            .await
            .map_err(RunError::Serve)?;
        tracing::info!("serving {} on the bus", crate::dbus::BUS_NAME);
        // The private socket for root: the same service without the bus daemon in between.
        // Without it root's trustctl falls back to the bus, so its failure is not fatal.
        let private_path = private_socket.clone();
        let private = std::fs::create_dir_all(private_path.parent().unwrap_or(&private_path))
            .and_then(|()| service.serve_private(&private_path));
        let private = match private {
            Ok(task) => {
                tracing::info!(
                    "serving {} on {}",
                    crate::dbus::BUS_NAME,
                    private_path.display()
                );
                Some(task)
            }
            Err(e) => {
                tracing::warn!(
                    "the private socket {}: {e}; root's calls go over the bus",
                    private_path.display()
                );
                None
            }
        };
        let status = status_line(&status_rx.borrow_and_update());
        notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
        let reporter = tokio::spawn(report_status(status_rx, status));
        let lost = Arc::new(AtomicBool::new(false));
        let supervisor = tokio::spawn(supervise(service, heartbeat, timing, stop_tx, lost.clone()));
        let r = done_rx.await.map_err(|_| RunError::EngineGone)?;
        supervisor.abort();
        reporter.abort();
        if let Some(task) = private {
            task.abort();
        }
        Ok::<_, RunError>((r, lost.load(Ordering::SeqCst)))
    })?;
    rt.shutdown_timeout(Duration::from_millis(200));
    let (result, lost) = result;
    result?;
    Ok(if lost {
        Outcome::BusLost
    } else {
        Outcome::Stopped
    })
}
