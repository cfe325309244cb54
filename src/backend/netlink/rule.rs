//! Statements ↔ expressions: how each kproxy [`Stmt`] becomes the expressions `nft` 1.0.6
//! emits for the same text (checked with `nft --debug=netlink`), and the inverse for rules
//! read back from the kernel.
//!
//! Registers follow nft: every statement starts again at the first data register; the
//! parts of a concatenated key sit in consecutive 32-bit registers (each part takes
//! ceil(len/4) of them) and are numbered as nft numbers them (a 16-byte aligned position is
//! written as the 128-bit `NFT_REG_1..4`, any other as `NFT_REG32_00 + index`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;

use super::expr::*;
use crate::nft::{
    CmpOp, CtState, CtStatus, Family, FibType, Field, MarkOp, Protocol, Stmt, Value, Verdict,
};

/// What a rule needs to know about a set it references.
#[derive(Clone, Copy, Debug, Default)]
pub struct SetRef {
    /// `NFTA_SET_ID` when the set is created in the same batch.
    pub id: Option<u32>,
    /// Interval flag (concatenated interval sets get nft's byteorder conversions).
    pub interval: bool,
}

const CT_STATE_NEW: u32 = 1 << 3; // NF_CT_STATE_BIT(IP_CT_NEW)
const IPS_DST_NAT: u32 = 1 << 5;

fn addr_offsets(family: Family) -> (u32, u32, u32) {
    match family {
        Family::V4 => (12, 16, 4),
        Family::V6 => (8, 24, 16),
    }
}

fn nfproto(family: Family) -> u32 {
    match family {
        Family::V4 => 2,
        Family::V6 => 10,
    }
}

fn addr_bytes(family: Family, a: &IpAddr) -> Result<Vec<u8>, String> {
    match (family, a) {
        (Family::V4, IpAddr::V4(v)) => Ok(v.octets().to_vec()),
        (Family::V6, IpAddr::V6(v)) => Ok(v.octets().to_vec()),
        _ => Err(format!("address {a} in an {family} table")),
    }
}

/// Byte length of a field's value in registers.
pub fn field_len(family: Family, f: &Field) -> u32 {
    match f {
        Field::Saddr | Field::Daddr => addr_offsets(family).2,
        Field::L4Proto => 1,
        Field::ThDport | Field::Dport(_) => 2,
        Field::Iifname => 16,
        Field::Mark
        | Field::MarkAnd(_)
        | Field::FibSaddrType
        | Field::FibDaddrType
        | Field::CtState
        | Field::CtStatus
        | Field::Numgen { .. } => 4,
    }
}

/// Loads a field into `dreg` (a `MarkAnd` includes its mask).
fn load(family: Family, f: &Field, dreg: u32, out: &mut Vec<Expr>) {
    let (s, d, len) = addr_offsets(family);
    match f {
        Field::Saddr | Field::Daddr => out.push(Expr::Payload {
            dreg,
            base: NFT_PAYLOAD_NETWORK_HEADER,
            offset: if *f == Field::Saddr { s } else { d },
            len,
        }),
        Field::ThDport | Field::Dport(_) => out.push(Expr::Payload {
            dreg,
            base: NFT_PAYLOAD_TRANSPORT_HEADER,
            offset: 2,
            len: 2,
        }),
        Field::L4Proto => out.push(Expr::Meta {
            key: NFT_META_L4PROTO,
            dreg,
        }),
        Field::Mark => out.push(Expr::Meta {
            key: NFT_META_MARK,
            dreg,
        }),
        Field::MarkAnd(m) => {
            out.push(Expr::Meta {
                key: NFT_META_MARK,
                dreg,
            });
            out.push(Expr::Bitwise {
                sreg: dreg,
                dreg,
                len: 4,
                mask: m.to_ne_bytes().to_vec(),
                xor: vec![0; 4],
                op: 0,
            });
        }
        Field::Iifname => out.push(Expr::Meta {
            key: NFT_META_IIFNAME,
            dreg,
        }),
        Field::FibSaddrType | Field::FibDaddrType => out.push(Expr::Fib {
            flags: if *f == Field::FibSaddrType {
                NFTA_FIB_F_SADDR
            } else {
                NFTA_FIB_F_DADDR
            },
            result: NFT_FIB_RESULT_ADDRTYPE,
            dreg,
        }),
        Field::CtState | Field::CtStatus => out.push(Expr::Ct {
            key: if *f == Field::CtState {
                NFT_CT_STATE
            } else {
                NFT_CT_STATUS
            },
            dreg,
            dir: None,
        }),
        Field::Numgen { modulus, offset } => out.push(Expr::Numgen {
            dreg,
            modulus: *modulus,
            ty: NFT_NG_RANDOM,
            offset: *offset,
        }),
    }
}

fn cmp_op(op: CmpOp) -> u32 {
    match op {
        CmpOp::Eq => NFT_CMP_EQ,
        CmpOp::Ne => NFT_CMP_NEQ,
    }
}

