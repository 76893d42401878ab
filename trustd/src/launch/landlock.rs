//! Landlock confinement of a launched app, best effort across kernel ABIs (the Debian 6.1
//! kernel has ABI 2: filesystem rules only). Applied by `trustd-launch` to itself right
//! before it executes the app, so the app and everything it starts inherit it.

use landlock::{
    ABI, Access, AccessFs, BitFlags, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus,
    path_beneath_rules,
};

use super::Profile;

/// The newest ABI whose filesystem rights this code asks for; older kernels get the
/// intersection (best effort), newer ones ignore what they add.
const ABI_ASKED: ABI = ABI::V5;

/// How the confinement came out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confinement {
    /// `fully enforced`, `partially enforced` or `not enforced`.
    pub status: &'static str,
    /// The kernel's Landlock ABI (0: none).
    pub abi: u32,
    /// Whether no_new_privs is set.
    pub no_new_privs: bool,
}

/// Restrict this thread (and what it executes) to the profile: read-only paths, read-write
/// paths (no execution there), executable paths (read and execute), plus the executable
/// itself. Everything else on the filesystem is denied (EACCES) where the kernel's ABI can
/// say so. Sets no_new_privs.
pub fn confine(profile: &Profile) -> Result<Confinement, String> {
    let mut executable = profile.execute.clone();
    executable.push(profile.exec.clone());
    restrict(&profile.read, &profile.write, &executable)
}

/// Restrict this thread and everything it later starts (threads and processes) to: `read`
/// (read files, list directories), `write` (everything but execute), `execute` (read and
/// execute). Paths that do not exist are left out. Call it before starting other threads.
pub fn restrict(
    read: &[String],
    write: &[String],
    execute: &[String],
) -> Result<Confinement, String> {
    let all = AccessFs::from_all(ABI_ASKED);
    let read_access: BitFlags<AccessFs> = AccessFs::ReadFile | AccessFs::ReadDir;
    let write_access = all & !AccessFs::Execute;
    let exec_access = read_access | AccessFs::Execute;
    let status = Ruleset::default()
        .handle_access(all)
        .and_then(|r| r.create())
        .and_then(|r| r.add_rules(path_beneath_rules(read, read_access)))
        .and_then(|r| r.add_rules(path_beneath_rules(write, write_access)))
        .and_then(|r| r.add_rules(path_beneath_rules(execute, exec_access)))
        .and_then(|r| r.restrict_self())
        .map_err(|e| format!("Landlock: {e}"))?;
    Ok(Confinement {
        status: match status.ruleset {
            RulesetStatus::FullyEnforced => "fully enforced",
            RulesetStatus::PartiallyEnforced => "partially enforced",
            RulesetStatus::NotEnforced => "not enforced",
        },
        abi: crate::sys::landlock_abi(),
        no_new_privs: status.no_new_privs,
    })
}

impl std::fmt::Display for Confinement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Landlock ABI {}: {}", self.abi, self.status)
    }
}
