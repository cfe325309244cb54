//! Sets and elements as the old writer wrote them (frozen copy of `encode/set.rs`): nft's
//! datatype numbers, key and data layouts, `typeof` userdata, interval elements.

use super::expr::write_data;
use super::{c, clean_comment, Udata, Writer};
use crate::backend::netlink::expr::ImmData;
use crate::backend::netlink::rule::verdict_imm;
use crate::nft::tx::TableRef;
use crate::nft::{DataType, Element, ElementData, Family, Set, SetData, Value, PICK_SPACE};

use super::align4;

/// What the writer must know about an existing set to encode elements and lookups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetShape {
    pub key: Vec<DataType>,
    pub data: SetData,
    pub interval: bool,
}

impl SetShape {
    pub fn of(set: &Set) -> SetShape {
        SetShape {
            key: set.key.clone(),
            data: set.data.clone(),
            interval: set.flags.interval,
        }
    }
}

// nft's datatype numbers (`enum datatypes` in nftables' datatype.h).
const TYPE_INTEGER: u32 = 4;
const TYPE_IPADDR: u32 = 7;
const TYPE_IP6ADDR: u32 = 8;
const TYPE_INET_PROTOCOL: u32 = 12;
const TYPE_INET_SERVICE: u32 = 13;
const TYPE_MARK: u32 = 19;
/// Bits per part in a concatenated type number.
const TYPE_BITS: u32 = 6;

fn type_id(t: DataType) -> u32 {
    match t {
        DataType::Ipv4Addr => TYPE_IPADDR,
        DataType::Ipv6Addr => TYPE_IP6ADDR,
        DataType::InetProto => TYPE_INET_PROTOCOL,
        DataType::InetService => TYPE_INET_SERVICE,
        DataType::Mark => TYPE_MARK,
        DataType::Pick => TYPE_INTEGER,
        DataType::Verdict => c::NFT_DATA_VERDICT,
    }
}

fn concat_type(parts: &[DataType]) -> u32 {
    parts
        .iter()
        .fold(0u32, |acc, t| (acc << TYPE_BITS) | type_id(*t))
}

/// Register-padded length of a concatenation; a single part keeps its own length.
fn key_len(parts: &[DataType]) -> usize {
    if parts.len() == 1 {
        parts[0].byte_len()
    } else {
        parts.iter().map(|t| align4(t.byte_len())).sum()
    }
}

/// nft's byteorder for a set's key or data (`enum byteorder`: 0 invalid, 1 host, 2 big).
fn byteorder(parts: &[DataType]) -> u32 {
    match parts {
        [DataType::Ipv4Addr | DataType::Ipv6Addr | DataType::InetService | DataType::Pick] => 2,
        [DataType::Mark] => 1,
        _ => 0,
    }
}

// nft's expression types (`enum expr_types`) and protocol ids used in `typeof` userdata.
const EXPR_PAYLOAD: u32 = 7;
const EXPR_META: u32 = 9;
const EXPR_CONCAT: u32 = 13;
const EXPR_NUMGEN: u32 = 23;
/// `th` (transport header, any protocol): nft 1.0.6 refuses UDP/SCTP rules using a map
/// declared with `tcp dport` data in ip6 tables.
const PROTO_DESC_TH: u32 = 11;
const PROTO_DESC_IP: u32 = 12;
const PROTO_DESC_IP6: u32 = 13;

/// `typeof` userdata of one expression: `{0: expr type, 1: {expression fields}}`.
fn typeof_part(t: DataType) -> Result<Udata, String> {
    let mut inner = Udata::default();
    let etype = match t {
        DataType::Ipv4Addr => {
            inner.put_u32(0, PROTO_DESC_IP);
            inner.put_u32(1, 12); // IPHDR_DADDR
            EXPR_PAYLOAD
        }
        DataType::Ipv6Addr => {
            inner.put_u32(0, PROTO_DESC_IP6);
            inner.put_u32(1, 9); // IP6HDR_DADDR
            EXPR_PAYLOAD
        }
        DataType::InetService => {
            inner.put_u32(0, PROTO_DESC_TH);
            inner.put_u32(1, 2); // THDR_DPORT
            EXPR_PAYLOAD
        }
        DataType::InetProto => {
            inner.put_u32(0, 16); // NFT_META_L4PROTO
            EXPR_META
        }
        DataType::Mark => {
            inner.put_u32(0, 3); // NFT_META_MARK
            EXPR_META
        }
        DataType::Pick => {
            inner.put_u32(0, 1); // NFT_NG_RANDOM
            inner.put_u32(1, PICK_SPACE); // mod 65536
            inner.put_u32(2, 0); // offset 0
            EXPR_NUMGEN
        }
        DataType::Verdict => return Err("nft cannot declare a verdict with typeof".into()),
    };
    let mut u = Udata::default();
    u.put_u32(c::UDATA_TYPEOF_EXPR, etype);
    u.nest(c::UDATA_TYPEOF_DATA, &inner);
    Ok(u)
}

