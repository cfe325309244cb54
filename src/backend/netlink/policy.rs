//! The gate in front of libnftnl's parsers: a kernel message is handed to libnftnl only
//! when every attribute libnftnl validates has the length libnftnl expects.
//!
//! Why: libnftnl (1.2.4, and every version since) checks each attribute with
//! `mnl_attr_validate` and, when one fails, calls `abi_breakage()`, which prints "nf_tables
//! kernel ABI is broken" and **exits the process**. It also `strdup`s string attributes
//! without checking for their NUL. A daemon must not die on one malformed message, so
//! this module walks the message first with the same policy — the attribute types and
//! sizes of libnftnl 1.2.4's parse callbacks (`*_parse_attr_cb`, `nftnl_expr_*_cb`,
//! `nftnl_data_parse_cb`, …), read off its sources — and a message that fails is not
//! parsed at all (the decoder then treats it as one it cannot read: a foreign rule, a set
//! it skips). Stricter than libnftnl where that costs nothing: strings must hold their NUL,
//! an expression libnftnl does not know fails here instead of there.
//!
//! Owns: the policy tables and the walk. Must not: read values (that is libnftnl's).

/// What libnftnl expects of one attribute.
#[derive(Clone, Copy)]
enum T {
    U8,
    U16,
    U32,
    U64,
    /// A string: non-empty, its last byte the NUL (as the kernel puts strings; libnftnl
    /// checks that only for its NUL_STRING attributes and `strdup`s the others).
    Str,
    /// Bytes of any length.
    Bin,
    /// A nest with its own policy.
    Nest(&'static [(u16, T)]),
    /// A list of set elements (entries of type NFTA_LIST_ELEM, each by the `ELEM` policy)
    /// with no attribute above `NFTA_SET_ELEM_MAX`.
    /// libnftnl 1.2.4's element callback checks types against `NFTA_SET_MAX` (18) and
    /// stores them in an array sized for `NFTA_SET_ELEM_MAX` (11): a higher type writes past
    /// it on the stack ("stack smashing detected", found by tests/decode_fuzz.rs).
    Elems,
    /// `nft_data`: a nest of a value or a verdict (`nftnl_parse_data`).
    Data,
    /// One expression (`nftnl_expr_parse`): its name and its data by the name's policy.
    Expr,
    /// A list of expressions.
    Exprs,
    /// A list of NUL-terminated strings (hook devices).
    Strs,
    /// `NFTA_DATA_VERDICT`: a code, and a chain for jump and goto. libnftnl 1.2.4 reads
    /// both from an uninitialised array (`nftnl_parse_verdict`): one missing is a wild
    /// pointer.
    Verdict,
    /// `NFTA_SET_DESC_CONCAT`: entries holding a u32 field length each, at most 16 in all
    /// (libnftnl stores them in a 16-slot array without a bound check).
    Concat,
}

use T::*;

/// Which message: the object kind libnftnl will parse it as.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    Table,
    Chain,
    Set,
    Elements,
    Rule,
}

const VERDICT: &[(u16, T)] = &[(1, U32), (2, Str), (3, U32)];
const DATA: &[(u16, T)] = &[(1, Bin), (2, Verdict)];
const TABLE: &[(u16, T)] = &[(1, Str), (2, U32), (3, U32), (4, U64), (6, Bin), (7, U32)];
const HOOK: &[(u16, T)] = &[(1, U32), (2, U32), (3, Str), (4, Strs)];
const COUNTERS: &[(u16, T)] = &[(1, U64), (2, U64)];
const CHAIN: &[(u16, T)] = &[
    (1, Str),
    (2, U64),
    (3, Str),
    (4, Nest(HOOK)),
    (5, U32),
    (6, U32),
    (7, Str),
    (8, Nest(COUNTERS)),
    (10, U32),
    (11, U32),
    (12, Bin),
];
const SET_DESC: &[(u16, T)] = &[(1, U32), (2, Concat)];
const SET: &[(u16, T)] = &[
    (1, Str),
    (2, Str),
    (3, U32),
    (4, U32),
    (5, U32),
    (6, U32),
    (7, U32),
    (8, U32),
    (9, Nest(SET_DESC)),
    (10, U32),
    (11, U64),
    (12, U32),
    (13, Bin),
    (15, U32),
    (16, U64),
    (17, Expr),
    (18, Exprs),
];
const ELEM: &[(u16, T)] = &[
    (1, Data),
    (2, Data),
    (3, U32),
    (4, U64),
    (5, U64),
    (6, Bin),
    (7, Expr),
    (9, Str),
    (10, Data),
    (11, Exprs),
];
const ELEMENTS: &[(u16, T)] = &[(1, Str), (2, Str), (3, Elems), (4, U32)];
/// `NFTA_SET_ELEM_MAX` in the headers libnftnl 1.2.4 is built with.
const SET_ELEM_MAX: u16 = 11;
const COMPAT: &[(u16, T)] = &[(1, U32), (2, U32)];
const RULE: &[(u16, T)] = &[
    (1, Str),
    (2, Str),
    (3, U64),
    (4, Exprs),
    (5, Nest(COMPAT)),
    (6, U64),
    (7, Bin),
    (9, U32),
    (10, U32),
];

