//! Shared fixtures: deterministic keys, trust roots, payloads and a device under a tempdir.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::SigningKey;
use serde_json::{Value, json};
use trustd::Paths;
use trustd::bundle::{PublicKeyFile, RoleKeys, Roles, TrustKey, TrustRoot, key_id, sign_envelope};
use trustd::timefmt::Timestamp;

pub mod swtpm;

/// A fixed key per number, so tests are reproducible.
pub fn key(n: u8) -> SigningKey {
    SigningKey::from_bytes(&[n; 32])
}

/// The first 16 hex digits of a key's id, as refusal messages print them.
pub fn short_id(k: &SigningKey) -> String {
    key_id(&k.verifying_key())[..16].to_owned()
}

fn role(keys: &[&SigningKey], threshold: u32) -> RoleKeys {
    RoleKeys {
        keyids: keys.iter().map(|k| key_id(&k.verifying_key())).collect(),
        threshold,
    }
}

/// A trust root: root key 1, policy keys 2,3,4 (threshold 2), intel key 5, command key 6.
pub fn trust_root() -> TrustRoot {
    trust_root_with(1, &[&key(1)], 1, &[&key(2), &key(3), &key(4)], 2)
}

/// A trust root with the given serial, root keys and policy keys.
pub fn trust_root_with(
    serial: u64,
    root_keys: &[&SigningKey],
    root_threshold: u32,
    policy_keys: &[&SigningKey],
    policy_threshold: u32,
) -> TrustRoot {
    let mut keys = BTreeMap::new();
    let mut all: Vec<&SigningKey> = root_keys.iter().chain(policy_keys).copied().collect();
    let (k5, k6) = (key(5), key(6));
    all.push(&k5);
    all.push(&k6);
    for k in all {
        let f = PublicKeyFile::new(&k.verifying_key());
        keys.insert(
            f.keyid,
            TrustKey {
                alg: f.alg,
                public: f.public,
            },
        );
    }
    TrustRoot {
        schema: "enigm.trust-root/v1".into(),
        serial,
        issued_at: ts("2026-01-01T00:00:00Z"),
        expires_at: ts("2036-01-01T00:00:00Z"),
        keys,
        roles: Roles {
            root: role(root_keys, root_threshold),
            policy: role(policy_keys, policy_threshold),
            intel: role(&[&k5], 1),
            command: role(&[&k6], 1),
        },
    }
}

pub fn ts(s: &str) -> Timestamp {
    Timestamp::parse(s).expect("test timestamp")
}

/// The time every test runs at.
pub fn now() -> Timestamp {
    ts("2026-11-24T12:00:00Z")
}

/// A valid policy with this serial.
pub fn policy(serial: u64) -> Value {
    json!({
        "schema": "enigm.policy/v1",
        "serial": serial,
        "issued_at": "2026-11-01T00:00:00Z",
        "expires_at": "2027-11-01T00:00:00Z",
        "network": {
            "mode": "direct",
            "allow": [{"dest": "203.0.113.0/24", "proto": "tcp", "ports": [443]}],
            "dns": {"resolvers": ["192.0.2.53"]}
        }
    })
}

/// A valid intel feed with this serial.
pub fn intel(serial: u64) -> Value {
    json!({
        "schema": "enigm.intel/v1",
        "serial": serial,
        "issued_at": "2026-11-01T00:00:00Z",
        "expires_at": "2027-11-01T00:00:00Z",
        "categories": {"malware": ["198.51.100.7", "2001:db8:bad::/48"]}
    })
}

/// Sign JSON as `ptype`.
pub fn sign(ptype: &str, payload: &Value, keys: &[&SigningKey]) -> Vec<u8> {
    sign_bytes(ptype, &serde_json::to_vec(payload).expect("json"), keys)
}

/// Sign raw bytes as `ptype`.
pub fn sign_bytes(ptype: &str, payload: &[u8], keys: &[&SigningKey]) -> Vec<u8> {
    let keys: Vec<SigningKey> = keys.iter().map(|k| (*k).clone()).collect();
    serde_json::to_vec(&sign_envelope(ptype, payload, &keys)).expect("json")
}

pub const POLICY: &str = "application/vnd.enigm.policy+json";
pub const INTEL: &str = "application/vnd.enigm.intel+json";
pub const ROOT: &str = "application/vnd.enigm.trust-root+json";

/// A policy envelope signed by keys 2 and 3.
pub fn signed_policy(serial: u64) -> Vec<u8> {
    sign(POLICY, &policy(serial), &[&key(2), &key(3)])
}

