//! Intel feed benchmark (needs root, `ip` and `nft`; each measurement in a fresh network
//! namespace made and deleted here). A 100k-entry feed (70% single addresses, 30% prefixes):
//! trustd's whole path (verify, compile, apply, read back) against `nft -f` of one plain
//! interval set holding the same entries, measured in the same run; a 1k-address and a
//! 1k-prefix update; and the peak RSS of `trustd apply` loading that feed.
//!
//! `cargo bench -p trustd --bench intel` (env INTEL_BENCH_ENTRIES to change the size).

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use trustd::bundle::{
    Payload, PublicKeyFile, RoleKeys, Roles, TrustKey, TrustRoot, generate_key, key_id,
    sign_envelope, verify,
};
use trustd::netfilter::{
    Backend, NftBackend, compile_intel, render_intel, update_intel, verify_intel_listing,
};
use trustd::policy::IntelFeed;
use trustd::timefmt::Timestamp;

struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Self {
        let name = format!("tbench{}{tag}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(std::process::Stdio::null())
            .status();
        assert!(
            Command::new("ip")
                .args(["netns", "add", &name])
                .status()
                .expect("ip")
                .success()
        );
        Self(name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn entries(rng: &mut Rng, hosts: usize, nets: usize) -> Vec<String> {
    let mut h = BTreeSet::new();
    while h.len() < hosts {
        let a = (rng.next() as u32) | 0x0b00_0000; // avoid 0/8
        h.insert(std::net::Ipv4Addr::from(a & 0x7fff_ffff | 0x0100_0000).to_string());
    }
    // Prefixes in distinct /16 blocks of the upper half, so that none overlaps another or
    // an address above: a plain interval set refuses overlapping elements.
    let mut blocks = BTreeSet::new();
    let mut n = BTreeSet::new();
    while n.len() < nets {
        let block = (rng.next() as u32) & 0x7fff;
        if !blocks.insert(block) {
            continue;
        }
        let len = 16 + (rng.next() % 13) as u32;
        let inner = (rng.next() as u32) & 0xffff & (u32::MAX << (32 - len));
        let a = 0x8000_0000 | (block << 16) | inner;
        n.insert(format!("{}/{len}", std::net::Ipv4Addr::from(a)));
    }
    h.into_iter().chain(n).collect()
}

fn block16(prefix: &str) -> String {
    prefix.split('.').take(2).collect::<Vec<_>>().join(".")
}

fn feed(serial: u64, list: &[String]) -> serde_json::Value {
    json!({
        "schema": "enigm.intel/v1", "serial": serial,
        "issued_at": "2026-01-01T00:00:00Z", "expires_at": "2036-01-01T00:00:00Z",
        "categories": {"malware": list}
    })
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if trustd::sys::uid() != 0 {
        println!("intel bench skipped: needs root (and ip, nft) to make network namespaces");
        return;
    }
    let total: usize = std::env::var("INTEL_BENCH_ENTRIES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let hosts = total * 7 / 10;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let list = entries(&mut rng, hosts, total - hosts);

    // Signing.
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
    let sign = |v: &serde_json::Value| {
        serde_json::to_vec(&sign_envelope(
            <IntelFeed as Payload>::PAYLOAD_TYPE,
            &serde_json::to_vec(v).expect("json"),
            std::slice::from_ref(&key),
        ))
        .expect("json")
    };
    let env = sign(&feed(1, &list));
    println!(
        "intel feed: {total} entries ({hosts} addresses, {} prefixes), envelope {} bytes",
        total - hosts,
        env.len()
    );

    // Baseline: one plain interval set with the same entries, one `nft -f`.
    let naive = {
        let ns = Netns::new("n");
        let elems: Vec<serde_json::Value> = list
            .iter()
            .map(|e| match e.split_once('/') {
                Some((a, l)) => {
                    json!({"prefix": {"addr": a, "len": l.parse::<u32>().expect("len")}})
                }
                None => json!(e),
            })
            .collect();
        let script = json!({"nftables": [
            {"add": {"table": {"family": "inet", "name": "naive"}}},
            {"add": {"set": {"family": "inet", "table": "naive", "name": "block", "type": "ipv4_addr", "flags": ["interval"], "auto-merge": true}}},
            {"add": {"element": {"family": "inet", "table": "naive", "name": "block", "elem": elems}}}
        ]});
        let mut nft = NftBackend::in_netns(&ns.0);
        let t = Instant::now();
        nft.apply(&script.to_string()).expect("naive nft -f");
        t.elapsed()
    };
    println!(
        "  naive nft -f, one interval set:      {:>7.3} s",
        secs(naive)
    );

    // trustd's path, step by step.
    let ns = Netns::new("t");
    let mut nft = NftBackend::in_netns(&ns.0);
    let t = Instant::now();
    let v = verify::<IntelFeed>(&env, &root, Timestamp::now(), 0).expect("verify");
    let t_verify = t.elapsed();
    let t = Instant::now();
    let rs = compile_intel(Some(v.payload()));
    let script = render_intel(&rs);
    let t_compile = t.elapsed();
    let t = Instant::now();
    nft.apply(&script).expect("apply");
    let t_apply = t.elapsed();
    let t = Instant::now();
    let listing = nft
        .list_table(trustd::netfilter::INTEL_TABLE)
        .expect("list")
        .expect("table");
    verify_intel_listing(&rs, &listing).expect("read-back matches");
    let t_read = t.elapsed();
    let whole = t_verify + t_compile + t_apply + t_read;
    println!(
        "  trustd verify:                       {:>7.3} s",
        secs(t_verify)
    );
    println!(
        "  trustd compile + render:             {:>7.3} s",
        secs(t_compile)
    );
    println!(
        "  trustd apply (nft, one transaction): {:>7.3} s  ({:.2}x naive; target <= 0.6x)",
        secs(t_apply),
        secs(t_apply) / secs(naive)
    );
    println!(
        "  trustd read back + check:            {:>7.3} s",
        secs(t_read)
    );
    println!(
        "  trustd whole path:                   {:>7.3} s  ({:.2}x naive; target <= 1.0x)",
        secs(whole),
        secs(whole) / secs(naive)
    );

    // Updates: 1k more addresses; 1k more prefixes.
    let more_hosts = entries(&mut Rng(7), 1000, 0);
    let list2: Vec<String> = list.iter().chain(&more_hosts).cloned().collect();
    let env2 = sign(&feed(2, &list2));
    let t = Instant::now();
    let v2 = verify::<IntelFeed>(&env2, &root, Timestamp::now(), 1).expect("verify");
    let rs2 = compile_intel(Some(v2.payload()));
    let t_prep = t.elapsed();
    let t = Instant::now();
    assert!(
        update_intel(&mut nft, &rs, &rs2).expect("update"),
        "an address-only update is incremental"
    );
    let t_upd = t.elapsed();
    println!(
        "  1k-address update: apply {:.1} ms (target < 100 ms), with verify+compile of the whole feed {:.0} ms ({:.3}x naive)",
        secs(t_upd) * 1e3,
        secs(t_prep + t_upd) * 1e3,
        secs(t_prep + t_upd) / secs(naive)
    );
    // 1k prefixes in /16 blocks the feed does not use yet.
    let used: BTreeSet<String> = list
        .iter()
        .filter(|e| e.contains('/'))
        .map(|e| block16(e))
        .collect();
    let more_nets: Vec<String> = entries(&mut Rng(11), 0, 3000)
        .into_iter()
        .filter(|e| !used.contains(&block16(e)))
        .take(1000)
        .collect();
    let list3: Vec<String> = list2.iter().chain(&more_nets).cloned().collect();
    let rs3 = compile_intel(Some(
        &serde_json::from_value(feed(3, &list3)).expect("feed"),
    ));
    let t = Instant::now();
    assert!(update_intel(&mut nft, &rs2, &rs3).expect("update"));
    println!(
        "  1k-prefix update (interval set add):  {:>7.3} s",
        secs(t.elapsed())
    );
    drop(ns);

    // Peak RSS of the real binary loading this feed.
    let dir = tempfile::tempdir().expect("tempdir");
    let paths = trustd::Paths::new(dir.path());
    std::fs::create_dir_all(paths.config_dir()).expect("mkdir");
    std::fs::write(
        paths.provisioned_trust_root(),
        serde_json::to_vec(&root).expect("json"),
    )
    .expect("root");
    {
        let mut dev = trustd::daemon::Device::open(&paths, trustd::audit::Actor::this_process())
            .expect("device");
        dev.apply_intel(&env, trustd::audit::Actor::this_process(), Timestamp::now())
            .expect("install feed");
    }
    let ns = Netns::new("r");
    let t = Instant::now();
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.0,
            env!("CARGO_BIN_EXE_trustd"),
            "--prefix",
        ])
        .arg(dir.path())
        .arg("apply")
        .output()
        .expect("trustd apply");
    let took = t.elapsed();
    let text = String::from_utf8_lossy(&out.stdout);
    let rss = text
        .lines()
        .find_map(|l| l.strip_prefix("peak RSS "))
        .unwrap_or("?");
    println!(
        "  trustd apply (real binary, lockdown + this feed): {:.3} s, peak RSS {rss} (target < 64 MiB)",
        secs(took)
    );
}
