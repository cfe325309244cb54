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
    PICK_SPACE,
};

mod affinity;
mod decode;
pub use decode::{decode_stmts, ip_from};

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

/// `reg 1 OP data`.
fn cmp_reg1(op: CmpOp, data: Vec<u8>) -> Expr {
    Expr::Cmp {
        sreg: NFT_REG_1,
        op: cmp_op(op),
        data,
    }
}

fn encode_cmp(
    family: Family,
    field: &Field,
    op: CmpOp,
    value: &Value,
    out: &mut Vec<Expr>,
) -> Result<(), String> {
    let r = NFT_REG_1;
    let cmp = |data: Vec<u8>| cmp_reg1(op, data);
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
    let cmp = |data: Vec<u8>| cmp_reg1(op, data);
    let net = addr_bytes(family, &n.network())?;
    let full = net.len();
    let p = n.prefix();
    if p as usize == full * 8 {
        load(family, field, r, out);
        out.push(cmp(net));
    } else if p.is_multiple_of(8) && p > 0 {
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
    use super::nf_tables::c;
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
    use super::nf_tables::c;
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
                sreg_data: None,
                extra: false,
            });
        }
        Stmt::SetMark(m) => encode_set_mark(m, out),
        Stmt::DnatTo { proto, addr, port } => encode_dnat_to(family, *proto, addr, *port, out)?,
        Stmt::DnatPick { proto, offset, map } => {
            encode_dnat_pick(family, *proto, *offset, map, sets, out)
        }
        Stmt::DnatAffinity {
            proto,
            list,
            offset,
            pick,
            endpoints,
            step,
        } => affinity::encode(
            family,
            affinity::Rule {
                proto: *proto,
                list: *list,
                offset: *offset,
                pick,
                endpoints,
                step,
            },
            sets,
            out,
        ),
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

/// `numgen random mod 65536 offset O` into `reg`, in network byte order (interval maps
/// compare keys as big-endian bytes; nft emits the same `byteorder`).
fn pick(reg: u32, offset: u32, out: &mut Vec<Expr>) {
    out.push(Expr::Numgen {
        dreg: reg,
        modulus: PICK_SPACE,
        ty: NFT_NG_RANDOM,
        offset,
    });
    out.push(Expr::Byteorder {
        sreg: reg,
        dreg: reg,
        op: NFT_BYTEORDER_HTON,
        len: 4,
        size: 4,
    });
}

/// `dnat … to numgen random mod 65536 offset O map @M`: the pick, converted to network
/// byte order (interval maps compare keys as big-endian bytes; nft emits the same
/// `byteorder`), looked up in the interval map, whose data `addr . port` feeds the NAT.
fn encode_dnat_pick(
    family: Family,
    proto: Protocol,
    offset: u32,
    map: &str,
    sets: &dyn Fn(&str) -> SetRef,
    out: &mut Vec<Expr>,
) {
    let r = NFT_REG_1;
    let sr = sets(map);
    l4proto_dep(proto, out);
    pick(r, offset, out);
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
