//! The lock a single writer holds on its directory: an exclusive `flock` on a lock file in
//! it, taken without waiting. The kernel releases it when the holder dies, so a crash never
//! leaves a stale lock behind.

use std::fs::{File, OpenOptions};
use std::path::Path;

/// Held while a process writes the directory; released on drop.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

/// Why the lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process (or another open in this one) holds it.
    #[error("the lock is held by another process")]
    Held,
    /// The lock file could not be opened or locked.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Take the exclusive lock of `path` (created if missing, never truncated), without waiting.
pub fn try_lock(path: &Path) -> Result<DirLock, LockError> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    match file.try_lock() {
        Ok(()) => Ok(DirLock { _file: file }),
        Err(std::fs::TryLockError::WouldBlock) => Err(LockError::Held),
        Err(std::fs::TryLockError::Error(e)) => Err(LockError::Io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_until_the_first_lets_go() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join(".lock");
        let first = try_lock(&p).expect("first");
        assert!(matches!(try_lock(&p), Err(LockError::Held)));
        drop(first);
        try_lock(&p).expect("free again");
    }
}
