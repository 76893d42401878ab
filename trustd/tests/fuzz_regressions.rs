//! Inputs found while fuzzing (trustd/fuzz/regressions/TARGET/), each handled without a panic
//! or a hang. Replay them through the targets with
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run TARGET -- -runs=0 regressions/TARGET` (in trustd/fuzz).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc;
use std::time::Duration;

use trustd::audit::{Actor, AuditLog, Entry, Options, Outcome, segment_name};

/// As the audit_reader target does with flags 8: the input less its flags byte as segment 0,
/// `AuditLog::open`, one append, on a thread. None: open refused the log; else the append's
/// seq or error. Panics if open or append panicked or did not return within 10 s.
fn open_and_append(input: &[u8]) -> Option<Result<u64, String>> {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join(segment_name(0)), &input[1..]).expect("segment");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let r = catch_unwind(AssertUnwindSafe(|| {
            let (log, _) = AuditLog::open(dir.path(), Options::default()).ok()?;
            let e = Entry::new("test.append", Outcome::Ok, Actor::default());
            Some(log.append(e).map(|r| r.seq).map_err(|e| e.to_string()))
        }));
        let _ = tx.send(r);
    });
    let r = rx.recv_timeout(Duration::from_secs(10));
    r.expect("open or append hung")
        .expect("open or append panicked")
}

/// The last record has seq u64::MAX: `AuditLog::open` computed the next seq as `s + 1`
/// (src/audit/log.rs, AuditLog::open, `let next_seq = ...`): "attempt to add with
/// overflow"; without overflow checks (release) the log went on at seq 0. Open must refuse
/// the log, or the append fail.
#[test]
fn audit_log_at_seq_u64_max_takes_no_further_record() {
    let input = include_bytes!("../fuzz/regressions/audit_reader/open-seq-u64-max");
    let r = open_and_append(input);
    assert!(r.is_none(), "open took a log at seq u64::MAX: {r:?}");
}

/// The last record has seq u64::MAX - 1: open's own `audit.damage` record takes seq
/// u64::MAX, and `next_seq += 1` (src/audit/log.rs, AuditLog::append) overflowed; in
/// release `durable_next` wrapped to 0 (`l + 1` in AuditLog::lead) and the append never
/// returned (open hung). Open must refuse the log, or the append fail.
#[test]
fn audit_append_at_seq_u64_max_returns() {
    let input = include_bytes!("../fuzz/regressions/audit_reader/append-seq-u64-max-minus-1");
    let r = open_and_append(input);
    assert!(r.is_none(), "open took a log at seq u64::MAX - 1: {r:?}");
}

/// Below the limit a log takes records up to it and then refuses, saying why.
#[test]
fn the_last_seq_before_the_limit_is_refused_with_a_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let last = trustd::audit::MAX_SEQ - 1;
    let line = format!(
        "{{\"seq\":{last},\"prev\":\"{}\",\"time\":\"t\",\"mono_ns\":0,\"boot_id\":\"b\",\"kind\":\"k\",\"actor\":{{}},\"outcome\":\"ok\"}}\n",
        "0".repeat(64)
    );
    std::fs::write(dir.path().join(segment_name(0)), line).expect("segment");
    // Open writes its damage record at the last seq it may use, then refuses more.
    match AuditLog::open(dir.path(), Options::default()) {
        Ok((log, _)) => {
            let e = log
                .append(Entry::new("test.append", Outcome::Ok, Actor::default()))
                .expect_err("over the limit");
            assert!(e.to_string().contains("reaches the limit"), "{e}");
        }
        Err(e) => assert!(e.to_string().contains("limit"), "{e}"),
    }
}
