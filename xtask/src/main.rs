//! xtask: build-time tasks of trustd, run by the package build (debian/rules).
//!
//! `xtask docs OUT_DIR` writes, from the binaries' own clap definitions (so they cannot drift
//! from `--help`):
//! - `OUT_DIR/man/`: trustd.8, trustctl.1, trustd-launch.1 (with EXIT STATUS, FILES and SEE
//!   ALSO sections) and one page per subcommand (trustctl-audit-verify.1, ...);
//! - `OUT_DIR/completions/{bash,zsh,fish}/`: completions for the three binaries, named as
//!   bash-completion, zsh's vendor-completions and fish's vendor_completions.d expect.
//!
//! Page dates come from `SOURCE_DATE_EPOCH` (dpkg sets it from debian/changelog), so a
//! rebuild makes the same bytes. It never touches the device's files or the network.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::CommandFactory;
use clap_complete::Shell;
use clap_mangen::Man;
use clap_mangen::roff::{Roff, bold, italic, roman};

// The binaries' sources, compiled in for their `Cli` types. Everything but the clap
// definitions is unused here.
#[allow(dead_code, clippy::all)]
#[path = "../../trustd/src/bin/trustctl/main.rs"]
mod trustctl_bin;

#[allow(dead_code, clippy::all)]
#[path = "../../trustd/src/bin/trustd.rs"]
mod trustd_bin;

#[allow(dead_code, clippy::all)]
#[path = "../../trustd/src/bin/trustd-launch.rs"]
mod launch_bin;

/// One binary: its clap command, man section and the sections clap does not know.
struct Page {
    cmd: clap::Command,
    section: &'static str,
    exit_status: &'static [(&'static str, &'static str)],
    files: &'static [(&'static str, &'static str)],
    see_also: &'static [(&'static str, &'static str)],
}

/// What every device holds, as the FILES sections name them.
const DEVICE_FILES: &[(&str, &str)] = &[
    (
        "/etc/trustd/trust-root.json",
        "The provisioned trust root: keys and per-role thresholds.",
    ),
    (
        "/etc/trustd/trustd.json",
        "Configuration: role groups, check interval, nft deadline, audit segment size.",
    ),
    (
        "/var/lib/trustd/state.json",
        "Serials per role, privacy mode, setup steps, lifecycle, digests of the last-good inputs.",
    ),
    (
        "/var/lib/trustd/*.dsse.json",
        "The last-good policy, intel feed, trust-root rotation and lifecycle command, as received.",
    ),
    (
        "/var/lib/trustd/device.key, device.pub, device.secret",
        "The device signing key (checkpoints, posture reports) and the secret device handles derive from.",
    ),
    (
        "/var/lib/trustd/device.vkey",
        "The device key as a C2SP signed-note verifier key (one line), for checkpoint verifiers.",
    ),
    (
        "/var/lib/trustd/tpm-ak.json",
        "The TPM attestation key, wrapped by the TPM that made it (only that TPM can load it).",
    ),
    (
        "/var/lib/trustd/tpm-ak.pem, tpm-ak.name, tpm-ek.pem, tpm-ek.crt",
        "For verifiers: the attestation key's public part and TPM name, the endorsement key (and its certificate where the TPM has one).",
    ),
    (
        "/run/trustd/measurements.jsonl",
        "The TPM measurement event log since boot (JSON lines), replayed against PCR 13.",
    ),
    (
        "/var/log/trustd/audit/",
        "The hash-chained audit log: segment-NNNNNNNN.jsonl, head, checkpoint (C2SP signed note).",
    ),
    (
        "/usr/lib/trustd/lockdown.nft",
        "The static lockdown ruleset the early-boot unit loads before anything else.",
    ),
];

