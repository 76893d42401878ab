//! The event loop's core: one thread owns the [`Device`] and the netfilter backend, and
//! takes commands from one queue, so two callers never interleave a transition. A call is
//! authorized here (from the caller's credentials as the bus daemon reported them), carried
//! out, audited, the posture republished, and only then answered.

use std::sync::PoisonError;

use tokio::sync::{mpsc, oneshot, watch};

use super::api::{
    Answer, AuditCheck, Call, CallError, Caller, DENIED_KIND, LaunchAnswer, LifecycleChange,
    Method, RoleGroups, SharedGroups,
};
use super::device::budget::{self, RecordBudget, Suppressed};
use super::{Device, DeviceError};
use crate::audit::{Actor, Entry, Outcome};
use crate::netfilter::Backend;
use crate::posture::Posture;
use crate::sys::netlink::LinkEvent;
use crate::timefmt::Timestamp;

/// What the engine's queue carries.
#[derive(Debug)]
pub enum Command {
    /// A caller's request.
    Call {
        /// Who.
        caller: Caller,
        /// What, and where its answer goes.
        call: Call,
    },
    /// Check the kernel for drift.
    Tick,
    /// Links changed.
    Links(Vec<LinkEvent>),
    /// Link notifications were lost; every link as read again (see
    /// [`crate::sys::netlink::LinkUpdate::Resync`]).
    LinksResynced {
        /// Every link now.
        links: Vec<crate::sys::netlink::LinkState>,
        /// What was lost and why.
        why: String,
        /// When it was noticed.
        at: String,
    },
    /// nftables notifications say trustd's tables changed (or may have).
    TablesChanged(crate::sys::nft_events::Changes),
    /// SIGHUP: reload configuration and state, re-enforce; `done` is told when that is over
    /// (whatever its outcome), so that the service manager hears `READY=1` again.
    Reload {
        /// Told once the reload is over.
        done: Option<oneshot::Sender<()>>,
    },
    /// Stop, leaving enforcement in the kernel; why (SIGTERM, the bus went away).
    Stop(&'static str),
}

/// The engine's three queues, served in this order: `control` (signals, link changes, the
/// service's own reports) before `admin` (calls of uid 0 and the admin group) before `user`
/// (everyone else). A flood in a lower lane never delays a higher one by more than the one
/// command the engine is carrying out; drift checks run on the engine's own timer.
#[derive(Debug)]
pub struct Queues {
    /// Signals, link changes, busy summaries.
    pub control: mpsc::Receiver<Command>,
    /// Calls of privileged callers.
    pub admin: mpsc::Receiver<Command>,
    /// Calls of everyone else.
    pub user: mpsc::Receiver<Command>,
}

/// The sending ends of [`Queues`].
#[derive(Debug, Clone)]
pub struct Senders {
    /// Signals, link changes, busy summaries.
    pub control: mpsc::Sender<Command>,
    /// Calls of privileged callers.
    pub admin: mpsc::Sender<Command>,
    /// Calls of everyone else (the bus service only `try_send`s here: a full lane is a
    /// refusal, never a wait).
    pub user: mpsc::Sender<Command>,
}

/// Capacity of the user lane: ordinary callers' calls waiting for the engine, all uids
/// together (each uid is held to far fewer by the bus service).
pub const USER_LANE: usize = 256;

/// The engine's queues: (senders, receivers).
pub fn queues() -> (Senders, Queues) {
    let (control_tx, control) = mpsc::channel(64);
    let (admin_tx, admin) = mpsc::channel(64);
    let (user_tx, user) = mpsc::channel(USER_LANE);
    (
        Senders {
            control: control_tx,
            admin: admin_tx,
            user: user_tx,
        },
        Queues {
            control,
            admin,
            user,
        },
    )
}

/// When the engine last finished a drift check, in milliseconds of the monotonic clock
/// (`CLOCK_MONOTONIC`); 0 before the first. The service manager's watchdog is fed only while
/// this is recent, so a wedged engine is restarted.
#[derive(Debug, Default)]
pub struct Heartbeat(std::sync::atomic::AtomicU64);

impl Heartbeat {
    fn beat(&self) {
        self.0.store(
            crate::sys::monotonic_ns() / 1_000_000,
            std::sync::atomic::Ordering::SeqCst,
        );
    }

