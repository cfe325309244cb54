//! The drift watch: nftables' change notifications (multicast group `NFNLGRP_NFTABLES`),
//! drained on a thread of their own and sorted into kproxy's own commits (ignored), other
//! programs' commits that touch no table of kproxy's (counted, ignored), and other
//! programs' commits to kproxy's tables (which chains and sets they touched, for a
//! targeted repair: [`crate::backend::Touched`]).
//!
//! Owns: the listening socket, its thread, and the accounting that makes sure no commit
//! goes unseen. What the kernel sends (checked on 6.18 against `nft monitor`; see
//! docs/daemon.md, "Drift"): every commit in the namespace produces one notification per
//! object it changed (NEWTABLE, NEWCHAIN, NEWRULE, NEWSET, NEWSETELEM, NEWOBJ, … and
//! their DEL twins, each naming family and table, and the chain or set), then one
//! NFT_MSG_NEWGEN with the new generation id, the committing process (NFTA_GEN_PROC_PID,
//! NFTA_GEN_PROC_NAME), and in its header the port id of the socket that committed and the
//! sequence number of the batch's first message. Commits are serialised, and their
//! notifications are sent before the next commit starts, so the stream is in commit order.
//!
//! - **kproxy's own commits** are those whose NEWGEN names the backend's socket AND the
//!   sequence number of a batch it sent (a process id would not do: `kproxy apply` is
//!   kproxy too, and inside a container the kernel's pid is not the one the process sees).
//! - **No commit goes unseen.** Generation ids count commits one by one, so each NEWGEN
//!   must follow the previous one; a gap is a commit not seen. The only commits allowed
//!   to go unseen are kproxy's own large ones, made while not listening ([`Monitor::pause`]:
//!   with a listener the kernel builds a notification per element, which made a 500k-element
//!   commit ~40% slower, and the flood would overrun any buffer), counted by
//!   [`Monitor::resume`]. Any other gap, an overrun of the receive buffer (`ENOBUFS`), or a
//!   pause before the accounting has its first generation is reported as lost: the sync
//!   loop then compares everything.
//! - **Markers.** Where the accounting needs the current generation (at start, after a
//!   pause, after an overrun), a GETGEN request is sent on the listening socket itself:
//!   its reply is queued after every notification sent before it, so the drain thread
//!   knows which generations it must have seen by then.
//!
//! Must not: read kproxy's tables or decide repairs (`sync` does, through the
//! [`crate::backend::Backend`] trait); block the sync thread on the kernel's notifications.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::decode::{self, Notice, Touch};
use super::msg_type;
use super::nf_tables::c;
use crate::backend::{Touched, Waker, Watched};
use crate::netlink::reply::{self, Step};
use crate::netlink::socket::NlSocket;
use crate::netlink::wire::Builder;
use crate::nft::Family;

/// The listening socket's receive buffer. kproxy's own large commits are not listened to
/// ([`PAUSE_ABOVE_BYTES`]); this holds the notifications of another program's commit of
/// ~100k elements while the drain thread catches up. Larger floods overrun it and cost one
/// full comparison. The kernel charges it only while messages wait in it.
const RECV_BUFFER: usize = 32 << 20;

/// Batches larger than this are committed while not listening ([`Monitor::pause`]):
/// about 10k elements.
pub(super) const PAUSE_ABOVE_BYTES: usize = 1 << 20;

/// Sequence numbers of kproxy's recent batches kept to recognise their NEWGEN.
const OWN_SEQS: usize = 64;

/// How long the drain thread blocks before looking at its stop flag.
const POLL_MS: i32 = 200;

/// Recent commits remembered for [`Monitor::only_others_between`]: a neighbour committing
/// every millisecond during a 4 s read of kproxy's tables.
const RECENT: usize = 4096;

/// How long [`Monitor::only_others_between`] waits for the drain thread to catch up.
const CATCH_UP: Duration = Duration::from_secs(2);

/// Where the watch stands; shared by the drain thread and the backend.
#[derive(Debug, Default)]
struct State {
    /// The backend's socket: its commits are kproxy's.
    own_port: u32,
    /// The listening socket (marker replies come to it).
    monitor_port: u32,
    /// Sequence number of the first message of kproxy's recent batches.
    own_seqs: VecDeque<u32>,
    /// kproxy's commits made while not listening, not yet matched with a generation gap.
    own_unseen: u32,
    /// Every generation up to this one was seen or is one of kproxy's unseen commits.
    /// `None` until the first marker's reply (and again after an overrun).
    accounted: Option<u32>,
    /// The marker request awaited, by sequence number.
    marker: Option<u32>,
    next_marker: u32,
    /// For [`crate::backend::Backend::drift`]: what others touched in kproxy's tables,
    /// why a full comparison is needed, and how many commits touched other tables only.
    touched: Touched,
    lost: Option<String>,
    kproxy_tables: u64,
    other_tables: u64,
    /// The latest commits, in order: generation, and whether it touched only other
    /// programs' tables.
    recent: VecDeque<(u32, bool)>,
}

