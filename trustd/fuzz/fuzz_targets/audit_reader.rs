//! Fuzzed bytes as the files of an audit log directory, read by every reader: the record
//! reader, the offline verifier, the Merkle tree rebuild, and (flag 8) the writer's open,
//! which repairs a torn tail, and one append. Nothing may panic, and the readers agree.
//!
//! Input: a flags byte, then the segments separated by `#SEG#\n`, optionally followed by
//! `#HEAD#\n` and the raw bytes of the head file. Flags: 1 writes a well-formed head for the
//! last line when no raw head is given; 2 leaves a gap in the segment numbers; 4 pads each
//! segment with zero bytes as preallocation does; 8 opens the log as the writer and appends.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use trustd::audit::{
    Actor, AuditLog, Entry, HEAD_FILE, Options, Outcome, Problem, merkle_from_dir, read_records,
    segment_name, verify_dir,
};

fn split<'a>(data: &'a [u8], sep: &[u8]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    while let Some(i) = rest.windows(sep.len()).position(|w| w == sep) {
        out.push(&rest[..i]);
        rest = &rest[i + sep.len()..];
    }
    out.push(rest);
    out
}

/// The seq of a line that starts like a record, loosely (for a head that matches it).
fn loose_seq(line: &[u8]) -> Option<u64> {
    let rest = line.strip_prefix(b"{\"seq\":")?;
    let n = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&rest[..n]).ok()?.parse().ok()
}

fn tmp_in_shm() -> tempfile::TempDir {
    // tmpfs: the writer's fsyncs cost nothing there.
    tempfile::Builder::new()
        .prefix("trustd-fuzz-audit")
        .tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .expect("temp dir")
}

fn write_log(dir: &Path, flags: u8, body: &[u8]) {
    let (segs, raw_head) = match body.windows(7).position(|w| w == b"#HEAD#\n") {
        Some(i) => (&body[..i], Some(&body[i + 7..])),
        None => (body, None),
    };
    let segs = split(segs, b"#SEG#\n");
    let mut last_line: Option<&[u8]> = None;
    for (i, seg) in segs.iter().take(4).enumerate() {
        let index = if flags & 2 != 0 && i > 0 { i + 1 } else { i };
        let mut bytes = seg.to_vec();
        if flags & 4 != 0 {
            bytes.resize(bytes.len() + 300, 0);
        }
        std::fs::write(dir.join(segment_name(index as u32)), &bytes).expect("write segment");
        if let Some(l) = seg
            .split(|&b| b == b'\n')
            .rev()
            .skip(1)
            .find(|l| !l.is_empty())
        {
            last_line = Some(l);
        }
    }
    match raw_head {
        Some(h) => std::fs::write(dir.join(HEAD_FILE), h).expect("write head"),
        None if flags & 1 != 0 => {
            if let Some(l) = last_line {
                let seq = loose_seq(l).unwrap_or(0);
                std::fs::write(dir.join(HEAD_FILE), trustd_fuzz::head_block(seq, l))
                    .expect("write head");
            }
        }
        None => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, body)) = data.split_first() else {
        return;
    };
    let tmp = tmp_in_shm();
    let dir = tmp.path();
    write_log(dir, flags, body);

    let records = read_records(dir).expect("read_records on readable files");
    let rep = verify_dir(dir).expect("verify_dir on readable files");
    let tree = merkle_from_dir(dir).expect("merkle_from_dir on readable files");
    for p in &rep.problems {
        let _ = p.to_string();
    }
    let malformed = rep
        .problems
        .iter()
        .filter(|p| matches!(p, Problem::Malformed { .. }))
        .count() as u64;
    // Every newline-terminated line is a leaf, and either a chained record or malformed.
    assert_eq!(
        rep.records + malformed,
        tree.size(),
        "verify and merkle disagree"
    );
    assert!(records.len() as u64 <= tree.size());
    if rep.ok() {
        assert_eq!(rep.last_seq.map_or(0, |s| s + 1), rep.records);
        let _ = serde_json::to_string(&rep);
    }

    if flags & 8 == 0 {
        return;
    }
    let opts = Options {
        max_segment_bytes: 1024,
    };
    let Ok((log, report)) = AuditLog::open(dir, opts) else {
        return;
    };
    let _ = (
        report.records,
        report.repaired.as_deref(),
        report.warnings.len(),
    );
    let files = merkle_from_dir(dir).expect("merkle_from_dir after open");
    assert_eq!(
        log.tree_head(),
        (files.size(), files.root()),
        "writer's tree after open"
    );
    let entry = Entry::new("fuzz.append", Outcome::Ok, Actor::default()).reason("appended");
    let receipt = log.append(entry).expect("append to an opened log");
    let files = merkle_from_dir(dir).expect("merkle_from_dir after append");
    assert_eq!(
        log.tree_head(),
        (files.size(), files.root()),
        "writer's tree after append"
    );
    let last = read_records(dir).expect("read_records after append");
    assert_eq!(
        last.last().map(|r| r.seq),
        Some(receipt.seq),
        "the appended record reads back"
    );
    let after = verify_dir(dir).expect("verify_dir after append");
    if rep.ok() {
        assert!(
            after.ok(),
            "an intact log is intact after open and append: {:?}",
            after.problems
        );
    }
});
