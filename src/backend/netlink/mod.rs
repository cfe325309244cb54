//! The netlink backend: the only code in kproxy that touches the kernel's nftables.
//!
//! Owns: encoding a [`Transaction`] into one nfnetlink batch ([`encode`], pure), sending it
//! atomically over a `NETLINK_NETFILTER` socket, mapping kernel errors back to operations,
//! reading kproxy's tables (`ip NAME`, `ip6 NAME`) back into a typed [`Ruleset`] (whole,
//! declarations only with each set's elements on request, or only named chains and sets),
//! and watching the kernel's change notifications for what other programs do to them
//! (`monitor`).
//! Must not: decide what the rules are, or touch any table but its own two.
//!
//! The wire format is libnftnl's: every table, chain, set, element, rule and expression is
//! a libnftnl object built and parsed by libnftnl (through the one safe wrapper,
//! [`libnftnl`]; its parsers only behind [`policy`]), so messages are what `nft` 1.0.6
//! (built on the same libnftnl) sends: same expressions and registers (our typed compiler,
//! [`rule`], picks them as nft does), comments in nft's userdata, `typeof` set
//! declarations, interval elements as nft sends them; `nft list` shows exactly what
//! loading `kproxy render` output with `nft -f` shows. What stays ours: the statement ↔
//! expression compiler, the batch pages and sequence-number table, the split of element
//! lists, and which flags each message carries.
//!
//! Kernel and library quirks this module works around (measured on 6.18 unless noted):
//! - The whole batch goes out in ONE `sendmsg()` with every page as an iovec, after raising
//!   `SO_SNDBUFFORCE` to its size: nfnetlink processes one skb per batch, and the `mnl`
//!   crate's `send_all` (one `sendto` per 128 KiB page) silently breaks batches larger
//!   than a page (the first page is aborted for lack of BATCH_END, later pages get EINVAL).
//! - No message asks for an ACK except BATCH_END (errors are reported regardless), and
//!   `NETLINK_CAP_ACK` keeps error replies small; `SO_RCVBUFFORCE` is raised as well. With
//!   per-message ACKs (nftnl's default) an 8k-message batch overflows the receive buffer
//!   (ENOBUFS) and errors are lost.
//! - Committed means: no NLMSG_ERROR for any message AND, on kernel >= 6.10, the ACK for
//!   BATCH_END. An ACK for a message of an aborted batch means nothing. Batch processing
//!   is synchronous inside `sendmsg()`, so all replies are queued when it returns.
//! - Elements are sent without `NLM_F_EXCL` (re-adding an identical element is not an
//!   error), tables/chains/sets with `NLM_F_CREATE` only (like `nft add`).
//! - `reject` is encoded as type ICMP_UNREACH with code port-unreachable (3 for `ip`, 4 =
//!   ICMPv6 port unreachable for `ip6`); nftnl's `Reject` encodes ICMPX codes, which in an
//!   `ip`/`ip6` table mean host-unreachable.
//! - Concatenated interval sets need `NFTA_SET_DESC_CONCAT` with one u32 length per field
//!   AND the `NFT_SET_CONCAT` flag (0x80, kernel >= 5.6), else EINVAL on the set and ENOENT
//!   on everything that references it. Their elements carry `NFTA_SET_ELEM_KEY_END`.
//! - Plain interval sets get a start element and an end-flagged element (`last + 1`); a
//!   range reaching the top of the address space has no end element and nft marks its
//!   start "open" in userdata.
//! - Attribute lengths are 16 bits: element lists are split into messages below 64 KiB.
//! - libnftnl 1.2.4 numbers the entries of an element list 1, 2, 3, … when it builds one
//!   and rejects any entry not numbered `NFTA_LIST_ELEM` (1) when it parses one (its own
//!   lists included); the kernel ignores the numbers and dumps `NFTA_LIST_ELEM`. kproxy
//!   writes `NFTA_LIST_ELEM`, so its batches parse back (error reports decode the failing
//!   element from the batch).
//! - libnftnl's `*_get_data` reports some string lengths wrongly (a chain's type as 4
//!   bytes): strings are read with the `*_get_str` functions.
//! - Dumps use `NLM_F_DUMP` and read until NLMSG_DONE; the generation id is read before and
//!   after, and the dump is retried if it changed (or the kernel flagged NLM_F_DUMP_INTR).
//!   Chain dumps are not filtered by table on older kernels: filtered here.
//!
//! The `nftnl` crate's safe objects are not used (its C API, `nftnl::nftnl_sys`, is): they
//! hard-code register 1, per-message ACKs and `NLM_F_EXCL` on elements, and lack maps,
//! numgen, dynset, fib, concatenations and reading back.

