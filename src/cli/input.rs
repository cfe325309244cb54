//! The review commands' input: manifests (`-f`), a live cluster, or both, loaded; the model
//! built and rendered.
//!
//! Where the objects come from:
//!
//! - `-f PATH…` alone: the manifests.
//! - no `-f`: the live cluster ([`crate::k8s::list`]), kubeconfig chosen as kubectl does
//!   (`--kubeconfig`, else `$KUBECONFIG`, else `~/.kube/config`, else in-cluster;
//!   `--context` picks a context): Services and EndpointSlices with the daemon's label
//!   selector, the node `--hostname-override` names (else the host name; a node that does
//!   not exist is a usage error) and ServiceCIDRs.
//! - `-f` and an explicit `--kubeconfig` or `--context`: the cluster's objects overlaid by
//!   the manifests: an object of the same kind, namespace and name is replaced, others are
//!   added ("what would this change do to the cluster").
//!
//! The node's flags come from `--config` FILE, or with `--config-from-cluster
//! [NAMESPACE/NAME]` from the cluster's kube-proxy ConfigMap (key `config.conf`), parsed
//! exactly as a `--config` file; explicit flags override either.
//!
//! Owns: turning `Input` into objects, warnings (printed to stderr), a model and a ruleset.
//! Must not: touch the kernel.

use std::path::PathBuf;

use clap::Args;
use kube::Client;

use super::{config_failure, usage, Failure, EXIT_NOINPUT, EXIT_USAGE};
use crate::config::{Config, ProxyFlags};
use crate::k8s::client::{self, Order};
use crate::k8s::list::{self, ListError};
use crate::k8s::manifests::{self, Loaded};
use crate::model::{self, build::Objects, Model};
use crate::nft::Ruleset;
use crate::render;

/// `--config-from-cluster` without a value.
pub(crate) const DEFAULT_PROXY_CONFIG_MAP: &str = "kube-system/kube-proxy";
/// The ConfigMap key kubeadm writes the KubeProxyConfiguration under.
pub(crate) const PROXY_CONFIG_KEY: &str = "config.conf";

#[derive(Args, Debug)]
pub(crate) struct Input {
    /// Manifest file or directory (YAML or JSON; multi-document and `kind: List` are fine).
    /// Without it, the objects come from the live cluster; with it and an explicit
    /// --kubeconfig or --context, they overlay the cluster's (same kind, namespace and
    /// name replaced, others added).
    #[arg(short = 'f', long = "filename", value_name = "PATH")]
    pub(crate) files: Vec<PathBuf>,
    /// The kubeconfig context to use (default: its current context).
    #[arg(long, value_name = "NAME")]
    pub(crate) context: Option<String>,
    /// Read the node's settings from the cluster's kube-proxy ConfigMap (key
    /// `config.conf`), as a --config file; flags given explicitly override it.
    #[arg(
        long,
        value_name = "NAMESPACE/NAME",
        num_args = 0..=1,
        default_missing_value = DEFAULT_PROXY_CONFIG_MAP,
        conflicts_with = "config"
    )]
    pub(crate) config_from_cluster: Option<String>,
    #[command(flatten)]
    pub(crate) proxy: ProxyFlags,
}

/// Where a review command's objects come from.
pub(crate) enum Source {
    /// Manifest files or directories.
    Manifests(Vec<PathBuf>),
    /// The live cluster `input`'s kubeconfig and context name (see the module docs).
    Cluster,
}

/// Manifests loaded, model built and rendered.
pub(crate) struct Prepared {
    pub(crate) config: Config,
    /// The Nodes and ServiceCIDRs only: the Services and EndpointSlices are in `model`
    /// (use [`load_source`] for all the objects).
    pub(crate) objects: Objects,
    pub(crate) model: Model,
    pub(crate) warnings: Vec<model::Warning>,
    pub(crate) ruleset: Ruleset,
}

pub(crate) fn prepare(input: &Input) -> Result<Prepared, Failure> {
    let config = config(input)?;
    let loaded = load(input, &config)?;
    let (model, warnings) = model::build(&loaded.objects, &config.settings);
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    // The Services and EndpointSlices live on in the model; freed before rendering, they
    // keep the peak down (rendering a 50k × 10 cluster: 871 → 775 MiB peak RSS).
    let objects = Objects {
        nodes: loaded.objects.nodes,
        service_cidrs: loaded.objects.service_cidrs,
        ..Objects::default()
    };
    let ruleset = render::render(&model);
    Ok(Prepared {
        config,
        objects,
        model,
        warnings,
        ruleset,
    })
}

/// Services per model-building run of [`prepare_ruleset`] (as the daemon's full syncs).
const BUILD_CHUNK: usize = 2048;

/// Only the ruleset (`render -o nft`, `apply`): the objects are built and rendered a run of
/// services at a time, each run's objects and model dropped once its fragments exist, so
/// the whole model never exists beside the ruleset (the daemon's full syncs do the same).
/// The warnings are the ones [`prepare`] prints, in the same order.
pub(crate) fn prepare_ruleset(input: &Input) -> Result<(Config, Ruleset), Failure> {
    prepare_ruleset_over(input, None)
}

