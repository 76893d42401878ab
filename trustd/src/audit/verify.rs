//! Offline verification of a log directory, and reading records back.
//!
//! Verification walks the chain with the hash of each line's exact bytes, so any flipped
//! byte breaks the link to the next record (or, for the last record, the head). Removed,
//! reordered or inserted records break `seq` continuity or a link; a log cut short after
//! records were acknowledged falls below the head.

use std::path::Path;

use serde::Serialize;

use super::record::{Record, record_hash};
use super::segment::{
    HEAD_FILE, chain_fields, decode_head, list_segments, segment_name, written_len,
};
use super::{AuditError, GENESIS};

/// One thing wrong with a log. Each says where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "problem", rename_all = "kebab-case")]
pub enum Problem {
    /// Segments are numbered from 0 without gaps.
    #[error("{segment} is missing")]
    MissingSegment {
        /// The missing file name.
        segment: String,
    },
    /// A line is not a record of this log.
    #[error("{segment} line {line}: not a well-formed record")]
    Malformed {
        /// Segment file.
        segment: String,
        /// 1-based line.
        line: u64,
    },
    /// Records removed, reordered or inserted.
    #[error(
        "{segment} line {line}: seq {found} where {expected} was expected (records removed, reordered or inserted)"
    )]
    SeqGap {
        /// Segment file.
        segment: String,
        /// 1-based line.
        line: u64,
        /// Expected seq.
        expected: u64,
        /// Found seq.
        found: u64,
    },
    /// `prev` is not the hash of the record before it.
    #[error(
        "{segment} line {line}: seq {seq} does not chain to the record before it (a record was altered)"
    )]
    BrokenLink {
        /// Segment file.
        segment: String,
        /// 1-based line.
        line: u64,
        /// Its seq.
        seq: u64,
    },
    /// Bytes after the last newline: a write cut by power loss, cut on the next open.
    #[error(
        "{segment}: {bytes} bytes of a torn record at the end (cut when trustd next opens the log)"
    )]
    TornTail {
        /// Segment file.
        segment: String,
        /// Bytes after the last complete line.
        bytes: u64,
    },
    /// Fewer records than were acknowledged.
    #[error("log ends at {last} but record {head} was acknowledged (the log was truncated)")]
    Truncated {
        /// The head's seq.
        head: u64,
        /// The last seq present (or "nothing").
        last: String,
    },
    /// The record at the head's seq is not the one acknowledged.
    #[error("record {seq} is not the one that was acknowledged (it was altered)")]
    HeadMismatch {
        /// The seq.
        seq: u64,
    },
    /// The head file is missing or unreadable although the log has records.
    #[error("head file: {reason}")]
    Head {
        /// What is wrong.
        reason: String,
    },
}

/// What `verify_dir` found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Records read.
    pub records: u64,
    /// Segment files read.
    pub segments: u64,
    /// The last seq, if any record exists.
    pub last_seq: Option<u64>,
    /// The acknowledged head (seq), if the head file has one.
    pub head_seq: Option<u64>,
    /// Everything wrong, in log order (empty: the log is intact).
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    /// Whether nothing is wrong.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

fn hex_into(h: &[u8; 32], out: &mut [u8; 64]) {
    const D: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in h.iter().enumerate() {
        out[2 * i] = D[usize::from(b >> 4)];
        out[2 * i + 1] = D[usize::from(b & 0xf)];
    }
}

/// Verify every segment of the log in `dir` and its head.
pub fn verify_dir(dir: &Path) -> Result<VerifyReport, AuditError> {
    let io = |e| AuditError::Io {
        path: dir.into(),
        source: e,
    };
    let segments = list_segments(dir).map_err(io)?;
    let mut rep = VerifyReport::default();
    let mut expected_seq = 0u64;
    let mut prev_hex = [0u8; 64];
    prev_hex.copy_from_slice(GENESIS.as_bytes());
    let head = match std::fs::read(dir.join(HEAD_FILE)) {
        Ok(b) => decode_head(&b).map_err(|reason| Problem::Head { reason }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Problem::Head {
            reason: e.to_string(),
        }),
    };
    let head_seq = head.as_ref().ok().and_then(|h| h.as_ref().map(|(s, _)| *s));
    rep.head_seq = head_seq;
    let mut head_hash_at_seq: Option<[u8; 64]> = None;

    let mut want_index = 0u32;
    for (index, path) in &segments {
        for missing in want_index..*index {
            rep.problems.push(Problem::MissingSegment {
                segment: segment_name(missing),
            });
        }
        want_index = index.saturating_add(1);
        let name = segment_name(*index);
        let data = std::fs::read(path).map_err(|e| AuditError::Io {
            path: path.clone(),
            source: e,
        })?;
        rep.segments += 1;
        let data = &data[..written_len(&data)];
        let mut pos = 0usize;
        let mut line_no = 0u64;
        while pos < data.len() {
            let Some(nl) = data[pos..].iter().position(|&b| b == b'\n') else {
                rep.problems.push(Problem::TornTail {
                    segment: name.clone(),
                    bytes: (data.len() - pos) as u64,
                });
                break;
            };
            let line = &data[pos..pos + nl];
            pos += nl + 1;
            line_no += 1;
            let Some((seq, prev)) = chain_fields(line) else {
                rep.problems.push(Problem::Malformed {
                    segment: name.clone(),
                    line: line_no,
                });
                continue;
            };
            if seq != expected_seq {
                rep.problems.push(Problem::SeqGap {
                    segment: name.clone(),
                    line: line_no,
                    expected: expected_seq,
                    found: seq,
                });
            } else if prev != prev_hex {
                rep.problems.push(Problem::BrokenLink {
                    segment: name.clone(),
                    line: line_no,
                    seq,
                });
            }
            hex_into(&record_hash(line), &mut prev_hex);
            if Some(seq) == head_seq {
                head_hash_at_seq = Some(prev_hex);
            }
            expected_seq = seq.wrapping_add(1);
            rep.records += 1;
            rep.last_seq = Some(seq);
        }
    }

    match head {
        Err(p) => rep.problems.push(p),
        Ok(None) if rep.records > 0 => rep.problems.push(Problem::Head {
            reason: "missing although the log has records".into(),
        }),
        Ok(None) => {}
        Ok(Some((hseq, hhash))) => {
            if rep.last_seq.is_none_or(|l| l < hseq) {
                rep.problems.push(Problem::Truncated {
                    head: hseq,
                    last: rep.last_seq.map_or("nothing".into(), |l| l.to_string()),
                });
            } else if head_hash_at_seq.is_none_or(|h| h != hhash.as_bytes()) {
                rep.problems.push(Problem::HeadMismatch { seq: hseq });
            }
        }
    }
    Ok(rep)
}

/// Parse every record of the log in `dir`, in order (for `tail` and tests). Lines that are
/// not records are skipped; `verify_dir` is what reports them.
pub fn read_records(dir: &Path) -> Result<Vec<Record>, AuditError> {
    let segments = list_segments(dir).map_err(|e| AuditError::Io {
        path: dir.into(),
        source: e,
    })?;
    let mut out = Vec::new();
    for (_, path) in segments {
        let data = std::fs::read(&path).map_err(|e| AuditError::Io {
            path: path.clone(),
            source: e,
        })?;
        for line in data[..written_len(&data)].split(|&b| b == b'\n') {
            if let Ok(r) = serde_json::from_slice::<Record>(line) {
                out.push(r);
            }
        }
    }
    Ok(out)
}
