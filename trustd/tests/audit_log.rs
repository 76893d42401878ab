//! The audit log as its users meet it: many writers at once, segments, a torn tail after
//! power loss, a writer killed mid-append, and every kind of tampering `verify` must find.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use common::{lines, write_lines, written};
use trustd::audit::{
    Actor, AuditLog, Entry, Options, Outcome, Problem, read_records, segment_name, verify_dir,
};

fn entry(i: usize) -> Entry {
    Entry::new("test.append", Outcome::Ok, Actor::this_process())
        .transition(format!("s{i}"), format!("s{}", i + 1))
        .digest("input", format!("{i:064x}"))
}

fn fill(dir: &Path, n: usize, opts: Options) {
    let (log, _) = AuditLog::open(dir, opts).expect("open");
    for i in 0..n {
        log.append(entry(i)).expect("append");
    }
}

fn seg(dir: &Path, i: u32) -> PathBuf {
    dir.join(segment_name(i))
}

#[test]
fn sixteen_concurrent_writers_get_distinct_durable_records_in_one_chain() {
    let d = tempfile::tempdir().expect("tempdir");
    let (log, _) = AuditLog::open(d.path(), Options::default()).expect("open");
    let log = Arc::new(log);
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                (0..100)
                    .map(|i| log.append(entry(t * 1000 + i)).expect("append").seq)
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut seqs: Vec<u64> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("join"))
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (0..1600).collect::<Vec<_>>());
    let rep = verify_dir(d.path()).expect("verify");
    assert!(rep.ok(), "{:?}", rep.problems);
    assert_eq!((rep.records, rep.head_seq), (1600, Some(1599)));
}

#[test]
fn segments_rotate_and_the_chain_runs_across_them_and_across_reopen() {
    let d = tempfile::tempdir().expect("tempdir");
    let opts = Options {
        max_segment_bytes: 2048,
    };
    fill(d.path(), 40, opts.clone());
    fill(d.path(), 10, opts);
    let rep = verify_dir(d.path()).expect("verify");
    assert!(rep.ok(), "{:?}", rep.problems);
    assert!(rep.segments >= 5, "only {} segments", rep.segments);
    assert_eq!(rep.records, 50);
    let seqs: Vec<u64> = read_records(d.path())
        .expect("read")
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(seqs, (0..50).collect::<Vec<_>>());
}

#[test]
fn a_torn_tail_is_cut_on_open_and_the_cut_is_itself_recorded() {
    // Half a record; a record's later sectors landing without its first ones; a whole
    // garbage line.
    for torn in [
        &b"{\"seq\":5,\"prev\":\"00"[..],
        b"\0\0\0\0\0\0\0\0d1a2b\"}",
        b"garbage\n",
    ] {
        let d = tempfile::tempdir().expect("tempdir");
        fill(d.path(), 5, Options::default());
        let end = written(&seg(d.path(), 0)).len() as u64;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(seg(d.path(), 0))
            .expect("open");
        std::os::unix::fs::FileExt::write_all_at(&f, torn, end).expect("write");
        drop(f);
        let rep = verify_dir(d.path()).expect("verify");
        assert!(!rep.ok(), "verify must see the torn tail before repair");

        let (log, report) = AuditLog::open(d.path(), Options::default()).expect("reopen");
        let repaired = report.repaired.expect("a repair");
        assert!(
            repaired.starts_with(&format!(
                "cut {} bytes of a torn record at the end of segment-00000000.jsonl",
                torn.len()
            )),
            "{repaired}"
        );
        log.append(entry(99)).expect("append after repair");
        let records = read_records(d.path()).expect("read");
        assert_eq!(records[5].kind, "audit.repair");
        assert_eq!(records[5].reason.as_deref(), Some(repaired.as_str()));
        assert_eq!(records.len(), 7);
        let rep = verify_dir(d.path()).expect("verify");
        assert!(rep.ok(), "{:?}", rep.problems);
    }
}

