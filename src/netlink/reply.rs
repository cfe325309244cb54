//! Reply dispatch: the messages of a received buffer walked by libmnl's callback run-queue
//! (`mnl_cb_run2`), sorted into data, errors and ACKs (`NLMSG_ERROR`, with the extended
//! ACK's offset read by libmnl's attribute parser, `mnl_attr_parse_payload`), the end of a dump (`NLMSG_DONE` and its result) and other control
//! messages, and handed to the caller's closure one by one.
//!
//! Owns: the walk and the error/ACK decoding every netfilter subsystem shares. What a
//! reply means (which request it answers, whether a dump is over, what an errno says about
//! an operation) is the caller's: `backend::netlink` (requests, dumps, batches) and
//! `conntrack` (dumps, deletes).
//!
//! How libmnl's run-queue is used, and where it is not followed:
//! - Every message goes to one callback: the data callback for types >= `NLMSG_MIN_TYPE`,
//!   a control callback array covering all 16 control types for the rest (libmnl's
//!   defaults would end the walk at the first error, and a batch's errors are all
//!   collected).
//! - Sequence numbers and port ids are not checked by libmnl (0 is passed for both): its
//!   check ends the walk at a reply to an earlier request (EPROTO), which callers skip
//!   instead, by sequence number.
//! - A message flagged `NLM_F_DUMP_INTR` ends libmnl's walk (EINTR) before its callback; it
//!   is handed out here and the walk resumes after it, so the dump is read to its end and
//!   the caller sees the flag (a dump that changed under it is read again, and only a
//!   whole one is compared).
//! - libmnl 1.0.4's `mnl_nlmsg_ok` reads a message length above `i32::MAX` as negative and
//!   walks past the buffer (RUSTSEC-2025-0142, fixed after 1.0.5): the framing is checked
//!   here first ([`wire::framing_error`]) and a broken buffer is refused whole, before any
//!   message of it is handed out.
//! - libmnl casts the buffer to `struct nlmsghdr`: a buffer that is not 4-byte aligned (never
//!   one from [`super::socket::NlSocket::recv`]) is copied first.
//!
//! Every `unsafe` block has its `// SAFETY:` line; the C side gets pointers into a live
//! slice only for the duration of a call, and hands back positions that are turned into
//! offsets into that slice, so no raw pointer reaches a caller.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};

use mnl::mnl_sys::{self, libc as mlibc};

use super::wire::{self, c, Msg};

/// `NLMSG_MIN_TYPE`: types below it are netlink's control messages.
const NLMSG_MIN_TYPE: usize = 16;

/// One reply message.
#[derive(Clone, Copy, Debug)]
pub enum Reply<'a> {
    /// A data message: an object of a dump, the answer to a GET, a notification.
    Data(Msg<'a>),
    /// `NLMSG_ERROR`: `errno` 0 is an ACK, else the (positive) error of the request with
    /// the message's sequence number ([`error`] adds the extended ACK's offset).
    Error { msg: Msg<'a>, errno: i32 },
    /// `NLMSG_DONE`: the end of a dump, with the dump's own result (0 or an errno).
    Done { msg: Msg<'a>, errno: i32 },
    /// `NLMSG_NOOP`, `NLMSG_OVERRUN` and the reserved control types.
    Other(Msg<'a>),
}

impl<'a> Reply<'a> {
    pub fn msg(&self) -> &Msg<'a> {
        match self {
            Reply::Data(m) | Reply::Other(m) => m,
            Reply::Error { msg, .. } | Reply::Done { msg, .. } => msg,
        }
    }

    fn of(m: Msg<'a>) -> Reply<'a> {
        match m.ty {
            c::NLMSG_ERROR => Reply::Error {
                errno: error(&m).0,
                msg: m,
            },
            c::NLMSG_DONE => Reply::Done {
                errno: m
                    .payload
                    .get(..4)
                    .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]).wrapping_neg())
                    .unwrap_or(0),
                msg: m,
            },
            t if (t as usize) < NLMSG_MIN_TYPE => Reply::Other(m),
            _ => Reply::Data(m),
        }
    }
}

/// What the closure of [`dispatch`] wants next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Next,
    Stop,
}

/// A buffer whose netlink framing is broken at byte `offset` of `len`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Malformed {
    pub offset: usize,
    pub len: usize,
}

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "malformed netlink reply at byte {} of {}",
            self.offset, self.len
        )
    }
}

