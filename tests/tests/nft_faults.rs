//! `nft` missing, hung, failing or killed while the real daemon runs in a network namespace
//! the test creates and deletes, serving on a private bus.
//!
//! trustd is started with `--nft` naming a small script that passes through to the real
//! `nft` until the test switches it to hang (ignoring SIGTERM), exit 1, kill itself, or
//! disappear. Each time a root call that must enforce (privacy mode) gets an error answer
//! within the deadline plus a margin, the policy table in the namespace's kernel is the one
//! that was there before (listed with the real nft), the audit log has the failure naming
//! the child, posture names it, no child of trustd is left behind, and once nft works again
//! enforcement comes back by itself. Finally SIGTERM stops trustd promptly while an nft
//! hangs, and nothing it started survives it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use tests::bus::{Bus, BusPolicy};
use tests::lab::{Lab, can_run, lab_policy, wait_ready};
use trustd::audit::{Outcome, read_records};
use trustd::dbus::client::Client;

const TOOLS: &[&str] = &["ip", "nft", "dbus-daemon"];
/// trustd.json's `nft_timeout_ms` for this test.
const DEADLINE: Duration = Duration::from_millis(1500);
/// What a call may take beyond the deadline (the kill, the reap, the audit records).
const MARGIN: Duration = Duration::from_secs(3);

/// The injected `nft`: the real one unless `mode` (next to it) says otherwise. A hung one
/// records its pid (its process group: the `sleep` runs in it) in `pids`.
const SCRIPT: &str = r#"#!/bin/sh
dir=$(dirname "$0")
case "$(cat "$dir/mode" 2>/dev/null)" in
  hang) trap '' TERM; echo $$ >> "$dir/pids"; sleep 1000; sleep 1000 ;;
  fail) echo "Error: injected failure" >&2; exit 1 ;;
  die) kill -9 $$ ;;
  *) exec nft "$@" ;;
esac
"#;

/// The policy table as the namespace's kernel holds it (real nft), without handles.
fn policy_table(lab: &Lab) -> String {
    let out = Command::new("ip")
        .args([
            "netns", "exec", &lab.dev, "nft", "-j", "list", "table", "inet",
        ])
        .arg(trustd::netfilter::TABLE)
        .output()
        .expect("nft");
    assert!(
        out.status.success(),
        "the policy table is gone from the kernel"
    );
    let listing: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    trustd::netfilter::listing_digest(&listing)
}

/// Live (not zombie) processes whose parent is `ppid` or whose process group is one of
/// `groups`, and which have run longer than the deadline and a second: children trustd
/// left behind (one within its deadline is still legitimately running).
fn leftovers(ppid: u32, groups: &[u32]) -> Vec<String> {
    // SAFETY: sysconf takes an integer and has no other effect.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .expect("uptime")
        .split_whitespace()
        .next()
        .and_then(|u| u.parse().ok())
        .expect("uptime");
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("proc").flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(i) = stat.rfind(')') else { continue };
        let f: Vec<&str> = stat[i + 1..].split_whitespace().collect();
        let (state, parent, pgrp) = (f[0], f[1].parse().unwrap_or(0), f[2].parse().unwrap_or(0));
        // Field 22 of the stat line (the 20th after the command): start time in ticks.
        let age = uptime - f[19].parse::<f64>().unwrap_or(0.0) / hz;
        if state != "Z"
            && (parent == ppid || groups.contains(&pgrp))
            && age > (DEADLINE + Duration::from_secs(1)).as_secs_f64()
        {
            out.push(format!("{} running for {age:.1} s", &stat[..=i]));
        }
    }
    out
}

