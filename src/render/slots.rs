//! Slot ranges in the table-wide endpoint map.
//!
//! Owns: which contiguous range of slot numbers each endpoint list (a service port's
//! Cluster or Local list) occupies in `@endpoints`. A list of `n` endpoints gets a range of
//! capacity `n.next_power_of_two()`; it keeps its base while it fits, so adding or removing
//! an endpoint rewrites a few elements and one rule, never other services' slots. Freed
//! ranges are reused by size class.
//!
//! Must not: depend on iteration order of anything but its input. A fresh allocator fed
//! lists in sorted order gives the same numbers every time (render is deterministic).

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::model::ServicePortName;

/// Which endpoint list of a service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Policy {
    Cluster,
    Local,
}

/// The owner of a range: a service port's endpoint list.
pub type Owner = (ServicePortName, Policy);

/// A range of slots: `base .. base + capacity`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    pub base: u32,
    pub capacity: u32,
}

/// Hands out slot ranges and remembers them between renders.
#[derive(Clone, Debug, Default)]
pub struct SlotAllocator {
    next: u32,
    /// Free ranges by capacity.
    free: BTreeMap<u32, Vec<u32>>,
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
        let base = match self.free.get_mut(&want).and_then(|v| v.pop()) {
            Some(b) => b,
            None => {
                let b = self.next;
                self.next = self.next.checked_add(want).expect("slot space exhausted");
                b
            }
        };
        let r = Range {
            base,
            capacity: want,
        };
        self.owned.insert(owner.clone(), r);
        r
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
        self.free.entry(r.capacity).or_default().push(r.base);
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
            ServicePortName {
                namespace: "ns".into(),
                name: name.into(),
                port: "p".into(),
                protocol: Protocol::Tcp,
            },
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
                base: 0,
                capacity: 4
            }
        );
        assert_eq!(
            r2,
            Range {
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
