//! trustd: the trust agent of Enigm OS.
//!
//! The library holds every piece of logic; the binaries in `src/bin/` are thin mains.
//! Bytes from outside enter only through [`bundle`] (size cap, signatures, strict parse),
//! state is written only through [`state`], and every transition is recorded by [`audit`].

#[macro_use]
mod listed;

pub mod audit;
pub mod bundle;
pub mod config;
pub mod dbus;
pub mod digest;
pub mod files;
pub mod freshness;
pub mod json;
pub mod launch;
pub mod paths;
pub mod policy;
pub mod posture;
pub mod report;
pub mod state;
pub mod storage;
pub mod sys;
pub mod timefmt;
pub mod tpm;

pub use paths::Paths;
pub mod daemon;
pub mod logging;
pub mod netfilter;

/// An error and its causes as one line, leaving out a cause whose text its parent already
/// includes (errors here name their cause in their own message).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !out.contains(&t) {
            out.push_str(": ");
            out.push_str(&t);
        }
        cur = c.source();
    }
    out
}
