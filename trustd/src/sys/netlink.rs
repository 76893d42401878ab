//! Link state from rtnetlink: a dump at start, then the kernel's link notifications.
//! trustd's rules match tunnel interfaces by name, so enforcement never waits on this; it
//! feeds what trustd reports (`vpn-required: tunnel down, blocking`) and audits.

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

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
        let (data, _) = sock.recv_from_full()?;
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
}

impl LinkWatcher {
    /// Subscribe.
    pub fn open() -> std::io::Result<Self> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind(&SocketAddr::new(0, RTMGRP_LINK))?;
        Ok(Self { sock })
    }

    /// Block until the kernel reports changes; return them.
    pub fn next(&self) -> std::io::Result<Vec<LinkEvent>> {
        let (data, _) = self.sock.recv_from_full()?;
        let mut events = Vec::new();
        parse(&data, &mut events);
        Ok(events)
    }
}
