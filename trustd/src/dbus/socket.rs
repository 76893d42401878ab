//! The bus connection's socket: a Unix stream that never negotiates passing file descriptors
//! (`NEGOTIATE_UNIX_FD`, D-Bus specification, "Authentication protocol").
//!
//! No method of `org.enigm.Trust1` takes a descriptor. A connection that cannot receive them
//! makes the bus daemon refuse, with an error to the sender, any message that carries some
//! to trustd: a caller cannot make trustd hold descriptors it never asked for (each queued
//! message would otherwise keep its own until dispatched, up to trustd's descriptor limit).

use std::io;
#[cfg(unix)]
use std::os::fd::{BorrowedFd, OwnedFd};

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use zbus::connection::socket::{ReadHalf, Socket, Split, WriteHalf};

/// A Unix stream to the bus that takes no file descriptors.
#[derive(Debug)]
pub struct NoFds(tokio::net::UnixStream);

impl NoFds {
    /// Connect to the socket at `path` (within the running tokio runtime).
    pub async fn connect(path: &str) -> io::Result<Self> {
        tokio::net::UnixStream::connect(path).await.map(Self)
    }
}

/// The socket path of a `unix:path=...` address (`None` for any other kind).
pub fn unix_path(address: &str) -> Option<&str> {
    // One transport, its keys comma-separated (`unix:path=/run/dbus/x,guid=...`).
    let keys = address.split(';').next()?.strip_prefix("unix:")?;
    keys.split(',').find_map(|kv| kv.strip_prefix("path="))
}

/// The largest body trustd holds of a message from a sender not known to be privileged:
/// every method of `org.enigm.Trust1` open to ordinary callers takes a few short strings.
pub const SMALL_BODY: u32 = 64 * 1024;

/// Method calls a sender not known to be privileged may make at once, and per second after
/// that, before its calls are dropped unread (a token bucket per unique bus name).
pub const SENDER_BURST: f64 = 64.0;
/// See [`SENDER_BURST`].
pub const SENDER_RATE: f64 = 32.0;
/// The largest header field array read, from anyone. Every header field but the object path
/// is at most 255 bytes (D-Bus specification, "Valid Names"), and trustd serves one short
/// path: a message with more is thrown away unread (its header and body skipped as they
/// arrive), so that no sender can make trustd hold, or echo in an error, a long path.
pub const MAX_HEADER_FIELDS: u32 = 8 * 1024;
/// Method calls that every sender whose uid is not yet known may make together: one pool for
/// all such names, however many there are, at once and per second after that. A new bus
/// name is budgeted here (and by its own name's bucket) only until its uid is learnt in the
/// background; opening and closing connections therefore gains a user no more than this pool.
pub const UNKNOWN_BURST: f64 = 64.0;
/// See [`UNKNOWN_BURST`].
pub const UNKNOWN_RATE: f64 = 32.0;
/// What a new bus name may spend before its uid is known without drawing on the unknown
/// pool: its first call, if cheap (a property read, a `GetAll`; not an `Introspect` or a
/// report), so that a caller's first call on a new connection is usually answered while
/// someone else keeps the pool empty, and that answer (or the lookup its message started)
/// teaches trustd who it is. These first calls of all names together are capped in their turn
/// by [`NEWCOMERS_BURST`]: answering every new connection's first calls would let a user who
/// churns connections make trustd answer without bound.
pub const FIRST_FREE: f64 = 4.0;
/// The free first calls ([`FIRST_FREE`]) of all new names together: this many at once and
/// per second after that ([`NEWCOMERS_RATE`]); past it a new name's calls draw on the pool.
/// A small share of what the service answers in a second.
pub const NEWCOMERS_BURST: f64 = 128.0;
/// See [`NEWCOMERS_BURST`].
pub const NEWCOMERS_RATE: f64 = 128.0;
/// How long the reader waits for the bus to say whether the sender of a body over
/// [`SMALL_BODY`] is an admin, when nothing is known of it yet. It is the only wait of the
/// reader on a lookup, and [`WAIT_BUDGET`] bounds the time it spends so.
const JUDGE_WAIT: std::time::Duration = std::time::Duration::from_millis(250);
/// Seconds the reader may spend in such waits at once, and per second after that
/// ([`WAIT_RATE`]): the time really waited is charged (at least [`WAIT_MIN`] a wait), so at
/// most a quarter of the reader's time goes to waiting however senders flood, and a flood of
/// waits the bus answers at once costs it little. A large call that finds the budget spent is
/// not read (its call fails); trustd's client makes a small call first, which makes its
/// sender known, before sending a large body.
const WAIT_BUDGET: f64 = 0.5;
/// See [`WAIT_BUDGET`].
const WAIT_RATE: f64 = 0.25;
/// The least a wait is charged, in seconds (a round trip to the bus).
const WAIT_MIN: f64 = 0.005;
/// Names (and uids) whose buckets the reader remembers; past it, full buckets are
/// forgotten, then every name's. Also the names whose identity it remembers, per generation
/// (names in use stay; see `recent::Recent`).
const MAX_TRACKED: usize = 4096;
/// The most a client of the private socket may send before its `BEGIN` line: a few short
/// commands of the D-Bus authentication protocol.
const MAX_AUTH_BYTES: usize = 4096;
/// Lookups of new senders' uids running in the background at once (see `Reader::known`),
/// besides those of parked calls' senders ([`PARK_MAX`] more).
pub const MAX_LOOKUPS: usize = 32;
/// Calls over the budget of a sender whose uid is not known yet that the bus reader holds
/// (parks) until the background lookup says who sent them, rather than dropping them: then
/// they are charged to their uid and served or dropped as the uid's budget says. So while
/// someone churns connections and keeps the unknown pool empty, another user's new
/// connection is served once its uid is known (a few milliseconds) instead of having its
/// calls dropped. At most this many calls, [`PARK_BYTES`] bytes, [`PARK_PER_NAME`] calls and
/// [`PARK_NAME_BYTES`] bytes per name, each for at most [`PARK_TTL`]; past any of these a
/// call is dropped as before.
pub const PARK_MAX: usize = 1024;
/// See [`PARK_MAX`]: bytes of parked calls (headers and bodies) held at once.
pub const PARK_BYTES: usize = 4 * 1024 * 1024;
/// See [`PARK_MAX`]: calls of one name parked at once: what a client sends at the start of a
/// new connection before its first answer (a `GetAll` per interface of `org.enigm.Trust1`
/// is seven), while one name cannot take the room of many.
pub const PARK_PER_NAME: usize = 8;
/// See [`PARK_MAX`]: bytes of one name's parked calls (every call of `org.enigm.Trust1` an
/// ordinary caller may make takes a few short strings), so that a few names with large
/// bodies cannot take the room of many.
pub const PARK_NAME_BYTES: usize = 64 * 1024;
/// See [`PARK_MAX`]: how long a call stays parked when its sender's uid is still not known
/// (the lookup's own time-out, [`super::CREDENTIALS_TIMEOUT`], and a little more).
pub const PARK_TTL: std::time::Duration = std::time::Duration::from_millis(2500);

/// The message types of a method call, a method's return and an error (D-Bus
/// specification, "Message Format").
const METHOD_CALL: u8 = 1;
const METHOD_RETURN: u8 = 2;
const ERROR: u8 = 3;

/// A token bucket: `burst` calls at once, `rate` per second refilled.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: tokio::time::Instant,
}

impl Bucket {
    fn new(burst: f64, now: tokio::time::Instant) -> Self {
        Self {
            tokens: burst,
            at: now,
        }
    }