fn l4proto_dep(proto: Protocol, out: &mut Vec<Expr>) {
    out.push(Expr::Meta {
        key: NFT_META_L4PROTO,
        dreg: NFT_REG_1,
    });
    out.push(Expr::Cmp {
        sreg: NFT_REG_1,
        op: NFT_CMP_EQ,
        data: vec![proto.number()],
    });
}

fn prefix_mask(prefix: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| {
            let bits = (prefix as i32 - 8 * i as i32).clamp(0, 8);
            if bits == 0 {
                0
            } else {
                0xffu8 << (8 - bits)
            }
        })
        .collect()
}

fn encode_cmp(
    family: Family,
    field: &Field,
    op: CmpOp,
    value: &Value,
    out: &mut Vec<Expr>,
) -> Result<(), String> {
    let r = NFT_REG_1;
    let cmp = |data: Vec<u8>| Expr::Cmp {
        sreg: r,
        op: cmp_op(op),
        data,
    };
    let mismatch = || {
        Err(format!(
            "cannot compare {} with {}",
            crate::nft::text::field(family, field),
            crate::nft::text::value(value)
        ))
    };
    match (field, value) {
        (Field::Saddr | Field::Daddr, Value::Addr(a)) => {
            let b = addr_bytes(family, a)?;
            load(family, field, r, out);
            out.push(cmp(b));
        }
        (Field::Saddr | Field::Daddr, Value::Net(n)) => cmp_prefix(family, field, op, n, out)?,
        (Field::L4Proto, Value::Proto(p)) => {
            load(family, field, r, out);
            out.push(cmp(vec![p.number()]));
        }
        (Field::L4Proto, Value::Int(n)) if *n < 256 => {
            load(family, field, r, out);
            out.push(cmp(vec![*n as u8]));
        }
        (Field::ThDport, Value::Port(p)) => {
            load(family, field, r, out);
            out.push(cmp(p.to_be_bytes().to_vec()));
        }
        (Field::Dport(proto), Value::Port(p)) => {
            l4proto_dep(*proto, out);
            load(family, field, r, out);
            out.push(cmp(p.to_be_bytes().to_vec()));
        }
        (Field::Mark | Field::MarkAnd(_) | Field::Numgen { .. }, Value::Int(v)) => {
            load(family, field, r, out);
            out.push(cmp(v.to_ne_bytes().to_vec()));
        }
        (Field::Iifname, Value::Iface(name)) => {
            let data = iface_data(name)?;
            load(family, field, r, out);
            out.push(cmp(data));
        }
        (Field::FibSaddrType | Field::FibDaddrType, Value::FibType(FibType::Local)) => {
            load(family, field, r, out);
            out.push(cmp(RTN_LOCAL.to_ne_bytes().to_vec()));
        }
        (Field::CtState, Value::CtState(CtState::New))
        | (Field::CtStatus, Value::CtStatus(CtStatus::Dnat)) => {
            let bit = if *field == Field::CtState {
                CT_STATE_NEW
            } else {
                IPS_DST_NAT
            };
            load(family, field, r, out);
            cmp_bit(op, bit, out);
        }
        _ => return mismatch(),
    }
    Ok(())
}

/// An address compared with a prefix: a plain compare for a full-length prefix, a
/// shortened load for a byte-aligned one (as nft does), else a masked compare.
fn cmp_prefix(
    family: Family,
    field: &Field,
    op: CmpOp,
    n: &IpNetwork,
    out: &mut Vec<Expr>,
) -> Result<(), String> {
    let r = NFT_REG_1;
    let cmp = |data: Vec<u8>| Expr::Cmp {
        sreg: r,
        op: cmp_op(op),
        data,
    };
    let net = addr_bytes(family, &n.network())?;
    let full = net.len();
    let p = n.prefix();
    if p as usize == full * 8 {
        load(family, field, r, out);
        out.push(cmp(net));
    } else if p % 8 == 0 && p > 0 {
        // nft shortens the load to the prefix's bytes.
        let (s, d, _) = addr_offsets(family);
        out.push(Expr::Payload {
            dreg: r,
            base: NFT_PAYLOAD_NETWORK_HEADER,
            offset: if *field == Field::Saddr { s } else { d },
            len: p as u32 / 8,
        });
        out.push(cmp(net[..p as usize / 8].to_vec()));
    } else {
        load(family, field, r, out);
        let mask = prefix_mask(p, full);
        let masked: Vec<u8> = net.iter().zip(&mask).map(|(a, m)| a & m).collect();
        out.push(Expr::Bitwise {
            sreg: r,
            dreg: r,
            len: full as u32,
            mask,
            xor: vec![0; full],
            op: 0,
        });
        out.push(cmp(masked));
    }
    Ok(())
}

