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

/// An executable script `body` in a new temporary directory (kept alive by the returned guard).
fn script(body: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("nft");
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("script");
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    (dir, path)
}

/// An `nft` that prints without bound (a broken or hostile binary, a listing gone wrong) is
/// read whole into trustd's memory: the deadline bounds the time, nothing bounds the bytes.
/// Here it prints 256 MiB (the unit's whole `MemoryMax=`) within its deadline, and trustd's
/// own memory grows by as much: in the service it is trustd that the OOM killer then kills,
/// not the `nft` child (SECURITY.md: "If it kills an `nft` child, that apply fails"). A
/// listing trustd reads back (a table, two chains) has a size it can bound well below that.
#[test]
fn an_nft_that_prints_without_bound_does_not_grow_trustds_memory_with_it() {
    let (_dir, nft) = script("head -c 268435456 /dev/zero");
    let mut backend =
        trustd::netfilter::NftBackend::new(&nft).with_deadline(Duration::from_secs(30));
    let before = trustd::sys::peak_rss_kib().expect("VmHWM");
    let r = backend.list_table(trustd::netfilter::TABLE);
    let after = trustd::sys::peak_rss_kib().expect("VmHWM");
    let grew = after.saturating_sub(before) / 1024;
    eprintln!(
        "peak RSS {before} KiB -> {after} KiB (+{grew} MiB); result {}",
        match &r {
            Ok(Some(s)) => format!("a listing of {} bytes", s.len()),
            Ok(None) => "no table".into(),
            Err(e) => e.to_string(),
        }
    );
    assert!(
        grew < 64,
        "reading one nft listing grew this process's peak RSS by {grew} MiB"
    );
}

/// A helper an `nft` leaves behind in a session of its own (`setsid`) escapes the kill of the
/// child's process group, and PR_SET_PDEATHSIG is not inherited: it outlives the deadline and
/// trustd, against "at the deadline its whole process group is killed ... and leaves no child
/// behind". It also keeps the pipes open, so an `nft` that itself exited 0 at once is reported
/// as hung.
#[test]
fn a_helper_that_leaves_nfts_process_group_is_not_left_running() {
    let (dir, nft) = script(
        "setsid sh -c 'echo $$ > \"$(dirname \"$0\")/helper\"; exec sleep 1000' \"$0\" &\nsleep 0.2\nexit 0",
    );
    let mut backend =
        trustd::netfilter::NftBackend::new(&nft).with_deadline(Duration::from_millis(1000));
    let r = backend.apply(r#"{"nftables": []}"#);
    std::thread::sleep(Duration::from_millis(300));
    let helper: u32 = std::fs::read_to_string(dir.path().join("helper"))
        .expect("the helper wrote its pid")
        .trim()
        .parse()
        .expect("pid");
    let alive = std::fs::read_to_string(format!("/proc/{helper}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    });
    if alive {
        // SAFETY: kill takes integers; the pid is the helper this test's script started.
        unsafe {
            libc::kill(helper as i32, libc::SIGKILL);
        }
    }
    eprintln!("apply: {r:?}");
    assert!(
        !alive,
        "the helper (pid {helper}) is still running after the apply returned ({r:?})"
    );
    assert!(r.is_ok(), "nft exited 0 at once, yet: {r:?}");
}
