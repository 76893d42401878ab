//! The engine in-process, driven step by step (no root, no bus, no timer): a device under a
//! tempdir, the recording fake for the kernel, a fixed wall clock and a monotonic clock the
//! test moves forward.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::watch;
use trustd::audit::{Actor, Options, Record, read_records};
use trustd::daemon::engine::Reconfigure;
use trustd::daemon::{Call, CallError, Caller, Command, Device, Engine, RoleGroups, Tx};
use trustd::freshness::build_time;
use trustd::netfilter::{Backend, RecordingBackend};
use trustd::posture::Posture;
use trustd::timefmt::Timestamp;

use super::{TestDevice, key, sign};

/// The gid that holds the admin role in these tests.
pub const ADMIN_GID: u32 = 900;
/// The gid that holds the setup role.
pub const SETUP_GID: u32 = 901;
/// The payload type of lifecycle commands.
pub const COMMAND: &str = "application/vnd.enigm.command+json";

/// The engine's wall clock: an hour after this build (plausible, and after every input
/// [`dated`] makes).
pub fn wall() -> Timestamp {
    build_time().plus_secs(3600)
}

/// `v` with this serial, issued a day before this build and valid a year after it.
pub fn dated(mut v: Value, serial: u64) -> Value {
    v["serial"] = json!(serial);
    v["issued_at"] = json!(build_time().plus_secs(-86_400).to_string());
    v["expires_at"] = json!(build_time().plus_secs(365 * 86_400).to_string());
    v
}

/// A policy envelope (keys 2 and 3) of `v` dated by [`dated`].
pub fn signed(v: Value, serial: u64) -> Vec<u8> {
    sign(super::POLICY, &dated(v, serial), &[&key(2), &key(3)])
}

/// A lifecycle command envelope (key 6) for `device` (its handle for `issuer`).
pub fn command(serial: u64, issuer: &str, device: &str, action: &str) -> Vec<u8> {
    let v = dated(
        json!({
            "schema": "enigm.command/v1",
            "issuer": issuer, "device": device, "action": action,
            "nonce": format!("nonce-{serial}-{action}"),
        }),
        serial,
    );
    sign(COMMAND, &v, &[&key(6)])
}

/// A caller as the bus daemon would report it.
pub fn caller(uid: u32, gids: &[u32]) -> Caller {
    Caller {
        uid,
        gids: gids.to_vec(),
        pid: Some(10_000 + uid),
        bus_name: format!(":1.{uid}"),
    }
}

/// uid 0.
pub fn root() -> Caller {
    caller(0, &[0])
}
/// A member of the admin group.
pub fn admin_member() -> Caller {
    caller(1001, &[1001, ADMIN_GID])
}
/// A member of the setup group.
pub fn setup_member() -> Caller {
    caller(1002, &[1002, SETUP_GID])
}
/// An ordinary user.
pub fn user() -> Caller {
    caller(1003, &[1003])
}
/// nobody.
pub fn nobody() -> Caller {
    caller(65534, &[65534])
}

/// Open the device with small audit segments (tests read the whole log after each call;
/// a segment is preallocated to its size).
pub fn open(dev: &TestDevice) -> Device {
    let opts = Options {
        max_segment_bytes: 256 << 10,
    };
    Device::open_with(&dev.paths, Actor::this_process(), opts).expect("open")
}

/// The admin and setup groups the engine starts with.
pub const GROUPS: RoleGroups = RoleGroups {
    admin: Some(ADMIN_GID),
    setup: Some(SETUP_GID),
};

/// The engine over a tempdir device and the recording fake.
pub struct Harness {
    /// The device's files.
    pub dev: TestDevice,
    /// The engine.
    pub engine: Engine<RecordingBackend>,
    /// The posture it publishes.
    pub posture: watch::Receiver<Posture>,
    /// How far the injected monotonic clock is past its start.
    elapsed: Arc<Mutex<Duration>>,
}

impl Harness {
    /// A device with `policy` installed (none: no policy), the engine started on it.
    pub fn new(policy: Option<Value>) -> Self {
        let dev = TestDevice::new();
        let mut d = open(&dev);
        if let Some(p) = policy {
            d.apply_policy(&signed(p, 5), Actor::this_process(), wall())
                .expect("policy");
        }
        Self::start(dev, d)
    }

    /// Start the engine on an open device.
    pub fn start(dev: TestDevice, d: Device) -> Self {
        Self::start_with(dev, d, Box::new(move || Ok(GROUPS)))
    }

    /// Start the engine on an open device, with [`GROUPS`] and `reconfigure` as the
    /// configuration a reload reads.
    pub fn start_with(dev: TestDevice, d: Device, reconfigure: Reconfigure) -> Self {
        let (mut engine, posture) =
            Engine::start(d, RecordingBackend::default(), GROUPS, reconfigure, wall)
                .expect("start");
        let elapsed = Arc::new(Mutex::new(Duration::ZERO));
        let base = Instant::now();
        let e = elapsed.clone();
        engine.set_monotonic(Box::new(move || base + *e.lock().expect("clock")));
        Self {
            dev,
            engine,
            posture,
            elapsed,
        }
    }

    /// One call, carried out to its answer (of its own type).
    pub fn call<T>(
        &mut self,
        who: &Caller,
        call: impl FnOnce(Tx<T>) -> Call,
    ) -> Result<T, CallError> {
        let (reply, mut answer) = tokio::sync::oneshot::channel();
        let stop = self
            .engine
            .step(Command::Call {
                caller: who.clone(),
                call: call(reply),
            })
            .expect("a call does not end the engine");
        assert!(!stop);
        answer
            .try_recv()
            .expect("answered before the step returned")
    }

    /// One drift check (as the engine's timer would start it).
    pub fn tick(&mut self) {
        self.engine.step(Command::Tick).expect("tick");
    }

    /// Move the monotonic clock forward.
    pub fn advance(&self, by: Duration) {
        *self.elapsed.lock().expect("clock") += by;
    }

    /// Every audit record.
    pub fn records(&self) -> Vec<Record> {
        read_records(&self.dev.paths.audit_dir()).expect("audit")
    }

    /// The records of one kind: (outcome as text, uid, reason).
    pub fn of_kind(&self, kind: &str) -> Vec<Record> {
        self.records()
            .into_iter()
            .filter(|r| r.kind == kind)
            .collect()
    }

    /// The posture now.
    pub fn now(&mut self) -> Posture {
        self.posture.borrow_and_update().clone()
    }

    /// The objects the fake kernel holds (`None`: no table).
    pub fn kernel(&mut self) -> Option<String> {
        self.engine
            .backend_mut()
            .list_table("trustd")
            .expect("the fake lists")
    }
}
