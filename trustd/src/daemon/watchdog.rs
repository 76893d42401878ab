//! The service manager's watchdog and status line, as pure decisions (the daemon's
//! supervisor carries them out).
//!
//! systemd's watchdog (`WatchdogSec=`, `sd_watchdog_enabled(3)`) kills a service that sends no
//! `WATCHDOG=1` within the timeout. trustd pings at half the timeout, as `sd_notify(3)`
//! recommends, and only while its engine finished a drift check recently and its bus service
//! answers; the drift interval is capped so that a turning engine is always "recent".

use std::time::Duration;

use crate::posture::{Level, Posture};

/// The shortest drift interval trustd accepts (a smaller one is raised to this).
pub const MIN_DRIFT_INTERVAL: Duration = Duration::from_millis(50);

/// How long a turning engine may go without finishing a drift check (it may be carrying
/// out one long command, such as a large blocklist) before it counts as wedged, when no
/// watchdog timeout lowers it.
pub const ENGINE_GRACE: Duration = Duration::from_secs(5);

/// How long the bus service may take to answer the supervisor's own property read.
pub const ANSWER_BOUND: Duration = Duration::from_secs(2);

/// How often the supervisor looks when there is no watchdog to feed (it still watches for a
/// lost bus connection).
pub const UNSUPERVISED_PERIOD: Duration = Duration::from_secs(1);

/// The supervisor's timings, derived from the watchdog timeout and the configured drift
/// interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// The watchdog timeout (`$WATCHDOG_USEC`), if the service manager expects pings.
    pub watchdog: Option<Duration>,
    /// How often the supervisor checks both halves and, if they work, pings: half the
    /// watchdog timeout (independent of the drift interval), or
    /// [`UNSUPERVISED_PERIOD`] without a watchdog.
    pub ping: Duration,
    /// How often the engine checks the kernel for drift: the configured interval (at least
    /// [`MIN_DRIFT_INTERVAL`]), capped at a quarter of the watchdog timeout so that at least
    /// two drift checks fall in every ping period.
    pub drift: Duration,
    /// A heartbeat older than this means the engine is wedged: three drift intervals but at
    /// least [`ENGINE_GRACE`], capped at half the watchdog timeout. A wedged engine is
    /// therefore killed at most one timeout and a half after its last drift check.
    pub engine_bound: Duration,
    /// How long the service may take to answer: [`ANSWER_BOUND`], capped at a quarter of
    /// the watchdog timeout (the check must fit in a ping period).
    pub answer_bound: Duration,
}

impl Timing {
    /// The timings for `watchdog` (`None`: no watchdog) and a configured drift interval.
    pub fn new(watchdog: Option<Duration>, drift_interval: Duration) -> Self {
        let mut drift = drift_interval.max(MIN_DRIFT_INTERVAL);
        let mut engine_bound = (drift * 3).max(ENGINE_GRACE);
        let mut answer_bound = ANSWER_BOUND;
        let ping = match watchdog {
            Some(w) => {
                // A timeout below a few milliseconds cannot be honoured by any check; the
                // floors keep the loops from spinning, and such a watchdog simply fires.
                drift = drift.min(w / 4).max(Duration::from_millis(1));
                engine_bound = engine_bound.min(w / 2);
                answer_bound = answer_bound.min(w / 4);
                (w / 2).max(Duration::from_millis(1))
            }
            None => UNSUPERVISED_PERIOD,
        };
        Self {
            watchdog,
            ping,
            drift,
            engine_bound,
            answer_bound,
        }
    }
}

/// The `STATUS=` text for a posture: its level, and the worst reason when there is one
/// (with how many more), one line of at most 200 characters.
pub fn status_line(posture: &Posture) -> String {
    status_of(posture.level, &posture.reasons)
}

fn status_of(level: Level, reasons: &[String]) -> String {
    let name = level.as_str();
    let text = match (level, reasons.split_first()) {
        (Level::Trusted, _) | (_, None) => format!("posture {name}"),
        (_, Some((first, []))) => format!("posture {name}: {first}"),
        (_, Some((first, rest))) => {
            format!("posture {name}: {first} (+{} more)", rest.len())
        }
    };
    crate::sys::status_text(&text, 200)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;
    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn pings_at_half_the_timeout_whatever_the_drift_interval() {
        for drift in [MS(100), S(1), S(60)] {
            assert_eq!(Timing::new(Some(S(30)), drift).ping, S(15));
        }
        assert_eq!(Timing::new(Some(S(4)), MS(100)).ping, S(2));
    }

    #[test]
    fn the_drift_interval_is_capped_at_a_quarter_of_the_timeout() {
        let t = Timing::new(Some(S(30)), S(60));
        assert_eq!(t.drift, MS(7500));
        assert!(t.drift * 2 <= t.ping);
        assert_eq!(Timing::new(Some(S(30)), S(1)).drift, S(1));
        // Without a watchdog only the floor applies.
        assert_eq!(Timing::new(None, S(60)).drift, S(60));
        assert_eq!(Timing::new(None, MS(1)).drift, MIN_DRIFT_INTERVAL);
    }

    #[test]
    fn a_wedged_engine_is_noticed_within_half_the_timeout() {
        let t = Timing::new(Some(S(30)), S(1));
        assert_eq!(t.engine_bound, ENGINE_GRACE);
        assert_eq!(t.answer_bound, ANSWER_BOUND);
        let t = Timing::new(Some(S(4)), MS(100));
        assert_eq!(t.engine_bound, S(2));
        assert_eq!(t.answer_bound, S(1));
        for w in [MS(10), S(1), S(4), S(30), S(600)] {
            let t = Timing::new(Some(w), S(10));
            assert!(t.engine_bound <= w / 2, "{t:?}");
            assert!(t.answer_bound < t.ping, "{t:?}");
        }
        assert_eq!(Timing::new(None, S(10)).engine_bound, S(30));
    }

    #[test]
    fn a_zero_or_tiny_timeout_does_not_spin() {
        let t = Timing::new(Some(Duration::from_micros(1)), S(1));
        assert!(t.ping >= MS(1) && t.drift >= MS(1), "{t:?}");
    }

    #[test]
    fn the_status_line_names_the_level_and_the_worst_reason_on_one_line() {
        let one = |r: &[&str]| r.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(status_of(Level::Trusted, &[]), "posture trusted");
        assert_eq!(
            status_of(Level::Degraded, &one(&["no policy yet"])),
            "posture degraded: no policy yet"
        );
        assert_eq!(
            status_of(
                Level::Untrusted,
                &one(&["the kernel ruleset\nWATCHDOG=1", "b", "c"])
            ),
            "posture untrusted: the kernel ruleset WATCHDOG=1 (+2 more)"
        );
        let s = status_of(Level::Degraded, &["x".repeat(500)]);
        assert_eq!(s.chars().count(), 200);
        assert!(s.ends_with('…'));
    }
}
