#!/usr/bin/env bash
# Every test of trustd: unit, integration (tempdirs, fakes), and end-to-end (the real
# binaries, real nftables in network namespaces the tests create). Tests that need root or a
# system tool skip on a laptop without it, but fail under CI=true. .ci/run installs the
# Debian packages first.
set -uo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --locked --no-fail-fast 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
# One closing line over every test binary (cargo prints one per binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) s += $i } }
     END { printf "summary: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"
exit "$status"