const TRUSTD_FILES: &[(&str, &str)] = &[
    (
        "/lib/systemd/system/trustd.service, trustd-early-boot.service",
        "The daemon, and the early-boot one-shot (lockdown, then trustd apply).",
    ),
    (
        "/usr/share/dbus-1/system.d/org.enigm.Trust1.conf",
        "The bus policy: who may own and call org.enigm.Trust1.",
    ),
    (
        "/usr/lib/systemd/catalog/trustd.catalog",
        "Explanations of trustd's journal MESSAGE_IDs (journalctl -x).",
    ),
    (
        "/usr/share/dbus-1/system-services/org.enigm.Trust1.service",
        "Bus activation: a call to org.enigm.Trust1 starts trustd.service.",
    ),
    (
        "/usr/lib/sysusers.d/trustd.conf, /usr/lib/tmpfiles.d/trustd.conf",
        "The trustd user, the trustd-admin and trustd-setup groups, and trustd's directories.",
    ),
    (
        "/var/lib/trustd/.lock, /var/log/trustd/audit/.lock",
        "Held by the one process writing the state or the audit log (trustd, or trustctl load offline).",
    ),
];

const SEE_ALSO_TRUSTD: &[(&str, &str)] = &[
    ("trustctl", "1"),
    ("trustd-launch", "1"),
    ("nft", "8"),
    ("systemd.service", "5"),
    ("journalctl", "1"),
];

fn pages() -> Vec<Page> {
    vec![
        Page {
            cmd: trustd_bin::Cli::command(),
            section: "8",
            exit_status: &[
                (
                    "0",
                    "Done: check loaded everything; apply put the last-good policy in force; run stopped on SIGTERM.",
                ),
                (
                    "1",
                    "apply: lockdown is in force instead of a policy (no usable policy, trust root or state).",
                ),
                ("2", "Usage error."),
                (
                    "3",
                    "The system failed (a file, nft, the bus). For apply: nothing could be applied and the ruleset already in the kernel (e.g. the static lockdown) stays.",
                ),
            ],
            files: &[],
            see_also: SEE_ALSO_TRUSTD,
        },
        Page {
            cmd: trustctl_bin::Cli::command(),
            section: "1",
            exit_status: &[
                ("0", "Done."),
                (
                    "1",
                    "Refused: bad input, bad signature, a damaged log, or the caller may not do this.",
                ),
                ("2", "Usage error."),
                ("3", "The system failed: a file, the bus, the daemon."),
            ],
            files: &[],
            see_also: &[("trustd", "8"), ("trustd-launch", "1"), ("busctl", "1")],
        },
        Page {
            cmd: launch_bin::Cli::command(),
            section: "1",
            exit_status: &[
                (
                    "any",
                    "Once allowed, trustd-launch becomes the app: its exit status is the app's.",
                ),
                (
                    "1",
                    "Refused by the policy, the executable's hash or confinement.",
                ),
                ("2", "Usage error."),
                ("3", "trustd unreachable, or the exec failed."),
            ],
            files: &[],
            see_also: &[("trustd", "8"), ("trustctl", "1"), ("landlock", "7")],
        },
    ]
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [cmd, out] if cmd == "docs" => docs(Path::new(out)),
        _ => bail!("usage: xtask docs OUT_DIR"),
    }
}

/// Writes the man pages and completions of every binary under `out`.
fn docs(out: &Path) -> Result<()> {
    let date = date()?;
    let man_dir = out.join("man");
    std::fs::create_dir_all(&man_dir).with_context(|| format!("mkdir {}", man_dir.display()))?;
    for page in pages() {
        let mut cmd = page.cmd.clone().disable_help_subcommand(true);
        cmd.build();
        let name = cmd.get_name().to_owned();
        write_page(&man_dir, &cmd, page.section, &date, |roff| {
            section_list(roff, "EXIT STATUS", page.exit_status);
            let mut files = DEVICE_FILES.to_vec();
            if name == "trustd" {
                files.extend_from_slice(TRUSTD_FILES);
            }
            files.extend_from_slice(page.files);
            section_list(roff, "FILES", &files);
            see_also(roff, page.see_also);
        })?;
        for sub in cmd.get_subcommands() {
            sub_pages(&man_dir, sub, &name, page.section, &date)?;
        }
        completions(out, page.cmd, &name)?;
    }
    Ok(())
}

