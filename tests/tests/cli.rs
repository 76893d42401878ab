//! trustctl as an admin and a script use it: make keys and a trust root, sign, verify, load
//! into a device's state, read the audit log; and the exit codes and one-line reasons that
//! scripts depend on when something is wrong.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde_json::Value;
use tests::{Run, trustctl};

fn ok(r: Run) -> Run {
    assert_eq!(r.code, 0, "stdout: {}\nstderr: {}", r.stdout, r.stderr);
    r
}

fn json(r: &Run) -> Value {
    serde_json::from_str(r.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {:?}", r.stdout))
}

const POLICY: &str = r#"{"schema":"enigm.policy/v1","serial":SERIAL,"issued_at":"2026-01-01T00:00:00Z","expires_at":"2036-01-01T00:00:00Z","network":{"mode":"direct","allow":[{"dest":"203.0.113.0/24","proto":"tcp","ports":[443]}]}}"#;

/// Keys a, b (policy, threshold 2), r (root, intel, command); a trust root; a device prefix.
fn setup(d: &Path) {
    for k in ["a", "b", "r", "x"] {
        ok(trustctl(d, &["keygen", "--out", k]));
    }
    ok(trustctl(
        d,
        &[
            "trust-root",
            "--role",
            "root=1:r.pub",
            "--role",
            "policy=2:a.pub,b.pub",
            "--role",
            "intel=1:r.pub",
            "--role",
            "command=1:r.pub",
            "-o",
            "root.json",
        ],
    ));
    std::fs::create_dir_all(d.join("dev/etc/trustd")).expect("mkdir");
    std::fs::copy(
        d.join("root.json"),
        d.join("dev/etc/trustd/trust-root.json"),
    )
    .expect("cp");
    for serial in [3, 4] {
        std::fs::write(
            d.join(format!("p{serial}.json")),
            POLICY.replace("SERIAL", &serial.to_string()),
        )
        .expect("write");
        ok(trustctl(
            d,
            &[
                "sign",
                "--type",
                "policy",
                "--key",
                "a.key",
                "--key",
                "b.key",
                &format!("p{serial}.json"),
                "-o",
                &format!("p{serial}.dsse"),
            ],
        ));
    }
}

#[test]
fn an_admin_signs_verifies_and_loads_a_bundle_and_the_log_verifies() {
    let d = tempfile::tempdir().expect("tempdir");
    let d = d.path();
    setup(d);
    let mode = std::fs::metadata(d.join("a.key"))
        .expect("key")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "private keys are written 0600");

    let r = ok(trustctl(
        d,
        &["verify", "--trust-root", "root.json", "p3.dsse"],
    ));
    assert!(
        r.stdout
            .starts_with("valid policy serial 3 (expires 2036-01-01T00:00:00Z)"),
        "{}",
        r.stdout
    );
    let v = json(&ok(trustctl(
        d,
        &["--json", "verify", "--trust-root", "root.json", "p3.dsse"],
    )));
    assert_eq!(
        (v["ok"].as_bool(), v["serial"].as_u64()),
        (Some(true), Some(3))
    );
    assert_eq!(v["signers"].as_array().map(Vec::len), Some(2));

    let r = ok(trustctl(d, &["load", "--prefix", "dev", "p3.dsse"]));
    assert!(
        r.stdout.starts_with("loaded: serial 0 -> 3"),
        "{}",
        r.stdout
    );
    let s = json(&ok(trustctl(d, &["--json", "state", "--prefix", "dev"])));
    assert_eq!(s["policy_serial"].as_u64(), Some(3));
    assert_eq!(s["condition"], "loaded");

    let r = ok(trustctl(d, &["audit", "verify", "--prefix", "dev"]));
    assert!(
        // The first start's load, device secret and device key, then the load of p3.
        r.stdout.starts_with("audit log intact: 4 records"),
        "{}",
        r.stdout
    );
    let tail = ok(trustctl(
        d,
        &["--json", "audit", "tail", "--prefix", "dev", "-n", "1"],
    ));
    let rec: Value = serde_json::from_str(tail.stdout.trim()).expect("one JSON record");
    assert_eq!(
        (rec["kind"].as_str(), rec["outcome"].as_str()),
        (Some("policy.apply"), Some("ok"))
    );
    assert_eq!(rec["to"], "serial 3");
}

