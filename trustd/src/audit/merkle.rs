//! The RFC 6962 Merkle tree over the audit records, and its inclusion and consistency proofs.
//!
//! Leaf `n` is record `n`'s line exactly as written in its segment, without the newline: the
//! same bytes the chain hashes ([`super::record_hash`]). Leaf hash = SHA-256(0x00 || line),
//! interior node = SHA-256(0x01 || left || right), the empty tree's root = SHA-256("").
//!
//! [`MerkleTree`] appends a leaf in O(log n) hashes (amortized two: the leaf's and one
//! merge), keeping the frontier (the roots of the full subtrees that make up the current
//! size) for the current root. Proofs and roots at past sizes need interior nodes, so the
//! tree keeps every leaf hash and every full subtree root of height 4 and above in memory:
//! 36 bytes per record (32 for the leaf, 32/16 + 32/32 + ... = 4 for the cached levels),
//! 36 MB per million records (plus the spare capacity of growing vectors). A node of
//! height 1 to 3 is recomputed from its (at most 8) leaves when a proof needs it. Nothing
//! is re-read from the files after the tree is built.
//!
//! Proof generation follows RFC 6962 §2.1.1 (PATH) and §2.1.2 (PROOF); verification follows
//! RFC 9162 §2.1.3.2 and §2.1.4.2.

use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::AuditError;
use super::segment::{list_segments, written_len};

/// A SHA-256 hash: a leaf, an interior node or a root.
pub type Hash = [u8; 32];

/// The lowest subtree height kept in memory above the leaves (heights 1 to 3 are
/// recomputed from at most 8 leaves when needed).
const CACHED_FROM: u32 = 4;

/// The RFC 6962 hash of a leaf: SHA-256(0x00 || `data`). For the audit log, `data` is a
/// record's line without its newline.
pub fn leaf_hash(data: &[u8]) -> Hash {
    Sha256::new()
        .chain_update([0x00])
        .chain_update(data)
        .finalize()
        .into()
}

/// The RFC 6962 hash of an interior node: SHA-256(0x01 || `left` || `right`).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    Sha256::new()
        .chain_update([0x01])
        .chain_update(left)
        .chain_update(right)
        .finalize()
        .into()
}

/// The root of the empty tree: SHA-256 of nothing.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The largest power of two strictly below `n` (`n` >= 2): where RFC 6962 splits a tree.
fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

/// Why a proof could not be made or did not verify. Each says what it means for the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// The leaf is not in a tree of that size.
    #[error("leaf {index} is not in a tree of {size} leaves")]
    IndexOutOfRange {
        /// The leaf index (the record's seq in an intact log).
        index: u64,
        /// The tree size.
        size: u64,
    },
    /// A proof was asked for a size the tree has not reached.
    #[error("tree size {size} is beyond the {available} leaves there are")]
    SizeBeyondTree {
        /// The size asked for.
        size: u64,
        /// The leaves there are.
        available: u64,
    },
    /// A consistency proof from a larger tree to a smaller one.
    #[error("the old tree size {old} is larger than the new one {new}")]
    OldLargerThanNew {
        /// The old size.
        old: u64,
        /// The new size.
        new: u64,
    },
    /// The proof has the wrong number of hashes for its sizes.
    #[error("the proof has {found} hashes where a proof for these sizes has {expected}")]
    PathLength {
        /// Hashes in the proof.
        found: usize,
        /// Hashes a proof for these sizes has.
        expected: usize,
    },
    /// An inclusion proof does not lead to the root.
    #[error(
        "the inclusion proof for leaf {index} does not lead to the root of the tree of {size} leaves: the record, its position or the tree differ from the ones that root was taken of"
    )]
    InclusionRootMismatch {
        /// The leaf index.
        index: u64,
        /// The tree size.
        size: u64,
    },
    /// The first `size` leaves no longer hash to the old root.
    #[error(
        "the first {size} records do not hash to the old root: records it covered were altered, removed, inserted or reordered"
    )]
    OldRootMismatch {
        /// The old size.
        size: u64,
    },
    /// The proof does not lead to the new root.
    #[error("the consistency proof does not lead to the new root of the tree of {size} leaves")]
    NewRootMismatch {
        /// The new size.
        size: u64,
    },
    /// The record given is not the leaf the proof is about.
    #[error("the record given does not hash to the proof's leaf hash (leaf {index})")]
    LeafMismatch {
        /// The leaf index.
        index: u64,
    },
}