/// The data attributes of every expression libnftnl 1.2.4 parses (`src/expr/*.c`).
const EXPRS: &[(&str, &[(u16, T)])] = &[
    (
        "bitwise",
        &[
            (1, U32),
            (2, U32),
            (3, U32),
            (4, Data),
            (5, Data),
            (6, U32),
            (7, Data),
        ],
    ),
    (
        "byteorder",
        &[(1, U32), (2, U32), (3, U32), (4, U32), (5, U32)],
    ),
    ("cmp", &[(1, U32), (2, U32), (3, Data)]),
    ("connlimit", &[(1, U32), (2, U32)]),
    ("counter", &[(1, U64), (2, U64)]),
    ("ct", &[(1, U32), (2, U32), (3, U8), (4, U32)]),
    ("dup", &[(1, U32), (2, U32)]),
    (
        "dynset",
        &[
            (1, Str),
            (2, U32),
            (3, U32),
            (4, U32),
            (5, U32),
            (6, U64),
            (7, Expr),
            (9, U32),
            (10, Exprs),
        ],
    ),
    (
        "exthdr",
        &[
            (1, U32),
            (2, U8),
            (3, U32),
            (4, U32),
            (5, U32),
            (6, U32),
            (7, U32),
        ],
    ),
    ("fib", &[(1, U32), (2, U32), (3, U32)]),
    ("flow_offload", &[(1, Str)]),
    ("fwd", &[(1, U32), (2, U32), (3, U32)]),
    (
        "hash",
        &[
            (1, U32),
            (2, U32),
            (3, U32),
            (4, U32),
            (5, U32),
            (6, U32),
            (7, U32),
        ],
    ),
    ("immediate", &[(1, U32), (2, Data)]),
    ("last", &[(1, U32), (2, U64)]),
    ("limit", &[(1, U64), (2, U64), (3, U32), (4, U32), (5, U32)]),
    (
        "log",
        &[(1, U16), (2, Str), (3, U32), (4, U16), (5, U32), (6, U32)],
    ),
    (
        "lookup",
        &[(1, Str), (2, U32), (3, U32), (4, U32), (5, U32)],
    ),
    ("masq", &[(1, U32), (2, U32), (3, U32)]),
    ("match", &[(1, Str), (2, U32), (3, Bin)]),
    ("meta", &[(1, U32), (2, U32), (3, U32)]),
    (
        "nat",
        &[
            (1, U32),
            (2, U32),
            (3, U32),
            (4, U32),
            (5, U32),
            (6, U32),
            (7, U32),
        ],
    ),
    ("numgen", &[(1, U32), (2, U32), (3, U32), (4, U32)]),
    (
        "objref",
        &[(1, U32), (2, Str), (3, U32), (4, Str), (5, U32)],
    ),
    ("osf", &[(1, U32), (2, U8), (3, U32)]),
    (
        "payload",
        &[
            (1, U32),
            (2, U32),
            (3, U32),
            (4, U32),
            (5, U32),
            (6, U32),
            (7, U32),
            (8, U32),
        ],
    ),
    ("queue", &[(1, U16), (2, U16), (3, U16), (4, U32)]),
    ("quota", &[(1, U64), (2, U32), (4, U64)]),
    ("range", &[(1, U32), (2, U32), (3, Data), (4, Data)]),
    ("redir", &[(1, U32), (2, U32), (3, U32)]),
    ("reject", &[(1, U32), (2, U8)]),
    ("rt", &[(1, U32), (2, U32)]),
    ("socket", &[(1, U32), (2, U32), (3, U32)]),
    ("synproxy", &[(1, U16), (2, U8), (3, U32)]),
    ("target", &[(1, Str), (2, U32), (3, Bin)]),
    ("tproxy", &[(1, U32), (2, U32), (3, U32)]),
    ("tunnel", &[(1, U32), (2, U32)]),
    ("xfrm", &[(1, U32), (2, U32), (3, U8), (4, U32)]),
];

