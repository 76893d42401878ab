//! Fixtures shared by the fuzz targets and the seed generator (`examples/gen_seeds.rs`):
//! fixed keys, a fixed trust root, a fixed time, a fixed Merkle tree, and the checks a
//! compiled policy must pass. Everything is deterministic, so a crash input replays.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signer, SigningKey};
use serde_json::Value;
use trustd::audit::MerkleTree;
use trustd::bundle::{RoleKeys, Roles, TrustKey, TrustRoot, key_id, sign_envelope};
use trustd::netfilter::{Action, RecordingBackend, Ruleset, canonical_digest, compile, render};
use trustd::policy::{NetworkPlan, Overlay, Policy, effective};
use trustd::state::Lifecycle;
use trustd::timefmt::Timestamp;

/// Signs every role (root, policy, intel, command) of [`trust_root`].
pub fn key_a() -> SigningKey {
    SigningKey::from_bytes(&[0x11; 32])
}

/// A second key of the policy role (threshold 1).
pub fn key_b() -> SigningKey {
    SigningKey::from_bytes(&[0x22; 32])
}

/// A key in no role.
pub fn key_stranger() -> SigningKey {
    SigningKey::from_bytes(&[0x44; 32])
}

fn ts(s: &str) -> Timestamp {
    Timestamp::parse(s).expect("fixed timestamp")
}

/// The device's time in every target.
pub fn now() -> Timestamp {
    ts("2026-06-01T00:00:00Z")
}

fn trust_key(k: &SigningKey) -> (String, TrustKey) {
    (
        key_id(&k.verifying_key()),
        TrustKey {
            alg: "ed25519".into(),
            public: STANDARD.encode(k.verifying_key().as_bytes()),
        },
    )
}

/// The fixed trust root: key A alone in root, intel and command; A or B in policy.
pub fn trust_root() -> TrustRoot {
    let (a, ta) = trust_key(&key_a());
    let (b, tb) = trust_key(&key_b());
    let one = |ids: &[&String]| RoleKeys {
        keyids: ids.iter().map(|s| (*s).clone()).collect(),
        threshold: 1,
    };
    let root = TrustRoot {
        schema: "enigm.trust-root/v1".into(),
        serial: 1,
        issued_at: ts("2026-01-01T00:00:00Z"),
        expires_at: ts("2036-01-01T00:00:00Z"),
        keys: BTreeMap::from([(a.clone(), ta), (b.clone(), tb)]),
        roles: Roles {
            root: one(&[&a]),
            policy: one(&[&a, &b]),
            intel: one(&[&a]),
            command: one(&[&a]),
        },
    };
    assert_eq!(root.validate(), Ok(()), "the fixed trust root is valid");
    root
}

/// A DSSE envelope (JSON bytes) of `payload` as `payload_type`, signed by each key.
pub fn envelope(payload_type: &str, payload: &[u8], keys: &[SigningKey]) -> Vec<u8> {
    serde_json::to_vec(&sign_envelope(payload_type, payload, keys)).expect("envelope serializes")
}

/// The checkpoint key's name (the origin of the fixed checkpoints too).
pub const NOTE_KEY_NAME: &str = "enigm.org/trustd/FuzzDeviceHandle0000000";

/// The key that signs checkpoints.
pub fn note_key() -> SigningKey {
    SigningKey::from_bytes(&[0x33; 32])
}

/// A C2SP signed note of `text` (any text) by `key` under `name`, as trustd signs one.
pub fn sign_note(text: &str, name: &str, key: &SigningKey) -> String {
    let mut blob = trustd::audit::checkpoint::key_id(name, &key.verifying_key()).to_vec();
    blob.extend_from_slice(&key.sign(text.as_bytes()).to_bytes());
    format!("{text}\n\u{2014} {name} {}\n", STANDARD.encode(blob))
}

/// Leaves in [`tree`].
pub const TREE_LEAVES: u64 = 37;

/// The line of leaf `i` of [`tree`].
pub fn tree_line(i: u64) -> Vec<u8> {
    format!("{{\"seq\":{i},\"leaf\":\"fixed\"}}").into_bytes()
}

