//! trustd on a real `dbus-daemon` (private, in a temp dir): who may call what, signals,
//! malformed calls, introspection. trustd runs in a network namespace of its own lab.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tests::bus::{ADMIN_GROUP, BusPolicy, SETUP_GROUP, gid};
use tests::lab::{Daemon, Lab, can_run, lab_policy};
use tests::rawbus::raw_message;
use tests::{bin, rt};
use trustd::dbus::client::Client;

const TOOLS: &[&str] = &["ip", "nft", "setpriv", "dbus-daemon"];

fn start(tag: &str, policy: Value, bus: BusPolicy) -> (Lab, Daemon) {
    tests::lab::serve(tag, policy, bus)
}

/// Who calls: uid, gid, supplementary group names (None: root, no setpriv). The users are
/// base-passwd's (dbus-daemon refuses uids without a passwd entry): lp, mail, news.
#[derive(Debug, Clone, Copy)]
struct Identity {
    name: &'static str,
    cred: Option<(u32, u32, Option<&'static str>)>,
    role: &'static str,
}

const IDENTITIES: [Identity; 5] = [
    Identity {
        name: "nobody",
        cred: Some((65534, 65534, None)),
        role: "user",
    },
    Identity {
        name: "ordinary user (lp)",
        cred: Some((7, 7, None)),
        role: "user",
    },
    Identity {
        name: "trustd-setup member (mail)",
        cred: Some((8, 8, Some(SETUP_GROUP))),
        role: "setup",
    },
    Identity {
        name: "trustd-admin member (news)",
        cred: Some((9, 9, Some(ADMIN_GROUP))),
        role: "admin",
    },
    Identity {
        name: "root",
        cred: None,
        role: "admin",
    },
];

/// Run buscall as `who`; one JSON value per call.
fn buscall(who: &Identity, address: &str, calls: &[String]) -> Vec<Value> {
    let mut c = match who.cred {
        None => Command::new(bin("buscall")),
        Some((uid, primary, groups)) => {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={uid}"))
                .arg(format!("--regid={primary}"));
            match groups {
                None => c.arg("--clear-groups"),
                Some(g) => c.arg(format!("--groups={}", gid(g))),
            };
            c.arg(bin("buscall"));
            c
        }
    };
    let o = c.arg(address).args(calls).output().expect("buscall");
    assert!(
        o.status.success(),
        "buscall as {}: {}",
        who.name,
        String::from_utf8_lossy(&o.stderr)
    );
    let out: Vec<Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("buscall json"))
        .collect();
    assert_eq!(out.len(), calls.len(), "one answer per call");
    out
}

/// A directory every test user can read, for the inputs they send.
fn shared_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    d
}

fn share(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).expect("write");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    p
}

/// What must not change when a call is denied.
fn snapshot(lab: &Lab) -> (Value, Vec<u8>) {
    let p = lab.paths();
    let state: Value =
        serde_json::from_slice(&std::fs::read(p.state_file()).expect("state")).expect("json");
    (state, std::fs::read(p.policy_bundle()).expect("bundle"))
}

fn matrix_policy() -> Value {
    let mut p = lab_policy("direct");
    p["setup"]["required_steps"] = json!(["eula", "wifi"]);
    p
}