/// `typeof` userdata of a key or data; `None` parts of a `type` concatenation give the
/// empty concat nest nft writes for `type a . b`.
fn typeof_udata(parts: &[DataType], use_typeof: bool) -> Result<Option<Udata>, String> {
    if use_typeof {
        if parts.len() == 1 {
            return typeof_part(parts[0]).map(Some);
        }
        let mut list = Udata::default();
        for (i, t) in parts.iter().enumerate() {
            list.nest(i as u8, &typeof_part(*t)?);
        }
        let mut u = Udata::default();
        u.put_u32(c::UDATA_TYPEOF_EXPR, EXPR_CONCAT);
        u.nest(c::UDATA_TYPEOF_DATA, &list);
        return Ok(Some(u));
    }
    if parts.len() > 1 {
        let mut u = Udata::default();
        u.put_u32(c::UDATA_TYPEOF_EXPR, EXPR_CONCAT);
        u.nest(c::UDATA_TYPEOF_DATA, &Udata::default());
        return Ok(Some(u));
    }
    Ok(None)
}

pub fn write_set(w: &mut Writer, table: &TableRef, set: &Set, id: u32) -> Result<(), String> {
    if set.key.is_empty() {
        return Err("empty key".into());
    }
    if set.key.contains(&DataType::Verdict) {
        return Err("verdict in a key".into());
    }
    let data_parts: &[DataType] = match &set.data {
        SetData::Values(v) => v,
        _ => &[],
    };
    if matches!(&set.data, SetData::Values(v) if v.is_empty() || v.contains(&DataType::Verdict)) {
        return Err("map data must be non-empty values (use SetData::Verdict)".into());
    }
    let use_typeof = set.key.contains(&DataType::Pick) || data_parts.contains(&DataType::Pick);
    let concat_interval = set.key.len() > 1 && set.flags.interval;
    let mut flags = 0u32;
    if set.flags.interval {
        flags |= c::NFT_SET_INTERVAL;
    }
    if set.is_map() {
        flags |= c::NFT_SET_MAP;
    }
    if set.flags.timeout {
        flags |= c::NFT_SET_TIMEOUT;
    }
    if set.flags.dynamic {
        flags |= c::NFT_SET_EVAL;
    }
    if concat_interval {
        flags |= c::NFT_SET_CONCAT;
    }
    w.str(c::NFTA_SET_TABLE, &table.name);
    w.str(c::NFTA_SET_NAME, &set.name);
    w.u32_be(c::NFTA_SET_FLAGS, flags);
    w.u32_be(c::NFTA_SET_KEY_TYPE, concat_type(&set.key));
    w.u32_be(c::NFTA_SET_KEY_LEN, key_len(&set.key) as u32);
    match &set.data {
        SetData::None => {}
        SetData::Verdict => {
            w.u32_be(c::NFTA_SET_DATA_TYPE, c::NFT_DATA_VERDICT);
            w.u32_be(c::NFTA_SET_DATA_LEN, 0);
        }
        SetData::Values(v) => {
            w.u32_be(c::NFTA_SET_DATA_TYPE, concat_type(v));
            w.u32_be(c::NFTA_SET_DATA_LEN, key_len(v) as u32);
        }
    }
    w.u32_be(c::NFTA_SET_ID, id);
    if set.size.is_some() || concat_interval {
        let d = w.nest_begin(c::NFTA_SET_DESC);
        if let Some(n) = set.size {
            w.u32_be(c::NFTA_SET_DESC_SIZE, n);
        }
        if concat_interval {
            // Field lengths in bytes, one nest per field (the kernel wants NFT_SET_CONCAT
            // in the flags too, else EINVAL).
            let cc = w.nest_begin(c::NFTA_SET_DESC_CONCAT);
            for t in &set.key {
                let f = w.nest_begin(c::NFTA_LIST_ELEM);
                w.u32_be(c::NFTA_SET_FIELD_LEN, t.byte_len() as u32);
                w.nest_end(f);
            }
            w.nest_end(cc);
        }
        w.nest_end(d);
    }
    if let Some(t) = set.timeout {
        w.u64_be(c::NFTA_SET_TIMEOUT, t as u64 * 1000);
    }
    let mut u = Udata::default();
    u.put_u32(c::UDATA_SET_KEYBYTEORDER, byteorder(&set.key));
    if set.is_map() {
        u.put_u32(c::UDATA_SET_DATABYTEORDER, byteorder(data_parts));
    }
    if let Some(k) = typeof_udata(&set.key, use_typeof)? {
        u.nest(c::UDATA_SET_KEY_TYPEOF, &k);
    }
    if !data_parts.is_empty() {
        if let Some(d) = typeof_udata(data_parts, use_typeof)? {
            u.nest(c::UDATA_SET_DATA_TYPEOF, &d);
        }
    }
    if set.is_map() {
        u.put_u32(c::UDATA_SET_DATA_INTERVAL, 0);
    }
    if let Some(cm) = &set.comment {
        u.put_strz(c::UDATA_SET_COMMENT, &clean_comment(cm));
    }
    w.attr(c::NFTA_SET_USERDATA, &u.buf);
    Ok(())
}

