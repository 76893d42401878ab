//! trustd's TPM evidence against a real TPM (swtpm, started by each test on free loopback
//! ports and killed with it) and checked by tools no one here wrote: tpm2-tools'
//! `tpm2_checkquote` verifies the exported quote, signature and PCR values with the
//! attestation key's PEM, and `tpm2_pcrread` reads the PCR that trustd's event log replays
//! to. Without swtpm or tpm2-tools the tests skip, except under CI=true, where they fail.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use common::swtpm::Swtpm;
use common::*;
use trustd::audit::Actor;
use trustd::daemon::Device;
use trustd::netfilter::RecordingBackend;
use trustd::tpm::{EsapiTpm, TRUSTD_PCR, Tpm as _};

const TOOLS: &[&str] = &["swtpm", "tpm2_checkquote", "tpm2_pcrread"];

fn open_with_tpm(dev: &TestDevice, tpm: &Swtpm) -> Device {
    let mut d = Device::open(&dev.paths, Actor::this_process()).expect("open");
    let t = EsapiTpm::open(&tpm.tcti(), dev.paths.tpm_ak_blob()).expect("TPM opens");
    t.identity()
        .export(&dev.paths.state_dir())
        .expect("export the TPM's public keys");
    d.attach_tpm(Box::new(t)).expect("attach");
    d
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

/// Write the quote of a report as tpm2-tools takes it; returns the PCR list (`sha256:..`).
fn export_quote(report: &str, dir: &Path) -> String {
    let env: serde_json::Value = serde_json::from_str(report).expect("envelope");
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
    std::fs::write(dir.join("quote.pcrs"), values).expect("pcrs");
    format!(
        "sha256:{}",
        idx.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
    )
}

fn report_and_check(d: &Device, dev: &TestDevice, nonce: &str) -> trustd::tpm::verify::Verdict {
    let report = d.report(nonce, now()).expect("report");
    let key = trustd::report::load_or_create_key(&dev.paths)
        .expect("key")
        .0
        .verifying_key();
    let opened = trustd::report::open_report(report.as_bytes(), nonce, &key).expect("opens");
    assert_eq!(opened.signer, trustd::report::SIGNER_TPM);
    let pem = std::fs::read_to_string(dev.paths.state_dir().join("tpm-ak.pem")).expect("ak pem");
    let ak = trustd::tpm::quote::ak_from_pem(&pem).expect("ak");
    let v = trustd::tpm::verify::verify(&opened, &ak, &key).expect("our verifier agrees");

    // tpm2_checkquote agrees: signature, PCR values, qualifying data.
    let work = dev.dir.path();
    let list = export_quote(&report, work);
    let q = trustd::bundle::hex(&opened.qualifying);
    let ak_file = dev.paths.state_dir().join("tpm-ak.pem");
    let check = |qual: &str| {
        run(Command::new("tpm2_checkquote")
            .arg("-u")
            .arg(&ak_file)
            .arg("-m")
            .arg(work.join("quote.msg"))
            .arg("-s")
            .arg(work.join("quote.sig"))
            .arg("-f")
            .arg(work.join("quote.pcrs"))
            .args(["-l", &list, "-g", "sha256", "-q", qual]))
    };
    let (ok, out) = check(&q);
    assert!(ok, "tpm2_checkquote refused the quote: {out}");
    let (ok, _) = check(&"00".repeat(32));
    assert!(
        !ok,
        "tpm2_checkquote accepted another nonce's qualifying data"
    );
    v
}

/// The whole chain on a real TPM: the AK is made in the TPM and kept across restarts;
/// start, enforcement and checkpoints are measured into PCR 13; a report's quote verifies
/// with tpm2_checkquote and with trustctl's checks; the event log replays to the PCR that
/// tpm2_pcrread reads; a reboot (the TPM power-cycled) is named by the next report.
#[test]
fn a_swtpm_quote_verifies_with_tpm2_checkquote_and_the_event_log_replays() {
    if !can_run_privileged(TOOLS) {
        return;
    }
    let dev = TestDevice::new();
    let mut tpm = Swtpm::start(&dev.dir.path().join("swtpm"));
    let first_ak;
    let first;
    {
        let mut d = open_with_tpm(&dev, &tpm);
        d.apply_policy(&signed_policy(1), Actor::this_process(), now())
            .expect("policy");
        d.enforce(&mut RecordingBackend::default(), Actor::this_process())
            .expect("enforce");
        first = report_and_check(&d, &dev, "nonce-first-1");
        first_ak = d.tpm_identity().expect("identity").ak_name;
        assert!(first.events.len() >= 3, "{:?}", first.events);
        // A verifier holding only tpm-ak.pem names the AK as the TPM does (trustd's AK
        // template), and that is the name every measured start carries.
        let pem =
            std::fs::read_to_string(dev.paths.state_dir().join("tpm-ak.pem")).expect("ak pem");
        let ak = trustd::tpm::quote::ak_from_pem(&pem).expect("ak");
        assert_eq!(trustd::tpm::credential::ak_name_of(&ak), first_ak);
        let public = std::fs::read(dev.paths.state_dir().join("tpm-ak.pub")).expect("ak pub");
        assert_eq!(public, trustd::tpm::credential::ak_public_area(&ak));

        // The event log since boot replays to the PCR as tpm2_pcrread reads it.
        let log = trustd::tpm::EventLog::open(&dev.paths.measurement_log()).expect("log");
        let replayed = trustd::tpm::eventlog::replay(log.events()).expect("replays");
        let (ok, out) = run(Command::new("tpm2_pcrread")
            .args(["-T", &tpm.tcti()])
            .arg(format!("sha256:{TRUSTD_PCR}")));
        assert!(ok, "{out}");
        assert!(
            out.to_lowercase().contains(&trustd::bundle::hex(&replayed)),
            "tpm2_pcrread: {out}, replay: {}",
            trustd::bundle::hex(&replayed)
        );
    }
    // trustd restarts: the same AK (its blob loads), the log goes on.
    {
        let mut d = open_with_tpm(&dev, &tpm);
        assert_eq!(d.tpm_identity().expect("identity").ak_name, first_ak);
        d.enforce(&mut RecordingBackend::default(), Actor::this_process())
            .expect("enforce");
        let later = report_and_check(&d, &dev, "nonce-second-2");
        let notes = trustd::tpm::verify::compare(&first, &later).expect("extends");
        assert!(notes.is_empty(), "{notes:?}");
        assert!(later.events.starts_with(&first.events));
    }
    // A reboot: the TPM is power-cycled and /run is empty again.
    tpm = tpm.reboot();
    std::fs::remove_file(dev.paths.measurement_log()).expect("a reboot empties /run");
    {
        let d = open_with_tpm(&dev, &tpm);
        assert_eq!(d.tpm_identity().expect("identity").ak_name, first_ak);
        let after = report_and_check(&d, &dev, "nonce-third-3");
        let notes = trustd::tpm::verify::compare(&first, &after).expect("follows");
        assert!(notes.iter().any(|n| n.contains("rebooted")), "{notes:?}");
        assert!(after.clock.reset_count > first.clock.reset_count);
    }
}

/// What the TPM costs on swtpm (printed; run with `--nocapture` to read them): one PCR
/// extend (a measurement), one whole report with its quote, and offline verifications per
/// second. Bounds are loose: a quote must not take seconds.
#[test]
fn tpm_costs_on_swtpm() {
    if !can_run_privileged(TOOLS) {
        return;
    }
    let dev = TestDevice::new();
    let tpm = Swtpm::start(&dev.dir.path().join("swtpm"));
    let mut d = open_with_tpm(&dev, &tpm);
    d.apply_policy(&signed_policy(1), Actor::this_process(), now())
        .expect("policy");
    let n = 50;
    let t = Instant::now();
    for _ in 0..n {
        d.enforce(&mut RecordingBackend::default(), Actor::this_process())
            .expect("enforce");
    }
    let enforce_ms = t.elapsed().as_secs_f64() * 1000.0 / f64::from(n);
    let mut without = Device::open(&TestDevice::new().paths, Actor::this_process()).expect("open");
    without
        .apply_policy(&signed_policy(1), Actor::this_process(), now())
        .expect("policy");
    let t = Instant::now();
    for _ in 0..n {
        without
            .enforce(&mut RecordingBackend::default(), Actor::this_process())
            .expect("enforce");
    }
    let plain_ms = t.elapsed().as_secs_f64() * 1000.0 / f64::from(n);
    let t = Instant::now();
    let mut last = String::new();
    for i in 0..n {
        last = d
            .report(&format!("nonce-cost-{i:04}"), now())
            .expect("report");
    }
    let report_ms = t.elapsed().as_secs_f64() * 1000.0 / f64::from(n);
    let key = trustd::report::load_or_create_key(&dev.paths)
        .expect("key")
        .0
        .verifying_key();
    let pem = std::fs::read_to_string(dev.paths.state_dir().join("tpm-ak.pem")).expect("pem");
    let ak = trustd::tpm::quote::ak_from_pem(&pem).expect("ak");
    let nonce = format!("nonce-cost-{:04}", n - 1);
    let t = Instant::now();
    let m = 200;
    for _ in 0..m {
        let o = trustd::report::open_report(last.as_bytes(), &nonce, &key).expect("opens");
        trustd::tpm::verify::verify(&o, &ak, &key).expect("verifies");
    }
    let per_s = f64::from(m) / t.elapsed().as_secs_f64();
    eprintln!(
        "swtpm: enforce (fake nft) with its measurement {enforce_ms:.2} ms vs {plain_ms:.2} ms without a TPM; \
         whole report with checkpoint and quote {report_ms:.1} ms; {per_s:.0} verifications/s \
         of a {} byte report",
        last.len()
    );
    assert!(report_ms < 2000.0, "a report took {report_ms} ms");
}

/// Security regression test: root on the device replaces the AK blob (`tpm-ak.json`) with the
/// blob of an unrestricted ECDSA signing key it made under the same EK (as `tpm2_create`
/// would). Loaded as the AK, that key signs any `TPMS_ATTEST` root writes (`TPM2_Sign`), so a
/// verifier that enrolls the exported `tpm-ak.pem` would accept forged quotes of any PCR
/// values. trustd must not use such a blob: it makes a restricted AK again and says why the
/// one in the blob was replaced.
#[test]
fn a_planted_unrestricted_signing_key_is_not_used_as_the_attestation_key() {
    use std::str::FromStr as _;
    use tss_esapi::abstraction::{DefaultKey, KeyCustomization, ak, ek};
    use tss_esapi::attributes::ObjectAttributesBuilder;
    use tss_esapi::interface_types::algorithm::{
        AsymmetricAlgorithm, HashingAlgorithm, SignatureSchemeAlgorithm,
    };
    use tss_esapi::traits::Marshall as _;

    struct Unrestricted;
    impl KeyCustomization for Unrestricted {
        fn attributes(&self, b: ObjectAttributesBuilder) -> ObjectAttributesBuilder {
            b.with_restricted(false)
        }
    }

    if !can_run_privileged(TOOLS) {
        return;
    }
    let dev = TestDevice::new();
    let tpm = Swtpm::start(&dev.dir.path().join("swtpm"));
    let planted_pem = {
        let conf = tss_esapi::TctiNameConf::from_str(&tpm.tcti()).expect("tcti");
        let mut ctx = tss_esapi::Context::new(conf).expect("context");
        let ek = ek::create_ek_object(&mut ctx, AsymmetricAlgorithm::Ecc, None::<DefaultKey>)
            .expect("EK");
        let made = ak::create_ak(
            &mut ctx,
            ek,
            HashingAlgorithm::Sha256,
            SignatureSchemeAlgorithm::EcDsa,
            None,
            Unrestricted,
        )
        .expect("an unrestricted signing key under the EK");
        ctx.flush_context(ek.into()).expect("flush the EK");
        let tss_esapi::structures::Public::Ecc {
            unique,
            object_attributes,
            ..
        } = &made.out_public
        else {
            panic!("an ECC key");
        };
        assert!(!object_attributes.restricted() && object_attributes.sign_encrypt());
        let blob = serde_json::json!({
            "public": STANDARD.encode(made.out_public.marshall().expect("public")),
            "private": STANDARD.encode(made.out_private.value()),
        });
        let path = dev.paths.tpm_ak_blob();
        std::fs::create_dir_all(path.parent().expect("dir")).expect("state dir");
        std::fs::write(&path, blob.to_string()).expect("plant the blob");
        trustd::tpm::quote::p256_pem(unique.x().value(), unique.y().value()).expect("pem")
    };
    let t = EsapiTpm::open(&tpm.tcti(), dev.paths.tpm_ak_blob()).expect("TPM opens");
    let id = t.identity();
    assert_ne!(
        id.ak_public, planted_pem,
        "the planted unrestricted key became the attestation key"
    );
    assert!(
        id.created
            && id
                .replaced
                .as_deref()
                .is_some_and(|r| r.contains("restricted")),
        "the planted blob is replaced and the reason says why: {:?}",
        id.replaced
    );
}
