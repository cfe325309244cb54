//! Transaction → one nfnetlink batch (pure: no socket). Every message carries its own
//! sequence number; [`Batch`] keeps the table from sequence number back to the operation
//! (and, for element messages, to the element) so kernel errors can name what failed.

mod set;

use std::collections::HashMap;

use super::expr::{Expr, ImmData};
use super::libnftnl::{self as nl, Msg, Udata};
use super::nf_tables::c;
use super::rule::{encode_stmts, verdict_imm, SetRef};
use crate::nft::tx::{ChainDecl, Op, TableRef, Transaction};
use crate::nft::{
    BaseChain, ChainType, DataType, Element, ElementData, Family, Hook, Set, SetData, Value,
};
use nftnl::nftnl_sys as sys;

pub use set::*;

/// Bytes per page of the batch. Pages are only a memory layout: all of them go out in one
/// `sendmsg()` as iovecs (the kernel needs the whole batch in one skb).
pub const PAGE_SIZE: usize = 128 * 1024;

/// Upper bound for the element list of one message: attribute lengths are 16-bit, so the
/// `NFTA_SET_ELEM_LIST_ELEMENTS` nest must stay below 64 KiB.
const ELEMS_PER_MSG_BYTES: usize = 60 * 1024;

/// Why a transaction cannot be encoded (nothing was sent).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot encode operation #{index} ({op}): {reason}")]
pub struct EncodeError {
    pub index: usize,
    pub op: String,
    pub reason: String,
}

/// What kind of message a sequence number belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsgKind {
    BatchBegin,
    BatchEnd,
    Op,
}

/// One message of a batch.
#[derive(Clone, Debug)]
pub struct MsgInfo {
    pub kind: MsgKind,
    /// Index of the operation in the transaction (for `MsgKind::Op`).
    pub op: Option<usize>,
    /// For element messages: (byte offset of the element's attribute in the message,
    /// index of the element in the operation), ascending.
    pub elems: Vec<(u32, usize)>,
    /// For element messages: the number of each element's first entry in the element list
    /// (1, 2, …; an interval element has two entries), in the order of `elems`.
    pub entries: Vec<u16>,
}

/// An encoded transaction: the messages (BATCH_BEGIN … BATCH_END) in pages, and the
/// sequence-number table.
#[derive(Clone, Debug)]
pub struct Batch {
    pages: Vec<Vec<u8>>,
    msgs: Vec<MsgInfo>,
    seq0: u32,
}

impl Batch {
    pub fn pages(&self) -> &[Vec<u8>] {
        &self.pages
    }
    /// Total bytes of all messages.
    pub fn len_bytes(&self) -> usize {
        self.pages.iter().map(Vec::len).sum()
    }
    /// Number of messages including BATCH_BEGIN and BATCH_END.
    pub fn messages(&self) -> usize {
        self.msgs.len()
    }
    pub fn first_seq(&self) -> u32 {
        self.seq0
    }
    /// Sequence number of BATCH_END (the one the kernel acknowledges on success, ≥ 6.10).
    pub fn end_seq(&self) -> u32 {
        self.seq0.wrapping_add(self.msgs.len() as u32 - 1)
    }
    /// The message with this sequence number.
    pub fn message(&self, seq: u32) -> Option<&MsgInfo> {
        self.msgs.get(seq.wrapping_sub(self.seq0) as usize)
    }
    /// The encoded message with this sequence number (found by a walk over the pages:
    /// for error reports only).
    pub fn encoded_message(&self, seq: u32) -> Option<super::wire::Msg<'_>> {
        self.pages
            .iter()
            .flat_map(|p| super::wire::messages(p))
            .find(|m| m.seq == seq)
    }
    /// How many elements (or keys) operation `op` put into its messages.
    pub fn items_of(&self, op: usize) -> usize {
        self.msgs
            .iter()
            .filter(|m| m.kind == MsgKind::Op && m.op == Some(op))
            .map(|m| m.elems.len())
            .sum()
    }
    /// Byte offset in message `seq` of the attribute of its element `index` (an index
    /// within the operation, as [`Batch::element_at`] returns).
    pub fn element_offset(&self, seq: u32, index: usize) -> Option<u32> {
        let m = self.message(seq)?;
        m.elems.iter().find(|(_, i)| *i == index).map(|(o, _)| *o)
    }
    /// The number (1, 2, …) of the first entry of element `index` in the element list of
    /// message `seq`.
    pub fn element_entry(&self, seq: u32, index: usize) -> Option<u16> {
        let m = self.message(seq)?;
        let k = m.elems.iter().position(|(_, i)| *i == index)?;
        m.entries.get(k).copied()
    }
    /// The operation index a sequence number belongs to.
    pub fn op_of_seq(&self, seq: u32) -> Option<usize> {
        self.message(seq).and_then(|m| m.op)
    }
    /// The element (index within its operation) that contains byte `offset` of message
    /// `seq`, from the kernel's extended ACK.
    pub fn element_at(&self, seq: u32, offset: u32) -> Option<usize> {
        let m = self.message(seq)?;
        m.elems
            .iter()
            .take_while(|(o, _)| *o <= offset)
            .last()
            .map(|(_, i)| *i)
    }
    /// All bytes in one buffer (tests, debugging).
    pub fn to_vec(&self) -> Vec<u8> {
        self.pages.concat()
    }
}

