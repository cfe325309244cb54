//! Transaction → one nfnetlink batch (pure: no socket). Every message carries its own
//! sequence number; [`Batch`] keeps the table from sequence number back to the operation
//! (and, for element messages, to the element) so kernel errors can name what failed.

use std::collections::HashMap;

use super::expr::{write_data, ImmData};
use super::rule::{encode_stmts, verdict_imm, SetRef};
use super::wire::{c, Udata, Writer};
use crate::nft::tx::{ChainDecl, Op, TableRef, Transaction};
use crate::nft::{
    BaseChain, ChainType, DataType, Element, ElementData, Family, Hook, Set, SetData, Value,
};

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
        w: Writer::with_capacity(PAGE_SIZE + 4096),
        pages: Vec::new(),
        msgs: Vec::new(),
        seq0,
    };
    let start = b.begin(
        c::NFNL_MSG_BATCH_BEGIN,
        c::NLM_F_REQUEST,
        0,
        c::NFNL_SUBSYS_NFTABLES,
    );
    b.finish(start, MsgKind::BatchBegin, None, Vec::new());

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

    let end = b.begin(
        c::NFNL_MSG_BATCH_END,
        c::NLM_F_REQUEST | c::NLM_F_ACK,
        0,
        c::NFNL_SUBSYS_NFTABLES,
    );
    b.finish(end, MsgKind::BatchEnd, None, Vec::new());
    let mut pages = b.pages;
    if !b.w.buf.is_empty() {
        pages.push(b.w.buf);
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

/// One operation's message(s); the error is the reason, [`encode_ops`] names the op.
fn encode_op(b: &mut Builder, sets: &mut TxSets<'_>, index: usize, op: &Op) -> Result<(), String> {
    let fam = family_proto(op.table().family);
    match op {
        Op::AddTable { table, comment } => {
            let m = b.begin(msg(c::NFT_MSG_NEWTABLE), create(), fam, 0);
            b.w.str(c::NFTA_TABLE_NAME, &table.name);
            b.w.u32_be(c::NFTA_TABLE_FLAGS, 0);
            if let Some(cm) = comment {
                let mut u = Udata::new();
                u.put_strz(c::UDATA_TABLE_COMMENT, &clean_comment(cm));
                b.w.attr(c::NFTA_TABLE_USERDATA, &u.buf);
            }
            b.finish(m, MsgKind::Op, Some(index), Vec::new());
        }
        Op::DeleteTable { table } => {
            let m = b.begin(msg(c::NFT_MSG_DELTABLE), c::NLM_F_REQUEST, fam, 0);
            b.w.str(c::NFTA_TABLE_NAME, &table.name);
            b.finish(m, MsgKind::Op, Some(index), Vec::new());
            sets.local
                .retain(|(f, n, _), _| !(*f == table.family && *n == table.name));
        }
        Op::AddChain { table, chain } => {
            let m = b.begin(msg(c::NFT_MSG_NEWCHAIN), create(), fam, 0);
            write_chain(&mut b.w, table, chain);
            b.finish(m, MsgKind::Op, Some(index), Vec::new());
        }
        Op::FlushChain { table, chain } => {
            let m = b.begin(msg(c::NFT_MSG_DELRULE), c::NLM_F_REQUEST, fam, 0);
            b.w.str(c::NFTA_RULE_TABLE, &table.name);
            b.w.str(c::NFTA_RULE_CHAIN, chain);
            b.finish(m, MsgKind::Op, Some(index), Vec::new());
        }
        Op::DeleteChain { table, chain } => {
            let m = b.begin(msg(c::NFT_MSG_DELCHAIN), c::NLM_F_REQUEST, fam, 0);
            b.w.str(c::NFTA_CHAIN_TABLE, &table.name);
            b.w.str(c::NFTA_CHAIN_NAME, chain);
            b.finish(m, MsgKind::Op, Some(index), Vec::new());
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
            let m = b.begin(msg(c::NFT_MSG_NEWRULE), create() | c::NLM_F_APPEND, fam, 0);
            b.w.str(c::NFTA_RULE_TABLE, &table.name);
            b.w.str(c::NFTA_RULE_CHAIN, chain);
            let n = b.w.nest_begin(c::NFTA_RULE_EXPRESSIONS);
            for e in &exprs {
                e.write(&mut b.w);
            }
            b.w.nest_end(n);
            if let Some(cm) = &rule.comment {
                let mut u = Udata::new();
                u.put_strz(c::UDATA_RULE_COMMENT, &clean_comment(cm));
                b.w.attr(c::NFTA_RULE_USERDATA, &u.buf);
            }
            b.finish(m, MsgKind::Op, Some(index), Vec::new());
        }
        Op::AddSet { table, set } => {
            let id = sets.next_id;
            sets.next_id += 1;
            let m = b.begin(msg(c::NFT_MSG_NEWSET), create(), fam, 0);
            write_set(&mut b.w, table, set, id)?;
            b.finish(m, MsgKind::Op, Some(index), Vec::new());
            let k = (table.family, table.name.clone(), set.name.clone());
            sets.deleted.retain(|d| *d != k);
            // Adding an existing set leaves the kernel's alone: keep the first shape.
            sets.local.entry(k).or_insert((SetShape::of(set), id));
        }
        Op::DeleteSet { table, set } => {
            let m = b.begin(msg(c::NFT_MSG_DELSET), c::NLM_F_REQUEST, fam, 0);
            b.w.str(c::NFTA_SET_TABLE, &table.name);
            b.w.str(c::NFTA_SET_NAME, set);
            b.finish(m, MsgKind::Op, Some(index), Vec::new());
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

/// The element messages of one AddElements / DeleteElements (`ty`: message type and
/// flags): each element encoded once, then cut into messages at element boundaries.
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
    let mut encoded = Encoded::with_capacity(items.len());
    for e in items {
        let start = encoded.w.buf.len();
        write_element(&mut encoded.w, table.family, &shape, e)
            .map_err(|r| format!("element {}: {r}", e.text()))?;
        encoded.spans.push((start, encoded.w.buf.len()));
    }
    let fam = family_proto(table.family);
    b.element_msgs(ty, flags, fam, table, set, id, index, encoded);
    Ok(())
}

struct Builder {
    w: Writer,
    pages: Vec<Vec<u8>>,
    msgs: Vec<MsgInfo>,
    seq0: u32,
}

/// Elements encoded back to back in one buffer (no allocation per element), with each
/// element's byte span, so messages can be cut at element boundaries.
struct Encoded {
    w: Writer,
    spans: Vec<(usize, usize)>,
}

impl Encoded {
    fn with_capacity(n: usize) -> Encoded {
        Encoded {
            w: Writer::with_capacity(n * 48),
            spans: Vec::with_capacity(n),
        }
    }
}

impl Builder {
    fn begin(&mut self, ty: u16, flags: u16, family: u8, res_id: u16) -> usize {
        let seq = self.seq0.wrapping_add(self.msgs.len() as u32);
        self.w.begin_msg(ty, flags, seq, family, res_id)
    }
    fn finish(&mut self, start: usize, kind: MsgKind, op: Option<usize>, elems: Vec<(u32, usize)>) {
        self.w.end_msg(start);
        self.msgs.push(MsgInfo { kind, op, elems });
        if self.w.buf.len() > PAGE_SIZE && start > 0 {
            // The next page starts with this message; give it a page of room up front so it
            // is not regrown (and copied) by doubling.
            let mut tail = Vec::with_capacity(PAGE_SIZE + 4096);
            tail.extend_from_slice(&self.w.buf[start..]);
            self.w.buf.truncate(start);
            let page = std::mem::replace(&mut self.w.buf, tail);
            self.pages.push(page);
        }
    }
    #[allow(clippy::too_many_arguments)]
    fn element_msgs(
        &mut self,
        ty: u16,
        flags: u16,
        fam: u8,
        table: &TableRef,
        set: &str,
        id: Option<u32>,
        index: usize,
        encoded: Encoded,
    ) {
        let elem = |i: usize| {
            let (a, b) = encoded.spans[i];
            &encoded.w.buf[a..b]
        };
        let count = encoded.spans.len();
        let mut i = 0;
        // Even an empty element list becomes one message, so every op has one.
        loop {
            let m = self.begin(msg(ty), flags, fam, 0);
            self.w.str(c::NFTA_SET_ELEM_LIST_TABLE, &table.name);
            self.w.str(c::NFTA_SET_ELEM_LIST_SET, set);
            if let Some(id) = id {
                self.w.u32_be(c::NFTA_SET_ELEM_LIST_SET_ID, id);
            }
            let n = self.w.nest_begin(c::NFTA_SET_ELEM_LIST_ELEMENTS);
            let mut elems = Vec::new();
            let mut bytes = 0;
            while i < count && (elems.is_empty() || bytes + elem(i).len() <= ELEMS_PER_MSG_BYTES) {
                elems.push(((self.w.buf.len() - m) as u32, i));
                bytes += elem(i).len();
                self.w.buf.extend_from_slice(elem(i));
                i += 1;
            }
            self.w.nest_end(n);
            self.finish(m, MsgKind::Op, Some(index), elems);
            if i >= count {
                break;
            }
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
        let mut u = Udata::new();
        u.put_strz(c::UDATA_CHAIN_COMMENT, &clean_comment(cm));
        w.attr(c::NFTA_CHAIN_USERDATA, &u.buf);
    }
}

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
        DataType::Slot => TYPE_INTEGER,
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
        parts
            .iter()
            .map(|t| super::wire::align4(t.byte_len()))
            .sum()
    }
}

/// nft's byteorder for a set's key or data (`enum byteorder`: 0 invalid, 1 host, 2 big).
fn byteorder(parts: &[DataType]) -> u32 {
    match parts {
        [DataType::Ipv4Addr | DataType::Ipv6Addr | DataType::InetService] => 2,
        [DataType::Mark | DataType::Slot] => 1,
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
    let mut inner = Udata::new();
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
        DataType::Slot => {
            inner.put_u32(0, 1); // NFT_NG_RANDOM
            inner.put_u32(1, 1); // mod 1
            inner.put_u32(2, 0); // offset 0
            EXPR_NUMGEN
        }
        DataType::Verdict => return Err("nft cannot declare a verdict with typeof".into()),
    };
    let mut u = Udata::new();
    u.put_u32(c::UDATA_TYPEOF_EXPR, etype);
    u.nest(c::UDATA_TYPEOF_DATA, &inner);
    Ok(u)
}

/// `typeof` userdata of a key or data; `None` parts of a `type` concatenation give the
/// empty concat nest nft writes for `type a . b`.
fn typeof_udata(parts: &[DataType], use_typeof: bool) -> Result<Option<Udata>, String> {
    if use_typeof {
        if parts.len() == 1 {
            return typeof_part(parts[0]).map(Some);
        }
        let mut list = Udata::new();
        for (i, t) in parts.iter().enumerate() {
            list.nest(i as u8, &typeof_part(*t)?);
        }
        let mut u = Udata::new();
        u.put_u32(c::UDATA_TYPEOF_EXPR, EXPR_CONCAT);
        u.nest(c::UDATA_TYPEOF_DATA, &list);
        return Ok(Some(u));
    }
    if parts.len() > 1 {
        let mut u = Udata::new();
        u.put_u32(c::UDATA_TYPEOF_EXPR, EXPR_CONCAT);
        u.nest(c::UDATA_TYPEOF_DATA, &Udata::new());
        return Ok(Some(u));
    }
    Ok(None)
}

fn write_set(w: &mut Writer, table: &TableRef, set: &Set, id: u32) -> Result<(), String> {
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
    let use_typeof = set.key.contains(&DataType::Slot) || data_parts.contains(&DataType::Slot);
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
    w.str(c::NFTA_SET_TABLE, &table.name);
    w.str(c::NFTA_SET_NAME, &set.name);
    w.u32_be(c::NFTA_SET_FLAGS, flags);
    w.u32_be(c::NFTA_SET_KEY_TYPE, concat_type(&set.key));
    w.u32_be(c::NFTA_SET_KEY_LEN, key_len(&set.key) as u32);
    match &set.data {
        SetData::None => {}
        SetData::Verdict => {
            w.u32_be(c::NFTA_SET_DATA_TYPE, c::NFT_DATA_VERDICT);
            w.u32_be(c::NFTA_SET_DATA_LEN, 0);
        }
        SetData::Values(v) => {
            w.u32_be(c::NFTA_SET_DATA_TYPE, concat_type(v));
            w.u32_be(c::NFTA_SET_DATA_LEN, key_len(v) as u32);
        }
    }
    w.u32_be(c::NFTA_SET_ID, id);
    if set.size.is_some() || concat_interval {
        let d = w.nest_begin(c::NFTA_SET_DESC);
        if let Some(n) = set.size {
            w.u32_be(c::NFTA_SET_DESC_SIZE, n);
        }
        if concat_interval {
            // Field lengths in bytes, one nest per field (the kernel wants NFT_SET_CONCAT
            // in the flags too, else EINVAL).
            let cc = w.nest_begin(c::NFTA_SET_DESC_CONCAT);
            for t in &set.key {
                let f = w.nest_begin(c::NFTA_LIST_ELEM);
                w.u32_be(c::NFTA_SET_FIELD_LEN, t.byte_len() as u32);
                w.nest_end(f);
            }
            w.nest_end(cc);
        }
        w.nest_end(d);
    }
    if let Some(t) = set.timeout {
        w.u64_be(c::NFTA_SET_TIMEOUT, t as u64 * 1000);
    }
    let mut u = Udata::new();
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
    w.attr(c::NFTA_SET_USERDATA, &u.buf);
    Ok(())
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
        (Value::Int(n), DataType::Mark | DataType::Slot) => n.to_ne_bytes().to_vec(),
        _ => return bad(),
    })
}

