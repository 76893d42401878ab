//! flood: a hostile local client of trustd's bus service, for the flood test and benchmark.
//! It runs as whoever starts it (the tests use `setpriv` to make it an ordinary user) until
//! killed or MILLIS have passed.
//!
//! ```text
//! flood ADDRESS SHAPE MILLIS [PACE]
//!   noreply  one connection, GetDeviceHandle pipelined with NO_REPLY_EXPECTED, never reading
//!   unread   one connection, calls pipelined, replies never read
//!   fds      one connection, calls with 4 file descriptors attached each, never reading
//!   hangup   connections that send 4 calls and close at once, over and over
//!   names    32 connections calling GetDeviceHandle and GetReport with a new name each time
//!   conns    200 connections, each with 4 calls pipelined, held open unread
//!   huge     8 connections, calls with an 8 MiB string argument pipelined, never reading
//!   builtin  4 connections, Introspect and Properties.GetAll pipelined, never reading
//!   signals  8 connections, unicast signals with a body just under 64 KiB addressed to
//!            trustd, pipelined, never reading
//!   longpath 4 connections, Posture calls on an object path of 16 MiB, never reading
//!   gone     connections that pipeline 2000 no-reply calls (over their budget) and close at
//!            once, over and over
//!   churn    connections opened and closed as fast as the bus lets them, each pipelining
//!            64 Introspect calls (a new bus name, unknown to trustd, every time); at most 8
//!            open at once, never reading
//!   pings    the same with 8 Peer.Ping calls per connection (cheap calls, each a new
//!            name's first)
//!   aside    unicast signals with an 8 MiB body, from 2 connections, to each of trustd's
//!            bus connections but the one that serves (found by its pid), never reading
//!   fresh    one new connection sending 8 posture property reads at once, as a client
//!            starting up does; prints how many were answered within 5 s, then exits
//!   budget   16 connections, each reading a posture property 20 times a second (each call
//!            waited for 1 s at most); prints how many were answered (one uid's budget is
//!            shared by all its connections, so most go unanswered)
//!   PACE     flat (default): as fast as the bus takes them; bursts: 300 calls (or 20
//!            connections) at once, then 500 ms of quiet, over and over
//! ```

use std::io::Write;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use tests::rawbus::{NO_REPLY_EXPECTED, RawConn, raw_message, string_body};

/// After each `BURST` calls, how long a paced client waits (None: never).
static PAUSE: std::sync::OnceLock<Option<Duration>> = std::sync::OnceLock::new();
const BURST: u64 = 300;

fn pace(n: u64) {
    if let Some(Some(p)) = PAUSE.get()
        && n.is_multiple_of(BURST)
    {
        std::thread::sleep(*p);
    }
}

fn pipelined(address: &str, until: Instant, flags: u8, fds: bool) {
    let null = std::fs::File::open("/dev/null").expect("/dev/null");
    let four = [null.as_raw_fd(); 4];
    let mut n = 0u64;
    while Instant::now() < until {
        let Ok(mut c) = RawConn::connect(address, fds) else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        let _ = c.sock.set_write_timeout(Some(Duration::from_millis(200)));
        while Instant::now() < until {
            n += 1;
            pace(n);
            let name = format!("verifier{n}.example.org");
            let sent = if fds {
                let m = c.call_bytes("Posture", "GetDeviceHandle", &name, flags, 4);
                c.send_with_fds(&m, &four)
            } else {
                let m = c.call_bytes("Posture", "GetDeviceHandle", &name, flags, 0);
                c.sock.write_all(&m)
            };
            match sent {
                Ok(()) => {}
                // The bus stopped reading from us (its limits): keep the connection, wait.
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(_) => break,
            }
        }
    }
}

fn huge(address: &str, until: Instant) {
    let big = "x".repeat(8 << 20);
    let mut conns: Vec<RawConn> = Vec::new();
    let mut n = 0u64;
    while Instant::now() < until {
        if conns.len() < 8
            && let Ok(c) = RawConn::connect(address, false)
        {
            let _ = c.sock.set_write_timeout(Some(Duration::from_millis(200)));
            conns.push(c);
        }
        for c in &mut conns {
            n += 1;
            pace(n * BURST / 4);
            let m = c.call_bytes("Posture", "GetDeviceHandle", &big, 0, 0);
            let _ = c.sock.write_all(&m);
        }
    }
}