/// What the encoder must know about an existing set to encode elements and lookups.
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

/// Declarations of sets that exist in the kernel (from a dump or earlier applies).
#[derive(Clone, Debug, Default)]
pub struct SetCatalog {
    sets: HashMap<(Family, String, String), SetShape>,
}

impl SetCatalog {
    pub fn get(&self, t: &TableRef, set: &str) -> Option<&SetShape> {
        self.sets.get(&(t.family, t.name.clone(), set.to_string()))
    }
    pub fn insert(&mut self, t: &TableRef, set: &str, shape: SetShape) {
        self.sets
            .insert((t.family, t.name.clone(), set.to_string()), shape);
    }
    pub fn remove(&mut self, t: &TableRef, set: &str) {
        self.sets
            .remove(&(t.family, t.name.clone(), set.to_string()));
    }
    pub fn remove_table(&mut self, t: &TableRef) {
        self.sets
            .retain(|(f, n, _), _| !(*f == t.family && *n == t.name));
    }
    /// Applies what a committed transaction did to set declarations.
    pub fn apply(&mut self, tx: &Transaction) {
        for op in &tx.ops {
            match op {
                // An existing set is left alone by the kernel; so is our entry.
                Op::AddSet { table, set } if self.get(table, &set.name).is_none() => {
                    self.insert(table, &set.name, SetShape::of(set));
                }
                Op::DeleteSet { table, set } => self.remove(table, set),
                Op::DeleteTable { table } => self.remove_table(table),
                _ => {}
            }
        }
    }
    /// Sets an operation list refers to that neither the catalog nor the transaction
    /// declares.
    pub fn missing(&self, tx: &Transaction) -> Vec<(TableRef, String)> {
        let mut declared: Vec<(TableRef, String)> = Vec::new();
        let mut out = Vec::new();
        for op in &tx.ops {
            let (table, name) = match op {
                Op::AddSet { table, set } => {
                    declared.push((table.clone(), set.name.clone()));
                    continue;
                }
                Op::AddElements { table, set, .. } | Op::DeleteElements { table, set, .. } => {
                    (table, set)
                }
                _ => continue,
            };
            let key = (table.clone(), name.clone());
            if self.get(table, name).is_none() && !declared.contains(&key) && !out.contains(&key) {
                out.push(key);
            }
        }
        out
    }
}

/// Encodes a transaction whose element operations only touch sets it declares itself.
pub fn encode(tx: &Transaction) -> Result<Batch, EncodeError> {
    encode_with(tx, &SetCatalog::default(), 1)
}

/// Encodes a transaction; `catalog` describes sets that already exist, `seq0` is the
/// sequence number of BATCH_BEGIN.
pub fn encode_with(
    tx: &Transaction,
    catalog: &SetCatalog,
    seq0: u32,
) -> Result<Batch, EncodeError> {
    encode_ops(Ops::Keep(&tx.ops), catalog, seq0)
}

/// As [`encode_with`], dropping each operation's payload ([`Op::shed_payload`]) as soon
/// as it is encoded, so the transaction shrinks while the batch grows. On error the
/// operations before the failing one have been shed.
pub fn encode_shedding(
    tx: &mut Transaction,
    catalog: &SetCatalog,
    seq0: u32,
) -> Result<Batch, EncodeError> {
    encode_ops(Ops::Shed(&mut tx.ops), catalog, seq0)
}

