//! Kernel dump messages → kproxy's typed ruleset: tables, chains, sets and their elements
//! (decoded with the set's declared types; interval elements folded back into prefixes),
//! rules (via [`super::rule::decode_stmts`]); and change notifications ([`notice`]) →
//! which commit, and which object of which table, for the drift watch
//! ([`super::monitor`]).

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;

use ipnetwork::IpNetwork;

use super::encode::{
    TYPE_BITS, TYPE_INET_PROTOCOL, TYPE_INET_SERVICE, TYPE_INTEGER, TYPE_IP6ADDR, TYPE_IPADDR,
    TYPE_MARK,
};
use super::expr::{Expr, ImmData};
use super::libnftnl::{self as nl, udata_get, udata_str, udata_u32};
use super::nf_tables::c;
use super::rule::{decode_stmts, ip_from, verdict_of};
use crate::netlink::wire::Msg;
use crate::nft::{
    BaseChain, Chain, ChainType, DataType, Element, ElementData, Family, Hook, Protocol, Rule, Set,
    SetData, SetFlags, Stmt, Value,
};
use nftnl::nftnl_sys as sys;

/// Size the kernel gives a dynamic set declared without one.
const DYNAMIC_DEFAULT_SIZE: u32 = 65535;

/// The names a message libnftnl could not read gives in its leading string attributes
/// (`first`, `second`: their types), read without libnftnl so the message can still be
/// attributed; `None` when they are not there.
fn names_of(m: &Msg<'_>, first: u16, second: u16) -> Option<(String, String)> {
    let a = m.attrs();
    let (x, y) = (a.str(first)?, a.str(second)?);
    (!x.is_empty() && !y.is_empty()).then_some((x, y))
}

/// Table name and comment of a NEWTABLE message; `None` when it cannot be read.
pub fn table(m: &Msg<'_>) -> Option<(String, Option<String>)> {
    let (t, parsed) = nl::Table::parse_partial(m.raw);
    if parsed.is_err() {
        let name = m
            .attrs()
            .str(c::NFTA_TABLE_NAME)
            .filter(|n| !n.is_empty())?;
        return Some((
            name,
            Some(format!("unreadable table declaration: {}", parsed.err()?)),
        ));
    }
    let name = t.str(sys::NFTNL_TABLE_NAME).unwrap_or_default();
    let comment = t
        .bytes(sys::NFTNL_TABLE_USERDATA)
        .and_then(|u| udata_str(u, c::UDATA_TABLE_COMMENT));
    Some((name, comment))
}

fn hook_of(n: u32) -> Option<Hook> {
    Some(match n {
        0 => Hook::Prerouting,
        1 => Hook::Input,
        2 => Hook::Forward,
        3 => Hook::Output,
        4 => Hook::Postrouting,
        _ => return None,
    })
}

