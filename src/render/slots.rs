//! Slot ranges in the endpoint maps.
//!
//! Owns: which map (shard) and which contiguous range of slot numbers each endpoint list
//! (a service port's Cluster or Local list) occupies. A list of `n` endpoints gets a range
//! of capacity `n.next_power_of_two()`; it keeps its shard and base while it fits, so adding
//! or removing an endpoint rewrites a few elements and one rule, never other services'
//! slots. Freed ranges are reused by size class.
//!
//! Why shards: the kernel checks every element added to a data map against every rule that
//! references the map (and every rule binding a map from a new chain walks all its
//! elements), so one map referenced by every service chain costs elements × rules: 16 s for
//! 10k services × 10 endpoints. A shard is referenced by at most [`SHARD_OWNERS`] rules,
//! which makes the cost linear in the number of endpoints.
//!
//! Must not: depend on iteration order of anything but its input. A fresh allocator fed
//! lists in sorted order gives the same numbers every time (render is deterministic).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use crate::model::ServicePortName;

/// Which endpoint list of a service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Policy {
    Cluster,
    Local,
}

/// The owner of a range: a service port's endpoint list (the name shared, not copied:
/// the allocator lives as long as the renderer, one entry per list).
pub type Owner = (Arc<ServicePortName>, Policy);

/// Endpoint lists (= rules referencing the map) per shard.
pub const SHARD_OWNERS: usize = 64;

/// A range of slots in one shard: `base .. base + capacity`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    pub shard: u32,
    pub base: u32,
    pub capacity: u32,
}

/// One endpoint map's slot space.
#[derive(Clone, Debug, Default)]
struct Shard {
    owners: usize,
    next: u32,
    /// Free ranges by capacity.
    free: BTreeMap<u32, Vec<u32>>,
}

/// Where [`crate::render::fragment`] gets its slot ranges: the allocator itself (which
/// hands out new ranges), or [`Existing`] (which only looks them up, for re-rendering a
/// fragment rendered before).
pub trait Ranges {
    fn range(&mut self, owner: &Owner, n: u32) -> Range;
}

impl Ranges for SlotAllocator {
    fn range(&mut self, owner: &Owner, n: u32) -> Range {
        SlotAllocator::range(self, owner, n)
    }
}

/// Read-only ranges: the one each owner holds. An owner without a range (its list was
/// released since) gets an empty placeholder range: callers that re-render for the
/// table-wide elements only never look at slots.
pub struct Existing<'a>(pub &'a SlotAllocator);

impl Ranges for Existing<'_> {
    fn range(&mut self, owner: &Owner, n: u32) -> Range {
        self.0.owned.get(owner).copied().unwrap_or(Range {
            shard: 0,
            base: 0,
            capacity: n.max(1).next_power_of_two(),
        })
    }
}

/// Hands out slot ranges and remembers them between renders.
#[derive(Clone, Debug, Default)]
pub struct SlotAllocator {
    shards: Vec<Shard>,
    owned: HashMap<Owner, Range>,
    /// Owners seen since the last [`SlotAllocator::sweep`].
    seen: HashSet<Owner>,
}

impl SlotAllocator {
    pub fn new() -> SlotAllocator {
        SlotAllocator::default()
    }

    /// The range for `owner` holding `n` (> 0) endpoints: its current one if it still fits
    /// (and is not more than 4× too large), else a new one.
    pub fn range(&mut self, owner: &Owner, n: u32) -> Range {
        let n = n.max(1);
        let want = n.next_power_of_two();
        self.seen.insert(owner.clone());
        if let Some(r) = self.owned.get(owner) {
            if n <= r.capacity && r.capacity <= want.saturating_mul(4) {
                return *r;
            }
            let old = *r;
            self.release(old);
        }
        let shard = match self.shards.iter().position(|s| s.owners < SHARD_OWNERS) {
            Some(i) => i,
            None => {
                self.shards.push(Shard::default());
                self.shards.len() - 1
            }
        };
        let sh = &mut self.shards[shard];
        sh.owners += 1;
        let base = match sh.free.get_mut(&want).and_then(|v| v.pop()) {
            Some(b) => b,
            None => {
                let b = sh.next;
                sh.next = sh.next.checked_add(want).expect("slot space exhausted");
                b
            }
        };
        let r = Range {
            shard: shard as u32,
            base,
            capacity: want,
        };
        self.owned.insert(owner.clone(), r);
        r
    }

