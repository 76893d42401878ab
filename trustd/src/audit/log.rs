//! The writer: one process appends; many threads may call [`AuditLog::append`] at once and
//! share one `fdatasync` per batch (group commit). A call returns only once its record is on
//! disk. A batch whose write fails is refused to every caller in it (and to those queued
//! behind it), its bytes are overwritten by the next batch, and the chain goes on from the
//! last durable record: a transition that cannot be audited must not happen, and a log
//! whose storage comes back takes records again. Records that could not be written are
//! counted by kind and recorded in one `audit.gap` record before the next record.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::damage::{self, Anchor, HeadFound, History};
use super::merkle::{ConsistencyProof, Hash, InclusionProof, MerkleTree, ProofError, leaf_hash};
use super::record::hash_hex;
use super::segment::{
    HEAD_FILE, chain_fields, create_preallocated, encode_head, list_segments, segment_name,
    written_len,
};
use super::verify::Problem;
use super::{AUDIT_MESSAGE_ID, Actor, Entry, GENESIS, Outcome, Record, record_hash};
use crate::files::atomic::{create_dir_all, fsync_dir};
use crate::files::lock::{LockError, try_lock};
use crate::storage::{GAP_KIND, Gap, StorageFault};
use crate::timefmt::Timestamp;

/// Why the audit log could not be opened or appended to.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// A file operation failed.
    #[error("audit log {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The batch that carried this record could not be written (or one before it in the
    /// same group commit); the record is not in the log.
    #[error("audit record not written ({0})")]
    Failed(String),
    /// Another process is writing this log.
    #[error("audit log {0} is in use by another writer")]
    Locked(PathBuf),
    /// The log cannot take another record (its sequence numbers are exhausted or forged).
    #[error("audit log {path}: {why}")]
    Damaged {
        /// The log directory.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

/// Sequence numbers stay below this (2^62): no real log comes near it, so a record at or
/// above it is damage, and appending never overflows.
pub const MAX_SEQ: u64 = 1 << 62;

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> AuditError + '_ {
    move |source| AuditError::Io {
        path: path.into(),
        source,
    }
}

/// `{"seq":0,"prev":"<64 zeros>"`: what a record serialized with seq 0 and the genesis
/// prev starts with.
const PLACEHOLDER_PREFIX_LEN: usize = r#"{"seq":0,"prev":""#.len() + 64;

/// The longest a leader waits for the other callers' records before it writes its batch.
const GATHER_MAX: Duration = Duration::from_micros(200);

/// Tunables.
#[derive(Debug, Clone)]
pub struct Options {
    /// Each segment is preallocated to this size; a batch that would not fit starts the
    /// next segment.
    pub max_segment_bytes: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            max_segment_bytes: 8 << 20,
        }
    }
}

/// Where an appended record landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// Its sequence number.
    pub seq: u64,
    /// Its chain hash (lowercase hex).
    pub hash: String,
}

/// What opening found.
#[derive(Debug, Clone, Default)]
pub struct OpenReport {
    /// Records in the log after the repair (the next seq).
    pub records: u64,
    /// The torn tail that was cut, as a sentence (also written as an `audit.repair` record).
    pub repaired: Option<String>,
    /// The reason of the damage record this open wrote, if it wrote one (at most one).
    pub warnings: Vec<String>,
    /// The damage record this open wrote: its seq and reason.
    pub damage: Option<(u64, String)>,
    /// Every discrepancy found, those recorded by earlier opens included.
    pub findings: Vec<String>,
    /// Damage records no admin has acknowledged yet: (seq, reason).
    pub unacknowledged: Vec<(u64, String)>,
    /// A checkpoint announced as the last record but never stored (the run stopped between
    /// the two): its announced size. The device signs it again once open.
    pub interrupted_checkpoint: Option<u64>,
}

struct Shared {
    next_seq: u64,
    prev: [u8; 32],
    pending: Vec<u8>,
    pending_last: Option<(u64, [u8; 32])>,
    flushing: bool,
    gathering: bool,
    waiters: Vec<std::thread::Thread>,
    /// Callers whose records were in a batch that failed (or queued behind it), with the
    /// failure: each takes its own entry out and returns it.
    failed: std::collections::HashMap<std::thread::ThreadId, String>,
    /// The hash of the last durable record (where the chain goes on after a failed batch).
    durable_prev: [u8; 32],
    /// The first write failure not yet followed by a successful write.
    fault: Option<StorageFault>,
    flushes: u64,
}