    /// Refill to `now`, then take `cost` tokens if there are as many.
    fn take(&mut self, cost: f64, burst: f64, rate: f64, now: tokio::time::Instant) -> bool {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * rate).min(burst);
        self.at = now;
        if self.tokens >= cost {
            self.tokens -= cost;
            true
        } else {
            false
        }
    }

    /// Tokens there would be at `now` (nothing taken).
    fn available(&self, burst: f64, rate: f64, now: tokio::time::Instant) -> f64 {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        (self.tokens + dt * rate).min(burst)
    }

    /// Tokens spent and not yet refilled at `now`.
    fn spent(&self, burst: f64, rate: f64, now: tokio::time::Instant) -> f64 {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        (burst - (self.tokens + dt * rate).min(burst)).max(0.0)
    }

    /// Refill to `now`, then take `cost` tokens whether or not there are as many (down to
    /// [`MAX_DEBT`] below empty).
    fn charge(&mut self, cost: f64, burst: f64, rate: f64, now: tokio::time::Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = ((self.tokens + dt * rate).min(burst) - cost).max(-MAX_DEBT);
        self.at = now;
    }

    fn full(&self, burst: f64, rate: f64, now: tokio::time::Instant) -> bool {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens + dt * rate >= burst
    }
}

/// What is known of a message's sender: its uid (when learnt) and whether it is privileged
/// (root or the admin group).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    /// The sender's uid; `None` when the bus could not say (budgeted by its name then).
    pub uid: Option<u32>,
    /// Root or the admin group: no call budget, large bodies read.
    pub privileged: bool,
}

/// How far below empty a uid's bucket may go when the calls its connections made before
/// their uid was known are charged to it (ten seconds of [`SENDER_RATE`]).
const MAX_DEBT: f64 = 10.0 * SENDER_RATE;

/// Budgets of method calls (see [`SENDER_BURST`]) per uid, and what is known of senders.
///
/// A sender's calls are charged to its unique bus name, and to the one pool of every name
/// whose uid is not yet known ([`UNKNOWN_BURST`]), only until its uid is known (the reader
/// asks the bus in the background at a name's first message, and the service learns it for
/// every call it admits); from then on they are charged to the uid's one bucket, together
/// with what the name spent before (down to [`MAX_DEBT`] below empty). So however many
/// connections one uid opens, one after another or at once, they share one rate, and all of
/// them together take from the unknown pool no more than it holds.
///
/// Root and the admin group have no budget once known; root's own way in is the private
/// socket, whose peer the kernel names at once. Names pinned with [`Budgets::pin`] (trustd's
/// own client connection) are never forgotten. One set of budgets is shared by the bus
/// connection and every connection of the private socket.
#[derive(Debug)]
pub struct Budgets {
    names: std::collections::HashMap<String, Bucket>,
    uids: std::collections::HashMap<u32, Bucket>,
    unknown: Bucket,
    newcomers: Bucket,
    waits: Bucket,
    ids: super::recent::Recent<Identity>,
    pinned: std::collections::HashMap<String, Identity>,
    /// Names whose uid is being looked up in the background (bounded: [`MAX_LOOKUPS`] and
    /// [`PARK_MAX`] more).
    looking: std::collections::HashSet<String>,
    dropped: u64,
    warned: Option<tokio::time::Instant>,
}

/// [`Budgets`] shared by the readers of the service's connections.
pub type SharedBudgets = std::sync::Arc<std::sync::Mutex<Budgets>>;

impl Default for Budgets {
    fn default() -> Self {
        Self::new()
    }
}

impl Budgets {
    /// No budget spent, no sender known.
    pub fn new() -> Self {
        let now = tokio::time::Instant::now();
        Self {
            names: std::collections::HashMap::new(),
            uids: std::collections::HashMap::new(),
            unknown: Bucket::new(UNKNOWN_BURST, now),
            newcomers: Bucket::new(NEWCOMERS_BURST, now),
            waits: Bucket::new(WAIT_BUDGET, now),
            ids: super::recent::Recent::new(MAX_TRACKED),
            pinned: std::collections::HashMap::new(),
            looking: std::collections::HashSet::new(),
            dropped: 0,
            warned: None,
        }
    }

    /// Know `sender` as `id` for as long as the set lives (never forgotten to make room):
    /// for trustd's own client connection, whose calls keep the watchdog fed.
    pub fn pin(&mut self, sender: &str, id: Identity) {
        self.pinned.insert(sender.to_owned(), id);
    }

    /// What is known of `sender` (pinned, or remembered).
    fn identity(&mut self, sender: &str) -> Option<Identity> {
        if let Some(id) = self.pinned.get(sender) {
            return Some(*id);
        }
        self.ids.get(sender).copied()
    }

    /// Whether the reader may wait now for a verdict on a sender (see [`WAIT_BUDGET`]).
    fn may_wait(&self, now: tokio::time::Instant) -> bool {
        self.waits.available(WAIT_BUDGET, WAIT_RATE, now) > 0.0
    }

    /// Charge a wait that lasted `waited` (at least [`WAIT_MIN`]).
    fn waited(&mut self, waited: std::time::Duration, now: tokio::time::Instant) {
        self.waits.charge(
            waited.as_secs_f64().max(WAIT_MIN),
            WAIT_BUDGET,
            WAIT_RATE,
            now,
        );
    }

    /// A new set, to share.
    pub fn shared() -> SharedBudgets {
        std::sync::Arc::new(std::sync::Mutex::new(Self::new()))
    }

    /// Count a message dropped unread; say so in the log at most every 10 s.
    fn dropped(&mut self, why: impl FnOnce() -> String) {
        self.dropped += 1;
        let now = tokio::time::Instant::now();
        if self
            .warned
            .is_none_or(|t| now.duration_since(t) >= std::time::Duration::from_secs(10))
        {
            self.warned = Some(now);
            tracing::warn!(
                "messages to trustd dropped unread: {} so far; the latest: {}",
                self.dropped,
                why()
            );
        }
    }

    /// Remember what is known of `sender` (bounded: [`MAX_TRACKED`] names a generation, names
    /// in use kept; see [`super::recent::Recent`]).
    fn learn(&mut self, sender: &str, id: Identity) {
        self.ids.insert(sender.to_owned(), id);
    }

    fn name_bucket(&mut self, name: &str, now: tokio::time::Instant) -> &mut Bucket {
        if self.names.len() >= MAX_TRACKED && !self.names.contains_key(name) {
            self.names
                .retain(|_, b| !b.full(SENDER_BURST, SENDER_RATE, now));
            if self.names.len() >= MAX_TRACKED {
                // Forgetting what names spent loses only what their uids would have been
                // charged later; the unknown pool has already capped it.
                self.names.clear();
            }
        }
        self.names
            .entry(name.to_owned())
            .or_insert_with(|| Bucket::new(SENDER_BURST, now))
    }

    fn uid_bucket(&mut self, uid: u32, now: tokio::time::Instant) -> &mut Bucket {
        if self.uids.len() >= MAX_TRACKED && !self.uids.contains_key(&uid) {
            // Only full buckets go: a uid in debt keeps it (uids are accounts, not names
            // a caller can make up, so this map does not grow under a flood).
            self.uids
                .retain(|_, b| !b.full(SENDER_BURST, SENDER_RATE, now));
        }
        self.uids
            .entry(uid)
            .or_insert_with(|| Bucket::new(SENDER_BURST, now))
    }

    /// Whether a method call costing `cost` tokens from `sender` (its unique name; `None` on
    /// the private socket, where `id` says who it is) is within its budget (charged if so):
    /// its uid's when known, else its name's; a call with neither is not.
    fn take(&mut self, sender: Option<&str>, id: Option<Identity>, cost: f64) -> bool {
        self.take_at(sender, id, cost, tokio::time::Instant::now())
    }

