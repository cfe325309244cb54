//! The test double of [`Backend`]: an in-memory nftables that applies transactions the
//! way the kernel does. It is a real model, not a recorder: every operation is validated
//! in order against a working copy of the state as it is at that point of the transaction
//! (the kernel validates each message of a batch when it reaches it), and the transaction
//! is committed whole or not at all.
//!
//! Owns: kernel semantics tests rely on, with the errno the kernel reports:
//! - `ENOENT`: a missing table, chain, set or element; a `jump`/`goto` (rule or
//!   verdict-map element), lookup, vmap, update or dnat map naming an object that does not
//!   exist *yet* at that point of the transaction;
//! - `EEXIST`: an element re-added with different data (an identical one is accepted and
//!   the existing element, comment included, is kept); an interval element overlapping
//!   another; a set or base chain re-declared with a different type, flags, timeout or
//!   hook (the kernel cannot change a declaration in place; a different comment is
//!   silently ignored, as the kernel does);
//! - `EBUSY`: deleting a chain still entered by a rule or a verdict-map element, or a set
//!   still used by a rule;
//! - `EINVAL`: element key or data whose arity or value kinds do not match the set's
//!   declared types (a prefix in a non-interval set, a verdict in a data map, …), a rule
//!   key that does not fit the set, a map used where a set is needed or the reverse, an
//!   address of the other family, a timeout without the timeout flag;
//! - `EOPNOTSUPP`: a jump or goto to a base chain; `update` on a set without the dynamic
//!   flag.
//!
//! Kernel versions: deleting a chain in the same transaction that deleted (or replaced)
//! the last verdict-map element entering it is accepted (kernel >= 6.2). A fake made with
//! [`FakeBackend::pre_6_2`] / [`FakeBackend::kernel_pre_6_2`] refuses it with `EBUSY`, as
//! older kernels do (they drop the element's reference to the chain only at commit), so
//! tests can prove [`crate::diff::DiffOptions::defer_chain_deletes`] works.
//!
//! Not modelled: jump loops (`ELOOP`), hook restrictions of statements (`reject` outside
//! input/forward/output), netlink message sizes. [`ApplyReport::bytes`] is always 0.
//!
//! Neighbours and the drift watch: [`FakeBackend::with_own_table`] makes tables of other
//! names someone else's (not dumped, as the netlink backend dumps only its own);
//! [`FakeBackend::commit_as_neighbour`] is another program's commit, notified to a
//! watching sync loop ([`Backend::watch`]) with the chains and sets it touched in kproxy's
//! tables, as the kernel's notifications name them; [`FakeBackend::state_mut`] is a change
//! no notification reports (a watching loop sees it as lost notifications).
//!
//! Must not: be used outside tests and dry runs; touch the kernel.

use std::collections::{HashMap, HashSet};

mod check;

use super::{ApplyReport, Backend, BackendError, OpFailure, Touched, Waker, Watched};
use crate::nft::tx::{Op, TableRef, Transaction};
use crate::nft::{Chain, Element, Elements, Rule, Ruleset, Set, Table};
use check::{add_chain, add_elements, add_set, check_name, check_stmt, delete_elements};

/// A change another program makes ([`FakeBackend::after_next_commit`]).
type Edit = Box<dyn FnOnce(&mut Ruleset) + Send>;

/// An in-memory, validating, all-or-nothing nftables.
#[derive(Default)]
pub struct FakeBackend {
    state: Ruleset,
    pre_6_2: bool,
    last: Option<Transaction>,
    applies: usize,
    commits: usize,
    inject: Option<i32>,
    /// Times [`FakeBackend::state_mut`] or [`FakeBackend::commit_as_neighbour`] was
    /// called: edits by "someone else".
    outside_edits: u32,
    /// Only tables of this name are kproxy's (dumped, watched); `None`: every table.
    own_table: Option<String>,
    /// Watching ([`Backend::watch`]): what was seen since the last [`Backend::drift`].
    watched: Option<Watched>,
    wake: Option<std::sync::Arc<dyn Fn() + Send + Sync>>,
    /// A neighbour's commit that lands right after kproxy's next commit.
    after_commit: Option<Edit>,
    dumps: usize,
    object_dumps: usize,
}