struct Io {
    dir: PathBuf,
    seg: File,
    seg_index: u32,
    seg_len: u64,
    /// Bytes after the last newline of the current segment that open left in place (a torn
    /// tail in a segment damaged before it, which open does not cut): the next batch
    /// written after them ends that line, so its first leaf is these bytes and its first
    /// line together.
    partial: Vec<u8>,
    head: File,
    /// Whether the head was fsynced since open (once: so that a power loss right after
    /// the first batch does not leave an empty head beside acknowledged records).
    head_synced: bool,
    /// Where bytes of a failed batch may lie beyond `seg_len` in the current segment: the
    /// next write covers them (with zeros past its own end), so that no torn record stays
    /// for a later record to follow.
    dirty_end: u64,
    max_segment_bytes: u64,
    _lock: crate::files::lock::DirLock,
}

/// An open audit log (the single writer of its directory).
pub struct AuditLog {
    dir: PathBuf,
    boot_id: String,
    shared: Mutex<Shared>,
    gather: Condvar,
    /// Records below this seq are on disk.
    durable_next: AtomicU64,
    /// Callers inside `append`.
    in_append: AtomicUsize,
    /// A leader is waiting for more records (mirrors `Shared::gathering` for lock-free reads).
    gathering: AtomicBool,
    io: Mutex<Io>,
    /// The Merkle tree over the durable records, grown by each batch's leader after the
    /// batch is on disk and before its callers return; locked after `io`, never before.
    tree: Mutex<MerkleTree>,
    /// Cleared only by `AuditLog::freeze_tree_for_bench` (cargo feature `bench`).
    #[cfg(feature = "bench")]
    tree_grows: AtomicBool,
    /// What the log's audit records say about damage and checkpoints (as of open, plus
    /// the damage open recorded).
    history: Mutex<History>,
    /// Records not written since the storage failed; written as an `audit.gap` record
    /// before any other record once the log takes writes again. Locked before `shared`.
    gap: Mutex<Option<Gap>>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; keep going with it.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The last complete, well-formed record in `data` and where it ends, and whether anything
/// after it is a well-formed record (damage, as opposed to a torn tail).
fn scan(data: &[u8]) -> (Option<(u64, [u8; 32], usize)>, bool) {
    let mut last = None;
    let mut damaged_before_last = false;
    let mut junk_seen = false;
    let mut pos = 0;
    while let Some(nl) = data[pos..].iter().position(|&b| b == b'\n') {
        let line = &data[pos..pos + nl];
        let good = chain_fields(line).is_some() && serde_json::from_slice::<Record>(line).is_ok();
        if good {
            if junk_seen {
                damaged_before_last = true;
            }
            let seq = chain_fields(line).map_or(0, |(s, _)| s);
            last = Some((seq, record_hash(line), pos + nl + 1));
        } else {
            junk_seen = true;
        }
        pos += nl + 1;
    }
    (last, damaged_before_last)
}

impl AuditLog {
    /// Open (creating if needed) the log in `dir` without checking a checkpoint: see
    /// [`AuditLog::open_anchored`].
    pub fn open(dir: &Path, opts: Options) -> Result<(Self, OpenReport), AuditError> {
        Self::open_anchored(dir, opts, None)
    }

