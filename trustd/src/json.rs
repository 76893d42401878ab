//! Strict JSON for signed inputs: UTF-8, no duplicate object keys, unknown fields refused.
//!
//! serde_json keeps the last of two equal keys in a map and a `Value`; for input that was
//! signed, two readers that pick different duplicates see different documents. So every
//! signed byte string is first walked once here and refused if any object repeats a key.

use std::collections::HashSet;
use std::fmt;

use serde::de::{self, Deserialize, DeserializeOwned, Deserializer, MapAccess, SeqAccess, Visitor};

/// Why a JSON document was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JsonError {
    /// The bytes are not UTF-8 (the offset of the first bad byte).
    #[error("not valid UTF-8 at byte {0}")]
    NotUtf8(usize),
    /// An object repeats a key.
    #[error("duplicate key {0:?} in a JSON object")]
    DuplicateKey(String),
    /// The JSON is malformed or does not fit the type (serde_json's message, with line and column).
    #[error("{0}")]
    Invalid(String),
}

/// Parse `bytes` into `T` after checking UTF-8 and duplicate keys.
pub fn parse_strict<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, JsonError> {
    let text = std::str::from_utf8(bytes).map_err(|e| JsonError::NotUtf8(e.valid_up_to()))?;
    check_no_duplicate_keys(text)?;
    serde_json::from_str(text).map_err(|e| JsonError::Invalid(e.to_string()))
}

/// Walk the document once and refuse any object with a repeated key.
pub fn check_no_duplicate_keys(text: &str) -> Result<(), JsonError> {
    let mut de = serde_json::Deserializer::from_str(text);
    match NoDuplicates::deserialize(&mut de).and_then(|_| de.end()) {
        Ok(()) => Ok(()),
        Err(e) => {
            let msg = e.to_string();
            match msg.strip_prefix(DUP_PREFIX) {
                Some(rest) => {
                    // serde_json appends " at line L column C"; the key is what precedes it.
                    let key = rest.rsplit_once(" at line ").map_or(rest, |(k, _)| k);
                    Err(JsonError::DuplicateKey(key.to_owned()))
                }
                None => Err(JsonError::Invalid(msg)),
            }
        }
    }
}

const DUP_PREFIX: &str = "\u{0}duplicate key: ";

struct NoDuplicates;

impl<'de> de::Deserialize<'de> for NoDuplicates {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NoDuplicatesVisitor)
    }
}

struct NoDuplicatesVisitor;

impl<'de> Visitor<'de> for NoDuplicatesVisitor {
    type Value = NoDuplicates;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(NoDuplicates)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(NoDuplicates)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(NoDuplicates)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(NoDuplicates)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(NoDuplicates)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(NoDuplicates)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<NoDuplicates>()?.is_some() {}
        Ok(NoDuplicates)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(de::Error::custom(format_args!("{DUP_PREFIX}{key}")));
            }
            map.next_value::<NoDuplicates>()?;
        }
        Ok(NoDuplicates)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_key_at_any_depth_is_refused() {
        assert_eq!(
            check_no_duplicate_keys(r#"{"a":{"b":[{"c":1,"c":2}]}}"#),
            Err(JsonError::DuplicateKey("c".into()))
        );
        assert_eq!(
            check_no_duplicate_keys(r#"{"serial":1,"serial":9}"#),
            Err(JsonError::DuplicateKey("serial".into()))
        );
    }

    #[test]
    fn escaped_spelling_of_the_same_key_is_a_duplicate() {
        assert_eq!(
            check_no_duplicate_keys(r#"{"a":1,"\u0061":2}"#),
            Err(JsonError::DuplicateKey("a".into()))
        );
    }

    #[test]
    fn distinct_keys_and_trailing_garbage() {
        assert_eq!(check_no_duplicate_keys(r#"{"a":1,"b":{"a":2}}"#), Ok(()));
        assert!(matches!(
            check_no_duplicate_keys(r#"{"a":1} x"#),
            Err(JsonError::Invalid(_))
        ));
        assert!(matches!(
            check_no_duplicate_keys(r#"{"a":"#),
            Err(JsonError::Invalid(_))
        ));
    }

    #[test]
    fn non_utf8_is_refused_with_its_offset() {
        let r: Result<serde_json::Value, _> = parse_strict(b"{\"a\":\"\xff\"}");
        assert_eq!(r.expect_err("not UTF-8"), JsonError::NotUtf8(6));
    }
}
