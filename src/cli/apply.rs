//! `kproxy apply` and `kproxy cleanup`: program the current network namespace, or remove
//! kproxy's tables from it.
//!
//! Owns: those commands' arguments and what they print. Must not: render or diff
//! themselves (`apply` does, through [`crate::apply`]).

use clap::Args;

use super::input::{prepare_ruleset_over, Input};
use super::{Failure, EXIT_KERNEL};
use crate::apply;
use crate::backend::netlink::NetlinkBackend;
use crate::backend::Backend;
use crate::nft::text;
use crate::nft::tx::TxStats;
use crate::render;

#[derive(Args, Debug)]
pub(crate) struct ApplyArgs {
    #[command(flatten)]
    input: Input,
    /// Print the transaction (as `nft -f` commands) instead of sending it.
    #[arg(long)]
    dry_run: bool,
}

fn kernel_failure(e: impl std::fmt::Display) -> Failure {
    Failure {
        code: EXIT_KERNEL,
        message: e.to_string(),
    }
}

/// `chains +2 ~1 -0, rules 14, sets +0 -0, elements +31 -2`
fn describe_stats(s: &TxStats) -> String {
    format!(
        "chains +{} ~{} -{}, rules {}, sets +{} -{}, elements +{} -{}",
        s.chains_added,
        s.chains_flushed,
        s.chains_deleted,
        s.rules,
        s.sets_added,
        s.sets_deleted,
        s.elements_added,
        s.elements_deleted
    )
}

pub(crate) fn cmd_apply(a: ApplyArgs) -> Result<(), Failure> {
    let mut backend = NetlinkBackend::new(render::TABLE).map_err(kernel_failure)?;
    // What the kernel holds is read first: the render keeps every endpoint list where the
    // kernel has it (a change moves nothing else), and the diff is against that same read.
    let kernel = backend.dump().map_err(kernel_failure)?;
    let (_, ruleset) = prepare_ruleset_over(&a.input, Some(&kernel))?;
    let opts = apply::Options {
        chain_deletes: apply::ChainDeletes::for_kernel(
            apply::kernel_needs_deferred_chain_deletes(&apply::kernel_release()),
            apply::ChainDeletes::AfterDelay,
        ),
        dry_run: a.dry_run,
    };
    let base = apply::Base::Given(kernel);
    let done = apply::apply(&mut backend, base, ruleset, &opts).map_err(kernel_failure)?;
    let ms = done.elapsed.as_secs_f64() * 1e3;
    if a.dry_run {
        print!("{}", text::transaction(&done.tx));
        eprintln!(
            "kproxy apply --dry-run: would send {} operations ({})",
            done.stats.ops,
            describe_stats(&done.stats)
        );
    } else if done.stats.ops == 0 {
        eprintln!(
            "kproxy apply: nothing to do, the kernel already holds this ruleset (0 operations sent, {ms:.1} ms)"
        );
    } else {
        eprintln!(
            "kproxy apply: committed {} operations in {} netlink messages, {ms:.1} ms ({}){}",
            done.stats.ops,
            done.report.messages,
            describe_stats(&done.stats),
            if done.deferred_deleted > 0 {
                format!(
                    "; {} stale chains deleted afterwards",
                    done.deferred_deleted
                )
            } else {
                String::new()
            }
        );
    }
    Ok(())
}

pub(crate) fn cmd_cleanup() -> Result<(), Failure> {
    let mut backend = NetlinkBackend::new(render::TABLE).map_err(kernel_failure)?;
    let removed = apply::cleanup(&mut backend, &render::own_tables()).map_err(kernel_failure)?;
    if removed.is_empty() {
        eprintln!("kproxy cleanup: no kproxy tables here");
    }
    for t in removed {
        eprintln!("kproxy cleanup: deleted table {} {}", t.family, t.name);
    }
    Ok(())
}
