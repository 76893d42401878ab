//! The command line, as clap parses it, and its split into what runs offline and what goes
//! to the daemon.
//!
//! Every leaf command with arguments is a typed struct. A group that holds both kinds keeps
//! its daemon commands in a flattened enum of their own (`DeviceBusCmd`, `AuditBusCmd`, ...),
//! so that [`Cmd::split`] hands [`super::bus`] only commands it can send and
//! [`super::run_offline`] only commands it can run: no arm of either is unreachable.
//! `audit verify` and `audit tail` are the two commands that do either, by `--prefix`.
//!
//! The man pages and completions are generated from these definitions (xtask compiles this
//! file): the help texts here are the documentation.

use std::path::PathBuf;

use clap::builder::{PossibleValuesParser, TypedValueParser as _};
use clap::{Args, Parser, Subcommand};

use trustd::policy::LifecycleAction;

use super::bus::Op;

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
    pub(crate) json: bool,
    /// The bus trustd serves on (default: the system bus). Given, commands go over this bus
    /// and never over the private socket.
    #[arg(long, global = true)]
    pub(crate) bus: Option<String>,
    /// trustd's private socket: commands go over it (peer to peer, without the bus daemon)
    /// and nowhere else. Without this (and without --bus), root uses /run/trustd/private when
    /// it is there and the system bus otherwise; $TRUSTCTL_PRIVATE may name the socket, or be
    /// `off` for the bus. Not with --bus. `watch` always uses the bus.
    #[arg(long, global = true, value_name = "PATH", conflicts_with = "bus")]
    pub(crate) private: Option<PathBuf>,
    #[command(subcommand)]
    pub(crate) cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Cmd {
    /// Make an ed25519 key pair: OUT.key (0600) and OUT.pub.
    Keygen(Keygen),
    /// Make a trust root from public key files.
    TrustRoot(MakeTrustRoot),
    /// Sign a payload file into a DSSE envelope with one or more keys.
    Sign(Sign),
    /// Check an envelope against a trust root; exit 0 if valid, 1 with the reason if not.
    Verify(Verify),
    /// Verify an envelope and make it the device's last good one, offline (trustd stopped).
    Load(Load),
    /// Show the persisted state, and how it loads.
    State(State),
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

// `trustctl keygen`.
#[derive(Args, Debug)]
pub(crate) struct Keygen {
    /// Path prefix of the two files.
    #[arg(long)]
    pub(crate) out: PathBuf,
}

// `trustctl trust-root`.
#[derive(Args, Debug)]
pub(crate) struct MakeTrustRoot {
    /// ROLE=THRESHOLD:KEY.pub[,KEY.pub...] for each of root, policy, intel, command.
    #[arg(long = "role", required = true)]
    pub(crate) roles: Vec<String>,
    /// Its serial.
    #[arg(long, default_value_t = 1)]
    pub(crate) serial: u64,
    /// Expiry (RFC 3339 UTC); default one year from now.
    #[arg(long)]
    pub(crate) expires: Option<String>,
    /// Output file (stdout if absent).
    #[arg(short, long)]
    pub(crate) out: Option<PathBuf>,
}

// `trustctl sign`.
#[derive(Args, Debug)]
pub(crate) struct Sign {
    /// policy, intel, command, trust-root, or a full payloadType.
    #[arg(long = "type")]
    pub(crate) kind: String,
    /// Private key files (each signs once).
    #[arg(long = "key", required = true)]
    pub(crate) keys: Vec<PathBuf>,
    /// The payload (JSON) to sign.
    pub(crate) payload: PathBuf,
    /// Output file (stdout if absent).
    #[arg(short, long)]
    pub(crate) out: Option<PathBuf>,
}

// `trustctl verify`.
#[derive(Args, Debug)]
pub(crate) struct Verify {
    /// Trust root file (plain JSON as provisioned in /etc/trustd).
    #[arg(long)]
    pub(crate) trust_root: PathBuf,
    /// The serial the device holds for the envelope's role (rollback check).
    #[arg(long, default_value_t = 0)]
    pub(crate) installed_serial: u64,
    /// The envelope.
    pub(crate) envelope: PathBuf,
}

// `trustctl load`.
#[derive(Args, Debug)]
pub(crate) struct Load {
    /// Root prefix of the device's files (/ on a device).
    #[arg(long, default_value = "/")]
    pub(crate) prefix: PathBuf,
    /// The envelope (policy, intel feed or trust-root rotation).
    pub(crate) envelope: PathBuf,
}

// `trustctl state`.
#[derive(Args, Debug)]
pub(crate) struct State {
    /// Root prefix of the device's files.
    #[arg(long, default_value = "/")]
    pub(crate) prefix: PathBuf,
}

#[derive(Subcommand, Debug)]
pub(crate) enum TpmCmd {
    /// Make a credential challenge offline (no TPM: TPM2_MakeCredential in software, TPM 2.0
    /// Part 1 §24) for the attestation key named in --ak-name under the endorsement key
    /// --ek: only the TPM holding that EK, with that AK loaded, can recover SECRET.
    MakeCredential(MakeCredential),
    #[command(flatten)]
    Daemon(TpmBusCmd),
}

// `trustctl tpm make-credential`.
#[derive(Args, Debug)]
pub(crate) struct MakeCredential {
    /// The device's endorsement key (`tpm-ek.pem`, SPKI PEM, ECC P-256).
    #[arg(long)]
    pub(crate) ek: PathBuf,
    /// The attestation key's public area (`tpm-ak.pub`, the marshalled TPMT_PUBLIC):
    /// checked to be a restricted signing key fixed to its TPM, and named from it.
    #[arg(long, required_unless_present = "ak_name", conflicts_with = "ak_name")]
    pub(crate) ak_public: Option<PathBuf>,
    /// With --ak-public: the AK public key the verifier will check quotes with
    /// (`tpm-ak.pem`); refused unless it is the key of that public area.
    #[arg(long, requires = "ak_public")]
    pub(crate) ak_pem: Option<PathBuf>,
    /// The attestation key's TPM name instead (the file `tpm-ak.name`, or its hex), as
    /// `tpm2_makecredential -n` takes it: nothing ties that name to a public key then.
    #[arg(long)]
    pub(crate) ak_name: Option<String>,
    /// A file holding the secret (1 to 32 bytes) the verifier will compare.
    #[arg(long)]
    pub(crate) secret: PathBuf,
    /// `json` (the project's challenge) or `tpm2-tools` (what `tpm2_activatecredential -i`
    /// reads).
    #[arg(long, default_value = "json", value_parser = ["json", "tpm2-tools"])]
    pub(crate) format: String,
    /// Output file (stdout if absent).
    #[arg(short, long)]
    pub(crate) out: Option<PathBuf>,
}

// The `tpm` commands the daemon's TPM answers.
#[derive(Subcommand, Debug)]
pub(crate) enum TpmBusCmd {
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
pub(crate) enum PostureCmd {
    #[command(flatten)]
    Daemon(PostureBusCmd),
    /// Check a report offline: signed by the device key, answering the nonce. With --ak, also
    /// its TPM evidence: the quote's signature by the attestation key, its binding to the
    /// nonce and report, the PCR values, the replay of trustd's event log, and that the
    /// report's checkpoint and ruleset are the last measured. With --earlier, also what
    /// happened since an earlier report (a reboot) and, within one boot, that the log still
    /// extends it (across a reboot only `audit consistency` proves that).
    Verify(PostureVerify),
}

// The `posture` commands the daemon answers.
#[derive(Subcommand, Debug)]
pub(crate) enum PostureBusCmd {
    /// Ask the daemon for a posture report answering NONCE.
    Report {
        /// The nonce (8 to 128 of [A-Za-z0-9_-]); a verifier picks a fresh one each time.
        #[arg(long)]
        nonce: String,
        /// Output file (stdout if absent).
        #[arg(short, long)]
        out: Option<PathBuf>,
    },
}

// `trustctl posture verify`.
#[derive(Args, Debug)]
pub(crate) struct PostureVerify {
    /// The report (DSSE envelope).
    pub(crate) file: PathBuf,
    /// The nonce the verifier sent.
    #[arg(long)]
    pub(crate) nonce: String,
    /// The device's public key: its `device.pub`, or its signed-note verifier key `device.vkey`.
    #[arg(long)]
    pub(crate) key: PathBuf,
    /// The device TPM's attestation key, bound to its EK by credential activation: its
    /// public key (`tpm-ak.pem`, SPKI PEM) or its public area (`tpm-ak.pub`). Requires
    /// and checks the TPM quote, and that every start of trustd measured names this AK.
    #[arg(long)]
    pub(crate) ak: Option<PathBuf>,
    /// An earlier report of the same device, checked the same way (needs --ak).
    #[arg(long, requires_all = ["ak", "earlier_nonce"])]
    pub(crate) earlier: Option<PathBuf>,
    /// The nonce the earlier report answered.
    #[arg(long)]
    pub(crate) earlier_nonce: Option<String>,
    /// Also write the report's quote into this directory for tpm2-tools
    /// (`quote.msg`, `quote.sig`, `quote.pcrs`) and print the `tpm2_checkquote` command
    /// that checks it; written once the device key's signature checks, before the TPM
    /// checks, so an outside tool can judge a quote refused here.
    #[arg(long, value_name = "DIR")]
    pub(crate) export_quote: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub(crate) enum DeviceCmd {
    /// Make a signed lifecycle command (offline, with the command role's keys).
    Command(MakeCommand),
    #[command(flatten)]
    Daemon(DeviceBusCmd),
}

// `trustctl device command`: the fields of the signed `LifecycleCommand`, and its keys.
#[derive(Args, Debug)]
pub(crate) struct MakeCommand {
    /// enroll, suspend, resume, revoke or retire.
    #[arg(long, value_parser = PossibleValuesParser::new(["enroll", "suspend", "resume", "revoke", "retire"])
        .try_map(|s| serde_json::from_value::<LifecycleAction>(serde_json::Value::String(s))))]
    pub(crate) action: LifecycleAction,
    /// The verifier id the device handle was derived for.
    #[arg(long)]
    pub(crate) issuer: String,
    /// The device's handle for the issuer (`trustctl device handle ISSUER` on the device).
    #[arg(long)]
    pub(crate) device: String,
    /// Its serial: above every command this device has accepted.
    #[arg(long)]
    pub(crate) serial: u64,
    /// Valid for this many seconds from now (a positive number).
    #[arg(long, default_value_t = 3600, allow_negative_numbers = true)]
    pub(crate) valid_for: i64,
    /// Private key files of the command role.
    #[arg(long = "key", required = true)]
    pub(crate) keys: Vec<PathBuf>,
    /// Output file (stdout if absent).
    #[arg(short, long)]
    pub(crate) out: Option<PathBuf>,
}

// The `device` commands the daemon carries out.
#[derive(Subcommand, Debug)]
pub(crate) enum DeviceBusCmd {
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
pub(crate) enum LaunchCmd {
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
pub(crate) enum PolicyCmd {
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
pub(crate) enum IntelCmd {
    /// Send a signed intel feed to the daemon.
    Apply {
        /// The envelope.
        file: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum SetupCmd {
    /// Mark a required setup step complete.
    Complete {
        /// The step.
        step: String,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum AuditCmd {
    /// Check the chain, the segments and the head; exit 1 if anything is wrong.
    Verify(AuditVerify),
    /// Print the last records.
    Tail(AuditTail),
    /// Write every record as JSON lines, oldest first (offline, from the files): each line is
    /// exactly the bytes the log's Merkle tree hashes, so `jq`, Python's `json` and RFC 6962
    /// verifiers read it as is.
    Export(AuditExport),
    #[command(flatten)]
    Daemon(AuditBusCmd),
    /// Prove that record SEQ is in the log a saved checkpoint commits to (offline, from the
    /// files); prints the inclusion proof; exit 1 if it does not hold.
    Prove(AuditProve),
    /// Prove that the log (or a NEW checkpoint) extends an OLD checkpoint saved earlier:
    /// nothing before it was truncated or rewritten (offline, from the files); exit 1 if not.
    Consistency(AuditConsistency),
}

// `trustctl audit verify`: offline with --prefix, else through the daemon.
#[derive(Args, Debug)]
pub(crate) struct AuditVerify {
    /// Read the files under this root prefix instead of asking the daemon.
    #[arg(long)]
    pub(crate) prefix: Option<PathBuf>,
}

// `trustctl audit tail`: offline with --prefix, else through the daemon.
#[derive(Args, Debug)]
pub(crate) struct AuditTail {
    /// Read the files under this root prefix instead of asking the daemon.
    #[arg(long)]
    pub(crate) prefix: Option<PathBuf>,
    /// How many.
    #[arg(short = 'n', default_value_t = 10)]
    pub(crate) n: usize,
}

// `trustctl audit export`.
#[derive(Args, Debug)]
pub(crate) struct AuditExport {
    /// Root prefix of the device's files.
    #[arg(long, default_value = "/")]
    pub(crate) prefix: PathBuf,
    /// Output file (stdout if absent).
    #[arg(short, long)]
    pub(crate) out: Option<PathBuf>,
}

// The `audit` commands only the daemon answers.
#[derive(Subcommand, Debug)]
pub(crate) enum AuditBusCmd {
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
}

// `trustctl audit prove`.
#[derive(Args, Debug)]
pub(crate) struct AuditProve {
    /// The record's seq.
    pub(crate) seq: u64,
    /// A checkpoint saved earlier.
    #[arg(long)]
    pub(crate) checkpoint: PathBuf,
    /// The device's public key: its `device.pub`, or its signed-note verifier key `device.vkey`.
    #[arg(long)]
    pub(crate) key: PathBuf,
    /// Root prefix of the device's files.
    #[arg(long, default_value = "/")]
    pub(crate) prefix: PathBuf,
}

// `trustctl audit consistency`.
#[derive(Args, Debug)]
pub(crate) struct AuditConsistency {
    /// The checkpoint saved earlier.
    pub(crate) old: PathBuf,
    /// A later checkpoint (default: the log as the files are now).
    pub(crate) new: Option<PathBuf>,
    /// The device's public key: its `device.pub`, or its signed-note verifier key `device.vkey`.
    #[arg(long)]
    pub(crate) key: PathBuf,
    /// Root prefix of the device's files.
    #[arg(long, default_value = "/")]
    pub(crate) prefix: PathBuf,
}

/// A command that runs here, from files, without the daemon.
#[derive(Debug)]
pub(crate) enum Offline {
    Keygen(Keygen),
    TrustRoot(MakeTrustRoot),
    Sign(Sign),
    Verify(Verify),
    Load(Load),
    State(State),
    /// `audit verify --prefix PREFIX`.
    AuditVerify {
        prefix: PathBuf,
    },
    /// `audit tail --prefix PREFIX -n N`.
    AuditTail {
        prefix: PathBuf,
        n: usize,
    },
    AuditExport(AuditExport),
    AuditProve(AuditProve),
    AuditConsistency(AuditConsistency),
    DeviceCommand(MakeCommand),
    MakeCredential(MakeCredential),
    PostureVerify(PostureVerify),
}

/// What a command line runs: offline, or a request to the daemon.
#[derive(Debug)]
pub(crate) enum Action {
    Offline(Offline),
    Bus(Op),
}

impl Cmd {
    /// Offline or over the bus, by the command alone (and `--prefix` for `audit verify` and
    /// `audit tail`).
    pub(crate) fn split(self) -> Action {
        use Action::{Bus, Offline as Here};
        match self {
            Cmd::Keygen(a) => Here(Offline::Keygen(a)),
            Cmd::TrustRoot(a) => Here(Offline::TrustRoot(a)),
            Cmd::Sign(a) => Here(Offline::Sign(a)),
            Cmd::Verify(a) => Here(Offline::Verify(a)),
            Cmd::Load(a) => Here(Offline::Load(a)),
            Cmd::State(a) => Here(Offline::State(a)),
            Cmd::Audit { cmd } => match cmd {
                AuditCmd::Verify(AuditVerify {
                    prefix: Some(prefix),
                }) => Here(Offline::AuditVerify { prefix }),
                AuditCmd::Verify(AuditVerify { prefix: None }) => Bus(Op::AuditVerify),
                AuditCmd::Tail(AuditTail {
                    prefix: Some(prefix),
                    n,
                }) => Here(Offline::AuditTail { prefix, n }),
                AuditCmd::Tail(AuditTail { prefix: None, n }) => Bus(Op::AuditTail { n }),
                AuditCmd::Export(a) => Here(Offline::AuditExport(a)),
                AuditCmd::Daemon(c) => Bus(Op::Audit(c)),
                AuditCmd::Prove(a) => Here(Offline::AuditProve(a)),
                AuditCmd::Consistency(a) => Here(Offline::AuditConsistency(a)),
            },
            Cmd::Status => Bus(Op::Status),
            Cmd::Watch { count } => Bus(Op::Watch(count)),
            Cmd::Privacy { state } => Bus(Op::Privacy(state == "on")),
            Cmd::Policy { cmd } => Bus(Op::Policy(cmd)),
            Cmd::Intel { cmd } => Bus(Op::Intel(cmd)),
            Cmd::Setup { cmd } => Bus(Op::Setup(cmd)),
            Cmd::Device {
                cmd: DeviceCmd::Command(a),
            } => Here(Offline::DeviceCommand(a)),
            Cmd::Device {
                cmd: DeviceCmd::Daemon(c),
            } => Bus(Op::Device(c)),
            Cmd::Launch { cmd } => Bus(Op::Launch(cmd)),
            Cmd::Posture {
                cmd: PostureCmd::Daemon(c),
            } => Bus(Op::Posture(c)),
            Cmd::Posture {
                cmd: PostureCmd::Verify(a),
            } => Here(Offline::PostureVerify(a)),
            Cmd::Tpm {
                cmd: TpmCmd::MakeCredential(a),
            } => Here(Offline::MakeCredential(a)),
            Cmd::Tpm {
                cmd: TpmCmd::Daemon(c),
            } => Bus(Op::Tpm(c)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    fn split(args: &[&str]) -> Action {
        let argv = std::iter::once("trustctl").chain(args.iter().copied());
        Cli::try_parse_from(argv)
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
            .cmd
            .split()
    }

    #[test]
    fn clap_definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    /// Regression: `--private P --bus B` went over the private socket although --bus's help
    /// says its commands never do. The two are refused together.
    #[test]
    fn the_private_socket_and_a_bus_are_not_given_together() {
        let e = Cli::try_parse_from([
            "trustctl",
            "--private",
            "/run/trustd/private",
            "--bus",
            "unix:path=/run/dbus/system_bus_socket",
            "status",
        ])
        .expect_err("both refused");
        assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict);
    }

    #[test]
    fn every_command_runs_offline_or_goes_to_the_daemon_as_its_help_says() {
        let offline: &[&[&str]] = &[
            &["keygen", "--out", "k"],
            &["trust-root", "--role", "root=1:a.pub"],
            &["sign", "--type", "policy", "--key", "k.key", "p.json"],
            &["verify", "--trust-root", "r.json", "e.json"],
            &["load", "e.json"],
            &["state"],
            &["audit", "verify", "--prefix", "/p"],
            &["audit", "tail", "--prefix", "/p", "-n", "3"],
            &["audit", "export"],
            &["audit", "prove", "1", "--checkpoint", "c", "--key", "k"],
            &["audit", "consistency", "old", "--key", "k"],
            &[
                "device", "command", "--action", "revoke", "--issuer", "i", "--device", "d",
                "--serial", "1", "--key", "k.key",
            ],
            &[
                "tpm",
                "make-credential",
                "--ek",
                "ek.pem",
                "--ak-name",
                "n",
                "--secret",
                "s",
            ],
            &["posture", "verify", "r.json", "--nonce", "n", "--key", "k"],
        ];
        for args in offline {
            assert!(
                matches!(split(args), Action::Offline(_)),
                "{args:?} must run offline"
            );
        }
        let daemon: &[&[&str]] = &[
            &["status"],
            &["watch"],
            &["privacy", "on"],
            &["policy", "apply", "e.json"],
            &["policy", "show"],
            &["policy", "rotate", "e.json"],
            &["intel", "apply", "e.json"],
            &["setup", "complete", "wifi"],
            &["device", "apply", "e.json"],
            &["device", "handle", "v"],
            &["launch", "check", "app"],
            &["posture", "report", "--nonce", "n"],
            &["audit", "verify"],
            &["audit", "tail"],
            &["audit", "acknowledge"],
            &["audit", "checkpoint"],
            &["tpm", "activate-credential", "c.json"],
        ];
        for args in daemon {
            assert!(
                matches!(split(args), Action::Bus(_)),
                "{args:?} must go to the daemon"
            );
        }
        // Every subcommand of the tree is in one of the two lists.
        fn leaves(c: &clap::Command, path: String, out: &mut Vec<String>) {
            if c.get_subcommands().next().is_none() {
                out.push(path.clone());
            }
            for s in c.get_subcommands().filter(|s| s.get_name() != "help") {
                leaves(s, format!("{path} {}", s.get_name()), out);
            }
        }
        let mut all = Vec::new();
        leaves(&Cli::command(), String::new(), &mut all);
        let listed: Vec<String> = offline
            .iter()
            .chain(daemon)
            .map(|a| {
                a.iter()
                    .take_while(|w| !w.starts_with('-') && !w.contains('.'))
                    .fold(String::new(), |p, w| format!("{p} {w}"))
            })
            .collect();
        for leaf in &all {
            assert!(
                listed.iter().any(|l| l.starts_with(leaf.as_str())),
                "{leaf} is in neither list"
            );
        }
    }

    #[test]
    fn lifecycle_action_is_typed_and_limited_to_the_five() {
        let Action::Offline(Offline::DeviceCommand(c)) = split(&[
            "device", "command", "--action", "retire", "--issuer", "i", "--device", "d",
            "--serial", "7", "--key", "k.key",
        ]) else {
            panic!("device command must run offline");
        };
        assert_eq!(c.action, LifecycleAction::Retire);
        assert_eq!(c.valid_for, 3600);
        let e = Cli::try_parse_from([
            "trustctl", "device", "command", "--action", "destroy", "--issuer", "i", "--device",
            "d", "--serial", "1", "--key", "k",
        ])
        .expect_err("an unknown action is refused");
        assert_eq!(e.kind(), clap::error::ErrorKind::InvalidValue);
        assert!(
            e.to_string()
                .contains("enroll, suspend, resume, revoke, retire"),
            "{e}"
        );
    }
}
