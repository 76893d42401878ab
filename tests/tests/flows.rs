//! Flows opened before a transition that tightens stop when the caller gets its reply.
//!
//! trustd runs on a private bus in a lab namespace; flows (TCP and UDP, IPv4 and IPv6, opened
//! by the device or by the peer) keep a byte going each way every 10 ms. After the reply to
//! privacy on, a signed suspend, a policy that no longer admits a destination, port or uid,
//! or a stricter mode, the packets of each flow are counted where they arrive: at the peer
//! for what the device sends, in the device behind trustd's input chain for what the peer
//! sends. A flow the new ruleset does not admit must count 0 both ways; a flow it still
//! admits must keep counting. An unchanged or looser ruleset must cut nothing.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use tests::bus::BusPolicy;
use tests::lab::{Daemon, Lab, can_run, lab_policy, serve};
use tests::{KillOnDrop, bin, rt};
use trustd::dbus::client::Client;
use trustd::timefmt::Timestamp;

const TOOLS: &[&str] = &["ip", "nft", "setpriv", "dbus-daemon"];

/// How long the flows are watched after a transition's reply.
const WATCH: Duration = Duration::from_millis(1500);

/// Tor's uid in [`lab_policy`], and the proxy's exempt uid.
const TOR: Option<(u32, u32)> = Some((1235, 1235));
const EXEMPT: Option<(u32, u32)> = Some((1234, 1234));
const USER: Option<(u32, u32)> = Some((1000, 1000));

/// One flow: its listener's end and who opens it. Each flow has its own port, so that the
/// counters tell flows apart.
#[derive(Debug, Clone, Copy)]
struct Flow {
    /// `ADDR:PORT/proto` of the listener: on the peer for flows the device opens, on the
    /// device (10.99.0.1, fd99::1) for flows the peer opens.
    target: &'static str,
    /// Opened by the peer towards the device.
    inbound: bool,
    /// The device-side user (uid, gid) that opens it; `None`: root.
    user: Option<(u32, u32)>,
    /// After the first byte back, the opener only listens: the other end pushes.
    quiet: bool,
}

const fn out(target: &'static str, user: Option<(u32, u32)>) -> Flow {
    Flow {
        target,
        inbound: false,
        user,
        quiet: false,
    }
}

const fn quiet(target: &'static str, user: Option<(u32, u32)>) -> Flow {
    Flow {
        target,
        inbound: false,
        user,
        quiet: true,
    }
}

const fn inbound(target: &'static str) -> Flow {
    Flow {
        target,
        inbound: true,
        user: None,
        quiet: false,
    }
}

impl Flow {
    fn port(&self) -> u16 {
        let (addr, _) = self.target.rsplit_once('/').expect("proto");
        addr.rsplit_once(':')
            .expect("port")
            .1
            .parse()
            .expect("port")
    }

    fn proto(&self) -> &'static str {
        if self.target.ends_with("/udp") {
            "udp"
        } else {
            "tcp"
        }
    }

    /// Where its listener binds: its own address, so that a UDP reply leaves from the
    /// address the flow was opened to (the peer holds two addresses per family).
    fn listener(&self) -> String {
        self.target.to_owned()
    }
}

/// The device's policy: the first destination (10.99.0.2, fd99::2) on 7001-7004, 7005 for
/// uid 1000 only; the second (10.99.0.3, fd99::3) on 7011-7015; inbound 7100-7103; the
/// bootstrap allowlist 10.99.0.3:7015.
fn flow_policy() -> Value {
    let mut p = lab_policy("direct");
    p["network"]["allow"] = json!([
        {"dest": "10.99.0.2", "proto": "tcp", "ports": [7001]},
        {"dest": "fd99::2", "proto": "tcp", "ports": [7002]},
        {"dest": "10.99.0.2", "proto": "udp", "ports": [7003]},
        {"dest": "fd99::2", "proto": "udp", "ports": [7004]},
        {"dest": "10.99.0.2", "proto": "tcp", "ports": [7005], "uids": [1000]},
        {"dest": "10.99.0.3", "proto": "tcp", "ports": [7011]},
        {"dest": "fd99::3", "proto": "tcp", "ports": [7012]},
        {"dest": "10.99.0.3", "proto": "udp", "ports": [7013]},
        {"dest": "fd99::3", "proto": "udp", "ports": [7014]},
        {"dest": "10.99.0.3", "proto": "tcp", "ports": [7015]}
    ]);
    p["network"]["inbound"] = json!([
        {"proto": "tcp", "ports": [7100, 7101]},
        {"proto": "udp", "ports": [7102, 7103]}
    ]);
    p["setup"]["bootstrap_allow"] = json!([{"dest": "10.99.0.3", "proto": "tcp", "ports": [7015]}]);
    p
}

