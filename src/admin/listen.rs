//! Listening and serving, as every admin server does it: sockets bound the way Go's
//! `net.Listen` binds them, a router served until a stop signal with graceful shutdown.
//!
//! Owns: the socket options of every port kproxy listens on and the serve loop. Used by
//! [`super::server`] (the fixed health and metrics ports) and [`super::healthcheck`] (the
//! health-check NodePorts); it uses neither.
//!
//! Must not: know any route or response.

use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use axum::Router;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Resolves when `stop` says so or its sender is gone.
pub(super) async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

pub(super) fn context(e: io::Error, what: &str, addr: SocketAddr) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: cannot listen on {addr}: {e}"))
}

/// A listening TCP socket as Go's `net.Listen` makes it: `SO_REUSEADDR` (a restarted
/// kproxy rebinds at once), and dual-stack when the address is IPv6. Needs a runtime.
pub(super) fn listen(addr: SocketAddr) -> io::Result<tokio::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    tokio::net::TcpListener::from_std(socket.into())
}

/// Listens on `port` of every address: `[::]` dual-stack, or `0.0.0.0` when the host has
/// no IPv6.
pub(super) fn listen_any(port: u16) -> io::Result<tokio::net::TcpListener> {
    match listen(SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port)) {
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EAFNOSUPPORT) | Some(libc::EADDRNOTAVAIL)
            ) =>
        {
            listen(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port))
        }
        r => r,
    }
}

/// Serves `router` on `listener` until `stop`, then drops the listener (the port is
/// released) and waits for the open connections to finish.
pub(super) fn serve(
    what: &'static str,
    listener: tokio::net::TcpListener,
    router: Router,
    stop: impl Future<Output = ()> + Send + 'static,
) -> JoinHandle<()> {
    let addr = listener.local_addr().ok();
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::error!(server = what, addr = ?addr, error = %e, "admin server failed");
        }
    })
}