mod decode;
mod encode;
mod expr;
mod libnftnl;
mod monitor;
mod nf_tables;
mod policy;
mod rule;

use std::io;

#[cfg(any(test, feature = "test-util"))]
pub use decode::{decode_dump, DecodeError};
pub use encode::{
    encode, encode_shedding, encode_with, Batch, EncodeError, MsgInfo, MsgKind, SetCatalog,
    SetShape, PAGE_SIZE,
};

use self::encode::family_proto;
use self::monitor::Monitor;
use self::nf_tables::c;
use super::{ApplyReport, Backend, BackendError, OpFailure, Touched, Waker, Watched};
use crate::netlink::reply::{self, Step};
use crate::netlink::socket::NlSocket;
use crate::netlink::wire::{self, messages, Builder};
use crate::nft::tx::{Op, TableRef, Transaction};
use crate::nft::{Element, Elements, Family, Ruleset, Set, Table};

/// kproxy's table name unless configured otherwise.
pub const DEFAULT_TABLE: &str = "kproxy";

/// Sets with at least this many elements are dumped until two reads agree.
const STABLE_DUMP_MIN: usize = 256;

/// How long to wait for the BATCH_END acknowledgement after `sendmsg()` returned.
const ACK_WAIT_MS: i32 = 5000;

/// Applies transactions to, and reads back, the `ip`/`ip6` tables named `table` in the
/// network namespace of the thread that created it.
pub struct NetlinkBackend {
    table: String,
    sock: NlSocket,
    seq: u32,
    catalog: SetCatalog,
    /// Kernel >= 6.10 acknowledges BATCH_END; older ones never do.
    ack_batch_end: bool,
    /// The drift watch, once [`Backend::watch`] started it.
    monitor: Option<Monitor>,
}

enum ReqError {
    Errno(i32),
    Backend(BackendError),
}

impl From<io::Error> for ReqError {
    fn from(e: io::Error) -> Self {
        ReqError::Backend(BackendError::Io(e))
    }
}

impl From<ReqError> for BackendError {
    fn from(e: ReqError) -> Self {
        match e {
            ReqError::Errno(n) => BackendError::Io(io::Error::from_raw_os_error(n)),
            ReqError::Backend(b) => b,
        }
    }
}

struct Reply {
    /// The reply messages (aligned, back to back).
    buf: Vec<u8>,
}

/// `(major, minor)` of the running kernel.
fn kernel_version() -> (u32, u32) {
    let s = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut it = s
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse().ok());
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

fn msg_type(ty: u16) -> u16 {
    (c::NFNL_SUBSYS_NFTABLES << 8) | ty
}

/// Errno and extended-ACK offset of an NLMSG_ERROR (0 = an ACK).
fn parse_error(m: &wire::Msg<'_>) -> (i32, Option<u32>) {
    reply::error(m)
}

/// What a failing operation was about, for error messages: the operation's description
/// and, for a rule or an element, its text. The details are decoded from the encoded
/// message, so they are there even when the operation's payload was already dropped
/// ([`Op::shed_payload`]).
fn describe_failure(
    tx: &Transaction,
    batch: &Batch,
    catalog: &SetCatalog,
    index: usize,
    seq: u32,
    element: Option<usize>,
) -> String {
    let op = &tx.ops[index];
    // Counted in the batch: the operation's own list may already be shed.
    let base = op.describe_with(batch.items_of(index));
    let msg = batch.encoded_message(seq);
    let detail = match (op, msg) {
        (Op::AddRule { table, .. }, Some(m)) => {
            let (_, _, rule) = decode::rule(&m, table.family);
            Some(crate::nft::text::rule(table.family, &rule))
        }
        (Op::AddElements { table, set, .. } | Op::DeleteElements { table, set, .. }, Some(m)) => {
            element.and_then(|i| {
                let entry = batch.element_entry(m.seq, i)? as usize;
                let shape =
                    declared_shape(tx, table, set).or_else(|| catalog.get(table, set).cloned())?;
                let mut raw = Vec::new();
                decode::raw_elements(&m, &mut raw);
                // The element's entry, and its interval end if it has one.
                let mut own: Vec<decode::RawElem> =
                    raw.into_iter().skip(entry - 1).take(2).collect();
                if own
                    .get(1)
                    .is_none_or(|e| e.flags & c::NFT_SET_ELEM_INTERVAL_END == 0)
                {
                    own.truncate(1);
                }
                let mut decl = crate::nft::Set::new(set.clone(), shape.key, shape.data);
                decl.flags.interval = shape.interval;
                let e = decode::fold_elements(&decl, own, &mut decode::Comments::default());
                e.first().map(|e| match op {
                    Op::DeleteElements { .. } => crate::nft::text::values(&e.key),
                    _ => crate::nft::text::element(e),
                })
            })
        }
        _ => None,
    };
    match detail {
        Some(d) => format!("{base}: {d}"),
        None => base,
    }
}