/// An incrementally built RFC 6962 tree. See the module documentation for what it keeps.
#[derive(Clone, Default)]
pub struct MerkleTree {
    leaves: Vec<Hash>,
    /// `upper[j][i]`: the root of the full subtree of height `CACHED_FROM + j` over leaves
    /// `[i << h, (i + 1) << h)`.
    upper: Vec<Vec<Hash>>,
    /// The roots of the full subtrees whose sizes are the set bits of the tree size,
    /// largest (leftmost) first.
    frontier: Vec<Hash>,
}

impl std::fmt::Debug for MerkleTree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MerkleTree")
            .field("size", &self.size())
            .field("root", &crate::digest::hex(&self.root()))
            .finish_non_exhaustive()
    }
}

impl MerkleTree {
    /// The empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// The tree over leaves with these hashes, in order.
    pub fn from_leaf_hashes(hashes: impl IntoIterator<Item = Hash>) -> Self {
        let mut t = Self::new();
        for h in hashes {
            t.push_hash(h);
        }
        t
    }

    /// Append the leaf `data` (a record's line without its newline).
    pub fn push(&mut self, data: &[u8]) {
        self.push_hash(leaf_hash(data));
    }

    /// Append a leaf given its leaf hash: O(log n) node hashes, amortized one.
    pub fn push_hash(&mut self, leaf: Hash) {
        // Each trailing set bit of the old size is a full subtree on the frontier that the
        // new leaf completes into one twice its size.
        let mut k = self.leaves.len() as u64;
        self.leaves.push(leaf);
        let mut h = leaf;
        let mut height = 0u32;
        while k & 1 == 1 {
            let Some(left) = self.frontier.pop() else {
                debug_assert!(false, "the frontier has a node per set bit of the size");
                break;
            };
            h = node_hash(&left, &h);
            height += 1;
            if height >= CACHED_FROM {
                let j = (height - CACHED_FROM) as usize;
                if self.upper.len() <= j {
                    self.upper.push(Vec::new());
                }
                self.upper[j].push(h);
            }
            k >>= 1;
        }
        self.frontier.push(h);
    }

    /// The number of leaves.
    pub fn size(&self) -> u64 {
        self.leaves.len() as u64
    }

    /// The root at the current size, from the frontier: O(log n).
    pub fn root(&self) -> Hash {
        let mut nodes = self.frontier.iter().rev();
        let Some(mut r) = nodes.next().copied() else {
            return empty_root();
        };
        for left in nodes {
            r = node_hash(left, &r);
        }
        r
    }

    /// The root the tree had at `size` leaves.
    pub fn root_at(&self, size: u64) -> Result<Hash, ProofError> {
        self.check_size(size)?;
        if size == self.size() {
            return Ok(self.root());
        }
        Ok(self.range_hash(0, size))
    }

