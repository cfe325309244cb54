//! Session-affinity rules ([`Stmt::DnatAffinity`]) ↔ expressions. nft 1.0.6 has no text
//! for these rules (docs/measurements/affinity-layouts.md), so the register plan is
//! kproxy's own, in 32-bit register indexes with A = the address's words (1 or 4):
//!
//! | index | holds |
//! |---|---|
//! | 0 .. A | the client (`saddr`): the affinity map's key is `saddr . list` |
//! | A | the list's constant (an `immediate`) |
//! | A + 1 | the pick, then the endpoint id (the endpoints map's key is `list . id`);
//! every lookup result put here passes through the packet mark ([`bounce_through_mark`]) |
//! | A + 2 .. | the endpoint's address, then its port (the NAT's registers); before the
//! last lookup, the packet mark while the id passes through it |
//!
//! Owns: encoding and decoding these rules only. Must not: accept a sequence that does not
//! re-encode to exactly the same expressions (decoding builds the statement from the
//! expressions' parameters, then checks it by encoding it again).

use super::*;
use crate::nft::AffinityStep;

/// The parts of one affinity rule, borrowed from its [`Stmt`].
pub(super) struct Rule<'a> {
    pub proto: Protocol,
    pub list: u32,
    pub offset: u32,
    pub pick: &'a str,
    pub endpoints: &'a str,
    pub step: &'a AffinityStep,
}

/// The 32-bit register indexes of the plan above: (list, id, address, port).
fn regs(family: Family) -> (u32, u32, u32, u32) {
    let a = addr_offsets(family).2 / 4;
    (a, a + 1, a + 2, a + 2 + a)
}

pub(super) fn encode(
    family: Family,
    r: Rule<'_>,
    sets: &dyn Fn(&str) -> SetRef,
    out: &mut Vec<Expr>,
) {
    let (list, id, addr, port) = regs(family);
    let (list, id, addr, port) = (
        reg_number(list),
        reg_number(id),
        reg_number(addr),
        reg_number(port),
    );
    let client = reg_number(0);
    let lookup = |sreg: u32, dreg: u32, set: &str| Expr::Lookup {
        sreg,
        dreg: Some(dreg),
        set: set.to_string(),
        set_id: sets(set).id,
        flags: 0,
    };
    l4proto_dep(r.proto, out);
    let sticky = match r.step {
        AffinityStep::Known { map, timeout } => Some((map, *timeout, false)),
        AffinityStep::Repick { map, timeout } => Some((map, *timeout, true)),
        AffinityStep::Full => None,
    };
    if sticky.is_some() {
        let (s, _, len) = addr_offsets(family);
        out.push(Expr::Payload {
            dreg: client,
            base: NFT_PAYLOAD_NETWORK_HEADER,
            offset: s,
            len,
        });
    }
    out.push(Expr::Immediate {
        dreg: list,
        data: ImmData::Value(r.list.to_ne_bytes().to_vec()),
    });
    pick(id, r.offset, out);
    out.push(lookup(id, id, r.pick));
    bounce_through_mark(id, addr, out);
    if let Some((map, timeout, forget)) = sticky {
        let dynset = |op: u32, timeout: u64| Expr::Dynset {
            sreg_key: client,
            op,
            set: map.clone(),
            set_id: sets(map).id,
            timeout,
            // The kernel wants a data register for any dynset on a map (ignored by delete).
            sreg_data: Some(id),
            extra: false,
        };
        if forget {
            out.push(dynset(NFT_DYNSET_OP_DELETE, 0));
        }
        // Keeps a known client's data (and refreshes its timer), stores the pick otherwise.
        out.push(dynset(NFT_DYNSET_OP_UPDATE, u64::from(timeout) * 1000));
        if !forget {
            // A known client goes to the id it has stored.
            out.push(lookup(client, id, map));
            bounce_through_mark(id, addr, out);
        }
        // A client picking again (its entry was just deleted) goes to the pick it has
        // just stored, still in `id`: one lookup and one map reference fewer per list. If
        // another CPU stored a pick for the same client in between (two first connections
        // at once), this connection goes to its own pick and the next to the stored one,
        // as two simultaneous first connections may with upstream's rules.
    }
    out.push(lookup(list, addr, r.endpoints));
    out.push(Expr::Nat {
        ty: NFT_NAT_DNAT,
        family: nfproto(family),
        addr_min: Some(addr),
        addr_max: None,
        proto_min: Some(port),
        proto_max: None,
        flags: 0,
    });
}

