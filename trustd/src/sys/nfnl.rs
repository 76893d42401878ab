//! nf_tables over nfnetlink (`NETLINK_NETFILTER`, subsystem `NFNL_SUBSYS_NFTABLES`), the
//! messages `nft` itself sends, built and read here without `nft` or libnftnl: a [`Batch`]
//! of messages between `NFNL_MSG_BATCH_BEGIN` and `NFNL_MSG_BATCH_END` that the kernel
//! commits as one transaction or not at all, and dumps (`NLM_F_DUMP`) read message by
//! message. Wire format: netlink(7), nfnetlink's `struct nfgenmsg`, the attribute numbers of
//! `include/uapi/linux/netfilter/nf_tables.h`. Owns the socket; knows nothing of trustd's
//! tables (netfilter/ decides what to send).

use std::os::fd::AsRawFd;
use std::time::Duration;

use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

/// nfnetlink subsystem id of nf_tables, the high byte of a message type.
const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// Batch delimiters (`NFNL_MSG_BATCH_BEGIN`, `NFNL_MSG_BATCH_END`).
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
/// `NFT_MSG_GETGEN`: answered after every earlier message of the socket (a sync point).
const NFT_MSG_GETGEN: u8 = 16;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
/// Set by the kernel on a dump reply when the ruleset changed while the dump was being
/// written (`nl_dump_check_consistent`): what was read mixes two states.
const NLM_F_DUMP_INTR: u16 = 0x10;
/// `NFTA_GEN_ID`: the ruleset generation in a `NFT_MSG_NEWGEN` reply.
const NFTA_GEN_ID: u16 = 1;
/// How many times a read of the ruleset ([`NfSocket::consistent`]) is tried before it is
/// given up as unsettled.
pub const READ_TRIES: u32 = 5;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
/// Set on an attribute that holds attributes.
const NLA_F_NESTED: u16 = 0x8000;
/// Room left in one message for its attributes: attribute lengths are 16 bits, so a nest
/// of elements stays below this.
pub const MSG_ROOM: usize = 60 * 1024;

/// Why a netlink exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum NfnlError {
    /// The socket could not be opened, sent on or read from.
    #[error("nf_tables netlink socket: {0}")]
    Io(#[source] std::io::Error),
    /// The kernel refused a message; nothing of the batch was committed.
    #[error("the kernel refused {what}: {err}")]
    Refused {
        /// Which message (as the caller described it).
        what: String,
        /// The errno the kernel answered.
        #[source]
        err: std::io::Error,
    },
    /// A reply did not have the netlink shape.
    #[error("malformed nf_tables reply: {0}")]
    Malformed(String),
    /// The kernel marked a dump reply `NLM_F_DUMP_INTR`: the ruleset changed while it was
    /// dumped, so what was read may mix the states before and after. Read again.
    #[error("the ruleset changed while it was dumped (NLM_F_DUMP_INTR)")]
    Interrupted,
    /// Every one of `tries` reads of the ruleset saw it change while reading (another
    /// writer kept committing, or dumps kept being interrupted); nothing read was used.
    #[error(
        "the ruleset changed during each of {tries} reads (another program keeps writing it); nothing read was trusted"
    )]
    Unsettled {
        /// How many reads were tried.
        tries: u32,
    },
}

/// One message's header and attributes as read from a dump: the nf_tables message number
/// (`NFT_MSG_*`), the family and the attributes after `struct nfgenmsg`.
#[derive(Debug, Clone, Copy)]
pub struct Reply<'a> {
    /// `NFT_MSG_*`.
    pub msg: u8,
    /// `NFPROTO_*`.
    pub family: u8,
    /// The attributes (walk them with [`attrs`]).
    pub body: &'a [u8],
}

/// Attributes of a netlink message body: (type without flags, value). A truncated or
/// malformed attribute ends the walk.
pub fn attrs(b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    raw_attrs(b).map(|(kind, raw)| {
        let len = usize::from(u16::from_ne_bytes([raw[0], raw[1]]));
        (kind, &raw[4..len])
    })
}

/// Attributes with their headers, as raw slices that can be copied into another message:
/// (type without flags, the whole attribute including header and padding).
pub fn raw_attrs(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if b.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([b[0], b[1]]));
        let kind = u16::from_ne_bytes([b[2], b[3]]) & 0x3fff;
        if len < 4 || len > b.len() {
            return None;
        }
        let end = ((len + 3) & !3).min(b.len());
        let raw = &b[..end];
        b = &b[end..];
        Some((kind, raw))
    })
}