    /// [`Budgets::take`] at `now`.
    fn take_at(
        &mut self,
        sender: Option<&str>,
        id: Option<Identity>,
        cost: f64,
        now: tokio::time::Instant,
    ) -> bool {
        match id.and_then(|i| i.uid) {
            Some(uid) => {
                let spent = sender
                    .and_then(|s| self.names.remove(s))
                    .map(|b| b.spent(SENDER_BURST, SENDER_RATE, now));
                let b = self.uid_bucket(uid, now);
                if let Some(spent) = spent {
                    b.charge(spent, SENDER_BURST, SENDER_RATE, now);
                }
                b.take(cost, SENDER_BURST, SENDER_RATE, now)
            }
            None => {
                let Some(s) = sender else {
                    return false;
                };
                // A name's first FIRST_FREE tokens come from its own bucket and the newcomers'
                // cap; past them both its bucket and the pool of every unknown name must hold
                // the cost (neither refuses after charging the other).
                let first = cost <= FIRST_FREE
                    && self.names.get(s).is_none_or(|b| {
                        b.spent(SENDER_BURST, SENDER_RATE, now) + cost <= FIRST_FREE
                    })
                    && self
                        .newcomers
                        .available(NEWCOMERS_BURST, NEWCOMERS_RATE, now)
                        >= cost;
                if !first && self.unknown.available(UNKNOWN_BURST, UNKNOWN_RATE, now) < cost {
                    return false;
                }
                if !self
                    .name_bucket(s, now)
                    .take(cost, SENDER_BURST, SENDER_RATE, now)
                {
                    return false;
                }
                if first {
                    self.newcomers
                        .take(cost, NEWCOMERS_BURST, NEWCOMERS_RATE, now)
                } else {
                    self.unknown.take(cost, UNKNOWN_BURST, UNKNOWN_RATE, now)
                }
            }
        }
    }
}

/// Decides who a message's sender (its unique bus name) is: whether it is privileged, and its
/// uid, for its call budget and whether a large body is read.
pub trait Judge: Send + Sync + std::fmt::Debug {
    /// Ask (the bus) who `sender` is; `None` when that could not be learnt (the bus did not
    /// answer), which the reader treats as not privileged.
    fn identify<'a>(
        &'a self,
        sender: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<Identity>> + Send + 'a>>;

    /// Who `sender` is, if already known without asking anyone (never waits).
    fn known(&self, sender: &str) -> Option<Identity>;
}

/// A method call held until its sender's uid is known (see [`PARK_MAX`]): the whole message
/// (header and body, as read), its sender, its cost, and when it was parked.
#[derive(Debug)]
struct Parked {
    sender: String,
    message: Vec<u8>,
    cost: f64,
    at: tokio::time::Instant,
}

/// What becomes of a parked call once looked at again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Hand it to the service now.
    Serve,
    /// Throw it away (its uid's budget is spent, or who sent it cannot be learnt).
    Drop,
    /// Its sender is still unknown: keep it (until [`PARK_TTL`]).
    Wait,
}

/// The parked calls, in arrival order (pure bookkeeping: the reader decides their fates).
#[derive(Debug, Default)]
struct Parking {
    queue: std::collections::VecDeque<Parked>,
    bytes: usize,
    /// Calls and bytes parked per name.
    per_name: std::collections::HashMap<String, (usize, usize)>,
}

impl Parking {
    /// Whether calls of `sender` are parked (its later calls must then wait behind them, so
    /// that the service sees one sender's calls in the order they were sent).
    fn holds(&self, sender: &str) -> bool {
        self.per_name.contains_key(sender)
    }

    /// Park a call of `sender` (`message`: its header and body) costing `cost`, or give it
    /// back when there is no room for it (see [`PARK_MAX`]).
    fn park(
        &mut self,
        sender: &str,
        message: Vec<u8>,
        cost: f64,
        now: tokio::time::Instant,
    ) -> Result<(), Vec<u8>> {
        let (calls, bytes) = self.per_name.get(sender).copied().unwrap_or((0, 0));
        if self.queue.len() >= PARK_MAX
            || self.bytes + message.len() > PARK_BYTES
            || calls >= PARK_PER_NAME
            || bytes + message.len() > PARK_NAME_BYTES
        {
            return Err(message);
        }
        self.bytes += message.len();
        let mine = self.per_name.entry(sender.to_owned()).or_default();
        *mine = (calls + 1, bytes + message.len());
        self.queue.push_back(Parked {
            sender: sender.to_owned(),
            message,
            cost,
            at: now,
        });
        Ok(())
    }

    /// When the oldest parked call's time is up (`None`: nothing parked).
    fn deadline(&self) -> Option<tokio::time::Instant> {
        self.queue.front().map(|p| p.at + PARK_TTL)
    }

    /// The first parked call whose `fate` is [`Fate::Serve`], taken out; on the way, calls
    /// whose fate is [`Fate::Drop`] (or still [`Fate::Wait`] past [`PARK_TTL`]) are taken
    /// out and handed to `dropped`. A sender's later calls are not looked at while an
    /// earlier one waits (one sender's calls are served in order). `fate` is asked once per
    /// call looked at.
    fn next(
        &mut self,
        now: tokio::time::Instant,
        mut fate: impl FnMut(&Parked) -> Fate,
        mut dropped: impl FnMut(Parked),
    ) -> Option<Parked> {
        let mut waiting = std::collections::HashSet::new();
        let mut i = 0;
        while i < self.queue.len() {
            let p = &self.queue[i];
            if waiting.contains(p.sender.as_str()) {
                i += 1;
                continue;
            }
            let f = match fate(p) {
                Fate::Wait if now >= p.at + PARK_TTL => Fate::Drop,
                f => f,
            };
            if f == Fate::Wait {
                waiting.insert(p.sender.clone());
                i += 1;
                continue;
            }
            let p = self.take(i);
            if f == Fate::Serve {
                return Some(p);
            }
            dropped(p);
        }
        None
    }

    fn take(&mut self, i: usize) -> Parked {
        let p = self.queue.remove(i).expect("index within the queue");
        self.bytes -= p.message.len();
        if let Some((calls, bytes)) = self.per_name.get_mut(&p.sender) {
            *calls -= 1;
            *bytes -= p.message.len();
            if *calls == 0 {
                self.per_name.remove(&p.sender);
            }
        }
        p
    }

    fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

/// The read half.
#[derive(Debug)]
pub struct Reader {
    inner: BufReader<OwnedReadHalf>,
    judge: Option<std::sync::Arc<dyn Judge>>,
    /// Until the server's `OK` line is read, bytes are the authentication's lines.
    authenticated: bool,
    /// Header bytes (possibly rewritten) not yet handed out, and where they start.
    pending: Vec<u8>,
    at: usize,
    /// Body bytes of the current message to hand out, and to throw away.
    body_left: u64,
    skip_left: u64,
    /// Method-call budgets (only with a judge: the serving connections).
    budgets: SharedBudgets,
    /// The peer's identity from the kernel, on a connection of the private socket (whose
    /// messages carry no sender).
    peer: Option<Identity>,
    /// This end is the server of the authentication (the private socket): it ends with the
    /// client's `BEGIN` line rather than the server's `OK`.
    server: bool,
    /// Bytes of the authentication read so far (a server reads at most [`MAX_AUTH_BYTES`]).
    auth_bytes: usize,
    /// Calls held until their sender's uid is known (see [`PARK_MAX`]).
    parked: Parking,
    /// Rung when a background lookup ends: parked calls may be ready.
    wake: Wake,
    /// Only replies and the bus daemon's messages are read (see [`NoFds::replies_only`]).
    replies_only: bool,
}

/// The write half.
#[derive(Debug)]
pub struct Writer {
    half: OwnedWriteHalf,
    /// On the private socket: how long a write may wait for the peer to read before the
    /// connection is shut down in both directions (`None` on the bus).
    stall: Option<std::time::Duration>,
}

impl NoFds {
    /// With `judge`, calls are held to `budgets` and large bodies are read only for
    /// privileged senders (the serving connection); without, every message is read whole
    /// (the connection trustd uses as a client).
    pub fn with_judge(
        self,
        judge: Option<std::sync::Arc<dyn Judge>>,
        budgets: SharedBudgets,
    ) -> JudgedStream {
        JudgedStream {
            stream: self,
            judge,
            budgets,
            peer: None,
            replies_only: false,
        }
    }

