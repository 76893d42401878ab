//! Device lifecycle through signed commands, device handles, and setup steps, against trustd
//! on a private bus in a lab namespace: effects seen in posture and in the kernel.

use std::time::Duration;

use serde_json::{Value, json};
use tests::bus::BusPolicy;
use tests::lab::{Lab, can_run, lab_policy, serve};
use tests::rt;
use trustd::dbus::client::{Client, PostureChanges};
use trustd::timefmt::Timestamp;

const TOOLS: &[&str] = &["ip", "nft", "dbus-daemon"];

fn command(serial: u64, issuer: &str, device: &str, action: &str) -> Value {
    let now = Timestamp::now();
    json!({
        "schema": "enigm.command/v1", "serial": serial,
        "issued_at": now.plus_secs(-60).to_string(), "expires_at": now.plus_secs(3600).to_string(),
        "issuer": issuer, "device": device, "action": action,
        "nonce": format!("nonce-{serial}-{action}"),
    })
}

async fn lifecycle_change(changes: &mut PostureChanges) -> Value {
    loop {
        let ch = tokio::time::timeout(Duration::from_secs(5), changes.next())
            .await
            .expect("a PropertiesChanged within 5 s")
            .expect("stream");
        if let Some((_, v)) = ch.iter().find(|(k, _)| k == "Lifecycle") {
            return v.clone();
        }
    }
}

fn refused(e: &zbus::Error) -> String {
    match e {
        zbus::Error::MethodError(name, msg, _) => {
            assert_eq!(name.as_str(), "org.enigm.Trust1.Error.Refused", "{msg:?}");
            msg.clone().unwrap_or_default()
        }
        other => panic!("expected a refusal, got {other}"),
    }
}

/// Enroll, refused transitions, replay, another device's command, suspend (lockdown in the
/// kernel), resume, revoke (secret destroyed): each audited, each signalled.
#[test]
fn lifecycle_commands_bound_to_this_device_change_posture_and_the_kernel() {
    if !can_run(TOOLS) {
        return;
    }
    let (lab, daemon) = serve("lc", lab_policy("direct"), BusPolicy::Shipped);
    let addr = daemon.bus.address.clone();
    rt().block_on(async {
        let c = Client::connect(Some(&addr)).await.expect("connect");
        let mut changes = c.posture_changes().await.expect("subscribe");
        let mdm = c.device_handle("mdm.example.org").await.expect("handle");
        let other = c.device_handle("attest.example.org").await.expect("handle");
        assert_ne!(mdm, other, "handles differ across verifiers");
        assert_eq!(
            mdm,
            c.device_handle("mdm.example.org").await.expect("again")
        );
        assert_eq!(mdm.len(), 22);
        let send = async |v: &Value| {
            let f = lab.sign_command(v);
            c.apply_command(&std::fs::read(f).expect("read")).await
        };
        assert_eq!(
            c.posture_property("Lifecycle").await.expect("p"),
            json!("unenrolled")
        );

        // Not allowed from unenrolled.
        let e = send(&command(1, "mdm.example.org", &mdm, "suspend"))
            .await
            .expect_err("refused");
        assert!(refused(&e).contains("suspend is not allowed from unenrolled"));

        // Enroll.
        let enroll = command(2, "mdm.example.org", &mdm, "enroll");
        let (from, to) = send(&enroll).await.expect("enroll");
        assert_eq!((from.as_str(), to.as_str()), ("unenrolled", "enrolled"));
        assert_eq!(lifecycle_change(&mut changes).await, json!("enrolled"));
        assert!(
            lab.probe("10.99.0.2:443/tcp", None),
            "enrolled: the policy is in force"
        );

        // The same command again: its serial is spent.
        let e = send(&enroll).await.expect_err("replay");
        assert!(refused(&e).contains("not newer"), "{e}");
        // A command for this device's handle under another verifier, or for another device.
        let e = send(&command(3, "mdm.example.org", &other, "suspend"))
            .await
            .expect_err("x");
        assert!(refused(&e).contains("not this one"), "{e}");
        let e = send(&command(
            4,
            "mdm.example.org",
            "AAAAAAAAAAAAAAAAAAAAAA",
            "suspend",
        ))
        .await
        .expect_err("x");
        assert!(refused(&e).contains("not this one"), "{e}");

        // Suspend: lockdown, setup apps only.
        let (_, to) = send(&command(5, "mdm.example.org", &mdm, "suspend"))
            .await
            .expect("suspend");
        assert_eq!(to, "suspended");
        assert_eq!(lifecycle_change(&mut changes).await, json!("suspended"));
        assert!(
            !lab.probe("10.99.0.2:443/tcp", None),
            "suspended: lockdown in the kernel"
        );
        assert!(
            lab.probe("10.99.0.2:8443/tcp", None),
            "the bootstrap allowlist stays open"
        );
        assert_eq!(
            c.posture_property("NetworkMode").await.expect("p"),
            json!("lockdown")
        );
        assert_eq!(
            c.posture_property("Level").await.expect("p"),
            json!("untrusted")
        );

        // Resume.
        send(&command(6, "mdm.example.org", &mdm, "resume"))
            .await
            .expect("resume");
        assert_eq!(lifecycle_change(&mut changes).await, json!("enrolled"));
        assert!(lab.probe("10.99.0.2:443/tcp", None));

        // Revoke: the secret is gone, no handle, no further command can be bound.
        assert!(lab.paths().device_secret().exists());
        send(&command(7, "mdm.example.org", &mdm, "revoke"))
            .await
            .expect("revoke");
        assert_eq!(lifecycle_change(&mut changes).await, json!("revoked"));
        assert!(
            !lab.paths().device_secret().exists(),
            "revoke destroys the device secret"
        );
        assert!(!lab.probe("10.99.0.2:443/tcp", None));
        let e = c
            .device_handle("mdm.example.org")
            .await
            .expect_err("no handle");
        assert!(refused(&e).contains("no handles"), "{e}");
        let e = send(&command(8, "mdm.example.org", &mdm, "retire"))
            .await
            .expect_err("x");
        assert!(refused(&e).contains("no secret"), "{e}");
    });
    // Every command, accepted or refused, is in the audit log with the handle it named.
    let records = trustd::audit::read_records(&lab.paths().audit_dir()).expect("audit");
    let cmds: Vec<(String, String)> = records
        .iter()
        .filter(|r| r.kind == "command.apply")
        .map(|r| (format!("{:?}", r.outcome), r.to.clone().unwrap_or_default()))
        .collect();
    // 4 accepted; refused: a transition, the replay, two other devices, one after revoke.
    assert_eq!(cmds.len(), 9, "{cmds:?}");
    let transitions: Vec<&str> = cmds
        .iter()
        .filter(|c| c.0 == "Ok")
        .map(|c| c.1.as_str())
        .collect();
    assert_eq!(
        transitions,
        ["enrolled", "suspended", "enrolled", "revoked"]
    );
    assert!(
        records
            .iter()
            .any(|r| r.kind == "device.secret" && r.to.as_deref() == Some("destroyed"))
    );
    assert!(
        records
            .iter()
            .filter(|r| r.kind == "command.apply" && r.outcome == trustd::audit::Outcome::Ok)
            .all(|r| r.digests.get("device").map(String::len) == Some(22)),
        "accepted commands record the handle they were bound to"
    );
    drop(daemon);
}

