//! trustd's measurement event log: one JSON line per event extended into trustd's PCR
//! since boot, kept in the runtime directory (tmpfs: it goes with the reboot that resets the
//! PCR). Pure replay for verifiers: each event's digest is recomputed from its fields, never
//! taken from the file.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// The domain separation prefix hashed before each event's canonical JSON.
pub const EVENT_DOMAIN: &[u8] = b"enigm.org/trustd/measurement/v1\n";
/// The largest event log a verifier reads (events).
pub const MAX_EVENTS: usize = 100_000;

/// What trustd measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// trustd started (details: version, boot id, audit tree head).
    Start,
    /// A ruleset was confirmed in the kernel (details: mode, policy digest, ruleset digest).
    Enforce,
    /// An audit checkpoint was signed (details: origin, size, root).
    Checkpoint,
}

/// One measured event: what is hashed into the PCR.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// 0, 1, ... since boot.
    pub seq: u64,
    /// What happened.
    pub kind: Kind,
    /// Its details (sorted keys).
    pub detail: BTreeMap<String, String>,
    /// Hex SHA-256 of [`EVENT_DOMAIN`] and the canonical JSON of the three fields above: the
    /// value extended. A verifier recomputes it.
    pub digest: String,
}

#[derive(Serialize)]
struct Canonical<'a> {
    seq: u64,
    kind: Kind,
    detail: &'a BTreeMap<String, String>,
}

impl Event {
    /// A new event with its digest.
    pub fn new(seq: u64, kind: Kind, detail: BTreeMap<String, String>) -> Self {
        let mut e = Self {
            seq,
            kind,
            detail,
            digest: String::new(),
        };
        e.digest = crate::bundle::hex(&e.compute());
        e
    }

    /// The digest recomputed from the event's fields.
    pub fn compute(&self) -> [u8; 32] {
        let body = serde_json::to_vec(&Canonical {
            seq: self.seq,
            kind: self.kind,
            detail: &self.detail,
        })
        .unwrap_or_default();
        let mut h = Sha256::new();
        h.update(EVENT_DOMAIN);
        h.update(&body);
        h.finalize().into()
    }
}

/// `PCR_new = SHA-256(PCR_old || digest)` (TPM2_PCR_Extend of the SHA-256 bank).
pub fn extend(pcr: &[u8; 32], digest: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(pcr);
    h.update(digest);
    h.finalize().into()
}

/// Why an event log does not replay.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// An event's stored digest is not the digest of its fields (edited).
    #[error("event {seq}: its digest is not the digest of its fields (the event was edited)")]
    Digest {
        /// The event.
        seq: u64,
    },
    /// The events are not numbered 0, 1, ...
    #[error("event at position {at} is numbered {seq} (events are missing or reordered)")]
    Order {
        /// Position in the log.
        at: usize,
        /// Its seq.
        seq: u64,
    },
    /// The replay ends at another value than the PCR holds.
    #[error(
        "the event log replays to {replayed}, but the PCR holds {pcr} (events were removed, added or edited, or something else extended the PCR)"
    )]
    Mismatch {
        /// Hex of the replayed value.
        replayed: String,
        /// Hex of the PCR.
        pcr: String,
    },
}

/// Replay `events` from a reset PCR (all zero), checking each digest and the numbering.
pub fn replay(events: &[Event]) -> Result<[u8; 32], ReplayError> {
    let mut pcr = [0u8; 32];
    for (at, e) in events.iter().enumerate() {
        if e.seq != at as u64 {
            return Err(ReplayError::Order { at, seq: e.seq });
        }
        let d = e.compute();
        if crate::bundle::hex(&d) != e.digest {
            return Err(ReplayError::Digest { seq: e.seq });
        }
        pcr = extend(&pcr, &d);
    }
    Ok(pcr)
}

/// Replay `events` and compare with the PCR's value.
pub fn replay_matches(events: &[Event], pcr: &[u8; 32]) -> Result<(), ReplayError> {
    let replayed = replay(events)?;
    if &replayed != pcr {
        return Err(ReplayError::Mismatch {
            replayed: crate::bundle::hex(&replayed),
            pcr: crate::bundle::hex(pcr),
        });
    }
    Ok(())
}

/// The event log file: JSON lines, appended before each extend.
#[derive(Debug)]
pub struct EventLog {
    path: PathBuf,
    events: Vec<Event>,
}

impl EventLog {
    /// Open (or start) the log at `path`. Lines that do not parse end the log read there
    /// (a torn write); what was read is kept.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        let events = text
            .lines()
            .map_while(|l| serde_json::from_str::<Event>(l).ok())
            .take(MAX_EVENTS)
            .collect();
        Ok(Self {
            path: path.to_owned(),
            events,
        })
    }

    /// The events read or appended.
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// Where the log is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append an event (written and flushed before the caller extends the PCR).
    pub fn append(
        &mut self,
        kind: Kind,
        detail: BTreeMap<String, String>,
    ) -> std::io::Result<Event> {
        let e = Event::new(self.events.len() as u64, kind, detail);
        let mut line = serde_json::to_vec(&e)?;
        line.push(b'\n');
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        f.write_all(&line)?;
        self.events.push(e.clone());
        Ok(e)
    }

    /// Rewrite the file to hold exactly the events kept (after a torn line was found).
    pub fn rewrite(&self) -> std::io::Result<()> {
        let mut text = Vec::new();
        for e in &self.events {
            text.extend(serde_json::to_vec(e)?);
            text.push(b'\n');
        }
        crate::state::atomic::write_atomic(&self.path, &text, 0o644)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detail(k: &str, v: &str) -> BTreeMap<String, String> {
        BTreeMap::from([(k.to_owned(), v.to_owned())])
    }

    #[test]
    fn a_log_replays_to_the_pcr_and_any_edit_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("run/measurements.jsonl");
        let mut log = EventLog::open(&path).expect("open");
        let mut pcr = [0u8; 32];
        for (k, d) in [
            (Kind::Start, detail("version", "1")),
            (Kind::Enforce, detail("ruleset", "ab")),
            (Kind::Checkpoint, detail("size", "3")),
        ] {
            let e = log.append(k, d).expect("append");
            pcr = extend(&pcr, &e.compute());
        }
        let again = EventLog::open(&path).expect("reopen");
        assert_eq!(again.events(), log.events());
        replay_matches(again.events(), &pcr).expect("replays");

        let mut edited = again.events().to_vec();
        edited[1].detail.insert("ruleset".into(), "cd".into());
        assert_eq!(replay(&edited), Err(ReplayError::Digest { seq: 1 }));
        // Edited with a digest recomputed: the PCR tells.
        edited[1] = Event::new(1, Kind::Enforce, detail("ruleset", "cd"));
        assert!(matches!(
            replay_matches(&edited, &pcr),
            Err(ReplayError::Mismatch { .. })
        ));
        let mut dropped = again.events().to_vec();
        dropped.remove(1);
        assert_eq!(replay(&dropped), Err(ReplayError::Order { at: 1, seq: 2 }));
        dropped.truncate(1);
        assert!(matches!(
            replay_matches(&dropped, &pcr),
            Err(ReplayError::Mismatch { .. })
        ));
    }
}
