//! Opening the audit log never erases evidence of tampering. Each test stops a device
//! cleanly (its last records covered by the checkpoint it signs at stop), tampers with the
//! real files as root on the device could (a flipped byte, records cut, deleted, swapped,
//! duplicated or spliced in, a chain rewritten consistently, a segment or the head or the
//! checkpoint removed, emptied, edited or replaced), then opens the device again as trustd
//! does at start. After that open a damage record names the tamper, it is the first record
//! the open wrote, it binds the bytes found, and posture shows it until an admin
//! acknowledges it with an audited call.

mod common;

use std::path::PathBuf;

use common::*;
use trustd::audit::checkpoint::checkpoint_log;
use trustd::audit::damage::Anchor;
use trustd::audit::{
    Actor, AuditLog, Entry, Options, Outcome, Record, read_records, segment_name, verify_dir,
};
use trustd::daemon::Device;
use trustd::posture::Level;

fn entry(i: usize) -> Entry {
    Entry::new("test.append", Outcome::Ok, Actor::this_process())
        .transition(format!("s{i}"), format!("s{}", i + 1))
        .digest("input", format!("{i:064x}"))
}

/// A device that ran, logged `n` transitions and stopped cleanly (a checkpoint at stop).
fn stopped(n: usize) -> TestDevice {
    let dev = TestDevice::new();
    let d = Device::open(&dev.paths, Actor::this_process()).expect("open");
    for i in 0..n {
        d.audit().append(entry(i)).expect("append");
    }
    d.checkpoint().expect("checkpoint at stop");
    drop(d);
    let rep = verify_dir(&dev.paths.audit_dir()).expect("verify");
    assert!(rep.ok(), "{:?}", rep.problems);
    dev
}

fn seg0(dev: &TestDevice) -> PathBuf {
    dev.paths.audit_dir().join(segment_name(0))
}

fn head(dev: &TestDevice) -> PathBuf {
    dev.paths.audit_dir().join("head")
}

fn sha(bytes: &[u8]) -> String {
    trustd::bundle::sha256_hex(bytes)
}

/// Flip one digit of the record's time (the line stays well-formed JSON).
fn flip(line: &mut [u8]) {
    let at = line
        .windows(8)
        .position(|w| w == b"\"time\":\"")
        .expect("time")
        + 8
        + 3;
    line[at] = if line[at] == b'1' { b'2' } else { b'1' };
}

/// A valid head block naming (seq, hash): what root can write with a text editor.
fn forged_head(seq: u64, hash: &str) -> Vec<u8> {
    let body = format!("trustd-audit-head/1 {seq:020} {hash}");
    let text = format!("{body} {}", &sha(body.as_bytes())[..16]);
    let mut out = vec![b' '; 128];
    out[..text.len()].copy_from_slice(text.as_bytes());
    out[127] = b'\n';
    out
}

/// Re-chain the lines from `from` on (each `prev` the hash of the line before), as an
/// attacker who rewrites a record would.
fn rechain(l: &mut [Vec<u8>], from: usize) {
    for i in from.max(1)..l.len() {
        let mut r: Record = serde_json::from_slice(&l[i]).expect("record");
        r.prev = sha(&l[i - 1]);
        l[i] = serde_json::to_vec(&r).expect("json");
    }
}

/// Open the device again after a tamper, as trustd does at start. Asserts that the first
/// record this open wrote is a damage record naming one of `kinds`, and that posture
/// shows it; returns the device and that record.
fn reopen_expecting(dev: &TestDevice, kinds: &[&str]) -> (Device, Record) {
    let dir = dev.paths.audit_dir();
    let before = read_records(&dir).expect("records").len();
    let d = Device::open(&dev.paths, Actor::this_process()).expect("open after tamper");
    let records = read_records(&dir).expect("records");
    let first = records
        .get(before)
        .cloned()
        .expect("a record written at open");
    assert_eq!(
        first.kind, "audit.damage",
        "the first record after the tamper must be damage: {first:?}"
    );
    let named: Vec<&String> = first
        .digests
        .iter()
        .filter(|(k, _)| k.ends_with(".kind"))
        .map(|(_, v)| v)
        .collect();
    assert!(
        named.iter().any(|k| kinds.contains(&k.as_str())),
        "damage record names {named:?}, expected one of {kinds:?}: {:?}",
        first.reason
    );
    let p = d.posture(now());
    assert_eq!(p.level, Level::Untrusted);
    assert!(
        p.reasons
            .iter()
            .any(|r| r.contains("audit log damage recorded")
                && r.contains(&format!("record {}", first.seq))),
        "{:?}",
        p.reasons
    );
    (d, first)
}

