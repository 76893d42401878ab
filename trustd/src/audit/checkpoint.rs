//! Signed checkpoints of the audit log's Merkle tree, and the checks a verifier who kept an
//! old checkpoint makes against the log's files.
//!
//! A checkpoint is a C2SP signed note (c2sp.org/signed-note) whose text is a C2SP checkpoint
//! (c2sp.org/tlog-checkpoint):
//!
//! ```text
//! enigm.org/trustd/<first 16 hex digits of the device key's keyid>
//! 1234
//! <base64 of the root hash>
//!
//! — <key name> <base64 of key ID (4 bytes) || ed25519 signature (64 bytes)>
//! ```
//!
//! key ID = SHA-256(key name || 0x0A || 0x01 || 32-byte public key)[:4]; the signature is
//! over the text (the three lines, each with its newline). The parser is strict: exactly the
//! three lines (no extension lines), a canonical size no larger than 2^63 - 1, a canonical
//! base64 root of 32 bytes, one signature by the given key (name and key ID). Signatures by
//! other keys (a witness's cosignature, say) are skipped, as signed-note requires.
//!
//! The key name is the origin. The device's public key is also published as a signed-note
//! verifier key ([`verifier_key`], `device.vkey`): `<name>+<key ID hex>+<base64 of 0x01 ||
//! public key>`, the form Go's `golang.org/x/mod/sumdb/note` and other note verifiers read.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use super::merkle::{
    ConsistencyProof, Hash, InclusionProof, MerkleTree, ProofError, for_each_line,
};
use super::segment::chain_fields;
use super::{AuditError, AuditLog};
use crate::digest::hex;

/// The latest checkpoint, in the audit directory.
pub const CHECKPOINT_FILE: &str = "checkpoint";

/// The intent file written (durably) before a checkpoint is announced in the log and removed
/// once the checkpoint file is stored: its content is the size announced (decimal). At open,
/// an announcement that is the log's last record, with this file naming it, is a run that
/// stopped between announcing and storing (a crash, not a removed or older checkpoint).
pub const PENDING_FILE: &str = "checkpoint.pending";

/// Write [`PENDING_FILE`] in `dir` naming `size`, durably (atomic replace, directory synced).
pub fn write_pending(dir: &Path, size: u64) -> Result<(), AuditError> {
    let path = dir.join(PENDING_FILE);
    crate::files::atomic::write_atomic(&path, size.to_string().as_bytes(), 0o640)
        .map_err(|source| AuditError::Io { path, source })
}

/// The size [`PENDING_FILE`] in `dir` names, if the file exists and holds a number.
pub fn read_pending(dir: &Path) -> Option<u64> {
    let text = std::fs::read(dir.join(PENDING_FILE)).ok()?;
    if text.len() > 20 {
        return None;
    }
    std::str::from_utf8(&text).ok()?.trim().parse().ok()
}

/// Remove [`PENDING_FILE`] from `dir` (absent is fine). Not synced: a removal lost to a
/// crash leaves a file naming a checkpoint that was stored, which open tells apart.
pub fn clear_pending(dir: &Path) -> Result<(), AuditError> {
    let path = dir.join(PENDING_FILE);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(AuditError::Io { path, source }),
    }
}
/// The largest note accepted (signed-note asks verifiers to take at least 16 signatures).
pub const MAX_NOTE_BYTES: usize = 16 << 10;
/// The longest line accepted.
pub const MAX_LINE_BYTES: usize = 1024;
/// The most signature lines accepted.
pub const MAX_SIGNATURES: usize = 16;
/// The largest tree size accepted: 2^63 - 1.
pub const MAX_TREE_SIZE: u64 = i64::MAX as u64;

/// Em dash and space: how a signature line starts.
const SIG_PREFIX: &str = "\u{2014} ";
/// The signed-note signature type of ed25519.
const ED25519: u8 = 0x01;

/// A tree head of the log: what a checkpoint signs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Who issued it: `enigm.org/trustd/<first 16 hex digits of the device key's keyid>`.
    pub origin: String,
    /// The number of records covered.
    pub size: u64,
    /// The Merkle root of those records.
    pub root: Hash,
}

