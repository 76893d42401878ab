//! Fast-forward recovery: a rotation of the trust root that changes a role's keys or
//! threshold starts that role's serial floor over and takes out of force, in the same
//! transition, every installed input the new root no longer signs. In-process, on a device
//! under a tempdir with the recording nft backend; the real-kernel run is
//! tests/tests/rotation.rs.

mod common;

use common::*;
use ed25519_dalek::SigningKey;
use serde_json::{Value, json};
use trustd::audit::{Actor, Outcome, Record, read_records};
use trustd::bundle::TrustRoot;
use trustd::daemon::Device;
use trustd::netfilter::{RecordingBackend, canonical_digest, compile};
use trustd::policy::{LockdownReason, NetworkPlan, Overlay, effective};
use trustd::state::{Condition, Lifecycle};

const COMMAND: &str = "application/vnd.enigm.command+json";

fn me() -> Actor {
    Actor::this_process()
}

fn open(dev: &TestDevice) -> Device {
    Device::open(&dev.paths, me()).expect("open")
}

/// Root key 1, one policy key `policy` (threshold 1), intel key 5, command key 6.
fn root_with_policy_key(serial: u64, policy: &SigningKey) -> TrustRoot {
    trust_root_with(serial, &[&key(1)], 1, &[policy], 1)
}

/// The test root at `serial` with `key` as the intel role's only key.
fn root_with_intel_key(serial: u64, key: &SigningKey) -> TrustRoot {
    let mut new = trust_root();
    new.serial = serial;
    with_intel_key(new, key)
}

/// `root` with `key` as the intel role's only key.
fn with_intel_key(mut new: TrustRoot, key: &SigningKey) -> TrustRoot {
    let f = trustd::bundle::PublicKeyFile::new(&key.verifying_key());
    new.keys.insert(
        f.keyid.clone(),
        trustd::bundle::TrustKey {
            alg: f.alg,
            public: f.public,
        },
    );
    new.roles.intel.keyids = vec![f.keyid];
    new
}

fn rotation(new: &TrustRoot, signers: &[&SigningKey]) -> Vec<u8> {
    sign(ROOT, &serde_json::to_value(new).expect("json"), signers)
}

/// The attacker's policy: allows every destination, every protocol, every port.
fn allow_everything(serial: u64) -> Value {
    let mut p = policy(serial);
    p["network"]["allow"] = json!([
        {"dest": "0.0.0.0/0", "proto": "any"},
        {"dest": "::/0", "proto": "any"}
    ]);
    p["setup"] = json!({"bootstrap_allow": [{"dest": "0.0.0.0/0", "proto": "any"}]});
    p
}

/// The digest of lockdown with no allowlist at all (as if no policy had ever arrived).
fn bare_lockdown(d: &Device) -> String {
    canonical_digest(&compile(&effective(
        None,
        Overlay {
            privacy: d.state().privacy_mode,
            completed_steps: &d.state().completed_steps,
            lifecycle: d.state().lifecycle,
        },
    )))
}

fn last(records: &[Record], kind: &str) -> Record {
    records
        .iter()
        .rfind(|r| r.kind == kind)
        .unwrap_or_else(|| panic!("no {kind} record"))
        .clone()
}

fn records(dev: &TestDevice) -> Vec<Record> {
    read_records(&dev.paths.audit_dir()).expect("records")
}

