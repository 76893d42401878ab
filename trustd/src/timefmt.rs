//! RFC 3339 UTC timestamps as signed inputs and audit records carry them.
//!
//! Inputs must be in UTC with a `Z` suffix, so that two readers never disagree on an offset.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// A point in time, written as RFC 3339 in UTC (`2026-11-24T13:00:00Z`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(OffsetDateTime);

impl Timestamp {
    /// The current wall-clock time.
    pub fn now() -> Self {
        Self(OffsetDateTime::now_utc())
    }

    /// Seconds since the Unix epoch.
    pub fn from_unix(secs: i64) -> Option<Self> {
        OffsetDateTime::from_unix_timestamp(secs).ok().map(Self)
    }

    /// Seconds since the Unix epoch.
    pub fn unix(&self) -> i64 {
        self.0.unix_timestamp()
    }

    /// Parse RFC 3339 text; only UTC (`Z`) is accepted.
    pub fn parse(s: &str) -> Result<Self, String> {
        if !s.ends_with('Z') {
            return Err(format!("timestamp {s:?} is not in UTC (must end in Z)"));
        }
        // RFC 3339 allows other separators and leap seconds; signed inputs use one spelling.
        if s.as_bytes().get(10) != Some(&b'T') || s.get(17..19) == Some("60") {
            return Err(format!(
                "timestamp {s:?} is not of the form 2026-11-24T13:00:00Z"
            ));
        }
        OffsetDateTime::parse(s, &Rfc3339)
            .map(Self)
            .map_err(|e| format!("timestamp {s:?} is not RFC 3339: {e}"))
    }

    /// This time shifted by `secs` seconds.
    pub fn plus_secs(&self, secs: i64) -> Self {
        Self(self.0 + time::Duration::seconds(secs))
    }

    /// This time shifted by `secs` seconds, held at the first or last representable
    /// instant (years -9999 and 9999) instead of overflowing: for times that come from a
    /// clock or an input, which may be anything.
    pub fn saturating_plus_secs(&self, secs: i64) -> Self {
        Self(self.0.saturating_add(time::Duration::seconds(secs)))
    }
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.format(&Rfc3339) {
            Ok(s) => f.write_str(&s),
            Err(_) => write!(f, "@{}", self.0.unix_timestamp()),
        }
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_only_and_round_trip() {
        let t = Timestamp::parse("2026-11-24T13:00:00Z").expect("valid");
        assert_eq!(t.to_string(), "2026-11-24T13:00:00Z");
        assert!(Timestamp::parse("2026-11-24T13:00:00+01:00").is_err());
        assert!(Timestamp::parse("2026-13-24T13:00:00Z").is_err());
        assert!(Timestamp::parse("yesterday").is_err());
        assert!(Timestamp::parse("2026-11-24 13:00:00Z").is_err());
        assert!(Timestamp::parse("2026-12-31T23:59:60Z").is_err());
    }
}
