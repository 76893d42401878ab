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

/// The read half.
#[derive(Debug)]
pub struct Reader(BufReader<OwnedReadHalf>);

/// The write half.
#[derive(Debug)]
pub struct Writer(OwnedWriteHalf);

impl Socket for NoFds {
    type ReadHalf = Reader;
    type WriteHalf = Writer;

    fn split(self) -> Split<Reader, Writer> {
        let (r, w) = self.0.into_split();
        Split::new(Reader(BufReader::with_capacity(64 * 1024, r)), Writer(w))
    }
}

#[async_trait::async_trait]
impl ReadHalf for Reader {
    async fn recvmsg(&mut self, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
        self.0.read(buf).await.map(|n| (n, Vec::new()))
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