    /// The leaf hash of leaf `index`.
    pub fn leaf(&self, index: u64) -> Option<Hash> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.leaves.get(i))
            .copied()
    }

    /// Bytes of hashes held (leaves, cached levels, frontier), without the vectors' spare
    /// capacity.
    pub fn memory_bytes(&self) -> usize {
        let hashes = self.leaves.len()
            + self.upper.iter().map(Vec::len).sum::<usize>()
            + self.frontier.len();
        hashes * 32
    }

    /// The inclusion proof of leaf `index` in the tree of `size` leaves (RFC 6962 §2.1.1).
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<InclusionProof, ProofError> {
        self.check_size(size)?;
        if index >= size {
            return Err(ProofError::IndexOutOfRange { index, size });
        }
        let mut path = Vec::with_capacity(64);
        self.path(index, 0, size, &mut path);
        Ok(InclusionProof {
            leaf_index: index,
            tree_size: size,
            leaf_hash: self.leaves[index as usize],
            path,
        })
    }

    /// The consistency proof from the tree of `old` leaves to the tree of `new` leaves
    /// (RFC 6962 §2.1.2). Empty when `old` is 0 or equal to `new`.
    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<ConsistencyProof, ProofError> {
        self.check_size(new)?;
        if old > new {
            return Err(ProofError::OldLargerThanNew { old, new });
        }
        let mut path = Vec::with_capacity(64);
        if old > 0 && old < new {
            self.subproof(old, 0, new, true, &mut path);
        }
        Ok(ConsistencyProof {
            old_size: old,
            new_size: new,
            path,
        })
    }

    fn check_size(&self, size: u64) -> Result<(), ProofError> {
        if size > self.size() {
            return Err(ProofError::SizeBeyondTree {
                size,
                available: self.size(),
            });
        }
        Ok(())
    }

    /// The root of the full subtree of `height` whose leaves are `[index << height, ...)`;
    /// it must lie within the tree.
    fn full(&self, height: u32, index: u64) -> Hash {
        if height == 0 {
            self.leaves[index as usize]
        } else if height >= CACHED_FROM {
            self.upper[(height - CACHED_FROM) as usize][index as usize]
        } else {
            node_hash(
                &self.full(height - 1, 2 * index),
                &self.full(height - 1, 2 * index + 1),
            )
        }
    }

    /// MTH(D[lo:hi]). Every range RFC 6962's recursion asks for splits into aligned full
    /// subtrees, so this is O(log n) lookups.
    fn range_hash(&self, lo: u64, hi: u64) -> Hash {
        let n = hi - lo;
        if n == 0 {
            return empty_root();
        }
        if n.is_power_of_two() && lo.is_multiple_of(n) {
            return self.full(n.trailing_zeros(), lo / n);
        }
        let k = split(n);
        node_hash(&self.range_hash(lo, lo + k), &self.range_hash(lo + k, hi))
    }

    /// PATH(m, D[lo:hi]) with `m` relative to `lo`, deepest sibling first.
    fn path(&self, m: u64, lo: u64, hi: u64, out: &mut Vec<Hash>) {
        let n = hi - lo;
        if n <= 1 {
            return;
        }
        let k = split(n);
        if m < k {
            self.path(m, lo, lo + k, out);
            out.push(self.range_hash(lo + k, hi));
        } else {
            self.path(m - k, lo + k, hi, out);
            out.push(self.range_hash(lo, lo + k));
        }
    }

    /// SUBPROOF(m, D[lo:hi], b).
    fn subproof(&self, m: u64, lo: u64, hi: u64, b: bool, out: &mut Vec<Hash>) {
        let n = hi - lo;
        if m == n {
            if !b {
                out.push(self.range_hash(lo, hi));
            }
            return;
        }
        let k = split(n);
        if m <= k {
            self.subproof(m, lo, lo + k, b, out);
            out.push(self.range_hash(lo + k, hi));
        } else {
            self.subproof(m - k, lo + k, hi, false, out);
            out.push(self.range_hash(lo, lo + k));
        }
    }
}

/// How many hashes the inclusion proof of leaf `index` in a tree of `size` has.
fn inclusion_path_len(index: u64, size: u64) -> usize {
    let (mut m, mut n, mut len) = (index, size, 0);
    while n > 1 {
        let k = split(n);
        if m < k {
            n = k;
        } else {
            m -= k;
            n -= k;
        }
        len += 1;
    }
    len
}

/// How many hashes the consistency proof from `old` to `new` has (0 < old < new).
fn consistency_path_len(old: u64, new: u64) -> usize {
    let (mut m, mut n, mut b, mut len) = (old, new, true, 0);
    while m != n {
        let k = split(n);
        if m <= k {
            n = k;
        } else {
            m -= k;
            n -= k;
            b = false;
        }
        len += 1;
    }
    len + usize::from(!b)
}

