//! Persisted state as a device meets it after crashes, lost files and tampering: it always
//! loads, and anything it cannot trust makes it more restrictive, never less.

mod common;

use common::*;
use trustd::audit::{Actor, Outcome, read_records};
use trustd::bundle::{TrustRoot, sign_envelope};
use trustd::daemon::Device;
use trustd::state::{Condition, Lifecycle, StateStore, load_trust_root};

fn open(dev: &TestDevice) -> Device {
    Device::open(&dev.paths, Actor::this_process()).expect("open")
}

#[test]
fn a_new_device_starts_unenrolled_with_no_policy() {
    let dev = TestDevice::new();
    let d = open(&dev);
    assert_eq!(d.condition(), &Condition::Fresh);
    assert_eq!(d.state().lifecycle, Lifecycle::Unenrolled);
    assert!(d.policy().is_none());
}

#[test]
fn lost_state_json_loads_most_restrictive_and_keeps_the_serial_floor() {
    let dev = TestDevice::new();
    open(&dev)
        .apply_policy(&signed_policy(8), Actor::this_process(), now())
        .expect("apply");
    std::fs::remove_file(dev.paths.state_file()).expect("rm");

    let mut d = open(&dev);
    assert_eq!(d.condition(), &Condition::Missing);
    assert_eq!(d.state().lifecycle, Lifecycle::Unknown);
    assert!(d.state().privacy_mode, "privacy is forced on");
    assert!(d.state().completed_steps.is_empty());
    assert!(d.notes()[0].starts_with("state.json is missing while other state exists"));
    // Losing state.json must not reopen rollback: serial 8 came from the bundle on disk.
    let err = d
        .apply_policy(&signed_policy(8), Actor::this_process(), now())
        .expect_err("replay");
    assert!(
        err.to_string()
            .contains("not newer than the installed serial 8"),
        "{err}"
    );
    let records = read_records(&dev.paths.audit_dir()).expect("records");
    let load = records
        .iter()
        .rfind(|r| r.kind == "state.load")
        .expect("the second load");
    assert_eq!(
        (load.kind.as_str(), load.outcome),
        ("state.load", Outcome::Error)
    );
}

#[test]
fn corrupt_state_json_loads_most_restrictive_and_says_why() {
    let dev = TestDevice::new();
    open(&dev)
        .apply_policy(&signed_policy(3), Actor::this_process(), now())
        .expect("apply");
    std::fs::write(dev.paths.state_file(), b"{\"version\":1,").expect("corrupt");
    let d = open(&dev);
    let Condition::Corrupt(why) = d.condition() else {
        panic!("not corrupt: {:?}", d.condition());
    };
    assert!(why.starts_with("state.json: EOF while parsing"), "{why}");
    assert_eq!(d.state().lifecycle, Lifecycle::Unknown);
    assert_eq!(d.state().serials.policy, 3);
}

#[test]
fn power_loss_between_bundle_and_state_completes_the_install() {
    let dev = TestDevice::new();
    open(&dev)
        .apply_policy(&signed_policy(3), Actor::this_process(), now())
        .expect("apply");
    // As if the new bundle's rename landed but state.json's did not.
    std::fs::write(dev.paths.policy_bundle(), signed_policy(4)).expect("write");
    let d = open(&dev);
    assert_eq!(d.condition(), &Condition::Loaded);
    assert_eq!(d.policy().map(|p| p.payload().serial), Some(4));
    assert_eq!(d.state().serials.policy, 4);
    assert_eq!(
        d.notes(),
        ["completed the interrupted install of policy serial 4"]
    );
}

#[test]
fn an_older_validly_signed_bundle_copied_over_the_last_good_one_is_ignored() {
    let dev = TestDevice::new();
    let old = signed_policy(3);
    let mut d = open(&dev);
    d.apply_policy(&old, Actor::this_process(), now())
        .expect("apply");
    d.apply_policy(&signed_policy(4), Actor::this_process(), now())
        .expect("apply");
    drop(d);
    std::fs::write(dev.paths.policy_bundle(), &old).expect("roll back the file");
    let d = open(&dev);
    assert!(
        d.policy().is_none(),
        "the rolled-back file must not come into force"
    );
    assert_eq!(d.state().serials.policy, 4);
    assert!(
        d.notes()[0].contains("is not the one state.json records"),
        "{:?}",
        d.notes()
    );
}

