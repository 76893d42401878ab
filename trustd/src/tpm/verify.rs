//! A verifier's checks of a v2 posture report's TPM evidence, offline (pure): the quote by
//! the attestation key the verifier holds, its binding to the nonce and the report body, the
//! PCR values against the quoted digest, the replay of the event log against trustd's PCR,
//! that the report's checkpoint and ruleset are the last ones measured and its boot id the
//! one measured at trustd's start. Given an earlier
//! report of the same device: a reboot between them, and a log that no longer extends what
//! was measured.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use super::eventlog::{self, Event, Kind};
use super::quote::{self, ClockInfo};
use super::{Attestation, TRUSTD_PCR};
use crate::report::Opened;

/// What a checked attestation proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The TPM's clock at the quote.
    pub clock: ClockInfo,
    /// The quoted SHA-256 PCR values.
    pub pcrs: BTreeMap<u32, [u8; 32]>,
    /// The measured events, replayed.
    pub events: Vec<Event>,
    /// The report's checkpoint: (size, root hex), the last measured.
    pub checkpoint: (u64, String),
    /// The TPM's firmware version as the quote gives it (`firmwareVersion`).
    pub firmware: u64,
}

fn hex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The audit tree heads measured in `events`: `(size, root hex)` of every checkpoint and of
/// the log at every start.
pub fn measured_heads(events: &[Event]) -> Vec<(u64, String)> {
    events
        .iter()
        .filter_map(|e| {
            let (size, root) = match e.kind {
                Kind::Checkpoint => ("size", "root"),
                Kind::Start => ("audit_size", "audit_root"),
                Kind::Enforce => return None,
            };
            Some((
                e.detail.get(size)?.parse().ok()?,
                e.detail.get(root)?.clone(),
            ))
        })
        .collect()
}

fn last(events: &[Event], kind: Kind) -> Option<&Event> {
    events.iter().rev().find(|e| e.kind == kind)
}

/// Check the TPM evidence of an opened report with the attestation key `ak` the verifier
/// trusts and the device key that signed the report's checkpoint. The AK's TPM name that
/// every measured start must name is the one trustd's AK template gives `ak`
/// ([`super::credential::ak_name_of`]); [`verify_named`] takes it from the AK's public area.
pub fn verify(
    opened: &Opened,
    ak: &p256::ecdsa::VerifyingKey,
    device_key: &ed25519_dalek::VerifyingKey,
) -> Result<Verdict, String> {
    verify_named(opened, ak, &super::credential::ak_name_of(ak), device_key)
}

