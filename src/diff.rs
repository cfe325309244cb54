//! `diff` (pure): turns (previous, next) rulesets into the smallest [`Transaction`] that
//! makes what the kernel holds equal to what is meant, ordered so that the kernel accepts
//! every operation at the moment it applies it.
//!
//! Owns: which objects change and in what order. `apply` calls it with a dump read back
//! from the kernel and the next rendered ruleset (full syncs, `kproxy apply`), or with the
//! two *partial* rulesets of `render::incremental` (only the touched objects, before and
//! after: partial syncs), so both paths share one engine.
//!
//! Must not: do I/O, look at anything but its two arguments, or emit operations for
//! objects that are equal on both sides.
//!
//! What is emitted, per table (tables are matched by family and name):
//! - equal sets, chains and elements: nothing;
//! - an element whose data or comment changed: delete its key, then add it (the kernel
//!   keeps an existing element's comment and refuses new data for an existing key);
//! - a chain whose rules changed: `flush chain` and every rule re-added;
//! - a set or chain whose *declaration* changed (types, flags, timeout, size, comment; a
//!   base chain's type, hook or priority): deleted and re-created, after everything that
//!   references it has been flushed (rules) or deleted (verdict-map elements), and those
//!   references restored afterwards. The kernel cannot update a declaration in place;
//! - dynamic sets (`flags.dynamic`, affinity): only the declaration is compared; their
//!   elements are the kernel's runtime contents and are never touched;
//! - a table only in `next`: a full load; only in `prev`: `delete table` (which drops
//!   everything in it); in both with a different comment: deleted first, then fully
//!   loaded (a table's comment cannot be changed either).
//!
//! Order of the operations (every table's ops of one phase before the next phase):
//! 1. delete tables to be re-created;
//! 2. add tables; 3. add new sets; 4. add new chains (empty);
//! 5. delete stale or changed elements;
//! 6. flush changed chains, chains referencing a set or chain to be re-created, and
//!    removed chains that do;
//! 7. delete re-created sets, delete re-created chains, add them again (chains, then sets);
//! 8. add rules (changed, new and re-created chains, and the referrers flushed in 6);
//! 9. add elements (changed and new, and every element of new or re-created sets);
//! 10. flush removed chains; 11. delete removed sets; 12. delete removed chains (or, with
//!     [`DiffOptions::defer_chain_deletes`], list them in [`Diff::deferred`]);
//! 13. delete removed tables.
//!
//! Removed sets are deleted *before* removed chains (not after): a removed verdict map may
//! still hold elements that jump to removed chains, and a chain cannot be deleted while an
//! element refers to it. Rules referencing a removed set are gone by then (their chains
//! were flushed in 6 or 10, or rewritten in 8).
//!
//! Elements are grouped per set into one operation each, split into chunks of at most
//! [`MAX_ELEMENTS_PER_OP`]. Everything is iterated in name order, so the output is
//! deterministic.

use std::collections::{BTreeMap, BTreeSet};

use crate::nft::tx::{ChainDecl, Op, TableRef, Transaction};
use crate::nft::{Chain, Element, Elements, Ruleset, Set, Table, Value};

/// Most elements one `AddElements` / `DeleteElements` operation carries (keeps netlink
/// messages well below the socket buffer sizes).
pub const MAX_ELEMENTS_PER_OP: usize = 10_000;

/// How the diff is shaped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiffOptions {
    /// Flush removed chains but do not delete them; return them in [`Diff::deferred`] so
    /// the caller deletes them in a later transaction. Needed on kernels before 6.2, which
    /// refuse (`EBUSY`) to delete a chain in the same transaction that deleted a
    /// verdict-map element referring to it (upstream kube-proxy's `staleChains`).
    pub defer_chain_deletes: bool,
}

/// The result of [`diff`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diff {
    pub tx: Transaction,
    /// Chains that are flushed (empty) by `tx` but not deleted, to be deleted later
    /// (only with [`DiffOptions::defer_chain_deletes`]). In table, then name order.
    pub deferred: Vec<(TableRef, String)>,
}

impl Diff {
    /// Nothing to apply and nothing deferred.
    pub fn is_empty(&self) -> bool {
        self.tx.is_empty() && self.deferred.is_empty()
    }
}

