//! The review commands' input: manifests (`-f`) loaded, the model built and rendered.
//!
//! Owns: turning `Input` into objects, warnings (printed to stderr), a model and a ruleset.
//! Must not: touch the kernel.

use std::path::PathBuf;

use clap::Args;

use super::{config_failure, Failure, EXIT_NOINPUT};
use crate::config::{Config, ProxyFlags};
use crate::k8s::manifests;
use crate::model::{self, build::Objects, Model};
use crate::nft::Ruleset;
use crate::render;

#[derive(Args, Debug)]
pub(crate) struct Input {
    /// Manifest file or directory (YAML or JSON; multi-document and `kind: List` are fine).
    #[arg(short = 'f', long = "filename", required = true, value_name = "PATH")]
    pub(crate) files: Vec<PathBuf>,
    #[command(flatten)]
    pub(crate) proxy: ProxyFlags,
}

/// Manifests loaded, model built and rendered.
pub(crate) struct Prepared {
    pub(crate) config: Config,
    pub(crate) objects: Objects,
    pub(crate) model: Model,
    pub(crate) warnings: Vec<model::Warning>,
    pub(crate) ruleset: Ruleset,
}

pub(crate) fn prepare(input: &Input) -> Result<Prepared, Failure> {
    let config = Config::from_flags(&input.proxy).map_err(config_failure)?;
    let loaded = manifests::load_paths(&input.files).map_err(|e| Failure {
        code: EXIT_NOINPUT,
        message: e.to_string(),
    })?;
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
    let (model, warnings) = model::build(&loaded.objects, &config.settings);
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    let ruleset = render::render(&model);
    Ok(Prepared {
        config,
        objects: loaded.objects,
        model,
        warnings,
        ruleset,
    })
}

/// Where a review command's objects come from: manifest paths, or the live cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    Manifests(Vec<PathBuf>),
    Cluster,
}

/// Loads the objects of `source` (`input` says how to reach a cluster). Minimal: manifests
/// only; the live cluster comes with the cluster-input change.
pub(crate) fn load_source(source: &Source, input: &Input) -> Result<manifests::Loaded, Failure> {
    let _ = input;
    match source {
        Source::Manifests(paths) => manifests::load_paths(paths).map_err(|e| Failure {
            code: EXIT_NOINPUT,
            message: e.to_string(),
        }),
        Source::Cluster => Err(super::usage(
            "a live cluster as input needs the cluster-input change (--kubeconfig); give manifests instead",
        )),
    }
}
