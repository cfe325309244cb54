//! nf_tables expressions: a typed form of what a rule holds in the kernel, with its
//! netlink encoding (attribute order as libnftnl 1.2.4 writes it for nft 1.0.6) and its
//! parser (tolerant of the extra attributes the kernel adds when it dumps a rule).

use std::fmt;

use super::nf_tables::{c, GetData, PutData};
use crate::netlink::wire::{cstr, Attrs, Writer};

// Expression attribute numbers (nf_tables.h).
const NFTA_PAYLOAD_DREG: u16 = 1;
const NFTA_PAYLOAD_BASE: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;
const NFTA_PAYLOAD_SREG: u16 = 5;
const NFTA_META_DREG: u16 = 1;
const NFTA_META_KEY: u16 = 2;
const NFTA_META_SREG: u16 = 3;
const NFTA_CT_DREG: u16 = 1;
const NFTA_CT_KEY: u16 = 2;
const NFTA_CT_DIRECTION: u16 = 3;
const NFTA_CT_SREG: u16 = 4;
const NFTA_FIB_DREG: u16 = 1;
const NFTA_FIB_RESULT: u16 = 2;
const NFTA_FIB_FLAGS: u16 = 3;
const NFTA_NG_DREG: u16 = 1;
const NFTA_NG_MODULUS: u16 = 2;
const NFTA_NG_TYPE: u16 = 3;
const NFTA_NG_OFFSET: u16 = 4;
const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
const NFTA_BITWISE_SREG: u16 = 1;
const NFTA_BITWISE_DREG: u16 = 2;
const NFTA_BITWISE_LEN: u16 = 3;
const NFTA_BITWISE_MASK: u16 = 4;
const NFTA_BITWISE_XOR: u16 = 5;
const NFTA_BITWISE_OP: u16 = 6;
const NFTA_BYTEORDER_SREG: u16 = 1;
const NFTA_BYTEORDER_DREG: u16 = 2;
const NFTA_BYTEORDER_OP: u16 = 3;
const NFTA_BYTEORDER_LEN: u16 = 4;
const NFTA_BYTEORDER_SIZE: u16 = 5;
const NFTA_LOOKUP_SET: u16 = 1;
const NFTA_LOOKUP_SREG: u16 = 2;
const NFTA_LOOKUP_DREG: u16 = 3;
const NFTA_LOOKUP_SET_ID: u16 = 4;
const NFTA_LOOKUP_FLAGS: u16 = 5;
const NFTA_DYNSET_SET_NAME: u16 = 1;
const NFTA_DYNSET_SET_ID: u16 = 2;
const NFTA_DYNSET_OP: u16 = 3;
const NFTA_DYNSET_SREG_KEY: u16 = 4;
const NFTA_DYNSET_SREG_DATA: u16 = 5;
const NFTA_DYNSET_TIMEOUT: u16 = 6;
const NFTA_DYNSET_EXPR: u16 = 7;
const NFTA_DYNSET_EXPRESSIONS: u16 = 10;
const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;
const NFTA_NAT_TYPE: u16 = 1;
const NFTA_NAT_FAMILY: u16 = 2;
const NFTA_NAT_REG_ADDR_MIN: u16 = 3;
const NFTA_NAT_REG_ADDR_MAX: u16 = 4;
const NFTA_NAT_REG_PROTO_MIN: u16 = 5;
const NFTA_NAT_REG_PROTO_MAX: u16 = 6;
const NFTA_NAT_FLAGS: u16 = 7;
const NFTA_MASQ_FLAGS: u16 = 1;
const NFTA_MASQ_REG_PROTO_MIN: u16 = 2;
const NFTA_REJECT_TYPE: u16 = 1;
const NFTA_REJECT_ICMP_CODE: u16 = 2;

pub const NFT_REG_VERDICT: u32 = 0;
pub const NFT_REG_1: u32 = 1;
pub const NFT_REG32_00: u32 = 8;

