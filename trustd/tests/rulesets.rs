//! The compiled rulesets of every mode: snapshots of their nft JSON (reviewable diffs when
//! the rules change), the apply/read-back logic against the recording fake, and, as root,
//! each ruleset loaded into a real kernel in a fresh network namespace and read back to the
//! same digest.

mod common;

use std::collections::BTreeSet;

use common::*;
use trustd::netfilter::{
    self, EnforceError, NftBackend, RecordingBackend, Ruleset, canonical_digest, compile, render,
};
use trustd::policy::{Effective, Overlay, Policy, effective};
use trustd::state::Lifecycle;

fn plan(mode: &str, privacy: bool, lifecycle: Lifecycle) -> Effective {
    let p: Policy = serde_json::from_value(full_policy(mode, 1)).expect("policy");
    p.validate().expect("valid");
    let steps = BTreeSet::new();
    effective(
        Some(&p),
        Overlay {
            privacy,
            completed_steps: &steps,
            lifecycle,
        },
    )
}

fn all_rulesets() -> Vec<(&'static str, Ruleset)> {
    let none = BTreeSet::new();
    vec![
        (
            "direct",
            compile(&plan("direct", false, Lifecycle::Enrolled)),
        ),
        (
            "vpn-required",
            compile(&plan("vpn-required", false, Lifecycle::Enrolled)),
        ),
        (
            "proxy-required",
            compile(&plan("proxy-required", false, Lifecycle::Enrolled)),
        ),
        (
            "tor-only",
            compile(&plan("tor-only", false, Lifecycle::Enrolled)),
        ),
        (
            "privacy-direct-to-tor",
            compile(&plan("direct", true, Lifecycle::Enrolled)),
        ),
        (
            "lockdown-suspended",
            compile(&plan("direct", false, Lifecycle::Suspended)),
        ),
        (
            "lockdown-no-policy",
            compile(&effective(
                None,
                Overlay {
                    privacy: false,
                    completed_steps: &none,
                    lifecycle: Lifecycle::Unenrolled,
                },
            )),
        ),
    ]
}

#[test]
fn rendered_rulesets_match_their_snapshots() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots");
    let update = std::env::var_os("UPDATE_SNAPSHOTS").is_some();
    for (name, rs) in all_rulesets() {
        let text = serde_json::to_string_pretty(&render(&rs)).expect("json") + "\n";
        let path = dir.join(format!("{name}.json"));
        if update {
            std::fs::write(&path, &text).expect("write snapshot");
            continue;
        }
        let want = std::fs::read_to_string(&path).unwrap_or_else(|_| {
            panic!(
                "{} missing: run with UPDATE_SNAPSHOTS=1 and review",
                path.display()
            )
        });
        assert!(
            want == text,
            "{name}: ruleset differs from {} (UPDATE_SNAPSHOTS=1 to accept)",
            path.display()
        );
    }
}

#[test]
fn every_mode_denies_by_default_in_and_out() {
    for (name, rs) in all_rulesets() {
        for hook in ["input", "output", "forward"] {
            let c = rs.chains.iter().find(|c| c.name == hook).expect("chain");
            assert_eq!(
                c.base.as_ref().map(|b| b.policy),
                Some("drop"),
                "{name} {hook}"
            );
            let last = c.rules.last().expect("a rule");
            assert!(
                last.matches.is_empty() && last.action == netfilter::Action::Drop,
                "{name} {hook} ends in a counted drop"
            );
        }
    }
}

#[test]
fn apply_reads_back_and_a_failed_apply_keeps_the_previous_ruleset() {
    let rulesets = all_rulesets();
    let (_, direct) = &rulesets[0];
    let (_, tor) = &rulesets[3];
    let mut fake = RecordingBackend::default();
    let d = netfilter::apply(&mut fake, direct).expect("apply");
    assert_eq!(d, canonical_digest(direct));

    fake.fail_next = true;
    let err = netfilter::apply(&mut fake, tor).expect_err("injected failure");
    assert!(matches!(err, EnforceError::Apply(_)), "{err}");
    assert_eq!(
        netfilter::verify(&mut fake, direct).expect("still direct"),
        d
    );

    // Someone deletes the table: read-back says so.
    fake.set_table(None);
    let err = netfilter::verify(&mut fake, direct).expect_err("drift");
    assert_eq!(
        err.to_string(),
        format!("the kernel holds ruleset absent, not the compiled {d}")
    );
}

#[test]
fn each_ruleset_loads_into_the_kernel_and_reads_back_to_the_same_digest() {
    if !can_run_privileged(&["ip", "nft"]) {
        return;
    }
    let ns = Netns::new("readback");
    let mut nft = NftBackend::in_netns(&ns.name);
    for (name, rs) in all_rulesets() {
        match netfilter::apply(&mut nft, &rs) {
            Ok(d) => assert_eq!(d, canonical_digest(&rs), "{name}"),
            Err(e) => {
                let listing = ns.sh("nft -j list table inet trustd");
                panic!("{name}: {e}\nkernel: {listing}\ncompiled: {}", render(&rs));
            }
        }
    }
}

