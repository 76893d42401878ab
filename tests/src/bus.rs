//! A private `dbus-daemon` for tests: its own config and socket in a temp dir, never the
//! host's bus. The config is the system bus's default policy plus the project's shipped
//! `dbus/org.enigm.Trust1.conf` (with the role groups mapped to test gids), or, to test
//! trustd's own checks alone, a policy that lets everyone call everything.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::KillOnDrop;

/// The group that stands for `trustd-admin` in tests: one that every Debian system has
/// (base-passwd) and no user is a member of, since dbus-daemon only accepts groups that
/// exist. Tests never add groups to the host.
pub const ADMIN_GROUP: &str = "src";
/// The group that stands for `trustd-setup` in tests (base-passwd, no members).
pub const SETUP_GROUP: &str = "games";

/// The gid of a test group.
pub fn gid(group: &str) -> u32 {
    trustd::sys::group_id(group).unwrap_or_else(|| panic!("group {group} is not on this system"))
}

/// Which policy the bus enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusPolicy {
    /// The shipped policy file, groups mapped to [`ADMIN_GROUP`] and [`SETUP_GROUP`].
    Shipped,
    /// Everyone may own `org.enigm.Trust1` and call anything: only trustd's checks remain.
    Open,
}

/// The shipped bus policy file.
pub fn shipped_policy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../dbus/org.enigm.Trust1.conf")
}

/// `dbus/private-bus.conf.in`: the system bus's default policy, then `extra`.
fn config(socket: &Path, extra: &str) -> String {
    let template = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dbus/private-bus.conf.in");
    std::fs::read_to_string(template)
        .expect("dbus/private-bus.conf.in")
        .replace("@SOCKET@", &socket.display().to_string())
        .replace("@EXTRA@", extra)
}

/// A running private bus.
#[derive(Debug)]
pub struct Bus {
    /// The address clients connect to (`unix:path=...`).
    pub address: String,
    child: KillOnDrop,
    _dir: tempfile::TempDir,
}

impl Bus {
    /// Kill the bus daemon (every connection to it is lost).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The bus daemon's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Start a bus with `policy`; `extra` is more config (e.g. for a benchmark's service).
    pub fn start(policy: BusPolicy, extra: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("trustd-bus")
            .tempdir()
            .expect("tempdir");
        // Clients run as other users: they must reach the socket.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let socket = dir.path().join("bus");
        let ours = match policy {
            BusPolicy::Shipped => {
                let text = std::fs::read_to_string(shipped_policy()).expect("shipped policy");
                let mapped = text
                    .replace(
                        r#"group="trustd-admin""#,
                        &format!(r#"group="{ADMIN_GROUP}""#),
                    )
                    .replace(
                        r#"group="trustd-setup""#,
                        &format!(r#"group="{SETUP_GROUP}""#),
                    );
                let inc = dir.path().join("org.enigm.Trust1.conf");
                std::fs::write(&inc, mapped).expect("write policy");
                format!("<include>{}</include>", inc.display())
            }
            BusPolicy::Open => r#"<policy context="default">
    <allow own="org.enigm.Trust1"/>
    <allow send_destination="org.enigm.Trust1"/>
  </policy>"#
                .to_owned(),
        };
        let conf = dir.path().join("bus.conf");
        std::fs::write(&conf, config(&socket, &format!("{ours}\n{extra}"))).expect("write conf");
        let mut child = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", conf.display()))
            .args(["--nofork", "--nopidfile", "--print-address=1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start dbus-daemon");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("bus address");
        assert!(line.starts_with("unix:"), "dbus-daemon said {line:?}");
        Self {
            address: format!("unix:path={}", socket.display()),
            child: KillOnDrop(Some(child)),
            _dir: dir,
        }
    }
}
