//! The commands that talk to the running daemon: over the private socket or the bus
//! ([`Route`]), each [`Op`] one call (or, for `watch`, a signal subscription).

use std::process::ExitCode;

use anyhow::{Context, Result, anyhow};
use serde_json::{Value, json};
use trustd::dbus::Failure;
use trustd::dbus::client::{ApplyResult, Client};

use super::cli::{
    AuditBusCmd, Cli, DeviceBusCmd, IntelCmd, LaunchCmd, PolicyCmd, PostureBusCmd, SetupCmd,
    TpmBusCmd,
};
use super::output::{Refused, print, read, write_out};

/// A request to the daemon. Only what the daemon answers: the offline commands are
/// [`super::cli::Offline`].
#[derive(Debug)]
pub(crate) enum Op {
    Status,
    Watch(Option<u64>),
    Privacy(bool),
    Policy(PolicyCmd),
    Intel(IntelCmd),
    Setup(SetupCmd),
    Device(DeviceBusCmd),
    Launch(LaunchCmd),
    Posture(PostureBusCmd),
    Audit(AuditBusCmd),
    /// `audit verify` without `--prefix`.
    AuditVerify,
    /// `audit tail -n N` without `--prefix`.
    AuditTail {
        n: usize,
    },
    Tpm(TpmBusCmd),
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
pub(crate) struct Route {
    bus: Option<String>,
    private: Option<(std::path::PathBuf, bool)>,
}

impl Route {
    /// `--private PATH` (required), else `--bus ADDR` (the bus only), else
    /// `$TRUSTCTL_PRIVATE` (a path, required; `off`: the bus only), else for root the
    /// system's private socket if it answers, and the system bus otherwise.
    pub(crate) fn of(cli: &Cli) -> Self {
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

pub(crate) fn run(j: bool, route: &Route, op: Op) -> Result<ExitCode> {
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
        let c = Client::connect(address)
            .await
            .with_context(|| format!("connecting to {}", address.unwrap_or("the system bus")))?;
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
        Op::Device(DeviceBusCmd::Apply { file }) => {
            let (from, to) = c.apply_command(&read(&file)?).await.map_err(daemon_error)?;
            print(
                j,
                json!({"ok": true, "from": from, "to": to}),
                &format!("lifecycle {from} -> {to}"),
            );
        }
        Op::Device(DeviceBusCmd::Handle { verifier }) => {
            let h = c.device_handle(&verifier).await.map_err(daemon_error)?;
            print(
                j,
                json!({"ok": true, "verifier": verifier, "handle": h}),
                &h,
            );
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
        Op::Audit(AuditBusCmd::Acknowledge { through }) => {
            let text = c
                .audit_acknowledge(through.unwrap_or(u64::MAX))
                .await
                .map_err(daemon_error)?;
            print(j, json!({"ok": true, "acknowledged": text}), &text);
        }
        Op::Audit(AuditBusCmd::Checkpoint { out }) => {
            let note = c.checkpoint().await.map_err(daemon_error)?;
            write_out(j, out.as_deref(), note.as_bytes())?;
        }
        Op::Tpm(TpmBusCmd::ActivateCredential { file, out }) => {
            let meta =
                std::fs::metadata(&file).with_context(|| format!("reading {}", file.display()))?;
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
        Op::Posture(PostureBusCmd::Report { nonce, out }) => {
            let r = c.report(&nonce).await.map_err(daemon_error)?;
            write_out(j, out.as_deref(), format!("{r}\n").as_bytes())?;
        }
        Op::AuditTail { n } => {
            let n = u32::try_from(n).unwrap_or(u32::MAX);
            for line in c.audit_tail(n).await.map_err(daemon_error)? {
                out!("{line}");
            }
        }
        Op::AuditVerify => {
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