/// One page per subcommand, recursively; each points back at the binary's page for the exit
/// status and files.
fn sub_pages(dir: &Path, cmd: &clap::Command, top: &str, section: &str, date: &str) -> Result<()> {
    if cmd.is_hide_set() {
        return Ok(());
    }
    write_page(dir, cmd, section, date, |roff| {
        roff.control("SH", ["EXIT STATUS"]);
        roff.text([roman("As for "), bold(top), roman(format!("({section})."))]);
        see_also(roff, &[(top, section)]);
    })?;
    for sub in cmd.get_subcommands() {
        sub_pages(dir, sub, top, section, date)?;
    }
    Ok(())
}

fn write_page(
    dir: &Path,
    cmd: &clap::Command,
    section: &str,
    date: &str,
    extra: impl FnOnce(&mut Roff),
) -> Result<PathBuf> {
    let man = Man::new(cmd.clone())
        .section(section)
        .date(date)
        .source(format!("trustd {}", env!("CARGO_PKG_VERSION")))
        .manual("Enigm OS");
    let path = dir.join(man.get_filename());
    let mut buf = Vec::new();
    man.render_title(&mut buf)?;
    man.render_name_section(&mut buf)?;
    man.render_synopsis_section(&mut buf)?;
    man.render_description_section(&mut buf)?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(&mut buf)?;
    }
    if cmd.has_subcommands() {
        man.render_subcommands_section(&mut buf)?;
    }
    let mut roff = Roff::new();
    extra(&mut roff);
    roff.to_writer(&mut buf)?;
    if cmd.get_version().is_some() {
        man.render_version_section(&mut buf)?;
    }
    std::fs::write(&path, buf).with_context(|| format!("write {}", path.display()))?;
    Ok(path)
}

/// A section of tagged paragraphs: the tag in bold, its text below.
fn section_list(roff: &mut Roff, title: &str, items: &[(&str, &str)]) {
    roff.control("SH", [title]);
    for (tag, text) in items {
        roff.control("TP", []);
        roff.text([bold(*tag)]);
        roff.text([roman(*text)]);
    }
}

fn see_also(roff: &mut Roff, pages: &[(&str, &str)]) {
    roff.control("SH", ["SEE ALSO"]);
    let mut line = Vec::new();
    for (i, (name, section)) in pages.iter().enumerate() {
        if i > 0 {
            line.push(roman(", "));
        }
        line.push(bold(*name));
        line.push(roman(format!("({section})")));
    }
    line.push(roman(", "));
    line.push(italic("/usr/share/doc/trustd/SECURITY.md"));
    roff.text(line);
}

/// bash: completions/bash/NAME; zsh: completions/zsh/_NAME; fish: completions/fish/NAME.fish.
fn completions(out: &Path, mut cmd: clap::Command, name: &str) -> Result<()> {
    for (shell, dir) in [
        (Shell::Bash, "bash"),
        (Shell::Zsh, "zsh"),
        (Shell::Fish, "fish"),
    ] {
        let dir = out.join("completions").join(dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        let file = match shell {
            Shell::Zsh => format!("_{name}"),
            Shell::Fish => format!("{name}.fish"),
            _ => name.to_owned(),
        };
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut cmd, name, &mut buf);
        let path = dir.join(file);
        let mut f =
            std::fs::File::create(&path).with_context(|| format!("create {}", path.display()))?;
        f.write_all(&buf)?;
    }
    Ok(())
}

/// The pages' date: `SOURCE_DATE_EPOCH` (reproducible builds), else today, as YYYY-MM-DD.
fn date() -> Result<String> {
    let secs = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(s) => s
            .trim()
            .parse::<i64>()
            .with_context(|| format!("SOURCE_DATE_EPOCH={s:?} is not a number of seconds"))?,
        Err(_) => time::OffsetDateTime::now_utc().unix_timestamp(),
    };
    let t = time::OffsetDateTime::from_unix_timestamp(secs)
        .with_context(|| format!("SOURCE_DATE_EPOCH={secs} is out of range"))?;
    Ok(format!(
        "{:04}-{:02}-{:02}",
        t.year(),
        u8::from(t.month()),
        t.day()
    ))
}
