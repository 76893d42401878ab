//! trustctl: the admin CLI. Keys, signing and verification; the running daemon over the bus
//! (status, watch, privacy, policy, intel, setup, audit); offline loading and log checks.
//!
//! Exit codes: 0 done; 1 refused (the input, signature or log is bad, or the caller may not
//! do this); 2 usage; 3 the system failed (a file, the bus or the daemon).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow};
use clap::{Parser, Subcommand};
use serde_json::json;

use trustd::Paths;
use trustd::audit::{Actor, read_records};
use trustd::bundle::{
    Envelope, Payload, PrivateKeyFile, PublicKeyFile, RoleKeys, Roles, TrustKey, TrustRoot,
    Verified, VerifyError, generate_key, key_id, sign_envelope, verify, verify_rotation,
};
use trustd::daemon::{Device, DeviceError};
use trustd::policy::{IntelFeed, LifecycleCommand, Policy};
use trustd::state::{StateStore, load_trust_root};
use trustd::timefmt::Timestamp;

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

/// The one exit-code rule of every command, shown in `--help`.
const EXIT_CODES: &str = "Exit codes (every command): 0 done; 1 refused: the input or the request is \
invalid, not signed as required, or not allowed (the reason is printed, nothing changed); \
2 usage: the command line is wrong; 3 the system failed: a file could not be read or \
written, trustd is not reachable or failed.\n\nWith --json every command prints one JSON \
object per line: results and errors carry \"ok\" (errors also \"error\": \"refused\", \
\"usage\" or \"system\", and \"reason\"); `audit tail` prints the records themselves and \
`audit export` writes them as JSON lines.";

