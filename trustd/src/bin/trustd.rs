//! trustd: the daemon. At this stage it loads and checks the device's state, records the
//! load in the audit log, and reports it; the event loop builds on [`trustd::daemon::Device`].

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use trustd::Paths;
use trustd::audit::Actor;
use trustd::daemon::Device;
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
}

fn main() -> ExitCode {
    trustd::logging::init("trustd", tracing::Level::INFO);
    let cli = Cli::parse();
    match run(cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("trustd: {e:#}");
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
            let mut dev = Device::open(&paths, Actor::this_process())?;
            let mut backend = NftBackend::new(nft);
            let e = dev.enforce(&mut backend, Actor::this_process())?;
            match &e.fallback {
                None => {
                    println!("enforcing {} (ruleset {})", e.mode, e.digest);
                    Ok(ExitCode::SUCCESS)
                }
                Some(why) => {
                    println!("enforcing lockdown (ruleset {}): {why}", e.digest);
                    Ok(ExitCode::from(1))
                }
            }
        }
    }
}
