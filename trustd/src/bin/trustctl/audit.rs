//! The audit log offline, from the files: `audit verify|tail|export|prove|consistency`
//! with `--prefix`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use serde_json::json;

use trustd::Paths;
use trustd::audit::read_records;
use trustd::bundle::PublicKeyFile;

use super::output::{Refused, print, read, refused};

pub(crate) fn audit_verify(j: bool, prefix: &Path) -> Result<ExitCode> {
    let paths = Paths::new(prefix);
    let dir = paths.audit_dir();
    // With the device's public key at hand, the stored checkpoint is checked too (a chain
    // rewritten consistently, a log cut below it, a checkpoint removed or put back older).
    let anchor =
        PublicKeyFile::load(&paths.device_pub())
            .ok()
            .map(|key| trustd::audit::damage::Anchor {
                origin: trustd::report::origin(&key),
                key,
            });
    let insp = trustd::audit::damage::inspect(&dir, anchor.as_ref())?;
    let rep = &insp.report;
    // Findings beyond the chain's problems (the checkpoint's), which no damage record names.
    let extra: Vec<String> = insp
        .findings
        .iter()
        .filter(|f| f.kind.starts_with("checkpoint") || f.kind.starts_with("log-"))
        .filter(|f| !matches!(f.kind, "log-truncated"))
        .filter(|f| !insp.history.known.contains(&f.id()))
        .map(|f| format!("[{}] {}", f.kind, f.text))
        .collect();
    let unacked = insp.history.unacknowledged();
    let acked = insp.history.damage.len() - unacked.len();
    let ok = rep.ok() && extra.is_empty() && unacked.is_empty();
    if j {
        out!(
            "{}",
            json!({"ok": ok, "report": rep, "checkpoint_problems": extra,
                "damage_recorded": insp.history.damage.iter().map(|(s, r)| json!({"seq": s, "reason": r})).collect::<Vec<_>>(),
                "damage_unacknowledged": unacked.iter().map(|(s, _)| s).collect::<Vec<_>>()})
        );
    } else {
        if rep.ok() && extra.is_empty() {
            out!(
                "audit log intact: {} records in {} segments, head at {}",
                rep.records,
                rep.segments,
                rep.head_seq.map_or("none".into(), |s| s.to_string())
            );
        } else {
            out!(
                "audit log damaged: {} problem(s) in {} records",
                rep.problems.len() + extra.len(),
                rep.records
            );
            for p in &rep.problems {
                out!("  {p}");
            }
            for p in &extra {
                out!("  {p}");
            }
        }
        if !insp.history.damage.is_empty() {
            out!(
                "damage recorded by trustd in {} record(s), {acked} acknowledged by an admin:",
                insp.history.damage.len()
            );
            for (seq, reason) in &insp.history.damage {
                let state = if unacked.iter().any(|(s, _)| s == seq) {
                    "NOT acknowledged"
                } else {
                    "acknowledged"
                };
                out!("  record {seq} ({state}): {reason}");
            }
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

pub(crate) fn audit_tail(j: bool, prefix: &Path, n: usize) -> Result<ExitCode> {
    let dir = Paths::new(prefix).audit_dir();
    let records = read_records(&dir)?;
    for r in records.iter().skip(records.len().saturating_sub(n)) {
        if j {
            out!("{}", serde_json::to_string(r)?);
        } else {
            let what = match (&r.from, &r.to) {
                (Some(f), Some(t)) => format!(" {f} -> {t}"),
                _ => String::new(),
            };
            out!(
                "{:>6} {} {} {}{}{}",
                r.seq,
                r.time,
                r.kind,
                r.outcome.as_str(),
                what,
                r.reason
                    .as_deref()
                    .map(|x| format!(": {x}"))
                    .unwrap_or_default()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The device's public key from `path`: trustd's key file (`device.pub`, JSON) or a
/// signed-note verifier key (`device.vkey`), whose name must be the key's checkpoint origin.
pub(crate) fn device_key(path: &Path) -> Result<ed25519_dalek::VerifyingKey> {
    let bytes = read(path)?;
    if bytes.trim_ascii_start().starts_with(b"{") {
        return Ok(PublicKeyFile::load(path)?);
    }
    if bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
        return Err(Refused(format!(
            "{}: a PEM key, not the device key: --key takes the device's device.pub (or device.vkey); the TPM's tpm-ak.pem goes to --ak",
            path.display()
        ))
        .into());
    }
    let text =
        String::from_utf8(bytes).map_err(|_| Refused(format!("{}: not UTF-8", path.display())))?;
    let (name, key) = trustd::audit::checkpoint::parse_verifier_key(&text)
        .map_err(|e| Refused(format!("{}: {e}", path.display())))?;
    let origin = trustd::report::origin(&key);
    if name != origin {
        return Err(Refused(format!(
            "{}: verifier key name {name} is not its key's origin {origin}",
            path.display()
        ))
        .into());
    }
    Ok(key)
}

/// A checkpoint file verified with the device key (its key name is the key's origin).
fn load_checkpoint(
    path: &Path,
    key: &ed25519_dalek::VerifyingKey,
) -> Result<trustd::audit::Checkpoint> {
    let note = String::from_utf8(read(path)?)
        .map_err(|_| Refused(format!("{}: not UTF-8", path.display())))?;
    let origin = trustd::report::origin(key);
    let cp = trustd::audit::checkpoint::parse_and_verify(&note, &origin, key)
        .map_err(|e| Refused(format!("{}: {e}", path.display())))?;
    if cp.origin != origin {
        return Err(Refused(format!(
            "{}: origin {} is not this device's {origin}",
            path.display(),
            cp.origin
        ))
        .into());
    }
    Ok(cp)
}

/// A writer that passes every byte on and notes which lines (1-based) are not JSON: the
/// export still writes a damaged log's exact lines (they are its Merkle leaves), but it does
/// not pass them off as JSON lines.
struct JsonLines<W> {
    inner: W,
    line: Vec<u8>,
    n: u64,
    bad: Vec<u64>,
}

impl<W: std::io::Write> std::io::Write for JsonLines<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        for &b in &buf[..n] {
            if b == b'\n' {
                self.n += 1;
                if serde_json::from_slice::<serde_json::Value>(&self.line).is_err() {
                    self.bad.push(self.n);
                }
                self.line.clear();
            } else {
                self.line.push(b);
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

pub(crate) fn audit_export(j: bool, prefix: &Path, out: Option<&Path>) -> Result<ExitCode> {
    let dir = Paths::new(prefix).audit_dir();
    let (records, bad) = match out {
        Some(path) => {
            let file = std::fs::File::create(path)
                .with_context(|| format!("creating {}", path.display()))?;
            let mut w = JsonLines {
                inner: std::io::BufWriter::new(file),
                line: Vec::new(),
                n: 0,
                bad: Vec::new(),
            };
            let n = trustd::audit::export_records(&dir, &mut w, path)?;
            (n, w.bad)
        }
        None => {
            let mut w = JsonLines {
                inner: std::io::BufWriter::new(std::io::stdout().lock()),
                line: Vec::new(),
                n: 0,
                bad: Vec::new(),
            };
            let n = trustd::audit::export_records(&dir, &mut w, Path::new("stdout"))?;
            (n, w.bad)
        }
    };
    if !bad.is_empty() {
        return Err(refused(format!(
            "{records} lines exported, but lines {bad:?} are not JSON: the log is damaged \
             (`trustctl audit verify --prefix {}` says where)",
            prefix.display()
        )));
    }
    if let (true, Some(path)) = (j, out) {
        out!(
            "{}",
            json!({"ok": true, "out": path.display().to_string(), "records": records})
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn audit_prove(
    j: bool,
    seq: u64,
    cp: &Path,
    key: &Path,
    prefix: &Path,
) -> Result<ExitCode> {
    let vk = device_key(key)?;
    let cp = load_checkpoint(cp, &vk)?;
    let dir = Paths::new(prefix).audit_dir();
    let (proof, line) = trustd::audit::checkpoint::prove_inclusion_in_dir(&dir, seq, &cp)
        .map_err(|e| Refused(e.to_string()))?;
    trustd::audit::checkpoint::verify_inclusion_proof(&cp, &proof, &line)
        .map_err(|e| Refused(e.to_string()))?;
    let proof_json = serde_json::to_value(&proof)?;
    print(
        j,
        json!({"ok": true, "seq": seq, "tree_size": cp.size, "proof": proof_json}),
        &format!(
            "record {seq} is in the log checkpoint size {} commits to\n{}",
            cp.size,
            serde_json::to_string_pretty(&proof_json)?
        ),
    );
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn audit_consistency(
    j: bool,
    old: &Path,
    new: Option<&Path>,
    key: &Path,
    prefix: &Path,
) -> Result<ExitCode> {
    use trustd::audit::checkpoint::{check_dir_consistency, verify_consistency_proof};
    let vk = device_key(key)?;
    let old = load_checkpoint(old, &vk)?;
    let dir = Paths::new(prefix).audit_dir();
    let now = check_dir_consistency(&dir, &old).map_err(|e| Refused(e.to_string()))?;
    let current = trustd::audit::Checkpoint {
        origin: old.origin.clone(),
        size: now.size,
        root: now.root,
    };
    verify_consistency_proof(&old, &current, &now.proof).map_err(|e| Refused(e.to_string()))?;
    let mut text = format!(
        "the log ({} records) extends checkpoint size {}: nothing before it was removed or rewritten",
        now.size, old.size
    );
    // The proofs, for a verifier that checks them itself (RFC 6962 section 2.1.2 order;
    // hashes as lowercase hex).
    let mut out = json!({"ok": true, "old_size": old.size, "size": now.size,
                         "old_root": trustd::bundle::hex(&old.root), "root": trustd::bundle::hex(&now.root),
                         "proof": serde_json::to_value(&now.proof)?});
    if let Some(new) = new {
        let new = load_checkpoint(new, &vk)?;
        let tree = trustd::audit::merkle_from_dir(&dir).map_err(|e| Refused(e.to_string()))?;
        let root = tree.root_at(new.size).map_err(|e| {
            Refused(format!(
                "the files do not reach checkpoint size {}: {e}",
                new.size
            ))
        })?;
        if root != new.root {
            return Err(Refused(format!(
                "the files do not match checkpoint size {}: its root differs",
                new.size
            ))
            .into());
        }
        let proof = tree
            .consistency_proof(old.size, new.size)
            .map_err(|e| Refused(e.to_string()))?;
        verify_consistency_proof(&old, &new, &proof).map_err(|e| Refused(e.to_string()))?;
        out["new_size"] = json!(new.size);
        out["new_root"] = json!(trustd::bundle::hex(&new.root));
        out["new_proof"] = serde_json::to_value(&proof)?;
        text.push_str(&format!(
            "; checkpoint size {} extends checkpoint size {}",
            new.size, old.size
        ));
    }
    print(j, out, &text);
    Ok(ExitCode::SUCCESS)
}
