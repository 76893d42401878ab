//! The intel feed payload, schema `enigm.intel/v1`: categories of blocked addresses.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Cidr, is_valid_name};
use crate::timefmt::Timestamp;

/// A signed blocklist feed. Addresses are never echoed to posture or audit, only counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntelFeed {
    /// Always `enigm.intel/v1`.
    pub schema: String,
    /// Monotonic per signer.
    pub serial: u64,
    /// When it was issued.
    pub issued_at: Timestamp,
    /// After this a new feed is refused; an installed one stays in force, stale in posture.
    pub expires_at: Timestamp,
    /// Category name to addresses and prefixes.
    pub categories: BTreeMap<String, Vec<Cidr>>,
}

impl IntelFeed {
    /// Category names must be valid names.
    pub fn validate(&self) -> Result<(), String> {
        for name in self.categories.keys() {
            if !is_valid_name(name) {
                return Err(format!("intel category {name:?} is not a valid name"));
            }
        }
        Ok(())
    }

    /// Entries per category (what posture and audit may show).
    pub fn counts(&self) -> BTreeMap<String, usize> {
        self.categories
            .iter()
            .map(|(k, v)| (k.clone(), v.len()))
            .collect()
    }
}
