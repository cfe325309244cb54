//! Expressions → statements: rules read back from the kernel, recognised as the
//! expression sequences [`super`] encodes (and `nft` emits) for each [`Stmt`]; anything
//! else becomes [`Stmt::Foreign`] with a libnftnl-like description.
//!
//! Owns: decoding only. Must not: guess: an expression sequence it does not recognise is
//! kept as a foreign statement, never read as the nearest statement kproxy knows.

use super::*;

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
                Value::Iface(String::from_utf8(data[..end].to_vec()).ok()?.into())
            } else if !data.is_empty() && data.len() < 16 && !data.contains(&0) {
                Value::Iface(format!("{}*", String::from_utf8(data.to_vec()).ok()?).into())
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
pub(super) const NAT_FLAGS_KERNEL_ADDS: u32 = 0x1 | NF_NAT_RANGE_PROTO_SPECIFIED;

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
            modulus: PICK_SPACE,
            ty: NFT_NG_RANDOM,
            offset,
        }, Expr::Byteorder {
            sreg: 1,
            dreg: 1,
            op: NFT_BYTEORDER_HTON,
            len: 4,
            size: 4,
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
                Stmt::DnatPick {
                    proto,
                    offset: *offset,
                    map: set.clone(),
                },
                6,
            ))
        }
        _ => super::affinity::decode(family, proto, e),
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
            sreg_data: None,
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
