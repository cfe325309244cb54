//! The fake's validation: each operation checked against the working copy the way the
//! kernel checks each message of a batch (names, declarations, statements' references,
//! element keys and data, interval overlaps), with the errno the kernel reports.
//!
//! Must not: change the working copy except through the operation it validates.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;

use super::{fail, inc, Fail, WTable};
use crate::nft::tx::ChainDecl;
use crate::nft::{
    AffinityStep, Chain, DataType, Element, ElementData, Family, Field, Set, SetData, Stmt, Table,
    Value, Verdict, NAME_MAX,
};

/// Netlink attribute policies cap names at `NFT_NAME_MAXLEN - 1` bytes (`ERANGE`).
pub(super) fn check_name(name: &str) -> Result<(), Fail> {
    if name.is_empty() || name.len() > NAME_MAX {
        return fail(libc::ERANGE, format!("name of {} bytes", name.len()));
    }
    Ok(())
}

pub(super) fn add_chain(w: &mut WTable, decl: &ChainDecl) -> Result<(), Fail> {
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

pub(super) fn add_set(family: Family, w: &mut WTable, set: &Set) -> Result<(), Fail> {
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

pub(super) fn check_stmt(family: Family, t: &Table, s: &Stmt) -> Result<(), Fail> {
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
        Stmt::DnatPick { map, .. } => {
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
        }
        Stmt::DnatAffinity {
            pick,
            endpoints,
            step,
            ..
        } => check_affinity(family, t, pick, endpoints, step)?,
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

/// The maps of an affinity rule, as the kernel checks them when the rule binds them: the
/// pick map's data and the affinity map's data fit the endpoint id register, the
/// endpoints map's key is `list . id` and its data `addr . port`, and only a dynamic map
/// with timeouts takes the rule's `update` (and its `timeout`).
fn check_affinity(
    family: Family,
    t: &Table,
    pick: &str,
    endpoints: &str,
    step: &AffinityStep,
) -> Result<(), Fail> {
    let id = || SetData::Values(vec![DataType::Mark]);
    let set = |name: &str| match t.sets.get(name) {
        Some(s) => Ok(s),
        None => fail(libc::ENOENT, format!("set {name} does not exist")),
    };
    let p = set(pick)?;
    if p.key != [DataType::Pick] || p.data != id() {
        return fail(libc::EINVAL, format!("{pick} is not a pick → id map"));
    }
    let e = set(endpoints)?;
    let target = SetData::Values(vec![DataType::addr(family), DataType::InetService]);
    if e.key != [DataType::Mark, DataType::Mark] || e.data != target {
        return fail(
            libc::EINVAL,
            format!("{endpoints} is not a list . id → addr . port map"),
        );
    }
    if let AffinityStep::Known { map, .. } | AffinityStep::Repick { map, .. } = step {
        let m = set(map)?;
        if m.key != [DataType::addr(family), DataType::Mark] || m.data != id() {
            return fail(
                libc::EINVAL,
                format!("{map} is not a client . list → id map"),
            );
        }
        if !m.flags.dynamic || !m.flags.timeout {
            return fail(
                libc::EOPNOTSUPP,
                format!("map {map} is not dynamic with timeouts"),
            );
        }
    }
    Ok(())
}

pub(super) fn check_verdict(t: &Table, v: &Verdict) -> Result<(), Fail> {
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
        (DataType::Mark, Value::Int(_)) => true,
        (DataType::Pick, Value::Range(lo, hi)) => interval && lo <= hi,
        _ => false,
    }
}

pub(super) fn check_element(t: &Table, s: &Set, e: &Element) -> Result<(), Fail> {
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

/// Does `lo ..= hi` overlap a range of the set or of this batch? Both are sorted and
/// disjoint, so only the neighbours need a look (pick maps hold hundreds of ranges).
fn range_overlaps(s: &Set, batch: &BTreeMap<u32, u32>, lo: u32, hi: u32) -> bool {
    let els = s.elements.iter().as_slice();
    let at = els.partition_point(|o| o.key.as_slice() < [Value::Range(lo, hi)].as_slice());
    let hit = |o: Option<&Element>| matches!(o.map(|o| o.key.as_slice()), Some([Value::Range(a, b)]) if *a <= hi && lo <= *b);
    hit(at.checked_sub(1).and_then(|i| els.get(i)))
        || hit(els.get(at))
        || batch
            .range(..=hi)
            .next_back()
            .is_some_and(|(_, b)| *b >= lo)
}

/// Element ops smaller than this edit in place; bigger ones rebuild the set once.
const BULK: usize = 64;

pub(super) fn add_elements(w: &mut WTable, set: &str, elements: &[Element]) -> Result<(), Fail> {
    let s = w.set_exists(set)?;
    let mut batch: HashMap<&Vec<Value>, &Element> = HashMap::new();
    let mut accepted: Vec<&Element> = Vec::new();
    let mut ranges: BTreeMap<u32, u32> = BTreeMap::new();
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
        let overlap = match e.key.as_slice() {
            [Value::Range(lo, hi)] => {
                let r = range_overlaps(s, &ranges, *lo, *hi);
                ranges.insert(*lo, *hi);
                r
            }
            _ => {
                s.elements.iter().any(|o| overlaps(&o.key, &e.key))
                    || accepted.iter().any(|o| overlaps(&o.key, &e.key))
            }
        };
        if s.flags.interval && overlap {
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

pub(super) fn delete_elements(
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