/// The operations to encode, borrowed to keep or to shed.
enum Ops<'a> {
    Keep(&'a [Op]),
    Shed(&'a mut [Op]),
}

impl Ops<'_> {
    fn len(&self) -> usize {
        match self {
            Ops::Keep(o) => o.len(),
            Ops::Shed(o) => o.len(),
        }
    }
    fn get(&self, i: usize) -> &Op {
        match self {
            Ops::Keep(o) => &o[i],
            Ops::Shed(o) => &o[i],
        }
    }
    fn encoded(&mut self, i: usize) {
        if let Ops::Shed(o) = self {
            o[i].shed_payload();
        }
    }
}

fn encode_ops(mut ops: Ops<'_>, catalog: &SetCatalog, seq0: u32) -> Result<Batch, EncodeError> {
    let mut b = Builder {
        buf: Vec::with_capacity(PAGE_SIZE + 4096),
        exprs: ExprCache::default(),
        comments: CommentCache::default(),
        pages: Vec::new(),
        msgs: Vec::new(),
        seq0,
    };
    b.batch_marker(MsgKind::BatchBegin);
    let mut sets = TxSets {
        catalog,
        local: HashMap::new(),
        deleted: Vec::new(),
        next_id: 1,
    };
    for index in 0..ops.len() {
        let op = ops.get(index);
        encode_op(&mut b, &mut sets, index, op).map_err(|reason| EncodeError {
            index,
            op: op.describe(),
            reason,
        })?;
        ops.encoded(index);
    }
    b.batch_marker(MsgKind::BatchEnd);
    let mut pages = b.pages;
    if !b.buf.is_empty() {
        pages.push(b.buf);
    }
    Ok(Batch {
        pages,
        msgs: b.msgs,
        seq0,
    })
}

/// The sets an encoding knows: those this transaction declares (shape and NFTA_SET_ID) or
/// deletes, on top of the catalog of what the kernel holds.
struct TxSets<'c> {
    catalog: &'c SetCatalog,
    local: HashMap<(Family, String, String), (SetShape, u32)>,
    deleted: Vec<(Family, String, String)>,
    next_id: u32,
}

impl TxSets<'_> {
    /// The shape of a set, and its NFTA_SET_ID when this transaction declares it.
    fn shape_of(&self, t: &TableRef, set: &str) -> Option<(SetShape, Option<u32>)> {
        let k = (t.family, t.name.clone(), set.to_string());
        if let Some((s, id)) = self.local.get(&k) {
            return Some((s.clone(), Some(*id)));
        }
        if self.deleted.contains(&k) {
            return None;
        }
        self.catalog.get(t, set).map(|s| (s.clone(), None))
    }
}

/// A libnftnl wrapper error as the encoder's reason.
fn err(e: nl::Error) -> String {
    e.to_string()
}

/// nft's userdata holding one comment (`ty`: the object's comment TLV type).
fn comment_udata(ty: u8, comment: &str) -> Result<Udata, String> {
    let mut u = Udata::new();
    u.put_strz(ty, &clean_comment(comment)).map_err(err)?;
    Ok(u)
}

