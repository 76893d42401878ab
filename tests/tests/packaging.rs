//! trustd as an OS team and an admin meet it: the Debian package (built with
//! dpkg-buildpackage, checked by lintian), the man pages and shell completions generated
//! from the binaries' clap definitions, the journal catalog, the documented introspection XML
//! as gdbus-codegen reads it, the bus activation file, and the units' `systemd-analyze
//! security` exposure. None needs root; each tool missing skips here and fails under CI=true.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use tests::bin;
use tests::lab::skip;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("repo")
}

/// Whether every tool is on PATH; if not, skip (fail under CI=true) naming them.
fn have(tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {t} >/dev/null")])
                .status()
                .is_ok_and(|s| s.success())
        })
        .collect();
    if missing.is_empty() {
        return true;
    }
    skip(&format!("missing {missing:?}"));
    false
}

fn run(cmd: &mut Command) -> String {
    let o = cmd.output().expect("spawn");
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{cmd:?} failed: {out}");
    out
}

/// The subcommand paths `trustctl --help` (and each group's `--help`) lists, e.g.
/// `["audit", "audit verify", ...]`, read from the binary itself.
fn trustctl_commands() -> Vec<String> {
    fn listed(args: &[&str]) -> Vec<String> {
        let out = run(Command::new(bin("trustctl")).args(args).arg("--help"));
        out.lines()
            .skip_while(|l| !l.starts_with("Commands:"))
            .skip(1)
            .take_while(|l| l.starts_with("  "))
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .filter(|c| c != "help")
            .collect()
    }
    let mut all = Vec::new();
    for c in listed(&[]) {
        all.push(c.clone());
        for sub in listed(&[&c]) {
            all.push(format!("{c} {sub}"));
        }
    }
    all
}

/// `xtask docs` (what the package build runs) writes a page per binary with EXIT STATUS and
/// FILES, a page per subcommand, and bash/zsh/fish completions, all from the clap
/// definitions: a command added to trustctl gets its page and completion with no other edit.
#[test]
fn man_pages_and_completions_are_generated_from_the_clap_definitions() {
    if !have(&["man", "bash"]) {
        return;
    }
    let out = tempfile::tempdir().expect("tempdir");
    run(Command::new(bin("xtask"))
        .arg("docs")
        .arg(out.path())
        .env("SOURCE_DATE_EPOCH", "1790000000"));
    let man = out.path().join("man");
    for (page, codes) in [
        ("trustd.8", &["0", "1", "2", "3"][..]),
        ("trustctl.1", &["0", "1", "2", "3"][..]),
        ("trustd-launch.1", &["1", "2", "3"][..]),
    ] {
        let text = std::fs::read_to_string(man.join(page)).expect(page);
        assert!(
            text.contains(".SH \"EXIT STATUS\""),
            "{page}: no EXIT STATUS"
        );
        assert!(text.contains(".SH FILES"), "{page}: no FILES");
        assert!(text.contains("/var/lib/trustd/state.json"), "{page}");
        assert!(
            text.contains("2026-09-21"),
            "{page}: date not from SOURCE_DATE_EPOCH"
        );
        for c in codes {
            assert!(
                text.contains(&format!("\\fB{c}\\fR")),
                "{page}: exit code {c}"
            );
        }
        // man renders it without a warning (groff's -ww through man --warnings).
        let o = Command::new("man")
            .args(["--warnings", "-E", "UTF-8", "-l"])
            .arg(man.join(page))
            .env("MANWIDTH", "80")
            .output()
            .expect("man");
        assert!(o.status.success(), "man {page}");
        let warnings = String::from_utf8_lossy(&o.stderr);
        assert!(warnings.trim().is_empty(), "man {page}: {warnings}");
        // Without a terminal, man may still embolden by overstriking (X backspace X).
        let mut rendered = String::new();
        for c in String::from_utf8_lossy(&o.stdout).chars() {
            if c == '\u{8}' {
                rendered.pop();
            } else {
                rendered.push(c);
            }
        }
        assert!(
            rendered.contains("EXIT STATUS"),
            "{page} rendered: {rendered}"
        );
    }
    let commands = trustctl_commands();
    assert!(commands.len() > 20, "{commands:?}");
    let bash = std::fs::read_to_string(out.path().join("completions/bash/trustctl"))
        .expect("bash completion");
    let zsh = std::fs::read_to_string(out.path().join("completions/zsh/_trustctl"))
        .expect("zsh completion");
    let fish = std::fs::read_to_string(out.path().join("completions/fish/trustctl.fish"))
        .expect("fish completion");
    for c in &commands {
        let page = format!("trustctl-{}.1", c.replace(' ', "-"));
        assert!(
            man.join(&page).is_file(),
            "no page {page} for `trustctl {c}`"
        );
        let last = c.rsplit(' ').next().unwrap_or(c);
        for (shell, text) in [("bash", &bash), ("zsh", &zsh), ("fish", &fish)] {
            assert!(text.contains(last), "{shell} completion lacks {c}");
        }
    }
    for b in ["trustd", "trustctl", "trustd-launch"] {
        let f = out.path().join("completions/bash").join(b);
        run(Command::new("bash").arg("-n").arg(&f));
        // Sourced, it registers a completion for the binary.
        let o = run(Command::new("bash")
            .arg("-c")
            .arg(format!("source {}; complete -p {b}", f.display())));
        assert!(o.contains(b), "{o}");
    }
}