impl std::fmt::Debug for FakeBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeBackend")
            .field("state", &self.state)
            .field("commits", &self.commits)
            .field("outside_edits", &self.outside_edits)
            .field("watched", &self.watched)
            .finish_non_exhaustive()
    }
}

impl Clone for FakeBackend {
    /// A copy of the kernel's state and counters; not watching, no pending neighbour.
    fn clone(&self) -> Self {
        FakeBackend {
            state: self.state.clone(),
            pre_6_2: self.pre_6_2,
            last: self.last.clone(),
            applies: self.applies,
            commits: self.commits,
            inject: self.inject,
            outside_edits: self.outside_edits,
            own_table: self.own_table.clone(),
            watched: None,
            wake: None,
            after_commit: None,
            dumps: self.dumps,
            object_dumps: self.object_dumps,
        }
    }
}

/// What changed in tables named `own` (all tables when `None`) from `before` to
/// `after`, as the kernel's notifications would name it; and whether anything changed in
/// other tables.
fn touched_between(before: &Ruleset, after: &Ruleset, own: Option<&str>) -> (Touched, bool) {
    let mut t = Touched::default();
    let mut others = false;
    let keys = |rs: &Ruleset| -> Vec<(crate::nft::Family, String)> {
        rs.tables
            .iter()
            .map(|t| (t.family, t.name.clone()))
            .collect()
    };
    let mut tables = keys(before);
    tables.extend(keys(after));
    tables.sort();
    tables.dedup();
    let find = |rs: &Ruleset, f, n: &str| {
        rs.tables
            .iter()
            .find(|t| t.family == f && t.name == n)
            .cloned()
    };
    for (family, name) in tables {
        let (b, a) = (find(before, family, &name), find(after, family, &name));
        if b == a {
            continue;
        }
        if own.is_some_and(|o| o != name) {
            others = true;
            continue;
        }
        match (b, a) {
            (Some(b), Some(a)) if b.comment == a.comment => {
                for c in b.chains.keys().chain(a.chains.keys()) {
                    if b.chains.get(c) != a.chains.get(c) {
                        t.chains.insert((family, c.clone()));
                    }
                }
                for s in b.sets.keys().chain(a.sets.keys()) {
                    if b.sets.get(s) != a.sets.get(s) {
                        t.sets.insert((family, s.clone()));
                    }
                }
            }
            _ => t.whole = Some(format!("table {family} {name} itself was changed")),
        }
    }
    (t, others)
}

impl FakeBackend {
    /// An empty kernel (>= 6.2 semantics).
    pub fn new() -> FakeBackend {
        FakeBackend::default()
    }

    /// A kernel already holding `state` (trusted as is: not validated).
    pub fn with_state(state: Ruleset) -> FakeBackend {
        FakeBackend {
            state: normalized(state),
            ..FakeBackend::default()
        }
    }

    /// An empty kernel older than 6.2 (see the module doc).
    pub fn pre_6_2() -> FakeBackend {
        FakeBackend::new().kernel_pre_6_2()
    }

    /// The same fake with pre-6.2 semantics.
    pub fn kernel_pre_6_2(mut self) -> FakeBackend {
        self.pre_6_2 = true;
        self
    }

    /// What the fake holds now.
    pub fn state(&self) -> &Ruleset {
        &self.state
    }

    /// Changes the state behind kproxy's back (runtime affinity entries, drift, another
    /// program's edits), unseen by the drift watch: a watching loop hears that
    /// notifications were lost.
    pub fn state_mut(&mut self) -> &mut Ruleset {
        self.outside_edits += 1;
        if let Some(w) = &mut self.watched {
            w.lost
                .get_or_insert_with(|| "a commit went unseen (fake)".into());
        }
        self.notify();
        &mut self.state
    }

    /// Only tables named `name` are kproxy's: [`Backend::dump`] returns those, and the
    /// drift watch reports changes to others as other programs' business.
    pub fn with_own_table(mut self, name: &str) -> FakeBackend {
        self.own_table = Some(name.to_string());
        self
    }