/// One operation's message(s); the error is the reason, [`encode_ops`] names the op.
fn encode_op(b: &mut Builder, sets: &mut TxSets<'_>, index: usize, op: &Op) -> Result<(), String> {
    let fam = family_proto(op.table().family);
    let one = |b: &mut Builder, ty: u16, flags: u16, p: &dyn nl::Payload| {
        b.message(msg(ty), flags, fam, Some(index), |m| {
            m.put(p);
            Ok(Elems::default())
        })
    };
    match op {
        Op::AddTable { table, comment } => {
            let mut t = nl::Table::new();
            t.set_str(sys::NFTNL_TABLE_NAME, &table.name).map_err(err)?;
            t.set_u32(sys::NFTNL_TABLE_FLAGS, 0).map_err(err)?;
            if let Some(cm) = comment {
                let u = comment_udata(c::UDATA_TABLE_COMMENT, cm)?;
                t.set_bytes(sys::NFTNL_TABLE_USERDATA, u.bytes())
                    .map_err(err)?;
            }
            one(b, c::NFT_MSG_NEWTABLE, create(), &t)?;
        }
        Op::DeleteTable { table } => {
            let mut t = nl::Table::new();
            t.set_str(sys::NFTNL_TABLE_NAME, &table.name).map_err(err)?;
            one(b, c::NFT_MSG_DELTABLE, c::NLM_F_REQUEST, &t)?;
            sets.local
                .retain(|(f, n, _), _| !(*f == table.family && *n == table.name));
        }
        Op::AddChain { table, chain } => {
            let ch = chain_object(table, chain)?;
            one(b, c::NFT_MSG_NEWCHAIN, create(), &ch)?;
        }
        Op::FlushChain { table, chain } => {
            let r = rule_object(table, chain)?;
            one(b, c::NFT_MSG_DELRULE, c::NLM_F_REQUEST, &r)?;
        }
        Op::DeleteChain { table, chain } => {
            let mut ch = nl::Chain::new();
            ch.set_str(sys::NFTNL_CHAIN_TABLE, &table.name)
                .map_err(err)?;
            ch.set_str(sys::NFTNL_CHAIN_NAME, chain).map_err(err)?;
            one(b, c::NFT_MSG_DELCHAIN, c::NLM_F_REQUEST, &ch)?;
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
            let mut r = rule_object(table, chain)?;
            if let Some(cm) = &rule.comment {
                let u = b.comments.udata(c::UDATA_RULE_COMMENT, cm)?;
                r.set_bytes(sys::NFTNL_RULE_USERDATA, u).map_err(err)?;
            }
            // The rule's table, chain and comment by libnftnl's rule builder, then its
            // expressions as that builder writes them (EXPRESSIONS last), each from one
            // libnftnl expression object shared by every rule holding the same expression.
            let mut cache = std::mem::take(&mut b.exprs);
            cache.prepare(&exprs)?;
            let sent = b.message(
                msg(c::NFT_MSG_NEWRULE),
                create() | c::NLM_F_APPEND,
                fam,
                Some(index),
                |m| {
                    m.put(&r);
                    if !exprs.is_empty() {
                        let list = m.nest_begin(c::NFTA_RULE_EXPRESSIONS);
                        for e in &exprs {
                            let n = m.nest_begin(c::NFTA_LIST_ELEM);
                            m.put(&nl::ExprPayload(cache.get(e)));
                            m.nest_end(n);
                        }
                        m.nest_end(list);
                    }
                    Ok(Elems::default())
                },
            );
            b.exprs = cache;
            sent?;
        }
        Op::AddSet { table, set } => {
            let id = sets.next_id;
            sets.next_id += 1;
            let s = set_object(table, set, id)?;
            one(b, c::NFT_MSG_NEWSET, create(), &s)?;
            let k = (table.family, table.name.clone(), set.name.clone());
            sets.deleted.retain(|d| *d != k);
            // Adding an existing set leaves the kernel's alone: keep the first shape.
            sets.local.entry(k).or_insert((SetShape::of(set), id));
        }
        Op::DeleteSet { table, set } => {
            let mut s = nl::Set::new();
            s.set_str(sys::NFTNL_SET_TABLE, &table.name).map_err(err)?;
            s.set_str(sys::NFTNL_SET_NAME, set).map_err(err)?;
            one(b, c::NFT_MSG_DELSET, c::NLM_F_REQUEST, &s)?;
            let k = (table.family, table.name.clone(), set.clone());
            sets.local.remove(&k);
            sets.deleted.push(k);
        }
        Op::AddElements {
            table,
            set,
            elements,
        } => {
            let items = elements.iter().map(ElemRef::Add);
            let ty = (c::NFT_MSG_NEWSETELEM, create());
            encode_elements(b, sets, index, table, set, ty, items)?;
        }
        Op::DeleteElements { table, set, keys } => {
            let items = keys.iter().map(|k| ElemRef::Delete(k));
            let ty = (c::NFT_MSG_DELSETELEM, c::NLM_F_REQUEST);
            encode_elements(b, sets, index, table, set, ty, items)?;
        }
    }
    Ok(())
}

/// A rule object naming its table and chain (a new rule, or a flush of the chain).
fn rule_object(table: &TableRef, chain: &str) -> Result<nl::Rule, String> {
    let mut r = nl::Rule::new();
    r.set_str(sys::NFTNL_RULE_TABLE, &table.name).map_err(err)?;
    r.set_str(sys::NFTNL_RULE_CHAIN, chain).map_err(err)?;
    Ok(r)
}