/// The ruleset trustd enforces when it cannot trust any state (no trust root, no state).
fn no_state_lockdown() -> Ruleset {
    let none = BTreeSet::new();
    compile(&effective(
        None,
        Overlay {
            privacy: true,
            completed_steps: &none,
            lifecycle: Lifecycle::Unknown,
        },
    ))
}

#[test]
fn the_static_early_boot_lockdown_is_the_compiled_no_state_lockdown() {
    if !can_run_privileged(&["ip", "nft"]) {
        return;
    }
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/lockdown.nft");
    let ns = Netns::new("static");
    // Twice: loading it over itself (a restarted early-boot unit) must work too.
    for _ in 0..2 {
        ns.sh(&format!("nft -f {}", file.display()));
    }
    let mut nft = NftBackend::in_netns(&ns.name);
    let d = netfilter::verify(&mut nft, &no_state_lockdown())
        .expect("systemd/lockdown.nft differs from the compiled lockdown");
    assert_eq!(d, canonical_digest(&no_state_lockdown()));
    // And trustd's apply replaces it in one transaction.
    let direct = &all_rulesets()[0].1;
    netfilter::apply(&mut nft, direct).expect("apply over the static lockdown");
}

/// Flows admitted under one ruleset must not keep flowing under another: every ruleset a
/// device moves between carries its own flow generation (a tightening would otherwise leave
/// the old ruleset's flows on the fast path), the same ruleset always the same one (so an
/// unchanged re-apply, a drift repair or a restart cuts nothing), never 0 (the mark of flows
/// opened before trustd marked anything), and only in the generation's bits of the mark.
#[test]
fn each_ruleset_has_its_own_flow_generation_and_keeps_it() {
    let rulesets = all_rulesets();
    let mut seen = std::collections::BTreeMap::new();
    for (name, rs) in &rulesets {
        assert_ne!(rs.generation, 0, "{name}");
        assert_eq!(rs.generation & !netfilter::FLOW_MARK_MASK, 0, "{name}");
        assert_eq!(rs.generation, netfilter::flow_generation(rs), "{name}");
        if let Some(other) = seen.insert(rs.generation, *name) {
            panic!(
                "{name} and {other} share flow generation {:#x}",
                rs.generation
            );
        }
    }
    for ((name, a), (_, b)) in rulesets.iter().zip(all_rulesets()) {
        assert_eq!(a, &b, "{name}: compiling twice gives the same ruleset");
    }
    assert_ne!(
        no_state_lockdown().generation,
        rulesets[5].1.generation,
        "the no-state lockdown differs from the suspended one (bootstrap allowlist)"
    );
}

/// `ct state established` is no way around the mode: in every filter chain, only packets of
/// flows this ruleset admitted skip the rules; replies of other flows are judged by the
/// opposite chain's rules mirrored; and every accept but loopback's marks the flow.
#[test]
fn only_flows_this_ruleset_admitted_skip_its_rules() {
    use netfilter::{Action, INPUT_REPLY, Match, OUTPUT_REPLY};
    for (name, rs) in all_rulesets() {
        let chain = |n: &str| rs.chains.iter().find(|c| c.name == n).expect(n);
        for (hook, reply, opposite) in [
            ("input", INPUT_REPLY, "output"),
            ("output", OUTPUT_REPLY, "input"),
        ] {
            let rules = &chain(hook).rules;
            // Untracked packets (neighbor discovery, MLD) have no flow to mark.
            let skips: Vec<_> = rules
                .iter()
                .filter(|r| r.action == Action::Accept)
                .filter(|r| !matches!(r.matches[..], [Match::Icmpv6Type(_)]))
                .collect();
            let lo = if hook == "output" { 2 } else { 1 };
            assert_eq!(
                skips.len(),
                lo + 1,
                "{name} {hook}: loopback and the fast path"
            );
            assert!(
                skips[lo].matches.contains(&Match::FlowCurrent),
                "{name} {hook}: established packets pass only with the current mark"
            );
            assert_eq!(
                rules[lo + 2],
                netfilter::Rule::new(vec![Match::CtReply], Action::Goto(reply.into())),
                "{name} {hook}"
            );
            assert!(
                rules.iter().all(|r| !r
                    .matches
                    .iter()
                    .any(|m| matches!(m, Match::CtState(s) if s.contains(&"established")))
                    || r.matches.contains(&Match::FlowCurrent)),
                "{name} {hook}: no other rule lets established packets through"
            );
            // The reply chain is the opposite chain's rules (after its head) mirrored.
            let body = if opposite == "output" { 5 } else { 4 };
            let mirrored: Vec<_> = chain(opposite).rules[body..]
                .iter()
                .filter_map(netfilter::Rule::mirrored)
                .collect();
            let replies = &chain(reply).rules;
            assert_eq!(
                &replies[..replies.len() - 1],
                &mirrored[..mirrored.len() - 1]
            );
            assert!(replies.last().expect("a rule").matches.is_empty());
            assert!(
                replies.iter().all(|r| r.action != Action::Accept),
                "{name} {reply}"
            );
        }
    }
}
