"""Check trustd's DSSE envelopes and posture reports with securesystemslib, and sign envelopes
with it for trustctl to check: an implementation of DSSE that shares no code with trustd.

    dsse_sslib.py verify ENVELOPE KEY.pub PAYLOAD_TYPE
    dsse_sslib.py sign PAYLOAD PAYLOAD_TYPE OUT trustd|sslib|none KEY.key [KEY.key ...]

KEY.pub and KEY.key are trustd's key files (`trustctl keygen`, or the device's device.pub).
verify prints the payload and exits 0 when the signature holds, 1 with the reason when not.
sign writes the signature's keyid as trustd names keys (SHA-256 of the raw public key), as
securesystemslib names them (its own keyid), or not at all (DSSE makes keyid optional).
"""

import base64
import json
import sys

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from securesystemslib.dsse import Envelope
from securesystemslib.exceptions import VerificationError
from securesystemslib.signer import CryptoSigner, SSlibKey


def public_key(path):
    """A securesystemslib key from trustd's public key file {alg, keyid, public(base64)}."""
    with open(path, encoding="utf-8") as f:
        k = json.load(f)
    if k["alg"] != "ed25519":
        raise SystemExit(f"{path}: not an ed25519 key")
    raw = base64.b64decode(k["public"], validate=True)
    return SSlibKey(k["keyid"], "ed25519", "ed25519", {"public": raw.hex()})


def verify(envelope_path, key_path, payload_type):
    with open(envelope_path, encoding="utf-8") as f:
        env = Envelope.from_dict(json.load(f))
    if env.payload_type != payload_type:
        print(f"payload type {env.payload_type!r}, expected {payload_type!r}", file=sys.stderr)
        return 1
    try:
        env.verify([public_key(key_path)], 1)
    except VerificationError as e:
        print(f"not verified: {e}", file=sys.stderr)
        return 1
    print(env.payload.decode("utf-8", "replace"))
    # A v2 posture report wraps the report's exact bytes (base64 "body") with its TPM
    # evidence: print those bytes too, as the signed report a verifier reads.
    try:
        doc = json.loads(env.payload)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and doc.get("schema") == "enigm.posture-report/v2":
        print(base64.b64decode(doc["body"], validate=True).decode("utf-8", "replace"))
    return 0


def sign(payload_path, payload_type, out_path, keyid, key_paths):
    with open(payload_path, "rb") as f:
        env = Envelope(f.read(), payload_type, {})
    for key_path in key_paths:
        with open(key_path, encoding="utf-8") as f:
            k = json.load(f)
        seed = base64.b64decode(k["private"], validate=True)
        private = Ed25519PrivateKey.from_private_bytes(seed)
        public = None
        if keyid == "trustd":
            raw = private.public_key().public_bytes_raw()
            public = SSlibKey(k["keyid"], "ed25519", "ed25519", {"public": raw.hex()})
        env.sign(CryptoSigner(private, public))
    doc = env.to_dict()
    if keyid == "none":
        for s in doc["signatures"]:
            del s["keyid"]
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(doc, f)
    return 0


def main(argv):
    if len(argv) == 4 and argv[0] == "verify":
        return verify(*argv[1:])
    if len(argv) >= 6 and argv[0] == "sign" and argv[4] in ("trustd", "sslib", "none"):
        return sign(*argv[1:5], argv[5:])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
