//! D-Bus spoken by hand over a Unix socket, for tests that send what no library would: bytes
//! that are not UTF-8, calls pipelined without reading a reply, file descriptors attached to
//! calls that take none, connections dropped mid-call. The wire format is the D-Bus
//! specification's (little-endian, version 1).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// Header field codes (D-Bus specification, "Header Fields").
const PATH: u8 = 1;
const INTERFACE: u8 = 2;
const MEMBER: u8 = 3;
const DESTINATION: u8 = 6;
const UNIX_FDS: u8 = 9;

/// The NO_REPLY_EXPECTED header flag.
pub const NO_REPLY_EXPECTED: u8 = 0x1;

/// A method call message built by hand (little-endian): header `fields` (code, type, value),
/// body signature `sig` and body bytes, with `flags`.
pub fn raw_message_flags(
    serial: u32,
    flags: u8,
    fields: &[(u8, char, &[u8])],
    sig: &str,
    body: &[u8],
) -> Vec<u8> {
    fn pad(v: &mut Vec<u8>, to: usize) {
        while !v.len().is_multiple_of(to) {
            v.push(0);
        }
    }
    let mut f = Vec::new();
    let mut all: Vec<(u8, char, &[u8])> = fields.to_vec();
    if !sig.is_empty() {
        all.push((8, 'g', sig.as_bytes()));
    }
    for (code, ty, value) in all {
        pad(&mut f, 8);
        f.push(code);
        f.extend([1, ty as u8, 0]);
        match ty {
            'g' => {
                f.push(u8::try_from(value.len()).expect("short"));
                f.extend(value);
                f.push(0);
            }
            'u' => {
                pad(&mut f, 4);
                f.extend(value);
            }
            _ => {
                pad(&mut f, 4);
                f.extend(u32::try_from(value.len()).expect("len").to_le_bytes());
                f.extend(value);
                f.push(0);
            }
        }
    }
    let mut m = vec![b'l', 1, flags, 1];
    m.extend(u32::try_from(body.len()).expect("len").to_le_bytes());
    m.extend(serial.to_le_bytes());
    m.extend(u32::try_from(f.len()).expect("len").to_le_bytes());
    m.extend(f);
    pad(&mut m, 8);
    m.extend(body);
    m
}

/// [`raw_message_flags`] without flags.
pub fn raw_message(serial: u32, fields: &[(u8, char, &[u8])], sig: &str, body: &[u8]) -> Vec<u8> {
    raw_message_flags(serial, 0, fields, sig, body)
}

/// A D-Bus string argument: length, bytes, NUL.
pub fn string_body(s: &str) -> Vec<u8> {
    let mut body = u32::try_from(s.len()).expect("len").to_le_bytes().to_vec();
    body.extend(s.as_bytes());
    body.push(0);
    body
}

/// A connection to a bus, authenticated (EXTERNAL, as this process's uid) and named (Hello).
#[derive(Debug)]
pub struct RawConn {
    /// The socket.
    pub sock: UnixStream,
    serial: u32,
}