/// Why a checkpoint could not be made, read or checked. Each says what is wrong and where.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The note is too large.
    #[error("checkpoint note is {len} bytes; at most {MAX_NOTE_BYTES} are accepted")]
    TooLarge {
        /// Its length.
        len: usize,
    },
    /// A line is too long.
    #[error("checkpoint note line {line} is {len} bytes; at most {MAX_LINE_BYTES} are accepted")]
    LineTooLong {
        /// 1-based line.
        line: usize,
        /// Its length.
        len: usize,
    },
    /// A control character other than newline.
    #[error(
        "checkpoint note line {line} has the control character U+{code:04X}; only newline is allowed"
    )]
    ControlChar {
        /// 1-based line.
        line: usize,
        /// The character.
        code: u32,
    },
    /// The note does not end with a newline.
    #[error("checkpoint note does not end with a newline")]
    NoFinalNewline,
    /// No blank line followed by signature lines.
    #[error("checkpoint note has no blank line followed by signature lines")]
    NoSignatures,
    /// The text is not exactly origin, size and root.
    #[error(
        "checkpoint text has {found} lines; a trustd checkpoint has exactly 3 (origin, tree size, root hash) and no extension lines"
    )]
    TextLines {
        /// Lines found.
        found: usize,
    },
    /// The origin is not acceptable.
    #[error("checkpoint origin {origin:?} {reason}")]
    Origin {
        /// The origin.
        origin: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The tree size is not a canonical decimal number up to 2^63 - 1.
    #[error("checkpoint tree size {text:?} {reason}")]
    Size {
        /// The line.
        text: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The root hash is not canonical base64 of 32 bytes.
    #[error("checkpoint root hash {text:?} {reason}")]
    RootHash {
        /// The line.
        text: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The key name is not acceptable.
    #[error("key name {name:?} {reason}")]
    KeyName {
        /// The name.
        name: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A verifier key (vkey) is malformed or does not match itself.
    #[error("verifier key {reason}")]
    VerifierKey {
        /// What is wrong.
        reason: String,
    },
    /// A signature line is malformed.
    #[error("checkpoint note line {line}: {reason}")]
    SignatureLine {
        /// 1-based line.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// Too many signature lines.
    #[error("checkpoint note has {found} signature lines; at most {MAX_SIGNATURES} are accepted")]
    TooManySignatures {
        /// Lines found.
        found: usize,
    },
    /// Signed under the key name, but by another key.
    #[error(
        "checkpoint is signed by {name} with key ID {found}, not by the key given (key ID {expected})"
    )]
    KeyIdMismatch {
        /// The key name.
        name: String,
        /// The key ID in the note (hex).
        found: String,
        /// The given key's ID (hex).
        expected: String,
    },
    /// No signature by the key.
    #[error("checkpoint has no signature by {name} (signed by: {signers})")]
    NotSigned {
        /// The key name.
        name: String,
        /// Who signed it (name and key ID), comma-separated.
        signers: String,
    },
    /// Two signatures by the key.
    #[error("checkpoint has more than one signature by {name}")]
    DuplicateSignature {
        /// The key name.
        name: String,
    },
    /// The signature by the key does not verify.
    #[error("checkpoint signature by {name} does not verify: the note was altered after signing")]
    BadSignature {
        /// The key name.
        name: String,
    },
    /// Not the origin expected.
    #[error("checkpoint is from {found:?}, not {expected:?}")]
    OriginMismatch {
        /// The origin expected.
        expected: String,
        /// The origin found.
        found: String,
    },
    /// The log has fewer records than the checkpoint covers.
    #[error(
        "the log has {records} records, fewer than the {size} its checkpoint covers: records were removed"
    )]
    Shorter {
        /// Records (leaves) in the log.
        records: u64,
        /// The checkpoint's size.
        size: u64,
    },
    /// The log's first `size` records are not the ones the checkpoint signed.
    #[error("the log is not consistent with the checkpoint of size {size}: {source}")]
    NotConsistent {
        /// The checkpoint's size.
        size: u64,
        /// Why the proof failed.
        #[source]
        source: ProofError,
    },
    /// A record is not in the checkpoint's tree.
    #[error("record {seq} is not in the tree of the checkpoint of size {size}: {source}")]
    NotIncluded {
        /// The record.
        seq: u64,
        /// The checkpoint's size.
        size: u64,
        /// Why the proof failed.
        #[source]
        source: ProofError,
    },
    /// The line at a leaf is not the record with that seq.
    #[error("leaf {index} of the log is not record {index}: {found}")]
    NotRecord {
        /// The leaf index.
        index: u64,
        /// What is there.
        found: String,
    },
    /// A proof's sizes are not the checkpoints'.
    #[error("the proof is for a tree of {proof} records but the checkpoint has {checkpoint}")]
    ProofSize {
        /// The proof's size.
        proof: u64,
        /// The checkpoint's size.
        checkpoint: u64,
    },
    /// Reading or writing the log's files failed.
    #[error(transparent)]
    Audit(#[from] AuditError),
}

/// The signed-note key ID of an ed25519 key under `name`.
pub fn key_id(name: &str, key: &VerifyingKey) -> [u8; 4] {
    let h = Sha256::new()
        .chain_update(name.as_bytes())
        .chain_update([b'\n', ED25519])
        .chain_update(key.as_bytes())
        .finalize();
    [h[0], h[1], h[2], h[3]]
}

/// The signed-note verifier key (c2sp.org/signed-note) of the ed25519 `key` under `name`:
/// `<name>+<key ID, 8 lowercase hex digits>+<base64 of 0x01 || the 32-byte key>`, one line
/// without a newline. Errors: a name signed-note does not allow.
pub fn verifier_key(name: &str, key: &VerifyingKey) -> Result<String, CheckpointError> {
    check_key_name(name)?;
    let mut blob = Vec::with_capacity(33);
    blob.push(ED25519);
    blob.extend_from_slice(key.as_bytes());
    Ok(format!(
        "{name}+{}+{}",
        hex(&key_id(name, key)),
        STANDARD.encode(blob)
    ))
}

/// Parse a signed-note verifier key of an ed25519 key (the form [`verifier_key`] writes; one
/// trailing `\n` or `\r\n` is allowed, and the key ID may be in either case, as Go's
/// `note.NewVerifier` allows): its name and key. Refused: not three `+`-separated fields, a
/// name signed-note does not allow, a key ID that is not 8 hex digits or not the one the name
/// and key give, non-canonical base64 (stricter than Go, which ignores line breaks inside the
/// key and non-zero padding bits: no encoder writes those), another signature type than
/// ed25519 (0x01), or bytes that are not an ed25519 public key.
pub fn parse_verifier_key(vkey: &str) -> Result<(String, VerifyingKey), CheckpointError> {
    let bad = |reason: String| CheckpointError::VerifierKey { reason };
    let line = vkey
        .strip_suffix("\r\n")
        .or_else(|| vkey.strip_suffix('\n'))
        .unwrap_or(vkey);
    let mut fields = line.splitn(3, '+');
    let (Some(name), Some(id), Some(b64)) = (fields.next(), fields.next(), fields.next()) else {
        return Err(bad(
            "is not <name>+<key ID>+<base64 key> (three fields separated by '+')".into(),
        ));
    };
    check_name(name).map_err(|reason| bad(format!("name {name:?} {reason}")))?;
    if id.len() != 8 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad(format!("key ID {id:?} is not 8 hex digits")));
    }
    let raw = STANDARD
        .decode(b64)
        .ok()
        .filter(|raw| STANDARD.encode(raw) == b64)
        .ok_or_else(|| bad("key is not canonical base64".into()))?;
    match raw.split_first() {
        Some((&ED25519, rest)) if rest.len() == 32 => {}
        Some((&ED25519, rest)) => {
            return Err(bad(format!(
                "ed25519 key is {} bytes; it is 32",
                rest.len()
            )));
        }
        Some((t, _)) => {
            return Err(bad(format!(
                "has signature type 0x{t:02x}; only ed25519 (0x01) is accepted"
            )));
        }
        None => return Err(bad("key is empty".into())),
    }
    let bytes: [u8; 32] = raw[1..].try_into().expect("checked: 32 bytes");
    let key = VerifyingKey::from_bytes(&bytes)
        .map_err(|_| bad("key is not an ed25519 public key".into()))?;
    if !hex(&key_id(name, &key)).eq_ignore_ascii_case(id) {
        return Err(bad(format!(
            "key ID {id} is not the one name {name:?} and its key give ({})",
            hex(&key_id(name, &key))
        )));
    }
    Ok((name.to_owned(), key))
}