/// [`verify`] with the AK's TPM name given (hex, from its public area `tpm-ak.pub` as
/// [`super::credential::check_ak_public`] names it): every start of trustd measured this boot
/// must name that AK, or the measurements were made by a trustd that quoted with another key.
pub fn verify_named(
    opened: &Opened,
    ak: &p256::ecdsa::VerifyingKey,
    ak_name: &str,
    device_key: &ed25519_dalek::VerifyingKey,
) -> Result<Verdict, String> {
    let a: &Attestation = opened.attestation.as_ref().ok_or_else(|| {
        format!(
            "the report carries no TPM quote: its evidence is signed by the software key only (signer {:?}, report version {})",
            opened.signer, opened.version
        )
    })?;
    if a.pcr != TRUSTD_PCR {
        return Err(format!(
            "the report names PCR {} as trustd's, not {TRUSTD_PCR}",
            a.pcr
        ));
    }
    let attest = STANDARD
        .decode(&a.quote)
        .map_err(|e| format!("quote is not base64: {e}"))?;
    let sig = STANDARD
        .decode(&a.signature)
        .map_err(|e| format!("quote signature is not base64: {e}"))?;
    let pcrs = a
        .pcrs
        .iter()
        .map(|(k, v)| {
            hex32(v)
                .map(|v| (*k, v))
                .ok_or_else(|| format!("PCR {k}: not 32 bytes of hex"))
        })
        .collect::<Result<BTreeMap<_, _>, _>>()?;
    let checked = quote::check(&attest, &sig, ak, &opened.qualifying, &pcrs).map_err(|e| {
        if e != quote::QuoteError::Signature {
            return e.to_string();
        }
        // Say which key the verifier gave, where the report lets us tell.
        let given = quote::ak_from_pem(&a.identity.ek_public).ok();
        if given.as_ref() == Some(ak) {
            format!("{e}: the key given is the device's endorsement key (tpm-ek.pem), not its attestation key (tpm-ak.pem)")
        } else if quote::ak_from_pem(&a.identity.ak_public).ok().as_ref() != Some(ak) {
            format!(
                "{e}: the report says it was quoted by the AK named {}, which is not the key given (another device's AK, or this device's AK was replaced: bind the new one by credential activation before trusting it)",
                a.identity.ak_name
            )
        } else {
            format!("{e} (the quote or its signature was altered)")
        }
    })?;
    if checked.attest.clock != a.clock {
        return Err("the clock the report shows is not the quote's".into());
    }
    if let Some(p) = super::quoted_pcrs()
        .into_iter()
        .find(|p| !pcrs.contains_key(p))
    {
        return Err(format!(
            "the quote does not cover PCR {p} (trustd quotes IMA's PCR 10 and its own 13 whatever their values): a PCR was left out of the quote"
        ));
    }
    let Some(trustd_pcr) = pcrs.get(&TRUSTD_PCR) else {
        return Err(format!(
            "the quote does not cover trustd's PCR {TRUSTD_PCR}"
        ));
    };
    eventlog::replay_matches(&a.events, trustd_pcr).map_err(|e| e.to_string())?;
    // The report's checkpoint is the last one measured.
    let r = &opened.report;
    let cp =
        crate::audit::checkpoint::parse_and_verify(&r.evidence.checkpoint, &r.origin, device_key)
            .map_err(|e| format!("the report's checkpoint: {e}"))?;
    let root = crate::bundle::hex(&cp.root);
    let measured = last(&a.events, Kind::Checkpoint)
        .ok_or("no checkpoint was measured, but the report carries one")?;
    let m_size = measured.detail.get("size").map(String::as_str);
    let m_root = measured.detail.get("root").map(String::as_str);
    if m_size != Some(cp.size.to_string().as_str()) || m_root != Some(root.as_str()) {
        return Err(format!(
            "the report's checkpoint (size {}, root {root}) is not the last one measured (size {}, root {}): the audit log was rewritten or the report edited",
            cp.size,
            m_size.unwrap_or("?"),
            m_root.unwrap_or("?")
        ));
    }
    // The log reported extends every tree head measured this boot (a log rewritten and its
    // checkpoint re-signed with the device key does not).
    for (size, mroot) in measured_heads(&a.events) {
        if size == 0 {
            continue;
        }
        if size > cp.size {
            return Err(format!(
                "a tree head of {size} records was measured, but the report's checkpoint has {}: the audit log was cut",
                cp.size
            ));
        }
        let old_root = hex32(&mroot).ok_or_else(|| format!("measured root {mroot} is not hex"))?;
        if size == cp.size {
            if old_root != cp.root {
                return Err(format!(
                    "the measured root of {size} records is {mroot}, the report's is {root}: the audit log was rewritten"
                ));
            }
            continue;
        }
        let proof = opened
            .proofs
            .iter()
            .find(|p| p.old_size == size && p.new_size == cp.size)
            .ok_or_else(|| {
                format!("the report has no consistency proof from the measured size {size}")
            })?;
        proof.verify(&old_root, &cp.root).map_err(|e| {
            format!(
                "the audit log no longer extends the root measured at size {size} ({e}): it was rewritten"
            )
        })?;
    }
    // And its ruleset is the last one measured as enforced.
    if !r.evidence.ruleset_digest.is_empty() {
        let e = last(&a.events, Kind::Enforce)
            .ok_or("no enforcement was measured, but the report names a ruleset")?;
        let rs = e.detail.get("ruleset").map(String::as_str).unwrap_or("");
        let pol = e.detail.get("policy").map(String::as_str).unwrap_or("");
        if rs != r.evidence.ruleset_digest || pol != r.evidence.policy_digest {
            return Err(format!(
                "the report's ruleset {} and policy {} are not the last measured as enforced (ruleset {rs}, policy {pol})",
                r.evidence.ruleset_digest, r.evidence.policy_digest
            ));
        }
    }
    // And its boot id is the one trustd measured at every start this boot (the reset count
    // alone does not say which boot a report claims to be from).
    let starts: Vec<&str> = a
        .events
        .iter()
        .filter(|e| e.kind == Kind::Start)
        .map(|e| e.detail.get("boot_id").map_or("", String::as_str))
        .collect();
    if starts.is_empty() {
        return Err("no start of trustd was measured this boot".into());
    }
    // And every start measured the AK the verifier holds: a start that names another AK was
    // made by a trustd quoting with another key (an AK root made beside the real one, or the
    // AK replaced after a TPM clear), so the measurements before the quote are not all
    // vouched for by this key.
    let want = ak_name.trim().to_ascii_lowercase();
    for e in a.events.iter().filter(|e| e.kind == Kind::Start) {
        match e.detail.get("ak") {
            Some(n) if n.to_ascii_lowercase() == want => {}
            Some(n) => {
                return Err(format!(
                    "the start of trustd measured at event {} names the attestation key {n}, not the key given (name {want}): trustd started with another AK this boot",
                    e.seq
                ));
            }
            None => {
                return Err(format!(
                    "the start of trustd measured at event {} names no attestation key",
                    e.seq
                ));
            }
        }
    }
    if let Some(b) = starts.iter().find(|b| **b != r.evidence.boot_id) {
        return Err(format!(
            "the report's boot id {} is not the one measured at trustd's start ({b}): the report was edited or the PCR extended by another",
            r.evidence.boot_id
        ));
    }
    Ok(Verdict {
        clock: checked.attest.clock,
        pcrs,
        events: a.events.clone(),
        checkpoint: (cp.size, root),
        firmware: checked.attest.firmware,
    })
}

