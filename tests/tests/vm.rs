//! The in-VM suite: builds trustd's Debian package from this build's binaries, builds (or
//! restores from cache) the Enigm OS image and installs the package in it with dpkg, then boots it under QEMU three times on one disk and runs
//! `vm-suite` inside (boot order, READY, posture over the real system bus, bundles, privacy,
//! SIGKILL, SIGSTOP and the watchdog, an OOM kill, the package upgraded in place, a power cut
//! mid-burst, a missing binary at boot, bus activation, the journal, systemd-analyze security).
//!
//! The VM has a TPM (swtpm behind a TPM CRB device, kept across the three boots) and IMA on.
//! The suite puts trustd's reports for nonces chosen here, and the evidence to check them
//! (the device key, the TPM's AK and EK), on the results; this side checks them with
//! `trustctl posture verify --ak` and tpm2-tools' `tpm2_checkquote`: the honest report
//! verifies, root's forgery (a rewritten audit log, its checkpoint re-signed with the stolen
//! device key, quoted by the TPM) is refused with the reason, and the report after the
//! reboot names the reboot through the TPM's reset count.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use tests::bin_dir;
use tests::lab::can_run;
use trustd::bundle::{PrivateKeyFile, generate_key};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("repo")
}

/// A trust root with one key for every role; the private key goes on the tests disk.
fn provision(etc: &Path, tests: &Path) {
    let key = generate_key().expect("key");
    let root = tests::lab::trust_root(&key, &[&key], 1);
    std::fs::write(
        etc.join("trust-root.json"),
        serde_json::to_vec_pretty(&root).expect("json"),
    )
    .expect("trust root");
    std::fs::create_dir_all(tests.join("keys")).expect("mkdir");
    std::fs::write(
        tests.join("keys/policy.key"),
        serde_json::to_vec(&PrivateKeyFile::new(&key)).expect("json"),
    )
    .expect("key");
}

