//! Launch decisions (pure), and what `trustd-launch` does with a yes: the exec-time checks
//! ([`exec`]) and the Landlock confinement ([`landlock`]).
//!
//! Deny by default: an app starts only if the policy lists it, the executable is the one the
//! policy names, and the device's mode allows it:
//! - no valid policy, or the device retired: nothing starts;
//! - setup incomplete, or the device suspended, revoked or of unknown lifecycle: setup apps
//!   only (listed in `setup.apps`, or with `setup` among their modes);
//! - a kiosk app set: that app only;
//! - privacy mode: apps with the `privacy` mode that `privacy.deny_apps` does not name;
//! - otherwise: apps with the `normal` mode.

pub mod exec;
pub mod landlock;

use serde::{Deserialize, Serialize};

use crate::policy::{App, AppMode, Overlay, Policy};
use crate::state::Lifecycle;

/// What a launched app is confined to, and the executable it must be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// The app id.
    pub app: String,
    /// Absolute path of the executable.
    pub exec: String,
    /// Lowercase hex SHA-256 the executable must have.
    pub sha256: String,
    /// Paths it may read.
    pub read: Vec<String>,
    /// Paths it may read and write.
    pub write: Vec<String>,
    /// Paths it may execute from.
    pub execute: Vec<String>,
}

impl Profile {
    fn of(app: &App) -> Self {
        Self {
            app: app.id.clone(),
            exec: app.exec.clone(),
            sha256: app.sha256.clone(),
            read: app.landlock.read.clone(),
            write: app.landlock.write.clone(),
            execute: app.landlock.execute.clone(),
        }
    }
}

/// The answer to "may this app start?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether it may.
    pub allowed: bool,
    /// Why, as a person reads it.
    pub reason: String,
    /// The confinement, when allowed.
    pub profile: Option<Profile>,
}

fn refuse(reason: String) -> Decision {
    Decision {
        allowed: false,
        reason,
        profile: None,
    }
}

