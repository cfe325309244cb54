//! A one-shot list of what the daemon watches, for the review commands (`kproxy render`,
//! `trace`, `diff` against a live cluster).
//!
//! Owns: listing, once, the objects one node's rules depend on: Services and
//! EndpointSlices with the daemon's label selector ([`PROXY_LABEL_SELECTOR`]), paginated
//! (each list is one consistent snapshot: the API server serves every page of a list
//! from the resourceVersion of its first), the chosen Node by name (missing: an error,
//! not an empty render), and ServiceCIDRs (an API server without `networking.k8s.io/v1`
//! answers 404: none). Also reading one ConfigMap key (`--config-from-cluster`).
//!
//! Pages are turned into the informer cache's compact forms as they arrive
//! ([`super::compact`]: only what `model::build` reads, repeated strings shared), and back
//! into `k8s-openapi` values once listed, so the listing holds one page of raw JSON and
//! the compact objects, as the daemon's cache does; what it renders is what the daemon
//! would render.
//!
//! Must not: interpret objects (that is `model::build`), watch, or retry.

use k8s_openapi::api::core::v1::{ConfigMap, Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::ServiceCIDR;
use kube::api::ListParams;
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;

use super::cache::PROXY_LABEL_SELECTOR;
use super::compact::{prune_node, prune_service_cidr, Interner, ServiceLite, SliceLite};
use crate::model::build::Objects;

/// Objects per list request.
pub const PAGE_SIZE: u32 = 500;
/// A progress line every this many objects of one resource.
pub const PROGRESS_EVERY: usize = 10_000;

/// Why the cluster could not be listed.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    /// The chosen node does not exist.
    #[error(
        "node {0:?} does not exist in the cluster (pick one with --hostname-override; \
         `kubectl get nodes` lists them)"
    )]
    NoNode(String),
    /// The ConfigMap or its key does not exist.
    #[error("ConfigMap {namespace}/{name} {what}")]
    NoConfigMap {
        namespace: String,
        name: String,
        what: String,
    },
    /// The API server refused or could not be reached.
    #[error("listing {resource}: {source}")]
    Api {
        resource: &'static str,
        #[source]
        source: kube::Error,
    },
}

impl ListError {
    /// True when the operator named something that is not there (a usage error).
    pub fn is_usage(&self) -> bool {
        matches!(self, ListError::NoNode(_) | ListError::NoConfigMap { .. })
    }
}

/// Lists the cluster as `node` sees it. `progress` gets `(resource, objects so far)`
/// every [`PROGRESS_EVERY`] objects of a resource.
pub async fn list_cluster(
    client: &Client,
    node: &str,
    progress: &mut dyn FnMut(&str, usize),
) -> Result<Objects, ListError> {
    let labels = ListParams::default().labels(PROXY_LABEL_SELECTOR);
    let nodes = Api::<Node>::all(client.clone());
    let node = match nodes.get_opt(node).await {
        Ok(Some(n)) => n,
        Ok(None) => return Err(ListError::NoNode(node.to_string())),
        Err(source) => {
            return Err(ListError::Api {
                resource: "nodes",
                source,
            })
        }
    };
    let cidrs = Api::<ServiceCIDR>::all(client.clone());
    let service_cidrs =
        match list_all(cidrs, &labels, "ServiceCIDRs", progress, prune_service_cidr).await {
            Err(ListError::Api {
                source: kube::Error::Api(s),
                ..
            }) if s.code == 404 => Vec::new(),
            other => other?,
        };
    let mut interner = Interner::default();
    let services = Api::<Service>::all(client.clone());
    let services = list_all(services, &labels, "Services", progress, |s| {
        ServiceLite::from_k8s(s, &mut interner)
    })
    .await?;
    let slices = Api::<EndpointSlice>::all(client.clone());
    let slices = list_all(slices, &labels, "EndpointSlices", progress, |s| {
        SliceLite::from_k8s(s, &mut interner)
    })
    .await?;
    Ok(Objects {
        services: services.into_iter().map(|s| s.to_k8s()).collect(),
        slices: slices.into_iter().map(|s| s.to_k8s()).collect(),
        nodes: vec![prune_node(node)],
        service_cidrs,
    })
}

/// Every object `api` lists with `params`, page by page, each turned into `keep(object)`.
async fn list_all<K, T>(
    api: Api<K>,
    params: &ListParams,
    resource: &'static str,
    progress: &mut dyn FnMut(&str, usize),
    mut keep: impl FnMut(K) -> T,
) -> Result<Vec<T>, ListError>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let mut params = params.clone().limit(PAGE_SIZE);
    let mut out = Vec::new();
    loop {
        let page = api
            .list(&params)
            .await
            .map_err(|source| ListError::Api { resource, source })?;
        let before = out.len();
        out.extend(page.items.into_iter().map(&mut keep));
        if out.len() / PROGRESS_EVERY > before / PROGRESS_EVERY {
            progress(resource, out.len());
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(out),
        }
    }
}

/// The text under `key` in ConfigMap `namespace/name`.
pub async fn config_map_key(
    client: &Client,
    namespace: &str,
    name: &str,
    key: &str,
) -> Result<String, ListError> {
    let missing = |what: String| ListError::NoConfigMap {
        namespace: namespace.to_string(),
        name: name.to_string(),
        what,
    };
    let api = Api::<ConfigMap>::namespaced(client.clone(), namespace);
    let cm = api
        .get_opt(name)
        .await
        .map_err(|source| ListError::Api {
            resource: "configmaps",
            source,
        })?
        .ok_or_else(|| missing("does not exist".to_string()))?;
    cm.data
        .and_then(|mut d| d.remove(key))
        .ok_or_else(|| missing(format!("has no key {key:?}")))
}
