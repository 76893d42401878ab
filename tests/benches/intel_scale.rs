//! Blocklists at scale (needs root, `ip` and `nft`; every measurement in a fresh network
//! namespace made and deleted here). For feeds of 10k, 100k and 1M entries (70% single
//! IPv4 addresses, 30% /24 prefixes, none adjacent or overlapping):
//!
//! - the baseline: `nft -f` of the same entries written as text, one hash set for the
//!   addresses and one interval set for the prefixes, timed with its peak RSS;
//! - trustd's whole path in-process (verify the signed feed, compile, replace the table over
//!   netlink, read it back), step by step, and its ratio to the baseline;
//! - the real binary (`trustd apply`: lockdown policy and this feed) timed, with its own
//!   peak RSS and the peak of its process tree (`wait4`: trustd and every child);
//! - 1k-entry updates: 1000 addresses added; 1000 prefixes deleted from the interval set;
//! - with `INTEL_BENCH_OLD=1`, trustd's previous path (`nft -j -f` of JSON and a full
//!   `nft -j list` read-back) for comparison.
//!
//! `cargo build --release -p trustd --bins && cargo bench -p tests --bench intel_scale`
//! (`INTEL_BENCH_SIZES=10000,100000` to choose the sizes).

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use serde_json::{Value, json};
use tests::lab::Netns;
use trustd::bundle::{
    Payload, PublicKeyFile, RoleKeys, Roles, TrustKey, TrustRoot, generate_key, key_id,
    sign_envelope, verify,
};
use trustd::netfilter::{Backend, NftBackend, apply_intel, compile_intel, update_intel};
use trustd::policy::IntelFeed;
use trustd::timefmt::Timestamp;

/// `n` entries: addresses spread over 11.0.0.0-100.255.255.255, every other /24 of
/// 128.0.0.0/1 (never adjacent, so `nft`'s auto-merge has nothing to merge).
fn entries(n: usize) -> (Vec<String>, Vec<String>) {
    let hosts = n * 7 / 10;
    let h = (0..hosts as u32)
        .map(|i| std::net::Ipv4Addr::from(0x0b00_0000 + i * 7 + 1).to_string())
        .collect();
    let p = (0..(n - hosts) as u32)
        .map(|i| {
            format!(
                "{}/24",
                std::net::Ipv4Addr::from(0x8000_0000 | ((2 * i) << 8))
            )
        })
        .collect();
    (h, p)
}

fn feed(serial: u64, hosts: &[String], nets: &[String]) -> Value {
    let all: Vec<&String> = hosts.iter().chain(nets).collect();
    json!({
        "schema": "enigm.intel/v1", "serial": serial,
        "issued_at": "2026-01-01T00:00:00Z", "expires_at": "2036-01-01T00:00:00Z",
        "categories": {"malware": all}
    })
}

/// Run `program` with `args` as this bench's child, with stdio inherited, and report on
/// stderr the peak RSS of it and every descendant it waited for (`wait4`); exit as it did.
///
/// The measured command is started from here, a fresh small process, because a child's
/// peak RSS counts its parent's memory when it is started by `vfork` (as `Command` does):
/// started from the bench, which holds the feed in several forms, it would report the
/// bench's size, not trustd's.
// The child is reaped by `wait4` (for its rusage), which clippy does not see.
#[allow(clippy::zombie_processes)]
fn measured_child(program: &str, args: &[String]) -> ! {
    let child = Command::new(program).args(args).spawn().expect("spawn");
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: the pid is our unreaped child; `status` and `usage` are valid for writes for
    // the duration of the call.
    let rc = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    assert!(rc > 0, "wait4");
    eprintln!("\nmeasured peak RSS {} KiB", usage.ru_maxrss);
    std::process::exit(if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        1
    });
}

