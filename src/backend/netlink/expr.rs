//! nf_tables expressions: a typed form of what a rule holds in the kernel, and its
//! mapping to and from libnftnl's expression objects ([`Expr::to_nftnl`],
//! [`Expr::from_nftnl`]): libnftnl writes and parses the netlink attributes, this module
//! only names them.

use std::fmt;

use super::libnftnl as lnl;
use nftnl::nftnl_sys as nl;

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
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ImmData {
    Value(Vec<u8>),
    Verdict { code: i32, chain: Option<String> },
}

/// One nf_tables expression.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
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

impl Expr {
    /// This expression as a libnftnl expression object (the encoder adds it to a rule).
    pub fn to_nftnl(&self) -> Result<lnl::Expr, String> {
        let mut e = lnl::Expr::new(self.name())
            .ok_or_else(|| format!("libnftnl does not know expression {}", self.name()))?;
        self.set_attrs(&mut e)
            .map_err(|err| format!("{self}: {err}"))?;
        Ok(e)
    }

    fn set_attrs(&self, e: &mut lnl::Expr) -> Result<(), lnl::Error> {
        match self {
            Expr::Payload {
                dreg,
                base,
                offset,
                len,
            } => {
                e.set_u32(nl::NFTNL_EXPR_PAYLOAD_DREG, *dreg)?;
                e.set_u32(nl::NFTNL_EXPR_PAYLOAD_BASE, *base)?;
                e.set_u32(nl::NFTNL_EXPR_PAYLOAD_OFFSET, *offset)?;
                e.set_u32(nl::NFTNL_EXPR_PAYLOAD_LEN, *len)?;
            }
            Expr::Meta { key, dreg } => {
                e.set_u32(nl::NFTNL_EXPR_META_KEY, *key)?;
                e.set_u32(nl::NFTNL_EXPR_META_DREG, *dreg)?;
            }
            Expr::MetaSet { key, sreg } => {
                e.set_u32(nl::NFTNL_EXPR_META_KEY, *key)?;
                e.set_u32(nl::NFTNL_EXPR_META_SREG, *sreg)?;
            }
            Expr::Ct { key, dreg, dir } => {
                e.set_u32(nl::NFTNL_EXPR_CT_KEY, *key)?;
                e.set_u32(nl::NFTNL_EXPR_CT_DREG, *dreg)?;
                if let Some(d) = dir {
                    e.set_u8(nl::NFTNL_EXPR_CT_DIR, *d)?;
                }
            }
            Expr::Fib {
                flags,
                result,
                dreg,
            } => {
                e.set_u32(nl::NFTNL_EXPR_FIB_FLAGS, *flags)?;
                e.set_u32(nl::NFTNL_EXPR_FIB_RESULT, *result)?;
                e.set_u32(nl::NFTNL_EXPR_FIB_DREG, *dreg)?;
            }
            Expr::Numgen {
                dreg,
                modulus,
                ty,
                offset,
            } => {
                e.set_u32(nl::NFTNL_EXPR_NG_DREG, *dreg)?;
                e.set_u32(nl::NFTNL_EXPR_NG_MODULUS, *modulus)?;
                e.set_u32(nl::NFTNL_EXPR_NG_TYPE, *ty)?;
                e.set_u32(nl::NFTNL_EXPR_NG_OFFSET, *offset)?;
            }
            Expr::Cmp { sreg, op, data } => {
                e.set_u32(nl::NFTNL_EXPR_CMP_SREG, *sreg)?;
                e.set_u32(nl::NFTNL_EXPR_CMP_OP, *op)?;
                e.set_bytes(nl::NFTNL_EXPR_CMP_DATA, data)?;
            }
            Expr::Bitwise {
                sreg,
                dreg,
                len,
                mask,
                xor,
                op: _,
            } => {
                e.set_u32(nl::NFTNL_EXPR_BITWISE_SREG, *sreg)?;
                e.set_u32(nl::NFTNL_EXPR_BITWISE_DREG, *dreg)?;
                e.set_u32(nl::NFTNL_EXPR_BITWISE_LEN, *len)?;
                e.set_bytes(nl::NFTNL_EXPR_BITWISE_MASK, mask)?;
                e.set_bytes(nl::NFTNL_EXPR_BITWISE_XOR, xor)?;
            }
            Expr::Byteorder {
                sreg,
                dreg,
                op,
                len,
                size,
            } => {
                e.set_u32(nl::NFTNL_EXPR_BYTEORDER_SREG, *sreg)?;
                e.set_u32(nl::NFTNL_EXPR_BYTEORDER_DREG, *dreg)?;
                e.set_u32(nl::NFTNL_EXPR_BYTEORDER_OP, *op)?;
                e.set_u32(nl::NFTNL_EXPR_BYTEORDER_LEN, *len)?;
                e.set_u32(nl::NFTNL_EXPR_BYTEORDER_SIZE, *size)?;
            }
            Expr::Lookup {
                sreg,
                dreg,
                set,
                set_id,
                flags,
            } => {
                e.set_u32(nl::NFTNL_EXPR_LOOKUP_SREG, *sreg)?;
                if let Some(d) = dreg {
                    e.set_u32(nl::NFTNL_EXPR_LOOKUP_DREG, *d)?;
                }
                e.set_str(nl::NFTNL_EXPR_LOOKUP_SET, set)?;
                if let Some(id) = set_id {
                    e.set_u32(nl::NFTNL_EXPR_LOOKUP_SET_ID, *id)?;
                }
                if *flags != 0 {
                    e.set_u32(nl::NFTNL_EXPR_LOOKUP_FLAGS, *flags)?;
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
                e.set_u32(nl::NFTNL_EXPR_DYNSET_SREG_KEY, *sreg_key)?;
                if let Some(d) = sreg_data {
                    e.set_u32(nl::NFTNL_EXPR_DYNSET_SREG_DATA, *d)?;
                }
                e.set_u32(nl::NFTNL_EXPR_DYNSET_OP, *op)?;
                e.set_str(nl::NFTNL_EXPR_DYNSET_SET_NAME, set)?;
                if let Some(id) = set_id {
                    e.set_u32(nl::NFTNL_EXPR_DYNSET_SET_ID, *id)?;
                }
                if *timeout != 0 {
                    e.set_u64(nl::NFTNL_EXPR_DYNSET_TIMEOUT, *timeout)?;
                }
            }
            Expr::Immediate { dreg, data } => {
                e.set_u32(nl::NFTNL_EXPR_IMM_DREG, *dreg)?;
                match data {
                    ImmData::Value(v) => e.set_bytes(nl::NFTNL_EXPR_IMM_DATA, v)?,
                    ImmData::Verdict { code, chain } => {
                        e.set_u32(nl::NFTNL_EXPR_IMM_VERDICT, *code as u32)?;
                        if let Some(ch) = chain {
                            e.set_str(nl::NFTNL_EXPR_IMM_CHAIN, ch)?;
                        }
                    }
                }
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
                e.set_u32(nl::NFTNL_EXPR_NAT_TYPE, *ty)?;
                e.set_u32(nl::NFTNL_EXPR_NAT_FAMILY, *family)?;
                for (a, v) in [
                    (nl::NFTNL_EXPR_NAT_REG_ADDR_MIN, addr_min),
                    (nl::NFTNL_EXPR_NAT_REG_ADDR_MAX, addr_max),
                    (nl::NFTNL_EXPR_NAT_REG_PROTO_MIN, proto_min),
                    (nl::NFTNL_EXPR_NAT_REG_PROTO_MAX, proto_max),
                ] {
                    if let Some(r) = v {
                        e.set_u32(a, *r)?;
                    }
                }
                if *flags != 0 {
                    e.set_u32(nl::NFTNL_EXPR_NAT_FLAGS, *flags)?;
                }
            }
            Expr::Masq { flags, proto_min } => {
                if *flags != 0 {
                    e.set_u32(nl::NFTNL_EXPR_MASQ_FLAGS, *flags)?;
                }
                if let Some(r) = proto_min {
                    e.set_u32(nl::NFTNL_EXPR_MASQ_REG_PROTO_MIN, *r)?;
                }
            }
            Expr::Reject { ty, code } => {
                e.set_u32(nl::NFTNL_EXPR_REJECT_TYPE, *ty)?;
                e.set_u8(nl::NFTNL_EXPR_REJECT_CODE, *code)?;
            }
            Expr::Other { .. } => {}
        }
        Ok(())
    }

    /// An expression libnftnl parsed from a kernel message.
    pub fn from_nftnl(e: &lnl::ExprRef<'_>) -> Expr {
        let name = e.name();
        let u = |a: u32| e.u32(a).unwrap_or(0);
        let o = |a: u32| e.u32(a);
        let bytes = |a: u32| e.bytes(a).unwrap_or(&[]).to_vec();
        match name.as_str() {
            "payload" if !e.is_set(nl::NFTNL_EXPR_PAYLOAD_SREG) => Expr::Payload {
                dreg: u(nl::NFTNL_EXPR_PAYLOAD_DREG),
                base: u(nl::NFTNL_EXPR_PAYLOAD_BASE),
                offset: u(nl::NFTNL_EXPR_PAYLOAD_OFFSET),
                len: u(nl::NFTNL_EXPR_PAYLOAD_LEN),
            },
            "meta" => match (o(nl::NFTNL_EXPR_META_DREG), o(nl::NFTNL_EXPR_META_SREG)) {
                (Some(dreg), None) => Expr::Meta {
                    key: u(nl::NFTNL_EXPR_META_KEY),
                    dreg,
                },
                (None, Some(sreg)) => Expr::MetaSet {
                    key: u(nl::NFTNL_EXPR_META_KEY),
                    sreg,
                },
                _ => Expr::Other { name },
            },
            "ct" if !e.is_set(nl::NFTNL_EXPR_CT_SREG) => Expr::Ct {
                key: u(nl::NFTNL_EXPR_CT_KEY),
                dreg: u(nl::NFTNL_EXPR_CT_DREG),
                dir: e.u8(nl::NFTNL_EXPR_CT_DIR),
            },
            "fib" => Expr::Fib {
                flags: u(nl::NFTNL_EXPR_FIB_FLAGS),
                result: u(nl::NFTNL_EXPR_FIB_RESULT),
                dreg: u(nl::NFTNL_EXPR_FIB_DREG),
            },
            "numgen" => Expr::Numgen {
                dreg: u(nl::NFTNL_EXPR_NG_DREG),
                modulus: u(nl::NFTNL_EXPR_NG_MODULUS),
                ty: u(nl::NFTNL_EXPR_NG_TYPE),
                offset: u(nl::NFTNL_EXPR_NG_OFFSET),
            },
            "cmp" => Expr::Cmp {
                sreg: u(nl::NFTNL_EXPR_CMP_SREG),
                op: u(nl::NFTNL_EXPR_CMP_OP),
                data: bytes(nl::NFTNL_EXPR_CMP_DATA),
            },
            "bitwise" => Expr::Bitwise {
                sreg: u(nl::NFTNL_EXPR_BITWISE_SREG),
                dreg: u(nl::NFTNL_EXPR_BITWISE_DREG),
                len: u(nl::NFTNL_EXPR_BITWISE_LEN),
                mask: bytes(nl::NFTNL_EXPR_BITWISE_MASK),
                xor: bytes(nl::NFTNL_EXPR_BITWISE_XOR),
                op: u(nl::NFTNL_EXPR_BITWISE_OP),
            },
            "byteorder" => Expr::Byteorder {
                sreg: u(nl::NFTNL_EXPR_BYTEORDER_SREG),
                dreg: u(nl::NFTNL_EXPR_BYTEORDER_DREG),
                op: u(nl::NFTNL_EXPR_BYTEORDER_OP),
                len: u(nl::NFTNL_EXPR_BYTEORDER_LEN),
                size: u(nl::NFTNL_EXPR_BYTEORDER_SIZE),
            },
            "lookup" => Expr::Lookup {
                sreg: u(nl::NFTNL_EXPR_LOOKUP_SREG),
                dreg: o(nl::NFTNL_EXPR_LOOKUP_DREG),
                set: e.str(nl::NFTNL_EXPR_LOOKUP_SET).unwrap_or_default(),
                set_id: o(nl::NFTNL_EXPR_LOOKUP_SET_ID),
                flags: u(nl::NFTNL_EXPR_LOOKUP_FLAGS),
            },
            "dynset" => Expr::Dynset {
                sreg_key: u(nl::NFTNL_EXPR_DYNSET_SREG_KEY),
                op: u(nl::NFTNL_EXPR_DYNSET_OP),
                set: e.str(nl::NFTNL_EXPR_DYNSET_SET_NAME).unwrap_or_default(),
                set_id: o(nl::NFTNL_EXPR_DYNSET_SET_ID),
                timeout: e.u64(nl::NFTNL_EXPR_DYNSET_TIMEOUT).unwrap_or(0),
                sreg_data: o(nl::NFTNL_EXPR_DYNSET_SREG_DATA),
                extra: e.is_set(nl::NFTNL_EXPR_DYNSET_EXPR)
                    || e.is_set(nl::NFTNL_EXPR_DYNSET_EXPRESSIONS),
            },
            "immediate" => {
                let data = if let Some(v) = e.bytes(nl::NFTNL_EXPR_IMM_DATA) {
                    Some(ImmData::Value(v.to_vec()))
                } else {
                    o(nl::NFTNL_EXPR_IMM_VERDICT).map(|code| ImmData::Verdict {
                        code: code as i32,
                        chain: e.str(nl::NFTNL_EXPR_IMM_CHAIN),
                    })
                };
                match data {
                    Some(data) => Expr::Immediate {
                        dreg: u(nl::NFTNL_EXPR_IMM_DREG),
                        data,
                    },
                    None => Expr::Other { name },
                }
            }
            "nat" => Expr::Nat {
                ty: u(nl::NFTNL_EXPR_NAT_TYPE),
                family: u(nl::NFTNL_EXPR_NAT_FAMILY),
                addr_min: o(nl::NFTNL_EXPR_NAT_REG_ADDR_MIN),
                addr_max: o(nl::NFTNL_EXPR_NAT_REG_ADDR_MAX),
                proto_min: o(nl::NFTNL_EXPR_NAT_REG_PROTO_MIN),
                proto_max: o(nl::NFTNL_EXPR_NAT_REG_PROTO_MAX),
                flags: u(nl::NFTNL_EXPR_NAT_FLAGS),
            },
            "masq" => Expr::Masq {
                flags: u(nl::NFTNL_EXPR_MASQ_FLAGS),
                proto_min: o(nl::NFTNL_EXPR_MASQ_REG_PROTO_MIN),
            },
            "reject" => Expr::Reject {
                ty: u(nl::NFTNL_EXPR_REJECT_TYPE),
                code: e.u8(nl::NFTNL_EXPR_REJECT_CODE).unwrap_or(0),
            },
            _ => Expr::Other { name },
        }
    }
}
