//! Backends: where transactions are applied and current state is read back.
//!
//! Owns: the [`Backend`] seam. `netlink` is the only code that touches the kernel's
//! nftables; `fake` is the in-memory, validating, all-or-nothing test double. `sync` and
//! `kproxy apply` are written against the trait and never know which one they drive.
//!
//! Also the drift watch's vocabulary: a backend that can [`Backend::watch`] the kernel's
//! change notifications reports what other programs' commits touched in kproxy's tables
//! ([`Watched`], [`Touched`]) and reads back just those objects
//! ([`Backend::dump_objects`]); one that cannot leaves the sync loop comparing generation
//! ids ([`Backend::nft_generation`]).

#[cfg(any(test, feature = "test-util"))]
pub mod fake;
pub mod netlink;

use std::collections::BTreeSet;
use std::fmt;

use crate::nft::tx::{TableRef, Transaction};
use crate::nft::{Elements, Family, Ruleset, Set};

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

/// Objects of kproxy's tables that commits by other programs touched.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Touched {
    /// Chains created, deleted, or whose rules were added or deleted.
    pub chains: BTreeSet<(Family, String)>,
    /// Sets and maps declared, deleted, or whose elements were added or deleted.
    pub sets: BTreeSet<(Family, String)>,
    /// Why only a full comparison covers what happened (the table itself was created,
    /// deleted or changed; an object kproxy does not read back was touched), if so.
    pub whole: Option<String>,
    /// Who committed, as the kernel names them: `nft (pid 4242)`.
    pub by: BTreeSet<String>,
}

impl Touched {
    pub fn is_empty(&self) -> bool {
        self.chains.is_empty() && self.sets.is_empty() && self.whole.is_none()
    }

    /// Adds what `other` touched.
    pub fn merge(&mut self, other: Touched) {
        self.chains.extend(other.chains);
        self.sets.extend(other.sets);
        if self.whole.is_none() {
            self.whole = other.whole;
        }
        self.by.extend(other.by);
    }

    /// The families with a touched chain or set.
    pub fn families(&self) -> BTreeSet<Family> {
        self.chains
            .iter()
            .chain(&self.sets)
            .map(|(f, _)| *f)
            .collect()
    }

    /// The touched chains (`chains`) or sets of `family`, by name.
    pub fn names(&self, family: Family, chains: bool) -> BTreeSet<String> {
        let of = if chains { &self.chains } else { &self.sets };
        of.iter()
            .filter(|(f, _)| *f == family)
            .map(|(_, n)| n.clone())
            .collect()
    }

    /// `ruleset` cut down to the touched chains and sets (tables of other families
    /// dropped), as [`Backend::dump_objects`] answers.
    pub fn select(&self, mut ruleset: Ruleset) -> Ruleset {
        let families = self.families();
        ruleset.tables.retain(|t| families.contains(&t.family));
        for t in &mut ruleset.tables {
            let (chains, sets) = (self.names(t.family, true), self.names(t.family, false));
            t.chains.retain(|n, _| chains.contains(n));
            t.sets.retain(|n, _| sets.contains(n));
        }
        ruleset
    }
}

/// What a watching backend saw since the last [`Backend::drift`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Watched {
    /// What other programs' commits touched in kproxy's tables.
    pub touched: Touched,
    /// Notifications were lost (the receive buffer overran) or a commit went unseen:
    /// only a full comparison is safe. The reason.
    pub lost: Option<String>,
    /// Commits by other programs that touched kproxy's tables.
    pub kproxy_tables: u64,
    /// Commits by other programs that touched no table of kproxy's (ignored).
    pub other_tables: u64,
}

/// Called by a watching backend, from its own thread, when it has something for
/// [`Backend::drift`]: a change to kproxy's tables, or lost notifications.
pub type Waker = Box<dyn Fn() + Send + Sync>;

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
        Ok(self.dump()?.without_elements())
    }
    /// The elements of `set` (as declared in a [`Backend::dump_declarations`]) in `table`,
    /// as they are now; none if the set or table is gone. No default: one would have to
    /// dump everything per set, making a set-by-set diff quadratic.
    fn set_elements(&mut self, table: &TableRef, set: &Set) -> Result<Elements, BackendError>;
    /// Starts watching the kernel's change notifications, so that [`Backend::drift`]
    /// can say what other programs changed in kproxy's tables; `wake` is called when
    /// there is something to say. `Ok(false)`: this backend cannot watch (the sync loop
    /// then compares [`Backend::nft_generation`]s).
    fn watch(&mut self, wake: Waker) -> Result<bool, BackendError> {
        let _ = wake;
        Ok(false)
    }
    /// What was seen since the last call; `None` when not watching.
    fn drift(&mut self) -> Option<Watched> {
        None
    }
    /// The chains and sets `objects` names, from kproxy's tables as they are now: one
    /// table per family named, holding those of them that exist (a missing table is
    /// absent). The table's own attributes are read too; elements of dynamic sets are the
    /// runtime contents.
    fn dump_objects(&mut self, objects: &Touched) -> Result<Ruleset, BackendError> {
        Ok(objects.select(self.dump()?))
    }
}