/// An `iifname` operand: 16 bytes NUL-padded, or a wildcard's prefix bytes.
fn iface_data(name: &str) -> Result<Vec<u8>, String> {
    let data = match name.strip_suffix('*') {
        Some(prefix) if !prefix.is_empty() => prefix.as_bytes().to_vec(),
        Some(_) => return Err("empty interface wildcard".into()),
        None => {
            if name.len() >= 16 {
                return Err(format!("interface name {name:?} longer than 15 bytes"));
            }
            let mut v = name.as_bytes().to_vec();
            v.resize(16, 0);
            v
        }
    };
    if data.len() > 16 {
        return Err(format!("interface name {name:?} longer than 16 bytes"));
    }
    Ok(data)
}

/// A conntrack bit test: `Eq` is "has the bit" ((x & bit) != 0), `Ne` compares the whole
/// word with the bit, as nft encodes them.
fn cmp_bit(op: CmpOp, bit: u32, out: &mut Vec<Expr>) {
    let r = NFT_REG_1;
    match op {
        // "has the bit": (x & bit) != 0
        CmpOp::Eq => {
            out.push(Expr::Bitwise {
                sreg: r,
                dreg: r,
                len: 4,
                mask: bit.to_ne_bytes().to_vec(),
                xor: vec![0; 4],
                op: 0,
            });
            out.push(Expr::Cmp {
                sreg: r,
                op: NFT_CMP_NEQ,
                data: vec![0; 4],
            });
        }
        CmpOp::Ne => out.push(Expr::Cmp {
            sreg: r,
            op: NFT_CMP_NEQ,
            data: bit.to_ne_bytes().to_vec(),
        }),
    }
}

/// Loads a (possibly concatenated) key into consecutive registers starting at the first.
fn encode_key(
    family: Family,
    key: &[Field],
    set: SetRef,
    out: &mut Vec<Expr>,
) -> Result<(), String> {
    if key.is_empty() {
        return Err("empty key".into());
    }
    let mut deps: Vec<Protocol> = Vec::new();
    for f in key {
        if let Field::Dport(p) = f {
            if !deps.contains(p) {
                deps.push(*p);
            }
        }
    }
    for p in deps {
        l4proto_dep(p, out);
    }
    let concat_interval = key.len() > 1 && set.interval;
    let mut idx = 0u32;
    for f in key {
        let reg = reg_number(idx);
        load(family, f, reg, out);
        if concat_interval {
            // nft converts host-endian parts to network order for interval (pipapo)
            // lookups; for a 1-byte protocol it writes size 2, len 1 (a no-op swap).
            let conv = match f {
                Field::L4Proto => Some((1, 2)),
                Field::Mark
                | Field::MarkAnd(_)
                | Field::Numgen { .. }
                | Field::CtState
                | Field::CtStatus
                | Field::FibSaddrType
                | Field::FibDaddrType => Some((4, 4)),
                _ => None,
            };
            if let Some((len, size)) = conv {
                out.push(Expr::Byteorder {
                    sreg: reg,
                    dreg: reg,
                    op: NFT_BYTEORDER_HTON,
                    len,
                    size,
                });
            }
        }
        idx += field_len(family, f).div_ceil(4);
    }
    if idx > 16 {
        return Err("key longer than the 64 bytes of registers".into());
    }
    Ok(())
}

fn verdict_data(v: &Verdict) -> ImmData {
    use super::wire::c;
    let (code, chain) = match v {
        Verdict::Accept => (c::NF_ACCEPT, None),
        Verdict::Drop => (c::NF_DROP, None),
        Verdict::Return => (c::NFT_RETURN, None),
        Verdict::Jump(ch) => (c::NFT_JUMP, Some(ch.clone())),
        Verdict::Goto(ch) => (c::NFT_GOTO, Some(ch.clone())),
    };
    ImmData::Verdict { code, chain }
}

/// The verdict an element or immediate carries, if it is one kproxy can name.
pub fn verdict_of(code: i32, chain: Option<&str>) -> Option<Verdict> {
    use super::wire::c;
    match (code, chain) {
        (c::NF_ACCEPT, _) => Some(Verdict::Accept),
        (c::NF_DROP, _) => Some(Verdict::Drop),
        (c::NFT_RETURN, _) => Some(Verdict::Return),
        (c::NFT_JUMP, Some(ch)) => Some(Verdict::Jump(ch.to_string())),
        (c::NFT_GOTO, Some(ch)) => Some(Verdict::Goto(ch.to_string())),
        _ => None,
    }
}

/// Encoded verdict data (for verdict map elements).
pub fn verdict_imm(v: &Verdict) -> ImmData {
    verdict_data(v)
}

/// The expressions of one rule.
pub fn encode_stmts(
    family: Family,
    stmts: &[Stmt],
    sets: &dyn Fn(&str) -> SetRef,
) -> Result<Vec<Expr>, String> {
    let mut out = Vec::new();
    for s in stmts {
        encode_stmt(family, s, sets, &mut out)?;
    }
    Ok(out)
}

