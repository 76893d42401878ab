//! The event loop's core: one thread owns the [`Device`] and the netfilter backend, and
//! takes commands from one queue, so two callers never interleave a transition. A call is
//! authorized here (from the caller's credentials as the bus daemon reported them), carried
//! out, audited, the posture republished, and only then answered.

use std::sync::PoisonError;

use tokio::sync::{mpsc, oneshot, watch};

use super::{Applied, Device, DeviceError};
use crate::audit::{Actor, Entry, Outcome};
use crate::netfilter::Backend;
use crate::posture::Posture;
use crate::sys::netlink::LinkEvent;
use crate::timefmt::Timestamp;

/// Who is calling, as the bus daemon reported it for the message's sender. Never taken from
/// the message body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The caller's uid.
    pub uid: u32,
    /// Its groups (primary and supplementary) as the bus daemon saw them at connect time.
    pub gids: Vec<u32>,
    /// Its pid, when the bus reports one.
    pub pid: Option<u32>,
    /// Its unique bus name.
    pub bus_name: String,
}

impl Caller {
    /// The audit record's actor.
    pub fn actor(&self) -> Actor {
        Actor {
            uid: Some(self.uid),
            pid: self.pid,
            bus_name: Some(self.bus_name.clone()),
        }
    }
}

/// A caller's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// uid 0 or a member of the admin group.
    Admin,
    /// A member of the setup group.
    Setup,
    /// Everyone else.
    User,
}

impl Role {
    /// The name in audit records and errors.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Setup => "setup",
            Self::User => "user",
        }
    }
}

/// Which gids hold which role (`None`: the group does not exist, so nobody holds the role
/// through it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RoleGroups {
    /// The admin group.
    pub admin: Option<u32>,
    /// The setup group.
    pub setup: Option<u32>,
}

impl RoleGroups {
    /// The caller's role: admin = uid 0 or the admin group; setup = the setup group.
    pub fn role(&self, c: &Caller) -> Role {
        let member = |g: Option<u32>| g.is_some_and(|g| c.gids.contains(&g));
        if c.uid == 0 || member(self.admin) {
            Role::Admin
        } else if member(self.setup) {
            Role::Setup
        } else {
            Role::User
        }
    }
}

/// Who holds which role, shared between the engine (which authorizes, and reloads it on
/// SIGHUP) and the bus service (which queues privileged callers' calls in their own lane).
pub type SharedGroups = std::sync::Arc<std::sync::RwLock<RoleGroups>>;

/// What a caller asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Privacy mode on or off.
    SetPrivacy(bool),
    /// A signed policy bundle.
    ApplyBundle(Vec<u8>),
    /// A signed intel feed.
    ApplyIntel(Vec<u8>),
    /// A signed trust-root rotation.
    ApplyTrustRoot(Vec<u8>),
    /// The last-good policy's payload.
    ActivePolicy,
    /// A setup step done.
    CompleteStep(String),
    /// The last N audit records.
    AuditTail(u32),
    /// Check the audit log.
    AuditVerify,
    /// An admin acknowledges the audit log damage recorded up to this seq (`u64::MAX`: all).
    AcknowledgeDamage(u64),
    /// May this app start?
    CheckLaunch {
        /// The app id.
        app: String,
        /// The executable the launcher is about to run (empty: the policy's).
        exe: String,
    },
    /// What a launcher did after a check: started the app, or refused at exec time.
    ReportLaunch {
        /// The app id.
        app: String,
        /// Whether it started.
        started: bool,
        /// Why not, or how it is confined.
        reason: String,
    },
    /// A signed lifecycle command.
    ApplyCommand(Vec<u8>),
    /// The device's handle for a verifier.
    DeviceHandle(String),
    /// A signed checkpoint of the audit log now.
    Checkpoint,
    /// A signed posture report answering a nonce.
    Report(String),
}