/// The transaction turning `prev` into `next` (see the module doc for what and in which
/// order).
pub fn diff(prev: &Ruleset, next: &Ruleset, opts: &DiffOptions) -> Diff {
    diff_owned(prev, next.clone(), opts)
}

/// [`diff`], consuming `next`: the elements and rules it adds are moved into the
/// transaction instead of copied (a cold load of 50k services adds ~140 MiB of them).
pub fn diff_owned(prev: &Ruleset, next: Ruleset, opts: &DiffOptions) -> Diff {
    diff_lazy(prev, next, opts, &mut |_, _| None)
}

/// Gives the elements of a `prev` set that was read without them (`None`: take them from
/// `prev` itself). Called at most once per set, and only for a set whose elements the
/// diff compares (a set in both rulesets with the same declaration, not dynamic; or a
/// removed verdict map when chains are re-created).
pub type PrevElements<'a> = &'a mut dyn FnMut(&TableRef, &Set) -> Option<Elements>;

/// [`diff_owned`] with `prev`'s set elements given one set at a time by `elements`: the
/// caller reads them from the kernel as the diff reaches each set, so that the kernel's
/// copy is never held whole beside `next` (the hourly resync and drift repairs).
pub fn diff_lazy(
    prev: &Ruleset,
    next: Ruleset,
    opts: &DiffOptions,
    elements: PrevElements<'_>,
) -> Diff {
    let mut tables: BTreeMap<TableRef, (Option<&Table>, Option<Table>)> = BTreeMap::new();
    for t in &prev.tables {
        tables.entry(table_ref(t)).or_default().0 = Some(t);
    }
    for t in next.tables {
        let r = table_ref(&t);
        tables.entry(r).or_default().1 = Some(t);
    }
    let mut ph = Phases::default();
    for (tref, (p, n)) in tables {
        match (p, n) {
            (Some(_), None) => ph.delete_tables.push(Op::DeleteTable {
                table: tref.clone(),
            }),
            (None, Some(n)) => {
                ph.add_tables.push(add_table(&tref, &n));
                let empty = Table::new(n.family, n.name.clone());
                diff_table(&tref, &empty, n, opts, &mut ph, elements);
            }
            (Some(p), Some(n)) if p.comment != n.comment => {
                ph.recreate_tables.push(Op::DeleteTable {
                    table: tref.clone(),
                });
                ph.add_tables.push(add_table(&tref, &n));
                let empty = Table::new(n.family, n.name.clone());
                diff_table(&tref, &empty, n, opts, &mut ph, elements);
            }
            (Some(p), Some(n)) => diff_table(&tref, p, n, opts, &mut ph, elements),
            (None, None) => unreachable!("every entry has a side"),
        }
    }
    ph.finish()
}

fn table_ref(t: &Table) -> TableRef {
    TableRef::new(t.family, t.name.clone())
}

fn add_table(tref: &TableRef, t: &Table) -> Op {
    Op::AddTable {
        table: tref.clone(),
        comment: t.comment.clone(),
    }
}

/// Operations collected per phase, concatenated in phase order at the end.
#[derive(Default)]
struct Phases {
    recreate_tables: Vec<Op>,
    add_tables: Vec<Op>,
    add_sets: Vec<Op>,
    add_chains: Vec<Op>,
    delete_elements: Vec<Op>,
    flush_chains: Vec<Op>,
    delete_recreated_sets: Vec<Op>,
    delete_recreated_chains: Vec<Op>,
    add_recreated_chains: Vec<Op>,
    add_recreated_sets: Vec<Op>,
    add_rules: Vec<Op>,
    add_elements: Vec<Op>,
    flush_removed: Vec<Op>,
    delete_sets: Vec<Op>,
    delete_chains: Vec<Op>,
    delete_tables: Vec<Op>,
    deferred: Vec<(TableRef, String)>,
}

impl Phases {
    fn finish(self) -> Diff {
        let phases = [
            self.recreate_tables,
            self.add_tables,
            self.add_sets,
            self.add_chains,
            self.delete_elements,
            self.flush_chains,
            self.delete_recreated_sets,
            self.delete_recreated_chains,
            self.add_recreated_chains,
            self.add_recreated_sets,
            self.add_rules,
            self.add_elements,
            self.flush_removed,
            self.delete_sets,
            self.delete_chains,
            self.delete_tables,
        ];
        let mut ops = Vec::with_capacity(phases.iter().map(Vec::len).sum());
        for p in phases {
            ops.extend(p);
        }
        Diff {
            tx: Transaction { ops },
            deferred: self.deferred,
        }
    }
}

