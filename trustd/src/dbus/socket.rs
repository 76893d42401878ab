//! The bus connection's socket: a Unix stream that never negotiates passing file descriptors
//! (`NEGOTIATE_UNIX_FD`, D-Bus specification, "Authentication protocol").
//!
//! No method of `org.enigm.Trust1` takes a descriptor. A connection that cannot receive them
//! makes the bus daemon refuse, with an error to the sender, any message that carries some
//! to trustd: a caller cannot make trustd hold descriptors it never asked for (each queued
//! message would otherwise keep its own until dispatched, up to trustd's descriptor limit).

use std::io;
#[cfg(unix)]
use std::os::fd::{BorrowedFd, OwnedFd};

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use zbus::connection::socket::{ReadHalf, Socket, Split, WriteHalf};

/// A Unix stream to the bus that takes no file descriptors.
#[derive(Debug)]
pub struct NoFds(tokio::net::UnixStream);

impl NoFds {
    /// Connect to the socket at `path` (within the running tokio runtime).
    pub async fn connect(path: &str) -> io::Result<Self> {
        tokio::net::UnixStream::connect(path).await.map(Self)
    }
}

/// The socket path of a `unix:path=...` address (`None` for any other kind).
pub fn unix_path(address: &str) -> Option<&str> {
    // One transport, its keys comma-separated (`unix:path=/run/dbus/x,guid=...`).
    let keys = address.split(';').next()?.strip_prefix("unix:")?;
    keys.split(',').find_map(|kv| kv.strip_prefix("path="))
}

/// The largest body trustd holds of a message from a sender not known to be privileged:
/// every method of `org.enigm.Trust1` open to ordinary callers takes a few short strings.
pub const SMALL_BODY: u32 = 64 * 1024;

/// Decides whether a message's sender (its unique bus name) may have a large body read.
pub trait Judge: Send + Sync + std::fmt::Debug {
    /// Whether `sender` is privileged (root or the admin group).
    fn privileged<'a>(
        &'a self,
        sender: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + 'a>>;
}

/// The read half.
#[derive(Debug)]
pub struct Reader {
    inner: BufReader<OwnedReadHalf>,
    judge: Option<std::sync::Arc<dyn Judge>>,
    /// Until the server's `OK` line is read, bytes are the authentication's lines.
    authenticated: bool,
    /// Header bytes (possibly rewritten) not yet handed out, and where they start.
    pending: Vec<u8>,
    at: usize,
    /// Body bytes of the current message to hand out, and to throw away.
    body_left: u64,
    skip_left: u64,
}

/// The write half.
#[derive(Debug)]
pub struct Writer(OwnedWriteHalf);

impl NoFds {
    /// With `judge`, large bodies are read only for privileged senders (the serving
    /// connection); without, every message is read whole (the connection trustd uses as a
    /// client).
    pub fn with_judge(self, judge: Option<std::sync::Arc<dyn Judge>>) -> JudgedStream {
        JudgedStream(self, judge)
    }
}

/// A [`NoFds`] stream and its [`Judge`].
#[derive(Debug)]
pub struct JudgedStream(NoFds, Option<std::sync::Arc<dyn Judge>>);

impl Socket for JudgedStream {
    type ReadHalf = Reader;
    type WriteHalf = Writer;

    fn split(self) -> Split<Reader, Writer> {
        let (r, w) = self.0.0.into_split();
        Split::new(
            Reader {
                inner: BufReader::with_capacity(64 * 1024, r),
                judge: self.1,
                authenticated: false,
                pending: Vec::new(),
                at: 0,
                body_left: 0,
                skip_left: 0,
            },
            Writer(w),
        )
    }
}

impl Socket for NoFds {
    type ReadHalf = Reader;
    type WriteHalf = Writer;

    fn split(self) -> Split<Reader, Writer> {
        JudgedStream(self, None).split()
    }
}

/// The fixed part of a message header (16 bytes): (big-endian, type, body length, length
/// of the header field array).
fn primary(h: &[u8; 16]) -> io::Result<(bool, u8, u32, u32)> {
    let big = match h[0] {
        b'l' => false,
        b'B' => true,
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not a D-Bus message (endianness)",
            ));
        }
    };
    let u = |b: &[u8]| {
        let a = [b[0], b[1], b[2], b[3]];
        if big {
            u32::from_be_bytes(a)
        } else {
            u32::from_le_bytes(a)
        }
    };
    Ok((big, h[1], u(&h[4..8]), u(&h[12..16])))
}

