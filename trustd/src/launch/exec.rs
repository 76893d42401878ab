//! The exec-time checks `trustd-launch` makes after trustd said yes: the executable is opened
//! once, refused unless only root can change it, hashed through the open descriptor and
//! compared with the pin; what is executed is that descriptor (fexecve), with an argument
//! vector and an environment the dynamic loader cannot be steered through.

use std::ffi::{CString, OsString};
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;

use sha2::{Digest, Sha256};

use super::Profile;

/// Why an executable cannot be started as pinned. Each is a refusal (`trustd-launch` exits 1
/// and reports it to trustd).
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    /// It cannot be opened or read.
    #[error("{path}: {source}")]
    Io {
        /// The policy's path.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// It is a directory, device, socket or FIFO.
    #[error("{path} is not a regular file")]
    NotRegular {
        /// The policy's path.
        path: String,
    },
    /// Someone other than root could change it between the hash and the exec.
    #[error(
        "{path} may be written by others than root (owner uid {uid}, mode {mode:o}): it cannot be pinned"
    )]
    Writable {
        /// The policy's path.
        path: String,
        /// Its owner.
        uid: u32,
        /// Its permission bits.
        mode: u32,
    },
    /// Its content is not the pinned one.
    #[error("{path} has sha256 {got}, the policy pins {want}")]
    Hash {
        /// The policy's path.
        path: String,
        /// Lowercase hex SHA-256 of what was read.
        got: String,
        /// The policy's.
        want: String,
    },
}

/// Whether a file with this owner and mode can be pinned: owned by root, and neither its
/// group nor others may write it (mode bits 0o022 clear).
pub fn only_root_can_write(uid: u32, mode: u32) -> bool {
    uid == 0 && mode & 0o022 == 0
}

/// Open `p.exec` (following symlinks: what counts is the file opened), refuse it unless it is
/// a regular file only root can write, and hash it through the open descriptor; the
/// descriptor returned is the file whose SHA-256 is `p.sha256`.
pub fn open_pinned(p: &Profile) -> Result<OwnedFd, PinError> {
    let io = |source| PinError::Io {
        path: p.exec.clone(),
        source,
    };
    let mut f = std::fs::File::open(&p.exec).map_err(io)?;
    let meta = f.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(PinError::NotRegular {
            path: p.exec.clone(),
        });
    }
    if !only_root_can_write(meta.uid(), meta.mode()) {
        return Err(PinError::Writable {
            path: p.exec.clone(),
            uid: meta.uid(),
            mode: meta.mode() & 0o7777,
        });
    }
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let got = crate::digest::hex(&h.finalize());
    if got != p.sha256 {
        return Err(PinError::Hash {
            path: p.exec.clone(),
            got,
            want: p.sha256.clone(),
        });
    }
    Ok(f.into())
}

/// The argument vector: the policy's path as `argv[0]`, then `args`. Errors: an argument
/// with a NUL byte (it cannot be passed to execve).
pub fn argv(exec: &str, args: &[OsString]) -> Result<Vec<CString>, String> {
    let to_c = |b: &[u8]| CString::new(b).map_err(|_| "an argument contains a NUL byte".to_owned());
    let mut out = vec![to_c(exec.as_bytes())?];
    for a in args {
        out.push(to_c(a.as_bytes())?);
    }
    Ok(out)
}

/// The environment passed on: `vars` without the dynamic loader's variables (every name
/// starting `LD_`: `LD_PRELOAD`, `LD_LIBRARY_PATH`, `LD_AUDIT`...), which would run code
/// that is not pinned inside the pinned app, and without entries that hold a NUL byte.
pub fn exec_env(vars: impl IntoIterator<Item = (OsString, OsString)>) -> Vec<CString> {
    vars.into_iter()
        .filter(|(k, _)| !k.as_bytes().starts_with(b"LD_"))
        .filter_map(|(k, v)| {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend(v.as_bytes());
            CString::new(kv).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(exec: &std::path::Path, sha256: &str) -> Profile {
        Profile {
            app: "a".into(),
            exec: exec.display().to_string(),
            sha256: sha256.into(),
            read: vec![],
            write: vec![],
            execute: vec![],
        }
    }

    #[test]
    fn only_files_no_one_but_root_can_write_are_pinnable() {
        assert!(only_root_can_write(0, 0o100755));
        assert!(only_root_can_write(0, 0o100500));
        assert!(!only_root_can_write(1000, 0o100755), "owned by a user");
        assert!(!only_root_can_write(0, 0o100775), "group-writable");
        assert!(!only_root_can_write(0, 0o100757), "world-writable");
    }

    #[test]
    fn a_directory_a_missing_file_or_another_hash_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = open_pinned(&profile(dir.path(), "00")).expect_err("a directory");
        assert!(matches!(e, PinError::NotRegular { .. }), "{e}");
        let e = open_pinned(&profile(&dir.path().join("none"), "00")).expect_err("missing");
        assert!(matches!(e, PinError::Io { .. }), "{e}");
        let f = dir.path().join("app");
        std::fs::write(&f, b"#!/bin/sh\n").expect("write");
        let e = open_pinned(&profile(&f, &"0".repeat(64))).expect_err("refused");
        // As root the hash is what differs; otherwise the owner already refuses it.
        match e {
            PinError::Hash { got, .. } => {
                assert_eq!(got, crate::digest::hex(&Sha256::digest(b"#!/bin/sh\n")));
            }
            PinError::Writable { uid, .. } => assert_ne!(uid, 0),
            e => panic!("{e}"),
        }
    }

    #[test]
    fn the_loader_variables_are_not_passed_on() {
        let env = exec_env([
            ("PATH".into(), "/usr/bin".into()),
            ("LD_PRELOAD".into(), "/tmp/evil.so".into()),
            ("LD_LIBRARY_PATH".into(), "/tmp".into()),
            ("LD_AUDIT".into(), "/tmp/a.so".into()),
            ("HOME".into(), "/home/u".into()),
        ]);
        let env: Vec<&str> = env.iter().map(|c| c.to_str().expect("utf-8")).collect();
        assert_eq!(env, ["PATH=/usr/bin", "HOME=/home/u"]);
    }

    #[test]
    fn arguments_keep_their_order_after_the_pinned_path_and_nul_is_refused() {
        let a = argv("/usr/bin/app", &["-x".into(), "two words".into()]).expect("argv");
        let a: Vec<&str> = a.iter().map(|c| c.to_str().expect("utf-8")).collect();
        assert_eq!(a, ["/usr/bin/app", "-x", "two words"]);
        use std::os::unix::ffi::OsStringExt;
        let nul = OsString::from_vec(b"a\0b".to_vec());
        assert!(argv("/usr/bin/app", &[nul]).is_err());
    }
}
