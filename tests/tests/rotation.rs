//! Trust-root rotation against the fast-forward attack, with real nftables in the lab's
//! namespaces and real packets: the rotation takes the stolen key's policy out of the
//! kernel before its call returns (the daemon on a private bus) or at the next early-boot
//! `trustd apply` (offline), and the new key's policies are accepted from serial 2 on,
//! across a restart and a lost state.json.

use std::process::Command;

use ed25519_dalek::SigningKey;
use serde_json::{Value, json};
use tests::bin;
use tests::lab::{Lab, can_run, lab_policy, trust_root, wait_ready};
use trustd::bundle::generate_key;
use trustd::dbus::client::Client;

const TOOLS: &[&str] = &["ip", "nft", "dbus-daemon", "setpriv"];
const POLICY: &str = "application/vnd.enigm.policy+json";
const ROOT: &str = "application/vnd.enigm.trust-root+json";

/// The attacker's policy: the lab's direct policy, plus every destination on every
/// protocol, with the highest serial there is.
fn allow_everything() -> Value {
    let mut p = lab_policy("direct");
    p["serial"] = json!(u64::MAX);
    p["network"]["allow"] = json!([
        {"dest": "0.0.0.0/0", "proto": "any"},
        {"dest": "::/0", "proto": "any"}
    ]);
    p
}

/// A signed rotation to a root whose policy role is `fresh` alone (threshold 1); the
/// root, intel and command roles stay with the lab's first key, which signs it.
fn rotation(lab: &Lab, fresh: &SigningKey) -> std::path::PathBuf {
    let mut root = trust_root(&lab.keys()[0], &[fresh], 1);
    root.serial = 2;
    lab.sign_file(
        "rotation.dsse.json",
        ROOT,
        &serde_json::to_value(&root).expect("json"),
        &lab.keys()[..1],
    )
}

fn signed_by(lab: &Lab, key: &SigningKey, serial: u64) -> std::path::PathBuf {
    let mut p = lab_policy("direct");
    p["serial"] = json!(serial);
    lab.sign_file(
        &format!("new-{serial}.dsse.json"),
        POLICY,
        &p,
        std::slice::from_ref(key),
    )
}