fn evidence<'a>(r: &'a Record, name: &str) -> Vec<&'a String> {
    r.digests
        .iter()
        .filter(|(k, _)| k.ends_with(&format!(".{name}")))
        .map(|(_, v)| v)
        .collect()
}

#[test]
fn a_flipped_byte_in_the_first_record_is_recorded_as_damage_at_open() {
    // Attack: root flips one byte of the oldest record while trustd is stopped.
    let dev = stopped(10);
    let mut l = lines(&seg0(&dev));
    flip(&mut l[0]);
    let bad = sha(&l[0]);
    write_lines(&seg0(&dev), &l);
    let (_d, r) = reopen_expecting(&dev, &["record-altered", "log-rewritten"]);
    assert!(
        evidence(&r, "previous-line-sha256").contains(&&bad),
        "{r:?}"
    );
    assert!(!verify_dir(&dev.paths.audit_dir()).expect("verify").ok());
}

#[test]
fn a_flipped_byte_in_a_middle_record_is_recorded_as_damage_at_open() {
    // Attack: root flips one byte of a record in the middle.
    let dev = stopped(10);
    let mut l = lines(&seg0(&dev));
    let mid = l.len() / 2;
    flip(&mut l[mid]);
    write_lines(&seg0(&dev), &l);
    reopen_expecting(&dev, &["record-altered"]);
    assert!(!verify_dir(&dev.paths.audit_dir()).expect("verify").ok());
}

#[test]
fn a_flipped_byte_in_the_last_record_is_recorded_as_damage_at_open() {
    // Attack (the reported case): root flips a byte of the last record. The next record
    // would chain to it, so only the head and the checkpoint can tell; the damage record
    // binds the old head before it is rewritten.
    let dev = stopped(10);
    let old_head = std::fs::read(head(&dev)).expect("head");
    let mut l = lines(&seg0(&dev));
    let last = l.len() - 1;
    flip(&mut l[last]);
    write_lines(&seg0(&dev), &l);
    let (_d, r) = reopen_expecting(&dev, &["head-mismatch", "log-rewritten"]);
    assert!(
        evidence(&r, "head-sha256").contains(&&sha(&old_head)),
        "{r:?}"
    );
    let kinds: Vec<&String> = evidence(&r, "kind");
    assert!(kinds.iter().any(|k| *k == "log-rewritten"), "{kinds:?}");
}

#[test]
fn a_flipped_newline_that_makes_the_last_record_a_torn_tail_is_not_cut_as_unacknowledged() {
    // Attack: the last record's newline becomes a space, so the record reads as a torn
    // write. It was acknowledged (the head names it): open must keep it and say so, not
    // cut it as "never acknowledged".
    let dev = stopped(10);
    let mut data = written(&seg0(&dev));
    let n = data.len();
    data[n - 1] = b' ';
    std::fs::write(seg0(&dev), &data).expect("write");
    let (_d, r) = reopen_expecting(&dev, &["cut-through-acknowledged"]);
    let reason = r.reason.clone().unwrap_or_default();
    assert!(reason.contains("was acknowledged"), "{reason}");
    assert!(!reason.contains("never acknowledged"), "{reason}");
    let records = read_records(&dev.paths.audit_dir()).expect("records");
    assert!(
        records.iter().all(|r| r.kind != "audit.repair"),
        "nothing cut"
    );
    assert!(
        written(&seg0(&dev))
            .windows(data.len())
            .any(|w| w == &data[..]),
        "the bytes are still there"
    );
}

#[test]
fn records_cut_from_the_end_are_recorded_as_damage_at_open() {
    // Attack: root cuts the last three records at a line boundary (the head stays).
    let dev = stopped(10);
    let l = lines(&seg0(&dev));
    write_lines(&seg0(&dev), &l[..l.len() - 3]);
    reopen_expecting(
        &dev,
        &[
            "log-truncated",
            "log-truncated-below-checkpoint",
            "log-rewritten",
        ],
    );
}