pub const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
pub const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
pub const NFT_META_MARK: u32 = 3;
pub const NFT_META_IIFNAME: u32 = 6;
pub const NFT_META_L4PROTO: u32 = 16;
pub const NFT_CT_STATE: u32 = 0;
pub const NFT_CT_STATUS: u32 = 2;
pub const NFTA_FIB_F_SADDR: u32 = 1;
pub const NFTA_FIB_F_DADDR: u32 = 2;
pub const NFT_FIB_RESULT_ADDRTYPE: u32 = 3;
pub const NFT_NG_RANDOM: u32 = 1;
pub const NFT_CMP_EQ: u32 = 0;
pub const NFT_CMP_NEQ: u32 = 1;
pub const NFT_BYTEORDER_HTON: u32 = 1;
pub const NFT_LOOKUP_F_INV: u32 = 1;
pub const NFT_DYNSET_OP_UPDATE: u32 = 1;
pub const NFT_DYNSET_OP_DELETE: u32 = 2;
pub const NFT_NAT_DNAT: u32 = 1;
pub const NFT_REJECT_ICMP_UNREACH: u32 = 0;
/// `NF_NAT_RANGE_PROTO_SPECIFIED` (`linux/netfilter/nf_nat.h`).
pub const NF_NAT_RANGE_PROTO_SPECIFIED: u32 = 0x2;
/// `NF_NAT_RANGE_PROTO_RANDOM_FULLY`.
pub const NF_NAT_RANGE_PROTO_RANDOM_FULLY: u32 = 0x10;
/// `RTN_LOCAL`: the fib result for a local address.
pub const RTN_LOCAL: u32 = 2;
/// ICMP port unreachable (`ICMP_PORT_UNREACH`) and ICMPv6 port unreachable
/// (`ICMPV6_PORT_UNREACH`): what `reject` means in `ip` / `ip6` tables.
pub const ICMP_PORT_UNREACH: u8 = 3;
pub const ICMPV6_PORT_UNREACH: u8 = 4;

/// The register number nft writes for a 32-bit register index (0 = the first 32 bits of
/// the data registers): a 128-bit register number (`NFT_REG_1..4`) where the index is
/// 16-byte aligned, else `NFT_REG32_00 + index` (nft's `netlink_put_register`).
pub fn reg_number(idx32: u32) -> u32 {
    if idx32.is_multiple_of(4) {
        NFT_REG_1 + idx32 / 4
    } else {
        NFT_REG32_00 + idx32
    }
}

/// The inverse of [`reg_number`]; `None` for the verdict register or garbage.
pub fn reg_index(reg: u32) -> Option<u32> {
    match reg {
        1..=4 => Some((reg - 1) * 4),
        8..=23 => Some(reg - 8),
        _ => None,
    }
}

/// Data of an `immediate` expression or of a map element.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImmData {
    Value(Vec<u8>),
    Verdict { code: i32, chain: Option<String> },
}

/// One nf_tables expression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expr {
    Payload {
        dreg: u32,
        base: u32,
        offset: u32,
        len: u32,
    },
    Meta {
        key: u32,
        dreg: u32,
    },
    MetaSet {
        key: u32,
        sreg: u32,
    },
    Ct {
        key: u32,
        dreg: u32,
        /// Set for keys with a direction (`ct original …`); kproxy never uses them.
        dir: Option<u8>,
    },
    Fib {
        flags: u32,
        result: u32,
        dreg: u32,
    },
    Numgen {
        dreg: u32,
        modulus: u32,
        ty: u32,
        offset: u32,
    },
    Cmp {
        sreg: u32,
        op: u32,
        data: Vec<u8>,
    },
    Bitwise {
        sreg: u32,
        dreg: u32,
        len: u32,
        mask: Vec<u8>,
        xor: Vec<u8>,
        /// `NFTA_BITWISE_OP` when the kernel reports one other than mask-xor (shifts).
        op: u32,
    },
    Byteorder {
        sreg: u32,
        dreg: u32,
        op: u32,
        len: u32,
        size: u32,
    },
    Lookup {
        sreg: u32,
        dreg: Option<u32>,
        set: String,
        set_id: Option<u32>,
        flags: u32,
    },
    Dynset {
        sreg_key: u32,
        op: u32,
        set: String,
        set_id: Option<u32>,
        /// Explicit timeout in ms (0 or absent: the set's).
        timeout: u64,
        /// Data register (dynsets on maps: the affinity maps).
        sreg_data: Option<u32>,
        /// Attached expressions: never kproxy's.
        extra: bool,
    },
    Immediate {
        dreg: u32,
        data: ImmData,
    },
    Nat {
        ty: u32,
        family: u32,
        addr_min: Option<u32>,
        addr_max: Option<u32>,
        proto_min: Option<u32>,
        proto_max: Option<u32>,
        flags: u32,
    },
    Masq {
        flags: u32,
        proto_min: Option<u32>,
    },
    Reject {
        ty: u32,
        code: u8,
    },
    /// An expression kproxy does not use (counter, log, …).
    Other {
        name: String,
    },
}

