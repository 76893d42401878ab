//! trustctl: the admin CLI. Keys, signing, verification, offline loading and the audit log.
//!
//! Exit codes: 0 done; 1 refused (the input, signature or log is bad); 2 usage; 3 the
//! system failed (a file could not be read or written).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Parser, Subcommand};
use serde_json::json;

use trustd::Paths;
use trustd::audit::{Actor, read_records, verify_dir};
use trustd::bundle::{
    Envelope, Payload, PrivateKeyFile, PublicKeyFile, RoleKeys, Roles, TrustKey, TrustRoot,
    Verified, VerifyError, generate_key, key_id, sign_envelope, verify, verify_rotation,
};
use trustd::daemon::{Device, DeviceError};
use trustd::policy::{IntelFeed, LifecycleCommand, Policy};
use trustd::state::{StateStore, load_trust_root};
use trustd::timefmt::Timestamp;

#[derive(Parser, Debug)]
#[command(
    name = "trustctl",
    version,
    about = "Admin CLI of trustd, the trust agent of Enigm OS"
)]
struct Cli {
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
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
    /// The audit log.
    Audit {
        #[command(subcommand)]
        cmd: AuditCmd,
    },
}

#[derive(Subcommand, Debug)]
enum AuditCmd {
    /// Check the chain, the segments and the head; exit 1 if anything is wrong.
    Verify {
        /// Root prefix of the device's files.
        #[arg(long, default_value = "/")]
        prefix: PathBuf,
    },
    /// Print the last records.
    Tail {
        /// Root prefix of the device's files.
        #[arg(long, default_value = "/")]
        prefix: PathBuf,
        /// How many.
        #[arg(short = 'n', default_value_t = 10)]
        n: usize,
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

fn payload_type(kind: &str) -> Result<&str> {
    Ok(match kind {
        "policy" => Policy::PAYLOAD_TYPE,
        "intel" => IntelFeed::PAYLOAD_TYPE,
        "command" => LifecycleCommand::PAYLOAD_TYPE,
        "trust-root" => TrustRoot::PAYLOAD_TYPE,
        other if other.contains('/') => other,
        other => bail!(
            "unknown payload type {other:?}: use policy, intel, command, trust-root or a media type"
        ),
    })
}

fn write_out(out: Option<&Path>, bytes: &[u8]) -> Result<()> {
    match out {
        Some(p) => std::fs::write(p, bytes).with_context(|| format!("writing {}", p.display())),
        None => {
            use std::io::Write;
            std::io::stdout().write_all(bytes).context("writing stdout")
        }
    }
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

fn print(json_out: bool, value: serde_json::Value, text: &str) {
    if json_out {
        println!("{value}");
    } else {
        println!("{text}");
    }
}

fn main() -> ExitCode {
    trustd::logging::init("trustctl", tracing::Level::WARN);
    let cli = Cli::parse();
    let json_out = cli.json;
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            let refused = e.downcast_ref::<Refused>().is_some();
            if json_out {
                println!(
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

fn run(cli: Cli) -> Result<ExitCode> {
    let j = cli.json;
    match cli.cmd {
        Cmd::Keygen { out } => keygen(j, &out),
        Cmd::TrustRoot {
            roles,
            serial,
            expires,
            out,
        } => trust_root(&roles, serial, expires.as_deref(), out.as_deref()),
        Cmd::Sign {
            kind,
            keys,
            payload,
            out,
        } => {
            let ptype = payload_type(&kind)?;
            let keys = keys
                .iter()
                .map(|k| PrivateKeyFile::load(k).map_err(anyhow::Error::from))
                .collect::<Result<Vec<_>>>()?;
            let env = sign_envelope(ptype, &read(&payload)?, &keys);
            let mut bytes = serde_json::to_vec_pretty(&env)?;
            bytes.push(b'\n');
            write_out(out.as_deref(), &bytes)?;
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
            AuditCmd::Verify { prefix } => audit_verify(j, &prefix),
            AuditCmd::Tail { prefix, n } => audit_tail(j, &prefix, n),
        },
    }
}

fn keygen(j: bool, out: &Path) -> Result<ExitCode> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let key = generate_key().context("reading the system's random source")?;
    let private = out.with_extension("key");
    let public = out.with_extension("pub");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&private)
        .with_context(|| format!("creating {}", private.display()))?;
    f.write_all(&serde_json::to_vec_pretty(&PrivateKeyFile::new(&key))?)?;
    f.sync_all()?;
    std::fs::write(
        &public,
        serde_json::to_vec_pretty(&PublicKeyFile::new(&key.verifying_key()))?,
    )
    .with_context(|| format!("writing {}", public.display()))?;
    let id = key_id(&key.verifying_key());
    print(
        j,
        json!({"ok": true, "keyid": id, "private": private, "public": public}),
        &format!(
            "keyid {id}\nprivate {}\npublic {}",
            private.display(),
            public.display()
        ),
    );
    Ok(ExitCode::SUCCESS)
}

fn trust_root(
    roles: &[String],
    serial: u64,
    expires: Option<&str>,
    out: Option<&Path>,
) -> Result<ExitCode> {
    let now = Timestamp::now();
    let expires_at = match expires {
        Some(e) => Timestamp::parse(e).map_err(|e| anyhow!(e))?,
        None => now.plus_secs(365 * 24 * 3600),
    };
    let mut keys = std::collections::BTreeMap::new();
    let mut by_role = std::collections::BTreeMap::new();
    for spec in roles {
        let (role, rest) = spec.split_once('=').ok_or_else(|| {
            anyhow!("--role {spec:?}: expected ROLE=THRESHOLD:KEY.pub[,KEY.pub...]")
        })?;
        let (threshold, files) = rest.split_once(':').ok_or_else(|| {
            anyhow!("--role {spec:?}: expected ROLE=THRESHOLD:KEY.pub[,KEY.pub...]")
        })?;
        let threshold: u32 = threshold
            .parse()
            .with_context(|| format!("--role {spec:?}: threshold"))?;
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
        by_role.insert(role.to_owned(), RoleKeys { keyids, threshold });
    }
    let mut take = |name: &str| {
        by_role.remove(name).ok_or_else(|| {
            anyhow!(
                "--role {name}=... is missing (root, policy, intel and command are all required)"
            )
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
        bail!("unknown role {extra:?}");
    }
    root.validate()
        .map_err(|e| anyhow!("trust root would be invalid: {e}"))?;
    let mut bytes = serde_json::to_vec_pretty(&root)?;
    bytes.push(b'\n');
    write_out(out, &bytes)?;
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
        .map_err(|e| anyhow!("trust root {}: {e}", root_path.display()))?;
    root.validate()
        .map_err(|e| anyhow!("trust root {}: {e}", root_path.display()))?;
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
    let dir = Paths::new(prefix).audit_dir();
    let rep = verify_dir(&dir)?;
    if j {
        println!("{}", json!({"ok": rep.ok(), "report": rep}));
    } else if rep.ok() {
        println!(
            "audit log intact: {} records in {} segments, head at {}",
            rep.records,
            rep.segments,
            rep.head_seq.map_or("none".into(), |s| s.to_string())
        );
    } else {
        println!(
            "audit log damaged: {} problem(s) in {} records",
            rep.problems.len(),
            rep.records
        );
        for p in &rep.problems {
            println!("  {p}");
        }
    }
    Ok(if rep.ok() {
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
            println!("{}", serde_json::to_string(r)?);
        } else {
            let what = match (&r.from, &r.to) {
                (Some(f), Some(t)) => format!(" {f} -> {t}"),
                _ => String::new(),
            };
            println!(
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
