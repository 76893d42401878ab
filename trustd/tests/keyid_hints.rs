//! DSSE makes a signature's `keyid` optional and unauthenticated: envelopes signed by tools
//! that leave it out, leave it empty or fill it with their own naming still verify, by the
//! key that made each signature. What the keyid cannot do is make one key count twice, or a
//! key outside the role count at all.

mod common;

use common::*;
use serde_json::Value;
use trustd::bundle::{MAX_SIGNATURES, VerifyError, key_id, verify};
use trustd::policy::Policy;

/// A policy envelope signed by keys 2 and 3 (threshold 2), its signatures' keyids changed by
/// `edit` (index, signature object).
fn edited(edit: impl Fn(usize, &mut serde_json::Map<String, Value>)) -> Vec<u8> {
    let mut env: Value = serde_json::from_slice(&signed_policy(9)).expect("json");
    for (i, s) in env["signatures"]
        .as_array_mut()
        .expect("signatures")
        .iter_mut()
        .enumerate()
    {
        edit(i, s.as_object_mut().expect("object"));
    }
    serde_json::to_vec(&env).expect("json")
}

fn check(bytes: &[u8]) -> Result<Vec<String>, VerifyError> {
    verify::<Policy>(bytes, &trust_root(), now(), 0).map(|v| v.signers().to_vec())
}

fn both() -> Vec<String> {
    let mut ids = vec![
        key_id(&key(2).verifying_key()),
        key_id(&key(3).verifying_key()),
    ];
    ids.sort();
    ids
}

#[test]
fn a_keyid_absent_empty_foreign_or_swapped_still_counts_the_key_that_signed() {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("absent", edited(|_, s| drop(s.remove("keyid")))),
        (
            "empty",
            edited(|_, s| drop(s.insert("keyid".into(), "".into()))),
        ),
        (
            "another tool's naming",
            edited(|i, s| drop(s.insert("keyid".into(), format!("admin-{i}@example.org").into()))),
        ),
        (
            "swapped between the two signatures",
            edited(|i, s| {
                let other = if i == 0 { key(3) } else { key(2) };
                s.insert("keyid".into(), key_id(&other.verifying_key()).into());
            }),
        ),
    ];
    for (name, bytes) in cases {
        let signers = check(&bytes).unwrap_or_else(|e| panic!("{name}: refused: {e}"));
        assert_eq!(
            signers,
            both(),
            "{name}: the keys that really signed counted"
        );
    }
}

#[test]
fn a_keyid_hint_never_makes_one_key_count_twice_or_an_outsider_count() {
    // Key 2 twice, once under its own keyid and once under none: one key, threshold 2 missed.
    let mut env: Value =
        serde_json::from_slice(&sign(POLICY, &policy(9), &[&key(2), &key(2)])).expect("json");
    env["signatures"][1]
        .as_object_mut()
        .expect("object")
        .remove("keyid");
    let err = check(&serde_json::to_vec(&env).expect("json")).expect_err("one key");
    assert_eq!(
        err.to_string(),
        format!(
            "policy role needs valid signatures from 2 distinct trusted keys, got 1 (signature 2 (no keyid): made by key {}, which signed more than once, counted once)",
            short_id(&key(2))
        )
    );

    // Key 8 (no role's key) under key 3's keyid, and with no keyid: neither counts.
    let mut env: Value =
        serde_json::from_slice(&sign(POLICY, &policy(9), &[&key(2), &key(8)])).expect("json");
    env["signatures"][1]["keyid"] = key_id(&key(3).verifying_key()).into();
    let err = check(&serde_json::to_vec(&env).expect("json")).expect_err("an outsider");
    assert_eq!(
        err.to_string(),
        format!(
            "policy role needs valid signatures from 2 distinct trusted keys, got 1 (keyid {}: signature does not verify)",
            short_id(&key(3))
        )
    );
    env["signatures"][1]
        .as_object_mut()
        .expect("object")
        .remove("keyid");
    let err = check(&serde_json::to_vec(&env).expect("json")).expect_err("an outsider");
    assert!(
        err.to_string()
            .ends_with("(signature 2 (no keyid): verifies with no key of the policy role)"),
        "{err}"
    );

    // The intel key (a key of the root, not of the policy role) does not count for policy.
    let err = check(&sign(POLICY, &policy(9), &[&key(2), &key(5)])).expect_err("another role");
    assert!(
        err.to_string().ends_with(&format!(
            "(keyid {}: not a key of the policy role)",
            short_id(&key(5))
        )),
        "{err}"
    );
}

#[test]
fn an_envelope_with_more_signatures_than_are_read_is_refused() {
    // Each signature may be tried against every key of the role: their number is bounded.
    let keys: Vec<_> = (0..=MAX_SIGNATURES).map(|_| key(2)).collect();
    let refs: Vec<_> = keys.iter().collect();
    let err = check(&sign(POLICY, &policy(9), &refs)).expect_err("too many");
    assert_eq!(
        err.to_string(),
        format!(
            "policy role needs valid signatures from 2 distinct trusted keys, got 0 (the envelope has {} signatures; at most {MAX_SIGNATURES} are read)",
            MAX_SIGNATURES + 1
        )
    );
    // Exactly the maximum is read.
    let mut keys: Vec<_> = (0..MAX_SIGNATURES - 1).map(|_| key(2)).collect();
    keys.push(key(3));
    let refs: Vec<_> = keys.iter().collect();
    assert_eq!(check(&sign(POLICY, &policy(9), &refs)).expect("16"), both());
}
