//! Envelopes and the device's files, offline: `verify`, `load`, `state`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use serde_json::json;

use trustd::Paths;
use trustd::audit::Actor;
use trustd::bundle::{
    Envelope, Payload, Role, TrustRoot, Verified, VerifyError, verify, verify_rotation,
};
use trustd::daemon::{Device, DeviceError};
use trustd::policy::{IntelFeed, LifecycleCommand, Policy};
use trustd::state::{StateStore, StoredRole, load_trust_root};
use trustd::timefmt::Timestamp;

use super::output::{Refused, print, read, refused};

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

/// The role whose input the envelope claims to carry, by its `payloadType`; anything else
/// (not an envelope, an unknown type) is taken for a policy, whose verifier then gives the
/// precise refusal.
fn envelope_role(bytes: &[u8]) -> Role {
    serde_json::from_slice::<Envelope>(bytes)
        .ok()
        .and_then(|e| StoredRole::of_payload_type(&e.payload_type))
        .map_or(Role::Policy, |s| s.role)
}

pub(crate) fn verify_cmd(
    j: bool,
    root_path: &Path,
    installed: u64,
    envelope: &Path,
) -> Result<ExitCode> {
    let bytes = read(envelope)?;
    let root: TrustRoot = trustd::json::parse_strict(&read(root_path)?)
        .map_err(|e| refused(format!("trust root {}: {e}", root_path.display())))?;
    root.validate()
        .map_err(|e| refused(format!("trust root {}: {e}", root_path.display())))?;
    let now = Timestamp::now();
    let refused = |e: VerifyError| anyhow::Error::new(Refused(e.to_string()));
    let (value, text) = match envelope_role(&bytes) {
        Role::Intel => {
            describe(&verify::<IntelFeed>(&bytes, &root, now, installed).map_err(refused)?)
        }
        Role::Command => {
            describe(&verify::<LifecycleCommand>(&bytes, &root, now, installed).map_err(refused)?)
        }
        Role::Root => describe(&verify_rotation(&bytes, &root, now).map_err(refused)?),
        Role::Policy => {
            describe(&verify::<Policy>(&bytes, &root, now, installed).map_err(refused)?)
        }
    };
    print(j, value, &text);
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn load(j: bool, prefix: &Path, envelope: &Path) -> Result<ExitCode> {
    let bytes = read(envelope)?;
    let paths = Paths::new(prefix);
    trustd::files::owner::refuse_foreign_owner(&paths).map_err(|e| refused(e.to_string()))?;
    let mut dev = Device::open(&paths, Actor::this_process())?;
    let now = Timestamp::now();
    let result = match envelope_role(&bytes) {
        Role::Intel => dev.apply_intel(&bytes, Actor::this_process(), now),
        Role::Root => dev.apply_trust_root(&bytes, Actor::this_process(), now),
        // A lifecycle command is not loaded offline (`device command` goes to the daemon):
        // like anything else, it goes to the policy verifier, which refuses its type.
        Role::Policy | Role::Command => dev.apply_policy(&bytes, Actor::this_process(), now),
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

pub(crate) fn state(j: bool, prefix: &Path) -> Result<ExitCode> {
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
