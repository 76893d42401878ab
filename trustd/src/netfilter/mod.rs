//! Network enforcement: a pure ruleset model compiled from the effective policy, rendered to
//! nft JSON, applied as one transaction that replaces trustd's table, and read back.
//!
//! Owns the nftables table `inet trustd` and touches no other. Nothing here removes the table:
//! a failed apply leaves the previous ruleset in force, and the caller decides what next.

mod backend;
mod compile;
mod intel;
mod intel_netlink;
mod model;
mod render;

pub use backend::{Backend, DEFAULT_NFT_DEADLINE, NftBackend, NftError, RecordingBackend};
pub use compile::{
    INPUT_REPLY, LAN_PREFIXES, LOOPBACK_PREFIXES, OUTPUT_REPLY, Protected, ProtectedKind, compile,
    protected,
};
pub use intel::{
    INTEL_TABLE, IntelRuleset, TEMPLATE_TABLE, apply_intel, check_intel, compile_intel,
    intel_chains_intact, intel_names_held, intel_quick_intact, intel_structure_digest,
    refill_intel, render_intel, render_intel_refill, update_exemptions, update_intel,
    verify_intel_listing,
};
pub use intel_netlink::IntelNetlink;
pub use model::{Action, Base, Chain, FLOW_MARK_MASK, L4, Match, Rule, Ruleset};
pub use render::{canonical_digest, flow_generation, listing_digest, render};

/// The table trustd owns.
pub const TABLE: &str = "trustd";

/// Why enforcement could not be put in place or confirmed.
#[derive(Debug, thiserror::Error)]
pub enum EnforceError {
    /// nft refused or could not run; the previous ruleset stays in force.
    #[error("applying the ruleset failed: {0}")]
    Apply(#[source] NftError),
    /// Reading the table back failed.
    #[error("reading the ruleset back failed: {0}")]
    ReadBack(#[source] NftError),
    /// The kernel holds something other than what was compiled.
    #[error("the kernel holds ruleset {found}, not the compiled {expected}")]
    Mismatch {
        /// Digest of the compiled ruleset.
        expected: String,
        /// Digest of what the kernel holds (`absent` if the table is gone).
        found: String,
    },
}

/// Replace trustd's table with `rs` in one transaction, then read it back and compare.
/// Returns the ruleset digest.
pub fn apply(backend: &mut dyn Backend, rs: &Ruleset) -> Result<String, EnforceError> {
    backend
        .apply(&render(rs).to_string())
        .map_err(EnforceError::Apply)?;
    verify(backend, rs)
}

/// Compare what the kernel holds with `rs`; `Ok(digest)` if they match.
pub fn verify(backend: &mut dyn Backend, rs: &Ruleset) -> Result<String, EnforceError> {
    let expected = canonical_digest(rs);
    let found = match backend.list_table(TABLE).map_err(EnforceError::ReadBack)? {
        Some(text) => match serde_json::from_str(&text) {
            Ok(listing) => listing_digest(&listing),
            Err(e) => return Err(EnforceError::ReadBack(NftError::Output(e.to_string()))),
        },
        None => "absent".to_owned(),
    };
    if found == expected {
        Ok(expected)
    } else {
        Err(EnforceError::Mismatch { expected, found })
    }
}
