//! A frozen copy of the hand-written nfnetlink batch writer (encode.rs, encode/set.rs,
//! `Expr::write`, the `Udata` builder and `netlink::wire::Writer` as of commit 082dfde),
//! kept only as the reference the libnftnl encoder is compared with (`compare_tests`).
//!
//! Owns: the reference bytes of a transaction. Must not: be used outside tests; it is
//! deleted with the comparison once the old writer is gone. Self-contained on purpose: it
//! uses only the typed ruleset (`crate::nft`), the rule compiler (`rule::encode_stmts`)
//! and the `Expr` enum, which outlive the old writer.

mod expr;
mod set;

use std::collections::HashMap;

use super::rule::{encode_stmts, SetRef};
use crate::nft::tx::{ChainDecl, Op, TableRef, Transaction};
use crate::nft::{BaseChain, ChainType, Family, Hook};

use self::set::{write_element, write_set, ElemRef, SetShape};

/// Upper bound for the element list of one message (attribute lengths are 16-bit).
const ELEMS_PER_MSG_BYTES: usize = 60 * 1024;

/// Netlink, nfnetlink and nf_tables constants the writer uses.
mod c {
    pub const NLM_F_REQUEST: u16 = 0x1;
    pub const NLM_F_ACK: u16 = 0x4;
    pub const NLM_F_CREATE: u16 = 0x400;
    pub const NLM_F_APPEND: u16 = 0x800;
    pub const NLA_F_NESTED: u16 = 0x8000;
    pub const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
    pub const NFNL_MSG_BATCH_END: u16 = 0x11;
    pub const NFPROTO_IPV4: u8 = 2;
    pub const NFPROTO_IPV6: u8 = 10;
    pub const NFNL_SUBSYS_NFTABLES: u16 = 10;

    pub const NFT_MSG_NEWTABLE: u16 = 0;
    pub const NFT_MSG_DELTABLE: u16 = 2;
    pub const NFT_MSG_NEWCHAIN: u16 = 3;
    pub const NFT_MSG_DELCHAIN: u16 = 5;
    pub const NFT_MSG_NEWRULE: u16 = 6;
    pub const NFT_MSG_DELRULE: u16 = 8;
    pub const NFT_MSG_NEWSET: u16 = 9;
    pub const NFT_MSG_DELSET: u16 = 11;
    pub const NFT_MSG_NEWSETELEM: u16 = 12;
    pub const NFT_MSG_DELSETELEM: u16 = 14;

    pub const NFTA_TABLE_NAME: u16 = 1;
    pub const NFTA_TABLE_FLAGS: u16 = 2;
    pub const NFTA_TABLE_USERDATA: u16 = 6;
    pub const NFTA_CHAIN_TABLE: u16 = 1;
    pub const NFTA_CHAIN_NAME: u16 = 3;
    pub const NFTA_CHAIN_HOOK: u16 = 4;
    pub const NFTA_CHAIN_POLICY: u16 = 5;
    pub const NFTA_CHAIN_TYPE: u16 = 7;
    pub const NFTA_CHAIN_USERDATA: u16 = 12;
    pub const NFTA_HOOK_HOOKNUM: u16 = 1;
    pub const NFTA_HOOK_PRIORITY: u16 = 2;
    pub const NFTA_RULE_TABLE: u16 = 1;
    pub const NFTA_RULE_CHAIN: u16 = 2;
    pub const NFTA_RULE_EXPRESSIONS: u16 = 4;
    pub const NFTA_RULE_USERDATA: u16 = 7;
    pub const NFTA_LIST_ELEM: u16 = 1;
    pub const NFTA_EXPR_NAME: u16 = 1;
    pub const NFTA_EXPR_DATA: u16 = 2;
    pub const NFTA_SET_TABLE: u16 = 1;
    pub const NFTA_SET_NAME: u16 = 2;
    pub const NFTA_SET_FLAGS: u16 = 3;
    pub const NFTA_SET_KEY_TYPE: u16 = 4;
    pub const NFTA_SET_KEY_LEN: u16 = 5;
    pub const NFTA_SET_DATA_TYPE: u16 = 6;
    pub const NFTA_SET_DATA_LEN: u16 = 7;
    pub const NFTA_SET_DESC: u16 = 9;
    pub const NFTA_SET_ID: u16 = 10;
    pub const NFTA_SET_TIMEOUT: u16 = 11;
    pub const NFTA_SET_USERDATA: u16 = 13;
    pub const NFTA_SET_DESC_SIZE: u16 = 1;
    pub const NFTA_SET_DESC_CONCAT: u16 = 2;
    pub const NFTA_SET_FIELD_LEN: u16 = 1;
    pub const NFT_SET_INTERVAL: u32 = 0x4;
    pub const NFT_SET_MAP: u32 = 0x8;
    pub const NFT_SET_TIMEOUT: u32 = 0x10;
    pub const NFT_SET_EVAL: u32 = 0x20;
    pub const NFT_SET_CONCAT: u32 = 0x80;
    pub const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
    pub const NFTA_SET_ELEM_LIST_SET: u16 = 2;
    pub const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
    pub const NFTA_SET_ELEM_LIST_SET_ID: u16 = 4;
    pub const NFTA_SET_ELEM_KEY: u16 = 1;
    pub const NFTA_SET_ELEM_DATA: u16 = 2;
    pub const NFTA_SET_ELEM_FLAGS: u16 = 3;
    pub const NFTA_SET_ELEM_USERDATA: u16 = 6;
    pub const NFTA_SET_ELEM_KEY_END: u16 = 10;
    pub const NFT_SET_ELEM_INTERVAL_END: u32 = 0x1;
    pub const NFTA_DATA_VALUE: u16 = 1;
    pub const NFTA_DATA_VERDICT: u16 = 2;
    pub const NFTA_VERDICT_CODE: u16 = 1;
    pub const NFTA_VERDICT_CHAIN: u16 = 2;
    pub const NFT_DATA_VERDICT: u32 = 0xffff_ff00;
    pub const NF_ACCEPT: i32 = 1;

