//! TPM attestation end to end: trustd started with a TPM in trustd.json (swtpm in the
//! device's network namespace), a report fetched over the bus with `trustctl posture report`
//! and checked offline with `trustctl posture verify --ak`; trustd restarted keeps its
//! attestation key; a reboot (the TPM power-cycled) is named against the earlier report.
//! Skips without root, nft, dbus-daemon or swtpm, except under CI=true.

use serde_json::json;
use tests::bus::{self, BusPolicy};
use tests::lab::{Lab, can_run, lab_policy, wait_ready};
use tests::swtpm::Swtpm;
use tests::{Run, trustctl};

const TOOLS: &[&str] = &["ip", "nft", "dbus-daemon", "swtpm", "tpm2_checkquote"];

fn start(lab: &Lab) -> tests::lab::Daemon {
    let d = lab.run_daemon_on(BusPolicy::Shipped, 1000);
    wait_ready(&d.bus.address);
    d
}

#[test]
fn trustctl_verifies_the_tpm_quote_of_a_report_across_a_restart_and_a_reboot() {
    if !can_run(TOOLS) {
        return;
    }
    let mut lab = Lab::new("att", false);
    let b = lab.sign(lab_policy("direct"));
    lab.load(&b);
    let mut tpm = Swtpm::start_in(&lab.dev, 2321, &lab.prefix.path().join("swtpm"));
    std::fs::write(
        lab.paths().config_file(),
        json!({"admin_group": bus::ADMIN_GROUP, "setup_group": bus::SETUP_GROUP,
               "tpm": tpm.tcti()})
        .to_string(),
    )
    .expect("trustd.json");
    let work = lab.prefix.path().to_owned();
    let key = lab.paths().device_pub().display().to_string();
    let ak = lab.paths().state_dir().join("tpm-ak.pem");
    let ak = ak.display().to_string();
    let report = |d: &tests::lab::Daemon, nonce: &str, out: &str| {
        let r = trustctl(
            &work,
            &[
                "--bus",
                &d.bus.address,
                "posture",
                "report",
                "--nonce",
                nonce,
                "-o",
                out,
            ],
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
    };
    let verify = |file: &str, nonce: &str, extra: &[&str]| -> Run {
        let mut args = vec![
            "--json", "posture", "verify", file, "--nonce", nonce, "--key", &key, "--ak", &ak,
        ];
        args.extend(extra);
        trustctl(&work, &args)
    };

    let mut d = start(&lab);
    report(&d, "nonce-att-first", "first.json");
    let r = verify("first.json", "nonce-att-first", &[]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let v: serde_json::Value = serde_json::from_str(r.stdout.trim()).expect("json");
    assert_eq!(v["signer"], json!("tpm"), "{v}");
    assert_eq!(v["tpm"]["pcr"], json!(13));
    assert!(v["tpm"]["events"].as_u64() >= Some(3), "{v}");
    let ak_first = std::fs::read_to_string(&ak).expect("ak");

    // Another nonce: refused.
    let r = verify("first.json", "nonce-att-other", &[]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    // A nonce no report can carry is named as such, not as a replay.
    let r = verify("first.json", "nonce att first", &[]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(
        r.stdout.contains("not a nonce trustd answers"),
        "{}",
        r.stdout
    );

    // The AK's public area works as --ak too (named from its bytes), and the quote exported
    // with --export-quote passes tpm2-tools' tpm2_checkquote, run as printed.
    let ak_pub = lab.paths().state_dir().join("tpm-ak.pub");
    let r = trustctl(
        &work,
        &[
            "--json",
            "posture",
            "verify",
            "first.json",
            "--nonce",
            "nonce-att-first",
            "--key",
            &key,
            "--ak",
            &ak_pub.display().to_string(),
            "--export-quote",
            "quote",
        ],
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let v: serde_json::Value = serde_json::from_str(r.stdout.trim()).expect("json");
    let cmd = v["checkquote"]
        .as_str()
        .expect("the tpm2_checkquote command");
    let mut words = cmd.split_whitespace();
    assert_eq!(words.next(), Some("tpm2_checkquote"));
    assert!(cmd.contains("-u quote/ak.pem"), "{cmd}");
    let o = std::process::Command::new("tpm2_checkquote")
        .args(words)
        .current_dir(&work)
        .output()
        .expect("tpm2_checkquote");
    assert!(
        o.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&o.stderr)
    );

    // Regression: --export-quote wrote the device's bytes through links, into any existing
    // directory. An existing directory (here the one just written) is refused, and what is
    // in it stays as it was.
    let before = std::fs::read(work.join("quote/quote.msg")).expect("quote.msg");
    std::fs::remove_file(work.join("quote/quote.sig")).expect("rm");
    std::os::unix::fs::symlink("../victim", work.join("quote/quote.sig")).expect("symlink");
    let r = trustctl(
        &work,
        &[
            "posture",
            "verify",
            "first.json",
            "--nonce",
            "nonce-att-first",
            "--key",
            &key,
            "--export-quote",
            "quote",
        ],
    );
    assert_eq!(r.code, 1, "an existing directory is refused: {}", r.stderr);
    assert!(r.stderr.contains("does not exist yet"), "{}", r.stderr);
    assert_eq!(
        std::fs::read(work.join("quote/quote.msg")).expect("quote.msg"),
        before
    );
    assert!(
        !work.join("victim").exists(),
        "nothing written through the link"
    );

    // trustd restarts: same AK, the later report extends the earlier one.
    d.terminate();
    let mut d = start(&lab);
    assert_eq!(std::fs::read_to_string(&ak).expect("ak"), ak_first);
    report(&d, "nonce-att-second", "second.json");
    let r = verify(
        "second.json",
        "nonce-att-second",
        &[
            "--earlier",
            "first.json",
            "--earlier-nonce",
            "nonce-att-first",
        ],
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("no reboot"), "{}", r.stdout);
    // One nonce for both reports: refused.
    let r = verify(
        "second.json",
        "nonce-att-second",
        &[
            "--earlier",
            "first.json",
            "--earlier-nonce",
            "nonce-att-second",
        ],
    );
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(r.stdout.contains("replayed"), "{}", r.stdout);

    // A reboot: trustd stops, the TPM power-cycles, /run is emptied.
    d.terminate();
    tpm.reboot();
    std::fs::remove_file(lab.paths().measurement_log()).expect("/run emptied");
    let d = start(&lab);
    report(&d, "nonce-att-third", "third.json");
    let r = verify(
        "third.json",
        "nonce-att-third",
        &[
            "--earlier",
            "first.json",
            "--earlier-nonce",
            "nonce-att-first",
        ],
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("rebooted"), "{}", r.stdout);
    // A report without --ak is still checked as before (DSSE, nonce).
    let r = trustctl(
        &work,
        &[
            "posture",
            "verify",
            "third.json",
            "--nonce",
            "nonce-att-third",
            "--key",
            &key,
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("not checked without --ak"),
        "{}",
        r.stdout
    );
}

/// Run `sh -c script` inside the device's network namespace (where its swtpm listens).
fn sh_in(netns: &str, cwd: &std::path::Path, script: &str) -> Run {
    std::process::Command::new("ip")
        .args(["netns", "exec", netns, "sh", "-ec", script])
        .current_dir(cwd)
        .output()
        .expect("sh")
        .into()
}

/// Credential activation against the real TPM (swtpm) over the bus: a challenge made
/// offline by `trustctl tpm make-credential` and one made by tpm2-tools'
/// `tpm2_makecredential` (an outside implementation) both give back the verifier's secret;
/// a challenge made for another attestation key is refused with a reason; a caller who is
/// not an admin is refused and the refusal is audited; trustctl's tpm2-tools form opens with
/// `tpm2_activatecredential`.
#[test]
fn credential_activation_proves_the_ak_lives_beside_the_ek() {
    if !can_run(&[
        "ip",
        "nft",
        "dbus-daemon",
        "swtpm",
        "tpm2_makecredential",
        "setpriv",
    ]) {
        return;
    }
    let mut lab = Lab::new("cred", false);
    let b = lab.sign(lab_policy("direct"));
    lab.load(&b);
    let tpm = Swtpm::start_in(&lab.dev, 2331, &lab.prefix.path().join("swtpm"));
    std::fs::write(
        lab.paths().config_file(),
        json!({"admin_group": bus::ADMIN_GROUP, "setup_group": bus::SETUP_GROUP,
               "tpm": tpm.tcti()})
        .to_string(),
    )
    .expect("trustd.json");
    // A directory every user can read (the non-admin caller reads its challenge there).
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    std::fs::set_permissions(w, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let ek = lab.paths().state_dir().join("tpm-ek.pem");
    let name_file = lab.paths().state_dir().join("tpm-ak.name");
    let mut d = lab.run_daemon_on(BusPolicy::Open, 1000);
    wait_ready(&d.bus.address);
    let (ek, name_file) = (ek.display().to_string(), name_file.display().to_string());
    let secret: Vec<u8> = (0u8..32).map(|i| i.wrapping_mul(37) ^ 0x5a).collect();
    std::fs::write(w.join("secret"), &secret).expect("secret");
    let activate = |challenge: &str, out: &str| {
        trustctl(
            w,
            &[
                "--bus",
                &d.bus.address,
                "tpm",
                "activate-credential",
                challenge,
                "-o",
                out,
            ],
        )
    };

    // trustctl's own MakeCredential, then the device's TPM.
    // The verifier checks the AK's public area, names it, and ties it to the PEM it will
    // check quotes with.
    let ak_pub = lab
        .paths()
        .state_dir()
        .join("tpm-ak.pub")
        .display()
        .to_string();
    let ak_pem = lab
        .paths()
        .state_dir()
        .join("tpm-ak.pem")
        .display()
        .to_string();
    let r = trustctl(
        w,
        &[
            "tpm",
            "make-credential",
            "--ek",
            &ek,
            "--ak-public",
            &ak_pub,
            "--ak-pem",
            &ak_pem,
            "--secret",
            "secret",
            "-o",
            "challenge.json",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    // A PEM that is not that AK's key is refused before any challenge is made.
    let r = trustctl(
        w,
        &[
            "tpm",
            "make-credential",
            "--ek",
            &ek,
            "--ak-public",
            &ak_pub,
            "--ak-pem",
            &ek,
            "--secret",
            "secret",
            "-o",
            "wrong-pem.json",
        ],
    );
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("is not the key of the public area"),
        "{}",
        r.stderr
    );
    std::fs::set_permissions(
        w.join("challenge.json"),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .expect("chmod");
    let r = activate("challenge.json", "got-trustctl");
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(
        std::fs::read(w.join("got-trustctl")).expect("secret"),
        secret
    );

    // tpm2-tools' MakeCredential (no TPM), then the device's TPM.
    let name = std::fs::read_to_string(&name_file).expect("name");
    let r = sh_in(
        &lab.dev,
        w,
        &format!(
            "tpm2_makecredential -T none -G ecc -u {ek} -n {} -s secret -o tools.bin 2>/dev/null",
            name.trim()
        ),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = activate("tools.bin", "got-tools");
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(std::fs::read(w.join("got-tools")).expect("secret"), secret);

    // A challenge made for another attestation key: refused, and nothing is revealed.
    let other = format!("000b{}", "ab".repeat(32));
    let r = trustctl(
        w,
        &[
            "tpm",
            "make-credential",
            "--ek",
            &ek,
            "--ak-name",
            &other,
            "--secret",
            "secret",
            "-o",
            "other.json",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = activate("other.json", "got-other");
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("another attestation key"), "{}", r.stderr);
    assert!(!w.join("got-other").exists());

    // A caller who is not an admin: refused by trustd itself (the bus here lets anyone send).
    let o = std::process::Command::new("setpriv")
        .args(["--reuid=7", "--regid=7", "--clear-groups"])
        .arg(tests::bin("trustctl"))
        .args([
            "--bus",
            &d.bus.address,
            "tpm",
            "activate-credential",
            "challenge.json",
        ])
        .current_dir(w)
        .output()
        .expect("setpriv");
    let r: Run = o.into();
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("AccessDenied"), "{}", r.stderr);
    assert!(
        r.stdout.is_empty(),
        "no secret for a non-admin: {}",
        r.stdout
    );

    assert!(d.terminate().success());
    let records = trustd::audit::read_records(&lab.paths().audit_dir()).expect("audit");
    let of = |kind: &str| -> Vec<&trustd::audit::Record> {
        records.iter().filter(|r| r.kind == kind).collect()
    };
    let acts = of("tpm.activate-credential");
    let outcomes: Vec<String> = acts
        .iter()
        .map(|r| format!("{:?}", r.outcome).to_lowercase())
        .collect();
    assert_eq!(outcomes, ["ok", "ok", "refused"], "{acts:?}");
    assert!(
        of("authz.denied").iter().any(|r| r.actor.uid == Some(7)
            && r.reason
                .as_deref()
                .unwrap_or_default()
                .contains("ActivateCredential")),
        "the non-admin's call is audited: {:?}",
        of("authz.denied")
    );

    // trustctl's tpm2-tools form, opened by tpm2-tools' ActivateCredential with the AK loaded
    // from trustd's blob (trustd stopped: a raw swtpm serves one client at a time). A raw
    // swtpm has no resource manager: transient objects are flushed after each step (their
    // saved contexts load again).
    let blob: serde_json::Value = serde_json::from_slice(
        &std::fs::read(lab.paths().state_dir().join("tpm-ak.json")).expect("ak blob"),
    )
    .expect("json");
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    for (field, file) in [("public", "ak.pub"), ("private", "ak.priv")] {
        let raw = b64
            .decode(blob[field].as_str().expect("field"))
            .expect("base64");
        let mut sized = u16::try_from(raw.len())
            .expect("size")
            .to_be_bytes()
            .to_vec();
        sized.extend_from_slice(&raw);
        std::fs::write(w.join(file), sized).expect("write");
    }
    let r = trustctl(
        w,
        &[
            "tpm",
            "make-credential",
            "--ek",
            &ek,
            "--ak-name",
            &name_file,
            "--secret",
            "secret",
            "--format",
            "tpm2-tools",
            "-o",
            "for-tools.bin",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = sh_in(
        &lab.dev,
        w,
        &format!(
            "export TPM2TOOLS_TCTI='{}'
             tpm2_createek -G ecc -c ek.ctx
             tpm2_flushcontext -t
             tpm2_startauthsession --policy-session -S s.ctx
             tpm2_policysecret -S s.ctx -c e
             tpm2_load -C ek.ctx -u ak.pub -r ak.priv -c ak.ctx -P session:s.ctx
             tpm2_flushcontext s.ctx
             tpm2_flushcontext -t
             tpm2_startauthsession --policy-session -S s.ctx
             tpm2_policysecret -S s.ctx -c e
             tpm2_activatecredential -c ak.ctx -C ek.ctx -i for-tools.bin -o got-by-tools -P session:s.ctx
             tpm2_flushcontext s.ctx
             tpm2_flushcontext -t",
            tpm.tcti()
        ),
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(
        std::fs::read(w.join("got-by-tools")).expect("secret"),
        secret
    );
}