/// Every method and property x every identity, on the shipped bus policy (two layers) and on
/// an open bus (trustd's own checks alone). Allowed cells never answer AccessDenied; denied
/// cells always do, change nothing, and (when trustd is the one refusing) are audited.
#[test]
fn every_call_by_every_role_is_allowed_or_denied_as_designed() {
    if !can_run(TOOLS) {
        return;
    }
    for (tag, bus) in [("ms", BusPolicy::Shipped), ("mo", BusPolicy::Open)] {
        let (mut lab, daemon) = start(tag, matrix_policy(), bus);
        let addr = daemon.bus.address.clone();
        // Privacy on first, so that SetPrivacyMode(true) changes nothing for anyone.
        rt().block_on(async {
            let c = Client::connect(Some(&addr)).await.expect("connect");
            c.set_privacy_mode(true).await.expect("privacy on as root");
        });

        let shared = shared_dir();
        let next = lab.sign(matrix_policy());
        let bundle = share(
            shared.path(),
            "next.dsse.json",
            &std::fs::read(&next).expect("read"),
        );
        let junk = share(shared.path(), "junk.json", b"{\"not\": \"an envelope\"}");
        let (b, j) = (bundle.display(), junk.display());

        let everyone = ["user", "setup", "admin"].as_slice();
        let setup_admin = ["setup", "admin"].as_slice();
        let admin = ["admin"].as_slice();
        let mut cells: Vec<(String, &[&str])> = trustd::dbus::client::POSTURE_PROPERTIES
            .iter()
            .map(|p| (format!("Posture.get:{p}"), everyone))
            .collect();
        cells.extend([
            ("Posture.GetAll".to_owned(), everyone),
            ("Introspectable.Introspect".to_owned(), everyone),
            ("Privacy.SetPrivacyMode b:true".to_owned(), everyone),
            ("Privacy.SetPrivacyMode b:false".to_owned(), admin),
            (format!("Policy.ApplyBundle ay@{b}"), admin),
            (format!("Policy.ApplyIntelFeed ay@{j}"), admin),
            (format!("Policy.ApplyTrustRoot ay@{j}"), admin),
            ("Policy.ActivePolicy".to_owned(), admin),
            ("Setup.CompleteStep s:eula".to_owned(), setup_admin),
            ("Audit.Tail u:3".to_owned(), admin),
            ("Audit.Verify".to_owned(), admin),
            (
                "Launcher.CheckLaunch ss:org.enigm.Browser".to_owned(),
                everyone,
            ),
            (
                "Launcher.ReportLaunch sbs:org.enigm.Browser".to_owned(),
                everyone,
            ),
            (
                "Posture.GetDeviceHandle s:mdm.example.org".to_owned(),
                everyone,
            ),
            (format!("Device.ApplyCommand ay@{j}"), admin),
            ("Device.ActivateCredential ayay#68".to_owned(), admin),
            ("Audit.Checkpoint".to_owned(), admin),
            ("Audit.AcknowledgeDamage t:0".to_owned(), admin),
            ("Posture.GetReport s:verifier-nonce-1".to_owned(), everyone),
        ]);
        let calls: Vec<String> = cells.iter().map(|c| c.0.clone()).collect();

        let mut daemon_denials: Vec<u32> = Vec::new();
        for who in IDENTITIES {
            let (state_before, bundle_before) = snapshot(&lab);
            let answers = buscall(&who, &addr, &calls);
            let mut denied_any = false;
            for ((call, allowed), a) in cells.iter().zip(&answers) {
                let err = a["error"].as_str().unwrap_or("");
                let want = allowed.contains(&who.role);
                if want {
                    assert!(
                        !err.ends_with("AccessDenied"),
                        "{tag}: {call} as {} must be allowed: {a}",
                        who.name
                    );
                } else {
                    denied_any = true;
                    assert!(
                        err.ends_with(".AccessDenied"),
                        "{tag}: {call} as {} must be denied: {a}",
                        who.name
                    );
                    if bus == BusPolicy::Open {
                        assert_eq!(
                            err, "org.enigm.Trust1.Error.AccessDenied",
                            "{tag}: with an open bus trustd itself refuses {call}"
                        );
                    }
                    if err.starts_with("org.enigm.Trust1.") {
                        daemon_denials.push(who.cred.map_or(0, |c| c.0));
                        let msg = a["message"].as_str().unwrap_or("");
                        assert!(
                            msg.contains("not allowed") && msg.contains("nothing changed"),
                            "a denial says what and that nothing changed: {msg}"
                        );
                    }
                }
            }
            let (state_after, bundle_after) = snapshot(&lab);
            if who.role != "admin" {
                assert!(denied_any);
                assert_eq!(
                    bundle_after, bundle_before,
                    "{tag}: {} changed the bundle",
                    who.name
                );
                let mut expected = state_before.clone();
                if who.role == "setup" {
                    // The one change a setup member may make.
                    let steps = expected["completed_steps"].as_array_mut().expect("steps");
                    if !steps.contains(&json!("eula")) {
                        steps.push(json!("eula"));
                    }
                }
                assert_eq!(
                    state_after, expected,
                    "{tag}: {} changed the state",
                    who.name
                );
                assert_eq!(state_after["privacy_mode"], json!(true));
            }
            if who.name.starts_with("trustd-admin member") {
                assert_ne!(
                    bundle_after, bundle_before,
                    "the admin member's bundle is in force"
                );
            }
        }
        // trustd audited each refusal it made, with the caller's uid.
        let records = trustd::audit::read_records(&lab.paths().audit_dir()).expect("audit");
        let mut audited: Vec<u32> = records
            .iter()
            .filter(|r| r.kind == "authz.denied")
            .map(|r| r.actor.uid.expect("uid"))
            .collect();
        audited.sort_unstable();
        daemon_denials.sort_unstable();
        assert_eq!(
            audited, daemon_denials,
            "{tag}: every refusal by trustd is audited"
        );
        let expected_daemon_denials = match bus {
            // Only SetPrivacyMode(false) passes the bus policy for non-admins: 3 identities.
            BusPolicy::Shipped => 3,
            // 11 admin-only calls (SetPrivacyMode(false) and ActivateCredential among them)
            // and CompleteStep for each of the 2 users; the 11 admin-only calls for the setup
            // member.
            BusPolicy::Open => 12 * 2 + 11,
        };
        assert_eq!(daemon_denials.len(), expected_daemon_denials, "{tag}");
        eprintln!(
            "{tag}: {} cells, {} refused by trustd itself",
            cells.len() * IDENTITIES.len(),
            daemon_denials.len()
        );
    }
}