impl Expr {
    pub fn name(&self) -> &str {
        match self {
            Expr::Payload { .. } => "payload",
            Expr::Meta { .. } | Expr::MetaSet { .. } => "meta",
            Expr::Ct { .. } => "ct",
            Expr::Fib { .. } => "fib",
            Expr::Numgen { .. } => "numgen",
            Expr::Cmp { .. } => "cmp",
            Expr::Bitwise { .. } => "bitwise",
            Expr::Byteorder { .. } => "byteorder",
            Expr::Lookup { .. } => "lookup",
            Expr::Dynset { .. } => "dynset",
            Expr::Immediate { .. } => "immediate",
            Expr::Nat { .. } => "nat",
            Expr::Masq { .. } => "masq",
            Expr::Reject { .. } => "reject",
            Expr::Other { name } => name,
        }
    }

    /// Appends this expression as one `NFTA_LIST_ELEM` of a rule's expression list.
    pub fn write(&self, w: &mut Writer) {
        let elem = w.nest_begin(c::NFTA_LIST_ELEM);
        w.str(c::NFTA_EXPR_NAME, self.name());
        let d = w.nest_begin(c::NFTA_EXPR_DATA);
        if !self.write_register_attrs(w) {
            self.write_action_attrs(w);
        }
        w.nest_end(d);
        w.nest_end(elem);
    }

