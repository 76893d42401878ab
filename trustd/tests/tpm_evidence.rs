//! What the TPM evidence of a posture report stops, without a TPM: the device measures into
//! a software stand-in ([`SoftTpm`]) shared with an attacker who is root on the device, who
//! holds the device's ed25519 key and can use the TPM (extend, quote) but cannot reset a
//! PCR. The verifier's checks are trustctl's (`trustd::tpm::verify`).

mod common;

use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use common::*;
use trustd::audit::Actor;
use trustd::daemon::Device;
use trustd::netfilter::RecordingBackend;
use trustd::report::{Opened, Report, open_report, sign_report, sign_report_v2};
use trustd::tpm::{Attestation, Identity, SoftTpm, TRUSTD_PCR, Tpm, TpmError};

/// The TPM, shared by trustd and the attacker.
#[derive(Debug, Clone)]
struct Shared(Arc<Mutex<SoftTpm>>);

impl Tpm for Shared {
    fn identity(&self) -> &Identity {
        // The identity never changes: leak one copy for the test's lifetime.
        let id = self.0.lock().expect("tpm").identity().clone();
        Box::leak(Box::new(id))
    }
    fn extend(&mut self, pcr: u32, digest: &[u8; 32]) -> Result<(), TpmError> {
        self.0.lock().expect("tpm").extend(pcr, digest)
    }
    fn read_pcr(&mut self, pcr: u32) -> Result<[u8; 32], TpmError> {
        self.0.lock().expect("tpm").read_pcr(pcr)
    }
    fn quote(&mut self, pcrs: &[u32], q: &[u8]) -> Result<(Vec<u8>, Vec<u8>), TpmError> {
        self.0.lock().expect("tpm").quote(pcrs, q)
    }
}

struct Setup {
    _dev: TestDevice,
    d: Device,
    tpm: Shared,
    key: ed25519_dalek::SigningKey,
    ak: p256::ecdsa::VerifyingKey,
}

fn setup() -> Setup {
    let dev = TestDevice::new();
    let mut d = Device::open(&dev.paths, Actor::this_process()).expect("open");
    let tpm = Shared(Arc::new(Mutex::new(SoftTpm::new([9; 32]).expect("soft"))));
    d.attach_tpm(Box::new(tpm.clone())).expect("attach");
    d.apply_policy(&signed_policy(1), Actor::this_process(), now())
        .expect("policy");
    d.enforce(&mut RecordingBackend::default(), Actor::this_process())
        .expect("enforce");
    let key = trustd::report::load_or_create_key(&dev.paths)
        .expect("key")
        .0;
    let ak = *tpm.0.lock().expect("tpm").signing_key().verifying_key();
    Setup {
        _dev: dev,
        d,
        tpm,
        key,
        ak,
    }
}

fn open(s: &Setup, report: &str, nonce: &str) -> Opened {
    open_report(report.as_bytes(), nonce, &s.key.verifying_key()).expect("signed by the key")
}

fn check(s: &Setup, report: &str, nonce: &str) -> Result<trustd::tpm::verify::Verdict, String> {
    trustd::tpm::verify::verify(&open(s, report, nonce), &s.ak, &s.key.verifying_key())
}

/// The attacker's report: `body` signed with the stolen device key, with a fresh quote by the
/// TPM (root can use the AK) over the PCRs as they really are, and `events` as the log.
fn forge(
    s: &Setup,
    body: &Report,
    events: Vec<trustd::tpm::Event>,
    proofs: Vec<trustd::audit::ConsistencyProof>,
) -> String {
    forge_over(s, body, events, proofs, &trustd::tpm::quoted_pcrs())
}

/// [`forge`] with a quote over the PCRs `pcrs` of the attacker's choice.
fn forge_over(
    s: &Setup,
    body: &Report,
    events: Vec<trustd::tpm::Event>,
    proofs: Vec<trustd::audit::ConsistencyProof>,
    pcrs: &[u32],
) -> String {
    let mut tpm = s.tpm.clone();
    sign_report_v2(body, &s.key, proofs, |q| {
        let (attest, sig) = tpm.quote(pcrs, q).map_err(|e| e.to_string())?;
        let mut values = std::collections::BTreeMap::new();
        for p in pcrs {
            let v = tpm.read_pcr(*p).map_err(|e| e.to_string())?;
            values.insert(*p, trustd::bundle::hex(&v));
        }
        Ok(Some(Attestation {
            pcr: TRUSTD_PCR,
            identity: tpm.identity().clone(),
            quote: STANDARD.encode(&attest),
            signature: STANDARD.encode(&sig),
            pcrs: values,
            clock: trustd::tpm::quote::Attest::parse(&attest)
                .map_err(|e| e.to_string())?
                .clock,
            events,
        }))
    })
    .expect("forged")
}