    /// A connection trustd uses as a client of the bus while it serves (its credential
    /// lookups and self-checks): only replies (of at most [`SMALL_BODY`] bytes) and the bus
    /// daemon's own messages are read; anything else anyone sends it (a signal with a
    /// 30 MiB body, a method call) is thrown away unread as it arrives, so that no caller
    /// can delay the replies trustd waits for on it (and starve the watchdog) or fill its
    /// memory. See [`NoFds::with_judge`] for the serving connection.
    pub fn replies_only(self) -> JudgedStream {
        JudgedStream {
            stream: self,
            judge: None,
            budgets: Budgets::shared(),
            peer: None,
            replies_only: true,
        }
    }

    /// A connection accepted on the private socket, whose peer the kernel identified as
    /// `peer`: served under the same budgets as the bus (`budgets`), its calls charged to
    /// `peer`'s uid.
    pub fn accepted(
        stream: tokio::net::UnixStream,
        judge: std::sync::Arc<dyn Judge>,
        budgets: SharedBudgets,
        peer: Identity,
    ) -> JudgedStream {
        JudgedStream {
            stream: Self(stream),
            judge: Some(judge),
            budgets,
            peer: Some(peer),
            replies_only: false,
        }
    }
}

/// A [`NoFds`] stream, its [`Judge`] and budgets.
#[derive(Debug)]
pub struct JudgedStream {
    stream: NoFds,
    judge: Option<std::sync::Arc<dyn Judge>>,
    budgets: SharedBudgets,
    peer: Option<Identity>,
    replies_only: bool,
}

impl Socket for JudgedStream {
    type ReadHalf = Reader;
    type WriteHalf = Writer;

    fn split(self) -> Split<Reader, Writer> {
        let server = self.peer.is_some();
        let (r, w) = self.stream.0.into_split();
        Split::new(
            Reader {
                inner: BufReader::with_capacity(64 * 1024, r),
                judge: self.judge,
                authenticated: false,
                pending: Vec::new(),
                at: 0,
                body_left: 0,
                skip_left: 0,
                budgets: self.budgets,
                server,
                peer: self.peer,
                auth_bytes: 0,
                parked: Parking::default(),
                wake: Wake::default(),
                replies_only: self.replies_only,
            },
            Writer {
                half: w,
                stall: server.then_some(super::private::WRITE_STALL),
            },
        )
    }
}

impl Socket for NoFds {
    type ReadHalf = Reader;
    type WriteHalf = Writer;

    fn split(self) -> Split<Reader, Writer> {
        self.with_judge(None, Budgets::shared()).split()
    }
}

/// The fixed part of a message header (16 bytes): (big-endian, type, body length, length
/// of the header field array).
fn primary(h: &[u8; 16]) -> io::Result<(bool, u8, u32, u32)> {
    let big = match h[0] {
        b'l' => false,
        b'B' => true,
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not a D-Bus message (endianness)",
            ));
        }
    };
    let u = |b: &[u8]| {
        let a = [b[0], b[1], b[2], b[3]];
        if big {
            u32::from_be_bytes(a)
        } else {
            u32::from_le_bytes(a)
        }
    };
    Ok((big, h[1], u(&h[4..8]), u(&h[12..16])))
}

/// The SENDER header field (code 7) of a message whose whole header is `h`.
fn sender(h: &[u8], big: bool, fields_len: usize) -> Option<String> {
    string_field(h, big, fields_len, 7)
}

/// How many tokens of its sender's budget a method call costs: about its reply's size in
/// units of a few KiB, so that a sender cannot make trustd write more than it reads. An
/// `Introspect` reply is the whole interface description (about 20 KiB); `GetReport` a signed
/// posture report (with a TPM its quote, which costs the TPM about 10 ms: an ordinary uid's
/// rate allows eight a second) and `GetAll` a whole interface's properties; everything else
/// answers with a few short strings. (A report at 16 left an ordinary client that reads
/// every property, introspects and asks a report over its burst.)
fn cost(h: &[u8], big: bool, fields_len: usize) -> f64 {
    match string_field(h, big, fields_len, 3).as_deref() {
        Some("Introspect") => 16.0,
        Some("GetAll" | "GetReport") => 4.0,
        _ => 1.0,
    }
}

/// A string-typed header field (`code`: 1 PATH, 2 INTERFACE, 3 MEMBER, 6 DESTINATION,
/// 7 SENDER; D-Bus specification, "Message Format") of a message whose whole header is `h`.
fn string_field(h: &[u8], big: bool, fields_len: usize, want: u8) -> Option<String> {
    let end = 16usize.checked_add(fields_len)?.min(h.len());
    let u = |b: &[u8]| -> Option<usize> {
        let a: [u8; 4] = b.get(..4)?.try_into().ok()?;
        Some(if big {
            u32::from_be_bytes(a)
        } else {
            u32::from_le_bytes(a)
        } as usize)
    };
    let mut p = 16;
    while p < end {
        p = p.next_multiple_of(8);
        let code = *h.get(p)?;
        let sig_len = *h.get(p + 1)? as usize;
        let sig = h.get(p + 2..p + 2 + sig_len)?;
        p += 2 + sig_len + 1;
        match sig {
            b"s" | b"o" => {
                p = p.next_multiple_of(4);
                let n = u(h.get(p..)?)?;
                let v = h.get(p + 4..p + 4 + n)?;
                if code == want {
                    return String::from_utf8(v.to_vec()).ok();
                }
                p += 4 + n + 1;
            }
            b"g" => {
                let n = *h.get(p)? as usize;
                p += 1 + n + 1;
            }
            b"u" => {
                p = p.next_multiple_of(4) + 4;
            }
            _ => return None,
        }
    }
    None
}

/// Rung when a background lookup of a sender ends: parked calls may be ready.
#[derive(Debug, Clone, Default)]
struct Wake {
    ready: std::sync::Arc<std::sync::atomic::AtomicBool>,
    notify: std::sync::Arc<tokio::sync::Notify>,
}

impl Wake {
    fn ring(&self) {
        self.ready.store(true, std::sync::atomic::Ordering::Release);
        self.notify.notify_one();
    }

    /// Whether it rang since last asked.
    fn rang(&self) -> bool {
        self.ready.swap(false, std::sync::atomic::Ordering::AcqRel)
    }
}