/// Verify that `leaf` is leaf `index` of the tree of `size` leaves whose root is `root`
/// (RFC 9162 §2.1.3.2). The size itself is bound by whatever signed the root.
pub fn verify_inclusion(
    leaf: &Hash,
    index: u64,
    size: u64,
    path: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let expected = inclusion_path_len(index, size);
    let length = ProofError::PathLength {
        found: path.len(),
        expected,
    };
    if path.len() != expected {
        return Err(length);
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut r = *leaf;
    for p in path {
        if snode == 0 {
            return Err(length);
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(length);
    }
    if r != *root {
        return Err(ProofError::InclusionRootMismatch { index, size });
    }
    Ok(())
}

/// Verify that the tree of `old_size` leaves with root `old_root` is a prefix of the tree of
/// `new_size` leaves with root `new_root` (RFC 9162 §2.1.4.2). The empty tree is a prefix of
/// every tree (with an empty proof).
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    path: &[Hash],
) -> Result<(), ProofError> {
    if old_size > new_size {
        return Err(ProofError::OldLargerThanNew {
            old: old_size,
            new: new_size,
        });
    }
    let expected = if old_size == 0 || old_size == new_size {
        0
    } else {
        consistency_path_len(old_size, new_size)
    };
    let length = ProofError::PathLength {
        found: path.len(),
        expected,
    };
    if path.len() != expected {
        return Err(length);
    }
    if old_size == 0 {
        return if *old_root == empty_root() {
            Ok(())
        } else {
            Err(ProofError::OldRootMismatch { size: 0 })
        };
    }
    if old_size == new_size {
        return if old_root == new_root {
            Ok(())
        } else {
            Err(ProofError::OldRootMismatch { size: old_size })
        };
    }
    // When the old tree is a full subtree, its root is the proof's implicit first hash.
    let (first, rest) = if old_size.is_power_of_two() {
        (*old_root, path)
    } else {
        let Some((first, rest)) = path.split_first() else {
            return Err(length);
        };
        (*first, rest)
    };
    let (mut fnode, mut snode) = (old_size - 1, new_size - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut fr, mut sr) = (first, first);
    for c in rest {
        if snode == 0 {
            return Err(length);
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(length);
    }
    if fr != *old_root {
        return Err(ProofError::OldRootMismatch { size: old_size });
    }
    if sr != *new_root {
        return Err(ProofError::NewRootMismatch { size: new_size });
    }
    Ok(())
}

/// An inclusion proof as a CLI writes and reads it (hashes as lowercase hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InclusionProof {
    /// The leaf (the record's seq in an intact log).
    pub leaf_index: u64,
    /// The size of the tree the proof is against.
    pub tree_size: u64,
    /// The leaf hash of the record's line.
    #[serde(with = "hex_hash")]
    pub leaf_hash: Hash,
    /// The audit path, deepest sibling first.
    #[serde(with = "hex_hashes")]
    pub path: Vec<Hash>,
}

impl InclusionProof {
    /// Verify the proof against `root` (the root of the tree of `tree_size` leaves).
    pub fn verify(&self, root: &Hash) -> Result<(), ProofError> {
        verify_inclusion(
            &self.leaf_hash,
            self.leaf_index,
            self.tree_size,
            &self.path,
            root,
        )
    }

    /// Verify that `line` (a record's line without its newline) is the proof's leaf, and the
    /// proof against `root`.
    pub fn verify_line(&self, line: &[u8], root: &Hash) -> Result<(), ProofError> {
        if leaf_hash(line) != self.leaf_hash {
            return Err(ProofError::LeafMismatch {
                index: self.leaf_index,
            });
        }
        self.verify(root)
    }
}

/// A consistency proof as a CLI writes and reads it (hashes as lowercase hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyProof {
    /// The old tree's size.
    pub old_size: u64,
    /// The new tree's size.
    pub new_size: u64,
    /// The proof's hashes.
    #[serde(with = "hex_hashes")]
    pub path: Vec<Hash>,
}

impl ConsistencyProof {
    /// Verify the proof between the two roots.
    pub fn verify(&self, old_root: &Hash, new_root: &Hash) -> Result<(), ProofError> {
        verify_consistency(self.old_size, self.new_size, old_root, new_root, &self.path)
    }
}

/// A hash from exactly 64 lowercase hex digits.
pub fn parse_hash_hex(s: &str) -> Option<Hash> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (i, pair) in b.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

mod hex_hash {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::{Hash, parse_hash_hex};

    pub(super) fn serialize<S: Serializer>(h: &Hash, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::digest::hex(h))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Hash, D::Error> {
        let s = String::deserialize(d)?;
        parse_hash_hex(&s)
            .ok_or_else(|| serde::de::Error::custom("a hash is 64 lowercase hex digits"))
    }
}

mod hex_hashes {
    use serde::ser::SerializeSeq;
    use serde::{Deserialize, Deserializer, Serializer};

    use super::{Hash, parse_hash_hex};

    /// A proof in a tree of at most 2^64 leaves has at most 64 (inclusion) or 65
    /// (consistency) hashes.
    const MAX: usize = 65;

    pub(super) fn serialize<S: Serializer>(hs: &[Hash], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(hs.len()))?;
        for h in hs {
            seq.serialize_element(&crate::digest::hex(h))?;
        }
        seq.end()
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Hash>, D::Error> {
        let v = Vec::<String>::deserialize(d)?;
        if v.len() > MAX {
            return Err(serde::de::Error::custom(format!(
                "a proof has at most {MAX} hashes"
            )));
        }
        v.iter()
            .map(|s| {
                parse_hash_hex(s)
                    .ok_or_else(|| serde::de::Error::custom("a hash is 64 lowercase hex digits"))
            })
            .collect()
    }
}