/// The shape of a set the transaction itself declares.
fn declared_shape(tx: &Transaction, table: &TableRef, name: &str) -> Option<SetShape> {
    tx.ops.iter().find_map(|op| match op {
        Op::AddSet { table: t, set } if t == table && set.name == name => Some(SetShape::of(set)),
        _ => None,
    })
}

impl NetlinkBackend {
    /// Opens the netlink socket (in the calling thread's network namespace) for the tables
    /// `ip TABLE` and `ip6 TABLE`.
    pub fn new(table: &str) -> Result<NetlinkBackend, BackendError> {
        let sock = NlSocket::open()?;
        let (major, minor) = kernel_version();
        // Start sequence numbers somewhere unpredictable, so replies to an earlier
        // process's requests on a reused port id cannot be mistaken for ours.
        let seq = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() ^ d.as_secs() as u32)
            .unwrap_or(1)
            | 1;
        Ok(NetlinkBackend {
            table: table.to_string(),
            sock,
            seq,
            catalog: SetCatalog::default(),
            ack_batch_end: (major, minor) >= (6, 10),
            monitor: None,
        })
    }

    /// The table name this backend manages.
    pub fn table_name(&self) -> &str {
        &self.table
    }

    fn next_seq(&mut self, n: usize) -> u32 {
        let s = self.seq;
        self.seq = self.seq.wrapping_add(n as u32 + 1);
        if self.seq == 0 {
            self.seq = 1;
        }
        s
    }

    /// The ruleset generation id (NFT_MSG_GETGEN); it changes with every committed
    /// transaction by anyone, so a changed id means someone may have edited the ruleset.
    pub fn generation(&mut self) -> Result<u32, BackendError> {
        let r = self.request(c::NFT_MSG_GETGEN, c::NLM_F_REQUEST, 0, |_| {})?;
        let id = messages(&r.buf)
            .find(|m| m.ty == msg_type(c::NFT_MSG_NEWGEN))
            .and_then(|m| m.attrs().u32_be(c::NFTA_GEN_ID));
        id.ok_or_else(|| BackendError::Netlink("no generation id in NEWGEN".into()))
    }

    /// Sends one request and collects its replies (until NLMSG_DONE for dumps).
    fn request(
        &mut self,
        ty: u16,
        flags: u16,
        family: u8,
        attrs: impl FnOnce(&mut Builder),
    ) -> Result<Reply, ReqError> {
        let mut buf = Vec::new();
        self.request_each(ty, flags, family, attrs, |m| {
            buf.extend_from_slice(m.raw);
            buf.resize(buf.len().next_multiple_of(4), 0);
        })?;
        Ok(Reply { buf })
    }

    /// Sends one request and hands each reply message to `each` as it is received (a
    /// dump is decoded a socket read at a time, never held whole). Returns whether the
    /// kernel flagged the dump as interrupted (NLM_F_DUMP_INTR).
    fn request_each(
        &mut self,
        ty: u16,
        flags: u16,
        family: u8,
        attrs: impl FnOnce(&mut Builder),
        mut each: impl FnMut(&wire::Msg<'_>),
    ) -> Result<bool, ReqError> {
        let seq = self.next_seq(1);
        let mut w = Builder::new();
        w.begin_msg(msg_type(ty), flags, seq, family, 0);
        attrs(&mut w);
        w.end_msg();
        self.sock.send_pages(&[w.bytes()])?;
        let dump = flags & c::NLM_F_DUMP == c::NLM_F_DUMP;
        let mut interrupted = false;
        // How the request ended: Ok, or the kernel's errno.
        let mut end: Option<Result<(), i32>> = None;
        while end.is_none() {
            let buf = self.sock.recv(false)?.unwrap_or(&[]);
            if buf.is_empty() {
                return Err(ReqError::Backend(BackendError::Netlink(
                    "netlink socket closed".into(),
                )));
            }
            // A broken buffer is an error, not a wait for replies that will not come (the
            // end of the dump may be in it).
            reply::dispatch(buf, &mut |r| {
                let m = r.msg();
                if m.seq != seq {
                    return Step::Next; // stale reply to an earlier request
                }
                interrupted |= m.flags & c::NLM_F_DUMP_INTR != 0;
                end = match r {
                    reply::Reply::Error { errno: 0, .. } | reply::Reply::Done { .. } => {
                        Some(Ok(()))
                    }
                    reply::Reply::Error { errno, .. } => Some(Err(errno)),
                    reply::Reply::Other(_) => None,
                    reply::Reply::Data(m) => {
                        each(&m);
                        (!dump).then_some(Ok(()))
                    }
                };
                if end.is_some() {
                    Step::Stop
                } else {
                    Step::Next
                }
            })
            .map_err(|e| ReqError::Backend(BackendError::Netlink(e.to_string())))?;
        }
        match end {
            Some(Err(errno)) => Err(ReqError::Errno(errno)),
            _ => Ok(interrupted),
        }
    }

    /// [`NetlinkBackend::request`] of one object: `None` when the kernel has none.
    fn request_one(
        &mut self,
        ty: u16,
        family: u8,
        attrs: impl FnOnce(&mut Builder),
    ) -> Result<Option<Reply>, BackendError> {
        match self.request(ty, c::NLM_F_REQUEST, family, attrs) {
            Ok(r) => Ok(Some(r)),
            Err(ReqError::Errno(libc::ENOENT)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The declaration of one set as the kernel has it (`None` if it does not exist).
    fn fetch_set(&mut self, t: &TableRef, set: &str) -> Result<Option<SetShape>, BackendError> {
        let r = self.request(
            c::NFT_MSG_GETSET,
            c::NLM_F_REQUEST,
            family_proto(t.family),
            |w| {
                w.str(c::NFTA_SET_TABLE, &t.name);
                w.str(c::NFTA_SET_NAME, set);
            },
        );
        let r = match r {
            Ok(r) => r,
            Err(ReqError::Errno(libc::ENOENT)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let shape = messages(&r.buf)
            .find(|m| m.ty == msg_type(c::NFT_MSG_NEWSET))
            .and_then(|m| decode::set(&m).ok())
            .map(|(_, s)| SetShape::of(&s));
        Ok(shape)
    }

    /// Sends an encoded batch and collects the kernel's verdict on it.
    fn send(&mut self, batch: &Batch, tx: &Transaction) -> Result<(), BackendError> {
        self.sock.reserve(batch.len_bytes())?;
        let sent = self.sock.send_pages(batch.pages())?;
        if sent != batch.len_bytes() {
            return Err(BackendError::Netlink(format!(
                "sent {sent} of {} bytes",
                batch.len_bytes()
            )));
        }
        let mut failures: Vec<OpFailure> = Vec::new();
        let mut refused: Option<i32> = None;
        let mut acked = false;
        let mut overflow = false;
        loop {
            match self.sock.recv(true) {
                Ok(Some(buf)) => {
                    for m in messages(buf) {
                        if m.ty != c::NLMSG_ERROR || batch.message(m.seq).is_none() {
                            continue;
                        }
                        let (errno, offs) = parse_error(&m);
                        let info = batch.message(m.seq).unwrap();
                        match (info.kind, errno) {
                            (MsgKind::BatchEnd, 0) => acked = true,
                            (_, 0) => {}
                            (MsgKind::Op, e) => {
                                let index = info.op.unwrap_or(0);
                                let element = offs.and_then(|o| batch.element_at(m.seq, o));
                                let f = OpFailure {
                                    index,
                                    op: describe_failure(
                                        tx,
                                        batch,
                                        &self.catalog,
                                        index,
                                        m.seq,
                                        element,
                                    ),
                                    errno: e,
                                };
                                if !failures.contains(&f) {
                                    failures.push(f);
                                }
                            }
                            (_, e) => refused = Some(e),
                        }
                    }
                }
                Ok(None) => {
                    let done = acked
                        || !failures.is_empty()
                        || refused.is_some()
                        || overflow
                        || !self.ack_batch_end;
                    if done || !self.sock.wait_readable(ACK_WAIT_MS)? {
                        break;
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => overflow = true,
                Err(e) => return Err(e.into()),
            }
        }
        if !failures.is_empty() {
            failures.sort_by_key(|f| f.index);
            return Err(BackendError::Rejected { failures });
        }
        if let Some(e) = refused {
            return Err(BackendError::Netlink(format!(
                "batch refused: {}",
                io::Error::from_raw_os_error(e)
            )));
        }
        if overflow {
            return Err(BackendError::Netlink(
                "replies lost (ENOBUFS): the transaction's outcome is unknown".into(),
            ));
        }
        if self.ack_batch_end && !acked {
            return Err(BackendError::Netlink(
                "no acknowledgement for BATCH_END: the transaction's outcome is unknown".into(),
            ));
        }
        Ok(())
    }

    /// The raw replies of the requests a dump makes (the table, its chains, sets, each
    /// set's elements and its rules, both families), back to back: real kernel input
    /// for the decoder tests ([`decode_dump`] reads it).
    #[cfg(any(test, feature = "test-util"))]
    pub fn dump_raw(&mut self) -> Result<Vec<u8>, BackendError> {
        let mut out = Vec::new();
        let name = self.table.clone();
        let dump = c::NLM_F_REQUEST | c::NLM_F_DUMP;
        for family in [Family::V4, Family::V6] {
            let fam = family_proto(family);
            match self.request(c::NFT_MSG_GETTABLE, c::NLM_F_REQUEST, fam, |w| {
                w.str(c::NFTA_TABLE_NAME, &name)
            }) {
                Ok(r) => out.extend_from_slice(&r.buf),
                Err(ReqError::Errno(libc::ENOENT)) => continue,
                Err(e) => return Err(e.into()),
            }
            let r = self.request(c::NFT_MSG_GETCHAIN, dump, fam, |w| {
                w.str(c::NFTA_CHAIN_TABLE, &name)
            })?;
            out.extend_from_slice(&r.buf);
            let r = self.request(c::NFT_MSG_GETSET, dump, fam, |w| {
                w.str(c::NFTA_SET_TABLE, &name)
            })?;
            out.extend_from_slice(&r.buf);
            let sets: Vec<String> = messages(&r.buf)
                .filter_map(|m| decode::set(&m).ok())
                .map(|(_, s)| s.name)
                .collect();
            for set in sets {
                let r = self.request(c::NFT_MSG_GETSETELEM, dump, fam, |w| {
                    w.str(c::NFTA_SET_ELEM_LIST_TABLE, &name);
                    w.str(c::NFTA_SET_ELEM_LIST_SET, &set);
                })?;
                out.extend_from_slice(&r.buf);
            }
            let r = self.request(c::NFT_MSG_GETRULE, dump, fam, |w| {
                w.str(c::NFTA_RULE_TABLE, &name)
            })?;
            out.extend_from_slice(&r.buf);
        }
        Ok(out)
    }

    /// kproxy's table of `family` (name and comment, nothing in it), or `None` when the
    /// kernel has none.
    fn read_table_header(&mut self, family: Family) -> Result<Option<Table>, BackendError> {
        let name = self.table.clone();
        let Some(r) = self.request_one(c::NFT_MSG_GETTABLE, family_proto(family), |w| {
            w.str(c::NFTA_TABLE_NAME, &name)
        })?
        else {
            return Ok(None);
        };
        let mut table = Table::new(family, name);
        if let Some(m) = messages(&r.buf).find(|m| m.ty == msg_type(c::NFT_MSG_NEWTABLE)) {
            table.comment = decode::table(&m).and_then(|t| t.1);
        }
        Ok(Some(table))
    }

    /// Reads the rules of `table`'s chains (of `only` that chain), appending them to the
    /// chains `table` holds, decoding each socket read as it arrives; rules of other
    /// chains are dropped. True when the dump was interrupted.
    fn read_rules(&mut self, table: &mut Table, only: Option<&str>) -> Result<bool, BackendError> {
        let fam = family_proto(table.family);
        let family = table.family;
        let name = table.name.clone();
        let dump = c::NLM_F_REQUEST | c::NLM_F_DUMP;
        let interrupted = self.request_each(
            c::NFT_MSG_GETRULE,
            dump,
            fam,
            |w| {
                w.str(c::NFTA_RULE_TABLE, &name);
                if let Some(chain) = only {
                    w.str(c::NFTA_RULE_CHAIN, chain);
                }
            },
            |m| {
                if m.ty == msg_type(c::NFT_MSG_NEWRULE) && m.family() == fam {
                    // Older kernels ignore the filters: applied here.
                    let (t, chain, rule) = decode::rule(m, family);
                    if t != name {
                        return;
                    }
                    if only.is_some_and(|o| o != chain) {
                        return;
                    }
                    if let Some(ch) = table.chains.get_mut(&chain) {
                        ch.push(rule);
                    }
                }
            },
        )?;
        for ch in table.chains.values_mut() {
            ch.rules.shrink_to_fit();
        }
        Ok(interrupted)
    }

    /// One read of the chains and sets `objects` names ([`Backend::dump_objects`]): a
    /// chain with GETCHAIN and a GETRULE dump of it alone, a set with GETSET and a
    /// GETSETELEM dump of it. True when a dump was interrupted.
    fn objects_once(&mut self, objects: &Touched) -> Result<(Ruleset, bool), BackendError> {
        let mut rs = Ruleset::default();
        let mut interrupted = false;
        let mut comments = decode::Comments::default();
        let name = self.table.clone();
        for family in objects.families() {
            let fam = family_proto(family);
            let Some(mut table) = self.read_table_header(family)? else {
                continue;
            };
            for chain in objects.names(family, true) {
                let Some(r) = self.request_one(c::NFT_MSG_GETCHAIN, fam, |w| {
                    w.str(c::NFTA_CHAIN_TABLE, &name);
                    w.str(c::NFTA_CHAIN_NAME, &chain);
                })?
                else {
                    continue;
                };
                let decl = messages(&r.buf)
                    .find(|m| m.ty == msg_type(c::NFT_MSG_NEWCHAIN))
                    .and_then(|m| decode::chain(&m).map(|c| c.1));
                if let Some(ch) = decl {
                    table.add_chain(ch);
                    interrupted |= self.read_rules(&mut table, Some(&chain))?;
                }
            }
            for set in objects.names(family, false) {
                let Some(r) = self.request_one(c::NFT_MSG_GETSET, fam, |w| {
                    w.str(c::NFTA_SET_TABLE, &name);
                    w.str(c::NFTA_SET_NAME, &set);
                })?
                else {
                    continue;
                };
                let decl = messages(&r.buf)
                    .find(|m| m.ty == msg_type(c::NFT_MSG_NEWSET))
                    .map(|m| decode::set(&m));
                match decl {
                    Some(Ok((_, mut s))) => {
                        let (els, intr) = self.read_elements(family, &s, &mut comments)?;
                        interrupted |= intr;
                        s.extend(els);
                        table.add_set(s);
                    }
                    Some(Err(e)) => tracing::warn!(error = %e, "set not read back"),
                    None => {}
                }
            }
            rs.tables.push(table);
        }
        Ok((rs, interrupted))
    }

    /// Runs `read` until the generation id is the same before and after it and no dump
    /// was interrupted (a commit in between could make it a mix of two rulesets), or,
    /// watching, until the commits in between all touched other programs' tables only,
    /// or until two reads in a row agree (a neighbour committing every 100 ms would
    /// otherwise fail every read of a large table: tests/soak.rs).
    fn read_consistently<T: PartialEq>(
        &mut self,
        mut read: impl FnMut(&mut Self) -> Result<(T, bool), BackendError>,
    ) -> Result<T, BackendError> {
        let mut previous: Option<T> = None;
        for _ in 0..5 {
            let g0 = self.generation()?;
            let (v, interrupted) = read(self)?;
            let g1 = self.generation()?;
            if g0 == g1 && !interrupted {
                return Ok(v);
            }
            if let Some(m) = &self.monitor {
                if m.only_others_between(g0, g1) {
                    return Ok(v);
                }
            }
            if previous.take().is_some_and(|p| p == v) {
                return Ok(v);
            }
            previous = Some(v);
        }
        Err(BackendError::Netlink(
            "the ruleset kept changing while it was read".into(),
        ))
    }

    fn dump_once(&mut self, elements: bool) -> Result<(Ruleset, bool), BackendError> {
        let mut rs = Ruleset::default();
        let mut interrupted = false;
        let mut comments = decode::Comments::default();
        for family in [Family::V4, Family::V6] {
            if let Some((table, intr)) = self.read_table(family, elements, &mut comments)? {
                interrupted |= intr;
                rs.tables.push(table);
            }
        }
        Ok((rs, interrupted))
    }

    /// One family's table: its declaration, chains with their rules, and sets (with their
    /// elements only when `elements`). `None` if the table does not exist. The bool says
    /// whether a dump was interrupted.
    fn read_table(
        &mut self,
        family: Family,
        elements: bool,
        comments: &mut decode::Comments,
    ) -> Result<Option<(Table, bool)>, BackendError> {
        let name = self.table.clone();
        let fam = family_proto(family);
        let Some(mut table) = self.read_table_header(family)? else {
            return Ok(None);
        };
        let dump = c::NLM_F_REQUEST | c::NLM_F_DUMP;
        let mut interrupted = self.request_each(
            c::NFT_MSG_GETCHAIN,
            dump,
            fam,
            |w| w.str(c::NFTA_CHAIN_TABLE, &name),
            |m| {
                if m.ty == msg_type(c::NFT_MSG_NEWCHAIN) && m.family() == fam {
                    if let Some((t, ch)) = decode::chain(m) {
                        if t == name {
                            table.add_chain(ch);
                        }
                    }
                }
            },
        )?;

        let mut sets = Vec::new();
        interrupted |= self.request_each(
            c::NFT_MSG_GETSET,
            dump,
            fam,
            |w| w.str(c::NFTA_SET_TABLE, &name),
            |m| {
                if m.ty == msg_type(c::NFT_MSG_NEWSET) && m.family() == fam {
                    match decode::set(m) {
                        Ok((t, s)) if t == name => sets.push(s),
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "set not read back"),
                    }
                }
            },
        )?;
        for mut s in sets {
            if elements {
                let (els, intr) = self.read_elements(family, &s, comments)?;
                interrupted |= intr;
                s.extend(els);
            }
            table.add_set(s);
        }

        interrupted |= self.read_rules(&mut table, None)?;
        Ok(Some((table, interrupted)))
    }

    /// The elements of `set` (declared as the kernel has it) in this family's table, and
    /// whether the dump was interrupted.
    ///
    /// A hash set's element dump spans several skbs, each resuming by count; a
    /// background rehash (right after many inserts) between them skips or repeats
    /// elements without any flag or generation change (seen on 6.18: 88k of 100k). Large
    /// sets are therefore read until two reads agree (on the count and an
    /// order-independent hash of the keys: no copy of the keys is kept).
    fn read_elements(
        &mut self,
        family: Family,
        set: &Set,
        comments: &mut decode::Comments,
    ) -> Result<(Vec<Element>, bool), BackendError> {
        let name = self.table.clone();
        let fam = family_proto(family);
        let dump = c::NLM_F_REQUEST | c::NLM_F_DUMP;
        let mut previous: Option<(usize, u64)> = None;
        let mut raw = Vec::new();
        let mut interrupted = false;
        for _ in 0..8 {
            raw.clear();
            interrupted |= self.request_each(
                c::NFT_MSG_GETSETELEM,
                dump,
                fam,
                |w| {
                    w.str(c::NFTA_SET_ELEM_LIST_TABLE, &name);
                    w.str(c::NFTA_SET_ELEM_LIST_SET, &set.name);
                },
                |m| {
                    if m.ty == msg_type(c::NFT_MSG_NEWSETELEM) {
                        decode::raw_elements(m, &mut raw);
                    }
                },
            )?;
            if raw.len() < STABLE_DUMP_MIN || set.flags.dynamic {
                break;
            }
            let keys = (raw.len(), keys_fingerprint(&raw));
            if previous == Some(keys) {
                break;
            }
            previous = Some(keys);
        }
        let mut elements = decode::fold_elements(set, raw, comments);
        elements.shrink_to_fit();
        Ok((elements, interrupted))
    }
}

/// An order-independent fingerprint of a read's element keys (each key hashed, the
/// hashes summed): two reads of a set that agree on it and on the count hold the same
/// keys, short of a 64-bit collision.
fn keys_fingerprint(raw: &[decode::RawElem]) -> u64 {
    use std::hash::BuildHasher;
    let h = std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default();
    raw.iter()
        .fold(0u64, |acc, e| acc.wrapping_add(h.hash_one(&e.key)))
}

impl NetlinkBackend {
    /// Element operations need their set's declaration (interval or not, types): fetches
    /// what the catalog lacks; a set that exists nowhere fails the first operation on it.
    fn know_sets(&mut self, tx: &Transaction) -> Result<(), BackendError> {
        let mut failures = Vec::new();
        for (t, s) in self.catalog.missing(tx) {
            match self.fetch_set(&t, &s)? {
                Some(shape) => self.catalog.insert(&t, &s, shape),
                None => {
                    let first = tx.ops.iter().position(|op| match op {
                        Op::AddElements { table, set, .. }
                        | Op::DeleteElements { table, set, .. } => *table == t && *set == s,
                        _ => false,
                    });
                    if let Some(index) = first {
                        failures.push(OpFailure {
                            index,
                            op: tx.ops[index].describe(),
                            errno: libc::ENOENT,
                        });
                    }
                }
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(BackendError::Rejected { failures })
        }
    }

    /// Sends an encoded transaction (`tx` may have been shed) and records what it did to
    /// set declarations.
    fn commit_encoded(
        &mut self,
        encoded: Result<Batch, encode::EncodeError>,
        tx: &Transaction,
    ) -> Result<ApplyReport, BackendError> {
        let batch = encoded.map_err(|e| BackendError::Rejected {
            failures: vec![OpFailure {
                index: e.index,
                op: format!("{}: {}", e.op, e.reason),
                errno: libc::EINVAL,
            }],
        })?;
        self.next_seq(batch.messages());
        // The kernel's NEWGEN names the sequence number of the batch's first message
        // after BATCH_BEGIN: how the watch tells kproxy's commits from others'.
        let pause = match &self.monitor {
            Some(m) => {
                m.sending(batch.first_seq().wrapping_add(1));
                batch.len_bytes() > monitor::PAUSE_ABOVE_BYTES && m.pause().is_ok()
            }
            None => false,
        };
        let sent = self.send(&batch, tx);
        if pause {
            if let Some(m) = &self.monitor {
                if let Err(e) = m.resume(sent.is_ok()) {
                    tracing::warn!(error = %e, "listening to nftables changes again failed");
                }
            }
        }
        sent?;
        self.catalog.apply(tx);
        Ok(ApplyReport {
            messages: batch.messages(),
            bytes: batch.len_bytes(),
        })
    }
}

impl Backend for NetlinkBackend {
    fn apply(&mut self, tx: &Transaction) -> Result<ApplyReport, BackendError> {
        if tx.is_empty() {
            return Ok(ApplyReport::default());
        }
        self.know_sets(tx)?;
        let encoded = encode_with(tx, &self.catalog, self.seq);
        self.commit_encoded(encoded, tx)
    }

    /// As `apply`, dropping each operation's payload once it is encoded: the sync's
    /// memory peak is the transaction and its batch, and this keeps only one of them.
    fn commit(&mut self, mut tx: Transaction) -> Result<ApplyReport, BackendError> {
        if tx.is_empty() {
            return Ok(ApplyReport::default());
        }
        self.know_sets(&tx)?;
        let encoded = encode_shedding(&mut tx, &self.catalog, self.seq);
        self.commit_encoded(encoded, &tx)
    }

    fn nft_generation(&mut self) -> Result<Option<u32>, BackendError> {
        self.generation().map(Some)
    }

    /// A consistent read of kproxy's tables. Any commit in the namespace moves the
    /// generation and marks a dump in progress interrupted, also a neighbour's commit to
    /// its own table, which leaves ours as they were: two reads in a row that agree are
    /// then as good as an undisturbed one. (Requiring an undisturbed read made every full
    /// sync fail while a neighbour committed more often than a dump takes: tests/soak.rs.)
    fn dump(&mut self) -> Result<Ruleset, BackendError> {
        self.dump_consistent(true)
    }

    fn dump_declarations(&mut self) -> Result<Ruleset, BackendError> {
        self.dump_consistent(false)
    }

    fn set_elements(&mut self, table: &TableRef, set: &Set) -> Result<Elements, BackendError> {
        if table.name != self.table {
            return Ok(Elements::default());
        }
        let mut comments = decode::Comments::default();
        // As for `dump`: an interrupted read that agrees with the one before it stands.
        let mut previous: Option<Vec<Element>> = None;
        for _ in 0..5 {
            match self.read_elements(table.family, set, &mut comments) {
                Ok((els, interrupted))
                    if !interrupted || previous.take().is_some_and(|p| p == els) =>
                {
                    let mut out = Elements::default();
                    out.extend(els);
                    return Ok(out);
                }
                Ok((els, _)) => previous = Some(els),
                Err(BackendError::Io(e)) if e.raw_os_error() == Some(libc::ENOENT) => {
                    return Ok(Elements::default())
                }
                Err(e) => return Err(e),
            }
        }
        Err(BackendError::Netlink(format!(
            "set {} kept changing while it was read",
            set.name
        )))
    }

    fn dump_objects(&mut self, objects: &Touched) -> Result<Ruleset, BackendError> {
        let rs = self.read_consistently(|b| b.objects_once(objects))?;
        for (family, set) in &objects.sets {
            let tr = TableRef::new(*family, self.table.clone());
            match rs
                .tables
                .iter()
                .find(|t| t.family == *family)
                .and_then(|t| t.sets.get(set))
            {
                Some(s) => self.catalog.insert(&tr, set, SetShape::of(s)),
                None => self.catalog.remove(&tr, set),
            }
        }
        Ok(rs)
    }

    fn watch(&mut self, wake: Waker) -> Result<bool, BackendError> {
        if self.monitor.is_none() {
            let port = self.sock.port_id()?;
            self.monitor = Some(Monitor::start(&self.table, port, wake)?);
        }
        Ok(true)
    }

    fn drift(&mut self) -> Option<Watched> {
        self.monitor.as_ref().map(Monitor::take)
    }
}

impl NetlinkBackend {
    /// A dump of both tables (with or without the sets' elements) during which the
    /// generation did not move and no dump was interrupted, or two in a row that agree
    /// (see `dump`); retried a few times.
    fn dump_consistent(&mut self, elements: bool) -> Result<Ruleset, BackendError> {
        let rs = self.read_consistently(|b| b.dump_once(elements))?;
        for f in [Family::V4, Family::V6] {
            self.catalog
                .remove_table(&TableRef::new(f, self.table.clone()));
        }
        for t in &rs.tables {
            let tr = TableRef::new(t.family, t.name.clone());
            for s in t.sets.values() {
                self.catalog.insert(&tr, &s.name, SetShape::of(s));
            }
        }
        Ok(rs)
    }
}

#[cfg(test)]
mod tests;
