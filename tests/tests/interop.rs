//! trustd's evidence and signed inputs checked by verifiers that share no code with it: Go's
//! `golang.org/x/mod/sumdb/note` and `sumdb/tlog` read its checkpoints (with the device's
//! signed-note verifier key), inclusion proofs (against `trustctl audit export`) and
//! consistency proofs; Python's securesystemslib checks its DSSE envelopes and posture reports,
//! and signs envelopes (keyid as trustd writes it, as securesystemslib writes it, or none)
//! that trustctl and the running daemon accept. Tampering is caught by the outside tools too.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};
use tests::bus::BusPolicy;
use tests::lab::{can_run, lab_policy, serve, skip};
use tests::{Run, trustctl};

const TOOLS: &[&str] = &["ip", "nft", "dbus-daemon", "go"];

fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("interop")
}

fn run(cmd: &mut Command) -> Run {
    cmd.output().expect("run").into()
}

/// Go's verifier, built from tests/interop/tlogverify.go against Debian's
/// golang-golang-x-mod-dev (GOPATH mode: nothing is fetched).
fn tlogverify(work: &Path) -> PathBuf {
    let out = work.join("tlogverify");
    let r = run(Command::new("go")
        .args(["build", "-o"])
        .arg(&out)
        .arg(interop_dir().join("tlogverify.go"))
        .env("GO111MODULE", "off")
        .env("GOPATH", "/usr/share/gocode")
        .env("GOCACHE", work.join("gocache"))
        .env("GOFLAGS", ""));
    assert_eq!(r.code, 0, "go build: {}{}", r.stdout, r.stderr);
    out
}

/// A Python with securesystemslib's DSSE module: `TRUSTD_INTEROP_PYTHON`, or the venv
/// scripts/test.sh makes (target/interop-venv). None (and a skip, a failure under CI=true)
/// when there is neither.
fn sslib_python() -> Option<PathBuf> {
    let python = std::env::var_os("TRUSTD_INTEROP_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/interop-venv/bin/python")
        });
    let ok = Command::new(&python)
        .args(["-c", "import securesystemslib.dsse"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        skip(&format!(
            "no Python with securesystemslib at {} (scripts/test.sh makes it)",
            python.display()
        ));
        return None;
    }
    Some(python)
}

