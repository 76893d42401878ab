//! How a ruleset reaches the kernel: `nft -j -f -` (the real backend) or a recording fake for
//! unit tests of the logic around it. Chosen by the caller, never by a test-only compile switch.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use super::IntelNetlink;
use crate::sys::child::{self, ChildError};
use crate::sys::nfnl::NfSocket;

use serde_json::Value;

/// Why nft failed.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// nft could not be started (missing, not executable), did not finish within its
    /// deadline (killed and reaped), or its pipes failed.
    #[error("{0}")]
    Child(#[source] ChildError),
    /// nft was not started: an earlier nft of the same operation hung until its deadline,
    /// so this one would most likely hang too.
    #[error("{program} not run: {why}")]
    Skipped {
        /// The program.
        program: String,
        /// What happened earlier in the operation.
        why: String,
    },
    /// nft was killed by a signal before it finished (not by trustd's deadline).
    #[error("{program} was {how} before it finished{}", if stderr.is_empty() { String::new() } else { format!(": {stderr}") })]
    Died {
        /// The program.
        program: String,
        /// How it ended (`killed by signal 9 (SIGKILL)`).
        how: String,
        /// What it printed.
        stderr: String,
    },
    /// nft refused the script or the listing failed (its stderr).
    #[error("{program} exited with {code}: {stderr}")]
    Failed {
        /// The program.
        program: String,
        /// Exit code.
        code: i32,
        /// What it printed.
        stderr: String,
    },
    /// The kernel refused a netlink batch (nothing of it was committed), or a netlink
    /// exchange with nf_tables failed.
    #[error("nf_tables over netlink: {0}")]
    Netlink(String),
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
    /// A new operation (one engine command) begins: forget that an `nft` of the previous
    /// operation hung (see [`NftError::Skipped`]).
    fn begin_operation(&mut self) {}
    /// Lend out the netlink socket that carries the intel table (see
    /// [`crate::netfilter::IntelNetlink`]), if this backend has one; it is given back with
    /// [`Self::put_intel_netlink`]. Backends without one (the fake) take the `nft` JSON path.
    fn take_intel_netlink(&mut self) -> Option<IntelNetlink> {
        None
    }
    /// Give back what [`Self::take_intel_netlink`] lent.
    fn put_intel_netlink(&mut self, _nl: IntelNetlink) {}
}

/// How long one `nft` may run before it is killed, unless configured (`nft_timeout_ms`):
/// far above a 100k-entry blocklist replace (about 4 s), below the watchdog's 30 s.
pub const DEFAULT_NFT_DEADLINE: Duration = Duration::from_secs(20);

/// The real backend: the `nft` binary, run as a child with a deadline
/// ([`crate::sys::child::run`]: clean signal state, its own process group, killed and reaped
/// at the deadline).
#[derive(Debug)]
pub struct NftBackend {
    nft: PathBuf,
    prefix: Vec<String>,
    deadline: Duration,
    /// Why no further `nft` is started in this operation (one hung until its deadline).
    hung: Option<String>,
    /// The network namespace (`ip netns` name) the tables are in; `None`: this process's.
    netns: Option<String>,
    /// The intel table's netlink socket: `Some(None)` until first needed, `None` when the
    /// intel table goes through `nft` ([`Self::without_netlink`], or the socket could not
    /// be opened).
    intel: Option<Option<IntelNetlink>>,
}

impl Clone for NftBackend {
    /// A copy opens its own netlink socket when it needs one.
    fn clone(&self) -> Self {
        Self {
            nft: self.nft.clone(),
            prefix: self.prefix.clone(),
            deadline: self.deadline,
            hung: self.hung.clone(),
            netns: self.netns.clone(),
            intel: self.intel.as_ref().map(|_| None),
        }
    }
}

impl Default for NftBackend {
    fn default() -> Self {
        Self::new("nft")
    }
}

impl NftBackend {
    /// Use the `nft` at this path (a name is looked up in `PATH`), with the default deadline.
    pub fn new(nft: impl Into<PathBuf>) -> Self {
        Self {
            nft: nft.into(),
            prefix: Vec::new(),
            deadline: DEFAULT_NFT_DEADLINE,
            hung: None,
            netns: None,
            intel: Some(None),
        }
    }

    /// Put the intel table through `nft` JSON too, as before the netlink path (for
    /// comparisons).
    #[must_use]
    pub fn without_netlink(mut self) -> Self {
        self.intel = None;
        self
    }

    /// Run nft inside the named network namespace (`ip netns exec NAME nft ...`).
    pub fn in_netns(name: &str) -> Self {
        Self {
            nft: "ip".into(),
            prefix: vec!["netns".into(), "exec".into(), name.into(), "nft".into()],
            netns: Some(name.to_owned()),
            ..Self::new("ip")
        }
    }

    /// Kill every `nft` that runs longer than `deadline`.
    #[must_use]
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// The deadline of one `nft`.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// A listing as printed; `None` if what it names does not exist.
    fn list(&mut self, args: &[&str]) -> Result<Option<String>, NftError> {
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

    fn run(&mut self, args: &[&str], stdin: Option<&[u8]>) -> Result<Vec<u8>, NftError> {
        let program = self.nft.display().to_string();
        if let Some(why) = &self.hung {
            return Err(NftError::Skipped {
                program,
                why: why.clone(),
            });
        }
        let mut cmd = Command::new(&self.nft);
        cmd.args(&self.prefix).args(args);
        // Its transactions are trustd's own, not drift, until it is reaped (and a little after).
        let out = child::run(&mut cmd, stdin, self.deadline, |pid| {
            crate::sys::nft_events::OwnChild::register(pid)
        })
        .map_err(|e| {
            if matches!(e, ChildError::Timeout { .. }) {
                self.hung = Some(format!("an earlier {program} of this operation hung: {e}"));
            }
            NftError::Child(e)
        })?;
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        match out.status.code() {
            Some(0) => Ok(out.stdout),
            Some(code) => Err(NftError::Failed {
                program,
                code,
                stderr,
            }),
            None => Err(NftError::Died {
                program,
                how: child::describe(out.status),
                stderr,
            }),
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

    fn begin_operation(&mut self) {
        self.hung = None;
    }

    fn take_intel_netlink(&mut self) -> Option<IntelNetlink> {
        let slot = self.intel.as_mut()?;
        if let Some(nl) = slot.take() {
            return Some(nl);
        }
        let sock = match &self.netns {
            Some(ns) => NfSocket::open_in_netns(ns, self.deadline),
            None => NfSocket::open(self.deadline),
        };
        match sock {
            Ok(s) => Some(IntelNetlink::new(s)),
            Err(e) => {
                tracing::warn!("blocklist table through nft: no nf_tables netlink socket: {e}");
                self.intel = None;
                None
            }
        }
    }

    fn put_intel_netlink(&mut self, nl: IntelNetlink) {
        if let Some(slot) = self.intel.as_mut() {
            *slot = Some(nl);
        }
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
                program: "nft".into(),
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
