//! Network plumbing run inside the sandbox's fresh network namespace, before the server is
//! exec'd: bring `lo` up, optionally route every destination to `lo` (transparent capture), and
//! create the listening sockets the supervisor's egress proxies serve. The sockets keep the
//! namespace they were created in, so the supervisor can accept sandbox connections without any
//! helper process inside.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;

/// What the sandbox's network looks like.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressNet {
    /// Sockets to create inside the namespace, returned in this order.
    pub listeners: Vec<ListenerRequest>,
    /// Add `local 0.0.0.0/0` and `local ::/0` routes on `lo` so connections to any address land on
    /// the wildcard capture listeners.
    pub capture_routes: bool,
}

/// One socket to create inside the namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerRequest {
    pub addr: SocketAddr,
    pub proto: Proto,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// A listening TCP socket (non-blocking, close-on-exec).
    Tcp,
    /// A bound UDP socket (non-blocking, close-on-exec).
    Udp,
}

/// Must run in a process (or thread) that is inside the target network namespace and holds
/// CAP_NET_ADMIN and CAP_NET_BIND_SERVICE there. Returns the sockets in request order.
pub fn setup_in_netns(mode: &NetMode) -> std::io::Result<Vec<OwnedFd>> {
    match mode {
        NetMode::Host => Ok(Vec::new()),
        NetMode::None | NetMode::Egress(_) => Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "network namespace setup is not implemented yet",
        )),
    }
}
