//! The one safe wrapper around libnftnl (`nftnl::nftnl_sys`): every call into the C
//! library of the nftables backend is in this file, and nothing of it leaks out.
//!
//! Owns: libnftnl's objects as owned Rust values freed on drop ([`Table`], [`Chain`],
//! [`Set`], [`Elem`], [`Rule`], [`Expr`]): setting and reading their attributes, building
//! their netlink payload into a message ([`Msg`]) and parsing a kernel message into them;
//! iterating a rule's expressions and a set's elements as borrows of their owner
//! ([`ExprRef`], [`ElemRef`]); nft's userdata TLVs ([`Udata`], [`udata_parse`]).
//!
//! Must not: know what kproxy's rules mean (that is `encode`, `decode` and `rule`); hand out
//! a raw pointer; let libnftnl write past the buffer it was given.
//!
//! How memory stays safe:
//! - libnftnl (through libmnl's `mnl_attr_put`) appends attributes at `nlh + nlmsg_len`
//!   without a bound. Every object therefore carries an upper bound of the bytes its
//!   payload can take (each attribute counted with two headers and padding), and
//!   [`Msg::put`] zero-extends the buffer by that bound before libnftnl writes, then
//!   truncates it to the `nlmsg_len` libnftnl left. The buffer is a `Vec<u8>`: every byte
//!   libnftnl sees is initialised, and it never holds a pointer across a reallocation.
//! - Parsing copies a message to 4-byte-aligned memory when it is not aligned, and checks
//!   `nlmsg_len` against the slice before libnftnl reads it; libmnl checks every
//!   attribute's framing inside. A message reaches libnftnl's parser only past
//!   [`super::policy`]: libnftnl exits the process on an attribute of the wrong size.
//! - Getters copy strings out or lend bytes for the lifetime of the owning object.

use std::ffi::{c_char, c_void, CString};
use std::marker::PhantomData;
use std::ptr::NonNull;

use nftnl::nftnl_sys as sys;
use sys::libc;

use super::policy;

/// `struct nlmsghdr` + `struct nfgenmsg`.
const HDR_LEN: usize = 16 + 4;

/// Bytes an attribute of `len` payload bytes may take, nested one level deeper than its
/// object (two headers, padding) — an upper bound, never exact.
fn attr_bound(len: usize) -> usize {
    8 + (len + 4).next_multiple_of(4)
}