/// Handles are stable across restarts of trustd, and unlinkable across verifiers.
#[test]
fn handles_are_stable_across_restarts_and_differ_per_verifier() {
    if !can_run(TOOLS) {
        return;
    }
    let (lab, daemon) = serve("hd", lab_policy("direct"), BusPolicy::Shipped);
    let ids = ["mdm.example.org", "attest.example.org", "vpn.example.org"];
    let get = |addr: &str| -> Vec<String> {
        rt().block_on(async {
            let c = Client::connect(Some(addr)).await.expect("connect");
            let mut v = Vec::new();
            for id in ids {
                v.push(c.device_handle(id).await.expect("handle"));
            }
            v
        })
    };
    let first = get(&daemon.bus.address);
    // trustctl makes and sends a command for the handle it reads from the daemon.
    let bus = daemon.bus.address.clone();
    let ctl = |args: &[&str]| -> tests::Run {
        let mut all = vec!["--bus", bus.as_str()];
        all.extend(args);
        tests::trustctl(lab.prefix.path(), &all)
    };
    let h = ctl(&["device", "handle", "mdm.example.org"]);
    assert_eq!(
        (h.code, h.stdout.trim()),
        (0, first[0].as_str()),
        "{}",
        h.stderr
    );
    let key = lab.command_key_file();
    let key = key.to_str().expect("utf-8");
    let out = lab.prefix.path().join("enroll.dsse.json");
    let out = out.to_str().expect("utf-8");
    let made = ctl(&[
        "device",
        "command",
        "--action",
        "enroll",
        "--issuer",
        "mdm.example.org",
        "--device",
        &first[0],
        "--serial",
        "1",
        "--key",
        key,
        "-o",
        out,
    ]);
    assert_eq!(made.code, 0, "{}", made.stderr);
    let sent = ctl(&["device", "apply", out]);
    assert_eq!(
        (sent.code, sent.stdout.trim()),
        (0, "lifecycle unenrolled -> enrolled"),
        "{}",
        sent.stderr
    );
    let again = ctl(&["device", "apply", out]);
    assert_eq!(again.code, 1, "a replay exits 1: {}", again.stderr);
    drop(daemon);
    let d2 = lab.run_daemon_on(BusPolicy::Shipped, 1000);
    tests::lab::wait_ready(&d2.bus.address);
    assert_eq!(get(&d2.bus.address), first, "stable across restarts");
    let unique: std::collections::BTreeSet<_> = first.iter().collect();
    assert_eq!(unique.len(), ids.len(), "one handle per verifier");
    // Nothing of a handle is in the secret's bytes or anywhere else on disk but the log.
    let secret = std::fs::read(lab.paths().device_secret()).expect("secret");
    assert_eq!(secret.len(), 32);
    drop(Lab::paths(&lab));
}

