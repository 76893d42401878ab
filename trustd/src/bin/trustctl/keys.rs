//! Keys and signing, offline: `keygen`, `trust-root`, `sign`, `device command`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow};
use serde_json::json;

use trustd::bundle::{
    Payload, PrivateKeyFile, PublicKeyFile, RoleKeys, Roles, TrustKey, TrustRoot, generate_key,
    key_id, sign_envelope,
};
use trustd::policy::{IntelFeed, LifecycleCommand, Policy};
use trustd::timefmt::Timestamp;

use super::cli::{MakeCommand, MakeTrustRoot, Sign};
use super::output::{Refused, print, read, refused, write_out};

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

pub(crate) fn keygen(j: bool, out: &Path) -> Result<ExitCode> {
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

/// `trust-root`: a trust root from `--role ROLE=THRESHOLD:KEY.pub,...` for each role.
pub(crate) fn trust_root(j: bool, a: &MakeTrustRoot) -> Result<ExitCode> {
    let (roles, serial, expires, out) =
        (&a.roles, a.serial, a.expires.as_deref(), a.out.as_deref());
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

/// `sign`: a DSSE envelope of the payload file, signed once by each key.
pub(crate) fn sign(j: bool, a: Sign) -> Result<ExitCode> {
    let Sign {
        kind,
        keys,
        payload,
        out,
    } = a;
    let ptype = payload_type(&kind)?;
    let keys = signing_keys(&keys)?;
    let env = sign_envelope(ptype, &read(&payload)?, &keys);
    let mut bytes = serde_json::to_vec_pretty(&env)?;
    bytes.push(b'\n');
    write_out(j, out.as_deref(), &bytes)?;
    Ok(ExitCode::SUCCESS)
}

/// `device command`: a signed lifecycle command, built as the [`LifecycleCommand`] the
/// device will parse, checked as it will check it, then signed with the command role's keys.
pub(crate) fn make_command(j: bool, a: MakeCommand) -> Result<ExitCode> {
    let MakeCommand {
        action,
        issuer,
        device,
        serial,
        valid_for,
        keys,
        out,
    } = a;
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
    let cmd = LifecycleCommand {
        schema: "enigm.command/v1".into(),
        serial,
        issued_at: now,
        expires_at: now.saturating_plus_secs(valid_for),
        issuer,
        device,
        action,
        nonce,
    };
    cmd.validate()
        .map_err(|e| refused(format!("the command would be invalid: {e}")))?;
    let keys = signing_keys(&keys)?;
    // Through a JSON value, so that the signed payload's keys are in sorted order.
    let payload = serde_json::to_vec(&serde_json::to_value(&cmd)?)?;
    let env = sign_envelope(LifecycleCommand::PAYLOAD_TYPE, &payload, &keys);
    let mut bytes = serde_json::to_vec_pretty(&env)?;
    bytes.push(b'\n');
    write_out(j, out.as_deref(), &bytes)?;
    Ok(ExitCode::SUCCESS)
}
