//! Freshness of the installed signed inputs, and whether the wall clock can be believed
//! (pure: every function takes the time it judges by).
//!
//! Two rules hold here and are relied on elsewhere:
//! - Time never takes anything out of force. An input past its `expires_at`, or older than
//!   the `max_age` its policy sets, keeps enforcing; it is *stale*, and posture says so
//!   (TUF's freeze attack: a feed held back by an attacker shows before it would expire).
//! - The clock is evidence, not truth. A clock that reads earlier than this trustd's build, or
//!   earlier than an installed input was issued, is implausible, and posture says which of
//!   those it contradicts. A clock that moves unlike the monotonic clock has *jumped*.
//!
//! This module judges; the device records (once per transition) and posture shows.

use crate::bundle::MAX_CLOCK_SKEW_SECS;
use crate::bundle::Role;
use crate::timefmt::Timestamp;

/// This trustd's build time (`SOURCE_DATE_EPOCH` when the build set it, else when it was
/// built): the clock of a device running it cannot be earlier.
pub fn build_time() -> Timestamp {
    env!("TRUSTD_BUILD_EPOCH")
        .parse::<i64>()
        .ok()
        .and_then(Timestamp::from_unix)
        .unwrap_or_else(|| Timestamp::from_unix(0).unwrap_or_else(Timestamp::now))
}

/// One installed signed input, as far as its time matters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// Its role.
    pub role: Role,
    /// Its serial.
    pub serial: u64,
    /// SHA-256 of its envelope (lowercase hex), or empty where none is kept.
    pub digest: String,
    /// Its `issued_at`.
    pub issued_at: Timestamp,
    /// Its `expires_at`.
    pub expires_at: Timestamp,
    /// The policy's `max_age` for this role, in seconds, if it sets one.
    pub max_age: Option<u64>,
}

impl Held {
    /// How a person names it: `policy serial 7`, `intel feed serial 3`, `trust root serial 1`.
    pub fn name(&self) -> String {
        format!("{} serial {}", self.role.noun(), self.serial)
    }

    /// When it became (or becomes) stale: the earlier of its expiry and `issued_at` plus
    /// `max_age`.
    pub fn stale_from(&self) -> (Timestamp, Why) {
        let aged = self.max_age.map(|a| {
            self.issued_at
                .saturating_plus_secs(i64::try_from(a).unwrap_or(i64::MAX))
        });
        match aged {
            Some(t) if t < self.expires_at => (t, Why::OlderThanMaxAge),
            _ => (self.expires_at, Why::Expired),
        }
    }
}

/// Why an input is stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// Past its `expires_at`.
    Expired,
    /// Older than the policy's `max_age` for its role.
    OlderThanMaxAge,
}

/// An installed input that is stale at the time judged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stale {
    /// The input.
    pub held: Held,
    /// Since when.
    pub since: Timestamp,
    /// Why.
    pub why: Why,
}

impl Stale {
    /// A key that names this input's staleness (to record its start once).
    pub fn key(&self) -> String {
        format!(
            "stale:{}:{}:{}",
            self.held.role, self.held.serial, self.held.digest
        )
    }

    /// The sentence posture and the audit record show.
    pub fn sentence(&self, now: Timestamp) -> String {
        let h = &self.held;
        let digest = if h.digest.is_empty() {
            String::new()
        } else {
            format!(", sha256 {}", &h.digest[..h.digest.len().min(16)])
        };
        let what = match self.why {
            Why::Expired => format!("{} expired at {}", h.name(), h.expires_at),
            Why::OlderThanMaxAge => format!(
                "{} is older than the policy's max_age of {} s (issued at {})",
                h.name(),
                h.max_age.unwrap_or(0),
                h.issued_at
            ),
        };
        format!(
            "{what} (stale since {}{digest}): still enforced until a newer one is applied; this device's clock reads {now}",
            self.since
        )
    }
}

/// Why the wall clock cannot be believed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClockDoubt {
    /// It reads earlier than this trustd was built.
    BeforeBuild {
        /// The build time.
        build: Timestamp,
    },
    /// It reads earlier than an installed input was issued (beyond the allowed skew).
    BeforeIssue {
        /// How the input is named (`policy serial 7`).
        input: String,
        /// Its `issued_at`.
        issued_at: Timestamp,
    },
}

impl ClockDoubt {
    /// The sentence posture and the audit record show.
    pub fn sentence(&self, now: Timestamp) -> String {
        let evidence = match self {
            Self::BeforeBuild { build } => format!("earlier than this trustd was built ({build})"),
            Self::BeforeIssue { input, issued_at } => {
                format!("earlier than the installed {input} was issued ({issued_at})")
            }
        };
        format!(
            "the clock is implausible: it reads {now}, {evidence}; what is installed stays in force, expiry cannot be judged, and new inputs issued after the clock's time are refused until it is set"
        )
    }
}

/// What the time says about the installed inputs and about the clock.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assessment {
    /// When it was judged (the device's clock).
    pub now: Option<Timestamp>,
    /// The stale inputs, in the order given.
    pub stale: Vec<Stale>,
    /// Why the clock cannot be believed, if it cannot (the strongest evidence: the latest
    /// time it contradicts).
    pub clock: Option<ClockDoubt>,
}

