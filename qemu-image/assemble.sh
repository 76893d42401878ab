#!/usr/bin/env bash
# Usage: assemble.sh OUT_DIR
# Makes OUT_DIR/rootfs.ext4 (label "rootfs", 2 GiB sparse), OUT_DIR/vmlinuz and
# OUT_DIR/initrd.img: the cached base (build-base.sh, built first if needed) plus trustd:
#   $TRUSTD_BIN_DIR/{trustd,trustctl,trustd-launch}  -> /usr/bin   (default target/release)
#   systemd/*.service                                -> /usr/lib/systemd/system, enabled
#   systemd/*.nft                                    -> /usr/lib/trustd/
#   systemd/*sysusers*.conf, systemd/*tmpfiles*.conf -> /usr/lib/{sysusers,tmpfiles}.d/trustd.conf
#   dbus/*.conf                                      -> /usr/share/dbus-1/system.d/
#   $TRUSTD_ETC/ (optional)                          -> /etc/trustd/
# A missing input is skipped with a line saying so. No loop mount: mkfs.ext4 -d copies the tree.
# Needs root (file ownership) and, on the host: e2fsprogs, zstd, tar, plus build-base.sh's.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
out="${1:?usage: assemble.sh OUT_DIR}"
bin_dir="${TRUSTD_BIN_DIR:-$repo/target/release}"
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

# Copies the files matching a glob into a directory of the tree; says so when there are none.
install_glob() {
	local mode="$1" dest="$2" what="$3" f found=0
	shift 3
	for f in "$@"; do
		[[ -f "$f" ]] || continue
		install -D -m "$mode" "$f" "$tree$dest/$(basename "$f")"
		found=1
	done
	[[ "$found" == 1 ]] || skip "no $what"
}

for name in trustd trustctl trustd-launch; do
	if [[ -x "$bin_dir/$name" ]]; then
		install -D -m 0755 "$bin_dir/$name" "$tree/usr/bin/$name"
		# Debug info is most of a debug build's size; the code is the same without it.
		if command -v strip >/dev/null; then strip --strip-debug "$tree/usr/bin/$name"; fi
	else
		skip "no $bin_dir/$name"
	fi
done

install_glob 0644 /usr/lib/systemd/system "systemd/*.service" "$repo"/systemd/*.service
install_glob 0644 /usr/lib/trustd "systemd/*.nft" "$repo"/systemd/*.nft
install_glob 0644 /usr/share/dbus-1/system.d "dbus/*.conf" "$repo"/dbus/*.conf

sysusers=("$repo"/systemd/*sysusers*.conf)
if [[ -f "${sysusers[0]}" ]]; then
	install -D -m 0644 "${sysusers[0]}" "$tree/usr/lib/sysusers.d/trustd.conf"
	# Create the users now too, so that files below can belong to them from the first boot.
	chroot "$tree" systemd-sysusers trustd.conf
else
	skip "no systemd/*sysusers*.conf"
fi
tmpfiles=("$repo"/systemd/*tmpfiles*.conf)
if [[ -f "${tmpfiles[0]}" ]]; then
	install -D -m 0644 "${tmpfiles[0]}" "$tree/usr/lib/tmpfiles.d/trustd.conf"
else
	skip "no systemd/*tmpfiles*.conf"
fi

# Enable every unit: systemctl reads its [Install] section (WantedBy=, RequiredBy=, Alias=)
# and makes the symlinks under /etc/systemd/system; it needs no running systemd.
for unit in "$repo"/systemd/*.service; do
	[[ -f "$unit" ]] || continue
	if grep -q '^\[Install\]' "$unit"; then
		chroot "$tree" systemctl enable --quiet "$(basename "$unit")"
	else
		log "$(basename "$unit") has no [Install] section: installed, not enabled"
	fi
done

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