    /// Shards that hold at least one range (their maps must exist), ascending.
    pub fn shards_in_use(&self) -> Vec<u32> {
        self.shards
            .iter()
            .enumerate()
            .filter(|(_, s)| s.owners > 0)
            .map(|(i, _)| i as u32)
            .collect()
    }

    /// Frees the range of `owner`, if it holds one (incremental updates: a list that
    /// disappeared, or a service port that was deleted).
    pub fn release_owner(&mut self, owner: &Owner) {
        if let Some(r) = self.owned.remove(owner) {
            self.release(r);
        }
        self.seen.remove(owner);
    }

    /// Frees the ranges of owners not asked for since the previous sweep.
    pub fn sweep(&mut self) {
        let stale: Vec<Owner> = self
            .owned
            .keys()
            .filter(|o| !self.seen.contains(*o))
            .cloned()
            .collect();
        for o in stale {
            if let Some(r) = self.owned.remove(&o) {
                self.release(r);
            }
        }
        self.seen.clear();
    }

    fn release(&mut self, r: Range) {
        let sh = &mut self.shards[r.shard as usize];
        sh.owners -= 1;
        sh.free.entry(r.capacity).or_default().push(r.base);
    }

    /// How many ranges are held.
    pub fn len(&self) -> usize {
        self.owned.len()
    }

    pub fn is_empty(&self) -> bool {
        self.owned.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nft::Protocol;

    fn owner(name: &str) -> Owner {
        (
            Arc::new(ServicePortName {
                namespace: "ns".into(),
                name: name.into(),
                port: "p".into(),
                protocol: Protocol::Tcp,
            }),
            Policy::Cluster,
        )
    }

    #[test]
    fn ranges_are_disjoint_and_stable() {
        let mut a = SlotAllocator::new();
        let r1 = a.range(&owner("a"), 3);
        let r2 = a.range(&owner("b"), 5);
        assert_eq!(
            r1,
            Range {
                shard: 0,
                base: 0,
                capacity: 4
            }
        );
        assert_eq!(
            r2,
            Range {
                shard: 0,
                base: 4,
                capacity: 8
            }
        );
        a.sweep();
        // Growing within capacity keeps the base.
        assert_eq!(a.range(&owner("a"), 4), r1);
        // Growing past it moves only that owner.
        let r1b = a.range(&owner("a"), 5);
        assert_eq!(r1b.capacity, 8);
        assert_ne!(r1b.base, r2.base);
        assert_eq!(a.range(&owner("b"), 5), r2);
    }

    #[test]
    fn shards_hold_at_most_shard_owners_lists() {
        let mut a = SlotAllocator::new();
        let ranges: Vec<Range> = (0..SHARD_OWNERS * 2 + 1)
            .map(|i| a.range(&owner(&format!("s{i}")), 3))
            .collect();
        assert!(ranges[..SHARD_OWNERS].iter().all(|r| r.shard == 0));
        assert!(ranges[SHARD_OWNERS..SHARD_OWNERS * 2]
            .iter()
            .all(|r| r.shard == 1));
        assert_eq!(ranges[SHARD_OWNERS * 2].shard, 2);
        assert_eq!(a.shards_in_use(), vec![0, 1, 2]);
        // A freed place in shard 0 is taken by the next new list.
        a.release_owner(&owner("s5"));
        assert_eq!(a.range(&owner("new"), 2).shard, 0);
        // A shard whose lists all go away is no longer in use.
        a.release_owner(&owner(&format!("s{}", SHARD_OWNERS * 2)));
        assert_eq!(a.shards_in_use(), vec![0, 1]);
    }

    #[test]
    fn freed_ranges_are_reused() {
        let mut a = SlotAllocator::new();
        a.range(&owner("a"), 2);
        a.range(&owner("b"), 2);
        a.sweep();
        a.range(&owner("b"), 2);
        a.sweep(); // "a" is gone
        let c = a.range(&owner("c"), 2);
        assert_eq!(c.base, 0);
        assert_eq!(a.len(), 2);
    }
}