fn encode_stmt(
    family: Family,
    s: &Stmt,
    sets: &dyn Fn(&str) -> SetRef,
    out: &mut Vec<Expr>,
) -> Result<(), String> {
    let r = NFT_REG_1;
    match s {
        Stmt::Cmp { field, op, value } => encode_cmp(family, field, *op, value, out)?,
        Stmt::Lookup { key, set, negate } => {
            let sr = sets(set);
            encode_key(family, key, sr, out)?;
            out.push(Expr::Lookup {
                sreg: r,
                dreg: None,
                set: set.clone(),
                set_id: sr.id,
                flags: if *negate { NFT_LOOKUP_F_INV } else { 0 },
            });
        }
        Stmt::Vmap { key, map } => {
            let sr = sets(map);
            encode_key(family, key, sr, out)?;
            out.push(Expr::Lookup {
                sreg: r,
                dreg: Some(NFT_REG_VERDICT),
                set: map.clone(),
                set_id: sr.id,
                flags: 0,
            });
        }
        Stmt::Update { set, key } => {
            let sr = sets(set);
            encode_key(family, key, sr, out)?;
            // No NFTA_DYNSET_TIMEOUT, as nft: the kernel then uses the set's timeout.
            out.push(Expr::Dynset {
                sreg_key: r,
                op: NFT_DYNSET_OP_UPDATE,
                set: set.clone(),
                set_id: sr.id,
                timeout: 0,
                extra: false,
            });
        }
        Stmt::SetMark(m) => encode_set_mark(m, out),
        Stmt::DnatTo { proto, addr, port } => encode_dnat_to(family, *proto, addr, *port, out)?,
        Stmt::DnatSlot {
            proto,
            modulus,
            offset,
            map,
        } => encode_dnat_slot(family, *proto, *modulus, *offset, map, sets, out)?,
        Stmt::Masquerade => out.push(Expr::Masq {
            flags: NF_NAT_RANGE_PROTO_RANDOM_FULLY,
            proto_min: None,
        }),
        Stmt::Reject => out.push(Expr::Reject {
            ty: NFT_REJECT_ICMP_UNREACH,
            code: match family {
                Family::V4 => ICMP_PORT_UNREACH,
                Family::V6 => ICMPV6_PORT_UNREACH,
            },
        }),
        Stmt::Verdict(v) => out.push(Expr::Immediate {
            dreg: NFT_REG_VERDICT,
            data: verdict_data(v),
        }),
        Stmt::Foreign(d) => return Err(format!("foreign statement cannot be sent: {d}")),
    }
    Ok(())
}

/// `meta mark set mark | x` or `^ x`: load, bitwise, store.
fn encode_set_mark(m: &MarkOp, out: &mut Vec<Expr>) {
    let r = NFT_REG_1;
    let (mask, xor) = match m {
        MarkOp::Or(x) => (!x, *x),
        MarkOp::Xor(x) => (u32::MAX, *x),
    };
    out.push(Expr::Meta {
        key: NFT_META_MARK,
        dreg: r,
    });
    out.push(Expr::Bitwise {
        sreg: r,
        dreg: r,
        len: 4,
        mask: mask.to_ne_bytes().to_vec(),
        xor: xor.to_ne_bytes().to_vec(),
        op: 0,
    });
    out.push(Expr::MetaSet {
        key: NFT_META_MARK,
        sreg: r,
    });
}

/// DNAT to one fixed address and port.
fn encode_dnat_to(
    family: Family,
    proto: Protocol,
    addr: &IpAddr,
    port: u16,
    out: &mut Vec<Expr>,
) -> Result<(), String> {
    let a = addr_bytes(family, addr)?;
    l4proto_dep(proto, out);
    out.push(Expr::Immediate {
        dreg: NFT_REG_1,
        data: ImmData::Value(a),
    });
    out.push(Expr::Immediate {
        dreg: NFT_REG_1 + 1,
        data: ImmData::Value(port.to_be_bytes().to_vec()),
    });
    out.push(Expr::Nat {
        ty: NFT_NAT_DNAT,
        family: nfproto(family),
        addr_min: Some(NFT_REG_1),
        addr_max: None,
        proto_min: Some(NFT_REG_1 + 1),
        proto_max: None,
        flags: NF_NAT_RANGE_PROTO_SPECIFIED,
    });
    Ok(())
}

