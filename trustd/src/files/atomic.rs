//! Atomic file replacement: temp file in the same directory, fsync, rename, fsync the
//! directory. A reader sees the old content or the new, never a mix, even after power loss.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// fsync a directory, so that a rename or a new entry in it is durable.
pub fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Replace `path` with `bytes` atomically and durably, with permission `mode`.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other("path has no parent directory"))?;
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("path has no file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        fsync_dir(dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// A file replaced by [`replace_keeping`]: the previous content is kept under a second link
/// until [`Kept::commit`] drops it or [`Kept::undo`] puts it back.
#[derive(Debug)]
pub struct Kept {
    path: std::path::PathBuf,
    backup: std::path::PathBuf,
    had: bool,
}

/// Replace `path` like [`write_atomic`], keeping its previous content (a second link: no
/// data is copied, so it works on a nearly full filesystem) so that the replacement can be
/// undone if a later step of the same change fails.
pub fn replace_keeping(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<Kept> {
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other("path has no parent directory"))?;
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("path has no file name"))?;
    let backup = dir.join(format!(".{}.before", name.to_string_lossy()));
    let _ = std::fs::remove_file(&backup);
    let had = match std::fs::hard_link(path, &backup) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(e),
    };
    if let Err(e) = write_atomic(path, bytes, mode) {
        let _ = std::fs::remove_file(&backup);
        return Err(e);
    }
    Ok(Kept {
        path: path.to_owned(),
        backup,
        had,
    })
}

impl Kept {
    /// The change went through: drop the previous content.
    pub fn commit(self) -> std::io::Result<()> {
        if self.had {
            std::fs::remove_file(&self.backup)?;
        }
        Ok(())
    }

    /// The change was refused: put the previous content back (or remove the file if there
    /// was none), durably.
    pub fn undo(self) -> std::io::Result<()> {
        if self.had {
            std::fs::rename(&self.backup, &self.path)?;
        } else {
            std::fs::remove_file(&self.path)?;
        }
        match self.path.parent() {
            Some(dir) => fsync_dir(dir),
            None => Ok(()),
        }
    }

    /// [`Self::commit`] or [`Self::undo`] as `ok` says; a failure is logged (the next load
    /// settles what is left).
    pub fn settle(self, ok: bool) {
        let path = self.path.clone();
        let r = if ok { self.commit() } else { self.undo() };
        if let Err(e) = r {
            tracing::error!(
                "{}: not {} after the change ({e}); the next load settles it",
                path.display(),
                if ok {
                    "cleaned up"
                } else {
                    "put back as it was"
                }
            );
        }
    }
}

/// Create `dir` with `mode` and any missing parents with 0755 (they are not trustd's: a
/// `/var/lib` made 0700 would shut every other service out), fsyncing each parent.
pub fn create_dir_all(dir: &Path, mode: u32) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_dir_all(parent, 0o755)?;
    }
    match std::fs::DirBuilder::new().mode(mode).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    if let Some(parent) = dir.parent() {
        fsync_dir(parent)?;
    }
    Ok(())
}

use std::os::unix::fs::DirBuilderExt;

#[cfg(test)]
mod tests {
    #[test]
    fn parents_made_on_the_way_are_0755_only_the_directory_gets_its_mode() {
        let d = tempfile::tempdir().expect("tempdir");
        let dir = d.path().join("var/lib/trustd");
        create_dir_all(&dir, 0o700).expect("mkdir");
        let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        // 0755 less the umask: never tighter than others need to pass through.
        assert_eq!(mode(&d.path().join("var")) & 0o055, 0o055 & !umask());
        assert_eq!(mode(&d.path().join("var/lib")) & 0o055, 0o055 & !umask());
    }

    fn umask() -> u32 {
        // The umask of this process, read from /proc (Linux 4.7+).
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Umask:"))
                    .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
            })
            .unwrap_or(0o022)
    }

    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_kept_replacement_is_undone_or_committed() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("f.json");
        write_atomic(&p, b"old", 0o600).expect("write");
        replace_keeping(&p, b"new", 0o600)
            .expect("replace")
            .undo()
            .expect("undo");
        assert_eq!(std::fs::read(&p).expect("read"), b"old");
        replace_keeping(&p, b"new", 0o600)
            .expect("replace")
            .commit()
            .expect("commit");
        assert_eq!(std::fs::read(&p).expect("read"), b"new");
        let q = d.path().join("g.json");
        replace_keeping(&q, b"x", 0o600)
            .expect("replace")
            .undo()
            .expect("undo");
        assert!(!q.exists());
        assert_eq!(std::fs::read_dir(d.path()).expect("ls").count(), 1);
    }

    #[test]
    fn replaces_content_and_sets_mode_and_leaves_no_temp() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("f.json");
        write_atomic(&p, b"one", 0o600).expect("write");
        write_atomic(&p, b"two", 0o600).expect("write");
        assert_eq!(std::fs::read(&p).expect("read"), b"two");
        let mode = std::fs::metadata(&p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let names: Vec<_> = std::fs::read_dir(d.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("f.json")]);
    }
}