/// Replace the payload of an envelope, keeping its signatures.
pub fn swap_payload(envelope: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(envelope).expect("envelope");
    v["payload"] = Value::String(STANDARD.encode(payload));
    serde_json::to_vec(&v).expect("json")
}

/// A device's files under a tempdir, with the default trust root provisioned.
pub struct TestDevice {
    pub dir: tempfile::TempDir,
    pub paths: Paths,
}

impl TestDevice {
    pub fn new() -> Self {
        Self::with_root(&trust_root())
    }

    pub fn with_root(root: &TrustRoot) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = Paths::new(dir.path());
        std::fs::create_dir_all(paths.config_dir()).expect("mkdir");
        std::fs::write(
            paths.provisioned_trust_root(),
            serde_json::to_vec_pretty(root).expect("json"),
        )
        .expect("write root");
        Self { dir, paths }
    }

    pub fn file(&self, p: PathBuf) -> Option<Vec<u8>> {
        std::fs::read(p).ok()
    }
}

/// Whether a test that needs root and `tools` can run. Without them it skips on a laptop,
/// but under CI=true a missing tool is a failure, so that a green CI means the test ran.
pub fn can_run_privileged(tools: &[&str]) -> bool {
    let root = trustd::sys::uid() == 0;
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| {
            !std::process::Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .stdout(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .collect();
    if root && missing.is_empty() {
        return true;
    }
    let why = if root {
        format!("missing {missing:?}")
    } else {
        "not root".to_owned()
    };
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true but this test cannot run: {why}"
    );
    eprintln!("skipped: {why}");
    // scripts/test.sh counts these: a skipped test must not pass for a run one.
    if let Some(log) = std::env::var_os("TRUSTD_SKIP_LOG") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(log)
        {
            let _ = writeln!(f, "{why}");
        }
    }
    false
}

/// A network namespace made for one test and deleted when dropped.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Self {
        let name = format!("trustd-t{}-{tag}", std::process::id());
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &name])
            .status();
        let ok = std::process::Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "ip netns add {name}");
        Self { name }
    }

    /// Run a command inside; panics if it fails.
    pub fn sh(&self, cmd: &str) -> String {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &self.name, "sh", "-c", cmd])
            .output()
            .expect("ip netns exec");
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A policy with every section filled, in `mode`.
pub fn full_policy(mode: &str, serial: u64) -> Value {
    json!({
        "schema": "enigm.policy/v1",
        "serial": serial,
        "issued_at": "2026-11-01T00:00:00Z",
        "expires_at": "2027-11-01T00:00:00Z",
        "network": {
            "mode": mode,
            "vpn": {"interfaces": ["wg0"], "endpoints": [{"address": "10.99.0.2", "proto": "udp", "port": 51820}]},
            "proxy": {"endpoints": [{"address": "10.99.0.2", "proto": "tcp", "port": 3128}], "exempt_uids": [1234]},
            "tor": {"uid": 1235, "trans_port": 9040, "dns_port": 9053},
            "allow": [
                {"dest": "10.99.0.2", "proto": "tcp", "ports": [443]},
                {"dest": "2001:db8:99::/64", "proto": "tcp", "ports": [443, 8443], "uids": [1000], "gids": [100]},
                {"dest": "10.99.0.0/24", "proto": "icmp"}
            ],
            "dns": {"resolvers": ["10.99.0.2"]},
            "allow_lan": false,
            "inbound": [{"source": "10.99.0.0/24", "proto": "tcp", "ports": [22]}]
        },
        "privacy": {"network_mode": "tor-only", "block_lan_discovery": true, "user_may_disable": true},
        "setup": {"required_steps": [], "bootstrap_allow": [{"dest": "10.99.0.2", "proto": "tcp", "ports": [8443]}]}
    })
}

/// The written part of an audit segment (segments are preallocated with zeros).
pub fn written(path: &Path) -> Vec<u8> {
    let mut data = std::fs::read(path).expect("read");
    let end = data.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    data.truncate(end);
    data
}

/// The records of a segment as lines, without newlines.
pub fn lines(path: &Path) -> Vec<Vec<u8>> {
    written(path)
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

/// Write `lines` as a segment, each ended by a newline.
pub fn write_lines(path: &Path, lines: &[Vec<u8>]) {
    let mut out = Vec::new();
    for l in lines {
        out.extend_from_slice(l);
        out.push(b'\n');
    }
    std::fs::write(path, out).expect("write");
}

pub mod engine;