    pub const UDATA_TABLE_COMMENT: u8 = 0;
    pub const UDATA_CHAIN_COMMENT: u8 = 0;
    pub const UDATA_RULE_COMMENT: u8 = 0;
    pub const UDATA_SET_ELEM_COMMENT: u8 = 0;
    pub const UDATA_SET_ELEM_FLAGS: u8 = 1;
    pub const UDATA_SET_ELEM_F_INTERVAL_OPEN: u32 = 1;
    pub const UDATA_SET_KEYBYTEORDER: u8 = 0;
    pub const UDATA_SET_DATABYTEORDER: u8 = 1;
    pub const UDATA_SET_KEY_TYPEOF: u8 = 3;
    pub const UDATA_SET_DATA_TYPEOF: u8 = 4;
    pub const UDATA_SET_DATA_INTERVAL: u8 = 6;
    pub const UDATA_SET_COMMENT: u8 = 7;
    pub const UDATA_TYPEOF_EXPR: u8 = 0;
    pub const UDATA_TYPEOF_DATA: u8 = 1;
}

/// Aligns to netlink's 4-byte boundary.
const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Appends netlink messages and attributes to a byte buffer (`netlink::wire::Writer`).
#[derive(Default)]
struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    fn begin_msg(&mut self, ty: u16, flags: u16, seq: u32, family: u8, res_id: u16) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // length, patched later
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // port id
        self.buf.push(family);
        self.buf.push(0); // NFNETLINK_V0
        self.buf.extend_from_slice(&res_id.to_be_bytes());
        start
    }
    fn end_msg(&mut self, start: usize) {
        let len = (self.buf.len() - start) as u32;
        self.buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
    }
    fn attr(&mut self, ty: u16, data: &[u8]) {
        self.buf
            .extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.buf.resize(align4(self.buf.len()), 0);
    }
    fn u32_be(&mut self, ty: u16, v: u32) {
        self.attr(ty, &v.to_be_bytes());
    }
    fn u64_be(&mut self, ty: u16, v: u64) {
        self.attr(ty, &v.to_be_bytes());
    }
    fn u8(&mut self, ty: u16, v: u8) {
        self.attr(ty, &[v]);
    }
    /// A NUL-terminated string attribute.
    fn str(&mut self, ty: u16, s: &str) {
        let mut v = Vec::with_capacity(s.len() + 1);
        v.extend_from_slice(s.as_bytes());
        v.push(0);
        self.attr(ty, &v);
    }
    fn nest_begin(&mut self, ty: u16) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(ty | c::NLA_F_NESTED).to_ne_bytes());
        start
    }
    fn nest_end(&mut self, start: usize) {
        let len = (self.buf.len() - start) as u16;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    }
    /// `NFTA_DATA_VALUE` inside a nest of type `ty`.
    fn data_value(&mut self, ty: u16, value: &[u8]) {
        let n = self.nest_begin(ty);
        self.attr(c::NFTA_DATA_VALUE, value);
        self.nest_end(n);
    }
}