/// How many generations lie strictly between `from` and `to` (`to` after `from`), or
/// `None` when `to` is not after `from` (an old generation). Generations are never 0: the
/// kernel skips it when the counter wraps.
fn between(from: u32, to: u32) -> Option<u32> {
    let d = to.wrapping_sub(from);
    if d == 0 || d > u32::MAX / 2 {
        return None;
    }
    // Crossing the wrap skips generation 0.
    let skipped = (to < from) as u32;
    Some(d - 1 - skipped)
}

impl State {
    fn lose(&mut self, why: String) {
        if self.lost.is_none() {
            self.lost = Some(why);
        }
    }

    /// Accounts for generations up to `to`: those not seen must be kproxy's unseen
    /// commits. `inclusive`: `to` itself was not seen either (a marker's generation).
    fn account(&mut self, to: u32, inclusive: bool) {
        let Some(from) = self.accounted else {
            if inclusive {
                // The first marker (or the first after an overrun): the baseline.
                self.accounted = Some(to);
                self.own_unseen = 0;
            }
            return;
        };
        let Some(mut gaps) = between(from, to) else {
            return;
        };
        if inclusive {
            gaps += 1;
        }
        if gaps > self.own_unseen {
            self.lose(format!(
                "{} commit(s) between generations {from} and {to} were not seen",
                gaps - self.own_unseen
            ));
            self.own_unseen = 0;
        } else {
            self.own_unseen -= gaps;
        }
        self.accounted = Some(to);
    }

    fn remember(&mut self, generation: u32, others_only: bool) {
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back((generation, others_only));
    }

    /// Whether every commit after generation `from` up to `to` was seen and touched only
    /// other programs' tables; `None` while the stream has not reached `to` yet.
    fn only_others_between(&self, from: u32, to: u32) -> Option<bool> {
        let &(last, _) = self.recent.back()?;
        if between(last, to).is_some() {
            return None;
        }
        let Some(n) = between(from, to) else {
            return Some(from == to);
        };
        let want = n as usize + 1;
        let window: Vec<&(u32, bool)> = self
            .recent
            .iter()
            .filter(|(g, _)| between(from, *g).is_some() && between(*g, to).is_some() || *g == to)
            .collect();
        Some(window.len() == want && window.iter().all(|(_, others)| *others))
    }

    /// The next marker's sequence number, now awaited.
    fn new_marker(&mut self) -> u32 {
        self.next_marker = self.next_marker.wrapping_add(1).max(1);
        self.marker = Some(self.next_marker);
        self.next_marker
    }
}