/// Errors from libnftnl: a payload it refused, or a message it could not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("libnftnl cannot parse the {0} message")]
    Parse(&'static str),
    #[error("the {0} message has attributes libnftnl would reject by exiting")]
    Policy(&'static str),
    #[error("libnftnl refused attribute {attr} of the {what}")]
    Attr { what: &'static str, attr: u16 },
    #[error("string with a NUL byte: {0:?}")]
    Nul(String),
    #[error("malformed netlink message ({0} bytes)")]
    Frame(usize),
}

/// The longest value a data register holds (`NFT_DATA_VALUE_MAXLEN`): libnftnl 1.2.4
/// copies a data attribute (a comparison's operand, an element's key or data, an
/// immediate, a mask) of any length into a 64-byte array without a check.
const DATA_MAX: usize = 64;

/// Runs `f` on `data` as libnftnl's setters read it. They copy a fixed-size field's own
/// size (at most 8 bytes) from the pointer whatever length they are given, and a data
/// register's given length: a value shorter than 8 bytes is handed over in an 8-byte
/// zeroed copy, so no read goes past it; a longer one as it is.
fn padded<T>(data: &[u8], f: impl FnOnce(*const c_void) -> T) -> T {
    if data.len() >= 8 {
        return f(data.as_ptr() as *const c_void);
    }
    let mut short = [0u8; 8];
    short[..data.len()].copy_from_slice(data);
    f(short.as_ptr() as *const c_void)
}

/// Whether a value may go to libnftnl as attribute `attr`: userdata (`userdata`: the
/// object kind's userdata attribute) is copied at its own length, every other binary
/// value may be a data register (at most [`DATA_MAX`] bytes).
fn fits(attr: u32, userdata: Option<u32>, len: usize) -> bool {
    Some(attr) == userdata || len <= DATA_MAX
}

/// Runs `f` on `s` with its NUL terminator appended: on the stack for the short strings
/// (names, comments) that make up nearly all of them, else on the heap.
fn with_nul<T>(s: &str, f: impl FnOnce(&[u8]) -> T) -> Result<T, Error> {
    let b = s.as_bytes();
    if b.contains(&0) {
        return Err(Error::Nul(s.to_string()));
    }
    let mut stack = [0u8; 256];
    if b.len() < stack.len() {
        stack[..b.len()].copy_from_slice(b);
        return Ok(f(&stack[..=b.len()]));
    }
    let c = CString::new(s).map_err(|_| Error::Nul(s.to_string()))?;
    Ok(f(c.as_bytes_with_nul()))
}

/// The attribute getters every libnftnl object kind has, over its three accessors
/// (`*_is_set`, `*_get` with a length, `*_get_str`); for items inside an `impl` whose type
/// holds the object in `self.ptr`, alive for as long as `self` is borrowed.
macro_rules! attr_getters {
    ($is_set:ident, $get:ident, $get_str:ident) => {
        pub fn is_set(&self, attr: u32) -> bool {
            // SAFETY: `ptr` is live for the borrow; the call reads the object's flag word.
            unsafe { sys::$is_set(self.ptr.as_ptr(), attr as u16) }
        }

        /// The bytes of attribute `attr`, lent for as long as `self` is borrowed.
        pub fn bytes(&self, attr: u32) -> Option<&[u8]> {
            if !self.is_set(attr) {
                return None;
            }
            let mut len = 0u32;
            // SAFETY: `ptr` is live; libnftnl returns a pointer into the object (or NULL)
            // and its length, valid until the object is changed or freed, which the
            // borrow of `self` prevents.
            unsafe {
                let p = sys::$get(self.ptr.as_ptr(), attr as u16, &mut len);
                if p.is_null() {
                    return None;
                }
                Some(std::slice::from_raw_parts(p as *const u8, len as usize))
            }
        }

        /// A string attribute. Read as the C string it is: libnftnl reports some string
        /// lengths wrongly (1.2.4 gives a chain's type as 4 bytes).
        pub fn str(&self, attr: u32) -> Option<String> {
            if !self.is_set(attr) {
                return None;
            }
            // SAFETY: `ptr` is live; for a string attribute that is set, libnftnl returns
            // its NUL-terminated copy owned by the object (or NULL).
            unsafe { c_string(sys::$get_str(self.ptr.as_ptr(), attr as u16)) }
        }

        /// A 32-bit attribute (host byte order).
        pub fn u32(&self, attr: u32) -> Option<u32> {
            Some(u32::from_ne_bytes(
                self.bytes(attr)?.get(..4)?.try_into().ok()?,
            ))
        }

        /// A 64-bit attribute (host byte order).
        pub fn u64(&self, attr: u32) -> Option<u64> {
            Some(u64::from_ne_bytes(
                self.bytes(attr)?.get(..8)?.try_into().ok()?,
            ))
        }

        /// An 8-bit attribute.
        pub fn u8(&self, attr: u32) -> Option<u8> {
            self.bytes(attr)?.first().copied()
        }
    };
}

/// The attribute setters every libnftnl object kind has, over its one setter (`*_set` with
/// a length): `$what` names the kind in errors, `$userdata` is its userdata attribute (the
/// one binary value above 64 bytes), `$nest` the extra bound of an attribute libnftnl
/// nests (element data, expression data). For items inside an `impl` whose type holds the
/// object in `self.ptr` and its payload bound in `self.bound`.
macro_rules! attr_setters {
    ($set:ident, $what:literal, $userdata:expr, $nest:expr) => {
        /// Sets attribute `attr` to `data` (libnftnl copies it): at most 64 bytes but for
        /// the userdata.
        pub fn set_bytes(&mut self, attr: u32, data: &[u8]) -> Result<(), Error> {
            if !fits(attr, $userdata, data.len()) {
                return Err(Error::Attr {
                    what: $what,
                    attr: attr as u16,
                });
            }
            self.set_raw(attr, data)
        }

        fn set_raw(&mut self, attr: u32, data: &[u8]) -> Result<(), Error> {
            // SAFETY: `ptr` is live; libnftnl copies from the buffer `padded` gives (at
            // least as long as any field it fills, and `data.len()` for registers, capped
            // above) before the call returns.
            let rc = padded(data, |p| unsafe {
                sys::$set(self.ptr.as_ptr(), attr as u16, p, data.len() as u32)
            });
            // The setters of some versions return nothing (0 here) and some return -1
            // for an unknown attribute.
            #[allow(clippy::unnecessary_cast)]
            if (rc as i64) < 0 {
                return Err(Error::Attr {
                    what: $what,
                    attr: attr as u16,
                });
            }
            self.bound += attr_bound(data.len()) + $nest;
            Ok(())
        }

        /// Sets a string attribute (NUL-terminated for libnftnl, which `strdup`s it).
        pub fn set_str(&mut self, attr: u32, s: &str) -> Result<(), Error> {
            with_nul(s, |c| self.set_raw(attr, c))?
        }

        /// Sets a 32-bit attribute (host byte order, as libnftnl takes them).
        pub fn set_u32(&mut self, attr: u32, v: u32) -> Result<(), Error> {
            self.set_bytes(attr, &v.to_ne_bytes())
        }

        /// Sets a 64-bit attribute.
        pub fn set_u64(&mut self, attr: u32, v: u64) -> Result<(), Error> {
            self.set_bytes(attr, &v.to_ne_bytes())
        }

        /// Sets an 8-bit attribute.
        pub fn set_u8(&mut self, attr: u32, v: u8) -> Result<(), Error> {
            self.set_bytes(attr, &[v])
        }
    };
}

/// Generates the owned type for one libnftnl object kind: alloc/free, attribute setters
/// and getters, payload building, message parsing.
macro_rules! object {
    (
        $(#[$doc:meta])*
        $name:ident, $raw:ident, $what:literal,
        alloc: $alloc:ident, free: $free:ident,
        set: $set:ident, get: $get:ident, get_str: $get_str:ident, is_set: $is_set:ident,
        build: $build:ident, parse: $parse:ident, policy: $policy:ident,
        userdata: $userdata:ident $(,)?
    ) => {
        $(#[$doc])*
        pub struct $name {
            ptr: NonNull<sys::$raw>,
            /// Upper bound of the payload bytes (see the module doc).
            bound: usize,
        }

        impl Drop for $name {
            fn drop(&mut self) {
                // SAFETY: `ptr` came from the matching alloc, is owned by this value
                // alone and is freed once, here.
                unsafe { sys::$free(self.ptr.as_ptr()) }
            }
        }

        // One API for every object kind; not every kind uses every accessor.
        #[allow(dead_code)]
        impl $name {
            pub fn new() -> Self {
                // SAFETY: the allocator takes no arguments; a NULL (out of memory) is
                // turned into the same abort as Rust's own allocation failure.
                let p = unsafe { sys::$alloc() };
                let ptr = NonNull::new(p).unwrap_or_else(|| {
                    std::alloc::handle_alloc_error(std::alloc::Layout::new::<u64>())
                });
                // Room for the nests libnftnl adds around attributes (a set's description
                // with up to 16 concatenated fields takes 200 bytes).
                $name { ptr, bound: 256 }
            }

            attr_setters!($set, $what, Some(sys::$userdata), 0);

            attr_getters!($is_set, $get, $get_str);

            /// Parses one kernel message (header included) into a new object; on failure
            /// the object holds what libnftnl read before it failed (the attributes it
            /// had set: a rule's table and chain when an expression is broken).
            pub fn parse_partial(msg: &[u8]) -> (Self, Result<(), Error>) {
                let o = Self::new();
                if !policy::admits(policy::Kind::$policy, msg) {
                    return (o, Err(Error::Policy($what)));
                }
                let rc = with_aligned(msg, |nlh| {
                    // SAFETY: `nlh` points to a whole, 4-byte-aligned message whose
                    // `nlmsg_len` fits the buffer (checked by `with_aligned`); `o.ptr` is
                    // live and owned here.
                    unsafe { sys::$parse(nlh, o.ptr.as_ptr()) }
                });
                let r = match rc {
                    Err(e) => Err(e),
                    Ok(rc) if rc < 0 => Err(Error::Parse($what)),
                    Ok(_) => Ok(()),
                };
                (o, r)
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl Payload for $name {
            fn bound(&self) -> usize {
                self.bound
            }
            unsafe fn build(&self, nlh: *mut libc::nlmsghdr) {
                // SAFETY: the caller guarantees `nlh` heads a message with `bound()`
                // writable bytes after `nlmsg_len` (see `Msg::put`); libnftnl only reads
                // the object.
                unsafe { sys::$build(nlh, self.ptr.as_ptr()) }
            }
        }
    };
}

object!(
    /// A table (`nftnl_table`).
    Table, nftnl_table, "table",
    alloc: nftnl_table_alloc, free: nftnl_table_free,
    set: nftnl_table_set_data, get: nftnl_table_get_data, get_str: nftnl_table_get_str, is_set: nftnl_table_is_set,
    build: nftnl_table_nlmsg_build_payload, parse: nftnl_table_nlmsg_parse, policy: Table,
    userdata: NFTNL_TABLE_USERDATA,
);
object!(
    /// A chain (`nftnl_chain`), without its rules.
    Chain, nftnl_chain, "chain",
    alloc: nftnl_chain_alloc, free: nftnl_chain_free,
    set: nftnl_chain_set_data, get: nftnl_chain_get_data, get_str: nftnl_chain_get_str, is_set: nftnl_chain_is_set,
    build: nftnl_chain_nlmsg_build_payload, parse: nftnl_chain_nlmsg_parse, policy: Chain,
    userdata: NFTNL_CHAIN_USERDATA,
);
object!(
    /// A set or map declaration (`nftnl_set`); when parsed from an element message, the
    /// holder of its elements.
    Set, nftnl_set, "set",
    alloc: nftnl_set_alloc, free: nftnl_set_free,
    set: nftnl_set_set_data, get: nftnl_set_get_data, get_str: nftnl_set_get_str, is_set: nftnl_set_is_set,
    build: nftnl_set_nlmsg_build_payload, parse: nftnl_set_nlmsg_parse, policy: Set,
    userdata: NFTNL_SET_USERDATA,
);
object!(
    /// A rule (`nftnl_rule`) and the expressions added to it.
    Rule, nftnl_rule, "rule",
    alloc: nftnl_rule_alloc, free: nftnl_rule_free,
    set: nftnl_rule_set_data, get: nftnl_rule_get_data, get_str: nftnl_rule_get_str, is_set: nftnl_rule_is_set,
    build: nftnl_rule_nlmsg_build_payload, parse: nftnl_rule_nlmsg_parse, policy: Rule,
    userdata: NFTNL_RULE_USERDATA,
);

/// Something libnftnl can write as a message payload.
pub trait Payload {
    /// Upper bound of the bytes the payload takes.
    fn bound(&self) -> usize;
    /// Appends the payload to the message at `nlh`.
    ///
    /// # Safety
    /// `nlh` must head a message followed by at least `bound()` writable bytes past its
    /// `nlmsg_len`.
    unsafe fn build(&self, nlh: *mut libc::nlmsghdr);
}

/// The element-message form of a set: its table, name and id only (libnftnl's
/// `nftnl_set_elems_nlmsg_build_payload` of a set without elements).
pub struct ElemsHeader<'a>(pub &'a Set);

impl Payload for ElemsHeader<'_> {
    fn bound(&self) -> usize {
        self.0.bound
    }
    unsafe fn build(&self, nlh: *mut libc::nlmsghdr) {
        // SAFETY: as `Payload::build`; the set holds no elements, so only its table, name
        // and id are written, within its bound.
        unsafe { sys::nftnl_set_elems_nlmsg_build_payload(nlh, self.0.ptr.as_ptr()) }
    }
}

impl Set {
    /// Parses an element message (NEWSETELEM) into the set's table, name and elements.
    pub fn parse_elems(msg: &[u8]) -> Result<Set, Error> {
        let s = Set::new();
        if !policy::admits(policy::Kind::Elements, msg) {
            return Err(Error::Policy("set element"));
        }
        let rc = with_aligned(msg, |nlh| {
            // SAFETY: as in `parse`: a whole aligned message and a live, owned set.
            unsafe { sys::nftnl_set_elems_nlmsg_parse(nlh, s.ptr.as_ptr()) }
        })?;
        if rc < 0 {
            return Err(Error::Parse("set element"));
        }
        Ok(s)
    }

    /// The elements of a parsed element message, in message order.
    pub fn elems(&self) -> Vec<ElemRef<'_>> {
        let mut out = Vec::new();
        // SAFETY: the iterator is created over a live set, used only while `self` is
        // borrowed, and destroyed before returning; the element pointers it yields stay
        // owned by the set, and `ElemRef` borrows the set for as long as they are used.
        unsafe {
            let it = sys::nftnl_set_elems_iter_create(self.ptr.as_ptr());
            if it.is_null() {
                return out;
            }
            while let Some(e) = NonNull::new(sys::nftnl_set_elems_iter_next(it)) {
                out.push(ElemRef {
                    ptr: e,
                    _owner: PhantomData,
                });
            }
            sys::nftnl_set_elems_iter_destroy(it);
        }
        out
    }
}

/// A set element to be encoded (`nftnl_set_elem`).
pub struct Elem {
    ptr: NonNull<sys::nftnl_set_elem>,
    bound: usize,
}

impl Drop for Elem {
    fn drop(&mut self) {
        // SAFETY: owned, never added to a set (which would take ownership), freed once.
        unsafe { sys::nftnl_set_elem_free(self.ptr.as_ptr()) }
    }
}

impl Default for Elem {
    fn default() -> Self {
        Self::new()
    }
}

// One setter API for every kind; elements use only some of it.
#[allow(dead_code)]
impl Elem {
    pub fn new() -> Elem {
        // SAFETY: no arguments; NULL handled as an allocation failure.
        let p = unsafe { sys::nftnl_set_elem_alloc() };
        let ptr = NonNull::new(p)
            .unwrap_or_else(|| std::alloc::handle_alloc_error(std::alloc::Layout::new::<u64>()));
        Elem { ptr, bound: 16 }
    }

    // Data and verdicts are nested twice (NFTA_SET_ELEM_DATA → NFTA_DATA_*).
    attr_setters!(
        nftnl_set_elem_set,
        "set element",
        Some(sys::NFTNL_SET_ELEM_USERDATA),
        8
    );
}

impl Payload for Elem {
    fn bound(&self) -> usize {
        self.bound
    }
    unsafe fn build(&self, nlh: *mut libc::nlmsghdr) {
        // SAFETY: as `Payload::build`; libnftnl reads the element only.
        unsafe { sys::nftnl_set_elem_nlmsg_build_payload(nlh, self.ptr.as_ptr()) }
    }
}

/// One element of a parsed [`Set`], borrowed from it.
pub struct ElemRef<'a> {
    ptr: NonNull<sys::nftnl_set_elem>,
    _owner: PhantomData<&'a Set>,
}

// Not every getter is used for elements.
#[allow(dead_code)]
impl ElemRef<'_> {
    attr_getters!(
        nftnl_set_elem_is_set,
        nftnl_set_elem_get,
        nftnl_set_elem_get_str
    );
}

/// An expression to be added to a [`Rule`] (`nftnl_expr`).
pub struct Expr {
    ptr: NonNull<sys::nftnl_expr>,
    bound: usize,
}

impl Drop for Expr {
    fn drop(&mut self) {
        // SAFETY: owned (never added to a rule, which would take it over), freed once.
        unsafe { sys::nftnl_expr_free(self.ptr.as_ptr()) }
    }
}

impl Expr {
    /// A new expression of kind `name` (`"payload"`, `"cmp"`, …); `None` if libnftnl does
    /// not know the kind.
    pub fn new(name: &str) -> Option<Expr> {
        let c = CString::new(name).ok()?;
        // SAFETY: `c` is a valid C string for the duration of the call; libnftnl copies
        // what it needs (it looks the kind up in a static table).
        let p = unsafe { sys::nftnl_expr_alloc(c.as_ptr()) };
        Some(Expr {
            ptr: NonNull::new(p)?,
            bound: 16 + attr_bound(name.len() + 1),
        })
    }

    // Data attributes are nested twice (NFTA_CMP_DATA → NFTA_DATA_VALUE).
    attr_setters!(nftnl_expr_set, "expression", None, 8);
}

impl Rule {
    /// The rule's expressions, in order, borrowed from it.
    pub fn exprs(&self) -> Vec<ExprRef<'_>> {
        let mut out = Vec::new();
        // SAFETY: iterator over a live rule, destroyed before returning; the expressions
        // stay owned by the rule, which `ExprRef` borrows.
        unsafe {
            let it = sys::nftnl_expr_iter_create(self.ptr.as_ptr());
            if it.is_null() {
                return out;
            }
            while let Some(e) = NonNull::new(sys::nftnl_expr_iter_next(it)) {
                out.push(ExprRef {
                    ptr: e,
                    _owner: PhantomData,
                });
            }
            sys::nftnl_expr_iter_destroy(it);
        }
        out
    }
}

