//! trustd-launch against trustd on a private bus: allowed, unknown, wrong hash, swapped
//! binary, writable binary, privacy mode, kiosk; and a launched app that reads outside its
//! Landlock profile gets EACCES.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tests::bin;
use tests::bus::BusPolicy;
use tests::lab::{can_run, lab_policy, serve};
use trustd::dbus::client::Client;

const TOOLS: &[&str] = &["ip", "nft", "dbus-daemon"];

fn sha256_file(p: &Path) -> String {
    trustd::bundle::hex(&Sha256::digest(std::fs::read(p).expect("read")))
}

fn install(src: &str, dst: &Path) {
    std::fs::copy(src, dst).expect("copy");
    std::fs::set_permissions(dst, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn launch(bus: &str, app: &str, args: &[&str]) -> Run {
    let o = Command::new(bin("trustd-launch"))
        .args(["--bus", bus, app, "--"])
        .args(args)
        .output()
        .expect("trustd-launch");
    Run {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn app(id: &str, exec: &Path, sha: &str, modes: &[&str], read: &[String]) -> Value {
    json!({
        "id": id, "exec": exec, "sha256": sha, "modes": modes,
        "landlock": {"read": read, "execute": ["/usr", "/lib", "/lib64"]}
    })
}

#[test]
fn trustd_launch_runs_only_what_the_policy_pins_and_confines_it() {
    if !can_run(TOOLS) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let root: PathBuf = dir.path().canonicalize().expect("canon");
    for d in ["bin", "allowed", "secret"] {
        std::fs::create_dir(root.join(d)).expect("mkdir");
    }
    let cat = root.join("bin/cat");
    install("/usr/bin/cat", &cat);
    std::fs::write(root.join("allowed/file"), "allowed-content\n").expect("write");
    std::fs::write(root.join("secret/file"), "secret-content\n").expect("write");
    let sha = sha256_file(&cat);
    let read: Vec<String> = ["/usr", "/lib", "/lib64", "/etc", "/proc/self"]
        .iter()
        .map(|s| (*s).to_owned())
        .chain([root.join("allowed").display().to_string()])
        .collect();
    let mut p = lab_policy("direct");
    p["launcher"] = json!({"apps": [
        app("org.test.Cat", &cat, &sha, &["normal", "privacy"], &read),
        app("org.test.Wrong", &cat, &"0".repeat(64), &["normal"], &read),
        app("org.test.NotPrivate", &cat, &sha, &["normal"], &read),
        app("org.test.Setup", &cat, &sha, &["setup"], &read),
    ]});
    p["privacy"]["network_mode"] = Value::Null;
    let (mut lab, daemon) = serve("la", p.clone(), BusPolicy::Shipped);
    let bus = daemon.bus.address.clone();
    let allowed = root.join("allowed/file").display().to_string();
    let secret = root.join("secret/file").display().to_string();

    // Allowed: runs the pinned binary, confined.
    let r = launch(&bus, "org.test.Cat", &[&allowed]);
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "allowed-content\n"),
        "{}",
        r.stderr
    );
    // Outside its profile: EACCES from the kernel, not from trustd.
    let r = launch(&bus, "org.test.Cat", &[&secret]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("Permission denied"), "{}", r.stderr);
    assert!(!r.stdout.contains("secret-content"));
    // no_new_privs is set in the app.
    let r = launch(&bus, "org.test.Cat", &["/proc/self/status"]);
    assert!(
        r.stdout.contains("NoNewPrivs:\t1"),
        "{}{}",
        r.stdout,
        r.stderr
    );

    // The loader's variables are not passed on to the app (trustd-launch itself, started
    // with one, shows the loader's complaint once; the app would show it a second time).
    let o = Command::new(bin("trustd-launch"))
        .env("LD_PRELOAD", "/nonexistent-preload.so")
        .args(["--bus", &bus, "org.test.Cat", "--", &allowed])
        .output()
        .expect("trustd-launch");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "allowed-content\n",
        "{err}"
    );
    assert!(
        err.matches("nonexistent-preload.so").count() <= 1,
        "LD_PRELOAD reached the app: {err}"
    );

    // Refusals.
    let r = launch(&bus, "org.test.Nope", &[]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("not an app the policy lists"),
        "{}",
        r.stderr
    );
    let r = launch(&bus, "org.test.Wrong", &[&allowed]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("the policy pins"), "{}", r.stderr);
    assert!(r.stdout.is_empty());
    let r = launch(&bus, "org.test.Setup", &[&allowed]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("may not run in normal mode"),
        "{}",
        r.stderr
    );

    // A swapped binary at the pinned path.
    install("/usr/bin/ls", &cat);
    let r = launch(&bus, "org.test.Cat", &[&allowed]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(r.stderr.contains("the policy pins"), "{}", r.stderr);
    install("/usr/bin/cat", &cat);
    // A binary others may write cannot be pinned.
    std::fs::set_permissions(&cat, std::fs::Permissions::from_mode(0o775)).expect("chmod");
    let r = launch(&bus, "org.test.Cat", &[&allowed]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("may be written by others"),
        "{}",
        r.stderr
    );
    std::fs::set_permissions(&cat, std::fs::Permissions::from_mode(0o755)).expect("chmod");

    // Privacy mode: only apps with the privacy mode.
    let rt = tests::rt();
    rt.block_on(async {
        let c = Client::connect(Some(&bus)).await.expect("connect");
        c.set_privacy_mode(true).await.expect("privacy on");
    });
    let r = launch(&bus, "org.test.NotPrivate", &[&allowed]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("may not run in privacy mode"),
        "{}",
        r.stderr
    );
    assert_eq!(launch(&bus, "org.test.Cat", &[&allowed]).code, 0);
    rt.block_on(async {
        let c = Client::connect(Some(&bus)).await.expect("connect");
        c.set_privacy_mode(false).await.expect("privacy off");
        // Kiosk: only the kiosk app.
        p["launcher"]["kiosk"] = json!("org.test.Cat");
        let b = lab.sign(p.clone());
        c.apply_bundle(&std::fs::read(b).expect("read"))
            .await
            .expect("kiosk bundle");
    });
    let r = launch(&bus, "org.test.NotPrivate", &[&allowed]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("kiosk mode: only org.test.Cat"),
        "{}",
        r.stderr
    );
    assert_eq!(launch(&bus, "org.test.Cat", &[&allowed]).code, 0);

    // The audit log has every launch and refusal by app id, and never an argument.
    let dirbytes = std::fs::read_dir(lab.paths().audit_dir())
        .expect("audit dir")
        .filter_map(Result::ok)
        .map(|e| std::fs::read(e.path()).unwrap_or_default())
        .collect::<Vec<_>>()
        .concat();
    let text = String::from_utf8_lossy(&dirbytes);
    assert!(
        !text.contains("allowed/file") && !text.contains("secret/file"),
        "arguments in the log"
    );
    let records = trustd::audit::read_records(&lab.paths().audit_dir()).expect("audit");
    let outcomes = |kind: &str| -> Vec<(String, String)> {
        records
            .iter()
            .filter(|r| r.kind == kind)
            .map(|r| {
                (
                    format!("{:?}", r.outcome),
                    r.digests.get("app").cloned().unwrap_or_default(),
                )
            })
            .collect()
    };
    let exec = outcomes("launch.exec");
    assert_eq!(exec.iter().filter(|e| e.0 == "Ok").count(), 6, "{exec:?}");
    assert_eq!(
        exec.iter().filter(|e| e.0 == "Refused").count(),
        3,
        "{exec:?}"
    );
    let checks = outcomes("launch.check");
    assert_eq!(
        checks.len(),
        4,
        "unknown, setup-only, privacy, kiosk: {checks:?}"
    );
    drop(daemon);
}