    /// Another program commits `edit` (not validated): the generation moves, and a
    /// watching loop is told what it touched in kproxy's tables (or that it touched only
    /// other tables), as the kernel's notifications would tell it.
    pub fn commit_as_neighbour(&mut self, edit: impl FnOnce(&mut Ruleset)) {
        let before = self.state.clone();
        edit(&mut self.state);
        self.state = normalized(std::mem::take(&mut self.state));
        self.outside_edits += 1;
        let (mut touched, others) =
            touched_between(&before, &self.state, self.own_table.as_deref());
        if let Some(w) = &mut self.watched {
            if touched.is_empty() {
                w.other_tables += others as u64;
            } else {
                w.kproxy_tables += 1;
                touched.by.insert("neighbour (pid 4242)".into());
                w.touched.merge(touched);
            }
        }
        self.notify();
    }

    /// `edit` is committed by another program right after kproxy's next commit, before
    /// kproxy can look at anything (between its commit and its check).
    pub fn after_next_commit(&mut self, edit: impl FnOnce(&mut Ruleset) + Send + 'static) {
        self.after_commit = Some(Box::new(edit));
    }

    /// The watch's buffer overruns: notifications are lost.
    pub fn lose_notifications(&mut self) {
        if let Some(w) = &mut self.watched {
            w.lost = Some("the notification buffer overran (fake)".into());
        }
        self.notify();
    }

    /// Full reads of kproxy's tables ([`Backend::dump`]) so far.
    pub fn dumps(&self) -> usize {
        self.dumps
    }

    /// Reads of single objects ([`Backend::dump_objects`]) so far.
    pub fn object_dumps(&self) -> usize {
        self.object_dumps
    }

    fn notify(&self) {
        if let Some(wake) = &self.wake {
            wake();
        }
    }

    /// The transaction most recently passed to [`Backend::apply`], whether it was
    /// committed or refused (empty ones included).
    pub fn last_transaction(&self) -> Option<&Transaction> {
        self.last.as_ref()
    }

    /// Calls of [`Backend::apply`] so far (committed, refused and empty).
    pub fn applies(&self) -> usize {
        self.applies
    }

    /// The generation id: moves with every commit and every outside edit, as the
    /// kernel's does.
    pub fn generation(&self) -> u32 {
        self.commits as u32 + self.outside_edits
    }

    /// Non-empty transactions committed so far.
    pub fn commits(&self) -> usize {
        self.commits
    }

    /// Makes the next non-empty `apply` fail with `errno` on its first operation, without
    /// changing anything (for retry paths). Empty transactions are never sent, so they
    /// neither fail nor consume the injection.
    pub fn fail_next(&mut self, errno: i32) {
        self.inject = Some(errno);
    }

    /// Validates `tx` against the current state and returns the state it would produce,
    /// without committing it.
    pub fn simulate(&self, tx: &Transaction) -> Result<Ruleset, BackendError> {
        let mut w = Work::new(&self.state, self.pre_6_2);
        for (index, op) in tx.ops.iter().enumerate() {
            if let Err(f) = w.apply(op) {
                return Err(BackendError::Rejected {
                    failures: vec![OpFailure {
                        index,
                        op: format!("{}: {}", op.describe(), f.detail),
                        errno: f.errno,
                    }],
                });
            }
        }
        Ok(w.into_ruleset())
    }
}

impl Backend for FakeBackend {
    fn nft_generation(&mut self) -> Result<Option<u32>, BackendError> {
        Ok(Some(self.generation()))
    }

    fn apply(&mut self, tx: &Transaction) -> Result<ApplyReport, BackendError> {
        self.applies += 1;
        self.last = Some(tx.clone());
        if tx.is_empty() {
            return Ok(ApplyReport::default());
        }
        if let Some(errno) = self.inject.take() {
            return Err(BackendError::Rejected {
                failures: vec![OpFailure {
                    index: 0,
                    op: format!("{}: injected failure", tx.ops[0].describe()),
                    errno,
                }],
            });
        }
        self.state = self.simulate(tx)?;
        self.commits += 1;
        if let Some(edit) = self.after_commit.take() {
            self.commit_as_neighbour(edit);
        }
        Ok(ApplyReport {
            messages: tx.len(),
            bytes: 0,
        })
    }

    fn dump(&mut self) -> Result<Ruleset, BackendError> {
        self.dumps += 1;
        let mut rs = self.state.clone();
        if let Some(own) = &self.own_table {
            rs.tables.retain(|t| &t.name == own);
        }
        Ok(rs)
    }

