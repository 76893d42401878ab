//! What the audit benchmarks share: the record they append, where they write, and the
//! writer threads.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use trustd::audit::{Actor, AuditLog, Entry, Outcome};

/// A record of the size a policy change writes.
pub fn entry(i: u64) -> Entry {
    Entry::new("policy.apply", Outcome::Ok, Actor::this_process())
        .transition(format!("serial {i}"), format!("serial {}", i + 1))
        .digest("input", format!("{i:064x}"))
}

/// A temporary directory under `base` (a disk or tmpfs chosen by the benchmark).
pub fn tempdir_in(base: &Path) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("trustd-bench-")
        .tempdir_in(base)
        .expect("tempdir")
}

/// Records per second that `writers` threads append to `log` for `budget`, and how many.
pub fn hammer(log: &Arc<AuditLog>, writers: u64, budget: Duration) -> (f64, u64) {
    let start = Instant::now();
    let threads: Vec<_> = (0..writers)
        .map(|t| {
            let log = Arc::clone(log);
            std::thread::spawn(move || {
                let mut n = 0u64;
                while start.elapsed() < budget {
                    log.append(entry(t << 32 | n)).expect("append");
                    n += 1;
                }
                n
            })
        })
        .collect();
    let total: u64 = threads.into_iter().map(|t| t.join().expect("join")).sum();
    (total as f64 / start.elapsed().as_secs_f64(), total)
}
