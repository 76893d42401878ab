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
