#!/usr/bin/env bash
# Builds the base of the Enigm OS VM image: a Debian bookworm root tree (mmdebstrap minbase +
# systemd, dbus, nftables, the TPM libraries trustd links, ...), Debian's cloud kernel and a tiny
# busybox initrd, and caches them
# in $IMAGE_CACHE/<key>/ (base.tar.zst, vmlinuz, initrd.img, kernel-version), where <key> is the
# sha256 of the recipe: this script and the files in base/. A cached recipe is not rebuilt
# (IMAGE_REBUILD=1 forces it). Prints the cache entry's directory on stdout, logs on stderr.
# Needs root and, on the host: mmdebstrap, dpkg-deb, cpio, gzip, zstd, util-linux (flock).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
security_mirror="${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
# Modules the initrd loads, with their dependencies, to reach the root disk.
initrd_modules=(virtio_pci virtio_blk ext4)

log() { echo "build-base: $*" >&2; }

# Runs inside mmdebstrap (--customize-hook), while the tree still has its apt lists.
customize() {
	local root="$1" stage="$ENIGM_STAGE"

	# Kernel and busybox are fetched as .debs, not installed: the kernel package would pull
	# initramfs-tools, and busybox belongs only in the initrd.
	local kpkg
	kpkg="$(chroot "$root" apt-cache depends linux-image-cloud-amd64 |
		sed -n 's/^ *Depends: \(linux-image-[0-9].*\)$/\1/p' | head -n1)"
	[[ -n "$kpkg" ]] || { log "cannot resolve linux-image-cloud-amd64"; return 1; }
	mkdir -p "$root/var/tmp/debs"
	chroot "$root" chown _apt /var/tmp/debs
	chroot "$root" sh -c "cd /var/tmp/debs && apt-get download -q=2 $kpkg busybox-static"
	mv "$root"/var/tmp/debs/*.deb "$stage/"
	rmdir "$root/var/tmp/debs"

	# Plain `dpkg-deb -x` would replace the merged-/usr symlinks (/lib -> usr/lib).
	dpkg-deb --fsys-tarfile "$stage"/linux-image-*.deb | tar -x --keep-directory-symlink -C "$root"
	local kver
	kver="$(basename "$root"/boot/vmlinuz-*)"
	kver="${kver#vmlinuz-}"
	chroot "$root" depmod -a "$kver"
	mv "$root/boot/vmlinuz-$kver" "$stage/vmlinuz"
	rm -f "$root/boot/System.map-$kver"
	echo "$kver" >"$stage/kernel-version"

	# The initrd: static busybox, /init, and the modules in load order.
	local initrd="$stage/initrd"
	mkdir -p "$initrd"/{bin,dev,proc,sys,lib/modules}
	dpkg-deb --fsys-tarfile "$stage"/busybox-static_*.deb | tar -x -O ./bin/busybox >"$initrd/bin/busybox"
	chmod 0755 "$initrd/bin/busybox"
	install -m 0755 "$here/base/initrd-init" "$initrd/init"
	local m ko
	for m in "${initrd_modules[@]}"; do
		chroot "$root" modprobe --show-depends --set-version "$kver" "$m"
	done | awk '$1 == "insmod" && !seen[$2]++ { print $2 }' | while read -r ko; do
		cp "$root$ko" "$initrd/lib/modules/"
		basename "$ko" >>"$initrd/modules"
	done
	touch "$initrd/modules"
	(cd "$initrd" && find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) | gzip -9 >"$stage/initrd.img"
	rm -rf "$initrd"

	# System configuration.
	echo enigm >"$root/etc/hostname"
	printf '127.0.0.1\tlocalhost\n127.0.1.1\tenigm\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
	# Empty machine-id: a fresh one each boot, and no first-boot presets.
	: >"$root/etc/machine-id"
	rm -f "$root/var/lib/dbus/machine-id"
	ln -sf /lib/systemd/system/multi-user.target "$root/etc/systemd/system/default.target"
	mkdir -p "$root/etc/systemd/system/serial-getty@ttyS0.service.d"
	cat >"$root/etc/systemd/system/serial-getty@ttyS0.service.d/autologin.conf" <<-'EOF'
		# Test image: root shell on the serial console without a password.
		[Service]
		ExecStart=
		ExecStart=-/sbin/agetty --autologin root --noclear --keep-baud 115200,57600,38400,9600 %I $TERM
	EOF
	# Drivers for the host's CPU that only cost boot time in a VM (-cpu max offers svm).
	printf 'blacklist %s\n' kvm_amd kvm_intel powernow_k8 >"$root/etc/modprobe.d/enigm-vm.conf"
	# Nothing on a timer (apt downloads, fstrim, e2scrub, dpkg backups) during tests.
	local timer
	for timer in "$root"/etc/systemd/system/timers.target.wants/*.timer; do
		[[ -e "$timer" || -L "$timer" ]] || continue
		chroot "$root" systemctl disable --quiet "$(basename "$timer")"
	done

	# The network comes up the way a device's does: systemd-networkd, after network-pre.target
	# (which trustd-early-boot.service is ordered before). With QEMU's restricted user network
	# there is a DHCP server and no route anywhere.
	mkdir -p "$root/etc/systemd/network"
	printf '[Match]\nName=en* eth*\n\n[Network]\nDHCP=ipv4\n' >"$root/etc/systemd/network/20-wired.network"
	chroot "$root" systemctl enable --quiet systemd-networkd.service

	install -D -m 0755 "$here/base/run-tests" "$root/usr/lib/enigm/run-tests"
	install -m 0644 "$here/base/enigm-tests.service" "$root/usr/lib/systemd/system/enigm-tests.service"
	chroot "$root" systemctl enable --quiet enigm-tests.service
}

if [[ "${1:-}" == --customize-hook ]]; then
	customize "$2"
	exit
fi

[[ "$(id -u)" == 0 ]] || { log "needs root (mmdebstrap chroot mode, file ownership)"; exit 1; }

recipe_key() {
	local f
	for f in "$here/build-base.sh" "$here"/base/*; do
		printf '%s %s\n' "$(sha256sum <"$f" | cut -d' ' -f1)" "${f#"$here"/}"
	done | sha256sum | cut -c1-16
}

cache="${IMAGE_CACHE:-/var/cache/enigm-image}"
key="$(recipe_key)"
entry="$cache/$key"
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9

# Entries of other recipes unused for two weeks go.
find "$cache" -mindepth 1 -maxdepth 1 -type d ! -name "$key" -mtime +14 -exec rm -rf {} +

if [[ -f "$entry/done" && "${IMAGE_REBUILD:-0}" != 1 ]]; then
	touch "$entry"
	log "cached: $entry ($(cat "$entry/kernel-version"))"
	echo "$entry"
	exit 0
fi

# Build in RAM when there is room (many small files: much faster than on disk here).
tmp=/var/tmp
(($(df -Pk /dev/shm 2>/dev/null | awk 'NR == 2 { print $4 }' || echo 0) > 2097152)) && tmp=/dev/shm
work="$(mktemp -d "${ENIGM_TMPDIR:-$tmp}/enigm-base.XXXXXX")"
# The entry is staged next to its final place, so that the last step is an atomic rename.
export ENIGM_STAGE="$entry.partial"
trap 'rm -rf "$work" "$ENIGM_STAGE"' EXIT
rm -rf "$ENIGM_STAGE"
mkdir -p "$ENIGM_STAGE"
started=$SECONDS

log "building recipe $key (mmdebstrap, about a minute)"
excludes=()
for path in /usr/share/man /usr/share/doc /usr/share/info /usr/share/locale /usr/share/lintian; do
	excludes+=("--dpkgopt=path-exclude=$path/*")
done
mmdebstrap --mode=root --variant=minbase --quiet \
	--include=systemd,systemd-sysv,dbus,nftables,iproute2,kmod,udev,util-linux,procps,libtss2-esys-3.0.2-0,libtss2-mu0,libtss2-tctildr0,libtss2-tcti-device0 \
	"${excludes[@]}" \
	--dpkgopt='path-include=/usr/share/doc/*/copyright' \
	--customize-hook="\"$here/build-base.sh\" --customize-hook \"\$1\"" \
	bookworm "$work/root" \
	"deb $mirror bookworm main" \
	"deb $mirror bookworm-updates main" \
	"deb $security_mirror bookworm-security main"

log "compressing the tree"
tar -C "$work/root" --numeric-owner --xattrs --xattrs-include='*' -cf - . |
	zstd -q -T0 -6 >"$ENIGM_STAGE/base.tar.zst"
rm -f "$ENIGM_STAGE"/*.deb
date -u +%FT%TZ >"$ENIGM_STAGE/done"
sync -f "$ENIGM_STAGE/base.tar.zst"

rm -rf "$entry"
mv "$ENIGM_STAGE" "$entry"
log "built $entry in $((SECONDS - started)) s ($(du -sh "$entry" | cut -f1))"
echo "$entry"