impl Request {
    /// The method's name, for audit records and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Self::SetPrivacy(true) => "SetPrivacyMode(true)",
            Self::SetPrivacy(false) => "SetPrivacyMode(false)",
            Self::ApplyBundle(_) => "ApplyBundle",
            Self::ApplyIntel(_) => "ApplyIntelFeed",
            Self::ApplyTrustRoot(_) => "ApplyTrustRoot",
            Self::ActivePolicy => "ActivePolicy",
            Self::CompleteStep(_) => "CompleteStep",
            Self::AuditTail(_) => "Tail",
            Self::AuditVerify => "Verify",
            Self::AcknowledgeDamage(_) => "AcknowledgeDamage",
            Self::CheckLaunch { .. } => "CheckLaunch",
            Self::ReportLaunch { .. } => "ReportLaunch",
            Self::ApplyCommand(_) => "ApplyCommand",
            Self::DeviceHandle(_) => "GetDeviceHandle",
            Self::Checkpoint => "Checkpoint",
            Self::Report(_) => "GetReport",
        }
    }
}

/// Who may do what (docs/SECURITY.md, "Who may do what over the bus"). `user_may_disable_privacy` comes from the policy.
pub fn permitted(req: &Request, role: Role, user_may_disable_privacy: bool) -> bool {
    match req {
        Request::SetPrivacy(true)
        | Request::CheckLaunch { .. }
        | Request::ReportLaunch { .. }
        | Request::DeviceHandle(_)
        | Request::Report(_) => true,
        Request::SetPrivacy(false) => role == Role::Admin || user_may_disable_privacy,
        Request::CompleteStep(_) => matches!(role, Role::Admin | Role::Setup),
        Request::ApplyBundle(_)
        | Request::ApplyIntel(_)
        | Request::ApplyTrustRoot(_)
        | Request::ActivePolicy
        | Request::ApplyCommand(_)
        | Request::Checkpoint
        | Request::AuditTail(_)
        | Request::AuditVerify
        | Request::AcknowledgeDamage(_) => role == Role::Admin,
    }
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// Done; nothing to return.
    Done,
    /// A signed input was installed.
    Applied(Applied),
    /// Text (the active policy).
    Text(String),
    /// Lines (audit records).
    Lines(Vec<String>),
    /// A launch decision.
    Launch {
        /// Whether the app may start.
        allowed: bool,
        /// Why.
        reason: String,
        /// The profile as JSON (empty when refused).
        profile: String,
    },
    /// A lifecycle transition.
    Lifecycle {
        /// Before.
        from: String,
        /// After.
        to: String,
    },
    /// An audit check: records checked and problems found.
    Verified {
        /// Records read.
        records: u64,
        /// Problems found (empty: the log is intact).
        problems: Vec<String>,
    },
}

/// Why a call did not take effect. In every case the state in force stays.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The caller's role may not do this (the refusal is audited).
    #[error("{0}")]
    AccessDenied(String),
    /// The input was refused (bad signature, rollback, expired, malformed...).
    #[error("{0}")]
    Refused(String),
    /// The setup step is not one the policy requires.
    #[error("{0}")]
    UnknownStep(String),
    /// The daemon could not carry it out (disk, audit log, kernel).
    #[error("{0}")]
    Failed(String),
}

impl From<DeviceError> for CallError {
    fn from(e: DeviceError) -> Self {
        match e {
            DeviceError::Refused(v) => Self::Refused(format!("{v}; the last good one stays")),
            DeviceError::UnknownStep(why) => Self::UnknownStep(why),
            DeviceError::CommandRefused(why) => Self::Refused(format!("{why}; nothing changed")),
            DeviceError::State(_) | DeviceError::Audit(_) => {
                let errno = crate::storage::io_cause(&e)
                    .map(|io| format!(" [{}]", crate::storage::errno_name(io)))
                    .unwrap_or_default();
                Self::Failed(format!(
                    "{}{errno}: the change could not be made durable, so nothing changed; the state in force stays",
                    crate::error_chain(&e)
                ))
            }
            DeviceError::Enforce(_) | DeviceError::Secret(_) | DeviceError::Checkpoint(_) => {
                Self::Failed(format!(
                    "{}; the state in force stays",
                    crate::error_chain(&e)
                ))
            }
        }
    }
}

