//! The byte comparison of issue 11: the live encoder ([`super::encode_with`]) against the
//! frozen hand-written writer ([`super::reference`]) on every scenario under rules/
//! (from an empty kernel, and each reviewed change of rules/diff from its base), a
//! generated 10k × 10 cluster, every-operation-and-statement transaction of the encoder
//! tests, and two mixed incremental transactions (the daemon's partial sync, and a full
//! re-render against a kernel holding an extra table).
//!
//! Where the batches differ, they are compared in a canonical form (messages in order;
//! header fields; attributes as a tree, sorted by type within each nest, list entries'
//! nest types normalised) and every raw difference is put in a category (message type,
//! attribute path, what differs), which must be exactly the [`EXPLAINED`] list. In a
//! network namespace (root), each batch is committed by a kernel, the reference's in one
//! namespace and the live encoder's in another, and `nft list ruleset` (text and JSON) of
//! the two must be equal whatever the bytes.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::reference;
use crate::diff::{diff, DiffOptions};
use crate::model::{self, Objects, ServiceKey};
use crate::nft::tx::{Op, Transaction};
use crate::nft::{Family, Ruleset};
use crate::render::{self, Renderer};

/// Raw differences between the reference and the live encoder that are understood, with
/// the reason: `(category as the differ names it, why)`. The test fails when a category
/// is found that is not here, or one here is not found. Attribute order: the kernel parses
/// each nest into a table indexed by type (`nla_parse_nested`), so order never matters to
/// it; libnftnl's payload builders write attributes in a fixed order of their own,
/// whatever order they were set in.
const EXPLAINED: &[(&str, &str)] = &[
    (
        "NEWCHAIN /: attribute order",
        "nftnl_chain_nlmsg_build_payload writes TABLE, NAME, HOOK, POLICY, TYPE (USERDATA last \
         in both); the old writer TABLE, NAME, TYPE, POLICY, HOOK",
    ),
    (
        "NEWRULE /: attribute order",
        "nftnl_rule_nlmsg_build_payload writes USERDATA before the EXPRESSIONS nest; the old \
         writer after it",
    ),
    (
        "NEWRULE /4/*[dynset]/2: attribute order",
        "nftnl_expr_dynset_build writes SREG_KEY, SREG_DATA, OP, TIMEOUT, SET_NAME, SET_ID; \
         the old writer TIMEOUT last",
    ),
    (
        "NEWSETELEM /: attribute order",
        "nftnl_set_elem_nlmsg_build_def writes LIST_SET, LIST_SET_ID, LIST_TABLE (then the \
         ELEMENTS nest); the old writer LIST_TABLE, LIST_SET, LIST_SET_ID",
    ),
    (
        "DELSETELEM /: attribute order",
        "as NEWSETELEM: LIST_SET, LIST_TABLE, ELEMENTS from libnftnl, LIST_TABLE first from \
         the old writer",
    ),
];

// ---------------------------------------------------------------------------------------
// Parsing: messages and attribute trees.

const NLA_F_NESTED: u16 = 0x8000;
const NLA_FLAGS: u16 = 0xc000;

/// One attribute: its type (without flags), its flag bits, and either bytes or children.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Node {
    ty: u16,
    flags: u16,
    body: Body,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Body {
    Leaf(Vec<u8>),
    Nest(Vec<Node>),
    /// Bytes that do not parse as attributes (a truncated or overlong TLV), as found.
    Malformed(Vec<u8>),
}

/// One message: header fields, the nfgenmsg and the attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Msg {
    ty: u16,
    flags: u16,
    seq: u32,
    port: u32,
    family: u8,
    version: u8,
    res_id: u16,
    attrs: Vec<Node>,
    /// The message's bytes (of all its parts, for a merged element message).
    raw: Vec<u8>,
    /// How many messages of the batch this one is (element messages of one operation
    /// merged: [`logical`]).
    parts: usize,
}

fn parse_attrs(mut buf: &[u8]) -> Vec<Node> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        if buf.len() < 4 {
            out.push(Node {
                ty: 0,
                flags: 0,
                body: Body::Malformed(buf.to_vec()),
            });
            break;
        }
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let raw_ty = u16::from_ne_bytes([buf[2], buf[3]]);
        if len < 4 || len > buf.len() {
            out.push(Node {
                ty: raw_ty & !NLA_FLAGS,
                flags: raw_ty & NLA_FLAGS,
                body: Body::Malformed(buf.to_vec()),
            });
            break;
        }
        let data = &buf[4..len];
        let body = if raw_ty & NLA_F_NESTED != 0 {
            Body::Nest(parse_attrs(data))
        } else {
            Body::Leaf(data.to_vec())
        };
        out.push(Node {
            ty: raw_ty & !NLA_FLAGS,
            flags: raw_ty & NLA_FLAGS,
            body,
        });
        buf = &buf[((len + 3) & !3).min(buf.len())..];
    }
    out
}

/// The messages of a batch; trailing bytes that are not a whole message are an error.
fn parse_batch(buf: &[u8]) -> Result<Vec<Msg>, String> {
    let mut out = Vec::new();
    let mut off = 0;
    while off < buf.len() {
        let rest = &buf[off..];
        if rest.len() < 20 {
            return Err(format!("{} stray bytes at offset {off}", rest.len()));
        }
        let len = u32::from_ne_bytes(rest[0..4].try_into().unwrap()) as usize;
        if len < 20 || len > rest.len() {
            return Err(format!("bad message length {len} at offset {off}"));
        }
        let m = &rest[..len];
        out.push(Msg {
            ty: u16::from_ne_bytes([m[4], m[5]]),
            flags: u16::from_ne_bytes([m[6], m[7]]),
            seq: u32::from_ne_bytes(m[8..12].try_into().unwrap()),
            port: u32::from_ne_bytes(m[12..16].try_into().unwrap()),
            family: m[16],
            version: m[17],
            res_id: u16::from_be_bytes([m[18], m[19]]),
            attrs: parse_attrs(&m[20..]),
            raw: rest[..((len + 3) & !3).min(rest.len())].to_vec(),
            parts: 1,
        });
        off += (len + 3) & !3;
    }
    Ok(out)
}

/// Whether the nest at `path` (attribute types from the message's top level) of a message
/// of type `ty` is a list, whose entries keep their order and whose entries' nest types
/// (`NFTA_LIST_ELEM` for us, 1, 2, 3, … for libnftnl's set elements) do not matter: rule
/// expressions, set elements, and the fields of a concatenated set key.
fn is_list(ty: u16, path: &[u16]) -> bool {
    const NEWRULE: u16 = (10 << 8) | 6;
    const NEWSET: u16 = (10 << 8) | 9;
    const NEWSETELEM: u16 = (10 << 8) | 12;
    const DELSETELEM: u16 = (10 << 8) | 14;
    matches!(
        (ty, path),
        (NEWRULE, [4]) | (NEWSETELEM | DELSETELEM, [3]) | (NEWSET, [9, 2])
    )
}

