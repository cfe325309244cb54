//! The API server client: which kubeconfig, and a `kube::Client` from it.
//!
//! Owns: finding the connection settings. In order:
//!
//! 1. an explicit kubeconfig (`--kubeconfig` / `clientConnection.kubeconfig`), its
//!    current context; an error in it is fatal (no fallback, as upstream);
//! 2. the in-cluster service account (`KUBERNETES_SERVICE_HOST` / `_PORT`, the token and
//!    CA under `/var/run/secrets/kubernetes.io/serviceaccount/`);
//! 3. `$KUBECONFIG`, else `~/.kube/config`.
//!
//! Upstream kube-proxy (`cmd/kube-proxy/app/server.go` `createClient`) does 1, else 2, and
//! fails when in-cluster configuration is missing; step 3 is kproxy's addition so that
//! `kproxy run` works from an operator's shell, and is only reached outside a cluster.
//! Upstream's `--master` override, `clientConnection.{qps,burst,contentType}` have no
//! counterpart: kube-rs speaks JSON and does not rate-limit.
//!
//! `http://` servers work: kube's rustls connector is built `https_or_http`
//! (`kube-client` `ConfigExt::rustls_https_connector_with_connector`), which the tests'
//! plain-HTTP API server stand-in relies on.
//!
//! Every connection to the API server has TCP keepalive and `TCP_USER_TIMEOUT` set
//! ([`build`]): a connection whose peer stops answering (a half-open connection: the
//! API server or a load balancer gone without a FIN or RST, packets silently dropped) is
//! closed by the kernel within [`DEAD_AFTER`] of the last byte received, and the watchers
//! reconnect; without this a dead watch is only noticed at kube-runtime's 295 s idle
//! timeout. Idle-but-healthy watches are untouched (the peer's kernel answers the probes).
//! The numbers and why: docs/daemon.md, "A dead connection to the API server".
//! [`is_dead_connection`] recognises the resulting error.
//!
//! The review commands (`kproxy render|trace|diff` without `-f`) use
//! [`load_config_with`] in kubectl's order instead: an explicit kubeconfig, else
//! `$KUBECONFIG` / `~/.kube/config`, else in-cluster; an explicit `--context` picks a
//! context other than the current one (and then no in-cluster fallback is tried).
//!
//! Must not: read objects (that is [`super::cache`] and [`super::list`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kube::client::retry::RetryPolicy;
use kube::client::ConfigExt;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use tower::retry::RetryLayer;
use tower::{BoxError, ServiceBuilder};

/// How long a connection to the API server may be silent before the kernel starts
/// probing it (`TCP_KEEPIDLE`).
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(15);
/// Between two unanswered probes (`TCP_KEEPINTVL`).
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// Unanswered probes before the connection is given up (`TCP_KEEPCNT`).
pub const KEEPALIVE_PROBES: u32 = 3;
/// A connection that has received nothing (no data, no ACK, no probe answer) for this
/// long is closed with `ETIMEDOUT`: `TCP_USER_TIMEOUT`, which also bounds how long sent
/// data may stay unacknowledged (a request written into a dead connection), where the
/// kernel's default retransmission schedule would take about 15 minutes. Equal to
/// `KEEPALIVE_IDLE + KEEPALIVE_PROBES × KEEPALIVE_INTERVAL`, so both rules agree.
pub const DEAD_AFTER: Duration = Duration::from_secs(30);

/// Why no client could be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("kubeconfig {}: {source}", path.display())]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error(
        "no API server configuration: not in a cluster ({in_cluster}) and no usable \
         $KUBECONFIG or ~/.kube/config ({kubeconfig}); pass --kubeconfig"
    )]
    NotFound {
        in_cluster: kube::config::InClusterError,
        kubeconfig: kube::config::KubeconfigError,
    },
    /// `--context` given, and `$KUBECONFIG` / `~/.kube/config` do not have it.
    #[error("--context: $KUBECONFIG or ~/.kube/config: {0}")]
    Context(#[source] kube::config::KubeconfigError),
    #[error("building the API client: {0}")]
    Build(#[source] kube::Error),
}

/// Where the configuration came from (for the startup log line).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigSource {
    Explicit(PathBuf),
    InCluster,
    Default,
}

/// Which comes first when no kubeconfig is given explicitly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// The daemon's: in-cluster, then `$KUBECONFIG` / `~/.kube/config`.
    InClusterFirst,
    /// kubectl's (the review commands'): `$KUBECONFIG` / `~/.kube/config`, then in-cluster.
    KubeconfigFirst,
}

/// The connection settings, in the order the module documentation gives.
pub async fn load_config(kubeconfig: Option<&Path>) -> Result<(Config, ConfigSource), ClientError> {
    load_config_with(kubeconfig, None, Order::InClusterFirst).await
}