/// Run `cmd` (through [`measured_child`]), returning its wall time, the peak RSS (KiB) of
/// it and every descendant it waited for, and its stdout.
fn run_measured(cmd: &mut Command, stdin: Option<&[u8]>) -> (Duration, u64, String) {
    let mut wrapped = Command::new(std::env::current_exe().expect("this bench"));
    wrapped
        .arg("--measured-child")
        .arg(cmd.get_program())
        .args(cmd.get_args());
    let cmd = &mut wrapped;
    let t = Instant::now();
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    if let Some(bytes) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(bytes)
            .expect("write");
    }
    drop(child.stdin.take());
    let mut out = String::new();
    let mut err = String::new();
    use std::io::Read;
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("read");
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("read");
    let status = child.wait().expect("wait");
    assert!(status.success(), "{cmd:?} failed: {err}");
    let took = t.elapsed();
    let rss = err
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("measured peak RSS "))
        .and_then(|s| s.trim_end_matches(" KiB").parse().ok())
        .expect("the measured child's peak RSS");
    (took, rss, out)
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// The stages of the last replace or update over netlink, as `name 0.123 s` joined.
fn stages(nl: &mut NftBackend) -> String {
    let Some(i) = nl.take_intel_netlink() else {
        return "no netlink socket".into();
    };
    let out = i
        .timings()
        .iter()
        .map(|(what, d)| format!("{what} {:.4} s", secs(*d)))
        .collect::<Vec<_>>()
        .join("; ");
    nl.put_intel_netlink(i);
    out
}

struct Signer {
    key: SigningKey,
    root: TrustRoot,
}

impl Signer {
    fn new() -> Self {
        let key = generate_key().expect("key");
        let pk = PublicKeyFile::new(&key.verifying_key());
        let role = RoleKeys {
            keyids: vec![key_id(&key.verifying_key())],
            threshold: 1,
        };
        let root = TrustRoot {
            schema: "enigm.trust-root/v1".into(),
            serial: 1,
            issued_at: Timestamp::now(),
            expires_at: Timestamp::now().plus_secs(86400),
            keys: BTreeMap::from([(
                pk.keyid.clone(),
                TrustKey {
                    alg: pk.alg,
                    public: pk.public,
                },
            )]),
            roles: Roles {
                root: role.clone(),
                policy: role.clone(),
                intel: role.clone(),
                command: role,
            },
        };
        Self { key, root }
    }

    fn sign(&self, v: &Value) -> Vec<u8> {
        serde_json::to_vec(&sign_envelope(
            <IntelFeed as Payload>::PAYLOAD_TYPE,
            &serde_json::to_vec(v).expect("json"),
            std::slice::from_ref(&self.key),
        ))
        .expect("json")
    }
}

/// One size's figures, for the table printed at the end.
struct Row {
    n: usize,
    base: Duration,
    base_rss: u64,
    whole: Duration,
    binary: Duration,
    trustd_rss: u64,
    tree_rss: u64,
    add: Duration,
    del: Duration,
}