impl RawConn {
    /// Connect to `address` (`unix:path=...`); with `fds`, negotiate passing file descriptors.
    pub fn connect(address: &str, fds: bool) -> std::io::Result<Self> {
        let path = address
            .strip_prefix("unix:path=")
            .ok_or_else(|| std::io::Error::other("not a unix:path= address"))?;
        let mut s = UnixStream::connect(path)?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        let uid_hex: String = trustd::sys::uid()
            .to_string()
            .bytes()
            .map(|b| format!("{b:02x}"))
            .collect();
        s.write_all(format!("\0AUTH EXTERNAL {uid_hex}\r\n").as_bytes())?;
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf)?;
        if !buf[..n].starts_with(b"OK ") {
            return Err(std::io::Error::other(format!(
                "auth: {:?}",
                String::from_utf8_lossy(&buf[..n])
            )));
        }
        if fds {
            s.write_all(b"NEGOTIATE_UNIX_FD\r\n")?;
            let n = s.read(&mut buf)?;
            if !buf[..n].starts_with(b"AGREE_UNIX_FD") {
                return Err(std::io::Error::other("the bus does not pass fds"));
            }
        }
        s.write_all(b"BEGIN\r\n")?;
        let hello = [
            (PATH, 'o', b"/org/freedesktop/DBus".as_slice()),
            (INTERFACE, 's', b"org.freedesktop.DBus".as_slice()),
            (MEMBER, 's', b"Hello".as_slice()),
            (DESTINATION, 's', b"org.freedesktop.DBus".as_slice()),
        ];
        s.write_all(&raw_message(1, &hello, "", &[]))?;
        Ok(Self { sock: s, serial: 1 })
    }

    /// The bytes of a call of trustd's `Iface.Member(s)` with `flags`, and how many fds it says
    /// are attached (`fds`).
    pub fn call_bytes(
        &mut self,
        iface: &str,
        member: &str,
        arg: &str,
        flags: u8,
        fds: u32,
    ) -> Vec<u8> {
        self.serial += 1;
        let iface = format!("org.enigm.Trust1.{iface}");
        let n = fds.to_le_bytes();
        let mut fields: Vec<(u8, char, &[u8])> = vec![
            (PATH, 'o', b"/org/enigm/Trust1"),
            (INTERFACE, 's', iface.as_bytes()),
            (MEMBER, 's', member.as_bytes()),
            (DESTINATION, 's', b"org.enigm.Trust1"),
        ];
        if fds > 0 {
            fields.push((UNIX_FDS, 'u', &n));
        }
        raw_message_flags(self.serial, flags, &fields, "s", &string_body(arg))
    }

    /// The bytes of a call of `iface.member` on trustd's object, with one string argument or
    /// none.
    pub fn builtin_call(&mut self, iface: &str, member: &str, arg: Option<&str>) -> Vec<u8> {
        self.serial += 1;
        let fields: Vec<(u8, char, &[u8])> = vec![
            (PATH, 'o', b"/org/enigm/Trust1"),
            (INTERFACE, 's', iface.as_bytes()),
            (MEMBER, 's', member.as_bytes()),
            (DESTINATION, 's', b"org.enigm.Trust1"),
        ];
        match arg {
            Some(a) => raw_message_flags(self.serial, 0, &fields, "s", &string_body(a)),
            None => raw_message_flags(self.serial, 0, &fields, "", &[]),
        }
    }

    /// Send `bytes` with `fds` attached (SCM_RIGHTS).
    pub fn send_with_fds(&self, bytes: &[u8], fds: &[std::os::fd::RawFd]) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let mut iov = libc::iovec {
            iov_base: bytes.as_ptr() as *mut libc::c_void,
            iov_len: bytes.len(),
        };
        let fd_bytes = std::mem::size_of_val(fds);
        // SAFETY: CMSG_SPACE is a pure computation on a length.
        let space = unsafe { libc::CMSG_SPACE(u32::try_from(fd_bytes).expect("small")) } as usize;
        let mut control = vec![0u8; space];
        // SAFETY: zeroed msghdr is a valid empty header; every pointer set below outlives the
        // sendmsg call (iov, control and bytes are locals borrowed for its duration).
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space;
        // SAFETY: msg_control points at `space` bytes, enough for one cmsg of `fd_bytes` data,
        // so CMSG_FIRSTHDR is non-null and CMSG_DATA has room for the fds copied.
        let rc = unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(u32::try_from(fd_bytes).expect("small")) as usize;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr().cast::<u8>(),
                libc::CMSG_DATA(cmsg),
                fd_bytes,
            );
            libc::sendmsg(self.sock.as_raw_fd(), &raw const msg, libc::MSG_NOSIGNAL)
        };
        if rc < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}
