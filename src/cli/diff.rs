//! `kproxy diff`: what a change would do to a node's rules before it reaches the node
//! (`--base SRC --change SRC [--delete KIND/NS/NAME …]`), or how this node's kernel has
//! drifted from what it should hold (`--node [SRC]`). Never touches the kernel's tables
//! (`--node` only reads them back).
//!
//! Owns: the diff command's arguments, `--delete` (the change is laid over the base by
//! [`super::input::overlay`], as render's `-f` over a cluster: objects of the same kind,
//! namespace and name replaced, others added), and the
//! exit status (0 nothing changes, 1 something does). Must not: present anything itself
//! (that is [`crate::report::diff`]) or write to the kernel.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::{Metadata, Resource};

use super::input::{config, load_source, overlay, Input, Source};
use super::{usage, Failure};
use crate::backend::netlink::NetlinkBackend;
use crate::backend::Backend;
use crate::config::Config;
use crate::diff::{diff, DiffOptions};
use crate::model::{self, Model, Objects};
use crate::nft::Ruleset;
use crate::render;
use crate::report::diff as report;

/// Something changes (or the kernel has drifted).
pub(crate) const EXIT_CHANGED: i32 = 1;
/// Any other error (e.g. the kernel's tables cannot be read).
pub(crate) const EXIT_TROUBLE: i32 = 2;

