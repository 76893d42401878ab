#!/usr/bin/env bash
# Boots an image made by assemble.sh under QEMU (TCG: KVM does not work on our machines).
#
#   run.sh OUT_DIR --shell [--persist | --disk PATH] [--append ARGS] [--no-tpm]
#       Root shell on the serial console (stdio). Ctrl-A X quits; `poweroff` or `reboot` in
#       the guest ends QEMU too (-no-reboot).
#   run.sh OUT_DIR --test DIR [--persist | --disk PATH] [--append ARGS] [--no-tpm]
#       DIR holds an executable `run`: it goes on an ext4 disk labelled "tests", the VM boots
#       with enigm.test=1 and enigm-tests.service runs it as root (see base/run-tests), then
#       powers off. Exits with run's exit code (from the END marker on the "results" port);
#       124 on timeout, 125 when there is no END marker. Logs: OUT_DIR/runs/<time>/
#       (console.log: the serial console; results.N: the suite's output on boot N).
#
# The root disk is OUT_DIR/rootfs.ext4 with snapshot=on: every boot starts from the image and
# nothing is written back. With --persist a copy of it is used instead and kept for the whole
# run; with --disk PATH that copy is PATH (made from the image if missing) and is kept after
# the run, so a later run.sh --disk PATH boots what the previous one left.
#
# The VM has a TPM 2.0 (a TPM CRB device backed by swtpm, started here before every boot on a
# unix socket and ended with QEMU) and IMA measuring with the kernel's tcb policy into PCR 10.
# The TPM's state lives as long as the root disk: OUT_DIR/runs/<time>/tpm for one run (every
# boot of a --persist run is a reboot of the same TPM: PCRs reset, reset count + 1), PATH.tpm
# beside a --disk PATH. --no-tpm boots without one (and without swtpm on the host).
#
# Tests that need a reboot (persist mode only): `run` exits 100 after saving what it needs on
# the root disk; run.sh then boots the same disk again (at most ENIGM_VM_MAX_BOOTS, default 5)
# and `run` is started again with ENIGM_BOOT=2, 3, ... For a power cut instead of a clean
# shutdown: `echo "ENIGM-TEST-END rc=100" >&"$ENIGM_RESULTS_FD"; echo b >/proc/sysrq-trigger`.
# Another way: call run.sh --test twice with the same --disk PATH, each with its own DIR.
#
# Environment: ENIGM_VM_TIMEOUT (seconds for the whole run, default 600), ENIGM_VM_MAX_BOOTS.
# Needs on the host: qemu-system-x86 (qemu-system-x86_64), e2fsprogs, coreutils, swtpm.
# shellcheck disable=SC2054 # commas inside QEMU options, not array separators
set -euo pipefail

usage() {
	sed -n '2,13p' "$0" >&2
	exit 2
}
log() { echo "run: $*" >&2; }

[[ $# -ge 2 ]] || usage
out="$1"
shift
mode="" tests="" persist=0 disk="" append="" tpm=1
while [[ $# -gt 0 ]]; do
	case "$1" in
	--shell) mode=shell ;;
	--test) mode=test tests="${2:?--test needs DIR}" && shift ;;
	--persist) persist=1 ;;
	--disk) disk="${2:?--disk needs PATH}" persist=1 && shift ;;
	--append) append="${2:?--append needs ARGS}" && shift ;;
	--no-tpm) tpm=0 ;;
	*) usage ;;
	esac
	shift
done
[[ -n "$mode" ]] || usage
for f in rootfs.ext4 vmlinuz initrd.img; do
	[[ -f "$out/$f" ]] || { log "no $out/$f: run assemble.sh $out first"; exit 2; }
done
if [[ "$mode" == test && ! -x "$tests/run" ]]; then
	log "$tests/run is missing or not executable"
	exit 2
fi

if [[ "$tpm" == 1 ]] && ! command -v swtpm >/dev/null; then
	log "no swtpm on the host (Debian: swtpm): install it, or pass --no-tpm"
	exit 2
fi