    /// Open (creating if needed) the log in `dir`. Before anything is written, the
    /// segments, the head file and (with `anchor`, the device's key) the stored checkpoint
    /// are checked against each other; every discrepancy no earlier damage record names
    /// is recorded in one `audit.damage` record, the first record this open writes. A torn
    /// tail is cut only when the head and the checkpoint show it was never acknowledged
    /// (the cut is recorded, with the digest of the cut bytes); otherwise it is kept in
    /// place as a line of its own and recorded as damage. Then the Merkle tree is rebuilt
    /// from every segment.
    pub fn open_anchored(
        dir: &Path,
        opts: Options,
        anchor: Option<&Anchor>,
    ) -> Result<(Self, OpenReport), AuditError> {
        create_dir_all(dir, 0o750).map_err(io_err(dir))?;
        let lock_path = dir.join(".lock");
        let lock_file = match try_lock(&lock_path) {
            Ok(l) => l,
            Err(LockError::Held) => return Err(AuditError::Locked(dir.into())),
            Err(LockError::Io(e)) => return Err(io_err(&lock_path)(e)),
        };

        let mut report = OpenReport::default();
        // Everything is inspected before any byte is changed.
        let first = damage::inspect(dir, anchor)?;
        let mut segments = list_segments(dir).map_err(io_err(dir))?;
        if segments.is_empty() {
            let p = dir.join(segment_name(0));
            create_preallocated(&p, opts.max_segment_bytes).map_err(io_err(&p))?;
            segments.push((0, p));
        }

        // The last well-formed record, and what follows it in the last segment.
        let mut last: Option<(u64, [u8; 32])> = None;
        let mut tail: Option<(u32, PathBuf, usize, Vec<u8>)> = None;
        for (i, (index, path)) in segments.iter().enumerate().rev() {
            let data = std::fs::read(path).map_err(io_err(path))?;
            let written = written_len(&data);
            let (found, damaged) = scan(&data[..written]);
            let end = found.map_or(0, |(_, _, e)| e);
            if i == segments.len() - 1 && end < written && !damaged {
                tail = Some((*index, path.clone(), end, data[end..written].to_vec()));
            }
            if let Some((seq, hash, _)) = found {
                last = Some((seq, hash));
                break;
            }
        }
        let last_seq = last.map(|(s, _)| s);

        let mut extra: Vec<damage::Finding> = Vec::new();
        let mut repair: Option<Entry> = None;
        if let Some((index, path, end, bytes)) = tail {
            let seg = segment_name(index);
            let digest = crate::digest::sha256_hex(&bytes);
            let acked = first.acknowledged_through();
            let head_sound = match &first.head {
                HeadFound::At(h, _) => last_seq.is_some_and(|l| *h <= l),
                HeadFound::Empty => last_seq.is_none(),
                _ => false,
            } && !first.report.problems.iter().any(|p| {
                matches!(
                    p,
                    Problem::Truncated { .. } | Problem::HeadMismatch { .. } | Problem::Head { .. }
                )
            });
            let beyond = acked.is_some_and(|a| last_seq.is_none_or(|l| a > l));
            let f = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(io_err(&path))?;
            let after = last_seq.map_or("before the first record".to_owned(), |l| {
                format!("after record {l}, the last complete one")
            });
            if head_sound && !beyond {
                // A torn batch that no caller was told is durable: zero it (the segment
                // keeps its preallocated size).
                f.write_all_at(&vec![0u8; bytes.len()], end as u64)
                    .map_err(io_err(&path))?;
                f.sync_data().map_err(io_err(&path))?;
                let why = match (&first.head, &first.checkpoint) {
                    (HeadFound::At(h, _), Some(cp)) => format!(
                        "the head names record {h} as the last acknowledged and the checkpoint covers {} records",
                        cp.size
                    ),
                    (HeadFound::At(h, _), None) => {
                        format!("the head names record {h} as the last acknowledged")
                    }
                    _ => "the head is empty: no record was ever acknowledged".to_owned(),
                };
                let text = format!(
                    "cut {} bytes of a torn record at the end of {seg} {after} (written but never acknowledged: {why}); SHA-256 of the cut bytes {digest}",
                    bytes.len()
                );
                repair = Some(
                    Entry::new(damage::REPAIR_KIND, Outcome::Ok, Actor::this_process())
                        .reason(text)
                        .digest("cut-sha256", digest)
                        .digest("cut-bytes", bytes.len().to_string()),
                );
            } else {
                // Evidence: keep the bytes where they are, ended as a line of their own,
                // so that the next record starts on a line of its own.
                if bytes.last() != Some(&b'\n') {
                    f.write_all_at(b"\n", (end + bytes.len()) as u64)
                        .map_err(io_err(&path))?;
                    f.sync_data().map_err(io_err(&path))?;
                }
                let why = match acked {
                    Some(a) if beyond => format!(
                        "although record {a} was acknowledged (head or checkpoint): acknowledged records were cut"
                    ),
                    _ => format!(
                        "and whether they were acknowledged cannot be told ({} found)",
                        damage::head_text(&first.head)
                    ),
                };
                extra.push(
                    damage::Finding::new(
                        "cut-through-acknowledged",
                        format!("{seg}:{digest}"),
                        format!(
                            "{seg} ends in {} bytes that are not whole records {after}, {why}; they are kept in place, not cut",
                            bytes.len()
                        ),
                    )
                    .with("tail-sha256", digest)
                    .with("tail-bytes", bytes.len().to_string()),
                );
            }
        }
        // What the files say now (after a cut or an ended line, inspect them again).
        let mut insp = if repair.is_some() || !extra.is_empty() {
            damage::inspect(dir, anchor)?
        } else {
            first
        };
        insp.findings.extend(extra);
        insp.findings.sort_by_key(|f| damage::priority(f.kind));

        let (index, path) = segments
            .last()
            .cloned()
            .ok_or_else(|| io_err(dir)(std::io::Error::other("no segment")))?;
        let seg = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        let seg_data = std::fs::read(&path).map_err(io_err(&path))?;
        let seg_written = &seg_data[..written_len(&seg_data)];
        let seg_len = seg_written.len() as u64;
        let partial = seg_written
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(seg_written, |nl| &seg_written[nl + 1..])
            .to_vec();
        let next_seq = match last {
            None => 0,
            Some((s, _)) if s < MAX_SEQ => s + 1,
            Some((s, _)) => {
                return Err(AuditError::Damaged {
                    path: dir.to_owned(),
                    why: format!(
                        "its last record claims seq {s}, beyond any real log: it is damaged or forged; nothing more is appended to it"
                    ),
                });
            }
        };

        let head_path = dir.join(HEAD_FILE);
        let head_existed = head_path.exists();
        let head = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .mode(0o640)
            .open(&head_path)
            .map_err(io_err(&head_path))?;
        if !head_existed {
            fsync_dir(dir).map_err(io_err(dir))?;
        }

        // The Merkle tree over every line the files hold (after the cut above), which is
        // what an offline verifier rebuilds from them.
        let tree = super::merkle::merkle_from_dir(dir)?;
        let mut genesis = [0u8; 32];
        if let Some((_, h)) = last {
            genesis = h;
        }
        report.interrupted_checkpoint = insp.interrupted_checkpoint;
        let new: Vec<damage::Finding> = insp
            .history
            .new_findings(&insp.findings)
            .into_iter()
            .cloned()
            .collect();
        let mut history = insp.history;
        let log = Self {
            dir: dir.into(),
            boot_id: crate::sys::boot_id(),
            shared: Mutex::new(Shared {
                next_seq,
                prev: genesis,
                pending: Vec::new(),
                pending_last: None,
                flushing: false,
                gathering: false,
                waiters: Vec::new(),
                failed: std::collections::HashMap::new(),
                durable_prev: genesis,
                fault: None,
                flushes: 0,
            }),
            gather: Condvar::new(),
            durable_next: AtomicU64::new(next_seq),
            in_append: AtomicUsize::new(0),
            gathering: AtomicBool::new(false),
            io: Mutex::new(Io {
                dir: dir.into(),
                seg,
                seg_index: index,
                seg_len,
                partial,
                head,
                head_synced: false,
                dirty_end: 0,
                max_segment_bytes: opts.max_segment_bytes.max(1),
                _lock: lock_file,
            }),
            tree: Mutex::new(tree),
            #[cfg(feature = "bench")]
            tree_grows: AtomicBool::new(true),
            history: Mutex::new(History::default()),
            gap: Mutex::new(None),
        };
        // Damage first: before the head is rewritten and before any other record.
        if !new.is_empty() {
            let refs: Vec<&damage::Finding> = new.iter().collect();
            let (entry, ids, rest) = damage::damage_entry(&refs);
            let reason = entry.reason.clone().unwrap_or_default();
            let r = log.append(entry)?;
            history.record(r.seq, reason.clone(), ids, rest, &refs);
            report.warnings.push(reason.clone());
            report.damage = Some((r.seq, reason));
        }
        if let Some(r) = repair {
            report.repaired = r.reason.clone();
            log.append(r)?;
        }
        report.findings = insp.findings.iter().map(|f| f.text.clone()).collect();
        report.unacknowledged = history.unacknowledged();
        *lock(&log.history) = history;
        report.records = lock(&log.shared).next_seq;
        Ok((log, report))
    }

