//! Embeds the build time (`TRUSTD_BUILD_EPOCH`, Unix seconds) so that trustd can tell a
//! wall clock that reads earlier than its own build as implausible. Reproducible builds set
//! `SOURCE_DATE_EPOCH` (https://reproducible-builds.org/specs/source-date-epoch/), which is
//! used as given; otherwise the time of this build script's run.

use std::time::{SystemTime, UNIX_EPOCH};

fn main() {
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    println!("cargo:rerun-if-changed=build.rs");
    let epoch = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        });
    println!("cargo:rustc-env=TRUSTD_BUILD_EPOCH={epoch}");
}