/// `trustctl load` offline; its exit code and stderr.
fn load(lab: &Lab, file: &std::path::Path) -> (i32, String) {
    let o = Command::new(bin("trustctl"))
        .args(["load", "--prefix"])
        .arg(lab.prefix.path())
        .arg(file)
        .output()
        .expect("trustctl");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The policy the device would load now: its serial, and the floor.
fn policy_on_disk(lab: &Lab) -> (Option<u64>, u64) {
    let paths = lab.paths();
    let root = trustd::state::load_trust_root(&paths).expect("root");
    let l = trustd::state::StateStore::new(paths).load(&root);
    (l.policy.map(|p| p.payload().serial), l.state.serials.policy)
}

/// Security regression test for the fast-forward attack: the policy keys are stolen and
/// sign an allow-everything policy with serial u64::MAX, which the device enforces. The
/// admin rotates the trust root to a new policy key over the bus: when the call returns,
/// the kernel holds lockdown with no allowlist (packets that the attacker's policy let
/// through no longer leave); the new key's serial 2 is accepted and enforced; it stays in
/// force after a restart (`trustd apply`), and a lost state.json brings back neither the
/// attacker's policy nor its floor: serial 1000 is accepted, serial 2 again is refused.
#[test]
fn fast_forward_attack_is_undone_by_a_rotation_in_the_kernel() {
    if !can_run(TOOLS) {
        return;
    }
    let lab = Lab::new("ff", false);
    let attack = lab.sign_file("attack.dsse.json", POLICY, &allow_everything(), lab.keys());
    assert_eq!(load(&lab, &attack).0, 0, "the stolen keys sign");
    let mut daemon = lab.run_daemon(1000);
    wait_ready(&daemon.bus.address);
    // The attack is in force: port 80 (allowed by no honest policy) gets through.
    assert!(lab.probe("10.99.0.2:80/tcp", None), "attack in force");

    let fresh = generate_key().expect("key");
    let rt = tests::rt();
    rt.block_on(async {
        let c = Client::connect(Some(&daemon.bus.address))
            .await
            .expect("connect");
        let r = c
            .apply_trust_root(&std::fs::read(rotation(&lab, &fresh)).expect("read"))
            .await
            .expect("rotation");
        assert_eq!((r.from_serial, r.to_serial), (1, 2));
    });
    // Right after the reply: lockdown with no allowlist, not even the bootstrap one.
    for target in [
        "10.99.0.2:80/tcp",
        "10.99.0.2:443/tcp",
        "10.99.0.2:8443/tcp",
        "10.99.0.2:9999/udp",
        "[fd99::2]:443/tcp",
    ] {
        assert!(!lab.probe(target, None), "{target} after the rotation");
    }
    let table = lab.dev_sh("nft list table inet trustd");
    assert!(!table.contains("0.0.0.0/0"), "{table}");
    rt.block_on(async {
        let c = Client::connect(Some(&daemon.bus.address))
            .await
            .expect("connect");
        assert_eq!(
            c.posture_property("NetworkMode").await.expect("mode"),
            json!("lockdown")
        );
        assert_eq!(
            c.posture_property("PolicySerial").await.expect("serial"),
            json!(0)
        );
        let r = c
            .apply_bundle(&std::fs::read(signed_by(&lab, &fresh, 2)).expect("read"))
            .await
            .expect("the new key's serial 2");
        assert_eq!((r.from_serial, r.to_serial), (0, 2));
    });
    assert!(lab.probe("10.99.0.2:443/tcp", None), "serial 2 enforced");
    assert!(!lab.probe("10.99.0.2:80/tcp", None));
    let records = trustd::audit::read_records(&lab.paths().audit_dir()).expect("audit");
    let rotate = records
        .iter()
        .rfind(|r| r.kind == "trust-root.rotate")
        .expect("rotation record");
    assert!(
        rotate
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("roles started over: policy")),
        "{rotate:?}"
    );
    assert!(rotate.digests.contains_key("left.policy"));
    daemon.terminate();

    // A restart: the early-boot path enforces the new key's serial 2.
    let out = lab.apply();
    assert!(out.starts_with("enforcing direct"), "{out}");
    assert!(lab.probe("10.99.0.2:443/tcp", None));
    assert!(!lab.probe("10.99.0.2:80/tcp", None));
    assert_eq!(policy_on_disk(&lab), (Some(2), 2));

    // state.json lost: lockdown (lifecycle unknown), serial 2 still the policy and the floor.
    std::fs::remove_file(lab.paths().state_file()).expect("rm");
    assert_eq!(policy_on_disk(&lab), (Some(2), 2));
    let (code, err) = load(&lab, &signed_by(&lab, &fresh, 2));
    assert_ne!(code, 0);
    assert!(
        err.contains("not newer than the installed serial 2"),
        "{err}"
    );
    assert_eq!(load(&lab, &signed_by(&lab, &fresh, 1000)).0, 0);
    assert_eq!(policy_on_disk(&lab), (Some(1000), 1000));
    let (code, err) = load(&lab, &attack);
    assert_ne!(code, 0);
    assert!(err.contains("policy role needs valid signatures"), "{err}");
    assert!(!lab.probe("10.99.0.2:80/tcp", None));
}

/// Security regression test: a rotation loaded offline (`trustctl load`, as an image
/// update would) is honoured by the early-boot `trustd apply`, which must not put the
/// stolen key's policy back in the kernel.
#[test]
fn fast_forward_policy_is_not_restored_by_early_boot_apply_after_a_rotation() {
    if !can_run(TOOLS) {
        return;
    }
    let lab = Lab::new("fb", false);
    let attack = lab.sign_file("attack.dsse.json", POLICY, &allow_everything(), lab.keys());
    assert_eq!(load(&lab, &attack).0, 0);
    assert!(lab.apply().starts_with("enforcing direct"));
    assert!(lab.probe("10.99.0.2:80/tcp", None), "attack in force");
    let fresh = generate_key().expect("key");
    assert_eq!(load(&lab, &rotation(&lab, &fresh)).0, 0);
    let out = lab.apply();
    assert!(out.starts_with("enforcing lockdown"), "{out}");
    assert!(!lab.probe("10.99.0.2:80/tcp", None));
    assert!(
        !lab.probe("10.99.0.2:8443/tcp", None),
        "no bootstrap allowlist"
    );
    assert_eq!(policy_on_disk(&lab), (None, 0));
    assert_eq!(load(&lab, &signed_by(&lab, &fresh, 2)).0, 0);
    assert!(lab.apply().starts_with("enforcing direct"));
    assert!(lab.probe("10.99.0.2:443/tcp", None));
    assert!(!lab.probe("10.99.0.2:80/tcp", None));
}