impl Assessment {
    /// Posture's reasons (each `degraded`): the clock first, then each stale input.
    pub fn reasons(&self) -> Vec<String> {
        let Some(now) = self.now else {
            return Vec::new();
        };
        self.clock
            .iter()
            .map(|c| c.sentence(now))
            .chain(self.stale.iter().map(|s| s.sentence(now)))
            .collect()
    }
}

/// Judge the `held` inputs and the clock at `now`, given this trustd's `build` time.
pub fn assess(now: Timestamp, held: &[Held], build: Timestamp) -> Assessment {
    let stale = held
        .iter()
        .filter_map(|h| {
            let (since, why) = h.stale_from();
            (now > since).then(|| Stale {
                held: h.clone(),
                since,
                why,
            })
        })
        .collect();
    let behind = |t: Timestamp| now.saturating_plus_secs(MAX_CLOCK_SKEW_SECS) < t;
    let mut clock = behind(build).then_some((build, ClockDoubt::BeforeBuild { build }));
    for h in held {
        if behind(h.issued_at) && clock.as_ref().is_none_or(|(t, _)| h.issued_at > *t) {
            clock = Some((
                h.issued_at,
                ClockDoubt::BeforeIssue {
                    input: h.name(),
                    issued_at: h.issued_at,
                },
            ));
        }
    }
    Assessment {
        now: Some(now),
        stale,
        clock: clock.map(|(_, c)| c),
    }
}

/// The wall clock moved unlike the monotonic clock between two looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Jump {
    /// The wall clock at the earlier look.
    pub from: Timestamp,
    /// The wall clock now.
    pub to: Timestamp,
    /// Seconds the monotonic clock advanced meanwhile.
    pub elapsed_secs: i64,
}

impl Jump {
    /// The sentence the audit record shows.
    pub fn sentence(&self) -> String {
        let moved = self.to.unix() - self.from.unix();
        format!(
            "the wall clock jumped from {} to {} ({moved:+} s while {} s passed): what is in force stays; new inputs are judged by the new time",
            self.from, self.to, self.elapsed_secs
        )
    }
}

/// How far (seconds) the wall clock may drift from the monotonic clock between two looks
/// before it counts as a jump (NTP slews far less; a step or a manual set is more).
pub const JUMP_TOLERANCE_SECS: i64 = 60;

/// Watches the wall clock against a monotonic clock (nanoseconds; the device uses
/// CLOCK_BOOTTIME, which also counts time suspended).
#[derive(Debug, Clone, Copy, Default)]
pub struct ClockWatch {
    last: Option<(Timestamp, u64)>,
}

