//! nftables change notifications: what `nft monitor` listens to. The kernel announces every
//! committed nftables transaction on a `NETLINK_NETFILTER` socket subscribed to multicast
//! group `NFNLGRP_NFTABLES` (7): one `NFT_MSG_NEW*`/`NFT_MSG_DEL*` message per object
//! changed (table, chain, rule, set, set element, object, flowtable; for each the attribute
//! of type 1 after the 4-byte `nfgenmsg` header is the table's name), then `NFT_MSG_NEWGEN`
//! carrying the committing process's pid and name (`NFTA_GEN_PROC_PID`, `NFTA_GEN_PROC_NAME`).
//!
//! [`TableWatcher`] turns that stream into [`Changes`] to trustd's two tables: whose
//! transaction it was (trustd's own `nft` children are recognised by pid, see [`OwnChild`]),
//! what kind of change (counts per kind and object name, never set element values), and
//! whether notifications were lost (`ENOBUFS`: the socket overran, anything may have
//! changed). Bursts are coalesced before they are handed on. Nothing here reads or writes
//! the ruleset; deciding what a change means is the daemon's.

use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use netlink_sys::{Socket, protocols::NETLINK_NETFILTER};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{setsockopt, sockopt};

use super::nfnl::attrs;

/// The nftables multicast group (`NFNLGRP_NFTABLES`).
const NFNLGRP_NFTABLES: u32 = 7;
/// nfnetlink subsystem id of nf_tables (`NFNL_SUBSYS_NFTABLES`), the high byte of the type.
const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// `NFPROTO_INET`: trustd's tables are `inet` tables.
const NFPROTO_INET: u8 = 1;
/// `NFT_MSG_NEWGEN`: the end of one committed transaction.
const NFT_MSG_NEWGEN: u8 = 15;
/// `NFTA_GEN_PROC_PID` and `NFTA_GEN_PROC_NAME`.
const NFTA_GEN_PROC_PID: u16 = 2;
const NFTA_GEN_PROC_NAME: u16 = 3;
/// How much the kernel may queue for this socket before it overruns (`SO_RCVBUFFORCE`; a
/// flush of a 100k-element set announces every element). Memory is only used while queued.
const RCVBUF: usize = 64 << 20;
/// A burst ends after this much quiet...
const QUIET: Duration = Duration::from_millis(25);
/// ...or this long after it began, whichever comes first.
const MAX_BURST: Duration = Duration::from_millis(150);
/// How long a reaped child's pid still counts as trustd's own (its transaction's
/// notifications may be read after it was reaped).
const OWN_GRACE: Duration = Duration::from_secs(5);

/// What one kind of message does to what (for the audit record's description).
fn describe(msg: u8) -> Option<(&'static str, &'static str, u16)> {
    // (verb, object, attribute holding the object's own name; 0: the table itself)
    Some(match msg {
        0 => ("added or changed", "table", 0),
        2 | 26 => ("deleted", "table", 0),
        3 => ("added or changed", "chain", 3),
        5 | 27 => ("deleted", "chain", 3),
        6 => ("added or replaced", "rule in chain", 2),
        8 | 28 => ("deleted", "rule in chain", 2),
        9 => ("added or changed", "set", 2),
        11 | 29 => ("deleted", "set", 2),
        12 => ("added", "element in set", 2),
        14 | 30 => ("removed", "element in set", 2),
        18 => ("added or changed", "object", 2),
        20 | 31 => ("deleted", "object", 2),
        22 => ("added or changed", "flowtable", 2),
        24 | 32 => ("deleted", "flowtable", 2),
        _ => return None,
    })
}

/// What happened to one of trustd's tables during a burst.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableChange {
    /// Transactions by other processes that touched the table, one line each: who
    /// (`nft (pid 4242)`) and what (`70000 element in set c0_v4h removed`). Names of
    /// objects only, never element values.
    pub foreign: Vec<String>,
    /// Transactions by trustd's own `nft` children (counted, otherwise ignored).
    pub own: u32,
    /// The sets whose elements others added or removed (sorted, no duplicates).
    pub element_sets: Vec<String>,
    /// Others changed something besides set elements (a table, chain, rule, set, object or
    /// flowtable).
    pub structure: bool,
    /// Notifications were lost: the table may have changed in any way.
    pub unknown: bool,
}

impl TableChange {
    /// Whether the daemon has something to look at (a foreign change or lost notifications).
    pub fn needs_attention(&self) -> bool {
        !self.foreign.is_empty() || self.unknown
    }
}