/// DNAT to the endpoint in slot `offset + random % modulus` of an endpoint map.
fn encode_dnat_slot(
    family: Family,
    proto: Protocol,
    modulus: u32,
    offset: u32,
    map: &str,
    sets: &dyn Fn(&str) -> SetRef,
    out: &mut Vec<Expr>,
) -> Result<(), String> {
    let r = NFT_REG_1;
    if modulus == 0 {
        return Err("numgen modulus 0".into());
    }
    let sr = sets(map);
    l4proto_dep(proto, out);
    out.push(Expr::Numgen {
        dreg: r,
        modulus: modulus,
        ty: NFT_NG_RANDOM,
        offset: offset,
    });
    out.push(Expr::Lookup {
        sreg: r,
        dreg: Some(r),
        set: map.to_string(),
        set_id: sr.id,
        flags: 0,
    });
    // The map's data is `addr . port`: the port sits in the 32-bit register after
    // the address (NFT_REG32_01 for IPv4, NFT_REG_2 for IPv6).
    let port_reg = reg_number(addr_offsets(family).2 / 4);
    out.push(Expr::Nat {
        ty: NFT_NAT_DNAT,
        family: nfproto(family),
        addr_min: Some(r),
        addr_max: None,
        proto_min: Some(port_reg),
        proto_max: None,
        flags: 0,
    });
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Decoding

/// A value loaded into a register, possibly masked.
#[derive(Clone, Debug)]
struct Load {
    reg: u32,
    expr: Expr,
    /// `(mask, xor)` of a following bitwise on the same register.
    bitwise: Option<(Vec<u8>, Vec<u8>)>,
}

fn is_load(e: &Expr) -> Option<u32> {
    match e {
        Expr::Payload { dreg, .. }
        | Expr::Meta { dreg, .. }
        | Expr::Ct { dreg, .. }
        | Expr::Fib { dreg, .. }
        | Expr::Numgen { dreg, .. } => Some(*dreg),
        _ => None,
    }
}

/// Reads loads (each optionally followed by a mask-xor bitwise and/or a byteorder on the
/// same register) starting at `i`.
fn read_loads(exprs: &[Expr], mut i: usize) -> (Vec<Load>, usize) {
    let mut loads = Vec::new();
    while let Some(reg) = exprs.get(i).and_then(is_load) {
        if reg == NFT_REG_VERDICT {
            break;
        }
        let mut l = Load {
            reg,
            expr: exprs[i].clone(),
            bitwise: None,
        };
        i += 1;
        if let Some(Expr::Bitwise {
            sreg,
            dreg,
            mask,
            xor,
            op: 0,
            ..
        }) = exprs.get(i)
        {
            if *sreg == reg && *dreg == reg {
                l.bitwise = Some((mask.clone(), xor.clone()));
                i += 1;
            }
        }
        if let Some(Expr::Byteorder { sreg, dreg, .. }) = exprs.get(i) {
            if *sreg == reg && *dreg == reg {
                i += 1;
            }
        }
        loads.push(l);
    }
    (loads, i)
}

/// The field a plain (full-width) load reads.
fn field_of(family: Family, l: &Load) -> Option<Field> {
    let (s, d, alen) = addr_offsets(family);
    let f = match &l.expr {
        Expr::Payload {
            base: NFT_PAYLOAD_NETWORK_HEADER,
            offset,
            len,
            ..
        } if *len == alen && (*offset == s || *offset == d) => {
            if *offset == s {
                Field::Saddr
            } else {
                Field::Daddr
            }
        }
        Expr::Payload {
            base: NFT_PAYLOAD_TRANSPORT_HEADER,
            offset: 2,
            len: 2,
            ..
        } => Field::ThDport,
        Expr::Meta {
            key: NFT_META_L4PROTO,
            ..
        } => Field::L4Proto,
        Expr::Meta {
            key: NFT_META_MARK, ..
        } => match &l.bitwise {
            Some((mask, xor)) if xor.iter().all(|b| *b == 0) && mask.len() == 4 => {
                return Some(Field::MarkAnd(u32::from_ne_bytes(
                    mask[..].try_into().ok()?,
                )))
            }
            Some(_) => return None,
            None => Field::Mark,
        },
        Expr::Meta {
            key: NFT_META_IIFNAME,
            ..
        } => Field::Iifname,
        Expr::Ct {
            key: NFT_CT_STATE,
            dir: None,
            ..
        } => Field::CtState,
        Expr::Ct {
            key: NFT_CT_STATUS,
            dir: None,
            ..
        } => Field::CtStatus,
        Expr::Fib {
            flags,
            result: NFT_FIB_RESULT_ADDRTYPE,
            ..
        } if *flags == NFTA_FIB_F_SADDR => Field::FibSaddrType,
        Expr::Fib {
            flags,
            result: NFT_FIB_RESULT_ADDRTYPE,
            ..
        } if *flags == NFTA_FIB_F_DADDR => Field::FibDaddrType,
        Expr::Numgen {
            modulus,
            ty: NFT_NG_RANDOM,
            offset,
            ..
        } => Field::Numgen {
            modulus: *modulus,
            offset: *offset,
        },
        _ => return None,
    };
    if l.bitwise.is_some() {
        return None;
    }
    Some(f)
}

fn le32(d: &[u8]) -> Option<u32> {
    (d.len() == 4).then(|| u32::from_ne_bytes(d.try_into().unwrap()))
}

pub fn ip_from(family: Family, b: &[u8]) -> Option<IpAddr> {
    match family {
        Family::V4 => Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(b).ok()?))),
        Family::V6 => Some(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(b).ok()?))),
    }
}