fn props(changes: &[(String, Value)]) -> BTreeMap<String, Value> {
    changes.iter().cloned().collect()
}

/// A client sees one PropertiesChanged per transition, carrying what changed: privacy,
/// a new policy, a setup step. The kernel holds the new ruleset when the call returns.
#[test]
fn posture_changes_are_signalled_and_in_the_kernel_when_the_call_returns() {
    if !can_run(TOOLS) {
        return;
    }
    let mut p = lab_policy("direct");
    p["setup"]["required_steps"] = json!(["eula"]);
    p["privacy"]["user_may_disable"] = json!(true);
    let (mut lab, daemon) = start("sg", p.clone(), BusPolicy::Shipped);
    let addr = daemon.bus.address.clone();
    // `trustctl watch` follows the same signals from another process.
    let watch = Command::new(bin("trustctl"))
        .args(["--bus", &addr, "--json", "watch", "--count", "3"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("trustctl watch");
    let watch = tests::KillOnDrop(Some(watch));
    std::thread::sleep(Duration::from_millis(300));

    rt().block_on(async {
        let c = Client::connect(Some(&addr)).await.expect("connect");
        let mut changes = c.posture_changes().await.expect("subscribe");
        let next = async |changes: &mut trustd::dbus::client::PostureChanges| {
            tokio::time::timeout(Duration::from_secs(5), changes.next())
                .await
                .expect("a PropertiesChanged within 5 s")
                .expect("stream open")
        };

        // Setup: the last step completes, the network leaves the bootstrap allowlist.
        assert!(
            !lab.probe("10.99.0.2:443/tcp", None),
            "setup: bootstrap only"
        );
        c.complete_step("eula").await.expect("complete");
        assert!(
            lab.probe("10.99.0.2:443/tcp", None),
            "in force when the call returned"
        );
        let ch = props(&next(&mut changes).await);
        assert_eq!(ch.get("SetupComplete"), Some(&json!(true)), "{ch:?}");
        assert_eq!(ch.get("PendingSetupSteps"), Some(&json!([])));
        assert_eq!(ch.get("NetworkMode"), Some(&json!("direct")));
        assert!(ch.contains_key("RulesetDigest") && ch.contains_key("AuditHead"));

        // Privacy on: tor-only in the kernel before the reply; the signal says so.
        let t0 = Instant::now();
        c.set_privacy_mode(true).await.expect("privacy on");
        let replied = t0.elapsed();
        let ch = props(&next(&mut changes).await);
        let signalled = t0.elapsed();
        assert!(
            !lab.probe("10.99.0.2:443/tcp", None),
            "tor-only blocks direct traffic"
        );
        assert_eq!(ch.get("PrivacyMode"), Some(&json!(true)), "{ch:?}");
        assert_eq!(ch.get("NetworkMode"), Some(&json!("tor-only")));
        eprintln!("privacy on: reply after {replied:?}, signal after {signalled:?}");

        // A new policy: serial and digest change.
        let b = lab.sign(p.clone());
        let r = c
            .apply_bundle(&std::fs::read(&b).expect("read"))
            .await
            .expect("apply");
        assert_eq!(r.to_serial, r.from_serial + 1);
        let ch = props(&next(&mut changes).await);
        assert_eq!(ch.get("PolicySerial"), Some(&json!(r.to_serial)), "{ch:?}");
        assert_eq!(ch.get("PolicyDigest"), Some(&json!(r.digest)));

        // The policy lets users turn privacy off: an ordinary user may.
        let user = IDENTITIES[1];
        let a = buscall(&user, &addr, &["Privacy.SetPrivacyMode b:false".to_owned()]);
        assert_eq!(a[0]["ok"], json!(true), "{a:?}");
        let ch = props(&next(&mut changes).await);
        assert_eq!(ch.get("PrivacyMode"), Some(&json!(false)));
        assert!(lab.probe("10.99.0.2:443/tcp", None));
    });

    let out = watch_output(watch);
    assert_eq!(out.len(), 3, "trustctl watch printed 3 changes: {out:?}");
    assert_eq!(out[0]["SetupComplete"], json!(true));
    assert_eq!(out[1]["PrivacyMode"], json!(true));
    assert!(out[2]["PolicySerial"].is_u64());
}

fn watch_output(mut w: tests::KillOnDrop) -> Vec<Value> {
    let mut child = w.0.take().expect("child");
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            assert!(status.success(), "trustctl watch exited {status:?}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "trustctl watch did not finish"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut s = String::new();
    use std::io::Read;
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut s)
        .expect("read");
    s.lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect()
}

/// The `<interface name="org.enigm.Trust1.*">` elements of an introspection document, each
/// line trimmed (or as it is, for writing the file).
fn our_interfaces_lines(xml: &str, trim: bool) -> String {
    let mut out = String::new();
    let mut inside = false;
    for raw in xml.lines().filter(|l| !l.trim().is_empty()) {
        let line = raw.trim();
        if line.starts_with("<interface name=\"org.enigm.Trust1.") {
            inside = true;
        }
        if inside {
            out.push_str(if trim { line } else { raw });
            out.push('\n');
        }
        if line == "</interface>" {
            inside = false;
        }
    }
    out
}

fn our_interfaces(xml: &str) -> String {
    our_interfaces_lines(xml, true)
}

/// The interfaces trustd serves are exactly those in the committed `dbus/org.enigm.Trust1.xml`
/// (the UI is written against that file), whose documentation is the served doc comments as
/// gdbus-codegen's DocString annotations (tests::introspection). UPDATE_SNAPSHOTS=1 rewrites it.
#[test]
fn introspection_matches_the_committed_xml() {
    if !can_run(TOOLS) {
        return;
    }
    let (_lab, daemon) = start("ix", lab_policy("direct"), BusPolicy::Shipped);
    let xml = rt().block_on(async {
        let c = Client::connect(Some(&daemon.bus.address))
            .await
            .expect("connect");
        zbus::fdo::IntrospectableProxy::builder(c.connection())
            .destination(trustd::dbus::BUS_NAME)
            .path(trustd::dbus::OBJECT_PATH)
            .build()
            .await
            .expect("proxy")
            .introspect()
            .await
            .expect("introspect")
    });
    let served = our_interfaces(&tests::introspection::document(&our_interfaces_lines(
        &xml, false,
    )));
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dbus/org.enigm.Trust1.xml");
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        let doc = format!(
            "<!DOCTYPE node PUBLIC \"-//freedesktop//DTD D-BUS Object Introspection 1.0//EN\"\n \"http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd\">\n<!-- org.enigm.Trust1 at /org/enigm/Trust1: the API the Trust Security Center is written against. -->\n<node name=\"/org/enigm/Trust1\">\n{}</node>\n",
            tests::introspection::document(&our_interfaces_lines(&xml, false))
        );
        std::fs::write(&file, doc).expect("write xml");
    }
    let committed = std::fs::read_to_string(&file).expect("dbus/org.enigm.Trust1.xml");
    assert_eq!(
        our_interfaces(&committed),
        served,
        "the served interfaces differ from dbus/org.enigm.Trust1.xml"
    );
    for iface in trustd::dbus::INTERFACES {
        assert!(
            served.contains(&format!("<interface name=\"{iface}\">")),
            "{iface}"
        );
    }
}

/// Say Hello and call CompleteStep(`step`) over a raw socket; returns what came back until
/// the bus closed the connection, an UnknownStep error arrived, or 3 s passed.
fn raw_complete_step(address: &str, step: &[u8]) -> Vec<u8> {
    use std::io::{Read, Write};
    let path = address.strip_prefix("unix:path=").expect("path address");
    let mut s = std::os::unix::net::UnixStream::connect(path).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let uid_hex: String = trustd::sys::uid()
        .to_string()
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect();
    s.write_all(format!("\0AUTH EXTERNAL {uid_hex}\r\n").as_bytes())
        .expect("auth");
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).expect("auth reply");
    assert!(
        buf[..n].starts_with(b"OK "),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    s.write_all(b"BEGIN\r\n").expect("begin");
    let hello = [
        (1, 'o', b"/org/freedesktop/DBus".as_slice()),
        (2, 's', b"org.freedesktop.DBus".as_slice()),
        (3, 's', b"Hello".as_slice()),
        (6, 's', b"org.freedesktop.DBus".as_slice()),
    ];
    s.write_all(&raw_message(1, &hello, "", &[]))
        .expect("hello");
    let mut body = u32::try_from(step.len())
        .expect("len")
        .to_le_bytes()
        .to_vec();
    body.extend(step);
    body.push(0);
    let call = raw_message(
        2,
        &[
            (1, 'o', b"/org/enigm/Trust1"),
            (2, 's', b"org.enigm.Trust1.Setup"),
            (3, 's', b"CompleteStep"),
            (6, 's', b"org.enigm.Trust1"),
        ],
        "s",
        &body,
    );
    s.write_all(&call).expect("call");
    let mut got: Vec<u8> = Vec::new();
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        got.extend(&buf[..n]);
        if got.windows(11).any(|w| w == b"UnknownStep") {
            break;
        }
    }
    got
}

