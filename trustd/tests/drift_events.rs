//! What the device does with nftables change notifications (no root: the recording fake
//! backend stands for the kernel). A foreign change is drift, audited with its kind and
//! repaired; trustd's own transactions are not; lost notifications are read back first; and
//! a table that keeps being "repaired" falls back to read-back first, so nothing loops.

mod common;

use common::*;
use trustd::audit::{Actor, Outcome, read_records};
use trustd::daemon::Device;
use trustd::netfilter::RecordingBackend;
use trustd::sys::nft_events::{Changes, TableChange};

fn policy_change(c: TableChange) -> Changes {
    Changes {
        policy: c,
        ..Changes::default()
    }
}

fn foreign(what: &str) -> TableChange {
    TableChange {
        foreign: vec![what.to_owned()],
        structure: true,
        ..TableChange::default()
    }
}

fn drift_records(dev: &TestDevice) -> Vec<String> {
    read_records(&dev.paths.audit_dir())
        .expect("audit")
        .into_iter()
        .filter(|r| r.kind == "network.drift")
        .map(|r| r.reason.unwrap_or_default())
        .collect()
}

/// Security regression test: edits of trustd's tables by others went unseen until a table
/// was deleted. A notification of a foreign change is drift whatever the table now holds.
#[test]
fn a_foreign_change_is_audited_with_its_kind_and_repaired_and_own_changes_are_not() {
    let dev = TestDevice::new();
    let mut d = Device::open(&dev.paths, Actor::this_process()).expect("open");
    d.apply_policy(&signed_policy(5), Actor::this_process(), now())
        .expect("policy");
    let mut fake = RecordingBackend::default();
    d.enforce(&mut fake, Actor::this_process())
        .expect("enforce");
    let applied = fake.applied.len();

    // trustd's own transaction: nothing to do.
    let own = policy_change(TableChange {
        own: 1,
        ..TableChange::default()
    });
    assert_eq!(
        d.tables_changed(&mut fake, &own, Actor::this_process())
            .expect("own"),
        None
    );
    assert_eq!(fake.applied.len(), applied);

    // Someone else's: drift even though the fake still holds the same ruleset.
    let c = policy_change(foreign(
        "nft (pid 4242): 1 rule in chain output added or replaced",
    ));
    let found = d
        .tables_changed(&mut fake, &c, Actor::this_process())
        .expect("foreign")
        .expect("drift");
    assert!(found.contains("1 rule in chain output added"), "{found}");
    assert_eq!(
        fake.applied.len(),
        applied + 1,
        "the table was applied again"
    );
    let records = drift_records(&dev);
    assert_eq!(records.len(), 1);
    assert!(
        records[0].contains("nft (pid 4242)") && records[0].ends_with("restoring"),
        "{records:?}"
    );
    let p = d.posture(now());
    assert!(
        p.reasons.iter().any(|r| r.contains("drift")),
        "posture shows the drift: {:?}",
        p.reasons
    );
}

#[test]
fn lost_notifications_are_read_back_first_and_repaired_only_if_the_table_differs() {
    let dev = TestDevice::new();
    let mut d = Device::open(&dev.paths, Actor::this_process()).expect("open");
    let mut fake = RecordingBackend::default();
    d.enforce(&mut fake, Actor::this_process())
        .expect("enforce");
    let applied = fake.applied.len();
    let lost = policy_change(TableChange {
        unknown: true,
        ..TableChange::default()
    });
    assert_eq!(
        d.tables_changed(&mut fake, &lost, Actor::this_process())
            .expect("lost"),
        None,
        "the kernel still holds the ruleset"
    );
    assert_eq!(fake.applied.len(), applied);

    fake.set_table(None);
    let found = d
        .tables_changed(&mut fake, &lost, Actor::this_process())
        .expect("lost")
        .expect("drift");
    assert!(
        found.starts_with("nftables notifications were lost"),
        "{found}"
    );
    assert_eq!(fake.applied.len(), applied + 1);
    assert_eq!(drift_records(&dev).len(), 1);
}

#[test]
fn a_table_repaired_over_and_over_falls_back_to_read_back_first_so_nothing_loops() {
    let dev = TestDevice::new();
    let mut d = Device::open(&dev.paths, Actor::this_process()).expect("open");
    let mut fake = RecordingBackend::default();
    d.enforce(&mut fake, Actor::this_process())
        .expect("enforce");
    let c = policy_change(foreign("nft (pid 1): 1 table trustd added or changed"));
    let mut repairs = 0;
    for _ in 0..20 {
        if d.tables_changed(&mut fake, &c, Actor::this_process())
            .expect("change")
            .is_some()
        {
            repairs += 1;
        }
    }
    assert_eq!(
        repairs, 5,
        "after 5 repairs in 10 s, a matching read-back ends it"
    );
    // A real difference is still repaired.
    fake.set_table(None);
    assert!(
        d.tables_changed(&mut fake, &c, Actor::this_process())
            .expect("change")
            .is_some()
    );
    let records = read_records(&dev.paths.audit_dir()).expect("audit");
    assert!(
        records
            .iter()
            .filter(|r| r.kind == "network.apply")
            .all(|r| r.outcome == Outcome::Ok)
    );
}

#[test]
fn a_stopped_watcher_is_audited() {
    let dev = TestDevice::new();
    let mut d = Device::open(&dev.paths, Actor::this_process()).expect("open");
    let mut fake = RecordingBackend::default();
    d.enforce(&mut fake, Actor::this_process())
        .expect("enforce");
    d.set_table_events(true);
    let stopped = Changes {
        stopped: true,
        ..Changes::default()
    };
    d.tables_changed(&mut fake, &stopped, Actor::this_process())
        .expect("stopped");
    let records = read_records(&dev.paths.audit_dir()).expect("audit");
    assert!(
        records
            .iter()
            .any(|r| r.kind == "network.watch" && r.outcome == Outcome::Error)
    );
}

/// Lost notifications (a socket overrun, or a receive error after which the watcher
/// subscribed again) once left no trace when the tables read back intact: the gap is
/// audited with what was lost, and both tables are read back.
#[test]
fn a_gap_in_notifications_is_audited_and_both_tables_read_back() {
    let dev = TestDevice::new();
    let mut d = Device::open(&dev.paths, Actor::this_process()).expect("open");
    let mut fake = RecordingBackend::default();
    d.enforce(&mut fake, Actor::this_process())
        .expect("enforce");
    let applied = fake.applied.len();
    let unknown = TableChange {
        unknown: true,
        ..TableChange::default()
    };
    let gap = Changes {
        policy: unknown.clone(),
        intel: unknown,
        gap: Some("receiving nftables notifications failed: EIO; subscribed again".into()),
        ..Changes::default()
    };
    assert_eq!(
        d.tables_changed(&mut fake, &gap, Actor::this_process())
            .expect("gap"),
        None,
        "the tables read back as enforced"
    );
    assert_eq!(fake.applied.len(), applied, "nothing to repair");
    let records = read_records(&dev.paths.audit_dir()).expect("audit");
    let watch: Vec<String> = records
        .iter()
        .filter(|r| r.kind == "network.watch" && r.outcome == Outcome::Error)
        .filter_map(|r| r.reason.clone())
        .collect();
    assert!(
        watch
            .iter()
            .any(|r| r.starts_with("nftables notifications lost at ")
                && r.contains("subscribed again")
                && r.contains("both tables are read back")),
        "{watch:?}"
    );
}
