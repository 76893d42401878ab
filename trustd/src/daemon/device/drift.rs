//! Drift reported by the kernel: what the enforcer does when nftables notifications say that
//! someone changed trustd's tables (see `sys::nft_events`), and how often the periodic
//! check still reads the large blocklist table back once notifications are watched.
//!
//! A transaction by another process that touched a table is drift, whatever it did: it is
//! audited with what kind of change it was (object names and counts, never addresses) and
//! the table is put back. Lost notifications (a socket overrun) are checked by a read-back
//! first, and so are trustd's own transactions should they ever be taken for foreign ones
//! too often (a repair loop is impossible: a read-back that matches ends it).

use std::time::{Duration, Instant};

use super::enforcement::{Ctx, Enforcer};
use crate::audit::{Actor, Entry, Outcome};
use crate::netfilter::{self, Backend, canonical_digest, check_intel, refill_intel};
use crate::sys::nft_events::{Changes, TableChange};

use super::DeviceError;

/// With notifications watched, the periodic check reads the blocklist table's chains back
/// this often (a backstop; each read costs about half a second of CPU with 100k entries).
pub const INTEL_BACKSTOP: Duration = Duration::from_secs(300);
/// Past this many repairs on foreign notifications within [`REPAIR_WINDOW`] for one table,
/// further notifications are confirmed by a read-back before a repair.
const REPAIRS_BEFORE_VERIFY: u32 = 5;
/// The least time between two tries, out of the back-off schedule, to put the blocklists
/// in force again on another process's change to their table (see
/// [`Watch::retry_now`]): a process committing to a table of that name that it owns could
/// otherwise make trustd try (and fail, and audit) at its own pace, keeping the engine
/// from everything else (the policy table's repairs first).
pub const RETRY_AT_ONCE_GAP: Duration = Duration::from_secs(2);
const REPAIR_WINDOW: Duration = Duration::from_secs(10);

/// Whether something done at `*last` may be done again now, at most once per `every`
/// (always when it was never done); if so, `*last` becomes now.
fn at_most_every(last: &mut Option<Instant>, every: Duration) -> bool {
    let now = Instant::now();
    if last.is_some_and(|t| now.duration_since(t) < every) {
        return false;
    }
    *last = Some(now);
    true
}

/// What the enforcer knows about how its tables are watched.
#[derive(Debug, Default)]
pub struct Watch {
    /// nftables notifications are being received.
    events: bool,
    /// When the periodic check last read the blocklist table back.
    intel_checked: Option<Instant>,
    /// When the periodic check last read every blocklist element back (see
    /// [`Watch::intel_full_due`]).
    intel_full: Option<Instant>,
    /// Repairs on foreign notifications per table (policy, intel): window start and count.
    repairs: [(Option<Instant>, u32); 2],
    /// When a change to the blocklist table last made trustd try at once.
    retried_at: Option<Instant>,
}

impl Watch {
    /// Whether a foreign change to the blocklist table, while the blocklists are not in
    /// force, may make trustd try to put them back now: at most once per
    /// [`RETRY_AT_ONCE_GAP`]; the back-off schedule's tries go on regardless.
    pub(super) fn retry_now(&mut self) -> bool {
        at_most_every(&mut self.retried_at, RETRY_AT_ONCE_GAP)
    }

    /// Whether the periodic check should read the blocklist table back now: every tick
    /// without notifications, every [`INTEL_BACKSTOP`] with them.
    pub(super) fn intel_due(&mut self) -> bool {
        let every = if self.events {
            INTEL_BACKSTOP
        } else {
            Duration::ZERO
        };
        at_most_every(&mut self.intel_checked, every)
    }

    /// Whether the periodic check, when due ([`Watch::intel_due`]), should read every
    /// element of the blocklist table back (the full read-back): every [`INTEL_BACKSTOP`],
    /// notifications watched or not. Otherwise it reads the table's flags, declarations,
    /// rules and set counts (cheap, over netlink).
    pub(super) fn intel_full_due(&mut self) -> bool {
        at_most_every(&mut self.intel_full, INTEL_BACKSTOP)
    }

