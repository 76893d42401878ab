//! Merkle proofs and signed checkpoints as a verifier meets them: a checkpoint signed at
//! size m, more records after it, then every way of tampering with the files that the
//! chain alone may or may not see, each caught against the OLD checkpoint.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::written;
use ed25519_dalek::SigningKey;
use trustd::audit::checkpoint::{
    self, check_dir_consistency, checkpoint_log, parse_and_verify, prove_consistency,
    prove_inclusion_in_dir, verify_consistency_proof, verify_inclusion_proof,
};
use trustd::audit::{
    Actor, AuditLog, Checkpoint, CheckpointError, ConsistencyProof, Entry, HEAD_FILE,
    InclusionProof, Options, Outcome, ProofError, Record, merkle_from_dir, record_hash,
    segment_name, verify_dir,
};

const ORIGIN: &str = "enigm.org/trustd/AbCdEfGhIjKlMnOpQrStUv";
/// Records in the old checkpoint, and in the log by the end.
const M: u64 = 17;
const N: u64 = 30;

fn key() -> SigningKey {
    SigningKey::from_bytes(&[42; 32])
}

fn opts() -> Options {
    // About 11 records a segment: the log spans three.
    Options {
        max_segment_bytes: 4096,
    }
}

fn entry(i: u64) -> Entry {
    Entry::new("test.append", Outcome::Ok, Actor::this_process())
        .transition(format!("s{i}"), format!("s{}", i + 1))
        .digest("input", format!("{i:064x}"))
}

/// A log of N records with a checkpoint signed at M; returns the verifier's copy of it.
fn scenario(dir: &Path) -> (Checkpoint, String) {
    let (log, _) = AuditLog::open(dir, opts()).expect("open");
    for i in 0..M {
        log.append(entry(i)).expect("append");
    }
    let (cp, note) = checkpoint_log(&log, ORIGIN, ORIGIN, &key()).expect("checkpoint");
    assert_eq!(cp.size, M);
    for i in M..N {
        log.append(entry(i)).expect("append");
    }
    assert_eq!(log.tree_head().0, N);
    (cp, note)
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = (0..)
        .map(|i| dir.join(segment_name(i)))
        .take_while(|p| p.exists())
        .collect();
    v.sort();
    v
}

