//! Damage: every discrepancy between the log's segments, its head file and the device's
//! latest signed checkpoint, as findings that bind the bytes found (digests of the lines,
//! of the head block, of the checkpoint note); which findings earlier opens already
//! recorded; and which recorded damage an admin has not acknowledged yet.
//!
//! Reads the audit directory only. [`super::AuditLog::open`] decides what to record, and
//! records it before any other record (see docs/SECURITY.md, "State and audit").

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use ed25519_dalek::VerifyingKey;

use super::AuditError;
use super::checkpoint::{self, Checkpoint, CheckpointError};
use super::merkle::Hash;
use super::record::{Outcome, Record};
use super::segment::{HEAD_FILE, decode_head, list_segments, segment_name, written_len};
use super::verify::{Problem, VerifyReport, verify_dir};
use crate::digest::{hex, sha256_hex};

/// The kind of a damage record: what an open (or a repair) found wrong.
pub const DAMAGE_KIND: &str = "audit.damage";
/// The kind of an admin's acknowledgement of recorded damage.
pub const ACKNOWLEDGE_KIND: &str = "audit.acknowledge";
/// The kind of the record written just before each checkpoint is signed (its `size` digest
/// is the least size the checkpoint covers, the record itself included).
pub const CHECKPOINT_KIND: &str = "audit.checkpoint";
/// The kind of the record of a torn tail cut at open.
pub const REPAIR_KIND: &str = "audit.repair";

/// How the kind of a record of this module starts, as bytes in its line.
const AUDIT_KIND: &[u8] = b"\"kind\":\"audit.";

/// At most this many findings are spelled out in one damage record; the rest are bound
/// by one digest over their ids.
pub const MAX_LISTED: usize = 32;

/// The device's own key, against which the stored checkpoint is checked at open.
#[derive(Debug, Clone)]
pub struct Anchor {
    /// The checkpoint origin and note key name (`enigm.org/trustd/<first 16 hex digits of the device key's keyid>`).
    pub origin: String,
    /// The device's public key.
    pub key: VerifyingKey,
}

/// One discrepancy found in the log's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// What kind (`record-altered`, `head-removed`, `log-rewritten`, ...).
    pub kind: &'static str,
    /// A sentence saying what was found and where.
    pub text: String,
    /// What identifies this finding across opens (location and digests of the bad bytes).
    key: String,
    /// Digests and numbers that bind what was found (name -> value), so it can be checked.
    pub evidence: BTreeMap<String, String>,
}

impl Finding {
    pub(crate) fn new(kind: &'static str, key: impl Into<String>, text: impl Into<String>) -> Self {
        Self {
            kind,
            text: text.into(),
            key: key.into(),
            evidence: BTreeMap::new(),
        }
    }

    pub(crate) fn with(mut self, name: &str, value: impl Into<String>) -> Self {
        self.evidence.insert(name.to_owned(), value.into());
        self
    }

    /// Its id: lowercase hex SHA-256 of its kind and key. The same damage found again on
    /// a later open has the same id; other bytes at the same place have another.
    pub fn id(&self) -> String {
        sha256_hex(format!("{}\0{}", self.kind, self.key).as_bytes())
    }
}

/// The digest binding a set of finding ids (sorted, one per line).
pub(crate) fn ids_digest<'a>(ids: impl IntoIterator<Item = &'a String>) -> String {
    let mut v: Vec<&String> = ids.into_iter().collect();
    v.sort();
    let joined: Vec<&str> = v.iter().map(|s| s.as_str()).collect();
    sha256_hex(joined.join("\n").as_bytes())
}

/// What the audit records of the log say about earlier damage and checkpoints.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// Ids of findings that damage records spelled out.
    pub known: BTreeSet<String>,
    /// Digests over the ids of findings that damage records bound without listing.
    pub known_rest: BTreeSet<String>,
    /// Every damage record: (seq, reason).
    pub damage: Vec<(u64, String)>,
    /// The highest seq an acknowledgement covers.
    pub acknowledged_through: Option<u64>,
    /// The least size the latest checkpoint announced in the log covers (0: none).
    pub announced: u64,
    announced_ok: BTreeSet<u64>,
    announce_failed: BTreeSet<u64>,
    /// Checkpoints (size, root) that a damage record says the log does not extend.
    pub forks: Vec<(u64, Hash)>,
}