/// nft's userdata: a sequence of `{type: u8, len: u8, value[len]}`.
#[derive(Default)]
struct Udata {
    buf: Vec<u8>,
}

impl Udata {
    fn put(&mut self, ty: u8, value: &[u8]) {
        self.buf.push(ty);
        self.buf.push(value.len() as u8);
        self.buf.extend_from_slice(value);
    }
    fn put_strz(&mut self, ty: u8, s: &str) {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        self.put(ty, &v);
    }
    fn put_u32(&mut self, ty: u8, v: u32) {
        self.put(ty, &v.to_ne_bytes());
    }
    fn nest(&mut self, ty: u8, inner: &Udata) {
        self.put(ty, &inner.buf);
    }
}

/// Declarations of sets that exist in the kernel (the reference's `SetCatalog`).
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    sets: HashMap<(Family, String, String), SetShape>,
}

impl Catalog {
    /// Applies what a committed transaction did to set declarations.
    pub fn apply(&mut self, tx: &Transaction) {
        for op in &tx.ops {
            match op {
                Op::AddSet { table, set } => {
                    let k = (table.family, table.name.clone(), set.name.clone());
                    self.sets.entry(k).or_insert_with(|| SetShape::of(set));
                }
                Op::DeleteSet { table, set } => {
                    self.sets
                        .remove(&(table.family, table.name.clone(), set.clone()));
                }
                Op::DeleteTable { table } => self
                    .sets
                    .retain(|(f, n, _), _| !(*f == table.family && *n == table.name)),
                _ => {}
            }
        }
    }
}

/// The sets an encoding knows: those this transaction declares (shape and NFTA_SET_ID) or
/// deletes, on top of the catalog.
struct TxSets<'c> {
    catalog: &'c Catalog,
    local: HashMap<(Family, String, String), (SetShape, u32)>,
    deleted: Vec<(Family, String, String)>,
    next_id: u32,
}

impl TxSets<'_> {
    fn shape_of(&self, t: &TableRef, set: &str) -> Option<(SetShape, Option<u32>)> {
        let k = (t.family, t.name.clone(), set.to_string());
        if let Some((s, id)) = self.local.get(&k) {
            return Some((s.clone(), Some(*id)));
        }
        if self.deleted.contains(&k) {
            return None;
        }
        self.catalog.sets.get(&k).map(|s| (s.clone(), None))
    }
}

/// The whole batch (BATCH_BEGIN … BATCH_END) the old writer made of `tx`, with sequence
/// numbers from `seq0`; the error names the operation that cannot be encoded.
pub fn encode_with(tx: &Transaction, catalog: &Catalog, seq0: u32) -> Result<Vec<u8>, String> {
    let mut b = Builder {
        w: Writer::default(),
        seq: seq0,
    };
    let m = b.begin_res(
        c::NFNL_MSG_BATCH_BEGIN,
        c::NLM_F_REQUEST,
        0,
        c::NFNL_SUBSYS_NFTABLES,
    );
    b.finish(m);
    let mut sets = TxSets {
        catalog,
        local: HashMap::new(),
        deleted: Vec::new(),
        next_id: 1,
    };
    for (index, op) in tx.ops.iter().enumerate() {
        encode_op(&mut b, &mut sets, op).map_err(|r| format!("op #{index}: {r}"))?;
    }
    let flags = c::NLM_F_REQUEST | c::NLM_F_ACK;
    let m = b.begin_res(c::NFNL_MSG_BATCH_END, flags, 0, c::NFNL_SUBSYS_NFTABLES);
    b.finish(m);
    Ok(b.w.buf)
}

struct Builder {
    w: Writer,
    seq: u32,
}

impl Builder {
    fn begin(&mut self, ty: u16, flags: u16, family: u8) -> usize {
        self.begin_res(ty, flags, family, 0)
    }
    fn begin_res(&mut self, ty: u16, flags: u16, family: u8, res_id: u16) -> usize {
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        self.w.begin_msg(ty, flags, seq, family, res_id)
    }
    fn finish(&mut self, start: usize) {
        self.w.end_msg(start);
    }
}

