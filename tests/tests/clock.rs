//! The real trustd under a wrong wall clock (libfaketime preloaded: 2100, 1970, and a clock
//! that jumps while it runs), and a frozen intel feed, against real nftables in a lab
//! namespace and a private bus: what is in force stays enforced (packets at the peer, the
//! table in the kernel), posture names the clock or the stale input, new inputs are judged
//! against the clock, and the audit log verifies though its wall times go backwards.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tests::bus::{Bus, BusPolicy};
use tests::lab::{Daemon, Lab, can_run, lab_policy, wait_ready};
use tests::trustctl;
use trustd::dbus::client::Client;
use trustd::timefmt::Timestamp;

const TOOLS: &[&str] = &["ip", "nft", "dbus-daemon", "faketime"];

/// libfaketime's multi-threaded variant (trustd runs threads), from Debian's `faketime`
/// package (`/usr/lib/<multiarch>/faketime/`).
fn libfaketime() -> PathBuf {
    let mut dirs = vec![PathBuf::from("/usr/lib/faketime")];
    if let Ok(entries) = std::fs::read_dir("/usr/lib") {
        dirs.extend(entries.flatten().map(|e| e.path().join("faketime")));
    }
    dirs.into_iter()
        .map(|d| d.join("libfaketimeMT.so.1"))
        .find(|p| p.exists())
        .expect("libfaketimeMT.so.1 (Debian package faketime)")
}

/// trustd on a fresh private bus with the wall clock as `faketime` says (`@2100-01-01
/// 00:00:00`; or a file to read it from on every call, so that it can jump). The monotonic
/// clock stays real, as the kernel's does when the wall clock is set.
fn run_faked(lab: &Lab, clock: Result<&str, &Path>) -> Daemon {
    let lib = libfaketime();
    let mut env: Vec<(&str, &OsStr)> = vec![
        ("LD_PRELOAD", lib.as_os_str()),
        ("FAKETIME_DONT_FAKE_MONOTONIC", OsStr::new("1")),
        // Absolute faked times are read in the local zone.
        ("TZ", OsStr::new("UTC")),
    ];
    match clock {
        Ok(at) => env.push(("FAKETIME", OsStr::new(at))),
        Err(file) => {
            env.push(("FAKETIME_TIMESTAMP_FILE", file.as_os_str()));
            env.push(("FAKETIME_NO_CACHE", OsStr::new("1")));
        }
    }
    let d = lab.run_daemon_env(Bus::start(BusPolicy::Shipped, ""), 200, &[], &env);
    wait_ready(&d.bus.address);
    d
}

/// Set the clock file atomically (libfaketime reads it on every call).
fn set_clock_file(file: &Path, spec: &str) {
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, format!("{spec}\n")).expect("write clock");
    std::fs::rename(&tmp, file).expect("rename clock");
}

fn reasons(c: &Client) -> Vec<String> {
    let v = rt_block(c.posture_property("Reasons"));
    serde_json::from_value(v).expect("reasons")
}

/// One runtime for every bus call of this file (a client lives as long as its runtime).
fn rt() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
    })
}

fn rt_block<T>(f: impl std::future::Future<Output = zbus::Result<T>>) -> T {
    rt().block_on(f).expect("bus call")
}

