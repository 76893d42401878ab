//! One audit record and its place in the chain.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::hex;

/// The `prev` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Who caused a transition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Actor {
    /// The caller's uid as the kernel or the bus daemon reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// The caller's pid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// The caller's unique bus name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bus_name: Option<String>,
}

impl Actor {
    /// This process (trustd itself, or trustctl acting offline).
    pub fn this_process() -> Self {
        Self {
            uid: Some(crate::sys::uid()),
            pid: Some(crate::sys::pid()),
            bus_name: None,
        }
    }
}

/// How a transition ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Done.
    Ok,
    /// Refused: bad input or not allowed; nothing changed.
    Refused,
    /// Failed: the system could not do it; the last good state stays.
    Error,
}

impl Outcome {
    /// Its name in records.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Refused => "refused",
            Self::Error => "error",
        }
    }

    /// The level its journald copy is logged at: ok at INFO (journald priority notice),
    /// refused at WARN (warning), error at ERROR (err), so that `journalctl -p warning`
    /// shows every refusal and failure and no success.
    pub fn level(&self) -> tracing::Level {
        match self {
            Self::Ok => tracing::Level::INFO,
            Self::Refused => tracing::Level::WARN,
            Self::Error => tracing::Level::ERROR,
        }
    }
}

/// What a caller records; the log adds sequence, times and chaining.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// What happened (`policy.apply`, `privacy.set`, `audit.repair`, ...).
    pub kind: String,
    /// The state before, if the record is a transition.
    pub from: Option<String>,
    /// The state after.
    pub to: Option<String>,
    /// Who asked.
    pub actor: Actor,
    /// How it ended.
    pub outcome: Outcome,
    /// Why, as a sentence (the refusal's message).
    pub reason: Option<String>,
    /// Digests of inputs (name -> lowercase hex SHA-256) and counts.
    pub digests: BTreeMap<String, String>,
}

impl Entry {
    /// An entry of `kind` with `outcome` by `actor`.
    pub fn new(kind: impl Into<String>, outcome: Outcome, actor: Actor) -> Self {
        Self {
            kind: kind.into(),
            from: None,
            to: None,
            actor,
            outcome,
            reason: None,
            digests: BTreeMap::new(),
        }
    }

    /// With a reason.
    pub fn reason(mut self, r: impl Into<String>) -> Self {
        self.reason = Some(r.into());
        self
    }

    /// With a transition.
    pub fn transition(mut self, from: impl Into<String>, to: impl Into<String>) -> Self {
        self.from = Some(from.into());
        self.to = Some(to.into());
        self
    }

    /// With an input digest.
    pub fn digest(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.digests.insert(name.into(), value.into());
        self
    }
}

/// A record as stored: one JSON line. `seq` and `prev` come first so that a verifier can
/// walk the chain without a full parse; the line's SHA-256 is the next record's `prev`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// 0, 1, 2, ... without gaps across segments.
    pub seq: u64,
    /// Lowercase hex SHA-256 of the previous record's line ([`GENESIS`] for seq 0).
    pub prev: String,
    /// Wall-clock time, RFC 3339 UTC.
    pub time: String,
    /// CLOCK_MONOTONIC in nanoseconds (orders records within a boot).
    pub mono_ns: u64,
    /// The boot the record was written in.
    pub boot_id: String,
    /// See [`Entry::kind`].
    pub kind: String,
    /// See [`Entry::from`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// See [`Entry::to`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// See [`Entry::actor`].
    pub actor: Actor,
    /// See [`Entry::outcome`].
    pub outcome: Outcome,
    /// See [`Entry::reason`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// See [`Entry::digests`].
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub digests: BTreeMap<String, String>,
}

/// The chain hash of a record: SHA-256 of its line without the newline.
pub fn record_hash(line: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(line).into()
}

/// Lowercase hex of a chain hash.
pub(crate) fn hash_hex(h: &[u8; 32]) -> String {
    hex(h)
}
