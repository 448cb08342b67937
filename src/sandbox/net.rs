//! Network plumbing run inside the sandbox's fresh network namespace, before the server is
//! exec'd: bring `lo` up, optionally route every destination to `lo` (transparent capture), and
//! create the listening sockets the supervisor's egress proxies serve. The sockets keep the
//! namespace they were created in, so the supervisor can accept sandbox connections without any
//! helper process inside.
//!
//! Split in two so it is safe in a child forked from a multi-threaded process: [`NetPlan::new`]
//! (in the parent: serializes the netlink requests with `netlink-packet-route` and reserves every
//! buffer) and [`NetPlan::apply`] (in the child: only system calls, no heap allocation, no
//! locks). [`setup_in_netns`] does both for callers that are not in a forked child. This file must
//! not decide policy or know about egress rules; it creates what it is asked for.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use netlink_packet_core::ErrorBuffer;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, NLMSG_ERROR, NetlinkBuffer, NetlinkMessage,
};
use netlink_packet_route::link::{LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily as NlFamily, RouteNetlinkMessage};
use nix::sys::socket::{
    AddressFamily, Backlog, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, SockaddrIn,
    SockaddrIn6, bind, listen, recv, sendto, setsockopt, socket, sockopt,
};

/// What the sandbox's network looks like.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum NetMode {
    /// Fresh, empty network namespace with only `lo` (up). The default.
    #[default]
    None,
    /// Share the supervisor's network namespace (explicit, loudly logged opt-in).
    Host,
    /// Fresh namespace with supervisor-owned listeners (egress control).
    Egress(EgressNet),
}

/// Listeners and routing for egress control.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EgressNet {
    /// Sockets to create inside the namespace, returned in this order.
    pub listeners: Vec<ListenerRequest>,
    /// Add `local 0.0.0.0/0` and `local ::/0` routes on `lo` (table `local`, as `ip route add
    /// local 0.0.0.0/0 dev lo` does) so connections to any address land on the wildcard capture
    /// listeners. The IPv6 route is skipped when the kernel has no IPv6 (`EAFNOSUPPORT`): then no
    /// IPv6 destination is reachable at all.
    pub capture_routes: bool,
}

/// One socket to create inside the namespace.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ListenerRequest {
    /// Where to bind. IPv6 sockets are always `IPV6_V6ONLY`, so `0.0.0.0:p` and `[::]:p` can
    /// both be requested.
    pub addr: SocketAddr,
    pub proto: Proto,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Proto {
    /// A listening TCP socket (non-blocking, close-on-exec, `SO_REUSEADDR`, backlog 1024).
    Tcp,
    /// A bound UDP socket (non-blocking, close-on-exec).
    Udp,
}

/// Backlog of every listening socket: connections made before the supervisor starts accepting
/// wait here.
const BACKLOG: i32 = 1024;
/// Interface index of `lo` in every network namespace (the kernel's `LOOPBACK_IFINDEX`).
const LOOPBACK_IFINDEX: u32 = 1;
/// The kernel's `local` routing table (`RT_TABLE_LOCAL`).
const RT_TABLE_LOCAL: u8 = 255;
/// Acks are small (an error header plus the echoed request); a stack buffer of this size holds
/// one with room to spare.
const ACK_BUF: usize = 1024;

/// Everything needed to set up the namespace, prepared so that [`NetPlan::apply`] performs no
/// heap allocation.
#[derive(Debug)]
pub struct NetPlan {
    host: bool,
    /// Serialized netlink requests: link up, then optionally the IPv4 and IPv6 capture routes.
    link_up: Vec<u8>,
    route_v4: Option<Vec<u8>>,
    route_v6: Option<Vec<u8>>,
    listeners: Vec<ListenerRequest>,
    /// Capacity reserved for every listener, so pushing never reallocates.
    fds: Vec<OwnedFd>,
}

impl NetPlan {
    /// Prepares the setup for `mode`. Allocates; call it before forking.
    pub fn new(mode: &NetMode) -> io::Result<NetPlan> {
        let (listeners, capture) = match mode {
            NetMode::Host => {
                return Ok(NetPlan {
                    host: true,
                    link_up: Vec::new(),
                    route_v4: None,
                    route_v6: None,
                    listeners: Vec::new(),
                    fds: Vec::new(),
                });
            }
            NetMode::None => (Vec::new(), false),
            NetMode::Egress(e) => (e.listeners.clone(), e.capture_routes),
        };
        let fds = Vec::with_capacity(listeners.len());
        Ok(NetPlan {
            host: false,
            link_up: link_up_request(1),
            route_v4: capture.then(|| local_default_route(NlFamily::Inet, 2)),
            route_v6: capture.then(|| local_default_route(NlFamily::Inet6, 3)),
            listeners,
            fds,
        })
    }