/// What a burst of notifications says about trustd's two tables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// The policy table (`inet trustd`).
    pub policy: TableChange,
    /// The blocklist table (`inet trustd_intel`).
    pub intel: TableChange,
    /// The watcher stopped (its socket failed and could not be opened again): no more
    /// notifications will come, so the periodic check must cover everything again.
    pub stopped: bool,
    /// Why notifications were lost, if they were: the socket overran (`ENOBUFS`), a message
    /// was cut, or a receive failed and the watcher subscribed again. Both tables are then
    /// marked unknown (to be read back) and the gap is audited.
    pub gap: Option<String>,
}

impl Changes {
    /// Whether the daemon has something to do.
    pub fn needs_attention(&self) -> bool {
        self.policy.needs_attention() || self.intel.needs_attention() || self.stopped
    }
}

/// The pids of trustd's own `nft` children, alive or reaped less than [`OWN_GRACE`] ago.
static OWN: Mutex<Vec<(u32, Option<Instant>)>> = Mutex::new(Vec::new());

/// A child process of trustd that changes nftables (an `nft` run). Register it as soon as
/// it is spawned and drop the guard once it is reaped: its transactions are then recognised
/// as trustd's own, not as drift.
#[derive(Debug)]
pub struct OwnChild(u32);

impl OwnChild {
    /// Register `pid` (a child just spawned).
    pub fn register(pid: u32) -> Self {
        let mut own = OWN
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        own.retain(|(_, reaped)| reaped.is_none_or(|t| now.duration_since(t) < OWN_GRACE));
        own.push((pid, None));
        Self(pid)
    }
}

impl Drop for OwnChild {
    fn drop(&mut self) {
        let mut own = OWN
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (pid, reaped) in own.iter_mut() {
            if *pid == self.0 && reaped.is_none() {
                *reaped = Some(Instant::now());
            }
        }
    }
}