/// A new bundle that adds a required step puts the device back into setup for that step.
#[test]
fn a_new_required_step_puts_the_device_back_into_setup() {
    if !can_run(TOOLS) {
        return;
    }
    let mut p = lab_policy("direct");
    p["setup"]["required_steps"] = json!(["eula"]);
    let (mut lab, daemon) = serve("su", p.clone(), BusPolicy::Shipped);
    let addr = daemon.bus.address.clone();
    rt().block_on(async {
        let c = Client::connect(Some(&addr)).await.expect("connect");
        c.complete_step("eula").await.expect("eula");
        assert!(lab.probe("10.99.0.2:443/tcp", None));
        let e = c.complete_step("wifi").await.expect_err("unknown step");
        assert!(matches!(&e, zbus::Error::MethodError(n, _, _) if n.as_str() == "org.enigm.Trust1.Error.UnknownStep"), "{e}");

        p["setup"]["required_steps"] = json!(["eula", "wifi"]);
        let b = lab.sign(p.clone());
        c.apply_bundle(&std::fs::read(b).expect("read")).await.expect("apply");
        assert_eq!(c.posture_property("PendingSetupSteps").await.expect("p"), json!(["wifi"]));
        assert_eq!(c.posture_property("SetupComplete").await.expect("p"), json!(false));
        assert!(!lab.probe("10.99.0.2:443/tcp", None), "back to the bootstrap allowlist");
        c.complete_step("wifi").await.expect("wifi");
        assert_eq!(c.posture_property("SetupComplete").await.expect("p"), json!(true));
        assert!(lab.probe("10.99.0.2:443/tcp", None));
    });
    let records = trustd::audit::read_records(&lab.paths().audit_dir()).expect("audit");
    let steps: Vec<String> = records
        .iter()
        .filter(|r| r.kind == "setup.step")
        .map(|r| format!("{:?} {}", r.outcome, r.reason.clone().unwrap_or_default()))
        .collect();
    assert_eq!(
        steps.len(),
        3,
        "each step audited, the unknown one too: {steps:?}"
    );
}

/// Losing state.json does not reopen replay: the last accepted command's envelope is kept
/// beside the secret, and its serial is the floor again. A newer enroll re-enrolls the
/// device from `unknown` and makes a new secret (every handle changes).
#[test]
fn the_command_floor_survives_a_lost_state_json() {
    if !can_run(TOOLS) {
        return;
    }
    let (lab, daemon) = serve("cf", lab_policy("direct"), BusPolicy::Shipped);
    let mdm = rt().block_on(async {
        let c = Client::connect(Some(&daemon.bus.address))
            .await
            .expect("connect");
        let mdm = c.device_handle("mdm.example.org").await.expect("handle");
        for (serial, action) in [(2, "enroll"), (3, "suspend")] {
            let f = lab.sign_command(&command(serial, "mdm.example.org", &mdm, action));
            c.apply_command(&std::fs::read(f).expect("read"))
                .await
                .expect(action);
        }
        mdm
    });
    drop(daemon);
    std::fs::remove_file(lab.paths().state_file()).expect("lose state.json");
    let d2 = lab.run_daemon_on(BusPolicy::Shipped, 1000);
    tests::lab::wait_ready(&d2.bus.address);
    rt().block_on(async {
        let c = Client::connect(Some(&d2.bus.address))
            .await
            .expect("connect");
        assert_eq!(
            c.posture_property("Lifecycle").await.expect("p"),
            json!("unknown")
        );
        let old = lab.sign_command(&command(2, "mdm.example.org", &mdm, "enroll"));
        let e = c
            .apply_command(&std::fs::read(old).expect("read"))
            .await
            .expect_err("the old enroll is spent");
        assert!(
            refused(&e).contains("not newer than the installed serial 3"),
            "{e}"
        );
        let new = lab.sign_command(&command(4, "mdm.example.org", &mdm, "enroll"));
        let (from, to) = c
            .apply_command(&std::fs::read(new).expect("read"))
            .await
            .expect("a newer enroll");
        assert_eq!((from.as_str(), to.as_str()), ("unknown", "enrolled"));
        let again = c.device_handle("mdm.example.org").await.expect("handle");
        assert_ne!(
            again, mdm,
            "re-enrollment after lost state makes a new secret"
        );
    });
}
