//! The kernel's side: its nftables change notifications, read in the node namespace, and
//! the ledger of changes waiting to be seen there.
//!
//! A change's kernel effect is unique to it: endpoint addresses are never reused, services
//! never share a ClusterIP, and a service is not changed again until its last change was
//! seen. So the first transaction that adds an endpoint's address as the data of an
//! element of an endpoint map (`endpoints-K`, `affinity-endpoints-K`), or deletes it
//! without adding it back, is when that endpoint change was committed; the same for a
//! ClusterIP as a key of `cluster-ips` and a service's creation or deletion; and a rule
//! added by kproxy to a chain someone flushed is that chain's repair.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kproxy::render::names;

use crate::cluster::Hold;
use crate::nl;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Change {
    EndpointUp,
    EndpointDown,
    ServiceUp,
    ServiceDown,
}

pub struct Pending {
    pub change: Change,
    pub applied: Instant,
    pub what: String,
    /// Part of a big change applied at once (before a kill), not of the steady churn.
    pub burst: bool,
}

pub struct Seen {
    pub change: Change,
    pub applied: Instant,
    pub seen: Instant,
    pub burst: bool,
}

#[derive(Default)]
pub struct Ledger {
    pub pending: HashMap<u32, Pending>,
    pub flushes: HashMap<String, Instant>,
    pub seen: Vec<Seen>,
    pub repairs: Vec<(Instant, Instant)>,
    pub kproxy_commits: usize,
    pub other_commits: usize,
    pub messages: usize,
    /// Receive-buffer overruns (notifications lost) and read errors.
    pub trouble: Vec<String>,
}

impl Ledger {
    pub fn is_pending(&self, h: &Option<Hold>) -> bool {
        match h {
            None => false,
            Some(Hold::Key(k)) => self.pending.contains_key(k),
            Some(Hold::Chain(c)) => self.flushes.contains_key(c),
        }
    }
}

/// What one transaction did to the objects the ledger tracks.
#[derive(Default)]
pub struct Batch {
    ep_add: HashSet<u32>,
    ep_del: HashSet<u32>,
    cip_add: HashSet<u32>,
    cip_del: HashSet<u32>,
    rule_chains: HashSet<String>,
}

impl Ledger {
    /// The end of a transaction committed by process `by`: resolves what it shows.
    fn commit(&mut self, b: &Batch, by: &str, at: Instant) {
        let kproxy = by.starts_with("kproxy");
        if kproxy {
            self.kproxy_commits += 1;
        } else {
            self.other_commits += 1;
        }
        let keys = b
            .ep_add
            .iter()
            .chain(&b.ep_del)
            .chain(&b.cip_add)
            .chain(&b.cip_del);
        let mut done = Vec::new();
        for k in keys {
            let Some(p) = self.pending.get(k) else {
                continue;
            };
            let hit = match p.change {
                Change::EndpointUp => b.ep_add.contains(k),
                Change::EndpointDown => b.ep_del.contains(k) && !b.ep_add.contains(k),
                Change::ServiceUp => b.cip_add.contains(k),
                Change::ServiceDown => b.cip_del.contains(k) && !b.cip_add.contains(k),
            };
            if hit {
                done.push(*k);
            }
        }
        for k in done {
            if let Some(p) = self.pending.remove(&k) {
                self.seen.push(Seen {
                    change: p.change,
                    applied: p.applied,
                    seen: at,
                    burst: p.burst,
                });
            }
        }
        if kproxy {
            for c in &b.rule_chains {
                if let Some(t) = self.flushes.remove(c) {
                    self.repairs.push((t, at));
                }
            }
        }
    }
}

/// Adds one notification to the batch being collected; the committer's name at the end
/// of a transaction (`NEWGEN`).
fn note_event(m: &nl::Msg<'_>, b: &mut Batch) -> Option<String> {
    use nl::*;
    let a = attrs(m.attrs);
    if m.ty == NEWGEN {
        return Some(get(&a, 3).map(string).unwrap_or_default());
    }
    if m.family != NFPROTO_IPV4 || get(&a, 1).map(string).as_deref() != Some(kproxy::render::TABLE)
    {
        return None;
    }
    match m.ty {
        NEWRULE => {
            if let Some(chain) = get(&a, 2) {
                b.rule_chains.insert(string(chain));
            }
        }
        NEWSETELEM | DELSETELEM => {
            let add = m.ty == NEWSETELEM;
            let set = get(&a, 2).map(string).unwrap_or_default();
            let endpoints =
                set.starts_with(names::ENDPOINTS_PREFIX) || set.starts_with("affinity-endpoints-");
            let cluster_ips = set == names::CLUSTER_IPS;
            if !endpoints && !cluster_ips {
                return None;
            }
            for (t, el) in get(&a, 3).map(attrs).unwrap_or_default() {
                if t != 1 {
                    continue;
                }
                let e = attrs(el);
                let ip = if endpoints {
                    get(&e, 2).and_then(value_v4)
                } else {
                    get(&e, 1).and_then(value_v4)
                };
                if let Some(ip) = ip {
                    let into = match (endpoints, add) {
                        (true, true) => &mut b.ep_add,
                        (true, false) => &mut b.ep_del,
                        (false, true) => &mut b.cip_add,
                        (false, false) => &mut b.cip_del,
                    };
                    into.insert(ip);
                }
            }
        }
        _ => {}
    }
    None
}

/// Reads the node namespace's nftables notifications into the ledger until `stop`.
pub fn run_events(
    netns: String,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        kproxy::netlink::enter_netns(&kproxy::testutil::netns_path(&netns)).expect("enter netns");
        let mut ev = nl::Socket::open(true).expect("nftables notification socket");
        ready_tx.send(()).expect("ready");
        let mut batch = Batch::default();
        while !stop.load(Ordering::SeqCst) {
            let buf = match ev.recv(100) {
                Ok(Some(b)) => b,
                Ok(None) => continue,
                Err(e) => {
                    // ENOBUFS: notifications were lost; say so (the end check then knows).
                    let mut l = ledger.lock().unwrap();
                    if l.trouble.len() < 20 {
                        l.trouble.push(e.to_string());
                    }
                    continue;
                }
            };
            let at = Instant::now();
            let msgs = nl::messages(buf);
            let mut l = ledger.lock().unwrap();
            for m in msgs {
                l.messages += 1;
                if let Some(by) = note_event(&m, &mut batch) {
                    l.commit(&batch, &by, at);
                    batch = Batch::default();
                }
            }
        }
    });
    ready_rx.recv().expect("notification thread started");
    h
}