/// Every line of the log, in order, without newlines.
fn all_lines(dir: &Path) -> Vec<Vec<u8>> {
    segments(dir)
        .iter()
        .flat_map(|p| {
            written(p)
                .split(|&b| b == b'\n')
                .filter(|l| !l.is_empty())
                .map(<[u8]>::to_vec)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Replace the log's segments with `lines`, all in segment 0.
fn rewrite(dir: &Path, lines: &[Vec<u8>]) {
    for p in segments(dir) {
        std::fs::remove_file(p).expect("rm");
    }
    let mut out = Vec::new();
    for l in lines {
        out.extend_from_slice(l);
        out.push(b'\n');
    }
    std::fs::write(dir.join(segment_name(0)), out).expect("write");
}

/// What an attacker with root writes as the head file (its format is no secret).
fn forge_head(dir: &Path, last_line: &[u8], seq: u64) {
    let body = format!(
        "trustd-audit-head/1 {seq:020} {}",
        trustd::bundle::hex(&record_hash(last_line))
    );
    let check = &trustd::bundle::sha256_hex(body.as_bytes())[..16];
    let text = format!("{body} {check}");
    let mut block = vec![b' '; 128];
    block[..text.len()].copy_from_slice(text.as_bytes());
    block[127] = b'\n';
    std::fs::write(dir.join(HEAD_FILE), block).expect("head");
}

/// Re-link every record from `from` on to the one before it, as the writer would have.
fn rechain(lines: &mut [Vec<u8>], from: usize) {
    for i in from.max(1)..lines.len() {
        let mut r: Record = serde_json::from_slice(&lines[i]).expect("record");
        r.prev = trustd::bundle::hex(&record_hash(&lines[i - 1]));
        lines[i] = serde_json::to_vec(&r).expect("json");
    }
}

fn assert_not_consistent(dir: &Path, old: &Checkpoint, what: &str) -> String {
    match check_dir_consistency(dir, old) {
        Ok(c) => panic!("{what}: accepted as consistent (size {})", c.size),
        Err(e @ (CheckpointError::NotConsistent { .. } | CheckpointError::Shorter { .. })) => {
            trustd::error_chain(&e)
        }
        Err(e) => panic!("{what}: unexpected error {e}"),
    }
}

#[test]
fn an_honest_log_is_consistent_with_its_old_checkpoint_and_proves_every_old_record() {
    let d = tempfile::tempdir().expect("tempdir");
    let (old, note) = scenario(d.path());
    assert!(segments(d.path()).len() >= 3, "the log spans segments");
    // The verifier's copy of the note verifies and is the one stored then.
    let parsed = parse_and_verify(&note, ORIGIN, &key().verifying_key()).expect("note");
    assert_eq!(parsed, old);
    assert!(verify_dir(d.path()).expect("verify").ok());

    let c = check_dir_consistency(d.path(), &old).expect("consistent");
    assert_eq!(c.size, N);
    // The proof travels as JSON and verifies between the two signed checkpoints alone.
    let json = serde_json::to_string(&c.proof).expect("json");
    let proof: ConsistencyProof = serde_json::from_str(&json).expect("parse");
    let (log, _) = AuditLog::open(d.path(), opts()).expect("reopen");
    assert_eq!(log.tree_head(), (c.size, c.root), "rebuilt on open");
    let (new, new_note) = checkpoint_log(&log, ORIGIN, ORIGIN, &key()).expect("checkpoint");
    assert_eq!(
        checkpoint::read_checkpoint(d.path())
            .expect("read")
            .as_deref(),
        Some(new_note.as_str())
    );
    verify_consistency_proof(&old, &new, &proof).expect("old -> new");
    let mut other = new.clone();
    other.origin = "enigm.org/trustd/another".into();
    assert!(verify_consistency_proof(&old, &other, &proof).is_err());
    assert!(
        verify_consistency_proof(&new, &new, &proof).is_err(),
        "sizes"
    );

    for seq in 0..M {
        let (p, line) = prove_inclusion_in_dir(d.path(), seq, &old).expect("included");
        let json = serde_json::to_string(&p).expect("json");
        let p: InclusionProof = serde_json::from_str(&json).expect("parse");
        verify_inclusion_proof(&old, &p, &line).expect("verifies");
        // Another record's line is not that leaf.
        let other_line = &all_lines(d.path())[((seq + 1) % N) as usize];
        assert!(verify_inclusion_proof(&old, &p, other_line).is_err());
        // Nor does the proof hold for the newer checkpoint.
        assert!(verify_inclusion_proof(&new, &p, &line).is_err());
    }
    assert!(matches!(
        prove_inclusion_in_dir(d.path(), M, &old),
        Err(CheckpointError::NotIncluded {
            source: ProofError::IndexOutOfRange { .. },
            ..
        })
    ));
}

#[test]
fn the_live_tree_is_the_tree_of_the_files_across_writers_segments_and_reopen() {
    let d = tempfile::tempdir().expect("tempdir");
    let (log, _) = AuditLog::open(d.path(), opts()).expect("open");
    assert_eq!(log.tree_head(), (0, trustd::audit::merkle::empty_root()));
    let log = Arc::new(log);
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for i in 0..25 {
                    let r = log.append(entry(t * 100 + i)).expect("append");
                    // A returned record is in the tree.
                    assert!(log.tree_head().0 > r.seq);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("join");
    }
    let head = log.tree_head();
    assert_eq!(head.0, 200);
    assert_eq!(log.head().0, 200);
    let files = merkle_from_dir(d.path()).expect("tree");
    assert_eq!((files.size(), files.root()), head);
    // Proofs from the writer's tree are the files' proofs.
    assert_eq!(
        log.inclusion_proof(77, 150).expect("proof"),
        files.inclusion_proof(77, 150).expect("proof")
    );
    assert_eq!(
        log.consistency_proof(33, 200).expect("proof"),
        files.consistency_proof(33, 200).expect("proof")
    );
    assert_eq!(log.root_at(150), files.root_at(150));
    drop(log);
    let (log, _) = AuditLog::open(d.path(), opts()).expect("reopen");
    assert_eq!(log.tree_head(), head);
    log.append(entry(999)).expect("append");
    let files = merkle_from_dir(d.path()).expect("tree");
    assert_eq!(log.tree_head(), (files.size(), files.root()));
    assert_eq!(files.size(), 201);
}

#[test]
fn a_torn_tail_left_in_a_damaged_segment_joins_the_next_line_in_the_tree_too() {
    let d = tempfile::tempdir().expect("tempdir");
    {
        let (log, _) = AuditLog::open(d.path(), Options::default()).expect("open");
        for i in 0..10 {
            log.append(entry(i)).expect("append");
        }
    }
    let p = d.path().join(segment_name(0));
    let mut lines = all_lines(d.path());
    lines[2] = b"not a record".to_vec();
    let mut out = Vec::new();
    for l in &lines {
        out.extend_from_slice(l);
        out.push(b'\n');
    }
    out.extend_from_slice(b"{\"seq\":10,\"prev\":\"00");
    std::fs::write(&p, out).expect("write");
    // Damage before the last record: open does not cut the torn tail, and its next record
    // is written right after it.
    let (log, report) = AuditLog::open(d.path(), Options::default()).expect("open");
    assert!(report.repaired.is_none());
    assert!(!report.warnings.is_empty());
    log.append(entry(10)).expect("append");
    let files = merkle_from_dir(d.path()).expect("tree");
    assert_eq!(log.tree_head(), (files.size(), files.root()));
}

/// Run `tamper` on a fresh scenario; the chain's verdict, and the old checkpoint's.
fn tampered(tamper: impl FnOnce(&Path)) -> (bool, Checkpoint, tempfile::TempDir) {
    let d = tempfile::tempdir().expect("tempdir");
    let (old, _) = scenario(d.path());
    tamper(d.path());
    let chain_ok = verify_dir(d.path()).expect("verify").ok();
    (chain_ok, old, d)
}

#[test]
fn a_flipped_byte_in_an_old_record_is_caught() {
    let (chain_ok, old, d) = tampered(|dir| {
        let mut l = all_lines(dir);
        let pos = l[5].windows(4).position(|w| w == b"test").expect("kind");
        l[5][pos] ^= 0x01;
        rewrite(dir, &l);
    });
    assert!(!chain_ok);
    let err = assert_not_consistent(d.path(), &old, "flipped byte");
    assert!(err.contains("do not hash to the old root"), "{err}");
    assert!(matches!(
        prove_inclusion_in_dir(d.path(), 5, &old),
        Err(CheckpointError::NotIncluded { seq: 5, .. })
    ));
    // Every old record's proof now fails: they all hash up to a root that changed.
    for seq in 0..M {
        assert!(
            prove_inclusion_in_dir(d.path(), seq, &old).is_err(),
            "{seq}"
        );
    }
}

#[test]
fn a_log_truncated_below_the_checkpoint_is_caught() {
    let (chain_ok, old, d) = tampered(|dir| {
        let mut l = all_lines(dir);
        l.truncate(10);
        rewrite(dir, &l);
        forge_head(dir, &l[9], 9);
    });
    assert!(
        chain_ok,
        "a consistent truncation with a forged head fools the chain"
    );
    let err = assert_not_consistent(d.path(), &old, "truncated");
    assert!(err.contains("fewer than the 17"), "{err}");
    assert!(prove_inclusion_in_dir(d.path(), 12, &old).is_err());
}

#[test]
fn a_removed_record_is_caught() {
    let (chain_ok, old, d) = tampered(|dir| {
        let mut l = all_lines(dir);
        l.remove(3);
        rewrite(dir, &l);
    });
    assert!(!chain_ok);
    assert_not_consistent(d.path(), &old, "removed");
    assert!(matches!(
        prove_inclusion_in_dir(d.path(), 3, &old),
        Err(CheckpointError::NotIncluded { .. } | CheckpointError::NotRecord { .. })
    ));
}

#[test]
fn reordered_records_are_caught() {
    let (chain_ok, old, d) = tampered(|dir| {
        let mut l = all_lines(dir);
        l.swap(3, 4);
        rewrite(dir, &l);
    });
    assert!(!chain_ok);
    assert_not_consistent(d.path(), &old, "reordered");
    assert!(prove_inclusion_in_dir(d.path(), 3, &old).is_err());
    assert!(prove_inclusion_in_dir(d.path(), 4, &old).is_err());
}

#[test]
fn a_rewritten_record_rechained_with_a_forged_head_fools_the_chain_not_the_checkpoint() {
    let (chain_ok, old, d) = tampered(|dir| {
        let mut l = all_lines(dir);
        let mut r: Record = serde_json::from_slice(&l[6]).expect("record");
        r.outcome = Outcome::Refused;
        r.reason = Some("never happened".into());
        l[6] = serde_json::to_vec(&r).expect("json");
        rechain(&mut l, 7);
        let last = l.len() - 1;
        forge_head(dir, &l[last], last as u64);
        rewrite(dir, &l);
    });
    assert!(chain_ok, "an attacker with root re-chains a consistent log");
    let err = assert_not_consistent(d.path(), &old, "rewritten");
    assert!(
        err.contains("altered, removed, inserted or reordered"),
        "{err}"
    );
    assert!(prove_inclusion_in_dir(d.path(), 6, &old).is_err());
    // And the daemon, reopened on those files, refuses to sign a checkpoint that is not
    // consistent with the last one it signed.
    let (log, _) = AuditLog::open(d.path(), opts()).expect("open");
    let err = checkpoint_log(&log, ORIGIN, ORIGIN, &key()).expect_err("refused");
    assert!(
        matches!(err, CheckpointError::NotConsistent { size: M, .. }),
        "{err}"
    );
}

#[test]
fn an_inserted_record_with_a_forged_link_is_caught() {
    let (_, old, d) = tampered(|dir| {
        let mut l = all_lines(dir);
        let forged = l[3].clone();
        l.insert(4, forged);
        for (i, line) in l.iter_mut().enumerate() {
            let mut r: Record = serde_json::from_slice(line).expect("record");
            r.seq = i as u64;
            *line = serde_json::to_vec(&r).expect("json");
        }
        rechain(&mut l, 1);
        let last = l.len() - 1;
        forge_head(dir, &l[last], last as u64);
        rewrite(dir, &l);
    });
    assert!(
        verify_dir(d.path()).expect("verify").ok(),
        "renumbered and re-chained"
    );
    assert_not_consistent(d.path(), &old, "inserted");
}

#[test]
fn a_rolled_back_and_regrown_log_is_caught() {
    // Cut to 10 records, then let the real writer append 25 fresh ones: longer than the
    // checkpoint, an intact chain, an honest head.
    let (chain_ok, old, d) = tampered(|dir| {
        let mut l = all_lines(dir);
        l.truncate(10);
        rewrite(dir, &l);
        std::fs::remove_file(dir.join(HEAD_FILE)).expect("rm head");
        let (log, _) = AuditLog::open(dir, opts()).expect("open");
        for i in 0..25 {
            log.append(entry(1000 + i)).expect("append");
        }
    });
    assert!(chain_ok);
    // 10 kept, the damage record the open wrote for the removed head, 25 fresh.
    assert_eq!(merkle_from_dir(d.path()).expect("tree").size(), 36);
    let records = trustd::audit::read_records(d.path()).expect("records");
    assert_eq!(records[10].kind, "audit.damage");
    assert_not_consistent(d.path(), &old, "rolled back");
}

#[test]
fn a_removed_segment_is_caught() {
    let (chain_ok, old, d) = tampered(|dir| {
        std::fs::remove_file(dir.join(segment_name(0))).expect("rm");
    });
    assert!(!chain_ok);
    assert_not_consistent(d.path(), &old, "segment removed");
}

#[test]
fn a_swapped_root_is_caught_in_the_note_and_in_the_verifiers_copy() {
    let d = tempfile::tempdir().expect("tempdir");
    let (old, note) = scenario(d.path());
    // An attacker who edits the note's root line breaks its signature.
    let r = old.root;
    let other = trustd::audit::merkle::leaf_hash(b"another root");
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let swapped = note.replace(&b64.encode(r), &b64.encode(other));
    assert_ne!(swapped, note);
    assert!(matches!(
        parse_and_verify(&swapped, ORIGIN, &key().verifying_key()),
        Err(CheckpointError::BadSignature { .. })
    ));
    // Re-signed with a key of their own under the same name: another key ID.
    let forged = checkpoint::sign(
        &Checkpoint {
            root: other,
            ..old.clone()
        },
        ORIGIN,
        &SigningKey::from_bytes(&[7; 32]),
    )
    .expect("sign");
    assert!(matches!(
        parse_and_verify(&forged, ORIGIN, &key().verifying_key()),
        Err(CheckpointError::KeyIdMismatch { .. })
    ));
    // A checkpoint whose root is not the log's at that size.
    let wrong = Checkpoint {
        root: other,
        ..old.clone()
    };
    assert_not_consistent(d.path(), &wrong, "swapped root");
    assert!(prove_inclusion_in_dir(d.path(), 0, &wrong).is_err());
    // And one whose size is not the one signed with that root.
    let wrong = Checkpoint {
        size: M + 1,
        ..old.clone()
    };
    assert_not_consistent(d.path(), &wrong, "swapped size");
}

#[test]
fn a_log_replaced_by_another_of_the_same_length_is_caught() {
    let (_, old, d) = tampered(|dir| {
        for p in segments(dir) {
            std::fs::remove_file(p).expect("rm");
        }
        std::fs::remove_file(dir.join(HEAD_FILE)).expect("rm head");
        let (log, _) = AuditLog::open(dir, opts()).expect("open");
        for i in 0..N {
            log.append(entry(i)).expect("append");
        }
    });
    assert!(verify_dir(d.path()).expect("verify").ok());
    assert_not_consistent(d.path(), &old, "replaced");
}

#[test]
fn what_the_old_checkpoint_does_not_cover_the_chain_and_a_newer_checkpoint_do() {
    // A record after M is not covered by the old checkpoint; a torn tail (a crash) is
    // not tampering. The chain sees the first; a checkpoint at N sees it too.
    let d = tempfile::tempdir().expect("tempdir");
    let (old, _) = scenario(d.path());
    let newer = {
        let t = merkle_from_dir(d.path()).expect("tree");
        let c = Checkpoint {
            origin: ORIGIN.into(),
            size: t.size(),
            root: t.root(),
        };
        prove_consistency(&t, &old).expect("consistent");
        c
    };
    let mut l = all_lines(d.path());
    let pos = l[25].windows(4).position(|w| w == b"test").expect("kind");
    l[25][pos] ^= 0x01;
    rewrite(d.path(), &l);
    let mut torn = std::fs::read(d.path().join(segment_name(0))).expect("read");
    torn.extend_from_slice(b"{\"seq\":30,\"pr");
    std::fs::write(d.path().join(segment_name(0)), torn).expect("write");
    assert!(check_dir_consistency(d.path(), &old).is_ok());
    assert!(!verify_dir(d.path()).expect("verify").ok());
    assert_not_consistent(d.path(), &newer, "after the old checkpoint");
    assert!(prove_inclusion_in_dir(d.path(), 25, &newer).is_err());
    assert!(prove_inclusion_in_dir(d.path(), 24, &newer).is_err());
    assert!(prove_inclusion_in_dir(d.path(), 5, &old).is_ok());
}

#[test]
fn moving_records_between_segments_changes_nothing() {
    let (chain_ok, old, d) = tampered(|dir| {
        let l = all_lines(dir);
        rewrite(dir, &l);
    });
    assert!(chain_ok);
    check_dir_consistency(d.path(), &old).expect("same lines, same tree");
}