/// What is known of `sender` without waiting: remembered in `budgets`, or learnt by the
/// service (when it admitted one of the sender's calls, or by a lookup started here in the
/// background at the sender's first message). At most `limit` lookups run at once
/// ([`MAX_LOOKUPS`] for any sender, [`PARK_MAX`] more for senders of parked calls), so that a
/// flood of new names cannot make trustd ask the bus without bound; `wake` rings when one
/// ends.
fn known(
    budgets: &SharedBudgets,
    judge: &std::sync::Arc<dyn Judge>,
    sender: &str,
    limit: usize,
    wake: &Wake,
) -> Option<Identity> {
    let mut b = budgets
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let remembered = b.identity(sender);
    if remembered.is_some_and(|id| id.uid.is_some()) {
        return remembered;
    }
    if let Some(id) = judge.known(sender) {
        b.learn(sender, id);
        return Some(id);
    }
    if remembered.is_none()
        && b.looking.len() < limit
        && !b.looking.contains(sender)
        && let Ok(rt) = tokio::runtime::Handle::try_current()
    {
        b.looking.insert(sender.to_owned());
        let (judge, sender, budgets, wake) = (
            judge.clone(),
            sender.to_owned(),
            budgets.clone(),
            wake.clone(),
        );
        rt.spawn(async move {
            let found =
                tokio::time::timeout(super::CREDENTIALS_TIMEOUT, judge.identify(&sender)).await;
            {
                let mut b = budgets
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                b.looking.remove(&sender);
                if !matches!(found, Ok(Some(_))) {
                    // No answer (the name is gone, or the bus is slow): its calls stay in the
                    // unknown pool, and it is not asked about again (a name is never reused),
                    // so that a departed flooder's queued calls cost no lookups. One of its
                    // calls the service admits still teaches the service who it is.
                    b.learn(
                        &sender,
                        Identity {
                            uid: None,
                            privileged: false,
                        },
                    );
                }
            }
            wake.ring();
        });
    }
    remembered
}

impl Reader {
    /// Read the next message's header; decide whether its body is read or thrown away, or
    /// the whole message dropped (`pending` left empty).
    async fn next_header(&mut self) -> io::Result<bool> {
        let mut h = [0u8; 16];
        match self.inner.read_exact(&mut h).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
            Err(e) => return Err(e),
        }
        let (big, ty, body_len, fields_len) = primary(&h)?;
        let rest = (16 + fields_len as usize).next_multiple_of(8) - 16;
        if (self.judge.is_some() || self.replies_only) && fields_len > MAX_HEADER_FIELDS {
            self.budgets().dropped(|| {
                format!(
                    "{fields_len} bytes of header fields (at most {MAX_HEADER_FIELDS} are read)"
                )
            });
            self.skip_left = rest as u64 + u64::from(body_len);
            self.pending.clear();
            self.at = 0;
            return Ok(true);
        }
        let mut header = h.to_vec();
        header.resize(16 + rest, 0);
        self.inner.read_exact(&mut header[16..]).await?;
        let Some(judge) = self.judge.clone() else {
            let reply = (ty == METHOD_RETURN || ty == ERROR) && body_len <= SMALL_BODY;
            if self.replies_only
                && !reply
                && sender(&header, big, fields_len as usize).as_deref()
                    != Some("org.freedesktop.DBus")
            {
                self.skip_left = u64::from(body_len);
                self.pending.clear();
                self.at = 0;
                return Ok(true);
            }
            self.body_left = u64::from(body_len);
            self.pending = header;
            self.at = 0;
            return Ok(true);
        };
        let from = sender(&header, big, fields_len as usize);
        let id = self.peer.or_else(|| {
            if from.as_deref() == Some("org.freedesktop.DBus") {
                None
            } else {
                from.as_deref()
                    .and_then(|s| known(&self.budgets, &judge, s, MAX_LOOKUPS, &self.wake))
            }
        });
        // Every message from anyone but the bus daemon is budgeted: method calls, and signals
        // or replies sent to trustd unasked. On the private socket there is no bus daemon.
        if self.peer.is_some() || from.as_deref() != Some("org.freedesktop.DBus") {
            let c = cost(&header, big, fields_len as usize);
            // On the private socket the SENDER field is whatever the client wrote (no bus
            // daemon sets it): the peer's identity alone counts, never a name it claims.
            let named = if self.peer.is_some() {
                None
            } else {
                from.as_deref()
            };
            // Never a wait here: a sender whose uid is not known yet is held to its name's
            // bucket and the unknown pool while the background lookup runs; past them its
            // call is parked until the lookup ends. A sender with calls parked has its later
            // calls parked behind them (charged when served).
            let behind = named.is_some_and(|s| self.parked.holds(s));
            let within =
                !behind && (id.is_some_and(|i| i.privileged) || self.budgets().take(named, id, c));
            if !within
                && let Some(s) = named
                && (behind || (id.is_none() && ty == METHOD_CALL))
                && body_len <= SMALL_BODY
            {
                let s = s.to_owned();
                let mut message = header;
                let start = message.len();
                message.resize(start + body_len as usize, 0);
                self.inner.read_exact(&mut message[start..]).await?;
                let now = tokio::time::Instant::now();
                if self.parked.park(&s, message, c, now).is_ok() {
                    known(
                        &self.budgets,
                        &judge,
                        &s,
                        MAX_LOOKUPS + PARK_MAX,
                        &self.wake,
                    );
                } else {
                    self.budgets().dropped(|| {
                        format!("over its call budget, and no room to hold it until its sender is known (latest from {s})")
                    });
                }
                self.pending.clear();
                self.at = 0;
                return Ok(true);
            }
            if !within {
                let who = from
                    .as_deref()
                    .unwrap_or("the private socket's peer")
                    .to_owned();
                let uid = id.and_then(|i| i.uid);
                self.budgets().dropped(|| match uid {
                    Some(uid) => {
                        format!("over its uid's call budget (latest from {who}, uid {uid})")
                    }
                    None => format!("over its call budget (latest from {who})"),
                });
                self.skip_left = u64::from(body_len);
                self.pending.clear();
                self.at = 0;
                return Ok(true);
            }
        }
        let keep = body_len <= SMALL_BODY
            || match id {
                Some(i) => i.privileged,
                None => {
                    let start = tokio::time::Instant::now();
                    let may = self.budgets().may_wait(start);
                    if may {
                        let id = self.identify(judge.as_ref(), from.as_deref()).await;
                        let now = tokio::time::Instant::now();
                        self.budgets().waited(now - start, now);
                        id.privileged
                    } else {
                        false
                    }
                }
            };
        if keep {
            self.body_left = u64::from(body_len);
        } else {
            self.budgets().dropped(|| {
                format!("the body of a {body_len}-byte message from a sender that is not an admin (its call fails)")
            });
            self.skip_left = u64::from(body_len);
            header[4..8].copy_from_slice(&[0; 4]);
        }
        self.pending = header;
        self.at = 0;
        Ok(true)
    }

    /// Hand the first parked call that may now be served to the service (`true`), when a
    /// lookup ended or a parked call's time is up; calls whose sender's uid budget is spent,
    /// or whose sender could not be learnt in time, are dropped on the way.
    fn release(&mut self) -> bool {
        let now = tokio::time::Instant::now();
        let due = self.parked.deadline().is_some_and(|d| now >= d);
        if !self.wake.rang() && !due {
            return false;
        }
        let Some(judge) = self.judge.clone() else {
            return false;
        };
        let (budgets, wake) = (self.budgets.clone(), self.wake.clone());
        let lock = || {
            budgets
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        let served = self.parked.next(
            now,
            |p| match known(&budgets, &judge, &p.sender, MAX_LOOKUPS + PARK_MAX, &wake) {
                None => Fate::Wait,
                Some(id) if id.privileged => Fate::Serve,
                Some(id) if id.uid.is_some() => {
                    if lock().take(Some(&p.sender), Some(id), p.cost) {
                        Fate::Serve
                    } else {
                        Fate::Drop
                    }
                }
                Some(_) => Fate::Drop,
            },
            |p| {
                lock().dropped(|| {
                    format!(
                        "a call held until its sender was known: over its uid's call budget, or its sender could not be learnt (from {})",
                        p.sender
                    )
                });
            },
        );
        let Some(p) = served else {
            return false;
        };
        // Others may be ready too: look again at the next message boundary.
        self.wake
            .ready
            .store(true, std::sync::atomic::Ordering::Release);
        self.pending = p.message;
        self.at = 0;
        true
    }

    fn budgets(&self) -> std::sync::MutexGuard<'_, Budgets> {
        self.budgets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Who `sender` is, asking the judge (within [`JUDGE_WAIT`]) and remembering the answer
    /// (a name is never reused on a bus).
    async fn identify(&mut self, judge: &dyn Judge, sender: Option<&str>) -> Identity {
        let unknown = Identity {
            uid: None,
            privileged: false,
        };
        let Some(sender) = sender else {
            return unknown;
        };
        let id = match tokio::time::timeout(JUDGE_WAIT, judge.identify(sender)).await {
            Ok(Some(id)) => id,
            // No answer (the sender is gone, or the bus is too slow): not privileged, and kept
            // so, since a name is never reused; asking again for each of a departed flooder's
            // queued calls stalled this reader (and root's calls behind it).
            Ok(None) | Err(_) => unknown,
        };
        self.budgets().learn(sender, id);
        id
    }
}