impl History {
    /// Damage records no acknowledgement covers: (seq, reason).
    pub fn unacknowledged(&self) -> Vec<(u64, String)> {
        self.damage
            .iter()
            .filter(|(s, _)| self.acknowledged_through.is_none_or(|t| *s > t))
            .cloned()
            .collect()
    }

    /// Whether every finding of `found` was recorded before.
    pub fn covers(&self, found: &[&Finding]) -> bool {
        let rest: Vec<String> = found
            .iter()
            .map(|f| f.id())
            .filter(|id| !self.known.contains(id))
            .collect();
        rest.is_empty() || self.known_rest.contains(&ids_digest(&rest))
    }

    /// The findings of `found` not recorded before.
    pub fn new_findings<'a>(&self, found: &'a [Finding]) -> Vec<&'a Finding> {
        let all: Vec<&Finding> = found.iter().collect();
        if self.covers(&all) {
            return Vec::new();
        }
        all.into_iter()
            .filter(|f| !self.known.contains(&f.id()))
            .collect()
    }

    /// Add the damage record at `seq` that spelled out `ids` and bound `rest`.
    pub(crate) fn record(
        &mut self,
        seq: u64,
        reason: String,
        ids: Vec<String>,
        rest: Option<String>,
        found: &[&Finding],
    ) {
        self.known.extend(ids);
        self.known_rest.extend(rest);
        for f in found {
            if let (Some(size), Some(root)) = (
                f.evidence
                    .get("checkpoint-size")
                    .and_then(|s| s.parse::<u64>().ok()),
                f.evidence
                    .get("checkpoint-root")
                    .and_then(|h| super::merkle::parse_hash_hex(h)),
            ) {
                self.forks.push((size, root));
            }
        }
        self.damage.push((seq, reason));
    }

    fn read(&mut self, r: &Record) {
        match r.kind.as_str() {
            DAMAGE_KIND => {
                for (k, v) in &r.digests {
                    let Some(rest) = k.strip_prefix("finding.") else {
                        if k == "rest" {
                            self.known_rest.insert(v.clone());
                        }
                        continue;
                    };
                    if rest.bytes().all(|b| b.is_ascii_digit()) {
                        self.known.insert(v.clone());
                    } else if let Some(n) = rest.strip_suffix(".checkpoint-size")
                        && let (Ok(size), Some(root)) = (
                            v.parse::<u64>(),
                            r.digests
                                .get(&format!("finding.{n}.checkpoint-root"))
                                .and_then(|h| super::merkle::parse_hash_hex(h)),
                        )
                    {
                        self.forks.push((size, root));
                    }
                }
                self.damage
                    .push((r.seq, r.reason.clone().unwrap_or_default()));
            }
            ACKNOWLEDGE_KIND if r.outcome == Outcome::Ok => {
                if let Some(t) = r.digests.get("through").and_then(|t| t.parse().ok()) {
                    self.acknowledged_through = self.acknowledged_through.max(Some(t));
                }
            }
            CHECKPOINT_KIND => {
                // Announced before signing (a checkpoint at least this large was then
                // stored), unless a later record says signing that one failed.
                if let Some(size) = r.digests.get("size").and_then(|s| s.parse::<u64>().ok()) {
                    if r.outcome == Outcome::Ok {
                        self.announced_ok.insert(size);
                    } else {
                        self.announce_failed.insert(size);
                    }
                    self.announced = self
                        .announced_ok
                        .iter()
                        .rev()
                        .find(|s| !self.announce_failed.contains(s))
                        .copied()
                        .unwrap_or(0);
                }
            }
            _ => {}
        }
    }
}

