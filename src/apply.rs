//! The one path from a rendered ruleset to the kernel: base → diff → commit.
//!
//! Owns: the sync step every caller runs, written against the [`Backend`] trait so tests
//! drive it with the fake. [`apply`] takes a base — what the kernel holds ([`Base::Kernel`]:
//! read back here, for a full sync, a drift repair and `kproxy apply`: declarations,
//! chains and rules first, each set's elements as the diff reaches that set, so the
//! kernel's copy is never held whole beside the target) or the renderer's
//! partial "before" ([`Base::Given`] with [`crate::render::incremental::Partial::before`],
//! for a partial sync) — and the target, diffs them (dynamic affinity sets keep their
//! runtime contents), and commits one atomic transaction, or only computes it for a dry
//! run. On kernels before 6.2, chains that lost their last reference are deleted in a
//! second transaction a moment later (those kernels refuse to delete a chain in the same
//! transaction that removed the last map element pointing at it): here after a pause
//! ([`ChainDeletes::AfterDelay`], one-shot callers), or by the caller's loop
//! ([`ChainDeletes::Return`] and [`delete_chains`], the daemon, which must not block).
//! Also `cleanup`: delete kproxy's tables and nothing else.
//!
//! Must not: render, parse manifests or print; the caller does.

use std::time::{Duration, Instant};

use crate::backend::{ApplyReport, Backend, BackendError};
use crate::diff::{diff_lazy, diff_owned, DiffOptions};
use crate::nft::tx::{Op, TableRef, Transaction, TxStats};
use crate::nft::{Elements, Ruleset};

/// How long to wait before deleting chains whose references were removed (kernels < 6.2),
/// as upstream kube-proxy does.
pub const STALE_CHAIN_DELAY: Duration = Duration::from_secs(1);

/// What the target is diffed against.
#[derive(Clone, Debug)]
pub enum Base {
    /// What the kernel holds now, read back from the backend (kproxy's tables).
    Kernel,
    /// A ruleset the caller knows the kernel holds (for the objects it names): the
    /// renderer's partial "before" of an incremental update.
    Given(Ruleset),
    /// What the kernel holds, already read with [`Backend::dump_declarations`] (the
    /// daemon's first full sync reads it to adopt endpoint lists before rendering): its
    /// sets' elements are read as the diff reaches each set, as for [`Base::Kernel`].
    Declarations(Ruleset),
}

/// What happens to chains that lose their last reference in this transaction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ChainDeletes {
    /// Deleted in the same transaction (kernel >= 6.2).
    #[default]
    Inline,
    /// Deleted in a second transaction after [`STALE_CHAIN_DELAY`] (kernel < 6.2, callers
    /// that may block).
    AfterDelay,
    /// Left to the caller in [`Applied::deferred`], to delete with [`delete_chains`] once
    /// [`STALE_CHAIN_DELAY`] has passed (kernel < 6.2, the daemon's loop).
    Return,
}

impl ChainDeletes {
    /// [`ChainDeletes::Inline`] when the kernel allows it, else `deferred`.
    pub fn for_kernel(needs_deferred: bool, deferred: ChainDeletes) -> ChainDeletes {
        if needs_deferred {
            deferred
        } else {
            ChainDeletes::Inline
        }
    }
}

/// How one [`apply`] runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Options {
    pub chain_deletes: ChainDeletes,
    /// Only compute the transaction ([`Applied::tx`]); send nothing.
    pub dry_run: bool,
}

/// What one apply did.
#[derive(Clone, Debug, Default)]
pub struct Applied {
    /// For a dry run, the transaction that would be sent; empty after a real apply (the
    /// backend consumed it: [`Backend::commit`]). `stats` describes it either way.
    pub tx: Transaction,
    pub stats: TxStats,
    pub report: ApplyReport,
    /// Chains deleted in a follow-up transaction ([`ChainDeletes::AfterDelay`]).
    pub deferred_deleted: usize,
    /// Chains left for the caller to delete ([`ChainDeletes::Return`]).
    pub deferred: Vec<(TableRef, String)>,
    /// Time from reading the kernel's state (or from the diff, for a given base) to
    /// commit (both transactions).
    pub elapsed: Duration,
    /// Time from sending the transaction to the kernel's acknowledgement (the first
    /// transaction only; zero for a dry run).
    pub commit_elapsed: Duration,
}