/// The connection settings from `kubeconfig` (else the defaults, in `order`), using
/// `context` instead of the kubeconfig's current context when given.
pub async fn load_config_with(
    kubeconfig: Option<&Path>,
    context: Option<&str>,
    order: Order,
) -> Result<(Config, ConfigSource), ClientError> {
    let options = KubeConfigOptions {
        context: context.map(str::to_string),
        ..KubeConfigOptions::default()
    };
    if let Some(path) = kubeconfig {
        let err = |source| ClientError::Kubeconfig {
            path: path.to_path_buf(),
            source,
        };
        let kc = Kubeconfig::read_from(path).map_err(err)?;
        let config = Config::from_custom_kubeconfig(kc, &options)
            .await
            .map_err(err)?;
        return Ok((config, ConfigSource::Explicit(path.to_path_buf())));
    }
    if order == Order::KubeconfigFirst {
        let kubeconfig = match Config::from_kubeconfig(&options).await {
            Ok(config) => return Ok((config, ConfigSource::Default)),
            Err(e) if context.is_some() => return Err(ClientError::Context(e)),
            Err(e) => e,
        };
        return match Config::incluster() {
            Ok(config) => Ok((config, ConfigSource::InCluster)),
            Err(in_cluster) => Err(ClientError::NotFound {
                in_cluster,
                kubeconfig,
            }),
        };
    }
    match Config::incluster() {
        Ok(config) => Ok((config, ConfigSource::InCluster)),
        Err(in_cluster) => match Config::from_kubeconfig(&options).await {
            Ok(config) => Ok((config, ConfigSource::Default)),
            Err(kubeconfig) => Err(ClientError::NotFound {
                in_cluster,
                kubeconfig,
            }),
        },
    }
}

/// A client for the API server (see [`load_config`]). Needs a tokio runtime.
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client, ClientError> {
    let (config, source) = load_config(kubeconfig).await?;
    tracing::info!(server = %config.cluster_url, source = ?source, "API server");
    build(config)
}

/// The client for `config`: kube's default stack (`Client::try_from`: base URI, retries
/// of 429/503/504 when `default_retry`, authentication, extra headers, rustls with
/// `https_or_http`) over a TCP connector with keepalive and `TCP_USER_TIMEOUT` (see the
/// module documentation). kube builds its connector itself and offers no way to set
/// socket options on it, hence the stack here. Left out of kube's: its request tracing
/// spans (debug level), and gzip (a feature kproxy does not enable). `connect_timeout`
/// bounds the TCP connect (kube's also covers the TLS handshake; here a handshake with a
/// peer that stops answering ends at `DEAD_AFTER`); `read_timeout`/`write_timeout`,
/// which no kubeconfig sets, are not applied. A configuration with a proxy goes to
/// kube's own builder (which refuses it: kproxy is built without kube's proxy features).
pub fn build(config: Config) -> Result<Client, ClientError> {
    if config.proxy_url.is_some() {
        return Client::try_from(config).map_err(ClientError::Build);
    }
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(config.connect_timeout);
    http.set_keepalive(Some(KEEPALIVE_IDLE));
    http.set_keepalive_interval(Some(KEEPALIVE_INTERVAL));
    http.set_keepalive_retries(Some(KEEPALIVE_PROBES));
    http.set_tcp_user_timeout(Some(DEAD_AFTER));
    let https = config
        .rustls_https_connector_with_connector(http)
        .map_err(ClientError::Build)?;
    let hyper = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(https);
    let retry = config
        .default_retry
        .then(|| RetryLayer::new(RetryPolicy::server_retry()));
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(retry)
        .option_layer(config.auth_layer().map_err(ClientError::Build)?)
        .layer(config.extra_headers_layer().map_err(ClientError::Build)?)
        .map_err(BoxError::from)
        .service(hyper);
    Ok(Client::new(service, config.default_namespace))
}

/// Whether `error` (anywhere in its chain of causes) is a connection the kernel closed
/// because the peer stopped answering (`ETIMEDOUT`: keepalive probes or sent data
/// unacknowledged for [`DEAD_AFTER`]).
pub fn is_dead_connection(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.raw_os_error() == Some(libc::ETIMEDOUT) {
                return true;
            }
            // `io::Error::source` skips a wrapped error and returns *its* source: look
            // at the wrapped one itself too.
            if let Some(inner) = io.get_ref() {
                if is_dead_connection(inner) {
                    return true;
                }
            }
        }
        next = e.source();
    }
    false
}