/// Key names and origins: non-empty, no spaces, no `+`, no control characters, one line.
fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("is empty");
    }
    if name.len() > MAX_LINE_BYTES / 2 {
        return Err("is too long");
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("contains a space or a control character");
    }
    if name.contains('+') {
        return Err("contains '+'");
    }
    Ok(())
}

fn check_key_name(name: &str) -> Result<(), CheckpointError> {
    check_name(name).map_err(|reason| CheckpointError::KeyName {
        name: name.to_owned(),
        reason,
    })
}

impl Checkpoint {
    /// The checkpoint's note text: origin, size and base64 root, each ending in a newline.
    pub fn text(&self) -> Result<String, CheckpointError> {
        check_name(&self.origin).map_err(|reason| CheckpointError::Origin {
            origin: self.origin.clone(),
            reason,
        })?;
        if self.size > MAX_TREE_SIZE {
            return Err(CheckpointError::Size {
                text: self.size.to_string(),
                reason: "is over 2^63 - 1",
            });
        }
        Ok(format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            STANDARD.encode(self.root)
        ))
    }

    fn parse_text(text: &str) -> Result<Self, CheckpointError> {
        let lines: Vec<&str> = text.split_terminator('\n').collect();
        let [origin, size, root] = lines[..] else {
            return Err(CheckpointError::TextLines { found: lines.len() });
        };
        check_name(origin).map_err(|reason| CheckpointError::Origin {
            origin: origin.to_owned(),
            reason,
        })?;
        let size_err = |reason| CheckpointError::Size {
            text: size.to_owned(),
            reason,
        };
        if size.is_empty() || !size.bytes().all(|b| b.is_ascii_digit()) {
            return Err(size_err("is not a decimal number"));
        }
        if size.len() > 1 && size.starts_with('0') {
            return Err(size_err("has a leading zero"));
        }
        let size = size
            .parse::<u64>()
            .ok()
            .filter(|&s| s <= MAX_TREE_SIZE)
            .ok_or_else(|| size_err("is over 2^63 - 1"))?;
        let root_err = |reason| CheckpointError::RootHash {
            text: root.to_owned(),
            reason,
        };
        let raw = STANDARD
            .decode(root)
            .map_err(|_| root_err("is not base64"))?;
        let hash: Hash = raw
            .as_slice()
            .try_into()
            .map_err(|_| root_err("is not 32 bytes"))?;
        if STANDARD.encode(hash) != root {
            return Err(root_err("is not canonical base64"));
        }
        Ok(Self {
            origin: origin.to_owned(),
            size,
            root: hash,
        })
    }
}