/// The kernel's extended acknowledgement of a refusal (`NLMSGERR_ATTR_MSG`, `_OFFS`),
/// as ` (reason, attribute at offset N)`; empty if it gave none.
fn ext_ack(body: &[u8]) -> String {
    let Some(tlvs) = body.get(20..) else {
        return String::new();
    };
    let mut parts = Vec::new();
    for (t, v) in attrs(tlvs) {
        match t {
            1 => parts.push(
                String::from_utf8_lossy(v.split(|b| *b == 0).next().unwrap_or_default())
                    .into_owned(),
            ),
            2 if v.len() == 4 => parts.push(format!(
                "attribute at offset {}",
                u32::from_ne_bytes([v[0], v[1], v[2], v[3]])
            )),
            _ => {}
        }
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!(" ({})", parts.join(", "))
    }
}

/// Messages being written: a netlink buffer with open attribute nests.
#[derive(Debug, Default)]
pub struct MsgBuf {
    buf: Vec<u8>,
    /// An attribute or nest longer than netlink's 16-bit length was written: the buffer
    /// is not sent (its length field would wrap and the kernel read the rest as other
    /// attributes).
    overflow: bool,
    /// Start of the message being written.
    msg: usize,
    seq: u32,
}

impl MsgBuf {
    fn header(&mut self, kind: u16, flags: u16, family: u8, res_id: u16) {
        self.msg = self.buf.len();
        self.seq = self.seq.wrapping_add(1);
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&self.seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        // struct nfgenmsg: family, version 0, res_id (big endian).
        self.buf.push(family);
        self.buf.push(0);
        self.buf.extend_from_slice(&res_id.to_be_bytes());
    }

    fn close(&mut self) {
        let len = (self.buf.len() - self.msg) as u32;
        self.buf[self.msg..self.msg + 4].copy_from_slice(&len.to_ne_bytes());
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    /// Bytes of the message being written so far.
    pub fn msg_len(&self) -> usize {
        self.buf.len() - self.msg
    }

    /// An attribute with a raw value.
    pub fn put(&mut self, kind: u16, value: &[u8]) {
        let len = u16::try_from(4 + value.len()).unwrap_or_else(|_| {
            self.overflow = true;
            u16::MAX
        });
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(value);
        self.pad();
    }

    /// A NUL-terminated string attribute.
    pub fn put_str(&mut self, kind: u16, s: &str) {
        let len = (5 + s.len()) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.push(0);
        self.pad();
    }

    /// A 32-bit attribute in network byte order (nf_tables' integers).
    pub fn put_be32(&mut self, kind: u16, v: u32) {
        self.put(kind, &v.to_be_bytes());
    }

    /// Attributes copied as they are (from [`raw_attrs`]).
    pub fn put_raw(&mut self, raw: &[u8]) {
        self.buf.extend_from_slice(raw);
        self.pad();
    }

    /// Open a nest; close it with [`Self::nest_end`] and the returned offset.
    pub fn nest_begin(&mut self, kind: u16) -> usize {
        let at = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        at
    }

    /// Close the nest opened at `at`.
    pub fn nest_end(&mut self, at: usize) {
        let len = u16::try_from(self.buf.len() - at).unwrap_or_else(|_| {
            self.overflow = true;
            u16::MAX
        });
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }
}

/// One nf_tables transaction: messages added with [`Batch::begin`] (then attributes on the
/// [`MsgBuf`] it derefs to), sent with [`NfSocket::commit`]. Each message carries a short
/// description for the error that names it.
#[derive(Debug, Default)]
pub struct Batch {
    out: MsgBuf,
    what: Vec<(u32, String)>,
    open: bool,
}

impl std::ops::Deref for Batch {
    type Target = MsgBuf;
    fn deref(&self) -> &MsgBuf {
        &self.out
    }
}

impl std::ops::DerefMut for Batch {
    fn deref_mut(&mut self) -> &mut MsgBuf {
        &mut self.out
    }
}

impl Batch {
    /// An empty batch (its `BATCH_BEGIN` written).
    pub fn new() -> Self {
        let mut b = Self::default();
        b.out
            .header(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, 0, NFNL_SUBSYS_NFTABLES);
        b.out.close();
        b
    }