timeout_s="${ENIGM_VM_TIMEOUT:-600}"
max_boots="${ENIGM_VM_MAX_BOOTS:-5}"
run_dir="$out/runs/$(date +%Y%m%d-%H%M%S)-$$"
mkdir -p "$run_dir"

# The root disk: the image itself under a throwaway overlay, or a writable copy.
root_drive="file=$out/rootfs.ext4,format=raw,if=none,id=rootfs,snapshot=on"
if [[ "$persist" == 1 ]]; then
	disk="${disk:-$run_dir/rootfs.ext4}"
	if [[ ! -e "$disk" ]]; then
		cp --sparse=always "$out/rootfs.ext4" "$disk"
		log "persistent root disk: $disk (new copy of the image)"
	else
		log "persistent root disk: $disk (as the last run left it)"
	fi
	root_drive="file=$disk,format=raw,if=none,id=rootfs"
fi
# A --persist copy lives as long as the run; a --disk PATH stays.
scratch_disk=""
[[ "$persist" == 1 && "$disk" == "$run_dir/rootfs.ext4" ]] && scratch_disk="$disk"

# The vTPM: swtpm on a unix socket (in a short path: sun_path has 108 bytes), one process
# per boot on the same state directory.
tpm_pid="" tpm_sock_dir=""
cleanup() {
	[[ -n "$scratch_disk" ]] && rm -f "$scratch_disk"
	stop_tpm
	[[ -n "$tpm_sock_dir" ]] && rm -rf "$tpm_sock_dir"
}
trap cleanup EXIT
start_tpm() {
	[[ "$tpm" == 1 ]] || return 0
	rm -f "$tpm_sock"
	swtpm socket --tpm2 --tpmstate "dir=$tpm_state" --ctrl "type=unixio,path=$tpm_sock" \
		--flags startup-clear --log "file=$run_dir/swtpm.log" </dev/null &
	tpm_pid=$!
	local i
	for i in $(seq 100); do
		[[ -S "$tpm_sock" ]] && return 0
		kill -0 "$tpm_pid" 2>/dev/null || break
		sleep 0.05
	done
	log "swtpm did not start (log: $run_dir/swtpm.log)"
	exit 2
}
# swtpm ends by itself when QEMU closes the socket; whatever is left is killed.
stop_tpm() {
	[[ -n "$tpm_pid" ]] || return 0
	local i
	for i in $(seq 20); do
		kill -0 "$tpm_pid" 2>/dev/null || break
		sleep 0.05
	done
	kill "$tpm_pid" 2>/dev/null || true
	wait "$tpm_pid" 2>/dev/null || true
	tpm_pid=""
}
if [[ "$tpm" == 1 ]]; then
	if [[ -n "$disk" && "$disk" != "$run_dir/rootfs.ext4" ]]; then
		tpm_state="$disk.tpm"
	else
		tpm_state="$run_dir/tpm"
	fi
	if [[ -d "$tpm_state" ]]; then
		log "vTPM state: $tpm_state (as the last run left it)"
	else
		mkdir -p "$tpm_state"
		log "vTPM state: $tpm_state (new TPM)"
	fi
	tpm_sock_dir="$(mktemp -d /tmp/enigm-tpm.XXXXXX)"
	tpm_sock="$tpm_sock_dir/swtpm.sock"
fi

qemu=(
	qemu-system-x86_64 -nodefaults -no-user-config
	-accel tcg,thread=multi -cpu max -smp 2 -m 2048
	-kernel "$out/vmlinuz" -initrd "$out/initrd.img"
	-no-reboot
	-device virtio-rng-pci
	-drive "$root_drive" -device virtio-blk-pci,drive=rootfs,serial=rootfs
)
# A NIC on QEMU's user network with restrict=on: the guest reaches nothing outside the VM
# (no host, no internet); it exists so that the boot brings an interface up (ENIGM_VM_NET=none
# leaves it out).
if [[ "${ENIGM_VM_NET:-user}" == user ]]; then
	qemu+=(-nic user,model=virtio-net-pci,restrict=on)
else
	qemu+=(-nic none)
