#!/usr/bin/env bash
# Usage: package.sh OUT_DIR
# Builds trustd's Debian package (debian/, dpkg-buildpackage + debhelper) from a copy of the
# committed-or-not source tree (target/ left out) and runs lintian on it; lintian errors fail.
# OUT_DIR gets trustd_VERSION_ARCH.deb (plus its -dbgsym, .changes and .buildinfo) and
# lintian.txt. The binaries are built in release with cargo into $CARGO_TARGET_DIR (default:
# this repository's target/), or taken from $TRUSTD_BIN_DIR if set (this source's trustd,
# trustctl, trustd-launch and xtask, as the tests do). Needs: dpkg-dev, debhelper, lintian.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:?usage: package.sh OUT_DIR}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target}"

work="$(mktemp -d "${TMPDIR:-/tmp}/trustd-package.XXXXXX")"
trap 'rm -rf "$work"' EXIT
# dpkg-buildpackage writes its results next to the source directory: a private copy keeps
# them (and debian/'s build files) out of the repository. mtimes are kept so that cargo
# finds its warm build up to date.
src="$work/trustd"
mkdir "$src"
tar -C "$repo" --exclude=./target --exclude=./.git --exclude='./out' -cf - . | tar -C "$src" -xf -

# -b: binary packages only; -us -uc: unsigned; -d: the Rust toolchain is rustup's, not a
# Debian package (debian/control says why it is not a build dependency).
(cd "$src" && dpkg-buildpackage -b -us -uc -d) >"$work/build.log" 2>&1 || {
	tail -n 60 "$work/build.log" >&2
	echo "package: dpkg-buildpackage failed (log above)" >&2
	exit 1
}
changes=("$work"/trustd_*.changes)
cp "$work"/trustd*.deb "$work"/trustd_*.changes "$work"/trustd_*.buildinfo "$out/"
# Errors fail the build; warnings and the rest are printed for the reader.
status=0
lintian --fail-on error --info "${changes[0]}" >"$out/lintian.txt" 2>&1 || status=$?
cat "$out/lintian.txt"
if ((status)); then
	echo "package: lintian reports errors (above)" >&2
	exit 1
fi
ls "$out"/trustd_*.deb
