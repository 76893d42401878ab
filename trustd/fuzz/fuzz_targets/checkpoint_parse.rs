//! Checkpoints and Merkle proofs as a verifier receives them. The selector byte `% 4`:
//! 0, a C2SP signed note (raw bytes) through `parse_and_verify` with the fixed key; 1, the
//! note's text signed correctly by that key (so the text parser runs on every input);
//! 2, an inclusion proof (JSON) verified against the fixed tree's roots; 3, a consistency
//! proof (JSON) likewise. Nothing may panic, a parsed checkpoint is canonical, and a proof
//! that verifies against the fixed tree is exactly the proof the tree makes.

#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use trustd::audit::checkpoint::{
    Checkpoint, parse_and_verify, sign, verify_consistency_proof, verify_inclusion_proof,
};
use trustd::audit::merkle::Hash;
use trustd::audit::{ConsistencyProof, InclusionProof, MerkleTree};
use trustd::json::parse_strict;
use trustd_fuzz::{NOTE_KEY_NAME, TREE_LEAVES};

struct Fixed {
    tree: MerkleTree,
    roots: Vec<Hash>,
}

static FIXED: LazyLock<Fixed> = LazyLock::new(|| {
    let tree = trustd_fuzz::tree();
    let roots = (0..=TREE_LEAVES)
        .map(|n| tree.root_at(n).expect("root at a size within the tree"))
        .collect();
    Fixed { tree, roots }
});

/// The fixed tree's root at `size`, or (beyond it) its full root: the root of no tree of
/// that size that the fixture knows (a proof may still verify against it, see `inclusion`).
fn root(size: u64) -> Hash {
    let f = &*FIXED;
    usize::try_from(size)
        .ok()
        .and_then(|i| f.roots.get(i))
        .copied()
        .unwrap_or_else(|| f.tree.root())
}

fn checkpoint(size: u64) -> Checkpoint {
    Checkpoint {
        origin: NOTE_KEY_NAME.to_owned(),
        size,
        root: root(size),
    }
}

fn note(data: &[u8]) {
    let Ok(note) = std::str::from_utf8(data) else {
        return;
    };
    let key = trustd_fuzz::note_key();
    match parse_and_verify(note, NOTE_KEY_NAME, &key.verifying_key()) {
        Ok(cp) => {
            let text = cp.text().expect("a parsed checkpoint has a text");
            assert!(
                note.starts_with(&text),
                "the signed text is the canonical one"
            );
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
    let other = trustd_fuzz::key_a();
    let _ = parse_and_verify(note, "other.example/key", &other.verifying_key());
}

fn signed_text(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let key = trustd_fuzz::note_key();
    let note = trustd_fuzz::sign_note(text, NOTE_KEY_NAME, &key);
    match parse_and_verify(&note, NOTE_KEY_NAME, &key.verifying_key()) {
        Ok(cp) => {
            assert_eq!(
                cp.text().expect("text"),
                text,
                "checkpoint text is not canonical"
            );
            let again = sign(&cp, NOTE_KEY_NAME, &key).expect("sign a parsed checkpoint");
            let back = parse_and_verify(&again, NOTE_KEY_NAME, &key.verifying_key())
                .expect("a checkpoint trustd signs parses");
            assert_eq!(back, cp);
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

fn inclusion(data: &[u8]) {
    let Ok(p) = parse_strict::<InclusionProof>(data) else {
        return;
    };
    let f = &*FIXED;
    let r = p.verify(&root(p.tree_size));
    // Only a root of that very size says anything: the 37-leaf root is also the root of a
    // 54-leaf tree whose right subtree hashes like leaves 32..37 do (nodes are opaque), so a
    // proof for leaf 0 of 54 verifies against it. The signed checkpoint binds the size.
    if r.is_ok() && p.tree_size <= TREE_LEAVES {
        let real = f
            .tree
            .inclusion_proof(p.leaf_index, p.tree_size)
            .expect("the tree proves what verified");
        assert_eq!(p, real, "a proof other than the tree's verified");
    }
    if let Err(e) = &r {
        let _ = e.to_string();
    }
    let line = trustd_fuzz::tree_line(p.leaf_index);
    let by_line = p.verify_line(&line, &root(p.tree_size));
    if by_line.is_ok() {
        assert!(r.is_ok());
    }
    let _ = verify_inclusion_proof(&checkpoint(p.tree_size), &p, &line).map_err(|e| e.to_string());
    let _ = verify_inclusion_proof(&checkpoint(TREE_LEAVES), &p, &line);
}

fn consistency(data: &[u8]) {
    let Ok(p) = parse_strict::<ConsistencyProof>(data) else {
        return;
    };
    let f = &*FIXED;
    let r = p.verify(&root(p.old_size), &root(p.new_size));
    if r.is_ok() && p.new_size <= TREE_LEAVES {
        let real = f
            .tree
            .consistency_proof(p.old_size, p.new_size)
            .expect("the tree proves what verified");
        assert_eq!(p, real, "a proof other than the tree's verified");
    }
    if let Err(e) = &r {
        let _ = e.to_string();
    }
    let _ = verify_consistency_proof(&checkpoint(p.old_size), &checkpoint(p.new_size), &p)
        .map_err(|e| e.to_string());
    // No proof links a non-empty prefix of the fixed tree to a root nobody computed (the
    // empty tree is a prefix of every tree: that proof is empty and checks nothing).
    if p.old_size > 0 {
        assert!(
            p.verify(&root(p.old_size), &[0x5a; 32]).is_err(),
            "consistent with any root"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    match sel % 4 {
        0 => note(rest),
        1 => signed_text(rest),
        2 => inclusion(rest),
        _ => consistency(rest),
    }
});