    /// Applies the plan in the current network namespace. Needs CAP_NET_ADMIN (and
    /// CAP_NET_BIND_SERVICE for ports below 1024) there. Performs only system calls: safe in a
    /// forked child of a multi-threaded process. Call it once.
    pub fn apply(&mut self) -> io::Result<()> {
        if self.host {
            return Ok(());
        }
        let nl = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkRoute,
        )?;
        netlink_call(&nl, &self.link_up, 1)?;
        if let Some(req) = &self.route_v4 {
            netlink_call(&nl, req, 2)?;
        }
        if let Some(req) = &self.route_v6 {
            match netlink_call(&nl, req, 3) {
                Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {}
                other => other?,
            }
        }
        drop(nl);
        for req in &self.listeners {
            if self.fds.len() == self.fds.capacity() {
                // Only reachable if apply() is called twice; refuse rather than reallocate.
                return Err(io::Error::from(io::ErrorKind::AlreadyExists));
            }
            self.fds.push(make_socket(req)?);
        }
        Ok(())
    }

    /// The sockets created by [`NetPlan::apply`], in request order.
    pub fn fds(&self) -> &[OwnedFd] {
        &self.fds
    }

    /// Takes the sockets out of the plan.
    pub fn into_fds(self) -> Vec<OwnedFd> {
        self.fds
    }
}

/// Must run in a process (or thread) that is inside the target network namespace and holds
/// CAP_NET_ADMIN and CAP_NET_BIND_SERVICE there. Returns the sockets in request order. Allocates:
/// in a child forked from a multi-threaded process, build a [`NetPlan`] before the fork and call
/// [`NetPlan::apply`] in the child instead.
pub fn setup_in_netns(mode: &NetMode) -> io::Result<Vec<OwnedFd>> {
    let mut plan = NetPlan::new(mode)?;
    plan.apply()?;
    Ok(plan.into_fds())
}

fn serialize(mut msg: NetlinkMessage<RouteNetlinkMessage>, flags: u16, seq: u32) -> Vec<u8> {
    msg.header.flags = flags;
    msg.header.sequence_number = seq;
    msg.finalize();
    let mut buf = vec![0u8; msg.buffer_len()];
    msg.serialize(&mut buf);
    buf
}

/// `ip link set lo up`.
fn link_up_request(seq: u32) -> Vec<u8> {
    let mut link = LinkMessage::default();
    link.header.index = LOOPBACK_IFINDEX;
    link.header.flags = LinkFlags::Up;
    link.header.change_mask = LinkFlags::Up;
    serialize(
        NetlinkMessage::from(RouteNetlinkMessage::NewLink(link)),
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
    )
}

/// `ip route add local 0.0.0.0/0 dev lo` (or `::/0`): table local, scope host, type local.
fn local_default_route(family: NlFamily, seq: u32) -> Vec<u8> {
    let mut route = RouteMessage::default();
    route.header.address_family = family;
    route.header.destination_prefix_length = 0;
    route.header.table = RT_TABLE_LOCAL;
    route.header.protocol = RouteProtocol::Boot;
    route.header.scope = RouteScope::Host;
    route.header.kind = RouteType::Local;
    route.attributes.push(RouteAttribute::Oif(LOOPBACK_IFINDEX));
    serialize(
        NetlinkMessage::from(RouteNetlinkMessage::NewRoute(route)),
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        seq,
    )
}

/// Sends one request to the kernel and waits for its ack; a negative ack becomes the errno.
fn netlink_call(nl: &OwnedFd, req: &[u8], seq: u32) -> io::Result<()> {
    let kernel = NetlinkAddr::new(0, 0);
    let sent = sendto(nl.as_raw_fd(), req, &kernel, MsgFlags::empty())?;
    if sent != req.len() {
        return Err(io::Error::from(io::ErrorKind::WriteZero));
    }
    let mut buf = [0u8; ACK_BUF];
    // The kernel answers each NLM_F_ACK request with exactly one NLMSG_ERROR; skip anything else
    // (there is nothing else on a fresh, unsubscribed socket), but not forever.
    for _ in 0..16 {
        let n = recv(nl.as_raw_fd(), &mut buf, MsgFlags::empty())?;
        let mut off = 0;
        while off < n {
            let msg = NetlinkBuffer::new_checked(&buf[off..n])
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
            let len = msg.length() as usize;
            if msg.message_type() == NLMSG_ERROR && msg.sequence_number() == seq {
                let err = ErrorBuffer::new_checked(msg.payload())
                    .map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
                return match err.code() {
                    None => Ok(()),
                    Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                };
            }
            // Messages are 4-byte aligned.
            off += (len + 3) & !3;
            if len == 0 {
                break;
            }
        }
    }
    Err(io::Error::from(io::ErrorKind::TimedOut))
}