    /// How long ago the engine last finished a drift check (`None`: never).
    pub fn age(&self) -> Option<std::time::Duration> {
        match self.0.load(std::sync::atomic::Ordering::SeqCst) {
            0 => None,
            t => Some(std::time::Duration::from_millis(
                (crate::sys::monotonic_ns() / 1_000_000).saturating_sub(t),
            )),
        }
    }
}

/// How the engine reads who holds which role again on reload.
pub type Reconfigure = Box<dyn FnMut() -> Result<RoleGroups, String> + Send>;

/// The engine: the device, the backend, who holds which role, and where posture goes.
pub struct Engine<B: Backend> {
    dev: Device,
    backend: B,
    groups: SharedGroups,
    posture: watch::Sender<Posture>,
    reconfigure: Reconfigure,
    clock: fn() -> Timestamp,
    checkpoint_every: u64,
    budget: RecordBudget,
    busy: BusySource,
    busy_recorded: std::time::Instant,
    monotonic: Monotonic,
}

/// Where the engine reads the monotonic clock for its record budget and its busy summaries:
/// [`std::time::Instant::now`] in the daemon; a test injects one it can move forward.
pub type Monotonic = Box<dyn Fn() -> std::time::Instant + Send>;

/// Where the engine takes the counts of calls refused before they reached it (the bus
/// service's admission limits): (uid, how many; `None`: callers not yet identified).
pub type BusySource = Box<dyn Fn() -> Vec<(Option<u32>, u64)> + Send>;

impl<B: Backend> std::fmt::Debug for Engine<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("dev", &self.dev)
            .field("groups", &self.groups)
            .finish_non_exhaustive()
    }
}

fn me() -> Actor {
    Actor::this_process()
}

