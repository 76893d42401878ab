//! netprobe: the traffic side of the network tests. Runs inside the tests' namespaces only.
//!
//! netprobe serve ADDR:PORT/tcp|udp ...     accept (tcp) or echo (udp) until killed
//! netprobe connect ADDR:PORT/tcp|udp MS    exit 0 if a connection (or an echo) succeeds
//! netprobe spray MS ADDR:PORT/tcp|udp ...  keep trying every target for MS milliseconds

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant};

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
            eprintln!("usage: netprobe serve|connect|spray ...");
            ExitCode::from(2)
        }
    }
}