    /// What the log's audit records say about damage and checkpoints: the damage found
    /// and recorded so far (this open's included), acknowledgements, announced checkpoints.
    pub fn history(&self) -> History {
        lock(&self.history).clone()
    }

    /// Whether a damage record names the checkpoint (`size`, `root`) as one the log does not
    /// extend: then a new checkpoint may be signed although it is not consistent with that
    /// one (the fork is on record, in the log itself).
    pub fn fork_recorded(&self, size: u64, root: &Hash) -> bool {
        lock(&self.history)
            .forks
            .iter()
            .any(|(s, r)| *s == size && r == root)
    }

    /// The directory of this log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The next seq and the hash of the last record (the chain head, for posture).
    pub fn head(&self) -> (u64, String) {
        let s = lock(&self.shared);
        let prev = if s.next_seq == 0 {
            GENESIS.to_owned()
        } else {
            hash_hex(&s.prev)
        };
        (s.next_seq, prev)
    }

    /// The size and root of the Merkle tree over the durable records (every record whose
    /// `append` has returned, and possibly a few whose batch is just done): what a
    /// checkpoint signs. A record that a crash could still lose is never in it.
    pub fn tree_head(&self) -> (u64, Hash) {
        let t = lock(&self.tree);
        (t.size(), t.root())
    }