#[test]
fn an_honest_report_verifies_and_names_what_was_measured() {
    let s = setup();
    let report = s.d.report("nonce-honest-1", now()).expect("report");
    let v = check(&s, &report, "nonce-honest-1").expect("verifies");
    let kinds: Vec<_> = v.events.iter().map(|e| e.kind).collect();
    assert_eq!(kinds[0], trustd::tpm::Kind::Start);
    assert!(kinds.contains(&trustd::tpm::Kind::Enforce), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&trustd::tpm::Kind::Checkpoint));
    // A second report: more records, a later checkpoint, proofs from every measured head.
    s.d.checkpoint().expect("checkpoint");
    let later = s.d.report("nonce-honest-2", now()).expect("report");
    let v2 = check(&s, &later, "nonce-honest-2").expect("verifies");
    assert!(
        trustd::tpm::verify::compare(&v, &v2)
            .expect("extends")
            .is_empty()
    );
    // Another nonce's report is not this one's.
    let e = trustd::tpm::verify::verify(
        &Opened {
            qualifying: open(&s, &later, "nonce-honest-2").qualifying,
            ..open(&s, &report, "nonce-honest-1")
        },
        &s.ak,
        &s.key.verifying_key(),
    )
    .expect_err("another nonce");
    assert!(e.contains("qualifying data"), "{e}");
}

/// Security regression test: root with the stolen ed25519 device key edits a signed
/// report (another ruleset) and signs it again, keeping the TPM's quote. The quote's
/// qualifying data binds the report's exact bytes, so the edit is caught.
#[test]
fn an_edited_report_resigned_with_the_stolen_device_key_fails_the_quote() {
    let s = setup();
    let report = s.d.report("nonce-edit-1234", now()).expect("report");
    let mut env: serde_json::Value = serde_json::from_str(&report).expect("env");
    let payload = STANDARD
        .decode(env["payload"].as_str().expect("payload"))
        .expect("b64");
    let mut v2: serde_json::Value = serde_json::from_slice(&payload).expect("v2");
    let body = STANDARD
        .decode(v2["body"].as_str().expect("body"))
        .expect("b64");
    let mut r: Report = serde_json::from_slice(&body).expect("body");
    r.evidence.ruleset_digest = "0".repeat(64);
    v2["body"] = STANDARD
        .encode(serde_json::to_vec(&r).expect("json"))
        .into();
    let env2 = trustd::bundle::sign_envelope(
        trustd::report::REPORT_TYPE,
        &serde_json::to_vec(&v2).expect("json"),
        std::slice::from_ref(&s.key),
    );
    env = serde_json::to_value(env2).expect("env");
    let e = check(&s, &env.to_string(), "nonce-edit-1234").expect_err("caught");
    assert!(e.contains("qualifying data"), "{e}");
}

