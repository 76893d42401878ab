//! TPM attestation benchmark on swtpm (a software TPM started here on free loopback ports
//! and killed at the end): quote latency, a whole `GetReport` (checkpoint, quote, signing)
//! against the same report without a TPM, offline report verifications per second
//! (`trustctl posture verify --ak`'s checks in-process), and durable audit appends with a
//! checkpoint every `checkpoint_every` records, measured into trustd's PCR, against the same
//! without a TPM (target: at least 95%). Baselines are measured in the same run; the ratios
//! are what to read.
//!
//! `cargo bench -p trustd --bench tpm` (needs swtpm; env TPM_BENCH_SECS for each timed
//! phase, default 3). Without swtpm it says so and exits 0, except under CI=true (exit 1).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use trustd::audit::Actor;
use trustd::daemon::Device;
use trustd::tpm::{EsapiTpm, Tpm as _};

#[path = "../tests/common/mod.rs"]
mod fixtures;
use fixtures::swtpm::Swtpm;
use fixtures::{TestDevice, now, signed_policy};

#[allow(dead_code)]
mod common;
use common::entry;

/// Mean milliseconds per call of `f` over `budget` (at least 5 calls).
fn per_call_ms(budget: Duration, mut f: impl FnMut(u64)) -> (f64, u64) {
    let start = Instant::now();
    let mut n = 0u64;
    while n < 5 || start.elapsed() < budget {
        f(n);
        n += 1;
    }
    (start.elapsed().as_secs_f64() * 1000.0 / n as f64, n)
}

fn device(dev: &TestDevice, tpm: Option<&Swtpm>) -> Device {
    let mut d = Device::open(&dev.paths, Actor::this_process()).expect("open");
    if let Some(tpm) = tpm {
        let t = EsapiTpm::open(&tpm.tcti(), dev.paths.tpm_ak_blob()).expect("TPM opens");
        t.identity().export(&dev.paths.state_dir()).expect("export");
        d.attach_tpm(Box::new(t)).expect("attach");
    }
    d.apply_policy(&signed_policy(1), Actor::this_process(), now())
        .expect("policy");
    d
}

/// Durable appends per second for `budget`, with a checkpoint (measured into the PCR when
/// a TPM is attached) each `every` records, as the daemon makes them.
fn appends_with_checkpoints(d: &Device, every: u64, budget: Duration) -> (f64, u64) {
    let start = Instant::now();
    let mut n = 0u64;
    let mut checkpoints = 0u64;
    while start.elapsed() < budget {
        d.audit().append(entry(n)).expect("durable append");
        n += 1;
        if n.is_multiple_of(every) {
            d.checkpoint().expect("checkpoint");
            checkpoints += 1;
        }
    }
    (n as f64 / start.elapsed().as_secs_f64(), checkpoints)
}

fn main() {
    let have = Command::new("sh")
        .args(["-c", "command -v swtpm"])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !have {
        eprintln!("tpm bench: swtpm is not installed; nothing measured");
        if std::env::var_os("CI").is_some_and(|v| v == "true") {
            std::process::exit(1);
        }
        return;
    }
    let secs: u64 = std::env::var("TPM_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let budget = Duration::from_secs(secs);

    let dev = TestDevice::new();
    let swtpm = Swtpm::start(&dev.dir.path().join("swtpm"));
    let plain_dev = TestDevice::new();
    let plain = device(&plain_dev, None);

    // Quote latency: the TPM alone, over IMA's and trustd's PCRs.
    {
        let mut t =
            EsapiTpm::open(&swtpm.tcti(), dev.dir.path().join("bench-ak.json")).expect("TPM opens");
        let (ms, n) = per_call_ms(budget, |i| {
            t.quote(&trustd::tpm::quoted_pcrs(), &i.to_be_bytes())
                .expect("quote");
        });
        let (ext_ms, m) = per_call_ms(budget, |i| {
            let mut d = [0u8; 32];
            d[..8].copy_from_slice(&i.to_be_bytes());
            t.extend(16, &d).expect("extend");
        });
        println!("quote (PCRs 10, 13; ECDSA P-256): {ms:.2} ms each ({n} quotes)");
        println!("PCR extend: {ext_ms:.2} ms each ({m} extends)");
    }

    let d = device(&dev, Some(&swtpm));

    // Whole GetReport: checkpoint, quote, DSSE signing; against the same without a TPM.
    let mut last = String::new();
    let (tpm_ms, n) = per_call_ms(budget, |i| {
        last = d
            .report(&format!("nonce-bench-{i:06}"), now())
            .expect("report");
    });
    let last_nonce = format!("nonce-bench-{:06}", n - 1);
    let (plain_ms, _) = per_call_ms(budget, |i| {
        plain
            .report(&format!("nonce-bench-{i:06}"), now())
            .expect("report");
    });
    println!(
        "GetReport with TPM quote: {tpm_ms:.2} ms ({n} reports, {} bytes); without a TPM: {plain_ms:.2} ms; ratio {:.1}x",
        last.len(),
        tpm_ms / plain_ms
    );

    // Offline verification, as `trustctl posture verify --ak` does it.
    let key = trustd::report::load_or_create_key(&dev.paths)
        .expect("key")
        .0
        .verifying_key();
    let pem = std::fs::read_to_string(dev.paths.state_dir().join("tpm-ak.pem")).expect("pem");
    let ak = trustd::tpm::quote::ak_from_pem(&pem).expect("ak");
    let (v_ms, m) = per_call_ms(budget, |_| {
        let o = trustd::report::open_report(last.as_bytes(), &last_nonce, &key).expect("opens");
        trustd::tpm::verify::verify(&o, &ak, &key).expect("verifies");
    });
    let (dsse_ms, _) = per_call_ms(budget, |_| {
        trustd::report::open_report(last.as_bytes(), &last_nonce, &key).expect("opens");
    });
    println!(
        "report verification with the TPM evidence (quote, PCRs, event-log replay): {:.0}/s ({m} runs); the DSSE signature alone: {:.0}/s",
        1000.0 / v_ms,
        1000.0 / dsse_ms
    );

    // Durable appends with a checkpoint every N records (measured into PCR 13 with the
    // TPM), against the same without a TPM.
    // Interleaved in slices, so that the shared disk's slow and fast moments fall on both.
    for every in [1000u64, 100] {
        let slices = 6u32;
        let (mut with, mut without, mut cw, mut cp) = (0.0, 0.0, 0, 0);
        for _ in 0..slices {
            let (w, c) = appends_with_checkpoints(&d, every, budget / slices);
            let (o, q) = appends_with_checkpoints(&plain, every, budget / slices);
            (with, cw) = (with + w / f64::from(slices), cw + c);
            (without, cp) = (without + o / f64::from(slices), cp + q);
        }
        println!(
            "durable appends, checkpoint every {every}: with PCR extends {with:.0}/s ({cw} checkpoints), without a TPM {without:.0}/s ({cp} checkpoints): {:.1}% (target >= 95%)",
            with / without * 100.0
        );
    }
    drop(d);
}
