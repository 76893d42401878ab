//! trustd's own Landlock profile: what the running daemon may read, write and execute once
//! its state is loaded (`trustd run --confine`).
//!
//! The profile is a pure function of the device's [`Paths`], the nft binary and `$PATH`
//! ([`profile`]); [`confine_self`] hands it to [`crate::launch::landlock::restrict`]. See
//! docs/SECURITY.md ("The service").

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use crate::Paths;

/// System directories trustd reads (libraries, `/etc` for users and groups, `/proc` for its
/// own status), besides its configuration directory.
pub const SYSTEM_READ: &[&str] = &["/etc", "/usr", "/lib", "/lib64", "/proc"];

/// The dynamic loaders that start nft (x86-64 and aarch64); nft's libraries are mapped, not
/// executed.
pub const LOADERS: &[&str] = &["/lib64/ld-linux-x86-64.so.2", "/lib/ld-linux-aarch64.so.1"];

/// trustd's Landlock profile as path lists (absolute paths, as given to
/// [`crate::launch::landlock::restrict`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelfProfile {
    /// Read-only: [`SYSTEM_READ`] and the configuration directory.
    pub read: Vec<String>,
    /// Read-write, never executable: the state, log and runtime directories and `/dev/null`.
    pub write: Vec<String>,
    /// Read and execute: nft (as `$PATH` finds it) and [`LOADERS`].
    pub execute: Vec<String>,
}

/// The profile for the device at `paths`, executing `nft` looked up in `path_env` (the value
/// of `$PATH`; `None`: unset). The log directory is the audit directory's parent
/// (`/var/log/trustd`).
pub fn profile(paths: &Paths, nft: &Path, path_env: Option<&OsStr>) -> SelfProfile {
    let s = |p: PathBuf| p.display().to_string();
    let read = SYSTEM_READ
        .iter()
        .map(|p| (*p).to_owned())
        .chain([s(paths.config_dir())])
        .collect();
    let log_dir = paths
        .audit_dir()
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| paths.audit_dir());
    let write = vec![
        s(paths.state_dir()),
        s(log_dir),
        s(paths.runtime_dir()),
        "/dev/null".to_owned(),
    ];
    let execute = std::iter::once(s(which(nft, path_env)))
        .chain(LOADERS.iter().map(|p| (*p).to_owned()))
        .collect();
    SelfProfile {
        read,
        write,
        execute,
    }
}

/// The executable `name` as `$PATH` (`path_env`) finds it: the first directory holding a
/// regular file of that name; `name` itself if it has a slash or nothing is found (Landlock
/// then allows a path that does not exist, and nft's start fails visibly).
pub fn which(name: &Path, path_env: Option<&OsStr>) -> PathBuf {
    if name.components().count() > 1 {
        return name.to_owned();
    }
    path_env
        .into_iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| name.to_owned())
}

/// Confine this process with [`profile`] (call it before any other thread exists, so that all
/// inherit it). Returns how it came out (`Landlock ABI N: fully enforced`, ...), or why it
/// could not be done.
///
/// # Errors
/// The Landlock ruleset could not be built or applied (the reason as text).
pub fn confine_self(paths: &Paths, nft: &Path) -> Result<String, String> {
    let p = profile(paths, nft, std::env::var_os("PATH").as_deref());
    crate::launch::landlock::restrict(&p.read, &p.write, &p.execute).map(|c| c.to_string())
}

/// How trustd is confined, `how` for its main thread, given what the TPM's thread (started
/// before the main thread confined itself) reported when it confined itself (`None`: no TPM
/// thread). Unless that thread is confined as fully as the main one, the result ends with
/// "not enforced", which posture reports as a degradation: a thread outside the profile is a
/// way around it.
pub fn with_tpm_thread(how: String, tpm: Option<Result<String, String>>) -> String {
    match tpm {
        None => how,
        Some(Ok(t)) if t == how => how,
        Some(Ok(t)) => format!("{how}; the TPM thread: {t}, not enforced"),
        Some(Err(e)) => format!("{how}; the TPM thread: {e}, not enforced"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: the TPM's thread, started before trustd confined itself, stayed outside
    /// the Landlock profile while posture said "fully enforced". A TPM thread that could not
    /// confine itself as the main thread did now makes the confinement "not enforced".
    #[test]
    fn a_tpm_thread_outside_the_profile_is_not_full_confinement() {
        let full = "Landlock ABI 4: fully enforced".to_owned();
        assert_eq!(with_tpm_thread(full.clone(), None), full);
        assert_eq!(with_tpm_thread(full.clone(), Some(Ok(full.clone()))), full);
        for tpm in [
            Some(Err("the TPM thread ended".to_owned())),
            Some(Ok("Landlock ABI 4: partially enforced".to_owned())),
        ] {
            let how = with_tpm_thread(full.clone(), tpm);
            assert!(how.ends_with("not enforced"), "{how}");
        }
    }

    #[test]
    fn profile_writes_only_trustds_own_directories() {
        let p = profile(
            &Paths::new("/pfx"),
            Path::new("/usr/sbin/nft"),
            Some(OsStr::new("/nonexistent")),
        );
        assert_eq!(
            p.write,
            [
                "/pfx/var/lib/trustd",
                "/pfx/var/log/trustd",
                "/pfx/run/trustd",
                "/dev/null"
            ]
        );
        assert_eq!(
            p.read,
            ["/etc", "/usr", "/lib", "/lib64", "/proc", "/pfx/etc/trustd"]
        );
        // Nothing writable is executable, and the configuration is never writable.
        for w in &p.write {
            assert!(!p.execute.contains(w), "{w} both writable and executable");
            assert!(!w.starts_with("/pfx/etc"), "{w}: configuration writable");
        }
        assert_eq!(p.execute[0], "/usr/sbin/nft");
        assert_eq!(&p.execute[1..], LOADERS);
    }

    #[test]
    fn nft_is_resolved_through_path_like_the_exec_does() {
        let dir = tempfile::tempdir().expect("tempdir");
        let empty = dir.path().join("empty");
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&empty).expect("mkdir");
        std::fs::create_dir_all(bin.join("nft-dir")).expect("mkdir");
        std::fs::write(bin.join("nft"), b"").expect("write nft");
        let path = std::env::join_paths([&empty, &bin]).expect("PATH");
        assert_eq!(which(Path::new("nft"), Some(&path)), bin.join("nft"));
        // A directory of that name is not the executable.
        assert_eq!(
            which(Path::new("nft-dir"), Some(&path)),
            PathBuf::from("nft-dir")
        );
        // Not found, or no $PATH: the name as given.
        assert_eq!(which(Path::new("nft"), None), PathBuf::from("nft"));
        // A path with a slash is taken as is, never looked up.
        assert_eq!(
            which(Path::new("./nft"), Some(&path)),
            PathBuf::from("./nft")
        );
        let p = profile(&Paths::new("/"), Path::new("nft"), Some(&path));
        assert_eq!(p.execute[0], bin.join("nft").display().to_string());
    }
}
