//! Storage faults with the real daemon on a real bus: its state directory and audit log each
//! on a small tmpfs of their own, in a private mount namespace (the host's filesystems are
//! never remounted), filled up (ENOSPC) or covered by a read-only bind mount (EROFS).
//!
//! A change whose record or state cannot be made durable is refused with an error naming
//! the path and the errno, and changes nothing in the kernel; status still answers, posture
//! names the failing store, drift is still repaired; once the storage takes writes again the
//! next change works, the audit log carries one `audit.gap` record counting what could not
//! be written, and `trustctl audit verify` passes.
//!
//! EIO cannot be made real here without a block device (no device-mapper on the test
//! machine): the errno bookkeeping for it is unit-tested in trustd's `storage` module.

use std::path::{Path, PathBuf};

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use tests::bus::{Bus, BusPolicy};
use tests::lab::{Daemon, Lab, can_run, lab_policy, wait_ready};
use tests::{KillOnDrop, Run, bin, trustctl};

const TOOLS: &[&str] = &["ip", "nft", "dbus-daemon", "unshare", "nsenter", "mount"];

/// The daemon with its state and audit directories on tmpfs in its own mount namespace.
struct Lab2 {
    lab: Lab,
    daemon: Daemon,
    state: PathBuf,
    audit: PathBuf,
}

impl Lab2 {
    fn start(tag: &str) -> Self {
        let mut lab = Lab::new(tag, false);
        let b = lab.sign(lab_policy("direct"));
        lab.load(&b);
        std::fs::write(
            lab.paths().config_file(),
            json!({
                "admin_group": tests::bus::ADMIN_GROUP,
                "setup_group": tests::bus::SETUP_GROUP,
                // Small segments: a new one is started (and needs space) every few records.
                "audit_segment_bytes": 16384
            })
            .to_string(),
        )
        .expect("trustd.json");
        let state = lab.paths().state_dir();
        let audit = lab.paths().audit_dir();
        let bus = Bus::start(BusPolicy::Shipped, "");
        // Each directory's files are copied onto a 256 KiB tmpfs mounted over it (sparse:
        // the preallocated zeros of the audit segment take no space), then trustd runs in
        // the lab's network namespace, all in a private mount namespace.
        let script = r#"set -e
for d in "$STATE" "$AUDIT"; do
  cp -a --sparse=always "$d" "$d.seed"
  mount -t tmpfs -o size=256k,mode=0700 tmpfs "$d"
  cp -a --sparse=always "$d.seed/." "$d/"
  rm -rf "$d.seed"
done
exec ip netns exec "$DEV" "$TRUSTD" --prefix "$PREFIX" run --check-interval-ms 200 --bus "$BUS""#;
        let child = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", script])
            .env("STATE", &state)
            .env("AUDIT", &audit)
            .env("DEV", &lab.dev)
            .env("TRUSTD", bin("trustd"))
            .env("PREFIX", lab.prefix.path())
            .env("BUS", &bus.address)
            .stderr(Stdio::null())
            .spawn()
            .expect("trustd run");
        let daemon = Daemon {
            child: KillOnDrop(Some(child)),
            bus,
        };
        wait_ready(&daemon.bus.address);
        Self {
            lab,
            daemon,
            state,
            audit,
        }
    }

    /// Keep the daemon's mount namespace (and its tmpfs) alive past the daemon: a process
    /// that sleeps in it.
    fn keeper(&self) -> KillOnDrop {
        let c = Command::new("nsenter")
            .args(["-t", &self.daemon.id().to_string(), "-m", "sleep", "600"])
            .spawn()
            .expect("nsenter sleep");
        KillOnDrop(Some(c))
    }