#[derive(Args, Debug)]
pub(crate) struct DiffArgs {
    /// The objects as they are: manifest paths (files or directories) or the word
    /// `cluster` (the live cluster).
    #[arg(long, value_name = "SRC", num_args = 1..)]
    base: Vec<String>,
    /// The change, laid over the base: its objects replace the base's objects of the same
    /// kind, namespace and name, and are added otherwise. Paths or `cluster`.
    #[arg(long, value_name = "SRC", num_args = 1..)]
    change: Vec<String>,
    /// Remove an object from the result (`Service/shop/web`, `EndpointSlice/shop/web-abc`,
    /// `Node/node-a`, `ServiceCIDR/kubernetes`). Repeatable.
    #[arg(long, value_name = "KIND/NS/NAME")]
    delete: Vec<String>,
    /// Compare what this node's kernel holds (kproxy's tables, read back) with what it
    /// should hold for SRC (`-f` paths, paths here, or `cluster`, the default).
    #[arg(long, value_name = "SRC", num_args = 0..)]
    node: Option<Vec<String>>,
    /// summary: per service port (or, with --node, per service's rules) what was and what
    /// will be; nft: the transaction kproxy would send; json: both.
    #[arg(short = 'o', long, value_enum, default_value_t = DiffOutput::Summary)]
    output: DiffOutput,
    #[command(flatten)]
    input: Input,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum DiffOutput {
    Summary,
    Nft,
    Json,
}

/// `cluster`, or manifest paths.
fn source(values: &[String]) -> Result<Source, Failure> {
    match values {
        [one] if one == "cluster" => Ok(Source::Cluster),
        v if v.iter().any(|s| s == "cluster") => Err(usage(
            "`cluster` cannot be combined with manifest paths in one SRC",
        )),
        v => Ok(Source::Manifests(v.iter().map(PathBuf::from).collect())),
    }
}

pub(crate) fn cmd_diff(a: DiffArgs) -> Result<(), Failure> {
    // The node's settings as render and trace read them (flags, --config or
    // --config-from-cluster).
    let config = config(&a.input)?;
    let (changed, printed) = match &a.node {
        Some(values) => {
            if !a.base.is_empty() || !a.change.is_empty() || !a.delete.is_empty() {
                return Err(usage(
                    "--node cannot be combined with --base, --change or --delete",
                ));
            }
            let mut paths = a.input.files.clone();
            paths.extend(values.iter().map(PathBuf::from));
            let src = if paths.is_empty() {
                Source::Cluster
            } else {
                source(
                    &paths
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>(),
                )?
            };
            node_diff(&src, &a, &config)?
        }
        None => {
            if a.base.is_empty() || a.change.is_empty() {
                return Err(usage(
                    "kproxy diff needs --base SRC and --change SRC, or --node [SRC]",
                ));
            }
            if !a.input.files.is_empty() {
                return Err(usage("-f is for --node; give paths to --base and --change"));
            }
            change_diff(&a, &config)?
        }
    };
    print!("{printed}");
    if changed {
        return Err(Failure {
            code: EXIT_CHANGED,
            message: "differences found".into(),
        });
    }
    Ok(())
}

/// Loads one SRC, printing its load warnings to stderr under `label`.
fn load(label: &str, src: &Source, input: &Input, config: &Config) -> Result<Objects, Failure> {
    let loaded = load_source(src, input, config)?;
    for w in &loaded.warnings {
        eprintln!("warning: {label}: {w}");
    }
    Ok(loaded.objects)
}

fn build(label: &str, objects: &Objects, config: &Config) -> (Model, Ruleset) {
    let (model, warnings) = model::build(objects, &config.settings);
    for w in &warnings {
        eprintln!("warning: {label}: {w}");
    }
    let ruleset = render::render(&model);
    (model, ruleset)
}

fn change_diff(a: &DiffArgs, config: &Config) -> Result<(bool, String), Failure> {
    let base = load("base", &source(&a.base)?, &a.input, config)?;
    let change = load("change", &source(&a.change)?, &a.input, config)?;
    let mut after = base.clone();
    overlay(&mut after, change);
    for d in &a.delete {
        delete(&mut after, d)?;
    }
    let (before_model, before_rs) = build("base", &base, config);
    let (after_model, after_rs) = build("change", &after, config);
    let tx = diff(&before_rs, &after_rs, &DiffOptions::default()).tx;
    let changed = !tx.is_empty();
    let nft = report::nft(&tx, &before_rs);
    Ok((
        changed,
        match a.output {
            DiffOutput::Summary => report::summary(&before_model, &after_model),
            DiffOutput::Nft => nft,
            DiffOutput::Json => json(
                changed,
                &report::summary(&before_model, &after_model),
                &report::port_changes(&before_model, &after_model),
                &nft,
            ),
        },
    ))
}

fn node_diff(src: &Source, a: &DiffArgs, config: &Config) -> Result<(bool, String), Failure> {
    let objects = load("node", src, &a.input, config)?;
    let trouble = |e: crate::backend::BackendError| Failure {
        code: EXIT_TROUBLE,
        message: format!("cannot read this node's kproxy tables: {e}"),
    };
    let mut backend = NetlinkBackend::new(render::TABLE).map_err(trouble)?;
    let kernel = backend.dump().map_err(trouble)?;
    // Rendered over what the kernel holds, as the daemon and `kproxy apply` render: an
    // endpoint list's block is renderer state, and where lists came and went it differs
    // from a fresh render's without anything being wrong.
    let (model, warnings) = model::build(&objects, &config.settings);
    for w in &warnings {
        eprintln!("warning: node: {w}");
    }
    let meant = render::render_chunked_over(Some(&kernel), std::iter::once(&model));
    let tx = diff(&kernel, &meant, &DiffOptions::default()).tx;
    let changed = !tx.is_empty();
    let nft = report::nft(&tx, &kernel);
    let summary = || report::node_summary(&tx, &kernel, &meant);
    Ok((
        changed,
        match a.output {
            DiffOutput::Summary => summary(),
            DiffOutput::Nft => nft,
            DiffOutput::Json => json(changed, &summary(), &[], &nft),
        },
    ))
}

fn json(changed: bool, summary: &str, ports: &[report::PortChange], nft: &str) -> String {
    let v = report::json(changed, summary, ports, nft);
    format!("{}\n", serde_json::to_string_pretty(&v).expect("json"))
}

/// `(namespace, name)` of an object.
fn key<T: Metadata<Ty = ObjectMeta>>(o: &T) -> (Option<&str>, Option<&str>) {
    let m = o.metadata();
    (m.namespace.as_deref(), m.name.as_deref())
}

fn remove<T: Metadata<Ty = ObjectMeta> + Resource>(
    v: &mut Vec<T>,
    ns: Option<&str>,
    name: &str,
) -> usize {
    let before = v.len();
    v.retain(|o| key(o) != (ns, Some(name)));
    before - v.len()
}

/// Removes `KIND/NS/NAME` (`KIND/NAME` for Nodes and ServiceCIDRs) from `objects`; an
/// unknown kind, or nothing matching, is a usage error.
fn delete(objects: &mut Objects, spec: &str) -> Result<(), Failure> {
    let parts: Vec<&str> = spec.split('/').collect();
    let bad = || {
        usage(format!(
            "--delete {spec}: expected KIND/NAMESPACE/NAME (or KIND/NAME for Node, ServiceCIDR)"
        ))
    };
    let (kind, ns, name) = match parts.as_slice() {
        [k, ns, n] if !ns.is_empty() && !n.is_empty() => (k.to_ascii_lowercase(), Some(*ns), *n),
        [k, n] if !n.is_empty() => (k.to_ascii_lowercase(), None, *n),
        _ => return Err(bad()),
    };
    let removed = match kind.as_str() {
        "service" | "services" | "svc" if ns.is_some() => remove(&mut objects.services, ns, name),
        "endpointslice" | "endpointslices" if ns.is_some() => remove(&mut objects.slices, ns, name),
        "node" | "nodes" if ns.is_none() => remove(&mut objects.nodes, None, name),
        "servicecidr" | "servicecidrs" if ns.is_none() => {
            remove(&mut objects.service_cidrs, None, name)
        }
        _ => return Err(bad()),
    };
    if removed == 0 {
        return Err(usage(format!(
            "--delete {spec}: no such object in the base or the change"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Service;

    fn svc(ns: &str, name: &str, ip: &str) -> Service {
        let mut s = Service::default();
        s.metadata.namespace = Some(ns.into());
        s.metadata.name = Some(name.into());
        s.spec = Some(k8s_openapi::api::core::v1::ServiceSpec {
            cluster_ip: Some(ip.into()),
            ..Default::default()
        });
        s
    }

    fn ips(o: &Objects) -> Vec<String> {
        o.services
            .iter()
            .map(|s| s.spec.as_ref().unwrap().cluster_ip.clone().unwrap())
            .collect()
    }

    #[test]
    fn the_change_replaces_by_key_and_adds_the_rest() {
        let base = Objects {
            services: vec![svc("a", "x", "10.0.0.1"), svc("a", "y", "10.0.0.2")],
            ..Default::default()
        };
        let change = Objects {
            services: vec![svc("a", "y", "10.0.0.3"), svc("b", "y", "10.0.0.4")],
            ..Default::default()
        };
        let mut out = base;
        overlay(&mut out, change);
        assert_eq!(ips(&out), ["10.0.0.1", "10.0.0.3", "10.0.0.4"]);
        assert!(delete(&mut out, "Service/a/x").is_ok());
        assert_eq!(ips(&out), ["10.0.0.3", "10.0.0.4"]);
        assert_eq!(
            delete(&mut out, "Service/a/x").err().map(|f| f.code),
            Some(64)
        );
        assert_eq!(delete(&mut out, "Pod/a/x").err().map(|f| f.code), Some(64));
        assert_eq!(delete(&mut out, "Node/a/x").err().map(|f| f.code), Some(64));
    }
}