/// An expression written on its own, as `nftnl_rule_nlmsg_build_payload` writes each of a
/// rule's (its name and data; the caller opens the `NFTA_LIST_ELEM` around it): lets one
/// expression object serve every rule that holds the same expression.
pub struct ExprPayload<'a>(pub &'a Expr);

impl Payload for ExprPayload<'_> {
    fn bound(&self) -> usize {
        self.0.bound
    }
    unsafe fn build(&self, nlh: *mut libc::nlmsghdr) {
        // SAFETY: as `Payload::build`; libnftnl reads the expression only (the pointer is
        // `*mut` in its signature, nothing is written through it).
        unsafe { sys::nftnl_expr_build_payload(nlh, self.0.ptr.as_ptr()) }
    }
}

/// One expression of a parsed [`Rule`], borrowed from it.
pub struct ExprRef<'a> {
    ptr: NonNull<sys::nftnl_expr>,
    _owner: PhantomData<&'a Rule>,
}

impl ExprRef<'_> {
    /// The expression's kind (`"payload"`, …).
    pub fn name(&self) -> String {
        self.str(sys::NFTNL_EXPR_NAME).unwrap_or_default()
    }

    attr_getters!(nftnl_expr_is_set, nftnl_expr_get, nftnl_expr_get_str);
}

