//! Session affinity (ClientIP) at a cost that grows with nothing squared
//! (docs/ruleset.md "Session affinity", docs/measurements/affinity-layouts.md, layout
//! "b2").
//!
//! Per family table and affinity shard K (lists with affinity have their own shards, at
//! most [`AFFINITY_SHARD_OWNERS`] lists each), three maps:
//! - `affinity-K`: `client . list → endpoint id`, dynamic, filled by the packet path only;
//! - `affinity-pick-K`: each list's block of 65536 numgen picks → endpoint ids (interval);
//! - `affinity-endpoints-K`: `list . endpoint id → addr . port`, live endpoints only.
//!
//! An affinity list's chain holds three fixed rules ([`Stmt::DnatAffinity`]): a known
//! client with a live endpoint, a client whose endpoint is gone, a full map. An endpoint
//! change only changes elements of the last two maps: the rules never change, so the
//! kernel never walks the clients of the shard again (rebinding the dynamic map does).
//!
//! Owns: the maps' shapes, the rules, the elements, and the ids ([`AffinityAllocator`]):
//! a list constant per list and an endpoint id per (list, endpoint), neither reused while
//! a client entry could hold it, and adopted from the kernel's table after a restart.
//! Must not: decide which endpoints a list has (`model`), or do I/O (the caller reads the
//! kernel's table).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::names::PREFIX_AFFINITY;
use super::slots::{chain_name, Existing, Owner, Range, Ranges, SlotAllocator};
use super::SetRef;
use crate::model::EndpointAddr;
use crate::nft::*;

/// Affinity lists per shard. Each list's three rules name the shard's three maps 11
/// times, and the kernel finds a map by a linear scan of the table's set names, so fewer,
/// larger shards scan less; but every element added to a map is checked against each rule
/// bound to it, so larger shards check more. Measured (`kproxy apply` of 10k services × 10,
/// all ClientIP): 32 lists per shard 3.57 s, **64: 3.2 s**, 128: 4.0 s. The price of a large
/// shard is the walk over its live client entries when a service is added to it later
/// (~0.24 µs per entry).
pub const AFFINITY_SHARD_OWNERS: u32 = 64;

/// `affinity-pick-K`: the pick maps.
pub const AFFINITY_PICK_PREFIX: &str = "affinity-pick-";
/// `affinity-endpoints-K`: the live endpoint maps.
pub const AFFINITY_ENDPOINTS_PREFIX: &str = "affinity-endpoints-";
/// Entries an affinity map holds: the clients × lists of a shard. nft's default for a
/// dynamic set without `size` is 65535, which a busy shard of 32 services outgrows.
pub const AFFINITY_SIZE: u32 = 1 << 20;
/// The affinity map's default timeout (seconds): every rule sets its service's.
pub const AFFINITY_DEFAULT_TIMEOUT: u32 = 10800;

/// One affinity list's place: its block in the shard's pick map, its list constant and
/// the ids of its endpoints (in the order of the list's endpoints).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AffinityList {
    pub shard: u32,
    pub base: u32,
    pub list: u32,
    pub ids: Vec<u32>,
}

/// A list's constant and its endpoints' ids.
#[derive(Clone, Debug)]
struct ListIds {
    list: u32,
    ids: HashMap<EndpointAddr, u32>,
}

/// Blocks, list constants and endpoint ids of the affinity lists, kept between renders.
///
/// Constants and ids are derived from what they name (a hash of the service port and
/// policy, of the endpoint's address and port), taking the next free number on the rare
/// collision: so a fresh render (`kproxy render`, `kproxy apply`, a restarted daemon)
/// numbers a list and its endpoints as the running daemon does, whatever happened before,
/// and an endpoint change never renumbers the list's other endpoints. An id only ever
/// names one endpoint of its list (a client entry holding the id of a removed endpoint
/// finds nothing live and picks again; an endpoint that comes back under the same address
/// and port is the same endpoint). Constants are unique in the table while their lists
/// exist. Blocks are history (first free block): [`AffinityAllocator::adopt`] takes them,
/// with the constants and ids, from the kernel's table when a daemon restarts.
#[derive(Clone, Debug)]
pub struct AffinityAllocator {
    blocks: SlotAllocator,
    lists: HashMap<Owner, ListIds>,
    /// The constants of `lists` and of `adopted`.
    constants: HashSet<u32>,
    seen: HashSet<Owner>,
    /// Lists the kernel holds, by chain name, until their owner asks ([`Self::adopt`]).
    adopted: HashMap<String, ListIds>,
}