    /// The attributes of the expressions that load, compare or change registers (payload,
    /// meta, ct, fib, numgen, cmp, bitwise, byteorder); false for the others.
    fn write_register_attrs(&self, w: &mut Writer) -> bool {
        match self {
            Expr::Payload {
                dreg,
                base,
                offset,
                len,
            } => {
                w.u32_be(NFTA_PAYLOAD_DREG, *dreg);
                w.u32_be(NFTA_PAYLOAD_BASE, *base);
                w.u32_be(NFTA_PAYLOAD_OFFSET, *offset);
                w.u32_be(NFTA_PAYLOAD_LEN, *len);
            }
            Expr::Meta { key, dreg } => {
                w.u32_be(NFTA_META_KEY, *key);
                w.u32_be(NFTA_META_DREG, *dreg);
            }
            Expr::MetaSet { key, sreg } => {
                w.u32_be(NFTA_META_KEY, *key);
                w.u32_be(NFTA_META_SREG, *sreg);
            }
            Expr::Ct { key, dreg, dir } => {
                w.u32_be(NFTA_CT_KEY, *key);
                w.u32_be(NFTA_CT_DREG, *dreg);
                if let Some(d) = dir {
                    w.u8(NFTA_CT_DIRECTION, *d);
                }
            }
            Expr::Fib {
                flags,
                result,
                dreg,
            } => {
                w.u32_be(NFTA_FIB_FLAGS, *flags);
                w.u32_be(NFTA_FIB_RESULT, *result);
                w.u32_be(NFTA_FIB_DREG, *dreg);
            }
            Expr::Numgen {
                dreg,
                modulus,
                ty,
                offset,
            } => {
                w.u32_be(NFTA_NG_DREG, *dreg);
                w.u32_be(NFTA_NG_MODULUS, *modulus);
                w.u32_be(NFTA_NG_TYPE, *ty);
                w.u32_be(NFTA_NG_OFFSET, *offset);
            }
            Expr::Cmp { sreg, op, data } => {
                w.u32_be(NFTA_CMP_SREG, *sreg);
                w.u32_be(NFTA_CMP_OP, *op);
                w.data_value(NFTA_CMP_DATA, data);
            }
            Expr::Bitwise {
                sreg,
                dreg,
                len,
                mask,
                xor,
                op: _,
            } => {
                w.u32_be(NFTA_BITWISE_SREG, *sreg);
                w.u32_be(NFTA_BITWISE_DREG, *dreg);
                w.u32_be(NFTA_BITWISE_LEN, *len);
                w.data_value(NFTA_BITWISE_MASK, mask);
                w.data_value(NFTA_BITWISE_XOR, xor);
            }
            Expr::Byteorder {
                sreg,
                dreg,
                op,
                len,
                size,
            } => {
                w.u32_be(NFTA_BYTEORDER_SREG, *sreg);
                w.u32_be(NFTA_BYTEORDER_DREG, *dreg);
                w.u32_be(NFTA_BYTEORDER_OP, *op);
                w.u32_be(NFTA_BYTEORDER_LEN, *len);
                w.u32_be(NFTA_BYTEORDER_SIZE, *size);
            }
            _ => return false,
        }
        true
    }

    /// The attributes of the other expressions (lookup, dynset, immediate, nat, masq,
    /// reject; nothing for one kproxy does not know).
    fn write_action_attrs(&self, w: &mut Writer) {
        match self {
            Expr::Lookup {
                sreg,
                dreg,
                set,
                set_id,
                flags,
            } => {
                w.u32_be(NFTA_LOOKUP_SREG, *sreg);
                if let Some(d) = dreg {
                    w.u32_be(NFTA_LOOKUP_DREG, *d);
                }
                w.str(NFTA_LOOKUP_SET, set);
                if let Some(id) = set_id {
                    w.u32_be(NFTA_LOOKUP_SET_ID, *id);
                }
                if *flags != 0 {
                    w.u32_be(NFTA_LOOKUP_FLAGS, *flags);
                }
            }
            Expr::Dynset {
                sreg_key,
                op,
                set,
                set_id,
                timeout,
                sreg_data,
                extra: _,
            } => {
                w.u32_be(NFTA_DYNSET_SREG_KEY, *sreg_key);
                if let Some(d) = sreg_data {
                    w.u32_be(NFTA_DYNSET_SREG_DATA, *d);
                }
                w.u32_be(NFTA_DYNSET_OP, *op);
                w.str(NFTA_DYNSET_SET_NAME, set);
                if let Some(id) = set_id {
                    w.u32_be(NFTA_DYNSET_SET_ID, *id);
                }
                if *timeout != 0 {
                    w.u64_be(NFTA_DYNSET_TIMEOUT, *timeout);
                }
            }
            Expr::Immediate { dreg, data } => {
                w.u32_be(NFTA_IMMEDIATE_DREG, *dreg);
                write_data(w, NFTA_IMMEDIATE_DATA, data);
            }
            Expr::Nat {
                ty,
                family,
                addr_min,
                addr_max,
                proto_min,
                proto_max,
                flags,
            } => {
                w.u32_be(NFTA_NAT_TYPE, *ty);
                w.u32_be(NFTA_NAT_FAMILY, *family);
                for (a, v) in [
                    (NFTA_NAT_REG_ADDR_MIN, addr_min),
                    (NFTA_NAT_REG_ADDR_MAX, addr_max),
                    (NFTA_NAT_REG_PROTO_MIN, proto_min),
                    (NFTA_NAT_REG_PROTO_MAX, proto_max),
                ] {
                    if let Some(r) = v {
                        w.u32_be(a, *r);
                    }
                }
                if *flags != 0 {
                    w.u32_be(NFTA_NAT_FLAGS, *flags);
                }
            }
            Expr::Masq { flags, proto_min } => {
                if *flags != 0 {
                    w.u32_be(NFTA_MASQ_FLAGS, *flags);
                }
                if let Some(r) = proto_min {
                    w.u32_be(NFTA_MASQ_REG_PROTO_MIN, *r);
                }
            }
            Expr::Reject { ty, code } => {
                w.u32_be(NFTA_REJECT_TYPE, *ty);
                w.u8(NFTA_REJECT_ICMP_CODE, *code);
            }
            _ => {}
        }
    }