/// Security regression test for the fast-forward attack (TUF): a stolen policy key signs
/// an allow-everything policy with serial u64::MAX; before the fix, rotating the policy key
/// left that policy in the kernel and refused every policy of the new key as a rollback,
/// and after a restart the device refused them all in lockdown. Now the rotation takes it
/// out of force at once (lockdown with no allowlist) and the new key's serial 2, then
/// 1000, are accepted, across a restart and a lost state.json.
#[test]
fn fast_forward_attack_with_a_stolen_policy_key_is_undone_by_rotating_the_key() {
    let (k1, stolen, fresh) = (key(1), key(2), key(8));
    let dev = TestDevice::with_root(&root_with_policy_key(1, &stolen));
    let mut fake = RecordingBackend::default();
    let mut d = open(&dev);
    let attack = sign(POLICY, &allow_everything(u64::MAX), &[&stolen]);
    d.apply_policy(&attack, me(), now())
        .expect("the stolen key signs");
    assert_eq!(d.enforce(&mut fake, me()).expect("enforce").mode, "direct");

    let a = d
        .apply_trust_root(
            &rotation(&root_with_policy_key(2, &fresh), &[&k1]),
            me(),
            now(),
        )
        .expect("rotation");
    assert_eq!((a.from_serial, a.to_serial), (1, 2));
    // Out of force in the same transition: no policy, floor 0.
    assert!(d.policy().is_none());
    assert_eq!(d.state().serials.policy, 0);
    assert_eq!(d.state().policy_digest, None);
    assert!(matches!(
        d.effective().network,
        NetworkPlan::Lockdown { reason: LockdownReason::NoPolicy, ref bootstrap } if bootstrap.is_empty()
    ));
    let e = d.enforce(&mut fake, me()).expect("enforce");
    assert_eq!((e.mode, e.digest.clone()), ("lockdown", bare_lockdown(&d)));
    // The rotation record names the role started over and the input that left force.
    let r = last(&records(&dev), "trust-root.rotate");
    assert_eq!(r.outcome, Outcome::Ok);
    let why = r.reason.clone().expect("reason");
    assert!(why.contains("roles started over: policy"), "{why}");
    assert!(
        why.contains("policy floor 18446744073709551615 -> 0; installed policy serial 18446744073709551615 left force"),
        "{why}"
    );
    assert_eq!(
        r.digests.get("left.policy").map(String::as_str),
        Some(trustd::bundle::sha256_hex(&attack).as_str())
    );
    // Set aside as evidence, read by nothing.
    assert!(!dev.paths.policy_bundle().exists());
    let aside = dev.paths.state_dir().join("policy.dsse.json.untrusted");
    assert_eq!(std::fs::read(&aside).expect("set aside"), attack);

    // The stolen key can no longer sign; the new key's serial 2 is accepted.
    let err = d
        .apply_policy(&sign(POLICY, &allow_everything(3), &[&stolen]), me(), now())
        .expect_err("stolen key");
    assert!(
        err.to_string()
            .contains("policy role needs valid signatures"),
        "{err}"
    );
    d.apply_policy(&sign(POLICY, &policy(2), &[&fresh]), me(), now())
        .expect("new key serial 2");
    assert_eq!(d.enforce(&mut fake, me()).expect("enforce").mode, "direct");
    drop(d);

    // Across a restart (trustd apply / run open the device again).
    let mut d = open(&dev);
    assert_eq!(d.condition(), &Condition::Loaded);
    assert_eq!(d.policy().map(|p| p.payload().serial), Some(2));
    assert_eq!(d.state().serials.policy, 2);
    assert_eq!(d.enforce(&mut fake, me()).expect("enforce").mode, "direct");
    drop(d);

    // And with state.json lost: the floor comes from the inputs the current root verifies.
    std::fs::remove_file(dev.paths.state_file()).expect("rm");
    let mut d = open(&dev);
    assert_eq!(d.condition(), &Condition::Missing);
    assert_eq!(d.policy().map(|p| p.payload().serial), Some(2));
    assert_eq!(d.state().serials.policy, 2);
    assert!(
        d.apply_policy(&sign(POLICY, &policy(2), &[&fresh]), me(), now())
            .is_err(),
        "rollback protection holds for the new key"
    );
    d.apply_policy(&sign(POLICY, &policy(1000), &[&fresh]), me(), now())
        .expect("new key serial 1000");
    drop(d);
    let d = open(&dev);
    assert_eq!(d.policy().map(|p| p.payload().serial), Some(1000));
}

