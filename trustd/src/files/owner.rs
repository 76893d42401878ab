//! Who may write a device's files: their owner only.
//!
//! On a packaged device the state and log directories belong to the `trustd` user (both
//! units run as it). Files that root created there (state.json, a last-good bundle, a new
//! audit segment, the device key: all 0600 or 0640) would be unreadable to trustd, which
//! would then start from the most restrictive state with no policy, in lockdown. So every
//! command that opens the device's files for writing as some other user (`trustctl load`,
//! `trustd check`, `trustd apply` or `trustd run` started by hand as root) is refused before
//! it writes anything.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::paths::Paths;

/// A device directory that belongs to another user than the one running.
#[derive(Debug, thiserror::Error)]
#[error(
    "{} belongs to uid {owner}, not to this user (uid {me}): files written now would be \
     unreadable to trustd; run as the directory's owner (e.g. `runuser -u trustd -- ...`); \
     nothing changed",
    dir.display()
)]
pub struct ForeignOwner {
    /// The directory.
    pub dir: PathBuf,
    /// Its owner's uid.
    pub owner: u32,
    /// The effective uid of this process.
    pub me: u32,
}

/// Check that this process's effective uid owns every directory trustd writes under `paths`
/// (the state directory, `/var/log/trustd` and the audit directory). A directory that does
/// not exist yet passes: whoever creates it owns it.
///
/// Errors: [`ForeignOwner`] for the first directory owned by another uid.
pub fn refuse_foreign_owner(paths: &Paths) -> Result<(), ForeignOwner> {
    let me = crate::sys::euid();
    let audit = paths.audit_dir();
    let logs = audit
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| audit.clone());
    for dir in [paths.state_dir(), logs, audit] {
        if let Ok(meta) = std::fs::metadata(&dir)
            && meta.uid() != me
        {
            return Err(ForeignOwner {
                dir,
                owner: meta.uid(),
                me,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_of_this_user_or_not_yet_made_pass() {
        let d = tempfile::tempdir().expect("tempdir");
        let paths = Paths::new(d.path());
        refuse_foreign_owner(&paths).expect("nothing exists yet");
        std::fs::create_dir_all(paths.audit_dir()).expect("mkdir");
        std::fs::create_dir_all(paths.state_dir()).expect("mkdir");
        refuse_foreign_owner(&paths).expect("all ours");
    }

    #[test]
    fn a_directory_of_another_user_is_refused_and_named() {
        // Needs root to give a directory away; as another user, chown fails and the check
        // is the one the other test makes.
        if crate::sys::euid() != 0 {
            return;
        }
        let d = tempfile::tempdir().expect("tempdir");
        let paths = Paths::new(d.path());
        std::fs::create_dir_all(paths.state_dir()).expect("mkdir");
        std::os::unix::fs::chown(paths.state_dir(), Some(65534), Some(65534)).expect("chown");
        let e = refuse_foreign_owner(&paths).expect_err("refused");
        assert_eq!((e.owner, e.me), (65534, 0));
        assert!(e.to_string().contains("nothing changed"), "{e}");
    }
}