#[test]
fn a_tampered_last_good_bundle_is_not_put_in_force() {
    let dev = TestDevice::new();
    open(&dev)
        .apply_policy(&signed_policy(3), Actor::this_process(), now())
        .expect("apply");
    let mut p = policy(3);
    p["network"]["allow"][0]["dest"] = "0.0.0.0/0".into();
    let forged = swap_payload(&signed_policy(3), &serde_json::to_vec(&p).expect("json"));
    std::fs::write(dev.paths.policy_bundle(), forged).expect("write");
    let d = open(&dev);
    assert!(d.policy().is_none());
    assert!(
        d.notes()[0].starts_with("last-good policy no longer verifies"),
        "{:?}",
        d.notes()
    );
}

fn rotation(new: &TrustRoot, signers: &[&ed25519_dalek::SigningKey]) -> Vec<u8> {
    let keys: Vec<_> = signers.iter().map(|k| (*k).clone()).collect();
    serde_json::to_vec(&sign_envelope(
        ROOT,
        &serde_json::to_vec(new).expect("json"),
        &keys,
    ))
    .expect("json")
}

#[test]
fn trust_root_rotation_needs_the_current_root_and_replaces_the_policy_keys() {
    let dev = TestDevice::new();
    let (k1, k7, k8, k9) = (key(1), key(7), key(8), key(9));
    // New root: root key 7, policy keys 8 and 9 (threshold 1).
    let new = trust_root_with(2, &[&k7], 1, &[&k8, &k9], 1);
    let mut d = open(&dev);

    let err = d
        .apply_trust_root(&rotation(&new, &[&k7]), Actor::this_process(), now())
        .expect_err("not signed by the current root");
    assert_eq!(
        err.to_string(),
        format!(
            "refused: root role needs valid signatures from 1 distinct trusted keys, got 0 (keyid {}: not a key of the root role)",
            short_id(&k7)
        )
    );
    let err = d
        .apply_trust_root(&rotation(&new, &[&k1]), Actor::this_process(), now())
        .expect_err("new keys not proven held");
    assert!(
        err.to_string().contains("root role needs valid signatures"),
        "{err}"
    );

    d.apply_trust_root(&rotation(&new, &[&k1, &k7]), Actor::this_process(), now())
        .expect("rotation");
    let by_new = sign(POLICY, &policy(10), &[&k8]);
    let by_old = signed_policy(10);
    assert!(
        d.apply_policy(&by_old, Actor::this_process(), now())
            .is_err(),
        "old policy keys are gone"
    );
    d.apply_policy(&by_new, Actor::this_process(), now())
        .expect("new policy key");
    drop(d);

    // The rotated root is the one in force after a restart.
    let root = load_trust_root(&dev.paths).expect("root");
    assert_eq!(root.serial, 2);
    let loaded = StateStore::new(dev.paths.clone()).load(&root);
    assert_eq!(loaded.policy.map(|p| p.payload().serial), Some(10));

    // Replaying the same rotation is refused.
    let mut d = open(&dev);
    let err = d
        .apply_trust_root(&rotation(&new, &[&k1, &k7]), Actor::this_process(), now())
        .expect_err("replay");
    assert_eq!(
        err.to_string(),
        "refused: serial 2 is not newer than the installed serial 2 for the root role"
    );
}

/// A new device's first start writes its initial state.json before anything else (device
/// secret, audit log), so that the next start loads it instead of taking it for lost.
#[test]
fn a_new_device_loads_as_loaded_on_its_second_start() {
    let dev = TestDevice::new();
    let first = open(&dev);
    assert_eq!(first.condition(), &Condition::Fresh);
    drop(first);
    assert!(dev.paths.state_file().exists());
    assert!(dev.paths.device_secret().exists());
    let second = open(&dev);
    assert_eq!(second.condition(), &Condition::Loaded);
    assert_eq!(second.state().lifecycle, Lifecycle::Unenrolled);
}