/// Copies a C string libnftnl lent (`None` for NULL).
///
/// # Safety
/// `p` must be NULL or point to a NUL-terminated string that stays valid for the call.
unsafe fn c_string(p: *const c_char) -> Option<String> {
    if p.is_null() {
        return None;
    }
    // SAFETY: the caller's contract.
    Some(
        unsafe { std::ffi::CStr::from_ptr(p) }
            .to_string_lossy()
            .into_owned(),
    )
}

/// Runs `f` on `msg` as a netlink message header: in place when it is 4-byte aligned,
/// else on an aligned copy. Fails when the slice is not one whole message.
fn with_aligned<T>(msg: &[u8], f: impl FnOnce(*const libc::nlmsghdr) -> T) -> Result<T, Error> {
    let len = msg
        .get(..4)
        .map(|b| u32::from_ne_bytes(b.try_into().unwrap()) as usize)
        .ok_or(Error::Frame(msg.len()))?;
    if len < HDR_LEN || len > msg.len() {
        return Err(Error::Frame(msg.len()));
    }
    if (msg.as_ptr() as usize).is_multiple_of(4) {
        return Ok(f(msg.as_ptr() as *const libc::nlmsghdr));
    }
    let mut words = vec![0u32; len.div_ceil(4)];
    for (w, c) in words.iter_mut().zip(msg[..len].chunks(4)) {
        let mut b = [0u8; 4];
        b[..c.len()].copy_from_slice(c);
        *w = u32::from_ne_bytes(b);
    }
    Ok(f(words.as_ptr() as *const libc::nlmsghdr))
}

