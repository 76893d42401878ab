//! Bus-liveness supervision and the service manager's view of trustd: `READY=1`, `STATUS=`,
//! `RELOADING=1`, `STOPPING=1` and the watchdog pings (`sd_notify(3)`).
//!
//! The decisions are pure ([`connection_lost`], [`engine_turns`], [`Health`],
//! [`StatusLine`]); [`supervise`] and [`report_status`] are the loops that act on them. The
//! timings come from [`crate::daemon::watchdog::Timing`]. See docs/ARCHITECTURE.md
//! ("The daemon process and the binaries").

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use crate::daemon::watchdog::{Timing, status_line};
use crate::daemon::{Command, Heartbeat};
use crate::posture::Posture;
use crate::sys::NotifyState;

/// How often the supervisor asks the bus daemon for its id, to learn that the connection is
/// still there (and how long it waits for the answer).
pub const BUS_PING_EVERY: Duration = Duration::from_secs(5);

/// Tell the service manager `states`; a failure is logged, never fatal.
pub fn notify(states: &[NotifyState]) {
    if let Err(e) = crate::sys::notify(states) {
        tracing::warn!("telling the service manager {states:?}: {e}");
    }
}

/// SIGHUP: `RELOADING=1` (with `MONOTONIC_USEC`, as `Type=notify-reload` wants) now, and the
/// reload command for the engine; `READY=1` is sent once the engine has carried it out.
pub fn reload_notified() -> Command {
    let now = NotifyState::monotonic_usec_now();
    match &now {
        Ok(t) => notify(&[NotifyState::Reloading, t.clone()]),
        Err(_) => notify(&[NotifyState::Reloading]),
    }
    let (tx, rx) = oneshot::channel();
    // A thread of its own, so that the signal thread stays free to take a SIGTERM while the
    // engine reloads.
    let waiter = std::thread::Builder::new()
        .name("reload-ready".into())
        .spawn(move || {
            if rx.blocking_recv().is_ok() {
                notify(&[NotifyState::Ready]);
            }
        });
    if let Err(e) = waiter {
        tracing::warn!("READY after the reload will not be sent: {e}");
    }
    Command::Reload { done: Some(tx) }
}

/// The `STATUS=` text last sent, and whether a new posture changes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusLine {
    last: String,
}

impl StatusLine {
    /// Starting from `sent`, the text sent with `READY=1`.
    pub fn new(sent: String) -> Self {
        Self { last: sent }
    }

    /// `status` (see [`status_line`]) if it is to be sent, or `None` if it is the text sent
    /// last.
    pub fn update(&mut self, status: String) -> Option<&str> {
        if status == self.last {
            return None;
        }
        self.last = status;
        Some(&self.last)
    }
}

/// Keep `STATUS=` in step with posture: sent when its text changes. `last` is what was sent
/// with `READY=1`. Ends when the posture's sender is gone.
pub async fn report_status(mut posture: watch::Receiver<Posture>, last: String) {
    let mut line = StatusLine::new(last);
    while posture.changed().await.is_ok() {
        if let Some(status) = line.update(status_line(&posture.borrow_and_update())) {
            notify(&[NotifyState::Status(status)]);
        }
    }
}

/// Whether the answer `e` to a call to the bus daemon means the connection is lost. Any
/// answer from the other side, even an error reply, means the connection is there.
pub fn connection_lost(e: &zbus::Error) -> bool {
    !matches!(e, zbus::Error::MethodError(..) | zbus::Error::FDO(_))
}

/// Whether the engine turns: it finished a drift check within `bound` (`age`: since its last
/// heartbeat, `None` before the first), or it waits for a child (nft) still within its
/// deadline. A hung nft is killed at its deadline and reported; it must not get trustd itself
/// killed (and its retries and posture lost) over and over.
pub fn engine_turns(age: Option<Duration>, bound: Duration, child_within_deadline: bool) -> bool {
    age.is_some_and(|a| a <= bound) || child_within_deadline
}

/// Whether the engine is still before its first turn (no heartbeat yet) and within `bound`
/// of supervision starting (`since_start`): a round then neither feeds the watchdog nor says
/// anything is wrong (at every start the first round came before the first drift check and
/// logged the engine as wedged). Past `bound` without a heartbeat, the engine is wedged.
pub fn starting(age: Option<Duration>, since_start: Duration, bound: Duration) -> bool {
    age.is_none() && since_start <= bound
}

/// What one supervision round does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Both halves work: feed the watchdog (if there is one).
    Feed {
        /// They work again after a round that did not (worth a log line).
        recovered: bool,
    },
    /// A half stopped working this round: stop feeding, and say which (once).
    Starve,
    /// Still not working: keep not feeding, nothing new to say.
    StillStarved,
}

/// Whether trustd was healthy at the last round: the watchdog is fed only while the engine
/// turns and the bus service answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    healthy: bool,
}

impl Default for Health {
    fn default() -> Self {
        Self { healthy: true }
    }
}

impl Health {
    /// One round: the engine turns (`engine_ok`), the bus service answers (`bus_ok`).
    pub fn observe(&mut self, engine_ok: bool, bus_ok: bool) -> Verdict {
        let was = std::mem::replace(&mut self.healthy, engine_ok && bus_ok);
        match (was, self.healthy) {
            (was, true) => Verdict::Feed { recovered: !was },
            (true, false) => Verdict::Starve,
            (false, false) => Verdict::StillStarved,
        }
    }
}