/// What the package must hold, where Debian and the units look for it.
const PACKAGE_FILES: &[&str] = &[
    "./usr/bin/trustd",
    "./usr/bin/trustctl",
    "./usr/bin/trustd-launch",
    "./lib/systemd/system/trustd.service",
    "./lib/systemd/system/trustd-early-boot.service",
    "./usr/lib/sysusers.d/trustd.conf",
    "./usr/lib/tmpfiles.d/trustd.conf",
    "./usr/lib/trustd/lockdown.nft",
    "./usr/lib/systemd/catalog/trustd.catalog",
    "./usr/share/dbus-1/system.d/org.enigm.Trust1.conf",
    "./usr/share/dbus-1/system-services/org.enigm.Trust1.service",
    "./usr/share/dbus-1/interfaces/org.enigm.Trust1.xml",
    // The units' Documentation= points here: uncompressed.
    "./usr/share/doc/trustd/SECURITY.md",
    "./usr/share/doc/trustd/README.Debian",
    "./usr/share/doc/trustd/copyright",
    "./usr/share/man/man8/trustd.8.gz",
    "./usr/share/man/man1/trustctl.1.gz",
    "./usr/share/man/man1/trustctl-audit-verify.1.gz",
    "./usr/share/man/man1/trustd-launch.1.gz",
    "./usr/share/bash-completion/completions/trustctl",
    "./usr/share/zsh/vendor-completions/_trustctl",
    "./usr/share/fish/vendor_completions.d/trustctl.fish",
];

