//! Reading and writing the state directory.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::input::{Stored, StoredRole};
use super::recovery::{Installed, RoleReset, start_over};
use super::{DeviceState, STATE_VERSION, Serials};
use crate::Paths;
use crate::bundle::{
    Envelope, Payload, Role, TrustRoot, Verified, verify_installed, verify_self_signed_root,
};
use crate::files::atomic::{create_dir_all, fsync_dir, replace_keeping, write_atomic};
use crate::files::lock::{DirLock, LockError, try_lock};
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
    /// The roles started over because the trust root changed their keys or threshold
    /// since their floors were set (a rotation a crash interrupted before state.json).
    pub resets: Vec<RoleReset>,
    /// `state` differs from state.json in a way that must be written back before anything
    /// else happens: roles started over (set aside what left force first), or a state.json
    /// written before the roles were recorded.
    pub rewrite: bool,
}

/// The state directory of one device.
#[derive(Debug, Clone)]
pub struct StateStore {
    paths: Paths,
}

/// Held while a process writes the state directory; released on drop.
pub type StateLock = DirLock;

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
        match try_lock(&path) {
            Ok(l) => Ok(l),
            Err(LockError::Held) => Err(StateError::Locked(dir)),
            Err(LockError::Io(e)) => Err(io(&path)(e)),
        }
    }

    /// Load the state. Never fails: what cannot be read makes the result more restrictive.
    ///
    /// Every installed input is verified against `root`, the trust root in force: one it no
    /// longer verifies is not put in force and raises no floor. When `root` changed the
    /// keys or threshold of a role since its floor was set (a rotation, also one a crash
    /// interrupted), that role starts over as [`super::recovery`] says; the result then
    /// asks to be written back ([`Loaded::rewrite`]).
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
                    (self.restrictive(root), Condition::Corrupt(why))
                }
                Err(e) => (
                    self.restrictive(root),
                    Condition::Corrupt(format!("state.json: {e}")),
                ),
            },
            Err(e) if e.kind() == ErrorKind::NotFound => {
                if self.has_other_state() {
                    (self.restrictive(root), Condition::Missing)
                } else {
                    (DeviceState::initial(), Condition::Fresh)
                }
            }
            Err(e) => (
                self.restrictive(root),
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
        let mut resets = Vec::new();
        let mut rewrite = false;
        match state.floor_roles.clone() {
            Some(under) if trusted => {
                // Only the inputs of changed roles are read (a feed can be large).
                let changed: Vec<Role> =
                    under.changes(&root.roles).iter().map(|c| c.role).collect();
                let bytes: Vec<(Role, Vec<u8>)> = changed
                    .iter()
                    .filter_map(|role| Some((*role, std::fs::read(self.input_path(*role)).ok()?)))
                    .collect();
                let installed = bytes
                    .iter()
                    .fold(Installed::default(), |i, (role, b)| i.with(*role, Some(b)));
                resets = start_over(&mut state, &under, root, &installed);
                for r in &resets {
                    notes.push(format!(
                        "the trust root changed a role since its floor was set: {r}"
                    ));
                }
                rewrite = !resets.is_empty();
            }
            // Written before the roles were recorded: the floors were set under this root.
            None if trusted => rewrite = true,
            _ => {}
        }
        state.floor_roles = Some(root.roles.clone());
        let policy = self.load_input::<Policy>(root, &mut state, trusted, &mut notes);
        let intel = self.load_input::<IntelFeed>(root, &mut state, trusted, &mut notes);
        Loaded {
            state,
            condition,
            policy,
            intel,
            notes,
            resets,
            rewrite,
        }
    }

    /// Load the last-good input of type `P`, one `state.json` names by digest.
    fn load_input<P: Stored>(
        &self,
        root: &TrustRoot,
        state: &mut DeviceState,
        trusted_state: bool,
        notes: &mut Vec<String>,
    ) -> Option<Verified<P>> {
        let what = P::ROLE.as_str();
        let path = self.paths.input::<P>();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                if trusted_state && P::digest_mut(state).is_some_and(|d| d.is_some()) {
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
        let held = P::floor(&state.serials);
        let matches = P::digest_mut(state).is_some_and(|d| d.as_deref() == Some(v.digest()));
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
        let floor = P::floor_mut(&mut state.serials);
        *floor = (*floor).max(serial);
        if let Some(d) = P::digest_mut(state) {
            *d = Some(v.digest().to_owned());
        }
        Some(v)
    }

    /// The most restrictive state. Its floors come from the signed inputs on disk that
    /// `root` still verifies: the inputs loaded at start (policy, intel feed) raise theirs
    /// when loaded, every other one (the last command) here, the root's from `root` itself.
    /// An input the trust root no longer verifies (one signed by keys a rotation removed,
    /// with whatever serial) raises nothing, or a stolen key's serial would come back with a
    /// lost state.json.
    fn restrictive(&self, root: &TrustRoot) -> DeviceState {
        let mut serials = Serials::default();
        serials.raise(Role::Root, root.serial);
        for role in Role::ALL {
            let stored = StoredRole::of_role(role);
            if role == Role::Root || stored.loaded_at_start() {
                continue;
            }
            if let Some((serial, _)) = std::fs::read(self.input_path(role))
                .ok()
                .and_then(|b| stored.check_installed(&b, root).ok())
            {
                serials.raise(role, serial);
            }
        }
        DeviceState::most_restrictive(serials)
    }

    /// The file an installed input of `role` is kept in ([`Payload::FILE_NAME`]).
    pub fn input_path(&self, role: Role) -> PathBuf {
        self.paths
            .state_dir()
            .join(StoredRole::of_role(role).file_name)
    }

    /// Move the installed input of `role` out of use, to `<its name>.untrusted` beside it
    /// (replacing an earlier one): kept as evidence, read by nothing. Returns where it
    /// went, or `None` if there was no such file.
    pub fn set_aside(&self, role: Role) -> Result<Option<PathBuf>, StateError> {
        let from = self.input_path(role);
        let mut name = from.file_name().unwrap_or_default().to_os_string();
        name.push(".untrusted");
        let to = from.with_file_name(name);
        match std::fs::rename(&from, &to) {
            Ok(()) => {
                let dir = self.paths.state_dir();
                fsync_dir(&dir).map_err(io(&dir))?;
                Ok(Some(to))
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&from)(e)),
        }
    }

    fn has_other_state(&self) -> bool {
        Role::ALL
            .into_iter()
            .map(|role| self.input_path(role))
            .chain([self.paths.device_secret()])
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
    pub fn install<P: Stored>(
        &self,
        input: &Verified<P>,
        state: &mut DeviceState,
    ) -> Result<(), StateError> {
        self.install_with(input, state, |_| {})
    }

    /// [`Self::install`], with `also` changing the state in the same write (a lifecycle
    /// command's new lifecycle): both take effect, or neither.
    pub fn install_with<P: Stored>(
        &self,
        input: &Verified<P>,
        state: &mut DeviceState,
        also: impl FnOnce(&mut DeviceState),
    ) -> Result<(), StateError> {
        let path = self.paths.input::<P>();
        let mut next = state.clone();
        // The envelope in place before is kept (a second link) until the state that names
        // the new one is saved: if that fails, it is put back, so that a refused install is
        // not completed by the next load (and a refused command raises no floor).
        let dir = self.paths.state_dir();
        create_dir_all(&dir, 0o700).map_err(io(&dir))?;
        let kept = replace_keeping(&path, input.envelope_bytes(), 0o600).map_err(io(&path))?;
        let floor = P::floor_mut(&mut next.serials);
        *floor = (*floor).max(input.payload().serial());
        if let Some(d) = P::digest_mut(&mut next) {
            *d = Some(input.digest().to_owned());
        }
        also(&mut next);
        let saved = self.save(&next);
        kept.settle(saved.is_ok());
        saved?;
        *state = next;
        Ok(())
    }
}

/// The serial an envelope's payload claims, without any check: for records only.
pub(super) fn unverified_serial(envelope: &[u8]) -> Option<u64> {
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
    let bytes = crate::files::capped::read_capped(path, crate::bundle::MAX_ENVELOPE_BYTES)
        .map_err(io(path))?;
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
