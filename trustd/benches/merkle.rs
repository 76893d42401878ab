//! Merkle benchmark: durable appends with the tree maintained against the plain chain (the
//! same log with its tree frozen), measured in the same run, interleaved; then proofs at a
//! million leaves (a tree built in memory from synthetic records), and the size of a
//! checkpoint note.
//!
//! `cargo bench -p trustd --bench merkle` (env MERKLE_BENCH_DIR for where durable appends
//! go; default: the system temp dir; /dev/shm is measured too, where fdatasync is nearly
//! free and the tree's CPU cost shows most).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use trustd::audit::checkpoint::{self, Checkpoint};
use trustd::audit::merkle::{leaf_hash, verify_consistency, verify_inclusion};
use trustd::audit::{AuditLog, MerkleTree, Options, merkle_from_dir};

mod common;
use common::{hammer, tempdir_in};

/// Records per second appended by `writers` threads for `budget`, with the tree
/// maintained or frozen.
fn appends(base: &Path, writers: u64, budget: Duration, tree: bool) -> f64 {
    let d = tempdir_in(base);
    let (log, _) = AuditLog::open(d.path(), Options::default()).expect("open");
    if !tree {
        log.freeze_tree_for_bench();
    }
    let log = Arc::new(log);
    let (rate, total) = hammer(&log, writers, budget);
    let (size, root) = log.tree_head();
    if tree {
        let files = merkle_from_dir(d.path()).expect("tree");
        assert_eq!(
            (size, root),
            (files.size(), files.root()),
            "tree follows the log"
        );
        assert_eq!(size, total);
    } else {
        assert_eq!(size, 0, "frozen");
    }
    rate
}

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// Calls per second of `f` over `budget`.
fn rate(budget: Duration, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < budget {
        for _ in 0..64 {
            f();
        }
        n += 64;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn durable(base: &Path, label: &str) {
    let budget = Duration::from_secs(2);
    println!(
        "durable appends in {label} (best of 3 interleaved {}s runs)",
        budget.as_secs()
    );
    for writers in [1u64, 16] {
        let (mut plain, mut tree) = (0f64, 0f64);
        for _ in 0..3 {
            plain = plain.max(appends(base, writers, budget, false));
            tree = tree.max(appends(base, writers, budget, true));
        }
        println!(
            "  {writers:>2} writer(s): plain chain {plain:>9.0} records/s, with tree {tree:>9.0} records/s  ({:.0}% of plain; target >= 80%)",
            100.0 * tree / plain
        );
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let base = std::env::var_os("MERKLE_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    durable(&base, &base.display().to_string());
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        durable(shm, "/dev/shm");
    }

    const N: u64 = 1 << 20;
    println!("tree of {N} synthetic records in memory");
    let lines: Vec<Vec<u8>> = (0..N)
        .map(|i| {
            // Records of this log's usual length (about 330 bytes).
            format!(
                "{{\"seq\":{i},\"prev\":\"{:064x}\",\"time\":\"2026-01-01T00:00:00Z\",\"mono_ns\":{i},\"boot_id\":\"{:032x}\",\"kind\":\"policy.apply\",\"from\":\"serial {i}\",\"to\":\"serial {}\",\"actor\":{{\"uid\":0,\"pid\":1}},\"outcome\":\"ok\",\"digests\":{{\"input\":\"{i:064x}\"}}}}",
                i, i, i + 1
            )
            .into_bytes()
        })
        .collect();
    let t0 = Instant::now();
    let hashes: Vec<_> = lines.iter().map(|l| leaf_hash(l)).collect();
    let t_leaf = t0.elapsed();
    let t0 = Instant::now();
    let tree = MerkleTree::from_leaf_hashes(hashes.iter().copied());
    let t_push = t0.elapsed();
    println!(
        "  leaf hashes: {:>10.0} records/s ({} bytes average); frontier appends: {:>10.0} leaves/s",
        N as f64 / t_leaf.as_secs_f64(),
        lines.iter().map(Vec::len).sum::<usize>() / lines.len(),
        N as f64 / t_push.as_secs_f64()
    );
    println!(
        "  memory: {:.1} MB of hashes ({:.1} bytes a record)",
        tree.memory_bytes() as f64 / 1e6,
        tree.memory_bytes() as f64 / N as f64
    );
    drop(lines);

    let budget = Duration::from_secs(2);
    let root = tree.root();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let gen_incl = rate(budget, || {
        let i = rng.below(N);
        std::hint::black_box(tree.inclusion_proof(i, N).expect("proof"));
    });
    let proofs: Vec<_> = (0..1024)
        .map(|_| tree.inclusion_proof(rng.below(N), N).expect("proof"))
        .collect();
    let mut k = 0;
    let ver_incl = rate(budget, || {
        let p = &proofs[k % proofs.len()];
        k += 1;
        verify_inclusion(&p.leaf_hash, p.leaf_index, p.tree_size, &p.path, &root).expect("ok");
    });
    let gen_incl_past = rate(budget, || {
        let size = 1 + rng.below(N);
        let i = rng.below(size);
        std::hint::black_box(tree.inclusion_proof(i, size).expect("proof"));
    });
    println!(
        "  inclusion proof at size {N}: generate {gen_incl:>9.0}/s, verify {ver_incl:>9.0}/s; generate at a random past size {gen_incl_past:>9.0}/s ({} hashes, {} bytes of JSON)",
        proofs[0].path.len(),
        serde_json::to_string(&proofs[0]).expect("json").len()
    );

    let gen_cons = rate(budget, || {
        let m = 1 + rng.below(N - 1);
        std::hint::black_box(tree.consistency_proof(m, N).expect("proof"));
    });
    let cons: Vec<_> = (0..1024)
        .map(|_| {
            let m = 1 + rng.below(N - 1);
            let p = tree.consistency_proof(m, N).expect("proof");
            let old = tree.root_at(m).expect("root");
            (p, old)
        })
        .collect();
    let mut k = 0;
    let ver_cons = rate(budget, || {
        let (p, old) = &cons[k % cons.len()];
        k += 1;
        verify_consistency(p.old_size, p.new_size, old, &root, &p.path).expect("ok");
    });
    let root_past = rate(budget, || {
        std::hint::black_box(tree.root_at(1 + rng.below(N)).expect("root"));
    });
    println!(
        "  consistency proof to size {N}: generate {gen_cons:>9.0}/s, verify {ver_cons:>9.0}/s ({} hashes, {} bytes of JSON); root at a past size {root_past:>9.0}/s",
        cons[0].0.path.len(),
        serde_json::to_string(&cons[0].0).expect("json").len()
    );

    // A device handle is 22 characters of URL-safe base64.
    let origin = "enigm.org/trustd/AbCdEfGhIjKlMnOpQrStUv";
    let cp = Checkpoint {
        origin: origin.into(),
        size: N,
        root,
    };
    let key = ed25519_dalek::SigningKey::from_bytes(&[1; 32]);
    let note = checkpoint::sign(&cp, origin, &key).expect("sign");
    let vk = key.verifying_key();
    let sign_rate = rate(budget, || {
        std::hint::black_box(checkpoint::sign(&cp, origin, &key).expect("sign"));
    });
    let open_rate = rate(budget, || {
        std::hint::black_box(checkpoint::parse_and_verify(&note, origin, &vk).expect("ok"));
    });
    println!(
        "checkpoint note: {} bytes (origin {} bytes, size {N}); sign {sign_rate:.0}/s, parse and verify {open_rate:.0}/s",
        note.len(),
        origin.len()
    );
}