const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;

/// The batch with each run of element messages of one operation (consecutive
/// NEWSETELEM or DELSETELEM messages with the same header and the same attributes but
/// their element lists) merged into one message holding all their elements: where an
/// encoder cuts a long element list into messages is not what it encodes.
fn logical(msgs: Vec<Msg>) -> Vec<Msg> {
    let elements = |m: &Msg| matches!(m.ty, 0x0a0c | 0x0a0e);
    let rest = |m: &Msg| -> Vec<Node> {
        m.attrs
            .iter()
            .filter(|n| n.ty != NFTA_SET_ELEM_LIST_ELEMENTS)
            .cloned()
            .collect()
    };
    let mut out: Vec<Msg> = Vec::with_capacity(msgs.len());
    for m in msgs {
        if let Some(prev) = out.last_mut() {
            let same = elements(prev)
                && (
                    prev.ty,
                    prev.flags,
                    prev.port,
                    prev.family,
                    prev.version,
                    prev.res_id,
                ) == (m.ty, m.flags, m.port, m.family, m.version, m.res_id)
                && rest(prev) == rest(&m);
            if same {
                let more = m
                    .attrs
                    .iter()
                    .filter(|n| n.ty == NFTA_SET_ELEM_LIST_ELEMENTS)
                    .flat_map(|n| match &n.body {
                        Body::Nest(c) => c.clone(),
                        _ => Vec::new(),
                    });
                match prev
                    .attrs
                    .iter_mut()
                    .find(|n| n.ty == NFTA_SET_ELEM_LIST_ELEMENTS)
                    .map(|n| &mut n.body)
                {
                    Some(Body::Nest(c)) => c.extend(more),
                    _ => prev.attrs.push(Node {
                        ty: NFTA_SET_ELEM_LIST_ELEMENTS,
                        flags: NLA_F_NESTED,
                        body: Body::Nest(more.collect()),
                    }),
                }
                prev.raw.extend_from_slice(&m.raw);
                prev.parts += 1;
                continue;
            }
        }
        out.push(m);
    }
    out
}

/// The first sequence number of a batch, and whether the others follow it one by one.
fn sequence(msgs: &[Msg]) -> (Option<u32>, bool) {
    let first = msgs.first().map(|m| m.seq);
    let consecutive = msgs
        .iter()
        .enumerate()
        .all(|(i, m)| Some(m.seq) == first.map(|f| f.wrapping_add(i as u32)));
    (first, consecutive)
}

// ---------------------------------------------------------------------------------------
// The canonical form.

/// A message in canonical form: header fields (not the length), then the attributes with
/// flags dropped (the kernel masks them), each nest's attributes sorted by type (stable),
/// list entries typed 1 and kept in order.
type Canonical = (u16, u16, u32, u8, u8, u16, Vec<Node>);

/// A batch in canonical form: its first sequence number, whether the others follow one
/// by one, and its [`logical`] messages in order, in canonical form.
fn canonical_batch(buf: &[u8]) -> Result<(Option<u32>, bool, Vec<Canonical>), String> {
    let msgs = parse_batch(buf)?;
    let (first, consecutive) = sequence(&msgs);
    let msgs = logical(msgs).iter().map(canonical).collect();
    Ok((first, consecutive, msgs))
}

fn canonical(m: &Msg) -> Canonical {
    (
        m.ty,
        m.flags,
        m.port,
        m.family,
        m.version,
        m.res_id,
        canonical_nodes(m.ty, &mut Vec::new(), &m.attrs),
    )
}

fn canonical_nodes(ty: u16, path: &mut Vec<u16>, nodes: &[Node]) -> Vec<Node> {
    let list = is_list(ty, path);
    let mut out: Vec<Node> = nodes
        .iter()
        .map(|n| Node {
            ty: if list { 1 } else { n.ty },
            flags: 0,
            body: match &n.body {
                Body::Nest(c) => {
                    path.push(if list { 0 } else { n.ty });
                    let inner = canonical_nodes(ty, path, c);
                    path.pop();
                    Body::Nest(inner)
                }
                b => b.clone(),
            },
        })
        .collect();
    if !list {
        out.sort_by_key(|n| n.ty);
    }
    out
}

// ---------------------------------------------------------------------------------------
// The differ: raw differences in categories.

/// The name of a message type (nf_tables subsystem or batch).
fn msg_name(ty: u16) -> String {
    const NAMES: [&str; 31] = [
        "NEWTABLE",
        "GETTABLE",
        "DELTABLE",
        "NEWCHAIN",
        "GETCHAIN",
        "DELCHAIN",
        "NEWRULE",
        "GETRULE",
        "DELRULE",
        "NEWSET",
        "GETSET",
        "DELSET",
        "NEWSETELEM",
        "GETSETELEM",
        "DELSETELEM",
        "NEWGEN",
        "GETGEN",
        "TRACE",
        "NEWOBJ",
        "GETOBJ",
        "DELOBJ",
        "GETOBJ_RESET",
        "NEWFLOWTABLE",
        "GETFLOWTABLE",
        "DELFLOWTABLE",
        "GETRULE_RESET",
        "DESTROYTABLE",
        "DESTROYCHAIN",
        "DESTROYRULE",
        "DESTROYSET",
        "DESTROYSETELEM",
    ];
    match ty {
        0x10 => "BATCH_BEGIN".into(),
        0x11 => "BATCH_END".into(),
        t if t >> 8 == 10 && ((t & 0xff) as usize) < NAMES.len() => {
            NAMES[(t & 0xff) as usize].into()
        }
        t => format!("type {t:#06x}"),
    }
}

/// All raw differences found, by category: how often, and the first example.
#[derive(Default, Debug)]
struct Differences {
    found: BTreeMap<String, (usize, String)>,
}