/// Builds the package as an OS team would (scripts/package.sh: dpkg-buildpackage -b with
/// debhelper, from this build's binaries) and runs lintian: no error. Then checks what it
/// installs and what its maintainer scripts do to the services: trustd.service enabled,
/// started on install and restarted (never stopped first) on upgrade, so enforcement never
/// lapses; trustd-early-boot.service enabled but never started or restarted by the package
/// (that would load the static lockdown over the policy in force); the users made before
/// the directories and before the start.
#[test]
fn the_debian_package_builds_and_lintian_reports_no_error() {
    if !have(&["dpkg-buildpackage", "dh", "dh_installsysusers", "lintian"]) {
        return;
    }
    let out = tempfile::tempdir().expect("tempdir");
    for b in ["trustd", "trustctl", "trustd-launch", "xtask"] {
        bin(b);
    }
    let log = run(Command::new(repo().join("scripts/package.sh"))
        .arg(out.path())
        .env("TRUSTD_BIN_DIR", tests::bin_dir())
        .env("DEB_BUILD_OPTIONS", "noautodbgsym"));
    eprintln!("{log}");
    let lintian = std::fs::read_to_string(out.path().join("lintian.txt")).expect("lintian.txt");
    assert!(
        !lintian.lines().any(|l| l.starts_with("E: ")),
        "lintian errors:\n{lintian}"
    );
    let deb = std::fs::read_dir(out.path())
        .expect("ls")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .expect("a .deb");
    let listing = run(Command::new("dpkg-deb").arg("-c").arg(&deb));
    let files: BTreeSet<&str> = listing
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .collect();
    for f in PACKAGE_FILES {
        assert!(files.contains(f), "the package lacks {f}:\n{listing}");
    }
    let fields = run(Command::new("dpkg-deb").arg("-f").arg(&deb).arg("Depends"));
    for dep in ["nftables", "dbus", "libc6"] {
        assert!(fields.contains(dep), "Depends: {fields}");
    }
    let ctl = out.path().join("control");
    run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&ctl));
    let script = |name: &str| std::fs::read_to_string(ctl.join(name)).expect(name);
    let postinst = script("postinst");
    let (users, dirs, start) = (
        postinst
            .find("systemd-sysusers")
            .expect("sysusers in postinst"),
        postinst
            .find("systemd-tmpfiles")
            .expect("tmpfiles in postinst"),
        postinst
            .find("deb-systemd-invoke $_dh_action 'trustd.service'")
            .expect("trustd.service started/restarted in postinst"),
    );
    assert!(users < dirs && dirs < start, "postinst order:\n{postinst}");
    assert!(
        postinst.contains("_dh_action=restart"),
        "upgrade restarts:\n{postinst}"
    );
    assert!(
        postinst.contains("deb-systemd-helper enable 'trustd-early-boot.service'"),
        "{postinst}"
    );
    let prerm = script("prerm");
    for s in [&postinst, &prerm] {
        assert!(
            !s.contains("invoke start 'trustd-early-boot.service'")
                && !s.contains("restart 'trustd-early-boot.service'")
                && !s.contains("stop 'trustd-early-boot.service'"),
            "the package must not run the early-boot unit:\n{s}"
        );
    }
    // trustd is stopped on remove only, never before an upgrade.
    assert!(
        prerm.contains("[ \"$1\" = remove ]") && prerm.contains("stop 'trustd.service'"),
        "{prerm}"
    );
    assert!(
        prerm.contains("stay in force until the next boot")
            && prerm.contains("nft delete table inet trustd;")
            && prerm.contains("nft delete table inet trustd_intel"),
        "{prerm}"
    );
    // Bus activation must not start trustd again between its stop and the removal of its
    // files: the unit is masked (runtime) before debhelper's stop, and unmasked after.
    let (mask, stop) = (
        prerm
            .find("systemctl mask --runtime trustd.service")
            .expect("prerm masks trustd.service on remove"),
        prerm.find("stop 'trustd.service'").expect("stop"),
    );
    assert!(mask < stop, "mask before stop:\n{prerm}");
    let postrm = script("postrm");
    assert!(
        postrm.contains("rm -rf /var/lib/trustd /var/log/trustd"),
        "{postrm}"
    );
    assert!(
        postrm.contains("systemctl unmask --runtime trustd.service"),
        "{postrm}"
    );
    // A removal that fails and is undone (abort-remove runs postinst) unmasks too.
    let abort = postinst
        .find("abort-remove)")
        .expect("postinst handles abort-remove");
    assert!(
        postinst[abort..].contains("systemctl unmask --runtime trustd.service"),
        "{postinst}"
    );
}

/// Every MESSAGE_ID trustd's sources log has an entry in the shipped catalog, and
/// journalctl's own catalog compiler reads the file (in a scratch root, never the host's).
#[test]
fn every_message_id_trustd_logs_has_a_catalog_entry_journalctl_reads() {
    let catalog_path = repo().join("systemd/trustd.catalog");
    let catalog = std::fs::read_to_string(&catalog_path).expect("catalog");
    let mut ids = BTreeSet::new();
    let mut stack = vec![repo().join("trustd/src")];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).expect("read_dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&p).expect("source");
                for line in text
                    .lines()
                    .filter(|l| l.to_lowercase().contains("message_id"))
                {
                    for word in line.split(|c: char| !c.is_ascii_hexdigit()) {
                        if word.len() == 32 {
                            ids.insert(word.to_lowercase());
                        }
                    }
                }
            }
        }
    }
    assert!(
        ids.contains(trustd::audit::AUDIT_MESSAGE_ID),
        "the scan found {ids:?}"
    );
    for id in &ids {
        assert!(
            catalog.lines().any(|l| l.trim() == format!("-- {id}")),
            "MESSAGE_ID {id} has no entry in systemd/trustd.catalog"
        );
    }
    if !have(&["journalctl"]) {
        return;
    }
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("usr/lib/systemd/catalog");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::copy(&catalog_path, dir.join("trustd.catalog")).expect("copy");
    let o = Command::new("journalctl")
        .arg(format!("--root={}", root.path().display()))
        .arg("--update-catalog")
        .output()
        .expect("journalctl");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "journalctl --update-catalog: {err}");
    assert!(
        !err.contains("trustd.catalog"),
        "journalctl complains about the catalog: {err}"
    );
    let listed = run(Command::new("journalctl")
        .arg(format!("--root={}", root.path().display()))
        .arg("--list-catalog"));
    for id in &ids {
        assert!(listed.contains(id.as_str()), "{id} not compiled: {listed}");
    }
}