/// A netlink message being written into a byte buffer by libnftnl: the header by
/// `nftnl_nlmsg_build_hdr`, payloads by the objects' builders, nests by this type.
pub struct Msg<'b> {
    buf: &'b mut Vec<u8>,
    /// Offset of the message's header in `buf`.
    start: usize,
}

impl<'b> Msg<'b> {
    /// Starts a message at the end of `buf` (whose length must be a multiple of 4).
    pub fn begin(buf: &'b mut Vec<u8>, ty: u16, family: u8, flags: u16, seq: u32) -> Msg<'b> {
        debug_assert!(buf.len().is_multiple_of(4));
        let start = buf.len();
        buf.resize(start + HDR_LEN, 0);
        // SAFETY: `buf[start..]` holds HDR_LEN initialised, writable bytes: what
        // nftnl_nlmsg_build_hdr writes (nlmsghdr + nfgenmsg, nlmsg_len = HDR_LEN).
        // `ty` already carries the subsystem in its high byte, which libnftnl keeps
        // (it ORs in NFNL_SUBSYS_NFTABLES << 8).
        unsafe {
            sys::nftnl_nlmsg_build_hdr(
                buf.as_mut_ptr().add(start) as *mut c_char,
                ty,
                family as u16,
                flags,
                seq,
            );
        }
        Msg { buf, start }
    }

    fn len(&self) -> usize {
        u32::from_ne_bytes(self.buf[self.start..self.start + 4].try_into().unwrap()) as usize
    }

    fn set_len(&mut self, len: usize) {
        self.buf[self.start..self.start + 4].copy_from_slice(&(len as u32).to_ne_bytes());
    }

    /// Appends an object's payload.
    pub fn put(&mut self, p: &(impl Payload + ?Sized)) {
        let cur = self.start + self.len();
        let room = p.bound();
        self.buf.resize(cur + room, 0);
        // SAFETY: the message's header is at `start`, `nlmsg_len` ends at `cur`, and
        // `room` = the payload's upper bound of zeroed, writable bytes follow it.
        unsafe { p.build(self.buf.as_mut_ptr().add(self.start) as *mut libc::nlmsghdr) }
        let end = self.start + self.len();
        assert!(
            end <= cur + room,
            "libnftnl wrote {} bytes past a bound of {room}",
            end - cur
        );
        self.buf.truncate(end);
    }

    /// Opens a nested attribute of type `ty`; returns its offset for [`Msg::nest_end`].
    pub fn nest_begin(&mut self, ty: u16) -> usize {
        let at = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(ty | libc::NLA_F_NESTED as u16).to_ne_bytes());
        let len = self.len() + 4;
        self.set_len(len);
        at
    }

