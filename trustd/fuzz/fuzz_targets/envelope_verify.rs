//! Arbitrary bytes as a DSSE envelope, through every verifier, against a fixed trust root.
//! Nothing may panic; an input accepted as one payload type is refused as every other.

#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use trustd::bundle::{
    Payload, TrustRoot, Verified, VerifyError, sha256_hex, verify, verify_installed,
    verify_rotation,
};
use trustd::policy::{IntelFeed, LifecycleCommand, Policy};

static ROOT: LazyLock<TrustRoot> = LazyLock::new(trustd_fuzz::trust_root);

/// Whether it was accepted; an acceptance is checked for what `Verified` promises.
fn check<P: Payload>(data: &[u8], r: Result<Verified<P>, VerifyError>, installed: u64) -> bool {
    match r {
        Ok(v) => {
            assert_eq!(v.envelope_bytes(), data);
            assert_eq!(v.digest(), sha256_hex(data));
            assert!(!v.signers().is_empty());
            assert_eq!(v.payload().validate(), Ok(()));
            assert!(v.payload().issued_at() <= v.payload().expires_at());
            assert!(v.payload().serial() > installed);
            true
        }
        Err(e) => {
            let _ = (e.to_string(), e.code());
            false
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let root = &*ROOT;
    let now = trustd_fuzz::now();
    let accepted = [
        check(data, verify::<Policy>(data, root, now, 0), 0),
        check(data, verify::<IntelFeed>(data, root, now, 0), 0),
        check(data, verify::<LifecycleCommand>(data, root, now, 0), 0),
        check(data, verify_rotation(data, root, now), root.serial),
    ];
    assert!(
        accepted.iter().filter(|a| **a).count() <= 1,
        "one envelope accepted as two payload types"
    );
    // The re-load of a last-good input skips expiry and serial, nothing else.
    let installed = verify_installed::<Policy>(data, root);
    if accepted[0] {
        assert!(
            installed.is_ok(),
            "verify accepted what verify_installed refused"
        );
    }
    if let Err(e) = installed {
        let _ = e.to_string();
    }
    assert!(
        verify::<Policy>(data, root, now, u64::MAX).is_err(),
        "no serial is above u64::MAX"
    );
});
