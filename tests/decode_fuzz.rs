//! Decoder fuzzing (issue 13 item 6): bytes the kernel could send, and bytes it never
//! would, fed to the decoders of kproxy's read-back (`backend::netlink::decode_dump`: the
//! nf_tables dump → ruleset, through every per-message decoder: tables, chains, sets,
//! elements and their folding, rules and expressions) and of conntrack cleanup
//! (`conntrack::netlink::decode_dump`: a ctnetlink dump → UDP flows).
//!
//! Inputs: arbitrary bytes; and, more to the point, valid input mutated with knowledge of
//! its structure: encoded batches of rendered rulesets (every scenario under
//! rules/scenarios), a real kernel dump (`tests/data/nft-dump.bin`, taken from kernel
//! 6.18 by `kernel_dump_decodes_and_mutates`, which also mutates a live one when root), and
//! ctnetlink dump messages as the kernel writes them. Mutations: messages dropped,
//! repeated or swapped; attributes removed, repeated, retyped, emptied, cut short, grown,
//! overwritten with odd numbers or random bytes (lengths kept consistent, so the decoders
//! see well-framed garbage); then lengths of messages and attributes corrupted, bytes
//! flipped, the buffer cut anywhere.
//!
//! Checked: no panic; broken framing is an error, never a silently short result; the
//! memory a decode holds at its peak stays within a constant factor of the input;
//! decoding is deterministic; a mutation inside one message changes only the object that
//! message describes (a set, a chain with its rules, one flow).
//!
//! Cases: `PROPTEST_CASES` overrides the default count of each property (e.g.
//! `PROPTEST_CASES=100000 cargo test --release --test decode_fuzz`).

mod common;

use std::path::PathBuf;

use kproxy::backend::netlink::{decode_dump, encode, DecodeError};
use kproxy::conntrack::netlink::{decode_dump as ct_decode_dump, CtError, DecodedDump};
use kproxy::diff::{diff, DiffOptions};
use kproxy::k8s::manifests::load_paths;
use kproxy::model::build::{build, Settings};
use kproxy::model::Family;
use kproxy::nft::{Ruleset, Table};
use kproxy::render::render;
use kproxy::testutil::Counting;
use proptest::prelude::*;
use proptest::test_runner::Config as PtConfig;

#[global_allocator]
static ALLOC: Counting = Counting;

/// Cases per property: `PROPTEST_CASES`, else `default`.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

// ---------------------------------------------------------------------------------------
// Netlink structure: messages and attributes as a tree, and back to bytes
// ---------------------------------------------------------------------------------------

const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;
const NLA_F_NESTED: u16 = 0x8000;

#[derive(Clone, Debug, PartialEq)]
struct NlMsg {
    /// The netlink header (its length is rewritten on output).
    hdr: [u8; NLMSG_HDRLEN],
    /// The nfgenmsg (or whatever bytes stand there).
    fixed: Vec<u8>,
    attrs: Vec<Attr>,
}

#[derive(Clone, Debug, PartialEq)]
struct Attr {
    /// Type with flags.
    ty: u16,
    body: Body,
}

#[derive(Clone, Debug, PartialEq)]
enum Body {
    Raw(Vec<u8>),
    Nest(Vec<Attr>),
}

const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Attributes filling `buf` exactly, or `None` (then the caller keeps it raw). Nests are
/// recognised by shape (nf_tables does not always set `NLA_F_NESTED`): a payload that
/// parses whole as attributes is taken for a nest; either way it writes back the same.
fn parse_attrs(buf: &[u8], depth: usize) -> Option<Vec<Attr>> {
    let mut out = Vec::new();
    let mut off = 0;
    while off < buf.len() {
        let rest = &buf[off..];
        if rest.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
        let ty = u16::from_ne_bytes([rest[2], rest[3]]);
        if len < 4 || len > rest.len() {
            return None;
        }
        let payload = &rest[4..len];
        let body = match (depth < 6 && payload.len() >= 4)
            .then(|| parse_attrs(payload, depth + 1))
            .flatten()
        {
            Some(inner) if !inner.is_empty() => Body::Nest(inner),
            _ => Body::Raw(payload.to_vec()),
        };
        out.push(Attr { ty, body });
        off += align4(len);
        if off > buf.len() {
            return None; // padding missing inside a message
        }
    }
    Some(out)
}