    /// Count a repair on foreign notifications; whether the next one must be confirmed by a
    /// read-back first.
    fn verify_first(&mut self, table: usize) -> bool {
        let now = Instant::now();
        let (start, n) = &mut self.repairs[table];
        if start.is_none_or(|s| now.duration_since(s) >= REPAIR_WINDOW) {
            *start = Some(now);
            *n = 0;
        }
        *n += 1;
        *n > REPAIRS_BEFORE_VERIFY
    }
}

/// What a notification says happened, as an audit reason.
fn foreign(table: &str, c: &TableChange) -> String {
    format!("{table} changed by {}", c.foreign.join("; "))
}

impl Enforcer {
    /// Put the blocklists last enforced back (already compiled: a repair does not wait for
    /// the feed to be compiled again) in one transaction, and confirm them by a full
    /// read-back; audited as `intel.enforce`. When others changed only set elements, only
    /// those sets are refilled. If that fails, the whole of
    /// [`Self::enforce_intel`] runs (and records its own outcome); neither ends the daemon.
    fn restore_intel(
        &mut self,
        backend: &mut dyn Backend,
        ctx: &Ctx<'_>,
        change: &TableChange,
        actor: Actor,
    ) -> Result<(), DeviceError> {
        let Some(rs) = &self.enforced_intel else {
            return Ok(());
        };
        // Only elements changed: refill those sets (flushed and filled in one transaction);
        // anything else, or lost notifications: replace the table.
        let names: &[String] = if !change.structure && !change.unknown {
            &change.element_sets
        } else {
            &[]
        };
        let restored = refill_intel(backend, rs, names);
        let how = restored.as_ref().map_or("", |h| *h);
        let restored = restored.map(|_| ());
        match restored {
            Ok(()) => {
                let mut entry = Entry::new("intel.enforce", Outcome::Ok, actor)
                    .reason(format!("{} entries, {how}", rs.len()));
                for c in &rs.categories {
                    entry = entry.digest(
                        format!("count.{}", c.name),
                        rs.category_len(&c.name).to_string(),
                    );
                }
                ctx.audit.record(entry);
                if how == "table restored" {
                    self.exemptions_refilled();
                }
                // Refilled sets leave a failed exemption refill as it was (still reported,
                // and the table replaced at the next retry).
                if !self.exemptions_stale() {
                    self.intel_failure = None;
                }
            }
            Err(why) => {
                tracing::warn!("blocklists not restored as they were ({why}); applying them anew");
                self.enforced_intel = None;
                // A failed re-apply is recorded by enforce_intel and tried again on the next
                // notification or check; it must not end the daemon (the policy table stays).
                let _ = self.enforce_intel(backend, ctx, actor);
            }
        }
        Ok(())
    }

    /// Whether nftables notifications are watched (set once the watcher is subscribed; the
    /// periodic check then reads the blocklist table back only every [`INTEL_BACKSTOP`]).
    pub fn set_table_events(&mut self, on: bool) {
        self.watch.events = on;
        // The start's own apply just confirmed the table: the first backstop is due later.
        self.watch.intel_checked = Some(Instant::now());
        self.watch.intel_full = Some(Instant::now());
    }