/// Security regression test: root rewrites the audit log (a consistent chain, another
/// history of the same size) and signs a checkpoint of it with the stolen device key, then
/// has the TPM quote a report carrying it. Neither with the true event log (the checkpoint
/// is not the last measured) nor with a forged checkpoint event extended into the PCR (the
/// rewritten log does not extend the root measured before) does it verify.
#[test]
fn a_rewritten_audit_log_with_a_resigned_checkpoint_does_not_verify() {
    let s = setup();
    let honest = s.d.report("nonce-rewrite-1", now()).expect("report");
    let o = open(&s, &honest, "nonce-rewrite-1");
    let cp = trustd::audit::checkpoint::parse_and_verify(
        &o.report.evidence.checkpoint,
        &o.report.origin,
        &s.key.verifying_key(),
    )
    .expect("checkpoint");
    // Another history of the same size.
    let forged_cp = trustd::audit::Checkpoint {
        origin: cp.origin.clone(),
        size: cp.size,
        root: [0x42; 32],
    };
    let note = trustd::audit::checkpoint::sign(&forged_cp, &cp.origin, &s.key).expect("re-signed");
    let mut body = o.report.clone();
    body.evidence.checkpoint = note;
    let events = o.attestation.as_ref().expect("attested").events.clone();
    let e = check(
        &s,
        &forge(&s, &body, events.clone(), vec![]),
        "nonce-rewrite-1",
    )
    .expect_err("caught");
    assert!(e.contains("not the last one measured"), "{e}");

    // Root also extends a forged checkpoint event into the PCR (it can: extending is open).
    let mut more = events;
    let fake = trustd::tpm::Event::new(
        more.len() as u64,
        trustd::tpm::Kind::Checkpoint,
        [
            ("origin".to_owned(), cp.origin.clone()),
            ("size".to_owned(), cp.size.to_string()),
            ("root".to_owned(), trustd::bundle::hex(&forged_cp.root)),
        ]
        .into(),
    );
    let mut t = s.tpm.clone();
    t.extend(TRUSTD_PCR, &fake.compute()).expect("extend");
    more.push(fake);
    let e = check(
        &s,
        &forge(&s, &body, more.clone(), vec![]),
        "nonce-rewrite-1",
    )
    .expect_err("caught");
    assert!(e.contains("no consistency proof"), "{e}");
    // With the honest report's proofs: they do not lead to the forged root.
    let e = check(
        &s,
        &forge(&s, &body, more.clone(), o.proofs.clone()),
        "nonce-rewrite-1",
    )
    .expect_err("caught");
    assert!(e.contains("rewritten"), "{e}");

    // Nor does dropping the honest events from the log: the PCR keeps them.
    let e = check(
        &s,
        &forge(&s, &body, more[more.len() - 1..].to_vec(), vec![]),
        "nonce-rewrite-1",
    )
    .expect_err("caught");
    assert!(e.contains("event") || e.contains("PCR"), "{e}");
}

/// Without a TPM, reports say their evidence is signed by the software key only and a
/// verifier that requires the quote refuses them; version 1 reports still verify.
#[test]
fn without_a_tpm_reports_say_software_key_only_and_v1_still_verifies() {
    let dev = TestDevice::new();
    let d = Device::open(&dev.paths, Actor::this_process()).expect("open");
    let key = trustd::report::load_or_create_key(&dev.paths)
        .expect("key")
        .0;
    let report = d.report("nonce-nothpm-1", now()).expect("report");
    let o =
        open_report(report.as_bytes(), "nonce-nothpm-1", &key.verifying_key()).expect("verifies");
    assert_eq!((o.version, o.signer.as_str()), (2, "software-key-only"));
    let ak = *SoftTpm::new([9; 32])
        .expect("soft")
        .signing_key()
        .verifying_key();
    let e = trustd::tpm::verify::verify(&o, &ak, &key.verifying_key()).expect_err("no quote");
    assert!(e.contains("software key only"), "{e}");
    // A version 1 report.
    let mut r = o.report.clone();
    r.schema = trustd::report::REPORT_SCHEMA.into();
    let v1 = sign_report(&r, &key).expect("v1");
    let o1 = open_report(v1.as_bytes(), "nonce-nothpm-1", &key.verifying_key()).expect("v1");
    assert_eq!(o1.version, 1);
    assert_eq!(o1.report.evidence, o.report.evidence);
}

/// Security regression test: root with the stolen device key makes a report whose body
/// claims another boot id (for instance the one of a report a verifier accepted before a
/// reboot, to hide the reboot from a verifier keyed on boot ids) and has the TPM quote it
/// with the true event log and proofs. trustd measured its boot id at start, so the
/// verifier refuses the report instead of printing the forged boot id as verified.
#[test]
fn a_report_claiming_another_boot_id_than_measured_does_not_verify() {
    let s = setup();
    let honest = s.d.report("nonce-bootid-1", now()).expect("report");
    let o = open(&s, &honest, "nonce-bootid-1");
    check(&s, &honest, "nonce-bootid-1").expect("the honest report verifies");
    let events = o.attestation.as_ref().expect("attested").events.clone();
    let mut body = o.report.clone();
    body.evidence.boot_id = "00000000-0000-4000-8000-000000000000".into();
    let e = check(
        &s,
        &forge(&s, &body, events, o.proofs.clone()),
        "nonce-bootid-1",
    )
    .expect_err("a boot id that was not measured");
    assert!(e.contains("boot id"), "{e}");
}

