//! Backends: where transactions are applied and current state is read back.
//!
//! Owns: the [`Backend`] seam. `netlink` is the only code that touches the kernel's
//! nftables; `fake` is the in-memory, validating, all-or-nothing test double. `sync` and
//! `kproxy apply` are written against the trait and never know which one they drive.

#[cfg(any(test, feature = "test-util"))]
pub mod fake;
pub mod netlink;

use std::fmt;

use crate::nft::tx::{TableRef, Transaction};
use crate::nft::{Elements, Ruleset, Set};

/// What applying a transaction cost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Netlink messages sent (0 for an empty transaction, which is not sent at all).
    pub messages: usize,
    /// Bytes of the encoded batch.
    pub bytes: usize,
}

/// One operation the kernel (or the fake) refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpFailure {
    /// Index of the operation in the transaction.
    pub index: usize,
    /// `Op::describe()` of it, plus the object it names where useful.
    pub op: String,
    /// The errno the kernel reported (e.g. `libc::ENOENT`).
    pub errno: i32,
}

impl fmt::Display for OpFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "operation #{} ({}): {}",
            self.index,
            self.op,
            std::io::Error::from_raw_os_error(self.errno)
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The transaction was refused as a whole; nothing changed. Every failing operation
    /// the kernel reported is listed (the first is usually the cause).
    #[error("transaction rejected, nothing changed: {}", .failures.iter().map(|f| f.to_string()).collect::<Vec<_>>().join("; "))]
    Rejected { failures: Vec<OpFailure> },
    /// Talking to the kernel failed (socket, buffer sizes, truncated replies).
    #[error("netlink: {0}")]
    Netlink(String),
    #[error("netlink I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// Applies transactions and reads state back.
pub trait Backend {
    /// Applies `tx` atomically: on `Ok` every operation is committed; on `Err` nothing
    /// changed. An empty transaction succeeds without sending anything.
    fn apply(&mut self, tx: &Transaction) -> Result<ApplyReport, BackendError>;
    /// As [`Backend::apply`], taking the transaction: a backend may drop each operation's
    /// payload once it has encoded it (the netlink backend does: at 50k services the
    /// transaction and its encoded batch are the sync's memory peak). Errors name
    /// operations by their index, as `apply` does.
    fn commit(&mut self, tx: Transaction) -> Result<ApplyReport, BackendError> {
        self.apply(&tx)
    }
    /// kproxy's tables (`ip` and `ip6`, by the backend's table name) as they are now;
    /// a missing table is simply absent. Elements of dynamic sets (affinity) are the
    /// runtime contents and must be ignored by callers that compare.
    fn dump(&mut self) -> Result<Ruleset, BackendError>;
    /// The nftables generation id: it changes with every commit anyone makes in this
    /// network namespace, so a change not made by kproxy means its tables may have been
    /// touched. `None` when the backend cannot tell (drift checks are then skipped).
    fn nft_generation(&mut self) -> Result<Option<u32>, BackendError> {
        Ok(None)
    }
    /// [`Backend::dump`] without the sets' elements (every set's declaration, every chain
    /// and rule): what a diff against the kernel starts from, reading each set's elements
    /// with [`Backend::set_elements`] only when it compares that set, so that the
    /// kernel's copy of kproxy's tables is never held whole beside the next ruleset (at
    /// 50k × 10 the elements are three quarters of a dump's 210 MiB).
    fn dump_declarations(&mut self) -> Result<Ruleset, BackendError> {
        let mut rs = self.dump()?;
        for t in &mut rs.tables {
            for s in t.sets.values_mut() {
                s.elements = Elements::default();
            }
        }
        Ok(rs)
    }
    /// The elements of `set` (as declared in a [`Backend::dump_declarations`]) in `table`,
    /// as they are now; none if the set or table is gone.
    fn set_elements(&mut self, table: &TableRef, set: &Set) -> Result<Elements, BackendError> {
        let rs = self.dump()?;
        Ok(rs
            .tables
            .into_iter()
            .find(|t| t.family == table.family && t.name == table.name)
            .and_then(|mut t| t.sets.remove(&set.name))
            .map(|s| s.elements)
            .unwrap_or_default())
    }
}