    /// The root of the tree at a past `size`.
    pub fn root_at(&self, size: u64) -> Result<Hash, ProofError> {
        lock(&self.tree).root_at(size)
    }

    /// The inclusion proof of record `index` (its seq, in an intact log) in the tree of
    /// `size` records.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<InclusionProof, ProofError> {
        lock(&self.tree).inclusion_proof(index, size)
    }

    /// The consistency proof from the tree of `old` records to the tree of `new` records.
    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<ConsistencyProof, ProofError> {
        lock(&self.tree).consistency_proof(old, new)
    }

    /// Run `f` on the tree (for several proofs against one state of it).
    pub fn with_tree<R>(&self, f: impl FnOnce(&MerkleTree) -> R) -> R {
        f(&lock(&self.tree))
    }

    /// Benchmarks only (cargo feature `bench`, which no shipped build enables): stop growing
    /// the tree, to measure appends without it. The tree stays what it was, the tree head of
    /// a prefix of the log; it never grows again.
    #[cfg(feature = "bench")]
    pub fn freeze_tree_for_bench(&self) {
        self.tree_grows.store(false, Ordering::SeqCst);
    }

    /// Whether a batch grows the tree: always, unless a benchmark froze it.
    fn tree_grows(&self) -> bool {
        #[cfg(feature = "bench")]
        {
            self.tree_grows.load(Ordering::Relaxed)
        }
        #[cfg(not(feature = "bench"))]
        {
            true
        }
    }

    /// Records appended and fdatasync batches since open (their ratio is the group-commit
    /// batch size).
    pub fn stats(&self) -> (u64, u64) {
        let s = lock(&self.shared);
        (self.durable_next.load(Ordering::Acquire), s.flushes)
    }

    /// Append `entry`; returns once it is on disk. Records missed while the storage failed
    /// are recorded first, in one `audit.gap` record. A record that cannot be written is
    /// counted in the gap (by kind) and the error returned: the caller must not make the
    /// change it records.
    pub fn append(&self, entry: Entry) -> Result<Receipt, AuditError> {
        let kind = entry.kind.clone();
        let result = self.close_gap().and_then(|()| self.append_one(entry));
        if let Err(e) = &result {
            self.miss(&kind, e);
        }
        result
    }