/// Number of leading one bits if `mask` is a contiguous prefix mask.
pub fn mask_prefix(mask: &[u8]) -> Option<u8> {
    let mut n = 0u32;
    let mut ended = false;
    for b in mask {
        for bit in (0..8).rev() {
            let one = b & (1 << bit) != 0;
            if one && ended {
                return None;
            }
            if one {
                n += 1;
            } else {
                ended = true;
            }
        }
    }
    Some(n as u8)
}

/// One `Cmp` statement from a single load and a cmp on its register.
fn decode_cmp(family: Family, l: &Load, op: u32, data: &[u8]) -> Option<Stmt> {
    let cop = match op {
        NFT_CMP_EQ => CmpOp::Eq,
        NFT_CMP_NEQ => CmpOp::Ne,
        _ => return None,
    };
    let (s, d, alen) = addr_offsets(family);
    // Address prefixes: a shortened load, or a full load with a prefix mask.
    if let Expr::Payload {
        base: NFT_PAYLOAD_NETWORK_HEADER,
        offset,
        len,
        ..
    } = &l.expr
    {
        if *offset == s || *offset == d {
            let field = if *offset == s {
                Field::Saddr
            } else {
                Field::Daddr
            };
            if data.len() != *len as usize {
                return None;
            }
            let mut full = data.to_vec();
            full.resize(alen as usize, 0);
            let ip = ip_from(family, &full)?;
            let value = match (&l.bitwise, *len == alen) {
                (None, true) => Value::Addr(ip),
                (None, false) if *len > 0 => Value::Net(IpNetwork::new(ip, (*len * 8) as u8).ok()?),
                (Some((mask, xor)), true) if xor.iter().all(|b| *b == 0) => {
                    Value::Net(IpNetwork::new(ip, mask_prefix(mask)?).ok()?)
                }
                _ => return None,
            };
            return Some(Stmt::Cmp {
                field,
                op: cop,
                value,
            });
        }
    }
    // ct state / status bit tests.
    if let Expr::Ct { key, dir: None, .. } = &l.expr {
        let (field, bit, value) = match *key {
            NFT_CT_STATE => (Field::CtState, CT_STATE_NEW, Value::CtState(CtState::New)),
            NFT_CT_STATUS => (
                Field::CtStatus,
                IPS_DST_NAT,
                Value::CtStatus(CtStatus::Dnat),
            ),
            _ => return None,
        };
        return match (&l.bitwise, op) {
            (Some((mask, xor)), NFT_CMP_NEQ)
                if le32(mask) == Some(bit)
                    && xor.iter().all(|b| *b == 0)
                    && le32(data) == Some(0) =>
            {
                Some(Stmt::Cmp {
                    field,
                    op: CmpOp::Eq,
                    value,
                })
            }
            (None, NFT_CMP_NEQ) if le32(data) == Some(bit) => Some(Stmt::Cmp {
                field,
                op: CmpOp::Ne,
                value,
            }),
            _ => None,
        };
    }
    let field = field_of(family, l)?;
    let value = match &field {
        Field::L4Proto if data.len() == 1 => match Protocol::from_number(data[0]) {
            Some(p) => Value::Proto(p),
            None => Value::Int(data[0] as u32),
        },
        Field::ThDport if data.len() == 2 => Value::Port(u16::from_be_bytes([data[0], data[1]])),
        Field::Mark | Field::MarkAnd(_) | Field::Numgen { .. } => Value::Int(le32(data)?),
        Field::Iifname => {
            if data.len() == 16 {
                let end = data.iter().position(|b| *b == 0)?;
                if data[end..].iter().any(|b| *b != 0) {
                    return None;
                }
                Value::Iface(String::from_utf8(data[..end].to_vec()).ok()?)
            } else if !data.is_empty() && data.len() < 16 && !data.contains(&0) {
                Value::Iface(format!("{}*", String::from_utf8(data.to_vec()).ok()?))
            } else {
                return None;
            }
        }
        Field::FibSaddrType | Field::FibDaddrType if le32(data) == Some(RTN_LOCAL) => {
            Value::FibType(FibType::Local)
        }
        _ => return None,
    };
    Some(Stmt::Cmp {
        field,
        op: cop,
        value,
    })
}

/// The key fields of a lookup whose loads fill consecutive registers from the first.
fn decode_key(family: Family, loads: &[Load], sreg: u32) -> Option<Vec<Field>> {
    if loads.is_empty() || sreg != NFT_REG_1 {
        return None;
    }
    let mut idx = 0u32;
    let mut key = Vec::new();
    for l in loads {
        if reg_index(l.reg)? != idx {
            return None;
        }
        let f = field_of(family, l)?;
        idx += field_len(family, &f).div_ceil(4);
        key.push(f);
    }
    Some(key)
}

/// `meta l4proto P` just before a transport port: nft's dependency, folded into
/// `P dport` (that is how nft prints it, and how kproxy writes it).
fn fold_dport(out: &mut Vec<Stmt>, key: &mut [Field]) {
    if !key.contains(&Field::ThDport) {
        return;
    }
    if let Some(Stmt::Cmp {
        field: Field::L4Proto,
        op: CmpOp::Eq,
        value: Value::Proto(p),
    }) = out.last()
    {
        let p = *p;
        out.pop();
        for f in key.iter_mut() {
            if *f == Field::ThDport {
                *f = Field::Dport(p);
            }
        }
    }
}