    /// Start message `NFT_MSG_*` `msg` with `flags` (besides `NLM_F_REQUEST`) for `family`;
    /// the previous message is closed.
    pub fn begin(&mut self, msg: u8, flags: u16, family: u8, what: impl Into<String>) {
        self.end_msg();
        self.out.header(
            (NFNL_SUBSYS_NFTABLES << 8) | u16::from(msg),
            NLM_F_REQUEST | flags,
            family,
            0,
        );
        self.what.push((self.out.seq, what.into()));
        self.open = true;
    }

    fn end_msg(&mut self) {
        if std::mem::take(&mut self.open) {
            self.out.close();
        }
    }

    /// Messages in the batch (besides its delimiters).
    pub fn messages(&self) -> usize {
        self.what.len()
    }

    /// Bytes so far.
    pub fn bytes(&self) -> usize {
        self.out.buf.len()
    }
}

/// A netlink socket to nf_tables, in the network namespace it was opened in.
#[derive(Debug)]
pub struct NfSocket {
    sock: Socket,
    seq: u32,
    rx: Vec<u8>,
    /// A dump was interrupted since this was last cleared (see [`Self::settled`]).
    interrupted: bool,
    /// The port id the kernel gave this socket (what it records as the owner of a table
    /// this socket creates with `NFT_TABLE_F_OWNER`).
    port_id: u32,
}

fn set_int_opt(sock: &Socket, opt: libc::c_int, value: libc::c_int) -> std::io::Result<()> {
    // SAFETY: the socket is open for the call; the option value is a c_int that lives across
    // the call and its size is passed.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

impl NfSocket {
    /// A socket in this process's network namespace; replies wait at most `deadline`.
    pub fn open(deadline: Duration) -> Result<Self, NfnlError> {
        let mut sock = Socket::new(NETLINK_NETFILTER).map_err(NfnlError::Io)?;
        let port_id = sock.bind_auto().map_err(NfnlError::Io)?.port_number();
        // Connected to the kernel (port id 0): the kernel then refuses, for this socket,
        // messages any other process sends to its port id, so that no one can forge a
        // verdict, a generation or a dump reply.
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(NfnlError::Io)?;
        let tv = libc::timeval {
            tv_sec: deadline.as_secs().try_into().unwrap_or(libc::time_t::MAX),
            tv_usec: deadline.subsec_micros().into(),
        };
        // SAFETY: the socket is open for the call; `tv` is a timeval that lives across the
        // call and its size is passed.
        let rc = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const tv).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(NfnlError::Io(std::io::Error::last_os_error()));
        }
        // Refusals carry the kernel's reason and the offending attribute's offset, not a copy
        // of the (possibly large) refused message.
        let _ = sock.set_ext_ack(true);
        let _ = sock.set_cap_ack(true);
        // Room for error replies of a large batch (queued only when it fails).
        let _ = set_int_opt(&sock, libc::SO_RCVBUFFORCE, 8 << 20);
        Ok(Self {
            sock,
            seq: 1 << 30,
            rx: Vec::with_capacity(256 << 10),
            interrupted: false,
            port_id,
        })
    }

    /// This socket's netlink port id (nonzero; the kernel's is 0).
    pub fn port_id(&self) -> u32 {
        self.port_id
    }