/// Security regression test: losing state.json right after the rotation, with the
/// attacker's file still on disk (as after a crash between the root and the set-aside),
/// must not raise the floor back to the stolen key's serial.
#[test]
fn fast_forward_floor_does_not_come_back_from_a_file_the_new_root_does_not_sign() {
    let (k1, stolen, fresh) = (key(1), key(2), key(8));
    let dev = TestDevice::with_root(&root_with_policy_key(1, &stolen));
    let attack = sign(POLICY, &allow_everything(u64::MAX), &[&stolen]);
    let mut d = open(&dev);
    d.apply_policy(&attack, me(), now()).expect("apply");
    d.apply_trust_root(
        &rotation(&root_with_policy_key(2, &fresh), &[&k1]),
        me(),
        now(),
    )
    .expect("rotation");
    drop(d);
    // Put the attacker's file back where the last-good policy lives, and lose state.json.
    std::fs::write(dev.paths.policy_bundle(), &attack).expect("write");
    std::fs::remove_file(dev.paths.state_file()).expect("rm");
    let mut d = open(&dev);
    assert!(d.policy().is_none(), "not re-trusted");
    assert_eq!(d.state().serials.policy, 0, "not used to raise the floor");
    assert!(
        d.notes()
            .iter()
            .any(|n| n.starts_with("last-good policy no longer verifies")),
        "{:?}",
        d.notes()
    );
    d.apply_policy(&sign(POLICY, &policy(2), &[&fresh]), me(), now())
        .expect("new key serial 2");
}

/// Security regression test: a rotation interrupted after the new root was written but
/// before state.json (power lost) is finished by the next open, early-boot `trustd apply`
/// included: the attacker's policy is not restored and the floor starts over.
#[test]
fn fast_forward_recovery_is_finished_at_open_after_an_interrupted_rotation() {
    let (k1, stolen, fresh) = (key(1), key(2), key(8));
    let dev = TestDevice::with_root(&root_with_policy_key(1, &stolen));
    let attack = sign(POLICY, &allow_everything(u64::MAX), &[&stolen]);
    open(&dev)
        .apply_policy(&attack, me(), now())
        .expect("apply");
    // Only the commit point landed: the rotated root.
    std::fs::write(
        dev.paths.rotated_trust_root(),
        rotation(&root_with_policy_key(2, &fresh), &[&k1]),
    )
    .expect("write root");
    let mut fake = RecordingBackend::default();
    let mut d = open(&dev);
    assert_eq!(d.condition(), &Condition::Loaded);
    assert!(d.policy().is_none());
    assert_eq!(d.state().serials.policy, 0);
    let e = d.enforce(&mut fake, me()).expect("enforce");
    assert_eq!((e.mode, e.digest.clone()), ("lockdown", bare_lockdown(&d)));
    let r = last(&records(&dev), "trust-root.reset");
    let why = r.reason.expect("reason");
    assert!(
        why.starts_with("completed at load: roles started over: policy"),
        "{why}"
    );
    assert!(r.digests.contains_key("left.policy"));
    assert!(!dev.paths.policy_bundle().exists(), "set aside");
    d.apply_policy(&sign(POLICY, &policy(2), &[&fresh]), me(), now())
        .expect("new key serial 2");
    drop(d);
    // Written back: the next open has nothing more to start over.
    let d = open(&dev);
    assert_eq!(d.policy().map(|p| p.payload().serial), Some(2));
    let resets = records(&dev)
        .iter()
        .filter(|r| r.kind == "trust-root.reset")
        .count();
    assert_eq!(resets, 1);
}

/// Roles whose keys and threshold did not change keep rollback protection exactly: a
/// rotation of the root keys alone, or of the command keys, leaves the policy in force and
/// its floor where it was.
#[test]
fn a_rotation_that_keeps_a_roles_keys_keeps_its_floor_and_its_input() {
    let dev = TestDevice::new();
    let mut d = open(&dev);
    d.apply_policy(&signed_policy(5), me(), now())
        .expect("apply");
    d.apply_policy(&signed_policy(9), me(), now())
        .expect("apply");
    d.apply_intel(&sign(INTEL, &intel(4), &[&key(5)]), me(), now())
        .expect("intel");
    // New root keys (7) and nothing else changed.
    let new = trust_root_with(2, &[&key(7)], 1, &[&key(2), &key(3), &key(4)], 2);
    d.apply_trust_root(&rotation(&new, &[&key(1), &key(7)]), me(), now())
        .expect("rotation");
    assert_eq!(d.policy().map(|p| p.payload().serial), Some(9));
    assert_eq!(d.intel().map(|p| p.payload().serial), Some(4));
    assert_eq!((d.state().serials.policy, d.state().serials.intel), (9, 4));
    let err = d
        .apply_policy(&signed_policy(5), me(), now())
        .expect_err("rollback");
    assert!(
        err.to_string()
            .contains("not newer than the installed serial 9"),
        "{err}"
    );
    let why = last(&records(&dev), "trust-root.rotate")
        .reason
        .expect("reason");
    assert_eq!(
        why,
        "no role's keys or threshold changed: every floor stays"
    );
}

