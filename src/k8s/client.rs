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
//! The review commands (`kproxy render|trace|diff` without `-f`) use
//! [`load_config_with`] in kubectl's order instead: an explicit kubeconfig, else
//! `$KUBECONFIG` / `~/.kube/config`, else in-cluster; an explicit `--context` picks a
//! context other than the current one (and then no in-cluster fallback is tried).
//!
//! Must not: read objects (that is [`super::cache`] and [`super::list`]).

use std::path::{Path, PathBuf};

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

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
    Client::try_from(config).map_err(ClientError::Build)
}

/// A client from [`load_config_with`]'s settings. Needs a tokio runtime.
pub async fn client_with(
    kubeconfig: Option<&Path>,
    context: Option<&str>,
    order: Order,
) -> Result<Client, ClientError> {
    let (config, _) = load_config_with(kubeconfig, context, order).await?;
    Client::try_from(config).map_err(ClientError::Build)
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

    #[tokio::test]
    async fn broken_explicit_kubeconfig_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing");
        let err = load_config(Some(&path)).await.unwrap_err();
        assert!(matches!(err, ClientError::Kubeconfig { .. }), "{err}");
    }
}