/// The messages of a well-framed buffer (messages whose attributes do not parse keep
/// them as one raw attribute-less tail in `fixed`).
fn parse_msgs(buf: &[u8]) -> Vec<NlMsg> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + NLMSG_HDRLEN <= buf.len() {
        let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap()) as usize;
        if len < NLMSG_HDRLEN || off + len > buf.len() {
            break;
        }
        let hdr: [u8; NLMSG_HDRLEN] = buf[off..off + NLMSG_HDRLEN].try_into().unwrap();
        let payload = &buf[off + NLMSG_HDRLEN..off + len];
        let (fixed, attrs) = if payload.len() >= NFGENMSG_LEN {
            match parse_attrs(&payload[NFGENMSG_LEN..], 0) {
                Some(a) => (payload[..NFGENMSG_LEN].to_vec(), a),
                None => (payload.to_vec(), Vec::new()),
            }
        } else {
            (payload.to_vec(), Vec::new())
        };
        out.push(NlMsg { hdr, fixed, attrs });
        off += align4(len);
    }
    out
}

/// Offsets of what a raw mutation can corrupt in the written bytes.
#[derive(Default)]
struct Layout {
    msg_len_at: Vec<usize>,
    attr_len_at: Vec<usize>,
}

fn write_attrs(out: &mut Vec<u8>, attrs: &[Attr], layout: &mut Layout) {
    for a in attrs {
        let start = out.len();
        layout.attr_len_at.push(start);
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&a.ty.to_ne_bytes());
        match &a.body {
            Body::Raw(v) => out.extend_from_slice(v),
            Body::Nest(inner) => write_attrs(out, inner, layout),
        }
        // An attribute longer than its 16-bit length field can say is cut there.
        let len = (out.len() - start).min(u16::MAX as usize & !3);
        out.truncate(start + len);
        out[start..start + 2].copy_from_slice(&(len as u16).to_ne_bytes());
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
    }
}

fn write_msgs(msgs: &[NlMsg]) -> (Vec<u8>, Layout) {
    let mut out = Vec::new();
    let mut layout = Layout::default();
    for m in msgs {
        let start = out.len();
        layout.msg_len_at.push(start);
        out.extend_from_slice(&m.hdr);
        out.extend_from_slice(&m.fixed);
        write_attrs(&mut out, &m.attrs, &mut layout);
        let len = (out.len() - start) as u32;
        out[start..start + 4].copy_from_slice(&len.to_ne_bytes());
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
    }
    (out, layout)
}

// ---------------------------------------------------------------------------------------
// Mutations
// ---------------------------------------------------------------------------------------

/// Payloads worth trying where a number or a string is expected.
fn odd_payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(vec![]),
        Just(vec![0]),
        Just(0u32.to_be_bytes().to_vec()),
        Just(1u32.to_be_bytes().to_vec()),
        Just(u32::MAX.to_be_bytes().to_vec()),
        Just(0x8000_0000u32.to_be_bytes().to_vec()),
        Just(0x8000_0000u32.to_ne_bytes().to_vec()),
        Just(65535u32.to_be_bytes().to_vec()),
        Just(u64::MAX.to_be_bytes().to_vec()),
        Just(b"kproxy\0".to_vec()),
        Just(b"no-nul".to_vec()),
        Just(vec![0xff; 17]),
        Just(vec![0xc3, 0x28, 0]),
        prop::collection::vec(any::<u8>(), 0..40),
    ]
}

#[derive(Clone, Debug)]
enum AttrOp {
    Remove,
    Duplicate,
    Retype(u16),
    Replace(Vec<u8>),
    Cut(usize),
    Grow(Vec<u8>),
    Flip(usize, u8),
    /// A nest's children shuffled: reversed.
    Reverse,
}

fn attr_op() -> impl Strategy<Value = AttrOp> {
    prop_oneof![
        Just(AttrOp::Remove),
        Just(AttrOp::Duplicate),
        prop_oneof![
            any::<u16>(),
            (0u16..20),
            (0u16..20).prop_map(|t| t | NLA_F_NESTED)
        ]
        .prop_map(AttrOp::Retype),
        odd_payload().prop_map(AttrOp::Replace),
        any::<usize>().prop_map(AttrOp::Cut),
        prop::collection::vec(any::<u8>(), 1..12).prop_map(AttrOp::Grow),
        (any::<usize>(), 1u8..=255).prop_map(|(at, x)| AttrOp::Flip(at, x)),
        Just(AttrOp::Reverse),
    ]
}

/// One change to the tree: to an attribute (by its place in a walk over every
/// attribute of every message) or to the list of messages.
#[derive(Clone, Debug)]
enum TreeOp {
    Attr(usize, AttrOp),
    DropMsg(usize),
    DupMsg(usize),
    SwapMsgs(usize, usize),
    MsgType(usize, u16),
    MsgFamily(usize, u8),
    /// What follows the header (the nfgenmsg, or NLMSG_ERROR's and NLMSG_DONE's error
    /// code) overwritten.
    Fixed(usize, Vec<u8>),
}