    /// Append a record of what trustd did anyway (enforcement, drift repair, link changes:
    /// enforcement beats logging). If it cannot be written it is counted in the gap and
    /// logged, and `None` returned; the caller goes on.
    pub fn record(&self, entry: Entry) -> Option<Receipt> {
        let kind = entry.kind.clone();
        match self.append(entry) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::error!(
                    "audit record {kind} not written (counted for the gap record): {e}"
                );
                None
            }
        }
    }

    /// Try to write the gap record now, if records were missed (the periodic probe of a
    /// failed log). Returns whether the log takes writes (no gap is left open).
    pub fn probe(&self) -> bool {
        self.close_gap().is_ok()
    }

    /// Bytes that a failed batch may have left past the last record, as (segment file name,
    /// how many): trustd's own unfinished write, which the next batch covers (or the next
    /// open cuts as never acknowledged). `None` when there are none.
    pub fn unfinished(&self) -> Option<(String, u64)> {
        let io = lock(&self.io);
        (io.dirty_end > io.seg_len).then(|| (segment_name(io.seg_index), io.dirty_end - io.seg_len))
    }

    /// The storage failure in effect and the records missed so far, while a gap is open.
    pub fn gap(&self) -> Option<Gap> {
        lock(&self.gap).clone()
    }

    fn miss(&self, kind: &str, e: &AuditError) {
        let now = Timestamp::now();
        let fault = lock(&self.shared).fault.clone().unwrap_or_else(|| {
            let io = match e {
                AuditError::Io { source, .. } => {
                    std::io::Error::new(source.kind(), source.to_string())
                }
                other => std::io::Error::other(other.to_string()),
            };
            StorageFault::new("audit log", &self.dir, &io, now)
        });
        lock(&self.gap)
            .get_or_insert_with(|| Gap::new(fault))
            .miss(kind, now);
    }

    /// Write the `audit.gap` record if records were missed. Holds the gap lock throughout,
    /// so that no other record lands before it.
    fn close_gap(&self) -> Result<(), AuditError> {
        let mut g = lock(&self.gap);
        let Some(gap) = g.as_ref() else {
            return Ok(());
        };
        let now = Timestamp::now();
        let mut entry = Entry::new(GAP_KIND, Outcome::Error, Actor::this_process())
            .reason(gap.sentence(now))
            .digest("missed", gap.total().to_string())
            .digest("first", gap.first.to_string())
            .digest("last", gap.last.to_string())
            .digest("errno", gap.fault.errno.clone());
        for (k, n) in &gap.missed {
            entry = entry.digest(format!("count.{k}"), n.to_string());
        }
        self.append_one(entry)?;
        tracing::warn!("audit log takes writes again: {}", gap.sentence(now));
        *g = None;
        Ok(())
    }

    fn append_one(&self, entry: Entry) -> Result<Receipt, AuditError> {
        // Serialize outside the lock with a placeholder place in the chain; under the lock
        // only the `seq` and `prev` prefix is written and the line hashed.
        let mut record = Record {
            seq: 0,
            prev: GENESIS.to_owned(),
            time: Timestamp::now().to_string(),
            mono_ns: crate::sys::monotonic_ns(),
            boot_id: self.boot_id.clone(),
            kind: entry.kind,
            from: entry.from,
            to: entry.to,
            actor: entry.actor,
            outcome: entry.outcome,
            reason: entry.reason,
            digests: entry.digests,
        };
        let placeholder = serde_json::to_vec(&record).map_err(|e| io_err(&self.dir)(e.into()))?;
        let rest = placeholder
            .get(PLACEHOLDER_PREFIX_LEN..)
            .ok_or_else(|| io_err(&self.dir)(std::io::Error::other("record serialization")))?;

        let me = std::thread::current().id();
        let mut s = lock(&self.shared);
        s.failed.remove(&me);
        let seq = s.next_seq;
        if seq >= MAX_SEQ {
            return Err(AuditError::Damaged {
                path: self.dir.clone(),
                why: format!("seq {seq} reaches the limit of {MAX_SEQ}: no record is appended"),
            });
        }
        record.seq = seq;
        if seq > 0 {
            record.prev = hash_hex(&s.prev);
        }
        let mut line = Vec::with_capacity(placeholder.len() + 20);
        line.extend_from_slice(format!("{{\"seq\":{seq},\"prev\":\"{}", record.prev).as_bytes());
        line.extend_from_slice(rest);
        let hash = record_hash(&line);
        s.prev = hash;
        s.next_seq += 1;
        s.pending.extend_from_slice(&line);
        s.pending.push(b'\n');
        s.pending_last = Some((seq, hash));
        s.waiters.push(std::thread::current());
        self.in_append.fetch_add(1, Ordering::SeqCst);
        if s.gathering {
            self.gather.notify_one();
        }
        drop(s);

        let result = loop {
            let mut s = lock(&self.shared);
            // A failed batch is checked first: after it the seqs are given out again, and
            // a later batch's success says nothing about this record.
            if let Some(f) = s.failed.remove(&me) {
                break Err(AuditError::Failed(f));
            }
            if self.durable_next.load(Ordering::Acquire) > seq {
                break Ok(Receipt {
                    seq,
                    hash: hash_hex(&hash),
                });
            }
            if s.flushing {
                // The leader of the batch in flight unparks us when it is done: either our
                // record was in it, or we are next to lead.
                drop(s);
                std::thread::park();
                continue;
            }
            self.lead(s);
        };
        self.in_append.fetch_sub(1, Ordering::SeqCst);
        if self.gathering.load(Ordering::SeqCst) {
            let _s = lock(&self.shared);
            self.gather.notify_one();
        }
        if result.is_ok() {
            mirror(&record);
        }
        result
    }

    /// Write everything pending as one batch, then wake its callers and the next leader.
    fn lead(&self, mut s: MutexGuard<'_, Shared>) {
        // Callers woken by the last flush are on their way back with their next record:
        // wait (briefly) until every caller inside `append` has its record in the batch, so
        // that one fdatasync carries them all. A lone caller never waits.
        s.flushing = true;
        s.gathering = true;
        self.gathering.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + GATHER_MAX;
        while s.waiters.len() < self.in_append.load(Ordering::SeqCst) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            s = self
                .gather
                .wait_timeout(s, left)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        s.gathering = false;
        self.gathering.store(false, Ordering::SeqCst);
        let batch = std::mem::take(&mut s.pending);
        let last = s.pending_last.take();
        let waiters = std::mem::take(&mut s.waiters);
        drop(s);

        let written = match last {
            Some(last) => {
                let mut io = lock(&self.io);
                io.write_batch(&batch, last).map(|carry| {
                    if self.tree_grows() {
                        self.grow_tree(carry, &batch);
                    }
                })
            }
            None => Ok(()),
        };

        let mut s = lock(&self.shared);
        s.flushing = false;
        let mut wake_all_pending = false;
        match (written, last) {
            (Ok(()), Some((l, h))) => {
                self.durable_next.store(l + 1, Ordering::Release);
                s.durable_prev = h;
                s.fault = None;
                s.flushes += 1;
            }
            (Ok(()), None) => {}
            (Err(e), _) => {
                // Nothing of this batch is in the log, nor of what was queued behind it
                // (chained onto it): every one of those callers is refused, and the chain
                // goes on from the last durable record.
                let mut why = crate::error_chain(&e);
                if let AuditError::Io { path, source } = &e {
                    why = format!("{why} [{}]", crate::storage::errno_name(source));
                    if s.fault.is_none() {
                        s.fault = Some(StorageFault::new(
                            "audit log",
                            path,
                            source,
                            Timestamp::now(),
                        ));
                    }
                }
                let durable = self.durable_next.load(Ordering::Acquire);
                s.next_seq = durable;
                s.prev = s.durable_prev;
                s.pending.clear();
                s.pending_last = None;
                let ids: Vec<std::thread::ThreadId> = waiters
                    .iter()
                    .chain(&s.waiters)
                    .map(std::thread::Thread::id)
                    .collect();
                for id in ids {
                    s.failed.insert(id, why.clone());
                }
                wake_all_pending = true;
            }
        }
        let next: Vec<std::thread::Thread> = if wake_all_pending {
            std::mem::take(&mut s.waiters)
        } else {
            s.waiters.first().cloned().into_iter().collect()
        };
        drop(s);
        let me = std::thread::current().id();
        for t in waiters.iter().chain(&next).filter(|t| t.id() != me) {
            t.unpark();
        }
    }
}

