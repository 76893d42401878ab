//! Admission of method calls before they reach the engine: how many calls one connection and
//! one uid may have waiting, so that no local user, by any pattern of calls, can fill the
//! engine's queue or the service's memory and stop trustd serving others.
//!
//! Pure bookkeeping (no bus, no clock): the service asks for a [`Ticket`] per call and drops
//! it when the call is answered. A call over a limit is refused at once with
//! `org.enigm.Trust1.Error.Busy` and counted; the counts are recorded in the audit log as
//! one record per uid (docs/SECURITY.md, "Floods").

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// Calls one connection (one unique bus name) may have in flight, before its caller is known.
pub const PER_CONNECTION: u32 = 4;
/// Calls one ordinary uid (not uid 0, not the admin group) may have in flight, over all its
/// connections, once its caller is known.
pub const PER_UID: u32 = 8;

#[derive(Debug, Default)]
struct Counts {
    /// In-flight calls per unique bus name.
    connections: HashMap<String, u32>,
    /// In-flight calls per ordinary uid.
    uids: HashMap<u32, u32>,
    /// Calls refused since the last [`Gate::take_refusals`], per uid (`None`: not yet known).
    refused: HashMap<Option<u32>, u64>,
}

/// The limits, shared by every interface of the service.
#[derive(Debug, Clone, Default)]
pub struct Gate(Arc<Mutex<Counts>>);

/// One admitted call; dropping it gives its place back.
#[derive(Debug)]
pub struct Ticket {
    gate: Gate,
    connection: String,
    uid: Option<u32>,
}

impl Gate {
    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admit a call from `connection` (its unique bus name), or `None` when that connection
    /// already has [`PER_CONNECTION`] calls in flight (the refusal is counted).
    pub fn enter(&self, connection: &str) -> Option<Ticket> {
        let mut c = self.counts();
        let n = c.connections.entry(connection.to_owned()).or_default();
        if *n >= PER_CONNECTION {
            *c.refused.entry(None).or_default() += 1;
            return None;
        }
        *n += 1;
        Some(Ticket {
            gate: self.clone(),
            connection: connection.to_owned(),
            uid: None,
        })
    }

    /// Count a refusal of `uid`'s call for another reason of load (the lane was full).
    pub fn count_refusal(&self, uid: Option<u32>) {
        *self.counts().refused.entry(uid).or_default() += 1;
    }

    /// Refusals counted since the last call, per uid, in uid order (`None` first).
    pub fn take_refusals(&self) -> Vec<(Option<u32>, u64)> {
        let mut v: Vec<(Option<u32>, u64)> = self.counts().refused.drain().collect();
        v.sort_unstable();
        v
    }

    /// Calls in flight in all (for tests and benchmarks).
    pub fn in_flight(&self) -> u32 {
        self.counts().connections.values().sum()
    }
}

impl Ticket {
    /// The caller is known to be the ordinary uid `uid`: hold it to [`PER_UID`] calls in flight
    /// over all its connections. `false` (and the refusal counted) when it already has that
    /// many; the ticket then stays a connection's ticket only.
    pub fn charge_uid(&mut self, uid: u32) -> bool {
        let mut c = self.gate.counts();
        let n = c.uids.entry(uid).or_default();
        if *n >= PER_UID {
            *c.refused.entry(Some(uid)).or_default() += 1;
            return false;
        }
        *n += 1;
        self.uid = Some(uid);
        true
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut c = self.gate.counts();
        if let Some(n) = c.connections.get_mut(&self.connection) {
            *n -= 1;
            if *n == 0 {
                c.connections.remove(&self.connection);
            }
        }
        if let Some(uid) = self.uid
            && let Some(n) = c.uids.get_mut(&uid)
        {
            *n -= 1;
            if *n == 0 {
                c.uids.remove(&uid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_gets_four_places_and_gets_them_back() {
        let g = Gate::default();
        let held: Vec<Ticket> = (0..PER_CONNECTION)
            .map(|_| g.enter(":1.7").expect("admitted"))
            .collect();
        assert!(g.enter(":1.7").is_none(), "the fifth is refused");
        assert!(
            g.enter(":1.8").is_some(),
            "another connection is not affected"
        );
        drop(held);
        assert_eq!(
            g.in_flight(),
            0,
            "every place given back, no entry left behind"
        );
        assert!(g.enter(":1.7").is_some());
        assert_eq!(g.take_refusals(), vec![(None, 1)]);
        assert!(g.take_refusals().is_empty(), "counts are taken once");
    }

    #[test]
    fn a_uid_is_limited_over_all_its_connections() {
        let g = Gate::default();
        let mut held = Vec::new();
        for i in 0..PER_UID {
            let mut t = g.enter(&format!(":1.{i}")).expect("admitted");
            assert!(t.charge_uid(1000));
            held.push(t);
        }
        let mut t = g.enter(":1.99").expect("a new connection");
        assert!(!t.charge_uid(1000), "the uid is at its limit");
        assert!(t.charge_uid(1001), "another uid is not affected");
        drop(held);
        let mut t = g.enter(":1.100").expect("admitted");
        assert!(t.charge_uid(1000), "places of the uid given back");
        assert_eq!(g.take_refusals(), vec![(Some(1000), 1)]);
    }
}
