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
/// trusts and the device key that signed the report's checkpoint.
pub fn verify(
    opened: &Opened,
    ak: &p256::ecdsa::VerifyingKey,
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
    let checked =
        quote::check(&attest, &sig, ak, &opened.qualifying, &pcrs).map_err(|e| e.to_string())?;
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
