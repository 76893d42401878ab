//! The daemon's core without root: the engine driven in-process, step by step, over a device
//! in a tempdir, with the recording fake standing for the kernel and clocks the test sets.
//!
//! What holds here is what the root tests in namespaces check end to end: who may do what
//! (every refusal audited), the record budget, the fallback ladder when nft keeps failing,
//! drift repair, and lifecycle commands bound to this device (revoke destroys the secret).

mod common;

use std::time::Duration;

use common::engine::*;
use common::{TestDevice, policy};
use serde_json::{Value, json};
use trustd::audit::{Actor, Options, Outcome};
use trustd::daemon::{
    Call, CallError, Caller, Command, Device, HostFacts, LaunchAnswer, LifecycleChange, Method,
};
use trustd::netfilter::RecordingBackend;
use trustd::sys::nft_events::{Changes, TableChange};

/// A policy that requires the setup step `eula` and lets a user turn privacy mode off or not.
fn role_policy(user_may_disable: bool) -> Value {
    let mut p = policy(0);
    p["privacy"] = json!({"user_may_disable": user_may_disable});
    p["setup"] = json!({"required_steps": ["eula"]});
    p
}

/// Call `m` with arguments that reach its action when allowed; the answer without its
/// value. The match is exhaustive: a new method does not compile until it is here.
fn call_any(h: &mut Harness, who: &Caller, m: Method) -> Result<(), CallError> {
    let app = || "org.example.app".to_owned();
    match m {
        Method::PrivacyOn => h.call(who, |tx| Call::SetPrivacy(true, tx)),
        Method::PrivacyOff => h.call(who, |tx| Call::SetPrivacy(false, tx)),
        Method::ApplyBundle => {
            let b = signed(role_policy(false), 6);
            h.call(who, |tx| Call::ApplyBundle(b, tx)).map(drop)
        }
        Method::ApplyIntelFeed => h
            .call(who, |tx| Call::ApplyIntel(b"{}".to_vec(), tx))
            .map(drop),
        Method::ApplyTrustRoot => h
            .call(who, |tx| Call::ApplyTrustRoot(b"{}".to_vec(), tx))
            .map(drop),
        Method::ActivePolicy => h.call(who, Call::ActivePolicy).map(drop),
        Method::CompleteStep => h.call(who, |tx| Call::CompleteStep("eula".into(), tx)),
        Method::Tail => h.call(who, |tx| Call::AuditTail(5, tx)).map(drop),
        Method::Verify => h.call(who, Call::AuditVerify).map(drop),
        Method::AcknowledgeDamage => h
            .call(who, |tx| Call::AcknowledgeDamage(u64::MAX, tx))
            .map(drop),
        Method::CheckLaunch => h
            .call(who, |tx| Call::CheckLaunch(app(), String::new(), tx))
            .map(drop),
        Method::ReportLaunch => h.call(who, |tx| {
            Call::ReportLaunch(app(), false, "refused at exec".into(), tx)
        }),
        Method::ApplyCommand => h
            .call(who, |tx| Call::ApplyCommand(b"{}".to_vec(), tx))
            .map(drop),
        Method::GetDeviceHandle => h
            .call(who, |tx| Call::DeviceHandle("mdm.example.org".into(), tx))
            .map(drop),
        Method::Checkpoint => h.call(who, Call::Checkpoint).map(drop),
        Method::GetReport => h
            .call(who, |tx| Call::Report("nonce-1".into(), tx))
            .map(drop),
        Method::ActivateCredential => h
            .call(who, |tx| {
                Call::ActivateCredential(vec![0; 68], vec![0; 68], tx)
            })
            .map(drop),
    }
}