#[derive(Parser, Debug)]
#[command(
    name = "trustctl",
    version,
    about = "Admin CLI of trustd, the trust agent of Enigm OS",
    after_help = EXIT_CODES
)]
pub(crate) struct Cli {
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// The bus trustd serves on (default: the system bus). Given, commands go over this bus
    /// and never over the private socket.
    #[arg(long, global = true)]
    bus: Option<String>,
    /// trustd's private socket: commands go over it (peer to peer, without the bus daemon)
    /// and nowhere else. Without this (and without --bus), root uses /run/trustd/private when
    /// it is there and the system bus otherwise; $TRUSTCTL_PRIVATE may name the socket, or be
    /// `off` for the bus. `watch` always uses the bus.
    #[arg(long, global = true, value_name = "PATH")]
    private: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Make an ed25519 key pair: OUT.key (0600) and OUT.pub.
    Keygen {
        /// Path prefix of the two files.
        #[arg(long)]
        out: PathBuf,
    },
    /// Make a trust root from public key files.
    TrustRoot {
        /// ROLE=THRESHOLD:KEY.pub[,KEY.pub...] for each of root, policy, intel, command.
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        /// Its serial.
        #[arg(long, default_value_t = 1)]
        serial: u64,
        /// Expiry (RFC 3339 UTC); default one year from now.
        #[arg(long)]
        expires: Option<String>,
        /// Output file (stdout if absent).
        #[arg(short, long)]
        out: Option<PathBuf>,
    },
    /// Sign a payload file into a DSSE envelope with one or more keys.
    Sign {
        /// policy, intel, command, trust-root, or a full payloadType.
        #[arg(long = "type")]
        kind: String,
        /// Private key files (each signs once).
        #[arg(long = "key", required = true)]
        keys: Vec<PathBuf>,
        /// The payload (JSON) to sign.
        payload: PathBuf,
        /// Output file (stdout if absent).
        #[arg(short, long)]
        out: Option<PathBuf>,
    },
    /// Check an envelope against a trust root; exit 0 if valid, 1 with the reason if not.
    Verify {
        /// Trust root file (plain JSON as provisioned in /etc/trustd).
        #[arg(long)]
        trust_root: PathBuf,
        /// The serial the device holds for the envelope's role (rollback check).
        #[arg(long, default_value_t = 0)]
        installed_serial: u64,
        /// The envelope.
        envelope: PathBuf,
    },
    /// Verify an envelope and make it the device's last good one, offline (trustd stopped).
    Load {
        /// Root prefix of the device's files (/ on a device).
        #[arg(long, default_value = "/")]
        prefix: PathBuf,
        /// The envelope (policy, intel feed or trust-root rotation).
        envelope: PathBuf,
    },
    /// Show the persisted state, and how it loads.
    State {
        /// Root prefix of the device's files.
        #[arg(long, default_value = "/")]
        prefix: PathBuf,
    },
    /// The audit log: through the daemon, or offline with --prefix.
    Audit {
        #[command(subcommand)]
        cmd: AuditCmd,
    },
    /// The device's posture, from the daemon.
    Status,
    /// Follow posture changes (PropertiesChanged) and print each one.
    Watch {
        /// Stop after this many changes.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Privacy mode: on (anyone) or off (admins, or users where the policy allows).
    Privacy {
        /// on or off.
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
    /// The policy, through the daemon.
    Policy {
        #[command(subcommand)]
        cmd: PolicyCmd,
    },
    /// Blocklists, through the daemon.
    Intel {
        #[command(subcommand)]
        cmd: IntelCmd,
    },
    /// Setup steps, through the daemon.
    Setup {
        #[command(subcommand)]
        cmd: SetupCmd,
    },
    /// Device lifecycle: make signed commands, send them, read handles.
    Device {
        #[command(subcommand)]
        cmd: DeviceCmd,
    },
    /// Ask the daemon whether an app may start.
    Launch {
        #[command(subcommand)]
        cmd: LaunchCmd,
    },
    /// Signed posture reports: ask the daemon for one, check one offline.
    Posture {
        #[command(subcommand)]
        cmd: PostureCmd,
    },
    /// TPM credential activation: a verifier makes a challenge offline for the device's
    /// attestation key and endorsement key; the device's TPM answers it.
    Tpm {
        #[command(subcommand)]
        cmd: TpmCmd,
    },
}

#[derive(Subcommand, Debug)]
enum TpmCmd {
    /// Make a credential challenge offline (no TPM: TPM2_MakeCredential in software, TPM 2.0
    /// Part 1 §24) for the attestation key named in --ak-name under the endorsement key
    /// --ek: only the TPM holding that EK, with that AK loaded, can recover SECRET.
    MakeCredential {
        /// The device's endorsement key (`tpm-ek.pem`, SPKI PEM, ECC P-256).
        #[arg(long)]
        ek: PathBuf,
        /// The attestation key's public area (`tpm-ak.pub`, the marshalled TPMT_PUBLIC):
        /// checked to be a restricted signing key fixed to its TPM, and named from it.
        #[arg(long, required_unless_present = "ak_name", conflicts_with = "ak_name")]
        ak_public: Option<PathBuf>,
        /// With --ak-public: the AK public key the verifier will check quotes with
        /// (`tpm-ak.pem`); refused unless it is the key of that public area.
        #[arg(long, requires = "ak_public")]
        ak_pem: Option<PathBuf>,
        /// The attestation key's TPM name instead (the file `tpm-ak.name`, or its hex), as
        /// `tpm2_makecredential -n` takes it: nothing ties that name to a public key then.
        #[arg(long)]
        ak_name: Option<String>,
        /// A file holding the secret (1 to 32 bytes) the verifier will compare.
        #[arg(long)]
        secret: PathBuf,
        /// `json` (the project's challenge) or `tpm2-tools` (what `tpm2_activatecredential -i`
        /// reads).
        #[arg(long, default_value = "json", value_parser = ["json", "tpm2-tools"])]
        format: String,
        /// Output file (stdout if absent).
        #[arg(short, long)]
        out: Option<PathBuf>,
    },
    /// Have the daemon's TPM answer a challenge (either form; admins): writes the secret
    /// recovered, which the verifier compares with its own.
    ActivateCredential {
        /// The challenge (`trustctl tpm make-credential` or `tpm2_makecredential` output).
        file: PathBuf,
        /// Output file for the secret (stdout if absent).
        #[arg(short, long)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum PostureCmd {
    /// Ask the daemon for a posture report answering NONCE.
    Report {
        /// The nonce (8 to 128 of [A-Za-z0-9_-]); a verifier picks a fresh one each time.
        #[arg(long)]
        nonce: String,
        /// Output file (stdout if absent).
        #[arg(short, long)]
        out: Option<PathBuf>,
    },
    /// Check a report offline: signed by the device key, answering the nonce. With --ak, also
    /// its TPM evidence: the quote's signature by the attestation key, its binding to the
    /// nonce and report, the PCR values, the replay of trustd's event log, and that the
    /// report's checkpoint and ruleset are the last measured. With --earlier, also what
    /// happened since an earlier report (a reboot) and, within one boot, that the log still
    /// extends it (across a reboot only `audit consistency` proves that).
    Verify {
        /// The report (DSSE envelope).
        file: PathBuf,
        /// The nonce the verifier sent.
        #[arg(long)]
        nonce: String,
        /// The device's public key: its `device.pub`, or its signed-note verifier key `device.vkey`.
        #[arg(long)]
        key: PathBuf,
        /// The device TPM's attestation key, bound to its EK by credential activation: its
        /// public key (`tpm-ak.pem`, SPKI PEM) or its public area (`tpm-ak.pub`). Requires
        /// and checks the TPM quote, and that every start of trustd measured names this AK.
        #[arg(long)]
        ak: Option<PathBuf>,
        /// An earlier report of the same device, checked the same way (needs --ak).
        #[arg(long, requires_all = ["ak", "earlier_nonce"])]
        earlier: Option<PathBuf>,
        /// The nonce the earlier report answered.
        #[arg(long)]
        earlier_nonce: Option<String>,
        /// Also write the report's quote into this directory for tpm2-tools
        /// (`quote.msg`, `quote.sig`, `quote.pcrs`) and print the `tpm2_checkquote` command
        /// that checks it; written once the device key's signature checks, before the TPM
        /// checks, so an outside tool can judge a quote refused here.
        #[arg(long, value_name = "DIR")]
        export_quote: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum DeviceCmd {
    /// Make a signed lifecycle command (offline, with the command role's keys).
    Command {
        /// enroll, suspend, resume, revoke or retire.
        #[arg(long, value_parser = ["enroll", "suspend", "resume", "revoke", "retire"])]
        action: String,
        /// The verifier id the device handle was derived for.
        #[arg(long)]
        issuer: String,
        /// The device's handle for the issuer (`trustctl device handle ISSUER` on the device).
        #[arg(long)]
        device: String,
        /// Its serial: above every command this device has accepted.
        #[arg(long)]
        serial: u64,
        /// Valid for this many seconds from now (a positive number).
        #[arg(long, default_value_t = 3600, allow_negative_numbers = true)]
        valid_for: i64,
        /// Private key files of the command role.
        #[arg(long = "key", required = true)]
        keys: Vec<PathBuf>,
        /// Output file (stdout if absent).
        #[arg(short, long)]
        out: Option<PathBuf>,
    },
    /// Send a signed lifecycle command to the daemon.
    Apply {
        /// The envelope.
        file: PathBuf,
    },
    /// This device's handle for a verifier.
    Handle {
        /// The verifier id.
        verifier: String,
    },
}

#[derive(Subcommand, Debug)]
enum LaunchCmd {
    /// May APP start now? Exit 0 if so, 1 if not.
    Check {
        /// The app id.
        app: String,
        /// The executable (default: the policy's).
        #[arg(long, default_value = "")]
        exe: String,
    },
}

#[derive(Subcommand, Debug)]
enum PolicyCmd {
    /// Send a signed policy bundle to the daemon, which verifies and enforces it.
    Apply {
        /// The envelope.
        file: PathBuf,
    },
    /// Print the policy in force.
    Show,
    /// Send a signed trust-root rotation to the daemon.
    Rotate {
        /// The envelope.
        file: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum IntelCmd {
    /// Send a signed intel feed to the daemon.
    Apply {
        /// The envelope.
        file: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum SetupCmd {
    /// Mark a required setup step complete.
    Complete {
        /// The step.
        step: String,
    },
}

#[derive(Subcommand, Debug)]
enum AuditCmd {
    /// Check the chain, the segments and the head; exit 1 if anything is wrong.
    Verify {
        /// Read the files under this root prefix instead of asking the daemon.
        #[arg(long)]
        prefix: Option<PathBuf>,
    },
    /// Print the last records.
    Tail {
        /// Read the files under this root prefix instead of asking the daemon.
        #[arg(long)]
        prefix: Option<PathBuf>,
        /// How many.
        #[arg(short = 'n', default_value_t = 10)]
        n: usize,
    },
    /// Write every record as JSON lines, oldest first (offline, from the files): each line is
    /// exactly the bytes the log's Merkle tree hashes, so `jq`, Python's `json` and RFC 6962
    /// verifiers read it as is.
    Export {
        /// Root prefix of the device's files.
        #[arg(long, default_value = "/")]
        prefix: PathBuf,
        /// Output file (stdout if absent).
        #[arg(short, long)]
        out: Option<PathBuf>,
    },
    /// Acknowledge the damage the daemon recorded in the log (after reviewing it with
    /// `status` and `audit tail`): posture stops showing it; the damage records stay and
    /// the acknowledgement is itself recorded.
    Acknowledge {
        /// Only the damage recorded in records up to this seq (default: all of it).
        #[arg(long)]
        through: Option<u64>,
    },
    /// Ask the daemon for a signed checkpoint of the log now (keep it somewhere else).
    Checkpoint {
        /// Output file (stdout if absent).
        #[arg(short, long)]
        out: Option<PathBuf>,
    },
    /// Prove that record SEQ is in the log a saved checkpoint commits to (offline, from the
    /// files); prints the inclusion proof; exit 1 if it does not hold.
    Prove {
        /// The record's seq.
        seq: u64,
        /// A checkpoint saved earlier.
        #[arg(long)]
        checkpoint: PathBuf,
        /// The device's public key: its `device.pub`, or its signed-note verifier key `device.vkey`.
        #[arg(long)]
        key: PathBuf,
        /// Root prefix of the device's files.
        #[arg(long, default_value = "/")]
        prefix: PathBuf,
    },
    /// Prove that the log (or a NEW checkpoint) extends an OLD checkpoint saved earlier:
    /// nothing before it was truncated or rewritten (offline, from the files); exit 1 if not.
    Consistency {
        /// The checkpoint saved earlier.
        old: PathBuf,
        /// A later checkpoint (default: the log as the files are now).
        new: Option<PathBuf>,
        /// The device's public key: its `device.pub`, or its signed-note verifier key `device.vkey`.
        #[arg(long)]
        key: PathBuf,
        /// Root prefix of the device's files.
        #[arg(long, default_value = "/")]
        prefix: PathBuf,
    },
}

/// An outcome that is the input's fault (exit 1), as opposed to the system's (exit 3).
#[derive(Debug)]
struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// A refusal (exit 1) as an error.
fn refused(reason: String) -> anyhow::Error {
    Refused(reason).into()
}

fn payload_type(kind: &str) -> Result<&str> {
    Ok(match kind {
        "policy" => Policy::PAYLOAD_TYPE,
        "intel" => IntelFeed::PAYLOAD_TYPE,
        "command" => LifecycleCommand::PAYLOAD_TYPE,
        "trust-root" => TrustRoot::PAYLOAD_TYPE,
        other if other.contains('/') => other,
        other => {
            return Err(refused(format!(
                "unknown payload type {other:?}: use policy, intel, command, trust-root or a media type"
            )));
        }
    })
}

/// Write a command's document to `out` (stdout if None). With --json and a file, one result
/// object names the file; with --json and no file, the document goes inside the one result
/// line (`{"ok":true,"document":...}`; `jq .document` gives it back), so that stdout stays one
/// JSON object per line.
fn write_out(j: bool, out: Option<&Path>, bytes: &[u8]) -> Result<()> {
    match out {
        Some(p) => {
            std::fs::write(p, bytes).with_context(|| format!("writing {}", p.display()))?;
            if j {
                out!("{}", json!({"ok": true, "out": p.display().to_string()}));
            }
            Ok(())
        }
        None if j => {
            let doc = serde_json::from_slice::<serde_json::Value>(bytes).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(bytes).into_owned())
            });
            out!("{}", json!({"ok": true, "document": doc}));
            Ok(())
        }
        None => {
            use std::io::Write;
            std::io::stdout().write_all(bytes).context("writing stdout")
        }
    }
}

/// The private keys behind `--key` files, each key once (the same key named twice, under
/// any file name, signs once: a second signature adds nothing toward a threshold). A key
/// file others may read is used, with a warning on stderr (keygen writes 0600).
fn signing_keys(files: &[PathBuf]) -> Result<Vec<ed25519_dalek::SigningKey>> {
    use std::os::unix::fs::PermissionsExt;
    let mut keys: Vec<ed25519_dalek::SigningKey> = Vec::new();
    for f in files {
        let k = PrivateKeyFile::load(f)?;
        if let Ok(m) = std::fs::metadata(f)
            && m.permissions().mode() & 0o077 != 0
        {
            eprintln!(
                "trustctl: warning: {} is readable by others (mode {:o}): chmod 600 it",
                f.display(),
                m.permissions().mode() & 0o777
            );
        }
        if !keys
            .iter()
            .any(|have| have.verifying_key() == k.verifying_key())
        {
            keys.push(k);
        }
    }
    Ok(keys)
}

/// The most any file trustctl reads may hold: the largest input it takes, a blocklist
/// envelope. Each input's own cap (a policy envelope 1 MiB, a checkpoint 16 KiB, a report
/// 4 MiB) is checked after, by its verifier. A larger file (or `/dev/zero`, a fifo that
/// never ends) is refused without being read past the cap.
const MAX_INPUT_BYTES: usize = trustd::bundle::MAX_INTEL_ENVELOPE_BYTES;

fn read(path: &Path) -> Result<Vec<u8>> {
    trustd::files::capped::read_capped(path, MAX_INPUT_BYTES).map_err(|e| {
        if e.kind() == std::io::ErrorKind::FileTooLarge {
            refused(format!("{}: {e}", path.display()))
        } else {
            anyhow::Error::new(e).context(format!("reading {}", path.display()))
        }
    })
}

fn print(json_out: bool, value: serde_json::Value, text: &str) {
    if json_out {
        out!("{value}");
    } else {
        out!("{text}");
    }
}

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
    match cli.cmd {
        Cmd::Keygen { out } => keygen(j, &out),
        Cmd::TrustRoot {
            roles,
            serial,
            expires,
            out,
        } => trust_root(j, &roles, serial, expires.as_deref(), out.as_deref()),
        Cmd::Sign {
            kind,
            keys,
            payload,
            out,
        } => {
            let ptype = payload_type(&kind)?;
            let keys = signing_keys(&keys)?;
            let env = sign_envelope(ptype, &read(&payload)?, &keys);
            let mut bytes = serde_json::to_vec_pretty(&env)?;
            bytes.push(b'\n');
            write_out(j, out.as_deref(), &bytes)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Verify {
            trust_root,
            installed_serial,
            envelope,
        } => verify_cmd(j, &trust_root, installed_serial, &envelope),
        Cmd::Load { prefix, envelope } => load(j, &prefix, &envelope),
        Cmd::State { prefix } => state(j, &prefix),
        Cmd::Audit { cmd } => match cmd {
            AuditCmd::Verify { prefix: Some(p) } => audit_verify(j, &p),
            AuditCmd::Tail { prefix: Some(p), n } => audit_tail(j, &p, n),
            AuditCmd::Export { prefix, out } => audit_export(j, &prefix, out.as_deref()),
            AuditCmd::Prove {
                seq,
                checkpoint,
                key,
                prefix,
            } => audit_prove(j, seq, &checkpoint, &key, &prefix),
            AuditCmd::Consistency {
                old,
                new,
                key,
                prefix,
            } => audit_consistency(j, &old, new.as_deref(), &key, &prefix),
            cmd => bus::run(j, &route, bus::Op::Audit(cmd)),
        },
        Cmd::Status => bus::run(j, &route, bus::Op::Status),
        Cmd::Watch { count } => bus::run(j, &route, bus::Op::Watch(count)),
        Cmd::Privacy { state } => bus::run(j, &route, bus::Op::Privacy(state == "on")),
        Cmd::Policy { cmd } => bus::run(j, &route, bus::Op::Policy(cmd)),
        Cmd::Intel { cmd } => bus::run(j, &route, bus::Op::Intel(cmd)),
        Cmd::Setup { cmd } => bus::run(j, &route, bus::Op::Setup(cmd)),
        Cmd::Device {
            cmd:
                DeviceCmd::Command {
                    action,
                    issuer,
                    device,
                    serial,
                    valid_for,
                    keys,
                    out,
                },
        } => {
            if valid_for <= 0 {
                return Err(refused(format!(
                    "--valid-for {valid_for}: a command must be valid for a positive number of seconds"
                )));
            }
            let now = Timestamp::now();
            let nonce: String = {
                let mut b = [0u8; 16];
                getrandom::fill(&mut b).map_err(|e| anyhow!("random: {e}"))?;
                b.iter().map(|x| format!("{x:02x}")).collect()
            };
            let cmd = json!({
                "schema": "enigm.command/v1", "serial": serial,
                "issued_at": now.to_string(), "expires_at": now.saturating_plus_secs(valid_for).to_string(),
                "issuer": issuer, "device": device, "action": action, "nonce": nonce,
            });
            let parsed: LifecycleCommand = serde_json::from_value(cmd.clone())?;
            parsed
                .validate()
                .map_err(|e| refused(format!("the command would be invalid: {e}")))?;
            let keys = signing_keys(&keys)?;
            let env = sign_envelope(
                LifecycleCommand::PAYLOAD_TYPE,
                &serde_json::to_vec(&cmd)?,
                &keys,
            );
            let mut bytes = serde_json::to_vec_pretty(&env)?;
            bytes.push(b'\n');
            write_out(j, out.as_deref(), &bytes)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Device { cmd } => bus::run(j, &route, bus::Op::Device(cmd)),
        Cmd::Tpm {
            cmd:
                TpmCmd::MakeCredential {
                    ek,
                    ak_public,
                    ak_pem,
                    ak_name,
                    secret,
                    format,
                    out,
                },
        } => {
            use trustd::tpm::credential;
            let pem = String::from_utf8(read(&ek)?)
                .map_err(|_| refused(format!("{}: not UTF-8", ek.display())))?;
            let ekey = credential::ek_from_pem(&pem)
                .map_err(|e| refused(format!("{}: {e}", ek.display())))?;
            let name = match (&ak_public, &ak_name) {
                (Some(p), _) => {
                    let ak = credential::check_ak_public(&read(p)?)
                        .map_err(|e| refused(format!("{}: {e}", p.display())))?;
                    if let Some(pem) = &ak_pem {
                        let want =
                            trustd::tpm::quote::ak_from_pem(&String::from_utf8_lossy(&read(pem)?))
                                .map_err(|e| refused(format!("{}: {e}", pem.display())))?;
                        let got = trustd::tpm::quote::ak_from_pem(&ak.pem)
                            .map_err(|e| refused(e.to_string()))?;
                        if want != got {
                            return Err(refused(format!(
                                "{} is not the key of the public area {}: a credential for that AK would not vouch for it",
                                pem.display(),
                                p.display()
                            )));
                        }
                    }
                    ak.name
                }
                (None, Some(n)) => {
                    let text = match trustd::files::capped::read_capped(Path::new(n), 4096) {
                        Ok(t) => String::from_utf8_lossy(&t).into_owned(),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => n.clone(),
                        Err(e) => return Err(anyhow::Error::new(e).context(format!("reading {n}"))),
                    };
                    credential::parse_name(&text).map_err(|e| refused(e.to_string()))?
                }
                (None, None) => return Err(refused("--ak-public or --ak-name is required".into())),
            };
            let meta = std::fs::metadata(&secret)
                .with_context(|| format!("reading {}", secret.display()))?;
            if meta.len() > credential::MAX_CREDENTIAL as u64 {
                return Err(refused(format!(
                    "{}: the secret must be 1 to {} bytes, not {}",
                    secret.display(),
                    credential::MAX_CREDENTIAL,
                    meta.len()
                )));
            }
            let c = credential::make(&ekey, &name, &read(&secret)?)
                .map_err(|e| refused(e.to_string()))?;
            let bytes = if format == "tpm2-tools" {
                c.to_tpm2_tools()
            } else {
                let mut b = serde_json::to_vec_pretty(&c.to_challenge(&name))?;
                b.push(b'\n');
                b
            };
            write_out(j, out.as_deref(), &bytes)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Tpm { cmd } => bus::run(j, &route, bus::Op::Tpm(cmd)),
        Cmd::Launch { cmd } => bus::run(j, &route, bus::Op::Launch(cmd)),
        Cmd::Posture {
            cmd:
                PostureCmd::Verify {
                    file,
                    nonce,
                    key,
                    ak,
                    earlier,
                    earlier_nonce,
                    export_quote,
                },
        } => {
            for (what, n) in [
                ("--nonce", Some(&nonce)),
                ("--earlier-nonce", earlier_nonce.as_ref()),
            ] {
                if let Some(n) = n
                    && !trustd::report::valid_nonce(n)
                {
                    return Err(refused(format!(
                        "{what} {:?} is not a nonce trustd answers (8 to 128 characters of [A-Za-z0-9_-]): no report can carry it",
                        n.chars().take(140).collect::<String>()
                    )));
                }
            }
            if earlier_nonce.as_deref() == Some(nonce.as_str()) {
                return Err(refused(
                    "--earlier-nonce is --nonce: two reports answering one nonce are one report replayed; a verifier sends a fresh nonce for each".into(),
                ));
            }
            let vk = device_key(&key)?;
            let opened =
                trustd::report::open_report(&read(&file)?, &nonce, &vk).map_err(Refused)?;
            let mut checkquote = None;
            if let Some(dir) = &export_quote {
                let f = trustd::tpm::verify::checkquote_files(&opened).map_err(Refused)?;
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                for (name, bytes) in [
                    ("quote.msg", &f.message),
                    ("quote.sig", &f.signature),
                    ("quote.pcrs", &f.pcrs),
                ] {
                    let p = dir.join(name);
                    std::fs::write(&p, bytes)
                        .with_context(|| format!("writing {}", p.display()))?;
                }
                // The AK given, as the PEM tpm2-tools read (`--ak` may be tpm-ak.pub).
                let ak_arg = match &ak {
                    Some(p) => {
                        let pem = trustd::tpm::quote::ak_pem(&load_ak(p)?.0);
                        let out = dir.join("ak.pem");
                        std::fs::write(&out, pem)
                            .with_context(|| format!("writing {}", out.display()))?;
                        out.display().to_string()
                    }
                    None => "tpm-ak.pem".into(),
                };
                let cmd = format!(
                    "tpm2_checkquote -u {ak_arg} -m {d}/quote.msg -s {d}/quote.sig -f {d}/quote.pcrs -l {} -g sha256 -q {}",
                    f.selection,
                    f.qualifying,
                    d = dir.display()
                );
                if !j {
                    eprintln!(
                        "quote written to {}; check it with:\n  {cmd}",
                        dir.display()
                    );
                }
                checkquote = Some(cmd);
            }
            let mut tpm = serde_json::Value::Null;
            let mut tpm_text = format!("\n  evidence signer: {}", opened.signer);
            if let Some(ak) = &ak {
                let (akey, ak_name) = load_ak(ak)?;
                let v = trustd::tpm::verify::verify_named(&opened, &akey, &ak_name, &vk)
                    .map_err(|e| Refused(format!("TPM evidence: {e}")))?;
                let mut notes = Vec::new();
                if let (Some(earlier), Some(en)) = (&earlier, &earlier_nonce) {
                    let eo = trustd::report::open_report(&read(earlier)?, en, &vk)
                        .map_err(|e| Refused(format!("earlier report: {e}")))?;
                    let ev = trustd::tpm::verify::verify_named(&eo, &akey, &ak_name, &vk)
                        .map_err(|e| Refused(format!("earlier report's TPM evidence: {e}")))?;
                    notes = trustd::tpm::verify::compare(&ev, &v)
                        .map_err(|e| Refused(format!("since the earlier report: {e}")))?;
                    if notes.is_empty() {
                        notes.push("no reboot between the reports; the measurements extend the earlier ones".into());
                    }
                }
                tpm = json!({
                    "pcr": trustd::tpm::TRUSTD_PCR,
                    "pcrs": v.pcrs.iter().map(|(k, v)| (k.to_string(), json!(trustd::bundle::hex(v)))).collect::<serde_json::Map<_, _>>(),
                    "clock": v.clock,
                    "events": v.events.len(),
                    "checkpoint": {"size": v.checkpoint.0, "root": v.checkpoint.1},
                    "since_earlier": notes,
                });
                tpm_text = format!(
                    "\n  TPM quote verified with {}: PCRs {:?}, {} measured events replay to PCR {}, checkpoint size {} is the last measured, TPM reset count {} restart count {}{}",
                    ak.display(),
                    v.pcrs.keys().collect::<Vec<_>>(),
                    v.events.len(),
                    trustd::tpm::TRUSTD_PCR,
                    v.checkpoint.0,
                    v.clock.reset_count,
                    v.clock.restart_count,
                    notes.iter().map(|n| format!("\n  {n}")).collect::<String>()
                );
            } else if opened.attestation.is_some() {
                tpm_text.push_str(" (the TPM quote is not checked without --ak)");
            }
            let r = opened.report;
            print(
                j,
                json!({"ok": true, "origin": r.origin, "time": r.time.to_string(),
                       "level": r.posture.get("Level"), "reasons": r.posture.get("Reasons"),
                       "evidence": r.evidence, "version": opened.version,
                       "signer": opened.signer, "tpm": tpm, "checkquote": checkquote}),
                &format!(
                    "valid report from {} at {}: level {}, policy {}, ruleset {}{}{tpm_text}",
                    r.origin,
                    r.time,
                    r.posture
                        .get("Level")
                        .map(ToString::to_string)
                        .unwrap_or_default(),
                    // An empty digest is "none" (no policy installed), as `status` says.
                    if r.evidence.policy_digest.is_empty() {
                        "none"
                    } else {
                        &r.evidence.policy_digest
                    },
                    if r.evidence.ruleset_digest.is_empty() {
                        "none"
                    } else {
                        &r.evidence.ruleset_digest
                    },
                    // Why the level is what it is (a stale input, the clock), one per line.
                    r.posture
                        .get("Reasons")
                        .and_then(serde_json::Value::as_array)
                        .map(|rs| rs
                            .iter()
                            .filter_map(serde_json::Value::as_str)
                            .map(|r| format!("\n  reason: {r}"))
                            .collect::<String>())
                        .unwrap_or_default()
                ),
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Posture { cmd } => bus::run(j, &route, bus::Op::Posture(cmd)),
    }
}

/// The device's public key from `path`: trustd's key file (`device.pub`, JSON) or a
/// signed-note verifier key (`device.vkey`), whose name must be the key's checkpoint origin.
/// The attestation key a verifier gives: its SPKI PEM (`tpm-ak.pem`, named as trustd's AK
/// template names it) or its public area (`tpm-ak.pub`, checked and named from its bytes).
fn load_ak(path: &Path) -> Result<(trustd::tpm::quote::AkKey, String)> {
    let bytes = read(path)?;
    let ak = if bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
        let pem = String::from_utf8_lossy(&bytes);
        let k = trustd::tpm::quote::ak_from_pem(&pem)
            .map_err(|e| refused(format!("{}: {e}", path.display())))?;
        (k, trustd::tpm::credential::ak_name_of(&k))
    } else {
        let p = trustd::tpm::credential::check_ak_public(&bytes).map_err(|e| {
            refused(format!(
                "{}: neither a PEM public key (tpm-ak.pem) nor an attestation key's TPM public area (tpm-ak.pub): {e}",
                path.display()
            ))
        })?;
        let k = trustd::tpm::quote::ak_from_pem(&p.pem).map_err(|e| refused(e.to_string()))?;
        (k, trustd::bundle::hex(&p.name))
    };
    Ok(ak)
}

fn device_key(path: &Path) -> Result<ed25519_dalek::VerifyingKey> {
    let bytes = read(path)?;
    if bytes.trim_ascii_start().starts_with(b"{") {
        return Ok(PublicKeyFile::load(path)?);
    }
    if bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
        return Err(Refused(format!(
            "{}: a PEM key, not the device key: --key takes the device's device.pub (or device.vkey); the TPM's tpm-ak.pem goes to --ak",
            path.display()
        ))
        .into());
    }
    let text =
        String::from_utf8(bytes).map_err(|_| Refused(format!("{}: not UTF-8", path.display())))?;
    let (name, key) = trustd::audit::checkpoint::parse_verifier_key(&text)
        .map_err(|e| Refused(format!("{}: {e}", path.display())))?;
    let origin = trustd::report::origin(&key);
    if name != origin {
        return Err(Refused(format!(
            "{}: verifier key name {name} is not its key's origin {origin}",
            path.display()
        ))
        .into());
    }
    Ok(key)
}

/// A checkpoint file verified with the device key (its key name is the key's origin).
fn load_checkpoint(
    path: &Path,
    key: &ed25519_dalek::VerifyingKey,
) -> Result<trustd::audit::Checkpoint> {
    let note = String::from_utf8(read(path)?)
        .map_err(|_| Refused(format!("{}: not UTF-8", path.display())))?;
    let origin = trustd::report::origin(key);
    let cp = trustd::audit::checkpoint::parse_and_verify(&note, &origin, key)
        .map_err(|e| Refused(format!("{}: {e}", path.display())))?;
    if cp.origin != origin {
        return Err(Refused(format!(
            "{}: origin {} is not this device's {origin}",
            path.display(),
            cp.origin
        ))
        .into());
    }
    Ok(cp)
}

/// A writer that passes every byte on and notes which lines (1-based) are not JSON: the
/// export still writes a damaged log's exact lines (they are its Merkle leaves), but it does
/// not pass them off as JSON lines.
struct JsonLines<W> {
    inner: W,
    line: Vec<u8>,
    n: u64,
    bad: Vec<u64>,
}

impl<W: std::io::Write> std::io::Write for JsonLines<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        for &b in &buf[..n] {
            if b == b'\n' {
                self.n += 1;
                if serde_json::from_slice::<serde_json::Value>(&self.line).is_err() {
                    self.bad.push(self.n);
                }
                self.line.clear();
            } else {
                self.line.push(b);
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn audit_export(j: bool, prefix: &Path, out: Option<&Path>) -> Result<ExitCode> {
    let dir = Paths::new(prefix).audit_dir();
    let (records, bad) = match out {
        Some(path) => {
            let file = std::fs::File::create(path)
                .with_context(|| format!("creating {}", path.display()))?;
            let mut w = JsonLines {
                inner: std::io::BufWriter::new(file),
                line: Vec::new(),
                n: 0,
                bad: Vec::new(),
            };
            let n = trustd::audit::export_records(&dir, &mut w, path)?;
            (n, w.bad)
        }
        None => {
            let mut w = JsonLines {
                inner: std::io::BufWriter::new(std::io::stdout().lock()),
                line: Vec::new(),
                n: 0,
                bad: Vec::new(),
            };
            let n = trustd::audit::export_records(&dir, &mut w, Path::new("stdout"))?;
            (n, w.bad)
        }
    };
    if !bad.is_empty() {
        return Err(refused(format!(
            "{records} lines exported, but lines {bad:?} are not JSON: the log is damaged \
             (`trustctl audit verify --prefix {}` says where)",
            prefix.display()
        )));
    }
    if let (true, Some(path)) = (j, out) {
        out!(
            "{}",
            json!({"ok": true, "out": path.display().to_string(), "records": records})
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn audit_prove(j: bool, seq: u64, cp: &Path, key: &Path, prefix: &Path) -> Result<ExitCode> {
    let vk = device_key(key)?;
    let cp = load_checkpoint(cp, &vk)?;
    let dir = Paths::new(prefix).audit_dir();
    let (proof, line) = trustd::audit::checkpoint::prove_inclusion_in_dir(&dir, seq, &cp)
        .map_err(|e| Refused(e.to_string()))?;
    trustd::audit::checkpoint::verify_inclusion_proof(&cp, &proof, &line)
        .map_err(|e| Refused(e.to_string()))?;
    let proof_json = serde_json::to_value(&proof)?;
    print(
        j,
        json!({"ok": true, "seq": seq, "tree_size": cp.size, "proof": proof_json}),
        &format!(
            "record {seq} is in the log checkpoint size {} commits to\n{}",
            cp.size,
            serde_json::to_string_pretty(&proof_json)?
        ),
    );
    Ok(ExitCode::SUCCESS)
}

fn audit_consistency(
    j: bool,
    old: &Path,
    new: Option<&Path>,
    key: &Path,
    prefix: &Path,
) -> Result<ExitCode> {
    use trustd::audit::checkpoint::{check_dir_consistency, verify_consistency_proof};
    let vk = device_key(key)?;
    let old = load_checkpoint(old, &vk)?;
    let dir = Paths::new(prefix).audit_dir();
    let now = check_dir_consistency(&dir, &old).map_err(|e| Refused(e.to_string()))?;
    let current = trustd::audit::Checkpoint {
        origin: old.origin.clone(),
        size: now.size,
        root: now.root,
    };
    verify_consistency_proof(&old, &current, &now.proof).map_err(|e| Refused(e.to_string()))?;
    let mut text = format!(
        "the log ({} records) extends checkpoint size {}: nothing before it was removed or rewritten",
        now.size, old.size
    );
    // The proofs, for a verifier that checks them itself (RFC 6962 section 2.1.2 order;
    // hashes as lowercase hex).
    let mut out = json!({"ok": true, "old_size": old.size, "size": now.size,
                         "old_root": trustd::bundle::hex(&old.root), "root": trustd::bundle::hex(&now.root),
                         "proof": serde_json::to_value(&now.proof)?});
    if let Some(new) = new {
        let new = load_checkpoint(new, &vk)?;
        let tree = trustd::audit::merkle_from_dir(&dir).map_err(|e| Refused(e.to_string()))?;
        let root = tree.root_at(new.size).map_err(|e| {
            Refused(format!(
                "the files do not reach checkpoint size {}: {e}",
                new.size
            ))
        })?;
        if root != new.root {
            return Err(Refused(format!(
                "the files do not match checkpoint size {}: its root differs",
                new.size
            ))
            .into());
        }
        let proof = tree
            .consistency_proof(old.size, new.size)
            .map_err(|e| Refused(e.to_string()))?;
        verify_consistency_proof(&old, &new, &proof).map_err(|e| Refused(e.to_string()))?;
        out["new_size"] = json!(new.size);
        out["new_root"] = json!(trustd::bundle::hex(&new.root));
        out["new_proof"] = serde_json::to_value(&proof)?;
        text.push_str(&format!(
            "; checkpoint size {} extends checkpoint size {}",
            new.size, old.size
        ));
    }
    print(j, out, &text);
    Ok(ExitCode::SUCCESS)
}

/// The commands that talk to the running daemon.
mod bus {
    use super::{
        AuditCmd, DeviceCmd, IntelCmd, LaunchCmd, PolicyCmd, PostureCmd, Refused, SetupCmd, TpmCmd,
        print, read, write_out,
    };
    use anyhow::{Context, Result, anyhow};
    use serde_json::{Value, json};
    use std::process::ExitCode;
    use trustd::dbus::Failure;
    use trustd::dbus::client::{ApplyResult, Client};

    #[derive(Debug)]
    pub(super) enum Op {
        Status,
        Watch(Option<u64>),
        Privacy(bool),
        Policy(PolicyCmd),
        Intel(IntelCmd),
        Setup(SetupCmd),
        Device(DeviceCmd),
        Launch(LaunchCmd),
        Posture(PostureCmd),
        Audit(AuditCmd),
        Tpm(TpmCmd),
    }

    /// A refusal by the daemon (access denied, input refused) exits 1; anything else 3.
    fn daemon_error(e: zbus::Error) -> anyhow::Error {
        match Failure::from(e) {
            Failure::Trustd(e) => {
                let text = format!("{}: {}", e.short_name(), e.message());
                if e.is_refusal() {
                    Refused(text).into()
                } else {
                    anyhow!(text)
                }
            }
            Failure::BusDenied(msg) => Refused(format!("AccessDenied (bus policy): {msg}")).into(),
            Failure::Bus(e) => anyhow!(e),
        }
    }

    /// Where commands go: the private socket (`private`, and whether it must be used), else
    /// the bus at `bus` (default: the system bus).
    #[derive(Debug)]
    pub(super) struct Route {
        bus: Option<String>,
        private: Option<(std::path::PathBuf, bool)>,
    }

    impl Route {
        /// `--private PATH` (required), else `--bus ADDR` (the bus only), else
        /// `$TRUSTCTL_PRIVATE` (a path, required; `off`: the bus only), else for root the
        /// system's private socket if it answers, and the system bus otherwise.
        pub(super) fn of(cli: &super::Cli) -> Self {
            let bus = cli.bus.clone();
            if let Some(p) = &cli.private {
                return Self {
                    bus,
                    private: Some((p.clone(), true)),
                };
            }
            if bus.is_some() {
                return Self { bus, private: None };
            }
            let private = match std::env::var_os("TRUSTCTL_PRIVATE") {
                Some(v) if v == "off" => None,
                Some(v) if !v.is_empty() => Some((std::path::PathBuf::from(v), true)),
                _ => (trustd::sys::euid() == 0)
                    .then(|| (trustd::paths::Paths::system().private_socket(), false)),
            };
            Self { bus, private }
        }
    }

    pub(super) fn run(j: bool, route: &Route, op: Op) -> Result<ExitCode> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            // Posture changes are signals, which only the bus carries.
            let private = route
                .private
                .as_ref()
                .filter(|_| !matches!(op, Op::Watch(_)));
            if let Some((path, required)) = private {
                match Client::connect_private(path).await {
                    Ok(c) => return exec(j, &c, op).await,
                    Err(e) if *required => {
                        return Err(anyhow!(e))
                            .with_context(|| format!("connecting to {}", path.display()));
                    }
                    // Not there or not answering (trustd stopped): the bus says what is wrong.
                    Err(_) => {}
                }
            }
            let address = route.bus.as_deref();
            let c = Client::connect(address).await.with_context(|| {
                format!("connecting to {}", address.unwrap_or("the system bus"))
            })?;
            exec(j, &c, op).await
        })
    }

    /// A posture property as a person reads it: the audit head as its record count and last
    /// hash, yes/no, "none" for an empty value; `--json` keeps the raw values.
    fn show_value(k: &str, v: &Value) -> String {
        match v {
            Value::Array(a) if k == "AuditHead" && a.len() == 2 => format!(
                "{} records, last record hash {}",
                a[0],
                a[1].as_str().filter(|h| !h.is_empty()).unwrap_or("(none)")
            ),
            Value::Bool(b) => (if *b { "yes" } else { "no" }).to_owned(),
            Value::String(s) if s.is_empty() => "none".to_owned(),
            Value::Array(a) if a.is_empty() => "none".to_owned(),
            Value::String(s) => s.clone(),
            Value::Array(a) if a.iter().all(Value::is_string) => a
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join("; "),
            other => other.to_string(),
        }
    }

    fn applied(j: bool, what: &str, r: &ApplyResult) {
        print(
            j,
            json!({"ok": true, "from_serial": r.from_serial, "to_serial": r.to_serial,
                   "digest": r.digest, "audit_seq": r.audit_seq, "notes": r.notes}),
            &format!(
                "{what} applied: serial {} -> {} ({}), audit record {}{}",
                r.from_serial,
                r.to_serial,
                r.digest,
                r.audit_seq,
                r.notes.iter().map(|n| format!("\n{n}")).collect::<String>()
            ),
        );
    }

    async fn exec(j: bool, c: &Client, op: Op) -> Result<ExitCode> {
        match op {
            Op::Status => {
                let p = c.posture().await.map_err(daemon_error)?;
                if j {
                    // The posture properties, and "ok" like every other result object.
                    let mut obj: serde_json::Map<String, Value> = p.into_iter().collect();
                    obj.insert("ok".into(), Value::Bool(true));
                    out!("{}", Value::Object(obj));
                } else {
                    for (k, v) in &p {
                        out!("{k:<18} {}", show_value(k, v));
                    }
                }
            }
            Op::Watch(count) => {
                let mut changes = c.posture_changes().await.map_err(daemon_error)?;
                let mut seen = 0;
                while count.is_none_or(|n| seen < n) {
                    let Some(ch) = changes.next().await else {
                        return Err(anyhow!("the bus connection closed"));
                    };
                    if j {
                        let mut obj: serde_json::Map<String, Value> = ch.into_iter().collect();
                        obj.insert("ok".into(), Value::Bool(true));
                        out!("{}", Value::Object(obj));
                    } else {
                        let parts: Vec<String> = ch
                            .iter()
                            .map(|(k, v)| format!("{k}={}", show_value(k, v)))
                            .collect();
                        out!("{}", parts.join(" "));
                    }
                    seen += 1;
                }
            }
            Op::Privacy(on) => {
                c.set_privacy_mode(on).await.map_err(daemon_error)?;
                let state = if on { "on" } else { "off" };
                print(
                    j,
                    json!({"ok": true, "privacy_mode": on}),
                    &format!("privacy mode {state}"),
                );
            }
            Op::Policy(PolicyCmd::Apply { file }) => {
                let r = c.apply_bundle(&read(&file)?).await.map_err(daemon_error)?;
                applied(j, "policy", &r);
            }
            Op::Policy(PolicyCmd::Rotate { file }) => {
                let r = c
                    .apply_trust_root(&read(&file)?)
                    .await
                    .map_err(daemon_error)?;
                applied(j, "trust root", &r);
            }
            Op::Policy(PolicyCmd::Show) => {
                let p = c.active_policy().await.map_err(daemon_error)?;
                if p.is_empty() {
                    print(
                        j,
                        json!({"ok": true, "policy": null}),
                        "no policy installed",
                    );
                } else if j {
                    let v: Value = serde_json::from_str(&p)?;
                    out!("{}", json!({"ok": true, "policy": v}));
                } else {
                    out!("{p}");
                }
            }
            Op::Intel(IntelCmd::Apply { file }) => {
                let r = c
                    .apply_intel_feed(&read(&file)?)
                    .await
                    .map_err(daemon_error)?;
                applied(j, "intel feed", &r);
            }
            Op::Setup(SetupCmd::Complete { step }) => {
                c.complete_step(&step).await.map_err(daemon_error)?;
                print(
                    j,
                    json!({"ok": true, "step": step}),
                    &format!("step {step} complete"),
                );
            }
            Op::Device(DeviceCmd::Apply { file }) => {
                let (from, to) = c.apply_command(&read(&file)?).await.map_err(daemon_error)?;
                print(
                    j,
                    json!({"ok": true, "from": from, "to": to}),
                    &format!("lifecycle {from} -> {to}"),
                );
            }
            Op::Device(DeviceCmd::Handle { verifier }) => {
                let h = c.device_handle(&verifier).await.map_err(daemon_error)?;
                print(
                    j,
                    json!({"ok": true, "verifier": verifier, "handle": h}),
                    &h,
                );
            }
            Op::Device(DeviceCmd::Command { .. }) => {
                return Err(anyhow!("internal: device command is made offline"));
            }
            Op::Launch(LaunchCmd::Check { app, exe }) => {
                let (allowed, reason, profile) =
                    c.check_launch(&app, &exe).await.map_err(daemon_error)?;
                let profile: Value = serde_json::from_str(&profile).unwrap_or(Value::Null);
                print(
                    j,
                    // "ok" follows the exit code: a refused launch is exit 1, "ok": false.
                    json!({"ok": allowed, "allowed": allowed, "reason": reason, "profile": profile}),
                    &format!("{}: {reason}", if allowed { "allowed" } else { "refused" }),
                );
                if !allowed {
                    return Ok(ExitCode::from(1));
                }
            }
            Op::Audit(AuditCmd::Acknowledge { through }) => {
                let text = c
                    .audit_acknowledge(through.unwrap_or(u64::MAX))
                    .await
                    .map_err(daemon_error)?;
                print(j, json!({"ok": true, "acknowledged": text}), &text);
            }
            Op::Audit(AuditCmd::Checkpoint { out }) => {
                let note = c.checkpoint().await.map_err(daemon_error)?;
                write_out(j, out.as_deref(), note.as_bytes())?;
            }
            Op::Tpm(TpmCmd::ActivateCredential { file, out }) => {
                let meta = std::fs::metadata(&file)
                    .with_context(|| format!("reading {}", file.display()))?;
                if meta.len() > trustd::tpm::credential::MAX_FILE as u64 {
                    return Err(Refused(format!(
                        "{}: {} bytes, more than a challenge ({} at most)",
                        file.display(),
                        meta.len(),
                        trustd::tpm::credential::MAX_FILE
                    ))
                    .into());
                }
                let (cred, _) = trustd::tpm::credential::Credential::read(&read(&file)?)
                    .map_err(|e| Refused(format!("{}: {e}", file.display())))?;
                let secret = c
                    .activate_credential(&cred.blob, &cred.secret)
                    .await
                    .map_err(daemon_error)?;
                match (&out, j) {
                    (None, true) => println!(
                        "{}",
                        json!({"ok": true, "secret_hex": trustd::bundle::hex(&secret)})
                    ),
                    _ => write_out(j, out.as_deref(), &secret)?,
                }
            }
            Op::Tpm(TpmCmd::MakeCredential { .. }) => {
                return Err(anyhow!("internal: make-credential runs offline"));
            }
            Op::Posture(PostureCmd::Report { nonce, out }) => {
                let r = c.report(&nonce).await.map_err(daemon_error)?;
                write_out(j, out.as_deref(), format!("{r}\n").as_bytes())?;
            }
            Op::Posture(PostureCmd::Verify { .. })
            | Op::Audit(
                AuditCmd::Prove { .. } | AuditCmd::Consistency { .. } | AuditCmd::Export { .. },
            ) => {
                return Err(anyhow!("internal: this command runs offline"));
            }
            Op::Audit(AuditCmd::Tail { n, .. }) => {
                let n = u32::try_from(n).unwrap_or(u32::MAX);
                for line in c.audit_tail(n).await.map_err(daemon_error)? {
                    out!("{line}");
                }
            }
            Op::Audit(AuditCmd::Verify { .. }) => {
                let (records, problems) = c.audit_verify().await.map_err(daemon_error)?;
                print(
                    j,
                    json!({"ok": problems.is_empty(), "records": records, "problems": problems}),
                    &if problems.is_empty() {
                        format!("audit log intact: {records} records")
                    } else {
                        format!(
                            "audit log damaged ({records} records):\n  {}",
                            problems.join("\n  ")
                        )
                    },
                );
                if !problems.is_empty() {
                    return Ok(ExitCode::from(1));
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// `NAME.key` and `NAME.pub` for `--out NAME`: the suffix is added, never substituted, so
/// `admin.2026` gives `admin.2026.key`; a NAME already ending in `.key` or `.pub` loses it.
fn key_paths(out: &Path) -> (PathBuf, PathBuf) {
    let mut base = out.as_os_str().to_owned();
    let text = base.to_string_lossy();
    if let Some(stem) = text
        .strip_suffix(".key")
        .or_else(|| text.strip_suffix(".pub"))
        .filter(|s| !s.is_empty() && !s.ends_with('/'))
    {
        base = stem.into();
    }
    let with = |ext: &str| {
        let mut p = base.clone();
        p.push(ext);
        PathBuf::from(p)
    };
    (with(".key"), with(".pub"))
}

fn keygen(j: bool, out: &Path) -> Result<ExitCode> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    // `--out dir/` (or an existing directory) would make the hidden files `dir/.key` and
    // `dir/.pub`: refused, the base name is the admin's to choose.
    if out.as_os_str().as_encoded_bytes().ends_with(b"/") || out.is_dir() {
        return Err(refused(format!(
            "--out {}: give a file name base (e.g. {}/admin.2026), not a directory; nothing written",
            out.display(),
            out.display().to_string().trim_end_matches('/')
        )));
    }
    let key = generate_key().context("reading the system's random source")?;
    let (private, public) = key_paths(out);
    let create = |path: &Path, mode: u32, bytes: &[u8]| -> Result<()> {
        let mut f = match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
        {
            Ok(f) => f,
            // The admin's request is refused (exit 1), not a failure of the system.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(Refused(format!(
                    "{} exists: an existing key is never replaced; nothing written",
                    path.display()
                ))
                .into());
            }
            Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
        };
        f.write_all(bytes)?;
        f.sync_all()?;
        Ok(())
    };
    create(
        &private,
        0o600,
        &serde_json::to_vec_pretty(&PrivateKeyFile::new(&key))?,
    )?;
    if let Err(e) = create(
        &public,
        0o644,
        &serde_json::to_vec_pretty(&PublicKeyFile::new(&key.verifying_key()))?,
    ) {
        // Nothing half made: the private key without its public half is removed.
        let _ = std::fs::remove_file(&private);
        return Err(e);
    }
    let id = key_id(&key.verifying_key());
    print(
        j,
        json!({"ok": true, "keyid": id, "private": private.display().to_string(), "public": public.display().to_string()}),
        &format!(
            "keyid {id}\nprivate {}\npublic {}",
            private.display(),
            public.display()
        ),
    );
    Ok(ExitCode::SUCCESS)
}

fn trust_root(
    j: bool,
    roles: &[String],
    serial: u64,
    expires: Option<&str>,
    out: Option<&Path>,
) -> Result<ExitCode> {
    let now = Timestamp::now();
    let expires_at = match expires {
        Some(e) => Timestamp::parse(e).map_err(|e| refused(format!("--expires: {e}")))?,
        None => now.plus_secs(365 * 24 * 3600),
    };
    let mut keys = std::collections::BTreeMap::new();
    let mut by_role = std::collections::BTreeMap::new();
    for spec in roles {
        let (role, rest) = spec.split_once('=').ok_or_else(|| {
            refused(format!(
                "--role {spec:?}: expected ROLE=THRESHOLD:KEY.pub[,KEY.pub...]"
            ))
        })?;
        let (threshold, files) = rest.split_once(':').ok_or_else(|| {
            refused(format!(
                "--role {spec:?}: expected ROLE=THRESHOLD:KEY.pub[,KEY.pub...]"
            ))
        })?;
        let threshold: u32 = threshold.parse().map_err(|e| {
            refused(format!(
                "--role {spec:?}: threshold {threshold:?} is not a number: {e}"
            ))
        })?;
        let mut keyids = Vec::new();
        for f in files.split(',') {
            let k = PublicKeyFile::load(Path::new(f))?;
            let f = PublicKeyFile::new(&k);
            keys.insert(
                f.keyid.clone(),
                TrustKey {
                    alg: f.alg,
                    public: f.public,
                },
            );
            keyids.push(f.keyid);
        }
        if by_role
            .insert(role.to_owned(), RoleKeys { keyids, threshold })
            .is_some()
        {
            // A second --role for the same role silently replaced the first before.
            return Err(refused(format!(
                "--role {role}=... is given twice: give each role once, with all its keys (ROLE=THRESHOLD:A.pub,B.pub); nothing written"
            )));
        }
    }
    let mut take = |name: &str| {
        by_role.remove(name).ok_or_else(|| {
            refused(format!(
                "--role {name}=... is missing (root, policy, intel and command are all required)"
            ))
        })
    };
    let root = TrustRoot {
        schema: TrustRoot::SCHEMA.into(),
        serial,
        issued_at: now,
        expires_at,
        keys,
        roles: Roles {
            root: take("root")?,
            policy: take("policy")?,
            intel: take("intel")?,
            command: take("command")?,
        },
    };
    if let Some(extra) = by_role.keys().next() {
        return Err(refused(format!(
            "unknown role {extra:?} (the roles are root, policy, intel and command)"
        )));
    }
    root.validate()
        .map_err(|e| refused(format!("trust root would be invalid: {e}")))?;
    let mut bytes = serde_json::to_vec_pretty(&root)?;
    bytes.push(b'\n');
    write_out(j, out, &bytes)?;
    Ok(ExitCode::SUCCESS)
}

fn describe<P: Payload>(v: &Verified<P>) -> (serde_json::Value, String) {
    let p = v.payload();
    (
        json!({
            "ok": true,
            "payload_type": P::PAYLOAD_TYPE,
            "serial": p.serial(),
            "expires_at": p.expires_at().to_string(),
            "digest": v.digest(),
            "signers": v.signers(),
        }),
        format!(
            "valid {} serial {} (expires {}), signed by {}, digest {}",
            P::ROLE,
            p.serial(),
            p.expires_at(),
            v.signers()
                .iter()
                .map(|s| &s[..16])
                .collect::<Vec<_>>()
                .join(", "),
            v.digest()
        ),
    )
}

fn envelope_type(bytes: &[u8]) -> Option<String> {
    serde_json::from_slice::<Envelope>(bytes)
        .ok()
        .map(|e| e.payload_type)
}

fn verify_cmd(j: bool, root_path: &Path, installed: u64, envelope: &Path) -> Result<ExitCode> {
    let bytes = read(envelope)?;
    let root: TrustRoot = trustd::json::parse_strict(&read(root_path)?)
        .map_err(|e| refused(format!("trust root {}: {e}", root_path.display())))?;
    root.validate()
        .map_err(|e| refused(format!("trust root {}: {e}", root_path.display())))?;
    let now = Timestamp::now();
    let refused = |e: VerifyError| anyhow::Error::new(Refused(e.to_string()));
    let (value, text) = match envelope_type(&bytes).as_deref() {
        Some(t) if t == IntelFeed::PAYLOAD_TYPE => {
            describe(&verify::<IntelFeed>(&bytes, &root, now, installed).map_err(refused)?)
        }
        Some(t) if t == LifecycleCommand::PAYLOAD_TYPE => {
            describe(&verify::<LifecycleCommand>(&bytes, &root, now, installed).map_err(refused)?)
        }
        Some(t) if t == TrustRoot::PAYLOAD_TYPE => {
            describe(&verify_rotation(&bytes, &root, now).map_err(refused)?)
        }
        // A policy, or anything else: the policy verifier gives the precise refusal.
        _ => describe(&verify::<Policy>(&bytes, &root, now, installed).map_err(refused)?),
    };
    print(j, value, &text);
    Ok(ExitCode::SUCCESS)
}

fn load(j: bool, prefix: &Path, envelope: &Path) -> Result<ExitCode> {
    let bytes = read(envelope)?;
    let paths = Paths::new(prefix);
    trustd::files::owner::refuse_foreign_owner(&paths).map_err(|e| refused(e.to_string()))?;
    let mut dev = Device::open(&paths, Actor::this_process())?;
    let now = Timestamp::now();
    let result = match envelope_type(&bytes).as_deref() {
        Some(t) if t == IntelFeed::PAYLOAD_TYPE => {
            dev.apply_intel(&bytes, Actor::this_process(), now)
        }
        Some(t) if t == TrustRoot::PAYLOAD_TYPE => {
            dev.apply_trust_root(&bytes, Actor::this_process(), now)
        }
        _ => dev.apply_policy(&bytes, Actor::this_process(), now),
    };
    match result {
        Ok(a) => {
            print(
                j,
                json!({"ok": true, "from_serial": a.from_serial, "to_serial": a.to_serial, "digest": a.digest, "audit_seq": a.audit_seq}),
                &format!(
                    "loaded: serial {} -> {}, digest {}, audit record {}",
                    a.from_serial, a.to_serial, a.digest, a.audit_seq
                ),
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(DeviceError::Refused(e)) => {
            Err(Refused(format!("{e}; the last good state is kept")).into())
        }
        Err(e) => Err(e.into()),
    }
}

fn state(j: bool, prefix: &Path) -> Result<ExitCode> {
    let paths = Paths::new(prefix);
    let root = load_trust_root(&paths)?;
    let loaded = StateStore::new(paths).load(&root);
    let s = &loaded.state;
    let value = json!({
        "ok": true,
        "condition": format!("{:?}", loaded.condition).to_lowercase(),
        "state": s,
        "policy_serial": loaded.policy.as_ref().map(|p| p.payload().serial),
        "intel_serial": loaded.intel.as_ref().map(|p| p.payload().serial),
        "notes": loaded.notes,
    });
    let text = format!(
        "condition {:?}\nlifecycle {}\nprivacy {}\npolicy {}\nintel {}\nserials root {} policy {} intel {} command {}{}",
        loaded.condition,
        s.lifecycle.as_str(),
        if s.privacy_mode { "on" } else { "off" },
        loaded.policy.as_ref().map_or("none".into(), |p| format!(
            "serial {} ({})",
            p.payload().serial,
            p.digest()
        )),
        loaded
            .intel
            .as_ref()
            .map_or("none".into(), |p| format!("serial {}", p.payload().serial)),
        s.serials.root,
        s.serials.policy,
        s.serials.intel,
        s.serials.command,
        loaded
            .notes
            .iter()
            .map(|n| format!("\nnote: {n}"))
            .collect::<String>()
    );
    print(j, value, &text);
    Ok(ExitCode::SUCCESS)
}

fn audit_verify(j: bool, prefix: &Path) -> Result<ExitCode> {
    let paths = Paths::new(prefix);
    let dir = paths.audit_dir();
    // With the device's public key at hand, the stored checkpoint is checked too (a chain
    // rewritten consistently, a log cut below it, a checkpoint removed or put back older).
    let anchor =
        PublicKeyFile::load(&paths.device_pub())
            .ok()
            .map(|key| trustd::audit::damage::Anchor {
                origin: trustd::report::origin(&key),
                key,
            });
    let insp = trustd::audit::damage::inspect(&dir, anchor.as_ref())?;
    let rep = &insp.report;
    // Findings beyond the chain's problems (the checkpoint's), which no damage record names.
    let extra: Vec<String> = insp
        .findings
        .iter()
        .filter(|f| f.kind.starts_with("checkpoint") || f.kind.starts_with("log-"))
        .filter(|f| !matches!(f.kind, "log-truncated"))
        .filter(|f| !insp.history.known.contains(&f.id()))
        .map(|f| format!("[{}] {}", f.kind, f.text))
        .collect();
    let unacked = insp.history.unacknowledged();
    let acked = insp.history.damage.len() - unacked.len();
    let ok = rep.ok() && extra.is_empty() && unacked.is_empty();
    if j {
        out!(
            "{}",
            json!({"ok": ok, "report": rep, "checkpoint_problems": extra,
                "damage_recorded": insp.history.damage.iter().map(|(s, r)| json!({"seq": s, "reason": r})).collect::<Vec<_>>(),
                "damage_unacknowledged": unacked.iter().map(|(s, _)| s).collect::<Vec<_>>()})
        );
    } else {
        if rep.ok() && extra.is_empty() {
            out!(
                "audit log intact: {} records in {} segments, head at {}",
                rep.records,
                rep.segments,
                rep.head_seq.map_or("none".into(), |s| s.to_string())
            );
        } else {
            out!(
                "audit log damaged: {} problem(s) in {} records",
                rep.problems.len() + extra.len(),
                rep.records
            );
            for p in &rep.problems {
                out!("  {p}");
            }
            for p in &extra {
                out!("  {p}");
            }
        }
        if !insp.history.damage.is_empty() {
            out!(
                "damage recorded by trustd in {} record(s), {acked} acknowledged by an admin:",
                insp.history.damage.len()
            );
            for (seq, reason) in &insp.history.damage {
                let state = if unacked.iter().any(|(s, _)| s == seq) {
                    "NOT acknowledged"
                } else {
                    "acknowledged"
                };
                out!("  record {seq} ({state}): {reason}");
            }
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn audit_tail(j: bool, prefix: &Path, n: usize) -> Result<ExitCode> {
    let dir = Paths::new(prefix).audit_dir();
    let records = read_records(&dir)?;
    for r in records.iter().skip(records.len().saturating_sub(n)) {
        if j {
            out!("{}", serde_json::to_string(r)?);
        } else {
            let what = match (&r.from, &r.to) {
                (Some(f), Some(t)) => format!(" {f} -> {t}"),
                _ => String::new(),
            };
            out!(
                "{:>6} {} {} {}{}{}",
                r.seq,
                r.time,
                r.kind,
                r.outcome.as_str(),
                what,
                r.reason
                    .as_deref()
                    .map(|x| format!(": {x}"))
                    .unwrap_or_default()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
