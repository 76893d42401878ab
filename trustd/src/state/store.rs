//! Reading and writing the state directory.

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::atomic::{create_dir_all, write_atomic};
use super::{DeviceState, STATE_VERSION, Serials};
use crate::Paths;
use crate::bundle::{
    Envelope, Payload, Role, TrustRoot, Verified, verify_installed, verify_self_signed_root,
};
use crate::json::parse_strict;
use crate::policy::{IntelFeed, Policy};

/// Why the state directory could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Another process holds the state lock.
    #[error("state directory {0} is in use by another trustd or trustctl")]
    Locked(PathBuf),
    /// No usable trust root.
    #[error("trust root {path}: {reason}")]
    TrustRoot {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.into(),
        source,
    }
}

/// How the persisted state was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// No state directory content at all: a new device.
    Fresh,
    /// state.json read and valid.
    Loaded,
    /// state.json is missing but other state exists: most restrictive state assumed.
    Missing,
    /// state.json is unreadable or invalid: most restrictive state assumed.
    Corrupt(String),
}

/// The result of loading: always a state, plus what was wrong on the way.
#[derive(Debug)]
pub struct Loaded {
    /// The state to run with.
    pub state: DeviceState,
    /// How state.json was found.
    pub condition: Condition,
    /// The last-good policy, if present and still verifying.
    pub policy: Option<Verified<Policy>>,
    /// The last-good intel feed, if present and still verifying.
    pub intel: Option<Verified<IntelFeed>>,
    /// What a person should know about this load (each a sentence).
    pub notes: Vec<String>,
}

/// The state directory of one device.
#[derive(Debug, Clone)]
pub struct StateStore {
    paths: Paths,
}

/// Held while a process writes the state directory; released on drop.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

impl StateStore {
    /// The store under `paths`.
    pub fn new(paths: Paths) -> Self {
        Self { paths }
    }

    /// The paths it uses.
    pub fn paths(&self) -> &Paths {
        &self.paths
    }

    /// Take the exclusive lock of the state directory (creating the directory 0700).
    pub fn lock(&self) -> Result<StateLock, StateError> {
        let dir = self.paths.state_dir();
        create_dir_all(&dir, 0o700).map_err(io(&dir))?;
        let path = self.paths.state_lock();
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io(&path))?;
        match file.try_lock() {
            Ok(()) => Ok(StateLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(StateError::Locked(dir)),
            Err(std::fs::TryLockError::Error(e)) => Err(io(&path)(e)),
        }
    }

    /// Load the state. Never fails: what cannot be read makes the result more restrictive.
    pub fn load(&self, root: &TrustRoot) -> Loaded {
        let mut notes = Vec::new();
        let state_path = self.paths.state_file();
        let (mut state, condition) = match std::fs::read(&state_path) {
            Ok(bytes) => match parse_strict::<DeviceState>(&bytes) {
                Ok(s) if s.version == STATE_VERSION => (s, Condition::Loaded),
                Ok(s) => {
                    let why = format!(
                        "state.json has version {}, expected {STATE_VERSION}",
                        s.version
                    );
                    (self.restrictive(), Condition::Corrupt(why))
                }
                Err(e) => (
                    self.restrictive(),
                    Condition::Corrupt(format!("state.json: {e}")),
                ),
            },
            Err(e) if e.kind() == ErrorKind::NotFound => {
                if self.has_other_state() {
                    (self.restrictive(), Condition::Missing)
                } else {
                    (DeviceState::initial(), Condition::Fresh)
                }
            }
            Err(e) => (
                self.restrictive(),
                Condition::Corrupt(format!("state.json: {e}")),
            ),
        };
        match &condition {
            Condition::Missing => notes.push(
                "state.json is missing while other state exists: assuming the most restrictive state (lifecycle unknown, privacy on, setup incomplete)".into(),
            ),
            Condition::Corrupt(why) => notes.push(format!(
                "{why}: assuming the most restrictive state (lifecycle unknown, privacy on, setup incomplete)"
            )),
            Condition::Fresh | Condition::Loaded => {}
        }
        let trusted = matches!(condition, Condition::Loaded);
        let policy = self.load_input::<Policy>(
            &self.paths.policy_bundle(),
            root,
            &mut state,
            trusted,
            &mut notes,
        );
        let intel = self.load_input::<IntelFeed>(
            &self.paths.intel_feed(),
            root,
            &mut state,
            trusted,
            &mut notes,
        );
        Loaded {
            state,
            condition,
            policy,
            intel,
            notes,
        }
    }

