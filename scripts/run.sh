#!/usr/bin/env bash
# trustd's main job, for real, in a sandbox: an admin makes keys and a trust root and signs
# the example policy; trustd starts in a network namespace made for this run, on a private
# dbus-daemon that enforces the project's bus policy, with its state under a temporary root.
# Then, over the bus: the posture, a setup step, privacy mode as an ordinary user and as
# root, a replayed bundle refused, drift repaired, the audit log checked, a signed checkpoint
# a later log is proven to extend, and a signed posture report.
# Nothing of the host's firewall or bus is touched.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v nft >/dev/null || need+=(nftables)
command -v ip >/dev/null || need+=(iproute2)
command -v dbus-daemon >/dev/null || need+=(dbus)
command -v setpriv >/dev/null || need+=(util-linux)
# Building trustd links libtss2 (TPM access) through pkg-config.
command -v pkg-config >/dev/null || need+=(pkg-config)
pkg-config --exists tss2-esys tss2-tctildr 2>/dev/null || need+=(libtss2-dev)
if ((${#need[@]})); then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
cargo build --locked --quiet --bin trustctl --bin trustd
ctl="$PWD/target/debug/trustctl"
trustd="$PWD/target/debug/trustd"
example="$PWD/policy-schemas/v1/examples/valid/policy-direct.json"
buspolicy="$PWD/dbus/org.enigm.Trust1.conf"
busconf="$PWD/dbus/private-bus.conf.in"

work=$(mktemp -d /tmp/trustd-run.XXXXXX)
chmod 755 "$work"
echo "sandbox: $work"
cd "$work"
ns="trustd-run-$$"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  ip netns del "$ns" 2>/dev/null || true
}
trap cleanup EXIT
step() { printf '\n== %s\n' "$*"; }

step "admin: make a root key and two policy keys; a trust root where policy needs 2 of 2"
"$ctl" keygen --out root >/dev/null
"$ctl" keygen --out policy-a >/dev/null
"$ctl" keygen --out policy-b >/dev/null
"$ctl" trust-root --role root=1:root.pub --role policy=2:policy-a.pub,policy-b.pub \
  --role intel=1:root.pub --role command=1:root.pub -o trust-root.json
mkdir -p device/etc/trustd
cp trust-root.json device/etc/trustd/trust-root.json

step "admin: sign the example policy with both keys, verify it, load it into the device's state"
"$ctl" sign --type policy --key policy-a.key --key policy-b.key "$example" -o policy.dsse.json
"$ctl" verify --trust-root trust-root.json policy.dsse.json
"$ctl" load --prefix device policy.dsse.json

step "a private system-like bus with the project's bus policy (trustd-admin is group 'src' here)"
sed 's/group="trustd-admin"/group="src"/; s/group="trustd-setup"/group="games"/' \
  "$buspolicy" > trust1.conf
sed -e "s|@SOCKET@|$work/bus|" -e "s|@EXTRA@|<include>$work/trust1.conf</include>|" \
  "$busconf" > bus.conf
echo '{"admin_group": "src", "setup_group": "games"}' > device/etc/trustd/trustd.json
dbus-daemon --config-file=bus.conf --nofork --nopidfile 2>/dev/null &
pids+=($!)
bus="unix:path=$work/bus"
for _ in $(seq 50); do [ -S "$work/bus" ] && break; sleep 0.1; done

step "trustd run, in a network namespace made for this run, serving org.enigm.Trust1"
ip netns add "$ns"
ip -n "$ns" link set lo up
ip netns exec "$ns" "$trustd" --prefix device run --bus "$bus" --check-interval-ms 300 2>trustd.log &
pids+=($!)
for _ in $(seq 100); do "$ctl" --bus "$bus" status >/dev/null 2>&1 && break; sleep 0.1; done
"$ctl" --bus "$bus" status

step "the setup step the policy requires (eula, network), by root: setup complete, policy network in force"
"$ctl" --bus "$bus" setup complete eula
"$ctl" --bus "$bus" setup complete network
"$ctl" --bus "$bus" status | grep -E 'Level|Reasons|NetworkMode|SetupComplete'

step "an ordinary user (uid 7, lp) may turn privacy mode on, not off"
setpriv --reuid=7 --regid=7 --clear-groups "$ctl" --bus "$bus" privacy on
if setpriv --reuid=7 --regid=7 --clear-groups "$ctl" --bus "$bus" privacy off; then
  echo "an ordinary user turned privacy off: this is a bug" >&2
  exit 1
fi
"$ctl" --bus "$bus" status | grep -E 'PrivacyMode|NetworkMode'

step "root turns privacy off; the same bundle again is refused (rollback), the last good one stays"
"$ctl" --bus "$bus" privacy off
if "$ctl" --bus "$bus" policy apply policy.dsse.json; then
  echo "a replayed bundle was accepted: this is a bug" >&2
  exit 1
fi

step "someone deletes the table: trustd puts it back within its check interval"
ip netns exec "$ns" nft delete table inet trustd
sleep 1
ip netns exec "$ns" nft list tables
"$ctl" --bus "$bus" status | grep -E 'Level|Reasons|RulesetDigest'

step "the audit log, through the daemon"
"$ctl" --bus "$bus" audit tail -n 6
"$ctl" --bus "$bus" audit verify

step "a verifier saves a signed checkpoint; the device goes on; the log is proven to extend it"
"$ctl" --bus "$bus" audit checkpoint -o saved.checkpoint
cat saved.checkpoint
"$ctl" --bus "$bus" privacy on
"$ctl" audit consistency saved.checkpoint --key device/var/lib/trustd/device.pub --prefix device

step "a signed posture report answering a verifier's nonce, checked offline"
"$ctl" --bus "$bus" posture report --nonce "run-$$-nonce" -o report.json
"$ctl" posture verify report.json --nonce "run-$$-nonce" --key device/var/lib/trustd/device.pub

step "SIGTERM: trustd stops, enforcement stays in the kernel"
kill -TERM "${pids[1]}"
wait "${pids[1]}" || true
ip netns exec "$ns" nft list tables
"$ctl" audit verify --prefix device
echo
echo "done: device files are under $work/device, trustd's log in $work/trustd.log"