    /// Kill the daemon (SIGKILL), run `cmd` in the namespace `keeper` holds, and start a new
    /// daemon there on a new bus.
    fn kill_and_restart(&mut self, keeper: &KillOnDrop, cmd: &str) {
        let _ = self.daemon.child.0.as_mut().map(std::process::Child::kill);
        let _ = self.daemon.wait();
        let r: Run = Command::new("nsenter")
            .args(["-t", &keeper.id().to_string(), "-m", "sh", "-c", cmd])
            .env("STATE", &self.state)
            .env("AUDIT", &self.audit)
            .output()
            .expect("nsenter")
            .into();
        assert_eq!(r.code, 0, "{cmd}: {}", r.stderr);
        let bus = Bus::start(BusPolicy::Shipped, "");
        let child = Command::new("nsenter")
            .args([
                "-t",
                &keeper.id().to_string(),
                "-m",
                "ip",
                "netns",
                "exec",
                &self.lab.dev,
            ])
            .arg(bin("trustd"))
            .arg("--prefix")
            .arg(self.lab.prefix.path())
            .args(["run", "--check-interval-ms", "200", "--bus", &bus.address])
            .stderr(Stdio::null())
            .spawn()
            .expect("trustd run");
        self.daemon = Daemon {
            child: KillOnDrop(Some(child)),
            bus,
        };
        wait_ready(&self.daemon.bus.address);
    }

    /// Run `cmd` with sh in the daemon's mount namespace.
    fn in_ns(&self, cmd: &str) -> Run {
        Command::new("nsenter")
            .args(["-t", &self.daemon.id().to_string(), "-m", "sh", "-c", cmd])
            .env("STATE", &self.state)
            .env("AUDIT", &self.audit)
            .env("PREFIX", self.lab.prefix.path())
            .env("TRUSTCTL", bin("trustctl"))
            .output()
            .expect("nsenter")
            .into()
    }

    fn must(&self, cmd: &str) -> String {
        let r = self.in_ns(cmd);
        assert_eq!(r.code, 0, "{cmd}: {}{}", r.stdout, r.stderr);
        r.stdout
    }

    fn ctl(&self, args: &[&str]) -> Run {
        let mut all = vec!["--bus", self.daemon.bus.address.as_str()];
        all.extend(args);
        trustctl(self.lab.prefix.path(), &all)
    }