/// Security regression test: root, whose tools IMA measured into PCR 10, has the TPM quote a
/// report over trustd's PCR 13 only, leaving PCR 10 out, so that the
/// report passes for one of a device without IMA. The verifier requires every PCR trustd
/// quotes, whatever its value.
#[test]
fn a_quote_leaving_out_imas_pcr_does_not_verify() {
    let s = setup();
    // IMA measured something (root's tool).
    s.tpm
        .clone()
        .extend(trustd::tpm::IMA_PCR, &[0x66; 32])
        .expect("extend");
    let honest = s.d.report("nonce-dropped-pcr", now()).expect("report");
    let v = check(&s, &honest, "nonce-dropped-pcr").expect("the honest report verifies");
    assert!(
        trustd::tpm::quoted_pcrs()
            .iter()
            .all(|p| v.pcrs.contains_key(p)),
        "{:?}",
        v.pcrs.keys()
    );
    let o = open(&s, &honest, "nonce-dropped-pcr");
    let events = o.attestation.as_ref().expect("attested").events.clone();
    let without_ima: Vec<u32> = trustd::tpm::quoted_pcrs()
        .into_iter()
        .filter(|p| *p != trustd::tpm::IMA_PCR)
        .collect();
    let forged = forge_over(&s, &o.report, events, o.proofs.clone(), &without_ima);
    let e = check(&s, &forged, "nonce-dropped-pcr").expect_err("PCR 10 left out");
    assert!(e.contains("does not cover PCR 10"), "{e}");
}

/// Posture says what signs the evidence in its own property (`Evidence`), without changing
/// the level: a device without a TPM is `software-key-only` with the reason and no entry in
/// `Reasons` for it; with a TPM, `tpm` and the AK's name; a TPM configured but not in use is
/// `software-key-only` and also a reason (degraded). The signed report carries the same.
#[test]
fn posture_evidence_says_software_key_only_without_a_tpm_and_keeps_the_level() {
    let plain_dev = TestDevice::new();
    let mut plain = Device::open(&plain_dev.paths, Actor::this_process()).expect("open");
    let before = plain.posture(now());
    assert_eq!(before.evidence.0, "software-key-only");
    assert!(
        before.evidence.1.contains("no TPM is configured"),
        "{:?}",
        before.evidence
    );
    assert!(
        !before.reasons.iter().any(|r| r.contains("software key")),
        "{:?}",
        before.reasons
    );
    let report = plain.report("nonce-evidence-1", now()).expect("report");
    let key = trustd::report::load_or_create_key(&plain_dev.paths)
        .expect("key")
        .0;
    let o =
        open_report(report.as_bytes(), "nonce-evidence-1", &key.verifying_key()).expect("verifies");
    assert_eq!(
        o.report.posture.get("Evidence"),
        Some(&serde_json::json!(["software-key-only", before.evidence.1]))
    );

    let s = setup();
    let p = s.d.posture(now());
    assert_eq!(p.evidence.0, "tpm");
    let name = s.tpm.identity().ak_name.clone();
    assert!(p.evidence.1.contains(&name), "{:?}", p.evidence);

    plain.tpm_unavailable("TPM at swtpm:port=1: connection refused".into());
    let after = plain.posture(now());
    assert_eq!(after.evidence.0, "software-key-only");
    assert!(
        after.evidence.1.contains("not in use"),
        "{:?}",
        after.evidence
    );
    assert!(
        after.reasons.iter().any(|r| r.contains("not in use")),
        "{:?}",
        after.reasons
    );
    assert!(after.level >= before.level);
}

/// The shared TPM under another AK's identity: a trustd attached to it measures that AK's
/// name at its start, while the quotes are the shared TPM's AK's.
#[derive(Debug)]
struct Renamed(Shared, Identity);

impl Tpm for Renamed {
    fn identity(&self) -> &Identity {
        &self.1
    }
    fn extend(&mut self, pcr: u32, digest: &[u8; 32]) -> Result<(), TpmError> {
        self.0.extend(pcr, digest)
    }
    fn read_pcr(&mut self, pcr: u32) -> Result<[u8; 32], TpmError> {
        self.0.read_pcr(pcr)
    }
    fn quote(&mut self, pcrs: &[u32], q: &[u8]) -> Result<(Vec<u8>, Vec<u8>), TpmError> {
        self.0.quote(pcrs, q)
    }
}