impl Differences {
    fn add(&mut self, category: String, example: impl FnOnce() -> String) {
        let e = self.found.entry(category).or_insert_with(|| (0, example()));
        e.0 += 1;
    }
    fn merge(&mut self, case: &str, other: Differences) {
        for (k, (n, ex)) in other.found {
            let e = self
                .found
                .entry(k)
                .or_insert_with(|| (0, format!("{case}: {ex}")));
            e.0 += n;
        }
    }
    fn categories(&self) -> BTreeSet<&str> {
        self.found.keys().map(String::as_str).collect()
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn show(n: &Node) -> String {
    match &n.body {
        Body::Leaf(b) => format!("{}:{}", n.ty, hex(b)),
        Body::Nest(c) => format!(
            "{}{{{}}}",
            n.ty,
            c.iter().map(show).collect::<Vec<_>>().join(",")
        ),
        Body::Malformed(b) => format!("{}!{}", n.ty, hex(b)),
    }
}

fn types(nodes: &[Node]) -> Vec<u16> {
    nodes.iter().map(|n| n.ty).collect()
}

/// The name of an expression list entry (`NFTA_EXPR_NAME`), for paths inside rules.
fn expr_name(n: &Node) -> Option<String> {
    let Body::Nest(c) = &n.body else { return None };
    c.iter().find_map(|a| match &a.body {
        Body::Leaf(b) if a.ty == 1 && b.last() == Some(&0) && b.len() > 1 => {
            Some(String::from_utf8_lossy(&b[..b.len() - 1]).into_owned())
        }
        _ => None,
    })
}

/// Every raw difference between two batches.
fn differences(reference: &[u8], live: &[u8]) -> Differences {
    let mut d = Differences::default();
    let (a, b) = match (parse_batch(reference), parse_batch(live)) {
        (Ok(a), Ok(b)) => (a, b),
        (ra, rb) => {
            d.add("batch: framing".into(), || format!("{ra:?} / {rb:?}"));
            return d;
        }
    };
    let ((fa, ca), (fb, cb)) = (sequence(&a), sequence(&b));
    if fa != fb {
        d.add("batch: first sequence number".into(), || {
            format!("{fa:?} vs {fb:?}")
        });
    }
    for (side, consecutive) in [("reference", ca), ("live", cb)] {
        if !consecutive {
            d.add(
                format!("batch: sequence numbers not consecutive in {side}"),
                String::new,
            );
        }
    }
    let (a, b) = (logical(a), logical(b));
    if a.len() != b.len() {
        d.add("batch: message count".into(), || {
            format!("{} vs {}", a.len(), b.len())
        });
    }
    for (ma, mb) in a.iter().zip(&b) {
        diff_msg(ma, mb, &mut d);
    }
    d
}

/// A message's bytes without its sequence number (the bytes of all parts of a merged one).
fn without_seq(m: &Msg) -> Vec<u8> {
    let mut raw = m.raw.clone();
    let mut off = 0;
    while off + 20 <= raw.len() {
        let len = u32::from_ne_bytes(raw[off..off + 4].try_into().unwrap()) as usize;
        raw[off + 8..off + 12].fill(0);
        off += (len.max(20) + 3) & !3;
    }
    raw
}

fn diff_msg(a: &Msg, b: &Msg, d: &mut Differences) {
    let name = msg_name(a.ty);
    if without_seq(a) == without_seq(b) {
        return;
    }
    let before = d.found.values().map(|v| v.0).sum::<usize>();
    if a.parts != b.parts {
        d.add(
            format!("{name}: elements cut into messages differently"),
            || format!("{} vs {} messages", a.parts, b.parts),
        );
    }
    // Sequence numbers are checked for the whole batch ([`sequence`]): where element
    // lists are cut differently, the following messages' numbers shift.
    let header: [(&str, u64, u64); 6] = [
        ("type", a.ty.into(), b.ty.into()),
        ("flags", a.flags.into(), b.flags.into()),
        ("port", a.port.into(), b.port.into()),
        ("family", a.family.into(), b.family.into()),
        ("version", a.version.into(), b.version.into()),
        ("res_id", a.res_id.into(), b.res_id.into()),
    ];
    for (field, x, y) in header {
        if x != y {
            d.add(format!("{name} header {field}: value"), || {
                format!("{x:#x} vs {y:#x}")
            });
        }
    }
    if a.ty != b.ty {
        return;
    }
    let at = At {
        ty: a.ty,
        msg: &name,
    };
    diff_nodes(&at, &mut Vec::new(), "", &a.attrs, &b.attrs, d);
    let after = d.found.values().map(|v| v.0).sum::<usize>();
    if after == before && a.parts == 1 && b.parts == 1 {
        // Same tree in the same order, different bytes: lengths or padding.
        d.add(format!("{name}: padding or length"), || {
            format!("{} vs {}", hex(&a.raw), hex(&b.raw))
        });
    }
}

/// The message a difference is in: its type and name.
struct At<'a> {
    ty: u16,
    msg: &'a str,
}

/// Compares two attribute lists at `path` (numeric: list entries as 0; `label`: the same
/// for people, list entries as `*` or `*[expression]`).
fn diff_nodes(
    at: &At<'_>,
    path: &mut Vec<u16>,
    label: &str,
    a: &[Node],
    b: &[Node],
    d: &mut Differences,
) {
    let msg = at.msg;
    let here = if label.is_empty() { "/" } else { label };
    if is_list(at.ty, path) {
        if types(a) != types(b) {
            d.add(format!("{msg} {here}: list entry nest types"), || {
                format!("{:?} vs {:?}", types(a), types(b))
            });
        }
        if a.len() != b.len() {
            d.add(format!("{msg} {here}: list length"), || {
                format!("{} vs {}", a.len(), b.len())
            });
        }
        path.push(0);
        for (x, y) in a.iter().zip(b) {
            let entry = match expr_name(x) {
                Some(e) if msg == "NEWRULE" => format!("{label}/*[{e}]"),
                _ => format!("{label}/*"),
            };
            diff_node(at, path, &entry, x, y, d);
        }
        path.pop();
        return;
    }
    let (ta, tb) = (types(a), types(b));
    if ta != tb {
        let (mut sa, mut sb) = (ta.clone(), tb.clone());
        sa.sort_unstable();
        sb.sort_unstable();
        if sa == sb {
            d.add(format!("{msg} {here}: attribute order"), || {
                format!("{ta:?} vs {tb:?}")
            });
        }
    }
    // Pair the k-th attribute of each type on both sides.
    let mut all: Vec<u16> = ta.iter().chain(&tb).copied().collect();
    all.sort_unstable();
    all.dedup();
    for t in all {
        let xs: Vec<&Node> = a.iter().filter(|n| n.ty == t).collect();
        let ys: Vec<&Node> = b.iter().filter(|n| n.ty == t).collect();
        for i in 0..xs.len().max(ys.len()) {
            match (xs.get(i), ys.get(i)) {
                (Some(x), Some(y)) => {
                    path.push(t);
                    diff_node(at, path, &format!("{label}/{t}"), x, y, d);
                    path.pop();
                }
                (Some(x), None) => {
                    d.add(format!("{msg} {label}/{t}: only in reference"), || show(x))
                }
                (None, Some(y)) => d.add(format!("{msg} {label}/{t}: only in live"), || show(y)),
                (None, None) => unreachable!(),
            }
        }
    }
}

fn diff_node(
    at: &At<'_>,
    path: &mut Vec<u16>,
    label: &str,
    a: &Node,
    b: &Node,
    d: &mut Differences,
) {
    let msg = at.msg;
    // The nested flag goes with the body's kind, compared below.
    if (a.flags & !NLA_F_NESTED) != (b.flags & !NLA_F_NESTED) {
        d.add(format!("{msg} {label}: attribute flags"), || {
            format!("{:#06x} vs {:#06x}", a.flags, b.flags)
        });
    }
    match (&a.body, &b.body) {
        (Body::Nest(x), Body::Nest(y)) => diff_nodes(at, path, label, x, y, d),
        (Body::Leaf(x), Body::Leaf(y)) if x == y => {}
        (Body::Leaf(_), Body::Leaf(_)) => d.add(format!("{msg} {label}: value"), || {
            format!("{} vs {}", show(a), show(b))
        }),
        _ => d.add(format!("{msg} {label}: leaf vs nest"), || {
            format!("{} vs {}", show(a), show(b))
        }),
    }
}

// ---------------------------------------------------------------------------------------
// The cases.

/// One transaction to encode, and the transaction that made the kernel state it applies
/// to (`None`: an empty kernel).
struct Case {
    name: String,
    base: Option<Transaction>,
    tx: Transaction,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn config(flags: &[String]) -> crate::config::Config {
    use clap::Parser;
    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        proxy: crate::config::ProxyFlags,
    }
    let mut argv = vec!["kproxy".to_string()];
    argv.extend(flags.iter().cloned());
    let f = Flags::try_parse_from(argv).expect("flags parse");
    crate::config::Config::from_flags(&f.proxy).expect("valid flags")
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

fn load(path: &Path) -> Objects {
    crate::k8s::manifests::load_paths(&[path.to_path_buf()])
        .expect("manifests")
        .objects
}

fn render_of(objects: &Objects, config: &crate::config::Config) -> Ruleset {
    render::render(&model::build(objects, &config.settings).0)
}

/// `change`'s objects replace `base`'s of the same kind, namespace and name; the others
/// are added (`kproxy diff --change`, as `cli::input::overlay` does it).
fn overlay(base: &mut Objects, change: Objects) {
    fn merge<K: kube::Resource>(base: &mut Vec<K>, change: Vec<K>) {
        let key = |o: &K| {
            let m = o.meta();
            (m.namespace.clone(), m.name.clone())
        };
        let replaced: BTreeSet<_> = change.iter().map(key).collect();
        base.retain(|o| !replaced.contains(&key(o)));
        base.extend(change);
    }
    merge(&mut base.services, change.services);
    merge(&mut base.slices, change.slices);
    merge(&mut base.nodes, change.nodes);
    merge(&mut base.service_cidrs, change.service_cidrs);
}

fn from_empty(rs: &Ruleset) -> Transaction {
    diff(&Ruleset::default(), rs, &DiffOptions::default()).tx
}

fn dirs(under: &str, marker: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join(under))
        .expect("rules dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.join(marker).exists())
        .collect();
    v.sort();
    v
}

/// Every scenario of rules/scenarios from an empty kernel, and every reviewed change of
/// rules/diff: its base from an empty kernel, then the change (as `kproxy diff` computes
/// it) on top.
fn rules_cases() -> Vec<Case> {
    let mut out = Vec::new();
    for dir in dirs("rules/scenarios", "manifests.yaml") {
        let c = config(&lines(&dir.join("args")));
        let rs = render_of(&load(&dir.join("manifests.yaml")), &c);
        out.push(Case {
            name: format!("scenarios/{}", dir.file_name().unwrap().to_string_lossy()),
            base: None,
            tx: from_empty(&rs),
        });
    }
    for dir in dirs("rules/diff", "base.yaml") {
        let args = lines(&dir.join("args"));
        let (deletes, flags): (Vec<String>, Vec<String>) =
            args.into_iter().partition(|a| a.starts_with("--delete="));
        let mut flags = flags;
        flags.extend(
            ["--hostname-override=node-a", "--cluster-cidr=10.244.0.0/16"].map(String::from),
        );
        let c = config(&flags);
        let base = load(&dir.join("base.yaml"));
        let mut after = base.clone();
        overlay(&mut after, load(&dir.join("change.yaml")));
        for d in &deletes {
            let spec = d.trim_start_matches("--delete=");
            let parts: Vec<&str> = spec.split('/').collect();
            let [kind, ns, name] = parts[..] else {
                panic!("{spec}")
            };
            let key = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
                m.namespace.as_deref() == Some(ns) && m.name.as_deref() == Some(name)
            };
            match kind {
                "Service" => after.services.retain(|s| !key(&s.metadata)),
                "EndpointSlice" => after.slices.retain(|s| !key(&s.metadata)),
                k => panic!("--delete of {k} in {}", dir.display()),
            }
        }
        let (before_rs, after_rs) = (render_of(&base, &c), render_of(&after, &c));
        out.push(Case {
            name: format!("diff/{}", dir.file_name().unwrap().to_string_lossy()),
            base: Some(from_empty(&before_rs)),
            tx: diff(&before_rs, &after_rs, &DiffOptions::default()).tx,
        });
    }
    out
}

/// The 10k services × 10 endpoints cluster (every 50th with affinity) from empty.
fn big_case() -> Case {
    let objects = crate::testutil::synthetic_cluster(10_000, 10, true);
    let rs = render_of_settings(&objects, &crate::testutil::synthetic_settings());
    Case {
        name: "synthetic 10k x 10".into(),
        base: None,
        tx: from_empty(&rs),
    }
}

fn render_of_settings(objects: &Objects, s: &model::build::Settings) -> Ruleset {
    render::render(&model::build(objects, s).0)
}

/// Changes a synthetic cluster of 400 services (4 endpoints each, every 10th with
/// affinity) the way a busy minute does: services removed (some with affinity) and added,
/// endpoints added to and removed from others, affinity turned on for some and off for
/// others, traffic policy flipped. The changed services' keys.
fn busy_minute(o: &mut Objects) -> BTreeSet<ServiceKey> {
    use crate::testutil::fixtures::{ep, slice, svc};
    let mut changed = BTreeSet::new();
    let key = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        ServiceKey::new(
            m.namespace.clone().unwrap_or_default(),
            m.name.clone().unwrap_or_default(),
        )
    };
    let idx = |name: &str| -> usize { name[4..].parse().unwrap_or(usize::MAX) };
    // Removed: svc-0..=24 (svc-0, -10, -20 with affinity, svc-0, -10, -20 eTP Local).
    o.services.retain(|s| {
        let gone = idx(s.metadata.name.as_deref().unwrap()) < 25;
        if gone {
            changed.insert(key(&s.metadata));
        }
        !gone
    });
    o.slices.retain(|s| {
        let svc_name = s
            .metadata
            .name
            .as_deref()
            .unwrap()
            .trim_end_matches("-abcde");
        idx(svc_name) >= 25
    });
    for s in &mut o.services {
        let i = idx(s.metadata.name.as_deref().unwrap());
        let spec = s.spec.as_mut().unwrap();
        if (100..200).contains(&i) {
            // Affinity on (every 10th already has it) / off for the 200s with it.
            spec.session_affinity = Some("ClientIP".into());
            changed.insert(key(&s.metadata));
        } else if (200..=240).contains(&i) && i % 10 == 0 {
            spec.session_affinity = Some("None".into());
            spec.session_affinity_config = None;
            changed.insert(key(&s.metadata));
        } else if (300..305).contains(&i) {
            spec.external_traffic_policy =
                Some(if i % 10 == 0 { "Cluster" } else { "Local" }.into());
            changed.insert(key(&s.metadata));
        }
    }
    for sl in &mut o.slices {
        let name = sl.metadata.name.clone().unwrap();
        let i = idx(name.trim_end_matches("-abcde"));
        let eps = sl.endpoints.get_or_insert_with(Vec::new);
        if (50..60).contains(&i) {
            // One endpoint more.
            eps.push(
                ep(&format!("10.250.{}.{}", i, 7))
                    .node(crate::testutil::NODE)
                    .build(),
            );
        } else if (60..70).contains(&i) {
            eps.truncate(1);
        } else if (70..75).contains(&i) {
            eps.clear();
        } else {
            continue;
        }
        let svc_name = name.trim_end_matches("-abcde").to_string();
        changed.insert(ServiceKey::new(
            sl.metadata.namespace.clone().unwrap(),
            svc_name,
        ));
    }
    for i in 0..20 {
        let name = format!("new-{i}");
        let ns = "ns-new";
        let mut s = svc(ns, &name)
            .type_("NodePort")
            .cluster_ip(&format!("172.31.0.{}", i + 1))
            .port("http", 80, "TCP")
            .target_port(8080)
            .node_port(32000 + i);
        if i % 4 == 0 {
            s = s.session_affinity("ClientIP");
        }
        o.services.push(s.build());
        let eps = (0..3).map(|e| ep(&format!("10.251.{i}.{}", e + 1)).node("node-3"));
        o.slices.push(
            slice(ns, &format!("{name}-abcde"), &name)
                .port("http", 8080, "TCP")
                .endpoints(eps)
                .build(),
        );
        changed.insert(ServiceKey::new(ns, name));
    }
    changed
}