/// Errno and extended-ACK offset of an `NLMSG_ERROR` (errno 0 = an ACK; a message too
/// short to hold an error code is EPROTO).
pub fn error(m: &Msg<'_>) -> (i32, Option<u32>) {
    let p = m.payload;
    let Some(code) = p.get(..4) else {
        return (libc::EPROTO, None);
    };
    let code = i32::from_ne_bytes([code[0], code[1], code[2], code[3]]);
    let mut offset = None;
    if m.flags & c::NLM_F_ACK_TLVS != 0 {
        // With NETLINK_CAP_ACK only the original header follows the error code.
        if let Some(tlvs) = p.get(4 + c::NLMSG_HDRLEN..) {
            attrs(tlvs, &mut |ty, d| {
                if ty == c::NLMSGERR_ATTR_OFFS && offset.is_none() {
                    offset = d
                        .get(..4)
                        .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                }
            });
        }
    }
    // Wrapping: `-i32::MIN` does not exist, and a reply must not panic the reader.
    (code.wrapping_neg(), offset)
}

/// Hands every message of `buf` (one received datagram, or several back to back) to `f`
/// in order, until `f` returns [`Step::Stop`]; returns whether it did. A buffer with broken
/// framing is refused whole (nothing is handed out).
pub fn dispatch(buf: &[u8], f: &mut dyn FnMut(Reply<'_>) -> Step) -> Result<bool, Malformed> {
    if let Some(offset) = wire::framing_error(buf) {
        return Err(Malformed {
            offset,
            len: buf.len(),
        });
    }
    if buf.len() > i32::MAX as usize {
        // libmnl counts the bytes left in an int.
        return Err(Malformed {
            offset: i32::MAX as usize,
            len: buf.len(),
        });
    }
    let mut copy = Vec::new();
    Ok(run(aligned(buf, &mut copy), f))
}

/// `buf`, or when it is not 4-byte aligned (libmnl casts it to its structs), an aligned
/// copy of it in `copy`.
fn aligned<'b>(buf: &'b [u8], copy: &'b mut Vec<u8>) -> &'b [u8] {
    if (buf.as_ptr() as usize).is_multiple_of(4) {
        return buf;
    }
    copy.resize(buf.len() + 3, 0);
    let start = (4 - copy.as_ptr() as usize % 4) % 4;
    copy[start..start + buf.len()].copy_from_slice(buf);
    &copy[start..start + buf.len()]
}

/// The state the C callbacks reach through their `data` pointer.
struct Walk<'b, 'f> {
    buf: &'b [u8],
    /// Offset of the message after the last one handed out.
    next: usize,
    f: &'f mut dyn FnMut(Reply<'_>) -> Step,
    panic: Option<Box<dyn Any + Send>>,
}

impl Walk<'_, '_> {
    /// Hands out the message at `off`; `None` when there is none (cannot happen in a
    /// buffer whose framing was checked).
    fn hand_out(&mut self, off: usize) -> Option<Step> {
        let (m, adv) = Msg::parse(self.buf.get(off..)?)?;
        self.next = off + adv;
        let f = &mut *self.f;
        match catch_unwind(AssertUnwindSafe(|| f(Reply::of(m)))) {
            Ok(step) => Some(step),
            Err(p) => {
                self.panic = Some(p);
                None
            }
        }
    }
}

/// The callback of every message (data and control): `data` is the [`Walk`] that
/// [`run`] passed to `mnl_cb_run2`, `nlh` a message inside its buffer.
unsafe extern "C" fn on_message(nlh: *const mlibc::nlmsghdr, data: *mut mlibc::c_void) -> i32 {
    // SAFETY: `data` is the `&mut Walk` that `run` passed to `mnl_cb_run2`, live and not
    // otherwise borrowed while the call lasts.
    let walk = unsafe { &mut *(data as *mut Walk<'_, '_>) };
    let off = (nlh as usize).wrapping_sub(walk.buf.as_ptr() as usize);
    match walk.hand_out(off) {
        Some(Step::Next) => mnl_sys::MNL_CB_OK,
        Some(Step::Stop) => mnl_sys::MNL_CB_STOP,
        None => mnl_sys::MNL_CB_ERROR,
    }
}