#[async_trait::async_trait]
impl ReadHalf for Reader {
    async fn recvmsg(&mut self, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
        if buf.is_empty() {
            return Ok((0, Vec::new()));
        }
        if !self.authenticated {
            // One line of the authentication at a time, so that no byte of the first
            // message is read past the framing below.
            let avail = tokio::io::AsyncBufReadExt::fill_buf(&mut self.inner).await?;
            if avail.is_empty() {
                return Ok((0, Vec::new()));
            }
            let line_end = avail.windows(2).position(|w| w == b"\r\n").map(|i| i + 2);
            let n = line_end.unwrap_or(avail.len()).min(buf.len());
            self.auth_bytes += n;
            if self.server && self.auth_bytes > MAX_AUTH_BYTES {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the client's authentication is longer than any valid one",
                ));
            }
            buf[..n].copy_from_slice(&avail[..n]);
            let last = if self.server {
                avail.starts_with(b"BEGIN\r\n")
            } else {
                avail.starts_with(b"OK ")
            };
            if line_end.is_some_and(|e| e <= buf.len()) && last {
                self.authenticated = true;
            }
            tokio::io::AsyncBufReadExt::consume(&mut self.inner, n);
            return Ok((n, Vec::new()));
        }
        loop {
            if self.at < self.pending.len() {
                let n = (self.pending.len() - self.at).min(buf.len());
                buf[..n].copy_from_slice(&self.pending[self.at..self.at + n]);
                self.at += n;
                return Ok((n, Vec::new()));
            }
            while self.skip_left > 0 {
                let avail = tokio::io::AsyncBufReadExt::fill_buf(&mut self.inner).await?;
                if avail.is_empty() {
                    return Ok((0, Vec::new()));
                }
                let n = avail
                    .len()
                    .min(usize::try_from(self.skip_left).unwrap_or(usize::MAX));
                tokio::io::AsyncBufReadExt::consume(&mut self.inner, n);
                self.skip_left -= n as u64;
            }
            if self.body_left > 0 {
                let want = buf
                    .len()
                    .min(usize::try_from(self.body_left).unwrap_or(usize::MAX));
                let n = self.inner.read(&mut buf[..want]).await?;
                self.body_left -= n as u64;
                return Ok((n, Vec::new()));
            }
            if !self.parked.is_empty() {
                if self.release() {
                    continue;
                }
                // Wait for the next message, or for a lookup to end, or for the oldest parked
                // call's time to be up (filling the buffer is safe to cancel).
                let deadline = self
                    .parked
                    .deadline()
                    .unwrap_or_else(|| tokio::time::Instant::now() + PARK_TTL);
                let notify = self.wake.notify.clone();
                let mut notified = std::pin::pin!(notify.notified());
                let mut sleep = std::pin::pin!(tokio::time::sleep_until(deadline));
                let inner = &mut self.inner;
                // Some(at the end) when bytes came (or the stream ended), None when woken.
                let came = std::future::poll_fn(|cx| {
                    use std::future::Future;
                    use std::task::Poll;
                    match tokio::io::AsyncBufRead::poll_fill_buf(
                        std::pin::Pin::new(&mut *inner),
                        cx,
                    ) {
                        Poll::Ready(Ok(b)) => return Poll::Ready(Ok(Some(b.is_empty()))),
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => {}
                    }
                    if notified.as_mut().poll(cx).is_ready() || sleep.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Ok(None));
                    }
                    Poll::Pending
                })
                .await?;
                match came {
                    Some(true) => return Ok((0, Vec::new())),
                    Some(false) => {}
                    None => continue,
                }
            }
            if !self.next_header().await? {
                return Ok((0, Vec::new()));
            }
        }
    }

    fn can_pass_unix_fd(&self) -> bool {
        false
    }
}

