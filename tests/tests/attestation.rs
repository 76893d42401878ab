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

const TOOLS: &[&str] = &["ip", "nft", "dbus-daemon", "swtpm"];

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