/// A change to the written bytes: framing breaks.
#[derive(Clone, Debug)]
enum RawOp {
    MsgLen(usize, u32),
    AttrLen(usize, u16),
    Flip(usize, u8),
    Truncate(usize),
    Append(Vec<u8>),
}

fn tree_op() -> impl Strategy<Value = TreeOp> {
    prop_oneof![
        8 => (any::<usize>(), attr_op()).prop_map(|(i, op)| TreeOp::Attr(i, op)),
        1 => any::<usize>().prop_map(TreeOp::DropMsg),
        1 => any::<usize>().prop_map(TreeOp::DupMsg),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(a, b)| TreeOp::SwapMsgs(a, b)),
        1 => (any::<usize>(), any::<u16>()).prop_map(|(i, t)| TreeOp::MsgType(i, t)),
        1 => (any::<usize>(), prop_oneof![Just(2u8), Just(10), Just(0), Just(1), any::<u8>()])
            .prop_map(|(i, f)| TreeOp::MsgFamily(i, f)),
        1 => (any::<usize>(), odd_payload()).prop_map(|(i, v)| TreeOp::Fixed(i, v)),
    ]
}

fn raw_op() -> impl Strategy<Value = RawOp> {
    let len32 = prop_oneof![
        Just(0u32),
        Just(15),
        Just(16),
        Just(17),
        Just(u32::MAX),
        Just(0x8000_0000),
        any::<u32>()
    ];
    let len16 = prop_oneof![
        Just(0u16),
        Just(3),
        Just(4),
        Just(5),
        Just(u16::MAX),
        any::<u16>()
    ];
    prop_oneof![
        (any::<usize>(), len32).prop_map(|(i, l)| RawOp::MsgLen(i, l)),
        (any::<usize>(), len16).prop_map(|(i, l)| RawOp::AttrLen(i, l)),
        (any::<usize>(), 1u8..=255).prop_map(|(i, x)| RawOp::Flip(i, x)),
        any::<usize>().prop_map(RawOp::Truncate),
        prop::collection::vec(any::<u8>(), 1..24).prop_map(RawOp::Append),
    ]
}

/// Every attribute of every message as `(message, path of indexes from the message's
/// attribute list down)`, in a pre-order walk.
fn attr_paths(msgs: &[NlMsg]) -> Vec<(usize, Vec<usize>)> {
    fn walk(
        attrs: &[Attr],
        prefix: &mut Vec<usize>,
        mi: usize,
        out: &mut Vec<(usize, Vec<usize>)>,
    ) {
        for (i, a) in attrs.iter().enumerate() {
            prefix.push(i);
            out.push((mi, prefix.clone()));
            if let Body::Nest(inner) = &a.body {
                walk(inner, prefix, mi, out);
            }
            prefix.pop();
        }
    }
    let mut out = Vec::new();
    for (mi, m) in msgs.iter().enumerate() {
        walk(&m.attrs, &mut Vec::new(), mi, &mut out);
    }
    out
}

/// Applies `op` to attribute `k` (of [`attr_paths`], modulo their number); returns its
/// message and whether it was nested (not one of the message's own attributes, which
/// name what the message describes).
fn with_attr(msgs: &mut [NlMsg], k: usize, op: &AttrOp) -> Option<(usize, bool)> {
    let paths = attr_paths(msgs);
    if paths.is_empty() {
        return None;
    }
    let (mi, path) = &paths[k % paths.len()];
    let (last, parents) = path.split_last().expect("non-empty path");
    let mut attrs = &mut msgs[*mi].attrs;
    for i in parents {
        attrs = match &mut attrs[*i].body {
            Body::Nest(inner) => inner,
            Body::Raw(_) => unreachable!("a path goes through nests"),
        };
    }
    apply_attr_op(attrs, *last, op);
    Some((*mi, !parents.is_empty()))
}

