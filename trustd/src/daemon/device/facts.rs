//! Facts about the host that do not change while trustd runs, read once when the device is
//! opened: posture and signed reports state them, and reading them once makes
//! [`super::Device::posture`] a function of the device's state, these facts and the time
//! given (a test gives its own facts).

/// What trustd knows about the host it runs on, read once at open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    /// The kernel's Landlock ABI version (0: Landlock unavailable), as
    /// `landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)` returns it.
    pub landlock_abi: u32,
    /// The kernel release (`/proc/sys/kernel/osrelease`, trimmed; empty if unreadable).
    pub kernel_release: String,
    /// This boot's id (`/proc/sys/kernel/random/boot_id`, trimmed; `unknown` if unreadable).
    pub boot_id: String,
}

impl HostFacts {
    /// Read the facts from the running kernel (never fails: an unreadable fact reads as
    /// its documented default).
    pub fn read() -> Self {
        Self {
            landlock_abi: crate::sys::landlock_abi(),
            kernel_release: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_owned())
                .unwrap_or_default(),
            boot_id: crate::sys::boot_id(),
        }
    }
}
