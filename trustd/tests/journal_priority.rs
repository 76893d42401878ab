//! What journald receives from the audit log: every record with the MESSAGE_ID the shipped
//! catalog explains, at a priority that lets `journalctl -p warning` find every refusal and
//! failure and no success (tracing's WARN is journald's warning, ERROR is err, INFO notice).

use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing_subscriber::layer::SubscriberExt;

use trustd::audit::{AUDIT_MESSAGE_ID, Actor, AuditLog, Entry, Options, Outcome};

/// (level, message_id, audit_outcome) of each event seen.
type Seen = Arc<Mutex<Vec<(tracing::Level, String, String)>>>;

struct Capture(Seen);

#[derive(Default)]
struct Fields {
    message_id: String,
    outcome: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message_id" => self.message_id = value.to_owned(),
            "audit_outcome" => self.outcome = value.to_owned(),
            _ => {}
        }
    }
    fn record_debug(&mut self, _field: &Field, _value: &dyn std::fmt::Debug) {}
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let mut f = Fields::default();
        event.record(&mut f);
        if event.metadata().target() == "trustd::audit" {
            self.0
                .lock()
                .expect("lock")
                .push((*event.metadata().level(), f.message_id, f.outcome));
        }
    }
}

#[test]
fn refusals_and_errors_reach_the_journal_at_warning_or_above_with_the_catalogued_id() {
    let seen: Seen = Arc::default();
    tracing::subscriber::set_global_default(
        tracing_subscriber::registry().with(Capture(Arc::clone(&seen))),
    )
    .expect("subscriber");
    let d = tempfile::tempdir().expect("tempdir");
    let (log, _) = AuditLog::open(d.path(), Options::default()).expect("open");
    for outcome in [Outcome::Ok, Outcome::Refused, Outcome::Error] {
        log.append(Entry::new("test.priority", outcome, Actor::this_process()))
            .expect("append");
    }
    drop(log);
    let seen = seen.lock().expect("lock").clone();
    let level_of = |o: &str| {
        seen.iter()
            .find(|(_, _, out)| out == o)
            .map(|(l, id, _)| {
                assert_eq!(id, AUDIT_MESSAGE_ID, "{o}: message id");
                *l
            })
            .unwrap_or_else(|| panic!("no journal event for outcome {o}: {seen:?}"))
    };
    // tracing orders levels by verbosity: ERROR < WARN < INFO.
    assert_eq!(level_of("ok"), tracing::Level::INFO);
    assert_eq!(level_of("refused"), tracing::Level::WARN);
    assert_eq!(level_of("error"), tracing::Level::ERROR);
    // Every mirrored record carries the id the shipped catalog explains.
    let catalog = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/trustd.catalog"),
    )
    .expect("systemd/trustd.catalog");
    assert!(
        catalog
            .lines()
            .any(|l| l.trim() == format!("-- {AUDIT_MESSAGE_ID}")),
        "no catalog entry for {AUDIT_MESSAGE_ID}"
    );
}