/// A rotation that only adds a key keeps the installed policy (the new threshold still
/// signs it) and its serial as the floor: rollback below it stays refused.
#[test]
fn a_rotation_that_only_adds_a_policy_key_keeps_rollback_protection() {
    let dev = TestDevice::new();
    let mut d = open(&dev);
    d.apply_policy(&signed_policy(5), me(), now())
        .expect("apply");
    d.apply_policy(&signed_policy(9), me(), now())
        .expect("apply");
    let new = trust_root_with(2, &[&key(1)], 1, &[&key(2), &key(3), &key(4), &key(8)], 2);
    d.apply_trust_root(&rotation(&new, &[&key(1)]), me(), now())
        .expect("rotation");
    assert_eq!(d.policy().map(|p| p.payload().serial), Some(9));
    assert_eq!(d.state().serials.policy, 9);
    assert!(d.apply_policy(&signed_policy(5), me(), now()).is_err());
    let why = last(&records(&dev), "trust-root.rotate")
        .reason
        .expect("reason");
    assert!(
        why.contains("policy floor 9 -> 9; installed policy serial 9 stays in force"),
        "{why}"
    );
}

/// Same keys, threshold raised from 1 to 2: a policy one key signed alone (a stolen one)
/// leaves force; the next needs two keys.
#[test]
fn a_threshold_raised_over_the_same_keys_takes_out_a_policy_one_key_signed() {
    let root = trust_root_with(1, &[&key(1)], 1, &[&key(2), &key(3)], 1);
    let dev = TestDevice::with_root(&root);
    let mut d = open(&dev);
    d.apply_policy(
        &sign(POLICY, &allow_everything(u64::MAX), &[&key(2)]),
        me(),
        now(),
    )
    .expect("one key");
    let new = trust_root_with(2, &[&key(1)], 1, &[&key(2), &key(3)], 2);
    d.apply_trust_root(&rotation(&new, &[&key(1)]), me(), now())
        .expect("rotation");
    assert!(d.policy().is_none());
    assert_eq!(d.state().serials.policy, 0);
    assert!(
        d.apply_policy(&sign(POLICY, &policy(2), &[&key(2)]), me(), now())
            .is_err(),
        "one key is not enough any more"
    );
    d.apply_policy(&sign(POLICY, &policy(2), &[&key(2), &key(3)]), me(), now())
        .expect("two keys");
}

/// A policy signed by both the old and the new key stays in force through the rotation
/// and a restart: the new root's threshold signs it.
#[test]
fn a_policy_signed_by_the_old_and_the_new_key_stays_in_force() {
    let (old, fresh) = (key(2), key(8));
    let dev = TestDevice::with_root(&root_with_policy_key(1, &old));
    let mut d = open(&dev);
    d.apply_policy(&sign(POLICY, &policy(7), &[&old, &fresh]), me(), now())
        .expect("apply");
    d.apply_trust_root(
        &rotation(&root_with_policy_key(2, &fresh), &[&key(1)]),
        me(),
        now(),
    )
    .expect("rotation");
    assert_eq!(d.policy().map(|p| p.payload().serial), Some(7));
    assert_eq!(d.state().serials.policy, 7);
    drop(d);
    let d = open(&dev);
    assert_eq!(d.policy().map(|p| p.payload().serial), Some(7));
    assert!(dev.paths.policy_bundle().exists());
}