/// The daemon's partial sync over the busy minute: a full render of the base, then
/// [`Renderer::update`] with the changed services, and the diff of its before and after
/// (affinity for 90 more services opens more affinity shards: their maps are added).
/// And the full-sync path back: a kernel holding the busy state without its `ip6` table
/// (deleted by someone), with a set of an earlier version (`legacy-nodeports`) and the
/// table of an earlier run (`ip kproxy-old`), repaired to the base state rendered in full.
fn mixed_cases() -> Vec<Case> {
    let settings = crate::testutil::synthetic_settings();
    let base_objects = crate::testutil::synthetic_cluster_mix(400, 4, 10);
    let (base_model, _) = model::build(&base_objects, &settings);
    let mut renderer = Renderer::new();
    let base_rs = renderer.full(&base_model);
    let mut after_objects = base_objects.clone();
    let changed = busy_minute(&mut after_objects);
    let (after_model, _) = model::build(&after_objects, &settings);
    let partial = renderer
        .update(&after_model, &changed)
        .expect("services only changed");
    let partial_tx = diff(&partial.before, &partial.after, &DiffOptions::default()).tx;

    let busy = renderer.ruleset();
    let mut old = busy.table(Family::V4).expect("v4 table").clone();
    old.name = "kproxy-old".into();
    let mut kernel = busy.clone();
    kernel.tables.retain(|t| t.family == Family::V4);
    kernel.tables.push(old);
    let v4 = &mut kernel.tables[0];
    let mut legacy = v4.sets["service-nodeports"].clone();
    legacy.name = "legacy-nodeports".into();
    v4.add_set(legacy);
    let back = renderer.full(&base_model);
    let full_tx = diff(&kernel, &back, &DiffOptions::default()).tx;
    vec![
        Case {
            name: "mixed partial sync".into(),
            base: Some(from_empty(&base_rs)),
            tx: partial_tx,
        },
        Case {
            name: "mixed full sync with table drift".into(),
            base: Some(from_empty(&kernel)),
            tx: full_tx,
        },
    ]
}