#[async_trait::async_trait]
impl WriteHalf for Writer {
    async fn sendmsg(&mut self, buf: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<usize> {
        if !fds.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "this connection passes no file descriptors",
            ));
        }
        let Some(stall) = self.stall else {
            return self.half.write(buf).await;
        };
        match tokio::time::timeout(stall, self.half.write(buf)).await {
            Ok(r) => r,
            Err(_) => {
                // Both directions, so that the connection's reader sees the end too and the
                // connection (and its slot) goes.
                let stream: &tokio::net::UnixStream = self.half.as_ref();
                let _ = nix::sys::socket::shutdown(
                    std::os::fd::AsRawFd::as_raw_fd(stream),
                    nix::sys::socket::Shutdown::Both,
                );
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the peer has not read its replies: connection closed",
                ))
            }
        }
    }

    async fn close(&mut self) -> io::Result<()> {
        self.half.shutdown().await
    }

    fn can_pass_unix_fd(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::{
        Bucket, Budgets, Fate, Identity, JUDGE_WAIT, MAX_DEBT, MAX_TRACKED, NEWCOMERS_BURST,
        NEWCOMERS_RATE, PARK_BYTES, PARK_MAX, PARK_NAME_BYTES, PARK_PER_NAME, PARK_TTL, Parked,
        Parking, SENDER_BURST, SENDER_RATE, UNKNOWN_BURST, UNKNOWN_RATE, WAIT_BUDGET, WAIT_RATE,
        cost, primary, sender, unix_path,
    };
    use std::time::Duration;

    #[test]
    fn a_sender_gets_its_burst_then_its_rate() {
        let t0 = tokio::time::Instant::now();
        let mut b = Bucket::new(SENDER_BURST, t0);
        let taken = (0..200)
            .filter(|_| b.take(1.0, SENDER_BURST, SENDER_RATE, t0))
            .count();
        assert_eq!(taken, 64, "the burst, no more, at one instant");
        // One second later: 32 more.
        let t1 = t0 + Duration::from_secs(1);
        let taken = (0..200)
            .filter(|_| b.take(1.0, SENDER_BURST, SENDER_RATE, t1))
            .count();
        assert_eq!(taken, 32);
        // An Introspect (16) is refused with 15 tokens, taken with 16.
        let t2 = t1 + Duration::from_millis(15 * 1000 / 32);
        assert!(!b.take(16.0, SENDER_BURST, SENDER_RATE, t2));
        let t3 = t1 + Duration::from_millis(16 * 1000 / 32 + 1);
        assert!(b.take(16.0, SENDER_BURST, SENDER_RATE, t3));
        // Never more than the burst, however long idle.
        let t4 = t3 + Duration::from_secs(3600);
        assert!(b.full(SENDER_BURST, SENDER_RATE, t4));
        let taken = (0..200)
            .filter(|_| b.take(1.0, SENDER_BURST, SENDER_RATE, t4))
            .count();
        assert_eq!(taken, 64);
    }

    /// Regression: budgets were per unique name, so one uid with N connections had N. Once
    /// the uid of its names is known, they share one bucket, and what each spent before is
    /// charged to it.
    #[test]
    fn many_names_of_one_uid_share_its_budget() {
        let t0 = tokio::time::Instant::now();
        let mut b = Budgets::new();
        let user = Some(Identity {
            uid: Some(1000),
            privileged: false,
        });
        // Known from the start: 100 names get one burst between them.
        let taken = (0..100)
            .flat_map(|n| (0..10).map(move |_| n))
            .filter(|n| b.take_at(Some(&format!(":1.{n}")), user, 1.0, t0))
            .count();
        assert_eq!(taken, SENDER_BURST as usize);
        // Another uid is not affected.
        let other = Some(Identity {
            uid: Some(1001),
            privileged: false,
        });
        assert!(b.take_at(Some(":2.1"), other, 1.0, t0));

        // A name whose uid was not yet known spent its own burst (the unknown pool held it);
        // when its uid is learnt, that spending is charged to the uid.
        let mut b = Budgets::new();
        assert_eq!(
            (0..64)
                .filter(|_| b.take_at(Some(":3.0"), None, 1.0, t0))
                .count(),
            64,
            "an unknown name's own burst"
        );
        assert!(
            !b.take_at(Some(":3.0"), user, 1.0, t0),
            "then its uid's, spent"
        );
        // The uid's bucket was charged the name's 64: empty, then refilled at the rate.
        let t1 = t0 + Duration::from_secs_f64(0.5 / SENDER_RATE);
        assert!(!b.take_at(Some(":3.0"), user, 1.0, t1));
        let t2 = t0 + Duration::from_secs_f64(1.5 / SENDER_RATE);
        assert!(b.take_at(Some(":3.0"), user, 1.0, t2));
        // No name can be charged more than MAX_DEBT below empty.
        let mut bucket = Bucket::new(SENDER_BURST, t0);
        bucket.charge(1e9, SENDER_BURST, SENDER_RATE, t0);
        let back = t0 + Duration::from_secs_f64((MAX_DEBT + 0.5) / SENDER_RATE);
        assert!(!bucket.take(1.0, SENDER_BURST, SENDER_RATE, back));
        let back = t0 + Duration::from_secs_f64((MAX_DEBT + 1.5) / SENDER_RATE);
        assert!(bucket.take(1.0, SENDER_BURST, SENDER_RATE, back));
    }

    /// Regression (connection churn): every new bus name got a fresh burst of its own before
    /// its uid was known, so a user opening and closing connections as fast as the bus let it
    /// was served far past any budget and trustd's bus service stalled. Calls dearer than a
    /// name's free first one (Introspect, a report) from names whose uid is not known draw on
    /// one pool: however many names, the calls served over ten seconds are the pool's burst
    /// plus ten seconds of its rate. (Cheap first calls: the test after this one.)
    #[test]
    fn churned_connections_share_one_unknown_pool() {
        let t0 = tokio::time::Instant::now();
        let mut n = 0u64;
        let mut b = Budgets::new();
        let mut served = 0usize;
        for tick in 0..=100u64 {
            let t = t0 + Duration::from_millis(tick * 100);
            for _ in 0..50 {
                n += 1;
                let name = format!(":9.{n}");
                served += (0..4)
                    .filter(|_| b.take_at(Some(&name), None, 16.0, t))
                    .count();
            }
        }
        let most = ((UNKNOWN_BURST + UNKNOWN_RATE * 10.0) / 16.0) as usize;
        assert!(
            served <= most + 1 && served + 1 >= most,
            "{served} Introspect calls served to {n} new names in 10 s, the pool allows {most}"
        );
        // A user whose uid is known is not touched by the empty pool.
        let known = Some(Identity {
            uid: Some(1001),
            privileged: false,
        });
        assert!(b.take_at(Some(":2.1"), known, 1.0, t0 + Duration::from_secs(10)));
    }

    /// Regression: a flood of new names filled the bucket map, and making room cleared every
    /// bucket, uids' included, so a user in debt was forgiven by churning names.
    #[test]
    fn churning_names_does_not_forgive_a_uids_debt() {
        let t0 = tokio::time::Instant::now();
        let mut b = Budgets::new();
        let user = Some(Identity {
            uid: Some(1000),
            privileged: false,
        });
        while b.take_at(Some(":1.1"), user, 1.0, t0) {}
        for n in 0..(2 * MAX_TRACKED) {
            b.take_at(Some(&format!(":5.{n}")), None, 1.0, t0);
            b.learn(
                &format!(":5.{n}"),
                Identity {
                    uid: None,
                    privileged: false,
                },
            );
        }
        assert!(
            !b.take_at(Some(":1.1"), user, 1.0, t0),
            "the uid's bucket is still empty"
        );
    }

    /// trustd's own client connection is never forgotten, however many names pass.
    #[test]
    fn a_pinned_name_outlives_any_number_of_names() {
        let mut b = Budgets::new();
        let own = Identity {
            uid: Some(0),
            privileged: true,
        };
        b.pin(":1.7", own);
        for n in 0..(3 * MAX_TRACKED) {
            b.learn(
                &format!(":6.{n}"),
                Identity {
                    uid: Some(1000),
                    privileged: false,
                },
            );
        }
        assert_eq!(b.identity(":1.7"), Some(own));
    }

    /// The reader spends at most WAIT_BUDGET seconds at once, and WAIT_RATE a second after,
    /// waiting for verdicts on large bodies' unknown senders, charged by the time really
    /// waited: waits the bus answers at once cost little, slow ones soon stop.
    #[test]
    fn time_spent_waiting_for_a_verdict_is_bounded() {
        let t0 = tokio::time::Instant::now();
        let mut b = Budgets::new();
        let mut n = 0;
        while b.may_wait(t0) {
            b.waited(JUDGE_WAIT, t0);
            n += 1;
        }
        assert_eq!(n, 2, "two slow waits spend the budget ({WAIT_BUDGET} s)");
        // Over ten seconds of slow waits, at most WAIT_RATE of each second is spent waiting.
        let mut spent = 0.0;
        for ms in (0..10_000).step_by(10) {
            let t = t0 + Duration::from_millis(ms);
            if b.may_wait(t) {
                b.waited(JUDGE_WAIT, t);
                spent += JUDGE_WAIT.as_secs_f64();
            }
        }
        assert!(
            spent <= WAIT_RATE * 10.0 + JUDGE_WAIT.as_secs_f64(),
            "{spent} s of ten spent waiting"
        );
        // Waits the bus answers at once are charged their round trip: many fit.
        let mut b = Budgets::new();
        let mut quick = 0;
        while b.may_wait(t0) && quick < 1000 {
            b.waited(Duration::from_micros(300), t0);
            quick += 1;
        }
        assert!(
            quick >= 100,
            "{quick} quick waits before the budget ran out"
        );
    }

    /// Regression (connection churn with cheap calls): each new name's free first calls were
    /// uncapped, so a user opening 1,500 connections a second, each pipelining 8 `Ping`s,
    /// made trustd answer 12,000 calls a second and its bus service (and the watchdog's
    /// reads) stalled for over a minute. All names' free first calls share one cap.
    #[test]
    fn free_first_calls_of_all_new_names_are_capped() {
        let t0 = tokio::time::Instant::now();
        let mut b = Budgets::new();
        let mut served = 0usize;
        let mut n = 0u64;
        for tick in 0..=100u64 {
            let t = t0 + Duration::from_millis(tick * 100);
            for _ in 0..150 {
                n += 1;
                let name = format!(":8.{n}");
                served += (0..8)
                    .filter(|_| b.take_at(Some(&name), None, 1.0, t))
                    .count();
            }
        }
        let most = (NEWCOMERS_BURST + NEWCOMERS_RATE * 10.0 + UNKNOWN_BURST + UNKNOWN_RATE * 10.0)
            as usize;
        assert!(
            served <= most + 8 && served + 8 >= most,
            "{served} calls served to {n} new names in 10 s (the caps allow {most})"
        );
        // A quiet moment later, a new caller's first call is answered.
        let later = t0 + Duration::from_secs(12);
        assert!(b.take_at(Some(":8.new"), None, 4.0, later));
    }

    /// Connection churn kept the unknown pool empty, so another user's new connection had its
    /// calls dropped. Calls over the budget of a sender not yet known are parked until its
    /// uid is known: served in each sender's order once their fate is known, the rest kept,
    /// and nothing kept past PARK_TTL or past the room there is.
    #[test]
    fn parked_calls_are_served_in_order_once_their_sender_is_known() {
        let t0 = tokio::time::Instant::now();
        let mut p = Parking::default();
        for (name, n) in [(":1.1", 1u8), (":1.2", 1), (":1.1", 2)] {
            p.park(name, vec![n], 1.0, t0).expect("room");
        }
        assert!(p.holds(":1.1") && p.holds(":1.2") && !p.holds(":1.3"));
        // :1.1 still unknown, :1.2 known: :1.2's call goes first, :1.1's stay in order.
        let fate = |known: &'static [&'static str]| {
            move |c: &Parked| {
                if known.contains(&c.sender.as_str()) {
                    Fate::Serve
                } else {
                    Fate::Wait
                }
            }
        };
        let mut dropped = Vec::new();
        let got = p.next(t0, fate(&[":1.2"]), |c| dropped.push(c.message));
        assert_eq!(
            got.map(|c| (c.sender, c.message)),
            Some((":1.2".into(), vec![1]))
        );
        assert!(
            p.next(t0, fate(&[":1.2"]), |c| dropped.push(c.message))
                .is_none()
        );
        let got = p.next(t0, fate(&[":1.1"]), |c| dropped.push(c.message));
        assert_eq!(
            got.map(|c| c.message),
            Some(vec![1]),
            "the first of :1.1 first"
        );
        let got = p.next(t0, fate(&[":1.1"]), |c| dropped.push(c.message));
        assert_eq!(got.map(|c| c.message), Some(vec![2]));
        assert!(p.is_empty() && dropped.is_empty() && !p.holds(":1.1"));

        // A sender whose budget is spent is dropped; one still unknown past PARK_TTL too.
        p.park(":2.1", vec![1], 1.0, t0).expect("room");
        p.park(":2.2", vec![2], 1.0, t0).expect("room");
        let late = t0 + PARK_TTL;
        let got = p.next(late, only(":2.1", Fate::Drop), |c| dropped.push(c.message));
        assert!(got.is_none());
        assert_eq!(dropped, vec![vec![1], vec![2]]);
        assert!(p.is_empty() && p.deadline().is_none());
    }

    /// A fate for the parked calls of `sender`; the others wait.
    fn only(sender: &'static str, fate: Fate) -> impl FnMut(&Parked) -> Fate {
        move |c| if c.sender == sender { fate } else { Fate::Wait }
    }

    /// The room for parked calls is bounded: per name, in calls and in bytes.
    #[test]
    fn parked_calls_are_bounded() {
        let t0 = tokio::time::Instant::now();
        let mut p = Parking::default();
        for _ in 0..PARK_PER_NAME {
            p.park(":1.1", vec![0; 8], 1.0, t0).expect("room");
        }
        assert!(
            p.park(":1.1", vec![0; 8], 1.0, t0).is_err(),
            "one name's share"
        );
        let mut n = 0;
        while p.park(&format!(":3.{n}"), vec![0; 8], 1.0, t0).is_ok() {
            n += 1;
        }
        assert_eq!(n + PARK_PER_NAME, PARK_MAX, "calls at once");
        // Bytes: one name's, then everyone's.
        let mut p = Parking::default();
        let big = PARK_NAME_BYTES / 2;
        assert!(p.park(":5.1", vec![0; big], 1.0, t0).is_ok());
        assert!(p.park(":5.1", vec![0; big], 1.0, t0).is_ok());
        assert!(
            p.park(":5.1", vec![0; 1], 1.0, t0).is_err(),
            "one name's bytes"
        );
        let mut n = 1;
        while p
            .park(&format!(":4.{n}"), vec![0; PARK_NAME_BYTES], 1.0, t0)
            .is_ok()
        {
            n += 1;
        }
        assert_eq!(n, PARK_BYTES / PARK_NAME_BYTES, "bytes at once");
        assert_eq!(p.deadline(), Some(t0 + PARK_TTL));
        // A served call gives its name's room back.
        let got = p.next(t0, only(":5.1", Fate::Serve), |_| ());
        assert!(got.is_some());
        assert!(p.park(":5.1", vec![0; big], 1.0, t0).is_ok());
    }

    /// The header fields the reader decides on, read from messages as zbus writes them, in
    /// both byte orders.
    #[test]
    fn sender_and_cost_from_real_headers() {
        for endian in [zbus::wire::Endian::Little, zbus::wire::Endian::Big] {
            let m = |iface: &str, member: &str| {
                zbus::Message::method_call("/org/enigm/Trust1", member)
                    .interface(iface)
                    .sender(":1.42")
                    .destination("org.enigm.Trust1")
                    .endian(endian)
                    .build(&("org.enigm.Trust1.Posture",))
                    .expect("build")
            };
            for (iface, member, want) in [
                ("org.freedesktop.DBus.Introspectable", "Introspect", 16.0),
                ("org.freedesktop.DBus.Properties", "GetAll", 4.0),
                ("org.enigm.Trust1.Posture", "GetReport", 4.0),
                ("org.freedesktop.DBus.Properties", "Get", 1.0),
                ("org.enigm.Trust1.Posture", "GetDeviceHandle", 1.0),
            ] {
                let msg = m(iface, member);
                let bytes = msg.data().to_vec();
                let h: [u8; 16] = bytes[..16].try_into().expect("16 bytes");
                let (big, ty, _body, fields) = primary(&h).expect("primary");
                assert_eq!(big, endian == zbus::wire::Endian::Big);
                assert_eq!(ty, 1, "a method call");
                let header = &bytes[..(16 + fields as usize).next_multiple_of(8)];
                assert_eq!(
                    sender(header, big, fields as usize).as_deref(),
                    Some(":1.42")
                );
                assert_eq!(cost(header, big, fields as usize), want, "{member}");
            }
        }
    }

    #[test]
    fn unix_path_addresses_and_others() {
        assert_eq!(
            unix_path("unix:path=/run/dbus/system_bus_socket"),
            Some("/run/dbus/system_bus_socket")
        );
        assert_eq!(unix_path("unix:path=/tmp/b,guid=0123"), Some("/tmp/b"));
        assert_eq!(unix_path("unix:abstract=/tmp/x"), None);
        assert_eq!(unix_path("tcp:host=127.0.0.1,port=1"), None);
    }
}