#[test]
fn refusals_exit_1_with_one_line_saying_why_and_keep_the_last_good_state() {
    let d = tempfile::tempdir().expect("tempdir");
    let d = d.path();
    setup(d);
    ok(trustctl(d, &["load", "--prefix", "dev", "p4.dsse"]));
    let state_before = std::fs::read(d.join("dev/var/lib/trustd/state.json")).expect("state");

    // Only one of the two required keys.
    ok(trustctl(
        d,
        &[
            "sign", "--type", "policy", "--key", "a.key", "p4.json", "-o", "one.dsse",
        ],
    ));
    let r = trustctl(d, &["verify", "--trust-root", "root.json", "one.dsse"]);
    assert_eq!(r.code, 1);
    assert_eq!(
        r.stderr,
        "trustctl: policy role needs valid signatures from 2 distinct trusted keys, got 1\n"
    );
    // A key the trust root does not know.
    ok(trustctl(
        d,
        &[
            "sign", "--type", "policy", "--key", "x.key", "--key", "a.key", "p4.json", "-o",
            "x.dsse",
        ],
    ));
    let r = trustctl(
        d,
        &["--json", "verify", "--trust-root", "root.json", "x.dsse"],
    );
    assert_eq!(r.code, 1);
    let v = json(&r);
    assert_eq!(v["ok"], false);
    assert!(
        v["reason"]
            .as_str()
            .is_some_and(|s| s.ends_with("not a key of the policy role)")),
        "{v}"
    );

    // Replay of an older bundle into the device.
    let r = trustctl(d, &["load", "--prefix", "dev", "p3.dsse"]);
    assert_eq!(r.code, 1);
    assert_eq!(
        r.stderr,
        "trustctl: serial 3 is not newer than the installed serial 4 for the policy role; the last good state is kept\n"
    );
    assert_eq!(
        std::fs::read(d.join("dev/var/lib/trustd/state.json")).expect("state"),
        state_before
    );
    let tail = ok(trustctl(
        d,
        &["--json", "audit", "tail", "--prefix", "dev", "-n", "1"],
    ));
    let rec: Value = serde_json::from_str(tail.stdout.trim()).expect("record");
    assert_eq!(rec["outcome"], "refused");

    // A file that is not there is the system's problem, not the input's: exit 3.
    let r = trustctl(d, &["verify", "--trust-root", "root.json", "missing.dsse"]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(
        r.stderr.starts_with("trustctl: reading missing.dsse: "),
        "{}",
        r.stderr
    );
}

#[test]
fn audit_verify_exits_1_and_names_the_damage() {
    let d = tempfile::tempdir().expect("tempdir");
    let d = d.path();
    setup(d);
    ok(trustctl(d, &["load", "--prefix", "dev", "p3.dsse"]));
    ok(trustctl(d, &["load", "--prefix", "dev", "p4.dsse"]));
    let seg = d.join("dev/var/log/trustd/audit/segment-00000000.jsonl");
    let mut data = std::fs::read(&seg).expect("segment");
    let at = data
        .windows(8)
        .position(|w| w == b"serial 3")
        .expect("a record saying serial 3");
    data[at + 7] = b'9';
    std::fs::write(&seg, data).expect("tamper");
    let r = trustctl(d, &["audit", "verify", "--prefix", "dev"]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(
        r.stdout.starts_with("audit log damaged: 1 problem(s)"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("does not chain to the record before it (a record was altered)"),
        "{}",
        r.stdout
    );
}

/// `--out NAME` names the pair `NAME.key` and `NAME.pub` whatever dots NAME has, and an
/// existing key is never replaced: a second run fails with exit 1, its files untouched.
#[test]
fn keygen_names_the_pair_after_out_and_never_replaces_a_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let first = json(&ok(trustctl(
        d,
        &["--json", "keygen", "--out", "admin.2026"],
    )));
    assert!(d.join("admin.2026.key").exists() && d.join("admin.2026.pub").exists());
    assert_eq!(
        std::fs::metadata(d.join("admin.2026.key"))
            .expect("key")
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    ok(trustctl(d, &["keygen", "--out", "ops.key"]));
    assert!(d.join("ops.key").exists() && d.join("ops.pub").exists());
    assert!(!d.join("ops.key.key").exists());

    let before = std::fs::read(d.join("admin.2026.key")).expect("key");
    let again = trustctl(d, &["keygen", "--out", "admin.2026"]);
    assert_eq!(again.code, 1, "{}", again.stderr);
    assert!(
        again.stderr.contains("an existing key is never replaced"),
        "{}",
        again.stderr
    );
    assert_eq!(
        std::fs::read(d.join("admin.2026.key")).expect("key"),
        before
    );
    let public: Value =
        serde_json::from_slice(&std::fs::read(d.join("admin.2026.pub")).expect("pub"))
            .expect("json");
    assert_eq!(first["keyid"], public["keyid"]);
}

#[test]
fn one_exit_code_rule_for_every_command_and_json_for_every_outcome() {
    let d = tempfile::tempdir().expect("tempdir");
    let d = d.path();
    setup(d);
    // --help states the rule.
    let help = ok(trustctl(d, &["--help"]));
    assert!(
        help.stdout
            .contains("1 refused: the input or the request is invalid"),
        "{}",
        help.stdout
    );
    // Usage errors: exit 2, with a suggestion for a typo; with --json, one object.
    let r = trustctl(d, &["statsu"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("'status'"), "{}", r.stderr);
    let r = trustctl(d, &["--json", "statsu"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    let v = json(&r);
    assert_eq!(
        (v["ok"].as_bool(), v["error"].as_str()),
        (Some(false), Some("usage"))
    );
    // The typo tip and the missing argument's name are in the JSON reason too.
    assert!(
        v["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("'status'"),
        "{v}"
    );
    let r = trustctl(d, &["--json", "keygen"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        json(&r)["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("--out"),
        "{}",
        r.stdout
    );
    // Invalid input to an offline command is a refusal (1), not a system failure (3).
    for args in [
        &["trust-root", "--role", "root=x:r.pub"][..],
        &[
            "trust-root",
            "--role",
            "root=1:r.pub",
            "--role",
            "policy=1:a.pub",
            "--role",
            "intel=1:r.pub",
            "--role",
            "command=1:r.pub",
            "--role",
            "owner=1:r.pub",
        ],
        &["trust-root", "--role", "root=1:r.pub"],
        &[
            "trust-root",
            "--role",
            "root=1:r.pub",
            "--role",
            "policy=1:a.pub",
            "--role",
            "intel=1:r.pub",
            "--role",
            "command=1:r.pub",
            "--expires",
            "tomorrow",
        ],
        &["sign", "--type", "bogus", "--key", "a.key", "p3.json"],
        &["verify", "--trust-root", "p3.json", "p3.dsse"],
    ] {
        let mut with_json = vec!["--json"];
        with_json.extend(args);
        let r = trustctl(d, &with_json);
        assert_eq!(r.code, 1, "{args:?}: {}{}", r.stdout, r.stderr);
        let v = json(&r);
        assert_eq!(v["error"], "refused", "{args:?}: {v}");
        let r = trustctl(d, args);
        assert_eq!(r.code, 1, "{args:?}: {}", r.stderr);
        assert!(r.stderr.starts_with("trustctl: "), "{args:?}: {}", r.stderr);
        assert_eq!(r.stderr.lines().count(), 1, "{args:?}: {}", r.stderr);
    }
    // A document written to a file: with --json, one result naming it.
    let r = ok(trustctl(
        d,
        &[
            "--json", "sign", "--type", "policy", "--key", "a.key", "p3.json", "-o", "one.dsse",
        ],
    ));
    assert_eq!(json(&r), serde_json::json!({"ok": true, "out": "one.dsse"}));
    assert!(d.join("one.dsse").exists());
}

/// Refusal, not system failure: a key file that is read but is not a key of the kind the
/// command needs (garbage, a public key given to `sign`, a private key given as a trust-root
/// member or as the device key) is the input's fault and exits 1, like a malformed trust
/// root does; only a key file that cannot be read exits 3.
#[test]
fn a_malformed_key_file_is_refused_with_exit_1_and_a_missing_one_is_a_system_failure() {
    let d = tempfile::tempdir().expect("tempdir");
    let d = d.path();
    setup(d);
    std::fs::write(d.join("garbage.key"), "not a key\n").expect("write");
    let roles = |command: &'static str| -> Vec<&'static str> {
        vec![
            "--json",
            "trust-root",
            "--role",
            "root=1:r.pub",
            "--role",
            "policy=1:a.pub",
            "--role",
            "intel=1:r.pub",
            "--role",
            command,
        ]
    };
    let cases: Vec<(Vec<&str>, u8)> = vec![
        (
            vec![
                "--json",
                "sign",
                "--type",
                "policy",
                "--key",
                "garbage.key",
                "p3.json",
            ],
            1,
        ),
        (
            vec![
                "--json", "sign", "--type", "policy", "--key", "a.pub", "p3.json",
            ],
            1,
        ),
        (roles("command=1:a.key"), 1),
        (roles("command=1:garbage.key"), 1),
        (
            vec![
                "--json",
                "posture",
                "verify",
                "p3.dsse",
                "--nonce",
                "nonce-0001",
                "--key",
                "a.key",
            ],
            1,
        ),
        (
            vec![
                "--json",
                "sign",
                "--type",
                "policy",
                "--key",
                "missing.key",
                "p3.json",
            ],
            3,
        ),
        (roles("command=1:missing.pub"), 3),
    ];
    for (args, code) in cases {
        let r = trustctl(d, &args);
        assert_eq!(
            i32::from(code),
            r.code,
            "{args:?}: {}{}",
            r.stdout,
            r.stderr
        );
        let v = json(&r);
        let kind = if code == 1 { "refused" } else { "system" };
        assert_eq!(v["error"], kind, "{args:?}: {v}");
    }
}

/// `audit export` writes the log's exact lines (its Merkle leaves), but a damaged segment
/// whose line is no longer JSON is not passed off as JSON lines: every line is still
/// written, and the command exits 1 naming the bad line. With --json and -o an intact
/// export answers one result object naming the file, like every command writing a file.
#[test]
fn audit_export_of_a_damaged_log_exits_1_and_names_the_line_that_is_not_json() {
    let d = tempfile::tempdir().expect("tempdir");
    let d = d.path();
    setup(d);
    ok(trustctl(d, &["load", "--prefix", "dev", "p3.dsse"]));
    let r = ok(trustctl(
        d,
        &[
            "--json",
            "audit",
            "export",
            "--prefix",
            "dev",
            "-o",
            "log.jsonl",
        ],
    ));
    let v = json(&r);
    assert_eq!(
        (v["ok"].as_bool(), v["out"].as_str()),
        (Some(true), Some("log.jsonl")),
        "{v}"
    );
    let lines = std::fs::read_to_string(d.join("log.jsonl")).expect("export");
    let n = lines.lines().count();
    assert!(n >= 2, "{lines}");
    assert_eq!(v["records"].as_u64(), Some(n as u64), "{v}");

    // A bit flip that makes record 1's line invalid UTF-8 and JSON (a disk error).
    let seg = d.join("dev/var/log/trustd/audit/segment-00000000.jsonl");
    let mut data = std::fs::read(&seg).expect("segment");
    let second = data.iter().position(|&b| b == b'\n').expect("a first line") + 1;
    data[second + 3] = 0xff;
    std::fs::write(&seg, data).expect("damage");
    for args in [
        &["audit", "export", "--prefix", "dev", "-o", "damaged.jsonl"][..],
        &["audit", "export", "--prefix", "dev"],
    ] {
        let r = trustctl(d, args);
        assert_eq!(r.code, 1, "{args:?}: {}", r.stderr);
        assert!(
            r.stderr.contains("lines [2] are not JSON"),
            "{args:?}: {}",
            r.stderr
        );
    }
    // Still every line, byte for byte: the leaves a verifier recomputes the root from.
    let damaged = std::fs::read(d.join("damaged.jsonl")).expect("damaged export");
    assert_eq!(damaged.iter().filter(|&&b| b == b'\n').count(), n);
}

/// As root: keys, a trust root and a device prefix with policy serial 3 loaded, ready for
/// its directories to be given to another user. `None` (skipped) without root.
fn loaded_as_root() -> Option<tempfile::TempDir> {
    if trustd::sys::euid() != 0 {
        tests::lab::skip("needs root to give the directories to another user");
        return None;
    }
    let d = tempfile::tempdir().expect("tempdir");
    setup(d.path());
    ok(trustctl(d.path(), &["load", "--prefix", "dev", "p3.dsse"]));
    Some(d)
}

/// Lockdown after a "successful" offline load: on a packaged device the state and log
/// directories belong to the trustd user, and a load run as root wrote root-owned 0600
/// files there that trustd could not read (it then started in the most restrictive state
/// with no policy). The load is refused instead, naming the owner to run as; nothing changes.
#[test]
fn an_offline_load_by_another_user_than_the_state_directorys_owner_is_refused() {
    let Some(d) = loaded_as_root() else {
        return;
    };
    let d = d.path();
    let state = d.join("dev/var/lib/trustd");
    let before = std::fs::read(state.join("state.json")).expect("state");
    // The package's layout: the directories are the service user's (65534 stands in).
    std::os::unix::fs::chown(&state, Some(65534), Some(65534)).expect("chown");
    let r = trustctl(d, &["--json", "load", "--prefix", "dev", "p4.dsse"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let v = json(&r);
    assert_eq!(v["error"], "refused", "{v}");
    assert!(
        v["reason"]
            .as_str()
            .unwrap_or("")
            .contains("belongs to uid 65534"),
        "{v}"
    );
    assert_eq!(
        std::fs::read(state.join("state.json")).expect("state"),
        before,
        "the state changed"
    );
}

/// The same lockdown by another door: `trustd check` or `trustd apply` run by hand as root
/// on a packaged device opened the device's files for writing (an audit record at least) and
/// left root-owned files trustd could not read. Both are refused before writing anything,
/// with the owner to run as (exit 3: nothing was applied, the kernel's ruleset stays).
#[test]
fn trustd_check_or_apply_by_another_user_than_the_owner_writes_nothing() {
    let Some(d) = loaded_as_root() else {
        return;
    };
    let d = d.path();
    let listing = |dir: &std::path::Path| -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = walk(dir)
            .into_iter()
            .map(|p| {
                let len = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
                (p.display().to_string(), len)
            })
            .collect();
        v.sort();
        v
    };
    for dir in [
        "dev/var/lib/trustd",
        "dev/var/log/trustd",
        "dev/var/log/trustd/audit",
    ] {
        std::os::unix::fs::chown(d.join(dir), Some(65534), Some(65534)).expect("chown");
    }
    let before = listing(&d.join("dev"));
    for cmd in [&["check"][..], &["apply", "--nft", "/bin/false"][..]] {
        let out = std::process::Command::new(tests::bin("trustd"))
            .arg("--prefix")
            .arg(d.join("dev"))
            .args(cmd)
            .output()
            .expect("trustd");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{cmd:?}: {stderr}");
        assert!(
            stderr.contains("belongs to uid 65534") && stderr.contains("nothing changed"),
            "{cmd:?}: {stderr}"
        );
        assert_eq!(listing(&d.join("dev")), before, "{cmd:?} wrote files");
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}

/// `device command --valid-for` past the last representable time panicked (exit 101, outside
/// the exit-code rule): the expiry is held at the last representable instant instead, and a
/// window that is not positive is refused (exit 1).
#[test]
fn device_command_validity_out_of_range_is_held_or_refused_never_a_panic() {
    let d = tempfile::tempdir().expect("tempdir");
    let d = d.path();
    setup(d);
    let args = |valid_for: &'static str| -> Vec<&'static str> {
        vec![
            "--json",
            "device",
            "command",
            "--action",
            "suspend",
            "--issuer",
            "verifier.example",
            "--device",
            "handle-0001",
            "--serial",
            "1",
            "--key",
            "r.key",
            valid_for,
            "-o",
            "cmd.dsse",
        ]
    };
    let r = ok(trustctl(d, &args("--valid-for=9223372036854775807")));
    assert_eq!(json(&r)["ok"], true, "{}", r.stdout);
    let env: Value =
        serde_json::from_slice(&std::fs::read(d.join("cmd.dsse")).expect("cmd")).expect("json");
    assert_eq!(
        env["payloadType"], "application/vnd.enigm.command+json",
        "{env}"
    );
    for bad in ["--valid-for=0", "--valid-for=-5"] {
        let r = trustctl(d, &args(bad));
        assert_eq!(r.code, 1, "{bad}: {}{}", r.stdout, r.stderr);
        assert_eq!(json(&r)["error"], "refused", "{bad}: {}", r.stdout);
    }
    // The same negative window as two words (`--valid-for -5`) is read as a number, not as
    // an unknown option: the same refusal, not a usage error.
    let mut two = args("--valid-for");
    two.insert(two.len() - 2, "-5");
    let r = trustctl(d, &two);
    assert_eq!(r.code, 1, "{two:?}: {}{}", r.stdout, r.stderr);
    assert!(
        json(&r)["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("positive"),
        "{}",
        r.stdout
    );

    // Without -o, --json still prints one object on one line: the envelope is inside it.
    let mut to_stdout = args("--valid-for=60");
    to_stdout.truncate(to_stdout.len() - 2);
    let r = ok(trustctl(d, &to_stdout));
    assert_eq!(r.stdout.lines().count(), 1, "{}", r.stdout);
    let v = json(&r);
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(
        v["document"]["payloadType"], "application/vnd.enigm.command+json",
        "{v}"
    );
}

/// Inputs no file should be able to turn into an out-of-memory kill: trustctl read every
/// input whole before any size check, so `verify /dev/zero` grew until the kernel killed
/// it (23 GB here). Every input is now read up to a cap and refused past it (exit 1), for
/// bundles, keys, checkpoints, reports and AK files alike.
#[test]
fn endless_or_huge_input_files_are_refused_at_a_cap_not_read_into_memory() {
    let d = tempfile::tempdir().expect("tempdir");
    let d = d.path();
    setup(d);
    // A sparse 3 GiB file: nothing on disk, all of it readable.
    let big = d.join("big");
    std::fs::File::create(&big)
        .and_then(|f| f.set_len(3 << 30))
        .expect("sparse file");
    for args in [
        vec!["--json", "verify", "/dev/zero", "--trust-root", "root.json"],
        vec!["--json", "verify", "big", "--trust-root", "root.json"],
        vec!["--json", "verify", "p3.dsse", "--trust-root", "/dev/zero"],
        vec![
            "--json",
            "sign",
            "--type",
            "policy",
            "--key",
            "/dev/zero",
            "p3.json",
        ],
        vec![
            "--json",
            "sign",
            "--type",
            "policy",
            "--key",
            "a.key",
            "/dev/zero",
        ],
        vec!["--json", "load", "--prefix", "dev", "/dev/zero"],
    ] {
        let r = trustctl(d, &args);
        assert!(
            r.code == 1 || r.code == 3,
            "{args:?}: exit {} {}{}",
            r.code,
            r.stdout,
            r.stderr
        );
        let v = json(&r);
        assert_eq!(v["ok"], false, "{args:?}: {v}");
        assert!(
            v["reason"]
                .as_str()
                .unwrap_or_default()
                .contains("larger than"),
            "{args:?}: {v}"
        );
    }
    // The bundle itself, too large: refused as invalid input (exit 1).
    let r = trustctl(d, &["--json", "verify", "big", "--trust-root", "root.json"]);
    assert_eq!(r.code, 1, "{}", r.stdout);
}

/// Inputs trustctl made without a word that can never be right: a second `--role` for the
/// same role silently replaced the first, a trust root expiring before it was issued was
/// written (and accepted as provisioned), and `keygen --out dir/` wrote hidden `dir/.key`.
#[test]
fn trust_root_and_keygen_refuse_what_cannot_be_meant() {
    let d = tempfile::tempdir().expect("tempdir");
    let d = d.path();
    setup(d);
    let base = [
        "--json",
        "trust-root",
        "--role",
        "policy=1:a.pub",
        "--role",
        "intel=1:r.pub",
        "--role",
        "command=1:r.pub",
    ];
    let mut twice = base.to_vec();
    twice.extend(["--role", "root=1:r.pub", "--role", "root=1:x.pub"]);
    let r = trustctl(d, &twice);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        json(&r)["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("given twice")
    );

    let mut backwards = base.to_vec();
    backwards.extend([
        "--role",
        "root=1:r.pub",
        "--expires",
        "2020-01-01T00:00:00Z",
    ]);
    let r = trustctl(d, &backwards);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        json(&r)["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("is after expires_at"),
        "{}",
        r.stdout
    );
    // The same root provisioned by hand is refused too: it can never have been valid.
    let mut root: Value =
        serde_json::from_slice(&std::fs::read(d.join("root.json")).expect("root")).expect("json");
    root["expires_at"] = "2020-01-01T00:00:00Z".into();
    std::fs::write(d.join("backwards.json"), root.to_string()).expect("write");
    let r = trustctl(
        d,
        &[
            "--json",
            "verify",
            "p3.dsse",
            "--trust-root",
            "backwards.json",
        ],
    );
    assert_ne!(r.code, 0, "{}", r.stdout);

    std::fs::create_dir(d.join("keys")).expect("mkdir");
    for out in ["keys/", "keys"] {
        let r = trustctl(d, &["--json", "keygen", "--out", out]);
        assert_eq!(r.code, 1, "{out}: {}{}", r.stdout, r.stderr);
        assert!(
            json(&r)["reason"]
                .as_str()
                .unwrap_or_default()
                .contains("not a directory")
        );
    }
    assert_eq!(std::fs::read_dir(d.join("keys")).expect("dir").count(), 0);
}

/// stdout closed early or full: trustctl panicked (exit 101, outside the exit-code rule).
/// It now ends with exit 3 (the system failed) and never panics.
#[test]
fn a_closed_or_full_stdout_ends_trustctl_inside_the_exit_code_rule() {
    let d = tempfile::tempdir().expect("tempdir");
    let d = d.path();
    setup(d);
    let full = std::process::Command::new(tests::bin("trustctl"))
        .current_dir(d)
        .args(["--json", "verify", "p3.dsse", "--trust-root", "root.json"])
        .stdout(std::fs::File::create("/dev/full").expect("/dev/full"))
        .output()
        .expect("trustctl");
    let err = String::from_utf8_lossy(&full.stderr);
    assert_eq!(full.status.code(), Some(3), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    // Non-UTF-8 file names are fine in --json output (shown lossily), never a panic.
    let o = std::process::Command::new(tests::bin("trustctl"))
        .current_dir(d)
        .args(["--json", "keygen", "--out"])
        .arg(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(b"k\xff"))
        .output()
        .expect("trustctl");
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: Value = serde_json::from_str(out.trim()).expect("one JSON line");
    assert_eq!(v["ok"], true, "{v}");
}
