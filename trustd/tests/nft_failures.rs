//! What the device does when `nft` stops answering (no root: a fake backend that hangs as
//! far as its caller can tell, i.e. returns the deadline error the real backend returns).
//!
//! A failing read-back is not drift: it is recorded once per streak, shown in posture, and
//! nothing is re-applied with an nft that does not answer. A failed enforcement is tried
//! again by the checks (with a growing pause) and the first success clears posture.

mod common;

use std::time::Duration;

use common::*;
use trustd::audit::{Actor, Outcome, read_records};
use trustd::daemon::Device;
use trustd::netfilter::{Backend, NftError, RecordingBackend};
use trustd::sys::child::ChildError;

/// The recording fake, except that while `broken` every nft run fails as a hung one does,
/// and while `applies_hang` every apply does (after the fake's own injected refusal, if
/// one is pending).
#[derive(Default)]
struct Flaky {
    inner: RecordingBackend,
    broken: bool,
    applies_hang: bool,
}

fn hung() -> NftError {
    NftError::Child(ChildError::Timeout {
        program: "/usr/sbin/nft".into(),
        deadline: Duration::from_millis(1500),
    })
}

impl Flaky {
    fn check(&self) -> Result<(), NftError> {
        if self.broken { Err(hung()) } else { Ok(()) }
    }
}

impl Backend for Flaky {
    fn apply(&mut self, script: &str) -> Result<(), NftError> {
        self.check()?;
        if self.applies_hang && !self.inner.fail_next {
            return Err(hung());
        }
        self.inner.apply(script)
    }
    fn list_table(&mut self, name: &str) -> Result<Option<String>, NftError> {
        self.check()?;
        self.inner.list_table(name)
    }
    fn list_chain(&mut self, table: &str, chain: &str) -> Result<Option<String>, NftError> {
        self.check()?;
        self.inner.list_chain(table, chain)
    }
}

fn kinds(dev: &TestDevice, kind: &str) -> Vec<(Outcome, String)> {
    read_records(&dev.paths.audit_dir())
        .expect("audit")
        .into_iter()
        .filter(|r| r.kind == kind)
        .map(|r| (r.outcome, r.reason.unwrap_or_default()))
        .collect()
}

#[test]
fn a_hung_nft_during_checks_is_recorded_once_shown_and_never_taken_for_drift() {
    let dev = TestDevice::new();
    let mut d = Device::open(&dev.paths, Actor::this_process()).expect("open");
    let mut nft = Flaky::default();
    d.enforce(&mut nft, Actor::this_process()).expect("enforce");
    let applied = nft.inner.applied.len();
    nft.broken = true;
    for _ in 0..5 {
        assert_eq!(
            d.check_drift(&mut nft, Actor::this_process())
                .expect("a failing nft does not end the check"),
            None
        );
    }
    let checks = kinds(&dev, "network.check");
    assert_eq!(checks.len(), 1, "once per streak: {checks:?}");
    assert_eq!(checks[0].0, Outcome::Error);
    assert!(
        checks[0]
            .1
            .contains("did not finish within its deadline of 1500 ms")
            && checks[0].1.contains("the ruleset in the kernel stays"),
        "{}",
        checks[0].1
    );
    assert!(kinds(&dev, "network.drift").is_empty(), "not drift");
    let p = d.posture(now());
    assert_eq!(p.level.as_str(), "untrusted");
    assert!(
        p.reasons
            .iter()
            .any(|r| r.starts_with("enforcement not confirmed") && r.contains("1500 ms")),
        "{:?}",
        p.reasons
    );
    // nft answers again: recorded, posture clear, nothing re-applied (the table is intact).
    nft.broken = false;
    assert_eq!(
        d.check_drift(&mut nft, Actor::this_process())
            .expect("check"),
        None
    );
    let checks = kinds(&dev, "network.check");
    assert_eq!(checks.len(), 2);
    assert_eq!(checks[1].0, Outcome::Ok);
    assert_eq!(nft.inner.applied.len(), applied);
    assert!(
        !d.posture(now())
            .reasons
            .iter()
            .any(|r| r.contains("not confirmed"))
    );
}

#[test]
fn a_failed_enforcement_is_retried_by_the_checks_and_a_success_clears_posture() {
    let dev = TestDevice::new();
    let mut d = Device::open(&dev.paths, Actor::this_process()).expect("open");
    let mut nft = Flaky::default();
    d.enforce(&mut nft, Actor::this_process()).expect("enforce");
    // Privacy on; the policy and lockdown both fail.
    d.set_privacy(true, Actor::this_process()).expect("privacy");
    nft.inner.fail_next = true;
    // The policy refused, then the lockdown step hangs: nothing applies.
    nft.applies_hang = true;
    let err = d
        .enforce(&mut nft, Actor::this_process())
        .expect_err("nothing applies");
    nft.applies_hang = false;
    assert!(err.to_string().contains("deadline"), "{err}");
    let p = d.posture(now());
    assert_eq!(p.enforcement, "failed");
    assert!(
        p.reasons
            .iter()
            .any(|r| r.contains("the ruleset already in the kernel stays")),
        "{:?}",
        p.reasons
    );
    // The first check only schedules the retry (1 s later); a check after that retries.
    let applied = nft.inner.applied.len();
    d.check_drift(&mut nft, Actor::this_process())
        .expect("check");
    assert_eq!(nft.inner.applied.len(), applied, "not before its pause");
    std::thread::sleep(Duration::from_millis(1050));
    d.check_drift(&mut nft, Actor::this_process())
        .expect("check");
    assert_eq!(nft.inner.applied.len(), applied + 1, "retried");
    let p = d.posture(now());
    assert_eq!(p.enforcement, "enforced");
    assert!(
        !p.reasons
            .iter()
            .any(|r| r.contains("the ruleset already in the kernel stays")),
        "{:?}",
        p.reasons
    );
    let applies = kinds(&dev, "network.apply");
    assert_eq!(applies.last().map(|a| a.0), Some(Outcome::Ok));
}