/// Bytes of one value of type `t` (unpadded). Prefixes give their network address.
fn value_bytes(v: &Value, t: DataType) -> Result<Vec<u8>, String> {
    use std::net::IpAddr;
    let bad = || Err(format!("{} is not a {t:?}", crate::nft::text::value(v)));
    Ok(match (v, t) {
        (Value::Addr(IpAddr::V4(a)), DataType::Ipv4Addr) => a.octets().to_vec(),
        (Value::Addr(IpAddr::V6(a)), DataType::Ipv6Addr) => a.octets().to_vec(),
        (Value::Net(n), DataType::Ipv4Addr | DataType::Ipv6Addr) => {
            return value_bytes(&Value::Addr(n.network()), t)
        }
        (Value::Proto(p), DataType::InetProto) => vec![p.number()],
        (Value::Int(n), DataType::InetProto) if *n < 256 => vec![*n as u8],
        (Value::Port(p), DataType::InetService) => p.to_be_bytes().to_vec(),
        (Value::Int(n), DataType::Mark) => n.to_ne_bytes().to_vec(),
        (Value::Int(n), DataType::Pick) => n.to_be_bytes().to_vec(),
        _ => return bad(),
    })
}

/// First and last value of a prefix, a single address or an integer range, as u128, and
/// the key's length in bytes.
fn range_of(v: &Value) -> Option<(u128, u128, usize)> {
    use std::net::IpAddr;
    let (ip, prefix, bits) = match v {
        Value::Range(lo, hi) if lo <= hi => return Some((*lo as u128, *hi as u128, 4)),
        Value::Addr(IpAddr::V4(a)) => (u32::from(*a) as u128, 32u32, 32u32),
        Value::Addr(IpAddr::V6(a)) => (u128::from(*a), 128, 128),
        Value::Net(n) => match n.network() {
            IpAddr::V4(a) => (u32::from(a) as u128, n.prefix() as u32, 32),
            IpAddr::V6(a) => (u128::from(a), n.prefix() as u32, 128),
        },
        _ => return None,
    };
    let host_bits = bits - prefix;
    let host_mask: u128 = if host_bits == 0 {
        0
    } else if host_bits == 128 {
        u128::MAX
    } else {
        (1u128 << host_bits) - 1
    };
    Some((
        ip & !host_mask,
        (ip & !host_mask) | host_mask,
        (bits / 8) as usize,
    ))
}

fn be_bytes(v: u128, len: usize) -> Vec<u8> {
    v.to_be_bytes()[16 - len..].to_vec()
}

fn concat_bytes(parts: &[Vec<u8>]) -> Vec<u8> {
    if parts.len() == 1 {
        return parts[0].clone();
    }
    let mut out = Vec::new();
    for p in parts {
        out.extend_from_slice(p);
        out.resize(align4(out.len()), 0);
    }
    out
}

#[derive(Clone, Copy)]
pub enum ElemRef<'a> {
    Add(&'a Element),
    Delete(&'a [Value]),
}

impl ElemRef<'_> {
    /// The element as `nft` writes it (error messages).
    pub fn text(self) -> String {
        match self {
            ElemRef::Add(e) => crate::nft::text::element(e),
            ElemRef::Delete(k) => crate::nft::text::values(k),
        }
    }
}

/// Whether `key` fits the set's key: as many parts, addresses of the table's family,
/// prefixes only in interval sets.
fn check_key(family: Family, shape: &SetShape, key: &[Value]) -> Result<(), String> {
    if key.len() != shape.key.len() {
        return Err(format!(
            "key has {} parts, the set's key {}",
            key.len(),
            shape.key.len()
        ));
    }
    for (v, t) in key.iter().zip(&shape.key) {
        if matches!(t, DataType::Ipv4Addr | DataType::Ipv6Addr) {
            let ok = match v {
                Value::Addr(a) => DataType::addr(Family::of(a)) == *t,
                Value::Net(n) => DataType::addr(Family::of(&n.network())) == *t,
                _ => false,
            } && DataType::addr(family) == *t;
            if !ok {
                return Err(format!("{} is not a {t:?}", crate::nft::text::value(v)));
            }
        }
        if matches!(v, Value::Net(_) | Value::Range(..)) && !shape.interval {
            return Err("a range in a set without the interval flag".into());
        }
        if matches!(t, DataType::Pick) && !matches!(v, Value::Range(lo, hi) if lo <= hi) {
            return Err(format!(
                "{} is not a range of picks",
                crate::nft::text::value(v)
            ));
        }
    }
    Ok(())
}