/// The table of docs/SECURITY.md ("Who may do what over the bus"), written out on its own
/// (not read from [`Method::allowed`]):
/// (user, setup, admin) for each method; `None` for "if the policy allows". One arm per row,
/// no catch-all: a new method does not compile until its row is written.
fn who_may(m: Method) -> (Option<bool>, Option<bool>, bool) {
    match m {
        Method::PrivacyOn
        | Method::CheckLaunch
        | Method::ReportLaunch
        | Method::GetDeviceHandle
        | Method::GetReport => (Some(true), Some(true), true),
        Method::PrivacyOff => (None, None, true),
        Method::CompleteStep => (Some(false), Some(true), true),
        Method::ApplyBundle
        | Method::ApplyIntelFeed
        | Method::ApplyTrustRoot
        | Method::ActivePolicy
        | Method::ApplyCommand
        | Method::Checkpoint
        | Method::Tail
        | Method::Verify
        | Method::AcknowledgeDamage
        | Method::ActivateCredential => (Some(false), Some(false), true),
    }
}

fn denied<T>(r: &Result<T, CallError>) -> Option<&str> {
    match r {
        Err(CallError::AccessDenied(why)) => Some(why),
        _ => None,
    }
}

/// Every request by every role (root, an admin-group member, a setup-group member, an
/// ordinary user, nobody), with a policy that lets users turn privacy off and one that does
/// not: allowed or denied as the table says; each denial answers what was refused and for
/// whom, is audited with the caller's uid, pid and bus name, and changes nothing else.
#[test]
fn every_request_by_every_role_is_allowed_or_denied_as_the_table_says_and_denials_are_audited() {
    let callers: [(&str, Caller); 5] = [
        ("user", user()),
        ("user", nobody()),
        ("setup", setup_member()),
        ("admin", admin_member()),
        ("admin", root()),
    ];
    let mut checked = 0;
    for may_disable in [false, true] {
        // Authorization depends on the role and the policy only, so one device serves every
        // request (what an allowed call changes does not change who may call).
        let mut h = Harness::new(Some(role_policy(may_disable)));
        for method in Method::ALL {
            let name = method.name();
            let (u, s, a) = who_may(method);
            for (role, who) in &callers {
                let allowed = match *role {
                    "user" => u.unwrap_or(may_disable),
                    "setup" => s.unwrap_or(may_disable),
                    _ => a,
                };
                let before = h.records().len();
                let state = h.engine.device().state().clone();
                let applied = h.engine.backend_mut().applied.len();
                let answer = call_any(&mut h, who, method);
                let new: Vec<_> = h.records().split_off(before);
                let denials: Vec<_> = new.iter().filter(|r| r.kind == "authz.denied").collect();
                if allowed {
                    assert!(
                        denied(&answer).is_none() && denials.is_empty(),
                        "{name} by uid {} (may_disable {may_disable}) must be allowed: {answer:?}",
                        who.uid
                    );
                } else {
                    let msg = format!("{name} is not allowed for uid {} (role {role})", who.uid);
                    assert_eq!(
                        denied(&answer),
                        Some(format!("{msg}; nothing changed").as_str()),
                        "{name} by uid {} (may_disable {may_disable})",
                        who.uid
                    );
                    assert_eq!(new.len(), 1, "one record, the denial: {new:?}");
                    let r = &new[0];
                    assert_eq!(
                        (r.kind.as_str(), r.outcome, r.reason.as_deref()),
                        ("authz.denied", Outcome::Refused, Some(msg.as_str()))
                    );
                    assert_eq!(
                        r.actor,
                        Actor {
                            uid: Some(who.uid),
                            pid: who.pid,
                            bus_name: Some(who.bus_name.clone())
                        }
                    );
                    assert_eq!(h.engine.device().state(), &state, "{name}: state");
                    assert_eq!(
                        h.engine.backend_mut().applied.len(),
                        applied,
                        "{name}: the kernel"
                    );
                }
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 2 * Method::ALL.len() * 5);
}

/// Security regression test: a local user calling a denied method in a loop must not make
/// the audit log grow by a synced record per call. Past 20 a minute per uid and kind, the
/// denials are counted and recorded as one summary when the minute is over (and at stop);
/// other uids and other kinds have budgets of their own. The minute is the engine's
/// monotonic clock, injected here.
#[test]
fn denials_past_the_budget_are_counted_and_summarised_once_the_minute_is_over() {
    let mut h = Harness::new(Some(policy(0)));
    let denials = |h: &Harness, uid: u32| -> Vec<String> {
        h.of_kind("authz.denied")
            .into_iter()
            .filter(|r| r.actor.uid == Some(uid))
            .map(|r| r.reason.unwrap_or_default())
            .collect()
    };
    for _ in 0..25 {
        assert!(denied(&h.call(&user(), Call::Checkpoint)).is_some());
    }
    assert_eq!(denials(&h, user().uid).len(), 20, "20 one by one");
    // Another uid has its own budget; another kind (a refused launch check) too.
    assert!(denied(&h.call(&nobody(), Call::Checkpoint)).is_some());
    assert_eq!(denials(&h, nobody().uid).len(), 1);
    for _ in 0..3 {
        let r = h.call(&user(), |tx| {
            Call::CheckLaunch("org.example.nope".into(), String::new(), tx)
        });
        assert!(
            matches!(&r, Ok(LaunchAnswer { allowed: false, .. })),
            "{r:?}"
        );
    }
    assert_eq!(h.of_kind("launch.check").len(), 3);

    // Within the minute nothing is summarised.
    h.advance(Duration::from_secs(59));
    h.tick();
    assert_eq!(denials(&h, user().uid).len(), 20);
    h.advance(Duration::from_secs(2));
    h.tick();
    let after = denials(&h, user().uid);
    assert_eq!(after.len(), 21, "{after:?}");
    assert_eq!(
        after[20],
        format!(
            "5 further denied calls of uid {} within a minute, past the 20 recorded one by one",
            user().uid
        )
    );
    // A new minute: recorded one by one again.
    assert!(denied(&h.call(&user(), Call::Checkpoint)).is_some());
    assert_eq!(denials(&h, user().uid).len(), 22);

    // Stop closes every window with a summary.
    for _ in 0..21 {
        assert!(denied(&h.call(&user(), Call::AuditVerify)).is_some());
    }
    assert_eq!(denials(&h, user().uid).len(), 22 + 19);
    assert!(h.engine.step(Command::Stop("test")).expect("stop"));
    let last = denials(&h, user().uid).pop().expect("summary");
    assert_eq!(
        last,
        format!(
            "2 further denied calls of uid {} within a minute, past the 20 recorded one by one",
            user().uid
        )
    );
    assert!(trustd::audit::verify_dir(&h.dev.paths.audit_dir()).is_ok());
}

/// Whether the fake kernel holds the policy's own rules (its allowed destination) or only
/// lockdown's.
fn holds_policy(h: &mut Harness) -> bool {
    h.kernel()
        .expect("a table is always in the kernel")
        .contains("203.0.113.0")
}

/// Security regression test: nft that keeps failing must never leave the device with less
/// enforcement than before. One failure: lockdown instead of the policy. Two in a row: the
/// ruleset already in the kernel stays (never an empty table). Failures that go on through
/// the retries keep that; the first retry that works puts the policy back and clears posture.
#[test]
fn nft_failing_n_applies_in_a_row_keeps_the_last_ruleset_in_force_until_a_retry_works() {
    let mut h = Harness::new(Some(policy(0)));
    assert_eq!(h.now().enforcement, "enforced");
    assert!(holds_policy(&mut h));
    let nothing_removed = |h: &mut Harness| {
        let k = h.kernel().expect("a table is always in the kernel");
        assert!(k.contains("\"chain\""), "a table with chains: {k}");
    };

    // One failure: the policy's table is refused, lockdown goes in instead.
    h.engine.backend_mut().fail_applies = 1;
    let r = h.call(&root(), |tx| Call::SetPrivacy(true, tx));
    assert_eq!(r, Ok(()));
    // (NetworkMode names the mode the state asks for; Enforcement what the kernel holds.)
    assert_eq!(h.now().enforcement, "fallback-lockdown");
    assert!(!holds_policy(&mut h), "lockdown in the kernel");
    let lockdown = h.kernel();
    let applies = h.of_kind("network.apply");
    let tail: Vec<_> = applies[applies.len() - 2..]
        .iter()
        .map(|r| (r.outcome, r.reason.clone().unwrap_or_default()))
        .collect();
    assert_eq!(tail[0].0, Outcome::Error);
    assert!(tail[0].1.contains("not in force"), "{tail:?}");
    assert_eq!(tail[1].0, Outcome::Ok);
    assert!(tail[1].1.starts_with("fell back to lockdown"), "{tail:?}");

    // Two in a row: neither the policy nor lockdown; what the kernel holds stays.
    h.engine.backend_mut().fail_applies = 2;
    let r = h.call(&root(), |tx| Call::SetPrivacy(false, tx));
    match &r {
        Err(CallError::Failed(why)) => assert!(why.ends_with("the state in force stays"), "{why}"),
        other => panic!("expected a failure, got {other:?}"),
    }
    assert_eq!(h.engine.backend_mut().fail_applies, 0, "both were tried");
    assert_eq!(h.kernel(), lockdown, "the ruleset in the kernel stays");
    nothing_removed(&mut h);
    let p = h.now();
    assert_eq!(p.enforcement, "failed");
    assert!(
        p.reasons.iter().any(|r| r.contains("injected failure")),
        "{p:?}"
    );
    let last = h.of_kind("network.apply").pop().expect("record");
    assert!(
        last.reason
            .as_deref()
            .is_some_and(|r| r.contains("lockdown not in force either")),
        "{last:?}"
    );

    // The failures go on through the first retry (due a second later): still what was there.
    h.engine.backend_mut().fail_applies = 2;
    h.tick();
    assert_eq!(
        h.engine.backend_mut().fail_applies,
        2,
        "not retried before it is due"
    );
    std::thread::sleep(Duration::from_millis(1100));
    h.tick();
    assert_eq!(
        h.engine.backend_mut().fail_applies,
        0,
        "retried: policy, then lockdown"
    );
    assert_eq!(h.kernel(), lockdown);
    assert_eq!(h.now().enforcement, "failed");

    // The next retry (two seconds later) works: the policy is back, posture clears.
    std::thread::sleep(Duration::from_millis(2100));
    h.tick();
    let p = h.now();
    assert_eq!(
        (p.enforcement.as_str(), p.network_mode.as_str()),
        ("enforced", "direct")
    );
    assert!(holds_policy(&mut h));
    assert!(
        !p.reasons.iter().any(|r| r.contains("injected failure")),
        "{:?}",
        p.reasons
    );
}

/// Security regression test: someone deletes or edits trustd's table. The engine's drift
/// check (its timer's tick) and an nftables notification of a foreign change each put the
/// ruleset back and audit it; with nft failing during the repair, lockdown goes in, never
/// nothing.
#[test]
fn drift_found_by_a_check_or_a_notification_is_repaired_and_audited() {
    let mut h = Harness::new(Some(policy(0)));
    let good = h.kernel();
    assert!(good.is_some());

    // Deleted.
    h.engine.backend_mut().set_table(None);
    h.tick();
    assert_eq!(h.kernel(), good, "put back");
    let drift = h.of_kind("network.drift");
    assert_eq!(drift.len(), 1);
    assert!(
        drift[0]
            .reason
            .as_deref()
            .is_some_and(|r| r.ends_with("restoring"))
    );

    // A rule removed.
    let mut objs: Value = serde_json::from_str(good.as_deref().expect("table")).expect("json");
    let list = objs["nftables"].as_array_mut().expect("objects");
    let at = list
        .iter()
        .rposition(|o| o.get("rule").is_some())
        .expect("a rule");
    list.remove(at);
    let edited = list.clone();
    h.engine.backend_mut().set_table(Some(edited.clone()));
    h.tick();
    assert_eq!(h.kernel(), good, "put back");
    assert_eq!(h.of_kind("network.drift").len(), 2);
    let p = h.now();
    assert!(
        p.reasons
            .iter()
            .any(|r| r.contains("drift repaired 2 time(s)")),
        "{:?}",
        p.reasons
    );

    // A notification of a foreign change, between ticks.
    h.engine.backend_mut().set_table(Some(edited));
    h.engine
        .step(Command::TablesChanged(Changes {
            policy: TableChange {
                foreign: vec!["delete rule".into()],
                structure: true,
                ..TableChange::default()
            },
            ..Changes::default()
        }))
        .expect("notification");
    assert_eq!(h.kernel(), good, "put back");
    assert_eq!(h.of_kind("network.drift").len(), 3);

    // Deleted while nft refuses the policy's table: lockdown goes in.
    h.engine.backend_mut().set_table(None);
    h.engine.backend_mut().fail_applies = 1;
    h.tick();
    assert!(!holds_policy(&mut h), "lockdown");
    assert_eq!(h.now().enforcement, "fallback-lockdown");
    assert!(trustd::audit::verify_dir(&h.dev.paths.audit_dir()).is_ok());
}

/// Security regression test: a lifecycle command must be bound to this device (its handle
/// for the issuer) and allowed by the lifecycle; a replay, another device's command, a
/// transition the lifecycle forbids and an ordinary user's call are refused and audited and
/// change nothing. Suspend and revoke put lockdown in the kernel before the reply; revoke
/// destroys the device secret, so no handle is given and no command binds again, even after
/// a restart.
#[test]
fn lifecycle_commands_bind_to_this_device_and_revoke_destroys_the_secret() {
    let mut h = Harness::new(Some(policy(0)));
    const MDM: &str = "mdm.example.org";
    let handle = |h: &mut Harness, who: &Caller, verifier: &str| match h
        .call(who, |tx| Call::DeviceHandle(verifier.into(), tx))
    {
        Ok(t) => t,
        other => panic!("a handle: {other:?}"),
    };
    let mdm = handle(&mut h, &root(), MDM);
    assert_eq!(mdm, handle(&mut h, &user(), MDM), "the same for everyone");
    let other = handle(&mut h, &root(), "attest.example.org");
    assert_ne!(mdm, other);
    assert_eq!(h.now().lifecycle, "unenrolled");
    let refused = |r: Result<LifecycleChange, CallError>| match r {
        Err(CallError::Refused(why)) => why,
        other => panic!("expected a refusal, got {other:?}"),
    };

    // An ordinary user may not send one, even validly signed.
    let enroll = command(1, MDM, &mdm, "enroll");
    assert!(denied(&h.call(&user(), |tx| Call::ApplyCommand(enroll.clone(), tx))).is_some());
    // Another device's command; this device's handle for another issuer.
    let why = refused(h.call(&root(), |tx| {
        Call::ApplyCommand(command(1, MDM, "AAAAAAAAAAAAAAAAAAAAAA", "enroll"), tx)
    }));
    assert!(why.contains("not this one"), "{why}");
    let why = refused(h.call(&root(), |tx| {
        Call::ApplyCommand(command(1, MDM, &other, "enroll"), tx)
    }));
    assert!(why.contains("not this one"), "{why}");
    assert_eq!(h.now().lifecycle, "unenrolled");

    let lc = |from: &str, to: &str| {
        Ok(LifecycleChange {
            from: from.into(),
            to: to.into(),
        })
    };
    assert_eq!(
        h.call(&root(), |tx| Call::ApplyCommand(enroll.clone(), tx)),
        lc("unenrolled", "enrolled")
    );
    // A replay is below the serial floor.
    let why = refused(h.call(&root(), |tx| Call::ApplyCommand(enroll, tx)));
    assert!(
        why.contains("nothing changed") || why.contains("last good"),
        "{why}"
    );
    // A transition the lifecycle forbids (resume while enrolled) is refused, audited.
    let before = h.of_kind("command.apply").len();
    refused(h.call(&root(), |tx| {
        Call::ApplyCommand(command(2, MDM, &mdm, "resume"), tx)
    }));
    let recs = h.of_kind("command.apply");
    assert_eq!(recs.len(), before + 1);
    assert_eq!(recs[before].outcome, Outcome::Refused);
    assert_eq!(h.now().lifecycle, "enrolled");
    assert!(holds_policy(&mut h));

    // Suspend: lockdown in the kernel when the call returns; resume: the policy again.
    assert_eq!(
        h.call(&root(), |tx| Call::ApplyCommand(
            command(3, MDM, &mdm, "suspend"),
            tx
        )),
        lc("enrolled", "suspended")
    );
    assert!(!holds_policy(&mut h));
    assert_eq!(h.now().network_mode, "lockdown");
    assert_eq!(
        h.call(&root(), |tx| Call::ApplyCommand(
            command(4, MDM, &mdm, "resume"),
            tx
        )),
        lc("suspended", "enrolled")
    );
    assert!(holds_policy(&mut h));

    // Revoke: the secret is gone, no handle, no command binds any more.
    let secret = h.dev.paths.device_secret();
    assert!(secret.exists());
    assert_eq!(
        h.call(&root(), |tx| Call::ApplyCommand(
            command(5, MDM, &mdm, "revoke"),
            tx
        )),
        lc("enrolled", "revoked")
    );
    assert!(!secret.exists(), "device secret destroyed");
    assert!(!holds_policy(&mut h), "lockdown in the kernel");
    assert!(
        h.call(&user(), |tx| Call::DeviceHandle(MDM.into(), tx))
            .is_err(),
        "no handle without a secret"
    );
    let why = refused(h.call(&root(), |tx| {
        Call::ApplyCommand(command(6, MDM, &mdm, "enroll"), tx)
    }));
    assert!(why.contains("has no secret"), "{why}");
    assert!(
        h.of_kind("device.secret")
            .iter()
            .any(|r| r.outcome == Outcome::Ok),
        "the destruction is audited"
    );

    // After a restart: still revoked, still no secret.
    assert!(h.engine.step(Command::Stop("test")).expect("stop"));
    let Harness { dev, engine, .. } = h;
    drop(engine);
    let d = open(&dev);
    let mut h = Harness::start(dev, d);
    assert_eq!(h.now().lifecycle, "revoked");
    assert!(!h.dev.paths.device_secret().exists());
    assert!(
        h.call(&root(), |tx| Call::DeviceHandle(MDM.into(), tx))
            .is_err()
    );
    assert!(!holds_policy(&mut h));
}

/// Posture is a function of the device's state, the host facts read once at open and the
/// time given: asked twice for the same instant it answers the same, the facts it judges
/// are the ones the device was opened with (not read again from the kernel), and a signed
/// report carries the same facts as its evidence.
#[test]
fn posture_is_a_function_of_state_host_facts_and_time() {
    let dev = TestDevice::new();
    let facts = |landlock_abi| HostFacts {
        landlock_abi,
        kernel_release: "9.9.9-facts-test".into(),
        boot_id: "00000000-0000-4000-8000-facts0000000".into(),
    };
    let open_as = |f: HostFacts| {
        let opts = Options {
            max_segment_bytes: 256 << 10,
        };
        Device::open_with_facts(&dev.paths, Actor::this_process(), opts, f).expect("open")
    };
    let no_landlock = "Landlock unavailable in this kernel";
    let now = wall();
    {
        let d = open_as(facts(0));
        let p = d.posture(now);
        assert!(p.reasons.iter().any(|r| r == no_landlock), "{p:?}");
    }
    let mut d = open_as(facts(42));
    assert_eq!(d.facts(), &facts(42));
    d.apply_policy(&signed(policy(0), 5), Actor::this_process(), now)
        .expect("policy");
    let mut backend = RecordingBackend::default();
    d.enforce(&mut backend, Actor::this_process())
        .expect("enforce");

    let (a, b) = (d.posture(now), d.posture(now));
    assert_eq!(a, b, "the same state, facts and time give the same posture");
    assert!(!a.reasons.iter().any(|r| r == no_landlock), "{a:?}");
    assert!(!a.ruleset_digest.is_empty(), "{a:?}");

    let nonce = "facts-nonce-1";
    let signed_report = d.report(nonce, now).expect("report");
    let (key, _) = trustd::report::load_or_create_key(&dev.paths).expect("device key");
    let opened = trustd::report::open_report(signed_report.as_bytes(), nonce, &key.verifying_key())
        .expect("a report signed by the device key");
    let ev = &opened.report.evidence;
    assert_eq!(
        (ev.boot_id.as_str(), ev.kernel.as_str(), ev.landlock_abi),
        (
            "00000000-0000-4000-8000-facts0000000",
            "9.9.9-facts-test",
            42
        )
    );
}

/// A configuration that cannot be read at a reload (SIGHUP) is not a reason to stop:
/// posture is degraded and says why, and the failure is audited; once it reads again, the
/// reason goes and that is audited too. Meanwhile no group holds a role (root stays admin):
/// keeping the groups read before kept the role of a group an admin had just taken it from
/// with the edit that broke the file.
#[test]
fn an_unreadable_configuration_is_a_posture_reason_and_no_group_holds_a_role_meanwhile() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let broken = Arc::new(AtomicBool::new(true));
    let b = broken.clone();
    let dev = TestDevice::new();
    let d = open(&dev);
    let mut h = Harness::start_with(
        dev,
        d,
        Box::new(move || {
            if b.load(Ordering::SeqCst) {
                Err("trustd.json: unknown field `tmp`".into())
            } else {
                Ok(GROUPS)
            }
        }),
    );
    let reason = "configuration not read (trustd.json: unknown field `tmp`)";
    assert!(!h.now().reasons.iter().any(|r| r.contains(reason)));

    h.engine
        .step(Command::Reload { done: None })
        .expect("reload");
    let p = h.now();
    assert!(
        p.reasons.iter().any(|r| r.contains(reason)),
        "{:?}",
        p.reasons
    );
    assert_ne!(p.level.as_str(), "trusted");
    let rec = h.of_kind("config.load");
    assert_eq!(rec.len(), 1, "{rec:?}");
    assert_eq!(rec[0].outcome, Outcome::Error);
    // No group holds a role; root is still admin.
    assert!(
        denied(&h.call(&admin_member(), Call::AuditVerify)).is_some(),
        "the admin group's role while the configuration does not read"
    );
    assert!(denied(&h.call(&root(), Call::AuditVerify)).is_none());

    // The same failure again is not recorded again; a configuration that reads clears it.
    h.engine
        .step(Command::Reload { done: None })
        .expect("reload");
    assert_eq!(h.of_kind("config.load").len(), 1);
    broken.store(false, Ordering::SeqCst);
    h.engine
        .step(Command::Reload { done: None })
        .expect("reload");
    assert!(!h.now().reasons.iter().any(|r| r.contains(reason)));
    assert!(
        denied(&h.call(&admin_member(), Call::AuditVerify)).is_none(),
        "the admin group's role is back once the configuration reads"
    );
    let rec = h.of_kind("config.load");
    assert_eq!(rec.len(), 2, "{rec:?}");
    assert_eq!(rec[1].outcome, Outcome::Ok);
}
