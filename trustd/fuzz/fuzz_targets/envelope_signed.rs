//! The structured variant of `envelope_verify`: the fuzzed bytes (after a selector byte) are
//! the payload of an envelope correctly signed by the fixed trust root's key, so every input
//! passes the signature check and reaches the strict payload parser, the schema check, the
//! validation, expiry and rollback, and on acceptance what the daemon does next (compile the
//! policy or the intel feed, apply the lifecycle action).
//!
//! Selector byte: `% 4` picks policy, intel, command or trust-root rotation; bit 2 signs with
//! a second key too (policy: key B, else a stranger's key); bit 3 sets the installed serial
//! to 5 instead of 0.

#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use trustd::bundle::{Payload, TrustRoot, verify, verify_installed, verify_rotation};
use trustd::netfilter::{compile_intel, intel_structure_digest, render_intel};
use trustd::policy::{IntelFeed, LifecycleCommand, Policy};
use trustd::state::Lifecycle;

static ROOT: LazyLock<TrustRoot> = LazyLock::new(trustd_fuzz::trust_root);

fuzz_target!(|data: &[u8]| {
    let Some((&sel, payload)) = data.split_first() else {
        return;
    };
    let root = &*ROOT;
    let now = trustd_fuzz::now();
    let installed = if sel & 8 != 0 { 5 } else { 0 };
    let mut keys = vec![trustd_fuzz::key_a()];
    let second = |policy: bool| {
        if policy {
            trustd_fuzz::key_b()
        } else {
            trustd_fuzz::key_stranger()
        }
    };
    match sel % 4 {
        0 => {
            if sel & 4 != 0 {
                keys.push(second(true));
            }
            let env = trustd_fuzz::envelope(Policy::PAYLOAD_TYPE, payload, &keys);
            let r = verify::<Policy>(&env, root, now, installed);
            let again = verify_installed::<Policy>(&env, root);
            match r {
                Ok(v) => {
                    assert!(again.is_ok());
                    let p = v.payload();
                    assert_eq!(p.validate(), Ok(()));
                    assert!(p.serial > installed && now <= p.expires_at);
                    assert_eq!(v.signers().len(), keys.len());
                    trustd_fuzz::compile_all(p);
                }
                Err(e) => {
                    let _ = (e.to_string(), e.code());
                }
            }
        }
        1 => {
            if sel & 4 != 0 {
                keys.push(second(false));
            }
            let env = trustd_fuzz::envelope(IntelFeed::PAYLOAD_TYPE, payload, &keys);
            match verify::<IntelFeed>(&env, root, now, installed) {
                Ok(v) => {
                    let feed = v.payload();
                    assert_eq!(v.signers().len(), 1, "only key A counts for intel");
                    let entries: usize = feed.counts().values().sum();
                    let rs = compile_intel(Some(feed));
                    assert!(rs.len() <= entries);
                    assert_eq!(rs.categories.len(), feed.categories.len());
                    let script = render_intel(&rs);
                    let _: serde_json::Value =
                        serde_json::from_str(&script).expect("intel script is JSON");
                    let _ = (intel_structure_digest(&rs), rs.counters());
                }
                Err(e) => {
                    let _ = (e.to_string(), e.code());
                }
            }
        }
        2 => {
            if sel & 4 != 0 {
                keys.push(second(false));
            }
            let env = trustd_fuzz::envelope(LifecycleCommand::PAYLOAD_TYPE, payload, &keys);
            match verify::<LifecycleCommand>(&env, root, now, installed) {
                Ok(v) => {
                    let c = v.payload();
                    let _ = c.action.as_str();
                    for from in [
                        Lifecycle::Unenrolled,
                        Lifecycle::Enrolled,
                        Lifecycle::Suspended,
                        Lifecycle::Revoked,
                        Lifecycle::Retired,
                        Lifecycle::Unknown,
                    ] {
                        let _ = from.after(c.action);
                    }
                }
                Err(e) => {
                    let _ = (e.to_string(), e.code());
                }
            }
        }
        _ => {
            if sel & 4 != 0 {
                keys.push(second(false));
            }
            let env = trustd_fuzz::envelope(TrustRoot::PAYLOAD_TYPE, payload, &keys);
            match verify_rotation(&env, root, now) {
                Ok(v) => {
                    let new = v.payload();
                    assert_eq!(new.validate(), Ok(()));
                    assert!(new.serial > root.serial);
                    // Against itself, the same rotation is a replay.
                    assert!(matches!(
                        verify_rotation(&env, new, now),
                        Err(trustd::bundle::VerifyError::Rollback { .. })
                    ));
                }
                Err(e) => {
                    let _ = (e.to_string(), e.code());
                }
            }
        }
    }
});