/// The element messages of one AddElements / DeleteElements (`ty`: message type and
/// flags): each element built by libnftnl straight into the message; when the element
/// list passes [`ELEMS_PER_MSG_BYTES`], the last element moves to a new message.
fn encode_elements<'a>(
    b: &mut Builder,
    sets: &TxSets<'_>,
    index: usize,
    table: &TableRef,
    set: &str,
    (ty, flags): (u16, u16),
    items: impl ExactSizeIterator<Item = ElemRef<'a>>,
) -> Result<(), String> {
    let (shape, id) = sets
        .shape_of(table, set)
        .ok_or_else(|| format!("set {set} is not declared in the transaction nor known"))?;
    let mut header = nl::Set::new();
    header
        .set_str(sys::NFTNL_SET_TABLE, &table.name)
        .map_err(err)?;
    header.set_str(sys::NFTNL_SET_NAME, set).map_err(err)?;
    if let Some(id) = id {
        header.set_u32(sys::NFTNL_SET_ID, id).map_err(err)?;
    }
    let fam = family_proto(table.family);
    let mut items = items.enumerate();
    // An element that did not fit the previous message.
    let mut carry: Option<(usize, ElemObjects)> = None;
    let mut comments = CommentCache::default();
    // Even an empty element list becomes one message, so every op has one.
    loop {
        let mut done = false;
        b.message(msg(ty), flags, fam, Some(index), |m| {
            m.put(&nl::ElemsHeader(&header));
            let list = m.nest_begin(c::NFTA_SET_ELEM_LIST_ELEMENTS);
            let first = m.written();
            let mut out = Elems::default();
            let mut entry = 0u16;
            loop {
                let (i, objs) = match carry.take() {
                    Some(c) => c,
                    None => match items.next() {
                        Some((i, e)) => {
                            let objs = element_objects(table.family, &shape, e, &mut comments)
                                .map_err(|r| format!("element {}: {r}", e.text()))?;
                            (i, objs)
                        }
                        None => {
                            done = true;
                            break;
                        }
                    },
                };
                let pos = m.written();
                let first_entry = entry + 1;
                for o in objs.iter() {
                    // Each entry an NFTA_LIST_ELEM nest, as the kernel's dumps have them
                    // and libnftnl's parser requires (libnftnl 1.2.4's own list builder
                    // numbers them 1, 2, 3, … and then cannot parse what it built).
                    entry += 1;
                    let n = m.nest_begin(c::NFTA_LIST_ELEM);
                    m.put(o);
                    m.nest_end(n);
                }
                if !out.at.is_empty() && m.written() - first > ELEMS_PER_MSG_BYTES {
                    m.truncate(pos);
                    carry = Some((i, objs));
                    break;
                }
                out.at.push((pos as u32, i));
                out.entries.push(first_entry);
            }
            m.nest_end(list);
            Ok(out)
        })?;
        if done {
            return Ok(());
        }
    }
}

/// Where a message's elements are: [`MsgInfo::elems`] and [`MsgInfo::entries`].
#[derive(Default)]
struct Elems {
    at: Vec<(u32, usize)>,
    entries: Vec<u16>,
}

/// Most expressions recur across rules (loads, comparisons with the same protocol or
/// port, jumps to the same chains): above this many distinct ones the cache starts over.
const EXPR_CACHE_MAX: usize = 16 * 1024;

/// libnftnl expression objects by expression, for one encoding.
#[derive(Default)]
struct ExprCache {
    map: HashMap<Expr, nl::Expr>,
}

impl ExprCache {
    /// Makes sure every expression of one rule has its object.
    fn prepare(&mut self, exprs: &[Expr]) -> Result<(), String> {
        if self.map.len() + exprs.len() > EXPR_CACHE_MAX {
            self.map.clear();
        }
        for e in exprs {
            if !self.map.contains_key(e) {
                self.map.insert(e.clone(), e.to_nftnl()?);
            }
        }
        Ok(())
    }

    /// The object of an expression [`ExprCache::prepare`] was given.
    fn get(&self, e: &Expr) -> &nl::Expr {
        &self.map[e]
    }
}

struct Builder {
    /// The page being filled.
    buf: Vec<u8>,
    /// Expression objects shared by the rules of this batch.
    exprs: ExprCache,
    /// The last rule comment's userdata.
    comments: CommentCache,
    pages: Vec<Vec<u8>>,
    msgs: Vec<MsgInfo>,
    seq0: u32,
}

impl Builder {
    fn next_seq(&self) -> u32 {
        self.seq0.wrapping_add(self.msgs.len() as u32)
    }

    /// BATCH_BEGIN or BATCH_END (libnftnl's; END asks for the ACK that kernels >= 6.10
    /// send for a committed batch).
    fn batch_marker(&mut self, kind: MsgKind) {
        let seq = self.next_seq();
        let start = match kind {
            MsgKind::BatchBegin => Msg::batch(&mut self.buf, true, seq, 0),
            _ => Msg::batch(&mut self.buf, false, seq, c::NLM_F_ACK),
        };
        self.finish(start, kind, None, Elems::default());
    }