fn tampered(n: usize, tamper: impl FnOnce(&Path)) -> Vec<Problem> {
    let d = tempfile::tempdir().expect("tempdir");
    fill(d.path(), n, Options::default());
    assert!(verify_dir(d.path()).expect("verify").ok());
    tamper(d.path());
    verify_dir(d.path()).expect("verify").problems
}

fn seg0() -> String {
    segment_name(0)
}

#[test]
fn verify_finds_a_flipped_byte_in_a_record() {
    let problems = tampered(10, |dir| {
        let p = seg(dir, 0);
        let mut l = lines(&p);
        // Flip one byte inside record 4's "kind".
        let pos = l[4].windows(4).position(|w| w == b"test").expect("kind");
        l[4][pos] ^= 0x01;
        write_lines(&p, &l);
    });
    assert_eq!(
        problems,
        vec![Problem::BrokenLink {
            segment: seg0(),
            line: 6,
            seq: 5
        }]
    );
}

#[test]
fn verify_finds_a_flipped_byte_in_the_last_record() {
    let problems = tampered(10, |dir| {
        let p = seg(dir, 0);
        let mut l = lines(&p);
        let pos = l[9].windows(4).position(|w| w == b"test").expect("kind");
        l[9][pos] ^= 0x01;
        write_lines(&p, &l);
    });
    assert_eq!(problems, vec![Problem::HeadMismatch { seq: 9 }]);
}

#[test]
fn verify_finds_a_removed_record() {
    let problems = tampered(10, |dir| {
        let p = seg(dir, 0);
        let mut l = lines(&p);
        l.remove(3);
        write_lines(&p, &l);
    });
    assert_eq!(
        problems,
        vec![Problem::SeqGap {
            segment: seg0(),
            line: 4,
            expected: 3,
            found: 4
        }]
    );
}

#[test]
fn verify_finds_reordered_records() {
    let problems = tampered(10, |dir| {
        let p = seg(dir, 0);
        let mut l = lines(&p);
        l.swap(3, 4);
        write_lines(&p, &l);
    });
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert!(matches!(
        problems[0],
        Problem::SeqGap {
            expected: 3,
            found: 4,
            ..
        }
    ));
}

#[test]
fn verify_finds_an_inserted_record_even_with_a_forged_link() {
    let problems = tampered(10, |dir| {
        let p = seg(dir, 0);
        let mut l = lines(&p);
        // A forger copies record 3, renumbers it 4 and links it to record 3 correctly:
        // the original record 4 then no longer links.
        let prev = trustd::bundle::hex(&trustd::audit::record_hash(&l[3]));
        let mut forged: trustd::audit::Record = serde_json::from_slice(&l[3]).expect("json");
        forged.seq = 4;
        forged.prev = prev;
        let forged = serde_json::to_vec(&forged).expect("json");
        l.insert(4, forged);
        write_lines(&p, &l);
    });
    assert!(
        matches!(
            problems[0],
            Problem::SeqGap {
                line: 6,
                expected: 5,
                found: 4,
                ..
            }
        ),
        "{problems:?}"
    );
}

#[test]
fn verify_finds_a_truncation_at_a_record_boundary() {
    let problems = tampered(10, |dir| {
        let p = seg(dir, 0);
        let mut l = lines(&p);
        l.truncate(7);
        write_lines(&p, &l);
    });
    assert_eq!(
        problems,
        vec![Problem::Truncated {
            head: 9,
            last: "6".into()
        }]
    );
}

#[test]
fn verify_finds_a_removed_segment_and_a_removed_head() {
    let d = tempfile::tempdir().expect("tempdir");
    fill(
        d.path(),
        40,
        Options {
            max_segment_bytes: 2048,
        },
    );
    std::fs::remove_file(seg(d.path(), 1)).expect("rm");
    let problems = verify_dir(d.path()).expect("verify").problems;
    assert_eq!(
        problems[0],
        Problem::MissingSegment {
            segment: segment_name(1)
        }
    );
    assert!(
        matches!(problems[1], Problem::SeqGap { .. }),
        "{problems:?}"
    );

    let d = tempfile::tempdir().expect("tempdir");
    fill(d.path(), 3, Options::default());
    std::fs::remove_file(d.path().join(trustd::audit::HEAD_FILE)).expect("rm");
    let problems = verify_dir(d.path()).expect("verify").problems;
    assert_eq!(
        problems,
        vec![Problem::Head {
            reason: "missing although the log has records".into()
        }]
    );
}