/// [`prepare_ruleset`] for a kernel that holds `kernel` (kproxy's tables, read back): its
/// endpoint lists keep their places ([`render::render_chunked_over`]), so applying a
/// change moves nothing else.
pub(crate) fn prepare_ruleset_over(
    input: &Input,
    kernel: Option<&Ruleset>,
) -> Result<(Config, Ruleset), Failure> {
    let config = config(input)?;
    let loaded = load(input, &config)?;
    let mut warnings = Vec::new();
    let chunks = loaded.objects.into_chunks(BUILD_CHUNK);
    let settings = &config.settings;
    // The next chunk's model is built on another core while this one renders (one chunk
    // ahead at most, so the whole model is never held).
    let ruleset = std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        scope.spawn(move || {
            for o in chunks {
                if tx.send(model::build(&o, settings)).is_err() {
                    break;
                }
            }
        });
        render::render_chunked_over(
            kernel,
            rx.into_iter().map(|(m, w)| {
                warnings.extend(w);
                m
            }),
        )
    });
    warnings.sort();
    warnings.dedup();
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    Ok((config, ruleset))
}

/// The objects `input` names (see the module docs), their loading warnings printed.
fn load(input: &Input, config: &Config) -> Result<manifests::Loaded, Failure> {
    let explicit_cluster = input.proxy.kubeconfig.is_some() || input.context.is_some();
    let loaded = if input.files.is_empty() {
        load_source(&Source::Cluster, input, config)?
    } else if explicit_cluster {
        let mut base = load_source(&Source::Cluster, input, config)?;
        let change = load_source(&Source::Manifests(input.files.clone()), input, config)?;
        overlay(&mut base.objects, change.objects);
        base.warnings.extend(change.warnings);
        base
    } else {
        load_source(&Source::Manifests(input.files.clone()), input, config)?
    };
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
    Ok(loaded)
}

/// The node's settings: the flags, over `--config` or `--config-from-cluster`.
pub(crate) fn config(input: &Input) -> Result<Config, Failure> {
    let Some(name) = &input.config_from_cluster else {
        return Config::from_flags(&input.proxy).map_err(config_failure);
    };
    let (namespace, name) = name.split_once('/').ok_or_else(|| {
        usage(format!(
            "--config-from-cluster {name:?}: expected NAMESPACE/NAME"
        ))
    })?;
    let text = with_client(input, |client| async move {
        list::config_map_key(&client, namespace, name, PROXY_CONFIG_KEY).await
    })?;
    let origin = format!("--config-from-cluster {namespace}/{name} (key {PROXY_CONFIG_KEY})");
    Config::from_flags_and_text(&input.proxy, &origin, &text).map_err(config_failure)
}

/// The objects and loader warnings of `source`; for the cluster, as the node `config`
/// names sees it (`config` is [`config`]'s, so `--config-from-cluster` is read once).
pub(crate) fn load_source(
    source: &Source,
    input: &Input,
    config: &Config,
) -> Result<Loaded, Failure> {
    match source {
        Source::Manifests(paths) => manifests::load_paths(paths).map_err(|e| Failure {
            code: EXIT_NOINPUT,
            message: e.to_string(),
        }),
        Source::Cluster => {
            let node = config.settings.hostname.clone();
            let objects = with_client(input, |client| async move {
                list::list_cluster(&client, &node, &mut |resource, n| {
                    eprintln!("listing: {n} {resource}…")
                })
                .await
            })?;
            Ok(Loaded {
                objects,
                warnings: Vec::new(),
            })
        }
    }
}

/// Runs `f` with a client for `input`'s cluster on a current-thread runtime.
fn with_client<T, F, Fut>(input: &Input, f: F) -> Result<T, Failure>
where
    F: FnOnce(Client) -> Fut,
    Fut: std::future::Future<Output = Result<T, ListError>>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure {
            code: EXIT_NOINPUT,
            message: format!("starting the async runtime: {e}"),
        })?;
    runtime.block_on(async {
        let client = client::client_with(
            input.proxy.kubeconfig.as_deref(),
            input.context.as_deref(),
            Order::KubeconfigFirst,
        )
        .await
        .map_err(|e| match e {
            // Neither -f nor a cluster: the operator did not say where the objects are.
            client::ClientError::NotFound { .. } => usage(format!("no -f PATH, and {e}")),
            e => Failure {
                code: EXIT_NOINPUT,
                message: e.to_string(),
            },
        })?;
        f(client).await.map_err(|e| Failure {
            code: if e.is_usage() {
                EXIT_USAGE
            } else {
                EXIT_NOINPUT
            },
            message: e.to_string(),
        })
    })
}

/// `change`'s objects replace `base`'s of the same kind, namespace and name; the others are
/// added.
pub(crate) fn overlay(base: &mut Objects, change: Objects) {
    fn merge<K: kube::Resource>(base: &mut Vec<K>, change: Vec<K>) {
        let key = |o: &K| {
            let m = o.meta();
            (m.namespace.clone(), m.name.clone())
        };
        let replaced: std::collections::HashSet<_> = change.iter().map(key).collect();
        base.retain(|o| !replaced.contains(&key(o)));
        base.extend(change);
    }
    merge(&mut base.services, change.services);
    merge(&mut base.slices, change.slices);
    merge(&mut base.nodes, change.nodes);
    merge(&mut base.service_cidrs, change.service_cidrs);
}