fn bench(n: usize, signer: &Signer, old: bool) -> Row {
    let (hosts, nets) = entries(n);
    let env = signer.sign(&feed(1, &hosts, &nets));
    println!(
        "\n== {n} entries ({} addresses, {} /24 prefixes), envelope {} bytes",
        hosts.len(),
        nets.len(),
        env.len()
    );

    // Baseline: nft -f of the same entries as text.
    let text = format!(
        "table inet naive {{\n set h {{ type ipv4_addr; elements = {{ {} }} }}\n set n {{ type ipv4_addr; flags interval; elements = {{ {} }} }}\n}}\n",
        hosts.join(",\n"),
        nets.join(",\n")
    );
    let (base, base_rss) = {
        let ns = Netns::new("tscale", "b");
        let (t, rss, _) = run_measured(
            Command::new("ip").args(["netns", "exec", &ns.0, "nft", "-f", "-"]),
            Some(text.as_bytes()),
        );
        (t, rss)
    };
    drop(text);
    println!(
        "  nft -f, text (hash + interval set):   {:>8.3} s   peak RSS nft {:>7} KiB",
        secs(base),
        base_rss
    );

    // trustd in-process, step by step, over netlink.
    let ns = Netns::new("tscale", "t");
    let mut nl = NftBackend::in_netns(&ns.0);
    let t = Instant::now();
    let v = verify::<IntelFeed>(&env, &signer.root, Timestamp::now(), 0).expect("verify");
    let t_verify = t.elapsed();
    let t = Instant::now();
    let rs = compile_intel(Some(v.payload()));
    let t_compile = t.elapsed();
    let t = Instant::now();
    apply_intel(&mut nl, &rs).expect("replace over netlink and read back");
    let t_apply = t.elapsed();
    println!("  replace stages: {}", stages(&mut nl));
    let whole = t_verify + t_compile + t_apply;
    println!(
        "  trustd verify {:.3} s, compile {:.3} s, replace + read back over netlink {:.3} s",
        secs(t_verify),
        secs(t_compile),
        secs(t_apply)
    );
    println!(
        "  trustd whole path (in-process):       {:>8.3} s   {:.2}x nft -f (target 1M <= 0.6x, 100k <= 0.3x); {:.2} us/entry",
        secs(whole),
        secs(whole) / secs(base),
        secs(whole) * 1e6 / n as f64
    );
    // A second replace with the table in place (the daemon's usual case).
    let t = Instant::now();
    apply_intel(&mut nl, &rs).expect("replace again");
    println!(
        "  replace with the old table in place:  {:>8.3} s",
        secs(t.elapsed())
    );

    // 1k-entry updates: 1000 addresses added; 1000 prefixes deleted from the interval set.
    let more: Vec<String> = (0..1000u32)
        .map(|i| std::net::Ipv4Addr::from(0x6500_0000 + i * 3).to_string())
        .collect();
    let hosts2: Vec<String> = hosts.iter().chain(&more).cloned().collect();
    let rs2 = compile_intel(Some(
        &serde_json::from_value::<IntelFeed>(feed(2, &hosts2, &nets)).expect("feed"),
    ));
    let t = Instant::now();
    assert!(
        update_intel(&mut nl, &rs, &rs2).expect("add"),
        "incremental"
    );
    let t_add = t.elapsed();
    println!("  1k add stages: {}", stages(&mut nl));
    let cut = 1000.min(nets.len());
    let nets3 = &nets[cut..];
    let rs3 = compile_intel(Some(
        &serde_json::from_value::<IntelFeed>(feed(3, &hosts2, nets3)).expect("feed"),
    ));
    let t = Instant::now();
    assert!(
        update_intel(&mut nl, &rs2, &rs3).expect("delete"),
        "incremental"
    );
    let t_del = t.elapsed();
    println!("  1k interval delete stages: {}", stages(&mut nl));
    println!(
        "  1k addresses added: {:.1} ms; {cut} prefixes deleted from the interval set: {:.1} ms (target <= 10 ms each)",
        secs(t_add) * 1e3,
        secs(t_del) * 1e3
    );
    trustd::netfilter::check_intel(&mut nl, &rs3).expect("the updated table reads back whole");
    drop(rs);
    drop(rs2);
    drop(rs3);
    drop(v);
    drop(ns);

    if old {
        let ns = Netns::new("tscale", "o");
        let mut json_path = NftBackend::in_netns(&ns.0).without_netlink();
        let rs = compile_intel(Some(
            &serde_json::from_value::<IntelFeed>(feed(1, &hosts, &nets)).expect("feed"),
        ));
        let t = Instant::now();
        apply_intel(&mut json_path, &rs).expect("nft JSON path");
        let t_old = t.elapsed();
        println!(
            "  previous path (nft -j -f + nft -j list): {:.3} s ({:.2}x nft -f)",
            secs(t_old),
            secs(t_old) / secs(base)
        );
    }

    // The real binary: peak RSS of trustd and of its whole process tree.
    let dir = tempfile::tempdir().expect("tempdir");
    let paths = trustd::Paths::new(dir.path());
    std::fs::create_dir_all(paths.config_dir()).expect("mkdir");
    std::fs::write(
        paths.provisioned_trust_root(),
        serde_json::to_vec(&signer.root).expect("json"),
    )
    .expect("root");
    {
        let mut dev = trustd::daemon::Device::open(&paths, trustd::audit::Actor::this_process())
            .expect("device");
        dev.apply_intel(&env, trustd::audit::Actor::this_process(), Timestamp::now())
            .expect("install feed");
    }
    drop(env);
    let trustd_bin = tests::bin("trustd");
    let ns = Netns::new("tscale", "r");
    let (took, tree_rss, out) = run_measured(
        Command::new("ip")
            .args(["netns", "exec", &ns.0])
            .arg(&trustd_bin)
            .arg("--prefix")
            .arg(dir.path())
            .arg("apply"),
        None,
    );
    let own: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("peak RSS "))
        .and_then(|s| s.trim_end_matches(" KiB").parse().ok())
        .unwrap_or(0);
    println!(
        "  trustd apply (binary, lockdown + feed): {:>6.3} s ({:.2}x nft -f); peak RSS trustd {} KiB, whole tree {} KiB = {:.1} MiB (target 1M <= 128 MiB)",
        secs(took),
        secs(took) / secs(base),
        own,
        tree_rss,
        tree_rss as f64 / 1024.0
    );
    Row {
        n,
        base,
        base_rss,
        whole,
        binary: took,
        trustd_rss: own,
        tree_rss,
        add: t_add,
        del: t_del,
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The summary: one line per size, then the growth from the smallest to the largest.
fn table(rows: &[Row]) {
    println!(
        "\n| entries | nft -f text | its peak RSS | trustd whole path (in-process) | ratio | trustd apply (binary) | ratio | peak RSS trustd | peak RSS tree | 1k add | 1k interval delete |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for r in rows {
        let target = match r.n {
            n if n >= 1_000_000 => " (<= 0.6)",
            n if n >= 100_000 => " (<= 0.3)",
            _ => "",
        };
        println!(
            "| {} | {:.3} s | {:.1} MiB | {:.3} s | {:.2}x{target} | {:.3} s | {:.2}x | {:.1} MiB | {:.1} MiB{} | {:.1} ms | {:.1} ms (<= 10) |",
            r.n,
            secs(r.base),
            mib(r.base_rss),
            secs(r.whole),
            secs(r.whole) / secs(r.base),
            secs(r.binary),
            secs(r.binary) / secs(r.base),
            mib(r.trustd_rss),
            mib(r.tree_rss),
            if r.n >= 1_000_000 { " (<= 128)" } else { "" },
            secs(r.add) * 1e3,
            secs(r.del) * 1e3,
        );
    }
    if let (Some(a), Some(b)) = (rows.first(), rows.last())
        && b.n > a.n
    {
        let per = |r: &Row, d: Duration| secs(d) / r.n as f64;
        println!(
            "growth {}->{} ({}x the entries): whole path {:.1}x time ({:.2}x per entry), binary {:.1}x ({:.2}x per entry), nft -f {:.1}x ({:.2}x per entry)",
            a.n,
            b.n,
            b.n / a.n,
            secs(b.whole) / secs(a.whole),
            per(b, b.whole) / per(a, a.whole),
            secs(b.binary) / secs(a.binary),
            per(b, b.binary) / per(a, a.binary),
            secs(b.base) / secs(a.base),
            per(b, b.base) / per(a, a.base),
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--measured-child") {
        measured_child(&args[2], &args[3..]);
    }
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if trustd::sys::uid() != 0 {
        println!("intel_scale bench skipped: needs root (and ip, nft) to make network namespaces");
        return;
    }
    let trustd_bin = tests::bin("trustd");
    assert!(
        trustd_bin.exists(),
        "{} is missing: cargo build --release -p trustd --bins first",
        trustd_bin.display()
    );
    let sizes: Vec<usize> = std::env::var("INTEL_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![10_000, 100_000, 1_000_000]);
    let old = std::env::var("INTEL_BENCH_OLD").as_deref() == Ok("1");
    let signer = Signer::new();
    let rows: Vec<Row> = sizes.into_iter().map(|n| bench(n, &signer, old)).collect();
    table(&rows);
}
