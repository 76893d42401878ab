//! Link state from rtnetlink: a dump at start, then the kernel's link notifications.
//! trustd's rules match tunnel interfaces by name, so enforcement never waits on this; it
//! feeds what trustd reports (`vpn-required: tunnel down, blocking`) and audits.
//!
//! Watching never ends silently: when the socket overruns (`ENOBUFS`: the kernel dropped
//! notifications) or any receive fails, [`LinkWatcher::run`] subscribes again, then reads
//! the full link list, and hands it on as a [`LinkUpdate::Resync`] saying what was lost.

use std::time::Duration;

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use nix::sys::socket::{setsockopt, sockopt};

/// A link's state as the kernel reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkState {
    /// Interface name.
    pub name: String,
    /// Administratively up and running (carrier).
    pub up: bool,
}

/// A change the kernel reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// A link exists in this state (new or changed).
    Present(LinkState),
    /// A link was removed.
    Removed(String),
}

/// The link multicast group (RTMGRP_LINK).
const RTMGRP_LINK: u32 = 1;

/// The receive buffer asked for (`SO_RCVBUFFORCE`, else `SO_RCVBUF` as the limit allows):
/// room for a few thousand link notifications between two reads.
const RCVBUF: usize = 4 << 20;

/// What the link watcher hands on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkUpdate {
    /// Changes the kernel reported, in order.
    Events(Vec<LinkEvent>),
    /// Notifications were lost (or the socket failed): the watcher subscribed again and
    /// read every link; `links` replaces what was known.
    Resync {
        /// Every link now.
        links: Vec<LinkState>,
        /// What happened: `receive buffer overrun (ENOBUFS): link notifications were
        /// dropped by the kernel`, or the receive error.
        why: String,
        /// When the loss was noticed (RFC 3339 UTC).
        at: String,
    },
}

fn state_of(m: &LinkMessage) -> Option<LinkState> {
    let name = m.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })?;
    let f = m.header.flags;
    Some(LinkState {
        name,
        up: f.contains(LinkFlags::Up) && f.contains(LinkFlags::Running),
    })
}

/// Every message in one netlink datagram, as link events; `true` once the dump is done.
fn parse(buf: &[u8], out: &mut Vec<LinkEvent>) -> bool {
    let mut off = 0;
    while off < buf.len() {
        let Ok(msg) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[off..]) else {
            return true;
        };
        let len = msg.header.length as usize;
        match msg.payload {
            NetlinkPayload::Done(_) | NetlinkPayload::Error(_) => return true,
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(m)) => {
                out.extend(state_of(&m).map(LinkEvent::Present));
            }
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(m)) => {
                out.extend(state_of(&m).map(|s| LinkEvent::Removed(s.name)));
            }
            _ => {}
        }
        if len == 0 {
            break;
        }
        off += (len + 3) & !3;
    }
    false
}

/// Every link now.
pub fn dump_links() -> std::io::Result<Vec<LinkState>> {
    let mut sock = Socket::new(NETLINK_ROUTE)?;
    sock.bind_auto()?;
    sock.connect(&SocketAddr::new(0, 0))?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut msg = NetlinkMessage::new(
        header,
        NetlinkPayload::from(RouteNetlinkMessage::GetLink(LinkMessage::default())),
    );
    msg.finalize();
    let mut buf = vec![0u8; msg.buffer_len()];
    msg.serialize(&mut buf);
    sock.send(&buf, 0)?;
    let mut events = Vec::new();
    loop {
        let (data, from) = sock.recv_from_full()?;
        if from.port_number() != 0 {
            // Not the kernel (see `LinkWatcher::next`).
            continue;
        }
        if data.is_empty() || parse(&data, &mut events) {
            break;
        }
    }
    Ok(events
        .into_iter()
        .filter_map(|e| match e {
            LinkEvent::Present(s) => Some(s),
            LinkEvent::Removed(_) => None,
        })
        .collect())
}

/// A subscription to link changes.
#[derive(Debug)]
pub struct LinkWatcher {
    sock: Socket,
    rcvbuf: usize,
}

impl LinkWatcher {
    /// Subscribe, with a receive buffer of 4 MiB (as far as the kernel allows).
    pub fn open() -> std::io::Result<Self> {
        Self::with_receive_buffer(RCVBUF)
    }