fn hung_pids(dir: &Path) -> Vec<u32> {
    std::fs::read_to_string(dir.join("pids"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

async fn reasons(c: &Client) -> String {
    c.posture_property("Reasons")
        .await
        .expect("Reasons")
        .to_string()
}

async fn enforcement(c: &Client) -> String {
    c.posture_property("Enforcement")
        .await
        .expect("Enforcement")
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Wait (10 s at most) until trustd reports the policy enforced again.
async fn wait_enforced(c: &Client) {
    let start = Instant::now();
    while enforcement(c).await != "enforced" {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "enforcement did not come back once nft worked again: {}",
            reasons(c).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn a_missing_hung_failing_or_killed_nft_never_blocks_trustd_nor_removes_the_ruleset() {
    if !can_run(TOOLS) {
        return;
    }
    let mut lab = Lab::new("nf", false);
    let b = lab.sign(lab_policy("direct"));
    lab.load(&b);
    std::fs::write(
        lab.paths().config_file(),
        json!({"nft_timeout_ms": DEADLINE.as_millis() as u64}).to_string(),
    )
    .expect("trustd.json");
    let tools = tempfile::tempdir().expect("tempdir");
    let nft: PathBuf = tools.path().join("nft");
    std::fs::write(&nft, SCRIPT).expect("script");
    std::fs::set_permissions(&nft, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let mode = |m: &str| std::fs::write(tools.path().join("mode"), m).expect("mode");
    mode("ok");

    let nft_arg = nft.display().to_string();
    let mut daemon = lab.run_daemon_with(
        Bus::start(BusPolicy::Shipped, ""),
        500,
        &["--nft", &nft_arg],
    );
    wait_ready(&daemon.bus.address);
    let rt = tests::rt();
    let client = rt
        .block_on(Client::connect(Some(&daemon.bus.address)))
        .expect("client");
    rt.block_on(wait_enforced(&client));
    let mut before = policy_table(&lab);

    // (mode, what the audit record and posture say about it)
    let cases = [
        ("hang", "did not finish within its deadline of 1500 ms"),
        ("fail", "exited with 1: Error: injected failure"),
        ("die", "killed by signal 9 (SIGKILL)"),
        ("missing", "could not be started: No such file or directory"),
    ];
    let mut privacy = false;
    for (m, says) in cases {
        let seen = read_records(&lab.paths().audit_dir()).expect("audit").len();
        if m == "missing" {
            std::fs::rename(&nft, tools.path().join("nft.away")).expect("hide nft");
        } else {
            mode(m);
        }
        privacy = !privacy;
        let start = Instant::now();
        let r = rt.block_on(client.set_privacy_mode(privacy));
        let took = start.elapsed();
        let err = r
            .expect_err("enforcing with a broken nft must fail")
            .to_string();
        eprintln!("{m}: answered in {took:?}: {err}");
        assert!(
            took < DEADLINE + MARGIN,
            "{m}: the call took {took:?} (deadline {DEADLINE:?})"
        );
        assert!(
            err.contains(&nft_arg),
            "{m}: the error names the child: {err}"
        );
        assert!(
            err.contains("stays"),
            "{m}: the error says what was kept: {err}"
        );
        // The kernel still holds what it held.
        assert_eq!(policy_table(&lab), before, "{m}: the policy table changed");
        let records = read_records(&lab.paths().audit_dir()).expect("audit");
        let failed: Vec<String> = records[seen..]
            .iter()
            .filter(|r| r.kind == "network.apply" && r.outcome == Outcome::Error)
            .filter_map(|r| r.reason.clone())
            .collect();
        assert!(
            failed
                .iter()
                .any(|r| r.contains(says) && r.contains(&nft_arg)),
            "{m}: no network.apply record saying {says:?}: {failed:#?}"
        );
        assert!(
            failed
                .iter()
                .any(|r| r.contains("the ruleset in the kernel stays")),
            "{m}: no record saying what was kept: {failed:#?}"
        );
        let posture = rt.block_on(reasons(&client));
        assert!(
            posture.contains(says),
            "{m}: posture does not name the failure: {posture}"
        );
        assert_eq!(
            rt.block_on(client.posture_property("Level"))
                .expect("Level")
                .as_str(),
            Some("untrusted"),
            "{m}"
        );
        let left = leftovers(daemon.id(), &hung_pids(tools.path()));
        assert!(left.is_empty(), "{m}: processes left behind: {left:?}");
        // nft works again: enforcement comes back without a call.
        if m == "missing" {
            std::fs::rename(tools.path().join("nft.away"), &nft).expect("restore nft");
        }
        mode("ok");
        rt.block_on(wait_enforced(&client));
        // The retry put the state asked for (privacy on or off) in force.
        assert_ne!(policy_table(&lab), before, "{m}: the retry changed nothing");
        before = policy_table(&lab);
        assert!(
            !rt.block_on(reasons(&client)).contains(says),
            "{m}: posture still names the failure after a successful apply"
        );
    }
    let records = read_records(&lab.paths().audit_dir()).expect("audit");
    assert!(
        records
            .iter()
            .any(|r| r.kind == "network.check" && r.outcome == Outcome::Error),
        "the failed read-backs of the checks are recorded"
    );

    // SIGTERM while an nft hangs: trustd stops within the deadline and a little, and leaves
    // nothing running.
    let hung = hung_pids(tools.path()).len();
    mode("hang");
    let address = daemon.bus.address.clone();
    let call = std::thread::spawn(move || {
        let rt = tests::rt();
        rt.block_on(async {
            let c = Client::connect(Some(&address)).await?;
            c.set_privacy_mode(!privacy).await
        })
    });
    let start = Instant::now();
    while hung_pids(tools.path()).len() <= hung {
        assert!(start.elapsed() < Duration::from_secs(5), "no nft hung");
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = daemon.id();
    let start = Instant::now();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill")
            .success()
    );
    let status = daemon.wait().expect("wait");
    let took = start.elapsed();
    eprintln!("stopped {took:?} after SIGTERM: {status}");
    assert!(
        took < DEADLINE + MARGIN,
        "trustd took {took:?} to stop after SIGTERM"
    );
    assert!(status.success(), "trustd exited with {status}");
    let _ = call.join();
    std::thread::sleep(Duration::from_millis(200));
    let left = leftovers(pid, &hung_pids(tools.path()));
    assert!(left.is_empty(), "processes left behind: {left:?}");
    assert_eq!(policy_table(&lab), before, "the policy table changed");
    let records = read_records(&lab.paths().audit_dir()).expect("audit");
    assert!(
        records
            .iter()
            .rev()
            .take(3)
            .any(|r| r.kind == "trustd.stop"),
        "the stop is recorded"
    );
}

#[test]
fn trustd_started_without_nft_serves_its_posture_and_keeps_the_ruleset_loaded() {
    if !can_run(TOOLS) {
        return;
    }
    let mut lab = Lab::new("nm", false);
    // Early boot's ruleset, put there with the real nft.
    lab.enforce(lab_policy("direct"));
    let before = policy_table(&lab);
    let missing = lab.prefix.path().join("no-such-nft");
    let missing_arg = missing.display().to_string();
    let mut daemon = lab.run_daemon_with(
        Bus::start(BusPolicy::Shipped, ""),
        500,
        &["--nft", &missing_arg],
    );
    wait_ready(&daemon.bus.address);
    let rt = tests::rt();
    let client = rt
        .block_on(Client::connect(Some(&daemon.bus.address)))
        .expect("client");
    assert_eq!(rt.block_on(enforcement(&client)), "failed");
    let posture = rt.block_on(reasons(&client));
    assert!(
        posture.contains(&format!(
            "{missing_arg} could not be started: No such file or directory"
        )),
        "{posture}"
    );
    let records = read_records(&lab.paths().audit_dir()).expect("audit");
    assert!(
        records.iter().any(|r| r.kind == "network.apply"
            && r.outcome == Outcome::Error
            && r.reason
                .as_deref()
                .is_some_and(|w| w.contains(&missing_arg))),
        "the failed apply is recorded"
    );
    // Checks keep going and the daemon keeps serving; the ruleset stays.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(policy_table(&lab), before);
    let start = Instant::now();
    let status = daemon.terminate();
    assert!(status.success(), "{status}");
    assert!(start.elapsed() < Duration::from_secs(3));
}