fn msg(ty: u16) -> u16 {
    (c::NFNL_SUBSYS_NFTABLES << 8) | ty
}

fn create() -> u16 {
    c::NLM_F_REQUEST | c::NLM_F_CREATE
}

fn family_proto(f: Family) -> u8 {
    match f {
        Family::V4 => c::NFPROTO_IPV4,
        Family::V6 => c::NFPROTO_IPV6,
    }
}

/// A comment as nft stores it after parsing kproxy's text (same sanitising).
fn clean_comment(s: &str) -> String {
    if s.len() <= crate::nft::text::COMMENT_MAX && !s.chars().any(|c| c == '"' || c.is_control()) {
        return s.to_string();
    }
    let q = crate::nft::text::quote(s);
    q[1..q.len() - 1].to_string()
}

fn encode_op(b: &mut Builder, sets: &mut TxSets<'_>, op: &Op) -> Result<(), String> {
    let fam = family_proto(op.table().family);
    match op {
        Op::AddTable { table, comment } => {
            let m = b.begin(msg(c::NFT_MSG_NEWTABLE), create(), fam);
            b.w.str(c::NFTA_TABLE_NAME, &table.name);
            b.w.u32_be(c::NFTA_TABLE_FLAGS, 0);
            if let Some(cm) = comment {
                let mut u = Udata::default();
                u.put_strz(c::UDATA_TABLE_COMMENT, &clean_comment(cm));
                b.w.attr(c::NFTA_TABLE_USERDATA, &u.buf);
            }
            b.finish(m);
        }
        Op::DeleteTable { table } => {
            let m = b.begin(msg(c::NFT_MSG_DELTABLE), c::NLM_F_REQUEST, fam);
            b.w.str(c::NFTA_TABLE_NAME, &table.name);
            b.finish(m);
            sets.local
                .retain(|(f, n, _), _| !(*f == table.family && *n == table.name));
        }
        Op::AddChain { table, chain } => {
            let m = b.begin(msg(c::NFT_MSG_NEWCHAIN), create(), fam);
            write_chain(&mut b.w, table, chain);
            b.finish(m);
        }
        Op::FlushChain { table, chain } => {
            let m = b.begin(msg(c::NFT_MSG_DELRULE), c::NLM_F_REQUEST, fam);
            b.w.str(c::NFTA_RULE_TABLE, &table.name);
            b.w.str(c::NFTA_RULE_CHAIN, chain);
            b.finish(m);
        }
        Op::DeleteChain { table, chain } => {
            let m = b.begin(msg(c::NFT_MSG_DELCHAIN), c::NLM_F_REQUEST, fam);
            b.w.str(c::NFTA_CHAIN_TABLE, &table.name);
            b.w.str(c::NFTA_CHAIN_NAME, chain);
            b.finish(m);
        }
        Op::AddRule { table, chain, rule } => {
            let refs = |name: &str| match sets.shape_of(table, name) {
                Some((s, id)) => SetRef {
                    id,
                    interval: s.interval,
                },
                None => SetRef::default(),
            };
            let exprs = encode_stmts(table.family, &rule.stmts, &refs)?;
            let m = b.begin(msg(c::NFT_MSG_NEWRULE), create() | c::NLM_F_APPEND, fam);
            b.w.str(c::NFTA_RULE_TABLE, &table.name);
            b.w.str(c::NFTA_RULE_CHAIN, chain);
            let n = b.w.nest_begin(c::NFTA_RULE_EXPRESSIONS);
            for e in &exprs {
                expr::write(&mut b.w, e);
            }
            b.w.nest_end(n);
            if let Some(cm) = &rule.comment {
                let mut u = Udata::default();
                u.put_strz(c::UDATA_RULE_COMMENT, &clean_comment(cm));
                b.w.attr(c::NFTA_RULE_USERDATA, &u.buf);
            }
            b.finish(m);
        }
        Op::AddSet { table, set } => {
            let id = sets.next_id;
            sets.next_id += 1;
            let m = b.begin(msg(c::NFT_MSG_NEWSET), create(), fam);
            write_set(&mut b.w, table, set, id)?;
            b.finish(m);
            let k = (table.family, table.name.clone(), set.name.clone());
            sets.deleted.retain(|d| *d != k);
            sets.local.entry(k).or_insert((SetShape::of(set), id));
        }
        Op::DeleteSet { table, set } => {
            let m = b.begin(msg(c::NFT_MSG_DELSET), c::NLM_F_REQUEST, fam);
            b.w.str(c::NFTA_SET_TABLE, &table.name);
            b.w.str(c::NFTA_SET_NAME, set);
            b.finish(m);
            let k = (table.family, table.name.clone(), set.clone());
            sets.local.remove(&k);
            sets.deleted.push(k);
        }
        Op::AddElements {
            table,
            set,
            elements,
        } => {
            let items: Vec<ElemRef<'_>> = elements.iter().map(ElemRef::Add).collect();
            let ty = (c::NFT_MSG_NEWSETELEM, create());
            encode_elements(b, sets, table, set, ty, &items)?;
        }
        Op::DeleteElements { table, set, keys } => {
            let items: Vec<ElemRef<'_>> = keys.iter().map(|k| ElemRef::Delete(k)).collect();
            let ty = (c::NFT_MSG_DELSETELEM, c::NLM_F_REQUEST);
            encode_elements(b, sets, table, set, ty, &items)?;
        }
    }
    Ok(())
}