fn builtin(address: &str, until: Instant) {
    let mut conns: Vec<RawConn> = Vec::new();
    let mut n = 0u64;
    while Instant::now() < until {
        if conns.len() < 4
            && let Ok(c) = RawConn::connect(address, false)
        {
            let _ = c.sock.set_write_timeout(Some(Duration::from_millis(200)));
            conns.push(c);
        }
        for c in &mut conns {
            n += 2;
            pace(n);
            let a = c.builtin_call("org.freedesktop.DBus.Introspectable", "Introspect", None);
            let _ = c.sock.write_all(&a);
            let b = c.builtin_call(
                "org.freedesktop.DBus.Properties",
                "GetAll",
                Some("org.enigm.Trust1.Posture"),
            );
            let _ = c.sock.write_all(&b);
        }
    }
}

/// Connections (at most `n`) each writing `msg(serial)` over and over, never reading.
fn writers(address: &str, until: Instant, n: usize, msg: &dyn Fn(u32) -> Vec<u8>) {
    let mut conns: Vec<RawConn> = Vec::new();
    let mut serial = 100u32;
    while Instant::now() < until {
        if conns.len() < n
            && let Ok(c) = RawConn::connect(address, false)
        {
            let _ = c.sock.set_write_timeout(Some(Duration::from_millis(200)));
            conns.push(c);
        }
        for c in &mut conns {
            serial += 1;
            pace(u64::from(serial));
            let _ = c.sock.write_all(&msg(serial));
        }
    }
}

fn signals(address: &str, until: Instant) {
    let body = string_body(&"x".repeat(60 * 1024));
    writers(address, until, 8, &|serial| {
        let fields: Vec<(u8, char, &[u8])> = vec![
            (1, 'o', b"/org/enigm/Trust1"),
            (2, 's', b"org.enigm.Trust1.Posture"),
            (3, 's', b"Changed"),
            (6, 's', b"org.enigm.Trust1"),
        ];
        let mut m = raw_message(serial, &fields, "s", &body);
        m[1] = 4; // SIGNAL
        m
    });
}

fn longpath(address: &str, until: Instant) {
    let path = format!("/{}", "a".repeat((16 << 20) - 1));
    let body = string_body("verifier.example.org");
    writers(address, until, 4, &|serial| {
        let fields: Vec<(u8, char, &[u8])> = vec![
            (1, 'o', path.as_bytes()),
            (2, 's', b"org.enigm.Trust1.Posture"),
            (3, 's', b"GetDeviceHandle"),
            (6, 's', b"org.enigm.Trust1"),
        ];
        raw_message(serial, &fields, "s", &body)
    });
}

fn gone(address: &str, until: Instant) {
    let mut n = 0u64;
    while Instant::now() < until {
        let Ok(mut c) = RawConn::connect(address, false) else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        let mut all = Vec::new();
        for i in 0..2000 {
            n += 1;
            all.extend(c.call_bytes(
                "Posture",
                "GetDeviceHandle",
                &format!("g{i}.example"),
                NO_REPLY_EXPECTED,
                0,
            ));
        }
        pace(n);
        let _ = c.sock.write_all(&all);
    }
}

fn hangup(address: &str, until: Instant) {
    let mut n = 0u64;
    while Instant::now() < until {
        n += 15;
        pace(n);
        if let Ok(mut c) = RawConn::connect(address, false) {
            for i in 0..4 {
                let m = c.call_bytes("Posture", "GetDeviceHandle", &format!("h{i}.example"), 0, 0);
                let _ = c.sock.write_all(&m);
            }
        }
    }
}

