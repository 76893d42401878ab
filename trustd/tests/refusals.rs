//! Bad signed input gets a clear error and changes nothing.
//!
//! Each case is an attack or an accident an admin or an attacker can produce: the wrong
//! key, too few signatures, one key counted twice, a document for another role, a signature
//! moved onto other bytes, a replayed or older serial, an expired bundle, an oversized or
//! malformed envelope, unknown fields, another schema version, duplicate JSON keys. For
//! each: the exact message, the last-good bundle and state.json byte-for-byte unchanged, and
//! a `refused` audit record carrying that message.

mod common;

use common::*;
use serde_json::json;
use trustd::audit::{Actor, Outcome, read_records, verify_dir};
use trustd::daemon::{Device, DeviceError};

struct Case {
    name: &'static str,
    input: Vec<u8>,
    error: String,
}

fn cases() -> Vec<Case> {
    let good = signed_policy(9);
    let (k2, k3, k5, k8, k9) = (key(2), key(3), key(5), key(8), key(9));
    let mut future = policy(9);
    future["issued_at"] = json!("2027-01-01T00:00:00Z");
    future["expires_at"] = json!("2028-01-01T00:00:00Z");
    let mut expired = policy(9);
    expired["issued_at"] = json!("2020-01-01T00:00:00Z");
    expired["expires_at"] = json!("2020-01-02T00:00:00Z");
    let mut unknown = policy(9);
    unknown["colour"] = json!("blue");
    let mut v2 = policy(9);
    v2["schema"] = json!("enigm.policy/v2");
    let dup = br#"{"schema":"enigm.policy/v1","serial":9,"serial":99,"issued_at":"2026-11-01T00:00:00Z","expires_at":"2027-11-01T00:00:00Z","network":{"mode":"direct"}}"#;
    let mut kiosk = policy(9);
    kiosk["launcher"] = json!({"apps": [], "kiosk": "org.enigm.Missing"});
    let mut big = signed_policy(9);
    big.resize(trustd::bundle::MAX_ENVELOPE_BYTES + 1, b' ');
    let other_bytes = swap_payload(&good, &serde_json::to_vec(&policy(10)).expect("json"));
    vec![
        Case {
            name: "wrong key",
            input: sign(POLICY, &policy(9), &[&k8, &k9]),
            error: format!(
                "policy role needs valid signatures from 2 distinct trusted keys, got 0 (keyid {}: not a key of the policy role; keyid {}: not a key of the policy role)",
                short_id(&k8),
                short_id(&k9)
            ),
        },
        Case {
            name: "too few signatures",
            input: sign(POLICY, &policy(9), &[&k2]),
            error: "policy role needs valid signatures from 2 distinct trusted keys, got 1".into(),
        },
        Case {
            name: "the same key twice toward the threshold",
            input: sign(POLICY, &policy(9), &[&k2, &k2]),
            error: format!(
                "policy role needs valid signatures from 2 distinct trusted keys, got 1 (keyid {}: signed more than once, counted once)",
                short_id(&k2)
            ),
        },
        Case {
            name: "a payload type for another role",
            input: sign(INTEL, &intel(9), &[&k5]),
            error: r#"payload type "application/vnd.enigm.intel+json" is not accepted here (expected "application/vnd.enigm.policy+json")"#.into(),
        },
        Case {
            name: "signatures over other bytes",
            input: other_bytes,
            error: format!(
                "policy role needs valid signatures from 2 distinct trusted keys, got 0 (keyid {}: signature does not verify; keyid {}: signature does not verify)",
                short_id(&k2),
                short_id(&k3)
            ),
        },
        Case {
            name: "an older serial",
            input: signed_policy(4),
            error: "serial 4 is not newer than the installed serial 5 for the policy role".into(),
        },
        Case {
            name: "an equal serial (replay)",
            input: signed_policy(5),
            error: "serial 5 is not newer than the installed serial 5 for the policy role".into(),
        },
        Case {
            name: "an expired bundle",
            input: sign(POLICY, &expired, &[&k2, &k3]),
            error: "payload expired at 2020-01-02T00:00:00Z; this device's clock reads 2026-11-24T12:00:00Z (if the clock is wrong, set it and apply again)".into(),
        },
        Case {
            name: "a bundle issued after the device's clock (the clock is behind)",
            input: sign(POLICY, &future, &[&k2, &k3]),
            error: "payload issued at 2027-01-01T00:00:00Z, later than this device's clock reads (2026-11-24T12:00:00Z): the clock is behind or the input is misdated; set the clock and apply again".into(),
        },
        Case {
            name: "an oversized envelope",
            input: big,
            error: "envelope is 1048577 bytes, over the limit of 1048576 bytes".into(),
        },
        Case {
            name: "truncated JSON",
            input: good[..good.len() / 2].to_vec(),
            error: format!(
                "envelope is not a valid DSSE envelope: EOF while parsing a string at line 1 column {}",
                good.len() / 2
            ),
        },
        Case {
            name: "non-UTF-8 envelope",
            input: [&good[..10], b"\xff\xfe", &good[10..]].concat(),
            error: "envelope is not a valid DSSE envelope: not valid UTF-8 at byte 10".into(),
        },
        Case {
            name: "non-UTF-8 payload, validly signed",
            input: sign_bytes(POLICY, b"{\"schema\":\"\xff\"}", &[&k2, &k3]),
            error: "payload is not valid: not valid UTF-8 at byte 11".into(),
        },
        Case {
            name: "unknown fields",
            input: sign(POLICY, &unknown, &[&k2, &k3]),
            error: "payload is not valid: unknown field `colour`, expected one of `schema`, `serial`, `issued_at`, `expires_at`, `network`, `privacy`, `launcher`, `setup`, `max_age` at line 1 column 9".into(),
        },
        Case {
            name: "a wrong schema version",
            input: sign(POLICY, &v2, &[&k2, &k3]),
            error: r#"payload schema is "enigm.policy/v2", this trustd reads "enigm.policy/v1""#.into(),
        },
        Case {
            name: "duplicate keys in the payload",
            input: sign_bytes(POLICY, dup, &[&k2, &k3]),
            error: r#"payload is not valid: duplicate key "serial" in a JSON object"#.into(),
        },
        Case {
            name: "duplicate keys in the envelope",
            input: {
                let text = String::from_utf8(good.clone()).expect("utf8");
                text.replacen('{', r#"{"payloadType":"application/vnd.enigm.policy+json","#, 1).into_bytes()
            },
            error: r#"envelope is not a valid DSSE envelope: duplicate key "payloadType" in a JSON object"#.into(),
        },
        Case {
            name: "a reference the types cannot check",
            input: sign(POLICY, &kiosk, &[&k2, &k3]),
            error: r#"payload is invalid: launcher.kiosk "org.enigm.Missing" is not one of launcher.apps"#.into(),
        },
    ]
}

#[test]
fn every_bad_input_is_refused_with_its_message_and_changes_nothing() {
    let dev = TestDevice::new();
    let mut d = Device::open(&dev.paths, Actor::this_process()).expect("open");
    d.apply_policy(&signed_policy(5), Actor::this_process(), now())
        .expect("the good bundle applies");
    let bundle_before = dev.file(dev.paths.policy_bundle()).expect("bundle");
    let state_before = dev.file(dev.paths.state_file()).expect("state");

    for case in cases() {
        let records_before = read_records(&dev.paths.audit_dir()).expect("records").len();
        let err = d
            .apply_policy(&case.input, Actor::this_process(), now())
            .expect_err(case.name);
        let DeviceError::Refused(e) = &err else {
            panic!("{}: not a refusal: {err}", case.name);
        };
        assert_eq!(e.to_string(), case.error, "{}", case.name);
        assert_eq!(
            dev.file(dev.paths.policy_bundle()).as_ref(),
            Some(&bundle_before),
            "{}: bundle changed",
            case.name
        );
        assert_eq!(
            dev.file(dev.paths.state_file()).as_ref(),
            Some(&state_before),
            "{}: state changed",
            case.name
        );
        assert_eq!(d.state().serials.policy, 5, "{}", case.name);
        assert_eq!(
            d.policy().map(|p| p.payload().serial),
            Some(5),
            "{}",
            case.name
        );

        let records = read_records(&dev.paths.audit_dir()).expect("records");
        assert_eq!(
            records.len(),
            records_before + 1,
            "{}: one record per refusal",
            case.name
        );
        let last = records.last().expect("a record");
        assert_eq!(last.kind, "policy.apply", "{}", case.name);
        assert_eq!(last.outcome, Outcome::Refused, "{}", case.name);
        assert_eq!(
            last.reason.as_deref(),
            Some(case.error.as_str()),
            "{}",
            case.name
        );
        assert_eq!(
            last.digests.get("input").map(String::as_str),
            Some(trustd::bundle::sha256_hex(&case.input).as_str()),
            "{}: the refused input is identified by digest",
            case.name
        );
    }
    assert!(verify_dir(&dev.paths.audit_dir()).expect("verify").ok());

    // And after all of that, a good newer bundle still applies.
    let a = d
        .apply_policy(&signed_policy(6), Actor::this_process(), now())
        .expect("applies");
    assert_eq!((a.from_serial, a.to_serial), (5, 6));
}

#[test]
fn refusals_survive_a_restart_and_the_serial_floor_holds() {
    let dev = TestDevice::new();
    {
        let mut d = Device::open(&dev.paths, Actor::this_process()).expect("open");
        d.apply_policy(&signed_policy(7), Actor::this_process(), now())
            .expect("apply");
    }
    let mut d = Device::open(&dev.paths, Actor::this_process()).expect("reopen");
    let err = d
        .apply_policy(&signed_policy(7), Actor::this_process(), now())
        .expect_err("replay");
    assert_eq!(
        err.to_string(),
        "refused: serial 7 is not newer than the installed serial 7 for the policy role"
    );
}