impl AuditLog {
    /// Add a durable batch's lines to the tree (called by its leader, holding `io`, so
    /// batches enter in log order). The leaf hashes are computed before the tree is locked;
    /// under the lock only the frontier moves.
    fn grow_tree(&self, carry: Vec<u8>, batch: &[u8]) {
        let mut lines = batch.split(|&b| b == b'\n');
        let mut hashes = Vec::with_capacity(batch.len() / 200 + 1);
        if !carry.is_empty() {
            let mut first = carry;
            first.extend_from_slice(lines.next().unwrap_or_default());
            hashes.push(leaf_hash(&first));
        }
        // The batch ends with a newline: the last piece is empty and not a line.
        let mut lines = lines.peekable();
        while let Some(line) = lines.next() {
            if lines.peek().is_some() {
                hashes.push(leaf_hash(line));
            }
        }
        let mut t = lock(&self.tree);
        for h in hashes {
            t.push_hash(h);
        }
    }
}

impl Io {
    /// Write and fdatasync `batch`; returns the bytes its first line continues (see
    /// [`Io::partial`]), empty but after an open that left a torn tail in place.
    fn write_batch(&mut self, batch: &[u8], last: (u64, [u8; 32])) -> Result<Vec<u8>, AuditError> {
        if self.seg_len > 0 && self.seg_len + batch.len() as u64 > self.max_segment_bytes {
            // What a failed batch left past the last record is zeroed before the segment
            // is left behind (it must not stay as a torn line).
            self.clear_dirty()?;
            let index = self.seg_index + 1;
            let path = self.dir.join(segment_name(index));
            let f = match create_preallocated(&path, self.max_segment_bytes) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && unused(&path) => {
                    // Left by an earlier attempt that failed half way: it holds no record.
                    std::fs::remove_file(&path).map_err(io_err(&path))?;
                    create_preallocated(&path, self.max_segment_bytes).map_err(io_err(&path))?
                }
                Err(e) => {
                    if e.kind() != std::io::ErrorKind::AlreadyExists {
                        let _ = std::fs::remove_file(&path);
                    }
                    return Err(io_err(&path)(e));
                }
            };
            self.seg = f;
            self.seg_index = index;
            self.seg_len = 0;
            self.dirty_end = 0;
            // The old segment's torn tail stays there, a line without its newline.
            self.partial.clear();
        }
        let path = self.dir.join(segment_name(self.seg_index));
        let end = self.seg_len + batch.len() as u64;
        // Bytes a failed batch left beyond this batch's end are overwritten with zeros in
        // the same write.
        let pad = usize::try_from(self.dirty_end.saturating_sub(end)).unwrap_or(0);
        let mut buf;
        let data = if pad > 0 {
            buf = Vec::with_capacity(batch.len() + pad);
            buf.extend_from_slice(batch);
            buf.resize(batch.len() + pad, 0);
            &buf[..]
        } else {
            batch
        };
        self.dirty_end = self.dirty_end.max(end);
        // Within the preallocated zeros the file's size does not change, so fdatasync
        // flushes the data alone. After a failed fdatasync the next batch writes its bytes
        // again (a retried fdatasync alone may report success for pages it dropped).
        self.seg
            .write_all_at(data, self.seg_len)
            .map_err(io_err(&path))?;
        self.seg.sync_data().map_err(io_err(&path))?;
        self.seg_len = end;
        self.dirty_end = 0;
        let carry = std::mem::take(&mut self.partial);
        // After the data is durable: the head may lag the log after a crash, never lead it.
        // A head that cannot be written lags (verify and open accept a lagging head); the
        // records are durable and acknowledged.
        let head_path = self.dir.join(HEAD_FILE);
        let head = self
            .head
            .write_all_at(&encode_head(last.0, &last.1), 0)
            .and_then(|()| {
                if self.head_synced {
                    Ok(())
                } else {
                    self.head.sync_data()
                }
            });
        match head {
            Ok(()) => self.head_synced = true,
            Err(e) => tracing::error!(
                "audit head {} not updated ({}): it lags the log until the next write",
                head_path.display(),
                crate::storage::errno_name(&e)
            ),
        }
        Ok(carry)
    }

    /// Zero what a failed batch may have left past the last record of the current segment.
    fn clear_dirty(&mut self) -> Result<(), AuditError> {
        if self.dirty_end <= self.seg_len {
            return Ok(());
        }
        let path = self.dir.join(segment_name(self.seg_index));
        let n = usize::try_from(self.dirty_end - self.seg_len).unwrap_or(0);
        self.seg
            .write_all_at(&vec![0u8; n], self.seg_len)
            .and_then(|()| self.seg.sync_data())
            .map_err(io_err(&path))?;
        self.dirty_end = 0;
        Ok(())
    }
}