    fn watch(&mut self, wake: Waker) -> Result<bool, BackendError> {
        self.watched.get_or_insert_with(Watched::default);
        self.wake = Some(std::sync::Arc::from(wake));
        Ok(true)
    }

    fn drift(&mut self) -> Option<Watched> {
        self.watched.as_mut().map(std::mem::take)
    }

    fn dump_objects(&mut self, objects: &Touched) -> Result<Ruleset, BackendError> {
        self.object_dumps += 1;
        let mut rs = self.state.clone();
        if let Some(own) = &self.own_table {
            rs.tables.retain(|t| &t.name == own);
        }
        Ok(objects.select(rs))
    }

    fn set_elements(&mut self, table: &TableRef, set: &Set) -> Result<Elements, BackendError> {
        Ok(self
            .state
            .tables
            .iter()
            .find(|t| t.family == table.family && t.name == table.name)
            .and_then(|t| t.sets.get(&set.name))
            .map(|s| s.elements.clone())
            .unwrap_or_default())
    }
}

/// Tables sorted by family and name, as the kernel lists them (and as `render` emits).
fn normalized(mut rs: Ruleset) -> Ruleset {
    rs.tables
        .sort_by(|a, b| (a.family, &a.name).cmp(&(b.family, &b.name)));
    rs
}

/// Why an operation was refused.
struct Fail {
    errno: i32,
    detail: String,
}

fn fail<T>(errno: i32, detail: impl Into<String>) -> Result<T, Fail> {
    Err(Fail {
        errno,
        detail: detail.into(),
    })
}

/// One table of the working copy, with the kernel's use counters.
struct WTable {
    t: Table,
    /// Rules and verdict-map elements entering each chain.
    chain_use: HashMap<String, usize>,
    /// Rule statements using each set.
    set_use: HashMap<String, usize>,
    /// Pre-6.2 kernels: chains an element reference was dropped from in this transaction
    /// (still counted until commit, so they cannot be deleted).
    pinned: HashSet<String>,
}

fn inc(m: &mut HashMap<String, usize>, k: &str) {
    *m.entry(k.to_string()).or_default() += 1;
}

fn dec(m: &mut HashMap<String, usize>, k: &str) {
    if let Some(n) = m.get_mut(k) {
        *n -= 1;
        if *n == 0 {
            m.remove(k);
        }
    }
}

impl WTable {
    fn new(t: Table) -> WTable {
        let mut w = WTable {
            t,
            chain_use: HashMap::new(),
            set_use: HashMap::new(),
            pinned: HashSet::new(),
        };
        let mut chain_use = HashMap::new();
        let mut set_use = HashMap::new();
        for c in w.t.chains.values() {
            for r in &c.rules {
                count_rule(&mut chain_use, &mut set_use, r, true);
            }
        }
        for s in w.t.sets.values() {
            for e in &s.elements {
                if let Some(c) = e.target() {
                    inc(&mut chain_use, c);
                }
            }
        }
        w.chain_use = chain_use;
        w.set_use = set_use;
        w
    }

    fn chain_mut(&mut self, name: &str) -> Result<&mut Chain, Fail> {
        match self.t.chains.get_mut(name) {
            Some(c) => Ok(c),
            None => fail(libc::ENOENT, format!("chain {name} does not exist")),
        }
    }

    fn set_exists(&self, name: &str) -> Result<&Set, Fail> {
        match self.t.sets.get(name) {
            Some(s) => Ok(s),
            None => fail(libc::ENOENT, format!("set {name} does not exist")),
        }
    }

    /// Drops an element's reference to its chain.
    fn release_element(&mut self, e: &Element, pre_6_2: bool) {
        if let Some(c) = e.target() {
            dec(&mut self.chain_use, c);
            if pre_6_2 {
                self.pinned.insert(c.to_string());
            }
        }
    }
}

fn count_rule(
    chain_use: &mut HashMap<String, usize>,
    set_use: &mut HashMap<String, usize>,
    r: &Rule,
    add: bool,
) {
    for s in &r.stmts {
        let f = if add { inc } else { dec };
        if let Some(c) = s.target() {
            f(chain_use, c);
        }
        for set in s.sets() {
            f(set_use, set);
        }
    }
}