/// NAT flags the kernel sets by itself and reports in dumps: `NF_NAT_RANGE_MAP_IPS` (an
/// address register) and `NF_NAT_RANGE_PROTO_SPECIFIED` (a port register); it also
/// reports the max registers equal to the min ones (6.18).
const NAT_FLAGS_KERNEL_ADDS: u32 = 0x1 | NF_NAT_RANGE_PROTO_SPECIFIED;

/// Matches `meta l4proto == P` at the start of `e`.
fn l4proto_eq(e: &[Expr]) -> Option<Protocol> {
    match e {
        [Expr::Meta {
            key: NFT_META_L4PROTO,
            dreg: 1,
        }, Expr::Cmp {
            sreg: 1,
            op: NFT_CMP_EQ,
            data,
        }, ..]
            if data.len() == 1 =>
        {
            Protocol::from_number(data[0])
        }
        _ => None,
    }
}

/// Fixed multi-expression statements (NAT forms, mark rewrites) at the start of `e`.
fn decode_fixed(family: Family, e: &[Expr]) -> Option<(Stmt, usize)> {
    // The NAT forms start with `meta l4proto == P`, which none of the others does.
    if let Some(proto) = l4proto_eq(e) {
        return decode_dnat(family, proto, &e[2..]);
    }
    match e {
        [Expr::Meta {
            key: NFT_META_MARK,
            dreg: 1,
        }, Expr::Bitwise {
            sreg: 1,
            dreg: 1,
            len: 4,
            mask,
            xor,
            op: 0,
        }, Expr::MetaSet {
            key: NFT_META_MARK,
            sreg: 1,
        }, ..] => {
            let (m, x) = (le32(mask)?, le32(xor)?);
            let op = if m == u32::MAX {
                MarkOp::Xor(x)
            } else if m == !x {
                MarkOp::Or(x)
            } else {
                return None;
            };
            Some((Stmt::SetMark(op), 3))
        }
        [Expr::Masq {
            flags: NF_NAT_RANGE_PROTO_RANDOM_FULLY,
            proto_min: None,
        }, ..] => Some((Stmt::Masquerade, 1)),
        [Expr::Reject {
            ty: NFT_REJECT_ICMP_UNREACH,
            code,
        }, ..]
            if *code
                == match family {
                    Family::V4 => ICMP_PORT_UNREACH,
                    Family::V6 => ICMPV6_PORT_UNREACH,
                } =>
        {
            Some((Stmt::Reject, 1))
        }
        [Expr::Immediate {
            dreg: NFT_REG_VERDICT,
            data: ImmData::Verdict { code, chain },
        }, ..] => Some((Stmt::Verdict(verdict_of(*code, chain.as_deref())?), 1)),
        _ => None,
    }
}

/// The DNAT forms after their `meta l4proto == P`: to a fixed address and port, or to a
/// slot of an endpoint map.
fn decode_dnat(family: Family, proto: Protocol, e: &[Expr]) -> Option<(Stmt, usize)> {
    let nfp = nfproto(family);
    match e {
        [Expr::Immediate {
            dreg: 1,
            data: ImmData::Value(a),
        }, Expr::Immediate {
            dreg: 2,
            data: ImmData::Value(p),
        }, Expr::Nat {
            ty: NFT_NAT_DNAT,
            family: f,
            addr_min: Some(1),
            addr_max,
            proto_min: Some(2),
            proto_max,
            flags,
        }, ..]
            if *f == nfp
                && p.len() == 2
                && matches!(addr_max, None | Some(1))
                && matches!(proto_max, None | Some(2))
                && flags & !NAT_FLAGS_KERNEL_ADDS == 0 =>
        {
            Some((
                Stmt::DnatTo {
                    proto,
                    addr: ip_from(family, a)?,
                    port: u16::from_be_bytes([p[0], p[1]]),
                },
                5,
            ))
        }
        [Expr::Numgen {
            dreg: 1,
            modulus,
            ty: NFT_NG_RANDOM,
            offset,
        }, Expr::Lookup {
            sreg: 1,
            dreg: Some(1),
            set,
            flags: 0,
            ..
        }, Expr::Nat {
            ty: NFT_NAT_DNAT,
            family: f,
            addr_min: Some(1),
            addr_max,
            proto_min: Some(pr),
            proto_max,
            flags,
        }, ..]
            if *f == nfp
                && *pr == reg_number(addr_offsets(family).2 / 4)
                && matches!(addr_max, None | Some(1))
                && (proto_max.is_none() || *proto_max == Some(*pr))
                && flags & !NAT_FLAGS_KERNEL_ADDS == 0 =>
        {
            Some((
                Stmt::DnatSlot {
                    proto,
                    modulus: *modulus,
                    offset: *offset,
                    map: set.clone(),
                },
                5,
            ))
        }
        _ => None,
    }
}