/// The reply to a call.
pub type Reply = oneshot::Sender<Result<Response, CallError>>;

/// What the engine's queue carries.
#[derive(Debug)]
pub enum Command {
    /// A caller's request.
    Call {
        /// Who.
        caller: Caller,
        /// What.
        request: Request,
        /// Where the answer goes.
        reply: Reply,
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
    denials: Denials,
    busy: BusySource,
    busy_recorded: std::time::Instant,
    monotonic: Monotonic,
}

/// Where the engine reads the monotonic clock for its denial budget and its busy summaries:
/// [`std::time::Instant::now`] in the daemon; a test injects one it can move forward.
pub type Monotonic = Box<dyn Fn() -> std::time::Instant + Send>;

/// Where the engine takes the counts of calls refused before they reached it (the bus
/// service's admission limits): (uid, how many; `None`: callers not yet identified).
pub type BusySource = Box<dyn Fn() -> Vec<(Option<u32>, u64)> + Send>;

/// How many records a caller's calls may cause per uid, kind and minute (denials, launch
/// refusals, launch reports: what any local user can trigger). Beyond that they are counted
/// and recorded as one summary when the minute is over (or at stop), so that a user calling
/// in a loop cannot make the log grow by an fsynced record per call.
const DENIALS_RECORDED_PER_MINUTE: u32 = 20;
const DENIAL_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

/// Per-uid, per-kind windows.
#[derive(Debug, Default)]
struct Denials(std::collections::HashMap<(u32, &'static str), DenialWindow>);

/// A summary to record: uid, kind, how many were not recorded, the last caller.
type Suppressed = (u32, &'static str, u64, Actor);

#[derive(Debug)]
struct DenialWindow {
    start: std::time::Instant,
    recorded: u32,
    suppressed: u64,
    last: Actor,
}

impl Denials {
    /// Whether this denial is recorded on its own; expired windows with suppressed denials
    /// come back as summaries to record first.
    fn admit(
        &mut self,
        caller: &Caller,
        kind: &'static str,
        now: std::time::Instant,
    ) -> (bool, Vec<Suppressed>) {
        let summaries = self.expire(now);
        let w = self
            .0
            .entry((caller.uid, kind))
            .or_insert_with(|| DenialWindow {
                start: now,
                recorded: 0,
                suppressed: 0,
                last: caller.actor(),
            });
        w.last = caller.actor();
        if w.recorded < DENIALS_RECORDED_PER_MINUTE {
            w.recorded += 1;
            (true, summaries)
        } else {
            w.suppressed += 1;
            (false, summaries)
        }
    }

    /// Close every window (at stop); returns the summaries of those that suppressed records.
    fn drain(&mut self) -> Vec<Suppressed> {
        self.0
            .drain()
            .filter(|(_, w)| w.suppressed > 0)
            .map(|((uid, kind), w)| (uid, kind, w.suppressed, w.last))
            .collect()
    }

    /// Close the windows older than a minute; returns the summaries of those that
    /// suppressed records.
    fn expire(&mut self, now: std::time::Instant) -> Vec<Suppressed> {
        let mut out = Vec::new();
        self.0.retain(|(uid, kind), w| {
            if now.duration_since(w.start) < DENIAL_WINDOW {
                return true;
            }
            if w.suppressed > 0 {
                out.push((*uid, *kind, w.suppressed, w.last.clone()));
            }
            false
        });
        out
    }
}

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
                denials: Denials::default(),
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

    /// Read the monotonic clock here (the denial budget's minute, the busy summaries' minute)
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

    /// One record per uid for the denials not recorded one by one.
    fn record_suppressed(&self, summaries: Vec<Suppressed>) -> Result<(), DeviceError> {
        for (uid, kind, n, actor) in summaries {
            let what = match kind {
                "authz.denied" => "denied calls",
                "launch.check" => "refused launch checks",
                _ => "launch reports",
            };
            self.dev.audit().record(
                Entry::new(kind, Outcome::Refused, actor).reason(format!(
                    "{n} further {what} of uid {uid} within a minute, past the {DENIALS_RECORDED_PER_MINUTE} recorded one by one"
                )),
            );
        }
        Ok(())
    }

    /// Append a record a caller's call caused, within that caller's budget.
    fn append_budgeted(
        &mut self,
        caller: &Caller,
        kind: &'static str,
        entry: Entry,
    ) -> Result<(), CallError> {
        let now = (self.monotonic)();
        let (record, summaries) = self.denials.admit(caller, kind, now);
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

    /// The device (for link state at start).
    pub fn device_mut(&mut self) -> &mut Device {
        &mut self.dev
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
            Command::Call {
                caller,
                request,
                reply,
            } => {
                let result = self.call(&caller, request);
                self.maybe_checkpoint();
                self.publish();
                // A caller that went away does not need its answer.
                let _ = reply.send(result);
            }
            Command::Tick => {
                let now = (self.monotonic)();
                let summaries = self.denials.expire(now);
                self.record_suppressed(summaries)?;
                if now.duration_since(self.busy_recorded) >= DENIAL_WINDOW {
                    self.busy_recorded = now;
                    self.record_busy()?;
                }
                // Storage that failed is tried again: the audit log's gap record, a probe
                // file in the state directory.
                self.dev.probe_storage();
                if let Some(Some(drift)) = survive(self.dev.check_drift(&mut self.backend, me()))? {
                    tracing::warn!("enforcement drift repaired: {drift}");
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
                    tracing::warn!("enforcement drift repaired: {drift}");
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
                let summaries = self.denials.drain();
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
            Ok(groups) => *self.groups.write().unwrap_or_else(PoisonError::into_inner) = groups,
            Err(e) => tracing::error!("configuration not reloaded, the previous one stays: {e}"),
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

    fn call(&mut self, caller: &Caller, request: Request) -> Result<Response, CallError> {
        let role = self
            .groups
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .role(caller);
        let name = request.name();
        if !permitted(&request, role, self.dev.user_may_disable_privacy()) {
            let why = format!(
                "{name} is not allowed for uid {} (role {})",
                caller.uid,
                role.as_str()
            );
            let now = (self.monotonic)();
            let (record, summaries) = self.denials.admit(caller, "authz.denied", now);
            self.record_suppressed(summaries)
                .map_err(|e| CallError::Failed(e.to_string()))?;
            if record {
                self.dev
                    .audit()
                    .append(
                        Entry::new("authz.denied", Outcome::Refused, caller.actor())
                            .reason(why.clone()),
                    )
                    .map_err(|e| CallError::Failed(e.to_string()))?;
            }
            return Err(CallError::AccessDenied(format!("{why}; nothing changed")));
        }
        if let Request::CheckLaunch { app, .. } | Request::ReportLaunch { app, .. } = &request
            && !crate::policy::is_valid_name(app)
        {
            return Err(CallError::Refused(format!(
                "{:?} is not an app id; nothing changed",
                app.chars().take(80).collect::<String>()
            )));
        }
        let actor = caller.actor();
        let now = (self.clock)();
        match request {
            Request::SetPrivacy(on) => {
                if self.dev.state().privacy_mode != on {
                    self.dev.set_privacy(on, actor.clone())?;
                    self.dev.enforce(&mut self.backend, actor)?;
                }
                Ok(Response::Done)
            }
            Request::ApplyBundle(bytes) => {
                let a = self.dev.apply_policy(&bytes, actor.clone(), now)?;
                self.dev.enforce(&mut self.backend, actor)?;
                Ok(Response::Applied(a))
            }
            Request::ApplyIntel(bytes) => {
                let mut a = self.dev.apply_intel(&bytes, actor.clone(), now)?;
                match self.dev.enforce_intel(&mut self.backend, actor) {
                    Ok(_) => a.notes.extend(self.dev.blocklist_overlaps()),
                    Err(e) => {
                        tracing::error!("blocklists not updated: {e}");
                        a.notes.push(format!("blocklists not updated: {e}"));
                    }
                }
                Ok(Response::Applied(a))
            }
            Request::ApplyTrustRoot(bytes) => {
                let a = self.dev.apply_trust_root(&bytes, actor.clone(), now)?;
                // A rotation can take the policy or the feed out of force: the kernel
                // follows before the caller gets its reply.
                self.dev.enforce(&mut self.backend, actor.clone())?;
                if let Err(e) = self.dev.enforce_intel(&mut self.backend, actor) {
                    tracing::error!("blocklists not updated: {e}");
                }
                Ok(Response::Applied(a))
            }
            Request::ActivePolicy => match self.dev.policy() {
                Some(p) => serde_json::to_string_pretty(p.payload())
                    .map(Response::Text)
                    .map_err(|e| CallError::Failed(e.to_string())),
                None => Ok(Response::Text(String::new())),
            },
            Request::CompleteStep(step) => {
                if self.dev.complete_step(&step, actor.clone())? {
                    self.dev.enforce(&mut self.backend, actor)?;
                }
                Ok(Response::Done)
            }
            Request::AuditTail(n) => {
                let records = crate::audit::read_records(self.dev.audit().dir())
                    .map_err(|e| CallError::Failed(e.to_string()))?;
                let skip = records.len().saturating_sub(n as usize);
                records[skip..]
                    .iter()
                    .map(serde_json::to_string)
                    .collect::<Result<Vec<_>, _>>()
                    .map(Response::Lines)
                    .map_err(|e| CallError::Failed(e.to_string()))
            }
            Request::CheckLaunch { app, exe } => {
                let d = self.dev.check_launch(&app, &exe);
                if !d.allowed {
                    // Refusals are recorded; an allowed check is a query (the launch itself
                    // is reported by the launcher).
                    self.append_budgeted(
                        caller,
                        "launch.check",
                        Entry::new("launch.check", Outcome::Refused, caller.actor())
                            .reason(d.reason.clone())
                            .digest("app", app),
                    )?;
                }
                let profile = match &d.profile {
                    Some(p) => {
                        serde_json::to_string(p).map_err(|e| CallError::Failed(e.to_string()))?
                    }
                    None => String::new(),
                };
                Ok(Response::Launch {
                    allowed: d.allowed,
                    reason: d.reason,
                    profile,
                })
            }
            Request::ReportLaunch {
                app,
                started,
                reason,
            } => {
                let outcome = if started {
                    Outcome::Ok
                } else {
                    Outcome::Refused
                };
                self.append_budgeted(
                    caller,
                    "launch.exec",
                    Entry::new("launch.exec", outcome, caller.actor())
                        .reason(reason.chars().take(256).collect::<String>())
                        .digest("app", app),
                )?;
                Ok(Response::Done)
            }
            Request::ApplyCommand(bytes) => {
                let (from, to) = self.dev.apply_command(&bytes, actor.clone(), now)?;
                self.dev.enforce(&mut self.backend, actor)?;
                Ok(Response::Lifecycle {
                    from: from.as_str().to_owned(),
                    to: to.as_str().to_owned(),
                })
            }
            Request::DeviceHandle(verifier) => {
                Ok(Response::Text(self.dev.device_handle(&verifier)?))
            }
            Request::Checkpoint => Ok(Response::Text(self.dev.checkpoint()?)),
            Request::Report(nonce) => Ok(Response::Text(self.dev.report(&nonce, now)?)),
            Request::AuditVerify => {
                let (records, problems) = self.dev.verify_audit()?;
                Ok(Response::Verified { records, problems })
            }
            Request::AcknowledgeDamage(through) => {
                Ok(Response::Text(self.dev.acknowledge_damage(through, actor)?))
            }
        }
    }
}