    /// `nft list table inet trustd` in the device's network namespace ("" if absent).
    fn table(&self) -> String {
        let o = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.lab.dev,
                "nft",
                "list",
                "table",
                "inet",
                "trustd",
            ])
            .output()
            .expect("nft");
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn status(&self) -> String {
        let r = self.ctl(&["status"]);
        assert_eq!(r.code, 0, "status must answer: {}", r.stderr);
        r.stdout
    }

    /// Wait (5 s at most) until `status` output satisfies `f`.
    fn status_until(&self, what: &str, f: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let s = self.status();
            if f(&s) {
                return s;
            }
            assert!(start.elapsed() < Duration::from_secs(5), "{what}: {s}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Delete trustd's policy table behind its back and wait until it is back.
    fn drift_is_repaired(&self, before: &str) {
        let o = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.lab.dev,
                "nft",
                "delete",
                "table",
                "inet",
                "trustd",
            ])
            .status()
            .expect("nft");
        assert!(o.success());
        let start = Instant::now();
        while self.table() != before {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "the table was not restored while storage fails: {}",
                self.table()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Records from the audit log (through the daemon).
    fn tail(&self, n: u32) -> Vec<serde_json::Value> {
        let r = self.ctl(&["audit", "tail", "-n", &n.to_string()]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        r.stdout
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn verify_passes(&self) {
        let r = self.ctl(&["audit", "verify"]);
        assert_eq!(r.code, 0, "online verify: {}{}", r.stdout, r.stderr);
        // From the files alone, as an admin would after the fact.
        let out = self.must(r#""$TRUSTCTL" audit verify --prefix "$PREFIX""#);
        assert!(!out.is_empty());
    }
}

fn refused(r: &Run, path: &Path, errno: &str) {
    assert_ne!(r.code, 0, "must be refused: {}", r.stdout);
    let e = &r.stderr;
    assert!(
        e.contains(&path.display().to_string()),
        "names the path: {e}"
    );
    assert!(e.contains(errno), "names the errno {errno}: {e}");
    assert!(e.contains("nothing changed"), "says nothing changed: {e}");
}

/// Ask for changes (`privacy on`), each refused naming `errno`, until posture says the audit
/// log is failing too (within 30 s, else `never`).
fn refuse_until_the_audit_log_fails(l: &Lab2, errno: &str, never: &str) {
    let start = Instant::now();
    while !l.status().contains("storage failing: audit log") {
        let r = l.ctl(&["privacy", "on"]);
        assert_ne!(r.code, 0, "{}", r.stdout);
        assert!(r.stderr.contains(errno), "{}", r.stderr);
        assert!(start.elapsed() < Duration::from_secs(30), "{never}");
    }
}

#[test]
fn a_full_state_and_audit_filesystem_refuses_changes_keeps_enforcing_and_records_the_gap() {
    if !can_run(TOOLS) {
        return;
    }
    let mut l = Lab2::start("sf");
    let before = l.table();
    assert!(before.contains("table inet trustd"), "{before}");
    let mut next = lab_policy("direct");
    next["network"]["allow"][0]["ports"] = json!([443, 444]);
    let signed = l.lab.sign(next).display().to_string();

    l.must(r#"dd if=/dev/zero of="$STATE/fill" bs=4k 2>/dev/null || true; dd if=/dev/zero of="$AUDIT/fill" bs=4k 2>/dev/null || true"#);

    // A tightening (privacy on) is refused: its state cannot be saved (or, once the
    // audit segment's space is used up, its record cannot be written). The kernel keeps
    // its ruleset.
    let r = l.ctl(&["privacy", "on"]);
    assert_ne!(r.code, 0, "must be refused: {}", r.stdout);
    assert!(
        r.stderr.contains(&l.state.display().to_string())
            || r.stderr.contains(&l.audit.display().to_string()),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("ENOSPC") && r.stderr.contains("nothing changed"),
        "{}",
        r.stderr
    );
    assert_eq!(
        l.table(),
        before,
        "the kernel changed although the change was refused"
    );
    // Each refused change still writes its records where the segment has room; soon the
    // audit log has none either.
    refuse_until_the_audit_log_fails(&l, "ENOSPC", "the audit log never filled");
    let r = l.ctl(&["privacy", "on"]);
    refused(&r, &l.audit, "ENOSPC");
    assert_eq!(
        l.table(),
        before,
        "the kernel changed although the change was refused"
    );
    let r = l.ctl(&["policy", "apply", &signed]);
    refused(&r, &l.audit, "ENOSPC");
    assert_eq!(l.table(), before);

    // Reads go on; posture names each store, its path and the errno.
    let s = l.status();
    eprintln!("status while both stores are full:\n{s}");
    assert!(s.contains("degraded") || s.contains("untrusted"), "{s}");
    assert!(s.contains("storage failing: audit log"), "{s}");
    assert!(s.contains("storage failing: state directory"), "{s}");
    assert!(s.contains("ENOSPC"), "{s}");

    // Drift is repaired although its record cannot be written.
    l.drift_is_repaired(&before);

    // Space comes back: the next change works, and the gap is on record first.
    l.must(r#"rm -f "$STATE/fill" "$AUDIT/fill""#);
    let r = l.ctl(&["privacy", "on"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_ne!(l.table(), before, "privacy on is in force");
    l.status_until("posture clears", |s| !s.contains("storage failing"));
    let recs = l.tail(40);
    let gap = recs
        .iter()
        .find(|r| r["kind"] == "audit.gap")
        .unwrap_or_else(|| panic!("no audit.gap record in {recs:#?}"));
    eprintln!("{gap}");
    let missed: u64 = gap["digests"]["missed"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("missed");
    assert!(missed >= 3, "privacy, policy and drift at least: {gap}");
    assert!(gap["digests"].get("count.network.drift").is_some(), "{gap}");
    assert!(gap["digests"].get("count.privacy.set").is_some(), "{gap}");
    assert_eq!(gap["digests"]["errno"], "ENOSPC", "{gap}");
    l.verify_passes();
}

#[test]
fn a_read_only_state_and_audit_directory_refuses_changes_keeps_enforcing_and_recovers() {
    if !can_run(TOOLS) {
        return;
    }
    let l = Lab2::start("sr");
    let before = l.table();
    // A read-only bind mount over each directory (as after an I/O error remounted them):
    // new files cannot be made there. trustd's open audit segment still takes writes
    // through the mount it was opened on, until the next segment must be started.
    l.must(r#"for d in "$STATE" "$AUDIT"; do mount --bind "$d" "$d" && mount -o remount,bind,ro "$d"; done"#);

    let r = l.ctl(&["privacy", "on"]);
    refused(&r, &l.state, "EROFS");
    assert_eq!(l.table(), before);
    let s = l.status();
    assert!(s.contains("storage failing: state directory"), "{s}");
    assert!(s.contains("EROFS"), "{s}");

    // Each refused change still writes records to the open segment; within a few the log
    // needs a new segment, which the read-only directory refuses too.
    refuse_until_the_audit_log_fails(&l, "EROFS", "the audit log never needed a segment");
    assert_eq!(l.table(), before);
    l.drift_is_repaired(&before);

    // The read-only mounts go away: the periodic probe clears posture without any call.
    l.must(r#"umount "$STATE" "$AUDIT""#);
    l.status_until("posture clears", |s| !s.contains("storage failing"));
    let r = l.ctl(&["privacy", "on"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_ne!(l.table(), before);
    let recs = l.tail(60);
    let gap = recs
        .iter()
        .find(|r| r["kind"] == "audit.gap")
        .unwrap_or_else(|| panic!("no audit.gap record in {recs:#?}"));
    assert_eq!(gap["digests"]["errno"], "EROFS", "{gap}");
    assert!(
        recs.iter().any(|r| r["kind"] == "state.storage"),
        "the state directory's recovery is recorded"
    );
    l.verify_passes();
}

#[test]
fn a_daemon_killed_while_its_audit_log_is_full_restarts_without_crying_tamper() {
    // A record cut short by ENOSPC is trustd's own torn write, never acknowledged: after a
    // crash the next start cuts it as such (audit.repair), records no damage, keeps
    // posture free of damage reasons, and the log verifies.
    if !can_run(TOOLS) {
        return;
    }
    let mut l = Lab2::start("sk");
    let before = l.table();
    let keeper = l.keeper();
    l.must(r#"dd if=/dev/zero of="$STATE/fill" bs=4k 2>/dev/null || true; dd if=/dev/zero of="$AUDIT/fill" bs=4k 2>/dev/null || true"#);
    let start = Instant::now();
    while !l.status().contains("storage failing: audit log") {
        assert_ne!(l.ctl(&["privacy", "on"]).code, 0);
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the audit log never filled"
        );
    }
    for _ in 0..3 {
        assert_ne!(l.ctl(&["privacy", "on"]).code, 0);
    }
    let torn = l.in_ns(r#""$TRUSTCTL" audit verify --prefix "$PREFIX""#);
    eprintln!(
        "offline verify during the outage: exit {} {}",
        torn.code,
        torn.stdout.lines().last().unwrap_or_default()
    );
    // The running daemon knows the torn bytes for its own unfinished write: its check
    // passes and posture shows no broken chain.
    let r = l.ctl(&["audit", "verify"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let s = l.status();
    assert!(
        !s.contains("audit chain broken") && !s.contains("damage"),
        "{s}"
    );
    l.kill_and_restart(&keeper, r#"rm -f "$STATE/fill" "$AUDIT/fill""#);
    assert_eq!(
        l.table(),
        before,
        "enforcement is unchanged across the crash"
    );
    let s = l.status();
    assert!(
        !s.contains("damage"),
        "no damage for trustd's own torn write: {s}"
    );
    let recs = l.tail(80);
    assert!(
        !recs.iter().any(|r| r["kind"] == "audit.damage"),
        "{recs:#?}"
    );
    if torn.code != 0 {
        assert!(
            recs.iter().any(|r| r["kind"] == "audit.repair"),
            "the torn write is cut and recorded as a repair: {recs:#?}"
        );
    }
    l.verify_passes();
}