/// [`dispatch`] over a well-framed, aligned buffer.
fn run(buf: &[u8], f: &mut dyn FnMut(Reply<'_>) -> Step) -> bool {
    let mut walk = Walk {
        buf,
        next: 0,
        f,
        panic: None,
    };
    let mut ctl: [mnl_sys::mnl_cb_t; NLMSG_MIN_TYPE] = [Some(on_message); NLMSG_MIN_TYPE];
    while walk.next < buf.len() {
        let rest = &buf[walk.next..];
        // SAFETY: `rest` is a live, 4-byte aligned slice of well-framed messages (checked
        // by `dispatch`) and libmnl reads only within it; `walk` and `ctl` outlive the call,
        // and the callbacks get `walk` back through `data` only while it runs.
        let r = unsafe {
            mnl_sys::mnl_cb_run2(
                rest.as_ptr() as *const mlibc::c_void,
                rest.len(),
                0,
                0,
                Some(on_message),
                &mut walk as *mut Walk<'_, '_> as *mut mlibc::c_void,
                ctl.as_mut_ptr(),
                NLMSG_MIN_TYPE as u32,
            )
        };
        if let Some(p) = walk.panic.take() {
            std::panic::resume_unwind(p);
        }
        match r {
            mnl_sys::MNL_CB_STOP => return true,
            r if r > 0 => return false,
            // The walk ended at a message flagged NLM_F_DUMP_INTR (the only error libmnl
            // raises with seq and port checks off): hand it out, and go on after it.
            _ => match walk.hand_out(walk.next) {
                Some(Step::Next) => {}
                Some(Step::Stop) => return true,
                None => match walk.panic.take() {
                    Some(p) => std::panic::resume_unwind(p),
                    None => return false,
                },
            },
        }
    }
    false
}

/// The attributes of `buf` (a message payload after its fixed header, or a nest's
/// payload), walked by libmnl (`mnl_attr_parse_payload`): `f(type, payload)` for each, the
/// type without its flag bits, until one does not fit.
pub fn attrs(buf: &[u8], f: &mut dyn FnMut(u16, &[u8])) {
    struct Ctx<'b, 'f> {
        buf: &'b [u8],
        f: &'f mut dyn FnMut(u16, &[u8]),
        panic: Option<Box<dyn Any + Send>>,
    }
    unsafe extern "C" fn on_attr(attr: *const mlibc::nlattr, data: *mut mlibc::c_void) -> i32 {
        // SAFETY: `data` is the `&mut Ctx` passed to `mnl_attr_parse_payload` below, live
        // and not otherwise borrowed while the call lasts.
        let ctx = unsafe { &mut *(data as *mut Ctx<'_, '_>) };
        let off = (attr as usize).wrapping_sub(ctx.buf.as_ptr() as usize);
        let Some(h) = ctx.buf.get(off..off.saturating_add(4)) else {
            return mnl_sys::MNL_CB_ERROR;
        };
        let len = u16::from_ne_bytes([h[0], h[1]]) as usize;
        let ty = u16::from_ne_bytes([h[2], h[3]]) & c::NLA_TYPE_MASK;
        // libmnl checked that the attribute fits (mnl_attr_ok).
        let Some(d) = ctx.buf.get(off + 4..off + len) else {
            return mnl_sys::MNL_CB_ERROR;
        };
        let f = &mut *ctx.f;
        match catch_unwind(AssertUnwindSafe(|| f(ty, d))) {
            Ok(()) => mnl_sys::MNL_CB_OK,
            Err(p) => {
                ctx.panic = Some(p);
                mnl_sys::MNL_CB_ERROR
            }
        }
    }
    if buf.len() > i32::MAX as usize {
        return; // libmnl counts the bytes left in an int; no reply is that large
    }
    let mut copy = Vec::new();
    let buf = aligned(buf, &mut copy);
    let mut ctx = Ctx {
        buf,
        f,
        panic: None,
    };
    // SAFETY: `buf` is a live, 4-byte aligned slice; libmnl reads attributes only where
    // `mnl_attr_ok` says they fit in it; `ctx` outlives the call.
    unsafe {
        mnl_sys::mnl_attr_parse_payload(
            buf.as_ptr() as *const mlibc::c_void,
            buf.len(),
            Some(on_attr),
            &mut ctx as *mut Ctx<'_, '_> as *mut mlibc::c_void,
        )
    };
    if let Some(p) = ctx.panic.take() {
        std::panic::resume_unwind(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::wire::Builder;

    /// Attributes as `put` writes them (a message's, after its header and nfgenmsg).
    fn tlvs(put: impl FnOnce(&mut Builder)) -> Vec<u8> {
        let mut w = Builder::new();
        w.begin_msg(0, 0, 0, 0, 0);
        put(&mut w);
        w.end_msg();
        w.bytes()[c::NLMSG_HDRLEN + c::NFGENMSG_LEN..].to_vec()
    }

    /// A reply message as the kernel writes one.
    fn reply(out: &mut Vec<u8>, ty: u16, flags: u16, seq: u32, payload: &[u8]) {
        let len = c::NLMSG_HDRLEN + payload.len();
        out.extend_from_slice(&(len as u32).to_ne_bytes());
        out.extend_from_slice(&ty.to_ne_bytes());
        out.extend_from_slice(&flags.to_ne_bytes());
        out.extend_from_slice(&seq.to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes());
        out.extend_from_slice(payload);
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
    }

    /// An NLMSG_ERROR with `NETLINK_CAP_ACK` (the request's header only) and, with
    /// `offset`, the extended ACK's NLMSGERR_ATTR_OFFS (after a NLMSGERR_ATTR_MSG).
    fn error_msg(out: &mut Vec<u8>, seq: u32, errno: i32, offset: Option<u32>) {
        let mut p = (-errno).to_ne_bytes().to_vec();
        p.extend_from_slice(&[0u8; 16]);
        let mut flags = 0x100; // NLM_F_CAPPED
        if let Some(o) = offset {
            flags |= c::NLM_F_ACK_TLVS;
            p.extend_from_slice(&tlvs(|w| {
                w.str(1, "Object not found");
                w.attr(c::NLMSGERR_ATTR_OFFS, &o.to_ne_bytes());
            }));
        }
        reply(out, c::NLMSG_ERROR, flags, seq, &p);
    }

    fn collect(buf: &[u8]) -> Result<(Vec<String>, bool), Malformed> {
        let mut seen = Vec::new();
        let stopped = dispatch(buf, &mut |r| {
            let m = r.msg();
            seen.push(match r {
                Reply::Data(_) => format!("data {} {:#x}", m.seq, m.flags),
                Reply::Error { errno, msg } => {
                    format!("error {} {errno} {:?}", m.seq, error(&msg).1)
                }
                Reply::Done { errno, .. } => format!("done {} {errno}", m.seq),
                Reply::Other(_) => format!("other {} {}", m.seq, m.ty),
            });
            if matches!(r, Reply::Done { .. }) {
                Step::Stop
            } else {
                Step::Next
            }
        })?;
        Ok((seen, stopped))
    }

    #[test]
    fn every_message_is_handed_out_errors_with_errno_and_offset() {
        let mut buf = Vec::new();
        reply(&mut buf, 0x0a05, c::NLM_F_MULTI, 7, &[2, 0, 0, 0]);
        reply(&mut buf, c::NLMSG_NOOP, 0, 7, &[]);
        error_msg(&mut buf, 8, libc::ENOENT, Some(40));
        error_msg(&mut buf, 9, libc::EEXIST, None);
        error_msg(&mut buf, 10, 0, None); // an ACK
        reply(
            &mut buf,
            c::NLMSG_DONE,
            c::NLM_F_MULTI,
            7,
            &(-libc::EINTR).to_ne_bytes(),
        );
        reply(&mut buf, 0x0a05, c::NLM_F_MULTI, 11, &[2, 0, 0, 0]);
        let (seen, stopped) = collect(&buf).unwrap();
        assert_eq!(
            seen,
            [
                "data 7 0x2",
                "other 7 1",
                "error 8 2 Some(40)",
                "error 9 17 None",
                "error 10 0 None",
                "done 7 4",
            ]
        );
        assert!(stopped, "the closure's Stop ends the walk");
    }

    /// libmnl ends its walk at NLM_F_DUMP_INTR; the message and those after it are still
    /// handed out, with the flag.
    #[test]
    fn an_interrupted_dump_is_read_to_its_end() {
        let mut buf = Vec::new();
        reply(&mut buf, 0x0a05, c::NLM_F_MULTI, 3, &[2, 0, 0, 0]);
        for _ in 0..2 {
            reply(
                &mut buf,
                0x0a05,
                c::NLM_F_MULTI | c::NLM_F_DUMP_INTR,
                3,
                &[2, 0, 0, 0],
            );
        }
        reply(
            &mut buf,
            c::NLMSG_DONE,
            c::NLM_F_MULTI | c::NLM_F_DUMP_INTR,
            3,
            &0i32.to_ne_bytes(),
        );
        let (seen, stopped) = collect(&buf).unwrap();
        assert_eq!(
            seen,
            ["data 3 0x2", "data 3 0x12", "data 3 0x12", "done 3 0"]
        );
        assert!(stopped);
    }

    #[test]
    fn broken_framing_is_refused_whole_and_misaligned_buffers_are_read() {
        let mut buf = Vec::new();
        reply(&mut buf, 0x0a05, 0, 1, &[2, 0, 0, 0]);
        error_msg(&mut buf, 2, libc::EPERM, None);
        let whole = buf.len();
        // A length above i32::MAX (libmnl 1.0.4's mnl_nlmsg_ok reads it as negative).
        let mut bad = buf.clone();
        bad[20..24].copy_from_slice(&0x8000_0010u32.to_ne_bytes());
        assert_eq!(
            collect(&bad),
            Err(Malformed {
                offset: 20,
                len: whole
            })
        );
        assert_eq!(
            collect(&buf[..whole - 1]),
            Err(Malformed {
                offset: 20,
                len: whole - 1
            })
        );
        // Shifted by one byte.
        let mut shifted = vec![0u8; whole + 1];
        shifted[1..].copy_from_slice(&buf);
        let (seen, _) = collect(&shifted[1..]).unwrap();
        assert_eq!(seen, ["data 1 0x0", "error 2 1 None"]);
        assert_eq!(collect(&[]).unwrap(), (vec![], false));
    }

    #[test]
    fn a_short_error_is_eproto_and_i32_min_does_not_panic() {
        let mut buf = Vec::new();
        reply(&mut buf, c::NLMSG_ERROR, 0, 1, &[1, 2]);
        reply(&mut buf, c::NLMSG_ERROR, 0, 2, &i32::MIN.to_ne_bytes());
        let (seen, _) = collect(&buf).unwrap();
        assert_eq!(
            seen,
            [
                "error 1 71 None",
                format!("error 2 {} None", i32::MIN).as_str()
            ]
        );
    }

    #[test]
    fn a_panicking_closure_unwinds_through_libmnl() {
        let mut buf = Vec::new();
        reply(&mut buf, 0x0a05, 0, 1, &[]);
        let r = std::panic::catch_unwind(|| {
            dispatch(&buf, &mut |_| panic!("decoder bug")).ok();
        });
        assert!(r.is_err());
    }

    #[test]
    fn attributes_are_walked_until_one_does_not_fit() {
        let buf = tlvs(|w| {
            w.u32_be(1, 7);
            w.str(2, "kproxy");
            let n = w.nest_begin(3);
            w.u8(1, 9);
            w.nest_end(n);
        });
        let mut seen = Vec::new();
        attrs(&buf, &mut |ty, d| seen.push((ty, d.to_vec())));
        assert_eq!(
            seen,
            [
                (1, 7u32.to_be_bytes().to_vec()),
                (2, b"kproxy\0".to_vec()),
                (3, vec![5, 0, 1, 0, 9, 0, 0, 0]),
            ]
        );
        let mut cut = buf.clone();
        cut.truncate(buf.len() - 2);
        let mut n = 0;
        attrs(&cut, &mut |_, _| n += 1);
        assert_eq!(n, 2);
    }

    proptest::proptest! {
        /// Any bytes: dispatch hands out exactly what the safe iterator finds, or refuses
        /// the buffer; attribute walks agree with the safe iterator.
        #[test]
        fn arbitrary_bytes_dispatch_safely(buf in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let mut seen = Vec::new();
            match dispatch(&buf, &mut |r| { seen.push(r.msg().payload.to_vec()); Step::Next }) {
                Ok(_) => {
                    let want: Vec<Vec<u8>> = wire::messages(&buf).map(|m| m.payload.to_vec()).collect();
                    proptest::prop_assert_eq!(seen, want);
                }
                Err(e) => proptest::prop_assert_eq!(Some(e.offset), wire::framing_error(&buf)),
            }
            let mut walked = Vec::new();
            attrs(&buf, &mut |t, d| walked.push((t, d.to_vec())));
            let want: Vec<(u16, Vec<u8>)> = wire::Attrs::new(&buf).map(|(t, d)| (t, d.to_vec())).collect();
            proptest::prop_assert_eq!(walked, want);
        }
    }
}