/// An element's data (verdict or values) as the set's data type wants it.
fn element_data(data: Option<&ElementData>, shape: &SetShape) -> Result<Option<ImmData>, String> {
    Ok(match (data, &shape.data) {
        (None, _) | (Some(ElementData::None), SetData::None) => None,
        (Some(ElementData::Verdict(v)), SetData::Verdict) => Some(verdict_imm(v)),
        (Some(ElementData::Values(vs)), SetData::Values(ts)) if vs.len() == ts.len() => {
            let parts = vs
                .iter()
                .zip(ts)
                .map(|(v, t)| value_bytes(v, *t))
                .collect::<Result<Vec<_>, _>>()?;
            Some(ImmData::Value(concat_bytes(&parts)))
        }
        _ => return Err("element data does not match the set's data type".into()),
    })
}

/// Writes one element as nft does: interval sets get a start element and an end-flagged
/// element (`last + 1`; none when the range reaches the top of the address space, where
/// nft marks the start "open" in userdata); concatenated interval sets (pipapo) get one
/// element with `NFTA_SET_ELEM_KEY_END` = the last key (inclusive).
pub fn write_element(
    w: &mut Writer,
    family: Family,
    shape: &SetShape,
    e: ElemRef<'_>,
) -> Result<(), String> {
    let (key, data, comment) = match e {
        ElemRef::Add(e) => (&e.key[..], Some(&e.data), e.comment.as_deref()),
        ElemRef::Delete(k) => (k, None, None),
    };
    check_key(family, shape, key)?;
    let data_imm = element_data(data, shape)?;
    let mut udata = Udata::default();
    if let Some(cm) = comment {
        udata.put_strz(c::UDATA_SET_ELEM_COMMENT, &clean_comment(cm));
    }

    if shape.interval && key.len() == 1 {
        let (first, last, len) = range_of(&key[0])
            .ok_or("interval sets hold addresses, prefixes or integer ranges only")?;
        let end = if len == 16 {
            last.checked_add(1)
        } else if last < u32::MAX as u128 {
            Some(last + 1)
        } else {
            None
        };
        if end.is_none() {
            udata.put_u32(c::UDATA_SET_ELEM_FLAGS, c::UDATA_SET_ELEM_F_INTERVAL_OPEN);
        }
        elem(
            w,
            0,
            &be_bytes(first, len),
            None,
            data_imm.as_ref(),
            &udata.buf,
        );
        if let Some(end) = end {
            elem(
                w,
                c::NFT_SET_ELEM_INTERVAL_END,
                &be_bytes(end, len),
                None,
                None,
                &[],
            );
        }
        return Ok(());
    }
    let start: Vec<Vec<u8>> = key
        .iter()
        .zip(&shape.key)
        .map(|(v, t)| value_bytes(v, *t))
        .collect::<Result<_, _>>()?;
    let key_end = if shape.interval {
        let parts: Vec<Vec<u8>> = key
            .iter()
            .zip(&start)
            .map(|(v, s)| match v {
                Value::Net(_) => {
                    let (_, last, len) = range_of(v).unwrap();
                    be_bytes(last, len)
                }
                _ => s.clone(),
            })
            .collect();
        Some(concat_bytes(&parts))
    } else {
        None
    };
    elem(
        w,
        0,
        &concat_bytes(&start),
        key_end.as_deref(),
        data_imm.as_ref(),
        &udata.buf,
    );
    Ok(())
}

fn elem(
    w: &mut Writer,
    flags: u32,
    key: &[u8],
    key_end: Option<&[u8]>,
    data: Option<&ImmData>,
    udata: &[u8],
) {
    let n = w.nest_begin(c::NFTA_LIST_ELEM);
    if flags != 0 {
        w.u32_be(c::NFTA_SET_ELEM_FLAGS, flags);
    }
    w.data_value(c::NFTA_SET_ELEM_KEY, key);
    if let Some(k) = key_end {
        w.data_value(c::NFTA_SET_ELEM_KEY_END, k);
    }
    if let Some(d) = data {
        write_data(w, c::NFTA_SET_ELEM_DATA, d);
    }
    if !udata.is_empty() {
        w.attr(c::NFTA_SET_ELEM_USERDATA, udata);
    }
    w.nest_end(n);
}
