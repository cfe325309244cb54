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
//! Must not: be used outside tests and dry runs; touch the kernel.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use super::{ApplyReport, Backend, BackendError, OpFailure};
use crate::nft::tx::{ChainDecl, Op, TableRef, Transaction};
use crate::nft::{
    Chain, DataType, Element, ElementData, Family, Field, Rule, Ruleset, Set, SetData, Stmt, Table,
    Value, Verdict, NAME_MAX,
};

/// An in-memory, validating, all-or-nothing nftables.
#[derive(Clone, Debug, Default)]
pub struct FakeBackend {
    state: Ruleset,
    pre_6_2: bool,
    last: Option<Transaction>,
    applies: usize,
    commits: usize,
    inject: Option<i32>,
    /// Times [`FakeBackend::state_mut`] was called: edits by "someone else".
    outside_edits: u32,
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
    /// program's edits).
    pub fn state_mut(&mut self) -> &mut Ruleset {
        self.outside_edits += 1;
        &mut self.state
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
        Ok(ApplyReport {
            messages: tx.len(),
            bytes: 0,
        })
    }

    fn dump(&mut self) -> Result<Ruleset, BackendError> {
        Ok(self.state.clone())
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
        if let Some(set) = s.set() {
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

/// Netlink attribute policies cap names at `NFT_NAME_MAXLEN - 1` bytes (`ERANGE`).
fn check_name(name: &str) -> Result<(), Fail> {
    if name.is_empty() || name.len() > NAME_MAX {
        return fail(libc::ERANGE, format!("name of {} bytes", name.len()));
    }
    Ok(())
}

fn add_chain(w: &mut WTable, decl: &ChainDecl) -> Result<(), Fail> {
    check_name(&decl.name)?;
    match w.t.chains.get(decl.name.as_str()) {
        // An existing chain is left alone; a hook, type or priority that differs is refused
        // (the kernel cannot move a chain to another hook). A comment is ignored.
        Some(c) => {
            if decl.base.is_some() && decl.base != c.base {
                return fail(
                    libc::EEXIST,
                    format!("chain {} exists with another declaration", decl.name),
                );
            }
            Ok(())
        }
        None => {
            w.t.add_chain(Chain {
                name: decl.name.clone(),
                base: decl.base.clone(),
                comment: decl.comment.clone(),
                rules: Vec::new(),
            });
            Ok(())
        }
    }
}

fn add_set(family: Family, w: &mut WTable, set: &Set) -> Result<(), Fail> {
    check_name(&set.name)?;
    let name = &set.name;
    if set.key.is_empty() || set.key.contains(&DataType::Verdict) {
        return fail(libc::EINVAL, format!("set {name}: invalid key type"));
    }
    if let SetData::Values(v) = &set.data {
        if v.is_empty() || v.contains(&DataType::Verdict) {
            return fail(libc::EINVAL, format!("map {name}: invalid data type"));
        }
    }
    for t in set.key.iter().chain(match &set.data {
        SetData::Values(v) => v.as_slice(),
        _ => &[],
    }) {
        if matches!(
            (family, t),
            (Family::V4, DataType::Ipv6Addr) | (Family::V6, DataType::Ipv4Addr)
        ) {
            // Not a kernel error (it only sees lengths), but never meant.
            return fail(
                libc::EINVAL,
                format!("set {name}: address of the other family"),
            );
        }
    }
    if set.timeout.is_some() && !set.flags.timeout {
        return fail(
            libc::EINVAL,
            format!("set {name}: timeout without the timeout flag"),
        );
    }
    match w.t.sets.get(name.as_str()) {
        Some(s) => {
            let same = s.key == set.key
                && s.data == set.data
                && s.flags == set.flags
                && s.timeout == set.timeout
                && s.size == set.size;
            if !same {
                return fail(
                    libc::EEXIST,
                    format!("set {name} exists with another declaration"),
                );
            }
            Ok(())
        }
        None => {
            let mut s = set.clone();
            s.elements = Default::default();
            w.t.add_set(s);
            Ok(())
        }
    }
}

/// Bytes of a packet field (what the kernel compares with a set's key length).
fn field_len(family: Family, f: &Field) -> usize {
    match f {
        Field::Saddr | Field::Daddr => DataType::addr(family).byte_len(),
        Field::L4Proto => 1,
        Field::ThDport | Field::Dport(_) => 2,
        Field::Mark | Field::MarkAnd(_) | Field::Numgen { .. } => 4,
        Field::Iifname => 16,
        Field::FibSaddrType | Field::FibDaddrType | Field::CtState | Field::CtStatus => 4,
    }
}

fn key_fits(family: Family, key: &[Field], types: &[DataType]) -> bool {
    key.len() == types.len()
        && key
            .iter()
            .zip(types)
            .all(|(f, t)| field_len(family, f) == t.byte_len())
}

fn addr_family_ok(family: Family, v: &Value) -> bool {
    match v {
        Value::Addr(a) => family.contains(a),
        Value::Net(n) => family.contains(&n.ip()),
        _ => true,
    }
}

fn check_stmt(family: Family, t: &Table, s: &Stmt) -> Result<(), Fail> {
    let set = |name: &str| match t.sets.get(name) {
        Some(s) => Ok(s),
        None => fail(libc::ENOENT, format!("set {name} does not exist")),
    };
    match s {
        Stmt::Cmp { field, value, .. } => {
            if matches!(field, Field::Saddr | Field::Daddr) && !addr_family_ok(family, value) {
                return fail(libc::EINVAL, "address of the other family");
            }
        }
        Stmt::Lookup { key, set: name, .. } => {
            let s = set(name)?;
            if s.is_map() {
                return fail(libc::EINVAL, format!("{name} is a map, a set is needed"));
            }
            if !key_fits(family, key, &s.key) {
                return fail(libc::EINVAL, format!("key does not fit set {name}"));
            }
        }
        Stmt::Vmap { key, map } => {
            let s = set(map)?;
            if s.data != SetData::Verdict {
                return fail(libc::EINVAL, format!("{map} is not a verdict map"));
            }
            if !key_fits(family, key, &s.key) {
                return fail(libc::EINVAL, format!("key does not fit map {map}"));
            }
        }
        Stmt::Update { set: name, key } => {
            let s = set(name)?;
            if s.is_map() {
                return fail(libc::EINVAL, format!("{name} is a map, a set is needed"));
            }
            if !s.flags.dynamic {
                return fail(libc::EOPNOTSUPP, format!("set {name} is not dynamic"));
            }
            if !key_fits(family, key, &s.key) {
                return fail(libc::EINVAL, format!("key does not fit set {name}"));
            }
        }
        Stmt::DnatSlot { map, modulus, .. } => {
            let s = set(map)?;
            let want = SetData::Values(vec![DataType::addr(family), DataType::InetService]);
            if s.data != want {
                return fail(
                    libc::EINVAL,
                    format!("{map} is not an address . port data map"),
                );
            }
            if s.key.len() != 1 || s.key[0].byte_len() != 4 {
                return fail(libc::EINVAL, format!("numgen key does not fit map {map}"));
            }
            if *modulus == 0 {
                return fail(libc::ERANGE, "numgen modulus 0");
            }
        }
        Stmt::DnatTo { addr, .. } => {
            if !family.contains(addr) {
                return fail(libc::EINVAL, "address of the other family");
            }
        }
        Stmt::Verdict(v) => check_verdict(t, v)?,
        Stmt::SetMark(_) | Stmt::Masquerade | Stmt::Reject | Stmt::Foreign(_) => {}
    }
    Ok(())
}

fn check_verdict(t: &Table, v: &Verdict) -> Result<(), Fail> {
    if let Some(c) = v.target() {
        match t.chains.get(c) {
            None => return fail(libc::ENOENT, format!("chain {c} does not exist")),
            Some(ch) if ch.base.is_some() => {
                return fail(libc::EOPNOTSUPP, format!("{c} is a base chain"))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Does a value fit a declared type? Prefixes only in interval keys.
fn value_fits(v: &Value, t: DataType, interval: bool) -> bool {
    match (t, v) {
        (DataType::Ipv4Addr, Value::Addr(IpAddr::V4(_))) => true,
        (DataType::Ipv6Addr, Value::Addr(IpAddr::V6(_))) => true,
        (DataType::Ipv4Addr, Value::Net(n)) => interval && n.is_ipv4(),
        (DataType::Ipv6Addr, Value::Net(n)) => interval && n.is_ipv6(),
        (DataType::InetProto, Value::Proto(_)) => true,
        (DataType::InetService, Value::Port(_)) => true,
        (DataType::Mark | DataType::Slot, Value::Int(_)) => true,
        _ => false,
    }
}

fn check_element(t: &Table, s: &Set, e: &Element) -> Result<(), Fail> {
    let name = &s.name;
    if e.key.len() != s.key.len()
        || !e
            .key
            .iter()
            .zip(&s.key)
            .all(|(v, t)| value_fits(v, *t, s.flags.interval))
    {
        return fail(libc::EINVAL, format!("element key does not fit set {name}"));
    }
    match (&s.data, &e.data) {
        (SetData::None, ElementData::None) => Ok(()),
        (SetData::Verdict, ElementData::Verdict(v)) => check_verdict(t, v),
        (SetData::Values(types), ElementData::Values(vs))
            if vs.len() == types.len()
                && vs.iter().zip(types).all(|(v, t)| value_fits(v, *t, false)) =>
        {
            Ok(())
        }
        _ => fail(
            libc::EINVAL,
            format!("element data does not fit set {name}"),
        ),
    }
}

/// The range an address or prefix covers (as 128-bit numbers), for interval overlaps.
fn span(v: &Value) -> Option<(u128, u128)> {
    let num = |ip: IpAddr| match ip {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    };
    match v {
        Value::Addr(a) => Some((num(*a), num(*a))),
        Value::Net(n) => Some((num(n.network()), num(n.broadcast()))),
        _ => None,
    }
}

/// Do two interval elements cover a common point (every part overlaps)?
fn overlaps(a: &[Value], b: &[Value]) -> bool {
    a.iter().zip(b).all(|(x, y)| match (span(x), span(y)) {
        (Some((xl, xh)), Some((yl, yh))) => xl <= yh && yl <= xh,
        _ => x == y,
    })
}

/// Element ops smaller than this edit in place; bigger ones rebuild the set once.
const BULK: usize = 64;

fn add_elements(w: &mut WTable, set: &str, elements: &[Element]) -> Result<(), Fail> {
    let s = w.set_exists(set)?;
    let mut batch: HashMap<&Vec<Value>, &Element> = HashMap::new();
    let mut accepted: Vec<&Element> = Vec::new();
    for e in elements {
        check_element(&w.t, s, e)?;
        let existing = s
            .elements
            .get(&e.key)
            .or_else(|| batch.get(&e.key).copied());
        if let Some(old) = existing {
            if old.data != e.data {
                return fail(
                    libc::EEXIST,
                    format!("element of {set} exists with other data"),
                );
            }
            continue; // identical: accepted, the existing one (and its comment) stays
        }
        if s.flags.interval
            && (s.elements.iter().any(|o| overlaps(&o.key, &e.key))
                || accepted.iter().any(|o| overlaps(&o.key, &e.key)))
        {
            return fail(
                libc::EEXIST,
                format!("element of {set} overlaps an existing interval"),
            );
        }
        batch.insert(&e.key, e);
        accepted.push(e);
    }
    for e in &accepted {
        if let Some(c) = e.target() {
            inc(&mut w.chain_use, c);
        }
    }
    let s = w.t.sets.get_mut(set).expect("checked above");
    if accepted.len() < BULK {
        for e in accepted {
            s.insert(e.clone());
        }
    } else {
        s.extend(accepted.into_iter().cloned().collect());
    }
    Ok(())
}

fn delete_elements(
    w: &mut WTable,
    set: &str,
    keys: &[Vec<Value>],
    pre_6_2: bool,
) -> Result<(), Fail> {
    let s = w.set_exists(set)?;
    let mut gone: HashSet<&Vec<Value>> = HashSet::new();
    let mut released: Vec<Element> = Vec::new();
    for k in keys {
        match s.elements.get(k) {
            Some(e) if !gone.contains(k) => {
                gone.insert(k);
                if e.target().is_some() {
                    released.push(e.clone());
                }
            }
            _ => return fail(libc::ENOENT, format!("element of {set} does not exist")),
        }
    }
    for e in &released {
        w.release_element(e, pre_6_2);
    }
    let s = w.t.sets.get_mut(set).expect("checked above");
    if keys.len() < BULK {
        for k in keys {
            s.elements.remove(k);
        }
    } else {
        s.elements = s
            .elements
            .iter()
            .filter(|e| !gone.contains(&e.key))
            .cloned()
            .collect();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nft::tx::ChainDecl;
    use crate::nft::{ChainType, Hook, Protocol};

    fn tref() -> TableRef {
        TableRef::new(Family::V4, "kproxy")
    }

    fn add_table() -> Op {
        Op::AddTable {
            table: tref(),
            comment: None,
        }
    }

    fn add_chain(name: &str) -> Op {
        Op::AddChain {
            table: tref(),
            chain: ChainDecl {
                name: name.into(),
                base: None,
                comment: None,
            },
        }
    }

    fn add_base(name: &str) -> Op {
        Op::AddChain {
            table: tref(),
            chain: ChainDecl {
                name: name.into(),
                base: Some(crate::nft::BaseChain {
                    kind: ChainType::Nat,
                    hook: Hook::Prerouting,
                    priority: -100,
                }),
                comment: None,
            },
        }
    }

    fn rule(chain: &str, stmts: Vec<Stmt>) -> Op {
        Op::AddRule {
            table: tref(),
            chain: chain.into(),
            rule: Rule::new(stmts),
        }
    }

    fn vmap() -> Set {
        Set::new(
            "vmap",
            vec![
                DataType::Ipv4Addr,
                DataType::InetProto,
                DataType::InetService,
            ],
            SetData::Verdict,
        )
    }

    fn add_set(s: Set) -> Op {
        Op::AddSet {
            table: tref(),
            set: Box::new(s),
        }
    }

    fn key(i: u8) -> Vec<Value> {
        vec![
            Value::Addr(IpAddr::from([10, 0, 0, i])),
            Value::Proto(Protocol::Tcp),
            Value::Port(80),
        ]
    }

    fn add_el(set: &str, elements: Vec<Element>) -> Op {
        Op::AddElements {
            table: tref(),
            set: set.into(),
            elements,
        }
    }

    fn del_el(set: &str, keys: Vec<Vec<Value>>) -> Op {
        Op::DeleteElements {
            table: tref(),
            set: set.into(),
            keys,
        }
    }

    fn del_chain(name: &str) -> Op {
        Op::DeleteChain {
            table: tref(),
            chain: name.into(),
        }
    }

    fn flush(name: &str) -> Op {
        Op::FlushChain {
            table: tref(),
            chain: name.into(),
        }
    }

    fn tx(ops: Vec<Op>) -> Transaction {
        Transaction { ops }
    }

    /// The (index, errno) a transaction is refused with.
    fn refused(b: &mut FakeBackend, t: &Transaction) -> (usize, i32) {
        let before = b.state().clone();
        match b.apply(t) {
            Err(BackendError::Rejected { failures }) => {
                assert_eq!(failures.len(), 1);
                assert!(failures[0]
                    .op
                    .starts_with(&t.ops[failures[0].index].describe()));
                assert_eq!(b.state(), &before, "a refused transaction changes nothing");
                (failures[0].index, failures[0].errno)
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    /// A table with a vmap entering chain `svc`, referenced from `services`.
    fn base() -> FakeBackend {
        let mut b = FakeBackend::new();
        b.apply(&tx(vec![
            add_table(),
            add_set(vmap()),
            add_chain("services"),
            add_chain("svc"),
            add_base("nat-prerouting"),
            rule("nat-prerouting", vec![Stmt::jump("services")]),
            rule(
                "services",
                vec![Stmt::Vmap {
                    key: vec![Field::Daddr, Field::L4Proto, Field::ThDport],
                    map: "vmap".into(),
                }],
            ),
            rule("svc", vec![Stmt::Verdict(Verdict::Accept)]),
            add_el(
                "vmap",
                vec![Element::verdict(key(1), Verdict::Goto("svc".into()))],
            ),
        ]))
        .expect("valid");
        b
    }

    #[test]
    fn applies_and_dumps() {
        let mut b = base();
        let rs = b.dump().unwrap();
        let t = rs.table(Family::V4).unwrap();
        assert_eq!(t.chains.len(), 3);
        assert_eq!(t.sets["vmap"].elements.len(), 1);
        assert_eq!(b.applies(), 1);
        assert_eq!(b.commits(), 1);
        assert_eq!(b.last_transaction().unwrap().len(), 9);
        // Empty transactions succeed and send nothing.
        assert_eq!(
            b.apply(&Transaction::new()).unwrap(),
            ApplyReport::default()
        );
        assert_eq!(b.commits(), 1);
    }

    #[test]
    fn missing_objects_are_enoent() {
        let mut b = base();
        for op in [
            rule("nope", vec![]),
            rule("services", vec![Stmt::jump("later")]),
            rule(
                "services",
                vec![Stmt::Lookup {
                    key: vec![Field::Daddr],
                    set: "nope".into(),
                    negate: false,
                }],
            ),
            add_el(
                "vmap",
                vec![Element::verdict(key(2), Verdict::Jump("later".into()))],
            ),
            add_el("nope", vec![]),
            del_el("vmap", vec![key(9)]),
            del_chain("nope"),
            flush("nope"),
            Op::DeleteSet {
                table: tref(),
                set: "nope".into(),
            },
            Op::DeleteTable {
                table: TableRef::new(Family::V6, "kproxy"),
            },
            Op::AddChain {
                table: TableRef::new(Family::V6, "kproxy"),
                chain: ChainDecl {
                    name: "x".into(),
                    base: None,
                    comment: None,
                },
            },
        ] {
            assert_eq!(
                refused(&mut b, &tx(vec![op.clone()])),
                (0, libc::ENOENT),
                "{op:?}"
            );
        }
        // A target that exists only later in the transaction is refused too, at its index.
        let t = tx(vec![
            rule("services", vec![Stmt::jump("later")]),
            add_chain("later"),
        ]);
        assert_eq!(refused(&mut b, &t), (0, libc::ENOENT));
        let t = tx(vec![
            add_chain("later"),
            rule("services", vec![Stmt::jump("later")]),
        ]);
        b.apply(&t).unwrap();
        // The same key deleted twice in one op.
        let t = tx(vec![del_el("vmap", vec![key(1), key(1)])]);
        assert_eq!(refused(&mut b, &t), (0, libc::ENOENT));
    }

    #[test]
    fn elements_exist_and_clash() {
        let mut b = base();
        // Identical re-add: accepted, no change (comment of the existing one kept).
        let same = Element::verdict(key(1), Verdict::Goto("svc".into())).with_comment("new");
        b.apply(&tx(vec![add_el("vmap", vec![same])])).unwrap();
        let t = b.state().table(Family::V4).unwrap();
        assert_eq!(t.sets["vmap"].elements.get(&key(1)).unwrap().comment, None);
        // Other data: EEXIST; delete then add: fine.
        let other = Element::verdict(key(1), Verdict::Drop);
        assert_eq!(
            refused(&mut b, &tx(vec![add_el("vmap", vec![other.clone()])])),
            (0, libc::EEXIST)
        );
        b.apply(&tx(vec![
            del_el("vmap", vec![key(1)]),
            add_el("vmap", vec![other]),
        ]))
        .unwrap();
    }

    #[test]
    fn references_are_busy() {
        let mut b = base();
        // Chain entered by a vmap element.
        assert_eq!(
            refused(&mut b, &tx(vec![flush("svc"), del_chain("svc")])),
            (1, libc::EBUSY)
        );
        // Chain entered by a rule.
        assert_eq!(
            refused(&mut b, &tx(vec![del_chain("services")])),
            (0, libc::EBUSY)
        );
        // Set used by a rule.
        let del_set = Op::DeleteSet {
            table: tref(),
            set: "vmap".into(),
        };
        assert_eq!(
            refused(&mut b, &tx(vec![del_set.clone()])),
            (0, libc::EBUSY)
        );
        // Flushing the referrer first makes both deletions valid; a chain with rules may
        // be deleted (the kernel drops them with it).
        b.apply(&tx(vec![
            flush("nat-prerouting"),
            flush("services"),
            del_set,
            del_chain("services"),
            del_chain("svc"),
        ]))
        .unwrap();
        let t = b.state().table(Family::V4).unwrap();
        assert_eq!(t.chains.len(), 1);
        assert!(t.sets.is_empty());
    }

    #[test]
    fn pre_6_2_refuses_chain_delete_after_element_delete() {
        let t = tx(vec![del_el("vmap", vec![key(1)]), del_chain("svc")]);
        let mut b = base();
        b.apply(&t).unwrap();
        let mut old = FakeBackend::with_state(base().state().clone()).kernel_pre_6_2();
        assert_eq!(refused(&mut old, &t), (1, libc::EBUSY));
        // In two transactions it works.
        old.apply(&tx(vec![del_el("vmap", vec![key(1)])])).unwrap();
        old.apply(&tx(vec![del_chain("svc")])).unwrap();
        // Replacing the element's verdict also pins the old target.
        let mut old = FakeBackend::with_state(base().state().clone()).kernel_pre_6_2();
        let t = tx(vec![
            del_el("vmap", vec![key(1)]),
            add_el("vmap", vec![Element::verdict(key(1), Verdict::Drop)]),
            del_chain("svc"),
        ]);
        assert_eq!(refused(&mut old, &t), (2, libc::EBUSY));
        assert_eq!(FakeBackend::pre_6_2().state(), &Ruleset::default());
    }

    #[test]
    fn kinds_are_einval() {
        let mut b = base();
        let ips = Set::new("ips", vec![DataType::Ipv4Addr], SetData::None);
        b.apply(&tx(vec![add_set(ips)])).unwrap();
        let lookup = |set: &str, key: Vec<Field>| {
            rule(
                "services",
                vec![Stmt::Lookup {
                    key,
                    set: set.into(),
                    negate: false,
                }],
            )
        };
        let net: ipnetwork::IpNetwork = "10.0.0.0/8".parse().unwrap();
        let bad = [
            // Map where a set is needed, and the reverse.
            lookup("vmap", vec![Field::Daddr, Field::L4Proto, Field::ThDport]),
            rule(
                "services",
                vec![Stmt::Vmap {
                    key: vec![Field::Daddr],
                    map: "ips".into(),
                }],
            ),
            // Key arity / length.
            lookup("ips", vec![Field::Daddr, Field::ThDport]),
            lookup("ips", vec![Field::ThDport]),
            // Element arity, kinds, data.
            add_el("ips", vec![Element::key(vec![Value::Port(1)])]),
            add_el("ips", vec![Element::key(vec![Value::Net(net)])]),
            add_el(
                "ips",
                vec![Element::verdict(
                    vec![Value::Addr([1, 1, 1, 1].into())],
                    Verdict::Drop,
                )],
            ),
            add_el("vmap", vec![Element::key(key(3))]),
            add_el(
                "vmap",
                vec![Element::verdict(key(3)[..2].to_vec(), Verdict::Drop)],
            ),
            add_el(
                "vmap",
                vec![Element::verdict(
                    vec![
                        Value::Addr("::1".parse().unwrap()),
                        Value::Proto(Protocol::Tcp),
                        Value::Port(1),
                    ],
                    Verdict::Drop,
                )],
            ),
            rule(
                "services",
                vec![Stmt::DnatSlot {
                    proto: Protocol::Tcp,
                    modulus: 1,
                    offset: 0,
                    map: "vmap".into(),
                }],
            ),
        ];
        for op in bad {
            assert_eq!(
                refused(&mut b, &tx(vec![op.clone()])),
                (0, libc::EINVAL),
                "{op:?}"
            );
        }
        // Jumping to a base chain.
        let t = tx(vec![rule("services", vec![Stmt::jump("nat-prerouting")])]);
        assert_eq!(refused(&mut b, &t), (0, libc::EOPNOTSUPP));
    }

    #[test]
    fn declarations_cannot_change_in_place() {
        let mut b = base();
        let mut s = vmap();
        s.comment = Some("a comment is ignored".into());
        b.apply(&tx(vec![
            add_set(s.clone()),
            add_chain("svc"),
            add_base("nat-prerouting"),
        ]))
        .unwrap();
        assert_eq!(
            b.state().table(Family::V4).unwrap().sets["vmap"].comment,
            None
        );
        s.flags.interval = true;
        assert_eq!(refused(&mut b, &tx(vec![add_set(s)])), (0, libc::EEXIST));
        let mut c = add_base("svc");
        assert_eq!(refused(&mut b, &tx(vec![c.clone()])), (0, libc::EEXIST));
        if let Op::AddChain { chain, .. } = &mut c {
            chain.name = "nat-prerouting".into();
            chain.base.as_mut().unwrap().priority = 0;
        }
        assert_eq!(refused(&mut b, &tx(vec![c])), (0, libc::EEXIST));
    }

    #[test]
    fn intervals_do_not_overlap() {
        let mut b = base();
        let mut s = Set::new("cidrs", vec![DataType::Ipv4Addr], SetData::None);
        s.flags.interval = true;
        let net = |s: &str| Element::key(vec![Value::Net(s.parse().unwrap())]);
        b.apply(&tx(vec![
            add_set(s),
            add_el("cidrs", vec![net("10.0.0.0/16")]),
        ]))
        .unwrap();
        let t = tx(vec![add_el("cidrs", vec![net("10.0.0.0/8")])]);
        assert_eq!(refused(&mut b, &t), (0, libc::EEXIST));
        b.apply(&tx(vec![
            del_el("cidrs", vec![net("10.0.0.0/16").key]),
            add_el("cidrs", vec![net("10.0.0.0/8"), net("192.168.0.0/16")]),
        ]))
        .unwrap();
    }

    #[test]
    fn injected_failure_then_retry() {
        let mut b = base();
        let before = b.state().clone();
        b.fail_next(libc::ENOBUFS);
        let t = tx(vec![add_chain("x")]);
        assert_eq!(refused(&mut b, &t), (0, libc::ENOBUFS));
        assert_eq!(b.state(), &before);
        b.apply(&t).unwrap();
        assert_eq!(b.applies(), 3);
        assert_eq!(b.commits(), 2);
        assert_eq!(b.last_transaction(), Some(&t));
    }

    #[test]
    fn bulk_element_ops() {
        let mut b = base();
        let mut s = Set::new("marks", vec![DataType::Mark], SetData::None);
        s.size = Some(1000);
        let els: Vec<Element> = (0..500)
            .rev()
            .map(|i| Element::key(vec![Value::Int(i)]))
            .collect();
        b.apply(&tx(vec![add_set(s), add_el("marks", els)]))
            .unwrap();
        let keys: Vec<Vec<Value>> = (0..500).step_by(2).map(|i| vec![Value::Int(i)]).collect();
        b.apply(&tx(vec![del_el("marks", keys)])).unwrap();
        let t = b.state().table(Family::V4).unwrap();
        let left: Vec<u32> = t.sets["marks"]
            .elements
            .iter()
            .map(|e| match e.key[0] {
                Value::Int(i) => i,
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(left, (1..500).step_by(2).collect::<Vec<u32>>());
    }
}
