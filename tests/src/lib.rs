//! Helpers for trustd's end-to-end tests: where the built binaries are, and running them.
//!
//! The tests in `tests/tests/` drive the real binaries (`trustctl`, `trustd`) as an admin or
//! a boot script would. Build them first: `scripts/test.sh` does (`cargo build --workspace
//! --bins`, then `cargo test --workspace`).

use std::path::PathBuf;
use std::process::{Command, Output};

/// The directory cargo put the binaries in (`target/debug` for `cargo test`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/debug/deps/<test> -> target/debug
    exe.parent()
        .and_then(|deps| deps.parent())
        .map(PathBuf::from)
        .expect("target directory")
}

/// The path of binary `name`, which must have been built.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.is_file(),
        "{} is not built: run `cargo build --workspace --bins` first (scripts/test.sh does)",
        p.display()
    );
    p
}

/// What a command printed and how it exited.
#[derive(Debug)]
pub struct Run {
    /// Exit code (-1 if killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Self {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// Run `trustctl` with `args` in directory `cwd`.
pub fn trustctl(cwd: &std::path::Path, args: &[&str]) -> Run {
    Command::new(bin("trustctl"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run trustctl")
        .into()
}

pub mod bus;
pub mod flood;
pub mod introspection;
pub mod lab;
pub mod rawbus;
pub mod swtpm;

/// A single-threaded tokio runtime for a test's bus calls.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// A child process killed (SIGKILL) and reaped when dropped, so that a failing test never
/// leaves a daemon behind.
#[derive(Debug)]
pub struct KillOnDrop(pub Option<std::process::Child>);

impl KillOnDrop {
    /// Its pid.
    pub fn id(&self) -> u32 {
        self.0.as_ref().map_or(0, std::process::Child::id)
    }

    /// Wait for it to exit.
    pub fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        match self.0.take() {
            Some(mut c) => c.wait(),
            None => Err(std::io::Error::other("already waited")),
        }
    }
}

/// A child started as the leader of its own process group (`process_group(0)`), killed
/// with its whole group when dropped: a shell pipeline's children die with it.
#[derive(Debug)]
pub struct KillGroupOnDrop(pub std::process::Child);

impl KillGroupOnDrop {
    /// Run `sh -c SCRIPT` in the network namespace `ns`, in a process group of its own,
    /// without stdin or output.
    pub fn sh_in(ns: &str, script: &str) -> Self {
        use std::os::unix::process::CommandExt;
        let child = std::process::Command::new("ip")
            .args(["netns", "exec", ns, "sh", "-c", script])
            .process_group(0)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("sh in the namespace");
        Self(child)
    }
}

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0.id())])
            .status();
        let _ = self.0.wait();
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