#[test]
fn records_cut_from_the_end_with_the_head_deleted_are_caught_by_the_checkpoint() {
    // Attack (the reported case): cut the last records, delete the head: the chain and
    // what is left look intact; only trustd's own checkpoint remembers.
    let dev = stopped(10);
    let l = lines(&seg0(&dev));
    write_lines(&seg0(&dev), &l[..l.len() - 3]);
    std::fs::remove_file(head(&dev)).expect("rm head");
    let (_d, r) = reopen_expecting(&dev, &["log-truncated-below-checkpoint"]);
    let kinds = evidence(&r, "kind");
    assert!(kinds.iter().any(|k| *k == "head-removed"), "{kinds:?}");
}

#[test]
fn a_log_truncated_mid_record_is_kept_and_recorded_not_cut_as_never_acknowledged() {
    // Attack: truncate the segment in the middle of an acknowledged record (and delete the
    // head). Open must not call the cut bytes "never acknowledged", nor zero them.
    let dev = stopped(10);
    let data = written(&seg0(&dev));
    let cut = data.len() - 150;
    std::fs::write(seg0(&dev), &data[..cut]).expect("truncate");
    std::fs::remove_file(head(&dev)).expect("rm head");
    let (_d, r) = reopen_expecting(
        &dev,
        &["cut-through-acknowledged", "log-truncated-below-checkpoint"],
    );
    let reason = r.reason.clone().unwrap_or_default();
    assert!(!reason.contains("never acknowledged"), "{reason}");
    let records = read_records(&dev.paths.audit_dir()).expect("records");
    assert!(records.iter().all(|r| r.kind != "audit.repair"));
    assert!(!verify_dir(&dev.paths.audit_dir()).expect("verify").ok());
}

#[test]
fn a_deleted_record_is_recorded_as_damage_at_open() {
    // Attack: root deletes one record from the middle.
    let dev = stopped(10);
    let mut l = lines(&seg0(&dev));
    l.remove(4);
    write_lines(&seg0(&dev), &l);
    let (_d, r) = reopen_expecting(&dev, &["records-out-of-place"]);
    assert!(r.reason.unwrap_or_default().contains("records removed"));
    assert!(!verify_dir(&dev.paths.audit_dir()).expect("verify").ok());
}

#[test]
fn swapped_records_are_recorded_as_damage_at_open() {
    // Attack: root swaps two records.
    let dev = stopped(10);
    let mut l = lines(&seg0(&dev));
    l.swap(3, 4);
    write_lines(&seg0(&dev), &l);
    reopen_expecting(&dev, &["records-out-of-place"]);
    assert!(!verify_dir(&dev.paths.audit_dir()).expect("verify").ok());
}

#[test]
fn a_duplicated_record_is_recorded_as_damage_at_open() {
    // Attack: root duplicates a record (a replayed transition).
    let dev = stopped(10);
    let mut l = lines(&seg0(&dev));
    let copy = l[5].clone();
    l.insert(6, copy);
    write_lines(&seg0(&dev), &l);
    let (_d, r) = reopen_expecting(&dev, &["records-out-of-place"]);
    assert!(
        r.reason
            .unwrap_or_default()
            .contains("reordered or duplicated")
    );
}

#[test]
fn a_record_spliced_from_another_log_is_recorded_as_damage_at_open() {
    // Attack: root replaces a record with the record of the same seq from another
    // device's log (a well-formed record, but not this log's).
    let dev = stopped(10);
    let other = stopped(10);
    let mut l = lines(&seg0(&dev));
    let theirs = lines(&seg0(&other));
    l[5] = theirs[5].clone();
    write_lines(&seg0(&dev), &l);
    reopen_expecting(&dev, &["record-altered", "log-rewritten"]);
    assert!(!verify_dir(&dev.paths.audit_dir()).expect("verify").ok());
}