#[test]
fn open_records_damage_it_cannot_repair() {
    let d = tempfile::tempdir().expect("tempdir");
    fill(d.path(), 10, Options::default());
    let p = seg(d.path(), 0);
    let mut l = lines(&p);
    l[2] = b"not a record".to_vec();
    write_lines(&p, &l);
    let (_log, report) = AuditLog::open(d.path(), Options::default()).expect("open");
    assert_eq!(
        report.repaired, None,
        "damage in the middle is not a torn tail"
    );
    assert_eq!(report.warnings.len(), 1);
    let records = read_records(d.path()).expect("read");
    assert_eq!(
        records.last().map(|r| r.kind.as_str()),
        Some("audit.damage")
    );
}

/// The child half of the kill test: appends forever, printing each acknowledged seq.
#[test]
fn child_writer() {
    let Some(dir) = std::env::var_os("TRUSTD_TEST_AUDIT_CHILD_DIR") else {
        return;
    };
    let (log, _) = AuditLog::open(
        Path::new(&dir),
        Options {
            max_segment_bytes: 64 << 10,
        },
    )
    .expect("open");
    let mut out = std::io::stdout().lock();
    for i in 0.. {
        let r = log.append(entry(i)).expect("append");
        writeln!(out, "{}", r.seq).expect("stdout");
        out.flush().expect("flush");
    }
}

#[test]
fn a_writer_killed_mid_append_loses_no_acknowledged_record() {
    let d = tempfile::tempdir().expect("tempdir");
    let exe = std::env::current_exe().expect("exe");
    let mut acked: Option<u64> = None;
    for round in 0..5u64 {
        let mut child = Command::new(&exe)
            .args(["--exact", "child_writer", "--nocapture", "--test-threads=1"])
            .env("TRUSTD_TEST_AUDIT_CHILD_DIR", d.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        let stdout = child.stdout.take().expect("stdout");
        let mut seen = 0;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Ok(seq) = line.trim().parse::<u64>() {
                acked = Some(seq);
                seen += 1;
                if seen == 200 + round * 37 {
                    break;
                }
            }
        }
        child.kill().expect("SIGKILL");
        child.wait().expect("wait");
        let rep = verify_dir(d.path()).expect("verify");
        let torn_only = rep
            .problems
            .iter()
            .all(|p| matches!(p, Problem::TornTail { .. }));
        assert!(torn_only, "round {round}: {:?}", rep.problems);
        let last = rep.last_seq.expect("records");
        assert!(
            last >= acked.expect("acked"),
            "round {round}: acknowledged {acked:?} but log ends at {last}"
        );
    }
    let (_log, _) = AuditLog::open(d.path(), Options::default()).expect("open");
    let rep = verify_dir(d.path()).expect("verify");
    assert!(rep.ok(), "{:?}", rep.problems);
}