/// Malformed calls get an error, change nothing, and trustd keeps serving.
#[test]
fn malformed_calls_are_refused_and_trustd_keeps_serving() {
    if !can_run(TOOLS) {
        return;
    }
    let mut p = lab_policy("direct");
    p["setup"]["required_steps"] = json!(["eula"]);
    let (lab, daemon) = start("mf", p, BusPolicy::Shipped);
    let addr = daemon.bus.address.clone();
    let before = snapshot(&lab);
    let shared = shared_dir();
    let not_utf8 = share(
        shared.path(),
        "bad.json",
        b"{\"payloadType\": \"\xff\xfe\"}",
    );
    let root = IDENTITIES[4];
    let calls = [
        "Privacy.SetPrivacyMode s:yes".to_owned(),
        "Setup.CompleteStep u:7".to_owned(),
        "Audit.Tail s:all".to_owned(),
        "Policy.ApplyBundle ay#16777216".to_owned(),
        format!("Policy.ApplyBundle ay@{}", not_utf8.display()),
        "Setup.CompleteStep s:no-such-step".to_owned(),
        "Posture.NoSuchMethod".to_owned(),
    ];
    let answers = buscall(&root, &addr, &calls);
    let expect = [
        "org.freedesktop.DBus.Error.InvalidArgs",
        "org.freedesktop.DBus.Error.InvalidArgs",
        "org.freedesktop.DBus.Error.InvalidArgs",
        "org.enigm.Trust1.Error.Refused",
        "org.enigm.Trust1.Error.Refused",
        "org.enigm.Trust1.Error.UnknownStep",
        "org.freedesktop.DBus.Error.UnknownMethod",
    ];
    for ((call, a), want) in calls.iter().zip(&answers).zip(expect) {
        assert_eq!(a["error"], json!(want), "{call}: {a}");
    }
    let too_large = answers[3]["message"].as_str().unwrap_or("");
    assert!(too_large.contains("the last good one stays"), "{too_large}");

    // 64 MiB: over the bus's message limit. The call fails; nothing reaches trustd.
    let huge = buscall(&root, &addr, &["Policy.ApplyBundle ay#67108864".to_owned()]);
    assert_eq!(huge[0]["ok"], json!(false), "{}", huge[0]);

    // A hand-built call reaches trustd when its string is UTF-8 (so the builder is right)...
    let valid = raw_complete_step(&addr, b"no-such-step");
    assert!(
        valid.windows(11).any(|w| w == b"UnknownStep"),
        "a raw call with a valid string was answered by trustd"
    );
    // ...and the bus drops the connection, delivering nothing, when it is not.
    let invalid = raw_complete_step(&addr, b"\xff\xfe not utf-8");
    assert!(
        !invalid.windows(11).any(|w| w == b"UnknownStep"),
        "a non-UTF-8 string reached trustd"
    );

    // Still serving, nothing changed, and the refusals are in the audit log.
    let level = buscall(&root, &addr, &["Posture.get:Level".to_owned()]);
    assert_eq!(level[0]["ok"], json!(true), "{}", level[0]);
    assert_eq!(snapshot(&lab), before, "malformed calls changed the state");
    let records = trustd::audit::read_records(&lab.paths().audit_dir()).expect("audit");
    let refused: Vec<&str> = records
        .iter()
        .filter(|r| r.outcome == trustd::audit::Outcome::Refused)
        .map(|r| r.kind.as_str())
        .collect();
    assert_eq!(
        refused,
        ["policy.apply", "policy.apply", "setup.step", "setup.step"]
    );
}

