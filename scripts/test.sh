#!/usr/bin/env bash
# Every test of trustd: unit, integration (tempdirs, fakes), end-to-end (the real binaries,
# real nftables in network namespaces the tests create, a private dbus-daemon) and the in-VM
# suite (the Enigm OS image under QEMU). Run as root, it installs the Debian packages those
# need when they are missing. Tests that need root or a tool skip without it (and say so in
# the summary), but fail under CI=true.
set -uo pipefail
cd "$(dirname "$0")/.."

tools=(nft ip dbus-daemon setpriv faketime unshare nsenter mount qemu-system-x86_64 mmdebstrap mkfs.ext4 zstd cpio strip
  pkg-config swtpm tpm2_checkquote go
  dpkg-buildpackage dh dh_installsysusers lintian gdbus-codegen man systemd-analyze journalctl)
missing=()
for t in "${tools[@]}"; do command -v "$t" >/dev/null || missing+=("$t"); done
[[ -d /usr/share/gocode/src/golang.org/x/mod/sumdb ]] || missing+=(golang.org/x/mod)
pkg-config --exists tss2-esys 2>/dev/null || missing+=(libtss2-dev)
if ((${#missing[@]})) && [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
  echo "installing the packages for: ${missing[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    nftables iproute2 dbus util-linux mount procps ca-certificates faketime \
    mmdebstrap qemu-system-x86 e2fsprogs zstd cpio binutils \
    pkg-config libtss2-dev swtpm swtpm-tools tpm2-tools \
    golang-go golang-golang-x-mod-dev python3-venv \
    dpkg-dev debhelper lintian libglib2.0-dev-bin man-db systemd >/dev/null
fi
# securesystemslib (PyPI), an outside DSSE implementation for the interop test, in a venv
# under target/ made once. Without it that test skips (and fails under CI=true).
venv=target/interop-venv
if ! "$venv/bin/python" -c 'import securesystemslib.dsse' 2>/dev/null; then
  python3 -m venv "$venv" && "$venv/bin/pip" install -q 'securesystemslib[crypto]==1.6.0' ||
    echo "could not make $venv with securesystemslib"
fi

log=$(mktemp)
skips=$(mktemp)
trap 'rm -f "$log" "$skips"' EXIT
# Every binary first, xtask's included: the package and man-page tests run `xtask docs`, and
# `cargo test` alone builds a package's binaries only for that package's own tests.
cargo build --workspace --locked --bins 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
if ((status == 0)); then
  TRUSTD_SKIP_LOG="$skips" cargo test --workspace --locked --no-fail-fast 2>&1 | tee "$log"
  status=${PIPESTATUS[0]}
fi
# One closing line over every test binary (cargo prints one per binary). A test that could
# not run here (no root, a tool missing) passes but is counted as skipped, not as passed.
skipped=$(wc -l <"$skips")
awk -v k="$skipped" '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) s += $i } }
     END { printf "summary: %d passed, %d failed, %d skipped\n", p - k, f, s + k }' "$log"
if ((skipped)); then
  echo "skipped here:"
  sort "$skips" | uniq -c
fi
exit "$status"
