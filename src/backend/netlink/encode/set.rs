//! Sets and their elements → netlink attributes: nft's datatype numbers, key and data
//! layouts, `typeof` userdata, and each element as nft writes it (interval sets as start
//! and end elements, concatenated intervals with a key end).
//!
//! Owns: the libnftnl objects of one set declaration or element. Must not: build messages
//! (that is [`super`]).

use super::*;
use crate::nft::PICK_SPACE;

// nft's datatype numbers (`enum datatypes` in nftables' datatype.h).
pub const TYPE_INTEGER: u32 = 4;
pub const TYPE_IPADDR: u32 = 7;
pub const TYPE_IP6ADDR: u32 = 8;
pub const TYPE_INET_PROTOCOL: u32 = 12;
pub const TYPE_INET_SERVICE: u32 = 13;
pub const TYPE_MARK: u32 = 19;
/// Bits per part in a concatenated type number.
pub const TYPE_BITS: u32 = 6;

pub fn type_id(t: DataType) -> u32 {
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
pub fn key_len(parts: &[DataType]) -> usize {
    if parts.len() == 1 {
        parts[0].byte_len()
    } else {
        parts.iter().map(|t| t.byte_len().next_multiple_of(4)).sum()
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
    let mut inner = Tlv::new();
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
    let mut u = Tlv::new();
    u.put_u32(c::UDATA_TYPEOF_EXPR, etype);
    u.nest(c::UDATA_TYPEOF_DATA, &inner.done()?);
    u.done()
}

/// `typeof` userdata of a key or data; `None` parts of a `type` concatenation give the
/// empty concat nest nft writes for `type a . b`.
fn typeof_udata(parts: &[DataType], use_typeof: bool) -> Result<Option<Udata>, String> {
    if use_typeof {
        if parts.len() == 1 {
            return typeof_part(parts[0]).map(Some);
        }
        let mut list = Tlv::new();
        for (i, t) in parts.iter().enumerate() {
            list.nest(i as u8, &typeof_part(*t)?);
        }
        let mut u = Tlv::new();
        u.put_u32(c::UDATA_TYPEOF_EXPR, EXPR_CONCAT);
        u.nest(c::UDATA_TYPEOF_DATA, &list.done()?);
        return u.done().map(Some);
    }
    if parts.len() > 1 {
        let mut u = Tlv::new();
        u.put_u32(c::UDATA_TYPEOF_EXPR, EXPR_CONCAT);
        u.nest(c::UDATA_TYPEOF_DATA, &Udata::new());
        return u.done().map(Some);
    }
    Ok(None)
}

/// A [`Udata`] built with the first error kept (userdata TLVs only fail when they
/// overflow nft's 256 bytes).
struct Tlv {
    u: Udata,
    err: Option<nl::Error>,
}

impl Tlv {
    fn new() -> Tlv {
        Tlv {
            u: Udata::new(),
            err: None,
        }
    }
    fn keep(&mut self, r: Result<(), nl::Error>) {
        if let Err(e) = r {
            self.err.get_or_insert(e);
        }
    }
    fn put_u32(&mut self, ty: u8, v: u32) {
        let r = self.u.put_u32(ty, v);
        self.keep(r);
    }
    fn put_strz(&mut self, ty: u8, s: &str) {
        let r = self.u.put_strz(ty, s);
        self.keep(r);
    }
    fn nest(&mut self, ty: u8, inner: &Udata) {
        let r = self.u.nest(ty, inner);
        self.keep(r);
    }
    fn done(self) -> Result<Udata, String> {
        match self.err {
            Some(e) => Err(e.to_string()),
            None => Ok(self.u),
        }
    }
}

/// The set declaration as a libnftnl set (`id`: its NFTA_SET_ID in the batch).
pub(super) fn set_object(table: &TableRef, set: &Set, id: u32) -> Result<nl::Set, String> {
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
    let mut s = nl::Set::new();
    s.set_str(sys::NFTNL_SET_TABLE, &table.name).map_err(err)?;
    s.set_str(sys::NFTNL_SET_NAME, &set.name).map_err(err)?;
    s.set_u32(sys::NFTNL_SET_FLAGS, flags).map_err(err)?;
    s.set_u32(sys::NFTNL_SET_KEY_TYPE, concat_type(&set.key))
        .map_err(err)?;
    s.set_u32(sys::NFTNL_SET_KEY_LEN, key_len(&set.key) as u32)
        .map_err(err)?;
    match &set.data {
        SetData::None => {}
        SetData::Verdict => {
            s.set_u32(sys::NFTNL_SET_DATA_TYPE, c::NFT_DATA_VERDICT)
                .map_err(err)?;
            s.set_u32(sys::NFTNL_SET_DATA_LEN, 0).map_err(err)?;
        }
        SetData::Values(v) => {
            s.set_u32(sys::NFTNL_SET_DATA_TYPE, concat_type(v))
                .map_err(err)?;
            s.set_u32(sys::NFTNL_SET_DATA_LEN, key_len(v) as u32)
                .map_err(err)?;
        }
    }
    s.set_u32(sys::NFTNL_SET_ID, id).map_err(err)?;
    if let Some(n) = set.size {
        s.set_u32(sys::NFTNL_SET_DESC_SIZE, n).map_err(err)?;
    }
    if concat_interval {
        // Field lengths in bytes (the kernel wants NFT_SET_CONCAT in the flags too, else
        // EINVAL); libnftnl writes one nest per field.
        let lens: Vec<u8> = set.key.iter().map(|t| t.byte_len() as u8).collect();
        s.set_bytes(sys::NFTNL_SET_DESC_CONCAT, &lens)
            .map_err(err)?;
    }
    if let Some(t) = set.timeout {
        s.set_u64(sys::NFTNL_SET_TIMEOUT, t as u64 * 1000)
            .map_err(err)?;
    }
    let mut u = Tlv::new();
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
    let u = u.done()?;
    s.set_bytes(sys::NFTNL_SET_USERDATA, u.bytes())
        .map_err(err)?;
    Ok(s)
}

/// Bytes of one value of type `t` (unpadded). Prefixes give their network address.
pub fn value_bytes(v: &Value, t: DataType) -> Result<Vec<u8>, String> {
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
        out.resize(out.len().next_multiple_of(4), 0);
    }
    out
}

#[derive(Clone, Copy)]
pub(super) enum ElemRef<'a> {
    Add(&'a Element),
    Delete(&'a [Value]),
}

impl ElemRef<'_> {
    /// The element as `nft` writes it (error messages).
    pub(super) fn text(self) -> String {
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

/// One element's libnftnl objects: the element, and for a plain interval set the
/// end-flagged element that closes its range.
pub(super) struct ElemObjects(nl::Elem, Option<nl::Elem>);

impl ElemObjects {
    pub(super) fn iter(&self) -> impl Iterator<Item = &nl::Elem> {
        std::iter::once(&self.0).chain(self.1.as_ref())
    }
}

/// The userdata of the last comment, for the next object with the same one (a service's
/// endpoint elements come one after another with one comment, its rules too).
#[derive(Default)]
pub(super) struct CommentCache {
    ty: u8,
    comment: String,
    udata: Vec<u8>,
}

impl CommentCache {
    /// nft's userdata holding one comment (`ty`: the object's comment TLV type).
    pub(super) fn udata(&mut self, ty: u8, comment: &str) -> Result<&[u8], String> {
        if self.comment != comment || self.ty != ty || self.udata.is_empty() {
            let mut u = Tlv::new();
            u.put_strz(ty, &clean_comment(comment));
            let u = u.done()?;
            self.udata.clear();
            self.udata.extend_from_slice(u.bytes());
            self.comment.clear();
            self.comment.push_str(comment);
            self.ty = ty;
        }
        Ok(&self.udata)
    }
}

/// One element as nft writes it, as libnftnl elements: interval sets get a start element
/// and an end-flagged element (`last + 1`; none when the range reaches the top of the
/// address space, where nft marks the start "open" in userdata); concatenated interval
/// sets (pipapo) get one element with `NFTA_SET_ELEM_KEY_END` = the last key (inclusive).
pub(super) fn element_objects(
    family: Family,
    shape: &SetShape,
    e: ElemRef<'_>,
    comments: &mut CommentCache,
) -> Result<ElemObjects, String> {
    let (key, data, comment) = match e {
        ElemRef::Add(e) => (&e.key[..], Some(&e.data), e.comment.as_deref()),
        ElemRef::Delete(k) => (k, None, None),
    };
    check_key(family, shape, key)?;
    let data_imm = element_data(data, shape)?;

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
        let open;
        let udata: &[u8] = match (end, comment) {
            (Some(_), Some(cm)) => comments.udata(c::UDATA_SET_ELEM_COMMENT, cm)?,
            (Some(_), None) => &[],
            (None, _) => {
                let mut u = Tlv::new();
                if let Some(cm) = comment {
                    u.put_strz(c::UDATA_SET_ELEM_COMMENT, &clean_comment(cm));
                }
                u.put_u32(c::UDATA_SET_ELEM_FLAGS, c::UDATA_SET_ELEM_F_INTERVAL_OPEN);
                open = u.done()?;
                open.bytes()
            }
        };
        let start = elem(0, &be_bytes(first, len), None, data_imm.as_ref(), udata)?;
        let end = match end {
            Some(end) => Some(elem(
                c::NFT_SET_ELEM_INTERVAL_END,
                &be_bytes(end, len),
                None,
                None,
                &[],
            )?),
            None => None,
        };
        return Ok(ElemObjects(start, end));
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
    let udata = match comment {
        Some(cm) => comments.udata(c::UDATA_SET_ELEM_COMMENT, cm)?,
        None => &[],
    };
    Ok(ElemObjects(
        elem(
            0,
            &concat_bytes(&start),
            key_end.as_deref(),
            data_imm.as_ref(),
            udata,
        )?,
        None,
    ))
}

fn elem(
    flags: u32,
    key: &[u8],
    key_end: Option<&[u8]>,
    data: Option<&ImmData>,
    udata: &[u8],
) -> Result<nl::Elem, String> {
    let mut e = nl::Elem::new();
    if flags != 0 {
        e.set_u32(sys::NFTNL_SET_ELEM_FLAGS, flags).map_err(err)?;
    }
    e.set_bytes(sys::NFTNL_SET_ELEM_KEY, key).map_err(err)?;
    if let Some(k) = key_end {
        e.set_bytes(sys::NFTNL_SET_ELEM_KEY_END, k).map_err(err)?;
    }
    match data {
        None => {}
        Some(ImmData::Value(v)) => e.set_bytes(sys::NFTNL_SET_ELEM_DATA, v).map_err(err)?,
        Some(ImmData::Verdict { code, chain }) => {
            e.set_u32(sys::NFTNL_SET_ELEM_VERDICT, *code as u32)
                .map_err(err)?;
            if let Some(ch) = chain {
                e.set_str(sys::NFTNL_SET_ELEM_CHAIN, ch).map_err(err)?;
            }
        }
    }
    if !udata.is_empty() {
        e.set_bytes(sys::NFTNL_SET_ELEM_USERDATA, udata)
            .map_err(err)?;
    }
    Ok(e)
}