/// The fixed Merkle tree: [`TREE_LEAVES`] leaves, whose proofs the proof targets check.
pub fn tree() -> MerkleTree {
    let mut t = MerkleTree::new();
    for i in 0..TREE_LEAVES {
        t.push(&tree_line(i));
    }
    t
}

/// The head block the audit log writes for (seq, line): the same format as
/// `trustd::audit::segment::encode_head` (which is private to the crate).
pub fn head_block(seq: u64, line: &[u8]) -> Vec<u8> {
    let hash = trustd::bundle::sha256_hex(line);
    let body = format!("trustd-audit-head/1 {seq:020} {hash}");
    let check = &trustd::bundle::sha256_hex(body.as_bytes())[..16];
    let mut out = format!("{body} {check}").into_bytes();
    out.resize(128, b' ');
    out[127] = b'\n';
    out
}

/// No `{"set": []}` anywhere: nft refuses an empty anonymous set, so a signed policy that
/// renders one could never be applied.
fn assert_no_empty_set(v: &Value) {
    match v {
        Value::Object(m) => {
            if let Some(Value::Array(items)) = m.get("set") {
                assert!(!items.is_empty(), "rendered an empty set: {v}");
            }
            m.values().for_each(assert_no_empty_set);
        }
        Value::Array(items) => items.iter().for_each(assert_no_empty_set),
        _ => {}
    }
}

/// Check what every compiled ruleset must be: deny by default, a final drop in each filter
/// chain, no accept-everything rule, no empty set, and applied to the fake backend and
/// read back, the digest of what was compiled.
pub fn check_ruleset(rs: &Ruleset, lockdown: bool) {
    for c in &rs.chains {
        let Some(base) = &c.base else { continue };
        if base.kind == "filter" {
            assert_eq!(
                base.policy, "drop",
                "chain {} is not deny by default",
                c.name
            );
            let last = c.rules.last().expect("a filter chain has rules");
            assert!(
                last.matches.is_empty() && last.action == Action::Drop,
                "chain {} does not end in a drop",
                c.name
            );
            for r in &c.rules {
                assert!(
                    !(r.matches.is_empty() && r.action == Action::Accept),
                    "chain {} accepts everything",
                    c.name
                );
            }
        } else {
            assert!(!lockdown, "lockdown has a {} chain", base.kind);
        }
    }
    let script = render(rs);
    assert_no_empty_set(&script);
    // Applied to the fake kernel and read back, it is what was compiled.
    let mut backend = RecordingBackend::default();
    let digest = trustd::netfilter::apply(&mut backend, rs).expect("apply to the fake backend");
    assert_eq!(digest, canonical_digest(rs));
}

/// Run a (validated) policy through the effective policy with several overlays, compile,
/// render and check each ruleset. Without a policy too.
pub fn compile_all(p: &Policy) {
    let none = BTreeSet::new();
    let all: BTreeSet<String> = p.setup.required_steps.iter().cloned().collect();
    let overlays = [
        (false, &all, Lifecycle::Enrolled),
        (true, &all, Lifecycle::Enrolled),
        (false, &all, Lifecycle::Unenrolled),
        (true, &none, Lifecycle::Enrolled),
        (false, &none, Lifecycle::Enrolled),
        (true, &all, Lifecycle::Suspended),
        (false, &all, Lifecycle::Unknown),
        (true, &all, Lifecycle::Revoked),
    ];
    for (privacy, steps, lifecycle) in overlays {
        let overlay = Overlay {
            privacy,
            completed_steps: steps,
            lifecycle,
        };
        for policy in [Some(p), None] {
            let e = effective(policy, overlay);
            let lockdown = matches!(e.network, NetworkPlan::Lockdown { .. });
            if policy.is_none() || !matches!(lifecycle, Lifecycle::Enrolled | Lifecycle::Unenrolled)
            {
                assert!(lockdown, "no policy or a locked lifecycle must be lockdown");
            }
            if policy.is_some() && privacy {
                assert_eq!(e.block_lan_discovery, p.privacy.block_lan_discovery);
            }
            let _ = e.mode_name();
            let rs = compile(&e);
            check_ruleset(&rs, lockdown);
        }
    }
}