    /// Closes the nest opened at `at`.
    pub fn nest_end(&mut self, at: usize) {
        let n = (self.buf.len() - at) as u16;
        self.buf[at..at + 2].copy_from_slice(&n.to_ne_bytes());
    }

    /// Cuts the message back to `written` bytes (a length [`Msg::written`] returned).
    pub fn truncate(&mut self, written: usize) {
        assert!(written >= HDR_LEN && written <= self.written());
        self.buf.truncate(self.start + written);
        self.set_len(written);
    }

    /// Writes libnftnl's BATCH_BEGIN (`begin`) or BATCH_END at the end of `buf`, with
    /// `extra_flags` added to its NLM_F_REQUEST; returns its offset.
    pub fn batch(buf: &mut Vec<u8>, begin: bool, seq: u32, extra_flags: u16) -> usize {
        debug_assert!(buf.len().is_multiple_of(4));
        let start = buf.len();
        buf.resize(start + HDR_LEN, 0);
        // SAFETY: HDR_LEN initialised, writable bytes at `start`: exactly what
        // nftnl_batch_begin/end write (nlmsghdr + nfgenmsg).
        unsafe {
            let p = buf.as_mut_ptr().add(start) as *mut c_char;
            if begin {
                sys::nftnl_batch_begin(p, seq);
            } else {
                sys::nftnl_batch_end(p, seq);
            }
        }
        let flags = u16::from_ne_bytes([buf[start + 6], buf[start + 7]]) | extra_flags;
        buf[start + 6..start + 8].copy_from_slice(&flags.to_ne_bytes());
        start
    }