/// Sixteen callers at once never interleave a transition: in the audit log every privacy
/// change is followed directly by the ruleset it put in force, and the kernel, the state and
/// the posture agree at the end.
#[test]
fn concurrent_callers_are_serialized_one_transition_at_a_time() {
    if !can_run(TOOLS) {
        return;
    }
    let (lab, daemon) = start("cc", lab_policy("direct"), BusPolicy::Shipped);
    let addr = daemon.bus.address.clone();
    let final_mode = rt().block_on(async {
        let mut tasks = Vec::new();
        for i in 0..16u32 {
            let addr = addr.clone();
            tasks.push(tokio::spawn(async move {
                let c = Client::connect(Some(&addr)).await.expect("connect");
                for j in 0..4u32 {
                    c.set_privacy_mode((i + j) % 2 == 0).await.expect("privacy");
                }
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
        let c = Client::connect(Some(&addr)).await.expect("connect");
        c.posture_property("PrivacyMode").await.expect("posture")
    });
    let records = trustd::audit::read_records(&lab.paths().audit_dir()).expect("audit");
    let mut changes = 0;
    for (i, r) in records.iter().enumerate() {
        if r.kind == "privacy.set" {
            changes += 1;
            let next = &records[i + 1];
            let want = if r.to.as_deref() == Some("on") {
                "tor-only"
            } else {
                "direct"
            };
            assert_eq!(
                next.kind, "network.apply",
                "record {} follows a privacy change",
                next.seq
            );
            assert_eq!(next.to.as_deref(), Some(want), "record {}", next.seq);
            assert_eq!(next.actor.bus_name, r.actor.bus_name, "same caller");
        }
    }
    assert!(changes >= 2, "the callers changed privacy mode ({changes})");
    let state: Value =
        serde_json::from_slice(&std::fs::read(lab.paths().state_file()).expect("state"))
            .expect("json");
    assert_eq!(state["privacy_mode"], final_mode, "state and posture agree");
    let tor_in_kernel = lab.dev_sh("nft list table inet trustd").contains("9040");
    assert_eq!(
        Value::Bool(tor_in_kernel),
        final_mode,
        "kernel and posture agree"
    );
    eprintln!("{changes} privacy transitions from 64 concurrent calls, none interleaved");
}

/// SIGHUP reloads the configuration: a group named admin in trustd.json takes effect, and the
/// refusal before it and the acceptance after it are both on record.
#[test]
fn sighup_reloads_who_holds_which_role() {
    if !can_run(TOOLS) {
        return;
    }
    let (lab, daemon) = start("hp", lab_policy("direct"), BusPolicy::Open);
    let addr = daemon.bus.address.clone();
    let lp = IDENTITIES[1];
    let call = ["Policy.ActivePolicy".to_owned()];
    let a = buscall(&lp, &addr, &call);
    assert_eq!(
        a[0]["error"],
        json!("org.enigm.Trust1.Error.AccessDenied"),
        "{}",
        a[0]
    );

    // lp's own group (gid 7) becomes the admin group.
    std::fs::write(
        lab.paths().config_file(),
        json!({"admin_group": 7, "setup_group": SETUP_GROUP}).to_string(),
    )
    .expect("trustd.json");
    daemon.signal("-HUP");
    let start = Instant::now();
    loop {
        let a = buscall(&lp, &addr, &call);
        if a[0]["ok"] == json!(true) {
            assert!(a[0]["value"].as_str().is_some());
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the new admin group did not take effect: {}",
            a[0]
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let records = trustd::audit::read_records(&lab.paths().audit_dir()).expect("audit");
    assert!(
        records
            .iter()
            .any(|r| r.kind == "state.load" && r.from.as_deref() == Some("running")),
        "the reload is audited"
    );
}

/// `trustd run --confine`: Landlock in force (posture says so) and trustd still does its job
/// under it: enforcing on a privacy change (nft runs confined), repairing drift, writing its
/// state and log. When the bus goes away, trustd stops (exit 3, for systemd to restart it)
/// and the rules stay.
#[test]
fn confined_trustd_still_enforces_and_stops_when_the_bus_is_lost() {
    if !can_run(TOOLS) {
        return;
    }
    if trustd::sys::landlock_abi() == 0 {
        tests::lab::skip("no Landlock");
        return;
    }
    let mut lab = Lab::new("cf", false);
    let b = lab.sign(lab_policy("direct"));
    lab.load(&b);
    let bus = tests::bus::Bus::start(BusPolicy::Shipped, "");
    let addr = bus.address.clone();
    let mut daemon = lab.run_daemon_with(bus, 300, &["--confine"]);
    tests::lab::wait_ready(&addr);
    rt().block_on(async {
        let c = Client::connect(Some(&addr)).await.expect("connect");
        let conf = c.posture_property("Confinement").await.expect("posture");
        let conf = conf.as_str().unwrap_or_default().to_owned();
        assert!(
            conf.starts_with("Landlock ABI ")
                && conf.ends_with("enforced")
                && !conf.contains("not"),
            "{conf}"
        );
        c.set_privacy_mode(true)
            .await
            .expect("privacy on, applied by a confined nft");
        assert_eq!(
            c.posture_property("NetworkMode").await.expect("p"),
            json!("tor-only")
        );
        c.set_privacy_mode(false).await.expect("privacy off");
    });
    lab.dev_sh("nft delete table inet trustd");
    let start = Instant::now();
    while !lab
        .dev_sh("nft list tables")
        .contains("table inet trustd\n")
    {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "drift not repaired under Landlock"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The bus goes away: trustd notices within its ping interval and stops with exit 3.
    daemon.bus.kill();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = daemon
            .child
            .0
            .as_mut()
            .expect("child")
            .try_wait()
            .expect("wait")
        {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "trustd did not notice the bus was gone"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status.code(), Some(3));
    assert!(
        lab.dev_sh("nft list tables").contains("table inet trustd"),
        "the rules stay"
    );
    let records = trustd::audit::read_records(&lab.paths().audit_dir()).expect("audit");
    // The stop is the last transition; only the announcement of the checkpoint signed at
    // stop (which covers it) follows.
    let last = records
        .iter()
        .rev()
        .find(|r| r.kind != "audit.checkpoint")
        .expect("records");
    assert_eq!(last.kind, "trustd.stop");
    assert!(
        last.reason
            .as_deref()
            .unwrap_or("")
            .contains("bus connection was lost")
    );
}

/// A user calling a denied method in a loop is refused every time, but cannot make the log
/// grow by a record per call: 20 a minute are recorded one by one, the rest as one count.
#[test]
fn a_flood_of_denied_calls_is_refused_and_recorded_as_a_count() {
    if !can_run(TOOLS) {
        return;
    }
    let (lab, mut daemon) = start("fl", lab_policy("direct"), BusPolicy::Open);
    let addr = daemon.bus.address.clone();
    let calls: Vec<String> = (0..60).map(|_| "Policy.ActivePolicy".to_owned()).collect();
    let answers = buscall(&IDENTITIES[1], &addr, &calls);
    assert!(
        answers
            .iter()
            .all(|a| a["error"] == json!("org.enigm.Trust1.Error.AccessDenied")),
        "every call is refused"
    );
    assert!(daemon.terminate().success());
    let records = trustd::audit::read_records(&lab.paths().audit_dir()).expect("audit");
    let denied: Vec<&trustd::audit::Record> = records
        .iter()
        .filter(|r| r.kind == "authz.denied" && r.actor.uid == Some(7))
        .collect();
    assert_eq!(denied.len(), 21, "20 one by one and one count");
    let summary = denied
        .last()
        .and_then(|r| r.reason.clone())
        .unwrap_or_default();
    assert!(
        summary.starts_with("40 further denied calls of uid 7"),
        "{summary}"
    );
}