    /// Subscribe with a receive buffer of `bytes` (the kernel doubles it and enforces a
    /// minimum); a small one overruns sooner, which is how the resync is tested.
    pub fn with_receive_buffer(bytes: usize) -> std::io::Result<Self> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind(&SocketAddr::new(0, RTMGRP_LINK))?;
        let size = bytes.min(libc::c_int::MAX as usize);
        // SO_RCVBUFFORCE (above the system's maximum, with CAP_NET_ADMIN), else SO_RCVBUF.
        if setsockopt(&sock, sockopt::RcvBufForce, &size).is_err() {
            let _ = setsockopt(&sock, sockopt::RcvBuf, &size);
        }
        Ok(Self {
            sock,
            rcvbuf: bytes,
        })
    }

    /// Block until the kernel reports changes; return them. `ENOBUFS` means notifications
    /// were dropped (the socket overran): the links must be read again.
    pub fn next(&self) -> std::io::Result<Vec<LinkEvent>> {
        let (data, from) = self.sock.recv_from_full()?;
        let mut events = Vec::new();
        // Only the kernel's messages (source port id 0): a process with CAP_NET_ADMIN may
        // send to this socket or to the link group.
        if from.port_number() == 0 {
            parse(&data, &mut events);
        }
        Ok(events)
    }

    /// Hand every change to `send` until it returns false (the receiver is gone). On an
    /// overrun or any receive error: subscribe again (retrying, 100 ms to 5 s apart, until
    /// it works), read every link, and hand on a [`LinkUpdate::Resync`]; subscribing before
    /// the dump means no change after it goes unseen. Never returns because of an error.
    pub fn run(self, send: impl FnMut(LinkUpdate) -> bool) {
        self.run_with(send, |w| w.next(), dump_links);
    }

    /// [`Self::run`] with the receive and the dump given (the seam its tests use to inject
    /// failures).
    pub fn run_with(
        mut self,
        mut send: impl FnMut(LinkUpdate) -> bool,
        mut receive: impl FnMut(&Self) -> std::io::Result<Vec<LinkEvent>>,
        mut dump: impl FnMut() -> std::io::Result<Vec<LinkState>>,
    ) {
        loop {
            let err = match receive(&self) {
                Ok(events) => {
                    if !events.is_empty() && !send(LinkUpdate::Events(events)) {
                        return;
                    }
                    continue;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => e,
            };
            let at = crate::timefmt::Timestamp::now().to_string();
            let why = if err.raw_os_error() == Some(libc::ENOBUFS) {
                "receive buffer overrun (ENOBUFS): link notifications were dropped by the kernel"
                    .to_owned()
            } else {
                format!("receiving link notifications failed: {err}")
            };
            tracing::warn!("{why}; subscribing again and reading every link");
            let mut pause = Duration::from_millis(100);
            let links = loop {
                match Self::with_receive_buffer(self.rcvbuf).and_then(|w| Ok((w, dump()?))) {
                    Ok((w, links)) => {
                        self = w;
                        break links;
                    }
                    Err(e) => {
                        tracing::error!("link watcher: resubscribing failed: {e}; retrying");
                        std::thread::sleep(pause);
                        pause = (pause * 2).min(Duration::from_secs(5));
                    }
                }
            };
            if !send(LinkUpdate::Resync { links, why, at }) {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_receive_error_resubscribes_and_resyncs_instead_of_ending() {
        let Ok(w) = LinkWatcher::with_receive_buffer(4096) else {
            // No netlink in this sandbox: nothing to watch.
            return;
        };
        let mut calls = 0;
        let mut got = Vec::new();
        w.run_with(
            |u| {
                got.push(u);
                got.len() < 3
            },
            |_| {
                calls += 1;
                match calls {
                    1 => Err(std::io::Error::from_raw_os_error(libc::ENOBUFS)),
                    2 => Ok(vec![LinkEvent::Removed("x0".into())]),
                    _ => Err(std::io::Error::from_raw_os_error(libc::EIO)),
                }
            },
            || {
                Ok(vec![LinkState {
                    name: "lo".into(),
                    up: true,
                }])
            },
        );
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(
            matches!(&got[0], LinkUpdate::Resync { why, links, .. } if why.contains("ENOBUFS") && links.len() == 1),
            "{got:?}"
        );
        assert_eq!(
            got[1],
            LinkUpdate::Events(vec![LinkEvent::Removed("x0".into())])
        );
        assert!(
            matches!(&got[2], LinkUpdate::Resync { why, .. } if why.contains("receiving link notifications failed")),
            "{got:?}"
        );
    }
}