#[test]
fn a_record_that_cannot_be_written_is_refused_counted_and_the_gap_recorded_once_storage_returns() {
    // A segment rollover that fails (here: the next segment's name is taken by a
    // directory, as a full or read-only filesystem fails a create) refuses the record, and
    // later records are refused as well until the storage works; then one audit.gap record
    // comes first, counting the missed records by kind, and the chain verifies.
    let d = tempfile::tempdir().expect("tempdir");
    let opts = Options {
        max_segment_bytes: 2048,
    };
    let (log, _) = AuditLog::open(d.path(), opts).expect("open");
    let blocker = seg(d.path(), 1);
    std::fs::create_dir(&blocker).expect("mkdir");
    let mut ok = 0u64;
    let mut refused = 0u64;
    for i in 0..30 {
        match log.append(entry(i)) {
            Ok(r) => {
                assert_eq!(
                    refused, 0,
                    "a record after a refusal must wait for the storage"
                );
                assert_eq!(r.seq, ok);
                ok += 1;
            }
            Err(e) => {
                assert!(e.to_string().contains("segment-00000001.jsonl"), "{e}");
                refused += 1;
            }
        }
    }
    assert!(ok > 0 && refused > 0, "ok {ok} refused {refused}");
    assert!(log.record(entry(99)).is_none());
    let gap = log.gap().expect("a gap is open");
    assert_eq!(gap.total(), refused + 1);
    assert_eq!(gap.fault.store, "audit log");
    assert!(gap.fault.path.ends_with("segment-00000001.jsonl"));
    assert!(!log.probe(), "the storage still fails");

    std::fs::remove_dir(&blocker).expect("rmdir");
    // Nothing of the refused records reached the files.
    let rep = verify_dir(d.path()).expect("verify");
    assert!(rep.ok(), "{:?}", rep.problems);
    assert_eq!(rep.records, ok);
    let r = log
        .append(entry(100))
        .expect("append after the storage is back");
    assert_eq!(r.seq, ok + 1, "the gap record comes first");
    assert!(log.gap().is_none());
    let recs = read_records(d.path()).expect("read");
    let g = &recs[usize::try_from(ok).expect("usize")];
    assert_eq!(g.kind, "audit.gap");
    assert_eq!(g.digests["missed"], (refused + 1).to_string());
    assert_eq!(g.digests["count.test.append"], (refused + 1).to_string());
    assert!(
        g.reason
            .as_deref()
            .unwrap_or_default()
            .contains("segment-00000001.jsonl"),
        "{:?}",
        g.reason
    );
    let rep = verify_dir(d.path()).expect("verify");
    assert!(rep.ok(), "{:?}", rep.problems);
    assert_eq!(rep.records, ok + 2);
    drop(log);
    // A reopen finds nothing to repair and no damage.
    let (_, report) = AuditLog::open(d.path(), opts_small()).expect("reopen");
    assert!(
        report.repaired.is_none() && report.damage.is_none(),
        "{report:?}"
    );
}

#[test]
fn concurrent_writers_across_a_failure_keep_one_chain() {
    // Records queued behind a failed batch were chained onto it: they are refused too, and
    // the chain goes on from the last durable record (no gaps, no forks in verify).
    let d = tempfile::tempdir().expect("tempdir");
    let (log, _) = AuditLog::open(d.path(), opts_small()).expect("open");
    let log = Arc::new(log);
    std::fs::create_dir(seg(d.path(), 3)).expect("mkdir");
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                (0..40)
                    .filter(|i| log.append(entry(t * 1000 + i)).is_ok())
                    .count()
            })
        })
        .collect();
    let ok: usize = threads.into_iter().map(|t| t.join().expect("join")).sum();
    std::fs::remove_dir(seg(d.path(), 3)).expect("rmdir");
    let rep = verify_dir(d.path()).expect("verify");
    assert!(rep.ok(), "{:?}", rep.problems);
    // Every record a caller was told is durable is there, and nothing else but gap records
    // (a gap record is written before the next record whenever the storage takes it).
    let appended = |d: &Path| {
        read_records(d)
            .expect("read")
            .iter()
            .filter(|r| r.kind != "audit.gap")
            .count()
    };
    assert_eq!(appended(d.path()), ok);
    log.append(entry(7)).expect("append");
    let rep = verify_dir(d.path()).expect("verify");
    assert!(rep.ok(), "{:?}", rep.problems);
    assert_eq!(appended(d.path()), ok + 1);
    assert!(log.gap().is_none());
}

fn opts_small() -> Options {
    Options {
        max_segment_bytes: 2048,
    }
}