/// A chain (without rules) and its table name. Declarations kproxy cannot express (other
/// chain types or hooks, a drop policy) become a leading [`Stmt::Foreign`] rule so that the
/// chain differs from anything kproxy means.
pub fn chain(m: &Msg<'_>) -> Option<(String, Chain)> {
    let (a, parsed) = nl::Chain::parse_partial(m.raw);
    if let Err(e) = parsed {
        // Still the chain it is, differing from anything kproxy means.
        let (table, name) = names_of(m, c::NFTA_CHAIN_TABLE, c::NFTA_CHAIN_NAME)?;
        let mut ch = Chain::regular(name);
        ch.rules.push(Rule::new(vec![Stmt::Foreign(format!(
            "unreadable chain declaration: {e}"
        ))]));
        return Some((table, ch));
    }
    let table = a.str(sys::NFTNL_CHAIN_TABLE).unwrap_or_default();
    let name = a.str(sys::NFTNL_CHAIN_NAME).unwrap_or_default();
    let comment = a
        .bytes(sys::NFTNL_CHAIN_USERDATA)
        .and_then(|u| udata_str(u, c::UDATA_CHAIN_COMMENT));
    let mut ch = Chain::regular(name);
    ch.comment = comment;
    if a.is_set(sys::NFTNL_CHAIN_HOOKNUM) || a.is_set(sys::NFTNL_CHAIN_PRIO) {
        let num = a.u32(sys::NFTNL_CHAIN_HOOKNUM).unwrap_or(u32::MAX);
        let prio = a.u32(sys::NFTNL_CHAIN_PRIO).unwrap_or(0) as i32;
        let ty = a.str(sys::NFTNL_CHAIN_TYPE).unwrap_or_default();
        let kind = match ty.as_str() {
            "filter" => Some(ChainType::Filter),
            "nat" => Some(ChainType::Nat),
            _ => None,
        };
        let policy = a
            .u32(sys::NFTNL_CHAIN_POLICY)
            .unwrap_or(c::NF_ACCEPT as u32);
        match (kind, hook_of(num)) {
            (Some(kind), Some(hook)) => {
                ch.base = Some(BaseChain {
                    kind,
                    hook,
                    priority: prio,
                })
            }
            _ => ch.rules.push(Rule::new(vec![Stmt::Foreign(format!(
                "base chain type {ty} hook {num} priority {prio}"
            ))])),
        }
        if policy != c::NF_ACCEPT as u32 {
            ch.rules.push(Rule::new(vec![Stmt::Foreign(format!(
                "chain policy {policy}"
            ))]));
        }
    }
    Some((table, ch))
}

/// A rule with the table and chain it belongs to. A rule libnftnl cannot parse (an
/// expression it does not know, broken attributes) is one foreign statement.
pub fn rule(m: &Msg<'_>, family: Family) -> (String, String, Rule) {
    let (r, parsed) = nl::Rule::parse_partial(m.raw);
    let (table, chain) = match (r.str(sys::NFTNL_RULE_TABLE), r.str(sys::NFTNL_RULE_CHAIN)) {
        (Some(t), Some(c)) => (t, c),
        // Refused before libnftnl read anything: named without it.
        _ => names_of(m, c::NFTA_RULE_TABLE, c::NFTA_RULE_CHAIN).unwrap_or_default(),
    };
    let comment = r
        .bytes(sys::NFTNL_RULE_USERDATA)
        .and_then(|u| udata_str(u, c::UDATA_RULE_COMMENT));
    let stmts = match parsed {
        Ok(()) => decode_stmts(family, &rule_exprs(&r)),
        Err(e) => vec![Stmt::Foreign(e.to_string())],
    };
    let mut out = Rule::new(stmts);
    out.comment = comment;
    (table, chain, out)
}

/// The expressions of a parsed rule.
pub fn rule_exprs(r: &nl::Rule) -> Vec<Expr> {
    r.exprs().iter().map(Expr::from_nftnl).collect()
}

fn type_of(id: u32, typeof_numgen: bool) -> Option<DataType> {
    Some(match id {
        TYPE_IPADDR => DataType::Ipv4Addr,
        TYPE_IP6ADDR => DataType::Ipv6Addr,
        TYPE_INET_PROTOCOL => DataType::InetProto,
        TYPE_INET_SERVICE => DataType::InetService,
        TYPE_MARK => DataType::Mark,
        TYPE_INTEGER if typeof_numgen => DataType::Pick,
        TYPE_INTEGER => DataType::Pick,
        _ => return None,
    })
}

/// Splits a (concatenated) nft type number into parts whose lengths add up to `len`.
fn split_type(id: u32, len: u32, typeof_numgen: bool) -> Option<Vec<DataType>> {
    let mut ids = Vec::new();
    let mut rest = id;
    while rest != 0 {
        ids.push(rest & ((1 << TYPE_BITS) - 1));
        rest >>= TYPE_BITS;
    }
    ids.reverse();
    let parts: Vec<DataType> = ids
        .into_iter()
        .map(|t| type_of(t, typeof_numgen))
        .collect::<Option<_>>()?;
    (!parts.is_empty() && super::encode::key_len(&parts) == len as usize).then_some(parts)
}

