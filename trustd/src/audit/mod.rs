//! The tamper-evident audit log: hash-chained JSON lines in segments, durable before a
//! caller's append returns (group commit), repaired after a torn write, verifiable offline.
//!
//! Owns `/var/log/trustd/audit` and nothing else. Records carry metadata only: kinds,
//! outcomes, reasons, digests and counts, never the content of an input nor a destination
//! a user visited.

pub mod checkpoint;
pub mod damage;
mod log;
pub mod merkle;
mod record;
mod segment;
mod verify;

pub use checkpoint::{CHECKPOINT_FILE, Checkpoint, CheckpointError};
pub use log::{AuditError, AuditLog, MAX_SEQ, OpenReport, Options, Receipt};
pub use merkle::{
    ConsistencyProof, InclusionProof, MerkleTree, ProofError, export_records, merkle_from_dir,
};
pub use record::{Actor, Entry, GENESIS, Outcome, Record, record_hash};
pub use segment::{HEAD_FILE, segment_name};
pub use verify::{Problem, VerifyReport, read_records, verify_dir};

/// The journald MESSAGE_ID of every mirrored audit record.
pub const AUDIT_MESSAGE_ID: &str = "6f1c1c0e4b9d4a6e9a3e2f0d7c5b8a91";