/// Whether this kernel refuses to delete a chain in the transaction that removed its last
/// reference from a map (fixed in 6.2). `release` is `uname -r`.
pub fn kernel_needs_deferred_chain_deletes(release: &str) -> bool {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    (major, minor) < (6, 2)
}

/// This machine's kernel release (`/proc/sys/kernel/osrelease`), or "" if unreadable.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Makes the kernel hold `target`: diffs it against `base` and commits the difference in
/// one atomic transaction; with `opts.dry_run`, only computes it. Takes both rulesets by
/// value: what the target adds moves into the transaction, the base is dropped as soon as
/// the transaction exists, and the backend drops each operation once encoded (at 50k
/// services the ruleset, the transaction and the batch are each 70–200 MiB: the sync's
/// memory peak).
pub fn apply(
    backend: &mut dyn Backend,
    base: Base,
    target: Ruleset,
    opts: &Options,
) -> Result<Applied, BackendError> {
    let start = Instant::now();
    let diff_opts = DiffOptions {
        defer_chain_deletes: opts.chain_deletes != ChainDeletes::Inline,
    };
    let d = match base {
        // The kernel's declarations, chains and rules first; each set's elements only as
        // the diff reaches that set, dropped once compared.
        Base::Kernel | Base::Declarations(_) => {
            let base = match base {
                Base::Declarations(rs) => rs,
                _ => backend.dump_declarations()?,
            };
            let mut failed = None;
            let d = diff_lazy(&base, target, &diff_opts, &mut |table, set| {
                if failed.is_some() {
                    return Some(Elements::default());
                }
                match backend.set_elements(table, set) {
                    Ok(e) => Some(e),
                    Err(e) => {
                        failed = Some(e);
                        Some(Elements::default())
                    }
                }
            });
            if let Some(e) = failed {
                return Err(e);
            }
            d
        }
        Base::Given(base) => diff_owned(&base, target, &diff_opts),
    };
    let stats = d.tx.stats();
    if opts.dry_run {
        return Ok(Applied {
            tx: d.tx,
            stats,
            deferred: d.deferred,
            elapsed: start.elapsed(),
            ..Applied::default()
        });
    }
    let sent = Instant::now();
    let report = backend.commit(d.tx)?;
    let commit_elapsed = sent.elapsed();
    let mut applied = Applied {
        stats,
        report,
        commit_elapsed,
        ..Applied::default()
    };
    if !d.deferred.is_empty() {
        if opts.chain_deletes == ChainDeletes::AfterDelay {
            std::thread::sleep(STALE_CHAIN_DELAY);
            delete_chains(backend, d.deferred.iter().cloned())?;
            applied.deferred_deleted = d.deferred.len();
        } else {
            applied.deferred = d.deferred;
        }
    }
    applied.elapsed = start.elapsed();
    Ok(applied)
}

/// Deletes these chains in one transaction (the deferred deletes of kernels < 6.2).
pub fn delete_chains(
    backend: &mut dyn Backend,
    chains: impl IntoIterator<Item = (TableRef, String)>,
) -> Result<ApplyReport, BackendError> {
    let mut tx = Transaction::new();
    for (table, chain) in chains {
        tx.push(Op::DeleteChain { table, chain });
    }
    backend.apply(&tx)
}

/// Deletes kproxy's tables (those present among `tables`), nothing else. Returns the
/// tables removed.
pub fn cleanup(
    backend: &mut dyn Backend,
    tables: &[TableRef],
) -> Result<Vec<TableRef>, BackendError> {
    let current = backend.dump()?;
    let present: Vec<TableRef> = tables
        .iter()
        .filter(|t| {
            current
                .tables
                .iter()
                .any(|c| c.family == t.family && c.name == t.name)
        })
        .cloned()
        .collect();
    if present.is_empty() {
        return Ok(present);
    }
    let mut tx = Transaction::new();
    for t in &present {
        tx.push(Op::DeleteTable { table: t.clone() });
    }
    backend.apply(&tx)?;
    Ok(present)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions() {
        assert!(kernel_needs_deferred_chain_deletes("5.15.0-91-generic"));
        assert!(kernel_needs_deferred_chain_deletes("6.1.0-17-amd64"));
        assert!(!kernel_needs_deferred_chain_deletes("6.2.0"));
        assert!(!kernel_needs_deferred_chain_deletes("6.18.44-fc-v769"));
        assert!(!kernel_needs_deferred_chain_deletes("7.0"));
    }
}
