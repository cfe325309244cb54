//! One-shot programming: what the kernel holds → diff → one atomic transaction.
//!
//! Owns: the sequence `kproxy apply` (and the demo) runs, written against the
//! [`Backend`] trait so tests drive it with the fake: read back kproxy's tables, diff them
//! against the rendered ruleset (dynamic affinity sets keep their runtime contents), apply,
//! and on kernels before 6.2 delete no-longer-referenced chains in a second transaction a
//! moment later (those kernels refuse to delete a chain in the same transaction that
//! removed the last map element pointing at it). Also `cleanup`: delete kproxy's tables
//! and nothing else.
//!
//! Must not: render, parse manifests or print; the caller does.

use std::time::{Duration, Instant};

use crate::backend::{ApplyReport, Backend, BackendError};
use crate::diff::{diff_owned, DiffOptions};
use crate::nft::tx::{Op, TableRef, Transaction, TxStats};
use crate::nft::Ruleset;

/// How long to wait before deleting chains whose references were removed (kernels < 6.2),
/// as upstream kube-proxy does.
pub const STALE_CHAIN_DELAY: Duration = Duration::from_secs(1);

/// What one apply did.
#[derive(Clone, Debug, Default)]
pub struct Applied {
    /// For a dry run, the transaction that would be sent; empty after a real apply (the
    /// backend consumed it: [`Backend::commit`]). `stats` describes it either way.
    pub tx: Transaction,
    pub stats: TxStats,
    pub report: ApplyReport,
    /// Chains deleted in a follow-up transaction (kernels < 6.2 only).
    pub deferred_deleted: usize,
    /// Time from reading the kernel's state to commit (both transactions).
    pub elapsed: Duration,
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

/// Makes the kernel hold `next`: reads kproxy's tables back, diffs, applies. With
/// `dry_run`, only computes the transaction. Takes `next` by value: what it adds moves
/// into the transaction, and the kernel's state is dropped as soon as the transaction
/// exists, and the backend drops each operation once encoded (at 50k services the ruleset,
/// the transaction and the batch are each 70–200 MiB: the sync's memory peak).
pub fn apply(
    backend: &mut dyn Backend,
    next: Ruleset,
    defer_chain_deletes: bool,
    dry_run: bool,
) -> Result<Applied, BackendError> {
    let start = Instant::now();
    let current = backend.dump()?;
    let d = diff_owned(
        &current,
        next,
        &DiffOptions {
            defer_chain_deletes,
        },
    );
    drop(current);
    let stats = d.tx.stats();
    if dry_run {
        return Ok(Applied {
            tx: d.tx,
            stats,
            elapsed: start.elapsed(),
            ..Applied::default()
        });
    }
    let report = backend.commit(d.tx)?;
    let mut deferred_deleted = 0;
    if !d.deferred.is_empty() {
        std::thread::sleep(STALE_CHAIN_DELAY);
        let mut tx = Transaction::new();
        for (table, chain) in &d.deferred {
            tx.push(Op::DeleteChain {
                table: table.clone(),
                chain: chain.clone(),
            });
        }
        backend.apply(&tx)?;
        deferred_deleted = d.deferred.len();
    }
    Ok(Applied {
        tx: Transaction::new(),
        stats,
        report,
        deferred_deleted,
        elapsed: start.elapsed(),
    })
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