/// First and last address of a prefix (or of a single address), as big-endian u128.
fn range_of(v: &Value) -> Option<(u128, u128, usize)> {
    use std::net::IpAddr;
    let (ip, prefix, bits) = match v {
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
        out.resize(super::wire::align4(out.len()), 0);
    }
    out
}

#[derive(Clone, Copy)]
enum ElemRef<'a> {
    Add(&'a Element),
    Delete(&'a [Value]),
}

impl ElemRef<'_> {
    /// The element as `nft` writes it (error messages).
    fn text(self) -> String {
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
        if matches!(v, Value::Net(_)) && !shape.interval {
            return Err("a prefix in a set without the interval flag".into());
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

/// Writes one element as nft does: interval sets get a start element and an end-flagged
/// element (`last + 1`; none when the range reaches the top of the address space, where
/// nft marks the start "open" in userdata); concatenated interval sets (pipapo) get one
/// element with `NFTA_SET_ELEM_KEY_END` = the last key (inclusive).
fn write_element(
    w: &mut Writer,
    family: Family,
    shape: &SetShape,
    e: ElemRef<'_>,
) -> Result<(), String> {
    let (key, data, comment) = match e {
        ElemRef::Add(e) => (&e.key[..], Some(&e.data), e.comment.as_deref()),
        ElemRef::Delete(k) => (k, None, None),
    };
    check_key(family, shape, key)?;
    let data_imm = element_data(data, shape)?;
    let mut udata = Udata::new();
    if let Some(cm) = comment {
        udata.put_strz(c::UDATA_SET_ELEM_COMMENT, &clean_comment(cm));
    }

    if shape.interval && key.len() == 1 {
        let (first, last, len) =
            range_of(&key[0]).ok_or("interval sets hold addresses or prefixes only")?;
        let end = if len == 16 {
            last.checked_add(1)
        } else if last < u32::MAX as u128 {
            Some(last + 1)
        } else {
            None
        };
        if end.is_none() {
            udata.put_u32(c::UDATA_SET_ELEM_FLAGS, c::UDATA_SET_ELEM_F_INTERVAL_OPEN);
        }
        elem(
            w,
            0,
            &be_bytes(first, len),
            None,
            data_imm.as_ref(),
            &udata.buf,
        );
        if let Some(end) = end {
            elem(
                w,
                c::NFT_SET_ELEM_INTERVAL_END,
                &be_bytes(end, len),
                None,
                None,
                &[],
            );
        }
        return Ok(());
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
    elem(
        w,
        0,
        &concat_bytes(&start),
        key_end.as_deref(),
        data_imm.as_ref(),
        &udata.buf,
    );
    Ok(())
}

fn elem(
    w: &mut Writer,
    flags: u32,
    key: &[u8],
    key_end: Option<&[u8]>,
    data: Option<&ImmData>,
    udata: &[u8],
) {
    let n = w.nest_begin(c::NFTA_LIST_ELEM);
    if flags != 0 {
        w.u32_be(c::NFTA_SET_ELEM_FLAGS, flags);
    }
    w.data_value(c::NFTA_SET_ELEM_KEY, key);
    if let Some(k) = key_end {
        w.data_value(c::NFTA_SET_ELEM_KEY_END, k);
    }
    if let Some(d) = data {
        write_data(w, c::NFTA_SET_ELEM_DATA, d);
    }
    if !udata.is_empty() {
        w.attr(c::NFTA_SET_ELEM_USERDATA, udata);
    }
    w.nest_end(n);
}
