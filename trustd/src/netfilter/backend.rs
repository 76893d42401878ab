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
    /// Whether the intel table is made owned by trustd's socket (see
    /// [`Self::with_intel_table_owned`]).
    own_intel: bool,
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
            own_intel: self.own_intel,
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
            own_intel: true,
        }
    }

    /// Whether the intel table is owned by trustd's netlink socket (`NFT_TABLE_F_OWNER`
    /// and `NFT_TABLE_F_PERSIST`, Linux 6.9; the default): while trustd runs no other
    /// process, root's `nft` included, can change or delete it, and `nft flush ruleset`
    /// passes it by; when trustd exits it stays in force, unowned, until the next trustd
    /// adopts it. `false`: unowned, as on older kernels (others' changes are seen and
    /// repaired, not prevented).
    #[must_use]
    pub fn with_intel_table_owned(mut self, owned: bool) -> Self {
        self.own_intel = owned;
        self
    }

    /// Put the intel table through `nft` JSON too, as before the netlink path (for
    /// comparisons).
    #[must_use]
    pub fn without_netlink(mut self) -> Self {
        crate::sys::nft_events::children_write_intel();
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
            Ok(s) if self.own_intel => Some(IntelNetlink::new(s)),
            Ok(s) => Some(IntelNetlink::new(s).unowned()),
            Err(e) => {
                tracing::warn!("blocklist table through nft: no nf_tables netlink socket: {e}");
                crate::sys::nft_events::children_write_intel();
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

/// A fake that records every script and keeps each table as the scripts leave it (as the
/// kernel would, minus handles): `add` of a table, a chain, a rule, a set, a counter or set
/// elements; `delete` of a table or set elements; `flush` of a chain or a set. A script is one
/// transaction: a failed one changes nothing. `fail_next` makes the next apply fail as nft
/// would; `fail_applies` the next N in a row.
#[derive(Debug, Default)]
pub struct RecordingBackend {
    /// Every script applied, in order.
    pub applied: Vec<Value>,
    /// Make the next apply fail.
    pub fail_next: bool,
    /// Make this many applies in a row fail (after `fail_next`'s, if set), counted down by
    /// each; a failed apply changes nothing in the fake "kernel".
    pub fail_applies: u32,
    /// Each table's objects (no table object), by table name.
    tables: std::collections::BTreeMap<String, Vec<Value>>,
}

impl RecordingBackend {
    /// Replace what the fake "kernel" holds in trustd's policy table (`inet trustd`; `None`:
    /// the table is deleted), to simulate someone editing it.
    pub fn set_table(&mut self, objects: Option<Vec<Value>>) {
        self.set_named_table(super::TABLE, objects);
    }

    /// Replace what the fake "kernel" holds in the table `name` (`None`: deleted).
    pub fn set_named_table(&mut self, name: &str, objects: Option<Vec<Value>>) {
        match objects {
            Some(o) => self.tables.insert(name.to_owned(), o),
            None => self.tables.remove(name),
        };
    }
}

/// The error nft gives for a script naming what does not exist.
fn no_such(what: &str) -> NftError {
    NftError::Failed {
        program: "nft".into(),
        code: 1,
        stderr: format!("Error: Could not process rule: No such file or directory ({what})"),
    }
}

/// The table an object (`{"rule": {"table": ...}}`) or a body names.
fn table_of(body: &Value) -> Option<&str> {
    body.get("table").and_then(Value::as_str)
}

/// Carry out one script command on `tables`.
fn fake_command(
    tables: &mut std::collections::BTreeMap<String, Vec<Value>>,
    cmd: &Value,
) -> Result<(), NftError> {
    let (op, obj) = match cmd.as_object().and_then(|m| m.iter().next()) {
        Some((op, obj)) => (op.as_str(), obj),
        None => return Err(NftError::Output(format!("not a command: {cmd}"))),
    };
    let (kind, body) = match obj.as_object().and_then(|m| m.iter().next()) {
        Some((k, b)) => (k.as_str(), b),
        None => return Err(NftError::Output(format!("not an object: {obj}"))),
    };
    let name = body.get("name").and_then(Value::as_str).unwrap_or_default();
    let named = |o: &Value, k: &str| {
        o.get(k)
            .is_some_and(|b| b.get("name").and_then(Value::as_str) == Some(name))
    };
    match (op, kind) {
        ("add", "table") => {
            tables.entry(name.to_owned()).or_default();
        }
        ("delete", "table") => {
            tables.remove(name).ok_or_else(|| no_such(name))?;
        }
        ("add" | "delete", "element") | ("flush", "set") => {
            let t = table_of(body).unwrap_or_default();
            let set = tables
                .get_mut(t)
                .and_then(|objs| objs.iter_mut().find(|o| named(o, "set")))
                .and_then(|o| o.get_mut("set"))
                .ok_or_else(|| no_such(name))?;
            let given = body["elem"].as_array().cloned().unwrap_or_default();
            let held = set
                .as_object_mut()
                .ok_or_else(|| no_such(name))?
                .entry("elem")
                .or_insert_with(|| Value::Array(Vec::new()));
            let held = held.as_array_mut().ok_or_else(|| no_such(name))?;
            match op {
                "add" => held.extend(given),
                "delete" => held.retain(|e| !given.contains(e)),
                _ => held.clear(),
            }
        }
        ("flush", "chain") => {
            let t = table_of(body).unwrap_or_default();
            let objs = tables.get_mut(t).ok_or_else(|| no_such(t))?;
            objs.retain(|o| !o.get("rule").is_some_and(|r| r["chain"] == name));
        }
        ("add", _) => {
            let t = table_of(body).unwrap_or_default();
            tables
                .get_mut(t)
                .ok_or_else(|| no_such(t))?
                .push(obj.clone());
        }
        _ => {
            return Err(NftError::Output(format!(
                "the fake does not know {op} {kind}"
            )));
        }
    }
    Ok(())
}

impl Backend for RecordingBackend {
    fn list_chain(&mut self, table: &str, chain: &str) -> Result<Option<String>, NftError> {
        let Some(objs) = self.tables.get(table) else {
            return Ok(None);
        };
        if !objs
            .iter()
            .any(|o| o.get("chain").is_some_and(|c| c["name"] == chain))
        {
            return Ok(None);
        }
        let items: Vec<&Value> = objs
            .iter()
            .filter(|o| o.get("rule").is_some_and(|r| r["chain"] == chain))
            .collect();
        Ok(Some(serde_json::json!({ "nftables": items }).to_string()))
    }

    fn apply(&mut self, script: &str) -> Result<(), NftError> {
        let script: Value =
            serde_json::from_str(script).map_err(|e| NftError::Output(e.to_string()))?;
        let fail = if std::mem::take(&mut self.fail_next) {
            true
        } else if self.fail_applies > 0 {
            self.fail_applies -= 1;
            true
        } else {
            false
        };
        if fail {
            return Err(NftError::Failed {
                program: "nft".into(),
                code: 1,
                stderr: "Error: Could not process rule: injected failure".into(),
            });
        }
        let mut tables = self.tables.clone();
        for cmd in script["nftables"].as_array().into_iter().flatten() {
            fake_command(&mut tables, cmd)?;
        }
        self.tables = tables;
        self.applied.push(script);
        Ok(())
    }

    fn list_table(&mut self, name: &str) -> Result<Option<String>, NftError> {
        Ok(self
            .tables
            .get(name)
            .map(|objs| serde_json::json!({ "nftables": objs }).to_string()))
    }
}
