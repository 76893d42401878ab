//! A software TPM (swtpm) for one test: started inside a network namespace the test made
//! (or on the host's loopback), on its own state directory, and killed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running swtpm.
#[derive(Debug)]
pub struct Swtpm {
    child: Option<Child>,
    netns: Option<String>,
    /// Its server port on 127.0.0.1 (the control port is the next one).
    pub port: u16,
    state: PathBuf,
}

impl Swtpm {
    /// Start swtpm on `port` in `netns` (whose loopback only this test uses), keeping its
    /// state in `state`.
    pub fn start_in(netns: &str, port: u16, state: &Path) -> Self {
        let mut s = Self {
            child: None,
            netns: Some(netns.to_owned()),
            port,
            state: state.to_owned(),
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        std::fs::create_dir_all(&self.state).expect("swtpm state dir");
        let mut c = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "swtpm"]);
                c
            }
            None => Command::new("swtpm"),
        };
        c.args(["socket", "--tpm2", "--server"])
            .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", self.port))
            .arg("--ctrl")
            .arg(format!(
                "type=tcp,port={},bindaddr=127.0.0.1",
                self.port + 1
            ))
            .arg("--tpmstate")
            .arg(format!("dir={}", self.state.display()))
            .args(["--flags", "not-need-init,startup-clear"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.child = Some(c.spawn().expect("swtpm"));
        // Ready when its state file exists and a moment has passed for the listener.
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if self.state.join("tpm2-00.permall").exists() {
                std::thread::sleep(Duration::from_millis(100));
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(300));
    }

    /// The TCTI trustd takes in trustd.json.
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// Power-cycle it on the same state (a reboot: PCRs reset, the reset count goes up).
    pub fn reboot(&mut self) {
        self.stop();
        self.spawn();
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        self.stop();
    }
}