fn apply_attr_op(attrs: &mut Vec<Attr>, i: usize, op: &AttrOp) {
    match op {
        AttrOp::Remove => {
            attrs.remove(i);
        }
        AttrOp::Duplicate => {
            let a = attrs[i].clone();
            attrs.insert(i, a);
        }
        AttrOp::Retype(t) => attrs[i].ty = *t,
        AttrOp::Replace(v) => attrs[i].body = Body::Raw(v.clone()),
        AttrOp::Cut(n) => {
            let mut raw = Vec::new();
            let mut l = Layout::default();
            write_attrs(&mut raw, std::slice::from_ref(&attrs[i]), &mut l);
            let payload = raw[4..].to_vec();
            let keep = n % (payload.len() + 1);
            attrs[i].body = Body::Raw(payload[..keep].to_vec());
        }
        AttrOp::Grow(extra) => match &mut attrs[i].body {
            Body::Raw(v) => v.extend_from_slice(extra),
            Body::Nest(inner) => inner.push(Attr {
                ty: extra[0] as u16,
                body: Body::Raw(extra[1..].to_vec()),
            }),
        },
        AttrOp::Flip(at, x) => {
            if let Body::Raw(v) = &mut attrs[i].body {
                if !v.is_empty() {
                    let at = at % v.len();
                    v[at] ^= x;
                }
            }
        }
        AttrOp::Reverse => {
            if let Body::Nest(inner) = &mut attrs[i].body {
                inner.reverse();
            }
        }
    }
}

/// What a list of tree operations touched: the one message all attribute changes were
/// in, if they were all nested (then nothing of the message's identity changed).
fn apply_tree_ops(msgs: &mut Vec<NlMsg>, ops: &[TreeOp]) -> Option<usize> {
    let mut only: Option<Option<usize>> = None;
    let note = |only: &mut Option<Option<usize>>, m: Option<usize>| {
        *only = Some(match (*only, m) {
            (None, m) => m,
            (Some(Some(a)), Some(b)) if a == b => Some(a),
            _ => None,
        });
    };
    for op in ops {
        match op {
            TreeOp::Attr(k, aop) => match with_attr(msgs, *k, aop) {
                Some((mi, true)) => note(&mut only, Some(mi)),
                Some((_, false)) => note(&mut only, None),
                None => {}
            },
            _ if msgs.is_empty() => {}
            TreeOp::DropMsg(i) => {
                msgs.remove(i % msgs.len());
                note(&mut only, None);
            }
            TreeOp::DupMsg(i) => {
                let m = msgs[i % msgs.len()].clone();
                msgs.insert(i % msgs.len(), m);
                note(&mut only, None);
            }
            TreeOp::SwapMsgs(a, b) => {
                let n = msgs.len();
                msgs.swap(a % n, b % n);
                note(&mut only, None);
            }
            TreeOp::MsgType(i, t) => {
                let n = msgs.len();
                msgs[i % n].hdr[4..6].copy_from_slice(&t.to_ne_bytes());
                note(&mut only, None);
            }
            TreeOp::Fixed(i, v) => {
                let n = msgs.len();
                msgs[i % n].fixed = v.clone();
                note(&mut only, None);
            }
            TreeOp::MsgFamily(i, f) => {
                let n = msgs.len();
                if let Some(b) = msgs[i % n].fixed.first_mut() {
                    *b = *f;
                }
                note(&mut only, None);
            }
        }
    }
    only.flatten()
}

