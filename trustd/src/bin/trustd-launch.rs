//! trustd-launch: how the launcher starts an app.
//!
//! `trustd-launch [--bus ADDRESS] APP_ID [-- ARGS...]`
//!
//! 1. Asks trustd (`Launcher.CheckLaunch`) whether APP_ID may start now; refused: exit 1.
//! 2. Opens the policy's executable, refuses it if it is not a regular file owned by root
//!    that only root may write, and hashes the open file. The hash must be the policy's.
//! 3. Sets no_new_privs and confines itself with the app's Landlock profile (best effort
//!    across kernel ABIs; the executable itself is added to the executable paths).
//! 4. Reports the outcome to trustd (`ReportLaunch`: audited; arguments are never sent).
//! 5. Executes the very file it hashed (fexecve on the open descriptor), so swapping the
//!    path after the check changes nothing; the dynamic loader's `LD_*` variables are not
//!    passed on.
//!
//! Exit codes: 1 refused (by policy, hash or confinement); 2 usage; 3 trustd unreachable or
//! exec failed.

use std::process::ExitCode;

use clap::Parser;
use trustd::dbus::client::Client;
use trustd::launch::Profile;
use trustd::launch::exec::{argv, exec_env, open_pinned};

#[derive(Parser, Debug)]
#[command(
    name = "trustd-launch",
    version,
    about = "Start an app as the device policy allows"
)]
pub(crate) struct Cli {
    /// The bus trustd serves on (default: the system bus).
    #[arg(long)]
    bus: Option<String>,
    /// The app id.
    app: String,
    /// Arguments for the app (after `--`).
    #[arg(last = true)]
    args: Vec<std::ffi::OsString>,
}

enum Outcome {
    Refused(String),
    System(String),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("trustd-launch: {e}");
            return ExitCode::from(3);
        }
    };
    match rt.block_on(launch(&cli)) {
        Outcome::Refused(why) => {
            eprintln!("trustd-launch: {} refused: {why}", cli.app);
            ExitCode::from(1)
        }
        Outcome::System(why) => {
            eprintln!("trustd-launch: {why}");
            ExitCode::from(3)
        }
    }
}

async fn launch(cli: &Cli) -> Outcome {
    let c = match Client::connect(cli.bus.as_deref()).await {
        Ok(c) => c,
        Err(e) => return Outcome::System(format!("trustd is not reachable: {e}")),
    };
    let (allowed, reason, profile) = match c.check_launch(&cli.app, "").await {
        Ok(r) => r,
        Err(e) => return Outcome::System(format!("CheckLaunch: {e}")),
    };
    if !allowed {
        return Outcome::Refused(reason);
    }
    let profile: Profile = match serde_json::from_str(&profile) {
        Ok(p) => p,
        Err(e) => {
            return Outcome::System(format!("trustd sent a profile that does not parse: {e}"));
        }
    };
    let report = async |started: bool, why: &str| {
        if let Err(e) = c.report_launch(&cli.app, started, why).await {
            eprintln!("trustd-launch: the launch was not reported: {e}");
        }
    };
    let fd = match open_pinned(&profile) {
        Ok(fd) => fd,
        Err(e) => {
            let why = e.to_string();
            report(false, &why).await;
            return Outcome::Refused(why);
        }
    };
    if let Err(e) = trustd::sys::set_no_new_privs() {
        let why = format!("no_new_privs: {e}");
        report(false, &why).await;
        return Outcome::Refused(why);
    }
    let confinement = match trustd::launch::landlock::confine(&profile) {
        Ok(c) => c,
        Err(why) => {
            report(false, &why).await;
            return Outcome::Refused(why);
        }
    };
    let how = format!(
        "started; Landlock {} (ABI {}), no_new_privs {}",
        confinement.status, confinement.abi, confinement.no_new_privs
    );
    report(true, &how).await;
    drop(c);

    let argv = match argv(&profile.exec, &cli.args) {
        Ok(a) => a,
        Err(e) => return Outcome::System(e),
    };
    let env = exec_env(std::env::vars_os());
    let e = trustd::sys::exec_fd(&fd, &argv, &env);
    Outcome::System(format!("executing {}: {e}", profile.exec))
}
