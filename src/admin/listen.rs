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
use std::net::SocketAddr;

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
    open(addr, false).map_err(|(_, e)| e)
}

/// A listening TCP socket as Go's `net.Listen("tcp4" | "tcp6", addr)` makes it (IPv6
/// v6-only: `[::]` does not take IPv4), failing with Go's wording, which upstream puts in
/// its Events: `listen tcp4 0.0.0.0:32000: bind: address already in use`. Needs a
/// runtime.
pub(super) fn listen_family(addr: SocketAddr) -> io::Result<tokio::net::TcpListener> {
    let network = if addr.is_ipv4() { "tcp4" } else { "tcp6" };
    open(addr, addr.is_ipv6()).map_err(|(call, e)| {
        let text = e.to_string();
        // Rust says "Address already in use (os error 98)"; Go "address already in use".
        let text = text.rfind(" (os error ").map_or(&*text, |i| &text[..i]);
        let mut chars = text.chars();
        let text = chars
            .next()
            .map_or(String::new(), |c| c.to_lowercase().chain(chars).collect());
        io::Error::new(e.kind(), format!("listen {network} {addr}: {call}: {text}"))
    })
}

/// Socket, options, bind, listen; an error names the call that failed.
fn open(
    addr: SocketAddr,
    only_v6: bool,
) -> Result<tokio::net::TcpListener, (&'static str, io::Error)> {
    let at = |call: &'static str| move |e: io::Error| (call, e);
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(at("socket"))?;
    socket.set_reuse_address(true).map_err(at("setsockopt"))?;
    if addr.is_ipv6() {
        socket.set_only_v6(only_v6).map_err(at("setsockopt"))?;
    }
    socket.set_nonblocking(true).map_err(at("setsockopt"))?;
    socket.bind(&addr.into()).map_err(at("bind"))?;
    socket.listen(1024).map_err(at("listen"))?;
    tokio::net::TcpListener::from_std(socket.into()).map_err(at("listen"))
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