fn make_socket(req: &ListenerRequest) -> io::Result<OwnedFd> {
    let family = match req.addr {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let ty = match req.proto {
        Proto::Tcp => SockType::Stream,
        Proto::Udp => SockType::Datagram,
    };
    let fd = socket(
        family,
        ty,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    if req.proto == Proto::Tcp {
        setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    }
    match req.addr {
        SocketAddr::V4(a) => bind(fd.as_fd().as_raw_fd(), &SockaddrIn::from(a))?,
        SocketAddr::V6(a) => {
            setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
            bind(fd.as_fd().as_raw_fd(), &SockaddrIn6::from(a))?
        }
    }
    if req.proto == Proto::Tcp {
        listen(&fd, Backlog::new(BACKLOG).map_err(io::Error::from)?)?;
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sched::{CloneFlags, unshare};
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream, UdpSocket};

    /// Runs `f` on a fresh thread moved into a new network namespace; `None` (with the reason
    /// printed) when the test cannot create namespaces here.
    fn in_new_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        std::thread::spawn(move || match unshare(CloneFlags::CLONE_NEWNET) {
            Ok(()) => Some(f()),
            Err(e) => {
                eprintln!("skipped: cannot unshare a network namespace here: {e}");
                None
            }
        })
        .join()
        .unwrap()
    }

    fn req(addr: &str, proto: Proto) -> ListenerRequest {
        ListenerRequest {
            addr: addr.parse().unwrap(),
            proto,
        }
    }

    #[test]
    fn none_brings_lo_up_and_nothing_else() {
        let Some(()) = in_new_netns(|| {
            assert!(setup_in_netns(&NetMode::None).unwrap().is_empty());
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let e = TcpStream::connect("203.0.113.9:443").unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::ENETUNREACH), "{e}");
        }) else {
            return;
        };
    }

    #[test]
    fn egress_captures_any_destination_on_wildcard_listeners() {
        let Some(()) = in_new_netns(|| {
            let mode = NetMode::Egress(EgressNet {
                listeners: vec![
                    req("127.0.0.1:3128", Proto::Tcp),
                    req("127.0.0.1:53", Proto::Udp),
                    req("0.0.0.0:443", Proto::Tcp),
                    req("[::]:443", Proto::Tcp),
                ],
                capture_routes: true,
            });
            let fds = setup_in_netns(&mode).unwrap();
            assert_eq!(fds.len(), 4);
            let mut fds = fds.into_iter();
            let proxy = TcpListener::from(fds.next().unwrap());
            let dns = UdpSocket::from(fds.next().unwrap());
            let cap4 = TcpListener::from(fds.next().unwrap());
            let cap6 = TcpListener::from(fds.next().unwrap());
            for l in [&proxy, &cap4, &cap6] {
                l.set_nonblocking(false).unwrap();
            }
            dns.set_nonblocking(false).unwrap();

            TcpStream::connect("127.0.0.1:3128").unwrap();
            assert_eq!(proxy.accept().unwrap().1.ip().to_string(), "127.0.0.1");

            for (dst, l) in [("203.0.113.9:443", &cap4), ("[2001:db8::7]:443", &cap6)] {
                let mut c = TcpStream::connect(dst).unwrap();
                let (mut s, _) = l.accept().unwrap();
                assert_eq!(s.local_addr().unwrap(), dst.parse().unwrap());
                c.write_all(b"x").unwrap();
                let mut b = [0u8; 1];
                s.read_exact(&mut b).unwrap();
            }
            // Nothing listens on other ports: refused, not routed anywhere.
            let e = TcpStream::connect("203.0.113.9:8080").unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::ECONNREFUSED), "{e}");

            let u = UdpSocket::bind("127.0.0.1:0").unwrap();
            u.send_to(b"q", "127.0.0.1:53").unwrap();
            let mut b = [0u8; 4];
            assert_eq!(dns.recv_from(&mut b).unwrap().0, 1);
        }) else {
            return;
        };
    }

    #[test]
    fn sockets_are_nonblocking_and_cloexec() {
        let Some(()) = in_new_netns(|| {
            let mode = NetMode::Egress(EgressNet {
                listeners: vec![
                    req("127.0.0.1:0", Proto::Tcp),
                    req("127.0.0.1:0", Proto::Udp),
                ],
                capture_routes: false,
            });
            for fd in setup_in_netns(&mode).unwrap() {
                let fl = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_GETFL).unwrap();
                assert_ne!(fl & libc::O_NONBLOCK, 0);
                let fd_fl = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_GETFD).unwrap();
                assert_ne!(fd_fl & libc::FD_CLOEXEC, 0);
            }
        }) else {
            return;
        };
    }

    #[test]
    fn bind_conflicts_are_reported() {
        let Some(()) = in_new_netns(|| {
            let mode = NetMode::Egress(EgressNet {
                listeners: vec![
                    req("127.0.0.1:80", Proto::Tcp),
                    req("0.0.0.0:80", Proto::Tcp),
                ],
                capture_routes: false,
            });
            let e = setup_in_netns(&mode).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EADDRINUSE), "{e}");
        }) else {
            return;
        };
    }

    #[test]
    fn host_mode_touches_nothing() {
        assert!(setup_in_netns(&NetMode::Host).unwrap().is_empty());
    }

    #[test]
    fn requests_are_well_formed_netlink() {
        let up = link_up_request(1);
        let parsed =
            NetlinkMessage::<RouteNetlinkMessage>::deserialize(&up).expect("link request parses");
        assert!(matches!(
            parsed.payload,
            netlink_packet_core::NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(_))
        ));
        let r = local_default_route(NlFamily::Inet6, 3);
        let parsed = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&r).unwrap();
        assert_eq!(parsed.header.sequence_number, 3);
    }
}