impl Default for AffinityAllocator {
    fn default() -> AffinityAllocator {
        AffinityAllocator {
            blocks: SlotAllocator::with_shard_owners(AFFINITY_SHARD_OWNERS),
            lists: HashMap::new(),
            constants: HashSet::new(),
            seen: HashSet::new(),
            adopted: HashMap::new(),
        }
    }
}

/// A stable 32-bit number for `bytes` (FNV-1a, folded), never 0.
fn stable_hash(bytes: impl IntoIterator<Item = u8>) -> u32 {
    let h = bytes.into_iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    ((h >> 32) as u32 ^ h as u32).max(1)
}

/// `h`, or the next number after it that `used` does not hold (never 0).
fn free_from(mut h: u32, used: &HashSet<u32>) -> u32 {
    while used.contains(&h) {
        h = h.wrapping_add(1).max(1);
    }
    h
}

fn list_hash(owner: &Owner) -> u32 {
    let n = &owner.0;
    let key = format!(
        "{}/{}/{}/{}/{:?}",
        n.namespace, n.name, n.protocol, n.port, owner.1
    );
    stable_hash(key.into_bytes())
}

fn endpoint_hash(ep: &EndpointAddr) -> u32 {
    let ip: Vec<u8> = match ep.ip {
        std::net::IpAddr::V4(a) => a.octets().to_vec(),
        std::net::IpAddr::V6(a) => a.octets().to_vec(),
    };
    stable_hash(ip.into_iter().chain(ep.port.to_be_bytes()))
}

impl AffinityAllocator {
    /// The place of `owner`'s list with these endpoints, allocating what is new and
    /// forgetting the ids of endpoints no longer in the list.
    pub fn list(&mut self, owner: &Owner, eps: &[EndpointAddr]) -> AffinityList {
        if !self.adopted.is_empty() && !self.lists.contains_key(owner) {
            if let Some(ids) = self.adopted.remove(&chain_name(owner)) {
                self.lists.insert(owner.clone(), ids);
            }
        }
        // An adopted list's block is reserved for its chain: `range` gives it back.
        let r = self.blocks.range(owner);
        self.seen.insert(owner.clone());
        if !self.lists.contains_key(owner) {
            let list = free_from(list_hash(owner), &self.constants);
            self.constants.insert(list);
            let ids = HashMap::new();
            self.lists.insert(owner.clone(), ListIds { list, ids });
        }
        let l = self.lists.get_mut(owner).expect("inserted above");
        let keep: HashSet<&EndpointAddr> = eps.iter().collect();
        l.ids.retain(|ep, _| keep.contains(ep));
        let mut used: HashSet<u32> = l.ids.values().copied().collect();
        let ids = eps
            .iter()
            .map(|ep| {
                *l.ids.entry(*ep).or_insert_with(|| {
                    let id = free_from(endpoint_hash(ep), &used);
                    used.insert(id);
                    id
                })
            })
            .collect();
        AffinityList {
            shard: r.shard,
            base: r.base,
            list: l.list,
            ids,
        }
    }

    /// The place `owner`'s list holds, looked up only (0 for what it does not hold:
    /// callers that re-render for the table-wide elements never look at it).
    pub fn existing(&self, owner: &Owner, eps: &[EndpointAddr]) -> AffinityList {
        let r = Ranges::range(&mut Existing(&self.blocks), owner);
        let l = self.lists.get(owner);
        AffinityList {
            shard: r.shard,
            base: r.base,
            list: l.map_or(0, |l| l.list),
            ids: eps
                .iter()
                .map(|ep| l.and_then(|l| l.ids.get(ep)).copied().unwrap_or(0))
                .collect(),
        }
    }