/// The element messages of one AddElements / DeleteElements: each element encoded once,
/// then cut into messages at element boundaries (an empty list is one message).
fn encode_elements(
    b: &mut Builder,
    sets: &TxSets<'_>,
    table: &TableRef,
    set: &str,
    (ty, flags): (u16, u16),
    items: &[ElemRef<'_>],
) -> Result<(), String> {
    let (shape, id) = sets
        .shape_of(table, set)
        .ok_or_else(|| format!("set {set} is not declared in the transaction nor known"))?;
    let mut encoded = Vec::with_capacity(items.len());
    for e in items {
        let mut w = Writer::default();
        write_element(&mut w, table.family, &shape, *e)
            .map_err(|r| format!("element {}: {r}", e.text()))?;
        encoded.push(w.buf);
    }
    let fam = family_proto(table.family);
    let mut i = 0;
    loop {
        let m = b.begin(msg(ty), flags, fam);
        b.w.str(c::NFTA_SET_ELEM_LIST_TABLE, &table.name);
        b.w.str(c::NFTA_SET_ELEM_LIST_SET, set);
        if let Some(id) = id {
            b.w.u32_be(c::NFTA_SET_ELEM_LIST_SET_ID, id);
        }
        let n = b.w.nest_begin(c::NFTA_SET_ELEM_LIST_ELEMENTS);
        let mut bytes = 0;
        let first = i;
        while i < encoded.len() && (i == first || bytes + encoded[i].len() <= ELEMS_PER_MSG_BYTES) {
            bytes += encoded[i].len();
            b.w.buf.extend_from_slice(&encoded[i]);
            i += 1;
        }
        b.w.nest_end(n);
        b.finish(m);
        if i >= encoded.len() {
            return Ok(());
        }
    }
}

fn hook_number(h: Hook) -> u32 {
    match h {
        Hook::Prerouting => 0,
        Hook::Input => 1,
        Hook::Forward => 2,
        Hook::Output => 3,
        Hook::Postrouting => 4,
    }
}

fn write_chain(w: &mut Writer, table: &TableRef, chain: &ChainDecl) {
    w.str(c::NFTA_CHAIN_TABLE, &table.name);
    w.str(c::NFTA_CHAIN_NAME, &chain.name);
    if let Some(BaseChain {
        kind,
        hook,
        priority,
    }) = &chain.base
    {
        w.str(
            c::NFTA_CHAIN_TYPE,
            match kind {
                ChainType::Filter => "filter",
                ChainType::Nat => "nat",
            },
        );
        w.u32_be(c::NFTA_CHAIN_POLICY, c::NF_ACCEPT as u32);
        let n = w.nest_begin(c::NFTA_CHAIN_HOOK);
        w.u32_be(c::NFTA_HOOK_HOOKNUM, hook_number(*hook));
        w.u32_be(c::NFTA_HOOK_PRIORITY, *priority as u32);
        w.nest_end(n);
    }
    if let Some(cm) = &chain.comment {
        let mut u = Udata::default();
        u.put_strz(c::UDATA_CHAIN_COMMENT, &clean_comment(cm));
        w.attr(c::NFTA_CHAIN_USERDATA, &u.buf);
    }
}
