//! Fault injection: taking the server down, cutting watch streams, compaction, latency,
//! and the listener whose connections the control API can kill.
//!
//! Owns: the fault switches of [`ApiServer`] (`set_down`, `drop_watches`, `compact`,
//! `set_latency`) and [`KillableListener`] / `KillableConn`, which fail every read and
//! write once the server's kill epoch moves.
//!
//! Must not: decide what a request answers (`http` checks `down` and sleeps the latency)
//! or how a watch ends (`watch` listens to the cut and kill signals).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use super::{ApiServer, Shared};

impl ApiServer {
    /// While down, new connections are closed as soon as they are accepted and requests
    /// that still arrive get 503. Going down also closes every open connection (watch
    /// streams are cut without their final chunk).
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
        if down {
            self.shared.kill.send_modify(|e| *e += 1);
        }
    }

    /// Whether [`Self::set_down`] is in force.
    pub fn is_down(&self) -> bool {
        self.shared.down.load(Ordering::SeqCst)
    }

    /// Cuts every open watch stream mid-way (the connection is aborted, no final chunk),
    /// as a load balancer or apiserver restart would.
    pub fn drop_watches(&self) {
        self.shared.cut.send_modify(|e| *e += 1);
    }

    /// Forgets all history, as etcd compaction does: a watch (new or resuming) from any
    /// resourceVersion issued before this call gets `410 Expired`, and continue tokens of
    /// lists in progress stop working. Watches already streaming and caught up go on.
    pub fn compact(&self) {
        let rv = {
            let mut st = self.shared.state();
            // A tick of the clock, so the next list's RV is the first one still valid.
            st.rv += 1;
            st.floor = st.rv;
            for k in &mut st.kinds {
                if let Some(last) = k.history.back() {
                    k.evicted_upto = k.evicted_upto.max(last.rv);
                }
                k.history.clear();
            }
            st.snapshots.clear();
            st.rv
        };
        self.shared.notify(rv);
    }

    /// Delays every response by `delay` (zero turns it off).
    pub fn set_latency(&self, delay: Duration) {
        self.shared
            .latency_us
            .store(delay.as_micros() as u64, Ordering::SeqCst);
    }
}

pub(super) struct KillableListener {
    pub(super) inner: TcpListener,
    pub(super) shared: Arc<Shared>,
}

impl axum::serve::Listener for KillableListener {
    type Io = KillableConn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    if self.shared.down.load(Ordering::SeqCst) {
                        drop(stream);
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    let mut rx = self.shared.kill.subscribe();
                    let killed = Box::pin(async move {
                        let _ = rx.changed().await;
                    });
                    return (
                        KillableConn {
                            inner: stream,
                            killed_fut: killed,
                            killed: false,
                        },
                        addr,
                    );
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A TCP connection that fails every read and write once the server's kill epoch moves.
pub(super) struct KillableConn {
    inner: TcpStream,
    killed_fut: Pin<Box<dyn Future<Output = ()> + Send>>,
    killed: bool,
}

impl KillableConn {
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if !self.killed && self.killed_fut.as_mut().poll(cx).is_ready() {
            self.killed = true;
        }
        if self.killed {
            Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "connection killed by the API server stand-in",
            ))
        } else {
            Ok(())
        }
    }
}

impl AsyncRead for KillableConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Err(e) = this.check(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for KillableConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Err(e) = this.check(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Err(e) = this.check(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