/// A set's declaration: everything but its elements.
fn set_decl_eq(a: &Set, b: &Set) -> bool {
    a.name == b.name
        && a.key == b.key
        && a.data == b.data
        && a.flags == b.flags
        && a.timeout == b.timeout
        && a.size == b.size
        && a.comment == b.comment
}

fn chain_decl_eq(a: &Chain, b: &Chain) -> bool {
    a.base == b.base && a.comment == b.comment
}

fn chain_decl(c: &Chain) -> ChainDecl {
    ChainDecl {
        name: c.name.clone(),
        base: c.base.clone(),
        comment: c.comment.clone(),
    }
}

/// Does this chain have a rule referencing one of these sets or chains?
fn references(c: &Chain, sets: &BTreeSet<&str>, chains: &BTreeSet<&str>) -> bool {
    c.rules.iter().flat_map(|r| &r.stmts).any(|s| {
        s.sets().any(|n| sets.contains(n)) || s.target().is_some_and(|n| chains.contains(n))
    })
}

/// A set without its elements, for `AddSet` (the operation ignores them anyway).
fn set_decl(s: &Set) -> Set {
    Set {
        name: s.name.clone(),
        key: s.key.clone(),
        data: s.data.clone(),
        flags: s.flags,
        timeout: s.timeout,
        size: s.size,
        comment: s.comment.clone(),
        elements: Default::default(),
    }
}

/// Splits `v` in order into chunks of at most [`MAX_ELEMENTS_PER_OP`].
fn chunked<T>(mut v: Vec<T>) -> Vec<Vec<T>> {
    let mut out = Vec::new();
    while v.len() > MAX_ELEMENTS_PER_OP {
        let rest = v.split_off(MAX_ELEMENTS_PER_OP);
        out.push(std::mem::replace(&mut v, rest));
    }
    if !v.is_empty() {
        out.push(v);
    }
    out
}

fn push_adds(out: &mut Vec<Op>, tref: &TableRef, set: &str, elements: Vec<Element>) {
    out.extend(
        chunked(elements)
            .into_iter()
            .map(|elements| Op::AddElements {
                table: tref.clone(),
                set: set.to_string(),
                elements,
            }),
    );
}

fn push_deletes(out: &mut Vec<Op>, tref: &TableRef, set: &str, keys: Vec<Vec<Value>>) {
    out.extend(chunked(keys).into_iter().map(|keys| Op::DeleteElements {
        table: tref.clone(),
        set: set.to_string(),
        keys,
    }));
}

/// What happens to a set or chain present on at least one side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    New,
    Same,
    Recreated,
    Removed,
}

fn fate<T>(p: Option<&T>, n: Option<&T>, same_decl: impl Fn(&T, &T) -> bool) -> Fate {
    match (p, n) {
        (None, Some(_)) => Fate::New,
        (Some(_), None) => Fate::Removed,
        (Some(p), Some(n)) if same_decl(p, n) => Fate::Same,
        (Some(_), Some(_)) => Fate::Recreated,
        (None, None) => unreachable!("every entry has a side"),
    }
}

/// Both sides of one table (the same family and name), into `ph`. `n` is consumed: what
/// it adds moves into the operations.
fn diff_table(
    tref: &TableRef,
    p: &Table,
    mut n: Table,
    opts: &DiffOptions,
    ph: &mut Phases,
    elements: PrevElements<'_>,
) {
    let set_fates = fates(&p.sets, &n.sets, set_decl_eq);
    let chain_fates = fates(&p.chains, &n.chains, chain_decl_eq);
    let recreated_sets = recreated(&set_fates);
    let recreated_chains = recreated(&chain_fates);
    // Chains of `prev` whose rules point at something that is re-created: flushed before
    // it is deleted (and, if they stay, their rules re-added after it is back).
    let referrers: BTreeSet<&str> = if recreated_sets.is_empty() && recreated_chains.is_empty() {
        BTreeSet::new()
    } else {
        p.chains
            .values()
            .filter(|c| references(c, &recreated_sets, &recreated_chains))
            .map(|c| c.name.as_str())
            .collect()
    };
    diff_sets(tref, p, &mut n, &set_fates, &recreated_chains, ph, elements);
    diff_chains(tref, p, &mut n, &chain_fates, &referrers, opts, ph);
}