/// A failure to enforce (nft failed, hung or is missing) is already audited and shown in
/// posture, and the ruleset in the kernel stays: it must not end the daemon, which retries
/// at its next check. Other errors (audit log, state directory) pass on.
fn survive<T>(r: Result<T, DeviceError>) -> Result<Option<T>, DeviceError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(DeviceError::Enforce(e)) => {
            tracing::error!("enforcement failed, the ruleset in the kernel stays: {e}");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

impl<B: Backend> Engine<B> {
    /// Enforce the device's effective policy and blocklists, and return the engine and the
    /// first posture (to publish before the bus name is taken).
    pub fn start(
        mut dev: Device,
        mut backend: B,
        groups: RoleGroups,
        reconfigure: Reconfigure,
        clock: fn() -> Timestamp,
    ) -> Result<(Self, watch::Receiver<Posture>), DeviceError> {
        // An nft that fails, hangs or is missing at start leaves the ruleset already loaded
        // (early boot's) in force; the failure is recorded, posture shows it, and the drift
        // check tries again: serving posture beats a restart loop.
        if let Some(e) = survive(dev.enforce(&mut backend, me()))? {
            tracing::info!("enforcing {} (ruleset {})", e.mode, e.digest);
        }
        if let Err(err) = dev.enforce_intel(&mut backend, me()) {
            tracing::error!("blocklists not updated: {err}");
        }
        for why in dev.check_time(clock(), me())? {
            tracing::warn!("{why}");
        }
        let (tx, rx) = watch::channel(dev.posture(clock()));
        Ok((
            Self {
                dev,
                backend,
                groups: std::sync::Arc::new(std::sync::RwLock::new(groups)),
                posture: tx,
                reconfigure,
                clock,
                checkpoint_every: 1000,
                budget: RecordBudget::default(),
                busy: Box::new(Vec::new),
                busy_recorded: std::time::Instant::now(),
                monotonic: Box::new(std::time::Instant::now),
            },
            rx,
        ))
    }

    /// Sign a checkpoint whenever this many records were added since the last one (and at
    /// every clean stop). 0: only at stops and on request.
    pub fn set_checkpoint_every(&mut self, n: u64) {
        self.checkpoint_every = n;
    }

    /// Read the monotonic clock here (the record budget's minute, the busy summaries' minute)
    /// instead of [`std::time::Instant::now`]; the minute of busy summaries starts over.
    pub fn set_monotonic(&mut self, clock: Monotonic) {
        self.busy_recorded = clock();
        self.monotonic = clock;
    }

    /// Carry out one command as [`Self::run`] does between its waits (the engine driven
    /// in-process, step by step, with no timer of its own); `Ok(true)` when it was Stop.
    /// A [`Command::Tick`] here is one drift check.
    ///
    /// # Errors
    ///
    /// What ends [`Self::run`]: the audit log or the state directory failed where no
    /// change may go unrecorded.
    pub fn step(&mut self, cmd: Command) -> Result<bool, DeviceError> {
        self.handle(cmd, &Heartbeat::default())
    }

    /// The backend (a fake's failures are set through it in tests).
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    /// The device, read-only.
    pub fn device(&self) -> &Device {
        &self.dev
    }

    /// Where to take the counts of calls refused as busy before they reached the engine;
    /// they are recorded once a minute (one record per uid) and at stop.
    pub fn set_busy_source(&mut self, source: BusySource) {
        self.busy = source;
    }

    /// One record per uid for the calls refused as busy since the last time.
    fn record_busy(&self) -> Result<(), DeviceError> {
        for (uid, n) in (self.busy)() {
            let who = uid.map_or_else(
                || "callers not yet identified".to_owned(),
                |u| format!("uid {u}"),
            );
            self.dev.audit().record(
                Entry::new(
                    "bus.busy",
                    Outcome::Refused,
                    Actor {
                        uid,
                        pid: None,
                        bus_name: None,
                    },
                )
                .reason(format!(
                    "{n} calls of {who} refused unheard: too many of its calls were already waiting; nothing changed"
                )),
            );
        }
        Ok(())
    }

    /// A checkpoint if enough records came since the last; a failure is logged (and shows
    /// when an admin asks for one), it changes nothing else.
    fn maybe_checkpoint(&self) {
        let (size, _) = self.dev.audit().tree_head();
        if self.checkpoint_every > 0
            && size >= self.dev.checkpointed_size() + self.checkpoint_every
            && let Err(e) = self.dev.checkpoint()
        {
            tracing::error!("{e}");
        }
    }

    /// One record per uid and kind for the records the budget did not let through.
    fn record_suppressed(&self, summaries: Vec<Suppressed>) -> Result<(), DeviceError> {
        for s in summaries {
            self.dev.audit().record(s.entry());
        }
        Ok(())
    }

    /// Append a record a call of `method` caused by itself, within its caller's budget
    /// for the method's kind ([`Method::budgeted_kind`]; a method without one is recorded
    /// under its name's budget).
    fn append_budgeted(
        &mut self,
        caller: &Caller,
        method: Method,
        entry: Entry,
    ) -> Result<(), CallError> {
        let kind = method.budgeted_kind().unwrap_or(method.name());
        self.append_budgeted_kind(caller, kind, entry)
    }

    /// Append a record a caller's call caused, within that caller's budget for `kind`.
    fn append_budgeted_kind(
        &mut self,
        caller: &Caller,
        kind: &'static str,
        entry: Entry,
    ) -> Result<(), CallError> {
        let now = (self.monotonic)();
        let (record, summaries) = self.budget.admit(caller.uid, caller.actor(), kind, now);
        self.record_suppressed(summaries)
            .map_err(|e| CallError::Failed(e.to_string()))?;
        if record {
            self.dev
                .audit()
                .append(entry)
                .map_err(|e| CallError::Failed(e.to_string()))?;
        }
        Ok(())
    }

    /// Who holds which role, as the engine sees it (updated on reload).
    pub fn groups(&self) -> SharedGroups {
        self.groups.clone()
    }

    /// Take commands until Stop (or until every sender is gone), and check the kernel for
    /// drift every `interval` on the engine's own timer, so that enforcement is maintained
    /// whatever the bus does. Storage that fails does not end the loop: changes are refused,
    /// drift is still repaired and links still followed, the records that could not be
    /// written are counted for the audit log's gap record, and posture names the failure.
    ///
    /// Run it on a runtime of its own thread (a current-thread tokio runtime): it waits only
    /// on the queues and the timer, and the blocking work (fsync, nft) runs between waits.
    pub async fn run(
        mut self,
        mut q: Queues,
        interval: std::time::Duration,
        heartbeat: std::sync::Arc<Heartbeat>,
    ) -> Result<(), DeviceError> {
        self.publish();
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // In priority order; a lane whose senders are all gone ends the loop.
            let next = std::future::poll_fn(|cx| {
                use std::task::Poll;
                if let Poll::Ready(c) = q.control.poll_recv(cx) {
                    return Poll::Ready(c);
                }
                if tick.poll_tick(cx).is_ready() {
                    return Poll::Ready(Some(Command::Tick));
                }
                if let Poll::Ready(c) = q.admin.poll_recv(cx) {
                    return Poll::Ready(c);
                }
                q.user.poll_recv(cx)
            })
            .await;
            let Some(cmd) = next else {
                return Ok(());
            };
            if self.handle(cmd, &heartbeat)? {
                return Ok(());
            }
        }
    }

    /// Carry out one command; `true` when it was Stop.
    fn handle(&mut self, cmd: Command, heartbeat: &Heartbeat) -> Result<bool, DeviceError> {
        // Each command gets its own nft children's deadlines (docs/ARCHITECTURE.md, "Child
        // processes").
        self.backend.begin_operation();
        match cmd {
            Command::Call { caller, call } => {
                let answer = self.call(&caller, call);
                self.maybe_checkpoint();
                self.publish();
                answer.send();
            }
            Command::Tick => {
                let now = (self.monotonic)();
                let summaries = self.budget.expire(now);
                self.record_suppressed(summaries)?;
                if now.duration_since(self.busy_recorded) >= budget::WINDOW {
                    self.busy_recorded = now;
                    self.record_busy()?;
                }
                // Storage that failed is tried again: the audit log's gap record, a probe
                // file in the state directory.
                self.dev.probe_storage();
                if let Some(Some(drift)) = survive(self.dev.check_drift(&mut self.backend, me()))? {
                    tracing::warn!(
                        "enforcement drift: {drift} (the audit log says whether it was put back)"
                    );
                }
                // Staleness and the clock are judged again on every tick, without a new input.
                for why in self.dev.check_time((self.clock)(), me())? {
                    tracing::warn!("{why}");
                }
                self.publish();
                // The watchdog is fed only while this is recent: it proves that this loop
                // turns and that the kernel's ruleset was just checked.
                heartbeat.beat();
            }
            Command::TablesChanged(changes) => {
                if let Some(Some(drift)) =
                    survive(self.dev.tables_changed(&mut self.backend, &changes, me()))?
                {
                    tracing::warn!(
                        "enforcement drift: {drift} (the audit log says whether it was put back)"
                    );
                }
                self.publish();
            }
            Command::Links(events) => {
                if let Some(status) = self.dev.links_changed(&events, me())? {
                    tracing::info!("network: {status}");
                }
                self.publish();
            }
            Command::LinksResynced { links, why, at } => {
                if let Some(status) = self.dev.links_resynced(&links, &why, &at, me())? {
                    tracing::info!("network: {status}");
                }
                self.publish();
            }
            Command::Reload { done } => {
                let r = self.reload();
                self.publish();
                if let Some(d) = done {
                    let _ = d.send(());
                }
                r?;
            }
            Command::Stop(why) => {
                let summaries = self.budget.drain();
                self.record_suppressed(summaries)?;
                self.record_busy()?;
                self.dev.audit().record(
                    Entry::new("trustd.stop", Outcome::Ok, me())
                        .reason(format!("{why}; enforcement stays in the kernel")),
                );
                // The log's last record is covered by a signed checkpoint.
                if let Err(e) = self.dev.checkpoint() {
                    tracing::error!("no checkpoint at stop: {e}");
                }
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn publish(&self) {
        let p = self.dev.posture((self.clock)());
        self.posture.send_if_modified(|old| {
            if *old == p {
                false
            } else {
                *old = p;
                true
            }
        });
    }

    fn reload(&mut self) -> Result<(), DeviceError> {
        match (self.reconfigure)() {
            Ok(groups) => {
                *self.groups.write().unwrap_or_else(PoisonError::into_inner) = groups;
                self.dev.set_config_fault(None, me());
            }
            Err(e) => {
                // As at a start with an unreadable file: no group holds a role (root stays
                // admin). Keeping the groups read before would keep a role the admin meant
                // to take away with the edit that broke the file.
                tracing::error!(
                    "configuration not reloaded ({e}): no group holds a role until it reads"
                );
                *self.groups.write().unwrap_or_else(PoisonError::into_inner) =
                    RoleGroups::default();
                self.dev.set_config_fault(Some(e), me());
            }
        }
        // A reload that cannot read the trust root or state keeps what is in force (the
        // failure is audited by reload); it never ends the daemon.
        if let Err(e) = self.dev.reload(me()) {
            tracing::error!("reload refused, the state in force stays: {e}");
            return Ok(());
        }
        if let Ok(links) = crate::sys::netlink::dump_links() {
            self.dev.set_links(&links);
        }
        survive(self.dev.enforce(&mut self.backend, me()))?;
        if let Err(err) = self.dev.enforce_intel(&mut self.backend, me()) {
            tracing::error!("blocklists not updated: {err}");
        }
        Ok(())
    }

    /// Authorize a call, carry it out and audit it; the answer is sent by the caller of
    /// this once the posture is republished.
    fn call(&mut self, caller: &Caller, call: Call) -> Answer {
        let method = call.method();
        if let Err(e) = self.authorize(caller, method) {
            return call.refuse(e);
        }
        if let Call::CheckLaunch(app, ..) | Call::ReportLaunch(app, ..) = &call
            && !crate::policy::is_valid_name(app)
        {
            let why = format!(
                "{:?} is not an app id; nothing changed",
                app.chars().take(80).collect::<String>()
            );
            return call.refuse(CallError::Refused(why));
        }
        let actor = caller.actor();
        let now = (self.clock)();
        match call {
            Call::SetPrivacy(on, tx) => Answer::new(tx, self.set_privacy(on, actor)),
            Call::ApplyBundle(bytes, tx) => {
                let r = self
                    .dev
                    .apply_policy(&bytes, actor.clone(), now)
                    .and_then(|a| self.dev.enforce(&mut self.backend, actor).map(|_| a));
                Answer::new(tx, r.map_err(CallError::from))
            }
            Call::ApplyIntel(bytes, tx) => {
                let r = self
                    .dev
                    .apply_intel(&bytes, actor.clone(), now)
                    .map(|mut a| {
                        match self.dev.enforce_intel(&mut self.backend, actor) {
                            Ok(_) => a.notes.extend(self.dev.blocklist_overlaps()),
                            Err(e) => {
                                tracing::error!("blocklists not updated: {e}");
                                a.notes.push(format!("blocklists not updated: {e}"));
                            }
                        }
                        a
                    });
                Answer::new(tx, r.map_err(CallError::from))
            }
            Call::ApplyTrustRoot(bytes, tx) => {
                let r = self
                    .dev
                    .apply_trust_root(&bytes, actor.clone(), now)
                    .and_then(|a| {
                        // A rotation can take the policy or the feed out of force: the kernel
                        // follows before the caller gets its reply.
                        self.dev.enforce(&mut self.backend, actor.clone())?;
                        if let Err(e) = self.dev.enforce_intel(&mut self.backend, actor) {
                            tracing::error!("blocklists not updated: {e}");
                        }
                        Ok(a)
                    });
                Answer::new(tx, r.map_err(CallError::from))
            }
            Call::ActivePolicy(tx) => {
                let r = match self.dev.policy() {
                    Some(p) => serde_json::to_string_pretty(p.payload())
                        .map_err(|e| CallError::Failed(e.to_string())),
                    None => Ok(String::new()),
                };
                Answer::new(tx, r)
            }
            Call::CompleteStep(step, tx) => {
                let r = self
                    .dev
                    .complete_step(&step, actor.clone())
                    .and_then(|changed| {
                        if changed {
                            self.dev.enforce(&mut self.backend, actor)?;
                        }
                        Ok(())
                    });
                Answer::new(tx, r.map_err(CallError::from))
            }
            Call::AuditTail(n, tx) => Answer::new(tx, self.tail(n)),
            Call::CheckLaunch(app, exe, tx) => {
                Answer::new(tx, self.check_launch(caller, method, app, &exe))
            }
            Call::ReportLaunch(app, started, reason, tx) => {
                let outcome = if started {
                    Outcome::Ok
                } else {
                    Outcome::Refused
                };
                let r = self.append_budgeted(
                    caller,
                    method,
                    Entry::new("launch.exec", outcome, caller.actor())
                        .reason(reason.chars().take(256).collect::<String>())
                        .digest("app", app),
                );
                Answer::new(tx, r)
            }
            Call::ApplyCommand(bytes, tx) => {
                let r =
                    self.dev
                        .apply_command(&bytes, actor.clone(), now)
                        .and_then(|(from, to)| {
                            self.dev.enforce(&mut self.backend, actor)?;
                            Ok(LifecycleChange {
                                from: from.as_str().to_owned(),
                                to: to.as_str().to_owned(),
                            })
                        });
                Answer::new(tx, r.map_err(CallError::from))
            }
            Call::DeviceHandle(verifier, tx) => Answer::new(
                tx,
                self.dev.device_handle(&verifier).map_err(CallError::from),
            ),
            Call::Checkpoint(tx) => Answer::new(tx, self.dev.checkpoint().map_err(CallError::from)),
            Call::Report(nonce, tx) => {
                Answer::new(tx, self.dev.report(&nonce, now).map_err(CallError::from))
            }
            Call::ActivateCredential(blob, secret, tx) => Answer::new(
                tx,
                self.dev
                    .activate_credential(blob, secret, actor)
                    .map_err(CallError::from),
            ),
            Call::AuditVerify(tx) => {
                let r = self
                    .dev
                    .verify_audit()
                    .map(|(records, problems)| AuditCheck { records, problems });
                Answer::new(tx, r.map_err(CallError::from))
            }
            Call::AcknowledgeDamage(through, tx) => Answer::new(
                tx,
                self.dev
                    .acknowledge_damage(through, actor)
                    .map_err(CallError::from),
            ),
        }
    }

    /// Whether the caller's role may call `method`; a denial is audited (within the
    /// caller's budget) and returned.
    fn authorize(&mut self, caller: &Caller, method: Method) -> Result<(), CallError> {
        let role = self
            .groups
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .role(caller);
        if method.allowed(role, self.dev.user_may_disable_privacy()) {
            return Ok(());
        }
        let why = format!(
            "{} is not allowed for uid {} (role {})",
            method.name(),
            caller.uid,
            role.as_str()
        );
        self.append_budgeted_kind(
            caller,
            DENIED_KIND,
            Entry::new(DENIED_KIND, Outcome::Refused, caller.actor()).reason(why.clone()),
        )?;
        Err(CallError::AccessDenied(format!("{why}; nothing changed")))
    }

    fn set_privacy(&mut self, on: bool, actor: Actor) -> Result<(), CallError> {
        if self.dev.state().privacy_mode != on {
            self.dev.set_privacy(on, actor.clone())?;
            self.dev.enforce(&mut self.backend, actor)?;
        }
        Ok(())
    }

    fn tail(&self, n: u32) -> Result<Vec<String>, CallError> {
        let records = crate::audit::read_records(self.dev.audit().dir())
            .map_err(|e| CallError::Failed(e.to_string()))?;
        let skip = records.len().saturating_sub(n as usize);
        records[skip..]
            .iter()
            .map(serde_json::to_string)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| CallError::Failed(e.to_string()))
    }

    fn check_launch(
        &mut self,
        caller: &Caller,
        method: Method,
        app: String,
        exe: &str,
    ) -> Result<LaunchAnswer, CallError> {
        let d = self.dev.check_launch(&app, exe);
        if !d.allowed {
            // Refusals are recorded; an allowed check is a query (the launch itself is
            // reported by the launcher).
            self.append_budgeted(
                caller,
                method,
                Entry::new("launch.check", Outcome::Refused, caller.actor())
                    .reason(d.reason.clone())
                    .digest("app", app),
            )?;
        }
        let profile = match &d.profile {
            Some(p) => serde_json::to_string(p).map_err(|e| CallError::Failed(e.to_string()))?,
            None => String::new(),
        };
        Ok(LaunchAnswer {
            allowed: d.allowed,
            reason: d.reason,
            profile,
        })
    }
}
