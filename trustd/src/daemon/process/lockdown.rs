//! The lockdown trustd puts in place when it cannot trust anything: no trust root, no state
//! (`trustd apply` and `trustd run` when the device's files do not open).
//!
//! It is the effective plan of no policy with privacy on and the lifecycle unknown: no
//! bootstrap allowlist, since no policy can be trusted. See docs/SECURITY.md
//! ("The service").

use std::collections::BTreeSet;

use crate::netfilter::{Backend, EnforceError, Ruleset};
use crate::policy::{Effective, Overlay};
use crate::state::Lifecycle;

/// The effective plan without a policy or state: lockdown, privacy on, no completed steps,
/// lifecycle unknown.
pub fn plan() -> Effective {
    let none = BTreeSet::new();
    crate::policy::effective(
        None,
        Overlay {
            privacy: true,
            completed_steps: &none,
            lifecycle: Lifecycle::Unknown,
        },
    )
}

/// The compiled ruleset of [`plan`].
pub fn ruleset() -> Ruleset {
    crate::netfilter::compile(&plan())
}

/// Put [`ruleset`] into the kernel through `backend` and confirm it; returns its digest.
///
/// # Errors
/// nft failed or the kernel does not hold the ruleset afterwards; what the kernel held
/// before stays (an nft transaction either applies whole or not at all).
pub fn apply(backend: &mut dyn Backend) -> Result<String, EnforceError> {
    crate::netfilter::apply(backend, &ruleset())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netfilter::RecordingBackend;

    #[test]
    fn lockdown_without_state_has_no_allowlist_and_is_confirmed() {
        let e = plan();
        assert_eq!(e.mode_name(), "lockdown");
        let mut b = RecordingBackend::default();
        let digest = apply(&mut b).expect("lockdown applies");
        assert_eq!(b.applied.len(), 1, "one transaction");
        // What the kernel holds afterwards is what was compiled (the verify step read it back).
        assert_eq!(
            crate::netfilter::verify(&mut b, &ruleset()).expect("the kernel holds it"),
            digest
        );
        // Deterministic: the same digest every time (posture and audit name it).
        assert_eq!(
            apply(&mut RecordingBackend::default()).expect("lockdown applies"),
            digest
        );
    }

    #[test]
    fn lockdown_that_nft_refuses_is_an_error_not_a_silent_success() {
        let mut b = RecordingBackend::default();
        b.fail_next = true;
        assert!(apply(&mut b).is_err());
        // Nothing half applied in the fake kernel: the table is not there.
        assert!(crate::netfilter::verify(&mut b, &ruleset()).is_err());
    }
}