/// The flows of the first destination, opened by `user`, and the peer's flows to the device.
fn first_destination(user: Option<(u32, u32)>) -> Vec<Flow> {
    vec![
        out("10.99.0.2:7001/tcp", user),
        out("[fd99::2]:7002/tcp", user),
        out("10.99.0.2:7003/udp", user),
        out("[fd99::2]:7004/udp", user),
    ]
}

fn second_destination(user: Option<(u32, u32)>) -> Vec<Flow> {
    vec![
        out("10.99.0.3:7011/tcp", user),
        out("[fd99::3]:7012/tcp", user),
        out("10.99.0.3:7013/udp", user),
        out("[fd99::3]:7014/udp", user),
    ]
}

fn inbound_flows() -> Vec<Flow> {
    vec![
        inbound("10.99.0.1:7100/tcp"),
        inbound("[fd99::1]:7101/tcp"),
        inbound("10.99.0.1:7102/udp"),
        inbound("[fd99::1]:7103/udp"),
    ]
}

fn ns_cmd(ns: &str, user: Option<(u32, u32)>) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]);
    if let Some((u, g)) = user {
        c.arg("setpriv")
            .arg(format!("--reuid={u}"))
            .arg(format!("--regid={g}"))
            .arg("--clear-groups");
    }
    c
}

