//! Writes the committed seed corpora under `seeds/TARGET/` from the schema examples, a real
//! audit log written by `trustd::audit::AuditLog`, a real checkpoint and real proofs, all
//! with the fixed keys of `trustd_fuzz`. Run from `trustd/fuzz`:
//!
//! ```sh
//! cargo run --example gen_seeds
//! ```
//!
//! Deterministic except for the audit records' times, pids and boot id.

use std::path::{Path, PathBuf};

use trustd::audit::checkpoint::{Checkpoint, sign};
use trustd::audit::{Actor, AuditLog, Entry, HEAD_FILE, Options, Outcome, segment_name};
use trustd::bundle::Payload;
use trustd::policy::{IntelFeed, LifecycleCommand, Policy};
use trustd_fuzz::{NOTE_KEY_NAME, TREE_LEAVES, envelope, key_a, key_b, note_key, tree};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policy-schemas/v1/examples")
}

fn example(name: &str) -> Vec<u8> {
    let p = examples().join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn out(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("seeds")
        .join(target);
    std::fs::create_dir_all(&dir).expect("seed dir");
    std::fs::write(dir.join(name), bytes).expect("write seed");
}

fn with_selector(sel: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![sel];
    v.extend_from_slice(body);
    v
}

/// A rotation: serial 2, the same keys (so the new root's own root role, key A, signs it).
fn rotation_payload() -> Vec<u8> {
    let mut r = trustd_fuzz::trust_root();
    r.serial = 2;
    serde_json::to_vec_pretty(&r).expect("root serializes")
}

fn envelopes() {
    let t = "envelope_verify";
    let policy = example("valid/policy-direct.json");
    out(
        t,
        "policy-direct-signed-a.json",
        &envelope(Policy::PAYLOAD_TYPE, &policy, &[key_a()]),
    );
    out(
        t,
        "policy-minimal-signed-a-b.json",
        &envelope(
            Policy::PAYLOAD_TYPE,
            &example("valid/policy-minimal.json"),
            &[key_a(), key_b()],
        ),
    );
    out(
        t,
        "intel-basic-signed-a.json",
        &envelope(
            IntelFeed::PAYLOAD_TYPE,
            &example("valid/intel-basic.json"),
            &[key_a()],
        ),
    );
    out(
        t,
        "command-suspend-signed-a.json",
        &envelope(
            LifecycleCommand::PAYLOAD_TYPE,
            &example("valid/command-suspend.json"),
            &[key_a()],
        ),
    );
    out(
        t,
        "rotation-signed-a.json",
        &envelope(
            trustd::bundle::TrustRoot::PAYLOAD_TYPE,
            &rotation_payload(),
            &[key_a()],
        ),
    );
    out(
        t,
        "example-envelope-basic.json",
        &example("valid/envelope-basic.json"),
    );

    let t = "envelope_signed";
    out(t, "0-policy-direct.json", &with_selector(0, &policy));
    out(
        t,
        "0-policy-tor-only.json",
        &with_selector(0, &example("valid/policy-tor-only.json")),
    );
    out(
        t,
        "4-policy-vpn-required-two-keys.json",
        &with_selector(4, &example("valid/policy-vpn-required.json")),
    );
    out(
        t,
        "1-intel-basic.json",
        &with_selector(1, &example("valid/intel-basic.json")),
    );
    out(
        t,
        "2-command-suspend.json",
        &with_selector(2, &example("valid/command-suspend.json")),
    );
    out(t, "3-rotation.json", &with_selector(3, &rotation_payload()));
}

fn policies() {
    let t = "policy_compile";
    for name in [
        "policy-direct.json",
        "policy-explicit-nulls.json",
        "policy-minimal.json",
        "policy-proxy-required.json",
        "policy-tor-only.json",
        "policy-vpn-required.json",
    ] {
        out(t, name, &example(&format!("valid/{name}")));
    }
    for name in [
        "policy-privacy-direct-loosens.json",
        "policy-duplicate-step.json",
    ] {
        out(
            t,
            &format!("invalid-{name}"),
            &example(&format!("invalid/{name}")),
        );
    }
}

fn strict_json() {
    let t = "strict_json";
    out(
        t,
        "policy-direct.json",
        &example("valid/policy-direct.json"),
    );
    out(
        t,
        "envelope-basic.json",
        &example("valid/envelope-basic.json"),
    );
    out(
        t,
        "duplicate-escaped-key.json",
        br#"{"a":{"b":[1,2.5e3,null,true]},"\u0061":"x"}"#,
    );
    out(t, "not-utf8.json", b"{\"k\":\"\xff\xfe\"}");
    out(
        t,
        "nested.json",
        br#"[[[{"x":[{"y":{"z":-0.0}}]}]],"\ud83d\ude00"]"#,
    );
}

fn audit() {
    let t = "audit_reader";
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("audit");
    {
        let (log, _) = AuditLog::open(&dir, Options::default()).expect("open log");
        for (kind, outcome, reason) in [
            ("policy.apply", Outcome::Ok, None),
            (
                "privacy.set",
                Outcome::Refused,
                Some("caller may not disable privacy mode"),
            ),
            (
                "intel.apply",
                Outcome::Error,
                Some("applying the ruleset failed"),
            ),
        ] {
            let mut e = Entry::new(kind, outcome, Actor::this_process())
                .transition("off", "on")
                .digest("envelope", "ab".repeat(32));
            if let Some(r) = reason {
                e = e.reason(r);
            }
            log.append(e).expect("append");
        }
    }
    let seg = std::fs::read(dir.join(segment_name(0))).expect("segment");
    let end = seg.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let seg = &seg[..end];
    let head = std::fs::read(dir.join(HEAD_FILE)).expect("head");
    let lines: Vec<&[u8]> = seg.split_inclusive(|&b| b == b'\n').collect();

    // An intact log with its real head (raw), then as the writer opens it.
    let mut intact = vec![0u8];
    intact.extend_from_slice(seg);
    intact.extend_from_slice(b"#HEAD#\n");
    intact.extend_from_slice(&head);
    out(t, "intact-raw-head", &intact);
    let mut open = intact.clone();
    open[0] = 8;
    out(t, "intact-raw-head-open", &open);
    // The same records over two segments, head computed by the harness, zero padding.
    let mut two = vec![1 | 4];
    two.extend_from_slice(lines[0]);
    two.extend_from_slice(b"#SEG#\n");
    for l in &lines[1..] {
        two.extend_from_slice(l);
    }
    out(t, "two-segments-padded", &two);
    // A torn tail (half a record) that the writer cuts.
    let mut torn = vec![1 | 8];
    torn.extend_from_slice(lines[0]);
    torn.extend_from_slice(lines[1]);
    torn.extend_from_slice(&lines[2][..lines[2].len() / 2]);
    out(t, "torn-tail-open", &torn);
}

fn checkpoints() {
    let t = "checkpoint_parse";
    let tree = tree();
    let key = note_key();
    let cp = Checkpoint {
        origin: NOTE_KEY_NAME.to_owned(),
        size: TREE_LEAVES,
        root: tree.root(),
    };
    let note = sign(&cp, NOTE_KEY_NAME, &key).expect("sign");
    out(t, "0-note", &with_selector(0, note.as_bytes()));
    // A cosignature by another key is skipped.
    let cosigned = format!(
        "{note}\u{2014} witness.example/w1 {}\n",
        "AAAAAQ".to_owned() + &"A".repeat(86) + "=="
    );
    out(t, "0-note-cosigned", &with_selector(0, cosigned.as_bytes()));
    out(
        t,
        "1-text",
        &with_selector(1, cp.text().expect("text").as_bytes()),
    );
    for (i, n) in [(0, TREE_LEAVES), (TREE_LEAVES - 1, TREE_LEAVES), (5, 13)] {
        let p = tree.inclusion_proof(i, n).expect("inclusion");
        out(
            t,
            &format!("2-inclusion-{i}-of-{n}"),
            &with_selector(2, &serde_json::to_vec(&p).expect("json")),
        );
    }
    for (old, new) in [(13, TREE_LEAVES), (32, TREE_LEAVES), (0, 5), (7, 8)] {
        let p = tree.consistency_proof(old, new).expect("consistency");
        out(
            t,
            &format!("3-consistency-{old}-to-{new}"),
            &with_selector(3, &serde_json::to_vec(&p).expect("json")),
        );
    }
}

fn main() {
    envelopes();
    policies();
    strict_json();
    audit();
    checkpoints();
    println!(
        "seeds written under {}",
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("seeds")
            .display()
    );
}
