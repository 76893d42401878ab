//! The wall clock and the freshness of installed inputs, in-process with an injected clock
//! (no root: the recording fake backend stands for the kernel).
//!
//! What is in force never changes because of the clock alone: a clock far ahead (2100), far
//! behind (1970) or jumping leaves the policy and the blocklists installed and enforced;
//! posture says what is stale and whether the clock can be believed; new inputs are judged
//! against the clock with refusals that say what it reads; each transition is audited once.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use trustd::audit::{Actor, read_records, verify_dir};
use trustd::daemon::{
    Call, CallError, Caller, Command, Device, Engine, Heartbeat, RoleGroups, queues,
};
use trustd::freshness::build_time;
use trustd::netfilter::RecordingBackend;
use trustd::posture::{Level, Posture};
use trustd::timefmt::Timestamp;

/// A time after this build and after the inputs below were issued: a plausible clock.
fn plausible() -> Timestamp {
    build_time().plus_secs(3600)
}

/// Inputs issued a day before this build, valid a year after it (so that the tests hold
/// whenever they are built).
fn dated(mut v: Value, serial: u64) -> Value {
    v["serial"] = json!(serial);
    v["issued_at"] = json!(build_time().plus_secs(-86_400).to_string());
    v["expires_at"] = json!(build_time().plus_secs(365 * 86_400).to_string());
    v
}

fn signed_intel(serial: u64) -> Vec<u8> {
    sign(INTEL, &dated(intel(0), serial), &[&key(5)])
}

fn freshness_reasons(p: &Posture) -> Vec<&String> {
    p.reasons
        .iter()
        .filter(|r| r.contains("stale") || r.contains("clock"))
        .collect()
}

fn kinds(dev: &TestDevice, kind: &str) -> Vec<String> {
    read_records(&dev.paths.audit_dir())
        .expect("audit")
        .into_iter()
        .filter(|r| r.kind == kind)
        .map(|r| r.reason.unwrap_or_default())
        .collect()
}

/// The engine's clock for [`the_engine_keeps_enforcing_across_clock_jumps_and_says_so`]
/// (Unix seconds); only that test reads it.
static CLOCK: AtomicI64 = AtomicI64::new(0);

fn injected_clock() -> Timestamp {
    Timestamp::from_unix(CLOCK.load(Ordering::SeqCst)).expect("clock")
}

fn set_clock(t: Timestamp) {
    CLOCK.store(t.unix(), Ordering::SeqCst);
}