/// A report's quote as tpm2-tools' `tpm2_checkquote` takes it: `-m` the `TPMS_ATTEST`, `-s`
/// the `TPMT_SIGNATURE`, `-f` the PCR values (the SHA-256 digests concatenated in ascending
/// PCR order), `-l` the selection (`sha256:10,13`), `-g sha256`, `-q` the qualifying data
/// (hex) and `-u` the AK's PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckquoteFiles {
    /// The marshalled `TPMS_ATTEST` (`-m`).
    pub message: Vec<u8>,
    /// The marshalled `TPMT_SIGNATURE` (`-s`).
    pub signature: Vec<u8>,
    /// The PCR values, 32 bytes each, ascending (`-f`).
    pub pcrs: Vec<u8>,
    /// The PCR selection (`-l`), e.g. `sha256:10,13`.
    pub selection: String,
    /// The qualifying data the quote must carry, hex (`-q`).
    pub qualifying: String,
}

/// The parts of an opened report's quote for `tpm2_checkquote`, unchecked (so that an
/// outside tool can judge a quote this verifier refuses). Errors: no attestation, a field
/// that is not base64 or hex.
pub fn checkquote_files(opened: &Opened) -> Result<CheckquoteFiles, String> {
    let a = opened.attestation.as_ref().ok_or(
        "the report carries no TPM quote (its evidence is signed by the software key only)",
    )?;
    let b64 = |what: &str, v: &str| {
        STANDARD
            .decode(v)
            .map_err(|e| format!("{what} is not base64: {e}"))
    };
    let mut pcrs = Vec::new();
    for (k, v) in &a.pcrs {
        pcrs.extend(hex32(v).ok_or_else(|| format!("PCR {k}: not 32 bytes of hex"))?);
    }
    Ok(CheckquoteFiles {
        message: b64("quote", &a.quote)?,
        signature: b64("quote signature", &a.signature)?,
        pcrs,
        selection: format!(
            "sha256:{}",
            a.pcrs
                .keys()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",")
        ),
        qualifying: crate::bundle::hex(&opened.qualifying),
    })
}