    /// Adopts the affinity lists `t` (as read from the kernel) holds, so that a restarted
    /// daemon renders them as they are instead of numbering afresh (which would rewrite
    /// their chains, a walk of every client entry of the shard, and move clients to
    /// other endpoints): each chain's block, list constant and endpoint ids (from
    /// `affinity-endpoints-K`) wait for the list's owner to ask for them (its blocks held
    /// meanwhile); what no owner asks for by the next sweep is freed. Call it before the
    /// first render.
    pub fn adopt(&mut self, t: &Table) {
        let mut live: HashMap<(u32, u32), HashMap<EndpointAddr, u32>> = HashMap::new();
        for (name, set) in &t.sets {
            let Some(shard) = name.strip_prefix(AFFINITY_ENDPOINTS_PREFIX) else {
                continue;
            };
            let Ok(shard) = shard.parse::<u32>() else {
                continue;
            };
            for e in &set.elements {
                let (key, ElementData::Values(data)) = (e.key.as_slice(), &e.data) else {
                    continue;
                };
                if let ([Value::Int(list), Value::Int(id)], [Value::Addr(ip), Value::Port(port)]) =
                    (key, data.as_slice())
                {
                    let ep = EndpointAddr {
                        ip: *ip,
                        port: *port,
                    };
                    live.entry((shard, *list)).or_default().insert(ep, *id);
                }
            }
        }
        for c in t.chains.values() {
            let Some((list, offset, pick)) =
                c.rules.iter().flat_map(|r| &r.stmts).find_map(|s| match s {
                    Stmt::DnatAffinity {
                        list, offset, pick, ..
                    } => Some((*list, *offset, pick)),
                    _ => None,
                })
            else {
                continue;
            };
            let Some(Ok(shard)) = pick
                .strip_prefix(AFFINITY_PICK_PREFIX)
                .map(str::parse::<u32>)
            else {
                continue;
            };
            let r = Range {
                shard,
                base: offset,
            };
            if self.constants.contains(&list) || !self.blocks.reserve(c.name.clone(), r) {
                continue;
            }
            self.constants.insert(list);
            let ids = live.remove(&(shard, list)).unwrap_or_default();
            self.adopted.insert(c.name.clone(), ListIds { list, ids });
        }
    }

    pub fn holds(&self, owner: &Owner) -> bool {
        self.lists.contains_key(owner)
    }

    /// Frees `owner`'s block and constant.
    pub fn release_owner(&mut self, owner: &Owner) {
        self.blocks.release_owner(owner);
        if let Some(l) = self.lists.remove(owner) {
            self.constants.remove(&l.list);
        }
        self.seen.remove(owner);
    }

    /// Frees the lists not asked for since the previous sweep (and what was adopted for
    /// lists that no longer exist).
    pub fn sweep(&mut self) {
        self.blocks.sweep();
        for (_, l) in self.adopted.drain() {
            self.constants.remove(&l.list);
        }
        let seen = std::mem::take(&mut self.seen);
        let constants = &mut self.constants;
        self.lists.retain(|o, l| {
            let keep = seen.contains(o);
            if !keep {
                constants.remove(&l.list);
            }
            keep
        });
    }

    /// Shards that hold at least one list (their maps must exist), ascending.
    pub fn shards_in_use(&self) -> Vec<u32> {
        self.blocks.shards_in_use()
    }
}

/// The three maps of affinity shard `shard`.
pub fn maps(family: Family, shard: u32) -> [Set; 3] {
    let id = DataType::Mark;
    let mut state = Set::new(
        format!("{PREFIX_AFFINITY}{shard}"),
        vec![DataType::addr(family), id],
        SetData::Values(vec![id]),
    )
    .with_comment(format!(
        "session affinity, shard {shard}: client . list → endpoint id (packet path only)"
    ));
    state.flags.dynamic = true;
    state.flags.timeout = true;
    state.timeout = Some(AFFINITY_DEFAULT_TIMEOUT);
    state.size = Some(AFFINITY_SIZE);
    let mut pick = Set::new(
        format!("{AFFINITY_PICK_PREFIX}{shard}"),
        vec![DataType::Pick],
        SetData::Values(vec![id]),
    )
    .with_comment(format!(
        "affinity picks, shard {shard}: each list owns a block of 65536 picks → endpoint ids"
    ));
    pick.flags.interval = true;
    let live = Set::new(
        format!("{AFFINITY_ENDPOINTS_PREFIX}{shard}"),
        vec![id, id],
        SetData::Values(vec![DataType::addr(family), DataType::InetService]),
    )
    .with_comment(format!(
        "affinity endpoints, shard {shard}: list . endpoint id → live endpoint"
    ));
    [state, pick, live]
}

