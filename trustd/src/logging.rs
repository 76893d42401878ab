//! Where tracing goes: journald when it is there, else stderr (quietly: warnings only,
//! unless `RUST_LOG`-style verbosity is asked for by the caller).

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Install the global subscriber for a binary named `ident`. Audit records (target
/// `trustd::audit`) then reach journald with their MESSAGE_ID; without journald only
/// warnings and errors are printed, at most `fallback` verbosity.
pub fn init(ident: &str, fallback: tracing::Level) {
    let journald = tracing_journald::layer().ok().map(|l| {
        l.with_field_prefix(None)
            .with_syslog_identifier(ident.to_owned())
    });
    match journald {
        Some(layer) => {
            let _ = tracing_subscriber::registry()
                .with(layer.with_filter(tracing_subscriber::filter::LevelFilter::INFO))
                .try_init();
        }
        None => {
            let _ = tracing_subscriber::fmt()
                .with_writer(std::io::stderr)
                .with_max_level(fallback)
                .with_ansi(false)
                .with_target(false)
                .try_init();
        }
    }
}

use tracing_subscriber::Layer;

/// Install the global subscriber for a command-line tool named `ident` (trustctl): journald
/// when it is there, as [`init`] does. Without journald (a container, a chroot, an image
/// builder) the audit records (target `trustd::audit`) are not echoed on stderr: the tool
/// reports each outcome itself, a refusal in one line; other warnings and errors still print.
pub fn init_cli(ident: &str) {
    if tracing_journald::layer().is_ok() {
        init(ident, tracing::Level::WARN);
        return;
    }
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .with_filter(tracing_subscriber::filter::filter_fn(|m| {
            m.target() != "trustd::audit" && *m.level() <= tracing::Level::WARN
        }));
    let _ = tracing_subscriber::registry().with(stderr).try_init();
}
