//! Storage faults: a store (the audit log or the state directory) that could not be written
//! (full, read-only, failing), since when, and the audit records that were not written
//! meanwhile. Pure bookkeeping: the audit log and the device fill it in, posture reads it.
//! It touches no file itself.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::timefmt::Timestamp;

/// The symbolic name of an I/O error's errno (`ENOSPC`, `EROFS`, `EIO`, ...), or `errno N`,
/// or the error's kind when it carries no errno.
pub fn errno_name(e: &std::io::Error) -> String {
    let Some(n) = e.raw_os_error() else {
        return format!("{:?}", e.kind());
    };
    match n {
        1 => "EPERM".into(),
        2 => "ENOENT".into(),
        5 => "EIO".into(),
        13 => "EACCES".into(),
        24 => "EMFILE".into(),
        27 => "EFBIG".into(),
        28 => "ENOSPC".into(),
        30 => "EROFS".into(),
        117 => "EUCLEAN".into(),
        122 => "EDQUOT".into(),
        n => format!("errno {n}"),
    }
}

/// The first I/O error in `e`'s chain of causes, if any.
pub fn io_cause<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        cur = c.source();
    }
    None
}

/// A store that failed to take a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageFault {
    /// Which store: `audit log` or `state directory`.
    pub store: &'static str,
    /// The file or directory whose write failed (the first failure).
    pub path: PathBuf,
    /// The errno's name (`ENOSPC`, `EROFS`, `EIO`, ...).
    pub errno: String,
    /// The error as the system reported it.
    pub error: String,
    /// When the first write failed.
    pub since: Timestamp,
}

impl StorageFault {
    /// A fault of `store` at `path` from `e`, now.
    pub fn new(store: &'static str, path: &Path, e: &std::io::Error, now: Timestamp) -> Self {
        Self {
            store,
            path: path.to_owned(),
            errno: errno_name(e),
            error: e.to_string(),
            since: now,
        }
    }

    /// `audit log /var/log/trustd/audit/segment-00000001.jsonl: ENOSPC (No space left on
    /// device (os error 28)) since 2026-11-29T20:00:00Z`.
    pub fn describe(&self) -> String {
        format!(
            "{} {}: {} ({}) since {}",
            self.store,
            self.path.display(),
            self.errno,
            self.error,
            self.since
        )
    }
}

/// Audit records that could not be written while the audit log's storage failed: how many
/// of each kind, between which times. Recorded in one `audit.gap` record, the first record
/// written once the log takes writes again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    /// The failure that opened the gap.
    pub fault: StorageFault,
    /// Records not written, by kind.
    pub missed: BTreeMap<String, u64>,
    /// When the first record was not written.
    pub first: Timestamp,
    /// When the last record was not written.
    pub last: Timestamp,
}

/// The kind of the record that closes a gap.
pub const GAP_KIND: &str = "audit.gap";

impl Gap {
    /// A gap opened by `fault`, with nothing missed yet.
    pub fn new(fault: StorageFault) -> Self {
        let t = fault.since;
        Self {
            fault,
            missed: BTreeMap::new(),
            first: t,
            last: t,
        }
    }

    /// Count a record of `kind` not written at `now`.
    pub fn miss(&mut self, kind: &str, now: Timestamp) {
        *self.missed.entry(kind.to_owned()).or_default() += 1;
        if self.total() == 1 {
            self.first = now;
        }
        self.last = now;
    }

    /// Records missed, all kinds.
    pub fn total(&self) -> u64 {
        self.missed.values().sum()
    }

    /// Merge a later gap into this one (a write of the gap record itself failed).
    pub fn absorb(&mut self, later: Gap) {
        for (k, n) in later.missed {
            *self.missed.entry(k).or_default() += n;
        }
        if self.total() > 0 {
            self.last = self.last.max(later.last);
        }
    }

    /// The sentence of the `audit.gap` record.
    pub fn sentence(&self, now: Timestamp) -> String {
        let kinds: Vec<String> = self
            .missed
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        format!(
            "{} record(s) could not be written between {} and {} ({}): {}; the log takes writes again since {now}",
            self.total(),
            self.first,
            self.last,
            self.fault.describe(),
            if kinds.is_empty() {
                "none".to_owned()
            } else {
                kinds.join(", ")
            }
        )
    }

    /// The posture reason while the gap is open.
    pub fn posture_reason(&self) -> String {
        format!(
            "{}; {} audit record(s) not written so far (enforcement continues)",
            self.fault.describe(),
            self.total()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_unix(1_800_000_000 + s).expect("time")
    }

    #[test]
    fn errno_names_the_storage_failures() {
        for (n, name) in [(28, "ENOSPC"), (30, "EROFS"), (5, "EIO"), (122, "EDQUOT")] {
            assert_eq!(errno_name(&std::io::Error::from_raw_os_error(n)), name);
        }
        assert_eq!(
            errno_name(&std::io::Error::from_raw_os_error(99)),
            "errno 99"
        );
    }

    #[test]
    fn io_cause_finds_the_errno_through_wrappers() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] std::io::Error);
        let e = Outer(std::io::Error::from_raw_os_error(5));
        assert_eq!(io_cause(&e).and_then(std::io::Error::raw_os_error), Some(5));
    }

    #[test]
    fn a_gap_counts_by_kind_and_says_when() {
        // EIO cannot be made real without a block device: the gap's bookkeeping is checked
        // here with the errno the kernel would report.
        let e = std::io::Error::from_raw_os_error(5);
        let mut g = Gap::new(StorageFault::new("audit log", Path::new("/a/s"), &e, at(0)));
        g.miss("network.drift", at(5));
        g.miss("network.apply", at(6));
        g.miss("network.drift", at(9));
        let mut later = Gap::new(g.fault.clone());
        later.miss("privacy.set", at(12));
        g.absorb(later);
        assert_eq!(g.total(), 4);
        let s = g.sentence(at(20));
        assert!(
            s.starts_with("4 record(s) could not be written between"),
            "{s}"
        );
        assert!(
            s.contains(&at(5).to_string()) && s.contains(&at(12).to_string()),
            "{s}"
        );
        assert!(s.contains("/a/s: EIO"), "{s}");
        assert!(
            s.contains("network.apply 1, network.drift 2, privacy.set 1"),
            "{s}"
        );
        assert!(g.posture_reason().contains("4 audit record(s)"));
    }
}