/// Whether a `typeof` userdata blob (key or data) starts with a numgen expression.
fn typeof_has_numgen(u: Option<&[u8]>) -> bool {
    u.and_then(|u| udata_u32(u, c::UDATA_TYPEOF_EXPR)) == Some(23)
}

/// A set declaration (without elements) and its table name.
pub fn set(m: &Msg<'_>) -> Result<(String, Set), String> {
    let (a, _) = nl::Set::parse_partial(m.raw);
    let table = a.str(sys::NFTNL_SET_TABLE).unwrap_or_default();
    let name = a.str(sys::NFTNL_SET_NAME).unwrap_or_default();
    let flags = a.u32(sys::NFTNL_SET_FLAGS).unwrap_or(0);
    let udata = a.bytes(sys::NFTNL_SET_USERDATA).unwrap_or(&[]);
    let key_typeof = udata_get(udata, c::UDATA_SET_KEY_TYPEOF);
    let key = split_type(
        a.u32(sys::NFTNL_SET_KEY_TYPE).unwrap_or(0),
        a.u32(sys::NFTNL_SET_KEY_LEN).unwrap_or(0),
        typeof_has_numgen(key_typeof),
    )
    .ok_or_else(|| format!("set {name}: key type kproxy does not use"))?;
    let data = if flags & c::NFT_SET_MAP != 0 {
        let dt = a.u32(sys::NFTNL_SET_DATA_TYPE).unwrap_or(0);
        if dt == c::NFT_DATA_VERDICT {
            SetData::Verdict
        } else {
            let data_typeof = udata_get(udata, c::UDATA_SET_DATA_TYPEOF);
            SetData::Values(
                split_type(
                    dt,
                    a.u32(sys::NFTNL_SET_DATA_LEN).unwrap_or(0),
                    typeof_has_numgen(data_typeof),
                )
                .ok_or_else(|| format!("map {name}: data type kproxy does not use"))?,
            )
        }
    } else if flags & 0x40 != 0 {
        return Err(format!("set {name}: object maps are not kproxy's"));
    } else {
        SetData::None
    };
    let mut s = Set::new(name, key, data);
    s.flags = SetFlags {
        interval: flags & c::NFT_SET_INTERVAL != 0,
        timeout: flags & c::NFT_SET_TIMEOUT != 0,
        dynamic: flags & c::NFT_SET_EVAL != 0,
    };
    s.timeout = a
        .u64(sys::NFTNL_SET_TIMEOUT)
        .filter(|t| *t > 0)
        .map(|t| (t / 1000) as u32);
    // The kernel gives dynamic sets declared without a size a default of 65535 (and
    // reports it): read that back as "no size", as declared.
    s.size = a
        .u32(sys::NFTNL_SET_DESC_SIZE)
        .filter(|n| !(s.flags.dynamic && *n == DYNAMIC_DEFAULT_SIZE));
    s.comment = udata_str(udata, c::UDATA_SET_COMMENT);
    Ok((table, s))
}

/// One element as the kernel holds it.
#[derive(Clone, Debug)]
pub struct RawElem {
    pub flags: u32,
    pub key: Vec<u8>,
    pub key_end: Option<Vec<u8>>,
    pub data: Option<ImmData>,
    pub comment: Option<String>,
    pub open: bool,
}

/// The table, set and elements of a NEWSETELEM message (no elements when libnftnl cannot
/// parse it).
#[cfg(any(test, feature = "test-util"))]
pub fn elements(m: &Msg<'_>) -> (String, String, Vec<RawElem>) {
    match nl::Set::parse_elems(m.raw) {
        Ok(s) => (
            s.str(sys::NFTNL_SET_TABLE).unwrap_or_default(),
            s.str(sys::NFTNL_SET_NAME).unwrap_or_default(),
            s.elems().iter().map(raw_element).collect(),
        ),
        Err(_) => Default::default(),
    }
}