/// The [`Fate`] of every name on either side.
fn fates<T>(
    p: &BTreeMap<String, T>,
    n: &BTreeMap<String, T>,
    same_decl: impl Fn(&T, &T) -> bool,
) -> BTreeMap<String, Fate> {
    let names: BTreeSet<&String> = p.keys().chain(n.keys()).collect();
    names
        .into_iter()
        .map(|name| (name.clone(), fate(p.get(name), n.get(name), &same_decl)))
        .collect()
}

/// The names re-created (deleted and added again with a new declaration).
fn recreated(fates: &BTreeMap<String, Fate>) -> BTreeSet<&str> {
    fates
        .iter()
        .filter(|(_, f)| **f == Fate::Recreated)
        .map(|(n, _)| n.as_str())
        .collect()
}

/// Sets and elements.
fn diff_sets(
    tref: &TableRef,
    p: &Table,
    n: &mut Table,
    set_fates: &BTreeMap<String, Fate>,
    recreated_chains: &BTreeSet<&str>,
    ph: &mut Phases,
    elements: PrevElements<'_>,
) {
    // `prev`'s set with its elements: as given, or read now through `elements`.
    let mut prev_set = |name: &str| -> std::borrow::Cow<'_, Set> {
        let ps = &p.sets[name];
        match elements(tref, ps) {
            Some(e) => std::borrow::Cow::Owned(Set {
                elements: e,
                ..ps.clone()
            }),
            None => std::borrow::Cow::Borrowed(ps),
        }
    };
    for (name, &f) in set_fates {
        let name = name.as_str();
        // All elements of a set being (re-)created, except a dynamic set's runtime ones.
        let load_elements = |ph: &mut Phases, s: &mut Set| {
            if !s.flags.dynamic && !s.elements.is_empty() {
                let elements = std::mem::take(&mut s.elements).into_vec();
                push_adds(&mut ph.add_elements, tref, name, elements);
            }
        };
        match f {
            Fate::New => {
                let s = n.sets.get_mut(name).expect("new set");
                ph.add_sets.push(Op::AddSet {
                    table: tref.clone(),
                    set: Box::new(set_decl(s)),
                });
                load_elements(ph, s);
            }
            Fate::Recreated => {
                let s = n.sets.get_mut(name).expect("re-created set");
                ph.delete_recreated_sets.push(Op::DeleteSet {
                    table: tref.clone(),
                    set: name.to_string(),
                });
                ph.add_recreated_sets.push(Op::AddSet {
                    table: tref.clone(),
                    set: Box::new(set_decl(s)),
                });
                load_elements(ph, s);
            }
            Fate::Removed => {
                ph.delete_sets.push(Op::DeleteSet {
                    table: tref.clone(),
                    set: name.to_string(),
                });
                // Elements of a doomed map that enter a chain being re-created must go
                // before that chain is deleted (the map itself goes only at the end).
                if !recreated_chains.is_empty() {
                    let keys: Vec<Vec<Value>> = prev_set(name)
                        .elements
                        .iter()
                        .filter(|e| e.target().is_some_and(|c| recreated_chains.contains(c)))
                        .map(|e| e.key.clone())
                        .collect();
                    push_deletes(&mut ph.delete_elements, tref, name, keys);
                }
            }
            Fate::Same => {
                if p.sets[name].flags.dynamic {
                    continue; // runtime contents: never touched
                }
                let ps = prev_set(name);
                let ns = n.sets.get_mut(name).expect("kept set");
                let next = std::mem::take(&mut ns.elements).into_vec();
                let (dels, adds) = element_changes(&ps, next, recreated_chains);
                push_deletes(&mut ph.delete_elements, tref, name, dels);
                push_adds(&mut ph.add_elements, tref, name, adds);
            }
        }
    }
}