/// Whether trustd's `nft` children write the blocklist table too (only when it cannot be
/// written over netlink; see [`children_write_intel`]). Otherwise only trustd's own threads
/// commit to it, and a transaction of any other pid there is foreign: a reaped child's pid
/// can be won by another process (trustd starts an `nft` child at every check), so the grace
/// that lets a reaped child's late notification count as trustd's must not cover the table
/// no child writes.
static CHILDREN_WRITE_INTEL: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Say that the blocklist table is written through `nft` children from now on (no netlink
/// socket for it).
pub fn children_write_intel() {
    CHILDREN_WRITE_INTEL.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// Whether `pid` is trustd itself or one of its threads (the kernel names the committing
/// thread, which may be any of trustd's).
fn is_self(pid: u32) -> bool {
    pid == std::process::id() || std::path::Path::new(&format!("/proc/self/task/{pid}")).exists()
}

/// Whether `pid` committed on trustd's behalf: trustd itself, a registered child, or (should the
/// notification come before the registration) a live process whose parent is trustd.
fn is_own(pid: u32) -> bool {
    let now = Instant::now();
    let registered = OWN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .any(|(p, reaped)| *p == pid && reaped.is_none_or(|t| now.duration_since(t) < OWN_GRACE));
    is_self(pid) || registered || parent_of(pid) == Some(std::process::id())
}

/// The parent pid of a live process (`/proc/PID/stat`, the field after the command name).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

/// A NUL-terminated string attribute, cut to what an audit record may carry: up to 32
/// characters of `[A-Za-z0-9_.-]`, others replaced by `?`.
fn name(v: &[u8]) -> String {
    v.iter()
        .take_while(|b| **b != 0)
        .take(32)
        .map(|b| {
            let c = char::from(*b);
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c
            } else {
                '?'
            }
        })
        .collect()
}

/// Which of the two tables (0 policy, 1 intel), the kind of object (its message number
/// with the deletion variants folded, so that a table comes first), what was done, to which
/// object.
type Touch = (usize, u8, &'static str, &'static str, String);

/// Accumulates one transaction's messages until its `NEWGEN`, then bursts until quiet.
#[derive(Debug, Default)]
struct Parser {
    tables: [String; 2],
    /// The current transaction: counts per (table, verb, object, name).
    txn: BTreeMap<Touch, u64>,
    /// What the burst so far says.
    out: Changes,
}

impl Parser {
    /// Every message of one datagram.
    fn datagram(&mut self, buf: &[u8]) {
        let mut off = 0;
        while off + 16 <= buf.len() {
            let h = &buf[off..off + 16];
            let len = u32::from_ne_bytes([h[0], h[1], h[2], h[3]]) as usize;
            let kind = u16::from_ne_bytes([h[4], h[5]]);
            if len < 16 || off + len > buf.len() {
                // A cut message: what it said is lost.
                self.lost("a notification arrived cut short");
                return;
            }
            self.message(kind, &buf[off + 16..off + len]);
            off += (len + 3) & !3;
        }
    }

    fn message(&mut self, kind: u16, body: &[u8]) {
        if kind >> 8 != NFNL_SUBSYS_NFTABLES || body.len() < 4 {
            return;
        }
        let msg = (kind & 0xff) as u8;
        let family = body[0];
        let attrs_of = || attrs(&body[4..]);
        if msg == NFT_MSG_NEWGEN {
            let pid = attrs_of()
                .find(|(t, v)| *t == NFTA_GEN_PROC_PID && v.len() == 4)
                .map(|(_, v)| u32::from_be_bytes([v[0], v[1], v[2], v[3]]));
            let proc_name = attrs_of()
                .find(|(t, _)| *t == NFTA_GEN_PROC_NAME)
                .map_or_else(|| "?".to_owned(), |(_, v)| name(v));
            self.commit(pid, &proc_name);
            return;
        }
        let Some((verb, object, name_attr)) = describe(msg) else {
            return;
        };
        if family != NFPROTO_INET {
            return;
        }
        let Some(raw) = attrs_of().find(|(t, _)| *t == 1).map(|(_, v)| v) else {
            return;
        };
        let raw = raw.split(|b| *b == 0).next().unwrap_or_default();
        let Some(which) = self.tables.iter().position(|t| t.as_bytes() == raw) else {
            return;
        };
        let table = self.tables[which].clone();
        let what = if name_attr == 0 {
            table
        } else {
            attrs_of()
                .find(|(t, _)| *t == name_attr)
                .map_or_else(String::new, |(_, v)| name(v))
        };
        // A set element message may carry many elements; counted as one message each
        // would understate a flush, so count the elements in its list (attribute 3).
        let n = if object == "element in set" {
            attrs_of()
                .find(|(t, _)| *t == 3)
                .map_or(1, |(_, list)| attrs(list).count().max(1) as u64)
        } else {
            1
        };
        let rank = match msg {
            0 | 2 | 26 => 0,
            3 | 5 | 27 => 1,
            6 | 8 | 28 => 2,
            9 | 11 | 29 => 3,
            12 | 14 | 30 => 4,
            _ => 5,
        };
        *self
            .txn
            .entry((which, rank, verb, object, what))
            .or_default() += n;
    }

    /// A transaction ended: attribute its changes to its process.
    fn commit(&mut self, pid: Option<u32>, proc_name: &str) {
        let txn = std::mem::take(&mut self.txn);
        if txn.is_empty() {
            return;
        }
        // The policy table: trustd and its `nft` children. The blocklist table: trustd's own
        // threads only, unless children write it (see CHILDREN_WRITE_INTEL).
        let own_policy = pid.is_some_and(is_own);
        let own_intel = pid.is_some_and(|p| {
            is_self(p)
                || (CHILDREN_WRITE_INTEL.load(std::sync::atomic::Ordering::SeqCst) && is_own(p))
        });
        let mut lines: [Vec<String>; 2] = Default::default();
        let mut elements: [Vec<String>; 2] = Default::default();
        let mut structure = [false; 2];
        for ((which, rank, verb, object, what), n) in txn {
            if rank == 4 {
                elements[which].push(what.clone());
            } else {
                structure[which] = true;
            }
            lines[which].push(format!("{n} {object} {what} {verb}"));
        }
        for (which, parts) in lines.into_iter().enumerate() {
            if parts.is_empty() {
                continue;
            }
            let t = if which == 0 {
                &mut self.out.policy
            } else {
                &mut self.out.intel
            };
            if (which == 0 && own_policy) || (which == 1 && own_intel) {
                t.own += 1;
                continue;
            }
            t.structure |= structure[which];
            for set in &elements[which] {
                if let Err(at) = t.element_sets.binary_search(set) {
                    t.element_sets.insert(at, set.clone());
                }
            }
            if t.foreign.len() < 8 {
                let who = match pid {
                    Some(p) => format!("{proc_name} (pid {p})"),
                    None => format!("{proc_name} (pid unknown)"),
                };
                let mut parts = parts;
                if parts.len() > 6 {
                    let more = parts.len() - 6;
                    parts.truncate(6);
                    parts.push(format!("{more} more kinds of change"));
                }
                t.foreign.push(format!("{who}: {}", parts.join(", ")));
            } else {
                t.unknown = true;
            }
        }
    }

    /// Notifications were lost (`why`): both tables may have changed in any way.
    fn lost(&mut self, why: &str) {
        if self.out.gap.is_none() {
            self.out.gap = Some(why.to_owned());
        }
        self.txn.clear();
        self.out.policy.unknown = true;
        self.out.intel.unknown = true;
    }
}

/// A subscription to nftables change notifications, filtered to trustd's two tables.
#[derive(Debug)]
pub struct TableWatcher {
    sock: Socket,
    parser: Parser,
}

impl TableWatcher {
    /// Subscribe (needs CAP_NET_ADMIN) to the changes of `inet POLICY` and `inet INTEL`.
    /// Subscribe before trustd's first apply, so that nothing after it goes unseen.
    pub fn open(policy_table: &str, intel_table: &str) -> std::io::Result<Self> {
        let mut sock = Socket::new(NETLINK_NETFILTER)?;
        sock.bind_auto()?;
        sock.add_membership(NFNLGRP_NFTABLES)?;
        if let Err(e) = setsockopt(&sock, sockopt::RcvBufForce, &RCVBUF) {
            // Without the larger buffer a big flush overruns sooner; that is still seen
            // (ENOBUFS), only less precisely.
            tracing::warn!(
                "nftables notifications: receive buffer not enlarged: {}",
                std::io::Error::from(e)
            );
        }
        Ok(Self {
            sock,
            parser: Parser {
                tables: [policy_table.to_owned(), intel_table.to_owned()],
                ..Parser::default()
            },
        })
    }

    /// Wait up to `timeout` for the socket to become readable.
    fn readable(&self, timeout: Duration) -> std::io::Result<bool> {
        let mut pfd = [PollFd::new(self.sock.as_fd(), PollFlags::POLLIN)];
        let timeout = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
        match poll(&mut pfd, timeout) {
            Ok(0) => Ok(false),
            Ok(_) => Ok(true),
            Err(nix::errno::Errno::EINTR) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Read one datagram into the parser; an overrun marks both tables unknown.
    fn read_one(&mut self) -> std::io::Result<()> {
        match self.sock.recv_from_full() {
            // Only the kernel's notifications (source port id 0): a process with
            // CAP_NET_ADMIN may send to this socket or to the notification group, and must
            // not make trustd audit a change no one made, or hide one.
            Ok((data, from)) if from.port_number() == 0 => {
                self.parser.datagram(&data);
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                self.parser
                    .lost("receive buffer overrun (ENOBUFS): the kernel dropped notifications");
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Block until a burst of notifications touching trustd's tables ends (quiet for 25 ms,
    /// or 150 ms after it began) and return what it says. Bursts of trustd's own
    /// transactions only come back too (with nothing that needs attention).
    pub fn next_burst(&mut self) -> std::io::Result<Changes> {
        loop {
            self.readable(Duration::from_secs(3600))?;
            self.read_one()?;
            if self.parser.out == Changes::default() {
                continue;
            }
            let start = Instant::now();
            while start.elapsed() < MAX_BURST && self.readable(QUIET)? {
                self.read_one()?;
            }
            return Ok(std::mem::take(&mut self.parser.out));
        }
    }

    /// Hand every burst that needs attention to `send` until it returns false (the
    /// receiver is gone). When a receive fails, subscribe again (up to 5 tries, 100 ms to
    /// 1.6 s apart) and hand on a [`Changes`] with both tables unknown and the gap named, so
    /// that both are read back; only if subscribing keeps failing, hand on one last
    /// [`Changes`] saying the watcher stopped (so the periodic check covers everything).
    pub fn run(mut self, mut send: impl FnMut(Changes) -> bool) {
        let unknown = TableChange {
            unknown: true,
            ..TableChange::default()
        };
        loop {
            // A parser fault must not end watching silently: it ends it loudly instead.
            let next = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.next_burst()))
                .unwrap_or_else(|_| Err(std::io::Error::other("the notification parser failed")));
            match next {
                Ok(c) if c.needs_attention() => {
                    if !send(c) {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    let tables = self.parser.tables.clone();
                    let mut pause = Duration::from_millis(100);
                    let mut reopened = None;
                    for _ in 0..5 {
                        match Self::open(&tables[0], &tables[1]) {
                            Ok(w) => {
                                reopened = Some(w);
                                break;
                            }
                            Err(e2) => {
                                tracing::error!("nftables notifications: resubscribing: {e2}");
                                std::thread::sleep(pause);
                                pause *= 2;
                            }
                        }
                    }
                    let Some(w) = reopened else {
                        tracing::error!(
                            "nftables notifications: {e}; the periodic check takes over"
                        );
                        let _ = send(Changes {
                            policy: unknown.clone(),
                            intel: unknown.clone(),
                            stopped: true,
                            gap: Some(format!("receiving nftables notifications failed: {e}")),
                        });
                        return;
                    };
                    tracing::warn!("nftables notifications: {e}; subscribed again");
                    self = w;
                    if !send(Changes {
                        policy: unknown.clone(),
                        intel: unknown.clone(),
                        stopped: false,
                        gap: Some(format!(
                            "receiving nftables notifications failed: {e}; subscribed again"
                        )),
                    }) {
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nlmsg(kind: u16, family: u8, attrs: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut body = vec![family, 0, 0, 0];
        for (t, v) in attrs {
            let len = 4 + v.len();
            body.extend_from_slice(&(len as u16).to_ne_bytes());
            body.extend_from_slice(&t.to_ne_bytes());
            body.extend_from_slice(v);
            while body.len() % 4 != 0 {
                body.push(0);
            }
        }
        let mut m = Vec::new();
        m.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(&body);
        m
    }

    fn s(v: &str) -> Vec<u8> {
        let mut b = v.as_bytes().to_vec();
        b.push(0);
        b
    }

    fn nft(msg: u16) -> u16 {
        (NFNL_SUBSYS_NFTABLES << 8) | msg
    }

    fn gen_msg(pid: u32) -> Vec<u8> {
        nlmsg(
            nft(15),
            0,
            &[
                (1, 7u32.to_be_bytes().to_vec()),
                (2, pid.to_be_bytes().to_vec()),
                (3, s("nft")),
            ],
        )
    }

    fn parser() -> Parser {
        Parser {
            tables: ["trustd".into(), "trustd_intel".into()],
            ..Parser::default()
        }
    }

    #[test]
    fn a_foreign_flush_of_an_intel_set_is_attributed_and_counted_without_values() {
        let mut p = parser();
        // Element list (attribute 3) holding three elements, as a flush announces them.
        let elem = |a: u8| {
            let mut e = Vec::new();
            e.extend_from_slice(&12u16.to_ne_bytes());
            e.extend_from_slice(&1u16.to_ne_bytes());
            e.extend_from_slice(&[8, 0, 1, 0, 10, 0, 0, a]);
            e
        };
        let list: Vec<u8> = (1..=3).flat_map(elem).collect();
        let mut d = nlmsg(
            nft(14),
            NFPROTO_INET,
            &[(1, s("trustd_intel")), (2, s("c0_v4h")), (3, list)],
        );
        // pid 1 (init) is never trustd's own child.
        d.extend(gen_msg(1));
        p.datagram(&d);
        assert!(p.out.policy.foreign.is_empty());
        assert_eq!(
            p.out.intel.foreign,
            ["nft (pid 1): 3 element in set c0_v4h removed"]
        );
        assert!(!p.out.intel.foreign[0].contains("10.0.0"));
    }

    #[test]
    fn other_tables_and_families_are_ignored_and_own_children_are_recognised() {
        let mut p = parser();
        let mut d = nlmsg(nft(8), NFPROTO_INET, &[(1, s("other")), (2, s("output"))]);
        d.extend(nlmsg(nft(8), 2, &[(1, s("trustd")), (2, s("output"))]));
        d.extend(gen_msg(1));
        p.datagram(&d);
        assert_eq!(p.out, Changes::default());

        let me = std::process::id();
        let guard = OwnChild::register(me);
        let mut d = nlmsg(nft(2), NFPROTO_INET, &[(1, s("trustd"))]);
        d.extend(gen_msg(me));
        p.datagram(&d);
        assert_eq!(p.out.policy.own, 1);
        assert!(!p.out.policy.needs_attention());
        drop(guard);
    }

    #[test]
    fn a_cut_message_makes_both_tables_unknown() {
        let mut p = parser();
        let mut d = nlmsg(nft(6), NFPROTO_INET, &[(1, s("trustd")), (2, s("output"))]);
        d.truncate(d.len() - 4);
        p.datagram(&d);
        assert!(p.out.policy.unknown && p.out.intel.unknown);
        assert_eq!(
            p.out.gap.as_deref(),
            Some("a notification arrived cut short")
        );
    }

    #[test]
    fn rule_and_chain_edits_name_the_chain() {
        let mut p = parser();
        let mut d = nlmsg(nft(6), NFPROTO_INET, &[(1, s("trustd")), (2, s("output"))]);
        d.extend(nlmsg(
            nft(5),
            NFPROTO_INET,
            &[(1, s("trustd")), (3, s("in put"))],
        ));
        d.extend(gen_msg(1));
        p.datagram(&d);
        assert_eq!(
            p.out.policy.foreign,
            ["nft (pid 1): 1 chain in?put deleted, 1 rule in chain output added or replaced"]
        );
    }
}