/// Whether the segment at `path` holds no record (all zeros): one a failed rollover left.
fn unused(path: &Path) -> bool {
    std::fs::read(path).is_ok_and(|d| written_len(&d) == 0)
}

/// Send a committed record to journald (or wherever tracing is set up to go), at the level
/// its outcome calls for ([`Outcome::level`]): refusals and failures at warning or above.
fn mirror(r: &Record) {
    macro_rules! mirror_at {
        ($level:expr) => {
            tracing::event!(
                target: "trustd::audit",
                $level,
                message_id = AUDIT_MESSAGE_ID,
                audit_seq = r.seq,
                audit_kind = r.kind.as_str(),
                audit_outcome = r.outcome.as_str(),
                audit_from = r.from.as_deref().unwrap_or(""),
                audit_to = r.to.as_deref().unwrap_or(""),
                audit_uid = r.actor.uid,
                "audit {} {} {}{}",
                r.seq,
                r.kind,
                r.outcome.as_str(),
                r.reason.as_deref().map(|x| format!(": {x}")).unwrap_or_default()
            )
        };
    }
    match r.outcome.level() {
        tracing::Level::ERROR => mirror_at!(tracing::Level::ERROR),
        tracing::Level::WARN => mirror_at!(tracing::Level::WARN),
        _ => mirror_at!(tracing::Level::INFO),
    }
}
