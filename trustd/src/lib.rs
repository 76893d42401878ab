//! trustd: the trust agent of Enigm OS.
//!
//! The library holds every piece of logic; the binaries in `src/bin/` are thin mains.
//! Bytes from outside enter only through [`bundle`] (size cap, signatures, strict parse),
//! state is written only through [`state`], and every transition is recorded by [`audit`].

pub mod audit;
pub mod bundle;
pub mod json;
pub mod paths;
pub mod policy;
pub mod state;
pub mod sys;
pub mod timefmt;

pub use paths::Paths;
pub mod daemon;
pub mod logging;
pub mod netfilter;