/// The elements of a NEWSETELEM dump message (none when libnftnl cannot parse it).
pub fn raw_elements(m: &Msg<'_>, out: &mut Vec<RawElem>) {
    if let Ok(s) = nl::Set::parse_elems(m.raw) {
        out.extend(s.elems().iter().map(raw_element));
    }
}

/// One element as libnftnl parsed it.
pub fn raw_element(e: &nl::ElemRef<'_>) -> RawElem {
    let udata = e.bytes(sys::NFTNL_SET_ELEM_USERDATA).unwrap_or(&[]);
    let data = match e.bytes(sys::NFTNL_SET_ELEM_DATA) {
        Some(v) => Some(ImmData::Value(v.to_vec())),
        None => e
            .u32(sys::NFTNL_SET_ELEM_VERDICT)
            .map(|code| ImmData::Verdict {
                code: code as i32,
                chain: e.str(sys::NFTNL_SET_ELEM_CHAIN),
            }),
    };
    RawElem {
        flags: e.u32(sys::NFTNL_SET_ELEM_FLAGS).unwrap_or(0),
        key: e.bytes(sys::NFTNL_SET_ELEM_KEY).unwrap_or(&[]).to_vec(),
        key_end: e.bytes(sys::NFTNL_SET_ELEM_KEY_END).map(<[u8]>::to_vec),
        data,
        comment: udata_str(udata, c::UDATA_SET_ELEM_COMMENT),
        open: udata_u32(udata, c::UDATA_SET_ELEM_FLAGS)
            .is_some_and(|f| f & c::UDATA_SET_ELEM_F_INTERVAL_OPEN != 0),
    }
}

/// A value of type `t` from its bytes.
pub fn value_of(t: DataType, b: &[u8]) -> Option<Value> {
    Some(match t {
        DataType::Ipv4Addr => Value::Addr(ip_from(Family::V4, b)?),
        DataType::Ipv6Addr => Value::Addr(ip_from(Family::V6, b)?),
        DataType::InetProto if b.len() == 1 => match Protocol::from_number(b[0]) {
            Some(p) => Value::Proto(p),
            None => Value::Int(b[0] as u32),
        },
        DataType::InetService if b.len() == 2 => Value::Port(u16::from_be_bytes([b[0], b[1]])),
        DataType::Mark if b.len() == 4 => Value::Int(u32::from_ne_bytes(b.try_into().ok()?)),
        DataType::Pick if b.len() == 4 => Value::Int(u32::from_be_bytes(b.try_into().ok()?)),
        _ => return None,
    })
}

/// Splits concatenated bytes into typed values.
fn split_values(types: &[DataType], b: &[u8]) -> Option<Vec<Value>> {
    if types.len() == 1 {
        return Some(vec![value_of(types[0], b)?]);
    }
    let mut off = 0;
    let mut out = Vec::new();
    for t in types {
        let n = t.byte_len();
        out.push(value_of(*t, b.get(off..off + n)?)?);
        off += n.next_multiple_of(4);
    }
    (off == b.len()).then_some(out)
}

fn element_data(set: &Set, d: &Option<ImmData>) -> Option<ElementData> {
    Some(match (&set.data, d) {
        (SetData::None, _) => ElementData::None,
        (SetData::Verdict, Some(ImmData::Verdict { code, chain })) => {
            ElementData::Verdict(verdict_of(*code, chain.as_deref())?)
        }
        (SetData::Values(ts), Some(ImmData::Value(v))) => ElementData::Values(split_values(ts, v)?),
        _ => return None,
    })
}

fn as_u128(b: &[u8]) -> u128 {
    b.iter().fold(0u128, |acc, x| (acc << 8) | *x as u128)
}