fn apply_raw_ops(buf: &mut Vec<u8>, layout: &Layout, ops: &[RawOp]) {
    for op in ops {
        match op {
            RawOp::MsgLen(i, l) if !layout.msg_len_at.is_empty() => {
                let at = layout.msg_len_at[i % layout.msg_len_at.len()];
                if at + 4 <= buf.len() {
                    buf[at..at + 4].copy_from_slice(&l.to_ne_bytes());
                }
            }
            RawOp::AttrLen(i, l) if !layout.attr_len_at.is_empty() => {
                let at = layout.attr_len_at[i % layout.attr_len_at.len()];
                if at + 2 <= buf.len() {
                    buf[at..at + 2].copy_from_slice(&l.to_ne_bytes());
                }
            }
            RawOp::Flip(i, x) if !buf.is_empty() => {
                let at = i % buf.len();
                buf[at] ^= x;
            }
            RawOp::Truncate(n) => {
                let keep = n % (buf.len() + 1);
                buf.truncate(keep);
            }
            RawOp::Append(v) => buf.extend_from_slice(v),
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------------------
// nf_tables input
// ---------------------------------------------------------------------------------------

fn settings() -> Settings {
    Settings {
        hostname: "node-a".into(),
        cluster_cidrs: vec![
            "10.244.0.0/16".parse().unwrap(),
            "10.245.0.0/16".parse().unwrap(),
            "fd00:244::/48".parse().unwrap(),
        ],
        ..Settings::default()
    }
}

/// Every scenario's ruleset (every kind of set, element, chain and statement kproxy
/// writes), and a synthetic cluster with session affinity.
fn rulesets() -> Vec<Ruleset> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("rules/scenarios");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("rules/scenarios")
        .map(|e| e.unwrap().path().join("manifests.yaml"))
        .filter(|p| p.exists())
        .collect();
    dirs.sort();
    let mut out: Vec<Ruleset> = dirs
        .iter()
        .map(|p| {
            let loaded = load_paths(std::slice::from_ref(p)).expect("scenario");
            render(&build(&loaded.objects, &settings()).0)
        })
        .collect();
    let o = kproxy::testutil::synthetic_cluster_mix(6, 3, 2);
    out.push(render(
        &build(&o, &kproxy::testutil::synthetic_settings()).0,
    ));
    out
}

/// `rs` as one batch of messages, back to back.
fn encoded(rs: &Ruleset) -> Vec<u8> {
    let tx = diff(&Ruleset::default(), rs, &DiffOptions::default()).tx;
    encode(&tx).expect("encodes").pages().concat()
}

/// A dump kernel 6.18 gave for the `external` and `affinity` scenarios (see
/// `kernel_dump_decodes_and_mutates`).
const KERNEL_DUMP: &[u8] = include_bytes!("data/nft-dump.bin");

/// The valid inputs mutations start from.
fn nft_corpus() -> &'static [Vec<u8>] {
    static CORPUS: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
    CORPUS.get_or_init(|| {
        let mut c: Vec<Vec<u8>> = rulesets().iter().map(encoded).collect();
        c.push(KERNEL_DUMP.to_vec());
        c
    })
}

/// `decode(buf)`, checking that the most memory it held at once stays within
/// `factor` × the input + `slack` bytes: no allocation the input does not pay for.
fn bounded<T>(buf: &[u8], factor: isize, slack: isize, decode: impl FnOnce(&[u8]) -> T) -> T {
    let before = Counting::thread_live();
    Counting::reset_thread_peak();
    let out = decode(buf);
    let held = Counting::thread_peak() - before;
    let bound = factor * buf.len() as isize + slack;
    assert!(
        held <= bound,
        "decoding {} bytes held {held} bytes at its peak (bound {bound})",
        buf.len()
    );
    out
}

/// [`decode_dump`], [`bounded`].
fn decode_checked(buf: &[u8]) -> Result<Ruleset, DecodeError> {
    bounded(buf, 64, 1 << 20, decode_dump)
}

/// Tables equal except the chains and sets named in `except`.
fn equal_except(a: &Ruleset, b: &Ruleset, except: &[String]) -> Result<(), String> {
    let key = |t: &Table| (t.family, t.name.clone());
    let mut ka: Vec<_> = a.tables.iter().map(key).collect();
    let mut kb: Vec<_> = b.tables.iter().map(key).collect();
    ka.sort();
    kb.sort();
    if ka != kb {
        return Err(format!("tables {ka:?} became {kb:?}"));
    }
    for t in &a.tables {
        let u = b
            .tables
            .iter()
            .find(|u| key(u) == key(t))
            .expect("same tables");
        if t.comment != u.comment {
            return Err(format!("table {} comment changed", t.name));
        }
        let names = |t: &Table| -> Vec<String> {
            t.chains
                .keys()
                .chain(t.sets.keys())
                .filter(|n| !except.contains(n))
                .cloned()
                .collect()
        };
        if names(t) != names(u) {
            return Err(format!("objects of {} changed", t.name));
        }
        for (n, c) in &t.chains {
            if !except.contains(n) && u.chains.get(n) != Some(c) {
                return Err(format!("chain {n} changed"));
            }
        }
        for (n, s) in &t.sets {
            if !except.contains(n) && u.sets.get(n) != Some(s) {
                return Err(format!("set {n} changed"));
            }
        }
    }
    Ok(())
}

/// The names of the chain or set a message describes (NEWCHAIN: 3, NEWRULE: 2,
/// NEWSET: 2, NEWSETELEM: 2 hold the name; type 1 the table).
fn object_of(m: &NlMsg) -> Vec<String> {
    let ty = u16::from_ne_bytes([m.hdr[4], m.hdr[5]]) & 0xff;
    let attr = match ty {
        3 => 3,
        6 | 9 | 12 => 2,
        _ => return Vec::new(),
    };
    m.attrs
        .iter()
        .filter(|a| a.ty & 0x3fff == attr)
        .filter_map(|a| match &a.body {
            Body::Raw(v) => {
                let end = v.iter().position(|b| *b == 0).unwrap_or(v.len());
                Some(String::from_utf8_lossy(&v[..end]).into_owned())
            }
            Body::Nest(_) => None,
        })
        .collect()
}

fn check_nft(base: &[u8], tree: &[TreeOp], raw: &[RawOp]) -> Result<(), TestCaseError> {
    let original = decode_checked(base).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let mut msgs = parse_msgs(base);
    let only = apply_tree_ops(&mut msgs, tree);
    let (mut buf, layout) = write_msgs(&msgs);
    // Well framed after tree operations: decoded, and a change inside one message
    // changes only what that message describes.
    let decoded = decode_checked(&buf);
    prop_assert!(decoded.is_ok(), "well-framed input refused: {:?}", decoded);
    let decoded = decoded.unwrap();
    prop_assert_eq!(&decoded, &decode_dump(&buf).unwrap(), "deterministic");
    if let Some(mi) = only {
        let except = object_of(&msgs[mi]);
        if let Err(e) = equal_except(&original, &decoded, &except) {
            return Err(TestCaseError::fail(format!(
                "a change inside message {mi} (of {except:?}) changed something else: {e}"
            )));
        }
    }
    // Raw corruption: an error or a ruleset, never a panic.
    apply_raw_ops(&mut buf, &layout, raw);
    match decode_checked(&buf) {
        Ok(_) | Err(DecodeError::Framing { .. }) => {}
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// ctnetlink input
// ---------------------------------------------------------------------------------------

const CT_SEQ: u32 = 77;

fn nla(out: &mut Vec<u8>, ty: u16, payload: &[u8]) {
    out.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(payload);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

fn nest(out: &mut Vec<u8>, ty: u16, f: impl FnOnce(&mut Vec<u8>)) {
    let mut inner = Vec::new();
    f(&mut inner);
    nla(out, ty | NLA_F_NESTED, &inner);
}

fn nlmsg(out: &mut Vec<u8>, ty: u16, flags: u16, family: u8, body: &[u8]) {
    let len = (NLMSG_HDRLEN + NFGENMSG_LEN + body.len()) as u32;
    out.extend_from_slice(&len.to_ne_bytes());
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&CT_SEQ.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(&[family, 0, 0, 0]);
    out.extend_from_slice(body);
}

#[derive(Clone, Debug)]
struct GenFlow {
    proto: u8,
    addrs: [u8; 4],
    ports: (u16, u16),
    zone: Option<u16>,
    id: u32,
}

/// A dump reply as the kernel writes one (IPCTNL_MSG_CT_NEW, NLM_F_MULTI, with the
/// attributes kproxy does not read too), then NLMSG_DONE.
fn ct_dump(flows: &[GenFlow], v6: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for f in flows {
        let mut body = Vec::new();
        let tuple = |b: &mut Vec<u8>, ty: u16, swap: bool| {
            nest(b, ty, |t| {
                nest(t, 1, |ip| {
                    let (s, d) = if swap {
                        (f.addrs[1], f.addrs[0])
                    } else {
                        (f.addrs[0], f.addrs[1])
                    };
                    if v6 {
                        let a = |x: u8| {
                            let mut v = [0u8; 16];
                            v[0] = 0xfd;
                            v[15] = x;
                            v
                        };
                        nla(ip, 3, &a(s));
                        nla(ip, 4, &a(d));
                    } else {
                        nla(ip, 1, &[10, 0, f.addrs[2], s]);
                        nla(ip, 2, &[10, 0, f.addrs[3], d]);
                    }
                });
                nest(t, 2, |p| {
                    nla(p, 1, &[f.proto]);
                    let (sp, dp) = if swap {
                        (f.ports.1, f.ports.0)
                    } else {
                        f.ports
                    };
                    nla(p, 2, &sp.to_be_bytes());
                    nla(p, 3, &dp.to_be_bytes());
                });
                if let Some(z) = f.zone {
                    nla(t, 3, &z.to_be_bytes());
                }
            });
        };
        tuple(&mut body, 1, false);
        tuple(&mut body, 2, true);
        nla(&mut body, 3, &0x188u32.to_be_bytes()); // CTA_STATUS
        nla(&mut body, 7, &30u32.to_be_bytes()); // CTA_TIMEOUT
        nla(&mut body, 8, &0u32.to_be_bytes()); // CTA_MARK
        nla(&mut body, 12, &f.id.to_be_bytes()); // CTA_ID
        nla(&mut body, 11, &1u32.to_be_bytes()); // CTA_USE
        if let Some(z) = f.zone {
            nla(&mut body, 18, &z.to_be_bytes());
        }
        nest(&mut body, 4, |p| nla(p, 1, &[0; 8])); // CTA_PROTOINFO
        let family = if v6 { 10 } else { 2 };
        nlmsg(&mut out, 1 << 8, 0x2, family, &body);
    }
    // NLMSG_DONE: the header and the dump's result (0), no nfgenmsg.
    out.extend_from_slice(&((NLMSG_HDRLEN + 4) as u32).to_ne_bytes());
    out.extend_from_slice(&3u16.to_ne_bytes());
    out.extend_from_slice(&0x2u16.to_ne_bytes());
    out.extend_from_slice(&CT_SEQ.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(&0i32.to_ne_bytes());
    out
}

fn gen_flow() -> impl Strategy<Value = GenFlow> {
    (
        prop_oneof![4 => Just(17u8), 1 => Just(6u8), 1 => any::<u8>()],
        any::<[u8; 4]>(),
        (any::<u16>(), any::<u16>()),
        prop::option::weighted(0.2, any::<u16>()),
        any::<u32>(),
    )
        .prop_map(|(proto, addrs, ports, zone, id)| GenFlow {
            proto,
            addrs,
            ports,
            zone,
            id,
        })
}

/// The ctnetlink `decode_dump`, [`bounded`].
fn ct_decode(buf: &[u8], family: Family) -> Result<DecodedDump, CtError> {
    bounded(buf, 16, 1 << 16, |b| ct_decode_dump(b, CT_SEQ, family))
}

fn check_ct(
    base: &[u8],
    family: Family,
    tree: &[TreeOp],
    raw: &[RawOp],
) -> Result<(), TestCaseError> {
    let DecodedDump { flows: orig, end } =
        ct_decode(base, family).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(end, Some(Ok(())));
    let mut msgs = parse_msgs(base);
    let only = apply_tree_ops(&mut msgs, tree);
    let (mut buf, layout) = write_msgs(&msgs);
    let r = ct_decode(&buf, family);
    prop_assert!(r.is_ok(), "well-framed input refused: {:?}", r);
    let flows = r.unwrap().flows;
    if only.is_some() {
        // One message changed inside: at most its flow differs.
        let missing = orig.iter().filter(|f| !flows.contains(f)).count();
        let extra = flows.iter().filter(|f| !orig.contains(f)).count();
        prop_assert!(
            missing <= 1 && extra <= 1,
            "{} flows lost, {} gained",
            missing,
            extra
        );
    }
    apply_raw_ops(&mut buf, &layout, raw);
    match ct_decode(&buf, family) {
        Ok(_) | Err(CtError::Malformed { .. }) => {}
        Err(e) => return Err(TestCaseError::fail(format!("unexpected error {e}"))),
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------

#[test]
fn valid_input_decodes_to_what_was_encoded() {
    for rs in rulesets() {
        let back = decode_dump(&encoded(&rs)).expect("decodes");
        let rest = diff(&back, &rs, &DiffOptions::default()).tx;
        assert!(
            rest.is_empty(),
            "decoded batch differs: {} ops",
            rest.ops.len()
        );
    }
    let back = decode_dump(KERNEL_DUMP).expect("the kernel's dump decodes");
    assert_eq!(back.tables.len(), 2, "both families");
    assert!(back
        .tables
        .iter()
        .all(|t| !t.chains.is_empty() && !t.sets.is_empty()));
}

#[test]
fn broken_framing_is_an_error() {
    let buf = encoded(&rulesets()[0]);
    for cut in [1, 3, 15, 17, buf.len() / 2 + 1] {
        let r = decode_dump(&buf[..buf.len() - cut]);
        assert!(
            matches!(r, Err(DecodeError::Framing { .. })),
            "cut {cut}: {r:?}"
        );
    }
    let mut bad = buf.clone();
    bad[0..4].copy_from_slice(&u32::MAX.to_ne_bytes());
    assert_eq!(
        decode_dump(&bad),
        Err(DecodeError::Framing {
            offset: 0,
            len: bad.len()
        })
    );
}

proptest! {
    #![proptest_config(PtConfig { cases: cases(256), ..PtConfig::default() })]

    #[test]
    fn nft_decoder_takes_arbitrary_bytes(buf in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = decode_checked(&buf);
    }

    /// Arbitrary bytes behind a valid header, and arbitrary attributes in valid framing.
    #[test]
    fn nft_decoder_takes_arbitrary_attributes(
        ty in prop_oneof![0u16..16, any::<u16>()].prop_map(|t| (10 << 8) | (t & 0xff)),
        family in prop_oneof![Just(2u8), Just(10u8), any::<u8>()],
        attrs in prop::collection::vec((0u16..24, odd_payload()), 0..12),
    ) {
        let mut body = Vec::new();
        for (t, p) in &attrs {
            nla(&mut body, *t, p);
        }
        let mut buf = Vec::new();
        nlmsg(&mut buf, ty, 0x2, family, &body);
        prop_assert!(decode_checked(&buf).is_ok());
    }

    #[test]
    fn nft_decoder_takes_mutated_batches_and_dumps(
        which in any::<usize>(),
        tree in prop::collection::vec(tree_op(), 0..6),
        raw in prop::collection::vec(raw_op(), 0..3),
    ) {
        let corpus = nft_corpus();
        let base = &corpus[which % corpus.len()];
        check_nft(base, &tree, &raw)?;
    }

    #[test]
    fn ct_decoder_takes_arbitrary_bytes(buf in prop::collection::vec(any::<u8>(), 0..1024), v6 in any::<bool>()) {
        let family = if v6 { Family::V6 } else { Family::V4 };
        match ct_decode(&buf, family) {
            Ok(_) | Err(CtError::Malformed { .. }) => {}
            Err(e) => prop_assert!(false, "unexpected error {}", e),
        }
    }

    #[test]
    fn ct_decoder_takes_mutated_dumps(
        flows in prop::collection::vec(gen_flow(), 0..8),
        v6 in any::<bool>(),
        tree in prop::collection::vec(tree_op(), 0..6),
        raw in prop::collection::vec(raw_op(), 0..3),
    ) {
        let family = if v6 { Family::V6 } else { Family::V4 };
        let base = ct_dump(&flows, v6);
        let decoded = ct_decode(&base, family)
            .map_err(|e| TestCaseError::fail(e.to_string()))?
            .flows;
        // Exactly the UDP flows.
        let want = flows.iter().filter(|f| f.proto == 17).count();
        prop_assert_eq!(decoded.len(), want);
        check_ct(&base, family, &tree, &raw)?;
    }
}

// ---------------------------------------------------------------------------------------
// Kernel tier
// ---------------------------------------------------------------------------------------

/// A dump of a real kernel decodes to what was committed, and mutated it is still read
/// without a panic. With `KPROXY_WRITE_DUMP=1` it rewrites `tests/data/nft-dump.bin`.
#[test]
fn kernel_dump_decodes_and_mutates() {
    if !common::kernel_tests_enabled("kernel_dump_decodes_and_mutates") {
        return;
    }
    use kproxy::backend::netlink::NetlinkBackend;
    use kproxy::backend::Backend;
    use kproxy::testutil::Netns;
    let all = rulesets();
    let pick = |name: &str| -> Ruleset {
        let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("rules/scenarios")
            .join(name)
            .join("manifests.yaml");
        let loaded = load_paths(&[p]).expect("scenario");
        render(&build(&loaded.objects, &settings()).0)
    };
    // `external` (LB source ranges: concatenated interval sets) and `affinity`.
    let mut rs = pick("external");
    for (t, a) in rs.tables.iter_mut().zip(pick("affinity").tables) {
        for (n, c) in a.chains {
            t.chains.entry(n).or_insert(c);
        }
        for (n, s) in a.sets {
            t.sets.entry(n).or_insert(s);
        }
    }
    drop(all);
    let ns = Netns::new("decfz");
    let want = rs.clone();
    let raw = ns.run_in(move || {
        let mut b = NetlinkBackend::new("kproxy").expect("netlink socket");
        let tx = diff(&Ruleset::default(), &want, &DiffOptions::default()).tx;
        b.apply(&tx).expect("commit");
        b.dump_raw().expect("dump")
    });
    let back = decode_dump(&raw).expect("decodes");
    let rest = diff(&back, &rs, &DiffOptions::default()).tx;
    assert!(
        rest.is_empty(),
        "kernel dump decodes differently: {} ops",
        rest.ops.len()
    );
    if std::env::var_os("KPROXY_WRITE_DUMP").is_some() {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/nft-dump.bin");
        std::fs::write(&path, &raw).expect("write the dump");
    }
    let mut runner = proptest::test_runner::TestRunner::new(PtConfig {
        cases: cases(256),
        failure_persistence: None,
        ..PtConfig::default()
    });
    let strategy = (
        prop::collection::vec(tree_op(), 0..6),
        prop::collection::vec(raw_op(), 0..3),
    );
    runner
        .run(&strategy, |(tree, raw_ops)| {
            check_nft(&raw, &tree, &raw_ops)
        })
        .unwrap();
}