/// Call `f` with each line of the log in `dir`, in order: every newline-terminated line of
/// the written part of each segment, without its newline. A torn tail (bytes after the last
/// newline) is not a line. These are the Merkle leaves: leaf `n` is record `n` in an intact
/// log.
pub(crate) fn for_each_line(dir: &Path, mut f: impl FnMut(&[u8])) -> Result<(), AuditError> {
    let segments = list_segments(dir).map_err(|source| AuditError::Io {
        path: dir.into(),
        source,
    })?;
    for (_, path) in segments {
        let data = std::fs::read(&path).map_err(|source| AuditError::Io {
            path: path.clone(),
            source,
        })?;
        let data = &data[..written_len(&data)];
        let mut pos = 0;
        while let Some(nl) = data[pos..].iter().position(|&b| b == b'\n') {
            f(&data[pos..pos + nl]);
            pos += nl + 1;
        }
    }
    Ok(())
}

/// Write every record of the log in `dir` to `out` as JSON lines, oldest first: each record's
/// exact bytes (the Merkle leaf: RFC 6962 leaf hash = SHA-256(0x00 || line)) and a newline,
/// without the segments' preallocated, unwritten tail. Returns the number of records. Errors:
/// a segment that cannot be read, or `out` refusing a write (reported under `out_name`).
pub fn export_records(
    dir: &Path,
    out: &mut dyn std::io::Write,
    out_name: &Path,
) -> Result<u64, AuditError> {
    let mut n = 0u64;
    let mut failed = None;
    for_each_line(dir, |line| {
        if failed.is_none() {
            match out.write_all(line).and_then(|()| out.write_all(b"\n")) {
                Ok(()) => n += 1,
                Err(e) => failed = Some(e),
            }
        }
    })?;
    match failed.map_or_else(|| out.flush(), Err) {
        Ok(()) => Ok(n),
        Err(source) => Err(AuditError::Io {
            path: out_name.into(),
            source,
        }),
    }
}