fn ip_of(v: u128, bytes: usize) -> IpAddr {
    if bytes == 4 {
        IpAddr::V4((v as u32).into())
    } else {
        IpAddr::V6(v.into())
    }
}

/// The smallest list of prefixes covering `[first, last]` exactly.
pub fn range_to_prefixes(mut first: u128, last: u128, bytes: usize) -> Vec<Value> {
    let bits = (bytes * 8) as u32;
    let mut out = Vec::new();
    loop {
        // Largest block aligned at `first` that stays within `last`.
        let mut size_bits = if first == 0 {
            bits
        } else {
            first.trailing_zeros().min(bits)
        };
        while size_bits > 0 {
            let span = if size_bits >= 128 {
                u128::MAX
            } else {
                (1u128 << size_bits) - 1
            };
            if first.checked_add(span).is_some_and(|e| e <= last) {
                break;
            }
            size_bits -= 1;
        }
        let prefix = (bits - size_bits) as u8;
        let ip = ip_of(first, bytes);
        out.push(if prefix as u32 == bits {
            Value::Addr(ip)
        } else {
            Value::Net(IpNetwork::new(ip, prefix).expect("valid prefix"))
        });
        let span = if size_bits >= 128 {
            u128::MAX
        } else {
            (1u128 << size_bits) - 1
        };
        match first.checked_add(span) {
            Some(end) if end < last => first = end + 1,
            _ => break,
        }
    }
    out
}

/// Element comments read back, one shared copy per distinct text (as the renderer
/// shares them): a service's comment is on each of its elements in every set, and a
/// copy per element would cost ~25 MiB of a 50k-service dump.
#[derive(Debug, Default)]
pub struct Comments(HashSet<Arc<str>>);

impl Comments {
    fn get(&mut self, c: &str) -> Arc<str> {
        if let Some(a) = self.0.get(c) {
            return a.clone();
        }
        let a: Arc<str> = c.into();
        self.0.insert(a.clone());
        a
    }
}

/// Elements in kproxy's form. Interval sets: start/end pairs become prefixes (a range
/// that is not one prefix becomes several elements), or integer ranges in pick maps; pipapo elements: each part whose
/// start and end differ becomes a prefix. Elements that cannot be typed are dropped.
pub fn fold_elements(set: &Set, mut raw: Vec<RawElem>, comments: &mut Comments) -> Vec<Element> {
    let mut out = Vec::new();
    let mut mk = |key: Vec<Value>, r: &RawElem| -> Option<Element> {
        Some(Element {
            key,
            data: element_data(set, &r.data)?,
            comment: r.comment.as_deref().map(|c| comments.get(c)),
        })
    };
    if set.flags.interval && set.key.len() == 1 {
        let bytes = set.key[0].byte_len();
        let picks = set.key[0] == DataType::Pick;
        if !matches!(set.key[0], DataType::Ipv4Addr | DataType::Ipv6Addr) && !picks {
            return out;
        }
        raw.retain(|r| r.key.len() == bytes);
        // Starts sort before ends at the same key (an end closes the previous range).
        raw.sort_by(|a, b| {
            as_u128(&a.key).cmp(&as_u128(&b.key)).then(
                (b.flags & c::NFT_SET_ELEM_INTERVAL_END)
                    .cmp(&(a.flags & c::NFT_SET_ELEM_INTERVAL_END)),
            )
        });
        let max = if bytes == 4 {
            u32::MAX as u128
        } else {
            u128::MAX
        };
        let mut i = 0;
        while i < raw.len() {
            let r = &raw[i];
            if r.flags & c::NFT_SET_ELEM_INTERVAL_END != 0 {
                i += 1;
                continue;
            }
            let first = as_u128(&r.key);
            let next_end = raw
                .get(i + 1)
                .filter(|n| n.flags & c::NFT_SET_ELEM_INTERVAL_END != 0);
            let last = match next_end {
                Some(n) if !r.open => as_u128(&n.key).saturating_sub(1),
                _ => max,
            };
            if last >= first && picks {
                if let Some(e) = mk(vec![Value::Range(first as u32, last as u32)], r) {
                    out.push(e);
                }
            } else if last >= first {
                for v in range_to_prefixes(first, last, bytes) {
                    if let Some(e) = mk(vec![v], r) {
                        out.push(e);
                    }
                }
            }
            i += if next_end.is_some() { 2 } else { 1 };
        }
        return out;
    }
    for r in &raw {
        let Some(start) = split_values(&set.key, &r.key) else {
            continue;
        };
        let key = match (&r.key_end, set.flags.interval) {
            (Some(end), true) => {
                let Some(end) = split_values(&set.key, end) else {
                    continue;
                };
                let mut key = Vec::new();
                let mut ok = true;
                for (s, e) in start.into_iter().zip(end) {
                    if s == e {
                        key.push(s);
                        continue;
                    }
                    match (&s, &e) {
                        (Value::Addr(a), Value::Addr(b)) => {
                            let bytes = if a.is_ipv4() { 4 } else { 16 };
                            let (fa, lb) = (addr_u128(a), addr_u128(b));
                            let p = range_to_prefixes(fa, lb, bytes);
                            if p.len() == 1 && fa <= lb {
                                key.push(p.into_iter().next().unwrap());
                            } else {
                                ok = false;
                            }
                        }
                        _ => ok = false,
                    }
                }
                if !ok {
                    continue;
                }
                key
            }
            _ => start,
        };
        if let Some(e) = mk(key, r) {
            out.push(e);
        }
    }
    out
}