/// The operation kinds of a transaction, counted.
fn op_kinds(tx: &Transaction) -> BTreeMap<&'static str, usize> {
    let mut m = BTreeMap::new();
    for op in &tx.ops {
        let k = match op {
            Op::AddTable { .. } => "AddTable",
            Op::DeleteTable { .. } => "DeleteTable",
            Op::AddChain { .. } => "AddChain",
            Op::FlushChain { .. } => "FlushChain",
            Op::DeleteChain { .. } => "DeleteChain",
            Op::AddRule { .. } => "AddRule",
            Op::AddSet { .. } => "AddSet",
            Op::DeleteSet { .. } => "DeleteSet",
            Op::AddElements { .. } => "AddElements",
            Op::DeleteElements { .. } => "DeleteElements",
        };
        *m.entry(k).or_insert(0) += 1;
    }
    m
}

const SEQ_BASE: u32 = 1;
const SEQ_TX: u32 = 0x0001_0000;

/// Both encoders' batches for a case: (base, tx) each as (reference, live).
type Batches = (Option<(Vec<u8>, Vec<u8>)>, (Vec<u8>, Vec<u8>));

fn encode_both(case: &Case) -> Batches {
    let mut ref_catalog = reference::Catalog::default();
    let mut live_catalog = super::SetCatalog::default();
    let base = case.base.as_ref().map(|b| {
        let r = reference::encode_with(b, &ref_catalog, SEQ_BASE)
            .unwrap_or_else(|e| panic!("{}: reference, base: {e}", case.name));
        let l = super::encode_with(b, &live_catalog, SEQ_BASE)
            .unwrap_or_else(|e| panic!("{}: live, base: {e}", case.name))
            .to_vec();
        ref_catalog.apply(b);
        live_catalog.apply(b);
        (r, l)
    });
    let r = reference::encode_with(&case.tx, &ref_catalog, SEQ_TX)
        .unwrap_or_else(|e| panic!("{}: reference: {e}", case.name));
    let l = super::encode_with(&case.tx, &live_catalog, SEQ_TX)
        .unwrap_or_else(|e| panic!("{}: live: {e}", case.name))
        .to_vec();
    (base, (r, l))
}