impl ClockWatch {
    /// Look at the clocks; a jump since the last look, if the wall clock jumped.
    pub fn observe(&mut self, wall: Timestamp, mono_ns: u64) -> Option<Jump> {
        let prev = self.last.replace((wall, mono_ns));
        let (w0, m0) = prev?;
        let elapsed = i64::try_from(mono_ns.saturating_sub(m0) / 1_000_000_000).unwrap_or(i64::MAX);
        let moved = wall.unix().saturating_sub(w0.unix());
        (moved.saturating_sub(elapsed).abs() > JUMP_TOLERANCE_SECS).then_some(Jump {
            from: w0,
            to: wall,
            elapsed_secs: elapsed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        Timestamp::parse(s).expect("time")
    }

    fn held(role: Role, issued: &str, expires: &str, max_age: Option<u64>) -> Held {
        Held {
            role,
            serial: 5,
            digest: "ab".repeat(32),
            issued_at: ts(issued),
            expires_at: ts(expires),
            max_age,
        }
    }

    const BUILD: &str = "2026-11-01T00:00:00Z";

    #[test]
    fn an_expired_feed_is_stale_since_its_expiry_and_named() {
        let h = held(
            Role::Intel,
            "2026-11-10T00:00:00Z",
            "2026-11-20T00:00:00Z",
            None,
        );
        let fresh = assess(
            ts("2026-11-19T00:00:00Z"),
            std::slice::from_ref(&h),
            ts(BUILD),
        );
        assert!(fresh.stale.is_empty() && fresh.clock.is_none(), "{fresh:?}");
        assert!(fresh.reasons().is_empty());
        let a = assess(ts("2026-11-21T00:00:00Z"), &[h], ts(BUILD));
        assert_eq!(a.stale.len(), 1);
        assert_eq!(a.stale[0].since, ts("2026-11-20T00:00:00Z"));
        let r = &a.reasons()[0];
        assert!(
            r.starts_with("intel feed serial 5 expired at 2026-11-20T00:00:00Z (stale since 2026-11-20T00:00:00Z, sha256 abababababababab)"),
            "{r}"
        );
        assert!(r.contains("still enforced") && r.contains("clock reads 2026-11-21T00:00:00Z"));
    }

    #[test]
    fn max_age_makes_an_input_stale_before_it_expires() {
        // The freeze attack: a feed that is valid for a year but should be replaced daily.
        let h = held(
            Role::Intel,
            "2026-11-10T00:00:00Z",
            "2027-11-10T00:00:00Z",
            Some(86_400),
        );
        assert!(
            assess(
                ts("2026-11-10T23:00:00Z"),
                std::slice::from_ref(&h),
                ts(BUILD)
            )
            .stale
            .is_empty()
        );
        let a = assess(
            ts("2026-11-12T00:00:00Z"),
            std::slice::from_ref(&h),
            ts(BUILD),
        );
        assert_eq!(a.stale[0].why, Why::OlderThanMaxAge);
        assert_eq!(a.stale[0].since, ts("2026-11-11T00:00:00Z"));
        assert!(
            a.reasons()[0].contains("older than the policy's max_age of 86400 s"),
            "{:?}",
            a.reasons()
        );
        // A max_age beyond the expiry: the expiry comes first.
        let mut long = h;
        long.max_age = Some(10 * 365 * 86_400);
        let a = assess(ts("2027-12-01T00:00:00Z"), &[long], ts(BUILD));
        assert_eq!(a.stale[0].why, Why::Expired);
    }

    #[test]
    fn a_max_age_past_the_end_of_time_does_not_overflow() {
        let h = held(
            Role::Policy,
            "9999-01-01T00:00:00Z",
            "9999-12-31T00:00:00Z",
            Some(crate::policy::MAX_MAX_AGE_SECS),
        );
        let a = assess(ts("9999-06-01T00:00:00Z"), &[h], ts(BUILD));
        assert!(a.stale.is_empty());
    }

    #[test]
    fn a_clock_before_the_build_or_an_issue_time_is_implausible() {
        let policy = held(
            Role::Policy,
            "2026-11-20T00:00:00Z",
            "2027-11-20T00:00:00Z",
            None,
        );
        // 1970: behind both; the latest evidence (the policy's issue time) is named.
        let a = assess(
            ts("1970-01-01T00:00:00Z"),
            std::slice::from_ref(&policy),
            ts(BUILD),
        );
        assert_eq!(
            a.clock,
            Some(ClockDoubt::BeforeIssue {
                input: "policy serial 5".into(),
                issued_at: ts("2026-11-20T00:00:00Z")
            })
        );
        assert!(a.stale.is_empty(), "a clock behind makes nothing stale");
        let r = &a.reasons()[0];
        assert!(
            r.contains("reads 1970-01-01T00:00:00Z")
                && r.contains("policy serial 5 was issued (2026-11-20T00:00:00Z)"),
            "{r}"
        );
        // Nothing installed: the build time is the evidence.
        let a = assess(ts("1970-01-01T00:00:00Z"), &[], ts(BUILD));
        assert!(
            a.reasons()[0].contains("earlier than this trustd was built (2026-11-01T00:00:00Z)"),
            "{:?}",
            a.reasons()
        );
        // Within the skew of an issue time: believed.
        let a = assess(ts("2026-11-19T23:55:00Z"), &[policy], ts(BUILD));
        assert_eq!(a.clock, None);
    }

    #[test]
    fn a_clock_far_ahead_makes_every_input_stale_and_says_what_it_reads() {
        let inputs = [
            held(
                Role::Policy,
                "2026-11-10T00:00:00Z",
                "2036-01-01T00:00:00Z",
                None,
            ),
            held(
                Role::Root,
                "2026-11-10T00:00:00Z",
                "2027-11-10T00:00:00Z",
                None,
            ),
        ];
        let a = assess(ts("2100-01-01T00:00:00Z"), &inputs, ts(BUILD));
        assert_eq!(a.clock, None);
        let r = a.reasons();
        assert_eq!(r.len(), 2, "{r:?}");
        assert!(
            r.iter()
                .all(|r| r.contains("clock reads 2100-01-01T00:00:00Z"))
        );
        assert!(r[1].starts_with("trust root serial 5 expired at 2027-11-10T00:00:00Z"));
    }

    #[test]
    fn the_clock_watch_sees_jumps_both_ways_and_not_steady_time() {
        const S: u64 = 1_000_000_000;
        let mut w = ClockWatch::default();
        let t0 = ts("2026-11-24T12:00:00Z");
        assert_eq!(w.observe(t0, 100 * S), None, "first look");
        assert_eq!(w.observe(t0.plus_secs(30), 130 * S), None, "steady");
        assert_eq!(
            w.observe(t0.plus_secs(75), 170 * S),
            None,
            "within tolerance"
        );
        let j = w
            .observe(ts("2100-01-01T00:00:00Z"), 171 * S)
            .expect("forward jump");
        assert_eq!(j.elapsed_secs, 1);
        assert!(
            j.sentence()
                .contains("jumped from 2026-11-24T12:01:15Z to 2100-01-01T00:00:00Z")
        );
        let j = w
            .observe(ts("1970-01-01T00:00:00Z"), 172 * S)
            .expect("backward jump");
        assert!(
            j.sentence().contains("to 1970-01-01T00:00:00Z"),
            "{}",
            j.sentence()
        );
    }
}