fn addr_u128(a: &IpAddr) -> u128 {
    match a {
        IpAddr::V4(v) => u32::from(*v) as u128,
        IpAddr::V6(v) => u128::from(*v),
    }
}

/// Why a buffer of nf_tables messages could not be decoded.
#[cfg(any(test, feature = "test-util"))]
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A message header that is not one (a length shorter than a header or past the end
    /// of the buffer, or bytes after the last message): nothing after it can be read.
    #[error("malformed netlink message at byte {offset} of {len}")]
    Framing { offset: usize, len: usize },
}

/// The `ip`/`ip6` tables that nf_tables messages describe: the replies of a table's dumps
/// (NEWTABLE, NEWCHAIN, NEWSET, NEWSETELEM, NEWRULE, in any order and any number of
/// buffers' worth back to back) or an encoded batch. Each message is read by the same
/// decoders as [`super::NetlinkBackend`]'s dump; what they cannot read is left out as
/// there (a set declaration kproxy cannot express is skipped with a warning naming it,
/// elements that cannot be typed are dropped, a rule kproxy cannot read becomes a foreign
/// statement, a rule of a chain not declared is dropped). Messages of other families or
/// types are ignored. Broken framing is an error.
///
/// A stable entry point for the decoder tests (`tests/decode_fuzz.rs`): whatever
/// implements the decoding, buffer → ruleset or error.
#[cfg(any(test, feature = "test-util"))]
pub fn decode_dump(buf: &[u8]) -> Result<crate::nft::Ruleset, DecodeError> {
    use std::collections::BTreeMap;

    use crate::netlink::wire::{framing_error, messages};

    if let Some(offset) = framing_error(buf) {
        return Err(DecodeError::Framing {
            offset,
            len: buf.len(),
        });
    }
    let ty = |t: u16| (c::NFNL_SUBSYS_NFTABLES << 8) | t;
    let family_of = |m: &Msg<'_>| match m.family() {
        crate::netlink::wire::c::NFPROTO_IPV4 => Some(Family::V4),
        crate::netlink::wire::c::NFPROTO_IPV6 => Some(Family::V6),
        _ => None,
    };
    type Key = (Family, String);
    let mut tables: BTreeMap<Key, crate::nft::Table> = BTreeMap::new();
    let mut sets: BTreeMap<Key, Vec<Set>> = BTreeMap::new();
    let mut raw: BTreeMap<(Key, String), Vec<RawElem>> = BTreeMap::new();
    let mut rules: Vec<(Key, String, Rule)> = Vec::new();
    let table = |tables: &mut BTreeMap<Key, crate::nft::Table>, k: &Key| {
        tables
            .entry(k.clone())
            .or_insert_with(|| crate::nft::Table::new(k.0, k.1.clone()));
    };
    for m in messages(buf) {
        let Some(family) = family_of(&m) else {
            continue;
        };
        match m.ty {
            t if t == ty(c::NFT_MSG_NEWTABLE) => {
                let Some((name, comment)) = self::table(&m) else {
                    continue;
                };
                let k = (family, name);
                table(&mut tables, &k);
                tables.get_mut(&k).expect("just added").comment = comment;
            }
            t if t == ty(c::NFT_MSG_NEWCHAIN) => {
                let Some((name, ch)) = chain(&m) else {
                    continue;
                };
                let k = (family, name);
                table(&mut tables, &k);
                tables.get_mut(&k).expect("just added").add_chain(ch);
            }
            t if t == ty(c::NFT_MSG_NEWSET) => match set(&m) {
                Ok((name, s)) => {
                    let k = (family, name);
                    table(&mut tables, &k);
                    sets.entry(k).or_default().push(s);
                }
                Err(e) => tracing::warn!(error = %e, "set not read back"),
            },
            t if t == ty(c::NFT_MSG_NEWSETELEM) => {
                let (table, set, elems) = elements(&m);
                raw.entry(((family, table), set)).or_default().extend(elems);
            }
            t if t == ty(c::NFT_MSG_NEWRULE) => {
                let (table, chain, r) = rule(&m, family);
                rules.push(((family, table), chain, r));
            }
            _ => {}
        }
    }
    let mut comments = Comments::default();
    for (k, declared) in sets {
        let t = tables.get_mut(&k).expect("added with the set");
        for mut s in declared {
            let elements = raw.remove(&(k.clone(), s.name.clone())).unwrap_or_default();
            let folded = fold_elements(&s, elements, &mut comments);
            s.extend(folded);
            t.add_set(s);
        }
    }
    for (k, chain, r) in rules {
        if let Some(ch) = tables.get_mut(&k).and_then(|t| t.chains.get_mut(&chain)) {
            ch.push(r);
        }
    }
    Ok(crate::nft::Ruleset {
        tables: tables.into_values().collect(),
    })
}