/// Security regression test: earlier this boot a trustd started with another attestation
/// key (root made a second AK in the same TPM, or replaced the blob) and its measurements
/// are in PCR 13; then trustd runs with the AK the verifier holds, and its quote is good.
/// The measured start names the other AK, so the measurements before the quote are not all
/// vouched for by the key given: the verifier refuses, naming the start.
#[test]
fn a_start_measured_with_another_ak_does_not_verify() {
    let dev = TestDevice::new();
    let shared = Shared(Arc::new(Mutex::new(SoftTpm::new([9; 32]).expect("soft"))));
    let other = SoftTpm::new([5; 32]).expect("soft").identity().clone();
    {
        let mut d = Device::open(&dev.paths, Actor::this_process()).expect("open");
        d.attach_tpm(Box::new(Renamed(shared.clone(), other.clone())))
            .expect("attach");
        d.apply_policy(&signed_policy(1), Actor::this_process(), now())
            .expect("policy");
        d.enforce(&mut RecordingBackend::default(), Actor::this_process())
            .expect("enforce");
    }
    let mut d = Device::open(&dev.paths, Actor::this_process()).expect("reopen");
    d.attach_tpm(Box::new(shared.clone())).expect("attach");
    let report = d.report("nonce-other-ak", now()).expect("report");
    let key = trustd::report::load_or_create_key(&dev.paths)
        .expect("key")
        .0
        .verifying_key();
    let ak = *shared.0.lock().expect("tpm").signing_key().verifying_key();
    let opened = open_report(report.as_bytes(), "nonce-other-ak", &key).expect("signed");
    let e = trustd::tpm::verify::verify(&opened, &ak, &key).expect_err("another AK's start");
    assert!(
        e.contains("event 0") && e.contains(&other.ak_name) && e.contains("another AK"),
        "{e}"
    );
    // The AK's name from its public area (tpm-ak.pub) is the one its PEM gives.
    let named = trustd::tpm::credential::check_ak_public(&shared.identity().ak_tpm_public)
        .expect("an AK's public area");
    assert_eq!(
        trustd::bundle::hex(&named.name),
        trustd::tpm::credential::ak_name_of(&ak)
    );
}

/// Security regression test: root extends a firmware PCR after boot (PCR 0 held the
/// firmware's measurement at the first report), or makes a later report whose quote leaves
/// that PCR out (the verifier of one report requires only PCRs 10 and 13). Each report
/// verifies on its own; against the earlier one, within one boot, both are refused.
#[test]
fn a_firmware_pcr_extended_after_boot_or_left_out_is_refused_against_the_earlier_report() {
    let s = setup();
    let mut tpm = s.tpm.clone();
    tpm.extend(0, &[0x0f; 32])
        .expect("the firmware's measurement");
    let first = s.d.report("nonce-fw-first", now()).expect("report");
    let v1 = check(&s, &first, "nonce-fw-first").expect("verifies");
    assert!(v1.pcrs.contains_key(&0), "{:?}", v1.pcrs.keys());

    // Left out of a later quote.
    s.d.checkpoint().expect("checkpoint");
    let honest = s.d.report("nonce-fw-second", now()).expect("report");
    let o = open(&s, &honest, "nonce-fw-second");
    let events = o.attestation.as_ref().expect("attested").events.clone();
    let forged = forge(&s, &o.report, events, o.proofs.clone());
    let v2 = check(&s, &forged, "nonce-fw-second").expect("verifies on its own");
    let e = trustd::tpm::verify::compare(&v1, &v2).expect_err("PCR 0 left out");
    assert!(e.contains("leaves out") && e.contains("PCR 0"), "{e}");

    // Extended after boot.
    tpm.extend(0, &[0xee; 32]).expect("root extends PCR 0");
    let later = s.d.report("nonce-fw-third", now()).expect("report");
    let v3 = check(&s, &later, "nonce-fw-third").expect("verifies on its own");
    let e = trustd::tpm::verify::compare(&v1, &v3).expect_err("PCR 0 changed");
    assert!(e.contains("PCR 0 changed"), "{e}");
}