/// Compare an earlier report's verdict with a later one's (same AK). Returns what happened
/// between them (a reboot, a TPM restart), or why the later one cannot follow the earlier
/// (its measurements do not extend the earlier ones, its log shrank).
pub fn compare(earlier: &Verdict, later: &Verdict) -> Result<Vec<String>, String> {
    let (e, l) = (&earlier.clock, &later.clock);
    let mut notes = Vec::new();
    if l.reset_count < e.reset_count {
        return Err(format!(
            "the later report's TPM reset count {} is below the earlier's {} (another TPM, or the reports swapped)",
            l.reset_count, e.reset_count
        ));
    }
    if l.reset_count == e.reset_count && l.restart_count < e.restart_count {
        return Err(format!(
            "the later report's TPM restart count {} is below the earlier's {} in the same reset (another TPM, or the reports swapped)",
            l.restart_count, e.restart_count
        ));
    }
    let rebooted = l.reset_count > e.reset_count;
    // The TPM's clock only goes back at a startup after a shutdown that was not orderly, and
    // then the TPM marks it not safe until it is saved again; TPM2_Clear sets it (and the
    // reset and restart counts) back to zero and marks it safe. So a clock below the earlier
    // one that the TPM calls safe is a cleared TPM or another TPM. (A cleared TPM also loses
    // the AK, so the same --ak rarely verifies both; this check holds where it does.)
    let same_boot = !rebooted && l.restart_count == e.restart_count;
    if !same_boot && l.clock < e.clock && l.safe {
        return Err(format!(
            "the later report's TPM clock {} ms is below the earlier's {} ms while the TPM says its clock is safe: the TPM was cleared between the reports (TPM2_Clear sets its clock and reset count back, so the reset count no longer shows the reboots) or it is another TPM",
            l.clock, e.clock
        ));
    }
    let mut extra = Vec::new();
    if same_boot && e.safe && !l.safe {
        return Err(
            "within one boot the TPM's clock went from safe to not safe, which a TPM does only at a startup: the later quote is not from the same boot (another TPM, or the counts were not what they seem)"
                .into(),
        );
    }
    // A TPM's firmware is updated only across a reset: a new version within one boot is
    // another TPM's quote.
    if earlier.firmware != later.firmware {
        if same_boot {
            return Err(format!(
                "within one boot the TPM's firmware version went from {:#x} to {:#x}: the quotes are from two TPMs",
                earlier.firmware, later.firmware
            ));
        }
        extra.push(format!(
            "the TPM's firmware was updated between the reports ({:#x} -> {:#x})",
            earlier.firmware, later.firmware
        ));
    }
    if !l.safe {
        extra.push(format!(
            "the later quote's TPM clock is not safe (the TPM was not shut down in order before this boot, so its clock ({} ms) may be below one it reported before): the clock does not order the reports, the reset count does",
            l.clock
        ));
    }
    // The firmware's PCRs (0-7) are extended before the OS runs: within one boot they do not
    // change, and a value that changed, appeared or was left out means something extended
    // them after boot or the quote hid them. Across a reboot a change is the firmware, the
    // boot configuration or Secure Boot's state changing, which the verifier must know.
    let fw = |v: &Verdict, p: u32| v.pcrs.get(&p).copied();
    let fw_changed: Vec<u32> = super::FIRMWARE_PCRS
        .filter(|p| fw(earlier, *p) != fw(later, *p))
        .collect();
    if !fw_changed.is_empty() {
        if same_boot {
            let p = fw_changed[0];
            return Err(match (fw(earlier, p), fw(later, p)) {
                (Some(_), None) => format!(
                    "within one boot the later quote leaves out the firmware's PCR {p}, which the earlier one covered: a PCR holding a value is hidden"
                ),
                (None, Some(_)) => format!(
                    "within one boot the firmware's PCR {p} was extended after the earlier report (it held nothing then): something extended a boot measurement after boot"
                ),
                _ => format!(
                    "within one boot the firmware's PCR {p} changed between the reports: something extended a boot measurement after boot"
                ),
            });
        }
        extra.push(format!(
            "the firmware's PCRs {fw_changed:?} differ from the earlier report's: the firmware, the boot configuration or the Secure Boot state changed, or the later quote leaves them out"
        ));
    }
    // A TPM Restart (Shutdown(STATE) then Startup(CLEAR): what a reset without the kernel's
    // orderly shutdown after a hibernation-style shutdown gives) resets PCR 13 with the reset
    // count unchanged; only the restart count goes up, and a quote cannot tell it from a
    // resume that kept the PCRs. Root can then replay a prefix of the old event log into the
    // fresh PCR. So any restart breaks continuity as a reboot does.
    let restarted = !rebooted && l.restart_count != e.restart_count;
    if rebooted || restarted {
        notes.push(if rebooted {
            format!(
                "the device rebooted between the reports (TPM reset count {} -> {}): trustd's measurements started over",
                e.reset_count, l.reset_count
            )
        } else {
            format!(
                "the TPM restarted between the reports (restart count {} -> {}, reset count {}): PCR 13 may have started over (a TPM Restart resets it; only a resume from suspend keeps it), so the measurements do not prove continuity",
                e.restart_count, l.restart_count, l.reset_count
            )
        });
        // Nothing measured links the boots: root may have rewritten the log while the device
        // was off. Say so rather than let the sizes alone pass for continuity.
        if later.checkpoint.0 > earlier.checkpoint.0 {
            notes.push(format!(
                "across the reboot the quote does not prove that the audit log still extends the earlier checkpoint (size {}, root {}): check it with `trustctl audit consistency` against that checkpoint",
                earlier.checkpoint.0, earlier.checkpoint.1
            ));
        }
    } else {
        if l.clock < e.clock {
            return Err(format!(
                "the later report's TPM clock {} is before the earlier's {} within one boot",
                l.clock, e.clock
            ));
        }
        if !later.events.starts_with(&earlier.events) {
            return Err(
                "within one boot, the later report's measurements do not extend the earlier's: the event log was rewritten".into(),
            );
        }
    }
    let (es, er) = &earlier.checkpoint;
    let (ls, lr) = &later.checkpoint;
    if ls < es || (ls == es && lr != er) {
        return Err(format!(
            "the audit log no longer extends the measured root: checkpoint size {es} (root {er}) then size {ls} (root {lr})"
        ));
    }
    notes.extend(extra);
    Ok(notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(reset_count: u32, size: u64, root: &str) -> Verdict {
        Verdict {
            clock: ClockInfo {
                clock: 10,
                reset_count,
                restart_count: 0,
                safe: true,
            },
            pcrs: BTreeMap::new(),
            events: Vec::new(),
            checkpoint: (size, root.into()),
            firmware: 0x2023_0001,
        }
    }

    /// Security regression test: root rewrites the audit log while the device is off (a
    /// longer history, another root) and reboots; the next report verifies on its own. The
    /// comparison with the earlier report must not let the larger size pass for continuity:
    /// it says that across a reboot the log's extension of the earlier checkpoint is unproven.
    #[test]
    fn a_log_rewritten_across_a_reboot_is_not_passed_off_as_extending_the_earlier_one() {
        let notes = compare(&verdict(1, 10, "aa"), &verdict(2, 20, "bb")).expect("compared");
        assert!(notes.iter().any(|n| n.contains("reboot")), "{notes:?}");
        assert!(
            notes
                .iter()
                .any(|n| n.contains("does not prove") && n.contains("audit consistency")),
            "{notes:?}"
        );
        // Same boot: the measurements prove it (see `verify`), no such note.
        let notes = compare(&verdict(1, 10, "aa"), &verdict(1, 20, "bb")).expect("compared");
        assert!(notes.is_empty(), "{notes:?}");
        // A smaller log after a reboot is refused.
        assert!(compare(&verdict(1, 10, "aa"), &verdict(2, 5, "bb")).is_err());
    }

    /// Security regression test: a TPM whose clock and reset count went back to zero
    /// (TPM2_Clear) while the same AK still verifies its quotes, and reboots enough times for
    /// the reset count to pass the earlier report's, hiding how many reboots there were. The
    /// clock, which a TPM never sets back while it calls it safe, tells: refused. A clock
    /// marked not safe (an unorderly shutdown) may lag: then only a note. And within one
    /// boot a clock that goes from safe to not safe is no TPM's.
    #[test]
    fn a_cleared_tpm_whose_clock_went_back_while_safe_is_refused() {
        let mut earlier = verdict(3, 10, "aa");
        earlier.clock.clock = 9_000_000;
        let mut later = verdict(4, 12, "bb");
        later.clock.clock = 5_000;
        let e = compare(&earlier, &later).expect_err("clock back while safe");
        assert!(e.contains("cleared") && e.contains("safe"), "{e}");
        // The same after a TPM restart (not a reset).
        let mut restarted = verdict(3, 12, "bb");
        restarted.clock.restart_count = 1;
        restarted.clock.clock = 5_000;
        assert!(compare(&earlier, &restarted).is_err());
        // Not safe (an unorderly shutdown before this boot): a note, not a refusal.
        later.clock.safe = false;
        let notes = compare(&earlier, &later).expect("a lagging clock not safe");
        assert!(
            notes
                .iter()
                .any(|n| n.contains("not safe") && n.contains("reset count")),
            "{notes:?}"
        );
        // Within one boot: safe, then not safe.
        let mut same = verdict(3, 12, "bb");
        same.clock.clock = 9_500_000;
        same.clock.safe = false;
        let e = compare(&earlier, &same).expect_err("safe to not safe in one boot");
        assert!(e.contains("within one boot"), "{e}");
        // Not safe, then safe, in one boot: what a TPM does once it saves its clock.
        let mut e2 = earlier.clone();
        e2.clock.safe = false;
        let mut l2 = verdict(3, 12, "bb");
        l2.clock.clock = 9_500_000;
        assert!(compare(&e2, &l2).expect("fine").is_empty());
    }

    /// Security regression test: root extends a firmware PCR (0-7) after boot (to make a
    /// measured boot state look like another), or has the later quote leave a firmware PCR
    /// out (verify requires only PCRs 10 and 13). Within one boot the firmware's PCRs do not
    /// change, so either is refused; across a reboot a change is named (new firmware, boot
    /// configuration or Secure Boot state), never passed over.
    #[test]
    fn a_firmware_pcr_that_changes_or_vanishes_between_reports_is_named() {
        let with = |v: &mut Verdict, p: u32, b: u8| {
            v.pcrs.insert(p, [b; 32]);
        };
        let mut earlier = verdict(3, 10, "aa");
        with(&mut earlier, 0, 1);
        with(&mut earlier, 7, 2);
        let mut same = verdict(3, 12, "bb");
        with(&mut same, 0, 1);
        with(&mut same, 7, 2);
        assert!(compare(&earlier, &same).expect("unchanged").is_empty());
        let mut changed = same.clone();
        with(&mut changed, 7, 3);
        let e = compare(&earlier, &changed).expect_err("PCR 7 changed");
        assert!(
            e.contains("PCR 7 changed") && e.contains("within one boot"),
            "{e}"
        );
        let mut dropped = same.clone();
        dropped.pcrs.remove(&0);
        let e = compare(&earlier, &dropped).expect_err("PCR 0 left out");
        assert!(e.contains("leaves out") && e.contains("PCR 0"), "{e}");
        let mut appeared = same.clone();
        with(&mut appeared, 4, 9);
        let e = compare(&earlier, &appeared).expect_err("PCR 4 extended");
        assert!(e.contains("PCR 4 was extended"), "{e}");
        // PCR 10 (IMA) and 13 grow within a boot: no firmware PCRs, no complaint.
        let mut ima = same.clone();
        with(&mut ima, 10, 5);
        assert!(compare(&earlier, &ima).is_ok());
        // Another TPM firmware within one boot: two TPMs.
        let mut other_tpm = same.clone();
        other_tpm.firmware += 1;
        let e = compare(&earlier, &other_tpm).expect_err("firmware version");
        assert!(e.contains("two TPMs"), "{e}");
        // Across a reboot: named.
        let mut rebooted = changed.clone();
        rebooted.clock.reset_count = 4;
        let notes = compare(&earlier, &rebooted).expect("a reboot");
        assert!(
            notes
                .iter()
                .any(|n| n.contains("firmware's PCRs [7]") && n.contains("Secure Boot")),
            "{notes:?}"
        );
    }

    /// Security regression test: root sends TPM2_Shutdown(STATE) and resets the device, so
    /// the TPM comes back with a Restart: PCR 13 zeroed, reset count unchanged, restart count
    /// up. It then replays a prefix of the old event log (the measured checkpoints after it
    /// dropped). The later report's log no longer holds the earlier one's last events, yet it
    /// must not be called one boot that extends the earlier measurements: the restart is named
    /// as a break in continuity, the same as a reboot.
    #[test]
    fn a_tpm_restart_with_a_replayed_prefix_is_named_a_break_not_one_boot() {
        let ev = |seq: u64| Event {
            seq,
            kind: Kind::Checkpoint,
            detail: BTreeMap::new(),
            digest: format!("{seq:064x}"),
        };
        let mut earlier = verdict(1, 10, "aa");
        earlier.events = vec![ev(0), ev(1), ev(2), ev(3)];
        let mut later = verdict(1, 10, "aa");
        later.clock.restart_count = 1;
        later.events = vec![ev(0), ev(1), ev(2)];
        let notes = compare(&earlier, &later).expect("compared");
        assert!(
            notes
                .iter()
                .any(|n| n.contains("restarted") && n.contains("do not prove continuity")),
            "{notes:?}"
        );
        assert!(
            !notes.iter().any(|n| n.contains("hibernation")),
            "{notes:?}"
        );
        // A restart count that goes down within one reset is another TPM or swapped reports.
        let mut back = verdict(1, 10, "aa");
        back.clock.restart_count = 2;
        assert!(compare(&back, &verdict(1, 10, "aa")).is_err());
    }
}