    /// Bytes of the message written so far (header included).
    pub fn written(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Ends the message (its length is already right); returns its offset in the buffer.
    pub fn finish(self) -> usize {
        self.start
    }
}

/// nft's userdata TLVs (comments, `typeof`, set byte orders), built by libnftnl.
pub struct Udata {
    ptr: NonNull<sys::nftnl_udata_buf>,
}

impl Drop for Udata {
    fn drop(&mut self) {
        // SAFETY: owned, freed once.
        unsafe { sys::nftnl_udata_buf_free(self.ptr.as_ptr()) }
    }
}

impl Default for Udata {
    fn default() -> Self {
        Self::new()
    }
}

impl Udata {
    /// An empty buffer (nft's size: `NFT_USERDATA_MAXLEN`).
    pub fn new() -> Udata {
        // SAFETY: plain allocation; NULL handled as an allocation failure.
        let p = unsafe { sys::nftnl_udata_buf_alloc(256) };
        Udata {
            ptr: NonNull::new(p).unwrap_or_else(|| {
                std::alloc::handle_alloc_error(std::alloc::Layout::new::<u64>())
            }),
        }
    }

    fn ok(put: bool) -> Result<(), Error> {
        put.then_some(()).ok_or(Error::Attr {
            what: "userdata",
            attr: 0,
        })
    }

    pub fn put(&mut self, ty: u8, value: &[u8]) -> Result<(), Error> {
        if value.len() > 255 {
            return Err(Error::Attr {
                what: "userdata",
                attr: ty as u16,
            });
        }
        // SAFETY: live buffer; `value` valid for its length and copied; libnftnl checks
        // the room left and returns false when it does not fit.
        Self::ok(unsafe {
            sys::nftnl_udata_put(
                self.ptr.as_ptr(),
                ty,
                value.len() as u32,
                value.as_ptr() as *const c_void,
            )
        })
    }

    /// A NUL-terminated string (nft's comments).
    pub fn put_strz(&mut self, ty: u8, s: &str) -> Result<(), Error> {
        with_nul(s, |c| self.put(ty, c))?
    }

    pub fn put_u32(&mut self, ty: u8, v: u32) -> Result<(), Error> {
        self.put(ty, &v.to_ne_bytes())
    }

