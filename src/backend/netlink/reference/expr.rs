//! Expressions as the old writer wrote them (frozen copy of `Expr::write` and
//! `write_data` of expr.rs; attribute order as libnftnl 1.2.4 writes it for nft 1.0.6).

use super::{c, Writer};
use crate::backend::netlink::expr::{Expr, ImmData};

// Expression attribute numbers (nf_tables.h).
const NFTA_PAYLOAD_DREG: u16 = 1;
const NFTA_PAYLOAD_BASE: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;
const NFTA_META_DREG: u16 = 1;
const NFTA_META_KEY: u16 = 2;
const NFTA_META_SREG: u16 = 3;
const NFTA_CT_DREG: u16 = 1;
const NFTA_CT_KEY: u16 = 2;
const NFTA_CT_DIRECTION: u16 = 3;
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

/// Appends this expression as one `NFTA_LIST_ELEM` of a rule's expression list.
pub fn write(w: &mut Writer, e: &Expr) {
    let elem = w.nest_begin(c::NFTA_LIST_ELEM);
    w.str(c::NFTA_EXPR_NAME, e.name());
    let d = w.nest_begin(c::NFTA_EXPR_DATA);
    if !write_register_attrs(w, e) {
        write_action_attrs(w, e);
    }
    w.nest_end(d);
    w.nest_end(elem);
}

/// The attributes of the expressions that load, compare or change registers (payload,
/// meta, ct, fib, numgen, cmp, bitwise, byteorder); false for the others.
fn write_register_attrs(w: &mut Writer, e: &Expr) -> bool {
    match e {
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
fn write_action_attrs(w: &mut Writer, e: &Expr) {
    match e {
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
