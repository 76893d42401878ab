//! Evidence an outside verifier can check, end to end: checkpoints from the running daemon,
//! consistency and inclusion proofs from the files alone against a checkpoint saved earlier,
//! signed posture reports, a checkpoint at clean stop, and tampering caught.

use serde_json::json;
use tests::bus::BusPolicy;
use tests::lab::{can_run, lab_policy, serve};
use tests::{Run, trustctl};

const TOOLS: &[&str] = &["ip", "nft", "dbus-daemon"];

#[test]
fn checkpoints_proofs_and_reports_hold_and_tampering_is_caught() {
    if !can_run(TOOLS) {
        return;
    }
    let (mut lab, mut daemon) = serve("ev", lab_policy("direct"), BusPolicy::Shipped);
    let bus = daemon.bus.address.clone();
    let work = lab.prefix.path().to_owned();
    let prefix = work.display().to_string();
    let key = lab.paths().device_pub().display().to_string();
    let ctl = |args: &[&str]| -> Run { trustctl(&work, args) };
    let online = |args: &[&str]| -> Run {
        let mut all = vec!["--bus", bus.as_str()];
        all.extend(args);
        trustctl(&work, &all)
    };

    // A verifier saves a checkpoint.
    let r = online(&["audit", "checkpoint", "-o", "old.cp"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let old = std::fs::read_to_string(work.join("old.cp")).expect("old.cp");
    assert!(old.starts_with("enigm.org/trustd/"), "{old}");
    // The device goes on: more records.
    for on in [true, false, true] {
        let r = online(&["privacy", if on { "on" } else { "off" }]);
        assert_eq!(r.code, 0, "{}", r.stderr);
    }
    let b = lab.sign(lab_policy("direct"));
    assert_eq!(
        online(&["policy", "apply", &b.display().to_string()]).code,
        0
    );

    // From the files alone: the log extends the old checkpoint; record 1 is in it.
    let r = ctl(&[
        "audit",
        "consistency",
        "old.cp",
        "--key",
        &key,
        "--prefix",
        &prefix,
    ]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("extends checkpoint size"), "{}", r.stdout);
    let r = ctl(&[
        "--json",
        "audit",
        "prove",
        "1",
        "--checkpoint",
        "old.cp",
        "--key",
        &key,
        "--prefix",
        &prefix,
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let proof: serde_json::Value = serde_json::from_str(r.stdout.trim()).expect("json");
    assert_eq!(proof["seq"], json!(1));
    // A newer checkpoint extends the older one.
    assert_eq!(online(&["audit", "checkpoint", "-o", "new.cp"]).code, 0);
    let r = ctl(&[
        "audit",
        "consistency",
        "old.cp",
        "new.cp",
        "--key",
        &key,
        "--prefix",
        &prefix,
    ]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);

    // A signed posture report answering a nonce.
    let r = online(&[
        "posture",
        "report",
        "--nonce",
        "verifier-nonce-1",
        "-o",
        "report.json",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = ctl(&[
        "--json",
        "posture",
        "verify",
        "report.json",
        "--nonce",
        "verifier-nonce-1",
        "--key",
        &key,
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(r.stdout.trim()).expect("json");
    assert!(
        v["evidence"]["checkpoint"]
            .as_str()
            .is_some_and(|c| c.starts_with("enigm.org/trustd/"))
    );
    assert_eq!(
        v["evidence"]["policy_digest"].as_str().map(str::len),
        Some(64)
    );
    let r = ctl(&[
        "posture",
        "verify",
        "report.json",
        "--nonce",
        "another-nonce-2",
        "--key",
        &key,
    ]);
    assert_eq!(r.code, 1, "a replayed report is refused");
    assert!(r.stderr.contains("replayed"), "{}", r.stderr);
    let text = std::fs::read_to_string(work.join("report.json")).expect("report");
    let mut env: serde_json::Value = serde_json::from_str(&text).expect("json");
    // One bit of the signed bytes flipped (the payload is base64 of base64 text, which may
    // hold no 'A' at all: editing its text can change nothing).
    {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut payload = b64
            .decode(env["payload"].as_str().expect("payload"))
            .expect("base64");
        let mid = payload.len() / 2;
        payload[mid] ^= 1;
        env["payload"] = json!(b64.encode(&payload));
    }
    std::fs::write(work.join("forged.json"), env.to_string()).expect("write");
    let r = ctl(&[
        "posture",
        "verify",
        "forged.json",
        "--nonce",
        "verifier-nonce-1",
        "--key",
        &key,
    ]);
    assert_eq!(r.code, 1, "an altered report is refused: {}", r.stdout);

    // Clean stop: the last record is covered by a checkpoint.
    assert!(daemon.terminate().success());
    let records = trustd::audit::read_records(&lab.paths().audit_dir()).expect("records");
    let cp = std::fs::read_to_string(lab.paths().audit_dir().join("checkpoint")).expect("cp");
    assert_eq!(
        cp.lines().nth(1),
        Some(records.len().to_string().as_str()),
        "{cp}"
    );

    // Root on the device rewrites record 1: the old checkpoint catches it.
    let seg = lab.paths().audit_dir().join(trustd::audit::segment_name(0));
    let bytes = std::fs::read(&seg).expect("segment");
    let first_nl = bytes.iter().position(|&b| b == b'\n').expect("line");
    let mut tampered = bytes.clone();
    let at = first_nl
        + 1
        + tampered[first_nl + 1..]
            .windows(6)
            .position(|w| w == b"\"time\"")
            .expect("time field")
        + 10;
    tampered[at] = if tampered[at] == b'1' { b'2' } else { b'1' };
    std::fs::write(&seg, &tampered).expect("write");
    let r = ctl(&[
        "audit",
        "consistency",
        "old.cp",
        "--key",
        &key,
        "--prefix",
        &prefix,
    ]);
    assert_eq!(r.code, 1, "a rewritten record passed: {}", r.stdout);
    let r = ctl(&[
        "audit",
        "prove",
        "1",
        "--checkpoint",
        "old.cp",
        "--key",
        &key,
        "--prefix",
        &prefix,
    ]);
    assert_eq!(r.code, 1, "a rewritten record proved: {}", r.stdout);
    // Truncation below the old checkpoint is caught too.
    std::fs::write(&seg, &bytes[..=first_nl]).expect("truncate");
    let r = ctl(&[
        "audit",
        "consistency",
        "old.cp",
        "--key",
        &key,
        "--prefix",
        &prefix,
    ]);
    assert_eq!(r.code, 1, "a truncated log passed: {}", r.stdout);
}

/// Attack (the reported one): with trustd stopped, root flips a byte in the last audit
/// record and deletes the head file, so that the next start would rewrite the head over
/// the evidence. Starting the real daemon again must record the damage before anything
/// else, show it in posture and keep `audit verify` failing until an admin acknowledges it
/// with `trustctl audit acknowledge`, which is itself audited and erases nothing.
#[test]
fn restarting_trustd_on_a_tampered_log_records_the_damage_until_an_admin_acknowledges_it() {
    if !can_run(TOOLS) {
        return;
    }
    let (lab, mut daemon) = serve("ad", lab_policy("direct"), BusPolicy::Shipped);
    let work = lab.prefix.path().to_owned();
    let prefix = work.display().to_string();
    assert!(daemon.terminate().success());
    drop(daemon);

    let dir = lab.paths().audit_dir();
    let seg = dir.join(trustd::audit::segment_name(0));
    let mut bytes = std::fs::read(&seg).expect("segment");
    let end = bytes.iter().rposition(|&b| b != 0).expect("records") + 1;
    let start = bytes[..end - 1]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let at = start
        + bytes[start..end]
            .windows(8)
            .position(|w| w == b"\"time\":\"")
            .expect("time")
        + 11;
    bytes[at] = if bytes[at] == b'1' { b'2' } else { b'1' };
    std::fs::write(&seg, &bytes).expect("write");
    std::fs::remove_file(dir.join("head")).expect("rm head");
    let before = trustd::audit::read_records(&dir).expect("records").len();
    let r = trustctl(&work, &["audit", "verify", "--prefix", &prefix]);
    assert_eq!(r.code, 1, "verify sees it before the start: {}", r.stdout);

    let daemon = lab.run_daemon(1000);
    tests::lab::wait_ready(&daemon.bus.address);
    let bus = daemon.bus.address.clone();
    let online = |args: &[&str]| -> Run {
        let mut all = vec!["--bus", bus.as_str()];
        all.extend(args);
        trustctl(&work, &all)
    };
    let records = trustd::audit::read_records(&dir).expect("records");
    assert_eq!(
        records[before].kind, "audit.damage",
        "{:?}",
        records[before]
    );
    let reason = records[before].reason.clone().unwrap_or_default();
    assert!(reason.contains("[head-removed]"), "{reason}");
    assert!(reason.contains("[log-rewritten]"), "{reason}");

    let status = online(&["--json", "status"]);
    assert_eq!(status.code, 0, "{}", status.stderr);
    // One JSON object on one line, with "ok" like every other result under --json.
    assert_eq!(status.stdout.lines().count(), 1, "{}", status.stdout);
    let v: serde_json::Value = serde_json::from_str(status.stdout.trim()).expect("status json");
    assert_eq!(v["ok"], true, "{v}");
    assert!(
        status
            .stdout
            .contains("audit log damage recorded and not yet acknowledged"),
        "{}",
        status.stdout
    );
    // The same, as a person reads it: the audit head as a count and a hash, not a raw tuple.
    let human = online(&["status"]);
    assert_eq!(human.code, 0, "{}", human.stderr);
    let head = &v["AuditHead"];
    let line = human
        .stdout
        .lines()
        .find(|l| l.starts_with("AuditHead"))
        .unwrap_or_default();
    assert!(
        line.contains(&format!(
            "{} records, last record hash {}",
            head[0],
            head[1].as_str().unwrap_or("?")
        )),
        "{line}\n{}",
        human.stdout
    );
    let r = online(&["audit", "verify"]);
    assert_eq!(
        r.code, 1,
        "damaged-then-recorded is not intact: {}",
        r.stdout
    );
    assert!(r.stdout.contains("not yet acknowledged"), "{}", r.stdout);
    let r = trustctl(&work, &["audit", "verify", "--prefix", &prefix]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(r.stdout.contains("NOT acknowledged"), "{}", r.stdout);

    let r = online(&["audit", "acknowledge"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let status = online(&["--json", "status"]);
    assert!(
        !status.stdout.contains("audit log damage recorded"),
        "{}",
        status.stdout
    );
    let records = trustd::audit::read_records(&dir).expect("records");
    assert_eq!(
        records[before].kind, "audit.damage",
        "the damage record stays"
    );
    let ack = records
        .iter()
        .find(|r| r.kind == "audit.acknowledge")
        .expect("the acknowledgement is audited");
    assert_eq!(ack.actor.uid, Some(0));
    assert!(ack.actor.bus_name.is_some(), "{ack:?}");
    let r = online(&["audit", "acknowledge"]);
    assert_eq!(r.code, 1, "nothing left to acknowledge: {}", r.stdout);
    // Offline, the log now reads as damaged-then-recorded and acknowledged.
    let r = trustctl(&work, &["audit", "verify", "--prefix", &prefix]);
    assert!(
        r.stdout
            .contains("damage recorded by trustd in 1 record(s), 1 acknowledged"),
        "{}",
        r.stdout
    );
}