#[test]
fn a_consistently_rewritten_chain_is_recorded_as_damage_at_open() {
    // Attack: root rewrites a record, re-chains every later one and forges the head: the
    // chain verifies, only the device's checkpoint does not match.
    let dev = stopped(10);
    let mut l = lines(&seg0(&dev));
    let mut r: Record = serde_json::from_slice(&l[6]).expect("record");
    r.outcome = Outcome::Refused;
    r.reason = Some("never happened".into());
    l[6] = serde_json::to_vec(&r).expect("json");
    rechain(&mut l, 7);
    let last = l.len() - 1;
    std::fs::write(head(&dev), forged_head(last as u64, &sha(&l[last]))).expect("head");
    write_lines(&seg0(&dev), &l);
    assert!(verify_dir(&dev.paths.audit_dir()).expect("verify").ok());
    let (d, r) = reopen_expecting(&dev, &["log-rewritten"]);
    assert!(!evidence(&r, "checkpoint-root").is_empty(), "{r:?}");
    // The fork is on record: trustd signs checkpoints again.
    d.checkpoint().expect("a checkpoint after recorded damage");
}

#[test]
fn the_removed_only_segment_is_recorded_as_damage_at_open() {
    // Attack: root deletes the segment file.
    let dev = stopped(10);
    std::fs::remove_file(seg0(&dev)).expect("rm");
    reopen_expecting(
        &dev,
        &[
            "log-truncated",
            "log-truncated-below-checkpoint",
            "segment-removed",
        ],
    );
}

#[test]
fn a_removed_middle_segment_is_recorded_as_damage_at_open() {
    // Attack: root deletes one segment of several (small segments, the log opened as the
    // daemon opens it: with the device's key as anchor).
    let d = tempfile::tempdir().expect("tempdir");
    let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let origin = trustd::report::origin(&key.verifying_key());
    let anchor = Anchor {
        origin: origin.clone(),
        key: key.verifying_key(),
    };
    let opts = || Options {
        max_segment_bytes: 4096,
    };
    {
        let (log, _) = AuditLog::open_anchored(d.path(), opts(), Some(&anchor)).expect("open");
        for i in 0..60 {
            log.append(entry(i)).expect("append");
        }
        checkpoint_log(&log, &origin, &origin, &key).expect("checkpoint");
    }
    assert!(d.path().join(segment_name(3)).exists());
    std::fs::remove_file(d.path().join(segment_name(1))).expect("rm");
    let (_log, report) = AuditLog::open_anchored(d.path(), opts(), Some(&anchor)).expect("open");
    let (seq, reason) = report.damage.expect("damage recorded");
    assert!(reason.contains("[segment-removed]"), "{reason}");
    assert!(
        reason.contains("[log-truncated-below-checkpoint]"),
        "{reason}"
    );
    let records = read_records(d.path()).expect("records");
    let r = records.iter().find(|r| r.seq == seq).expect("record");
    assert_eq!(r.kind, "audit.damage");
    assert!(!verify_dir(d.path()).expect("verify").ok());
}

#[test]
fn an_edited_head_is_recorded_as_damage_at_open() {
    // Attack: root edits the head file (one character).
    let dev = stopped(10);
    let mut h = std::fs::read(head(&dev)).expect("head");
    h[30] = if h[30] == b'1' { b'2' } else { b'1' };
    std::fs::write(head(&dev), &h).expect("write");
    let (_d, r) = reopen_expecting(&dev, &["head-edited"]);
    assert!(evidence(&r, "head-sha256").contains(&&sha(&h)));
}

#[test]
fn a_head_with_a_wrong_hash_is_recorded_as_damage_at_open() {
    // Attack: a well-formed head naming the last record with another hash.
    let dev = stopped(10);
    let l = lines(&seg0(&dev));
    std::fs::write(
        head(&dev),
        forged_head((l.len() - 1) as u64, &"ab".repeat(32)),
    )
    .expect("head");
    reopen_expecting(&dev, &["head-mismatch"]);
}

#[test]
fn a_removed_head_is_recorded_as_damage_at_open() {
    // Attack (the reported case): root deletes the head file.
    let dev = stopped(10);
    std::fs::remove_file(head(&dev)).expect("rm head");
    let (_d, r) = reopen_expecting(&dev, &["head-removed"]);
    assert!(evidence(&r, "head-sha256").iter().any(|v| *v == "absent"));
}