fn wait_reason(c: &Client, what: &str, ok: impl Fn(&[String]) -> bool) -> Vec<String> {
    let start = Instant::now();
    loop {
        let r = reasons(c);
        if ok(&r) {
            return r;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "{what}: reasons {r:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn refusal(e: &zbus::Error) -> String {
    match e {
        zbus::Error::MethodError(name, msg, _) => {
            assert_eq!(name.as_str(), "org.enigm.Trust1.Error.Refused", "{msg:?}");
            msg.clone().unwrap_or_default()
        }
        other => panic!("expected a refusal, got {other}"),
    }
}

/// What is in force, checked where a user meets it: the policy table in the kernel, an
/// allowed flow that reaches the peer, one not allowed that does not, and posture.
fn assert_policy_enforced(lab: &Lab, c: &Client, serial: u64, when: &str) {
    let table = lab.dev_sh("nft list table inet trustd");
    assert!(table.contains("10.99.0.2"), "{when}: table {table}");
    assert!(lab.probe("10.99.0.2:443/tcp", None), "{when}: allowed flow");
    assert!(
        !lab.probe("10.99.0.2:80/tcp", None),
        "{when}: flow not allowed"
    );
    let enforcement = rt_block(c.posture_property("Enforcement"));
    assert_eq!(enforcement, json!("enforced"), "{when}");
    let got = rt_block(c.posture_property("PolicySerial"));
    assert_eq!(got, json!(serial), "{when}");
    assert_eq!(
        rt_block(c.posture_property("NetworkMode")),
        json!("direct"),
        "{when}"
    );
}

/// Security regression test: a device whose clock is far ahead, far behind, or jumps while
/// trustd runs must keep enforcing the installed policy (expiry never opens anything and
/// never drops an input), must not take new inputs by that clock, and must say so; the
/// audit log must verify although its wall times go backwards between runs.
#[test]
fn a_wrong_or_jumping_clock_changes_nothing_in_force_and_posture_names_it() {
    if !can_run(TOOLS) {
        return;
    }
    let mut lab = Lab::new("clk", false);
    let installed = lab.sign(lab_policy("direct"));
    lab.load(&installed);
    let work = lab.prefix.path().to_owned();
    let prefix = work.display().to_string();

    // Far ahead: the policy and the trust root are past their expiry.
    let mut d = run_faked(&lab, Ok("@2100-01-01 00:00:00"));
    let c = rt_block(Client::connect(Some(&d.bus.address)));
    assert_policy_enforced(&lab, &c, 1, "2100");
    let r = reasons(&c);
    assert!(
        r.iter().any(
            |r| r.starts_with("policy serial 1 expired at 2036-01-01T00:00:00Z")
                && r.contains("still enforced")
                && r.contains("this device's clock reads 2100-01-01")
        ),
        "{r:?}"
    );
    let newer = std::fs::read(lab.sign(lab_policy("direct"))).expect("bundle");
    let e = rt()
        .block_on(c.apply_bundle(&newer))
        .expect_err("expired by the clock");
    let why = refusal(&e);
    assert!(
        why.contains("expired at 2036-01-01T00:00:00Z; this device's clock reads 2100-01-01"),
        "{why}"
    );
    assert_policy_enforced(&lab, &c, 1, "2100, after the refusal");
    let (_, problems) = rt_block(c.audit_verify());
    assert!(problems.is_empty(), "{problems:?}");
    assert!(d.terminate().success());

    // Far behind: nothing looks expired, but the clock contradicts the installed inputs.
    let mut d = run_faked(&lab, Ok("@1970-01-02 00:00:00"));
    let c = rt_block(Client::connect(Some(&d.bus.address)));
    assert_policy_enforced(&lab, &c, 1, "1970");
    let r = reasons(&c);
    assert!(
        r.iter()
            .any(|r| r.starts_with("the clock is implausible: it reads 1970-01-02")),
        "{r:?}"
    );
    let newer = std::fs::read(lab.sign(lab_policy("direct"))).expect("bundle");
    let why = refusal(
        &rt()
            .block_on(c.apply_bundle(&newer))
            .expect_err("clock behind"),
    );
    assert!(
        why.contains("later than this device's clock reads (1970-01-02"),
        "{why}"
    );
    // Records written at 1970 follow records written at 2100: the chain still verifies.
    let (_, problems) = rt_block(c.audit_verify());
    assert!(problems.is_empty(), "{problems:?}");
    assert!(d.terminate().success());

    // A clock that jumps while trustd runs.
    let file = work.join("faketime.rc");
    set_clock_file(&file, "+0");
    let mut d = run_faked(&lab, Err(&file));
    let c = rt_block(Client::connect(Some(&d.bus.address)));
    assert_policy_enforced(&lab, &c, 1, "real time");
    assert!(
        !reasons(&c).iter().any(|r| r.contains("clock")),
        "{:?}",
        reasons(&c)
    );
    set_clock_file(&file, "@2100-01-01 00:00:00");
    wait_reason(&c, "the jump to 2100 seen without a new input", |r| {
        r.iter()
            .any(|r| r.contains("this device's clock reads 2100-01-01"))
    });
    assert_policy_enforced(&lab, &c, 1, "after the jump to 2100");
    set_clock_file(&file, "+0");
    wait_reason(&c, "back to real time", |r| {
        !r.iter().any(|r| r.contains("clock"))
    });
    let newer = std::fs::read(lab.sign(lab_policy("direct"))).expect("bundle");
    let applied = rt().block_on(c.apply_bundle(&newer));
    assert!(
        applied.is_ok(),
        "a good clock takes a good input: {applied:?}"
    );
    let all = rt_block(c.audit_tail(500));
    // This run's records: after the last stop of an earlier run.
    let from = all
        .iter()
        .rposition(|l| l.contains("\"trustd.stop\""))
        .map_or(0, |i| i + 1);
    let tail = &all[from..];
    let jumps = tail.iter().filter(|l| l.contains("\"clock.jump\"")).count();
    assert_eq!(jumps, 2, "{tail:#?}");
    assert_eq!(
        tail.iter()
            .filter(|l| l.contains("\"policy.stale\""))
            .count(),
        1,
        "one record for the policy turning stale"
    );
    assert!(d.terminate().success());

    // Offline, with the real clock: every record of the three runs verifies.
    let r = trustctl(&work, &["audit", "verify", "--prefix", &prefix]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let records = trustd::audit::read_records(&lab.paths().audit_dir()).expect("records");
    let years: Vec<&str> = records.iter().map(|r| &r.time[..4]).collect();
    assert!(
        years.contains(&"2100") && years.contains(&"1970"),
        "the faked clocks are in the records' wall times: {years:?}"
    );
}

fn intel_feed(issued: Timestamp, expires: Timestamp) -> Value {
    json!({
        "schema": "enigm.intel/v1", "serial": 0,
        "issued_at": issued.to_string(), "expires_at": expires.to_string(),
        "categories": {"malware": ["10.99.0.3"]}
    })
}

/// Security regression test (TUF's freeze attack): an attacker who holds back new intel
/// feeds leaves an old one in force. With the policy's `max_age`, the running daemon turns
/// the feed stale as time passes, with no new input: the feed keeps blocking, posture is
/// degraded naming the feed and since when, the transition is audited once, and a verifier
/// sees the reason in the signed posture report.
#[test]
fn a_frozen_intel_feed_turns_stale_in_posture_and_the_signed_report() {
    if !can_run(&["ip", "nft", "dbus-daemon"]) {
        return;
    }
    let mut lab = Lab::new("frz", false);
    let mut policy = lab_policy("direct");
    policy["max_age"] = json!({"intel": 60});
    let b = lab.sign(policy);
    lab.load(&b);
    let mut d = lab.run_daemon_on(BusPolicy::Shipped, 200);
    wait_ready(&d.bus.address);
    let c = rt_block(Client::connect(Some(&d.bus.address)));

    // Issued 50 s ago: fresh for about 10 s more.
    let now = Timestamp::now();
    let file = lab.sign_intel(intel_feed(now.plus_secs(-50), now.plus_secs(3600)));
    // The lab names the file for the serial it gave (intel-N.dsse.json).
    let serial: u64 = file
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| {
            n.strip_prefix("intel-")?
                .strip_suffix(".dsse.json")?
                .parse()
                .ok()
        })
        .expect("serial in the file name");
    let feed = std::fs::read(file).expect("feed");
    let digest = trustd::bundle::sha256_hex(&feed);
    rt_block(c.apply_intel_feed(&feed));
    let stale_prefix =
        format!("intel feed serial {serial} is older than the policy's max_age of 60 s");
    assert!(
        !reasons(&c).iter().any(|r| r.starts_with(&stale_prefix)),
        "{:?}",
        reasons(&c)
    );

    let r = wait_reason(&c, "the feed turns stale without a new input", |r| {
        r.iter().any(|r| r.starts_with(&stale_prefix))
    });
    let reason = r
        .iter()
        .find(|r| r.starts_with(&stale_prefix))
        .expect("reason");
    let since = now.plus_secs(10).to_string();
    assert!(
        reason.contains(&format!("stale since {since}"))
            && reason.contains(&digest[..16])
            && reason.contains("still enforced"),
        "{reason}"
    );
    assert_ne!(rt_block(c.posture_property("Level")), json!("trusted"));
    // Still blocking.
    let intel = lab.dev_sh("nft list table inet trustd_intel");
    assert!(intel.contains("10.99.0.3"), "{intel}");

    // The signed report carries it.
    let report = rt_block(c.report("nonce-frozen-feed"));
    let key = trustd::bundle::PublicKeyFile::load(&lab.paths().device_pub()).expect("key");
    let rep = trustd::report::verify_report(report.as_bytes(), "nonce-frozen-feed", &key)
        .expect("report verifies");
    let signed: Vec<String> =
        serde_json::from_value(rep.posture["Reasons"].clone()).expect("reasons");
    assert!(
        signed.iter().any(|r| r.starts_with(&stale_prefix)),
        "{signed:?}"
    );
    // And so does the verifier's tool.
    let work = lab.prefix.path().to_owned();
    std::fs::write(work.join("report.json"), &report).expect("write report");
    let key_file = lab.paths().device_pub().display().to_string();
    let r = trustctl(
        &work,
        &[
            "posture",
            "verify",
            "report.json",
            "--nonce",
            "nonce-frozen-feed",
            "--key",
            &key_file,
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains(&format!("reason: {stale_prefix}")),
        "{}",
        r.stdout
    );

    // Once, however many ticks saw it.
    std::thread::sleep(Duration::from_millis(600));
    let tail = rt_block(c.audit_tail(100));
    let stale: Vec<&String> = tail
        .iter()
        .filter(|l| l.contains("\"intel.stale\""))
        .collect();
    assert_eq!(stale.len(), 1, "{tail:#?}");
    assert!(stale[0].contains(&digest), "{}", stale[0]);
    assert!(d.terminate().success());
}