fn conns(address: &str, until: Instant) {
    let mut held = Vec::new();
    while Instant::now() < until {
        if held.len() < 200
            && let Ok(mut c) = RawConn::connect(address, false)
        {
            for i in 0..4 {
                let m = c.call_bytes("Privacy", "SetPrivacyMode", &format!("c{i}"), 0, 0);
                let _ = c.sock.write_all(&m);
            }
            held.push(c);
        } else {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn names(address: &str, until: Instant) {
    let rt = tests::rt();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for t in 0..32u32 {
            let address = address.to_owned();
            tasks.push(tokio::spawn(async move {
                let Ok(c) = trustd::dbus::client::Client::connect(Some(&address)).await else {
                    return;
                };
                let mut n = 0u64;
                while Instant::now() < until {
                    n += 1;
                    pace(n * 32);
                    let _ = c.device_handle(&format!("n{t}x{n}.example.org")).await;
                    let _ = c.report(&format!("nonce{t}x{n}")).await;
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
}

fn churn(address: &str, until: Instant, iface: &str, member: &str, calls: u64) {
    let mut open = std::collections::VecDeque::new();
    let mut n = 0u64;
    while Instant::now() < until {
        let Ok(mut c) = RawConn::connect(address, false) else {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        let _ = c.sock.set_write_timeout(Some(Duration::from_millis(200)));
        let mut all = Vec::new();
        for _ in 0..calls {
            all.extend(c.builtin_call(iface, member, None));
        }
        n += calls;
        pace(n);
        let _ = c.sock.write_all(&all);
        open.push_back(c);
        if open.len() > 8 {
            open.pop_front();
        }
    }
}

fn budget(address: &str, until: Instant) {
    let rt = tests::rt();
    let answered = rt.block_on(async {
        let answered = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut conns = Vec::new();
        for _ in 0..16 {
            if let Ok(c) = trustd::dbus::client::Client::connect(Some(address)).await {
                conns.push(c);
            }
        }
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        let mut calls = Vec::new();
        while Instant::now() < until {
            tick.tick().await;
            for c in &conns {
                let (c, answered) = (c.clone(), answered.clone());
                calls.push(tokio::spawn(async move {
                    let call = c.posture_property("Level");
                    if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(1), call).await {
                        answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }));
            }
        }
        for t in calls {
            let _ = t.await;
        }
        answered.load(std::sync::atomic::Ordering::Relaxed)
    });
    println!("{answered}");
}

fn aside(address: &str, until: Instant) {
    let targets = tests::flood::trustd_aside(address);
    eprintln!("flood aside: sending to {targets:?}");
    let body = string_body(&"x".repeat(8 << 20));
    writers(address, until, 2, &|serial| {
        let t = &targets[serial as usize % targets.len().max(1)];
        let fields: Vec<(u8, char, &[u8])> = vec![
            (1, 'o', b"/x"),
            (2, 's', b"org.example.Noise"),
            (3, 's', b"Changed"),
            (6, 's', t.as_bytes()),
        ];
        let mut m = raw_message(serial, &fields, "s", &body);
        m[1] = 4; // SIGNAL
        m
    });
}

fn fresh(address: &str) {
    let answered = tests::rt().block_on(async {
        match trustd::dbus::client::Client::connect(Some(address)).await {
            Ok(c) => tests::flood::reads_at_once(&c, 8).await,
            Err(_) => 0,
        }
    });
    println!("{answered}");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (address, shape, millis, paced) = match args.as_slice() {
        [_, a, s, m] => (a, s, m, false),
        [_, a, s, m, p] if p == "bursts" || p == "flat" => (a, s, m, p == "bursts"),
        _ => {
            eprintln!("usage: flood ADDRESS SHAPE MILLIS [flat|bursts]");
            std::process::exit(2);
        }
    };
    let _ = PAUSE.set(paced.then_some(Duration::from_millis(500)));
    let until = Instant::now() + Duration::from_millis(millis.parse().unwrap_or(10_000));
    match shape.as_str() {
        "noreply" => pipelined(address, until, NO_REPLY_EXPECTED, false),
        "unread" => pipelined(address, until, 0, false),
        "fds" => pipelined(address, until, 0, true),
        "hangup" => hangup(address, until),
        "names" => names(address, until),
        "conns" => conns(address, until),
        "huge" => huge(address, until),
        "builtin" => builtin(address, until),
        "signals" => signals(address, until),
        "longpath" => longpath(address, until),
        "gone" => gone(address, until),
        "budget" => budget(address, until),
        "aside" => aside(address, until),
        "fresh" => fresh(address),
        "churn" => churn(
            address,
            until,
            "org.freedesktop.DBus.Introspectable",
            "Introspect",
            64,
        ),
        "pings" => churn(address, until, "org.freedesktop.DBus.Peer", "Ping", 8),
        other => {
            eprintln!("flood: unknown shape {other:?}");
            std::process::exit(2);
        }
    }
}