#[test]
fn an_emptied_head_is_recorded_as_damage_at_open() {
    // Attack (the reported case): root empties the head file.
    let dev = stopped(10);
    std::fs::write(head(&dev), b"").expect("empty head");
    reopen_expecting(&dev, &["head-emptied"]);
}

#[test]
fn a_removed_checkpoint_is_recorded_as_damage_at_open() {
    // Attack: root deletes trustd's checkpoint (evidence of what the log held).
    let dev = stopped(10);
    std::fs::remove_file(dev.paths.audit_dir().join("checkpoint")).expect("rm");
    reopen_expecting(&dev, &["checkpoint-removed"]);
}

/// Where a kill lands between announcing a checkpoint in the log and storing it: the
/// intent file and the announcement are written, the checkpoint file is not.
fn stopped_mid_checkpoint(dev: &TestDevice, n: usize) -> u64 {
    let d = Device::open(&dev.paths, Actor::this_process()).expect("open");
    for i in 0..n {
        d.audit().append(entry(i)).expect("append");
    }
    let size = d.audit().tree_head().0 + 1;
    trustd::audit::checkpoint::write_pending(&dev.paths.audit_dir(), size).expect("intent");
    d.audit()
        .append(
            Entry::new("audit.checkpoint", Outcome::Ok, Actor::this_process())
                .digest("size", size.to_string()),
        )
        .expect("announce");
    size
}

#[test]
fn a_stop_between_announcing_and_storing_a_checkpoint_is_not_damage_and_is_signed_again() {
    // Killed mid-checkpoint (the window a kill loop finds): every record is there, only the
    // signature being stored is missing. Before, the next start recorded checkpoint damage
    // and posture stayed untrusted until an admin acknowledged it.
    let dev = stopped(5);
    let cp = dev.paths.audit_dir().join("checkpoint");
    let older = std::fs::read(&cp).expect("checkpoint");
    let size = stopped_mid_checkpoint(&dev, 3);
    assert_eq!(std::fs::read(&cp).expect("checkpoint"), older, "not stored");
    let before = read_records(&dev.paths.audit_dir()).expect("records").len();
    let d = Device::open(&dev.paths, Actor::this_process()).expect("reopen");
    let records = read_records(&dev.paths.audit_dir()).expect("records");
    assert!(
        records.iter().all(|r| r.kind != "audit.damage"),
        "{:?}",
        records.iter().map(|r| &r.kind).collect::<Vec<_>>()
    );
    assert!(d.audit_damage().is_empty());
    let repair = records[before..]
        .iter()
        .find(|r| r.kind == "audit.repair")
        .expect("the interrupted checkpoint is said in the log");
    assert_eq!(
        repair.digests.get("interrupted-checkpoint-size"),
        Some(&size.to_string())
    );
    // Signed again, covering everything up to the new announcement.
    let note = std::fs::read_to_string(&cp).expect("checkpoint");
    let key = trustd::report::load_or_create_key(&dev.paths)
        .expect("device key")
        .0
        .verifying_key();
    let signed = trustd::audit::checkpoint::parse_and_verify(&note, &d.origin(), &key)
        .expect("a checkpoint of this device");
    assert!(signed.size > size, "{} <= {size}", signed.size);
    assert!(!dev.paths.audit_dir().join("checkpoint.pending").exists());
    let p = d.posture(now());
    assert!(
        !p.reasons
            .iter()
            .any(|r| r.contains("audit") || r.contains("checkpoint")),
        "{:?}",
        p.reasons
    );
    drop(d);
    // And the next open finds nothing either.
    let d = Device::open(&dev.paths, Actor::this_process()).expect("reopen");
    assert!(d.audit_damage().is_empty());
}

#[test]
fn a_checkpoint_removed_after_an_interrupted_one_without_the_intent_file_is_still_damage() {
    // The same log, but nothing says a run stopped mid-checkpoint (the intent file is
    // gone): a missing checkpoint is then a removed one.
    let dev = stopped(5);
    stopped_mid_checkpoint(&dev, 3);
    std::fs::remove_file(dev.paths.audit_dir().join("checkpoint.pending")).expect("rm");
    reopen_expecting(&dev, &["checkpoint-older"]);
    // An intent file naming another size than the last announcement proves nothing either.
    let dev = stopped(5);
    let size = stopped_mid_checkpoint(&dev, 3);
    std::fs::write(
        dev.paths.audit_dir().join("checkpoint.pending"),
        (size + 1).to_string(),
    )
    .expect("write");
    std::fs::remove_file(dev.paths.audit_dir().join("checkpoint")).expect("rm");
    reopen_expecting(&dev, &["checkpoint-removed"]);
}