    /// A socket in the named network namespace (`/run/netns/NAME`, as `ip netns` makes
    /// them): opened by a short-lived thread that enters the namespace, so this process's
    /// own threads stay where they are. For tests and benchmarks.
    pub fn open_in_netns(name: &str, deadline: Duration) -> Result<Self, NfnlError> {
        let path = std::path::Path::new("/run/netns").join(name);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).map_err(NfnlError::Io)?;
            // SAFETY: `ns` is an open namespace file for the call; setns changes only the
            // calling thread, which ends after opening the socket.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                return Err(NfnlError::Io(std::io::Error::last_os_error()));
            }
            Self::open(deadline)
        })
        .join()
        .map_err(|_| NfnlError::Malformed("the namespace thread panicked".into()))?
    }

    /// Send `batch` as one transaction and wait for the kernel's verdict: `Ok` once it is
    /// committed; on any refusal nothing of it is (the kernel aborts the whole batch), and
    /// the first refused message is named.
    pub fn commit(&mut self, batch: Batch) -> Result<(), NfnlError> {
        self.send_batch(batch, true)
    }

    /// Send `batch` as a dry run, as `nft --check` does: without `NFNL_MSG_BATCH_END`,
    /// so the kernel processes every message (each checked as in a real transaction: an
    /// element to delete must be there) and then aborts the whole batch, changing nothing.
    /// `Ok` when every message passed; else the first refused message is named.
    pub fn dry_run(&mut self, batch: Batch) -> Result<(), NfnlError> {
        self.send_batch(batch, false)
    }

    fn send_batch(&mut self, mut batch: Batch, end: bool) -> Result<(), NfnlError> {
        if batch.out.overflow {
            return Err(NfnlError::Malformed(
                "an attribute of the batch is longer than netlink's 64 KiB: nothing was sent"
                    .into(),
            ));
        }
        batch.end_msg();
        let base = self.seq;
        // Renumber: sequence numbers are this socket's, the batch counted from 1.
        let mut off = 0;
        let buf = &mut batch.out.buf;
        while off + 16 <= buf.len() {
            let len =
                u32::from_ne_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]]) as usize;
            let seq =
                u32::from_ne_bytes([buf[off + 8], buf[off + 9], buf[off + 10], buf[off + 11]]);
            buf[off + 8..off + 12].copy_from_slice(&base.wrapping_add(seq).to_ne_bytes());
            off += len.max(16);
        }
        if end {
            batch
                .out
                .header(NFNL_MSG_BATCH_END, NLM_F_REQUEST, 0, NFNL_SUBSYS_NFTABLES);
            batch.out.close();
            let at = batch.out.msg;
            let end_seq = base.wrapping_add(batch.out.seq);
            batch.out.buf[at + 8..at + 12].copy_from_slice(&end_seq.to_ne_bytes());
        }
        self.seq = base.wrapping_add(batch.out.seq).wrapping_add(1);
        let _ = set_int_opt(
            &self.sock,
            libc::SO_SNDBUFFORCE,
            libc::c_int::try_from(batch.out.buf.len() + (64 << 10)).unwrap_or(libc::c_int::MAX),
        );
        // The kernel processes the whole batch inside this call.
        self.sock.send(&batch.out.buf, 0).map_err(NfnlError::Io)?;
        drop(std::mem::take(&mut batch.out.buf));
        // Only refusals are answered; a GETGEN after the batch marks the end of them.
        let sync = self.request(NFT_MSG_GETGEN, 0, 0, |_| {})?;
        let mut first: Option<NfnlError> = None;
        loop {
            let done = self.read(|kind, _, seq, body| {
                if kind == NLMSG_ERROR {
                    let errno = body
                        .get(..4)
                        .map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                    if seq == sync {
                        return true;
                    }
                    if errno != 0 && first.is_none() {
                        let why = ext_ack(body);
                        let what = batch
                            .what
                            .iter()
                            .find(|(s, _)| base.wrapping_add(*s) == seq)
                            .map_or_else(|| format!("message {seq}"), |(_, w)| w.clone())
                            + &why;
                        first = Some(NfnlError::Refused {
                            what,
                            err: std::io::Error::from_raw_os_error(-errno),
                        });
                    }
                    return false;
                }
                seq == sync
            });
            match done {
                Ok(true) => break,
                Ok(false) => {}
                Err(NfnlError::Io(e)) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    // Refusals overran the buffer: the batch failed.
                    first.get_or_insert(NfnlError::Refused {
                        what: "the batch".into(),
                        err: e,
                    });
                }
                Err(e) => return Err(e),
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Send one request (`NLM_F_REQUEST | flags`) built by `body`; returns its sequence number.
    fn request(
        &mut self,
        msg: u8,
        flags: u16,
        family: u8,
        body: impl FnOnce(&mut MsgBuf),
    ) -> Result<u32, NfnlError> {
        let mut m = MsgBuf {
            seq: self.seq,
            ..MsgBuf::default()
        };
        m.header(
            (NFNL_SUBSYS_NFTABLES << 8) | u16::from(msg),
            NLM_F_REQUEST | flags,
            family,
            0,
        );
        body(&mut m);
        m.close();
        self.seq = m.seq.wrapping_add(1);
        self.sock.send(&m.buf, 0).map_err(NfnlError::Io)?;
        Ok(m.seq)
    }

    /// Read one datagram and hand each message (type, flags, seq, body) to `each` until it
    /// returns true; returns whether it did.
    fn read(
        &mut self,
        mut each: impl FnMut(u16, u16, u32, &[u8]) -> bool,
    ) -> Result<bool, NfnlError> {
        self.rx.clear();
        let (n, from) = self
            .sock
            .recv_from(&mut self.rx, 0)
            .map_err(NfnlError::Io)?;
        if from.port_number() != 0 {
            // Not the kernel: another process with CAP_NET_ADMIN can send to this socket's
            // port id (the socket is connected to the kernel, which refuses that, so this is
            // a second guard). Its bytes are never taken for a reply.
            return Ok(false);
        }
        let buf = &self.rx[..n.min(self.rx.len())];
        let mut off = 0;
        while off + 16 <= buf.len() {
            let h = &buf[off..off + 16];
            let len = u32::from_ne_bytes([h[0], h[1], h[2], h[3]]) as usize;
            let kind = u16::from_ne_bytes([h[4], h[5]]);
            let flags = u16::from_ne_bytes([h[6], h[7]]);
            let seq = u32::from_ne_bytes([h[8], h[9], h[10], h[11]]);
            if len < 16 || off + len > buf.len() {
                return Err(NfnlError::Malformed(format!(
                    "a message of {len} bytes in a datagram of {}",
                    buf.len()
                )));
            }
            if each(kind, flags, seq, &buf[off + 16..off + len]) {
                return Ok(true);
            }
            off += (len + 3) & !3;
        }
        Ok(false)
    }

    /// Dump `NFT_MSG_*` `msg` objects of `family` (the request's attributes written by
    /// `filter`, e.g. a table name), handing each reply to `each` as it arrives (never
    /// holding the whole dump). An `Err` from `each` stops the dump with that message.
    /// A table or set that does not exist is `Ok(false)`. A reply marked `NLM_F_DUMP_INTR`
    /// (the ruleset changed during the dump) ends it with [`NfnlError::Interrupted`] once
    /// the dump is drained, and is remembered for [`Self::settled`].
    pub fn dump(
        &mut self,
        msg: u8,
        family: u8,
        filter: impl FnOnce(&mut MsgBuf),
        mut each: impl FnMut(Reply<'_>) -> Result<(), String>,
    ) -> Result<Result<bool, String>, NfnlError> {
        let seq = self.request(msg, NLM_F_DUMP, family, filter)?;
        let mut verdict: Result<bool, String> = Ok(true);
        let mut io: Option<NfnlError> = None;
        let mut intr = false;
        loop {
            let done = self.read(|kind, flags, s, body| {
                if s != seq {
                    return false;
                }
                if flags & NLM_F_DUMP_INTR != 0 && kind != NLMSG_ERROR {
                    intr = true;
                }
                match kind {
                    NLMSG_DONE => true,
                    NLMSG_ERROR => {
                        let errno = body
                            .get(..4)
                            .map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                        if -errno == libc::ENOENT {
                            if verdict.is_ok() {
                                verdict = Ok(false);
                            }
                        } else if errno != 0 && io.is_none() {
                            io = Some(NfnlError::Io(std::io::Error::from_raw_os_error(-errno)));
                        }
                        true
                    }
                    _ if kind >> 8 == NFNL_SUBSYS_NFTABLES && body.len() >= 4 => {
                        if verdict.is_ok()
                            && !intr
                            && let Err(why) = each(Reply {
                                msg: (kind & 0xff) as u8,
                                family: body[0],
                                body: &body[4..],
                            })
                        {
                            verdict = Err(why);
                        }
                        false
                    }
                    _ => false,
                }
            })?;
            if done {
                break;
            }
        }
        if intr {
            self.interrupted = true;
            return Err(NfnlError::Interrupted);
        }
        match io {
            Some(e) => Err(e),
            None => Ok(verdict),
        }
    }

    /// The ruleset's generation (`NFT_MSG_GETGEN`): the kernel counts every committed
    /// transaction of this network namespace, so two equal answers mean nothing was
    /// committed between them.
    pub fn generation(&mut self) -> Result<u32, NfnlError> {
        let seq = self.request(NFT_MSG_GETGEN, 0, 0, |_| {})?;
        let mut gen_id: Option<Result<u32, NfnlError>> = None;
        loop {
            let done = self.read(|kind, _, s, body| {
                if s != seq {
                    return false;
                }
                if kind == NLMSG_ERROR {
                    let errno = body
                        .get(..4)
                        .map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                    gen_id = Some(Err(NfnlError::Io(std::io::Error::from_raw_os_error(
                        -errno,
                    ))));
                    return true;
                }
                let id = body
                    .get(4..)
                    .and_then(|a| attrs(a).find(|(t, v)| *t == NFTA_GEN_ID && v.len() == 4))
                    .map(|(_, v)| u32::from_be_bytes([v[0], v[1], v[2], v[3]]));
                gen_id = Some(id.ok_or_else(|| {
                    NfnlError::Malformed("a generation reply without NFTA_GEN_ID".into())
                }));
                true
            })?;
            if done {
                break;
            }
        }
        gen_id.unwrap_or_else(|| Err(NfnlError::Malformed("no generation reply".into())))
    }

    /// Run the read `f` once between two generation requests: `Some` of its result when
    /// no transaction was committed meanwhile and no dump in it was interrupted (what it
    /// read is one state of the ruleset), `None` when it must be read again.
    pub fn settled<T>(&mut self, f: impl FnOnce(&mut Self) -> T) -> Result<Option<T>, NfnlError> {
        let before = self.generation()?;
        self.interrupted = false;
        let r = f(self);
        let after = self.generation()?;
        let intr = std::mem::take(&mut self.interrupted);
        Ok((before == after && !intr).then_some(r))
    }

    /// [`Self::settled`], tried up to [`READ_TRIES`] times; [`NfnlError::Unsettled`] when
    /// the ruleset changed during every try (nothing read is returned then).
    pub fn consistent<T>(&mut self, mut f: impl FnMut(&mut Self) -> T) -> Result<T, NfnlError> {
        for _ in 0..READ_TRIES {
            if let Some(r) = self.settled(&mut f)? {
                return Ok(r);
            }
        }
        Err(NfnlError::Unsettled { tries: READ_TRIES })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: a nest longer than 64 KiB (an inline set of some 4,096 ports) wrapped its
    /// 16-bit length, and the kernel read the rest of the nest as other attributes, refusing
    /// every replacement. Such a batch is now refused before it is sent, saying why.
    #[test]
    fn an_attribute_longer_than_netlink_allows_is_never_sent() {
        let mut b = Batch::new();
        b.begin(0, 0, 1, "a long message");
        let at = b.nest_begin(1);
        for _ in 0..5000 {
            b.put(1, &[0u8; 16]);
        }
        b.nest_end(at);
        assert!(b.out.overflow);
        let mut short = Batch::new();
        short.begin(0, 0, 1, "a short one");
        short.put(1, &[0u8; 16]);
        assert!(!short.out.overflow);
    }

    /// One netlink attribute: length (header + value, unpadded), type, value, padding to 4.
    fn attr(kind: u16, value: &[u8]) -> Vec<u8> {
        let len = u16::try_from(4 + value.len()).expect("short");
        let mut a = len.to_ne_bytes().to_vec();
        a.extend((kind | 0x8000).to_ne_bytes());
        a.extend(value);
        a.resize((a.len() + 3) & !3, 0);
        a
    }

    #[test]
    fn attributes_walk_padding_flags_and_stop_at_a_malformed_one() {
        let mut body = attr(1, b"abc");
        body.extend(attr(2, b"wxyz"));
        body.extend(attr(3, b""));
        let got: Vec<(u16, &[u8])> = attrs(&body).collect();
        assert_eq!(got, [(1, &b"abc"[..]), (2, b"wxyz"), (3, b"")]);
        let raw: Vec<usize> = raw_attrs(&body).map(|(_, r)| r.len()).collect();
        assert_eq!(raw, [8, 8, 4]);
        // A length past the end, or shorter than the header, ends the walk.
        let mut bad = attr(1, b"ok");
        bad.extend([0xff, 0x00, 0x02, 0x00, 0x01]);
        assert_eq!(attrs(&bad).count(), 1);
        let mut short = attr(1, b"ok");
        short.extend([0x02, 0x00, 0x02, 0x00]);
        assert_eq!(attrs(&short).count(), 1);
    }
}
