//! trustd: the daemon. At this stage it loads and checks the device's state, records the
//! load in the audit log, and reports it; the event loop builds on [`trustd::daemon::Device`].

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use trustd::Paths;
use trustd::audit::Actor;
use trustd::daemon::{Device, DeviceError};
use trustd::netfilter::NftBackend;

#[derive(Parser, Debug)]
#[command(name = "trustd", version, about = "The trust agent of Enigm OS")]
struct Cli {
    /// Root prefix of every file trustd uses (/ on a device).
    #[arg(long, default_value = "/", global = true)]
    prefix: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Load the trust root, the state and the audit log; report what was found.
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
    /// Enforce, then keep enforcing: every interval, check that the kernel still holds the
    /// ruleset and put it back (audited) if not. SIGTERM stops without removing anything;
    /// SIGHUP reloads the state and re-enforces.
    Run {
        /// The nft binary.
        #[arg(long, default_value = "nft")]
        nft: PathBuf,
        /// How often to check for drift, in milliseconds.
        #[arg(long, default_value_t = 1000)]
        check_interval_ms: u64,
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
            let mut backend = NftBackend::new(nft);
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
                Ok(n) => println!("blocklists: {n} entries"),
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
        } => run_daemon(&paths, NftBackend::new(nft), check_interval_ms),
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

fn run_daemon(paths: &Paths, mut backend: NftBackend, interval_ms: u64) -> Result<ExitCode> {
    let me = Actor::this_process;
    let mut dev = match Device::open(paths, me()) {
        Ok(d) => d,
        Err(e) => return lockdown_without_state(&mut backend, &e),
    };
    let e = dev.enforce(&mut backend, me())?;
    tracing::info!("enforcing {} (ruleset {})", e.mode, e.digest);
    // Link changes arrive on their own thread; the loop below picks them up.
    let (links_tx, links_rx) = std::sync::mpsc::channel();
    match trustd::sys::netlink::dump_links() {
        Ok(links) => dev.set_links(&links),
        Err(err) => tracing::warn!("reading links: {err}"),
    }
    match trustd::sys::netlink::LinkWatcher::open() {
        Ok(w) => {
            std::thread::spawn(move || {
                while let Ok(events) = w.next() {
                    if links_tx.send(events).is_err() {
                        break;
                    }
                }
            });
        }
        Err(err) => tracing::warn!("watching links: {err}"),
    }
    tracing::info!("network: {}", dev.network_status());
    if let Err(err) = dev.enforce_intel(&mut backend, me()) {
        tracing::error!("blocklists not updated: {err}");
    }
    let interval = std::time::Duration::from_millis(interval_ms.max(50));
    loop {
        match trustd::sys::wait_signal(interval) {
            Some(trustd::sys::Signal::Stop) => {
                dev.audit().append(
                    trustd::audit::Entry::new("trustd.stop", trustd::audit::Outcome::Ok, me())
                        .reason("stopped by signal; enforcement stays in the kernel"),
                )?;
                return Ok(ExitCode::SUCCESS);
            }
            Some(trustd::sys::Signal::Reload) => {
                drop(dev);
                dev = Device::open(paths, me())?;
                dev.enforce(&mut backend, me())?;
                if let Ok(links) = trustd::sys::netlink::dump_links() {
                    dev.set_links(&links);
                }
                if let Err(err) = dev.enforce_intel(&mut backend, me()) {
                    tracing::error!("blocklists not updated: {err}");
                }
            }
            None => {
                if let Some(drift) = dev.check_drift(&mut backend, me())? {
                    tracing::warn!("enforcement drift repaired: {drift}");
                }
            }
        }
        let events: Vec<_> = links_rx.try_iter().flatten().collect();
        if !events.is_empty()
            && let Some(status) = dev.links_changed(&events, me())?
        {
            tracing::info!("network: {status}");
        }
    }
}
