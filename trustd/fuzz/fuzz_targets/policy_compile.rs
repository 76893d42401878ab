//! Fuzzed JSON as a policy payload: strict parse, validation, and for a valid policy the
//! effective policy under several overlays, compiled, rendered to nft JSON and applied to the
//! fake backend. Nothing may panic; a parsed policy serializes back to itself.

#![no_main]

use libfuzzer_sys::fuzz_target;
use trustd::json::parse_strict;
use trustd::policy::Policy;

fuzz_target!(|data: &[u8]| {
    let p: Policy = match parse_strict(data) {
        Ok(p) => p,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    // What trustd prints (`policy show`) reads back as the same policy.
    let text = serde_json::to_vec(&p).expect("a policy serializes");
    assert_eq!(parse_strict::<Policy>(&text).as_ref(), Ok(&p), "round trip");
    match p.validate() {
        Ok(()) => trustd_fuzz::compile_all(&p),
        Err(e) => assert!(!e.is_empty()),
    }
});