/// One statement at `i` (pushed to `out`); returns the next position.
fn decode_one(family: Family, exprs: &[Expr], i: usize, out: &mut Vec<Stmt>) -> Option<usize> {
    if let Some((s, n)) = decode_fixed(family, &exprs[i..]) {
        out.push(s);
        return Some(i + n);
    }
    let (loads, j) = read_loads(exprs, i);
    if loads.is_empty() {
        return None;
    }
    match exprs.get(j)? {
        Expr::Cmp { sreg, op, data } if loads.len() == 1 && loads[0].reg == *sreg => {
            let s = decode_cmp(family, &loads[0], *op, data)?;
            // `meta l4proto P` + `th dport …` is how nft writes `P dport …`.
            if let Stmt::Cmp {
                field: Field::ThDport,
                op,
                value,
            } = &s
            {
                if let Some(Stmt::Cmp {
                    field: Field::L4Proto,
                    op: CmpOp::Eq,
                    value: Value::Proto(p),
                }) = out.last()
                {
                    let s = Stmt::Cmp {
                        field: Field::Dport(*p),
                        op: *op,
                        value: value.clone(),
                    };
                    out.pop();
                    out.push(s);
                    return Some(j + 1);
                }
            }
            out.push(s);
            Some(j + 1)
        }
        Expr::Lookup {
            sreg,
            dreg,
            set,
            flags,
            ..
        } => {
            let mut key = decode_key(family, &loads, *sreg)?;
            fold_dport(out, &mut key);
            let s = match (dreg, *flags) {
                (None, f) if f & !NFT_LOOKUP_F_INV == 0 => Stmt::Lookup {
                    key,
                    set: set.clone(),
                    negate: f & NFT_LOOKUP_F_INV != 0,
                },
                (Some(NFT_REG_VERDICT), 0) => Stmt::Vmap {
                    key,
                    map: set.clone(),
                },
                _ => return None,
            };
            out.push(s);
            Some(j + 1)
        }
        Expr::Dynset {
            sreg_key,
            op: NFT_DYNSET_OP_UPDATE,
            set,
            timeout: 0,
            extra: false,
            ..
        } => {
            let mut key = decode_key(family, &loads, *sreg_key)?;
            fold_dport(out, &mut key);
            out.push(Stmt::Update {
                set: set.clone(),
                key,
            });
            Some(j + 1)
        }
        _ => None,
    }
}

/// Whether an expression ends a statement (anything that is not a load or a register
/// transformation).
fn ends_statement(e: &Expr) -> bool {
    !matches!(
        e,
        Expr::Payload { .. }
            | Expr::Meta { .. }
            | Expr::Ct { .. }
            | Expr::Fib { .. }
            | Expr::Numgen { .. }
            | Expr::Bitwise { .. }
            | Expr::Byteorder { .. }
    ) && !matches!(e, Expr::Immediate { dreg, .. } if *dreg != NFT_REG_VERDICT)
}

/// A rule's statements in kproxy's vocabulary; whatever does not map becomes
/// [`Stmt::Foreign`] with a libnftnl-like description of its expressions.
pub fn decode_stmts(family: Family, exprs: &[Expr]) -> Vec<Stmt> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < exprs.len() {
        if let Some(next) = decode_one(family, exprs, i, &mut out) {
            i = next;
            continue;
        }
        let mut j = i;
        while j < exprs.len() {
            j += 1;
            if ends_statement(&exprs[j - 1]) {
                break;
            }
        }
        let desc = exprs[i..j]
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join(" ");
        out.push(Stmt::Foreign(desc));
        i = j;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_sets(_: &str) -> SetRef {
        SetRef::default()
    }

    #[test]
    fn registers_as_nft_numbers_them() {
        assert_eq!(reg_number(0), 1);
        assert_eq!(reg_number(1), 9);
        assert_eq!(reg_number(2), 10);
        assert_eq!(reg_number(4), 2);
        assert_eq!(reg_number(5), 13);
        for i in 0..16 {
            assert_eq!(reg_index(reg_number(i)), Some(i));
        }
    }

    #[test]
    fn prefixes_encode_like_nft() {
        let s = Stmt::cmp_ne(Field::Saddr, Value::Net("10.244.0.0/16".parse().unwrap()));
        let e = encode_stmts(Family::V4, &[s], &no_sets).unwrap();
        assert_eq!(
            e[0],
            Expr::Payload {
                dreg: 1,
                base: 1,
                offset: 12,
                len: 2
            }
        );
        let s = Stmt::cmp(Field::Saddr, Value::Net("10.240.0.0/12".parse().unwrap()));
        let e = encode_stmts(Family::V4, &[s], &no_sets).unwrap();
        assert!(matches!(&e[1], Expr::Bitwise { mask, .. } if mask == &vec![0xff, 0xf0, 0, 0]));
        assert!(matches!(&e[2], Expr::Cmp { data, .. } if data == &vec![10, 240, 0, 0]));
    }
}