/// Sign `text` as a signed note by `key` under `key_name`.
fn sign_note(text: &str, key_name: &str, key: &SigningKey) -> String {
    let mut blob = key_id(key_name, &key.verifying_key()).to_vec();
    blob.extend_from_slice(&key.sign(text.as_bytes()).to_bytes());
    format!("{text}\n{SIG_PREFIX}{key_name} {}\n", STANDARD.encode(blob))
}

/// Check a signed note's form and its signature by `key` under `key_name`; returns its text.
fn open_note<'a>(
    note: &'a str,
    key_name: &str,
    key: &VerifyingKey,
) -> Result<&'a str, CheckpointError> {
    if note.len() > MAX_NOTE_BYTES {
        return Err(CheckpointError::TooLarge { len: note.len() });
    }
    for (i, line) in note.split('\n').enumerate() {
        if line.len() > MAX_LINE_BYTES {
            return Err(CheckpointError::LineTooLong {
                line: i + 1,
                len: line.len(),
            });
        }
        if let Some(c) = line.chars().find(|&c| c < ' ') {
            return Err(CheckpointError::ControlChar {
                line: i + 1,
                code: u32::from(c),
            });
        }
    }
    if !note.ends_with('\n') {
        return Err(CheckpointError::NoFinalNewline);
    }
    // The text is separated from the signatures by the note's last blank line.
    let sep = note.rfind("\n\n").ok_or(CheckpointError::NoSignatures)?;
    let (text, sigs) = (&note[..sep + 1], &note[sep + 2..]);
    let sig_lines: Vec<&str> = sigs.split_terminator('\n').collect();
    if sig_lines.is_empty() {
        return Err(CheckpointError::NoSignatures);
    }
    if sig_lines.len() > MAX_SIGNATURES {
        return Err(CheckpointError::TooManySignatures {
            found: sig_lines.len(),
        });
    }
    let first_sig_line = text.split_terminator('\n').count() + 2;
    let want = key_id(key_name, key);
    let mut ours: Option<Vec<u8>> = None;
    let mut other_id = None;
    let mut signers = Vec::new();
    for (j, line) in sig_lines.iter().enumerate() {
        let bad = |reason: &str| CheckpointError::SignatureLine {
            line: first_sig_line + j,
            reason: reason.to_owned(),
        };
        let rest = line
            .strip_prefix(SIG_PREFIX)
            .ok_or_else(|| bad("a signature line starts with an em dash (U+2014) and a space"))?;
        let (name, b64) = rest
            .split_once(' ')
            .ok_or_else(|| bad("a signature line is a key name, a space and a signature"))?;
        check_name(name).map_err(|reason| bad(&format!("the key name {reason}")))?;
        let raw = STANDARD
            .decode(b64)
            .map_err(|_| bad("the signature is not base64"))?;
        if STANDARD.encode(&raw) != b64 {
            return Err(bad("the signature is not canonical base64"));
        }
        if raw.len() < 5 {
            return Err(bad(
                "the signature is shorter than a key ID and a signature",
            ));
        }
        let (id, sig) = raw.split_at(4);
        signers.push(format!("{name} ({})", hex(id)));
        if name != key_name {
            continue;
        }
        if id != want {
            other_id = Some(hex(id));
            continue;
        }
        if ours.is_some() {
            return Err(CheckpointError::DuplicateSignature {
                name: key_name.to_owned(),
            });
        }
        ours = Some(sig.to_vec());
    }
    let Some(sig) = ours else {
        return Err(match other_id {
            Some(found) => CheckpointError::KeyIdMismatch {
                name: key_name.to_owned(),
                found,
                expected: hex(&want),
            },
            None => CheckpointError::NotSigned {
                name: key_name.to_owned(),
                signers: signers.join(", "),
            },
        });
    };
    let bad_sig = || CheckpointError::BadSignature {
        name: key_name.to_owned(),
    };
    let sig = Signature::from_slice(&sig).map_err(|_| bad_sig())?;
    key.verify_strict(text.as_bytes(), &sig)
        .map_err(|_| bad_sig())?;
    Ok(text)
}

/// The signed note of `cp` by `key` under `key_name` (which signed-note recommends be the
/// origin).
pub fn sign(cp: &Checkpoint, key_name: &str, key: &SigningKey) -> Result<String, CheckpointError> {
    check_key_name(key_name)?;
    Ok(sign_note(&cp.text()?, key_name, key))
}

/// Parse a checkpoint note and verify its signature by `key` under `key_name`. The caller
/// compares the origin with the device it expects.
pub fn parse_and_verify(
    note: &str,
    key_name: &str,
    key: &VerifyingKey,
) -> Result<Checkpoint, CheckpointError> {
    check_key_name(key_name)?;
    Checkpoint::parse_text(open_note(note, key_name, key)?)
}

/// Store `note` as the latest checkpoint of the log in `dir` (atomically and durably).
pub fn write_checkpoint(dir: &Path, note: &str) -> Result<(), AuditError> {
    let path = dir.join(CHECKPOINT_FILE);
    crate::files::atomic::write_atomic(&path, note.as_bytes(), 0o640)
        .map_err(|source| AuditError::Io { path, source })
}