/// The committed introspection XML documents every interface, method, signal and property
/// with an `org.gtk.GDBus.DocString` annotation, and gdbus-codegen (GLib's own reader) accepts
/// it: C bindings generate, and the DocBook it writes carries each text.
#[test]
fn gdbus_codegen_reads_the_documented_introspection_xml() {
    let xml_path = repo().join("dbus/org.enigm.Trust1.xml");
    let xml = std::fs::read_to_string(&xml_path).expect("xml");
    let docs = tests::introspection::doc_strings(&xml);
    let mut members = 0;
    for line in xml.lines().map(str::trim) {
        for element in [
            "<interface name=",
            "<method name=",
            "<signal name=",
            "<property name=",
        ] {
            if line.starts_with(element) {
                members += 1;
                let name = line.split('"').nth(1).expect("name");
                assert!(
                    docs.iter().any(|(_, n, d)| n == name && !d.is_empty()),
                    "{name} has no DocString"
                );
            }
        }
    }
    assert_eq!(docs.len(), members, "{docs:?}");
    for iface in trustd::dbus::INTERFACES {
        assert!(
            docs.iter().any(|(e, n, _)| e == "interface" && n == iface),
            "{iface}"
        );
    }
    if !have(&["gdbus-codegen"]) {
        return;
    }
    let out = tempfile::tempdir().expect("tempdir");
    run(Command::new("gdbus-codegen")
        .args([
            "--interface-prefix",
            "org.enigm.Trust1.",
            "--c-namespace",
            "Trust",
        ])
        .args(["--generate-c-code", "trust1", "--generate-docbook", "doc"])
        .arg("--output-directory")
        .arg(out.path())
        .arg(&xml_path));
    assert!(out.path().join("trust1.h").is_file());
    let mut docbook = String::new();
    for iface in trustd::dbus::INTERFACES {
        docbook +=
            &std::fs::read_to_string(out.path().join(format!("doc-{iface}.xml"))).expect(iface);
    }
    for (_, name, doc) in &docs {
        // gdbus-codegen reflows text; compare the first words.
        let start: String = doc.split_whitespace().take(4).collect::<Vec<_>>().join(" ");
        assert!(
            docbook.contains(&start),
            "{name}: {start:?} not in the DocBook"
        );
    }
}

/// The bus activation file: a call to org.enigm.Trust1 while trustd is stopped starts
/// trustd.service through systemd; dbus-daemon never runs anything itself.
#[test]
fn the_bus_activation_file_starts_trustd_service_through_systemd() {
    let text = std::fs::read_to_string(repo().join("dbus/org.enigm.Trust1.service"))
        .expect("activation file");
    let keys: Vec<(&str, &str)> = text
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains('='))
        .filter_map(|l| l.split_once('='))
        .collect();
    assert!(text.lines().any(|l| l == "[D-BUS Service]"), "{text}");
    let get = |k: &str| keys.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
    assert_eq!(get("Name"), Some(trustd::dbus::BUS_NAME));
    assert_eq!(get("SystemdService"), Some("trustd.service"));
    assert_eq!(
        get("Exec"),
        Some("/bin/false"),
        "no activation outside systemd"
    );
    // The user named is one the bus policy lets own the name, and the unit runs as it.
    let user = get("User").expect("User= (required on the system bus)");
    let policy = std::fs::read_to_string(repo().join("dbus/org.enigm.Trust1.conf")).expect("conf");
    assert!(
        policy.contains(&format!(
            "<policy user=\"{user}\">\n    <allow own=\"org.enigm.Trust1\"/>"
        )),
        "{user} may not own the name"
    );
    let unit = std::fs::read_to_string(repo().join("systemd/trustd.service")).expect("unit");
    assert!(
        unit.lines().any(|l| l == format!("User={user}")),
        "unit user"
    );
}

