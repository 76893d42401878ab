//! How a ruleset reaches the kernel: `nft -j -f -` (the real backend) or a recording fake for
//! unit tests of the logic around it. Chosen by the caller, never by a test-only compile switch.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;

/// Why nft failed.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// nft could not be started.
    #[error("running {0}: {1}")]
    Spawn(String, #[source] std::io::Error),
    /// nft refused the script or the listing failed (its stderr).
    #[error("nft exited with {code}: {stderr}")]
    Failed {
        /// Exit code.
        code: i32,
        /// What it printed.
        stderr: String,
    },
    /// nft printed something that is not JSON.
    #[error("nft printed invalid JSON: {0}")]
    Output(String),
}

/// Applies scripts and lists tables.
pub trait Backend: Send {
    /// Run an nft JSON script (text) as one transaction.
    fn apply(&mut self, script: &str) -> Result<(), NftError>;
    /// `nft -j list table inet NAME` as printed; `None` if the table does not exist.
    fn list_table(&mut self, name: &str) -> Result<Option<String>, NftError>;
    /// `nft -j list chain inet TABLE CHAIN` as printed (rules, no set elements); `None` if
    /// the chain does not exist.
    fn list_chain(&mut self, table: &str, chain: &str) -> Result<Option<String>, NftError>;
}

/// The real backend: the `nft` binary.
#[derive(Debug, Clone)]
pub struct NftBackend {
    nft: PathBuf,
    prefix: Vec<String>,
}

impl Default for NftBackend {
    fn default() -> Self {
        Self {
            nft: "nft".into(),
            prefix: Vec::new(),
        }
    }
}

impl NftBackend {
    /// Use the `nft` at this path.
    pub fn new(nft: impl Into<PathBuf>) -> Self {
        Self {
            nft: nft.into(),
            prefix: Vec::new(),
        }
    }

    /// Run nft inside the named network namespace (`ip netns exec NAME nft ...`).
    pub fn in_netns(name: &str) -> Self {
        Self {
            nft: "ip".into(),
            prefix: vec!["netns".into(), "exec".into(), name.into(), "nft".into()],
        }
    }

    /// A listing as printed; `None` if what it names does not exist.
    fn list(&self, args: &[&str]) -> Result<Option<String>, NftError> {
        match self.run(args, None) {
            Ok(out) => String::from_utf8(out)
                .map(Some)
                .map_err(|e| NftError::Output(e.to_string())),
            Err(NftError::Failed { stderr, .. })
                if stderr.contains("No such file or directory") =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn run(&self, args: &[&str], stdin: Option<&[u8]>) -> Result<Vec<u8>, NftError> {
        let name = self.nft.display().to_string();
        let mut child = Command::new(&self.nft)
            .args(&self.prefix)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| NftError::Spawn(name.clone(), e))?;
        // Its transactions are trustd's own, not drift, until it is reaped (and a little after).
        let _own = crate::sys::nft_events::OwnChild::register(child.id());
        if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(data)
                .map_err(|e| NftError::Spawn(name.clone(), e))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| NftError::Spawn(name, e))?;
        if out.status.success() {
            Ok(out.stdout)
        } else {
            Err(NftError::Failed {
                code: out.status.code().unwrap_or(-1),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            })
        }
    }
}

impl Backend for NftBackend {
    fn list_chain(&mut self, table: &str, chain: &str) -> Result<Option<String>, NftError> {
        self.list(&["-j", "list", "chain", "inet", table, chain])
    }

    fn apply(&mut self, script: &str) -> Result<(), NftError> {
        self.run(&["-j", "-f", "-"], Some(script.as_bytes()))
            .map(|_| ())
    }

    fn list_table(&mut self, name: &str) -> Result<Option<String>, NftError> {
        self.list(&["-j", "list", "table", "inet", name])
    }
}

/// A fake that records every script and lists back the last one applied (as the kernel
/// would, minus handles). `fail_next` makes the next apply fail as nft would.
#[derive(Debug, Default)]
pub struct RecordingBackend {
    /// Every script applied, in order.
    pub applied: Vec<Value>,
    /// Make the next apply fail.
    pub fail_next: bool,
    table: Option<Vec<Value>>,
}

impl RecordingBackend {
    /// Replace what the fake "kernel" holds (to simulate someone editing the table).
    pub fn set_table(&mut self, objects: Option<Vec<Value>>) {
        self.table = objects;
    }
}

impl Backend for RecordingBackend {
    fn list_chain(&mut self, _table: &str, chain: &str) -> Result<Option<String>, NftError> {
        Ok(self.table.as_ref().map(|objs| {
            let items: Vec<&Value> = objs
                .iter()
                .filter(|o| o.get("rule").is_some_and(|r| r["chain"] == chain))
                .collect();
            serde_json::json!({ "nftables": items }).to_string()
        }))
    }

    fn apply(&mut self, script: &str) -> Result<(), NftError> {
        let script: Value =
            serde_json::from_str(script).map_err(|e| NftError::Output(e.to_string()))?;
        if std::mem::take(&mut self.fail_next) {
            return Err(NftError::Failed {
                code: 1,
                stderr: "Error: Could not process rule: injected failure".into(),
            });
        }
        self.applied.push(script.clone());
        let adds: Vec<Value> = script["nftables"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c.get("add").cloned())
            .filter(|o| o.get("table").is_none())
            .collect();
        self.table = Some(adds);
        Ok(())
    }

    fn list_table(&mut self, _name: &str) -> Result<Option<String>, NftError> {
        Ok(self
            .table
            .clone()
            .map(|objs| serde_json::json!({ "nftables": objs }).to_string()))
    }
}