    /// One message: `body` puts its payload and returns the element offsets.
    fn message(
        &mut self,
        ty: u16,
        flags: u16,
        family: u8,
        op: Option<usize>,
        body: impl FnOnce(&mut Msg<'_>) -> Result<Elems, String>,
    ) -> Result<(), String> {
        // A message that may outgrow the page's room starts the next page: a page regrown
        // under libnftnl's writes would be copied whole, and element messages grow to 60 KiB.
        let room = match ty & 0xff {
            c::NFT_MSG_NEWSETELEM | c::NFT_MSG_DELSETELEM => ELEMS_PER_MSG_BYTES + 4096,
            _ => 4096,
        };
        if !self.buf.is_empty() && self.buf.len() + room > self.buf.capacity() {
            let page = std::mem::replace(&mut self.buf, Vec::with_capacity(PAGE_SIZE + 4096));
            self.pages.push(page);
        }
        let seq = self.next_seq();
        let mut m = Msg::begin(&mut self.buf, ty, family, flags, seq);
        let elems = body(&mut m)?;
        let start = m.finish();
        self.finish(start, MsgKind::Op, op, elems);
        Ok(())
    }

    fn finish(&mut self, start: usize, kind: MsgKind, op: Option<usize>, elems: Elems) {
        self.msgs.push(MsgInfo {
            kind,
            op,
            elems: elems.at,
            entries: elems.entries,
        });
        if self.buf.len() > PAGE_SIZE && start > 0 {
            // The next page starts with this message; give it a page of room up front so it
            // is not regrown (and copied) by doubling.
            let mut tail = Vec::with_capacity(PAGE_SIZE + 4096);
            tail.extend_from_slice(&self.buf[start..]);
            self.buf.truncate(start);
            let page = std::mem::replace(&mut self.buf, tail);
            self.pages.push(page);
        }
    }
}

fn msg(ty: u16) -> u16 {
    (c::NFNL_SUBSYS_NFTABLES << 8) | ty
}

fn create() -> u16 {
    c::NLM_F_REQUEST | c::NLM_F_CREATE
}

pub fn family_proto(f: Family) -> u8 {
    match f {
        Family::V4 => c::NFPROTO_IPV4,
        Family::V6 => c::NFPROTO_IPV6,
    }
}

/// A comment as nft stores it after parsing kproxy's text (same sanitising). Borrowed
/// when it needs no change, which is nearly always (one comment per element).
pub fn clean_comment(s: &str) -> std::borrow::Cow<'_, str> {
    let clean =
        s.len() <= crate::nft::text::COMMENT_MAX && !s.chars().any(|c| c == '"' || c.is_control());
    if clean {
        return std::borrow::Cow::Borrowed(s);
    }
    let q = crate::nft::text::quote(s);
    std::borrow::Cow::Owned(q[1..q.len() - 1].to_string())
}

pub fn hook_number(h: Hook) -> u32 {
    match h {
        Hook::Prerouting => 0,
        Hook::Input => 1,
        Hook::Forward => 2,
        Hook::Output => 3,
        Hook::Postrouting => 4,
    }
}

fn chain_object(table: &TableRef, chain: &ChainDecl) -> Result<nl::Chain, String> {
    let mut ch = nl::Chain::new();
    ch.set_str(sys::NFTNL_CHAIN_TABLE, &table.name)
        .map_err(err)?;
    ch.set_str(sys::NFTNL_CHAIN_NAME, &chain.name)
        .map_err(err)?;
    if let Some(BaseChain {
        kind,
        hook,
        priority,
    }) = &chain.base
    {
        let kind = match kind {
            ChainType::Filter => "filter",
            ChainType::Nat => "nat",
        };
        ch.set_str(sys::NFTNL_CHAIN_TYPE, kind).map_err(err)?;
        ch.set_u32(sys::NFTNL_CHAIN_POLICY, c::NF_ACCEPT as u32)
            .map_err(err)?;
        ch.set_u32(sys::NFTNL_CHAIN_HOOKNUM, hook_number(*hook))
            .map_err(err)?;
        ch.set_u32(sys::NFTNL_CHAIN_PRIO, *priority as u32)
            .map_err(err)?;
    }
    if let Some(cm) = &chain.comment {
        let u = comment_udata(c::UDATA_CHAIN_COMMENT, cm)?;
        ch.set_bytes(sys::NFTNL_CHAIN_USERDATA, u.bytes())
            .map_err(err)?;
    }
    Ok(ch)
}