/// What comparing one pair of batches found.
struct Outcome {
    identical: bool,
    canonical_equal: bool,
    differences: Differences,
}

fn compare(reference: &[u8], live: &[u8]) -> Outcome {
    if reference == live {
        return Outcome {
            identical: true,
            canonical_equal: true,
            differences: Differences::default(),
        };
    }
    Outcome {
        identical: false,
        canonical_equal: matches!(
            (canonical_batch(reference), canonical_batch(live)),
            (Ok(a), Ok(b)) if a == b
        ),
        differences: differences(reference, live),
    }
}

/// Compares every case's batches; prints a line per case and the difference list;
/// returns the differences found over all cases.
fn compare_all(cases: &[Case]) -> (Differences, Vec<String>) {
    let mut all = Differences::default();
    let mut not_canonical = Vec::new();
    for case in cases {
        let t = Instant::now();
        let (base, tx) = encode_both(case);
        let encoded = t.elapsed();
        let mut report = String::new();
        let pairs = base
            .iter()
            .map(|b| ("base", b))
            .chain(std::iter::once(("tx", &tx)));
        for (part, (r, l)) in pairs {
            let o = compare(r, l);
            let _ = write!(
                report,
                " {part}: {} bytes{}",
                r.len(),
                match (o.identical, o.canonical_equal) {
                    (true, _) => " identical".to_string(),
                    (false, true) => format!(" canonical-equal ({} live)", l.len()),
                    (false, false) => format!(" DIFFERENT ({} live)", l.len()),
                }
            );
            if !o.canonical_equal {
                not_canonical.push(format!("{} {part}", case.name));
            }
            all.merge(&format!("{} {part}", case.name), o.differences);
        }
        println!(
            "{:<40} {:>6} ops, encoded both in {:>7.1?}:{report}",
            case.name,
            case.tx.ops.len(),
            encoded
        );
    }
    (all, not_canonical)
}

fn print_differences(d: &Differences) {
    println!("raw differences ({} categories):", d.found.len());
    for (k, (n, ex)) in &d.found {
        let why = EXPLAINED
            .iter()
            .find(|(c, _)| c == k)
            .map(|(_, w)| *w)
            .unwrap_or("UNEXPLAINED");
        println!("  {k}  ×{n}\n      {why}\n      e.g. {ex}");
    }
}

/// The test's verdict over all cases: the categories found are exactly [`EXPLAINED`],
/// and where no explained category is a value or presence difference, the canonical
/// forms are equal everywhere.
fn verdict(d: &Differences, not_canonical: &[String]) -> Result<(), String> {
    let found = d.categories();
    let explained: BTreeSet<&str> = EXPLAINED.iter().map(|(c, _)| *c).collect();
    let unexplained: Vec<&&str> = found.difference(&explained).collect();
    let unseen: Vec<&&str> = explained.difference(&found).collect();
    if !unexplained.is_empty() || !unseen.is_empty() {
        return Err(format!(
            "unexplained differences: {unexplained:#?}\nexplained but not found: {unseen:#?}"
        ));
    }
    let canonical_only = [
        "attribute order",
        "list entry nest types",
        "attribute flags",
        "padding or length",
        "elements cut into messages differently",
    ];
    let only_canonical = found
        .iter()
        .all(|c| canonical_only.iter().any(|k| c.ends_with(k)));
    if only_canonical && !not_canonical.is_empty() {
        return Err(format!("canonical forms differ: {not_canonical:?}"));
    }
    Ok(())
}

#[test]
fn both_encoders_agree_on_rules_and_mixed_transactions() {
    let t = Instant::now();
    let mut cases = rules_cases();
    cases.extend(mixed_cases());
    cases.push(Case {
        name: "every op and statement".into(),
        base: None,
        tx: super::tests::full_tx(),
    });
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for c in &cases {
        for (k, n) in op_kinds(&c.tx) {
            *kinds.entry(k).or_default() += n;
        }
    }
    println!(
        "built {} cases in {:?}; operations: {kinds:?}",
        cases.len(),
        t.elapsed()
    );
    for c in cases.iter().filter(|c| c.name.starts_with("mixed")) {
        println!("{}: {:?}", c.name, op_kinds(&c.tx));
    }
    let mixed: BTreeSet<&str> = cases
        .iter()
        .filter(|c| c.name.starts_with("mixed"))
        .flat_map(|c| op_kinds(&c.tx).into_keys())
        .collect();
    assert_eq!(
        mixed.len(),
        10,
        "the mixed transactions cover every operation kind: {mixed:?}"
    );
    let (d, not_canonical) = compare_all(&cases);
    print_differences(&d);
    println!("total {:?}", t.elapsed());
    if let Err(e) = verdict(&d, &not_canonical) {
        panic!("{e}");
    }
}

#[test]
fn both_encoders_agree_on_ten_thousand_services() {
    let t = Instant::now();
    let case = big_case();
    println!("built in {:?}: {:?}", t.elapsed(), op_kinds(&case.tx));
    let (d, not_canonical) = compare_all(std::slice::from_ref(&case));
    print_differences(&d);
    println!("total {:?}", t.elapsed());
    // The explained list is over all cases; this one must not add categories.
    let explained: BTreeSet<&str> = EXPLAINED.iter().map(|(c, _)| *c).collect();
    let found = d.categories();
    let extra: Vec<&&str> = found.difference(&explained).collect();
    assert!(extra.is_empty(), "unexplained differences: {extra:#?}");
    if d.found.is_empty() {
        assert!(not_canonical.is_empty());
    }
}

// ---------------------------------------------------------------------------------------
// The canonicaliser and the differ on hand-made messages.

/// A message of `ty` with `attrs` (already encoded attribute bytes).
fn message(ty: u16, seq: u32, attrs: &[u8]) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&((20 + attrs.len()) as u32).to_ne_bytes());
    m.extend_from_slice(&ty.to_ne_bytes());
    m.extend_from_slice(&1u16.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&[2, 0, 0, 0]);
    m.extend_from_slice(attrs);
    m
}

