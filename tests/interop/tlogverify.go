// Command tlogverify checks trustd's audit evidence with Go's own transparency-log packages,
// golang.org/x/mod/sumdb/note (C2SP signed notes) and golang.org/x/mod/sumdb/tlog (RFC 6962
// Merkle proofs), none of whose code trustd shares. It exits 0 when the evidence holds and 1
// with the reason when it does not.
//
//	tlogverify checkpoint  VKEY CHECKPOINT
//	tlogverify inclusion   VKEY CHECKPOINT RECORDS PROOF.json
//	tlogverify consistency VKEY OLD NEW PROOF.json
//
// VKEY is the device's signed-note verifier key (device.vkey); RECORDS is the output of
// `trustctl audit export`; PROOF.json is the output of `trustctl --json audit prove` or
// `trustctl --json audit consistency OLD NEW`.
package main

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

type checkpoint struct {
	origin string
	size   int64
	root   tlog.Hash
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "tlogverify: "+format+"\n", args...)
	os.Exit(1)
}

func read(path string) []byte {
	b, err := os.ReadFile(path)
	if err != nil {
		fail("%v", err)
	}
	return b
}

// open verifies the note's signature with the verifier key and parses the C2SP checkpoint
// text: origin, decimal size, base64 root hash.
func open(vkeyPath, path string) checkpoint {
	v, err := note.NewVerifier(strings.TrimSpace(string(read(vkeyPath))))
	if err != nil {
		fail("verifier key: %v", err)
	}
	n, err := note.Open(read(path), note.VerifierList(v))
	if err != nil {
		fail("%s: %v", path, err)
	}
	lines := strings.Split(n.Text, "\n")
	if len(lines) != 4 || lines[3] != "" {
		fail("%s: checkpoint text is not origin, size, root", path)
	}
	if lines[0] != v.Name() {
		fail("%s: origin %q is not the key's name %q", path, lines[0], v.Name())
	}
	size, err := strconv.ParseInt(lines[1], 10, 64)
	if err != nil || size < 0 {
		fail("%s: size %q", path, lines[1])
	}
	raw, err := base64.StdEncoding.DecodeString(lines[2])
	if err != nil || len(raw) != tlog.HashSize {
		fail("%s: root %q", path, lines[2])
	}
	var root tlog.Hash
	copy(root[:], raw)
	return checkpoint{lines[0], size, root}
}

func hashes(hexes []string) []tlog.Hash {
	out := make([]tlog.Hash, len(hexes))
	for i, h := range hexes {
		raw, err := hex.DecodeString(h)
		if err != nil || len(raw) != tlog.HashSize {
			fail("proof hash %q", h)
		}
		copy(out[i][:], raw)
	}
	return out
}

// record returns line `index` (0-based) of the exported records, without its newline.
func record(path string, index int64) []byte {
	s := bufio.NewScanner(bytes.NewReader(read(path)))
	s.Buffer(nil, 1<<20)
	for i := int64(0); s.Scan(); i++ {
		if i == index {
			return s.Bytes()
		}
	}
	fail("%s has no record %d", path, index)
	return nil
}

func main() {
	if len(os.Args) < 2 {
		fail("usage: tlogverify checkpoint|inclusion|consistency ...")
	}
	switch args := os.Args[2:]; os.Args[1] {
	case "checkpoint":
		if len(args) != 2 {
			fail("usage: tlogverify checkpoint VKEY CHECKPOINT")
		}
		c := open(args[0], args[1])
		fmt.Printf("%s %d %s\n", c.origin, c.size, c.root)
	case "inclusion":
		if len(args) != 4 {
			fail("usage: tlogverify inclusion VKEY CHECKPOINT RECORDS PROOF.json")
		}
		c := open(args[0], args[1])
		var p struct {
			Seq   int64 `json:"seq"`
			Proof struct {
				LeafIndex int64    `json:"leaf_index"`
				TreeSize  int64    `json:"tree_size"`
				LeafHash  string   `json:"leaf_hash"`
				Path      []string `json:"path"`
			} `json:"proof"`
		}
		if err := json.Unmarshal(read(args[3]), &p); err != nil {
			fail("%s: %v", args[3], err)
		}
		if p.Proof.TreeSize != c.size {
			fail("proof is for size %d, the checkpoint is size %d", p.Proof.TreeSize, c.size)
		}
		leaf := tlog.RecordHash(record(args[2], p.Proof.LeafIndex))
		if leaf.String() != base64.StdEncoding.EncodeToString(hashes([]string{p.Proof.LeafHash})[0][:]) {
			fail("record %d's hash is not the proof's leaf hash", p.Proof.LeafIndex)
		}
		if err := tlog.CheckRecord(hashes(p.Proof.Path), c.size, c.root, p.Proof.LeafIndex, leaf); err != nil {
			fail("record %d: %v", p.Proof.LeafIndex, err)
		}
		fmt.Printf("record %d is in %s at size %d\n", p.Proof.LeafIndex, c.origin, c.size)
	case "consistency":
		if len(args) != 4 {
			fail("usage: tlogverify consistency VKEY OLD NEW PROOF.json")
		}
		old, cur := open(args[0], args[1]), open(args[0], args[2])
		var p struct {
			NewProof struct {
				OldSize int64    `json:"old_size"`
				NewSize int64    `json:"new_size"`
				Path    []string `json:"path"`
			} `json:"new_proof"`
		}
		if err := json.Unmarshal(read(args[3]), &p); err != nil {
			fail("%s: %v", args[3], err)
		}
		if p.NewProof.OldSize != old.size || p.NewProof.NewSize != cur.size {
			fail("proof is for sizes %d -> %d, the checkpoints are %d -> %d",
				p.NewProof.OldSize, p.NewProof.NewSize, old.size, cur.size)
		}
		if err := tlog.CheckTree(hashes(p.NewProof.Path), cur.size, cur.root, old.size, old.root); err != nil {
			fail("size %d -> %d: %v", old.size, cur.size, err)
		}
		fmt.Printf("size %d extends size %d\n", cur.size, old.size)
	default:
		fail("unknown command %q", os.Args[1])
	}
}