/// The Merkle tree of the log in `dir`, from its files alone (for an offline verifier; the
/// writer keeps its own, see [`super::AuditLog::tree_head`]).
pub fn merkle_from_dir(dir: &Path) -> Result<MerkleTree, AuditError> {
    let mut t = MerkleTree::new();
    for_each_line(dir, |line| t.push(line))?;
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SHA-256 of the concatenation of `parts`, spelled out.
    fn sha(parts: &[&[u8]]) -> Hash {
        let mut s = Sha256::new();
        for p in parts {
            s.update(p);
        }
        s.finalize().into()
    }

    fn l(data: &[u8]) -> Hash {
        sha(&[&[0x00], data])
    }

    fn n(a: &Hash, b: &Hash) -> Hash {
        sha(&[&[0x01], a, b])
    }

    const DATA: [&[u8]; 7] = [b"d0", b"d1", b"d2", b"d3", b"d4", b"d5", b"d6"];

    fn tree(k: usize) -> MerkleTree {
        let mut t = MerkleTree::new();
        for d in &DATA[..k] {
            t.push(d);
        }
        t
    }

    fn unhex(s: &str) -> Hash {
        parse_hash_hex(s).expect("64 hex digits")
    }

    #[test]
    fn roots_of_1_2_3_5_7_leaves_by_hand() {
        let [a, b, c, d, e, f, g] = DATA.map(l);
        let ab = n(&a, &b);
        let cd = n(&c, &d);
        let ef = n(&e, &f);
        let abcd = n(&ab, &cd);
        assert_eq!(MerkleTree::new().root(), sha(&[]));
        assert_eq!(tree(1).root(), a);
        assert_eq!(tree(2).root(), ab);
        assert_eq!(tree(3).root(), n(&ab, &c));
        assert_eq!(tree(4).root(), abcd);
        assert_eq!(tree(5).root(), n(&abcd, &e));
        assert_eq!(tree(6).root(), n(&abcd, &ef));
        assert_eq!(tree(7).root(), n(&abcd, &n(&ef, &g)));
        // Past sizes from the larger tree agree with the trees built to that size.
        let t = tree(7);
        for k in 0..=7 {
            assert_eq!(t.root_at(k as u64), Ok(tree(k).root()), "size {k}");
        }
        assert!(matches!(
            t.root_at(8),
            Err(ProofError::SizeBeyondTree {
                size: 8,
                available: 7
            })
        ));
    }

    #[test]
    fn proofs_of_rfc_6962_section_2_1_3_by_hand() {
        // The tree of RFC 6962 §2.1.3: a..g leaf hashes, h = cd, i = ef, j = g, k = abcd,
        // l = ij.
        let [a, b, c, d, e, f, g] = DATA.map(l);
        let (gg, h, i) = (n(&a, &b), n(&c, &d), n(&e, &f));
        let (k, ll) = (n(&gg, &h), n(&i, &g));
        let t = tree(7);
        let path = |m: u64| t.inclusion_proof(m, 7).expect("proof").path;
        assert_eq!(path(0), vec![b, h, ll]);
        assert_eq!(path(3), vec![c, gg, ll]);
        assert_eq!(path(4), vec![f, g, k]);
        assert_eq!(path(6), vec![i, k]);
        assert_eq!(t.inclusion_proof(4, 5).expect("proof").path, vec![k]);
        assert_eq!(
            t.inclusion_proof(0, 1).expect("proof").path,
            Vec::<Hash>::new()
        );
        let cons = |m: u64| t.consistency_proof(m, 7).expect("proof").path;
        assert_eq!(cons(3), vec![c, d, gg, ll]);
        assert_eq!(cons(4), vec![ll]);
        assert_eq!(cons(6), vec![i, g, k]);
        assert_eq!(cons(7), Vec::<Hash>::new());
        assert_eq!(cons(0), Vec::<Hash>::new());
        let root = t.root();
        for m in [0, 3, 4, 6] {
            let p = t.inclusion_proof(m, 7).expect("proof");
            p.verify_line(DATA[m as usize], &root).expect("verifies");
        }
        for m in [3, 4, 6] {
            t.consistency_proof(m, 7)
                .expect("proof")
                .verify(&tree(m as usize).root(), &root)
                .expect("verifies");
        }
    }

    #[test]
    fn published_certificate_transparency_vectors() {
        // transparency-dev/merkle testonly: leaves, roots of sizes 0..=8, and proofs.
        let leaves: [&[u8]; 8] = [
            b"",
            &[0x00],
            &[0x10],
            &[0x20, 0x21],
            &[0x30, 0x31],
            &[0x40, 0x41, 0x42, 0x43],
            &[0x50, 0x51, 0x52, 0x53, 0x54, 0x55, 0x56, 0x57],
            &[
                0x60, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x6b, 0x6c, 0x6d,
                0x6e, 0x6f,
            ],
        ];
        let roots = [
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
            "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
            "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
        ]
        .map(unhex);
        let mut t = MerkleTree::new();
        assert_eq!(t.root(), roots[0]);
        for (i, leaf) in leaves.iter().enumerate() {
            t.push(leaf);
            assert_eq!(t.root(), roots[i + 1], "size {}", i + 1);
        }
        for (size, root) in roots.iter().enumerate() {
            assert_eq!(t.root_at(size as u64).as_ref(), Ok(root));
        }
        let inclusion: [(u64, [&str; 3]); 2] = [
            (
                0,
                [
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                5,
                [
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
        ];
        for (index, path) in inclusion {
            let p = t.inclusion_proof(index, 8).expect("proof");
            assert_eq!(p.path, path.map(unhex).to_vec(), "leaf {index}");
            p.verify(&roots[8]).expect("verifies");
        }
        let consistency: [(u64, u64, &[&str]); 4] = [
            (1, 1, &[]),
            (
                1,
                8,
                &[
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                6,
                8,
                &[
                    "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
            (
                2,
                5,
                &[
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ],
            ),
        ];
        for (old, new, path) in consistency {
            let p = t.consistency_proof(old, new).expect("proof");
            let want: Vec<Hash> = path.iter().map(|h| unhex(h)).collect();
            assert_eq!(p.path, want, "{old} -> {new}");
            p.verify(&roots[old as usize], &roots[new as usize])
                .expect("verifies");
        }
    }

    /// MTH of RFC 6962 §2.1, straight from the definition.
    fn reference_root(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => sha(&[]),
            1 => leaves[0],
            len => {
                let k = split(len as u64) as usize;
                n(&reference_root(&leaves[..k]), &reference_root(&leaves[k..]))
            }
        }
    }

    fn leaves(k: u64) -> Vec<Hash> {
        (0..k)
            .map(|i| l(format!("record {i}").as_bytes()))
            .collect()
    }

    #[test]
    fn cached_levels_agree_with_the_definition_up_to_200_leaves() {
        let all = leaves(200);
        let t = MerkleTree::from_leaf_hashes(all.iter().copied());
        for size in 0..=200u64 {
            let want = reference_root(&all[..size as usize]);
            assert_eq!(t.root_at(size), Ok(want), "size {size}");
            let mut grown = MerkleTree::from_leaf_hashes(all[..size as usize].iter().copied());
            assert_eq!(grown.root(), want, "incremental root at {size}");
            grown.push_hash(all.get(size as usize).copied().unwrap_or(all[0]));
            for index in (0..size).step_by(7) {
                let p = t.inclusion_proof(index, size).expect("proof");
                p.verify(&want).expect("verifies");
            }
            for old in (0..=size).step_by(5) {
                let p = t.consistency_proof(old, size).expect("proof");
                p.verify(&reference_root(&all[..old as usize]), &want)
                    .expect("verifies");
            }
        }
        assert_eq!(
            t.memory_bytes(),
            32 * (200 + 12 + 6 + 3 + 1 + t.frontier.len())
        );
    }

    fn flips(path: &[Hash]) -> impl Iterator<Item = Vec<Hash>> + '_ {
        (0..path.len()).flat_map(move |i| {
            (0..32).map(move |byte| {
                let mut p = path.to_vec();
                p[i][byte] ^= 0x01;
                p
            })
        })
    }

    fn flipped(h: &Hash, byte: usize) -> Hash {
        let mut h = *h;
        h[byte] ^= 0x80;
        h
    }

    #[test]
    fn every_inclusion_proof_up_to_20_verifies_and_every_alteration_fails() {
        const N: u64 = 20;
        let all = leaves(N);
        let t = MerkleTree::from_leaf_hashes(all.iter().copied());
        let roots: Vec<Hash> = (0..=N).map(|s| t.root_at(s).expect("root")).collect();
        for size in 1..=N {
            let root = &roots[size as usize];
            for index in 0..size {
                let p = t.inclusion_proof(index, size).expect("proof");
                let leaf = &all[index as usize];
                assert_eq!(p.leaf_hash, *leaf);
                verify_inclusion(leaf, index, size, &p.path, root).expect("valid proof");
                for bad in flips(&p.path) {
                    assert!(verify_inclusion(leaf, index, size, &bad, root).is_err());
                }
                for byte in [0, 17, 31] {
                    let bad_leaf = flipped(leaf, byte);
                    assert!(verify_inclusion(&bad_leaf, index, size, &p.path, root).is_err());
                    let bad_root = flipped(root, byte);
                    assert!(verify_inclusion(leaf, index, size, &p.path, &bad_root).is_err());
                }
                for other in (0..size + 3).filter(|&o| o != index) {
                    assert!(
                        verify_inclusion(leaf, other, size, &p.path, root).is_err(),
                        "leaf {index} of {size} accepted as leaf {other}"
                    );
                }
                for other in (1..=N).filter(|&o| o != size && o > index) {
                    assert!(
                        verify_inclusion(leaf, index, other, &p.path, &roots[other as usize])
                            .is_err(),
                        "leaf {index} of {size} accepted in a tree of {other}"
                    );
                }
                // A proof for another leaf, a truncated and an extended path.
                if size > 1 {
                    let o = (index + 1) % size;
                    assert!(
                        verify_inclusion(&all[o as usize], index, size, &p.path, root).is_err()
                    );
                    assert!(
                        verify_inclusion(leaf, index, size, &p.path[1..], root).is_err(),
                        "truncated"
                    );
                }
                let mut longer = p.path.clone();
                longer.push(*leaf);
                assert!(verify_inclusion(leaf, index, size, &longer, root).is_err());
            }
            assert!(matches!(
                t.inclusion_proof(size, size),
                Err(ProofError::IndexOutOfRange { .. })
            ));
        }
    }

    #[test]
    fn every_consistency_proof_up_to_20_verifies_and_every_alteration_fails() {
        const N: u64 = 20;
        let t = MerkleTree::from_leaf_hashes(leaves(N));
        let roots: Vec<Hash> = (0..=N).map(|s| t.root_at(s).expect("root")).collect();
        for new in 0..=N {
            for old in 0..=new {
                let (ro, rn) = (&roots[old as usize], &roots[new as usize]);
                let p = t.consistency_proof(old, new).expect("proof");
                p.verify(ro, rn).expect("valid proof");
                if old == new && old > 0 {
                    continue;
                }
                if old == 0 {
                    assert!(verify_consistency(0, new, &roots[1], rn, &[]).is_err());
                    assert!(verify_consistency(0, new, ro, rn, &[roots[1]]).is_err());
                    continue;
                }
                for bad in flips(&p.path) {
                    assert!(verify_consistency(old, new, ro, rn, &bad).is_err());
                }
                for byte in [0, 31] {
                    assert!(verify_consistency(old, new, &flipped(ro, byte), rn, &p.path).is_err());
                    assert!(verify_consistency(old, new, ro, &flipped(rn, byte), &p.path).is_err());
                }
                assert!(
                    verify_consistency(old, new, rn, ro, &p.path).is_err(),
                    "roots swapped"
                );
                for other in (1..=N).filter(|&o| o != old && o <= new) {
                    assert!(
                        verify_consistency(other, new, &roots[other as usize], rn, &p.path)
                            .is_err(),
                        "{old} -> {new} accepted as {other} -> {new}"
                    );
                }
                for other in (old..=N).filter(|&o| o != new) {
                    assert!(
                        verify_consistency(old, other, ro, &roots[other as usize], &p.path)
                            .is_err(),
                        "{old} -> {new} accepted as {old} -> {other}"
                    );
                }
                if !p.path.is_empty() {
                    assert!(verify_consistency(old, new, ro, rn, &p.path[1..]).is_err());
                    assert!(
                        verify_consistency(old, new, ro, rn, &p.path[..p.path.len() - 1]).is_err()
                    );
                }
                let mut longer = p.path.clone();
                longer.push(*ro);
                assert!(verify_consistency(old, new, ro, rn, &longer).is_err());
                if p.path.len() >= 2 && p.path[0] != p.path[1] {
                    let mut swapped = p.path.clone();
                    swapped.swap(0, 1);
                    assert!(verify_consistency(old, new, ro, rn, &swapped).is_err());
                }
            }
            // Equal sizes need equal roots and an empty proof.
            if new > 0 {
                let rn = &roots[new as usize];
                assert!(verify_consistency(new, new, rn, rn, &[]).is_ok());
                assert!(verify_consistency(new, new, rn, &roots[0], &[]).is_err());
                assert!(verify_consistency(new, new, rn, rn, &[*rn]).is_err());
                assert!(verify_consistency(new, new - 1, rn, rn, &[]).is_err());
            }
        }
        assert!(matches!(
            t.consistency_proof(5, 4),
            Err(ProofError::OldLargerThanNew { old: 5, new: 4 })
        ));
        assert!(matches!(
            t.consistency_proof(5, 21),
            Err(ProofError::SizeBeyondTree { .. })
        ));
    }

    #[test]
    fn proofs_round_trip_through_json_and_reject_bad_hex() {
        let t = tree(7);
        let p = t.inclusion_proof(4, 7).expect("proof");
        let json = serde_json::to_string(&p).expect("json");
        assert!(
            json.starts_with(r#"{"leaf_index":4,"tree_size":7,"leaf_hash":""#),
            "{json}"
        );
        let back: InclusionProof = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, p);
        let c = t.consistency_proof(3, 7).expect("proof");
        let json = serde_json::to_string(&c).expect("json");
        assert!(
            json.starts_with(r#"{"old_size":3,"new_size":7,"path":[""#),
            "{json}"
        );
        assert_eq!(
            serde_json::from_str::<ConsistencyProof>(&json).expect("parse"),
            c
        );
        let upper = json.replace(
            &crate::digest::hex(&c.path[0]),
            &crate::digest::hex(&c.path[0]).to_uppercase(),
        );
        assert!(serde_json::from_str::<ConsistencyProof>(&upper).is_err());
        let extra = json.replacen('{', r#"{"extra":1,"#, 1);
        assert!(serde_json::from_str::<ConsistencyProof>(&extra).is_err());
        let short = r#"{"old_size":1,"new_size":2,"path":["abcd"]}"#;
        assert!(serde_json::from_str::<ConsistencyProof>(short).is_err());
        assert_eq!(parse_hash_hex(&"0".repeat(63)), None);
        assert_eq!(parse_hash_hex(&"g".repeat(64)), None);
    }
}
