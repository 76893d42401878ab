//! A two-namespace lab for real packets: a device namespace running trustd, connected by a
//! veth pair to a peer namespace with listeners and packet counters. Both namespaces are
//! created by the test and deleted when the lab is dropped; nothing touches the host's
//! firewall or interfaces.
//!
//! ```text
//!  device ns                               peer ns
//!  dev0 10.99.0.1/24  <-- veth -->  peer0 10.99.0.2/24, 10.99.0.3/24
//!  wg0  10.98.0.1/30  <-- veth -->  wgp   10.98.0.2/30   ("tunnel", optional)
//!                                   lo    10.97.0.1/32   ("internet" behind the tunnel)
//! ```

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};

use ed25519_dalek::SigningKey;
use serde_json::{Value, json};
use trustd::bundle::{
    PublicKeyFile, RoleKeys, Roles, TrustKey, TrustRoot, generate_key, key_id, sign_envelope,
};
use trustd::timefmt::Timestamp;

use crate::bin;
use crate::bus::{Bus, BusPolicy};

/// A bare network namespace of a test's own (`<prefix><pid><tag>`, nothing in it but its
/// loopback), deleted on drop. A leftover of the same name is deleted first.
#[derive(Debug)]
pub struct Netns(pub String);

impl Netns {
    /// Make it; panics if `ip netns add` fails.
    pub fn new(prefix: &str, tag: &str) -> Self {
        let name = format!("{prefix}{}{tag}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        assert!(
            Command::new("ip")
                .args(["netns", "add", &name])
                .status()
                .expect("ip")
                .success(),
            "ip netns add {name}"
        );
        Self(name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Whether a test needing root and these tools can run here; under CI=true, it must.
pub fn can_run(tools: &[&str]) -> bool {
    let root = trustd::sys::uid() == 0;
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .stdout(Stdio::null())
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
    skip(&why);
    false
}

/// A test that cannot run here says why and returns; under CI=true it fails instead.
pub fn skip(why: &str) {
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
}

/// A trust root: `first` alone holds the root, intel and command roles; `policy` keys hold
/// the policy role with `policy_threshold`.
pub fn trust_root(first: &SigningKey, policy: &[&SigningKey], policy_threshold: u32) -> TrustRoot {
    let mut keys = std::collections::BTreeMap::new();
    let mut role = |ks: &[&SigningKey], threshold| {
        let mut ids = Vec::new();
        for k in ks {
            let f = PublicKeyFile::new(&k.verifying_key());
            keys.insert(
                f.keyid.clone(),
                TrustKey {
                    alg: f.alg,
                    public: f.public,
                },
            );
            ids.push(key_id(&k.verifying_key()));
        }
        RoleKeys {
            keyids: ids,
            threshold,
        }
    };
    let roles = Roles {
        root: role(&[first], 1),
        policy: role(policy, policy_threshold),
        intel: role(&[first], 1),
        command: role(&[first], 1),
    };
    let now = Timestamp::now();
    TrustRoot {
        schema: "enigm.trust-root/v1".into(),
        serial: 1,
        issued_at: now.plus_secs(-3600),
        expires_at: now.plus_secs(365 * 86400),
        keys,
        roles,
    }
}

fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"))
}

fn must(cmd: &str, args: &[&str]) -> String {
    let o = run(cmd, args);
    assert!(
        o.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Packets from the device that the peer counts on arrival.
pub const COUNTED: [(&str, &str); 7] = [
    (
        "v6_80",
        "iifname \"peer0\" ip6 saddr fd99::1 ip6 daddr fd99::2 tcp dport 80",
    ),
    (
        "v6_other443",
        "iifname \"peer0\" ip6 saddr fd99::1 ip6 daddr fd99::3 tcp dport 443",
    ),
    (
        "tcp80",
        "iifname \"peer0\" ip saddr 10.99.0.1 ip daddr 10.99.0.2 tcp dport 80",
    ),
    (
        "other443",
        "iifname \"peer0\" ip saddr 10.99.0.1 ip daddr 10.99.0.3 tcp dport 443",
    ),
    (
        "otherdns",
        "iifname \"peer0\" ip saddr 10.99.0.1 ip daddr 10.99.0.3 udp dport 53",
    ),
    (
        "udp9999",
        "iifname \"peer0\" ip saddr 10.99.0.1 ip daddr 10.99.0.2 udp dport 9999",
    ),
    (
        "inet_phys",
        "iifname \"peer0\" ip saddr 10.99.0.1 ip daddr 10.97.0.1",
    ),
];

/// The lab. Dropping it kills the listeners and deletes both namespaces.
#[derive(Debug)]
pub struct Lab {
    /// Device namespace name.
    pub dev: String,
    /// Peer namespace name.
    pub peer: String,
    /// The device's root prefix.
    pub prefix: tempfile::TempDir,
    policy_keys: Vec<SigningKey>,
    serial: u64,
    server: Option<Child>,
}

impl Lab {
    /// Build the lab (with the tunnel link if `tunnel`).
    pub fn new(tag: &str, tunnel: bool) -> Self {
        let id = std::process::id();
        let dev = format!("tdev{id}{tag}");
        let peer = format!("tpeer{id}{tag}");
        for ns in [&dev, &peer] {
            let _ = run("ip", &["netns", "del", ns]);
            must("ip", &["netns", "add", ns]);
        }
        let lab = Self {
            dev,
            peer,
            prefix: tempfile::tempdir().expect("tempdir"),
            policy_keys: (0..2).map(|_| generate_key().expect("key")).collect(),
            serial: 0,
            server: None,
        };
        let (d, p) = (lab.dev.clone(), lab.peer.clone());
        must(
            "ip",
            &[
                "-n", &d, "link", "add", "dev0", "type", "veth", "peer", "name", "peer0", "netns",
                &p,
            ],
        );
        lab.sh(
            &d,
            "ip link set lo up && ip link set dev0 up && ip addr add 10.99.0.1/24 dev dev0 && ip addr add fd99::1/64 dev dev0 nodad",
        );
        lab.sh(&p, "ip link set lo up && ip link set peer0 up && ip addr add 10.99.0.2/24 dev peer0 && ip addr add 10.99.0.3/24 dev peer0 && ip addr add 10.97.0.1/32 dev lo && ip addr add fd99::2/64 dev peer0 nodad && ip addr add fd99::3/64 dev peer0 nodad");
        lab.sh(&d, "ip route add default via 10.99.0.2 dev dev0 metric 100");
        if tunnel {
            must(
                "ip",
                &[
                    "-n", &d, "link", "add", "wg0", "type", "veth", "peer", "name", "wgp", "netns",
                    &p,
                ],
            );
            lab.sh(&d, "ip link set wg0 up && ip addr add 10.98.0.1/30 dev wg0 && ip route add 10.97.0.1/32 via 10.98.0.2 dev wg0 metric 10");
            lab.sh(&p, "ip link set wgp up && ip addr add 10.98.0.2/30 dev wgp");
        }
        // The peer counts what reaches it, before anything else sees the packet.
        let mut rules = String::from(
            "add table inet count\nadd chain inet count in { type filter hook input priority -300; }\n",
        );
        for (name, m) in COUNTED {
            rules.push_str(&format!(
                "add counter inet count {name}\nadd rule inet count in {m} counter name {name}\n"
            ));
        }
        rules.push_str("add counter inet count inet_tunnel\nadd rule inet count in iifname \"wgp\" ip daddr 10.97.0.1 counter name inet_tunnel\n");
        let mut child = Command::new("ip")
            .args(["netns", "exec", &p, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("nft");
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(rules.as_bytes())
            .expect("write");
        assert!(child.wait().expect("nft").success(), "peer counters");

        let mut lab = lab;
        let listeners = [
            "[::]:443/tcp",
            "[::]:80/tcp",
            "[::]:8080/tcp",
            "[::]:8443/tcp",
            "[::]:3128/tcp",
            "[::]:53/udp",
            "[::]:51820/udp",
            "[::]:9999/udp",
            "[::]:5353/udp",
        ];
        let mut server = Command::new("ip")
            .args(["netns", "exec", &p])
            .arg(bin("netprobe"))
            .arg("serve")
            .args(listeners)
            .stdout(Stdio::piped())
            .spawn()
            .expect("netprobe serve");
        let mut ready = [0u8; 6];
        use std::io::Read;
        server
            .stdout
            .take()
            .expect("stdout")
            .read_exact(&mut ready)
            .expect("ready");
        lab.server = Some(server);
        lab.provision();
        lab
    }

    fn sh(&self, ns: &str, cmd: &str) -> String {
        must("ip", &["netns", "exec", ns, "sh", "-c", cmd])
    }

    /// Delete `inet trustd` behind trustd's back and wait until it is back: how long that
    /// took, or `None` if it was not back within `within`.
    pub fn delete_policy_table_and_wait(
        &self,
        within: std::time::Duration,
    ) -> Option<std::time::Duration> {
        self.dev_sh("nft delete table inet trustd");
        let t = std::time::Instant::now();
        while !self.dev_sh("nft list tables").contains("inet trustd\n") {
            if t.elapsed() >= within {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Some(t.elapsed())
    }

    /// Run a shell command in the device namespace.
    pub fn dev_sh(&self, cmd: &str) -> String {
        self.sh(&self.dev, cmd)
    }

    /// The device's paths.
    pub fn paths(&self) -> trustd::Paths {
        trustd::Paths::new(self.prefix.path())
    }

    fn provision(&self) {
        let pk: Vec<&SigningKey> = self.policy_keys.iter().collect();
        let root = trust_root(pk[0], &pk, 2);
        let p = self.paths();
        std::fs::create_dir_all(p.config_dir()).expect("mkdir");
        std::fs::write(
            p.provisioned_trust_root(),
            serde_json::to_vec(&root).expect("json"),
        )
        .expect("root");
    }

    /// Sign an intel feed (serial replaced by the next one) with the intel key.
    pub fn sign_intel(&mut self, mut feed: Value) -> PathBuf {
        self.serial += 1;
        feed["serial"] = json!(self.serial);
        let env = sign_envelope(
            "application/vnd.enigm.intel+json",
            &serde_json::to_vec(&feed).expect("json"),
            &self.policy_keys[..1],
        );
        let path = self
            .prefix
            .path()
            .join(format!("intel-{}.dsse.json", self.serial));
        std::fs::write(&path, serde_json::to_vec(&env).expect("json")).expect("write");
        path
    }

    /// Sign `policy` (its serial replaced by the next one) and write it to a file.
    pub fn sign(&mut self, mut policy: Value) -> PathBuf {
        self.serial += 1;
        policy["serial"] = json!(self.serial);
        let env = sign_envelope(
            "application/vnd.enigm.policy+json",
            &serde_json::to_vec(&policy).expect("json"),
            &self.policy_keys,
        );
        let path = self
            .prefix
            .path()
            .join(format!("bundle-{}.dsse.json", self.serial));
        std::fs::write(&path, serde_json::to_vec(&env).expect("json")).expect("write");
        path
    }

    /// The lab's signing keys: all of them hold the policy role (threshold 2); the first
    /// alone also holds the root, intel and command roles.
    pub fn keys(&self) -> &[SigningKey] {
        &self.policy_keys
    }

    /// Sign `payload` as `payload_type` with `keys`, exactly as given (serial included),
    /// and write the envelope to `name` under the prefix.
    pub fn sign_file(
        &self,
        name: &str,
        payload_type: &str,
        payload: &Value,
        keys: &[SigningKey],
    ) -> PathBuf {
        let env = sign_envelope(
            payload_type,
            &serde_json::to_vec(payload).expect("json"),
            keys,
        );
        let path = self.prefix.path().join(name);
        std::fs::write(&path, serde_json::to_vec(&env).expect("json")).expect("write");
        path
    }

    /// The command role's private key as a key file (for `trustctl device command`).
    pub fn command_key_file(&self) -> PathBuf {
        let path = self.prefix.path().join("command.key");
        std::fs::write(
            &path,
            serde_json::to_vec(&trustd::bundle::PrivateKeyFile::new(&self.policy_keys[0]))
                .expect("json"),
        )
        .expect("write key");
        path
    }

    /// Sign a lifecycle command with the command role's key and write it to a file.
    pub fn sign_command(&self, command: &Value) -> PathBuf {
        let env = sign_envelope(
            "application/vnd.enigm.command+json",
            &serde_json::to_vec(command).expect("json"),
            &self.policy_keys[..1],
        );
        let path = self.prefix.path().join(format!(
            "command-{}.dsse.json",
            command["serial"].as_u64().unwrap_or(0)
        ));
        std::fs::write(&path, serde_json::to_vec(&env).expect("json")).expect("write");
        path
    }

    /// `trustctl load` the signed file (offline, as the daemon is not running).
    pub fn load(&self, bundle: &std::path::Path) {
        let o = Command::new(bin("trustctl"))
            .args(["load", "--prefix"])
            .arg(self.prefix.path())
            .arg(bundle)
            .output()
            .expect("trustctl");
        assert!(
            o.status.success(),
            "load: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    /// Command line of `trustd apply` inside the device namespace.
    pub fn apply_cmd(&self) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.dev])
            .arg(bin("trustd"))
            .arg("--prefix")
            .arg(self.prefix.path())
            .arg("apply");
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        c
    }

    /// Start `trustd run` in the device namespace; killed when the guard drops.
    pub fn run_daemon(&self, check_interval_ms: u64) -> Daemon {
        self.run_daemon_on(BusPolicy::Shipped, check_interval_ms)
    }

    /// Start `trustd run` on a private bus with `policy`.
    pub fn run_daemon_on(&self, policy: BusPolicy, check_interval_ms: u64) -> Daemon {
        self.run_daemon_on_bus(Bus::start(policy, ""), check_interval_ms)
    }

    /// Start `trustd run` serving on `bus`.
    pub fn run_daemon_on_bus(&self, bus: Bus, check_interval_ms: u64) -> Daemon {
        self.run_daemon_with(bus, check_interval_ms, &[])
    }

    /// Start `trustd run` serving on `bus`, with more arguments (`--confine`).
    pub fn run_daemon_with(&self, bus: Bus, check_interval_ms: u64, extra: &[&str]) -> Daemon {
        self.run_daemon_env(bus, check_interval_ms, extra, &[])
    }

    /// Start `trustd run` serving on `bus`, with more arguments and environment variables
    /// (`NOTIFY_SOCKET`, `WATCHDOG_USEC`, as systemd would set them).
    pub fn run_daemon_env(
        &self,
        bus: Bus,
        check_interval_ms: u64,
        extra: &[&str],
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Daemon {
        let child = Command::new("ip")
            .envs(env.iter().copied())
            .args(["netns", "exec", &self.dev])
            .arg(bin("trustd"))
            .arg("--prefix")
            .arg(self.prefix.path())
            .args(["run", "--check-interval-ms", &check_interval_ms.to_string()])
            .args(["--bus", &bus.address])
            .args(extra)
            .stderr(Stdio::null())
            .spawn()
            .expect("trustd run");
        Daemon {
            child: crate::KillOnDrop(Some(child)),
            bus,
        }
    }

    /// Run `trustd apply`; returns its stdout, panics if it did not exit 0.
    pub fn apply(&self) -> String {
        let o = self.apply_cmd().output().expect("trustd apply");
        assert!(
            o.status.success(),
            "trustd apply exited {:?}: {}{}",
            o.status.code(),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        eprint!("{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Sign, load and apply a policy.
    pub fn enforce(&mut self, policy: Value) -> String {
        let f = self.sign(policy);
        self.load(&f);
        self.apply()
    }

    /// Try `target` (`ADDR:PORT/proto`) from the device, as root or as (uid, gid).
    pub fn probe(&self, target: &str, as_user: Option<(u32, u32)>) -> bool {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.dev]);
        if let Some((u, g)) = as_user {
            c.arg("setpriv")
                .arg(format!("--reuid={u}"))
                .arg(format!("--regid={g}"))
                .arg("--clear-groups");
        }
        c.arg(bin("netprobe")).args(["connect", target, "300"]);
        c.status().expect("netprobe").success()
    }

    /// Start probing `targets` continuously from the device for `ms` milliseconds.
    pub fn spray(&self, ms: u64, targets: &[&str]) -> Child {
        Command::new("ip")
            .args(["netns", "exec", &self.dev])
            .arg(bin("netprobe"))
            .arg("spray")
            .arg(ms.to_string())
            .args(targets)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spray")
    }

    /// Packets the peer counted under `name` (see [`COUNTED`]).
    pub fn counted(&self, name: &str) -> u64 {
        let out = self.sh(
            &self.peer,
            &format!("nft -j list counter inet count {name}"),
        );
        let v: Value = serde_json::from_str(&out).expect("json");
        v["nftables"]
            .as_array()
            .into_iter()
            .flatten()
            .find_map(|o| {
                o.get("counter")
                    .and_then(|c| c.get("packets"))
                    .and_then(Value::as_u64)
            })
            .expect("counter")
    }

    /// Every counter of packets that must never arrive, summed.
    pub fn leaked(&self) -> u64 {
        COUNTED.iter().map(|(n, _)| self.counted(n)).sum()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut s) = self.server.take() {
            let _ = s.kill();
            let _ = s.wait();
        }
        for ns in [&self.dev, &self.peer] {
            let _ = run("ip", &["netns", "del", ns]);
        }
    }
}

/// A policy for the lab in `mode` (serial set when signed).
pub fn lab_policy(mode: &str) -> Value {
    json!({
        "schema": "enigm.policy/v1",
        "serial": 0,
        "issued_at": "2026-01-01T00:00:00Z",
        "expires_at": "2036-01-01T00:00:00Z",
        "network": {
            "mode": mode,
            "vpn": {"interfaces": ["wg0"], "endpoints": [{"address": "10.99.0.2", "proto": "udp", "port": 51820}]},
            "proxy": {"endpoints": [{"address": "10.99.0.2", "proto": "tcp", "port": 3128}], "exempt_uids": [1234]},
            "tor": {"uid": 1235, "trans_port": 9040, "dns_port": 9053},
            "allow": [
                {"dest": "10.99.0.2", "proto": "tcp", "ports": [443]},
                {"dest": "fd99::2", "proto": "tcp", "ports": [443]},
                {"dest": "10.99.0.2", "proto": "tcp", "ports": [8080], "uids": [1000]},
                {"dest": "10.97.0.1", "proto": "tcp", "ports": [443]},
                {"dest": "10.99.0.2", "proto": "udp", "ports": [5353]}
            ],
            "dns": {"resolvers": ["10.99.0.2"]},
            "inbound": []
        },
        "privacy": {"network_mode": "tor-only", "block_lan_discovery": true},
        "setup": {"required_steps": [], "bootstrap_allow": [{"dest": "10.99.0.2", "proto": "tcp", "ports": [8443]}]}
    })
}

/// An intel feed of 100,000 entries (serial set when signed): 70,000 addresses in 11.0.0.0/8
/// and 30,000 /24 networks in 20.0.0.0/8, none overlapping.
pub fn feed_100k() -> Value {
    let hosts: Vec<String> = (1..=70_000u32)
        .map(|i| std::net::Ipv4Addr::from(0x0b00_0000 | i).to_string())
        .collect();
    let nets: Vec<String> = (0..30_000u32)
        .map(|i| format!("{}/24", std::net::Ipv4Addr::from(0x1400_0000 | (i << 8))))
        .collect();
    json!({
        "schema": "enigm.intel/v1", "serial": 0,
        "issued_at": "2026-01-01T00:00:00Z", "expires_at": "2036-01-01T00:00:00Z",
        "categories": {"malware": hosts, "trackers": nets}
    })
}

/// `trustd run` in the lab's device namespace, serving on its own private bus.
#[derive(Debug)]
pub struct Daemon {
    /// The process (killed when dropped).
    pub child: crate::KillOnDrop,
    /// Its bus.
    pub bus: Bus,
}

impl Daemon {
    /// Its pid.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Wait for it to exit.
    pub fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.child.wait()
    }

    /// Send it `signal` (`-HUP`, `-KILL`, as `kill` names them).
    pub fn signal(&self, signal: &str) {
        assert!(
            Command::new("kill")
                .args([signal, &self.id().to_string()])
                .status()
                .expect("kill")
                .success(),
            "kill {signal}"
        );
    }

    /// Send SIGTERM and wait for it to exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal("-TERM");
        self.wait().expect("wait")
    }

    /// Send SIGKILL (nothing of its exit path runs) and reap it.
    pub fn kill(&mut self) {
        self.signal("-KILL");
        let _ = self.wait();
    }
}

/// A lab whose device holds `policy` (signed and loaded), with trustd.json naming the test
/// groups for the roles, and trustd serving on a private bus with `bus` policy, ready.
pub fn serve(tag: &str, policy: Value, bus: BusPolicy) -> (Lab, Daemon) {
    let mut lab = Lab::new(tag, false);
    let b = lab.sign(policy);
    lab.load(&b);
    std::fs::write(
        lab.paths().config_file(),
        json!({"admin_group": crate::bus::ADMIN_GROUP, "setup_group": crate::bus::SETUP_GROUP})
            .to_string(),
    )
    .expect("trustd.json");
    let d = lab.run_daemon_on(bus, 1000);
    wait_ready(&d.bus.address);
    (lab, d)
}

/// Wait until trustd answers on the bus at `address` (10 s at most).
pub fn wait_ready(address: &str) {
    let start = std::time::Instant::now();
    crate::rt().block_on(async {
        loop {
            if let Ok(c) = trustd::dbus::client::Client::connect(Some(address)).await
                && c.posture_property("Level").await.is_ok()
            {
                return;
            }
            assert!(
                start.elapsed() < std::time::Duration::from_secs(10),
                "trustd did not serve on the bus within 10 s"
            );
            tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        }
    });
}