    /// A nested TLV list (`typeof` descriptions).
    pub fn nest(&mut self, ty: u8, inner: &Udata) -> Result<(), Error> {
        self.put(ty, inner.bytes())
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: the buffer is live for the borrow; libnftnl returns its data pointer
        // and the used length.
        unsafe {
            let p = sys::nftnl_udata_buf_data(self.ptr.as_ptr());
            let n = sys::nftnl_udata_buf_len(self.ptr.as_ptr());
            if p.is_null() || n == 0 {
                return &[];
            }
            std::slice::from_raw_parts(p as *const u8, n as usize)
        }
    }
}

/// The TLVs of a userdata blob, as `(type, value)` borrows of `buf`, via libnftnl's
/// parser; a malformed blob yields the TLVs before the damage.
pub fn udata_parse(buf: &[u8]) -> Vec<(u8, &[u8])> {
    struct Acc {
        base: usize,
        len: usize,
        out: Vec<(u8, usize, usize)>,
    }
    unsafe extern "C" fn each(attr: *const sys::nftnl_udata, data: *mut c_void) -> libc::c_int {
        // SAFETY: libnftnl calls back with an attribute inside the buffer it was given
        // (already bounds-checked against the buffer's end) and our `Acc`.
        unsafe {
            let acc = &mut *(data as *mut Acc);
            let v = sys::nftnl_udata_get(attr) as usize;
            let n = sys::nftnl_udata_len(attr) as usize;
            if v < acc.base || v + n > acc.base + acc.len {
                return -1;
            }
            acc.out.push((sys::nftnl_udata_type(attr), v - acc.base, n));
        }
        0
    }
    let mut acc = Acc {
        base: buf.as_ptr() as usize,
        len: buf.len(),
        out: Vec::new(),
    };
    if buf.is_empty() {
        return Vec::new();
    }
    // SAFETY: `buf` is valid for its length for the call; the callback only records
    // offsets into it (checked above) in `acc`, which outlives the call.
    unsafe {
        sys::nftnl_udata_parse(
            buf.as_ptr() as *const c_void,
            buf.len() as u32,
            Some(each),
            &mut acc as *mut Acc as *mut c_void,
        );
    }
    acc.out
        .into_iter()
        .map(|(t, o, n)| (t, &buf[o..o + n]))
        .collect()
}

/// The value of the first TLV of type `ty` in a userdata blob.
pub fn udata_get(buf: &[u8], ty: u8) -> Option<&[u8]> {
    udata_parse(buf)
        .into_iter()
        .find(|(t, _)| *t == ty)
        .map(|(_, v)| v)
}

/// A 32-bit userdata value.
pub fn udata_u32(buf: &[u8], ty: u8) -> Option<u32> {
    Some(u32::from_ne_bytes(
        udata_get(buf, ty)?.get(..4)?.try_into().ok()?,
    ))
}

/// A userdata string (up to its NUL; all of it when there is none).
pub fn udata_str(buf: &[u8], ty: u8) -> Option<String> {
    let b = udata_get(buf, ty)?;
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    Some(String::from_utf8_lossy(&b[..end]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// libnftnl 1.2.4 copies a data attribute into a 64-byte array without a check: longer
    /// values are refused here, userdata and strings are not limited.
    #[test]
    fn values_that_would_overflow_libnftnl_are_refused() {
        let mut e = Expr::new("cmp").expect("libnftnl knows cmp");
        assert!(e.set_bytes(sys::NFTNL_EXPR_CMP_DATA, &[7; 64]).is_ok());
        assert!(e.set_bytes(sys::NFTNL_EXPR_CMP_DATA, &[7; 65]).is_err());
        let mut el = Elem::new();
        assert!(el.set_bytes(sys::NFTNL_SET_ELEM_KEY, &[1; 65]).is_err());
        assert!(el
            .set_bytes(sys::NFTNL_SET_ELEM_USERDATA, &[1; 200])
            .is_ok());
        let mut r = Rule::new();
        let long = "c".repeat(600);
        r.set_str(sys::NFTNL_RULE_CHAIN, &long).unwrap();
        assert_eq!(r.str(sys::NFTNL_RULE_CHAIN).as_deref(), Some(long.as_str()));
        assert!(r.set_str(sys::NFTNL_RULE_CHAIN, "a\0b").is_err());
    }

    /// A message built by the wrapper parses back through it.
    #[test]
    fn a_rule_roundtrips_through_libnftnl() {
        let mut r = Rule::new();
        r.set_str(sys::NFTNL_RULE_TABLE, "kproxy").unwrap();
        r.set_str(sys::NFTNL_RULE_CHAIN, "services").unwrap();
        let mut e = Expr::new("cmp").unwrap();
        e.set_u32(sys::NFTNL_EXPR_CMP_SREG, 1).unwrap();
        e.set_u32(sys::NFTNL_EXPR_CMP_OP, 0).unwrap();
        e.set_bytes(sys::NFTNL_EXPR_CMP_DATA, &[10, 0, 0, 1])
            .unwrap();
        let mut buf = Vec::new();
        let mut m = Msg::begin(&mut buf, (10 << 8) | 6, 2, 0x400, 1);
        m.put(&r);
        let list = m.nest_begin(4);
        let n = m.nest_begin(1);
        m.put(&ExprPayload(&e));
        m.nest_end(n);
        m.nest_end(list);
        m.finish();
        let (back, ok) = Rule::parse_partial(&buf);
        ok.expect("parses");
        assert_eq!(back.str(sys::NFTNL_RULE_CHAIN).as_deref(), Some("services"));
        let exprs = back.exprs();
        assert_eq!(exprs.len(), 1);
        assert_eq!(exprs[0].name(), "cmp");
        assert_eq!(
            exprs[0].bytes(sys::NFTNL_EXPR_CMP_DATA),
            Some(&[10, 0, 0, 1][..])
        );
    }
}