/// The head file as found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadFound {
    /// No head file.
    Absent,
    /// An empty head file.
    Empty,
    /// Not a head block.
    Invalid(String),
    /// The last acknowledged record's seq and hash.
    At(u64, String),
}

/// What inspecting the log's files found.
#[derive(Debug, Clone)]
pub struct Inspection {
    /// The verifier's report on the chain, the segments and the head.
    pub report: VerifyReport,
    /// Every discrepancy, those recorded before included.
    pub findings: Vec<Finding>,
    /// What the log's audit records say.
    pub history: History,
    /// The head file.
    pub head: HeadFound,
    /// The stored checkpoint, if it is the device's and verifies.
    pub checkpoint: Option<Checkpoint>,
    /// The size of a checkpoint announced as the log's last record but never stored: the
    /// run stopped between the two (the intent file names it). Not damage: no record is
    /// missing, and the checkpoint is signed again at the next open of the device.
    pub interrupted_checkpoint: Option<u64>,
}

impl Inspection {
    /// The highest seq that the head, the checkpoint or the announcement in the log show
    /// was acknowledged (durable and reported to its caller), if any.
    pub fn acknowledged_through(&self) -> Option<u64> {
        let head = match &self.head {
            HeadFound::At(s, _) => Some(*s),
            _ => None,
        };
        let cp = self.checkpoint.as_ref().and_then(|c| c.size.checked_sub(1));
        head.max(cp).max(self.history.announced.checked_sub(1))
    }
}

pub(crate) fn head_text(h: &HeadFound) -> String {
    match h {
        HeadFound::Absent => "no head file".into(),
        HeadFound::Empty => "an empty head file".into(),
        HeadFound::Invalid(why) => format!("a head file that is not a head ({why})"),
        HeadFound::At(s, _) => format!("a head at record {s}"),
    }
}