/// The working copy a transaction is applied to.
struct Work {
    tables: Vec<WTable>,
    pre_6_2: bool,
}

impl Work {
    fn new(state: &Ruleset, pre_6_2: bool) -> Work {
        Work {
            tables: state.tables.iter().cloned().map(WTable::new).collect(),
            pre_6_2,
        }
    }

    fn into_ruleset(self) -> Ruleset {
        normalized(Ruleset {
            tables: self.tables.into_iter().map(|w| w.t).collect(),
        })
    }

    fn position(&self, r: &TableRef) -> Option<usize> {
        self.tables
            .iter()
            .position(|w| w.t.family == r.family && w.t.name == r.name)
    }

    fn table(&mut self, r: &TableRef) -> Result<&mut WTable, Fail> {
        match self.position(r) {
            Some(i) => Ok(&mut self.tables[i]),
            None => fail(
                libc::ENOENT,
                format!("table {} {} does not exist", r.family, r.name),
            ),
        }
    }

    fn apply(&mut self, op: &Op) -> Result<(), Fail> {
        let pre_6_2 = self.pre_6_2;
        match op {
            Op::AddTable { table, comment } => {
                check_name(&table.name)?;
                if self.position(table).is_none() {
                    let mut t = Table::new(table.family, table.name.clone());
                    t.comment = comment.clone();
                    self.tables.push(WTable::new(t));
                }
                Ok(())
            }
            Op::DeleteTable { table } => {
                self.table(table)?;
                self.tables
                    .retain(|w| !(w.t.family == table.family && w.t.name == table.name));
                Ok(())
            }
            Op::AddChain { table, chain } => add_chain(self.table(table)?, chain),
            Op::FlushChain { table, chain } => {
                let w = self.table(table)?;
                let rules = std::mem::take(&mut w.chain_mut(chain)?.rules);
                for r in &rules {
                    count_rule(&mut w.chain_use, &mut w.set_use, r, false);
                }
                Ok(())
            }
            Op::DeleteChain { table, chain } => {
                let w = self.table(table)?;
                w.chain_mut(chain)?;
                if let Some(n) = w.chain_use.get(chain.as_str()) {
                    return fail(
                        libc::EBUSY,
                        format!("chain {chain} is still entered by {n} rules or elements"),
                    );
                }
                if w.pinned.contains(chain.as_str()) {
                    return fail(
                        libc::EBUSY,
                        format!(
                            "chain {chain}: a map element entering it was deleted in this \
                             transaction (kernel < 6.2 releases it only at commit)"
                        ),
                    );
                }
                let c = w.t.chains.remove(chain.as_str()).expect("checked above");
                for r in &c.rules {
                    count_rule(&mut w.chain_use, &mut w.set_use, r, false);
                }
                Ok(())
            }
            Op::AddRule { table, chain, rule } => {
                let family = table.family;
                let w = self.table(table)?;
                if !w.t.chains.contains_key(chain.as_str()) {
                    return fail(libc::ENOENT, format!("chain {chain} does not exist"));
                }
                for s in &rule.stmts {
                    check_stmt(family, &w.t, s)?;
                }
                count_rule(&mut w.chain_use, &mut w.set_use, rule, true);
                w.chain_mut(chain)?.rules.push(rule.clone());
                Ok(())
            }
            Op::AddSet { table, set } => add_set(table.family, self.table(table)?, set),
            Op::DeleteSet { table, set } => {
                let w = self.table(table)?;
                w.set_exists(set)?;
                if let Some(n) = w.set_use.get(set.as_str()) {
                    return fail(
                        libc::EBUSY,
                        format!("set {set} is still used by {n} rule statements"),
                    );
                }
                let s = w.t.sets.remove(set.as_str()).expect("checked above");
                for e in &s.elements {
                    w.release_element(e, pre_6_2);
                }
                Ok(())
            }
            Op::AddElements {
                table,
                set,
                elements,
            } => add_elements(self.table(table)?, set, elements),
            Op::DeleteElements { table, set, keys } => {
                delete_elements(self.table(table)?, set, keys, pre_6_2)
            }
        }
    }
}

#[cfg(test)]
mod tests;
