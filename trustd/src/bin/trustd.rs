//! trustd: the daemon. `run` enforces the last-good policy, keeps it enforced, and serves
//! `org.enigm.Trust1` on the system bus; `apply` is the early-boot one-shot.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use std::time::Duration;

use anyhow::Context;
use std::sync::Arc;
use tokio::sync::oneshot;
use trustd::Paths;
use trustd::audit::Actor;
use trustd::config::{Config, TpmChoice};
use trustd::daemon::engine::Reconfigure;
use trustd::daemon::watchdog::Timing;
use trustd::daemon::{Command, Device, DeviceError, Engine, Heartbeat, RoleGroups};
use trustd::dbus::Gate;
use trustd::netfilter::NftBackend;
use trustd::sys::NotifyState;
use trustd::sys::netlink::LinkUpdate;
use trustd::timefmt::Timestamp;

#[derive(Parser, Debug)]
#[command(name = "trustd", version, about = "The trust agent of Enigm OS")]
pub(crate) struct Cli {
    /// Root prefix of every file trustd uses (/ on a device).
    #[arg(long, default_value = "/", global = true)]
    prefix: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Open the trust root, the state and the audit log as trustd does and report what was
    /// found. Not read-only: opening records itself in the audit log (and repairs a torn
    /// tail, records damage) like every start; run it as the directories' owner.
    Check,
    /// Put the last-good policy (or lockdown) into the kernel, confirm it, and exit: what
    /// the early-boot unit runs. Exit 0: the policy is in force; 1: lockdown is in force
    /// instead; 3: nothing could be applied (the ruleset already there, e.g. the static
    /// lockdown, stays).
    Apply {
        /// The nft binary.
        #[arg(long, default_value = "nft")]
        nft: PathBuf,
    },
    /// Enforce, serve org.enigm.Trust1 on the bus, and keep enforcing: every interval,
    /// check that the kernel still holds the ruleset and put it back (audited) if not.
    /// SIGTERM stops without removing anything; SIGHUP reloads configuration and state.
    Run {
        /// The nft binary (each run is killed at trustd.json's `nft_timeout_ms`).
        #[arg(long, default_value = "nft")]
        nft: PathBuf,
        /// How often to check for drift, in milliseconds (default: trustd.json's, or 1000).
        #[arg(long)]
        check_interval_ms: Option<u64>,
        /// The bus to serve on (default: the system bus).
        #[arg(long)]
        bus: Option<String>,
        /// Confine trustd with Landlock once its state is loaded: configuration and system
        /// files read-only, writes only to its state, log and runtime directories, execute
        /// only nft and the dynamic loader.
        #[arg(long)]
        confine: bool,
        /// The TPM device to use when trustd.json names no `tpm`, if the node exists (the
        /// shipped unit passes /dev/tpmrm0, the kernel's resource manager). Without it and
        /// without `tpm` in trustd.json, no TPM is used.
        #[arg(long)]
        default_tpm_device: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    trustd::logging::init("trustd", tracing::Level::INFO);
    // Before any thread exists, so that every thread inherits the mask.
    if let Err(e) = trustd::sys::block_signals() {
        eprintln!("trustd: blocking signals: {e}");
        return ExitCode::from(3);
    }
    let cli = Cli::parse();
    match run(cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("trustd: {}", trustd::error_chain(e.as_ref()));
            ExitCode::from(3)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let paths = Paths::new(&cli.prefix);
    // Every command opens the device's files for writing (at least an audit record): as
    // another user than their owner (root by hand on a packaged device) it would leave files
    // trustd cannot read. Refused before anything is written; the kernel's ruleset stays.
    trustd::files::owner::refuse_foreign_owner(&paths)?;
    match cli.cmd {
        Cmd::Check => {
            let dev = Device::open(&paths, Actor::this_process())?;
            println!(
                "state: {:?}, lifecycle {}",
                dev.condition(),
                dev.state().lifecycle.as_str()
            );
            match dev.policy() {
                Some(p) => println!("policy: serial {} ({})", p.payload().serial, p.digest()),
                None => println!("policy: none (lockdown)"),
            }
            for n in dev.notes() {
                println!("note: {n}");
            }
            let (next, head) = dev.audit().head();
            println!("audit: {next} records, head {head}");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Apply { nft } => {
            let deadline = Config::load(&paths)
                .map(|c| c.nft_timeout_ms)
                .unwrap_or_else(|e| {
                    tracing::error!(
                        "configuration not read ({e}): the default nft deadline applies"
                    );
                    Config::default().nft_timeout_ms
                });
            let mut backend = NftBackend::new(nft).with_deadline(Duration::from_millis(deadline));
            let mut dev = match Device::open(&paths, Actor::this_process()) {
                Ok(d) => d,
                Err(e) => return lockdown_without_state(&mut backend, &e),
            };
            let e = dev.enforce(&mut backend, Actor::this_process())?;
            let code = match &e.fallback {
                None => {
                    println!("enforcing {} (ruleset {})", e.mode, e.digest);
                    ExitCode::SUCCESS
                }
                Some(why) => {
                    println!("enforcing lockdown (ruleset {}): {why}", e.digest);
                    ExitCode::from(1)
                }
            };
            // Blocklists second: the policy table never waits for a large feed.
            match dev.enforce_intel(&mut backend, Actor::this_process()) {
                Ok(n) => {
                    println!("blocklists: {n} entries");
                    if let Some(o) = dev.blocklist_overlaps() {
                        println!("{o}");
                    }
                }
                Err(err) => eprintln!("trustd: blocklists not updated: {err}"),
            }
            if let Some(kib) = trustd::sys::peak_rss_kib() {
                println!("peak RSS {kib} KiB");
            }
            Ok(code)
        }
        Cmd::Run {
            nft,
            check_interval_ms,
            bus,
            confine,
            default_tpm_device,
        } => {
            let confine_nft = confine.then(|| nft.clone());
            run_daemon(
                &paths,
                NftBackend::new(nft),
                check_interval_ms,
                bus,
                confine_nft,
                default_tpm_device,
            )
        }
    }
}

/// Without a trust root or state trustd cannot verify anything: put lockdown (no bootstrap
/// allowlist, since no policy can be trusted) in place and say why. Exit 1.
fn lockdown_without_state(backend: &mut NftBackend, why: &DeviceError) -> Result<ExitCode> {
    let none = std::collections::BTreeSet::new();
    let e = trustd::policy::effective(
        None,
        trustd::policy::Overlay {
            privacy: true,
            completed_steps: &none,
            lifecycle: trustd::state::Lifecycle::Unknown,
        },
    );
    let digest = trustd::netfilter::apply(backend, &trustd::netfilter::compile(&e))?;
    println!(
        "enforcing lockdown (ruleset {digest}): {}",
        trustd::error_chain(why)
    );
    Ok(ExitCode::from(1))
}

/// Who holds which role, from the configuration. A configuration that cannot be read leaves
/// only uid 0 as admin (never a guess), and says so.
fn role_groups(paths: &Paths) -> Result<(RoleGroups, Config), String> {
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

/// The executable `name` as `PATH` finds it (or `name` itself if it has a slash).
fn which(name: &std::path::Path) -> PathBuf {
    if name.components().count() > 1 {
        return name.to_owned();
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| name.to_owned())
}

/// Landlock for trustd itself (before any other thread exists, so that all inherit it).
fn confine_self(paths: &Paths, nft: &std::path::Path) -> Result<String, String> {
    let s = |p: PathBuf| p.display().to_string();
    let read: Vec<String> = ["/etc", "/usr", "/lib", "/lib64", "/proc"]
        .iter()
        .map(|p| (*p).to_owned())
        .chain([s(paths.config_dir())])
        .collect();
    let log_dir = paths
        .audit_dir()
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_else(|| paths.audit_dir());
    let write = vec![
        s(paths.state_dir()),
        s(log_dir),
        s(paths.runtime_dir()),
        "/dev/null".to_owned(),
    ];
    // nft and the dynamic loader that starts it; its libraries are mapped, not executed.
    let execute = vec![
        s(which(nft)),
        "/lib64/ld-linux-x86-64.so.2".to_owned(),
        "/lib/ld-linux-aarch64.so.1".to_owned(),
    ];
    trustd::launch::landlock::restrict(&read, &write, &execute).map(|c| c.to_string())
}

/// Open the TPM at `tcti`, export its public keys beside the device key and attach it (or
/// record why not: posture says so, reports are signed by the software key only).
fn attach_tpm(paths: &Paths, dev: &mut Device, tcti: &str) {
    use trustd::tpm::Tpm as _;
    match trustd::tpm::EsapiTpm::open(tcti, paths.tpm_ak_blob()) {
        Ok(tpm) => {
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
}

fn run_daemon(
    paths: &Paths,
    backend: NftBackend,
    interval_ms: Option<u64>,
    bus: Option<String>,
    confine: Option<PathBuf>,
    default_tpm_device: Option<PathBuf>,
) -> Result<ExitCode> {
    let me = Actor::this_process;
    let (groups, config) = role_groups(paths).unwrap_or_else(|e| {
        tracing::error!("configuration not read ({e}): only uid 0 holds the admin role");
        (RoleGroups::default(), Config::default())
    });
    let mut backend = backend.with_deadline(Duration::from_millis(config.nft_timeout_ms));
    let opts = trustd::audit::Options {
        max_segment_bytes: config.audit_segment_bytes,
    };
    let mut dev = match Device::open_with(paths, me(), opts) {
        Ok(d) => d,
        Err(e) => return lockdown_without_state(&mut backend, &e),
    };
    // The TPM before confinement: the TCTI library is loaded and the device opened now.
    match config.tpm_choice(default_tpm_device.as_deref(), paths.tpm_ak_blob().exists()) {
        TpmChoice::Use(tcti) => attach_tpm(paths, &mut dev, &tcti),
        TpmChoice::Off(why) => {
            tracing::info!("{why}: evidence is signed by the software key only");
        }
        TpmChoice::Missing(why) => {
            tracing::error!("TPM missing: {why}");
            dev.tpm_unavailable(why);
        }
    }
    match trustd::sys::netlink::dump_links() {
        Ok(links) => dev.set_links(&links),
        Err(err) => tracing::warn!("reading links: {err}"),
    }
    if let Some(nft) = &confine {
        match confine_self(paths, nft) {
            Ok(how) => {
                tracing::info!("confined: {how}");
                dev.set_confinement(how);
            }
            Err(e) => tracing::error!("not confined: {e}"),
        }
    }
    // Subscribed before the first apply, so that no change after it goes unseen.
    let table_watcher = trustd::sys::nft_events::TableWatcher::open(
        trustd::netfilter::TABLE,
        trustd::netfilter::INTEL_TABLE,
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
    let (lanes, queues) = trustd::daemon::queues();
    let gate = Gate::default();
    let refusals = gate.clone();
    engine.set_busy_source(Box::new(move || refusals.take_refusals()));
    let groups = engine.groups();
    // The watchdog's timeout sets the ping period and caps the drift interval.
    let timing = Timing::new(
        trustd::sys::watchdog_timeout(),
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
    let (done_tx, done_rx) = oneshot::channel();
    let beat = heartbeat.clone();
    std::thread::Builder::new()
        .name("engine".into())
        .spawn(move || {
            let r = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|rt| Ok(rt.block_on(engine.run(queues, interval, beat))?));
            let _ = done_tx.send(r);
        })?;

    // Signals: blocked in every thread, taken here.
    let sig_tx = lanes.control.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            loop {
                let cmd = match trustd::sys::wait_signal(Duration::from_secs(3600)) {
                    Some(trustd::sys::Signal::Stop) => {
                        notify(&[
                            NotifyState::Stopping,
                            NotifyState::Status("stopping; enforcement stays in the kernel"),
                        ]);
                        Command::Stop("stopped by signal")
                    }
                    Some(trustd::sys::Signal::Reload) => reload_notified(),
                    None => continue,
                };
                if sig_tx.blocking_send(cmd).is_err() {
                    break;
                }
            }
        })?;

    // Link changes from rtnetlink.
    match trustd::sys::netlink::LinkWatcher::open() {
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
        let service = trustd::dbus::serve(bus.as_deref(), lanes, groups, gate, posture_rx)
            .await
            .context("serving org.enigm.Trust1 on the bus")?;
        tracing::info!("serving {} on the bus", trustd::dbus::BUS_NAME);
        // The private socket for root: the same service without the bus daemon in between.
        // Without it root's trustctl falls back to the bus, so its failure is not fatal.
        let private_path = private_socket.clone();
        let private = std::fs::create_dir_all(private_path.parent().unwrap_or(&private_path))
            .and_then(|()| service.serve_private(&private_path));
        let private = match private {
            Ok(task) => {
                tracing::info!(
                    "serving {} on {}",
                    trustd::dbus::BUS_NAME,
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
        let status = trustd::daemon::watchdog::status_line(&status_rx.borrow_and_update());
        notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
        let reporter = tokio::spawn(report_status(status_rx, status));
        let lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let supervisor = tokio::spawn(supervise(service, heartbeat, timing, stop_tx, lost.clone()));
        let r = done_rx
            .await
            .context("the engine thread ended without a result")?;
        supervisor.abort();
        reporter.abort();
        if let Some(task) = private {
            task.abort();
        }
        anyhow::Ok((r, lost.load(std::sync::atomic::Ordering::SeqCst)))
    })?;
    rt.shutdown_timeout(Duration::from_millis(200));
    let (result, lost) = result;
    result?;
    Ok(if lost {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    })
}

/// Tell the service manager `states`; a failure is logged, never fatal.
fn notify(states: &[NotifyState]) {
    if let Err(e) = trustd::sys::notify(states) {
        tracing::warn!("telling the service manager {states:?}: {e}");
    }
}

/// SIGHUP: `RELOADING=1` (with `MONOTONIC_USEC`, as `Type=notify-reload` wants) now, the
/// reload command for the engine, and `READY=1` once the engine has carried it out.
fn reload_notified() -> Command {
    let now = NotifyState::monotonic_usec_now();
    match &now {
        Ok(t) => notify(&[NotifyState::Reloading, t.clone()]),
        Err(_) => notify(&[NotifyState::Reloading]),
    }
    let (tx, rx) = oneshot::channel();
    // A thread of its own, so that the signal thread stays free to take a SIGTERM while the
    // engine reloads.
    let waiter = std::thread::Builder::new()
        .name("reload-ready".into())
        .spawn(move || {
            if rx.blocking_recv().is_ok() {
                notify(&[NotifyState::Ready]);
            }
        });
    if let Err(e) = waiter {
        tracing::warn!("READY after the reload will not be sent: {e}");
    }
    Command::Reload { done: Some(tx) }
}

/// Keep `STATUS=` in step with posture: its level and worst reason, sent when that text
/// changes. `last` is what was sent with `READY=1`.
async fn report_status(
    mut posture: tokio::sync::watch::Receiver<trustd::posture::Posture>,
    mut last: String,
) {
    while posture.changed().await.is_ok() {
        let status = trustd::daemon::watchdog::status_line(&posture.borrow_and_update());
        if status != last {
            notify(&[NotifyState::Status(&status)]);
            last = status;
        }
    }
}

/// Feed the service manager's watchdog only while both halves of trustd work: the engine
/// finished a drift check recently, and the service answers a property read sent through the
/// bus. Pings go at half the watchdog timeout (see [`Timing`]), and only if `$WATCHDOG_PID`
/// is unset or ours. If the bus connection is lost, stop (exit 3) so that the service
/// manager restarts trustd; enforcement stays in the kernel meanwhile.
async fn supervise(
    service: trustd::dbus::Service,
    heartbeat: Arc<Heartbeat>,
    timing: Timing,
    stop: tokio::sync::mpsc::Sender<Command>,
    lost: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut tick = tokio::time::interval(timing.ping);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last_ping = tokio::time::Instant::now();
    let mut healthy = true;
    loop {
        tick.tick().await;
        // Without the bus, posture and commands are unreachable: stop so that the service
        // manager restarts trustd. Any answer, even an error, means the connection is there;
        // no answer in time is not "lost" (the watchdog decides that).
        if last_ping.elapsed() >= Duration::from_secs(5) {
            last_ping = tokio::time::Instant::now();
            let ping = service.conn.call_method(
                Some("org.freedesktop.DBus"),
                "/org/freedesktop/DBus",
                Some("org.freedesktop.DBus"),
                "GetId",
                &(),
            );
            if let Ok(Err(e)) = tokio::time::timeout(Duration::from_secs(5), ping).await
                && !matches!(e, zbus::Error::MethodError(..) | zbus::Error::FDO(_))
            {
                tracing::error!("the bus connection is lost ({e}): stopping");
                lost.store(true, std::sync::atomic::Ordering::SeqCst);
                notify(&[
                    NotifyState::Stopping,
                    NotifyState::Status("the bus connection was lost: restarting"),
                ]);
                let _ = stop
                    .send(Command::Stop("the bus connection was lost"))
                    .await;
                return;
            }
        }
        // An engine waiting for a child (nft) still within its deadline is busy with bounded
        // work, not wedged: a hung nft is killed at its deadline and reported, and must not
        // get trustd itself killed (and its retries and posture lost) over and over.
        let engine_ok = heartbeat.age().is_some_and(|a| a <= timing.engine_bound)
            || trustd::sys::child::waiting_within_deadline();
        let bus_ok = service.answers(timing.answer_bound).await;
        if engine_ok && bus_ok {
            if !healthy {
                tracing::info!("the engine and the bus service answer again");
            }
            healthy = true;
            if timing.watchdog.is_some() {
                notify(&[NotifyState::Watchdog]);
            }
        } else if healthy {
            healthy = false;
            tracing::error!(
                "not feeding the watchdog: engine {}, bus service {}",
                if engine_ok { "turns" } else { "wedged" },
                if bus_ok { "answers" } else { "does not answer" }
            );
        }
    }
}
