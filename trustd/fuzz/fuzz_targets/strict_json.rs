//! `parse_strict::<Value>` on arbitrary bytes: UTF-8 and duplicate-key checks. Nothing may
//! panic, and it agrees with serde_json wherever it accepts.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use trustd::json::{JsonError, check_no_duplicate_keys, parse_strict};

fuzz_target!(|data: &[u8]| {
    let strict = parse_strict::<Value>(data);
    let plain = serde_json::from_slice::<Value>(data);
    match &strict {
        Ok(v) => {
            // Accepted: serde_json reads the same value, and it has no duplicate key.
            assert_eq!(plain.as_ref().ok(), Some(v), "strict and plain disagree");
            let text = serde_json::to_string(v).expect("serializes");
            assert_eq!(check_no_duplicate_keys(&text), Ok(()));
        }
        Err(JsonError::NotUtf8(n)) => {
            let e = std::str::from_utf8(data).expect_err("refused as not UTF-8");
            assert_eq!(e.valid_up_to(), *n);
        }
        Err(JsonError::DuplicateKey(_)) => {}
        Err(JsonError::Invalid(_)) => {
            // Refused as malformed: serde_json refuses it too.
            assert!(plain.is_err(), "valid JSON without duplicates refused");
        }
    }
    if let Err(e) = &strict {
        let _ = e.to_string();
    }
});
