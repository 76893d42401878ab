//! What every command shares: the refusal (exit 1) and the output rules.

use std::path::Path;

use anyhow::{Context, Result};
use serde_json::json;

/// An outcome that is the input's fault (exit 1), as opposed to the system's (exit 3).
#[derive(Debug)]
pub(crate) struct Refused(pub(crate) String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// A refusal (exit 1) as an error.
pub(crate) fn refused(reason: String) -> anyhow::Error {
    Refused(reason).into()
}

/// Write a command's document to `out` (stdout if None). With --json and a file, one result
/// object names the file; with --json and no file, the document goes inside the one result
/// line (`{"ok":true,"document":...}`; `jq .document` gives it back), so that stdout stays one
/// JSON object per line.
pub(crate) fn write_out(j: bool, out: Option<&Path>, bytes: &[u8]) -> Result<()> {
    match out {
        Some(p) => {
            std::fs::write(p, bytes).with_context(|| format!("writing {}", p.display()))?;
            if j {
                out!("{}", json!({"ok": true, "out": p.display().to_string()}));
            }
            Ok(())
        }
        None if j => {
            let doc = serde_json::from_slice::<serde_json::Value>(bytes).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(bytes).into_owned())
            });
            out!("{}", json!({"ok": true, "document": doc}));
            Ok(())
        }
        None => {
            use std::io::Write;
            std::io::stdout().write_all(bytes).context("writing stdout")
        }
    }
}

/// The most any file trustctl reads may hold: the largest input it takes, a blocklist
/// envelope. Each input's own cap (a policy envelope 1 MiB, a checkpoint 16 KiB, a report
/// 4 MiB) is checked after, by its verifier. A larger file (or `/dev/zero`, a fifo that
/// never ends) is refused without being read past the cap.
pub(crate) const MAX_INPUT_BYTES: usize = trustd::bundle::MAX_INTEL_ENVELOPE_BYTES;

pub(crate) fn read(path: &Path) -> Result<Vec<u8>> {
    trustd::files::capped::read_capped(path, MAX_INPUT_BYTES).map_err(|e| {
        if e.kind() == std::io::ErrorKind::FileTooLarge {
            refused(format!("{}: {e}", path.display()))
        } else {
            anyhow::Error::new(e).context(format!("reading {}", path.display()))
        }
    })
}

pub(crate) fn print(json_out: bool, value: serde_json::Value, text: &str) {
    if json_out {
        out!("{value}");
    } else {
        out!("{text}");
    }
}