/// The SENDER header field (code 7) of a message whose whole header is `h`.
fn sender(h: &[u8], big: bool, fields_len: usize) -> Option<String> {
    let end = 16usize.checked_add(fields_len)?.min(h.len());
    let u = |b: &[u8]| -> Option<usize> {
        let a: [u8; 4] = b.get(..4)?.try_into().ok()?;
        Some(if big {
            u32::from_be_bytes(a)
        } else {
            u32::from_le_bytes(a)
        } as usize)
    };
    let mut p = 16;
    while p < end {
        p = p.next_multiple_of(8);
        let code = *h.get(p)?;
        let sig_len = *h.get(p + 1)? as usize;
        let sig = h.get(p + 2..p + 2 + sig_len)?;
        p += 2 + sig_len + 1;
        match sig {
            b"s" | b"o" => {
                p = p.next_multiple_of(4);
                let n = u(h.get(p..)?)?;
                let v = h.get(p + 4..p + 4 + n)?;
                if code == 7 {
                    return String::from_utf8(v.to_vec()).ok();
                }
                p += 4 + n + 1;
            }
            b"g" => {
                let n = *h.get(p)? as usize;
                p += 1 + n + 1;
            }
            b"u" => {
                p = p.next_multiple_of(4) + 4;
            }
            _ => return None,
        }
    }
    None
}

impl Reader {
    /// Read the next message's header; decide whether its body is read or thrown away.
    async fn next_header(&mut self) -> io::Result<bool> {
        let mut h = [0u8; 16];
        match self.inner.read_exact(&mut h).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
            Err(e) => return Err(e),
        }
        let (big, _ty, body_len, fields_len) = primary(&h)?;
        let rest = (16 + fields_len as usize).next_multiple_of(8) - 16;
        let mut header = h.to_vec();
        header.resize(16 + rest, 0);
        self.inner.read_exact(&mut header[16..]).await?;
        let mut keep = true;
        if body_len > SMALL_BODY
            && let Some(judge) = &self.judge
        {
            keep = match sender(&header, big, fields_len as usize) {
                Some(s) => judge.privileged(&s).await,
                None => false,
            };
        }
        if keep {
            self.body_left = u64::from(body_len);
        } else {
            tracing::warn!(
                "a message of {body_len} bytes from a sender that is not an admin: body not read"
            );
            self.skip_left = u64::from(body_len);
            header[4..8].copy_from_slice(&[0; 4]);
        }
        self.pending = header;
        self.at = 0;
        Ok(true)
    }
}

#[async_trait::async_trait]
impl ReadHalf for Reader {
    async fn recvmsg(&mut self, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
        if buf.is_empty() {
            return Ok((0, Vec::new()));
        }
        if !self.authenticated {
            // One line of the authentication at a time, so that no byte of the first
            // message is read past the framing below.
            let avail = tokio::io::AsyncBufReadExt::fill_buf(&mut self.inner).await?;
            if avail.is_empty() {
                return Ok((0, Vec::new()));
            }
            let line_end = avail.windows(2).position(|w| w == b"\r\n").map(|i| i + 2);
            let n = line_end.unwrap_or(avail.len()).min(buf.len());
            buf[..n].copy_from_slice(&avail[..n]);
            if line_end.is_some_and(|e| e <= buf.len()) && avail.starts_with(b"OK ") {
                self.authenticated = true;
            }
            tokio::io::AsyncBufReadExt::consume(&mut self.inner, n);
            return Ok((n, Vec::new()));
        }
        loop {
            if self.at < self.pending.len() {
                let n = (self.pending.len() - self.at).min(buf.len());
                buf[..n].copy_from_slice(&self.pending[self.at..self.at + n]);
                self.at += n;
                return Ok((n, Vec::new()));
            }
            while self.skip_left > 0 {
                let avail = tokio::io::AsyncBufReadExt::fill_buf(&mut self.inner).await?;
                if avail.is_empty() {
                    return Ok((0, Vec::new()));
                }
                let n = avail
                    .len()
                    .min(usize::try_from(self.skip_left).unwrap_or(usize::MAX));
                tokio::io::AsyncBufReadExt::consume(&mut self.inner, n);
                self.skip_left -= n as u64;
            }
            if self.body_left > 0 {
                let want = buf
                    .len()
                    .min(usize::try_from(self.body_left).unwrap_or(usize::MAX));
                let n = self.inner.read(&mut buf[..want]).await?;
                self.body_left -= n as u64;
                return Ok((n, Vec::new()));
            }
            if !self.next_header().await? {
                return Ok((0, Vec::new()));
            }
        }
    }

    fn can_pass_unix_fd(&self) -> bool {
        false
    }
}

#[async_trait::async_trait]
impl WriteHalf for Writer {
    async fn sendmsg(&mut self, buf: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<usize> {
        if !fds.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "this connection passes no file descriptors",
            ));
        }
        self.0.write(buf).await
    }

    async fn close(&mut self) -> io::Result<()> {
        self.0.shutdown().await
    }

    fn can_pass_unix_fd(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::unix_path;

    #[test]
    fn unix_path_addresses_and_others() {
        assert_eq!(
            unix_path("unix:path=/run/dbus/system_bus_socket"),
            Some("/run/dbus/system_bus_socket")
        );
        assert_eq!(unix_path("unix:path=/tmp/b,guid=0123"), Some("/tmp/b"));
        assert_eq!(unix_path("unix:abstract=/tmp/x"), None);
        assert_eq!(unix_path("tcp:host=127.0.0.1,port=1"), None);
    }
}
