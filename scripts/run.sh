#!/usr/bin/env bash
# trustd's main job, for real, in a sandbox under a temporary root prefix: an admin makes
# keys and a trust root, signs the example policy, verifies it, loads it into the device's
# state, and the audit log of every transition (including a refused replay) verifies.
# Nothing outside the temporary directory is touched.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v nft >/dev/null || ! command -v ip >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nftables iproute2 >/dev/null
fi
cargo build --locked --quiet --bin trustctl --bin trustd
ctl="$PWD/target/debug/trustctl"
trustd="$PWD/target/debug/trustd"
example="$PWD/policy-schemas/v1/examples/valid/policy-direct.json"

work=$(mktemp -d /tmp/trustd-run.XXXXXX)
echo "sandbox: $work"
cd "$work"
step() { printf '\n== %s\n' "$*"; }

step "admin: make a root key and two policy keys"
"$ctl" keygen --out root
"$ctl" keygen --out policy-a
"$ctl" keygen --out policy-b

step "admin: make the trust root (policy needs 2 of 2), provision it on the device"
"$ctl" trust-root --role root=1:root.pub --role policy=2:policy-a.pub,policy-b.pub \
  --role intel=1:root.pub --role command=1:root.pub -o trust-root.json
mkdir -p device/etc/trustd
cp trust-root.json device/etc/trustd/trust-root.json

step "admin: sign the example policy bundle with both policy keys"
"$ctl" sign --type policy --key policy-a.key --key policy-b.key "$example" -o policy.dsse.json

step "verify it against the trust root"
"$ctl" verify --trust-root trust-root.json policy.dsse.json

step "load it into the device's state (verified again, persisted atomically, audited)"
"$ctl" load --prefix device policy.dsse.json

step "replay the same bundle: refused, last good state kept, refusal audited"
if "$ctl" load --prefix device policy.dsse.json; then
  echo "replay was accepted: this is a bug" >&2
  exit 1
fi

step "trustd loads the device state"
"$trustd" --prefix device check

step "enforce it in the kernel, in a network namespace made for this run (the host's firewall is untouched)"
ns="trustd-run-$$"
ip netns add "$ns"
trap 'ip netns del "$ns" 2>/dev/null || true' EXIT
ip -n "$ns" link set lo up
ip netns exec "$ns" "$trustd" --prefix device apply
ip netns exec "$ns" nft list table inet trustd | head -40
echo "..."

step "someone deletes the table: trustd run puts it back within its check interval"
ip netns exec "$ns" "$trustd" --prefix device run --check-interval-ms 300 2>/dev/null &
daemon=$!
sleep 1
ip netns exec "$ns" nft delete table inet trustd
sleep 1
ip netns exec "$ns" nft list tables
kill -TERM "$daemon"; wait "$daemon" || true

step "the audit log"
"$ctl" audit tail --prefix device
"$ctl" audit verify --prefix device
echo
echo "done: device files are under $work/device"