/// Rotating back to an older root stays refused, whatever it does to the roles.
#[test]
fn a_rotation_back_to_an_older_root_is_refused() {
    let (k1, stolen, fresh) = (key(1), key(2), key(8));
    let dev = TestDevice::with_root(&root_with_policy_key(1, &stolen));
    let mut d = open(&dev);
    d.apply_trust_root(
        &rotation(&root_with_policy_key(3, &fresh), &[&k1]),
        me(),
        now(),
    )
    .expect("rotation");
    for serial in [1, 2, 3] {
        let err = d
            .apply_trust_root(
                &rotation(&root_with_policy_key(serial, &stolen), &[&k1]),
                me(),
                now(),
            )
            .expect_err("older root");
        assert!(
            err.to_string().contains(&format!(
                "serial {serial} is not newer than the installed serial 3 for the root role"
            )),
            "{err}"
        );
    }
    assert_eq!(d.trust_root().serial, 3);
    assert_eq!(d.trust_root().roles, root_with_policy_key(3, &fresh).roles);
}

fn command(d: &Device, serial: u64, action: &str) -> Value {
    json!({
        "schema": "enigm.command/v1",
        "serial": serial,
        "issued_at": "2026-11-01T00:00:00Z",
        "expires_at": "2027-11-01T00:00:00Z",
        "issuer": "mdm.example.org",
        "device": d.device_handle("mdm.example.org").expect("handle"),
        "action": action,
        "nonce": format!("nonce-{serial:08}"),
    })
}

/// Security regression test for the fast-forward attack on the command role: a stolen
/// command key enrolls with serial u64::MAX. Rotating the command key does not change the
/// lifecycle (never to anything more open), but the floor starts over, so the new key's
/// suspend is accepted, and the stolen command's serial is no floor after a lost
/// state.json either.
#[test]
fn fast_forward_with_a_stolen_command_key_is_undone_by_rotating_the_key() {
    let (k1, stolen, fresh) = (key(1), key(6), key(9));
    let dev = TestDevice::new();
    let mut d = open(&dev);
    let c = sign(COMMAND, &command(&d, u64::MAX, "enroll"), &[&stolen]);
    d.apply_command(&c, me(), now()).expect("enroll");
    let mut new = trust_root();
    new.serial = 2;
    new.keys.insert(
        trustd::bundle::key_id(&fresh.verifying_key()),
        serde_json::from_value(json!({
            "alg": "ed25519",
            "public": trustd::bundle::PublicKeyFile::new(&fresh.verifying_key()).public
        }))
        .expect("key"),
    );
    new.roles.command.keyids = vec![trustd::bundle::key_id(&fresh.verifying_key())];
    d.apply_trust_root(&rotation(&new, &[&k1]), me(), now())
        .expect("rotation");
    assert_eq!(d.state().lifecycle, Lifecycle::Enrolled, "unchanged");
    assert_eq!(d.state().serials.command, 0);
    assert!(!dev.paths.last_command().exists(), "set aside");
    let why = last(&records(&dev), "trust-root.rotate")
        .reason
        .expect("reason");
    assert!(why.contains("roles started over: command"), "{why}");
    d.apply_command(
        &sign(COMMAND, &command(&d, 1, "suspend"), &[&fresh]),
        me(),
        now(),
    )
    .expect("the new key's suspend");
    assert_eq!(d.state().lifecycle, Lifecycle::Suspended);
    drop(d);
    std::fs::remove_file(dev.paths.state_file()).expect("rm");
    let d = open(&dev);
    assert_eq!(
        d.state().serials.command,
        1,
        "from the new key's command only"
    );
}