    /// Parses one `NFTA_LIST_ELEM` of a rule's expression list.
    pub fn parse(elem: Attrs<'_>) -> Expr {
        let name = elem.str(c::NFTA_EXPR_NAME).unwrap_or_default();
        let d = elem.nest(c::NFTA_EXPR_DATA).unwrap_or(Attrs::new(&[]));
        let u = |t: u16| d.u32_be(t).unwrap_or(0);
        let o = |t: u16| d.u32_be(t);
        match name.as_str() {
            "payload" if d.get(NFTA_PAYLOAD_SREG).is_none() => Expr::Payload {
                dreg: u(NFTA_PAYLOAD_DREG),
                base: u(NFTA_PAYLOAD_BASE),
                offset: u(NFTA_PAYLOAD_OFFSET),
                len: u(NFTA_PAYLOAD_LEN),
            },
            "meta" => match (o(NFTA_META_DREG), o(NFTA_META_SREG)) {
                (Some(dreg), None) => Expr::Meta {
                    key: u(NFTA_META_KEY),
                    dreg,
                },
                (None, Some(sreg)) => Expr::MetaSet {
                    key: u(NFTA_META_KEY),
                    sreg,
                },
                _ => Expr::Other { name },
            },
            "ct" if d.get(NFTA_CT_SREG).is_none() => Expr::Ct {
                key: u(NFTA_CT_KEY),
                dreg: u(NFTA_CT_DREG),
                dir: d.get(NFTA_CT_DIRECTION).and_then(|v| v.first().copied()),
            },
            "fib" => Expr::Fib {
                flags: u(NFTA_FIB_FLAGS),
                result: u(NFTA_FIB_RESULT),
                dreg: u(NFTA_FIB_DREG),
            },
            "numgen" => Expr::Numgen {
                dreg: u(NFTA_NG_DREG),
                modulus: u(NFTA_NG_MODULUS),
                ty: u(NFTA_NG_TYPE),
                offset: u(NFTA_NG_OFFSET),
            },
            "cmp" => Expr::Cmp {
                sreg: u(NFTA_CMP_SREG),
                op: u(NFTA_CMP_OP),
                data: d.data_value(NFTA_CMP_DATA).unwrap_or(&[]).to_vec(),
            },
            "bitwise" => Expr::Bitwise {
                sreg: u(NFTA_BITWISE_SREG),
                dreg: u(NFTA_BITWISE_DREG),
                len: u(NFTA_BITWISE_LEN),
                mask: d.data_value(NFTA_BITWISE_MASK).unwrap_or(&[]).to_vec(),
                xor: d.data_value(NFTA_BITWISE_XOR).unwrap_or(&[]).to_vec(),
                op: u(NFTA_BITWISE_OP),
            },
            "byteorder" => Expr::Byteorder {
                sreg: u(NFTA_BYTEORDER_SREG),
                dreg: u(NFTA_BYTEORDER_DREG),
                op: u(NFTA_BYTEORDER_OP),
                len: u(NFTA_BYTEORDER_LEN),
                size: u(NFTA_BYTEORDER_SIZE),
            },
            "lookup" => Expr::Lookup {
                sreg: u(NFTA_LOOKUP_SREG),
                dreg: o(NFTA_LOOKUP_DREG),
                set: d.str(NFTA_LOOKUP_SET).unwrap_or_default(),
                set_id: o(NFTA_LOOKUP_SET_ID),
                flags: u(NFTA_LOOKUP_FLAGS),
            },
            "dynset" => Expr::Dynset {
                sreg_key: u(NFTA_DYNSET_SREG_KEY),
                op: u(NFTA_DYNSET_OP),
                set: d.str(NFTA_DYNSET_SET_NAME).unwrap_or_default(),
                set_id: o(NFTA_DYNSET_SET_ID),
                timeout: d.u64_be(NFTA_DYNSET_TIMEOUT).unwrap_or(0),
                sreg_data: o(NFTA_DYNSET_SREG_DATA),
                extra: d.get(NFTA_DYNSET_EXPR).is_some()
                    || d.get(NFTA_DYNSET_EXPRESSIONS).is_some(),
            },
            "immediate" => match d.nest(NFTA_IMMEDIATE_DATA).and_then(parse_data) {
                Some(data) => Expr::Immediate {
                    dreg: u(NFTA_IMMEDIATE_DREG),
                    data,
                },
                None => Expr::Other { name },
            },
            "nat" => Expr::Nat {
                ty: u(NFTA_NAT_TYPE),
                family: u(NFTA_NAT_FAMILY),
                addr_min: o(NFTA_NAT_REG_ADDR_MIN),
                addr_max: o(NFTA_NAT_REG_ADDR_MAX),
                proto_min: o(NFTA_NAT_REG_PROTO_MIN),
                proto_max: o(NFTA_NAT_REG_PROTO_MAX),
                flags: u(NFTA_NAT_FLAGS),
            },
            "masq" => Expr::Masq {
                flags: u(NFTA_MASQ_FLAGS),
                proto_min: o(NFTA_MASQ_REG_PROTO_MIN),
            },
            "reject" => Expr::Reject {
                ty: u(NFTA_REJECT_TYPE),
                code: d
                    .get(NFTA_REJECT_ICMP_CODE)
                    .and_then(|v| v.first().copied())
                    .unwrap_or(0),
            },
            _ => Expr::Other { name },
        }
    }
}

