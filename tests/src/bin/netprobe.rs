//! netprobe: the traffic side of the network tests. Runs inside the tests' namespaces only.
//!
//! netprobe serve ADDR:PORT/tcp|udp ...     accept (tcp) or echo (udp) until killed
//! netprobe connect ADDR:PORT/tcp|udp MS    exit 0 if a connection (or an echo) succeeds
//! netprobe spray MS ADDR:PORT/tcp|udp ...  keep trying every target for MS milliseconds
//! netprobe pushserve ADDR:PORT/tcp|udp ... keep every flow that reaches it busy: send a byte
//!                                          on it every 10 ms (udp: to every sender seen)
//! netprobe hold ADDR:PORT/tcp|udp MS [quiet] open one flow and send a byte on it every 10 ms
//!                                          for MS milliseconds, reading what comes back;
//!                                          prints `up` once the first byte came back; quiet:
//!                                          after that, only read (the peer pushes)

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant};

const TICK: Duration = Duration::from_millis(10);

/// Keep one TCP connection busy both ways until it fails or `until` (if any) passes; call
/// `first` when the first byte arrives.
fn busy_tcp(mut s: TcpStream, until: Option<Instant>, quiet: bool, mut first: impl FnMut()) {
    let _ = s.set_read_timeout(Some(Duration::from_millis(1)));
    let mut got = false;
    let mut buf = [0u8; 512];
    let mut tick = Instant::now();
    while until.is_none_or(|u| Instant::now() < u) {
        // One byte a tick, whatever arrives in between.
        tick += TICK;
        std::thread::sleep(tick.saturating_duration_since(Instant::now()));
        // A dropped segment is retransmitted by the kernel; only a dead socket ends this.
        if !(quiet && got) && s.write_all(b"x").is_err() {
            return;
        }
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) if !got => {
                got = true;
                first();
            }
            _ => {}
        }
    }
}

/// A bound listener of `pushserve`.
enum Bound {
    Udp(UdpSocket),
    Tcp(TcpListener),
}

fn bind(t: &str) -> Bound {
    let (addr, udp) = target(t);
    if udp {
        Bound::Udp(UdpSocket::bind(addr).expect("bind udp"))
    } else {
        Bound::Tcp(TcpListener::bind(addr).expect("bind tcp"))
    }
}

fn pushserve(b: Bound) {
    if let Bound::Udp(sock) = &b {
        let _ = sock.set_read_timeout(Some(TICK));
        let mut peers = std::collections::BTreeSet::new();
        let mut buf = [0u8; 512];
        let mut next = Instant::now();
        loop {
            if let Ok((_, from)) = sock.recv_from(&mut buf) {
                peers.insert(from);
            }
            if Instant::now() >= next {
                for p in &peers {
                    let _ = sock.send_to(b"x", p);
                }
                next = Instant::now() + TICK;
            }
        }
    } else if let Bound::Tcp(l) = b {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || busy_tcp(s, None, false, || {}));
        }
    }
}

fn hold(addr: SocketAddr, udp: bool, ms: u64, quiet: bool) -> bool {
    let until = Instant::now() + Duration::from_millis(ms);
    let up = || {
        println!("up");
        let _ = std::io::stdout().flush();
    };
    if udp {
        let Ok(sock) = UdpSocket::bind(if addr.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        }) else {
            return false;
        };
        if sock.connect(addr).is_err() {
            return false;
        }
        let _ = sock.set_read_timeout(Some(Duration::from_millis(1)));
        let mut got = false;
        let mut buf = [0u8; 512];
        let mut tick = Instant::now();
        while Instant::now() < until {
            tick += TICK;
            std::thread::sleep(tick.saturating_duration_since(Instant::now()));
            // Refused sends (EPERM from the firewall) are expected once a flow is cut.
            if !(quiet && got) {
                let _ = sock.send(b"h");
            }
            if sock.recv(&mut buf).is_ok() && !got {
                got = true;
                up();
            }
        }
        true
    } else {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(s) => {
                busy_tcp(s, Some(until), quiet, up);
                true
            }
            Err(_) => false,
        }
    }
}

fn target(s: &str) -> (SocketAddr, bool) {
    let (addr, proto) = s.rsplit_once('/').expect("ADDR:PORT/proto");
    (addr.parse().expect("ADDR:PORT"), proto == "udp")
}

fn connect(addr: SocketAddr, udp: bool, timeout: Duration) -> bool {
    if udp {
        let Ok(sock) = UdpSocket::bind(if addr.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        }) else {
            return false;
        };
        let _ = sock.set_read_timeout(Some(timeout));
        if sock.send_to(b"probe", addr).is_err() {
            return false;
        }
        let mut buf = [0u8; 16];
        matches!(sock.recv_from(&mut buf), Ok((n, from)) if from == addr && &buf[..n] == b"probe")
    } else {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(mut s) => {
                let _ = s.set_read_timeout(Some(timeout));
                let mut buf = [0u8; 2];
                s.read_exact(&mut buf).is_ok() && &buf == b"ok"
            }
            Err(_) => false,
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("serve") => {
            let mut threads = Vec::new();
            for t in &args[1..] {
                let (addr, udp) = target(t);
                threads.push(std::thread::spawn(move || {
                    if udp {
                        let sock = UdpSocket::bind(addr).expect("bind udp");
                        let mut buf = [0u8; 64];
                        while let Ok((n, from)) = sock.recv_from(&mut buf) {
                            let _ = sock.send_to(&buf[..n], from);
                        }
                    } else {
                        let l = TcpListener::bind(addr).expect("bind tcp");
                        for mut s in l.incoming().flatten() {
                            let _ = s.write_all(b"ok");
                        }
                    }
                }));
            }
            println!("ready");
            for t in threads {
                let _ = t.join();
            }
            ExitCode::SUCCESS
        }
        Some("connect") if args.len() == 3 => {
            let (addr, udp) = target(&args[1]);
            let ms: u64 = args[2].parse().expect("MS");
            if connect(addr, udp, Duration::from_millis(ms)) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Some("pushserve") if args.len() >= 2 => {
            let bound: Vec<Bound> = args[1..].iter().map(|t| bind(t)).collect();
            let threads: Vec<_> = bound
                .into_iter()
                .map(|b| std::thread::spawn(move || pushserve(b)))
                .collect();
            println!("ready");
            let _ = std::io::stdout().flush();
            for t in threads {
                let _ = t.join();
            }
            ExitCode::SUCCESS
        }
        Some("hold") if args.len() == 3 || args.len() == 4 => {
            let (addr, udp) = target(&args[1]);
            let ms: u64 = args[2].parse().expect("MS");
            if hold(addr, udp, ms, args.get(3).is_some_and(|q| q == "quiet")) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Some("spray") if args.len() >= 3 => {
            let ms: u64 = args[1].parse().expect("MS");
            let targets: Vec<_> = args[2..].iter().map(|t| target(t)).collect();
            let end = Instant::now() + Duration::from_millis(ms);
            let mut n = 0u64;
            while Instant::now() < end {
                for (addr, udp) in &targets {
                    let _ = connect(*addr, *udp, Duration::from_millis(5));
                    n += 1;
                }
            }
            println!("{n}");
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("usage: netprobe serve|connect|spray|pushserve|hold ...");
            ExitCode::from(2)
        }
    }
}