/// Security regression test for the fast-forward attack on the intel role: a stolen intel
/// key installs an empty feed with serial u64::MAX (wiping the blocklists for good). After
/// the intel key is rotated the feed is out of force and the new key's feed is accepted.
#[test]
fn fast_forward_with_a_stolen_intel_key_is_undone_by_rotating_the_key() {
    let (k1, stolen, fresh) = (key(1), key(5), key(9));
    let dev = TestDevice::new();
    let mut d = open(&dev);
    let mut empty = intel(u64::MAX);
    empty["categories"] = json!({});
    d.apply_intel(&sign(INTEL, &empty, &[&stolen]), me(), now())
        .expect("stolen feed");
    let new = root_with_intel_key(2, &fresh);
    d.apply_trust_root(&rotation(&new, &[&k1]), me(), now())
        .expect("rotation");
    assert!(d.intel().is_none());
    assert_eq!(d.state().serials.intel, 0);
    assert!(!dev.paths.intel_feed().exists());
    d.apply_intel(&sign(INTEL, &intel(1), &[&fresh]), me(), now())
        .expect("new key's feed");
    assert_eq!(d.intel().map(|f| f.payload().serial), Some(1));
    drop(d);
    std::fs::remove_file(dev.paths.state_file()).expect("rm");
    let d = open(&dev);
    assert_eq!(d.intel().map(|f| f.payload().serial), Some(1));
    assert_eq!(d.state().serials.intel, 1);
}

/// The feed in force is held without its envelope (a 1M-entry feed's envelope is tens of
/// MiB); a rotation decides whether it stays in force from the stored envelope. Attack: the
/// stored feed is swapped (for one the new root's intel key signs, or garbage) or removed
/// behind trustd's back before a rotation: the rotation is refused and audited, the trust
/// root and the feed in force stay; with the stored feed back, the same rotation applies.
#[test]
fn a_rotation_is_refused_when_the_stored_feed_is_not_the_one_in_force() {
    let (k1, intel_key, fresh) = (key(1), key(5), key(9));
    let dev = TestDevice::new();
    let mut d = open(&dev);
    d.apply_intel(&sign(INTEL, &intel(3), &[&intel_key]), me(), now())
        .expect("feed");
    let stored = std::fs::read(dev.paths.intel_feed()).expect("stored feed");
    let new = root_with_intel_key(2, &fresh);
    let rot = rotation(&new, &[&k1]);
    for swap in [
        Some(sign(INTEL, &intel(3), &[&fresh])),
        Some(b"not an envelope".to_vec()),
        None,
    ] {
        match &swap {
            Some(b) => std::fs::write(dev.paths.intel_feed(), b).expect("swap"),
            None => std::fs::remove_file(dev.paths.intel_feed()).expect("rm"),
        }
        let err = d
            .apply_trust_root(&rot, me(), now())
            .expect_err("a rotation over a swapped stored feed");
        assert!(
            err.to_string().contains("intel"),
            "the error names the stored feed: {err}"
        );
        assert_eq!(d.trust_root().serial, 1, "the root in force stays");
        assert_eq!(d.intel().map(|f| f.payload().serial), Some(3));
        let r = last(&records(&dev), "root.apply");
        assert_eq!(r.outcome, Outcome::Refused);
        let why = r.reason.unwrap_or_default();
        assert!(
            why.contains("the stored intel feed could not be read back"),
            "{why}"
        );
    }
    std::fs::write(dev.paths.intel_feed(), &stored).expect("put back");
    d.apply_trust_root(&rot, me(), now())
        .expect("the same rotation with the stored feed back");
    assert_eq!(d.trust_root().serial, 2);
    assert!(d.intel().is_none(), "the old key's feed leaves force");
}

/// Security regression test: a rotated root on disk replaced by an earlier rotation (still
/// validly self-signed, serial above the provisioned one) is refused at open, so that the
/// keys a rotation removed do not come back; `trustd apply` then enforces lockdown.
#[test]
fn an_older_rotated_root_copied_over_the_newer_one_is_refused_at_open() {
    let (k1, stolen, fresh) = (key(1), key(2), key(8));
    let dev = TestDevice::with_root(&root_with_policy_key(1, &stolen));
    let older = rotation(&root_with_policy_key(2, &stolen), &[&k1]);
    let mut d = open(&dev);
    d.apply_trust_root(&older, me(), now()).expect("rotation 2");
    d.apply_trust_root(
        &rotation(&root_with_policy_key(3, &fresh), &[&k1]),
        me(),
        now(),
    )
    .expect("rotation 3");
    drop(d);
    std::fs::write(dev.paths.rotated_trust_root(), &older).expect("write");
    let err = Device::open(&dev.paths, me()).expect_err("older root");
    assert!(
        err.to_string()
            .contains("serial 2 is older than the trust root serial 3 this device accepted"),
        "{err}"
    );
    let r = last(&records(&dev), "trust-root.load");
    assert_eq!(r.outcome, Outcome::Error);
    // Removed altogether: the provisioned root (serial 1) is older still.
    std::fs::remove_file(dev.paths.rotated_trust_root()).expect("rm");
    let err = Device::open(&dev.paths, me()).expect_err("provisioned root");
    assert!(err.to_string().contains("serial 1 is older"), "{err}");
}