/// Decide whether `app_id` may start. `exe`, when not empty, must be the policy's path for
/// that app (the launcher says what it is about to run).
pub fn decide(policy: Option<&Policy>, overlay: Overlay<'_>, app_id: &str, exe: &str) -> Decision {
    let Some(p) = policy else {
        return refuse("no valid policy installed: nothing may start".into());
    };
    let Some(app) = p.launcher.apps.iter().find(|a| a.id == app_id) else {
        return refuse(format!("{app_id:?} is not an app the policy lists"));
    };
    if !exe.is_empty() && exe != app.exec {
        return refuse(format!("{app_id} runs {}, not {exe:?}", app.exec));
    }
    let pending = p
        .setup
        .required_steps
        .iter()
        .any(|s| !overlay.completed_steps.contains(s));
    let setup_app = p.setup.apps.iter().any(|a| a == app_id) || app.modes.contains(&AppMode::Setup);
    let setup_only = |why: String| {
        if setup_app {
            Decision {
                allowed: true,
                reason: format!("{why}: {app_id} is a setup app"),
                profile: Some(Profile::of(app)),
            }
        } else {
            refuse(format!("{why}: only setup apps may start"))
        }
    };
    match overlay.lifecycle {
        Lifecycle::Retired => return refuse("device retired: nothing may start".into()),
        l @ (Lifecycle::Suspended | Lifecycle::Revoked | Lifecycle::Unknown) => {
            return setup_only(format!("device {}", l.as_str()));
        }
        Lifecycle::Unenrolled | Lifecycle::Enrolled => {}
    }
    if pending {
        return setup_only("setup incomplete".into());
    }
    if let Some(k) = &p.launcher.kiosk
        && k != app_id
    {
        return refuse(format!("kiosk mode: only {k} may start"));
    }
    let (mode, name) = if overlay.privacy {
        (AppMode::Privacy, "privacy mode")
    } else {
        (AppMode::Normal, "normal mode")
    };
    if overlay.privacy && p.privacy.deny_apps.iter().any(|a| a == app_id) {
        return refuse(format!("privacy mode: the policy denies {app_id}"));
    }
    if !app.modes.contains(&mode) {
        return refuse(format!("{app_id} may not run in {name}"));
    }
    Decision {
        allowed: true,
        reason: format!("{app_id} may run in {name}"),
        profile: Some(Profile::of(app)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn policy() -> Policy {
        serde_json::from_value(serde_json::json!({
            "schema": "enigm.policy/v1", "serial": 1,
            "issued_at": "2026-01-01T00:00:00Z", "expires_at": "2036-01-01T00:00:00Z",
            "network": {"mode": "direct"},
            "privacy": {"deny_apps": ["org.enigm.Chat"]},
            "launcher": {"apps": [
                {"id": "org.enigm.Browser", "exec": "/usr/bin/browser", "sha256": "aa",
                 "modes": ["normal", "privacy"], "landlock": {"read": ["/usr"], "write": ["/tmp"]}},
                {"id": "org.enigm.Chat", "exec": "/usr/bin/chat", "sha256": "bb",
                 "modes": ["normal", "privacy"]},
                {"id": "org.enigm.Files", "exec": "/usr/bin/files", "sha256": "cc",
                 "modes": ["normal"]},
                {"id": "org.enigm.Setup", "exec": "/usr/bin/setup", "sha256": "dd",
                 "modes": ["setup"]}
            ]},
            "setup": {"required_steps": ["eula"]}
        }))
        .expect("policy")
    }

    fn decide_with(
        p: Option<&Policy>,
        privacy: bool,
        done: bool,
        lifecycle: Lifecycle,
        app: &str,
    ) -> Decision {
        let steps: BTreeSet<String> = if done {
            ["eula".to_owned()].into()
        } else {
            BTreeSet::new()
        };
        decide(
            p,
            Overlay {
                privacy,
                completed_steps: &steps,
                lifecycle,
            },
            app,
            "",
        )
    }

    #[test]
    fn the_rules_in_order() {
        let p = policy();
        let e = Lifecycle::Enrolled;
        // (policy, privacy, setup done, lifecycle, app, allowed, reason contains)
        type Case<'a> = (
            Option<&'a Policy>,
            bool,
            bool,
            Lifecycle,
            &'a str,
            bool,
            &'a str,
        );
        let cases: &[Case<'_>] = &[
            (
                None,
                false,
                true,
                e,
                "org.enigm.Browser",
                false,
                "no valid policy",
            ),
            (
                Some(&p),
                false,
                true,
                e,
                "org.enigm.Browser",
                true,
                "normal mode",
            ),
            (
                Some(&p),
                false,
                true,
                e,
                "org.evil.App",
                false,
                "not an app the policy lists",
            ),
            (
                Some(&p),
                true,
                true,
                e,
                "org.enigm.Browser",
                true,
                "privacy mode",
            ),
            (
                Some(&p),
                true,
                true,
                e,
                "org.enigm.Chat",
                false,
                "the policy denies",
            ),
            (
                Some(&p),
                true,
                true,
                e,
                "org.enigm.Files",
                false,
                "may not run in privacy mode",
            ),
            (
                Some(&p),
                false,
                false,
                e,
                "org.enigm.Browser",
                false,
                "setup incomplete",
            ),
            (
                Some(&p),
                false,
                false,
                e,
                "org.enigm.Setup",
                true,
                "setup app",
            ),
            (
                Some(&p),
                false,
                true,
                e,
                "org.enigm.Setup",
                false,
                "may not run in normal mode",
            ),
            (
                Some(&p),
                false,
                true,
                Lifecycle::Suspended,
                "org.enigm.Browser",
                false,
                "device suspended",
            ),
            (
                Some(&p),
                false,
                true,
                Lifecycle::Revoked,
                "org.enigm.Setup",
                true,
                "device revoked",
            ),
            (
                Some(&p),
                false,
                true,
                Lifecycle::Retired,
                "org.enigm.Setup",
                false,
                "retired",
            ),
        ];
        for (pol, privacy, done, l, app, allowed, reason) in cases {
            let d = decide_with(*pol, *privacy, *done, *l, app);
            assert_eq!(d.allowed, *allowed, "{app}: {}", d.reason);
            assert!(
                d.reason.contains(reason),
                "{app}: {} lacks {reason}",
                d.reason
            );
            assert_eq!(d.profile.is_some(), *allowed);
        }
        let d = decide_with(Some(&p), false, true, e, "org.enigm.Browser");
        let prof = d.profile.expect("profile");
        assert_eq!(prof.read, ["/usr"]);
        assert_eq!(prof.write, ["/tmp"]);
        assert_eq!(prof.sha256, "aa");
    }

    #[test]
    fn kiosk_and_exe_mismatch() {
        let mut p = policy();
        p.launcher.kiosk = Some("org.enigm.Browser".into());
        let d = decide_with(
            Some(&p),
            false,
            true,
            Lifecycle::Enrolled,
            "org.enigm.Files",
        );
        assert!(!d.allowed && d.reason.contains("kiosk mode: only org.enigm.Browser"));
        let d = decide_with(
            Some(&p),
            false,
            true,
            Lifecycle::Enrolled,
            "org.enigm.Browser",
        );
        assert!(d.allowed);
        let steps: BTreeSet<String> = ["eula".to_owned()].into();
        let o = Overlay {
            privacy: false,
            completed_steps: &steps,
            lifecycle: Lifecycle::Enrolled,
        };
        let d = decide(Some(&p), o, "org.enigm.Browser", "/tmp/browser");
        assert!(
            !d.allowed && d.reason.contains("runs /usr/bin/browser"),
            "{}",
            d.reason
        );
        assert!(decide(Some(&p), o, "org.enigm.Browser", "/usr/bin/browser").allowed);
    }
}