/// Writes `NFTA_DATA_VALUE` or `NFTA_DATA_VERDICT` inside a nest of type `ty`.
pub fn write_data(w: &mut Writer, ty: u16, data: &ImmData) {
    let n = w.nest_begin(ty);
    match data {
        ImmData::Value(v) => w.attr(c::NFTA_DATA_VALUE, v),
        ImmData::Verdict { code, chain } => {
            let v = w.nest_begin(c::NFTA_DATA_VERDICT);
            w.u32_be(c::NFTA_VERDICT_CODE, *code as u32);
            if let Some(ch) = chain {
                w.str(c::NFTA_VERDICT_CHAIN, ch);
            }
            w.nest_end(v);
        }
    }
    w.nest_end(n);
}

/// Parses the inside of an `nft_data` nest.
pub fn parse_data(a: Attrs<'_>) -> Option<ImmData> {
    if let Some(v) = a.get(c::NFTA_DATA_VALUE) {
        return Some(ImmData::Value(v.to_vec()));
    }
    let v = a.nest(c::NFTA_DATA_VERDICT)?;
    Some(ImmData::Verdict {
        code: v.u32_be(c::NFTA_VERDICT_CODE)? as i32,
        chain: v.get(c::NFTA_VERDICT_CHAIN).map(cstr),
    })
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// libnftnl-like text (`[ payload load 4b @ network header + 12 => reg 1 ]`), used to
/// describe rules kproxy cannot read back.
impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.fmt_register(f) {
            Some(r) => r,
            None => self.fmt_action(f),
        }
    }
}