/// What one nftables change notification (group `NFNLGRP_NFTABLES`) says, as far as the
/// drift watch needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// `NFT_MSG_NEWGEN`, the last message of a commit: the socket that committed (its
    /// port id), the sequence number of the commit's first message, the generation the
    /// commit made, and the committing process as the kernel names it.
    Commit {
        port: u32,
        seq: u32,
        generation: u32,
        pid: Option<u32>,
        process: Option<String>,
    },
    /// An object of table `table` in family `family` (nfproto number) was created,
    /// changed or deleted.
    Object {
        family: u8,
        table: String,
        object: Touch,
    },
    /// A change notification that names no table (cannot be attributed).
    Unnamed { ty: u16 },
    /// Not an nf_tables notification (acks, errors, other subsystems).
    Other,
}

/// Which object a notification is about.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Touch {
    /// The table itself (created, deleted, flags changed).
    Table,
    /// A chain: created, deleted, or a rule of it added or deleted.
    Chain(String),
    /// A set or map: declared, deleted, or elements added or deleted.
    Set(String),
    /// Something kproxy does not read back (stateful objects, flowtables, message types
    /// this code does not know): only a full comparison covers it.
    Other(&'static str),
}

/// Decodes one message received on a socket subscribed to `NFNLGRP_NFTABLES`.
pub fn notice(m: &Msg<'_>) -> Notice {
    if m.ty >> 8 != c::NFNL_SUBSYS_NFTABLES {
        return Notice::Other;
    }
    let ty = m.ty & 0xff;
    let a = m.attrs();
    if ty == c::NFT_MSG_NEWGEN {
        return match a.u32_be(c::NFTA_GEN_ID) {
            Some(generation) => Notice::Commit {
                port: m.port,
                seq: m.seq,
                generation,
                pid: a.u32_be(c::NFTA_GEN_PROC_PID),
                process: a.str(c::NFTA_GEN_PROC_NAME),
            },
            None => Notice::Unnamed { ty },
        };
    }
    let (table_attr, object) = match ty {
        c::NFT_MSG_NEWTABLE | c::NFT_MSG_DELTABLE | c::NFT_MSG_DESTROYTABLE => {
            (c::NFTA_TABLE_NAME, Some(Touch::Table))
        }
        c::NFT_MSG_NEWCHAIN | c::NFT_MSG_DELCHAIN | c::NFT_MSG_DESTROYCHAIN => (
            c::NFTA_CHAIN_TABLE,
            a.str(c::NFTA_CHAIN_NAME).map(Touch::Chain),
        ),
        c::NFT_MSG_NEWRULE | c::NFT_MSG_DELRULE | c::NFT_MSG_DESTROYRULE => (
            c::NFTA_RULE_TABLE,
            a.str(c::NFTA_RULE_CHAIN).map(Touch::Chain),
        ),
        c::NFT_MSG_NEWSET | c::NFT_MSG_DELSET | c::NFT_MSG_DESTROYSET => {
            (c::NFTA_SET_TABLE, a.str(c::NFTA_SET_NAME).map(Touch::Set))
        }
        c::NFT_MSG_NEWSETELEM | c::NFT_MSG_DELSETELEM | c::NFT_MSG_DESTROYSETELEM => (
            c::NFTA_SET_ELEM_LIST_TABLE,
            a.str(c::NFTA_SET_ELEM_LIST_SET).map(Touch::Set),
        ),
        c::NFT_MSG_NEWOBJ | c::NFT_MSG_DELOBJ => {
            (c::NFTA_OBJ_TABLE, Some(Touch::Other("stateful object")))
        }
        c::NFT_MSG_NEWFLOWTABLE | c::NFT_MSG_DELFLOWTABLE => {
            (c::NFTA_FLOWTABLE_TABLE, Some(Touch::Other("flowtable")))
        }
        // Every table-scoped message type names its table in attribute 1.
        _ => (1, Some(Touch::Other("a message type kproxy does not know"))),
    };
    match (a.str(table_attr), object) {
        (Some(table), Some(object)) => Notice::Object {
            family: m.family(),
            table,
            object,
        },
        (Some(table), None) => Notice::Object {
            family: m.family(),
            table,
            object: Touch::Other("an object without a name"),
        },
        (None, _) => Notice::Unnamed { ty },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_become_prefixes() {
        let v = range_to_prefixes(0x0a00_0000, 0x0aff_ffff, 4);
        assert_eq!(v, vec![Value::Net("10.0.0.0/8".parse().unwrap())]);
        let v = range_to_prefixes(5, 5, 4);
        assert_eq!(v, vec![Value::Addr("0.0.0.5".parse().unwrap())]);
        let v = range_to_prefixes(0, u32::MAX as u128, 4);
        assert_eq!(v, vec![Value::Net("0.0.0.0/0".parse().unwrap())]);
        let v = range_to_prefixes(0, u128::MAX, 16);
        assert_eq!(v, vec![Value::Net("::/0".parse().unwrap())]);
        let v = range_to_prefixes(1, 6, 4);
        assert_eq!(v.len(), 4); // 1, 2-3, 4-5, 6
    }
}