    fn load_input<P: Payload>(
        &self,
        path: &Path,
        root: &TrustRoot,
        state: &mut DeviceState,
        trusted_state: bool,
        notes: &mut Vec<String>,
    ) -> Option<Verified<P>> {
        let what = P::ROLE.as_str();
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                if trusted_state && digest_slot(state, P::ROLE).is_some() {
                    notes.push(format!("last-good {what} file is missing: none in force"));
                }
                return None;
            }
            Err(e) => {
                notes.push(format!(
                    "last-good {what} file {}: {e}: none in force",
                    path.display()
                ));
                return None;
            }
        };
        let v = match verify_installed::<P>(&bytes, root) {
            Ok(v) => v,
            Err(e) => {
                notes.push(format!(
                    "last-good {what} no longer verifies ({e}): none in force"
                ));
                return None;
            }
        };
        let serial = v.payload().serial();
        let held = state.serials.get(P::ROLE);
        let matches = digest_slot(state, P::ROLE).as_deref() == Some(v.digest());
        if trusted_state && !matches {
            if serial > held {
                // Power was lost between writing the input and writing state.json.
                notes.push(format!(
                    "completed the interrupted install of {what} serial {serial}"
                ));
            } else {
                notes.push(format!(
                    "last-good {what} file (serial {serial}) is not the one state.json records (serial {held}): ignored"
                ));
                return None;
            }
        }
        state.serials.raise(P::ROLE, serial);
        *digest_slot(state, P::ROLE) = Some(v.digest().to_owned());
        Some(v)
    }

    /// The most restrictive state, with serial floors raised from whatever signed inputs
    /// are on disk (unverified: they can only make rollback protection stricter).
    fn restrictive(&self) -> DeviceState {
        let mut serials = Serials::default();
        for (path, role) in [
            (self.paths.policy_bundle(), Role::Policy),
            (self.paths.intel_feed(), Role::Intel),
            (self.paths.rotated_trust_root(), Role::Root),
            (self.paths.last_command(), Role::Command),
        ] {
            if let Some(s) = std::fs::read(&path)
                .ok()
                .and_then(|b| unverified_serial(&b))
            {
                serials.raise(role, s);
            }
        }
        DeviceState::most_restrictive(serials)
    }

    fn has_other_state(&self) -> bool {
        [
            self.paths.policy_bundle(),
            self.paths.intel_feed(),
            self.paths.device_secret(),
            self.paths.rotated_trust_root(),
            self.paths.last_command(),
        ]
        .iter()
        .any(|p| p.exists())
    }

    /// Persist `state` atomically.
    pub fn save(&self, state: &DeviceState) -> Result<(), StateError> {
        let dir = self.paths.state_dir();
        create_dir_all(&dir, 0o700).map_err(io(&dir))?;
        let path = self.paths.state_file();
        let mut bytes = serde_json::to_vec_pretty(state).map_err(|e| io(&path)(e.into()))?;
        bytes.push(b'\n');
        write_atomic(&path, &bytes, 0o600).map_err(io(&path))
    }

    /// Make `input` the last good one of its role: the envelope first, then the state that
    /// names it. A crash between the two is completed by the next [`Self::load`].
    pub fn install<P: Payload>(
        &self,
        input: &Verified<P>,
        state: &mut DeviceState,
    ) -> Result<(), StateError> {
        let path = match P::ROLE {
            Role::Policy => Some(self.paths.policy_bundle()),
            Role::Intel => Some(self.paths.intel_feed()),
            Role::Root => Some(self.paths.rotated_trust_root()),
            Role::Command => None,
        };
        let mut next = state.clone();
        if let Some(path) = path {
            let dir = self.paths.state_dir();
            create_dir_all(&dir, 0o700).map_err(io(&dir))?;
            write_atomic(&path, input.envelope_bytes(), 0o600).map_err(io(&path))?;
        }
        next.serials.raise(P::ROLE, input.payload().serial());
        if matches!(P::ROLE, Role::Policy | Role::Intel) {
            *digest_slot(&mut next, P::ROLE) = Some(input.digest().to_owned());
        }
        self.save(&next)?;
        *state = next;
        Ok(())
    }
}

fn digest_slot(state: &mut DeviceState, role: Role) -> &mut Option<String> {
    match role {
        Role::Intel => &mut state.intel_digest,
        _ => &mut state.policy_digest,
    }
}

fn unverified_serial(envelope: &[u8]) -> Option<u64> {
    let env: Envelope = serde_json::from_slice(envelope).ok()?;
    let payload = STANDARD.decode(env.payload).ok()?;
    serde_json::from_slice::<serde_json::Value>(&payload)
        .ok()?
        .get("serial")?
        .as_u64()
}

/// The trust root in force: a rotated one accepted earlier, else the provisioned one.
/// A rotated root that no longer verifies is an error, not a fallback to older keys.
pub fn load_trust_root(paths: &Paths) -> Result<TrustRoot, StateError> {
    let prov_path = paths.provisioned_trust_root();
    let provisioned = read_provisioned_root(&prov_path)?;
    let rot_path = paths.rotated_trust_root();
    match std::fs::read(&rot_path) {
        Ok(bytes) => {
            let rotated = verify_self_signed_root(&bytes).map_err(|e| StateError::TrustRoot {
                path: rot_path.clone(),
                reason: e.to_string(),
            })?;
            if rotated.serial <= provisioned.serial {
                return Err(StateError::TrustRoot {
                    path: rot_path,
                    reason: format!(
                        "rotated root serial {} is not above the provisioned serial {}",
                        rotated.serial, provisioned.serial
                    ),
                });
            }
            Ok(rotated)
        }
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(provisioned),
        Err(e) => Err(io(&rot_path)(e)),
    }
}

fn read_provisioned_root(path: &Path) -> Result<TrustRoot, StateError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    let bad = |reason: String| StateError::TrustRoot {
        path: path.into(),
        reason,
    };
    let root: TrustRoot = parse_strict(&bytes).map_err(|e| bad(e.to_string()))?;
    if root.schema != TrustRoot::SCHEMA {
        return Err(bad(format!(
            "schema is {:?}, this trustd reads {:?}",
            root.schema,
            TrustRoot::SCHEMA
        )));
    }
    root.validate().map_err(bad)?;
    Ok(root)
}