#[test]
fn go_note_and_tlog_verify_checkpoints_and_proofs_with_the_device_vkey() {
    if !can_run(TOOLS) {
        return;
    }
    let (mut lab, mut daemon) = serve("io", lab_policy("direct"), BusPolicy::Shipped);
    let bus = daemon.bus.address.clone();
    let work = lab.prefix.path().to_owned();
    let prefix = work.display().to_string();
    let go = tlogverify(&work);
    let online = |args: &[&str]| -> Run {
        let mut all = vec!["--bus", bus.as_str()];
        all.extend(args);
        trustctl(&work, &all)
    };
    let ctl = |args: &[&str]| -> Run { trustctl(&work, args) };
    let verify = |args: &[&str]| -> Run { run(Command::new(&go).args(args).current_dir(&work)) };

    // The device publishes its key as one signed-note verifier key line named by its origin.
    let vkey_path = lab.paths().device_vkey();
    let vkey = std::fs::read_to_string(&vkey_path).expect("device.vkey");
    assert!(
        vkey.ends_with('\n') && vkey.lines().count() == 1,
        "{vkey:?}"
    );
    assert!(vkey.starts_with("enigm.org/trustd/"), "{vkey}");
    let vkey_arg = vkey_path.display().to_string();

    assert_eq!(online(&["audit", "checkpoint", "-o", "old.cp"]).code, 0);
    for on in ["on", "off", "on"] {
        assert_eq!(online(&["privacy", on]).code, 0);
    }
    let b = lab.sign(lab_policy("direct"));
    assert_eq!(
        online(&["policy", "apply", &b.display().to_string()]).code,
        0
    );
    assert_eq!(online(&["audit", "checkpoint", "-o", "new.cp"]).code, 0);

    // Go opens both notes with the vkey and reads the C2SP checkpoint text.
    let r = verify(&["checkpoint", &vkey_arg, "old.cp"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let origin = vkey.split('+').next().expect("name");
    assert!(r.stdout.starts_with(origin), "{}", r.stdout);
    let r = verify(&["checkpoint", &vkey_arg, "new.cp"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let new_size: u64 = r
        .stdout
        .split(' ')
        .nth(1)
        .expect("size")
        .parse()
        .expect("n");

    // The export is JSON lines only, at least as many as the newer checkpoint covers.
    let r = ctl(&[
        "audit",
        "export",
        "--prefix",
        &prefix,
        "-o",
        "records.jsonl",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let records = std::fs::read_to_string(work.join("records.jsonl")).expect("export");
    assert!(!records.contains('\0'));
    for line in records.lines() {
        serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
    }
    assert!(records.lines().count() as u64 >= new_size);

    // Inclusion: the first record in the old checkpoint, the last one in the new; trustctl
    // takes the vkey as the device key.
    for (seq, cp) in [(1, "old.cp"), (new_size - 1, "new.cp")] {
        let seq = seq.to_string();
        let r = ctl(&[
            "--json",
            "audit",
            "prove",
            &seq,
            "--checkpoint",
            cp,
            "--key",
            &vkey_arg,
            "--prefix",
            &prefix,
        ]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        std::fs::write(work.join("prove.json"), &r.stdout).expect("write");
        let r = verify(&["inclusion", &vkey_arg, cp, "records.jsonl", "prove.json"]);
        assert_eq!(r.code, 0, "record {seq} in {cp}: {}", r.stderr);
    }

    // Consistency from the old checkpoint to the new one, with trustctl's proof hashes.
    let r = ctl(&[
        "--json",
        "audit",
        "consistency",
        "old.cp",
        "new.cp",
        "--key",
        &vkey_arg,
        "--prefix",
        &prefix,
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let cons: Value = serde_json::from_str(r.stdout.trim()).expect("json");
    assert_eq!(cons["ok"], json!(true));
    assert!(cons["proof"]["path"].is_array(), "{cons}");
    std::fs::write(work.join("cons.json"), &r.stdout).expect("write");
    let r = verify(&["consistency", &vkey_arg, "old.cp", "new.cp", "cons.json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);

    // Tampering is caught by Go too: a checkpoint's root, a record, a proof hash.
    let new_cp = std::fs::read_to_string(work.join("new.cp")).expect("new.cp");
    let mut lines: Vec<String> = new_cp.split('\n').map(str::to_owned).collect();
    let flipped = if lines[2].starts_with('A') { "B" } else { "A" };
    lines[2].replace_range(0..1, flipped);
    std::fs::write(work.join("forged.cp"), lines.join("\n")).expect("write");
    let r = verify(&["checkpoint", &vkey_arg, "forged.cp"]);
    assert_eq!(r.code, 1, "a forged checkpoint passed: {}", r.stdout);

    let altered = records.replacen("privacy", "privacX", 1);
    assert_ne!(altered, records);
    std::fs::write(work.join("altered.jsonl"), altered).expect("write");
    let first_privacy = records
        .lines()
        .position(|l| l.contains("privacy"))
        .expect("a privacy record")
        .to_string();
    let r = ctl(&[
        "--json",
        "audit",
        "prove",
        &first_privacy,
        "--checkpoint",
        "new.cp",
        "--key",
        &vkey_arg,
        "--prefix",
        &prefix,
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    std::fs::write(work.join("prove.json"), &r.stdout).expect("write");
    let r = verify(&[
        "inclusion",
        &vkey_arg,
        "new.cp",
        "altered.jsonl",
        "prove.json",
    ]);
    assert_eq!(r.code, 1, "an altered record passed: {}", r.stdout);

    let mut bad = cons.clone();
    let path = bad["new_proof"]["path"].as_array_mut().expect("path");
    assert!(!path.is_empty(), "{cons}");
    path[0] = json!("00".repeat(32));
    std::fs::write(work.join("bad.json"), bad.to_string()).expect("write");
    let r = verify(&["consistency", &vkey_arg, "old.cp", "new.cp", "bad.json"]);
    assert_eq!(r.code, 1, "a forged consistency proof passed: {}", r.stdout);

    // trustctl refuses a vkey whose name is not its key's origin (exit 1, refused).
    std::fs::write(
        work.join("renamed.vkey"),
        vkey.replacen("enigm.org", "evil.org", 1),
    )
    .expect("write");
    let r = ctl(&[
        "audit",
        "consistency",
        "old.cp",
        "--key",
        "renamed.vkey",
        "--prefix",
        &prefix,
    ]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("key ID") || r.stderr.contains("origin"),
        "{}",
        r.stderr
    );
    daemon.terminate();
}

#[test]
fn securesystemslib_and_trustd_check_each_others_dsse_envelopes() {
    if !can_run(&TOOLS[..3]) {
        return;
    }
    let Some(python) = sslib_python() else {
        return;
    };
    let (mut lab, mut daemon) = serve("ss", lab_policy("direct"), BusPolicy::Shipped);
    let bus = daemon.bus.address.clone();
    let work = lab.prefix.path().to_owned();
    let script = interop_dir().join("dsse_sslib.py");
    let py = |args: &[&str]| -> Run {
        run(Command::new(&python)
            .arg(&script)
            .args(args)
            .current_dir(&work))
    };
    let online = |args: &[&str]| -> Run {
        let mut all = vec!["--bus", bus.as_str()];
        all.extend(args);
        trustctl(&work, &all)
    };
    // The lab's policy keys as trustd key files.
    let mut private = Vec::new();
    for (i, k) in lab.keys().iter().enumerate() {
        let pk = work.join(format!("admin{i}.key"));
        let pubf = work.join(format!("admin{i}.pub"));
        std::fs::write(
            &pk,
            serde_json::to_vec(&trustd::bundle::PrivateKeyFile::new(k)).expect("json"),
        )
        .expect("write");
        std::fs::write(
            &pubf,
            serde_json::to_vec(&trustd::bundle::PublicKeyFile::new(&k.verifying_key()))
                .expect("json"),
        )
        .expect("write");
        private.push(pk.display().to_string());
    }
    let policy_type = "application/vnd.enigm.policy+json";

    // securesystemslib verifies an envelope trustd's signer wrote...
    let b = lab.sign(lab_policy("direct"));
    let r = py(&[
        "verify",
        &b.display().to_string(),
        "admin0.pub",
        policy_type,
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("\"mode\""), "{}", r.stdout);
    // ...and a posture report the daemon signed with the device key.
    let r = online(&[
        "posture",
        "report",
        "--nonce",
        "interop-nonce-1",
        "-o",
        "report.json",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let device_pub = lab.paths().device_pub().display().to_string();
    let r = py(&[
        "verify",
        "report.json",
        &device_pub,
        "application/vnd.enigm.posture-report+json",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("interop-nonce-1"), "{}", r.stdout);
    // A report altered after signing is refused by securesystemslib as well.
    let mut report: Value =
        serde_json::from_slice(&std::fs::read(work.join("report.json")).expect("read"))
            .expect("json");
    report["signatures"][0]["sig"] = json!(base64_of_zeros());
    std::fs::write(work.join("forged.json"), report.to_string()).expect("write");
    let r = py(&[
        "verify",
        "forged.json",
        &device_pub,
        "application/vnd.enigm.posture-report+json",
    ]);
    assert_eq!(r.code, 1, "{}", r.stdout);

    // Envelopes securesystemslib signs, with each keyid convention, are accepted by trustctl
    // offline and by the daemon; the device's serial moves on each time.
    let trust_root = lab.paths().provisioned_trust_root().display().to_string();
    let mut serial = 100;
    for keyid in ["trustd", "sslib", "none"] {
        serial += 1;
        let mut policy = lab_policy("direct");
        policy["serial"] = json!(serial);
        std::fs::write(work.join("policy.json"), policy.to_string()).expect("write");
        let out = format!("py-{keyid}.dsse.json");
        let mut args = vec!["sign", "policy.json", policy_type, out.as_str(), keyid];
        args.extend(private.iter().map(String::as_str));
        let r = py(&args);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let env: Value =
            serde_json::from_slice(&std::fs::read(work.join(&out)).expect("read")).expect("json");
        assert_eq!(
            env["signatures"][0].get("keyid").is_none(),
            keyid == "none",
            "{env}"
        );
        let r = trustctl(&work, &["verify", "--trust-root", &trust_root, &out]);
        assert_eq!(r.code, 0, "keyid {keyid}: {}{}", r.stdout, r.stderr);
        let r = online(&["policy", "apply", &out]);
        assert_eq!(r.code, 0, "keyid {keyid}: {}{}", r.stdout, r.stderr);
    }
    // One admin's signature is below the policy role's threshold of two, whatever its keyid.
    let r = py(&[
        "sign",
        "policy.json",
        policy_type,
        "one.dsse.json",
        "none",
        &private[0],
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = trustctl(
        &work,
        &["verify", "--trust-root", &trust_root, "one.dsse.json"],
    );
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    // The same key signing twice (two keyids) still counts once.
    let r = py(&[
        "sign",
        "policy.json",
        policy_type,
        "twice.dsse.json",
        "sslib",
        &private[0],
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let mut twice: Value =
        serde_json::from_slice(&std::fs::read(work.join("twice.dsse.json")).expect("read"))
            .expect("json");
    let mut copy = twice["signatures"][0].clone();
    copy["keyid"] = json!("another-name-for-the-same-key");
    twice["signatures"].as_array_mut().expect("sigs").push(copy);
    std::fs::write(work.join("twice.dsse.json"), twice.to_string()).expect("write");
    let r = trustctl(
        &work,
        &["verify", "--trust-root", &trust_root, "twice.dsse.json"],
    );
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    daemon.terminate();
}

fn base64_of_zeros() -> String {
    // 64 zero bytes, standard base64.
    format!("{}==", "A".repeat(86))
}
