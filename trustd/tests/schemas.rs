//! The published JSON Schemas and trustd's own parser accept exactly the same examples.
//!
//! An admin tool that validates with `policy-schemas/v1` must never produce a document that
//! trustd then refuses, nor accept one trustd would refuse. Every example under
//! `examples/valid` must pass both; every one under `examples/invalid` must fail both.

use std::path::{Path, PathBuf};

use trustd::bundle::{Envelope, Payload, TrustRoot};
use trustd::json::parse_strict;
use trustd::policy::{IntelFeed, LifecycleCommand, Policy};

fn schemas_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policy-schemas/v1")
}

fn rust_accepts_payload<P: Payload>(bytes: &[u8]) -> Result<(), String> {
    let p: P = parse_strict(bytes).map_err(|e| e.to_string())?;
    let v: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if v["schema"] != P::SCHEMA {
        return Err(format!("schema is not {}", P::SCHEMA));
    }
    if p.issued_at() > p.expires_at() {
        return Err("issued_at after expires_at".into());
    }
    p.validate()
}

fn rust_accepts(kind: &str, bytes: &[u8]) -> Result<(), String> {
    match kind {
        "policy" => rust_accepts_payload::<Policy>(bytes),
        "intel" => rust_accepts_payload::<IntelFeed>(bytes),
        "command" => rust_accepts_payload::<LifecycleCommand>(bytes),
        "trust-root" => rust_accepts_payload::<TrustRoot>(bytes),
        "envelope" => parse_strict::<Envelope>(bytes)
            .map(|_| ())
            .map_err(|e| e.to_string()),
        other => panic!("example of unknown kind {other}"),
    }
}

fn kind_of(name: &str) -> &'static str {
    ["trust-root", "policy", "intel", "command", "envelope"]
        .into_iter()
        .find(|k| name.starts_with(&format!("{k}-")))
        .unwrap_or_else(|| panic!("{name}: not named <kind>-<what>.json"))
}

fn validator(kind: &str) -> jsonschema::Validator {
    let path = schemas_dir().join(format!("{kind}.schema.json"));
    let schema: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("schema")).expect("schema JSON");
    jsonschema::draft202012::new(&schema).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn examples(which: &str) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<_> = std::fs::read_dir(schemas_dir().join("examples").join(which))
        .expect("examples dir")
        .map(|e| {
            let p = e.expect("entry").path();
            let name = p
                .file_name()
                .and_then(|n| n.to_str())
                .expect("name")
                .to_owned();
            (name, std::fs::read(&p).expect("read"))
        })
        .collect();
    out.sort();
    out
}

#[test]
fn valid_examples_pass_the_schema_and_the_parser() {
    let ex = examples("valid");
    assert!(ex.len() >= 8);
    for (name, bytes) in ex {
        let kind = kind_of(&name);
        let value: serde_json::Value = serde_json::from_slice(&bytes).expect("JSON");
        let errors: Vec<String> = validator(kind)
            .iter_errors(&value)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{name}: schema refuses: {errors:?}");
        if let Err(e) = rust_accepts(kind, &bytes) {
            panic!("{name}: trustd refuses: {e}");
        }
    }
}

#[test]
fn invalid_examples_fail_the_schema_and_the_parser() {
    let ex = examples("invalid");
    assert!(ex.len() >= 20, "only {} invalid examples", ex.len());
    for (name, bytes) in ex {
        let kind = kind_of(&name);
        let value: serde_json::Value = serde_json::from_slice(&bytes).expect("JSON");
        assert!(
            !validator(kind).is_valid(&value),
            "{name}: the schema accepts it"
        );
        assert!(
            rust_accepts(kind, &bytes).is_err(),
            "{name}: trustd accepts it"
        );
    }
}

#[test]
fn the_example_envelope_verifies_against_the_example_trust_root() {
    let dir = schemas_dir().join("examples/valid");
    let root: TrustRoot =
        parse_strict(&std::fs::read(dir.join("trust-root-basic.json")).expect("root"))
            .expect("root");
    let env = std::fs::read(dir.join("envelope-basic.json")).expect("envelope");
    let now = trustd::timefmt::Timestamp::parse("2026-11-24T00:00:00Z").expect("time");
    let v = trustd::bundle::verify::<Policy>(&env, &root, now, 0).expect("verifies");
    assert_eq!(v.payload().serial, 1);
}