fi
if [[ "$tpm" == 1 ]]; then
	qemu+=(
		-chardev "socket,id=chrtpm,path=$tpm_sock"
		-tpmdev emulator,id=tpm0,chardev=chrtpm
		-device tpm-crb,tpmdev=tpm0
	)
fi
# IMA measures what root executes and reads (the tcb policy) into PCR 10.
cmdline="console=ttyS0 root=LABEL=rootfs rw panic=-1 ima_policy=tcb"

if [[ "$mode" == shell ]]; then
	start_tpm
	"${qemu[@]}" -nographic -serial mon:stdio -append "$cmdline $append"
	exit
fi

# The suite's disk: an ext4 image of DIR, sized to fit.
size_mb=$(($(du -sm "$tests" | cut -f1) * 2 + 16))
mkfs.ext4 -q -F -L tests -O ^has_journal -d "$tests" "$run_dir/tests.ext4" "${size_mb}M" >/dev/null
qemu+=(
	-drive "file=$run_dir/tests.ext4,format=raw,if=none,id=tests,readonly=on"
	-device virtio-blk-pci,drive=tests,serial=tests
	-display none -monitor none
	-serial "file:$run_dir/console.log"
	-device virtio-serial-pci
)

run_started=$SECONDS
deadline=$((SECONDS + timeout_s))
boot=1 rc=""
while :; do
	results="$run_dir/results.$boot"
	: >"$results"
	remaining=$((deadline - SECONDS))
	((remaining > 0)) || remaining=1
	log "boot $boot (log: $run_dir/console.log)"
	started=$SECONDS
	start_tpm
	qemu_rc=0
	# QEMU's file chardev truncates its file: the console log of every boot is appended here.
	timeout -k 10 "$remaining" "${qemu[@]}" \
		-chardev "file,id=results,path=$results" \
		-device virtserialport,chardev=results,name=results \
		-append "$cmdline enigm.test=1 enigm.boot=$boot $append" \
		</dev/null >"$run_dir/qemu.$boot.log" 2>&1 || qemu_rc=$?
	stop_tpm
	cat "$run_dir/console.log" >>"$run_dir/console.all.log"

	begin="$(grep -a '^ENIGM-TEST-BEGIN' "$results" | tail -n1 || true)"
	end="$(grep -a '^ENIGM-TEST-END rc=' "$results" | tail -n1 || true)"
	if [[ -n "$begin" ]]; then
		log "boot $boot: suite started at guest uptime ${begin##*uptime=} s"
	fi
	sed '/^ENIGM-TEST-\(BEGIN\|END\)/d' "$results"
	if [[ -z "$end" ]]; then
		if [[ "$qemu_rc" == 124 ]]; then
			log "boot $boot: timed out after $timeout_s s in all"
			rc=124
		else
			log "boot $boot: no END marker (QEMU exit $qemu_rc)"
			rc=125
		fi
		break
	fi
	rc="${end#ENIGM-TEST-END rc=}"
	rc="${rc%% *}"
	[[ "$rc" =~ ^[0-9]+$ ]] || { log "boot $boot: bad END marker: $end"; rc=125; break; }
	log "boot $boot: suite exit $rc; VM ran $((SECONDS - started)) s"
	[[ "$qemu_rc" == 0 ]] || log "boot $boot: warning: the VM did not power off by itself (QEMU exit $qemu_rc)"
	if [[ "$rc" == 100 && "$persist" == 1 && "$boot" -lt "$max_boots" ]]; then
		boot=$((boot + 1))
		continue
	fi
	[[ "$rc" == 100 ]] && log "the suite asked for a reboot: that needs --persist or --disk, and at most $max_boots boots"
	break
done

mv "$run_dir/console.all.log" "$run_dir/console.log"
log "exit $rc after $((SECONDS - run_started)) s in all ($boot boot(s)); logs in $run_dir"
if [[ "$rc" != 0 ]]; then
	log "last lines of the serial console ($run_dir/console.log):"
	tail -n 40 "$run_dir/console.log" >&2
	[[ -s "$run_dir/qemu.$boot.log" ]] && cat "$run_dir/qemu.$boot.log" >&2
fi
exit "$rc"
