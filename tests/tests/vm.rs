//! The in-VM suite: builds trustd's Debian package from this build's binaries, builds (or
//! restores from cache) the Enigm OS image and installs the package in it with dpkg, then boots it under QEMU three times on one disk and runs
//! `vm-suite` inside (boot order, READY, posture over the real system bus, bundles, privacy,
//! SIGKILL, SIGSTOP and the watchdog, an OOM kill, the package upgraded in place, a power cut
//! mid-burst, a missing binary at boot, bus activation, the journal, systemd-analyze security).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use tests::bin_dir;
use tests::lab::can_run;
use trustd::bundle::{PrivateKeyFile, generate_key};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("repo")
}

/// A trust root with one key for every role; the private key goes on the tests disk.
fn provision(etc: &Path, tests: &Path) {
    let key = generate_key().expect("key");
    let root = tests::lab::trust_root(&key, &[&key], 1);
    std::fs::write(
        etc.join("trust-root.json"),
        serde_json::to_vec_pretty(&root).expect("json"),
    )
    .expect("trust root");
    std::fs::create_dir_all(tests.join("keys")).expect("mkdir");
    std::fs::write(
        tests.join("keys/policy.key"),
        serde_json::to_vec(&PrivateKeyFile::new(&key)).expect("json"),
    )
    .expect("key");
}

fn copy_stripped(from: &Path, to: &Path) {
    std::fs::copy(from, to).expect("copy");
    let _ = Command::new("strip").arg("--strip-debug").arg(to).status();
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// `deb` again as version `<its version>+upgrade1` (same files and maintainer scripts): what
/// the suite installs over it to test an upgrade in place.
fn newer_version(deb: &Path, to: &Path, scratch: &Path) {
    let st = Command::new("dpkg-deb")
        .arg("-R")
        .arg(deb)
        .arg(scratch)
        .status()
        .expect("dpkg-deb -R");
    assert!(st.success(), "dpkg-deb -R");
    let control = scratch.join("DEBIAN/control");
    let text = std::fs::read_to_string(&control).expect("control");
    let bumped: String = text
        .lines()
        .map(|l| match l.strip_prefix("Version: ") {
            Some(v) => format!("Version: {v}+upgrade1\n"),
            None => format!("{l}\n"),
        })
        .collect();
    assert_ne!(bumped, text, "no Version field");
    std::fs::write(&control, bumped).expect("control");
    let st = Command::new("dpkg-deb")
        .args(["--root-owner-group", "-b"])
        .arg(scratch)
        .arg(to)
        .status()
        .expect("dpkg-deb -b");
    assert!(st.success(), "dpkg-deb -b");
}

#[test]
fn the_suite_passes_inside_the_enigm_os_image() {
    if !can_run(&[
        "qemu-system-x86_64",
        "mmdebstrap",
        "dpkg-buildpackage",
        "dh",
        "lintian",
        "mkfs.ext4",
        "zstd",
        "cpio",
    ]) {
        return;
    }
    let work = tempfile::tempdir().expect("tempdir");
    let (etc, tests, out) = (
        work.path().join("etc"),
        work.path().join("tests"),
        work.path().join("vm"),
    );
    for d in [&etc, &tests] {
        std::fs::create_dir_all(d).expect("mkdir");
    }
    provision(&etc, &tests);
    for b in ["vm-suite", "netprobe"] {
        copy_stripped(&bin_dir().join(b), &tests.join(b));
    }
    // The suite in its own process group, and whatever it leaves behind killed when it ends:
    // a leftover child holding the output pipe would keep the runner (and the VM) waiting
    // for end of file until the run's timeout, after a failure most of all.
    std::fs::write(
        tests.join("run"),
        "#!/bin/sh\nsetsid ./vm-suite &\npid=$!\nwait $pid\nrc=$?\nkill -KILL -- -$pid 2>/dev/null\nexit $rc\n",
    )
    .expect("run");
    std::fs::set_permissions(tests.join("run"), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");

    // The package as an OS team builds it (this build's binaries), and a newer version of
    // it on the tests disk for the in-place upgrade.
    let t = std::time::Instant::now();
    let pkg = work.path().join("package");
    let st = Command::new(repo().join("scripts/package.sh"))
        .arg(&pkg)
        .env("TRUSTD_BIN_DIR", bin_dir())
        .env("DEB_BUILD_OPTIONS", "noautodbgsym")
        .status()
        .expect("package.sh");
    assert!(st.success(), "package.sh failed");
    let deb = std::fs::read_dir(&pkg)
        .expect("ls")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .expect("a .deb");
    newer_version(
        &deb,
        &tests.join("trustd-upgrade.deb"),
        &work.path().join("unpacked"),
    );
    eprintln!("package built in {:.1?}", t.elapsed());

    let t = std::time::Instant::now();
    let st = Command::new(repo().join("qemu-image/assemble.sh"))
        .arg(&out)
        .env("TRUSTD_DEB", &deb)
        .env("TRUSTD_ETC", &etc)
        .status()
        .expect("assemble.sh");
    assert!(st.success(), "assemble.sh failed");
    eprintln!("image assembled in {:.1?}", t.elapsed());

    let t = std::time::Instant::now();
    let o = Command::new(repo().join("qemu-image/run.sh"))
        .arg(&out)
        .arg("--test")
        .arg(&tests)
        .arg("--persist")
        .output()
        .expect("run.sh");
    let stdout = String::from_utf8_lossy(&o.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&o.stderr));
    eprintln!("VM suite finished in {:.1?}", t.elapsed());
    assert_eq!(o.status.code(), Some(0), "the in-VM suite failed");
    for expect in [
        "ok: boot order",
        "ok: bundle serial 1 applied",
        "ok: SIGKILL",
        "ok: SIGSTOP",
        "ok: OOM kill",
        "ok: after the power cut",
        "ok: package upgraded in place",
        "ok: binary missing at boot",
        "ok: memory with a 100k feed",
        "ok: bus activation",
        "ok: journal:",
        "ok: systemd-analyze security exposure",
    ] {
        assert!(stdout.contains(expect), "missing {expect:?}");
    }
}