fn wait_for(
    rx: &mut tokio::sync::watch::Receiver<Posture>,
    what: &str,
    ok: impl Fn(&Posture) -> bool,
) -> Posture {
    let start = Instant::now();
    loop {
        let p = rx.borrow_and_update().clone();
        if ok(&p) {
            return p;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{what}: posture is {p:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn admin() -> Caller {
    Caller {
        uid: 0,
        gids: vec![0],
        pid: Some(4242),
        bus_name: ":1.42".into(),
    }
}

/// Security regression test: a device whose clock jumps (forward past every expiry, back to
/// 1970, forward again) must not drop or loosen what it enforces, and must not accept new
/// inputs by a clock it cannot believe. The engine runs on its own timer with an injected
/// clock; the kernel is the recording fake.
#[test]
fn the_engine_keeps_enforcing_across_clock_jumps_and_says_so() {
    let dev = TestDevice::new();
    let mut d = Device::open(&dev.paths, Actor::this_process()).expect("open");
    let t0 = plausible();
    set_clock(t0);
    d.apply_policy(
        &sign(POLICY, &dated(policy(0), 5), &[&key(2), &key(3)]),
        Actor::this_process(),
        t0,
    )
    .expect("policy");
    d.apply_intel(&signed_intel(7), Actor::this_process(), t0)
        .expect("intel");
    let (engine, mut rx) = Engine::start(
        d,
        RecordingBackend::default(),
        RoleGroups::default(),
        Box::new(|| Ok(RoleGroups::default())),
        injected_clock,
    )
    .expect("start");
    let (tx, q) = queues();
    let heartbeat = Arc::new(Heartbeat::default());
    let runner = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(engine.run(q, Duration::from_millis(20), heartbeat))
    });
    let call = |bytes: Vec<u8>| {
        let (reply, answer) = tokio::sync::oneshot::channel();
        tx.admin
            .blocking_send(Command::Call {
                caller: admin(),
                call: Call::ApplyIntel(bytes, reply),
            })
            .expect("send");
        answer.blocking_recv().expect("answer")
    };

    let first = wait_for(&mut rx, "enforced", |p| p.enforcement == "enforced");
    assert!(freshness_reasons(&first).is_empty(), "{:?}", first.reasons);
    let (ruleset, serial) = (first.ruleset_digest.clone(), first.policy_serial);
    assert_eq!(serial, 5);
    let same_enforcement = |p: &Posture| {
        assert_eq!(p.enforcement, "enforced", "{:?}", p.reasons);
        assert_eq!(p.ruleset_digest, ruleset, "the ruleset in force changed");
        assert_eq!(p.policy_serial, serial, "the policy in force changed");
        assert_eq!(p.network_mode, "direct");
    };

    // Far ahead: everything expired, nothing leaves force.
    set_clock(Timestamp::parse("2100-01-01T00:00:00Z").expect("time"));
    let p = wait_for(&mut rx, "stale at 2100", |p| {
        p.reasons
            .iter()
            .any(|r| r.starts_with("intel feed serial 7 expired at"))
    });
    same_enforcement(&p);
    assert!(p.level >= Level::Degraded);
    assert!(
        p.reasons
            .iter()
            .any(|r| r.starts_with("policy serial 5 expired at")
                && r.contains("still enforced")
                && r.contains("this device's clock reads 2100-01-01T00:00:00Z")),
        "{:?}",
        p.reasons
    );
    let e = call(signed_intel(8)).expect_err("expired by the clock");
    let CallError::Refused(why) = e else {
        panic!("{e:?}")
    };
    assert!(
        why.contains("expired at") && why.contains("this device's clock reads 2100-01-01"),
        "{why}"
    );

    // Far behind: nothing stale any more, but the clock is doubted; new inputs refused.
    set_clock(Timestamp::parse("1970-01-01T00:00:00Z").expect("time"));
    let p = wait_for(&mut rx, "implausible at 1970", |p| {
        p.reasons
            .iter()
            .any(|r| r.starts_with("the clock is implausible: it reads 1970-01-01T00:00:00Z"))
    });
    same_enforcement(&p);
    assert!(
        !p.reasons.iter().any(|r| r.contains("stale")),
        "{:?}",
        p.reasons
    );
    let e = call(signed_intel(8)).expect_err("issued after the clock");
    let CallError::Refused(why) = e else {
        panic!("{e:?}")
    };
    assert!(
        why.contains("later than this device's clock reads (1970-01-01T00:00:00Z)"),
        "{why}"
    );

    // Back to a good clock: the new input is accepted, posture is clean again.
    set_clock(t0.plus_secs(60));
    let p = wait_for(&mut rx, "plausible again", |p| {
        freshness_reasons(p).is_empty()
    });
    same_enforcement(&p);
    call(signed_intel(8)).expect("a good clock judges the input fresh");

    std::thread::sleep(Duration::from_millis(100));
    tx.control
        .blocking_send(Command::Stop("test"))
        .expect("stop");
    runner.join().expect("join").expect("engine");

    // Each transition once, however many ticks saw it.
    assert_eq!(kinds(&dev, "clock.jump").len(), 3);
    assert_eq!(kinds(&dev, "intel.stale").len(), 1);
    assert_eq!(kinds(&dev, "policy.stale").len(), 1);
    assert_eq!(kinds(&dev, "root.stale").len(), 1);
    let doubts = kinds(&dev, "clock.implausible");
    assert_eq!(doubts.len(), 2, "{doubts:?}");
    assert!(
        doubts[0].contains("reads 1970-01-01T00:00:00Z"),
        "{doubts:?}"
    );
    let refusals = kinds(&dev, "intel.apply");
    assert!(
        refusals.iter().any(|r| r.contains("clock reads 2100"))
            && refusals.iter().any(|r| r.contains("clock reads (1970")),
        "{refusals:?}"
    );
    let report = verify_dir(&dev.paths.audit_dir()).expect("verify");
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

/// Security regression test: a device restarted with a wrong clock used to be one load
/// away from dropping an expired input. Reopened at 2100 and at 1970, the device holds and
/// enforces exactly the same policy and blocklists as with a good clock.
#[test]
fn a_restart_with_a_wrong_clock_keeps_every_installed_input_in_force() {
    let dev = TestDevice::new();
    let t0 = plausible();
    let digest = {
        let mut d = Device::open(&dev.paths, Actor::this_process()).expect("open");
        d.apply_policy(
            &sign(POLICY, &dated(policy(0), 5), &[&key(2), &key(3)]),
            Actor::this_process(),
            t0,
        )
        .expect("policy");
        d.apply_intel(&signed_intel(7), Actor::this_process(), t0)
            .expect("intel");
        d.enforce(&mut RecordingBackend::default(), Actor::this_process())
            .expect("enforce")
            .digest
    };
    for (when, expect) in [
        ("2100-01-01T00:00:00Z", "policy serial 5 expired at"),
        ("1970-01-01T00:00:00Z", "the clock is implausible"),
    ] {
        let now = Timestamp::parse(when).expect("time");
        let mut d = Device::open(&dev.paths, Actor::this_process()).expect("reopen");
        assert_eq!(d.policy().map(|p| p.payload().serial), Some(5), "{when}");
        assert_eq!(d.intel().map(|i| i.payload().serial), Some(7), "{when}");
        let mut fake = RecordingBackend::default();
        let e = d
            .enforce(&mut fake, Actor::this_process())
            .expect("enforce");
        assert_eq!(e.digest, digest, "{when}: the same ruleset is enforced");
        let p = d.posture(now);
        assert!(
            p.reasons.iter().any(|r| r.starts_with(expect)),
            "{when}: {:?}",
            p.reasons
        );
        assert!(
            !p.reasons.iter().any(|r| r.contains("no valid policy")),
            "{:?}",
            p.reasons
        );
    }
}

/// Security regression test (TUF's freeze attack): an attacker who holds back new intel
/// feeds keeps an old one in force until it expires. With the policy's `max_age`, the feed
/// is stale a day after it was issued: it keeps blocking, posture is degraded naming the
/// feed (serial, digest) and since when, the signed report carries that, and the transition
/// is audited once, without any new input, as time passes.
#[test]
fn a_frozen_feed_past_max_age_lowers_posture_and_shows_in_the_signed_report() {
    let dev = TestDevice::new();
    let mut d = Device::open(&dev.paths, Actor::this_process()).expect("open");
    let issued = build_time().plus_secs(-86_400);
    let mut p = dated(policy(0), 5);
    p["issued_at"] = json!(issued.to_string());
    p["max_age"] = json!({"intel": 3 * 3600});
    d.apply_policy(
        &sign(POLICY, &p, &[&key(2), &key(3)]),
        Actor::this_process(),
        plausible(),
    )
    .expect("policy with max_age");
    let mut feed = dated(intel(0), 7);
    let fed = plausible();
    feed["issued_at"] = json!(fed.to_string());
    let feed = sign(INTEL, &feed, &[&key(5)]);
    let digest = trustd::bundle::sha256_hex(&feed);
    d.apply_intel(&feed, Actor::this_process(), fed)
        .expect("intel");

    d.enforce(&mut RecordingBackend::default(), Actor::this_process())
        .expect("enforce");
    let fresh = fed.plus_secs(2 * 3600);
    assert!(
        d.check_time(fresh, Actor::this_process())
            .expect("check")
            .is_empty()
    );
    assert!(freshness_reasons(&d.posture(fresh)).is_empty());

    let later = fed.plus_secs(4 * 3600);
    // Four hours of wall time in no monotonic time is also a jump; the staleness is one record.
    let recorded = d.check_time(later, Actor::this_process()).expect("check");
    assert_eq!(
        recorded
            .iter()
            .filter(|r| r.contains("stale since"))
            .count(),
        1,
        "{recorded:?}"
    );
    let since = fed.plus_secs(3 * 3600);
    let posture = d.posture(later);
    assert_eq!(posture.level.max(Level::Degraded), posture.level);
    let reason = posture
        .reasons
        .iter()
        .find(|r| {
            r.starts_with("intel feed serial 7 is older than the policy's max_age of 10800 s")
        })
        .unwrap_or_else(|| panic!("{:?}", posture.reasons));
    assert!(
        reason.contains(&format!("stale since {since}"))
            && reason.contains(&digest[..16])
            && reason.contains("still enforced"),
        "{reason}"
    );
    // Still in force: the blocklist is compiled from it.
    assert_eq!(d.intel().map(|i| i.payload().serial), Some(7));

    // Once, however often time is looked at.
    assert!(
        d.check_time(later.plus_secs(30), Actor::this_process())
            .expect("again")
            .is_empty()
    );
    assert_eq!(kinds(&dev, "intel.stale").len(), 1);

    // The verifier sees it in the signed report.
    let report = d.report("nonce-12345678", later).expect("report");
    let key = trustd::report::load_or_create_key(&dev.paths)
        .expect("key")
        .0;
    let r =
        trustd::report::verify_report(report.as_bytes(), "nonce-12345678", &key.verifying_key())
            .expect("verify report");
    let reasons = r.posture["Reasons"].to_string();
    assert!(
        reasons.contains("intel feed serial 7 is older than"),
        "{reasons}"
    );
    assert_ne!(r.posture["Level"], json!("trusted"), "{:?}", r.posture);
}