/// Feed the service manager's watchdog only while both halves of trustd work: the engine
/// finished a drift check recently, and the service answers a property read sent through the
/// bus. Pings go at half the watchdog timeout (see [`Timing`]), and only if `$WATCHDOG_PID`
/// is unset or ours. If the bus connection is lost, set `lost`, send `stop` the engine
/// (`STOPPING=1` to the service manager) and return, so that the service manager restarts
/// trustd (exit 3); enforcement stays in the kernel meanwhile.
pub async fn supervise(
    service: crate::dbus::Service,
    heartbeat: Arc<Heartbeat>,
    timing: Timing,
    stop: mpsc::Sender<Command>,
    lost: Arc<AtomicBool>,
) {
    let mut tick = tokio::time::interval(timing.ping);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last_ping = tokio::time::Instant::now();
    let started = tokio::time::Instant::now();
    let mut health = Health::default();
    loop {
        tick.tick().await;
        // Without the bus, posture and commands are unreachable: stop so that the service
        // manager restarts trustd. No answer in time is not "lost" (the watchdog decides
        // that).
        if last_ping.elapsed() >= BUS_PING_EVERY {
            last_ping = tokio::time::Instant::now();
            let ping = service.conn.call_method(
                Some("org.freedesktop.DBus"),
                "/org/freedesktop/DBus",
                Some("org.freedesktop.DBus"),
                "GetId",
                &(),
            );
            if let Ok(Err(e)) = tokio::time::timeout(BUS_PING_EVERY, ping).await
                && connection_lost(&e)
            {
                tracing::error!("the bus connection is lost ({e}): stopping");
                lost.store(true, Ordering::SeqCst);
                notify(&[
                    NotifyState::Stopping,
                    NotifyState::Status("the bus connection was lost: restarting"),
                ]);
                let _ = stop
                    .send(Command::Stop("the bus connection was lost"))
                    .await;
                return;
            }
        }
        if starting(heartbeat.age(), started.elapsed(), timing.engine_bound) {
            continue;
        }
        let engine_ok = engine_turns(
            heartbeat.age(),
            timing.engine_bound,
            crate::sys::child::waiting_within_deadline(),
        );
        let bus_ok = service.answers(timing.answer_bound).await;
        match health.observe(engine_ok, bus_ok) {
            Verdict::Feed { recovered } => {
                if recovered {
                    tracing::info!("the engine and the bus service answer again");
                }
                if timing.watchdog.is_some() {
                    notify(&[NotifyState::Watchdog]);
                }
            }
            Verdict::Starve => tracing::error!(
                "not feeding the watchdog: engine {}, bus service {}",
                if engine_ok { "turns" } else { "wedged" },
                if bus_ok { "answers" } else { "does not answer" }
            ),
            Verdict::StillStarved => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_is_fed_only_while_both_halves_work_and_each_change_is_said_once() {
        let mut h = Health::default();
        assert_eq!(h.observe(true, true), Verdict::Feed { recovered: false });
        // A wedged engine starves the watchdog, whatever the bus does.
        assert_eq!(h.observe(false, true), Verdict::Starve);
        assert_eq!(h.observe(false, true), Verdict::StillStarved);
        assert_eq!(h.observe(true, false), Verdict::StillStarved);
        assert_eq!(h.observe(true, true), Verdict::Feed { recovered: true });
        assert_eq!(h.observe(true, true), Verdict::Feed { recovered: false });
        // A bus service that does not answer starves it too.
        assert_eq!(h.observe(true, false), Verdict::Starve);
        assert_eq!(h.observe(false, false), Verdict::StillStarved);
    }

    #[test]
    fn engine_turns_within_its_bound_or_while_nft_is_within_its_deadline() {
        let bound = Duration::from_secs(30);
        assert!(engine_turns(Some(Duration::from_secs(1)), bound, false));
        assert!(engine_turns(Some(bound), bound, false));
        assert!(!engine_turns(
            Some(bound + Duration::from_millis(1)),
            bound,
            false
        ));
        // Before its first drift check the engine has not turned yet.
        assert!(!engine_turns(None, bound, false));
        // Waiting for nft within its deadline is bounded work, not a wedge.
        assert!(engine_turns(None, bound, true));
        assert!(engine_turns(Some(Duration::from_secs(600)), bound, true));
    }

    /// Regression: every start logged "engine wedged" once, the first round coming before
    /// the engine's first drift check. Before its first turn and within the bound the round
    /// is skipped; past the bound with no turn at all, the engine is wedged.
    #[test]
    fn the_first_rounds_before_the_engines_first_turn_are_not_a_wedge() {
        let bound = Duration::from_secs(15);
        assert!(starting(None, Duration::from_millis(2), bound));
        assert!(starting(None, bound, bound));
        assert!(!starting(None, bound + Duration::from_millis(1), bound));
        assert!(!starting(
            Some(Duration::from_millis(1)),
            Duration::from_millis(2),
            bound
        ));
    }

    #[test]
    fn an_error_reply_from_the_bus_daemon_is_not_a_lost_connection() {
        let reply = zbus::Error::FDO(Box::new(zbus::fdo::Error::AccessDenied("no".into())));
        assert!(!connection_lost(&reply));
        let gone = zbus::Error::InputOutput(Arc::new(std::io::Error::from(
            std::io::ErrorKind::BrokenPipe,
        )));
        assert!(connection_lost(&gone));
        assert!(connection_lost(&zbus::Error::Failure("closed".into())));
    }

    #[test]
    fn status_line_is_sent_only_when_its_text_changes() {
        let ready = "trusted".to_owned();
        let mut line = StatusLine::new(ready.clone());
        assert_eq!(
            line.update(ready),
            None,
            "same text as READY's: not sent again"
        );
        let degraded = "degraded: the policy expires in 2 days".to_owned();
        assert_eq!(line.update(degraded.clone()), Some(degraded.as_str()));
        assert_eq!(line.update(degraded), None);
        assert_eq!(line.update("trusted".into()), Some("trusted"));
    }
}