/// Passes the endpoint id in `id` through the packet mark and back, restoring the mark
/// (`scratch` holds it meanwhile): the kernel sees the same id, but `nft` (1.0.6) then
/// lists the rule instead of aborting. Its delinearizer gives a map lookup's result no
/// length, and a later use of it where a length is checked (the data of `update`, the
/// `list . id` key of a lookup) trips an assertion in `netlink_parse_concat_expr` (fixed
/// in later nft: "nested map" support): `nft list ruleset` would abort on every node
/// with an affinity service. Loaded back
/// from the mark, the register holds `meta mark` for nft, which it can print. Nothing
/// runs between the two mark writes, and the mark ends as it was.
fn bounce_through_mark(id: u32, scratch: u32, out: &mut Vec<Expr>) {
    out.push(Expr::Meta {
        key: NFT_META_MARK,
        dreg: scratch,
    });
    out.push(Expr::MetaSet {
        key: NFT_META_MARK,
        sreg: id,
    });
    out.push(Expr::Meta {
        key: NFT_META_MARK,
        dreg: id,
    });
    out.push(Expr::MetaSet {
        key: NFT_META_MARK,
        sreg: scratch,
    });
}

/// An expression as it compares with what [`encode`] gives: without set ids (the kernel
/// reports names) and without what the kernel adds to NAT (range flags, max registers).
fn normal(e: &Expr) -> Expr {
    let mut e = e.clone();
    match &mut e {
        Expr::Lookup { set_id, .. } | Expr::Dynset { set_id, .. } => *set_id = None,
        Expr::Nat {
            addr_max,
            proto_max,
            flags,
            ..
        } => {
            *addr_max = None;
            *proto_max = None;
            *flags &= !decode::NAT_FLAGS_KERNEL_ADDS;
        }
        _ => {}
    }
    e
}

/// The affinity rule at the start of `e` (after its `meta l4proto == P`), and how many
/// expressions it took, counting the two of the protocol match.
pub(super) fn decode(family: Family, proto: Protocol, e: &[Expr]) -> Option<(Stmt, usize)> {
    let (list_reg, id_reg, _, _) = regs(family);
    let (list_reg, id_reg) = (reg_number(list_reg), reg_number(id_reg));
    let window = &e[..e.len().min(28)];
    let mut list = None;
    let mut offset = None;
    let mut pick = None;
    let mut endpoints = None;
    let mut map = None;
    let mut forget = false;
    for x in window {
        match x {
            Expr::Immediate {
                dreg,
                data: ImmData::Value(v),
            } if *dreg == list_reg && v.len() == 4 => {
                list = Some(u32::from_ne_bytes(v[..].try_into().ok()?));
            }
            Expr::Numgen { offset: o, .. } => offset = Some(*o),
            Expr::Lookup {
                sreg,
                dreg: Some(_),
                set,
                ..
            } if *sreg == id_reg => pick = Some(set.clone()),
            Expr::Lookup {
                sreg,
                dreg: Some(_),
                set,
                ..
            } if *sreg == list_reg => endpoints = Some(set.clone()),
            Expr::Dynset { op, .. } if *op == NFT_DYNSET_OP_DELETE => forget = true,
            Expr::Dynset {
                op: NFT_DYNSET_OP_UPDATE,
                set,
                timeout,
                ..
            } => map = Some((set.clone(), u32::try_from(timeout / 1000).ok()?)),
            Expr::Nat { .. } => break,
            _ => {}
        }
    }
    let step = match (map, forget) {
        (Some((map, timeout)), false) => AffinityStep::Known { map, timeout },
        (Some((map, timeout)), true) => AffinityStep::Repick { map, timeout },
        (None, _) => AffinityStep::Full,
    };
    let stmt = Stmt::DnatAffinity {
        proto,
        list: list?,
        offset: offset?,
        pick: pick?,
        endpoints: endpoints?,
        step,
    };
    let want = encode_stmts(family, std::slice::from_ref(&stmt), &|_| SetRef::default()).ok()?;
    let want = &want[2..];
    let got = e.get(..want.len())?;
    got.iter()
        .zip(want)
        .all(|(g, w)| normal(g) == *w)
        .then_some((stmt, want.len() + 2))
}