#[test]
fn an_older_checkpoint_put_back_is_recorded_as_damage_at_open() {
    // Attack: root replaces the checkpoint with an older one it kept (which the log,
    // rewritten after it, would still extend).
    let dev = stopped(5);
    let cp = dev.paths.audit_dir().join("checkpoint");
    let older = std::fs::read(&cp).expect("checkpoint");
    {
        let d = Device::open(&dev.paths, Actor::this_process()).expect("open");
        for i in 0..5 {
            d.audit().append(entry(i)).expect("append");
        }
        d.checkpoint().expect("checkpoint at stop");
    }
    std::fs::write(&cp, &older).expect("put the old one back");
    reopen_expecting(&dev, &["checkpoint-older"]);
}

#[test]
fn a_torn_tail_after_power_loss_is_cut_and_honestly_called_never_acknowledged() {
    // A genuine power loss: half a batch after the last acknowledged record. It is cut,
    // the cut is recorded with the digest of the bytes, and nothing is called damage.
    let dev = stopped(10);
    let data = written(&seg0(&dev));
    let torn = b"{\"seq\":99,\"prev\":\"00";
    let mut with = data.clone();
    with.extend_from_slice(torn);
    std::fs::write(seg0(&dev), &with).expect("write");
    let before = read_records(&dev.paths.audit_dir()).expect("records").len();
    let d = Device::open(&dev.paths, Actor::this_process()).expect("open");
    let records = read_records(&dev.paths.audit_dir()).expect("records");
    let r = &records[before];
    assert_eq!(r.kind, "audit.repair");
    let reason = r.reason.clone().unwrap_or_default();
    assert!(reason.contains("never acknowledged"), "{reason}");
    assert!(reason.contains("the head names record"), "{reason}");
    assert_eq!(r.digests.get("cut-sha256"), Some(&sha(torn)));
    assert!(records.iter().all(|r| r.kind != "audit.damage"));
    assert!(d.audit_damage().is_empty());
    assert!(verify_dir(&dev.paths.audit_dir()).expect("verify").ok());
}

#[test]
fn damage_stays_in_posture_across_restarts_until_an_admin_acknowledges_it() {
    // The acknowledgement is itself audited, never erases the damage record, and the same
    // damage is not recorded twice.
    let dev = stopped(10);
    std::fs::remove_file(head(&dev)).expect("rm head");
    let mut l = lines(&seg0(&dev));
    flip(&mut l[2]);
    write_lines(&seg0(&dev), &l);
    let (d, first) = reopen_expecting(&dev, &["head-removed"]);
    drop(d);
    // A restart before anyone looked: still shown, not recorded again.
    let mut d = Device::open(&dev.paths, Actor::this_process()).expect("restart");
    let dir = dev.paths.audit_dir();
    let damage: Vec<Record> = read_records(&dir)
        .expect("records")
        .into_iter()
        .filter(|r| r.kind == "audit.damage")
        .collect();
    assert_eq!(damage.len(), 1, "{damage:?}");
    assert_eq!(d.audit_damage().len(), 1);
    assert_eq!(d.posture(now()).level, Level::Untrusted);
    // The verify call does not bring back as new what the damage record names.
    let (_, problems) = d.verify_audit().expect("verify");
    assert!(!problems.is_empty(), "the flipped byte stays visible");

    let admin = Actor {
        uid: Some(0),
        pid: Some(4242),
        bus_name: Some(":1.42".into()),
    };
    let text = d
        .acknowledge_damage(u64::MAX, admin.clone())
        .expect("acknowledge");
    assert!(text.contains(&first.seq.to_string()), "{text}");
    let p = d.posture(now());
    assert!(
        !p.reasons.iter().any(|r| r.contains("audit")),
        "{:?}",
        p.reasons
    );
    let records = read_records(&dir).expect("records");
    let ack = records
        .iter()
        .find(|r| r.kind == "audit.acknowledge")
        .expect("the acknowledgement is audited");
    assert_eq!(ack.actor, admin);
    assert_eq!(ack.digests.get("through"), Some(&first.seq.to_string()));
    assert!(
        records
            .iter()
            .any(|r| r.seq == first.seq && r.kind == "audit.damage"),
        "the damage record stays"
    );
    assert!(
        d.acknowledge_damage(u64::MAX, admin).is_err(),
        "nothing left"
    );
    drop(d);
    let d = Device::open(&dev.paths, Actor::this_process()).expect("restart");
    assert!(d.audit_damage().is_empty());
    assert!(
        !d.posture(now())
            .reasons
            .iter()
            .any(|r| r.contains("audit log damage")),
    );
}