/// The latest checkpoint note of the log in `dir`, if one was written.
pub fn read_checkpoint(dir: &Path) -> Result<Option<String>, AuditError> {
    let path = dir.join(CHECKPOINT_FILE);
    match crate::files::capped::read_capped(&path, MAX_NOTE_BYTES) {
        Ok(b) => String::from_utf8(b).map(Some).map_err(|_| AuditError::Io {
            path,
            source: std::io::Error::other("not UTF-8"),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(AuditError::Io { path, source }),
    }
}

/// Sign the log's current tree head and store it as the latest checkpoint; returns it and
/// its note. Refuses when the stored checkpoint (if it is one of `origin` by this key) is
/// not a prefix of the log, unless a damage record in the log names exactly that
/// checkpoint as one the log does not extend: a log never signs two inconsistent
/// checkpoints without the reason on record between them. One caller
/// at a time (the daemon's engine).
pub fn checkpoint_log(
    log: &AuditLog,
    origin: &str,
    key_name: &str,
    key: &SigningKey,
) -> Result<(Checkpoint, String), CheckpointError> {
    let previous = read_checkpoint(log.dir())?
        .and_then(|note| parse_and_verify(&note, key_name, &key.verifying_key()).ok())
        .filter(|p| p.origin == origin);
    let (size, root) = log.tree_head();
    let cp = Checkpoint {
        origin: origin.to_owned(),
        size,
        root,
    };
    // A log whose damage record names the stored checkpoint as one it no longer extends
    // may sign again: the fork is on record in the log, and a verifier holding the old
    // checkpoint sees it.
    if let Some(prev) = previous
        && !log.fork_recorded(prev.size, &prev.root)
    {
        log.with_tree(|t| prove_consistency_to(t, &prev, size, &root))?;
    }
    let note = sign(&cp, key_name, key)?;
    write_checkpoint(log.dir(), &note)?;
    Ok((cp, note))
}

fn prove_consistency_to(
    tree: &MerkleTree,
    old: &Checkpoint,
    size: u64,
    root: &Hash,
) -> Result<ConsistencyProof, CheckpointError> {
    if size < old.size {
        return Err(CheckpointError::Shorter {
            records: size,
            size: old.size,
        });
    }
    let not_consistent = |source| CheckpointError::NotConsistent {
        size: old.size,
        source,
    };
    let proof = tree
        .consistency_proof(old.size, size)
        .map_err(not_consistent)?;
    proof.verify(&old.root, root).map_err(not_consistent)?;
    Ok(proof)
}

/// The consistency proof from `old` to the whole of `tree`, checked against `old`'s root:
/// an error says the tree does not extend the one `old` signed.
pub fn prove_consistency(
    tree: &MerkleTree,
    old: &Checkpoint,
) -> Result<ConsistencyProof, CheckpointError> {
    prove_consistency_to(tree, old, tree.size(), &tree.root())
}

/// What the log's files say about an old checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirConsistency {
    /// The log's size now (its number of lines).
    pub size: u64,
    /// Its root now.
    pub root: Hash,
    /// The proof from the old checkpoint to now, checked.
    pub proof: ConsistencyProof,
}

/// Rebuild the tree from the log's files in `dir` alone and check that it extends the tree
/// `old` signed. Any change to the records `old` covers (altered, removed, inserted,
/// reordered, truncated, or rewritten with a consistent chain) makes this fail.
pub fn check_dir_consistency(
    dir: &Path,
    old: &Checkpoint,
) -> Result<DirConsistency, CheckpointError> {
    let tree = super::merkle::merkle_from_dir(dir)?;
    let proof = prove_consistency(&tree, old)?;
    Ok(DirConsistency {
        size: tree.size(),
        root: tree.root(),
        proof,
    })
}

/// Verify a consistency proof between two checkpoints of the same log (no files needed).
pub fn verify_consistency_proof(
    old: &Checkpoint,
    new: &Checkpoint,
    proof: &ConsistencyProof,
) -> Result<(), CheckpointError> {
    if old.origin != new.origin {
        return Err(CheckpointError::OriginMismatch {
            expected: old.origin.clone(),
            found: new.origin.clone(),
        });
    }
    for (p, c) in [(proof.old_size, old.size), (proof.new_size, new.size)] {
        if p != c {
            return Err(CheckpointError::ProofSize {
                proof: p,
                checkpoint: c,
            });
        }
    }
    proof
        .verify(&old.root, &new.root)
        .map_err(|source| CheckpointError::NotConsistent {
            size: old.size,
            source,
        })
}

/// The inclusion proof of record `seq` in the tree `cp` signed, checked against its root.
pub fn prove_inclusion(
    tree: &MerkleTree,
    seq: u64,
    cp: &Checkpoint,
) -> Result<InclusionProof, CheckpointError> {
    if tree.size() < cp.size {
        return Err(CheckpointError::Shorter {
            records: tree.size(),
            size: cp.size,
        });
    }
    let not_included = |source| CheckpointError::NotIncluded {
        seq,
        size: cp.size,
        source,
    };
    let proof = tree.inclusion_proof(seq, cp.size).map_err(not_included)?;
    proof.verify(&cp.root).map_err(not_included)?;
    Ok(proof)
}

/// From the log's files in `dir` alone: record `seq`'s line (without its newline) and its
/// inclusion proof in the tree `cp` signed, checked (the line is the record with that seq,
/// and it hashes up to `cp`'s root).
pub fn prove_inclusion_in_dir(
    dir: &Path,
    seq: u64,
    cp: &Checkpoint,
) -> Result<(InclusionProof, Vec<u8>), CheckpointError> {
    let mut tree = MerkleTree::new();
    let mut line = None;
    for_each_line(dir, |l| {
        if tree.size() == seq {
            line = Some(l.to_vec());
        }
        tree.push(l);
    })?;
    let proof = prove_inclusion(&tree, seq, cp)?;
    let line = line.ok_or(CheckpointError::Shorter {
        records: tree.size(),
        size: cp.size,
    })?;
    match chain_fields(&line) {
        Some((s, _)) if s == seq => {}
        other => {
            return Err(CheckpointError::NotRecord {
                index: seq,
                found: other.map_or("a line that is not a record".to_owned(), |(s, _)| {
                    format!("record {s}")
                }),
            });
        }
    }
    verify_inclusion_proof(cp, &proof, &line)?;
    Ok((proof, line))
}

/// Verify that `line` (a record's line without its newline) is in the tree `cp` signed.
pub fn verify_inclusion_proof(
    cp: &Checkpoint,
    proof: &InclusionProof,
    line: &[u8],
) -> Result<(), CheckpointError> {
    if proof.tree_size != cp.size {
        return Err(CheckpointError::ProofSize {
            proof: proof.tree_size,
            checkpoint: cp.size,
        });
    }
    proof
        .verify_line(line, &cp.root)
        .map_err(|source| CheckpointError::NotIncluded {
            seq: proof.leaf_index,
            size: cp.size,
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    const NAME: &str = "enigm.org/trustd/AbCdEfGhIjKlMnOpQrStUv";

    /// The example key pair of Go's golang.org/x/mod/sumdb/note documentation: its private
    /// key `PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz`
    /// (seed after the 0x01) has the verifier key below.
    const GO_SEED: &str = "810a1402d5146c8d84f2443330f54080ebf98ee17d9c74f6252fc5d5c7283173";
    const GO_VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";

    fn go_key() -> SigningKey {
        let seed: Vec<u8> = (0..32)
            .map(|i| u8::from_str_radix(&GO_SEED[2 * i..2 * i + 2], 16).expect("test data"))
            .collect();
        SigningKey::from_bytes(&seed.try_into().expect("test data"))
    }

    #[test]
    fn verifier_key_matches_the_go_note_documentation_example() {
        let k = go_key();
        assert_eq!(
            verifier_key("PeterNeumann", &k.verifying_key()).expect("test data"),
            GO_VKEY
        );
        let (name, vk) = parse_verifier_key(&format!("{GO_VKEY}\n")).expect("test data");
        assert_eq!((name.as_str(), vk), ("PeterNeumann", k.verifying_key()));
    }

    #[test]
    fn verifier_keys_that_do_not_match_themselves_are_refused() {
        let good = verifier_key(NAME, &key(7).verifying_key()).expect("test data");
        let (name, id, b64) = {
            let mut f = good.splitn(3, '+');
            (
                f.next().expect("test data"),
                f.next().expect("test data"),
                f.next().expect("test data"),
            )
        };
        let other = verifier_key(NAME, &key(8).verifying_key()).expect("test data");
        let other_b64 = other.splitn(3, '+').nth(2).expect("test data");
        let mut wrong_type = STANDARD.decode(b64).expect("test data");
        wrong_type[0] = 0x02;
        for (bad, why) in [
            (format!("{name}+{id}"), "three fields"),
            (format!("other+{id}+{b64}"), "key ID"),
            (format!("{name}+{id}+{other_b64}"), "key ID"),
            (
                format!(
                    "{name}+{}{}+{b64}",
                    &id[..7],
                    if id.ends_with('0') { '1' } else { '0' }
                ),
                "key ID",
            ),
            (format!("{name}+{}g+{b64}", &id[..7]), "8 hex digits"),
            (format!("{name}+0x{}+{b64}", &id[..6]), "8 hex digits"),
            (
                format!("{name}+{id}+{}", STANDARD.encode(&wrong_type)),
                "signature type 0x02",
            ),
            (format!("{name}+{id}+{}", &b64[..b64.len() - 4]), "bytes"),
            (format!("{name}+{id}+{b64}="), "canonical base64"),
            (format!("na me+{id}+{b64}"), "space"),
            (format!("{good}\n\n"), "canonical base64"),
        ] {
            let e = parse_verifier_key(&bad).expect_err("refused").to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert_eq!(
            parse_verifier_key(&good).expect("test data").1,
            key(7).verifying_key()
        );
        // What Go's note.NewVerifier also accepts: an upper-case key ID, a CRLF line end.
        for ok in [
            format!("{name}+{}+{b64}", id.to_uppercase()),
            format!("{good}\r\n"),
        ] {
            assert_eq!(
                parse_verifier_key(&ok).expect("accepted").1,
                key(7).verifying_key(),
                "{ok}"
            );
        }
    }

    fn cp() -> Checkpoint {
        Checkpoint {
            origin: NAME.to_owned(),
            size: 1234,
            root: [7; 32],
        }
    }

    fn signed() -> String {
        sign(&cp(), NAME, &key(1)).expect("sign")
    }

    fn parse(note: &str) -> Result<Checkpoint, CheckpointError> {
        parse_and_verify(note, NAME, &key(1).verifying_key())
    }

    #[test]
    fn the_note_is_exactly_the_c2sp_format_and_verifies() {
        let note = signed();
        let k = key(1);
        let mut id_input = NAME.as_bytes().to_vec();
        id_input.push(0x0a);
        id_input.push(0x01);
        id_input.extend_from_slice(k.verifying_key().as_bytes());
        let id = &Sha256::digest(&id_input)[..4];
        let text = format!("{NAME}\n1234\n{}\n", STANDARD.encode([7u8; 32]));
        let mut blob = id.to_vec();
        blob.extend_from_slice(&k.sign(text.as_bytes()).to_bytes());
        let want = format!("{text}\n\u{2014} {NAME} {}\n", STANDARD.encode(&blob));
        assert_eq!(note, want);
        assert!(note.starts_with(
            "enigm.org/trustd/AbCdEfGhIjKlMnOpQrStUv\n1234\nBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=\n\n\u{2014} enigm.org/trustd/AbCdEfGhIjKlMnOpQrStUv "
        ));
        assert_eq!(parse(&note).expect("verifies"), cp());
    }

    #[test]
    fn signs_and_opens_the_go_sumdb_note_vector() {
        // golang.org/x/mod/sumdb/note's example: another implementation's key ID and
        // signature, byte for byte (ed25519 signatures are deterministic).
        let skey = STANDARD
            .decode("AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz")
            .expect("b64");
        let vkey = STANDARD
            .decode("ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")
            .expect("b64");
        assert_eq!((skey[0], vkey[0]), (ED25519, ED25519));
        let seed: [u8; 32] = skey[1..].try_into().expect("32 bytes");
        let k = SigningKey::from_bytes(&seed);
        assert_eq!(k.verifying_key().as_bytes(), &vkey[1..]);
        assert_eq!(hex(&key_id("PeterNeumann", &k.verifying_key())), "c74f20a3");
        let text = "If you think cryptography is the answer to your problem,\n\
                    then you don't know what your problem is.\n";
        let want = "If you think cryptography is the answer to your problem,\n\
                    then you don't know what your problem is.\n\
                    \n\
                    \u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
        assert_eq!(sign_note(text, "PeterNeumann", &k), want);
        assert_eq!(
            open_note(want, "PeterNeumann", &k.verifying_key()).expect("opens"),
            text
        );
        // Not a checkpoint, though: two lines of prose.
        assert!(matches!(
            parse_and_verify(want, "PeterNeumann", &k.verifying_key()),
            Err(CheckpointError::TextLines { found: 2 })
        ));
    }

    fn resign_text(text: &str) -> String {
        sign_note(text, NAME, &key(1))
    }

    fn b64root() -> String {
        STANDARD.encode([7u8; 32])
    }

    #[test]
    fn strict_text_lines() {
        let r = b64root();
        let cases: Vec<(String, &str)> = vec![
            (format!("{NAME}\n1234\n"), "3 (origin"),
            (format!("{NAME}\n1234\n{r}\nextension\n"), "has 4 lines"),
            (format!("{NAME}\n\n1234\n{r}\n"), "has 4 lines"),
            (format!("{NAME}\n01234\n{r}\n"), "leading zero"),
            (format!("{NAME}\n+1234\n{r}\n"), "not a decimal number"),
            (format!("{NAME}\n 1234\n{r}\n"), "not a decimal number"),
            (format!("{NAME}\n-1\n{r}\n"), "not a decimal number"),
            (format!("{NAME}\n1e3\n{r}\n"), "not a decimal number"),
            (
                format!("{NAME}\n9223372036854775808\n{r}\n"),
                "over 2^63 - 1",
            ),
            (
                format!("{NAME}\n99999999999999999999999\n{r}\n"),
                "over 2^63 - 1",
            ),
            (
                format!("{NAME}\n1234\n{}\n", STANDARD.encode([7u8; 31])),
                "not 32 bytes",
            ),
            (format!("{NAME}\n1234\n{}\n", &r[..43]), "not base64"),
            (
                format!("{NAME}\n1234\n{}\n", r.replace('=', "")),
                "not base64",
            ),
            (
                format!("{NAME}\n1234\n{}\n", hex(&[7u8; 32])),
                "not 32 bytes",
            ),
            (format!("has space\n1234\n{r}\n"), "contains a space"),
            (format!("a+b\n1234\n{r}\n"), "contains '+'"),
        ];
        for (text, want) in cases {
            let err = parse(&resign_text(&text)).expect_err(&text).to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
        // Non-canonical base64: the last character's unused bits set.
        let mut bad = r.clone();
        bad.replace_range(42..43, "d");
        let err = parse(&resign_text(&format!("{NAME}\n1234\n{bad}\n")))
            .expect_err("non-canonical")
            .to_string();
        assert!(err.contains("root hash"), "{err}");
        // The limits themselves are accepted.
        let max = format!("{NAME}\n{}\n{r}\n", MAX_TREE_SIZE);
        assert_eq!(parse(&resign_text(&max)).expect("max").size, MAX_TREE_SIZE);
        let zero = format!("{NAME}\n0\n{r}\n");
        assert_eq!(parse(&resign_text(&zero)).expect("zero").size, 0);
    }

    #[test]
    fn strict_note_form() {
        let note = signed();
        let sig_line = note.lines().last().expect("sig").to_owned();
        let (text, _) = note.split_once("\n\n").expect("sep");
        let text = format!("{text}\n");
        let cases: Vec<(String, &str)> = vec![
            (
                note.trim_end_matches('\n').to_owned(),
                "does not end with a newline",
            ),
            (text.clone(), "no blank line"),
            (format!("{text}\n"), "no blank line"),
            (format!("{text}\n\n{sig_line}\n"), "does not verify"),
            (note.replace('\u{2014}', "-"), "em dash"),
            (note.replace("\u{2014} ", "\u{2014}  "), "key name"),
            (
                note.replace(&format!(" {NAME} "), &format!(" {NAME}  ")),
                "not base64",
            ),
            (format!("{note}garbage\n"), "em dash"),
            (note.replace("\n\n", "\r\n\n"), "U+000D"),
            (note.replace("1234", "12\t34"), "U+0009"),
            (format!("{note}{sig_line}\n"), "more than one signature"),
            (
                format!("{note}{}", format!("{sig_line}\n").repeat(MAX_SIGNATURES)),
                "signature lines; at most 16",
            ),
            (
                note.replace(NAME, &format!("enigm.org/{}", "x".repeat(MAX_LINE_BYTES))),
                "bytes; at most 1024",
            ),
            (
                format!("{}\n{note}", "x".repeat(MAX_NOTE_BYTES)),
                "at most 16384",
            ),
        ];
        for (n, want) in cases {
            let err = parse(&n).expect_err(&n).to_string();
            assert!(err.contains(want), "{n:?}: {err}");
        }
    }

    #[test]
    fn signatures_by_other_keys_are_skipped_and_a_wrong_key_is_named() {
        let note = signed();
        let other = sign(&cp(), "witness.example/w1", &key(2)).expect("sign");
        let other_line = other.lines().last().expect("sig");
        // A cosignature by another key is fine, before or after ours.
        assert!(parse(&format!("{note}{other_line}\n")).is_ok());
        let (text, ours) = note.split_once("\n\n").expect("sep");
        assert!(parse(&format!("{text}\n\n{other_line}\n{ours}")).is_ok());
        // Only another key's signature.
        let err = parse(&other).expect_err("not ours").to_string();
        assert!(err.contains("no signature by enigm.org/trustd/"), "{err}");
        assert!(err.contains("witness.example/w1 ("), "{err}");
        // Same name, another key: its key ID differs.
        let impostor = sign(&cp(), NAME, &key(3)).expect("sign");
        let err = parse(&impostor).expect_err("impostor");
        assert!(
            matches!(err, CheckpointError::KeyIdMismatch { .. }),
            "{err}"
        );
        // Our key ID, another key's signature.
        let forged = {
            let mut blob = key_id(NAME, &key(1).verifying_key()).to_vec();
            blob.extend_from_slice(&key(3).sign(text.as_bytes()).to_bytes());
            format!("{text}\n\n\u{2014} {NAME} {}\n", STANDARD.encode(blob))
        };
        assert!(matches!(
            parse(&forged),
            Err(CheckpointError::BadSignature { .. })
        ));
        // A short signature.
        let short = format!("{text}\n\n\u{2014} {NAME} {}\n", STANDARD.encode([0u8; 4]));
        assert!(
            parse(&short)
                .expect_err("short")
                .to_string()
                .contains("shorter")
        );
        let mut blob = key_id(NAME, &key(1).verifying_key()).to_vec();
        blob.extend_from_slice(&[0u8; 63]);
        let truncated = format!("{text}\n\n\u{2014} {NAME} {}\n", STANDARD.encode(blob));
        assert!(matches!(
            parse(&truncated),
            Err(CheckpointError::BadSignature { .. })
        ));
    }

    #[test]
    fn any_altered_byte_fails() {
        let note = signed();
        for i in 0..note.len() {
            for delta in [1u8, 0x20] {
                let mut b = note.clone().into_bytes();
                b[i] ^= delta;
                let Ok(s) = String::from_utf8(b) else {
                    continue;
                };
                assert!(parse(&s).is_err(), "byte {i} ^ {delta:#x} accepted: {s:?}");
            }
        }
    }

    #[test]
    fn sign_refuses_what_it_could_not_parse() {
        let mut c = cp();
        c.origin = "two\nlines".into();
        assert!(sign(&c, NAME, &key(1)).is_err());
        c.origin = String::new();
        assert!(sign(&c, NAME, &key(1)).is_err());
        let mut c = cp();
        c.size = MAX_TREE_SIZE + 1;
        assert!(sign(&c, NAME, &key(1)).is_err());
        assert!(sign(&cp(), "a name", &key(1)).is_err());
        assert!(sign(&cp(), "", &key(1)).is_err());
    }
}
