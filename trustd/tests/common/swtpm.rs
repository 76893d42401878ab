//! A software TPM (swtpm) for the TPM tests and the TPM bench: started on two free loopback
//! ports, stopped when dropped. Never the machine's own TPM.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A software TPM on two free loopback ports (server and control), killed when dropped.
pub struct Swtpm {
    child: Option<Child>,
    port: u16,
    state: PathBuf,
}

impl Swtpm {
    pub fn start(state: &Path) -> Self {
        std::fs::create_dir_all(state).expect("swtpm state dir");
        for _ in 0..20 {
            // Two adjacent free ports; another process may take them first: then try again.
            let Ok(a) = TcpListener::bind("127.0.0.1:0") else {
                continue;
            };
            let port = a.local_addr().expect("addr").port();
            let Ok(b) = TcpListener::bind(("127.0.0.1", port.wrapping_add(1))) else {
                continue;
            };
            drop((a, b));
            let mut child = Command::new("swtpm")
                .args(["socket", "--tpm2"])
                .arg("--server")
                .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
                .arg("--ctrl")
                .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
                .arg("--tpmstate")
                .arg(format!("dir={}", state.display()))
                .args(["--flags", "not-need-init,startup-clear"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("swtpm");
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(5) {
                // Listening, and ours: a swtpm that lost the port to another process
                // exits at once, while the probe may reach that other process.
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() && {
                    std::thread::sleep(Duration::from_millis(100));
                    child.try_wait().ok().flatten().is_none()
                } {
                    return Self {
                        child: Some(child),
                        port,
                        state: state.to_owned(),
                    };
                }
                if child.try_wait().ok().flatten().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("swtpm did not start on a free port");
    }

    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// Power-cycle: stop it and start it again on the same state (a reboot: PCRs reset, the
    /// reset count goes up).
    pub fn reboot(mut self) -> Self {
        self.stop();
        let state = self.state.clone();
        Self::start(&state)
    }

    pub fn stop(&mut self) {
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
