//! The record budget: how many audit records the calls of one local user may cause per
//! kind and minute (denials, refused launch checks, launch reports: what any local user can
//! trigger). Beyond that they are counted and recorded as one summary when the minute is
//! over (or at stop), so that a user calling in a loop cannot make the log grow by an
//! fsynced record per call. The engine keeps one budget; time is given by the caller (a
//! monotonic clock the tests move by hand).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::audit::{Actor, Entry, Outcome};

/// Records a caller's calls may cause one by one, per uid, kind and window.
pub const RECORDED_PER_WINDOW: u32 = 20;
/// The budget's window (one minute).
pub const WINDOW: Duration = Duration::from_secs(60);

/// Per-uid, per-kind windows of the records caused by callers.
#[derive(Debug, Default)]
pub struct RecordBudget(HashMap<(u32, &'static str), Window>);

/// Records a budget did not let through one by one, to be recorded as one summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suppressed {
    /// The caller's uid.
    pub uid: u32,
    /// The audit kind (`authz.denied`, `launch.check`, `launch.report`).
    pub kind: &'static str,
    /// How many records were not written.
    pub count: u64,
    /// The last caller whose record was not written.
    pub last: Actor,
}

impl Suppressed {
    /// The summary record: `count` further records of `kind` by `uid` within a minute.
    pub fn entry(self) -> Entry {
        let what = match self.kind {
            "authz.denied" => "denied calls",
            "launch.check" => "refused launch checks",
            _ => "launch reports",
        };
        Entry::new(self.kind, Outcome::Refused, self.last).reason(format!(
            "{} further {what} of uid {} within a minute, past the {RECORDED_PER_WINDOW} recorded one by one",
            self.count, self.uid
        ))
    }
}

#[derive(Debug)]
struct Window {
    start: Instant,
    recorded: u32,
    suppressed: u64,
    last: Actor,
}

impl RecordBudget {
    /// Whether a record of `kind` caused by `uid` (as `actor`) at `now` is written on its
    /// own; windows that expired with suppressed records come back as summaries to record
    /// first.
    pub fn admit(
        &mut self,
        uid: u32,
        actor: Actor,
        kind: &'static str,
        now: Instant,
    ) -> (bool, Vec<Suppressed>) {
        let summaries = self.expire(now);
        let w = self.0.entry((uid, kind)).or_insert_with(|| Window {
            start: now,
            recorded: 0,
            suppressed: 0,
            last: actor.clone(),
        });
        w.last = actor;
        if w.recorded < RECORDED_PER_WINDOW {
            w.recorded += 1;
            (true, summaries)
        } else {
            w.suppressed += 1;
            (false, summaries)
        }
    }

    /// Close every window (at stop); returns the summaries of those that suppressed records.
    pub fn drain(&mut self) -> Vec<Suppressed> {
        self.0
            .drain()
            .filter(|(_, w)| w.suppressed > 0)
            .map(|((uid, kind), w)| Suppressed {
                uid,
                kind,
                count: w.suppressed,
                last: w.last,
            })
            .collect()
    }

    /// Close the windows older than [`WINDOW`] at `now`; returns the summaries of those
    /// that suppressed records.
    pub fn expire(&mut self, now: Instant) -> Vec<Suppressed> {
        let mut out = Vec::new();
        self.0.retain(|(uid, kind), w| {
            if now.duration_since(w.start) < WINDOW {
                return true;
            }
            if w.suppressed > 0 {
                out.push(Suppressed {
                    uid: *uid,
                    kind,
                    count: w.suppressed,
                    last: w.last.clone(),
                });
            }
            false
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actor() -> Actor {
        Actor::this_process()
    }

    #[test]
    fn a_caller_past_the_budget_is_summarised_when_the_window_ends() {
        let t0 = Instant::now();
        let mut b = RecordBudget::default();
        for _ in 0..RECORDED_PER_WINDOW {
            assert_eq!(b.admit(1000, actor(), "authz.denied", t0), (true, vec![]));
        }
        for _ in 0..7 {
            assert!(!b.admit(1000, actor(), "authz.denied", t0).0);
        }
        // Another uid and another kind have budgets of their own.
        assert!(b.admit(1001, actor(), "authz.denied", t0).0);
        assert!(b.admit(1000, actor(), "launch.check", t0).0);
        assert!(b.expire(t0 + WINDOW - Duration::from_millis(1)).is_empty());
        let (written, summaries) = b.admit(1000, actor(), "authz.denied", t0 + WINDOW);
        assert!(written, "a new window starts with a fresh budget");
        assert_eq!(summaries.len(), 1);
        assert_eq!((summaries[0].uid, summaries[0].count), (1000, 7));
        let e = summaries[0].clone().entry();
        assert_eq!(e.kind, "authz.denied");
        assert!(
            e.reason
                .as_deref()
                .unwrap_or_default()
                .starts_with("7 further denied calls of uid 1000 within a minute")
        );
    }

    #[test]
    fn stopping_summarises_every_window_that_suppressed_records() {
        let t0 = Instant::now();
        let mut b = RecordBudget::default();
        for _ in 0..=RECORDED_PER_WINDOW {
            b.admit(1000, actor(), "launch.report", t0);
        }
        b.admit(1002, actor(), "launch.report", t0);
        let s = b.drain();
        assert_eq!(s.len(), 1, "only the window past its budget: {s:?}");
        assert_eq!(
            (s[0].uid, s[0].kind, s[0].count),
            (1000, "launch.report", 1)
        );
        assert!(b.drain().is_empty());
    }
}