fn attr(ty: u16, data: &[u8]) -> Vec<u8> {
    let mut a = Vec::new();
    a.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
    a.extend_from_slice(&ty.to_ne_bytes());
    a.extend_from_slice(data);
    a.resize((a.len() + 3) & !3, 0);
    a
}

fn nest(ty: u16, children: &[Vec<u8>]) -> Vec<u8> {
    attr(ty | NLA_F_NESTED, &children.concat())
}

const NEWSETELEM: u16 = (10 << 8) | 12;
const NEWRULE: u16 = (10 << 8) | 6;

/// A NEWSETELEM message with elements typed `entry_types`, with keys 1, 2, 3…
fn elements_msg(entry_types: &[u16], key_of: impl Fn(usize) -> u8) -> Vec<u8> {
    let elems: Vec<Vec<u8>> = entry_types
        .iter()
        .enumerate()
        .map(|(i, t)| nest(*t, &[nest(1, &[attr(1, &[key_of(i)])])]))
        .collect();
    message(
        NEWSETELEM,
        7,
        &[attr(1, b"kproxy\0"), attr(2, b"s\0"), nest(3, &elems)].concat(),
    )
}

#[test]
fn canonical_form_ignores_order_and_list_entry_types_only() {
    let a = message(NEWRULE, 3, &[attr(1, b"t\0"), attr(2, b"c\0")].concat());
    let swapped = message(NEWRULE, 3, &[attr(2, b"c\0"), attr(1, b"t\0")].concat());
    let o = compare(&a, &swapped);
    assert!(!o.identical && o.canonical_equal);
    assert_eq!(
        o.differences.categories(),
        BTreeSet::from(["NEWRULE /: attribute order"])
    );

    let listed = elements_msg(&[1, 1, 1], |i| i as u8);
    let numbered = elements_msg(&[1, 2, 3], |i| i as u8);
    let o = compare(&listed, &numbered);
    assert!(!o.identical && o.canonical_equal);
    assert_eq!(
        o.differences.categories(),
        BTreeSet::from(["NEWSETELEM /3: list entry nest types"])
    );

    // A changed value is a difference of its own, and the canonical forms differ.
    let changed = elements_msg(&[1, 1, 1], |i| if i == 2 { 9 } else { i as u8 });
    let o = compare(&listed, &changed);
    assert!(!o.canonical_equal);
    assert_eq!(
        o.differences.categories(),
        BTreeSet::from(["NEWSETELEM /3/*/1/1: value"])
    );
    // Inside an entry, key and data are attributes in any order, not a list.
    let entry = |first: u16| {
        let (k, v) = (nest(1, &[attr(1, &[1])]), nest(2, &[attr(1, &[2])]));
        let e = if first == 1 { [k, v] } else { [v, k] };
        message(NEWSETELEM, 7, &nest(3, &[nest(1, &e)]))
    };
    let o = compare(&entry(1), &entry(2));
    assert!(o.canonical_equal);
    assert_eq!(
        o.differences.categories(),
        BTreeSet::from(["NEWSETELEM /3/*: attribute order"])
    );
    // Entries in another order are not the same list.
    let reordered = elements_msg(&[1, 1, 1], |i| 2 - i as u8);
    assert!(!compare(&listed, &reordered).canonical_equal);

    // Missing attributes, flags, an extra message.
    let less = message(NEWRULE, 3, &attr(1, b"t\0"));
    let o = compare(&a, &less);
    assert!(!o.canonical_equal);
    assert_eq!(
        o.differences.categories(),
        BTreeSet::from(["NEWRULE /2: only in reference"])
    );
    let flagged = message(
        NEWRULE,
        3,
        &[attr(1 | 0x4000, b"t\0"), attr(2, b"c\0")].concat(),
    );
    let o = compare(&a, &flagged);
    assert!(o.canonical_equal);
    assert_eq!(
        o.differences.categories(),
        BTreeSet::from(["NEWRULE /1: attribute flags"])
    );
    let two = [a.clone(), message(NEWRULE, 4, &attr(1, b"t\0"))].concat();
    let o = compare(&a, &two);
    assert!(!o.canonical_equal);
    assert_eq!(
        o.differences.categories(),
        BTreeSet::from(["batch: message count"])
    );
    let renumbered = message(NEWRULE, 4, &[attr(1, b"t\0"), attr(2, b"c\0")].concat());
    let o = compare(&a, &renumbered);
    assert!(!o.canonical_equal);
    assert_eq!(
        o.differences.categories(),
        BTreeSet::from(["batch: first sequence number"])
    );
    // Same tree, different padding bytes.
    let mut padded = a.clone();
    let last = padded.len() - 1;
    padded[last] = 0xff;
    let o = compare(&a, &padded);
    assert_eq!(
        o.differences.categories(),
        BTreeSet::from(["NEWRULE: padding or length"])
    );
}

#[test]
fn element_lists_cut_elsewhere_are_the_same_elements() {
    let elems = |keys: &[u8]| -> Vec<u8> {
        let e: Vec<Vec<u8>> = keys
            .iter()
            .map(|k| nest(1, &[nest(1, &[attr(1, &[*k])])]))
            .collect();
        nest(3, &e)
    };
    let part = |seq: u32, keys: &[u8]| {
        message(
            NEWSETELEM,
            seq,
            &[attr(1, b"kproxy\0"), attr(2, b"s\0"), elems(keys)].concat(),
        )
    };
    let end = |seq: u32| message(0x11, seq, &[]);
    let one = [part(1, &[1, 2, 3]), end(2)].concat();
    let cut = [part(1, &[1, 2]), part(2, &[3]), end(3)].concat();
    let o = compare(&one, &cut);
    assert!(o.canonical_equal);
    assert_eq!(
        o.differences.categories(),
        BTreeSet::from(["NEWSETELEM: elements cut into messages differently"])
    );
    // Another set's elements are another message.
    let other = message(
        NEWSETELEM,
        2,
        &[attr(1, b"kproxy\0"), attr(2, b"t\0"), elems(&[3])].concat(),
    );
    let two_sets = [part(1, &[1, 2]), other, end(3)].concat();
    assert!(!compare(&one, &two_sets).canonical_equal);
}

