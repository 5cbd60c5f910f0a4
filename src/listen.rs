//! Listening sockets, made the same way for every front: IPv6 sockets are v6-only (so `[::]:53` and
//! `0.0.0.0:53` can both be bound), addresses are reusable across restarts, backlogs are deep, and UDP
//! sockets may share a port (`SO_REUSEPORT`) so each worker gets its own. An address no interface has yet
//! (a DHCP lease that arrives after the service started) is bound anyway (`IP_FREEBIND`), with a warning:
//! failing would leave the unit to systemd's restart limit and the node without DNS. Errors stay
//! `io::Error`; the caller names the listener and adds a hint.

use socket2::{Domain, Socket, Type};
use std::net::SocketAddr;

const BACKLOG: i32 = 1024;

/// A bound, listening, non-blocking TCP socket (accepted sockets inherit TCP_NODELAY).
pub fn tcp(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    bind(&socket, addr)?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// A bound, non-blocking UDP socket with a large receive buffer for bursts.
pub fn udp(addr: SocketAddr, reuse_port: bool) -> std::io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, None)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_port(reuse_port)?;
    socket.set_nonblocking(true)?;
    let _ = socket.set_recv_buffer_size(4 << 20);
    bind(&socket, addr)?;
    Ok(socket.into())
}

/// Binds; an address not (yet) on any interface is bound with `IP_FREEBIND` and a warning.
fn bind(socket: &Socket, addr: SocketAddr) -> std::io::Result<()> {
    match socket.bind(&addr.into()) {
        Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => {
            if addr.is_ipv6() {
                socket.set_freebind_v6(true)?;
            } else {
                socket.set_freebind_v4(true)?;
            }
            socket.bind(&addr.into())?;
            tracing::warn!(
                %addr,
                "no interface has this address yet: listening anyway (IP_FREEBIND); it answers once the address is configured"
            );
            Ok(())
        }
        other => other,
    }
}

/// Why a bind most likely failed, in the operator's terms.
pub fn hint(e: &std::io::Error, port_hint: &'static str) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied => port_hint,
        std::io::ErrorKind::AddrInUse => " (another process holds this address)",
        _ => "",
    }
}
