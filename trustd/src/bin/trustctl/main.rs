//! trustctl: the admin CLI. Keys, signing and verification; the running daemon over the bus
//! (status, watch, privacy, policy, intel, setup, audit); offline loading and log checks.
//!
//! Exit codes: 0 done; 1 refused (the input, signature or log is bad, or the caller may not
//! do this); 2 usage; 3 the system failed (a file, the bus or the daemon).
//!
//! [`cli`] is the command line and its split: each command either runs here
//! ([`run_offline`]: [`keys`], [`files`], [`audit`], [`evidence`]) or is one request to the
//! daemon ([`bus`]). xtask compiles this file for the man pages and completions, so the
//! modules refer to each other through `super::`, never `crate::`, and use only crates
//! xtask has.

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use serde_json::json;

/// `println!` that never panics: stdout closed early (`trustctl status | head -1`) or full
/// (`> /dev/full`) ends trustctl with exit 3 (the system failed) and a line on stderr,
/// inside the exit-code rule, instead of a panic (exit 101).
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut stdout = std::io::stdout().lock();
        if let Err(e) = writeln!(stdout, $($arg)*).and_then(|()| stdout.flush()) {
            if e.kind() != std::io::ErrorKind::BrokenPipe {
                eprintln!("trustctl: writing standard output: {e}");
            }
            std::process::exit(3);
        }
    }};
}

mod audit;
mod bus;
mod cli;
mod evidence;
mod files;
mod keys;
mod output;

pub(crate) use cli::Cli;
use cli::{Action, Offline};
use output::Refused;

fn main() -> ExitCode {
    trustd::logging::init_cli("trustctl");
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // Usage errors exit 2; with --json they are one JSON object too. Help and version
        // print as usual (exit 0).
        Err(e) if e.use_stderr() && std::env::args_os().any(|a| a == "--json") => {
            // clap's whole message on one line, less the usage and help pointers: the first
            // line alone did not name the missing argument, and dropped the typo tip.
            let text = e.to_string();
            let reason = text
                .lines()
                .map(str::trim)
                .filter(|l| {
                    !l.is_empty()
                        && !l.starts_with("Usage:")
                        && !l.starts_with("For more information")
                })
                .collect::<Vec<_>>()
                .join(" ");
            let reason = reason.trim_start_matches("error: ");
            out!(
                "{}",
                json!({"ok": false, "error": "usage", "reason": reason})
            );
            return ExitCode::from(2);
        }
        Err(e) => e.exit(),
    };
    let json_out = cli.json;
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            let refused = is_refusal(&e);
            if json_out {
                out!(
                    "{}",
                    json!({"ok": false, "error": if refused {"refused"} else {"system"}, "reason": trustd::error_chain(e.as_ref())})
                );
            } else {
                eprintln!("trustctl: {}", trustd::error_chain(e.as_ref()));
            }
            ExitCode::from(if refused { 1 } else { 3 })
        }
    }
}

/// Whether an error is the input's fault (exit 1): a [`Refused`], or a key file that was read
/// but is not a key of the expected kind (a public key given as a private one, a damaged or
/// foreign file). A key file that cannot be read stays a system failure (3).
fn is_refusal(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.is::<Refused>()
            || matches!(
                c.downcast_ref::<trustd::bundle::KeyFileError>(),
                Some(trustd::bundle::KeyFileError::Invalid { .. })
            )
    })
}

fn run(cli: Cli) -> Result<ExitCode> {
    let j = cli.json;
    let route = bus::Route::of(&cli);
    match cli.cmd.split() {
        Action::Offline(cmd) => run_offline(j, cmd),
        Action::Bus(op) => bus::run(j, &route, op),
    }
}

/// The commands that run here, from files, without the daemon.
fn run_offline(j: bool, cmd: Offline) -> Result<ExitCode> {
    match cmd {
        Offline::Keygen(a) => keys::keygen(j, &a.out),
        Offline::TrustRoot(a) => keys::trust_root(j, &a),
        Offline::Sign(a) => keys::sign(j, a),
        Offline::DeviceCommand(a) => keys::make_command(j, a),
        Offline::Verify(a) => files::verify_cmd(j, &a.trust_root, a.installed_serial, &a.envelope),
        Offline::Load(a) => files::load(j, &a.prefix, &a.envelope),
        Offline::State(a) => files::state(j, &a.prefix),
        Offline::AuditVerify { prefix } => audit::audit_verify(j, &prefix),
        Offline::AuditTail { prefix, n } => audit::audit_tail(j, &prefix, n),
        Offline::AuditExport(a) => audit::audit_export(j, &a.prefix, a.out.as_deref()),
        Offline::AuditProve(a) => audit::audit_prove(j, a.seq, &a.checkpoint, &a.key, &a.prefix),
        Offline::AuditConsistency(a) => {
            audit::audit_consistency(j, &a.old, a.new.as_deref(), &a.key, &a.prefix)
        }
        Offline::MakeCredential(a) => evidence::make_credential(j, a),
        Offline::PostureVerify(a) => evidence::posture_verify(j, a),
    }
}