/// Chains and rules.
fn diff_chains(
    tref: &TableRef,
    p: &Table,
    n: &mut Table,
    chain_fates: &BTreeMap<String, Fate>,
    referrers: &BTreeSet<&str>,
    opts: &DiffOptions,
    ph: &mut Phases,
) {
    for (name, &f) in chain_fates {
        let name = name.as_str();
        let flush = |ph: &mut Phases, c: &Chain| {
            if !c.rules.is_empty() {
                ph.flush_chains.push(Op::FlushChain {
                    table: tref.clone(),
                    chain: name.to_string(),
                });
            }
        };
        let add_rules = |ph: &mut Phases, c: &mut Chain| {
            ph.add_rules.extend(
                std::mem::take(&mut c.rules)
                    .into_iter()
                    .map(|rule| Op::AddRule {
                        table: tref.clone(),
                        chain: name.to_string(),
                        rule,
                    }),
            );
        };
        match f {
            Fate::New => {
                let c = n.chains.get_mut(name).expect("new chain");
                ph.add_chains.push(Op::AddChain {
                    table: tref.clone(),
                    chain: chain_decl(c),
                });
                add_rules(ph, c);
            }
            Fate::Recreated => {
                let (pc, nc) = (&p.chains[name], n.chains.get_mut(name).expect("chain"));
                flush(ph, pc);
                ph.delete_recreated_chains.push(Op::DeleteChain {
                    table: tref.clone(),
                    chain: name.to_string(),
                });
                ph.add_recreated_chains.push(Op::AddChain {
                    table: tref.clone(),
                    chain: chain_decl(nc),
                });
                add_rules(ph, nc);
            }
            Fate::Same => {
                let (pc, nc) = (&p.chains[name], n.chains.get_mut(name).expect("chain"));
                if pc.rules != nc.rules || referrers.contains(name) {
                    flush(ph, pc);
                    add_rules(ph, nc);
                }
            }
            Fate::Removed => {
                let pc = &p.chains[name];
                if referrers.contains(name) {
                    flush(ph, pc);
                } else if !pc.rules.is_empty() {
                    ph.flush_removed.push(Op::FlushChain {
                        table: tref.clone(),
                        chain: name.to_string(),
                    });
                }
                if opts.defer_chain_deletes {
                    ph.deferred.push((tref.clone(), name.to_string()));
                } else {
                    ph.delete_chains.push(Op::DeleteChain {
                        table: tref.clone(),
                        chain: name.to_string(),
                    });
                }
            }
        }
    }
}

