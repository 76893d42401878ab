//! `org.enigm.Trust1.Launcher`: launch decisions (everyone).

use zbus::interface;
use zbus::message::Header;

use super::{Handle, error::Result};
use crate::daemon::{Call, LaunchAnswer};

/// The `org.enigm.Trust1.Launcher` interface, as trustd serves it.
#[derive(Debug)]
pub struct LauncherInterface {
    h: Handle,
}

impl LauncherInterface {
    pub(super) fn new(h: Handle) -> Self {
        Self { h }
    }
}

#[interface(name = "org.enigm.Trust1.Launcher")]
impl LauncherInterface {
    /// May `app_id` start now? `exe` is the executable the launcher is about to run (empty:
    /// the one the policy names). Returns whether, why (a sentence), and the profile as JSON:
    /// `{"app", "exec", "sha256", "read", "write", "execute"}` (empty when refused). A
    /// refusal is audited.
    #[zbus(out_args("allowed", "reason", "profile"))]
    async fn check_launch(
        &self,
        app_id: String,
        exe: String,
        #[zbus(header)] hdr: Header<'_>,
    ) -> Result<(bool, String, String)> {
        let LaunchAnswer {
            allowed,
            reason,
            profile,
        } = self
            .h
            .call(&hdr, |tx| Call::CheckLaunch(app_id, exe, tx))
            .await?;
        Ok((allowed, reason, profile))
    }

    /// What the launcher did after a check: `started` with how the app is confined, or
    /// refused at exec time (the executable's hash did not match) with why. Audited with the
    /// caller's uid; the app's arguments are never sent.
    async fn report_launch(
        &self,
        app_id: String,
        started: bool,
        reason: String,
        #[zbus(header)] hdr: Header<'_>,
    ) -> Result<()> {
        self.h
            .call(&hdr, |tx| Call::ReportLaunch(app_id, started, reason, tx))
            .await
    }
}
