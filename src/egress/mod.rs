//! Egress control (AIP Appendix D.1 `spec.egress`): DNS stub, HTTP and SOCKS5 proxies and
//! transparent capture listeners living inside the sandbox's network namespace but served by the
//! supervisor, with host-side resolution, address pinning and per-connection audit.