fn copy_stripped(from: &Path, to: &Path) {
    std::fs::copy(from, to).expect("copy");
    let _ = Command::new("strip").arg("--strip-debug").arg(to).status();
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// `deb` again as version `<its version>+upgrade1` (same files and maintainer scripts): what
/// the suite installs over it to test an upgrade in place.
fn newer_version(deb: &Path, to: &Path, scratch: &Path) {
    let st = Command::new("dpkg-deb")
        .arg("-R")
        .arg(deb)
        .arg(scratch)
        .status()
        .expect("dpkg-deb -R");
    assert!(st.success(), "dpkg-deb -R");
    let control = scratch.join("DEBIAN/control");
    let text = std::fs::read_to_string(&control).expect("control");
    let bumped: String = text
        .lines()
        .map(|l| match l.strip_prefix("Version: ") {
            Some(v) => format!("Version: {v}+upgrade1\n"),
            None => format!("{l}\n"),
        })
        .collect();
    assert_ne!(bumped, text, "no Version field");
    std::fs::write(&control, bumped).expect("control");
    let st = Command::new("dpkg-deb")
        .args(["--root-owner-group", "-b"])
        .arg(scratch)
        .arg(to)
        .status()
        .expect("dpkg-deb -b");
    assert!(st.success(), "dpkg-deb -b");
}

#[test]
fn the_suite_passes_inside_the_enigm_os_image() {
    if !can_run(&[
        "qemu-system-x86_64",
        "mmdebstrap",
        "dpkg-buildpackage",
        "dh",
        "lintian",
        "mkfs.ext4",
        "zstd",
        "cpio",
        "swtpm",
        "tpm2_checkquote",
    ]) {
        return;
    }
    let work = tempfile::tempdir().expect("tempdir");
    let (etc, tests, out) = (
        work.path().join("etc"),
        work.path().join("tests"),
        work.path().join("vm"),
    );
    for d in [&etc, &tests] {
        std::fs::create_dir_all(d).expect("mkdir");
    }
    provision(&etc, &tests);
    for b in ["vm-suite", "netprobe"] {
        copy_stripped(&bin_dir().join(b), &tests.join(b));
    }
    // The suite in its own process group, and whatever it leaves behind killed when it ends:
    // a leftover child holding the output pipe would keep the runner (and the VM) waiting
    // for end of file until the run's timeout, after a failure most of all.
    // The nonces the reports answer, chosen here: boot 2's honest and forged reports, boot 3's.
    let nonces: Vec<String> = (0..3).map(|_| nonce()).collect();
    std::fs::write(tests.join("tpm-nonces"), nonces.join("\n")).expect("nonces");
    std::fs::write(
        tests.join("run"),
        "#!/bin/sh\nsetsid ./vm-suite &\npid=$!\nwait $pid\nrc=$?\nkill -KILL -- -$pid 2>/dev/null\nexit $rc\n",
    )
    .expect("run");
    std::fs::set_permissions(tests.join("run"), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");

    // The package as an OS team builds it (this build's binaries), and a newer version of
    // it on the tests disk for the in-place upgrade.
    let t = std::time::Instant::now();
    let pkg = work.path().join("package");
    let st = Command::new(repo().join("scripts/package.sh"))
        .arg(&pkg)
        .env("TRUSTD_BIN_DIR", bin_dir())
        .env("DEB_BUILD_OPTIONS", "noautodbgsym")
        .status()
        .expect("package.sh");
    assert!(st.success(), "package.sh failed");
    let deb = std::fs::read_dir(&pkg)
        .expect("ls")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .expect("a .deb");
    newer_version(
        &deb,
        &tests.join("trustd-upgrade.deb"),
        &work.path().join("unpacked"),
    );
    eprintln!("package built in {:.1?}", t.elapsed());

    let t = std::time::Instant::now();
    let st = Command::new(repo().join("qemu-image/assemble.sh"))
        .arg(&out)
        .env("TRUSTD_DEB", &deb)
        .env("TRUSTD_ETC", &etc)
        .status()
        .expect("assemble.sh");
    assert!(st.success(), "assemble.sh failed");
    eprintln!("image assembled in {:.1?}", t.elapsed());

    let t = std::time::Instant::now();
    let o = Command::new(repo().join("qemu-image/run.sh"))
        .arg(&out)
        .arg("--test")
        .arg(&tests)
        .arg("--persist")
        .output()
        .expect("run.sh");
    let stdout = String::from_utf8_lossy(&o.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&o.stderr));
    eprintln!("VM suite finished in {:.1?}", t.elapsed());
    assert_eq!(o.status.code(), Some(0), "the in-VM suite failed");
    for expect in [
        "ok: boot order",
        "ok: bundle serial 1 applied",
        "ok: SIGKILL",
        "ok: SIGSTOP",
        "ok: OOM kill",
        "ok: after the power cut",
        "ok: package upgraded in place",
        "ok: binary missing at boot",
        "ok: memory with a 100k feed",
        "ok: blocklist table ownership",
        "ok: bus activation",
        "ok: journal:",
        "ok: systemd-analyze security exposure",
        "ok: vTPM:",
        "ok: TPM forgery by root",
        "ok: vTPM after the reboot",
    ] {
        assert!(stdout.contains(expect), "missing {expect:?}");
    }
    check_tpm_evidence(&stdout, &nonces, &work.path().join("evidence"));
}

/// A nonce for a report: 32 hex characters from the kernel's random source.
fn nonce() -> String {
    let mut b = [0u8; 16];
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("urandom");
    trustd::bundle::hex(&b)
}

fn run(cmd: &mut Command) -> (bool, String) {
    let o = cmd.output().expect("run a tool");
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

/// tpm2_checkquote on a report's quote, its PCR values and the qualifying data `qual` (hex).
fn checkquote(report: &Path, ak: &Path, qual: &str, dir: &Path) -> (bool, String) {
    let env: serde_json::Value =
        serde_json::from_slice(&std::fs::read(report).expect("report")).expect("envelope");
    let payload = STANDARD
        .decode(env["payload"].as_str().expect("payload"))
        .expect("b64");
    let v2: serde_json::Value = serde_json::from_slice(&payload).expect("v2");
    let a = &v2["attestation"];
    let b64 = |k: &str| STANDARD.decode(a[k].as_str().expect(k)).expect("b64");
    std::fs::write(dir.join("quote.msg"), b64("quote")).expect("msg");
    std::fs::write(dir.join("quote.sig"), b64("signature")).expect("sig");
    let pcrs = a["pcrs"].as_object().expect("pcrs");
    let mut idx: Vec<u32> = pcrs.keys().map(|k| k.parse().expect("index")).collect();
    idx.sort_unstable();
    let mut values = Vec::new();
    for i in &idx {
        let hex = pcrs[&i.to_string()].as_str().expect("hex");
        values
            .extend((0..32).map(|j| u8::from_str_radix(&hex[2 * j..2 * j + 2], 16).expect("hex")));
    }
    std::fs::write(dir.join("quote.pcrs"), &values).expect("pcrs");
    let list = format!(
        "sha256:{}",
        idx.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
    );
    let mut c = Command::new("tpm2_checkquote");
    c.arg("-u")
        .arg(ak)
        .arg("-m")
        .arg(dir.join("quote.msg"))
        .arg("-s")
        .arg(dir.join("quote.sig"))
        .args(["-g", "sha256", "-q", qual]);
    // tpm2-tools 5.4 cannot check PCR values for a selection of 8 PCRs or more (the firmware's
    // PCRs 0-7 hold values in the VM, so 10 are quoted): "Failed to hash PCR values related to
    // quote" (tpm2-software/tpm2-tools#3542). Then tpm2_checkquote checks the signature and
    // the qualifying data, and the PCR values are checked against the quote as tpm2_print
    // parses it: its PCR selection and digest (SHA-256 of the values in order).
    if idx.len() < 8 {
        c.arg("-f").arg(dir.join("quote.pcrs")).args(["-l", &list]);
        return run(&mut c);
    }
    let (ok, mut out) = run(&mut c);
    if !ok {
        return (ok, out);
    }
    let (ok, printed) = run(Command::new("tpm2_print")
        .args(["-t", "TPMS_ATTEST"])
        .arg(dir.join("quote.msg")));
    assert!(ok, "tpm2_print: {printed}");
    let field = |name: &str| {
        printed
            .lines()
            .rev()
            .find_map(|l| l.trim().strip_prefix(name))
            .map(|v| v.trim().to_owned())
            .unwrap_or_default()
    };
    let mut select = [0u8; 3];
    for i in &idx {
        select[(*i / 8) as usize] |= 1 << (*i % 8);
    }
    use sha2::Digest as _;
    let digest = trustd::bundle::hex(&sha2::Sha256::digest(&values));
    let (want_select, want_digest) = (trustd::bundle::hex(&select), field("pcrDigest:"));
    let same = field("pcrSelect:") == want_select && want_digest == digest;
    out.push_str(&format!(
        "tpm2_print: pcrSelect {} pcrDigest {want_digest}; the report's PCRs {list}: select {want_select}, SHA-256 of the values {digest}\n",
        field("pcrSelect:")
    ));
    (same, out)
}

/// The evidence the suite put on the results, checked here as a verifier would: with
/// trustctl (DSSE signature, quote, event log replay, audit proofs, reboot) and with
/// tpm2_checkquote (the quote's signature by the AK, PCR values, qualifying data).
fn check_tpm_evidence(stdout: &str, nonces: &[String], dir: &Path) {
    std::fs::create_dir_all(dir).expect("mkdir");
    let mut names = Vec::new();
    for line in stdout.lines() {
        if let Some((name, b64)) = line
            .strip_prefix("evidence: ")
            .and_then(|r| r.split_once(' '))
        {
            assert!(!name.contains('/'), "{name}");
            std::fs::write(dir.join(name), STANDARD.decode(b64.trim()).expect("base64"))
                .expect("evidence");
            names.push(name.to_owned());
        }
    }
    for want in [
        "device.pub",
        "tpm-ak.pem",
        "tpm-ek.pem",
        "report-honest.json",
        "report-forged.json",
        "report-rebooted.json",
    ] {
        assert!(names.iter().any(|n| n == want), "no {want} in {names:?}");
    }
    let f = |n: &str| dir.join(n).display().to_string();
    let verify = |report: &str, nonce: &str, more: &[&str]| {
        let mut c = Command::new(bin_dir().join("trustctl"));
        c.args(["posture", "verify", &f(report), "--nonce", nonce])
            .args(["--key", &f("device.pub"), "--ak", &f("tpm-ak.pem")])
            .args(more);
        run(&mut c)
    };
    let qualifying = |report: &str, nonce: &str| {
        let key = trustd::bundle::PublicKeyFile::load(&dir.join("device.pub")).expect("key");
        let bytes = std::fs::read(dir.join(report)).expect("report");
        let o = trustd::report::open_report(&bytes, nonce, &key).expect("signed by the device key");
        trustd::bundle::hex(&o.qualifying)
    };
    let ak = dir.join("tpm-ak.pem");

    // The honest report of boot 2.
    let (ok, out) = verify("report-honest.json", &nonces[0], &[]);
    eprintln!("trustctl posture verify (honest report):\n{out}");
    assert!(ok && out.contains("TPM quote verified"), "{out}");
    let (ok, out) = checkquote(
        &dir.join("report-honest.json"),
        &ak,
        &qualifying("report-honest.json", &nonces[0]),
        dir,
    );
    assert!(
        ok,
        "tpm2_checkquote refused the honest report's quote: {out}"
    );
    let (ok, _) = checkquote(&dir.join("report-honest.json"), &ak, &"00".repeat(32), dir);
    assert!(!ok, "tpm2_checkquote accepted other qualifying data");
    eprintln!("tpm2_checkquote: the honest report's quote verifies with tpm-ak.pem");

    // Root's forgery: the TPM did quote it (tpm2_checkquote cannot tell), trustctl refuses it.
    let (ok, out) = verify("report-forged.json", &nonces[1], &[]);
    eprintln!("trustctl posture verify (root's forged report):\n{out}");
    assert!(!ok, "the forged report verified: {out}");
    assert!(
        out.contains("TPM evidence:") && out.contains("rewritten"),
        "refused without saying the log was rewritten: {out}"
    );
    let (ok, out) = checkquote(
        &dir.join("report-forged.json"),
        &ak,
        &qualifying("report-forged.json", &nonces[1]),
        dir,
    );
    eprintln!(
        "tpm2_checkquote on the forged report's quote: {} (root had the TPM quote it: the quote alone cannot tell; the event log replay and the audit proofs do){}",
        if ok { "accepted" } else { "refused" },
        if ok {
            String::new()
        } else {
            format!(": {out}")
        }
    );

    // The report after the reboot, against the honest one of boot 2.
    let (ok, out) = verify(
        "report-rebooted.json",
        &nonces[2],
        &[
            "--earlier",
            &f("report-honest.json"),
            "--earlier-nonce",
            &nonces[0],
        ],
    );
    eprintln!("trustctl posture verify --earlier (after the reboot):\n{out}");
    assert!(ok, "{out}");
    assert!(
        out.contains("rebooted between the reports (TPM reset count"),
        "the reboot is not named: {out}"
    );
    let (ok, out) = checkquote(
        &dir.join("report-rebooted.json"),
        &ak,
        &qualifying("report-rebooted.json", &nonces[2]),
        dir,
    );
    assert!(
        ok,
        "tpm2_checkquote refused the report after the reboot: {out}"
    );
}