/// A client from [`load_config_with`]'s settings. Needs a tokio runtime.
pub async fn client_with(
    kubeconfig: Option<&Path>,
    context: Option<&str>,
    order: Order,
) -> Result<Client, ClientError> {
    let (config, _) = load_config_with(kubeconfig, context, order).await?;
    build(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn explicit_kubeconfig_with_plain_http_server() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubeconfig");
        std::fs::write(
            &path,
            "apiVersion: v1\nkind: Config\ncurrent-context: c\n\
             clusters: [{name: k, cluster: {server: 'http://127.0.0.1:1'}}]\n\
             users: [{name: u, user: {token: t}}]\n\
             contexts: [{name: c, context: {cluster: k, user: u, namespace: ns}}]\n",
        )
        .unwrap();
        let (config, source) = load_config(Some(&path)).await.unwrap();
        assert_eq!(source, ConfigSource::Explicit(path.clone()));
        assert_eq!(config.cluster_url.to_string(), "http://127.0.0.1:1/");
        assert_eq!(config.default_namespace, "ns");
        client(Some(&path)).await.expect("http client builds");
    }

    #[tokio::test]
    async fn context_picks_another_context() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubeconfig");
        std::fs::write(
            &path,
            "apiVersion: v1\nkind: Config\ncurrent-context: a\n\
             clusters: [{name: ka, cluster: {server: 'http://127.0.0.1:1'}},\
                        {name: kb, cluster: {server: 'http://127.0.0.1:2'}}]\n\
             users: [{name: u, user: {token: t}}]\n\
             contexts: [{name: a, context: {cluster: ka, user: u}},\
                        {name: b, context: {cluster: kb, user: u}}]\n",
        )
        .unwrap();
        let order = Order::KubeconfigFirst;
        let (config, _) = load_config_with(Some(&path), Some("b"), order)
            .await
            .unwrap();
        assert_eq!(config.cluster_url.to_string(), "http://127.0.0.1:2/");
        let (config, _) = load_config_with(Some(&path), None, order).await.unwrap();
        assert_eq!(config.cluster_url.to_string(), "http://127.0.0.1:1/");
        let err = load_config_with(Some(&path), Some("c"), order)
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::Kubeconfig { .. }), "{err}");
    }

    /// The client's socket connected from `local` (found among this process's fds).
    fn socket_from(local: std::net::SocketAddr) -> Option<std::os::fd::RawFd> {
        std::fs::read_dir("/proc/self/fd")
            .ok()?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .find(|&fd| {
                // SAFETY: the fd is open for the duration of this call (the client
                // holds it; it is only read from, never closed here).
                let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
                let sock = socket2::SockRef::from(&fd);
                sock.local_addr().ok().and_then(|a| a.as_socket()) == Some(local)
            })
    }

    #[tokio::test]
    async fn connections_to_the_api_server_have_keepalive_and_a_user_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let client = build(Config::new(url.parse().unwrap())).unwrap();
        let request = tokio::spawn(async move { client.apiserver_version().await });
        let (_conn, peer) = listener.accept().await.unwrap();
        let fd = socket_from(peer).expect("the client's socket");
        // SAFETY: as in `socket_from`; the request (and so the socket) is still pending.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        let sock = socket2::SockRef::from(&fd);
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), KEEPALIVE_IDLE);
        assert_eq!(sock.tcp_keepalive_interval().unwrap(), KEEPALIVE_INTERVAL);
        assert_eq!(sock.tcp_keepalive_retries().unwrap(), KEEPALIVE_PROBES);
        assert_eq!(sock.tcp_user_timeout().unwrap(), Some(DEAD_AFTER));
        assert_eq!(
            KEEPALIVE_IDLE + KEEPALIVE_INTERVAL * KEEPALIVE_PROBES,
            DEAD_AFTER
        );
        request.abort();
    }

    #[test]
    fn a_timed_out_connection_is_recognised_through_its_wrappers() {
        let timed_out = std::io::Error::from_raw_os_error(libc::ETIMEDOUT);
        // As kube wraps a body read error: io::Error::other(hyper error(io error)).
        #[derive(Debug, thiserror::Error)]
        #[error("error reading a body from connection")]
        struct Body(#[source] std::io::Error);
        let wrapped = std::io::Error::other(Body(timed_out));
        let e = kube::runtime::watcher::Error::WatchFailed(kube::Error::ReadEvents(wrapped));
        assert!(is_dead_connection(&e));
        let refused = std::io::Error::from_raw_os_error(libc::ECONNREFUSED);
        let e = kube::runtime::watcher::Error::WatchFailed(kube::Error::ReadEvents(refused));
        assert!(!is_dead_connection(&e));
    }

    #[tokio::test]
    async fn broken_explicit_kubeconfig_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing");
        let err = load_config(Some(&path)).await.unwrap_err();
        assert!(matches!(err, ClientError::Kubeconfig { .. }), "{err}");
    }
}
