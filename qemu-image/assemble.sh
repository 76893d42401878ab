#!/usr/bin/env bash
# Usage: assemble.sh OUT_DIR
# Makes OUT_DIR/rootfs.ext4 (label "rootfs", 2 GiB sparse), OUT_DIR/vmlinuz and
# OUT_DIR/initrd.img: the cached base (build-base.sh, built first if needed) plus trustd,
# installed with dpkg from its Debian package:
#   $TRUSTD_DEB                  the package to install; if unset, scripts/package.sh builds
#                                one (from $TRUSTD_BIN_DIR's binaries if set, else release)
#   $TRUSTD_ETC/ (optional)   -> /etc/trustd/
# A missing TRUSTD_ETC is skipped with a line saying so. No loop mount: mkfs.ext4 -d copies
# the tree. Needs root (file ownership) and, on the host: e2fsprogs, zstd, tar, plus
# build-base.sh's (and scripts/package.sh's when it builds the package).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
out="${1:?usage: assemble.sh OUT_DIR}"
deb_in="${TRUSTD_DEB:-}"
etc_dir="${TRUSTD_ETC:-}"

log() { echo "assemble: $*" >&2; }
skip() { log "skipped: $*"; }

entry="$("$here/build-base.sh")"
started=$SECONDS
mkdir -p "$out"
# The tree is made in RAM when there is room: unpacking 9k files on disk takes ~8 s, in tmpfs <1 s.
tmp=/var/tmp
(($(df -Pk /dev/shm 2>/dev/null | awk 'NR == 2 { print $4 }' || echo 0) > 2097152)) && tmp=/dev/shm
work="$(mktemp -d "${ENIGM_TMPDIR:-$tmp}/enigm-assemble.XXXXXX")"
trap 'rm -rf "$work"' EXIT
tree="$work/tree"
mkdir "$tree"
zstd -dc "$entry/base.tar.zst" | tar -x --numeric-owner --xattrs --xattrs-include='*' -C "$tree"

# trustd goes in as the OS team ships it: its Debian package, installed with dpkg. The
# maintainer scripts create the users (sysusers), the directories (tmpfiles) and enable
# the units; nothing is started (no systemd runs in the chroot). The catalog and man-db
# triggers run here too.
deb="$work/trustd.deb"
if [[ -n "$deb_in" ]]; then
	cp "$deb_in" "$deb"
else
	log "building the package (scripts/package.sh, binaries from ${TRUSTD_BIN_DIR:-a release build})"
	DEB_BUILD_OPTIONS="${DEB_BUILD_OPTIONS:-noautodbgsym}" "$repo/scripts/package.sh" "$work/package" >&2
	cp "$work"/package/trustd_*.deb "$deb"
fi
cp "$deb" "$tree/tmp/trustd.deb"
chroot "$tree" dpkg -i /tmp/trustd.deb >&2
rm "$tree/tmp/trustd.deb"
log "installed $(chroot "$tree" dpkg-query -W -f '${Package} ${Version}' trustd)"

if [[ -z "$etc_dir" ]]; then
	skip "TRUSTD_ETC not set: no /etc/trustd"
elif [[ -d "$etc_dir" ]]; then
	mkdir -p "$tree/etc/trustd"
	cp -r --preserve=mode "$etc_dir/." "$tree/etc/trustd/"
	chown -R 0:0 "$tree/etc/trustd"
else
	skip "TRUSTD_ETC=$etc_dir is not a directory"
fi

rm -f "$out/rootfs.ext4.new"
# With a journal: the suite cuts the power mid-write and boots the same disk again.
mkfs.ext4 -q -F -L rootfs -d "$tree" "$out/rootfs.ext4.new" 2G >/dev/null
mv "$out/rootfs.ext4.new" "$out/rootfs.ext4"
cp "$entry/vmlinuz" "$entry/initrd.img" "$entry/kernel-version" "$out/"
log "$out/rootfs.ext4 ($(du -h "$out/rootfs.ext4" | cut -f1) used) in $((SECONDS - started)) s"