fn nft(ns: &str, script: &str) {
    let mut child = ns_cmd(ns, None)
        .args(["nft", "-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("nft");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())
        .expect("write");
    assert!(
        child.wait().expect("nft").success(),
        "nft in {ns}: {script}"
    );
}

/// Start a netprobe and wait for its first line (`ready`, `up`) for at most 5 s.
fn started(mut c: Command, what: &str) -> KillOnDrop {
    let mut child = c.stdout(Stdio::piped()).spawn().expect("netprobe");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let guard = KillOnDrop(Some(child));
    match rx.recv_timeout(Duration::from_secs(5)) {
        Ok(l) if !l.trim().is_empty() => guard,
        other => panic!("{what}: no first line within 5 s ({other:?})"),
    }
}

/// The flows of one test, with their listeners and counters. Dropping it stops them.
struct Flows {
    dev: String,
    peer: String,
    flows: Vec<Flow>,
    _procs: Vec<KillOnDrop>,
}

/// Packets of one flow: (sent by the device and counted at the peer, sent by the peer and
/// let through to the device by trustd).
type Counts = BTreeMap<u16, (u64, u64)>;

impl Flows {
    /// Listeners on both sides (and a stand-in for Tor's TransPort on the device), counters
    /// for each flow on both sides, then each flow opened and seen carrying bytes both ways.
    fn open(lab: &Lab, flows: Vec<Flow>) -> Self {
        let (dev, peer) = (lab.dev.clone(), lab.peer.clone());
        // At the peer: first thing on arrival. In the device: after trustd's input chain
        // (priority 0), so only what trustd let through is counted.
        let mut at_peer = String::from(
            "add table inet flows\nadd chain inet flows in { type filter hook input priority -300; }\n",
        );
        let mut at_dev = String::from(
            "add table inet flows\nadd chain inet flows in { type filter hook input priority 100; }\n",
        );
        for f in &flows {
            let (p, proto) = (f.port(), f.proto());
            let (dev_side, peer_side) = if f.inbound {
                ("dport", "sport")
            } else {
                ("sport", "dport")
            };
            at_peer.push_str(&format!(
                "add counter inet flows f{p}\nadd rule inet flows in iifname \"peer0\" meta l4proto {proto} th {peer_side} {p} counter name f{p}\n"
            ));
            at_dev.push_str(&format!(
                "add counter inet flows f{p}\nadd rule inet flows in iifname \"dev0\" meta l4proto {proto} th {dev_side} {p} counter name f{p}\n"
            ));
        }
        nft(&peer, &at_peer);
        nft(&dev, &at_dev);

        let mut procs = Vec::new();
        let mut serve = |ns: &str, listeners: Vec<String>| {
            let mut c = ns_cmd(ns, None);
            c.arg(bin("netprobe")).arg("pushserve").args(listeners);
            procs.push(started(c, "pushserve"));
        };
        let mut on_peer: Vec<String> = flows
            .iter()
            .filter(|f| !f.inbound)
            .map(Flow::listener)
            .collect();
        on_peer.sort();
        on_peer.dedup();
        serve(&peer, on_peer);
        let mut on_dev: Vec<String> = flows
            .iter()
            .filter(|f| f.inbound)
            .map(Flow::listener)
            .collect();
        on_dev.push("127.0.0.1:9040/tcp".into());
        serve(&dev, on_dev);

        for f in &flows {
            let mut c = ns_cmd(if f.inbound { &peer } else { &dev }, f.user);
            c.arg(bin("netprobe")).args(["hold", f.target, "120000"]);
            if f.quiet {
                c.arg("quiet");
            }
            procs.push(started(c, &format!("flow {f:?}")));
        }
        let this = Self {
            dev,
            peer,
            flows,
            _procs: procs,
        };
        // Every flow carries packets both ways before the transition.
        let a = this.counts();
        std::thread::sleep(Duration::from_millis(300));
        let b = this.counts();
        for f in &this.flows {
            let (d0, p0) = a[&f.port()];
            let (d1, p1) = b[&f.port()];
            assert!(
                p1 > p0 && (d1 > d0 || f.quiet),
                "{f:?} is not flowing before the transition: {:?} -> {:?}",
                a[&f.port()],
                b[&f.port()]
            );
        }
        this
    }

    fn read(ns: &str) -> BTreeMap<u16, u64> {
        let o = ns_cmd(ns, None)
            .args(["nft", "-j", "list", "counters", "table", "inet", "flows"])
            .output()
            .expect("nft");
        let v: Value = serde_json::from_slice(&o.stdout).expect("json");
        v["nftables"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| o.get("counter"))
            .filter_map(|c| {
                let port = c["name"].as_str()?.strip_prefix('f')?.parse().ok()?;
                Some((port, c["packets"].as_u64()?))
            })
            .collect()
    }

    fn counts(&self) -> Counts {
        let (peer, dev) = (Self::read(&self.peer), Self::read(&self.dev));
        peer.iter().map(|(p, n)| (*p, (*n, dev[p]))).collect()
    }

    /// Call right after the reply: watch the flows for [`WATCH`] and assert that each flow
    /// in `cut` carried no packet either way and each other flow kept flowing both ways
    /// (quiet ones: from the pushing end).
    fn assert_after_reply(&self, what: &str, cut: &[u16]) {
        let a = self.counts();
        std::thread::sleep(WATCH);
        let b = self.counts();
        let mut report = Vec::new();
        let mut ok = true;
        for f in &self.flows {
            let p = f.port();
            let (sent, got) = (b[&p].0 - a[&p].0, b[&p].1 - a[&p].1);
            let pushed = if f.inbound { sent } else { got };
            let pushing = if f.inbound { got } else { sent };
            let fine = if cut.contains(&p) {
                sent == 0 && got == 0
            } else {
                pushed > 0 && (pushing > 0 || f.quiet)
            };
            ok &= fine;
            report.push(format!(
                "{} {}: device->peer {sent}, peer->device {got}{}",
                f.target,
                if cut.contains(&p) { "(cut)" } else { "(kept)" },
                if fine { "" } else { "  <-- wrong" }
            ));
        }
        eprintln!("{what}:\n  {}", report.join("\n  "));
        assert!(ok, "{what}:\n  {}", report.join("\n  "));
    }
}

fn ports(flows: &[Flow]) -> Vec<u16> {
    flows.iter().map(Flow::port).collect()
}

fn start(tag: &str, policy: Value) -> (Lab, Daemon) {
    serve(tag, policy, BusPolicy::Shipped)
}

/// Send a signed bundle to trustd as root; returns once trustd replied.
fn apply_bundle(daemon: &Daemon, bundle: &std::path::Path) {
    let rt = rt();
    rt.block_on(async {
        let c = Client::connect(Some(&daemon.bus.address))
            .await
            .expect("connect");
        c.apply_bundle(&std::fs::read(bundle).expect("bundle"))
            .await
            .expect("applied");
    });
}

fn command(serial: u64, device: &str, action: &str) -> Value {
    let now = Timestamp::now();
    json!({
        "schema": "enigm.command/v1", "serial": serial,
        "issued_at": now.plus_secs(-60).to_string(), "expires_at": now.plus_secs(3600).to_string(),
        "issuer": "mdm.example.org", "device": device, "action": action,
        "nonce": format!("nonce-{serial}-{action}"),
    })
}

/// Attack: open a connection while the policy allows it, then have privacy turned on
/// (tor-only): before, `ct state established` let the old socket keep talking directly.
/// Now, from the reply to an ordinary user's `trustctl privacy on`, no packet of a direct
/// flow passes either way, TCP or UDP, IPv4 or IPv6; Tor's own flows and the inbound flows
/// the policy admits keep flowing, and new connections go through Tor's TransPort.
#[test]
fn privacy_on_stops_direct_flows_opened_before_it() {
    if !can_run(TOOLS) {
        return;
    }
    let (lab, daemon) = start("fp", flow_policy());
    let cut = [
        first_destination(None),
        vec![out("10.99.0.2:7005/tcp", USER)],
    ]
    .concat();
    let kept = [second_destination(TOR), inbound_flows()].concat();
    let flows = Flows::open(&lab, [cut.clone(), kept].concat());

    let o = ns_cmd(&lab.dev, Some((7, 7)))
        .arg(bin("trustctl"))
        .args(["--bus", &daemon.bus.address, "privacy", "on"])
        .output()
        .expect("trustctl");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    flows.assert_after_reply("privacy on (tor-only)", &ports(&cut));

    // The Tor path works: a user's new connection is redirected to the TransPort (a stand-in
    // listens there), and stays up; nothing of it reaches the peer directly.
    let before = flows.counts()[&7001];
    let mut redirected = ns_cmd(&lab.dev, USER);
    redirected
        .arg(bin("netprobe"))
        .args(["hold", "10.99.0.2:7001/tcp", "1000"]);
    let _tor = started(redirected, "a new connection through Tor's TransPort");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(flows.counts()[&7001].0, before.0, "nothing went around Tor");
}

/// Attack: keep a connection open across a signed `suspend`: lockdown must stop it. After
/// the reply, only the bootstrap allowlist's flow still passes.
#[test]
fn a_signed_suspend_stops_flows_opened_before_it() {
    if !can_run(TOOLS) {
        return;
    }
    let (lab, daemon) = start("fs", flow_policy());
    let addr = daemon.bus.address.clone();
    let rt = rt();
    let c = rt.block_on(Client::connect(Some(&addr))).expect("connect");
    let handle = rt
        .block_on(c.device_handle("mdm.example.org"))
        .expect("handle");
    let send = |v: &Value| {
        let f = lab.sign_command(v);
        rt.block_on(c.apply_command(&std::fs::read(f).expect("read")))
    };
    send(&command(1, &handle, "enroll")).expect("enroll");

    let cut = [
        first_destination(None),
        second_destination(None),
        vec![out("10.99.0.2:7005/tcp", USER)],
        inbound_flows(),
    ]
    .concat();
    let kept = vec![out("10.99.0.3:7015/tcp", None)];
    let flows = Flows::open(&lab, [cut.clone(), kept].concat());
    let (_, to) = send(&command(2, &handle, "suspend")).expect("suspend");
    assert_eq!(to, "suspended");
    flows.assert_after_reply("signed suspend (lockdown)", &ports(&cut));
}

/// Attack: keep a connection open across a new policy that no longer admits its
/// destination, its port or its uid. After the reply those flows stop; the second
/// destination's flows, and the inbound flows the new policy still admits, keep going.
#[test]
fn a_policy_that_no_longer_admits_a_flow_stops_it() {
    if !can_run(TOOLS) {
        return;
    }
    let (mut lab, daemon) = start("fn", flow_policy());
    let cut = [
        first_destination(None),
        vec![out("10.99.0.2:7005/tcp", USER)],
        vec![inbound("10.99.0.1:7100/tcp"), inbound("10.99.0.1:7102/udp")],
    ]
    .concat();
    let kept = [
        second_destination(None),
        vec![inbound("[fd99::1]:7101/tcp"), inbound("[fd99::1]:7103/udp")],
    ]
    .concat();
    let flows = Flows::open(&lab, [cut.clone(), kept].concat());

    let mut p = flow_policy();
    p["network"]["allow"] = json!([
        // The destination stays, the port changes.
        {"dest": "10.99.0.2", "proto": "tcp", "ports": [7009]},
        // The port stays, the uid changes.
        {"dest": "10.99.0.2", "proto": "tcp", "ports": [7005], "uids": [1001]},
        {"dest": "10.99.0.3", "proto": "tcp", "ports": [7011]},
        {"dest": "fd99::3", "proto": "tcp", "ports": [7012]},
        {"dest": "10.99.0.3", "proto": "udp", "ports": [7013]},
        {"dest": "fd99::3", "proto": "udp", "ports": [7014]}
    ]);
    p["network"]["inbound"] = json!([
        {"proto": "tcp", "ports": [7101]},
        {"proto": "udp", "ports": [7103]}
    ]);
    let b = lab.sign(p);
    apply_bundle(&daemon, &b);
    flows.assert_after_reply("policy without the first destination", &ports(&cut));
}

/// Attack: keep a connection open across a switch to a stricter mode (direct to
/// proxy-required). Root's direct flows stop; the proxy-exempt uid's flows and the inbound
/// flows keep going.
#[test]
fn a_stricter_mode_stops_flows_opened_before_it() {
    if !can_run(TOOLS) {
        return;
    }
    let (mut lab, daemon) = start("fm", flow_policy());
    let cut = first_destination(None);
    let kept = [second_destination(EXEMPT), inbound_flows()].concat();
    let flows = Flows::open(&lab, [cut.clone(), kept].concat());
    let mut p = flow_policy();
    p["network"]["mode"] = json!("proxy-required");
    let b = lab.sign(p);
    apply_bundle(&daemon, &b);
    flows.assert_after_reply("direct to proxy-required", &ports(&cut));
}

/// What the new ruleset still admits is not cut: the same ruleset put back (SIGHUP, drift
/// repair) and a looser one (a policy adding a rule, privacy off again) keep every flow,
/// including flows where only the far end sends (their packets are judged by the opposite
/// direction's rules) and a uid-restricted one.
#[test]
fn unchanged_or_looser_rulesets_keep_open_flows() {
    if !can_run(TOOLS) {
        return;
    }
    let (mut lab, daemon) = start("fk", flow_policy());
    let all = [
        first_destination(None),
        vec![
            quiet("10.99.0.2:7005/tcp", USER),
            quiet("10.99.0.3:7011/tcp", None),
            quiet("[fd99::3]:7014/udp", None),
        ],
        inbound_flows(),
    ]
    .concat();
    let flows = Flows::open(&lab, all);

    daemon.signal("-HUP");
    std::thread::sleep(Duration::from_millis(300));
    flows.assert_after_reply("SIGHUP (same ruleset)", &[]);

    lab.dev_sh("nft delete table inet trustd");
    std::thread::sleep(Duration::from_millis(2000));
    assert!(
        lab.dev_sh("nft list tables")
            .contains("table inet trustd\n")
    );
    flows.assert_after_reply("drift repaired (same ruleset)", &[]);

    let mut p = flow_policy();
    p["network"]["allow"]
        .as_array_mut()
        .expect("allow")
        .push(json!({"dest": "10.99.0.3", "proto": "tcp", "ports": [7020]}));
    let b = lab.sign(p);
    apply_bundle(&daemon, &b);
    flows.assert_after_reply("a looser policy", &[]);
}