/// Inspect the log in `dir`: verify it, bind every problem to the bytes found, read the
/// audit records' history, and (with `anchor`) check the stored checkpoint: signed by the
/// device's key, extended by the log, and not older than the latest one the log announces.
pub fn inspect(dir: &Path, anchor: Option<&Anchor>) -> Result<Inspection, AuditError> {
    let report = verify_dir(dir)?;
    let head_bytes = match std::fs::read(dir.join(HEAD_FILE)) {
        Ok(b) => Some(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => {
            return Err(AuditError::Io {
                path: dir.join(HEAD_FILE),
                source,
            });
        }
    };
    let head = match &head_bytes {
        None => HeadFound::Absent,
        Some(b) => match decode_head(b) {
            Ok(None) => HeadFound::Empty,
            Ok(Some((s, h))) => HeadFound::At(s, h),
            Err(e) => HeadFound::Invalid(e),
        },
    };
    let head_digest = head_bytes
        .as_deref()
        .map_or_else(|| "absent".to_owned(), sha256_hex);

    // Which lines the problems name, and their predecessors.
    let mut wanted: BTreeSet<(String, u64)> = BTreeSet::new();
    for p in &report.problems {
        match p {
            Problem::Malformed { segment, line } | Problem::SeqGap { segment, line, .. } => {
                wanted.insert((segment.clone(), *line));
            }
            Problem::BrokenLink { segment, line, .. } => {
                wanted.insert((segment.clone(), *line));
                wanted.insert((segment.clone(), line - 1));
            }
            _ => {}
        }
    }
    let mut line_digest: BTreeMap<(String, u64), String> = BTreeMap::new();
    let mut tail_digest: BTreeMap<String, String> = BTreeMap::new();
    let mut history = History::default();
    let segments = list_segments(dir).map_err(|source| AuditError::Io {
        path: dir.into(),
        source,
    })?;
    let mut prev_segment_last: Option<String> = None;
    for (index, path) in &segments {
        let name = segment_name(*index);
        let data = std::fs::read(path).map_err(|source| AuditError::Io {
            path: path.clone(),
            source,
        })?;
        let data = &data[..written_len(&data)];
        let mut pos = 0;
        let mut line_no = 0u64;
        let mut last = None;
        while let Some(nl) = data[pos..].iter().position(|&b| b == b'\n') {
            let line = &data[pos..pos + nl];
            pos += nl + 1;
            line_no += 1;
            last = Some(line);
            if wanted.contains(&(name.clone(), line_no)) {
                line_digest.insert((name.clone(), line_no), sha256_hex(line));
            }
            if line.windows(AUDIT_KIND.len()).any(|w| w == AUDIT_KIND)
                && let Ok(r) = serde_json::from_slice::<Record>(line)
            {
                history.read(&r);
            }
        }
        if pos < data.len() {
            tail_digest.insert(name.clone(), sha256_hex(&data[pos..]));
        }
        if let Some(p) = prev_segment_last.take() {
            line_digest.insert((name.clone(), 0), p);
        }
        prev_segment_last = last.map(sha256_hex);
    }
    let digest_of = |seg: &str, line: u64| {
        line_digest
            .get(&(seg.to_owned(), line))
            .cloned()
            .unwrap_or_else(|| "none".into())
    };

    let mut findings = Vec::new();
    for p in &report.problems {
        let f = match p {
            Problem::MissingSegment { segment } => Finding::new(
                "segment-removed",
                segment.clone(),
                format!("{segment} is missing: a segment was removed"),
            )
            .with("segment", segment.clone()),
            Problem::Malformed { segment, line } => {
                let d = digest_of(segment, *line);
                Finding::new(
                    "record-malformed",
                    format!("{segment}:{line}:{d}"),
                    format!(
                        "{segment} line {line} is not a well-formed record (bytes flipped, cut or inserted)"
                    ),
                )
                .with("line-sha256", d)
            }
            Problem::SeqGap {
                segment,
                line,
                expected,
                found,
            } => {
                let d = digest_of(segment, *line);
                let what = if found > expected {
                    "records removed"
                } else {
                    "records reordered or duplicated"
                };
                Finding::new(
                    "records-out-of-place",
                    format!("{segment}:{line}:{d}"),
                    format!(
                        "{segment} line {line} holds record {found} where {expected} was expected ({what})"
                    ),
                )
                .with("line-sha256", d)
                .with("expected-seq", expected.to_string())
                .with("found-seq", found.to_string())
            }
            Problem::BrokenLink { segment, line, seq } => {
                let d = digest_of(segment, *line);
                let before = digest_of(segment, line - 1);
                Finding::new(
                    "record-altered",
                    format!("{segment}:{line}:{d}:{before}"),
                    format!(
                        "record {seq} ({segment} line {line}) does not chain to the line before it: that line was altered (flipped bytes) or one of them was spliced in from elsewhere"
                    ),
                )
                .with("line-sha256", d)
                .with("previous-line-sha256", before)
                .with("seq", seq.to_string())
            }
            Problem::TornTail { segment, bytes } => {
                let d = tail_digest.get(segment).cloned().unwrap_or_default();
                Finding::new(
                    "torn-tail",
                    format!("{segment}:{d}"),
                    format!(
                        "{segment} ends in {bytes} bytes of a partial record that are kept in place"
                    ),
                )
                .with("tail-sha256", d)
                .with("tail-bytes", bytes.to_string())
            }
            Problem::Truncated { head: h, last } => Finding::new(
                "log-truncated",
                head_digest.clone(),
                format!(
                    "the head says record {h} was acknowledged but the log ends at {last}: acknowledged records were cut or removed"
                ),
            )
            .with("head-sha256", head_digest.clone())
            .with("head-seq", h.to_string()),
            Problem::HeadMismatch { seq } => {
                let hh = match &head {
                    HeadFound::At(_, h) => h.clone(),
                    _ => String::new(),
                };
                Finding::new(
                    "head-mismatch",
                    head_digest.clone(),
                    format!(
                        "record {seq} does not hash to the head's hash {hh}: the acknowledged record was altered, or the head was edited"
                    ),
                )
                .with("head-sha256", head_digest.clone())
                .with("head-hash", hh)
                .with("head-seq", seq.to_string())
            }
            Problem::Head { reason } => {
                let (kind, text) = match &head {
                    HeadFound::Absent => (
                        "head-removed",
                        "the head file was removed although the log has records".to_owned(),
                    ),
                    HeadFound::Empty => (
                        "head-emptied",
                        "the head file is empty although the log has records".to_owned(),
                    ),
                    _ => (
                        "head-edited",
                        format!("the head file was edited or damaged ({reason})"),
                    ),
                };
                Finding::new(kind, head_digest.clone(), text)
                    .with("head-sha256", head_digest.clone())
            }
        };
        findings.push(f);
    }

    let mut stored = None;
    // A run that stopped between announcing a checkpoint and storing it leaves the
    // announcement as the log's last record and the intent file naming it. A checkpoint
    // removed or put back after a clean stop has no intent file: that stays damage.
    // Only when nothing new is wrong: with damage found at this open, the missing checkpoint
    // is part of it, not a stop.
    let interrupted = (history.new_findings(&findings).is_empty()
        && history.announced > 0
        && report.last_seq == Some(history.announced - 1)
        && checkpoint::read_pending(dir) == Some(history.announced))
    .then_some(history.announced);
    if let Some(a) = anchor {
        check_checkpoint(dir, a, &history, interrupted, &mut findings, &mut stored)?;
    }
    let interrupted_checkpoint =
        interrupted.filter(|n| stored.as_ref().is_none_or(|cp: &Checkpoint| cp.size < *n));
    Ok(Inspection {
        report,
        findings,
        history,
        head,
        checkpoint: stored,
        interrupted_checkpoint,
    })
}

fn check_checkpoint(
    dir: &Path,
    a: &Anchor,
    history: &History,
    interrupted: Option<u64>,
    findings: &mut Vec<Finding>,
    stored: &mut Option<Checkpoint>,
) -> Result<(), AuditError> {
    let note = match checkpoint::read_checkpoint(dir) {
        Ok(n) => n,
        Err(e) => {
            findings.push(Finding::new(
                "checkpoint-invalid",
                format!("unreadable:{e}"),
                format!("the checkpoint file cannot be read: {e}"),
            ));
            return Ok(());
        }
    };
    let Some(note) = note else {
        if history.announced > 0 && interrupted.is_none() {
            findings.push(
                Finding::new(
                    "checkpoint-removed",
                    format!("absent:{}", history.announced),
                    format!(
                        "the checkpoint file is missing although the log records that a checkpoint of at least {} records was signed: it was removed (or trustd stopped while writing it)",
                        history.announced
                    ),
                )
                .with("announced-size", history.announced.to_string()),
            );
        }
        return Ok(());
    };
    let note_digest = sha256_hex(note.as_bytes());
    let cp = match checkpoint::parse_and_verify(&note, &a.origin, &a.key) {
        Ok(cp) if cp.origin == a.origin => cp,
        Ok(cp) => {
            findings.push(
                Finding::new(
                    "checkpoint-invalid",
                    note_digest.clone(),
                    format!(
                        "the checkpoint file is from {:?}, not this device ({:?}): it was replaced",
                        cp.origin, a.origin
                    ),
                )
                .with("checkpoint-sha256", note_digest),
            );
            return Ok(());
        }
        Err(e) => {
            findings.push(
                Finding::new(
                    "checkpoint-invalid",
                    note_digest.clone(),
                    format!(
                        "the checkpoint file is not a checkpoint signed by this device's key ({e}): it was edited or replaced"
                    ),
                )
                .with("checkpoint-sha256", note_digest),
            );
            return Ok(());
        }
    };
    if cp.size < history.announced && interrupted.is_none() {
        findings.push(
            Finding::new(
                "checkpoint-older",
                format!("{note_digest}:{}", history.announced),
                format!(
                    "the checkpoint file covers {} records but the log records that one of at least {} was signed: it was replaced by an older one (or trustd stopped while writing it)",
                    cp.size, history.announced
                ),
            )
            .with("checkpoint-sha256", note_digest.clone())
            .with("checkpoint-size", cp.size.to_string())
            .with("announced-size", history.announced.to_string()),
        );
    }
    match checkpoint::check_dir_consistency(dir, &cp) {
        Ok(_) => {}
        Err(e) => {
            let (kind, text) = match &e {
                CheckpointError::Shorter { records, size } => (
                    "log-truncated-below-checkpoint",
                    format!(
                        "the log holds {records} lines but the device's checkpoint covers {size}: records it covers were removed"
                    ),
                ),
                _ => (
                    "log-rewritten",
                    format!(
                        "the log's first {} lines are not those the device's checkpoint signed ({e}): records it covers were altered, removed, reordered or the chain was rewritten",
                        cp.size
                    ),
                ),
            };
            let tree = super::merkle::merkle_from_dir(dir)?;
            findings.push(
                Finding::new(kind, note_digest.clone(), text)
                    .with("checkpoint-sha256", note_digest)
                    .with("checkpoint-size", cp.size.to_string())
                    .with("checkpoint-root", hex(&cp.root))
                    .with("log-size", tree.size().to_string())
                    .with("log-root", hex(&tree.root())),
            );
        }
    }
    *stored = Some(cp);
    Ok(())
}

/// The order in which findings are listed: what binds the whole log (checkpoint, head)
/// first, then where the segments are damaged.
pub(crate) fn priority(kind: &str) -> u8 {
    match kind {
        "log-rewritten" | "log-truncated-below-checkpoint" => 0,
        k if k.starts_with("checkpoint") => 1,
        "log-truncated" | "cut-through-acknowledged" => 2,
        k if k.starts_with("head") => 3,
        "segment-removed" => 4,
        _ => 5,
    }
}

/// The damage record of `found` (findings not recorded before): the first
/// [`MAX_LISTED`] spelled out (`finding.NNN` = id, `finding.NNN.kind`, and their evidence
/// as `finding.NNN.<name>`), the rest bound by `rest` (digest over their ids) and
/// `rest.count`. Returns the entry, the ids spelled out and the digest of the rest.
pub(crate) fn damage_entry(found: &[&Finding]) -> (super::Entry, Vec<String>, Option<String>) {
    let mut e = super::Entry::new(DAMAGE_KIND, Outcome::Error, super::Actor::this_process());
    let listed = &found[..found.len().min(MAX_LISTED)];
    let mut ids = Vec::new();
    let mut texts = Vec::new();
    for (i, f) in listed.iter().enumerate() {
        let id = f.id();
        e = e
            .digest(format!("finding.{i:03}"), id.clone())
            .digest(format!("finding.{i:03}.kind"), f.kind);
        for (k, v) in &f.evidence {
            e = e.digest(format!("finding.{i:03}.{k}"), v.clone());
        }
        ids.push(id);
        texts.push(format!("[{}] {}", f.kind, f.text));
    }
    let mut rest = None;
    if found.len() > listed.len() {
        let rest_ids: Vec<String> = found[listed.len()..].iter().map(|f| f.id()).collect();
        let d = ids_digest(&rest_ids);
        e = e
            .digest("rest", d.clone())
            .digest("rest.count", rest_ids.len().to_string());
        texts.push(format!(
            "and {} more (`trustctl audit verify` lists the chain's)",
            rest_ids.len()
        ));
        rest = Some(d);
    }
    let e = e.reason(format!(
        "audit log damage found before any new record was written: {}",
        texts.join("; ")
    ));
    (e, ids, rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: u64, kind: &str, outcome: Outcome, digests: &[(&str, &str)]) -> Record {
        Record {
            seq,
            prev: super::super::GENESIS.to_owned(),
            time: "2026-01-01T00:00:00Z".into(),
            mono_ns: 0,
            boot_id: "b".into(),
            kind: kind.into(),
            from: None,
            to: None,
            actor: super::super::Actor::default(),
            outcome,
            reason: Some(format!("r{seq}")),
            digests: digests
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    fn finding(n: u8) -> Finding {
        Finding::new("record-altered", format!("k{n}"), format!("t{n}"))
    }

    #[test]
    fn history_reads_damage_acknowledgements_forks_and_announcements() {
        let root = "ab".repeat(32);
        let mut h = History::default();
        for r in [
            rec(3, CHECKPOINT_KIND, Outcome::Ok, &[("size", "4")]),
            rec(
                5,
                DAMAGE_KIND,
                Outcome::Error,
                &[
                    ("finding.000", "id-a"),
                    ("finding.000.kind", "log-rewritten"),
                    ("finding.000.checkpoint-size", "4"),
                    ("finding.000.checkpoint-root", root.as_str()),
                    ("rest", "digest-r"),
                ],
            ),
            rec(6, ACKNOWLEDGE_KIND, Outcome::Ok, &[("through", "5")]),
            rec(8, DAMAGE_KIND, Outcome::Error, &[("finding.000", "id-b")]),
            rec(9, CHECKPOINT_KIND, Outcome::Ok, &[("size", "10")]),
            rec(10, CHECKPOINT_KIND, Outcome::Error, &[("size", "10")]),
        ] {
            h.read(&r);
        }
        assert_eq!(h.unacknowledged(), vec![(8, "r8".to_owned())]);
        assert_eq!(h.damage.len(), 2, "acknowledged damage stays on record");
        assert!(h.known.contains("id-a") && h.known.contains("id-b"));
        assert!(h.known_rest.contains("digest-r"));
        assert_eq!(h.forks, vec![(4, [0xab; 32])]);
        assert_eq!(
            h.announced, 4,
            "the failed announcement of 10 does not count"
        );
    }

    #[test]
    fn only_damage_not_on_record_is_new() {
        let (a, b, c) = (finding(1), finding(2), finding(3));
        let mut h = History::default();
        h.record(1, "x".into(), vec![a.id()], None, &[]);
        let found = [a.clone(), b.clone()];
        assert_eq!(h.new_findings(&found), vec![&b]);
        // Findings bound by the digest of the rest count as recorded, together.
        h.record(
            2,
            "y".into(),
            vec![],
            Some(ids_digest(&[b.id(), c.id()])),
            &[],
        );
        assert!(
            h.new_findings(&[a.clone(), c.clone(), b.clone()])
                .is_empty()
        );
        assert_eq!(h.new_findings(std::slice::from_ref(&b)), vec![&b]);
        // Other bytes at the same place are other damage.
        let other = Finding::new("record-altered", "k1-other", "t1");
        assert_ne!(other.id(), a.id());
    }

    #[test]
    fn a_damage_record_spells_out_the_first_findings_and_binds_the_rest() {
        let many: Vec<Finding> = (0..40).map(finding).collect();
        let refs: Vec<&Finding> = many.iter().collect();
        let (e, ids, rest) = damage_entry(&refs);
        assert_eq!(ids.len(), MAX_LISTED);
        assert_eq!(e.digests.get("rest.count").map(String::as_str), Some("8"));
        let rest_ids: Vec<String> = many[MAX_LISTED..].iter().map(Finding::id).collect();
        assert_eq!(rest, Some(ids_digest(&rest_ids)));
        assert!(
            e.reason
                .as_deref()
                .is_some_and(|r| r.contains("[record-altered] t0") && r.contains("and 8 more"))
        );
        let mut h = History::default();
        h.read(&Record {
            seq: 1,
            prev: super::super::GENESIS.to_owned(),
            time: String::new(),
            mono_ns: 0,
            boot_id: String::new(),
            kind: e.kind.clone(),
            from: None,
            to: None,
            actor: e.actor.clone(),
            outcome: e.outcome,
            reason: e.reason.clone(),
            digests: e.digests.clone(),
        });
        assert!(
            h.new_findings(&many).is_empty(),
            "read back, all are on record"
        );
    }
}
