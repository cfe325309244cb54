//! Session affinity (ClientIP) at a cost that grows with nothing squared
//! (docs/ruleset.md "Session affinity", docs/measurements/affinity-layouts.md, layout
//! "b2").
//!
//! Per family table and affinity shard K (lists with affinity have their own shards, at
//! most [`SHARD_OWNERS`] lists each), three maps:
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
//! a client entry could hold it. Must not: decide which endpoints a list has (`model`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::names::PREFIX_AFFINITY;
use super::slots::{Existing, Owner, Ranges, SlotAllocator};
use super::SetRef;
use crate::model::EndpointAddr;
use crate::nft::*;

pub use super::slots::SHARD_OWNERS;

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
    /// The next endpoint id of this list (ids start at 1 and are never reused).
    next: u32,
    ids: HashMap<EndpointAddr, u32>,
}

/// Blocks, list constants and endpoint ids of the affinity lists, kept between renders.
///
/// A fresh allocator fed lists in sorted order gives the same numbers every time: list
/// constants 1, 2, … in the order lists are first seen, endpoint ids 1, 2, … per list in
/// the list's order. Afterwards a new list gets the next constant of the table, a new
/// endpoint (or one that comes back) the next id of its list: a client entry holding an
/// old constant or id can then never reach anything but a dead key, and the rules'
/// lookups of `list . id` in the live map send it to rule 2, which picks again.
#[derive(Clone, Debug, Default)]
pub struct AffinityAllocator {
    blocks: SlotAllocator,
    lists: HashMap<Owner, ListIds>,
    next_list: u32,
    seen: HashSet<Owner>,
}

impl AffinityAllocator {
    /// The place of `owner`'s list with these endpoints, allocating what is new and
    /// forgetting the ids of endpoints no longer in the list.
    pub fn list(&mut self, owner: &Owner, eps: &[EndpointAddr]) -> AffinityList {
        let r = self.blocks.range(owner);
        self.seen.insert(owner.clone());
        let next_list = &mut self.next_list;
        let l = self.lists.entry(owner.clone()).or_insert_with(|| {
            *next_list += 1;
            ListIds {
                list: *next_list,
                next: 1,
                ids: HashMap::new(),
            }
        });
        l.ids.retain(|ep, _| eps.contains(ep));
        let ids = eps
            .iter()
            .map(|ep| {
                *l.ids.entry(*ep).or_insert_with(|| {
                    l.next += 1;
                    l.next - 1
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

    pub fn holds(&self, owner: &Owner) -> bool {
        self.lists.contains_key(owner)
    }

    /// Frees `owner`'s block; its constant is retired.
    pub fn release_owner(&mut self, owner: &Owner) {
        self.blocks.release_owner(owner);
        self.lists.remove(owner);
        self.seen.remove(owner);
    }

    /// Frees the lists not asked for since the previous sweep.
    pub fn sweep(&mut self) {
        self.blocks.sweep();
        let seen = std::mem::take(&mut self.seen);
        self.lists.retain(|o, _| seen.contains(o));
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