/// A state.json written before the role keys were recorded loads as it is (no role starts
/// over: its floors were set under the root in force) and is written back with them, so a
/// later rotation interrupted before state.json is finished at open.
#[test]
fn a_state_json_without_role_keys_adopts_the_root_in_force_and_is_written_back() {
    let dev = TestDevice::new();
    let mut d = open(&dev);
    d.apply_policy(&signed_policy(9), me(), now())
        .expect("apply");
    drop(d);
    let mut v: Value =
        serde_json::from_slice(&std::fs::read(dev.paths.state_file()).expect("read"))
            .expect("json");
    v.as_object_mut().expect("object").remove("floor_roles");
    std::fs::write(
        dev.paths.state_file(),
        serde_json::to_vec(&v).expect("json"),
    )
    .expect("write");
    let d = open(&dev);
    assert_eq!(d.condition(), &Condition::Loaded);
    assert_eq!(d.policy().map(|p| p.payload().serial), Some(9));
    assert_eq!(d.state().serials.policy, 9);
    drop(d);
    let v: Value = serde_json::from_slice(&std::fs::read(dev.paths.state_file()).expect("read"))
        .expect("json");
    assert_eq!(
        v["floor_roles"],
        serde_json::to_value(&trust_root().roles).expect("json")
    );
}

/// Security regression test, in the kernel (nftables in a namespace of its own): stolen
/// policy and intel keys put an allow-everything policy and a feed of their choosing in
/// force, both with serial u64::MAX. After a rotation of both keys, the enforcement the
/// daemon does before it answers leaves lockdown with no allowlist in `inet trustd` (read
/// back) and none of the stolen feed's entries in `inet trustd_intel`.
#[test]
fn fast_forward_inputs_are_out_of_the_kernel_after_the_rotation() {
    if !can_run_privileged(&["ip", "nft"]) {
        return;
    }
    let ns = Netns::new("ffwd");
    let mut nft = trustd::netfilter::NftBackend::in_netns(&ns.name);
    let (k1, stolen, fresh) = (key(1), key(2), key(8));
    let dev = TestDevice::with_root(&root_with_policy_key(1, &stolen));
    let mut d = open(&dev);
    d.apply_policy(
        &sign(POLICY, &allow_everything(u64::MAX), &[&stolen]),
        me(),
        now(),
    )
    .expect("policy");
    d.apply_intel(&sign(INTEL, &intel(u64::MAX), &[&key(5)]), me(), now())
        .expect("feed");
    assert_eq!(d.enforce(&mut nft, me()).expect("enforce").mode, "direct");
    assert_eq!(d.enforce_intel(&mut nft, me()).expect("intel"), 2);
    assert!(ns.sh("nft list table inet trustd").contains("0.0.0.0/0"));
    assert!(
        ns.sh("nft list table inet trustd_intel")
            .contains("198.51.100.7")
    );

    let new = with_intel_key(root_with_policy_key(2, &fresh), &key(9));
    d.apply_trust_root(&rotation(&new, &[&k1]), me(), now())
        .expect("rotation");
    let e = d.enforce(&mut nft, me()).expect("enforce");
    assert_eq!((e.mode, e.digest.clone()), ("lockdown", bare_lockdown(&d)));
    assert_eq!(d.enforce_intel(&mut nft, me()).expect("intel"), 0);
    let table = ns.sh("nft list table inet trustd");
    assert!(!table.contains("0.0.0.0/0"), "{table}");
    let intel_table = ns.sh("nft list table inet trustd_intel");
    assert!(!intel_table.contains("198.51.100.7"), "{intel_table}");
    assert!(!intel_table.contains("2001:db8:bad::"), "{intel_table}");
}