#[test]
fn an_acknowledgement_covers_only_the_damage_records_it_names() {
    // Damage found at two starts; the admin acknowledges the first only (`--through`):
    // the second stays in posture, and new damage after an acknowledgement shows again.
    let dev = stopped(10);
    std::fs::remove_file(head(&dev)).expect("rm head");
    let (d, first) = reopen_expecting(&dev, &["head-removed"]);
    drop(d);
    std::fs::write(head(&dev), b"").expect("empty head");
    let (mut d, second) = reopen_expecting(&dev, &["head-emptied"]);
    assert!(second.seq > first.seq);
    assert_eq!(d.audit_damage().len(), 2);
    let admin = Actor {
        uid: Some(0),
        pid: Some(1),
        bus_name: Some(":1.7".into()),
    };
    assert!(
        d.acknowledge_damage(first.seq - 1, admin.clone()).is_err(),
        "no damage record at or below that seq"
    );
    d.acknowledge_damage(first.seq, admin)
        .expect("acknowledge the first");
    assert_eq!(
        d.audit_damage().iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        vec![second.seq]
    );
    let p = d.posture(now());
    assert!(
        p.reasons
            .iter()
            .any(|r| r.contains(&format!("record {}", second.seq))
                && !r.contains(&format!("record {}:", first.seq))),
        "{:?}",
        p.reasons
    );
    drop(d);
    let d = Device::open(&dev.paths, Actor::this_process()).expect("restart");
    assert_eq!(
        d.audit_damage().iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        vec![second.seq],
        "acknowledgements are read back from the log"
    );
}

#[test]
fn an_intent_file_does_not_turn_a_truncated_log_into_an_interrupted_checkpoint() {
    // Attack: cut the log back to an announcement record (the records after it removed),
    // delete the checkpoint and write the intent file naming that announcement. The cut is
    // damage (the head names a later record), and the missing checkpoint with it: no
    // "interrupted checkpoint" repair record may follow, saying no record is missing.
    let dev = stopped(5);
    let size = stopped_mid_checkpoint(&dev, 3);
    // A later run went on: more records, acknowledged in the head.
    {
        let d = Device::open(&dev.paths, Actor::this_process()).expect("open");
        for i in 0..4 {
            d.audit().append(entry(i)).expect("append");
        }
    }
    // Cut everything after the announcement (seq size-1), keep the head as it is.
    let seg = seg0(&dev);
    let data = written(&seg);
    let keep: Vec<u8> = data
        .split_inclusive(|&b| b == b'\n')
        .take(size as usize)
        .flatten()
        .copied()
        .collect();
    std::fs::write(&seg, &keep).expect("cut");
    let _ = std::fs::remove_file(dev.paths.audit_dir().join("checkpoint"));
    trustd::audit::checkpoint::write_pending(&dev.paths.audit_dir(), size).expect("intent");
    let before = read_records(&dev.paths.audit_dir()).expect("records").len();
    let (_d, _damage) = reopen_expecting(
        &dev,
        &["log-truncated", "checkpoint-removed", "checkpoint-older"],
    );
    let records = read_records(&dev.paths.audit_dir()).expect("records");
    assert!(
        !records[before..]
            .iter()
            .any(|r| r.digests.contains_key("interrupted-checkpoint-size")),
        "{:?}",
        records[before..]
            .iter()
            .map(|r| (&r.kind, &r.reason))
            .collect::<Vec<_>>()
    );
}