/// The list's three rules: a known client with a live endpoint (or a new one), a client
/// whose endpoint is gone, and a full affinity map (no affinity, as upstream when its set
/// is full).
pub(super) fn rules(proto: Protocol, a: &AffinityList, timeout: u32) -> [Rule; 3] {
    let map = || SetRef::Affinity(a.shard).name().into_owned();
    let stmt = |step| {
        Rule::new(vec![Stmt::DnatAffinity {
            proto,
            list: a.list,
            offset: a.base,
            pick: SetRef::AffinityPick(a.shard).name().into_owned(),
            endpoints: SetRef::AffinityEndpoints(a.shard).name().into_owned(),
            step,
        }])
    };
    [
        stmt(AffinityStep::Known {
            map: map(),
            timeout,
        }),
        stmt(AffinityStep::Repick {
            map: map(),
            timeout,
        }),
        stmt(AffinityStep::Full),
    ]
}

/// The list's elements: its ranges of picks → ids, and its ids → endpoints.
pub(super) fn elements(
    a: &AffinityList,
    eps: &[EndpointAddr],
    what: &Arc<str>,
    out: &mut Vec<(SetRef, Element)>,
) {
    let ranges = pick_ranges(a.base, eps.len() as u32);
    for (((lo, hi), ep), id) in ranges.zip(eps).zip(&a.ids) {
        let pick = Element::values(vec![Value::Range(lo, hi)], vec![Value::Int(*id)]);
        out.push((
            SetRef::AffinityPick(a.shard),
            pick.with_comment(what.clone()),
        ));
        let live = Element::values(
            vec![Value::Int(a.list), Value::Int(*id)],
            vec![Value::Addr(ep.ip), Value::Port(ep.port)],
        );
        out.push((
            SetRef::AffinityEndpoints(a.shard),
            live.with_comment(what.clone()),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ServicePortName;
    use crate::render::slots::Policy;

    fn owner(name: &str, policy: Policy) -> Owner {
        let n = ServicePortName {
            namespace: "ns".into(),
            name: name.into(),
            port: "p".into(),
            protocol: Protocol::Tcp,
        };
        (Arc::new(n), policy)
    }

    fn ep(s: &str) -> EndpointAddr {
        EndpointAddr {
            ip: s.parse().unwrap(),
            port: 8080,
        }
    }

    #[test]
    fn ids_do_not_depend_on_history_or_on_the_other_endpoints() {
        let (a, b, c) = (ep("10.0.0.1"), ep("10.0.0.2"), ep("10.0.0.3"));
        let mut running = AffinityAllocator::default();
        let o = owner("s", Policy::Cluster);
        let first = running.list(&o, &[a, b, c]);
        let later = running.list(&o, &[a, c]);
        assert_eq!(later.ids, [first.ids[0], first.ids[2]]);
        assert_eq!(later.list, first.list);
        // A fresh allocator (a restart, `kproxy render`) numbers the same.
        let fresh = AffinityAllocator::default().list(&o, &[a, c]);
        assert_eq!((fresh.list, fresh.ids), (later.list, later.ids));
        // The Local list of the same port has a constant of its own.
        let local = running.list(&owner("s", Policy::Local), &[a]);
        assert_ne!(local.list, first.list);
    }

    #[test]
    fn collisions_take_the_next_free_number() {
        let used: HashSet<u32> = [7, 8, u32::MAX].into();
        assert_eq!(free_from(7, &used), 9);
        assert_eq!(free_from(u32::MAX, &used), 1);
        assert_eq!(free_from(5, &used), 5);
    }

    #[test]
    fn constants_are_freed_with_their_lists() {
        let mut a = AffinityAllocator::default();
        let o = owner("s", Policy::Cluster);
        let l = a.list(&o, &[ep("10.0.0.1")]).list;
        a.release_owner(&o);
        assert!(a.constants.is_empty());
        assert_eq!(a.list(&o, &[ep("10.0.0.1")]).list, l);
        a.sweep();
        a.sweep(); // not asked for since the previous sweep
        assert!(a.constants.is_empty() && a.lists.is_empty());
    }
}