const NLA_TYPE_MASK: u16 = 0x3fff;
const NFTA_LIST_ELEM: u16 = 1;
/// nlmsghdr + nfgenmsg.
const HDR: usize = 20;

/// The attributes of `buf`, `None` at broken framing.
fn attrs(buf: &[u8]) -> impl Iterator<Item = Option<(u16, &[u8])>> {
    let mut off = 0usize;
    std::iter::from_fn(move || {
        if off >= buf.len() {
            return None;
        }
        let rest = &buf[off..];
        if rest.len() < 4 {
            off = buf.len();
            return Some(None);
        }
        let len = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
        let ty = u16::from_ne_bytes([rest[2], rest[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > rest.len() {
            off = buf.len();
            return Some(None);
        }
        off += len.next_multiple_of(4);
        Some(Some((ty, &rest[4..len])))
    })
}

fn nested_ok(v: &[u8]) -> bool {
    v.is_empty() || v.len() >= 4
}

fn one(ty: T, v: &[u8]) -> bool {
    match ty {
        U8 => v.len() == 1,
        U16 => v.len() == 2,
        U32 => v.len() == 4,
        U64 => v.len() == 8,
        Str => v.last() == Some(&0),
        Bin => true,
        Nest(p) => nested_ok(v) && walk(v, p),
        Data => nested_ok(v) && walk(v, DATA),
        Elems => list(v, |e| {
            attrs(e).all(|a| a.is_some_and(|(t, _)| t <= SET_ELEM_MAX)) && walk(e, ELEM)
        }),
        Exprs => list(v, expr),
        Expr => nested_ok(v) && expr(v),
        Strs => attrs(v).all(|a| a.is_some_and(|(_, s)| s.last() == Some(&0))),
        Verdict => {
            let mut code = None;
            let mut chain = false;
            for a in attrs(v) {
                match a {
                    None => return false,
                    Some((1, c)) if c.len() == 4 => {
                        code = Some(i32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                    }
                    Some((2, _)) => chain = true,
                    _ => {}
                }
            }
            // NFT_JUMP, NFT_GOTO.
            nested_ok(v) && walk(v, VERDICT) && code.is_some_and(|c| !matches!(c, -3 | -4) || chain)
        }
        Concat => {
            let mut fields = 0;
            nested_ok(v)
                && attrs(v).all(|a| match a {
                    None => false,
                    Some((NFTA_LIST_ELEM, e)) => attrs(e).all(|f| match f {
                        None => false,
                        Some((1, l)) => {
                            fields += 1;
                            l.len() == 4
                        }
                        Some(_) => true,
                    }),
                    Some(_) => true,
                })
                && fields <= 16
        }
    }
}

/// Entries of a list: each an NFTA_LIST_ELEM nest passing `each`.
fn list(v: &[u8], each: impl Fn(&[u8]) -> bool) -> bool {
    nested_ok(v)
        && attrs(v).all(|a| a.is_some_and(|(t, e)| t == NFTA_LIST_ELEM && nested_ok(e) && each(e)))
}

/// One expression nest: a known name, and its data by that name's policy.
fn expr(v: &[u8]) -> bool {
    let mut name = None;
    let mut data: &[u8] = &[];
    for a in attrs(v) {
        match a {
            None => return false,
            Some((1, n)) => {
                if n.last() != Some(&0) {
                    return false;
                }
                name = Some(&n[..n.iter().position(|&c| c == 0).unwrap_or(n.len())]);
            }
            Some((2, d)) => {
                if !nested_ok(d) {
                    return false;
                }
                data = d;
            }
            Some(_) => {}
        }
    }
    let Some(name) = name else { return false };
    match EXPRS.iter().find(|(n, _)| n.as_bytes() == name) {
        Some((_, p)) => walk(data, p),
        None => false,
    }
}

/// Every attribute of `buf` that the policy names has what libnftnl expects; attributes
/// it does not name are ignored, as libnftnl ignores them.
fn walk(buf: &[u8], policy: &[(u16, T)]) -> bool {
    attrs(buf).all(|a| match a {
        None => false,
        Some((ty, v)) => match policy.iter().find(|(t, _)| *t == ty) {
            Some((_, kind)) => one(*kind, v),
            None => true,
        },
    })
}

/// Whether libnftnl may parse `msg` (one whole message, header included) as `kind`.
pub fn admits(kind: Kind, msg: &[u8]) -> bool {
    let Some(payload) = msg.get(HDR..) else {
        return false;
    };
    let policy = match kind {
        Kind::Table => TABLE,
        Kind::Chain => CHAIN,
        Kind::Set => SET,
        Kind::Elements => ELEMENTS,
        Kind::Rule => RULE,
    };
    walk(payload, policy)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(ty: u16, v: &[u8]) -> Vec<u8> {
        let mut out = ((4 + v.len()) as u16).to_ne_bytes().to_vec();
        out.extend_from_slice(&ty.to_ne_bytes());
        out.extend_from_slice(v);
        out.resize(out.len().next_multiple_of(4), 0);
        out
    }

    fn msg(attrs: &[Vec<u8>]) -> Vec<u8> {
        let mut m = vec![0u8; HDR];
        for a in attrs {
            m.extend_from_slice(a);
        }
        let len = m.len() as u32;
        m[..4].copy_from_slice(&len.to_ne_bytes());
        m
    }

    #[test]
    fn sizes_and_strings_as_libnftnl_validates_them() {
        let good = msg(&[attr(1, b"t\0"), attr(2, &0u32.to_ne_bytes())]);
        assert!(admits(Kind::Table, &good));
        // A u32 of two bytes: libnftnl would exit.
        assert!(!admits(Kind::Table, &msg(&[attr(2, &[0, 0])])));
        // A name without its NUL: libnftnl would read past it.
        assert!(!admits(Kind::Table, &msg(&[attr(1, b"t")])));
        // Unknown attributes are ignored, as libnftnl ignores them.
        assert!(admits(Kind::Table, &msg(&[attr(30, &[1])])));
    }

    #[test]
    fn expressions_by_name() {
        let data = [attr(1, &1u32.to_ne_bytes()), attr(2, &4u32.to_ne_bytes())].concat();
        let e = [attr(1, b"cmp\0"), attr(2 | 0x8000, &data)].concat();
        let rule = |e: &[u8]| msg(&[attr(4, &attr(1, e))]);
        assert!(admits(Kind::Rule, &rule(&e)));
        let bad = [attr(1, &1u32.to_ne_bytes()), attr(2, &[4])].concat();
        let e_bad = [attr(1, b"cmp\0"), attr(2, &bad)].concat();
        assert!(!admits(Kind::Rule, &rule(&e_bad)));
        let unknown = [attr(1, b"frobnicate\0"), attr(2, &[])].concat();
        assert!(!admits(Kind::Rule, &rule(&unknown)));
    }

    /// Regressions from tests/decode_fuzz.rs: each of these made libnftnl exit the
    /// process or crash (SIGSEGV in strdup) before the gate.
    #[test]
    fn what_crashed_libnftnl_is_refused() {
        let n = |ty: u16, inner: &[Vec<u8>]| attr(ty | 0x8000, &inner.concat());
        let elems =
            |elem: Vec<u8>| msg(&[attr(1, b"t\0"), attr(2, b"s\0"), n(3, &[n(1, &[elem])])]);
        let verdict = |v: &[Vec<u8>]| n(2, &[n(2, v)]);
        let jump = (-3i32).to_be_bytes();
        // A jump without its chain: libnftnl strdup()s a pointer from stack garbage.
        assert!(!admits(Kind::Elements, &elems(verdict(&[attr(1, &jump)]))));
        assert!(admits(
            Kind::Elements,
            &elems(verdict(&[attr(1, &jump), attr(2, b"c\0")]))
        ));
        // A verdict without a code: the same garbage read.
        assert!(!admits(Kind::Elements, &elems(verdict(&[attr(2, b"c\0")]))));
        // A set description with 17 concatenated fields: libnftnl writes past its array.
        let field = n(1, &[attr(1, &4u32.to_be_bytes())]);
        let desc = |k: usize| msg(&[attr(1, b"t\0"), n(9, &[n(2, &vec![field.clone(); k])])]);
        assert!(admits(Kind::Set, &desc(16)));
        assert!(!admits(Kind::Set, &desc(17)));
        // An element attribute above NFTA_SET_ELEM_MAX: libnftnl writes past a stack array.
        assert!(admits(Kind::Elements, &elems(attr(11, &[]))));
        assert!(!admits(Kind::Elements, &elems(attr(12, &[]))));
        assert!(!admits(Kind::Elements, &elems(attr(18, &[]))));
        // A set key size other than 4 bytes: libnftnl exits ("kernel ABI is broken").
        assert!(!admits(Kind::Set, &msg(&[attr(5, &[4, 0])])));
    }
}
