//! trustd: the daemon. `run` enforces the last-good policy, keeps it enforced, and serves
//! `org.enigm.Trust1` on the system bus; `apply` is the early-boot one-shot. The daemon
//! process itself (confinement, lockdown, threads, supervision) is
//! [`trustd::daemon::process`].

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};

use trustd::Paths;
use trustd::audit::Actor;
use trustd::config::Config;
use trustd::daemon::process::{self, Outcome, RunOptions};
use trustd::daemon::{Device, DeviceError};
use trustd::netfilter::NftBackend;

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
            let config = Config::load(&paths).unwrap_or_else(|e| {
                tracing::error!(
                    "configuration not read ({e}): the default nft deadline and table \
                     ownership apply"
                );
                Config::default()
            });
            let mut backend = NftBackend::new(nft)
                .with_deadline(Duration::from_millis(config.nft_timeout_ms))
                .with_intel_table_owned(config.intel_table_owned);
            let mut dev = match Device::open(&paths, Actor::this_process()) {
                Ok(d) => d,
                Err(e) => return lockdown(&mut backend, &e),
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
            let opts = RunOptions {
                nft,
                check_interval_ms,
                bus,
                confine,
                default_tpm_device,
            };
            Ok(match process::run(&paths, opts)? {
                Outcome::Stopped => ExitCode::SUCCESS,
                Outcome::BusLost => ExitCode::from(3),
                Outcome::Lockdown { digest, why } => {
                    println!("enforcing lockdown (ruleset {digest}): {why}");
                    ExitCode::from(1)
                }
            })
        }
    }
}

/// Without a trust root or state trustd cannot verify anything: put lockdown (no bootstrap
/// allowlist, since no policy can be trusted) in place and say why. Exit 1.
fn lockdown(backend: &mut NftBackend, why: &DeviceError) -> Result<ExitCode> {
    let digest = process::lockdown::apply(backend)?;
    println!(
        "enforcing lockdown (ruleset {digest}): {}",
        trustd::error_chain(why)
    );
    Ok(ExitCode::from(1))
}