    /// Act on what nftables notifications said about trustd's tables: a foreign change is
    /// audited as drift (`network.drift`, `intel.drift`) with its kind, and the table put
    /// back (the policy by [`Self::enforce`], the blocklists by a full replace and read-back);
    /// lost notifications are checked by a read-back first. Returns the drift found, if any.
    pub fn tables_changed(
        &mut self,
        backend: &mut dyn Backend,
        ctx: &Ctx<'_>,
        changes: &Changes,
        actor: Actor,
    ) -> Result<Option<String>, DeviceError> {
        if changes.stopped {
            self.watch.events = false;
            ctx.audit.record(
                Entry::new("network.watch", Outcome::Error, actor.clone()).reason(
                    "nftables notifications are no longer received; the periodic check covers both tables every interval".to_owned(),
                ),
            );
        }
        if let Some(gap) = &changes.gap {
            ctx.audit.append(
                Entry::new("network.watch", Outcome::Error, actor.clone()).reason(format!(
                    "nftables notifications lost at {} ({gap}); both tables are read back now",
                    crate::timefmt::Timestamp::now()
                )),
            )?;
        }
        let mut found = None;
        if let Some(rs) = self.enforced_rs.clone() {
            let c = &changes.policy;
            let what = if !c.foreign.is_empty() && !self.watch.verify_first(0) {
                Some(foreign("the policy table", c))
            } else if c.needs_attention() {
                netfilter::verify(backend, &rs).err().map(|e| {
                    if c.foreign.is_empty() {
                        format!("nftables notifications were lost and {e}")
                    } else {
                        format!("{}: {e}", foreign("the policy table", c))
                    }
                })
            } else {
                None
            };
            if let Some(what) = what {
                ctx.audit.record(
                    Entry::new("network.drift", Outcome::Error, actor.clone())
                        .reason(format!("{what}; restoring"))
                        .digest("ruleset", canonical_digest(&rs)),
                );
                self.enforce(backend, ctx, actor.clone())?;
                found = Some(what);
            }
        }
        let c = &changes.intel;
        // The blocklists are not in force (a replace or restore failed, perhaps because
        // another writer committed in between) and someone changed the table again: try at
        // once rather than at the next back-off step, which a writer answering each of
        // trustd's commits with one of its own could otherwise stretch to minutes; at most
        // once per RETRY_AT_ONCE_GAP, so that a writer (one holding the table's name) cannot
        // set the pace of trustd's tries.
        let retried = self.enforced_intel.is_none()
            && !c.foreign.is_empty()
            && self.intel_failure.is_some()
            && self.watch.retry_now();
        if retried {
            let what = format!(
                "{} while the blocklists were not in force",
                foreign("the blocklist table", c)
            );
            ctx.audit.record(
                Entry::new("intel.drift", Outcome::Error, actor.clone())
                    .reason(format!("{what}; restoring")),
            );
            let _ = self.enforce_intel(backend, ctx, actor.clone());
            found = Some(what);
        }
        let what = match &self.enforced_intel {
            _ if retried => None,
            Some(_) if !c.foreign.is_empty() && !self.watch.verify_first(1) => {
                Some(foreign("the blocklist table", c))
            }
            Some(rs) if c.needs_attention() => {
                let check = check_intel(backend, rs).err();
                check.map(|why| {
                    if c.foreign.is_empty() {
                        format!("nftables notifications were lost and {why}")
                    } else {
                        format!("{}: {why}", foreign("the blocklist table", c))
                    }
                })
            }
            _ => None,
        };
        if let Some(what) = what {
            ctx.audit.record(
                Entry::new("intel.drift", Outcome::Error, actor.clone())
                    .reason(format!("{what}; restoring")),
            );
            self.restore_intel(backend, ctx, c, actor)?;
            found = Some(what);
        }
        if let Some(what) = &found {
            let n = self.drift.as_ref().map_or(0, |d| d.0);
            self.drift = Some((n + 1, what.clone()));
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backstop_reads_the_blocklists_every_tick_until_notifications_are_watched() {
        let mut w = Watch::default();
        assert!(w.intel_due() && w.intel_due());
        w.events = true;
        assert!(!w.intel_due(), "checked just now");
        w.intel_checked = Some(Instant::now() - INTEL_BACKSTOP);
        assert!(w.intel_due());
    }

    /// Every element is read back every INTEL_BACKSTOP whether notifications are watched
    /// or not (their attribution by pid can be fooled).
    #[test]
    fn every_element_is_read_back_every_backstop_with_or_without_notifications() {
        let mut w = Watch::default();
        assert!(w.intel_full_due());
        assert!(!w.intel_full_due(), "read just now");
        w.events = true;
        w.intel_full = Some(Instant::now() - INTEL_BACKSTOP);
        assert!(w.intel_full_due());
    }

    /// A process holding a table of the blocklist table's name and committing to it
    /// thousands of times a second made trustd try (and fail, and audit) as often, keeping
    /// the policy table's repairs waiting: tries out of schedule are spaced.
    #[test]
    fn tries_out_of_schedule_are_at_most_one_per_gap() {
        let mut w = Watch::default();
        assert!(w.retry_now());
        assert!(!w.retry_now() && !w.retry_now(), "within the gap");
        w.retried_at = Some(Instant::now() - RETRY_AT_ONCE_GAP);
        assert!(w.retry_now());
    }

    #[test]
    fn repeated_foreign_repairs_fall_back_to_a_read_back_first() {
        let mut w = Watch::default();
        for _ in 0..REPAIRS_BEFORE_VERIFY {
            assert!(!w.verify_first(1));
        }
        assert!(w.verify_first(1));
        assert!(!w.verify_first(0), "per table");
    }
}