/// `systemd-analyze security` (offline, on the files) of both units: trustd.service at most
/// 2.0 and trustd-early-boot.service at most 2.5 (the in-VM suite measures the loaded units).
#[test]
fn both_units_are_hardened_offline() {
    if !have(&["systemd-analyze"]) {
        return;
    }
    for (unit, most) in [("trustd.service", 2.0), ("trustd-early-boot.service", 2.5)] {
        let o = Command::new("systemd-analyze")
            .args(["security", "--offline=yes", "--no-pager"])
            .arg(repo().join("systemd").join(unit))
            .output()
            .expect("systemd-analyze");
        let text = String::from_utf8_lossy(&o.stdout);
        let line = text
            .lines()
            .find(|l| l.contains("Overall exposure level"))
            .unwrap_or_else(|| panic!("{unit}: {text}{}", String::from_utf8_lossy(&o.stderr)));
        let level: f64 = line
            .split(':')
            .nth(1)
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("exposure");
        eprintln!("{unit}: {}", line.trim());
        assert!(level <= most, "{unit}: exposure {level} above {most}");
    }
    // ...with trustd reaching the TPM: PrivateDevices=yes alone leaves /dev/tpmrm0 out of the
    // service's /dev (a DeviceAllow= adds no node), so the node is bound in (optional: "-"),
    // allowed in the device cgroup, readable by group tss, and trustd is told to use it.
    let unit = std::fs::read_to_string(repo().join("systemd/trustd.service")).expect("unit");
    let lines: Vec<&str> = unit.lines().map(str::trim).collect();
    for want in [
        "PrivateDevices=yes",
        "DevicePolicy=closed",
        "BindPaths=-/dev/tpmrm0",
        "DeviceAllow=/dev/tpmrm0 rw",
        "SupplementaryGroups=tss",
        "ExecStart=/usr/bin/trustd run --confine --default-tpm-device /dev/tpmrm0",
    ] {
        assert!(lines.contains(&want), "trustd.service lacks {want:?}");
    }
    assert!(
        !lines
            .iter()
            .any(|l| !l.starts_with('#') && l.contains("/dev/tpm0")),
        "the raw TPM device is not trustd's: only the resource manager"
    );
    // The group exists wherever the unit runs (tpm-udev makes it; sysusers makes sure).
    for f in ["systemd/trustd.sysusers.conf", "debian/trustd.sysusers"] {
        let text = std::fs::read_to_string(repo().join(f)).expect("sysusers");
        assert!(
            text.lines().any(|l| l.trim() == "g tss -"),
            "{f} does not make sure group tss exists"
        );
    }
}

/// The TPM event log survives a restart of trustd.service: it lives in /run/trustd (the
/// unit's RuntimeDirectory=), and PCR 13 keeps what was extended until a reboot. systemd
/// removes a RuntimeDirectory= whenever the service stops unless RuntimeDirectoryPreserve=yes,
/// so without it the package's restart on upgrade (and every watchdog restart) would leave
/// a PCR the log no longer replays to: the TPM evidence untrusted until the next boot.
#[test]
fn the_tpm_event_log_in_the_runtime_directory_survives_a_restart_of_the_service() {
    let paths = trustd::Paths::system();
    assert!(
        paths.measurement_log().starts_with(paths.runtime_dir()),
        "the measurement log moved: {}",
        paths.measurement_log().display()
    );
    let unit = std::fs::read_to_string(repo().join("systemd/trustd.service")).expect("unit");
    let lines: Vec<&str> = unit.lines().map(str::trim).collect();
    assert!(lines.contains(&"RuntimeDirectory=trustd"), "{unit}");
    assert!(
        lines.contains(&"RuntimeDirectoryPreserve=yes"),
        "trustd.service removes /run/trustd (the TPM event log) when it stops or restarts"
    );
}

/// systemd-sysusers adopts an existing account named trustd silently: a person's login
/// account (uid 1000, a shell) would then run trustd and own its state and device key. The
/// package's postinst refuses to configure (exit 1, before anything is made or started) and
/// says what to do. Run against a stand-in `getent` on PATH, never the host's accounts; the
/// refusal comes before the script touches anything.
#[test]
fn postinst_refuses_to_run_trustd_as_an_existing_login_account() {
    let d = tempfile::tempdir().expect("tempdir");
    let postinst = repo().join("debian/trustd.postinst");
    for (entry, why) in [
        (
            "trustd:x:1000:1000:Alice:/home/trustd:/usr/sbin/nologin",
            "not a system account",
        ),
        (
            "trustd:x:0:0:root:/root:/usr/sbin/nologin",
            "not a system account",
        ),
        ("trustd:x:120:120::/var/lib/trustd:/bin/bash", "login shell"),
    ] {
        let getent = d.path().join("getent");
        std::fs::write(
            &getent,
            format!("#!/bin/sh\n[ \"$1\" = passwd ] && echo '{entry}' && exit 0\nexit 2\n"),
        )
        .expect("getent");
        std::fs::set_permissions(
            &getent,
            <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755),
        )
        .expect("chmod");
        let o = Command::new("sh")
            .arg(&postinst)
            .arg("configure")
            .env(
                "PATH",
                format!(
                    "{}:{}",
                    d.path().display(),
                    std::env::var("PATH").unwrap_or_default()
                ),
            )
            .output()
            .expect("sh");
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{entry}: {err}");
        assert!(
            err.contains(why) && err.contains("Nothing was started"),
            "{entry}: {err}"
        );
    }
}
