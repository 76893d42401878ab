//! Evidence checked or made offline: `posture verify` (a signed report and its TPM
//! evidence) and `tpm make-credential` (a verifier's challenge).

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use serde_json::json;

use super::audit::device_key;
use super::cli::{MakeCredential, PostureVerify};
use super::output::{Refused, print, read, refused, write_out};

/// `tpm make-credential`: TPM2_MakeCredential in software for the AK named by its public area
/// (checked) or by its name, under the EK.
pub(crate) fn make_credential(j: bool, a: MakeCredential) -> Result<ExitCode> {
    let MakeCredential {
        ek,
        ak_public,
        ak_pem,
        ak_name,
        secret,
        format,
        out,
    } = a;
    use trustd::tpm::credential;
    let pem = String::from_utf8(read(&ek)?)
        .map_err(|_| refused(format!("{}: not UTF-8", ek.display())))?;
    let ekey =
        credential::ek_from_pem(&pem).map_err(|e| refused(format!("{}: {e}", ek.display())))?;
    let name = match (&ak_public, &ak_name) {
        (Some(p), _) => {
            let ak = credential::check_ak_public(&read(p)?)
                .map_err(|e| refused(format!("{}: {e}", p.display())))?;
            if let Some(pem) = &ak_pem {
                let want = trustd::tpm::quote::ak_from_pem(&String::from_utf8_lossy(&read(pem)?))
                    .map_err(|e| refused(format!("{}: {e}", pem.display())))?;
                let got =
                    trustd::tpm::quote::ak_from_pem(&ak.pem).map_err(|e| refused(e.to_string()))?;
                if want != got {
                    return Err(refused(format!(
                        "{} is not the key of the public area {}: a credential for that AK would not vouch for it",
                        pem.display(),
                        p.display()
                    )));
                }
            }
            ak.name
        }
        (None, Some(n)) => {
            let text = match trustd::files::capped::read_capped(Path::new(n), 4096) {
                Ok(t) => String::from_utf8_lossy(&t).into_owned(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => n.clone(),
                Err(e) => return Err(anyhow::Error::new(e).context(format!("reading {n}"))),
            };
            credential::parse_name(&text).map_err(|e| refused(e.to_string()))?
        }
        (None, None) => return Err(refused("--ak-public or --ak-name is required".into())),
    };
    let meta =
        std::fs::metadata(&secret).with_context(|| format!("reading {}", secret.display()))?;
    if meta.len() > credential::MAX_CREDENTIAL as u64 {
        return Err(refused(format!(
            "{}: the secret must be 1 to {} bytes, not {}",
            secret.display(),
            credential::MAX_CREDENTIAL,
            meta.len()
        )));
    }
    let c = credential::make(&ekey, &name, &read(&secret)?).map_err(|e| refused(e.to_string()))?;
    let bytes = if format == "tpm2-tools" {
        c.to_tpm2_tools()
    } else {
        let mut b = serde_json::to_vec_pretty(&c.to_challenge(&name))?;
        b.push(b'\n');
        b
    };
    write_out(j, out.as_deref(), &bytes)?;
    Ok(ExitCode::SUCCESS)
}

/// `s` as one word of a shell command line: as it is when it holds only characters no shell
/// treats specially, else single-quoted.
fn sh_word(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+:@%,=".contains(c))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// The attestation key a verifier gives: its SPKI PEM (`tpm-ak.pem`, named as trustd's AK
/// template names it) or its public area (`tpm-ak.pub`, checked and named from its bytes).
fn load_ak(path: &Path) -> Result<(trustd::tpm::quote::AkKey, String)> {
    let bytes = read(path)?;
    let ak = if bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
        let pem = String::from_utf8_lossy(&bytes);
        let k = trustd::tpm::quote::ak_from_pem(&pem)
            .map_err(|e| refused(format!("{}: {e}", path.display())))?;
        (k, trustd::tpm::credential::ak_name_of(&k))
    } else {
        let p = trustd::tpm::credential::check_ak_public(&bytes).map_err(|e| {
            refused(format!(
                "{}: neither a PEM public key (tpm-ak.pem) nor an attestation key's TPM public area (tpm-ak.pub): {e}",
                path.display()
            ))
        })?;
        let k = trustd::tpm::quote::ak_from_pem(&p.pem).map_err(|e| refused(e.to_string()))?;
        (k, trustd::bundle::hex(&p.name))
    };
    Ok(ak)
}

/// `posture verify`: a report opened with the device key for the nonce; with `--ak` its TPM
/// evidence, and with `--earlier` what happened since an earlier report.
pub(crate) fn posture_verify(j: bool, a: PostureVerify) -> Result<ExitCode> {
    let PostureVerify {
        file,
        nonce,
        key,
        ak,
        earlier,
        earlier_nonce,
        export_quote,
    } = a;
    for (what, n) in [
        ("--nonce", Some(&nonce)),
        ("--earlier-nonce", earlier_nonce.as_ref()),
    ] {
        if let Some(n) = n
            && !trustd::report::valid_nonce(n)
        {
            return Err(refused(format!(
                "{what} {:?} is not a nonce trustd answers (8 to 128 characters of [A-Za-z0-9_-]): no report can carry it",
                n.chars().take(140).collect::<String>()
            )));
        }
    }
    if earlier_nonce.as_deref() == Some(nonce.as_str()) {
        return Err(refused(
            "--earlier-nonce is --nonce: two reports answering one nonce are one report replayed; a verifier sends a fresh nonce for each".into(),
        ));
    }
    let vk = device_key(&key)?;
    let opened = trustd::report::open_report(&read(&file)?, &nonce, &vk).map_err(Refused)?;
    let mut checkquote = None;
    if let Some(dir) = &export_quote {
        let f = trustd::tpm::verify::checkquote_files(&opened).map_err(Refused)?;
        // The files hold bytes the device chose: written only into a directory made now for
        // them (owner-only), each file new, so that no link or earlier file in a shared
        // place is written through or left to be taken for this report's.
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(dir)
                .map_err(|e| {
                    refused(format!(
                        "--export-quote {}: {e} (give a directory that does not exist yet; it is made for the quote)",
                        dir.display()
                    ))
                })?;
        }
        let write_new = |name: &str, bytes: &[u8]| -> Result<()> {
            let p = dir.join(name);
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&p)
                .with_context(|| format!("writing {}", p.display()))?;
            std::io::Write::write_all(&mut file, bytes)
                .with_context(|| format!("writing {}", p.display()))
        };
        write_new("quote.msg", &f.message)?;
        write_new("quote.sig", &f.signature)?;
        write_new("quote.pcrs", &f.pcrs)?;
        // The AK given, as the PEM tpm2-tools read (`--ak` may be tpm-ak.pub).
        let ak_arg = match &ak {
            Some(p) => {
                let pem = trustd::tpm::quote::ak_pem(&load_ak(p)?.0);
                write_new("ak.pem", pem.as_bytes())?;
                sh_word(&dir.join("ak.pem").display().to_string())
            }
            None => "tpm-ak.pem".into(),
        };
        let d = sh_word(&dir.display().to_string());
        // tpm2-tools 5.4 cannot hash the values of a selection of eight PCRs or more (a
        // device's firmware PCRs 0-7 with 10 and 13): it then checks the signature and the
        // qualifying data only, and trustctl's own check is the one that replays the PCRs.
        let many = f.selection.split([':', ',']).count().saturating_sub(1) >= 8;
        let cmd = if many {
            format!(
                "tpm2_checkquote -u {ak_arg} -m {d}/quote.msg -s {d}/quote.sig -g sha256 -q {}",
                f.qualifying
            )
        } else {
            format!(
                "tpm2_checkquote -u {ak_arg} -m {d}/quote.msg -s {d}/quote.sig -f {d}/quote.pcrs -l {} -g sha256 -q {}",
                f.selection, f.qualifying
            )
        };
        if !j {
            eprintln!(
                "quote written to {}; check it with:\n  {cmd}{}",
                dir.display(),
                if many {
                    "\n  (the signature and nonce only: tpm2_checkquote cannot hash eight PCRs or more; the PCR values are checked here)"
                } else {
                    ""
                }
            );
        }
        checkquote = Some(cmd);
    }
    let mut tpm = serde_json::Value::Null;
    let mut tpm_text = format!("\n  evidence signer: {}", opened.signer);
    if let Some(ak) = &ak {
        let (akey, ak_name) = load_ak(ak)?;
        let v = trustd::tpm::verify::verify_named(&opened, &akey, &ak_name, &vk)
            .map_err(|e| Refused(format!("TPM evidence: {e}")))?;
        let mut notes = Vec::new();
        if let (Some(earlier), Some(en)) = (&earlier, &earlier_nonce) {
            let eo = trustd::report::open_report(&read(earlier)?, en, &vk)
                .map_err(|e| Refused(format!("earlier report: {e}")))?;
            let ev = trustd::tpm::verify::verify_named(&eo, &akey, &ak_name, &vk)
                .map_err(|e| Refused(format!("earlier report's TPM evidence: {e}")))?;
            notes = trustd::tpm::verify::compare(&ev, &v)
                .map_err(|e| Refused(format!("since the earlier report: {e}")))?;
            if notes.is_empty() {
                notes.push(
                    "no reboot between the reports; the measurements extend the earlier ones"
                        .into(),
                );
            }
        }
        tpm = json!({
            "pcr": trustd::tpm::TRUSTD_PCR,
            "pcrs": v.pcrs.iter().map(|(k, v)| (k.to_string(), json!(trustd::bundle::hex(v)))).collect::<serde_json::Map<_, _>>(),
            "clock": v.clock,
            "events": v.events.len(),
            "checkpoint": {"size": v.checkpoint.0, "root": v.checkpoint.1},
            "since_earlier": notes,
        });
        tpm_text = format!(
            "\n  TPM quote verified with {}: PCRs {:?}, {} measured events replay to PCR {}, checkpoint size {} is the last measured, TPM reset count {} restart count {}{}",
            ak.display(),
            v.pcrs.keys().collect::<Vec<_>>(),
            v.events.len(),
            trustd::tpm::TRUSTD_PCR,
            v.checkpoint.0,
            v.clock.reset_count,
            v.clock.restart_count,
            notes.iter().map(|n| format!("\n  {n}")).collect::<String>()
        );
    } else if opened.attestation.is_some() {
        tpm_text.push_str(" (the TPM quote is not checked without --ak)");
    }
    let r = opened.report;
    print(
        j,
        json!({"ok": true, "origin": r.origin, "time": r.time.to_string(),
               "level": r.posture.get("Level"), "reasons": r.posture.get("Reasons"),
               "evidence": r.evidence, "version": opened.version,
               "signer": opened.signer, "tpm": tpm, "checkquote": checkquote,
               "policy_bound_by_tpm": ak.is_some() && !r.evidence.ruleset_digest.is_empty()}),
        &format!(
            "valid report from {} at {}: level {}, policy {}, ruleset {}{}{tpm_text}",
            r.origin,
            r.time,
            r.posture
                .get("Level")
                .map(ToString::to_string)
                .unwrap_or_default(),
            // An empty digest is "none" (no policy installed), as `status` says. With no ruleset
            // in force the TPM's log binds no policy to the report: the device's word alone.
            match (
                r.evidence.policy_digest.is_empty(),
                ak.is_some() && r.evidence.ruleset_digest.is_empty(),
            ) {
                (true, _) => "none".to_owned(),
                (false, true) => format!(
                    "{} (not bound by the TPM: no ruleset in force to measure it with)",
                    r.evidence.policy_digest
                ),
                (false, false) => r.evidence.policy_digest.clone(),
            },
            if r.evidence.ruleset_digest.is_empty() {
                "none"
            } else {
                &r.evidence.ruleset_digest
            },
            // Why the level is what it is (a stale input, the clock), one per line.
            r.posture
                .get("Reasons")
                .and_then(serde_json::Value::as_array)
                .map(|rs| rs
                    .iter()
                    .filter_map(serde_json::Value::as_str)
                    .map(|r| format!("\n  reason: {r}"))
                    .collect::<String>())
                .unwrap_or_default()
        ),
    );
    Ok(ExitCode::SUCCESS)
}
