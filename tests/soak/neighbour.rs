//! The neighbour: another program with its own table on the node (`table inet neighbour`:
//! an interval set `blocked`, a base chain dropping its addresses, a regular chain
//! `notes`), as a host firewall or a CNI plugin has. It commits every 100 ms: one element
//! added to or deleted from `blocked`, and every 50th commit instead the rules of `notes`
//! replaced (a flush and a new rule). Over netlink: see `nl` for why not `nft`.
//! What it wrote is kept, so the end can compare the kernel's listing with the listing of
//! the same table written at once into a fresh namespace.

use std::collections::BTreeSet;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::nl;
use crate::plan::{every, Rng};

pub const PERIOD: Duration = Duration::from_millis(100);
/// Every this many commits, the rules of `notes` are replaced instead.
const NOTES_EVERY: u64 = 50;

/// What the neighbour wrote.
#[derive(Clone, Debug, Default)]
pub struct NeighbourTable {
    blocked: BTreeSet<u32>,
    rev: u32,
}

/// `198.18.x.y`, odd last octets only: no two elements are adjacent, so the interval set
/// lists exactly the addresses written.
fn addr(k: u32) -> u32 {
    u32::from_be_bytes([198, 18, (k / 120) as u8, (2 * (k % 120) + 1) as u8])
}

fn addr_text(a: u32) -> String {
    std::net::Ipv4Addr::from(a).to_string()
}

fn notes_comment(rev: u32) -> String {
    format!("rev {rev}")
}

fn notes_rule(rev: u32) -> String {
    format!("accept comment \"{}\"", notes_comment(rev))
}

impl NeighbourTable {
    /// The script that creates the table (the neighbour starts with it).
    pub fn create() -> String {
        Self::create_at(0)
    }

    fn create_at(rev: u32) -> String {
        format!(
            "add table inet neighbour\n\
             add set inet neighbour blocked {{ type ipv4_addr; flags interval; }}\n\
             add chain inet neighbour input {{ type filter hook input priority 10; policy accept; }}\n\
             add rule inet neighbour input ip saddr @blocked drop\n\
             add chain inet neighbour notes\n\
             add rule inet neighbour notes {}\n",
            notes_rule(rev)
        )
    }

    /// The whole table as one script, for the reference namespace.
    pub fn script(&self) -> String {
        let mut s = Self::create_at(self.rev);
        if !self.blocked.is_empty() {
            let els: Vec<String> = self.blocked.iter().map(|a| addr_text(*a)).collect();
            s.push_str(&format!(
                "add element inet neighbour blocked {{ {} }}\n",
                els.join(", ")
            ));
        }
        s
    }

    pub fn elements(&self) -> usize {
        self.blocked.len()
    }
}

pub struct NeighbourReport {
    pub table: NeighbourTable,
    pub element_commits: usize,
    pub notes_commits: usize,
    pub errors: Vec<String>,
    pub elapsed: Duration,
}

/// Starts the neighbour in `netns` (its table must exist): it commits until `stop`.
pub fn run(netns: String, seed: u64, stop: Arc<AtomicBool>) -> JoinHandle<NeighbourReport> {
    std::thread::spawn(move || {
        kproxy::netlink::enter_netns(&kproxy::testutil::netns_path(&netns)).expect("enter netns");
        let started = Instant::now();
        let mut sock = nl::Socket::open(false).expect("netlink socket");
        let mut rng = Rng(seed);
        let mut table = NeighbourTable::default();
        let (mut element_commits, mut notes_commits, mut errors) = (0, 0, Vec::new());
        let mut tick = 0u64;
        every(PERIOD, &stop, || {
            tick += 1;
            if tick.is_multiple_of(NOTES_EVERY) {
                let rev = table.rev + 1;
                match sock.replace_rules("neighbour", "notes", &notes_comment(rev)) {
                    Ok(()) => {
                        table.rev = rev;
                        notes_commits += 1;
                    }
                    Err(e) => errors.push(format!("notes rev {rev}: {e}")),
                }
                return;
            }
            let k = rng.below(2000) as u32;
            let (a, add) = if table.blocked.len() > 64 || table.blocked.contains(&addr(k)) {
                let victim = *table
                    .blocked
                    .iter()
                    .nth(rng.below(table.blocked.len()))
                    .expect("non-empty");
                (victim, false)
            } else {
                (addr(k), true)
            };
            match sock.set_element("neighbour", "blocked", a, add) {
                Ok(()) => {
                    element_commits += 1;
                    if add {
                        table.blocked.insert(a);
                    } else {
                        table.blocked.remove(&a);
                    }
                }
                Err(e) => errors.push(format!(
                    "{} {}: {e}",
                    if add { "add" } else { "delete" },
                    addr_text(a)
                )),
            }
        });
        NeighbourReport {
            table,
            element_commits,
            notes_commits,
            errors,
            elapsed: started.elapsed(),
        }
    })
}