impl Expr {
    /// [`fmt::Display`] of the register expressions; `None` for the others.
    fn fmt_register(&self, f: &mut fmt::Formatter<'_>) -> Option<fmt::Result> {
        Some(match self {
            Expr::Payload {
                dreg,
                base,
                offset,
                len,
            } => {
                let b = match base {
                    0 => "link",
                    1 => "network",
                    2 => "transport",
                    _ => "inner",
                };
                write!(
                    f,
                    "[ payload load {len}b @ {b} header + {offset} => reg {dreg} ]"
                )
            }
            Expr::Meta { key, dreg } => write!(f, "[ meta load key {key} => reg {dreg} ]"),
            Expr::MetaSet { key, sreg } => write!(f, "[ meta set key {key} with reg {sreg} ]"),
            Expr::Ct { key, dreg, dir } => match dir {
                Some(d) => write!(f, "[ ct load key {key} dir {d} => reg {dreg} ]"),
                None => write!(f, "[ ct load key {key} => reg {dreg} ]"),
            },
            Expr::Fib {
                flags,
                result,
                dreg,
            } => write!(f, "[ fib flags {flags:#x} result {result} => reg {dreg} ]"),
            Expr::Numgen {
                dreg,
                modulus,
                ty,
                offset,
            } => write!(
                f,
                "[ numgen reg {dreg} = type {ty} mod {modulus} offset {offset} ]"
            ),
            Expr::Cmp { sreg, op, data } => {
                write!(f, "[ cmp op {op} reg {sreg} 0x{} ]", hex(data))
            }
            Expr::Bitwise {
                sreg,
                dreg,
                mask,
                xor,
                op,
                ..
            } => write!(
                f,
                "[ bitwise op {op} reg {dreg} = ( reg {sreg} & 0x{} ) ^ 0x{} ]",
                hex(mask),
                hex(xor)
            ),
            Expr::Byteorder {
                sreg,
                dreg,
                op,
                len,
                size,
            } => write!(
                f,
                "[ byteorder reg {dreg} = op {op}(reg {sreg}, {size}, {len}) ]"
            ),
            _ => return None,
        })
    }

    /// [`fmt::Display`] of the other expressions.
    fn fmt_action(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Lookup {
                sreg,
                dreg,
                set,
                flags,
                ..
            } => match dreg {
                Some(d) => write!(
                    f,
                    "[ lookup reg {sreg} set {set} dreg {d} flags {flags:#x} ]"
                ),
                None => write!(f, "[ lookup reg {sreg} set {set} flags {flags:#x} ]"),
            },
            Expr::Dynset {
                sreg_key,
                op,
                set,
                timeout,
                sreg_data,
                extra,
                ..
            } => write!(
                f,
                "[ dynset op {op} reg_key {sreg_key}{} set {set} timeout {timeout}ms{} ]",
                sreg_data
                    .map(|d| format!(" reg_data {d}"))
                    .unwrap_or_default(),
                if *extra { " +expr" } else { "" }
            ),
            Expr::Immediate { dreg, data } => match data {
                ImmData::Value(v) => write!(f, "[ immediate reg {dreg} 0x{} ]", hex(v)),
                ImmData::Verdict { code, chain } => write!(
                    f,
                    "[ immediate reg {dreg} verdict {code}{} ]",
                    chain
                        .as_ref()
                        .map(|c| format!(" -> {c}"))
                        .unwrap_or_default()
                ),
            },
            Expr::Nat {
                ty,
                family,
                addr_min,
                addr_max,
                proto_min,
                proto_max,
                flags,
            } => write!(
                f,
                "[ nat type {ty} family {family} addr {addr_min:?}-{addr_max:?} proto {proto_min:?}-{proto_max:?} flags {flags:#x} ]"
            ),
            Expr::Masq { flags, proto_min } => {
                write!(f, "[ masq flags {flags:#x} proto {proto_min:?} ]")
            }
            Expr::Reject { ty, code } => write!(f, "[ reject type {ty} code {code} ]"),
            // `Other` (the register expressions are written by `fmt_register`).
            _ => write!(f, "[ {} ]", self.name()),
        }
    }
}