#[test]
fn expression_paths_name_the_expression() {
    let expr = |name: &[u8], v: u8| nest(1, &[attr(1, name), nest(2, &[attr(1, &[0, 0, 0, v])])]);
    let rule = |v: u8| {
        message(
            NEWRULE,
            4,
            &nest(4, &[expr(b"payload\0", 1), expr(b"cmp\0", v)]),
        )
    };
    let o = compare(&rule(1), &rule(2));
    assert_eq!(
        o.differences.categories(),
        BTreeSet::from(["NEWRULE /4/*[cmp]/2/1: value"])
    );
    // The verdict refuses what is not on the explained list.
    let e = verdict(&o.differences, &[]).unwrap_err();
    assert!(e.contains("NEWRULE /4/*[cmp]/2/1: value"), "{e}");
}

// ---------------------------------------------------------------------------------------
// The kernel half: each encoder's batches committed in a namespace of its own.

/// Commits one batch (raw bytes, BATCH_BEGIN … BATCH_END) in the named namespace and
/// waits for the kernel's acknowledgement of BATCH_END (kernel >= 6.10; older kernels
/// acknowledge nothing, and then the absence of errors is the verdict).
fn commit(ns: &str, batch: Vec<u8>) -> Result<(), String> {
    use crate::netlink::socket::NlSocket;
    let msgs = parse_batch(&batch)?;
    let end_seq = msgs.last().ok_or("empty batch")?.seq;
    let acks_end = {
        let v = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let mut it = v
            .split(|c: char| !c.is_ascii_digit())
            .map(|p| p.parse::<u32>());
        matches!((it.next(), it.next()), (Some(Ok(a)), Some(Ok(b))) if (a, b) >= (6, 10))
    };
    crate::testutil::in_netns(ns, move || {
        let io = |e: std::io::Error| e.to_string();
        let mut s = NlSocket::open().map_err(io)?;
        s.reserve(batch.len()).map_err(io)?;
        let sent = s.send_pages(std::slice::from_ref(&batch)).map_err(io)?;
        if sent != batch.len() {
            return Err(format!("sent {sent} of {} bytes", batch.len()));
        }
        let mut errors = Vec::new();
        loop {
            let buf = match s.recv(true).map_err(io)? {
                Some(b) => b.to_vec(),
                None if !acks_end || !errors.is_empty() => break,
                None => {
                    if !s.wait_readable(5000).map_err(io)? {
                        return Err("no acknowledgement of BATCH_END".into());
                    }
                    continue;
                }
            };
            let mut acked = false;
            for m in parse_batch(&buf)? {
                const NLMSG_ERROR: u16 = 2;
                if m.ty != NLMSG_ERROR {
                    continue;
                }
                // The error code is the first 4 bytes after the header; `parse_batch` took
                // them as the nfgenmsg.
                let code = i32::from_ne_bytes([m.family, m.version, m.raw[18], m.raw[19]]);
                match code {
                    0 if m.seq == end_seq => acked = true,
                    0 => {}
                    e => errors.push(format!(
                        "message {} ({}): {}",
                        m.seq,
                        msgs.iter()
                            .find(|x| x.seq == m.seq)
                            .map(|x| msg_name(x.ty))
                            .unwrap_or_default(),
                        std::io::Error::from_raw_os_error(-e)
                    )),
                }
            }
            if acked && errors.is_empty() {
                return Ok(());
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    })
}

/// `nft list ruleset` and `nft -j list ruleset` in the named namespace.
fn listing(ns: &str) -> (String, String) {
    (
        crate::testutil::nft_in(ns, &["list", "ruleset"]),
        crate::testutil::nft_in(ns, &["-j", "list", "ruleset"]),
    )
}

/// The first line where two listings differ, with both lines.
fn first_difference(a: &str, b: &str) -> String {
    let n = a
        .lines()
        .zip(b.lines())
        .position(|(x, y)| x != y)
        .unwrap_or(a.lines().count().min(b.lines().count()));
    format!(
        "line {}: reference {:?} / live {:?}",
        n + 1,
        a.lines().nth(n).map(|l| &l[..l.len().min(300)]),
        b.lines().nth(n).map(|l| &l[..l.len().min(300)])
    )
}

/// Commits each case's base and transaction, the reference's batches in one fresh
/// namespace and the live encoder's in another, and compares what the two kernels hold.
/// The failures, one line per case.
fn kernel_comparison(cases: &[Case]) -> Vec<String> {
    let mut failures = Vec::new();
    for case in cases {
        let t = Instant::now();
        let (base, (r, l)) = encode_both(case);
        let ref_ns = crate::testutil::Netns::new("cmp-ref");
        let live_ns = crate::testutil::Netns::new("cmp-live");
        let mut steps: Vec<(&str, Vec<u8>, Vec<u8>)> = Vec::new();
        if let Some((br, bl)) = base {
            steps.push(("base", br, bl));
        }
        steps.push(("tx", r, l));
        let mut ok = true;
        for (part, r, l) in steps {
            let (a, b) = (commit(&ref_ns.name, r), commit(&live_ns.name, l));
            if a.is_err() || b.is_err() {
                failures.push(format!("{} {part}: reference {a:?}, live {b:?}", case.name));
                ok = false;
                break;
            }
        }
        if !ok {
            continue;
        }
        let (rt, rj) = listing(&ref_ns.name);
        let (lt, lj) = listing(&live_ns.name);
        assert!(
            rt.contains("table ip kproxy {"),
            "{}: nothing committed?\n{rt}",
            case.name
        );
        if rt != lt {
            failures.push(format!(
                "{}: nft list ruleset {}",
                case.name,
                first_difference(&rt, &lt)
            ));
        }
        if rj != lj {
            failures.push(format!("{}: nft -j list ruleset differs", case.name));
        }
        println!(
            "{:<40} kernel: {} lines of ruleset, {} in {:.1?}",
            case.name,
            rt.lines().count(),
            if rt == lt && rj == lj {
                "same"
            } else {
                "DIFFERENT"
            },
            t.elapsed()
        );
    }
    failures
}

/// Whether kernel tests can run (root); in CI without root that is a failure.
fn kernel_tests_enabled(test: &str) -> bool {
    if crate::testutil::is_root() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: CI is set but not running as root"
    );
    println!("skipping {test}: needs root for network namespaces");
    false
}

#[test]
fn kernel_holds_the_same_after_both_encoders_batches() {
    if !kernel_tests_enabled("kernel_holds_the_same_after_both_encoders_batches") {
        return;
    }
    let t = Instant::now();
    let mut cases = rules_cases();
    cases.extend(mixed_cases());
    let failures = kernel_comparison(&cases);
    println!("total {:?}", t.elapsed());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn kernel_holds_the_same_for_ten_thousand_services() {
    if !kernel_tests_enabled("kernel_holds_the_same_for_ten_thousand_services") {
        return;
    }
    let t = Instant::now();
    let failures = kernel_comparison(&[big_case()]);
    println!("total {:?}", t.elapsed());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