struct Shared {
    state: Mutex<State>,
    /// Signalled whenever the drain thread has processed a commit.
    progress: Condvar,
    stop: AtomicBool,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Sends a marker (a GETGEN request) on `sock`.
fn send_marker(sock: &NlSocket, seq: u32) -> io::Result<()> {
    let mut w = Builder::new();
    w.begin_msg(msg_type(c::NFT_MSG_GETGEN), c::NLM_F_REQUEST, seq, 0, 0);
    w.end_msg();
    sock.send_pages(&[w.bytes()]).map(|_| ())
}

/// The drift watch of one backend: the listening socket and its drain thread.
pub(super) struct Monitor {
    shared: Arc<Shared>,
    /// A second handle on the listening socket, for memberships and markers.
    ctl: NlSocket,
    thread: Option<JoinHandle<()>>,
}

impl Monitor {
    /// Subscribes to the notifications of the calling thread's network namespace and
    /// starts draining them; the commits of the socket `own_port` are kproxy's, and
    /// `table` (in `ip` and `ip6`) is what it owns.
    pub fn start(table: &str, own_port: u32, wake: Waker) -> io::Result<Monitor> {
        let sock = NlSocket::open()?;
        sock.set_recv_buffer(RECV_BUFFER)?;
        sock.membership(c::NFNLGRP_NFTABLES, true)?;
        let ctl = sock.try_clone()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                own_port,
                monitor_port: sock.port_id()?,
                ..State::default()
            }),
            progress: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let seq = shared.lock().new_marker();
        send_marker(&ctl, seq)?;
        let drain = Drain {
            sock,
            shared: shared.clone(),
            table: table.to_string(),
            wake,
            pending: Vec::new(),
            unnamed: None,
        };
        let thread = std::thread::Builder::new()
            .name("kproxy-nft-watch".into())
            .spawn(move || drain.run())?;
        Ok(Monitor {
            shared,
            ctl,
            thread: Some(thread),
        })
    }

    /// kproxy is about to send a batch whose first operation has sequence number `seq`.
    pub fn sending(&self, seq: u32) {
        let mut st = self.shared.lock();
        if st.own_seqs.len() == OWN_SEQS {
            st.own_seqs.pop_front();
        }
        st.own_seqs.push_back(seq);
    }

    /// Stops listening, before a large commit of kproxy's own.
    pub fn pause(&self) -> io::Result<()> {
        self.ctl.membership(c::NFNLGRP_NFTABLES, false)
    }

    /// Listens again after [`Monitor::pause`]; `committed`: kproxy's commit went through
    /// (its generation went unseen). A marker then tells which generations were missed.
    pub fn resume(&self, committed: bool) -> io::Result<()> {
        {
            // Counted before listening again: a notification right after must find it.
            let mut st = self.shared.lock();
            if committed {
                if st.accounted.is_some() {
                    st.own_unseen += 1;
                } else {
                    st.lose("kproxy committed while not listening, before the watch knew the generation".into());
                }
            }
        }
        let joined = self.ctl.membership(c::NFNLGRP_NFTABLES, true);
        let seq = self.shared.lock().new_marker();
        if let Err(e) = joined.and_then(|_| send_marker(&self.ctl, seq)) {
            self.shared
                .lock()
                .lose(format!("listening again after a commit failed: {e}"));
            return Err(e);
        }
        Ok(())
    }

    /// Whether the commits after generation `from` up to `to` all touched only other
    /// programs' tables, once the drain thread has caught up with `to` (waiting up to
    /// [`CATCH_UP`]): a read of kproxy's tables spanning them is consistent. False when
    /// one touched kproxy's tables, went unseen or is kproxy's own.
    pub fn only_others_between(&self, from: u32, to: u32) -> bool {
        let deadline = Instant::now() + CATCH_UP;
        let mut st = self.shared.lock();
        loop {
            if let Some(answer) = st.only_others_between(from, to) {
                return answer;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            st = match self.shared.progress.wait_timeout(st, left) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
    }

    /// What was seen since the last call.
    pub fn take(&self) -> Watched {
        let mut st = self.shared.lock();
        Watched {
            touched: std::mem::take(&mut st.touched),
            lost: st.lost.take(),
            kproxy_tables: std::mem::take(&mut st.kproxy_tables),
            other_tables: std::mem::take(&mut st.other_tables),
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The drain thread's side.
struct Drain {
    sock: NlSocket,
    shared: Arc<Shared>,
    table: String,
    wake: Waker,
    /// Objects of kproxy's tables in the commit being received (before its NEWGEN), and
    /// the type of a notification of it that named no table.
    pending: Vec<(Family, Touch)>,
    unnamed: Option<u16>,
}

impl Drain {
    fn run(mut self) {
        while !self.shared.stop.load(Ordering::SeqCst) {
            match self.sock.wait_readable(POLL_MS) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.lost(format!("waiting for notifications failed: {e}"));
                    std::thread::sleep(std::time::Duration::from_millis(POLL_MS as u64));
                    continue;
                }
            }
            let mut wake = false;
            loop {
                let notices: Vec<Notice> = match self.sock.recv(true) {
                    Ok(Some(buf)) => {
                        let mut notices = Vec::new();
                        let framed = reply::dispatch(buf, &mut |r| {
                            notices.push(decode::notice(r.msg()));
                            Step::Next
                        });
                        if let Err(e) = framed {
                            // The rest of the datagram cannot be read: commits in it
                            // would go unseen.
                            self.lost(e.to_string());
                            wake = true;
                            continue;
                        }
                        notices
                    }
                    Ok(None) => break,
                    Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                        self.lost("the notification buffer overran (ENOBUFS)".into());
                        wake = true;
                        continue;
                    }
                    Err(e) => {
                        self.lost(format!("receiving notifications failed: {e}"));
                        wake = true;
                        break;
                    }
                };
                for n in notices {
                    wake |= self.handle(n);
                }
            }
            if wake {
                (self.wake)();
            }
        }
    }

    /// Notifications were lost: report it, forget the commit under way, and send a marker
    /// to find the accounting's footing again.
    fn lost(&mut self, why: String) {
        tracing::warn!(reason = %why, "nftables change notifications lost; kproxy's tables will be compared in full");
        self.pending.clear();
        self.unnamed = None;
        let mut st = self.shared.lock();
        st.lose(why);
        st.accounted = None;
        st.own_unseen = 0;
        let seq = st.new_marker();
        // Sent while holding the lock: the loss is not seen before the marker exists.
        if let Err(e) = send_marker(&self.sock, seq) {
            tracing::warn!(error = %e, "sending a generation marker failed");
        }
    }

    /// One notification; true when the sync loop should look.
    fn handle(&mut self, n: Notice) -> bool {
        match n {
            Notice::Object {
                family,
                table,
                object,
            } => {
                let family = match family {
                    c::NFPROTO_IPV4 => Family::V4,
                    c::NFPROTO_IPV6 => Family::V6,
                    _ => return false,
                };
                if table == self.table {
                    self.pending.push((family, object));
                }
                false
            }
            Notice::Unnamed { ty } => {
                self.unnamed.get_or_insert(ty);
                false
            }
            Notice::Commit {
                port,
                seq,
                generation,
                pid,
                process,
            } => self.commit(port, seq, generation, pid, process),
            Notice::Other => false,
        }
    }

    fn commit(
        &mut self,
        port: u32,
        seq: u32,
        generation: u32,
        pid: Option<u32>,
        process: Option<String>,
    ) -> bool {
        let pending = std::mem::take(&mut self.pending);
        let unnamed = self.unnamed.take();
        let mut st = self.shared.lock();
        if port == st.monitor_port {
            // A marker's reply (no commit sends from this socket).
            if st.marker == Some(seq) {
                st.marker = None;
                let before = st.lost.is_some();
                st.account(generation, true);
                return st.lost.is_some() && !before;
            }
            return false;
        }
        let before = st.lost.is_some();
        st.account(generation, false);
        let newly_lost = st.lost.is_some() && !before;
        let ours = port == st.own_port && st.own_seqs.contains(&seq);
        let others_only = !ours && pending.is_empty() && unnamed.is_none();
        st.remember(generation, others_only);
        self.shared.progress.notify_all();
        if ours {
            return newly_lost;
        }
        if others_only {
            st.other_tables += 1;
            return newly_lost;
        }
        st.kproxy_tables += 1;
        let t = &mut st.touched;
        if let Some(ty) = unnamed {
            t.whole
                .get_or_insert_with(|| format!("a notification (type {ty}) named no table"));
        }
        for (family, object) in pending {
            match object {
                Touch::Chain(name) => {
                    t.chains.insert((family, name));
                }
                Touch::Set(name) => {
                    t.sets.insert((family, name));
                }
                Touch::Table => {
                    t.whole.get_or_insert_with(|| {
                        format!("table {family} {} itself was changed", self.table)
                    });
                }
                Touch::Other(what) => {
                    t.whole.get_or_insert_with(|| {
                        format!("{what} in table {family} {} was changed", self.table)
                    });
                }
            }
        }
        t.by.insert(format!(
            "{} (pid {})",
            process.as_deref().unwrap_or("?"),
            pid.map_or("?".to_string(), |p| p.to_string())
        ));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_count_commits_across_the_wrap() {
        assert_eq!(between(5, 6), Some(0));
        assert_eq!(between(5, 9), Some(3));
        assert_eq!(between(5, 5), None);
        assert_eq!(between(9, 5), None);
        assert_eq!(between(u32::MAX, 1), Some(0));
        assert_eq!(between(u32::MAX - 1, 2), Some(2));
    }

    #[test]
    fn gaps_are_kproxys_unseen_commits_or_lost() {
        let mut st = State::default();
        // Before the first marker nothing is accounted.
        st.account(7, false);
        assert_eq!(st.accounted, None);
        st.account(7, true);
        assert_eq!(st.accounted, Some(7));
        st.account(8, false);
        assert!(st.lost.is_none());
        // One unseen commit of kproxy's, then a marker at its generation.
        st.own_unseen = 1;
        st.account(9, true);
        assert!(st.lost.is_none());
        assert_eq!(st.own_unseen, 0);
        // A commit nobody accounts for.
        st.account(11, false);
        assert!(st.lost.take().unwrap().contains("1 commit(s)"));
        // Old generations (a marker overtaken by a commit under way) change nothing.
        st.account(10, false);
        assert_eq!(st.accounted, Some(11));
        assert!(st.lost.is_none());
    }

    #[test]
    fn a_read_spanning_only_others_commits_is_consistent() {
        let mut st = State::default();
        assert_eq!(st.only_others_between(3, 5), None);
        for (g, others) in [(4, true), (5, true), (6, false), (8, true)] {
            st.remember(g, others);
        }
        assert_eq!(st.only_others_between(3, 5), Some(true));
        assert_eq!(st.only_others_between(5, 5), Some(true));
        assert_eq!(
            st.only_others_between(3, 6),
            Some(false),
            "6 touched kproxy's"
        );
        assert_eq!(st.only_others_between(6, 8), Some(false), "7 went unseen");
        assert_eq!(st.only_others_between(8, 9), None, "not there yet");
        assert_eq!(
            st.only_others_between(1, 4),
            Some(false),
            "2 and 3 forgotten"
        );
    }
}
