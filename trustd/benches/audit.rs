//! Audit log benchmark: durable appends (1 and 16 writers) against a bare write+fdatasync
//! loop of the same record size, and verify speed against a bare SHA-256 chain over the
//! same bytes. Baselines are measured in the same run; the ratios are what to read.
//!
//! `cargo bench -p trustd --bench audit` (env AUDIT_BENCH_RECORDS for the verify size,
//! AUDIT_BENCH_DIR for where durable appends go; default: the system temp dir).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use trustd::audit::checkpoint::checkpoint_log;
use trustd::audit::damage::Anchor;
use trustd::audit::{AuditLog, Options, verify_dir};

mod common;
use common::{entry, hammer, tempdir_in};

fn record_len(dir: &Path) -> usize {
    let data = std::fs::read(dir.join(trustd::audit::segment_name(0))).expect("read");
    let lines = data.iter().filter(|&&b| b == b'\n').count().max(1);
    data.len() / lines
}

/// Bare baseline: write one record-sized line and fdatasync, repeatedly; appending to a
/// growing file, or (`prealloc`) overwriting zeros written beforehand, as the log does.
fn bare_fdatasync(base: &Path, len: usize, budget: Duration, prealloc: bool) -> f64 {
    use std::os::unix::fs::FileExt;
    let d = tempdir_in(base);
    let mut f = std::fs::File::create(d.path().join("bare")).expect("create");
    if prealloc {
        f.write_all(&vec![0u8; 64 << 20]).expect("zeros");
        f.sync_all().expect("sync");
    }
    let mut line = vec![b'x'; len - 1];
    line.push(b'\n');
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < budget {
        f.write_all_at(&line, n * len as u64).expect("write");
        f.sync_data().expect("fdatasync");
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn appends(base: &Path, writers: u64, budget: Duration) -> (f64, usize) {
    let d = tempdir_in(base);
    let (log, _) = AuditLog::open(d.path(), Options::default()).expect("open");
    let log = Arc::new(log);
    let (rate, total) = hammer(&log, writers, budget);
    let (records, flushes) = log.stats();
    println!(
        "  {writers:>2} writer(s): {records} records in {flushes} fdatasyncs ({:.1} per batch)",
        records as f64 / flushes.max(1) as f64
    );
    let rep = verify_dir(d.path()).expect("verify");
    assert!(rep.ok() && rep.records == total, "bench log must verify");
    (rate, record_len(d.path()))
}

/// Bare baseline: SHA-256 chained over each line of the same files.
fn bare_chain(dir: &Path) -> (u64, [u8; 32]) {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("ls")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    let mut h = [0u8; 32];
    let mut n = 0;
    for f in files {
        let data = std::fs::read(f).expect("read");
        let end = data.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        for line in data[..end].split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let mut s = Sha256::new();
            s.update(h);
            s.update(line);
            h = s.finalize().into();
            n += 1;
        }
    }
    (n, h)
}

fn best_of<T>(runs: usize, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut best = None;
    for _ in 0..runs {
        let start = Instant::now();
        let out = f();
        let el = start.elapsed();
        if best.as_ref().is_none_or(|(b, _)| el < *b) {
            best = Some((el, out));
        }
    }
    best.expect("at least one run")
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let base = std::env::var_os("AUDIT_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    let budget = Duration::from_secs(3);
    println!(
        "durable appends in {} ({}s each)",
        base.display(),
        budget.as_secs()
    );
    let (one, len) = appends(&base, 1, budget);
    let bare = bare_fdatasync(&base, len, budget, false);
    let bare_pre = bare_fdatasync(&base, len, budget, true);
    let (sixteen, _) = appends(&base, 16, budget);
    println!(
        "  bare write+fdatasync, {len}-byte records: {bare:>10.0} records/s  (appending: the baseline)"
    );
    println!(
        "  same, into preallocated zeros:       {bare_pre:>10.0} records/s  ({:.2}x bare)",
        bare_pre / bare
    );
    println!(
        "  audit log, 1 writer:                 {one:>10.0} records/s  ({:.2}x bare)",
        one / bare
    );
    println!(
        "  audit log, 16 writers:               {sixteen:>10.0} records/s  ({:.2}x bare; target >= 10x)",
        sixteen / bare
    );

    let n: u64 = std::env::var("AUDIT_BENCH_RECORDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(500_000);
    // The verify data set is written where fsync is cheap; verify reads it from the page cache.
    let shm = Path::new("/dev/shm");
    let vd = tempdir_in(if shm.is_dir() { shm } else { &base });
    {
        let (log, _) = AuditLog::open(vd.path(), Options::default()).expect("open");
        let log = Arc::new(log);
        let per = n / 16;
        let threads: Vec<_> = (0..16u64)
            .map(|t| {
                let log = Arc::clone(&log);
                std::thread::spawn(move || {
                    for i in 0..per {
                        log.append(entry(t << 32 | i)).expect("append");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("join");
        }
    }
    let (t_bare, (records, _)) = best_of(3, || bare_chain(vd.path()));
    let (t_ver, rep) = best_of(3, || verify_dir(vd.path()).expect("verify"));
    assert!(rep.ok(), "{:?}", rep.problems);
    assert_eq!(rep.records, records);
    let bare_rate = records as f64 / t_bare.as_secs_f64();
    let ver_rate = records as f64 / t_ver.as_secs_f64();
    println!("verify, {records} records ({} segments)", rep.segments);
    println!("  bare SHA-256 chain:                  {bare_rate:>10.0} records/s");
    println!(
        "  audit verify:                        {ver_rate:>10.0} records/s  ({:.0}% of bare; target >= 70%)",
        100.0 * ver_rate / bare_rate
    );

    // Opening as the daemon does: the chain, the head and the device's checkpoint are all
    // checked before the first record is written.
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let origin = trustd::report::origin(&key.verifying_key());
    {
        let (log, _) = AuditLog::open(vd.path(), Options::default()).expect("open");
        checkpoint_log(&log, &origin, &origin, &key).expect("checkpoint");
    }
    let anchor = Anchor {
        origin,
        key: key.verifying_key(),
    };
    let (t_open, rep) = best_of(3, || {
        AuditLog::open_anchored(vd.path(), Options::default(), Some(&anchor))
            .expect("open")
            .1
    });
    assert!(rep.damage.is_none(), "{:?}", rep.damage);
    println!(
        "  open with every check (chain, head, checkpoint): {:>6.0} ms ({:.0} records/s)",
        t_open.as_secs_f64() * 1000.0,
        records as f64 / t_open.as_secs_f64()
    );
}