/// Keys to delete and elements to add to turn `p`'s elements into `n`'s (both sorted:
/// one merge walk). An unchanged element that enters a re-created chain is deleted and
/// added again, so the chain can be deleted in between.
fn element_changes(
    p: &Set,
    next: Vec<Element>,
    recreated_chains: &BTreeSet<&str>,
) -> (Vec<Vec<Value>>, Vec<Element>) {
    let mut dels = Vec::new();
    let mut adds = Vec::new();
    let mut pi = p.elements.iter().peekable();
    let mut ni = next.into_iter().peekable();
    loop {
        let step = match (pi.peek(), ni.peek()) {
            (None, None) => break,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some(pe), Some(ne)) => pe.key.cmp(&ne.key),
        };
        match step {
            std::cmp::Ordering::Less => {
                dels.push(pi.next().expect("peeked").key.clone());
            }
            std::cmp::Ordering::Greater => {
                adds.push(ni.next().expect("peeked"));
            }
            std::cmp::Ordering::Equal => {
                let pe = pi.next().expect("peeked");
                let ne = ni.next().expect("peeked");
                let retarget = pe.target().is_some_and(|c| recreated_chains.contains(c));
                if *pe != ne || retarget {
                    dels.push(pe.key.clone());
                    adds.push(ne);
                }
            }
        }
    }
    (dels, adds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::fake::FakeBackend;
    use crate::backend::{Backend, BackendError};
    use crate::nft::*;

    fn tref() -> TableRef {
        TableRef::new(Family::V4, "kproxy")
    }

    fn ip(s: &str) -> Value {
        Value::Addr(s.parse().unwrap())
    }

    /// A small table: a base chain jumping to `services`, which dispatches through a
    /// verdict map to per-service chains; a plain set used by a lookup; a dynamic set.
    fn sample() -> Table {
        let mut t = Table::new(Family::V4, "kproxy");
        t.comment = Some("rules for kproxy".into());
        let mut vmap = Set::new(
            "service-ips",
            vec![
                DataType::Ipv4Addr,
                DataType::InetProto,
                DataType::InetService,
            ],
            SetData::Verdict,
        );
        for (i, svc) in ["a", "b"].iter().enumerate() {
            vmap.insert(
                Element::verdict(
                    vec![
                        ip(&format!("10.0.0.{}", i + 1)),
                        Value::Proto(Protocol::Tcp),
                        Value::Port(80),
                    ],
                    Verdict::Goto(format!("service-{svc}")),
                )
                .with_comment(format!("ns/{svc}:http")),
            );
            let mut c = Chain::regular(format!("service-{svc}"));
            c.push(Rule::new(vec![Stmt::DnatTo {
                proto: Protocol::Tcp,
                addr: format!("10.1.0.{}", i + 1).parse().unwrap(),
                port: 8080,
            }]));
            t.add_chain(c);
        }
        t.add_set(vmap);
        let mut ips = Set::new("cluster-ips", vec![DataType::Ipv4Addr], SetData::None);
        ips.insert(Element::key(vec![ip("10.0.0.1")]));
        ips.insert(Element::key(vec![ip("10.0.0.2")]));
        t.add_set(ips);
        let mut dynset = Set::new("affinity-x", vec![DataType::Ipv4Addr], SetData::None);
        dynset.flags.dynamic = true;
        dynset.flags.timeout = true;
        dynset.timeout = Some(10800);
        t.add_set(dynset);
        let mut base = Chain::base("nat-prerouting", ChainType::Nat, Hook::Prerouting, -100);
        base.push(Rule::new(vec![Stmt::jump("services")]));
        t.add_chain(base);
        let mut services = Chain::regular("services");
        services.push(Rule::new(vec![Stmt::Vmap {
            key: vec![Field::Daddr, Field::L4Proto, Field::ThDport],
            map: "service-ips".into(),
        }]));
        services.push(Rule::new(vec![
            Stmt::Lookup {
                key: vec![Field::Daddr],
                set: "cluster-ips".into(),
                negate: false,
            },
            Stmt::Update {
                set: "affinity-x".into(),
                key: vec![Field::Saddr],
            },
            Stmt::Reject,
        ]));
        t.add_chain(services);
        t
    }

    fn rs(t: Table) -> Ruleset {
        Ruleset { tables: vec![t] }
    }

    /// Applies `diff(prev, next)` to a fake holding `prev` and checks the result is `next`.
    fn roundtrip(prev: &Ruleset, next: &Ruleset) -> Diff {
        let d = diff(prev, next, &DiffOptions::default());
        let mut b = FakeBackend::with_state(prev.clone());
        b.apply(&d.tx)
            .unwrap_or_else(|e| panic!("{e}\n{}", text::transaction(&d.tx)));
        assert_eq!(&b.dump().unwrap(), next, "\n{}", text::transaction(&d.tx));
        d
    }

    #[test]
    fn equal_is_empty() {
        let x = rs(sample());
        assert!(diff(&x, &x, &DiffOptions::default()).is_empty());
        assert!(diff(
            &Ruleset::default(),
            &Ruleset::default(),
            &DiffOptions::default()
        )
        .is_empty());
    }

    #[test]
    fn full_load_order() {
        let next = rs(sample());
        let d = roundtrip(&Ruleset::default(), &next);
        let kinds: Vec<&str> =
            d.tx.ops
                .iter()
                .map(|op| match op {
                    Op::AddTable { .. } => "table",
                    Op::AddSet { .. } => "set",
                    Op::AddChain { .. } => "chain",
                    Op::AddRule { .. } => "rule",
                    Op::AddElements { .. } => "elements",
                    _ => "other",
                })
                .collect();
        let mut expect = vec![
            "table", "set", "set", "set", "chain", "chain", "chain", "chain",
        ];
        expect.extend(["rule"; 5]);
        expect.extend(["elements"; 2]);
        assert_eq!(kinds, expect);
        // Sets added without their elements.
        for op in &d.tx.ops {
            if let Op::AddSet { set, .. } = op {
                assert!(set.elements.is_empty());
            }
        }
    }

    #[test]
    fn removed_table_is_one_op() {
        let prev = rs(sample());
        let d = roundtrip(&prev, &Ruleset::default());
        assert_eq!(d.tx.ops, vec![Op::DeleteTable { table: tref() }]);
    }

    #[test]
    fn changed_element_is_deleted_then_added() {
        let prev = rs(sample());
        let mut t = sample();
        let key = vec![ip("10.0.0.1"), Value::Proto(Protocol::Tcp), Value::Port(80)];
        let e = Element::verdict(key.clone(), Verdict::Goto("service-b".into()))
            .with_comment("ns/a:http");
        t.sets.get_mut("service-ips").unwrap().insert(e.clone());
        let d = roundtrip(&prev, &rs(t));
        assert_eq!(
            d.tx.ops,
            vec![
                Op::DeleteElements {
                    table: tref(),
                    set: "service-ips".into(),
                    keys: vec![key.clone()]
                },
                Op::AddElements {
                    table: tref(),
                    set: "service-ips".into(),
                    elements: vec![e]
                },
            ]
        );
        // A comment alone also needs delete + add.
        let mut t = sample();
        let e =
            Element::verdict(key.clone(), Verdict::Goto("service-a".into())).with_comment("other");
        t.sets.get_mut("service-ips").unwrap().insert(e);
        assert_eq!(roundtrip(&prev, &rs(t)).tx.len(), 2);
    }

    #[test]
    fn changed_chain_is_flushed_and_rewritten() {
        let prev = rs(sample());
        let mut t = sample();
        let c = t.chains.get_mut("service-a").unwrap();
        c.rules[0] = Rule::new(vec![Stmt::DnatTo {
            proto: Protocol::Tcp,
            addr: "10.1.0.9".parse().unwrap(),
            port: 8080,
        }]);
        let rule = c.rules[0].clone();
        let d = roundtrip(&prev, &rs(t));
        assert_eq!(
            d.tx.ops,
            vec![
                Op::FlushChain {
                    table: tref(),
                    chain: "service-a".into()
                },
                Op::AddRule {
                    table: tref(),
                    chain: "service-a".into(),
                    rule
                },
            ]
        );
    }

    #[test]
    fn removed_service_chain_and_its_element() {
        let prev = rs(sample());
        let mut t = sample();
        t.chains.remove("service-b");
        let key = vec![ip("10.0.0.2"), Value::Proto(Protocol::Tcp), Value::Port(80)];
        t.sets.get_mut("service-ips").unwrap().elements.remove(&key);
        let d = roundtrip(&prev, &rs(t.clone()));
        assert_eq!(
            d.tx.ops,
            vec![
                Op::DeleteElements {
                    table: tref(),
                    set: "service-ips".into(),
                    keys: vec![key]
                },
                Op::FlushChain {
                    table: tref(),
                    chain: "service-b".into()
                },
                Op::DeleteChain {
                    table: tref(),
                    chain: "service-b".into()
                },
            ]
        );
        // Deferred: flushed, listed, not deleted; a pre-6.2 kernel accepts it, and refuses
        // the immediate delete.
        let opts = DiffOptions {
            defer_chain_deletes: true,
        };
        let d = diff(&prev, &rs(t.clone()), &opts);
        assert_eq!(d.deferred, vec![(tref(), "service-b".to_string())]);
        assert!(!d
            .tx
            .ops
            .iter()
            .any(|op| matches!(op, Op::DeleteChain { .. })));
        let mut b = FakeBackend::with_state(prev.clone()).kernel_pre_6_2();
        b.apply(&d.tx).unwrap();
        let mut want = t.clone();
        want.add_chain(Chain::regular("service-b"));
        assert_eq!(b.dump().unwrap(), rs(want));
        // The deferred delete, later.
        let mut later = Transaction::new();
        for (table, chain) in d.deferred {
            later.push(Op::DeleteChain { table, chain });
        }
        b.apply(&later).unwrap();
        assert_eq!(b.dump().unwrap(), rs(t.clone()));

        let d = diff(&prev, &rs(t), &DiffOptions::default());
        let mut b = FakeBackend::with_state(prev).kernel_pre_6_2();
        match b.apply(&d.tx) {
            Err(BackendError::Rejected { failures }) => {
                assert_eq!(failures[0].errno, libc::EBUSY);
                assert_eq!(failures[0].index, 2);
            }
            other => panic!("expected EBUSY, got {other:?}"),
        }
    }

    #[test]
    fn dynamic_set_elements_are_never_touched() {
        let prev = rs(sample());
        let mut t = sample();
        t.sets
            .get_mut("affinity-x")
            .unwrap()
            .insert(Element::key(vec![ip("192.168.1.1")]));
        assert!(diff(&prev, &rs(t.clone()), &DiffOptions::default()).is_empty());
        assert!(diff(&rs(t), &prev, &DiffOptions::default()).is_empty());
    }

    #[test]
    fn recreated_set_flushes_its_referrers() {
        let prev = rs(sample());
        let mut t = sample();
        t.sets.get_mut("cluster-ips").unwrap().comment = Some("changed".into());
        let d = roundtrip(&prev, &rs(t.clone()));
        let text = text::transaction(&d.tx);
        let flush = text.find("flush chain ip kproxy services").expect(&text);
        let del = text.find("delete set ip kproxy cluster-ips").expect(&text);
        let add = text.find("add set ip kproxy cluster-ips").expect(&text);
        let rule = text.find("add rule ip kproxy services").expect(&text);
        let elems = text.find("add element ip kproxy cluster-ips").expect(&text);
        assert!(
            flush < del && del < add && add < rule && rule < elems,
            "{text}"
        );
        // The dynamic set re-created (timeout changed): its referrer too, no elements.
        let mut t2 = sample();
        t2.sets.get_mut("affinity-x").unwrap().timeout = Some(60);
        let d = roundtrip(&prev, &rs(t2));
        assert!(!d
            .tx
            .ops
            .iter()
            .any(|op| matches!(op, Op::AddElements { .. })));
        assert!(d.tx.ops.contains(&Op::FlushChain {
            table: tref(),
            chain: "services".into()
        }));
    }

    #[test]
    fn recreated_chain_moves_its_references() {
        let prev = rs(sample());
        let mut t = sample();
        t.chains.get_mut("service-a").unwrap().comment = Some("now with a comment".into());
        t.chains.get_mut("services").unwrap().comment = Some("also".into());
        let d = roundtrip(&prev, &rs(t));
        let text = text::transaction(&d.tx);
        assert!(
            text.contains("delete element ip kproxy service-ips"),
            "{text}"
        );
        assert!(text.contains("delete chain ip kproxy service-a"), "{text}");
        // A base chain's priority.
        let mut t = sample();
        t.chains
            .get_mut("nat-prerouting")
            .unwrap()
            .base
            .as_mut()
            .unwrap()
            .priority = -99;
        roundtrip(&prev, &rs(t));
    }

    #[test]
    fn removed_map_with_removed_targets() {
        // A verdict map and the chains it enters disappear together: the map goes first.
        let prev = rs(sample());
        let mut t = sample();
        t.sets.remove("service-ips");
        t.chains.remove("service-a");
        t.chains.remove("service-b");
        t.chains.get_mut("services").unwrap().rules.remove(0);
        roundtrip(&prev, &rs(t));
    }

    #[test]
    fn table_comment_change_reloads() {
        let prev = rs(sample());
        let mut t = sample();
        t.comment = None;
        let d = roundtrip(&prev, &rs(t));
        assert_eq!(d.tx.ops[0], Op::DeleteTable { table: tref() });
        assert!(matches!(d.tx.ops[1], Op::AddTable { .. }));
    }

    #[test]
    fn elements_are_chunked() {
        let mut t = Table::new(Family::V4, "kproxy");
        let mut s = Set::new("big", vec![DataType::Mark], SetData::None);
        s.extend(
            (0..(2 * MAX_ELEMENTS_PER_OP as u32 + 5))
                .map(|i| Element::key(vec![Value::Int(i)]))
                .collect(),
        );
        t.add_set(s);
        let next = rs(t);
        let d = roundtrip(&Ruleset::default(), &next);
        let sizes: Vec<usize> =
            d.tx.ops
                .iter()
                .filter_map(|op| match op {
                    Op::AddElements { elements, .. } => Some(elements.len()),
                    _ => None,
                })
                .collect();
        assert_eq!(sizes, vec![MAX_ELEMENTS_PER_OP, MAX_ELEMENTS_PER_OP, 5]);
        let d = roundtrip(
            &next,
            &Ruleset {
                tables: vec![Table::new(Family::V4, "kproxy")],
            },
        );
        assert_eq!(
            d.tx.ops,
            vec![Op::DeleteSet {
                table: tref(),
                set: "big".into()
            }]
        );
    }

    #[test]
    fn deterministic() {
        let prev = rs(sample());
        let mut t = sample();
        t.chains.remove("service-b");
        t.sets.get_mut("cluster-ips").unwrap().comment = Some("x".into());
        let a = diff(&prev, &rs(t.clone()), &DiffOptions::default());
        let b = diff(&prev, &rs(t), &DiffOptions::default());
        assert_eq!(a, b);
    }
}
